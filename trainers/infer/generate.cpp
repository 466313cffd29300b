// Sampling, KV-cached generation, streaming detokenization and the `bitnet generate` command.
#include "trainers/infer/generate.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <limits>
#include <sstream>

#include "autograd/error.h"
#include "trainers/config/config.h"

namespace trainers::infer {
namespace fs = std::filesystem;
using config::Config;
using config::parse_config;
using formats::InferenceModel;
using formats::load_inference_model;

// ---- sampling ----------------------------------------------------------------------------------

Sampler::Sampler(const SamplingOptions& o) : o_(o), rng_(o.seed) {
  BN_CHECK(o.temperature >= 0 && std::isfinite(o.temperature), "Sampler", "temperature ",
           o.temperature, " must be >= 0");
  BN_CHECK(o.top_k >= 0, "Sampler", "top_k ", o.top_k, " must be >= 0");
  BN_CHECK(o.top_p > 0 && o.top_p <= 1, "Sampler", "top_p ", o.top_p, " must be in (0, 1]");
}

int32_t Sampler::next(std::span<const float> logits) {
  const int64_t V = int64_t(logits.size());
  BN_CHECK(V >= 1, "Sampler::next", "empty logits");
  if (o_.temperature == 0.0) {  // greedy: first maximum
    int64_t best = 0;
    for (int64_t i = 1; i < V; ++i)
      if (logits[size_t(i)] > logits[size_t(best)]) best = i;
    return int32_t(best);
  }
  cand_.resize(size_t(V));
  for (int64_t i = 0; i < V; ++i)
    cand_[size_t(i)] = {double(logits[size_t(i)]) / o_.temperature, int32_t(i)};
  // Order: higher logit first, then lower id (a strict total order, so results are reproducible).
  auto better = [](const auto& a, const auto& b) {
    return a.first > b.first || (a.first == b.first && a.second < b.second);
  };
  size_t n = cand_.size();
  if (o_.top_k > 0 && o_.top_k < V) {
    std::nth_element(cand_.begin(), cand_.begin() + (o_.top_k - 1), cand_.end(), better);
    n = size_t(o_.top_k);
  }
  if (o_.top_p < 1.0) std::sort(cand_.begin(), cand_.begin() + std::ptrdiff_t(n), better);
  double mx = -std::numeric_limits<double>::infinity();
  for (size_t i = 0; i < n; ++i) mx = std::max(mx, cand_[i].first);
  double total = 0;
  for (size_t i = 0; i < n; ++i) total += (cand_[i].first = std::exp(cand_[i].first - mx));
  if (o_.top_p < 1.0) {  // smallest prefix (in probability order) with mass >= top_p
    double cum = 0;
    size_t keep = 0;
    while (keep < n) {
      cum += cand_[keep++].first;
      if (cum >= o_.top_p * total) break;
    }
    n = keep;
    total = cum;
  }
  const double u = rng_.uniform() * total;
  double cum = 0;
  for (size_t i = 0; i < n; ++i) {
    cum += cand_[i].first;
    if (u < cum) return cand_[i].second;
  }
  return cand_[n - 1].second;
}

// ---- generation --------------------------------------------------------------------------------

std::vector<int32_t> generate(const nn::InferenceEngine& eng, std::span<const int32_t> prompt,
                              const GenerateOptions& o,
                              const std::function<void(int32_t)>& on_token) {
  BN_CHECK(!prompt.empty(), "generate", "empty prompt (give at least one token, e.g. BOS)");
  BN_CHECK(o.max_tokens >= 0, "generate", "max_tokens ", o.max_tokens, " must be >= 0");
  Sampler sampler(o.sampling);
  nn::KVCache cache = eng.new_cache();
  std::vector<int32_t> out;
  if (o.max_tokens == 0) return out;
  std::vector<float> logits = eng.forward(prompt, cache, /*last_only=*/true);
  for (int64_t i = 0; i < o.max_tokens; ++i) {
    const int32_t id = sampler.next(logits);
    if (id == o.stop_token) break;
    out.push_back(id);
    if (on_token) on_token(id);
    if (i + 1 == o.max_tokens) break;
    logits = eng.forward(std::span<const int32_t>(&out.back(), 1), cache, true);
  }
  return out;
}

// ---- streaming text ----------------------------------------------------------------------------

TextStream::TextStream(const data::Tokenizer& tok, std::vector<int32_t> prompt)
    : tok_(tok), ids_(std::move(prompt)) {
  base_ = tok_.decode(ids_);
}

std::string TextStream::pending(bool final) {
  const std::string text = tok_.decode(ids_);
  if (text.size() < base_.size() + emitted_ || text.compare(0, base_.size(), base_) != 0) return {};
  std::string add = text.substr(base_.size() + emitted_);
  // Hold back a trailing replacement character (an incomplete byte-fallback UTF-8 sequence).
  static const std::string kRepl = "\xEF\xBF\xBD";
  if (!final)
    while (add.size() >= 3 && add.compare(add.size() - 3, 3, kRepl) == 0)
      add.resize(add.size() - 3);
  emitted_ += add.size();
  return add;
}

std::string TextStream::push(int32_t id) {
  ids_.push_back(id);
  return pending(false);
}
std::string TextStream::finish() { return pending(true); }

// ---- tokenizer / options -----------------------------------------------------------------------

data::Tokenizer resolve_tokenizer(const InferenceModel& m, const std::string& override_path,
                                  std::string* source) {
  auto set = [&](const std::string& s) {
    if (source) *source = s;
  };
  if (!override_path.empty()) {
    BN_CHECK(fs::exists(override_path), "tokenizer", "no tokenizer file '", override_path, "'");
    set(override_path);
    return data::Tokenizer::load(override_path);
  }
  if (!m.tokenizer_proto.empty()) {
    set("embedded in " + m.path);
    return data::Tokenizer::from_serialized(m.tokenizer_proto);
  }
  // Look beside the training data named in the embedded config, from the current directory and
  // from the directories above the model file.
  std::vector<fs::path> dirs;
  try {
    const Config c = parse_config(m.config_yaml, m.path + " (embedded config)");
    for (const auto& t : c.data.train) {
      dirs.push_back(fs::is_directory(t) ? fs::path(t) : fs::path(t).parent_path());
      // a split directory of `bitnet prepare` (out/train/): the tokenizer is in out/
      if (fs::is_directory(t)) dirs.push_back(fs::path(t).parent_path());
    }
    if (!c.prepare.out_dir.empty()) dirs.push_back(c.prepare.out_dir);
  } catch (const std::exception&) {
  }
  std::vector<fs::path> roots{fs::path(".")};
  for (fs::path p = fs::absolute(m.path).parent_path(); !p.empty() && roots.size() < 5;
       p = p.parent_path()) {
    roots.push_back(p);
    if (p == p.parent_path()) break;
  }
  for (const auto& d : dirs)
    for (const auto& r : roots) {
      const fs::path f = d.is_absolute() ? d / "tokenizer.model" : r / d / "tokenizer.model";
      if (fs::exists(f)) {
        set(f.lexically_normal().string() +
            " (found beside the training data; the model has no embedded tokenizer)");
        return data::Tokenizer::load(f.string());
      }
    }
  autograd::fail("tokenizer: ", m.path,
                 " has no embedded tokenizer and none was found beside its training data; "
                 "give one with --tokenizer FILE");
}

nn::InferenceOptions engine_options(const InferenceModel& m, const std::string& mode, int kv_bits,
                                    int qkv_bits, bool keep_bos) {
  nn::InferenceOptions o;
  o.mode = mode.empty() ? m.mode : nn::parse_mode(mode);
  o.attn = nn::AttnQuant::make(kv_bits, qkv_bits, keep_bos);
  return o;
}

// ---- command -----------------------------------------------------------------------------------

std::vector<int32_t> parse_token_ids(const std::string& text, const char* what) {
  std::vector<int32_t> ids;
  std::string s = text;
  for (char& ch : s)
    if (ch == ',') ch = ' ';
  std::istringstream is(s);
  for (long long v; is >> v;) ids.push_back(int32_t(v));
  BN_CHECK(is.eof(), what, "'", text, "' is not a comma-separated list of integers");
  return ids;
}

namespace {

// generate --tokens: ids in, ids out; the tokenizer only for the EOS id, when there is one.
int generate_ids(const GenerateArgs& a, const InferenceModel& m) {
  const std::vector<int32_t> prompt = parse_token_ids(a.tokens, "generate --tokens");
  BN_CHECK(!prompt.empty(), "generate", "--tokens is empty");
  for (int32_t id : prompt)
    BN_CHECK(id >= 0 && id < m.weights->config.vocab_size, "generate", "--tokens: id ", id,
             " is outside the model's vocabulary ", m.weights->config.vocab_size);
  const nn::InferenceEngine eng(m.weights,
                                engine_options(m, a.mode, a.kv_bits, a.qkv_bits, a.keep_bos));
  GenerateOptions go;
  go.sampling = a.sampling;
  go.max_tokens = a.max_tokens;
  if (a.stop_at_eos) try {
      go.stop_token = resolve_tokenizer(m, a.tokenizer).eos_id();
    } catch (const std::exception&) {  // no tokenizer: no stop token
    }
  if (!a.quiet)
    std::fprintf(stderr, "model %s (step %lld), mode %s; prompt %zu token ids\n", m.path.c_str(),
                 (long long)m.step, nn::to_string(eng.options().mode).c_str(), prompt.size());
  const std::vector<int32_t> out = generate(eng, prompt, go);
  for (size_t i = 0; i < out.size(); ++i) std::printf("%s%d", i ? " " : "", out[i]);
  std::printf("\n");
  return 0;
}

}  // namespace

int run_generate(const GenerateArgs& a) {
  InferenceModel m = load_inference_model(a.model);
  BN_CHECK(a.tokens.empty() || a.prompt.empty(), "generate", "give --prompt or --tokens, not both");
  if (!a.tokens.empty()) return generate_ids(a, m);
  BN_CHECK(!a.prompt.empty(), "generate", "give --prompt TEXT (needs a tokenizer) or --tokens IDS");
  std::string tok_src;
  const data::Tokenizer tok = resolve_tokenizer(m, a.tokenizer, &tok_src);
  BN_CHECK(tok.vocab_size() <= m.weights->config.vocab_size, "generate", "tokenizer has ",
           tok.vocab_size(), " pieces but the model's vocabulary is ",
           m.weights->config.vocab_size);
  const nn::InferenceEngine eng(m.weights,
                                engine_options(m, a.mode, a.kv_bits, a.qkv_bits, a.keep_bos));
  std::vector<int32_t> prompt;
  if (a.add_bos && tok.bos_id() >= 0) prompt.push_back(tok.bos_id());
  for (int32_t id : tok.encode(a.prompt)) prompt.push_back(id);
  BN_CHECK(!prompt.empty(), "generate", "empty prompt and no BOS token");
  if (!a.quiet)
    std::fprintf(
        stderr,
        "model %s (%s, step %lld), mode %s, attention %s; tokenizer %s; prompt %zu tokens\n",
        m.path.c_str(), m.compact ? "compact" : "training file", (long long)m.step,
        nn::to_string(eng.options().mode).c_str(), eng.options().attn.str().c_str(),
        tok_src.c_str(), prompt.size());
  GenerateOptions go;
  go.sampling = a.sampling;
  go.max_tokens = a.max_tokens;
  go.stop_token = a.stop_at_eos ? tok.eos_id() : -1;
  std::fputs(a.prompt.c_str(), stdout);
  std::fflush(stdout);
  TextStream ts(tok, prompt);
  const auto t0 = std::chrono::steady_clock::now();
  const std::vector<int32_t> out = generate(eng, prompt, go, [&](int32_t id) {
    const std::string s = ts.push(id);
    if (!s.empty()) {
      std::fputs(s.c_str(), stdout);
      std::fflush(stdout);
    }
  });
  std::fputs((ts.finish() + "\n").c_str(), stdout);
  std::fflush(stdout);
  const double sec = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  if (!a.quiet)
    std::fprintf(stderr, "%zu tokens in %.2f s (%.1f tokens/s, prompt included)\n", out.size(), sec,
                 sec > 0 ? double(out.size()) / sec : 0.0);
  return 0;
}

}  // namespace trainers::infer
