// Quantizer kernels (docs/SPEC.md §2): value sets, scales, ties, edge rows, top-K, sparsity
// figures.
#include <cmath>

#include "quant/dispatch.h"
#include "tests/quant/quant_helpers.h"

// ---- INT8 absmax ------------------------------------------------------------------------------

// A signed absmax quantizer (`quantize`) on Gaussian rows: s = fl(fl(1/g) * qmax), codes in [lo,
// qmax], y = c / s, each code the integer nearest to x s, and the absmax entry at +-qmax.
template <class Quantize>
void check_absmax_rows(Quantize quantize, int qmax, int lo, uint64_t seed) {
  for (int64_t cols : kCols) {
    const int64_t rows = 6;
    auto x = gaussian_rows(rows, cols, seed + uint64_t(cols));
    std::vector<float> y(x.size()), sc(static_cast<size_t>(rows));
    std::vector<int8_t> c(x.size());
    quantize(x.data(), rows, cols, y.data(), c.data(), sc.data());
    for (int64_t r = 0; r < rows; ++r) {
      const float* xr = &x[size_t(r * cols)];
      const double g = std::max(row_absmax(xr, cols), 1e-5);
      const float s = torch_rdiv(float(qmax), float(g));
      EXPECT_NEAR(double(s), qmax / g, qmax / g * kTwoRoundings) << cols;
      EXPECT_EQ(sc[size_t(r)], 1.0f / s);
      int maxc = 0;
      for (int64_t j = 0; j < cols; ++j) {
        const size_t i = size_t(r * cols + j);
        ASSERT_GE(c[i], lo);
        ASSERT_LE(c[i], qmax);
        ASSERT_EQ(y[i], float(c[i]) / s) << "r " << r << " j " << j;  // (an int8 code has no -0)
        // code is the integer nearest to x*s (|x*s - c| <= 1/2)
        ASSERT_LE(std::fabs(double(x[i]) * s - c[i]), 0.5 + 1e-6);
        maxc = std::max(maxc, std::abs(int(c[i])));
      }
      EXPECT_EQ(maxc, qmax) << "the absmax entry maps to +-qmax";
    }
  }
}

TEST(Int8Absmax, CodesScalesAndDequantizedValues) { check_absmax_rows(int8_absmax, 127, -128, 10); }

TEST(Int8Absmax, TiesRoundToEven) {
  // max|x| = 127 -> s = fl(fl(1/127) * 127) = 1 exactly, so x*s hits the .5 ties.
  std::vector<float> x = {127.0f, 2.5f, 3.5f, -2.5f, -3.5f, 0.5f, -0.5f, 1.5f, -1.5f, 126.5f};
  std::vector<int8_t> want = {127, 2, 4, -2, -4, 0, 0, 2, -2, 126};
  std::vector<float> y(x.size()), sc(1);
  std::vector<int8_t> c(x.size());
  int8_absmax(x.data(), 1, int64_t(x.size()), y.data(), c.data(), sc.data());
  ASSERT_EQ(sc[0], 1.0f);
  for (size_t j = 0; j < x.size(); ++j) {
    EXPECT_EQ(c[j], want[j]) << x[j];
    EXPECT_EQ(y[j], float(want[j]));
  }
}

// ---- INT4 absmean -----------------------------------------------------------------------------

TEST(Int4Absmean, CodesScalesAndDequantizedValues) {
  for (float mult : {1.0f, 2.0f}) {
    for (int64_t cols : kCols) {
      const int64_t rows = 6;
      auto x = gaussian_rows(rows, cols, 20 + cols);
      std::vector<float> y(x.size()), sc(static_cast<size_t>(rows));
      std::vector<int8_t> c(x.size());
      int4_absmean(x.data(), rows, cols, y.data(), c.data(), sc.data(), mult);
      for (int64_t r = 0; r < rows; ++r) {
        const float* xr = &x[size_t(r * cols)];
        const long double mean = row_abssum(xr, cols) / cols;
        const float b = std::max(float(mean) * mult, kEps);  // reference op order
        const float s = kSqrt7 / b;
        const double s_exact = std::sqrt(7.0) / std::max(double(mean) * mult, 1e-5);
        EXPECT_NEAR(double(s), s_exact, s_exact * 3.5e-7) << cols;
        EXPECT_EQ(sc[size_t(r)], 1.0f / s);
        for (int64_t j = 0; j < cols; ++j) {
          const size_t i = size_t(r * cols + j);
          ASSERT_GE(c[i], -8);
          ASSERT_LE(c[i], 7);
          ASSERT_EQ(y[i], float(c[i]) / s) << "mult " << mult << " r " << r << " j " << j;
          const double t = double(x[i]) * s;
          if (t > -8.5 && t < 7.5)
            ASSERT_LE(std::fabs(t - c[i]), 0.5 + 1e-6);
          else
            ASSERT_EQ(c[i], t < 0 ? -8 : 7);  // clamped
        }
      }
    }
  }
}

