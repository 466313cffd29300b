// Checkpoints: HDF5 round trip, bit-exact resume (stage switch, SIGKILL), rotation, corruption, incompatibility.
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
#include "synthetic_tokens.h"
#include "test_helpers.h"
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

std::string slurp(const fs::path& p) {
  std::ifstream f(p, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>());
}
void spit(const fs::path& p, const std::string& s) {
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
          ("bitnet_ckpt_" + std::to_string(getpid()) + "_" + ::testing::UnitTest::GetInstance()->current_test_info()->name());
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
    return trainers::config::load_config(std::string(BITNET_SOURCE_DIR) + "/configs/tiny.yaml", sets(run, std::move(extra)));
  }
  std::string run_dir(const std::string& run) const { return (dir / run).string(); }
};

trainers::train::TrainResult train(const Config& cfg, int64_t stop_after = 0, const std::string& resume = "") {
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
Flat flat(const Config& cfg, const std::string& path) {
  nn::BitNetLM model(cfg.model, 12345);
  optim::AdamW opt(model.params(), cfg.adamw);
  trainers::formats::load_checkpoint(path, model, &opt);
  auto vec = [](const autograd::Tensor& t) { return std::vector<float>(t.data(), t.data() + t.numel()); };
  return {vec(model.params().values()), vec(opt.exp_avg()), vec(opt.exp_avg_sq()), opt.steps()};
}
void expect_bit_identical(const Flat& a, const Flat& b) {
  ASSERT_EQ(a.p.size(), b.p.size());
  EXPECT_EQ(std::memcmp(a.p.data(), b.p.data(), a.p.size() * 4), 0) << "parameters differ";
  EXPECT_EQ(std::memcmp(a.m.data(), b.m.data(), a.m.size() * 4), 0) << "exp_avg differs";
  EXPECT_EQ(std::memcmp(a.v.data(), b.v.data(), a.v.size() * 4), 0) << "exp_avg_sq differs";
  EXPECT_EQ(a.steps, b.steps);
}

// metrics.jsonl lines without the timing fields.
std::vector<std::string> metrics(const std::string& run_dir) {
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
void expect_same_run(const Tmp& t, const Config& cfg, const std::string& ref, const std::string& run) {
  const std::string last = trainers::formats::checkpoint_path(t.run_dir(ref), cfg.training.steps);
  expect_bit_identical(flat(cfg, last), flat(cfg, trainers::formats::checkpoint_path(t.run_dir(run), cfg.training.steps)));
  const auto a = metrics(t.run_dir(ref)), b = metrics(t.run_dir(run));
  EXPECT_EQ(a.size(), b.size());
  for (size_t i = 0; i < std::min(a.size(), b.size()); ++i) EXPECT_EQ(a[i], b[i]) << "metrics line " << i;
}
}  // namespace

TEST(Checkpoint, RoundTripKeepsEverything) {
  Tmp t;
  t.single_thread = true;
  const Config cfg = t.config("run");
  nn::BitNetLM model(cfg.model, 7);
  optim::AdamW opt(model.params(), cfg.adamw);
  autograd::Rng r(3);
  for (const autograd::Tensor* b : {&opt.exp_avg(), &opt.exp_avg_sq()})
    for (int64_t i = 0; i < b->numel(); ++i) b->data()[i] = float(r.uniform());
  opt.set_steps(17);
  trainers::formats::TrainState st;
  st.step = 17, st.stage = 1, st.mode = "a4.8", st.loader_cursor = 1234567, st.training_seed = 5, st.data_seed = 6;
  st.world = 1, st.threads = 3, st.train_tokens = 60000, st.train_fingerprint = 0xfeedfacecafebeefULL, st.skipped = 2, st.bad_in_row = 1;
  st.first_loss = 5.25, st.window_loss = 1.0 / 3.0, st.window_n = 3, st.val_loss_at_stage2 = 2.5, st.elapsed_s = 9.75;
  st.metrics_bytes = 4321;
  std::string tok;
  for (int i = 0; i < 1000; ++i) tok += char(i * 7);  // every byte value, zeros included
  const std::string path = (t.dir / "ck.h5").string();
  trainers::formats::save_checkpoint(path, model, opt, st, cfg.resolved_yaml, tok);
  EXPECT_FALSE(fs::exists(path + ".tmp"));

  nn::BitNetLM model2(cfg.model, 99);
  optim::AdamW opt2(model2.params(), cfg.adamw);
  const trainers::formats::CheckpointInfo ci = trainers::formats::load_checkpoint(path, model2, &opt2, &cfg);
  auto same = [](const autograd::Tensor& a, const autograd::Tensor& b) {
    return a.numel() == b.numel() && std::memcmp(a.data(), b.data(), size_t(a.numel()) * 4) == 0;
  };
  EXPECT_TRUE(same(model.params().values(), model2.params().values()));
  EXPECT_TRUE(same(opt.exp_avg(), opt2.exp_avg()));
  EXPECT_TRUE(same(opt.exp_avg_sq(), opt2.exp_avg_sq()));
  EXPECT_EQ(opt2.steps(), 17);
  EXPECT_EQ(ci.format_version, trainers::formats::kCheckpointFormatVersion);
  const trainers::formats::TrainState& s = ci.state;
  EXPECT_EQ(s.step, 17);
  EXPECT_EQ(s.stage, 1);
  EXPECT_EQ(s.mode, "a4.8");
  EXPECT_EQ(s.loader_cursor, 1234567u);
  EXPECT_EQ(s.training_seed, 5u);
  EXPECT_EQ(s.data_seed, 6u);
  EXPECT_EQ(s.threads, 3);
  EXPECT_EQ(s.train_tokens, 60000);
  EXPECT_EQ(s.train_fingerprint, 0xfeedfacecafebeefULL);
  EXPECT_EQ(s.skipped, 2);
  EXPECT_EQ(s.bad_in_row, 1);
  EXPECT_EQ(s.first_loss, 5.25);
  EXPECT_EQ(s.window_loss, 1.0 / 3.0);
  EXPECT_EQ(s.window_n, 3);
  EXPECT_EQ(s.val_loss_at_stage2, 2.5);
  EXPECT_EQ(s.elapsed_s, 9.75);
  EXPECT_EQ(s.metrics_bytes, 4321);
  EXPECT_EQ(ci.config_yaml, cfg.resolved_yaml);
  EXPECT_EQ(ci.tokenizer, tok);

  // load_trained_model reads checkpoints too: the file, or a run directory without model.safetensors.
  fs::create_directories(t.dir / "r/checkpoints");
  fs::copy_file(path, trainers::formats::checkpoint_path((t.dir / "r").string(), 17));
  for (const std::string& p : {path, (t.dir / "r").string()}) {
    const trainers::formats::TrainedModel tm = trainers::formats::load_trained_model(p);
    EXPECT_TRUE(same(tm.model->params().values(), model.params().values())) << p;
    EXPECT_EQ(tm.model->mode(), nn::ActMode::A48);
    EXPECT_EQ(tm.step, 17);
    EXPECT_EQ(tm.tokenizer_proto, tok);
    EXPECT_EQ(tm.config_yaml, cfg.resolved_yaml);
  }
}

// A diverged state (non-finite parameter or moment, negative second moment) is never written: it
// would rotate the good checkpoints away and could not be resumed from.
TEST(Checkpoint, NonFiniteStateIsNotWritten) {
  Tmp t;
  t.single_thread = true;
  const Config cfg = t.config("run");
  nn::BitNetLM model(cfg.model, 7);
  optim::AdamW opt(model.params(), cfg.adamw);
  const std::string path = (t.dir / "bad.h5").string();
  const auto& e = model.params().at("model.layers.1.self_attn.o_proj.weight");
  struct Case {
    float* where;
    float value;
    std::string want;
  };
  for (const Case& c : {Case{e.var.data() + 3, NAN, "/params/model.layers.1.self_attn.o_proj.weight holds nan at flat index 3"},
                        Case{opt.exp_avg().data() + e.offset + 4, INFINITY, "/optim/exp_avg/model.layers.1.self_attn.o_proj.weight holds inf at flat index 4"},
                        Case{opt.exp_avg_sq().data() + e.offset + 5, -1.0f, "/optim/exp_avg_sq/model.layers.1.self_attn.o_proj.weight holds -1.000000 at flat index 5"}}) {
    const float keep = *c.where;
    *c.where = c.value;
    const std::string err = error_of([&] { trainers::formats::save_checkpoint(path, model, opt, {}, cfg.resolved_yaml, ""); });
    EXPECT_NE(err.find(path + ": refusing to write a checkpoint: " + c.want), std::string::npos) << err;
    EXPECT_FALSE(fs::exists(path));
    EXPECT_FALSE(fs::exists(path + ".tmp"));
    *c.where = keep;
  }
  trainers::formats::save_checkpoint(path, model, opt, {}, cfg.resolved_yaml, "");  // the restored state is written
  EXPECT_TRUE(fs::exists(path));
}

// 24 steps straight vs N steps, stop, resume: N before the LR/WD switch (12) and the stage switch
// (18), exactly at each, and after both.
class ResumeAt : public ::testing::TestWithParam<int64_t> {};
TEST_P(ResumeAt, EqualsTheUninterruptedRunBitForBit) {
  Tmp t;
  const int64_t N = GetParam();
  const trainers::train::TrainResult a = train(t.config("ref"));
  const trainers::train::TrainResult b1 = train(t.config("run"), N);
  EXPECT_TRUE(b1.interrupted);
  EXPECT_EQ(b1.steps, N);
  const trainers::train::TrainResult b = train(t.config("run"), 0, t.run_dir("run"));
  EXPECT_FALSE(b.interrupted);
  EXPECT_EQ(b.steps, 24);
  expect_same_run(t, t.config("ref"), "ref", "run");
  EXPECT_EQ(a.first_loss, b.first_loss);
  EXPECT_EQ(a.last_loss, b.last_loss);
  EXPECT_EQ(a.val_loss, b.val_loss);
  EXPECT_EQ(a.val_loss_at_stage2, b.val_loss_at_stage2);
  EXPECT_EQ(a.skipped, b.skipped);
  // The model files agree too.
  const auto ma = trainers::formats::load_trained_model(t.run_dir("ref")), mb = trainers::formats::load_trained_model(t.run_dir("run"));
  EXPECT_EQ(std::memcmp(ma.model->params().values().data(), mb.model->params().values().data(),
                        size_t(ma.model->params().numel()) * 4), 0);
}
INSTANTIATE_TEST_SUITE_P(Checkpoint, ResumeAt, ::testing::Values(8, 12, 18, 20));

TEST(Checkpoint, ResumeFromAnOlderCheckpointCutsTheMetricsAndLaterCheckpoints) {
  Tmp t;
  t.single_thread = true;
  train(t.config("ref"));
  train(t.config("run"), 17);  // checkpoints 5, 10, 15, 17; metrics up to step 16 + final eval
  EXPECT_EQ(trainers::formats::list_checkpoints(t.run_dir("run") + "/checkpoints").size(), 3u);  // keep 3: 10, 15, 17
  train(t.config("run"), 0, trainers::formats::checkpoint_path(t.run_dir("run"), 10));
  expect_same_run(t, t.config("ref"), "ref", "run");
  // Resuming a checkpoint into another run directory (out_dir may differ) carries its metrics along.
  train(t.config("moved", {"training.eval_every=5"}), 0, trainers::formats::checkpoint_path(t.run_dir("ref"), 15));
  expect_same_run(t, t.config("ref"), "ref", "moved");
}

TEST(Checkpoint, ResumeAfterSigkillEqualsTheUninterruptedRun) {
  Tmp t;
  t.single_thread = true;  // (child and parent alike; multi-threaded determinism: ResumeAt)
  // The child is the real CLI; it writes a checkpoint every 5 steps and is killed after the first.
  const std::vector<std::string> extra = {"training.steps=120", "checkpoint.every=5", "checkpoint.keep=2", "training.eval_every=25"};
  std::vector<std::string> args = {std::string(BITNET_BINARY_DIR) + "/trainers/bitnet", "train",
                                   std::string(BITNET_SOURCE_DIR) + "/configs/tiny.yaml", "--quiet"};
  for (auto& s : t.sets("killed", extra)) args.insert(args.end(), {"--set", s});
  std::vector<char*> argv;
  for (auto& a : args) argv.push_back(a.data());
  argv.push_back(nullptr);
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_addopen(&fa, 1, "/dev/null", O_WRONLY, 0);
  pid_t pid = 0;
  ASSERT_EQ(posix_spawn(&pid, argv[0], &fa, nullptr, argv.data(), environ), 0) << argv[0];
  posix_spawn_file_actions_destroy(&fa);
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(60);
  int status = 0;
  bool exited = false;
  while (trainers::formats::list_checkpoints(t.run_dir("killed") + "/checkpoints").empty()) {
    if (waitpid(pid, &status, WNOHANG) == pid) {
      exited = true;
      break;
    }
    ASSERT_LT(std::chrono::steady_clock::now(), deadline) << "no checkpoint appeared";
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  }
  ASSERT_FALSE(exited) << "the child ended before it could be killed, status " << status;
  std::this_thread::sleep_for(std::chrono::milliseconds(20));  // somewhere between checkpoints
  kill(pid, SIGKILL);
  ASSERT_EQ(waitpid(pid, &status, 0), pid);
  ASSERT_TRUE(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL) << "the child finished before the kill";
  EXPECT_FALSE(fs::exists(t.run_dir("killed") + "/model.safetensors"));
  const std::string from = trainers::formats::resolve_checkpoint(t.run_dir("killed"));
  std::printf("killed after %s; resuming\n", fs::path(from).filename().c_str());

  train(t.config("killed", extra), 0, t.run_dir("killed"));
  train(t.config("ref", extra));
  const Config cfg = t.config("ref", extra);
  expect_same_run(t, cfg, "ref", "killed");
}

TEST(Checkpoint, RotationKeepsTheNewestAndIgnoresTemporaryFiles) {
  Tmp t;
  t.single_thread = true;
  train(t.config("run", {"checkpoint.every=2", "checkpoint.keep=3"}));
  const std::string dir = t.run_dir("run") + "/checkpoints";
  auto steps = [&] {
    std::vector<int64_t> s;
    for (auto& [step, path] : trainers::formats::list_checkpoints(dir)) s.push_back(step);
    return s;
  };
  EXPECT_EQ(steps(), (std::vector<int64_t>{20, 22, 24}));
  // A crash during a write leaves a .tmp (here: newer, half-written); it is never chosen.
  spit(dir + "/step-000000026.h5.tmp", slurp(trainers::formats::checkpoint_path(t.run_dir("run"), 24)).substr(0, 5000));
  spit(dir + "/step-000000028.h5.tmp", "");
  EXPECT_EQ(trainers::formats::resolve_checkpoint(t.run_dir("run")), trainers::formats::checkpoint_path(t.run_dir("run"), 24));
  EXPECT_EQ(trainers::formats::resolve_checkpoint(dir), trainers::formats::checkpoint_path(t.run_dir("run"), 24));
  EXPECT_EQ(steps(), (std::vector<int64_t>{20, 22, 24}));
  trainers::formats::rotate_checkpoints(dir, 2);  // the next rotation removes the leftovers
  EXPECT_EQ(steps(), (std::vector<int64_t>{22, 24}));
  EXPECT_FALSE(fs::exists(dir + "/step-000000026.h5.tmp"));
  EXPECT_FALSE(fs::exists(dir + "/step-000000028.h5.tmp"));
  const std::string none = error_of([&] { trainers::formats::resolve_checkpoint(t.run_dir("data")); });
  EXPECT_NE(none.find("no complete checkpoint"), std::string::npos) << none;
}

TEST(Checkpoint, CorruptedOrTruncatedFilesAreRefusedClearly) {
  Tmp t;
  t.single_thread = true;
  const Config cfg = t.config("run", {"training.steps=6"});
  train(cfg);
  const std::string good = trainers::formats::checkpoint_path(t.run_dir("run"), 6);
  const std::string bytes = slurp(good);
  const Flat ref = flat(cfg, good);
  auto load = [&](const std::string& p) {
    nn::BitNetLM model(cfg.model, 1);
    optim::AdamW opt(model.params(), cfg.adamw);
    trainers::formats::load_checkpoint(p, model, &opt, &cfg);
  };
  auto expect_refused = [&](const std::string& name, const std::string& content, const std::string& why) {
    const std::string p = (t.dir / name).string();
    spit(p, content);
    const std::string e = error_of([&] { load(p); });
    EXPECT_NE(e.find(p), std::string::npos) << name << ": " << e;
    EXPECT_NE(e.find(why), std::string::npos) << name << ": " << e;
    std::printf("%s: %s\n", name.c_str(), e.c_str());
  };

  // A flipped byte in the middle of the embedding's data: Fletcher32 fails the chunk read.
  {
    nn::BitNetLM model(cfg.model, 1);
    optim::AdamW opt(model.params(), cfg.adamw);
    trainers::formats::load_checkpoint(good, model, &opt);
    const auto& e = model.params().at("model.embed_tokens.weight");
    const char* mid = reinterpret_cast<const char*>(e.var.data() + e.numel / 2);
    const size_t pos = bytes.find(std::string(mid, 64));
    ASSERT_NE(pos, std::string::npos);
    std::string bad = bytes;
    bad[pos + 3] ^= 0x40;
    // The integrity trailer's content hash catches it before HDF5 reads anything ...
    expect_refused("flipped.h5", bad, "corrupted checkpoint: content hash mismatch");
    // ... and behind it, with the trailer recomputed over the damaged bytes, Fletcher32 does.
    const std::string resealed = (t.dir / "resealed.h5").string();
    spit(resealed, bad.substr(0, bad.size() - 24));
    trainers::formats::seal_checkpoint_file(resealed, resealed);
    const std::string err = error_of([&] { load(resealed); });
    EXPECT_NE(err.find(resealed + ": dataset /params/model.embed_tokens.weight: read failed, the data is corrupted"),
              std::string::npos) << err;
  }
  // Bytes appended after the trailer, or a damaged trailer, are refused too.
  expect_refused("appended.h5", bytes + "x", "no integrity trailer at the end");
  {
    std::string bad = bytes;
    bad[bad.size() - 16] ^= 1;  // the length field
    expect_refused("badlen.h5", bad, "the integrity trailer covers");
  }
  for (double f : {0.1, 0.5, 0.9})
    expect_refused("cut" + std::to_string(int(f * 100)) + ".h5", bytes.substr(0, size_t(double(bytes.size()) * f)),
                   "truncated or corrupted checkpoint");
  expect_refused("header_only.h5", bytes.substr(0, 96), "truncated or corrupted checkpoint");
  expect_refused("empty.h5", "", "empty file (0 bytes)");
  expect_refused("text.h5", "step: 4\nthis is not a checkpoint\n", "not an HDF5 file");
  {
    const std::string e = error_of([&] { load((t.dir / "nonexistent.h5").string()); });
    EXPECT_NE(e.find("nonexistent.h5: no such file"), std::string::npos) << e;
  }
  // The resume path reports the same (and so does load_trained_model).
  spit(t.dir / "cut.h5", bytes.substr(0, bytes.size() / 2));
  const std::string e1 = error_of([&] { train(cfg, 0, (t.dir / "cut.h5").string()); });
  EXPECT_NE(e1.find("truncated or corrupted"), std::string::npos) << e1;
  const std::string e2 = error_of([&] { trainers::formats::load_trained_model((t.dir / "cut.h5").string()); });
  EXPECT_NE(e2.find("truncated or corrupted"), std::string::npos) << e2;

  // A flipped byte anywhere: a clear CheckpointError, or (unused bytes) exactly the original data.
  // (BITNET_FLIPS=N tries N positions instead.)
  const int n = std::getenv("BITNET_FLIPS") ? std::atoi(std::getenv("BITNET_FLIPS")) : 160;
  int refused = 0, accepted = 0;
  for (int i = 0; i < n; ++i) {
    std::string bad = bytes;
    const size_t pos = size_t(double(bytes.size()) * (i + 0.5) / double(n));
    bad[pos] = char(bad[pos] ^ 0x10);
    const std::string p = (t.dir / "fuzz.h5").string();
    spit(p, bad);
    try {
      const Flat f = flat(cfg, p);
      expect_bit_identical(f, ref);
      ++accepted;
    } catch (const trainers::formats::CheckpointError& e) {
      EXPECT_NE(std::string(e.what()).find(p), std::string::npos) << e.what();
      ++refused;
    }
  }
  std::printf("byte flips at %d positions: %d refused, %d harmless\n", n, refused, accepted);
  EXPECT_GT(refused, n * 7 / 8);
}

// A scalar attribute rewritten as an array (found by fuzz_checkpoint: H5Aread then wrote 24 bytes
// into an 8-byte variable) is refused by name before anything is read into it.
TEST(Checkpoint, AttributesRewrittenAsArraysAreRefused) {
  Tmp t;
  t.single_thread = true;
  const Config cfg = t.config("run", {"training.steps=2", "checkpoint.every=2", "schedule.warmup=1"});
  train(cfg);
  const std::string bytes = slurp(trainers::formats::checkpoint_path(t.run_dir("run"), 2));
  H5Eset_auto2(H5E_DEFAULT, nullptr, nullptr);
  // Rewrites attribute `attr` of object `obj` as a 3-element array of `type`, then re-seals the file.
  auto rewrite = [&](const std::string& name, const char* obj, const char* attr, hid_t type) {
    const std::string p = (t.dir / name).string();
    spit(p, bytes.substr(0, bytes.size() - 24));
    const hid_t f = H5Fopen(p.c_str(), H5F_ACC_RDWR, H5P_DEFAULT);
    EXPECT_GE(f, 0);
    EXPECT_GE(H5Adelete_by_name(f, obj, attr, H5P_DEFAULT), 0);
    const hsize_t n = 3;
    const hid_t space = H5Screate_simple(1, &n, nullptr);
    const hid_t a = H5Acreate_by_name(f, obj, attr, type, space, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
    EXPECT_GE(a, 0);
    const uint64_t v[3] = {1, 2, 3};
    EXPECT_GE(H5Awrite(a, H5T_NATIVE_UINT64, v), 0);
    H5Aclose(a), H5Sclose(space), H5Fclose(f);
    trainers::formats::seal_checkpoint_file(p, p);
    return p;
  };
  auto load = [&](const std::string& p) {
    nn::BitNetLM model(cfg.model, 1);
    optim::AdamW opt(model.params(), cfg.adamw);
    trainers::formats::load_checkpoint(p, model, &opt, &cfg);
  };
  const std::string ds = "/params/model.embed_tokens.weight";
  const std::string p1 = rewrite("checksum3.h5", ds.c_str(), "checksum", H5T_NATIVE_UINT64);
  const std::string e1 = error_of([&] { load(p1); });
  EXPECT_NE(e1.find(p1 + ": attribute " + ds + " checksum: holds 3 elements, expected one"), std::string::npos) << e1;
  const std::string p2 = rewrite("step3.h5", "/", "step", H5T_NATIVE_INT64);
  const std::string e2 = error_of([&] { load(p2); });
  EXPECT_NE(e2.find(p2 + ": attribute / step: holds 3 elements, expected one"), std::string::npos) << e2;
  const std::string e3 = error_of([&] { (void)trainers::formats::read_checkpoint_info(p2); });
  EXPECT_NE(e3.find("holds 3 elements, expected one"), std::string::npos) << e3;
}

// The BitLinear route and the fp32 GEMM library are recorded in every checkpoint (/state) and in
// run.json; a resume names both values when they differ, and an older checkpoint without them
// still resumes (with a note).
TEST(Checkpoint, RecordsTheBitLinearRouteAndGemmAndWarnsOnResumeWhenTheyDiffer) {
  Tmp t;
  t.single_thread = true;
  const std::string route = quant::to_string(quant::bitlinear_route());
  const std::string backend = autograd::kernels::gemm_backend(), core = autograd::kernels::gemm_core();
  const std::string other = route == "float" ? "integer-vnni" : "float";
  const std::vector<std::string> four = {"training.steps=4", "checkpoint.every=2", "schedule.warmup=1",
                                         "training.eval_every=0"};
  train(t.config("run", four), 2);
  const std::string ck = trainers::formats::checkpoint_path(t.run_dir("run"), 2);
  const trainers::formats::Numerics n = trainers::formats::read_checkpoint_info(ck).state.numerics;
  EXPECT_EQ(n.bitlinear_route, route);
  EXPECT_EQ(n.gemm_backend, backend);
  EXPECT_EQ(n.gemm_core, core);
  const nlohmann::json info = nlohmann::json::parse(slurp(t.dir / "run/run.json"));
  EXPECT_EQ(info["bitlinear_route"], route);
  EXPECT_EQ(info["gemm_backend"], backend);
  EXPECT_EQ(info["gemm_core"], core);
  EXPECT_EQ(info["threads"], 1);
  EXPECT_TRUE(info["resumed_from"].is_null());

  // A copy of the run whose checkpoint's /state attributes are rewritten (value "" = deleted).
  const std::string bytes = slurp(ck);
  H5Eset_auto2(H5E_DEFAULT, nullptr, nullptr);
  auto variant = [&](const std::string& name, const std::vector<std::pair<const char*, std::string>>& attrs) {
    fs::copy(t.dir / "run", t.dir / name, fs::copy_options::recursive);
    const std::string p = trainers::formats::checkpoint_path(t.run_dir(name), 2);
    spit(p, bytes.substr(0, bytes.size() - 24));
    const hid_t f = H5Fopen(p.c_str(), H5F_ACC_RDWR, H5P_DEFAULT);
    const hid_t g = H5Gopen2(f, "/state", H5P_DEFAULT);
    EXPECT_GE(g, 0);
    for (const auto& [attr, v] : attrs) {
      EXPECT_GE(H5Adelete(g, attr), 0) << attr;
      if (v.empty()) continue;
      const hid_t type = H5Tcopy(H5T_C_S1), space = H5Screate(H5S_SCALAR);
      H5Tset_size(type, v.size() + 1);
      const hid_t a = H5Acreate2(g, attr, type, space, H5P_DEFAULT, H5P_DEFAULT);
      EXPECT_GE(H5Awrite(a, type, v.c_str()), 0) << attr;
      H5Aclose(a), H5Sclose(space), H5Tclose(type);
    }
    H5Gclose(g), H5Fclose(f);
    trainers::formats::seal_checkpoint_file(p, p);
    return p;
  };
  // Resumes the variant to the end; returns what it printed on stderr.
  auto resume = [&](const std::string& name) {
    ::testing::internal::CaptureStderr();
    const auto r = train(t.config(name, four), 0, t.run_dir(name));
    const std::string err = ::testing::internal::GetCapturedStderr();
    EXPECT_EQ(r.steps, 4) << name;
    return err;
  };
  const std::string route_warning = "warning: the checkpoint was written with BitLinear route " + other +
                                    ", this run takes " + route + ":";
  const std::string gemm_warning = "warning: the checkpoint was written with fp32 GEMM " + backend +
                                   " (kernel other-core), this run uses " + backend + " (kernel " + core + "):";

  const std::string p1 = variant("route", {{"bitlinear_route", other}});
  EXPECT_EQ(trainers::formats::read_checkpoint_info(p1).state.numerics.bitlinear_route, other);
  const std::string e1 = resume("route");
  EXPECT_NE(e1.find(route_warning), std::string::npos) << e1;
  EXPECT_EQ(e1.find("fp32 GEMM"), std::string::npos) << e1;
  const nlohmann::json info1 = nlohmann::json::parse(slurp(t.dir / "route/run.json"));
  EXPECT_EQ(info1["bitlinear_route"], route);
  EXPECT_EQ(info1["resumed_from"]["checkpoint"], p1);
  EXPECT_EQ(info1["resumed_from"]["step"], 2);
  EXPECT_EQ(info1["resumed_from"]["bitlinear_route"], other);
  EXPECT_EQ(info1["resumed_from"]["gemm_core"], core);
  EXPECT_EQ(trainers::formats::read_checkpoint_info(trainers::formats::checkpoint_path(t.run_dir("route"), 4)).state.numerics.bitlinear_route,
            route);  // the continuation records its own route

  variant("gemm", {{"gemm_core", "other-core"}});
  const std::string e2 = resume("gemm");
  EXPECT_NE(e2.find(gemm_warning), std::string::npos) << e2;
  EXPECT_EQ(e2.find("BitLinear route"), std::string::npos) << e2;

  // Written before the attributes existed: loads and resumes, with a note instead of a warning.
  const std::string p3 = variant("old", {{"bitlinear_route", ""}, {"gemm_backend", ""}, {"gemm_core", ""}});
  EXPECT_EQ(trainers::formats::read_checkpoint_info(p3).state.numerics.bitlinear_route, "");
  const std::string e3 = resume("old");
  EXPECT_EQ(e3.find("warning"), std::string::npos) << e3;
  EXPECT_NE(e3.find("note: the checkpoint does not record its BitLinear route and fp32 GEMM"), std::string::npos) << e3;
  EXPECT_TRUE(nlohmann::json::parse(slurp(t.dir / "old/run.json"))["resumed_from"]["bitlinear_route"].is_null());

  // The same process: nothing to say.
  EXPECT_TRUE(trainers::formats::numerics_mismatches(n, n).empty());
  EXPECT_TRUE(trainers::formats::numerics_mismatches(trainers::formats::Numerics{}, n).empty());
  EXPECT_EQ(trainers::formats::numerics_mismatches(trainers::formats::Numerics{other, backend, "x"}, n).size(), 2u);
  // Between the two integer routes (equal int32 sums) only a note.
  const auto ints = trainers::formats::numerics_mismatches(trainers::formats::Numerics{"integer-vnni", backend, core},
                                                  trainers::formats::Numerics{"integer-portable", backend, core});
  ASSERT_EQ(ints.size(), 1u);
  EXPECT_EQ(ints[0].rfind("note: the checkpoint was written with BitLinear route integer-vnni, this run takes "
                          "integer-portable:", 0), 0u) << ints[0];
}

TEST(Checkpoint, IncompatibleConfigListsEveryMismatch) {
  Tmp t;
  t.single_thread = true;
  train(t.config("run", {"training.steps=6"}));
  const std::string e = error_of([&] {
    train(t.config("run", {"training.steps=6", "model.d_model=96", "model.ffn_dim=96", "optim.beta2=0.99", "data.seed=7",
                           "stages=[{mode: a4.8}]", "data.micro_batch=4"}),
          0, t.run_dir("run"));
  });
  for (const char* want : {"model.d_model: checkpoint 64, config 96", "model.ffn_dim: checkpoint 128, config 96",
                           "optim.beta2: checkpoint 0.95, config 0.99", "data.seed: checkpoint 1234, config 7",
                           "stages: checkpoint has 2, config 1", "mismatch: /params/model.layers.0.mlp.gate_proj.weight",
                           "mismatch: /params/model.embed_tokens.weight", "step-000000006.h5",
                           "global batch (data.micro_batch x data.grad_accum x ranks): checkpoint 8 x 1 x 1 = 8, this run 4 x 1 x 1 = 4"})
    EXPECT_NE(e.find(want), std::string::npos) << want << "\n" << e;
  std::printf("%s\n", e.c_str());
  // Other training data is refused too (size and fingerprint).
  data::write_shard((t.dir / "data/other.bin").string(), synthetic(60000, 256, 9), 256);
  const std::string e2 = error_of([&] {
    train(t.config("run", {"training.steps=6", "data.train=" + (t.dir / "data/other.bin").string()}), 0, t.run_dir("run"));
  });
  EXPECT_NE(e2.find("data.train: checkpoint 60000 tokens"), std::string::npos) << e2;
  // The same global batch split otherwise (micro-batch 4 x accumulation 2) resumes: the same samples.
  const std::string ck6 = trainers::formats::checkpoint_path(t.run_dir("run"), 6);
  EXPECT_EQ(train(t.config("split", {"training.steps=7", "data.micro_batch=4", "data.grad_accum=2"}), 0, ck6).steps, 7);
  // Length, evaluation, logging and checkpoint settings may differ.
  const auto r = train(t.config("run", {"training.steps=8", "training.eval_every=3", "training.log_every=1", "checkpoint.every=3"}), 0,
                       t.run_dir("run"));
  EXPECT_EQ(r.steps, 8);
  EXPECT_EQ(trainers::formats::resolve_checkpoint(t.run_dir("run")), trainers::formats::checkpoint_path(t.run_dir("run"), 8));
}
