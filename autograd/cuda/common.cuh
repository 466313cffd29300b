// Shared helpers of the CUDA kernels: error checks naming the call and the device, the one
// stream and cuBLAS handle per device, and launch helpers (grid-stride element-wise maps).
#pragma once
#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>

#include "autograd/dispatch.h"
#include "autograd/error.h"

namespace autograd::cuda {

// Throws autograd::Error "cuda: <call> failed on cuda:<dev>: <error string>".
void check(cudaError_t e, const char* call, int dev);
void check(cublasStatus_t s, const char* call, int dev);
#define BN_CUDA(call, dev) ::autograd::cuda::check((call), #call, (dev))

// The stream (and cuBLAS handle) of device `index`, created on first use; makes it current.
cudaStream_t stream(int index);
cublasHandle_t cublas(int index);

// The device of a kernel's tensors made current; its stream.
struct On {
  int dev;
  cudaStream_t s;
  explicit On(const Tensor& t);
  explicit On(int index);
  // Checks the launch that was just made (cudaGetLastError), naming the kernel.
  void launched(const char* kernel) const;
};

constexpr int kThreads = 256;
inline unsigned blocks_for(int64_t n) {
  const int64_t b = (n + kThreads - 1) / kThreads;
  return unsigned(b < 1 ? 1 : (b > 65535 * 8 ? 65535 * 8 : b));
}

template <class F>
__global__ void map_kernel(int64_t n, F f) {
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x)
    f(i);
}
// Runs f(i) for i < n on the stream of `on` (f: a __device__ lambda).
template <class F>
void for_each(const On& on, int64_t n, F f, const char* name) {
  if (n <= 0) return;
  map_kernel<<<blocks_for(n), kThreads, 0, on.s>>>(n, f);
  on.launched(name);
}

// Column sums of a [rows, D] expression, deterministic and parallel over rows: for every column j,
// finish(j, sum_r term(r, j)) with the sum in double taken over fixed chunks of kSumChunk rows
// (one thread per chunk and column, rows in order), then over the chunks in order. term and
// finish are __device__ lambdas; the partials live in pooled scratch.
constexpr int64_t kSumChunk = 64;
template <class Term, class Finish>
void column_sum(const On& on, int64_t rows, int64_t D, Term term, Finish finish, const char* name) {
  if (D <= 0) return;
  const int64_t C = std::max<int64_t>(1, (rows + kSumChunk - 1) / kSumChunk);
  Tensor part =
      Tensor::empty(Shape{C * D * int64_t(sizeof(double))}, DType::U8, Device::cuda(on.dev));
  double* p = static_cast<double*>(part.raw());
  for_each(
      on, C * D,
      [=] __device__(int64_t i) {
        const int64_t c = i / D, j = i % D;
        const int64_t r1 = (c + 1) * kSumChunk < rows ? (c + 1) * kSumChunk : rows;
        double acc = 0;
        for (int64_t r = c * kSumChunk; r < r1; ++r) acc += term(r, j);
        p[i] = acc;
      },
      name);
  for_each(
      on, D,
      [=] __device__(int64_t j) {
        double acc = 0;
        for (int64_t c = 0; c < C; ++c) acc += p[c * D + j];
        finish(j, acc);
      },
      name);
}

