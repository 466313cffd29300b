// Straight-through-estimator tape nodes over the quantizer kernels (docs/SPEC.md §2): act_quant,
// ternary.
//
// Forward runs the fused kernel of quantizers.h once into a fresh output tensor; backward passes
// the gradient through unchanged (identity, to every element, top-K-masked ones included). No
// gradient flows through a scale.
#pragma once
#include <cstdint>

#include "autograd/tape.h"
#include "quant/quantizers.h"

namespace quant {

// x[..., cols] -> y[..., cols]: spec applied per row (optional top-K, then INT8/INT4/FP4),
// y dequantized. Backward (STE): dx += dy for all elements.
// If !spec.active(), returns x itself (no node, no copy).
// zeros_out (optional): += the number of exact zeros of y, counted inside the forward pass
// (for an inactive spec: the zeros of x).
autograd::Variable act_quant(const autograd::Variable& x, const ActSpec& spec,
                             int64_t* zeros_out = nullptr);

// w[...] -> Wq[...] per-tensor ternary absmean (ternary_absmean): a = max(mean|W|, 1e-5), s = 1/a,
// Wq = clamp(round(W s), -1, 1) / s. Backward (STE): dW += dWq. scale_out (optional) receives a.
autograd::Variable ternary(const autograd::Variable& w, float* scale_out = nullptr);
// Number of exact zeros of x (f32), counted on x's device (the count is read back).
int64_t count_zeros(const autograd::Tensor& x);

}  // namespace quant
