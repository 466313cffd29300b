// CUDA kernels of the copying shape ops: transpose (dim swap), band copies (slice, concat) and
// the embedding gather/scatter. Exact (copies and in-order sums), as autograd/cpu/.
#include <type_traits>

#include "autograd/cuda/common.cuh"

namespace autograd::cuda {

// x shaped s viewed [pre, A, mid, B, post] -> y[pre, B, mid, A, post] (y += when accumulate).
// One thread per vector of W floats of x (W = 4 when post allows float4 moves, else 1), index math
// in 32 bits when x fits; the map is a bijection, so no two threads write one y element.
namespace {
template <class I, int W>
void transpose_as(const On& on, const float* x, float* y, I n, I A, I mid, I B, I post,
                  bool accumulate) {
  using V = std::conditional_t<W == 4, float4, float>;
  const I pv = post / W;
  const V* xv = reinterpret_cast<const V*>(x);
  V* yv = reinterpret_cast<V*>(y);
  for_each(
      on, int64_t(n / W),
      [=] __device__(int64_t ii) {
        I r = I(ii);
        const I q = r % pv;
        r /= pv;
        const I b = r % B;
        r /= B;
        const I m = r % mid;
        r /= mid;
        const I a = r % A;
        const I p = r / A;
        const I o = (((p * B + b) * mid + m) * A + a) * pv + q;
        const V v = xv[ii];
        const bool add = accumulate;
        V& dst = yv[o];
        if constexpr (W == 4) {
          if (add) {
            V t = dst;
            t.x += v.x, t.y += v.y, t.z += v.z, t.w += v.w;
            dst = t;
          } else {
            dst = v;
          }
        } else {
          dst = add ? dst + v : v;
        }
      },
      "transpose");
}
}  // namespace

void transpose(const Tensor& xt, const Tensor& yt, const Shape& s, int d0, int d1,
               bool accumulate) {
  On on(yt);
  const float* x = xt.data();
  float* y = yt.data();
  const int64_t A = s[d0], mid = s.prod(d0 + 1, d1), B = s[d1], post = s.prod(d1 + 1, s.rank());
  const int64_t n = xt.numel();
  const bool vec = post % 4 == 0 && reinterpret_cast<uintptr_t>(x) % 16 == 0 &&
                   reinterpret_cast<uintptr_t>(y) % 16 == 0;
  if (n < (int64_t(1) << 31)) {
    const auto i = [](int64_t v) { return uint32_t(v); };
    if (vec)
      transpose_as<uint32_t, 4>(on, x, y, i(n), i(A), i(mid), i(B), i(post), accumulate);
    else
      transpose_as<uint32_t, 1>(on, x, y, i(n), i(A), i(mid), i(B), i(post), accumulate);
  } else if (vec) {
    transpose_as<int64_t, 4>(on, x, y, n, A, mid, B, post, accumulate);
  } else {
    transpose_as<int64_t, 1>(on, x, y, n, A, mid, B, post, accumulate);
  }
}

// big[pre, n, post], small[pre, m, post] = the band [at, at + m) of dim `dim` of big:
// to_small: small (+)= band, else band (+)= small. One thread per element of small.
void band_copy(const Tensor& bigt, const Tensor& smallt, int dim, int64_t at, bool to_small,
               bool accumulate) {
  On on(smallt);
  const Shape& bs = bigt.shape();
  const int64_t n = bs[dim], m = smallt.shape()[dim], post = bs.prod(dim + 1, bs.rank());
  float* big = bigt.data();
  float* small = smallt.data();
  const int64_t len = m * post;
  for_each(
      on, smallt.numel(),
      [=] __device__(int64_t i) {
        const int64_t p = i / len, r = i % len;
        float* b = big + (p * n + at) * post + r;
        float* sp = small + i;
        float* dst = to_small ? sp : b;
        const float src = to_small ? *b : *sp;
        if (accumulate)
          *dst += src;
        else
          *dst = src;
      },
      "band_copy");
}

// w[V, D], ids i32[N] -> y[N, D], y[i, j] = w[ids[i], j].
void embedding(const Tensor& weight, const Tensor& idt, const Tensor& y) {
  On on(y);
  const int64_t D = weight.shape()[1];
  const int32_t* ids = idt.data<int32_t>();
  const float* w = weight.data();
  float* yv = y.data();
  for_each(
      on, y.numel(), [=] __device__(int64_t i) { yv[i] = w[int64_t(ids[i / D]) * D + i % D]; },
      "embedding");
}

// dw[ids[i], j] += dy[i, j]: one thread per column j, rows i in order (no atomics; the same
// order as the CPU, so bit-identical).
void embedding_backward(const Tensor& idt, const Tensor& dyt, const Tensor& dwt) {
  On on(dwt);
  const int64_t D = dwt.shape()[1], N = idt.numel();
  const int32_t* ids = idt.data<int32_t>();
  const float* dy = dyt.data();
  float* dw = dwt.data();
  for_each(
      on, D,
      [=] __device__(int64_t j) {
        for (int64_t i = 0; i < N; ++i) dw[int64_t(ids[i]) * D + j] += dy[i * D + j];
      },
      "embedding_backward");
}

}  // namespace autograd::cuda
