// A trained model opened for inference or export, from a model file, a checkpoint or a run
// directory.
#pragma once
#include <cstdint>
#include <memory>
#include <string>

#include "nn/model.h"

namespace trainers::formats {

// A trained model ready for inference/export: the model (mode = the mode it was saved in), its
// resolved config YAML and the tokenizer bytes (empty if the run had none).
struct TrainedModel {
  std::unique_ptr<nn::BitNetLM> model;
  std::string config_yaml;
  std::string tokenizer_proto;
  int64_t step = 0;
  // The Hugging Face directory the parameters were imported from (load_hf_model, or a model file
  // trained with --init-from HF_DIR: metadata "hf_source"); "" otherwise.
  std::string hf_source;
};
// Opens a model file written by the trainer (model.safetensors), an HDF5 training checkpoint
// (checkpoint.h; mode = the mode of its last step), a Hugging Face BitNetForCausalLM directory
// (a directory with config.json: hf_import.h's load_hf_model), or a run directory: its
// model.safetensors, or when that is absent its newest checkpoint. Errors name the path and what is
// missing.
TrainedModel load_trained_model(const std::string& path);

// load_trained_model for a checkpoint file: parameters, mode, step, config and tokenizer.
TrainedModel load_trained_checkpoint(const std::string& path);

}  // namespace trainers::formats
