// CUDA causal attention on the tensor cores (GEMM precision bf16 or tf32): query-chunked cuBLAS.
//
// Shapes as attention.cu: q[B,H,T,hd], k,v[B,Hkv,T,hd], o[B,H,T,hd]; query head h = kvh G + g
// reads kv head kvh (GQA, G = H / Hkv). sc = 1/sqrt(hd). The query rows are cut into chunks
// [r0, r1); a chunk sees keys [0, r1) (causal), and every (b, h) of a chunk is one strided-batched
// GEMM (one per g of the GQA group):
//   Forward:  S = sc q_c k^T [rows, r1] (fp32 accumulation and output),
//             P = softmax(S + causal) (warp per row, fp32; e^(s - m) / l, zero above the diagonal),
//             o_c = P v (P rounded to the operand type).
//   Backward (the chunk's rows are complete, so nothing is saved by the forward): S and P as
//             above; dv += P^T dO_c; dP = dO_c v^T; D_i = sum_j P_ij dP_ij (P as rounded);
//             dS = P (dP - D) sc; dq_c += dS k; dk += dS^T q_c.
// Operands: bf16 copies of q, k, v, dO (RNE) with P and dS rounded to bf16, fp32 accumulation
// (CUBLAS_COMPUTE_32F); tf32: the fp32 tensors themselves (CUBLAS_COMPUTE_32F_FAST_TF32).
// Row kernels hold a row in registers up to 2048 keys (one read, one write per element).
// Scratch: [B H, chunk, T] for S and dP (fp32) plus the rounded P and dS; the chunk is
// the largest multiple of 16 rows (at least 16) whose S fits kChunkElems
// (set_attention_chunk_limit). Determinism: cuBLAS GEMMs at fixed shapes, warp reductions in a
// fixed butterfly order, dk and dv accumulated over the chunks (last first) and the GQA group in a
// fixed sequence: no atomics.
#include <cuda_bf16.h>

#include <atomic>
#include <cmath>
#include <type_traits>

#include "autograd/cuda/common.cuh"
#include "autograd/cuda/cuda.h"

