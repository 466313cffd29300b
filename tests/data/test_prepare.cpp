// Corpus preparation and the tokenizer: Brown tags, train/encode/decode, end-to-end prepare.
#include "tests/data/data_helpers.h"

namespace {

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
    EXPECT_LE(std::count_if(p.begin(), p.end(), [](char c) { return c >= '0' && c <= '9'; }), 1)
        << p;
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
  write_bytes((fs::path(dir) / "categories.pickle").string(),
              std::string("\x80\x04\x95\xff\x00", 5));
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
  for (const char* key : {"\"train_tokens\"", "\"val_tokens\"", "\"vocab_size\": 400",
                          "\"documents\": 6", "\"val_documents\": 1", "\"brown_tags\": true"})
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
