// Inference engine, compact checkpoints, generation and evaluation against the float training path.
#include <gtest/gtest.h>

#include <omp.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>

#include "autograd/ops.h"
#include "autograd/random.h"
#include "autograd/safetensors.h"
#include "data/tokens.h"
#include "nn/inference.h"
#include "nn/model.h"
#include "quant/ste.h"
#include "trainers/config/config.h"
#include "trainers/formats/compact.h"
#include "trainers/formats/trained_model.h"
#include "trainers/infer/evaluate.h"
#include "trainers/infer/generate.h"
#include "trainers/train/trainer.h"

namespace fs = std::filesystem;
using nn::ActMode;

namespace {

const ActMode kModes[] = {ActMode::FP, ActMode::W158A8, ActMode::A48, ActMode::A48FP4, ActMode::Int4All};

fs::path tmp_dir() {
  const auto* ti = ::testing::UnitTest::GetInstance()->current_test_info();
  fs::path d = fs::temp_directory_path() /
               ("bitnet_inference_" + std::string(ti->test_suite_name()) + "_" + ti->name() + "_" +
                std::to_string(::getpid()));
  fs::remove_all(d);
  fs::create_directories(d);
  return d;
}

// max |a - b| / max |b|
double rel_diff(const std::vector<float>& a, const std::vector<float>& b) {
  EXPECT_EQ(a.size(), b.size());
  double num = 0, den = 0;
  for (size_t i = 0; i < a.size() && i < b.size(); ++i) {
    num = std::max(num, std::fabs(double(a[i]) - double(b[i])));
    den = std::max(den, std::fabs(double(b[i])));
  }
  return den > 0 ? num / den : num;
}

// The model test's shape: head_dim 12 (not a power of two), GQA (4 heads, 2 KV heads).
trainers::config::Config small_config(std::vector<std::string> sets = {}) {
  for (const char* s : {"model.vocab_size=96", "model.d_model=48", "model.n_layers=2", "model.n_heads=4",
                        "model.n_kv_heads=2", "model.ffn_dim=64", "model.init_std=0.1"})
    sets.insert(sets.begin(), s);
  return trainers::config::load_config(std::string(BITNET_SOURCE_DIR) + "/configs/tiny.yaml", sets);
}

// A random-parameter model in `mode` (init std 0.1 for some dynamic range), as a TrainedModel.
trainers::formats::TrainedModel random_model(ActMode mode, uint64_t seed = 7, std::vector<std::string> sets = {}) {
  const trainers::config::Config c = small_config(sets);
  trainers::formats::TrainedModel tm;
  tm.model = std::make_unique<nn::BitNetLM>(c.model, seed);
  tm.model->set_mode(mode);
  // Norm gains as training leaves them (1 + noise) rather than exactly 1: with unit gains the
  // position-0 attention output is V's row, integer-structured, and exact ties of the FP4/INT8
  // rounding (e.g. x·s = 0.25 exactly in real arithmetic) land on either side in the two paths.
  {
    autograd::Rng r(seed + 99);
    for (auto& e : tm.model->params().entries())
      if (e.var.shape().rank() == 1)
        for (int64_t i = 0; i < e.numel; ++i) e.var.data()[i] = float(1.0 + 0.2 * r.normal());
  }
  tm.config_yaml = c.resolved_yaml;
  tm.step = 42;
  return tm;
}

std::vector<int32_t> random_tokens(int64_t n, int64_t vocab, uint64_t seed) {
  autograd::Rng r(seed);
  std::vector<int32_t> t(static_cast<size_t>(n));
  for (auto& v : t) v = int32_t(r.below(uint64_t(vocab)));
  return t;
}

std::vector<float> float_logits(nn::BitNetLM& m, ActMode mode, std::span<const int32_t> tokens) {
  const ActMode saved = m.mode();
  m.set_mode(mode);
  m.set_integer_gemm(false);  // the training model's float path, op for op
  auto v = m.logits(tokens, 1, int64_t(tokens.size())).value().to_vector();
  m.set_integer_gemm(true);
  m.set_mode(saved);
  return v;
}

// ---- a tiny model trained on byte-level text with fixed phrases (for MC / generation) ----------
const char* kPhrases[] = {"the cat sat on the mat. ", "a dog ran in the park. ", "my bird flew over the tree. ",
                          "one fish swam in the pond. "};

std::vector<int32_t> bytes_of(const std::string& s) {
  std::vector<int32_t> v;
  for (unsigned char c : s) v.push_back(int32_t(c));
  return v;
}

std::vector<uint32_t> phrase_corpus(int64_t n, uint64_t seed) {
  autograd::Rng r(seed);
  std::vector<uint32_t> t;
  while (int64_t(t.size()) < n)
    for (unsigned char c : std::string(kPhrases[r.below(4)])) t.push_back(c);
  t.resize(size_t(n));
  return t;
}

struct Trained {
  trainers::formats::TrainedModel tm;
  std::vector<int32_t> val;
  fs::path dir;
};

const Trained& trained() {
  static Trained* t = [] {
    auto* r = new Trained;
    r->dir = fs::temp_directory_path() / ("bitnet_inference_trained_" + std::to_string(::getpid()));
    fs::remove_all(r->dir);
    fs::create_directories(r->dir);
    data::write_shard((r->dir / "train.bin").string(), phrase_corpus(40000, 1), 256);
    const auto val = phrase_corpus(4000, 2);
    data::write_shard((r->dir / "val.bin").string(), val, 256);
    r->val.assign(val.begin(), val.end());
    const trainers::config::Config cfg = trainers::config::load_config(
        std::string(BITNET_SOURCE_DIR) + "/configs/tiny.yaml",
        {"data.train=" + (r->dir / "train.bin").string(), "data.val=" + (r->dir / "val.bin").string(),
         "training.out_dir=" + (r->dir / "run").string(), "training.steps=200", "training.eval_every=0"});
    trainers::train::LocalComm comm;
    trainers::train::TrainOptions opt;
    opt.quiet = true;
    // One thread: a tiny model trains fastest that way, and it does not slow to a crawl when
    // other processes share the cores (OpenMP barriers waiting on descheduled threads).
    const int threads = omp_get_max_threads();
    omp_set_num_threads(1);
    const trainers::train::TrainResult res = trainers::train::train(cfg, opt, comm);
    omp_set_num_threads(threads);
    std::printf("[trained tiny byte model: val loss %.3f]\n", res.val_loss);
    r->tm = trainers::formats::load_trained_model((r->dir / "run").string());
    fs::remove_all(r->dir);  // everything needed is in memory now
    return r;
  }();
  return *t;
}

}  // namespace

