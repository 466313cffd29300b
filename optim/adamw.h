// AdamW over the flat parameter buffer, global-norm clipping, and finite checks.
//
// Update for parameter w with gradient g at step t (1-based), lr and weight decay wd:
//   m = b1 m + (1 - b1) g;  v = b2 v + (1 - b2) g^2
//   w -= lr * wd * w                       (decoupled; only parameters marked decay)
//   w -= lr * (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps)
// which is torch.optim.AdamW's order of operations. State (m, v) is stored flat, in the same
// layout as nn::ParameterSet, so per-parameter views are slices at each entry's offset (for a
// sharded optimizer, ZeRO-1: the offset minus shard_begin(), within the shard).
//
// Float32 op order per element (torch 1.13's _single_tensor_adamw on CPU; scalars are computed in
// double like Python floats, then rounded to float once; every product is rounded on its own
// unless written as fma):
//   w  = w * f32(1 - lr*wd)                         (decayed entries only; others have wd = 0)
//   m  = fma(g, f32(1 - b1), m * f32(b1))           (exp_avg.mul_(b1).add_(g, alpha=1-b1))
//   v  = fma(f32(1 - b2) * g, g, v * f32(b2))       (exp_avg_sq.mul_(b2).addcmul_(g, g, 1-b2);
//                                                     torch's CPU build fuses this one, too)
//   d  = sqrt(v) / f32(sqrt(1 - b2^t)) + f32(eps)
//   w  = w + (f32(-lr / (1 - b1^t)) * m) / d        (param.addcdiv_(m, d, value=-step_size))
// AdamWConfig and step() take doubles for that reason: torch's Python floats (0.9, 0.95, the LR)
// are not float32 values, and 1 - b1, 1 - lr*wd etc. must be formed from the same doubles for
// the results to agree bit for bit (tests/optim/test_adamw.cpp: all 438 x 3 values over 6 steps).
#pragma once
#include <cstdint>
#include <utility>
#include <vector>

#include "autograd/tensor.h"
#include "nn/module.h"

namespace optim {

struct AdamWConfig {
  double beta1 = 0.9, beta2 = 0.95, eps = 1e-8;
  bool decay_embeddings = false;  // decay model.embed_tokens.weight too
};

class AdamW {
 public:
  // Zero state m, v of params.numel() elements. Validates 0 <= beta1, beta2 < 1 and eps >= 0
  // (autograd::Error naming the field: "adamw.beta1: 1 must be in [0, 1)").
  AdamW(nn::ParameterSet& params, const AdamWConfig& cfg);
  // Sharded state (ZeRO-1): m, v cover only elements [begin, end) of the flat buffer, and step()
  // updates only those parameters (bit-identical to the same elements of an unsharded step).
  AdamW(nn::ParameterSet& params, const AdamWConfig& cfg, int64_t begin, int64_t end);
  // One update over every parameter of the shard (vectorised parallel pass over the flat buffers,
  // using the gradients in params.grads()); increments steps() first, so the first call uses t = 1.
  // Entries marked decay (plus model.embed_tokens.weight when cfg.decay_embeddings) are decayed.
  // lr and weight_decay are doubles so that schedule values reach the update unrounded.
  void step(double lr, double weight_decay);
  // step() decided on the parameters' device, for a step whose outcome the host reads later (no
  // host round trip on a GPU): the update applies only when the mean of `losses` (f32 [n], one
  // per micro-batch) and the norm in `norm8` (clip_grad_norm_queued) are finite; t advances only
  // then. `record` (u8, sizeof(StepRecord) bytes, on the device) receives {loss, norm, t, ok}.
  // Coefficients and update equal step()'s bit for bit. Unsharded optimizers only.
  void step_gated(double lr, double weight_decay, const autograd::Tensor& losses,
                  const autograd::Tensor& norm8, const autograd::Tensor& record);
  // Steps taken (t); after gated steps, read from the device (one small copy, a host wait).
  int64_t steps() const;
  // The caller read t from the StepRecord of the last gated step (nothing queued since): no sync.
  void steps_read(int64_t t);
  // Moves the moments to `device` (a copy); the parameters move with ParameterSet::to.
  void to(autograd::Device device);
  autograd::Device device() const { return m_.device(); }
  void set_steps(int64_t t);
  // The moments of elements [shard_begin(), shard_end()) (the whole buffer unless sharded).
  const autograd::Tensor& exp_avg() const { return m_; }
  const autograd::Tensor& exp_avg_sq() const { return v_; }
  int64_t shard_begin() const { return begin_; }
  int64_t shard_end() const { return end_; }
  bool sharded() const { return end_ - begin_ != p_.numel(); }
  int64_t state_bytes() const { return (m_.numel() + v_.numel()) * int64_t(sizeof(float)); }
  const AdamWConfig& config() const { return cfg_; }

