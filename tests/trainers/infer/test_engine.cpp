// Inference engine vs the float training path: exact integer GEMMs, every mode, incremental
// decoding, KV bits.
#include "tests/trainers/infer/infer_helpers.h"

// ---- (a) integer kernel -------------------------------------------------------------------------

TEST(IntGemm, EqualsInt64DotProducts) {
  autograd::Rng r(3);
  for (auto [N, M, K] : {std::tuple<int64_t, int64_t, int64_t>{1, 1, 1},
                         {3, 37, 1000},
                         {70, 20, 257},
                         {2, 5, 4096}}) {
    std::vector<int8_t> X(size_t(N * K)), W(size_t(M * K));
    for (auto& v : X) v = int8_t(int(r.below(256)) - 128);
    for (auto& v : W) v = int8_t(int(r.below(3)) - 1);
    // Extreme rows: all -128 against all -1 (the largest ternary dot, 128 K).
    for (int64_t k = 0; k < K; ++k) X[size_t(k)] = -128, W[size_t(k)] = -1;
    std::vector<int32_t> acc(size_t(N * M));
    nn::gemm_s8s8s32(X.data(), W.data(), acc.data(), N, M, K);
    for (int64_t n = 0; n < N; ++n)
      for (int64_t m = 0; m < M; ++m) {
        int64_t ref = 0;
        for (int64_t k = 0; k < K; ++k)
          ref += int64_t(X[size_t(n * K + k)]) * int64_t(W[size_t(m * K + k)]);
        ASSERT_EQ(int64_t(acc[size_t(n * M + m)]), ref)
            << N << "x" << M << "x" << K << " at " << n << "," << m;
      }
    EXPECT_EQ(acc[0], 128 * K);
  }
}

TEST(Engine, AccumulatorsAreExactIntegerDotsOfTheModelsCodes) {
  for (ActMode mode : {ActMode::W158A8, ActMode::A48, ActMode::A48FP4, ActMode::Int4All}) {
    auto tm = random_model(mode);
    const nn::InferenceEngine eng(nn::InferenceWeights::from_model(*tm.model), {mode, {}});
    const auto tokens = random_tokens(11, 96, 5);
    nn::KVCache cache = eng.new_cache();
    int64_t checked = 0, projections = 0;
    std::map<std::string, int> lo, hi;
    eng.forward(tokens, cache, false, nullptr, [&](const nn::ProjTrace& t) {
      ++projections;
      for (int64_t n = 0; n < t.n; ++n)
        for (int64_t o = 0; o < t.out; ++o) {
          int64_t ref = 0;
          for (int64_t k = 0; k < t.in; ++k)
            ref += int64_t(t.x_codes[n * t.in + k]) * int64_t(t.w_codes[o * t.in + k]);
          ASSERT_EQ(int64_t(t.acc[n * t.out + o]), ref) << t.name << " layer " << t.layer;
          ++checked;
        }
      for (int64_t i = 0; i < t.n * t.in; ++i) {
        lo[t.name] = std::min(lo[t.name], int(t.x_codes[i]));
        hi[t.name] = std::max(hi[t.name], int(t.x_codes[i]));
      }
      for (int64_t i = 0; i < t.out * t.in; ++i) ASSERT_LE(std::abs(int(t.w_codes[i])), 1);
    });
    EXPECT_EQ(projections, 2 * 7);
    // Code ranges of the mode's quantizers: INT4 [-8, 7], INT8 [-128, 127], FP4 as 2·value [-12,
    // 12].
    const int qkv_hi = mode == ActMode::W158A8 ? 127 : mode == ActMode::A48FP4 ? 12 : 7;
    EXPECT_LE(hi["q"], qkv_hi);
    EXPECT_GE(lo["q"], -qkv_hi - 1);
    if (mode == ActMode::W158A8 || mode == ActMode::A48) {
      EXPECT_GT(hi["down"], 7);  // INT8 uses its range
    }
    std::printf("%-9s %lld int32 accumulators equal the int64 dot products\n",
                nn::to_string(mode).c_str(), (long long)checked);
  }
}

// ---- (b) agreement with the float training path
// --------------------------------------------------

