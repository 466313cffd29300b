// CUDA causal attention, flash-style in fp32: forward and deterministic backward, no [T, T] matrix.
// (At GEMM precision bf16 / tf32 both entries hand over to attention_tc.cu, the tensor-core route.)
//
// Shapes: q[B,H,T,hd], k,v[B,Hkv,T,hd], o[B,H,T,hd]; query head h reads kv head h / (H/Hkv) (GQA).
// Forward:  s_ij = q_i.k_j / sqrt(hd) (j <= i), m_i = max_j s_ij, l_i = sum_j e^(s_ij - m_i),
//           o_i = sum_j e^(s_ij - m_i) v_j / l_i  (online softmax over key tiles).
// Backward: P_ij = e^(s_ij - m_i) / l_i, dP_ij = dO_i.v_j, D_i = sum_j P_ij dP_ij,
//           dS_ij = P_ij (dP_ij - D_i) / sqrt(hd);  dq_i += sum_j dS_ij k_j,
//           dk_j += sum_i dS_ij q_i, dv_j += sum_i P_ij dO_i  (sums over i of the GQA group's
//           heads).
//
// Tiling: 256 threads as a 16 x 16 grid (ty, tx); a block owns a tile of R = 16 RM rows (queries,
// or keys in the dk/dv kernel) and walks column tiles of C = 16 CN; thread (ty, tx) holds the
// RM x CN scores of rows ty RM + a, columns tx CN + b, and RM x D/16 of every [rows, D] accumulator
// (columns v 16 VW + tx VW + w). head_dim is padded with zeros to D in {32, 64, 128, 256} in shared
// memory. The reduction index of every tile product is the outer one of both shared operands
// (q, k, v, dO stored transposed [D][rows] for the scores, natural [rows][D] for the products with
// P or dS), so each step reads one RM- and one CN-vector. Tiles above the diagonal are skipped.
//   attention_fwd:  per (query tile, b h): online m, l, o over key tiles j0 < q0 + R.
//   attention_bwd_q: per (query tile, b h): pass 1 recomputes m_i, l_i and D_i (online, with
//                   D_i = sum_j e^(s_ij - m_i) dP_ij / l_i) and stores them (O(B H T) scratch);
//                   pass 2 (when dq is wanted) recomputes P and dS and accumulates dq in registers.
//   attention_bwd_kv: per (key tile, b kv-head): loops over the group's query heads and the query
//                   tiles i0 + C > k0, recomputes P and dS from the stored statistics and
//                   accumulates dk and dv in registers; written once.
// Determinism: every sum runs in a fixed order (k-loops in order, the 16-lane row reductions by an
// xor butterfly, identical in every lane); no atomics, each output element has one writer.
#include <algorithm>
#include <atomic>
#include <cmath>

#include "autograd/cuda/common.cuh"

