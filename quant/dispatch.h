// The per-device kernel table of the quantizer ops (STE nodes, the integer BitLinear).
//
// Same scheme as autograd/dispatch.h: quant/ste.cpp and quant/bitlinear.cpp check operands and
// call `quant::kernels_for(device)`; the CPU entries (quant/cpu/table.cpp) wrap the fused
// raw-pointer kernels of quantizers.h and igemm.h; another device registers its own table.
// Scalars that a later kernel consumes (the ternary statistic a) stay on the device as
// one-element f32 tensors, so a step needs no host round trip. Functions returning int64_t
// return a zero count (sparsity probes) only when `count` is set; that count is a host value.
#pragma once
#include <cstdint>

#include "autograd/dispatch.h"
#include "quant/igemm.h"
#include "quant/quantizers.h"

namespace quant {

struct Kernels {
  const char* device = "?";
  // x[rows, cols] -> y dequantized under spec (top-K, then the quantizer), per row
  int64_t (*act_quantize)(const ActSpec& spec, const autograd::Tensor& x, const autograd::Tensor& y,
                          bool count) = nullptr;
  // number of exact zeros of x
  int64_t (*count_zeros)(const autograd::Tensor& x) = nullptr;
  // a[0] = max(mean|W|, 1e-5); wq = clamp(round(W/a), -1, 1) a (f32) and/or codes (i8), either
  // may be undefined
  void (*ternary)(const autograd::Tensor& w, const autograd::Tensor& wq,
                  const autograd::Tensor& codes, const autograd::Tensor& a) = nullptr;
  // wq from a known a (a one-element tensor)
  void (*ternary_apply)(const autograd::Tensor& w, const autograd::Tensor& a,
                        const autograd::Tensor& wq) = nullptr;
  // integer codes of x[rows, cols] into codes i8 [rows, ld] (padding 0), mult[r] = s, scale[r] =
  // 1/s
  int64_t (*act_codes)(const ActSpec& spec, const autograd::Tensor& x,
                       const autograd::Tensor& codes, const autograd::Tensor& mult,
                       const autograd::Tensor& scale, bool count) = nullptr;
  // y[rows, cols] = codes[r, k] / mult[r]   (codes i8 [rows, ld]; y f32, or bf16: that f32 value
  // rounded to nearest even)
  void (*dequantize)(const autograd::Tensor& codes, const autograd::Tensor& mult,
                     const autograd::Tensor& y) = nullptr;
  // ternary codes i8 [N, K] -> the device's packed weight layout
  PackedTernary (*pack_ternary)(const autograd::Tensor& codes) = nullptr;
  // y[m, n] = (sum_k xc[m, k] cw[n, k]) * (xscale[m] * (1/(1/a)))   (exact int32 sum); y f32, or
  // bf16 (that value rounded) on a device with bf16 activations (autograd::activation_dtype)
  void (*ternary_gemm)(const autograd::Tensor& xcodes, int64_t cols, const PackedTernary& w,
                       const autograd::Tensor& xscale, const autograd::Tensor& a,
                       const autograd::Tensor& y) = nullptr;
};

void register_kernels(autograd::DeviceType type, const Kernels* k);
const Kernels& kernels_for(autograd::Device d);
const Kernels& cpu_kernels();

}  // namespace quant

// BN_QKERNEL(device, entry)(args...): calls the `entry` kernel of the device's quant table.
#define BN_QKERNEL(dev, entry) \
  (::autograd::detail::need_kernel(::quant::kernels_for(dev).entry, #entry, (dev)))
