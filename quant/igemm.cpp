// Integer GEMM kernels (declared in igemm.h): ternary weight packing, the AVX512-VNNI, AVX2 and
// portable paths, and the run-time choice between them.
//
// Work split (for_micro_tiles): the output is tiled into tasks of kRowBlock rows x kColBlock
// columns, run in parallel (static schedule); inside a task, micro-tiles of a few rows x one strip
// of columns accumulate int32 sums over K (VNNI: 8 rows x 32 columns in 16 zmm; AVX2: 3 rows x 16
// columns; portable: 1 row x 32). Every task computes the bias rowsums of its own rows. Integer
// sums are exact, so neither the split nor the kernel ever changes results.
#include "quant/igemm.h"

#if defined(__x86_64__) || defined(__i386__)
#define BITNET_X86 1
#include <immintrin.h>
#else
#define BITNET_X86 0
#endif
#include <omp.h>

#include <algorithm>
#include <cstring>
#include <string>
#include <type_traits>

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

// The loop nest of every kernel. The output is split into tasks of kRowBlock rows x kColBlock
// columns, run in parallel unless already nested; each task sums its rows' bias rowsums, then for
// each strip of `strip` columns (a panel or half of one) and each run of at most mr_max rows calls
//   micro(m, mr, rs, bytes, n): rows [m, m + mr), columns [n, n + strip) (some may be >= N),
// rs = rowsum(x[m + r]) for r < mr, bytes = the strip's packed weights (group stride 128).
template <class Micro>
void for_micro_tiles(const int8_t* x, int64_t M, int64_t ldx, const PackedTernary& w, int64_t strip,
                     int64_t mr_max, Micro&& micro) {
  const int64_t rb = (M + kRowBlock - 1) / kRowBlock, cb = (w.N + kColBlock - 1) / kColBlock;
#pragma omp parallel for schedule(static) if (!omp_in_parallel() && rb * cb > 1)
  for (int64_t t = 0; t < rb * cb; ++t) {
    const int64_t m0 = (t / cb) * kRowBlock, n0 = (t % cb) * kColBlock;
    const int64_t rows = std::min(kRowBlock, M - m0), n1 = std::min(n0 + kColBlock, w.N);
    int32_t rs[kRowBlock];
    rowsums(x, m0, rows, ldx, w.K, rs);
    for (int64_t n = n0; n < n1; n += strip) {
      const uint8_t* bytes = w.data() + (n / kPanel) * w.K4 * 128 + (n % kPanel) * 4;
      for (int64_t r0 = 0; r0 < rows; r0 += mr_max)
        micro(m0 + r0, int(std::min(mr_max, rows - r0)), rs + r0, bytes, n);
    }
  }
}

// Calls f(std::integral_constant<int, mr>{}) for a micro-tile height mr in [1, Max], so that each
// height gets a fully unrolled kernel.
template <int Max, class F>
void with_rows(int mr, F&& f) {
  if constexpr (Max > 1)
    if (mr < Max) return with_rows<Max - 1>(mr, f);
  f(std::integral_constant<int, Max>{});
}

#if BITNET_X86
// ---- AVX512-VNNI path ---------------------------------------------------------------------------
#define BITNET_VNNI __attribute__((target("avx512f,avx512bw,avx512vnni")))

// Micro-tile: rows [0, MR) of x (row stride ldx) x one packed panel (32 columns) over K4 groups,
//   acc[r, c] = sum_g sum_j panel[g][c][j] * x[r, 4g + j]   (c < 32; = sum_k (cw + 1) cx),
// one vpdpbusd per row, group and 16 columns. Writes out(r, half, acc) for each row r and
// 16-column half (acc still biased by rowsum).
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

// acc[m, n] = sum_k x[m, k] cw[n, k] for x [M, K] (row stride ldx) and w [N, K]: calls
// Store(m, n, mask, __m512i exact_acc) for each row m and 16 columns from n (mask: columns < N).
template <class Store>
BITNET_VNNI void igemm_vnni(const int8_t* x, int64_t M, int64_t ldx, const PackedTernary& w,
                            Store&& store) {
  const auto tile = [&](int64_t m, int mr, const int32_t* rs, const uint8_t* panel,
                        int64_t n) BITNET_VNNI {
    const auto out = [&](int r, int half, __m512i acc) BITNET_VNNI {
      const int64_t nh = n + 16 * half;
      if (nh >= w.N) return;
      const int64_t left = w.N - nh;
      const __mmask16 mask = left >= 16 ? __mmask16(0xffff) : __mmask16((1u << left) - 1u);
      store(m + r, nh, mask, _mm512_sub_epi32(acc, _mm512_set1_epi32(rs[r])));
    };
    with_rows<kMR>(mr, [&](auto MR) BITNET_VNNI {
      micro_vnni<decltype(MR)::value>(x + m * ldx, ldx, panel, w.K4, out);
    });
  };
  for_micro_tiles(x, M, ldx, w, kPanel, kMR, tile);
}

