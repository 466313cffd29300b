// CUDA kernels of the neural-network ops: RMSNorm, softmax, RoPE, cross-entropy (forward and
// backward). Row kernels use one block of kThreads per row; sums run in double through a fixed
// tree (block_sum), column sums one thread per column over rows in order: deterministic.
#include <cmath>

#include "autograd/cuda/common.cuh"

namespace autograd::cuda {

namespace {
template <class T>
__global__ void rmsnorm_kernel(const T* x, const float* g, float eps, int64_t D, float* y,
                               float* rinv) {
  __shared__ double sh[kThreads];
  const int64_t row = blockIdx.x;
  const T* xr = x + row * D;
  double p = 0;
  for (int64_t j = threadIdx.x; j < D; j += kThreads) {
    const float v = ld(xr, j);
    p += double(v) * v;
  }
  const double ss = block_sum(p, sh);
  const float r = float(1.0 / sqrt(ss / double(D) + double(eps)));
  if (threadIdx.x == 0) rinv[row] = r;
  for (int64_t j = threadIdx.x; j < D; j += kThreads) y[row * D + j] = g[j] * (ld(xr, j) * r);
}

template <class T>
__global__ void rmsnorm_dx_kernel(const T* x, const float* g, const float* rinv, const float* dy,
                                  int64_t D, float* dx) {
  __shared__ double sh[kThreads];
  const int64_t row = blockIdx.x;
  const T* xr = x + row * D;
  const float* dyr = dy + row * D;
  const float r = rinv[row];
  double p = 0;
  for (int64_t j = threadIdx.x; j < D; j += kThreads) p += double(g[j] * dyr[j]) * ld(xr, j);
  const float m = float(block_sum(p, sh) * double(r) / double(D));
  for (int64_t j = threadIdx.x; j < D; j += kThreads)
    dx[row * D + j] += r * (g[j] * dyr[j] - ld(xr, j) * r * m);
}

template <class T>
void rmsnorm_of(const On& on, const Tensor& x, const Tensor& gain, float eps, const Tensor& y,
                const Tensor& rinv) {
  const int64_t D = x.shape().back(), rows = x.shape().rows();
  rmsnorm_kernel<T>
      <<<unsigned(rows), kThreads, 0, on.s>>>(as<T>(x), gain.data(), eps, D, y.data(), rinv.data());
  on.launched("rmsnorm");
}

template <class T>
void rmsnorm_backward_of(const On& on, const Tensor& x, const Tensor& g, const Tensor& rinv,
                         const Tensor& dyt, const Tensor& dxt, const Tensor& dgt) {
  const int64_t D = x.shape().back(), rows = x.shape().rows();
  const T* xv = as<T>(x);
  const float *dy = dyt.data(), *r = rinv.data();
  if (dxt.defined()) {
    rmsnorm_dx_kernel<T><<<unsigned(rows), kThreads, 0, on.s>>>(xv, g.data(), r, dy, D, dxt.data());
    on.launched("rmsnorm_backward(dx)");
  }
  if (dgt.defined()) {
    float* dg = dgt.data();
    column_sum(
        on, rows, D,
        [=] __device__(int64_t i, int64_t j) {
          return double(dy[i * D + j]) * ld(xv, i * D + j) * r[i];
        },
        [=] __device__(int64_t j, double acc) { dg[j] += float(acc); }, "rmsnorm_backward(dg)");
  }
}
}  // namespace

// x[rows, D] (f32 or bf16), g[D] -> y = g x r, rinv[rows] = r = 1/sqrt(mean(x^2) + eps) (sum of
// squares in double).
void rmsnorm(const Tensor& x, const Tensor& gain, float eps, const Tensor& y, const Tensor& rinv) {
  On on(y);
  if (x.shape().rows() == 0) return;
  if (is_bf16(x, "rmsnorm", "x"))
    rmsnorm_of<bf16_t>(on, x, gain, eps, y, rinv);
  else
    rmsnorm_of<float>(on, x, gain, eps, y, rinv);
}

// dx += r (g dy - xhat mean(g dy xhat)) per row (one block per row);
// dg[j] += sum_rows dy x r (column_sum: double over fixed row chunks, deterministic).
void rmsnorm_backward(const Tensor& x, const Tensor& g, const Tensor& rinv, const Tensor& dyt,
                      const Tensor& dxt, const Tensor& dgt) {
  On on(dyt);
  if (x.shape().rows() == 0) return;
  if (is_bf16(x, "rmsnorm_backward", "x"))
    rmsnorm_backward_of<bf16_t>(on, x, g, rinv, dyt, dxt, dgt);
  else
    rmsnorm_backward_of<float>(on, x, g, rinv, dyt, dxt, dgt);
}

namespace {
__global__ void softmax_kernel(const float* x, int64_t n, float* y) {
  __shared__ double sh[kThreads];
  __shared__ float shf[kThreads];
  const int64_t row = blockIdx.x;
  const float* xr = x + row * n;
  float* yr = y + row * n;
  float m = -INFINITY;
  for (int64_t j = threadIdx.x; j < n; j += kThreads) m = fmaxf(m, xr[j]);
  m = block_max(m, shf);
  double p = 0;
  for (int64_t j = threadIdx.x; j < n; j += kThreads) {
    const float e = expf(xr[j] - m);
    yr[j] = e;
    p += e;
  }
  const float inv = float(1.0 / block_sum(p, sh));
  for (int64_t j = threadIdx.x; j < n; j += kThreads) yr[j] *= inv;
}
__global__ void softmax_backward_kernel(const float* y, const float* dy, int64_t n, float* dx) {
  __shared__ double sh[kThreads];
  const int64_t row = blockIdx.x;
  const float *yr = y + row * n, *dyr = dy + row * n;
  double p = 0;
  for (int64_t j = threadIdx.x; j < n; j += kThreads) p += double(dyr[j]) * yr[j];
  const float d = float(block_sum(p, sh));
  for (int64_t j = threadIdx.x; j < n; j += kThreads) dx[row * n + j] += yr[j] * (dyr[j] - d);
}
}  // namespace

// y = softmax over the last dim: e^(x - max) / sum (sum in double); one block per row.
void softmax(const Tensor& x, const Tensor& y) {
  On on(y);
  const int64_t n = x.shape().back(), rows = x.shape().rows();
  if (rows == 0) return;
  softmax_kernel<<<unsigned(rows), kThreads, 0, on.s>>>(x.data(), n, y.data());
  on.launched("softmax");
}

// dx += y (dy - sum(dy y)) per row.
void softmax_backward(const Tensor& yt, const Tensor& dyt, const Tensor& dxt) {
  On on(dxt);
  const int64_t n = yt.shape().back(), rows = yt.shape().rows();
  if (rows == 0) return;
  softmax_backward_kernel<<<unsigned(rows), kThreads, 0, on.s>>>(yt.data(), dyt.data(), n,
                                                                 dxt.data());
  on.launched("softmax_backward");
}

// x[B, H, T, hd] -> y (+)= x rotated pairwise (i, i + hd/2) by angle a = (pos0 + t) theta^(-2i/hd)
// (inverse: by -a): y1 = x1 cos - x2 sin, y2 = x2 cos + x1 sin. Angle, cos and sin in double,
// rounded to float as the CPU's table. One thread per (row, i < hd/2). x and y both f32, or both
// bf16 (not accumulating): the rotation in f32, y rounded once.
template <class E>
void rope_of(const On& on, const Tensor& xt, const Tensor& yt, const float* cs, const float* sn,
             bool inverse, bool accumulate) {
  const Shape& s = xt.shape();
  const int64_t BH = s[0] * s[1], T = s[2], hd = s[3], half = hd / 2;
  const E* x = as<E>(xt);
  E* y = as<E>(yt);
  for_each(
      on, BH * T * half,
      [=] __device__(int64_t k) {
        const int64_t i = k % half, bt = k / half, t = bt % T, ti = t * half + i;
        const float c = cs[ti], si = inverse ? -sn[ti] : sn[ti];
        const E* xr = x + bt * hd;
        E* yr = y + bt * hd;
        const float x1 = ld(xr, i), x2 = ld(xr, i + half);
        const float y1 = x1 * c - x2 * si, y2 = x2 * c + x1 * si;
        if (accumulate) {
          st(yr, i, ld(yr, i) + y1);
          st(yr, i + half, ld(yr, i + half) + y2);
        } else {
          st(yr, i, y1);
          st(yr, i + half, y2);
        }
      },
      "rope");
}

void rope(const Tensor& xt, const Tensor& yt, float theta, int64_t pos0, bool inverse,
          bool accumulate) {
  On on(yt);
  const Shape& s = xt.shape();
  const int64_t BH = s[0] * s[1], T = s[2], hd = s[3], half = hd / 2;
  const bool x16 = is_bf16(xt, "rope", "x");
  BN_CHECK(x16 == is_bf16(yt, "rope", "y") && !(x16 && accumulate), "rope", "x ", xt.describe(),
           " into y ", yt.describe(), accumulate ? " (accumulating)" : "",
           ": both f32, or both bf16 without accumulation");
  if (BH * T * half == 0) return;
  // cos / sin per (t, i), computed in double as the CPU does, once per call (pooled scratch).
  Tensor table = Tensor::empty(Shape{2, T, half}, DType::F32, yt.device());
  float* cs = table.data();
  float* sn = cs + T * half;
  for_each(
      on, T * half,
      [=] __device__(int64_t k) {
        const int64_t i = k % half, t = k / half;
        const double inv = pow(double(theta), -2.0 * double(i) / double(hd));
        const double a = double(pos0 + t) * inv;
        cs[k] = float(cos(a));
        sn[k] = float(sin(a));
      },
      "rope(table)");
  if (x16)
    rope_of<bf16_t>(on, xt, yt, cs, sn, inverse, false);
  else
    rope_of<float>(on, xt, yt, cs, sn, inverse, accumulate);
}

namespace {
// One block per row of a vocabulary chunk z[N, Vc] (columns [v0, v0 + Vc)): the online
// log-sum-exp update of the row's CeRowState (reset when v0 == 0), the target's logit if here.
__global__ void ce_chunk_kernel(const float* z, int64_t v0, int64_t Vc, const int32_t* tgt,
                                CeRowState* st) {
  __shared__ double sh[kThreads];
  __shared__ float shf[kThreads];
  const int64_t row = blockIdx.x;
  const float* zr = z + row * Vc;
  const float m0 = v0 == 0 ? -INFINITY : st[row].m;
  float m = m0;
  for (int64_t j = threadIdx.x; j < Vc; j += kThreads) m = fmaxf(m, zr[j]);
  m = block_max(m, shf);
  double p = 0;
  for (int64_t j = threadIdx.x; j < Vc; j += kThreads) p += expf(zr[j] - m);
  const double e = block_sum(p, sh);
  if (threadIdx.x == 0) {
    CeRowState& r = st[row];
    r.e = v0 == 0 ? e : r.e * exp(double(m0) - double(m)) + e;
    r.m = m;
    const int64_t t = int64_t(tgt[row]) - v0;
    if (t >= 0 && t < Vc) r.t = zr[t];
  }
}
// One block: lse per row and the loss, rows strided over the threads, summed in fixed order.
__global__ void ce_finish_kernel(const CeRowState* st, const int32_t* tgt, int32_t ignore,
                                 int64_t N, int64_t count, float* lse, float* loss) {
  __shared__ double sh[kThreads];
  double p = 0;
  for (int64_t i = threadIdx.x; i < N; i += kThreads) {
    const double l = double(st[i].m) + log(st[i].e);
    lse[i] = float(l);
    if (tgt[i] != ignore) p += l - double(st[i].t);
  }
  const double s = block_sum(p, sh);
  if (threadIdx.x == 0) loss[0] = count ? float(s / double(count)) : 0.0f;
}
__global__ void ce_chunk_backward_kernel(const float* z, int64_t v0, int64_t Vc, const int32_t* tgt,
                                         int32_t ignore, int64_t count, const float* lse,
                                         const float* dy, float* y) {
  const int64_t row = blockIdx.x;
  const float* zr = z + row * Vc;
  float* yr = y + row * Vc;
  if (tgt[row] == ignore) {
    for (int64_t j = threadIdx.x; j < Vc; j += kThreads) yr[j] = 0.0f;
    return;
  }
  const float g = count ? dy[0] / float(count) : 0.0f;
  const float s = lse[row];
  for (int64_t j = threadIdx.x; j < Vc; j += kThreads) yr[j] = g * expf(zr[j] - s);
  __syncthreads();
  const int64_t t = int64_t(tgt[row]) - v0;
  if (threadIdx.x == 0 && t >= 0 && t < Vc) yr[t] -= g;
}
}  // namespace

void ce_chunk(const Tensor& z, int64_t v0, const Tensor& tgt, const Tensor& state) {
  On on(state);
  const int64_t N = z.shape()[0], Vc = z.shape()[1];
  if (N == 0) return;
  ce_chunk_kernel<<<unsigned(N), kThreads, 0, on.s>>>(z.data(), v0, Vc, tgt.data<int32_t>(),
                                                      reinterpret_cast<CeRowState*>(state.raw()));
  on.launched("ce_chunk");
}

void ce_finish(const Tensor& state, const Tensor& tgt, int32_t ignore, int64_t count,
               const Tensor& lse, const Tensor& loss) {
  On on(loss);
  ce_finish_kernel<<<1, kThreads, 0, on.s>>>(reinterpret_cast<const CeRowState*>(state.raw()),
                                             tgt.data<int32_t>(), ignore, lse.numel(), count,
                                             lse.data(), loss.data());
  on.launched("ce_finish");
}

void ce_chunk_backward(const Tensor& z, int64_t v0, const Tensor& tgt, int32_t ignore,
                       int64_t count, const Tensor& lse, const Tensor& dyt, const Tensor& y) {
  On on(y);
  const int64_t N = z.shape()[0], Vc = z.shape()[1];
  if (N == 0) return;
  ce_chunk_backward_kernel<<<unsigned(N), kThreads, 0, on.s>>>(
      z.data(), v0, Vc, tgt.data<int32_t>(), ignore, count, lse.data(), dyt.data(), y.data());
  on.launched("ce_chunk_backward");
}

}  // namespace autograd::cuda
