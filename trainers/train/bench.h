// `bitnet bench`: timed training steps on synthetic tokens, with a side-by-side GEMM peak.
#pragma once
#include <string>

#include "trainers/config/config.h"
#include "trainers/train/comm.h"

namespace trainers::train {

struct BenchOptions {
  int warmup = 2;        // untimed steps
  int steps = 5;         // timed steps
  std::string mode;      // activation mode override ("" = the config's first stage)
  std::string json_out;  // also write the JSON here ("" = print only)
  bool profile = false;  // also print per-op forward/backward wall time (autograd::Tape profile)
};

// Prints a table and a JSON object: tokens/s, ms per step split into forward / backward /
// gradient sync / optimizer, and the time inside communication (medians), GFLOP/s by the stated
// formula, MFU against an fp32 GEMM peak measured in the same run, and peak RSS. Under MPI every
// rank runs the same steps with the trainer's gradient synchronisation (data_parallel.h, ZeRO-1
// with training.zero1) and rank 0 prints one row per rank. Returns 0.
int run_bench(const config::Config& cfg, const BenchOptions& opt, Comm& comm);

// Training FLOPs per step: tokens * (6 * (linear params + vocab*d) + 12 * layers * d * seq).
double train_flops_per_step(const config::Config& cfg);

}  // namespace trainers::train
