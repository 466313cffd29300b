// GGUF exports: f16 rounding, metadata, tensors and data, refused targets, vocabulary padding.
#include "tests/trainers/formats/export_helpers.h"

namespace {

// ---- a compact GGUF reader for the C++-side checks (the Python reader is the thorough one) ----
struct GgufTensor {
  std::vector<uint64_t> ne;
  uint32_t type;
  uint64_t offset;
};
struct Gguf {
  uint32_t version = 0;
  std::map<std::string, uint32_t> kv_type;  // key -> value type (arrays: 9)
  std::map<std::string, std::string> strings;
  std::map<std::string, uint64_t> ints;
  std::map<std::string, float> floats;
  std::map<std::string, std::vector<std::string>> str_arrays;
  std::vector<std::string> order;  // tensor names in info order
  std::map<std::string, GgufTensor> tensors;
  uint64_t data_start = 0;
  std::string bytes;
};

Gguf read_gguf(const fs::path& p) {
  Gguf g;
  g.bytes = read_bytes(p);
  size_t pos = 0;
  auto take = [&](auto& v) {
    if (pos + sizeof(v) > g.bytes.size()) throw std::runtime_error("gguf: truncated");
    std::memcpy(&v, g.bytes.data() + pos, sizeof(v));
    pos += sizeof(v);
  };
  auto str = [&]() {
    uint64_t n = 0;
    take(n);
    if (pos + n > g.bytes.size()) throw std::runtime_error("gguf: truncated string");
    std::string s = g.bytes.substr(pos, n);
    pos += n;
    return s;
  };
  if (g.bytes.compare(0, 4, "GGUF") != 0) throw std::runtime_error("gguf: bad magic");
  pos = 4;
  take(g.version);
  uint64_t nt = 0, nkv = 0;
  take(nt);
  take(nkv);
  std::function<void(uint32_t, const std::string&, bool)> value =
      [&](uint32_t t, const std::string& k, bool keep) {
        switch (t) {
          case 4: {
            uint32_t v;
            take(v);
            if (keep) g.ints[k] = v;
            break;
          }
          case 5: {
            int32_t v;
            take(v);
            if (keep) g.ints[k] = uint64_t(int64_t(v));
            break;
          }
          case 6: {
            float v;
            take(v);
            if (keep) g.floats[k] = v;
            break;
          }
          case 7: {
            uint8_t v;
            take(v);
            if (keep) g.ints[k] = v;
            break;
          }
          case 8: {
            std::string s = str();
            if (keep) g.strings[k] = s;
            break;
          }
          case 9: {
            uint32_t et;
            uint64_t n;
            take(et);
            take(n);
            for (uint64_t i = 0; i < n; ++i) {
              if (et == 8)
                g.str_arrays[k].push_back(str());
              else
                value(et, k, false);
            }
            break;
          }
          default:
            throw std::runtime_error("gguf: unexpected value type " + std::to_string(t));
        }
      };
  for (uint64_t i = 0; i < nkv; ++i) {
    const std::string k = str();
    uint32_t t;
    take(t);
    g.kv_type[k] = t;
    value(t, k, true);
  }
  for (uint64_t i = 0; i < nt; ++i) {
    const std::string name = str();
    uint32_t nd;
    take(nd);
    GgufTensor t;
    t.ne.resize(nd);
    for (auto& d : t.ne) take(d);
    take(t.type);
    take(t.offset);
    g.order.push_back(name);
    g.tensors[name] = t;
  }
  const uint64_t al = g.ints.count("general.alignment") ? g.ints["general.alignment"] : 32;
  g.data_start = (pos + al - 1) / al * al;
  return g;
}

const float* gguf_f32(const Gguf& g, const std::string& name) {
  return reinterpret_cast<const float*>(g.bytes.data() + g.data_start + g.tensors.at(name).offset);
}

}  // namespace

