// `bitnet sweep SWEEP.yaml`: a base config run with a few keys changed per run, then one table
// and one plot of all runs; `bitnet sweep --report DIR` rebuilds them from finished runs.
#include <unistd.h>

#include <climits>
#include <cstdio>

#include "trainers/cli/command.h"
#include "trainers/config/sweep.h"
#include "trainers/train/sweep.h"

namespace trainers::cli {

Command add_sweep(CLI::App& app, int* argc, char*** argv) {
  struct Args {
    std::string file, report;
    std::vector<std::string> sets;
    train::SweepOptions opt;
    bool list = false;
  };
  auto a = std::make_shared<Args>();
  CLI::App* sub = app.add_subcommand(
      "sweep", "run a sweep (a base config and variants), then write its table and plots");
  sub->add_option("sweep", a->file, "sweep file (docs/TRAINING.md, \"Sweeps\")")
      ->check(CLI::ExistingFile);
  sub->add_option("--set", a->sets, "override a config key in every run: key.path=value");
  sub->add_option("--jobs", a->opt.jobs,
                  "runs at a time, each a `bitnet train` process with threads / jobs threads "
                  "(default 1: one after another in this process; under mpirun only 1)");
  sub->add_flag("--quiet", a->opt.quiet, "no progress output of the runs");
  sub->add_flag("--list", a->list, "print the runs and their overrides, run nothing");
  sub->add_option("--report", a->report,
                  "rebuild sweep.jsonl, sweep.md and the plots of a sweep directory, run nothing")
      ->check(CLI::ExistingDirectory);
  return {sub, [a, argc, argv] {
            if (!a->report.empty()) {
              const auto rows = train::write_sweep_report(a->report);
              std::printf("table:   %s/sweep.md (%zu runs)\n", a->report.c_str(), rows.size());
              return 0;
            }
            if (a->file.empty())
              throw std::runtime_error("bitnet sweep: give a sweep file, or --report DIR");
            const config::Sweep sw = config::load_sweep(a->file, a->sets);
            if (a->list) {
              for (const auto& r : sw.runs) {
                std::printf("%s:", r.name.c_str());
                for (const auto& s : r.own) std::printf(" %s", s.c_str());
                std::printf("\n");
              }
              return 0;
            }
            char self[PATH_MAX] = {};
            const ssize_t n = readlink("/proc/self/exe", self, sizeof self - 1);
            a->opt.self = n > 0 ? std::string(self, size_t(n)) : std::string((*argv)[0]);
            std::unique_ptr<train::Comm> comm = make_comm(argc, argv);
            return on_every_rank(*comm, [&] { return train::run_sweep(sw, a->opt, *comm); });
          }};
}

}  // namespace trainers::cli
