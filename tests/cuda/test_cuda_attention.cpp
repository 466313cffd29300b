// The CUDA causal attention kernels (autograd/cuda/attention.cu) against the CPU table: forward,
// backward (dq, dk, dv together and each alone, accumulated into nonzero gradients), GQA, odd
// head dims and lengths across tile edges, bit-identical reruns, a finite-difference check of the
// GPU gradients, the op through ops.h and a Tape; and the tensor-core route (attention_tc.cu, GEMM
// precision bf16 / tf32) against the CPU in relative L2 norm, one chunk and 16-row chunks.
//
// Tolerances: forward |gpu - cpu| <= 1e-5 (1 + |cpu|); backward 2e-5 (1 + |cpu|) sqrt(T) (each
// gradient is a sum over up to T terms, summed in a different order than the CPU's GEMMs).
// Without a CUDA device every test prints "skipped: no CUDA device" and is reported as skipped.
// Run: ctest --preset release -L cuda   (or build/release/tests/test_cuda_attention)
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
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
const Device kGpu = Device::cuda(0);

const Kernels& cpu() { return cpu_kernels(); }
const Kernels& gpu() { return kernels_for(kGpu); }

using cudatest::rnd;
Tensor G(const Tensor& t) { return t.defined() ? t.to(kGpu) : Tensor(); }

// cpu vs gpu element-wise, |g - c| <= tol (1 + |c|); tol 0 = bit-identical.
void expect_near(const Tensor& c, const Tensor& g, double tol, const std::string& what) {
  ASSERT_EQ(c.shape(), g.shape()) << what;
  const std::vector<float> a = c.to(Device::cpu()).to_vector(), b = g.to(Device::cpu()).to_vector();
  int bad = 0;
  double worst = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    const double err = std::fabs(double(a[i]) - double(b[i]));
    const bool ok = tol == 0 ? std::memcmp(&a[i], &b[i], sizeof(float)) == 0
                             : err <= tol * (1.0 + std::fabs(double(a[i])));
    worst = std::max(worst, err / (1.0 + std::fabs(double(a[i]))));
    if (!ok && bad++ < 5)
      ADD_FAILURE() << what << ": element " << i << " of " << c.shape() << ": cpu " << a[i]
                    << " cuda " << b[i] << " (|diff| " << err << ", tol " << tol << ")";
  }
  EXPECT_EQ(bad, 0) << what << ": " << bad << " of " << a.size() << " elements differ (worst "
                    << worst << " relative)";
}

struct Case {
  int64_t B, H, Hkv, T, hd;
  std::string str() const {
    return "(B,H,Hkv,T,hd)=(" + std::to_string(B) + "," + std::to_string(H) + "," +
           std::to_string(Hkv) + "," + std::to_string(T) + "," + std::to_string(hd) + ")";
  }
  Shape qs() const { return Shape{B, H, T, hd}; }
  Shape ks() const { return Shape{B, Hkv, T, hd}; }
};
// Tile edges: 64-row query tiles, 64/32-key tiles (hd <= 64 / <= 128), 32 x 32 above 128.
const std::vector<Case> kCases = {{1, 1, 1, 1, 1},     {2, 4, 2, 7, 100}, {1, 3, 1, 33, 64},
                                  {1, 2, 2, 130, 128}, {2, 8, 8, 64, 32}, {1, 2, 1, 257, 256},
                                  {1, 4, 4, 1024, 64}, {1, 4, 2, 97, 17}, {1, 2, 1, 65, 200}};

struct Inputs {
  Tensor q, k, v, dout;
};
Inputs inputs(const Case& c, uint32_t seed) {
  // Scores of a few units (|q.k|/sqrt(hd) up to ~3 sqrt(hd) / 3): a peaked, non-trivial softmax.
  return {rnd(c.qs(), seed, -1.5f, 1.5f), rnd(c.ks(), seed + 1, -1.5f, 1.5f), rnd(c.ks(), seed + 2),
          rnd(c.qs(), seed + 3)};
}
double bwd_tol(const Case& c) { return 2e-5 * std::sqrt(double(c.T)); }
}  // namespace

