// fp32 GEMM: OpenBLAS's sgemm (OpenMP build) when found at configure time, else Eigen's; both
// read the row-major buffers in place (strides, transpose flags), without copies.
#include "autograd/kernels.h"

#include <Eigen/Core>
#ifdef BITNET_OPENBLAS
#include <cblas.h>
#endif

namespace autograd::kernels {

namespace {
using RowMat = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
using CMap = Eigen::Map<const RowMat, Eigen::Unaligned, Eigen::OuterStride<>>;
using MMap = Eigen::Map<RowMat, Eigen::Unaligned, Eigen::OuterStride<>>;

template <class OA, class OB>
void run(float alpha, const OA& a, const OB& b, float beta, MMap& c) {
  if (beta == 0.0f) {
    c.noalias() = alpha * (a * b);
  } else {
    if (beta != 1.0f) c *= beta;
    c.noalias() += alpha * (a * b);
  }
}
}  // namespace

void gemm(bool ta, bool tb, int64_t M, int64_t N, int64_t K, float alpha, const float* A,
          int64_t lda, const float* B, int64_t ldb, float beta, float* C, int64_t ldc) {
  if (M == 0 || N == 0) return;
  MMap c(C, M, N, Eigen::OuterStride<>(ldc));
  if (K == 0) {
    if (beta == 0.0f)
      c.setZero();
    else
      c *= beta;
    return;
  }
#ifdef BITNET_OPENBLAS
  cblas_sgemm(CblasRowMajor, ta ? CblasTrans : CblasNoTrans, tb ? CblasTrans : CblasNoTrans, int(M),
              int(N), int(K), alpha, A, int(lda), B, int(ldb), beta, C, int(ldc));
#else
  CMap a(A, ta ? K : M, ta ? M : K, Eigen::OuterStride<>(lda));
  CMap b(B, tb ? N : K, tb ? K : N, Eigen::OuterStride<>(ldb));
  if (!ta && !tb)
    run(alpha, a, b, beta, c);
  else if (ta && !tb)
    run(alpha, a.transpose(), b, beta, c);
  else if (!ta && tb)
    run(alpha, a, b.transpose(), beta, c);
  else
    run(alpha, a.transpose(), b.transpose(), beta, c);
#endif
}

const char* gemm_backend() {
#ifdef BITNET_OPENBLAS
  return "openblas";
#else
  return "eigen";
#endif
}

const char* gemm_core() {
#ifdef BITNET_OPENBLAS
  return openblas_get_corename();
#else
  return "eigen";
#endif
}

}  // namespace autograd::kernels
