// Device facts and GEMM ceilings for `bitnet bench --device cuda`: name, memory, the datasheet
// bf16 peak, and cuBLAS rates measured at a step's shapes with CUDA events.
#include <cuda_bf16.h>

#include <algorithm>
#include <string>
#include <vector>

#include "autograd/cuda/common.cuh"
#include "autograd/cuda/cuda.h"

namespace autograd::cuda {

std::string device_name(int index) {
  cudaDeviceProp p{};
  BN_CUDA(cudaGetDeviceProperties(&p, index), index);
  return p.name;
}

size_t device_total_memory(int index) {
  cudaDeviceProp p{};
  BN_CUDA(cudaGetDeviceProperties(&p, index), index);
  return p.totalGlobalMem;
}

// Dense (not 2:4 sparse) bf16 tensor-core peaks from NVIDIA's datasheets, SXM parts.
double nominal_bf16_tflops(int index) {
  const std::string n = device_name(index);
  if (n.find("H200") != std::string::npos || n.find("H100") != std::string::npos) return 989.4;
  if (n.find("A100") != std::string::npos) return 312.0;
  if (n.find("B200") != std::string::npos) return 2250.0;
  return 0;
}

namespace {
// Pseudo-random small values: bf16 in [-0.5, 0.5), int8 in {-1, 0, 1} x 1..8, f32 in [-0.5, 0.5).
__device__ inline uint32_t mix(int64_t i) {
  uint32_t x = uint32_t(i) * 2654435761u + 0x9e3779b9u;
  x ^= x >> 15;
  x *= 2246822519u;
  return x ^ (x >> 13);
}
}  // namespace

double gemm_rate(int index, const std::string& kind, int64_t M, int64_t N, int64_t K, int reps) {
  const bool i8 = kind == "int8", bf = kind == "bf16", tf = kind == "tf32";
  if (!i8 && !bf && !tf && kind != "fp32")
    fail("gemm_rate: unknown kind '", kind, "' (expected bf16, int8, tf32 or fp32)");
  const Device dev = Device::cuda(index);
  On on(index);
  const DType in = i8 ? DType::I8 : bf ? DType::BF16 : DType::F32;
  Tensor a = Tensor::empty(Shape{M, K}, in, dev), b = Tensor::empty(Shape{N, K}, in, dev);
  Tensor c = Tensor::empty(Shape{M, N}, i8 ? DType::I32 : DType::F32, dev);
  for (Tensor* t : {&a, &b}) {
    void* p = t->raw();
    const int64_t n = t->numel();
    if (i8)
      for_each(
          on, n,
          [=] __device__(int64_t i) {
            const uint32_t h = mix(i);
            static_cast<int8_t*>(p)[i] = int8_t(int(h % 3) - 1) * int8_t(1 + (h >> 8) % 8);
          },
          "gemm_rate(fill)");
    else if (bf)
      for_each(
          on, n,
          [=] __device__(int64_t i) {
            static_cast<__nv_bfloat16*>(p)[i] =
                __float2bfloat16(float(mix(i) >> 8) * 0x1p-24f - 0.5f);
          },
          "gemm_rate(fill)");
    else
      for_each(
          on, n,
          [=] __device__(int64_t i) {
            static_cast<float*>(p)[i] = float(mix(i) >> 8) * 0x1p-24f - 0.5f;
          },
          "gemm_rate(fill)");
  }
  cublasHandle_t h = cublas(index);
  const int m = int(M), n = int(N), k = int(K);
  const int32_t ia = 1, ib = 0;
  const float fa = 1.0f, fb = 0.0f;
  BN_CUDA(cublasSetMathMode(h, CUBLAS_DEFAULT_MATH), index);
  auto run = [&] {
    // column-major C^T[N, M] = B[N, K] (stored K x N col-major, transposed) x A^T
    const cudaDataType_t t = i8 ? CUDA_R_8I : bf ? CUDA_R_16BF : CUDA_R_32F;
    const cublasComputeType_t ct = i8   ? CUBLAS_COMPUTE_32I
                                   : tf ? CUBLAS_COMPUTE_32F_FAST_TF32
                                   : bf ? CUBLAS_COMPUTE_32F
                                        : CUBLAS_COMPUTE_32F_PEDANTIC;
    const void* alpha = i8 ? static_cast<const void*>(&ia) : &fa;
    const void* beta = i8 ? static_cast<const void*>(&ib) : &fb;
    BN_CUDA(cublasGemmEx(h, CUBLAS_OP_T, CUBLAS_OP_N, n, m, k, alpha, b.raw(), t, k, a.raw(), t, k,
                         beta, c.raw(), i8 ? CUDA_R_32I : CUDA_R_32F, n, ct, CUBLAS_GEMM_DEFAULT),
            index);
  };
  cudaEvent_t e0, e1;
  BN_CUDA(cudaEventCreate(&e0), index);
  BN_CUDA(cudaEventCreate(&e1), index);
  std::vector<float> ms;
  for (int r = 0; r < reps + 2; ++r) {
    BN_CUDA(cudaEventRecord(e0, on.s), index);
    run();
    BN_CUDA(cudaEventRecord(e1, on.s), index);
    BN_CUDA(cudaEventSynchronize(e1), index);
    float t = 0;
    BN_CUDA(cudaEventElapsedTime(&t, e0, e1), index);
    if (r >= 2) ms.push_back(t);
  }
  cudaEventDestroy(e0);
  cudaEventDestroy(e1);
  BN_CUDA(cublasSetMathMode(h, CUBLAS_PEDANTIC_MATH), index);
  std::sort(ms.begin(), ms.end());
  const double med = ms[ms.size() / 2];
  return 2.0 * double(M) * double(N) * double(K) / (med * 1e-3) / 1e12;
}

}  // namespace autograd::cuda