TEST(CudaAttention, ForwardMatchesCpu) {
  REQUIRE_CUDA();
  for (const Case& c : kCases) {
    const Inputs in = inputs(c, 1);
    Tensor yc = Tensor::empty(c.qs()), yg = Tensor::full(c.qs(), 7.0f).to(kGpu);  // overwritten
    cpu().attention(in.q, in.k, in.v, yc);
    gpu().attention(G(in.q), G(in.k), G(in.v), yg);
    expect_near(yc, yg, 1e-5, "attention " + c.str());
    Tensor y2 = Tensor::empty(c.qs(), DType::F32, kGpu);
    gpu().attention(G(in.q), G(in.k), G(in.v), y2);
    expect_near(yg, y2, 0, "attention rerun " + c.str());
  }
}

// Row 0 sees only key 0: o_0 = v_0 exactly; and a softmax over equal scores is the mean.
TEST(CudaAttention, ForwardKnownValues) {
  REQUIRE_CUDA();
  const Case c{1, 2, 1, 70, 5};
  const Tensor q = Tensor::zeros(c.qs()), k = rnd(c.ks(), 3), v = rnd(c.ks(), 4);
  Tensor y = Tensor::empty(c.qs(), DType::F32, kGpu);
  gpu().attention(G(q), G(k), G(v), y);
  const std::vector<float> yo = y.to(Device::cpu()).to_vector(), vv = v.to_vector();
  for (int64_t h = 0; h < c.H; ++h)
    for (int64_t i = 0; i < c.T; ++i)
      for (int64_t d = 0; d < c.hd; ++d) {
        double mean = 0;
        for (int64_t j = 0; j <= i; ++j) mean += vv[size_t(j * c.hd + d)];
        mean /= double(i + 1);
        EXPECT_NEAR(yo[size_t((h * c.T + i) * c.hd + d)], mean, 1e-5 * (1 + std::fabs(mean)))
            << "h " << h << " i " << i << " d " << d;
      }
}

// Every subset of {dq, dk, dv} that the tape can ask for: all, and each alone (the others
// undefined); gradients start nonzero, so a kernel that overwrites instead of adding fails.
TEST(CudaAttention, BackwardMatchesCpu) {
  REQUIRE_CUDA();
  for (const Case& c : kCases) {
    const Inputs in = inputs(c, 11);
    const Tensor qg = G(in.q), kg = G(in.k), vg = G(in.v), dog = G(in.dout);
    for (int mask : {7, 1, 2, 4}) {
      Tensor dq = (mask & 1) ? rnd(c.qs(), 21) : Tensor();
      Tensor dk = (mask & 2) ? rnd(c.ks(), 22) : Tensor();
      Tensor dv = (mask & 4) ? rnd(c.ks(), 23) : Tensor();
      Tensor dqg = G(dq), dkg = G(dk), dvg = G(dv);
      cpu().attention_backward(in.q, in.k, in.v, in.dout, dq, dk, dv);
      gpu().attention_backward(qg, kg, vg, dog, dqg, dkg, dvg);
      const std::string name = "attention_backward " + c.str() + " mask " + std::to_string(mask);
      if (mask & 1) expect_near(dq, dqg, bwd_tol(c), name + " dq");
      if (mask & 2) expect_near(dk, dkg, bwd_tol(c), name + " dk");
      if (mask & 4) expect_near(dv, dvg, bwd_tol(c), name + " dv");
    }
  }
}

// Two backward calls from the same inputs give the same bits (no atomics, fixed orders); so does
// a call with only one gradient wanted (same arithmetic per gradient).
TEST(CudaAttention, BackwardIsDeterministic) {
  REQUIRE_CUDA();
  for (const Case& c : {kCases[1], kCases[3], kCases[5], kCases[6]}) {
    const Inputs in = inputs(c, 31);
    const Tensor qg = G(in.q), kg = G(in.k), vg = G(in.v), dog = G(in.dout);
    std::vector<Tensor> runs[2];
    for (auto& r : runs) {
      r = {Tensor::zeros(c.qs(), DType::F32, kGpu), Tensor::zeros(c.ks(), DType::F32, kGpu),
           Tensor::zeros(c.ks(), DType::F32, kGpu)};
      gpu().attention_backward(qg, kg, vg, dog, r[0], r[1], r[2]);
    }
    const char* names[] = {"dq", "dk", "dv"};
    for (int i = 0; i < 3; ++i)
      expect_near(runs[0][size_t(i)], runs[1][size_t(i)], 0,
                  std::string("rerun ") + names[i] + " " + c.str());
    Tensor dk_only = Tensor::zeros(c.ks(), DType::F32, kGpu);
    gpu().attention_backward(qg, kg, vg, dog, Tensor(), dk_only, Tensor());
    expect_near(runs[0][1], dk_only, 0, "dk alone vs together " + c.str());
    // and the result is not trivially zero
    double n2 = 0;
    for (float x : runs[0][1].to(Device::cpu()).to_vector()) n2 += double(x) * x;
    EXPECT_GT(n2, 0.0) << c.str();
  }
}