TEST(Int4Absmean, TiesRoundToEvenAndClamp) {
  // Tie values, then zeros and one balancing entry chosen so that float(mean|x|) == sqrt7_f32
  // exactly: b = sqrt7, s = sqrt7 / b = 1, and x*s lands on the .5 ties.
  std::vector<float> x = {0.5f, -0.5f, 1.5f, -1.5f, 2.5f,  -2.5f,
                          3.5f, -3.5f, 6.5f, 7.5f,  -7.5f, -8.5f};
  const std::vector<int8_t> want = {0, 0, 2, -2, 2, -2, 4, -4, 6, 7, -8, -8};
  const size_t nt = x.size();
  double sum = 0;
  for (float v : x) sum += std::fabs(v);
  const int64_t n = 40;
  x.resize(size_t(n), 0.0f);
  float e = float(double(n) * double(kSqrt7) - sum);  // the balancing entry, last
  for (int it = 0; it < 64 && float((sum + e) / double(n)) != kSqrt7; ++it)
    e = std::nextafter(e, float((sum + e) / double(n)) < kSqrt7 ? 100.0f : 0.0f);
  ASSERT_EQ(float((sum + e) / double(n)), kSqrt7) << "test precondition";
  x[size_t(n - 1)] = e;
  std::vector<float> y(x.size()), sc(1);
  std::vector<int8_t> c(x.size());
  int4_absmean(x.data(), 1, n, y.data(), c.data(), sc.data());
  ASSERT_EQ(sc[0], 1.0f);
  for (size_t j = 0; j < nt; ++j) {
    EXPECT_EQ(c[j], want[j]) << x[j];
    EXPECT_EQ(y[j], float(want[j]));
  }
  for (size_t j = nt; j + 1 < x.size(); ++j) EXPECT_EQ(c[j], 0);
}

// ---- FP4 E2M1 MinMax --------------------------------------------------------------------------

namespace {
constexpr double kGrid[8] = {0, 0.5, 1, 1.5, 2, 3, 4, 6};
// Nearest grid index of |t| by brute force; on an exact tie the even index.
int nearest_grid(double a) {
  int best = 0;
  for (int i = 1; i < 8; ++i) {
    const double d = std::fabs(a - kGrid[i]), db = std::fabs(a - kGrid[best]);
    if (d < db || (d == db && i % 2 == 0)) best = i;
  }
  return best;
}
}  // namespace

TEST(Fp4Minmax, CodesAreNearestGridPointsAndValuesMatch) {
  for (int8_t code = 0; code < 16; ++code) {
    const double v = kGrid[code & 7] * ((code & 8) ? -1 : 1);
    EXPECT_EQ(fp4_value(code), float(v));
    EXPECT_EQ(std::signbit(fp4_value(code)), (code & 8) != 0);
  }
  for (int64_t cols : kCols) {
    const int64_t rows = 6;
    auto x = gaussian_rows(rows, cols, 30 + cols);
    std::vector<float> y(x.size()), sc(static_cast<size_t>(rows));
    std::vector<int8_t> c(x.size());
    fp4_minmax(x.data(), rows, cols, y.data(), c.data(), sc.data());
    for (int64_t r = 0; r < rows; ++r) {
      const float* xr = &x[size_t(r * cols)];
      const double g = std::max(row_absmax(xr, cols), 1e-5);
      const float s = torch_rdiv(6.0f, float(g));
      EXPECT_NEAR(double(s), 6.0 / g, 6.0 / g * kTwoRoundings);
      EXPECT_EQ(sc[size_t(r)], 1.0f / s);
      bool saw_max = false;
      for (int64_t j = 0; j < cols; ++j) {
        const size_t i = size_t(r * cols + j);
        ASSERT_GE(c[i], 0);
        ASSERT_LE(c[i], 15);
        const float t = x[i] * s;
        ASSERT_EQ(c[i] & 7, nearest_grid(std::fabs(double(t)))) << t;
        ASSERT_EQ((c[i] & 8) != 0, std::signbit(t));
        ASSERT_EQ(std::bit_cast<uint32_t>(y[i]), std::bit_cast<uint32_t>(fp4_value(c[i]) / s));
        saw_max |= (c[i] & 7) == 7;
      }
      EXPECT_TRUE(saw_max) << "the absmax entry maps to +-6";
    }
  }
}

TEST(Fp4Minmax, MidpointsTieToEvenGridIndex) {
  // max|x| = 6 -> s = fl(fl(1/6) * 6) = 1: every grid midpoint, both signs.
  const std::vector<float> x = {6.0f,  0.25f,   0.75f,   1.25f,   1.75f,  2.5f,  3.5f,
                                5.0f,  -0.25f,  -0.75f,  -1.25f,  -1.75f, -2.5f, -3.5f,
                                -5.0f, 0.2499f, 0.2501f, 4.9999f, 5.0001f};
  const std::vector<float> want = {6,  0,  1,  1,  2,  2, 4,    4, -0.0f, -1,
                                   -1, -2, -2, -4, -4, 0, 0.5f, 4, 6};
  std::vector<float> y(x.size()), sc(1);
  std::vector<int8_t> c(x.size());
  fp4_minmax(x.data(), 1, int64_t(x.size()), y.data(), c.data(), sc.data());
  ASSERT_EQ(sc[0], 1.0f);
  for (size_t j = 0; j < x.size(); ++j) {
    EXPECT_EQ(y[j], want[j]) << "x = " << x[j];
    EXPECT_EQ(std::signbit(y[j]), std::signbit(want[j])) << "x = " << x[j];
  }
  EXPECT_EQ(c[8], 8) << "-0.25 -> negative zero code (sign bit, index 0)";
}

// ---- INT4 absmax, FP4 E1M2 MinMax (the [a4.8] Fig. 6 ablations) ------------------------------

