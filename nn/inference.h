// Inference engine over a trained BitNetLM: packed ternary weights, integer GEMMs, KV cache.
//
// Arithmetic (per BitLinear, activation mode M as in nn::layer_quant):
//   codes_x[N, in], scale_x[N] = M's input quantizer (quant::act_quantize, per token)
//   acc[N, out]  = codes_x · codes_w^T          int8 × int8 accumulated exactly in int32
//   y[N, out]    = float(acc) * (scale_x[n] * scale_w)
// with codes_w ∈ {-1, 0, 1} and scale_w = 1/(1/mean|W|) (the value the training path's ternary
// quantizer dequantizes a code of 1 to). FP4 E2M1 codes enter as the integers 2·value ∈ [-12, 12]
// with half the scale. RMSNorm, RoPE, attention, the GLU and the LM head run in fp32 exactly as
// the training forward orders them. Mode `fp` uses the fp32 latent weights and an fp32 GEMM.
//
// Low-bit attention (SPEC §4, optional): post-RoPE Q and/or K/V rows of one token of one head
// are replaced by their unsigned-absmax dequantized values (quant::uint_absmax) before the fp32
// attention; the KV cache holds the quantized K/V, so incremental decoding sees the same values.
#pragma once
#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "nn/config.h"
#include "nn/layers.h"
#include "nn/names.h"

namespace nn {

class BitNetLM;

// acc[N, M] = X[N, K] · W[M, K]^T, int8 × int8 -> int32, exact while K·max|x|·max|w| < 2^31
// (ternary W and int8 X: K < 2^24). Rows of W are split over threads; each output is one dot.
void gemm_s8s8s32(const int8_t* X, const int8_t* W, int32_t* acc, int64_t N, int64_t M, int64_t K);

// One BitLinear weight: ternary codes [rows = out, cols = in] and the per-tensor scale, plus
// (optionally) the fp32 latent weight for mode `fp`.
struct TernaryMatrix {
  int64_t rows = 0, cols = 0;
  std::vector<int8_t> codes;  // [rows, cols] row-major, values in {-1, 0, 1}
  float scale = 0.0f;         // dequantized value of code 1 (= 1/(1/mean|W|))
  float absmean = 0.0f;       // a = max(mean|W|, 1e-5), as quant::ternary_absmean returns it
  std::vector<float> latent;  // [rows, cols] fp32, empty unless kept
  // Packs W[rows, cols] (fp32 latent): codes and scales as the training path's ternary quantizer.
  static TernaryMatrix pack(const float* w, int64_t rows, int64_t cols, bool keep_latent);
};

struct InferenceLayer {
  std::vector<float> input_norm, attn_sub_norm, post_attn_norm, ffn_sub_norm;  // RMSNorm gains
  TernaryMatrix q, k, v, o, gate, up, down;
  // The member holding block tensor s (nn/names.h); throws for a slot of the other kind.
  std::vector<float>& gains(TensorSlot s);
  const std::vector<float>& gains(TensorSlot s) const;
  TernaryMatrix& matrix(TensorSlot s);
  const TernaryMatrix& matrix(TensorSlot s) const;
};

// Everything the engine needs, built once from a model (or loaded from a compact file).
struct InferenceWeights {
  ModelConfig config;
  std::vector<float> embed;       // [V, d]
  std::vector<float> lm_head;     // [V, d]; empty when tied to the embedding
  std::vector<float> final_norm;  // [d]
  std::vector<InferenceLayer> layers;
  bool has_latent = false;  // fp32 latent weights kept (needed by mode `fp`)

