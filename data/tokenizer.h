// SentencePiece tokenizer: training (BPE, byte fallback, identity normalisation) and use.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace sentencepiece {
class SentencePieceProcessor;
}

namespace data {

struct TokenizerTrainOptions {
  int vocab_size = 8192;
  std::string model_type = "bpe";
  bool byte_fallback = true;
  std::string normalization = "identity";
  int64_t input_sentence_size = 2000000;  // sentences sampled for training (0 = all, else > 100)
  int num_threads = 2;
  // Sets sentencepiece's process-wide random seed before training, so that versions which seed
  // the sentence sampler from it are deterministic. 0.1.97 samples with a fixed internal seed
  // (the model is deterministic but does not depend on this value).
  uint64_t seed = 0;
};

class Tokenizer {
 public:
  Tokenizer();
  ~Tokenizer();
  Tokenizer(Tokenizer&&) noexcept;
  Tokenizer& operator=(Tokenizer&&) noexcept;
  // Trains on text files (one sentence per line) and writes `<prefix>.model` and `<prefix>.vocab`.
  // Lines are streamed to sentencepiece (file names may hold spaces or commas); empty lines are
  // skipped, and so are lines longer than 65536 bytes (sentencepiece's max_sentence_length).
  // Sets sentencepiece's process-wide sampling seed (from opt.seed) and log level (errors only).
  static void train(const std::vector<std::string>& text_files, const std::string& prefix,
                    const TokenizerTrainOptions& opt);
  static Tokenizer load(const std::string& model_path);
  static Tokenizer from_serialized(const std::string& proto);  // the bytes of a .model file
  std::string serialized() const;

  std::vector<int32_t> encode(const std::string& text) const;
  std::string decode(const std::vector<int32_t>& ids) const;
  std::string piece(int32_t id) const;
  float score(int32_t id) const;
  // ModelProto piece type: 1 normal, 2 unknown, 3 control, 4 user-defined, 5 unused, 6 byte.
  int type(int32_t id) const;
  int vocab_size() const;
  int bos_id() const;
  int eos_id() const;
  int unk_id() const;

 private:
  const sentencepiece::SentencePieceProcessor& sp(const char* op) const;  // throws if none loaded
  void check_id(const char* op, int32_t id) const;

  std::unique_ptr<sentencepiece::SentencePieceProcessor> sp_;
  std::vector<uint8_t> types_;  // piece types parsed from the model proto (see type())
};

}  // namespace data
