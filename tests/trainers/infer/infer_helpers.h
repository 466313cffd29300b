// Shared helpers of the inference tests: small configs, random and trained models, the float path's
// logits.
#pragma once

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

const ActMode kModes[] = {ActMode::FP, ActMode::W158A8, ActMode::A48, ActMode::A48FP4,
                          ActMode::Int4All};

inline fs::path tmp_dir() {
  const auto* ti = ::testing::UnitTest::GetInstance()->current_test_info();
  fs::path d =
      fs::temp_directory_path() / ("bitnet_inference_" + std::string(ti->test_suite_name()) + "_" +
                                   ti->name() + "_" + std::to_string(::getpid()));
  fs::remove_all(d);
  fs::create_directories(d);
  return d;
}

// max |a - b| / max |b|
inline double rel_diff(const std::vector<float>& a, const std::vector<float>& b) {
  EXPECT_EQ(a.size(), b.size());
  double num = 0, den = 0;
  for (size_t i = 0; i < a.size() && i < b.size(); ++i) {
    num = std::max(num, std::fabs(double(a[i]) - double(b[i])));
    den = std::max(den, std::fabs(double(b[i])));
  }
  return den > 0 ? num / den : num;
}

// The model test's shape: head_dim 12 (not a power of two), GQA (4 heads, 2 KV heads).
inline trainers::config::Config small_config(std::vector<std::string> sets = {}) {
  for (const char* s :
       {"model.vocab_size=96", "model.d_model=48", "model.n_layers=2", "model.n_heads=4",
        "model.n_kv_heads=2", "model.ffn_dim=64", "model.init_std=0.1"})
    sets.insert(sets.begin(), s);
  return trainers::config::load_config(std::string(BITNET_SOURCE_DIR) + "/configs/tiny.yaml", sets);
}

// A random-parameter model in `mode` (init std 0.1 for some dynamic range), as a TrainedModel.
inline trainers::formats::TrainedModel random_model(ActMode mode, uint64_t seed = 7,
                                                    std::vector<std::string> sets = {}) {
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

inline std::vector<int32_t> random_tokens(int64_t n, int64_t vocab, uint64_t seed) {
  autograd::Rng r(seed);
  std::vector<int32_t> t(static_cast<size_t>(n));
  for (auto& v : t) v = int32_t(r.below(uint64_t(vocab)));
  return t;
}

inline std::vector<float> float_logits(nn::BitNetLM& m, ActMode mode,
                                       std::span<const int32_t> tokens) {
  const ActMode saved = m.mode();
  m.set_mode(mode);
  m.set_integer_gemm(false);  // the training model's float path, op for op
  auto v = m.logits(tokens, 1, int64_t(tokens.size())).value().to_vector();
  m.set_integer_gemm(true);
  m.set_mode(saved);
  return v;
}

// ---- a tiny model trained on byte-level text with fixed phrases (for MC / generation) ----------
const char* kPhrases[] = {"the cat sat on the mat. ", "a dog ran in the park. ",
                          "my bird flew over the tree. ", "one fish swam in the pond. "};

inline std::vector<int32_t> bytes_of(const std::string& s) {
  std::vector<int32_t> v;
  for (unsigned char c : s) v.push_back(int32_t(c));
  return v;
}

inline std::vector<uint32_t> phrase_corpus(int64_t n, uint64_t seed) {
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

inline const Trained& trained() {
  static Trained* t = [] {
    auto* r = new Trained;
    r->dir = fs::temp_directory_path() / ("bitnet_inference_trained_" + std::to_string(::getpid()));
    fs::remove_all(r->dir);
    fs::create_directories(r->dir);
    data::write_shard((r->dir / "train.bin").string(), phrase_corpus(40000, 1), 256);
    const auto val = phrase_corpus(4000, 2);
    data::write_shard((r->dir / "val.bin").string(), val, 256);
    r->val.assign(val.begin(), val.end());
    const trainers::config::Config cfg =
        trainers::config::load_config(std::string(BITNET_SOURCE_DIR) + "/configs/tiny.yaml",
                                      {"data.train=" + (r->dir / "train.bin").string(),
                                       "data.val=" + (r->dir / "val.bin").string(),
                                       "training.out_dir=" + (r->dir / "run").string(),
                                       "training.steps=200", "training.eval_every=0"});
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
