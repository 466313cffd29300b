// The project's hash functions (FNV-1a, the checkpoints' word hash, CRC-32), each with its
// equation.
#pragma once
#include <array>
#include <cstddef>
#include <cstdint>
#include <cstring>

namespace autograd {

// The offset basis this project has always used: 1469598103934665603 = 0x14650fb0739d0383, the
// standard FNV-1a basis 14695981039346656037 (0xcbf29ce484222325) without its last digit. Kept:
// parameter init depends on it, so every trained model and test value does.
inline constexpr uint64_t kFnv64Offset = 1469598103934665603ULL;
inline constexpr uint64_t kFnv64Prime = 1099511628211ULL;  // 0x100000001b3, the FNV-1a 64-bit prime

// FNV-1a (64-bit, with the offset basis above) over n bytes b[0..n):
//   h = h0 (kFnv64Offset unless given); for each byte: h = (h ^ b[i]) * 0x100000001b3 (mod 2^64).
// Parameter init seeds (nn::ParameterSet::init: h0 = kFnv64Offset ^ seed, over the name) and the
// trainer's multi-rank config / parameter checks.
inline uint64_t fnv1a64(const void* p, size_t n, uint64_t h = kFnv64Offset) {
  const auto* b = static_cast<const unsigned char*>(p);
  for (size_t i = 0; i < n; ++i) h = (h ^ b[i]) * kFnv64Prime;
  return h;
}

// bitnet-hash64-v1 (checkpoint dataset checksums, integrity trailer, data fingerprints): a 64-bit
// hash over 8-byte little-endian words w (the tail zero-padded), seeded with the length n:
//   h = seed ^ (n * 0x9e3779b97f4a7c15); per word: h = (h ^ w) * 0x100000001b3; h ^= h >> 29;
//   final: h ^= h >> 33; h *= 0xff51afd7ed558ccd; h ^= h >> 33.
// Every step is a bijection of h for a fixed word, so any change confined to one word changes h.
// Stored in every checkpoint: its values must never change.
inline uint64_t hash64_words(const void* p, size_t n, uint64_t seed = 0) {
  const auto* b = static_cast<const unsigned char*>(p);
  uint64_t h = seed ^ (uint64_t(n) * 0x9e3779b97f4a7c15ULL);
  auto mix = [&h](uint64_t w) {
    h = (h ^ w) * 0x100000001b3ULL;
    h ^= h >> 29;
  };
  size_t i = 0;
  for (; i + 8 <= n; i += 8) {
    uint64_t w;
    std::memcpy(&w, b + i, 8);
    mix(w);
  }
  if (i < n) {
    uint64_t w = 0;
    std::memcpy(&w, b + i, n - i);
    mix(w);
  }
  h ^= h >> 33;
  h *= 0xff51afd7ed558ccdULL;
  h ^= h >> 33;
  return h;
}

// CRC-32 (ISO-HDLC, as zlib / PNG; check value crc32("123456789") = 0xCBF43926), continuing from
// `crc` (0 to start): reflected polynomial P = 0xEDB88320,
//   c = ~crc; for each byte: c = T[(c ^ b[i]) & 0xff] ^ (c >> 8); result ~c,
// with T[i] = i shifted right 8 times, XORing P after each shift that drops a 1 bit.
// The compact inference file's header and payload checksums.
inline uint32_t crc32(const void* data, size_t n, uint32_t crc = 0) {
  static const std::array<uint32_t, 256> t = [] {
    std::array<uint32_t, 256> r{};
    for (uint32_t i = 0; i < 256; ++i) {
      uint32_t c = i;
      for (int k = 0; k < 8; ++k) c = (c & 1u) ? 0xEDB88320u ^ (c >> 1) : c >> 1;
      r[i] = c;
    }
    return r;
  }();
  const auto* b = static_cast<const uint8_t*>(data);
  crc = ~crc;
  for (size_t i = 0; i < n; ++i) crc = t[(crc ^ b[i]) & 0xffu] ^ (crc >> 8);
  return ~crc;
}

}  // namespace autograd
