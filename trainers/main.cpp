// The `bitnet` command-line tool: prepare, train, info, schedule, bench, export, generate, eval, version.
#include <CLI/CLI.hpp>
#include <cmath>
#include <memory>
#include <cstdio>
#include <filesystem>
#include <string>
#include <vector>

#include "autograd/error.h"
#include "autograd/kernels.h"
#include "data/prepare.h"
#include "optim/schedule.h"
#include "quant/igemm.h"
#include "trainers/bench.h"
#include "trainers/comm.h"
#include "trainers/config.h"
#include "trainers/evaluate.h"
#include "trainers/export.h"
#include "trainers/generate.h"
#include "trainers/plot.h"
#include "trainers/trainer.h"

namespace {
using namespace trainers;

std::string human(double v) {
  char b[32];
  if (v >= 1e9) std::snprintf(b, sizeof b, "%.2fB", v / 1e9);
  else if (v >= 1e6) std::snprintf(b, sizeof b, "%.1fM", v / 1e6);
  else if (v >= 1e3) std::snprintf(b, sizeof b, "%.1fK", v / 1e3);
  else std::snprintf(b, sizeof b, "%.0f", v);
  return b;
}
std::string gib(double bytes) {
  char b[32];
  std::snprintf(b, sizeof b, "%.2f GiB", bytes / double(1ull << 30));
  return b;
}

int cmd_info(const Config& c) {
  const auto& m = c.model;
  const double P = double(m.total_params()), NE = double(m.non_embedding_params());
  const double tokens = double(c.tokens_per_step());
  // FLOPs per token for training: 6 * (non-embedding + LM head) params + attention 6 * L * T * d (causal, fwd+bwd)
  const double flops_tok = 6.0 * (NE + double(m.vocab_size * m.d_model)) + 6.0 * double(m.n_layers * c.data.seq_len * m.d_model);
  // Activation memory estimate per token (saved tensors of one layer ~ 34 d + 5 heads*T + 10 ffn floats).
  const double act_tok = double(m.n_layers) * (34.0 * double(m.d_model) + 5.0 * double(m.n_heads * c.data.seq_len) +
                                               10.0 * double(m.ffn_dim)) * 4.0 + 8.0 * double(m.vocab_size);
  std::printf("config %s\n", c.path.c_str());
  std::printf("  shape: d_model %lld, ffn %lld, heads %lld (kv %lld, head_dim %lld), layers %lld, vocab %lld%s\n",
              (long long)m.d_model, (long long)m.ffn_dim, (long long)m.n_heads, (long long)m.kv_heads(),
              (long long)m.head_dim(), (long long)m.n_layers, (long long)m.vocab_size, m.tie_embeddings ? ", tied" : "");
  std::printf("  parameters: %s total, %s non-embedding (4d^2+3d*ffn per layer: %s)\n", human(P).c_str(), human(NE).c_str(),
              human(double(m.n_layers) * (4.0 * double(m.d_model * m.d_model) + 3.0 * double(m.d_model * m.ffn_dim))).c_str());
  std::printf("  memory: weights %s, +grads %s, +AdamW %s = %s; activations ~%s per micro-batch of %lld tokens\n",
              gib(4 * P).c_str(), gib(4 * P).c_str(), gib(8 * P).c_str(), gib(16 * P).c_str(),
              gib(act_tok * double(c.data.micro_batch * c.data.seq_len)).c_str(), (long long)(c.data.micro_batch * c.data.seq_len));
  std::printf("  training: %s tokens/step (micro %lld x accum %lld x seq %lld), %lld steps, %s tokens; ~%.1f GFLOP/step\n",
              human(tokens).c_str(), (long long)c.data.micro_batch, (long long)c.data.grad_accum, (long long)c.data.seq_len,
              (long long)c.training.steps, human(double(c.training.steps) * tokens).c_str(), flops_tok * tokens / 1e9);
  for (size_t i = 0; i < c.stages.size(); ++i)
    std::printf("  stage %zu: %s from step %lld\n", i + 1, nn::to_string(c.stages[i].mode).c_str(), (long long)c.stage_start(i));
  return 0;
}

int cmd_schedule(const Config& c, const std::string& svg, int rows) {
  const auto& s = c.schedule;
  std::printf("%8s %12s %8s  %s\n", "step", "lr", "wd", "mode");
  std::vector<int64_t> pts;
  for (int i = 0; i < rows; ++i) pts.push_back(int64_t(double(s.total - 1) * i / std::max(1, rows - 1)));
  for (int64_t b : {int64_t(0), s.warmup - 1, s.warmup, s.switch_step - 1, s.switch_step, s.total - 1})
    if (b >= 0 && b < s.total) pts.push_back(b);
  for (size_t i = 1; i < c.stages.size(); ++i) pts.push_back(c.stage_start(i) - 1), pts.push_back(c.stage_start(i));
  std::sort(pts.begin(), pts.end());
  pts.erase(std::unique(pts.begin(), pts.end()), pts.end());
  for (int64_t t : pts)
    std::printf("%8lld %12.4e %8.4f  %s\n", (long long)t, optim::lr_at(s, t), optim::wd_at(s, t), nn::to_string(c.mode_at(t)).c_str());
  if (!svg.empty()) {
    Series lr{"lr", "#2ca02c", {}}, wd{"wd", "#9467bd", {}};
    const int64_t n = std::min<int64_t>(s.total, 2000);
    for (int64_t i = 0; i < n; ++i) {
      const int64_t t = s.total <= 2000 ? i : i * (s.total - 1) / (n - 1);
      lr.pts.emplace_back(double(t), optim::lr_at(s, t));
      wd.pts.emplace_back(double(t), optim::wd_at(s, t));
    }
    std::vector<Marker> marks{{double(s.switch_step), "LR/WD switch"}};
    for (size_t i = 1; i < c.stages.size(); ++i) marks.push_back({double(c.stage_start(i)), "-> " + nn::to_string(c.stages[i].mode)});
    write_file(svg, render_svg({Panel{"Learning rate", "lr", {lr}}, Panel{"Weight decay", "wd", {wd}}}, marks, "step"));
    std::printf("plot written to %s\n", svg.c_str());
  }
  return 0;
}

// MPI when started by an MPI launcher, else the single-process communicator.
std::unique_ptr<Comm> make_comm(int* argc, char*** argv) {
  if (launched_by_mpi()) return make_mpi_comm(argc, argv);
  return std::make_unique<LocalComm>();
}
// Runs f on this rank; an error on any rank of several ends every rank (MPI_Abort), so none is
// left waiting in a collective.
template <class F>
auto on_every_rank(Comm& comm, F&& f) {
  try {
    return f();
  } catch (const std::exception& e) {
    if (comm.world() > 1) comm.abort(std::string("error: ") + e.what());
    throw;
  }
}

int cmd_prepare(const Config* c, std::vector<std::string> inputs, std::string out, int vocab, double val, bool brown, uint64_t seed) {
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
  if (o.inputs.empty()) throw std::runtime_error("prepare: no inputs (give paths or --config with prepare.inputs)");
  if (o.out_dir.empty()) throw std::runtime_error("prepare: no output directory (--out or prepare.out_dir)");
  std::printf("preparing %zu input(s) into %s (vocab %d, val fraction %.3f%s)\n", o.inputs.size(), o.out_dir.c_str(),
              o.tokenizer.vocab_size, o.val_fraction, o.brown_tags ? ", Brown tags stripped" : "");
  const data::PrepareResult r = data::prepare(o);
  std::printf("documents %lld, train tokens %lld, val tokens %lld\n", (long long)r.documents, (long long)r.train_tokens,
              (long long)r.val_tokens);
  return 0;
}
}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"bitnet: train BitNet a4.8 (1-bit weights, 4/8-bit activations) models on CPUs"};
  app.require_subcommand(1);
  std::vector<std::string> sets;
  std::string config, init_from, svg, out;
  bool quiet = false, brown = false;
  int rows = 20, vocab = 0;
  double val = -1;
  uint64_t seed = 0;
  std::vector<std::string> inputs;

  auto* train = app.add_subcommand("train", "train a model from a YAML config");
  train->add_option("config", config, "YAML config file")->required()->check(CLI::ExistingFile);
  train->add_option("--set", sets, "override a config key: key.path=value (repeatable)");
  train->add_option("--init-from", init_from, "model file to start from (e.g. a finished w158a8 run's model.safetensors)")
      ->check(CLI::ExistingFile);
  train->add_flag("--quiet", quiet, "no progress output");
  std::string resume;
  train->add_option("--resume", resume, "continue bit for bit from a checkpoint file, or a run directory's newest checkpoint")
      ->check(CLI::ExistingPath);
  std::string trace;
  train->add_option("--trace-samples", trace, "each rank appends \"sample window\" per sample it trains on to PREFIX.rank<R> "
                    "(checks the data sharding)");

  auto* info = app.add_subcommand("info", "print parameter count, memory estimate and run length of a config");
  info->add_option("config", config, "YAML config file")->required()->check(CLI::ExistingFile);
  info->add_option("--set", sets, "override a config key: key.path=value");

  auto* sched = app.add_subcommand("schedule", "print the LR/WD table of a config and write a plot");
  sched->add_option("config", config, "YAML config file")->required()->check(CLI::ExistingFile);
  sched->add_option("--set", sets, "override a config key: key.path=value");
  sched->add_option("--plot", svg, "SVG file to write (default: schedule.svg)");
  sched->add_option("--rows", rows, "table rows besides the boundaries")->check(CLI::Range(2, 10000));

  auto* prep = app.add_subcommand("prepare", "train a SentencePiece tokenizer and write token shards");
  prep->add_option("inputs", inputs, "text files or directories");
  prep->add_option("--config", config, "take inputs/out_dir/vocab from the config's prepare section")->check(CLI::ExistingFile);
  prep->add_option("--out", out, "output directory");
  prep->add_option("--vocab", vocab, "vocabulary size")->check(CLI::Range(64, 1 << 20));
  prep->add_option("--val-fraction", val, "fraction of documents held out")->check(CLI::Range(0.0, 0.5));
  prep->add_flag("--brown", brown, "strip Brown-corpus part-of-speech tags");
  prep->add_option("--seed", seed, "split seed");

  BenchOptions bopt;
  auto* bench = app.add_subcommand("bench", "time training steps (tokens/s, phase split, GFLOP/s, MFU, peak RSS)");
  bench->add_option("config", config, "YAML config file")->required()->check(CLI::ExistingFile);
  bench->add_option("--set", sets, "override a config key: key.path=value");
  bench->add_option("--mode", bopt.mode, "activation mode (default: the config's first stage)");
  bench->add_option("--warmup", bopt.warmup, "untimed steps")->check(CLI::Range(0, 1000));
  bench->add_option("--steps", bopt.steps, "timed steps")->check(CLI::Range(1, 100000));
  bench->add_option("--json", bopt.json_out, "also write the JSON result to this file");
  bench->add_flag("--profile", bopt.profile, "also print per-op forward/backward time per step");

  ExportOptions xopt;
  std::string xmodel, xformat, xout, xref;
  int64_t xref_len = 16;
  auto* xcmd = app.add_subcommand("export", "export a trained model: Hugging Face BitNetForCausalLM (hf, hf-offline), GGUF for bitnet.cpp, or the compact 2-bit file");
  xcmd->add_option("model", xmodel, "model file or run directory")->required();
  xcmd->add_option("--format", xformat, "hf | hf-offline | gguf | compact")->required()->check(CLI::IsMember({"hf", "hf-offline", "gguf", "compact"}));
  xcmd->add_option("--out", xout, "output directory (hf, hf-offline) or file (gguf)")->required();
  xcmd->add_option("--arch", xopt.arch, "GGUF architecture (default bitnet-b1.58)");
  xcmd->add_flag("--f16", xopt.f16, "GGUF: store the ternarized BitLinear weights as F16 (default F32)");
  xcmd->add_flag("--fp16-embeddings", xopt.fp16_embeddings, "compact: store embeddings and the LM head as fp16");
  xcmd->add_option("--context-length", xopt.context_length, "max_position_embeddings / context_length (default: training seq_len)");
  xcmd->add_option("--name", xopt.name, "GGUF general.name");
  xcmd->add_flag("--allow-untied-output", xopt.allow_untied_output, "GGUF: write an untied lm_head although bitnet.cpp ignores it");
  xcmd->add_option("--reference", xref, "also write reference tokens + logits (safetensors) for tools/check_hf.py");
  xcmd->add_option("--reference-tokens", xref_len, "length of the reference token sequence")->check(CLI::Range(1, 4096));

  GenerateArgs gargs;
  bool g_no_bos4 = false, g_no_bos = false, g_ignore_eos = false;
  auto* gen = app.add_subcommand("generate", "generate text from a model file (training or compact) with the integer inference engine");
  gen->add_option("model", gargs.model, "model file, run directory or compact file")->required()->check(CLI::ExistingPath);
  gen->add_option("--prompt", gargs.prompt, "prompt text")->required();
  gen->add_option("--max-tokens", gargs.max_tokens, "tokens to generate (default 64)")->check(CLI::Range(int64_t(0), int64_t(1) << 30));
  gen->add_option("--temperature", gargs.sampling.temperature, "sampling temperature; 0 = greedy (default 0.8)")->check(CLI::Range(0.0, 100.0));
  gen->add_option("--top-k", gargs.sampling.top_k, "sample from the k most likely tokens (0 = all)")->check(CLI::Range(int64_t(0), int64_t(1) << 30));
  gen->add_option("--top-p", gargs.sampling.top_p, "nucleus sampling mass (default 1 = off)")->check(CLI::Range(1e-9, 1.0));
  gen->add_option("--seed", gargs.sampling.seed, "sampling seed (default 0)");
  gen->add_option("--mode", gargs.mode, "activation mode (default: the model's saved mode)");
  gen->add_option("--tokenizer", gargs.tokenizer, "SentencePiece .model file (default: embedded, else beside the training data)");
  gen->add_option("--kv-bits", gargs.kv_bits, "low-bit attention: K/V bits (SPEC §4)")->check(CLI::Range(2, 8));
  gen->add_option("--qkv-bits", gargs.qkv_bits, "low-bit attention: Q/K/V bits")->check(CLI::Range(2, 8));
  gen->add_flag("--no-bos-4bit", g_no_bos4, "with 3-bit K/V, quantize position 0 to 3 bits too");
  gen->add_flag("--no-bos", g_no_bos, "do not prepend the BOS token to the prompt");
  gen->add_flag("--ignore-eos", g_ignore_eos, "keep generating past the EOS token");
  gen->add_flag("--quiet", gargs.quiet, "no header or speed line on stderr");

  EvalArgs eargs;
  bool e_no_bos4 = false;
  auto* evalc = app.add_subcommand("eval", "perplexity, sparsity, low-bit attention, multiple-choice scoring and logit dumps");
  evalc->add_option("model", eargs.model, "model file, run directory or compact file")->required()->check(CLI::ExistingPath);
  evalc->add_option("--data", eargs.data, "token shards, shard directories or raw text files");
  evalc->add_option("--seq", eargs.seq, "window length (default: the model's training seq_len)")->check(CLI::Range(int64_t(1), int64_t(1) << 20));
  evalc->add_option("--max-tokens", eargs.max_tokens, "evaluate at most this many tokens (default: all full windows)");
  evalc->add_option("--mode", eargs.mode, "activation mode (default: the model's saved mode)");
  evalc->add_option("--tokenizer", eargs.tokenizer, "SentencePiece .model file (default: embedded, else beside the training data)");
  evalc->add_option("--kv-bits", eargs.kv_bits, "evaluate this K/V precision only (default: the sweep kv4, qkv4, kv3, q4+kv3)")->check(CLI::Range(2, 8));
  evalc->add_option("--qkv-bits", eargs.qkv_bits, "evaluate this Q/K/V precision only")->check(CLI::Range(2, 8));
  evalc->add_flag("--no-bos-4bit", e_no_bos4, "with 3-bit K/V, quantize position 0 to 3 bits too");
  evalc->add_flag("--no-attn", eargs.no_attn, "skip the low-bit attention evaluation");
  evalc->add_option("--mc", eargs.mc, "multiple-choice JSONL: {\"context\", \"choices\", \"answer\"} per line")->check(CLI::ExistingFile);
  evalc->add_option("--dump-logits", eargs.dump_logits, "write the logits of --tokens to this .safetensors file");
  evalc->add_option("--tokens", eargs.tokens, "token ids for --dump-logits, e.g. \"1,2,3\"");

  app.add_subcommand("version", "print the version");

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  }
  try {
    if (app.got_subcommand("version")) {
      std::printf("bitnet 0.1.0 (fp32 GEMM: %s, kernels %s; int8 GEMM: %s)\n", autograd::kernels::gemm_backend(),
                  autograd::kernels::gemm_core(), quant::igemm_kernel());
      return 0;
    }
    if (app.got_subcommand(prep)) {
      if (config.empty()) return cmd_prepare(nullptr, inputs, out, vocab, val, brown, seed);
      const Config c = load_config(config, sets);
      return cmd_prepare(&c, inputs, out, vocab, val, brown, seed);
    }
    if (app.got_subcommand(xcmd)) {
      xopt.format = parse_export_format(xformat);
      return run_export(xmodel, xout, xopt, xref, xref_len);
    }
    if (app.got_subcommand(gen)) {
      gargs.keep_bos = !g_no_bos4;
      gargs.add_bos = !g_no_bos;
      gargs.stop_at_eos = !g_ignore_eos;
      return run_generate(gargs);
    }
    if (app.got_subcommand(evalc)) {
      eargs.keep_bos = !e_no_bos4;
      return run_eval(eargs);
    }
    Config c = load_config(config, sets);
    if (app.got_subcommand(info)) return cmd_info(c);
    if (app.got_subcommand(bench)) {  // under mpirun: every rank benchmarks, rank 0 reports
      std::unique_ptr<Comm> comm = make_comm(&argc, &argv);
      return on_every_rank(*comm, [&] { return run_bench(c, bopt, *comm); });
    }
    if (app.got_subcommand(sched)) return cmd_schedule(c, svg.empty() ? "schedule.svg" : svg, rows);
    if (app.got_subcommand(train)) {
      // Under mpirun every rank runs this; rank 0 logs, evaluates and writes files.
      std::unique_ptr<Comm> comm = make_comm(&argc, &argv);
      TrainOptions o;
      o.quiet = quiet;
      o.init_from = init_from;
      o.resume = resume;
      o.trace_samples = trace;
      const TrainResult r = on_every_rank(*comm, [&] { return trainers::train(c, o, *comm); });
      if (comm->rank() != 0) return 0;
      std::printf("done: %lld steps (%lld skipped), train loss %.4f -> %.4f, val loss %.4f (ppl %.2f)\n",
                  (long long)r.steps, (long long)r.skipped, r.first_loss, r.last_loss, r.val_loss, std::exp(r.val_loss));
      std::printf("model:   %s/model.safetensors\nmetrics: %s/metrics.jsonl\nplot:    %s/training.svg\n", r.run_dir.c_str(),
                  r.run_dir.c_str(), r.run_dir.c_str());
      return r.interrupted ? 130 : 0;
    }
  } catch (const ConfigError& e) {
    std::fprintf(stderr, "config error: %s\n", e.what());
    return 2;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
  return 0;
}
