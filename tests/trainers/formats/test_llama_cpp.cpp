// Cross-runtime test: our GGUF exports loaded by upstream llama.cpp (scripts/llama_cpp builds it
// and tools/llama_probe.cpp from the npm package llama.rn) against our own w158a8 forward — what
// `bitnet eval --mode w158a8` computes: per-position logits, perplexity, greedy continuations.
//
// Two references of ours: `w158a8` (ternary weights, INT8 absmax per token on every BitLinear
// input: `bitnet eval --mode w158a8`) and `float activations` (the same ternary weights Wq = c·a,
// activations unquantized: what a runtime computes from F32/F16 weights). Rules (docs/EXPORT.md,
// "Cross-runtime test"), tolerances from measurement on this test's model:
//  - F32 / F16 (llama.cpp multiplies float activations; F16 rounds them to f16): against
//    `float activations`, max |Δ logit| ≤ 1e-5 (F32) / 2e-3 (F16) of max |our logit|, perplexity
//    within 1e-3 relative (measured 2e-8 / 2e-5); the gap to `w158a8` is printed (≈1e-2: our
//    INT8 activations).
//  - TQ2_0 / TQ1_0 (ggml rounds the activations to Q8_K: INT8 absmax per 256-element block, so
//    per token for d_model = 256 but two blocks for the down projection's 512 inputs): against
//    `w158a8`, max |Δ logit| ≤ 4e-2 of max |our logit| and perplexity within 1e-2 relative
//    (measured 2.5e-2 and 6.2e-3): not the 1e-3 the issue asks for, see docs/EXPORT.md.
//  - greedy, 20 tokens from the ids: equal, except that at a step where our top-2 logits differ
//    by less than the logit tolerance (a near-tie) the two may pick differently, and the
//    comparison stops there.
#include "tests/trainers/formats/export_helpers.h"

#include <array>
#include <cstdio>
#include <sstream>

#include "autograd/tape.h"

