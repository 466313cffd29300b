// Training-step benchmark: synthetic tokens, median phase timings, GFLOP/s, MFU, peak RSS.
#include "trainers/bench.h"

#include <omp.h>
#include <sys/resource.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <nlohmann/json.hpp>
#include <vector>

#include "autograd/kernels.h"
#include "autograd/ops.h"
#include "autograd/random.h"
#include "nn/model.h"
#include "optim/adamw.h"
#include "trainers/plot.h"

namespace trainers {
namespace {
using clk = std::chrono::steady_clock;
double ms_since(clk::time_point t) { return std::chrono::duration<double, std::milli>(clk::now() - t).count(); }
double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v.empty() ? 0 : v[v.size() / 2];
}
double peak_rss_mib() {
  rusage u{};
  getrusage(RUSAGE_SELF, &u);
  return double(u.ru_maxrss) / 1024.0;
}
// fp32 GEMM peak of this machine with the current thread count: median of 5 runs of a
// 1024 x 1024 x 1024 product (2 * 1024^3 FLOP).
double gemm_peak_gflops() {
  const int64_t n = 1024;
  autograd::Tensor a = autograd::Tensor::full(autograd::Shape{n, n}, 0.5f), b = a.clone(), c = a.clone();
  std::vector<double> t;
  for (int i = 0; i < 6; ++i) {
    const auto t0 = clk::now();
    autograd::kernels::gemm(false, true, n, n, n, 1.0f, a.data(), n, b.data(), n, 0.0f, c.data(), n);
    if (i) t.push_back(ms_since(t0));
  }
  return 2.0 * double(n * n * n) / (median(t) * 1e6);
}
// Per-op table, ms per step, largest total first.
void print_profile(const autograd::Tape& tape, int steps) {
  std::vector<std::pair<std::string, autograd::OpTime>> ops(tape.profile().begin(), tape.profile().end());
  std::sort(ops.begin(), ops.end(), [](auto& a, auto& b) {
    return a.second.forward_ms + a.second.backward_ms > b.second.forward_ms + b.second.backward_ms;
  });
  std::printf("  per op (ms/step)        forward  backward  calls/step\n");
  for (auto& [name, t] : ops)
    std::printf("    %-20s %9.1f %9.1f %8.0f\n", name.c_str(), t.forward_ms / steps, t.backward_ms / steps,
                double(t.calls) / steps);
}
}  // namespace

double train_flops_per_step(const Config& c) {
  const auto& m = c.model;
  const double d = double(m.d_model), kv = double(m.kv_heads() * m.head_dim());
  const double linear = double(m.n_layers) * (2 * d * d + 2 * kv * d + 3 * d * double(m.ffn_dim));
  const double per_token = 6.0 * (linear + double(m.vocab_size) * d) + 12.0 * double(m.n_layers) * d * double(c.data.seq_len);
  return per_token * double(c.tokens_per_step());
}

int run_bench(const Config& cfg, const BenchOptions& opt) {
  if (cfg.training.threads > 0) omp_set_num_threads(cfg.training.threads);
  nn::BitNetLM model(cfg.model, cfg.training.seed);
  const nn::ActMode mode = opt.mode.empty() ? cfg.stages.front().mode : nn::parse_mode(opt.mode);
  model.set_mode(mode);
  optim::AdamW adamw(model.params(), cfg.adamw);
  const int64_t B = cfg.data.micro_batch, S = cfg.data.seq_len, accum = cfg.data.grad_accum;
  std::vector<int32_t> x(size_t(B * S)), y(size_t(B * S));
  autograd::Rng rng(7);
  for (size_t i = 0; i < x.size(); ++i) x[i] = int32_t(rng.below(uint64_t(cfg.model.vocab_size))), y[i] = int32_t(rng.below(uint64_t(cfg.model.vocab_size)));
  const double peak = gemm_peak_gflops();
  autograd::Tape tape;
  std::vector<double> fwd, bwd, optt, total;
  for (int s = 0; s < opt.warmup + opt.steps; ++s) {
    const auto t0 = clk::now();
    double f = 0, b = 0;
    model.params().zero_grad();
    tape.set_profiling(opt.profile && s >= opt.warmup);
    for (int64_t a = 0; a < accum; ++a) {
      const auto tf = clk::now();
      autograd::TapeScope scope(tape);
      autograd::Variable loss = model.loss(x, y, B, S);
      f += ms_since(tf);
      const auto tb = clk::now();
      tape.backward(loss);
      b += ms_since(tb);
    }
    const auto to = clk::now();
    optim::clip_grad_norm(model.params(), cfg.grad_clip);
    adamw.step(1e-4, 0.1);
    const double o = ms_since(to);
    if (s >= opt.warmup) fwd.push_back(f), bwd.push_back(b), optt.push_back(o), total.push_back(ms_since(t0));
  }
  const double step_ms = median(total), flops = train_flops_per_step(cfg);
  const double tps = double(cfg.tokens_per_step()) / (step_ms / 1e3), gflops = flops / (step_ms * 1e6);
  nlohmann::json j = {{"config", cfg.path},
                      {"mode", nn::to_string(mode)},
                      {"threads", omp_get_max_threads()},
                      {"tokens_per_step", cfg.tokens_per_step()},
                      {"steps_timed", opt.steps},
                      {"tokens_per_s", tps},
                      {"ms_per_step", step_ms},
                      {"ms_forward", median(fwd)},
                      {"ms_backward", median(bwd)},
                      {"ms_optimizer", median(optt)},
                      {"ms_comm", 0.0},
                      {"gflop_per_step", flops / 1e9},
                      {"gflops", gflops},
                      {"gemm_peak_gflops", peak},
                      {"mfu", gflops / peak},
                      {"peak_rss_mib", peak_rss_mib()}};
  std::printf("bench %s, mode %s, %d threads, %lld tokens/step, %d timed steps (medians)\n", cfg.path.c_str(),
              nn::to_string(mode).c_str(), omp_get_max_threads(), (long long)cfg.tokens_per_step(), opt.steps);
  std::printf("  tokens/s        %10.1f\n  ms/step         %10.1f  (forward %.1f, backward %.1f, optimizer %.1f, comm 0.0)\n",
              tps, step_ms, median(fwd), median(bwd), median(optt));
  std::printf("  GFLOP/step      %10.1f  (tokens x (6 x (linear params + V d) + 12 L d T))\n", flops / 1e9);
  std::printf("  GFLOP/s         %10.1f  (fp32 GEMM peak measured now: %.1f; MFU %.1f%%)\n", gflops, peak, 100 * gflops / peak);
  std::printf("  peak RSS        %10.1f MiB\n", peak_rss_mib());
  if (opt.profile) print_profile(tape, opt.steps);
  std::printf("%s\n", j.dump().c_str());
  if (!opt.json_out.empty()) write_file(opt.json_out, j.dump(2) + "\n");
  return 0;
}

}  // namespace trainers
