// libFuzzer target: the tokenizer/prepare input path: SentencePiece model bytes (from_serialized,
// piece types), text encoding/decoding with a trained model, and Brown-tag stripping of corpus
// lines.
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>

#include "autograd/error.h"
#include "data/prepare.h"
#include "data/tokenizer.h"

namespace {
// A small BPE model (byte fallback) trained once per process on generated text.
const data::Tokenizer& trained() {
  static const data::Tokenizer tok = [] {
    const std::string dir = std::filesystem::temp_directory_path().string() + "/bitnet_fuzz_tok_" +
                            std::to_string(getpid());
    std::filesystem::create_directories(dir);
    {
      std::ofstream f(dir + "/text.txt");
      const char* words[] = {"the",  "quick", "brown", "fox",    "jumps", "over",
                             "lazy", "dog",   "1-bit", "models", "train"};
      for (int i = 0; i < 3000; ++i)
        f << words[(i * 7) % 11] << ' ' << words[(i * 3 + 1) % 11] << " x" << i % 97 << "\n";
    }
    data::TokenizerTrainOptions o;
    o.vocab_size = 320;
    o.num_threads = 1;
    data::Tokenizer::train({dir + "/text.txt"}, dir + "/tok", o);
    data::Tokenizer t = data::Tokenizer::load(dir + "/tok.model");
    std::filesystem::remove_all(dir);
    return t;
  }();
  return tok;
}

bool is_space(char c) {
  return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\v' || c == '\f';
}
}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  const std::string rest(reinterpret_cast<const char*>(data) + 1, size - 1);
  switch (data[0] % 3) {
    case 0:  // model bytes: refused with an error, or a usable model
      try {
        const data::Tokenizer t = data::Tokenizer::from_serialized(rest);
        const int n = t.vocab_size();
        for (int i = 0; i < n && i < 64; ++i) (void)t.piece(i), (void)t.type(i), (void)t.score(i);
        const std::vector<int32_t> ids = t.encode("the quick brown fox");
        (void)t.decode(ids);
        (void)t.serialized();
      } catch (const autograd::Error&) {
      }
      break;
    case 1: {  // any text encodes to in-vocabulary ids that decode again
      const data::Tokenizer& t = trained();
      try {
        const std::vector<int32_t> ids = t.encode(rest);
        for (int32_t id : ids)
          if (id < 0 || id >= t.vocab_size()) std::abort();
        (void)t.decode(ids);
      } catch (const autograd::Error&) {
      }
      break;
    }
    default: {  // Brown-tag stripping: single spaces, none at the ends, never longer than the input
      const std::string s = data::strip_brown_tags(rest);
      if (s.size() > rest.size() || (!s.empty() && (is_space(s.front()) || is_space(s.back()))))
        std::abort();
      for (size_t i = 1; i < s.size(); ++i)
        if (is_space(s[i]) && is_space(s[i - 1])) std::abort();
    }
  }
  return 0;
}