namespace {

const fs::path kLlamaDir = BITNET_LLAMA_DIR;  // build/llama.cpp-<llama.rn version>
const fs::path kProbe = kLlamaDir / "bin/llama_probe";

struct ProbeRun {
  int rc = -1;
  std::string out;
  std::map<std::string, std::string> lines;  // first word -> rest of the line
  std::vector<int32_t> greedy;
  std::vector<float> logits;
};

ProbeRun probe(const fs::path& gguf, const std::vector<int32_t>& ids, int greedy) {
  std::string list;
  for (int32_t id : ids) list += (list.empty() ? "" : ",") + std::to_string(id);
  const fs::path lf = gguf.string() + ".logits";
  const fs::path log = gguf.string() + ".log";
  const std::string cmd = kProbe.string() + " " + gguf.string() + " --tokens " + list +
                          " --logits " + lf.string() + " --greedy " + std::to_string(greedy) +
                          " > " + log.string() + " 2>&1";
  ProbeRun r;
  r.rc = std::system(cmd.c_str());
  r.out = read_bytes(log);
  std::istringstream in(r.out);
  for (std::string line; std::getline(in, line);) {
    const size_t sp = line.find(' ');
    const std::string k = line.substr(0, sp),
                      v = sp == std::string::npos ? "" : line.substr(sp + 1);
    if (!r.lines.count(k)) r.lines[k] = v;
    if (k == "greedy") {
      std::istringstream g(v);
      for (int32_t id; g >> id;) r.greedy.push_back(id);
    }
  }
  if (r.rc == 0) {
    const std::string b = read_bytes(lf);
    r.logits.resize(b.size() / 4);
    std::memcpy(r.logits.data(), b.data(), r.logits.size() * 4);
  }
  return r;
}

// Our logits in mode `mode` (W158A8: ternary weights, INT8 absmax per token on every input).
std::vector<float> our_logits(nn::BitNetLM& m, const std::vector<int32_t>& ids,
                              nn::ActMode mode = nn::ActMode::W158A8) {
  autograd::NoGradGuard ng;
  m.set_mode(mode);
  const autograd::Tensor t = m.logits(ids, 1, int64_t(ids.size())).value();
  return std::vector<float>(t.data(), t.data() + t.numel());
}

// Ternary weights with float activations (what llama.cpp computes from F32/F16 weights): the
// BitLinear weights replaced by their ternarized values Wq = c·a, run unquantized (mode fp).
std::vector<float> our_float_act_logits(const fs::path& model, const std::vector<int32_t>& ids) {
  const auto tm = trainers::formats::load_trained_model(model.string());
  for (const auto& e : tm.model->params().entries())
    if (trainers::formats::is_bitlinear_weight(e.name)) {
      std::vector<float> wq(size_t(e.numel));
      quant::ternary_absmean(e.var.data(), e.numel, wq.data(), nullptr);
      std::memcpy(e.var.data(), wq.data(), wq.size() * 4);
    }
  return our_logits(*tm.model, ids, nn::ActMode::FP);
}

double mean_nll(const std::vector<float>& logits, const std::vector<int32_t>& ids, int64_t V) {
  double nll = 0;
  for (size_t t = 0; t + 1 < ids.size(); ++t) {
    const float* l = logits.data() + t * size_t(V);
    double mx = l[0], z = 0;
    for (int64_t v = 1; v < V; ++v) mx = std::max(mx, double(l[v]));
    for (int64_t v = 0; v < V; ++v) z += std::exp(double(l[v]) - mx);
    nll += -(double(l[ids[t + 1]]) - mx - std::log(z));
  }
  return nll / double(ids.size() - 1);
}

struct Step {
  int32_t id;
  float gap;  // top-1 minus top-2 logit
};
std::vector<Step> our_greedy(nn::BitNetLM& m, std::vector<int32_t> ids, int n) {
  const int64_t V = m.config().vocab_size;
  std::vector<Step> s;
  for (int k = 0; k < n; ++k) {
    const std::vector<float> l = our_logits(m, ids);
    const float* last = l.data() + (ids.size() - 1) * size_t(V);
    int32_t best = 0;
    for (int64_t v = 1; v < V; ++v)
      if (last[v] > last[best]) best = int32_t(v);
    float second = -INFINITY;
    for (int64_t v = 0; v < V; ++v)
      if (v != best) second = std::max(second, last[v]);
    s.push_back({best, last[best] - second});
    ids.push_back(best);
  }
  return s;
}

// Whether the built llama.cpp maps "relu2" for the bitnet arch (its source tree, as built).
bool llama_reads_relu2() {
  const std::string model = read_bytes(kLlamaDir / "src/src/llama-model.cpp");
  const std::string bitnet = read_bytes(kLlamaDir / "src/src/models/bitnet.cpp");
  return model.find("\"relu2\"") != std::string::npos &&
         bitnet.find("LLM_KV_HIDDEN_ACT") != std::string::npos;
}

// Tolerances (relative to max |our logit|; perplexity relative), see the rules above.
bool float_type(const std::string& type) { return type == "f32" || type == "f16"; }
float logit_tol(const std::string& type) {
  return type == "f32" ? 1e-5f : type == "f16" ? 2e-3f : 4e-2f;
}
double ppl_tol(const std::string& type) { return float_type(type) ? 1e-3 : 1e-2; }

struct Case {
  std::string glu, type;
};

class LlamaCpp : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!fs::exists(kProbe))
      FAIL() << kProbe << " is missing: run scripts/llama_cpp (the ctest fixture llama_cpp_build "
             << "does; it needs npm)";
  }
};

