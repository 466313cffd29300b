// `bitnet sweep`: runs a sweep's runs (one after another, or several processes at a time), skips
// finished ones and resumes interrupted ones, then writes the table and the overlay plots.
#pragma once
#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "trainers/config/sweep.h"
#include "trainers/train/comm.h"

namespace trainers::train {

struct SweepOptions {
  int jobs = 1;            // > 1: that many `bitnet train` processes at a time, threads split
  std::string self;        // the bitnet executable (jobs > 1)
  bool quiet = false;      // no progress output of the runs (the sweep's own lines stay)
  int64_t stop_after = 0;  // tests: interrupt the first run that is not finished after this
                           // many steps (as Ctrl-C would); 0 = never
};

// One row of sweep.jsonl / sweep.md, read back from a run directory.
struct SweepRow {
  std::string name;
  std::vector<std::string> sets;       // the run's overrides
  std::string status;                  // finished | diverged | failed | interrupted | not run
  double final_val = 0, best_val = 0;  // NaN when there was no evaluation
  int64_t best_step = -1, steps = 0, tokens = 0;
  double wall_s = 0;
  int64_t diverged_step = -1;               // diverged: the step it stopped at
  std::string message;                      // diverged / failed: the error
  double sparsity[6] = {0, 0, 0, 0, 0, 0};  // final evaluation: qkv out up gate down overall
};

// Runs every run of `sw` not yet finished (out_dir/NAME/sweep_result.json marks a finished one;
// a run with a checkpoint resumes from it), each in out_dir/NAME, then writes the report. Writes
// out_dir/sweep.json (the expanded runs) first. Returns 0, or 130 when a run was interrupted.
// A run that diverges (training.max_bad_steps) or fails is recorded and the sweep goes on.
int run_sweep(const config::Sweep& sw, const SweepOptions& opt, Comm& comm);

// Rebuilds sweep.jsonl, sweep.md, sweep_loss.svg (and .png where supported) of a sweep directory
// from its sweep.json and the run directories; returns the rows.
std::vector<SweepRow> write_sweep_report(const std::string& out_dir);

}  // namespace trainers::train
