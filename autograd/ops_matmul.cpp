// Matrix products: 2-D, flattened-leading-dims and batched, with transposes folded into GEMM.
#include "autograd/error.h"
#include "autograd/kernels.h"
#include "autograd/ops.h"

namespace autograd {
namespace {

struct MatmulGeom {
  int64_t batch, M, N, K;  // batch == 0 for the non-batched forms
};

MatmulGeom check_matmul(const Variable& a, const Variable& b, bool ta, bool tb) {
  BN_CHECK(a.defined() && b.defined(), "matmul", "undefined operand");
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

// C_i = op(A_i) op(B_i) (+ beta C_i) over the batch; batches run in parallel, each GEMM serial.
void batched_gemm(const MatmulGeom& g, bool ta, bool tb, const float* A, const float* B, float beta,
                  float* C) {
  const int64_t lda = ta ? g.M : g.K, ldb = tb ? g.K : g.N;
  if (g.batch == 0) {
    kernels::gemm(ta, tb, g.M, g.N, g.K, 1.0f, A, lda, B, ldb, beta, C, g.N);
    return;
  }
  kernels::parallel_for(g.batch, [&](int64_t i) {
    kernels::gemm(ta, tb, g.M, g.N, g.K, 1.0f, A + i * g.M * g.K, lda, B + i * g.K * g.N, ldb,
                  beta, C + i * g.M * g.N, g.N);
  });
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
    const int64_t M = g.M, N = g.N, K = g.K;
    const int64_t lda = ta ? M : K, ldb = tb ? K : N;
    const int64_t nb = g.batch ? g.batch : 1;
    const int64_t sA = M * K, sB = K * N, sC = M * N;
    const float *A = a.data(), *B = b.data();
    auto each = [&](auto&& f) {
      if (g.batch == 0) f(int64_t(0));
      else kernels::parallel_for(nb, f);
    };
    if (a.requires_grad()) {
      float* dA = a.grad_accum().data();
      each([&](int64_t i) {
        if (!ta)  // dA[M,K] += dC[M,N] op(B)^T
          kernels::gemm(false, !tb, M, K, N, 1.0f, dC + i * sC, N, B + i * sB, ldb, 1.0f,
                        dA + i * sA, K);
        else  // A stored [K,M]: dA += op(B) dC^T
          kernels::gemm(tb, true, K, M, N, 1.0f, B + i * sB, ldb, dC + i * sC, N, 1.0f,
                        dA + i * sA, M);
      });
    }
    if (b.requires_grad()) {
      float* dB = b.grad_accum().data();
      each([&](int64_t i) {
        if (!tb)  // dB[K,N] += op(A)^T dC
          kernels::gemm(!ta, false, K, N, M, 1.0f, A + i * sA, lda, dC + i * sC, N, 1.0f,
                        dB + i * sB, N);
        else  // B stored [N,K]: dB += dC^T op(A)
          kernels::gemm(true, ta, N, K, M, 1.0f, dC + i * sC, N, A + i * sA, lda, 1.0f,
                        dB + i * sB, K);
      });
    }
  }
};

}  // namespace

Variable matmul(const Variable& a, const Variable& b, bool ta, bool tb) {
  const MatmulGeom g = check_matmul(a, b, ta, tb);
  Shape os;
  if (g.batch) os = Shape{g.batch, g.M, g.N};
  else if (ta || a.shape().rank() == 2) os = Shape{g.M, g.N};
  else {
    os = a.shape();
    os.at(-1) = g.N;
  }
  Tensor y = Tensor::empty(os);
  batched_gemm(g, ta, tb, a.data(), b.data(), 0.0f, y.data());
  if (Tape* t = recording({&a, &b})) {
    auto& node = t->record<MatmulNode>(a, b, ta, tb, g);
    return node.set_output(y);
  }
  return Variable(y);
}

}  // namespace autograd
