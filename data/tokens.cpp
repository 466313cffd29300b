// Token shards on disk (own "BNTOKSH" format and llm.c `.bin`) and the concatenated TokenDataset.
#include "data/tokens.h"

#include <algorithm>
#include <bit>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <memory>
#include <nlohmann/json.hpp>
#include <sstream>
#include <system_error>

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "autograd/error.h"

namespace data {

static_assert(std::endian::native == std::endian::little,
              "token shards are little-endian; a big-endian host needs byte swapping");

namespace fs = std::filesystem;

namespace {

constexpr char kMagic[8] = {'B', 'N', 'T', 'O', 'K', 'S', 'H', '\0'};
constexpr uint32_t kVersion = 1;
constexpr size_t kHeaderBytes = 32;
constexpr int32_t kLlmcMagic = 20240520;
constexpr size_t kLlmcHeaderBytes = 256 * sizeof(int32_t);

struct FileCloser {
  void operator()(std::FILE* f) const {
    if (f) std::fclose(f);
  }
};
using File = std::unique_ptr<std::FILE, FileCloser>;

std::string errno_text() { return std::strerror(errno); }

// Shows up to 8 bytes as escaped text plus hex, for "found ..." in magic errors.
std::string describe_bytes(const unsigned char* p, size_t n) {
  std::ostringstream os;
  os << '"';
  for (size_t i = 0; i < n; ++i) {
    const unsigned char c = p[i];
    if (c >= 32 && c < 127 && c != '"' && c != '\\') {
      os << char(c);
    } else {
      static const char* hex = "0123456789abcdef";
      os << "\\x" << hex[c >> 4] << hex[c & 15];
    }
  }
  os << '"';
  return os.str();
}

template <class T>
T load_le(const unsigned char* p) {
  T v;
  std::memcpy(&v, p, sizeof(T));
  return v;
}

void read_whole(const std::string& path, std::vector<unsigned char>& bytes) {
  std::error_code ec;
  if (!fs::exists(path, ec)) autograd::fail("read_shard: ", path, ": no such file");
  if (fs::is_directory(path, ec))
    autograd::fail("read_shard: ", path, ": is a directory, not a shard file");
  File f(std::fopen(path.c_str(), "rb"));
  if (!f) autograd::fail("read_shard: ", path, ": cannot open: ", errno_text());
  if (std::fseek(f.get(), 0, SEEK_END) != 0)
    autograd::fail("read_shard: ", path, ": cannot seek: ", errno_text());
  const long size = std::ftell(f.get());
  if (size < 0) autograd::fail("read_shard: ", path, ": cannot tell size: ", errno_text());
  std::rewind(f.get());
  bytes.resize(size_t(size));
  if (size > 0 && std::fread(bytes.data(), 1, bytes.size(), f.get()) != bytes.size())
    autograd::fail("read_shard: ", path, ": read error after opening: ", errno_text());
}

// Where the tokens of a shard lie, from its header (either format).
struct ShardLayout {
  size_t offset = 0;  // first token byte
  uint64_t count = 0;
  uint32_t width = 0;
  uint64_t vocab = 0;  // 0 = unknown (llm.c)
  bool own = false;    // BNTOKSH (its header vocabulary is enforced by the writer)
};

// Checks that the declared count matches the bytes after the header.
void check_size(const std::string& path, size_t size, size_t off, uint64_t count, uint32_t width) {
  const uint64_t avail = size - off;
  if (count > avail / width)
    autograd::fail("read_shard: ", path, ": truncated data: header declares ", count, " tokens (",
                   count * width, " bytes at ", width, " bytes per token) but only ", avail,
                   " bytes follow the header");
  if (count * width != avail)
    autograd::fail("read_shard: ", path, ": token count mismatch: header declares ", count,
                   " tokens (", count * width, " bytes) but ", avail,
                   " bytes follow the header (trailing data)");
}

// Parses and checks the header of a shard of `size` bytes at b (the whole file).
ShardLayout parse_shard(const std::string& path, const unsigned char* b, size_t size) {
  if (size == 0)
    autograd::fail("read_shard: ", path, ": empty file (0 bytes), expected a token shard");
  const size_t head = std::min<size_t>(size, 8);
  const bool own_prefix = std::memcmp(b, kMagic, head) == 0;
  const bool llmc = size >= 4 && load_le<int32_t>(b) == kLlmcMagic;
  ShardLayout l;
  if (own_prefix) {
    if (size < kHeaderBytes)
      autograd::fail("read_shard: ", path, ": truncated header: file has ", size,
                     " bytes, the BNTOKSH header needs ", kHeaderBytes);
    const uint32_t version = load_le<uint32_t>(b + 8);
    l.width = load_le<uint32_t>(b + 12);
    l.count = load_le<uint64_t>(b + 16);
    l.vocab = load_le<uint64_t>(b + 24);
    if (version != kVersion)
      autograd::fail("read_shard: ", path, ": unsupported BNTOKSH version ", version,
                     " (this build reads version ", kVersion, ")");
    if (l.width != 2 && l.width != 4)
      autograd::fail("read_shard: ", path, ": unsupported token width ", l.width,
                     " bytes per token (expected 2 or 4)");
    l.offset = kHeaderBytes;
    l.own = true;
  } else if (llmc) {
    if (size < kLlmcHeaderBytes)
      autograd::fail("read_shard: ", path, ": truncated header: file has ", size,
                     " bytes, the llm.c header needs ", kLlmcHeaderBytes);
    const int32_t version = load_le<int32_t>(b + 4);
    const int32_t count = load_le<int32_t>(b + 8);
    if (version != 1 && version != 2)
      autograd::fail("read_shard: ", path, ": unsupported llm.c version ", version,
                     " (expected 1 for u16 tokens or 2 for u32 tokens)");
    if (count < 0)
      autograd::fail("read_shard: ", path, ": llm.c header declares a negative token count ",
                     count);
    l.offset = kLlmcHeaderBytes;
    l.count = uint64_t(count);
    l.width = version == 1 ? 2 : 4;
  } else {
    // A short llm.c prefix (fewer than 4 bytes) cannot be told apart from junk: wrong magic.
    autograd::fail("read_shard: ", path, ": wrong magic: found ", describe_bytes(b, head),
                   ", expected \"BNTOKSH\\x00\" (bitnet shard) or int32 ", kLlmcMagic,
                   " (llm.c shard, bytes \"\\x18\\xb8\\x34\\x01\")");
  }
  check_size(path, size, l.offset, l.count, l.width);
  return l;
}

// Copies n tokens of `width` bytes from p to out, widening u16.
void widen(const unsigned char* p, uint32_t width, size_t n, uint32_t* out) {
  if (n == 0) return;  // (memcpy from/to null is undefined even for 0 bytes: fuzz_shard)
  if (width == 2) {
    for (size_t i = 0; i < n; ++i) out[i] = load_le<uint16_t>(p + 2 * i);
  } else {
    std::memcpy(out, p, n * 4);
  }
}

void write_header(std::FILE* f, uint32_t width, uint64_t n, uint64_t vocab_size, bool& ok) {
  unsigned char header[kHeaderBytes] = {};
  std::memcpy(header, kMagic, 8);
  std::memcpy(header + 8, &kVersion, 4);
  std::memcpy(header + 12, &width, 4);
  std::memcpy(header + 16, &n, 8);
  std::memcpy(header + 24, &vocab_size, 8);
  ok = ok && std::fwrite(header, 1, kHeaderBytes, f) == kHeaderBytes;
}

}  // namespace

ShardWriter::ShardWriter(std::string path, uint64_t vocab_size, uint32_t width)
    : path_(std::move(path)), tmp_(path_ + ".tmp"), vocab_(vocab_size), width_(width) {
  BN_CHECK(width == 2 || width == 4, "ShardWriter", path_, ": token width ", width,
           " is not 2 or 4");
  std::FILE* f = std::fopen(tmp_.c_str(), "wb");
  if (!f) autograd::fail("write_shard: ", path_, ": cannot create ", tmp_, ": ", errno_text());
  file_ = f;
  bool ok = true;
  write_header(f, width_, 0, vocab_, ok);  // the count is filled in by finish()
  if (!ok) {
    const std::string why = errno_text();
    abandon();
    autograd::fail("write_shard: ", path_, ": write failed: ", why);
  }
}

ShardWriter::~ShardWriter() { abandon(); }

void ShardWriter::abandon() {
  if (!file_) return;
  std::fclose(static_cast<std::FILE*>(file_));
  file_ = nullptr;
  std::remove(tmp_.c_str());
}

void ShardWriter::append(const uint32_t* tokens, size_t n) {
  BN_CHECK(file_ != nullptr, "ShardWriter::append", path_, ": the shard is already finished");
  const uint64_t limit = width_ == 2 ? 65536 : 0;
  for (size_t i = 0; i < n; ++i) {
    if (vocab_ && tokens[i] >= vocab_)
      autograd::fail("write_shard: ", path_, ": token ", tokens[i], " at position ", count_ + i,
                     " is >= the vocabulary size ", vocab_);
    if (limit && tokens[i] >= limit)
      autograd::fail("write_shard: ", path_, ": token ", tokens[i], " at position ", count_ + i,
                     " does not fit in 2 bytes");
  }
  auto* f = static_cast<std::FILE*>(file_);
  bool ok = true;
  if (width_ == 4) {
    ok = std::fwrite(tokens, 4, n, f) == n;
  } else {
    constexpr size_t kChunk = 1 << 16;
    for (size_t i = 0; ok && i < n; i += kChunk) {
      const size_t m = std::min(kChunk, n - i);
      buf16_.resize(m);
      for (size_t j = 0; j < m; ++j) buf16_[j] = uint16_t(tokens[i + j]);
      ok = std::fwrite(buf16_.data(), 2, m, f) == m;
    }
  }
  if (!ok) {
    const std::string why = errno_text();
    abandon();
    autograd::fail("write_shard: ", path_, ": write failed: ", why);
  }
  count_ += n;
}

void ShardWriter::finish(const std::string& dest_in) {
  BN_CHECK(file_ != nullptr, "ShardWriter::finish", path_, ": the shard is already finished");
  const std::string dest = dest_in.empty() ? path_ : dest_in;
  auto* f = static_cast<std::FILE*>(file_);
  bool ok = std::fseek(f, 0, SEEK_SET) == 0;
  write_header(f, width_, count_, vocab_, ok);
  if (!ok) {
    const std::string why = errno_text();
    abandon();
    autograd::fail("write_shard: ", dest, ": write failed: ", why);
  }
  file_ = nullptr;
  if (std::fclose(f) != 0) {
    const std::string why = errno_text();
    std::remove(tmp_.c_str());
    autograd::fail("write_shard: ", dest, ": close failed: ", why);
  }
  std::error_code ec;
  fs::rename(tmp_, dest, ec);
  if (ec) {
    std::remove(tmp_.c_str());
    autograd::fail("write_shard: ", dest, ": cannot rename ", tmp_, ": ", ec.message());
  }
}

void write_shard(const std::string& path, const std::vector<uint32_t>& tokens,
                 uint64_t vocab_size) {
  uint32_t maxv = 0;
  for (size_t i = 0; i < tokens.size(); ++i) {
    if (vocab_size && tokens[i] >= vocab_size)
      autograd::fail("write_shard: ", path, ": token ", tokens[i], " at position ", i,
                     " is >= the vocabulary size ", vocab_size);
    maxv = std::max(maxv, tokens[i]);
  }
  ShardWriter w(path, vocab_size, maxv < 65536 ? 2 : 4);
  w.append(tokens.data(), tokens.size());
  w.finish();
}

std::vector<uint32_t> read_shard(const std::string& path, uint64_t* vocab_size_out) {
  std::vector<unsigned char> b;
  read_whole(path, b);
  const ShardLayout l = parse_shard(path, b.data(), b.size());
  std::vector<uint32_t> out(static_cast<size_t>(l.count));
  widen(b.data() + l.offset, l.width, out.size(), out.data());
  if (vocab_size_out) *vocab_size_out = l.vocab;
  return out;
}

std::vector<std::string> shard_files(const std::string& p) {
  std::error_code ec;
  if (!fs::is_directory(p, ec)) {
    if (!fs::exists(p, ec)) autograd::fail("TokenDataset: ", p, ": no such file or directory");
    return {p};
  }
  const fs::path index = fs::path(p) / "index.json";
  if (fs::exists(index, ec)) {
    nlohmann::json j;
    try {
      std::ifstream f(index, std::ios::binary);
      j = nlohmann::json::parse(f);
      if (!j.value("complete", false))
        autograd::fail("TokenDataset: ", index.string(),
                       ": the preparation that writes this directory is incomplete (run `bitnet "
                       "prepare` again with the same arguments to resume it)");
      std::vector<std::string> files;
      for (const auto& s : j.at("shards"))
        files.push_back((fs::path(p) / s.at("file").get<std::string>()).string());
      if (files.empty()) autograd::fail("TokenDataset: ", index.string(), ": lists no shards");
      return files;
    } catch (const nlohmann::json::exception& e) {
      autograd::fail("TokenDataset: ", index.string(), ": not a shard index: ", e.what());
    }
  }
  std::vector<std::string> found;
  for (const auto& e : fs::directory_iterator(p, ec)) {
    std::error_code ec2;
    if (!e.is_regular_file(ec2)) continue;
    const std::string ext = e.path().extension().string();
    if (ext == ".bin" || ext == ".tok") found.push_back(e.path().string());
  }
  if (ec) autograd::fail("TokenDataset: cannot list directory ", p, ": ", ec.message());
  if (found.empty())
    autograd::fail("TokenDataset: directory ", p, " contains no *.bin or *.tok shard files");
  std::sort(found.begin(), found.end());
  return found;
}

std::string tokenizer_beside(const std::string& data_path) {
  std::error_code ec;
  const bool dir = fs::is_directory(data_path, ec);
  const fs::path d = dir ? fs::path(data_path) : fs::path(data_path).parent_path();
  if (dir && fs::exists(d / "index.json", ec)) {
    try {
      std::ifstream f(d / "index.json", std::ios::binary);
      const auto j = nlohmann::json::parse(f);
      if (j.contains("tokenizer") && j["tokenizer"].is_string()) {
        const fs::path t = d / j["tokenizer"].get<std::string>();
        if (fs::exists(t, ec)) return t.lexically_normal().string();
      }
    } catch (const nlohmann::json::exception&) {
    }
  }
  const fs::path t = d / "tokenizer.model";
  return fs::exists(t, ec) ? t.string() : std::string();
}

// One memory-mapped shard file.
struct TokenDataset::Segment {
  std::string path;
  void* map = nullptr;
  size_t map_bytes = 0;
  const unsigned char* tokens = nullptr;
  uint32_t width = 4;
  int64_t start = 0, count = 0;  // index of its first token in the dataset, its token count
  uint64_t vocab = 0;
  bool own = false;

