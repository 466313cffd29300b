// Model files (safetensors): parameters by HF name, optional AdamW moments, and metadata.
#pragma once
#include <map>
#include <memory>
#include <string>

#include "nn/model.h"
#include "optim/adamw.h"

namespace trainers {

// Writes parameters ("<name>"), and when opt is given "optim.exp_avg.<name>" /
// "optim.exp_avg_sq.<name>" plus metadata "optim.steps"; the SentencePiece model bytes, when
// given, as U8 tensor "tokenizer.model". Written to path + ".tmp", then renamed.
void save_model(const std::string& path, const nn::BitNetLM& model, const optim::AdamW* opt,
                std::map<std::string, std::string> metadata, const std::string& tokenizer_proto = {});
// Loads parameters (and moments when opt is given and the file has them; returns whether it did).
// Every missing, unexpected or mis-shaped tensor is reported, all in one error.
bool load_model(const std::string& path, nn::BitNetLM& model, optim::AdamW* opt);

// A trained model ready for inference/export: the model (mode = the mode it was saved in), its
// resolved config YAML and the tokenizer bytes (empty if the run had none).
struct TrainedModel {
  std::unique_ptr<nn::BitNetLM> model;
  std::string config_yaml;
  std::string tokenizer_proto;
  int64_t step = 0;
};
// Opens a model file written by the trainer (model.safetensors), an HDF5 training checkpoint
// (checkpoint.h; mode = the mode of its last step), or a run directory: its model.safetensors, or
// when that is absent its newest checkpoint. Errors name the path and what is missing.
TrainedModel load_trained_model(const std::string& path);

}  // namespace trainers
