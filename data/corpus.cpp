// Corpus reading: input gathering, gzip/zstd/plain byte streams, lines, documents, bad-input log.
#include "data/corpus.h"

#include <zlib.h>
#include <zstd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <nlohmann/json.hpp>

#include "autograd/error.h"

namespace data {

namespace fs = std::filesystem;

namespace {

bool is_space(char c) {
  return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\v' || c == '\f';
}

bool blank(const std::string& s) {
  return std::all_of(s.begin(), s.end(), [](char c) { return is_space(c); });
}

bool ends_with(const std::string& s, const std::string& suf) {
  return s.size() >= suf.size() && s.compare(s.size() - suf.size(), suf.size(), suf) == 0;
}

// The "non-text files skipped" rule (corpus.h), applied to files found inside directories.
bool skipped_name(const std::string& name) {
  return name.empty() || name[0] == '.' || name == "README" || name.rfind("README.", 0) == 0 ||
         name == "CONTENTS" || name == "cats.txt" || ends_with(name, ".pickle") ||
         ends_with(name, ".json");
}

// A file's bytes, decompressed when it starts with a gzip or zstd magic.
class ByteStream {
 public:
  explicit ByteStream(const std::string& path) : path_(path), in_(size_t(1) << 18) {
    f_ = std::fopen(path.c_str(), "rb");
    if (!f_) autograd::fail("prepare: cannot open ", path, ": ", std::strerror(errno));
    refill();
    const auto* b = reinterpret_cast<const unsigned char*>(in_.data());
    if (in_len_ >= 2 && b[0] == 0x1f && b[1] == 0x8b) {
      kind_ = Gzip;
      std::memset(&zs_, 0, sizeof zs_);
      if (inflateInit2(&zs_, 15 + 32) != Z_OK) autograd::fail("prepare: ", path, ": zlib init");
    } else if (in_len_ >= 4 && b[0] == 0x28 && b[1] == 0xb5 && b[2] == 0x2f && b[3] == 0xfd) {
      kind_ = Zstd;
      zd_ = ZSTD_createDStream();
      if (!zd_ || ZSTD_isError(ZSTD_initDStream(zd_)))
        autograd::fail("prepare: ", path, ": zstd init");
    }
  }
  ~ByteStream() {
    if (kind_ == Gzip) inflateEnd(&zs_);
    if (zd_) ZSTD_freeDStream(zd_);
    if (f_) std::fclose(f_);
  }
  ByteStream(const ByteStream&) = delete;
  ByteStream& operator=(const ByteStream&) = delete;

  // Up to n decompressed bytes; 0 at the end (then error() is "" for a clean end).
  size_t read(char* out, size_t n) {
    if (ended_) return 0;
    if (kind_ == Plain) {
      if (in_pos_ == in_len_) refill();
      const size_t m = std::min(n, in_len_ - in_pos_);
      std::memcpy(out, in_.data() + in_pos_, m);
      in_pos_ += m;
      if (m == 0) ended_ = true;
      return m;
    }
    return kind_ == Gzip ? read_gzip(out, n) : read_zstd(out, n);
  }
  const std::string& error() const { return error_; }
  uint64_t consumed() const { return consumed_; }
  const char* kind_name() const {
    return kind_ == Gzip ? "gzip" : kind_ == Zstd ? "zstd" : "plain";
  }