namespace autograd::cuda {

namespace {
constexpr int kAttnThreads = 256;  // 16 x 16

template <int D_, int RM_, int CN_>
struct Cfg {
  static constexpr int D = D_, RM = RM_, CN = CN_;
  static constexpr int R = 16 * RM, C = 16 * CN;            // tile rows, tile columns
  static constexpr int RS = R + 4, CS = C + 4, DS = D + 4;  // padded strides (float4-aligned)
  static constexpr int VW = D >= 64 ? 4 : 2, NV = D / (16 * VW), ND = D / 16;
  static constexpr int KV = D * CS > C* DS ? D* CS : C* DS;  // a [C, D] tile, either layout
};

// r[0..N) = p[0..N) (p aligned to N floats for N = 2, 4).
template <int N>
__device__ __forceinline__ void ldv(const float* p, float* r) {
  if constexpr (N == 4) {
    const float4 t = *reinterpret_cast<const float4*>(p);
    r[0] = t.x, r[1] = t.y, r[2] = t.z, r[3] = t.w;
  } else if constexpr (N == 2) {
    const float2 t = *reinterpret_cast<const float2*>(p);
    r[0] = t.x, r[1] = t.y;
  } else {
#pragma unroll
    for (int i = 0; i < N; ++i) r[i] = p[i];
  }
}

// Tile rows [0, R) x columns [0, D) of src[r hd + d] (r < nr, d < hd; zero beyond) into dst,
// transposed (dst[d ds + r]) or natural (dst[r ds + d]).
template <int R, int D, bool Trans>
__device__ __forceinline__ void load_tile(float* dst, int ds, const float* __restrict__ src, int nr,
                                          int hd) {
  for (int e = threadIdx.x; e < R * D; e += kAttnThreads) {
    const int r = e / D, d = e % D;
    const float x = (r < nr && d < hd) ? src[int64_t(r) * hd + d] : 0.0f;
    if constexpr (Trans)
      dst[d * ds + r] = x;
    else
      dst[r * ds + d] = x;
  }
}

// c[a][b] += sum_{k < K} X[k xs + a] Y[k ys + b]  (X, Y offset to the thread's rows / columns).
template <int K, int RM, int CN>
__device__ __forceinline__ void mm_tile(float (&c)[RM][CN], const float* X, int xs, const float* Y,
                                        int ys) {
#pragma unroll 4
  for (int k = 0; k < K; ++k) {
    float x[RM], y[CN];
    ldv<RM>(X + k * xs, x);
    ldv<CN>(Y + k * ys, y);
#pragma unroll
    for (int a = 0; a < RM; ++a)
#pragma unroll
      for (int b = 0; b < CN; ++b) c[a][b] = fmaf(x[a], y[b], c[a][b]);
  }
}

// c[a][v VW + w] += sum_{k < K} X[k xs + a] Y[k ys + v 16 VW + w]  (Y offset by tx VW).
template <class Cf, int K>
__device__ __forceinline__ void mm_rows(float (&c)[Cf::RM][Cf::ND], const float* X, int xs,
                                        const float* Y, int ys) {
  constexpr int RM = Cf::RM, VW = Cf::VW, NV = Cf::NV;
#pragma unroll 2
  for (int k = 0; k < K; ++k) {
    float x[RM], y[Cf::ND];
    ldv<RM>(X + k * xs, x);
#pragma unroll
    for (int v = 0; v < NV; ++v) ldv<VW>(Y + k * ys + v * 16 * VW, y + v * VW);
#pragma unroll
    for (int a = 0; a < RM; ++a)
#pragma unroll
      for (int n = 0; n < Cf::ND; ++n) c[a][n] = fmaf(x[a], y[n], c[a][n]);
  }
}

// Reductions over the 16 lanes of one ty (lanes 16 ty' .. 16 ty' + 15 of a warp): lanes_max /
// lanes_sum<16> (common.cuh).
// rows[r ld + col(n)] (+)= c[a][n] / scale for the thread's rows r = r0 + a < nr, col < hd.
template <class Cf, bool Acc>
__device__ __forceinline__ void store_rows(float* dst, int hd, int nr, int r0, int tx,
                                           const float (&c)[Cf::RM][Cf::ND], const float* mul) {
#pragma unroll
  for (int a = 0; a < Cf::RM; ++a) {
    const int r = r0 + a;
    if (r >= nr) continue;
#pragma unroll
    for (int n = 0; n < Cf::ND; ++n) {
      const int col = (n / Cf::VW) * 16 * Cf::VW + tx * Cf::VW + n % Cf::VW;
      if (col >= hd) continue;
      const float x = mul ? c[a][n] * mul[a] : c[a][n];
      float* p = dst + int64_t(r) * hd + col;
      if constexpr (Acc)
        *p += x;
      else
        *p = x;
    }
  }
}

template <class Cf>
constexpr size_t fwd_smem() {
  return sizeof(float) * size_t(Cf::D * Cf::RS + Cf::D * Cf::CS + Cf::C * Cf::DS + Cf::C * Cf::RS);
}
template <class Cf>
constexpr size_t bwd_q_smem() {
  return sizeof(float) * size_t(2 * Cf::D * Cf::RS + 2 * Cf::KV + Cf::C * Cf::RS);
}
template <class Cf>
constexpr size_t bwd_kv_smem() {
  return sizeof(float) * size_t(2 * Cf::D * Cf::RS + 2 * Cf::KV + 2 * Cf::C * Cf::RS);
}

// Query tiles are walked heaviest (last) first: the causal blocks differ up to T / R in work.
__device__ __forceinline__ int tile_from_last() { return int(gridDim.x - 1 - blockIdx.x); }

// ---- forward --------------------------------------------------------------------------------
template <class Cf>
__global__ void __launch_bounds__(kAttnThreads)
    attention_fwd(const float* __restrict__ q, const float* __restrict__ k,
                  const float* __restrict__ v, float* __restrict__ o, int T, int hd, int H, int G,
                  float sc) {
  constexpr int D = Cf::D, RM = Cf::RM, CN = Cf::CN, R = Cf::R, C = Cf::C;
  constexpr int RS = Cf::RS, CS = Cf::CS, DS = Cf::DS;
  extern __shared__ float4 smem4[];
  float* Qt = reinterpret_cast<float*>(smem4);  // [D][RS]
  float* Kt = Qt + D * RS;                      // [D][CS]
  float* Vn = Kt + D * CS;                      // [C][DS]
  float* Pt = Vn + C * DS;                      // [C][RS]
  const int tx = threadIdx.x & 15, ty = threadIdx.x >> 4;
  const int q0 = tile_from_last() * R, bh = blockIdx.y, b = bh / H, h = bh % H;
  const int64_t qo = int64_t(bh) * T * hd, kvo = (int64_t(b) * (H / G) + h / G) * T * hd;
  load_tile<R, D, true>(Qt, RS, q + qo + int64_t(q0) * hd, T - q0, hd);

  float m[RM], l[RM], acc[RM][Cf::ND];
#pragma unroll
  for (int a = 0; a < RM; ++a) {
    m[a] = -INFINITY, l[a] = 0.0f;
#pragma unroll
    for (int n = 0; n < Cf::ND; ++n) acc[a][n] = 0.0f;
  }
  const int kend = min(T, q0 + R);
  for (int j0 = 0; j0 < kend; j0 += C) {
    __syncthreads();  // the previous tile's Kt, Vn, Pt are read
    load_tile<C, D, true>(Kt, CS, k + kvo + int64_t(j0) * hd, T - j0, hd);
    load_tile<C, D, false>(Vn, DS, v + kvo + int64_t(j0) * hd, T - j0, hd);
    __syncthreads();
    float s[RM][CN] = {};
    mm_tile<D, RM, CN>(s, Qt + ty * RM, RS, Kt + tx * CN, CS);
#pragma unroll
    for (int a = 0; a < RM; ++a) {
      const int i = q0 + ty * RM + a;
      float mx = -INFINITY;
#pragma unroll
      for (int bb = 0; bb < CN; ++bb) {
        s[a][bb] = (j0 + tx * CN + bb <= i) ? s[a][bb] * sc : -INFINITY;
        mx = fmaxf(mx, s[a][bb]);
      }
      const float mn = fmaxf(m[a], lanes_max<16>(mx));  // finite: key 0 is in the first tile
      const float alpha = expf(m[a] - mn);
      float rs = 0.0f;
#pragma unroll
      for (int bb = 0; bb < CN; ++bb) {
        const float p = expf(s[a][bb] - mn);
        rs += p;
        Pt[(tx * CN + bb) * RS + ty * RM + a] = p;
      }
      l[a] = l[a] * alpha + lanes_sum<16>(rs);
      m[a] = mn;
#pragma unroll
      for (int n = 0; n < Cf::ND; ++n) acc[a][n] *= alpha;
    }
    __syncthreads();
    mm_rows<Cf, C>(acc, Pt + ty * RM, RS, Vn + tx * Cf::VW, DS);
  }
  float inv[RM];
#pragma unroll
  for (int a = 0; a < RM; ++a) inv[a] = 1.0f / l[a];
  store_rows<Cf, false>(o + qo + int64_t(q0) * hd, hd, T - q0, ty * RM, tx, acc, inv);
}

// ---- backward, query side: statistics and dq ------------------------------------------------
// st[0][bh T + i] = m_i, st[1][..] = 1 / l_i, st[2][..] = D_i (st[c] = st + c N, N = B H T).
template <class Cf>
__global__ void __launch_bounds__(kAttnThreads)
    attention_bwd_q(const float* __restrict__ q, const float* __restrict__ k,
                    const float* __restrict__ v, const float* __restrict__ dout, float* st,
                    int64_t N, float* __restrict__ dq, int T, int hd, int H, int G, float sc) {
  constexpr int D = Cf::D, RM = Cf::RM, CN = Cf::CN, R = Cf::R, C = Cf::C;
  constexpr int RS = Cf::RS, CS = Cf::CS, DS = Cf::DS;
  extern __shared__ float4 smem4[];
  float* Qt = reinterpret_cast<float*>(smem4);  // [D][RS]
  float* dOt = Qt + D * RS;                     // [D][RS]
  float* Kb = dOt + D * RS;                     // Kt [D][CS], then K natural [C][DS]
  float* Vt = Kb + Cf::KV;                      // [D][CS]
  float* dSt = Vt + Cf::KV;                     // [C][RS]
  const int tx = threadIdx.x & 15, ty = threadIdx.x >> 4;
  const int q0 = tile_from_last() * R, bh = blockIdx.y, b = bh / H, h = bh % H;
  const int64_t qo = int64_t(bh) * T * hd, kvo = (int64_t(b) * (H / G) + h / G) * T * hd;
  load_tile<R, D, true>(Qt, RS, q + qo + int64_t(q0) * hd, T - q0, hd);
  load_tile<R, D, true>(dOt, RS, dout + qo + int64_t(q0) * hd, T - q0, hd);

  float m[RM], l[RM], u[RM];
#pragma unroll
  for (int a = 0; a < RM; ++a) m[a] = -INFINITY, l[a] = 0.0f, u[a] = 0.0f;
  const int kend = min(T, q0 + R);
  // Pass 1: m, l and u = sum_j e^(s_ij - m_i) dP_ij, online.
  for (int j0 = 0; j0 < kend; j0 += C) {
    __syncthreads();
    load_tile<C, D, true>(Kb, CS, k + kvo + int64_t(j0) * hd, T - j0, hd);
    load_tile<C, D, true>(Vt, CS, v + kvo + int64_t(j0) * hd, T - j0, hd);
    __syncthreads();
    float s[RM][CN] = {}, dp[RM][CN] = {};
    mm_tile<D, RM, CN>(s, Qt + ty * RM, RS, Kb + tx * CN, CS);
    mm_tile<D, RM, CN>(dp, dOt + ty * RM, RS, Vt + tx * CN, CS);
#pragma unroll
    for (int a = 0; a < RM; ++a) {
      const int i = q0 + ty * RM + a;
      float mx = -INFINITY;
#pragma unroll
      for (int bb = 0; bb < CN; ++bb) {
        s[a][bb] = (j0 + tx * CN + bb <= i) ? s[a][bb] * sc : -INFINITY;
        mx = fmaxf(mx, s[a][bb]);
      }
      const float mn = fmaxf(m[a], lanes_max<16>(mx));
      const float alpha = expf(m[a] - mn);
      float rs = 0.0f, ru = 0.0f;
#pragma unroll
      for (int bb = 0; bb < CN; ++bb) {
        const float p = expf(s[a][bb] - mn);
        rs += p;
        ru = fmaf(p, dp[a][bb], ru);
      }
      l[a] = l[a] * alpha + lanes_sum<16>(rs);
      u[a] = u[a] * alpha + lanes_sum<16>(ru);
      m[a] = mn;
    }
  }
  float linv[RM], Di[RM];
#pragma unroll
  for (int a = 0; a < RM; ++a) {
    linv[a] = 1.0f / l[a];
    Di[a] = u[a] * linv[a];
    const int i = q0 + ty * RM + a;
    if (tx == 0 && i < T) {
      const int64_t r = int64_t(bh) * T + i;
      st[r] = m[a], st[N + r] = linv[a], st[2 * N + r] = Di[a];
    }
  }
  if (!dq) return;

  // Pass 2: dS = P (dP - D) sc, dq += dS K.
  float acc[RM][Cf::ND];
#pragma unroll
  for (int a = 0; a < RM; ++a)
#pragma unroll
    for (int n = 0; n < Cf::ND; ++n) acc[a][n] = 0.0f;
  for (int j0 = 0; j0 < kend; j0 += C) {
    __syncthreads();  // the previous tile's Kb, dSt are read
    load_tile<C, D, true>(Kb, CS, k + kvo + int64_t(j0) * hd, T - j0, hd);
    load_tile<C, D, true>(Vt, CS, v + kvo + int64_t(j0) * hd, T - j0, hd);
    __syncthreads();
    float s[RM][CN] = {}, dp[RM][CN] = {};
    mm_tile<D, RM, CN>(s, Qt + ty * RM, RS, Kb + tx * CN, CS);
    mm_tile<D, RM, CN>(dp, dOt + ty * RM, RS, Vt + tx * CN, CS);
    __syncthreads();  // Kb is read: K natural goes there
    load_tile<C, D, false>(Kb, DS, k + kvo + int64_t(j0) * hd, T - j0, hd);
#pragma unroll
    for (int a = 0; a < RM; ++a) {
      const int i = q0 + ty * RM + a;
#pragma unroll
      for (int bb = 0; bb < CN; ++bb) {
        const float p = (j0 + tx * CN + bb <= i) ? expf(s[a][bb] * sc - m[a]) * linv[a] : 0.0f;
        dSt[(tx * CN + bb) * RS + ty * RM + a] = p * (dp[a][bb] - Di[a]) * sc;
      }
    }
    __syncthreads();
    mm_rows<Cf, C>(acc, dSt + ty * RM, RS, Kb + tx * Cf::VW, DS);
  }
  store_rows<Cf, true>(dq + qo + int64_t(q0) * hd, hd, T - q0, ty * RM, tx, acc, nullptr);
}

// ---- backward, key side: dk and dv -----------------------------------------------------------
// Rows are keys j (tile k0 + [0, R)), columns queries i; one block per (key tile, b, kv head).
template <class Cf>
__global__ void __launch_bounds__(kAttnThreads)
    attention_bwd_kv(const float* __restrict__ q, const float* __restrict__ k,
                     const float* __restrict__ v, const float* __restrict__ dout,
                     const float* __restrict__ st, int64_t N, float* __restrict__ dk,
                     float* __restrict__ dv, int T, int hd, int H, int G, float sc) {
  constexpr int D = Cf::D, RM = Cf::RM, CN = Cf::CN, R = Cf::R, C = Cf::C;
  constexpr int RS = Cf::RS, CS = Cf::CS, DS = Cf::DS;
  extern __shared__ float4 smem4[];
  float* Kt = reinterpret_cast<float*>(smem4);  // [D][RS]
  float* Vt = Kt + D * RS;                      // [D][RS]
  float* Qb = Vt + D * RS;                      // Qt [D][CS], then Q natural [C][DS]
  float* dOb = Qb + Cf::KV;                     // dOt [D][CS], then dO natural [C][DS]
  float* Ps = dOb + Cf::KV;                     // [C][RS]
  float* dSs = Ps + C * RS;                     // [C][RS]
  const int tx = threadIdx.x & 15, ty = threadIdx.x >> 4;
  const int k0 = int(blockIdx.x) * R, bkv = blockIdx.y, Hkv = H / G, b = bkv / Hkv, kh = bkv % Hkv;
  const int64_t kvo = int64_t(bkv) * T * hd;
  const bool want_dk = dk != nullptr;
  load_tile<R, D, true>(Kt, RS, k + kvo + int64_t(k0) * hd, T - k0, hd);
  load_tile<R, D, true>(Vt, RS, v + kvo + int64_t(k0) * hd, T - k0, hd);

  float ak[RM][Cf::ND], av[RM][Cf::ND];
#pragma unroll
  for (int a = 0; a < RM; ++a)
#pragma unroll
    for (int n = 0; n < Cf::ND; ++n) ak[a][n] = 0.0f, av[a][n] = 0.0f;
  for (int g = 0; g < G; ++g) {
    const int64_t bh = int64_t(b) * H + kh * G + g, qo = bh * T * hd;
    for (int i0 = k0 / C * C; i0 < T; i0 += C) {
      __syncthreads();  // the previous tile's buffers are read
      load_tile<C, D, true>(Qb, CS, q + qo + int64_t(i0) * hd, T - i0, hd);
      load_tile<C, D, true>(dOb, CS, dout + qo + int64_t(i0) * hd, T - i0, hd);
      float mi[CN], li[CN], Di[CN];
#pragma unroll
      for (int bb = 0; bb < CN; ++bb) {
        const int i = i0 + tx * CN + bb;
        const int64_t r = bh * T + (i < T ? i : 0);
        mi[bb] = st[r], li[bb] = st[N + r], Di[bb] = st[2 * N + r];
      }
      __syncthreads();
      float s[RM][CN] = {}, dp[RM][CN] = {};
      mm_tile<D, RM, CN>(s, Kt + ty * RM, RS, Qb + tx * CN, CS);
      if (want_dk) mm_tile<D, RM, CN>(dp, Vt + ty * RM, RS, dOb + tx * CN, CS);
      __syncthreads();  // Qb, dOb are read: the natural tiles go there
      if (want_dk) load_tile<C, D, false>(Qb, DS, q + qo + int64_t(i0) * hd, T - i0, hd);
      if (dv) load_tile<C, D, false>(dOb, DS, dout + qo + int64_t(i0) * hd, T - i0, hd);
#pragma unroll
      for (int a = 0; a < RM; ++a) {
        const int j = k0 + ty * RM + a;
#pragma unroll
        for (int bb = 0; bb < CN; ++bb) {
          const int i = i0 + tx * CN + bb;
          const float p = (j <= i && i < T) ? expf(s[a][bb] * sc - mi[bb]) * li[bb] : 0.0f;
          if (dv) Ps[(tx * CN + bb) * RS + ty * RM + a] = p;
          if (want_dk) dSs[(tx * CN + bb) * RS + ty * RM + a] = p * (dp[a][bb] - Di[bb]) * sc;
        }
      }
      __syncthreads();
      if (dv) mm_rows<Cf, C>(av, Ps + ty * RM, RS, dOb + tx * Cf::VW, DS);
      if (want_dk) mm_rows<Cf, C>(ak, dSs + ty * RM, RS, Qb + tx * Cf::VW, DS);
    }
  }
  if (dk) store_rows<Cf, true>(dk + kvo + int64_t(k0) * hd, hd, T - k0, ty * RM, tx, ak, nullptr);
  if (dv) store_rows<Cf, true>(dv + kvo + int64_t(k0) * hd, hd, T - k0, ty * RM, tx, av, nullptr);
}

// Opts a kernel into `bytes` of dynamic shared memory on device `dev`, once per (kernel, device).
template <class K>
void allow_smem(K* kernel, size_t bytes, int dev, std::atomic<uint64_t>& done) {
  const uint64_t bit = uint64_t(1) << (dev & 63);
  if (bytes <= 48 * 1024 || (done.load() & bit)) return;
  BN_CUDA(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(bytes)),
          dev);
  done.fetch_or(bit);
}

struct Dims {
  int B, H, Hkv, G, T, hd;
  float sc;
};
Dims dims_of(const Tensor& q, const Tensor& k, const char* op) {
  const Shape &sq = q.shape(), &sk = k.shape();
  Dims d{int(sq[0]), int(sq[1]), int(sk[1]), 1, int(sq[2]), int(sq[3]), 0.0f};
  BN_CHECK(d.hd >= 1 && d.hd <= 256, op, "head_dim ", d.hd,
           " not supported by the CUDA kernel (1..256)");
  BN_CHECK(int64_t(d.B) * d.H <= 65535, op, "B * H = ", int64_t(d.B) * d.H, " exceeds 65535");
  BN_CHECK(sq[2] < (int64_t(1) << 30), op, "T = ", sq[2], " too large");
  d.G = d.H / d.Hkv;
  d.sc = 1.0f / std::sqrt(float(d.hd));
  return d;
}

// Calls f(Cfg<...>{}) with the tile configuration of head_dim hd (rows x columns per block:
// 64 x 64 up to hd 64, 64 x 32 up to 128, 32 x 32 up to 256).
template <class F>
void with_cfg(int hd, F&& f) {
  if (hd <= 32)
    f(Cfg<32, 4, 4>{});
  else if (hd <= 64)
    f(Cfg<64, 4, 4>{});
  else if (hd <= 128)
    f(Cfg<128, 4, 2>{});
  else
    f(Cfg<256, 2, 2>{});
}

unsigned tiles(int T, int n) { return unsigned((T + n - 1) / n); }
}  // namespace

