// `bitnet info CONFIG`: parameter count, memory estimate and run length of a config.
#include <cstdio>
#include <string>

#include "trainers/cli/command.h"
#include "trainers/config/config.h"

namespace trainers::cli {
namespace {
using config::Config;

std::string human(double v) {
  char b[32];
  if (v >= 1e9)
    std::snprintf(b, sizeof b, "%.2fB", v / 1e9);
  else if (v >= 1e6)
    std::snprintf(b, sizeof b, "%.1fM", v / 1e6);
  else if (v >= 1e3)
    std::snprintf(b, sizeof b, "%.1fK", v / 1e3);
  else
    std::snprintf(b, sizeof b, "%.0f", v);
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
  // FLOPs per token for training: 6 * (non-embedding + LM head) params + attention 6 * L * T * d
  // (causal, fwd+bwd)
  const double flops_tok = 6.0 * (NE + double(m.vocab_size * m.d_model)) +
                           6.0 * double(m.n_layers * c.data.seq_len * m.d_model);
  // Activation memory estimate per token (saved tensors of one layer ~ 34 d + 5 heads*T + 10 ffn
  // floats).
  const double act_tok = double(m.n_layers) *
                             (34.0 * double(m.d_model) + 5.0 * double(m.n_heads * c.data.seq_len) +
                              10.0 * double(m.ffn_dim)) *
                             4.0 +
                         8.0 * double(m.vocab_size);
  std::printf("config %s\n", c.path.c_str());
  std::printf(
      "  shape: d_model %lld, ffn %lld, heads %lld (kv %lld, head_dim %lld), layers %lld, vocab "
      "%lld%s\n",
      (long long)m.d_model, (long long)m.ffn_dim, (long long)m.n_heads, (long long)m.kv_heads(),
      (long long)m.head_dim(), (long long)m.n_layers, (long long)m.vocab_size,
      m.tie_embeddings ? ", tied" : "");
  std::printf("  parameters: %s total, %s non-embedding (4d^2+3d*ffn per layer: %s)\n",
              human(P).c_str(), human(NE).c_str(),
              human(double(m.n_layers) *
                    (4.0 * double(m.d_model * m.d_model) + 3.0 * double(m.d_model * m.ffn_dim)))
                  .c_str());
  std::printf(
      "  memory: weights %s, +grads %s, +AdamW %s = %s; activations ~%s per micro-batch of %lld "
      "tokens\n",
      gib(4 * P).c_str(), gib(4 * P).c_str(), gib(8 * P).c_str(), gib(16 * P).c_str(),
      gib(act_tok * double(c.data.micro_batch * c.data.seq_len)).c_str(),
      (long long)(c.data.micro_batch * c.data.seq_len));
  std::printf(
      "  training: %s tokens/step (micro %lld x accum %lld x seq %lld), %lld steps, %s tokens; "
      "~%.1f GFLOP/step\n",
      human(tokens).c_str(), (long long)c.data.micro_batch, (long long)c.data.grad_accum,
      (long long)c.data.seq_len, (long long)c.training.steps,
      human(double(c.training.steps) * tokens).c_str(), flops_tok * tokens / 1e9);
  for (size_t i = 0; i < c.stages.size(); ++i)
    std::printf("  stage %zu: %s from step %lld\n", i + 1, nn::to_string(c.stages[i].mode).c_str(),
                (long long)c.stage_start(i));
  return 0;
}
}  // namespace

Command add_info(CLI::App& app) {
  auto a = std::make_shared<ConfigArgs>();
  CLI::App* info = app.add_subcommand(
      "info", "print parameter count, memory estimate and run length of a config");
  add_config_args(info, *a, "override a config key: key.path=value");
  return {info, [a] { return cmd_info(config::load_config(a->file, a->sets)); }};
}

}  // namespace trainers::cli
