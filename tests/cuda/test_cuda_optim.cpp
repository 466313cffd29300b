// The CUDA optim table (optim/cuda/adamw.cu) against the CPU one (the reference): AdamW bit for
// bit over several steps and shards, the gradient norm and clip (1e-12 relative; the clipped
// gradients exact given the norm), grad_sq_chunks, scale_range and the non-finite count.
//
// Without a CUDA device every test prints "skipped: no CUDA device" and is reported as skipped.
// Run: ctest --preset release -L cuda   (or build/release/tests/test_cuda_optim)
#include <gtest/gtest.h>

#include "tests/cuda/cuda_test.h"

#include <cmath>
#include <cstdint>
#include <cstring>
#include <iostream>
#include <limits>
#include <string>
#include <utility>
#include <vector>

#include "autograd/error.h"
#include "nn/module.h"
#include "optim/adamw.h"
#include "optim/dispatch.h"

using autograd::Device;
using autograd::DType;
using autograd::Shape;
using autograd::Tensor;

namespace {
const Device kGpu = Device::cuda(0);

// The first optim::kernels_for(cuda) registers the CUDA tables lazily (optim/dispatch.cpp).

// Parameters of the given sizes and decay flags, named p0, p1, ...
class Blocks : public nn::Module {
 public:
  Blocks(const std::vector<int64_t>& sizes, const std::vector<bool>& decay) {
    for (size_t i = 0; i < sizes.size(); ++i)
      register_parameter(std::string("p").append(std::to_string(i)), Shape{sizes[i]},
                         nn::Init::Normal, decay[i]);
  }
};

// Deterministic values in [lo, hi).
std::vector<float> rnd(int64_t n, uint32_t seed, float lo, float hi) {
  std::vector<float> v(static_cast<size_t>(n));
  uint32_t x = seed * 2654435761u + 12345u;
  for (auto& e : v) {
    x = x * 1664525u + 1013904223u;
    e = lo + (hi - lo) * float(x >> 8) / float(1 << 24);
  }
  return v;
}

// Gradients with the awkward cases mixed in: zeros, tiny values whose squares are float
// subnormals (v = a2 g^2 ~ 1e-41: a flush-to-zero GPU build would differ), large values.
std::vector<float> grads_for(int64_t n, uint32_t seed) {
  std::vector<float> g = rnd(n, seed, -1.0f, 1.0f);
  for (int64_t i = 0; i < n; ++i) {
    if (i % 11 == 3) g[size_t(i)] = 0.0f;
    if (i % 13 == 5) g[size_t(i)] *= 1e-20f;
    if (i % 17 == 7) g[size_t(i)] *= 300.0f;
  }
  return g;
}

std::vector<float> host(const Tensor& t) { return t.to(Device::cpu()).to_vector(); }
void upload(const Tensor& dst, const std::vector<float>& v) {
  dst.copy_from(Tensor::from(Shape{int64_t(v.size())}, v));
}

// Same bits element by element (NaN payloads included).
void expect_bits(const std::vector<float>& want, const std::vector<float>& got,
                 const std::string& what) {
  ASSERT_EQ(want.size(), got.size()) << what;
  int64_t bad = 0;
  for (size_t i = 0; i < want.size(); ++i) {
    if (std::memcmp(&want[i], &got[i], sizeof(float)) == 0) continue;
    if (bad++ < 5)
      ADD_FAILURE() << what << ": element " << i << ": cpu " << want[i] << " cuda " << got[i];
  }
  EXPECT_EQ(bad, 0) << what << ": " << bad << " of " << want.size() << " elements differ";
}

// A model and two ParameterSets of it (one per device: each set rebinds its model's variables).
struct Twin {
  Blocks mc, mg;
  nn::ParameterSet cpu, gpu;
  Twin(const std::vector<int64_t>& sizes, const std::vector<bool>& decay)
      : mc(sizes, decay), mg(sizes, decay), cpu(mc, 3, 0.5f), gpu(mg, 3, 0.5f) {
    gpu.to(kGpu);
  }
  int64_t n() const { return cpu.numel(); }
  void set_grads(const std::vector<float>& g) {
    std::memcpy(cpu.grads().data(), g.data(), g.size() * sizeof(float));
    upload(gpu.grads(), g);
  }
};

// Odd sizes; decayed p2,p3 and p7,p8 merge into single ranges. Offsets: p0 [0,37) p1 [37,38)
// p2 [38,1038) p3 [1038,1043) p4 [1043,5140) p5 [5140,5143) p6 [5143,5151) p7 [5151,25152)
// p8 [25152,25154).
const std::vector<int64_t> kSizes = {37, 1, 1000, 5, 4097, 3, 8, 20001, 2};
const std::vector<bool> kDecay = {true, false, true, true, false, true, false, true, true};

}  // namespace

