// Inference engine (see inference.h): int8 × ternary GEMMs, fp32 norms/RoPE/attention, KV cache.
#include "nn/inference.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <sstream>
#include <utility>

#if defined(__AVX2__)
#include <immintrin.h>
#endif

#include "autograd/error.h"
#include "autograd/kernels.h"
#include "nn/model.h"

namespace nn {
namespace kn = autograd::kernels;

// ---- integer GEMM ------------------------------------------------------------------------------

namespace {
// dot of two int8 vectors of length K, exact in int32 (portable loop; compilers vectorise it).
inline int32_t dot_s8(const int8_t* __restrict a, const int8_t* __restrict b, int64_t K) {
  int32_t acc = 0;
  for (int64_t k = 0; k < K; ++k) acc += int32_t(a[k]) * int32_t(b[k]);
  return acc;
}

#if defined(__AVX2__)
inline int32_t hsum_epi32(__m256i v) {
  __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
  s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0x4e));
  s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0xb1));
  return _mm_cvtsi128_si32(s);
}
// out[r] = x[K] · w_r[K] for 4 weight rows: int8 -> int16 (vpmovsxbw), pairwise products summed
// into int32 (vpmaddwd: |pair| <= 2·128·128 = 2^15, exact), 16 values per step; one load of x
// serves 4 rows.
inline void dot4_s8_avx2(const int8_t* x, const int8_t* w, int64_t K, int32_t* out) {
  __m256i a0 = _mm256_setzero_si256(), a1 = a0, a2 = a0, a3 = a0;
  const int8_t *w0 = w, *w1 = w + K, *w2 = w + 2 * K, *w3 = w + 3 * K;
  int64_t k = 0;
  auto ld = [](const int8_t* p) {
    return _mm256_cvtepi8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
  };
  for (; k + 16 <= K; k += 16) {
    const __m256i xv = ld(x + k);
    a0 = _mm256_add_epi32(a0, _mm256_madd_epi16(xv, ld(w0 + k)));
    a1 = _mm256_add_epi32(a1, _mm256_madd_epi16(xv, ld(w1 + k)));
    a2 = _mm256_add_epi32(a2, _mm256_madd_epi16(xv, ld(w2 + k)));
    a3 = _mm256_add_epi32(a3, _mm256_madd_epi16(xv, ld(w3 + k)));
  }
  out[0] = hsum_epi32(a0) + dot_s8(x + k, w0 + k, K - k);
  out[1] = hsum_epi32(a1) + dot_s8(x + k, w1 + k, K - k);
  out[2] = hsum_epi32(a2) + dot_s8(x + k, w2 + k, K - k);
  out[3] = hsum_epi32(a3) + dot_s8(x + k, w3 + k, K - k);
}
#endif
}  // namespace

void gemm_s8s8s32(const int8_t* X, const int8_t* W, int32_t* acc, int64_t N, int64_t M, int64_t K) {
  BN_CHECK(N >= 0 && M >= 0 && K >= 1, "gemm_s8s8s32", "bad shape X[", N, ", ", K, "] W[", M, ", ",
           K, "]");
  // Tasks: blocks of 16 weight rows (16·K bytes stay in L1/L2) x 64 activation rows.
  constexpr int64_t kRows = 16;
  const int64_t blocks = (M + kRows - 1) / kRows;
  const int64_t tasks = blocks * ((N + 63) / 64);
#pragma omp parallel for schedule(static) if (N * M * K > (1 << 20))
  for (int64_t t = 0; t < tasks; ++t) {
    const int64_t b = t % blocks, n0 = (t / blocks) * 64, n1 = std::min(N, n0 + 64);
    const int64_t m0 = b * kRows, m1 = std::min(M, m0 + kRows);
    for (int64_t n = n0; n < n1; ++n) {
      const int8_t* x = X + n * K;
      int32_t* out = acc + n * M;
      int64_t m = m0;
#if defined(__AVX2__)
      for (; m + 4 <= m1; m += 4) dot4_s8_avx2(x, W + m * K, K, out + m);
#endif
      for (; m < m1; ++m) out[m] = dot_s8(x, W + m * K, K);
    }
  }
}

// ---- weights -----------------------------------------------------------------------------------

