// Shared helpers of the checkpoint tests: temp runs, training to a step, flattened state, metrics
// comparison.
#pragma once

#include <fcntl.h>
#include <gtest/gtest.h>
#include <hdf5.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <nlohmann/json.hpp>
#include <thread>

#include "autograd/kernels.h"
#include "autograd/random.h"
#include "data/tokens.h"
#include "quant/igemm.h"
#include "tests/synthetic_tokens.h"
#include "tests/test_helpers.h"
#include "trainers/config/config.h"
#include "trainers/formats/checkpoint.h"
#include "trainers/formats/trained_model.h"
#include "trainers/train/trainer.h"

extern char** environ;

namespace fs = std::filesystem;
using trainers::config::Config;

namespace {
using testdata::error_of;
using testdata::synthetic;

inline std::string slurp(const fs::path& p) {
  std::ifstream f(p, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>());
}
inline void spit(const fs::path& p, const std::string& s) {
  std::ofstream f(p, std::ios::binary | std::ios::trunc);
  f.write(s.data(), std::streamsize(s.size()));
}

// A scratch directory with tiny train/val shards; runs go to dir/<name>. Tests that check the
// arithmetic (bit-exact resume) use the environment's thread count (ctest: 2); the others run on
// one thread (single_thread), which keeps them fast on a loaded machine.
struct Tmp {
  fs::path dir;
  bool single_thread = false;
  Tmp() {
    dir = fs::temp_directory_path() /
          ("bitnet_ckpt_" + std::to_string(getpid()) + "_" +
           ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(dir);
    fs::create_directories(dir / "data");
    data::write_shard((dir / "data/train.bin").string(), synthetic(60000, 256, 1), 256);
    data::write_shard((dir / "data/val.bin").string(), synthetic(6000, 256, 2), 256);
  }
  ~Tmp() { fs::remove_all(dir); }
  // --set overrides of a 24-step tiny run (stage switch at 18, LR/WD switch at 12) into dir/run.
  std::vector<std::string> sets(const std::string& run, std::vector<std::string> extra = {}) const {
    std::vector<std::string> s = {"data.train=" + (dir / "data/train.bin").string(),
                                  "data.val=" + (dir / "data/val.bin").string(),
                                  "training.out_dir=" + (dir / run).string(),
                                  "training.steps=24",
                                  "training.eval_every=5",
                                  "training.log_every=4",
                                  "checkpoint.every=5",
                                  "schedule.warmup=4"};
    if (single_thread) s.push_back("training.threads=1");
    s.insert(s.end(), extra.begin(), extra.end());
    return s;
  }
  Config config(const std::string& run, std::vector<std::string> extra = {}) const {
    return trainers::config::load_config(std::string(BITNET_SOURCE_DIR) + "/configs/tiny.yaml",
                                         sets(run, std::move(extra)));
  }
  std::string run_dir(const std::string& run) const { return (dir / run).string(); }
};

inline trainers::train::TrainResult train(const Config& cfg, int64_t stop_after = 0,
                                          const std::string& resume = "") {
  trainers::train::LocalComm comm;
  trainers::train::TrainOptions opt;
  opt.quiet = true;
  opt.stop_after = stop_after;
  opt.resume = resume;
  return trainers::train::train(cfg, opt, comm);
}

// Parameters, moments and step count of a checkpoint, as flat buffers.
struct Flat {
  std::vector<float> p, m, v;
  int64_t steps = 0;
};
inline Flat flat(const Config& cfg, const std::string& path) {
  nn::BitNetLM model(cfg.model, 12345);
  optim::AdamW opt(model.params(), cfg.adamw);
  trainers::formats::load_checkpoint(path, model, &opt);
  auto vec = [](const autograd::Tensor& t) {
    return std::vector<float>(t.data(), t.data() + t.numel());
  };
  return {vec(model.params().values()), vec(opt.exp_avg()), vec(opt.exp_avg_sq()), opt.steps()};
}
inline void expect_bit_identical(const Flat& a, const Flat& b) {
  ASSERT_EQ(a.p.size(), b.p.size());
  EXPECT_EQ(std::memcmp(a.p.data(), b.p.data(), a.p.size() * 4), 0) << "parameters differ";
  EXPECT_EQ(std::memcmp(a.m.data(), b.m.data(), a.m.size() * 4), 0) << "exp_avg differs";
  EXPECT_EQ(std::memcmp(a.v.data(), b.v.data(), a.v.size() * 4), 0) << "exp_avg_sq differs";
  EXPECT_EQ(a.steps, b.steps);
}

// metrics.jsonl lines without the timing fields.
inline std::vector<std::string> metrics(const std::string& run_dir) {
  std::vector<std::string> out;
  std::ifstream f(run_dir + "/metrics.jsonl");
  for (std::string line; std::getline(f, line);) {
    nlohmann::json j = nlohmann::json::parse(line);
    j.erase("tok_s");
    j.erase("time_s");
    out.push_back(j.dump());
  }
  return out;
}

// The final checkpoint of a run equals the reference run's bit for bit, and so do the metrics.
inline void expect_same_run(const Tmp& t, const Config& cfg, const std::string& ref,
                            const std::string& run) {
  const std::string last = trainers::formats::checkpoint_path(t.run_dir(ref), cfg.training.steps);
  expect_bit_identical(flat(cfg, last), flat(cfg, trainers::formats::checkpoint_path(
                                                      t.run_dir(run), cfg.training.steps)));
  const auto a = metrics(t.run_dir(ref)), b = metrics(t.run_dir(run));
  EXPECT_EQ(a.size(), b.size());
  for (size_t i = 0; i < std::min(a.size(), b.size()); ++i)
    EXPECT_EQ(a[i], b[i]) << "metrics line " << i;
}
}  // namespace
