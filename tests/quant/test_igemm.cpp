// Integer BitLinear path: exact igemm accumulators (AVX512-VNNI, AVX2 and portable kernels, bit
// for bit alike), and the bitlinear node vs the float path (act_quant -> ternary -> matmul).
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <random>

#include "autograd/error.h"
#include "autograd/ops.h"
#include "autograd/random.h"
#include "quant/bitlinear.h"
#include "quant/igemm.h"
#include "quant/ste.h"
#include "tests/rel_diff.h"

using namespace autograd;
using namespace quant;

namespace {

// Row padding past K (up to the multiple of 4): igemm ignores it, so tests fill it with garbage.
constexpr int8_t kPad = -128;

struct Codes {
  int64_t M, N, K, ld;
  std::vector<int8_t> x, w;
};

Codes random_codes(int64_t M, int64_t N, int64_t K, int lo, int hi, uint64_t seed) {
  std::mt19937_64 g(seed);
  Codes c{M, N, K, 4 * ((K + 3) / 4), {}, {}};
  c.x.assign(size_t(M * c.ld), kPad);
  c.w.resize(size_t(N * K));
  for (int64_t m = 0; m < M; ++m)
    for (int64_t k = 0; k < K; ++k)
      c.x[size_t(m * c.ld + k)] = int8_t(lo + int(g() % uint64_t(hi - lo + 1)));
  for (auto& v : c.w) v = int8_t(int(g() % 3) - 1);
  return c;
}

// Exact dot products in int64.
std::vector<int64_t> exact(const Codes& c) {
  std::vector<int64_t> r(size_t(c.M * c.N), 0);
  for (int64_t m = 0; m < c.M; ++m)
    for (int64_t n = 0; n < c.N; ++n) {
      int64_t s = 0;
      for (int64_t k = 0; k < c.K; ++k)
        s += int64_t(c.x[size_t(m * c.ld + k)]) * c.w[size_t(n * c.K + k)];
      r[size_t(m * c.N + n)] = s;
    }
  return r;
}

Variable random_var(const Shape& s, uint64_t seed, float scale, bool grad) {
  Rng rng(seed);
  Tensor t = Tensor::empty(s);
  for (int64_t i = 0; i < t.numel(); ++i) t[i] = scale * rng.normal();
  return Variable(t, grad);
}

// The kernels this CPU runs; a missing one is skipped with a message, never silently.
std::vector<IgemmKernel> available_kernels() {
  std::vector<IgemmKernel> ks;
  for (IgemmKernel k : {IgemmKernel::Portable, IgemmKernel::Avx2, IgemmKernel::Avx512Vnni}) {
    if (igemm_available(k)) {
      ks.push_back(k);
    } else {
      std::printf("[  SKIPPED ] igemm kernel %s: this CPU lacks its instruction set\n",
                  igemm_kernel_name(k));
    }
  }
  return ks;
}

// Runs igemm_ternary_s32 with kernel k forced; acc starts at a sentinel so unwritten entries show.
std::vector<int32_t> run_s32(IgemmKernel k, const Codes& c, const PackedTernary& p) {
  igemm_force(k);
  std::vector<int32_t> acc(size_t(c.M * c.N), -7);
  igemm_ternary_s32(c.x.data(), c.M, c.ld, p, acc.data(), c.N);
  igemm_force(IgemmKernel::Auto);
  return acc;
}

}  // namespace

TEST(IGemm, AccumulatorsAreTheExactIntegerDotProductsOnEveryKernel) {
  // Odd shapes (M not a multiple of 4 or 8, N of 8 or 32, K of 4; K = 1, M = 1, N = 1), K past
  // the AVX2 kernel's int16 span (128), and codes over the full INT8 and INT4 ranges.
  const std::tuple<int64_t, int64_t, int64_t> shapes[] = {
      {1, 1, 1},      {1, 37, 1},   {13, 37, 9},   {3, 5, 130}, {70, 64, 130},
      {9, 300, 1536}, {129, 33, 5}, {66, 47, 515}, {5, 8, 4},   {2, 17, 257}};
  const std::vector<IgemmKernel> kernels = available_kernels();
  for (auto [M, N, K] : shapes)
    for (auto [lo, hi] : {std::pair{-128, 127}, std::pair{-8, 7}}) {
      const Codes c = random_codes(M, N, K, lo, hi, uint64_t(M * 1000 + N + K + hi));
      const PackedTernary p = pack_ternary(c.w.data(), N, K);
      const std::vector<int64_t> ref = exact(c);
      for (IgemmKernel k : kernels) {
        const std::vector<int32_t> acc = run_s32(k, c, p);
        int64_t bad = 0;
        for (size_t i = 0; i < ref.size(); ++i) bad += ref[i] != acc[i];
        EXPECT_EQ(bad, 0) << "M " << M << " N " << N << " K " << K << " codes " << lo << ".." << hi
                          << " kernel " << igemm_kernel_name(k);
      }
    }
}

