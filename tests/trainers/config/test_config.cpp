// YAML configs: every shipped config validates; each kind of bad input fails with its message.
#include <gtest/gtest.h>

#include <chrono>

#include <filesystem>
#include <fstream>
#include <sstream>

#include "trainers/config/config.h"

using trainers::config::Config;
using trainers::config::ConfigError;

namespace {
const std::string kSrc = BITNET_SOURCE_DIR;

// Message of the ConfigError thrown by parsing `yaml` (with overrides), or "no error".
std::string error_of(const std::string& yaml, const std::vector<std::string>& sets = {}) {
  try {
    trainers::config::parse_config(yaml, "test.yaml", sets);
  } catch (const ConfigError& e) {
    return e.what();
  }
  return "no error";
}
const std::string kOk =
    "model: {vocab_size: 64, d_model: 32, n_layers: 1, n_heads: 4, ffn_dim: 48}\n"
    "schedule: {warmup: 2}\n"
    "training:\n  steps: 10\n";
}  // namespace

TEST(Config, ShippedConfigsValidate) {
  for (const char* f : {"tiny.yaml", "brown-small.yaml", "bench.yaml", "paper/700m.yaml",
                        "paper/1.3b.yaml", "paper/3b.yaml", "paper/7b.yaml", "paper/2b-2t.yaml"}) {
    SCOPED_TRACE(f);
    Config c = trainers::config::load_config(kSrc + "/configs/" + f);
    EXPECT_GT(c.training.steps, 0);
    EXPECT_EQ(c.schedule.total, c.training.steps);
  }
}

TEST(Config, PaperShapesHaveThePaperSizes) {
  // SPEC §5: sizes count 4 d^2 + 3 d ffn per layer.
  struct P {
    const char* f;
    double billions;
  };
  for (const P& p : {P{"700m", 0.68}, P{"1.3b", 1.21}, P{"3b", 3.22}, P{"7b", 6.48}}) {
    Config c = trainers::config::load_config(kSrc + "/configs/paper/" + p.f + ".yaml");
    const auto& m = c.model;
    const double n = double(m.n_layers) *
                     (4.0 * double(m.d_model * m.d_model) + 3.0 * double(m.d_model * m.ffn_dim));
    EXPECT_NEAR(n / 1e9, p.billions, 0.02) << p.f;
    EXPECT_EQ(c.tokens_per_step(), 1 << 20) << p.f;  // 1M-token batches
    EXPECT_EQ(c.mode_at(0), nn::ActMode::W158A8);
    EXPECT_EQ(c.mode_at(c.training.steps - 1), nn::ActMode::A48);
  }
  Config c = trainers::config::load_config(kSrc + "/configs/paper/2b-2t.yaml");
  EXPECT_EQ(c.model.kv_heads(), 5);
  EXPECT_EQ(c.model.head_dim(), 128);
  EXPECT_EQ(c.schedule.wd_kind, optim::WdKind::Cosine);
}

TEST(Config, DefaultsAndStages) {
  Config c = trainers::config::parse_config(kOk, "ok.yaml");
  ASSERT_EQ(c.stages.size(), 2u);  // default: w158a8 for 95%, then a4.8
  EXPECT_EQ(c.mode_at(0), nn::ActMode::W158A8);
  EXPECT_EQ(c.stage_start(1), 10);  // llround(0.95 * 10): halves round away from zero
  EXPECT_EQ(c.schedule.switch_step, 5);
}

TEST(Config, UnknownKeyNamesFileLineAndKey) {
  const std::string m = error_of(kOk + "  stepz: 3\n");
  EXPECT_EQ(m.rfind("test.yaml:5: training.stepz: unknown key", 0), 0u) << m;
  EXPECT_NE(error_of("modle: {}\n" + kOk).find("test.yaml:1: modle: unknown key"),
            std::string::npos);
}

