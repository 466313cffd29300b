// Training configuration: one YAML schema (yaml-cpp) for model, stages, optimizer, schedule, data,
// training, checkpointing and logging, with strict validation ("file:line: key: what is wrong").
// Every key is one row of the table in fields.cpp.
#pragma once
#include <cstdint>
#include <map>
#include <set>
#include <string>
#include <vector>

#include "autograd/dispatch.h"

#include "nn/config.h"
#include "optim/adamw.h"
#include "optim/schedule.h"

namespace trainers::config {

// Thrown for every configuration problem; what() is "file:line: key.path: message".
struct ConfigError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

struct Stage {
  nn::ActMode mode;
  double until;  // fraction of the run's tokens at which this stage ends (last stage: 1)
};

struct DataConfig {
  std::vector<std::string> train, val;  // shard files or directories
  int64_t seq_len = 256;
  int64_t micro_batch = 8;
  int64_t grad_accum = 1;
  uint64_t seed = 1234;
};

struct PrepareConfig {  // how `bitnet prepare --config` / scripts/demo build the data
  std::vector<std::string> inputs;
  std::string out_dir;
  int vocab_size = 4096;
  double val_fraction = 0.05;
  bool brown_tags = false;
  std::string text_field = "text";     // JSON Lines member holding the text
  std::string tokenizer;               // a SentencePiece .model to use instead of training one
  int64_t shard_tokens = 100'000'000;  // tokens per shard
  int64_t sample_bytes = 100'000'000;  // the tokenizer's training sample
};

struct TrainingConfig {
  int64_t steps = 0;   // optimizer steps; or derived from tokens
  int64_t tokens = 0;  // total training tokens (used when steps == 0)
  uint64_t seed = 0;   // parameter init
  int64_t eval_every = 100;
  int64_t eval_batches = 8;
  int64_t log_every = 10;
  int64_t max_bad_steps = 5;  // consecutive non-finite steps before aborting
  std::string out_dir = "runs/default";
  int threads = 0;     // 0 = OpenMP default
  bool zero1 = false;  // shard the AdamW moments over the MPI ranks (ZeRO-1); no effect on one rank
  std::string device = "cpu";      // "cpu", "cuda" or "cuda:N" (autograd::parse_device)
  std::string precision = "auto";  // float GEMMs: auto (cpu: fp32, cuda: bf16), fp32, tf32, bf16
};

struct CheckpointConfig {
  int64_t every = 0;  // steps; 0 = only at the end
  int64_t keep = 3;
};

struct Config {
  std::string path;  // file it came from
  nn::ModelConfig model;
  std::vector<Stage> stages;
  optim::AdamWConfig adamw;
  double grad_clip = 1.0;
  optim::Schedule schedule;  // total/switch resolved by resolve_steps()
  double lr_switch = 0.5;    // fraction of steps where the LR/WD stage switches
  DataConfig data;
  PrepareConfig prepare;
  TrainingConfig training;
  CheckpointConfig checkpoint;
  std::string resolved_yaml;  // the config after overrides, as YAML text

  int64_t tokens_per_step(int world = 1) const {
    return data.micro_batch * data.grad_accum * data.seq_len * world;
  }
  // Fixes schedule.total / switch_step from training.steps or training.tokens.
  void resolve_steps(int world = 1);
  // Activation mode in force at step t of `total` (stages by token fraction).
  nn::ActMode mode_at(int64_t t) const;
  // Step at which stage i starts.
  int64_t stage_start(size_t i) const;
};

// Loads and validates; overrides are "key.path=value" (YAML scalar or flow sequence).
// Where a run computes and with which GEMM arithmetic: training.device and training.precision
// resolved (auto: fp32 on the CPU, bf16 on a GPU) and checked — the device exists in this build
// and process ("training.device: cuda: no CUDA device (...)"), the precision is one it computes,
// one process per GPU (multi-GPU data parallelism is not implemented yet).
struct Placement {
  autograd::Device device;
  autograd::GemmPrecision precision = autograd::GemmPrecision::F32;
  std::string str() const;  // "cuda:0, bf16 GEMMs"
};
Placement resolve_placement(const Config& c, int world = 1);

Config load_config(const std::string& path, const std::vector<std::string>& overrides = {});
// The keys of `section` ("model") that the YAML file at `path` or an override ("model.x=...")
// sets, as full keys ("model.d_model"). Throws ConfigError when the file does not parse.
std::set<std::string> keys_set(const std::string& path, const std::vector<std::string>& overrides,
                               const std::string& section);
Config parse_config(const std::string& yaml_text, const std::string& name,
                    const std::vector<std::string>& overrides = {});

// Settings that must agree between a checkpoint's config and the resuming one (the keys marked
// "must match" in the table: model, stages, optimizer, schedule shape, seq_len, seeds; and the
// global batch), each as "key: checkpoint X, config Y". The global batch is micro_batch x
// grad_accum x ranks (saved_world / now_world): the split may differ (another rank count or
// accumulation), the loader re-shards the same samples.
std::vector<std::string> config_mismatches(const Config& saved, const Config& now,
                                           int64_t saved_world = 1, int64_t now_world = 1);

// The table of keys as Markdown (key, default, on resume, meaning): docs/TRAINING.md's config
// reference, printed by `bitnet config --keys`.
std::string keys_markdown();

}  // namespace trainers::config
