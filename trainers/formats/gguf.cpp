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
uint64_t pad_to(uint64_t n, uint64_t a) { return (n + a - 1) / a * a; }

}  // namespace

uint64_t tensor_bytes(TensorType t, uint64_t n) {
  switch (t) {
    case TensorType::F32:
      return 4 * n;
    case TensorType::F16:
      return 2 * n;
    case TensorType::TQ2_0:
    case TensorType::TQ1_0:
      BN_CHECK(n % kQK_K == 0, "gguf", n, " elements are not a whole number of ", kQK_K,
               "-element blocks");
      return n / kQK_K * (t == TensorType::TQ2_0 ? 66 : 54);
  }
  autograd::fail("gguf: unknown tensor type ", uint32_t(t));
}

namespace {
void check_codes(const int8_t* codes, int64_t n, const char* what) {
  BN_CHECK(n % kQK_K == 0, what, n, " codes are not a whole number of ", kQK_K, "-element blocks");
  for (int64_t i = 0; i < n; ++i)
    BN_CHECK(codes[i] >= -1 && codes[i] <= 1, what, "code ", int(codes[i]), " at ", i,
             " is not ternary");
}
void put_d(uint8_t* p, float d) {
  const uint16_t h = f32_to_f16(d);
  std::memcpy(p, &h, 2);
}
// Trits t_i = c_i + 1 read at e0, e0 + stride, ...: (base-3 number, first most significant)
// · 3^(5 − count), scaled by 256/243 with ceiling division (ggml's TQ1_0 byte encoding).
uint8_t tq1_byte(const int8_t* c, int64_t e0, int64_t stride, int count) {
  unsigned v = 0;
  for (int i = 0; i < count; ++i) v = v * 3 + unsigned(c[e0 + i * stride] + 1);
  for (int i = count; i < 5; ++i) v *= 3;
  return uint8_t((v * 256 + 242) / 243);
}
}  // namespace

namespace {
// n codes as ggml blocks of type t (bytes per block: tensor_bytes(t, 256), the f16 d last);
// fill(c, blk) writes the code bytes of one block from its 256 codes c.
template <class Fill>
std::vector<uint8_t> pack_blocks(const int8_t* codes, int64_t n, float d, TensorType t,
                                 const char* what, Fill fill) {
  check_codes(codes, n, what);
  const uint64_t bb = tensor_bytes(t, kQK_K);
  std::vector<uint8_t> out(size_t(tensor_bytes(t, uint64_t(n))), 0);
  for (int64_t b = 0; b < n / kQK_K; ++b) {
    uint8_t* blk = out.data() + uint64_t(b) * bb;
    fill(codes + b * kQK_K, blk);
    put_d(blk + bb - 2, d);
  }
  return out;
}
}  // namespace

std::vector<uint8_t> pack_tq2_0(const int8_t* codes, int64_t n, float d) {
  return pack_blocks(codes, n, d, TensorType::TQ2_0,
                     "pack_tq2_0: ", [](const int8_t* c, uint8_t* blk) {
                       for (int h = 0; h < 2; ++h)
                         for (int k = 0; k < 4; ++k)
                           for (int m = 0; m < 32; ++m)
                             blk[32 * h + m] |= uint8_t((c[128 * h + 32 * k + m] + 1) << (2 * k));
                     });
}

std::vector<uint8_t> pack_tq1_0(const int8_t* codes, int64_t n, float d) {
  return pack_blocks(codes, n, d, TensorType::TQ1_0,
                     "pack_tq1_0: ", [](const int8_t* c, uint8_t* blk) {
                       for (int m = 0; m < 32; ++m) blk[m] = tq1_byte(c, m, 32, 5);
                       for (int m = 0; m < 16; ++m) blk[32 + m] = tq1_byte(c, 160 + m, 16, 5);
                       for (int j = 0; j < 4; ++j) blk[48 + j] = tq1_byte(c, 240 + j, 4, 4);
                     });
}

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
  BN_CHECK(type == TensorType::F32 || type == TensorType::F16 || ne[0] % kQK_K == 0, "gguf::Writer",
           "tensor '", name, "': row length ", ne[0], " is not a multiple of the ", kQK_K,
           "-element block");
  BN_CHECK(tensor_bytes(type, n) == data.size(), "gguf::Writer", "tensor '", name,
           "': ", data.size(), " bytes for ", n, " elements (", tensor_bytes(type, n),
           " expected)");
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
