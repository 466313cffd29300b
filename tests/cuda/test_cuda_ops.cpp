// The CUDA kernel table against the CPU table (the reference) on the same inputs: every
// implemented entry of autograd::Kernels, forward and backward, on odd shapes (rows 1/7/33, cols
// 1/5/100, head_dim 100), plus a small model step through ops.h and a Tape.
//
// Tolerances: copies, transposes, band copies and embedding (forward and backward) are exact;
// fp32 arithmetic is compared element-wise with |gpu - cpu| <= kTol (1 + |cpu|), kTol = 1e-5
// (GEMM: kTol sqrt(K), cuBLAS and OpenBLAS sum in different orders). Without a CUDA device every
// test prints "skipped: no CUDA device" and is reported as skipped.
// Run: ctest --preset release -L cuda   (or build/release/tests/test_cuda_ops)
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <iostream>
#include <string>
#include <vector>

#include "autograd/cuda/cuda.h"
#include "autograd/dispatch.h"
#include "autograd/ops.h"
#include "autograd/tape.h"
#include "tests/cuda/cuda_test.h"
#include "tests/test_helpers.h"

using namespace autograd;

namespace {
constexpr double kTol = 1e-5;
const Device kGpu = Device::cuda(0);

const Kernels& cpu() { return cpu_kernels(); }
const Kernels& gpu() { return kernels_for(kGpu); }

using cudatest::rnd;
Tensor ids_tensor(const std::vector<int32_t>& ids) {
  return Tensor::from_host(Shape{int64_t(ids.size())}, ids.data());
}
Tensor G(const Tensor& t) { return t.defined() ? t.to(kGpu) : Tensor(); }

// cpu vs gpu element-wise; tol 0 = exact.
void expect_near(const Tensor& c, const Tensor& g, double tol, const std::string& what) {
  ASSERT_EQ(c.shape(), g.shape()) << what;
  ASSERT_EQ(g.device(), kGpu) << what;
  const std::vector<float> a = c.to_vector(), b = cudatest::widen(g).to_vector();
  int bad = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    const double err = std::fabs(double(a[i]) - double(b[i]));
    const bool ok = tol == 0 ? (a[i] == b[i] || (std::isnan(a[i]) && std::isnan(b[i])))
                             : err <= tol * (1.0 + std::fabs(double(a[i])));
    if (!ok && bad++ < 5)
      ADD_FAILURE() << what << ": element " << i << " of " << c.shape() << ": cpu " << a[i]
                    << " cuda " << b[i] << " (|diff| " << err << ", tol " << tol << ")";
  }
  EXPECT_EQ(bad, 0) << what << ": " << bad << " of " << a.size() << " elements differ";
}
std::string sh(const Shape& s) { return s.str(); }

const std::vector<Shape> kShapes = {Shape{1, 1},   Shape{7, 5},  Shape{33, 100},
                                    Shape{1, 100}, Shape{33, 1}, Shape{2, 7, 5}};
}  // namespace

TEST(CudaOps, Fill) {
  REQUIRE_CUDA();
  for (const Shape& s : kShapes) {
    Tensor c = Tensor::empty(s), g = Tensor::empty(s, DType::F32, kGpu);
    cpu().fill(c, 0.75f), gpu().fill(g, 0.75f);
    expect_near(c, g, 0, "fill " + sh(s));
  }
}

TEST(CudaOps, ScaleAxpyAddScalar) {
  REQUIRE_CUDA();
  for (const Shape& s : kShapes) {
    Tensor a = rnd(s, 1), yc = Tensor::empty(s), yg = Tensor::empty(s, DType::F32, kGpu);
    cpu().scale(a, -1.7f, yc), gpu().scale(G(a), -1.7f, yg);
    expect_near(yc, yg, kTol, "scale " + sh(s));
    for (float alpha : {1.0f, -1.0f, 0.37f}) {
      Tensor d = rnd(s, 2), dg = G(d), src = rnd(s, 3);
      cpu().axpy(d, src, alpha), gpu().axpy(dg, G(src), alpha);
      expect_near(d, dg, kTol, "axpy " + sh(s) + " alpha " + std::to_string(alpha));
    }
    Tensor d = rnd(s, 4), dg = G(d), dy = Tensor::full(Shape{1}, 0.3f);
    cpu().add_scalar(d, dy, 0.25f), gpu().add_scalar(dg, G(dy), 0.25f);
    expect_near(d, dg, kTol, "add_scalar " + sh(s));
  }
}

TEST(CudaOps, SumAll) {
  REQUIRE_CUDA();
  for (const Shape& s : {Shape{1}, Shape{7}, Shape{33, 100}, Shape{1000, 1001}}) {
    for (bool mean : {false, true}) {
      Tensor a = rnd(s, 5), yc = Tensor::empty(Shape{}),
             yg = Tensor::empty(Shape{}, DType::F32, kGpu);
      const float f = 1.0f / float(s.numel());
      cpu().sum_all(a, mean, f, yc), gpu().sum_all(G(a), mean, f, yg);
      expect_near(yc, yg, kTol, "sum_all " + sh(s) + (mean ? " mean" : ""));
      // deterministic: a second run gives the same bits
      Tensor y2 = Tensor::empty(Shape{}, DType::F32, kGpu);
      gpu().sum_all(G(a), mean, f, y2);
      expect_near(yg.to(Device::cpu()), y2, 0, "sum_all rerun");
    }
  }
}

