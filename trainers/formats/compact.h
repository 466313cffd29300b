// Compact inference checkpoints: ternary weights packed 2 bits per value, and the loader that
// gives generate/eval a model from either a compact file or a training model file.
//
// Format (little-endian), version 1:
//   offset 0   char[8]  magic "BNCOMPCT"
//   offset 8   u32      version (1)
//   offset 12  u32      flags (bit 0: embeddings / LM head stored as F16)
//   offset 16  u64      payload size P in bytes
//   offset 24  u32      CRC-32 (IEEE, as zlib) of the payload
//   offset 28  u32      CRC-32 of bytes 0..27 (the header above)
//   offset 32  payload: u32 record count, then records
//     u16 name length, name bytes, u8 kind, u8 rank, u64 dims[rank], u64 data bytes, data
//     kind 0 BYTES (UTF-8 text or opaque bytes), 1 F32, 2 F16,
//     kind 3 TERNARY2: f32 scale (the value of code +1), then ceil(n/4) bytes holding the codes
//       of the row-major [out, in] matrix in order, 4 per byte at bits 0,2,4,6 as c + 1 ∈ {0,1,2}.
// Records: "meta.config" (the training config YAML), "meta.mode", "meta.step",
// "tokenizer.model" (optional), then every parameter under its Hugging Face name: BitLinear weights
// as TERNARY2, norms F32, embeddings / LM head F32 (or F16 with the flag).
#pragma once
#include <cstdint>
#include <memory>
#include <string>

#include "autograd/hash.h"
#include "nn/inference.h"
#include "trainers/formats/trained_model.h"

namespace trainers::formats {

struct CompactOptions {
  bool fp16_embeddings = false;  // store embed_tokens / lm_head as F16 (halves their size)
};

// Byte counts of a written compact file.
struct CompactInfo {
  int64_t file_bytes = 0;
  int64_t ternary_params = 0;  // values in all BitLinear weights
  int64_t ternary_bytes =
      0;  // their packed codes + scales as stored (payload bytes of TERNARY2 records)
  double ternary_ratio() const {
    return ternary_bytes ? 4.0 * double(ternary_params) / double(ternary_bytes) : 0.0;
  }
};

// Writes tm's model (its saved mode, config YAML, tokenizer) as a compact file (via path + ".tmp",
// then renamed). Throws if the model's mode is `fp` (a compact file holds ternary weights only).
void save_compact(const std::string& path, const TrainedModel& tm);
CompactInfo save_compact(const std::string& path, const TrainedModel& tm,
                         const CompactOptions& opt);
// The same from already packed weights.
CompactInfo save_compact(const std::string& path, const nn::InferenceWeights& w, nn::ActMode mode,
                         const std::string& config_yaml, const std::string& tokenizer_proto,
                         int64_t step, const CompactOptions& opt = {});

// What generate and eval need: packed weights, the saved mode, config and tokenizer bytes, and
// (for a training model file only) the float model itself.
struct InferenceModel {
  std::shared_ptr<nn::InferenceWeights> weights;
  nn::ActMode mode = nn::ActMode::A48;
  std::string config_yaml, tokenizer_proto;
  int64_t step = 0;
  std::string path;                     // the file it came from
  bool compact = false;                 // loaded from a compact file
  std::unique_ptr<nn::BitNetLM> model;  // training file only (null for compact)
};

// Reads a compact file; errors name the path and the problem (bad magic, unsupported version,
// truncated, checksum mismatch, missing or mis-shaped record).
InferenceModel load_compact(const std::string& path);
// True when the file starts with the compact magic.
bool is_compact_file(const std::string& path);
// A compact file, or a training model file / run directory (load_trained_model; its weights are
// packed with the fp32 latents kept, so mode fp works too).
InferenceModel load_inference_model(const std::string& path);

using autograd::crc32;  // the header and payload checksums (autograd/hash.h)

}  // namespace trainers::formats
