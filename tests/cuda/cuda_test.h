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