 private:
  nn::ParameterSet& p_;
  AdamWConfig cfg_;
  autograd::Tensor m_, v_;
  std::vector<std::pair<int64_t, int64_t>> decay_ranges_;  // [begin, end) of decayed elements
  int64_t begin_ = 0, end_ = 0;
  mutable int64_t t_ = 0;
  // Gated steps: the device's GateState, the host's beta powers for t0_+1 .. t0_+kPowers, the
  // gated steps since t_ was last read (pending_), and whether gate_ must be (re)written from t_.
  static constexpr int64_t kPowers = 256;
  autograd::Tensor gate_, powers_;
  mutable int64_t t0_ = 0, pending_ = 0;
  mutable bool gate_fresh_ = false;
  void sync_steps() const;
};

// clip_grad_norm without the readback: the norm (double) goes to the first 8 bytes of norm8
// (u8 [>= 8] on the gradients' device), for AdamW::step_gated.
void clip_grad_norm_queued(nn::ParameterSet& params, double max_norm,
                           const autograd::Tensor& norm8);

// Global L2 norm of all gradients, sqrt(sum g^2) (accumulated in double, fixed chunk order, so
// bit-identical for any thread count); when max_norm > 0 and the norm exceeds it, scales every
// gradient by f32(max_norm / (norm + 1e-6)) (torch.nn.utils.clip_grad_norm_'s coefficient).
// Returns the norm before clipping. A non-finite norm leaves the gradients untouched (the caller
// checks it and skips the step). Runs as the grad_norm_clip kernel of the gradients' device
// (dispatch.h): on a GPU the norm, the test and the scaling all stay on the device, and the only
// synchronisation is the final 8-byte readback of the norm. The norm equals norm_from_chunks of
// grad_sq_chunks on the same device bit for bit (on the GPU it may differ from the CPU's in the
// last bits: the chunk partials are summed in a different order).
double clip_grad_norm(nn::ParameterSet& params, double max_norm);

// clip_grad_norm in pieces, for gradients sharded over processes (ZeRO-1). The sum of squares is
// taken over grad_norm_chunks(n) fixed chunks of the flat buffer, chunk c covering
// grad_norm_chunk_begin(n, c) .. grad_norm_chunk_begin(n, c + 1); grad_sq_chunks fills
// out[c - c0] with chunk c's partial for c in [c0, c1). The norm is sqrt of the partials of all
// chunks summed in chunk order from 0 — so shards that own whole chunks reproduce
// clip_grad_norm's norm bit for bit once the partials are exchanged.
int64_t grad_norm_chunks(int64_t n);
int64_t grad_norm_chunk_begin(int64_t n, int64_t c);
void grad_sq_chunks(const nn::ParameterSet& params, int64_t c0, int64_t c1, double* out);
double norm_from_chunks(const std::vector<double>& partials);
// Scales grads[begin, end) by f32(max_norm / (norm + 1e-6)) when norm is finite and exceeds
// max_norm > 0 (clip_grad_norm's coefficient).
void clip_grads(nn::ParameterSet& params, int64_t begin, int64_t end, double norm, double max_norm);

// True when every element of t is finite (no NaN, no +-Inf); parallel, deterministic.
bool all_finite(const autograd::Tensor& t);

}  // namespace optim