TEST(Config, WrongTypeNamesTheKey) {
  const std::string m = error_of(
      "model: {vocab_size: 64, d_model: abc, n_layers: 1, n_heads: 4, ffn_dim: 48}\ntraining: "
      "{steps: 5}\n");
  EXPECT_NE(m.find("test.yaml:1: model.d_model: expected an integer, got 'abc'"), std::string::npos)
      << m;
  EXPECT_NE(error_of(kOk, {"optim.grad_clip=[1, 2]"}).find("optim.grad_clip: expected a number"),
            std::string::npos);
  EXPECT_NE(error_of(kOk, {"model.tie_embeddings=maybe"}).find("expected a boolean"),
            std::string::npos);
  EXPECT_NE(error_of(kOk, {"training.zero1=2"}).find("training.zero1: expected a boolean, got '2'"),
            std::string::npos);
}

TEST(Config, Zero1DefaultsOffAndParses) {
  EXPECT_FALSE(trainers::config::parse_config(kOk, "test.yaml").training.zero1);
  EXPECT_TRUE(
      trainers::config::parse_config(kOk, "test.yaml", {"training.zero1=true"}).training.zero1);
}

TEST(Config, OutOfRangeAndInconsistentValues) {
  EXPECT_NE(
      error_of(kOk, {"model.n_heads=5"}).find("model.d_model: 32 is not divisible by n_heads 5"),
      std::string::npos);
  EXPECT_NE(error_of(kOk, {"model.n_kv_heads=3"}).find("model.n_kv_heads"), std::string::npos);
  EXPECT_NE(error_of(kOk, {"optim.beta2=1.5"}).find("optim.beta2: must be in [0, 1)"),
            std::string::npos);
  EXPECT_NE(error_of(kOk, {"data.seq_len=0"}).find("data.seq_len: must be >= 1"),
            std::string::npos);
  EXPECT_NE(error_of(kOk, {"schedule.warmup=50"}).find("schedule.warmup"), std::string::npos);
  EXPECT_NE(error_of(kOk, {"schedule.lr=linear"}).find("schedule.lr"), std::string::npos);
  EXPECT_NE(error_of(kOk, {"training.tokens=1000"}).find("not both"), std::string::npos);
  EXPECT_NE(error_of("model: {vocab_size: 64, d_model: 32, n_layers: 1, n_heads: 4, ffn_dim: 48}\n")
                .find("set training.steps or training.tokens"),
            std::string::npos);
}

TEST(Config, StagesAreChecked) {
  EXPECT_NE(error_of(kOk + "stages:\n  - {mode: a4}\n").find("stages[0].mode"), std::string::npos);
  EXPECT_NE(error_of(kOk + "stages:\n  - {mode: w158a8, until: 0.5}\n")
                .find("the last stage must run until 1.0"),
            std::string::npos);
  EXPECT_NE(
      error_of(
          kOk +
          "stages:\n  - {mode: w158a8, until: 0.8}\n  - {mode: a4.8, until: 0.6}\n  - {mode: fp}\n")
          .find("stages[1].until"),
      std::string::npos);
  Config c = trainers::config::parse_config(
      kOk + "stages:\n  - {mode: fp, until: 0.5}\n  - {mode: a4.8-fp4}\n", "s.yaml");
  EXPECT_EQ(c.mode_at(4), nn::ActMode::FP);
  EXPECT_EQ(c.mode_at(5), nn::ActMode::A48FP4);
}

TEST(Config, OverridesApplyAndAreNamedInErrors) {
  Config c = trainers::config::parse_config(
      kOk, "ok.yaml", {"model.d_model=64", "data.train=[a.bin, b.bin]", "training.out_dir=x"});
  EXPECT_EQ(c.model.d_model, 64);
  EXPECT_EQ(c.data.train, (std::vector<std::string>{"a.bin", "b.bin"}));
  EXPECT_EQ(c.training.out_dir, "x");
  EXPECT_NE(c.resolved_yaml.find("d_model: 64"), std::string::npos);
  EXPECT_EQ(error_of(kOk, {"model.d_model=31"}).rfind("--set model.d_model: ", 0), 0u)
      << error_of(kOk, {"model.d_model=31"});
  EXPECT_NE(error_of(kOk, {"nonsense"}).find("expected key.path=value"), std::string::npos);
  EXPECT_NE(error_of(kOk, {"model.foo=1"}).find("model.foo: unknown key"), std::string::npos);
}

