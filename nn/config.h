// Model configuration and activation modes (docs/SPEC.md §1, §2): shapes, variants and validation.
#pragma once
#include <cstdint>
#include <string>

#include "quant/quantizers.h"

namespace nn {

// One switch on the whole model; changeable between steps without touching parameters.
enum class ActMode {
  FP,       // no quantization (LLaMA baseline)
  W158A8,   // stage 1: ternary weights, INT8 on every BitLinear input
  A48,      // stage 2: INT4 on q/k/v/gate/up, top-K 50% + INT8 on o, INT8 on down
  A48FP4,   // FP4 MinMax everywhere but down (INT8); top-K on o per config
  Int4All,  // ablation: INT4 on every input, down with b = 2 mean|x|
  Fp4All,   // ablation: FP4 E2M1 MinMax on every input, no top-K
};
// "fp", "w158a8", "a4.8", "a4.8-fp4", "int4-all", "fp4-all"
ActMode parse_mode(const std::string& s);
std::string to_string(ActMode m);

// model.a4_quant: the quantizer of the 4-bit inputs (q/k/v, gate/up) in mode a4.8 ([a4.8] Fig. 6):
// "int4" (INT4 absmean, default), "int4-absmax", "fp4" (E2M1 MinMax), "fp4-e1m2" (E1M2 MinMax).
quant::ActKind parse_a4_quant(const std::string& s);
std::string a4_quant_name(quant::ActKind k);
// model.down_quant: the down_proj input quantizer in mode a4.8 ([a4.8] Fig. 5): "int8" (default),
// "int4" (INT4 absmean with b = 2 mean|x|), "fp4" (E2M1 MinMax).
quant::ActKind parse_down_quant(const std::string& s);
std::string down_quant_name(quant::ActKind k);

enum class Glu { ReLU2, SwiGLU };

struct ModelConfig {
  int64_t vocab_size = 32000;
  int64_t d_model = 512;
  int64_t n_layers = 8;
  int64_t n_heads = 8;
  int64_t n_kv_heads = 0;  // 0 = n_heads
  int64_t ffn_dim = 1536;
  float rope_theta = 10000.0f;
  float norm_eps = 1e-5f;
  bool tie_embeddings = false;
  Glu glu = Glu::ReLU2;
  float topk_ratio = 0.5f;  // top-K kept ratio on the o_proj input in a4.8 modes (0 = off)
  quant::ActKind a4_quant = quant::ActKind::Int4;    // q/k/v and gate/up inputs in a4.8
  quant::ActKind down_quant = quant::ActKind::Int8;  // down_proj input in a4.8
  bool fp4_topk = true;  // a4.8-fp4 keeps top-K on o (SPEC: open, default yes)
  float init_std = 0.02f;

  int64_t kv_heads() const { return n_kv_heads ? n_kv_heads : n_heads; }
  int64_t head_dim() const { return d_model / n_heads; }
  // Throws autograd::Error naming the inconsistent field(s).
  void validate() const;
  // 4 d^2-style count of the attention + GLU projections (what the paper's sizes count).
  int64_t non_embedding_params() const;
  int64_t total_params() const;
};

// Input quantizers of each projection kind, and whether weights are ternary, for a mode.
struct LayerQuant {
  quant::ActSpec qkv, o, gate_up, down;
  bool ternary = false;
};
LayerQuant layer_quant(ActMode m, const ModelConfig& c);

}  // namespace nn
