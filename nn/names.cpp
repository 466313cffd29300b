// The tensor table's lookups (see names.h): full names, shapes, the parameter list of a config.
#include "nn/names.h"

#include "autograd/error.h"

namespace nn {

std::string block_prefix(int64_t i) { return "model.layers." + std::to_string(i) + "."; }
std::string gguf_block_prefix(int64_t i) { return "blk." + std::to_string(i) + "."; }

std::vector<int64_t> tensor_shape(TensorSlot s, const ModelConfig& c) {
  const int64_t d = c.d_model, f = c.ffn_dim, kv = c.kv_heads() * c.head_dim();
  switch (s) {
    case TensorSlot::Embed:
    case TensorSlot::LmHead:
      return {c.vocab_size, d};
    case TensorSlot::FinalNorm:
    case TensorSlot::InputNorm:
    case TensorSlot::AttnSubNorm:
    case TensorSlot::PostAttnNorm:
      return {d};
    case TensorSlot::FfnSubNorm:
      return {f};
    case TensorSlot::Q:
    case TensorSlot::O:
      return {d, d};
    case TensorSlot::K:
    case TensorSlot::V:
      return {kv, d};
    case TensorSlot::Gate:
    case TensorSlot::Up:
      return {f, d};
    case TensorSlot::Down:
      return {d, f};
  }
  autograd::fail("tensor_shape: unknown tensor slot ", int(s));
}

namespace {
TensorInfo model_level(const TensorName& t) { return {&t, -1, t.name, t.gguf}; }
TensorInfo in_block(const TensorName& t, int64_t i) {
  return {&t, i, block_prefix(i) + t.name, gguf_block_prefix(i) + t.gguf};
}
}  // namespace

std::vector<TensorInfo> model_tensors(const ModelConfig& c) {
  std::vector<TensorInfo> out{model_level(kEmbedTokens)};
  for (int64_t i = 0; i < c.n_layers; ++i)
    for (const TensorName& t : kBlockTensors) out.push_back(in_block(t, i));
  out.push_back(model_level(kFinalNorm));
  if (!c.tie_embeddings) out.push_back(model_level(kLmHead));
  return out;
}

std::optional<TensorInfo> find_tensor(const std::string& name) {
  for (const TensorName* t : {&kEmbedTokens, &kFinalNorm, &kLmHead})
    if (name == t->name) return model_level(*t);
  const std::string pre = "model.layers.";
  if (name.rfind(pre, 0) != 0) return std::nullopt;
  const size_t dot = name.find('.', pre.size());
  if (dot == std::string::npos || dot == pre.size() || dot - pre.size() > 9) return std::nullopt;
  const std::string idx = name.substr(pre.size(), dot - pre.size()), rest = name.substr(dot + 1);
  if (idx.find_first_not_of("0123456789") != std::string::npos || (idx.size() > 1 && idx[0] == '0'))
    return std::nullopt;
  for (const TensorName& t : kBlockTensors)
    if (rest == t.name) return in_block(t, std::stoll(idx));
  return std::nullopt;
}

}  // namespace nn
