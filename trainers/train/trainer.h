// The training loop: micro-batches, accumulation, clipping, schedules, stage switch, evaluation,
// progress output, metrics (JSON lines), the loss/LR/WD plot, the final model file, periodic
// checkpoints (checkpoint.h) and bit-exact resume.
#pragma once
#include <cstdint>
#include <functional>
#include <string>

#include "trainers/config/config.h"
#include "trainers/train/comm.h"

namespace nn {
class ParameterSet;
}

namespace trainers::train {

struct TrainOptions {
  std::string init_from;  // model file to start from (parameters, and optimizer moments if present)
  std::string
      resume;  // checkpoint file, or run directory (its newest checkpoint): continue bit for bit
  int64_t stop_after = 0;    // > 0: stop once this many steps are done, as Ctrl-C would (tests)
  bool quiet = false;        // no progress output (tests)
  bool progress_bar = true;  // a bar on a terminal; plain lines otherwise
  std::string
      trace_samples;  // non-empty: each rank appends "sample window" lines to <this>.rank<R>
  // Fault-injection hooks for tests: called at the start of every step (before the forward pass),
  // and after every backward pass (before the gradient norm and clipping).
  std::function<void(int64_t step, nn::ParameterSet& params)> test_before_step;
  std::function<void(nn::ParameterSet& params)> test_after_backward;
  // How a single-process step reports its loss and gradient norm: -1 (default) deferred on a GPU
  // and immediate on the CPU; 1 deferred (the skip rule and the update decided on the device, the
  // host reading the step records once per logged step, so a GPU step has no host round trip);
  // 0 immediate (read back every step). Both give the same parameters, metrics and checkpoints;
  // deferred, a run of max_bad_steps skipped steps is noticed at the next logged step.
  int deferred = -1;
};

struct TrainResult {
  int64_t steps = 0, skipped = 0;
  double first_loss = 0, last_loss = 0;  // mean train loss of the first / last log window
  double val_loss = 0;                   // final validation loss (NaN if no validation data)
  double val_loss_at_stage2 = 0;         // validation loss right before the last stage began
  bool interrupted = false;
  std::string run_dir;
};

TrainResult train(const config::Config& cfg, const TrainOptions& opt, Comm& comm);

// A duration for progress lines: "12m05s", or "3h07m" from an hour on.
std::string hms(double seconds);

}  // namespace trainers::train
