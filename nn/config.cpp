// Model configuration validation and the mode → quantizer table of docs/SPEC.md §2.
#include "nn/config.h"

#include "autograd/error.h"

namespace nn {

ActMode parse_mode(const std::string& s) {
  if (s == "fp") return ActMode::FP;
  if (s == "w158a8") return ActMode::W158A8;
  if (s == "a4.8") return ActMode::A48;
  if (s == "a4.8-fp4") return ActMode::A48FP4;
  if (s == "int4-all") return ActMode::Int4All;
  autograd::fail("activation mode '", s, "' is not one of fp, w158a8, a4.8, a4.8-fp4, int4-all");
}

std::string to_string(ActMode m) {
  switch (m) {
    case ActMode::FP:
      return "fp";
    case ActMode::W158A8:
      return "w158a8";
    case ActMode::A48:
      return "a4.8";
    case ActMode::A48FP4:
      return "a4.8-fp4";
    case ActMode::Int4All:
      return "int4-all";
  }
  return "?";
}

void ModelConfig::validate() const {
  using autograd::fail;
  if (vocab_size < 2) fail("model.vocab_size: must be >= 2, got ", vocab_size);
  if (d_model < 1) fail("model.d_model: must be >= 1, got ", d_model);
  if (n_layers < 1) fail("model.n_layers: must be >= 1, got ", n_layers);
  if (n_heads < 1) fail("model.n_heads: must be >= 1, got ", n_heads);
  if (d_model % n_heads) fail("model.d_model: ", d_model, " is not divisible by n_heads ", n_heads);
  if (head_dim() % 2) fail("model.n_heads: head_dim ", head_dim(), " must be even for RoPE");
  if (n_kv_heads < 0 || kv_heads() > n_heads || n_heads % kv_heads())
    fail("model.n_kv_heads: ", n_kv_heads, " must divide n_heads ", n_heads);
  if (ffn_dim < 1) fail("model.ffn_dim: must be >= 1, got ", ffn_dim);
  if (!(rope_theta > 0)) fail("model.rope_theta: must be > 0, got ", rope_theta);
  if (!(norm_eps > 0)) fail("model.norm_eps: must be > 0, got ", norm_eps);
  if (!(topk_ratio > 0 && topk_ratio <= 1))
    fail("model.topk_ratio: must be in (0, 1], got ", topk_ratio);
  if (!(init_std > 0)) fail("model.init_std: must be > 0, got ", init_std);
}

int64_t ModelConfig::non_embedding_params() const {
  const int64_t hd = head_dim(), kv = kv_heads() * hd;
  const int64_t attn = 2 * d_model * d_model + 2 * kv * d_model;
  const int64_t ffn = 3 * d_model * ffn_dim;
  const int64_t norms = 2 * d_model + d_model + ffn_dim;  // input, post-attn, attn_sub, ffn_sub
  return n_layers * (attn + ffn + norms) + d_model;       // + final norm
}

int64_t ModelConfig::total_params() const {
  return non_embedding_params() + vocab_size * d_model * (tie_embeddings ? 1 : 2);
}

LayerQuant layer_quant(ActMode m, const ModelConfig& c) {
  using quant::ActKind;
  using quant::ActSpec;
  LayerQuant q;
  switch (m) {
    case ActMode::FP:
      break;
    case ActMode::W158A8:
      q.qkv = q.o = q.gate_up = q.down = ActSpec{ActKind::Int8};
      q.ternary = true;
      break;
    case ActMode::A48:
      q.qkv = q.gate_up = ActSpec{ActKind::Int4};
      q.o = ActSpec{ActKind::Int8, c.topk_ratio};
      q.down = ActSpec{ActKind::Int8};
      q.ternary = true;
      break;
    case ActMode::A48FP4:
      q.qkv = q.gate_up = ActSpec{ActKind::Fp4};
      q.o = ActSpec{ActKind::Fp4, c.fp4_topk ? c.topk_ratio : 0.0f};
      q.down = ActSpec{ActKind::Int8};
      q.ternary = true;
      break;
    case ActMode::Int4All:
      q.qkv = q.o = q.gate_up = ActSpec{ActKind::Int4};
      q.down = ActSpec{ActKind::Int4, 0.0f, 2.0f};
      q.ternary = true;
      break;
  }
  return q;
}

}  // namespace nn
