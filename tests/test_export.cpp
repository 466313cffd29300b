// Exports: HF online/offline safetensors + configs, GGUF v3 for bitnet.cpp, packing, refusals,
// reference logits; an independent Python reader (tests/reference/read_exports.py) checks all.
#include <gtest/gtest.h>

#include <unistd.h>

#include <cctype>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <nlohmann/json.hpp>

#include "autograd/random.h"
#include "autograd/safetensors.h"
#include "data/tokenizer.h"
#include "quant/quantizers.h"
#include "trainers/config/config.h"
#include "trainers/formats/export.h"
#include "trainers/formats/gguf.h"
#include "trainers/formats/model_io.h"
#include "trainers/formats/trained_model.h"

namespace fs = std::filesystem;
using trainers::formats::ExportFormat;
using trainers::formats::ExportOptions;

namespace {

std::string read_bytes(const fs::path& p) {
  std::ifstream f(p, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>());
}

// Plain English-like text with digits and punctuation, one sentence per line.
void write_corpus(const fs::path& p, int lines, uint64_t seed) {
  static const char* words[] = {"the", "a", "model", "weights", "are", "ternary", "and", "activations", "use",
                                "four", "bits", "while", "training", "runs", "on", "many", "cpus", "quickly",
                                "of", "with", "quantized", "values", "sparse", "layer", "token", "batch"};
  autograd::Rng r(seed);
  std::ofstream f(p);
  for (int i = 0; i < lines; ++i) {
    const int n = 4 + int(r.below(10));
    for (int w = 0; w < n; ++w) {
      std::string s = words[r.below(sizeof words / sizeof *words)];
      if (w == 0) s[0] = char(std::toupper(s[0]));
      f << (w ? " " : "") << s;
      if (r.below(8) == 0) f << " " << r.below(1000);
    }
    f << (r.below(3) == 0 ? "!" : ".") << "\n";
  }
}

struct Shared {
  fs::path dir;
  std::string proto;
};
Shared* g = nullptr;

class Env : public ::testing::Environment {
 public:
  void SetUp() override {
    g = new Shared;
    g->dir = fs::temp_directory_path() / ("bitnet_export_" + std::to_string(::getpid()));
    fs::remove_all(g->dir);
    fs::create_directories(g->dir);
    write_corpus(g->dir / "corpus.txt", 600, 5);
    data::TokenizerTrainOptions o;
    o.vocab_size = 400;
    o.num_threads = 1;
    o.seed = 3;
    data::Tokenizer::train({(g->dir / "corpus.txt").string()}, (g->dir / "tok").string(), o);
    g->proto = read_bytes(g->dir / "tok.model");
  }
  void TearDown() override {
    fs::remove_all(g->dir);
    delete g;
  }
};
const auto* env = ::testing::AddGlobalTestEnvironment(new Env);

// A small model file as `bitnet train` writes it (config + mode + tokenizer embedded), with
// parameters drawn away from their init (norm gains != 1) so that every tensor is distinctive.
fs::path make_model(const std::string& tag, std::vector<std::string> sets = {}, bool tokenizer = true) {
  std::vector<std::string> base = {"model.vocab_size=400", "model.d_model=32", "model.n_layers=2", "model.n_heads=4",
                                   "model.n_kv_heads=2",   "model.ffn_dim=64",  "model.tie_embeddings=true",
                                   "data.seq_len=48"};
  base.insert(base.end(), sets.begin(), sets.end());
  const trainers::config::Config cfg = trainers::config::load_config(std::string(BITNET_SOURCE_DIR) + "/configs/tiny.yaml", base);
  nn::BitNetLM m(cfg.model, 7);
  autograd::Rng r(11);
  for (const auto& e : m.params().entries()) {
    float* p = e.var.data();
    for (int64_t i = 0; i < e.numel; ++i)
      p[i] = e.init == nn::Init::Ones ? float(1.0 + 0.2 * r.normal()) : float(0.05 * r.normal());
  }
  const fs::path path = g->dir / (tag + ".safetensors");
  trainers::formats::save_model(path.string(), m, nullptr,
                       {{"config", cfg.resolved_yaml}, {"step", "5"}, {"mode", "a4.8"}}, tokenizer ? g->proto : "");
  return path;
}

ExportOptions fmt(ExportFormat f) {
  ExportOptions o;
  o.format = f;
  return o;
}

template <class F>
std::string error_of(F&& f) {
  try {
    f();
  } catch (const std::exception& e) {
    return e.what();
  }
  return "(no error)";
}

nlohmann::json read_json(const fs::path& p) { return nlohmann::json::parse(read_bytes(p)); }

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
  std::function<void(uint32_t, const std::string&, bool)> value = [&](uint32_t t, const std::string& k, bool keep) {
    switch (t) {
      case 4: { uint32_t v; take(v); if (keep) g.ints[k] = v; break; }
      case 5: { int32_t v; take(v); if (keep) g.ints[k] = uint64_t(int64_t(v)); break; }
      case 6: { float v; take(v); if (keep) g.floats[k] = v; break; }
      case 7: { uint8_t v; take(v); if (keep) g.ints[k] = v; break; }
      case 8: { std::string s = str(); if (keep) g.strings[k] = s; break; }
      case 9: {
        uint32_t et; uint64_t n;
        take(et);
        take(n);
        for (uint64_t i = 0; i < n; ++i) {
          if (et == 8) g.str_arrays[k].push_back(str());
          else value(et, k, false);
        }
        break;
      }
      default: throw std::runtime_error("gguf: unexpected value type " + std::to_string(t));
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

// ---- packing --------------------------------------------------------------------------------

TEST(Pack, MatchesTransformersDocstringExample) {
  // transformers/integrations/bitnet.py, unpack_weights docstring: packed [2, 2] -> [8, 2].
  const uint8_t packed[] = {0b10100001, 0b00011000, 0b10010000, 0b00001010};
  const std::vector<int8_t> want = {0, -1, -1, 1, -1, 1, -1, 1, 1, 0, 0, -1, 1, -1, 1, -1};
  EXPECT_EQ(trainers::formats::unpack_ternary(packed, 8, 2), want);
  EXPECT_EQ(trainers::formats::pack_ternary(want.data(), 8, 2), std::vector<uint8_t>(packed, packed + 4));
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

TEST(Gguf, F16ConversionRoundsToNearestEven) {
  using trainers::formats::gguf::f32_to_f16;
  EXPECT_EQ(f32_to_f16(1.0f), 0x3c00);
  EXPECT_EQ(f32_to_f16(-2.0f), 0xc000);
  EXPECT_EQ(f32_to_f16(0.1f), 0x2e66);
  EXPECT_EQ(f32_to_f16(65504.0f), 0x7bff);
  EXPECT_EQ(f32_to_f16(65520.0f), 0x7c00);               // halfway to the next binade: inf
  EXPECT_EQ(f32_to_f16(std::ldexp(1.0f, -24)), 0x0001);  // smallest subnormal
  EXPECT_EQ(f32_to_f16(std::ldexp(1.0f, -25)), 0x0000);  // tie to even (0)
  EXPECT_EQ(f32_to_f16(std::ldexp(3.0f, -25)), 0x0002);  // 1.5 units -> 2
  EXPECT_EQ(f32_to_f16(1.0f + std::ldexp(1.0f, -11)), 0x3c00);  // tie -> even mantissa
  EXPECT_EQ(f32_to_f16(1.0f + std::ldexp(3.0f, -11)), 0x3c02);
  for (uint32_t h = 0; h < 0x10000; ++h) {
    if ((h & 0x7c00) == 0x7c00 && (h & 0x3ff)) continue;  // NaN payloads
    ASSERT_EQ(f32_to_f16(trainers::formats::gguf::f16_to_f32(uint16_t(h))), h) << h;
  }
}

// ---- Hugging Face ---------------------------------------------------------------------------

TEST(Export, HfOnlineWritesLatentWeightsConfigAndTokenizer) {
  const auto tm = trainers::formats::load_trained_model(make_model("hf").string());
  const fs::path out = g->dir / "hf";
  const auto r = trainers::formats::export_model(tm, out.string(), fmt(ExportFormat::HF));
  for (const char* f : {"config.json", "model.safetensors", "tokenizer.model", "tokenizer_config.json",
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
  const auto tm = trainers::formats::load_trained_model(make_model("hfoff", {"model.tie_embeddings=false"}).string());
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
    // transformers' offline AutoBitLinear: F.linear(x, codes) * weight_scale == x · Wq up to rounding
    for (int64_t i = 0; i < e.numel; ++i) ASSERT_NEAR(codes[size_t(i)] * stored, wq[size_t(i)], 1e-6f * a);
  }
  EXPECT_EQ(packed, 2 * 7);
}

// ---- GGUF -----------------------------------------------------------------------------------

TEST(Export, GgufMetadataTensorsAndData) {
  const auto tm = trainers::formats::load_trained_model(make_model("gguf").string());
  const fs::path out = g->dir / "m.gguf";
  ExportOptions o = fmt(ExportFormat::GGUF);
  o.name = "tiny";
  trainers::formats::export_model(tm, out.string(), o);
  const Gguf f = read_gguf(out);
  EXPECT_EQ(f.version, 3u);
  EXPECT_EQ(f.strings.at("general.architecture"), "bitnet-b1.58");
  EXPECT_EQ(f.strings.at("general.name"), "tiny");
  const std::string A = "bitnet-b1.58.";
  for (const char* k : {"general.alignment", "bitnet-b1.58.context_length", "bitnet-b1.58.embedding_length",
                        "bitnet-b1.58.block_count", "bitnet-b1.58.feed_forward_length",
                        "bitnet-b1.58.attention.head_count", "bitnet-b1.58.attention.head_count_kv",
                        "bitnet-b1.58.vocab_size", "tokenizer.ggml.bos_token_id", "tokenizer.ggml.eos_token_id",
                        "tokenizer.ggml.unknown_token_id"})
    EXPECT_EQ(f.kv_type.at(k), 4u) << k << " must be u32";
  for (const char* k : {"bitnet-b1.58.rope.freq_base", "bitnet-b1.58.attention.layer_norm_rms_epsilon"})
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
  for (int id = 0; id < 400; id += 37) EXPECT_EQ(f.str_arrays.at("tokenizer.ggml.tokens")[size_t(id)], tok.piece(id));
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
  o.f16 = true;
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
  for (int64_t i = 0; i < e.numel; ++i) ASSERT_EQ(h[i], trainers::formats::gguf::f32_to_f16(wq[size_t(i)])) << i;
}

// ---- refusals -------------------------------------------------------------------------------

TEST(Export, RefusesTargetsThatCannotComputeTheModel) {
  const auto tied = trainers::formats::load_trained_model(make_model("r_tied").string());
  ExportOptions o = fmt(ExportFormat::GGUF);
  o.arch = "bitnet";
  std::string m = error_of([&] { trainers::formats::export_model(tied, (g->dir / "x.gguf").string(), o); });
  EXPECT_NE(m.find("arch 'bitnet'"), std::string::npos) << m;
  EXPECT_NE(m.find("SiLU"), std::string::npos) << m;
  EXPECT_FALSE(fs::exists(g->dir / "x.gguf"));
  o.arch = "llama";
  m = error_of([&] { trainers::formats::export_model(tied, (g->dir / "x.gguf").string(), o); });
  EXPECT_NE(m.find("unknown --arch 'llama'"), std::string::npos) << m;

  // SwiGLU: bitnet-b1.58 hard-codes ReLU²; bitnet accepts a SwiGLU tied model
  const auto swi = trainers::formats::load_trained_model(make_model("r_swi", {"model.glu=swiglu"}).string());
  m = error_of([&] { trainers::formats::export_model(swi, (g->dir / "x.gguf").string(), fmt(ExportFormat::GGUF)); });
  EXPECT_NE(m.find("hard-codes ReLU"), std::string::npos) << m;
  o.arch = "bitnet";
  EXPECT_NO_THROW(trainers::formats::export_model(swi, (g->dir / "swi.gguf").string(), o));
  EXPECT_EQ(read_gguf(g->dir / "swi.gguf").strings.at("general.architecture"), "bitnet");
  trainers::formats::export_model(swi, (g->dir / "swi_hf").string(), fmt(ExportFormat::HF));
  EXPECT_EQ(read_json(g->dir / "swi_hf/config.json")["hidden_act"], "silu");

  // untied: bitnet.cpp's bitnet-b1.58 graph uses token_embd for the logits
  const auto untied = trainers::formats::load_trained_model(make_model("r_untied", {"model.tie_embeddings=false"}).string());
  m = error_of([&] { trainers::formats::export_model(untied, (g->dir / "u.gguf").string(), fmt(ExportFormat::GGUF)); });
  EXPECT_NE(m.find("token_embd"), std::string::npos) << m;
  EXPECT_NE(m.find("--allow-untied-output"), std::string::npos) << m;
  ExportOptions ou = fmt(ExportFormat::GGUF);
  ou.allow_untied_output = true;
  const auto r = trainers::formats::export_model(untied, (g->dir / "u.gguf").string(), ou);
  EXPECT_EQ(read_gguf(g->dir / "u.gguf").tensors.count("output.weight"), 1u);
  EXPECT_FALSE(r.warnings.empty());

  // no tokenizer: GGUF refused, HF written without tokenizer files
  const auto notok = trainers::formats::load_trained_model(make_model("r_notok", {}, false).string());
  m = error_of([&] { trainers::formats::export_model(notok, (g->dir / "n.gguf").string(), fmt(ExportFormat::GGUF)); });
  EXPECT_NE(m.find("no tokenizer"), std::string::npos) << m;
  const auto rn = trainers::formats::export_model(notok, (g->dir / "n_hf").string(), fmt(ExportFormat::HF));
  EXPECT_FALSE(fs::exists(g->dir / "n_hf/tokenizer.model"));
  EXPECT_TRUE(read_json(g->dir / "n_hf/config.json")["bos_token_id"].is_null());
  EXPECT_NE(rn.warnings.front().find("no tokenizer"), std::string::npos);

  // offline layout needs out % 4 == 0: k_proj of 1 KV head x head_dim 6 has 6 rows
  const auto odd = trainers::formats::load_trained_model(
      make_model("r_odd", {"model.d_model=36", "model.n_heads=6", "model.n_kv_heads=1"}).string());
  m = error_of([&] { trainers::formats::export_model(odd, (g->dir / "odd").string(), fmt(ExportFormat::HFOffline)); });
  EXPECT_NE(m.find("model.layers.0.self_attn.k_proj.weight has 6 output rows, not divisible by 4"), std::string::npos)
      << m;
  EXPECT_FALSE(fs::exists(g->dir / "odd/model.safetensors"));
  EXPECT_NO_THROW(trainers::formats::export_model(odd, (g->dir / "odd_online").string(), fmt(ExportFormat::HF)));

  // a tokenizer larger than the model's vocabulary
  const auto small = trainers::formats::load_trained_model(make_model("r_small", {"model.vocab_size=300"}).string());
  m = error_of([&] { trainers::formats::export_model(small, (g->dir / "s.gguf").string(), fmt(ExportFormat::GGUF)); });
  EXPECT_NE(m.find("the tokenizer has 400 pieces but the model's vocab_size is 300"), std::string::npos) << m;

  EXPECT_NE(error_of([] { trainers::formats::parse_export_format("onnx"); }).find("unknown format 'onnx'"), std::string::npos);
}

TEST(Export, GgufPadsVocabularyBeyondTheTokenizer) {
  const auto big = trainers::formats::load_trained_model(make_model("big", {"model.vocab_size=410"}).string());
  trainers::formats::export_model(big, (g->dir / "big.gguf").string(), fmt(ExportFormat::GGUF));
  const Gguf f = read_gguf(g->dir / "big.gguf");
  ASSERT_EQ(f.str_arrays.at("tokenizer.ggml.tokens").size(), 410u);
  EXPECT_EQ(f.str_arrays.at("tokenizer.ggml.tokens")[405], "[PAD405]");
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
  if (std::system("/usr/bin/python3 -c 'import numpy' >/dev/null 2>&1") != 0) GTEST_SKIP() << "no numpy";
  for (bool tied : {true, false}) {
    const std::string tag = tied ? "py_tied" : "py_untied";
    const auto tm = trainers::formats::load_trained_model(
        make_model(tag, {tied ? "model.tie_embeddings=true" : "model.tie_embeddings=false"}).string());
    const fs::path d = g->dir / tag;
    trainers::formats::export_model(tm, (d / "hf").string(), fmt(ExportFormat::HF));
    trainers::formats::export_model(tm, (d / "hf_off").string(), fmt(ExportFormat::HFOffline));
    ExportOptions o = fmt(ExportFormat::GGUF);
    o.allow_untied_output = !tied;
    trainers::formats::export_model(tm, (d / "m.gguf").string(), o);
    o.f16 = true;
    trainers::formats::export_model(tm, (d / "m16.gguf").string(), o);
    // the reference: latent weights by HF name + the shape, written independently of the exporter
    std::vector<autograd::NamedBlob> blobs;
    for (const auto& e : tm.model->params().entries()) blobs.push_back(autograd::blob_f32(e.name, e.var.value()));
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
    const std::string cmd = "/usr/bin/python3 " + std::string(BITNET_SOURCE_DIR) +
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
      trainers::formats::write_reference_logits(tm, (d / "ref.safetensors").string(), trainers::formats::reference_tokens(tm, 16));
      const std::string emu = "/usr/bin/python3 " + std::string(BITNET_SOURCE_DIR) + "/tools/check_hf.py --emulate" +
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
  const std::string reader = "/usr/bin/python3 " + std::string(BITNET_SOURCE_DIR) + "/tests/reference/read_exports.py";
  // the offline file ends with model.norm.weight (F32 [32]) after the last packed weight + scale
  flip_last(d / "hf_off/model.safetensors", 32 * 4 + 4 + 10);
  EXPECT_NE(std::system((reader + " --reference " + (d / "latent.safetensors").string() + " --hf-offline " +
                         (d / "hf_off").string() + " > /dev/null 2>&1").c_str()), 0);
  flip_last(d / "m.gguf", 5);
  EXPECT_NE(std::system((reader + " --reference " + (d / "latent.safetensors").string() + " --gguf " +
                         (d / "m.gguf").string() + " > /dev/null 2>&1").c_str()), 0);
}

TEST(Export, CliRefusesWithTheReason) {
  const fs::path bin = fs::path(BITNET_BINARY_DIR) / "trainers/bitnet";
  if (!fs::exists(bin)) GTEST_SKIP() << "bitnet binary not built";
  const fs::path model = make_model("cli");
  const fs::path log = g->dir / "cli.log";
  const std::string base = bin.string() + " export " + model.string();
  int rc = std::system((base + " --format gguf --arch bitnet --out " + (g->dir / "cli.gguf").string() + " > " +
                        log.string() + " 2>&1").c_str());
  EXPECT_NE(rc, 0);
  EXPECT_NE(read_bytes(log).find("SiLU"), std::string::npos) << read_bytes(log);
  rc = std::system((base + " --format hf-offline --out " + (g->dir / "cli_hf").string() + " --reference " +
                    (g->dir / "cli_ref.safetensors").string() + " > " + log.string() + " 2>&1").c_str());
  EXPECT_EQ(rc, 0) << read_bytes(log);
  EXPECT_TRUE(fs::exists(g->dir / "cli_hf/model.safetensors"));
  EXPECT_TRUE(fs::exists(g->dir / "cli_ref.safetensors"));
}