// q[B,H,T,hd], k,v[B,Hkv,T,hd] -> o = softmax(q k^T / sqrt(hd) + causal) v (see the header).
void attention(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& o) {
  if (const GemmPrecision p = gemm_precision(); p != GemmPrecision::F32)
    return attention_tc(q, k, v, o, p);
  On on(o);
  const Dims d = dims_of(q, k, "attention");
  if (d.B == 0 || d.H == 0 || d.T == 0) return;
  with_cfg(d.hd, [&](auto cfg) {
    using Cf = decltype(cfg);
    static std::atomic<uint64_t> done{0};
    constexpr size_t smem = fwd_smem<Cf>();
    allow_smem(attention_fwd<Cf>, smem, on.dev, done);
    const dim3 grid(tiles(d.T, Cf::R), unsigned(d.B * d.H));
    attention_fwd<Cf><<<grid, kAttnThreads, smem, on.s>>>(q.data(), k.data(), v.data(), o.data(),
                                                          d.T, d.hd, d.H, d.G, d.sc);
    on.launched("attention");
  });
}

// dq, dk, dv += the gradients of attention (any may be undefined); deterministic (see the
// header): attention_bwd_q (statistics, dq) then attention_bwd_kv (dk, dv) on the stream.
void attention_backward(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& dout,
                        const Tensor& dq, const Tensor& dk, const Tensor& dv) {
  if (const GemmPrecision p = gemm_precision(); p != GemmPrecision::F32)
    return attention_backward_tc(q, k, v, dout, dq, dk, dv, p);
  On on(dout);
  const Dims d = dims_of(q, k, "attention_backward");
  if (d.B == 0 || d.H == 0 || d.T == 0) return;
  if (!dq.defined() && !dk.defined() && !dv.defined()) return;
  const int64_t N = int64_t(d.B) * d.H * d.T;
  const Tensor stats = Tensor::empty(Shape{3, N}, DType::F32, dout.device());
  with_cfg(d.hd, [&](auto cfg) {
    using Cf = decltype(cfg);
    static std::atomic<uint64_t> done_q{0}, done_kv{0};
    constexpr size_t smem_q = bwd_q_smem<Cf>(), smem_kv = bwd_kv_smem<Cf>();
    allow_smem(attention_bwd_q<Cf>, smem_q, on.dev, done_q);
    const dim3 grid_q(tiles(d.T, Cf::R), unsigned(d.B * d.H));
    attention_bwd_q<Cf><<<grid_q, kAttnThreads, smem_q, on.s>>>(q.data(), k.data(), v.data(),
                                                                dout.data(), stats.data(), N,
                                                                opt(dq), d.T, d.hd, d.H, d.G, d.sc);
    on.launched("attention_backward(q)");
    if (!dk.defined() && !dv.defined()) return;
    allow_smem(attention_bwd_kv<Cf>, smem_kv, on.dev, done_kv);
    const dim3 grid_kv(tiles(d.T, Cf::R), unsigned(d.B * d.Hkv));
    attention_bwd_kv<Cf><<<grid_kv, kAttnThreads, smem_kv, on.s>>>(
        q.data(), k.data(), v.data(), dout.data(), stats.data(), N, opt(dk), opt(dv), d.T, d.hd,
        d.H, d.G, d.sc);
    on.launched("attention_backward(kv)");
  });
}

}  // namespace autograd::cuda