TEST(Config, SyntaxErrorAndMissingFile) {
  EXPECT_NE(error_of("model: {d_model: [\n").find("YAML syntax error"), std::string::npos);
  try {
    trainers::config::load_config("/nonexistent/x.yaml");
    FAIL();
  } catch (const ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find("cannot open"), std::string::npos);
  }
}

// Found by fuzz_config: 30 lines of aliases stand for a tree of 2^30 keys; walking it hung the
// loader. Now refused at once (tests/fuzz/corpus/config/regress_alias_explosion.yaml).
TEST(Config, AliasExplosionIsRefusedQuickly) {
  std::string yaml = "m0: &m0 {x: 1}\n";
  for (int i = 1; i < 30;
       ++i) {  // appended piece by piece (GCC 12 -Wrestrict misfires on a + chain)
    const std::string n = std::to_string(i), p = std::to_string(i - 1);
    yaml.append("m").append(n).append(": &m").append(n).append(" {a: *m").append(p);
    yaml.append(", b: *m").append(p).append("}\n");
  }
  const auto t0 = std::chrono::steady_clock::now();
  EXPECT_NE(error_of(yaml).find("more than 10000 keys (aliases expanding into a huge tree?)"),
            std::string::npos);
  EXPECT_LT(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count(), 5.0);
}

// Found by fuzz_config (ASan: stack overflow in the key index): an alias inside itself is an
// infinitely deep mapping; deep nesting is refused
// (tests/fuzz/corpus/config/regress_self_alias.yaml).
TEST(Config, SelfContainingAliasAndDeepNestingAreRefused) {
  EXPECT_NE(error_of("model: &m {a: *m}\n")
                .find("nested deeper than 32 levels (or an alias that contains itself)"),
            std::string::npos)
      << error_of("model: &m {a: *m}\n");
  std::string deep = "x: ";
  for (int i = 0; i < 40; ++i) deep += "{a: ";
  deep += "1" + std::string(40, '}') + "\n";
  EXPECT_NE(error_of(deep).find("nested deeper than 32 levels"), std::string::npos)
      << error_of(deep);
}

// docs/TRAINING.md's key list is the config table's (trainers/config/fields.cpp): a key added,
// removed or re-documented there without regenerating the docs fails here.
TEST(Config, DocsKeyListIsTheTable) {
  std::ifstream f(kSrc + "/docs/TRAINING.md");
  ASSERT_TRUE(f) << "cannot read docs/TRAINING.md";
  std::stringstream ss;
  ss << f.rdbuf();
  const std::string doc = ss.str();
  const std::string begin = "<!-- keys: generated", end = "<!-- end of keys -->";
  const size_t b = doc.find(begin), e = doc.find(end);
  ASSERT_NE(b, std::string::npos) << "docs/TRAINING.md lacks the marker " << begin;
  ASSERT_NE(e, std::string::npos) << "docs/TRAINING.md lacks the marker " << end;
  const size_t first = doc.find('\n', b) + 1;
  ASSERT_LE(first, e);
  EXPECT_EQ(doc.substr(first, e - first), trainers::config::keys_markdown())
      << "regenerate the list between the markers with: build/release/trainers/bitnet config "
         "--keys";
}

// The unknown-key check lists every key of the table in its section.
TEST(Config, EveryTableKeyIsAccepted) {
  std::istringstream md(trainers::config::keys_markdown());
  size_t n = 0;
  for (std::string line; std::getline(md, line);) {
    if (line.rfind("| `", 0) != 0) continue;
    const std::string key = line.substr(3, line.find('`', 3) - 3);
    if (key.find('.') == std::string::npos) continue;  // whole sections (stages)
    ++n;
    const std::string err = error_of(kOk, {key.substr(0, key.find('.')) + ".no_such_key=1"});
    EXPECT_NE(err.find("no_such_key: unknown key (allowed: "), std::string::npos) << err;
    EXPECT_NE(err.find(key.substr(key.find('.') + 1)), std::string::npos)
        << key << " not in: " << err;
  }
  EXPECT_GT(n, 40u);
}

