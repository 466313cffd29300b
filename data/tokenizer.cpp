// SentencePiece wrapper: BPE training with byte fallback and identity normalisation, encode/decode.
#include "data/tokenizer.h"

#include <sentencepiece_processor.h>
#include <sentencepiece_trainer.h>

#include <filesystem>
#include <fstream>
#include <string>
#include <type_traits>
#include <unordered_map>

#include "autograd/error.h"

namespace data {

static_assert(std::is_same_v<int32_t, int>, "sentencepiece ids are int");

namespace fs = std::filesystem;

namespace {

// Streams the lines of several files to the trainer (so paths never go through sentencepiece's
// comma-separated --input flag). Drops a trailing '\r' and skips empty lines.
class FileLines : public sentencepiece::SentenceIterator {
 public:
  explicit FileLines(const std::vector<std::string>& files) : files_(files) { advance(); }
  bool done() const override { return done_; }
  void Next() override { advance(); }
  const std::string& value() const override { return line_; }
  sentencepiece::util::Status status() const override { return status_; }

 private:
  void advance() {
    while (true) {
      if (!in_.is_open()) {
        if (next_file_ >= files_.size()) {
          done_ = true;
          return;
        }
        in_.open(files_[next_file_], std::ios::binary);
        if (!in_) {
          status_ = sentencepiece::util::Status(sentencepiece::util::StatusCode::kNotFound,
                                                "cannot open " + files_[next_file_]);
          done_ = true;
          return;
        }
        ++next_file_;
      }
      if (std::getline(in_, line_)) {
        if (!line_.empty() && line_.back() == '\r') line_.pop_back();
        if (!line_.empty()) return;
      } else {
        if (in_.bad()) {
          status_ = sentencepiece::util::Status(sentencepiece::util::StatusCode::kDataLoss,
                                                "read error in " + files_[next_file_ - 1]);
          done_ = true;
          return;
        }
        in_.close();
        in_.clear();
      }
    }
  }

