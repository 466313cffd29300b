// Training loop implementation (see trainer.h).
#include "trainers/trainer.h"

#include <omp.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cmath>
#include <csignal>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "autograd/error.h"
#include "autograd/ops.h"
#include "data/loader.h"
#include "nn/model.h"
#include "optim/adamw.h"
#include "trainers/model_io.h"
#include "trainers/plot.h"

namespace trainers {
namespace fs = std::filesystem;
using autograd::Tape;
using autograd::TapeScope;
using autograd::Variable;

namespace {
std::atomic<bool> g_stop{false};
void on_sigint(int) { g_stop = true; }

std::string hms(double s) {
  char b[32];
  const long t = long(s);
  if (t >= 3600) std::snprintf(b, sizeof b, "%ldh%02ldm", t / 3600, (t / 60) % 60);
  else std::snprintf(b, sizeof b, "%ldm%02lds", t / 60, t % 60);
  return b;
}

struct EvalResult {
  double loss = NAN;
  nn::SparsityReport sparsity{};
};

// Mean loss over fixed validation batches: the same windows every time (seeded loader, cursor 0).
EvalResult evaluate(const nn::BitNetLM& model, const data::TokenDataset& val, const Config& cfg) {
  EvalResult r;
  if (val.size() <= cfg.data.seq_len) return r;
  autograd::NoGradGuard ng;
  data::Loader loader(val, cfg.data.seq_len, cfg.data.seed ^ 0xe7a1ULL);
  std::vector<int32_t> x, y;
  nn::SparsityProbe probe;
  double sum = 0;
  const int64_t nb = std::min<int64_t>(cfg.training.eval_batches, std::max<int64_t>(1, loader.windows() / cfg.data.micro_batch));
  for (int64_t b = 0; b < nb; ++b) {
    loader.next(cfg.data.micro_batch, 0, 1, x, y);
    sum += model.loss(x, y, cfg.data.micro_batch, cfg.data.seq_len, &probe).value()[0];
  }
  r.loss = sum / double(nb);
  r.sparsity = nn::sparsity_report(probe, cfg.model);
  return r;
}

// The SentencePiece model next to the training data (written by `bitnet prepare`), if any.
std::string find_tokenizer(const Config& cfg) {
  if (cfg.data.train.empty()) return {};
  fs::path p = cfg.data.train.front();
  fs::path dir = fs::is_directory(p) ? p : p.parent_path();
  const fs::path tok = dir / "tokenizer.model";
  if (!fs::exists(tok)) return {};
  std::ifstream f(tok, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>());
}

data::TokenDataset load_split(const std::vector<std::string>& paths, const Config& cfg, const char* what) {
  if (paths.empty()) return {};
  data::TokenDataset ds(paths);
  try {
    ds.check_vocab(uint64_t(cfg.model.vocab_size));
  } catch (const std::exception& e) {
    autograd::fail(cfg.path, ": data.", what, ": ", e.what());
  }
  return ds;
}
}  // namespace

TrainResult train(const Config& cfg_in, const TrainOptions& opt, Comm& comm) {
  Config cfg = cfg_in;
  cfg.resolve_steps(comm.world());
  if (cfg.training.threads > 0) omp_set_num_threads(cfg.training.threads);
  const bool lead = comm.rank() == 0, talk = lead && !opt.quiet;
  const bool tty = opt.progress_bar && isatty(fileno(stdout));

  if (cfg.data.train.empty()) autograd::fail(cfg.path, ": data.train: no training data configured");
  const data::TokenDataset train_ds = load_split(cfg.data.train, cfg, "train");
  const data::TokenDataset val_ds = load_split(cfg.data.val, cfg, "val");
  data::Loader loader(train_ds, cfg.data.seq_len, cfg.data.seed);

  nn::BitNetLM model(cfg.model, cfg.training.seed);
  auto& P = model.params();
  optim::AdamW adamw(P, cfg.adamw);
  if (!opt.init_from.empty()) {
    const bool moments = load_model(opt.init_from, model, &adamw);
    if (talk) std::printf("initialised from %s (%s)\n", opt.init_from.c_str(),
                          moments ? "parameters and optimizer moments" : "parameters only");
  }

  TrainResult res;
  res.run_dir = cfg.training.out_dir;
  if (lead) {
    fs::create_directories(res.run_dir);
    write_file(res.run_dir + "/config.yaml", cfg.resolved_yaml);
  }
  std::ofstream metrics;
  if (lead) metrics.open(res.run_dir + "/metrics.jsonl", std::ios::trunc);

  const int64_t T = cfg.training.steps, B = cfg.data.micro_batch, S = cfg.data.seq_len;
  const int64_t accum = cfg.data.grad_accum, tok_step = cfg.tokens_per_step(comm.world());
  if (talk) {
    std::printf("model: %lld params (%lld non-embedding), d_model %lld, %lld layers\n",
                (long long)P.numel(), (long long)cfg.model.non_embedding_params(), (long long)cfg.model.d_model,
                (long long)cfg.model.n_layers);
    std::printf("data: %lld train tokens, %lld val tokens; %lld tokens/step; %lld steps (%.1fM tokens)\n",
                (long long)train_ds.size(), (long long)val_ds.size(), (long long)tok_step, (long long)T,
                double(T * tok_step) / 1e6);
    for (size_t i = 0; i < cfg.stages.size(); ++i)
      std::printf("stage %zu: %s from step %lld\n", i + 1, nn::to_string(cfg.stages[i].mode).c_str(),
                  (long long)cfg.stage_start(i));
    std::printf("schedule: LR/WD switch at step %lld; run directory %s\n", (long long)cfg.schedule.switch_step,
                res.run_dir.c_str());
  }

  auto prev_handler = std::signal(SIGINT, on_sigint);
  g_stop = false;
  std::vector<int32_t> x, y;
  Tape tape;
  std::vector<std::pair<double, double>> train_pts, val_pts, lr_pts, wd_pts;
  double window_loss = 0;
  int64_t window_n = 0, bad_in_row = 0;
  const auto t0 = std::chrono::steady_clock::now();
  auto log_eval = [&](int64_t step, const EvalResult& ev) {
    if (!lead || !std::isfinite(ev.loss)) return;
    val_pts.emplace_back(double(step), ev.loss);
    const auto& s = ev.sparsity;
    nlohmann::json j = {{"step", step},
                        {"val_loss", ev.loss},
                        {"val_ppl", std::exp(ev.loss)},
                        {"mode", nn::to_string(model.mode())},
                        {"sparsity", {{"qkv", s.qkv}, {"out", s.out}, {"up", s.up}, {"gate", s.gate}, {"down", s.down}, {"overall", s.overall}}}};
    metrics << j.dump() << '\n' << std::flush;
    if (talk)
      std::printf("%seval step %lld: val loss %.4f, ppl %.2f, sparsity overall %.1f%% (qkv %.1f out %.1f up %.1f gate %.1f down %.1f)\n",
                  tty ? "\r\033[K" : "", (long long)step, ev.loss, std::exp(ev.loss), 100 * s.overall, 100 * s.qkv,
                  100 * s.out, 100 * s.up, 100 * s.gate, 100 * s.down);
  };

  size_t stage = 0;
  int64_t step = 0;
  for (; step < T && !g_stop; ++step) {
    while (stage + 1 < cfg.stages.size() && step >= cfg.stage_start(stage + 1)) {
      ++stage;
      if (cfg.training.eval_every > 0) {  // validation loss reached by the previous stage
        model.set_mode(cfg.stages[stage - 1].mode);
        const EvalResult ev = evaluate(model, val_ds, cfg);
        res.val_loss_at_stage2 = ev.loss;
        log_eval(step, ev);
      }
      if (talk) std::printf("%sstage switch at step %lld: %s -> %s (optimizer state kept)\n", tty ? "\r\033[K" : "",
                            (long long)step, nn::to_string(cfg.stages[stage - 1].mode).c_str(),
                            nn::to_string(cfg.stages[stage].mode).c_str());
    }
    model.set_mode(cfg.stages[stage].mode);
    const double lr = optim::lr_at(cfg.schedule, step), wd = optim::wd_at(cfg.schedule, step);
    P.zero_grad();
    double loss_sum = 0;
    for (int64_t a = 0; a < accum; ++a) {
      loader.next(B, comm.rank(), comm.world(), x, y);
      TapeScope scope(tape);
      Variable loss = model.loss(x, y, B, S);
      loss_sum += loss.value()[0];
      tape.backward(loss, autograd::Tensor::full(loss.shape(), 1.0f / float(accum)));
    }
    comm.allreduce_sum(P.grads().data(), P.grads().numel());
    if (comm.world() > 1) {
      const float inv = 1.0f / float(comm.world());
      float* g = P.grads().data();
      for (int64_t i = 0; i < P.grads().numel(); ++i) g[i] *= inv;
    }
    const double loss_v = loss_sum / double(accum);
    const double gnorm = optim::clip_grad_norm(P, cfg.grad_clip);
    if (!std::isfinite(loss_v) || !std::isfinite(gnorm)) {
      ++res.skipped;
      if (++bad_in_row >= cfg.training.max_bad_steps)
        autograd::fail("training aborted at step ", step, ": ", bad_in_row,
                       " consecutive steps with non-finite loss or gradients (training.max_bad_steps = ",
                       cfg.training.max_bad_steps, "); last loss ", loss_v, ", grad norm ", gnorm);
      if (talk) std::printf("%sstep %lld: non-finite loss/gradient, step skipped\n", tty ? "\r\033[K" : "", (long long)step);
      continue;
    }
    bad_in_row = 0;
    adamw.step(lr, wd);
    window_loss += loss_v;
    ++window_n;
    if (lead) {
      const double el = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      const double tps = double((step + 1) * tok_step) / el;
      metrics << nlohmann::json({{"step", step}, {"loss", loss_v}, {"lr", lr}, {"wd", wd}, {"grad_norm", gnorm},
                                 {"mode", nn::to_string(model.mode())}, {"tokens", (step + 1) * tok_step},
                                 {"tok_s", tps}, {"time_s", el}})
                     .dump()
              << '\n';
      train_pts.emplace_back(double(step), loss_v);
      lr_pts.emplace_back(double(step), lr);
      wd_pts.emplace_back(double(step), wd);
      const bool log_now = (step + 1) % cfg.training.log_every == 0 || step + 1 == T;
      if (log_now) {
        const double mean = window_loss / double(window_n);
        if (res.first_loss == 0) res.first_loss = mean;
        res.last_loss = mean;
        window_loss = 0, window_n = 0;
        const double eta = el / double(step + 1) * double(T - step - 1);
        if (talk && tty) {
          const int w = 24, fill = int(double(w) * double(step + 1) / double(T));
          std::printf("\r\033[K[%s%s] %lld/%lld loss %.4f lr %.2e %s %.0f tok/s ETA %s", std::string(size_t(fill), '#').c_str(),
                      std::string(size_t(w - fill), '.').c_str(), (long long)step + 1, (long long)T, mean, lr,
                      nn::to_string(model.mode()).c_str(), tps, hms(eta).c_str());
          std::fflush(stdout);
        } else if (talk) {
          std::printf("step %lld/%lld loss %.4f lr %.2e wd %.3f %s gnorm %.3f %.0f tok/s ETA %s\n", (long long)step + 1,
                      (long long)T, mean, lr, wd, nn::to_string(model.mode()).c_str(), gnorm, tps, hms(eta).c_str());
          std::fflush(stdout);
        }
      }
    }
    if (cfg.training.eval_every > 0 && (step + 1) % cfg.training.eval_every == 0 && step + 1 < T)
      log_eval(step + 1, evaluate(model, val_ds, cfg));
  }
  std::signal(SIGINT, prev_handler);
  res.steps = step;
  res.interrupted = g_stop;
  if (talk && tty) std::printf("\n");
  if (talk && res.interrupted) std::printf("interrupted: stopped cleanly after step %lld\n", (long long)step);

  const EvalResult fin = evaluate(model, val_ds, cfg);
  res.val_loss = fin.loss;
  log_eval(step, fin);
  if (lead) {
    metrics.flush();
    save_model(res.run_dir + "/model.safetensors", model, &adamw,
               {{"config", cfg.resolved_yaml}, {"step", std::to_string(step)}, {"mode", nn::to_string(model.mode())}},
               find_tokenizer(cfg));
    std::vector<Marker> marks;
    for (size_t i = 1; i < cfg.stages.size(); ++i)
      marks.push_back({double(cfg.stage_start(i)), "-> " + nn::to_string(cfg.stages[i].mode)});
    if (cfg.schedule.switch_step > 0 && cfg.schedule.switch_step < T)
      marks.push_back({double(cfg.schedule.switch_step), "LR/WD switch"});
    Panel loss_p{"Loss", "cross-entropy", {{"train", "#1f77b4", train_pts}, {"validation", "#d62728", val_pts, true}}};
    Panel lr_p{"Learning rate", "lr", {{"lr", "#2ca02c", lr_pts}}};
    Panel wd_p{"Weight decay", "wd", {{"wd", "#9467bd", wd_pts}}};
    write_file(res.run_dir + "/training.svg", render_svg({loss_p, lr_p, wd_p}, marks, "step"));
  }
  return res;
}

}  // namespace trainers