TEST(CudaOps, BinaryAndMulAcc) {
  REQUIRE_CUDA();
  for (const Shape& s : kShapes) {
    for (bool bc : {false, true}) {
      const Shape bs = bc ? Shape{s.back()} : s;
      Tensor a = rnd(s, 6), b = rnd(bs, 7);
      for (BinOp op : {BinOp::Add, BinOp::Sub, BinOp::Mul}) {
        Tensor yc = Tensor::empty(s), yg = Tensor::empty(s, DType::F32, kGpu);
        cpu().binary(op, a, b, yc), gpu().binary(op, G(a), G(b), yg);
        expect_near(yc, yg, kTol,
                    "binary " + std::to_string(int(op)) + " " + sh(s) + (bc ? " bcast" : ""));
      }
      Tensor d = rnd(s, 8), dg = G(d), dy = rnd(s, 9);
      cpu().mul_acc(d, dy, b, bc), gpu().mul_acc(dg, G(dy), G(b), bc);
      expect_near(d, dg, kTol, "mul_acc " + sh(s) + (bc ? " bcast" : ""));
    }
  }
}

TEST(CudaOps, RowSum) {
  REQUIRE_CUDA();
  for (const Shape& s : kShapes) {
    Tensor dy = rnd(s, 10), a = rnd(s, 11);
    for (int with_a = 0; with_a < 2; ++with_a) {
      Tensor d = rnd(Shape{s.back()}, 12), dg = G(d);
      cpu().row_sum(d, dy, with_a ? a : Tensor(), -1.0f);
      gpu().row_sum(dg, G(dy), with_a ? G(a) : Tensor(), -1.0f);
      expect_near(d, dg, kTol, "row_sum " + sh(s) + (with_a ? " dy*a" : " -dy"));
    }
  }
}

TEST(CudaOps, UnaryForwardBackward) {
  REQUIRE_CUDA();
  for (const Shape& s : kShapes) {
    Tensor x = rnd(s, 13, -3.0f, 3.0f), dy = rnd(s, 14);
    for (UnOp op : {UnOp::Relu, UnOp::Relu2, UnOp::Silu}) {
      const std::string name = "unary " + std::to_string(int(op)) + " " + sh(s);
      Tensor yc = Tensor::empty(s), yg = Tensor::empty(s, DType::F32, kGpu);
      cpu().unary(op, x, yc), gpu().unary(op, G(x), yg);
      expect_near(yc, yg, kTol, name);
      Tensor dx = rnd(s, 15), dxg = G(dx);
      cpu().unary_backward(op, x, dy, dx), gpu().unary_backward(op, G(x), G(dy), dxg);
      expect_near(dx, dxg, kTol, name + " backward");
    }
  }
}

TEST(CudaOps, Relu2MulForwardBackward) {
  REQUIRE_CUDA();
  for (const Shape& s : kShapes) {
    Tensor g = rnd(s, 16), u = rnd(s, 17), dy = rnd(s, 18);
    Tensor yc = Tensor::empty(s), yg = Tensor::empty(s, DType::F32, kGpu);
    cpu().relu2_mul(g, u, yc), gpu().relu2_mul(G(g), G(u), yg);
    expect_near(yc, yg, kTol, "relu2_mul " + sh(s));
    for (int mask = 1; mask < 4; ++mask) {
      Tensor dgc = mask & 1 ? rnd(s, 19) : Tensor(), duc = mask & 2 ? rnd(s, 20) : Tensor();
      Tensor dgg = G(dgc), dug = G(duc);
      cpu().relu2_mul_backward(g, u, dy, dgc, duc);
      gpu().relu2_mul_backward(G(g), G(u), G(dy), dgg, dug);
      if (mask & 1) expect_near(dgc, dgg, kTol, "relu2_mul_backward dg " + sh(s));
      if (mask & 2) expect_near(duc, dug, kTol, "relu2_mul_backward du " + sh(s));
    }
  }
}

// Under bf16 GEMMs relu2_mul keeps g and u in bf16 (saved_activation): its gradients are the
// CPU's on the bf16-rounded g and u.
TEST(CudaOps, Relu2MulSavesBf16UnderBf16) {
  REQUIRE_CUDA();
  const Shape s{33, 100};
  const Tensor g = rnd(s, 61), u = rnd(s, 62), dy = rnd(s, 63);
  Tensor g16 = Tensor::empty(s, DType::BF16), u16 = Tensor::empty(s, DType::BF16);
  cpu().round_bf16(g, g16), cpu().round_bf16(u, u16);
  Tensor gr = Tensor::empty(s), ur = Tensor::empty(s);  // the rounded values as f32
  for (int64_t i = 0; i < s.numel(); ++i)
    gr[i] = to_float(g16.data<bf16>()[i]), ur[i] = to_float(u16.data<bf16>()[i]);
  Tensor dgc = Tensor::zeros(s), duc = Tensor::zeros(s);
  cpu().relu2_mul_backward(gr, ur, dy, dgc, duc);
  const ScopedGemmPrecision sp(GemmPrecision::BF16);
  Variable vg(G(g), true), vu(G(u), true);
  Tape tape;
  TapeScope scope(tape);
  Variable y = relu2_mul(vg, vu);
  Tensor yc = Tensor::empty(s);
  cpu().relu2_mul(g, u, yc);
  EXPECT_EQ(y.value().dtype(), DType::BF16) << "activation_dtype under bf16";
  expect_near(cudatest::bf16_round(yc), y.value(), 0, "relu2_mul forward (fp32 in, bf16 out)");
  tape.backward(y, G(dy));
  expect_near(dgc, vg.grad(), kTol, "relu2_mul dg from bf16 g, u");
  expect_near(duc, vu.grad(), kTol, "relu2_mul du from bf16 g, u");
}

