// Per-kernel microbenchmarks (Google Benchmark) with roofline figures against peaks measured here.
//
// Each benchmark reports its rate (GFLOP/s for GEMMs, GB/s for memory-bound kernels) and
// `of_peak`, the rate as a fraction of the matching peak measured at start-up in the same run:
// fp32 GEMM 1024^3 (OpenBLAS/Eigen, whichever the build uses), int8 ternary GEMM 2048x2048x2048
// (the fastest igemm kernel the CPU has),
// and the memory bandwidth of a 256 MiB copy (bytes read + written). Shapes are the bench
// config's (d 512, ffn 1536, 2048 tokens per step, vocab 8192). Run:
// build/release/bench/bench_kernels
#include <benchmark/benchmark.h>
#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <vector>

#include "autograd/kernels.h"
#include "autograd/ops.h"
#include "autograd/random.h"
#include "nn/model.h"
#include "optim/adamw.h"
#include "quant/bitlinear.h"
#include "quant/igemm.h"
#include "quant/quantizers.h"

namespace ag = autograd;
namespace kn = autograd::kernels;

namespace {

double g_sgemm_peak = 0, g_igemm_peak = 0, g_bw_peak = 0;  // GFLOP/s, GOP/s, GB/s

template <class F>
double best_seconds(F&& f, int reps) {
  double best = 1e30;
  for (int i = 0; i < reps; ++i) {
    const auto t0 = std::chrono::steady_clock::now();
    f();
    best = std::min(best,
                    std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  }
  return best;
}

std::vector<float> randn(int64_t n, uint64_t seed, float scale = 1.0f) {
  ag::Rng r(seed);
  std::vector<float> v(static_cast<size_t>(n));
  for (auto& x : v) x = scale * float(r.normal());
  return v;
}

std::vector<int8_t> random_codes(int64_t n, int lo, int hi, uint64_t seed) {
  ag::Rng r(seed);
  std::vector<int8_t> v(static_cast<size_t>(n));
  for (auto& x : v) x = int8_t(lo + int(r.below(uint64_t(hi - lo + 1))));
  return v;
}

void measure_peaks() {
  {
    const int64_t n = 1024;
    auto a = randn(n * n, 1), b = randn(n * n, 2);
    std::vector<float> c(static_cast<size_t>(n * n));
    const double s = best_seconds(
        [&] { kn::gemm(false, true, n, n, n, 1.0f, a.data(), n, b.data(), n, 0.0f, c.data(), n); },
        5);
    g_sgemm_peak = 2.0 * double(n * n * n) / s / 1e9;
  }
  {
    const int64_t n = 2048;
    auto x = random_codes(n * n, -128, 127, 3), w = random_codes(n * n, -1, 1, 4);
    const quant::PackedTernary p = quant::pack_ternary(w.data(), n, n);
    std::vector<float> xs(size_t(n), 1.0f), y(static_cast<size_t>(n * n));
    const double s = best_seconds(
        [&] { quant::igemm_ternary_f32(x.data(), n, n, p, xs.data(), 1.0f, y.data(), n); }, 3);
    g_igemm_peak = 2.0 * double(n * n * n) / s / 1e9;
  }
  {
    const int64_t n = int64_t(64) << 20;  // 64 Mi floats = 256 MiB
    std::vector<float> a(size_t(n), 1.0f), b(static_cast<size_t>(n));
    const double s = best_seconds(
        [&] {
          kn::parallel_range(n, [&](int64_t i0, int64_t i1) {
            std::memcpy(b.data() + i0, a.data() + i0, size_t(i1 - i0) * 4);
          });
        },
        5);
    g_bw_peak = 2.0 * double(n) * 4 / s / 1e9;
  }
}

// The cores' instruction peaks: 12 independent accumulator chains of one zmm instruction per
// thread (fp32 FMA: 32 FLOP; vpdpbusd: 64 int8 MACs = 128 OP), so that the GEMM peaks above can be
// read against what the hardware issues at most. 0 where the build has no AVX512-VNNI.
double g_fma_peak = 0, g_vnni_peak = 0;
#if defined(__x86_64__) && defined(__AVX512F__) && defined(__AVX512VNNI__)
#define BN_12(op)                                                                                 \
  op("0") op("1") op("2") op("3") op("4") op("5") op("6") op("7") op("8") op("9") op("10") op("1" \
                                                                                              "1")
#define BN_FMA(r) "vfmadd231ps %%zmm14, %%zmm15, %%zmm" r "\n"
#define BN_DPB(r) "vpdpbusd %%zmm14, %%zmm15, %%zmm" r "\n"
#define BN_CLOBBER \
  "xmm0", "xmm1", "xmm2", "xmm3", "xmm4", "xmm5", "xmm6", "xmm7", "xmm8", "xmm9", "xmm10", "xmm11"
void measure_instruction_peaks() {
  const long n = 20'000'000;
  auto rate = [&](bool vnni) {
    const double s = best_seconds(
        [&] {
#pragma omp parallel
          for (long i = 0; i < n; ++i) {
            if (vnni)
              asm volatile(BN_12(BN_DPB)::: BN_CLOBBER);
            else
              asm volatile(BN_12(BN_FMA)::: BN_CLOBBER);
          }
        },
        3);
    return (vnni ? 128.0 : 32.0) * 12 * double(n) * omp_get_max_threads() / s / 1e9;
  };
  g_fma_peak = rate(false);
  g_vnni_peak = rate(true);
}
#else
void measure_instruction_peaks() {}
#endif

void flops(benchmark::State& st, double per_iter, double peak) {
  st.counters["GFLOP/s"] =
      benchmark::Counter(per_iter / 1e9, benchmark::Counter::kIsIterationInvariantRate);
  st.counters["of_peak"] =
      benchmark::Counter(per_iter / 1e9 / peak, benchmark::Counter::kIsIterationInvariantRate);
}
void bytes(benchmark::State& st, double per_iter) {
  st.counters["GB/s"] =
      benchmark::Counter(per_iter / 1e9, benchmark::Counter::kIsIterationInvariantRate);
  st.counters["of_peak"] =
      benchmark::Counter(per_iter / 1e9 / g_bw_peak, benchmark::Counter::kIsIterationInvariantRate);
}

// fp32 GEMM C[M,N] = op(A) op(B): args M, N, K, ta, tb (the BitLinear backward and LM head shapes).
void BM_sgemm(benchmark::State& st) {
  const int64_t M = st.range(0), N = st.range(1), K = st.range(2);
  const bool ta = st.range(3), tb = st.range(4);
  auto a = randn(M * K, 1), b = randn(K * N, 2);
  std::vector<float> c(static_cast<size_t>(M * N));
  for (auto _ : st)
    kn::gemm(ta, tb, M, N, K, 1.0f, a.data(), ta ? M : K, b.data(), tb ? K : N, 0.0f, c.data(), N);
  flops(st, 2.0 * double(M * N * K), g_sgemm_peak);
}
BENCHMARK(BM_sgemm)
    ->ArgNames({"M", "N", "K", "ta", "tb"})
    ->Args({2048, 512, 1536, 0, 0})  // dX of down_proj
    ->Args({2048, 512, 512, 0, 0})   // dX of q/k/v/o
    ->Args({512, 512, 2048, 1, 0})   // dW of q/k/v/o
    ->Args({512, 1536, 2048, 1, 0})  // dW of down_proj
    ->Args({1536, 512, 2048, 1, 0})  // dW of gate/up
    ->Args({2048, 1536, 512, 0, 1})  // fp-mode forward of gate/up
    ->Args({2048, 8192, 512, 0, 1})  // LM head forward
    ->UseRealTime();

// Integer BitLinear forward: x codes [M,K] x ternary [N,K] -> y [M,N] fp32, by the igemm kernel
// of arg 3 (0 portable, 1 AVX2, 2 AVX512-VNNI; skipped where the CPU lacks it).
void BM_igemm(benchmark::State& st) {
  const int64_t M = st.range(0), N = st.range(1), K = st.range(2);
  const quant::IgemmKernel kernels[] = {quant::IgemmKernel::Portable, quant::IgemmKernel::Avx2,
                                        quant::IgemmKernel::Avx512Vnni};
  const quant::IgemmKernel kernel = kernels[st.range(3)];
  if (!quant::igemm_available(kernel)) return st.SkipWithError("kernel not available on this CPU");
  auto x = random_codes(M * K, -8, 7, 5), w = random_codes(N * K, -1, 1, 6);
  const quant::PackedTernary p = quant::pack_ternary(w.data(), N, K);
  std::vector<float> xs(size_t(M), 0.01f), y(static_cast<size_t>(M * N));
  quant::igemm_force(kernel);
  for (auto _ : st) quant::igemm_ternary_f32(x.data(), M, K, p, xs.data(), 0.5f, y.data(), N);
  st.SetLabel(quant::igemm_kernel());
  quant::igemm_force(quant::IgemmKernel::Auto);
  flops(st, 2.0 * double(M * N * K), g_igemm_peak);
  st.counters["vs_sgemm_peak"] = benchmark::Counter(2.0 * double(M * N * K) / 1e9 / g_sgemm_peak,
                                                    benchmark::Counter::kIsIterationInvariantRate);
}
BENCHMARK(BM_igemm)
    ->ArgNames({"M", "N", "K", "kernel"})
    ->ArgsProduct({{2048}, {512}, {512}, {1, 2}})
    ->ArgsProduct({{2048}, {1536}, {512}, {0, 1, 2}})  // portable too at the gate/up shape
    ->ArgsProduct({{2048}, {512}, {1536}, {1, 2}})
    ->UseRealTime();

// Ternary quantization + VNNI packing of one weight [N,K] (once per BitLinear per forward).
void BM_ternary_pack(benchmark::State& st) {
  const int64_t N = st.range(0), K = st.range(1);
  auto w = randn(N * K, 7, 0.02f);
  std::vector<int8_t> codes(static_cast<size_t>(N * K));
  for (auto _ : st) {
    quant::ternary_absmean(w.data(), N * K, nullptr, codes.data());
    benchmark::DoNotOptimize(quant::pack_ternary(codes.data(), N, K));
  }
  bytes(st, double(N * K) * (4 + 1 + 1 + 1));  // fp32 read, codes written + read, panels written
}
BENCHMARK(BM_ternary_pack)->Args({1536, 512})->UseRealTime();

// Activation quantizers to integer codes: rows x cols fp32 in, int8 codes out. arg 2: kind
// (0 INT8, 1 INT4, 2 top-K 50% + INT8).
void BM_act_codes(benchmark::State& st) {
  const int64_t rows = st.range(0), cols = st.range(1);
  const quant::ActSpec specs[] = {{quant::ActKind::Int8, 0.0f, 1.0f},
                                  {quant::ActKind::Int4, 0.0f, 1.0f},
                                  {quant::ActKind::Int8, 0.5f, 1.0f}};
  const quant::ActSpec spec = specs[st.range(2)];
  auto x = randn(rows * cols, 8);
  std::vector<int8_t> c(static_cast<size_t>(rows * cols));
  std::vector<float> m(static_cast<size_t>(rows)), s(static_cast<size_t>(rows));
  for (auto _ : st)
    quant::act_quantize_codes(spec, x.data(), rows, cols, c.data(), cols, m.data(), s.data(),
                              false);
  st.SetLabel(quant::to_string(spec));
  bytes(st, double(rows * cols) * 5);
}
BENCHMARK(BM_act_codes)
    ->Args({2048, 512, 0})
    ->Args({2048, 512, 1})
    ->Args({2048, 512, 2})
    ->Args({2048, 1536, 0})
    ->UseRealTime();

// Tape ops, forward + backward: RMSNorm [2048, 1536], relu2_mul [2048, 1536], cross-entropy
// [2048, 8192], causal attention [8, 8, 256, 64].
template <class Build>
void run_tape(benchmark::State& st, Build&& build) {
  ag::Tape tape;
  for (auto _ : st) {
    ag::TapeScope scope(tape);
    ag::Variable y = build();
    tape.backward(y);
  }
}
ag::Variable param(const ag::Shape& s, uint64_t seed) {
  auto v = randn(s.numel(), seed);
  return ag::Variable(ag::Tensor::from(s, v), true);
}
void BM_rmsnorm(benchmark::State& st) {
  const int64_t R = 2048, D = st.range(0);
  ag::Variable x = param(ag::Shape{R, D}, 1), g = param(ag::Shape{D}, 2);
  run_tape(st, [&] { return ag::sum(ag::rmsnorm(x, g, 1e-5f)); });
  bytes(st, double(R * D) * 4 * 5);  // fwd: x read, y written; bwd: dy, x read, dx written
}
BENCHMARK(BM_rmsnorm)->Arg(512)->Arg(1536)->UseRealTime();
void BM_relu2_mul(benchmark::State& st) {
  ag::Variable g = param(ag::Shape{2048, 1536}, 3), u = param(ag::Shape{2048, 1536}, 4);
  run_tape(st, [&] { return ag::sum(ag::relu2_mul(g, u)); });
  bytes(st, 2048.0 * 1536 * 4 * 8);  // fwd 2 in + 1 out; bwd dy, g, u in, dg, du out (+ sum)
}
BENCHMARK(BM_relu2_mul)->UseRealTime();
void BM_cross_entropy(benchmark::State& st) {
  ag::Variable z = param(ag::Shape{2048, 8192}, 5);
  std::vector<int32_t> t(2048);
  for (size_t i = 0; i < t.size(); ++i) t[i] = int32_t(i * 7 % 8192);
  run_tape(st, [&] { return ag::cross_entropy(z, t); });
  bytes(st, 2048.0 * 8192 * 4 * 4);
}
BENCHMARK(BM_cross_entropy)->UseRealTime();
void BM_attention(benchmark::State& st) {
  const ag::Shape s{8, 8, 256, 64};
  ag::Variable q = param(s, 6), k = param(s, 7), v = param(s, 8);
  run_tape(st, [&] { return ag::sum(ag::causal_attention(q, k, v)); });
  flops(st, 3.0 * 4.0 * 8 * 8 * 256.0 * 256 * 64,
        g_sgemm_peak);  // fwd 2 GEMMs + bwd 4, dense count
}
BENCHMARK(BM_attention)->UseRealTime();

// AdamW over a flat buffer of the bench model's size (31.6M parameters): memory bound.
void BM_adamw(benchmark::State& st) {
  nn::ModelConfig c;
  c.vocab_size = 8192, c.d_model = 512, c.n_layers = 8, c.n_heads = 8, c.ffn_dim = 1536;
  static std::unique_ptr<nn::BitNetLM> m;  // built once (init dominates otherwise)
  if (!m) m = std::make_unique<nn::BitNetLM>(c, 0);
  optim::AdamW opt(m->params(), optim::AdamWConfig{});
  for (auto _ : st) opt.step(1e-4, 0.1);
  bytes(st, double(m->params().numel()) * 4 * 7);  // p, g, m, v read; p, m, v written
}
BENCHMARK(BM_adamw)->UseRealTime()->Unit(benchmark::kMillisecond);

}  // namespace

int main(int argc, char** argv) {
  benchmark::Initialize(&argc, argv);
  measure_peaks();
  std::printf("threads %d, fp32 GEMM backend %s (kernels %s), int8 GEMM %s\n",
              omp_get_max_threads(), kn::gemm_backend(), kn::gemm_core(), quant::igemm_kernel());
  std::printf(
      "peaks measured now: fp32 GEMM %.1f GFLOP/s, int8 ternary GEMM %.1f GOP/s, copy bandwidth "
      "%.1f GB/s\n",
      g_sgemm_peak, g_igemm_peak, g_bw_peak);
  measure_instruction_peaks();
  if (g_fma_peak > 0)
    std::printf(
        "instruction peaks: fp32 FMA %.1f GFLOP/s (GEMM at %.0f%% of it), vpdpbusd %.1f GOP/s "
        "(int8 GEMM at %.0f%%)\n",
        g_fma_peak, 100 * g_sgemm_peak / g_fma_peak, g_vnni_peak, 100 * g_igemm_peak / g_vnni_peak);
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
