// Matrix products: 2-D, flattened-leading-dims and batched, with transposes folded into GEMM.
#include "autograd/dispatch.h"
#include "autograd/ops.h"

namespace autograd {
namespace {

struct MatmulGeom {
  int64_t batch, M, N, K;  // batch == 0 for the non-batched forms
};

MatmulGeom check_matmul(const Variable& a, const Variable& b, bool ta, bool tb) {
  BN_CHECK(a.defined() && b.defined(), "matmul", "undefined operand");
  check_same_device("matmul", {&a.value(), &b.value()});
  check_f32("matmul", {&a.value(), &b.value()});
  const Shape &sa = a.shape(), &sb = b.shape();
  if (sa.rank() == 3 && sb.rank() == 3) {
    BN_CHECK(sa[0] == sb[0], "matmul", "batch sizes differ: ", sa, " vs ", sb);
    const int64_t M = ta ? sa[2] : sa[1], K = ta ? sa[1] : sa[2];
    const int64_t Kb = tb ? sb[2] : sb[1], N = tb ? sb[1] : sb[2];
    BN_CHECK(K == Kb, "matmul", "inner dims differ: ", sa, (ta ? "^T" : ""), " @ ", sb,
             (tb ? "^T" : ""));
    return {sa[0], M, N, K};
  }
  BN_CHECK(sb.rank() == 2 && sa.rank() >= 1, "matmul", "unsupported ranks ", sa, " @ ", sb);
  BN_CHECK(!ta || sa.rank() == 2, "matmul", "transposed a must be 2-D, got ", sa);
  const int64_t K = ta ? sa[0] : sa.back(), M = ta ? sa[1] : sa.rows();
  const int64_t Kb = tb ? sb[1] : sb[0], N = tb ? sb[0] : sb[1];
  BN_CHECK(K == Kb, "matmul", "inner dims differ: ", sa, (ta ? "^T" : ""), " @ ", sb,
           (tb ? "^T" : ""));
  return {0, M, N, K};
}

// C_i = op(A_i) op(B_i) (+ beta C_i) over the batch (the device runs batches in parallel).
void batched_gemm(Device dev, const MatmulGeom& g, bool ta, bool tb, const float* A, const float* B,
                  float beta, float* C) {
  GemmArgs a;
  a.ta = ta, a.tb = tb, a.M = g.M, a.N = g.N, a.K = g.K, a.A = A, a.lda = ta ? g.M : g.K, a.B = B;
  a.ldb = tb ? g.K : g.N, a.beta = beta, a.C = C, a.ldc = g.N;
  a.batch = g.batch, a.stride_a = g.M * g.K, a.stride_b = g.K * g.N, a.stride_c = g.M * g.N;
  BN_KERNEL(dev, gemm)(a);
}

// One GEMM per batch entry (or one when batch == 0) with the given operand strides.
void gemm_each(Device dev, int64_t batch, bool ta, bool tb, int64_t M, int64_t N, int64_t K,
               const float* A, int64_t lda, int64_t sa, const float* B, int64_t ldb, int64_t sb,
               float* C, int64_t ldc, int64_t sc) {
  GemmArgs a;
  a.ta = ta, a.tb = tb, a.M = M, a.N = N, a.K = K, a.A = A, a.lda = lda, a.B = B, a.ldb = ldb;
  a.beta = 1.0f, a.C = C, a.ldc = ldc, a.batch = batch, a.stride_a = sa, a.stride_b = sb;
  a.stride_c = sc;
  BN_KERNEL(dev, gemm)(a);
}

struct MatmulNode final : Node {
  Variable a, b;
  bool ta, tb;
  MatmulGeom g;
  MatmulNode(Variable a_, Variable b_, bool ta_, bool tb_, MatmulGeom g_)
      : a(a_), b(b_), ta(ta_), tb(tb_), g(g_) {}
  const char* name() const override { return "matmul"; }
  void backward() override {
    const float* dC = out.grad().data();
    const Device dev = out.grad().device();
    const int64_t M = g.M, N = g.N, K = g.K;
    const int64_t lda = ta ? M : K, ldb = tb ? K : N;
    const int64_t sA = M * K, sB = K * N, sC = M * N;
    const float *A = a.data(), *B = b.data();
    if (a.requires_grad()) {
      float* dA = a.grad_accum().data();
      if (!ta)  // dA[M,K] += dC[M,N] op(B)^T
        gemm_each(dev, g.batch, false, !tb, M, K, N, dC, N, sC, B, ldb, sB, dA, K, sA);
      else  // A stored [K,M]: dA += op(B) dC^T
        gemm_each(dev, g.batch, tb, true, K, M, N, B, ldb, sB, dC, N, sC, dA, M, sA);
    }
    if (b.requires_grad()) {
      float* dB = b.grad_accum().data();
      if (!tb)  // dB[K,N] += op(A)^T dC
        gemm_each(dev, g.batch, !ta, false, K, N, M, A, lda, sA, dC, N, sC, dB, N, sB);
      else  // B stored [N,K]: dB += dC^T op(A)
        gemm_each(dev, g.batch, true, ta, N, K, M, dC, N, sC, A, lda, sA, dB, K, sB);
    }
  }
};

}  // namespace

Variable matmul(const Variable& a, const Variable& b, bool ta, bool tb) {
  const MatmulGeom g = check_matmul(a, b, ta, tb);
  Shape os;
  if (g.batch)
    os = Shape{g.batch, g.M, g.N};
  else if (ta || a.shape().rank() == 2)
    os = Shape{g.M, g.N};
  else {
    os = a.shape();
    os.at(-1) = g.N;
  }
  Tensor y = Tensor::empty(os, DType::F32, a.value().device());
  batched_gemm(y.device(), g, ta, tb, a.data(), b.data(), 0.0f, y.data());
  if (Tape* t = recording({&a, &b})) {
    auto& node = t->record<MatmulNode>(a, b, ta, tb, g);
    return node.set_output(y);
  }
  return Variable(y);
}

}  // namespace autograd