TernaryMatrix TernaryMatrix::pack(const float* w, int64_t rows, int64_t cols, bool keep_latent) {
  TernaryMatrix m;
  m.rows = rows;
  m.cols = cols;
  m.codes.resize(size_t(rows * cols));
  m.absmean = quant::ternary_absmean(w, rows * cols, nullptr, m.codes.data());
  // The training path dequantizes a code c to c / s with s = 1/a: the value of code 1 is 1/s.
  const float s = 1.0f / m.absmean;
  m.scale = 1.0f / s;
  if (keep_latent) m.latent.assign(w, w + rows * cols);
  return m;
}

std::vector<float>& InferenceLayer::gains(TensorSlot s) {
  return const_cast<std::vector<float>&>(std::as_const(*this).gains(s));
}
const std::vector<float>& InferenceLayer::gains(TensorSlot s) const {
  switch (s) {
    case TensorSlot::InputNorm:
      return input_norm;
    case TensorSlot::AttnSubNorm:
      return attn_sub_norm;
    case TensorSlot::PostAttnNorm:
      return post_attn_norm;
    case TensorSlot::FfnSubNorm:
      return ffn_sub_norm;
    default:
      autograd::fail("InferenceLayer::gains: tensor slot ", int(s),
                     " is not a block's RMSNorm gain");
  }
}
TernaryMatrix& InferenceLayer::matrix(TensorSlot s) {
  return const_cast<TernaryMatrix&>(std::as_const(*this).matrix(s));
}
const TernaryMatrix& InferenceLayer::matrix(TensorSlot s) const {
  switch (s) {
    case TensorSlot::Q:
      return q;
    case TensorSlot::K:
      return k;
    case TensorSlot::V:
      return v;
    case TensorSlot::O:
      return o;
    case TensorSlot::Gate:
      return gate;
    case TensorSlot::Up:
      return up;
    case TensorSlot::Down:
      return down;
    default:
      autograd::fail("InferenceLayer::matrix: tensor slot ", int(s), " is not a BitLinear weight");
  }
}

std::shared_ptr<InferenceWeights> InferenceWeights::from_model(const BitNetLM& model,
                                                               bool keep_latent) {
  auto w = std::make_shared<InferenceWeights>();
  w->config = model.config();
  w->has_latent = keep_latent;
  const ParameterSet& P = model.params();
  auto vec = [&](const TensorName& t) { return P.at(t.name).var.value().to_vector(); };
  w->embed = vec(kEmbedTokens);
  if (P.find(kLmHead.name)) w->lm_head = vec(kLmHead);
  w->final_norm = vec(kFinalNorm);
  w->layers.resize(size_t(w->config.n_layers));
  for (int64_t i = 0; i < w->config.n_layers; ++i)
    for (const TensorName& t : kBlockTensors) {
      const Variable& v = P.at(block_prefix(i) + t.name).var;
      InferenceLayer& L = w->layers[size_t(i)];
      if (t.ternary)
        L.matrix(t.slot) = TernaryMatrix::pack(v.data(), v.shape()[0], v.shape()[1], keep_latent);
      else
        L.gains(t.slot) = v.value().to_vector();
    }
  return w;
}

// ---- low-bit attention options -----------------------------------------------------------------

AttnQuant AttnQuant::make(int kv_bits, int qkv_bits, bool keep_bos, int q_bits) {
  AttnQuant a;
  a.q_bits = q_bits ? q_bits : qkv_bits;
  a.kv_bits = kv_bits ? kv_bits : qkv_bits;
  if (keep_bos && a.kv_bits && a.kv_bits < 4) a.bos_kv_bits = 4;
  for (int b : {a.q_bits, a.kv_bits})
    BN_CHECK(b == 0 || (b >= 2 && b <= 8), "AttnQuant", "attention bits ", b,
             " outside {0} u [2, 8]");
  return a;
}

std::string AttnQuant::str() const {
  if (!active()) return "none";
  std::ostringstream os;  // (streams: GCC 12 warns falsely on "literal" + std::string temporaries)
  if (q_bits && q_bits == kv_bits && !bos_kv_bits) {
    os << "qkv" << q_bits;
    return os.str();
  }
  if (q_bits) os << "q" << q_bits;
  if (kv_bits) os << (q_bits ? " " : "") << "kv" << kv_bits;
  if (bos_kv_bits) os << " (bos kv" << bos_kv_bits << ")";
  return os.str();
}

// ---- engine ------------------------------------------------------------------------------------