TEST(CudaOps, TransposeExact) {
  REQUIRE_CUDA();
  struct Case {
    Shape s;
    int d0, d1;
  };
  for (const Case& c :
       {Case{Shape{7, 5}, 0, 1}, Case{Shape{2, 7, 5}, 0, 2}, Case{Shape{3, 1, 5, 4}, 1, 3},
        Case{Shape{2, 3, 33, 5}, 1, 2}, Case{Shape{1, 1}, 0, 1}}) {
    std::vector<int64_t> d = c.s.vec();
    std::swap(d[size_t(c.d0)], d[size_t(c.d1)]);
    const Shape ys(d);
    Tensor x = rnd(c.s, 21);
    for (bool acc : {false, true}) {
      Tensor yc = rnd(ys, 22), yg = G(yc);
      cpu().transpose(x, yc, c.s, c.d0, c.d1, acc), gpu().transpose(G(x), yg, c.s, c.d0, c.d1, acc);
      expect_near(yc, yg, acc ? kTol : 0, "transpose " + sh(c.s) + (acc ? " +=" : ""));
    }
  }
}

TEST(CudaOps, BandCopyExact) {
  REQUIRE_CUDA();
  struct Case {
    Shape big;
    int dim;
    int64_t at, m;
  };
  for (const Case& c :
       {Case{Shape{7, 5}, 1, 1, 3}, Case{Shape{33, 100}, 0, 32, 1}, Case{Shape{2, 7, 5}, 1, 0, 7},
        Case{Shape{3, 33, 5}, 1, 4, 20}, Case{Shape{1, 1}, 0, 0, 1}}) {
    std::vector<int64_t> d = c.big.vec();
    d[size_t(c.dim)] = c.m;
    const Shape ss(d);
    for (bool to_small : {false, true})
      for (bool acc : {false, true}) {
        Tensor big = rnd(c.big, 23), small = rnd(ss, 24), bg = G(big), sg = G(small);
        cpu().band_copy(big, small, c.dim, c.at, to_small, acc);
        gpu().band_copy(bg, sg, c.dim, c.at, to_small, acc);
        const std::string name =
            "band_copy " + sh(c.big) + (to_small ? " to_small" : " to_big") + (acc ? " +=" : "");
        expect_near(big, bg, acc ? kTol : 0, name + " (big)");
        expect_near(small, sg, acc ? kTol : 0, name + " (small)");
      }
  }
}

TEST(CudaOps, EmbeddingExact) {
  REQUIRE_CUDA();
  for (int64_t D : {1, 5, 100}) {
    Tensor w = rnd(Shape{11, D}, 25);
    Tensor ids = ids_tensor({3, 0, 10, 3, 3, 7, 0});  // repeats: the backward sums in order
    Tensor yc = Tensor::empty(Shape{7, D}), yg = Tensor::empty(Shape{7, D}, DType::F32, kGpu);
    cpu().embedding(w, ids, yc), gpu().embedding(G(w), G(ids), yg);
    expect_near(yc, yg, 0, "embedding D=" + std::to_string(D));
    Tensor dy = rnd(Shape{7, D}, 26), dw = rnd(Shape{11, D}, 27), dwg = G(dw);
    cpu().embedding_backward(ids, dy, dw), gpu().embedding_backward(G(ids), G(dy), dwg);
    expect_near(dw, dwg, 0, "embedding_backward D=" + std::to_string(D));
  }
}

TEST(CudaOps, Gemm) {
  REQUIRE_CUDA();
  struct MNK {
    int64_t M, N, K;
  };
  for (const MNK& p : {MNK{1, 1, 1}, MNK{7, 5, 33}, MNK{33, 100, 7}, MNK{1, 100, 5},
                       MNK{100, 1, 100}, MNK{33, 33, 100}})
    for (int batch : {0, 3})
      for (int t = 0; t < 4; ++t) {
        const bool ta = t & 1, tb = t & 2;
        const int64_t nb = std::max(batch, 1);
        Tensor A = rnd(Shape{nb, p.M * p.K}, 28), B = rnd(Shape{nb, p.K * p.N}, 29);
        Tensor Cc = rnd(Shape{nb, p.M * p.N}, 30), Ag = G(A), Bg = G(B), Cg = G(Cc);
        for (int pass = 0; pass < 2; ++pass) {  // beta 0 (overwrite), then beta 0.5
          auto args = [&](const Tensor& a_, const Tensor& b_, const Tensor& c_, float beta) {
            GemmArgs g;
            g.ta = ta, g.tb = tb, g.M = p.M, g.N = p.N, g.K = p.K, g.alpha = 1.3f, g.beta = beta;
            g.A = a_.data(), g.lda = ta ? p.M : p.K, g.B = b_.data(), g.ldb = tb ? p.K : p.N;
            g.C = c_.data(), g.ldc = p.N;
            g.batch = batch, g.stride_a = p.M * p.K, g.stride_b = p.K * p.N, g.stride_c = p.M * p.N;
            return g;
          };
          const float beta = pass ? 0.5f : 0.0f;
          cpu().gemm(args(A, B, Cc, beta)), gpu().gemm(args(Ag, Bg, Cg, beta));
          expect_near(Cc, Cg, kTol * std::sqrt(double(p.K)),
                      "gemm M=" + std::to_string(p.M) + " N=" + std::to_string(p.N) +
                          " K=" + std::to_string(p.K) + " ta=" + std::to_string(ta) +
                          " tb=" + std::to_string(tb) + " batch=" + std::to_string(batch) +
                          " beta=" + std::to_string(beta));
        }
      }
}

