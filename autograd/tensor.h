// Tensor: fp32 row-major contiguous array with shared 64-byte-aligned pooled storage and views.
//
// A Tensor is a (storage, offset, shape) triple. Copies share storage (like torch.Tensor);
// `clone()` makes a deep copy. All tensors are contiguous row-major: reshapes and slices along
// the leading dimension are zero-copy views, transposes are handled inside the GEMM kernels
// (transpose flags) or by an explicit copying op. Storage comes from a size-bucketed caching
// pool so that a training step after the first allocates no new large buffers.
#pragma once
#include <cstddef>
#include <cstdint>
#include <initializer_list>
#include <memory>
#include <ostream>
#include <string>
#include <vector>

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
  std::vector<int64_t> vec() const { return {d_, d_ + rank_}; }
  std::string str() const;
  bool operator==(const Shape& o) const;
  bool operator!=(const Shape& o) const { return !(*this == o); }

 private:
  int64_t d_[kMaxRank] = {0, 0, 0, 0, 0};
  int rank_ = 0;
};
std::ostream& operator<<(std::ostream& os, const Shape& s);

// Raw aligned buffer; returned to a process-wide caching pool on destruction.
class Storage {
 public:
  explicit Storage(size_t nfloats);
  ~Storage();
  Storage(const Storage&) = delete;
  Storage& operator=(const Storage&) = delete;
  float* data() const { return data_; }
  size_t size() const { return n_; }

 private:
  float* data_;
  size_t n_;
};

// Bytes currently held by live storages and by the pool's free lists (for memory reports/tests).
struct PoolStats {
  size_t live_bytes, cached_bytes, fresh_allocations;
};
PoolStats pool_stats();
void pool_release_cached();  // frees every cached (unused) buffer

class Tensor {
 public:
  Tensor() = default;
  static Tensor empty(const Shape& s);  // uninitialised
  static Tensor zeros(const Shape& s);
  static Tensor full(const Shape& s, float v);
  static Tensor from(const Shape& s, const std::vector<float>& values);

  bool defined() const { return storage_ != nullptr; }
  const Shape& shape() const { return shape_; }
  int rank() const { return shape_.rank(); }
  int64_t numel() const { return shape_.numel(); }
  int64_t dim(int i) const { return shape_[i]; }
  float* data() const { return storage_->data() + offset_; }
  float& operator[](int64_t i) const { return data()[i]; }
  const std::shared_ptr<Storage>& storage() const { return storage_; }

  Tensor view(const Shape& s) const;                // same numel, shares storage
  Tensor slice0(int64_t begin, int64_t end) const;  // rows [begin,end) of dim 0, shares storage
  Tensor clone() const;                             // deep copy
  void zero_() const;
  void fill_(float v) const;
  void copy_from(const Tensor& src) const;  // same numel required
  std::vector<float> to_vector() const;

 private:
  std::shared_ptr<Storage> storage_;
  int64_t offset_ = 0;
  Shape shape_;
};

}  // namespace autograd