TEST(Int4Absmax, HandComputedRow) {
  // max|x| = 7 -> s = fl(fl(1/7) * 7) = 1 (checked below): codes are rne(x) clamped to [-8, 7].
  const std::vector<float> x = {7.0f, 0.5f, 1.5f, 2.5f, -2.5f, -7.0f, 3.2f, -0.4f, 6.5f, 0.0f};
  const std::vector<int8_t> want = {7, 0, 2, 2, -2, -7, 3, 0, 6, 0};
  ASSERT_EQ(torch_rdiv(7.0f, 7.0f), 1.0f);
  std::vector<float> y(x.size()), sc(1);
  std::vector<int8_t> c(x.size());
  int4_absmax(x.data(), 1, int64_t(x.size()), y.data(), c.data(), sc.data());
  EXPECT_EQ(sc[0], 1.0f);
  for (size_t j = 0; j < x.size(); ++j) {
    EXPECT_EQ(c[j], want[j]) << "x = " << x[j];
    EXPECT_EQ(y[j], float(want[j])) << "x = " << x[j];
  }
  // max|x| = 2: s = fl(fl(1/2) * 7) = 3.5; 1 * 3.5 = 3.5 ties to 4, 0.5 * 3.5 = 1.75 -> 2.
  const std::vector<float> x2 = {-2.0f, 1.0f, 0.5f, -1.0f};
  int4_absmax(x2.data(), 1, 4, y.data(), c.data(), sc.data());
  EXPECT_EQ(sc[0], 1.0f / 3.5f);
  EXPECT_EQ(std::vector<int8_t>(c.begin(), c.begin() + 4), (std::vector<int8_t>{-7, 4, 2, -4}));
  EXPECT_EQ(y[1], 4.0f / 3.5f);
}

// |x s| <= 7 (1 + 2^-23): -8 is never reached.
TEST(Int4Absmax, CodesScalesAndDequantizedValues) { check_absmax_rows(int4_absmax, 7, -7, 90); }

TEST(Fp4E1M2, HandComputedRowAndMidpointTies) {
  for (int8_t code = 0; code < 16; ++code) {
    EXPECT_EQ(fp4_e1m2_value(code), 0.25f * float(code & 7) * ((code & 8) ? -1.0f : 1.0f));
    EXPECT_EQ(std::signbit(fp4_e1m2_value(code)), (code & 8) != 0);
  }
  expect_error([] { fp4_e1m2_value(16); }, "fp4_e1m2_value");
  // max|x| = 1.75 -> s = fl(fl(1/1.75) * 1.75) = 1 (checked): t = x. Every midpoint ties to the
  // even grid index (even mantissa): 0.125->0, 0.375->0.5, 0.625->0.5, 0.875->1, 1.125->1,
  // 1.375->1.5, 1.625->1.5; off-midpoint values go to the nearest.
  ASSERT_EQ(torch_rdiv(1.75f, 1.75f), 1.0f);
  const std::vector<float> x = {1.75f,  0.125f, 0.375f,  0.625f,  0.875f, 1.125f, 1.375f,
                                1.625f, -0.1f,  -0.375f, -1.625f, 0.3f,   1.2f,   -1.75f};
  const std::vector<float> want = {1.75f, 0.0f,  0.5f,  0.5f,  1.0f,  1.0f,  1.5f,
                                   1.5f,  -0.0f, -0.5f, -1.5f, 0.25f, 1.25f, -1.75f};
  const std::vector<int8_t> want_c = {7, 0, 2, 2, 4, 4, 6, 6, 8, 10, 14, 1, 5, 15};
  std::vector<float> y(x.size()), sc(1);
  std::vector<int8_t> c(x.size());
  fp4_e1m2_minmax(x.data(), 1, int64_t(x.size()), y.data(), c.data(), sc.data());
  EXPECT_EQ(sc[0], 1.0f);
  for (size_t j = 0; j < x.size(); ++j) {
    EXPECT_EQ(y[j], want[j]) << "x = " << x[j];
    EXPECT_EQ(std::signbit(y[j]), std::signbit(want[j])) << "x = " << x[j];
    EXPECT_EQ(c[j], want_c[j]) << "x = " << x[j];
  }
}

TEST(Fp4E1M2, CodesAreNearestGridPointsAndValuesMatch) {
  for (int64_t cols : kCols) {
    const int64_t rows = 6;
    auto x = gaussian_rows(rows, cols, 110 + cols);
    std::vector<float> y(x.size()), sc(static_cast<size_t>(rows));
    std::vector<int8_t> c(x.size());
    fp4_e1m2_minmax(x.data(), rows, cols, y.data(), c.data(), sc.data());
    for (int64_t r = 0; r < rows; ++r) {
      const float* xr = &x[size_t(r * cols)];
      const double g = std::max(row_absmax(xr, cols), 1e-5);
      const float s = torch_rdiv(1.75f, float(g));
      EXPECT_EQ(sc[size_t(r)], 1.0f / s);
      bool saw_max = false;
      for (int64_t j = 0; j < cols; ++j) {
        const size_t i = size_t(r * cols + j);
        ASSERT_GE(c[i], 0);
        ASSERT_LE(c[i], 15);
        const double a = std::fabs(double(x[i] * s));
        const int idx = c[i] & 7;
        // nearest grid point: |a - idx/4| <= 1/8, or saturated at 1.75
        ASSERT_TRUE(std::fabs(a - 0.25 * idx) <= 0.125 || (idx == 7 && a > 1.75)) << a;
        ASSERT_EQ((c[i] & 8) != 0, std::signbit(x[i] * s));
        ASSERT_EQ(std::bit_cast<uint32_t>(y[i]), std::bit_cast<uint32_t>(fp4_e1m2_value(c[i]) / s));
        saw_max |= idx == 7;
      }
      EXPECT_TRUE(saw_max) << "the absmax entry maps to +-1.75";
    }
  }
}

