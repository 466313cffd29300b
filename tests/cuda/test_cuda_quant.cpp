// The CUDA quant kernel table against the CPU table (the reference) on the same inputs: every
// entry of quant::Kernels on odd shapes (rows 1/7/33, cols 1/5/100/257, 4096- and 12289-column
// rows), all activation kinds with and without top-K (many exact ties), int4_mult 2, NaN/inf
// rows, zero counts, the ternary statistic, packing and the integer GEMM (cuBLAS and the simple
// fallback kernel), then quant::bitlinear and the STE nodes forward and backward through a Tape.
//
// Tolerances: everything the quant kernels produce is compared bit for bit (codes, scales,
// multipliers, dequantized values, a, Wq, GEMM outputs; a NaN equals a NaN). Only the backward
// of bitlinear goes through fp32 GEMMs (cuBLAS vs OpenBLAS, different summation orders): relative
// 1e-5 there. Without a CUDA device every test prints "skipped: no CUDA device" and is reported
// as skipped.
// Run: ctest --preset release -L cuda   (or build/release/tests/test_cuda_quant)
#include <gtest/gtest.h>

#include <bit>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <iostream>
#include <limits>
#include <string>
#include <tuple>
#include <vector>

#include "autograd/cuda/cuda.h"
#include "autograd/ops.h"
#include "autograd/tape.h"
#include "quant/bitlinear.h"
#include "quant/cuda/cuda.h"
#include "quant/dispatch.h"
#include "quant/ste.h"
#include "tests/cuda/cuda_test.h"

using namespace autograd;
using quant::ActKind;
using quant::ActSpec;
using quant::PackedTernary;

namespace {
const Device kGpu = Device::cuda(0);
const Device kCpu = Device::cpu();

const quant::Kernels& cpu() { return quant::cpu_kernels(); }
const quant::Kernels& gpu() { return quant::kernels_for(kGpu); }

uint32_t lcg(uint32_t& x) { return x = x * 1664525u + 1013904223u; }
// Uniform values in [-1, 1), row r scaled by kRowScale[r % 5] (very different magnitudes).
std::vector<float> uniform_rows(int64_t rows, int64_t cols, uint32_t seed) {
  static const float kRowScale[] = {1.0f, 1e-3f, 50.0f, 0.02f, 7.0f};
  std::vector<float> v(size_t(rows * cols));
  uint32_t x = seed * 2654435761u + 12345u;
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t j = 0; j < cols; ++j)
      v[size_t(r * cols + j)] = kRowScale[r % 5] * (2.0f * float(lcg(x) >> 8) / float(1 << 24) - 1);
  return v;
}
// Values on the grid {-1, -0.75, ..., 0.75} (exact ties in |x| everywhere; some exact zeros and
// a -0) times a per-row power of two.
std::vector<float> tied_rows(int64_t rows, int64_t cols, uint32_t seed) {
  std::vector<float> v(size_t(rows * cols));
  uint32_t x = seed * 2654435761u + 777u;
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t j = 0; j < cols; ++j)
      v[size_t(r * cols + j)] = std::ldexp(float(int(lcg(x) >> 29) - 4) * 0.25f, int(r % 7) - 3);
  if (v.size() > 3) v[3] = -0.0f;
  return v;
}
Tensor host(const Shape& s, const std::vector<float>& v) { return Tensor::from(s, v); }
Tensor G(const Tensor& t) { return t.defined() ? t.to(kGpu) : Tensor(); }