// The float training path, op for op as nn::Attention / nn::FeedForward compose it, also
// returning the integer codes of every quantizer input (keyed by layer and projection: "q" for
// the shared q/k/v input, "o", "gate" for the shared gate/up input, "down"; FP4 as 2·value).
struct FloatPath {
  std::vector<float> logits;
  std::map<std::pair<int, std::string>, std::vector<int8_t>> codes;
};
FloatPath float_path_with_codes(const nn::BitNetLM& m, ActMode mode,
                                std::span<const int32_t> tokens) {
  namespace ag = autograd;
  using nn::BitLinear;
  using nn::SparsityProbe;
  const nn::ModelConfig& c = m.config();
  const int64_t B = 1, T = int64_t(tokens.size()), hd = c.head_dim(), d = c.d_model;
  const nn::LayerQuant lq = nn::layer_quant(mode, c);
  const bool tern = lq.ternary;
  FloatPath out;
  auto capture = [&](int layer, const char* name, const ag::Variable& x,
                     const quant::ActSpec& spec) {
    if (!tern) return;
    std::vector<int8_t> codes(size_t(x.numel()));
    quant::act_quantize(spec, x.data(), x.numel() / x.shape().back(), x.shape().back(), nullptr,
                        codes.data(), nullptr);
    if (spec.kind == quant::ActKind::Fp4)
      for (auto& v : codes) v = int8_t((v & 8 ? -2 : 2) * quant::fp4_value(int8_t(v & 7)));
    out.codes[{layer, name}] = std::move(codes);
  };
  auto heads = [&](const ag::Variable& y, int64_t h) {
    return ag::transpose(ag::reshape(y, ag::Shape{B, T, h, hd}), 1, 2);
  };
  ag::Variable x = m.model->embed_tokens->forward(tokens);
  for (size_t li = 0; li < m.model->layers.size(); ++li) {
    const nn::Block* b = m.model->layers[li];
    const nn::Attention* at = b->self_attn;
    const nn::FeedForward* ff = b->mlp;
    const int L = int(li);
    ag::Variable a = b->input_layernorm->forward(x);
    capture(L, "q", a, lq.qkv);
    ag::Variable aq = BitLinear::quantize_input(a, lq.qkv, nullptr, SparsityProbe::QKV);
    ag::Variable q =
        ag::rope(heads(at->q_proj->forward_quantized(aq, tern), c.n_heads), c.rope_theta);
    ag::Variable k =
        ag::rope(heads(at->k_proj->forward_quantized(aq, tern), c.kv_heads()), c.rope_theta);
    ag::Variable v = heads(at->v_proj->forward_quantized(aq, tern), c.kv_heads());
    ag::Variable o =
        ag::reshape(ag::transpose(ag::causal_attention(q, k, v), 1, 2), ag::Shape{B * T, d});
    o = at->attn_sub_norm->forward(o);
    capture(L, "o", o, lq.o);
    ag::Variable h =
        ag::add(x, at->o_proj->forward_quantized(
                       BitLinear::quantize_input(o, lq.o, nullptr, SparsityProbe::Out), tern));
    ag::Variable f = b->post_attention_layernorm->forward(h);
    capture(L, "gate", f, lq.gate_up);
    ag::Variable fq = BitLinear::quantize_input(f, lq.gate_up, nullptr, SparsityProbe::GateUp);
    ag::Variable g = ff->gate_proj->forward_quantized(fq, tern),
                 u = ff->up_proj->forward_quantized(fq, tern);
    ag::Variable z =
        ff->ffn_sub_norm->forward(ag::mul(c.glu == nn::Glu::ReLU2 ? ag::relu2(g) : ag::silu(g), u));
    capture(L, "down", z, lq.down);
    x = ag::add(h, ff->down_proj->forward_quantized(
                       BitLinear::quantize_input(z, lq.down, nullptr, SparsityProbe::Down), tern));
  }
  x = m.model->norm->forward(x);
  out.logits = ag::linear(x, m.lm_head ? m.lm_head->weight : m.model->embed_tokens->weight)
                   .value()
                   .to_vector();
  return out;
}

