// Corpus input of `bitnet prepare`: files and folders, gzip/zstd streams, plain text and JSON
// Lines, documents delivered in bounded pieces, and the log of bad input (counted, located, or
// refused).
#pragma once
#include <array>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace data {

// Strips Brown-corpus tags from one line: "The/at Fulton/np-tl ,/," -> "The Fulton ,".
// Each whitespace-separated token keeps the part before its last '/' (tokens without '/' are
// kept; tokens that become empty are dropped); Brown's `` and '' quotes become a plain '"';
// the result has single spaces and no leading/trailing whitespace.
std::string strip_brown_tags(const std::string& line);

// True when the bytes are valid UTF-8 (no overlongs, surrogates or code points above U+10FFFF).
bool valid_utf8(const char* p, size_t n);

// The files that `inputs` (files or directories) stand for, in order. A directory contributes its
// regular files (not recursive), sorted by name, except non-text files: names starting with '.',
// README and README.*, CONTENTS, cats.txt, and names ending in .pickle or .json. Files named
// explicitly are always read. Throws naming a missing input or a directory without text files.
std::vector<std::string> gather_inputs(const std::vector<std::string>& inputs);

// JSON Lines by name: *.jsonl or *.ndjson, also under a .gz / .zst / .zstd suffix.
bool is_json_lines(const std::string& path);

// The kinds of bad input, in the order of BadInputLog::counts.
enum class BadKind { InvalidUtf8, MalformedJson, MissingField, Truncated, LongLine };
constexpr int kBadKinds = 5;
const char* to_string(BadKind k);  // "invalid_utf8", "malformed_json", ...

// Bad input met while reading, by kind, with the first few locations ("file:line: what").
// strict: the first one throws "prepare: FILE:LINE: what (--strict)" instead.
struct BadInputLog {
  static constexpr size_t kKeep = 10;
  bool strict = false;
  std::array<int64_t, kBadKinds> counts{};
  std::vector<std::string> first;
  void add(BadKind k, const std::string& file, int64_t line, const std::string& what);
  int64_t total() const;
};

// How the documents of plain text files are cut (JSON Lines: always one record = one document).
enum class DocMode {
  PerFile,   // each file is one document
  PerBlock,  // blank-line separated blocks are documents
  PerLine,   // each non-blank line is a document
};

struct CorpusOptions {
  std::string text_field = "text";  // JSON Lines: the member holding the document's text
  bool brown_tags = false;          // each line goes through strip_brown_tags
  DocMode plain = DocMode::PerFile;
  size_t piece_bytes = size_t(1) << 20;      // a plain document is delivered in pieces of ~this
  size_t max_line_bytes = size_t(64) << 20;  // longer lines are bad input (BadKind::LongLine)
};

// Part of a document: its lines (cleaned: no '\r', tags stripped, non-blank), in order.
struct Piece {
  int64_t doc = 0;     // corpus-wide document index (0, 1, ... in reading order)
  bool first = false;  // the document's first piece
  std::vector<std::string> lines;
  size_t bytes = 0;  // bytes of the lines
};

// Reads the files in order as one stream of document pieces, with bounded memory (a piece, a
// line, and the decompressor's buffers). Compression is detected by magic bytes (gzip 1f 8b,
// zstd 28 b5 2f fd), not by name. Bad input goes to `log` (which may be null: ignored) and is
// skipped: a plain line with invalid UTF-8 is dropped; a JSON line that is not valid UTF-8, does
// not parse, is not an object or lacks a string `text_field` is dropped; a truncated or corrupt
// compressed stream ends its file (its last incomplete line is dropped); a line longer than
// max_line_bytes is dropped. Lines are counted from 1 in the decompressed text.
class CorpusReader {
 public:
  CorpusReader(std::vector<std::string> files, CorpusOptions opt, BadInputLog* log);
  ~CorpusReader();
  // The next piece; false at the end of the corpus.
  bool next(Piece& out);
  uint64_t consumed() const;  // bytes read from the input files so far (compressed size)

 private:
  struct File;
  bool fill(Piece& out);
  std::vector<std::string> files_;
  CorpusOptions opt_;
  BadInputLog* log_;
  size_t next_file_ = 0;
  std::unique_ptr<File> cur_;
  uint64_t done_bytes_ = 0;  // consumed bytes of finished files
  int64_t docs_ = 0;         // documents started
};

}  // namespace data
