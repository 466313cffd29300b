// The rows of the config table (fields.h): every key with its member, check, resume rule and doc.
#include "trainers/config/fields.h"

#include <charconv>
#include <stdexcept>
#include <type_traits>

#include "autograd/dtype.h"
#include "autograd/error.h"

namespace trainers::config {
namespace {

using Check = std::function<void(const Reader&, const YAML::Node& section, const Config&)>;
// The docs' default column shows the values of a default Config.
const Config& defaults() {
  static const Config c;
  return c;
}

// Shortest round-trip text of a value, for mismatch messages (floats as their double value).
template <class T>
std::string show(const T& v) {
  if constexpr (std::is_same_v<T, bool>) {
    return v ? "true" : "false";
  } else if constexpr (std::is_floating_point_v<T>) {
    char b[32];
    auto res = std::to_chars(b, b + sizeof b, double(v));
    return std::string(b, res.ptr);
  } else if constexpr (std::is_integral_v<T>) {
    return std::to_string(v);
  } else {
    return v;
  }
}

// A value as the docs print it: shortest text of its own type, "1e-5" rather than "1e-05", "–" for
// none.
template <class T>
std::string doc_text(const T& v) {
  if constexpr (std::is_floating_point_v<T>) {
    char b[32];
    std::string s(b, std::to_chars(b, b + sizeof b, v).ptr);
    for (const char* e : {"e-0", "e+0"})
      if (auto p = s.find(e); p != std::string::npos) s.erase(p + 2, 1);
    return s;
  } else if constexpr (std::is_same_v<T, std::vector<std::string>>) {
    std::string s;
    for (const std::string& x : v) s += (s.empty() ? "" : ", ") + x;
    return s.empty() ? "–" : s;
  } else if constexpr (std::is_same_v<T, std::string>) {
    return v.empty() ? "–" : v;
  } else {
    return show(v);
  }
}

// A row without behaviour yet (read, check, compare filled in by the builders below).
Field row(std::string key, std::string doc, std::string default_doc, Resume resume) {
  Field f;
  f.key = std::move(key), f.doc = std::move(doc), f.default_doc = std::move(default_doc),
  f.resume = resume;
  return f;
}

// "key: checkpoint X, config Y" when get(saved) != get(now).
template <class Get>
auto compare_by(const std::string& key, Get get) {
  return [key, get](const Config& a, const Config& b, std::vector<std::string>& out) {
    if (!(get(a) == get(b)))
      out.push_back(key + ": checkpoint " + show(get(a)) + ", config " + show(get(b)));
  };
}

// A scalar key (integer, number, boolean, string) or a list of paths at member `at` of Config;
// `valid(v)` returns nullptr or what is wrong with v.
template <class At, class Valid = std::nullptr_t>
Field value(std::string key, At at, Resume resume, std::string doc, Valid valid = nullptr) {
  using T = std::remove_cvref_t<decltype(at(std::declval<Config&>()))>;
  Field f = row(key, std::move(doc), doc_text(at(defaults())), resume);
  f.read = [at, sec = f.section(), name = f.name()](const Reader& r, const YAML::Node& s,
                                                    Config& c) {
    if constexpr (std::is_same_v<T, std::vector<std::string>>)
      r.get_list(s, sec, name, at(c));
    else
      r.get(s, sec, name, at(c));
  };
  if constexpr (!std::is_null_pointer_v<Valid>)
    f.check = [at, valid, key](const Reader& r, const YAML::Node&, const Config& c) {
      if (const char* why = valid(at(c))) r.fail(key, why);
    };
  if constexpr (!std::is_same_v<T, std::vector<std::string>>)
    if (resume == Resume::Match) f.compare = compare_by(key, at);
  return f;
}

// A key naming one of an enum's values: parse(text) throws what is wrong, name(v) is the text.
template <class At, class Parse, class Name>
Field choice(std::string key, At at, Parse parse, Name name, Resume resume, std::string doc) {
  Field f = row(key, std::move(doc), name(at(defaults())), resume);
  f.read = [at, parse, name, key, sec = f.section(), n = f.name()](const Reader& r,
                                                                   const YAML::Node& s, Config& c) {
    std::string text = name(at(c));
    r.get(s, sec, n, text);
    try {
      at(c) = parse(text);
    } catch (const std::exception& e) {
      r.fail(key, e.what());
    }
  };
  if (resume == Resume::Match)
    f.compare = compare_by(key, [at, name](const Config& c) { return name(at(c)); });
  return f;
}

// Adds a check that involves other keys, after the row's own (reported under this row's key).
Field also(Field f, Check more) {
  f.check = [own = f.check, more](const Reader& r, const YAML::Node& s, const Config& c) {
    if (own) own(r, s, c);
    more(r, s, c);
  };
  return f;
}

// ---- checks: nullptr when the value is fine, else what is wrong ------------------------------
constexpr auto at_least_0 = [](auto v) -> const char* { return v >= 0 ? nullptr : "must be >= 0"; };
constexpr auto at_least_1 = [](auto v) -> const char* { return v >= 1 ? nullptr : "must be >= 1"; };
constexpr auto positive = [](auto v) -> const char* { return v > 0 ? nullptr : "must be > 0"; };
constexpr auto unit_open = [](double v) -> const char* {
  return v >= 0 && v < 1 ? nullptr : "must be in [0, 1)";
};
constexpr auto unit = [](double v) -> const char* {
  return v >= 0 && v <= 1 ? nullptr : "must be in [0, 1]";
};

nn::Glu parse_glu(const std::string& s) {
  if (s == "relu2") return nn::Glu::ReLU2;
  if (s == "swiglu") return nn::Glu::SwiGLU;
  throw std::invalid_argument("'" + s + "' is not one of relu2, swiglu");
}
std::string glu_name(nn::Glu g) { return g == nn::Glu::ReLU2 ? "relu2" : "swiglu"; }
std::string lr_name(optim::LrKind k) { return optim::to_string(k); }
std::string wd_name(optim::WdKind k) { return optim::to_string(k); }

// stages: [{mode: w158a8, until: 0.95}, {mode: a4.8}]
Field stages_field() {
  Field f = row("stages",
                "activation modes by fraction of tokens: `fp`, `w158a8`, `a4.8`, `a4.8-fp4`, "
                "`int4-all`, `fp4-all` (SPEC §2.8); the last stage has `until: 1`",
                "`[{mode: w158a8, until: 0.95}, {mode: a4.8}]`", Resume::Match);
  f.read = [](const Reader& r, const YAML::Node& st, Config& c) {
    if (!st) {
      c.stages = {{nn::ActMode::W158A8, 0.95}, {nn::ActMode::A48, 1.0}};
      return;
    }
    if (!st.IsSequence() || st.size() == 0)
      r.fail("stages", "expected a non-empty list of {mode, until}");
    double prev = 0;
    for (size_t i = 0; i < st.size(); ++i) {
      const std::string key = "stages[" + std::to_string(i) + "]";
      r.allow(st[i], key, {"mode", "until"});
      std::string mode;
      r.get(st[i], key, "mode", mode);
      if (mode.empty())
        r.fail(key + ".mode", "missing (one of fp, w158a8, a4.8, a4.8-fp4, int4-all, fp4-all)");
      Stage s{};
      try {
        s.mode = nn::parse_mode(mode);
      } catch (const autograd::Error& e) {
        r.fail(key + ".mode", e.what());
      }
      s.until = i + 1 == st.size() ? 1.0 : -1.0;
      r.get(st[i], key, "until", s.until);
      if (i + 1 == st.size() && s.until != 1.0)
        r.fail(key + ".until", "the last stage must run until 1.0");
      if (!(s.until > prev && s.until <= 1.0))
        r.fail(key + ".until", "must be in (" + std::to_string(prev) + ", 1] and increasing");
      prev = s.until;
      c.stages.push_back(s);
    }
  };
  f.compare = [](const Config& a, const Config& b, std::vector<std::string>& out) {
    if (a.stages.size() != b.stages.size()) {
      out.push_back("stages: checkpoint has " + std::to_string(a.stages.size()) + ", config " +
                    std::to_string(b.stages.size()));
      return;
    }
    for (size_t i = 0; i < a.stages.size(); ++i) {
      const std::string k = "stages[" + std::to_string(i) + "]";
      compare_by(k + ".mode", [i](const Config& c) { return nn::to_string(c.stages[i].mode); })(
          a, b, out);
      compare_by(k + ".until", [i](const Config& c) { return c.stages[i].until; })(a, b, out);
    }
  };
  return f;
}

// schedule.peak2 defaults to 2/3 of peak1 (read before it).
Field peak2_field(Field f) {
  f.default_doc = "2/3 · peak1";
  f.read = [read = f.read](const Reader& r, const YAML::Node& s, Config& c) {
    c.schedule.peak2 = c.schedule.peak1 * 2.0 / 3.0;
    read(r, s, c);
  };
  return f;
}

// prepare.vocab_size, when a prepare section is given, must equal the model's.
void same_vocab(const Reader& r, const YAML::Node& p, const Config& c) {
  if (p && c.prepare.vocab_size != c.model.vocab_size)
    r.fail("prepare.vocab_size", std::to_string(c.prepare.vocab_size) +
                                     " differs from model.vocab_size " +
                                     std::to_string(c.model.vocab_size));
}

// Exactly one of training.steps and training.tokens.
void steps_or_tokens(const Reader& r, const YAML::Node&, const Config& c) {
  if (c.training.steps == 0 && c.training.tokens == 0)
    r.fail("training.steps", "set training.steps or training.tokens");
  if (c.training.steps > 0 && c.training.tokens > 0)
    r.fail("training.tokens", "set either training.steps or training.tokens, not both");
}

constexpr Resume kFree = Resume::Free, kMatch = Resume::Match, kBatch = Resume::GlobalBatch;
#define AT(member) \
  [](auto& c) -> auto& { return c.member; }

}  // namespace

const std::vector<Field>& fields() {
  static const std::vector<Field> table = {
      value("model.vocab_size", AT(model.vocab_size), kMatch,
            "vocabulary (must cover the data's token ids)"),
      value("model.d_model", AT(model.d_model), kMatch,
            "hidden size; divisible by `n_heads`, head_dim even"),
      value("model.n_layers", AT(model.n_layers), kMatch, "decoder blocks"),
      value("model.n_heads", AT(model.n_heads), kMatch, "attention heads"),
      [] {  // compared as resolved: 0 and n_heads are the same model
        Field f = value("model.n_kv_heads", AT(model.n_kv_heads), kMatch,
                        "KV heads (GQA; 0 = n_heads); must divide n_heads");
        f.compare = compare_by(f.key, [](const Config& c) { return c.model.kv_heads(); });
        return f;
      }(),
      value("model.ffn_dim", AT(model.ffn_dim), kMatch, "GLU hidden size"),
      value("model.rope_theta", AT(model.rope_theta), kMatch, "RoPE base"),
      value("model.norm_eps", AT(model.norm_eps), kMatch, "RMSNorm epsilon"),
      value("model.tie_embeddings", AT(model.tie_embeddings), kMatch,
            "LM head shares the embedding matrix"),
      choice("model.glu", AT(model.glu), parse_glu, glu_name, kMatch,
             "`relu2` (ReLU²GLU) or `swiglu` (ablation)"),
      value("model.topk_ratio", AT(model.topk_ratio), kMatch,
            "kept fraction of the o_proj input in a4.8 modes, in [0, 1] (0 = top-K off)"),
      choice("model.a4_quant", AT(model.a4_quant), nn::parse_a4_quant, nn::a4_quant_name, kMatch,
             "quantizer of the q/k/v and gate/up inputs in mode `a4.8`: `int4` (absmean), "
             "`int4-absmax`, `fp4` (E2M1 MinMax) or `fp4-e1m2` (E1M2 MinMax) (SPEC §2.8)"),
      choice("model.down_quant", AT(model.down_quant), nn::parse_down_quant, nn::down_quant_name,
             kMatch,
             "quantizer of the down_proj input in modes `a4.8` and `w158a8`: `int8`, `int4` "
             "(absmean with "
             "b = 2·mean\\|x\\|) or `fp4` (E2M1 MinMax) (SPEC §2.8)"),
      value("model.fp4_topk", AT(model.fp4_topk), kMatch,
            "a4.8-fp4 keeps top-K on o_proj (SPEC: open)"),
      value("model.init_std", AT(model.init_std), kMatch,
            "normal init std of matrices and embeddings (gains start at 1)"),
      stages_field(),
      value("optim.beta1", AT(adamw.beta1), kMatch, "AdamW β1", unit_open),
      value("optim.beta2", AT(adamw.beta2), kMatch, "AdamW β2", unit_open),
      value("optim.eps", AT(adamw.eps), kMatch, "AdamW epsilon", positive),
      value("optim.grad_clip", AT(grad_clip), kMatch, "global-norm clip (0 = off)",
            [](double v) -> const char* {
              return v >= 0 ? nullptr : "must be >= 0 (0 disables clipping)";
            }),
      value("optim.decay_embeddings", AT(adamw.decay_embeddings), kMatch,
            "apply weight decay to the embedding too"),
      choice("schedule.lr", AT(schedule.lr_kind), optim::parse_lr_kind, lr_name, kMatch,
             "`two-stage`, `cosine` or `constant`"),
      value("schedule.peak1", AT(schedule.peak1), kMatch, "peak LR before the LR/WD switch",
            positive),
      peak2_field(value("schedule.peak2", AT(schedule.peak2), kMatch, "peak LR after the switch",
                        at_least_0)),
      value("schedule.warmup", AT(schedule.warmup), kMatch, "warm-up steps (must be < total steps)",
            at_least_0),
      value("schedule.switch", AT(lr_switch), kMatch, "LR/WD switch as a fraction of steps",
            [](double v) -> const char* {
              return v >= 0 && v <= 1 ? nullptr : "must be a fraction in [0, 1]";
            }),
      value("schedule.end_ratio", AT(schedule.end_ratio), kMatch, "final LR = end_ratio × peak",
            unit),
      choice("schedule.wd", AT(schedule.wd_kind), optim::parse_wd_kind, wd_name, kMatch,
             "`two-stage`, `constant` or `cosine` (2B4T: cosine from wd1 to 0 over stage 1)"),
      value("schedule.wd1", AT(schedule.wd1), kMatch, "weight decay before the switch", at_least_0),
      value("schedule.wd2", AT(schedule.wd2), kMatch, "weight decay after the switch", at_least_0),
      value("data.train", AT(data.train), kFree,
            "training shard files or directories (`.bin`/`.tok`: own format or llm.c `.bin`); "
            "required to train; a "
            "resume checks it is the same data (size and fingerprint)"),
      value("data.val", AT(data.val), kFree, "validation shard files or directories"),
      value("data.seq_len", AT(data.seq_len), kMatch, "tokens per sequence", at_least_1),
      value("data.micro_batch", AT(data.micro_batch), kBatch,
            "sequences per micro-batch (per rank)", at_least_1),
      value("data.grad_accum", AT(data.grad_accum), kBatch, "micro-batches per optimizer step",
            at_least_1),
      value("data.seed", AT(data.seed), kMatch, "loader seed (window order)"),
      value("prepare.inputs", AT(prepare.inputs), kFree,
            "corpus files/directories of `bitnet prepare --config`"),
      value("prepare.out_dir", AT(prepare.out_dir), kFree,
            "where `bitnet prepare --config` writes"),
      also(value("prepare.vocab_size", AT(prepare.vocab_size), kFree,
                 "SentencePiece vocabulary; must equal `model.vocab_size`"),
           same_vocab),
      value("prepare.val_fraction", AT(prepare.val_fraction), kFree,
            "documents held out for validation",
            [](double v) -> const char* {
              return v >= 0 && v <= 0.5 ? nullptr : "must be in [0, 0.5]";
            }),
      value("prepare.brown_tags", AT(prepare.brown_tags), kFree, "strip Brown part-of-speech tags"),
      value("prepare.text_field", AT(prepare.text_field), kFree,
            "JSON Lines (`*.jsonl`) member holding a document's text"),
      value("prepare.tokenizer", AT(prepare.tokenizer), kFree,
            "a SentencePiece `.model` to use instead of training one (empty: train)"),
      value("prepare.shard_tokens", AT(prepare.shard_tokens), kFree,
            "tokens per shard; a larger split becomes a directory of shards", at_least_1),
      value("prepare.sample_bytes", AT(prepare.sample_bytes), kFree,
            "bytes of training text the tokenizer is trained on (spread over the corpus)",
            at_least_1),
      value("training.steps", AT(training.steps), kFree,
            "run length in optimizer steps (this or training.tokens)", at_least_0),
      also(value("training.tokens", AT(training.tokens), kFree,
                 "run length in tokens (steps = tokens / tokens per step)", at_least_0),
           steps_or_tokens),
      value("training.seed", AT(training.seed), kMatch, "parameter init seed"),
      value("training.eval_every", AT(training.eval_every), kFree,
            "validation every N steps (0 = only at the end and at stage switches)", at_least_0),
      value("training.eval_batches", AT(training.eval_batches), kFree,
            "micro-batches per validation", at_least_1),
      value("training.log_every", AT(training.log_every), kFree, "progress line every N steps",
            at_least_1),
      value("training.max_bad_steps", AT(training.max_bad_steps), kFree,
            "consecutive non-finite steps before aborting", at_least_1),
      value("training.out_dir", AT(training.out_dir), kFree, "run directory"),
      value("training.threads", AT(training.threads), kFree,
            "OpenMP threads (0 = OMP_NUM_THREADS / all cores)", at_least_0),
      value("training.zero1", AT(training.zero1), kFree,
            "under MPI, shard the AdamW moments over the ranks (ZeRO-1, "
            "[DISTRIBUTED.md](DISTRIBUTED.md)); no effect on "
            "one rank"),
      value("training.device", AT(training.device), kFree,
            "where the model trains: `cpu`, `cuda` or `cuda:N` (needs the CUDA build, "
            "[GPU.md](GPU.md)); checkpoints are the same on either",
            [](const std::string& v) -> const char* {
              try {
                (void)autograd::parse_device(v);
                return nullptr;
              } catch (const std::exception&) {
                return "must be cpu, cuda or cuda:N";
              }
            }),
      value("training.precision", AT(training.precision), kFree,
            "float GEMM arithmetic: `auto` (fp32 on the CPU, bf16 on a GPU), `fp32`, `tf32` or "
            "`bf16` (operands rounded, fp32 accumulation; GPU only); the quantized forward "
            "stays exact integer",
            [](const std::string& v) -> const char* {
              return v == "auto" || v == "fp32" || v == "tf32" || v == "bf16"
                         ? nullptr
                         : "must be auto, fp32, tf32 or bf16";
            }),
      value("checkpoint.every", AT(checkpoint.every), kFree,
            "HDF5 checkpoint every N steps (0 = only at the end); see "
            "[CHECKPOINTS.md](CHECKPOINTS.md)",
            at_least_0),
      value("checkpoint.keep", AT(checkpoint.keep), kFree, "newest checkpoints kept", at_least_1),
  };
  return table;
}
#undef AT

void check_section(const std::string& section, const Reader& r, const Config& c) {
  if (section != "model") return;
  try {  // the model's shape as a whole; the message names the key ("model.d_model: ...")
    c.model.validate();
  } catch (const autograd::Error& e) {
    const std::string msg = e.what();
    const auto colon = msg.find(':');
    r.fail(msg.substr(0, colon), msg.substr(colon + 2));
  }
}

}  // namespace trainers::config
