// What several subcommands share: the config file + --set options, the communicator.
#include "trainers/cli/command.h"

namespace trainers::cli {

void add_config_args(CLI::App* sub, ConfigArgs& a, const std::string& set_help) {
  sub->add_option("config", a.file, "YAML config file")->required()->check(CLI::ExistingFile);
  sub->add_option("--set", a.sets, set_help);
}

void add_device_args(CLI::App* sub, ConfigArgs& a) {
  sub->add_option("--device", a.device,
                  "where to compute: cpu, cuda or cuda:N (= --set training.device=...)");
  sub->add_option("--precision", a.precision,
                  "float GEMMs: auto, fp32, tf32 or bf16 (= --set training.precision=...)");
}

std::vector<std::string> ConfigArgs::overrides() const {
  std::vector<std::string> o = sets;
  if (!device.empty()) o.push_back("training.device=" + device);
  if (!precision.empty()) o.push_back("training.precision=" + precision);
  return o;
}

std::unique_ptr<train::Comm> make_comm(int* argc, char*** argv) {
  if (train::launched_by_mpi()) return train::make_mpi_comm(argc, argv);
  return std::make_unique<train::LocalComm>();
}

}  // namespace trainers::cli
