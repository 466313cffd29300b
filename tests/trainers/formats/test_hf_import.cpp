// Hugging Face import: our HF exports (online F32, BF16 sharded, offline in both class
// conventions) read back parameter for parameter and logit for logit; GQA, tying, ReLU²/SwiGLU;
// mismatches listed by name; train --init-from HF_DIR, export of its tokenizer, the CLI.
#include "autograd/tape.h"
#include "data/tokens.h"
#include "tests/trainers/formats/export_helpers.h"
#include "trainers/formats/hf_import.h"
#include "trainers/train/comm.h"
#include "trainers/train/trainer.h"

namespace tf = trainers::formats;
using json = nlohmann::json;

namespace {

void write_text(const fs::path& p, const std::string& s) {
  std::ofstream f(p, std::ios::binary | std::ios::trunc);
  f << s;
}

uint16_t bf16_rne(float x) {
  uint32_t u;
  std::memcpy(&u, &x, 4);
  u += 0x7fffu + ((u >> 16) & 1u);
  return uint16_t(u >> 16);
}
float bf16_round(float x) {
  const uint32_t u = uint32_t(bf16_rne(x)) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

// Copies an HF directory with its model.safetensors split into `shards` files plus
// model.safetensors.index.json; float tensors converted to BF16 when bf16.
void reshard(const fs::path& src, const fs::path& dst, int shards, bool bf16) {
  fs::remove_all(dst);
  fs::create_directories(dst);
  for (const auto& e : fs::directory_iterator(src))
    if (e.path().filename() != "model.safetensors")
      fs::copy_file(e.path(), dst / e.path().filename());
  auto st = autograd::read_safetensors((src / "model.safetensors").string());
  if (bf16)
    for (auto& b : st.tensors)
      if (b.dtype == "F32") {
        std::vector<uint8_t> out(b.bytes.size() / 2);
        for (size_t i = 0; i < b.bytes.size() / 4; ++i) {
          float f;
          std::memcpy(&f, b.bytes.data() + 4 * i, 4);
          const uint16_t h = bf16_rne(f);
          std::memcpy(out.data() + 2 * i, &h, 2);
        }
        b.dtype = "BF16";
        b.bytes = std::move(out);
      }
  json index;
  index["metadata"] = {{"total_size", 0}};
  const size_t per = (st.tensors.size() + shards - 1) / shards;
  for (int s = 0; s < shards; ++s) {
    char name[64];
    std::snprintf(name, sizeof name, "model-%05d-of-%05d.safetensors", s + 1, shards);
    std::vector<autograd::NamedBlob> part;
    for (size_t i = s * per; i < std::min(st.tensors.size(), (s + 1) * per); ++i) {
      part.push_back(st.tensors[i]);
      index["weight_map"][st.tensors[i].name] = name;
    }
    autograd::write_safetensors((dst / name).string(), part);
  }
  write_text(dst / "model.safetensors.index.json", index.dump(2));
}

std::vector<float> w158a8_logits(nn::BitNetLM& m, const std::vector<int32_t>& ids) {
  autograd::NoGradGuard ng;
  const nn::ActMode saved = m.mode();
  m.set_mode(nn::ActMode::W158A8);
  auto v = m.logits(ids, 1, int64_t(ids.size())).value().to_vector();
  m.set_mode(saved);
  return v;
}

double max_rel(const std::vector<float>& a, const std::vector<float>& b) {
  double d = 0, m = 1e-30;
  for (size_t i = 0; i < a.size(); ++i) {
    d = std::max(d, std::abs(double(a[i]) - double(b[i])));
    m = std::max(m, std::abs(double(b[i])));
  }
  return d / m;
}

void edit_json(const fs::path& p, const std::function<void(json&)>& f) {
  json j = read_json(p);
  f(j);
  write_text(p, j.dump(2));
}

// One model shape of the matrix: tying, GLU, GQA.
struct Shape {
  const char* tag;
  std::vector<std::string> sets;
};
const Shape kShapes[] = {
    {"tied_relu2_gqa", {"model.tie_embeddings=true", "model.glu=relu2", "model.n_kv_heads=2"}},
    {"untied_silu_mha", {"model.tie_embeddings=false", "model.glu=swiglu", "model.n_kv_heads=4"}},
    {"untied_relu2_gqa", {"model.tie_embeddings=false", "model.glu=relu2", "model.n_kv_heads=1"}},
};

}  // namespace

TEST(HfImport, OnlineF32IsBitExactWithTheSameLogits) {
  for (const Shape& s : kShapes) {
    const auto tm = tf::load_trained_model(make_model(s.tag, s.sets).string());
    const fs::path hf = g->dir / (std::string(s.tag) + "_hf");
    tf::export_model(tm, hf.string(), fmt(ExportFormat::HF));
    ASSERT_TRUE(tf::is_hf_dir(hf.string()));
    const tf::TrainedModel im = tf::load_trained_model(hf.string());
    const nn::ModelConfig &a = tm.model->config(), &b = im.model->config();
    EXPECT_EQ(b.vocab_size, a.vocab_size) << s.tag;
    EXPECT_EQ(b.kv_heads(), a.kv_heads()) << s.tag;
    EXPECT_EQ(b.tie_embeddings, a.tie_embeddings) << s.tag;
    EXPECT_EQ(b.glu, a.glu) << s.tag;
    EXPECT_EQ(b.rope_theta, a.rope_theta) << s.tag;
    EXPECT_EQ(b.norm_eps, a.norm_eps) << s.tag;
    EXPECT_EQ(im.model->mode(), nn::ActMode::W158A8);
    EXPECT_EQ(im.hf_source, fs::absolute(hf).lexically_normal().string());
    EXPECT_EQ(im.tokenizer_proto, g->proto);  // the SentencePiece tokenizer.model is taken
    ASSERT_EQ(im.model->params().entries().size(), tm.model->params().entries().size());
    for (size_t i = 0; i < tm.model->params().entries().size(); ++i) {
      const auto &x = tm.model->params().entries()[i], &y = im.model->params().entries()[i];
      ASSERT_EQ(x.name, y.name);
      EXPECT_EQ(std::memcmp(x.var.data(), y.var.data(), size_t(x.numel) * 4), 0) << x.name;
    }
    const auto ids = tf::reference_tokens(tm, 16);
    EXPECT_EQ(w158a8_logits(*im.model, ids), w158a8_logits(*tm.model, ids)) << s.tag;
  }
}

TEST(HfImport, Bf16ShardedIsTheRoundedModel) {
  const Shape& s = kShapes[1];  // untied: lm_head too
  const auto tm = tf::load_trained_model(make_model("bf16", s.sets).string());
  const fs::path hf = g->dir / "bf16_src", sh = g->dir / "bf16_sharded";
  tf::export_model(tm, hf.string(), fmt(ExportFormat::HF));
  reshard(hf, sh, 3, true);
  ASSERT_FALSE(fs::exists(sh / "model.safetensors"));
  nn::BitNetLM m(tf::read_hf_config(sh.string()).model, 0);
  const tf::HfImportResult r = tf::import_hf(sh.string(), m);
  EXPECT_EQ(r.files.size(), 3u);
  // The reference: our model with every parameter rounded to bf16.
  nn::BitNetLM want(tm.model->config(), 0);
  for (size_t i = 0; i < want.params().entries().size(); ++i) {
    const auto &src = tm.model->params().entries()[i], &dst = want.params().entries()[i];
    for (int64_t k = 0; k < src.numel; ++k) dst.var.data()[k] = bf16_round(src.var.data()[k]);
    EXPECT_EQ(
        std::memcmp(dst.var.data(), m.params().entries()[i].var.data(), size_t(src.numel) * 4), 0)
        << src.name;
  }
  const auto ids = tf::reference_tokens(tm, 16);
  EXPECT_EQ(w158a8_logits(m, ids), w158a8_logits(want, ids));
  // An F32 two-shard copy is bit-exact again.
  reshard(hf, g->dir / "f32_sharded", 2, false);
  const auto im = tf::load_trained_model((g->dir / "f32_sharded").string());
  for (size_t i = 0; i < tm.model->params().entries().size(); ++i)
    EXPECT_EQ(std::memcmp(tm.model->params().entries()[i].var.data(),
                          im.model->params().entries()[i].var.data(),
                          size_t(tm.model->params().entries()[i].numel) * 4),
              0);
}

TEST(HfImport, OfflineBothClassConventionsGiveTheSameCodesAndScale) {
  for (const Shape& s : {kShapes[0], kShapes[1]}) {
    const auto tm =
        tf::load_trained_model(make_model(std::string("off_") + s.tag, s.sets).string());
    const fs::path hf = g->dir / (std::string("off_") + s.tag);
    tf::export_model(tm, hf.string(), fmt(ExportFormat::HFOffline));
    // The default transformers class (bitlinear) stores 1/a and divides by it.
    const fs::path bl = g->dir / (std::string("offbl_") + s.tag);
    fs::remove_all(bl);
    fs::copy(hf, bl);
    edit_json(bl / "config.json",
              [](json& j) { j["quantization_config"]["linear_class"] = "bitlinear"; });
    {
      auto st = autograd::read_safetensors((bl / "model.safetensors").string());
      for (auto& b : st.tensors)
        if (b.name.find("weight_scale") != std::string::npos) {
          float a;
          std::memcpy(&a, b.bytes.data(), 4);
          const float inv = 1.0f / a;
          std::memcpy(b.bytes.data(), &inv, 4);
        }
      autograd::write_safetensors((bl / "model.safetensors").string(), st.tensors);
    }
    const auto ids = tf::reference_tokens(tm, 16);
    const auto ref = w158a8_logits(*tm.model, ids);
    for (const fs::path& d : {hf, bl}) {
      nn::BitNetLM m(tf::read_hf_config(d.string()).model, 0);
      const auto r = tf::import_hf(d.string(), m);
      bool noted = false;
      for (const auto& n : r.notes) noted |= n.find("offline layout") != std::string::npos;
      EXPECT_TRUE(noted);
      for (size_t i = 0; i < m.params().entries().size(); ++i) {
        const auto &src = tm.model->params().entries()[i], &got = m.params().entries()[i];
        if (!tf::is_bitlinear_weight(src.name)) {
          EXPECT_EQ(std::memcmp(src.var.data(), got.var.data(), size_t(src.numel) * 4), 0);
          continue;
        }
        std::vector<int8_t> c0(size_t(src.numel)), c1(size_t(src.numel));
        const float a0 = quant::ternary_absmean(src.var.data(), src.numel, nullptr, c0.data());
        const float a1 = quant::ternary_absmean(got.var.data(), got.numel, nullptr, c1.data());
        EXPECT_EQ(c0, c1) << src.name;             // the codes survive the re-ternarization
        const double tol = d == hf ? 1e-6 : 1e-5;  // bitlinear: a = 1 / (1 / a) in fp32
        EXPECT_NEAR(a1 / a0, 1.0, tol) << src.name;
        // latent = c * a / p (p = the fraction of nonzero codes)
        int64_t nz = 0;
        for (int8_t c : c0) nz += c != 0;
        const double p = double(nz) / double(src.numel);
        double worst = 0;
        for (int64_t k = 0; k < src.numel; ++k)
          worst = std::max(worst, std::abs(got.var.data()[k] * p - c0[size_t(k)] * double(a0)));
        EXPECT_LE(worst, tol * a0) << src.name;
      }
      EXPECT_LT(max_rel(w158a8_logits(m, ids), ref), 1e-5) << d;
    }
  }
}

TEST(HfImport, MismatchesAreListedByName) {
  const auto tm = tf::load_trained_model(make_model("bad", kShapes[0].sets).string());
  const fs::path hf = g->dir / "bad_src";
  tf::export_model(tm, hf.string(), fmt(ExportFormat::HF));
  auto import_error = [](const fs::path& d) {
    return error_of([&] { tf::load_trained_model(d.string()); });
  };
  // A renamed tensor and a wrong shape: both in one error.
  const fs::path d1 = g->dir / "bad_names";
  fs::remove_all(d1);
  fs::copy(hf, d1);
  {
    auto st = autograd::read_safetensors((d1 / "model.safetensors").string());
    for (auto& b : st.tensors) {
      if (b.name == "model.layers.1.self_attn.q_proj.weight")
        b.name = "model.layers.1.self_attn.qq_proj.weight";
      if (b.name == "model.layers.0.mlp.ffn_sub_norm.weight") {
        b.shape = {32};
        b.bytes.resize(32 * 4);
      }
      if (b.name == "model.norm.weight") b.dtype = "I32";
    }
    autograd::write_safetensors((d1 / "model.safetensors").string(), st.tensors);
  }
  std::string e = import_error(d1);
  for (const char* want :
       {"unexpected: model.layers.1.self_attn.qq_proj.weight (model.safetensors) F32 [32, 32]",
        "missing: model.layers.1.self_attn.q_proj.weight [32, 32]",
        "shape: model.layers.0.mlp.ffn_sub_norm.weight (model.safetensors) is [32], expected [64]",
        "dtype: model.norm.weight (model.safetensors) is I32", "(4 problems)"})
    EXPECT_NE(e.find(want), std::string::npos) << want << "\n" << e;

  // A missing shard.
  const fs::path d2 = g->dir / "bad_shard";
  reshard(hf, d2, 2, true);
  fs::remove(d2 / "model-00002-of-00002.safetensors");
  e = import_error(d2);
  EXPECT_NE(e.find("missing shard: model-00002-of-00002.safetensors (model.safetensors.index.json "
                   "maps"),
            std::string::npos)
      << e;
  EXPECT_NE(e.find("missing: model.norm.weight [32]"), std::string::npos) << e;

  // config.json: bad hidden_act, head_dim, quantization_config.use_rms_norm: all listed.
  const fs::path d3 = g->dir / "bad_config";
  fs::remove_all(d3);
  fs::copy(hf, d3);
  edit_json(d3 / "config.json", [](json& j) {
    j["hidden_act"] = "gelu";
    j["head_dim"] = 16;
    j["quantization_config"]["use_rms_norm"] = true;
    j.erase("intermediate_size");
  });
  e = import_error(d3);
  for (const char* want : {"unknown hidden_act 'gelu' (relu2 or silu)",
                           "head_dim 16 != hidden_size / num_attention_heads = 8",
                           "use_rms_norm is true", "missing intermediate_size", "(4 problems)"})
    EXPECT_NE(e.find(want), std::string::npos) << want << "\n" << e;

  // A packed weight without its scale; a float weight with a stray scale.
  const fs::path d4 = g->dir / "bad_offline";
  tf::export_model(tm, d4.string(), fmt(ExportFormat::HFOffline));
  {
    auto st = autograd::read_safetensors((d4 / "model.safetensors").string());
    std::erase_if(st.tensors, [](const autograd::NamedBlob& b) {
      return b.name == "model.layers.0.mlp.up_proj.weight_scale";
    });
    autograd::write_safetensors((d4 / "model.safetensors").string(), st.tensors);
  }
  e = import_error(d4);
  EXPECT_NE(e.find("missing: model.layers.0.mlp.up_proj.weight_scale (the packed "
                   "model.layers.0.mlp.up_proj.weight needs it)"),
            std::string::npos)
      << e;
}

TEST(HfImport, ConfigFromHfFillsOrChecksTheModelBlock) {
  const auto tm = tf::load_trained_model(make_model("cfg", kShapes[1].sets).string());
  const fs::path hf = g->dir / "cfg_hf";
  tf::export_model(tm, hf.string(), fmt(ExportFormat::HF));
  // No model block: everything from config.json.
  const fs::path y1 = g->dir / "nomodel.yaml";
  write_text(y1, "stages:\n  - {mode: a4.8}\nschedule: {warmup: 1}\ntraining: {steps: 3}\n");
  const auto c = tf::load_config_for_hf(y1.string(), hf.string());
  EXPECT_EQ(c.model.d_model, 32);
  EXPECT_EQ(c.model.vocab_size, 400);
  EXPECT_EQ(c.model.kv_heads(), 4);
  EXPECT_EQ(c.model.glu, nn::Glu::SwiGLU);
  EXPECT_FALSE(c.model.tie_embeddings);
  // A model block that agrees (partly given) is fine; one that disagrees is listed by key.
  const fs::path y2 = g->dir / "agree.yaml";
  write_text(
      y2, "model: {d_model: 32, topk_ratio: 0.25}\nschedule: {warmup: 1}\ntraining: {steps: 3}\n");
  EXPECT_FLOAT_EQ(tf::load_config_for_hf(y2.string(), hf.string()).model.topk_ratio, 0.25f);
  const fs::path y3 = g->dir / "disagree.yaml";
  write_text(y3,
             "model: {d_model: 64, n_layers: 2, glu: relu2}\nschedule: {warmup: 1}\ntraining: "
             "{steps: 3}\n");
  const std::string e =
      error_of([&] { tf::load_config_for_hf(y3.string(), hf.string(), {"model.n_kv_heads=2"}); });
  for (const char* want : {"(3 keys", "model.d_model: config 64, config.json hidden_size 32",
                           "model.n_kv_heads: config 2, config.json num_key_value_heads 4",
                           "model.glu: config relu2, config.json hidden_act swiglu"})
    EXPECT_NE(e.find(want), std::string::npos) << want << "\n" << e;
  // The generated recipe parses and continues into a4.8.
  const auto h = tf::read_hf_config(hf.string());
  const auto rc = trainers::config::parse_config(tf::hf_recipe_yaml(hf.string(), h), "recipe");
  EXPECT_EQ(rc.model.d_model, 32);
  ASSERT_EQ(rc.stages.size(), 1u);
  EXPECT_EQ(rc.stages[0].mode, nn::ActMode::A48);
}

TEST(HfImport, TrainInitFromHfDirThenExportCopiesItsTokenizer) {
  const auto tm = tf::load_trained_model(make_model("train", kShapes[0].sets).string());
  const fs::path hf = g->dir / "train_hf";
  tf::export_model(tm, hf.string(), fmt(ExportFormat::HF));
  reshard(hf, g->dir / "train_hf_bf16", 2, true);
  const fs::path src = g->dir / "train_hf_bf16";
  // A byte-level BPE tokenizer bitnet cannot read (as 2B4T's): only copied back out.
  fs::remove(src / "tokenizer.model");
  write_text(src / "tokenizer.json", "{\"model\": {\"type\": \"BPE\"}}");
  edit_json(src / "config.json", [](json& j) {
    j["bos_token_id"] = 7;
    j["eos_token_id"] = 9;
  });
  // data
  const fs::path data = g->dir / "train_data";
  fs::create_directories(data);
  std::vector<uint32_t> toks(4000);
  for (size_t i = 0; i < toks.size(); ++i) toks[i] = uint32_t((i * 7 + i / 13) % 400);
  data::write_shard((data / "train.bin").string(), toks, 400);
  data::write_shard((data / "val.bin").string(), toks, 400);
  const fs::path y = g->dir / "continue.yaml";
  write_text(y,
             "stages:\n  - {mode: a4.8}\nschedule: {warmup: 1, peak1: 1.0e-3}\ndata:\n  train: " +
                 (data / "train.bin").string() + "\n  val: " + (data / "val.bin").string() +
                 "\n  seq_len: 16\n  micro_batch: 2\ntraining:\n  steps: 3\n  eval_every: 0\n"
                 "  eval_batches: 1\n  out_dir: " +
                 (g->dir / "train_run").string() + "\n");
  const auto cfg = tf::load_config_for_hf(y.string(), src.string());
  trainers::train::TrainOptions opt;
  opt.quiet = true;
  opt.init_from = src.string();
  trainers::train::LocalComm comm;
  const auto r = trainers::train::train(cfg, opt, comm);
  EXPECT_EQ(r.steps, 3);
  EXPECT_TRUE(std::isfinite(r.last_loss));
  const fs::path model = g->dir / "train_run/model.safetensors";
  const auto st = autograd::read_safetensors(model.string());
  EXPECT_EQ(st.metadata.at("hf_source"), fs::absolute(src).lexically_normal().string());
  // It started from the imported weights (a fresh init would differ by ~0.05 per element).
  const auto trained = tf::load_trained_model(model.string());
  EXPECT_EQ(trained.hf_source, st.metadata.at("hf_source"));
  const auto &e0 = tm.model->params().entries()[0], &e1 = trained.model->params().entries()[0];
  ASSERT_EQ(e0.name, "model.embed_tokens.weight");
  double worst = 0;
  for (int64_t k = 0; k < e0.numel; ++k)
    worst = std::max(worst, double(std::abs(e1.var.data()[k] - bf16_round(e0.var.data()[k]))));
  EXPECT_LT(worst, 5e-3);  // 3 AdamW steps of lr <= 1e-3 from the imported (bf16) weights
  // Export: the source's tokenizer files and special token ids come back out.
  const fs::path out = g->dir / "train_export";
  const auto x = tf::export_model(trained, out.string(), fmt(ExportFormat::HF));
  EXPECT_EQ(read_bytes(out / "tokenizer.json"), read_bytes(src / "tokenizer.json"));
  EXPECT_EQ(read_bytes(out / "tokenizer_config.json"), read_bytes(src / "tokenizer_config.json"));
  const auto c = read_json(out / "config.json");
  EXPECT_EQ(c["bos_token_id"], 7);
  EXPECT_EQ(c["eos_token_id"], 9);
  // --tokenizer-from names the source explicitly (here: for a model without hf_source).
  auto o = fmt(ExportFormat::HF);
  o.tokenizer_from = src.string();
  tf::export_model(tm, (g->dir / "tokfrom").string(), o);
  EXPECT_EQ(read_bytes(g->dir / "tokfrom/tokenizer.json"), read_bytes(src / "tokenizer.json"));
  EXPECT_FALSE(fs::exists(g->dir / "tokfrom/tokenizer.model"));  // ours is not written then
  // The same through the CLI: bitnet train CONFIG --init-from HF_DIR (no model block).
  const fs::path bin = fs::path(BITNET_BINARY_DIR) / "trainers/bitnet";
  if (!fs::exists(bin)) return;
  const fs::path log = g->dir / "train_cli.log";
  const std::string cmd = bin.string() + " train " + y.string() + " --init-from " + src.string() +
                          " --quiet --set training.out_dir=" + (g->dir / "train_cli").string() +
                          " > " + log.string() + " 2>&1";
  ASSERT_EQ(std::system(cmd.c_str()), 0) << read_bytes(log);
  EXPECT_NE(read_bytes(log).find("done: 3 steps"), std::string::npos) << read_bytes(log);
  EXPECT_TRUE(fs::exists(g->dir / "train_cli/model.safetensors"));
  // A model block that disagrees with config.json is refused, naming the keys.
  ASSERT_NE(
      std::system((bin.string() + " train " + y.string() + " --init-from " + src.string() +
                   " --set model.d_model=64 --set model.n_layers=3 > " + log.string() + " 2>&1")
                      .c_str()),
      0);
  EXPECT_NE(read_bytes(log).find("model.d_model: config 64, config.json hidden_size 32"),
            std::string::npos)
      << read_bytes(log);
  EXPECT_NE(read_bytes(log).find("model.n_layers: config 3, config.json num_hidden_layers 2"),
            std::string::npos)
      << read_bytes(log);
}

TEST(HfImport, CliEvalGenerateConfigOnAnHfDir) {
  const fs::path bin = fs::path(BITNET_BINARY_DIR) / "trainers/bitnet";
  if (!fs::exists(bin)) GTEST_SKIP() << "bitnet binary not built";
  const auto tm = tf::load_trained_model(make_model("cli_hf", kShapes[2].sets).string());
  const fs::path hf = g->dir / "cli_hf_dir";
  tf::export_model(tm, hf.string(), fmt(ExportFormat::HF));
  fs::remove(hf / "tokenizer.model");  // token ids only
  const fs::path log = g->dir / "cli_hf.log", dump = g->dir / "cli_hf_dump.safetensors";
  auto run = [&](const std::string& args) {
    return std::system((bin.string() + " " + args + " > " + log.string() + " 2>&1").c_str());
  };
  ASSERT_EQ(run("eval " + hf.string() + " --mode w158a8 --dump-logits " + dump.string() +
                " --tokens 1,5,9,200,3"),
            0)
      << read_bytes(log);
  const auto d = autograd::read_safetensors(dump.string());
  const std::vector<int32_t> ids = {1, 5, 9, 200, 3};
  const auto want = w158a8_logits(*tm.model, ids);
  EXPECT_EQ(d.f32("logits_float").to_vector(), want);
  EXPECT_LT(max_rel(d.f32("logits").to_vector(), want), 1e-3);  // the integer engine
  ASSERT_EQ(run("generate " + hf.string() + " --tokens 1,5,9 --max-tokens 4 --temperature 0"), 0)
      << read_bytes(log);
  EXPECT_NE(read_bytes(log).find("prompt 3 token ids"), std::string::npos) << read_bytes(log);
  EXPECT_NE(run("generate " + hf.string() + " --prompt hello"), 0);
  EXPECT_NE(read_bytes(log).find("no embedded tokenizer"), std::string::npos) << read_bytes(log);
  ASSERT_EQ(run("config --from-hf " + hf.string()), 0) << read_bytes(log);
  EXPECT_NE(read_bytes(log).find("  n_kv_heads: 1\n"), std::string::npos) << read_bytes(log);
  EXPECT_EQ(read_bytes(log).find("model:"), read_bytes(log).find("model:\n"));
}
