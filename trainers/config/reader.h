// YAML access for the config parser (private to trainers/config): the location of every key, the
// unknown-key check, typed reads, and errors as "file:line: key: what is wrong".
#pragma once
#include <yaml-cpp/yaml.h>

#include <cmath>
#include <map>
#include <set>
#include <string>
#include <type_traits>
#include <vector>

#include "trainers/config/config.h"

namespace trainers::config {

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
      throw ConfigError(file_ + ": " + prefix + ": mappings nested deeper than " +
                        std::to_string(kMaxDepth) +
                        " levels (or an alias that contains itself): not a training config");
    for (auto it = n.begin(); it != n.end(); ++it) {
      if (++visited_ > kMaxKeys)
        throw ConfigError(file_ + ": more than " + std::to_string(kMaxKeys) +
                          " keys (aliases expanding into a huge tree?): not a training config");
      const std::string key =
          prefix.empty() ? it->first.Scalar() : prefix + "." + it->first.Scalar();
      const auto m = it->first.Mark();
      if (!where_.count(key)) where_[key] = file_ + ":" + std::to_string(m.line + 1);
      index(it->second, key, depth + 1);
    }
  }
  void mark_override(const std::string& key) { where_[key] = "--set " + key; }

  // Every key of map `n` (at `prefix`) must be in `allowed`.
  void allow(const YAML::Node& n, const std::string& prefix,
             const std::set<std::string>& allowed) const {
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
    if (!n.IsScalar())
      fail(key, std::string("expected ") + type_name<T>() + ", got a " +
                    (n.IsMap() ? "mapping" : "sequence"));
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
    if constexpr (std::is_same_v<T, bool>)
      return "a boolean";
    else if constexpr (std::is_integral_v<T>)
      return "an integer";
    else if constexpr (std::is_floating_point_v<T>)
      return "a number";
    else
      return "a string";
  }

  const std::string& file() const { return file_; }

 private:
  static constexpr size_t kMaxKeys = 10000;  // real configs have well under 200
  static constexpr int kMaxDepth = 32;       // and 3 levels
  std::string file_;
  std::map<std::string, std::string> where_;
  size_t visited_ = 0;
};

}  // namespace trainers::config