  const std::vector<std::string>& files_;
  size_t next_file_ = 0;
  std::ifstream in_;
  std::string line_;
  bool done_ = false;
  sentencepiece::util::Status status_;
};

// Reads a varint; returns false past the end or on overlong input.
bool varint(const std::string& s, size_t& pos, uint64_t& v) {
  v = 0;
  for (int shift = 0; shift < 64; shift += 7) {
    if (pos >= s.size()) return false;
    const auto b = uint8_t(s[pos++]);
    v |= uint64_t(b & 0x7f) << shift;
    if (!(b & 0x80)) return true;
  }
  return false;
}

// Skips one field of wire type `wt`; false on malformed input.
bool skip_field(const std::string& s, size_t& pos, uint64_t wt) {
  uint64_t v = 0;
  switch (wt) {
    case 0:
      return varint(s, pos, v);
    case 1:
      pos += 8;
      return pos <= s.size();
    case 2:
      if (!varint(s, pos, v) || v > s.size() - pos) return false;
      pos += size_t(v);
      return true;
    case 5:
      pos += 4;
      return pos <= s.size();
    default:
      return false;
  }
}

// The piece types (ModelProto.pieces[i].type, default NORMAL = 1) read straight from the
// serialized proto: the processor API has no IsUserDefined in every supported version.
// Returns an empty vector if the bytes do not parse.
std::vector<uint8_t> piece_types(const std::string& proto) {
  std::vector<uint8_t> types;
  size_t pos = 0;
  while (pos < proto.size()) {
    uint64_t key = 0;
    if (!varint(proto, pos, key)) return {};
    const uint64_t field = key >> 3, wt = key & 7;
    if (field == 1 && wt == 2) {  // repeated SentencePiece pieces = 1
      uint64_t len = 0;
      if (!varint(proto, pos, len) || len > proto.size() - pos) return {};
      const size_t end = pos + size_t(len);
      uint8_t type = 1;
      while (pos < end) {
        uint64_t k2 = 0;
        if (!varint(proto, pos, k2)) return {};
        if ((k2 >> 3) == 3 && (k2 & 7) == 0) {  // optional Type type = 3
          uint64_t t = 0;
          if (!varint(proto, pos, t)) return {};
          type = uint8_t(t);
        } else if (!skip_field(proto, pos, k2 & 7)) {
          return {};
        }
      }
      if (pos != end) return {};
      types.push_back(type);
    } else if (!skip_field(proto, pos, wt)) {
      return {};
    }
  }
  return types;
}

std::string bool_flag(bool b) { return b ? "true" : "false"; }

}  // namespace

Tokenizer::Tokenizer() = default;
Tokenizer::~Tokenizer() = default;
Tokenizer::Tokenizer(Tokenizer&&) noexcept = default;
Tokenizer& Tokenizer::operator=(Tokenizer&&) noexcept = default;

void Tokenizer::train(const std::vector<std::string>& text_files, const std::string& prefix,
                      const TokenizerTrainOptions& opt) {
  BN_CHECK(!text_files.empty(), "Tokenizer::train", "no text files given");
  for (const auto& f : text_files) {
    std::error_code ec;
    BN_CHECK(fs::is_regular_file(f, ec), "Tokenizer::train", "text file not found: ", f);
  }
  BN_CHECK(!prefix.empty(), "Tokenizer::train", "empty output prefix");
  const fs::path parent = fs::path(prefix).parent_path();
  {
    std::error_code ec;
    BN_CHECK(parent.empty() || fs::is_directory(parent, ec), "Tokenizer::train",
             "output directory does not exist: ", parent.string());
  }
  BN_CHECK(opt.vocab_size > 0, "Tokenizer::train", "vocab_size must be > 0, got ", opt.vocab_size);
  BN_CHECK(opt.input_sentence_size == 0 || opt.input_sentence_size > 100, "Tokenizer::train",
           "input_sentence_size must be 0 (all sentences) or > 100 (sentencepiece's minimum), got ",
           opt.input_sentence_size);
  BN_CHECK(opt.num_threads >= 1, "Tokenizer::train", "num_threads must be >= 1, got ",
           opt.num_threads);

  const std::unordered_map<std::string, std::string> args = {
      {"model_prefix", prefix},
      {"model_type", opt.model_type},
      {"vocab_size", std::to_string(opt.vocab_size)},
      {"byte_fallback", bool_flag(opt.byte_fallback)},
      {"normalization_rule_name", opt.normalization},
      {"input_sentence_size", std::to_string(opt.input_sentence_size)},
      {"shuffle_input_sentence", "true"},
      {"num_threads", std::to_string(opt.num_threads)},
      {"character_coverage", "1.0"},
      {"unk_id", "0"},
      {"bos_id", "1"},
      {"eos_id", "2"},
      {"pad_id", "-1"},
      {"split_digits", "true"},
      {"allow_whitespace_only_pieces", "true"},
      {"remove_extra_whitespaces", "false"},
      {"max_sentence_length", "65536"},
      {"minloglevel", "2"},
  };
  // sentencepiece has no seed flag; its sampling generator is a process-wide seed. The value
  // UINT_MAX means "from std::random_device" there, so fold the 64-bit seed and avoid it.
  auto seed32 = uint32_t(opt.seed ^ (opt.seed >> 32));
  if (seed32 == 0xffffffffu) seed32 = 0x7fffffffu;
  sentencepiece::SetRandomGeneratorSeed(seed32);

  FileLines lines(text_files);
  const auto st = sentencepiece::SentencePieceTrainer::Train(args, &lines);
  if (!st.ok()) autograd::fail("Tokenizer::train: sentencepiece training failed: ", st.ToString());
  if (!lines.status().ok())
    autograd::fail("Tokenizer::train: reading the text failed: ", lines.status().ToString());
}

Tokenizer Tokenizer::load(const std::string& model_path) {
  std::error_code ec;
  BN_CHECK(fs::is_regular_file(model_path, ec), "Tokenizer::load",
           "model file not found: ", model_path);
  std::ifstream in(model_path, std::ios::binary);
  BN_CHECK(bool(in), "Tokenizer::load", "cannot open ", model_path);
  std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  BN_CHECK(!in.bad(), "Tokenizer::load", "read error in ", model_path);
  BN_CHECK(!bytes.empty(), "Tokenizer::load", "empty model file ", model_path);
  Tokenizer t;
  t.sp_ = std::make_unique<sentencepiece::SentencePieceProcessor>();
  const auto st = t.sp_->LoadFromSerializedProto(bytes);
  if (!st.ok())
    autograd::fail("Tokenizer::load: ", model_path,
                   " is not a valid sentencepiece model: ", st.ToString());
  t.types_ = piece_types(bytes);
  return t;
}

Tokenizer Tokenizer::from_serialized(const std::string& proto) {
  BN_CHECK(!proto.empty(), "Tokenizer::from_serialized", "empty model bytes");
  Tokenizer t;
  t.sp_ = std::make_unique<sentencepiece::SentencePieceProcessor>();
  const auto st = t.sp_->LoadFromSerializedProto(proto);
  if (!st.ok())
    autograd::fail("Tokenizer::from_serialized: not a valid sentencepiece model (", proto.size(),
                   " bytes): ", st.ToString());
  t.types_ = piece_types(proto);
  return t;
}

const sentencepiece::SentencePieceProcessor& Tokenizer::sp(const char* op) const {
  if (!sp_) autograd::fail(op, ": no tokenizer model loaded");
  return *sp_;
}

void Tokenizer::check_id(const char* op, int32_t id) const {
  const int n = sp(op).GetPieceSize();
  if (id < 0 || id >= n) autograd::fail(op, ": id ", id, " is outside the vocabulary [0, ", n, ")");
}

std::string Tokenizer::serialized() const {
  return sp("Tokenizer::serialized").serialized_model_proto();
}

std::vector<int32_t> Tokenizer::encode(const std::string& text) const {
  std::vector<int> ids;
  const auto st = sp("Tokenizer::encode").Encode(text, &ids);
  if (!st.ok()) autograd::fail("Tokenizer::encode: ", st.ToString());
  return ids;
}

std::string Tokenizer::decode(const std::vector<int32_t>& ids) const {
  const int n = sp("Tokenizer::decode").GetPieceSize();
  for (size_t i = 0; i < ids.size(); ++i)
    if (ids[i] < 0 || ids[i] >= n)
      autograd::fail("Tokenizer::decode: id ", ids[i], " at position ", i,
                     " is outside the vocabulary [0, ", n, ")");
  std::string text;
  const auto st = sp_->Decode(ids, &text);
  if (!st.ok()) autograd::fail("Tokenizer::decode: ", st.ToString());
  return text;
}

std::string Tokenizer::piece(int32_t id) const {
  check_id("Tokenizer::piece", id);
  return sp_->IdToPiece(id);
}

float Tokenizer::score(int32_t id) const {
  check_id("Tokenizer::score", id);
  return sp_->GetScore(id);
}

int Tokenizer::type(int32_t id) const {
  check_id("Tokenizer::type", id);
  if (types_.size() == size_t(sp_->GetPieceSize())) return types_[size_t(id)];
  // Fallback when the proto could not be read directly (cannot tell user-defined from normal).
  if (sp_->IsUnknown(id)) return 2;
  if (sp_->IsControl(id)) return 3;
  if (sp_->IsByte(id)) return 6;
  if (sp_->IsUnused(id)) return 5;
  return 1;
}

int Tokenizer::vocab_size() const { return sp("Tokenizer::vocab_size").GetPieceSize(); }
int Tokenizer::bos_id() const { return sp("Tokenizer::bos_id").bos_id(); }
int Tokenizer::eos_id() const { return sp("Tokenizer::eos_id").eos_id(); }
int Tokenizer::unk_id() const { return sp("Tokenizer::unk_id").unk_id(); }

}  // namespace data
