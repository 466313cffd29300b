// Quantizer kernels of docs/SPEC.md §2/§4: fused per-row passes producing dequantized values,
// codes, scales.
//
// Conventions shared by every kernel (they match the BitNet reference code op for op, so that
// results agree bit for bit with PyTorch):
//   * round = round-half-to-even (std::nearbyint under the default rounding mode), never
//   std::round;
//   * statistics are clamped below at kEps = 1e-5;
//   * activations are quantized per row (token) of a row-major [rows, cols] matrix, weights per
//     tensor;
//   * each kernel computes a multiplier s, codes c = clamp(round(x * s), lo, hi) and the
//     dequantized value y = c / s; `scales` (if non-null) receives 1/s per row, so that
//     y ≈ c * scale (used by integer GEMMs and packed exports);
//   * a multiplier written C / stat with a constant numerator (127/g, 6/g, m/g) is evaluated as
//     PyTorch evaluates `number / tensor` (= tensor.reciprocal() * number): fl(fl(1/stat) * C);
//     INT4's sqrt7/b is a single division (see quantizers.cpp and tests/reference/bitnet_ref.py).
// Any output pointer may be null when that output is not needed.
#pragma once
#include <cstdint>
#include <string>

namespace quant {

inline constexpr float kEps = 1e-5f;
inline constexpr float kSqrt7 = 2.6457513110645906f;  // sqrt(7) rounded to fp32

// Ternary absmean, per tensor:  a = max(mean|W|, 1e-5), s = 1/a, c = clamp(round(W s), -1, 1),
// Wq = c / s. Returns a. mean|W| is accumulated in double in a fixed order.
float ternary_absmean(const float* w, int64_t n, float* wq, int8_t* codes);
// The code pass of ternary_absmean for a known a (its return value): same codes and Wq.
void ternary_apply(const float* w, int64_t n, float a, float* wq, int8_t* codes);

// INT8 absmax, per row:  g = max(max_j |x_j|, 1e-5), s = 127/g, c = clamp(round(x s), -128, 127).
void int8_absmax(const float* x, int64_t rows, int64_t cols, float* y, int8_t* codes,
                 float* scales);

// INT4 absmean, per row:  b = max(mult * mean_j |x_j|, 1e-5), s = sqrt(7)/b,
// c = clamp(round(x s), -8, 7). mult = 1 in a4.8; the int4-all ablation uses 2 on down_proj.
void int4_absmean(const float* x, int64_t rows, int64_t cols, float* y, int8_t* codes,
                  float* scales, float mult = 1.0f);

// FP4 E2M1 MinMax, per row:  s = 6 / max(max_j |x_j|, 1e-5), t = x s rounded to the nearest of
// {0, ±0.5, ±1, ±1.5, ±2, ±3, ±4, ±6} (ties to the even mantissa, i.e. the even grid index),
// y = t / s. codes receive the 4-bit E2M1 encoding: bit 3 = sign, bits 0-2 = grid index.
void fp4_minmax(const float* x, int64_t rows, int64_t cols, float* y, int8_t* codes, float* scales);
// Value of a 4-bit E2M1 code.
float fp4_value(int8_t code);

// INT4 absmax, per row:  g = max(max_j |x_j|, 1e-5), s = 7/g (= fl(fl(1/g) * 7)),
// c = clamp(round(x s), -8, 7), y = c / s (ablation of [a4.8] Fig. 6; integer codes).
void int4_absmax(const float* x, int64_t rows, int64_t cols, float* y, int8_t* codes,
                 float* scales);

// FP4 E1M2 MinMax, per row:  s = 1.75 / max(max_j |x_j|, 1e-5) (= fl(fl(1/g) * 1.75)), t = x s
// rounded to the nearest of {0, ±0.25, ±0.5, ±0.75, ±1, ±1.25, ±1.5, ±1.75} (exponent bias 1,
// subnormals at e = 0; ties to the even mantissa = the even grid index), y = t / s. codes receive
// the 4-bit encoding: bit 3 = sign, bits 0-2 = grid index (value = index / 4). The grid is uniform,
// so this equals int4_absmax bit for bit in y whenever 1/g is a normal float (SPEC §2.8).
void fp4_e1m2_minmax(const float* x, int64_t rows, int64_t cols, float* y, int8_t* codes,
                     float* scales);
// Value of a 4-bit E1M2 code.
float fp4_e1m2_value(int8_t code);

// Top-K sparsification per row: keeps the k = ceil(ratio * cols) entries of largest |x| and zeroes
// the rest; among equal |x| at the threshold the lower column index is kept, so exactly k
// entries survive. x and y may alias.
void topk_rows(const float* x, int64_t rows, int64_t cols, float ratio, float* y);
int64_t topk_count(int64_t cols, float ratio);  // ceil(ratio * cols), clamped to [0, cols]

// Unsigned absmax for low-bit attention (SPEC §4), per row of `cols` (one token of one head):
// g = max(max|x|, 1e-5), m = 2^(bits-1) - 1, s = m/g, u = clamp(round(x s) + 2^(bits-1), 0, 2^bits
// - 1), y = (u - 2^(bits-1)) / s. codes receive u.
void uint_absmax(const float* x, int64_t rows, int64_t cols, int bits, float* y, uint8_t* codes,
                 float* scales);

// ---- activation quantizer specs -------------------------------------------------------------
// Int4 = INT4 absmean, Int4Absmax = INT4 absmax, Fp4 = FP4 E2M1 MinMax, Fp4E1M2 = FP4 E1M2 MinMax.
enum class ActKind { None, Int8, Int4, Fp4, Int4Absmax, Fp4E1M2 };
struct ActSpec {
  ActKind kind = ActKind::None;
  float topk = 0.0f;       // 0 = off, else the kept ratio (applied before quantization)
  float int4_mult = 1.0f;  // INT4 statistic multiplier (2 for the int4-all down_proj ablation)
  bool active() const { return kind != ActKind::None || topk > 0.0f; }
};
std::string to_string(const ActSpec& s);  // e.g. "topk0.5+int8"

// Applies spec to x[rows, cols] in one pass per row: optional top-K, then the quantizer.
// codes/scales as above (codes left untouched when kind == None).
void act_quantize(const ActSpec& spec, const float* x, int64_t rows, int64_t cols, float* y,
                  int8_t* codes, float* scales);
// act_quantize that also returns the number of exact zeros of the quantized output (zero codes),
// counted inside the same pass; an integer sum over rows, hence deterministic. y may be null.
int64_t act_quantize_count_zeros(const ActSpec& spec, const float* x, int64_t rows, int64_t cols,
                                 float* y, int8_t* codes, float* scales);

// Whether the kind's codes are the integers c of y = c / s (Int8, Int4, Int4Absmax): the kinds the
// integer GEMM route takes.
bool integer_codes(ActKind k);

// Integer-GEMM operand (integer_codes kinds only, optional top-K): codes to rows of stride
// ldc >= cols (padding bytes 0), mults[r] = s and scales[r] = 1/s per row (either may be null),
// so that the dequantized value is exactly c / s. Returns the zero count when count is set, else 0.
int64_t act_quantize_codes(const ActSpec& spec, const float* x, int64_t rows, int64_t cols,
                           int8_t* codes, int64_t ldc, float* mults, float* scales, bool count);

}  // namespace quant
