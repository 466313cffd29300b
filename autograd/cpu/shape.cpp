// CPU kernels of the copying shape ops: transpose (dim swap) and band copies (slice, concat).
#include <cstring>

#include "autograd/cpu/cpu.h"
#include "autograd/kernels.h"

namespace autograd::cpu {

void transpose(const Tensor& xt, const Tensor& yt, const Shape& s, int d0, int d1,
               bool accumulate) {
  const float* x = xt.data();
  float* y = yt.data();
  const int64_t pre = s.prod(0, d0), A = s[d0], mid = s.prod(d0 + 1, d1), B = s[d1],
                post = s.prod(d1 + 1, s.rank());
  kernels::parallel_for(pre * A, [&](int64_t pa) {
    const int64_t p = pa / A, a = pa % A;
    for (int64_t m = 0; m < mid; ++m)
      for (int64_t b = 0; b < B; ++b) {
        const float* src = x + (((p * A + a) * mid + m) * B + b) * post;
        float* dst = y + (((p * B + b) * mid + m) * A + a) * post;
        if (accumulate)
          for (int64_t q = 0; q < post; ++q) dst[q] += src[q];
        else
          std::memcpy(dst, src, size_t(post) * sizeof(float));
      }
  });
}

void band_copy(const Tensor& bigt, const Tensor& smallt, int dim, int64_t at, bool to_small,
               bool accumulate) {
  const Shape& bs = bigt.shape();
  const int64_t n = bs[dim], m = smallt.shape()[dim], pre = bs.prod(0, dim),
                post = bs.prod(dim + 1, bs.rank());
  float* big = bigt.data();
  float* small = smallt.data();
  kernels::parallel_for(pre, [&](int64_t p) {
    float* b = big + (p * n + at) * post;
    float* s = small + p * m * post;
    float* dst = to_small ? s : b;
    const float* src = to_small ? b : s;
    const int64_t len = m * post;
    if (accumulate)
      for (int64_t q = 0; q < len; ++q) dst[q] += src[q];
    else
      std::memcpy(dst, src, size_t(len) * sizeof(float));
  });
}

}  // namespace autograd::cpu