TEST(Gguf, F16ConversionRoundsToNearestEven) {
  using trainers::formats::gguf::f32_to_f16;
  EXPECT_EQ(f32_to_f16(1.0f), 0x3c00);
  EXPECT_EQ(f32_to_f16(-2.0f), 0xc000);
  EXPECT_EQ(f32_to_f16(0.1f), 0x2e66);
  EXPECT_EQ(f32_to_f16(65504.0f), 0x7bff);
  EXPECT_EQ(f32_to_f16(65520.0f), 0x7c00);                      // halfway to the next binade: inf
  EXPECT_EQ(f32_to_f16(std::ldexp(1.0f, -24)), 0x0001);         // smallest subnormal
  EXPECT_EQ(f32_to_f16(std::ldexp(1.0f, -25)), 0x0000);         // tie to even (0)
  EXPECT_EQ(f32_to_f16(std::ldexp(3.0f, -25)), 0x0002);         // 1.5 units -> 2
  EXPECT_EQ(f32_to_f16(1.0f + std::ldexp(1.0f, -11)), 0x3c00);  // tie -> even mantissa
  EXPECT_EQ(f32_to_f16(1.0f + std::ldexp(3.0f, -11)), 0x3c02);
  for (uint32_t h = 0; h < 0x10000; ++h) {
    if ((h & 0x7c00) == 0x7c00 && (h & 0x3ff)) continue;  // NaN payloads
    ASSERT_EQ(f32_to_f16(trainers::formats::gguf::f16_to_f32(uint16_t(h))), h) << h;
  }
}

// ---- GGUF -----------------------------------------------------------------------------------

TEST(Export, GgufMetadataTensorsAndData) {
  const auto tm = trainers::formats::load_trained_model(make_model("gguf").string());
  const fs::path out = g->dir / "m.gguf";
  ExportOptions o = fmt(ExportFormat::GGUF);
  o.name = "tiny";
  o.target = "bitnet.cpp";
  trainers::formats::export_model(tm, out.string(), o);
  const Gguf f = read_gguf(out);
  EXPECT_EQ(f.version, 3u);
  EXPECT_EQ(f.strings.at("general.architecture"), "bitnet-b1.58");
  EXPECT_EQ(f.strings.at("bitnet-b1.58.hidden_activation"), "relu2");
  EXPECT_EQ(f.strings.at("general.name"), "tiny");
  const std::string A = "bitnet-b1.58.";
  for (const char* k :
       {"general.alignment", "bitnet-b1.58.context_length", "bitnet-b1.58.embedding_length",
        "bitnet-b1.58.block_count", "bitnet-b1.58.feed_forward_length",
        "bitnet-b1.58.attention.head_count", "bitnet-b1.58.attention.head_count_kv",
        "bitnet-b1.58.vocab_size", "tokenizer.ggml.bos_token_id", "tokenizer.ggml.eos_token_id",
        "tokenizer.ggml.unknown_token_id"})
    EXPECT_EQ(f.kv_type.at(k), 4u) << k << " must be u32";
  for (const char* k :
       {"bitnet-b1.58.rope.freq_base", "bitnet-b1.58.attention.layer_norm_rms_epsilon"})
    EXPECT_EQ(f.kv_type.at(k), 6u) << k << " must be f32";
  EXPECT_EQ(f.ints.at("general.alignment"), 32u);
  EXPECT_EQ(f.ints.at(A + "context_length"), 48u);
  EXPECT_EQ(f.ints.at(A + "embedding_length"), 32u);
  EXPECT_EQ(f.ints.at(A + "block_count"), 2u);
  EXPECT_EQ(f.ints.at(A + "feed_forward_length"), 64u);
  EXPECT_EQ(f.ints.at(A + "attention.head_count"), 4u);
  EXPECT_EQ(f.ints.at(A + "attention.head_count_kv"), 2u);
  EXPECT_EQ(f.floats.at(A + "rope.freq_base"), 10000.0f);
  EXPECT_EQ(f.floats.at(A + "attention.layer_norm_rms_epsilon"), 1e-5f);
  EXPECT_EQ(f.strings.at("tokenizer.ggml.model"), "llama");
  const data::Tokenizer tok = data::Tokenizer::from_serialized(g->proto);
  ASSERT_EQ(f.str_arrays.at("tokenizer.ggml.tokens").size(), 400u);
  for (int id = 0; id < 400; id += 37)
    EXPECT_EQ(f.str_arrays.at("tokenizer.ggml.tokens")[size_t(id)], tok.piece(id));
  EXPECT_EQ(f.ints.at("tokenizer.ggml.bos_token_id"), 1u);

  // tensors: 3 + 11 per layer, no `output` (tied); ne innermost first; aligned offsets in order
  EXPECT_EQ(f.order.size(), 2u + 11u * 2u);
  EXPECT_EQ(f.tensors.count("output.weight"), 0u);
  EXPECT_EQ(f.order.front(), "token_embd.weight");
  uint64_t prev_end = 0;
  for (const auto& n : f.order) {
    const auto& t = f.tensors.at(n);
    EXPECT_EQ(t.offset % 32, 0u) << n;
    EXPECT_GE(t.offset, prev_end) << n;
    uint64_t numel = 1;
    for (auto d : t.ne) numel *= d;
    prev_end = t.offset + numel * 4;
    EXPECT_EQ(t.type, 0u) << n;
  }
  EXPECT_LE(f.data_start + prev_end, f.bytes.size());
  const auto& q = f.tensors.at("blk.1.attn_k.weight");
  EXPECT_EQ(q.ne, (std::vector<uint64_t>{32, 16}));  // k_proj [16, 32]: ne = {in, out}
  for (const auto& e : tm.model->params().entries()) {
    const std::string n = trainers::formats::gguf_tensor_name(e.name);
    ASSERT_TRUE(f.tensors.count(n)) << n;
    const float* d = gguf_f32(f, n);
    if (trainers::formats::is_bitlinear_weight(e.name)) {
      std::vector<float> wq(size_t(e.numel));
      quant::ternary_absmean(e.var.data(), e.numel, wq.data(), nullptr);
      EXPECT_EQ(std::memcmp(d, wq.data(), wq.size() * 4), 0) << n;
    } else {
      EXPECT_EQ(std::memcmp(d, e.var.data(), size_t(e.numel) * 4), 0) << n;
    }
  }
}

