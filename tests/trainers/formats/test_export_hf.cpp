// Hugging Face exports: ternary packing, online and offline layouts, reference logits, Python
// reader, CLI.
#include "tests/trainers/formats/export_helpers.h"

// ---- packing --------------------------------------------------------------------------------

TEST(Pack, MatchesTransformersDocstringExample) {
  // transformers/integrations/bitnet.py, unpack_weights docstring: packed [2, 2] -> [8, 2].
  const uint8_t packed[] = {0b10100001, 0b00011000, 0b10010000, 0b00001010};
  const std::vector<int8_t> want = {0, -1, -1, 1, -1, 1, -1, 1, 1, 0, 0, -1, 1, -1, 1, -1};
  EXPECT_EQ(trainers::formats::unpack_ternary(packed, 8, 2), want);
  EXPECT_EQ(trainers::formats::pack_ternary(want.data(), 8, 2),
            std::vector<uint8_t>(packed, packed + 4));
}

TEST(Pack, RoundTripAndLayout) {
  autograd::Rng r(3);
  const int64_t out = 12, in = 7, R = out / 4;
  std::vector<int8_t> c(size_t(out * in));
  for (auto& v : c) v = int8_t(int(r.below(3)) - 1);
  const auto p = trainers::formats::pack_ternary(c.data(), out, in);
  ASSERT_EQ(p.size(), size_t(R * in));
  for (int64_t row = 0; row < R; ++row)
    for (int64_t j = 0; j < in; ++j) {
      int want = 0;
      for (int i = 0; i < 4; ++i) want |= (c[size_t((i * R + row) * in + j)] + 1) << (2 * i);
      EXPECT_EQ(int(p[size_t(row * in + j)]), want);
    }
  EXPECT_EQ(trainers::formats::unpack_ternary(p.data(), out, in), c);
  EXPECT_THROW(trainers::formats::pack_ternary(c.data(), 6, 14), std::exception);
}

// ---- Hugging Face ---------------------------------------------------------------------------

TEST(Export, HfOnlineWritesLatentWeightsConfigAndTokenizer) {
  const auto tm = trainers::formats::load_trained_model(make_model("hf").string());
  const fs::path out = g->dir / "hf";
  const auto r = trainers::formats::export_model(tm, out.string(), fmt(ExportFormat::HF));
  for (const char* f :
       {"config.json", "model.safetensors", "tokenizer.model", "tokenizer_config.json",
        "special_tokens_map.json", "generation_config.json"})
    EXPECT_TRUE(fs::exists(out / f)) << f;

  const auto st = autograd::read_safetensors((out / "model.safetensors").string());
  EXPECT_EQ(st.metadata.at("format"), "pt");
  EXPECT_EQ(st.tensors.size(), tm.model->params().entries().size());
  EXPECT_EQ(st.find("lm_head.weight"), nullptr);  // tied
  for (const auto& e : tm.model->params().entries()) {
    const auto* b = st.find(e.name);
    ASSERT_NE(b, nullptr) << e.name;
    EXPECT_EQ(b->dtype, "F32");
    EXPECT_EQ(b->shape, e.var.shape().vec());
    EXPECT_EQ(std::memcmp(b->bytes.data(), e.var.data(), size_t(e.numel) * 4), 0) << e.name;
  }
  const auto c = read_json(out / "config.json");
  EXPECT_EQ(c["model_type"], "bitnet");
  EXPECT_EQ(c["architectures"][0], "BitNetForCausalLM");
  EXPECT_EQ(c["hidden_act"], "relu2");
  EXPECT_EQ(c["hidden_size"], 32);
  EXPECT_EQ(c["intermediate_size"], 64);
  EXPECT_EQ(c["num_hidden_layers"], 2);
  EXPECT_EQ(c["num_attention_heads"], 4);
  EXPECT_EQ(c["num_key_value_heads"], 2);
  EXPECT_EQ(c["vocab_size"], 400);
  EXPECT_EQ(c["max_position_embeddings"], 48);  // the training seq_len
  EXPECT_DOUBLE_EQ(c["rms_norm_eps"].get<double>(), 1e-5);
  EXPECT_DOUBLE_EQ(c["rope_theta"].get<double>(), 10000.0);
  EXPECT_EQ(c["tie_word_embeddings"], true);
  EXPECT_EQ(c["attention_bias"], false);
  EXPECT_EQ(c["torch_dtype"], "float32");
  EXPECT_EQ(c["bos_token_id"], 1);
  EXPECT_EQ(c["eos_token_id"], 2);
  EXPECT_EQ(c["quantization_config"]["quant_method"], "bitnet");
  EXPECT_EQ(c["quantization_config"]["linear_class"], "autobitlinear");
  EXPECT_EQ(c["quantization_config"]["quantization_mode"], "online");
  EXPECT_EQ(read_bytes(out / "tokenizer.model"), g->proto);
  const auto tc = read_json(out / "tokenizer_config.json");
  EXPECT_EQ(tc["tokenizer_class"], "LlamaTokenizer");
  EXPECT_EQ(tc["bos_token"], "<s>");
  EXPECT_EQ(tc["eos_token"], "</s>");
  EXPECT_EQ(tc["unk_token"], "<unk>");
  EXPECT_EQ(tc["add_bos_token"], true);
  EXPECT_EQ(tc["add_eos_token"], false);
  EXPECT_EQ(tc["legacy"], true);
  EXPECT_EQ(read_json(out / "special_tokens_map.json")["bos_token"], "<s>");
  EXPECT_EQ(read_json(out / "generation_config.json")["eos_token_id"], 2);
  // the model was saved in a4.8: the export says transformers computes w158a8
  ASSERT_FALSE(r.warnings.empty());
  EXPECT_NE(r.warnings.back().find("w158a8"), std::string::npos);
}

