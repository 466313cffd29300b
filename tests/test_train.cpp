// End-to-end training: a tiny two-stage run learns, switches stage, writes its outputs; init-from.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <fstream>

#include "autograd/random.h"
#include "data/tokens.h"
#include "synthetic_tokens.h"
#include "trainers/config.h"
#include "trainers/trainer.h"

namespace fs = std::filesystem;

namespace {
using testdata::synthetic;

struct TmpRun {
  fs::path dir;
  TmpRun() {
    dir = fs::temp_directory_path() / ("bitnet_train_" + std::to_string(::testing::UnitTest::GetInstance()->random_seed()) +
                                       "_" + ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(dir);
    fs::create_directories(dir / "data");
    data::write_shard((dir / "data/train.bin").string(), synthetic(60000, 256, 1), 256);
    data::write_shard((dir / "data/val.bin").string(), synthetic(6000, 256, 2), 256);
  }
  ~TmpRun() { fs::remove_all(dir); }
  trainers::Config config(std::vector<std::string> sets = {}) {
    sets.push_back("data.train=" + (dir / "data/train.bin").string());
    sets.push_back("data.val=" + (dir / "data/val.bin").string());
    sets.push_back("training.out_dir=" + (dir / "run").string());
    return trainers::load_config(std::string(BITNET_SOURCE_DIR) + "/configs/tiny.yaml", sets);
  }
};
}  // namespace

TEST(Train, TinyTwoStageRunLearnsAndWritesOutputs) {
  TmpRun tmp;
  trainers::Config cfg = tmp.config();
  trainers::LocalComm comm;
  trainers::TrainOptions opt;
  opt.quiet = true;
  const trainers::TrainResult r = trainers::train(cfg, opt, comm);
  EXPECT_EQ(r.steps, cfg.training.steps);
  EXPECT_EQ(r.skipped, 0);
  std::printf("train loss %.3f -> %.3f; val loss before a4.8 %.3f, final (a4.8) %.3f\n", r.first_loss, r.last_loss,
              r.val_loss_at_stage2, r.val_loss);
  EXPECT_LT(r.last_loss, 0.6 * r.first_loss);
  EXPECT_TRUE(std::isfinite(r.val_loss_at_stage2));
  // The a4.8 stage ends within a few percent of the w158a8 stage's validation loss.
  EXPECT_LT(r.val_loss, 1.05 * r.val_loss_at_stage2);
  for (const char* f : {"model.safetensors", "metrics.jsonl", "training.svg", "config.yaml"})
    EXPECT_TRUE(fs::exists(tmp.dir / "run" / f)) << f;
  // metrics: one line per step plus eval lines; the mode switches to a4.8 at 75% of the steps.
  std::ifstream m(tmp.dir / "run/metrics.jsonl");
  int steps = 0, evals = 0;
  std::string first_a48;
  for (std::string line; std::getline(m, line);) {
    if (line.find("\"val_loss\"") != std::string::npos) ++evals;
    else ++steps;
    if (first_a48.empty() && line.find("\"mode\":\"a4.8\"") != std::string::npos && line.find("\"loss\"") != std::string::npos)
      first_a48 = line;
  }
  EXPECT_EQ(steps, cfg.training.steps);
  EXPECT_GE(evals, 3);
  EXPECT_NE(first_a48.find("\"step\":90"), std::string::npos) << first_a48;
}

TEST(Train, InitFromContinuesAW158A8ModelIntoA48) {
  TmpRun tmp;
  trainers::LocalComm comm;
  trainers::TrainOptions opt;
  opt.quiet = true;
  const auto r1 = trainers::train(tmp.config({"stages=[{mode: w158a8}]", "training.steps=80"}), opt, comm);
  fs::rename(tmp.dir / "run/model.safetensors", tmp.dir / "w158a8.safetensors");
  opt.init_from = (tmp.dir / "w158a8.safetensors").string();
  const auto r2 = trainers::train(
      tmp.config({"stages=[{mode: a4.8}]", "training.steps=20", "schedule.warmup=0", "schedule.peak1=1e-3"}), opt, comm);
  std::printf("w158a8 val %.3f -> a4.8 continued val %.3f\n", r1.val_loss, r2.val_loss);
  EXPECT_LT(r2.val_loss, 1.05 * r1.val_loss);
  EXPECT_LT(r2.first_loss, 0.8 * r1.first_loss);  // it started from the trained model, not from scratch
}

TEST(Train, MismatchedInitFromIsRefusedWithEveryProblem) {
  TmpRun tmp;
  trainers::LocalComm comm;
  trainers::TrainOptions opt;
  opt.quiet = true;
  trainers::train(tmp.config({"training.steps=2", "training.eval_every=0", "schedule.warmup=0"}), opt, comm);
  opt.init_from = (tmp.dir / "run/model.safetensors").string();
  try {
    trainers::train(tmp.config({"training.steps=2", "schedule.warmup=0", "model.ffn_dim=96", "model.tie_embeddings=true"}), opt, comm);
    FAIL() << "expected an error";
  } catch (const std::exception& e) {
    const std::string m = e.what();
    EXPECT_NE(m.find("mismatch: model.layers.0.mlp.gate_proj.weight"), std::string::npos) << m;
    EXPECT_NE(m.find("unexpected: lm_head.weight"), std::string::npos) << m;
  }
}

TEST(Train, OutOfVocabularyDataIsRefused) {
  TmpRun tmp;
  trainers::LocalComm comm;
  trainers::TrainOptions opt;
  opt.quiet = true;
  EXPECT_THROW(trainers::train(tmp.config({"model.vocab_size=128"}), opt, comm), std::exception);
}
