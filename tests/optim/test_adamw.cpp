// AdamW vs torch, resume, weight-decay masks, shards; gradient clipping and the finiteness check.
#include "tests/optim/optim_helpers.h"

// ---------------------------------------------------------------------------------------------
// AdamW vs torch
// ---------------------------------------------------------------------------------------------

// Six steps with the reference's gradients, LR and WD: parameters and both moments after every
// step agree with torch to 1e-6 relative (max|d| / max|ref| per tensor); the figures are printed.
TEST(AdamW, MatchesTorchEveryStep) {
  for (const std::string& path : golden_files()) {
    SCOPED_TRACE(path);
    const SafetensorsFile f = autograd::read_safetensors(path);
    Tiny model;
    nn::ParameterSet ps(model, 1, 0.02f);
    load_values(ps, f, "init.", ps.values());
    optim::AdamW opt(ps, {});
    const Tensor lr = f.f32("lr"), wd = f.f32("wd");
    ASSERT_EQ(lr.numel(), kSteps);
    const optim::Schedule s = golden_schedule();
    Agreement ap, am, av;
    for (int t = 0; t < kSteps; ++t) {
      // The reference rounds its schedule to float32 before use; ours agrees with it.
      EXPECT_EQ(float(optim::lr_at(s, t)), lr[t]) << "t=" << t;
      EXPECT_EQ(float(optim::wd_at(s, t)), wd[t]) << "t=" << t;
      load_values(ps, f, "grad." + std::to_string(t) + ".", ps.grads());
      opt.step(lr[t], wd[t]);
      EXPECT_EQ(opt.steps(), t + 1);
      const std::string st = "step." + std::to_string(t) + ".";
      for (const auto& e : ps.entries()) {
        SCOPED_TRACE(e.name + " after step " + std::to_string(t));
        Agreement p1, m1, v1;
        p1.add(ps.values().data() + e.offset, f.f32(st + "param." + e.name).data(), e.numel);
        m1.add(opt.exp_avg().data() + e.offset, f.f32(st + "exp_avg." + e.name).data(), e.numel);
        v1.add(opt.exp_avg_sq().data() + e.offset, f.f32(st + "exp_avg_sq." + e.name).data(),
               e.numel);
        EXPECT_LE(p1.rel, 1e-6);
        EXPECT_LE(m1.rel, 1e-6);
        EXPECT_LE(v1.rel, 1e-6);
        ap.add(ps.values().data() + e.offset, f.f32(st + "param." + e.name).data(), e.numel);
        am.add(opt.exp_avg().data() + e.offset, f.f32(st + "exp_avg." + e.name).data(), e.numel);
        av.add(opt.exp_avg_sq().data() + e.offset, f.f32(st + "exp_avg_sq." + e.name).data(),
               e.numel);
      }
    }
    std::printf(
        "[%s]\n  vs torch over %d steps: param rel %.2e (max %lld ulp, %lld/%lld exact), "
        "exp_avg rel %.2e (max %lld ulp, %lld/%lld exact), exp_avg_sq rel %.2e (max %lld ulp, "
        "%lld/%lld exact)\n",
        path.c_str(), kSteps, ap.rel, (long long)ap.max_ulp, (long long)ap.exact,
        (long long)ap.total, am.rel, (long long)am.max_ulp, (long long)am.exact,
        (long long)am.total, av.rel, (long long)av.max_ulp, (long long)av.exact,
        (long long)av.total);
  }
}