// Bit-for-bit equality of two f32 tensors (either device); NaN equals NaN.
void expect_bits(const Tensor& c, const Tensor& g, const std::string& what) {
  ASSERT_EQ(c.shape(), g.shape()) << what;
  const std::vector<float> a = c.to(kCpu).to_vector(), b = g.to(kCpu).to_vector();
  int bad = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    const bool ok = std::bit_cast<uint32_t>(a[i]) == std::bit_cast<uint32_t>(b[i]) ||
                    (std::isnan(a[i]) && std::isnan(b[i]));
    if (!ok && bad++ < 5)
      ADD_FAILURE() << what << ": element " << i << " of " << c.shape() << ": cpu " << a[i]
                    << " cuda " << b[i];
  }
  EXPECT_EQ(bad, 0) << what << ": " << bad << " of " << a.size() << " elements differ";
}
// Byte equality of two i8/u8 tensors.
void expect_bytes(const Tensor& c, const Tensor& g, const std::string& what) {
  ASSERT_EQ(c.shape(), g.shape()) << what;
  ASSERT_EQ(c.dtype(), g.dtype()) << what;
  const Tensor a = c.to(kCpu), b = g.to(kCpu);
  const auto* pa = static_cast<const int8_t*>(a.raw());
  const auto* pb = static_cast<const int8_t*>(b.raw());
  int bad = 0;
  for (int64_t i = 0; i < a.numel(); ++i)
    if (pa[i] != pb[i] && bad++ < 5)
      ADD_FAILURE() << what << ": byte " << i << " of " << c.shape() << ": cpu " << int(pa[i])
                    << " cuda " << int(pb[i]);
  EXPECT_EQ(bad, 0) << what << ": " << bad << " of " << a.numel() << " bytes differ";
}
double rel_diff(const Tensor& g, const Tensor& c) {
  const std::vector<float> a = g.to(kCpu).to_vector(), b = c.to(kCpu).to_vector();
  double md = 0, mr = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    md = std::max(md, std::fabs(double(a[i]) - double(b[i])));
    mr = std::max(mr, std::fabs(double(b[i])));
  }
  return md / std::max(mr, 1e-30);
}
int64_t nonzeros(const Tensor& t) {
  int64_t n = 0;
  for (float v : t.to(kCpu).to_vector()) n += v != 0.0f;
  return n;
}
// A device i8 tensor pre-filled with junk (so unwritten bytes show).
Tensor junk_i8(const Shape& s, Device dev) {
  std::vector<int8_t> v(size_t(s.numel()), int8_t(0x55));
  return Tensor::from_host(s, v.data(), dev);
}

const std::vector<ActSpec> kSpecs = {{ActKind::None, 0.0f, 1.0f},
                                     {ActKind::None, 0.5f, 1.0f},
                                     {ActKind::Int8, 0.0f, 1.0f},
                                     {ActKind::Int8, 0.5f, 1.0f},
                                     {ActKind::Int4, 0.0f, 1.0f},
                                     {ActKind::Int4, 0.5f, 1.0f},
                                     {ActKind::Int4, 0.0f, 2.0f},
                                     {ActKind::Int4, 0.3f, 2.0f},
                                     {ActKind::Fp4, 0.0f, 1.0f},
                                     {ActKind::Fp4, 0.5f, 1.0f},
                                     {ActKind::Int8, 1.0f, 1.0f},
                                     {ActKind::Int8, 0.01f, 1.0f},
                                     // the [a4.8] Fig. 6 ablation kinds
                                     {ActKind::Int4Absmax, 0.0f, 1.0f},
                                     {ActKind::Int4Absmax, 0.5f, 1.0f},
                                     {ActKind::Fp4E1M2, 0.0f, 1.0f},
                                     {ActKind::Fp4E1M2, 0.5f, 1.0f}};
std::vector<Shape> act_shapes() {
  std::vector<Shape> s;
  for (int64_t r : {1, 7, 33})
    for (int64_t c : {1, 5, 100, 257}) s.push_back(Shape{r, c});
  s.push_back(Shape{2, 4096});
  s.push_back(Shape{3, 12289});  // beyond the shared-memory staging of top-K rows
  s.push_back(Shape{2, 3, 100});
  return s;
}
}  // namespace

// act_quantize: y bit for bit, zero counts equal (count = true) and 0 when count = false.
TEST(CudaQuant, ActQuantizeMatchesCpuBitForBit) {
  REQUIRE_CUDA();
  for (const Shape& s : act_shapes())
    for (int data = 0; data < 2; ++data) {
      const std::vector<float> v =
          data ? tied_rows(s.rows(), s.back(), 3) : uniform_rows(s.rows(), s.back(), 2);
      const Tensor x = host(s, v), xg = G(x);
      for (const ActSpec& spec : kSpecs) {
        const std::string what = quant::to_string(spec) + " " + s.str() + (data ? " tied" : "");
        for (bool count : {false, true}) {
          Tensor yc = Tensor::empty(s), yg = Tensor::empty(s, DType::F32, kGpu);
          const int64_t zc = cpu().act_quantize(spec, x, yc, count);
          const int64_t zg = gpu().act_quantize(spec, xg, yg, count);
          expect_bits(yc, yg, what);
          EXPECT_EQ(zc, zg) << what << " count " << count;
          if (!count) {
            EXPECT_EQ(zg, 0) << what;
          }
          if (count && spec.topk == 0.5f && s.back() >= 100) {  // top-K zeroed half the row
            EXPECT_GE(zg, s.numel() / 2 - s.rows()) << what;
          }
        }
      }
    }
}

