// Generation and evaluation: greedy and sampled decoding, perplexity, multiple choice, logit dumps.
#include "tests/trainers/infer/infer_helpers.h"

// ---- generation
// -----------------------------------------------------------------------------------------

TEST(Generate, GreedyIsDeterministicAndEqualsFullForwardArgmax) {
  auto tm = random_model(ActMode::A48);
  const nn::InferenceEngine eng(nn::InferenceWeights::from_model(*tm.model), {ActMode::A48, {}});
  const std::vector<int32_t> prompt = random_tokens(4, 96, 21);
  trainers::infer::GenerateOptions o;
  o.sampling.temperature = 0;
  o.max_tokens = 20;
  const auto a = trainers::infer::generate(eng, prompt, o),
             b = trainers::infer::generate(eng, prompt, o);
  EXPECT_EQ(a, b);
  ASSERT_EQ(a.size(), 20u);
  // The KV-cached loop picks the argmax of the full-sequence forward at every step.
  std::vector<int32_t> seq = prompt;
  for (int32_t id : a) {
    const auto lg = eng.logits(seq);
    const float* last = lg.data() + (seq.size() - 1) * 96;
    EXPECT_EQ(int32_t(std::max_element(last, last + 96) - last), id);
    seq.push_back(id);
  }
  // top-k 1 and a tiny top-p are greedy too; a stop token ends generation early.
  o.sampling = {1.0, 1, 1.0, 5};
  EXPECT_EQ(trainers::infer::generate(eng, prompt, o), a);
  o.sampling = {1.0, 0, 1e-6, 5};
  EXPECT_EQ(trainers::infer::generate(eng, prompt, o), a);
  o.stop_token = a[3];
  EXPECT_EQ(trainers::infer::generate(eng, prompt, o).size(),
            size_t(std::find(a.begin(), a.end(), a[3]) - a.begin()));
}

TEST(Generate, SamplingWithASeedIsReproducible) {
  auto tm = random_model(ActMode::A48);
  const nn::InferenceEngine eng(nn::InferenceWeights::from_model(*tm.model), {ActMode::A48, {}});
  const std::vector<int32_t> prompt = random_tokens(3, 96, 22);
  trainers::infer::GenerateOptions o;
  o.max_tokens = 30;
  o.sampling = {1.0, 0, 1.0, 123};
  const auto a = trainers::infer::generate(eng, prompt, o),
             b = trainers::infer::generate(eng, prompt, o);
  EXPECT_EQ(a, b);
  o.sampling.seed = 124;
  EXPECT_NE(trainers::infer::generate(eng, prompt, o), a);
  o.sampling = {0.7, 10, 0.9, 123};
  EXPECT_EQ(trainers::infer::generate(eng, prompt, o), trainers::infer::generate(eng, prompt, o));
}

TEST(Generate, SamplerFollowsTheDistribution) {
  const std::vector<float> logits = {std::log(0.5f), std::log(0.3f), std::log(0.2f)};
  trainers::infer::Sampler s({1.0, 0, 1.0, 9});
  int counts[3] = {};
  for (int i = 0; i < 20000; ++i) ++counts[s.next(logits)];
  EXPECT_NEAR(counts[0] / 20000.0, 0.5, 0.015);
  EXPECT_NEAR(counts[1] / 20000.0, 0.3, 0.015);
  EXPECT_NEAR(counts[2] / 20000.0, 0.2, 0.015);
  trainers::infer::Sampler k2({1.0, 2, 1.0, 9}), p7({1.0, 0, 0.7, 9}), cold({0.25, 0, 1.0, 9});
  int c2 = 0, c7 = 0, c0 = 0;
  for (int i = 0; i < 5000; ++i) {
    c2 += k2.next(logits) == 2;
    c7 += p7.next(logits) == 2;  // 0.5 + 0.3 >= 0.7: token 2 is outside the nucleus
    c0 += cold.next(logits) == 0;
  }
  EXPECT_EQ(c2, 0);
  EXPECT_EQ(c7, 0);
  EXPECT_GT(c0, 0.8 * 5000);  // p ∝ p^4: 0.0625 / (0.0625 + 0.0081 + 0.0016) ≈ 0.87
}

