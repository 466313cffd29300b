// AdamW update (torch.optim.AdamW op order), global-norm gradient clipping and finite checks.
#include "optim/adamw.h"

#include <algorithm>
#include <cmath>
#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#endif

#include "autograd/error.h"
#include "autograd/kernels.h"
#include "nn/names.h"

namespace optim {

using autograd::Tensor;
namespace kernels = autograd::kernels;

namespace {

// Elements per parallel work item: large enough to amortise scheduling, small enough to balance.
constexpr int64_t kChunk = 16384;

// Per-step float32 coefficients, each rounded once from its double value (see adamw.h).
struct Coeffs {
  float decay;     // 1 - lr*wd
  float b1, a1;    // beta1, 1 - beta1
  float b2, a2;    // beta2, 1 - beta2
  float bc2_sqrt;  // sqrt(1 - beta2^t)
  float eps;
  float neg_step;  // -lr / (1 - beta1^t)
};

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
                float* __restrict v, int64_t n, Coeffs c) {
  int64_t i = 0;
#if defined(__AVX2__) && defined(__FMA__)
  const __m256 decay = _mm256_set1_ps(c.decay), b1 = _mm256_set1_ps(c.b1), a1 = _mm256_set1_ps(c.a1);
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
void check_beta(const char* field, double x) {
  if (!(x >= 0.0 && x < 1.0)) autograd::fail("adamw.", field, ": ", x, " must be in [0, 1)");
}

}  // namespace

// m = v = 0 over the flat buffer; decay_ranges_ = merged [offset, offset + numel) of the entries
// that are decayed (entry.decay, or the token embedding when cfg.decay_embeddings).
AdamW::AdamW(nn::ParameterSet& params, const AdamWConfig& cfg) : AdamW(params, cfg, 0, params.numel()) {}

AdamW::AdamW(nn::ParameterSet& params, const AdamWConfig& cfg, int64_t begin, int64_t end)
    : p_(params), cfg_(cfg), begin_(begin), end_(end) {
  BN_CHECK(0 <= begin && begin <= end && end <= params.numel(), "AdamW", "shard [", begin, ", ", end,
           ") is not inside the ", params.numel(), " parameters");
  check_beta("beta1", cfg.beta1);
  check_beta("beta2", cfg.beta2);
  if (!(cfg.eps >= 0.0 && std::isfinite(cfg.eps)))
    autograd::fail("adamw.eps: ", cfg.eps, " must be finite and >= 0");
  m_ = Tensor::zeros(autograd::Shape{end - begin});
  v_ = Tensor::zeros(autograd::Shape{end - begin});
  for (const auto& e : params.entries()) {
    const bool decay = e.decay || (cfg.decay_embeddings && e.name == nn::kEmbedTokens.name);
    if (!decay || e.numel == 0) continue;
    if (!decay_ranges_.empty() && decay_ranges_.back().second == e.offset)
      decay_ranges_.back().second = e.offset + e.numel;
    else
      decay_ranges_.emplace_back(e.offset, e.offset + e.numel);
  }  // entries come in increasing offset order, so the ranges are sorted and disjoint
}

// t += 1; coefficients in double (Python-float semantics), rounded to float once; then a
// parallel pass over fixed chunks of the flat buffers, each split at the decay-range borders into
// runs updated by update_run<true/false>. No allocation.
void AdamW::step(double lr, double weight_decay) {
  BN_CHECK(std::isfinite(lr) && std::isfinite(weight_decay), "AdamW::step",
           "lr ", lr, " and weight_decay ", weight_decay, " must be finite");
  const int64_t n = p_.numel(), b0 = begin_, len = end_ - begin_;
  BN_CHECK(p_.grads().numel() == n && m_.numel() == len && end_ <= n, "AdamW::step", "parameter set has ", n,
           " elements, optimizer state ", m_.numel(), " for the shard [", begin_, ", ", end_, ")");
  ++t_;
  const double bc1 = 1.0 - std::pow(cfg_.beta1, double(t_));
  const double bc2 = 1.0 - std::pow(cfg_.beta2, double(t_));
  const double step_size = lr / bc1;
  const Coeffs c{float(1.0 - lr * weight_decay),
                 float(cfg_.beta1),
                 float(1.0 - cfg_.beta1),
                 float(cfg_.beta2),
                 float(1.0 - cfg_.beta2),
                 float(std::sqrt(bc2)),
                 float(cfg_.eps),
                 float(-step_size)};
  float* w = p_.values().data();
  const float* g = p_.grads().data();
  float* m = m_.data();  // element i of the shard is flat offset b0 + i
  float* v = v_.data();
  const auto& ranges = decay_ranges_;
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

// norm = sqrt(sum g^2), summed in double over det_reduce's fixed chunks (four interleaved partial
// sums inside a chunk, added in a fixed order); if finite and max_norm > 0 and norm > max_norm:
// g *= f32(max_norm / (norm + 1e-6)).
int64_t grad_norm_chunks(int64_t n) { return kernels::det_chunks(n); }
int64_t grad_norm_chunk_begin(int64_t n, int64_t c) { return n * c / kernels::det_chunks(n); }

void grad_sq_chunks(const nn::ParameterSet& params, int64_t c0, int64_t c1, double* out) {
  const float* g = params.grads().data();
  const int64_t n = params.grads().numel();
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

double norm_from_chunks(const std::vector<double>& partials) {
  double s = 0;
  for (double p : partials) s += p;  // chunk order, as det_reduce
  return std::sqrt(s);
}

void clip_grads(nn::ParameterSet& params, int64_t begin, int64_t end, double norm, double max_norm) {
  if (!(std::isfinite(norm) && max_norm > 0 && norm > max_norm)) return;
  float* g = params.grads().data();
  const float scale = float(max_norm / (norm + 1e-6));
  const int64_t chunks = (end - begin + kChunk - 1) / kChunk;
  kernels::parallel_for(chunks, [&](int64_t ci) {
    const int64_t b = begin + ci * kChunk, e = std::min(end, b + kChunk);
    for (int64_t i = b; i < e; ++i) g[i] *= scale;
  });
}

double clip_grad_norm(nn::ParameterSet& params, double max_norm) {
  const int64_t n = params.grads().numel();
  std::vector<double> part(size_t(grad_norm_chunks(n)), 0.0);
  grad_sq_chunks(params, 0, grad_norm_chunks(n), part.data());
  const double norm = norm_from_chunks(part);
  clip_grads(params, 0, n, norm, max_norm);
  return norm;
}

// Counts elements with !isfinite(x) over det_reduce's chunks; true when the count is 0.
bool all_finite(const Tensor& t) {
  if (!t.defined()) return true;
  const float* p = t.data();
  const double bad = kernels::det_reduce(t.numel(), [&](int64_t i0, int64_t i1) {
    int64_t k = 0;
    for (int64_t i = i0; i < i1; ++i) k += !std::isfinite(p[i]);
    return double(k);
  });
  return bad == 0;
}

}  // namespace optim
