// libFuzzer target: the YAML config loader (parse_config, and an optional --set override after a
// NUL byte).
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>

#include "trainers/config/config.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string in(reinterpret_cast<const char*>(data), size);
  const size_t nul = in.find('\0');
  const std::string text = in.substr(0, nul);
  std::vector<std::string> sets;
  if (nul != std::string::npos) sets.push_back(in.substr(nul + 1));
  try {
    const trainers::config::Config c = trainers::config::parse_config(text, "fuzz.yaml", sets);
    // An accepted config is self-consistent: its resolved YAML parses again to the same run length.
    const trainers::config::Config again =
        trainers::config::parse_config(c.resolved_yaml, "resolved.yaml");
    if (again.training.steps != c.training.steps || again.model.d_model != c.model.d_model) {
      std::fprintf(stderr, "resolved config does not round-trip\n");
      std::abort();
    }
  } catch (const trainers::config::ConfigError&) {
  }
  return 0;
}