// ---- (a) integer kernel -------------------------------------------------------------------------

TEST(IntGemm, EqualsInt64DotProducts) {
  autograd::Rng r(3);
  for (auto [N, M, K] : {std::tuple<int64_t, int64_t, int64_t>{1, 1, 1}, {3, 37, 1000}, {70, 20, 257}, {2, 5, 4096}}) {
    std::vector<int8_t> X(size_t(N * K)), W(size_t(M * K));
    for (auto& v : X) v = int8_t(int(r.below(256)) - 128);
    for (auto& v : W) v = int8_t(int(r.below(3)) - 1);
    // Extreme rows: all -128 against all -1 (the largest ternary dot, 128 K).
    for (int64_t k = 0; k < K; ++k) X[size_t(k)] = -128, W[size_t(k)] = -1;
    std::vector<int32_t> acc(size_t(N * M));
    nn::gemm_s8s8s32(X.data(), W.data(), acc.data(), N, M, K);
    for (int64_t n = 0; n < N; ++n)
      for (int64_t m = 0; m < M; ++m) {
        int64_t ref = 0;
        for (int64_t k = 0; k < K; ++k) ref += int64_t(X[size_t(n * K + k)]) * int64_t(W[size_t(m * K + k)]);
        ASSERT_EQ(int64_t(acc[size_t(n * M + m)]), ref) << N << "x" << M << "x" << K << " at " << n << "," << m;
      }
    EXPECT_EQ(acc[0], 128 * K);
  }
}

TEST(Engine, AccumulatorsAreExactIntegerDotsOfTheModelsCodes) {
  for (ActMode mode : {ActMode::W158A8, ActMode::A48, ActMode::A48FP4, ActMode::Int4All}) {
    auto tm = random_model(mode);
    const nn::InferenceEngine eng(nn::InferenceWeights::from_model(*tm.model), {mode, {}});
    const auto tokens = random_tokens(11, 96, 5);
    nn::KVCache cache = eng.new_cache();
    int64_t checked = 0, projections = 0;
    std::map<std::string, int> lo, hi;
    eng.forward(tokens, cache, false, nullptr, [&](const nn::ProjTrace& t) {
      ++projections;
      for (int64_t n = 0; n < t.n; ++n)
        for (int64_t o = 0; o < t.out; ++o) {
          int64_t ref = 0;
          for (int64_t k = 0; k < t.in; ++k) ref += int64_t(t.x_codes[n * t.in + k]) * int64_t(t.w_codes[o * t.in + k]);
          ASSERT_EQ(int64_t(t.acc[n * t.out + o]), ref) << t.name << " layer " << t.layer;
          ++checked;
        }
      for (int64_t i = 0; i < t.n * t.in; ++i) {
        lo[t.name] = std::min(lo[t.name], int(t.x_codes[i]));
        hi[t.name] = std::max(hi[t.name], int(t.x_codes[i]));
      }
      for (int64_t i = 0; i < t.out * t.in; ++i) ASSERT_LE(std::abs(int(t.w_codes[i])), 1);
    });
    EXPECT_EQ(projections, 2 * 7);
    // Code ranges of the mode's quantizers: INT4 [-8, 7], INT8 [-128, 127], FP4 as 2·value [-12, 12].
    const int qkv_hi = mode == ActMode::W158A8 ? 127 : mode == ActMode::A48FP4 ? 12 : 7;
    EXPECT_LE(hi["q"], qkv_hi);
    EXPECT_GE(lo["q"], -qkv_hi - 1);
    if (mode == ActMode::W158A8 || mode == ActMode::A48) {
      EXPECT_GT(hi["down"], 7);  // INT8 uses its range
    }
    std::printf("%-9s %lld int32 accumulators equal the int64 dot products\n", nn::to_string(mode).c_str(),
                (long long)checked);
  }
}

// ---- (b) agreement with the float training path --------------------------------------------------