// training.precision bf16 / tf32 on the GPU's GEMM. bf16: the operands are rounded to bf16 (RNE)
// and their products are exact in fp32, so the result equals the CPU's fp32 GEMM of the rounded
// operands to summation order (kTol sqrt(K)) — and differs from the fp32 GEMM of the unrounded
// ones (the precision is applied). tf32 (cuBLAS rounds the operands to a 10-bit mantissa):
// within 2 * 2^-11 * sum_k |a||b| of the fp32 result, and not equal to it at K = 256.
// round_bf16 equals the CPU's (to_bf16: nearest even, NaN quiet) bit for bit; a GEMM given the
// rounded operands (A16 / B16) equals the one rounding them itself; fp32 refuses them.
TEST(CudaOps, RoundBf16AndPreRoundedGemmOperands) {
  REQUIRE_CUDA();
  std::vector<float> v = rnd(Shape{1000}, 51, -3.0f, 3.0f).to_vector();
  v[0] = NAN, v[1] = INFINITY, v[2] = -0.0f, v[3] = 1.0f + 0x1p-8f, v[4] = 1.0f + 3 * 0x1p-8f;
  const Tensor x = Tensor::from(Shape{1000}, v);
  Tensor yc = Tensor::empty(x.shape(), DType::BF16),
         yg = Tensor::empty(x.shape(), DType::BF16, kGpu);
  cpu().round_bf16(x, yc);
  gpu().round_bf16(G(x), yg);
  const Tensor ygh = yg.to(Device::cpu());
  int bad = 0;  // (NaN: both NaN; the payload is the device's canonical one)
  for (int64_t i = 0; i < 1000; ++i) {
    const bf16 c = yc.data<bf16>()[i], g = ygh.data<bf16>()[i];
    if (std::isnan(v[size_t(i)]))
      bad += !std::isnan(to_float(c)) || !std::isnan(to_float(g));
    else
      bad += c.bits != g.bits || c.bits != to_bf16(v[size_t(i)]).bits;
  }
  EXPECT_EQ(bad, 0);
  const int64_t M = 33, N = 20, K = 70;
  const Tensor A = G(rnd(Shape{M, K}, 52)), B = G(rnd(Shape{K, N}, 53));
  Tensor A16 = Tensor::empty(A.shape(), DType::BF16, kGpu),
         B16 = Tensor::empty(B.shape(), DType::BF16, kGpu);
  gpu().round_bf16(A, A16);
  gpu().round_bf16(B, B16);
  Tensor c1 = Tensor::empty(Shape{M, N}, DType::F32, kGpu),
         c2 = Tensor::empty(Shape{M, N}, DType::F32, kGpu);
  GemmArgs g;
  g.M = M, g.N = N, g.K = K, g.A = A.data(), g.lda = K, g.B = B.data(), g.ldb = N, g.ldc = N;
  g.precision = GemmPrecision::BF16, g.C = c1.data();
  gpu().gemm(g);
  g.A16 = A16.raw(), g.B16 = B16.raw(), g.C = c2.data();
  gpu().gemm(g);
  expect_near(c1, c2, 0, "gemm with pre-rounded operands");
  g.precision = GemmPrecision::F32;
  const std::string e = testdata::error_of([&] { gpu().gemm(g); });
  EXPECT_NE(e.find("bf16 operands with precision fp32"), std::string::npos) << e;
}

TEST(CudaOps, GemmBf16AndTf32) {
  REQUIRE_CUDA();
  struct MNK {
    int64_t M, N, K;
  };
  for (const MNK& p : {MNK{7, 5, 33}, MNK{33, 100, 70}, MNK{64, 64, 256}})
    for (int batch : {0, 2})
      for (int t = 0; t < 4; ++t) {
        const bool ta = t & 1, tb = t & 2;
        const int64_t nb = std::max(batch, 1);
        const Tensor A = rnd(Shape{nb, p.M * p.K}, 41), B = rnd(Shape{nb, p.K * p.N}, 42);
        auto rounded = [](const Tensor& x) {
          std::vector<float> v = x.to_vector();
          for (float& e : v) e = to_float(to_bf16(e));
          return Tensor::from(x.shape(), v);
        };
        const Tensor Ar = rounded(A), Br = rounded(B);
        auto args = [&](const Tensor& a_, const Tensor& b_, const Tensor& c_, GemmPrecision pr) {
          GemmArgs g;
          g.ta = ta, g.tb = tb, g.M = p.M, g.N = p.N, g.K = p.K, g.alpha = 1.0f, g.beta = 0.0f;
          g.A = a_.data(), g.lda = ta ? p.M : p.K, g.B = b_.data(), g.ldb = tb ? p.K : p.N;
          g.C = c_.data(), g.ldc = p.N, g.precision = pr;
          g.batch = batch, g.stride_a = p.M * p.K, g.stride_b = p.K * p.N, g.stride_c = p.M * p.N;
          return g;
        };
        const std::string what = "M=" + std::to_string(p.M) + " N=" + std::to_string(p.N) +
                                 " K=" + std::to_string(p.K) + " ta=" + std::to_string(ta) +
                                 " tb=" + std::to_string(tb) + " batch=" + std::to_string(batch);
        Tensor ref = Tensor::empty(Shape{nb, p.M * p.N}), exact = Tensor::empty(ref.shape());
        cpu().gemm(args(Ar, Br, ref, GemmPrecision::F32));
        cpu().gemm(args(A, B, exact, GemmPrecision::F32));
        Tensor Ag = G(A), Bg = G(B), Cb = G(ref), Ct = G(ref);
        gpu().gemm(args(Ag, Bg, Cb, GemmPrecision::BF16));
        gpu().gemm(args(Ag, Bg, Ct, GemmPrecision::TF32));
        expect_near(ref, Cb, kTol * std::sqrt(double(p.K)), "bf16 gemm " + what);
        const std::vector<float> e = exact.to_vector(), b = Cb.to(Device::cpu()).to_vector(),
                                 f = Ct.to(Device::cpu()).to_vector();
        int differ_b = 0, differ_t = 0, bad = 0;
        for (size_t i = 0; i < e.size(); ++i) {
          differ_b += b[i] != e[i];
          differ_t += f[i] != e[i];
          bad += std::fabs(f[i] - e[i]) > 2.0 * 0x1p-11 * double(p.K) + 1e-6;  // |a|,|b| < 1
        }
        EXPECT_GT(differ_b, 0) << "bf16 gemm equals fp32: precision not applied, " << what;
        if (p.K >= 256) {  // (cuBLAS may take an fp32 kernel for tiny shapes: tf32 is a permission)
          EXPECT_GT(differ_t, 0) << "tf32 gemm equals fp32: precision not applied, " << what;
        }
        EXPECT_EQ(bad, 0) << "tf32 gemm outside its bound, " << what;
      }
}