// Top-K alone (kind None) on a row of nothing but ties keeps exactly the first k entries.
TEST(CudaQuant, TopKKeepsTheLowestIndexAmongTies) {
  REQUIRE_CUDA();
  for (int64_t cols : {5, 100, 257, 4096, 12289}) {
    std::vector<float> v(size_t(3 * cols), 0.5f);
    for (int64_t j = 0; j < cols; ++j) v[size_t(cols + j)] = (j % 2) ? -0.5f : 0.5f;
    for (int64_t j = 0; j < cols; ++j) v[size_t(2 * cols + j)] = (j % 3 == 0) ? 2.0f : -0.5f;
    const Tensor x = host(Shape{3, cols}, v);
    const ActSpec spec{ActKind::None, 0.5f, 1.0f};
    Tensor yc = Tensor::empty(x.shape()), yg = Tensor::empty(x.shape(), DType::F32, kGpu);
    cpu().act_quantize(spec, x, yc, false);
    gpu().act_quantize(spec, G(x), yg, false);
    expect_bits(yc, yg, "ties cols " + std::to_string(cols));
    const int64_t k = quant::topk_count(cols, 0.5f);
    const std::vector<float> y = yg.to(kCpu).to_vector();
    for (int64_t j = 0; j < cols; ++j)
      ASSERT_EQ(y[size_t(j)] != 0.0f, j < k) << "row 0 col " << j << " of " << cols;
  }
}

// NaN and inf rows: the CPU's behaviour (NaN statistic -> NaN scale, codes at the low clamp)
// reproduced, codes and scales included.
TEST(CudaQuant, NonFiniteRowsMatchCpu) {
  REQUIRE_CUDA();
  const float nan = std::numeric_limits<float>::quiet_NaN(),
              inf = std::numeric_limits<float>::infinity();
  for (int64_t cols : {1, 5, 100, 257}) {
    std::vector<float> v = uniform_rows(4, cols, 9);
    v[size_t(0 * cols + cols / 2)] = nan;
    v[size_t(1 * cols + cols - 1)] = inf;
    v[size_t(2 * cols)] = -inf;
    const Tensor x = host(Shape{4, cols}, v), xg = G(x);
    for (const ActSpec& spec : kSpecs) {
      const std::string what = quant::to_string(spec) + " cols " + std::to_string(cols);
      Tensor yc = Tensor::empty(x.shape()), yg = Tensor::empty(x.shape(), DType::F32, kGpu);
      EXPECT_EQ(cpu().act_quantize(spec, x, yc, true), gpu().act_quantize(spec, xg, yg, true))
          << what;
      expect_bits(yc, yg, what);
      if (!quant::integer_codes(spec.kind)) continue;
      const int64_t ld = 4 * ((cols + 3) / 4);
      Tensor cc = Tensor::empty(Shape{4, ld}, DType::I8), cg = junk_i8(Shape{4, ld}, kGpu);
      Tensor mc = Tensor::empty(Shape{4}), mg = Tensor::empty(Shape{4}, DType::F32, kGpu);
      Tensor sc = Tensor::empty(Shape{4}), sg = Tensor::empty(Shape{4}, DType::F32, kGpu);
      EXPECT_EQ(cpu().act_codes(spec, x, cc, mc, sc, true),
                gpu().act_codes(spec, xg, cg, mg, sg, true))
          << what;
      expect_bytes(cc, cg, what + " codes");
      expect_bits(mc, mg, what + " mult");
      expect_bits(sc, sg, what + " scale");
    }
  }
}

