// Training checkpoints (HDF5): parameters, AdamW state, trainer/loader state, config and tokenizer
// in one checksummed file, written atomically, rotated, and checked before a bit-exact resume.
//
// Layout, atomicity and compatibility rules: docs/CHECKPOINTS.md. Only the checkpoint*.cpp files
// of this folder touch HDF5: checkpoint_write.cpp writes, checkpoint.cpp reads and loads,
// checkpoint_files.cpp names, lists, rotates and seals files, checkpoint_common.{h,cpp} is shared.
#pragma once
#include <cmath>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

#include "data/tokens.h"
#include "nn/model.h"
#include "optim/adamw.h"
#include "trainers/config/config.h"

namespace trainers::formats {

// Every checkpoint problem (unreadable, corrupted, incompatible); what() names the file.
struct CheckpointError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

inline constexpr int64_t kCheckpointFormatVersion = 1;

// The arithmetic of a process beyond the config: the BitLinear route and the fp32 GEMM library
// with its kernel. Processes that differ here train the same config to fp32 rounding only, not bit
// for bit (docs/CHECKPOINTS.md). Empty fields: not recorded (a checkpoint that predates them).
struct Numerics {
  std::string bitlinear_route;  // quant::to_string(quant::bitlinear_route()): "integer-vnni",
                                // "integer-portable", "float"
  std::string gemm_backend;     // autograd::kernels::gemm_backend(): "openblas" or "eigen"
  std::string
      gemm_core;  // autograd::kernels::gemm_core(): OpenBLAS's kernel ("Haswell", ...) or "eigen"
};
// This process's numerics for `model` (BitNetLM::set_integer_gemm(false) forces the float route).
Numerics current_numerics(const nn::BitNetLM& model);
// ... for the model placed on `device` (a GPU: "integer-cuda", "cublas", the GEMM precision).
Numerics current_numerics(const nn::BitNetLM& model, autograd::Device device);
// One stderr line per fact that differs, naming both values ("warning: the checkpoint was written
// with BitLinear route integer-vnni, this run takes float: ..."; a "note:" between the two integer
// routes, whose sums are equal); facts `saved` does not record are skipped.
std::vector<std::string> numerics_mismatches(const Numerics& saved, const Numerics& now);

// The trainer's state besides the tensors: what the loop needs to continue bit for bit, plus the
// running statistics that make the resumed run's output read as one run.
struct TrainState {
  int64_t step = 0;            // optimizer steps done = index of the next step to run
  int64_t stage = 0;           // index of the stage in force for step - 1 (0 at step 0)
  std::string mode;            // that stage's activation mode (informational)
  uint64_t loader_cursor = 0;  // data::Loader::cursor(): samples drawn so far
  uint64_t training_seed = 0;  // parameter init seed (the trainer's only other RNG input)
  uint64_t data_seed = 0;      // loader permutation seed
  int64_t world = 1;           // ranks the run used
  int64_t threads = 0;  // OpenMP threads per rank (GEMM blocking, hence rounding, depends on it)
  int64_t train_tokens = 0;             // size of the training data
  uint64_t train_fingerprint = 0;       // data_fingerprint() of the training data
  int64_t skipped = 0, bad_in_row = 0;  // non-finite steps: total, and consecutive at `step`
  double first_loss = 0;                // TrainResult::first_loss so far (0 = none yet)
  double window_loss = 0;               // sum / count of the current log window
  int64_t window_n = 0;
  double val_loss_at_stage2 = NAN;  // TrainResult::val_loss_at_stage2 so far
  double elapsed_s = 0;             // training time before this checkpoint (all sessions)
  int64_t metrics_bytes = 0;        // length of metrics.jsonl that belongs to steps < step
  Numerics numerics;  // of the process that wrote it; save_checkpoint fills empty fields with
                      // current_numerics()
};

// Facts about the current run checked against the checkpoint's: the training data must be the same;
// the rank count may differ (the global batch micro_batch x grad_accum x world must not).
struct RunFacts {
  int64_t world = 1;
  int64_t train_tokens = 0;
  uint64_t train_fingerprint = 0;
};

// Cheap fingerprint of a token dataset: its size and a hash of its first and last 2^20 tokens.
uint64_t data_fingerprint(const data::TokenDataset& ds);

// Writes one checkpoint file atomically: path + ".tmp" is written (every dataset chunked with
// Fletcher32 and carrying a 64-bit checksum attribute), flushed (H5Fflush + fsync), renamed to
// path, then the directory is fsynced. Throws CheckpointError (and removes the .tmp) on failure.
void save_checkpoint(const std::string& path, const nn::BitNetLM& model, const optim::AdamW& opt,
                     const TrainState& state, const std::string& config_yaml,
                     const std::string& tokenizer);

// Everything in a checkpoint except the tensors.
struct CheckpointInfo {
  std::string path;
  int64_t format_version = 0;
  TrainState state;
  int64_t optim_steps = 0;
  std::string config_yaml;  // the resolved config of the run that wrote it
  std::string tokenizer;    // SentencePiece model bytes (empty if the run had none)
};

// Opens and verifies the header (HDF5 signature, format name and version, metadata checksums),
// reads the state, config and tokenizer. Clear CheckpointError for a missing, empty, non-HDF5,
// truncated or corrupted file.
CheckpointInfo read_checkpoint_info(const std::string& path);

// Loads a checkpoint into model (and opt: moments and step count, when given). Before anything is
// copied it checks every parameter name and shape, and when `now` is given the config
// compatibility (config::config_mismatches) and the run facts; every problem is listed, by name, in
// one CheckpointError. Data reads verify Fletcher32 and the per-dataset checksum.
CheckpointInfo load_checkpoint(const std::string& path, nn::BitNetLM& model, optim::AdamW* opt,
                               const config::Config* now = nullptr,
                               const RunFacts* facts = nullptr);

// run_dir/checkpoints/step-<9 digits>.h5
std::string checkpoint_path(const std::string& run_dir, int64_t step);
// Complete checkpoints (step-*.h5; *.tmp ignored) in `dir`, oldest first, as (step, path).
std::vector<std::pair<int64_t, std::string>> list_checkpoints(const std::string& dir);
// A checkpoint file as given, or the newest complete one of RUN_DIR/checkpoints (or of a
// checkpoints directory itself). Throws CheckpointError when there is none.
std::string resolve_checkpoint(const std::string& run_dir_or_file);
// Deletes the oldest checkpoints of `dir` beyond `keep` and leftover step-*.h5.tmp files.
void rotate_checkpoints(const std::string& dir, int64_t keep);
// bitnet-hash64-v1 of n bytes (the per-dataset "checksum" attribute; seed 0 there).
uint64_t checkpoint_hash(const void* p, size_t n, uint64_t seed = 0);
// Appends the integrity trailer (magic, length, content hash: docs/RELIABILITY.md) to a complete
// HDF5 file; save_checkpoint does this before the rename. Errors name `name`.
void seal_checkpoint_file(const std::string& path, const std::string& name);
// Checks the trailer and the content hash; throws CheckpointError naming the file (truncated,
// no trailer, hash mismatch). Every read does this before HDF5 sees the file.
void verify_checkpoint_file(const std::string& path);
// True when the file starts with the HDF5 signature.
bool is_hdf5_file(const std::string& path);

}  // namespace trainers::formats