InferenceEngine::InferenceEngine(std::shared_ptr<const InferenceWeights> w,
                                 const InferenceOptions& opt)
    : w_(std::move(w)), opt_(opt) {
  BN_CHECK(w_ != nullptr, "InferenceEngine", "no weights");
  lq_ = layer_quant(opt_.mode, w_->config);
  BN_CHECK(lq_.ternary || w_->has_latent, "InferenceEngine", "mode ", to_string(opt_.mode),
           " needs the fp32 latent weights, which these weights do not hold (a compact file stores "
           "ternary weights only)");
  for (const quant::ActSpec* s : {&lq_.qkv, &lq_.o, &lq_.gate_up, &lq_.down})
    BN_CHECK(!lq_.ternary || s->kind != quant::ActKind::None, "InferenceEngine", "mode ",
             to_string(opt_.mode), " has an unquantized input to a ternary projection");
  const AttnQuant& a = opt_.attn;
  for (int b : {a.q_bits, a.kv_bits, a.bos_kv_bits})
    BN_CHECK(b == 0 || (b >= 2 && b <= 8), "InferenceEngine", "attention bits ", b,
             " outside {0} u [2, 8]");
}

namespace {

// parallel_for over n rows of `work` operations each, serial when the total is too small for
// threads to pay off (single-token decoding of small models).
template <class F>
void par_rows(int64_t n, int64_t work, F&& f) {
  if (n * work < (int64_t(1) << 15)) {
    for (int64_t i = 0; i < n; ++i) f(i);
    return;
  }
  kn::parallel_for(n, std::forward<F>(f));
}

// y[rows, D] = g * x / sqrt(mean(x^2) + eps), as autograd::rmsnorm (double sum of squares).
void rmsnorm_rows(const float* x, const float* g, float* y, int64_t rows, int64_t D, float eps) {
  par_rows(rows, D, [&](int64_t i) {
    const float* xr = x + i * D;
    const double ss = kn::dot_d(xr, xr, D);
    const float r = float(1.0 / std::sqrt(ss / double(D) + double(eps)));
    float* yr = y + i * D;
    for (int64_t j = 0; j < D; ++j) yr[j] = g[j] * (xr[j] * r);
  });
}

// cos/sin of angle (pos0 + t) · theta^(-2i/hd) for t < T, i < hd/2, as autograd::rope's table.
struct RopeTable {
  int64_t half = 0;
  std::vector<float> cs, sn;  // [T, half]
  RopeTable(int64_t T, int64_t hd, float theta, int64_t pos0) : half(hd / 2) {
    cs.resize(size_t(T * half));
    sn.resize(size_t(T * half));
    std::vector<double> inv(static_cast<size_t>(half));
    for (int64_t i = 0; i < half; ++i)
      inv[size_t(i)] = std::pow(double(theta), -2.0 * double(i) / double(hd));
    for (int64_t t = 0; t < T; ++t)
      for (int64_t i = 0; i < half; ++i) {
        const double a = double(pos0 + t) * inv[size_t(i)];
        cs[size_t(t * half + i)] = float(std::cos(a));
        sn[size_t(t * half + i)] = float(std::sin(a));
      }
  }
};

// Rotate-half RoPE of x[T, H, hd] in place with the table's positions.
void rope_rows(float* x, int64_t T, int64_t H, const RopeTable& rt) {
  const int64_t half = rt.half, hd = 2 * half;
  par_rows(T * H, hd, [&](int64_t th) {
    const int64_t t = th / H;
    float* r = x + th * hd;
    const float *c = rt.cs.data() + t * half, *s = rt.sn.data() + t * half;
    for (int64_t i = 0; i < half; ++i) {
      const float x1 = r[i], x2 = r[i + half];
      r[i] = x1 * c[i] - x2 * s[i];
      r[i + half] = x2 * c[i] + x1 * s[i];
    }
  });
}

// Replaces each [hd] row of x[rows, hd] by its unsigned-absmax dequantized value (SPEC §4).
void uint_fake_quant(float* x, int64_t rows, int64_t hd, int bits) {
  if (bits <= 0 || rows == 0) return;
  quant::uint_absmax(x, rows, hd, bits, x, nullptr, nullptr);
}

// FP4 E2M1 code -> 2·value (an integer in [-12, 12]).
inline int8_t fp4_twice(int8_t code) {
  static constexpr int8_t kGrid2[8] = {0, 1, 2, 3, 4, 6, 8, 12};
  const int8_t v = kGrid2[code & 7];
  return (code & 8) ? int8_t(-v) : v;
}

// A shared quantized input x[N, in] for one or more projections: codes/scales, computed once.
struct QuantizedInput {
  const float* x;
  int64_t N, in;
  bool integer;  // false in mode fp: the projections use x and the latent weights
  quant::ActSpec spec;
  std::vector<int8_t> codes;
  std::vector<float> scales;
};

QuantizedInput quantize_input(const float* x, int64_t N, int64_t in, const quant::ActSpec& spec,
                              bool ternary, SparsityProbe* probe, SparsityProbe::Kind kind) {
  QuantizedInput q{x, N, in, ternary, spec, {}, {}};
  if (!ternary) {  // mode fp: no quantizer; count zeros of the raw input as act_quant does
    if (probe)
      probe->add(kind, quant::act_quantize_count_zeros(spec, x, N, in, nullptr, nullptr, nullptr),
                 N * in);
    return q;
  }
  q.codes.resize(size_t(N * in));
  q.scales.resize(size_t(N));
  if (probe)
    probe->add(
        kind,
        quant::act_quantize_count_zeros(spec, x, N, in, nullptr, q.codes.data(), q.scales.data()),
        N * in);
  else
    quant::act_quantize(spec, x, N, in, nullptr, q.codes.data(), q.scales.data());
  if (spec.kind == quant::ActKind::Fp4) {
    for (auto& c : q.codes) c = fp4_twice(c);
    for (auto& s : q.scales) s *= 0.5f;               // exact: a power of two
  } else if (spec.kind == quant::ActKind::Fp4E1M2) {  // E1M2 code -> 4·value = ±index in [-7, 7]
    for (auto& c : q.codes) c = (c & 8) ? int8_t(-(c & 7)) : int8_t(c & 7);
    for (auto& s : q.scales) s *= 0.25f;  // exact: a power of two
  }
  return q;
}

// y[N, out] = project(q) through W: integer GEMM + scales, or fp32 GEMM in mode fp.
void project(const QuantizedInput& q, const TernaryMatrix& W, float* y, int layer, const char* name,
             const std::function<void(const ProjTrace&)>& trace) {
  BN_CHECK(W.cols == q.in, "InferenceEngine", name, " weight [", W.rows, ", ", W.cols,
           "] vs input [", q.N, ", ", q.in, "]");
  const int64_t N = q.N, M = W.rows, K = q.in;
  if (!q.integer) {
    kn::gemm(false, true, N, M, K, 1.0f, q.x, K, W.latent.data(), K, 0.0f, y, M);
    return;
  }
  // (a thread_local buffer of the calling thread: the lambda below captures its pointer only)
  thread_local std::vector<int32_t> acc_buf;
  acc_buf.resize(size_t(N * M));
  int32_t* acc = acc_buf.data();
  gemm_s8s8s32(q.codes.data(), W.codes.data(), acc, N, M, K);
  if (trace)
    trace(ProjTrace{layer, name, N, K, M, q.spec, q.x, q.codes.data(), q.scales.data(),
                    W.codes.data(), acc});
  const float ws = W.scale;
  const float* xs = q.scales.data();
  par_rows(N, M, [=](int64_t n) {
    const float s = xs[n] * ws;
    const int32_t* a = acc + n * M;
    float* yr = y + n * M;
    for (int64_t m = 0; m < M; ++m) yr[m] = float(a[m]) * s;
  });
}

// a · b over n floats: 8 fixed lanes (vectorised), combined pairwise, then the tail.
inline float dot_f32(const float* __restrict a, const float* __restrict b, int64_t n) {
  float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  int64_t e = 0;
  for (; e + 8 <= n; e += 8)
    for (int l = 0; l < 8; ++l) acc[l] += a[e + l] * b[e + l];
  float s = ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
  for (; e < n; ++e) s += a[e] * b[e];
  return s;
}

// softmax over n entries in place, as autograd's softmax_row (float exp, double sum).
inline void softmax_inplace(float* x, int64_t n) {
  float m = -std::numeric_limits<float>::infinity();
  for (int64_t j = 0; j < n; ++j) m = std::max(m, x[j]);
  double s = 0;
  for (int64_t j = 0; j < n; ++j) {
    x[j] = std::exp(x[j] - m);
    s += x[j];
  }
  const float inv = float(1.0 / s);
  for (int64_t j = 0; j < n; ++j) x[j] *= inv;
}

}  // namespace

