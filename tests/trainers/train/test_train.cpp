// End-to-end training: a tiny two-stage run learns, switches stage, writes its outputs; init-from.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <functional>
#include <nlohmann/json.hpp>
#include <tuple>

#include "autograd/random.h"
#include "data/tokens.h"
#include "nn/module.h"
#include "tests/synthetic_tokens.h"
#include "tests/test_helpers.h"
#include "trainers/config/config.h"
#include "trainers/formats/checkpoint.h"
#include "trainers/formats/trained_model.h"
#include "trainers/train/trainer.h"

namespace fs = std::filesystem;

namespace {
using testdata::error_of;
using testdata::synthetic;

struct TmpRun {
  fs::path dir;
  TmpRun() {
    dir = fs::temp_directory_path() /
          ("bitnet_train_" + std::to_string(::testing::UnitTest::GetInstance()->random_seed()) +
           "_" + ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(dir);
    fs::create_directories(dir / "data");
    data::write_shard((dir / "data/train.bin").string(), synthetic(60000, 256, 1), 256);
    data::write_shard((dir / "data/val.bin").string(), synthetic(6000, 256, 2), 256);
  }
  ~TmpRun() { fs::remove_all(dir); }
  trainers::config::Config config(std::vector<std::string> sets = {}) {
    sets.push_back("data.train=" + (dir / "data/train.bin").string());
    sets.push_back("data.val=" + (dir / "data/val.bin").string());
    sets.push_back("training.out_dir=" + (dir / "run").string());
    return trainers::config::load_config(std::string(BITNET_SOURCE_DIR) + "/configs/tiny.yaml",
                                         sets);
  }
  // A quiet single-process run of config(sets) with the given options (hooks).
  trainers::train::TrainResult train(std::vector<std::string> sets,
                                     trainers::train::TrainOptions opt = {}) {
    trainers::train::LocalComm comm;
    opt.quiet = true;
    return trainers::train::train(config(std::move(sets)), opt, comm);
  }
};
}  // namespace

TEST(Train, TinyTwoStageRunLearnsAndWritesOutputs) {
  TmpRun tmp;
  trainers::config::Config cfg = tmp.config();
  trainers::train::LocalComm comm;
  trainers::train::TrainOptions opt;
  opt.quiet = true;
  const trainers::train::TrainResult r = trainers::train::train(cfg, opt, comm);
  EXPECT_EQ(r.steps, cfg.training.steps);
  EXPECT_EQ(r.skipped, 0);
  std::printf("train loss %.3f -> %.3f; val loss before a4.8 %.3f, final (a4.8) %.3f\n",
              r.first_loss, r.last_loss, r.val_loss_at_stage2, r.val_loss);
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
    if (line.find("\"val_loss\"") != std::string::npos)
      ++evals;
    else
      ++steps;
    if (first_a48.empty() && line.find("\"mode\":\"a4.8\"") != std::string::npos &&
        line.find("\"loss\"") != std::string::npos)
      first_a48 = line;
  }
  EXPECT_EQ(steps, cfg.training.steps);
  EXPECT_GE(evals, 3);
  EXPECT_NE(first_a48.find("\"step\":90"), std::string::npos) << first_a48;
}

TEST(Train, InitFromContinuesAW158A8ModelIntoA48) {
  TmpRun tmp;
  trainers::train::LocalComm comm;
  trainers::train::TrainOptions opt;
  opt.quiet = true;
  const auto r1 = trainers::train::train(
      tmp.config({"stages=[{mode: w158a8}]", "training.steps=80"}), opt, comm);
  fs::rename(tmp.dir / "run/model.safetensors", tmp.dir / "w158a8.safetensors");
  opt.init_from = (tmp.dir / "w158a8.safetensors").string();
  const auto r2 = trainers::train::train(tmp.config({"stages=[{mode: a4.8}]", "training.steps=20",
                                                     "schedule.warmup=0", "schedule.peak1=1e-3"}),
                                         opt, comm);
  std::printf("w158a8 val %.3f -> a4.8 continued val %.3f\n", r1.val_loss, r2.val_loss);
  EXPECT_LT(r2.val_loss, 1.05 * r1.val_loss);
  EXPECT_LT(r2.first_loss,
            0.8 * r1.first_loss);  // it started from the trained model, not from scratch
}