TEST(Export, GgufF16StoresRoundedTernaryValues) {
  const auto tm = trainers::formats::load_trained_model(make_model("gguf16").string());
  ExportOptions o = fmt(ExportFormat::GGUF);
  o.f16 = true;  // the old spelling of --type f16
  trainers::formats::export_model(tm, (g->dir / "m16.gguf").string(), o);
  const Gguf f = read_gguf(g->dir / "m16.gguf");
  EXPECT_EQ(f.ints.at("general.file_type"), 1u);
  const auto& e = tm.model->params().at("model.layers.0.mlp.down_proj.weight");
  const auto& t = f.tensors.at("blk.0.ffn_down.weight");
  EXPECT_EQ(t.type, 1u);
  EXPECT_EQ(f.tensors.at("token_embd.weight").type, 0u);  // embeddings and norms stay F32
  EXPECT_EQ(f.tensors.at("blk.0.ffn_sub_norm.weight").type, 0u);
  std::vector<float> wq(size_t(e.numel));
  quant::ternary_absmean(e.var.data(), e.numel, wq.data(), nullptr);
  const auto* h = reinterpret_cast<const uint16_t*>(f.bytes.data() + f.data_start + t.offset);
  for (int64_t i = 0; i < e.numel; ++i)
    ASSERT_EQ(h[i], trainers::formats::gguf::f32_to_f16(wq[size_t(i)])) << i;
}

// ---- refusals -------------------------------------------------------------------------------

