// Element types and devices of a Tensor: DType (f32, bf16, i8, i32, u8) and Device (cpu, cuda).
//
// A bf16 value is the upper half of an fp32 bit pattern. float -> bf16 rounds to nearest, ties
// to even (as torch's .to(torch.bfloat16)); NaN stays NaN. bf16 -> float is exact.
#pragma once
#include <bit>
#include <cstddef>
#include <cstdint>
#include <string>

namespace autograd {

enum class DType : uint8_t { F32, BF16, I8, I32, U8 };
inline constexpr int kDTypes = 5;

struct bf16 {
  uint16_t bits = 0;
};
inline bf16 to_bf16(float f) {
  const uint32_t u = std::bit_cast<uint32_t>(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return bf16{uint16_t((u >> 16) | 0x40u)};  // quiet NaN
  const uint32_t rounded = u + 0x7fffu + ((u >> 16) & 1u);                        // ties to even
  return bf16{uint16_t(rounded >> 16)};
}
inline float to_float(bf16 b) { return std::bit_cast<float>(uint32_t(b.bits) << 16); }

constexpr size_t dtype_size(DType t) {
  switch (t) {
    case DType::F32:
      return 4;
    case DType::BF16:
      return 2;
    case DType::I8:
      return 1;
    case DType::I32:
      return 4;
    case DType::U8:
      return 1;
  }
  return 0;
}
constexpr const char* dtype_name(DType t) {
  switch (t) {
    case DType::F32:
      return "f32";
    case DType::BF16:
      return "bf16";
    case DType::I8:
      return "i8";
    case DType::I32:
      return "i32";
    case DType::U8:
      return "u8";
  }
  return "?";
}

// The DType of a C++ element type (data<T>() checks it).
template <class T>
struct dtype_of;
template <>
struct dtype_of<float> {
  static constexpr DType value = DType::F32;
};
template <>
struct dtype_of<bf16> {
  static constexpr DType value = DType::BF16;
};
template <>
struct dtype_of<int8_t> {
  static constexpr DType value = DType::I8;
};
template <>
struct dtype_of<int32_t> {
  static constexpr DType value = DType::I32;
};
template <>
struct dtype_of<uint8_t> {
  static constexpr DType value = DType::U8;
};

enum class DeviceType : uint8_t { CPU, CUDA };
inline constexpr int kDeviceTypes = 2;

// A device: its type and its ordinal (the GPU index; 0 for the CPU).
struct Device {
  DeviceType type = DeviceType::CPU;
  int index = 0;
  static constexpr Device cpu() { return {DeviceType::CPU, 0}; }
  static constexpr Device cuda(int i = 0) { return {DeviceType::CUDA, i}; }
  bool is_cpu() const { return type == DeviceType::CPU; }
  bool operator==(const Device& o) const { return type == o.type && index == o.index; }
  bool operator!=(const Device& o) const { return !(*this == o); }
  std::string str() const;  // "cpu" or "cuda:N"
};
// "cpu" or "cuda" / "cuda:N" -> Device; throws autograd::Error naming the text otherwise.
Device parse_device(const std::string& s);

}  // namespace autograd
