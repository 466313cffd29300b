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
  if (s == "fp4-all") return ActMode::Fp4All;
  autograd::fail("activation mode '", s,
                 "' is not one of fp, w158a8, a4.8, a4.8-fp4, int4-all, fp4-all");
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
    case ActMode::Fp4All:
      return "fp4-all";
  }
  return "?";
}

quant::ActKind parse_a4_quant(const std::string& s) {
  using quant::ActKind;
  if (s == "int4") return ActKind::Int4;
  if (s == "int4-absmax") return ActKind::Int4Absmax;
  if (s == "fp4") return ActKind::Fp4;
  if (s == "fp4-e1m2") return ActKind::Fp4E1M2;
  autograd::fail("'", s, "' is not one of int4, int4-absmax, fp4, fp4-e1m2");
}

std::string a4_quant_name(quant::ActKind k) {
  using quant::ActKind;
  switch (k) {
    case ActKind::Int4:
      return "int4";
    case ActKind::Int4Absmax:
      return "int4-absmax";
    case ActKind::Fp4:
      return "fp4";
    case ActKind::Fp4E1M2:
      return "fp4-e1m2";
    default:
      return "?";
  }
}

quant::ActKind parse_down_quant(const std::string& s) {
  using quant::ActKind;
  if (s == "int8") return ActKind::Int8;
  if (s == "int4") return ActKind::Int4;
  if (s == "fp4") return ActKind::Fp4;
  autograd::fail("'", s, "' is not one of int8, int4, fp4");
}

std::string down_quant_name(quant::ActKind k) {
  using quant::ActKind;
  switch (k) {
    case ActKind::Int8:
      return "int8";
    case ActKind::Int4:
      return "int4";
    case ActKind::Fp4:
      return "fp4";
    default:
      return "?";
  }
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
  if (!(topk_ratio >= 0 && topk_ratio <= 1))
    fail("model.topk_ratio: must be in [0, 1] (0 = top-K off), got ", topk_ratio);
  if (a4_quant_name(a4_quant) == "?")
    fail("model.a4_quant: ActKind ", int(a4_quant),
         " is not one of int4, int4-absmax, fp4, fp4-e1m2");
  if (down_quant_name(down_quant) == "?")
    fail("model.down_quant: ActKind ", int(down_quant), " is not one of int8, int4, fp4");
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

namespace {
// The down_proj input's quantizer for model.down_quant: INT4 with b = 2 mean|x| (the paper's
// setting for that input), else the kind as given.
quant::ActSpec down_spec(quant::ActKind k) {
  return k == quant::ActKind::Int4 ? quant::ActSpec{quant::ActKind::Int4, 0.0f, 2.0f}
                                   : quant::ActSpec{k};
}
}  // namespace

LayerQuant layer_quant(ActMode m, const ModelConfig& c) {
  using quant::ActKind;
  using quant::ActSpec;
  LayerQuant q;
  switch (m) {
    case ActMode::FP:
      break;
    case ActMode::W158A8:  // model.down_quant: the Fig. 5 ablation (the other inputs 8-bit)
      q.qkv = q.o = q.gate_up = ActSpec{ActKind::Int8};
      q.down = down_spec(c.down_quant);
      q.ternary = true;
      break;
    case ActMode::A48:  // model.a4_quant / model.down_quant pick the ablation quantizers
      q.qkv = q.gate_up = ActSpec{c.a4_quant};
      q.o = ActSpec{ActKind::Int8, c.topk_ratio};
      q.down = down_spec(c.down_quant);
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
    case ActMode::Fp4All:
      q.qkv = q.o = q.gate_up = q.down = ActSpec{ActKind::Fp4};
      q.ternary = true;
      break;
  }
  return q;
}

}  // namespace nn