TEST(Generate, TrainedModelCompletesAPhrase) {
  const Trained& t = trained();
  const nn::InferenceEngine eng(nn::InferenceWeights::from_model(*t.tm.model),
                                {t.tm.model->mode(), {}});
  trainers::infer::GenerateOptions o;
  o.sampling.temperature = 0;
  o.max_tokens = 12;
  const auto out = trainers::infer::generate(eng, bytes_of("the cat sat on the"), o);
  const std::string text(out.begin(), out.end());
  std::printf("greedy: 'the cat sat on the' -> '%s'\n", text.c_str());
  EXPECT_EQ(text.rfind(" mat.", 0), 0u) << text;
}

// ---- evaluation
// -------------------------------------------------------------------------------------------

TEST(Eval, PerplexityEqualsExpMeanLossOfTheFloatPath) {
  const Trained& t = trained();
  nn::BitNetLM& model = *t.tm.model;
  for (ActMode mode : {ActMode::A48, ActMode::W158A8}) {
    const nn::InferenceEngine eng(nn::InferenceWeights::from_model(model), {mode, {}});
    const int64_t seq = 32, max_tokens = 512;
    const auto r = trainers::infer::perplexity(eng, t.val, seq, max_tokens);
    const auto starts = trainers::infer::eval_windows(int64_t(t.val.size()), seq, max_tokens);
    EXPECT_EQ(r.windows, int64_t(starts.size()));
    EXPECT_EQ(r.windows, 512 / 32);
    model.set_mode(mode);
    double sum = 0;
    for (int64_t s : starts) {
      const std::span<const int32_t> x(t.val.data() + s, size_t(seq)),
          y(t.val.data() + s + 1, size_t(seq));
      sum += model.loss(x, y, 1, seq).value()[0];
    }
    model.set_mode(t.tm.model->mode());
    const double ref = std::exp(sum / double(starts.size()));
    std::printf("%-7s eval ppl %.6f, exp(mean BitNetLM::loss) %.6f, rel diff %.1e\n",
                nn::to_string(mode).c_str(), r.ppl, ref, std::fabs(r.ppl / ref - 1));
    EXPECT_NEAR(r.ppl / ref, 1.0, 1e-5);
    EXPECT_LT(r.ppl, 4.0);  // the phrases are learnt
  }
  model.set_mode(ActMode::A48);
}

TEST(Eval, WindowsAndShardLoading) {
  EXPECT_EQ(trainers::infer::eval_windows(10, 3, 0),
            (std::vector<int64_t>{0, 3, 6}));  // 9 predicted, token 9 last
  EXPECT_EQ(trainers::infer::eval_windows(9, 3, 0), (std::vector<int64_t>{0, 3}));
  EXPECT_EQ(trainers::infer::eval_windows(100, 3, 7), (std::vector<int64_t>{0, 3}));
  EXPECT_TRUE(trainers::infer::eval_windows(3, 3, 0).empty());
  const fs::path d = tmp_dir();
  data::write_shard((d / "a.bin").string(), {1, 2, 3}, 10);
  data::write_shard((d / "b.bin").string(), {4, 5}, 10);
  EXPECT_EQ(
      trainers::infer::load_eval_tokens({(d / "a.bin").string(), (d / "b.bin").string()}, nullptr),
      (std::vector<int32_t>{1, 2, 3, 4, 5}));
  std::ofstream((d / "t.txt").string()) << "hello\n";
  EXPECT_THROW(trainers::infer::load_eval_tokens({(d / "t.txt").string()}, nullptr),
               std::exception);  // text needs a tokenizer
  fs::remove_all(d);
}