// The worst case of every kernel's intermediate sums: all codes at one extreme and all weights
// +1 (biased byte 2), so each AVX2 int16 pair sum is +-2*2*128 and the int16 span accumulator
// reaches its bound; the kernels must still agree bit for bit with the exact sum.
TEST(IGemm, KernelsAgreeBitForBitAtTheExtremeCodes) {
  const std::vector<IgemmKernel> kernels = available_kernels();
  for (int8_t xv : {int8_t(-128), int8_t(127), int8_t(-8), int8_t(7)})
    for (int8_t wv : {int8_t(1), int8_t(-1)})
      for (auto [M, N, K] :
           {std::tuple<int64_t, int64_t, int64_t>{7, 45, 1031}, {1, 1, 1}, {9, 33, 128}}) {
        Codes c{M, N, K, 4 * ((K + 3) / 4), {}, {}};
        c.x.assign(size_t(M * c.ld), kPad);
        for (int64_t m = 0; m < M; ++m)
          for (int64_t k = 0; k < K; ++k) c.x[size_t(m * c.ld + k)] = xv;
        c.w.assign(size_t(N * K), wv);
        const PackedTernary p = pack_ternary(c.w.data(), N, K);
        const std::vector<int32_t> want(size_t(M * N), int32_t(xv) * int32_t(wv) * int32_t(K));
        for (IgemmKernel k : kernels)
          EXPECT_EQ(run_s32(k, c, p), want)
              << igemm_kernel_name(k) << " x " << int(xv) << " w " << int(wv) << " K " << K;
      }
}

TEST(IGemm, FloatEpilogueIsAccTimesScalesOnEveryKernel) {
  const Codes c = random_codes(37, 70, 64, -8, 7, 5);
  const PackedTernary p = pack_ternary(c.w.data(), c.N, c.K);
  std::vector<float> xs(size_t(c.M));
  for (int64_t m = 0; m < c.M; ++m) xs[size_t(m)] = 0.01f * float(m + 1);
  const std::vector<int64_t> ref = exact(c);
  for (IgemmKernel k : available_kernels()) {
    igemm_force(k);
    std::vector<float> y(size_t(c.M * c.N));
    igemm_ternary_f32(c.x.data(), c.M, c.ld, p, xs.data(), 0.37f, y.data(), c.N);
    for (int64_t m = 0; m < c.M; ++m)
      for (int64_t n = 0; n < c.N; ++n)
        ASSERT_EQ(y[size_t(m * c.N + n)], float(ref[size_t(m * c.N + n)]) * (xs[size_t(m)] * 0.37f))
            << m << "," << n << " " << igemm_kernel_name(k);
  }
  igemm_force(IgemmKernel::Auto);
}

TEST(IGemm, KernelNamesAndForcing) {
  const std::string fastest = igemm_kernel();
  EXPECT_TRUE(fastest == "avx512-vnni" || fastest == "avx2" || fastest == "portable") << fastest;
  EXPECT_TRUE(igemm_available(IgemmKernel::Portable));
  for (IgemmKernel k : available_kernels()) {
    igemm_force(k);
    EXPECT_STREQ(igemm_kernel(), igemm_kernel_name(k));
  }
  igemm_force(IgemmKernel::Auto);
  EXPECT_EQ(igemm_kernel(), fastest);
  for (IgemmKernel k : {IgemmKernel::Avx2, IgemmKernel::Avx512Vnni}) {
    if (!igemm_available(k)) {
      EXPECT_THROW(igemm_force(k), Error);
    }
  }
}