namespace autograd::cuda {

namespace {
std::atomic<int64_t> g_chunk_elems{int64_t(128) << 20};  // 128 Mi fp32 scores (512 MiB)

template <class E>
__device__ __forceinline__ E to_e(float x) {
  if constexpr (std::is_same_v<E, float>)
    return x;
  else
    return __float2bfloat16_rn(x);
}

constexpr int kWarps = 8;  // rows per block in the row kernels

// Row r of S[nrows, kv] (chunk row i = r % rows sees keys j <= r0 + i): Pe = softmax rounded to
// E, zero above the diagonal (Pe may alias S when E is float).
// L > 0: the row lives in registers, L values per lane (kv <= 32 L): one read of S, one write.
// L == 0: any kv, three passes over S.
template <class E, int L>
__global__ void chunk_softmax(float* S, E* Pe, int64_t nrows, int rows, int kv, int r0) {
  const int64_t r = int64_t(blockIdx.x) * kWarps + threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  if (r >= nrows) return;
  const int valid = r0 + int(r % rows) + 1;
  float* s = S + r * kv;
  E* pe = Pe + r * kv;
  if constexpr (L > 0) {
    float x[L];
    float m = -INFINITY;
#pragma unroll
    for (int t = 0; t < L; ++t) {
      const int j = lane + 32 * t;
      x[t] = j < valid ? s[j] : -INFINITY;
      m = fmaxf(m, x[t]);
    }
    m = lanes_max<32>(m);
    float l = 0.0f;
#pragma unroll
    for (int t = 0; t < L; ++t) {
      x[t] = lane + 32 * t < valid ? expf(x[t] - m) : 0.0f;
      l += x[t];
    }
    const float inv = 1.0f / lanes_sum<32>(l);
#pragma unroll
    for (int t = 0; t < L; ++t) {
      const int j = lane + 32 * t;
      if (j < kv) {
        pe[j] = to_e<E>(x[t] * inv);
      }
    }
  } else {
    float m = -INFINITY;
    for (int j = lane; j < valid; j += 32) m = fmaxf(m, s[j]);
    m = lanes_max<32>(m);
    float l = 0.0f;
    for (int j = lane; j < valid; j += 32) l += expf(s[j] - m);
    const float inv = 1.0f / lanes_sum<32>(l);
    for (int j = lane; j < kv; j += 32) {
      const float p = j < valid ? expf(s[j] - m) * inv : 0.0f;
      pe[j] = to_e<E>(p);
    }
  }
}

// dS[r, j] = P (dP - D_r) sc with D_r = sum_j P dP over the row's keys, P as rounded for the dv
// GEMM (dS may alias dP for float). L as in chunk_softmax.
template <class E, int L>
__global__ void chunk_dsoftmax(const E* P, const float* dP, E* dS, int64_t nrows, int rows, int kv,
                               int r0, float sc) {
  const int64_t r = int64_t(blockIdx.x) * kWarps + threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  if (r >= nrows) return;
  const int valid = r0 + int(r % rows) + 1;
  const E* p = P + r * kv;
  const float* dp = dP + r * kv;
  E* ds = dS + r * kv;
  if constexpr (L > 0) {
    float pv[L], dv[L];
    float D = 0.0f;
#pragma unroll
    for (int t = 0; t < L; ++t) {
      const int j = lane + 32 * t;
      pv[t] = j < valid ? float(p[j]) : 0.0f;
      dv[t] = j < valid ? dp[j] : 0.0f;
      D = fmaf(pv[t], dv[t], D);
    }
    D = lanes_sum<32>(D);
#pragma unroll
    for (int t = 0; t < L; ++t) {
      const int j = lane + 32 * t;
      if (j < kv) ds[j] = to_e<E>(pv[t] * (dv[t] - D) * sc);
    }
  } else {
    float D = 0.0f;
    for (int j = lane; j < valid; j += 32) D = fmaf(float(p[j]), dp[j], D);
    D = lanes_sum<32>(D);
    for (int j = lane; j < kv; j += 32)
      ds[j] = to_e<E>(j < valid ? float(p[j]) * (dp[j] - D) * sc : 0.0f);
  }
}

// Calls f(std::integral_constant<int, L>) with the register width for rows of kv keys.
template <class F>
void with_width(int kv, F&& f) {
  if (kv <= 128)
    f(std::integral_constant<int, 4>{});
  else if (kv <= 512)
    f(std::integral_constant<int, 16>{});
  else if (kv <= 1024)
    f(std::integral_constant<int, 32>{});
  else if (kv <= 2048)
    f(std::integral_constant<int, 64>{});
  else
    f(std::integral_constant<int, 0>{});
}

template <class E>
constexpr cudaDataType_t dtype_of() {
  return std::is_same_v<E, float> ? CUDA_R_32F : CUDA_R_16BF;
}

// The cuBLAS handle in default math mode for the scope (the handle's mode is pedantic fp32).
struct TensorMath {
  cublasHandle_t h;
  int dev;
  TensorMath(int d) : h(cublas(d)), dev(d) {
    BN_CUDA(cublasSetMathMode(h, CUBLAS_DEFAULT_MATH), d);
  }
  ~TensorMath() { cublasSetMathMode(h, CUBLAS_PEDANTIC_MATH); }
};

// C[n] = alpha op(A[n]) op(B[n]) + beta C[n] for n < batch, row-major (op = transpose when t),
// A: E, B: E, C: fp32, or bf16 when c16 (rounded once from the fp32 accumulator); strides in
// elements. Column-major cuBLAS computes C^T = op(B)^T op(A)^T.
template <class E>
void bgemm(const TensorMath& tm, bool ta, bool tb, int M, int N, int K, float alpha, const E* A,
           int lda, int64_t sa, const E* B, int ldb, int64_t sb, float beta, void* C, int ldc,
           int64_t sc, int batch, bool c16 = false) {
  const cublasComputeType_t ct =
      std::is_same_v<E, float> ? CUBLAS_COMPUTE_32F_FAST_TF32 : CUBLAS_COMPUTE_32F;
  BN_CUDA(cublasGemmStridedBatchedEx(
              tm.h, tb ? CUBLAS_OP_T : CUBLAS_OP_N, ta ? CUBLAS_OP_T : CUBLAS_OP_N, N, M, K, &alpha,
              B, dtype_of<E>(), ldb, sb, A, dtype_of<E>(), lda, sa, &beta, C,
              c16 ? CUDA_R_16BF : CUDA_R_32F, ldc, sc, batch, ct, CUBLAS_GEMM_DEFAULT),
          tm.dev);
}

struct Dims {
  int B, H, Hkv, G, T, hd, cq;
  float sc;
  int64_t BH() const { return int64_t(B) * H; }
};
Dims dims_of(const Tensor& q, const Tensor& k) {
  const Shape &sq = q.shape(), &sk = k.shape();
  Dims d{int(sq[0]), int(sq[1]), int(sk[1]), 1, int(sq[2]), int(sq[3]), 16, 0.0f};
  d.G = d.H / d.Hkv;
  d.sc = 1.0f / std::sqrt(float(d.hd));
  const int64_t per_row = std::max<int64_t>(1, d.BH() * d.T);
  const int64_t fit = g_chunk_elems.load() / per_row / 16 * 16;
  d.cq = int(std::clamp<int64_t>(fit, 16, std::max(16, d.T)));
  return d;
}

// The operand of E: an fp32 tensor itself (E = float); under bf16 a bf16 tensor itself (a
// saved_activation) or a bf16 copy of an fp32 one in pooled scratch.
template <class E>
const E* operand(const On& on, const Tensor& t, Tensor& keep) {
  if constexpr (std::is_same_v<E, float>) {
    return t.data();
  } else {
    if (t.dtype() == DType::BF16) return static_cast<const E*>(t.raw());
    keep = Tensor::empty(t.shape(), DType::BF16, Device::cuda(on.dev));
    round_bf16(t, keep);
    return static_cast<const E*>(keep.raw());
  }
}

// Scratch of n elements of E: a fresh pooled buffer, or `alias` when E is float and alias is set.
template <class E>
E* scratch(const On& on, int64_t n, Tensor& keep, float* alias = nullptr) {
  if constexpr (std::is_same_v<E, float>) {
    if (alias) return alias;
  }
  keep = Tensor::empty(Shape{n}, std::is_same_v<E, float> ? DType::F32 : DType::BF16,
                       Device::cuda(on.dev));
  return static_cast<E*>(keep.raw());
}

unsigned row_blocks(int64_t nrows) { return unsigned((nrows + kWarps - 1) / kWarps); }

// o f32, or bf16 (activation_dtype: written by the last GEMM, rounded once) when E is bf16.
template <class E>
void forward(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& o) {
  On on(o);
  const bool o16 = is_bf16(o, "attention", "o");
  constexpr bool tf32 = std::is_same_v<E, float>;
  BN_CHECK(!o16 || !tf32, "attention", "o ", o.describe(),
           ": a bf16 output needs GEMM precision bf16");
  const Dims d = dims_of(q, k);
  if (d.B == 0 || d.H == 0 || d.T == 0) return;
  Tensor kq, kk, kvv, ks, kp;
  const E *Q = operand<E>(on, q, kq), *K = operand<E>(on, k, kk), *V = operand<E>(on, v, kvv);
  const int64_t cap = d.BH() * d.cq * d.T;
  float* S = scratch<float>(on, cap, ks);
  E* P = scratch<E>(on, cap, kp, S);
  const TensorMath tm(on.dev);
  const int64_t qs = int64_t(d.G) * d.T * d.hd, ks_ = int64_t(d.T) * d.hd;
  const int nb = d.B * d.Hkv;
  for (int r0 = 0; r0 < d.T; r0 += d.cq) {
    const int rows = std::min(d.cq, d.T - r0), kv = r0 + rows;
    const int64_t ss = int64_t(rows) * kv;  // one (b, h)'s scores
    for (int g = 0; g < d.G; ++g) {
      const int64_t qo = (int64_t(g) * d.T + r0) * d.hd;
      bgemm<E>(tm, false, true, rows, kv, d.hd, d.sc, Q + qo, d.hd, qs, K, d.hd, ks_, 0.0f,
               S + g * ss, kv, d.G * ss, nb);
    }
    const int64_t nrows = d.BH() * rows;
    with_width(kv, [&](auto w) {
      chunk_softmax<E, w.value>
          <<<row_blocks(nrows), kWarps * 32, 0, on.s>>>(S, P, nrows, rows, kv, r0);
    });
    on.launched("attention(softmax)");
    for (int g = 0; g < d.G; ++g) {
      const int64_t qo = (int64_t(g) * d.T + r0) * d.hd;
      bgemm<E>(tm, false, false, rows, d.hd, kv, 1.0f, P + g * ss, kv, d.G * ss, V, d.hd, ks_, 0.0f,
               static_cast<char*>(o.raw()) + qo * int64_t(o.element_size()), d.hd, qs, nb, o16);
    }
  }
}

template <class E>
void backward(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& dout,
              const Tensor& dq, const Tensor& dk, const Tensor& dv) {
  On on(dout);
  const Dims d = dims_of(q, k);
  if (d.B == 0 || d.H == 0 || d.T == 0) return;
  const bool want_ds = dq.defined() || dk.defined();
  if (!want_ds && !dv.defined()) return;
  Tensor kq, kk, kvv, kdo, ks, kp, kdp, kds;
  const E *Q = operand<E>(on, q, kq), *K = operand<E>(on, k, kk), *V = operand<E>(on, v, kvv),
          *dO = operand<E>(on, dout, kdo);
  const int64_t cap = d.BH() * d.cq * d.T;
  float* S = scratch<float>(on, cap, ks);
  E* P = scratch<E>(on, cap, kp, S);
  float* dP = want_ds ? scratch<float>(on, cap, kdp) : nullptr;
  E* dS = want_ds ? scratch<E>(on, cap, kds, dP) : nullptr;
  const TensorMath tm(on.dev);
  const int64_t qs = int64_t(d.G) * d.T * d.hd, ks_ = int64_t(d.T) * d.hd;
  const int nb = d.B * d.Hkv;
  const int nchunks = (d.T + d.cq - 1) / d.cq;
  for (int c = nchunks - 1; c >= 0; --c) {
    const int r0 = c * d.cq, rows = std::min(d.cq, d.T - r0), kv = r0 + rows;
    const int64_t ss = int64_t(rows) * kv, nrows = d.BH() * rows;
    for (int g = 0; g < d.G; ++g) {
      const int64_t qo = (int64_t(g) * d.T + r0) * d.hd;
      bgemm<E>(tm, false, true, rows, kv, d.hd, d.sc, Q + qo, d.hd, qs, K, d.hd, ks_, 0.0f,
               S + g * ss, kv, d.G * ss, nb);
    }
    with_width(kv, [&](auto w) {
      chunk_softmax<E, w.value>
          <<<row_blocks(nrows), kWarps * 32, 0, on.s>>>(S, P, nrows, rows, kv, r0);
    });
    on.launched("attention_backward(softmax)");
    for (int g = 0; g < d.G; ++g) {  // dv += P^T dO_c
      if (!dv.defined()) break;
      const int64_t qo = (int64_t(g) * d.T + r0) * d.hd;
      bgemm<E>(tm, true, false, kv, d.hd, rows, 1.0f, P + g * ss, kv, d.G * ss, dO + qo, d.hd, qs,
               1.0f, dv.data(), d.hd, ks_, nb);
    }
    if (!want_ds) continue;
    for (int g = 0; g < d.G; ++g) {  // dP = dO_c v^T
      const int64_t qo = (int64_t(g) * d.T + r0) * d.hd;
      bgemm<E>(tm, false, true, rows, kv, d.hd, 1.0f, dO + qo, d.hd, qs, V, d.hd, ks_, 0.0f,
               dP + g * ss, kv, d.G * ss, nb);
    }
    with_width(kv, [&](auto w) {
      chunk_dsoftmax<E, w.value>
          <<<row_blocks(nrows), kWarps * 32, 0, on.s>>>(P, dP, dS, nrows, rows, kv, r0, d.sc);
    });
    on.launched("attention_backward(dsoftmax)");
    for (int g = 0; g < d.G; ++g) {
      const int64_t qo = (int64_t(g) * d.T + r0) * d.hd;
      if (dq.defined())  // dq_c += dS k
        bgemm<E>(tm, false, false, rows, d.hd, kv, 1.0f, dS + g * ss, kv, d.G * ss, K, d.hd, ks_,
                 1.0f, dq.data() + qo, d.hd, qs, nb);
      if (dk.defined())  // dk += dS^T q_c
        bgemm<E>(tm, true, false, kv, d.hd, rows, 1.0f, dS + g * ss, kv, d.G * ss, Q + qo, d.hd, qs,
                 1.0f, dk.data(), d.hd, ks_, nb);
    }
  }
}
}  // namespace

void set_attention_chunk_limit(int64_t elements) {
  BN_CHECK(elements >= 1, "set_attention_chunk_limit", "limit ", elements, " must be >= 1");
  g_chunk_elems.store(elements);
}

// o = softmax(q k^T / sqrt(hd) + causal) v on the tensor cores at the GEMM precision (bf16/tf32).
void attention_tc(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& o,
                  GemmPrecision p) {
  if (p == GemmPrecision::BF16)
    forward<__nv_bfloat16>(q, k, v, o);
  else
    forward<float>(q, k, v, o);
}

// dq, dk, dv += the gradients of attention (any may be undefined), tensor cores (see the header).
void attention_backward_tc(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& dout,
                           const Tensor& dq, const Tensor& dk, const Tensor& dv, GemmPrecision p) {
  if (p == GemmPrecision::BF16)
    backward<__nv_bfloat16>(q, k, v, dout, dq, dk, dv);
  else
    backward<float>(q, k, v, dout, dq, dk, dv);
}

}  // namespace autograd::cuda
