// Training-step benchmark: synthetic tokens, median phase timings, GFLOP/s, MFU, peak RSS.
#include "trainers/train/bench.h"

#include <omp.h>
#include <sys/resource.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <nlohmann/json.hpp>
#include <vector>

#include "autograd/dispatch.h"
#include "autograd/kernels.h"
#include "autograd/ops.h"
#include "autograd/random.h"
#include "nn/model.h"
#include "optim/adamw.h"
#include "trainers/train/data_parallel.h"
#include "trainers/train/plot.h"
#ifdef BITNET_CUDA
#include "autograd/cuda/cuda.h"
#endif

namespace trainers::train {
using config::Config;
namespace {
using clk = std::chrono::steady_clock;
double ms_since(clk::time_point t) {
  return std::chrono::duration<double, std::milli>(clk::now() - t).count();
}
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
  autograd::Tensor a = autograd::Tensor::full(autograd::Shape{n, n}, 0.5f), b = a.clone(),
                   c = a.clone();
  std::vector<double> t;
  for (int i = 0; i < 6; ++i) {
    const auto t0 = clk::now();
    autograd::kernels::gemm(false, true, n, n, n, 1.0f, a.data(), n, b.data(), n, 0.0f, c.data(),
                            n);
    if (i) t.push_back(ms_since(t0));
  }
  return 2.0 * double(n * n * n) / (median(t) * 1e6);
}
// Per-op table, ms per step, largest total first.
void print_profile(const autograd::Tape& tape, int steps) {
  std::vector<std::pair<std::string, autograd::OpTime>> ops(tape.profile().begin(),
                                                            tape.profile().end());
  std::sort(ops.begin(), ops.end(), [](auto& a, auto& b) {
    return a.second.forward_ms + a.second.backward_ms > b.second.forward_ms + b.second.backward_ms;
  });
  std::printf("  per op (ms/step)        forward  backward  calls/step\n");
  for (auto& [name, t] : ops)
    std::printf("    %-20s %9.1f %9.1f %8.0f\n", name.c_str(), t.forward_ms / steps,
                t.backward_ms / steps, double(t.calls) / steps);
}
}  // namespace

double train_flops_per_step(const Config& c) {
  const auto& m = c.model;
  const double d = double(m.d_model), kv = double(m.kv_heads() * m.head_dim());
  const double linear = double(m.n_layers) * (2 * d * d + 2 * kv * d + 3 * d * double(m.ffn_dim));
  const double per_token = 6.0 * (linear + double(m.vocab_size) * d) +
                           12.0 * double(m.n_layers) * d * double(c.data.seq_len);
  return per_token * double(c.tokens_per_step());
}

namespace {
// One rank's medians (ms) and derived figures.
struct RankTimes {
  double step, fwd, bwd, sync, opt, comm, tps;
};

// Every rank's RankTimes on every rank (doubles travel bit-cast through allgather_u64).
std::vector<RankTimes> gather_times(Comm& comm, const RankTimes& mine) {
  const double* f = &mine.step;
  std::vector<std::vector<uint64_t>> cols;
  for (int k = 0; k < 7; ++k) {
    uint64_t u;
    std::memcpy(&u, f + k, 8);
    cols.push_back(comm.allgather_u64(u));
  }
  std::vector<RankTimes> out(size_t(comm.world()));
  for (size_t r = 0; r < out.size(); ++r)
    for (int k = 0; k < 7; ++k) std::memcpy(&out[r].step + k, &cols[size_t(k)][r], 8);
  return out;
}
}  // namespace

