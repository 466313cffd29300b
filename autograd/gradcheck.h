// Gradient-check harness: central differences vs. the tape's backward, one harness for every op.
//
// The scalar loss is L = sum_i w_i * f(inputs)_i with fixed random weights w, accumulated in
// double. For each input that requires a gradient, up to `max_elems` elements are perturbed by
// +-eps (the actual fp32 step is used as the denominator) and the numeric derivative is compared
// with the analytic one element-wise (|a - n| <= atol + rtol |n|) and as a whole (cosine >=
// min_cos over the checked elements).
#pragma once
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "autograd/tape.h"

namespace autograd {

struct GradCheckOptions {
  double eps = 1e-2;
  double atol = 2e-3;
  double rtol = 2e-2;
  double min_cos = 0.9999;
  int64_t max_elems = 96;  // per input; elements are sampled deterministically beyond this
  uint64_t seed = 1234;
};

struct GradCheckResult {
  bool ok = true;
  std::string report;  // one line per input, plus the worst element on failure
  double min_cos = 1.0;
  double max_abs_err = 0.0;
};

using GradFn = std::function<Variable(const std::vector<Variable>&)>;

GradCheckResult gradcheck(const std::string& op, const GradFn& f,
                          const std::vector<Variable>& inputs, const GradCheckOptions& opt = {});

// Random tensor with entries ~ N(0, stddev^2) from a seed.
Tensor randn(const Shape& s, uint64_t seed, float stddev = 1.0f);

}  // namespace autograd