// The float training path, op for op as nn::Attention / nn::FeedForward compose it, also
// returning the integer codes of every quantizer input (keyed by layer and projection: "q" for
// the shared q/k/v input, "o", "gate" for the shared gate/up input, "down"; FP4 as 2·value).
struct FloatPath {
  std::vector<float> logits;
  std::map<std::pair<int, std::string>, std::vector<int8_t>> codes;
};
FloatPath float_path_with_codes(const nn::BitNetLM& m, ActMode mode, std::span<const int32_t> tokens) {
  namespace ag = autograd;
  using nn::BitLinear;
  using nn::SparsityProbe;
  const nn::ModelConfig& c = m.config();
  const int64_t B = 1, T = int64_t(tokens.size()), hd = c.head_dim(), d = c.d_model;
  const nn::LayerQuant lq = nn::layer_quant(mode, c);
  const bool tern = lq.ternary;
  FloatPath out;
  auto capture = [&](int layer, const char* name, const ag::Variable& x, const quant::ActSpec& spec) {
    if (!tern) return;
    std::vector<int8_t> codes(size_t(x.numel()));
    quant::act_quantize(spec, x.data(), x.numel() / x.shape().back(), x.shape().back(), nullptr, codes.data(), nullptr);
    if (spec.kind == quant::ActKind::Fp4)
      for (auto& v : codes) v = int8_t((v & 8 ? -2 : 2) * quant::fp4_value(int8_t(v & 7)));
    out.codes[{layer, name}] = std::move(codes);
  };
  auto heads = [&](const ag::Variable& y, int64_t h) { return ag::transpose(ag::reshape(y, ag::Shape{B, T, h, hd}), 1, 2); };
  ag::Variable x = m.model->embed_tokens->forward(tokens);
  for (size_t li = 0; li < m.model->layers.size(); ++li) {
    const nn::Block* b = m.model->layers[li];
    const nn::Attention* at = b->self_attn;
    const nn::FeedForward* ff = b->mlp;
    const int L = int(li);
    ag::Variable a = b->input_layernorm->forward(x);
    capture(L, "q", a, lq.qkv);
    ag::Variable aq = BitLinear::quantize_input(a, lq.qkv, nullptr, SparsityProbe::QKV);
    ag::Variable q = ag::rope(heads(at->q_proj->forward_quantized(aq, tern), c.n_heads), c.rope_theta);
    ag::Variable k = ag::rope(heads(at->k_proj->forward_quantized(aq, tern), c.kv_heads()), c.rope_theta);
    ag::Variable v = heads(at->v_proj->forward_quantized(aq, tern), c.kv_heads());
    ag::Variable o = ag::reshape(ag::transpose(ag::causal_attention(q, k, v), 1, 2), ag::Shape{B * T, d});
    o = at->attn_sub_norm->forward(o);
    capture(L, "o", o, lq.o);
    ag::Variable h = ag::add(x, at->o_proj->forward_quantized(BitLinear::quantize_input(o, lq.o, nullptr, SparsityProbe::Out), tern));
    ag::Variable f = b->post_attention_layernorm->forward(h);
    capture(L, "gate", f, lq.gate_up);
    ag::Variable fq = BitLinear::quantize_input(f, lq.gate_up, nullptr, SparsityProbe::GateUp);
    ag::Variable g = ff->gate_proj->forward_quantized(fq, tern), u = ff->up_proj->forward_quantized(fq, tern);
    ag::Variable z = ff->ffn_sub_norm->forward(ag::mul(c.glu == nn::Glu::ReLU2 ? ag::relu2(g) : ag::silu(g), u));
    capture(L, "down", z, lq.down);
    x = ag::add(h, ff->down_proj->forward_quantized(BitLinear::quantize_input(z, lq.down, nullptr, SparsityProbe::Down), tern));
  }
  x = m.model->norm->forward(x);
  out.logits = ag::linear(x, m.lm_head ? m.lm_head->weight : m.model->embed_tokens->weight).value().to_vector();
  return out;
}

struct Agreement {
  double rel = 0;       // max |int - float| / max |float| over the logits
  int64_t flips = 0;    // activation codes that differ between the two paths
  int64_t codes = 0;    // activation codes compared
};
// Runs both paths on tokens. A code differs only where a quantizer input lies within fp32
// rounding of a decision boundary (the paths' GEMMs round differently); it then moves one
// quantization step and the logits legitimately differ by more than rounding.
Agreement compare_paths(nn::BitNetLM& m, const nn::InferenceEngine& eng, std::span<const int32_t> tokens) {
  const ActMode mode = eng.options().mode;
  const FloatPath fp = float_path_with_codes(m, mode, tokens);
  // Sanity: the op-for-op float path is BitNetLM::logits, bit for bit.
  EXPECT_EQ(fp.logits, float_logits(m, mode, tokens));
  Agreement a;
  nn::KVCache cache = eng.new_cache();
  const auto li = eng.forward(tokens, cache, false, nullptr, [&](const nn::ProjTrace& t) {
    const std::string n = t.name;
    if (n == "k" || n == "v" || n == "up") return;  // share the input of q / gate
    const auto& ref = fp.codes.at({t.layer, n});
    for (int64_t i = 0; i < t.n * t.in; ++i) a.flips += ref[size_t(i)] != t.x_codes[i];
    a.codes += t.n * t.in;
  });
  a.rel = rel_diff(li, fp.logits);
  return a;
}

TEST(Engine, MatchesFloatTrainingPathInEveryMode) {
  for (ActMode mode : kModes) {
    auto tm = random_model(mode);
    const nn::InferenceEngine eng(nn::InferenceWeights::from_model(*tm.model, /*keep_latent=*/true), {mode, {}});
    double worst = 0;
    int64_t flips = 0, codes = 0;
    for (uint64_t s = 0; s < 4; ++s) {
      const Agreement a = compare_paths(*tm.model, eng, random_tokens(17, 96, 100 + s));
      worst = std::max(worst, a.rel);
      flips += a.flips;
      codes += a.codes;
    }
    std::printf("%-9s random model: max |int - float| / max |float| logits = %.2e (%lld of %lld activation codes differ)\n",
                nn::to_string(mode).c_str(), worst, (long long)flips, (long long)codes);
    EXPECT_EQ(flips, 0);
    EXPECT_LT(worst, 1e-5) << nn::to_string(mode);
  }
}

