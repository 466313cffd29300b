// The CUDA quant kernel table (quant/dispatch.h): quantizers, ternary weights, packing and the
// exact int8 x ternary GEMM on the device, bit for bit equal to the CPU table (quant/cpu/).
//
// Float op order: exactly that of quantizers.cpp (rdiv = fl(fl(1/stat) * C), round half to even
// via rintf, max/min selects as std::max and clampf, fp32 division for y = c / s). Every product
// and quotient is written with an explicit IEEE-rounded intrinsic (__fmul_rn, __fdiv_rn, ...) and
// the file is compiled with --fmad=false (quant/CMakeLists.txt), so no FMA contraction can change
// a rounding. Statistics: absmax is the unsigned max of the sign-cleared bit patterns (as the CPU,
// NaN ranks above inf); absmean sums |x| in double through the fixed tree of block_sum and rounds
// once to float. The double sums are ordered differently from the CPU's 8 lanes, so the float
// mean could in principle differ by one ulp when the exact sum lies within ~1e-16 relative of a
// float rounding boundary; on test data they agree exactly (tests/cuda/test_cuda_quant.cpp).
//
// Per-row kernels run one block of kThreads threads per row. Top-K uses the CPU's search: the
// threshold is the largest 31-bit key t (key = |x| bit pattern) with #{key >= t} >= k, found by a
// binary search of 31 counting passes; ties at the threshold are kept lowest index first, via a
// block-wide exclusive prefix count of the ties in index order (the index of the last kept tie is
// the row's cut). Rows of at most kSmemCols columns are staged in shared memory for those passes.
//
// No host round trip, except the returned zero count when `count` is set (a synchronous 8-byte
// copy: the count is a host value by contract). Scratch (zero counter, partial sums, the int32
// GEMM accumulator) comes from the device's caching pool (Tensor::empty), never cudaMalloc.
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <mutex>
#include <type_traits>
#include <vector>

#include "autograd/cuda/common.cuh"
#include "autograd/cuda/cuda.h"
#include "quant/cuda/cuda.h"
#include "quant/dispatch.h"

