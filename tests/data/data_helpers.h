// Shared helpers of the data tests: temp dirs, byte files, shard writers, a synthetic sentence
// corpus.
#pragma once

#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iterator>
#include <set>
#include <string>
#include <vector>

#include "autograd/error.h"
#include "autograd/random.h"
#include "data/loader.h"
#include "data/prepare.h"
#include "data/tokenizer.h"
#include "data/tokens.h"

namespace fs = std::filesystem;
using autograd::Rng;
using namespace data;

namespace {

// A fresh directory under the system temp dir, named after the test; removed afterwards.
struct TempDir {
  fs::path path;
  TempDir() {
    const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
    static int counter = 0;
    path = fs::temp_directory_path() /
           ("bitnet_test_data_" + std::to_string(::getpid()) + "_" + info->test_suite_name() + "_" +
            info->name() + "_" + std::to_string(counter++));
    fs::remove_all(path);
    fs::create_directories(path);
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path, ec);
  }
  std::string operator/(const std::string& name) const { return (path / name).string(); }
};

inline void write_bytes(const std::string& path, const std::string& bytes) {
  std::ofstream f(path, std::ios::binary | std::ios::trunc);
  f.write(bytes.data(), std::streamsize(bytes.size()));
  ASSERT_TRUE(bool(f)) << path;
}

inline std::string read_bytes(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  return std::string((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
}

// Expects fn to throw autograd::Error whose message contains every piece.
inline void expect_error(const std::function<void()>& fn, const std::vector<std::string>& pieces) {
  try {
    fn();
    ADD_FAILURE() << "expected an error containing \"" << pieces.front() << "\"";
  } catch (const autograd::Error& e) {
    const std::string msg = e.what();
    for (const auto& p : pieces)
      EXPECT_NE(msg.find(p), std::string::npos) << "missing \"" << p << "\" in: " << msg;
  }
}

template <class T>
void append_le(std::string& s, T v) {
  char b[sizeof(T)];
  std::memcpy(b, &v, sizeof(T));
  s.append(b, sizeof(T));
}

// An llm.c shard written by hand: 256 int32 header, then the tokens.
inline std::string llmc_shard(int32_t version, const std::vector<uint32_t>& toks,
                              int32_t count = -1) {
  std::string s;
  std::vector<int32_t> header(256, 0);
  header[0] = 20240520;
  header[1] = version;
  header[2] = count >= 0 ? count : int32_t(toks.size());
  for (int32_t h : header) append_le(s, h);
  for (uint32_t t : toks) {
    if (version == 1)
      append_le(s, uint16_t(t));
    else
      append_le(s, t);
  }
  return s;
}

inline std::vector<uint32_t> random_tokens(size_t n, uint32_t below, uint64_t seed) {
  Rng rng(seed);
  std::vector<uint32_t> v(n);
  for (auto& t : v) t = uint32_t(rng.below(below));
  return v;
}

// ---- synthetic English-like text -------------------------------------------------------------

const std::vector<std::string> kDet = {"the", "a", "every", "some", "this", "that"};
const std::vector<std::string> kAdj = {"quick", "lazy",   "brown", "small",   "old",  "happy",
                                       "green", "bright", "quiet", "strange", "café", "naïve"};
const std::vector<std::string> kNoun = {"fox",  "dog",    "cat",    "house",   "river",  "teacher",
                                        "city", "garden", "window", "student", "market", "letter"};
const std::vector<std::string> kVerb = {"sees",    "finds",  "likes", "visits",  "paints",
                                        "follows", "builds", "reads", "watches", "remembers"};
const std::vector<std::string> kPrep = {"in", "near", "under", "with", "behind", "over"};

template <class V>
const std::string& pick(Rng& rng, const V& v) {
  return v[size_t(rng.below(v.size()))];
}

// One sentence as (word, Brown-style tag) pairs.
inline std::vector<std::pair<std::string, std::string>> sentence(Rng& rng) {
  std::vector<std::pair<std::string, std::string>> w;
  auto np = [&] {
    std::string d = pick(rng, kDet);
    w.push_back({d, "at"});
    if (rng.below(2)) w.push_back({pick(rng, kAdj), "jj"});
    w.push_back({pick(rng, kNoun), "nn"});
  };
  if (rng.below(4) == 0) w.push_back({"``", "``"});
  np();
  std::string& first = w[w.front().first == "``" ? 1 : 0].first;
  first[0] = char(first[0] - 'a' + 'A');
  w.push_back({pick(rng, kVerb), "vbz"});
  np();
  if (rng.below(2)) {
    w.push_back({pick(rng, kPrep), "in"});
    np();
  }
  if (rng.below(3) == 0) w.push_back({std::to_string(rng.below(2000)), "cd"});
  if (rng.below(5) == 0) w.push_back({"1/2", "cd"});  // a word holding '/' keeps it
  w.push_back({".", "."});
  if (w.front().first == "``") w.push_back({"''", "''"});
  return w;
}

inline std::string plain(const std::vector<std::pair<std::string, std::string>>& s) {
  std::string out;
  for (const auto& [word, tag] : s) {
    if (!out.empty()) out += ' ';
    out += (word == "``" || word == "''") ? "\"" : word;
  }
  return out;
}

inline std::string tagged(const std::vector<std::pair<std::string, std::string>>& s) {
  std::string out = "\t";
  for (const auto& [word, tag] : s) out += " " + word + "/" + tag;
  return out;
}

// Writes `lines` synthetic plain sentences, one per line.
inline void write_plain_corpus(const std::string& path, int lines, uint64_t seed) {
  Rng rng(seed);
  std::string text;
  for (int i = 0; i < lines; ++i) text += plain(sentence(rng)) + "\n";
  write_bytes(path, text);
}

}  // namespace
