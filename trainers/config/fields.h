// The table of config keys (private to trainers/config): one row per key, from which parsing, the
// unknown-key check (--set overrides included), the resume comparison and docs/TRAINING.md's key
// list are all derived. The rows are in fields.cpp; adding a key is adding its member and one row.
#pragma once
#include <yaml-cpp/yaml.h>

#include <functional>
#include <string>
#include <vector>

#include "trainers/config/config.h"
#include "trainers/config/reader.h"

namespace trainers::config {

// What a resumed run may change (config_mismatches).
enum class Resume {
  Free,         // may differ from the checkpoint's config
  Match,        // must be equal
  GlobalBatch,  // only micro_batch x grad_accum x ranks must be equal (the split may change)
};

struct Field {
  std::string key;          // "section.name", or a whole top-level section ("stages")
  std::string doc;          // one line of docs/TRAINING.md
  std::string default_doc;  // the docs' default column
  Resume resume = Resume::Free;
  // Reads the key from its section (absent: the default stays); a wrong type fails naming the key.
  std::function<void(const Reader&, const YAML::Node& section, Config&)> read;
  // Checks the value once the whole section is read (null: any value of the type).
  std::function<void(const Reader&, const YAML::Node& section, const Config&)> check;
  // Resume::Match: appends "key: checkpoint X, config Y" when saved and now differ.
  std::function<void(const Config& saved, const Config& now, std::vector<std::string>& out)>
      compare;

  std::string section() const { return key.substr(0, key.find('.')); }
  std::string name() const {
    return key.find('.') == std::string::npos ? std::string() : key.substr(key.find('.') + 1);
  }
};

// Every key, in the order of the docs (sections contiguous: model, stages, optim, schedule, data,
// prepare, training, checkpoint).
const std::vector<Field>& fields();

// Checks of a whole section, run after its rows' own checks (null when the section has none).
void check_section(const std::string& section, const Reader& r, const Config& c);

}  // namespace trainers::config