TEST(Export, GgufTargetsByRuntime) {
  // default target llama.cpp: arch bitnet + the FFN activation key, ReLU² with a note
  const auto tied = trainers::formats::load_trained_model(make_model("t_tied").string());
  auto r =
      trainers::formats::export_model(tied, (g->dir / "t.gguf").string(), fmt(ExportFormat::GGUF));
  Gguf f = read_gguf(g->dir / "t.gguf");
  EXPECT_EQ(f.strings.at("general.architecture"), "bitnet");
  EXPECT_EQ(f.strings.at("bitnet.hidden_activation"), "relu2");
  EXPECT_EQ(f.kv_type.at("bitnet.feed_forward_length"), 4u);
  EXPECT_EQ(f.ints.at("bitnet.embedding_length"), 32u);
  ASSERT_EQ(r.warnings.size(), 1u);
  EXPECT_NE(r.warnings[0].find("ignore the key and compute SiLU"), std::string::npos);
  const auto swi =
      trainers::formats::load_trained_model(make_model("t_swi", {"model.glu=swiglu"}).string());
  r = trainers::formats::export_model(swi, (g->dir / "s.gguf").string(), fmt(ExportFormat::GGUF));
  EXPECT_TRUE(r.warnings.empty());
  EXPECT_EQ(read_gguf(g->dir / "s.gguf").strings.at("bitnet.hidden_activation"), "silu");
  // the deprecated --arch maps to the target and says so
  ExportOptions o = fmt(ExportFormat::GGUF);
  o.arch = "bitnet-b1.58";
  r = trainers::formats::export_model(tied, (g->dir / "a.gguf").string(), o);
  EXPECT_EQ(read_gguf(g->dir / "a.gguf").strings.at("general.architecture"), "bitnet-b1.58");
  ASSERT_FALSE(r.warnings.empty());
  EXPECT_NE(r.warnings[0].find("use --target bitnet.cpp"), std::string::npos) << r.warnings[0];
  o.arch = "bitnet";
  EXPECT_EQ(trainers::formats::gguf_plan(o).arch, "bitnet");
  EXPECT_EQ(trainers::formats::gguf_plan(o).target, "llama.cpp");
}