struct Agreement {
  double rel = 0;     // max |int - float| / max |float| over the logits
  int64_t flips = 0;  // activation codes that differ between the two paths
  int64_t codes = 0;  // activation codes compared
};
// Runs both paths on tokens. A code differs only where a quantizer input lies within fp32
// rounding of a decision boundary (the paths' GEMMs round differently); it then moves one
// quantization step and the logits legitimately differ by more than rounding.
Agreement compare_paths(nn::BitNetLM& m, const nn::InferenceEngine& eng,
                        std::span<const int32_t> tokens) {
  const ActMode mode = eng.options().mode;
  const FloatPath fp = float_path_with_codes(m, mode, tokens);
  // Sanity: the op-for-op float path is BitNetLM::logits, bit for bit.
  EXPECT_EQ(fp.logits, float_logits(m, mode, tokens));
  Agreement a;
  nn::KVCache cache = eng.new_cache();
  const auto li = eng.forward(tokens, cache, false, nullptr, [&](const nn::ProjTrace& t) {
    const std::string n = t.name;
    if (n == "k" || n == "v" || n == "up") return;  // share the input of q / gate
    const auto& ref = fp.codes.at({t.layer, n});
    for (int64_t i = 0; i < t.n * t.in; ++i) a.flips += ref[size_t(i)] != t.x_codes[i];
    a.codes += t.n * t.in;
  });
  a.rel = rel_diff(li, fp.logits);
  return a;
}

TEST(Engine, MatchesFloatTrainingPathInEveryMode) {
  for (ActMode mode : kModes) {
    auto tm = random_model(mode);
    const nn::InferenceEngine eng(nn::InferenceWeights::from_model(*tm.model, /*keep_latent=*/true),
                                  {mode, {}});
    double worst = 0;
    int64_t flips = 0, codes = 0;
    for (uint64_t s = 0; s < 4; ++s) {
      const Agreement a = compare_paths(*tm.model, eng, random_tokens(17, 96, 100 + s));
      worst = std::max(worst, a.rel);
      flips += a.flips;
      codes += a.codes;
    }
    std::printf(
        "%-9s random model: max |int - float| / max |float| logits = %.2e (%lld of %lld activation "
        "codes differ)\n",
        nn::to_string(mode).c_str(), worst, (long long)flips, (long long)codes);
    EXPECT_EQ(flips, 0);
    EXPECT_LT(worst, 1e-5) << nn::to_string(mode);
  }
}

TEST(Engine, MatchesFloatTrainingPathOnATrainedModel) {
  // Windows where every activation code agrees must match to 1e-5; a window where fp32 rounding
  // moved a code across a boundary is reported (and must be rare).
  const Trained& t = trained();
  for (ActMode mode : {ActMode::W158A8, ActMode::A48, ActMode::A48FP4}) {
    const nn::InferenceEngine eng(nn::InferenceWeights::from_model(*t.tm.model), {mode, {}});
    double worst_clean = 0, worst_flipped = 0;
    int clean = 0, windows = 0;
    int64_t flips = 0, codes = 0;
    for (int64_t w = 0; w < 8; ++w, ++windows) {
      const Agreement a =
          compare_paths(*t.tm.model, eng, std::span<const int32_t>(t.val.data() + 64 * w, 64));
      flips += a.flips;
      codes += a.codes;
      if (a.flips == 0) {
        ++clean;
        worst_clean = std::max(worst_clean, a.rel);
        EXPECT_LT(a.rel, 1e-5) << nn::to_string(mode) << " window " << w;
      } else {
        worst_flipped = std::max(worst_flipped, a.rel);
      }
    }
    std::printf(
        "%-9s trained model, %d windows of 64 tokens: %d with identical activation codes, max rel "
        "logit "
        "diff %.2e; in the others a boundary flip cascaded to %lld of %lld codes, max rel diff "
        "%.2e\n",
        nn::to_string(mode).c_str(), windows, clean, worst_clean, (long long)flips,
        (long long)codes, worst_flipped);
    EXPECT_GE(clean, windows / 2);
  }
}

TEST(Engine, FpModeNeedsLatentWeights) {
  auto tm = random_model(ActMode::FP);
  try {
    nn::InferenceEngine eng(nn::InferenceWeights::from_model(*tm.model, false), {ActMode::FP, {}});
    FAIL() << "expected an error";
  } catch (const std::exception& e) {
    EXPECT_NE(std::string(e.what()).find("latent"), std::string::npos) << e.what();
  }
}

