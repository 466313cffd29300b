// Checkpoint files: round trip, non-finite state, rotation, corrupt or edited files, config
// mismatches.
#include "tests/trainers/formats/checkpoint_helpers.h"

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
  st.step = 17, st.stage = 1, st.mode = "a4.8", st.loader_cursor = 1234567, st.training_seed = 5,
  st.data_seed = 6;
  st.world = 1, st.threads = 3, st.train_tokens = 60000,
  st.train_fingerprint = 0xfeedfacecafebeefULL, st.skipped = 2, st.bad_in_row = 1;
  st.first_loss = 5.25, st.window_loss = 1.0 / 3.0, st.window_n = 3, st.val_loss_at_stage2 = 2.5,
  st.elapsed_s = 9.75;
  st.metrics_bytes = 4321;
  std::string tok;
  for (int i = 0; i < 1000; ++i) tok += char(i * 7);  // every byte value, zeros included
  const std::string path = (t.dir / "ck.h5").string();
  trainers::formats::save_checkpoint(path, model, opt, st, cfg.resolved_yaml, tok);
  EXPECT_FALSE(fs::exists(path + ".tmp"));

  nn::BitNetLM model2(cfg.model, 99);
  optim::AdamW opt2(model2.params(), cfg.adamw);
  const trainers::formats::CheckpointInfo ci =
      trainers::formats::load_checkpoint(path, model2, &opt2, &cfg);
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

  // load_trained_model reads checkpoints too: the file, or a run directory without
  // model.safetensors.
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
  for (const Case& c :
       {Case{e.var.data() + 3, NAN,
             "/params/model.layers.1.self_attn.o_proj.weight holds nan at flat index 3"},
        Case{opt.exp_avg().data() + e.offset + 4, INFINITY,
             "/optim/exp_avg/model.layers.1.self_attn.o_proj.weight holds inf at flat index 4"},
        Case{opt.exp_avg_sq().data() + e.offset + 5, -1.0f,
             "/optim/exp_avg_sq/model.layers.1.self_attn.o_proj.weight holds -1.000000 at flat "
             "index 5"}}) {
    const float keep = *c.where;
    *c.where = c.value;
    const std::string err = error_of(
        [&] { trainers::formats::save_checkpoint(path, model, opt, {}, cfg.resolved_yaml, ""); });
    EXPECT_NE(err.find(path + ": refusing to write a checkpoint: " + c.want), std::string::npos)
        << err;
    EXPECT_FALSE(fs::exists(path));
    EXPECT_FALSE(fs::exists(path + ".tmp"));
    *c.where = keep;
  }
  trainers::formats::save_checkpoint(path, model, opt, {}, cfg.resolved_yaml,
                                     "");  // the restored state is written
  EXPECT_TRUE(fs::exists(path));
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
  spit(dir + "/step-000000026.h5.tmp",
       slurp(trainers::formats::checkpoint_path(t.run_dir("run"), 24)).substr(0, 5000));
  spit(dir + "/step-000000028.h5.tmp", "");
  EXPECT_EQ(trainers::formats::resolve_checkpoint(t.run_dir("run")),
            trainers::formats::checkpoint_path(t.run_dir("run"), 24));
  EXPECT_EQ(trainers::formats::resolve_checkpoint(dir),
            trainers::formats::checkpoint_path(t.run_dir("run"), 24));
  EXPECT_EQ(steps(), (std::vector<int64_t>{20, 22, 24}));
  trainers::formats::rotate_checkpoints(dir, 2);  // the next rotation removes the leftovers
  EXPECT_EQ(steps(), (std::vector<int64_t>{22, 24}));
  EXPECT_FALSE(fs::exists(dir + "/step-000000026.h5.tmp"));
  EXPECT_FALSE(fs::exists(dir + "/step-000000028.h5.tmp"));
  const std::string none =
      error_of([&] { trainers::formats::resolve_checkpoint(t.run_dir("data")); });
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
  auto expect_refused = [&](const std::string& name, const std::string& content,
                            const std::string& why) {
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
    EXPECT_NE(
        err.find(resealed +
                 ": dataset /params/model.embed_tokens.weight: read failed, the data is corrupted"),
        std::string::npos)
        << err;
  }
  // Bytes appended after the trailer, or a damaged trailer, are refused too.
  expect_refused("appended.h5", bytes + "x", "no integrity trailer at the end");
  {
    std::string bad = bytes;
    bad[bad.size() - 16] ^= 1;  // the length field
    expect_refused("badlen.h5", bad, "the integrity trailer covers");
  }
  for (double f : {0.1, 0.5, 0.9})
    expect_refused("cut" + std::to_string(int(f * 100)) + ".h5",
                   bytes.substr(0, size_t(double(bytes.size()) * f)),
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
  const std::string e2 =
      error_of([&] { trainers::formats::load_trained_model((t.dir / "cut.h5").string()); });
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
  const Config cfg =
      t.config("run", {"training.steps=2", "checkpoint.every=2", "schedule.warmup=1"});
  train(cfg);
  const std::string bytes = slurp(trainers::formats::checkpoint_path(t.run_dir("run"), 2));
  H5Eset_auto2(H5E_DEFAULT, nullptr, nullptr);
  // Rewrites attribute `attr` of object `obj` as a 3-element array of `type`, then re-seals the
  // file.
  auto rewrite = [&](const std::string& name, const char* obj, const char* attr, hid_t type) {
    const std::string p = (t.dir / name).string();
    spit(p, bytes.substr(0, bytes.size() - 24));
    const hid_t f = H5Fopen(p.c_str(), H5F_ACC_RDWR, H5P_DEFAULT);
    EXPECT_GE(f, 0);
    EXPECT_GE(H5Adelete_by_name(f, obj, attr, H5P_DEFAULT), 0);
    const hsize_t n = 3;
    const hid_t space = H5Screate_simple(1, &n, nullptr);
    const hid_t a =
        H5Acreate_by_name(f, obj, attr, type, space, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
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
  EXPECT_NE(e1.find(p1 + ": attribute " + ds + " checksum: holds 3 elements, expected one"),
            std::string::npos)
      << e1;
  const std::string p2 = rewrite("step3.h5", "/", "step", H5T_NATIVE_INT64);
  const std::string e2 = error_of([&] { load(p2); });
  EXPECT_NE(e2.find(p2 + ": attribute / step: holds 3 elements, expected one"), std::string::npos)
      << e2;
  const std::string e3 = error_of([&] { (void)trainers::formats::read_checkpoint_info(p2); });
  EXPECT_NE(e3.find("holds 3 elements, expected one"), std::string::npos) << e3;
}

TEST(Checkpoint, IncompatibleConfigListsEveryMismatch) {
  Tmp t;
  t.single_thread = true;
  train(t.config("run", {"training.steps=6"}));
  const std::string e = error_of([&] {
    train(t.config("run",
                   {"training.steps=6", "model.d_model=96", "model.ffn_dim=96", "optim.beta2=0.99",
                    "data.seed=7", "stages=[{mode: a4.8}]", "data.micro_batch=4"}),
          0, t.run_dir("run"));
  });
  for (const char* want :
       {"model.d_model: checkpoint 64, config 96", "model.ffn_dim: checkpoint 128, config 96",
        "optim.beta2: checkpoint 0.95, config 0.99", "data.seed: checkpoint 1234, config 7",
        "stages: checkpoint has 2, config 1",
        "mismatch: /params/model.layers.0.mlp.gate_proj.weight",
        "mismatch: /params/model.embed_tokens.weight", "step-000000006.h5",
        "global batch (data.micro_batch x data.grad_accum x ranks): checkpoint 8 x 1 x 1 = 8, this "
        "run 4 x 1 x 1 = 4"})
    EXPECT_NE(e.find(want), std::string::npos) << want << "\n" << e;
  std::printf("%s\n", e.c_str());
  // Other training data is refused too (size and fingerprint).
  data::write_shard((t.dir / "data/other.bin").string(), synthetic(60000, 256, 9), 256);
  const std::string e2 = error_of([&] {
    train(
        t.config("run", {"training.steps=6", "data.train=" + (t.dir / "data/other.bin").string()}),
        0, t.run_dir("run"));
  });
  EXPECT_NE(e2.find("data.train: checkpoint 60000 tokens"), std::string::npos) << e2;
  // The same global batch split otherwise (micro-batch 4 x accumulation 2) resumes: the same
  // samples.
  const std::string ck6 = trainers::formats::checkpoint_path(t.run_dir("run"), 6);
  EXPECT_EQ(
      train(t.config("split", {"training.steps=7", "data.micro_batch=4", "data.grad_accum=2"}), 0,
            ck6)
          .steps,
      7);
  // Length, evaluation, logging and checkpoint settings may differ.
  const auto r = train(t.config("run", {"training.steps=8", "training.eval_every=3",
                                        "training.log_every=1", "checkpoint.every=3"}),
                       0, t.run_dir("run"));
  EXPECT_EQ(r.steps, 8);
  EXPECT_EQ(trainers::formats::resolve_checkpoint(t.run_dir("run")),
            trainers::formats::checkpoint_path(t.run_dir("run"), 8));
}
