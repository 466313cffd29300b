// Shared helpers of the export tests: a trained tiny model per process, export options, error
// capture.
#pragma once

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

inline std::string read_bytes(const fs::path& p) {
  std::ifstream f(p, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>());
}

// Plain English-like text with digits and punctuation, one sentence per line.
inline void write_corpus(const fs::path& p, int lines, uint64_t seed) {
  static const char* words[] = {
      "the",         "a",      "model", "weights", "are",   "ternary",  "and",
      "activations", "use",    "four",  "bits",    "while", "training", "runs",
      "on",          "many",   "cpus",  "quickly", "of",    "with",     "quantized",
      "values",      "sparse", "layer", "token",   "batch"};
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
inline fs::path make_model(const std::string& tag, std::vector<std::string> sets = {},
                           bool tokenizer = true) {
  std::vector<std::string> base = {
      "model.vocab_size=400", "model.d_model=32", "model.n_layers=2",          "model.n_heads=4",
      "model.n_kv_heads=2",   "model.ffn_dim=64", "model.tie_embeddings=true", "data.seq_len=48"};
  base.insert(base.end(), sets.begin(), sets.end());
  const trainers::config::Config cfg =
      trainers::config::load_config(std::string(BITNET_SOURCE_DIR) + "/configs/tiny.yaml", base);
  nn::BitNetLM m(cfg.model, 7);
  autograd::Rng r(11);
  for (const auto& e : m.params().entries()) {
    float* p = e.var.data();
    for (int64_t i = 0; i < e.numel; ++i)
      p[i] = e.init == nn::Init::Ones ? float(1.0 + 0.2 * r.normal()) : float(0.05 * r.normal());
  }
  const fs::path path = g->dir / (tag + ".safetensors");
  trainers::formats::save_model(path.string(), m, nullptr,
                                {{"config", cfg.resolved_yaml}, {"step", "5"}, {"mode", "a4.8"}},
                                tokenizer ? g->proto : "");
  return path;
}

inline ExportOptions fmt(ExportFormat f) {
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

inline nlohmann::json read_json(const fs::path& p) { return nlohmann::json::parse(read_bytes(p)); }

}  // namespace
