// Layer implementations: composition of autograd ops and quantizer nodes per docs/SPEC.md §1.
#include "nn/layers.h"

#include <string>

#include "autograd/error.h"
#include "autograd/ops.h"
#include "quant/ste.h"

namespace nn {
namespace ag = autograd;

Embedding::Embedding(int64_t vocab, int64_t dim, bool decay) {
  weight = register_parameter("weight", Shape{vocab, dim}, Init::Normal, decay);
}
Variable Embedding::forward(std::span<const int32_t> ids) const {
  return ag::embedding(weight, ids);
}

RMSNorm::RMSNorm(int64_t dim, float e) : eps(e) {
  weight = register_parameter("weight", Shape{dim}, Init::Ones, false);
}
Variable RMSNorm::forward(const Variable& x) const { return ag::rmsnorm(x, weight, eps); }

Linear::Linear(int64_t in, int64_t out) {
  weight = register_parameter("weight", Shape{out, in}, Init::Normal, true);
}
Variable Linear::forward(const Variable& x) const { return ag::linear(x, weight); }

BitLinear::BitLinear(int64_t in, int64_t out) {
  weight = register_parameter("weight", Shape{out, in}, Init::Normal, true);
}
Variable BitLinear::quantize_input(const Variable& x, const quant::ActSpec& spec,
                                   SparsityProbe* probe, SparsityProbe::Kind kind) {
  if (!probe) return quant::act_quant(x, spec);
  int64_t zeros = 0;
  Variable y = quant::act_quant(x, spec, &zeros);  // zeros of the (possibly unquantized) input
  probe->add(kind, zeros, x.numel());
  return y;
}
Variable BitLinear::forward_quantized(const Variable& xq, bool ternary) const {
  return ag::linear(xq, ternary ? quant::ternary(weight) : weight);
}
BitInput BitLinear::quantize(const Variable& x, const quant::ActSpec& spec, const ForwardCtx& ctx,
                             SparsityProbe::Kind kind) {
  // The integer route whenever the codes are integers, on every CPU: its int32 sums are exact and
  // the same from every igemm kernel (AVX512-VNNI, AVX2 or portable), so a config trains alike.
  if (!(ctx.integer_gemm && ctx.quant.ternary && quant::has_integer_codes(spec)))
    return {quantize_input(x, spec, ctx.probe, kind), nullptr};
  if (!ctx.probe) return {Variable(), quant::quantize_act(x, spec)};
  int64_t zeros = 0;
  auto codes = quant::quantize_act(x, spec, &zeros);
  ctx.probe->add(kind, zeros, x.numel());
  return {Variable(), std::move(codes)};
}
Variable BitLinear::forward(const BitInput& in, bool ternary) const {
  if (in.codes) return quant::bitlinear(in.codes, weight);
  return forward_quantized(in.xq, ternary);
}

Attention::Attention(const ModelConfig& c)
    : n_heads_(c.n_heads),
      n_kv_heads_(c.kv_heads()),
      head_dim_(c.head_dim()),
      theta_(c.rope_theta) {
  const int64_t d = c.d_model, kv = n_kv_heads_ * head_dim_;
  q_proj = &register_module("q_proj", std::make_unique<BitLinear>(d, d));
  k_proj = &register_module("k_proj", std::make_unique<BitLinear>(d, kv));
  v_proj = &register_module("v_proj", std::make_unique<BitLinear>(d, kv));
  o_proj = &register_module("o_proj", std::make_unique<BitLinear>(d, d));
  attn_sub_norm = &register_module("attn_sub_norm", std::make_unique<RMSNorm>(d, c.norm_eps));
}

Variable Attention::forward(const Variable& x, int64_t B, int64_t T, const ForwardCtx& ctx) const {
  const bool tern = ctx.quant.ternary;
  const BitInput xq = BitLinear::quantize(x, ctx.quant.qkv, ctx, SparsityProbe::QKV);
  // [B*T, heads*hd] -> [B, heads, T, hd]
  auto heads = [&](const Variable& y, int64_t h) {
    return ag::transpose(ag::reshape(y, Shape{B, T, h, head_dim_}), 1, 2);
  };
  Variable q = ag::rope(heads(q_proj->forward(xq, tern), n_heads_), theta_);
  Variable k = ag::rope(heads(k_proj->forward(xq, tern), n_kv_heads_), theta_);
  Variable v = heads(v_proj->forward(xq, tern), n_kv_heads_);
  Variable o = ag::causal_attention(q, k, v);                                   // [B, H, T, hd]
  o = ag::reshape(ag::transpose(o, 1, 2), Shape{B * T, n_heads_ * head_dim_});  // [B*T, d]
  o = attn_sub_norm->forward(o);
  return o_proj->forward(BitLinear::quantize(o, ctx.quant.o, ctx, SparsityProbe::Out), tern);
}

FeedForward::FeedForward(const ModelConfig& c) : glu_(c.glu) {
  const int64_t d = c.d_model, f = c.ffn_dim;
  gate_proj = &register_module("gate_proj", std::make_unique<BitLinear>(d, f));
  up_proj = &register_module("up_proj", std::make_unique<BitLinear>(d, f));
  down_proj = &register_module("down_proj", std::make_unique<BitLinear>(f, d));
  ffn_sub_norm = &register_module("ffn_sub_norm", std::make_unique<RMSNorm>(f, c.norm_eps));
}

Variable FeedForward::forward(const Variable& x, const ForwardCtx& ctx) const {
  const bool tern = ctx.quant.ternary;
  const BitInput xq = BitLinear::quantize(x, ctx.quant.gate_up, ctx, SparsityProbe::GateUp);
  Variable g = gate_proj->forward(xq, tern), u = up_proj->forward(xq, tern);
  if (ctx.probe) {  // exact zeros of the gate activation relu(g)^2 (or silu(g)), on g's device
    autograd::NoGradGuard ng;
    const Variable a = glu_ == Glu::ReLU2 ? ag::relu2(g) : ag::silu(g);
    ctx.probe->add(SparsityProbe::Relu2Gate, quant::count_zeros(a.value()), g.numel());
  }
  Variable z =
      ffn_sub_norm->forward(glu_ == Glu::ReLU2 ? ag::relu2_mul(g, u) : ag::mul(ag::silu(g), u));
  return down_proj->forward(BitLinear::quantize(z, ctx.quant.down, ctx, SparsityProbe::Down), tern);
}

Block::Block(const ModelConfig& c) {
  // Registration order = HF checkpoint order: input_layernorm, self_attn, post_attention_layernorm,
  // mlp.
  input_layernorm =
      &register_module("input_layernorm", std::make_unique<RMSNorm>(c.d_model, c.norm_eps));
  self_attn = &register_module("self_attn", std::make_unique<Attention>(c));
  post_attention_layernorm = &register_module("post_attention_layernorm",
                                              std::make_unique<RMSNorm>(c.d_model, c.norm_eps));
  mlp = &register_module("mlp", std::make_unique<FeedForward>(c));
}

Variable Block::forward(const Variable& x, int64_t B, int64_t T, const ForwardCtx& ctx) const {
  Variable h = ag::add(x, self_attn->forward(input_layernorm->forward(x), B, T, ctx));
  return ag::add(h, mlp->forward(post_attention_layernorm->forward(h), ctx));
}

SparsityReport sparsity_report(const SparsityProbe& p, const ModelConfig& c) {
  SparsityReport r{};
  r.qkv = p.frac(SparsityProbe::QKV);
  r.out = p.frac(SparsityProbe::Out);
  r.gate = p.frac(SparsityProbe::GateUp);
  r.up = 1.0 - (1.0 - p.frac(SparsityProbe::GateUp)) * (1.0 - p.frac(SparsityProbe::Relu2Gate));
  r.down = p.frac(SparsityProbe::Down);
  const double d = double(c.d_model), f = double(c.ffn_dim),
               kv = double(c.kv_heads() * c.head_dim());
  const double wq = d * d + 2 * kv * d, wo = d * d, wf = d * f;  // per layer
  r.overall = (r.qkv * wq + r.out * wo + (r.gate + r.up + r.down) * wf) / (wq + wo + 3 * wf);
  r.active_params = double(c.n_layers) * (wq + wo + 3 * wf) * (1.0 - r.overall);
  return r;
}

}  // namespace nn
