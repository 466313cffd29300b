// `bitnet config --keys`: the table of config keys as Markdown (docs/TRAINING.md's reference).
#include <cstdio>

#include "trainers/cli/command.h"
#include "trainers/config/config.h"

namespace trainers::cli {

Command add_config(CLI::App& app) {
  CLI::App* sub = app.add_subcommand(
      "config", "print the config keys (default, resume rule, meaning) as a Markdown table");
  auto keys = std::make_shared<bool>(false);
  sub->add_flag("--keys", *keys, "the key table, as in docs/TRAINING.md")->required();
  return {sub, [keys] {
            std::fputs(config::keys_markdown().c_str(), stdout);
            return 0;
          }};
}

}  // namespace trainers::cli