// Max / sum of v over aligned groups of `Lanes` lanes of a warp (Lanes = 2, 4, .., 32); every lane
// of a group gets the bit-identical result (xor butterfly of commutative operations).
template <int Lanes>
__device__ __forceinline__ float lanes_max(float v) {
#pragma unroll
  for (int o = Lanes / 2; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}
template <int Lanes>
__device__ __forceinline__ float lanes_sum(float v) {
#pragma unroll
  for (int o = Lanes / 2; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

// Sum of v over the block (blockDim.x == kThreads); every thread gets the result. Fixed tree
// order, so deterministic. `sh` is kThreads doubles of shared memory.
__device__ inline double block_sum(double v, double* sh) {
  sh[threadIdx.x] = v;
  __syncthreads();
  for (int w = kThreads / 2; w > 0; w /= 2) {
    if (int(threadIdx.x) < w) sh[threadIdx.x] += sh[threadIdx.x + w];
    __syncthreads();
  }
  const double r = sh[0];
  __syncthreads();
  return r;
}
__device__ inline float block_max(float v, float* sh) {
  sh[threadIdx.x] = v;
  __syncthreads();
  for (int w = kThreads / 2; w > 0; w /= 2) {
    if (int(threadIdx.x) < w) sh[threadIdx.x] = fmaxf(sh[threadIdx.x], sh[threadIdx.x + w]);
    __syncthreads();
  }
  const float r = sh[0];
  __syncthreads();
  return r;
}

// Element access of the float kernels that take f32 or bf16 (activation_dtype): loads widen to
// f32 exactly, stores round to nearest even (the one f32 -> bf16 conversion, as round_bf16).
using bf16_t = __nv_bfloat16;
__device__ __forceinline__ float ld(const float* p, int64_t i) { return p[i]; }
__device__ __forceinline__ float ld(const bf16_t* p, int64_t i) { return __bfloat162float(p[i]); }
__device__ __forceinline__ void st(float* p, int64_t i, float v) { p[i] = v; }
__device__ __forceinline__ void st(bf16_t* p, int64_t i, float v) { p[i] = __float2bfloat16_rn(v); }
// t's elements as T (float or bf16_t), unchecked: the caller dispatched on t's dtype.
template <class T>
T* as(const Tensor& t) {
  return static_cast<T*>(t.raw());
}
// true for a bf16 tensor, false for an f32 one; throws naming op and the operand otherwise.
bool is_bf16(const Tensor& t, const char* op, const char* what);

// Pointer of an optional gradient (null when undefined).
inline float* opt(const Tensor& t) { return t.defined() ? t.data() : nullptr; }

// The entries, by file (each states shapes and equation at its definition).
void fill(const Tensor& t, float v);
void gemm(const GemmArgs& g);
void round_bf16(const Tensor& x, const Tensor& y);
void binary(BinOp op, const Tensor& a, const Tensor& b, const Tensor& y);
void axpy(const Tensor& d, const Tensor& s, float alpha);
void mul_acc(const Tensor& d, const Tensor& dy, const Tensor& b, bool bcast);
void row_sum(const Tensor& d, const Tensor& dy, const Tensor& a, float sign);
void scale(const Tensor& a, float s, const Tensor& y);
void sum_all(const Tensor& a, bool mean, float factor, const Tensor& y);
void add_scalar(const Tensor& d, const Tensor& dy, float factor);
void unary(UnOp op, const Tensor& x, const Tensor& y);
void unary_backward(UnOp op, const Tensor& x, const Tensor& dy, const Tensor& dx);
void relu2_mul(const Tensor& g, const Tensor& u, const Tensor& y);
void relu2_mul_backward(const Tensor& g, const Tensor& u, const Tensor& dy, const Tensor& dg,
                        const Tensor& du);
void transpose(const Tensor& x, const Tensor& y, const Shape& s, int d0, int d1, bool accumulate);
void band_copy(const Tensor& big, const Tensor& small, int dim, int64_t at, bool to_small,
               bool accumulate);
void embedding(const Tensor& w, const Tensor& ids, const Tensor& y);
void embedding_backward(const Tensor& ids, const Tensor& dy, const Tensor& dw);
void rmsnorm(const Tensor& x, const Tensor& g, float eps, const Tensor& y, const Tensor& rinv);
void rmsnorm_backward(const Tensor& x, const Tensor& g, const Tensor& rinv, const Tensor& dy,
                      const Tensor& dx, const Tensor& dg);
void softmax(const Tensor& x, const Tensor& y);
void softmax_backward(const Tensor& y, const Tensor& dy, const Tensor& dx);
void rope(const Tensor& x, const Tensor& y, float theta, int64_t pos0, bool inverse,
          bool accumulate);
void attention(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& o);
void attention_backward(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& dout,
                        const Tensor& dq, const Tensor& dk, const Tensor& dv);
// attention_tc.cu: the tensor-core route of the two above (precision bf16 or tf32).
void attention_tc(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& o,
                  GemmPrecision p);
void attention_backward_tc(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& dout,
                           const Tensor& dq, const Tensor& dk, const Tensor& dv, GemmPrecision p);
void ce_chunk(const Tensor& z, int64_t v0, const Tensor& targets, const Tensor& state);
void ce_finish(const Tensor& state, const Tensor& targets, int32_t ignore, int64_t count,
               const Tensor& lse, const Tensor& loss);
void ce_chunk_backward(const Tensor& z, int64_t v0, const Tensor& targets, int32_t ignore,
                       int64_t count, const Tensor& lse, const Tensor& dy, const Tensor& y);

}  // namespace autograd::cuda
