// CPU kernels of the element-wise ops, activations, reductions, fills and GEMM dispatch.
#include <cmath>

#include "autograd/cpu/cpu.h"
#include "autograd/kernels.h"

namespace autograd::cpu {
using kernels::parallel_for;
using kernels::parallel_range;

void fill(const Tensor& t, float v) {
  float* p = t.data();
  std::fill(p, p + t.numel(), v);
}

void gemm(const GemmArgs& g) {
  BN_CHECK(g.precision == GemmPrecision::F32, "gemm", "precision ", to_string(g.precision),
           " [", g.M, "x", g.K, "] @ [", g.K, "x", g.N,
           "] on cpu: the CPU computes fp32 GEMMs only (training.precision: fp32)");
  BN_CHECK(!g.A16 && !g.B16, "gemm", "bf16 operands on cpu (fp32 only)");
  if (g.batch == 0) {
    kernels::gemm(g.ta, g.tb, g.M, g.N, g.K, g.alpha, g.A, g.lda, g.B, g.ldb, g.beta, g.C, g.ldc);
    return;
  }
  // batches run in parallel, each GEMM serial
  parallel_for(g.batch, [&](int64_t i) {
    kernels::gemm(g.ta, g.tb, g.M, g.N, g.K, g.alpha, g.A + i * g.stride_a, g.lda,
                  g.B + i * g.stride_b, g.ldb, g.beta, g.C + i * g.stride_c, g.ldc);
  });
}

// y = bf16(x), round to nearest even (NaN kept quiet).
void round_bf16(const Tensor& x, const Tensor& y) {
  check_f32("round_bf16", {&x});
  BN_CHECK(y.dtype() == DType::BF16 && y.numel() == x.numel(), "round_bf16", "output ", y.shape(),
           " ", dtype_name(y.dtype()), " for input ", x.shape(), " (need bf16, same numel)");
  const float* xv = x.data();
  bf16* yv = y.data<bf16>();
  parallel_for(x.numel(), [&](int64_t i) { yv[i] = to_bf16(xv[i]); });
}

void binary(BinOp k, const Tensor& a, const Tensor& b, const Tensor& y) {
  const bool bc = a.shape() != b.shape();
  const float *av = a.data(), *bv = b.data();
  float* yv = y.data();
  const int64_t n = y.numel(), D = bc ? b.shape().back() : 1;  // (rank-0 operands: no broadcast)
  auto run = [&](auto op) {
    if (bc)
      parallel_for(n / D, [&](int64_t r) {
        for (int64_t j = 0; j < D; ++j) yv[r * D + j] = op(av[r * D + j], bv[j]);
      });
    else
      parallel_range(n, [&](int64_t i0, int64_t i1) {
        for (int64_t i = i0; i < i1; ++i) yv[i] = op(av[i], bv[i]);
      });
  };
  if (k == BinOp::Add)
    run([](float x, float z) { return x + z; });
  else if (k == BinOp::Sub)
    run([](float x, float z) { return x - z; });
  else
    run([](float x, float z) { return x * z; });
}

void axpy(const Tensor& dt, const Tensor& st, float alpha) {
  const float* s = st.data();
  float* d = dt.data();
  if (alpha == 1.0f)
    parallel_range(st.numel(), [&](int64_t i0, int64_t i1) {
      for (int64_t i = i0; i < i1; ++i) d[i] += s[i];
    });
  else if (alpha == -1.0f)
    parallel_range(st.numel(), [&](int64_t i0, int64_t i1) {
      for (int64_t i = i0; i < i1; ++i) d[i] -= s[i];
    });
  else
    parallel_for(st.numel(), [&](int64_t i) { d[i] += alpha * s[i]; });
}

void mul_acc(const Tensor& dt, const Tensor& dyt, const Tensor& b, bool bcast) {
  float* da = dt.data();
  const float *dy = dyt.data(), *bv = b.data();
  const int64_t n = dyt.numel(), D = bcast ? b.shape().back() : 1;
  if (bcast)
    parallel_for(n / D, [&](int64_t r) {
      for (int64_t j = 0; j < D; ++j) da[r * D + j] += dy[r * D + j] * bv[j];
    });
  else
    parallel_range(n, [&](int64_t i0, int64_t i1) {
      for (int64_t i = i0; i < i1; ++i) da[i] += dy[i] * bv[i];
    });
}

void row_sum(const Tensor& dt, const Tensor& dyt, const Tensor& a, float sgn) {
  const int64_t D = dt.numel(), rows = dyt.numel() / D;
  const float* dy = dyt.data();
  const float* av = a.defined() ? a.data() : nullptr;
  kernels::det_reduce_rows(rows, D, dt.data(), [&](int64_t r0, int64_t r1, double* acc) {
    for (int64_t r = r0; r < r1; ++r)
      for (int64_t j = 0; j < D; ++j)
        acc[j] += av ? double(dy[r * D + j]) * av[r * D + j] : double(sgn * dy[r * D + j]);
  });
}

void scale(const Tensor& a, float s, const Tensor& y) {
  const float* av = a.data();
  float* yv = y.data();
  parallel_for(a.numel(), [&](int64_t i) { yv[i] = s * av[i]; });
}

void sum_all(const Tensor& a, bool is_mean, float factor, const Tensor& y) {
  const float* av = a.data();
  double s = kernels::det_reduce(a.numel(), [&](int64_t i0, int64_t i1) {
    double p = 0;
    for (int64_t i = i0; i < i1; ++i) p += av[i];
    return p;
  });
  y.data()[0] = float(is_mean ? s * factor : s);
}

void add_scalar(const Tensor& dt, const Tensor& dyt, float factor) {
  const float g = dyt.data()[0] * factor;
  float* da = dt.data();
  parallel_for(dt.numel(), [&](int64_t i) { da[i] += g; });
}

void unary(UnOp k, const Tensor& x, const Tensor& y) {
  const float* xv = x.data();
  float* yv = y.data();
  auto run = [&](auto f) {
    parallel_range(x.numel(), [&](int64_t i0, int64_t i1) {
      for (int64_t i = i0; i < i1; ++i) yv[i] = f(xv[i]);
    });
  };
  if (k == UnOp::Relu)
    run([](float v) { return v > 0 ? v : 0.0f; });
  else if (k == UnOp::Relu2)
    run([](float v) { return v > 0 ? v * v : 0.0f; });
  else
    run([](float v) { return v / (1.0f + std::exp(-v)); });
}

void unary_backward(UnOp k, const Tensor& x, const Tensor& dyt, const Tensor& dxt) {
  const float *dy = dyt.data(), *xv = x.data();
  float* dx = dxt.data();
  auto run = [&](auto deriv) {
    parallel_range(x.numel(), [&](int64_t i0, int64_t i1) {
      for (int64_t i = i0; i < i1; ++i) dx[i] += dy[i] * deriv(xv[i]);
    });
  };
  if (k == UnOp::Relu)
    run([](float v) { return v > 0 ? 1.0f : 0.0f; });
  else if (k == UnOp::Relu2)
    run([](float v) { return v > 0 ? 2.0f * v : 0.0f; });
  else
    run([](float v) {
      const float s = 1.0f / (1.0f + std::exp(-v));
      return s * (1.0f + v * (1.0f - s));
    });
}

void relu2_mul(const Tensor& g, const Tensor& u, const Tensor& y) {
  const float *gv = g.data(), *uv = u.data();
  float* yv = y.data();
  parallel_range(g.numel(), [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) {
      const float r = gv[i] > 0 ? gv[i] : 0.0f;
      yv[i] = (r * r) * uv[i];
    }
  });
}

void relu2_mul_backward(const Tensor& g, const Tensor& u, const Tensor& dyt, const Tensor& dgt,
                        const Tensor& dut) {
  const float *dy = dyt.data(), *gv = g.data(), *uv = u.data();
  float* dg = opt(dgt);
  float* du = opt(dut);
  parallel_range(g.numel(), [&](int64_t i0, int64_t i1) {
    if (dg)
      for (int64_t i = i0; i < i1; ++i) {
        const float r = gv[i] > 0 ? gv[i] : 0.0f;
        dg[i] += (dy[i] * uv[i]) * (2.0f * r);  // torch's order: (dy u) (2 relu(g))
      }
    if (du)
      for (int64_t i = i0; i < i1; ++i) {
        const float r = gv[i] > 0 ? gv[i] : 0.0f;
        du[i] += dy[i] * (r * r);
      }
  });
}

}  // namespace autograd::cpu
