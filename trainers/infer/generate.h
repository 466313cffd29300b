// Text generation over the inference engine: samplers (greedy, temperature, top-k, top-p), the
// KV-cached decoding loop, streaming detokenization and the `bitnet generate` command.
#pragma once
#include <cstdint>
#include <functional>
#include <span>
#include <string>
#include <vector>

#include "autograd/random.h"
#include "data/tokenizer.h"
#include "nn/inference.h"
#include "trainers/formats/compact.h"

namespace trainers::infer {

struct SamplingOptions {
  double temperature = 0.8;  // 0 = greedy (argmax; ties go to the lowest id)
  int64_t top_k = 0;         // keep the k most likely tokens (0 = all)
  double top_p = 1.0;        // nucleus: smallest set of most likely tokens with mass >= top_p
  uint64_t seed = 0;
};

// Draws token ids from logits; deterministic for a given seed and sequence of calls.
class Sampler {
 public:
  explicit Sampler(const SamplingOptions& o);
  int32_t next(std::span<const float> logits);

 private:
  SamplingOptions o_;
  autograd::Rng rng_;
  std::vector<std::pair<double, int32_t>> cand_;
};

struct GenerateOptions {
  SamplingOptions sampling;
  int64_t max_tokens = 64;
  int32_t stop_token = -1;  // e.g. the tokenizer's EOS; not included in the result
};

// Feeds prompt[P] (P >= 1) through the engine, then samples up to max_tokens tokens one at a time
// with the KV cache; on_token(id) is called as each is produced. Returns the generated ids.
std::vector<int32_t> generate(const nn::InferenceEngine& eng, std::span<const int32_t> prompt,
                              const GenerateOptions& o,
                              const std::function<void(int32_t)>& on_token = {});

// Incremental detokenization: text that decode(prompt + generated) adds, emitted once stable
// (held back while it ends in an incomplete UTF-8 sequence).
class TextStream {
 public:
  TextStream(const data::Tokenizer& tok, std::vector<int32_t> prompt);
  std::string push(int32_t id);  // new text to print (may be empty)
  std::string finish();          // whatever is still held back

 private:
  const data::Tokenizer& tok_;
  std::vector<int32_t> ids_;
  std::string base_;
  size_t emitted_ = 0;
  std::string pending(bool final);
};

// The model's embedded tokenizer; else the file `override_path`; else a tokenizer.model next to
// the config's training data (data.train) or in prepare.out_dir. An explicit override_path wins.
// `source` (optional) receives where it came from. Throws when none is found.
data::Tokenizer resolve_tokenizer(const formats::InferenceModel& m,
                                  const std::string& override_path, std::string* source = nullptr);

// Engine options from a model and the command line's overrides (mode "" = the saved mode).
nn::InferenceOptions engine_options(const formats::InferenceModel& m, const std::string& mode,
                                    int kv_bits, int qkv_bits, bool keep_bos);

// "1,2,3" (or space-separated) -> ids; throws naming `what` ("--tokens") when it is not a list
// of integers.
std::vector<int32_t> parse_token_ids(const std::string& s, const char* what);

struct GenerateArgs {
  std::string model, prompt, tokenizer, mode;
  std::string tokens;  // prompt as token ids "1,2,3" instead of text: no tokenizer needed
  int64_t max_tokens = 64;
  SamplingOptions sampling;
  int kv_bits = 0, qkv_bits = 0;
  bool keep_bos = true;  // 3-bit KV: position 0 keeps 4-bit K/V
  bool add_bos = true;   // prepend the tokenizer's BOS (documents start with it in training)
  bool stop_at_eos = true;
  bool quiet = false;  // no header/stats on stderr
};
// `bitnet generate`: prints the prompt, then each token's text as it is produced (flushed); with
// `tokens`, the generated ids (one line, space-separated).
int run_generate(const GenerateArgs& a);

}  // namespace trainers::infer