// act_codes: codes (padding bytes zeroed, also for ld > 4 ceil(cols/4)), mult = s, scale = 1/s,
// zero counts; either scale output may be undefined.
TEST(CudaQuant, ActCodesMatchCpuBitForBit) {
  REQUIRE_CUDA();
  for (const Shape& s : act_shapes())
    for (const ActSpec& spec : kSpecs) {
      if (!quant::integer_codes(spec.kind)) continue;
      const int64_t rows = s.rows(), cols = s.back();
      const Tensor x = host(s, uniform_rows(rows, cols, 5)), xg = G(x);
      for (int64_t ld : {4 * ((cols + 3) / 4), cols + 7})
        for (int outs = 0; outs < 3; ++outs) {  // 0: both, 1: mult only, 2: scale only
          const std::string what =
              quant::to_string(spec) + " " + s.str() + " ld " + std::to_string(ld);
          Tensor cc = Tensor::empty(Shape{rows, ld}, DType::I8),
                 cg = junk_i8(Shape{rows, ld}, kGpu);
          Tensor mc = Tensor::empty(Shape{rows}), mg = Tensor::empty(Shape{rows}, DType::F32, kGpu);
          Tensor sc = Tensor::empty(Shape{rows}), sg = Tensor::empty(Shape{rows}, DType::F32, kGpu);
          const Tensor mcu = outs == 2 ? Tensor() : mc, mgu = outs == 2 ? Tensor() : mg;
          const Tensor scu = outs == 1 ? Tensor() : sc, sgu = outs == 1 ? Tensor() : sg;
          const int64_t zc = cpu().act_codes(spec, x, cc, mcu, scu, true);
          const int64_t zg = gpu().act_codes(spec, xg, cg, mgu, sgu, true);
          EXPECT_EQ(zc, zg) << what;
          EXPECT_EQ(gpu().act_codes(spec, xg, cg, mgu, sgu, false), 0) << what;
          expect_bytes(cc, cg, what + " codes");
          if (mcu.defined()) expect_bits(mc, mg, what + " mult");
          if (scu.defined()) expect_bits(sc, sg, what + " scale");
        }
    }
  for (ActKind k : {ActKind::Fp4, ActKind::Fp4E1M2})
    EXPECT_THROW(
        gpu().act_codes(ActSpec{k, 0.0f, 1.0f}, Tensor::zeros(Shape{2, 4}, DType::F32, kGpu),
                        Tensor::empty(Shape{2, 4}, DType::I8, kGpu), Tensor(), Tensor(), false),
        Error);
}

// FP4 E1M2 MinMax equals INT4 absmax bit for bit on the GPU as on the CPU (SPEC §2.8).
TEST(CudaQuant, Fp4E1M2EqualsInt4AbsmaxOnTheGpu) {
  REQUIRE_CUDA();
  for (const Shape& s : act_shapes()) {
    const Tensor xg = G(host(s, tied_rows(s.rows(), s.back(), 4)));
    Tensor ye = Tensor::empty(s, DType::F32, kGpu), yi = Tensor::empty(s, DType::F32, kGpu);
    EXPECT_EQ(gpu().act_quantize(ActSpec{ActKind::Fp4E1M2, 0.0f, 1.0f}, xg, ye, true),
              gpu().act_quantize(ActSpec{ActKind::Int4Absmax, 0.0f, 1.0f}, xg, yi, true))
        << s.str();
    expect_bits(ye.to(kCpu), yi.to(kCpu), "e1m2 vs int4-absmax " + s.str());
  }
}