// The E1M2 grid {0, 0.25, ..., 1.75} is uniform, and s_int4 = fl(fl(1/g) 7) = 4 fl(fl(1/g) 1.75)
// exactly (a power-of-two factor), so x s_int4 = 4 t exactly, rne(4 t) is the even-mantissa
// nearest grid point, and c / s_int4 = (c/4) / s_e1m2 exactly: the two quantizers give the same
// y bit for bit (and E1M2 code -> +-index = the INT4 code), whenever 1/g is a normal float.
TEST(Fp4E1M2, EqualsInt4AbsmaxBitForBit) {
  auto check = [](const std::vector<float>& x, int64_t rows, int64_t cols, const char* what) {
    std::vector<float> ye(x.size()), yi(x.size()), se(static_cast<size_t>(rows)),
        si(static_cast<size_t>(rows));
    std::vector<int8_t> ce(x.size()), ci(x.size());
    fp4_e1m2_minmax(x.data(), rows, cols, ye.data(), ce.data(), se.data());
    int4_absmax(x.data(), rows, cols, yi.data(), ci.data(), si.data());
    EXPECT_TRUE(bit_equal(ye, yi)) << what;
    for (int64_t r = 0; r < rows; ++r) EXPECT_EQ(si[size_t(r)] * 4.0f, se[size_t(r)]) << what;
    for (size_t i = 0; i < x.size(); ++i)
      ASSERT_EQ((ce[i] & 8) ? -(ce[i] & 7) : (ce[i] & 7), int(ci[i])) << what << " i " << i;
    const ActSpec e{ActKind::Fp4E1M2, 0, 1}, n{ActKind::Int4Absmax, 0, 1};
    EXPECT_EQ(act_quantize_count_zeros(e, x.data(), rows, cols, nullptr, nullptr, nullptr),
              act_quantize_count_zeros(n, x.data(), rows, cols, nullptr, nullptr, nullptr))
        << what;
  };
  for (int64_t cols : kCols) {
    const int64_t rows = 40;
    check(gaussian_rows(rows, cols, 120 + cols), rows, cols, "gaussian");
  }
  // Every float of [1, 2) in steps of 2^-13 against a max of 1.75 .. 7: dense over the ties.
  for (float g : {1.75f, 2.0f, 3.0f, 7.0f, 1e-5f, 3e37f}) {
    std::vector<float> x = {g};
    for (int i = 0; i < (1 << 13); ++i) x.push_back(g * (float(i) / float(1 << 13)) * -1.0f);
    check(x, 1, int64_t(x.size()), "dense");
  }
}

// Where 1/g is subnormal (g > 2^126) the two multipliers round at the same absolute spacing
// 2^-149, so 4 fl(r 1.75) and fl(r 7) can differ: the equality above is for normal 1/g only.
TEST(Fp4E1M2, MayDifferFromInt4AbsmaxWhenTheReciprocalIsSubnormal) {
  int differ = 0;
  for (float g = 0x1.2p127f; g < 0x1.fp127f; g *= 1.0137f) {
    const std::vector<float> x = {g, 0.3f * g, -0.61f * g, 0.77f * g};
    std::vector<float> ye(4), yi(4);
    fp4_e1m2_minmax(x.data(), 1, 4, ye.data(), nullptr, nullptr);
    int4_absmax(x.data(), 1, 4, yi.data(), nullptr, nullptr);
    differ += !bit_equal(ye, yi);
  }
  std::printf("[ e1m2 ] rows differing from INT4 absmax with subnormal 1/g: %d\n", differ);
  EXPECT_GT(differ, 0);
}

// ---- ternary ----------------------------------------------------------------------------------

TEST(Ternary, CodesScaleAndValues) {
  for (int64_t n : {int64_t(1), int64_t(33), int64_t(5 * 33), int64_t(100003)}) {
    auto w = gaussian(n, 40 + uint64_t(n), 0.05f);
    std::vector<float> wq(static_cast<size_t>(n));
    std::vector<int8_t> c(static_cast<size_t>(n));
    const float a = ternary_absmean(w.data(), n, wq.data(), c.data());
    const long double mean = row_abssum(w.data(), n) / n;
    EXPECT_EQ(a, std::max(float(mean), kEps)) << n;
    const float s = 1.0f / a;
    for (int64_t i = 0; i < n; ++i) {
      ASSERT_GE(c[size_t(i)], -1);
      ASSERT_LE(c[size_t(i)], 1);
      ASSERT_EQ(wq[size_t(i)], float(c[size_t(i)]) / s);
      const double t = double(w[size_t(i)]) * s;
      if (std::fabs(t) < 1.5)
        ASSERT_LE(std::fabs(t - c[size_t(i)]), 0.5 + 1e-6);
      else
        ASSERT_EQ(c[size_t(i)], t < 0 ? -1 : 1);
    }
  }
}

TEST(Ternary, TiesRoundToEven) {
  // mean|W| = 1 -> s = 1: 0.5 -> 0 (std::round would give 1), 1.5 -> 2 -> clamped 1.
  const std::vector<float> w = {0.5f, -0.5f, 1.5f, -1.5f, 1.0f, -1.0f, 0.25f, 1.75f};
  std::vector<float> wq(w.size());
  std::vector<int8_t> c(w.size());
  EXPECT_EQ(ternary_absmean(w.data(), int64_t(w.size()), wq.data(), c.data()), 1.0f);
  const std::vector<int8_t> want = {0, 0, 1, -1, 1, -1, 0, 1};
  for (size_t i = 0; i < w.size(); ++i) {
    EXPECT_EQ(c[i], want[i]) << w[i];
    EXPECT_EQ(wq[i], float(want[i]));
  }
}