TEST(Export, HfOfflinePacksTernaryCodesWithScale) {
  const auto tm = trainers::formats::load_trained_model(
      make_model("hfoff", {"model.tie_embeddings=false"}).string());
  const fs::path out = g->dir / "hfoff";
  trainers::formats::export_model(tm, out.string(), fmt(ExportFormat::HFOffline));
  const auto st = autograd::read_safetensors((out / "model.safetensors").string());
  EXPECT_EQ(read_json(out / "config.json")["quantization_config"]["quantization_mode"], "offline");
  ASSERT_NE(st.find("lm_head.weight"), nullptr);  // untied: present, full precision
  int packed = 0;
  for (const auto& e : tm.model->params().entries()) {
    const auto* b = st.find(e.name);
    ASSERT_NE(b, nullptr) << e.name;
    if (!trainers::formats::is_bitlinear_weight(e.name)) {
      EXPECT_EQ(b->dtype, "F32");
      EXPECT_EQ(std::memcmp(b->bytes.data(), e.var.data(), size_t(e.numel) * 4), 0) << e.name;
      continue;
    }
    ++packed;
    const int64_t o = e.var.shape()[0], in = e.var.shape()[1];
    EXPECT_EQ(b->dtype, "U8");
    EXPECT_EQ(b->shape, (std::vector<int64_t>{o / 4, in}));
    const std::string sname = e.name.substr(0, e.name.size() - 6) + "weight_scale";
    const auto* s = st.find(sname);
    ASSERT_NE(s, nullptr) << sname;
    EXPECT_EQ(s->dtype, "F32");
    EXPECT_EQ(s->shape, std::vector<int64_t>{1});
    std::vector<int8_t> codes(size_t(e.numel));
    std::vector<float> wq(size_t(e.numel));
    const float a = quant::ternary_absmean(e.var.data(), e.numel, wq.data(), codes.data());
    float stored;
    std::memcpy(&stored, s->bytes.data(), 4);
    EXPECT_EQ(stored, a) << sname;
    EXPECT_EQ(trainers::formats::unpack_ternary(b->bytes.data(), o, in), codes) << e.name;
    // transformers' offline AutoBitLinear: F.linear(x, codes) * weight_scale == x · Wq up to
    // rounding
    for (int64_t i = 0; i < e.numel; ++i)
      ASSERT_NEAR(codes[size_t(i)] * stored, wq[size_t(i)], 1e-6f * a);
  }
  EXPECT_EQ(packed, 2 * 7);
}

// ---- reference logits and the independent Python reader -------------------------------------

