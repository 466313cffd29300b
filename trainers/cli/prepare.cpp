// `bitnet prepare`: a SentencePiece tokenizer and token shards from text (data::prepare).
#include <unistd.h>

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <stdexcept>
#include <string>
#include <vector>

#include "data/prepare.h"
#include "trainers/cli/command.h"
#include "trainers/config/config.h"
#include "trainers/train/trainer.h"

namespace trainers::cli {
namespace {
using config::Config;

struct Args {
  std::vector<std::string> inputs;
  std::string config, out, text_field, tokenizer;  // empty: the config's or the default
  int vocab = 0, threads = 0;
  double val = -1;
  bool brown = false, strict = false, quiet = false;
  uint64_t seed = 0;
  int64_t shard_tokens = 0, sample_bytes = 0, stop_after = 0;  // 0: the config's or the default
};

// The progress line on stderr: at most once a second on a terminal, every 10 s otherwise.
struct ProgressLine {
  bool tty = ::isatty(2) != 0;
  std::chrono::steady_clock::time_point last{};
  bool shown = false;
  void operator()(const data::PrepareProgress& p) {
    const auto now = std::chrono::steady_clock::now();
    if (shown && now - last < std::chrono::seconds(tty ? 1 : 10)) return;
    last = now, shown = true;
    const double mb = double(p.bytes) / 1e6, total = double(p.total_bytes) / 1e6;
    const double rate = p.seconds > 0 ? mb / p.seconds : 0;
    const double left = rate > 0 && total > mb ? (total - mb) / rate : 0;
    std::fprintf(stderr, "%sprepare %s: %.1f / %.1f MB (%.0f%%), %.1f MB/s", tty ? "\r" : "",
                 p.phase, mb, total, total > 0 ? 100 * mb / total : 100.0, rate);
    if (p.tokens > 0)
      std::fprintf(stderr, ", %lld tokens, %.2fM tok/s", (long long)p.tokens,
                   p.seconds > 0 ? double(p.tokens) / p.seconds / 1e6 : 0.0);
    std::fprintf(stderr, ", ETA %s%s", train::hms(left).c_str(), tty ? "   " : "\n");
    std::fflush(stderr);
  }
};

int cmd_prepare(const Config* c, const Args& a) {
  data::PrepareOptions o;
  if (c) {
    o.inputs = c->prepare.inputs;
    o.out_dir = c->prepare.out_dir;
    o.tokenizer.vocab_size = c->prepare.vocab_size;
    o.val_fraction = c->prepare.val_fraction;
    o.brown_tags = c->prepare.brown_tags;
    o.text_field = c->prepare.text_field;
    o.tokenizer_model = c->prepare.tokenizer;
    o.shard_tokens = c->prepare.shard_tokens;
    o.sample_bytes = c->prepare.sample_bytes;
  }
  if (!a.inputs.empty()) o.inputs = a.inputs;
  if (!a.out.empty()) o.out_dir = a.out;
  if (a.vocab > 0) o.tokenizer.vocab_size = a.vocab;
  if (a.val >= 0) o.val_fraction = a.val;
  if (a.brown) o.brown_tags = true;
  o.seed = a.seed;
  if (!a.text_field.empty()) o.text_field = a.text_field;
  if (!a.tokenizer.empty()) o.tokenizer_model = a.tokenizer;
  if (a.shard_tokens > 0) o.shard_tokens = a.shard_tokens;
  if (a.sample_bytes > 0) o.sample_bytes = a.sample_bytes;
  o.strict = a.strict;
  o.threads = a.threads;
  o.stop_after_shards = a.stop_after;
  ProgressLine line;
  if (!a.quiet) o.progress = [&line](const data::PrepareProgress& p) { line(p); };
  if (o.inputs.empty())
    throw std::runtime_error("prepare: no inputs (give paths or --config with prepare.inputs)");
  if (o.out_dir.empty())
    throw std::runtime_error("prepare: no output directory (--out or prepare.out_dir)");
  std::printf("preparing %zu input(s) into %s (%s, val fraction %.3f%s)\n", o.inputs.size(),
              o.out_dir.c_str(),
              o.tokenizer_model.empty()
                  ? ("vocab " + std::to_string(o.tokenizer.vocab_size)).c_str()
                  : ("tokenizer " + o.tokenizer_model).c_str(),
              o.val_fraction, o.brown_tags ? ", Brown tags stripped" : "");
  std::fflush(stdout);
  const data::PrepareResult r = data::prepare(o);
  if (line.shown && line.tty) std::fprintf(stderr, "\n");
  if (r.resumed_shards > 0)
    std::printf("resumed after %lld complete shard(s) of an interrupted run\n",
                (long long)r.resumed_shards);
  std::printf(
      "documents %lld, train tokens %lld (%lld shard(s)), val tokens %lld (%lld shard(s))\n",
      (long long)r.documents, (long long)r.train_tokens, (long long)r.train_shards,
      (long long)r.val_tokens, (long long)r.val_shards);
  if (r.bad.total() > 0) {
    std::printf("bad input skipped: %lld (", (long long)r.bad.total());
    for (int k = 0, n = 0; k < data::kBadKinds; ++k)
      if (r.bad.counts[size_t(k)] > 0)
        std::printf("%s%s %lld", n++ ? ", " : "", data::to_string(data::BadKind(k)),
                    (long long)r.bad.counts[size_t(k)]);
    std::printf("); first:\n");
    for (const auto& w : r.bad.first) std::printf("  %s\n", w.c_str());
  }
  if (!r.complete) {
    std::printf("stopped after --stop-after-shards; run again to resume\n");
    return 3;
  }
  return 0;
}
}  // namespace

Command add_prepare(CLI::App& app) {
  auto a = std::make_shared<Args>();
  CLI::App* prep =
      app.add_subcommand("prepare", "train a SentencePiece tokenizer and write token shards");
  prep->add_option("inputs", a->inputs,
                   "text or JSON Lines (*.jsonl) files or directories, plain, gzip or zstd");
  prep->add_option("--config", a->config,
                   "take the settings of the config's prepare section (flags override them)")
      ->check(CLI::ExistingFile);
  prep->add_option("--out", a->out, "output directory");
  prep->add_option("--vocab", a->vocab, "vocabulary size")->check(CLI::Range(64, 1 << 20));
  prep->add_option("--val-fraction", a->val, "fraction of documents held out")
      ->check(CLI::Range(0.0, 0.5));
  prep->add_flag("--brown", a->brown, "strip Brown-corpus part-of-speech tags");
  prep->add_option("--seed", a->seed, "split seed");
  prep->add_option("--text-field", a->text_field,
                   "JSON Lines: the member holding the text (default text)");
  prep->add_option("--tokenizer", a->tokenizer,
                   "use this SentencePiece FILE.model instead of training one")
      ->check(CLI::ExistingFile);
  prep->add_option("--shard-tokens", a->shard_tokens, "tokens per shard (default 100000000)")
      ->check(CLI::Range(int64_t(1), int64_t(1) << 40));
  prep->add_option("--sample-bytes", a->sample_bytes,
                   "bytes of text the tokenizer is trained on (default 100000000)")
      ->check(CLI::Range(int64_t(1), int64_t(1) << 40));
  prep->add_flag("--strict", a->strict,
                 "refuse bad input (FILE:LINE and what) instead of skipping and counting it");
  prep->add_option("--threads", a->threads, "tokenization threads (0 = OpenMP default)")
      ->check(CLI::Range(0, 4096));
  prep->add_flag("--quiet", a->quiet, "no progress line on stderr");
  prep->add_option("--stop-after-shards", a->stop_after,
                   "testing: stop after N new shards, as if interrupted")
      ->group("");  // hidden
  return {prep, [a] {
            if (a->config.empty()) return cmd_prepare(nullptr, *a);
            const Config c = config::load_config(a->config);
            return cmd_prepare(&c, *a);
          }};
}

}  // namespace trainers::cli
