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
// ggml_type values. TQ1_0 / TQ2_0 are ggml's ternary block types (QK_K = 256 elements a block).
enum class TensorType : uint32_t { F32 = 0, F16 = 1, TQ1_0 = 34, TQ2_0 = 35 };
constexpr int64_t kQK_K = 256;  // elements per TQ1_0 / TQ2_0 block
// Bytes of n elements of type t (n a multiple of kQK_K for the block types).
uint64_t tensor_bytes(TensorType t, uint64_t n);

// IEEE binary16 bits of f, round to nearest even (overflow to inf, NaN kept NaN).
uint16_t f32_to_f16(float f);
float f16_to_f32(uint16_t h);

// Ternary codes c ∈ {-1, 0, 1} (n of them, n % 256 == 0, row-major so that a block never spans
// two rows when the row length is a multiple of 256) packed as ggml blocks whose scale is d for
// every block (stored as f16); ggml dequantizes element e of a block as (trit(e) − 1)·d, so the
// file holds c·f16(d) exactly. The layouts (ggml-common.h, ggml-quants.c):
//  - TQ2_0, 66 bytes per block {uint8 qs[64]; f16 d}: element e = 128·h + 32·k + m (h = 0..1,
//    k = 0..3, m = 0..31) is bits 2k..2k+1 of qs[32·h + m], holding c + 1.
//  - TQ1_0, 54 bytes per block {uint8 qs[48]; uint8 qh[4]; f16 d}: five trits t = c + 1 per byte
//    as the base-3 number t0·81 + t1·27 + t2·9 + t3·3 + t4 (first trit most significant) stored
//    as ceil(v·256/243) (so that trit i is ((uint8)(q·3^i)·3) >> 8). qs[m], m < 32: elements
//    m + 32i (i = 0..4, elements 0..159); qs[32 + m], m < 16: elements 160 + m + 16i (160..239);
//    qh[j], j < 4: four trits, elements 240 + j + 4i (i = 0..3), as t0·81 + t1·27 + t2·9 + t3·3
//    (the fifth trit position is 0), same ceil-scaling.
std::vector<uint8_t> pack_tq2_0(const int8_t* codes, int64_t n, float d);
std::vector<uint8_t> pack_tq1_0(const int8_t* codes, int64_t n, float d);

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
