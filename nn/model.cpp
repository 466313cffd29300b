// BitNetLM forward: embedding -> blocks -> final RMSNorm -> LM head (-> cross-entropy).
#include "nn/model.h"

#include <string>

#include "autograd/error.h"
#include "autograd/ops.h"

namespace nn {

Decoder::Decoder(const ModelConfig& c) {
  embed_tokens =
      &register_module("embed_tokens", std::make_unique<Embedding>(c.vocab_size, c.d_model, false));
  for (int64_t i = 0; i < c.n_layers; ++i)
    layers.push_back(&register_module("layers." + std::to_string(i), std::make_unique<Block>(c)));
  norm = &register_module("norm", std::make_unique<RMSNorm>(c.d_model, c.norm_eps));
}

BitNetLM::BitNetLM(const ModelConfig& c, uint64_t seed) : cfg_(c) {
  cfg_.validate();
  model = &register_module("model", std::make_unique<Decoder>(cfg_));
  if (!cfg_.tie_embeddings)
    lm_head = &register_module("lm_head", std::make_unique<Linear>(c.d_model, c.vocab_size));
  params_ = std::make_unique<ParameterSet>(*this, seed, cfg_.init_std);
}

const Variable& BitNetLM::head_weight() const {
  return lm_head ? lm_head->weight : model->embed_tokens->weight;
}

Variable BitNetLM::hidden(std::span<const int32_t> tokens, int64_t B, int64_t T,
                          SparsityProbe* probe) const {
  BN_CHECK(B > 0 && T > 0 && int64_t(tokens.size()) == B * T, "BitNetLM::logits", "got ",
           tokens.size(), " tokens for batch ", B, " x seq ", T);
  const ForwardCtx ctx{layer_quant(mode_, cfg_), probe, integer_gemm_};
  autograd::Tape* tape = autograd::grad_enabled() ? autograd::current_tape() : nullptr;
  marks_.clear();
  Variable x = model->embed_tokens->forward(tokens);  // [B*T, d]
  for (const Block* b : model->layers) {
    if (tape) marks_.push_back(tape->size());
    x = b->forward(x, B, T, ctx);
  }
  if (tape) marks_.push_back(tape->size());
  return model->norm->forward(x);  // [B*T, d]
}

Variable BitNetLM::logits(std::span<const int32_t> tokens, int64_t B, int64_t T,
                          SparsityProbe* probe) const {
  return autograd::linear(hidden(tokens, B, T, probe), head_weight());  // [B*T, V]
}

Variable BitNetLM::loss(std::span<const int32_t> inputs, std::span<const int32_t> targets,
                        int64_t B, int64_t T, SparsityProbe* probe) const {
  // the LM head and the loss fused over vocabulary chunks: no [B*T, V] logits
  return autograd::linear_cross_entropy(hidden(inputs, B, T, probe), head_weight(), targets);
}

}  // namespace nn
