// Quantizer kernels of docs/SPEC.md §2/§4 (declared in quantizers.h): one fused pass per row, rows
// in parallel.
//
// Float op order (the contract with tests/reference/bitnet_ref.py, compared bit for bit):
//   * a multiplier written `C / stat` in the reference (127/g, 6/g, m/g with a Python-number
//     numerator) is what PyTorch computes for `number / tensor`, i.e. Tensor.__rtruediv__ =
//     `tensor.reciprocal() * number`: s = fl(fl(1/stat) * C), two roundings. A single division
//     differs from it by one ulp in ~25% of rows, so `rdiv` below is used for those scales;
//   * INT4's s = fl(sqrt7_f32 / b) is a tensor/tensor division in the reference: one rounding;
//   * ternary's s = 1/a (reciprocal times 1 is the reciprocal);
//   * codes c = clamp(nearbyint(x * s), lo, hi) (round half to even), dequantized y = c / s;
//   * absmean statistics are accumulated in double (8 fixed lanes per row; fixed chunks for the
//     ternary tensor mean) and rounded once to float: mean = float(sum / n).
// Everything is deterministic: rows are independent, the one cross-row reduction (ternary mean)
// uses fixed chunks (kernels::det_reduce), and zero counts are integer sums.
#include "quant/quantizers.h"

#include <algorithm>
#include <bit>
#include <cmath>
#include <functional>
#include <sstream>
#include <type_traits>
#include <utility>
#include <vector>

#include "autograd/error.h"
#include "autograd/kernels.h"