TEST(Engine, MatchesFloatTrainingPathOnATrainedModel) {
  // Windows where every activation code agrees must match to 1e-5; a window where fp32 rounding
  // moved a code across a boundary is reported (and must be rare).
  const Trained& t = trained();
  for (ActMode mode : {ActMode::W158A8, ActMode::A48, ActMode::A48FP4}) {
    const nn::InferenceEngine eng(nn::InferenceWeights::from_model(*t.tm.model), {mode, {}});
    double worst_clean = 0, worst_flipped = 0;
    int clean = 0, windows = 0;
    int64_t flips = 0, codes = 0;
    for (int64_t w = 0; w < 8; ++w, ++windows) {
      const Agreement a = compare_paths(*t.tm.model, eng, std::span<const int32_t>(t.val.data() + 64 * w, 64));
      flips += a.flips;
      codes += a.codes;
      if (a.flips == 0) {
        ++clean;
        worst_clean = std::max(worst_clean, a.rel);
        EXPECT_LT(a.rel, 1e-5) << nn::to_string(mode) << " window " << w;
      } else {
        worst_flipped = std::max(worst_flipped, a.rel);
      }
    }
    std::printf("%-9s trained model, %d windows of 64 tokens: %d with identical activation codes, max rel logit "
                "diff %.2e; in the others a boundary flip cascaded to %lld of %lld codes, max rel diff %.2e\n",
                nn::to_string(mode).c_str(), windows, clean, worst_clean, (long long)flips, (long long)codes, worst_flipped);
    EXPECT_GE(clean, windows / 2);
  }
}

TEST(Engine, FpModeNeedsLatentWeights) {
  auto tm = random_model(ActMode::FP);
  try {
    nn::InferenceEngine eng(nn::InferenceWeights::from_model(*tm.model, false), {ActMode::FP, {}});
    FAIL() << "expected an error";
  } catch (const std::exception& e) {
    EXPECT_NE(std::string(e.what()).find("latent"), std::string::npos) << e.what();
  }
}

TEST(Engine, SparsityProbeMatchesTheFloatPath) {
  auto tm = random_model(ActMode::A48);
  const nn::InferenceEngine eng(nn::InferenceWeights::from_model(*tm.model), {ActMode::A48, {}});
  const auto tokens = random_tokens(17, 96, 9);
  nn::SparsityProbe pi, pf;
  eng.logits(tokens, &pi);
  tm.model->logits(tokens, 1, 17, &pf);
  for (auto k : {nn::SparsityProbe::QKV, nn::SparsityProbe::Out, nn::SparsityProbe::GateUp, nn::SparsityProbe::Down}) {
    EXPECT_EQ(pi.zeros[k], pf.zeros[k]) << k;
    EXPECT_EQ(pi.total[k], pf.total[k]) << k;
  }
  // relu²(gate) zeros: the integer path gives exact zeros where the float GEMM may leave ±1-ulp noise.
  EXPECT_EQ(pi.total[nn::SparsityProbe::Relu2Gate], pf.total[nn::SparsityProbe::Relu2Gate]);
  EXPECT_NEAR(pi.frac(nn::SparsityProbe::Relu2Gate), pf.frac(nn::SparsityProbe::Relu2Gate), 0.02);
  EXPECT_NEAR(nn::sparsity_report(pi, tm.model->config()).out, 0.5, 0.01);  // top-K 50%
}

// ---- (c) KV cache ------------------------------------------------------------------------------------

TEST(Engine, IncrementalDecodingEqualsFullSequence) {
  for (ActMode mode : {ActMode::A48, ActMode::W158A8, ActMode::FP}) {
    for (const nn::AttnQuant& aq : {nn::AttnQuant{}, nn::AttnQuant::make(3, 0, true, 4)}) {
      auto tm = random_model(mode);
      const nn::InferenceEngine eng(nn::InferenceWeights::from_model(*tm.model, true), {mode, aq});
      const auto tokens = random_tokens(23, 96, 11);
      const std::vector<float> full = eng.logits(tokens);
      // One token at a time, and a 7-token prefill followed by single tokens.
      for (int64_t prefill : {1, 7}) {
        nn::KVCache cache = eng.new_cache();
        std::vector<float> inc = eng.forward(std::span<const int32_t>(tokens.data(), size_t(prefill)), cache);
        for (size_t i = size_t(prefill); i < tokens.size(); ++i) {
          const auto row = eng.forward(std::span<const int32_t>(&tokens[i], 1), cache);
          inc.insert(inc.end(), row.begin(), row.end());
        }
        EXPECT_EQ(cache.size(), int64_t(tokens.size()));
        const double d = rel_diff(inc, full);
        // With quantized activations every integer GEMM and the per-row attention are independent
        // of the chunking: the cached K/V are bitwise those of the full forward, and only the fp32
        // LM head GEMM (blocked differently for 1 row) rounds differently. Mode fp's projections
        // are fp32 GEMMs too.
        nn::KVCache ref = eng.new_cache();
        eng.forward(tokens, ref);
        const bool same_kv = cache.k == ref.k && cache.v == ref.v;
        std::printf("%-9s attn %-16s prefill %lld: incremental vs full max rel diff %.2e, K/V cache %s\n",
                    nn::to_string(mode).c_str(), aq.str().c_str(), (long long)prefill, d,
                    same_kv ? "bitwise equal" : "differs");
        if (mode != ActMode::FP) {
          EXPECT_TRUE(same_kv);
        }
        EXPECT_LT(d, mode == ActMode::FP ? 5e-6 : 1e-6);
      }
      // last_only returns the last row of the full logits.
      nn::KVCache c2 = eng.new_cache();
      const auto last = eng.forward(tokens, c2, true);
      const std::vector<float> ref(full.end() - 96, full.end());
      EXPECT_LT(rel_diff(last, ref), 1e-6);
    }
  }
}