TEST(CudaOptim, TableIsComplete) {
  REQUIRE_CUDA();
  const optim::Kernels& k = optim::kernels_for(kGpu);
  EXPECT_STREQ(k.device, "cuda");
  EXPECT_NE(k.adamw, nullptr);
  EXPECT_NE(k.grad_sq_chunks, nullptr);
  EXPECT_NE(k.grad_norm_clip, nullptr);
  EXPECT_NE(k.scale_range, nullptr);
  EXPECT_NE(k.count_nonfinite, nullptr);
  EXPECT_NE(optim::cpu_kernels().grad_norm_clip, nullptr);
}

// Five steps of AdamW on both devices: values (the whole buffer, so elements outside a shard
// must stay untouched), exp_avg and exp_avg_sq are bit-identical after every step, for the whole
// buffer and for shards that cut decay ranges, start inside one, or lie inside an undecayed entry.
TEST(CudaOptim, AdamWMatchesCpuBitForBit) {
  REQUIRE_CUDA();
  const int64_t n = 25154;
  const std::vector<std::pair<int64_t, int64_t>> shards = {
      {0, n}, {20, n - 7000}, {1040, 5141}, {5145, 5150}};
  for (const auto& [b, e] : shards) {
    const std::string sh = "shard [" + std::to_string(b) + ", " + std::to_string(e) + ")";
    Twin t(kSizes, kDecay);
    ASSERT_EQ(t.n(), n);
    const std::vector<float> w0 = rnd(n, 11, -2.0f, 2.0f);
    std::memcpy(t.cpu.values().data(), w0.data(), w0.size() * sizeof(float));
    upload(t.gpu.values(), w0);
    optim::AdamWConfig cfg;
    cfg.beta1 = 0.9, cfg.beta2 = 0.95, cfg.eps = 1e-8;
    optim::AdamW oc(t.cpu, cfg, b, e), og(t.gpu, cfg, b, e);
    for (int step = 0; step < 5; ++step) {
      t.set_grads(grads_for(n, 100 + uint32_t(step)));
      const double lr = 3e-3 * (step + 1), wd = 0.1 / (step + 1);
      oc.step(lr, wd);
      og.step(lr, wd);
      const std::string what = sh + " step " + std::to_string(step + 1);
      const std::vector<float> wc = host(t.cpu.values());
      expect_bits(wc, host(t.gpu.values()), what + " values");
      expect_bits(host(oc.exp_avg()), host(og.exp_avg()), what + " exp_avg");
      expect_bits(host(oc.exp_avg_sq()), host(og.exp_avg_sq()), what + " exp_avg_sq");
      // The step did something inside the shard and nothing outside it.
      int64_t moved = 0;
      for (int64_t i = 0; i < n; ++i) {
        if (i < b || i >= e) {
          ASSERT_EQ(wc[size_t(i)], w0[size_t(i)]) << what << " outside element " << i;
        } else {
          moved += wc[size_t(i)] != w0[size_t(i)];
        }
      }
      EXPECT_GT(moved, (e - b) / 2) << what;
    }
  }
}