namespace quant {
namespace {

// s = C / stat the way PyTorch evaluates `C / tensor` (see the file comment).
inline float rdiv(float C, float stat) {
  const float inv = 1.0f / stat;
  return inv * C;
}

// max_j |x_j| over a row, as the maximum of the sign-cleared bit patterns (monotone for
// non-negative floats, vectorises as an integer max). A NaN anywhere gives NaN, as torch.amax.
inline float absmax(const float* x, int64_t n) {
  uint32_t m = 0;
  for (int64_t j = 0; j < n; ++j) m = std::max(m, std::bit_cast<uint32_t>(x[j]) & 0x7fffffffu);
  return std::bit_cast<float>(m);
}

// sum_j |x_j| in double, 8 fixed lanes then a fixed pairwise combine: depends on n only.
inline double sum_abs(const float* x, int64_t n) {
  return autograd::kernels::lane_sum_d(n, [&](int64_t k) { return std::fabs(double(x[k])); });
}

// clamp(r, lo, hi) written as max/min selects (NaN maps to lo, so integer codes stay defined;
// the dequantized value of a NaN row is still NaN because its s is NaN).
inline float clampf(float r, float lo, float hi) {
  r = r > lo ? r : lo;
  return r < hi ? r : hi;
}

// Calls f(bool_constant<b0>, bool_constant<b1>, ...) for the runtime flags b0, b1, ...: the row
// loops are instantiated per combination of present outputs, so no branch sits in them.
template <bool... Bs, class F>
void dispatch(F&& f) {
  f(std::bool_constant<Bs>{}...);
}
template <bool... Bs, class F, class... R>
void dispatch(F&& f, bool b, R... rest) {
  if (b)
    dispatch<Bs..., true>(std::forward<F>(f), rest...);
  else
    dispatch<Bs..., false>(std::forward<F>(f), rest...);
}

// Per-row result: the stored scale 1/s, the multiplier s and (when counted) the zero codes.
struct RowOut {
  float scale;
  int64_t zeros;
  float mult;
};

// Signed integer grid, shared by INT8 and INT4: x[n] -> c = clamp(round(x s), lo, hi), y = c / s.
template <bool kY, bool kC, bool kZ>
inline int64_t emit_int(const float* x, int64_t n, float s, float lo, float hi, float* y,
                        int8_t* codes) {
  int64_t z = 0;
  for (int64_t j = 0; j < n; ++j) {
    const float c = clampf(std::nearbyint(x[j] * s), lo, hi);
    if constexpr (kY) y[j] = c / s;
    if constexpr (kC) codes[j] = int8_t(c);
    if constexpr (kZ) z += c == 0.0f;
  }
  return z;
}

// Signed absmax row: g = max(max|x|, 1e-5), s = fl(fl(1/g) * qmax), c = clamp(round(x s), lo, hi).
// INT8: qmax 127, [-128, 127]; INT4 absmax: qmax 7, [-8, 7].
template <bool kY, bool kC, bool kZ>
inline RowOut absmax_int_row(const float* x, int64_t n, float qmax, float lo, float hi, float* y,
                             int8_t* codes) {
  const float g = std::max(absmax(x, n), kEps);
  const float s = rdiv(qmax, g);
  return {1.0f / s, emit_int<kY, kC, kZ>(x, n, s, lo, hi, y, codes), s};
}

// INT8 absmax row: qmax 127, c in [-128, 127].
template <bool kY, bool kC, bool kZ>
inline RowOut int8_row(const float* x, int64_t n, float* y, int8_t* codes) {
  return absmax_int_row<kY, kC, kZ>(x, n, 127.0f, -128.0f, 127.0f, y, codes);
}

// INT4 absmean row: b = max(float(sum|x| / n) * mult, 1e-5), s = fl(sqrt7 / b), c in [-8, 7].
template <bool kY, bool kC, bool kZ>
inline RowOut int4_row(const float* x, int64_t n, float mult, float* y, int8_t* codes) {
  const float mean = float(sum_abs(x, n) / double(n));
  const float b = std::max(mean * mult, kEps);
  const float s = kSqrt7 / b;
  return {1.0f / s, emit_int<kY, kC, kZ>(x, n, s, -8.0f, 7.0f, y, codes), s};
}

// FP4 MinMax row over a 4-bit sign-magnitude grid: s = fl(fl(1/g) * vmax), t = x s, grid(|t|)
// gives the index of the nearest grid value (ties to the even index) and that value v, y = sign(t)
// v / s, code = (signbit(t) << 3) | index.
template <bool kY, bool kC, bool kZ, class Grid>
inline RowOut fp4_minmax_row(const float* x, int64_t n, float vmax, Grid grid, float* y,
                             int8_t* codes) {
  const float g = std::max(absmax(x, n), kEps);
  const float s = rdiv(vmax, g);
  int64_t z = 0;
  for (int64_t j = 0; j < n; ++j) {
    const float t = x[j] * s;
    const auto [idx, v] = grid(std::fabs(t));
    const bool neg = std::signbit(t);
    if constexpr (kY) y[j] = (neg ? -v : v) / s;
    if constexpr (kC) codes[j] = int8_t((neg ? 8 : 0) | idx);
    if constexpr (kZ) z += idx == 0;
  }
  return {1.0f / s, z, s};
}

// FP4 E2M1 MinMax row: vmax 6, grid {0, 0.5, 1, 1.5, 2, 3, 4, 6}; the index is the number of
// midpoints passed (strict '>' where the lower neighbour has the even index, '>=' where the upper
// one has), v the matching sum of steps (exact in float).
template <bool kY, bool kC, bool kZ>
inline RowOut fp4_row(const float* x, int64_t n, float* y, int8_t* codes) {
  auto grid = [](float a) {
    const int m0 = a > 0.25f, m1 = a >= 0.75f, m2 = a > 1.25f, m3 = a >= 1.75f, m4 = a > 2.5f,
              m5 = a >= 3.5f, m6 = a > 5.0f;
    const float v = 0.5f * float(m0 + m1 + m2 + m3) + float(m4 + m5) + 2.0f * float(m6);
    return std::pair<int, float>(m0 + m1 + m2 + m3 + m4 + m5 + m6, v);
  };
  return fp4_minmax_row<kY, kC, kZ>(x, n, 6.0f, grid, y, codes);
}

// INT4 absmax row: qmax 7, c in [-8, 7] (|x s| <= 7: -8 is never reached).
template <bool kY, bool kC, bool kZ>
inline RowOut int4_absmax_row(const float* x, int64_t n, float* y, int8_t* codes) {
  return absmax_int_row<kY, kC, kZ>(x, n, 7.0f, -8.0f, 7.0f, y, codes);
}

// FP4 E1M2 MinMax row: vmax 1.75, grid {0, 0.25, ..., 1.75} (ties to the even index = the even
// mantissa: strict '>' at the midpoints above an even index, '>=' at those below one). The grid
// is walked by its own midpoint rules (not by rounding 4t), so the INT4-absmax equality of SPEC
// §2.8 is a property the tests check, not an identity of the code.
template <bool kY, bool kC, bool kZ>
inline RowOut fp4_e1m2_row(const float* x, int64_t n, float* y, int8_t* codes) {
  auto grid = [](float a) {
    const int idx = (a > 0.125f) + (a >= 0.375f) + (a > 0.625f) + (a >= 0.875f) + (a > 1.125f) +
                    (a >= 1.375f) + (a > 1.625f);
    return std::pair<int, float>(idx, 0.25f * float(idx));
  };
  return fp4_minmax_row<kY, kC, kZ>(x, n, 1.75f, grid, y, codes);
}

// Unsigned absmax row (SPEC §4): s = fl(fl(1/g) * m), u = clamp(round(x s) + 2^(b-1), 0, 2^b - 1),
// y = (u - 2^(b-1)) / s.
template <bool kY, bool kC>
inline float uint_row(const float* x, int64_t n, int bits, float* y, uint8_t* codes) {
  const float off = float(1 << (bits - 1)), m = off - 1.0f, hi = float((1 << bits) - 1);
  const float g = std::max(absmax(x, n), kEps);
  const float s = rdiv(m, g);
  for (int64_t j = 0; j < n; ++j) {
    const float u = clampf(std::nearbyint(x[j] * s) + off, 0.0f, hi);
    if constexpr (kY) y[j] = (u - off) / s;
    if constexpr (kC) codes[j] = uint8_t(u);
  }
  return 1.0f / s;
}

// Top-K of one row: y keeps the k entries of largest |x| (ties at the threshold: lowest index
// first), zero elsewhere. y may alias x. Keys are the sign-cleared bit patterns (a total order:
// NaN ranks above inf, so a NaN is kept and shows in the output). The threshold, the k-th largest
// key, is the largest t with #{key >= t} >= k, found by binary search over the 31-bit key range
// (31 vectorised counting passes: no sort, no data-dependent branches).
void topk_row(const float* x, int64_t n, int64_t k, float* y) {
  if (k >= n) {
    if (y != x) std::copy(x, x + n, y);
    return;
  }
  thread_local std::vector<uint32_t> keys;
  keys.resize(size_t(n));
  uint32_t* key = keys.data();
  for (int64_t j = 0; j < n; ++j) key[j] = std::bit_cast<uint32_t>(x[j]) & 0x7fffffffu;
  const int32_t n32 = int32_t(n);  // rows are far below 2^31 entries
  auto count_ge = [key, n32](uint32_t t) {
    int32_t c = 0;
    for (int32_t j = 0; j < n32; ++j) c += int32_t(key[j] >= t);
    return int64_t(c);
  };
  uint32_t lo = 0, hi = 0x80000000u;  // invariant: count_ge(lo) >= k > count_ge(hi)
  while (hi - lo > 1) {
    const uint32_t mid = lo + (hi - lo) / 2;
    if (count_ge(mid) >= k)
      lo = mid;
    else
      hi = mid;
  }
  const uint32_t thr = lo;
  // Entries strictly above the threshold are kept; the rest of the quota goes to the entries
  // equal to it, in index order.
  int64_t quota = k - count_ge(thr + 1);
  int64_t ties = count_ge(thr) - count_ge(thr + 1);
  for (int64_t j = 0; j < n; ++j) y[j] = key[j] >= thr ? x[j] : 0.0f;  // branch-free, vectorised
  for (int64_t j = n; j-- > 0 && ties > quota;)  // drop the surplus ties, highest index first
    if (key[j] == thr) {
      y[j] = 0.0f;
      --ties;
    }
}

int64_t count_zeros(const float* y, int64_t n) {
  int64_t z = 0;
  for (int64_t j = 0; j < n; ++j) z += y[j] == 0.0f;
  return z;
}

void check_rows(const char* op, const float* x, int64_t rows, int64_t cols) {
  BN_CHECK(rows >= 0 && cols >= 1, op, "bad shape [", rows, ", ", cols,
           "]: need rows >= 0 and cols >= 1");
  BN_CHECK(x != nullptr || rows == 0, op, "null input for shape [", rows, ", ", cols, "]");
}

void check_ratio(const char* op, float ratio, int64_t rows, int64_t cols) {
  BN_CHECK(ratio > 0.0f && ratio <= 1.0f, op, "top-K ratio ", ratio, " outside (0, 1] for shape [",
           rows, ", ", cols, "]");
}

// The fused act_quantize kernel over x[rows, cols] (y may alias x): per row, top-K into a
// thread-local buffer when spec.topk > 0, then the row quantizer. Returns the zero count when kZ.
// Codes go to rows of stride ldc >= cols (bytes [cols, ldc) set to 0); kS writes scales (1/s)
// and/or mults (s), whichever is non-null.
template <bool kY, bool kC, bool kS, bool kZ>
int64_t act_rows(const ActSpec& spec, const float* x, int64_t rows, int64_t cols, float* y,
                 int8_t* codes, int64_t ldc, float* scales, float* mults) {
  const bool topk = spec.topk > 0.0f;
  const int64_t k = topk ? topk_count(cols, spec.topk) : cols;
  int64_t zeros = 0;
#pragma omp parallel for schedule(static) reduction(+ : zeros)
  for (int64_t r = 0; r < rows; ++r) {
    const float* xr = x + r * cols;
    float* yr = kY ? y + r * cols : nullptr;
    int8_t* cr = kC ? codes + r * ldc : nullptr;
    if constexpr (kC)
      for (int64_t j = cols; j < ldc; ++j) cr[j] = 0;
    if (spec.kind == ActKind::None) {  // top-K alone, or a copy
      if (!kY && !kZ) continue;
      thread_local std::vector<float> buf;
      float* dst = yr;
      if (!kY) {
        buf.resize(size_t(cols));
        dst = buf.data();
      }
      if (topk)
        topk_row(xr, cols, k, dst);
      else if (dst != xr)
        std::copy(xr, xr + cols, dst);
      if constexpr (kZ) zeros += count_zeros(dst, cols);
      continue;
    }
    const float* in = xr;
    if (topk) {  // sparsified row in a thread-local buffer, then quantized from there
      thread_local std::vector<float> row;
      row.resize(size_t(cols));
      topk_row(xr, cols, k, row.data());
      in = row.data();
    }
    RowOut o{};
    switch (spec.kind) {
      case ActKind::Int8:
        o = int8_row<kY, kC, kZ>(in, cols, yr, cr);
        break;
      case ActKind::Int4:
        o = int4_row<kY, kC, kZ>(in, cols, spec.int4_mult, yr, cr);
        break;
      case ActKind::Fp4:
        o = fp4_row<kY, kC, kZ>(in, cols, yr, cr);
        break;
      case ActKind::Int4Absmax:
        o = int4_absmax_row<kY, kC, kZ>(in, cols, yr, cr);
        break;
      case ActKind::Fp4E1M2:
        o = fp4_e1m2_row<kY, kC, kZ>(in, cols, yr, cr);
        break;
      case ActKind::None:
        break;
    }
    if constexpr (kS) {
      if (scales) scales[r] = o.scale;
      if (mults) mults[r] = o.mult;
    }
    if constexpr (kZ) zeros += o.zeros;
  }
  return zeros;
}

int64_t act_quantize_impl(const ActSpec& spec, const float* x, int64_t rows, int64_t cols, float* y,
                          int8_t* codes, int64_t ldc, float* scales, float* mults, bool count) {
  const char* op = "act_quantize";
  check_rows(op, x, rows, cols);
  BN_CHECK(spec.kind == ActKind::None || spec.kind == ActKind::Int8 || spec.kind == ActKind::Int4 ||
               spec.kind == ActKind::Fp4 || spec.kind == ActKind::Int4Absmax ||
               spec.kind == ActKind::Fp4E1M2,
           op, "unknown ActKind ", int(spec.kind), " for shape [", rows, ", ", cols, "]");
  BN_CHECK(spec.topk == 0.0f || (spec.topk > 0.0f && spec.topk <= 1.0f), op, "top-K ratio ",
           spec.topk, " outside {0} u (0, 1] for shape [", rows, ", ", cols, "]");
  BN_CHECK(spec.kind != ActKind::Int4 || (std::isfinite(spec.int4_mult) && spec.int4_mult > 0.0f),
           op, "int4_mult ", spec.int4_mult, " must be finite and > 0 for shape [", rows, ", ",
           cols, "]");
  BN_CHECK(ldc >= cols, op, "codes row stride ", ldc, " < cols ", cols);
  const bool has_codes = codes != nullptr && spec.kind != ActKind::None;
  const bool has_scales = (scales != nullptr || mults != nullptr) && spec.kind != ActKind::None;
  int64_t z = 0;
  dispatch(
      [&](auto kY, auto kC, auto kS, auto kZ) {
        z = act_rows<kY(), kC(), kS(), kZ()>(spec, x, rows, cols, y, codes, ldc, scales, mults);
      },
      y != nullptr, has_codes, has_scales, count);
  return z;
}

// Shared driver for the per-row signed kernels: f(bool_constant kY, bool_constant kC) runs rows.
template <class Row>
void int_rows(const float* x, int64_t rows, int64_t cols, float* y, int8_t* codes, float* scales,
              Row&& row) {
  dispatch(
      [&](auto kY, auto kC) {
#pragma omp parallel for schedule(static)
        for (int64_t r = 0; r < rows; ++r) {
          const RowOut o = row(kY, kC, x + r * cols, kY() ? y + r * cols : nullptr,
                               kC() ? codes + r * cols : nullptr);
          if (scales) scales[r] = o.scale;
        }
      },
      y != nullptr, codes != nullptr);
}

}  // namespace

// ---- weights ----------------------------------------------------------------------------------

float ternary_absmean(const float* w, int64_t n, float* wq, int8_t* codes) {
  BN_CHECK(n >= 1 && w != nullptr, "ternary_absmean", "bad weight of ", n,
           " elements (need n >= 1 and non-null data)");
  // mean|W| in double over fixed chunks (independent of the thread count), rounded once.
  const double sum = autograd::kernels::det_reduce(
      n, [&](int64_t i0, int64_t i1) { return sum_abs(w + i0, i1 - i0); });
  const float a = std::max(float(sum / double(n)), kEps);
  ternary_apply(w, n, a, wq, codes);
  return a;
}

void ternary_apply(const float* w, int64_t n, float a, float* wq, int8_t* codes) {
  // (a NaN scale is let through: a NaN weight must surface as a non-finite loss, not a throw)
  BN_CHECK(n >= 1 && w != nullptr && !(a <= 0.0f), "ternary_apply", "bad weight of ", n,
           " elements or scale ", a);
  const float s = 1.0f / a;
  if (!wq && !codes) return;
  constexpr int64_t kBlock = 4096;
  const int64_t blocks = (n + kBlock - 1) / kBlock;
  dispatch(
      [&](auto kY, auto kC) {
#pragma omp parallel for schedule(static)
        for (int64_t b = 0; b < blocks; ++b) {
          const int64_t i0 = b * kBlock, len = std::min(kBlock, n - i0);
          emit_int<kY(), kC(), false>(w + i0, len, s, -1.0f, 1.0f, kY() ? wq + i0 : nullptr,
                                      kC() ? codes + i0 : nullptr);
        }
      },
      wq != nullptr, codes != nullptr);
}

// ---- activations ------------------------------------------------------------------------------

void int8_absmax(const float* x, int64_t rows, int64_t cols, float* y, int8_t* codes,
                 float* scales) {
  check_rows("int8_absmax", x, rows, cols);
  int_rows(x, rows, cols, y, codes, scales,
           [cols](auto kY, auto kC, const float* xr, float* yr, int8_t* cr) {
             return int8_row<kY(), kC(), false>(xr, cols, yr, cr);
           });
}

void int4_absmean(const float* x, int64_t rows, int64_t cols, float* y, int8_t* codes,
                  float* scales, float mult) {
  check_rows("int4_absmean", x, rows, cols);
  BN_CHECK(std::isfinite(mult) && mult > 0.0f, "int4_absmean", "mult ", mult,
           " must be finite and > 0 (shape [", rows, ", ", cols, "])");
  int_rows(x, rows, cols, y, codes, scales,
           [cols, mult](auto kY, auto kC, const float* xr, float* yr, int8_t* cr) {
             return int4_row<kY(), kC(), false>(xr, cols, mult, yr, cr);
           });
}

void fp4_minmax(const float* x, int64_t rows, int64_t cols, float* y, int8_t* codes,
                float* scales) {
  check_rows("fp4_minmax", x, rows, cols);
  int_rows(x, rows, cols, y, codes, scales,
           [cols](auto kY, auto kC, const float* xr, float* yr, int8_t* cr) {
             return fp4_row<kY(), kC(), false>(xr, cols, yr, cr);
           });
}

float fp4_value(int8_t code) {
  static constexpr float kGrid[8] = {0.0f, 0.5f, 1.0f, 1.5f, 2.0f, 3.0f, 4.0f, 6.0f};
  BN_CHECK(code >= 0 && code <= 15, "fp4_value", "code ", int(code), " outside [0, 15]");
  const float v = kGrid[code & 7];
  return (code & 8) ? -v : v;
}

void int4_absmax(const float* x, int64_t rows, int64_t cols, float* y, int8_t* codes,
                 float* scales) {
  check_rows("int4_absmax", x, rows, cols);
  int_rows(x, rows, cols, y, codes, scales,
           [cols](auto kY, auto kC, const float* xr, float* yr, int8_t* cr) {
             return int4_absmax_row<kY(), kC(), false>(xr, cols, yr, cr);
           });
}

void fp4_e1m2_minmax(const float* x, int64_t rows, int64_t cols, float* y, int8_t* codes,
                     float* scales) {
  check_rows("fp4_e1m2_minmax", x, rows, cols);
  int_rows(x, rows, cols, y, codes, scales,
           [cols](auto kY, auto kC, const float* xr, float* yr, int8_t* cr) {
             return fp4_e1m2_row<kY(), kC(), false>(xr, cols, yr, cr);
           });
}

float fp4_e1m2_value(int8_t code) {
  BN_CHECK(code >= 0 && code <= 15, "fp4_e1m2_value", "code ", int(code), " outside [0, 15]");
  const float v = 0.25f * float(code & 7);
  return (code & 8) ? -v : v;
}

bool integer_codes(ActKind k) {
  return k == ActKind::Int8 || k == ActKind::Int4 || k == ActKind::Int4Absmax;
}

int64_t topk_count(int64_t cols, float ratio) {
  BN_CHECK(cols >= 0 && !std::isnan(ratio), "topk_count", "bad arguments cols ", cols, ", ratio ",
           ratio);
  if (cols == 0 || ratio <= 0.0f) return 0;
  if (ratio >= 1.0f) return cols;
  // ceil(ratio * cols) in double, less a guard of 2^-22 relative (at least 1e-6) absorbing the
  // representation error of a decimal ratio stored as float (e.g. 0.3f * 10 -> 3, not 4;
  // 0.5f * 7 = 3.5 -> 4). At least one entry survives for any ratio > 0.
  const double p = double(ratio) * double(cols);
  const int64_t k = int64_t(std::ceil(p - std::max(1e-6, p * 0x1p-22)));
  return std::clamp<int64_t>(k, 1, cols);
}

void topk_rows(const float* x, int64_t rows, int64_t cols, float ratio, float* y) {
  check_rows("topk_rows", x, rows, cols);
  check_ratio("topk_rows", ratio, rows, cols);
  BN_CHECK(y != nullptr || rows == 0, "topk_rows", "null output for shape [", rows, ", ", cols,
           "]");
  const int64_t k = topk_count(cols, ratio);
#pragma omp parallel for schedule(static)
  for (int64_t r = 0; r < rows; ++r) topk_row(x + r * cols, cols, k, y + r * cols);
}

void uint_absmax(const float* x, int64_t rows, int64_t cols, int bits, float* y, uint8_t* codes,
                 float* scales) {
  check_rows("uint_absmax", x, rows, cols);
  BN_CHECK(bits >= 2 && bits <= 8, "uint_absmax", "bits ", bits, " outside [2, 8] (shape [", rows,
           ", ", cols, "])");
  dispatch(
      [&](auto kY, auto kC) {
#pragma omp parallel for schedule(static)
        for (int64_t r = 0; r < rows; ++r) {
          const float sc =
              uint_row<kY(), kC()>(x + r * cols, cols, bits, kY() ? y + r * cols : nullptr,
                                   kC() ? codes + r * cols : nullptr);
          if (scales) scales[r] = sc;
        }
      },
      y != nullptr, codes != nullptr);
}

std::string to_string(const ActSpec& s) {
  auto num = [](float v) {
    std::ostringstream os;
    os << v;
    return os.str();
  };
  std::string q;
  switch (s.kind) {
    case ActKind::None:
      q = "none";
      break;
    case ActKind::Int8:
      q = "int8";
      break;
    case ActKind::Int4:
      q = s.int4_mult == 1.0f ? "int4" : "int4x" + num(s.int4_mult);
      break;
    case ActKind::Fp4:
      q = "fp4";
      break;
    case ActKind::Int4Absmax:
      q = "int4-absmax";
      break;
    case ActKind::Fp4E1M2:
      q = "fp4-e1m2";
      break;
  }
  if (s.topk > 0.0f) return "topk" + num(s.topk) + (s.kind == ActKind::None ? "" : "+" + q);
  return q;
}

void act_quantize(const ActSpec& spec, const float* x, int64_t rows, int64_t cols, float* y,
                  int8_t* codes, float* scales) {
  act_quantize_impl(spec, x, rows, cols, y, codes, cols, scales, nullptr, false);
}

int64_t act_quantize_count_zeros(const ActSpec& spec, const float* x, int64_t rows, int64_t cols,
                                 float* y, int8_t* codes, float* scales) {
  return act_quantize_impl(spec, x, rows, cols, y, codes, cols, scales, nullptr, true);
}

int64_t act_quantize_codes(const ActSpec& spec, const float* x, int64_t rows, int64_t cols,
                           int8_t* codes, int64_t ldc, float* mults, float* scales, bool count) {
  BN_CHECK(integer_codes(spec.kind), "act_quantize_codes", "spec ", to_string(spec),
           " has no integer codes (shape [", rows, ", ", cols, "])");
  return act_quantize_impl(spec, x, rows, cols, nullptr, codes, ldc, scales, mults, count);
}

}  // namespace quant
