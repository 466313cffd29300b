// YAML config loading with strict validation: unknown keys, wrong types, out-of-range and
// inconsistent values all fail before training with "file:line: key: what is wrong".
#include "trainers/config/config.h"

#include <yaml-cpp/yaml.h>

#include <cmath>
#include <fstream>
#include <set>
#include <sstream>

#include "autograd/error.h"

namespace trainers::config {
namespace {

class Reader {
 public:
  Reader(std::string file) : file_(std::move(file)) {}

  [[noreturn]] void fail(const std::string& key, const std::string& what) const {
    auto it = where_.find(key);
    std::string loc = file_;
    if (it != where_.end()) loc = it->second;
    throw ConfigError(loc + ": " + key + ": " + what);
  }

  // Records the location of every key in the tree ("file:line" or "--set"). Aliases share nodes,
  // so a few lines of YAML can stand for an exponentially large tree: the walk has a budget.
  void index(const YAML::Node& n, const std::string& prefix, int depth = 0) {
    if (!n.IsMap()) return;
    if (depth > kMaxDepth)  // (an alias inside itself is infinitely deep)
      throw ConfigError(file_ + ": " + prefix + ": mappings nested deeper than " + std::to_string(kMaxDepth) +
                        " levels (or an alias that contains itself): not a training config");
    for (auto it = n.begin(); it != n.end(); ++it) {
      if (++visited_ > kMaxKeys)
        throw ConfigError(file_ + ": more than " + std::to_string(kMaxKeys) +
                          " keys (aliases expanding into a huge tree?): not a training config");
      const std::string key = prefix.empty() ? it->first.Scalar() : prefix + "." + it->first.Scalar();
      const auto m = it->first.Mark();
      if (!where_.count(key)) where_[key] = file_ + ":" + std::to_string(m.line + 1);
      index(it->second, key, depth + 1);
    }
  }
  void mark_override(const std::string& key) { where_[key] = "--set " + key; }

  // Every key of map `n` (at `prefix`) must be in `allowed`.
  void allow(const YAML::Node& n, const std::string& prefix, const std::set<std::string>& allowed) const {
    if (!n) return;
    if (!n.IsMap()) fail(prefix, "expected a mapping");
    for (auto it = n.begin(); it != n.end(); ++it) {
      const std::string k = it->first.Scalar();
      if (!allowed.count(k)) {
        std::string list;
        for (auto& a : allowed) list += (list.empty() ? "" : ", ") + a;
        fail(prefix.empty() ? k : prefix + "." + k, "unknown key (allowed: " + list + ")");
      }
    }
  }

  template <class T>
  void get(const YAML::Node& sec, const std::string& prefix, const std::string& k, T& out) const {
    if (!sec || !sec[k]) return;
    const YAML::Node n = sec[k];
    const std::string key = prefix + "." + k;
    if (!n.IsScalar()) fail(key, std::string("expected ") + type_name<T>() + ", got a " + (n.IsMap() ? "mapping" : "sequence"));
    try {
      out = n.as<T>();
    } catch (const YAML::Exception&) {
      fail(key, std::string("expected ") + type_name<T>() + ", got '" + n.Scalar() + "'");
    }
    if constexpr (std::is_floating_point_v<T>)
      if (!std::isfinite(out)) fail(key, "must be finite");
  }
  void get_list(const YAML::Node& sec, const std::string& prefix, const std::string& k,
                std::vector<std::string>& out) const {
    if (!sec || !sec[k]) return;
    const YAML::Node n = sec[k];
    out.clear();
    if (n.IsScalar()) {
      out.push_back(n.Scalar());
      return;
    }
    if (!n.IsSequence()) fail(prefix + "." + k, "expected a path or a list of paths");
    for (auto&& e : n) {
      if (!e.IsScalar()) fail(prefix + "." + k, "expected a list of paths");
      out.push_back(e.Scalar());
    }
  }

  template <class T>
  static const char* type_name() {
    if constexpr (std::is_same_v<T, bool>) return "a boolean";
    else if constexpr (std::is_integral_v<T>) return "an integer";
    else if constexpr (std::is_floating_point_v<T>) return "a number";
    else return "a string";
  }

  const std::string& file() const { return file_; }