TEST(CudaOps, RmsNormForwardBackward) {
  REQUIRE_CUDA();
  for (int64_t rows : {1, 7, 33})
    for (int64_t D : {1, 5, 100}) {
      const std::string name = "rmsnorm [" + std::to_string(rows) + ", " + std::to_string(D) + "]";
      Tensor x = rnd(Shape{rows, D}, 31), g = rnd(Shape{D}, 32, 0.5f, 1.5f),
             dy = rnd(Shape{rows, D}, 33);
      Tensor yc = Tensor::empty(x.shape()), rc = Tensor::empty(Shape{rows});
      Tensor yg = Tensor::empty(x.shape(), DType::F32, kGpu),
             rg = Tensor::empty(Shape{rows}, DType::F32, kGpu);
      cpu().rmsnorm(x, g, 1e-5f, yc, rc), gpu().rmsnorm(G(x), G(g), 1e-5f, yg, rg);
      expect_near(yc, yg, kTol, name);
      expect_near(rc, rg, kTol, name + " rinv");
      for (int mask = 1; mask < 4; ++mask) {
        Tensor dx = mask & 1 ? rnd(x.shape(), 34) : Tensor(),
               dgn = mask & 2 ? rnd(Shape{D}, 35) : Tensor();
        Tensor dxg = G(dx), dgg = G(dgn);
        cpu().rmsnorm_backward(x, g, rc, dy, dx, dgn);
        gpu().rmsnorm_backward(G(x), G(g), G(rc), G(dy), dxg, dgg);
        if (mask & 1) expect_near(dx, dxg, kTol, name + " backward dx");
        if (mask & 2) expect_near(dgn, dgg, kTol, name + " backward dg");
      }
    }
}

TEST(CudaOps, SoftmaxForwardBackward) {
  REQUIRE_CUDA();
  for (const Shape& s : kShapes) {
    Tensor x = rnd(s, 36, -4.0f, 4.0f), dy = rnd(s, 37);
    Tensor yc = Tensor::empty(s), yg = Tensor::empty(s, DType::F32, kGpu);
    cpu().softmax(x, yc), gpu().softmax(G(x), yg);
    expect_near(yc, yg, kTol, "softmax " + sh(s));
    Tensor dx = rnd(s, 38), dxg = G(dx);
    cpu().softmax_backward(yc, dy, dx), gpu().softmax_backward(G(yc), G(dy), dxg);
    expect_near(dx, dxg, kTol, "softmax_backward " + sh(s));
  }
}

TEST(CudaOps, Rope) {
  REQUIRE_CUDA();
  for (const Shape& s : {Shape{2, 3, 7, 100}, Shape{1, 1, 1, 6}, Shape{1, 2, 33, 2}})
    for (int64_t pos0 : {0, 5})
      for (bool inverse : {false, true})
        for (bool acc : {false, true}) {
          Tensor x = rnd(s, 39), yc = rnd(s, 40), yg = G(yc);
          cpu().rope(x, yc, 10000.0f, pos0, inverse, acc);
          gpu().rope(G(x), yg, 10000.0f, pos0, inverse, acc);
          expect_near(yc, yg, kTol,
                      "rope " + sh(s) + " pos0=" + std::to_string(pos0) +
                          (inverse ? " inverse" : "") + (acc ? " +=" : ""));
        }
}

// gpu (a bf16 tensor) against cpu (f32 from the same inputs) rounded to bf16: within one bf16
// ulp everywhere (the f32 values differ at rounding level, so a tie may round the other way) and
// equal for at least 99% of the elements.
void expect_bf16_of(const Tensor& c, const Tensor& g, const std::string& what) {
  ASSERT_EQ(g.dtype(), DType::BF16) << what;
  ASSERT_EQ(c.shape(), g.shape()) << what;
  const std::vector<float> a = cudatest::bf16_round(c).to_vector(),
                           b = cudatest::widen(g).to_vector();
  int64_t bad = 0, same = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    same += a[i] == b[i];
    const double ulp = std::ldexp(1.0, std::ilogb(std::max(std::fabs(a[i]), 1e-30f)) - 7);
    if (std::fabs(double(a[i]) - double(b[i])) > ulp && bad++ < 5)
      ADD_FAILURE() << what << ": element " << i << ": cpu " << a[i] << " cuda " << b[i];
  }
  EXPECT_EQ(bad, 0) << what;
  EXPECT_GE(double(same), 0.99 * double(a.size()))
      << what << ": " << same << " of " << a.size() << " equal after rounding";
}