  Segment() = default;
  Segment(Segment&& o) noexcept { *this = std::move(o); }
  Segment& operator=(Segment&& o) noexcept {
    std::swap(path, o.path);
    std::swap(map, o.map);
    std::swap(map_bytes, o.map_bytes);
    tokens = o.tokens, width = o.width, start = o.start, count = o.count, vocab = o.vocab;
    own = o.own;
    return *this;
  }
  ~Segment() {
    if (map) ::munmap(map, map_bytes);
  }
  void copy(int64_t from, int64_t n, uint32_t* out) const {
    widen(tokens + size_t(from) * width, width, size_t(n), out);
  }
  // Calls f(index of the first token in this shard, tokens, n) over 1M-token pieces.
  template <class F>
  void scan(F f) const {
    std::vector<uint32_t> buf;
    for (int64_t i = 0; i < count; i += int64_t(1) << 20) {
      const int64_t n = std::min<int64_t>(int64_t(1) << 20, count - i);
      buf.resize(size_t(n));
      copy(i, n, buf.data());
      f(i, buf.data(), n);
    }
  }
};

TokenDataset::TokenDataset() = default;
TokenDataset::~TokenDataset() = default;
TokenDataset::TokenDataset(TokenDataset&&) noexcept = default;
TokenDataset& TokenDataset::operator=(TokenDataset&&) noexcept = default;

TokenDataset::TokenDataset(const std::vector<std::string>& paths) {
  BN_CHECK(!paths.empty(), "TokenDataset", "no shard paths given");
  std::vector<std::string> files;
  for (const auto& p : paths) {
    const auto f = shard_files(p);
    files.insert(files.end(), f.begin(), f.end());
  }
  for (const auto& f : files) {
    std::error_code ec;
    if (fs::is_directory(f, ec))
      autograd::fail("read_shard: ", f, ": is a directory, not a shard file");
    const int fd = ::open(f.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) autograd::fail("read_shard: ", f, ": cannot open: ", errno_text());
    struct stat st {};
    if (::fstat(fd, &st) != 0) {
      const std::string why = errno_text();
      ::close(fd);
      autograd::fail("read_shard: ", f, ": cannot stat: ", why);
    }
    Segment s;
    s.path = f;
    s.map_bytes = size_t(st.st_size);
    if (s.map_bytes > 0) {
      void* m = ::mmap(nullptr, s.map_bytes, PROT_READ, MAP_SHARED, fd, 0);
      if (m == MAP_FAILED) {
        const std::string why = errno_text();
        ::close(fd);
        autograd::fail("read_shard: ", f, ": cannot mmap ", s.map_bytes, " bytes: ", why);
      }
      s.map = m;
      ::madvise(m, s.map_bytes, MADV_RANDOM);  // the loader reads windows in a random order
    }
    ::close(fd);
    static const unsigned char none = 0;
    const ShardLayout l =
        parse_shard(f, s.map ? static_cast<const unsigned char*>(s.map) : &none, s.map_bytes);
    s.tokens = static_cast<const unsigned char*>(s.map) + l.offset;
    s.width = l.width;
    s.count = int64_t(l.count);
    s.start = size_;
    s.vocab = l.vocab;
    s.own = l.own;
    vocab_ = std::max(vocab_, l.vocab);
    size_ += s.count;
    if (s.count > 0) segs_.push_back(std::move(s));
  }
  if (size_ == 0) {
    std::ostringstream os;
    for (size_t i = 0; i < files.size(); ++i) os << (i ? ", " : "") << files[i];
    autograd::fail("TokenDataset: dataset is empty (0 tokens) in ", os.str());
  }
}

void TokenDataset::read(int64_t pos, int64_t n, uint32_t* out) const {
  BN_CHECK(pos >= 0 && n >= 0 && pos + n <= size_, "TokenDataset::read", "tokens [", pos, ", ",
           pos + n, ") are outside the dataset of ", size_, " tokens");
  auto it = std::upper_bound(segs_.begin(), segs_.end(), pos,
                             [](int64_t p, const Segment& s) { return p < s.start; });
  while (n > 0) {
    const Segment& s = *std::prev(it);
    const int64_t from = pos - s.start, m = std::min(n, s.count - from);
    s.copy(from, m, out);
    out += m, pos += m, n -= m, ++it;
  }
}

int64_t TokenDataset::shards() const { return int64_t(segs_.size()); }

uint32_t TokenDataset::at(int64_t pos) const {
  uint32_t t = 0;
  read(pos, 1, &t);
  return t;
}

const uint32_t* TokenDataset::data() const {
  if (whole_.size() != size_t(size_)) {
    whole_.resize(size_t(size_));
    if (size_ > 0) read(0, size_, whole_.data());
  }
  return whole_.data();
}

uint32_t TokenDataset::max_token() const {
  uint32_t m = 0;
  for (const Segment& s : segs_)
    s.scan([&](int64_t, const uint32_t* t, int64_t n) {
      for (int64_t k = 0; k < n; ++k) m = std::max(m, t[k]);
    });
  return m;
}

void TokenDataset::check_vocab(uint64_t vocab) const {
  for (const Segment& s : segs_) {
    if (s.own && s.vocab > 0 && s.vocab <= vocab) continue;  // the writer enforced it
    s.scan([&](int64_t i, const uint32_t* t, int64_t n) {
      for (int64_t k = 0; k < n; ++k)
        if (t[k] >= vocab)
          autograd::fail("TokenDataset: ", s.path, ": token ", t[k], " at token index ", i + k,
                         " of that file (position ", s.start + i + k,
                         " of the dataset) is outside the vocabulary of ", vocab,
                         " ids (model.vocab_size)");
    });
  }
}

}  // namespace data
