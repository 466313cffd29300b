// BitNetLM's tensors in one table: registered (= Hugging Face) name, GGUF name, and what the
// writers need.
//
// The module tree (nn/model.cpp, nn/layers.cpp) registers the parameters; this table restates
// their names, in registration order, next to the GGUF name and the per-tensor facts of the file
// writers (HF safetensors, GGUF, the compact inference file) and of nn::InferenceWeights, which
// all derive their names from it. tests/nn/test_model.cpp (ModelTensors.*) checks that the table
// and the registered parameters agree name for name, shape for shape and BitLinear for BitLinear.
//
//   registered / Hugging Face name              GGUF name                 kind
//   model.embed_tokens.weight                   token_embd.weight         embedding [V, d]
//   model.layers.{i}.<block tensor>             blk.{i}.<block tensor>    see kBlockTensors
//   model.norm.weight                           output_norm.weight        RMSNorm gain [d]
//   lm_head.weight (untied models only)         output.weight             LM head [V, d]
#pragma once
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "nn/config.h"

namespace nn {

// Which tensor of the model (the shape and the role follow from it).
enum class TensorSlot : uint8_t {
  Embed,
  FinalNorm,
  LmHead,  // outside the blocks
  InputNorm,
  Q,
  K,
  V,
  O,
  AttnSubNorm,
  PostAttnNorm,
  Gate,
  Up,
  Down,
  FfnSubNorm  // per block
};

struct TensorName {
  TensorSlot slot;
  const char* name;  // registered = Hugging Face name; for a block tensor the part after
                     // "model.layers.{i}."
  const char*
      gguf;      // GGUF (llama.cpp / bitnet.cpp) name; for a block tensor the part after "blk.{i}."
  bool ternary;  // a BitLinear weight [out, in]: ternarized by the exports and the compact file
};

inline constexpr TensorName kEmbedTokens{TensorSlot::Embed, "model.embed_tokens.weight",
                                         "token_embd.weight", false};
inline constexpr TensorName kFinalNorm{TensorSlot::FinalNorm, "model.norm.weight",
                                       "output_norm.weight", false};
inline constexpr TensorName kLmHead{TensorSlot::LmHead, "lm_head.weight", "output.weight", false};

// The tensors of one decoder block, in registration order (nn::Block, nn::Attention,
// nn::FeedForward).
inline constexpr TensorName kBlockTensors[] = {
    {TensorSlot::InputNorm, "input_layernorm.weight", "attn_norm.weight", false},
    {TensorSlot::Q, "self_attn.q_proj.weight", "attn_q.weight", true},
    {TensorSlot::K, "self_attn.k_proj.weight", "attn_k.weight", true},
    {TensorSlot::V, "self_attn.v_proj.weight", "attn_v.weight", true},
    {TensorSlot::O, "self_attn.o_proj.weight", "attn_output.weight", true},
    {TensorSlot::AttnSubNorm, "self_attn.attn_sub_norm.weight", "attn_sub_norm.weight", false},
    {TensorSlot::PostAttnNorm, "post_attention_layernorm.weight", "ffn_norm.weight", false},
    {TensorSlot::Gate, "mlp.gate_proj.weight", "ffn_gate.weight", true},
    {TensorSlot::Up, "mlp.up_proj.weight", "ffn_up.weight", true},
    {TensorSlot::Down, "mlp.down_proj.weight", "ffn_down.weight", true},
    {TensorSlot::FfnSubNorm, "mlp.ffn_sub_norm.weight", "ffn_sub_norm.weight", false},
};

// "model.layers.{i}." and "blk.{i}.": the prefixes of block i's tensors.
std::string block_prefix(int64_t i);
std::string gguf_block_prefix(int64_t i);

// The shape of a tensor of a model with config c: [V, d] (embedding, LM head), [d] or [ffn_dim]
// (RMSNorm gains), [out, in] (BitLinear weights: q/o [d, d], k/v [kv, d], gate/up [ffn, d],
// down [d, ffn]).
std::vector<int64_t> tensor_shape(TensorSlot s, const ModelConfig& c);

// One parameter of a model: its table row and where it sits.
struct TensorInfo {
  const TensorName* tensor = nullptr;
  int64_t layer = -1;  // block index; -1 outside the blocks
  std::string
      name;  // full registered = Hugging Face name: "model.layers.3.self_attn.q_proj.weight"
  std::string gguf;  // full GGUF name: "blk.3.attn_q.weight"
  TensorSlot slot() const { return tensor->slot; }
  bool ternary() const { return tensor->ternary; }
};

// Every parameter of a BitNetLM with config c, in registration order (= ParameterSet::entries()).
std::vector<TensorInfo> model_tensors(const ModelConfig& c);
// The parameter of that full registered name; nullopt when no BitNetLM registers it.
std::optional<TensorInfo> find_tensor(const std::string& name);

}  // namespace nn
