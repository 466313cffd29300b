// `bitnet train CONFIG`: the training loop (under mpirun on every rank), then a summary.
#include <cmath>
#include <cstdio>

#include "trainers/cli/command.h"
#include "trainers/config/config.h"
#include "trainers/formats/hf_import.h"
#include "trainers/train/trainer.h"

namespace trainers::cli {

Command add_train(CLI::App& app, int* argc, char*** argv) {
  struct Args {
    ConfigArgs config;
    std::string init_from, resume, trace;
    bool quiet = false;
  };
  auto a = std::make_shared<Args>();
  CLI::App* sub = app.add_subcommand("train", "train a model from a YAML config");
  add_config_args(sub, a->config, "override a config key: key.path=value (repeatable)");
  add_device_args(sub, a->config);
  sub->add_option("--init-from", a->init_from,
                  "model file to start from (e.g. a finished w158a8 run's model.safetensors), or a "
                  "Hugging Face BitNetForCausalLM directory (the YAML may then omit the model "
                  "block: it comes from config.json)")
      ->check(CLI::ExistingPath);
  sub->add_flag("--quiet", a->quiet, "no progress output");
  sub->add_option(
         "--resume", a->resume,
         "continue bit for bit from a checkpoint file, or a run directory's newest checkpoint")
      ->check(CLI::ExistingPath);
  sub->add_option("--trace-samples", a->trace,
                  "each rank appends \"sample window\" per sample it trains on to PREFIX.rank<R> "
                  "(checks the data sharding)");
  return {
      sub, [a, argc, argv] {
        const config::Config c =
            formats::is_hf_dir(a->init_from)
                ? formats::load_config_for_hf(a->config.file, a->init_from, a->config.overrides())
                : config::load_config(a->config.file, a->config.overrides());
        // Under mpirun every rank runs this; rank 0 logs, evaluates and writes files.
        std::unique_ptr<train::Comm> comm = make_comm(argc, argv);
        train::TrainOptions o;
        o.quiet = a->quiet;
        o.init_from = a->init_from;
        o.resume = a->resume;
        o.trace_samples = a->trace;
        const train::TrainResult r =
            on_every_rank(*comm, [&] { return train::train(c, o, *comm); });
        if (comm->rank() != 0) return 0;
        std::printf(
            "done: %lld steps (%lld skipped), train loss %.4f -> %.4f, val loss %.4f (ppl %.2f)\n",
            (long long)r.steps, (long long)r.skipped, r.first_loss, r.last_loss, r.val_loss,
            std::exp(r.val_loss));
        std::printf(
            "model:   %s/model.safetensors\nmetrics: %s/metrics.jsonl\nplot:    %s/training.svg\n",
            r.run_dir.c_str(), r.run_dir.c_str(), r.run_dir.c_str());
        return r.interrupted ? 130 : 0;
      }};
}

}  // namespace trainers::cli
