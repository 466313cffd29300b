// Test helper: max |a - ref| / max |ref| over a tensor (the suite's relative tolerance measure).
#pragma once
#include <algorithm>
#include <cmath>

#include "autograd/tensor.h"

inline double rel_diff(const autograd::Tensor& a, const autograd::Tensor& ref) {
  double md = 0, mr = 0;
  for (int64_t i = 0; i < ref.numel(); ++i) {
    md = std::max(md, double(std::abs(a[i] - ref[i])));
    mr = std::max(mr, double(std::abs(ref[i])));
  }
  return md / std::max(mr, 1e-30);
}
