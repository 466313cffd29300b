// The CUDA device: error checks, one stream and one cuBLAS handle per GPU, DeviceMemory
// (cudaMalloc/cudaFree under the caching pool of tensor.cpp; copies and clears on the device's
// stream) and the autograd kernel table for DeviceType::CUDA, registered by init().
#include <mutex>
#include <vector>

#include "autograd/cuda/common.cuh"
#include "autograd/cuda/cuda.h"

namespace autograd::cuda {

void check(cudaError_t e, const char* call, int dev) {
  if (e != cudaSuccess)
    fail("cuda: ", call, " failed on cuda:", dev, ": ", cudaGetErrorName(e), " (",
         cudaGetErrorString(e), ")");
}
void check(cublasStatus_t s, const char* call, int dev) {
  if (s != CUBLAS_STATUS_SUCCESS)
    fail("cublas: ", call, " failed on cuda:", dev, ": ", cublasGetStatusName(s), " (",
         cublasGetStatusString(s), ")");
}

namespace {
struct PerDevice {
  cudaStream_t stream = nullptr;
  cublasHandle_t blas = nullptr;
};
std::mutex g_mu;
std::vector<PerDevice>& devices() {
  static auto* v = new std::vector<PerDevice>();  // leaked: tensors may die at static destruction
  return *v;
}
PerDevice& per_device(int index) {
  std::lock_guard<std::mutex> lk(g_mu);
  auto& v = devices();
  if (int(v.size()) <= index) v.resize(size_t(index) + 1);
  PerDevice& p = v[size_t(index)];
  if (!p.stream) {
    BN_CUDA(cudaSetDevice(index), index);
    BN_CUDA(cudaStreamCreateWithFlags(&p.stream, cudaStreamNonBlocking), index);
  }
  return p;
}
}  // namespace

cudaStream_t stream(int index) {
  cudaStream_t s = per_device(index).stream;
  BN_CUDA(cudaSetDevice(index), index);
  return s;
}
cublasHandle_t cublas(int index) {
  PerDevice& p = per_device(index);
  BN_CUDA(cudaSetDevice(index), index);
  std::lock_guard<std::mutex> lk(g_mu);
  if (!p.blas) {
    BN_CUDA(cublasCreate(&p.blas), index);
    BN_CUDA(cublasSetStream(p.blas, p.stream), index);
    // fp32 results comparable with the CPU: no TF32, no reduced-precision reductions.
    BN_CUDA(cublasSetMathMode(p.blas, CUBLAS_PEDANTIC_MATH), index);
  }
  return p.blas;
}

On::On(const Tensor& t) : On(t.device().index) {}
On::On(int index) : dev(index), s(stream(index)) {}
void On::launched(const char* kernel) const {
  const cudaError_t e = cudaGetLastError();
  if (e != cudaSuccess)
    fail("cuda: kernel ", kernel, " failed to launch on cuda:", dev, ": ", cudaGetErrorName(e),
         " (", cudaGetErrorString(e), ")");
}

void synchronize(int index) { BN_CUDA(cudaStreamSynchronize(stream(index)), index); }

int device_count() {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    (void)cudaGetLastError();  // clear the sticky-free error state
    return 0;
  }
  return n;
}

// ---- DeviceMemory ---------------------------------------------------------------------------
namespace {
void* cuda_alloc(size_t bytes, int index) {
  void* p = nullptr;
  BN_CUDA(cudaSetDevice(index), index);
  const size_t rounded = (std::max<size_t>(bytes, 1) + 255) / 256 * 256;
  const cudaError_t e = cudaMalloc(&p, rounded);
  if (e != cudaSuccess) {
    (void)cudaGetLastError();
    fail("Storage: out of memory allocating ", rounded, " bytes on cuda:", index,
         " (cudaMalloc: ", cudaGetErrorString(e), ")");
  }
  return p;
}
void cuda_free(void* p, int index) {
  // Frees from a static destructor after the driver shut down are ignored.
  if (cudaSetDevice(index) != cudaSuccess || cudaFree(p) != cudaSuccess) (void)cudaGetLastError();
}
void cuda_zero(void* p, size_t bytes, int index) {
  if (bytes) BN_CUDA(cudaMemsetAsync(p, 0, bytes, stream(index)), index);
}
// Host <-> device copies wait for the stream (the host buffer may go away); device -> device
// copies are queued on the destination's stream (on the source's when only it is a GPU).
void cuda_copy(void* dst, Device dd, const void* src, Device sd, size_t bytes) {
  if (!bytes) return;
  const int dev = dd.is_cpu() ? sd.index : dd.index;
  cudaStream_t s = stream(dev);
  if (!dd.is_cpu() && !sd.is_cpu() && dd.index != sd.index)
    BN_CUDA(cudaStreamSynchronize(stream(sd.index)), sd.index);
  BN_CUDA(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDefault, s), dev);
  if (dd.is_cpu() || sd.is_cpu() || dd.index != sd.index) BN_CUDA(cudaStreamSynchronize(s), dev);
}
const DeviceMemory kCudaMemory{cuda_alloc, cuda_free, cuda_zero, cuda_copy, synchronize};

const Kernels& cuda_kernels() {
  static const Kernels k{
      .device = "cuda",
      .fill = cuda::fill,
      .gemm = cuda::gemm,
      .round_bf16 = cuda::round_bf16,
      .binary = cuda::binary,
      .axpy = cuda::axpy,
      .mul_acc = cuda::mul_acc,
      .row_sum = cuda::row_sum,
      .scale = cuda::scale,
      .sum_all = cuda::sum_all,
      .add_scalar = cuda::add_scalar,
      .unary = cuda::unary,
      .unary_backward = cuda::unary_backward,
      .relu2_mul = cuda::relu2_mul,
      .relu2_mul_backward = cuda::relu2_mul_backward,
      .transpose = cuda::transpose,
      .band_copy = cuda::band_copy,
      .embedding = cuda::embedding,
      .embedding_backward = cuda::embedding_backward,
      .rmsnorm = cuda::rmsnorm,
      .rmsnorm_backward = cuda::rmsnorm_backward,
      .softmax = cuda::softmax,
      .softmax_backward = cuda::softmax_backward,
      .rope = cuda::rope,
      .attention = cuda::attention,
      .attention_backward = cuda::attention_backward,
      .cross_entropy = cuda::cross_entropy,
      .cross_entropy_backward = cuda::cross_entropy_backward,
  };
  return k;
}
}  // namespace

void init() {
  int n = 0;
  const cudaError_t e = cudaGetDeviceCount(&n);
  if (e != cudaSuccess) {
    (void)cudaGetLastError();
    fail("no CUDA device (cudaGetDeviceCount: ", cudaGetErrorName(e), ": ", cudaGetErrorString(e),
         ")");
  }
  if (n == 0) fail("no CUDA device (cudaGetDeviceCount reports 0 devices)");
  register_device_memory(DeviceType::CUDA, &kCudaMemory);
  register_kernels(DeviceType::CUDA, &cuda_kernels());
}

}  // namespace autograd::cuda
