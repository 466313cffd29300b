// Sweep files: parsing, validation and expansion into runs (sweep.h).
#include "trainers/config/sweep.h"

#include <yaml-cpp/yaml.h>

#include <filesystem>
#include <set>

#include "trainers/config/config.h"
#include "trainers/config/reader.h"

namespace trainers::config {
namespace {

std::string at(const std::string& file, const YAML::Node& n, const std::string& key) {
  return file + ":" + std::to_string(n.Mark().line + 1) + ": " + key;
}

std::vector<std::string> scalar_list(const std::string& file, const YAML::Node& n,
                                     const std::string& key) {
  std::vector<std::string> out;
  if (!n) return out;
  if (n.IsScalar()) return {n.Scalar()};
  if (!n.IsSequence()) throw ConfigError(at(file, n, key) + ": expected a list of key=value");
  for (auto&& e : n) {
    if (!e.IsScalar())
      throw ConfigError(at(file, e, key) + ": expected key=value, got a " +
                        (e.IsMap() ? "mapping" : "sequence"));
    out.push_back(e.Scalar());
  }
  return out;
}

void check_sets(const std::string& file, const YAML::Node& n, const std::string& key,
                const std::vector<std::string>& sets) {
  for (const std::string& s : sets)
    if (s.find('=') == std::string::npos || s.front() == '=')
      throw ConfigError(at(file, n, key) + ": '" + s + "' is not key=value");
}

void check_name(const std::string& file, const YAML::Node& n, const std::string& name) {
  if (name.empty() || name == "." || name == "..")
    throw ConfigError(at(file, n, "variants") + ": a run needs a non-empty name");
  for (char c : name)
    if (!(std::isalnum(static_cast<unsigned char>(c)) || c == '.' || c == '_' || c == '=' ||
          c == '+' || c == '-'))
      throw ConfigError(at(file, n, "variants") + ": run name '" + name + "' has the character '" +
                        std::string(1, c) + "' (allowed: letters, digits and . _ = + -)");
}

std::string join(const std::string& a, const std::string& b) {
  return a.empty() ? b : b.empty() ? a : a + "_" + b;
}

}  // namespace

Sweep load_sweep(const std::string& path, const std::vector<std::string>& extra) {
  YAML::Node root;
  try {
    root = YAML::LoadFile(path);
  } catch (const YAML::BadFile&) {
    throw ConfigError(path + ": cannot open sweep file");
  } catch (const YAML::Exception& e) {
    throw ConfigError(path + ":" + std::to_string(e.mark.line + 1) + ": " + e.msg);
  }
  Reader r(path);
  r.index(root, "");
  if (!root.IsMap()) throw ConfigError(path + ": a sweep file is a mapping (base, variants, ...)");
  r.allow(root, "", {"base", "out_dir", "set", "variants", "grid", "seeds"});
  Sweep sw;
  sw.path = path;
  if (!root["base"] || !root["base"].IsScalar())
    r.fail("base", "required: the training config every run starts from");
  sw.base = root["base"].Scalar();
  sw.out_dir = root["out_dir"] && root["out_dir"].IsScalar()
                   ? root["out_dir"].Scalar()
                   : "runs/sweeps/" + std::filesystem::path(path).stem().string();
  if (root["out_dir"] && !root["out_dir"].IsScalar()) r.fail("out_dir", "expected a directory");
  std::vector<std::string> common = scalar_list(path, root["set"], "set");
  check_sets(path, root["set"], "set", common);

  // variants: a list of {name, set}
  std::vector<SweepRun> vars;
  if (const YAML::Node v = root["variants"]) {
    if (!v.IsSequence() || v.size() == 0)
      throw ConfigError(at(path, v, "variants") + ": expected a non-empty list of {name, set}");
    for (auto&& e : v) {
      if (!e.IsMap() || !e["name"] || !e["name"].IsScalar())
        throw ConfigError(at(path, e, "variants") + ": each variant is {name: N, set: [...]}");
      for (auto it = e.begin(); it != e.end(); ++it)
        if (it->first.Scalar() != "name" && it->first.Scalar() != "set" &&
            it->first.Scalar() != "init_from")
          throw ConfigError(at(path, it->first, "variants." + it->first.Scalar()) +
                            ": unknown key (allowed: name, set, init_from)");
      SweepRun run{e["name"].Scalar(), scalar_list(path, e["set"], "variants.set"), {}, {}, {}};
      if (const YAML::Node f = e["init_from"]) {
        if (!f.IsScalar() || f.Scalar().empty())
          throw ConfigError(at(path, f, "variants.init_from") +
                            ": expected a variant name or a model file");
        bool earlier = false;
        for (const SweepRun& v : vars) earlier = earlier || v.name == f.Scalar();
        if (earlier)
          run.init_run = f.Scalar();
        else if (std::filesystem::is_regular_file(f.Scalar()))
          run.init_file = f.Scalar();
        else
          throw ConfigError(at(path, f, "variants.init_from") + ": '" + f.Scalar() +
                            "' is neither a variant named before '" + run.name +
                            "' nor a model file");
      }
      check_sets(path, e, "variants.set", run.sets);
      check_name(path, e, run.name);
      vars.push_back(std::move(run));
    }
  } else {
    vars.push_back({});
  }
  // grid: every combination, the first key varying slowest
  std::vector<SweepRun> points{{}};
  if (const YAML::Node g = root["grid"]) {
    if (!g.IsMap() || g.size() == 0)
      throw ConfigError(at(path, g, "grid") + ": expected a mapping key: [values]");
    for (auto it = g.begin(); it != g.end(); ++it) {
      const std::string key = it->first.Scalar();
      const std::vector<std::string> values = scalar_list(path, it->second, "grid." + key);
      if (values.empty()) throw ConfigError(at(path, it->second, "grid." + key) + ": no values");
      const std::string shortk = key.substr(key.rfind('.') + 1);
      std::vector<SweepRun> next;
      for (const SweepRun& p : points)
        for (const std::string& val : values) {
          SweepRun q = p;
          q.name = join(q.name, shortk + "=" + val);
          q.sets.push_back(key + "=" + val);
          next.push_back(std::move(q));
        }
      points = std::move(next);
    }
  }
  if (!root["variants"] && !root["grid"])
    r.fail("variants", "a sweep needs variants, a grid, or both");
  std::vector<std::string> seeds = scalar_list(path, root["seeds"], "seeds");
  for (const std::string& s : seeds)
    if (s.empty() || s.find_first_not_of("0123456789") != std::string::npos)
      throw ConfigError(at(path, root["seeds"], "seeds") + ": '" + s +
                        "' is not a non-negative integer");
  if (seeds.empty()) seeds.push_back("");

  std::set<std::string> names;
  for (const SweepRun& v : vars)
    for (const SweepRun& p : points)
      for (const std::string& s : seeds) {
        SweepRun run;
        run.name = join(join(v.name, p.name), s.empty() ? "" : "seed=" + s);
        run.init_file = v.init_file;
        if (!v.init_run.empty())  // the source variant's run of the same grid point and seed
          run.init_run = join(join(v.init_run, p.name), s.empty() ? "" : "seed=" + s);
        if (run.name.empty()) run.name = "base";
        check_name(path, root, run.name);
        if (!names.insert(run.name).second)
          throw ConfigError(path + ": two runs are named '" + run.name + "' (names must differ)");
        run.own = v.sets;
        run.own.insert(run.own.end(), p.sets.begin(), p.sets.end());
        if (!s.empty()) {
          run.own.push_back("training.seed=" + s);
          run.own.push_back("data.seed=" + s);
        }
        run.sets = common;
        run.sets.insert(run.sets.end(), run.own.begin(), run.own.end());
        run.sets.insert(run.sets.end(), extra.begin(), extra.end());
        run.sets.push_back("training.out_dir=" +
                           (std::filesystem::path(sw.out_dir) / run.name).string());
        sw.runs.push_back(std::move(run));
      }
  // Every run's config must load: a bad key or value is refused before the first run starts.
  for (const SweepRun& run : sw.runs) {
    try {
      (void)load_config(sw.base, run.sets);
    } catch (const ConfigError& e) {
      throw ConfigError(path + ": run '" + run.name + "': " + e.what());
    }
  }
  return sw;
}

}  // namespace trainers::config