// ---- (d) low-bit attention -----------------------------------------------------------------------------

TEST(Engine, LowBitAttentionChangesLogitsALittle) {
  // Measured on the trained model: mean |Δlogit| / mean |logit| over 64 positions, and validation
  // perplexity. (Max-abs logit differences are dominated by activation codes that flip after a
  // small perturbation: INT4/top-K inputs are discontinuous functions of the attention output.)
  const Trained& t = trained();
  const auto w = nn::InferenceWeights::from_model(*t.tm.model, true);
  const std::span<const int32_t> tokens(t.val.data(), 64);
  struct Fig {
    double mean_rel, ppl;
  };
  std::map<ActMode, std::pair<std::vector<float>, double>> base;  // logits, ppl of fp32 attention
  auto run = [&](ActMode mode, const nn::AttnQuant& q) {
    if (!base.count(mode)) {
      const nn::InferenceEngine e(w, {mode, {}});
      base[mode] = {e.logits(tokens), trainers::infer::perplexity(e, t.val, 32, 1024).ppl};
    }
    const auto& [lb, pb] = base[mode];
    const nn::InferenceEngine e(w, {mode, q});
    const auto l = e.logits(tokens);
    double num = 0, den = 0;
    for (size_t i = 0; i < l.size(); ++i) num += std::fabs(double(l[i]) - lb[i]), den += std::fabs(double(lb[i]));
    return Fig{num / den, mode == ActMode::FP ? 0.0 : trainers::infer::perplexity(e, t.val, 32, 1024).ppl / pb};
  };
  using nn::AttnQuant;
  for (ActMode mode : {ActMode::A48, ActMode::W158A8}) {
    const Fig kv4 = run(mode, AttnQuant::make(4, 0)), qkv4 = run(mode, AttnQuant::make(0, 4)),
              kv3 = run(mode, AttnQuant::make(3, 0, true)), q4kv3 = run(mode, AttnQuant::make(3, 0, true, 4)),
              kv8 = run(mode, AttnQuant::make(8, 0)), qkv8 = run(mode, AttnQuant::make(0, 8));
    std::printf("%-7s mean rel logit change / ppl ratio: kv4 %.3f / %.4f, qkv4 %.3f / %.4f, kv3(bos4) %.3f / %.4f, "
                "q4kv3(bos4) %.3f / %.4f, kv8 %.4f / %.4f, qkv8 %.4f / %.4f\n",
                nn::to_string(mode).c_str(), kv4.mean_rel, kv4.ppl, qkv4.mean_rel, qkv4.ppl, kv3.mean_rel, kv3.ppl,
                q4kv3.mean_rel, q4kv3.ppl, kv8.mean_rel, kv8.ppl, qkv8.mean_rel, qkv8.ppl);
    for (const Fig& f : {kv4, qkv4, kv3, q4kv3}) {
      EXPECT_GT(f.mean_rel, 1e-3);  // it does something
      EXPECT_LT(f.mean_rel, 0.2);   // but not a lot
      EXPECT_NEAR(f.ppl, 1.0, 0.1);
    }
    EXPECT_LT(kv8.mean_rel, 0.5 * kv4.mean_rel);
    EXPECT_LT(qkv8.mean_rel, 0.5 * qkv4.mean_rel);
    EXPECT_NEAR(kv8.ppl, 1.0, 0.005);
    EXPECT_NEAR(qkv8.ppl, 1.0, 0.005);
  }
  // Without activation quantization the change shrinks steadily with the bits.
  double prev = 1.0;
  for (int b : {3, 4, 6, 8}) {
    const double m = run(ActMode::FP, AttnQuant::make(0, b, false)).mean_rel;
    std::printf("fp      qkv%d mean rel logit change %.4f\n", b, m);
    EXPECT_LT(m, prev);
    prev = m;
  }
  EXPECT_LT(prev, 1e-2);
  // The BOS position's precision matters with 3-bit K/V.
  EXPECT_NE(run(ActMode::A48, AttnQuant::make(3, 0, true)).mean_rel, run(ActMode::A48, AttnQuant::make(3, 0, false)).mean_rel);
}