// Stopping after 3 steps and resuming into a fresh optimizer (state copied, set_steps(3)) gives
// bit-identical results to the uninterrupted run (the checkpoint contract).
TEST(AdamW, ResumeFromStateIsBitIdentical) {
  const SafetensorsFile f = autograd::read_safetensors(golden_files().front());
  const Tensor lr = f.f32("lr"), wd = f.f32("wd");
  Tiny ma, mb;
  nn::ParameterSet a(ma, 1, 0.02f), b(mb, 1, 0.02f);
  load_values(a, f, "init.", a.values());
  load_values(b, f, "init.", b.values());
  optim::AdamW oa(a, {});
  auto b_opt = std::make_unique<optim::AdamW>(b, optim::AdamWConfig{});
  for (int t = 0; t < kSteps; ++t) {
    load_values(a, f, "grad." + std::to_string(t) + ".", a.grads());
    load_values(b, f, "grad." + std::to_string(t) + ".", b.grads());
    oa.step(lr[t], wd[t]);
    b_opt->step(lr[t], wd[t]);
    if (t == 2) {  // "checkpoint": keep values and moments, rebuild the optimizer
      const Tensor m = b_opt->exp_avg().clone(), v = b_opt->exp_avg_sq().clone();
      const int64_t steps = b_opt->steps();
      b_opt = std::make_unique<optim::AdamW>(b, optim::AdamWConfig{});
      b_opt->exp_avg().copy_from(m);
      b_opt->exp_avg_sq().copy_from(v);
      b_opt->set_steps(steps);
    }
  }
  const size_t bytes = size_t(a.numel()) * 4;
  EXPECT_EQ(std::memcmp(a.values().data(), b.values().data(), bytes), 0);
  EXPECT_EQ(std::memcmp(oa.exp_avg().data(), b_opt->exp_avg().data(), bytes), 0);
  EXPECT_EQ(std::memcmp(oa.exp_avg_sq().data(), b_opt->exp_avg_sq().data(), bytes), 0);
}

// With zero gradients the Adam term is exactly 0, so each element is either multiplied by
// f32(1 - lr*wd) (decayed) or left unchanged: the mask is read off exactly.
TEST(AdamW, WeightDecayMaskWithAndWithoutEmbeddings) {
  for (bool emb : {false, true}) {
    SCOPED_TRACE(emb ? "decay_embeddings" : "no embedding decay");
    Tiny model;
    nn::ParameterSet ps(model, 3, 0.5f);
    const Tensor before = ps.values().clone();
    optim::AdamWConfig cfg;
    cfg.decay_embeddings = emb;
    optim::AdamW opt(ps, cfg);
    opt.step(0.1, 0.5);
    const float factor = float(1.0 - 0.1 * 0.5);
    for (const auto& e : ps.entries()) {
      const bool decayed = e.name == "w" || (emb && e.name == kEmbed);
      for (int64_t i = e.offset; i < e.offset + e.numel; ++i)
        ASSERT_EQ(ps.values()[i], decayed ? before[i] * factor : before[i])
            << e.name << " [" << i << "]";
    }
    EXPECT_EQ(opt.exp_avg().numel(), ps.numel());
  }
}

