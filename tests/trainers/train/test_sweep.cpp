// `bitnet sweep`: sweep files expanded and refused by line, a 2-run sweep through the trainer
// (table, rows, plots), an interrupted sweep resumed (the finished run skipped, the cut one equal
// to an uninterrupted run), a diverging run recorded with its step, and --report rebuilding.
#include <gtest/gtest.h>

#include "tests/trainers/formats/checkpoint_helpers.h"
#include "trainers/config/sweep.h"
#include "trainers/train/plot.h"
#include "trainers/train/sweep.h"

namespace {
using trainers::config::ConfigError;
using trainers::config::load_sweep;
using trainers::config::Sweep;

std::string tiny() { return std::string(BITNET_SOURCE_DIR) + "/configs/tiny.yaml"; }

// Writes a sweep file into t.dir whose common overrides are Tmp's tiny 24-step run.
std::string sweep_file(const Tmp& t, const std::string& body, const std::string& out = "sw") {
  std::string common = "set: [";
  for (const std::string& s : t.sets("unused")) {
    if (s.rfind("training.out_dir=", 0) == 0) continue;
    common += "'" + s + "', ";
  }
  common += "'training.threads=1']\n";
  const std::string path = (t.dir / "sweep.yaml").string();
  spit(path, "base: " + tiny() + "\nout_dir: " + (t.dir / out).string() + "\n" + common + body);
  return path;
}

std::vector<nlohmann::json> rows(const fs::path& dir) {
  std::vector<nlohmann::json> out;
  std::ifstream f(dir / "sweep.jsonl");
  for (std::string line; std::getline(f, line);) out.push_back(nlohmann::json::parse(line));
  return out;
}

// `bitnet sweep FILE --jobs 2`, its output in t.dir/jobs.out; the exit status.
int jobs2(const Tmp& t, const std::string& file) {
  const std::string cmd = std::string(BITNET_BINARY_DIR) + "/trainers/bitnet sweep " + file +
                          " --jobs 2 > " + (t.dir / "jobs.out").string() + " 2>&1";
  return std::system(cmd.c_str());
}

int sweep(const Sweep& sw, int64_t stop_after = 0) {
  trainers::train::LocalComm comm;
  trainers::train::SweepOptions o;
  o.quiet = true;
  o.stop_after = stop_after;
  return trainers::train::run_sweep(sw, o, comm);
}
}  // namespace

TEST(Sweep, ExpandsVariantsGridAndSeedsInOrder) {
  Tmp t;
  const Sweep sw = load_sweep(sweep_file(t,
                                         "variants:\n"
                                         "  - {name: a, set: [schedule.peak1=1e-3]}\n"
                                         "  - {name: b}\n"
                                         "grid:\n  schedule.wd1: [0, 0.1]\n"
                                         "seeds: [7, 8]\n"),
                              {"training.steps=12"});
  std::vector<std::string> names;
  for (auto& r : sw.runs) names.push_back(r.name);
  EXPECT_EQ(names, (std::vector<std::string>{"a_wd1=0_seed=7", "a_wd1=0_seed=8", "a_wd1=0.1_seed=7",
                                             "a_wd1=0.1_seed=8", "b_wd1=0_seed=7", "b_wd1=0_seed=8",
                                             "b_wd1=0.1_seed=7", "b_wd1=0.1_seed=8"}));
  EXPECT_EQ(sw.runs[2].own, (std::vector<std::string>{"schedule.peak1=1e-3", "schedule.wd1=0.1",
                                                      "training.seed=7", "data.seed=7"}));
  // the command line's --set comes after the run's own, and the run directory last
  const auto& s = sw.runs[2].sets;
  ASSERT_GE(s.size(), 2u);
  EXPECT_EQ(s[s.size() - 2], "training.steps=12");
  EXPECT_EQ(s.back(), "training.out_dir=" + (t.dir / "sw" / "a_wd1=0.1_seed=7").string());
  const trainers::config::Config c = trainers::config::load_config(sw.base, s);
  EXPECT_EQ(c.training.seed, 7u);
  EXPECT_EQ(c.training.steps, 12);
  EXPECT_DOUBLE_EQ(c.schedule.peak1, 1e-3);
}

