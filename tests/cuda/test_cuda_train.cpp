// Training on the GPU against the CPU: the tiny two-stage run (w158a8 -> a4.8) through the trainer
// in fp32 and bf16, checkpoints that move between the devices, and no device allocation in a
// step after warm-up. Label `cuda`; prints "skipped: no CUDA device" without a GPU.
#include <gtest/gtest.h>

#include <cmath>
#include <iostream>

#include "autograd/cuda/cuda.h"
#include "autograd/ops.h"
#include "autograd/tape.h"
#include "nn/model.h"
#include "optim/adamw.h"
#include "tests/trainers/formats/checkpoint_helpers.h"

namespace {
bool have_cuda() {
  static const bool ok = [] {
    try {
      autograd::cuda::init();
      return true;
    } catch (const autograd::Error& e) {
      std::cout << "(" << e.what() << ")\n";
      return false;
    }
  }();
  return ok;
}
#define REQUIRE_CUDA()                           \
  do {                                           \
    if (!have_cuda()) {                          \
      std::cout << "skipped: no CUDA device\n";  \
      GTEST_SKIP() << "skipped: no CUDA device"; \
    }                                            \
  } while (0)

// (step, loss) of every training line and (step, val_loss) of every evaluation of a run.
struct Curve {
  std::vector<std::pair<int64_t, double>> train, val;
};
Curve curve(const std::string& run_dir) {
  Curve c;
  std::ifstream f(run_dir + "/metrics.jsonl");
  for (std::string line; std::getline(f, line);) {
    const nlohmann::json j = nlohmann::json::parse(line);
    if (j.contains("loss")) c.train.emplace_back(j["step"].get<int64_t>(), j["loss"].get<double>());
    if (j.contains("val_loss"))
      c.val.emplace_back(j["step"].get<int64_t>(), j["val_loss"].get<double>());
  }
  return c;
}
// Worst relative difference of two curves of the same steps.
double worst_rel(const std::vector<std::pair<int64_t, double>>& a,
                 const std::vector<std::pair<int64_t, double>>& b) {
  EXPECT_EQ(a.size(), b.size());
  double w = 0;
  for (size_t i = 0; i < std::min(a.size(), b.size()); ++i) {
    EXPECT_EQ(a[i].first, b[i].first) << "line " << i;
    w = std::max(w, std::fabs(a[i].second - b[i].second) / std::fabs(b[i].second));
  }
  return w;
}
std::string read_json_field(const std::string& path, const char* key) {
  std::ifstream f(path);
  const nlohmann::json j = nlohmann::json::parse(f);
  return j[key].get<std::string>();
}
}  // namespace

// The whole two-stage tiny run (24 steps, a4.8 from step 18) on the GPU in fp32 follows the CPU's
// loss trajectory to 1e-4 relative, step by step, and its validation losses too.
TEST(CudaTrain, Fp32FollowsTheCpuTrajectory) {
  REQUIRE_CUDA();
  Tmp t;
  const Config cpu = t.config("cpu"), gpu = t.config("gpu", {"training.device=cuda",
                                                             "training.precision=fp32"});
  train(cpu);
  train(gpu);
  train(t.config("cpu1", {"training.threads=1"}));  // the CPU's own spread (another GEMM blocking)
  std::cout << "cpu 1 thread vs default: worst relative train-loss difference "
            << worst_rel(curve(t.run_dir("cpu1")).train, curve(t.run_dir("cpu")).train) << "\n";
  const Curve a = curve(t.run_dir("gpu")), b = curve(t.run_dir("cpu"));
  ASSERT_EQ(a.train.size(), 24u);
  for (size_t i = 0; i < a.train.size() && i < b.train.size(); ++i)
    std::cout << "step " << a.train[i].first << " gpu " << a.train[i].second << " cpu "
              << b.train[i].second << " rel " << (a.train[i].second - b.train[i].second) / b.train[i].second << "\n";
  const double wt = worst_rel(a.train, b.train), wv = worst_rel(a.val, b.val);
  std::cout << "fp32: worst relative train-loss difference " << wt << ", val " << wv << "\n";
  EXPECT_LT(wt, 1e-4);
  EXPECT_LT(wv, 1e-4);
  EXPECT_EQ(read_json_field(t.run_dir("gpu") + "/run.json", "device"), "cuda:0");
  EXPECT_EQ(read_json_field(t.run_dir("gpu") + "/run.json", "bitlinear_route"), "integer-cuda");
}

