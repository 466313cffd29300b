// Perplexity, sparsity table, low-bit attention sweep, multiple-choice scoring, logit dumps,
// `bitnet eval`.
#include "trainers/infer/evaluate.h"

#include <nlohmann/json.hpp>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <sstream>

#include "autograd/error.h"
#include "autograd/safetensors.h"
#include "data/tokens.h"
#include "nn/model.h"
#include "trainers/config/config.h"
#include "trainers/infer/generate.h"

namespace trainers::infer {
namespace fs = std::filesystem;
using config::parse_config;
using formats::InferenceModel;
using formats::load_inference_model;

namespace {
// -log softmax(x)[t] for one row of V logits, as autograd::cross_entropy computes it.
double row_nll(const float* x, int64_t V, int32_t t) {
  float m = -std::numeric_limits<float>::infinity();
  for (int64_t j = 0; j < V; ++j) m = std::max(m, x[j]);
  double e = 0;
  for (int64_t j = 0; j < V; ++j) e += std::exp(double(x[j] - m));
  return double(m) + std::log(e) - double(x[t]);
}

bool is_shard(const std::string& path) {
  if (fs::is_directory(path)) return true;
  std::ifstream f(path, std::ios::binary);
  char b[8] = {};
  if (!f.read(b, 8)) return false;
  if (std::memcmp(b, "BNTOKSH\0", 8) == 0) return true;
  int32_t magic;
  std::memcpy(&magic, b, 4);
  return magic == 20240520;
}

double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}
}  // namespace

std::vector<int64_t> eval_windows(int64_t n_tokens, int64_t seq, int64_t max_tokens) {
  BN_CHECK(seq >= 1, "eval_windows", "seq ", seq, " must be >= 1");
  std::vector<int64_t> s;
  int64_t n = n_tokens > seq ? (n_tokens - 1) / seq : 0;
  if (max_tokens > 0) n = std::min(n, max_tokens / seq);
  for (int64_t w = 0; w < n; ++w) s.push_back(w * seq);
  return s;
}

PerplexityResult perplexity(const nn::InferenceEngine& eng, std::span<const int32_t> tokens,
                            int64_t seq, int64_t max_tokens, nn::SparsityProbe* probe) {
  const std::vector<int64_t> starts = eval_windows(int64_t(tokens.size()), seq, max_tokens);
  BN_CHECK(!starts.empty(), "perplexity", "need more than seq = ", seq, " tokens, have ",
           tokens.size());
  const int64_t V = eng.vocab();
  double sum = 0;
  for (int64_t s : starts) {
    const std::vector<float> lg = eng.logits(tokens.subspan(size_t(s), size_t(seq)), probe);
    std::vector<double> nll(static_cast<size_t>(seq));  // rows in parallel, summed in order
#pragma omp parallel for schedule(static)
    for (int64_t t = 0; t < seq; ++t)
      nll[size_t(t)] = row_nll(lg.data() + t * V, V, tokens[size_t(s + t + 1)]);
    for (double v : nll) sum += v;
  }
  PerplexityResult r;
  r.windows = int64_t(starts.size());
  r.tokens = r.windows * seq;
  r.loss = sum / double(r.tokens);
  r.ppl = std::exp(r.loss);
  return r;
}

std::vector<int32_t> load_eval_tokens(const std::vector<std::string>& paths,
                                      const data::Tokenizer* tok, std::string* description) {
  BN_CHECK(!paths.empty(), "eval", "no --data given");
  std::vector<int32_t> out;
  std::vector<std::string> shards;
  std::ostringstream desc;
  auto flush_shards = [&] {
    if (shards.empty()) return;
    const data::TokenDataset ds(shards);
    const size_t at = out.size();
    out.resize(at + size_t(ds.size()));
    ds.read(0, ds.size(), reinterpret_cast<uint32_t*>(out.data() + at));
    desc << (desc.tellp() > 0 ? ", " : "") << ds.size() << " tokens from " << shards.size()
         << " shard path(s)";
    shards.clear();
  };
  for (const std::string& p : paths) {
    BN_CHECK(fs::exists(p), "eval", "no data file '", p, "'");
    if (is_shard(p)) {
      shards.push_back(p);
      continue;
    }
    flush_shards();
    BN_CHECK(tok != nullptr, "eval", "'", p,
             "' is raw text and no tokenizer is available (--tokenizer FILE)");
    std::ifstream f(p, std::ios::binary);
    BN_CHECK(bool(f), "eval", "cannot read '", p, "'");
    const size_t before = out.size();
    bool doc_open = false;
    for (std::string line; std::getline(f, line);) {
      if (!line.empty() && line.back() == '\r') line.pop_back();
      if (line.find_first_not_of(" \t") == std::string::npos) {
        doc_open = false;
        continue;
      }
      if (!doc_open && tok->bos_id() >= 0) out.push_back(tok->bos_id());
      doc_open = true;
      for (int32_t id : tok->encode(line)) out.push_back(id);
    }
    desc << (desc.tellp() > 0 ? ", " : "") << out.size() - before << " tokens from text " << p;
  }
  flush_shards();
  if (description) *description = desc.str();
  return out;
}

