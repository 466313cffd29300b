// Token shards, datasets and the loader: formats, errors, epochs, rank slices, resume cursors.
#include "tests/data/data_helpers.h"

namespace {

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
  expect_error(
      [&] {
        write_shard(dir / "x.bin", {1, 2, 300}, 256);
      },
      {dir / "x.bin", "token 300", "position 2", "256"});
  EXPECT_FALSE(fs::exists(dir / "x.bin"));
}

// Found by fuzz_shard (UBSan: memcpy from a null pointer): a shard of 4-byte tokens holding none.
TEST(Shards, EmptyU32ShardReadsAsNoTokens) {
  TempDir dir;
  std::string b = std::string("BNTOKSH", 8);
  const uint32_t version = 1, width = 4;
  const uint64_t count = 0, vocab = 70000;
  b.append(reinterpret_cast<const char*>(&version), 4)
      .append(reinterpret_cast<const char*>(&width), 4);
  b.append(reinterpret_cast<const char*>(&count), 8)
      .append(reinterpret_cast<const char*>(&vocab), 8);
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
               {dir / "shards/b.bin" + ": token 12 at token index 2 of that file",
                "position 4 of the dataset", "vocabulary of 12 ids"});

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
    for (int64_t i = 0; i < 30; ++i)
      EXPECT_EQ(l.window_of(uint64_t(epoch * 30 + i)), order[size_t(i)]);
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
    for (int r = 0; r < rows; ++r)
      wa.insert(a.in[size_t(r * seq)]), wb.insert(b.in[size_t(r * seq)]);
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

}  // namespace