TEST(Train, MismatchedInitFromIsRefusedWithEveryProblem) {
  TmpRun tmp;
  trainers::train::LocalComm comm;
  trainers::train::TrainOptions opt;
  opt.quiet = true;
  trainers::train::train(
      tmp.config({"training.steps=2", "training.eval_every=0", "schedule.warmup=0"}), opt, comm);
  opt.init_from = (tmp.dir / "run/model.safetensors").string();
  try {
    trainers::train::train(tmp.config({"training.steps=2", "schedule.warmup=0", "model.ffn_dim=96",
                                       "model.tie_embeddings=true"}),
                           opt, comm);
    FAIL() << "expected an error";
  } catch (const std::exception& e) {
    const std::string m = e.what();
    EXPECT_NE(m.find("mismatch: model.layers.0.mlp.gate_proj.weight"), std::string::npos) << m;
    EXPECT_NE(m.find("unexpected: lm_head.weight"), std::string::npos) << m;
  }
}

// A `bitnet prepare` shard directory (index.json, memory-mapped shards) trains exactly like the
// same tokens in one file: same windows, same losses.
TEST(Train, ShardDirectoryWithIndexTrainsLikeOneFile) {
  TmpRun tmp;
  const std::vector<uint32_t> toks = synthetic(60000, 256, 1);  // TmpRun's train.bin
  fs::create_directories(tmp.dir / "shards");
  nlohmann::json idx = {{"complete", true}, {"shards", nlohmann::json::array()}};
  for (size_t k = 0, at = 0; at < toks.size(); ++k) {
    const size_t n = std::min<size_t>(13001, toks.size() - at);
    const std::string name = "part" + std::to_string(k) + ".bin";
    data::write_shard((tmp.dir / "shards" / name).string(),
                      std::vector<uint32_t>(toks.begin() + long(at), toks.begin() + long(at + n)),
                      256);
    idx["shards"].push_back({{"file", name}, {"tokens", n}});
    at += n;
  }
  std::ofstream((tmp.dir / "shards/index.json").string()) << idx.dump();
  auto run = [&](const std::string& train, const std::string& out) {
    trainers::train::LocalComm comm;
    trainers::train::TrainOptions opt;
    opt.quiet = true;
    const auto cfg = trainers::config::load_config(
        std::string(BITNET_SOURCE_DIR) + "/configs/tiny.yaml",
        {"data.train=" + train, "data.val=" + (tmp.dir / "data/val.bin").string(),
         "training.out_dir=" + (tmp.dir / out).string(), "training.steps=12",
         "training.log_every=4"});
    return trainers::train::train(cfg, opt, comm);
  };
  const auto a = run((tmp.dir / "data/train.bin").string(), "run_file");
  const auto b = run((tmp.dir / "shards").string(), "run_dir");
  EXPECT_EQ(a.steps, 12);
  EXPECT_EQ(b.steps, 12);
  EXPECT_EQ(a.first_loss, b.first_loss);
  EXPECT_EQ(a.last_loss, b.last_loss);
  EXPECT_EQ(a.val_loss, b.val_loss);
}

TEST(Train, OutOfVocabularyDataIsRefusedNamingTheShard) {
  TmpRun tmp;
  trainers::train::TrainOptions opt;
  // The synthetic stream uses ids < 256; the first id >= 128 is at some index of train.bin.
  const std::vector<uint32_t> toks = synthetic(60000, 256, 1);
  const size_t first = size_t(
      std::find_if(toks.begin(), toks.end(), [](uint32_t t) { return t >= 128; }) - toks.begin());
  const std::string e = error_of([&] { tmp.train({"model.vocab_size=128"}, opt); });
  for (const std::string& want :
       {std::string("data.train: "),
        (tmp.dir / "data/train.bin").string() + ": token " + std::to_string(toks[first]) +
            " at token index " + std::to_string(first),
        std::string("outside the vocabulary of 128 ids")})
    EXPECT_NE(e.find(want), std::string::npos) << want << "\n" << e;
}

