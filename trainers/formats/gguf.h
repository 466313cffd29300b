// A minimal GGUF v3 writer: typed metadata key/values, tensor infos and aligned tensor data.
//
// Layout written (all little-endian): "GGUF", u32 version 3, u64 tensor count, u64 metadata
// count; metadata entries (string key, u32 value type, value); tensor infos (string name, u32
// n_dims, u64 ne[n_dims] innermost first, u32 ggml type, u64 offset into the data section);
// zero padding to the alignment; tensor data in tensor-info order, each tensor starting at a
// multiple of the alignment. A string is u64 length + bytes (no terminator); an array is u32
// element type + u64 count + elements.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace trainers::formats::gguf {

enum class ValueType : uint32_t {
  U8 = 0,
  I8 = 1,
  U16 = 2,
  I16 = 3,
  U32 = 4,
  I32 = 5,
  F32 = 6,
  BOOL = 7,
  STRING = 8,
  ARRAY = 9,
  U64 = 10,
  I64 = 11,
  F64 = 12,
};
enum class TensorType : uint32_t { F32 = 0, F16 = 1 };  // ggml_type values

// IEEE binary16 bits of f, round to nearest even (overflow to inf, NaN kept NaN).
uint16_t f32_to_f16(float f);
float f16_to_f32(uint16_t h);

class Writer {
 public:
  explicit Writer(uint32_t alignment = 32) : alignment_(alignment) {}
  uint32_t alignment() const { return alignment_; }

  void add_u32(const std::string& key, uint32_t v);
  void add_i32(const std::string& key, int32_t v);
  void add_f32(const std::string& key, float v);
  void add_bool(const std::string& key, bool v);
  void add_string(const std::string& key, const std::string& v);
  void add_string_array(const std::string& key, const std::vector<std::string>& v);
  void add_f32_array(const std::string& key, const std::vector<float>& v);
  void add_i32_array(const std::string& key, const std::vector<int32_t>& v);

  // ne: dimensions innermost first (ne[0] = the contiguous one, e.g. in_features of a
  // row-major [out, in] matrix). data: the element bytes, size must match ne and type.
  void add_tensor(const std::string& name, std::vector<int64_t> ne, TensorType type,
                  std::vector<uint8_t> data);

  // Writes the file (to path + ".tmp", then renamed). Throws autograd::Error on I/O failure or
  // duplicate keys/tensor names.
  void write(const std::string& path) const;

 private:
  struct Tensor {
    std::string name;
    std::vector<int64_t> ne;
    TensorType type;
    std::vector<uint8_t> data;
  };
  void key(const std::string& k, ValueType t);
  uint32_t alignment_;
  uint64_t n_kv_ = 0;
  std::vector<std::string> keys_;
  std::vector<uint8_t> kv_;  // serialized metadata entries
  std::vector<Tensor> tensors_;
};

}  // namespace trainers::formats::gguf