// The kernels that take bf16 activations (Kernels::bf16_activations): each against the CPU's f32
// kernel on the values the bf16 tensor holds; f32 outputs to kTol, bf16 outputs as expect_bf16_of,
// copies exact.
TEST(CudaOps, Bf16ActivationKernels) {
  REQUIRE_CUDA();
  ASSERT_TRUE(gpu().bf16_activations);
  using cudatest::bf16_round;
  using cudatest::to_bf16_tensor;
  const Shape s{2, 3, 33, 100};
  const Tensor x = bf16_round(rnd(s, 71)), x16 = to_bf16_tensor(x, kGpu);
  // transpose (a copy: exact), rope forward (bf16 -> bf16)
  Tensor tc = Tensor::empty(Shape{2, 33, 3, 100}),
         tg = Tensor::empty(tc.shape(), DType::BF16, kGpu);
  cpu().transpose(x, tc, s, 1, 2, false), gpu().transpose(x16, tg, s, 1, 2, false);
  expect_near(tc, tg, 0, "transpose bf16");
  for (bool inverse : {false, true}) {
    Tensor rc = Tensor::empty(s), rg = Tensor::empty(s, DType::BF16, kGpu);
    cpu().rope(x, rc, 10000.0f, 3, inverse, false),
        gpu().rope(x16, rg, 10000.0f, 3, inverse, false);
    expect_bf16_of(rc, rg, inverse ? "rope bf16 inverse" : "rope bf16");
  }
  // rmsnorm over bf16 x (f32 y, rinv, dx, dg)
  const Shape m{33, 100};
  const Tensor xm = bf16_round(rnd(m, 72)), xm16 = to_bf16_tensor(xm, kGpu),
               gain = rnd(Shape{100}, 73, 0.5f, 1.5f), dy = rnd(m, 74);
  Tensor yc = Tensor::empty(m), rc = Tensor::empty(Shape{33});
  Tensor yg = Tensor::empty(m, DType::F32, kGpu), rg = Tensor::empty(Shape{33}, DType::F32, kGpu);
  cpu().rmsnorm(xm, gain, 1e-5f, yc, rc), gpu().rmsnorm(xm16, G(gain), 1e-5f, yg, rg);
  expect_near(yc, yg, kTol, "rmsnorm bf16 x");
  Tensor dxc = Tensor::zeros(m), dgc = Tensor::zeros(Shape{100}), dxg = G(dxc), dgg = G(dgc);
  cpu().rmsnorm_backward(xm, gain, rc, dy, dxc, dgc);
  gpu().rmsnorm_backward(xm16, G(gain), G(rc), G(dy), dxg, dgg);
  expect_near(dxc, dxg, kTol, "rmsnorm_backward dx, bf16 x");
  expect_near(dgc, dgg, kTol, "rmsnorm_backward dg, bf16 x");
  // relu2_mul: bf16 g, u -> bf16 y and -> f32 y
  const Tensor u = bf16_round(rnd(m, 75)), u16 = to_bf16_tensor(u, kGpu);
  Tensor pc = Tensor::empty(m), pg16 = Tensor::empty(m, DType::BF16, kGpu),
         pg = Tensor::empty(m, DType::F32, kGpu);
  cpu().relu2_mul(xm, u, pc);
  gpu().relu2_mul(xm16, u16, pg16), gpu().relu2_mul(xm16, u16, pg);
  expect_bf16_of(pc, pg16, "relu2_mul bf16 -> bf16");
  expect_near(pc, pg, kTol, "relu2_mul bf16 -> f32");
  // binary (the residual add: f32 + bf16 -> f32), mul_acc with bf16 b, unary on bf16 x
  const Tensor a = rnd(m, 76);
  for (BinOp op : {BinOp::Add, BinOp::Sub, BinOp::Mul}) {
    Tensor bc = Tensor::empty(m), bg = Tensor::empty(m, DType::F32, kGpu);
    cpu().binary(op, a, u, bc), gpu().binary(op, G(a), u16, bg);
    expect_near(bc, bg, kTol, "binary f32, bf16 op " + std::to_string(int(op)));
    gpu().binary(op, u16, G(a), bg), cpu().binary(op, u, a, bc);
    expect_near(bc, bg, kTol, "binary bf16, f32 op " + std::to_string(int(op)));
  }
  Tensor mc = rnd(m, 77), mg = G(mc);
  cpu().mul_acc(mc, dy, u, false), gpu().mul_acc(mg, G(dy), u16, false);
  expect_near(mc, mg, kTol, "mul_acc bf16 b");
  for (UnOp op : {UnOp::Relu, UnOp::Relu2, UnOp::Silu}) {
    Tensor uc = Tensor::empty(m), ug = Tensor::empty(m, DType::F32, kGpu);
    cpu().unary(op, xm, uc), gpu().unary(op, xm16, ug);
    expect_near(uc, ug, kTol, "unary bf16 x op " + std::to_string(int(op)));
    Tensor dc = Tensor::zeros(m), dg = G(dc);
    cpu().unary_backward(op, xm, dy, dc), gpu().unary_backward(op, xm16, G(dy), dg);
    expect_near(dc, dg, kTol, "unary_backward bf16 x op " + std::to_string(int(op)));
  }
  // misuse names the op and the operands
  Tensor y32 = Tensor::empty(s, DType::F32, kGpu);
  EXPECT_NE(
      testdata::error_of([&] { gpu().rope(x16, y32, 10000.0f, 0, false, false); }).find("rope"),
      std::string::npos);
  EXPECT_NE(testdata::error_of([&] {
              gpu().transpose(x16, tg, s, 1, 2, true);
            }).find("without accumulation"),
            std::string::npos);
}