// dequantize: y = c / mult bit for bit, on the CPU's codes.
TEST(CudaQuant, DequantizeMatchesCpu) {
  REQUIRE_CUDA();
  for (const Shape& s : act_shapes()) {
    const int64_t rows = s.rows(), cols = s.back(), ld = 4 * ((cols + 3) / 4);
    const Tensor x = host(s, uniform_rows(rows, cols, 6));
    for (ActKind k : {ActKind::Int8, ActKind::Int4, ActKind::Int4Absmax}) {
      const ActSpec spec{k, 0.0f, 1.0f};
      Tensor codes = Tensor::empty(Shape{rows, ld}, DType::I8), mult = Tensor::empty(Shape{rows});
      cpu().act_codes(spec, x, codes, mult, Tensor(), false);
      Tensor yc = Tensor::empty(Shape{rows, cols}),
             yg = Tensor::empty(yc.shape(), DType::F32, kGpu);
      cpu().dequantize(codes, mult, yc);
      gpu().dequantize(G(codes), G(mult), yg);
      expect_bits(yc, yg, quant::to_string(spec) + " " + s.str());
      // bf16 output (both tables): the f32 value rounded to nearest even, bit for bit
      Tensor bc = Tensor::empty(yc.shape(), DType::BF16),
             bg = Tensor::empty(yc.shape(), DType::BF16, kGpu);
      cpu().dequantize(codes, mult, bc);
      gpu().dequantize(G(codes), G(mult), bg);
      const Tensor bgh = bg.to(kCpu);
      int bad16 = 0;
      for (int64_t i = 0; i < yc.numel(); ++i) {
        const uint16_t want = to_bf16(yc[i]).bits;
        bad16 += bc.data<bf16>()[i].bits != want || bgh.data<bf16>()[i].bits != want;
      }
      EXPECT_EQ(bad16, 0) << "bf16 dequantize " << quant::to_string(spec) << " " << s.str();
      // and it is the act_quantize output (the codes route reproduces the float route) up to the
      // sign of zero: act_quantize's c / s keeps the sign of a negative x that rounds to 0 (-0),
      // dequantize's float(code 0) / s is +0; equal as values
      Tensor yq = Tensor::empty(s);
      cpu().act_quantize(spec, x, yq, false);
      const std::vector<float> q = yq.to_vector(), d = yg.to(kCpu).to_vector();
      int bad = 0;
      for (size_t i = 0; i < q.size(); ++i) bad += !(q[i] == d[i]);
      EXPECT_EQ(bad, 0) << "dequantized vs act_quantize " << s.str();
    }
  }
}

TEST(CudaQuant, CountZerosMatchesCpu) {
  REQUIRE_CUDA();
  for (int64_t n : {int64_t(1), int64_t(7), int64_t(1000), int64_t(1 << 20) + 3}) {
    std::vector<float> v(static_cast<size_t>(n));
    for (int64_t i = 0; i < n; ++i)
      v[size_t(i)] = i % 3 ? float(i % 7) - 3.5f : (i % 2 ? -0.0f : 0.0f);  // a zero every 3rd
    const Tensor x = host(Shape{n}, v);
    const int64_t zc = cpu().count_zeros(x);
    EXPECT_EQ(zc, gpu().count_zeros(G(x))) << n;
    EXPECT_EQ(zc, (n + 2) / 3) << n;
  }
}

// ternary: a = max(mean|W|, 1e-5) bit for bit (double, fixed order), Wq and codes equal, for
// every combination of outputs; ternary_apply from a known a.
TEST(CudaQuant, TernaryMatchesCpuBitForBit) {
  REQUIRE_CUDA();
  const std::vector<Shape> shapes = {Shape{1, 1},     Shape{3, 5},       Shape{37, 100},
                                     Shape{300, 257}, Shape{1024, 1027}, Shape{4096, 300}};
  for (const Shape& s : shapes)
    for (int data = 0; data < 3; ++data) {
      std::vector<float> v = uniform_rows(1, s.numel(), 13);
      for (auto& e : v) e *= data == 0 ? 0.05f : data == 1 ? 1e-7f : 3.0f;  // 1: a clamps to 1e-5
      const Tensor w = host(s, v), wg = G(w);
      const std::string what = s.str() + " data " + std::to_string(data);
      for (int outs = 0; outs < 3; ++outs) {  // 0: both, 1: wq only, 2: codes only
        Tensor ac = Tensor::empty(Shape{1}), ag = Tensor::empty(Shape{1}, DType::F32, kGpu);
        Tensor qc = Tensor::empty(s), qg = Tensor::empty(s, DType::F32, kGpu);
        Tensor cc = Tensor::empty(s, DType::I8), cg = junk_i8(s, kGpu);
        const bool wq = outs != 2, codes = outs != 1;
        cpu().ternary(w, wq ? qc : Tensor(), codes ? cc : Tensor(), ac);
        gpu().ternary(wg, wq ? qg : Tensor(), codes ? cg : Tensor(), ag);
        expect_bits(ac, ag, what + " a");
        if (wq) expect_bits(qc, qg, what + " wq");
        if (codes) expect_bytes(cc, cg, what + " codes");
        if (data == 1) {
          EXPECT_EQ(ag.item(), quant::kEps) << what;
        }
      }
      Tensor a = Tensor::full(Shape{1}, 0.0371f);
      Tensor qc = Tensor::empty(s), qg = Tensor::empty(s, DType::F32, kGpu);
      cpu().ternary_apply(w, a, qc);
      gpu().ternary_apply(wg, G(a), qg);
      expect_bits(qc, qg, what + " ternary_apply");
      if (data == 0 && s.numel() > 100) {
        EXPECT_GT(nonzeros(qg), 0) << what;
      }
    }
}