// ---- unsigned absmax (SPEC §4) ----------------------------------------------------------------

TEST(UintAbsmax, CodesScalesValuesAndTies) {
  for (int bits = 2; bits <= 8; ++bits) {
    const int64_t rows = 5, cols = 37;
    auto x = gaussian_rows(rows, cols, 50 + uint64_t(bits));
    std::vector<float> y(x.size()), sc(static_cast<size_t>(rows));
    std::vector<uint8_t> u(x.size());
    uint_absmax(x.data(), rows, cols, bits, y.data(), u.data(), sc.data());
    const int off = 1 << (bits - 1), m = off - 1;
    for (int64_t r = 0; r < rows; ++r) {
      const double g = std::max(row_absmax(&x[size_t(r * cols)], cols), 1e-5);
      const float s = torch_rdiv(float(m), float(g));
      EXPECT_NEAR(double(s), m / g, m / g * kTwoRoundings);
      EXPECT_EQ(sc[size_t(r)], 1.0f / s);
      for (int64_t j = 0; j < cols; ++j) {
        const size_t i = size_t(r * cols + j);
        ASSERT_LE(int(u[i]), (1 << bits) - 1);
        ASSERT_GE(int(u[i]), 1) << "symmetric: code 0 is never produced";
        ASSERT_EQ(y[i], float(int(u[i]) - off) / s);
        ASSERT_LE(std::fabs(double(x[i]) * s - (int(u[i]) - off)), 0.5 + 1e-6);
      }
    }
  }
  // 4 bits, max|x| = 7 -> s = 1: ties to even, offset 8.
  const std::vector<float> x = {7.0f, 2.5f, -2.5f, 3.5f, -0.5f, 0.5f, -7.0f};
  const std::vector<int> want = {15, 10, 6, 12, 8, 8, 1};
  std::vector<float> y(x.size()), sc(1);
  std::vector<uint8_t> u(x.size());
  uint_absmax(x.data(), 1, int64_t(x.size()), 4, y.data(), u.data(), sc.data());
  ASSERT_EQ(sc[0], 1.0f);
  for (size_t j = 0; j < x.size(); ++j) {
    EXPECT_EQ(int(u[j]), want[j]) << x[j];
    EXPECT_EQ(y[j], float(want[j] - 8));
  }
}

// ---- edge rows: all zero, single element ------------------------------------------------------

TEST(EdgeRows, AllZeroRowsUseTheEpsClampAndGiveZeros) {
  const int64_t rows = 3, cols = 9;
  std::vector<float> x(size_t(rows * cols), 0.0f), y(x.size(), 1.0f), sc(static_cast<size_t>(rows));
  std::vector<int8_t> c(x.size(), 5);
  auto all_zero = [&] {
    for (size_t i = 0; i < x.size(); ++i)
      if (y[i] != 0.0f || std::isnan(y[i]) || c[i] != 0) return false;
    return true;
  };
  int8_absmax(x.data(), rows, cols, y.data(), c.data(), sc.data());
  EXPECT_TRUE(all_zero());
  EXPECT_EQ(sc[0], 1.0f / torch_rdiv(127.0f, kEps));
  std::fill(c.begin(), c.end(), 5);
  int4_absmean(x.data(), rows, cols, y.data(), c.data(), sc.data());
  EXPECT_TRUE(all_zero());
  EXPECT_EQ(sc[1], 1.0f / (kSqrt7 / kEps));
  std::fill(c.begin(), c.end(), 5);
  fp4_minmax(x.data(), rows, cols, y.data(), c.data(), sc.data());
  EXPECT_TRUE(all_zero());
  EXPECT_EQ(sc[2], 1.0f / torch_rdiv(6.0f, kEps));
  std::fill(c.begin(), c.end(), 5);
  int4_absmax(x.data(), rows, cols, y.data(), c.data(), sc.data());
  EXPECT_TRUE(all_zero());
  EXPECT_EQ(sc[0], 1.0f / torch_rdiv(7.0f, kEps));
  std::fill(c.begin(), c.end(), 5);
  fp4_e1m2_minmax(x.data(), rows, cols, y.data(), c.data(), sc.data());
  EXPECT_TRUE(all_zero());
  EXPECT_EQ(sc[0], 1.0f / torch_rdiv(1.75f, kEps));
  std::fill(c.begin(), c.end(), 5);
  EXPECT_EQ(ternary_absmean(x.data(), rows * cols, y.data(), c.data()), kEps);
  EXPECT_TRUE(all_zero());
  std::vector<uint8_t> u(x.size());
  uint_absmax(x.data(), rows, cols, 4, y.data(), u.data(), sc.data());
  for (size_t i = 0; i < x.size(); ++i) EXPECT_TRUE(y[i] == 0.0f && u[i] == 8);
  for (float v : sc) EXPECT_TRUE(std::isfinite(v) && v > 0.0f);
  topk_rows(x.data(), rows, cols, 0.5f, y.data());
  EXPECT_TRUE(std::all_of(y.begin(), y.end(), [](float v) { return v == 0.0f; }));
}

