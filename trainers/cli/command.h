// The `bitnet` subcommands: each file of this folder adds one to the app; main.cpp dispatches.
#pragma once
#include <CLI/CLI.hpp>
#include <exception>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "trainers/train/comm.h"

namespace trainers::cli {

// One subcommand: its CLI11 app (holding the options it parses) and what runs when it is chosen.
// The options' storage is owned by `run`.
struct Command {
  CLI::App* app = nullptr;
  std::function<int()> run;  // returns the exit status; throws on failure (main prints it)
};

// One per file: train.cpp, info.cpp, schedule.cpp, prepare.cpp, bench.cpp, export.cpp,
// generate.cpp, eval.cpp, version.cpp, config.cpp, sweep.cpp. argc/argv: for MPI's initialisation.
Command add_train(CLI::App& app, int* argc, char*** argv);
Command add_info(CLI::App& app);
Command add_schedule(CLI::App& app);
Command add_prepare(CLI::App& app);
Command add_bench(CLI::App& app, int* argc, char*** argv);
Command add_export(CLI::App& app);
Command add_generate(CLI::App& app);
Command add_eval(CLI::App& app);
Command add_version(CLI::App& app);
Command add_config(CLI::App& app);
Command add_sweep(CLI::App& app, int* argc, char*** argv);

// ---- shared by several commands (common.cpp) -------------------------------------------------

// The YAML config file (required positional) and its --set overrides.
struct ConfigArgs {
  std::string file;
  std::vector<std::string> sets;
  std::string device, precision;  // --device / --precision ("" = the config's)
  // --set overrides, then training.device / training.precision from --device / --precision.
  std::vector<std::string> overrides() const;
};
void add_config_args(CLI::App* sub, ConfigArgs& a, const std::string& set_help);
// --device and --precision (shorthands of --set training.device=... / training.precision=...).
void add_device_args(CLI::App* sub, ConfigArgs& a);

// MPI when started by an MPI launcher, else the single-process communicator.
std::unique_ptr<train::Comm> make_comm(int* argc, char*** argv);

// Runs f on this rank; an error on any rank of several ends every rank (MPI_Abort), so none is
// left waiting in a collective.
template <class F>
auto on_every_rank(train::Comm& comm, F&& f) {
  try {
    return f();
  } catch (const std::exception& e) {
    if (comm.world() > 1) comm.abort(std::string("error: ") + e.what());
    throw;
  }
}

}  // namespace trainers::cli