// Skip policy (docs/RELIABILITY.md): a step whose loss or gradient norm is not finite is skipped
// (no optimizer update, counted), and max_bad_steps consecutive ones abort naming the culprit.
class NonFiniteGradient : public ::testing::TestWithParam<std::tuple<float, int>> {};
TEST_P(NonFiniteGradient, IsSkippedAndCounted) {
  TmpRun tmp;
  trainers::train::TrainOptions opt;
  opt.deferred = std::get<1>(GetParam());
  int64_t calls = 0;
  opt.test_after_backward = [&](nn::ParameterSet& P) {
    if (calls == 7 || calls == 8 || calls == 20)
      P.grads().data()[P.numel() / 3] = std::get<0>(GetParam());
    ++calls;
  };
  const auto r =
      tmp.train({"training.steps=30", "training.eval_every=0", "schedule.warmup=2"}, opt);
  EXPECT_EQ(r.steps, 30);
  EXPECT_EQ(r.skipped, 3);
  EXPECT_EQ(calls, 30);
  const trainers::formats::TrainedModel tm =
      trainers::formats::load_trained_model((tmp.dir / "run").string());
  const auto& v = tm.model->params().values();
  for (int64_t i = 0; i < v.numel(); ++i)
    ASSERT_TRUE(std::isfinite(v.data()[i])) << "parameter " << i;
  const auto ci = trainers::formats::read_checkpoint_info(
      trainers::formats::checkpoint_path((tmp.dir / "run").string(), 30));
  EXPECT_EQ(ci.optim_steps, 27) << "skipped steps must not update AdamW";
  EXPECT_EQ(ci.state.skipped, 3);
  // metrics.jsonl has no line for the skipped steps 7, 8 and 20.
  std::ifstream m(tmp.dir / "run/metrics.jsonl");
  int lines = 0;
  for (std::string line; std::getline(m, line);) {
    if (line.find("\"loss\"") == std::string::npos) continue;
    ++lines;
    for (const char* s : {"\"step\":7,", "\"step\":8,", "\"step\":20,"})
      EXPECT_EQ(line.find(s), std::string::npos) << line;
  }
  EXPECT_EQ(lines, 27);
}
TEST_P(NonFiniteGradient, AbortsAfterMaxBadStepsNamingTheParameter) {
  TmpRun tmp;
  trainers::train::TrainOptions opt;
  opt.deferred = std::get<1>(GetParam());
  int64_t calls = 0;
  opt.test_after_backward = [&](nn::ParameterSet& P) {
    const auto& e = P.at("model.layers.1.mlp.down_proj.weight");
    if (calls++ >= 4) P.grads().data()[e.offset + 5] = std::get<0>(GetParam());
  };
  const std::string e = error_of([&] {
    tmp.train({"training.steps=30", "training.max_bad_steps=3", "schedule.warmup=2"}, opt);
  });
  for (const char* want :
       {"training aborted at step 6: 3 consecutive steps with non-finite loss or gradients",
        "training.max_bad_steps = 3",
        "first non-finite gradient: model.layers.1.mlp.down_proj.weight at index 5"})
    EXPECT_NE(e.find(want), std::string::npos) << want << "\n" << e;
  // immediate: stops at once; deferred: at the next read-back (log_every 20 in tiny.yaml)
  EXPECT_EQ(calls, opt.deferred ? 20 : 7);
}
INSTANTIATE_TEST_SUITE_P(Train, NonFiniteGradient,
                         ::testing::Combine(::testing::Values(NAN, INFINITY, -INFINITY),
                                            ::testing::Values(0, 1)));