// Central differences of L = sum w o (host, double) through the GPU forward vs the GPU backward
// with dout = w, fp32: |analytic - numeric| <= 2e-3 + 2e-2 |numeric| on sampled elements.
TEST(CudaAttention, FiniteDifferenceGradients) {
  REQUIRE_CUDA();
  for (const Case& c : {Case{1, 2, 1, 5, 3}, Case{1, 2, 2, 70, 8}}) {
    Inputs in = inputs(c, 41);
    const Tensor w = in.dout;
    const std::vector<float> wv = w.to_vector();
    auto loss = [&](const Tensor& q, const Tensor& k, const Tensor& v) {
      Tensor y = Tensor::empty(c.qs(), DType::F32, kGpu);
      gpu().attention(G(q), G(k), G(v), y);
      const std::vector<float> yv = y.to(Device::cpu()).to_vector();
      double s = 0;
      for (size_t i = 0; i < yv.size(); ++i) s += double(wv[i]) * yv[i];
      return s;
    };
    Tensor dq = Tensor::zeros(c.qs(), DType::F32, kGpu),
           dk = Tensor::zeros(c.ks(), DType::F32, kGpu),
           dv = Tensor::zeros(c.ks(), DType::F32, kGpu);
    gpu().attention_backward(G(in.q), G(in.k), G(in.v), G(w), dq, dk, dv);
    Tensor* xs[] = {&in.q, &in.k, &in.v};
    const Tensor grads[] = {dq.to(Device::cpu()), dk.to(Device::cpu()), dv.to(Device::cpu())};
    for (int t = 0; t < 3; ++t) {
      Tensor& x = *xs[t];
      const int64_t n = x.numel(), step = std::max<int64_t>(1, n / 40);
      int checked = 0;
      for (int64_t i = 0; i < n; i += step, ++checked) {
        const float orig = x[i], eps = 1e-2f;
        x[i] = orig + eps;
        const double lp = loss(in.q, in.k, in.v);
        x[i] = orig - eps;
        const double lm = loss(in.q, in.k, in.v);
        x[i] = orig;
        const double num = (lp - lm) / (double(orig + eps) - double(orig - eps));
        const double an = grads[t][i];
        EXPECT_LE(std::fabs(an - num), 2e-3 + 2e-2 * std::fabs(num))
            << c.str() << " input " << t << " element " << i << ": analytic " << an << " numeric "
            << num;
      }
      EXPECT_GT(checked, 0);
    }
  }
}

// causal_attention through ops.h and a Tape on the GPU vs the CPU: output and the three grads.
TEST(CudaAttention, TapeMatchesCpu) {
  REQUIRE_CUDA();
  const Case c{2, 4, 2, 45, 24};
  const Inputs in = inputs(c, 51);
  auto run = [&](Device dev) {
    Variable q(in.q.to(dev), true), k(in.k.to(dev), true), v(in.v.to(dev), true);
    Tape tape;
    Variable y;
    {
      TapeScope scope(tape);
      y = causal_attention(q, k, v);
      tape.backward(y, in.dout.to(dev));
    }
    return std::vector<Tensor>{y.value(), q.grad(), k.grad(), v.grad()};
  };
  const std::vector<Tensor> cg = run(Device::cpu()), gg = run(kGpu);
  const char* names[] = {"y", "dq", "dk", "dv"};
  for (size_t i = 0; i < cg.size(); ++i)
    expect_near(cg[i], gg[i], i == 0 ? 1e-5 : bwd_tol(c), std::string("tape ") + names[i]);
}