// The activation dtype policy through the ops: under GEMM precision bf16 on the GPU the BitLinear
// outputs, RoPE, attention, relu²·up and the transposes carry bf16, norms read it and write f32,
// the residual add promotes to f32, and every gradient is f32; under fp32 everything is f32; the
// CPU refuses a bf16 activation with the op, the operand and the device in the message.
TEST(CudaOps, Bf16ActivationPolicyThroughTheOps) {
  REQUIRE_CUDA();
  EXPECT_EQ(activation_dtype(kGpu), DType::F32) << "fp32 GEMMs";
  EXPECT_EQ(activation_dtype(Device::cpu()), DType::F32);
  const ScopedGemmPrecision sp(GemmPrecision::BF16);
  EXPECT_EQ(activation_dtype(kGpu), DType::BF16);
  EXPECT_EQ(activation_dtype(Device::cpu()), DType::F32) << "the CPU has no bf16 activations";
  const int64_t B = 2, T = 9, H = 2, hd = 6;
  Variable q(G(rnd(Shape{B * T, H * hd}, 81)), true), x(G(rnd(Shape{B * T, H * hd}, 82)), true);
  Variable gain(G(rnd(Shape{H * hd}, 83, 0.5f, 1.5f)), true);
  Tape tape;
  Variable out;
  {
    TapeScope scope(tape);
    Variable q16 = relu2_mul(q, q);  // (any bf16 producer: f32 in, bf16 out)
    ASSERT_EQ(q16.value().dtype(), DType::BF16);
    Variable h = transpose(reshape(q16, Shape{B, T, H, hd}), 1, 2);
    EXPECT_EQ(h.value().dtype(), DType::BF16) << "transpose keeps the dtype";
    Variable r = rope(h, 10000.0f);
    EXPECT_EQ(r.value().dtype(), DType::BF16) << "rope keeps the dtype";
    Variable o = causal_attention(r, r, h);
    EXPECT_EQ(o.value().dtype(), DType::BF16) << "attention writes activation_dtype";
    Variable flat = reshape(transpose(o, 1, 2), Shape{B * T, H * hd});
    Variable n = rmsnorm(flat, gain, 1e-5f);
    EXPECT_EQ(n.value().dtype(), DType::F32) << "norms write f32";
    out = add(x, flat);
    EXPECT_EQ(out.value().dtype(), DType::F32) << "the residual add promotes";
    out = add(out, n);
  }
  tape.backward(out, G(rnd(out.shape(), 84)));
  EXPECT_EQ(q.grad().dtype(), DType::F32);
  EXPECT_EQ(gain.grad().dtype(), DType::F32);
  EXPECT_GT(std::fabs(double(q.grad().to(Device::cpu()).to_vector()[0])) +
                std::fabs(double(q.grad().to(Device::cpu()).to_vector()[7])),
            0.0);
  // the CPU: a bf16 tensor is refused by every op that takes activations
  const Tensor c16 = cudatest::to_bf16_tensor(rnd(Shape{2, 2, 3, 4}, 85), Device::cpu());
  EXPECT_NE(testdata::error_of([&] {
              transpose(Variable(c16), 1, 2);
            }).find("transpose: operand 0 is bf16"),
            std::string::npos);
  EXPECT_NE(testdata::error_of([&] {
              rope(Variable(c16), 10000.0f);
            }).find("need a device whose kernels take them"),
            std::string::npos);
}

// The chunked cross-entropy entries: the rows cut into 1, 2 or V chunks (the state carried from
// chunk to chunk), lse and loss from ce_finish, the per-chunk gradient.
TEST(CudaOps, CrossEntropyChunksForwardBackward) {
  REQUIRE_CUDA();
  for (int64_t N : {1, 7, 33})
    for (int64_t V : {1, 5, 100})
      for (int64_t Vc : {V, (V + 1) / 2, int64_t(1)}) {
        std::vector<int32_t> t(static_cast<size_t>(N));
        int64_t count = 0;
        for (int64_t i = 0; i < N; ++i) {
          t[size_t(i)] = (i % 4 == 3) ? -100 : int32_t((i * 7) % V);
          count += t[size_t(i)] != -100;
        }
        const std::string name = "cross_entropy [" + std::to_string(N) + ", " + std::to_string(V) +
                                 "] chunks of " + std::to_string(Vc);
        const Tensor x = rnd(Shape{N, V}, 41, -5.0f, 5.0f), tg = ids_tensor(t), gt = G(tg);
        const int64_t sb = N * int64_t(sizeof(CeRowState));
        const Tensor sc = Tensor::empty(Shape{sb}, DType::U8), sg = G(sc);
        std::vector<Tensor> zc, zg;  // the chunks, contiguous
        for (int64_t v0 = 0; v0 < V; v0 += Vc) {
          const int64_t vc = std::min(Vc, V - v0);
          Tensor z = Tensor::empty(Shape{N, vc});
          for (int64_t i = 0; i < N; ++i)
            for (int64_t j = 0; j < vc; ++j) z[i * vc + j] = x[i * V + v0 + j];
          cpu().ce_chunk(z, v0, tg, sc), gpu().ce_chunk(G(z), v0, gt, sg);
          zc.push_back(z), zg.push_back(G(z));
        }
        Tensor lc = Tensor::empty(Shape{N}), lossc = Tensor::empty(Shape{});
        Tensor lg = Tensor::empty(Shape{N}, DType::F32, kGpu),
               lossg = Tensor::empty(Shape{}, DType::F32, kGpu);
        cpu().ce_finish(sc, tg, -100, count, lc, lossc);
        gpu().ce_finish(sg, gt, -100, count, lg, lossg);
        expect_near(lc, lg, kTol, name + " lse");
        expect_near(lossc, lossg, kTol, name + " loss");
        const Tensor dy = Tensor::full(Shape{1}, 1.5f);
        for (size_t c = 0; c < zc.size(); ++c) {
          const int64_t v0 = int64_t(c) * Vc;
          Tensor dc = Tensor::empty(zc[c].shape()), dg = G(rnd(zc[c].shape(), 42));  // overwritten
          cpu().ce_chunk_backward(zc[c], v0, tg, -100, count, lc, dy, dc);
          gpu().ce_chunk_backward(zg[c], v0, gt, -100, count, G(lc), G(dy), dg);
          expect_near(dc, dg, kTol, name + " backward chunk " + std::to_string(c));
        }
      }
}

