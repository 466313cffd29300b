// CUDA kernels of the element-wise ops, activations, reductions, fills and the GEMM (cuBLAS).
// Semantics are those of autograd/cpu/elementwise.cpp (the reference); reductions run in double
// in a fixed order, so results are deterministic run to run.
#include <algorithm>

#include <cuda_bf16.h>

#include "autograd/cuda/common.cuh"

namespace autograd::cuda {

// t[i] = v for every element.
void fill(const Tensor& t, float v) {
  On on(t);
  float* p = t.data();
  for_each(
      on, t.numel(), [=] __device__(int64_t i) { p[i] = v; }, "fill");
}

// C_i = alpha op(A_i) op(B_i) + beta C_i (row-major, GemmArgs). cuBLAS is column-major: a
// row-major [r, c] matrix with leading dim ld is its transpose in column-major, so
// C^T = op(B)^T op(A)^T is computed as gemm(opB, opA, N, M, K, B, A), on the device's stream.
// precision F32: cublasSgemm under CUBLAS_PEDANTIC_MATH (no TF32, comparable with the CPU);
// TF32: fp32 operands on the tensor cores (CUBLAS_COMPUTE_32F_FAST_TF32); BF16: each operand's
// stored span rounded to bf16 (RNE) into pooled scratch, then cublasGemmEx with fp32 accumulation
// and fp32 C (CUBLAS_COMPUTE_32F).
namespace {
// Elements an operand of `rows` stored rows (leading dimension ld, `cols` used) spans over the
// batch: the span converted to bf16 (the gaps between rows are converted too, harmlessly).
int64_t span_of(int64_t rows, int64_t cols, int64_t ld, int64_t batch, int64_t stride) {
  const int64_t one = (rows - 1) * ld + cols;
  return batch > 1 ? (batch - 1) * stride + one : one;
}
// dst[0, n) = src rounded to nearest even (the one fp32 -> bf16 conversion of the backend).
void convert_bf16(const On& on, const float* src, int64_t n, void* dst) {
  auto* d = static_cast<__nv_bfloat16*>(dst);
  for_each(
      on, n, [=] __device__(int64_t i) { d[i] = __float2bfloat16_rn(src[i]); }, "round_bf16");
}
const void* to_bf16(const On& on, const float* src, int64_t n, Tensor& keep) {
  keep = Tensor::empty(Shape{n}, DType::BF16, Device::cuda(on.dev));
  convert_bf16(on, src, n, keep.raw());
  return keep.raw();
}
}  // namespace

// y (bf16) = x rounded to nearest even.
void round_bf16(const Tensor& x, const Tensor& y) {
  BN_CHECK(x.dtype() == DType::F32 && y.dtype() == DType::BF16 && y.numel() == x.numel(),
           "round_bf16", "input ", x.shape(), " ", dtype_name(x.dtype()), ", output ", y.shape(),
           " ", dtype_name(y.dtype()), " (need f32 -> bf16, same numel)");
  On on(y);
  convert_bf16(on, x.data(), x.numel(), y.raw());
}

void gemm(const GemmArgs& g) {
  if (g.M == 0 || g.N == 0) return;
  BN_CHECK((!g.A16 && !g.B16) || g.precision == GemmPrecision::BF16, "gemm",
           "bf16 operands with precision ", to_string(g.precision), " [", g.M, "x", g.K, "] @ [",
           g.K, "x", g.N, "]");
  cudaPointerAttributes attr{};
  BN_CUDA(cudaPointerGetAttributes(&attr, g.C), -1);
  const int dev = attr.device;
  cublasHandle_t h = cublas(dev);
  const cublasOperation_t opa = g.ta ? CUBLAS_OP_T : CUBLAS_OP_N;
  const cublasOperation_t opb = g.tb ? CUBLAS_OP_T : CUBLAS_OP_N;
  const int M = int(g.M), N = int(g.N), K = int(g.K);
  const int lda = int(std::max<int64_t>(g.lda, 1)), ldb = int(std::max<int64_t>(g.ldb, 1)),
            ldc = int(std::max<int64_t>(g.ldc, 1));
  const int batch = int(std::max<int64_t>(g.batch, 1));
  if (g.precision == GemmPrecision::F32) {
    if (g.batch == 0)
      BN_CUDA(cublasSgemm(h, opb, opa, N, M, K, &g.alpha, g.B, ldb, g.A, lda, &g.beta, g.C, ldc),
              dev);
    else
      BN_CUDA(cublasSgemmStridedBatched(h, opb, opa, N, M, K, &g.alpha, g.B, ldb, g.stride_b, g.A,
                                        lda, g.stride_a, &g.beta, g.C, ldc, g.stride_c, batch),
              dev);
    return;
  }
  const void *A = g.A, *B = g.B;
  cudaDataType_t ab = CUDA_R_32F;
  cublasComputeType_t ct = CUBLAS_COMPUTE_32F_FAST_TF32;
  Tensor ka, kb;  // bf16 scratch, returned to the pool after the (stream-ordered) GEMM
  if (g.precision == GemmPrecision::BF16 && K > 0) {
    On on(dev);
    A = g.A16 ? g.A16
              : to_bf16(on, g.A,
                        span_of(g.ta ? g.K : g.M, g.ta ? g.M : g.K, lda, batch, g.stride_a), ka);
    B = g.B16 ? g.B16
              : to_bf16(on, g.B,
                        span_of(g.tb ? g.N : g.K, g.tb ? g.K : g.N, ldb, batch, g.stride_b), kb);
    ab = CUDA_R_16BF;
    ct = CUBLAS_COMPUTE_32F;
  }
  BN_CUDA(cublasSetMathMode(h, CUBLAS_DEFAULT_MATH), dev);
  const cublasStatus_t st = cublasGemmStridedBatchedEx(
      h, opb, opa, N, M, K, &g.alpha, B, ab, ldb, g.stride_b, A, ab, lda, g.stride_a, &g.beta, g.C,
      CUDA_R_32F, ldc, g.stride_c, batch, ct, CUBLAS_GEMM_DEFAULT);
  cublasSetMathMode(h, CUBLAS_PEDANTIC_MATH);
  BN_CUDA(st, dev);
}

// y (f32) = a op b; b has a's shape, or is [D] broadcast over the rows of a[..., D]; a, b f32 or
// bf16 (each), widened exactly.
template <class TA, class TB>
void binary_of(const On& on, BinOp k, const Tensor& a, const Tensor& b, const Tensor& y) {
  const bool bc = a.shape() != b.shape();
  const TA* av = as<TA>(a);
  const TB* bv = as<TB>(b);
  float* yv = y.data();
  const int64_t D = bc ? b.shape().back() : 1;  // (rank-0 operands: no broadcast)
  const int op = int(k);
  for_each(
      on, y.numel(),
      [=] __device__(int64_t i) {
        const float x = ld(av, i), z = ld(bv, bc ? i % D : i);
        yv[i] = op == int(BinOp::Add) ? x + z : op == int(BinOp::Sub) ? x - z : x * z;
      },
      "binary");
}
void binary(BinOp k, const Tensor& a, const Tensor& b, const Tensor& y) {
  On on(y);
  const bool a16 = is_bf16(a, "binary", "a"), b16 = is_bf16(b, "binary", "b");
  if (a16 && b16)
    binary_of<bf16_t, bf16_t>(on, k, a, b, y);
  else if (a16)
    binary_of<bf16_t, float>(on, k, a, b, y);
  else if (b16)
    binary_of<float, bf16_t>(on, k, a, b, y);
  else
    binary_of<float, float>(on, k, a, b, y);
}

// d += alpha s (same numel).
void axpy(const Tensor& dt, const Tensor& st, float alpha) {
  On on(dt);
  const float* s = st.data();
  float* d = dt.data();
  for_each(
      on, st.numel(), [=] __device__(int64_t i) { d[i] += alpha * s[i]; }, "axpy");
}

// d += dy b; b as in `binary` ([D] broadcast over rows when bcast), f32 or bf16.
template <class TB>
void mul_acc_of(const On& on, const Tensor& dt, const Tensor& dyt, const Tensor& b, bool bcast) {
  float* d = dt.data();
  const float* dy = dyt.data();
  const TB* bv = as<TB>(b);
  const int64_t D = bcast ? b.shape().back() : 1;
  for_each(
      on, dyt.numel(), [=] __device__(int64_t i) { d[i] += dy[i] * ld(bv, bcast ? i % D : i); },
      "mul_acc");
}
void mul_acc(const Tensor& dt, const Tensor& dyt, const Tensor& b, bool bcast) {
  On on(dt);
  if (is_bf16(b, "mul_acc", "b"))
    mul_acc_of<bf16_t>(on, dt, dyt, b, bcast);
  else
    mul_acc_of<float>(on, dt, dyt, b, bcast);
}

// d[j] += sum_r sign dy[r, j] (a undefined) or sum_r dy[r, j] a[r, j], in double over fixed row
// chunks (column_sum: deterministic).
void row_sum(const Tensor& dt, const Tensor& dyt, const Tensor& a, float sgn) {
  On on(dt);
  const int64_t D = dt.numel(), rows = dyt.numel() / D;
  const float* dy = dyt.data();
  const float* av = a.defined() ? a.data() : nullptr;
  float* d = dt.data();
  column_sum(
      on, rows, D,
      [=] __device__(int64_t r, int64_t j) {
        return av ? double(dy[r * D + j]) * av[r * D + j] : double(sgn * dy[r * D + j]);
      },
      [=] __device__(int64_t j, double acc) { d[j] += float(acc); }, "row_sum");
}

// y = s a.
void scale(const Tensor& a, float s, const Tensor& y) {
  On on(y);
  const float* av = a.data();
  float* yv = y.data();
  for_each(
      on, a.numel(), [=] __device__(int64_t i) { yv[i] = s * av[i]; }, "scale");
}

namespace {
// y[0] = sum(a) (times factor when mean): one block, each thread sums a fixed strided subset in
// double, then a fixed tree; deterministic for any input.
__global__ void sum_all_kernel(const float* a, int64_t n, bool mean, float factor, float* y) {
  __shared__ double sh[kThreads];
  double p = 0;
  for (int64_t i = threadIdx.x; i < n; i += kThreads) p += a[i];
  const double s = block_sum(p, sh);
  if (threadIdx.x == 0) y[0] = float(mean ? s * factor : s);
}
}  // namespace

void sum_all(const Tensor& a, bool mean, float factor, const Tensor& y) {
  On on(y);
  sum_all_kernel<<<1, kThreads, 0, on.s>>>(a.data(), a.numel(), mean, factor, y.data());
  on.launched("sum_all");
}

// d[i] += dy[0] factor (dy read on the device: no host round trip).
void add_scalar(const Tensor& dt, const Tensor& dyt, float factor) {
  On on(dt);
  const float* dy = dyt.data();
  float* d = dt.data();
  for_each(
      on, dt.numel(), [=] __device__(int64_t i) { d[i] += dy[0] * factor; }, "add_scalar");
}

// y (f32) = f(x): relu max(x, 0), relu2 relu(x)^2, silu x / (1 + e^-x); x f32 or bf16.
template <class T>
void unary_of(const On& on, UnOp k, const Tensor& x, const Tensor& y) {
  const T* xv = as<T>(x);
  float* yv = y.data();
  const int op = int(k);
  for_each(
      on, x.numel(),
      [=] __device__(int64_t i) {
        const float v = ld(xv, i);
        yv[i] = op == int(UnOp::Relu)    ? (v > 0 ? v : 0.0f)
                : op == int(UnOp::Relu2) ? (v > 0 ? v * v : 0.0f)
                                         : v / (1.0f + expf(-v));
      },
      "unary");
}
void unary(UnOp k, const Tensor& x, const Tensor& y) {
  On on(y);
  if (is_bf16(x, "unary", "x"))
    unary_of<bf16_t>(on, k, x, y);
  else
    unary_of<float>(on, k, x, y);
}

// dx += dy f'(x): relu 1[x>0], relu2 2x 1[x>0], silu s (1 + x (1 - s)) with s = sigmoid(x).
template <class T>
void unary_backward_of(const On& on, UnOp k, const Tensor& x, const Tensor& dyt,
                       const Tensor& dxt) {
  const float* dy = dyt.data();
  const T* xv = as<T>(x);
  float* dx = dxt.data();
  const int op = int(k);
  for_each(
      on, x.numel(),
      [=] __device__(int64_t i) {
        const float v = ld(xv, i);
        float der;
        if (op == int(UnOp::Relu))
          der = v > 0 ? 1.0f : 0.0f;
        else if (op == int(UnOp::Relu2))
          der = v > 0 ? 2.0f * v : 0.0f;
        else {
          const float s = 1.0f / (1.0f + expf(-v));
          der = s * (1.0f + v * (1.0f - s));
        }
        dx[i] += dy[i] * der;
      },
      "unary_backward");
}
void unary_backward(UnOp k, const Tensor& x, const Tensor& dyt, const Tensor& dxt) {
  On on(dxt);
  if (is_bf16(x, "unary_backward", "x"))
    unary_backward_of<bf16_t>(on, k, x, dyt, dxt);
  else
    unary_backward_of<float>(on, k, x, dyt, dxt);
}

// y = relu(g)^2 u, g and u both f32 or both bf16, y f32 or bf16 (rounded once from the f32
// product).
template <class E, class Y>
void relu2_mul_of(const On& on, const Tensor& g, const Tensor& u, const Tensor& y) {
  const E *gv = as<E>(g), *uv = as<E>(u);
  Y* yv = as<Y>(y);
  for_each(
      on, g.numel(),
      [=] __device__(int64_t i) {
        const float gi = ld(gv, i);
        const float r = gi > 0 ? gi : 0.0f;
        st(yv, i, (r * r) * ld(uv, i));
      },
      "relu2_mul");
}
bool same_float_pair(const Tensor& g, const Tensor& u, const char* op) {
  const bool g16 = is_bf16(g, op, "g");
  BN_CHECK(g16 == is_bf16(u, op, "u"), op, "g ", g.describe(), " and u ", u.describe(),
           " must both be f32 or both bf16");
  return g16;
}
void relu2_mul(const Tensor& g, const Tensor& u, const Tensor& y) {
  On on(y);
  const bool e16 = same_float_pair(g, u, "relu2_mul"), y16 = is_bf16(y, "relu2_mul", "y");
  if (e16 && y16)
    relu2_mul_of<bf16_t, bf16_t>(on, g, u, y);
  else if (e16)
    relu2_mul_of<bf16_t, float>(on, g, u, y);
  else if (y16)
    relu2_mul_of<float, bf16_t>(on, g, u, y);
  else
    relu2_mul_of<float, float>(on, g, u, y);
}

// dg += (dy u)(2 relu(g)), du += dy relu(g)^2 (either undefined = not needed); g and u are f32,
// or both bf16 (saved_activation), read as the floats they hold.
template <class E>
void relu2_mul_backward_of(const On& on, const Tensor& g, const Tensor& u, const Tensor& dyt,
                           float* dg, float* du) {
  const float* dy = dyt.data();
  const E *gv = as<E>(g), *uv = as<E>(u);
  for_each(
      on, g.numel(),
      [=] __device__(int64_t i) {
        const float gi = ld(gv, i), ui = ld(uv, i);
        const float r = gi > 0 ? gi : 0.0f;
        if (dg) dg[i] += (dy[i] * ui) * (2.0f * r);
        if (du) du[i] += dy[i] * (r * r);
      },
      "relu2_mul_backward");
}
void relu2_mul_backward(const Tensor& g, const Tensor& u, const Tensor& dyt, const Tensor& dgt,
                        const Tensor& dut) {
  On on(dyt);
  if (same_float_pair(g, u, "relu2_mul_backward"))
    relu2_mul_backward_of<bf16_t>(on, g, u, dyt, opt(dgt), opt(dut));
  else
    relu2_mul_backward_of<float>(on, g, u, dyt, opt(dgt), opt(dut));
}

}  // namespace autograd::cuda