TEST(IGemm, MisuseNamesOpAndShapes) {
  std::vector<int8_t> w{0, 1, 2, -1};
  try {
    pack_ternary(w.data(), 2, 2);
    FAIL() << "accepted a non-ternary code";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("pack_ternary"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("[1, 0]"), std::string::npos) << e.what();
  }
  w = {0, 1, 1, -1, 0, 1};  // [2, 3]: rows need a stride of 4
  const PackedTernary p = pack_ternary(w.data(), 2, 3);
  std::vector<int8_t> x(6, 1);
  std::vector<int32_t> acc(4);
  EXPECT_THROW(igemm_ternary_s32(x.data(), 2, 3, p, acc.data(), 2), Error);
}

// The integer node against the float path on the same input and weight: forward to fp32 rounding
// (same codes: the quantizers are shared), backward the same GEMMs on bitwise-equal operands.
TEST(BitLinearNode, MatchesTheFloatPathForwardAndBackward) {
  const ActSpec specs[] = {{ActKind::Int8, 0.0f, 1.0f},
                           {ActKind::Int4, 0.0f, 1.0f},
                           {ActKind::Int8, 0.5f, 1.0f},
                           {ActKind::Int4, 0.0f, 2.0f}};
  for (const ActSpec& spec : specs) {
    SCOPED_TRACE(to_string(spec));
    for (auto [rows, in, out] : {std::tuple<int64_t, int64_t, int64_t>{5, 7, 3}, {64, 96, 80}}) {
      Variable x1 = random_var(Shape{rows, in}, 1, 1.0f, true),
               w1 = random_var(Shape{out, in}, 2, 0.05f, true);
      Variable x2(x1.value().clone(), true), w2(w1.value().clone(), true);
      Tensor seed = random_var(Shape{rows, out}, 3, 1.0f, false).value();
      Tape t1, t2;
      Variable y1, y2;
      int64_t z1 = 0, z2 = 0;
      {
        TapeScope s(t1);
        y1 = bitlinear(quantize_act(x1, spec, &z1), w1);
        t1.backward(y1, seed, true);
      }
      {
        TapeScope s(t2);
        y2 = linear(act_quant(x2, spec, &z2), ternary(w2));
        t2.backward(y2, seed, true);
      }
      EXPECT_EQ(z1, z2);
      EXPECT_LT(rel_diff(y1.value(), y2.value()), 1e-6);
      EXPECT_LT(rel_diff(x1.grad(), x2.grad()), 1e-6);
      EXPECT_LT(rel_diff(w1.grad(), w2.grad()), 1e-6);
      EXPECT_GT(rel_diff(y2.value(), Tensor::zeros(y2.shape())), 0.0);  // not trivially zero
    }
  }
}

TEST(BitLinearNode, CodesAndMultipliersReproduceTheDequantizedInput) {
  Variable x = random_var(Shape{9, 13}, 4, 2.0f, false);
  for (ActKind k : {ActKind::Int8, ActKind::Int4}) {
    const ActSpec spec{k, 0.0f, 1.0f};
    auto qa = quantize_act(x, spec);
    std::vector<float> y(size_t(x.numel()));
    act_quantize(spec, x.data(), 9, 13, y.data(), nullptr, nullptr);
    ASSERT_EQ(qa->ld, 16);
    for (int64_t r = 0; r < 9; ++r) {
      for (int64_t j = 0; j < 13; ++j)
        EXPECT_EQ(float(qa->code_data()[r * 16 + j]) / qa->mult[r], y[size_t(r * 13 + j)]);
      for (int64_t j = 13; j < 16; ++j) EXPECT_EQ(qa->code_data()[r * 16 + j], 0);  // padding
    }
  }
  EXPECT_THROW(quantize_act(x, ActSpec{ActKind::Fp4, 0.0f, 1.0f}), Error);
  EXPECT_THROW(bitlinear(quantize_act(x, ActSpec{ActKind::Int8, 0.0f, 1.0f}),
                         random_var(Shape{4, 12}, 5, 1.0f, true)),
               Error);
}