TEST(Export, RefusesTargetsThatCannotComputeTheModel) {
  const auto tied = trainers::formats::load_trained_model(make_model("r_tied").string());
  ExportOptions o = fmt(ExportFormat::GGUF);
  o.arch = "llama";
  std::string m =
      error_of([&] { trainers::formats::export_model(tied, (g->dir / "x.gguf").string(), o); });
  EXPECT_NE(m.find("unknown --arch 'llama'"), std::string::npos) << m;
  EXPECT_NE(m.find("--target llama.cpp"), std::string::npos) << m;
  o = fmt(ExportFormat::GGUF);
  o.target = "ollama";
  m = error_of([&] { trainers::formats::export_model(tied, (g->dir / "x.gguf").string(), o); });
  EXPECT_NE(m.find("unknown --target 'ollama' (llama.cpp or bitnet.cpp)"), std::string::npos) << m;
  o = fmt(ExportFormat::GGUF);
  o.type = "q4_0";
  m = error_of([&] { trainers::formats::export_model(tied, (g->dir / "x.gguf").string(), o); });
  EXPECT_NE(m.find("unknown --type 'q4_0' (f32, f16, tq2_0, tq1_0)"), std::string::npos) << m;
  o.type = "tq1_0";
  o.f16 = true;
  m = error_of([&] { trainers::formats::export_model(tied, (g->dir / "x.gguf").string(), o); });
  EXPECT_NE(m.find("--f16 (= --type f16) contradicts --type tq1_0"), std::string::npos) << m;
  EXPECT_FALSE(fs::exists(g->dir / "x.gguf"));

  // SwiGLU: bitnet-b1.58 hard-codes ReLU², the message names the target that computes it
  const auto swi =
      trainers::formats::load_trained_model(make_model("r_swi", {"model.glu=swiglu"}).string());
  o = fmt(ExportFormat::GGUF);
  o.target = "bitnet.cpp";
  m = error_of([&] { trainers::formats::export_model(swi, (g->dir / "x.gguf").string(), o); });
  EXPECT_NE(m.find("hard-codes ReLU"), std::string::npos) << m;
  EXPECT_NE(m.find("use --target llama.cpp"), std::string::npos) << m;
  EXPECT_FALSE(fs::exists(g->dir / "x.gguf"));
  trainers::formats::export_model(swi, (g->dir / "swi_hf").string(), fmt(ExportFormat::HF));
  EXPECT_EQ(read_json(g->dir / "swi_hf/config.json")["hidden_act"], "silu");

  // untied: both runtimes compute the logits with token_embd
  const auto untied = trainers::formats::load_trained_model(
      make_model("r_untied", {"model.tie_embeddings=false"}).string());
  m = error_of([&] {
    trainers::formats::export_model(untied, (g->dir / "u.gguf").string(), fmt(ExportFormat::GGUF));
  });
  EXPECT_NE(m.find("--target llama.cpp (arch 'bitnet') computes the logits with token_embd"),
            std::string::npos)
      << m;
  EXPECT_NE(m.find("model.tie_embeddings=true"), std::string::npos) << m;
  EXPECT_NE(m.find("--format hf"), std::string::npos) << m;
  o = fmt(ExportFormat::GGUF);
  o.allow_untied_output = true;
  m = error_of([&] { trainers::formats::export_model(untied, (g->dir / "u.gguf").string(), o); });
  EXPECT_NE(m.find("untied"), std::string::npos) << m;
  o.target = "bitnet.cpp";
  o.allow_untied_output = false;
  m = error_of([&] { trainers::formats::export_model(untied, (g->dir / "u.gguf").string(), o); });
  EXPECT_NE(m.find("token_embd"), std::string::npos) << m;
  EXPECT_NE(m.find("--allow-untied-output"), std::string::npos) << m;
  EXPECT_FALSE(fs::exists(g->dir / "u.gguf"));
  o.allow_untied_output = true;
  const auto r = trainers::formats::export_model(untied, (g->dir / "u.gguf").string(), o);
  EXPECT_EQ(read_gguf(g->dir / "u.gguf").tensors.count("output.weight"), 1u);
  EXPECT_FALSE(r.warnings.empty());

  // TQ2_0 / TQ1_0 need rows of whole 256-element blocks (d_model 32 here)
  for (const char* t : {"tq2_0", "tq1_0"}) {
    o = fmt(ExportFormat::GGUF);
    o.type = t;
    m = error_of([&] { trainers::formats::export_model(tied, (g->dir / "q.gguf").string(), o); });
    EXPECT_NE(m.find(std::string("--type ") + t +
                     " packs rows in 256-element blocks but "
                     "model.layers.0.self_attn.q_proj.weight has rows of 32"),
              std::string::npos)
        << m;
    EXPECT_NE(m.find("export with --type f16 or f32"), std::string::npos) << m;
    EXPECT_FALSE(fs::exists(g->dir / "q.gguf"));
  }

  // no tokenizer: GGUF refused, HF written without tokenizer files
  const auto notok =
      trainers::formats::load_trained_model(make_model("r_notok", {}, false).string());
  m = error_of([&] {
    trainers::formats::export_model(notok, (g->dir / "n.gguf").string(), fmt(ExportFormat::GGUF));
  });
  EXPECT_NE(m.find("no tokenizer"), std::string::npos) << m;
  const auto rn =
      trainers::formats::export_model(notok, (g->dir / "n_hf").string(), fmt(ExportFormat::HF));
  EXPECT_FALSE(fs::exists(g->dir / "n_hf/tokenizer.model"));
  EXPECT_TRUE(read_json(g->dir / "n_hf/config.json")["bos_token_id"].is_null());
  EXPECT_NE(rn.warnings.front().find("no tokenizer"), std::string::npos);

  // offline layout needs out % 4 == 0: k_proj of 1 KV head x head_dim 6 has 6 rows
  const auto odd = trainers::formats::load_trained_model(
      make_model("r_odd", {"model.d_model=36", "model.n_heads=6", "model.n_kv_heads=1"}).string());
  m = error_of([&] {
    trainers::formats::export_model(odd, (g->dir / "odd").string(), fmt(ExportFormat::HFOffline));
  });
  EXPECT_NE(m.find("model.layers.0.self_attn.k_proj.weight has 6 output rows, not divisible by 4"),
            std::string::npos)
      << m;
  EXPECT_FALSE(fs::exists(g->dir / "odd/model.safetensors"));
  EXPECT_NO_THROW(trainers::formats::export_model(odd, (g->dir / "odd_online").string(),
                                                  fmt(ExportFormat::HF)));

  // a tokenizer larger than the model's vocabulary
  const auto small = trainers::formats::load_trained_model(
      make_model("r_small", {"model.vocab_size=300"}).string());
  m = error_of([&] {
    trainers::formats::export_model(small, (g->dir / "s.gguf").string(), fmt(ExportFormat::GGUF));
  });
  EXPECT_NE(m.find("the tokenizer has 400 pieces but the model's vocab_size is 300"),
            std::string::npos)
      << m;

  EXPECT_NE(error_of([] {
              trainers::formats::parse_export_format("onnx");
            }).find("unknown format 'onnx'"),
            std::string::npos);
}

