// Shared plumbing of the `cuda`-labelled tests: the device check that skips with one clear line,
// and deterministic test values.
#pragma once
#include <gtest/gtest.h>

#include <cstdint>
#include <iostream>
#include <vector>

#include "autograd/cuda/cuda.h"
#include "autograd/error.h"
#include "autograd/tensor.h"

namespace cudatest {

// True when a CUDA device is usable (autograd::cuda::init() succeeded); prints why not, once.
inline bool have_cuda() {
  static const bool ok = [] {
    try {
      autograd::cuda::init();
      return true;
    } catch (const autograd::Error& e) {
      std::cout << "(" << e.what() << ")\n";
      return false;
    }
  }();
  return ok;
}

// Deterministic values in [lo, hi) (an LCG seeded by `seed`), as a CPU f32 tensor.
inline autograd::Tensor rnd(const autograd::Shape& s, uint32_t seed, float lo = -1.0f,
                            float hi = 1.0f) {
  std::vector<float> v(size_t(s.numel()));
  uint32_t x = seed * 2654435761u + 12345u;
  for (auto& e : v) {
    x = x * 1664525u + 1013904223u;
    e = lo + (hi - lo) * float(x >> 8) / float(1 << 24);
  }
  return autograd::Tensor::from(s, v);
}

// t (f32 or bf16, any device) as a CPU f32 tensor; bf16 widens exactly.
inline autograd::Tensor widen(const autograd::Tensor& t) {
  const autograd::Tensor h = t.to(autograd::Device::cpu());
  if (h.dtype() == autograd::DType::F32) return h;
  h.check_dtype(autograd::DType::BF16, "widen");
  autograd::Tensor y = autograd::Tensor::empty(h.shape());
  for (int64_t i = 0; i < h.numel(); ++i) y[i] = autograd::to_float(h.data<autograd::bf16>()[i]);
  return y;
}
// t (CPU f32) rounded to bf16 (round to nearest even) and widened back: what a bf16 activation
// holds.
inline autograd::Tensor bf16_round(const autograd::Tensor& t) {
  autograd::Tensor y = autograd::Tensor::empty(t.shape());
  for (int64_t i = 0; i < t.numel(); ++i) y[i] = autograd::to_float(autograd::to_bf16(t[i]));
  return y;
}
// t rounded to bf16, as a bf16 tensor on dev.
inline autograd::Tensor to_bf16_tensor(const autograd::Tensor& t, autograd::Device dev) {
  std::vector<autograd::bf16> v(size_t(t.numel()));
  for (int64_t i = 0; i < t.numel(); ++i) v[size_t(i)] = autograd::to_bf16(t[i]);
  return autograd::Tensor::from_host(t.shape(), v.data(), dev);
}

}  // namespace cudatest

// First statement of every cuda test: without a device it prints "skipped: no CUDA device" and
// skips (ctest reports it as skipped).
#define REQUIRE_CUDA()                           \
  do {                                           \
    if (!::cudatest::have_cuda()) {              \
      std::cout << "skipped: no CUDA device\n";  \
      GTEST_SKIP() << "skipped: no CUDA device"; \
    }                                            \
  } while (0)