TEST(Eval, MultipleChoiceScoresAreLogLikelihoodsAndTheTrainedModelPicksThePhrase) {
  const Trained& t = trained();
  const fs::path d = tmp_dir();
  {
    std::ofstream f(d / "mc.jsonl");
    f << R"({"context": "the cat sat on the", "choices": [" park.", " mat.", " pond."], "answer": 1})"
      << "\n\n";
    f << R"({"context": "a dog ran in the", "choices": [" park.", " tree."], "answer": 0})"
      << "\n";
    f << R"({"context": "my bird flew over the", "choices": [" mat.", " pond.", " tree."], "answer": 2})"
      << "\n";
    f << R"({"context": "one fish swam in the", "choices": [" pond.", " park."], "answer": 0})"
      << "\n";
  }
  const auto items = trainers::infer::read_mc_jsonl((d / "mc.jsonl").string());
  ASSERT_EQ(items.size(), 4u);
  EXPECT_EQ(items[0].choices[1], " mat.");
  nn::BitNetLM& model = *t.tm.model;
  const nn::InferenceEngine eng(nn::InferenceWeights::from_model(model), {model.mode(), {}});
  const auto r = trainers::infer::score_mc(eng, items, bytes_of);
  // Hand check: log p of each choice's bytes given the context, from the float path's logits.
  for (size_t i = 0; i < items.size(); ++i)
    for (size_t c = 0; c < items[i].choices.size(); ++c) {
      const auto ctx = bytes_of(items[i].context), ch = bytes_of(items[i].choices[c]);
      std::vector<int32_t> seq = ctx;
      seq.insert(seq.end(), ch.begin(), ch.end());
      const auto lg = float_logits(model, model.mode(), seq);
      double lp = 0;
      for (size_t k = 0; k < ch.size(); ++k) {
        const float* row = lg.data() + (ctx.size() - 1 + k) * 256;
        double z = 0;
        for (int j = 0; j < 256; ++j) z += std::exp(double(row[j]));
        lp += double(row[ch[k]]) - std::log(z);
      }
      EXPECT_NEAR(r.scores[i][c].logprob, lp, 1e-3 + 1e-5 * std::fabs(lp)) << i << "," << c;
      EXPECT_EQ(r.scores[i][c].tokens, int64_t(ch.size()));
    }
  std::printf("MC: acc %.2f, acc_norm %.2f; item 0 log-likelihoods %.3f %.3f %.3f\n", r.acc,
              r.acc_norm, r.scores[0][0].logprob, r.scores[0][1].logprob, r.scores[0][2].logprob);
  EXPECT_EQ(r.items, 4);
  EXPECT_GE(r.acc, 0.75);
  // Bad lines are reported with their line number.
  std::ofstream(d / "bad.jsonl") << R"({"context": "x", "choices": ["a", "b"], "answer": 0})"
                                 << "\n"
                                 << R"({"context": "x", "choices": ["a"], "answer": 0})"
                                 << "\n";
  try {
    trainers::infer::read_mc_jsonl((d / "bad.jsonl").string());
    FAIL();
  } catch (const std::exception& e) {
    EXPECT_NE(std::string(e.what()).find("bad.jsonl:2"), std::string::npos) << e.what();
  }
  fs::remove_all(d);
}

TEST(Eval, DumpLogitsWritesBothPaths) {
  const fs::path d = tmp_dir();
  auto tm = random_model(ActMode::A48);
  const nn::InferenceEngine eng(nn::InferenceWeights::from_model(*tm.model), {ActMode::A48, {}});
  const std::vector<int32_t> toks = {1, 2, 3, 50};
  trainers::infer::dump_logits((d / "l.safetensors").string(), eng, toks, tm.model.get(), "m");
  const auto f = autograd::read_safetensors((d / "l.safetensors").string());
  const auto li = f.f32("logits").to_vector(), lf = f.f32("logits_float").to_vector();
  EXPECT_EQ(li, eng.logits(toks));
  EXPECT_LT(rel_diff(li, lf), 1e-5);
  EXPECT_EQ(f.find("tokens")->dtype, "I32");
  EXPECT_EQ(f.metadata.at("mode"), "a4.8");
  fs::remove_all(d);
}