TEST(Export, ReferenceLogitsAreTheW158A8Forward) {
  const auto tm = trainers::formats::load_trained_model(make_model("ref").string());
  const auto toks = trainers::formats::reference_tokens(tm, 12);
  ASSERT_EQ(toks.size(), 12u);
  EXPECT_EQ(toks[0], 1);  // BOS
  trainers::formats::write_reference_logits(tm, (g->dir / "ref_logits.safetensors").string(), toks);
  EXPECT_EQ(tm.model->mode(), nn::ActMode::A48);  // restored
  const auto f = autograd::read_safetensors((g->dir / "ref_logits.safetensors").string());
  tm.model->set_mode(nn::ActMode::W158A8);
  const auto want = tm.model->logits(toks, 1, 12).value();
  tm.model->set_mode(nn::ActMode::A48);
  const auto got = f.f32("logits.w158a8");
  ASSERT_EQ(got.shape().vec(), (std::vector<int64_t>{12, 400}));
  EXPECT_EQ(std::memcmp(got.data(), want.data(), size_t(want.numel()) * 4), 0);
  EXPECT_EQ(f.metadata.at("trained_mode"), "a4.8");
  EXPECT_NE(f.find("tokenizer.ids"), nullptr);
}

TEST(Export, IndependentPythonReaderAgrees) {
  if (std::system("/usr/bin/python3 -c 'import numpy' >/dev/null 2>&1") != 0)
    GTEST_SKIP() << "no numpy";
  for (bool tied : {true, false}) {
    const std::string tag = tied ? "py_tied" : "py_untied";
    const auto tm = trainers::formats::load_trained_model(
        make_model(tag, {tied ? "model.tie_embeddings=true" : "model.tie_embeddings=false"})
            .string());
    const fs::path d = g->dir / tag;
    trainers::formats::export_model(tm, (d / "hf").string(), fmt(ExportFormat::HF));
    trainers::formats::export_model(tm, (d / "hf_off").string(), fmt(ExportFormat::HFOffline));
    ExportOptions o = fmt(ExportFormat::GGUF);
    o.target = "bitnet.cpp";  // the target that can carry an untied `output`
    o.allow_untied_output = !tied;
    trainers::formats::export_model(tm, (d / "m.gguf").string(), o);
    o.f16 = true;
    trainers::formats::export_model(tm, (d / "m16.gguf").string(), o);
    // the reference: latent weights by HF name + the shape, written independently of the exporter
    std::vector<autograd::NamedBlob> blobs;
    for (const auto& e : tm.model->params().entries())
      blobs.push_back(autograd::blob_f32(e.name, e.var.value()));
    const auto& c = tm.model->config();
    autograd::write_safetensors((d / "latent.safetensors").string(), blobs,
                                {{"format", "pt"},
                                 {"vocab_size", std::to_string(c.vocab_size)},
                                 {"d_model", std::to_string(c.d_model)},
                                 {"n_layers", std::to_string(c.n_layers)},
                                 {"n_heads", std::to_string(c.n_heads)},
                                 {"n_kv_heads", std::to_string(c.kv_heads())},
                                 {"ffn_dim", std::to_string(c.ffn_dim)},
                                 {"tie_embeddings", tied ? "true" : "false"},
                                 {"rope_theta", "10000"},
                                 {"norm_eps", "1e-05"},
                                 {"context_length", "48"}});
    const std::string cmd =
        "/usr/bin/python3 " + std::string(BITNET_SOURCE_DIR) +
        "/tests/reference/read_exports.py --reference " + (d / "latent.safetensors").string() +
        " --hf " + (d / "hf").string() + " --hf-offline " + (d / "hf_off").string() + " --gguf " +
        (d / "m.gguf").string() + " --gguf-f16 " + (d / "m16.gguf").string() + " --tokenizer " +
        (g->dir / "tok.model").string() + " > " + (d / "py.log").string() + " 2>&1";
    const int rc = std::system(cmd.c_str());
    EXPECT_EQ(rc, 0) << tag << ":\n" << read_bytes(d / "py.log");
    std::printf("%s", read_bytes(d / "py.log").c_str());
    // With torch: tools/check_hf.py --emulate runs the transformers BitNet forward (transcribed in
    // plain torch) on both HF exports and compares with the C++ w158a8 logits.
    if (std::system("/usr/bin/python3 -c 'import torch' >/dev/null 2>&1") == 0) {
      trainers::formats::write_reference_logits(tm, (d / "ref.safetensors").string(),
                                                trainers::formats::reference_tokens(tm, 16));
      const std::string emu =
          "/usr/bin/python3 " + std::string(BITNET_SOURCE_DIR) + "/tools/check_hf.py --emulate" +
          " --reference " + (d / "ref.safetensors").string() + " --online " + (d / "hf").string() +
          " --offline " + (d / "hf_off").string() + " > " + (d / "emu.log").string() + " 2>&1";
      EXPECT_EQ(std::system(emu.c_str()), 0) << read_bytes(d / "emu.log");
      std::printf("%s", read_bytes(d / "emu.log").c_str());
    }
  }
  // The reader must notice a corrupted byte: one packed weight byte, then one GGUF data byte.
  const fs::path d = g->dir / "py_tied";
  auto flip_last = [](const fs::path& p, size_t from_end) {
    std::fstream f(p, std::ios::in | std::ios::out | std::ios::binary);
    f.seekg(-std::streamoff(from_end), std::ios::end);
    char c = 0;
    f.read(&c, 1);
    c = char(c ^ 0x01);
    f.seekp(-std::streamoff(from_end), std::ios::end);
    f.write(&c, 1);
  };
  const std::string reader =
      "/usr/bin/python3 " + std::string(BITNET_SOURCE_DIR) + "/tests/reference/read_exports.py";
  // the offline file ends with model.norm.weight (F32 [32]) after the last packed weight + scale
  flip_last(d / "hf_off/model.safetensors", 32 * 4 + 4 + 10);
  EXPECT_NE(std::system((reader + " --reference " + (d / "latent.safetensors").string() +
                         " --hf-offline " + (d / "hf_off").string() + " > /dev/null 2>&1")
                            .c_str()),
            0);
  flip_last(d / "m.gguf", 5);
  EXPECT_NE(std::system((reader + " --reference " + (d / "latent.safetensors").string() +
                         " --gguf " + (d / "m.gguf").string() + " > /dev/null 2>&1")
                            .c_str()),
            0);
}