TEST(CudaAttention, RejectsHeadDimAbove256) {
  REQUIRE_CUDA();
  const Case c{1, 1, 1, 3, 257};
  Tensor q = Tensor::zeros(c.qs(), DType::F32, kGpu), y = Tensor::zeros(c.qs(), DType::F32, kGpu);
  const std::string e = testdata::error_of([&] { gpu().attention(q, q, q, y); });
  EXPECT_NE(e.find("head_dim 257"), std::string::npos) << e;
}

// ---- The tensor-core route (attention_tc.cu: GEMM precision bf16 / tf32) ----
namespace {
// ||g - c|| / ||c|| over all elements.
double rel_l2(const Tensor& c, const Tensor& g) {
  const std::vector<float> a = c.to(Device::cpu()).to_vector(), b = g.to(Device::cpu()).to_vector();
  double num = 0, den = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    num += (double(a[i]) - b[i]) * (double(a[i]) - b[i]);
    den += double(a[i]) * a[i];
  }
  return std::sqrt(num / std::max(den, 1e-30));
}
// Chunk limit for the scope: `rows` query rows per chunk for this case (at least 16 per chunk).
struct ScopedChunkRows {
  ScopedChunkRows(const Case& c, int64_t rows) {
    cuda::set_attention_chunk_limit(c.B * c.H * c.T * rows);
  }
  ~ScopedChunkRows() { cuda::set_attention_chunk_limit(int64_t(128) << 20); }
};
}  // namespace

// bf16 operands (P and dS rounded too) or tf32, fp32 accumulation: within 1e-2 (bf16) / 2e-3
// (tf32) of the CPU in relative L2 norm, forward and every backward subset, accumulated into
// nonzero gradients, with one chunk and with 16-row chunks (chunk edges inside tiles, GQA).
TEST(CudaAttention, TensorCoreRouteMatchesCpu) {
  REQUIRE_CUDA();
  const std::vector<Case> cases = {{1, 1, 1, 1, 1},   {2, 4, 2, 7, 100},  {1, 3, 1, 33, 64},
                                   {1, 4, 2, 97, 17}, {2, 6, 2, 130, 64}, {1, 2, 1, 65, 200}};
  for (GemmPrecision p : {GemmPrecision::BF16, GemmPrecision::TF32}) {
    const double tol = p == GemmPrecision::BF16 ? 1e-2 : 2e-3;
    for (const Case& c : cases)
      for (int64_t rows : {int64_t(1) << 20, int64_t(16)}) {
        const ScopedChunkRows chunk(c, rows);
        const std::string name = std::string(to_string(p)) + " " + c.str() + " chunk rows " +
                                 std::to_string(std::min<int64_t>(rows, c.T));
        const Inputs in = inputs(c, 61);
        Tensor yc = Tensor::empty(c.qs()), yg = Tensor::full(c.qs(), 7.0f).to(kGpu);
        cpu().attention(in.q, in.k, in.v, yc);
        {
          const ScopedGemmPrecision sp(p);
          gpu().attention(G(in.q), G(in.k), G(in.v), yg);
        }
        EXPECT_LE(rel_l2(yc, yg), tol) << "forward " << name;
        for (int mask : {7, 1, 2, 4}) {
          Tensor dq = (mask & 1) ? rnd(c.qs(), 71) : Tensor();
          Tensor dk = (mask & 2) ? rnd(c.ks(), 72) : Tensor();
          Tensor dv = (mask & 4) ? rnd(c.ks(), 73) : Tensor();
          Tensor dqg = G(dq), dkg = G(dk), dvg = G(dv);
          // The CPU's increment alone, to judge the GPU's increment (not the shared start value).
          const Tensor dq0 = dq.defined() ? dq.clone() : Tensor(),
                       dk0 = dk.defined() ? dk.clone() : Tensor(),
                       dv0 = dv.defined() ? dv.clone() : Tensor();
          cpu().attention_backward(in.q, in.k, in.v, in.dout, dq, dk, dv);
          {
            const ScopedGemmPrecision sp(p);
            gpu().attention_backward(G(in.q), G(in.k), G(in.v), G(in.dout), dqg, dkg, dvg);
          }
          auto inc = [](const Tensor& t, const Tensor& t0) {
            Tensor d = t.to(Device::cpu()).clone();
            for (int64_t i = 0; i < d.numel(); ++i) d[i] -= t0[i];
            return d;
          };
          const std::string m = name + " mask " + std::to_string(mask);
          if (mask & 1) {
            EXPECT_LE(rel_l2(inc(dq, dq0), inc(dqg, dq0)), tol) << "dq " << m;
          }
          if (mask & 2) {
            EXPECT_LE(rel_l2(inc(dk, dk0), inc(dkg, dk0)), tol) << "dk " << m;
          }
          if (mask & 4) {
            EXPECT_LE(rel_l2(inc(dv, dv0), inc(dvg, dv0)), tol) << "dv " << m;
          }
        }
      }
  }
}