TEST(EdgeRows, SingleElementRows) {
  const std::vector<float> x = {-3.7f, 0.02f, 1e-7f, 0.0f};
  const int64_t rows = 4;
  std::vector<float> y(4), sc(4);
  std::vector<int8_t> c(4);
  int8_absmax(x.data(), rows, 1, y.data(), c.data(), sc.data());
  EXPECT_EQ(c[0], -127);
  EXPECT_EQ(c[1], 127);
  EXPECT_EQ(c[2], 1) << "g clamped to 1e-5: 1e-7 * 127 / 1e-5 = 1.27 -> 1";
  EXPECT_EQ(c[3], 0);
  EXPECT_EQ(y[0], -127.0f / torch_rdiv(127.0f, 3.7f));
  int4_absmean(x.data(), rows, 1, y.data(), c.data(), sc.data());
  EXPECT_EQ(c[0], -3) << "x*s = -sqrt7 -> -3";
  EXPECT_EQ(c[1], 3);
  EXPECT_EQ(c[2], 0);
  EXPECT_EQ(y[0], -3.0f / (kSqrt7 / 3.7f));
  fp4_minmax(x.data(), rows, 1, y.data(), c.data(), sc.data());
  EXPECT_EQ(c[0], 8 | 7);
  EXPECT_EQ(c[1], 7);
  EXPECT_EQ(y[0], -6.0f / torch_rdiv(6.0f, 3.7f));
  topk_rows(x.data(), rows, 1, 0.5f, y.data());
  EXPECT_TRUE(bit_equal(x, y));
  EXPECT_EQ(ternary_absmean(x.data(), 1, y.data(), c.data()), 3.7f);
  EXPECT_EQ(c[0], -1);
}

// ---- top-K ------------------------------------------------------------------------------------

TEST(TopK, CountIsCeilOfRatioTimesCols) {
  struct R {
    int num, den;
  };
  for (R r : {R{1, 2}, R{1, 4}, R{3, 10}, R{1, 10}, R{3, 4}, R{7, 10}, R{1, 100}, R{1, 1}, R{9, 10},
              R{1, 3}, R{2, 3}}) {
    const float ratio = float(r.num) / float(r.den);
    for (int64_t d : {int64_t(1), int64_t(7), int64_t(8), int64_t(10), int64_t(100), int64_t(1537),
                      int64_t(1000000)}) {
      const int64_t want = (int64_t(r.num) * d + r.den - 1) / r.den;  // exact integer ceil
      EXPECT_EQ(topk_count(d, ratio), want) << r.num << "/" << r.den << " of " << d;
    }
  }
  EXPECT_EQ(topk_count(7, 0.5f), 4);
  EXPECT_EQ(topk_count(10, 0.3f), 3);
  EXPECT_EQ(topk_count(5, 1e-9f), 1) << "any positive ratio keeps at least one";
}

TEST(TopK, KeepsExactlyKLargestPerRow) {
  for (float ratio : {0.5f, 0.25f, 0.3f, 0.9f, 1.0f}) {
    for (int64_t d : {int64_t(1), int64_t(7), int64_t(8), int64_t(100), int64_t(1537)}) {
      const int64_t rows = 4, k = topk_count(d, ratio);
      auto x = gaussian_rows(rows, d, 60 + uint64_t(d));
      std::vector<float> y(x.size());
      topk_rows(x.data(), rows, d, ratio, y.data());
      for (int64_t r = 0; r < rows; ++r) {
        int64_t kept = 0;
        double min_kept = INFINITY, max_dropped = 0;
        for (int64_t j = 0; j < d; ++j) {
          const size_t i = size_t(r * d + j);
          if (y[i] != 0.0f) {
            ASSERT_EQ(y[i], x[i]);
            ++kept;
            min_kept = std::min(min_kept, std::fabs(double(x[i])));
          } else {
            max_dropped = std::max(max_dropped, std::fabs(double(x[i])));
          }
        }
        EXPECT_EQ(kept, k) << "ratio " << ratio << " d " << d;
        EXPECT_GE(min_kept, max_dropped);
      }
      // in place (x and y alias) gives the same result
      std::vector<float> z = x;
      topk_rows(z.data(), rows, d, ratio, z.data());
      EXPECT_TRUE(bit_equal(z, y));
    }
  }
}

TEST(TopK, TiesAtTheThresholdKeepTheLowerIndex) {
  // every |x| equal, alternating signs: the first ceil(0.5*7) = 4 by index survive
  std::vector<float> x = {1.5f, -1.5f, 1.5f, -1.5f, 1.5f, -1.5f, 1.5f}, y(7);
  topk_rows(x.data(), 1, 7, 0.5f, y.data());
  EXPECT_EQ(y, (std::vector<float>{1.5f, -1.5f, 1.5f, -1.5f, 0, 0, 0}));
  // distinct large values, then a tie at the threshold: 5 and 3 kept, then the first |1|
  x = {1.0f, 5.0f, -1.0f, 3.0f, 1.0f, -1.0f};
  y.resize(6);
  topk_rows(x.data(), 1, 6, 0.5f, y.data());
  EXPECT_EQ(y, (std::vector<float>{1.0f, 5.0f, 0, 3.0f, 0, 0}));
  // -0.0 and +0.0 tie as magnitude 0
  x = {0.0f, 2.0f, -0.0f, 0.0f};
  y.resize(4);
  topk_rows(x.data(), 1, 4, 0.5f, y.data());
  EXPECT_EQ(y[1], 2.0f);
  EXPECT_FALSE(std::signbit(y[0]));
}