// Gradient norm and clip, GPU vs CPU, on sizes below and above the 64 chunks: the norm agrees to
// 1e-12 relative and is deterministic; clipping inactive (max_norm 0, or above the norm) leaves
// the GPU gradients bit-identical; active, they are exactly g * f32(max_norm / (norm + 1e-6)) with
// the GPU's norm. grad_sq_chunks' partials agree with the CPU's to 1e-12 relative, and summed in
// chunk order they give the device norm bit for bit.
TEST(CudaOptim, GradNormAndClipMatchCpu) {
  REQUIRE_CUDA();
  const std::vector<std::pair<std::vector<int64_t>, std::vector<bool>>> models = {
      {{1}, {true}}, {{5, 2}, {true, false}}, {kSizes, kDecay}, {{300001, 17}, {true, false}}};
  uint32_t seed = 1;
  for (const auto& [sizes, decay] : models) {
    Twin t(sizes, decay);
    const int64_t n = t.n();
    const std::vector<float> g0 = rnd(n, seed++, -3.0f, 3.0f);
    t.set_grads(g0);
    const std::string sz = "n=" + std::to_string(n);

    // Chunk partials.
    const int64_t C = optim::grad_norm_chunks(n);
    std::vector<double> pc(static_cast<size_t>(C)), pg(static_cast<size_t>(C));
    optim::grad_sq_chunks(t.cpu, 0, C, pc.data());
    optim::grad_sq_chunks(t.gpu, 0, C, pg.data());
    for (int64_t c = 0; c < C; ++c)
      EXPECT_NEAR(pg[size_t(c)], pc[size_t(c)], 1e-12 * pc[size_t(c)]) << sz << " chunk " << c;
    if (C >= 3) {  // a sub-range of chunks is the same slice of the full set
      std::vector<double> sub(static_cast<size_t>(C - 2));
      optim::grad_sq_chunks(t.gpu, 1, C - 1, sub.data());
      for (int64_t c = 1; c < C - 1; ++c)
        EXPECT_EQ(sub[size_t(c - 1)], pg[size_t(c)]) << sz << " sub-range chunk " << c;
    }
    const double from_chunks = optim::norm_from_chunks(pg);

    // Inactive: max_norm 0 and max_norm above the norm.
    for (double max_norm : {0.0, 1e9}) {
      const double nc = optim::clip_grad_norm(t.cpu, max_norm);
      const double ng = optim::clip_grad_norm(t.gpu, max_norm);
      EXPECT_GT(nc, 0.0);
      EXPECT_NEAR(ng, nc, 1e-12 * nc) << sz << " max_norm " << max_norm;
      EXPECT_EQ(ng, from_chunks) << sz << ": device clip norm vs norm_from_chunks(grad_sq_chunks)";
      EXPECT_EQ(optim::clip_grad_norm(t.gpu, max_norm), ng) << sz << " rerun";
      expect_bits(g0, host(t.gpu.grads()), sz + " unclipped grads");
    }

    // Active: max_norm a third of the norm.
    const double norm = optim::clip_grad_norm(t.cpu, 0.0), max_norm = norm / 3;
    const double nc = optim::clip_grad_norm(t.cpu, max_norm);
    const double ng = optim::clip_grad_norm(t.gpu, max_norm);
    EXPECT_NEAR(ng, nc, 1e-12 * nc) << sz;
    const float s = float(max_norm / (ng + 1e-6));
    std::vector<float> want(g0);
    for (float& x : want) x *= s;
    expect_bits(want, host(t.gpu.grads()), sz + " clipped grads");
    // Their norm is max_norm * ng / (ng + 1e-6), up to the rounding of the scaled floats.
    EXPECT_NEAR(optim::clip_grad_norm(t.gpu, 0.0), max_norm * ng / (ng + 1e-6), 1e-6 * max_norm)
        << sz;
  }
}

