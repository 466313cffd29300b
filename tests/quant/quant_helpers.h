// Shared helpers of the quantizer and STE tests: Gaussian rows, bit equality, row norms, error
// checks.
#pragma once

#include <gtest/gtest.h>
#include <omp.h>

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "autograd/error.h"
#include "autograd/ops.h"
#include "autograd/random.h"
#include "autograd/safetensors.h"
#include "quant/quantizers.h"
#include "quant/ste.h"

using namespace quant;
using autograd::Rng;
using autograd::Shape;
using autograd::Tensor;
using autograd::Variable;

namespace {

// Gaussian rows, row r scaled by scales[r % size] (exercises very different magnitudes).
inline std::vector<float> gaussian(int64_t n, uint64_t seed, float sigma = 1.0f) {
  Rng rng(seed);
  std::vector<float> v(static_cast<size_t>(n));
  for (auto& e : v) e = float(rng.normal()) * sigma;
  return v;
}
inline std::vector<float> gaussian_rows(int64_t rows, int64_t cols, uint64_t seed) {
  static const float kRowScale[] = {1.0f, 1e-3f, 50.0f, 0.02f, 7.0f};
  std::vector<float> v = gaussian(rows * cols, seed);
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t j = 0; j < cols; ++j) v[size_t(r * cols + j)] *= kRowScale[r % 5];
  return v;
}
inline bool bit_equal(const float* a, const float* b, int64_t n) {
  return std::memcmp(a, b, size_t(n) * sizeof(float)) == 0;
}
inline bool bit_equal(const std::vector<float>& a, const std::vector<float>& b) {
  return a.size() == b.size() && bit_equal(a.data(), b.data(), int64_t(a.size()));
}
inline double row_absmax(const float* x, int64_t n) {
  double g = 0;
  for (int64_t j = 0; j < n; ++j) g = std::max(g, std::fabs(double(x[j])));
  return g;
}
inline long double row_abssum(const float* x, int64_t n) {
  long double s = 0;
  for (int64_t j = 0; j < n; ++j) s += std::fabs((long double)x[j]);
  return s;
}
// PyTorch's `C / tensor` = tensor.reciprocal() * C (two float roundings): the reference's scale.
inline float torch_rdiv(float C, float g) {
  volatile float inv = 1.0f / g;
  return inv * C;
}
// Relative distance of the float multiplier from its exact (double) definition: two roundings.
constexpr double kTwoRoundings = 2.5e-7;

// Expects `fn` to throw autograd::Error whose message names `op`.
template <class F>
void expect_error(F&& fn, const std::string& op) {
  try {
    fn();
    ADD_FAILURE() << "expected autograd::Error from " << op;
  } catch (const autograd::Error& e) {
    EXPECT_NE(std::string(e.what()).find(op), std::string::npos) << e.what();
  }
}

const std::vector<int64_t> kCols = {1, 2, 7, 8, 37, 100, 1537};

}  // namespace
