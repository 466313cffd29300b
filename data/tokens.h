// Token shards on disk: the project's own format and llm.c-style `.bin` shards, plus the dataset.
//
// Own format ("BNTK" shard), little-endian:
//   offset 0  char[8]  magic "BNTOKSH\0"
//   offset 8  u32      version (1)
//   offset 12 u32      bytes per token: 2 (u16) or 4 (u32)
//   offset 16 u64      token count N
//   offset 24 u64      vocabulary size (0 = unknown)
//   offset 32 ...      N tokens
// llm.c format: 256 x i32 header {20240520, version 1 (u16 tokens) or 2 (u32 tokens), N, 0...},
// then N tokens.
#pragma once
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

namespace data {

// Writes tokens with u16 when every id < 65536, else u32. Throws on I/O failure.
void write_shard(const std::string& path, const std::vector<uint32_t>& tokens, uint64_t vocab_size);
// Reads a shard in either format (detected by magic). Errors name the path and the problem
// (wrong magic, truncated, count mismatch, unsupported version/dtype). vocab_size_out may be null.
std::vector<uint32_t> read_shard(const std::string& path, uint64_t* vocab_size_out = nullptr);

// Tokens of one split, concatenated from one or more shards.
class TokenDataset {
 public:
  TokenDataset() = default;
  // paths: shard files, or a directory (all *.bin / *.tok files in it, sorted by name).
  explicit TokenDataset(const std::vector<std::string>& paths);
  int64_t size() const { return int64_t(tokens_.size()); }
  const uint32_t* data() const { return tokens_.data(); }
  uint64_t vocab_size() const { return vocab_; }  // max over shards' headers (0 = unknown)
  uint32_t max_token() const;
  // Throws naming the first token >= vocab: its value, shard file and index within that file.
  void check_vocab(uint64_t vocab) const;

 private:
  std::vector<uint32_t> tokens_;
  std::vector<std::pair<std::string, int64_t>> files_;  // shard path, index of its first token
  uint64_t vocab_ = 0;
};

}  // namespace data