TEST(Engine, BosPositionKeepsFourBitKV) {
  auto tm = random_model(ActMode::A48);
  const auto w = nn::InferenceWeights::from_model(*tm.model);
  const auto tokens = random_tokens(5, 96, 13);
  // Layer 0's K/V do not depend on the attention precision: compare caches.
  nn::KVCache ref = nn::InferenceEngine(w, {ActMode::A48, {}}).new_cache();
  nn::InferenceEngine(w, {ActMode::A48, {}}).forward(tokens, ref);
  nn::KVCache q = nn::InferenceEngine(w, {ActMode::A48, {}}).new_cache();
  nn::InferenceEngine(w, {ActMode::A48, nn::AttnQuant::make(3, 0, true)}).forward(tokens, q);
  const int64_t kvd = 2 * 12;
  std::vector<float> k4(static_cast<size_t>(kvd)), k3(static_cast<size_t>(4 * kvd));
  quant::uint_absmax(ref.k[0].data(), 2, 12, 4, k4.data(), nullptr, nullptr);
  quant::uint_absmax(ref.k[0].data() + kvd, 8, 12, 3, k3.data(), nullptr, nullptr);
  for (int64_t i = 0; i < kvd; ++i) EXPECT_EQ(q.k[0][size_t(i)], k4[size_t(i)]) << i;
  for (int64_t i = 0; i < 4 * kvd; ++i) EXPECT_EQ(q.k[0][size_t(kvd + i)], k3[size_t(i)]) << i;
}

// ---- compact checkpoints --------------------------------------------------------------------------------

TEST(Compact, RoundTripGivesIdenticalCodesScalesAndLogits) {
  const fs::path d = tmp_dir();
  auto tm = random_model(ActMode::A48);
  tm.tokenizer_proto = std::string("\x0a\x03pie\x00\xff", 7);
  const std::string path = (d / "m.bnc").string();
  const trainers::formats::CompactInfo info = trainers::formats::save_compact(path, tm, trainers::formats::CompactOptions{});
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
  m.weights->for_each_matrix([&](const std::string&, const nn::TernaryMatrix& x) { b.push_back(&x); });
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
  std::printf("compact: %lld ternary values in %lld bytes = %.3fx smaller than fp32 latents; file %lld bytes\n",
              (long long)info.ternary_params, (long long)info.ternary_bytes, info.ternary_ratio(),
              (long long)info.file_bytes);
  EXPECT_GE(info.ternary_ratio(), 15.0);
  // fp16 embeddings: smaller file, logits close.
  const trainers::formats::CompactInfo i16 = trainers::formats::save_compact((d / "h.bnc").string(), tm, trainers::formats::CompactOptions{true});
  EXPECT_EQ(i16.file_bytes, info.file_bytes - 2 * 2 * 96 * 48);
  const auto m16 = trainers::formats::load_compact((d / "h.bnc").string());
  for (size_t i = 0; i < ref->embed.size(); ++i)  // binary16 keeps 11 significant bits
    ASSERT_LE(std::fabs(m16.weights->embed[i] - ref->embed[i]), std::ldexp(std::fabs(ref->embed[i]), -11) + 1e-7f) << i;
  const auto l16 = nn::InferenceEngine(m16.weights, {ActMode::A48, {}}).logits(tokens),
             l32 = nn::InferenceEngine(ref, {ActMode::A48, {}}).logits(tokens);
  double num = 0, den = 0;
  for (size_t i = 0; i < l16.size(); ++i) num += std::fabs(double(l16[i]) - l32[i]), den += std::fabs(double(l32[i]));
  EXPECT_LT(num / den, 2e-2);  // mean relative change of the logits
  // Mode fp cannot be served from a compact file; a model saved in mode fp is refused.
  EXPECT_THROW(nn::InferenceEngine(m.weights, {ActMode::FP, {}}), std::exception);
  auto tfp = random_model(ActMode::FP);
  EXPECT_THROW(trainers::formats::save_compact((d / "fp.bnc").string(), tfp), std::exception);
  fs::remove_all(d);
}

TEST(Compact, SizeRatioOnAPaperShapedLayer) {
  // d 256, ffn 704 (not a multiple of 4 elements per row is irrelevant: packing is over the tensor).
  const fs::path d = tmp_dir();
  auto tm = random_model(ActMode::A48, 3, {"model.d_model=256", "model.n_heads=4", "model.n_kv_heads=4",
                                           "model.ffn_dim=704", "model.n_layers=1"});
  const auto info = trainers::formats::save_compact((d / "m.bnc").string(), tm, trainers::formats::CompactOptions{});
  std::printf("compact (d 256, ffn 704): ternary %lld values, %lld bytes, ratio %.4fx\n", (long long)info.ternary_params,
              (long long)info.ternary_bytes, info.ternary_ratio());
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
  EXPECT_NE(error_of(write("flip.bnc", flipped)).find("CRC-32 mismatch"), std::string::npos) << error_of(write("flip.bnc", flipped));
  EXPECT_NE(error_of(write("trunc.bnc", bytes.substr(0, bytes.size() - 100))).find("truncated"), std::string::npos);
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
  EXPECT_EQ(trainers::formats::crc32("123456789", 9), 0xCBF43926u);  // the CRC-32/ISO-HDLC check value
}

// ---- generation -----------------------------------------------------------------------------------------