// Deferred steps (the skip rule and the update decided on the device, records read back once per
// logged step) give what immediate ones do: the same parameters and moments bit for bit, the
// same metrics lines but for their timings, the same checkpoints.
TEST(Train, DeferredStepsMatchImmediateOnes) {
  std::vector<std::vector<float>> params;
  std::vector<std::vector<std::string>> metrics;
  std::vector<int64_t> optim_steps;
  for (int deferred : {0, 1}) {
    TmpRun tmp;
    trainers::train::TrainOptions opt;
    opt.deferred = deferred;
    int64_t calls = 0;
    opt.test_after_backward = [&](nn::ParameterSet& P) {  // one skipped step
      if (calls++ == 13) P.grads().data()[P.numel() / 2] = NAN;
    };
    const auto r = tmp.train({"training.steps=40", "training.log_every=7", "checkpoint.every=10",
                              "training.eval_every=15"},
                             opt);
    EXPECT_EQ(r.skipped, 1);
    const auto tm = trainers::formats::load_trained_model((tmp.dir / "run").string());
    const auto& v = tm.model->params().values();
    params.emplace_back(v.data(), v.data() + v.numel());
    std::ifstream m(tmp.dir / "run/metrics.jsonl");
    metrics.emplace_back();
    for (std::string line; std::getline(m, line);) {
      for (const char* key : {"\"tok_s\"", "\"time_s\"", "\"comm_s\""}) {  // timings differ
        const size_t at = line.find(key);
        if (at == std::string::npos) continue;
        const size_t end = line.find_first_of(",}", at);
        line.erase(at, end - at);
      }
      metrics.back().push_back(line);
    }
    optim_steps.push_back(trainers::formats::read_checkpoint_info(
                              trainers::formats::checkpoint_path((tmp.dir / "run").string(), 30))
                              .optim_steps);
  }
  EXPECT_EQ(params[0], params[1]);
  EXPECT_EQ(metrics[0], metrics[1]);
  EXPECT_GT(metrics[0].size(), 40u);
  EXPECT_EQ(optim_steps[0], 29);
  EXPECT_EQ(optim_steps[1], 29);
}

TEST(Train, NonFiniteWeightAbortsNamingTheParameter) {
  TmpRun tmp;
  trainers::train::TrainOptions opt;
  opt.test_before_step = [&](int64_t step, nn::ParameterSet& P) {
    if (step == 5)
      P.values().data()[P.at("model.layers.0.self_attn.q_proj.weight").offset + 9] = NAN;
  };
  const std::string e = error_of([&] {
    tmp.train({"training.steps=30", "training.max_bad_steps=4", "checkpoint.every=2",
               "schedule.warmup=2"},
              opt);
  });
  for (const char* want :
       {"training aborted at step 8: 4 consecutive steps",
        "first non-finite value: model.layers.0.self_attn.q_proj.weight at index 9 (nan)"})
    EXPECT_NE(e.find(want), std::string::npos) << want << "\n" << e;
  // The newest checkpoint is the last good one (step 4), and it is finite.
  const std::string last = trainers::formats::resolve_checkpoint((tmp.dir / "run").string());
  EXPECT_EQ(last, trainers::formats::checkpoint_path((tmp.dir / "run").string(), 4));
  EXPECT_NO_THROW(trainers::formats::load_trained_model(last));
}

// Each quantizer-ablation setting of SPEC §2.8 trains through the trainer (config keys -> model ->
// integer / float routes): a short two-stage run (a4.8 stage from step 9 of 12) that finishes
// with finite training and validation losses.
class AblationSetting : public ::testing::TestWithParam<std::vector<std::string>> {};
TEST_P(AblationSetting, ShortRunHasFiniteLosses) {
  TmpRun tmp;
  std::vector<std::string> sets = GetParam();
  for (const char* s : {"training.steps=12", "training.eval_every=6", "training.log_every=3",
                        "schedule.warmup=2", "training.threads=1"})
    sets.push_back(s);
  const trainers::train::TrainResult r = tmp.train(sets);
  EXPECT_EQ(r.steps, 12);
  EXPECT_EQ(r.skipped, 0);
  EXPECT_TRUE(std::isfinite(r.first_loss) && std::isfinite(r.last_loss));
  EXPECT_TRUE(std::isfinite(r.val_loss));
  EXPECT_LT(r.last_loss, r.first_loss);
}
INSTANTIATE_TEST_SUITE_P(QuantVariants, AblationSetting,
                         ::testing::Values(std::vector<std::string>{"model.a4_quant=int4-absmax"},
                                           std::vector<std::string>{"model.a4_quant=fp4"},
                                           std::vector<std::string>{"model.a4_quant=fp4-e1m2"},
                                           std::vector<std::string>{"model.down_quant=int4"},
                                           std::vector<std::string>{"model.down_quant=fp4"},
                                           std::vector<std::string>{"model.topk_ratio=0"},
                                           std::vector<std::string>{"stages=[{mode: fp4-all}]"}),
                         [](const auto& info) {
                           std::string s =
                               info.param[0].substr(info.param[0].find_first_of(".=") + 1);
                           for (char& ch : s)
                             if (!isalnum(static_cast<unsigned char>(ch))) ch = '_';
                           return s;
                         });