// The quantizer-ablation keys (SPEC §2.8): each value parses, a bad one is refused naming the key
// and the allowed values, and the defaults are the a4.8 of the paper.
TEST(Config, QuantizerAblationKeys) {
  using quant::ActKind;
  const Config d = trainers::config::parse_config(kOk, "test.yaml");
  EXPECT_EQ(d.model.a4_quant, ActKind::Int4);
  EXPECT_EQ(d.model.down_quant, ActKind::Int8);
  EXPECT_EQ(d.model.topk_ratio, 0.5f);
  const std::pair<const char*, ActKind> a4[] = {{"int4", ActKind::Int4},
                                                {"int4-absmax", ActKind::Int4Absmax},
                                                {"fp4", ActKind::Fp4},
                                                {"fp4-e1m2", ActKind::Fp4E1M2}};
  for (const auto& [name, kind] : a4) {
    const Config c =
        trainers::config::parse_config(kOk, "test.yaml", {std::string("model.a4_quant=") + name});
    EXPECT_EQ(c.model.a4_quant, kind) << name;
    EXPECT_NE(c.resolved_yaml.find(std::string("a4_quant: ") + name), std::string::npos) << name;
  }
  const std::pair<const char*, ActKind> down[] = {
      {"int8", ActKind::Int8}, {"int4", ActKind::Int4}, {"fp4", ActKind::Fp4}};
  for (const auto& [name, kind] : down)
    EXPECT_EQ(
        trainers::config::parse_config(kOk, "test.yaml", {std::string("model.down_quant=") + name})
            .model.down_quant,
        kind)
        << name;
  EXPECT_EQ(
      trainers::config::parse_config(kOk, "test.yaml", {"model.topk_ratio=0"}).model.topk_ratio,
      0.0f);
  EXPECT_NE(error_of(kOk, {"model.a4_quant=int8"})
                .find("model.a4_quant: 'int8' is not one of int4, int4-absmax, fp4, fp4-e1m2"),
            std::string::npos)
      << error_of(kOk, {"model.a4_quant=int8"});
  EXPECT_NE(error_of(kOk, {"model.down_quant=fp4-e1m2"})
                .find("model.down_quant: 'fp4-e1m2' is not one of int8, int4, fp4"),
            std::string::npos)
      << error_of(kOk, {"model.down_quant=fp4-e1m2"});
  for (const char* bad : {"model.topk_ratio=-0.1", "model.topk_ratio=1.5"})
    EXPECT_NE(error_of(kOk, {bad}).find("model.topk_ratio: must be in [0, 1] (0 = top-K off)"),
              std::string::npos)
        << error_of(kOk, {bad});
  const Config f = trainers::config::parse_config(kOk + "stages:\n  - {mode: fp4-all}\n", "s.yaml");
  EXPECT_EQ(f.mode_at(0), nn::ActMode::Fp4All);
  EXPECT_NE(error_of(kOk + "stages:\n  - {mode: fp8-all}\n").find("fp4-all"), std::string::npos);
  // must-match on resume, like the other model keys
  const Config e = trainers::config::parse_config(kOk, "test.yaml", {"model.a4_quant=fp4-e1m2"});
  const Config g = trainers::config::parse_config(kOk, "test.yaml", {"model.down_quant=int4"});
  const auto m1 = trainers::config::config_mismatches(d, e),
             m2 = trainers::config::config_mismatches(d, g);
  ASSERT_EQ(m1.size(), 1u);
  EXPECT_EQ(m1[0], "model.a4_quant: checkpoint int4, config fp4-e1m2");
  ASSERT_EQ(m2.size(), 1u);
  EXPECT_EQ(m2[0], "model.down_quant: checkpoint int8, config int4");
}