// pack_ternary's CUDA layout (cuda.h): i8 [pad16(N), pad16(K)], zero padded.
TEST(CudaQuant, PackTernaryLayout) {
  REQUIRE_CUDA();
  for (auto [N, K] : {std::pair<int64_t, int64_t>{1, 1}, {3, 5}, {37, 100}, {300, 260}}) {
    std::vector<int8_t> c(size_t(N * K));
    uint32_t x = uint32_t(N * 31 + K);
    for (auto& e : c) e = int8_t(int(lcg(x) >> 30) % 3 - 1);
    const PackedTernary p = gpu().pack_ternary(Tensor::from_host(Shape{N, K}, c.data(), kGpu));
    const int64_t Np = (N + 15) / 16 * 16, Kp = (K + 15) / 16 * 16;
    ASSERT_EQ(p.N, N);
    ASSERT_EQ(p.K, K);
    ASSERT_EQ(p.K4 * 4, Kp);
    ASSERT_EQ(p.bytes.numel(), Np * Kp);
    ASSERT_EQ(p.bytes.device(), kGpu);
    const Tensor b = p.bytes.to(kCpu);
    const auto* pb = static_cast<const int8_t*>(b.raw());
    for (int64_t n = 0; n < Np; ++n)
      for (int64_t k = 0; k < Kp; ++k)
        ASSERT_EQ(pb[n * Kp + k], n < N && k < K ? c[size_t(n * K + k)] : 0)
            << "[" << n << ", " << k << "] of [" << N << ", " << K << "]";
  }
}

// ternary_gemm: y[m, n] = acc * (xscale[m] * (1/(1/a))) bit for bit against the CPU integer
// route on the same codes (junk in the activation padding bytes; extreme codes), through cuBLAS
// and through the simple fallback kernel.
TEST(CudaQuant, TernaryGemmMatchesCpuBitForBit) {
  REQUIRE_CUDA();
  int shapes = 0, via_cublas = 0;
  for (int64_t M : {1, 7, 33, 130})
    for (int64_t K : {5, 100, 260})
      for (int64_t N : {1, 3, 37, 300})
        for (int extreme = 0; extreme < 2; ++extreme) {
          const int64_t ld = 4 * ((K + 3) / 4);
          std::vector<int8_t> xc(size_t(M * ld)), wc(size_t(N * K));
          uint32_t r = uint32_t(M * 7919 + K * 31 + N);
          for (int64_t m = 0; m < M; ++m)
            for (int64_t k = 0; k < ld; ++k)
              xc[size_t(m * ld + k)] = k >= K    ? int8_t(0x7f)  // padding junk
                                       : extreme ? int8_t(-128)
                                                 : int8_t(int(lcg(r) >> 24) - 128);
          for (auto& e : wc) e = extreme ? int8_t(-1) : int8_t(int(lcg(r) >> 30) % 3 - 1);
          std::vector<float> xs(static_cast<size_t>(M));
          for (auto& e : xs) e = 1e-3f + float(lcg(r) >> 8) / float(1 << 24) * 0.05f;
          const Tensor x = Tensor::from_host(Shape{M, ld}, xc.data()),
                       w = Tensor::from_host(Shape{N, K}, wc.data()), xscale = host(Shape{M}, xs),
                       a = Tensor::full(Shape{1}, 0.0123f);
          Tensor yc = Tensor::empty(Shape{M, N});
          cpu().ternary_gemm(x, K, cpu().pack_ternary(w), xscale, a, yc);
          const PackedTernary pg = gpu().pack_ternary(G(w));
          const std::string what = "M " + std::to_string(M) + " K " + std::to_string(K) + " N " +
                                   std::to_string(N) + (extreme ? " extreme" : "");
          for (bool simple : {false, true}) {
            quant::cuda::force_simple_igemm(simple);
            Tensor yg = Tensor::empty(Shape{M, N}, DType::F32, kGpu);
            gpu().ternary_gemm(G(x), K, pg, G(xscale), G(a), yg);
            const std::string path = quant::cuda::last_igemm_path();
            if (simple) {
              EXPECT_EQ(path, "simple");
            } else {
              ++shapes, via_cublas += path == "cublas";
            }
            expect_bits(yc, yg, what + " via " + path);
            // a bf16 output (activation_dtype): the same f32 values, rounded to nearest even
            Tensor y16 = Tensor::empty(Shape{M, N}, DType::BF16, kGpu);
            gpu().ternary_gemm(G(x), K, pg, G(xscale), G(a), y16);
            expect_bits(cudatest::bf16_round(yc), cudatest::widen(y16), what + " bf16 via " + path);
          }
          quant::cuda::force_simple_igemm(false);
          if (extreme) {
            EXPECT_EQ(nonzeros(yc), M * N) << what;  // sums of 128 K, all nonzero
          }
        }
  std::cout << "cuBLAS int8 GEMM took " << via_cublas << " of " << shapes
            << " shapes (the rest: the simple fallback kernel)\n";
}

