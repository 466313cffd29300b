// YAML config loading driven by the key table (fields.h): unknown keys, wrong types, out-of-range
// and inconsistent values all fail before training with "file:line: key: what is wrong"; the
// resume comparison and the docs' key list come from the same table.
#include "trainers/config/config.h"

#include <yaml-cpp/yaml.h>

#include <cmath>
#include <fstream>
#include <set>
#include <sstream>
#include <utility>

#include "trainers/config/fields.h"
#include "trainers/config/reader.h"

namespace trainers::config {
namespace {

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
    if (next && !next.IsMap())
      throw ConfigError("--set " + key + ": '" + parts[i] + "' is not a mapping");
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

// The table's sections in order, each with its rows.
const std::vector<std::pair<std::string, std::vector<const Field*>>>& sections() {
  static const auto all = [] {
    std::vector<std::pair<std::string, std::vector<const Field*>>> v;
    for (const Field& f : fields()) {
      if (v.empty() || v.back().first != f.section()) v.push_back({f.section(), {}});
      v.back().second.push_back(&f);
    }
    return v;
  }();
  return all;
}

// "global batch (data.micro_batch x data.grad_accum x ranks): checkpoint 4 x 1 x 2 = 8, this run
// ...".
void global_batch_mismatch(const Config& a, const Config& b, int64_t wa, int64_t wb,
                           std::vector<std::string>& out) {
  auto geo = [](const Config& c, int64_t w) {
    return std::to_string(c.data.micro_batch) + " x " + std::to_string(c.data.grad_accum) + " x " +
           std::to_string(w) + " = " + std::to_string(c.data.micro_batch * c.data.grad_accum * w);
  };
  if (a.data.micro_batch * a.data.grad_accum * wa != b.data.micro_batch * b.data.grad_accum * wb)
    out.push_back("global batch (data.micro_batch x data.grad_accum x ranks): checkpoint " +
                  geo(a, wa) + ", this run " + geo(b, wb) +
                  " (the sequences per step must stay the same)");
}

}  // namespace

void Config::resolve_steps(int world) {
  if (training.tokens > 0) training.steps = training.tokens / tokens_per_step(world);  // derived
  if (training.steps <= 0)
    throw ConfigError(path + ": training.steps: resolves to 0 steps (training.tokens too small?)");
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

Config parse_config(const std::string& text, const std::string& name,
                    const std::vector<std::string>& overrides) {
  Reader r(name);
  YAML::Node root;
  try {
    root = YAML::Load(text);
  } catch (const YAML::ParserException& e) {
    throw ConfigError(name + ":" + std::to_string(e.mark.line + 1) +
                      ": YAML syntax error: " + e.msg);
  }
  if (!root || root.IsNull()) root = YAML::Node(YAML::NodeType::Map);
  if (!root.IsMap()) throw ConfigError(name + ": the top level must be a mapping");
  r.index(root, "");
  for (auto& ov : overrides) apply_override(root, ov, r);

  Config c;
  c.path = name;
  // Section by section: the unknown-key check, every row's read (types), then their checks
  // (values).
  std::set<std::string> tops;
  for (auto& [sec, rows] : sections()) tops.insert(sec);
  r.allow(root, "", tops);
  for (auto& [sec, rows] : sections()) {
    const YAML::Node node = root[sec];
    if (!rows.front()->name().empty()) {  // a mapping of keys (not a whole-section row like stages)
      std::set<std::string> names;
      for (const Field* f : rows) names.insert(f->name());
      r.allow(node, sec, names);
    }
    for (const Field* f : rows) f->read(r, node, c);
    for (const Field* f : rows)
      if (f->check) f->check(r, node, c);
    check_section(sec, r, c);
  }

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

std::set<std::string> keys_set(const std::string& path, const std::vector<std::string>& overrides,
                               const std::string& section) {
  std::set<std::string> out;
  YAML::Node root;
  try {
    root = YAML::LoadFile(path);
  } catch (const YAML::Exception& e) {
    throw ConfigError(path + ": " + e.msg);
  }
  if (root && root.IsMap() && root[section] && root[section].IsMap())
    for (auto it = root[section].begin(); it != root[section].end(); ++it)
      out.insert(section + "." + it->first.as<std::string>());
  for (const std::string& ov : overrides)
    if (ov.rfind(section + ".", 0) == 0) out.insert(ov.substr(0, ov.find('=')));
  return out;
}

std::vector<std::string> config_mismatches(const Config& a, const Config& b, int64_t world_a,
                                           int64_t world_b) {
  std::vector<std::string> out;
  bool batch_done = false;
  for (const Field& f : fields()) {
    if (f.resume == Resume::Match)
      f.compare(a, b, out);
    else if (f.resume == Resume::GlobalBatch && !std::exchange(batch_done, true))
      global_batch_mismatch(a, b, world_a, world_b, out);
  }
  return out;
}

std::string keys_markdown() {
  std::string md = "| key | default | on resume | meaning |\n|---|---|---|---|\n";
  for (const Field& f : fields()) {
    const char* resume = f.resume == Resume::Match         ? "must match"
                         : f.resume == Resume::GlobalBatch ? "global batch must match"
                                                           : "may change";
    md += "| `" + f.key + "` | " + f.default_doc + " | " + resume + " | " + f.doc + " |\n";
  }
  return md;
}

Config load_config(const std::string& path, const std::vector<std::string>& overrides) {
  std::ifstream f(path);
  if (!f) throw ConfigError(path + ": cannot open config file");
  std::stringstream ss;
  ss << f.rdbuf();
  return parse_config(ss.str(), path, overrides);
}

}  // namespace trainers::config

namespace trainers::config {

std::string Placement::str() const {
  return device.str() + ", " + autograd::to_string(precision) + " GEMMs";
}

Placement resolve_placement(const Config& c, int world) {
  Placement p;
  const std::string where = c.path.empty() ? std::string("config") : c.path;
  try {
    p.device = autograd::parse_device(c.training.device);
  } catch (const std::exception& e) {
    autograd::fail(where, ": training.device: ", e.what());
  }
  if (!p.device.is_cpu()) {
    try {  // a one-element allocation: initialises the backend, or says why there is none
      (void)autograd::Tensor::zeros(autograd::Shape{1}, autograd::DType::F32, p.device);
    } catch (const std::exception& e) {
      autograd::fail(where, ": training.device: ", c.training.device, ": ", e.what());
    }
    if (world > 1)
      autograd::fail(where, ": training.device: ", c.training.device, " with ", world,
                     " MPI ranks: data parallelism over several GPUs is not implemented yet; run "
                     "one process, or train on the CPUs (training.device: cpu)");
  }
  const std::string& pr = c.training.precision;
  if (pr == "auto")
    p.precision = p.device.is_cpu() ? autograd::GemmPrecision::F32 : autograd::GemmPrecision::BF16;
  else
    try {
      p.precision = autograd::parse_gemm_precision(pr);
    } catch (const std::exception& e) {
      autograd::fail(where, ": training.precision: ", e.what());
    }
  if (p.device.is_cpu() && p.precision != autograd::GemmPrecision::F32)
    autograd::fail(where, ": training.precision: ", pr,
                   " needs a GPU (training.device: cuda); the CPU computes fp32 GEMMs only");
  return p;
}

}  // namespace trainers::config
