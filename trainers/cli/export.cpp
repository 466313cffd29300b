// `bitnet export MODEL --format F --out O`: Hugging Face, GGUF or compact files
// (formats::run_export).
#include "trainers/formats/export.h"
#include "trainers/cli/command.h"

namespace trainers::cli {

Command add_export(CLI::App& app) {
  struct Args {
    formats::ExportOptions opt;
    std::string model, format, out, ref;
    int64_t ref_len = 16;
  };
  auto a = std::make_shared<Args>();
  formats::ExportOptions& xopt = a->opt;
  auto* xcmd =
      app.add_subcommand("export",
                         "export a trained model: Hugging Face BitNetForCausalLM (hf, "
                         "hf-offline), GGUF for llama.cpp / bitnet.cpp, or the compact 2-bit "
                         "file");
  xcmd->add_option("model", a->model, "model file, run directory or Hugging Face directory")
      ->required();
  xcmd->add_option("--format", a->format, "hf | hf-offline | gguf | compact")
      ->required()
      ->check(CLI::IsMember({"hf", "hf-offline", "gguf", "compact"}));
  xcmd->add_option("--out", a->out, "output directory (hf, hf-offline) or file (gguf)")->required();
  xcmd->add_option(
          "--target", xopt.target,
          "GGUF runtime: llama.cpp (arch bitnet, default) | bitnet.cpp (arch bitnet-b1.58)")
      ->check(CLI::IsMember({"llama.cpp", "bitnet.cpp"}));
  xcmd->add_option("--arch", xopt.arch,
                   "deprecated: bitnet = --target llama.cpp, bitnet-b1.58 = --target bitnet.cpp");
  xcmd->add_option("--type", xopt.type,
                   "GGUF BitLinear weights: f32 (default) | f16 | tq2_0 | tq1_0 (rows % 256 == 0)")
      ->check(CLI::IsMember({"f32", "f16", "tq2_0", "tq1_0"}));
  xcmd->add_flag("--f16", xopt.f16, "GGUF: same as --type f16");
  xcmd->add_option("--embedding-type", xopt.embedding_type, "GGUF token_embd: f32 (default) | f16")
      ->check(CLI::IsMember({"f32", "f16"}));
  xcmd->add_flag("--fp16-embeddings", xopt.fp16_embeddings,
                 "compact: store embeddings and the LM head as fp16");
  xcmd->add_option("--context-length", xopt.context_length,
                   "max_position_embeddings / context_length (default: training seq_len)");
  xcmd->add_option("--name", xopt.name, "GGUF general.name");
  xcmd->add_flag("--allow-untied-output", xopt.allow_untied_output,
                 "GGUF, --target bitnet.cpp: write an untied lm_head although it ignores it");
  xcmd->add_option("--tokenizer-from", xopt.tokenizer_from,
                   "hf: copy the tokenizer files of this Hugging Face directory (default: the one "
                   "the model was imported from, if any)")
      ->check(CLI::ExistingDirectory);
  xcmd->add_option("--reference", a->ref,
                   "also write reference tokens + logits (safetensors) for tools/check_hf.py");
  xcmd->add_option("--reference-tokens", a->ref_len, "length of the reference token sequence")
      ->check(CLI::Range(1, 4096));
  return {xcmd, [a] {
            a->opt.format = formats::parse_export_format(a->format);
            return formats::run_export(a->model, a->out, a->opt, a->ref, a->ref_len);
          }};
}

}  // namespace trainers::cli