TEST(Export, GgufPadsVocabularyBeyondTheTokenizer) {
  const auto big =
      trainers::formats::load_trained_model(make_model("big", {"model.vocab_size=410"}).string());
  trainers::formats::export_model(big, (g->dir / "big.gguf").string(), fmt(ExportFormat::GGUF));
  const Gguf f = read_gguf(g->dir / "big.gguf");
  ASSERT_EQ(f.str_arrays.at("tokenizer.ggml.tokens").size(), 410u);
  EXPECT_EQ(f.str_arrays.at("tokenizer.ggml.tokens")[405], "[PAD405]");
}

// ---- TQ2_0 / TQ1_0 ------------------------------------------------------------------------------

namespace {

// Independent dequantizers, transcribed from ggml's reference decoders (ggml-quants.c,
// dequantize_row_tq2_0 / dequantize_row_tq1_0): they walk the bytes in ggml's output order.
std::vector<float> dequant_tq2_0(const uint8_t* p, int64_t n) {
  std::vector<float> y;
  for (int64_t b = 0; b < n / 256; ++b, p += 66) {
    uint16_t dh;
    std::memcpy(&dh, p + 64, 2);
    const float d = trainers::formats::gguf::f16_to_f32(dh);
    for (int j = 0; j < 64; j += 32)  // qs in two halves of 32 bytes
      for (int shift = 0; shift < 8; shift += 2)
        for (int m = 0; m < 32; ++m) y.push_back(float(((p[j + m] >> shift) & 3) - 1) * d);
  }
  return y;
}

std::vector<float> dequant_tq1_0(const uint8_t* p, int64_t n) {
  auto trit = [](uint8_t q, int i) {  // i-th trit: (q·3^i mod 256)·3 >> 8
    uint8_t x = q;
    for (int k = 0; k < i; ++k) x = uint8_t(x * 3);
    return int((uint16_t(x) * 3) >> 8);
  };
  std::vector<float> y;
  for (int64_t b = 0; b < n / 256; ++b, p += 54) {
    uint16_t dh;
    std::memcpy(&dh, p + 52, 2);
    const float d = trainers::formats::gguf::f16_to_f32(dh);
    for (int i = 0; i < 5; ++i)
      for (int m = 0; m < 32; ++m) y.push_back(float(trit(p[m], i) - 1) * d);
    for (int i = 0; i < 5; ++i)
      for (int m = 0; m < 16; ++m) y.push_back(float(trit(p[32 + m], i) - 1) * d);
    for (int i = 0; i < 4; ++i)
      for (int j = 0; j < 4; ++j) y.push_back(float(trit(p[48 + j], i) - 1) * d);
  }
  return y;
}

}  // namespace

