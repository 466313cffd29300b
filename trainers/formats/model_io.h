// Model files (safetensors): parameters by HF name, optional AdamW moments, and metadata.
#pragma once
#include <map>
#include <string>

#include "nn/model.h"
#include "optim/adamw.h"

namespace trainers::formats {

// Writes parameters ("<name>"), and when opt is given "optim.exp_avg.<name>" /
// "optim.exp_avg_sq.<name>" plus metadata "optim.steps"; the SentencePiece model bytes, when
// given, as U8 tensor "tokenizer.model". Written to path + ".tmp", then renamed.
void save_model(const std::string& path, const nn::BitNetLM& model, const optim::AdamW* opt,
                std::map<std::string, std::string> metadata,
                const std::string& tokenizer_proto = {});
// Loads parameters (and moments when opt is given and the file has them; returns whether it did).
// Every missing, unexpected or mis-shaped tensor is reported, all in one error.
bool load_model(const std::string& path, nn::BitNetLM& model, optim::AdamW* opt);

}  // namespace trainers::formats