// A parameter set spanning several parallel chunks, with decayed and undecayed entries (adjacent
// decayed ones merge), gives the same result as a plain per-element loop with the op order of
// adamw.h, for any thread count; step() takes no new tensor storage.
TEST(AdamW, ChunkedPassMatchesElementLoop) {
  const std::vector<int64_t> sizes = {10000, 7, 30001, 5000, 20000, 3, 1, 16384};
  const std::vector<bool> decay = {true, false, true, true, false, true, false, true};
  Blocks model(sizes, decay);
  nn::ParameterSet ps(model, 5, 0.3f);
  const int64_t n = ps.numel();
  autograd::Rng rng(11);
  std::vector<std::vector<float>> grads(3, std::vector<float>(size_t(n)));
  for (auto& g : grads)
    for (auto& x : g) x = float(rng.normal()) * 0.01f;
  const Tensor init = ps.values().clone();

  // Reference: the per-element formulas of adamw.h, scalars rounded once from double. The
  // volatile keeps the decay product rounded on its own (no FMA contraction with the last add).
  std::vector<float> w(init.data(), init.data() + n), m(size_t(n), 0.f), v(size_t(n), 0.f);
  std::vector<bool> mask(static_cast<size_t>(n), false);
  for (const auto& e : ps.entries())
    for (int64_t i = e.offset; i < e.offset + e.numel; ++i) mask[size_t(i)] = e.decay;
  const double lrs[] = {1e-3, 2e-3, 5e-4}, wds[] = {0.1, 0.1, 0.0}, b1 = 0.9, b2 = 0.95;
  for (int t = 0; t < 3; ++t) {
    const double bc1 = 1 - std::pow(b1, t + 1), bc2 = 1 - std::pow(b2, t + 1);
    const float decay_f = float(1 - lrs[t] * wds[t]), neg_step = float(-(lrs[t] / bc1));
    const float bc2s = float(std::sqrt(bc2));
    for (size_t i = 0; i < size_t(n); ++i) {
      const float g = grads[size_t(t)][i];
      volatile float wi = w[i];
      if (mask[i]) wi = w[i] * decay_f;
      m[i] = std::fma(g, float(1 - b1), m[i] * float(b1));
      v[i] = std::fma(float(1 - b2) * g, g, v[i] * float(b2));
      const float q = (neg_step * m[i]) / (std::sqrt(v[i]) / bc2s + float(1e-8));
      w[i] = wi + q;
    }
  }

  std::vector<float> first;
  const int saved_threads = omp_get_max_threads();
  for (int threads : {1, 2, 4}) {
    SCOPED_TRACE("threads=" + std::to_string(threads));
    omp_set_num_threads(threads);
    ps.values().copy_from(init);
    optim::AdamW opt(ps, {});
    for (int t = 0; t < 3; ++t) {
      std::memcpy(ps.grads().data(), grads[size_t(t)].data(), size_t(n) * 4);
      const size_t fresh = autograd::pool_stats().fresh_allocations;
      opt.step(lrs[t], wds[t]);
      EXPECT_EQ(autograd::pool_stats().fresh_allocations, fresh);
    }
    // Bit-identical: the SIMD body, the scalar tail and this loop do the same float32 ops.
    EXPECT_EQ(std::memcmp(ps.values().data(), w.data(), size_t(n) * 4), 0);
    EXPECT_EQ(std::memcmp(opt.exp_avg().data(), m.data(), size_t(n) * 4), 0);
    EXPECT_EQ(std::memcmp(opt.exp_avg_sq().data(), v.data(), size_t(n) * 4), 0);
    std::vector<float> now(ps.values().data(), ps.values().data() + n);
    if (first.empty())
      first = now;
    else
      EXPECT_EQ(std::memcmp(first.data(), now.data(), size_t(n) * 4), 0);
  }
  omp_set_num_threads(saved_threads);
}