TEST(Generate, GreedyIsDeterministicAndEqualsFullForwardArgmax) {
  auto tm = random_model(ActMode::A48);
  const nn::InferenceEngine eng(nn::InferenceWeights::from_model(*tm.model), {ActMode::A48, {}});
  const std::vector<int32_t> prompt = random_tokens(4, 96, 21);
  trainers::infer::GenerateOptions o;
  o.sampling.temperature = 0;
  o.max_tokens = 20;
  const auto a = trainers::infer::generate(eng, prompt, o), b = trainers::infer::generate(eng, prompt, o);
  EXPECT_EQ(a, b);
  ASSERT_EQ(a.size(), 20u);
  // The KV-cached loop picks the argmax of the full-sequence forward at every step.
  std::vector<int32_t> seq = prompt;
  for (int32_t id : a) {
    const auto lg = eng.logits(seq);
    const float* last = lg.data() + (seq.size() - 1) * 96;
    EXPECT_EQ(int32_t(std::max_element(last, last + 96) - last), id);
    seq.push_back(id);
  }
  // top-k 1 and a tiny top-p are greedy too; a stop token ends generation early.
  o.sampling = {1.0, 1, 1.0, 5};
  EXPECT_EQ(trainers::infer::generate(eng, prompt, o), a);
  o.sampling = {1.0, 0, 1e-6, 5};
  EXPECT_EQ(trainers::infer::generate(eng, prompt, o), a);
  o.stop_token = a[3];
  EXPECT_EQ(trainers::infer::generate(eng, prompt, o).size(), size_t(std::find(a.begin(), a.end(), a[3]) - a.begin()));
}

TEST(Generate, SamplingWithASeedIsReproducible) {
  auto tm = random_model(ActMode::A48);
  const nn::InferenceEngine eng(nn::InferenceWeights::from_model(*tm.model), {ActMode::A48, {}});
  const std::vector<int32_t> prompt = random_tokens(3, 96, 22);
  trainers::infer::GenerateOptions o;
  o.max_tokens = 30;
  o.sampling = {1.0, 0, 1.0, 123};
  const auto a = trainers::infer::generate(eng, prompt, o), b = trainers::infer::generate(eng, prompt, o);
  EXPECT_EQ(a, b);
  o.sampling.seed = 124;
  EXPECT_NE(trainers::infer::generate(eng, prompt, o), a);
  o.sampling = {0.7, 10, 0.9, 123};
  EXPECT_EQ(trainers::infer::generate(eng, prompt, o), trainers::infer::generate(eng, prompt, o));
}

TEST(Generate, SamplerFollowsTheDistribution) {
  const std::vector<float> logits = {std::log(0.5f), std::log(0.3f), std::log(0.2f)};
  trainers::infer::Sampler s({1.0, 0, 1.0, 9});
  int counts[3] = {};
  for (int i = 0; i < 20000; ++i) ++counts[s.next(logits)];
  EXPECT_NEAR(counts[0] / 20000.0, 0.5, 0.015);
  EXPECT_NEAR(counts[1] / 20000.0, 0.3, 0.015);
  EXPECT_NEAR(counts[2] / 20000.0, 0.2, 0.015);
  trainers::infer::Sampler k2({1.0, 2, 1.0, 9}), p7({1.0, 0, 0.7, 9}), cold({0.25, 0, 1.0, 9});
  int c2 = 0, c7 = 0, c0 = 0;
  for (int i = 0; i < 5000; ++i) {
    c2 += k2.next(logits) == 2;
    c7 += p7.next(logits) == 2;  // 0.5 + 0.3 >= 0.7: token 2 is outside the nucleus
    c0 += cold.next(logits) == 0;
  }
  EXPECT_EQ(c2, 0);
  EXPECT_EQ(c7, 0);
  EXPECT_GT(c0, 0.8 * 5000);  // p ∝ p^4: 0.0625 / (0.0625 + 0.0081 + 0.0016) ≈ 0.87
}

TEST(Generate, TrainedModelCompletesAPhrase) {
  const Trained& t = trained();
  const nn::InferenceEngine eng(nn::InferenceWeights::from_model(*t.tm.model), {t.tm.model->mode(), {}});
  trainers::infer::GenerateOptions o;
  o.sampling.temperature = 0;
  o.max_tokens = 12;
  const auto out = trainers::infer::generate(eng, bytes_of("the cat sat on the"), o);
  const std::string text(out.begin(), out.end());
  std::printf("greedy: 'the cat sat on the' -> '%s'\n", text.c_str());
  EXPECT_EQ(text.rfind(" mat.", 0), 0u) << text;
}

// ---- evaluation -------------------------------------------------------------------------------------------

TEST(Eval, PerplexityEqualsExpMeanLossOfTheFloatPath) {
  const Trained& t = trained();
  nn::BitNetLM& model = *t.tm.model;
  for (ActMode mode : {ActMode::A48, ActMode::W158A8}) {
    const nn::InferenceEngine eng(nn::InferenceWeights::from_model(model), {mode, {}});
    const int64_t seq = 32, max_tokens = 512;
    const auto r = trainers::infer::perplexity(eng, t.val, seq, max_tokens);
    const auto starts = trainers::infer::eval_windows(int64_t(t.val.size()), seq, max_tokens);
    EXPECT_EQ(r.windows, int64_t(starts.size()));
    EXPECT_EQ(r.windows, 512 / 32);
    model.set_mode(mode);
    double sum = 0;
    for (int64_t s : starts) {
      const std::span<const int32_t> x(t.val.data() + s, size_t(seq)), y(t.val.data() + s + 1, size_t(seq));
      sum += model.loss(x, y, 1, seq).value()[0];
    }
    model.set_mode(t.tm.model->mode());
    const double ref = std::exp(sum / double(starts.size()));
    std::printf("%-7s eval ppl %.6f, exp(mean BitNetLM::loss) %.6f, rel diff %.1e\n", nn::to_string(mode).c_str(), r.ppl,
                ref, std::fabs(r.ppl / ref - 1));
    EXPECT_NEAR(r.ppl / ref, 1.0, 1e-5);
    EXPECT_LT(r.ppl, 4.0);  // the phrases are learnt
  }
  model.set_mode(ActMode::A48);
}

