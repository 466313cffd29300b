// data/: token shard formats and their errors, datasets, the deterministic sharded loader and its
// resume, Brown tag stripping, the SentencePiece tokenizer and end-to-end corpus preparation.
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

void write_bytes(const std::string& path, const std::string& bytes) {
  std::ofstream f(path, std::ios::binary | std::ios::trunc);
  f.write(bytes.data(), std::streamsize(bytes.size()));
  ASSERT_TRUE(bool(f)) << path;
}

std::string read_bytes(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  return std::string((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
}

// Expects fn to throw autograd::Error whose message contains every piece.
void expect_error(const std::function<void()>& fn, const std::vector<std::string>& pieces) {
  try {
    fn();
    ADD_FAILURE() << "expected an error containing \"" << pieces.front() << "\"";
  } catch (const autograd::Error& e) {
    const std::string msg = e.what();
    for (const auto& p : pieces) EXPECT_NE(msg.find(p), std::string::npos) << "missing \"" << p << "\" in: " << msg;
  }
}

template <class T>
void append_le(std::string& s, T v) {
  char b[sizeof(T)];
  std::memcpy(b, &v, sizeof(T));
  s.append(b, sizeof(T));
}

// An llm.c shard written by hand: 256 int32 header, then the tokens.
std::string llmc_shard(int32_t version, const std::vector<uint32_t>& toks, int32_t count = -1) {
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

std::vector<uint32_t> random_tokens(size_t n, uint32_t below, uint64_t seed) {
  Rng rng(seed);
  std::vector<uint32_t> v(n);
  for (auto& t : v) t = uint32_t(rng.below(below));
  return v;
}

// ---- synthetic English-like text -------------------------------------------------------------

const std::vector<std::string> kDet = {"the", "a", "every", "some", "this", "that"};
const std::vector<std::string> kAdj = {"quick", "lazy", "brown", "small", "old", "happy", "green",
                                       "bright", "quiet", "strange", "café", "naïve"};
const std::vector<std::string> kNoun = {"fox", "dog", "cat", "house", "river", "teacher", "city",
                                        "garden", "window", "student", "market", "letter"};
const std::vector<std::string> kVerb = {"sees", "finds", "likes", "visits", "paints", "follows",
                                        "builds", "reads", "watches", "remembers"};
const std::vector<std::string> kPrep = {"in", "near", "under", "with", "behind", "over"};

template <class V>
const std::string& pick(Rng& rng, const V& v) {
  return v[size_t(rng.below(v.size()))];
}

// One sentence as (word, Brown-style tag) pairs.
std::vector<std::pair<std::string, std::string>> sentence(Rng& rng) {
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

std::string plain(const std::vector<std::pair<std::string, std::string>>& s) {
  std::string out;
  for (const auto& [word, tag] : s) {
    if (!out.empty()) out += ' ';
    out += (word == "``" || word == "''") ? "\"" : word;
  }
  return out;
}

std::string tagged(const std::vector<std::pair<std::string, std::string>>& s) {
  std::string out = "\t";
  for (const auto& [word, tag] : s) out += " " + word + "/" + tag;
  return out;
}

// Writes `lines` synthetic plain sentences, one per line.
void write_plain_corpus(const std::string& path, int lines, uint64_t seed) {
  Rng rng(seed);
  std::string text;
  for (int i = 0; i < lines; ++i) text += plain(sentence(rng)) + "\n";
  write_bytes(path, text);
}

// ---- shards ----------------------------------------------------------------------------------

TEST(Shards, RoundTripU16) {
  TempDir dir;
  const auto toks = random_tokens(1001, 50000, 1);
  write_shard(dir / "a.bin", toks, 50000);
  EXPECT_EQ(fs::file_size(dir / "a.bin"), 32u + 2u * toks.size());  // u16 storage
  uint64_t vocab = 0;
  EXPECT_EQ(read_shard(dir / "a.bin", &vocab), toks);
  EXPECT_EQ(vocab, 50000u);
  EXPECT_EQ(read_shard(dir / "a.bin"), toks);  // vocab_size_out may be null
}

TEST(Shards, RoundTripU32) {
  TempDir dir;
  auto toks = random_tokens(777, 100000, 2);
  toks[5] = 65535;
  toks[6] = 65536;
  toks[7] = 99999;
  write_shard(dir / "b.bin", toks, 100000);
  EXPECT_EQ(fs::file_size(dir / "b.bin"), 32u + 4u * toks.size());  // u32 storage
  uint64_t vocab = 0;
  EXPECT_EQ(read_shard(dir / "b.bin", &vocab), toks);
  EXPECT_EQ(vocab, 100000u);
}

TEST(Shards, EmptyShardAndUnknownVocab) {
  TempDir dir;
  write_shard(dir / "e.bin", {}, 0);
  uint64_t vocab = 7;
  EXPECT_TRUE(read_shard(dir / "e.bin", &vocab).empty());
  EXPECT_EQ(vocab, 0u);
  // vocab 0 = unknown: any id is accepted.
  write_shard(dir / "u.bin", {1, 4000000000u}, 0);
  EXPECT_EQ(read_shard(dir / "u.bin"), (std::vector<uint32_t>{1, 4000000000u}));
}

TEST(Shards, WriteRejectsTokenOutsideVocab) {
  TempDir dir;
  expect_error([&] { write_shard(dir / "x.bin", {1, 2, 300}, 256); },
               {dir / "x.bin", "token 300", "position 2", "256"});
  EXPECT_FALSE(fs::exists(dir / "x.bin"));
}

// Found by fuzz_shard (UBSan: memcpy from a null pointer): a shard of 4-byte tokens holding none.
TEST(Shards, EmptyU32ShardReadsAsNoTokens) {
  TempDir dir;
  std::string b = std::string("BNTOKSH", 8);
  const uint32_t version = 1, width = 4;
  const uint64_t count = 0, vocab = 70000;
  b.append(reinterpret_cast<const char*>(&version), 4).append(reinterpret_cast<const char*>(&width), 4);
  b.append(reinterpret_cast<const char*>(&count), 8).append(reinterpret_cast<const char*>(&vocab), 8);
  write_bytes(dir / "e32.bin", b);
  uint64_t v = 0;
  EXPECT_TRUE(read_shard(dir / "e32.bin", &v).empty());
  EXPECT_EQ(v, 70000u);
}

TEST(Shards, LlmcFormat) {
  TempDir dir;
  const auto t16 = random_tokens(500, 50257, 3);
  write_bytes(dir / "v1.bin", llmc_shard(1, t16));
  uint64_t vocab = 9;
  EXPECT_EQ(read_shard(dir / "v1.bin", &vocab), t16);
  EXPECT_EQ(vocab, 0u);
  const auto t32 = random_tokens(300, 200000, 4);
  write_bytes(dir / "v2.bin", llmc_shard(2, t32));
  EXPECT_EQ(read_shard(dir / "v2.bin"), t32);
}

TEST(Shards, BadInputsHaveClearErrors) {
  TempDir dir;
  const std::string good = dir / "good.bin";
  write_shard(good, random_tokens(100, 1000, 5), 1000);
  const std::string bytes = read_bytes(good);

  const std::string magic = dir / "magic.bin";
  write_bytes(magic, "hello world, this is not a shard at all................................");
  expect_error([&] { read_shard(magic); },
               {magic, "wrong magic", "found \"hello wo\"", "BNTOKSH", "20240520"});

  const std::string empty = dir / "empty.bin";
  write_bytes(empty, "");
  expect_error([&] { read_shard(empty); }, {empty, "empty file"});

  const std::string head = dir / "head.bin";
  write_bytes(head, bytes.substr(0, 20));
  expect_error([&] { read_shard(head); }, {head, "truncated header", "20 bytes"});
  const std::string head8 = dir / "head8.bin";  // even a bare magic is a truncated header
  write_bytes(head8, bytes.substr(0, 5));
  expect_error([&] { read_shard(head8); }, {head8, "truncated header"});
  const std::string lhead = dir / "lhead.bin";
  write_bytes(lhead, llmc_shard(1, {1, 2, 3}).substr(0, 100));
  expect_error([&] { read_shard(lhead); }, {lhead, "truncated header", "llm.c"});

  const std::string data = dir / "data.bin";
  write_bytes(data, bytes.substr(0, bytes.size() - 3));
  expect_error([&] { read_shard(data); }, {data, "truncated data", "100 tokens"});
  const std::string ldata = dir / "ldata.bin";
  write_bytes(ldata, llmc_shard(1, {1, 2, 3}, 1000));
  expect_error([&] { read_shard(ldata); }, {ldata, "truncated data", "1000 tokens"});

  const std::string extra = dir / "extra.bin";
  write_bytes(extra, bytes + "xy");
  expect_error([&] { read_shard(extra); }, {extra, "count mismatch"});

  std::string v = bytes;
  v[8] = 7;
  const std::string version = dir / "version.bin";
  write_bytes(version, v);
  expect_error([&] { read_shard(version); }, {version, "unsupported BNTOKSH version 7"});
  std::string w = bytes;
  w[12] = 3;
  const std::string width = dir / "width.bin";
  write_bytes(width, w);
  expect_error([&] { read_shard(width); }, {width, "unsupported token width 3"});
  const std::string lversion = dir / "lversion.bin";
  write_bytes(lversion, llmc_shard(3, {1, 2}));
  expect_error([&] { read_shard(lversion); }, {lversion, "unsupported llm.c version 3"});

  expect_error([&] { read_shard(dir / "missing.bin"); }, {dir / "missing.bin", "no such file"});
}

// ---- dataset ---------------------------------------------------------------------------------

TEST(Dataset, FromDirectorySortedByName) {
  TempDir dir;
  fs::create_directories(dir / "shards");
  write_shard(dir / "shards/b.bin", {10, 11, 12}, 500);
  write_shard(dir / "shards/a.tok", {1, 2}, 300);
  write_bytes(dir / "shards/c.bin", llmc_shard(1, {20, 21}));
  write_bytes(dir / "shards/notes.txt", "ignored");
  fs::create_directories(dir / "shards/sub.bin");  // directories are not shards
  TokenDataset ds({dir / "shards"});
  EXPECT_EQ(ds.size(), 7);
  EXPECT_EQ(std::vector<uint32_t>(ds.data(), ds.data() + ds.size()),
            (std::vector<uint32_t>{1, 2, 10, 11, 12, 20, 21}));
  EXPECT_EQ(ds.vocab_size(), 500u);
  EXPECT_EQ(ds.max_token(), 21u);
  ds.check_vocab(22);
  // The error names the shard file and the index within it (and the position in the dataset).
  expect_error([&] { ds.check_vocab(12); },
               {dir / "shards/b.bin" + ": token 12 at token index 2 of that file", "position 4 of the dataset",
                "vocabulary of 12 ids"});

  TokenDataset files({dir / "shards/b.bin", dir / "shards/a.tok"});  // given order kept
  EXPECT_EQ(std::vector<uint32_t>(files.data(), files.data() + files.size()),
            (std::vector<uint32_t>{10, 11, 12, 1, 2}));
}

TEST(Dataset, Errors) {
  TempDir dir;
  expect_error([&] { TokenDataset({dir / "nope"}); }, {dir / "nope", "no such file or directory"});
  fs::create_directories(dir / "empty");
  expect_error([&] { TokenDataset({dir / "empty"}); }, {dir / "empty", "no *.bin or *.tok"});
  write_shard(dir / "z.bin", {}, 10);
  expect_error([&] { TokenDataset({dir / "z.bin"}); }, {"dataset is empty", dir / "z.bin"});
  write_bytes(dir / "bad.bin", "junkjunkjunk");
  expect_error([&] { TokenDataset({dir / "bad.bin"}); }, {dir / "bad.bin", "wrong magic"});
}

// ---- loader ----------------------------------------------------------------------------------

// A dataset whose token at position i is i: a window is identified by its first input.
TokenDataset iota_dataset(const TempDir& dir, uint32_t n) {
  std::vector<uint32_t> t(n);
  for (uint32_t i = 0; i < n; ++i) t[i] = i;
  write_shard(dir / "iota.bin", t, 0);
  return TokenDataset({dir / "iota.bin"});
}

struct Batch {
  std::vector<int32_t> in, tg;
  bool operator==(const Batch&) const = default;
};

Batch take(Loader& l, int64_t rows, int rank = 0, int world = 1) {
  Batch b;
  l.next(rows, rank, world, b.in, b.tg);
  return b;
}

TEST(Loader, SameSeedSameBatchesDifferentSeedDifferent) {
  TempDir dir;
  const auto ds = iota_dataset(dir, 1000);
  Loader a(ds, 8, 42), b(ds, 8, 42), c(ds, 8, 43);
  EXPECT_EQ(a.windows(), (1000 - 1) / 8);
  bool differs = false;
  for (int s = 0; s < 40; ++s) {  // crosses epoch boundaries (124 windows, 4 rows per step)
    const Batch x = take(a, 4), y = take(b, 4), z = take(c, 4);
    EXPECT_EQ(x, y);
    differs |= !(x == z);
  }
  EXPECT_TRUE(differs);
  EXPECT_EQ(a.cursor(), 160u);
}

TEST(Loader, EveryWindowOncePerEpochAndTargetsShifted) {
  TempDir dir;
  const int64_t seq = 7;
  const auto ds = iota_dataset(dir, 7 * 30 + 1 + 5);  // 30 windows, a few tokens left over
  Loader l(ds, seq, 9);
  ASSERT_EQ(l.windows(), 30);
  std::vector<std::vector<int64_t>> orders;
  for (int epoch = 0; epoch < 3; ++epoch) {
    std::vector<int64_t> order;
    for (int s = 0; s < 10; ++s) {
      const Batch b = take(l, 3);
      for (int r = 0; r < 3; ++r) {
        const int32_t first = b.in[size_t(r * seq)];
        ASSERT_EQ(first % seq, 0);
        order.push_back(first / seq);
        for (int64_t j = 0; j < seq; ++j) {
          EXPECT_EQ(b.in[size_t(r * seq + j)], first + j);
          EXPECT_EQ(b.tg[size_t(r * seq + j)], first + j + 1);  // inputs shifted by one
          if (j + 1 < seq) {
            EXPECT_EQ(b.tg[size_t(r * seq + j)], b.in[size_t(r * seq + j + 1)]);
          }
        }
      }
    }
    std::vector<int64_t> sorted = order;
    std::sort(sorted.begin(), sorted.end());
    for (int64_t w = 0; w < 30; ++w) EXPECT_EQ(sorted[size_t(w)], w) << "epoch " << epoch;
    for (int64_t i = 0; i < 30; ++i) EXPECT_EQ(l.window_of(uint64_t(epoch * 30 + i)), order[size_t(i)]);
    orders.push_back(order);
  }
  EXPECT_NE(orders[0], orders[1]);  // each epoch has its own permutation
  EXPECT_NE(orders[1], orders[2]);
}

TEST(Loader, RanksTakeDisjointSlicesOfTheGlobalBatch) {
  TempDir dir;
  const int64_t seq = 5, rows = 3;
  const auto ds = iota_dataset(dir, 5 * 23 + 1);  // 23 windows: batches straddle epochs
  Loader r0(ds, seq, 7), r1(ds, seq, 7), single(ds, seq, 7);
  for (int s = 0; s < 12; ++s) {
    const Batch a = take(r0, rows, 0, 2), b = take(r1, rows, 1, 2), all = take(single, 2 * rows);
    std::set<int32_t> wa, wb;
    for (int r = 0; r < rows; ++r) wa.insert(a.in[size_t(r * seq)]), wb.insert(b.in[size_t(r * seq)]);
    if (s != 3 && s != 7 && s != 11) {  // steps fully inside one epoch never repeat a window
      for (int32_t w : wa) EXPECT_EQ(wb.count(w), 0u) << "step " << s;
    }
    Batch cat = a;
    cat.in.insert(cat.in.end(), b.in.begin(), b.in.end());
    cat.tg.insert(cat.tg.end(), b.tg.begin(), b.tg.end());
    EXPECT_EQ(cat, all) << "step " << s;
  }
  EXPECT_EQ(r0.cursor(), single.cursor());
}

TEST(Loader, ResumeFromCursorAcrossWorldSizes) {
  TempDir dir;
  const int64_t seq = 6;
  const auto ds = iota_dataset(dir, 6 * 17 + 1);
  // Same world: continue from a saved cursor.
  Loader a(ds, seq, 5);
  for (int s = 0; s < 5; ++s) take(a, 4);
  const uint64_t saved = a.cursor();
  std::vector<Batch> cont;
  for (int s = 0; s < 6; ++s) cont.push_back(take(a, 4));
  Loader b(ds, seq, 5);
  b.set_cursor(saved);
  for (int s = 0; s < 6; ++s) EXPECT_EQ(take(b, 4), cont[size_t(s)]) << "step " << s;

  // Saved on 2 ranks (2 rows each), resumed on 1 rank with 4 rows: same sample sequence.
  Loader w0(ds, seq, 11), w1(ds, seq, 11);
  for (int s = 0; s < 3; ++s) take(w0, 2, 0, 2), take(w1, 2, 1, 2);
  ASSERT_EQ(w0.cursor(), w1.cursor());
  const uint64_t saved2 = w0.cursor();
  std::vector<Batch> two;
  for (int s = 0; s < 7; ++s) {
    Batch x = take(w0, 2, 0, 2), y = take(w1, 2, 1, 2);
    x.in.insert(x.in.end(), y.in.begin(), y.in.end());
    x.tg.insert(x.tg.end(), y.tg.begin(), y.tg.end());
    two.push_back(x);
  }
  Loader one(ds, seq, 11);
  one.set_cursor(saved2);
  for (int s = 0; s < 7; ++s) EXPECT_EQ(take(one, 4), two[size_t(s)]) << "step " << s;
}

TEST(Loader, Errors) {
  TempDir dir;
  const auto ds = iota_dataset(dir, 8);
  expect_error([&] { Loader(ds, 8, 0); }, {"8 tokens", "seq 8"});
  expect_error([&] { Loader(ds, 0, 0); }, {"sequence length"});
  Loader l(ds, 7, 0);
  EXPECT_EQ(l.windows(), 1);
  std::vector<int32_t> in, tg;
  expect_error([&] { l.next(1, 2, 2, in, tg); }, {"rank 2", "world 2"});
  expect_error([&] { l.next(0, 0, 1, in, tg); }, {"rows"});
  write_shard(dir / "big.bin", {1, 3000000000u, 2}, 0);
  TokenDataset big({dir / "big.bin"});
  Loader lb(big, 2, 0);
  expect_error([&] { lb.next(1, 0, 1, in, tg); }, {"3000000000", "int32"});
}

// ---- Brown tags ------------------------------------------------------------------------------

TEST(Prepare, StripBrownTags) {
  EXPECT_EQ(strip_brown_tags("The/at Fulton/np-tl ,/,"), "The Fulton ,");
  EXPECT_EQ(strip_brown_tags("\t``/`` Only/rb a/at relative/jj handful/nn ''/'' ./."),
            "\" Only a relative handful \" .");
  EXPECT_EQ(strip_brown_tags("  1/2/cd  of/in   it/pps  "), "1/2 of it");  // last '/' only
  EXPECT_EQ(strip_brown_tags("plain words stay"), "plain words stay");
  EXPECT_EQ(strip_brown_tags("``  ''"), "\" \"");
  EXPECT_EQ(strip_brown_tags("/nil word/nn"), "word");  // a token that becomes empty goes
  EXPECT_EQ(strip_brown_tags("   \t "), "");
  EXPECT_EQ(strip_brown_tags(""), "");
}

// ---- tokenizer -------------------------------------------------------------------------------

TokenizerTrainOptions small_tokenizer() {
  TokenizerTrainOptions o;
  o.vocab_size = 400;
  o.num_threads = 1;
  o.seed = 3;
  return o;
}

TEST(Tokenizer, TrainEncodeDecodeRoundTrip) {
  TempDir dir;
  // A directory and file name with a space and a comma: never split as a list of inputs.
  fs::create_directories(dir.path / "my corpus, v1");
  const std::string text = (dir.path / "my corpus, v1" / "a, b.txt").string();
  write_plain_corpus(text, 400, 17);
  Tokenizer::train({text}, dir / "tok", small_tokenizer());
  ASSERT_TRUE(fs::exists(dir / "tok.model"));
  EXPECT_TRUE(fs::exists(dir / "tok.vocab"));
  const Tokenizer t = Tokenizer::load(dir / "tok.model");
  EXPECT_EQ(t.vocab_size(), 400);
  EXPECT_EQ(t.unk_id(), 0);
  EXPECT_EQ(t.bos_id(), 1);
  EXPECT_EQ(t.eos_id(), 2);
  EXPECT_EQ(t.type(0), 2);
  EXPECT_EQ(t.type(1), 3);
  EXPECT_EQ(t.type(2), 3);
  EXPECT_EQ(t.piece(3), "<0x00>");
  for (int id = 3; id < 3 + 256; ++id) EXPECT_EQ(t.type(id), 6) << id;
  for (int id = 3 + 256; id < t.vocab_size(); ++id) EXPECT_EQ(t.type(id), 1) << id;
  EXPECT_LE(t.score(300), 0.0f);

  const std::vector<std::string> samples = {
      "The quick brown fox sees a lazy dog .",
      "  two  spaces,\ttabs and a trailing space ",
      "café naïve 中文 Ωmega 🙂 done",
      "digits 1234567890 and 3.14",
      "",
  };
  for (const auto& s : samples) EXPECT_EQ(t.decode(t.encode(s)), s) << s;
  // Merges were learned: a frequent word is shorter than its characters.
  EXPECT_LT(t.encode("the teacher").size(), std::string("the teacher").size());
  // Unseen characters fall back to bytes (中 is 3 UTF-8 bytes), seen ones do not.
  const auto zh = t.encode("中");
  int bytes = 0;
  for (int32_t id : zh) bytes += t.type(id) == 6;
  EXPECT_EQ(bytes, 3);
  for (int32_t id : t.encode("café")) EXPECT_NE(t.type(id), 6);
  // Digits are split one by one.
  for (int32_t id : t.encode("x 1234 1999")) {
    const std::string p = t.piece(id);
    EXPECT_LE(std::count_if(p.begin(), p.end(), [](char c) { return c >= '0' && c <= '9'; }), 1) << p;
  }

  // Serialized bytes round trip; identical to the file.
  const std::string proto = t.serialized();
  EXPECT_TRUE(proto == read_bytes(dir / "tok.model"));
  Tokenizer u = Tokenizer::from_serialized(proto);
  EXPECT_TRUE(u.serialized() == proto);
  EXPECT_EQ(u.vocab_size(), t.vocab_size());
  for (const auto& s : samples) EXPECT_EQ(u.encode(s), t.encode(s));
  for (int id = 0; id < t.vocab_size(); ++id) {
    EXPECT_EQ(u.piece(id), t.piece(id));
    EXPECT_EQ(u.type(id), t.type(id));
  }
  Tokenizer moved = std::move(u);
  EXPECT_EQ(moved.encode("a dog"), t.encode("a dog"));

  // Same input and options: the same model (retrained in place: the prefix is in the proto).
  Tokenizer::train({text}, dir / "tok", small_tokenizer());
  EXPECT_TRUE(read_bytes(dir / "tok.model") == proto);
}

TEST(Tokenizer, SeededSentenceSampling) {
  TempDir dir;
  write_plain_corpus(dir / "c.txt", 1000, 5);
  // Train on a seeded sample of 150 of the 1000 sentences; retrain in place (the prefix is part
  // of the proto) and compare.
  auto model = [&](uint64_t seed) {
    TokenizerTrainOptions o = small_tokenizer();
    o.input_sentence_size = 150;
    o.seed = seed;
    Tokenizer::train({dir / "c.txt"}, dir / "t", o);
    return read_bytes(dir / "t.model");
  };
  // Same seed, same model. (A different seed need not change it: sentencepiece 0.1.97 seeds
  // this sampler with a constant of its own and ignores the process-wide seed.)
  const std::string a = model(1), b = model(1);
  EXPECT_TRUE(a == b);
}

TEST(Tokenizer, Errors) {
  TempDir dir;
  expect_error([&] { Tokenizer::load(dir / "none.model"); }, {dir / "none.model", "not found"});
  write_bytes(dir / "junk.model", "definitely not a protobuf");
  expect_error([&] { Tokenizer::load(dir / "junk.model"); }, {dir / "junk.model", "not a valid"});
  expect_error([&] { Tokenizer::from_serialized(""); }, {"empty"});
  Tokenizer none;
  expect_error([&] { none.encode("x"); }, {"no tokenizer model loaded"});
  expect_error([&] { Tokenizer::train({dir / "absent.txt"}, dir / "t", small_tokenizer()); },
               {dir / "absent.txt", "not found"});
  write_plain_corpus(dir / "c.txt", 50, 1);
  expect_error([&] { Tokenizer::train({dir / "c.txt"}, dir / "no/such/dir/t", small_tokenizer()); },
               {"output directory does not exist", "no/such/dir"});
  TokenizerTrainOptions tiny = small_tokenizer();
  tiny.vocab_size = 100;  // cannot hold 3 specials + 256 bytes + the characters
  expect_error([&] { Tokenizer::train({dir / "c.txt"}, dir / "t", tiny); },
               {"Tokenizer::train", "sentencepiece training failed"});
  TokenizerTrainOptions few = small_tokenizer();
  few.input_sentence_size = 50;
  expect_error([&] { Tokenizer::train({dir / "c.txt"}, dir / "t", few); },
               {"input_sentence_size", "50"});

  Tokenizer::train({dir / "c.txt"}, dir / "ok", small_tokenizer());
  const Tokenizer t = Tokenizer::load(dir / "ok.model");
  expect_error([&] { t.decode({5, 400}); }, {"id 400", "position 1", "[0, 400)"});
  expect_error([&] { t.piece(-1); }, {"id -1"});
  expect_error([&] { t.type(400); }, {"id 400"});
}

// ---- prepare ---------------------------------------------------------------------------------

// A Brown-like directory: tagged files ca01..ca0N, blank lines between sentences, plus the
// corpus' non-text files, which must be skipped. Returns the plain sentences of each file.
std::vector<std::vector<std::string>> write_brown(const std::string& dir, int files, int sentences,
                                                  uint64_t seed) {
  fs::create_directories(dir);
  Rng rng(seed);
  std::vector<std::vector<std::string>> plain_docs;
  for (int f = 0; f < files; ++f) {
    std::string text;
    std::vector<std::string> doc;
    for (int s = 0; s < sentences; ++s) {
      const auto sen = sentence(rng);
      text += "\n\n" + tagged(sen) + "\n";
      doc.push_back(plain(sen));
    }
    char name[16];
    std::snprintf(name, sizeof name, "ca%02d", f + 1);
    write_bytes((fs::path(dir) / name).string(), text);
    plain_docs.push_back(doc);
  }
  write_bytes((fs::path(dir) / "README").string(), "BROWN CORPUS/nn readme/nn\n");
  write_bytes((fs::path(dir) / "CONTENTS").string(), "ca01 ca02/x\n");
  write_bytes((fs::path(dir) / "cats.txt").string(), "ca01 news\n");
  write_bytes((fs::path(dir) / "categories.pickle").string(), std::string("\x80\x04\x95\xff\x00", 5));
  write_bytes((fs::path(dir) / "package.json").string(), "{\"x\": 1}\n");
  return plain_docs;
}

std::string joined(const std::vector<std::string>& lines) {
  std::string s;
  for (const auto& l : lines) s += (s.empty() ? "" : " ") + l;
  return s;
}

TEST(Prepare, EndToEndBrown) {
  TempDir dir;
  const auto docs = write_brown(dir / "brown", 6, 60, 21);
  PrepareOptions o;
  o.inputs = {dir / "brown"};
  o.out_dir = dir / "out/nested";  // created
  o.tokenizer = small_tokenizer();
  o.val_fraction = 0.2;  // round(1.2) = 1 document
  o.seed = 4;
  o.brown_tags = true;
  const PrepareResult r = prepare(o);
  EXPECT_EQ(r.documents, 6);
  EXPECT_GT(r.train_tokens, 0);
  EXPECT_GT(r.val_tokens, 0);
  for (const char* f : {"tokenizer.model", "train.bin", "val.bin", "meta.json", "train.txt"})
    EXPECT_TRUE(fs::exists(fs::path(o.out_dir) / f)) << f;

  const Tokenizer t = Tokenizer::load(o.out_dir + "/tokenizer.model");
  EXPECT_EQ(t.vocab_size(), 400);
  TokenDataset train({o.out_dir + "/train.bin"}), val({o.out_dir + "/val.bin"});
  EXPECT_EQ(train.size(), r.train_tokens);
  EXPECT_EQ(val.size(), r.val_tokens);
  EXPECT_EQ(train.vocab_size(), 400u);
  train.check_vocab(400);
  val.check_vocab(400);

  // Each document is BOS + its lines; decoding gives the tag-free sentences, in corpus order.
  std::vector<std::string> decoded;
  for (const TokenDataset* ds : {&train, &val}) {
    std::vector<int32_t> cur;
    for (int64_t i = 0; i <= ds->size(); ++i) {
      if (i == ds->size() || ds->data()[i] == uint32_t(t.bos_id())) {
        if (i > 0) decoded.push_back(t.decode(cur));
        cur.clear();
      } else {
        cur.push_back(int32_t(ds->data()[i]));
      }
    }
    EXPECT_EQ(ds->data()[0], uint32_t(t.bos_id()));
  }
  ASSERT_EQ(decoded.size(), 6u);
  std::multiset<std::string> want, got(decoded.begin(), decoded.end());
  for (const auto& d : docs) want.insert(joined(d));
  EXPECT_EQ(got, want);
  for (const auto& d : decoded) EXPECT_EQ(d.find("/nn"), std::string::npos);
  EXPECT_NE(read_bytes(o.out_dir + "/train.txt").find('"'), std::string::npos);  // `` -> "

  const std::string meta = read_bytes(o.out_dir + "/meta.json");
  for (const char* key : {"\"train_tokens\"", "\"val_tokens\"", "\"vocab_size\": 400", "\"documents\": 6",
                          "\"val_documents\": 1", "\"brown_tags\": true"})
    EXPECT_NE(meta.find(key), std::string::npos) << key << " in " << meta;
  EXPECT_EQ(meta.find("cats.txt"), std::string::npos);  // skipped files are not inputs

  // Same options: byte-identical outputs.
  PrepareOptions o2 = o;
  o2.out_dir = dir / "out2";
  const PrepareResult r2 = prepare(o2);
  EXPECT_EQ(r2.train_tokens, r.train_tokens);
  EXPECT_TRUE(read_bytes(o2.out_dir + "/train.bin") == read_bytes(o.out_dir + "/train.bin"));
  EXPECT_TRUE(read_bytes(o2.out_dir + "/val.bin") == read_bytes(o.out_dir + "/val.bin"));
}

TEST(Prepare, SingleFileBlocksAndNoValidation) {
  TempDir dir;
  Rng rng(8);
  std::string text;
  for (int b = 0; b < 10; ++b) {  // 10 blank-line separated blocks of 12 lines
    for (int l = 0; l < 12; ++l) text += plain(sentence(rng)) + "\r\n";
    text += "\n  \n";
  }
  write_bytes(dir / "one.txt", text);
  PrepareOptions o;
  o.inputs = {dir / "one.txt"};
  o.out_dir = dir / "out";
  o.tokenizer = small_tokenizer();
  o.val_fraction = 0.1;
  PrepareResult r = prepare(o);
  EXPECT_EQ(r.documents, 10);
  EXPECT_GT(r.val_tokens, 0);
  EXPECT_TRUE(fs::exists(dir / "out/val.bin"));
  EXPECT_EQ(read_bytes(dir / "out/train.txt").find('\r'), std::string::npos);

  // One file without blank lines: each line is a document.
  write_plain_corpus(dir / "lines.txt", 40, 9);
  o.inputs = {dir / "lines.txt"};
  o.val_fraction = 0.5;
  r = prepare(o);
  EXPECT_EQ(r.documents, 40);
  EXPECT_NE(read_bytes(dir / "out/meta.json").find("\"val_documents\": 20"), std::string::npos);

  o.inputs = {dir / "one.txt"};
  o.val_fraction = 0;
  r = prepare(o);
  EXPECT_EQ(r.val_tokens, 0);
  EXPECT_GT(r.train_tokens, 0);
  EXPECT_FALSE(fs::exists(dir / "out/val.bin"));  // the earlier one is removed
}

TEST(Prepare, BadInputs) {
  TempDir dir;
  PrepareOptions o;
  o.out_dir = dir / "out";
  o.tokenizer = small_tokenizer();
  o.inputs = {dir / "missing.txt"};
  expect_error([&] { prepare(o); }, {"input not found", dir / "missing.txt"});

  write_plain_corpus(dir / "a.txt", 20, 1);
  o.inputs = {dir / "a.txt"};
  o.val_fraction = 0.6;
  expect_error([&] { prepare(o); }, {"val_fraction 0.6", "[0, 0.5]"});
  o.val_fraction = -0.1;
  expect_error([&] { prepare(o); }, {"val_fraction -0.1"});

  o.val_fraction = 0.05;
  write_bytes(dir / "blank.txt", "\n   \n\t\n");
  write_bytes(dir / "tags.txt", "/x /y\n\n");
  o.inputs = {dir / "blank.txt", dir / "tags.txt"};
  o.brown_tags = true;
  expect_error([&] { prepare(o); }, {"corpus is empty", dir / "blank.txt", dir / "tags.txt"});

  o.brown_tags = false;
  write_bytes(dir / "single.txt", "\n  just one line  \n\n");
  o.inputs = {dir / "single.txt"};
  expect_error([&] { prepare(o); }, {"at least 2 documents", dir / "single.txt"});

  fs::create_directories(dir / "onlymeta");
  write_bytes(dir / "onlymeta/README", "x");
  write_bytes(dir / "onlymeta/x.json", "{}");
  o.inputs = {dir / "onlymeta"};
  expect_error([&] { prepare(o); }, {dir / "onlymeta", "no text files"});
  o.inputs = {};
  expect_error([&] { prepare(o); }, {"no inputs"});
}

}  // namespace
