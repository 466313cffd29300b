// BitLinear as one tape node over integer codes: y = Q(x) T(W)^T through the exact integer GEMM.
//
// Forward (SPEC §2): the input quantizer's INT8/INT4 codes cx (per-row multiplier s_x, optional
// top-K first) and the ternary codes cw of the latent weight (s_w = 1 / max(mean|W|, 1e-5)) meet
// in quant::igemm: y[m, n] = (sum_k cx[m, k] cw[n, k]) * (1/s_x[m]) * (1/s_w), the sum exact in
// int32. The float path (act_quant -> ternary -> matmul) computes the same products in fp32 on
// the dequantized values c / s; the two agree to fp32 rounding.
//
// Backward (straight-through on both quantizers, so the matmul's own backward on the quantized
// operands, SPEC §2):  dx += dy · Wq,   dW += dy^T · Xq,   with Xq = cx / s_x and Wq = cw / s_w
// rebuilt in transient buffers from what the node saved (int8 codes and s_x; W itself, which does
// not change before the backward). Nothing fp32 of size [rows, in] or [out, in] is kept per node.
#pragma once
#include <cstdint>
#include <memory>

#include "autograd/tape.h"
#include "quant/quantizers.h"

namespace quant {

// The quantized input of the projections that read the same x (q/k/v; gate/up), computed once.
struct QuantizedAct {
  autograd::GradRef x;    // gradient slot of the input x[rows, cols]: receives dx (STE); the
                          // value itself is not kept
  autograd::Shape shape;  // of x
  ActSpec spec;
  int64_t rows = 0, cols = 0, ld = 0;  // codes row stride ld = 4 * ceil(cols / 4)
  autograd::Tensor codes;              // i8 [rows, ld] (padding = 0), on x's device
  autograd::Tensor mult, scale;        // f32 [rows]: s and 1/s (dequantized value = c / s)
  const int8_t* code_data() const { return codes.data<int8_t>(); }
  // Xq[rows, cols] = c / s, built by the first backward that needs it and shared by the other
  // projections reading this input (freed with the last of their nodes).
  const autograd::Tensor& dequantized() const;
  // The same values rounded to bf16 (the backward under GEMM precision bf16), built once likewise.
  const autograd::Tensor& dequantized_bf16() const;

 private:
  mutable autograd::Tensor xq_, xq16_;
};

// True when spec yields integer codes for the integer GEMM (INT8, INT4 absmean or INT4 absmax,
// with or without top-K; quantizers.h integer_codes).
bool has_integer_codes(const ActSpec& spec);

// x[..., cols] -> its codes under spec (must satisfy has_integer_codes). zeros_out (optional)
// += the number of zero codes, counted in the same pass.
std::shared_ptr<const QuantizedAct> quantize_act(const autograd::Variable& x, const ActSpec& spec,
                                                 int64_t* zeros_out = nullptr);

// qa[rows, in], w[out, in] -> y[rows, out] (rows as qa->x's leading dims). Records a node when
// x or w requires a gradient; backward as in the file comment.
autograd::Variable bitlinear(const std::shared_ptr<const QuantizedAct>& qa,
                             const autograd::Variable& w);

}  // namespace quant