TEST(Sweep, RefusesBadFilesNamingTheLine) {
  Tmp t;
  auto err = [&](const std::string& body) {
    try {
      (void)load_sweep(sweep_file(t, body));
    } catch (const ConfigError& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  EXPECT_NE(err("variants: [{name: a}]\nbogus: 1\n").find("sweep.yaml:5: bogus: unknown key"),
            std::string::npos)
      << err("variants: [{name: a}]\nbogus: 1\n");
  EXPECT_NE(err("variants:\n  - {name: a}\n  - {name: a}\n").find("two runs are named 'a'"),
            std::string::npos);
  EXPECT_NE(err("variants:\n  - {name: 'a/b'}\n")
                .find("sweep.yaml:5: variants: run name 'a/b' has "
                      "the character '/'"),
            std::string::npos)
      << err("variants:\n  - {name: 'a/b'}\n");
  EXPECT_NE(err("variants:\n  - {name: a, sett: [x=1]}\n")
                .find("sweep.yaml:5: variants.sett: unknown key"),
            std::string::npos)
      << err("variants:\n  - {name: a, sett: [x=1]}\n");
  EXPECT_NE(err("seeds: [1]\n").find("a sweep needs variants, a grid, or both"), std::string::npos);
  EXPECT_NE(err("variants:\n  - {name: a, set: [noequals]}\n").find("'noequals' is not key=value"),
            std::string::npos);
  // a bad key of one run's config is refused before any run starts, naming the run and the key
  const std::string e =
      err("variants:\n  - {name: ok}\n  - {name: bad, set: [schedule.peak9=1]}\n");
  EXPECT_NE(e.find("run 'bad'"), std::string::npos) << e;
  EXPECT_NE(e.find("schedule.peak9"), std::string::npos) << e;
  EXPECT_FALSE(fs::exists(t.dir / "sw")) << "a refused sweep wrote files";
  // data that does not exist: refused before any run starts, naming the run, the path and the fix
  const Sweep nodata = load_sweep(
      sweep_file(t, "variants:\n  - {name: a}\n  - {name: b, set: [data.val=/no/such.bin]}\n"));
  try {
    (void)sweep(nodata);
    ADD_FAILURE() << "no error";
  } catch (const std::exception& e) {
    EXPECT_NE(std::string(e.what()).find("run 'b': data '/no/such.bin' does not exist; prepare it"),
              std::string::npos)
        << e.what();
  }
  EXPECT_FALSE(fs::exists(t.dir / "sw")) << "the refused sweep wrote files";
  spit(t.dir / "nobase.yaml", "variants: [{name: a}]\n");
  try {
    (void)load_sweep((t.dir / "nobase.yaml").string());
    ADD_FAILURE() << "no error";
  } catch (const ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find("base: required"), std::string::npos) << e.what();
  }
}

// Two runs; the first is interrupted at step 8 (as Ctrl-C would), then the sweep is run again:
// the interrupted run resumes from its checkpoint and ends equal to the same run uninterrupted,
// and a third invocation skips both. Then the table, rows and plots; --report rebuilds them.
TEST(Sweep, RunsResumesSkipsAndReports) {
  Tmp t;
  const Sweep sw = load_sweep(sweep_file(t,
                                         "variants:\n"
                                         "  - {name: low, set: [schedule.peak1=1e-3]}\n"
                                         "  - {name: high, set: [schedule.peak1=3e-3]}\n"));
  const fs::path out = t.dir / "sw";
  EXPECT_EQ(sweep(sw, /*stop_after=*/8), 130);
  EXPECT_FALSE(fs::exists(out / "low" / "sweep_result.json"));
  EXPECT_FALSE(fs::exists(out / "high")) << "the sweep went on after an interruption";
  std::vector<nlohmann::json> r = rows(out);
  ASSERT_EQ(r.size(), 2u);
  EXPECT_EQ(r[0]["status"], "interrupted");
  EXPECT_EQ(r[1]["status"], "not run");

  EXPECT_EQ(sweep(sw), 0);
  // the same run in one go, by the trainer directly
  std::vector<std::string> sets = sw.runs[0].sets;
  sets.back() = "training.out_dir=" + (t.dir / "alone").string();
  train(trainers::config::load_config(sw.base, sets));
  EXPECT_EQ(metrics((out / "low").string()), metrics((t.dir / "alone").string()))
      << "the resumed run differs from the uninterrupted one";

  const std::string before = slurp(out / "high" / "metrics.jsonl");
  EXPECT_EQ(sweep(sw), 0);
  EXPECT_EQ(slurp(out / "high" / "metrics.jsonl"), before) << "a finished run was run again";

  r = rows(out);
  ASSERT_EQ(r.size(), 2u);
  for (const auto& row : r) {
    EXPECT_EQ(row["status"], "finished") << row.dump();
    EXPECT_EQ(row["steps"], 24);
    EXPECT_EQ(row["diverged"], false);
    ASSERT_TRUE(row["final_val_loss"].is_number()) << row.dump();
    EXPECT_GT(row["final_val_loss"].get<double>(), 0);
    EXPECT_LE(row["best_val_loss"].get<double>(), row["final_val_loss"].get<double>());
    EXPECT_DOUBLE_EQ(row["best_val_ppl"].get<double>(),
                     std::exp(row["best_val_loss"].get<double>()));
    EXPECT_GT(row["sparsity"]["overall"].get<double>(), 0);  // a4.8 from step 18
  }
  EXPECT_EQ(r[0]["sets"], nlohmann::json({"schedule.peak1=1e-3"}));
  EXPECT_EQ(r[0]["tokens"], 24 * 8 * 32);
  // the row's final loss is the run's last evaluation
  double last_val = 0;
  std::ifstream mf(out / "low" / "metrics.jsonl");
  for (std::string line; std::getline(mf, line);) {
    const auto j = nlohmann::json::parse(line);
    if (j.contains("val_loss")) last_val = j["val_loss"].get<double>();
  }
  EXPECT_EQ(r[0]["final_val_loss"].get<double>(), last_val);
  const std::string md = slurp(out / "sweep.md");
  EXPECT_NE(md.find("| low | finished |"), std::string::npos) << md;
  EXPECT_NE(md.find("| high | finished |"), std::string::npos) << md;
  const std::string svg = slurp(out / "sweep_loss.svg");
  EXPECT_NE(svg.find(">low</text>"), std::string::npos);
  EXPECT_NE(svg.find(">high</text>"), std::string::npos);
  EXPECT_NE(svg.find("-&gt; a4.8"), std::string::npos) << "no stage marker";
  if (trainers::train::png_supported()) {
    const std::string png = slurp(out / "sweep_loss.png");
    ASSERT_GT(png.size(), 1000u);
    EXPECT_EQ(png.substr(1, 3), "PNG");
  }
  // --report rebuilds the same table from the run directories
  fs::remove(out / "sweep.md");
  fs::remove(out / "sweep.jsonl");
  trainers::train::write_sweep_report(out.string());
  EXPECT_EQ(slurp(out / "sweep.md"), md);
}

TEST(Sweep, RecordsADivergedRunAndGoesOn) {
  Tmp t;
  const Sweep sw = load_sweep(sweep_file(t,
                                         "variants:\n"
                                         "  - {name: blowup, set: [schedule.peak1=1e30, "
                                         "schedule.peak2=1e30]}\n"
                                         "  - {name: fine}\n"));
  EXPECT_EQ(sweep(sw), 0);
  const std::vector<nlohmann::json> r = rows(t.dir / "sw");
  ASSERT_EQ(r.size(), 2u);
  EXPECT_EQ(r[0]["status"], "diverged") << r[0].dump();
  EXPECT_EQ(r[0]["diverged"], true);
  EXPECT_GT(r[0]["diverged_step"].get<int64_t>(), 0);
  EXPECT_LT(r[0]["diverged_step"].get<int64_t>(), 24);
  EXPECT_NE(r[0]["message"].get<std::string>().find("non-finite"), std::string::npos);
  EXPECT_EQ(r[1]["status"], "finished");
  EXPECT_NE(slurp(t.dir / "sw" / "sweep.md").find("diverged at step "), std::string::npos);
}

// --jobs 2 through the CLI: two `bitnet train` processes at a time, each run's log in its
// directory, the same metrics as the runs one after another in this process (the tiny run is
// bit-identical across thread counts: CudaTrain / Train tests check that separately).
TEST(Sweep, JobsRunsProcessesSideBySide) {
  Tmp t;
  const std::string body =
      "variants:\n  - {name: low, set: [schedule.peak1=1e-3]}\n  - {name: high, set: "
      "[schedule.peak1=3e-3]}\n";
  const Sweep here = load_sweep(sweep_file(t, body, "here"));
  EXPECT_EQ(sweep(here), 0);
  ASSERT_EQ(jobs2(t, sweep_file(t, body, "jobs")), 0) << slurp(t.dir / "jobs.out");
  const std::string out = slurp(t.dir / "jobs.out");
  EXPECT_NE(out.find("started low"), std::string::npos) << out;
  EXPECT_NE(out.find("started high"), std::string::npos) << out;
  for (const char* run : {"low", "high"}) {
    EXPECT_TRUE(fs::exists(t.dir / "jobs" / run / "train.log")) << run;
    EXPECT_EQ(metrics((t.dir / "jobs" / run).string()), metrics((t.dir / "here" / run).string()))
        << run;
  }
  const std::vector<nlohmann::json> r = rows(t.dir / "jobs");
  ASSERT_EQ(r.size(), 2u);
  EXPECT_EQ(r[0]["status"], "finished");
  EXPECT_EQ(r[1]["status"], "finished");
}

// SIGKILL in the middle of a sweep (the second run under way, the first finished): the next
// invocation skips the first run and resumes the second from its newest checkpoint, ending with
// the metrics of the same sweep never killed.
TEST(Sweep, KilledSweepResumesAndSkipsTheFinishedRun) {
  Tmp t;
  const std::string body =
      "variants:\n  - {name: first}\n  - {name: second, set: [training.steps=400, "
      "schedule.peak1=1e-3, checkpoint.every=20]}\n";
  const Sweep whole = load_sweep(sweep_file(t, body, "whole"));
  EXPECT_EQ(sweep(whole), 0);
  const std::string file = sweep_file(t, body, "killed");
  const fs::path out = t.dir / "killed";
  const std::string bin = std::string(BITNET_BINARY_DIR) + "/trainers/bitnet";
  const std::string log = (t.dir / "killed.out").string();
  const pid_t pid = fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    const int fd = ::open(log.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    dup2(fd, 1), dup2(fd, 2);
    execl(bin.c_str(), bin.c_str(), "sweep", file.c_str(), "--quiet", (char*)nullptr);
    _exit(127);
  }
  // wait until the second run has written a checkpoint, then kill the sweep
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(120);
  bool cut = false;
  while (std::chrono::steady_clock::now() < deadline) {
    if (fs::exists(out / "second" / "checkpoints") &&
        !trainers::formats::list_checkpoints((out / "second" / "checkpoints").string()).empty()) {
      cut = true;
      break;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  }
  kill(pid, SIGKILL);
  int status = 0;
  waitpid(pid, &status, 0);
  ASSERT_TRUE(cut) << "no checkpoint of the second run within 120 s: " << slurp(log);
  ASSERT_TRUE(WIFSIGNALED(status)) << "the sweep ended before it was killed: " << slurp(log);
  EXPECT_TRUE(fs::exists(out / "first" / "sweep_result.json"));
  EXPECT_FALSE(fs::exists(out / "second" / "sweep_result.json"));
  const std::string first_before = slurp(out / "first" / "metrics.jsonl");

  EXPECT_EQ(sweep(load_sweep(file)), 0);
  EXPECT_EQ(slurp(out / "first" / "metrics.jsonl"), first_before) << "the finished run ran again";
  EXPECT_EQ(metrics((out / "second").string()), metrics((t.dir / "whole" / "second").string()))
      << "the resumed run differs from the run never killed";
  const std::vector<nlohmann::json> r = rows(out);
  ASSERT_EQ(r.size(), 2u);
  EXPECT_EQ(r[1]["status"], "finished");
  EXPECT_EQ(r[1]["steps"], 400);
}

// Every shipped sweep (configs/sweeps/, gpu/ too) loads: its keys exist and every run's config
// validates.
TEST(Sweep, ShippedSweepsLoad) {
  const fs::path dir = fs::path(BITNET_SOURCE_DIR) / "configs" / "sweeps";
  const fs::path cwd = fs::current_path();
  fs::current_path(BITNET_SOURCE_DIR);  // their base paths are relative to the checkout
  int n = 0;
  for (const auto& e : fs::recursive_directory_iterator(dir)) {
    if (e.path().extension() != ".yaml") continue;
    ++n;
    try {
      const Sweep sw = load_sweep(e.path().string());
      EXPECT_GE(sw.runs.size(), 2u) << e.path();
      EXPECT_EQ(sw.out_dir.rfind("runs/sweeps/", 0), 0u) << e.path();
    } catch (const std::exception& ex) {
      ADD_FAILURE() << e.path() << ": " << ex.what();
    }
  }
  fs::current_path(cwd);
  EXPECT_GE(n, 8);
}

// init_from: a run starts from the model an earlier run of the sweep finished with (the same
// seed), in this process and as processes (--jobs 2 waits for the source); a name that is no
// earlier variant nor a file is refused.
TEST(Sweep, InitFromAnEarlierRun) {
  Tmp t;
  const std::string body =
      "variants:\n  - {name: first}\n  - {name: cont, init_from: first, set: [schedule.peak1=1e-3, "
      "\"stages=[{mode: a4.8}]\"]}\nseeds: [3]\n";
  const Sweep sw = load_sweep(sweep_file(t, body, "here"));
  ASSERT_EQ(sw.runs.size(), 2u);
  EXPECT_EQ(sw.runs[1].init_run, "first_seed=3");
  EXPECT_EQ(sweep(sw), 0);
  // the same continuation by the trainer directly
  std::vector<std::string> sets = sw.runs[1].sets;
  sets.back() = "training.out_dir=" + (t.dir / "direct").string();
  trainers::train::LocalComm comm;
  trainers::train::TrainOptions o;
  o.quiet = true;
  o.init_from = (t.dir / "here" / "first_seed=3" / "model.safetensors").string();
  trainers::train::train(trainers::config::load_config(sw.base, sets), o, comm);
  EXPECT_EQ(metrics((t.dir / "here" / "cont_seed=3").string()),
            metrics((t.dir / "direct").string()));
  // it starts where the first run ended, not from scratch (ln 256 = 5.55 at the first step)
  auto first_loss = [](const fs::path& d) {
    std::ifstream f(d / "metrics.jsonl");
    std::string line;
    std::getline(f, line);
    return nlohmann::json::parse(line)["loss"].get<double>();
  };
  EXPECT_LT(first_loss(t.dir / "here" / "cont_seed=3"),
            first_loss(t.dir / "here" / "first_seed=3") - 0.2);
  const std::vector<nlohmann::json> r = rows(t.dir / "here");
  EXPECT_EQ(r[1]["sets"][0], "init_from=first_seed=3");

  ASSERT_EQ(jobs2(t, sweep_file(t, body, "jobs")), 0) << slurp(t.dir / "jobs.out");
  EXPECT_EQ(metrics((t.dir / "jobs" / "cont_seed=3").string()),
            metrics((t.dir / "here" / "cont_seed=3").string()))
      << slurp(t.dir / "jobs.out");

  try {
    (void)load_sweep(sweep_file(t, "variants:\n  - {name: a, init_from: b}\n  - {name: b}\n"));
    ADD_FAILURE() << "no error";
  } catch (const ConfigError& e) {
    EXPECT_NE(
        std::string(e.what()).find("'b' is neither a variant named before 'a' nor a model file"),
        std::string::npos)
        << e.what();
  }
}