// A NaN or Inf gradient: the norm is NaN / Inf on both devices and the gradients stay untouched.
TEST(CudaOptim, NonFiniteGradientIsNotClipped) {
  REQUIRE_CUDA();
  for (float bad : {std::numeric_limits<float>::quiet_NaN(), std::numeric_limits<float>::infinity(),
                    -std::numeric_limits<float>::infinity()}) {
    Twin t(kSizes, kDecay);
    std::vector<float> g0 = rnd(t.n(), 5, -3.0f, 3.0f);
    g0[12345] = bad;
    t.set_grads(g0);
    const double nc = optim::clip_grad_norm(t.cpu, 1.0), ng = optim::clip_grad_norm(t.gpu, 1.0);
    const std::string what = "planted " + std::to_string(bad);
    EXPECT_FALSE(std::isfinite(ng)) << what;
    EXPECT_EQ(std::isnan(ng), std::isnan(nc)) << what;
    EXPECT_EQ(std::isinf(ng), std::isinf(nc)) << what;
    if (std::isinf(bad)) {
      EXPECT_TRUE(std::isinf(ng) && ng > 0) << what;  // sum of squares: +inf
    }
    expect_bits(g0, host(t.gpu.grads()), what + ": grads");
  }
}

// scale_range on a slice: bit-identical to the CPU inside, untouched outside; clip_grads (the
// sharded clip) on the GPU equals the CPU's.
TEST(CudaOptim, ScaleRange) {
  REQUIRE_CUDA();
  const int64_t n = 100003;
  const std::vector<float> v = rnd(n, 9, -5.0f, 5.0f);
  for (const auto& [b, e] : std::vector<std::pair<int64_t, int64_t>>{{0, n}, {13, 90001}, {7, 8}}) {
    const Tensor c = Tensor::from(Shape{n}, v), g = c.to(kGpu);
    optim::cpu_kernels().scale_range(c, b, e, 0.37f);
    optim::kernels_for(kGpu).scale_range(g, b, e, 0.37f);
    const std::vector<float> want = c.to_vector(), got = host(g);
    expect_bits(want, got, "scale_range [" + std::to_string(b) + ", " + std::to_string(e) + ")");
    EXPECT_NE(got[size_t(b)], v[size_t(b)]);
    if (b > 0) {
      EXPECT_EQ(got[size_t(b - 1)], v[size_t(b - 1)]);
    }
    if (e < n) {
      EXPECT_EQ(got[size_t(e)], v[size_t(e)]);
    }
  }
  Twin t(kSizes, kDecay);
  t.set_grads(rnd(t.n(), 4, -1.0f, 1.0f));
  optim::clip_grads(t.cpu, 100, 20000, 50.0, 2.0);
  optim::clip_grads(t.gpu, 100, 20000, 50.0, 2.0);
  expect_bits(host(t.cpu.grads()), host(t.gpu.grads()), "clip_grads");
}

// count_nonfinite over many blocks: NaN, +Inf and -Inf planted (first, middle, last element) are
// counted, FLT_MAX and the smallest subnormal are not; all_finite follows.
TEST(CudaOptim, CountNonFinite) {
  REQUIRE_CUDA();
  const int64_t n = 1000003;
  std::vector<float> v = rnd(n, 21, -1.0f, 1.0f);
  v[7] = std::numeric_limits<float>::max();
  v[8] = std::numeric_limits<float>::denorm_min();
  const Tensor clean = Tensor::from(Shape{n}, v).to(kGpu);
  EXPECT_EQ(optim::kernels_for(kGpu).count_nonfinite(clean), 0);
  EXPECT_TRUE(optim::all_finite(clean));
  v[0] = std::numeric_limits<float>::quiet_NaN();
  v[500001] = std::numeric_limits<float>::infinity();
  v[size_t(n - 1)] = -std::numeric_limits<float>::infinity();
  const Tensor c = Tensor::from(Shape{n}, v), g = c.to(kGpu);
  EXPECT_EQ(optim::cpu_kernels().count_nonfinite(c), 3);
  EXPECT_EQ(optim::kernels_for(kGpu).count_nonfinite(g), 3);
  EXPECT_FALSE(optim::all_finite(g));
  const Tensor one = Tensor::from(Shape{1}, {std::numeric_limits<float>::quiet_NaN()}).to(kGpu);
  EXPECT_EQ(optim::kernels_for(kGpu).count_nonfinite(one), 1);
}
