// The CUDA device: error checks, one stream and one cuBLAS handle per GPU, DeviceMemory
// (cudaMalloc/cudaFree under the caching pool of tensor.cpp; copies and clears on the device's
// stream) and the autograd kernel table for DeviceType::CUDA, registered by init().
#include <atomic>
#include <cstring>
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
bool is_bf16(const Tensor& t, const char* op, const char* what) {
  if (t.dtype() == DType::BF16) return true;
  t.check_dtype(DType::F32, op, what);  // "op: what is i8 [..] on cuda:0, expected f32"
  return false;
}

void check(cublasStatus_t s, const char* call, int dev) {
  if (s != CUBLAS_STATUS_SUCCESS)
    fail("cublas: ", call, " failed on cuda:", dev, ": ", cublasGetStatusName(s), " (",
         cublasGetStatusString(s), ")");
}

namespace {
// Small host -> device copies (token ids, targets, loss seeds: at most kSlotBytes) go through a
// ring of pinned staging slots: the bytes are copied into the next slot and the upload is queued
// from there, so the call returns without waiting for the device; a slot is reused once the event
// recorded after its upload has completed (the host waits only when it is kSlots uploads ahead).
constexpr size_t kSlotBytes = size_t(256) << 10;
constexpr int kSlots = 32;
struct Staging {
  char* base = nullptr;  // kSlots * kSlotBytes of pinned host memory
  cudaEvent_t done[kSlots] = {};
  int next = 0;
};

struct PerDevice {
  cudaStream_t stream = nullptr;
  cublasHandle_t blas = nullptr;
  Staging staging;
  std::mutex staging_mu;
  std::atomic<int64_t> host_waits{0};
};
std::mutex g_mu;
constexpr int kMaxDevices = 64;
std::vector<PerDevice>& devices() {
  // leaked: tensors may die at static destruction; fixed size: the entries hold a mutex
  static auto* v = new std::vector<PerDevice>(kMaxDevices);
  return *v;
}
PerDevice& per_device(int index) {
  if (index < 0 || index >= kMaxDevices) fail("cuda: device index ", index, " out of range");
  std::lock_guard<std::mutex> lk(g_mu);
  PerDevice& p = devices()[size_t(index)];
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

namespace {
// The host waits for device `index`'s stream (counted: host_waits).
void wait_stream(int index) {
  ++per_device(index).host_waits;
  BN_CUDA(cudaStreamSynchronize(stream(index)), index);
}
}  // namespace

void synchronize(int index) { wait_stream(index); }
int64_t host_waits(int index) { return per_device(index).host_waits.load(); }

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
// Queues a host -> device upload of at most kSlotBytes through the staging ring (no host wait
// unless the slot's previous upload is still pending).
void staged_upload(void* dst, const void* src, size_t bytes, int dev) {
  PerDevice& p = per_device(dev);
  cudaStream_t s = stream(dev);
  std::lock_guard<std::mutex> lk(p.staging_mu);
  Staging& st = p.staging;
  if (!st.base) {
    void* b = nullptr;
    BN_CUDA(cudaHostAlloc(&b, kSlots * kSlotBytes, cudaHostAllocDefault), dev);
    st.base = static_cast<char*>(b);
    for (cudaEvent_t& e : st.done)
      BN_CUDA(cudaEventCreateWithFlags(&e, cudaEventDisableTiming), dev);
    for (cudaEvent_t& e : st.done) BN_CUDA(cudaEventRecord(e, s), dev);  // all slots free
  }
  const int k = st.next;
  st.next = (k + 1) % kSlots;
  const cudaError_t q = cudaEventQuery(st.done[k]);
  if (q == cudaErrorNotReady) {
    ++p.host_waits;
    BN_CUDA(cudaEventSynchronize(st.done[k]), dev);
  } else {
    BN_CUDA(q, dev);
  }
  char* slot = st.base + size_t(k) * kSlotBytes;
  std::memcpy(slot, src, bytes);
  BN_CUDA(cudaMemcpyAsync(dst, slot, bytes, cudaMemcpyHostToDevice, s), dev);
  BN_CUDA(cudaEventRecord(st.done[k], s), dev);
}

// Device -> host and cross-device copies wait for the stream (the host buffer may go away; the
// other device's stream is not ordered with this one); small host -> device uploads are staged
// and return at once, larger ones wait; device -> device copies on one GPU are queued on its
// stream.
void cuda_copy(void* dst, Device dd, const void* src, Device sd, size_t bytes) {
  if (!bytes) return;
  const int dev = dd.is_cpu() ? sd.index : dd.index;
  if (sd.is_cpu() && !dd.is_cpu() && bytes <= kSlotBytes)
    return staged_upload(dst, src, bytes, dev);
  cudaStream_t s = stream(dev);
  if (!dd.is_cpu() && !sd.is_cpu() && dd.index != sd.index) wait_stream(sd.index);
  BN_CUDA(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDefault, s), dev);
  if (dd.is_cpu() || sd.is_cpu() || dd.index != sd.index) wait_stream(dev);
}
const DeviceMemory kCudaMemory{cuda_alloc, cuda_free, cuda_zero, cuda_copy, synchronize};

const Kernels& cuda_kernels() {
  static const Kernels k{
      .device = "cuda",
      .bf16_activations = true,
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
      .ce_chunk = cuda::ce_chunk,
      .ce_finish = cuda::ce_finish,
      .ce_chunk_backward = cuda::ce_chunk_backward,
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
