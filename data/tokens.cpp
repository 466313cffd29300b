// Token shards on disk (own "BNTOKSH" format and llm.c `.bin`) and the concatenated TokenDataset.
#include "data/tokens.h"

#include <algorithm>
#include <bit>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <memory>
#include <sstream>
#include <system_error>

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

// Decodes `count` tokens of `width` bytes starting at `off`, checking the declared size.
std::vector<uint32_t> decode_tokens(const std::string& path, const std::vector<unsigned char>& b,
                                    size_t off, uint64_t count, uint32_t width) {
  const uint64_t avail = b.size() - off;
  if (count > avail / width)
    autograd::fail("read_shard: ", path, ": truncated data: header declares ", count, " tokens (",
                   count * width, " bytes at ", width, " bytes per token) but only ", avail,
                   " bytes follow the header");
  if (count * width != avail)
    autograd::fail("read_shard: ", path, ": token count mismatch: header declares ", count,
                   " tokens (", count * width, " bytes) but ", avail,
                   " bytes follow the header (trailing data)");
  std::vector<uint32_t> out(static_cast<size_t>(count));
  const unsigned char* p = b.data() + off;
  if (width == 2) {
    for (size_t i = 0; i < out.size(); ++i) out[i] = load_le<uint16_t>(p + 2 * i);
  } else if (!out.empty()) {  // (memcpy from/to null is undefined even for 0 bytes: fuzz_shard)
    std::memcpy(out.data(), p, out.size() * 4);
  }
  return out;
}

}  // namespace

void write_shard(const std::string& path, const std::vector<uint32_t>& tokens,
                 uint64_t vocab_size) {
  uint32_t maxv = 0;
  for (size_t i = 0; i < tokens.size(); ++i) {
    if (vocab_size && tokens[i] >= vocab_size)
      autograd::fail("write_shard: ", path, ": token ", tokens[i], " at position ", i,
                     " is >= the vocabulary size ", vocab_size);
    maxv = std::max(maxv, tokens[i]);
  }
  const uint32_t width = maxv < 65536 ? 2 : 4;
  unsigned char header[kHeaderBytes] = {};
  std::memcpy(header, kMagic, 8);
  const uint64_t n = tokens.size();
  std::memcpy(header + 8, &kVersion, 4);
  std::memcpy(header + 12, &width, 4);
  std::memcpy(header + 16, &n, 8);
  std::memcpy(header + 24, &vocab_size, 8);

  // Write to a temporary next to the target, then rename: readers never see a half shard.
  const std::string tmp = path + ".tmp";
  {
    File f(std::fopen(tmp.c_str(), "wb"));
    if (!f) autograd::fail("write_shard: ", path, ": cannot create ", tmp, ": ", errno_text());
    bool ok = std::fwrite(header, 1, kHeaderBytes, f.get()) == kHeaderBytes;
    if (ok && width == 4) {
      ok = std::fwrite(tokens.data(), 4, tokens.size(), f.get()) == tokens.size();
    } else if (ok) {
      constexpr size_t kChunk = 1 << 16;
      std::vector<uint16_t> buf;
      for (size_t i = 0; ok && i < tokens.size(); i += kChunk) {
        const size_t m = std::min(kChunk, tokens.size() - i);
        buf.resize(m);
        for (size_t j = 0; j < m; ++j) buf[j] = uint16_t(tokens[i + j]);
        ok = std::fwrite(buf.data(), 2, m, f.get()) == m;
      }
    }
    if (!ok) {
      const std::string why = errno_text();
      f.reset();
      std::remove(tmp.c_str());
      autograd::fail("write_shard: ", path, ": write failed: ", why);
    }
    std::FILE* raw = f.release();
    if (std::fclose(raw) != 0) {
      const std::string why = errno_text();
      std::remove(tmp.c_str());
      autograd::fail("write_shard: ", path, ": close failed: ", why);
    }
  }
  std::error_code ec;
  fs::rename(tmp, path, ec);
  if (ec) {
    std::remove(tmp.c_str());
    autograd::fail("write_shard: ", path, ": cannot rename ", tmp, ": ", ec.message());
  }
}

