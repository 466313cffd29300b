// Integer GEMM kernels (declared in igemm.h): ternary weight packing, AVX512-VNNI and portable paths.
//
// Work split: the output is tiled into tasks of kRowBlock rows x kColBlock columns, run in
// parallel (static schedule); inside a task, for each 32-column panel, micro-tiles of up to
// kMR = 8 rows accumulate 8 x 32 int32 sums in 16 zmm registers over K. Every task computes the
// bias rowsums of its own rows. Integer sums are exact, so the split never changes results.
#include "quant/igemm.h"

#include <immintrin.h>
#include <omp.h>

#include <algorithm>
#include <cstring>

#include "autograd/error.h"

// GCC 12 flags its own _mm512_undefined_* helpers inside the AVX-512 intrinsics (false positive).
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif

namespace quant {
namespace {

constexpr int64_t kMR = 8, kRowBlock = 64, kColBlock = 256;

int64_t groups(int64_t K) { return (K + 3) / 4; }

// rowsum[r] = sum_k x[r, k] for rows [m0, m0 + rows).
void rowsums(const int8_t* x, int64_t m0, int64_t rows, int64_t ldx, int64_t K, int32_t* rs) {
  for (int64_t r = 0; r < rows; ++r) {
    const int8_t* xr = x + (m0 + r) * ldx;
    int32_t s = 0;
    for (int64_t k = 0; k < K; ++k) s += xr[k];
    rs[r] = s;
  }
}

// Calls task(m0, rows, n0, cols) over the output tiles, in parallel unless already nested.
template <class F>
void for_tiles(int64_t M, int64_t N, F&& task) {
  const int64_t rb = (M + kRowBlock - 1) / kRowBlock, cb = (N + kColBlock - 1) / kColBlock;
#pragma omp parallel for schedule(static) if (!omp_in_parallel() && rb * cb > 1)
  for (int64_t t = 0; t < rb * cb; ++t) {
    const int64_t m0 = (t / cb) * kRowBlock, n0 = (t % cb) * kColBlock;
    task(m0, std::min(kRowBlock, M - m0), n0, std::min(kColBlock, N - n0));
  }
}

// ---- AVX512-VNNI path ---------------------------------------------------------------------------
#define BITNET_VNNI __attribute__((target("avx512f,avx512bw,avx512vnni")))

// Micro-tile: rows [0, MR) of x (row stride ldx) x one packed panel (32 columns) over K4 groups.
// Writes out(r, half, acc) for each row r and 16-column half (acc still biased by rowsum).
template <int MR, class Out>
BITNET_VNNI inline void micro_vnni(const int8_t* x, int64_t ldx, const uint8_t* panel, int64_t K4,
                                   Out&& out) {
  __m512i c0[MR], c1[MR];
  for (int r = 0; r < MR; ++r) c0[r] = c1[r] = _mm512_setzero_si512();
  for (int64_t g = 0; g < K4; ++g) {
    const __m512i b0 = _mm512_loadu_si512(panel + g * 128);
    const __m512i b1 = _mm512_loadu_si512(panel + g * 128 + 64);
    for (int r = 0; r < MR; ++r) {
      int32_t a4;
      std::memcpy(&a4, x + r * ldx + 4 * g, 4);
      const __m512i a = _mm512_set1_epi32(a4);
      c0[r] = _mm512_dpbusd_epi32(c0[r], b0, a);
      c1[r] = _mm512_dpbusd_epi32(c1[r], b1, a);
    }
  }
  for (int r = 0; r < MR; ++r) {
    out(r, 0, c0[r]);
    out(r, 1, c1[r]);
  }
}

template <class Out>
BITNET_VNNI void micro_vnni_dispatch(int mr, const int8_t* x, int64_t ldx, const uint8_t* panel,
                                     int64_t K4, Out&& out) {
  switch (mr) {
    case 8: micro_vnni<8>(x, ldx, panel, K4, out); break;
    case 7: micro_vnni<7>(x, ldx, panel, K4, out); break;
    case 6: micro_vnni<6>(x, ldx, panel, K4, out); break;
    case 5: micro_vnni<5>(x, ldx, panel, K4, out); break;
    case 4: micro_vnni<4>(x, ldx, panel, K4, out); break;
    case 3: micro_vnni<3>(x, ldx, panel, K4, out); break;
    case 2: micro_vnni<2>(x, ldx, panel, K4, out); break;
    default: micro_vnni<1>(x, ldx, panel, K4, out); break;
  }
}

// Store(m, n0, mask, __m512i exact_acc) for 16-column vectors.
template <class Store>
BITNET_VNNI void igemm_vnni(const int8_t* x, int64_t M, int64_t ldx, const PackedTernary& w,
                            Store&& store) {
  const int64_t K4 = w.K4;
  for_tiles(M, w.N, [&](int64_t m0, int64_t rows, int64_t n0, int64_t cols) BITNET_VNNI {
    int32_t rs[kRowBlock];
    rowsums(x, m0, rows, ldx, w.K, rs);
    for (int64_t p = n0 / kPanel; p * kPanel < n0 + cols; ++p) {
      const uint8_t* panel = w.data() + p * K4 * 128;
      for (int64_t r0 = 0; r0 < rows; r0 += kMR) {
        const int mr = int(std::min(kMR, rows - r0));
        micro_vnni_dispatch(mr, x + (m0 + r0) * ldx, ldx, panel, K4,
                            [&](int r, int half, __m512i acc) BITNET_VNNI {
                              const int64_t n = p * kPanel + 16 * half;
                              if (n >= w.N) return;
                              const int64_t left = w.N - n;
                              const __mmask16 mask =
                                  left >= 16 ? __mmask16(0xffff) : __mmask16((1u << left) - 1u);
                              acc = _mm512_sub_epi32(acc, _mm512_set1_epi32(rs[r0 + r]));
                              store(m0 + r0 + r, n, mask, acc);
                            });
      }
    }
  });
}

// ---- portable path ------------------------------------------------------------------------------
// Same sums from the same packed layout: acc[n] = sum_g sum_j (byte - 1) * x[4g + j].
template <class Store>
void igemm_portable(const int8_t* x, int64_t M, int64_t ldx, const PackedTernary& w, Store&& store) {
  const int64_t K4 = w.K4;
  for_tiles(M, w.N, [&](int64_t m0, int64_t rows, int64_t n0, int64_t cols) {
    for (int64_t r = 0; r < rows; ++r) {
      const int8_t* xr = x + (m0 + r) * ldx;
      for (int64_t p = n0 / kPanel; p * kPanel < n0 + cols; ++p) {
        const uint8_t* panel = w.data() + p * K4 * 128;
        int32_t acc[kPanel] = {};
        for (int64_t g = 0; g < K4; ++g)
          for (int64_t c = 0; c < kPanel; ++c)
            for (int64_t j = 0; j < 4; ++j) {
              const int64_t k = 4 * g + j;
              if (k < w.K) acc[c] += (int32_t(panel[g * 128 + c * 4 + j]) - 1) * int32_t(xr[k]);
            }
        for (int64_t c = 0; c < kPanel && p * kPanel + c < w.N; ++c) store(m0 + r, p * kPanel + c, acc[c]);
      }
    }
  });
}

void check_args(const char* op, const int8_t* x, int64_t M, int64_t ldx, const PackedTernary& w) {
  BN_CHECK(w.N >= 1 && w.K >= 1 && w.K4 == groups(w.K) && w.bytes.defined(), op,
           "weights not packed (N ", w.N, ", K ", w.K, ")");
  BN_CHECK(M >= 0 && ldx >= 4 * w.K4 && (x != nullptr || M == 0), op, "x [", M, ", ", w.K,
           "] with row stride ", ldx, ": need stride >= ", 4 * w.K4, " (K padded to 4)");
}

}  // namespace

namespace {
bool g_force_portable = false;
}
bool igemm_has_vnni() {
  static const bool has = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                          __builtin_cpu_supports("avx512vnni");
  return has && !g_force_portable;
}
void igemm_force_portable(bool on) { g_force_portable = on; }

BitLinearRoute bitlinear_route() {
  // The integer route needs VNNI to pay off (the portable igemm loop is slower than the fp32 GEMM).
  return igemm_has_vnni() ? BitLinearRoute::IntegerVnni : BitLinearRoute::Float;
}

const char* to_string(BitLinearRoute r) {
  switch (r) {
    case BitLinearRoute::IntegerVnni: return "integer-vnni";
    case BitLinearRoute::IntegerPortable: return "integer-portable";
    case BitLinearRoute::Float: return "float";
  }
  return "?";
}

PackedTernary pack_ternary(const int8_t* codes, int64_t N, int64_t K) {
  BN_CHECK(N >= 1 && K >= 1 && codes != nullptr, "pack_ternary", "bad weight codes [", N, ", ", K, "]");
  PackedTernary p;
  p.N = N, p.K = K, p.K4 = groups(K);
  const int64_t panels = (N + kPanel - 1) / kPanel, bytes = panels * p.K4 * 128;
  p.bytes = autograd::Tensor::empty(autograd::Shape{bytes}, autograd::DType::U8);
  uint8_t* out = p.bytes.data<uint8_t>();
  const int64_t K4 = p.K4;
  uint8_t bad = 0;  // vectorised check first; locate the culprit only when there is one
  for (int64_t i = 0; i < N * K; ++i) bad |= uint8_t(codes[i] < -1) | uint8_t(codes[i] > 1);
  if (bad)
    for (int64_t i = 0; i < N * K; ++i)
      BN_CHECK(codes[i] >= -1 && codes[i] <= 1, "pack_ternary", "code ", int(codes[i]), " at [",
               i / K, ", ", i % K, "] is not ternary (weight [", N, ", ", K, "])");
#pragma omp parallel for schedule(static)
  for (int64_t pi = 0; pi < panels; ++pi) {
    uint8_t* panel = out + pi * K4 * 128;
    std::memset(panel, 0, size_t(K4 * 128));
    for (int64_t c = 0; c < kPanel; ++c) {
      const int64_t n = pi * kPanel + c;
      if (n >= N) break;
      const int8_t* row = codes + n * K;
      // 4 codes (one k group) per 32-bit word: bytes + 1 without carries between them.
      const int64_t full = K / 4;
      for (int64_t g = 0; g < full; ++g) {
        uint32_t v;
        std::memcpy(&v, row + 4 * g, 4);
        v = ((v & 0x7F7F7F7Fu) + 0x01010101u) ^ (v & 0x80808080u);
        std::memcpy(panel + g * 128 + c * 4, &v, 4);
      }
      for (int64_t k = 4 * full; k < K; ++k) panel[full * 128 + c * 4 + (k % 4)] = uint8_t(row[k] + 1);
    }
  }
  return p;
}

void igemm_ternary_s32(const int8_t* x, int64_t M, int64_t ldx, const PackedTernary& w,
                       int32_t* acc, int64_t ldacc) {
  check_args("igemm_ternary_s32", x, M, ldx, w);
  BN_CHECK(ldacc >= w.N, "igemm_ternary_s32", "acc row stride ", ldacc, " < N ", w.N);
  if (igemm_has_vnni()) {
    igemm_vnni(x, M, ldx, w, [&](int64_t m, int64_t n, __mmask16 mask, __m512i v) BITNET_VNNI {
      _mm512_mask_storeu_epi32(acc + m * ldacc + n, mask, v);
    });
  } else {
    igemm_portable(x, M, ldx, w, [&](int64_t m, int64_t n, int32_t v) { acc[m * ldacc + n] = v; });
  }
}

void igemm_ternary_f32(const int8_t* x, int64_t M, int64_t ldx, const PackedTernary& w,
                       const float* xscale, float wscale, float* y, int64_t ldy) {
  check_args("igemm_ternary_f32", x, M, ldx, w);
  BN_CHECK(ldy >= w.N && xscale != nullptr, "igemm_ternary_f32", "y row stride ", ldy, " < N ", w.N,
           " or null scales");
  if (igemm_has_vnni()) {
    igemm_vnni(x, M, ldx, w, [&](int64_t m, int64_t n, __mmask16 mask, __m512i v) BITNET_VNNI {
      const __m512 s = _mm512_set1_ps(xscale[m] * wscale);
      _mm512_mask_storeu_ps(y + m * ldy + n, mask, _mm512_mul_ps(_mm512_cvtepi32_ps(v), s));
    });
  } else {
    igemm_portable(x, M, ldx, w, [&](int64_t m, int64_t n, int32_t v) {
      y[m * ldy + n] = float(v) * (xscale[m] * wscale);
    });
  }
}

}  // namespace quant
