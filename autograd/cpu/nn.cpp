// CPU kernels of the neural-network ops: embedding, RMSNorm, softmax, RoPE, causal attention,
// cross-entropy (forward and backward).
#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#include "autograd/cpu/cpu.h"
#include "autograd/kernels.h"

namespace autograd::cpu {
using kernels::parallel_for;

// ---- embedding ------------------------------------------------------------------------------
void embedding(const Tensor& weight, const Tensor& idt, const Tensor& y) {
  const int64_t D = weight.shape()[1], N = idt.numel();
  const int32_t* ids = idt.data<int32_t>();
  const float* w = weight.data();
  float* yv = y.data();
  parallel_for(N, [&](int64_t i) {
    std::memcpy(yv + i * D, w + int64_t(ids[i]) * D, size_t(D) * sizeof(float));
  });
}

void embedding_backward(const Tensor& idt, const Tensor& dyt, const Tensor& dwt) {
  const int64_t D = dwt.shape()[1], N = idt.numel();
  const int32_t* ids = idt.data<int32_t>();
  const float* dy = dyt.data();
  float* dw = dwt.data();
  // Scatter-add without atomics: each thread owns a fixed slice of the columns, rows in order.
  const int64_t C = kernels::det_chunks(D);
  parallel_for(C, [&](int64_t c) {
    const int64_t j0 = D * c / C, j1 = D * (c + 1) / C;
    for (int64_t i = 0; i < N; ++i) {
      float* row = dw + int64_t(ids[i]) * D;
      const float* g = dy + i * D;
      for (int64_t j = j0; j < j1; ++j) row[j] += g[j];
    }
  });
}

// ---- RMSNorm --------------------------------------------------------------------------------
void rmsnorm(const Tensor& x, const Tensor& gain, float eps, const Tensor& y, const Tensor& rinv) {
  const int64_t D = x.shape().back(), rows = x.shape().rows();
  const float *xv = x.data(), *gv = gain.data();
  float *yv = y.data(), *r = rinv.data();
  parallel_for(rows, [&](int64_t i) {
    const float* xr = xv + i * D;
    const double ss = kernels::dot_d(xr, xr, D);
    const float ri = float(1.0 / std::sqrt(ss / double(D) + double(eps)));
    r[i] = ri;
    for (int64_t j = 0; j < D; ++j) yv[i * D + j] = gv[j] * (xr[j] * ri);
  });
}

// One pass over dy and x per row computes dx and adds the row's dg terms into the chunk's double
// accumulator; chunks are fixed by the row count (det_reduce_rows), so dg is deterministic for
// any thread count.
void rmsnorm_backward(const Tensor& x, const Tensor& g, const Tensor& rinv, const Tensor& dyt,
                      const Tensor& dxt, const Tensor& dgt) {
  const int64_t D = x.shape().back(), rows = x.shape().rows();
  const float *dy = dyt.data(), *xv = x.data(), *gv = g.data(), *r = rinv.data();
  float* dx = opt(dxt);
  auto row = [&](int64_t i, double* acc) {
    const float *xr = xv + i * D, *dyr = dy + i * D;
    const float ri = r[i];
    if (acc)
      for (int64_t j = 0; j < D; ++j) acc[j] += double(dyr[j]) * xr[j] * ri;
    if (!dx) return;
    thread_local std::vector<float> gdy;  // g dy of the row
    gdy.resize(size_t(D));
    for (int64_t j = 0; j < D; ++j) gdy[size_t(j)] = gv[j] * dyr[j];
    // mean(g dy xhat) = r mean(g dy x), the dot in double over fixed lanes
    const float m = float(kernels::dot_d(gdy.data(), xr, D) * double(ri) / double(D));
    float* dxr = dx + i * D;
    for (int64_t j = 0; j < D; ++j) dxr[j] += ri * (gdy[size_t(j)] - xr[j] * ri * m);
  };
  if (dgt.defined())
    kernels::det_reduce_rows(rows, D, dgt.data(), [&](int64_t r0, int64_t r1, double* acc) {
      for (int64_t i = r0; i < r1; ++i) row(i, acc);
    });
  else if (dx)
    parallel_for(rows, [&](int64_t i) { row(i, nullptr); });
}

// ---- softmax --------------------------------------------------------------------------------
namespace {
void softmax_row(const float* x, float* y, int64_t n) {
  float m = -std::numeric_limits<float>::infinity();
  for (int64_t j = 0; j < n; ++j) m = std::max(m, x[j]);
  for (int64_t j = 0; j < n; ++j) y[j] = kernels::exp_fast(x[j] - m);
  const double s = kernels::sum_d(y, n);
  const float inv = float(1.0 / s);
  for (int64_t j = 0; j < n; ++j) y[j] *= inv;
}
// dx (+)= y (dy - sum(dy y)) for one row.
void softmax_row_backward(const float* y, const float* dy, float* dx, int64_t n) {
  const float d = float(kernels::dot_d(dy, y, n));
  for (int64_t j = 0; j < n; ++j) dx[j] += y[j] * (dy[j] - d);
}
}  // namespace

void softmax(const Tensor& x, const Tensor& y) {
  const int64_t n = x.shape().back(), rows = x.shape().rows();
  const float* xv = x.data();
  float* yv = y.data();
  parallel_for(rows, [&](int64_t i) { softmax_row(xv + i * n, yv + i * n, n); });
}

void softmax_backward(const Tensor& yt, const Tensor& dyt, const Tensor& dxt) {
  const int64_t n = yt.shape().back(), rows = yt.shape().rows();
  const float *y = yt.data(), *dy = dyt.data();
  float* dx = dxt.data();
  parallel_for(rows,
               [&](int64_t i) { softmax_row_backward(y + i * n, dy + i * n, dx + i * n, n); });
}

// ---- RoPE -----------------------------------------------------------------------------------
namespace {
// cos/sin table [T, hd/2]: angle = (pos0 + t) * theta^(-2i/hd), computed in double.
void rope_table(int64_t T, int64_t hd, float theta, int64_t pos0, std::vector<float>& cs,
                std::vector<float>& sn) {
  const int64_t half = hd / 2;
  cs.resize(size_t(T * half));
  sn.resize(size_t(T * half));
  for (int64_t t = 0; t < T; ++t)
    for (int64_t i = 0; i < half; ++i) {
      const double inv = std::pow(double(theta), -2.0 * double(i) / double(hd));
      const double a = double(pos0 + t) * inv;
      cs[size_t(t * half + i)] = float(std::cos(a));
      sn[size_t(t * half + i)] = float(std::sin(a));
    }
}
}  // namespace

// Rotates each [hd] row of x[B*H, T, hd]; inverse applies the transposed rotation (backward).
void rope(const Tensor& xt, const Tensor& yt, float theta, int64_t pos0, bool inverse,
          bool accumulate) {
  const Shape& s = xt.shape();
  const int64_t BH = s[0] * s[1], T = s[2], hd = s[3], half = hd / 2;
  thread_local std::vector<float> cs, sn;
  rope_table(T, hd, theta, pos0, cs, sn);
  const float* x = xt.data();
  float* y = yt.data();
  const float *csd = cs.data(), *snd = sn.data();
  parallel_for(BH * T, [&](int64_t bt) {
    const int64_t t = bt % T;
    const float* xr = x + bt * hd;
    float* yr = y + bt * hd;
    const float *c = csd + t * half, *sp = snd + t * half;
    for (int64_t i = 0; i < half; ++i) {
      const float x1 = xr[i], x2 = xr[i + half];
      const float si = inverse ? -sp[i] : sp[i];
      const float y1 = x1 * c[i] - x2 * si, y2 = x2 * c[i] + x1 * si;
      if (accumulate) {
        yr[i] += y1;
        yr[i + half] += y2;
      } else {
        yr[i] = y1;
        yr[i + half] = y2;
      }
    }
  });
}

// ---- causal attention -----------------------------------------------------------------------
namespace {
// Calls f(r0, m) for the query-row blocks [r0, r0 + m) of a T-row causal attention: block rows
// only see keys [0, r0 + m), so the GEMMs skip the upper triangle's blocks (10/16 of the dense
// work at T = 256 with 64-row blocks).
template <class F>
void for_causal_blocks(int64_t T, F&& f) {
  constexpr int64_t kBlock = 64;
  for (int64_t r0 = 0; r0 < T; r0 += kBlock) f(r0, std::min(kBlock, T - r0));
}

// Rows [r0, r0 + m) of one head's probabilities P[T, T] = softmax(Q K^T sc + causal) (upper part
// zero). Forward and backward (which recomputes P instead of keeping it) call exactly this, one
// head per task (single-threaded GEMM), so the recomputed P is bit-identical.
void causal_probs_block(const float* Q, const float* K, int64_t T, int64_t hd, float sc, int64_t r0,
                        int64_t m, float* P) {
  const int64_t n = r0 + m;
  kernels::gemm(false, true, m, n, hd, sc, Q + r0 * hd, hd, K, hd, 0.0f, P + r0 * T, T);
  for (int64_t i = r0; i < n; ++i) {
    float* row = P + i * T;
    softmax_row(row, row, i + 1);
    for (int64_t j = i + 1; j < T; ++j) row[j] = 0.0f;
  }
}
}  // namespace

void attention(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& y) {
  const Shape &sq = q.shape(), &sk = k.shape();
  const int64_t B = sq[0], H = sq[1], T = sq[2], hd = sq[3], Hkv = sk[1], G = H / Hkv;
  const float sc = 1.0f / std::sqrt(float(hd));
  const float *Q = q.data(), *K = k.data(), *V = v.data();
  float* O = y.data();
  parallel_for(B * H, [&](int64_t bh) {
    const int64_t b = bh / H, h = bh % H, kh = h / G;
    const int64_t qo = bh * T * hd, kvo = (b * Hkv + kh) * T * hd;
    thread_local std::vector<float> Pbuf;  // this head's probabilities
    Pbuf.resize(size_t(T * T));
    float* Ph = Pbuf.data();
    // Causal blocks only: query rows [r0, r0 + m) see keys [0, r0 + m).
    for_causal_blocks(T, [&](int64_t r0, int64_t m) {
      causal_probs_block(Q + qo, K + kvo, T, hd, sc, r0, m, Ph);
      kernels::gemm(false, false, m, hd, r0 + m, 1.0f, Ph + r0 * T, T, V + kvo, hd, 0.0f,
                    O + qo + r0 * hd, hd);
    });
  });
}

// P recomputed per head (T x T floats per head would be the largest activation of a block).
void attention_backward(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& dout,
                        const Tensor& dqt, const Tensor& dkt, const Tensor& dvt) {
  const int64_t B = q.shape()[0], H = q.shape()[1], T = q.shape()[2], hd = q.shape()[3];
  const int64_t Hkv = k.shape()[1], G = H / Hkv;
  const float sc = 1.0f / std::sqrt(float(hd));
  const float *Q = q.data(), *K = k.data(), *V = v.data(), *dO = dout.data();
  float* dQ = opt(dqt);
  float* dK = opt(dkt);
  float* dV = opt(dvt);
  // One task per (batch, kv head): it owns dK/dV of that head, so no two tasks write alike.
  parallel_for(B * Hkv, [&](int64_t bk) {
    const int64_t b = bk / Hkv, kh = bk % Hkv;
    const int64_t kvo = (b * Hkv + kh) * T * hd;
    thread_local std::vector<float> dS, Pbuf;
    dS.resize(size_t(T * T));
    Pbuf.resize(size_t(T * T));
    for (int64_t g = 0; g < G; ++g) {
      const int64_t h = kh * G + g;
      const int64_t qo = (b * H + h) * T * hd;
      const float* Ph = Pbuf.data();
      for_causal_blocks(T, [&](int64_t r0, int64_t m) {
        causal_probs_block(Q + qo, K + kvo, T, hd, sc, r0, m, Pbuf.data());
      });
      const float* dOh = dO + qo;
      // Causal blocks only: query rows [r0, r0 + m) touch keys [0, r0 + m).
      for_causal_blocks(T, [&](int64_t r0, int64_t m) {
        const int64_t n = r0 + m;
        const float* Pb = Ph + r0 * T;
        float* dSb = dS.data() + r0 * T;
        if (dV)
          kernels::gemm(true, false, n, hd, m, 1.0f, Pb, T, dOh + r0 * hd, hd, 1.0f, dV + kvo, hd);
        if (!dQ && !dK) return;
        // dP = dO V^T  -> dS = P (dP - rowsum(dP P)) * scale
        kernels::gemm(false, true, m, n, hd, 1.0f, dOh + r0 * hd, hd, V + kvo, hd, 0.0f, dSb, T);
        for (int64_t i = r0; i < n; ++i) {
          const float* pr = Ph + i * T;
          float* dr = dS.data() + i * T;
          const float d = float(kernels::dot_d(pr, dr, i + 1));
          for (int64_t j = 0; j <= i; ++j) dr[j] = pr[j] * (dr[j] - d) * sc;
          for (int64_t j = i + 1; j < n; ++j) dr[j] = 0.0f;
        }
        if (dQ)
          kernels::gemm(false, false, m, hd, n, 1.0f, dSb, T, K + kvo, hd, 1.0f, dQ + qo + r0 * hd,
                        hd);
        if (dK)
          kernels::gemm(true, false, n, hd, m, 1.0f, dSb, T, Q + qo + r0 * hd, hd, 1.0f, dK + kvo,
                        hd);
      });
    }
  });
}

// ---- cross-entropy --------------------------------------------------------------------------
// One vocabulary chunk per row: the max, e^(z - m) (exp_fast) summed in double lanes; an earlier
// chunk's sum is rescaled by e^(m_old - m) (exactly 1 when the max held).
void ce_chunk(const Tensor& zt, int64_t v0, const Tensor& tgt, const Tensor& state) {
  const int64_t N = zt.shape()[0], Vc = zt.shape()[1];
  const int32_t* targets = tgt.data<int32_t>();
  const float* z = zt.data();
  CeRowState* st = reinterpret_cast<CeRowState*>(state.data<uint8_t>());
  parallel_for(N, [&](int64_t i) {
    const float* zr = z + i * Vc;
    CeRowState& r = st[i];
    float m = v0 == 0 ? -std::numeric_limits<float>::infinity() : r.m;
    for (int64_t j = 0; j < Vc; ++j) m = std::max(m, zr[j]);
    thread_local std::vector<float> ex;
    ex.resize(size_t(Vc));
    for (int64_t j = 0; j < Vc; ++j) ex[size_t(j)] = kernels::exp_fast(zr[j] - m);
    const double e = kernels::sum_d(ex.data(), Vc);
    r.e = v0 == 0 ? e : r.e * std::exp(double(r.m) - double(m)) + e;
    r.m = m;
    const int64_t t = int64_t(targets[i]) - v0;
    if (t >= 0 && t < Vc) r.t = zr[t];
  });
}

void ce_finish(const Tensor& state, const Tensor& tgt, int32_t ignore, int64_t count,
               const Tensor& lse, const Tensor& loss) {
  const int64_t N = lse.numel();
  const int32_t* targets = tgt.data<int32_t>();
  const CeRowState* st = reinterpret_cast<const CeRowState*>(state.data<uint8_t>());
  float* s = lse.data();
  const double total = kernels::det_reduce(N, [&](int64_t i0, int64_t i1) {
    double part = 0;
    for (int64_t i = i0; i < i1; ++i) {
      const double l = double(st[i].m) + std::log(st[i].e);
      s[i] = float(l);
      if (targets[i] != ignore) part += l - double(st[i].t);
    }
    return part;
  });
  loss.data()[0] = count ? float(total / double(count)) : 0.0f;
}

// (softmax - onehot) dy / count for columns [v0, v0 + Vc) (y may be z).
void ce_chunk_backward(const Tensor& zt, int64_t v0, const Tensor& tgt, int32_t ignore,
                       int64_t count, const Tensor& lse, const Tensor& dyt, const Tensor& yt) {
  const int64_t N = zt.shape()[0], Vc = zt.shape()[1];
  const int32_t* targets = tgt.data<int32_t>();
  const float g = count ? dyt.data()[0] / float(count) : 0.0f;
  const float *z = zt.data(), *s = lse.data();
  float* y = yt.data();
  parallel_for(N, [&](int64_t i) {
    const float* zr = z + i * Vc;
    float* yr = y + i * Vc;
    if (targets[i] == ignore) {
      std::fill(yr, yr + Vc, 0.0f);
      return;
    }
    const float si = s[i];
    for (int64_t j = 0; j < Vc; ++j) yr[j] = g * kernels::exp_fast(zr[j] - si);
    const int64_t t = int64_t(targets[i]) - v0;
    if (t >= 0 && t < Vc) yr[t] -= g;
  });
}

}  // namespace autograd::cpu
