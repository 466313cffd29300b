// Tensor and Shape implementation, plus the caching aligned-buffer pool behind Storage.
#include "autograd/tensor.h"

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <map>
#include <mutex>
#include <sstream>

#include "autograd/error.h"

namespace autograd {

Shape::Shape(std::initializer_list<int64_t> dims) {
  BN_CHECK(dims.size() <= size_t(kMaxRank), "Shape", "rank ", dims.size(), " exceeds ", kMaxRank);
  for (int64_t v : dims) {
    BN_CHECK(v >= 0, "Shape", "negative dimension ", v);
    d_[rank_++] = v;
  }
}
Shape::Shape(const std::vector<int64_t>& dims) {
  BN_CHECK(dims.size() <= size_t(kMaxRank), "Shape", "rank ", dims.size(), " exceeds ", kMaxRank);
  for (int64_t v : dims) {
    BN_CHECK(v >= 0, "Shape", "negative dimension ", v);
    d_[rank_++] = v;
  }
}
int64_t Shape::operator[](int i) const {
  int j = i < 0 ? i + rank_ : i;
  BN_CHECK(j >= 0 && j < rank_, "Shape", "index ", i, " out of range for ", str());
  return d_[j];
}
int64_t& Shape::at(int i) {
  int j = i < 0 ? i + rank_ : i;
  BN_CHECK(j >= 0 && j < rank_, "Shape", "index ", i, " out of range for ", str());
  return d_[j];
}
int64_t Shape::numel() const {
  int64_t n = 1;
  for (int i = 0; i < rank_; ++i) n *= d_[i];
  return n;
}
std::string Shape::str() const {
  std::ostringstream os;
  os << '[';
  for (int i = 0; i < rank_; ++i) os << (i ? ", " : "") << d_[i];
  os << ']';
  return os.str();
}
bool Shape::operator==(const Shape& o) const {
  if (rank_ != o.rank_) return false;
  for (int i = 0; i < rank_; ++i)
    if (d_[i] != o.d_[i]) return false;
  return true;
}
std::ostream& operator<<(std::ostream& os, const Shape& s) { return os << s.str(); }

// ---- caching pool: buffers are bucketed by exact float count and reused -------------------
namespace {
struct Pool {
  std::mutex mu;
  std::multimap<size_t, float*> free;  // nfloats -> buffer
  size_t live = 0, cached = 0, fresh = 0;
  ~Pool() {
    for (auto& [n, p] : free) std::free(p);
  }
};
Pool& pool() {
  static Pool* p = new Pool();  // leaked on purpose: storages may die during static destruction
  return *p;
}
size_t round_bytes(size_t nfloats) {
  size_t b = std::max<size_t>(nfloats, 1) * sizeof(float);
  return (b + 63) / 64 * 64;
}
}  // namespace

Storage::Storage(size_t nfloats) : data_(nullptr), n_(nfloats) {
  Pool& p = pool();
  {
    std::lock_guard<std::mutex> lk(p.mu);
    auto it = p.free.find(nfloats);
    if (it != p.free.end()) {
      data_ = it->second;
      p.free.erase(it);
      p.cached -= round_bytes(nfloats);
      p.live += round_bytes(nfloats);
      return;
    }
    p.live += round_bytes(nfloats);
    ++p.fresh;
  }
  data_ = static_cast<float*>(std::aligned_alloc(64, round_bytes(nfloats)));
  if (!data_) fail("Storage: out of memory allocating ", round_bytes(nfloats), " bytes");
}
Storage::~Storage() {
  Pool& p = pool();
  std::lock_guard<std::mutex> lk(p.mu);
  p.free.emplace(n_, data_);
  p.live -= round_bytes(n_);
  p.cached += round_bytes(n_);
}
PoolStats pool_stats() {
  Pool& p = pool();
  std::lock_guard<std::mutex> lk(p.mu);
  return {p.live, p.cached, p.fresh};
}
void pool_release_cached() {
  Pool& p = pool();
  std::lock_guard<std::mutex> lk(p.mu);
  for (auto& [n, ptr] : p.free) std::free(ptr);
  p.free.clear();
  p.cached = 0;
}

// ---- Tensor ---------------------------------------------------------------------------------
Tensor Tensor::empty(const Shape& s) {
  Tensor t;
  t.storage_ = std::make_shared<Storage>(size_t(s.numel()));
  t.shape_ = s;
  return t;
}
Tensor Tensor::zeros(const Shape& s) {
  Tensor t = empty(s);
  t.zero_();
  return t;
}
Tensor Tensor::full(const Shape& s, float v) {
  Tensor t = empty(s);
  t.fill_(v);
  return t;
}
Tensor Tensor::from(const Shape& s, const std::vector<float>& values) {
  BN_CHECK(int64_t(values.size()) == s.numel(), "Tensor::from", "shape ", s, " needs ", s.numel(),
           " values, got ", values.size());
  Tensor t = empty(s);
  std::copy(values.begin(), values.end(), t.data());
  return t;
}
Tensor Tensor::view(const Shape& s) const {
  BN_CHECK(defined(), "view", "undefined tensor");
  BN_CHECK(s.numel() == numel(), "view", "cannot view ", shape_, " as ", s);
  Tensor t = *this;
  t.shape_ = s;
  return t;
}
Tensor Tensor::slice0(int64_t begin, int64_t end) const {
  BN_CHECK(defined() && rank() >= 1, "slice0", "needs rank >= 1, got ", shape_);
  BN_CHECK(0 <= begin && begin <= end && end <= shape_[0], "slice0", "range [", begin, ", ", end,
           ") out of ", shape_);
  Tensor t = *this;
  int64_t row = shape_[0] ? numel() / shape_[0] : 0;
  t.offset_ += begin * row;
  t.shape_.at(0) = end - begin;
  return t;
}
Tensor Tensor::clone() const {
  Tensor t = empty(shape_);
  if (numel()) std::memcpy(t.data(), data(), size_t(numel()) * sizeof(float));
  return t;
}
void Tensor::zero_() const {
  if (numel()) std::memset(data(), 0, size_t(numel()) * sizeof(float));
}
void Tensor::fill_(float v) const { std::fill(data(), data() + numel(), v); }
void Tensor::copy_from(const Tensor& src) const {
  BN_CHECK(src.numel() == numel(), "copy_from", "shapes ", src.shape(), " and ", shape_,
           " differ in size");
  if (numel()) std::memmove(data(), src.data(), size_t(numel()) * sizeof(float));
}
std::vector<float> Tensor::to_vector() const { return {data(), data() + numel()}; }

}  // namespace autograd
