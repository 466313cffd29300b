// The `bitnet` command-line tool: parses the subcommand (one file each in this folder) and runs it.
#include <CLI/CLI.hpp>
#include <cstdio>
#include <exception>
#include <vector>

#include "trainers/cli/command.h"
#include "trainers/config/config.h"

int main(int argc, char** argv) {
  using namespace trainers::cli;
  CLI::App app{"bitnet: train BitNet a4.8 (1-bit weights, 4/8-bit activations) models on CPUs"};
  app.require_subcommand(1);
  const std::vector<Command> commands = {add_train(app, &argc, &argv),
                                         add_info(app),
                                         add_schedule(app),
                                         add_prepare(app),
                                         add_bench(app, &argc, &argv),
                                         add_export(app),
                                         add_generate(app),
                                         add_eval(app),
                                         add_version(app),
                                         add_config(app),
                                         add_sweep(app, &argc, &argv)};
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  }
  try {
    for (const Command& c : commands)
      if (app.got_subcommand(c.app)) return c.run();
  } catch (const trainers::config::ConfigError& e) {
    std::fprintf(stderr, "config error: %s\n", e.what());
    return 2;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
  return 0;
}