TEST(Gguf, TernaryBlocksMatchGgmlDecoding) {
  // every code pattern position: codes drawn at random, plus all-equal blocks
  autograd::Rng r(3);
  std::vector<int8_t> c(256 * 5);
  for (size_t i = 0; i < c.size(); ++i) c[i] = int8_t(int(r.below(3)) - 1);
  for (int i = 0; i < 256; ++i) c[size_t(256 * 3 + i)] = 1, c[size_t(256 * 4 + i)] = -1;
  const float d = 0.0375f;
  const float dq = trainers::formats::gguf::f16_to_f32(trainers::formats::gguf::f32_to_f16(d));
  const auto b2 = trainers::formats::gguf::pack_tq2_0(c.data(), int64_t(c.size()), d);
  const auto b1 = trainers::formats::gguf::pack_tq1_0(c.data(), int64_t(c.size()), d);
  ASSERT_EQ(b2.size(), 5u * 66u);
  ASSERT_EQ(b1.size(), 5u * 54u);
  const auto y2 = dequant_tq2_0(b2.data(), int64_t(c.size()));
  const auto y1 = dequant_tq1_0(b1.data(), int64_t(c.size()));
  for (size_t i = 0; i < c.size(); ++i) {
    ASSERT_EQ(y2[i], float(c[i]) * dq) << "tq2_0 element " << i;
    ASSERT_EQ(y1[i], float(c[i]) * dq) << "tq1_0 element " << i;
  }
  // misuse names the problem
  EXPECT_NE(error_of([&] {
              trainers::formats::gguf::pack_tq2_0(c.data(), 100, d);
            }).find("not a whole number of 256-element blocks"),
            std::string::npos);
  c[7] = 2;
  EXPECT_NE(error_of([&] {
              trainers::formats::gguf::pack_tq1_0(c.data(), 256, d);
            }).find("code 2 at 7 is not ternary"),
            std::string::npos);
}

TEST(Export, GgufTernaryTypesHoldTheWeights) {
  // d_model 256, ffn 512: every BitLinear row is a whole number of blocks
  const auto tm = trainers::formats::load_trained_model(
      make_model("tq", {"model.d_model=256", "model.ffn_dim=512", "model.n_layers=1"}).string());
  for (const char* type : {"tq2_0", "tq1_0"}) {
    const bool two = std::string(type) == "tq2_0";
    ExportOptions o = fmt(ExportFormat::GGUF);
    o.type = type;
    o.embedding_type = "f16";
    const fs::path out = g->dir / (std::string(type) + ".gguf");
    trainers::formats::export_model(tm, out.string(), o);
    const Gguf f = read_gguf(out);
    EXPECT_EQ(f.ints.at("general.file_type"), two ? 37u : 36u);
    EXPECT_EQ(f.tensors.at("token_embd.weight").type, 1u);  // --embedding-type f16
    EXPECT_EQ(f.tensors.at("blk.0.ffn_norm.weight").type, 0u);
    int checked = 0;
    for (const auto& e : tm.model->params().entries()) {
      const std::string n = trainers::formats::gguf_tensor_name(e.name);
      const auto& t = f.tensors.at(n);
      const auto* p = reinterpret_cast<const uint8_t*>(f.bytes.data() + f.data_start + t.offset);
      if (n == "token_embd.weight") {
        const auto* h = reinterpret_cast<const uint16_t*>(p);
        for (int64_t i = 0; i < e.numel; ++i)
          ASSERT_EQ(h[i], trainers::formats::gguf::f32_to_f16(e.var.data()[i])) << i;
        continue;
      }
      if (!trainers::formats::is_bitlinear_weight(e.name)) continue;
      EXPECT_EQ(t.type, two ? 35u : 34u) << n;
      std::vector<float> wq(size_t(e.numel));
      const float a = quant::ternary_absmean(e.var.data(), e.numel, wq.data(), nullptr);
      const std::vector<float> y = two ? dequant_tq2_0(p, e.numel) : dequant_tq1_0(p, e.numel);
      ASSERT_EQ(y.size(), wq.size());
      // the float weights Wq = c·a up to the f16 rounding of the block scale d = a
      const float tol = a * std::ldexp(1.0f, -11);
      for (size_t i = 0; i < y.size(); ++i) {
        ASSERT_EQ(y[i] == 0.0f, wq[i] == 0.0f) << n << " " << i;
        ASSERT_EQ(std::signbit(y[i]) && y[i] != 0.0f, wq[i] < 0.0f) << n << " " << i;
        ASSERT_NEAR(y[i], wq[i], tol) << n << " " << i;
      }
      ++checked;
    }
    EXPECT_EQ(checked, 7);
  }
}