// ---- AVX2 path ----------------------------------------------------------------------------------
// For x86 CPUs without AVX512-VNNI. Same packed layout: one ymm holds 8 columns x 4 k (32 bytes),
// so a 16-column half panel is 2 ymm per group. Per row, group and ymm:
//   vpmaddubsw(panel bytes (u8), 4 x bytes broadcast (s8)) -> 16 int16, one per column and k pair:
//     (cw + 1)[k] cx[k] + (cw + 1)[k + 1] cx[k + 1], in [-512, 508] since |(cw + 1) cx| <= 2 * 128
//     = 256; |2 * 2 * 128| = 512 < 32767, so vpmaddubsw's int16 saturation can never trigger;
//   vpaddw into an int16 accumulator over at most kAvx2Span = 32 groups: |sum| <= 32 * 512 =
//     16384 < 32767, exact (no wrap);
//   every kAvx2Span groups, vpmaddwd with ones adds each column's two int16 into int32 and vpaddd
//     into the int32 sum.
// The result is the biased int32 sum of the VNNI kernel, bit for bit; the bias is removed alike.
#define BITNET_AVX2 __attribute__((target("avx2")))

// Rows per micro-tile: 3 rows x 16 columns keep 6 int16 + 6 int32 accumulators, 2 weight vectors,
// the broadcast and one product in the 16 ymm registers an AVX2-only CPU has (4 or 5 rows spill
// and measured slower; -march=native builds on AVX-512 CPUs have 32 registers and do not tell).
constexpr int kAvx2MR = 3;
constexpr int64_t kAvx2Span = 32;  // groups of 4 k summed in int16 before widening to int32

// Micro-tile: rows [0, MR) of x (row stride ldx) x one 16-column half panel (half = panel + 64,
// group stride 128 bytes) over K4 groups,
//   acc[r, c] = sum_g sum_j half[g][c][j] * x[r, 4g + j]   (c < 16; = sum_k (cw + 1) cx).
// Writes out(r, q, acc) for each row r and 8-column quarter q (acc still biased by rowsum).
template <int MR, class Out>
BITNET_AVX2 inline void micro_avx2(const int8_t* x, int64_t ldx, const uint8_t* half, int64_t K4,
                                   Out&& out) {
  const __m256i ones = _mm256_set1_epi16(1);
  __m256i c0[MR], c1[MR];  // int32 sums of columns 0-7 and 8-15
  for (int r = 0; r < MR; ++r) c0[r] = c1[r] = _mm256_setzero_si256();
  for (int64_t g0 = 0; g0 < K4; g0 += kAvx2Span) {
    const int64_t g1 = std::min(K4, g0 + kAvx2Span);
    __m256i s0[MR], s1[MR];  // int16 pair sums over groups [g0, g1)
    for (int r = 0; r < MR; ++r) s0[r] = s1[r] = _mm256_setzero_si256();
    for (int64_t g = g0; g < g1; ++g) {
      const __m256i b0 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(half + g * 128));
      const __m256i b1 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(half + g * 128 + 32));
      for (int r = 0; r < MR; ++r) {
        int32_t a4;
        std::memcpy(&a4, x + r * ldx + 4 * g, 4);
        const __m256i a = _mm256_set1_epi32(a4);
        s0[r] = _mm256_add_epi16(s0[r], _mm256_maddubs_epi16(b0, a));
        s1[r] = _mm256_add_epi16(s1[r], _mm256_maddubs_epi16(b1, a));
      }
    }
    for (int r = 0; r < MR; ++r) {
      c0[r] = _mm256_add_epi32(c0[r], _mm256_madd_epi16(s0[r], ones));
      c1[r] = _mm256_add_epi32(c1[r], _mm256_madd_epi16(s1[r], ones));
    }
  }
  for (int r = 0; r < MR; ++r) {
    out(r, 0, c0[r]);
    out(r, 1, c1[r]);
  }
}