// The fused LM head + loss on the GPU against the CPU op: several vocabulary chunks (uneven last
// one), ignored rows, fp32 to 1e-5 sqrt(K); under bf16 GEMMs within 1e-2 relative L2 of the
// fp32 CPU and bit-identical run to run.
TEST(CudaOps, LinearCrossEntropyMatchesCpu) {
  REQUIRE_CUDA();
  auto l2 = [](const Tensor& c, const Tensor& g) {
    const std::vector<float> a = c.to_vector(), b = g.to(Device::cpu()).to_vector();
    double num = 0, den = 0;
    for (size_t i = 0; i < a.size(); ++i)
      num += (double(a[i]) - b[i]) * (double(a[i]) - b[i]), den += double(a[i]) * a[i];
    return std::sqrt(num / std::max(den, 1e-30));
  };
  for (int64_t N : {1, 7, 33})
    for (int64_t V : {5, 1000}) {
      const int64_t D = 100;
      std::vector<int32_t> t(static_cast<size_t>(N));
      for (int64_t i = 0; i < N; ++i) t[size_t(i)] = (i % 4 == 3) ? -100 : int32_t((i * 37) % V);
      auto run = [&](Device dev, int64_t chunk) {
        Variable x(rnd(Shape{N, D}, 51).to(dev), true),
            w(rnd(Shape{V, D}, 52, -0.3f, 0.3f).to(dev), true);
        Tape tape;
        TapeScope scope(tape);
        Variable loss = linear_cross_entropy(x, w, t, -100, chunk);
        tape.backward(loss);
        return std::vector<Tensor>{loss.value(), x.grad(), w.grad()};
      };
      const char* names[] = {"loss", "dx", "dw"};
      for (int64_t chunk : {N * V, N * 3, N * 64}) {
        const std::string name = "linear_cross_entropy N " + std::to_string(N) + " V " +
                                 std::to_string(V) + " chunk " + std::to_string(chunk / N);
        const auto c = run(Device::cpu(), chunk), g = run(kGpu, chunk);
        for (size_t i = 0; i < c.size(); ++i)
          expect_near(c[i], g[i], kTol * std::sqrt(double(std::max(N, V))), name + " " + names[i]);
        ScopedGemmPrecision bf16(GemmPrecision::BF16);
        const auto b1 = run(kGpu, chunk), b2 = run(kGpu, chunk);
        for (size_t i = 0; i < c.size(); ++i) {
          EXPECT_LE(l2(c[i], b1[i]), 1e-2) << name << " bf16 " << names[i];
          expect_near(b1[i], b2[i], 0, name + " bf16 rerun " + names[i]);
        }
      }
    }
}

// A small step through ops.h and a Tape: embedding -> rmsnorm -> matmul -> relu2_mul -> matmul
// -> cross-entropy (+ 1e-3 mean); loss and every gradient on CUDA vs CPU.
TEST(CudaOps, TapeStepMatchesCpu) {
  REQUIRE_CUDA();
  const std::vector<int32_t> ids{1, 4, 4, 0, 6, 2, 3}, tgt{2, 0, 5, -100, 1, 6, 6};
  auto run = [&](Device dev) {
    Variable emb(rnd(Shape{7, 33}, 43).to(dev), true),
        gain(rnd(Shape{33}, 44, 0.5f, 1.5f).to(dev), true);
    Variable w1(rnd(Shape{100, 33}, 45).to(dev), true), w2(rnd(Shape{100, 33}, 46).to(dev), true);
    Variable wo(rnd(Shape{7, 100}, 47).to(dev), true);
    Tape tape;
    Variable loss;
    {
      TapeScope scope(tape);
      Variable h = rmsnorm(embedding(emb, ids), gain, 1e-5f);
      Variable f = relu2_mul(linear(h, w1), linear(h, w2));
      loss = add(cross_entropy(linear(f, wo), tgt), scale(mean(f), 1e-3f));
      tape.backward(loss);
    }
    return std::vector<Tensor>{loss.value(), emb.grad(), gain.grad(),
                               w1.grad(),    w2.grad(),  wo.grad()};
  };
  const std::vector<Tensor> c = run(Device::cpu()), g = run(kGpu);
  const char* names[] = {"loss", "d emb", "d gain", "d w1", "d w2", "d wo"};
  for (size_t i = 0; i < c.size(); ++i) expect_near(c[i], g[i], 1e-4, names[i]);
}

TEST(CudaOps, MissingEntriesNameThemselves) {
  REQUIRE_CUDA();
  Variable q(Tensor::zeros(Shape{1, 1, 2, 4}, DType::F32, kGpu));
  Kernels without = gpu();  // every autograd entry is implemented: null one in a copy
  without.attention = nullptr;
  ScopedKernels scoped(DeviceType::CUDA, &without);
  EXPECT_EQ(testdata::error_of([&] { causal_attention(q, q, q); }),
            "attention: no kernel on device cuda:0 (its backend does not implement it yet)");
}
