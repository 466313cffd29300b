// Known values of autograd/hash.h: parameter init, checkpoint checksums and compact files depend on
// them.
#include <gtest/gtest.h>

#include <cstring>
#include <string>

#include "autograd/hash.h"

namespace {
uint64_t words(const std::string& s, uint64_t seed = 0) {
  return autograd::hash64_words(s.data(), s.size(), seed);
}
}  // namespace

// Values of the implementations these functions replaced (trainers/checkpoint.cpp's hash_bytes,
// nn/module.cpp's and trainers/trainer.cpp's FNV-1a loops): existing checkpoints and init seeds.
TEST(Hash, Hash64WordsKeepsTheCheckpointValues) {
  EXPECT_EQ(words(""), 0x0000000000000000ULL);
  EXPECT_EQ(words("", 12345), 0x2a28a393f766986cULL);
  EXPECT_EQ(words("a"), 0xa73e9e3511409349ULL);
  EXPECT_EQ(words("bitnet", 12345), 0x3fae9cf32dcca043ULL);
  EXPECT_EQ(words("123456789"), 0xf34205b01a9aabc0ULL);  // one full word and a padded tail
  EXPECT_EQ(words("model.layers.0.self_attn.q_proj.weight"), 0x51ea5d70a2b8ddd1ULL);
  EXPECT_EQ(words("model.layers.0.self_attn.q_proj.weight", 12345), 0x7e4e19df1df8f613ULL);
}

TEST(Hash, Fnv1a64KeepsTheInitSeeds) {
  EXPECT_EQ(autograd::fnv1a64("", 0), autograd::kFnv64Offset);
  EXPECT_EQ(autograd::fnv1a64("a", 1), 0x44bd8ad473cd9906ULL);
  const std::string n = "model.norm.weight";
  EXPECT_EQ(autograd::fnv1a64(n.data(), n.size(), autograd::kFnv64Offset ^ 7),
            0x973b064ac55ab147ULL);
}

TEST(Hash, Crc32CheckValueAndContinuation) {
  EXPECT_EQ(autograd::crc32("123456789", 9), 0xCBF43926u);  // CRC-32/ISO-HDLC check value
  EXPECT_EQ(autograd::crc32("6789", 4, autograd::crc32("12345", 5)), 0xCBF43926u);
  EXPECT_EQ(autograd::crc32("", 0), 0u);
}