std::vector<uint32_t> read_shard(const std::string& path, uint64_t* vocab_size_out) {
  std::vector<unsigned char> b;
  read_whole(path, b);
  if (b.empty())
    autograd::fail("read_shard: ", path, ": empty file (0 bytes), expected a token shard");

  const size_t head = std::min<size_t>(b.size(), 8);
  const bool own_prefix = std::memcmp(b.data(), kMagic, head) == 0;
  const bool llmc = b.size() >= 4 && load_le<int32_t>(b.data()) == kLlmcMagic;

  if (own_prefix) {
    if (b.size() < kHeaderBytes)
      autograd::fail("read_shard: ", path, ": truncated header: file has ", b.size(),
                     " bytes, the BNTOKSH header needs ", kHeaderBytes);
    const uint32_t version = load_le<uint32_t>(b.data() + 8);
    const uint32_t width = load_le<uint32_t>(b.data() + 12);
    const uint64_t count = load_le<uint64_t>(b.data() + 16);
    const uint64_t vocab = load_le<uint64_t>(b.data() + 24);
    if (version != kVersion)
      autograd::fail("read_shard: ", path, ": unsupported BNTOKSH version ", version,
                     " (this build reads version ", kVersion, ")");
    if (width != 2 && width != 4)
      autograd::fail("read_shard: ", path, ": unsupported token width ", width,
                     " bytes per token (expected 2 or 4)");
    auto out = decode_tokens(path, b, kHeaderBytes, count, width);
    if (vocab_size_out) *vocab_size_out = vocab;
    return out;
  }
  if (llmc) {
    if (b.size() < kLlmcHeaderBytes)
      autograd::fail("read_shard: ", path, ": truncated header: file has ", b.size(),
                     " bytes, the llm.c header needs ", kLlmcHeaderBytes);
    const int32_t version = load_le<int32_t>(b.data() + 4);
    const int32_t count = load_le<int32_t>(b.data() + 8);
    if (version != 1 && version != 2)
      autograd::fail("read_shard: ", path, ": unsupported llm.c version ", version,
                     " (expected 1 for u16 tokens or 2 for u32 tokens)");
    if (count < 0)
      autograd::fail("read_shard: ", path, ": llm.c header declares a negative token count ",
                     count);
    auto out = decode_tokens(path, b, kLlmcHeaderBytes, uint64_t(count), version == 1 ? 2 : 4);
    if (vocab_size_out) *vocab_size_out = 0;
    return out;
  }
  // A short llm.c prefix (fewer than 4 bytes) cannot be told apart from junk; call it wrong magic.
  autograd::fail("read_shard: ", path, ": wrong magic: found ", describe_bytes(b.data(), head),
                 ", expected \"BNTOKSH\\x00\" (bitnet shard) or int32 ", kLlmcMagic,
                 " (llm.c shard, bytes \"\\x18\\xb8\\x34\\x01\")");
}

TokenDataset::TokenDataset(const std::vector<std::string>& paths) {
  BN_CHECK(!paths.empty(), "TokenDataset", "no shard paths given");
  std::vector<std::string> files;
  for (const auto& p : paths) {
    std::error_code ec;
    if (fs::is_directory(p, ec)) {
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
      files.insert(files.end(), found.begin(), found.end());
    } else if (fs::exists(p, ec)) {
      files.push_back(p);
    } else {
      autograd::fail("TokenDataset: ", p, ": no such file or directory");
    }
  }
  for (const auto& f : files) {
    uint64_t v = 0;
    std::vector<uint32_t> t = read_shard(f, &v);
    vocab_ = std::max(vocab_, v);
    files_.emplace_back(f, int64_t(tokens_.size()));
    if (tokens_.empty())
      tokens_ = std::move(t);
    else
      tokens_.insert(tokens_.end(), t.begin(), t.end());
  }
  if (tokens_.empty()) {
    std::ostringstream os;
    for (size_t i = 0; i < files.size(); ++i) os << (i ? ", " : "") << files[i];
    autograd::fail("TokenDataset: dataset is empty (0 tokens) in ", os.str());
  }
}

uint32_t TokenDataset::max_token() const {
  uint32_t m = 0;
  for (uint32_t t : tokens_) m = std::max(m, t);
  return m;
}

void TokenDataset::check_vocab(uint64_t vocab) const {
  for (size_t i = 0; i < tokens_.size(); ++i)
    if (tokens_[i] >= vocab) {
      auto f = std::upper_bound(files_.begin(), files_.end(), int64_t(i),
                                [](int64_t pos, const auto& e) { return pos < e.second; });
      const std::string file = f == files_.begin() ? std::string("?") : std::prev(f)->first;
      const int64_t in_file = f == files_.begin() ? int64_t(i) : int64_t(i) - std::prev(f)->second;
      autograd::fail("TokenDataset: ", file, ": token ", tokens_[i], " at token index ", in_file,
                     " of that file (position ", i,
                     " of the dataset) is outside the vocabulary of ", vocab,
                     " ids (model.vocab_size)");
    }
}

}  // namespace data
