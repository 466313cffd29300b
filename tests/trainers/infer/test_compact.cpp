// Compact checkpoints: round trip, size ratio, corruption and truncation, CRC-32.
#include "tests/trainers/infer/infer_helpers.h"

// ---- compact checkpoints
// --------------------------------------------------------------------------------

TEST(Compact, RoundTripGivesIdenticalCodesScalesAndLogits) {
  const fs::path d = tmp_dir();
  auto tm = random_model(ActMode::A48);
  tm.tokenizer_proto = std::string("\x0a\x03pie\x00\xff", 7);
  const std::string path = (d / "m.bnc").string();
  const trainers::formats::CompactInfo info =
      trainers::formats::save_compact(path, tm, trainers::formats::CompactOptions{});
  ASSERT_TRUE(trainers::formats::is_compact_file(path));
  const trainers::formats::InferenceModel m = trainers::formats::load_inference_model(path);
  EXPECT_TRUE(m.compact);
  EXPECT_EQ(m.mode, ActMode::A48);
  EXPECT_EQ(m.step, 42);
  EXPECT_EQ(m.tokenizer_proto, tm.tokenizer_proto);
  EXPECT_EQ(m.config_yaml, tm.config_yaml);
  const auto ref = nn::InferenceWeights::from_model(*tm.model);
  std::vector<const nn::TernaryMatrix*> a, b;
  ref->for_each_matrix([&](const std::string&, const nn::TernaryMatrix& x) { a.push_back(&x); });
  m.weights->for_each_matrix(
      [&](const std::string&, const nn::TernaryMatrix& x) { b.push_back(&x); });
  ASSERT_EQ(a.size(), b.size());
  for (size_t i = 0; i < a.size(); ++i) {
    EXPECT_EQ(a[i]->codes, b[i]->codes) << i;
    EXPECT_EQ(a[i]->scale, b[i]->scale) << i;
  }
  EXPECT_EQ(ref->embed, m.weights->embed);
  EXPECT_EQ(ref->lm_head, m.weights->lm_head);
  const auto tokens = random_tokens(19, 96, 17);
  for (ActMode mode : {ActMode::A48, ActMode::W158A8}) {
    const auto l1 = nn::InferenceEngine(ref, {mode, {}}).logits(tokens);
    const auto l2 = nn::InferenceEngine(m.weights, {mode, {}}).logits(tokens);
    EXPECT_EQ(l1, l2) << "logits differ after the round trip";
  }
  std::printf(
      "compact: %lld ternary values in %lld bytes = %.3fx smaller than fp32 latents; file %lld "
      "bytes\n",
      (long long)info.ternary_params, (long long)info.ternary_bytes, info.ternary_ratio(),
      (long long)info.file_bytes);
  EXPECT_GE(info.ternary_ratio(), 15.0);
  // fp16 embeddings: smaller file, logits close.
  const trainers::formats::CompactInfo i16 = trainers::formats::save_compact(
      (d / "h.bnc").string(), tm, trainers::formats::CompactOptions{true});
  EXPECT_EQ(i16.file_bytes, info.file_bytes - 2 * 2 * 96 * 48);
  const auto m16 = trainers::formats::load_compact((d / "h.bnc").string());
  for (size_t i = 0; i < ref->embed.size(); ++i)  // binary16 keeps 11 significant bits
    ASSERT_LE(std::fabs(m16.weights->embed[i] - ref->embed[i]),
              std::ldexp(std::fabs(ref->embed[i]), -11) + 1e-7f)
        << i;
  const auto l16 = nn::InferenceEngine(m16.weights, {ActMode::A48, {}}).logits(tokens),
             l32 = nn::InferenceEngine(ref, {ActMode::A48, {}}).logits(tokens);
  double num = 0, den = 0;
  for (size_t i = 0; i < l16.size(); ++i)
    num += std::fabs(double(l16[i]) - l32[i]), den += std::fabs(double(l32[i]));
  EXPECT_LT(num / den, 2e-2);  // mean relative change of the logits
  // Mode fp cannot be served from a compact file; a model saved in mode fp is refused.
  EXPECT_THROW(nn::InferenceEngine(m.weights, {ActMode::FP, {}}), std::exception);
  auto tfp = random_model(ActMode::FP);
  EXPECT_THROW(trainers::formats::save_compact((d / "fp.bnc").string(), tfp), std::exception);
  fs::remove_all(d);
}

TEST(Compact, SizeRatioOnAPaperShapedLayer) {
  // d 256, ffn 704 (not a multiple of 4 elements per row is irrelevant: packing is over the
  // tensor).
  const fs::path d = tmp_dir();
  auto tm = random_model(ActMode::A48, 3,
                         {"model.d_model=256", "model.n_heads=4", "model.n_kv_heads=4",
                          "model.ffn_dim=704", "model.n_layers=1"});
  const auto info = trainers::formats::save_compact((d / "m.bnc").string(), tm,
                                                    trainers::formats::CompactOptions{});
  std::printf("compact (d 256, ffn 704): ternary %lld values, %lld bytes, ratio %.4fx\n",
              (long long)info.ternary_params, (long long)info.ternary_bytes, info.ternary_ratio());
  EXPECT_GE(info.ternary_ratio(), 15.99);
  fs::remove_all(d);
}

TEST(Compact, CorruptionAndTruncationAreClearErrors) {
  const fs::path d = tmp_dir();
  auto tm = random_model(ActMode::A48);
  const std::string path = (d / "m.bnc").string();
  trainers::formats::save_compact(path, tm);
  std::string bytes;
  {
    std::ifstream f(path, std::ios::binary);
    bytes.assign(std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>());
  }
  auto write = [&](const std::string& name, const std::string& s) {
    const std::string p = (d / name).string();
    std::ofstream(p, std::ios::binary).write(s.data(), std::streamsize(s.size()));
    return p;
  };
  auto error_of = [](const std::string& p) -> std::string {
    try {
      trainers::formats::load_compact(p);
    } catch (const std::exception& e) {
      return e.what();
    }
    return "no error";
  };
  std::string flipped = bytes;
  flipped[bytes.size() / 2] ^= 0x10;
  EXPECT_NE(error_of(write("flip.bnc", flipped)).find("CRC-32 mismatch"), std::string::npos)
      << error_of(write("flip.bnc", flipped));
  EXPECT_NE(error_of(write("trunc.bnc", bytes.substr(0, bytes.size() - 100))).find("truncated"),
            std::string::npos);
  EXPECT_NE(error_of(write("short.bnc", bytes.substr(0, 20))).find("truncated"), std::string::npos);
  std::string hdr = bytes;
  hdr[8] = 2;  // version field: the header checksum catches it
  EXPECT_NE(error_of(write("hdr.bnc", hdr)).find("corrupt header"), std::string::npos);
  std::string magic = bytes;
  magic[0] = 'X';
  EXPECT_NE(error_of(write("magic.bnc", magic)).find("bad magic"), std::string::npos);
  EXPECT_FALSE(trainers::formats::is_compact_file((d / "magic.bnc").string()));
  EXPECT_NE(error_of(write("extra.bnc", bytes + "x")).find("trailing"), std::string::npos);
  EXPECT_NE(error_of((d / "absent.bnc").string()).find("cannot open"), std::string::npos);
  fs::remove_all(d);
}

TEST(Compact, Crc32KnownValue) {
  EXPECT_EQ(trainers::formats::crc32("123456789", 9),
            0xCBF43926u);  // the CRC-32/ISO-HDLC check value
}
