// CPU kernels of the optimizer: the AdamW update, gradient sum-of-squares chunks, the global-norm
// clip, clipping scale, finite counts (entries of the CPU optim table, optim/dispatch.h).
#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>
#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#endif

#include "autograd/kernels.h"
#include "optim/dispatch.h"

namespace optim {
namespace {
using autograd::Tensor;
namespace kernels = autograd::kernels;

// Elements per parallel work item: large enough to amortise scheduling, small enough to balance.
constexpr int64_t kChunk = 16384;

// Returns x unchanged but opaque to the optimiser, so a product is rounded to float32 on its own
// and never fused into an FMA with a later addition (GCC contracts a*b + c by default in C++).
template <class T>
inline T rounded(T x) {
#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
  asm("" : "+x"(x));
#elif defined(__GNUC__) && defined(__aarch64__)
  asm("" : "+w"(x));
#endif
  return x;
}

// One contiguous run of n elements (kDecay: the decoupled decay applies):
//   w = w*decay;  m = fma(g, a1, m*b1);  v = fma(a2*g, g, v*b2);
//   w = w + (neg_step*m) / (sqrt(v)/bc2_sqrt + eps).
// Every operation is an IEEE float32 op in this order, so the AVX2 body and the scalar tail agree
// bit for bit. The AVX2 body exists because std::sqrt may set errno, which stops GCC from
// vectorising the scalar loop (without -fno-math-errno).
template <bool kDecay>
void update_run(float* __restrict w, const float* __restrict g, float* __restrict m,
                float* __restrict v, int64_t n, AdamCoeffs c) {
  int64_t i = 0;
#if defined(__AVX2__) && defined(__FMA__)
  const __m256 decay = _mm256_set1_ps(c.decay), b1 = _mm256_set1_ps(c.b1),
               a1 = _mm256_set1_ps(c.a1);
  const __m256 b2 = _mm256_set1_ps(c.b2), a2 = _mm256_set1_ps(c.a2);
  const __m256 bc2_sqrt = _mm256_set1_ps(c.bc2_sqrt), eps = _mm256_set1_ps(c.eps);
  const __m256 neg_step = _mm256_set1_ps(c.neg_step);
  for (; i + 8 <= n; i += 8) {
    __m256 wi = _mm256_loadu_ps(w + i);
    if constexpr (kDecay) wi = rounded(_mm256_mul_ps(wi, decay));
    const __m256 gi = _mm256_loadu_ps(g + i);
    const __m256 mi = _mm256_fmadd_ps(gi, a1, _mm256_mul_ps(_mm256_loadu_ps(m + i), b1));
    const __m256 vi =
        _mm256_fmadd_ps(_mm256_mul_ps(a2, gi), gi, _mm256_mul_ps(_mm256_loadu_ps(v + i), b2));
    const __m256 denom = _mm256_add_ps(_mm256_div_ps(_mm256_sqrt_ps(vi), bc2_sqrt), eps);
    _mm256_storeu_ps(w + i, _mm256_add_ps(wi, _mm256_div_ps(_mm256_mul_ps(neg_step, mi), denom)));
    _mm256_storeu_ps(m + i, mi);
    _mm256_storeu_ps(v + i, vi);
  }
#endif
  for (; i < n; ++i) {
    float wi = w[i];
    if constexpr (kDecay) wi = rounded(wi * c.decay);
    const float gi = g[i];
    const float mi = std::fma(gi, c.a1, m[i] * c.b1);
    const float vi = std::fma(c.a2 * gi, gi, v[i] * c.b2);
    const float denom = std::sqrt(vi) / c.bc2_sqrt + c.eps;
    w[i] = wi + (c.neg_step * mi) / denom;
    m[i] = mi;
    v[i] = vi;
  }
}

// "adamw.<field>: <value> must be in [0, 1)" unless 0 <= x < 1 (NaN fails).
void cpu_adamw(const Tensor& wt, const Tensor& gt, const Tensor& mt, const Tensor& vt,
               int64_t begin, int64_t end, const DecayRanges& ranges, const AdamCoeffs& c) {
  const int64_t b0 = begin, end_ = end, len = end - begin;
  float* w = wt.data();
  const float* g = gt.data();
  float* m = mt.data();  // element i of the shard is flat offset b0 + i
  float* v = vt.data();
  const int64_t chunks = (len + kChunk - 1) / kChunk;
  kernels::parallel_for(chunks, [&](int64_t ci) {
    const int64_t b = b0 + ci * kChunk, e = std::min(end_, b + kChunk);
    // First decay range that ends after b (ranges are sorted and disjoint).
    auto it = std::upper_bound(
        ranges.begin(), ranges.end(), b,
        [](int64_t x, const std::pair<int64_t, int64_t>& r) { return x < r.second; });
    int64_t pos = b;
    while (pos < e) {
      if (it != ranges.end() && it->first <= pos) {
        const int64_t stop = std::min(e, it->second);
        update_run<true>(w + pos, g + pos, m + (pos - b0), v + (pos - b0), stop - pos, c);
        pos = stop;
        if (pos == it->second) ++it;
      } else {
        const int64_t stop = it != ranges.end() ? std::min(e, it->first) : e;
        update_run<false>(w + pos, g + pos, m + (pos - b0), v + (pos - b0), stop - pos, c);
        pos = stop;
      }
    }
  });
}

void cpu_grad_sq_chunks(const Tensor& gt, int64_t c0, int64_t c1, double* out) {
  const float* g = gt.data();
  const int64_t n = gt.numel();
  kernels::parallel_for(c1 - c0, [&](int64_t k) {
    const int64_t i0 = grad_norm_chunk_begin(n, c0 + k), i1 = grad_norm_chunk_begin(n, c0 + k + 1);
    double s0 = 0, s1 = 0, s2 = 0, s3 = 0;
    int64_t i = i0;
    for (; i + 4 <= i1; i += 4) {
      s0 += double(g[i]) * g[i];
      s1 += double(g[i + 1]) * g[i + 1];
      s2 += double(g[i + 2]) * g[i + 2];
      s3 += double(g[i + 3]) * g[i + 3];
    }
    for (; i < i1; ++i) s0 += double(g[i]) * g[i];
    out[k] = (s0 + s1) + (s2 + s3);
  });
}

void cpu_scale_range(const Tensor& gt, int64_t begin, int64_t end, float scale) {
  float* g = gt.data();
  const int64_t chunks = (end - begin + kChunk - 1) / kChunk;
  kernels::parallel_for(chunks, [&](int64_t ci) {
    const int64_t b = begin + ci * kChunk, e = std::min(end, b + kChunk);
    for (int64_t i = b; i < e; ++i) g[i] *= scale;
  });
}

// norm = sqrt of the chunk partials summed in chunk order (norm_from_chunks); then g *=
// f32(max_norm / (norm + 1e-6)) when norm is finite and exceeds max_norm > 0 (clip_grads). The norm
// goes to the first 8 bytes of norm_out.
void cpu_grad_norm_clip(const Tensor& gt, double max_norm, const Tensor& norm_out) {
  const int64_t n = gt.numel(), chunks = grad_norm_chunks(n);
  std::vector<double> part(size_t(chunks), 0.0);
  cpu_grad_sq_chunks(gt, 0, chunks, part.data());
  double s = 0;
  for (double p : part) s += p;  // chunk order
  const double norm = std::sqrt(s);
  std::memcpy(norm_out.raw(), &norm, sizeof(norm));
  if (std::isfinite(norm) && max_norm > 0 && norm > max_norm)
    cpu_scale_range(gt, 0, n, float(max_norm / (norm + 1e-6)));
}

int64_t cpu_count_nonfinite(const Tensor& t) {
  const float* p = t.data();
  const double bad = kernels::det_reduce(t.numel(), [&](int64_t i0, int64_t i1) {
    int64_t k = 0;
    for (int64_t i = i0; i < i1; ++i) k += !std::isfinite(p[i]);
    return double(k);
  });
  return int64_t(bad);
}

// The gate on the host (state, record and powers in host memory): adamw_gate's formulas in
// double, the same operations as AdamW::step.
void cpu_adamw_gate(const Tensor& losses, const Tensor& norm8, const Tensor& powers, int64_t t0,
                    double lr, const AdamCoeffs& base, const Tensor& state, const Tensor& record) {
  const float* l = losses.data();
  double sum = 0;
  for (int64_t a = 0; a < losses.numel(); ++a) sum += double(l[a]);
  StepRecord r{};
  r.loss = sum / double(losses.numel());
  std::memcpy(&r.norm, norm8.raw(), sizeof(double));
  GateState& s = *static_cast<GateState*>(state.raw());
  r.ok = s.ok = std::isfinite(r.loss) && std::isfinite(r.norm);
  if (s.ok) {
    const double* p = static_cast<const double*>(powers.raw()) + 2 * (s.t - t0);
    s.c = base;
    s.c.bc2_sqrt = float(std::sqrt(1.0 - p[1]));
    s.c.neg_step = float(-(lr / (1.0 - p[0])));
    ++s.t;
  }
  r.t = s.t;
  std::memcpy(record.raw(), &r, sizeof r);
}

void cpu_adamw_gated(const Tensor& w, const Tensor& g, const Tensor& m, const Tensor& v,
                     int64_t begin, int64_t end, const DecayRanges& ranges, const Tensor& state) {
  const GateState& s = *static_cast<const GateState*>(state.raw());
  if (s.ok) cpu_adamw(w, g, m, v, begin, end, ranges, s.c);
}

}  // namespace

const Kernels& cpu_kernels() {
  static const Kernels k{
      .device = "cpu",
      .adamw = cpu_adamw,
      .grad_sq_chunks = cpu_grad_sq_chunks,
      .grad_norm_clip = cpu_grad_norm_clip,
      .scale_range = cpu_scale_range,
      .count_nonfinite = cpu_count_nonfinite,
      .adamw_gate = cpu_adamw_gate,
      .adamw_gated = cpu_adamw_gated,
  };
  return k;
}

}  // namespace optim
