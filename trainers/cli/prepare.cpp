// `bitnet prepare`: a SentencePiece tokenizer and token shards from text (data::prepare).
#include <cstdint>
#include <cstdio>
#include <stdexcept>
#include <string>
#include <vector>

#include "data/prepare.h"
#include "trainers/cli/command.h"
#include "trainers/config/config.h"

namespace trainers::cli {
namespace {
using config::Config;

int cmd_prepare(const Config* c, std::vector<std::string> inputs, std::string out, int vocab,
                double val, bool brown, uint64_t seed) {
  data::PrepareOptions o;
  if (c) {
    o.inputs = c->prepare.inputs;
    o.out_dir = c->prepare.out_dir;
    o.tokenizer.vocab_size = c->prepare.vocab_size;
    o.val_fraction = c->prepare.val_fraction;
    o.brown_tags = c->prepare.brown_tags;
  }
  if (!inputs.empty()) o.inputs = inputs;
  if (!out.empty()) o.out_dir = out;
  if (vocab > 0) o.tokenizer.vocab_size = vocab;
  if (val >= 0) o.val_fraction = val;
  if (brown) o.brown_tags = true;
  o.seed = seed;
  if (o.inputs.empty())
    throw std::runtime_error("prepare: no inputs (give paths or --config with prepare.inputs)");
  if (o.out_dir.empty())
    throw std::runtime_error("prepare: no output directory (--out or prepare.out_dir)");
  std::printf("preparing %zu input(s) into %s (vocab %d, val fraction %.3f%s)\n", o.inputs.size(),
              o.out_dir.c_str(), o.tokenizer.vocab_size, o.val_fraction,
              o.brown_tags ? ", Brown tags stripped" : "");
  const data::PrepareResult r = data::prepare(o);
  std::printf("documents %lld, train tokens %lld, val tokens %lld\n", (long long)r.documents,
              (long long)r.train_tokens, (long long)r.val_tokens);
  return 0;
}
}  // namespace

Command add_prepare(CLI::App& app) {
  struct Args {
    std::vector<std::string> inputs;
    std::string config, out;
    int vocab = 0;
    double val = -1;
    bool brown = false;
    uint64_t seed = 0;
  };
  auto a = std::make_shared<Args>();
  CLI::App* prep =
      app.add_subcommand("prepare", "train a SentencePiece tokenizer and write token shards");
  prep->add_option("inputs", a->inputs, "text files or directories");
  prep->add_option("--config", a->config,
                   "take inputs/out_dir/vocab from the config's prepare section")
      ->check(CLI::ExistingFile);
  prep->add_option("--out", a->out, "output directory");
  prep->add_option("--vocab", a->vocab, "vocabulary size")->check(CLI::Range(64, 1 << 20));
  prep->add_option("--val-fraction", a->val, "fraction of documents held out")
      ->check(CLI::Range(0.0, 0.5));
  prep->add_flag("--brown", a->brown, "strip Brown-corpus part-of-speech tags");
  prep->add_option("--seed", a->seed, "split seed");
  return {prep, [a] {
            if (a->config.empty())
              return cmd_prepare(nullptr, a->inputs, a->out, a->vocab, a->val, a->brown, a->seed);
            const Config c = config::load_config(a->config);
            return cmd_prepare(&c, a->inputs, a->out, a->vocab, a->val, a->brown, a->seed);
          }};
}

}  // namespace trainers::cli