// ---- act_quantize -----------------------------------------------------------------------------

TEST(ActQuantize, TopKThenInt8EqualsTheTwoKernels) {
  for (int64_t cols : {int64_t(7), int64_t(64), int64_t(1537)}) {
    const int64_t rows = 11;
    auto x = gaussian_rows(rows, cols, 70 + uint64_t(cols));
    std::vector<float> y1(x.size()), s1(static_cast<size_t>(rows)), t(x.size()), y2(x.size()),
        s2(static_cast<size_t>(rows));
    std::vector<int8_t> c1(x.size()), c2(x.size());
    act_quantize({ActKind::Int8, 0.5f, 1.0f}, x.data(), rows, cols, y1.data(), c1.data(),
                 s1.data());
    topk_rows(x.data(), rows, cols, 0.5f, t.data());
    int8_absmax(t.data(), rows, cols, y2.data(), c2.data(), s2.data());
    EXPECT_TRUE(bit_equal(y1, y2));
    EXPECT_TRUE(bit_equal(s1, s2));
    EXPECT_EQ(c1, c2);
    // the other kinds agree with their kernels too
    act_quantize({ActKind::Fp4, 0.5f, 1.0f}, x.data(), rows, cols, y1.data(), c1.data(), s1.data());
    fp4_minmax(t.data(), rows, cols, y2.data(), c2.data(), s2.data());
    EXPECT_TRUE(bit_equal(y1, y2));
    EXPECT_EQ(c1, c2);
    act_quantize({ActKind::Int4, 0.0f, 2.0f}, x.data(), rows, cols, y1.data(), c1.data(),
                 s1.data());
    int4_absmean(x.data(), rows, cols, y2.data(), c2.data(), s2.data(), 2.0f);
    EXPECT_TRUE(bit_equal(y1, y2));
    EXPECT_TRUE(bit_equal(s1, s2));
    act_quantize({ActKind::Int4Absmax, 0.5f, 1.0f}, x.data(), rows, cols, y1.data(), c1.data(),
                 s1.data());
    int4_absmax(t.data(), rows, cols, y2.data(), c2.data(), s2.data());
    EXPECT_TRUE(bit_equal(y1, y2));
    EXPECT_TRUE(bit_equal(s1, s2));
    EXPECT_EQ(c1, c2);
    act_quantize({ActKind::Fp4E1M2, 0.5f, 1.0f}, x.data(), rows, cols, y1.data(), c1.data(),
                 s1.data());
    fp4_e1m2_minmax(t.data(), rows, cols, y2.data(), c2.data(), s2.data());
    EXPECT_TRUE(bit_equal(y1, y2));
    EXPECT_TRUE(bit_equal(s1, s2));
    EXPECT_EQ(c1, c2);
    act_quantize({ActKind::None, 0.5f, 1.0f}, x.data(), rows, cols, y1.data(), nullptr, nullptr);
    EXPECT_TRUE(bit_equal(y1, t));
    act_quantize({}, x.data(), rows, cols, y1.data(), nullptr, nullptr);
    EXPECT_TRUE(bit_equal(y1, x));
  }
}

TEST(ActQuantize, CountsZerosInTheSamePass) {
  const int64_t rows = 9, cols = 300;
  auto x = gaussian_rows(rows, cols, 80);
  for (ActSpec spec : {ActSpec{ActKind::Int8, 0, 1}, ActSpec{ActKind::Int4, 0, 1},
                       ActSpec{ActKind::Fp4, 0.5f, 1}, ActSpec{ActKind::None, 0.5f, 1},
                       ActSpec{ActKind::Int8, 0.5f, 1}, ActSpec{ActKind::Int4Absmax, 0, 1},
                       ActSpec{ActKind::Fp4E1M2, 0, 1}, ActSpec{ActKind::Fp4E1M2, 0.5f, 1}}) {
    std::vector<float> y(x.size());
    const int64_t z =
        act_quantize_count_zeros(spec, x.data(), rows, cols, y.data(), nullptr, nullptr);
    const int64_t want = std::count(y.begin(), y.end(), 0.0f);
    EXPECT_EQ(z, want) << to_string(spec);
    EXPECT_GT(z, 0);
    EXPECT_EQ(act_quantize_count_zeros(spec, x.data(), rows, cols, nullptr, nullptr, nullptr), z);
  }
}

TEST(ActQuantize, ToString) {
  EXPECT_EQ(to_string(ActSpec{}), "none");
  EXPECT_EQ(to_string(ActSpec{ActKind::Int8, 0, 1}), "int8");
  EXPECT_EQ(to_string(ActSpec{ActKind::Int4, 0, 1}), "int4");
  EXPECT_EQ(to_string(ActSpec{ActKind::Int4, 0, 2}), "int4x2");
  EXPECT_EQ(to_string(ActSpec{ActKind::Fp4, 0, 1}), "fp4");
  EXPECT_EQ(to_string(ActSpec{ActKind::Int8, 0.5f, 1}), "topk0.5+int8");
  EXPECT_EQ(to_string(ActSpec{ActKind::Fp4, 0.5f, 1}), "topk0.5+fp4");
  EXPECT_EQ(to_string(ActSpec{ActKind::None, 0.25f, 1}), "topk0.25");
  EXPECT_EQ(to_string(ActSpec{ActKind::Int4Absmax, 0, 1}), "int4-absmax");
  EXPECT_EQ(to_string(ActSpec{ActKind::Fp4E1M2, 0, 1}), "fp4-e1m2");
  EXPECT_EQ(to_string(ActSpec{ActKind::Fp4E1M2, 0.5f, 1}), "topk0.5+fp4-e1m2");
}