TEST(Engine, SparsityProbeMatchesTheFloatPath) {
  auto tm = random_model(ActMode::A48);
  const nn::InferenceEngine eng(nn::InferenceWeights::from_model(*tm.model), {ActMode::A48, {}});
  const auto tokens = random_tokens(17, 96, 9);
  nn::SparsityProbe pi, pf;
  eng.logits(tokens, &pi);
  tm.model->logits(tokens, 1, 17, &pf);
  for (auto k : {nn::SparsityProbe::QKV, nn::SparsityProbe::Out, nn::SparsityProbe::GateUp,
                 nn::SparsityProbe::Down}) {
    EXPECT_EQ(pi.zeros[k], pf.zeros[k]) << k;
    EXPECT_EQ(pi.total[k], pf.total[k]) << k;
  }
  // relu²(gate) zeros: the integer path gives exact zeros where the float GEMM may leave ±1-ulp
  // noise.
  EXPECT_EQ(pi.total[nn::SparsityProbe::Relu2Gate], pf.total[nn::SparsityProbe::Relu2Gate]);
  EXPECT_NEAR(pi.frac(nn::SparsityProbe::Relu2Gate), pf.frac(nn::SparsityProbe::Relu2Gate), 0.02);
  EXPECT_NEAR(nn::sparsity_report(pi, tm.model->config()).out, 0.5, 0.01);  // top-K 50%
}

// ---- (c) KV cache
// ------------------------------------------------------------------------------------

TEST(Engine, IncrementalDecodingEqualsFullSequence) {
  for (ActMode mode : {ActMode::A48, ActMode::W158A8, ActMode::FP}) {
    for (const nn::AttnQuant& aq : {nn::AttnQuant{}, nn::AttnQuant::make(3, 0, true, 4)}) {
      auto tm = random_model(mode);
      const nn::InferenceEngine eng(nn::InferenceWeights::from_model(*tm.model, true), {mode, aq});
      const auto tokens = random_tokens(23, 96, 11);
      const std::vector<float> full = eng.logits(tokens);
      // One token at a time, and a 7-token prefill followed by single tokens.
      for (int64_t prefill : {1, 7}) {
        nn::KVCache cache = eng.new_cache();
        std::vector<float> inc =
            eng.forward(std::span<const int32_t>(tokens.data(), size_t(prefill)), cache);
        for (size_t i = size_t(prefill); i < tokens.size(); ++i) {
          const auto row = eng.forward(std::span<const int32_t>(&tokens[i], 1), cache);
          inc.insert(inc.end(), row.begin(), row.end());
        }
        EXPECT_EQ(cache.size(), int64_t(tokens.size()));
        const double d = rel_diff(inc, full);
        // With quantized activations every integer GEMM and the per-row attention are independent
        // of the chunking: the cached K/V are bitwise those of the full forward, and only the fp32
        // LM head GEMM (blocked differently for 1 row) rounds differently. Mode fp's projections
        // are fp32 GEMMs too.
        nn::KVCache ref = eng.new_cache();
        eng.forward(tokens, ref);
        const bool same_kv = cache.k == ref.k && cache.v == ref.v;
        std::printf(
            "%-9s attn %-16s prefill %lld: incremental vs full max rel diff %.2e, K/V cache %s\n",
            nn::to_string(mode).c_str(), aq.str().c_str(), (long long)prefill, d,
            same_kv ? "bitwise equal" : "differs");
        if (mode != ActMode::FP) {
          EXPECT_TRUE(same_kv);
        }
        EXPECT_LT(d, mode == ActMode::FP ? 5e-6 : 1e-6);
      }
      // last_only returns the last row of the full logits.
      nn::KVCache c2 = eng.new_cache();
      const auto last = eng.forward(tokens, c2, true);
      const std::vector<float> ref(full.end() - 96, full.end());
      EXPECT_LT(rel_diff(last, ref), 1e-6);
    }
  }
}

// ---- (d) low-bit attention
// -----------------------------------------------------------------------------