namespace {
// A GPU's facts and GEMM ceilings at the step's shapes (M = tokens of a micro-batch; K x N of the
// projections, the FFN and the LM head), measured now, in bf16 and int8; printed and in the JSON.
struct DeviceFacts {
  std::string name;
  double nominal_bf16 = 0;  // TFLOP/s, datasheet (0: unknown part)
  double bf16_square = 0;   // TFLOP/s at 8192^3 (the practical dense peak)
  nlohmann::json ceilings = nlohmann::json::array();
};
DeviceFacts device_facts(const Config& cfg, autograd::Device dev) {
  DeviceFacts f;
#ifdef BITNET_CUDA
  const int i = dev.index;
  f.name = autograd::cuda::device_name(i);
  f.nominal_bf16 = autograd::cuda::nominal_bf16_tflops(i);
  f.bf16_square = autograd::cuda::gemm_rate(i, "bf16", 8192, 8192, 8192, 5);
  const auto& m = cfg.model;
  const int64_t M = cfg.data.micro_batch * cfg.data.seq_len;
  const std::pair<int64_t, int64_t> shapes[] = {{m.d_model, m.d_model},
                                                {m.d_model, m.ffn_dim},
                                                {m.ffn_dim, m.d_model},
                                                {m.d_model, m.vocab_size}};
  for (auto [K, N] : shapes)
    f.ceilings.push_back(
        {{"M", M},
         {"K", K},
         {"N", N},
         {"bf16_tflops", autograd::cuda::gemm_rate(i, "bf16", M, N, K)},
         {"int8_tops",
          K % 4 == 0 && N % 4 == 0 ? autograd::cuda::gemm_rate(i, "int8", M, N, K) : 0.0}});
#else
  (void)cfg, (void)dev;
#endif
  return f;
}
}  // namespace

