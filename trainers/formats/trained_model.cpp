// Opening a trained model: model.safetensors (model_io.h) or an HDF5 checkpoint (checkpoint.h).
#include "trainers/formats/trained_model.h"

#include <filesystem>

#include "autograd/error.h"
#include "autograd/safetensors.h"
#include "trainers/config/config.h"
#include "trainers/formats/checkpoint.h"
#include "trainers/formats/hf_import.h"
#include "trainers/formats/model_io.h"

namespace trainers::formats {
using autograd::NamedBlob;
using config::Config;
using config::parse_config;

TrainedModel load_trained_model(const std::string& path_in) {
  std::string path = path_in;
  if (is_hf_dir(path)) return load_hf_model(path);
  if (std::filesystem::is_directory(path)) {
    // A run directory: its model.safetensors, else its newest checkpoint (a run still going or
    // killed).
    if (std::filesystem::exists(path + "/model.safetensors"))
      path += "/model.safetensors";
    else if (!list_checkpoints(path + "/checkpoints").empty())
      path = resolve_checkpoint(path);
    else if (!list_checkpoints(path).empty())
      path = resolve_checkpoint(path);
    else
      autograd::fail("load_trained_model: no model file at '", path,
                     "/model.safetensors' and no checkpoint in '", path, "/checkpoints'");
  }
  BN_CHECK(std::filesystem::exists(path), "load_trained_model", "no model file at '", path, "'");
  if (is_hdf5_file(path)) return load_trained_checkpoint(path);
  const autograd::SafetensorsFile f = autograd::read_safetensors(path);
  auto it = f.metadata.find("config");
  BN_CHECK(it != f.metadata.end(), "load_trained_model", path,
           ": no 'config' metadata (not written by bitnet train?)");
  TrainedModel tm;
  tm.config_yaml = it->second;
  const Config cfg = parse_config(tm.config_yaml, path + " (embedded config)");
  tm.model = std::make_unique<nn::BitNetLM>(cfg.model, 0);
  load_model(path, *tm.model, nullptr);
  if (auto m = f.metadata.find("mode"); m != f.metadata.end())
    tm.model->set_mode(nn::parse_mode(m->second));
  if (auto s = f.metadata.find("step"); s != f.metadata.end()) tm.step = std::stoll(s->second);
  if (auto s = f.metadata.find("hf_source"); s != f.metadata.end()) tm.hf_source = s->second;
  if (const NamedBlob* t = f.find("tokenizer.model"))
    tm.tokenizer_proto.assign(t->bytes.begin(), t->bytes.end());
  return tm;
}

TrainedModel load_trained_checkpoint(const std::string& path) {
  const CheckpointInfo info = read_checkpoint_info(path);
  Config cfg;
  try {
    cfg = parse_config(info.config_yaml, path + " (stored config)");
  } catch (const std::exception& e) {
    throw CheckpointError(path + ": the stored config does not parse: " + e.what());
  }
  TrainedModel tm;
  tm.model = std::make_unique<nn::BitNetLM>(cfg.model, 0);
  load_checkpoint(path, *tm.model, nullptr);
  try {
    if (!info.state.mode.empty()) tm.model->set_mode(nn::parse_mode(info.state.mode));
  } catch (const std::exception& e) {
    throw CheckpointError(path + ": /state mode: " + e.what());
  }
  tm.config_yaml = info.config_yaml;
  tm.tokenizer_proto = info.tokenizer;
  tm.step = info.state.step;
  return tm;
}

}  // namespace trainers::formats
