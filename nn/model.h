// BitNetLM: the full BitNet a4.8 decoder (embedding, blocks, final norm, LM head) + its parameters.
#pragma once
#include <memory>
#include <span>
#include <vector>

#include "nn/config.h"
#include "nn/layers.h"
#include "nn/module.h"

namespace nn {

// Hugging Face layout: "model.embed_tokens", "model.layers.{i}", "model.norm" (every parameter name
// with its GGUF name and shape: the table in nn/names.h, which must follow this registration).
class Decoder : public Module {
 public:
  explicit Decoder(const ModelConfig& c);
  Embedding* embed_tokens;
  std::vector<Block*> layers;
  RMSNorm* norm;
};

class BitNetLM : public Module {
 public:
  // Builds the module tree, packs parameters into flat buffers and initialises them from seed.
  explicit BitNetLM(const ModelConfig& c, uint64_t seed = 0);

  const ModelConfig& config() const { return cfg_; }
  ParameterSet& params() { return *params_; }
  const ParameterSet& params() const { return *params_; }

  // Switches every quantizer of the model at once; parameters are untouched.
  void set_mode(ActMode m) { mode_ = m; }
  ActMode mode() const { return mode_; }
  // BitLinear forward through the exact integer GEMM (default) or the float path; both give the
  // same values to fp32 rounding (tests/nn/test_model.cpp checks it).
  void set_integer_gemm(bool on) { integer_gemm_ = on; }
  bool integer_gemm() const { return integer_gemm_; }

  // tokens[B*T] (row-major [B, T]) -> logits [B*T, V]. probe (optional) collects SPEC §3 counts.
  Variable logits(std::span<const int32_t> tokens, int64_t B, int64_t T,
                  SparsityProbe* probe = nullptr) const;
  // Mean next-token cross-entropy of logits(inputs) against targets[B*T] (ignore index -100),
  // through autograd::linear_cross_entropy (the logits are never materialised).
  Variable loss(std::span<const int32_t> inputs, std::span<const int32_t> targets, int64_t B,
                int64_t T, SparsityProbe* probe = nullptr) const;

  // Tape positions recorded by the last logits() call made with a tape current: entry i < L is
  // the index of the first node of block i, entry L the first node after the blocks. Backward
  // processes nodes in reverse, so once node marks[i] is done, block i's gradients are complete.
  const std::vector<size_t>& block_marks() const { return marks_; }

  Decoder* model;
  Linear* lm_head = nullptr;  // null when tied to the embedding

 private:
  // The final RMSNorm's output [B*T, d] (records block_marks), and the LM head's weight.
  Variable hidden(std::span<const int32_t> tokens, int64_t B, int64_t T,
                  SparsityProbe* probe) const;
  const Variable& head_weight() const;

  ModelConfig cfg_;
  ActMode mode_ = ActMode::W158A8;
  bool integer_gemm_ = true;
  std::unique_ptr<ParameterSet> params_;
  mutable std::vector<size_t> marks_;
};

}  // namespace nn