// acc[m, n] = sum_k x[m, k] cw[n, k] for x [M, K] (row stride ldx) and w [N, K]: calls
// Store(m, n, cols, __m256i exact_acc) for each row m and 8 columns from n, of which the first
// cols (1..8) are < N.
template <class Store>
BITNET_AVX2 void igemm_avx2(const int8_t* x, int64_t M, int64_t ldx, const PackedTernary& w,
                            Store&& store) {
  const auto tile = [&](int64_t m, int mr, const int32_t* rs, const uint8_t* half, int64_t n)
                        BITNET_AVX2 {
                          const auto out = [&](int r, int q, __m256i acc) BITNET_AVX2 {
                            const int64_t nq = n + 8 * q;
                            if (nq >= w.N) return;
                            const int cols = int(std::min<int64_t>(8, w.N - nq));
                            store(m + r, nq, cols, _mm256_sub_epi32(acc, _mm256_set1_epi32(rs[r])));
                          };
                          with_rows<kAvx2MR>(mr, [&](auto MR) BITNET_AVX2 {
                            micro_avx2<decltype(MR)::value>(x + m * ldx, ldx, half, w.K4, out);
                          });
                        };
  for_micro_tiles(x, M, ldx, w, 16, kAvx2MR, tile);
}

// Lanes [0, cols) set: the mask of vpmaskmovd / vmaskmovps for a partial 8-column store.
BITNET_AVX2 inline __m256i first_lanes(int cols) {
  return _mm256_cmpgt_epi32(_mm256_set1_epi32(cols), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}
#endif  // BITNET_X86

// ---- portable path ------------------------------------------------------------------------------
// Any CPU, plain C++ (the compiler may vectorise it). Same sums from the same packed layout and
// bias as the SIMD kernels: for x [M, K] and w [N, K],
//   acc[m, n] = sum_g sum_j byte[g][n][j] * x[m, 4g + j] - rowsum(x[m])  (= sum_k cw cx);
// calls Store(m, n, int32 acc) per element.
template <class Store>
void igemm_portable(const int8_t* x, int64_t M, int64_t ldx, const PackedTernary& w,
                    Store&& store) {
  const auto tile = [&](int64_t m, int, const int32_t* rs, const uint8_t* panel, int64_t n) {
    const int8_t* xr = x + m * ldx;
    int32_t acc[kPanel] = {};
    for (int64_t g = 0; g < w.K4; ++g) {
      const uint8_t* b = panel + g * 128;
      const int32_t x0 = xr[4 * g], x1 = xr[4 * g + 1], x2 = xr[4 * g + 2], x3 = xr[4 * g + 3];
      for (int64_t c = 0; c < kPanel; ++c)
        acc[c] += b[4 * c] * x0 + b[4 * c + 1] * x1 + b[4 * c + 2] * x2 + b[4 * c + 3] * x3;
    }
    for (int64_t c = 0; c < kPanel && n + c < w.N; ++c) store(m, n + c, acc[c] - rs[0]);
  };
  for_micro_tiles(x, M, ldx, w, kPanel, 1, tile);
}

void check_args(const char* op, const int8_t* x, int64_t M, int64_t ldx, const PackedTernary& w) {
  BN_CHECK(w.N >= 1 && w.K >= 1 && w.K4 == groups(w.K) && w.bytes.defined(), op,
           "weights not packed (N ", w.N, ", K ", w.K, ")");
  BN_CHECK(M >= 0 && ldx >= 4 * w.K4 && (x != nullptr || M == 0), op, "x [", M, ", ", w.K,
           "] with row stride ", ldx, ": need stride >= ", 4 * w.K4, " (K padded to 4)");
}

}  // namespace

namespace {
IgemmKernel g_forced = IgemmKernel::Auto;

IgemmKernel fastest() {
  static const IgemmKernel k = igemm_available(IgemmKernel::Avx512Vnni) ? IgemmKernel::Avx512Vnni
                               : igemm_available(IgemmKernel::Avx2)     ? IgemmKernel::Avx2
                                                                        : IgemmKernel::Portable;
  return k;
}
IgemmKernel active() { return g_forced == IgemmKernel::Auto ? fastest() : g_forced; }
}  // namespace

const char* igemm_kernel_name(IgemmKernel k) {
  switch (k) {
    case IgemmKernel::Avx512Vnni:
      return "avx512-vnni";
    case IgemmKernel::Avx2:
      return "avx2";
    case IgemmKernel::Portable:
      return "portable";
    default:
      return "auto";
  }
}

