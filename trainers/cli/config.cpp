// `bitnet config --keys`: the table of config keys as Markdown (docs/TRAINING.md's reference);
// `bitnet config --from-hf DIR`: a continue-training config for a Hugging Face checkpoint.
#include <cstdio>

#include "trainers/cli/command.h"
#include "trainers/config/config.h"
#include "trainers/formats/hf_import.h"

namespace trainers::cli {

Command add_config(CLI::App& app) {
  CLI::App* sub = app.add_subcommand(
      "config",
      "print the config keys (default, resume rule, meaning) as a Markdown table, or a "
      "continue-training config for a Hugging Face BitNet checkpoint");
  struct Args {
    bool keys = false;
    std::string from_hf;
  };
  auto a = std::make_shared<Args>();
  auto* keys = sub->add_flag("--keys", a->keys, "the key table, as in docs/TRAINING.md");
  auto* hf = sub->add_option("--from-hf", a->from_hf,
                             "print a YAML training config continuing this BitNetForCausalLM "
                             "directory into a4.8 (model block from its config.json)")
                 ->check(CLI::ExistingDirectory);
  keys->excludes(hf);
  sub->require_option(1);
  return {sub, [a] {
            if (!a->from_hf.empty()) {
              const auto h = formats::read_hf_config(a->from_hf);
              std::fputs(formats::hf_recipe_yaml(a->from_hf, h).c_str(), stdout);
              return 0;
            }
            std::fputs(config::keys_markdown().c_str(), stdout);
            return 0;
          }};
}

}  // namespace trainers::cli