 private:
  void refill() {
    in_pos_ = 0;
    in_len_ = std::fread(in_.data(), 1, in_.size(), f_);
    if (in_len_ == 0 && std::ferror(f_))
      autograd::fail("prepare: read error in ", path_, ": ", std::strerror(errno));
    if (in_len_ == 0) eof_ = true;
    consumed_ += in_len_;
  }
  size_t read_gzip(char* out, size_t n) {
    zs_.next_out = reinterpret_cast<Bytef*>(out);
    zs_.avail_out = uInt(n);
    while (zs_.avail_out == n) {
      if (in_pos_ == in_len_ && !eof_) refill();
      if (in_pos_ == in_len_ && eof_) {
        if (member_open_) error_ = "truncated gzip stream (the input ends inside a member)";
        ended_ = true;
        break;
      }
      zs_.next_in = reinterpret_cast<Bytef*>(in_.data() + in_pos_);
      zs_.avail_in = uInt(in_len_ - in_pos_);
      member_open_ = true;
      const int r = inflate(&zs_, Z_NO_FLUSH);
      in_pos_ = in_len_ - zs_.avail_in;
      if (r == Z_STREAM_END) {
        member_open_ = false;  // a next member may follow (concatenated gzip)
        inflateReset(&zs_);
      } else if (r != Z_OK && r != Z_BUF_ERROR) {
        error_ = std::string("corrupt gzip data: ") + (zs_.msg ? zs_.msg : "inflate error");
        ended_ = true;
        break;
      }
    }
    return n - zs_.avail_out;
  }
  size_t read_zstd(char* out, size_t n) {
    ZSTD_outBuffer ob{out, n, 0};
    while (ob.pos == 0) {
      if (in_pos_ == in_len_ && !eof_) refill();
      if (in_pos_ == in_len_ && eof_ && !zstd_pending_) {
        if (zstd_left_ != 0) error_ = "truncated zstd stream (the input ends inside a frame)";
        ended_ = true;
        break;
      }
      ZSTD_inBuffer ib{in_.data(), in_len_, in_pos_};
      const size_t r = ZSTD_decompressStream(zd_, &ob, &ib);
      in_pos_ = ib.pos;
      if (ZSTD_isError(r)) {
        error_ = std::string("corrupt zstd data: ") + ZSTD_getErrorName(r);
        ended_ = true;
        break;
      }
      zstd_left_ = r;
      zstd_pending_ = ob.pos == ob.size;  // the output was full: more may be buffered
    }
    return ob.pos;
  }

  enum Kind { Plain, Gzip, Zstd };
  std::string path_;
  std::FILE* f_ = nullptr;
  Kind kind_ = Plain;
  std::vector<char> in_;
  size_t in_pos_ = 0, in_len_ = 0;
  bool eof_ = false, ended_ = false, member_open_ = false, zstd_pending_ = false;
  size_t zstd_left_ = 0;
  uint64_t consumed_ = 0;
  z_stream zs_{};
  ZSTD_DStream* zd_ = nullptr;
  std::string error_;
};

}  // namespace

// One open input file: its byte stream cut into lines.
struct CorpusReader::File {
  File(const std::string& p, bool jsonl) : path(p), json(jsonl), in(p), buf(size_t(1) << 20) {}
  // The next line (without '\n', '\r' dropped); false at the end of the file.
  bool line(std::string& out, size_t max_bytes, BadInputLog* log) {
    out.clear();
    bool too_long = false;
    while (true) {
      if (pos == len) {
        len = in.read(buf.data(), buf.size());
        pos = 0;
        if (len == 0) {  // the end: a clean end keeps a last line without '\n'
          if (!in.error().empty()) {
            if (log)
              log->add(BadKind::Truncated, path, lineno + 1,
                       in.error() + (out.empty() ? "" : "; its incomplete last line is dropped"));
            return false;
          }
          if (out.empty() && !too_long) return false;
          ++lineno;
          if (too_long) return !report_long(out, max_bytes, log);  // (reports, then: the end)
          break;
        }
      }
      const char* s = buf.data() + pos;
      const char* nl = static_cast<const char*>(std::memchr(s, '\n', len - pos));
      const size_t m = nl ? size_t(nl - s) : len - pos;
      if (!too_long && out.size() + m <= max_bytes)
        out.append(s, m);
      else
        too_long = true, out.clear();
      pos += m + (nl ? 1 : 0);
      if (nl) {
        ++lineno;
        if (too_long) {
          if (!report_long(out, max_bytes, log)) return false;
          too_long = false;
          continue;
        }
        break;
      }
    }
    if (!out.empty() && out.back() == '\r') out.pop_back();
    return true;
  }
  bool report_long(std::string& out, size_t max_bytes, BadInputLog* log) {
    if (log)
      log->add(BadKind::LongLine, path, lineno,
               "line longer than " + std::to_string(max_bytes) + " bytes, dropped");
    out.clear();
    return true;  // reading goes on with the next line
  }

