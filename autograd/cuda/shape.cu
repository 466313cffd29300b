// CUDA kernels of the copying shape ops: transpose (dim swap), band copies (slice, concat) and
// the embedding gather/scatter. Exact (copies and in-order sums), as autograd/cpu/.
#include <type_traits>

#include "autograd/cuda/common.cuh"

namespace autograd::cuda {

// x shaped s viewed [pre, A, mid, B, post] -> y[pre, B, mid, A, post] (y += when accumulate).
// One thread per vector V of W elements of x (W = 4 when post allows 16-byte f32 / 8-byte bf16
// moves, else 1), index math in 32 bits when x fits; the map is a bijection, so no two threads
// write one y element. bf16 (a copy) moves the 2-byte patterns as they are.
namespace {
template <class I, class V, int W>
void transpose_as(const On& on, const void* x, void* y, I n, I A, I mid, I B, I post,
                  bool accumulate) {
  const I pv = post / W;
  const V* xv = static_cast<const V*>(x);
  V* yv = static_cast<V*>(y);
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
        const bool add = accumulate;  // (captured outside the constexpr branches)
        V& dst = yv[o];
        if constexpr (std::is_same_v<V, float4>) {
          if (add) {
            V t = dst;
            t.x += v.x, t.y += v.y, t.z += v.z, t.w += v.w;
            dst = t;
          } else {
            dst = v;
          }
        } else if constexpr (std::is_same_v<V, float>) {
          dst = add ? dst + v : v;
        } else {
          dst = v;  // bf16 patterns (accumulate refused by the caller)
          (void)add;
        }
      },
      "transpose");
}
template <class I, class V4, class V1>
void transpose_with(const On& on, const void* x, void* y, bool vec, I n, I A, I mid, I B, I post,
                    bool accumulate) {
  if (vec)
    transpose_as<I, V4, 4>(on, x, y, n, A, mid, B, post, accumulate);
  else
    transpose_as<I, V1, 1>(on, x, y, n, A, mid, B, post, accumulate);
}
template <class V4, class V1>
void transpose_typed(const On& on, const Tensor& xt, const Tensor& yt, const Shape& s, int d0,
                     int d1, bool accumulate) {
  const void* x = xt.raw();
  void* y = yt.raw();
  const int64_t A = s[d0], mid = s.prod(d0 + 1, d1), B = s[d1], post = s.prod(d1 + 1, s.rank());
  const int64_t n = xt.numel();
  const bool vec = post % 4 == 0 && reinterpret_cast<uintptr_t>(x) % sizeof(V4) == 0 &&
                   reinterpret_cast<uintptr_t>(y) % sizeof(V4) == 0;
  if (n < (int64_t(1) << 31)) {
    const auto i = [](int64_t v) { return uint32_t(v); };
    transpose_with<uint32_t, V4, V1>(on, x, y, vec, i(n), i(A), i(mid), i(B), i(post), accumulate);
  } else {
    transpose_with<int64_t, V4, V1>(on, x, y, vec, n, A, mid, B, post, accumulate);
  }
}
}  // namespace

void transpose(const Tensor& xt, const Tensor& yt, const Shape& s, int d0, int d1,
               bool accumulate) {
  On on(yt);
  const bool x16 = is_bf16(xt, "transpose", "x");
  BN_CHECK(x16 == is_bf16(yt, "transpose", "y") && !(x16 && accumulate), "transpose", "x ",
           xt.describe(), " into y ", yt.describe(), accumulate ? " (accumulating)" : "",
           ": both f32, or both bf16 without accumulation");
  if (x16)
    transpose_typed<uint2, uint16_t>(on, xt, yt, s, d0, d1, false);
  else
    transpose_typed<float4, float>(on, xt, yt, s, d0, d1, accumulate);
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
