// `prepare` at scale: JSON Lines, gzip/zstd streams, bad input by file:line, thread-count
// independence, resume after an interruption, the tokenizer sample, the mmap'd shard directory.
#include <zlib.h>
#include <zstd.h>

#include <map>
#include <nlohmann/json.hpp>

#include "tests/data/data_helpers.h"

namespace {

// A JSON Lines corpus of `docs` records {"text": 1-3 sentences, "id": i}; record i mentions
// "doc<i>" so that the sample test can tell where its lines come from.
std::string jsonl_corpus(int docs, uint64_t seed) {
  Rng rng(seed);
  std::string s;
  for (int i = 0; i < docs; ++i) {
    std::string text = "doc" + std::to_string(i);
    const int n = 1 + int(rng.below(3));
    for (int k = 0; k < n; ++k) text += (k ? "\n" : " ") + plain(sentence(rng));
    s += nlohmann::json{{"text", text}, {"id", i}}.dump() + "\n";
  }
  return s;
}

std::string gzip(const std::string& in) {
  z_stream zs{};
  EXPECT_EQ(deflateInit2(&zs, 6, Z_DEFLATED, 15 + 16, 8, Z_DEFAULT_STRATEGY), Z_OK);
  std::string out(deflateBound(&zs, uLong(in.size())) + 64, '\0');
  zs.next_in = reinterpret_cast<Bytef*>(const_cast<char*>(in.data()));
  zs.avail_in = uInt(in.size());
  zs.next_out = reinterpret_cast<Bytef*>(out.data());
  zs.avail_out = uInt(out.size());
  EXPECT_EQ(deflate(&zs, Z_FINISH), Z_STREAM_END);
  out.resize(zs.total_out);
  deflateEnd(&zs);
  return out;
}

std::string zstd(const std::string& in) {
  std::string out(ZSTD_compressBound(in.size()), '\0');
  const size_t n = ZSTD_compress(out.data(), out.size(), in.data(), in.size(), 3);
  EXPECT_FALSE(ZSTD_isError(n));
  out.resize(n);
  return out;
}

// A small tokenizer trained once per test on synthetic sentences (prepare then takes it as given).
std::string small_model(const TempDir& dir) {
  write_plain_corpus(dir / "tok.txt", 800, 77);
  TokenizerTrainOptions o;
  o.vocab_size = 400;
  o.num_threads = 1;
  Tokenizer::train({dir / "tok.txt"}, dir / "tok", o);
  return dir / "tok.model";
}

PrepareOptions given_tokenizer(const std::string& model, std::vector<std::string> inputs,
                               const std::string& out) {
  PrepareOptions o;
  o.inputs = std::move(inputs);
  o.out_dir = out;
  o.tokenizer_model = model;
  o.val_fraction = 0.1;
  o.seed = 5;
  return o;
}

// Every regular file under dir (relative name -> bytes), for byte-for-byte comparisons.
std::map<std::string, std::string> tree(const std::string& dir) {
  std::map<std::string, std::string> t;
  for (const auto& e : fs::recursive_directory_iterator(dir))
    if (e.is_regular_file()) t[fs::relative(e.path(), dir).string()] = read_bytes(e.path());
  return t;
}

std::vector<uint32_t> all_tokens(const TokenDataset& ds) {
  std::vector<uint32_t> v(size_t(ds.size()));
  ds.read(0, ds.size(), v.data());
  return v;
}

TEST(PrepareScale, JsonLinesPlainGzipZstdGiveTheSameShards) {
  TempDir dir;
  const std::string model = small_model(dir);
  const std::string text = jsonl_corpus(300, 1);
  write_bytes(dir / "c.jsonl", text);
  write_bytes(dir / "c.jsonl.gz", gzip(text));
  write_bytes(dir / "c.jsonl.zst", zstd(text));
  // Two gzip members back to back (what `cat a.gz b.gz` makes) read as one stream.
  const size_t half = text.find('\n', text.size() / 2) + 1;
  write_bytes(dir / "two.jsonl.gz", gzip(text.substr(0, half)) + gzip(text.substr(half)));
  // Compression is found by magic bytes, not by name.
  write_bytes(dir / "renamed.jsonl", zstd(text));

  std::vector<std::string> bins;
  for (const char* f : {"c.jsonl", "c.jsonl.gz", "c.jsonl.zst", "two.jsonl.gz", "renamed.jsonl"}) {
    const std::string out = dir / (std::string("out_") + f);
    const PrepareResult r = prepare(given_tokenizer(model, {dir / f}, out));
    EXPECT_EQ(r.documents, 300) << f;
    EXPECT_EQ(r.bad.total(), 0) << f;
    EXPECT_EQ(r.train_shards, 1);
    bins.push_back(read_bytes(out + "/train.bin") + read_bytes(out + "/val.bin"));
    EXPECT_GT(bins.back().size(), 64u);
  }
  for (size_t i = 1; i < bins.size(); ++i) EXPECT_TRUE(bins[i] == bins[0]) << i;

  // Each record is BOS + its lines: the decoded documents of both splits are the records' texts.
  const Tokenizer t = Tokenizer::load(model);
  std::multiset<std::string> got, want;
  for (const char* split : {"train.bin", "val.bin"}) {
    const TokenDataset ds({dir / ("out_c.jsonl/" + std::string(split))});
    std::vector<int32_t> cur;
    for (int64_t i = 0; i <= ds.size(); ++i)
      if (i == ds.size() || ds.at(i) == uint32_t(t.bos_id())) {
        if (i > 0) got.insert(t.decode(cur));
        cur.clear();
      } else {
        cur.push_back(int32_t(ds.at(i)));
      }
  }
  for (size_t a = 0; a < text.size();) {
    const size_t b = text.find('\n', a);
    std::string doc = nlohmann::json::parse(text.substr(a, b - a))["text"];
    std::replace(doc.begin(), doc.end(), '\n', ' ');
    want.insert(doc);
    a = b + 1;
  }
  EXPECT_EQ(got, want);
  EXPECT_NE(read_bytes(dir / "out_c.jsonl/meta.json").find("\"val_documents\": 30"),
            std::string::npos);

  // --text-field names another member.
  std::string other = text;
  for (size_t p = 0; (p = other.find("\"text\":", p)) != std::string::npos;)
    other.replace(p, 7, "\"body\":");
  write_bytes(dir / "body.jsonl", other);
  PrepareOptions o = given_tokenizer(model, {dir / "body.jsonl"}, dir / "out_body");
  o.text_field = "body";
  EXPECT_EQ(prepare(o).documents, 300);
  EXPECT_TRUE(read_bytes(dir / "out_body/train.bin") + read_bytes(dir / "out_body/val.bin") ==
              bins[0]);
}

TEST(PrepareScale, BadInputIsCountedWithFileAndLineOrRefusedWhenStrict) {
  TempDir dir;
  const std::string model = small_model(dir);
  std::string j = jsonl_corpus(20, 2);
  j += "{\"text\": \"bad byte \xff here\"}\n";  // line 21: invalid UTF-8
  j += "{\"text\": \"unterminated\n";           // line 22: malformed JSON
  j += "{\"title\": \"no text\"}\n";            // line 23: missing field
  j += "{\"text\": 42}\n";                      // line 24: not a string
  j += "[1, 2]\n";                              // line 25: not an object
  j += jsonl_corpus(5, 3);
  write_bytes(dir / "a.jsonl", j);
  // Plain text with one invalid UTF-8 line (line 3 of its file): that line is dropped.
  write_bytes(dir / "b.txt", "A fine line .\nAnother line .\n\xc3\x28 broken\nLast line .\n");
  // Truncated compressed files: the decoded lines before the cut are kept.
  const std::string z = jsonl_corpus(40, 4);
  const std::string gz = gzip(z), zs = zstd(z);
  write_bytes(dir / "c.jsonl.gz", gz.substr(0, gz.size() / 2));
  write_bytes(dir / "d.jsonl.zst", zs.substr(0, zs.size() / 2));

  PrepareOptions o = given_tokenizer(
      model, {dir / "a.jsonl", dir / "b.txt", dir / "c.jsonl.gz", dir / "d.jsonl.zst"},
      dir / "out");
  const PrepareResult r = prepare(o);
  const auto& c = r.bad.counts;
  EXPECT_EQ(c[size_t(BadKind::InvalidUtf8)], 2);
  EXPECT_EQ(c[size_t(BadKind::MalformedJson)], 1);
  EXPECT_EQ(c[size_t(BadKind::MissingField)], 3);
  EXPECT_EQ(c[size_t(BadKind::Truncated)], 2);
  EXPECT_EQ(r.bad.total(), 8);
  // 25 good records of a.jsonl, b.txt (one document), and a part of each truncated file.
  EXPECT_GE(r.documents, 26);
  EXPECT_LT(r.documents, 26 + 80);
  ASSERT_EQ(r.bad.first.size(), 8u);
  const std::vector<std::string> want = {dir / "a.jsonl:21: invalid UTF-8",
                                         dir / "a.jsonl:22: malformed JSON",
                                         dir / "a.jsonl:23: no \"text\" field",
                                         dir / "a.jsonl:24: the \"text\" field is not a string",
                                         dir / "a.jsonl:25: not a JSON object",
                                         dir / "b.txt:3: invalid UTF-8",
                                         dir / "c.jsonl.gz:",
                                         dir / "d.jsonl.zst:"};
  for (size_t i = 0; i < want.size(); ++i)
    EXPECT_EQ(r.bad.first[i].rfind(want[i], 0), 0u) << r.bad.first[i] << " vs " << want[i];
  EXPECT_NE(r.bad.first[6].find("truncated gzip"), std::string::npos) << r.bad.first[6];
  EXPECT_NE(r.bad.first[7].find("truncated zstd"), std::string::npos) << r.bad.first[7];
  const auto meta = nlohmann::json::parse(read_bytes(dir / "out/meta.json"));
  EXPECT_EQ(meta["bad_input"]["total"], 8);
  EXPECT_EQ(meta["bad_input"]["missing_field"], 3);
  EXPECT_EQ(meta["bad_input"]["first"][0], r.bad.first[0]);

  // --strict: the first bad line of each kind is an error naming file:line and what is wrong.
  o.strict = true;
  o.out_dir = dir / "strict";
  struct Case {
    std::string file, bytes;
    std::vector<std::string> pieces;
  };
  const std::vector<Case> cases = {
      {"u.jsonl", "{\"text\": \"ok\"}\n{\"text\": \"\xff\"}\n", {"u.jsonl:2: invalid UTF-8"}},
      {"m.jsonl", "{\"text\": \"ok\"}\n\n{oops}\n", {"m.jsonl:3: malformed JSON"}},
      {"f.jsonl", "{\"txt\": \"ok\"}\n", {"f.jsonl:1: no \"text\" field"}},
      {"t.jsonl.gz", gz.substr(0, gz.size() / 2), {"t.jsonl.gz:", "truncated gzip"}},
      {"t.jsonl.zst", zs.substr(0, zs.size() / 2), {"t.jsonl.zst:", "truncated zstd"}},
      {"p.txt", "good\n\xed\xa0\x80 surrogate\n", {"p.txt:2: invalid UTF-8"}},
  };
  for (const Case& k : cases) {
    write_bytes(dir / k.file, k.bytes);
    o.inputs = {dir / k.file, dir / "a.jsonl"};
    std::vector<std::string> pieces = k.pieces;
    pieces.push_back("--strict");
    expect_error([&] { prepare(o); }, pieces);
  }
  EXPECT_FALSE(fs::exists(dir / "strict/meta.json"));  // refused before anything is written
}

TEST(PrepareScale, OutputDoesNotDependOnTheThreadCount) {
  TempDir dir;
  const std::string model = small_model(dir);
  write_bytes(dir / "c.jsonl", jsonl_corpus(1500, 6));
  std::map<std::string, std::string> first;
  for (int threads : {1, 2, 3}) {
    PrepareOptions o =
        given_tokenizer(model, {dir / "c.jsonl"}, dir / ("t" + std::to_string(threads)));
    o.shard_tokens = 4000;
    o.threads = threads;
    const PrepareResult r = prepare(o);
    EXPECT_GT(r.train_shards, 5);
    EXPECT_GT(r.val_shards, 1);
    const auto t = tree(o.out_dir);
    EXPECT_TRUE(t.count("train/000000.bin") && t.count("val/index.json") && t.count("meta.json"));
    if (threads == 1)
      first = t;
    else
      EXPECT_TRUE(t == first) << threads << " threads";
  }
}

TEST(PrepareScale, AnInterruptedPrepareResumesToTheSameBytes) {
  TempDir dir;
  const std::string model = small_model(dir);
  write_bytes(dir / "a.jsonl", jsonl_corpus(700, 7));
  write_bytes(dir / "b.jsonl.zst", zstd(jsonl_corpus(700, 8)));
  auto opts = [&](const std::string& out) {
    PrepareOptions o = given_tokenizer(model, {dir / "a.jsonl", dir / "b.jsonl.zst"}, out);
    o.shard_tokens = 3000;
    return o;
  };
  const PrepareResult whole = prepare(opts(dir / "whole"));
  ASSERT_GT(whole.train_shards, 8);

  PrepareOptions o = opts(dir / "cut");
  o.stop_after_shards = 4;
  const PrepareResult cut = prepare(o);
  EXPECT_FALSE(cut.complete);
  EXPECT_EQ(cut.train_shards + cut.val_shards, 4);
  const auto meta = nlohmann::json::parse(read_bytes(dir / "cut/meta.json"));
  EXPECT_FALSE(meta["complete"].get<bool>());
  // The half-written directory is refused as training data.
  expect_error([&] { TokenDataset({dir / "cut/train"}); }, {"incomplete", dir / "cut/train"});
  // What a kill leaves behind: a partial shard being written.
  write_bytes(dir / "cut/train.bin.tmp", "partial");

  o.stop_after_shards = 3;  // a second interruption, then the rest
  EXPECT_FALSE(prepare(o).complete);
  o.stop_after_shards = 0;
  const PrepareResult rest = prepare(o);
  EXPECT_TRUE(rest.complete);
  EXPECT_EQ(rest.resumed_shards, 7);
  EXPECT_EQ(rest.train_tokens, whole.train_tokens);
  EXPECT_EQ(rest.val_tokens, whole.val_tokens);
  const auto a = tree(dir / "whole"), b = tree(dir / "cut");
  EXPECT_EQ(a.size(), b.size());
  for (const auto& [name, bytes] : a) EXPECT_TRUE(b.count(name) && b.at(name) == bytes) << name;

  // Other options: a fresh start, not a resume.
  o.stop_after_shards = 2;
  EXPECT_FALSE(prepare(o).complete);
  o.stop_after_shards = 0;
  o.seed = 99;
  EXPECT_EQ(prepare(o).resumed_shards, 0);
}

TEST(PrepareScale, TokenizerTrainsOnABoundedSampleSpreadOverTheCorpus) {
  TempDir dir;
  write_bytes(dir / "c.jsonl", jsonl_corpus(4000, 9));
  PrepareOptions o;
  o.inputs = {dir / "c.jsonl"};
  o.out_dir = dir / "out";
  o.tokenizer.vocab_size = 400;
  o.tokenizer.num_threads = 1;
  o.sample_bytes = 30000;
  const PrepareResult r = prepare(o);
  EXPECT_EQ(r.documents, 4000);
  const std::string sample = read_bytes(dir / "out/train.txt");
  EXPECT_LE(sample.size(), 30000u + 2000u);  // the last line may cross the bound
  EXPECT_GT(sample.size(), 20000u);
  // Spread: lines from the first, middle and last part of the corpus.
  int lo = 0, mid = 0, hi = 0;
  for (size_t p = 0; (p = sample.find("doc", p)) != std::string::npos; p += 3) {
    const int d = std::atoi(sample.c_str() + p + 3);
    lo += d < 1000, mid += d >= 1500 && d < 2500, hi += d >= 3000;
  }
  EXPECT_GT(lo, 10);
  EXPECT_GT(mid, 10);
  EXPECT_GT(hi, 10);
  EXPECT_EQ(Tokenizer::load(dir / "out/tokenizer.model").vocab_size(), 400);
}

TEST(PrepareScale, LoaderMapsAShardDirectoryThroughItsIndex) {
  TempDir dir;
  const std::string model = small_model(dir);
  write_bytes(dir / "c.jsonl", jsonl_corpus(1200, 10));
  PrepareOptions o = given_tokenizer(model, {dir / "c.jsonl"}, dir / "out");
  o.shard_tokens = 2500;
  const PrepareResult r = prepare(o);
  ASSERT_GT(r.train_shards, 4);
  const TokenDataset ds({dir / "out/train"});
  EXPECT_EQ(ds.size(), r.train_tokens);
  EXPECT_EQ(ds.shards(), r.train_shards);
  EXPECT_EQ(ds.vocab_size(), 400u);
  ds.check_vocab(400);
  // The same tokens as the shard files read one by one, in the index's order.
  const auto idx = nlohmann::json::parse(read_bytes(dir / "out/train/index.json"));
  EXPECT_TRUE(idx["complete"].get<bool>());
  EXPECT_EQ(idx["tokenizer"], "../tokenizer.model");
  std::vector<uint32_t> want;
  int64_t sum = 0;
  for (const auto& s : idx["shards"]) {
    const auto t = read_shard(dir / ("out/train/" + s["file"].get<std::string>()));
    EXPECT_EQ(int64_t(t.size()), s["tokens"].get<int64_t>());
    sum += int64_t(t.size());
    want.insert(want.end(), t.begin(), t.end());
  }
  EXPECT_EQ(sum, idx["tokens"].get<int64_t>());
  EXPECT_EQ(all_tokens(ds), want);
  // Windows that cross shard boundaries come out whole.
  Loader l(ds, 1000, 3);
  std::vector<int32_t> x, y;
  for (int b = 0; b < 20; ++b) {
    l.next(1, 0, 1, x, y);
    const auto it = std::search(want.begin(), want.end(), x.begin(), x.end(),
                                [](uint32_t a, int32_t b) { return int64_t(a) == b; });
    ASSERT_NE(it, want.end());
    EXPECT_EQ(uint32_t(y.back()), *(it + 1000));
  }
  EXPECT_EQ(tokenizer_beside(dir / "out/train"),
            fs::path(dir / "out/tokenizer.model").lexically_normal().string());
  EXPECT_EQ(tokenizer_beside(dir / "out/meta.json"), dir / "out/tokenizer.model");

  // The index's order wins over names; u16 and u32 shards mix; an incomplete index is refused.
  fs::create_directories(dir / "hand");
  write_shard(dir / "hand/a.bin", {1, 2, 3}, 100);
  write_shard(dir / "hand/b.bin", {70000, 5}, 80000);
  write_bytes(dir / "hand/index.json",
              R"({"complete": true, "shards": [{"file": "b.bin"}, {"file": "a.bin"}]})");
  const TokenDataset h({dir / "hand"});
  EXPECT_EQ(all_tokens(h), (std::vector<uint32_t>{70000, 5, 1, 2, 3}));
  EXPECT_EQ(h.at(2), 1u);
  uint32_t buf[3];
  expect_error([&] { h.read(3, 3, buf); }, {"tokens [3, 6)", "5 tokens"});
  write_bytes(dir / "hand/index.json", R"({"complete": false, "shards": []})");
  expect_error([&] { TokenDataset({dir / "hand"}); }, {dir / "hand/index.json", "incomplete"});
  write_bytes(dir / "hand/index.json", R"({"complete": true})");
  expect_error([&] { TokenDataset({dir / "hand"}); },
               {dir / "hand/index.json", "not a shard index"});
}

}  // namespace
