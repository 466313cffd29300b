// `bitnet eval MODEL`: perplexity, sparsity, low-bit attention, multiple choice, logit dumps.
#include "trainers/cli/command.h"
#include "trainers/infer/evaluate.h"

namespace trainers::cli {

Command add_eval(CLI::App& app) {
  struct Args {
    infer::EvalArgs args;
    bool no_bos4 = false;
  };
  auto a = std::make_shared<Args>();
  auto* evalc = app.add_subcommand(
      "eval", "perplexity, sparsity, low-bit attention, multiple-choice scoring and logit dumps");
  evalc
      ->add_option("model", a->args.model,
                   "model file, run directory, compact file or Hugging Face directory")
      ->required()
      ->check(CLI::ExistingPath);
  evalc->add_option("--data", a->args.data, "token shards, shard directories or raw text files");
  evalc->add_option("--seq", a->args.seq, "window length (default: the model's training seq_len)")
      ->check(CLI::Range(int64_t(1), int64_t(1) << 20));
  evalc->add_option("--max-tokens", a->args.max_tokens,
                    "evaluate at most this many tokens (default: all full windows)");
  evalc->add_option("--mode", a->args.mode, "activation mode (default: the model's saved mode)");
  evalc->add_option("--tokenizer", a->args.tokenizer,
                    "SentencePiece .model file (default: embedded, else beside the training data)");
  evalc
      ->add_option("--kv-bits", a->args.kv_bits,
                   "evaluate this K/V precision only (default: the sweep kv4, qkv4, kv3, q4+kv3)")
      ->check(CLI::Range(2, 8));
  evalc->add_option("--qkv-bits", a->args.qkv_bits, "evaluate this Q/K/V precision only")
      ->check(CLI::Range(2, 8));
  evalc->add_flag("--no-bos-4bit", a->no_bos4, "with 3-bit K/V, quantize position 0 to 3 bits too");
  evalc->add_flag("--no-attn", a->args.no_attn, "skip the low-bit attention evaluation");
  evalc
      ->add_option("--mc", a->args.mc,
                   "multiple-choice JSONL: {\"context\", \"choices\", \"answer\"} per line")
      ->check(CLI::ExistingFile);
  evalc->add_option("--dump-logits", a->args.dump_logits,
                    "write the logits of --tokens to this .safetensors file");
  evalc->add_option("--tokens", a->args.tokens, "token ids for --dump-logits, e.g. \"1,2,3\"");
  return {evalc, [a] {
            a->args.keep_bos = !a->no_bos4;
            return infer::run_eval(a->args);
          }};
}

}  // namespace trainers::cli