// ---- sparsity sanity figures (SPEC §2) --------------------------------------------------------

TEST(Sparsity, GaussianZeroFractions) {
  const int64_t rows = 512, cols = 2048;
  auto x = gaussian(rows * cols, 2024);
  std::vector<float> y(x.size());
  // Expected, from the actual per-row statistics: an entry rounds to zero iff |x| < 1/(2s), so
  // E[zero fraction | row] = erf(1/(2 s sqrt 2)) for a standard normal entry.
  double e8 = 0, e4 = 0;
  for (int64_t r = 0; r < rows; ++r) {
    const float* xr = &x[size_t(r * cols)];
    const double g = row_absmax(xr, cols), b = double(row_abssum(xr, cols) / cols);
    e8 += std::erf(g / 254.0 / std::sqrt(2.0)) / double(rows);
    e4 += std::erf(b / (2 * std::sqrt(7.0)) / std::sqrt(2.0)) / double(rows);
  }
  const int64_t z8 = act_quantize_count_zeros({ActKind::Int8, 0, 1}, x.data(), rows, cols, y.data(),
                                              nullptr, nullptr);
  const int64_t z4 = act_quantize_count_zeros({ActKind::Int4, 0, 1}, x.data(), rows, cols, y.data(),
                                              nullptr, nullptr);
  const double f8 = double(z8) / double(rows * cols), f4 = double(z4) / double(rows * cols);
  std::printf(
      "[ sparsity ] INT8 absmax zeros %.4f%% (expected %.4f%%), INT4 absmean zeros %.4f%% "
      "(expected %.4f%%)\n",
      100 * f8, 100 * e8, 100 * f4, 100 * e4);
  EXPECT_NEAR(f4, 0.120, 0.005);
  EXPECT_NEAR(f8, 0.012, 0.003);
  EXPECT_NEAR(f4, e4, 0.002);
  EXPECT_NEAR(f8, e8, 0.001);
  // INT4 absmax / FP4 E1M2: zero iff |x| <= g/14, a much coarser step than absmean's b/sqrt7
  // (g ~ 3.9 for 2048 normal entries: ~22% zeros).
  double ea = 0;
  for (int64_t r = 0; r < rows; ++r)
    ea += std::erf(row_absmax(&x[size_t(r * cols)], cols) / 14.0 / std::sqrt(2.0)) / double(rows);
  for (ActKind k : {ActKind::Int4Absmax, ActKind::Fp4E1M2}) {
    const int64_t z =
        act_quantize_count_zeros({k, 0, 1}, x.data(), rows, cols, y.data(), nullptr, nullptr);
    const double f = double(z) / double(rows * cols);
    std::printf("[ sparsity ] %s zeros %.4f%% (expected %.4f%%)\n", to_string({k, 0, 1}).c_str(),
                100 * f, 100 * ea);
    EXPECT_NEAR(f, ea, 0.002);
    EXPECT_GT(f, 0.15);
    EXPECT_LT(f, 0.30);
  }
}

TEST(TopK, TiesAtTheThresholdKeepTheLowestIndices) {
  // |x| = 3 five times, k = 3 of 7: the first three of the tied entries survive, in place too.
  const std::vector<float> x{1.0f, 3.0f, -3.0f, 0.5f, 3.0f, -3.0f, 3.0f};
  const std::vector<float> want{0.0f, 3.0f, -3.0f, 0.0f, 3.0f, 0.0f, 0.0f};
  ASSERT_EQ(topk_count(7, 0.4f), 3);
  std::vector<float> y(7);
  topk_rows(x.data(), 1, 7, 0.4f, y.data());
  EXPECT_EQ(y, want);
  std::vector<float> z = x;
  topk_rows(z.data(), 1, 7, 0.4f, z.data());
  EXPECT_EQ(z, want);
}

// The CPU table's dequantize into bf16 is the f32 dequantized value rounded to nearest even.
TEST(Dequantize, Bf16OutputIsTheRoundedF32Value) {
  const int64_t rows = 3, cols = 37, ld = 40;
  std::vector<float> xv(size_t(rows * cols));
  for (size_t i = 0; i < xv.size(); ++i) xv[i] = std::sin(0.37f * float(i)) * (1.0f + float(i % 5));
  const autograd::Tensor x = autograd::Tensor::from(autograd::Shape{rows, cols}, xv);
  const quant::Kernels& k = quant::cpu_kernels();
  autograd::Tensor codes = autograd::Tensor::empty(autograd::Shape{rows, ld}, autograd::DType::I8);
  autograd::Tensor mult = autograd::Tensor::empty(autograd::Shape{rows});
  k.act_codes(quant::ActSpec{quant::ActKind::Int4, 0.0f, 1.0f}, x, codes, mult, autograd::Tensor(),
              false);
  autograd::Tensor f = autograd::Tensor::empty(x.shape());
  autograd::Tensor b = autograd::Tensor::empty(x.shape(), autograd::DType::BF16);
  k.dequantize(codes, mult, f);
  k.dequantize(codes, mult, b);
  int nonzero = 0;
  for (int64_t i = 0; i < x.numel(); ++i) {
    EXPECT_EQ(b.data<autograd::bf16>()[i].bits, autograd::to_bf16(f[i]).bits) << "element " << i;
    nonzero += f[i] != 0.0f;
  }
  EXPECT_GT(nonzero, 0);
}
