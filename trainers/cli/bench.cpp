// `bitnet bench CONFIG`: timed training steps (under mpirun every rank benchmarks, rank 0 reports).
#include "trainers/train/bench.h"
#include "trainers/cli/command.h"
#include "trainers/config/config.h"

namespace trainers::cli {

Command add_bench(CLI::App& app, int* argc, char*** argv) {
  struct Args {
    ConfigArgs config;
    train::BenchOptions bench;
  };
  auto a = std::make_shared<Args>();
  train::BenchOptions& bopt = a->bench;
  CLI::App* bench = app.add_subcommand(
      "bench", "time training steps (tokens/s, phase split, GFLOP/s, MFU, peak RSS)");
  add_config_args(bench, a->config, "override a config key: key.path=value");
  add_device_args(bench, a->config);
  bench->add_option("--mode", bopt.mode, "activation mode (default: the config's first stage)");
  bench->add_option("--warmup", bopt.warmup, "untimed steps")->check(CLI::Range(0, 1000));
  bench->add_option("--steps", bopt.steps, "timed steps")->check(CLI::Range(1, 100000));
  bench->add_option("--json", bopt.json_out, "also write the JSON result to this file");
  bench->add_flag("--profile", bopt.profile, "also print per-op forward/backward time per step");
  return {bench, [a, argc, argv] {
            const config::Config c = config::load_config(a->config.file, a->config.overrides());
            std::unique_ptr<train::Comm> comm = make_comm(argc, argv);
            return on_every_rank(*comm, [&] { return train::run_bench(c, a->bench, *comm); });
          }};
}

}  // namespace trainers::cli