TEST(Eval, WindowsAndShardLoading) {
  EXPECT_EQ(trainers::infer::eval_windows(10, 3, 0), (std::vector<int64_t>{0, 3, 6}));  // 9 predicted, token 9 last
  EXPECT_EQ(trainers::infer::eval_windows(9, 3, 0), (std::vector<int64_t>{0, 3}));
  EXPECT_EQ(trainers::infer::eval_windows(100, 3, 7), (std::vector<int64_t>{0, 3}));
  EXPECT_TRUE(trainers::infer::eval_windows(3, 3, 0).empty());
  const fs::path d = tmp_dir();
  data::write_shard((d / "a.bin").string(), {1, 2, 3}, 10);
  data::write_shard((d / "b.bin").string(), {4, 5}, 10);
  EXPECT_EQ(trainers::infer::load_eval_tokens({(d / "a.bin").string(), (d / "b.bin").string()}, nullptr),
            (std::vector<int32_t>{1, 2, 3, 4, 5}));
  std::ofstream((d / "t.txt").string()) << "hello\n";
  EXPECT_THROW(trainers::infer::load_eval_tokens({(d / "t.txt").string()}, nullptr), std::exception);  // text needs a tokenizer
  fs::remove_all(d);
}

TEST(Eval, MultipleChoiceScoresAreLogLikelihoodsAndTheTrainedModelPicksThePhrase) {
  const Trained& t = trained();
  const fs::path d = tmp_dir();
  {
    std::ofstream f(d / "mc.jsonl");
    f << R"({"context": "the cat sat on the", "choices": [" park.", " mat.", " pond."], "answer": 1})" << "\n\n";
    f << R"({"context": "a dog ran in the", "choices": [" park.", " tree."], "answer": 0})" << "\n";
    f << R"({"context": "my bird flew over the", "choices": [" mat.", " pond.", " tree."], "answer": 2})" << "\n";
    f << R"({"context": "one fish swam in the", "choices": [" pond.", " park."], "answer": 0})" << "\n";
  }
  const auto items = trainers::infer::read_mc_jsonl((d / "mc.jsonl").string());
  ASSERT_EQ(items.size(), 4u);
  EXPECT_EQ(items[0].choices[1], " mat.");
  nn::BitNetLM& model = *t.tm.model;
  const nn::InferenceEngine eng(nn::InferenceWeights::from_model(model), {model.mode(), {}});
  const auto r = trainers::infer::score_mc(eng, items, bytes_of);
  // Hand check: log p of each choice's bytes given the context, from the float path's logits.
  for (size_t i = 0; i < items.size(); ++i)
    for (size_t c = 0; c < items[i].choices.size(); ++c) {
      const auto ctx = bytes_of(items[i].context), ch = bytes_of(items[i].choices[c]);
      std::vector<int32_t> seq = ctx;
      seq.insert(seq.end(), ch.begin(), ch.end());
      const auto lg = float_logits(model, model.mode(), seq);
      double lp = 0;
      for (size_t k = 0; k < ch.size(); ++k) {
        const float* row = lg.data() + (ctx.size() - 1 + k) * 256;
        double z = 0;
        for (int j = 0; j < 256; ++j) z += std::exp(double(row[j]));
        lp += double(row[ch[k]]) - std::log(z);
      }
      EXPECT_NEAR(r.scores[i][c].logprob, lp, 1e-3 + 1e-5 * std::fabs(lp)) << i << "," << c;
      EXPECT_EQ(r.scores[i][c].tokens, int64_t(ch.size()));
    }
  std::printf("MC: acc %.2f, acc_norm %.2f; item 0 log-likelihoods %.3f %.3f %.3f\n", r.acc, r.acc_norm,
              r.scores[0][0].logprob, r.scores[0][1].logprob, r.scores[0][2].logprob);
  EXPECT_EQ(r.items, 4);
  EXPECT_GE(r.acc, 0.75);
  // Bad lines are reported with their line number.
  std::ofstream(d / "bad.jsonl") << R"({"context": "x", "choices": ["a", "b"], "answer": 0})" << "\n"
                                 << R"({"context": "x", "choices": ["a"], "answer": 0})" << "\n";
  try {
    trainers::infer::read_mc_jsonl((d / "bad.jsonl").string());
    FAIL();
  } catch (const std::exception& e) {
    EXPECT_NE(std::string(e.what()).find("bad.jsonl:2"), std::string::npos) << e.what();
  }
  fs::remove_all(d);
}

TEST(Eval, DumpLogitsWritesBothPaths) {
  const fs::path d = tmp_dir();
  auto tm = random_model(ActMode::A48);
  const nn::InferenceEngine eng(nn::InferenceWeights::from_model(*tm.model), {ActMode::A48, {}});
  const std::vector<int32_t> toks = {1, 2, 3, 50};
  trainers::infer::dump_logits((d / "l.safetensors").string(), eng, toks, tm.model.get(), "m");
  const auto f = autograd::read_safetensors((d / "l.safetensors").string());
  const auto li = f.f32("logits").to_vector(), lf = f.f32("logits_float").to_vector();
  EXPECT_EQ(li, eng.logits(toks));
  EXPECT_LT(rel_diff(li, lf), 1e-5);
  EXPECT_EQ(f.find("tokens")->dtype, "I32");
  EXPECT_EQ(f.metadata.at("mode"), "a4.8");
  fs::remove_all(d);
}
