// `bitnet generate MODEL --prompt P`: text from a model with the integer inference engine.
#include "trainers/infer/generate.h"
#include "trainers/cli/command.h"

namespace trainers::cli {

Command add_generate(CLI::App& app) {
  struct Args {
    infer::GenerateArgs args;
    bool no_bos4 = false, no_bos = false, ignore_eos = false;
  };
  auto a = std::make_shared<Args>();
  auto* gen = app.add_subcommand(
      "generate",
      "generate text from a model file (training or compact) with the integer inference engine");
  gen->add_option("model", a->args.model,
                  "model file, run directory, compact file or Hugging Face directory")
      ->required()
      ->check(CLI::ExistingPath);
  auto* prompt = gen->add_option("--prompt", a->args.prompt, "prompt text (needs a tokenizer)");
  auto* tokens = gen->add_option(
      "--tokens", a->args.tokens,
      "prompt as token ids \"1,2,3\" (no tokenizer needed: e.g. a Hugging Face directory with "
      "only tokenizer.json); prints the generated ids");
  prompt->excludes(tokens);
  gen->add_option("--max-tokens", a->args.max_tokens, "tokens to generate (default 64)")
      ->check(CLI::Range(int64_t(0), int64_t(1) << 30));
  gen->add_option("--temperature", a->args.sampling.temperature,
                  "sampling temperature; 0 = greedy (default 0.8)")
      ->check(CLI::Range(0.0, 100.0));
  gen->add_option("--top-k", a->args.sampling.top_k,
                  "sample from the k most likely tokens (0 = all)")
      ->check(CLI::Range(int64_t(0), int64_t(1) << 30));
  gen->add_option("--top-p", a->args.sampling.top_p, "nucleus sampling mass (default 1 = off)")
      ->check(CLI::Range(1e-9, 1.0));
  gen->add_option("--seed", a->args.sampling.seed, "sampling seed (default 0)");
  gen->add_option("--mode", a->args.mode, "activation mode (default: the model's saved mode)");
  gen->add_option("--tokenizer", a->args.tokenizer,
                  "SentencePiece .model file (default: embedded, else beside the training data)");
  gen->add_option("--kv-bits", a->args.kv_bits, "low-bit attention: K/V bits (SPEC §4)")
      ->check(CLI::Range(2, 8));
  gen->add_option("--qkv-bits", a->args.qkv_bits, "low-bit attention: Q/K/V bits")
      ->check(CLI::Range(2, 8));
  gen->add_flag("--no-bos-4bit", a->no_bos4, "with 3-bit K/V, quantize position 0 to 3 bits too");
  gen->add_flag("--no-bos", a->no_bos, "do not prepend the BOS token to the prompt");
  gen->add_flag("--ignore-eos", a->ignore_eos, "keep generating past the EOS token");
  gen->add_flag("--quiet", a->args.quiet, "no header or speed line on stderr");
  return {gen, [a] {
            a->args.keep_bos = !a->no_bos4;
            a->args.add_bos = !a->no_bos;
            a->args.stop_at_eos = !a->ignore_eos;
            return infer::run_generate(a->args);
          }};
}

}  // namespace trainers::cli