// quant::bitlinear forward (bit for bit: same codes, exact integer GEMM, same epilogue) and
// backward (fp32 GEMMs: relative 1e-5) through a Tape on the GPU vs the CPU; zero counts equal.
TEST(CudaQuant, BitLinearForwardBackwardMatchesCpu) {
  REQUIRE_CUDA();
  const ActSpec specs[] = {{ActKind::Int8, 0.0f, 1.0f},
                           {ActKind::Int4, 0.0f, 1.0f},
                           {ActKind::Int8, 0.5f, 1.0f},
                           {ActKind::Int4, 0.0f, 2.0f},
                           {ActKind::Int4Absmax, 0.0f, 1.0f}};
  for (const ActSpec& spec : specs)
    for (const Shape& xs : {Shape{5, 7}, Shape{33, 100}, Shape{2, 5, 260}})
      for (int64_t out : {3, 37}) {
        const int64_t in = xs.back();
        const std::string what =
            quant::to_string(spec) + " x " + xs.str() + " out " + std::to_string(out);
        auto run = [&](Device dev) {
          Variable x(host(xs, uniform_rows(xs.rows(), in, 21)).to(dev), true);
          Variable w(host(Shape{out, in}, uniform_rows(out, in, 22)).to(dev), true);
          Shape ys = xs;
          ys.at(-1) = out;
          const Tensor seed = host(ys, uniform_rows(xs.rows(), out, 23)).to(dev);
          Tape tape;
          Variable y;
          int64_t zeros = 0;
          {
            TapeScope scope(tape);
            auto qa = quant::quantize_act(x, spec, &zeros);
            y = quant::bitlinear(qa, w);
            tape.backward(y, seed);
          }
          return std::tuple<Tensor, Tensor, Tensor, int64_t>{y.value(), x.grad(), w.grad(), zeros};
        };
        const auto [yc, dxc, dwc, zc] = run(kCpu);
        const auto [yg, dxg, dwg, zg] = run(kGpu);
        ASSERT_EQ(yg.device(), kGpu) << what;
        expect_bits(yc, yg, what + " y");
        EXPECT_EQ(zc, zg) << what;
        EXPECT_GT(nonzeros(yc), 0) << what;
        EXPECT_LT(rel_diff(dxg, dxc), 1e-5) << what << " dx";
        EXPECT_LT(rel_diff(dwg, dwc), 1e-5) << what << " dw";
        EXPECT_GT(nonzeros(dwc), 0) << what;
      }
}

