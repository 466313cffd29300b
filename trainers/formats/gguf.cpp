// GGUF v3 writer (see gguf.h for the byte layout).
#include "trainers/formats/gguf.h"

#include <cstring>
#include <filesystem>
#include <fstream>
#include <set>

#include "autograd/error.h"

namespace trainers::formats::gguf {
namespace {

template <class T>
void put(std::vector<uint8_t>& b, T v) {
  uint8_t raw[sizeof(T)];
  std::memcpy(raw, &v, sizeof(T));  // little-endian hosts only (as the safetensors code)
  b.insert(b.end(), raw, raw + sizeof(T));
}
void put_str(std::vector<uint8_t>& b, const std::string& s) {
  put<uint64_t>(b, s.size());
  b.insert(b.end(), s.begin(), s.end());
}
size_t type_size(TensorType t) { return t == TensorType::F32 ? 4 : 2; }
uint64_t pad_to(uint64_t n, uint64_t a) { return (n + a - 1) / a * a; }

}  // namespace

uint16_t f32_to_f16(float f) {
  uint32_t x;
  std::memcpy(&x, &f, 4);
  const uint32_t sign = (x >> 16) & 0x8000u;
  const uint32_t exp = (x >> 23) & 0xffu;
  uint32_t man = x & 0x7fffffu;
  if (exp == 0xffu) return uint16_t(sign | 0x7c00u | (man ? 0x200u | (man >> 13) : 0u));
  const int32_t e = int32_t(exp) - 127 + 15;
  if (e >= 0x1f) return uint16_t(sign | 0x7c00u);
  if (e <= 0) {                           // half subnormal (or zero): units of 2^-24
    if (exp == 0) return uint16_t(sign);  // f32 zero/subnormal is far below half's range
    const uint32_t m = man | 0x800000u;
    const int shift = 14 - e;
    if (shift > 24) return uint16_t(sign);
    uint32_t h = m >> shift;
    const uint32_t rem = m & ((1u << shift) - 1u), half = 1u << (shift - 1);
    if (rem > half || (rem == half && (h & 1u))) ++h;
    return uint16_t(sign | h);
  }
  uint32_t h = sign | (uint32_t(e) << 10) | (man >> 13);
  const uint32_t rem = man & 0x1fffu;
  if (rem > 0x1000u || (rem == 0x1000u && (h & 1u))) ++h;  // a carry may reach inf: correct
  return uint16_t(h);
}

float f16_to_f32(uint16_t h) {
  const uint32_t sign = uint32_t(h & 0x8000u) << 16;
  const uint32_t exp = (h >> 10) & 0x1fu, man = h & 0x3ffu;
  uint32_t x;
  if (exp == 0) {
    if (man == 0) {
      x = sign;
    } else {  // subnormal: normalise
      int e = -1;
      uint32_t m = man;
      do {
        ++e;
        m <<= 1;
      } while (!(m & 0x400u));
      x = sign | (uint32_t(127 - 15 - e) << 23) | ((m & 0x3ffu) << 13);
    }
  } else if (exp == 0x1f) {
    x = sign | 0x7f800000u | (man << 13);
  } else {
    x = sign | ((exp - 15 + 127) << 23) | (man << 13);
  }
  float f;
  std::memcpy(&f, &x, 4);
  return f;
}

void Writer::key(const std::string& k, ValueType t) {
  for (const auto& e : keys_) BN_CHECK(e != k, "gguf::Writer", "duplicate metadata key '", k, "'");
  keys_.push_back(k);
  put_str(kv_, k);
  put<uint32_t>(kv_, uint32_t(t));
  ++n_kv_;
}
void Writer::add_u32(const std::string& k, uint32_t v) {
  key(k, ValueType::U32);
  put<uint32_t>(kv_, v);
}
void Writer::add_i32(const std::string& k, int32_t v) {
  key(k, ValueType::I32);
  put<int32_t>(kv_, v);
}
void Writer::add_f32(const std::string& k, float v) {
  key(k, ValueType::F32);
  put<float>(kv_, v);
}
void Writer::add_bool(const std::string& k, bool v) {
  key(k, ValueType::BOOL);
  put<uint8_t>(kv_, v ? 1 : 0);
}
void Writer::add_string(const std::string& k, const std::string& v) {
  key(k, ValueType::STRING);
  put_str(kv_, v);
}
void Writer::add_string_array(const std::string& k, const std::vector<std::string>& v) {
  key(k, ValueType::ARRAY);
  put<uint32_t>(kv_, uint32_t(ValueType::STRING));
  put<uint64_t>(kv_, v.size());
  for (const auto& s : v) put_str(kv_, s);
}
void Writer::add_f32_array(const std::string& k, const std::vector<float>& v) {
  key(k, ValueType::ARRAY);
  put<uint32_t>(kv_, uint32_t(ValueType::F32));
  put<uint64_t>(kv_, v.size());
  for (float x : v) put<float>(kv_, x);
}
void Writer::add_i32_array(const std::string& k, const std::vector<int32_t>& v) {
  key(k, ValueType::ARRAY);
  put<uint32_t>(kv_, uint32_t(ValueType::I32));
  put<uint64_t>(kv_, v.size());
  for (int32_t x : v) put<int32_t>(kv_, x);
}

void Writer::add_tensor(const std::string& name, std::vector<int64_t> ne, TensorType type,
                        std::vector<uint8_t> data) {
  BN_CHECK(!ne.empty() && ne.size() <= 4, "gguf::Writer", "tensor '", name, "' has ", ne.size(),
           " dims (1..4 supported)");
  uint64_t n = 1;
  for (int64_t d : ne) {
    BN_CHECK(d > 0, "gguf::Writer", "tensor '", name, "' has a non-positive dimension ", d);
    n *= uint64_t(d);
  }
  BN_CHECK(n * type_size(type) == data.size(), "gguf::Writer", "tensor '", name, "': ", data.size(),
           " bytes for ", n, " elements of size ", type_size(type));
  for (const auto& t : tensors_)
    BN_CHECK(t.name != name, "gguf::Writer", "duplicate tensor '", name, "'");
  tensors_.push_back({name, std::move(ne), type, std::move(data)});
}

void Writer::write(const std::string& path) const {
  std::vector<uint8_t> head;
  head.insert(head.end(), {'G', 'G', 'U', 'F'});
  put<uint32_t>(head, 3);
  put<uint64_t>(head, tensors_.size());
  put<uint64_t>(head, n_kv_);
  head.insert(head.end(), kv_.begin(), kv_.end());
  uint64_t off = 0;
  for (const auto& t : tensors_) {
    put_str(head, t.name);
    put<uint32_t>(head, uint32_t(t.ne.size()));
    for (int64_t d : t.ne) put<uint64_t>(head, uint64_t(d));
    put<uint32_t>(head, uint32_t(t.type));
    put<uint64_t>(head, off);
    off = pad_to(off + t.data.size(), alignment_);
  }
  head.resize(pad_to(head.size(), alignment_), 0);

  const std::string tmp = path + ".tmp";
  {
    std::ofstream f(tmp, std::ios::binary | std::ios::trunc);
    BN_CHECK(f.good(), "gguf::Writer", "cannot open '", tmp, "' for writing");
    f.write(reinterpret_cast<const char*>(head.data()), std::streamsize(head.size()));
    const std::vector<char> zeros(alignment_, 0);
    for (const auto& t : tensors_) {
      f.write(reinterpret_cast<const char*>(t.data.data()), std::streamsize(t.data.size()));
      const uint64_t pad = pad_to(t.data.size(), alignment_) - t.data.size();
      f.write(zeros.data(), std::streamsize(pad));
    }
    f.flush();
    BN_CHECK(f.good(), "gguf::Writer", "write to '", tmp, "' failed");
  }
  std::filesystem::rename(tmp, path);
}

}  // namespace trainers::formats::gguf