// ---- multiple choice ---------------------------------------------------------------------------

std::vector<McItem> read_mc_jsonl(const std::string& path) {
  std::ifstream f(path);
  BN_CHECK(bool(f), "mc", "cannot read '", path, "'");
  std::vector<McItem> items;
  int64_t ln = 0;
  for (std::string line; std::getline(f, line);) {
    ++ln;
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    McItem it;
    try {
      const nlohmann::json j = nlohmann::json::parse(line);
      it.context = j.at("context").get<std::string>();
      it.choices = j.at("choices").get<std::vector<std::string>>();
      it.answer = j.at("answer").get<int64_t>();
    } catch (const std::exception& e) {
      autograd::fail("mc: ", path, ":", ln, ": ", e.what());
    }
    BN_CHECK(it.choices.size() >= 2, "mc", path, ":", ln, ": needs at least 2 choices");
    BN_CHECK(it.answer >= 0 && it.answer < int64_t(it.choices.size()), "mc", path, ":", ln,
             ": answer ", it.answer, " outside [0, ", it.choices.size(), ")");
    items.push_back(std::move(it));
  }
  BN_CHECK(!items.empty(), "mc", path, ": no items");
  return items;
}

McResult score_mc(const nn::InferenceEngine& eng, const std::vector<McItem>& items,
                  const TokenizeFn& tokenize, int32_t bos) {
  McResult r;
  const int64_t V = eng.vocab();
  for (const McItem& it : items) {
    std::vector<int32_t> ctx;
    if (bos >= 0) ctx.push_back(bos);
    for (int32_t id : tokenize(it.context)) ctx.push_back(id);
    const size_t nb = bos >= 0 ? 1 : 0;
    BN_CHECK(!ctx.empty(), "mc", "empty context and no BOS token");
    std::vector<McChoice> sc;
    for (const std::string& ch : it.choices) {
      std::vector<int32_t> full = tokenize(it.context + ch), cont;
      if (full.size() > ctx.size() - nb &&
          std::equal(ctx.begin() + std::ptrdiff_t(nb), ctx.end(), full.begin()))
        cont.assign(full.begin() + std::ptrdiff_t(ctx.size() - nb), full.end());
      else
        cont = tokenize(ch);
      BN_CHECK(!cont.empty(), "mc", "choice '", ch, "' has no tokens");
      std::vector<int32_t> seq = ctx;
      seq.insert(seq.end(), cont.begin(), cont.end());
      const std::vector<float> lg = eng.logits(seq);
      McChoice c;
      for (size_t i = 0; i < cont.size(); ++i) {
        const size_t row = ctx.size() - 1 + i;  // the logits that predict cont[i]
        c.logprob -= row_nll(lg.data() + int64_t(row) * V, V, cont[i]);
      }
      c.tokens = int64_t(cont.size());
      c.bytes = int64_t(ch.size());
      sc.push_back(c);
    }
    int64_t best = 0, best_n = 0;
    for (size_t k = 1; k < sc.size(); ++k) {
      if (sc[k].logprob > sc[size_t(best)].logprob) best = int64_t(k);
      const double nk = sc[k].logprob / double(std::max<int64_t>(1, sc[k].bytes));
      const double nbst =
          sc[size_t(best_n)].logprob / double(std::max<int64_t>(1, sc[size_t(best_n)].bytes));
      if (nk > nbst) best_n = int64_t(k);
    }
    r.correct += best == it.answer;
    r.correct_norm += best_n == it.answer;
    r.pred.push_back(best);
    r.pred_norm.push_back(best_n);
    r.scores.push_back(std::move(sc));
    ++r.items;
  }
  r.acc = r.items ? double(r.correct) / double(r.items) : 0.0;
  r.acc_norm = r.items ? double(r.correct_norm) / double(r.items) : 0.0;
  return r;
}

// ---- logit dump --------------------------------------------------------------------------------