int run_bench(const Config& cfg, const BenchOptions& opt, Comm& comm) {
  if (cfg.training.threads > 0) omp_set_num_threads(cfg.training.threads);
  const int world = comm.world();
  const config::Placement at = config::resolve_placement(cfg, world);
  const autograd::Device dev = at.device;
  const bool gpu = !dev.is_cpu();
  const autograd::ScopedGemmPrecision precision(at.precision);
  nn::BitNetLM model(cfg.model, cfg.training.seed);
  const nn::ActMode mode = opt.mode.empty() ? cfg.stages.front().mode : nn::parse_mode(opt.mode);
  model.set_mode(mode);
  model.params().to(dev);
  DataParallel dp(model, comm, cfg.training.zero1);
  optim::AdamW adamw(model.params(), cfg.adamw, dp.shard_begin(), dp.shard_end());
  auto wait = [dev] { autograd::synchronize(dev); };  // phase boundaries on a GPU
  const int64_t B = cfg.data.micro_batch, S = cfg.data.seq_len, accum = cfg.data.grad_accum;
  std::vector<int32_t> x(size_t(B * S)), y(size_t(B * S));
  autograd::Rng rng(7 + uint64_t(comm.rank()));  // each rank its own synthetic batch
  for (size_t i = 0; i < x.size(); ++i)
    x[i] = int32_t(rng.below(uint64_t(cfg.model.vocab_size))),
    y[i] = int32_t(rng.below(uint64_t(cfg.model.vocab_size)));
  const double peak = gpu ? 0.0 : gemm_peak_gflops();
  const DeviceFacts facts = gpu ? device_facts(cfg, dev) : DeviceFacts{};
  autograd::Tape tape;
  size_t fresh_after_warmup = 0;
  std::vector<double> fwd, bwd, sync, optt, comm_ms, total;
  comm.barrier();
  for (int s = 0; s < opt.warmup + opt.steps; ++s) {
    if (s == opt.warmup) {
      wait();
      fresh_after_warmup = autograd::pool_stats(dev).fresh_allocations;
      autograd::reset_pool_peaks();
    }
    const auto t0 = clk::now();
    const double c0 = comm.comm_seconds();
    double f = 0, b = 0, loss_sum = 0;
    model.params().zero_grad();
    tape.set_profiling(opt.profile && s >= opt.warmup, dev);
    for (int64_t a = 0; a < accum; ++a) {
      const auto tf = clk::now();
      autograd::TapeScope scope(tape);
      autograd::Variable loss = model.loss(x, y, B, S);
      if (!gpu) loss_sum += loss.value().item();  // (a GPU's loss is not read: no round trip)
      wait();
      f += ms_since(tf);
      const auto tb = clk::now();
      if (a + 1 == accum) dp.before_last_backward(tape);
      tape.backward(loss, autograd::Tensor::full(loss.shape(), 1.0f / float(accum), dev));
      wait();
      b += ms_since(tb);
    }
    const auto ts = clk::now();
    dp.reduce(tape, loss_sum, accum);
    dp.clip_grad_norm(cfg.grad_clip);
    wait();
    const double sy = ms_since(ts);
    const auto to = clk::now();
    adamw.step(1e-4, 0.1);
    dp.after_step();
    wait();
    const double o = ms_since(to);
    if (s >= opt.warmup)
      fwd.push_back(f), bwd.push_back(b), sync.push_back(sy), optt.push_back(o),
          comm_ms.push_back(1e3 * (comm.comm_seconds() - c0)), total.push_back(ms_since(t0));
  }
  const int64_t rank_tokens = cfg.tokens_per_step(), all_tokens = cfg.tokens_per_step(world);
  RankTimes mine{
      median(total), median(fwd), median(bwd), median(sync), median(optt), median(comm_ms), 0};
  mine.tps = double(rank_tokens) / (mine.step / 1e3);
  const std::vector<uint64_t> state = comm.allgather_u64(uint64_t(adamw.state_bytes()));
  const std::vector<RankTimes> ranks = gather_times(comm, mine);
  if (comm.rank() != 0) return 0;
  double slowest = 0;
  for (const auto& r : ranks) slowest = std::max(slowest, r.step);
  const double flops = train_flops_per_step(cfg) * double(world);
  const double tps = double(all_tokens) / (slowest / 1e3), gflops = flops / (slowest * 1e6);
  // MFU: against the measured fp32 GEMM peak on a CPU; on a GPU against the dense bf16 peak
  // (datasheet; the measured 8192^3 bf16 rate when the part is unknown).
  const double peak_gflops =
      gpu ? 1e3 * (facts.nominal_bf16 > 0 ? facts.nominal_bf16 : facts.bf16_square) : peak;
  const autograd::PoolStats pool = autograd::pool_stats(dev);
  nlohmann::json per_rank = nlohmann::json::array();
  for (size_t r = 0; r < ranks.size(); ++r)
    per_rank.push_back({{"rank", r},
                        {"tokens_per_s", ranks[r].tps},
                        {"ms_per_step", ranks[r].step},
                        {"ms_forward", ranks[r].fwd},
                        {"ms_backward", ranks[r].bwd},
                        {"ms_grad_sync", ranks[r].sync},
                        {"ms_optimizer", ranks[r].opt},
                        {"ms_comm", ranks[r].comm},
                        {"comm_share", ranks[r].comm / ranks[r].step},
                        {"optimizer_state_bytes", state[r]}});
  nlohmann::json j = {
      {"config", cfg.path},
      {"mode", nn::to_string(mode)},
      {"threads", omp_get_max_threads()},
      {"ranks", world},
      {"zero1", dp.zero1()},
      {"tokens_per_step", all_tokens},
      {"tokens_per_step_per_rank", rank_tokens},
      {"steps_timed", opt.steps},
      {"tokens_per_s", tps},
      {"tokens_per_s_per_rank", tps / world},
      {"ms_per_step", slowest},
      {"ms_forward", mine.fwd},
      {"ms_backward", mine.bwd},
      {"ms_grad_sync", mine.sync},
      {"ms_optimizer", mine.opt},
      {"ms_comm", mine.comm},
      {"comm_share", mine.comm / mine.step},
      {"gflop_per_step", flops / 1e9},
      {"gflops", gflops},
      {"device", dev.str()},
      {"precision", autograd::to_string(at.precision)},
      {"gemm_peak_gflops", peak_gflops},
      {"gemm_kernels",
       gpu ? std::string("cublas ") + autograd::to_string(at.precision)
           : std::string(autograd::kernels::gemm_backend()) + " " + autograd::kernels::gemm_core()},
      {"mfu", gflops / (peak_gflops * world)},
      {"peak_rss_mib", peak_rss_mib()},
      {"optimizer_state_bytes", state[0]},
      {"per_rank", per_rank}};
  if (gpu) {
    j["gpu"] = {{"name", facts.name},
                {"nominal_bf16_tflops", facts.nominal_bf16},
                {"measured_bf16_tflops_8192", facts.bf16_square},
                {"gemm_ceilings", facts.ceilings},
                {"peak_device_mib", double(pool.peak_held_bytes) / 1048576.0},
                {"peak_live_device_mib", double(pool.peak_live_bytes) / 1048576.0},
                {"device_allocations_in_timed_steps", pool.fresh_allocations - fresh_after_warmup}};
  }
  std::printf(
      "bench %s, mode %s, %d rank(s) x %d threads%s, %lld tokens/step (%lld per rank), %d timed "
      "steps (medians)\n",
      cfg.path.c_str(), nn::to_string(mode).c_str(), world, omp_get_max_threads(),
      dp.zero1() ? ", ZeRO-1" : "", (long long)all_tokens, (long long)rank_tokens, opt.steps);
  std::printf(
      "  tokens/s        %10.1f  (%.1f per rank)\n  ms/step         %10.1f  (slowest rank)\n", tps,
      tps / world, slowest);
  std::printf("  GFLOP/step      %10.1f  (tokens x (6 x (linear params + V d) + 12 L d T))\n",
              flops / 1e9);
  if (gpu) {
    std::printf("  device          %s (%s), %s GEMMs\n", dev.str().c_str(), facts.name.c_str(),
                autograd::to_string(at.precision));
    std::printf(
        "  TFLOP/s         %10.1f  (MFU %.1f%% of the %.1f TFLOP/s dense bf16 peak%s; cuBLAS bf16 "
        "8192^3 now: %.1f)\n",
        gflops / 1e3, 100 * gflops / peak_gflops, peak_gflops / 1e3,
        facts.nominal_bf16 > 0 ? ", datasheet" : ", measured", facts.bf16_square);
    for (const auto& c : facts.ceilings)
      std::printf("  ceiling M %lld K %5lld N %5lld: bf16 %6.1f TFLOP/s, int8 %6.1f TOP/s\n",
                  (long long)c["M"].get<int64_t>(), (long long)c["K"].get<int64_t>(),
                  (long long)c["N"].get<int64_t>(), c["bf16_tflops"].get<double>(),
                  c["int8_tops"].get<double>());
    std::printf(
        "  device memory   %10.1f MiB peak held by the pool (%.1f MiB live); %zu device "
        "allocations in the timed steps\n",
        double(pool.peak_held_bytes) / 1048576.0, double(pool.peak_live_bytes) / 1048576.0,
        pool.fresh_allocations - fresh_after_warmup);
  } else {
    std::printf(
        "  GFLOP/s         %10.1f  (fp32 GEMM peak measured now: %.1f per rank, %s %s; MFU "
        "%.1f%%)\n",
        gflops, peak, autograd::kernels::gemm_backend(), autograd::kernels::gemm_core(),
        100 * gflops / (peak * world));
  }
  std::printf("  peak RSS        %10.1f MiB (rank 0)\n", peak_rss_mib());
  std::printf("  %4s %10s %9s %9s %9s %9s %9s %9s %6s %12s\n", "rank", "tokens/s", "ms/step",
              "forward", "backward", "grad sync", "optimizer", "comm", "comm%", "optim bytes");
  for (size_t r = 0; r < ranks.size(); ++r)
    std::printf("  %4zu %10.1f %9.1f %9.1f %9.1f %9.1f %9.1f %9.1f %5.1f%% %12llu\n", r,
                ranks[r].tps, ranks[r].step, ranks[r].fwd, ranks[r].bwd, ranks[r].sync,
                ranks[r].opt, ranks[r].comm, 100 * ranks[r].comm / ranks[r].step,
                (unsigned long long)state[r]);
  std::printf(
      "  (comm = time inside MPI calls: the all-reduces issued and progressed during backward, the "
      "wait in\n"
      "   grad sync, and under ZeRO-1 the reduce-scatter and the parameter all-gather in "
      "optimizer)\n");
  if (opt.profile) print_profile(tape, opt.steps);
  std::printf("%s\n", j.dump().c_str());
  if (!opt.json_out.empty()) write_file(opt.json_out, j.dump(2) + "\n");
  return 0;
}

}  // namespace trainers::train