std::vector<float> InferenceEngine::forward(
    std::span<const int32_t> tokens, KVCache& cache, bool last_only, SparsityProbe* probe,
    const std::function<void(const ProjTrace&)>& trace) const {
  // Small calls (one decoding step of a small model) run on the calling thread alone: its
  // nthreads ICV is set to 1 for the call (a per-thread setting, restored on exit), so the ~30
  // parallel regions per layer run serially, saving their fork/joins (and the barriers that wait
  // on descheduled threads when the cores are shared).
  const ModelConfig& c = w_->config;
  const double work =
      double(tokens.size()) * double(c.non_embedding_params() + c.vocab_size * c.d_model);
  struct SerialGuard {
    int saved = 0;
    explicit SerialGuard(bool on) : saved(on ? omp_get_max_threads() : 0) {
      if (on) omp_set_num_threads(1);
    }
    ~SerialGuard() {
      if (saved) omp_set_num_threads(saved);
    }
  } guard(work < kSerialWork);
  return forward_impl(tokens, cache, last_only, probe, trace);
}

std::vector<float> InferenceEngine::forward_impl(
    std::span<const int32_t> tokens, KVCache& cache, bool last_only, SparsityProbe* probe,
    const std::function<void(const ProjTrace&)>& trace) const {
  const ModelConfig& c = w_->config;
  const int64_t T = int64_t(tokens.size()), d = c.d_model, V = c.vocab_size, F = c.ffn_dim;
  const int64_t H = c.n_heads, Hkv = c.kv_heads(), hd = c.head_dim(), G = H / Hkv, kvd = Hkv * hd;
  BN_CHECK(T >= 1, "InferenceEngine::forward", "no tokens");
  BN_CHECK(int64_t(cache.k.size()) == c.n_layers && int64_t(cache.v.size()) == c.n_layers,
           "InferenceEngine::forward", "KV cache has ", cache.k.size(), " layers, model ",
           c.n_layers);
  for (int64_t t = 0; t < T; ++t)
    BN_CHECK(tokens[size_t(t)] >= 0 && tokens[size_t(t)] < V, "InferenceEngine::forward", "token ",
             tokens[size_t(t)], " at ", t, " outside the vocabulary [0, ", V, ")");
  const int64_t p0 = cache.len, P = p0 + T;  // positions before / after this call
  const bool tern = lq_.ternary;
  const AttnQuant& aq = opt_.attn;
  const float sc = 1.0f / std::sqrt(float(hd));

  std::vector<float> x(size_t(T * d)), a(size_t(T * d)), q(size_t(T * d)), kv(size_t(T * kvd) * 2);
  std::vector<float> o(size_t(T * d)), tmp(size_t(T * d)), g(size_t(T * F)), u(size_t(T * F));
  for (int64_t t = 0; t < T; ++t)
    std::memcpy(x.data() + t * d, w_->embed.data() + int64_t(tokens[size_t(t)]) * d, size_t(d) * 4);
  const RopeTable rope(T, hd, c.rope_theta, p0);

  for (int64_t li = 0; li < c.n_layers; ++li) {
    const InferenceLayer& L = w_->layers[size_t(li)];
    const int il = int(li);
    // ---- attention
    rmsnorm_rows(x.data(), L.input_norm.data(), a.data(), T, d, c.norm_eps);
    {
      const QuantizedInput qa =
          quantize_input(a.data(), T, d, lq_.qkv, tern, probe, SparsityProbe::QKV);
      float *kn_ = kv.data(), *vn = kv.data() + T * kvd;
      project(qa, L.q, q.data(), il, "q", trace);
      project(qa, L.k, kn_, il, "k", trace);
      project(qa, L.v, vn, il, "v", trace);
      rope_rows(q.data(), T, H, rope);
      rope_rows(kn_, T, Hkv, rope);
      if (aq.q_bits) uint_fake_quant(q.data(), T * H, hd, aq.q_bits);
      if (aq.kv_bits) {
        // Absolute position 0 (the BOS token of a document start) may keep more bits.
        const int64_t t_bos = (p0 == 0 && aq.bos_kv_bits) ? 1 : 0;
        if (t_bos) {
          uint_fake_quant(kn_, Hkv, hd, aq.bos_kv_bits);
          uint_fake_quant(vn, Hkv, hd, aq.bos_kv_bits);
        }
        uint_fake_quant(kn_ + t_bos * kvd, (T - t_bos) * Hkv, hd, aq.kv_bits);
        uint_fake_quant(vn + t_bos * kvd, (T - t_bos) * Hkv, hd, aq.kv_bits);
      }
      auto& K = cache.k[size_t(li)];
      auto& Vc = cache.v[size_t(li)];
      K.insert(K.end(), kn_, kn_ + T * kvd);
      Vc.insert(Vc.end(), vn, vn + T * kvd);
    }
    {
      const float* K = cache.k[size_t(li)].data();
      const float* Vc = cache.v[size_t(li)].data();
      // One task per (query token, head): scores over positions 0 .. p0+t, softmax, P·V. Each
      // row's arithmetic depends on its own q, k, v rows only (fixed-order dots), so a token
      // gives the same values whether it is decoded alone or inside a longer chunk.
      par_rows(T * H, 2 * (p0 + T) * hd, [&](int64_t th) {
        const int64_t t = th / H, h = th % H, kh = h / G, n = p0 + t + 1;
        thread_local std::vector<float> s;
        s.resize(size_t(P));
        const float* qr = q.data() + t * d + h * hd;
        for (int64_t j = 0; j < n; ++j) s[size_t(j)] = sc * dot_f32(qr, K + j * kvd + kh * hd, hd);
        softmax_inplace(s.data(), n);
        float* orow = o.data() + t * d + h * hd;
        std::fill(orow, orow + hd, 0.0f);
        for (int64_t j = 0; j < n; ++j) {
          const float p = s[size_t(j)];
          const float* vr = Vc + j * kvd + kh * hd;
          for (int64_t e = 0; e < hd; ++e) orow[e] += p * vr[e];
        }
      });
    }
    rmsnorm_rows(o.data(), L.attn_sub_norm.data(), a.data(), T, d, c.norm_eps);
    {
      const QuantizedInput qo =
          quantize_input(a.data(), T, d, lq_.o, tern, probe, SparsityProbe::Out);
      project(qo, L.o, tmp.data(), il, "o", trace);
    }
    for (int64_t i = 0; i < T * d; ++i) x[size_t(i)] += tmp[size_t(i)];
    // ---- feed-forward
    rmsnorm_rows(x.data(), L.post_attn_norm.data(), a.data(), T, d, c.norm_eps);
    {
      const QuantizedInput qf =
          quantize_input(a.data(), T, d, lq_.gate_up, tern, probe, SparsityProbe::GateUp);
      project(qf, L.gate, g.data(), il, "gate", trace);
      project(qf, L.up, u.data(), il, "up", trace);
    }
    int64_t zeros = 0;
    const bool relu2 = c.glu == Glu::ReLU2;
    for (int64_t i = 0; i < T * F; ++i) {
      const float v = g[size_t(i)];
      const float act = relu2 ? (v > 0 ? v * v : 0.0f) : v / (1.0f + std::exp(-v));
      zeros += act == 0.0f;
      g[size_t(i)] = act * u[size_t(i)];
    }
    if (probe) probe->add(SparsityProbe::Relu2Gate, zeros, T * F);
    rmsnorm_rows(g.data(), L.ffn_sub_norm.data(), u.data(), T, F, c.norm_eps);
    {
      const QuantizedInput qd =
          quantize_input(u.data(), T, F, lq_.down, tern, probe, SparsityProbe::Down);
      project(qd, L.down, tmp.data(), il, "down", trace);
    }
    for (int64_t i = 0; i < T * d; ++i) x[size_t(i)] += tmp[size_t(i)];
  }
  cache.len = P;

  // ---- final norm + LM head (fp32)
  const int64_t r0 = last_only ? T - 1 : 0, R = T - r0;
  rmsnorm_rows(x.data() + r0 * d, w_->final_norm.data(), a.data(), R, d, c.norm_eps);
  std::vector<float> logits(size_t(R * V));
  kn::gemm(false, true, R, V, d, 1.0f, a.data(), d, w_->head(), d, 0.0f, logits.data(), V);
  return logits;
}

std::vector<float> InferenceEngine::logits(std::span<const int32_t> tokens,
                                           SparsityProbe* probe) const {
  KVCache cache = new_cache();
  return forward(tokens, cache, false, probe);
}

}  // namespace nn
