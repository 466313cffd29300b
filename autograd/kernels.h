// Low-level kernels shared by the ops: Eigen-backed GEMM and deterministic OpenMP helpers.
//
// Determinism contract: element-wise and row kernels partition work statically; every reduction
// across rows goes through det_reduce*, which splits the range into a fixed number of chunks that
// does not depend on the thread count and sums the partials in chunk order. Results are therefore
// bit-identical run to run (and across thread counts, except for Eigen's GEMM blocking).
#pragma once
#include <omp.h>

#include <algorithm>
#include <bit>
#include <cstdint>
#include <vector>

namespace autograd::kernels {

// C[M,N] = alpha * op(A) @ op(B) + beta * C, all row-major with row strides lda/ldb/ldc.
// op(A) is [M,K]: A is stored [M,K] (ta=false) or [K,M] (ta=true); op(B) is [K,N] likewise.
// beta == 0 overwrites C (it may hold garbage). Multi-threaded (OpenMP) unless already inside
// a parallel region. Backend: OpenBLAS sgemm (OpenMP build) if configured, else Eigen.
void gemm(bool ta, bool tb, int64_t M, int64_t N, int64_t K, float alpha, const float* A,
          int64_t lda, const float* B, int64_t ldb, float beta, float* C, int64_t ldc);

// "openblas" or "eigen": the library behind gemm (chosen at configure time, BITNET_BLAS).
const char* gemm_backend();
// The kernel family the GEMM library runs: OpenBLAS's core name as it chose it at load time
// ("SkylakeX", "Zen", ...; OPENBLAS_CORETYPE overrides the detection), or "eigen".
const char* gemm_core();

// e^x in float without a libm call, so loops over it vectorise: x = n ln2 + r (n rounded to
// nearest by the 1.5*2^23 trick, ln2 split in two), e^r by its degree-6 Taylor polynomial on
// |r| <= ln2/2 (truncation < 1.3e-7 relative), times 2^n built in the exponent bits. Within
// ~2 ulp of expf on [-87.3, 88.7]; x is clamped to that range (e^-87.3 ~ 1.2e-38 stands in for
// smaller results, +inf for overflow is not produced); NaN propagates.
inline float exp_fast(float x) {
  x = x < -87.3f ? -87.3f : x;
  x = x > 88.7f ? 88.7f : x;
  const float magic = 12582912.0f;  // 1.5 * 2^23
  const float t = x * 1.44269504088896341f + magic;
  const float n = t - magic;
  float r = x - n * 0.693145751953125f;
  r = r - n * 1.428606765330187045e-06f;
  float p = 1.0f / 720.0f;
  p = p * r + 1.0f / 120.0f;
  p = p * r + 1.0f / 24.0f;
  p = p * r + 1.0f / 6.0f;
  p = p * r + 0.5f;
  p = p * r + 1.0f;
  p = p * r + 1.0f;
  const uint32_t e = (std::bit_cast<uint32_t>(t) - 0x4B400000u + 127u) << 23;
  return p * std::bit_cast<float>(e);
}

// sum_j term(j) in double over 8 fixed lanes (j mod 8) combined pairwise, then the tail: the
// order depends on n only (deterministic), and the independent lanes vectorise.
template <class Term>
inline double lane_sum_d(int64_t n, Term&& term) {
  double acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  int64_t j = 0;
  for (; j + 8 <= n; j += 8)
    for (int l = 0; l < 8; ++l) acc[l] += term(j + l);
  for (int l = 0; j + l < n; ++l) acc[l] += term(j + l);
  return ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
}
// sum_j x_j y_j (dot_d(x, x, n): the sum of squares) and sum_j x_j, as lane_sum_d.
inline double dot_d(const float* x, const float* y, int64_t n) {
  return lane_sum_d(n, [&](int64_t k) { return double(x[k]) * double(y[k]); });
}
inline double sum_d(const float* x, int64_t n) {
  return lane_sum_d(n, [&](int64_t k) { return double(x[k]); });
}

// Static-partitioned parallel loop over [0, n).
template <class F>
inline void parallel_for(int64_t n, F&& f) {
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < n; ++i) f(i);
}

// Static-partitioned parallel loop handing each thread one contiguous range: f(i0, i1) over
// [0, n), so that simple inner loops vectorise. Serial below `grain` items.
template <class F>
inline void parallel_range(int64_t n, F&& f, int64_t grain = 32768) {
  if (n <= grain || omp_in_parallel()) {
    if (n > 0) f(int64_t(0), n);
    return;
  }
#pragma omp parallel
  {
    const int64_t T = omp_get_num_threads(), t = omp_get_thread_num();
    const int64_t i0 = n * t / T, i1 = n * (t + 1) / T;
    if (i1 > i0) f(i0, i1);
  }
}

// Number of fixed chunks used by deterministic reductions over n items.
inline int64_t det_chunks(int64_t n) { return std::max<int64_t>(1, std::min<int64_t>(n, 64)); }

// sum_{chunks} f(i0, i1) in chunk order, chunks fixed by n alone. f returns a double partial.
template <class F>
inline double det_reduce(int64_t n, F&& f) {
  const int64_t C = det_chunks(n);
  std::vector<double> part(size_t(C), 0.0);
#pragma omp parallel for schedule(static)
  for (int64_t c = 0; c < C; ++c) part[size_t(c)] = f(n * c / C, n * (c + 1) / C);
  double s = 0;
  for (double p : part) s += p;
  return s;
}

// out[j] += sum over rows of contributions, where f(r0, r1, double* acc[D]) adds rows [r0,r1)
// into a zeroed double accumulator. Chunks fixed by `rows` alone, summed in order.
template <class F>
inline void det_reduce_rows(int64_t rows, int64_t D, float* out, F&& f) {
  const int64_t C = det_chunks(rows);
  std::vector<double> part(size_t(C * D), 0.0);
#pragma omp parallel for schedule(static)
  for (int64_t c = 0; c < C; ++c) f(rows * c / C, rows * (c + 1) / C, part.data() + c * D);
  for (int64_t j = 0; j < D; ++j) {
    double s = 0;
    for (int64_t c = 0; c < C; ++c) s += part[size_t(c * D + j)];
    out[j] += float(s);
  }
}

}  // namespace autograd::kernels