void dump_logits(const std::string& out, const nn::InferenceEngine& eng,
                 const std::vector<int32_t>& tokens, nn::BitNetLM* model,
                 const std::string& model_path) {
  BN_CHECK(!tokens.empty(), "dump_logits", "no tokens");
  const int64_t T = int64_t(tokens.size()), V = eng.vocab();
  std::vector<autograd::NamedBlob> blobs;
  auto f32 = [&](const std::string& name, const std::vector<float>& v) {
    autograd::NamedBlob b{name, "F32", {T, V}, {}};
    b.bytes.resize(v.size() * 4);
    std::memcpy(b.bytes.data(), v.data(), b.bytes.size());
    blobs.push_back(std::move(b));
  };
  f32("logits", eng.logits(tokens));
  autograd::NamedBlob tb{"tokens", "I32", {T}, std::vector<uint8_t>(size_t(T) * 4)};
  std::memcpy(tb.bytes.data(), tokens.data(), tb.bytes.size());
  blobs.push_back(std::move(tb));
  if (model) {
    nn::BitNetLM& m = *model;
    const nn::ActMode saved = m.mode();
    m.set_mode(eng.options().mode);
    const autograd::Variable lf = m.logits(tokens, 1, T);
    m.set_mode(saved);
    f32("logits_float", lf.value().to_vector());
  }
  autograd::write_safetensors(out, blobs,
                              {{"format", "pt"},
                               {"mode", nn::to_string(eng.options().mode)},
                               {"attention", eng.options().attn.str()},
                               {"model", model_path}});
}

bool paper_sparsity(nn::ActMode mode, double out[6]) {
  static constexpr double kA48[6] = {12.1, 50.0, 71.4, 12.0, 84.2, 44.5};
  static constexpr double kB158[6] = {1.7, 11.2, 1.4, 1.4, 24.2, 7.3};
  const double* src = mode == nn::ActMode::A48      ? kA48
                      : mode == nn::ActMode::W158A8 ? kB158
                                                    : nullptr;
  if (!src) return false;
  std::copy(src, src + 6, out);
  return true;
}

// ---- command -----------------------------------------------------------------------------------