 private:
  static constexpr size_t kMaxKeys = 10000;  // real configs have well under 200
  static constexpr int kMaxDepth = 32;       // and 3 levels
  std::string file_;
  std::map<std::string, std::string> where_;
  size_t visited_ = 0;
};

void apply_override(YAML::Node root, const std::string& ov, Reader& r) {
  const auto eq = ov.find('=');
  if (eq == std::string::npos || eq == 0)
    throw ConfigError("--set " + ov + ": expected key.path=value");
  const std::string key = ov.substr(0, eq), val = ov.substr(eq + 1);
  std::vector<std::string> parts;
  std::stringstream ss(key);
  for (std::string p; std::getline(ss, p, '.');) parts.push_back(p);
  // Keys like "model.d_model": every part but the last is a mapping.
  std::vector<YAML::Node> path{root};
  for (size_t i = 0; i + 1 < parts.size(); ++i) {
    YAML::Node next = path.back()[parts[i]];
    if (next && !next.IsMap()) throw ConfigError("--set " + key + ": '" + parts[i] + "' is not a mapping");
    path.push_back(next);
  }
  YAML::Node v;
  try {
    v = YAML::Load(val);
  } catch (const YAML::Exception& e) {
    throw ConfigError("--set " + key + ": cannot parse value '" + val + "': " + e.msg);
  }
  path.back()[parts.back()] = v;
  r.mark_override(key);
}

}  // namespace

void Config::resolve_steps(int world) {
  if (training.tokens > 0) training.steps = training.tokens / tokens_per_step(world);  // derived
  if (training.steps <= 0) throw ConfigError(path + ": training.steps: resolves to 0 steps (training.tokens too small?)");
  schedule.total = training.steps;
  schedule.switch_step = int64_t(std::llround(lr_switch * double(training.steps)));
  optim::validate(schedule);
}

int64_t Config::stage_start(size_t i) const {
  if (i == 0) return 0;
  return int64_t(std::llround(stages[i - 1].until * double(training.steps)));
}

nn::ActMode Config::mode_at(int64_t t) const {
  for (size_t i = stages.size(); i-- > 0;)
    if (t >= stage_start(i)) return stages[i].mode;
  return stages.front().mode;
}

Config parse_config(const std::string& text, const std::string& name, const std::vector<std::string>& overrides) {
  Reader r(name);
  YAML::Node root;
  try {
    root = YAML::Load(text);
  } catch (const YAML::ParserException& e) {
    throw ConfigError(name + ":" + std::to_string(e.mark.line + 1) + ": YAML syntax error: " + e.msg);
  }
  if (!root || root.IsNull()) root = YAML::Node(YAML::NodeType::Map);
  if (!root.IsMap()) throw ConfigError(name + ": the top level must be a mapping");
  r.index(root, "");
  for (auto& ov : overrides) apply_override(root, ov, r);

  Config c;
  c.path = name;
  r.allow(root, "", {"model", "stages", "optim", "schedule", "data", "prepare", "training", "checkpoint"});

  const YAML::Node m = root["model"];
  r.allow(m, "model", {"vocab_size", "d_model", "n_layers", "n_heads", "n_kv_heads", "ffn_dim", "rope_theta",
                       "norm_eps", "tie_embeddings", "glu", "topk_ratio", "fp4_topk", "init_std"});
  auto& mc = c.model;
  r.get(m, "model", "vocab_size", mc.vocab_size);
  r.get(m, "model", "d_model", mc.d_model);
  r.get(m, "model", "n_layers", mc.n_layers);
  r.get(m, "model", "n_heads", mc.n_heads);
  r.get(m, "model", "n_kv_heads", mc.n_kv_heads);
  r.get(m, "model", "ffn_dim", mc.ffn_dim);
  r.get(m, "model", "rope_theta", mc.rope_theta);
  r.get(m, "model", "norm_eps", mc.norm_eps);
  r.get(m, "model", "tie_embeddings", mc.tie_embeddings);
  r.get(m, "model", "topk_ratio", mc.topk_ratio);
  r.get(m, "model", "fp4_topk", mc.fp4_topk);
  r.get(m, "model", "init_std", mc.init_std);
  std::string glu = "relu2";
  r.get(m, "model", "glu", glu);
  if (glu == "relu2") mc.glu = nn::Glu::ReLU2;
  else if (glu == "swiglu") mc.glu = nn::Glu::SwiGLU;
  else r.fail("model.glu", "'" + glu + "' is not one of relu2, swiglu");
  try {
    mc.validate();
  } catch (const autograd::Error& e) {
    const std::string msg = e.what();
    const auto colon = msg.find(':');
    r.fail(msg.substr(0, colon), msg.substr(colon + 2));
  }

  // stages: [{mode: w158a8, until: 0.95}, {mode: a4.8}]
  const YAML::Node st = root["stages"];
  if (!st) {
    c.stages = {{nn::ActMode::W158A8, 0.95}, {nn::ActMode::A48, 1.0}};
  } else {
    if (!st.IsSequence() || st.size() == 0) r.fail("stages", "expected a non-empty list of {mode, until}");
    double prev = 0;
    for (size_t i = 0; i < st.size(); ++i) {
      const std::string key = "stages[" + std::to_string(i) + "]";
      r.allow(st[i], key, {"mode", "until"});
      std::string mode;
      r.get(st[i], key, "mode", mode);
      if (mode.empty()) r.fail(key + ".mode", "missing (one of fp, w158a8, a4.8, a4.8-fp4, int4-all)");
      Stage s{};
      try {
        s.mode = nn::parse_mode(mode);
      } catch (const autograd::Error& e) {
        r.fail(key + ".mode", e.what());
      }
      s.until = i + 1 == st.size() ? 1.0 : -1.0;
      r.get(st[i], key, "until", s.until);
      if (i + 1 == st.size() && s.until != 1.0) r.fail(key + ".until", "the last stage must run until 1.0");
      if (!(s.until > prev && s.until <= 1.0))
        r.fail(key + ".until", "must be in (" + std::to_string(prev) + ", 1] and increasing");
      prev = s.until;
      c.stages.push_back(s);
    }
  }

  const YAML::Node o = root["optim"];
  r.allow(o, "optim", {"beta1", "beta2", "eps", "grad_clip", "decay_embeddings"});
  r.get(o, "optim", "beta1", c.adamw.beta1);
  r.get(o, "optim", "beta2", c.adamw.beta2);
  r.get(o, "optim", "eps", c.adamw.eps);
  r.get(o, "optim", "grad_clip", c.grad_clip);
  r.get(o, "optim", "decay_embeddings", c.adamw.decay_embeddings);
  if (!(c.adamw.beta1 >= 0 && c.adamw.beta1 < 1)) r.fail("optim.beta1", "must be in [0, 1)");
  if (!(c.adamw.beta2 >= 0 && c.adamw.beta2 < 1)) r.fail("optim.beta2", "must be in [0, 1)");
  if (!(c.adamw.eps > 0)) r.fail("optim.eps", "must be > 0");
  if (!(c.grad_clip >= 0)) r.fail("optim.grad_clip", "must be >= 0 (0 disables clipping)");

  const YAML::Node s = root["schedule"];
  r.allow(s, "schedule", {"lr", "peak1", "peak2", "warmup", "switch", "end_ratio", "wd", "wd1", "wd2"});
  std::string lr = "two-stage", wd = "two-stage";
  r.get(s, "schedule", "lr", lr);
  r.get(s, "schedule", "wd", wd);
  try {
    c.schedule.lr_kind = optim::parse_lr_kind(lr);
  } catch (const std::exception& e) {
    r.fail("schedule.lr", e.what());
  }
  try {
    c.schedule.wd_kind = optim::parse_wd_kind(wd);
  } catch (const std::exception& e) {
    r.fail("schedule.wd", e.what());
  }
  r.get(s, "schedule", "peak1", c.schedule.peak1);
  c.schedule.peak2 = c.schedule.peak1 * 2.0 / 3.0;
  r.get(s, "schedule", "peak2", c.schedule.peak2);
  r.get(s, "schedule", "warmup", c.schedule.warmup);
  r.get(s, "schedule", "switch", c.lr_switch);
  r.get(s, "schedule", "end_ratio", c.schedule.end_ratio);
  r.get(s, "schedule", "wd1", c.schedule.wd1);
  r.get(s, "schedule", "wd2", c.schedule.wd2);
  if (!(c.schedule.peak1 > 0)) r.fail("schedule.peak1", "must be > 0");
  if (!(c.schedule.peak2 >= 0)) r.fail("schedule.peak2", "must be >= 0");
  if (c.schedule.warmup < 0) r.fail("schedule.warmup", "must be >= 0");
  if (!(c.lr_switch >= 0 && c.lr_switch <= 1)) r.fail("schedule.switch", "must be a fraction in [0, 1]");
  if (!(c.schedule.end_ratio >= 0 && c.schedule.end_ratio <= 1)) r.fail("schedule.end_ratio", "must be in [0, 1]");
  if (!(c.schedule.wd1 >= 0)) r.fail("schedule.wd1", "must be >= 0");
  if (!(c.schedule.wd2 >= 0)) r.fail("schedule.wd2", "must be >= 0");

  const YAML::Node d = root["data"];
  r.allow(d, "data", {"train", "val", "seq_len", "micro_batch", "grad_accum", "seed"});
  r.get_list(d, "data", "train", c.data.train);
  r.get_list(d, "data", "val", c.data.val);
  r.get(d, "data", "seq_len", c.data.seq_len);
  r.get(d, "data", "micro_batch", c.data.micro_batch);
  r.get(d, "data", "grad_accum", c.data.grad_accum);
  r.get(d, "data", "seed", c.data.seed);
  if (c.data.seq_len < 1) r.fail("data.seq_len", "must be >= 1");
  if (c.data.micro_batch < 1) r.fail("data.micro_batch", "must be >= 1");
  if (c.data.grad_accum < 1) r.fail("data.grad_accum", "must be >= 1");

  const YAML::Node p = root["prepare"];
  r.allow(p, "prepare", {"inputs", "out_dir", "vocab_size", "val_fraction", "brown_tags"});
  r.get_list(p, "prepare", "inputs", c.prepare.inputs);
  r.get(p, "prepare", "out_dir", c.prepare.out_dir);
  r.get(p, "prepare", "vocab_size", c.prepare.vocab_size);
  r.get(p, "prepare", "val_fraction", c.prepare.val_fraction);
  r.get(p, "prepare", "brown_tags", c.prepare.brown_tags);
  if (p && c.prepare.vocab_size != c.model.vocab_size)
    r.fail("prepare.vocab_size", std::to_string(c.prepare.vocab_size) + " differs from model.vocab_size " +
                                     std::to_string(c.model.vocab_size));
  if (!(c.prepare.val_fraction >= 0 && c.prepare.val_fraction <= 0.5)) r.fail("prepare.val_fraction", "must be in [0, 0.5]");

  const YAML::Node t = root["training"];
  r.allow(t, "training", {"steps", "tokens", "seed", "eval_every", "eval_batches", "log_every", "max_bad_steps",
                          "out_dir", "threads", "zero1"});
  r.get(t, "training", "steps", c.training.steps);
  r.get(t, "training", "tokens", c.training.tokens);
  r.get(t, "training", "seed", c.training.seed);
  r.get(t, "training", "eval_every", c.training.eval_every);
  r.get(t, "training", "eval_batches", c.training.eval_batches);
  r.get(t, "training", "log_every", c.training.log_every);
  r.get(t, "training", "max_bad_steps", c.training.max_bad_steps);
  r.get(t, "training", "out_dir", c.training.out_dir);
  r.get(t, "training", "threads", c.training.threads);
  r.get(t, "training", "zero1", c.training.zero1);
  if (c.training.steps < 0) r.fail("training.steps", "must be >= 0");
  if (c.training.tokens < 0) r.fail("training.tokens", "must be >= 0");
  if (c.training.steps == 0 && c.training.tokens == 0) r.fail("training.steps", "set training.steps or training.tokens");
  if (c.training.steps > 0 && c.training.tokens > 0)
    r.fail("training.tokens", "set either training.steps or training.tokens, not both");
  if (c.training.eval_every < 0) r.fail("training.eval_every", "must be >= 0");
  if (c.training.eval_batches < 1) r.fail("training.eval_batches", "must be >= 1");
  if (c.training.log_every < 1) r.fail("training.log_every", "must be >= 1");
  if (c.training.max_bad_steps < 1) r.fail("training.max_bad_steps", "must be >= 1");
  if (c.training.threads < 0) r.fail("training.threads", "must be >= 0");

  const YAML::Node k = root["checkpoint"];
  r.allow(k, "checkpoint", {"every", "keep"});
  r.get(k, "checkpoint", "every", c.checkpoint.every);
  r.get(k, "checkpoint", "keep", c.checkpoint.keep);
  if (c.checkpoint.every < 0) r.fail("checkpoint.every", "must be >= 0");
  if (c.checkpoint.keep < 1) r.fail("checkpoint.keep", "must be >= 1");

  YAML::Emitter em;
  em << root;
  c.resolved_yaml = em.c_str();
  try {
    c.resolve_steps();
  } catch (const std::exception& e) {
    const std::string msg = e.what();
    const auto colon = msg.find(':');
    r.fail(msg.substr(0, colon), msg.substr(colon + 2));
  }
  return c;
}

Config load_config(const std::string& path, const std::vector<std::string>& overrides) {
  std::ifstream f(path);
  if (!f) throw ConfigError(path + ": cannot open config file");
  std::stringstream ss;
  ss << f.rdbuf();
  return parse_config(ss.str(), path, overrides);
}

}  // namespace trainers::config