TEST(Export, CliRefusesWithTheReason) {
  const fs::path bin = fs::path(BITNET_BINARY_DIR) / "trainers/bitnet";
  if (!fs::exists(bin)) GTEST_SKIP() << "bitnet binary not built";
  const fs::path model = make_model("cli");
  const fs::path log = g->dir / "cli.log";
  const std::string base = bin.string() + " export " + model.string();
  // d_model 32: rows too short for TQ2_0's 256-element blocks
  int rc = std::system((base + " --format gguf --type tq2_0 --out " +
                        (g->dir / "cli.gguf").string() + " > " + log.string() + " 2>&1")
                           .c_str());
  EXPECT_NE(rc, 0);
  EXPECT_NE(read_bytes(log).find("multiples of 256); export with --type f16 or f32"),
            std::string::npos)
      << read_bytes(log);
  EXPECT_FALSE(fs::exists(g->dir / "cli.gguf"));
  // the default target (llama.cpp) takes the ReLU² model and says what the runtime reads
  rc = std::system((base + " --format gguf --f16 --out " + (g->dir / "cli.gguf").string() + " > " +
                    log.string() + " 2>&1")
                       .c_str());
  EXPECT_EQ(rc, 0) << read_bytes(log);
  EXPECT_NE(read_bytes(log).find("bitnet.hidden_activation = relu2"), std::string::npos)
      << read_bytes(log);
  rc = std::system((base + " --format hf-offline --out " + (g->dir / "cli_hf").string() +
                    " --reference " + (g->dir / "cli_ref.safetensors").string() + " > " +
                    log.string() + " 2>&1")
                       .c_str());
  EXPECT_EQ(rc, 0) << read_bytes(log);
  EXPECT_TRUE(fs::exists(g->dir / "cli_hf/model.safetensors"));
  EXPECT_TRUE(fs::exists(g->dir / "cli_ref.safetensors"));
}