// The tensor-core route is deterministic: two runs give the same bits, forward and backward.
TEST(CudaAttention, TensorCoreRouteIsDeterministic) {
  REQUIRE_CUDA();
  const Case c{2, 4, 2, 150, 64};
  const ScopedChunkRows chunk(c, 48);
  const ScopedGemmPrecision sp(GemmPrecision::BF16);
  const Inputs in = inputs(c, 81);
  std::vector<Tensor> runs[2];
  for (auto& r : runs) {
    r = {Tensor::empty(c.qs(), DType::F32, kGpu), Tensor::zeros(c.qs(), DType::F32, kGpu),
         Tensor::zeros(c.ks(), DType::F32, kGpu), Tensor::zeros(c.ks(), DType::F32, kGpu)};
    gpu().attention(G(in.q), G(in.k), G(in.v), r[0]);
    gpu().attention_backward(G(in.q), G(in.k), G(in.v), G(in.dout), r[1], r[2], r[3]);
  }
  for (size_t i = 0; i < 4; ++i)
    expect_near(runs[0][i], runs[1][i], 0, "tc rerun " + std::to_string(i));
}

// Under bf16 GEMMs the op keeps q, k, v as bf16 copies (saved_activation) and the fp32 inputs die
// with their Variables: the forward and the gradients equal, bit for bit, the kernels called on the
// fp32 tensors (which round them the same way), and dropping the inputs after the forward frees
// memory instead of leaving them held by the node as under fp32.
TEST(CudaAttention, SavesBf16ActivationsUnderBf16) {
  REQUIRE_CUDA();
  const Case c{2, 4, 2, 150, 64};
  const Inputs in = inputs(c, 91);
  const ScopedGemmPrecision sp(GemmPrecision::BF16);
  std::vector<Tensor> ref = {Tensor::empty(c.qs(), DType::BF16, kGpu),  // activation_dtype
                             Tensor::zeros(c.qs(), DType::F32, kGpu),
                             Tensor::zeros(c.ks(), DType::F32, kGpu),
                             Tensor::zeros(c.ks(), DType::F32, kGpu)};
  gpu().attention(G(in.q), G(in.k), G(in.v), ref[0]);
  gpu().attention_backward(G(in.q), G(in.k), G(in.v), G(in.dout), ref[1], ref[2], ref[3]);
  const int64_t nq = c.qs().numel() * 4;  // fp32 bytes of q (and y)
  for (GemmPrecision p : {GemmPrecision::BF16, GemmPrecision::F32}) {
    const ScopedGemmPrecision pp(p);
    Variable q(G(in.q), true), k(G(in.k), true), v(G(in.v), true);
    const GradRef gq(q), gk(k), gv(v);
    Tape tape;
    TapeScope scope(tape);
    const size_t before = pool_stats(kGpu).live_bytes;
    Variable y = causal_attention(q, k, v);
    q = Variable(), k = Variable(), v = Variable();  // the model's locals going out of scope
    const int64_t grew = int64_t(pool_stats(kGpu).live_bytes) - int64_t(before);
    if (p == GemmPrecision::BF16) {
      // y (bf16) + bf16 q, k, v - the fp32 q, k, v = -nk
      EXPECT_LT(grew, nq / 2) << "bf16: the fp32 inputs were not freed";
      EXPECT_EQ(y.value().dtype(), DType::BF16);
      tape.backward(y, G(in.dout));
      expect_near(cudatest::widen(ref[0]), cudatest::widen(y.value()), 0, "saved bf16: forward");
      expect_near(ref[1], gq.grad(), 0, "saved bf16: dq");
      expect_near(ref[2], gk.grad(), 0, "saved bf16: dk");
      expect_near(ref[3], gv.grad(), 0, "saved bf16: dv");
    } else {
      EXPECT_GE(grew, nq) << "fp32: y only (the node keeps the inputs)";
    }
  }
}