  std::string path;
  bool json;
  ByteStream in;
  std::vector<char> buf;
  size_t pos = 0, len = 0;
  int64_t lineno = 0;
  Piece open;  // the document being gathered (plain text)
  bool doc_open = false;
};

std::string strip_brown_tags(const std::string& line) {
  std::string out;
  size_t i = 0;
  while (i < line.size()) {
    while (i < line.size() && is_space(line[i])) ++i;
    if (i >= line.size()) break;
    size_t j = i;
    while (j < line.size() && !is_space(line[j])) ++j;
    std::string tok = line.substr(i, j - i);
    i = j;
    const size_t slash = tok.rfind('/');
    if (slash != std::string::npos) tok.resize(slash);
    if (tok.empty()) continue;
    if (tok == "``" || tok == "''") tok = "\"";
    if (!out.empty()) out += ' ';
    out += tok;
  }
  return out;
}

bool valid_utf8(const char* p, size_t n) {
  const auto* s = reinterpret_cast<const unsigned char*>(p);
  size_t i = 0;
  while (i < n) {
    const unsigned char c = s[i];
    if (c < 0x80) {
      ++i;
      continue;
    }
    int len = 0;
    uint32_t cp = 0;
    if ((c & 0xe0) == 0xc0)
      len = 2, cp = c & 0x1f;
    else if ((c & 0xf0) == 0xe0)
      len = 3, cp = c & 0x0f;
    else if ((c & 0xf8) == 0xf0)
      len = 4, cp = c & 0x07;
    else
      return false;
    if (i + size_t(len) > n) return false;
    for (int k = 1; k < len; ++k) {
      if ((s[i + k] & 0xc0) != 0x80) return false;
      cp = (cp << 6) | (s[i + k] & 0x3f);
    }
    static const uint32_t kMin[5] = {0, 0, 0x80, 0x800, 0x10000};
    if (cp < kMin[len] || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff)) return false;
    i += size_t(len);
  }
  return true;
}

std::vector<std::string> gather_inputs(const std::vector<std::string>& inputs) {
  std::vector<std::string> files;
  for (const auto& in : inputs) {
    std::error_code ec;
    if (fs::is_directory(in, ec)) {
      std::vector<std::string> found;
      for (const auto& e : fs::directory_iterator(in, ec)) {
        std::error_code ec2;
        if (!e.is_regular_file(ec2)) continue;
        if (skipped_name(e.path().filename().string())) continue;
        found.push_back(e.path().string());
      }
      if (ec) autograd::fail("prepare: cannot list directory ", in, ": ", ec.message());
      if (found.empty()) autograd::fail("prepare: input directory ", in, " contains no text files");
      std::sort(found.begin(), found.end());
      files.insert(files.end(), found.begin(), found.end());
    } else if (fs::is_regular_file(in, ec)) {
      files.push_back(in);
    } else if (fs::exists(in, ec)) {
      autograd::fail("prepare: input ", in, " is neither a regular file nor a directory");
    } else {
      autograd::fail("prepare: input not found: ", in);
    }
  }
  return files;
}

bool is_json_lines(const std::string& path) {
  std::string n = fs::path(path).filename().string();
  for (const char* z : {".gz", ".zst", ".zstd"})
    if (ends_with(n, z)) {
      n.resize(n.size() - std::strlen(z));
      break;
    }
  return ends_with(n, ".jsonl") || ends_with(n, ".ndjson");
}

const char* to_string(BadKind k) {
  switch (k) {
    case BadKind::InvalidUtf8:
      return "invalid_utf8";
    case BadKind::MalformedJson:
      return "malformed_json";
    case BadKind::MissingField:
      return "missing_field";
    case BadKind::Truncated:
      return "truncated";
    case BadKind::LongLine:
      return "long_line";
  }
  return "?";
}

void BadInputLog::add(BadKind k, const std::string& file, int64_t line, const std::string& what) {
  const std::string where = file + ":" + std::to_string(line) + ": " + what;
  if (strict) autograd::fail("prepare: ", where, " (--strict)");
  ++counts[size_t(k)];
  if (first.size() < kKeep) first.push_back(where);
}

int64_t BadInputLog::total() const {
  int64_t t = 0;
  for (int64_t c : counts) t += c;
  return t;
}

