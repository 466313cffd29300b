// Hugging Face BitNetForCausalLM directories in (the inverse of export.h's hf / hf-offline):
// config.json -> nn::ModelConfig, one or several safetensors files -> parameters. docs/EXPORT.md.
#pragma once
#include <cstdint>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "nn/model.h"
#include "trainers/config/config.h"
#include "trainers/formats/trained_model.h"

namespace trainers::formats {

// What config.json says, as far as the import needs it.
struct HfConfig {
  nn::ModelConfig model;                // shape, GQA, RoPE theta, eps, tying, GLU
  int64_t max_position_embeddings = 0;  // 0 = absent
  bool quantized = false;               // has quantization_config {quant_method: bitnet}
  // quantization_config.linear_class ("autobitlinear" | "bitlinear", transformers' default) and
  // quantization_mode ("online" | "offline", default "offline"); "" without quantization_config.
  std::string linear_class, quantization_mode;
  int64_t bos_token_id = -1, eos_token_id = -1;  // -1 = null / absent
};

// A directory with a config.json (a Hugging Face model directory, not a bitnet run directory).
bool is_hf_dir(const std::string& path);

// Reads DIR/config.json. Every problem (not a BitNet config, a missing or non-integer size, an
// unknown hidden_act, head_dim != hidden_size / num_attention_heads, rope scaling, attention
// biases, quantization_config.use_rms_norm, ...) is listed in one autograd::Error.
HfConfig read_hf_config(const std::string& dir);

struct HfImportResult {
  HfConfig config;
  std::vector<std::string> files;  // the safetensors files read
  std::vector<std::string> notes;  // non-fatal remarks (ignored buffers, layout vs declared mode)
};

// Reads DIR (config.json + model.safetensors, or the shards of model.safetensors.index.json)
// into `model`, whose config must equal read_hf_config(DIR).model in shape. F32 / BF16 / F16
// latent weights (online layout) are converted to fp32; packed uint8 BitLinear weights (offline
// layout) with their weight_scale become latent weights W = c * a / p (c the ternary codes, a the
// absmean scale: weight_scale for linear_class autobitlinear, 1 / weight_scale for bitlinear; p
// the fraction of nonzero codes), so that the model's own absmean ternarization gives back the
// same codes and the same scale a. Every missing, unexpected, mis-shaped or mis-typed tensor and
// every missing shard is listed, by name, in one autograd::Error; on error the model's parameters
// may be partly overwritten.
HfImportResult import_hf(const std::string& dir, nn::BitNetLM& model);

// A TrainedModel from an HF directory: mode w158a8 (the arithmetic transformers computes), step 0,
// config_yaml = hf_recipe_yaml, the tokenizer.model bytes when the directory has a SentencePiece
// model, hf_source = the directory.
TrainedModel load_hf_model(const std::string& dir);

// The `model:` block for config.json's model ("model:\n  vocab_size: ...").
std::string hf_model_yaml(const HfConfig& c);
// `bitnet config --from-hf DIR`: a training config continuing DIR into a4.8 (docs/TRAINING.md's
// continue-training recipe: the model block from config.json, stage 2 only, short warm-up).
std::string hf_recipe_yaml(const std::string& dir, const HfConfig& c);

// The run config for `bitnet train CONFIG --init-from HF_DIR`: model keys the YAML (or an
// override) does not set come from config.json; those it sets must agree with it, else a
// config::ConfigError lists every disagreeing key ("model.d_model: config 512, config.json
// hidden_size 2560").
config::Config load_config_for_hf(const std::string& yaml_path, const std::string& hf_dir,
                                  const std::vector<std::string>& overrides = {});

// The tokenizer files transformers reads (tokenizer.json, tokenizer_config.json,
// special_tokens_map.json, tokenizer.model, added_tokens.json), copied from src to out; returns
// the files written (empty when src has none).
std::vector<std::string> copy_hf_tokenizer(const std::string& src, const std::string& out);
// bos_token_id / eos_token_id of DIR/config.json (-1 for null or absent); nullopt without a
// readable config.json.
std::optional<std::pair<int64_t, int64_t>> hf_token_ids(const std::string& dir);

}  // namespace trainers::formats
