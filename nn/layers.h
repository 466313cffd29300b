// Layers of the BitNet a4.8 decoder (docs/SPEC.md §1): Embedding, RMSNorm, Linear, BitLinear,
// Attention, FeedForward, Block. Each forward states its shapes; all backward math lives in the
// ops.
#pragma once
#include <cstdint>
#include <memory>
#include <span>

#include "nn/config.h"
#include "nn/module.h"
#include "quant/bitlinear.h"
#include "quant/quantizers.h"

namespace nn {

// Zero counts of the quantized inputs per projection kind (SPEC §3), pooled over layers and calls.
struct SparsityProbe {
  enum Kind { QKV, Out, GateUp, Down, Relu2Gate, kKinds };
  int64_t zeros[kKinds] = {}, total[kKinds] = {};
  void add(Kind k, int64_t z, int64_t n) {
    zeros[k] += z;
    total[k] += n;
  }
  double frac(Kind k) const { return total[k] ? double(zeros[k]) / double(total[k]) : 0.0; }
  void clear() { *this = SparsityProbe{}; }
};

// Figures of SPEC §3 for one model shape: fractions of exact zeros in each projection's input.
struct SparsityReport {
  double qkv, out, up, gate, down, overall;  // fractions in [0, 1]
  double active_params;                      // non-embedding params x (1 - overall)
};
SparsityReport sparsity_report(const SparsityProbe& p, const ModelConfig& c);

// Shared per-forward context: the active quantizers and the optional probe.
struct ForwardCtx {
  LayerQuant quant;
  SparsityProbe* probe = nullptr;
  bool integer_gemm = true;  // BitLinear forward through the exact integer GEMM where it applies
};

class Embedding : public Module {
 public:
  Embedding(int64_t vocab, int64_t dim, bool decay);
  // ids[N] -> [N, dim]
  Variable forward(std::span<const int32_t> ids) const;
  Variable weight;
};

class RMSNorm : public Module {
 public:
  RMSNorm(int64_t dim, float eps);
  // x[..., dim] -> [..., dim]
  Variable forward(const Variable& x) const;
  Variable weight;
  float eps;
};

// Full-precision linear without bias (the LM head).
class Linear : public Module {
 public:
  Linear(int64_t in, int64_t out);
  // x[..., in] -> [..., out]
  Variable forward(const Variable& x) const;
  Variable weight;  // [out, in]
};

// The quantized input of the projections that read the same x: integer codes when the integer
// GEMM applies (ternary weights, INT8/INT4 codes), else the float path's dequantized Variable.
struct BitInput {
  Variable xq;                                       // float path (or x itself, mode fp)
  std::shared_ptr<const quant::QuantizedAct> codes;  // integer path
};

// Linear with an fp32 latent weight, ternarized on the fly, and a quantized input.
// y = Q(x) @ T(W)^T where Q is the input quantizer (STE) and T the ternary quantizer (STE), so
// the matmul backward uses the quantized operands: dX = dY·Wq, dW = dY^T·Xq.
// Two equivalent routes: the integer path (quant::bitlinear: int8 codes x ternary codes, exact
// int32 sums, one node) and the float path (act_quant -> ternary -> matmul on dequantized values).
class BitLinear : public Module {
 public:
  BitLinear(int64_t in, int64_t out);
  // x[..., in] -> its quantized form under spec; the integer route when ctx allows it.
  static BitInput quantize(const Variable& x, const quant::ActSpec& spec, const ForwardCtx& ctx,
                           SparsityProbe::Kind kind);
  // in[..., in] -> [..., out]
  Variable forward(const BitInput& in, bool ternary) const;
  // x[..., in] -> Q(x) (dequantized, [..., in]); counts zeros into probe[kind] when given.
  static Variable quantize_input(const Variable& x, const quant::ActSpec& spec,
                                 SparsityProbe* probe, SparsityProbe::Kind kind);
  // xq[..., in] (already quantized) -> [..., out]
  Variable forward_quantized(const Variable& xq, bool ternary) const;
  Variable weight;  // [out, in]
};

class Attention : public Module {
 public:
  explicit Attention(const ModelConfig& c);
  // x[B*T, d] (already normalised) -> [B*T, d] = o_proj(SubLN(attn(RoPE(q), RoPE(k), v)))
  Variable forward(const Variable& x, int64_t B, int64_t T, const ForwardCtx& ctx) const;
  BitLinear *q_proj, *k_proj, *v_proj, *o_proj;
  RMSNorm* attn_sub_norm;

 private:
  int64_t n_heads_, n_kv_heads_, head_dim_;
  float theta_;
};

class FeedForward : public Module {
 public:
  explicit FeedForward(const ModelConfig& c);
  // x[N, d] (already normalised) -> [N, d] = down(SubLN(relu(gate x)^2 * up x))
  Variable forward(const Variable& x, const ForwardCtx& ctx) const;
  BitLinear *gate_proj, *up_proj, *down_proj;
  RMSNorm* ffn_sub_norm;

 private:
  Glu glu_;
};

class Block : public Module {
 public:
  explicit Block(const ModelConfig& c);
  // x[B*T, d] -> [B*T, d]: h = x + attn(norm(x)); out = h + mlp(norm(h))
  Variable forward(const Variable& x, int64_t B, int64_t T, const ForwardCtx& ctx) const;
  RMSNorm *input_layernorm, *post_attention_layernorm;
  Attention* self_attn;
  FeedForward* mlp;
};

}  // namespace nn