TEST(Engine, LowBitAttentionChangesLogitsALittle) {
  // Measured on the trained model: mean |Δlogit| / mean |logit| over 64 positions, and validation
  // perplexity. (Max-abs logit differences are dominated by activation codes that flip after a
  // small perturbation: INT4/top-K inputs are discontinuous functions of the attention output.)
  const Trained& t = trained();
  const auto w = nn::InferenceWeights::from_model(*t.tm.model, true);
  const std::span<const int32_t> tokens(t.val.data(), 64);
  struct Fig {
    double mean_rel, ppl;
  };
  std::map<ActMode, std::pair<std::vector<float>, double>> base;  // logits, ppl of fp32 attention
  auto run = [&](ActMode mode, const nn::AttnQuant& q) {
    if (!base.count(mode)) {
      const nn::InferenceEngine e(w, {mode, {}});
      base[mode] = {e.logits(tokens), trainers::infer::perplexity(e, t.val, 32, 1024).ppl};
    }
    const auto& [lb, pb] = base[mode];
    const nn::InferenceEngine e(w, {mode, q});
    const auto l = e.logits(tokens);
    double num = 0, den = 0;
    for (size_t i = 0; i < l.size(); ++i)
      num += std::fabs(double(l[i]) - lb[i]), den += std::fabs(double(lb[i]));
    return Fig{num / den, mode == ActMode::FP
                              ? 0.0
                              : trainers::infer::perplexity(e, t.val, 32, 1024).ppl / pb};
  };
  using nn::AttnQuant;
  for (ActMode mode : {ActMode::A48, ActMode::W158A8}) {
    const Fig kv4 = run(mode, AttnQuant::make(4, 0)), qkv4 = run(mode, AttnQuant::make(0, 4)),
              kv3 = run(mode, AttnQuant::make(3, 0, true)),
              q4kv3 = run(mode, AttnQuant::make(3, 0, true, 4)),
              kv8 = run(mode, AttnQuant::make(8, 0)), qkv8 = run(mode, AttnQuant::make(0, 8));
    std::printf(
        "%-7s mean rel logit change / ppl ratio: kv4 %.3f / %.4f, qkv4 %.3f / %.4f, kv3(bos4) %.3f "
        "/ %.4f, "
        "q4kv3(bos4) %.3f / %.4f, kv8 %.4f / %.4f, qkv8 %.4f / %.4f\n",
        nn::to_string(mode).c_str(), kv4.mean_rel, kv4.ppl, qkv4.mean_rel, qkv4.ppl, kv3.mean_rel,
        kv3.ppl, q4kv3.mean_rel, q4kv3.ppl, kv8.mean_rel, kv8.ppl, qkv8.mean_rel, qkv8.ppl);
    for (const Fig& f : {kv4, qkv4, kv3, q4kv3}) {
      EXPECT_GT(f.mean_rel, 1e-3);  // it does something
      EXPECT_LT(f.mean_rel, 0.2);   // but not a lot
      EXPECT_NEAR(f.ppl, 1.0, 0.1);
    }
    EXPECT_LT(kv8.mean_rel, 0.5 * kv4.mean_rel);
    EXPECT_LT(qkv8.mean_rel, 0.5 * qkv4.mean_rel);
    EXPECT_NEAR(kv8.ppl, 1.0, 0.005);
    EXPECT_NEAR(qkv8.ppl, 1.0, 0.005);
  }
  // Without activation quantization the change shrinks steadily with the bits.
  double prev = 1.0;
  for (int b : {3, 4, 6, 8}) {
    const double m = run(ActMode::FP, AttnQuant::make(0, b, false)).mean_rel;
    std::printf("fp      qkv%d mean rel logit change %.4f\n", b, m);
    EXPECT_LT(m, prev);
    prev = m;
  }
  EXPECT_LT(prev, 1e-2);
  // The BOS position's precision matters with 3-bit K/V.
  EXPECT_NE(run(ActMode::A48, AttnQuant::make(3, 0, true)).mean_rel,
            run(ActMode::A48, AttnQuant::make(3, 0, false)).mean_rel);
}

TEST(Engine, BosPositionKeepsFourBitKV) {
  auto tm = random_model(ActMode::A48);
  const auto w = nn::InferenceWeights::from_model(*tm.model);
  const auto tokens = random_tokens(5, 96, 13);
  // Layer 0's K/V do not depend on the attention precision: compare caches.
  nn::KVCache ref = nn::InferenceEngine(w, {ActMode::A48, {}}).new_cache();
  nn::InferenceEngine(w, {ActMode::A48, {}}).forward(tokens, ref);
  nn::KVCache q = nn::InferenceEngine(w, {ActMode::A48, {}}).new_cache();
  nn::InferenceEngine(w, {ActMode::A48, nn::AttnQuant::make(3, 0, true)}).forward(tokens, q);
  const int64_t kvd = 2 * 12;
  std::vector<float> k4(static_cast<size_t>(kvd)), k3(static_cast<size_t>(4 * kvd));
  quant::uint_absmax(ref.k[0].data(), 2, 12, 4, k4.data(), nullptr, nullptr);
  quant::uint_absmax(ref.k[0].data() + kvd, 8, 12, 3, k3.data(), nullptr, nullptr);
  for (int64_t i = 0; i < kvd; ++i) EXPECT_EQ(q.k[0][size_t(i)], k4[size_t(i)]) << i;
  for (int64_t i = 0; i < 4 * kvd; ++i) EXPECT_EQ(q.k[0][size_t(kvd + i)], k3[size_t(i)]) << i;
}