int run_eval(const EvalArgs& a) {
  InferenceModel m = load_inference_model(a.model);
  const nn::ModelConfig& mc = m.weights->config;
  const nn::InferenceEngine eng(m.weights, engine_options(m, a.mode, 0, 0, a.keep_bos));
  const nn::ActMode mode = eng.options().mode;
  std::printf(
      "model %s (%s, step %lld): d %lld, layers %lld, heads %lld, ffn %lld, vocab %lld; mode %s\n",
      m.path.c_str(), m.compact ? "compact" : "training file", (long long)m.step,
      (long long)mc.d_model, (long long)mc.n_layers, (long long)mc.n_heads, (long long)mc.ffn_dim,
      (long long)mc.vocab_size, nn::to_string(mode).c_str());
  // The tokenizer is optional for shard data.
  std::unique_ptr<data::Tokenizer> tok;
  std::string tok_src, tok_err;
  try {
    tok = std::make_unique<data::Tokenizer>(resolve_tokenizer(m, a.tokenizer, &tok_src));
  } catch (const std::exception& e) {
    tok_err = e.what();
  }
  auto need_tok = [&](const char* what) -> const data::Tokenizer& {
    BN_CHECK(tok != nullptr, "eval", what, " needs a tokenizer: ", tok_err);
    return *tok;
  };

  if (!a.data.empty()) {
    std::string desc;
    bool any_text = false;
    for (const auto& p : a.data) any_text |= !is_shard(p);
    if (any_text) need_tok("raw text --data");
    const std::vector<int32_t> tokens = load_eval_tokens(a.data, tok.get(), &desc);
    for (size_t i = 0; i < tokens.size(); ++i)
      BN_CHECK(tokens[i] >= 0 && tokens[i] < mc.vocab_size, "eval", "token ", tokens[i],
               " at position ", i, " is outside the model's vocabulary ", mc.vocab_size);
    int64_t seq = a.seq;
    if (seq <= 0) {
      seq = 256;
      try {
        seq = parse_config(m.config_yaml, m.path).data.seq_len;
      } catch (const std::exception&) {
      }
    }
    std::printf(
        "data: %s; windows of %lld tokens%s\n", desc.c_str(), (long long)seq,
        a.max_tokens > 0 ? (", at most " + std::to_string(a.max_tokens) + " tokens").c_str() : "");
    nn::SparsityProbe probe;
    auto t0 = std::chrono::steady_clock::now();
    const PerplexityResult base = perplexity(eng, tokens, seq, a.max_tokens, &probe);
    const double sec = seconds_since(t0);
    std::printf(
        "\nperplexity (integer inference path, mode %s): %.4f  (loss %.5f nats over %lld tokens, "
        "%lld windows; "
        "%.1f s, %.0f tokens/s)\n",
        nn::to_string(mode).c_str(), base.ppl, base.loss, (long long)base.tokens,
        (long long)base.windows, sec, double(base.tokens) / sec);

    // Sparsity table (SPEC §3) next to the paper's 7B figures.
    const nn::SparsityReport sr = nn::sparsity_report(probe, mc);
    double paper[6];
    const bool has_paper = paper_sparsity(mode, paper);
    const char* pname = mode == nn::ActMode::A48 ? "paper 7B a4.8" : "paper 7B b1.58";
    std::printf("\nsparsity (%% exact zeros in each projection's quantized input, SPEC §3)\n");
    std::printf("  %-9s %8s%s\n", "component", "ours",
                has_paper ? (std::string("  ") + pname).c_str() : "");
    const char* names[6] = {"QKV", "Out", "Up", "Gate", "Down", "overall"};
    const double ours[6] = {sr.qkv, sr.out, sr.up, sr.gate, sr.down, sr.overall};
    for (int i = 0; i < 6; ++i) {
      if (has_paper)
        std::printf("  %-9s %8.1f  %13.1f\n", names[i], 100 * ours[i], paper[i]);
      else
        std::printf("  %-9s %8.1f\n", names[i], 100 * ours[i]);
    }
    const double ne =
        double(mc.n_layers) * (double(mc.d_model) * double(mc.d_model) * 2 +
                               2.0 * double(mc.kv_heads() * mc.head_dim()) * double(mc.d_model) +
                               3.0 * double(mc.d_model) * double(mc.ffn_dim));
    std::printf("  active projection parameters: %.3gM of %.3gM%s\n", sr.active_params / 1e6,
                ne / 1e6, has_paper ? " (paper 7B: 3.4B of 6.5B for a4.8)" : "");

    // Low-bit attention (SPEC §4).
    if (!a.no_attn) {
      std::vector<nn::AttnQuant> cfgs;
      if (a.kv_bits || a.qkv_bits)
        cfgs.push_back(nn::AttnQuant::make(a.kv_bits, a.qkv_bits, a.keep_bos));
      else
        cfgs = {nn::AttnQuant::make(4, 0, a.keep_bos), nn::AttnQuant::make(0, 4, a.keep_bos),
                nn::AttnQuant::make(3, 0, a.keep_bos), nn::AttnQuant::make(3, 0, a.keep_bos, 4)};
      std::printf("\nlow-bit attention (post-RoPE unsigned absmax per token per head, SPEC §4)\n");
      std::printf("  %-22s %10s %10s %9s\n", "configuration", "ppl", "delta", "delta %");
      std::printf("  %-22s %10.4f %10s %9s\n", "baseline (fp32 attn)", base.ppl, "-", "-");
      for (const nn::AttnQuant& q : cfgs) {
        nn::InferenceOptions o = eng.options();
        o.attn = q;
        const nn::InferenceEngine e2(m.weights, o);
        const PerplexityResult r = perplexity(e2, tokens, seq, a.max_tokens);
        std::printf("  %-22s %10.4f %+10.4f %+8.2f%%\n", q.str().c_str(), r.ppl, r.ppl - base.ppl,
                    100.0 * (r.ppl / base.ppl - 1.0));
        std::fflush(stdout);
      }
    }
  }

  if (!a.mc.empty()) {
    const data::Tokenizer& t = need_tok("--mc");
    const std::vector<McItem> items = read_mc_jsonl(a.mc);
    const McResult r = score_mc(
        eng, items, [&](const std::string& s) { return t.encode(s); }, t.bos_id());
    std::printf(
        "\nmultiple choice %s: %lld items, acc %.4f (%lld), acc_norm %.4f (%lld; log-likelihood / "
        "bytes)\n",
        a.mc.c_str(), (long long)r.items, r.acc, (long long)r.correct, r.acc_norm,
        (long long)r.correct_norm);
  }

  if (!a.dump_logits.empty()) {
    const std::vector<int32_t> ids = parse_token_ids(a.tokens, "eval --tokens");
    BN_CHECK(!ids.empty(), "eval", "--dump-logits needs --tokens \"1,2,3\"");
    dump_logits(a.dump_logits, eng, ids, m.model.get(), m.path);
    std::printf("\nlogits of %zu tokens written to %s%s\n", ids.size(), a.dump_logits.c_str(),
                m.model ? " (logits: integer path; logits_float: BitNetLM::logits)" : "");
  }
  if (a.data.empty() && a.mc.empty() && a.dump_logits.empty())
    std::printf("nothing to do: give --data, --mc or --dump-logits\n");
  return 0;
}

}  // namespace trainers::infer