// bf16 GEMMs (the GPU default): within 2e-2 of the fp32 CPU trajectory and the loss falls.
TEST(CudaTrain, Bf16StaysWithin2e2AndLearns) {
  REQUIRE_CUDA();
  Tmp t;
  train(t.config("cpu"));
  train(t.config("gpu", {"training.device=cuda"}));  // precision auto = bf16 on a GPU
  EXPECT_EQ(read_json_field(t.run_dir("gpu") + "/run.json", "precision"), "bf16");
  const Curve a = curve(t.run_dir("gpu")), b = curve(t.run_dir("cpu"));
  const double wt = worst_rel(a.train, b.train);
  std::cout << "bf16: worst relative train-loss difference " << wt << "\n";
  EXPECT_LT(wt, 2e-2);
  ASSERT_GE(a.train.size(), 24u);
  EXPECT_LT(a.train.back().second, a.train.front().second - 0.3) << "the loss did not fall";
}

// A checkpoint written on the GPU resumes on the CPU, and one written on the CPU resumes on the
// GPU; either continuation ends within fp32 tolerance of the uninterrupted run; the GPU's files
// load on the host like any other.
TEST(CudaTrain, CheckpointsMoveBetweenGpuAndCpu) {
  REQUIRE_CUDA();
  Tmp t;
  const std::vector<std::string> on_gpu = {"training.device=cuda", "training.precision=fp32"};
  train(t.config("ref"));                        // CPU, uninterrupted
  train(t.config("g2c", on_gpu), 10);            // GPU to step 10 ...
  train(t.config("g2c"), 0, t.run_dir("g2c"));   // ... then the CPU to the end
  train(t.config("c2g"), 10);                    // CPU to step 10 ...
  train(t.config("c2g", on_gpu), 0, t.run_dir("c2g"));  // ... then the GPU
  const Config cfg = t.config("ref");
  const Flat ref = flat(cfg, trainers::formats::checkpoint_path(t.run_dir("ref"), 24));
  for (const char* run : {"g2c", "c2g"}) {
    const Flat f = flat(cfg, trainers::formats::checkpoint_path(t.run_dir(run), 24));
    ASSERT_EQ(f.p.size(), ref.p.size());
    EXPECT_EQ(f.steps, ref.steps);
    double worst = 0;
    for (size_t i = 0; i < f.p.size(); ++i)
      worst = std::max(worst, double(std::fabs(f.p[i] - ref.p[i])));
    std::cout << run << ": worst parameter difference after 24 steps " << worst << "\n";
    EXPECT_LT(worst, 2e-3) << run;  // (a few ternary codes may flip: lr 3e-3 steps)
    const double wt = worst_rel(curve(t.run_dir(run)).train, curve(t.run_dir("ref")).train);
    EXPECT_LT(wt, 1e-4) << run;
  }
  EXPECT_TRUE(fs::exists(t.run_dir("c2g") + "/model.safetensors"));
}

// A training step on the GPU (forward, backward, clipping, AdamW) allocates no device memory
// once warmed up: every buffer comes from the caching pool.
TEST(CudaTrain, NoDeviceAllocationInAStepAfterWarmup) {
  REQUIRE_CUDA();
  Tmp t;
  const Config cfg = t.config("x");
  nn::BitNetLM model(cfg.model, 1);
  model.set_mode(nn::ActMode::A48);
  model.params().to(autograd::Device::cuda(0));
  optim::AdamW adamw(model.params(), cfg.adamw);
  const int64_t B = 4, S = 32;
  std::vector<int32_t> x(size_t(B * S)), y(size_t(B * S));
  for (size_t i = 0; i < x.size(); ++i) x[i] = int32_t(i * 7 % 256), y[i] = int32_t(i * 13 % 256);
  autograd::Tape tape;
  size_t fresh = 0;
  for (int step = 0; step < 6; ++step) {
    if (step == 3) fresh = autograd::pool_stats(autograd::Device::cuda(0)).fresh_allocations;
    model.params().zero_grad();
    {
      autograd::TapeScope scope(tape);
      autograd::Variable loss = model.loss(x, y, B, S);
      tape.backward(loss);
    }
    optim::clip_grad_norm(model.params(), 1.0);
    adamw.step(1e-3, 0.1);
  }
  autograd::synchronize(autograd::Device::cuda(0));
  EXPECT_EQ(autograd::pool_stats(autograd::Device::cuda(0)).fresh_allocations, fresh);
}
