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
#include <memory>
#include <string>
#include <utility>
#include <vector>

namespace data {

// Writes tokens with u16 when every id < 65536, else u32. Throws on I/O failure.
void write_shard(const std::string& path, const std::vector<uint32_t>& tokens, uint64_t vocab_size);

// Writes one own-format shard incrementally (memory independent of its size): tokens go to
// `path + ".tmp"`, finish() writes the count into the header and renames it to `path`, so a
// reader never sees a half shard. Destroying an unfinished writer removes the temporary.
class ShardWriter {
 public:
  // width: bytes per token, 2 or 4 (the caller knows the id range, e.g. from the vocabulary).
  ShardWriter(std::string path, uint64_t vocab_size, uint32_t width);
  ~ShardWriter();
  ShardWriter(const ShardWriter&) = delete;
  ShardWriter& operator=(const ShardWriter&) = delete;
  // Throws naming the path and position of an id >= vocab_size (when vocab_size != 0) or one that
  // does not fit the width.
  void append(const uint32_t* tokens, size_t n);
  uint64_t count() const { return count_; }
  // Completes the shard and renames it to `dest` (default: the constructor's path).
  void finish(const std::string& dest = {});

 private:
  void abandon();
  std::string path_, tmp_;
  uint64_t vocab_, count_ = 0;
  uint32_t width_;
  void* file_ = nullptr;  // std::FILE*
  std::vector<uint16_t> buf16_;
};
// Reads a shard in either format (detected by magic). Errors name the path and the problem
// (wrong magic, truncated, count mismatch, unsupported version/dtype). vocab_size_out may be null.
std::vector<uint32_t> read_shard(const std::string& path, uint64_t* vocab_size_out = nullptr);

// The shard files a data path stands for, in order: a file is itself; a directory holding an
// `index.json` (written by `bitnet prepare` for a split of many shards) is the shards it lists,
// refused while the index says the preparation is incomplete; any other directory is all its
// *.bin / *.tok files, sorted by name.
std::vector<std::string> shard_files(const std::string& path);

// The SentencePiece model that belongs to a data path, or "" when there is none: the tokenizer
// named by a directory's index.json, else tokenizer.model in the directory (or beside the file).
std::string tokenizer_beside(const std::string& data_path);

// Tokens of one split, concatenated from one or more shards. Shards are memory-mapped, not read:
// a dataset of any size costs address space, and memory only for the pages a reader touches.
class TokenDataset {
 public:
  TokenDataset();
  ~TokenDataset();
  TokenDataset(TokenDataset&&) noexcept;
  TokenDataset& operator=(TokenDataset&&) noexcept;
  // paths: shard files or directories (see shard_files). Headers are checked when opening.
  explicit TokenDataset(const std::vector<std::string>& paths);
  int64_t size() const { return size_; }
  // Copies tokens [pos, pos + n) into out (throws naming the range when it is outside [0, size)).
  void read(int64_t pos, int64_t n, uint32_t* out) const;
  uint32_t at(int64_t pos) const;
  // The whole dataset as one array: loads every token into memory on the first call (use read()
  // for large datasets). Not thread-safe on the first call.
  const uint32_t* data() const;
  uint64_t vocab_size() const { return vocab_; }  // max over shards' headers (0 = unknown)
  uint32_t max_token() const;
  int64_t shards() const;  // shard files holding at least one token
  // Throws naming the first token >= vocab: its value, shard file and index within that file.
  // Own-format shards whose header vocabulary is in (0, vocab] are trusted without a scan (their
  // writer refuses ids outside it); the others (llm.c, unknown or larger vocabulary) are scanned.
  void check_vocab(uint64_t vocab) const;

 private:
  struct Segment;
  std::vector<Segment> segs_;
  int64_t size_ = 0;
  uint64_t vocab_ = 0;
  mutable std::vector<uint32_t> whole_;  // data()'s copy
};

}  // namespace data
