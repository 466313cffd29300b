// Test helper: a low-entropy synthetic token stream that a tiny model learns within seconds.
#pragma once
#include <cstdint>
#include <vector>

#include "autograd/random.h"

namespace testdata {

// A noisy permutation walk: next = (37 * cur + 11) mod vocab with probability 0.9, else random.
inline std::vector<uint32_t> synthetic(int64_t n, uint32_t vocab, uint64_t seed) {
  autograd::Rng r(seed);
  std::vector<uint32_t> t(static_cast<size_t>(n));
  uint32_t cur = 1;
  for (auto& v : t) {
    cur = r.uniform() < 0.9 ? (cur * 37 + 11) % vocab : uint32_t(r.below(vocab));
    v = cur;
  }
  return t;
}

}  // namespace testdata
