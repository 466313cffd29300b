// Model exports (docs/SPEC.md §6): Hugging Face BitNetForCausalLM directories (online / offline
// quantization layouts) and GGUF v3 files for llama.cpp / bitnet.cpp. See docs/EXPORT.md.
#pragma once
#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "trainers/formats/gguf.h"
#include "trainers/formats/trained_model.h"

namespace trainers::formats {

enum class ExportFormat { HF, HFOffline, GGUF, Compact };
// "hf", "hf-offline", "gguf", "compact" (the project's own 2-bit inference file, compact.h)
ExportFormat parse_export_format(const std::string& s);
std::string to_string(ExportFormat f);

struct ExportOptions {
  ExportFormat format = ExportFormat::HF;
  // GGUF runtime: "llama.cpp" (arch `bitnet`, `bitnet.hidden_activation` relu2|silu; tied
  // models) or "bitnet.cpp" (arch `bitnet-b1.58`: ReLU² only, tied unless allow_untied_output).
  std::string target = "llama.cpp";
  // Deprecated alias of target: "bitnet" = llama.cpp, "bitnet-b1.58" = bitnet.cpp ("" = unset).
  std::string arch;
  // GGUF BitLinear weight type: "f32", "f16", "tq2_0", "tq1_0" (ggml's ternary block types, rows
  // a multiple of 256). f16 = true is the old spelling of type "f16".
  std::string type = "f32";
  bool f16 = false;
  std::string embedding_type = "f32";  // GGUF token_embd: "f32" or "f16"
  int64_t context_length = 0;  // max_position_embeddings / context_length; 0 = training seq_len
  std::string name;            // general.name; empty = "bitnet-a4.8"
  // GGUF: write an untied model's lm_head as `output` although bitnet.cpp's bitnet-b1.58 graph
  // computes the logits with token_embd (only for runtimes patched to use `output`).
  bool allow_untied_output = false;
  bool fp16_embeddings = false;  // compact: embeddings / LM head as fp16
  // hf / hf-offline: copy the tokenizer files (tokenizer.json, tokenizer_config.json,
  // special_tokens_map.json, tokenizer.model, added_tokens.json) of this Hugging Face directory
  // instead of writing our own; "" = the model's hf_source (a model imported from, or trained
  // with --init-from, an HF directory), else the model's SentencePiece tokenizer.
  std::string tokenizer_from;
};

// The GGUF target after aliases: arch name, BitLinear / embedding tensor types. Throws
// autograd::Error for an unknown target, arch or type (naming the accepted values).
struct GgufPlan {
  std::string target, arch;
  gguf::TensorType weights = gguf::TensorType::F32, embedding = gguf::TensorType::F32;
  std::vector<std::string> notes;  // deprecations
};
GgufPlan gguf_plan(const ExportOptions& opt);

struct ExportResult {
  std::vector<std::string> files;     // what was written
  std::vector<std::string> warnings;  // non-fatal remarks (also printed by the CLI)
};

// Writes `out` (a directory for hf/hf-offline, a file for gguf). Throws autograd::Error with
// the reason when the target runtime cannot compute this model (see docs/EXPORT.md for the
// exact refusals) or on I/O failure.
ExportResult export_model(const TrainedModel& tm, const std::string& out, const ExportOptions& opt);

// The `bitnet export` command: loads MODEL (model file or run directory), exports it, writes the
// reference logits file when `reference` is non-empty, prints what it wrote. Returns 0.
int run_export(const std::string& model, const std::string& out, const ExportOptions& opt,
               const std::string& reference = {}, int64_t reference_len = 16);

// ---- pieces, exposed for tests -------------------------------------------------------------

// Ternary codes c ∈ {-1,0,1} of a row-major [out, in] matrix -> uint8 [out/4, in] (transformers'
// offline layout): byte [r, j] holds (c[i*R + r, j] + 1) << 2i for i = 0..3, R = out/4.
// out must be divisible by 4.
std::vector<uint8_t> pack_ternary(const int8_t* codes, int64_t out, int64_t in);
std::vector<int8_t> unpack_ternary(const uint8_t* packed, int64_t out, int64_t in);

// From the tensor table (nn/names.h): a q/k/v/o/gate/up/down_proj.weight; the GGUF name
// ("blk.0.attn_q.weight"; "" when no BitNetLM has that parameter).
bool is_bitlinear_weight(const std::string& hf_name);
std::string gguf_tensor_name(const std::string& hf_name);

// The fixed token sequence used for logit comparisons: BOS + the encoding of a fixed sentence
// when the model has a tokenizer, else an arithmetic sequence; cut/padded to n tokens.
std::vector<int32_t> reference_tokens(const TrainedModel& tm, int64_t n);
// Writes tokens ("input_ids" I32 [1, T]) and the model's logits for them as safetensors:
// "logits.w158a8" (ternary weights, INT8 absmax per token on every BitLinear input: what
// transformers' AutoBitLinear computes) and "logits.trained" (the mode the model was saved in),
// both F32 [T, V]; plus "tokenizer.text" (U8) / "tokenizer.ids" (I32) when there is a tokenizer.
void write_reference_logits(const TrainedModel& tm, const std::string& path,
                            std::span<const int32_t> tokens);

}  // namespace trainers::formats