// ZeRO-1 shards: AdamW over a slice [b, e) keeps e - b moments, updates only that slice, and is
// bit-identical there to the unsharded optimizer (slices cut inside parameters and decay ranges);
// the pieces of clip_grad_norm reproduce its norm and clipping when each shard owns whole chunks.
TEST(AdamW, ShardsMatchTheUnshardedStep) {
  Blocks model({10000, 7, 30001, 5000, 20000, 3, 1, 16384},
               {true, false, true, true, false, true, false, true});
  nn::ParameterSet full_ps(model, 5, 0.3f), ps(model, 5, 0.3f);
  const int64_t n = ps.numel();
  autograd::Rng rng(12);
  std::vector<std::vector<float>> grads(3, std::vector<float>(size_t(n)));
  for (auto& g : grads)
    for (auto& x : g) x = float(rng.normal()) * 0.1f;
  optim::AdamW full(full_ps, {});
  for (int t = 0; t < 3; ++t) {
    std::memcpy(full_ps.grads().data(), grads[size_t(t)].data(), size_t(n) * 4);
    optim::clip_grad_norm(full_ps, 1.0);
    full.step(1e-3, 0.1);
  }
  const std::vector<int64_t> cuts = {0, 4999, 10003, 40011, 60000, n};  // 5 shards, uneven
  const Tensor init = ps.values().clone();
  for (size_t k = 0; k + 1 < cuts.size(); ++k) {
    const int64_t b = cuts[k], e = cuts[k + 1];
    SCOPED_TRACE("shard [" + std::to_string(b) + ", " + std::to_string(e) + ")");
    ps.values().copy_from(init);
    optim::AdamW shard(ps, {}, b, e);
    EXPECT_TRUE(shard.sharded());
    EXPECT_EQ(shard.state_bytes(), 2 * (e - b) * 4);
    for (int t = 0; t < 3; ++t) {
      std::memcpy(ps.grads().data(), grads[size_t(t)].data(), size_t(n) * 4);
      optim::clip_grad_norm(ps, 1.0);
      shard.step(1e-3, 0.1);
    }
    EXPECT_EQ(std::memcmp(ps.values().data() + b, full_ps.values().data() + b, size_t(e - b) * 4),
              0);
    EXPECT_EQ(std::memcmp(shard.exp_avg().data(), full.exp_avg().data() + b, size_t(e - b) * 4), 0);
    EXPECT_EQ(
        std::memcmp(shard.exp_avg_sq().data(), full.exp_avg_sq().data() + b, size_t(e - b) * 4), 0);
    EXPECT_EQ(std::memcmp(ps.values().data(), init.data(), size_t(b) * 4),
              0);  // outside: untouched
    EXPECT_EQ(std::memcmp(ps.values().data() + e, init.data() + e, size_t(n - e) * 4), 0);
  }
  // Norm pieces: three "ranks" owning chunks [0, 20), [20, 41), [41, C) fill their partials.
  std::memcpy(ps.grads().data(), grads[0].data(), size_t(n) * 4);
  const int64_t C = optim::grad_norm_chunks(n);
  ASSERT_EQ(C, 64);
  std::vector<double> part(size_t(C), 0.0);
  for (auto [c0, c1] : {std::pair<int64_t, int64_t>{0, 20}, {20, 41}, {41, C}})
    optim::grad_sq_chunks(ps, c0, c1, part.data() + c0);
  const double norm = optim::norm_from_chunks(part);
  const int64_t mid = optim::grad_norm_chunk_begin(n, 20);
  optim::clip_grads(ps, 0, mid, norm, 1.0);  // one shard clips only its slice
  std::memcpy(full_ps.grads().data(), grads[0].data(), size_t(n) * 4);
  EXPECT_EQ(optim::clip_grad_norm(full_ps, 1.0), norm);
  EXPECT_GT(norm, 1.0);
  EXPECT_EQ(std::memcmp(ps.grads().data(), full_ps.grads().data(), size_t(mid) * 4), 0);
  EXPECT_EQ(std::memcmp(ps.grads().data() + mid, grads[0].data() + mid, size_t(n - mid) * 4), 0);
  expect_error([&] { optim::AdamW bad(ps, {}, 10, n + 1); },
               "AdamW: shard [10, " + std::to_string(n + 1) + ") is not inside the " +
                   std::to_string(n) + " parameters");
}

TEST(AdamW, ConfigAndStepValidation) {
  Tiny model;
  nn::ParameterSet ps(model, 1, 0.02f);
  optim::AdamWConfig c;
  c.beta1 = 1.0;
  expect_error([&] { optim::AdamW o(ps, c); }, "adamw.beta1: 1 must be in [0, 1)");
  c = {};
  c.beta2 = -0.5;
  expect_error([&] { optim::AdamW o(ps, c); }, "adamw.beta2: -0.5 must be in [0, 1)");
  c = {};
  c.eps = -1e-8;
  expect_error([&] { optim::AdamW o(ps, c); }, "adamw.eps: -1e-08 must be finite and >= 0");
  optim::AdamW o(ps, {});
  expect_error([&] { o.step(std::nan(""), 0.1); },
               "AdamW::step: lr nan and weight_decay 0.1 must be finite");
  EXPECT_EQ(o.steps(), 0);
}

// ---------------------------------------------------------------------------------------------
// Gradient clipping and finite checks
// ---------------------------------------------------------------------------------------------