bool igemm_available(IgemmKernel k) {
  switch (k) {
#if BITNET_X86
    case IgemmKernel::Avx512Vnni:
      return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
             __builtin_cpu_supports("avx512vnni");
    case IgemmKernel::Avx2:
      return __builtin_cpu_supports("avx2");
#else
    case IgemmKernel::Avx512Vnni:
    case IgemmKernel::Avx2:
      return false;
#endif
    default:
      return true;
  }
}
const char* igemm_kernel() { return igemm_kernel_name(active()); }
void igemm_force(IgemmKernel k) {
  BN_CHECK(igemm_available(k), "igemm_force", "the ", igemm_kernel_name(k),
           " kernel needs an instruction set this CPU lacks");
  g_forced = k;
}

BitLinearRoute bitlinear_route() {
  const std::string k = igemm_kernel();
  return k == "avx512-vnni" ? BitLinearRoute::IntegerVnni
         : k == "avx2"      ? BitLinearRoute::IntegerAvx2
                            : BitLinearRoute::IntegerPortable;
}

const char* to_string(BitLinearRoute r) {
  switch (r) {
    case BitLinearRoute::IntegerVnni:
      return "integer-vnni";
    case BitLinearRoute::IntegerAvx2:
      return "integer-avx2";
    case BitLinearRoute::IntegerPortable:
      return "integer-portable";
    case BitLinearRoute::Float:
      return "float";
  }
  return "?";
}

PackedTernary pack_ternary(const int8_t* codes, int64_t N, int64_t K) {
  BN_CHECK(N >= 1 && K >= 1 && codes != nullptr, "pack_ternary", "bad weight codes [", N, ", ", K,
           "]");
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
      for (int64_t k = 4 * full; k < K; ++k)
        panel[full * 128 + c * 4 + (k % 4)] = uint8_t(row[k] + 1);
    }
  }
  return p;
}

void igemm_ternary_s32(const int8_t* x, int64_t M, int64_t ldx, const PackedTernary& w,
                       int32_t* acc, int64_t ldacc) {
  check_args("igemm_ternary_s32", x, M, ldx, w);
  BN_CHECK(ldacc >= w.N, "igemm_ternary_s32", "acc row stride ", ldacc, " < N ", w.N);
#if BITNET_X86
  if (active() == IgemmKernel::Avx512Vnni)
    return igemm_vnni(x, M, ldx, w,
                      [&](int64_t m, int64_t n, __mmask16 mask, __m512i v)
                          BITNET_VNNI { _mm512_mask_storeu_epi32(acc + m * ldacc + n, mask, v); });
  if (active() == IgemmKernel::Avx2)
    return igemm_avx2(x, M, ldx, w, [&](int64_t m, int64_t n, int cols, __m256i v) BITNET_AVX2 {
      int32_t* o = acc + m * ldacc + n;
      if (cols == 8)
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(o), v);
      else
        _mm256_maskstore_epi32(o, first_lanes(cols), v);
    });
#endif
  igemm_portable(x, M, ldx, w, [&](int64_t m, int64_t n, int32_t v) { acc[m * ldacc + n] = v; });
}

void igemm_ternary_f32(const int8_t* x, int64_t M, int64_t ldx, const PackedTernary& w,
                       const float* xscale, float wscale, float* y, int64_t ldy) {
  check_args("igemm_ternary_f32", x, M, ldx, w);
  BN_CHECK(ldy >= w.N && xscale != nullptr, "igemm_ternary_f32", "y row stride ", ldy, " < N ", w.N,
           " or null scales");
#if BITNET_X86
  if (active() == IgemmKernel::Avx512Vnni)
    return igemm_vnni(
        x, M, ldx, w, [&](int64_t m, int64_t n, __mmask16 mask, __m512i v) BITNET_VNNI {
          const __m512 s = _mm512_set1_ps(xscale[m] * wscale);
          _mm512_mask_storeu_ps(y + m * ldy + n, mask, _mm512_mul_ps(_mm512_cvtepi32_ps(v), s));
        });
  if (active() == IgemmKernel::Avx2)
    return igemm_avx2(x, M, ldx, w, [&](int64_t m, int64_t n, int cols, __m256i v) BITNET_AVX2 {
      const __m256 r = _mm256_mul_ps(_mm256_cvtepi32_ps(v), _mm256_set1_ps(xscale[m] * wscale));
      if (cols == 8)
        _mm256_storeu_ps(y + m * ldy + n, r);
      else
        _mm256_maskstore_ps(y + m * ldy + n, first_lanes(cols), r);
    });
#endif
  igemm_portable(x, M, ldx, w, [&](int64_t m, int64_t n, int32_t v) {
    y[m * ldy + n] = float(v) * (xscale[m] * wscale);
  });
}

}  // namespace quant