namespace quant::cuda {
using autograd::Device;
using autograd::DType;
using autograd::Shape;
using autograd::Tensor;
using autograd::cuda::block_sum;
using autograd::cuda::blocks_for;
using autograd::cuda::for_each;
using autograd::cuda::kThreads;
using autograd::cuda::On;

namespace {

constexpr int kWarps = kThreads / 32;
constexpr int64_t kSmemCols = 10240;  // rows staged in shared memory for top-K (40 KiB)
constexpr int64_t kPad = 16;          // PackedTernary (CUDA layout): N and K padded to 16

std::atomic<bool> g_force_simple{false};
std::atomic<const char*> g_last_path{"none"};

// ---- device helpers (the CPU's scalar ops of quantizers.cpp) -----------------------------------

// std::max(a, b) = (a < b) ? b : a: a NaN first argument is returned (unlike fmaxf).
__device__ inline float std_max(float a, float b) { return a < b ? b : a; }
// clampf of quantizers.cpp: NaN maps to lo.
__device__ inline float clampf(float r, float lo, float hi) {
  r = r > lo ? r : lo;
  return r < hi ? r : hi;
}
// s = C / stat as PyTorch's `number / tensor`: fl(fl(1/stat) * C).
__device__ inline float rdiv(float C, float stat) { return __fmul_rn(__fdiv_rn(1.0f, stat), C); }
// The 31-bit top-K / absmax key: the sign-cleared bit pattern (monotone in |x|).
__device__ inline uint32_t key_of(float v) { return __float_as_uint(v) & 0x7fffffffu; }

// Block-wide integer reductions (blockDim.x == kThreads; every thread gets the result). `sh` is
// kWarps words of shared memory. Integer max/sum: the order does not matter.
__device__ inline uint32_t block_max_u32(uint32_t v, uint32_t* sh) {
  for (int o = 16; o > 0; o >>= 1) v = max(v, __shfl_xor_sync(0xffffffffu, v, o));
  if (threadIdx.x % 32 == 0) sh[threadIdx.x / 32] = v;
  __syncthreads();
  uint32_t r = sh[0];
  for (int i = 1; i < kWarps; ++i) r = max(r, sh[i]);
  __syncthreads();
  return r;
}
__device__ inline int block_sum_i32(int v, int* sh) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  if (threadIdx.x % 32 == 0) sh[threadIdx.x / 32] = v;
  __syncthreads();
  int r = 0;
  for (int i = 0; i < kWarps; ++i) r += sh[i];
  __syncthreads();
  return r;
}

// #{j < n : key(x_j) >= t} over the row (block-wide).
__device__ inline int64_t count_ge(const float* xr, int64_t n, uint32_t t, int* sh) {
  int c = 0;
  for (int64_t j = threadIdx.x; j < n; j += kThreads) c += key_of(xr[j]) >= t;
  return block_sum_i32(c, sh);
}

// Top-K of one row x[n], 0 < k < n: the threshold key thr (the k-th largest key) and cut, the
// index of the last tie (key == thr) kept. Entry j survives iff key_j > thr or (key_j == thr and
// j <= cut): exactly k entries, ties lowest index first (quantizers.cpp topk_row).
__device__ void topk_threshold(const float* xr, int64_t n, int64_t k, int* sh, int64_t* cut_sh,
                               uint32_t& thr, int64_t& cut) {
  uint32_t lo = 0, hi = 0x80000000u;  // invariant: count_ge(lo) >= k > count_ge(hi)
  while (hi - lo > 1) {
    const uint32_t mid = lo + (hi - lo) / 2;
    if (count_ge(xr, n, mid, sh) >= k)
      lo = mid;
    else
      hi = mid;
  }
  thr = lo;
  const int64_t quota = k - count_ge(xr, n, thr + 1, sh);  // >= 1 ties to keep
  // Exclusive prefix count of the ties in index order, kThreads entries per step: warp ballots,
  // then the warps' totals in warp order. The tie of rank quota - 1 is the cut.
  const int lane = int(threadIdx.x % 32), warp = int(threadIdx.x / 32);
  int64_t running = 0;
  for (int64_t base = 0; base < n; base += kThreads) {
    const int64_t j = base + threadIdx.x;
    const bool tie = j < n && key_of(xr[j]) == thr;
    const unsigned m = __ballot_sync(0xffffffffu, tie);
    if (lane == 0) sh[warp] = __popc(m);
    __syncthreads();
    int before = 0, total = 0;
    for (int i = 0; i < kWarps; ++i) {
      before += i < warp ? sh[i] : 0;
      total += sh[i];
    }
    const int64_t rank = running + before + __popc(m & ((1u << lane) - 1u));
    if (tie && rank == quota - 1) *cut_sh = j;
    running += total;
    __syncthreads();
    if (running >= quota) break;  // uniform over the block
  }
  cut = *cut_sh;
}

// ---- act_quantize / act_codes: one block per row -----------------------------------------------

struct ActArgs {
  const float* x = nullptr;  // [rows, cols]
  int64_t cols = 0;
  int64_t k = 0;            // top-K count (0: no top-K; >= cols: keep all)
  float* y = nullptr;       // [rows, cols] dequantized (or null)
  int8_t* codes = nullptr;  // [rows, ldc] codes, bytes [cols, ldc) set to 0 (or null)
  int64_t ldc = 0;
  float* mults = nullptr;               // [rows] s (or null)
  float* scales = nullptr;              // [rows] 1/s (or null)
  unsigned long long* zeros = nullptr;  // += number of zero outputs (or null)
  float int4_mult = 1.0f;
  bool smem = false;  // stage the row in dynamic shared memory (top-K rows)
};

// Per row r of x[rows, cols] (grid = rows, block = kThreads), with v = topk(x_r) (or x_r):
//   None: y = v;
//   Int8: g = max(max|v|, 1e-5), s = fl(fl(1/g) 127), c = clamp(rint(v s), -128, 127), y = c / s;
//   Int4: b = max(float(sum|v| / n) mult, 1e-5), s = fl(sqrt7 / b), c = clamp(rint(v s), -8, 7);
//   Fp4: s = fl(fl(1/g) 6), t = v s -> E2M1 grid (midpoint rules of fp4_row), y = sign(t) v_t / s;
//   Int4Absmax: g as Int8, s = fl(fl(1/g) 7), c = clamp(rint(v s), -8, 7), y = c / s;
//   Fp4E1M2: s = fl(fl(1/g) 1.75), t = v s -> E1M2 grid {0, 0.25, .., 1.75} (midpoint rules of
//     fp4_e1m2_row), y = sign(t) v_t / s;
// mults[r] = s, scales[r] = 1/s, zeros += #{zero outputs} (codes c == 0, or y == 0 for None).
template <ActKind Kind>
__global__ void act_rows_kernel(ActArgs a) {
  extern __shared__ float srow[];
  __shared__ double shd[kThreads];
  __shared__ uint32_t shu[kWarps];
  __shared__ int shi[kWarps];
  __shared__ int64_t cut_sh;
  const int64_t row = blockIdx.x, n = a.cols;
  const float* xr = a.x + row * n;
  if (a.smem) {
    for (int64_t j = threadIdx.x; j < n; j += kThreads) srow[j] = xr[j];
    __syncthreads();
    xr = srow;
  }
  uint32_t thr = 0;  // thr 0 and cut n keep every entry
  int64_t cut = n;
  if (a.k > 0 && a.k < n) topk_threshold(xr, n, a.k, shi, &cut_sh, thr, cut);
  auto val = [&](int64_t j) {
    const float v = xr[j];
    const uint32_t key = key_of(v);
    return key > thr || (key == thr && j <= cut) ? v : 0.0f;
  };
  float* yr = a.y ? a.y + row * n : nullptr;
  int8_t* cr = a.codes ? a.codes + row * a.ldc : nullptr;
  if (cr)
    for (int64_t j = n + threadIdx.x; j < a.ldc; j += kThreads) cr[j] = 0;
  int z = 0;
  float s = 0.0f;
  if constexpr (Kind == ActKind::None) {
    for (int64_t j = threadIdx.x; j < n; j += kThreads) {
      const float v = val(j);
      if (yr) yr[j] = v;
      z += v == 0.0f;
    }
  } else if constexpr (Kind == ActKind::Int8 || Kind == ActKind::Int4 ||
                       Kind == ActKind::Int4Absmax) {
    float lo, hi;
    if constexpr (Kind == ActKind::Int8 || Kind == ActKind::Int4Absmax) {
      uint32_t m = 0;
      for (int64_t j = threadIdx.x; j < n; j += kThreads) m = max(m, key_of(val(j)));
      const float g = std_max(__uint_as_float(block_max_u32(m, shu)), kEps);
      if constexpr (Kind == ActKind::Int8) {
        s = rdiv(127.0f, g);
        lo = -128.0f, hi = 127.0f;
      } else {
        s = rdiv(7.0f, g);
        lo = -8.0f, hi = 7.0f;
      }
    } else {
      double p = 0;
      for (int64_t j = threadIdx.x; j < n; j += kThreads) p += fabs(double(val(j)));
      const float mean = float(block_sum(p, shd) / double(n));
      const float b = std_max(__fmul_rn(mean, a.int4_mult), kEps);
      s = __fdiv_rn(kSqrt7, b);
      lo = -8.0f, hi = 7.0f;
    }
    for (int64_t j = threadIdx.x; j < n; j += kThreads) {
      const float c = clampf(rintf(__fmul_rn(val(j), s)), lo, hi);
      if (yr) yr[j] = __fdiv_rn(c, s);
      if (cr) cr[j] = int8_t(__float2int_rz(c));
      z += c == 0.0f;
    }
  } else if constexpr (Kind == ActKind::Fp4E1M2) {
    uint32_t m = 0;
    for (int64_t j = threadIdx.x; j < n; j += kThreads) m = max(m, key_of(val(j)));
    const float g = std_max(__uint_as_float(block_max_u32(m, shu)), kEps);
    s = rdiv(1.75f, g);
    for (int64_t j = threadIdx.x; j < n; j += kThreads) {
      const float t = __fmul_rn(val(j), s), av = fabsf(t);
      const int idx = (av > 0.125f) + (av >= 0.375f) + (av > 0.625f) + (av >= 0.875f) +
                      (av > 1.125f) + (av >= 1.375f) + (av > 1.625f);
      const float v = __fmul_rn(0.25f, float(idx));
      const bool neg = signbit(t);
      if (yr) yr[j] = __fdiv_rn(neg ? -v : v, s);
      if (cr) cr[j] = int8_t((neg ? 8 : 0) | idx);
      z += idx == 0;
    }
  } else {  // Fp4
    uint32_t m = 0;
    for (int64_t j = threadIdx.x; j < n; j += kThreads) m = max(m, key_of(val(j)));
    const float g = std_max(__uint_as_float(block_max_u32(m, shu)), kEps);
    s = rdiv(6.0f, g);
    for (int64_t j = threadIdx.x; j < n; j += kThreads) {
      const float t = __fmul_rn(val(j), s), av = fabsf(t);
      const int m0 = av > 0.25f, m1 = av >= 0.75f, m2 = av > 1.25f, m3 = av >= 1.75f,
                m4 = av > 2.5f, m5 = av >= 3.5f, m6 = av > 5.0f;
      const float v =
          __fadd_rn(__fadd_rn(__fmul_rn(0.5f, float(m0 + m1 + m2 + m3)), float(m4 + m5)),
                    __fmul_rn(2.0f, float(m6)));
      const bool neg = signbit(t);
      if (yr) yr[j] = __fdiv_rn(neg ? -v : v, s);
      if (cr) cr[j] = int8_t((neg ? 8 : 0) | (m0 + m1 + m2 + m3 + m4 + m5 + m6));
      z += v == 0.0f;
    }
  }
  if (a.zeros) {
    const int zt = block_sum_i32(z, shi);
    if (threadIdx.x == 0) atomicAdd(a.zeros, (unsigned long long)zt);
  }
  if constexpr (Kind != ActKind::None) {
    if (threadIdx.x == 0) {
      if (a.scales) a.scales[row] = __fdiv_rn(1.0f, s);
      if (a.mults) a.mults[row] = s;
    }
  }
}

// The CPU's spec checks (quantizers.cpp act_quantize_impl), same messages.
void check_spec(const ActSpec& spec, int64_t rows, int64_t cols, int64_t ldc) {
  const char* op = "act_quantize";
  BN_CHECK(rows >= 0 && cols >= 1, op, "bad shape [", rows, ", ", cols,
           "]: need rows >= 0 and cols >= 1");
  BN_CHECK(spec.kind == ActKind::None || spec.kind == ActKind::Int8 || spec.kind == ActKind::Int4 ||
               spec.kind == ActKind::Fp4 || spec.kind == ActKind::Int4Absmax ||
               spec.kind == ActKind::Fp4E1M2,
           op, "unknown ActKind ", int(spec.kind), " for shape [", rows, ", ", cols, "]");
  BN_CHECK(spec.topk == 0.0f || (spec.topk > 0.0f && spec.topk <= 1.0f), op, "top-K ratio ",
           spec.topk, " outside {0} u (0, 1] for shape [", rows, ", ", cols, "]");
  BN_CHECK(spec.kind != ActKind::Int4 || (std::isfinite(spec.int4_mult) && spec.int4_mult > 0.0f),
           op, "int4_mult ", spec.int4_mult, " must be finite and > 0 for shape [", rows, ", ",
           cols, "]");
  BN_CHECK(ldc >= cols, op, "codes row stride ", ldc, " < cols ", cols);
}

// A zeroed 64-bit counter on the device of `on` (pooled), and its host value (synchronous).
Tensor counter(Device dev) { return Tensor::zeros(Shape{2}, DType::I32, dev); }
int64_t read_counter(const Tensor& c) {
  const Tensor h = c.to(Device::cpu());  // waits for the stream
  unsigned long long v = 0;
  std::memcpy(&v, h.raw(), sizeof v);
  return int64_t(v);
}

// Runs act_rows_kernel over x[rows, cols] (the entries below fill the pointers they have).
int64_t act_rows(const ActSpec& spec, const Tensor& x, ActArgs a, bool count) {
  const int64_t cols = x.shape().back(), rows = cols > 0 ? x.numel() / cols : 0;
  check_spec(spec, rows, cols, a.codes ? a.ldc : cols);
  if (rows == 0) return 0;
  On on(x);
  a.x = x.data();
  a.cols = cols;
  a.k = spec.topk > 0.0f ? topk_count(cols, spec.topk) : 0;
  a.int4_mult = spec.int4_mult;
  a.smem = a.k > 0 && a.k < cols && cols <= kSmemCols;
  Tensor z;
  if (count) {
    z = counter(x.device());
    a.zeros = static_cast<unsigned long long*>(z.raw());
  }
  const size_t smem = a.smem ? size_t(cols) * sizeof(float) : 0;
  const unsigned grid = unsigned(rows);
  switch (spec.kind) {
    case ActKind::None:
      act_rows_kernel<ActKind::None><<<grid, kThreads, smem, on.s>>>(a);
      break;
    case ActKind::Int8:
      act_rows_kernel<ActKind::Int8><<<grid, kThreads, smem, on.s>>>(a);
      break;
    case ActKind::Int4:
      act_rows_kernel<ActKind::Int4><<<grid, kThreads, smem, on.s>>>(a);
      break;
    case ActKind::Fp4:
      act_rows_kernel<ActKind::Fp4><<<grid, kThreads, smem, on.s>>>(a);
      break;
    case ActKind::Int4Absmax:
      act_rows_kernel<ActKind::Int4Absmax><<<grid, kThreads, smem, on.s>>>(a);
      break;
    case ActKind::Fp4E1M2:
      act_rows_kernel<ActKind::Fp4E1M2><<<grid, kThreads, smem, on.s>>>(a);
      break;
  }
  on.launched("act_quantize");
  return count ? read_counter(z) : 0;
}

// x[rows, cols] -> y[rows, cols] = the dequantized spec(x) (top-K then the quantizer, per row).
int64_t cuda_act_quantize(const ActSpec& spec, const Tensor& x, const Tensor& y, bool count) {
  ActArgs a;
  a.y = y.data();
  return act_rows(spec, x, a, count);
}

// x[rows, cols] (INT8/INT4/INT4-absmax spec) -> codes i8 [rows, ld] (bytes [cols, ld) = 0), mult[r]
// = s, scale[r] = 1/s (either may be undefined).
int64_t cuda_act_codes(const ActSpec& spec, const Tensor& x, const Tensor& codes,
                       const Tensor& mult, const Tensor& scale, bool count) {
  const int64_t cols = x.shape().back(), rows = cols > 0 ? x.numel() / cols : 0;
  BN_CHECK(integer_codes(spec.kind), "act_quantize_codes", "spec ", to_string(spec),
           " has no integer codes (shape [", rows, ", ", cols, "])");
  ActArgs a;
  a.codes = codes.data<int8_t>();
  a.ldc = codes.shape().back();
  a.mults = autograd::cuda::opt(mult);
  a.scales = autograd::cuda::opt(scale);
  return act_rows(spec, x, a, count);
}

// ---- count_zeros --------------------------------------------------------------------------------

// zeros += #{i < n : x[i] == 0} (grid-stride; per-block integer sum, one atomic per block).
__global__ void count_zeros_kernel(const float* x, int64_t n, unsigned long long* zeros) {
  __shared__ int sh[kWarps];
  int z = 0;
  for (int64_t i = int64_t(blockIdx.x) * kThreads + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * kThreads)
    z += x[i] == 0.0f;
  const int t = block_sum_i32(z, sh);
  if (threadIdx.x == 0 && t) atomicAdd(zeros, (unsigned long long)t);
}

int64_t cuda_count_zeros(const Tensor& x) {
  const int64_t n = x.numel();
  if (n == 0) return 0;
  On on(x);
  Tensor z = counter(x.device());
  count_zeros_kernel<<<blocks_for(n), kThreads, 0, on.s>>>(
      x.data(), n, static_cast<unsigned long long*>(z.raw()));
  on.launched("count_zeros");
  return read_counter(z);
}

// ---- ternary weights ----------------------------------------------------------------------------

// Number of blocks of the first pass of the ternary mean: a function of n only (determinism).
unsigned mean_blocks(int64_t n) {
  const int64_t b = (n + int64_t(kThreads) * 16 - 1) / (int64_t(kThreads) * 16);
  return unsigned(b < 1 ? 1 : (b > 1024 ? 1024 : b));
}

// part[b] = sum |w_i| over i = b kThreads + t + j gridDim kThreads (double, block_sum tree).
__global__ void abs_sum_partial_kernel(const float* w, int64_t n, double* part) {
  __shared__ double sh[kThreads];
  double p = 0;
  for (int64_t i = int64_t(blockIdx.x) * kThreads + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * kThreads)
    p += fabs(double(w[i]));
  const double s = block_sum(p, sh);
  if (threadIdx.x == 0) part[blockIdx.x] = s;
}
// a[0] = max(float(sum_b part[b] / n), 1e-5) (one block; fixed order).
__global__ void abs_mean_final_kernel(const double* part, int nb, int64_t n, float* a) {
  __shared__ double sh[kThreads];
  double p = 0;
  for (int b = threadIdx.x; b < nb; b += kThreads) p += part[b];
  const double s = block_sum(p, sh);
  if (threadIdx.x == 0) a[0] = std_max(float(s / double(n)), kEps);
}

// s = 1/a[0]; c = clamp(rint(w s), -1, 1); wq = c / s and/or codes = c (w[n]).
void apply(const On& on, const float* w, int64_t n, const float* a, float* wq, int8_t* codes) {
  if (!wq && !codes) return;
  for_each(
      on, n,
      [=] __device__(int64_t i) {
        const float s = __fdiv_rn(1.0f, a[0]);
        const float c = clampf(rintf(__fmul_rn(w[i], s)), -1.0f, 1.0f);
        if (wq) wq[i] = __fdiv_rn(c, s);
        if (codes) codes[i] = int8_t(__float2int_rz(c));
      },
      "ternary_apply");
}

// a[0] = max(mean|W|, 1e-5) (double, fixed two-pass tree), then wq and/or codes as apply().
void cuda_ternary(const Tensor& w, const Tensor& wq, const Tensor& codes, const Tensor& a) {
  const int64_t n = w.numel();
  BN_CHECK(n >= 1, "ternary_absmean", "bad weight of ", n,
           " elements (need n >= 1 and non-null data)");
  On on(w);
  const unsigned nb = mean_blocks(n);
  Tensor part = Tensor::empty(Shape{int64_t(nb) * 2}, DType::I32, w.device());  // nb doubles
  double* p = static_cast<double*>(part.raw());
  abs_sum_partial_kernel<<<nb, kThreads, 0, on.s>>>(w.data(), n, p);
  on.launched("ternary(partial)");
  abs_mean_final_kernel<<<1, kThreads, 0, on.s>>>(p, int(nb), n, a.data());
  on.launched("ternary(mean)");
  apply(on, w.data(), n, a.data(), autograd::cuda::opt(wq),
        codes.defined() ? codes.data<int8_t>() : nullptr);
}

void cuda_ternary_apply(const Tensor& w, const Tensor& a, const Tensor& wq) {
  On on(w);
  apply(on, w.data(), w.numel(), a.data(), wq.data(), nullptr);
}

// ---- dequantize, pack ---------------------------------------------------------------------------

// y[r, k] = float(codes[r, k]) / mult[r] for y[rows, K], codes i8 [rows, L].
void cuda_dequantize(const Tensor& codes, const Tensor& mult, const Tensor& y) {
  const int64_t rows = y.shape()[0], K = y.shape()[1], L = codes.shape().back();
  On on(y);
  const int8_t* c = codes.data<int8_t>();
  const float* s = mult.data();
  if (y.dtype() == DType::BF16) {
    auto* o = static_cast<__nv_bfloat16*>(y.raw());
    for_each(
        on, rows * K,
        [=] __device__(int64_t i) {
          const int64_t r = i / K, k = i % K;
          o[i] = __float2bfloat16_rn(__fdiv_rn(float(c[r * L + k]), s[r]));
        },
        "dequantize(bf16)");
    return;
  }
  float* o = y.data();
  for_each(
      on, rows * K,
      [=] __device__(int64_t i) {
        const int64_t r = i / K, k = i % K;
        o[i] = __fdiv_rn(float(c[r * L + k]), s[r]);
      },
      "dequantize");
}

int64_t pad16(int64_t v) { return (v + kPad - 1) / kPad * kPad; }

// codes i8 [N, K] -> bytes[n, k] (row-major [Np, Kp], see cuda.h) = codes[n, k] inside, 0 outside.
PackedTernary cuda_pack(const Tensor& codes) {
  const int64_t N = codes.shape()[0], K = codes.shape()[1], Np = pad16(N), Kp = pad16(K);
  BN_CHECK(N >= 1 && K >= 1, "pack_ternary", "bad shape [", N, ", ", K, "]");
  PackedTernary p;
  p.N = N, p.K = K, p.K4 = Kp / 4;
  p.bytes = Tensor::empty(Shape{Np * Kp}, DType::U8, codes.device());
  On on(codes);
  const int8_t* c = codes.data<int8_t>();
  int8_t* b = static_cast<int8_t*>(p.bytes.raw());
  for_each(
      on, Np * Kp,
      [=] __device__(int64_t i) {
        const int64_t n = i / Kp, k = i % Kp;
        b[i] = n < N && k < K ? c[n * K + k] : int8_t(0);
      },
      "pack_ternary");
  return p;
}

// ---- ternary_gemm -------------------------------------------------------------------------------

// The int8 GEMM handle of a device: default math mode (tensor cores; integer sums are exact
// whatever the algorithm), on the device's stream. Created once, never destroyed.
cublasHandle_t igemm_handle(int dev) {
  static std::mutex mu;
  static auto* handles = new std::vector<cublasHandle_t>();
  const cudaStream_t s = autograd::cuda::stream(dev);  // makes dev current
  std::lock_guard<std::mutex> lk(mu);
  if (int(handles->size()) <= dev) handles->resize(size_t(dev) + 1, nullptr);
  cublasHandle_t& h = (*handles)[size_t(dev)];
  if (!h) {
    BN_CUDA(cublasCreate(&h), dev);
    BN_CUDA(cublasSetStream(h, s), dev);
  }
  return h;
}

// Fallback exact GEMM: acc[m, n] = sum_{k < K} x[m, k] w[n, k] in int32, x [M, ldx], w [N, ldw],
// acc [M, ldacc]. Block 16 x 16 outputs (threadIdx.x -> n, threadIdx.y -> m), k staged in
// shared-memory tiles of 32. No alignment or shape requirements.
__global__ void igemm_simple_kernel(const int8_t* x, int64_t M, int64_t ldx, const int8_t* w,
                                    int64_t N, int64_t ldw, int64_t K, int32_t* acc,
                                    int64_t ldacc) {
  __shared__ int8_t xs[16][33], ws[16][33];
  const int tx = threadIdx.x, ty = threadIdx.y, t = ty * 16 + tx;
  const int64_t m0 = int64_t(blockIdx.y) * 16, n0 = int64_t(blockIdx.x) * 16;
  int32_t sum = 0;
  for (int64_t k0 = 0; k0 < K; k0 += 32) {
    for (int e = t; e < 16 * 32; e += 256) {
      const int r = e / 32, c = e % 32;
      const int64_t k = k0 + c;
      xs[r][c] = m0 + r < M && k < K ? x[(m0 + r) * ldx + k] : int8_t(0);
      ws[r][c] = n0 + r < N && k < K ? w[(n0 + r) * ldw + k] : int8_t(0);
    }
    __syncthreads();
    for (int c = 0; c < 32; ++c) sum += int32_t(xs[ty][c]) * int32_t(ws[tx][c]);
    __syncthreads();
  }
  if (m0 + ty < M && n0 + tx < N) acc[(m0 + ty) * ldacc + n0 + tx] = sum;
}

// y[m, n] = float(acc[m, n]) * (xscale[m] * wscale), wscale = 1/(1/a[0]) (the CPU's float ops);
// Y = bf16 (activation_dtype): that f32 value rounded to nearest even.
template <class Y>
void epilogue(const On& on, const int32_t* acc, int64_t ldacc, int64_t M, int64_t N,
              const float* xscale, const float* a, Y* y) {
  for_each(
      on, M * N,
      [=] __device__(int64_t i) {
        const int64_t m = i / N, n = i % N;
        const float wscale = __fdiv_rn(1.0f, __fdiv_rn(1.0f, a[0]));
        const float v = __fmul_rn(__int2float_rn(acc[m * ldacc + n]), __fmul_rn(xscale[m], wscale));
        Y* out = y;  // (captured outside the constexpr branches)
        if constexpr (std::is_same_v<Y, float>)
          out[i] = v;
        else
          out[i] = __float2bfloat16_rn(v);
      },
      "ternary_gemm(epilogue)");
}

// xcodes i8 [M, ld], w packed [Np, Kp] (cuda.h) -> y[M, N] = (sum_k xc[m, k] cw[n, k]) *
// (xscale[m] * (1/(1/a))), the sum exact in int32.
//
// cuBLAS (column-major) computes C[Np, M] = op(A) op(B) with A = the packed weights seen as a
// column-major [Kp, Np] matrix (lda = Kp), op(A) = A^T [Np, k]; B = the activation codes seen as
// column-major [ld, M] (ldb = ld), op(B) = B [k, M]: the TN int8 layout. C column-major [Np, M]
// with ldc = Np is the row-major accumulator acc[M, Np]. k = 4 ceil(K/4) <= min(ld, Kp): the bytes
// of x in [K, k) meet zero weights. lda, ldb, ldc are multiples of 4 (Kp, Np: of 16). Should
// cuBLAS refuse the call (CUBLAS_STATUS_NOT_SUPPORTED / INVALID_VALUE, e.g. ld not a multiple of
// 4 or a misaligned pointer), igemm_simple_kernel computes the same exact sums.
void cuda_ternary_gemm(const Tensor& xcodes, int64_t cols, const PackedTernary& w,
                       const Tensor& xscale, const Tensor& a, const Tensor& y) {
  const int64_t ld = xcodes.shape().back(), M = xcodes.numel() / ld, N = w.N, K = w.K;
  const int64_t Np = pad16(N), Kp = w.K4 * 4, k4 = (K + 3) / 4 * 4;
  BN_CHECK(cols == K && ld >= k4 && Kp >= k4 && w.bytes.defined() &&
               w.bytes.device() == y.device() && int64_t(w.bytes.numel()) == Np * Kp,
           "ternary_gemm", "codes [", M, ", ", ld, "] with ", cols, " columns vs packed weight [",
           N, ", ", K, "] (CUDA layout [", Np, ", ", Kp, "])");
  if (M == 0) return;
  On on(y);
  Tensor acc = Tensor::empty(Shape{M, Np}, DType::I32, y.device());
  const int8_t* xp = xcodes.data<int8_t>();
  const int8_t* wp = static_cast<const int8_t*>(w.bytes.raw());
  int32_t* ap = acc.data<int32_t>();
  bool done = false;
  const bool aligned = ld % 4 == 0 && reinterpret_cast<uintptr_t>(xp) % 4 == 0;
  if (!g_force_simple.load() && aligned && M <= INT32_MAX && Np <= INT32_MAX && ld <= INT32_MAX) {
    const int32_t alpha = 1, beta = 0;
    const cublasStatus_t st =
        cublasGemmEx(igemm_handle(on.dev), CUBLAS_OP_T, CUBLAS_OP_N, int(Np), int(M), int(k4),
                     &alpha, wp, CUDA_R_8I, int(Kp), xp, CUDA_R_8I, int(ld), &beta, ap, CUDA_R_32I,
                     int(Np), CUBLAS_COMPUTE_32I, CUBLAS_GEMM_DEFAULT);
    if (st == CUBLAS_STATUS_SUCCESS)
      done = true;
    else if (st != CUBLAS_STATUS_NOT_SUPPORTED && st != CUBLAS_STATUS_INVALID_VALUE)
      BN_CUDA(st, on.dev);
  }
  g_last_path.store(done ? "cublas" : "simple");
  if (!done) {
    BN_CHECK((M + 15) / 16 <= 65535, "ternary_gemm", "M ", M, " too large for the simple kernel");
    const dim3 grid(unsigned((N + 15) / 16), unsigned((M + 15) / 16)), block(16, 16);
    igemm_simple_kernel<<<grid, block, 0, on.s>>>(xp, M, ld, wp, N, Kp, K, ap, Np);
    on.launched("ternary_gemm(simple)");
  }
  if (y.dtype() == DType::BF16)
    epilogue(on, ap, Np, M, N, xscale.data(), a.data(), static_cast<__nv_bfloat16*>(y.raw()));
  else
    epilogue(on, ap, Np, M, N, xscale.data(), a.data(), y.data());
}

const Kernels& cuda_table() {
  static const Kernels k{
      .device = "cuda",
      .act_quantize = cuda_act_quantize,
      .count_zeros = cuda_count_zeros,
      .ternary = cuda_ternary,
      .ternary_apply = cuda_ternary_apply,
      .act_codes = cuda_act_codes,
      .dequantize = cuda_dequantize,
      .pack_ternary = cuda_pack,
      .ternary_gemm = cuda_ternary_gemm,
  };
  return k;
}

}  // namespace

void init() {
  autograd::cuda::init();
  register_kernels(autograd::DeviceType::CUDA, &cuda_table());
}

void force_simple_igemm(bool on) { g_force_simple.store(on); }
const char* last_igemm_path() { return g_last_path.load(); }

}  // namespace quant::cuda
