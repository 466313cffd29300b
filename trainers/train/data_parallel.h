// Gradient synchronisation of data-parallel training (shared by the trainer and `bitnet bench`):
// bucketed non-blocking all-reduce overlapping the backward pass, or ZeRO-1 (bucketed non-blocking
// reduce-scatter of the gradients, sharded clipping and AdamW, all-gather of the parameters).
#pragma once
#include <cstdint>
#include <vector>

#include "autograd/tape.h"
#include "nn/model.h"
#include "optim/adamw.h"
#include "trainers/train/comm.h"

namespace trainers::train {

// Boundaries (world + 1 entries, 0 .. n) of the ZeRO-1 slices of a flat buffer of n elements: every
// slice is a run of whole chunks of optim::grad_norm_chunks(n), so the sharded clipping norm equals
// the unsharded one bit for bit. With more ranks than chunks (64) the last ranks own nothing.
std::vector<int64_t> zero1_bounds(int64_t n, int world);

class DataParallel {
 public:
  // zero1: shard the optimizer state (the caller builds its AdamW over [shard_begin, shard_end)).
  // Without zero1 every rank owns the whole buffer.
  DataParallel(nn::BitNetLM& model, Comm& comm, bool zero1);
  bool zero1() const { return zero1_; }
  int64_t shard_begin() const { return begin_; }
  int64_t shard_end() const { return end_; }
  const std::vector<int64_t>& counts() const { return counts_; }  // ZeRO-1 slice length per rank

  // Call right before the backward pass of the last micro-batch of a step: on several ranks,
  // installs the tape hook that starts each bucket's all-reduce (ZeRO-1: reduce-scatter) as soon as
  // the backward has completed it. Uses the model's block marks of the forward just run.
  void before_last_backward(autograd::Tape& tape);
  // After the last backward: completes the gradient reduction (mean over ranks; under ZeRO-1 only
  // this rank's slice is reduced) and returns the mean loss over micro-batches and ranks.
  double reduce(autograd::Tape& tape, double loss_sum, int64_t accum);
  // Then: the global gradient norm (before clipping), and clipping of the gradients this rank
  // updates (all, or its ZeRO-1 slice) when it exceeds grad_clip > 0.
  double clip_grad_norm(double grad_clip);
  // After the optimizer step (ZeRO-1): all-gathers the updated parameter slices.
  void after_step();

 private:
  struct Bucket {
    int64_t begin, end;
    size_t mark;  // index into BitNetLM::block_marks(); SIZE_MAX = after the whole backward
  };
  void make_buckets();
  void start_bucket(size_t i);

  nn::BitNetLM& model_;
  Comm& comm_;
  const bool zero1_;
  int64_t begin_ = 0, end_ = 0;
  std::vector<int64_t> bounds_, counts_;  // ZeRO-1: slice boundaries (world + 1) and lengths
  std::vector<Bucket> buckets_;
  size_t next_bucket_ = 0;
  std::vector<int64_t> bucket_counts_;  // scratch: one bucket's part per rank
  std::vector<float> slice_;            // ZeRO-1 reduce-scatter output
  std::vector<double> partials_;        // ZeRO-1 norm chunk partials
};

}  // namespace trainers::train
