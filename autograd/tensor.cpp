// Tensor and Shape implementation, the per-device caching pools behind Storage, the CPU's memory.
#include "autograd/tensor.h"

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <mutex>
#include <sstream>

#include "autograd/dispatch.h"
#include "autograd/error.h"

namespace autograd {

std::string Device::str() const {
  if (type == DeviceType::CPU) return "cpu";
  char buf[24];
  std::snprintf(buf, sizeof buf, "cuda:%d", index);
  return buf;
}

Device parse_device(const std::string& s) {
  if (s == "cpu") return Device::cpu();
  if (s == "cuda") return Device::cuda(0);
  if (s.rfind("cuda:", 0) == 0 && s.size() > 5 &&
      s.find_first_not_of("0123456789", 5) == std::string::npos && s.size() < 9)
    return Device::cuda(std::stoi(s.substr(5)));
  fail("device: '", s, "' is not a device (expected cpu, cuda or cuda:N)");
}

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

// ---- device memory: the CPU's, and the registry -----------------------------------------------
namespace {
size_t round_bytes(size_t bytes) { return (std::max<size_t>(bytes, 1) + 63) / 64 * 64; }

void* cpu_alloc(size_t bytes, int) {
  void* p = std::aligned_alloc(64, round_bytes(bytes));
  if (!p) fail("Storage: out of memory allocating ", round_bytes(bytes), " bytes on cpu");
  return p;
}
void cpu_free(void* p, int) { std::free(p); }
void cpu_zero(void* p, size_t bytes, int) {
  if (bytes) std::memset(p, 0, bytes);
}
void cpu_copy(void* dst, Device, const void* src, Device, size_t bytes) {
  if (bytes) std::memmove(dst, src, bytes);
}
const DeviceMemory kCpuMemory{cpu_alloc, cpu_free, cpu_zero, cpu_copy};
const DeviceMemory* g_memory[kDeviceTypes] = {&kCpuMemory, nullptr};
}  // namespace

void register_device_memory(DeviceType type, const DeviceMemory* memory) {
  g_memory[int(type)] = memory;
}
#ifdef BITNET_CUDA
namespace cuda {
void init();
}  // namespace cuda
#endif
const DeviceMemory& device_memory(Device d) {
  const DeviceMemory* m = g_memory[int(d.type)];
#ifdef BITNET_CUDA
  if (!m && d.type == DeviceType::CUDA) {  // first CUDA tensor: register the backend
    cuda::init();                          // throws "no CUDA device (...)" without a GPU
    m = g_memory[int(d.type)];
  }
#endif
  if (!m) fail("device ", d.str(), ": this build has no backend for it (built without CUDA?)");
  return *m;
}

// ---- caching pools: one per device, buffers bucketed by exact byte count and reused ----------
namespace {
struct Pool {
  std::multimap<size_t, void*> free;  // bytes -> buffer
  size_t live = 0, cached = 0, fresh = 0, peak_live = 0, peak_held = 0;
  void note_peaks() {
    peak_live = std::max(peak_live, live);
    peak_held = std::max(peak_held, live + cached);
  }
};
struct Pools {
  std::mutex mu;
  std::map<std::pair<int, int>, Pool> by_device;  // (type, index) -> pool
  Pool& of(Device d) { return by_device[{int(d.type), d.index}]; }
};
Pools& pools() {
  static Pools* p = new Pools();  // leaked on purpose: storages may die during static destruction
  return *p;
}
}  // namespace

Storage::Storage(size_t bytes, Device device) : data_(nullptr), n_(bytes), device_(device) {
  const DeviceMemory& mem = device_memory(device);
  Pools& ps = pools();
  {
    std::lock_guard<std::mutex> lk(ps.mu);
    Pool& p = ps.of(device);
    auto it = p.free.find(bytes);
    if (it != p.free.end()) {
      data_ = it->second;
      p.free.erase(it);
      p.cached -= round_bytes(bytes);
      p.live += round_bytes(bytes);
      p.note_peaks();
      return;
    }
    p.live += round_bytes(bytes);
    ++p.fresh;
    p.note_peaks();
  }
  try {
    data_ = mem.alloc(bytes, device.index);
  } catch (const Error&) {  // out of memory: give the cached buffers back, then once more
    {
      std::lock_guard<std::mutex> lk(ps.mu);
      Pool& p = ps.of(device);
      for (auto& [n, ptr] : p.free) mem.free(ptr, device.index);
      p.free.clear();
      p.cached = 0;
    }
    try {
      data_ = mem.alloc(bytes, device.index);
    } catch (...) {
      std::lock_guard<std::mutex> lk(ps.mu);
      ps.of(device).live -= round_bytes(bytes);
      throw;
    }
  }
}
Storage::~Storage() {
  Pools& ps = pools();
  std::lock_guard<std::mutex> lk(ps.mu);
  Pool& p = ps.of(device_);
  p.free.emplace(n_, data_);
  p.live -= round_bytes(n_);
  p.cached += round_bytes(n_);
}
PoolStats pool_stats() {
  Pools& ps = pools();
  std::lock_guard<std::mutex> lk(ps.mu);
  PoolStats s;
  for (auto& [k, p] : ps.by_device)
    s.live_bytes += p.live, s.cached_bytes += p.cached, s.fresh_allocations += p.fresh,
        s.peak_live_bytes += p.peak_live, s.peak_held_bytes += p.peak_held;
  return s;
}
void reset_pool_peaks() {
  Pools& ps = pools();
  std::lock_guard<std::mutex> lk(ps.mu);
  for (auto& [k, p] : ps.by_device) p.peak_live = p.live, p.peak_held = p.live + p.cached;
}
void synchronize(Device d) {
  if (d.is_cpu()) return;
  const DeviceMemory& m = device_memory(d);
  if (m.sync) m.sync(d.index);
}
PoolStats pool_stats(Device d) {
  Pools& ps = pools();
  std::lock_guard<std::mutex> lk(ps.mu);
  const Pool& p = ps.of(d);
  return {p.live, p.cached, p.fresh, p.peak_live, p.peak_held};
}

// ---- Tensor ---------------------------------------------------------------------------------
Tensor Tensor::empty(const Shape& s, DType dt, Device dev) {
  Tensor t;
  t.storage_ = std::make_shared<Storage>(size_t(s.numel()) * dtype_size(dt), dev);
  t.shape_ = s;
  t.dtype_ = dt;
  return t;
}
Tensor Tensor::zeros(const Shape& s, DType dt, Device dev) {
  Tensor t = empty(s, dt, dev);
  t.zero_();
  return t;
}
Tensor Tensor::full(const Shape& s, float v, Device dev) {
  Tensor t = empty(s, DType::F32, dev);
  t.fill_(v);
  return t;
}
Tensor Tensor::from(const Shape& s, const std::vector<float>& values, Device dev) {
  BN_CHECK(int64_t(values.size()) == s.numel(), "Tensor::from", "shape ", s, " needs ", s.numel(),
           " values, got ", values.size());
  return from_host(s, values.data(), dev);
}
Device Tensor::device() const { return storage_ ? storage_->device() : Device::cpu(); }
std::string Tensor::describe() const {
  if (!defined()) return "undefined";
  return std::string(dtype_name(dtype_)) + " " + shape_.str() + " on " + device().str();
}
void* Tensor::raw() const {
  BN_CHECK(defined(), "Tensor::data", "undefined tensor");
  return static_cast<std::byte*>(storage_->data()) + offset_ * int64_t(element_size());
}
void Tensor::check_dtype(DType dt, const char* op, const char* what) const {
  if (!defined() || dtype_ != dt)
    fail(op, ": ", what, " is ", describe(), ", expected ", dtype_name(dt));
}
float* Tensor::host_f32(const char* op) const {
  check_dtype(DType::F32, op);
  BN_CHECK(device().is_cpu(), op, "tensor is ", describe(),
           "; host access needs a cpu tensor (use .to(cpu))");
  return static_cast<float*>(raw());
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
  Tensor t = empty(shape_, dtype_, device());
  t.copy_from(*this);
  return t;
}
Tensor Tensor::to(Device dev) const {
  BN_CHECK(defined(), "Tensor::to", "undefined tensor");
  if (dev == device()) return *this;
  Tensor t = empty(shape_, dtype_, dev);
  t.copy_from(*this);
  return t;
}
void Tensor::zero_() const {
  if (numel()) device_memory(device()).zero(raw(), nbytes(), device().index);
}
void Tensor::fill_(float v) const {
  check_dtype(DType::F32, "fill_");
  if (numel()) BN_KERNEL(device(), fill)(*this, v);
}
void Tensor::copy_from(const Tensor& src) const {
  BN_CHECK(src.numel() == numel() && src.dtype() == dtype_, "copy_from", "source ", src.describe(),
           " and destination ", describe(), " differ in size or dtype");
  if (!numel()) return;
  // A copy between two devices is done by the non-CPU side's memory functions.
  const Device d = device(), s = src.device();
  device_memory(d.is_cpu() ? s : d).copy(raw(), d, src.raw(), s, nbytes());
}
void Tensor::copy_from_host(const void* src, size_t bytes) const {
  if (bytes) device_memory(device()).copy(raw(), device(), src, Device::cpu(), bytes);
}
std::vector<float> Tensor::to_vector() const {
  check_dtype(DType::F32, "to_vector");
  std::vector<float> out(static_cast<size_t>(numel()));
  if (!out.empty())
    device_memory(device()).copy(out.data(), Device::cpu(), raw(), device(), nbytes());
  return out;
}
float Tensor::item() const {
  BN_CHECK(numel() == 1, "item", "tensor is ", describe(), ", needs exactly one element");
  return to_vector()[0];
}

}  // namespace autograd
