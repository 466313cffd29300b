// The per-device kernel table of the optimizer: AdamW over the flat buffers, norms, clipping.
//
// Same scheme as autograd/dispatch.h: optim/adamw.cpp calls `optim::kernels_for(device)`; the CPU
// entries are in optim/cpu/adamw.cpp; another device registers its own table.
#pragma once
#include <cstdint>
#include <utility>
#include <vector>

#include "autograd/dispatch.h"

namespace optim {

// Per-step float32 coefficients, each rounded once from its double value (see adamw.h).
struct AdamCoeffs {
  float decay;     // 1 - lr*wd
  float b1, a1;    // beta1, 1 - beta1
  float b2, a2;    // beta2, 1 - beta2
  float bc2_sqrt;  // sqrt(1 - beta2^t)
  float eps;
  float neg_step;  // -lr / (1 - beta1^t)
};
// A gated AdamW step (AdamW::step_gated) is decided on the parameters' device, so that a GPU
// step needs no host round trip. The verdict and the coefficients live in a GateState there;
// each step leaves a StepRecord for the host to read at the next logged step.
struct GateState {
  int64_t t;   // AdamW steps taken (the t of the last applied update)
  int32_t ok;  // the current step's loss and gradient norm are finite: its update applies
  int32_t pad;
  AdamCoeffs c;  // the current step's coefficients (for t when ok)
};
struct StepRecord {
  double loss;  // mean of the step's micro-batch losses
  double norm;  // gradient norm before clipping
  int64_t t;    // AdamW steps after this step (unchanged when it was skipped)
  int32_t ok;   // 1: applied, 0: skipped (non-finite loss or norm)
  int32_t pad;
};

// Sorted, disjoint [begin, end) ranges of flat offsets that take the decoupled weight decay.
using DecayRanges = std::vector<std::pair<int64_t, int64_t>>;

// Chunk layout of the gradient norm (adamw.h: grad_norm_chunks / grad_norm_chunk_begin).
int64_t grad_norm_chunks(int64_t n);
int64_t grad_norm_chunk_begin(int64_t n, int64_t c);

struct Kernels {
  const char* device = "?";
  // For flat offsets i in [begin, end) (m, v indexed i - begin), torch.optim.AdamW's order:
  //   w = w*decay (in decay ranges);  m = fma(g, a1, m*b1);  v = fma(a2*g, g, v*b2);
  //   w = w + (neg_step*m) / (sqrt(v)/bc2_sqrt + eps)
  void (*adamw)(const autograd::Tensor& w, const autograd::Tensor& g, const autograd::Tensor& m,
                const autograd::Tensor& v, int64_t begin, int64_t end, const DecayRanges& decay,
                const AdamCoeffs& c) = nullptr;
  // out[k] (host) = sum of g^2 over norm chunk c0 + k, k < c1 - c0, in double, fixed order
  void (*grad_sq_chunks)(const autograd::Tensor& g, int64_t c0, int64_t c1, double* out) = nullptr;
  // The whole clip_grad_norm on g's device, with nothing read back to the host:
  //   norm = sqrt(sum_i g_i^2), in double: the grad_sq_chunks partials of chunks 0 .. C-1
  //          (C = grad_norm_chunks(n)) summed in chunk order, as norm_from_chunks;
  //   if norm is finite and max_norm > 0 and norm > max_norm:  g *= f32(max_norm / (norm + 1e-6)).
  // g: f32 [n]; norm_out: a tensor of >= 8 bytes (any dtype, e.g. u8 [8]) on g's device whose
  // first 8 bytes receive the norm as a double. On a GPU it is queued on the device's stream (no
  // synchronisation); the caller reads norm_out back once.
  void (*grad_norm_clip)(const autograd::Tensor& g, double max_norm,
                         const autograd::Tensor& norm_out) = nullptr;
  // g[begin, end) *= s
  void (*scale_range)(const autograd::Tensor& g, int64_t begin, int64_t end, float s) = nullptr;
  // number of elements with !isfinite
  int64_t (*count_nonfinite)(const autograd::Tensor& t) = nullptr;
  // The verdict of a gated step, on the device: loss = (sum over a of double(losses[a])) / n
  // (losses f32 [n]), norm = the double in norm8 (grad_norm_clip's output), ok = both finite;
  // k = state.t - t0; when ok: state.t += 1, state.c = base with bc2_sqrt = f32(sqrt(1 -
  // powers[2k+1])) and neg_step = f32(-(lr / (1 - powers[2k]))), where powers (f64 pairs in a u8
  // tensor) hold beta1^(t0+1+k), beta2^(t0+1+k) from the host's std::pow (the host keeps k in
  // range); record (u8, one StepRecord) = {loss, norm, state.t, ok}. Nothing read back.
  void (*adamw_gate)(const autograd::Tensor& losses, const autograd::Tensor& norm8,
                     const autograd::Tensor& powers, int64_t t0, double lr, const AdamCoeffs& base,
                     const autograd::Tensor& state, const autograd::Tensor& record) = nullptr;
  // adamw with the coefficients state.c, a no-op unless state.ok (both read on the device)
  void (*adamw_gated)(const autograd::Tensor& w, const autograd::Tensor& g,
                      const autograd::Tensor& m, const autograd::Tensor& v, int64_t begin,
                      int64_t end, const DecayRanges& decay,
                      const autograd::Tensor& state) = nullptr;
};

void register_kernels(autograd::DeviceType type, const Kernels* k);
const Kernels& kernels_for(autograd::Device d);
const Kernels& cpu_kernels();

}  // namespace optim

// BN_OKERNEL(device, entry)(args...): calls the `entry` kernel of the device's optim table.
#define BN_OKERNEL(dev, entry) \
  (::autograd::detail::need_kernel(::optim::kernels_for(dev).entry, #entry, (dev)))