// Under GEMM precision bf16 the BitLinear backward rounds dy once and builds Xq in bf16: its dx
// and dW equal, bit for bit, the GEMMs of the f32 operands at bf16 (each rounding them itself).
TEST(CudaQuant, BitLinearBackwardBf16OperandsRoundedOnce) {
  REQUIRE_CUDA();
  const ScopedGemmPrecision bf(GemmPrecision::BF16);
  const ActSpec spec{ActKind::Int4, 0.0f, 1.0f};
  const int64_t M = 70, K = 96, N = 40;
  Variable x(host(Shape{M, K}, uniform_rows(M, K, 31)).to(kGpu), true);
  Variable w(host(Shape{N, K}, uniform_rows(N, K, 32)).to(kGpu), true);
  const Tensor seed = host(Shape{M, N}, uniform_rows(M, N, 33)).to(kGpu);
  Tape tape;
  std::shared_ptr<const quant::QuantizedAct> qa;
  {
    TapeScope scope(tape);
    qa = quant::quantize_act(x, spec, nullptr);
    tape.backward(quant::bitlinear(qa, w), seed);
  }
  // reference: the f32 operands through the table's GEMM at bf16
  Tensor a = Tensor::empty(Shape{1}, DType::F32, kGpu),
         codes = Tensor::empty(Shape{N, K}, DType::I8, kGpu);
  gpu().ternary(w.value(), Tensor(), codes, a);
  Tensor wq = Tensor::empty(Shape{N, K}, DType::F32, kGpu);
  gpu().ternary_apply(w.value(), a, wq);
  const Tensor& xq = qa->dequantized();
  Tensor dx = Tensor::empty(Shape{M, K}, DType::F32, kGpu),
         dw = Tensor::zeros(Shape{N, K}, DType::F32, kGpu);
  GemmArgs g;
  g.M = M, g.N = K, g.K = N, g.A = seed.data(), g.lda = N, g.B = wq.data(), g.ldb = K,
  g.C = dx.data(), g.ldc = K;
  kernels_for(kGpu).gemm(g);
  GemmArgs h;
  h.ta = true, h.M = N, h.N = K, h.K = M, h.A = seed.data(), h.lda = N, h.B = xq.data(), h.ldb = K;
  h.beta = 1.0f, h.C = dw.data(), h.ldc = K;
  kernels_for(kGpu).gemm(h);
  expect_bits(dx, x.grad(), "dx");
  expect_bits(dw, w.grad(), "dW");
  EXPECT_GT(nonzeros(dw.to(kCpu)), 0);
  // and the route really is bf16 (differs from the fp32 GEMM somewhere)
  Tensor dx32 = Tensor::empty(Shape{M, K}, DType::F32, kGpu);
  g.C = dx32.data(), g.precision = GemmPrecision::F32;
  kernels_for(kGpu).gemm(g);
  EXPECT_GT(rel_diff(dx32, dx), 0.0);
}

// The STE nodes on the GPU: act_quant and ternary forward bit for bit, the reported scale equal,
// the straight-through backward exact; the fp-mode pass-through counts zeros on the device.
TEST(CudaQuant, SteNodesMatchCpu) {
  REQUIRE_CUDA();
  const Shape s{7, 100};
  for (const ActSpec& spec : kSpecs) {
    auto run = [&](Device dev) {
      Variable x(host(s, tied_rows(7, 100, 31)).to(dev), true);
      Variable w(host(Shape{37, 100}, uniform_rows(37, 100, 32)).to(dev), true);
      Tape tape;
      Variable y;
      int64_t zeros = 0;
      float scale = 0.0f;
      {
        TapeScope scope(tape);
        Variable xq = quant::act_quant(x, spec, &zeros);
        Variable wq = quant::ternary(w, &scale);
        y = linear(xq, wq);
        tape.backward(sum(y));
      }
      return std::tuple<Tensor, Tensor, Tensor, int64_t, float>{y.value(), x.grad(), w.grad(),
                                                                zeros, scale};
    };
    const auto [yc, dxc, dwc, zc, sc] = run(kCpu);
    const auto [yg, dxg, dwg, zg, sg] = run(kGpu);
    const std::string what = quant::to_string(spec);
    EXPECT_EQ(zc, zg) << what;
    EXPECT_EQ(std::bit_cast<uint32_t>(sc), std::bit_cast<uint32_t>(sg)) << what;
    EXPECT_LT(rel_diff(yg, yc), 1e-5) << what;  // fp32 GEMM on bitwise-equal operands
    EXPECT_LT(rel_diff(dxg, dxc), 1e-5) << what;
    EXPECT_LT(rel_diff(dwg, dwc), 1e-5) << what;
    EXPECT_GT(zc, 0) << what;  // the tied data has exact zeros
  }
}

// The table registers itself: kernels_for(cuda) after a fresh registry lookup names "cuda".
TEST(CudaQuant, TableIsRegistered) {
  REQUIRE_CUDA();
  EXPECT_STREQ(gpu().device, "cuda");
  EXPECT_NE(gpu().ternary_gemm, nullptr);
}
