// Evaluation over the inference engine: perplexity on token shards or raw text, the docs/SPEC.md §3
// sparsity table, low-bit attention deltas, multiple-choice log-likelihood scoring, logit dumps,
// and the `bitnet eval` command.
#pragma once
#include <cstdint>
#include <functional>
#include <span>
#include <string>
#include <vector>

#include "data/tokenizer.h"
#include "nn/inference.h"
#include "trainers/formats/compact.h"

namespace trainers::infer {

// Start offsets of the evaluation windows over n tokens: window w feeds tokens[s, s+seq) and
// predicts tokens[s+1, s+seq], s = w·seq (the predicted tokens do not overlap); as many full
// windows as fit, at most max_tokens / seq of them when max_tokens > 0.
std::vector<int64_t> eval_windows(int64_t n_tokens, int64_t seq, int64_t max_tokens);

struct PerplexityResult {
  double loss = 0;  // mean next-token cross-entropy (nats) over every predicted token
  double ppl = 0;   // exp(loss)
  int64_t tokens = 0, windows = 0;
};
// Perplexity of tokens over eval_windows(...); probe (optional) collects SPEC §3 zero counts.
PerplexityResult perplexity(const nn::InferenceEngine& eng, std::span<const int32_t> tokens,
                            int64_t seq, int64_t max_tokens, nn::SparsityProbe* probe = nullptr);

// Evaluation tokens from shard files / directories (data::TokenDataset), or from raw text files
// (anything without a shard magic) tokenized with tok: BOS, then each non-empty line's pieces,
// a blank line starting a new document (BOS again), as `bitnet prepare` lays documents out.
std::vector<int32_t> load_eval_tokens(const std::vector<std::string>& paths,
                                      const data::Tokenizer* tok,
                                      std::string* description = nullptr);

// ---- multiple choice --------------------------------------------------------------------------
struct McItem {
  std::string context;
  std::vector<std::string> choices;
  int64_t answer = 0;
};
// JSONL lines {"context": str, "choices": [str, ...], "answer": int}; blank lines skipped; errors
// name the file and line.
std::vector<McItem> read_mc_jsonl(const std::string& path);

struct McChoice {
  double logprob = 0;  // sum of log p(choice tokens | context, preceding choice tokens)
  int64_t tokens = 0;  // choice tokens scored
  int64_t bytes = 0;   // UTF-8 length of the choice string (acc_norm divides by it)
};
struct McResult {
  int64_t items = 0, correct = 0, correct_norm = 0;
  double acc = 0, acc_norm = 0;               // fractions
  std::vector<std::vector<McChoice>> scores;  // [item][choice]
  std::vector<int64_t> pred, pred_norm;       // chosen index per item
};
using TokenizeFn = std::function<std::vector<int32_t>(const std::string&)>;
// Zero-shot scoring as in common harnesses: each choice's continuation tokens are those of
// tokenize(context + choice) past the tokens of tokenize(context) when that is a prefix, else
// tokenize(choice); the sequence [bos?] + context + continuation is scored in one forward.
// acc: argmax of logprob; acc_norm: argmax of logprob / bytes (ties: lowest index).
McResult score_mc(const nn::InferenceEngine& eng, const std::vector<McItem>& items,
                  const TokenizeFn& tokenize, int32_t bos = -1);

// Writes logits [T, V] of a fixed token sequence as safetensors: "logits" (the engine, F32),
// "tokens" (I32 [T]) and, when the float model is given, "logits_float" (BitNetLM::logits in the
// same mode); metadata: mode, attention, model path.
void dump_logits(const std::string& out, const nn::InferenceEngine& eng,
                 const std::vector<int32_t>& tokens, nn::BitNetLM* model,
                 const std::string& model_path);

// Paper Table 2 (7B) figures for a mode, in percent: qkv, out, up, gate, down, overall; false if
// the paper has none for the mode.
bool paper_sparsity(nn::ActMode mode, double out[6]);

struct EvalArgs {
  std::string model, tokenizer, mode;
  std::vector<std::string> data;
  int64_t seq = 0;                // 0 = the model's training seq_len
  int64_t max_tokens = 0;         // 0 = every full window
  int kv_bits = 0, qkv_bits = 0;  // one low-bit attention configuration; none = the paper's sweep
  bool keep_bos = true;
  bool no_attn = false;             // skip the low-bit attention configurations
  std::string mc;                   // JSONL multiple-choice file
  std::string dump_logits, tokens;  // output .safetensors and "1,2,3"
};
// `bitnet eval`. Returns the exit status.
int run_eval(const EvalArgs& a);

}  // namespace trainers::infer