void run_case(const Case& c) {
  const std::string tag = "ll_" + c.glu + "_" + c.type;
  const fs::path model =
      make_model(tag, {"model.glu=" + c.glu, "model.d_model=256", "model.ffn_dim=512",
                       "model.n_heads=4", "model.n_kv_heads=2", "model.n_layers=2"});
  const auto tm = trainers::formats::load_trained_model(model.string());
  ExportOptions o = fmt(ExportFormat::GGUF);
  o.target = "llama.cpp";
  o.type = c.type;
  const fs::path gguf = g->dir / (tag + ".gguf");
  trainers::formats::export_model(tm, gguf.string(), o);
  const std::vector<int32_t> ids = trainers::formats::reference_tokens(tm, 32);
  const int64_t V = tm.model->config().vocab_size;
  const ProbeRun r = probe(gguf, ids, 20);
  ASSERT_EQ(r.rc, 0) << r.out;
  EXPECT_EQ(r.lines.at("arch"), "bitnet");
  EXPECT_EQ(r.lines.at("meta"),
            "bitnet.hidden_activation " + std::string(c.glu == "relu2" ? "relu2" : "silu"));
  ASSERT_EQ(r.logits.size(), ids.size() * size_t(V)) << r.out;

  const std::vector<float> ours = our_logits(*tm.model, ids);
  const std::vector<float> ours_fa = our_float_act_logits(model, ids);
  float max_abs = 0, max_diff = 0, max_diff_fa = 0;
  for (size_t i = 0; i < ours.size(); ++i) {
    max_abs = std::max(max_abs, std::fabs(ours[i]));
    max_diff = std::max(max_diff, std::fabs(ours[i] - r.logits[i]));
    max_diff_fa = std::max(max_diff_fa, std::fabs(ours_fa[i] - r.logits[i]));
  }
  const double nll_ours = mean_nll(ours, ids, V), nll_llama = std::stod(r.lines.at("nll"));
  const double nll_fa = mean_nll(ours_fa, ids, V);
  const double ppl_rel = std::fabs(std::exp(nll_llama - nll_ours) - 1.0);
  const double ppl_rel_fa = std::fabs(std::exp(nll_llama - nll_fa) - 1.0);
  const bool computes = c.glu == "swiglu" || llama_reads_relu2();
  std::printf(
      "[llama.cpp %s] %s %s: loads; %llu bytes; ppl llama.cpp %.6f, ours w158a8 %.6f "
      "(rel %.2e, max|dlogit| %.2e of max|logit| %.3f), ours float activations %.6f "
      "(rel %.2e, max|dlogit| %.2e)\n",
      kLlamaDir.filename().c_str(), c.glu.c_str(), c.type.c_str(),
      (unsigned long long)fs::file_size(gguf), std::exp(nll_llama), std::exp(nll_ours), ppl_rel,
      max_diff / max_abs, max_abs, std::exp(nll_fa), ppl_rel_fa, max_diff_fa / max_abs);
  if (!computes) {
    // This llama.cpp ignores bitnet.hidden_activation (SiLU gating): the file loads and carries
    // the key, and the logits are measurably not ours.
    std::printf(
        "[llama.cpp] this version does not read bitnet.hidden_activation: it computes "
        "SiLU gating for the ReLU² model (loads, key present; logits differ)\n");
    EXPECT_GT(max_diff, logit_tol(c.type) * max_abs);
    return;
  }
  // F32/F16 against the float-activation forward, TQ types against w158a8
  const bool fl = float_type(c.type);
  EXPECT_LE(fl ? max_diff_fa : max_diff, logit_tol(c.type) * max_abs) << c.glu << " " << c.type;
  EXPECT_LE(fl ? ppl_rel_fa : ppl_rel, ppl_tol(c.type)) << c.glu << " " << c.type;

  const std::vector<Step> mine = our_greedy(*tm.model, ids, 20);
  ASSERT_EQ(r.greedy.size(), 20u) << r.out;
  int equal = 0;
  for (size_t k = 0; k < mine.size(); ++k) {
    if (mine[k].id == r.greedy[k]) {
      ++equal;
      continue;
    }
    EXPECT_LT(mine[k].gap, logit_tol(c.type) * max_abs)
        << "greedy step " << k << ": ours " << mine[k].id << ", llama.cpp " << r.greedy[k]
        << ", our top-2 gap " << mine[k].gap << " is no near-tie";
    std::printf("[llama.cpp] greedy: near-tie at step %zu (gap %.3e), comparison stops\n", k,
                mine[k].gap);
    break;
  }
  std::printf("[llama.cpp] greedy: %d of 20 tokens equal before any near-tie\n", equal);
}

TEST_F(LlamaCpp, SwigluF32) { run_case({"swiglu", "f32"}); }
TEST_F(LlamaCpp, SwigluF16) { run_case({"swiglu", "f16"}); }
TEST_F(LlamaCpp, SwigluTq2_0) { run_case({"swiglu", "tq2_0"}); }
TEST_F(LlamaCpp, SwigluTq1_0) { run_case({"swiglu", "tq1_0"}); }
TEST_F(LlamaCpp, Relu2F32) { run_case({"relu2", "f32"}); }
TEST_F(LlamaCpp, Relu2F16) { run_case({"relu2", "f16"}); }
TEST_F(LlamaCpp, Relu2Tq2_0) { run_case({"relu2", "tq2_0"}); }

TEST_F(LlamaCpp, BitnetCppTargetIsUnknownUpstream) {
  // arch bitnet-b1.58 is bitnet.cpp's: upstream llama.cpp refuses it by name
  const fs::path model = make_model("ll_b158", {"model.d_model=256", "model.ffn_dim=512"});
  const auto tm = trainers::formats::load_trained_model(model.string());
  ExportOptions o = fmt(ExportFormat::GGUF);
  o.target = "bitnet.cpp";
  const fs::path gguf = g->dir / "ll_b158.gguf";
  trainers::formats::export_model(tm, gguf.string(), o);
  const ProbeRun r = probe(gguf, trainers::formats::reference_tokens(tm, 8), 0);
  EXPECT_NE(r.rc, 0);
  EXPECT_NE(r.out.find("unknown model architecture: 'bitnet-b1.58'"), std::string::npos) << r.out;
}

}  // namespace