CorpusReader::CorpusReader(std::vector<std::string> files, CorpusOptions opt, BadInputLog* log)
    : files_(std::move(files)), opt_(std::move(opt)), log_(log) {}
CorpusReader::~CorpusReader() = default;

uint64_t CorpusReader::consumed() const { return done_bytes_ + (cur_ ? cur_->in.consumed() : 0); }

bool CorpusReader::next(Piece& out) {
  while (true) {
    if (!cur_) {
      if (next_file_ >= files_.size()) return false;
      const std::string& p = files_[next_file_++];
      cur_ = std::make_unique<File>(p, is_json_lines(p));
    }
    if (fill(out)) return true;
    done_bytes_ += cur_->in.consumed();
    cur_.reset();
  }
}

// The next piece of the current file; false when the file is done.
bool CorpusReader::fill(Piece& out) {
  File& f = *cur_;
  auto start = [&](Piece& p) {
    p = Piece{};
    p.doc = docs_++;
    p.first = true;
  };
  auto take = [&](Piece& p) {  // hands the gathered piece out; the document goes on
    out = std::move(p);
    p = Piece{};
    p.doc = out.doc;
  };
  auto add_line = [&](Piece& p, std::string&& l) {
    p.bytes += l.size();
    p.lines.push_back(std::move(l));
  };
  std::string line;
  while (f.line(line, opt_.max_line_bytes, log_)) {
    if (f.json) {
      if (blank(line)) continue;
      if (!valid_utf8(line.data(), line.size())) {
        if (log_) log_->add(BadKind::InvalidUtf8, f.path, f.lineno, "invalid UTF-8, line dropped");
        continue;
      }
      nlohmann::json j;
      try {
        j = nlohmann::json::parse(line);
      } catch (const nlohmann::json::exception& e) {
        if (log_)
          log_->add(BadKind::MalformedJson, f.path, f.lineno,
                    std::string("malformed JSON, line dropped: ") + e.what());
        continue;
      }
      const auto it = j.is_object() ? j.find(opt_.text_field) : j.end();
      if (!j.is_object() || it == j.end() || !it->is_string()) {
        if (log_)
          log_->add(BadKind::MissingField, f.path, f.lineno,
                    !j.is_object() ? "not a JSON object, line dropped"
                    : it == j.end()
                        ? "no \"" + opt_.text_field + "\" field, line dropped"
                        : "the \"" + opt_.text_field + "\" field is not a string, line dropped");
        continue;
      }
      Piece p;
      const std::string& text = it->get_ref<const std::string&>();
      size_t a = 0;
      while (a <= text.size()) {
        size_t b = text.find('\n', a);
        if (b == std::string::npos) b = text.size();
        std::string l = text.substr(a, b - a);
        a = b + 1;
        if (!l.empty() && l.back() == '\r') l.pop_back();
        if (opt_.brown_tags) l = strip_brown_tags(l);
        if (!blank(l)) add_line(p, std::move(l));
      }
      if (p.lines.empty()) continue;  // an empty text is no document
      const size_t bytes = p.bytes;
      auto lines = std::move(p.lines);
      start(out);
      out.lines = std::move(lines);
      out.bytes = bytes;
      return true;
    }
    if (!valid_utf8(line.data(), line.size())) {
      if (log_) log_->add(BadKind::InvalidUtf8, f.path, f.lineno, "invalid UTF-8, line dropped");
      continue;
    }
    if (opt_.brown_tags) line = strip_brown_tags(line);
    if (blank(line)) {
      if (opt_.plain == DocMode::PerBlock && f.doc_open) {
        f.doc_open = false;
        if (!f.open.lines.empty()) {
          take(f.open);
          return true;
        }
      }
      continue;
    }
    if (opt_.plain == DocMode::PerLine) {
      start(out);
      add_line(out, std::move(line));
      return true;
    }
    if (!f.doc_open) start(f.open), f.doc_open = true;
    add_line(f.open, std::move(line));
    if (f.open.bytes >= opt_.piece_bytes) {
      take(f.open);
      f.open.first = false;
      return true;
    }
  }
  if (f.doc_open) {  // the end of the file ends its document
    f.doc_open = false;
    if (!f.open.lines.empty()) {
      take(f.open);
      return true;
    }
  }
  return false;
}

}  // namespace data
