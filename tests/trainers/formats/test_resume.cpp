// Resuming from checkpoints: bit-identical to the uninterrupted run, after SIGKILL, route and GEMM
// records.
#include "tests/trainers/formats/checkpoint_helpers.h"

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
  const auto ma = trainers::formats::load_trained_model(t.run_dir("ref")),
             mb = trainers::formats::load_trained_model(t.run_dir("run"));
  EXPECT_EQ(std::memcmp(ma.model->params().values().data(), mb.model->params().values().data(),
                        size_t(ma.model->params().numel()) * 4),
            0);
}
INSTANTIATE_TEST_SUITE_P(Checkpoint, ResumeAt, ::testing::Values(8, 12, 18, 20));

TEST(Checkpoint, ResumeFromAnOlderCheckpointCutsTheMetricsAndLaterCheckpoints) {
  Tmp t;
  t.single_thread = true;
  train(t.config("ref"));
  train(t.config("run"), 17);  // checkpoints 5, 10, 15, 17; metrics up to step 16 + final eval
  EXPECT_EQ(trainers::formats::list_checkpoints(t.run_dir("run") + "/checkpoints").size(),
            3u);  // keep 3: 10, 15, 17
  train(t.config("run"), 0, trainers::formats::checkpoint_path(t.run_dir("run"), 10));
  expect_same_run(t, t.config("ref"), "ref", "run");
  // Resuming a checkpoint into another run directory (out_dir may differ) carries its metrics
  // along.
  train(t.config("moved", {"training.eval_every=5"}), 0,
        trainers::formats::checkpoint_path(t.run_dir("ref"), 15));
  expect_same_run(t, t.config("ref"), "ref", "moved");
}

TEST(Checkpoint, ResumeAfterSigkillEqualsTheUninterruptedRun) {
  Tmp t;
  t.single_thread = true;  // (child and parent alike; multi-threaded determinism: ResumeAt)
  // The child is the real CLI; it writes a checkpoint every 5 steps and is killed after the first.
  const std::vector<std::string> extra = {"training.steps=120", "checkpoint.every=5",
                                          "checkpoint.keep=2", "training.eval_every=25"};
  std::vector<std::string> args = {std::string(BITNET_BINARY_DIR) + "/trainers/bitnet", "train",
                                   std::string(BITNET_SOURCE_DIR) + "/configs/tiny.yaml",
                                   "--quiet"};
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
  ASSERT_TRUE(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL)
      << "the child finished before the kill";
  EXPECT_FALSE(fs::exists(t.run_dir("killed") + "/model.safetensors"));
  const std::string from = trainers::formats::resolve_checkpoint(t.run_dir("killed"));
  std::printf("killed after %s; resuming\n", fs::path(from).filename().c_str());

  train(t.config("killed", extra), 0, t.run_dir("killed"));
  train(t.config("ref", extra));
  const Config cfg = t.config("ref", extra);
  expect_same_run(t, cfg, "ref", "killed");
}

// The BitLinear route and the fp32 GEMM library are recorded in every checkpoint (/state) and in
// run.json; a resume names both values when they differ, and an older checkpoint without them
// still resumes (with a note).
TEST(Checkpoint, RecordsTheBitLinearRouteAndGemmAndWarnsOnResumeWhenTheyDiffer) {
  Tmp t;
  t.single_thread = true;
  const std::string route = quant::to_string(quant::bitlinear_route());
  const std::string backend = autograd::kernels::gemm_backend(),
                    core = autograd::kernels::gemm_core();
  const std::string other = route == "float" ? "integer-vnni" : "float";
  const std::vector<std::string> four = {"training.steps=4", "checkpoint.every=2",
                                         "schedule.warmup=1", "training.eval_every=0"};
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
  auto variant = [&](const std::string& name,
                     const std::vector<std::pair<const char*, std::string>>& attrs) {
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
  const std::string route_warning = "warning: the checkpoint was written with BitLinear route " +
                                    other + ", this run takes " + route + ":";
  const std::string gemm_warning = "warning: the checkpoint was written with fp32 GEMM " + backend +
                                   " (kernel other-core), this run uses " + backend + " (kernel " +
                                   core + "):";

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
  EXPECT_EQ(trainers::formats::read_checkpoint_info(
                trainers::formats::checkpoint_path(t.run_dir("route"), 4))
                .state.numerics.bitlinear_route,
            route);  // the continuation records its own route

  variant("gemm", {{"gemm_core", "other-core"}});
  const std::string e2 = resume("gemm");
  EXPECT_NE(e2.find(gemm_warning), std::string::npos) << e2;
  EXPECT_EQ(e2.find("BitLinear route"), std::string::npos) << e2;

  // Written before the attributes existed: loads and resumes, with a note instead of a warning.
  const std::string p3 =
      variant("old", {{"bitlinear_route", ""}, {"gemm_backend", ""}, {"gemm_core", ""}});
  EXPECT_EQ(trainers::formats::read_checkpoint_info(p3).state.numerics.bitlinear_route, "");
  const std::string e3 = resume("old");
  EXPECT_EQ(e3.find("warning"), std::string::npos) << e3;
  EXPECT_NE(e3.find("note: the checkpoint does not record its BitLinear route and fp32 GEMM"),
            std::string::npos)
      << e3;
  EXPECT_TRUE(
      nlohmann::json::parse(slurp(t.dir / "old/run.json"))["resumed_from"]["bitlinear_route"]
          .is_null());

  // The same process: nothing to say.
  EXPECT_TRUE(trainers::formats::numerics_mismatches(n, n).empty());
  EXPECT_TRUE(trainers::formats::numerics_mismatches(trainers::formats::Numerics{}, n).empty());
  EXPECT_EQ(
      trainers::formats::numerics_mismatches(trainers::formats::Numerics{other, backend, "x"}, n)
          .size(),
      2u);
  // Between the two integer routes (equal int32 sums) only a note.
  const auto ints = trainers::formats::numerics_mismatches(
      trainers::formats::Numerics{"integer-vnni", backend, core},
      trainers::formats::Numerics{"integer-portable", backend, core});
  ASSERT_EQ(ints.size(), 1u);
  EXPECT_EQ(
      ints[0].rfind(
          "note: the checkpoint was written with BitLinear route integer-vnni, this run takes "
          "integer-portable:",
          0),
      0u)
      << ints[0];
}
