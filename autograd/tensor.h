// Tensor: a typed (f32/bf16/i8/i32/u8), row-major contiguous array on one device, with pooled
// storage and zero-copy views.
//
// A Tensor is a (storage, offset, shape, dtype) triple; the storage knows its device. Copies share
// storage (like torch.Tensor); `clone()` makes a deep copy on the same device, `to(device)` a copy
// on another. All tensors are contiguous row-major: reshapes and slices along the leading
// dimension are zero-copy views, transposes are handled inside the GEMM kernels (transpose flags)
// or by an explicit copying op. Storage comes from a size-bucketed caching pool per device, so a
// training step after the first allocates no new large buffers on any device.
//
// Element access is checked: `data<T>()` throws when T is not the tensor's dtype (`data()` is
// `data<float>()`); host-side reads (`operator[]`, `to_vector`, `item`) throw for a tensor that
// is not on the CPU. Every message names the accessor, the dtype, the shape and the device.
#pragma once
#include <cstddef>
#include <cstdint>
#include <initializer_list>
#include <memory>
#include <ostream>
#include <string>
#include <vector>

#include "autograd/dtype.h"

namespace autograd {

// Shape of rank 0..kMaxRank, stored inline (no heap allocation).
class Shape {
 public:
  static constexpr int kMaxRank = 5;
  Shape() = default;
  Shape(std::initializer_list<int64_t> dims);
  explicit Shape(const std::vector<int64_t>& dims);
  int rank() const { return rank_; }
  int64_t operator[](int i) const;  // negative i counts from the back
  int64_t& at(int i);
  int64_t numel() const;
  int64_t back() const { return (*this)[-1]; }
  // Product of all dims but the last: the "rows" of a [.., cols] tensor.
  int64_t rows() const { return rank_ == 0 ? 1 : numel() / back(); }
  // Product of the dims [lo, hi) (1 when empty): the sizes of a [pre, d, post] view.
  int64_t prod(int lo, int hi) const {
    int64_t p = 1;
    for (int i = lo; i < hi; ++i) p *= d_[i];
    return p;
  }
  std::vector<int64_t> vec() const { return {d_, d_ + rank_}; }
  std::string str() const;
  bool operator==(const Shape& o) const;
  bool operator!=(const Shape& o) const { return !(*this == o); }

 private:
  int64_t d_[kMaxRank] = {0, 0, 0, 0, 0};
  int rank_ = 0;
};
std::ostream& operator<<(std::ostream& os, const Shape& s);

// How one device type allocates, clears and copies raw bytes: the layer under the caching pool.
// The CPU's is built in; a backend registers its own (register_device_memory) before its first
// tensor is made. `copy` moves bytes between this device type and the host, or within it.
struct DeviceMemory {
  void* (*alloc)(size_t bytes, int index);  // 64-byte aligned; throws autograd::Error on failure
  void (*free)(void* p, int index);
  void (*zero)(void* p, size_t bytes, int index);
  void (*copy)(void* dst, Device dst_dev, const void* src, Device src_dev, size_t bytes);
  void (*sync)(int index) = nullptr;  // waits for the device's queued work (null: synchronous)
};
void register_device_memory(DeviceType type, const DeviceMemory* memory);
// The memory functions of d's type; throws naming the device when none is registered.
const DeviceMemory& device_memory(Device d);
// Waits until the work queued on d is done (timing, tests); a no-op on the CPU.
void synchronize(Device d);

// Raw aligned buffer on one device; returned to that device's caching pool on destruction.
class Storage {
 public:
  Storage(size_t bytes, Device device);
  ~Storage();
  Storage(const Storage&) = delete;
  Storage& operator=(const Storage&) = delete;
  void* data() const { return data_; }
  size_t bytes() const { return n_; }
  Device device() const { return device_; }

 private:
  void* data_;
  size_t n_;
  Device device_;
};

// Bytes held by live storages and by the pools' free lists, summed over devices or for one;
// fresh_allocations counts the calls to the device's alloc (cudaMalloc on a GPU: none in a step
// after warm-up), peak_live_bytes the most bytes live at once, peak_held_bytes the most held
// (live + cached) at once since the start or reset_pool_peaks(). A failed alloc empties the
// device's free lists and tries once more before it throws.
struct PoolStats {
  size_t live_bytes = 0, cached_bytes = 0, fresh_allocations = 0;
  size_t peak_live_bytes = 0, peak_held_bytes = 0;
};
PoolStats pool_stats();
PoolStats pool_stats(Device d);
void reset_pool_peaks();  // peaks := the current live / held bytes

class Tensor {
 public:
  Tensor() = default;
  static Tensor empty(const Shape& s, DType dt = DType::F32, Device dev = Device::cpu());
  static Tensor zeros(const Shape& s, DType dt = DType::F32, Device dev = Device::cpu());
  static Tensor full(const Shape& s, float v, Device dev = Device::cpu());  // f32
  static Tensor from(const Shape& s, const std::vector<float>& values, Device dev = Device::cpu());
  // Copies s.numel() elements of host memory of type T into a new tensor on dev.
  template <class T>
  static Tensor from_host(const Shape& s, const T* values, Device dev = Device::cpu()) {
    Tensor t = empty(s, dtype_of<T>::value, dev);
    t.copy_from_host(values, size_t(s.numel()) * sizeof(T));
    return t;
  }

  bool defined() const { return storage_ != nullptr; }
  const Shape& shape() const { return shape_; }
  int rank() const { return shape_.rank(); }
  int64_t numel() const { return shape_.numel(); }
  int64_t dim(int i) const { return shape_[i]; }
  DType dtype() const { return dtype_; }
  Device device() const;
  size_t element_size() const { return dtype_size(dtype_); }
  size_t nbytes() const { return size_t(numel()) * element_size(); }
  // "f32 [2, 3] on cpu" (or "undefined"), for error messages.
  std::string describe() const;

  // Pointer to the first element on the tensor's device; throws unless T is the dtype.
  template <class T>
  T* data() const {
    check_dtype(dtype_of<T>::value, "Tensor::data");
    return static_cast<T*>(raw());
  }
  float* data() const { return data<float>(); }
  void* raw() const;  // untyped pointer to the first element (device memory for a GPU tensor)
  // Host element access (f32, CPU tensors only).
  float& operator[](int64_t i) const { return host_f32("Tensor::operator[]")[i]; }
  const std::shared_ptr<Storage>& storage() const { return storage_; }

  Tensor view(const Shape& s) const;                // same numel, shares storage
  Tensor slice0(int64_t begin, int64_t end) const;  // rows [begin,end) of dim 0, shares storage
  Tensor clone() const;                             // deep copy, same device
  Tensor to(Device dev) const;                      // copy on dev (this tensor if already there)
  void zero_() const;
  void fill_(float v) const;                // f32
  void copy_from(const Tensor& src) const;  // same numel and dtype, any devices
  std::vector<float> to_vector() const;     // f32, copied to the host
  float item() const;                       // the value of a one-element f32 tensor
  // Throws "op: <what> is <dtype ...>, expected <dt>" when the dtype differs.
  void check_dtype(DType dt, const char* op, const char* what = "tensor") const;

 private:
  void copy_from_host(const void* src, size_t bytes) const;
  float* host_f32(const char* op) const;
  std::shared_ptr<Storage> storage_;
  int64_t offset_ = 0;  // in elements
  Shape shape_;
  DType dtype_ = DType::F32;
};

}  // namespace autograd