  static std::shared_ptr<InferenceWeights> from_model(const BitNetLM& m, bool keep_latent = false);
  const float* head() const { return lm_head.empty() ? embed.data() : lm_head.data(); }
  // Visits every BitLinear as (HF parameter name, matrix), in registration order.
  template <class F>
  void for_each_matrix(F&& f) const {
    for (size_t i = 0; i < layers.size(); ++i)
      for (const TensorName& t : kBlockTensors)
        if (t.ternary) f(block_prefix(int64_t(i)) + t.name, layers[i].matrix(t.slot));
  }
};

// Low-bit attention of SPEC §4 (0 = off, else 2..8 bits).
struct AttnQuant {
  int q_bits = 0;
  int kv_bits = 0;
  int bos_kv_bits = 0;  // bits for the K/V of absolute position 0 (0 = same as kv_bits)
  bool active() const { return q_bits || kv_bits; }
  // The paper's configurations: kv_bits (K and V), qkv_bits (Q, K and V); with 3-bit K/V and
  // keep_bos, position 0 keeps 4-bit K/V. q_bits overrides Q when given (e.g. 4-bit Q + 3-bit KV).
  static AttnQuant make(int kv_bits, int qkv_bits, bool keep_bos = true, int q_bits = 0);
  std::string str() const;  // "kv4", "qkv4", "q4 kv3 (bos kv4)", "none"
};

struct InferenceOptions {
  ActMode mode = ActMode::A48;
  AttnQuant attn;
};

// One projection's integer GEMM as seen by the engine (for tests): codes and accumulators.
struct ProjTrace {
  int layer;
  const char* name;  // "q", "k", "v", "o", "gate", "up", "down"
  int64_t n, in, out;
  quant::ActSpec spec;    // the input quantizer
  const float* x;         // [n, in] fp32 input of the quantizer
  const int8_t* x_codes;  // [n, in] (FP4: 2·value)
  const float* x_scales;  // [n] (FP4: half the kernel's scale, matching 2·value)
  const int8_t* w_codes;  // [out, in]
  const int32_t* acc;     // [n, out]
};

// K/V of every processed position, per layer: rows [pos][kv_heads * head_dim] (post-RoPE,
// after low-bit quantization when active).
class KVCache {
 public:
  KVCache() = default;
  explicit KVCache(const ModelConfig& c) : k(size_t(c.n_layers)), v(size_t(c.n_layers)) {}
  int64_t size() const { return len; }
  void clear() {
    for (auto& x : k) x.clear();
    for (auto& x : v) x.clear();
    len = 0;
  }
  std::vector<std::vector<float>> k, v;
  int64_t len = 0;
};

class InferenceEngine {
 public:
  // Throws when the mode needs weights that are absent (mode fp without latent weights).
  InferenceEngine(std::shared_ptr<const InferenceWeights> w, const InferenceOptions& opt);

  // Appends tokens[T] at positions cache.size() .. cache.size()+T-1 and returns their logits
  // [T, V] row-major (only the last row, [1, V], when last_only). probe collects SPEC §3 zero
  // counts as BitNetLM::logits does; trace (tests) sees every integer GEMM.
  std::vector<float> forward(std::span<const int32_t> tokens, KVCache& cache,
                             bool last_only = false, SparsityProbe* probe = nullptr,
                             const std::function<void(const ProjTrace&)>& trace = {}) const;
  // Full-sequence forward from an empty cache: tokens[T] -> logits [T, V].
  std::vector<float> logits(std::span<const int32_t> tokens, SparsityProbe* probe = nullptr) const;
  KVCache new_cache() const { return KVCache(w_->config); }

  const InferenceWeights& weights() const { return *w_; }
  const ModelConfig& config() const { return w_->config; }
  const InferenceOptions& options() const { return opt_; }
  int64_t vocab() const { return w_->config.vocab_size; }

 private:
  static constexpr double kSerialWork =
      8e6;  // multiply-adds below which forward stays on one thread
  std::vector<float> forward_impl(std::span<const int32_t> tokens, KVCache& cache, bool last_only,
                                  SparsityProbe* probe,
                                  const std::function<void(const ProjTrace&)>& trace) const;
  std::shared_ptr<const InferenceWeights> w_;
  InferenceOptions opt_;
  LayerQuant lq_;
};

}  // namespace nn