TEST(ClipGradNorm, HandComputedNormAndClipOnlyAbove) {
  Tiny model;  // 35 + 5 + 33 = 73 gradient elements
  nn::ParameterSet ps(model, 1, 0.02f);
  ASSERT_EQ(ps.numel(), 73);
  auto set = [&] {
    ps.zero_grad();
    ps.grads()[0] = 3.f;    // in w
    ps.grads()[36] = -4.f;  // in g
    ps.grads()[72] = 12.f;  // last element of the embedding
  };
  set();
  EXPECT_EQ(optim::clip_grad_norm(ps, 20.0), 13.0);  // sqrt(9 + 16 + 144): below, unchanged
  EXPECT_EQ(ps.grads()[0], 3.f);
  EXPECT_EQ(optim::clip_grad_norm(ps, 13.0), 13.0);  // equal: not above, unchanged
  EXPECT_EQ(ps.grads()[72], 12.f);
  EXPECT_EQ(optim::clip_grad_norm(ps, 0.0), 13.0);  // max_norm 0: no clipping
  EXPECT_EQ(ps.grads()[72], 12.f);
  EXPECT_EQ(optim::clip_grad_norm(ps, 1.0), 13.0);  // above: scaled by 1 / (13 + 1e-6)
  const float scale = float(1.0 / (13.0 + 1e-6));
  EXPECT_EQ(ps.grads()[0], 3.f * scale);
  EXPECT_EQ(ps.grads()[36], -4.f * scale);
  EXPECT_EQ(ps.grads()[72], 12.f * scale);
  EXPECT_EQ(ps.grads()[1], 0.f);
  EXPECT_NEAR(optim::clip_grad_norm(ps, 10.0), 1.0, 1e-6);

  // g_i = i - 36 over all 73 elements: sum of squares 2 * (36 * 37 * 73 / 6) = 32412.
  for (int64_t i = 0; i < 73; ++i) ps.grads()[i] = float(i - 36);
  EXPECT_EQ(optim::clip_grad_norm(ps, 1e9), std::sqrt(32412.0));

  // A non-finite norm is returned and leaves the gradients alone.
  set();
  ps.grads()[5] = std::numeric_limits<float>::quiet_NaN();
  EXPECT_TRUE(std::isnan(optim::clip_grad_norm(ps, 1.0)));
  EXPECT_EQ(ps.grads()[0], 3.f);
  ps.grads()[5] = std::numeric_limits<float>::infinity();
  EXPECT_TRUE(std::isinf(optim::clip_grad_norm(ps, 1.0)));
  EXPECT_EQ(ps.grads()[72], 12.f);
}

// Over ~1.2M elements the norm is bit-identical run to run and for 1, 2 and 4 threads, and close
// to a long-double sum.
TEST(ClipGradNorm, DeterministicAcrossThreadCounts) {
  Blocks model({1000003, 200000}, {true, false});
  nn::ParameterSet ps(model, 9, 1.0f);
  ps.grads().copy_from(ps.values());  // N(0, 1) values
  long double ref = 0;
  for (int64_t i = 0; i < ps.numel(); ++i) ref += (long double)ps.grads()[i] * ps.grads()[i];
  std::vector<double> norms;
  const int saved_threads = omp_get_max_threads();
  for (int threads : {1, 2, 4, 2}) {
    omp_set_num_threads(threads);
    norms.push_back(optim::clip_grad_norm(ps, 0.0));
  }
  omp_set_num_threads(saved_threads);
  for (double x : norms) EXPECT_EQ(x, norms[0]);
  EXPECT_NEAR(norms[0], std::sqrt(double(ref)), 1e-12 * norms[0]);
  // Clipping to 1 gives norm 1 / (1 + 1e-6 / norm) up to float rounding of the gradients.
  optim::clip_grad_norm(ps, 1.0);
  EXPECT_NEAR(optim::clip_grad_norm(ps, 0.0), 1.0, 1e-6);
}

TEST(AllFinite, NaNAndInfAnywhere) {
  Tensor t = Tensor::full(Shape{100000}, 1.5f);
  EXPECT_TRUE(optim::all_finite(t));
  EXPECT_TRUE(optim::all_finite(Tensor()));
  EXPECT_TRUE(optim::all_finite(Tensor::zeros(Shape{0})));
  const float bad[] = {std::numeric_limits<float>::quiet_NaN(),
                       std::numeric_limits<float>::infinity(),
                       -std::numeric_limits<float>::infinity()};
  for (float b : bad)
    for (int64_t i : {int64_t(0), int64_t(31337), int64_t(99999)}) {
      t[i] = b;
      EXPECT_FALSE(optim::all_finite(t)) << b << " at " << i;
      t[i] = 1.5f;
    }
  t[7] = std::numeric_limits<float>::max();
  t[8] = std::numeric_limits<float>::denorm_min();
  EXPECT_TRUE(optim::all_finite(t));
}
