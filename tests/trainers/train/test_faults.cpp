// Crash safety of the real `bitnet train`: SIGKILL at random moments and inside checkpoint writes,
// each trial resumed and compared bit for bit with an uninterrupted run; and a full disk
// (RLIMIT_FSIZE).
#include <fcntl.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <random>
#include <thread>

#include "data/tokens.h"
#include "tests/synthetic_tokens.h"
#include "trainers/config/config.h"
#include "trainers/formats/checkpoint.h"
#include "trainers/train/trainer.h"

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

namespace {
const std::string kBitnet = std::string(BITNET_BINARY_DIR) + "/trainers/bitnet";
const std::string kTiny = std::string(BITNET_SOURCE_DIR) + "/configs/tiny.yaml";

long env_or(const char* name, long dflt) {
  const char* v = std::getenv(name);
  return v && *v ? std::atol(v) : dflt;
}
std::string slurp(const fs::path& p) {
  std::ifstream f(p, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>());
}

struct Scratch {
  fs::path dir;
  Scratch() {
    dir = fs::temp_directory_path() /
          ("bitnet_faults_" + std::to_string(getpid()) + "_" +
           ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(dir);
    fs::create_directories(dir / "data");
    data::write_shard((dir / "data/train.bin").string(), testdata::synthetic(60000, 256, 1), 256);
    data::write_shard((dir / "data/val.bin").string(), testdata::synthetic(6000, 256, 2), 256);
  }
  ~Scratch() { fs::remove_all(dir); }
  std::string run(const std::string& name) const { return (dir / name).string(); }
  std::vector<std::string> sets(const std::string& name, int64_t steps, int64_t every) const {
    return {"data.train=" + (dir / "data/train.bin").string(),
            "data.val=" + (dir / "data/val.bin").string(),
            "training.out_dir=" + run(name),
            "training.steps=" + std::to_string(steps),
            "checkpoint.every=" + std::to_string(every),
            "checkpoint.keep=2",
            "training.eval_every=25",
            "training.log_every=10",
            "training.threads=1",
            "schedule.warmup=5"};
  }
};

// Starts `bitnet train` (stdout to /dev/null, stderr to err_file), optionally with a file size
// limit (SIGXFSZ ignored, so writes past it fail with EFBIG as on a full disk) and extra
// environment.
pid_t spawn_train(const std::vector<std::string>& sets, const std::string& resume,
                  const std::string& err_file, rlim_t fsize_limit = 0,
                  const std::string& env = "") {
  std::vector<std::string> args = {kBitnet, "train", kTiny, "--quiet"};
  for (auto& s : sets) args.insert(args.end(), {"--set", s});
  if (!resume.empty()) args.insert(args.end(), {"--resume", resume});
  std::vector<char*> argv;
  for (auto& a : args) argv.push_back(a.data());
  argv.push_back(nullptr);
  const pid_t pid = fork();
  if (pid == 0) {
    const int out = open("/dev/null", O_WRONLY),
              err = open(err_file.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    dup2(out, 1), dup2(err, 2);
    if (!env.empty()) putenv(const_cast<char*>(env.c_str()));
    setenv("OMP_NUM_THREADS", "1", 1);
    if (fsize_limit) {
      signal(SIGXFSZ, SIG_IGN);
      const rlimit r{fsize_limit, fsize_limit};
      setrlimit(RLIMIT_FSIZE, &r);
    }
    execv(argv[0], argv.data());
    _exit(127);
  }
  return pid;
}
int wait_for(pid_t pid) {
  int status = 0;
  waitpid(pid, &status, 0);
  return status;
}
int run_train(const std::vector<std::string>& sets, const std::string& resume,
              const std::string& err_file) {
  const int st = wait_for(spawn_train(sets, resume, err_file));
  return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
}

// Parameters, moments and AdamW step count of a checkpoint.
struct Flat {
  std::vector<float> p, m, v;
  int64_t steps = 0;
  bool operator==(const Flat& o) const {
    auto same = [](const std::vector<float>& a, const std::vector<float>& b) {
      return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * 4) == 0;
    };
    return same(p, o.p) && same(m, o.m) && same(v, o.v) && steps == o.steps;
  }
};
Flat flat(const trainers::config::Config& cfg, const std::string& path) {
  nn::BitNetLM model(cfg.model, 777);
  optim::AdamW opt(model.params(), cfg.adamw);
  trainers::formats::load_checkpoint(path, model, &opt);
  auto vec = [](const autograd::Tensor& t) {
    return std::vector<float>(t.data(), t.data() + t.numel());
  };
  return {vec(model.params().values()), vec(opt.exp_avg()), vec(opt.exp_avg_sq()), opt.steps()};
}
// metrics.jsonl without the timing fields.
std::vector<std::string> metrics(const std::string& run_dir) {
  std::vector<std::string> out;
  std::ifstream f(run_dir + "/metrics.jsonl");
  for (std::string line; std::getline(f, line);) {
    nlohmann::json j = nlohmann::json::parse(line);
    j.erase("tok_s"), j.erase("time_s");
    out.push_back(j.dump());
  }
  return out;
}
bool has_tmp(const std::string& dir) {
  std::error_code ec;
  for (auto& e : fs::directory_iterator(dir, ec))
    if (e.path().string().size() > 8 && e.path().string().ends_with(".h5.tmp")) return true;
  return false;
}
}  // namespace

// Trials (BITNET_FAULT_TRIALS, default 24; seed BITNET_FAULT_SEED): half are killed at a random
// moment of the run, half while a checkpoint is being written (BITNET_TEST_CHECKPOINT_DELAY_MS=1
// widens each write to ~0.1 s; the kill lands at a random point inside it). Each time the newest
// complete checkpoint must load, and the resumed run must equal the uninterrupted one bit for bit.
TEST(Faults, SigkillAnywhereThenResumeReproducesTheUninterruptedRun) {
  Scratch s;
  const int64_t steps = 150, every = 5;
  const trainers::config::Config cfg =
      trainers::config::load_config(kTiny, s.sets("ref", steps, every));
  const auto t0 = Clock::now();
  ASSERT_EQ(run_train(s.sets("ref", steps, every), "", s.run("ref.err")), 0)
      << slurp(s.run("ref.err"));
  const double ref_s = std::chrono::duration<double>(Clock::now() - t0).count();
  const Flat ref = flat(cfg, trainers::formats::checkpoint_path(s.run("ref"), steps));
  const std::vector<std::string> ref_metrics = metrics(s.run("ref"));

  const long trials = env_or("BITNET_FAULT_TRIALS", 24),
             seed = env_or("BITNET_FAULT_SEED", 20261201);
  std::mt19937_64 rng{uint64_t(seed)};
  int killed = 0, in_write = 0, no_checkpoint = 0;
  std::vector<int64_t> resumed_from;
  int finished_first =
      0;  // attempts where the run ended before the kill (a loaded machine): not trials
  for (long trial = 0; trial < trials && finished_first < trials; ++trial) {
    const std::string name = "t" + std::to_string(trial), dir = s.run(name),
                      ckdir = dir + "/checkpoints";
    const bool during_write = trial % 2 == 1;
    const pid_t pid = spawn_train(s.sets(name, steps, every), "", dir + ".err", 0,
                                  during_write ? "BITNET_TEST_CHECKPOINT_DELAY_MS=1" : "");
    if (during_write) {  // wait for a write to begin (a .tmp appears), then kill at a random point
                         // of it
      const int64_t nth =
          int64_t(rng() % 30);  // which write: any of the 30 (29 periodic + the final one)
      int64_t seen = 0;
      bool was = false;
      const auto deadline = Clock::now() + std::chrono::seconds(60);
      auto running = [pid] {  // (without reaping it: wait_for below gets the status)
        siginfo_t si{};
        return waitid(P_PID, id_t(pid), &si, WEXITED | WNOHANG | WNOWAIT) == 0 && si.si_pid == 0;
      };
      while (Clock::now() < deadline && running()) {
        const bool now = has_tmp(ckdir);
        if (now && !was && ++seen > nth) break;
        was = now;
        std::this_thread::sleep_for(std::chrono::microseconds(500));
      }
      std::this_thread::sleep_for(std::chrono::microseconds(rng() % 90000));
    } else {
      std::this_thread::sleep_for(
          std::chrono::microseconds(int64_t(ref_s * 1e6 * double(rng() % 800) / 1000.0)));
    }
    kill(pid, SIGKILL);
    const int st = wait_for(pid);
    if (WIFEXITED(st) &&
        WEXITSTATUS(st) == 0) {  // it finished first: must equal the reference, then retry
      EXPECT_TRUE(flat(cfg, trainers::formats::checkpoint_path(dir, steps)) == ref)
          << "attempt " << trial;
      ++finished_first, --trial;
      fs::remove_all(dir);
      continue;
    }
    ASSERT_TRUE(WIFSIGNALED(st) && WTERMSIG(st) == SIGKILL)
        << "trial " << trial << ": status " << st;
    ++killed;
    const bool tmp_left = has_tmp(ckdir);
    in_write += tmp_left;

    // Every complete checkpoint loads; the newest is where the run resumes.
    const auto list = trainers::formats::list_checkpoints(ckdir);
    for (auto& [step, path] : list)
      ASSERT_NO_THROW(flat(cfg, path)) << "trial " << trial << ": " << path;
    std::string resume;
    if (list.empty()) {
      ++no_checkpoint;
    } else {
      resume = dir;
      EXPECT_EQ(trainers::formats::resolve_checkpoint(dir), list.back().second);
      resumed_from.push_back(list.back().first);
    }
    ASSERT_EQ(run_train(s.sets(name, steps, every), resume, dir + ".err2"), 0)
        << slurp(dir + ".err2");
    EXPECT_TRUE(flat(cfg, trainers::formats::checkpoint_path(dir, steps)) == ref)
        << "trial " << trial << ": resumed from " << (list.empty() ? "scratch" : list.back().second)
        << " differs";
    EXPECT_EQ(metrics(dir), ref_metrics) << "trial " << trial;
    EXPECT_FALSE(has_tmp(ckdir)) << "trial " << trial << ": a leftover .tmp was not cleaned up";
    fs::remove_all(dir);
  }
  std::string from;
  for (int64_t r : resumed_from) from += " " + std::to_string(r);
  std::printf(
      "fault injection (seed %ld): %d SIGKILLs, %d inside a checkpoint write (.tmp left behind), "
      "%d before the "
      "first checkpoint, %d attempts finished before their kill; resumed from steps%s; every "
      "resumed run equal bit "
      "for bit (reference run %.2f s)\n",
      seed, killed, in_write, no_checkpoint, finished_first, from.c_str(), ref_s);
  EXPECT_GE(killed, 20);
  EXPECT_GE(in_write, int(trials / 2) * 3 / 4) << "too few kills landed inside a checkpoint write";
}

// A full disk during a checkpoint write (a 512 KiB file size limit; a checkpoint is 1.3 MB): the
// run stops with a message naming the failed and the newest intact checkpoint; that one is
// untouched, and resuming from it once there is space reproduces the uninterrupted run.
TEST(Faults, FullDiskDuringACheckpointWriteStopsAndKeepsThePreviousCheckpoint) {
  Scratch s;
  const int64_t steps = 40, every = 10;
  const trainers::config::Config cfg =
      trainers::config::load_config(kTiny, s.sets("run", steps, every));
  {
    trainers::train::LocalComm comm;
    trainers::train::TrainOptions o;
    o.quiet = true;
    o.stop_after = 20;
    trainers::train::train(cfg, o, comm);  // checkpoints at 10 and 20
  }
  const std::string prev = trainers::formats::checkpoint_path(s.run("run"), 20);
  const std::string before = slurp(prev);
  ASSERT_FALSE(before.empty());
  const std::string err = s.run("full.err");
  const int st = wait_for(spawn_train(s.sets("run", steps, every), s.run("run"), err, 512 * 1024));
  ASSERT_TRUE(WIFEXITED(st)) << "the trainer crashed: signal " << WTERMSIG(st);
  EXPECT_EQ(WEXITSTATUS(st), 1);
  const std::string msg = slurp(err);
  std::printf("full disk: exit %d, message:\n%s", WEXITSTATUS(st), msg.c_str());
  for (const std::string& want :
       {trainers::formats::checkpoint_path(s.run("run"), 30) + ": cannot write checkpoint",
        std::string("training stopped after step 30"), "the newest complete checkpoint is " + prev,
        "--resume " + s.run("run")})
    EXPECT_NE(msg.find(want), std::string::npos) << want;
  EXPECT_EQ(slurp(prev), before) << "the previous checkpoint changed";
  EXPECT_FALSE(fs::exists(trainers::formats::checkpoint_path(s.run("run"), 30)));
  EXPECT_FALSE(has_tmp(s.run("run") + "/checkpoints")) << "the failed write left its .tmp";
  EXPECT_EQ(trainers::formats::resolve_checkpoint(s.run("run")), prev);

  // Space again: the resume goes on from step 20 and ends where an uninterrupted run ends.
  ASSERT_EQ(run_train(s.sets("run", steps, every), s.run("run"), s.run("resume.err")), 0)
      << slurp(s.run("resume.err"));
  ASSERT_EQ(run_train(s.sets("ref", steps, every), "", s.run("ref.err")), 0)
      << slurp(s.run("ref.err"));
  EXPECT_TRUE(flat(cfg, trainers::formats::checkpoint_path(s.run("run"), steps)) ==
              flat(cfg, trainers::formats::checkpoint_path(s.run("ref"), steps)));
  EXPECT_EQ(metrics(s.run("run")), metrics(s.run("ref")));
}
