// Training loop implementation (see trainer.h): a Run object whose loop fits on a screen.
#include "trainers/train/trainer.h"

#include <omp.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <climits>
#include <cmath>
#include <csignal>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <sstream>

#include "autograd/error.h"
#include "autograd/hash.h"
#include "autograd/kernels.h"
#include "autograd/ops.h"
#include "data/loader.h"
#include "nn/model.h"
#include "optim/adamw.h"
#include "optim/dispatch.h"
#include "trainers/formats/checkpoint.h"
#include "trainers/formats/hf_import.h"
#include "trainers/formats/model_io.h"
#include "trainers/train/data_parallel.h"
#include "trainers/train/plot.h"

namespace trainers::train {
namespace fs = std::filesystem;
using autograd::Tape;
using autograd::TapeScope;
using autograd::Variable;
using config::Config;
using config::parse_config;
using formats::checkpoint_path;
using formats::CheckpointInfo;
using formats::current_numerics;
using formats::data_fingerprint;
using formats::list_checkpoints;
using formats::load_checkpoint;
using formats::load_model;
using formats::Numerics;
using formats::numerics_mismatches;
using formats::resolve_checkpoint;
using formats::rotate_checkpoints;
using formats::RunFacts;
using formats::save_checkpoint;
using formats::save_model;
using formats::TrainState;

namespace {
std::atomic<bool> g_stop{false};
void on_sigint(int) { g_stop = true; }

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
  const int64_t nb = std::min<int64_t>(
      cfg.training.eval_batches, std::max<int64_t>(1, loader.windows() / cfg.data.micro_batch));
  for (int64_t b = 0; b < nb; ++b) {
    loader.next(cfg.data.micro_batch, 0, 1, x, y);
    sum += model.loss(x, y, cfg.data.micro_batch, cfg.data.seq_len, &probe).value().item();
  }
  r.loss = sum / double(nb);
  r.sparsity = nn::sparsity_report(probe, cfg.model);
  return r;
}

// The SentencePiece model next to the training data (written by `bitnet prepare`), if any.
std::string find_tokenizer(const Config& cfg) {
  if (cfg.data.train.empty()) return {};
  const std::string tok = data::tokenizer_beside(cfg.data.train.front());
  if (tok.empty()) return {};
  std::ifstream f(tok, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>());
}

data::TokenDataset load_split(const std::vector<std::string>& paths, const Config& cfg,
                              const char* what) {
  if (paths.empty()) return {};
  data::TokenDataset ds(paths);
  try {
    ds.check_vocab(uint64_t(cfg.model.vocab_size));
  } catch (const std::exception& e) {
    autograd::fail(cfg.path, ": data.", what, ": ", e.what());
  }
  return ds;
}

Config resolved(const Config& in, const Comm& comm) {
  Config c = in;
  c.resolve_steps(comm.world());
  if (c.data.train.empty()) autograd::fail(c.path, ": data.train: no training data configured");
  return c;
}

// Index of the stage in force at `step`.
size_t stage_of(const Config& cfg, int64_t step) {
  size_t i = 0;
  while (i + 1 < cfg.stages.size() && step >= cfg.stage_start(i + 1)) ++i;
  return i;
}

// For the max_bad_steps abort: "; first non-finite <value|gradient>: NAME at index I", or "".
std::string nonfinite_culprit(const nn::ParameterSet& P) {
  for (const char* which : {"value", "gradient"})
    for (const auto& e : P.entries()) {
      const float* p = (which[0] == 'v' ? P.values().data() : P.grads().data()) + e.offset;
      for (int64_t i = 0; i < e.numel; ++i)
        if (!std::isfinite(p[i]))
          return std::string("; first non-finite ") + which + ": " + e.name + " at index " +
                 std::to_string(i) + " (" + std::to_string(p[i]) + ")";
    }
  return "";
}

// One training run: everything the loop reads and writes, and the pieces the loop is made of.
class Run {
 public:
  Run(const Config& cfg, const TrainOptions& opt, Comm& comm)
      : prev_threads_(omp_get_max_threads()),
        cfg_(resolved(cfg, comm)),
        opt_(opt),
        comm_(comm),
        lead_(comm.rank() == 0),
        talk_(lead_ && !opt.quiet),
        tty_(opt.progress_bar && isatty(fileno(stdout))),
        train_ds_(load_split(cfg_.data.train, cfg_, "train")),
        val_ds_(load_split(cfg_.data.val, cfg_, "val")),
        loader_(train_ds_, cfg_.data.seq_len, cfg_.data.seed),
        model_(cfg_.model, cfg_.training.seed),
        dp_(model_, comm, cfg_.training.zero1),
        adamw_(model_.params(), cfg_.adamw, dp_.shard_begin(), dp_.shard_end()) {
    if (cfg_.training.threads > 0) omp_set_num_threads(cfg_.training.threads);  // until ~Run
    facts_ = {comm.world(), train_ds_.size(), data_fingerprint(train_ds_)};
    tokenizer_ = find_tokenizer(cfg_);
    at_ = config::resolve_placement(cfg_, comm.world());  // first: a refusal changes nothing
    res_.run_dir = cfg_.training.out_dir;
    metrics_path_ = res_.run_dir + "/metrics.jsonl";
    if (!opt.resume.empty() && !opt.init_from.empty())
      autograd::fail(
          "--resume and --init-from exclude each other (a resumed run already has its parameters)");
    if (!opt.init_from.empty() && lead_) {  // rank 0 reads; sync_ranks() shares
      if (formats::is_hf_dir(opt.init_from)) {
        const formats::HfImportResult hf = formats::import_hf(opt.init_from, model_);
        hf_source_ = fs::absolute(opt.init_from).lexically_normal().string();
        if (talk_) {
          std::printf(
              "initialised from Hugging Face %s (%zu files; parameters only, fresh "
              "optimizer state)\n",
              opt.init_from.c_str(), hf.files.size());
          for (const auto& n : hf.notes) std::printf("note: %s\n", n.c_str());
        }
      } else {
        const bool moments = load_model(opt.init_from, model_, loading_optimizer());
        if (talk_)
          std::printf("initialised from %s (%s)\n", opt.init_from.c_str(),
                      moments ? "parameters and optimizer moments" : "parameters only");
      }
    }
    if (lead_) fs::create_directories(res_.run_dir);
    if (!opt.resume.empty()) resume(opt.resume);  // first: a refused resume changes nothing
    if (comm.world() > 1) sync_ranks();
    place_on_device();
    deferred_ =
        comm.world() == 1 && (opt.deferred > 0 || (opt.deferred < 0 && !at_.device.is_cpu()));
    if (!opt.trace_samples.empty()) open_trace(opt.trace_samples);
    if (lead_) {
      write_file(res_.run_dir + "/config.yaml", cfg_.resolved_yaml);
      write_run_info();
      metrics_.open(metrics_path_, opt.resume.empty() ? std::ios::trunc : std::ios::app);
      if (!metrics_) autograd::fail(metrics_path_, ": cannot open for writing");
    }
  }

  ~Run() {
    if (trace_) std::fclose(trace_);
    omp_set_num_threads(prev_threads_);
    autograd::set_gemm_precision(prev_precision_);
  }

  // training.device / training.precision: parameters and moments move to the device once, after
  // loading (files are read and written on the host); the GEMM precision is set for the run.
  void place_on_device() {
    autograd::set_gemm_precision(at_.precision);
    if (!at_.device.is_cpu()) {
      model_.params().to(at_.device);
      adamw_.to(at_.device);
    }
    if (talk_) std::printf("device: %s\n", at_.str().c_str());
  }

  // Runs f with the parameters and moments on the host (checkpoints, model files, diagnostics),
  // then puts them back on the run's device; the gradients are not kept.
  template <class F>
  void on_host(F&& f) {
    if (at_.device.is_cpu()) return f();
    model_.params().to(autograd::Device::cpu());
    adamw_.to(autograd::Device::cpu());
    try {
      f();
    } catch (...) {
      model_.params().to(at_.device);
      adamw_.to(at_.device);
      throw;
    }
    model_.params().to(at_.device);
    adamw_.to(at_.device);
  }

  // run.json: the arithmetic of this session (docs/TRAINING.md) and, on a resume, what the
  // checkpoint recorded of the session that wrote it.
  void write_run_info() const {
    auto facts = [](const Numerics& n, int64_t threads) {
      return nlohmann::ordered_json{{"bitlinear_route", n.bitlinear_route},
                                    {"gemm_backend", n.gemm_backend},
                                    {"gemm_core", n.gemm_core},
                                    {"threads", threads}};
    };
    nlohmann::ordered_json j = facts(current_numerics(model_), omp_get_max_threads());
    j["world"] = comm_.world();
    j["device"] = at_.device.str();
    j["precision"] = autograd::to_string(at_.precision);
    j["resumed_from"] = nullptr;
    if (resumed_) {  // (route and GEMM null when the checkpoint predates them)
      nlohmann::ordered_json r = {{"checkpoint", resumed_path_}, {"step", resumed_->step}};
      r.update(facts(resumed_->numerics, resumed_->threads));
      for (const char* k : {"bitlinear_route", "gemm_backend", "gemm_core"})
        if (r[k] == "") r[k] = nullptr;
      r["world"] = resumed_->world;
      j["resumed_from"] = r;
    }
    write_file(res_.run_dir + "/run.json", j.dump(2) + "\n");
  }

  // Multi-rank start: every rank must run the same config on the same data (checked by hashes),
  // then rank 0's parameters and optimizer state are broadcast and verified by a checksum.
  void sync_ranks() {
    const uint64_t mine = autograd::fnv1a64(cfg_.resolved_yaml.data(), cfg_.resolved_yaml.size()) ^
                          (facts_.train_fingerprint * 31) ^ uint64_t(facts_.train_tokens);
    const std::vector<uint64_t> all = comm_.allgather_u64(mine);
    std::string bad;
    for (size_t r = 1; r < all.size(); ++r)
      if (all[r] != all[0]) bad += (bad.empty() ? "" : ", ") + std::to_string(r);
    if (!bad.empty())
      autograd::fail("ranks ", bad,
                     " were started with a different config or different training data than rank 0 "
                     "(every rank must get the same config file, --set overrides and data)");
    auto& P = model_.params();
    share_loop_state();
    comm_.broadcast(P.values().data(), P.numel(), 0);
    share_moments();
    const uint64_t sum = autograd::fnv1a64(P.values().data(), size_t(P.numel()) * sizeof(float));
    const std::vector<uint64_t> sums = comm_.allgather_u64(sum);
    for (size_t r = 1; r < sums.size(); ++r)
      if (sums[r] != sums[0])
        autograd::fail("rank ", r, ": parameter checksum differs from rank 0 after the broadcast");
    if (talk_)
      std::printf(
          "%d ranks: config and data agree; parameters broadcast from rank 0 (checksum %016llx)\n",
          comm_.world(), (unsigned long long)sums[0]);
    report_optimizer_memory();
  }

  // "optimizer state per rank: ... bytes" (AdamW moments actually allocated on each rank).
  void report_optimizer_memory() {
    const std::vector<uint64_t> bytes = comm_.allgather_u64(uint64_t(adamw_.state_bytes()));
    if (!talk_) return;
    std::string list;
    for (size_t r = 0; r < bytes.size(); ++r) list += (r ? ", " : "") + std::to_string(bytes[r]);
    std::printf("optimizer state per rank: %s bytes of AdamW moments (%s; unsharded %lld bytes)\n",
                list.c_str(),
                dp_.zero1() ? "ZeRO-1: each rank holds its slice" : "every rank holds all",
                (long long)(2 * model_.params().numel() * int64_t(sizeof(float))));
  }

  // Only rank 0 reads a checkpoint or --init-from file (the other ranks need no access to it): the
  // loop state it restored goes to every rank here, the tensors in sync_ranks().
  void share_loop_state() {
    uint64_t st[6] = {uint64_t(start_step_), loader_.cursor(),
                      uint64_t(stage_),      uint64_t(res_.skipped),
                      uint64_t(bad_in_row_), uint64_t(full_ ? full_->steps() : adamw_.steps())};
    comm_.broadcast_u64(st, 6, 0);
    start_step_ = int64_t(st[0]);
    loader_.set_cursor(st[1]);
    stage_ = size_t(st[2]);
    model_.set_mode(cfg_.stages[stage_].mode);
    res_.skipped = int64_t(st[3]);
    bad_in_row_ = int64_t(st[4]);
    adamw_.set_steps(int64_t(st[5]));
  }

  // The optimizer that loading a model file or checkpoint on rank 0 fills: adamw_, or under ZeRO-1
  // a whole AdamW (scattered by share_moments).
  optim::AdamW* loading_optimizer() {
    if (!adamw_.sharded()) return &adamw_;
    if (!full_) full_ = std::make_unique<optim::AdamW>(model_.params(), cfg_.adamw);
    return full_.get();
  }

  // Rank 0's moments to every rank: broadcast, or under ZeRO-1 scattered slice by slice from what
  // rank 0 loaded (a fresh start has zero moments everywhere: nothing to send).
  void share_moments() {
    const int64_t n = model_.params().numel();
    if (!dp_.zero1()) {
      comm_.broadcast(adamw_.exp_avg().data(), n, 0);
      comm_.broadcast(adamw_.exp_avg_sq().data(), n, 0);
      return;
    }
    if (opt_.resume.empty() && opt_.init_from.empty()) return;
    comm_.scatter(full_ ? full_->exp_avg().data() : nullptr, adamw_.exp_avg().data(), dp_.counts(),
                  0);
    comm_.scatter(full_ ? full_->exp_avg_sq().data() : nullptr, adamw_.exp_avg_sq().data(),
                  dp_.counts(), 0);
    full_.reset();
  }

  // The whole optimizer state on rank 0 (nullptr on the others): adamw_, or under ZeRO-1 every
  // rank's slice gathered into full_. Collective under ZeRO-1: every rank calls it.
  const optim::AdamW* gathered_optimizer() {
    if (!dp_.zero1()) return lead_ ? &adamw_ : nullptr;
    if (lead_ && !full_) full_ = std::make_unique<optim::AdamW>(model_.params(), cfg_.adamw);
    comm_.gather(adamw_.exp_avg().data(), lead_ ? full_->exp_avg().data() : nullptr, dp_.counts(),
                 0);
    comm_.gather(adamw_.exp_avg_sq().data(), lead_ ? full_->exp_avg_sq().data() : nullptr,
                 dp_.counts(), 0);
    if (lead_) full_->set_steps(adamw_.steps());
    return full_.get();
  }

  // --trace-samples PREFIX: each rank appends "sample window" for every sample it trains on to
  // PREFIX.rank<R> (global sample index of the loader's cursor, and its window in the data).
  void open_trace(const std::string& prefix) {
    const std::string path = prefix + ".rank" + std::to_string(comm_.rank());
    trace_ = std::fopen(path.c_str(), "a");
    if (!trace_) autograd::fail("--trace-samples: cannot open ", path, " for appending");
  }
  void trace_samples() {
    if (!trace_) return;
    const int64_t B = cfg_.data.micro_batch;
    const uint64_t first =
        loader_.cursor() - uint64_t(B * comm_.world()) + uint64_t(B * comm_.rank());
    for (int64_t r = 0; r < B; ++r)
      std::fprintf(trace_, "%llu %lld\n", (unsigned long long)(first + uint64_t(r)),
                   (long long)loader_.window_of(first + uint64_t(r)));
    std::fflush(trace_);
  }
  Run(const Run&) = delete;
  Run& operator=(const Run&) = delete;

  TrainResult go() {
    print_plan();
    const int64_t T = cfg_.training.steps, every = cfg_.checkpoint.every,
                  eval_every = cfg_.training.eval_every;
    auto prev_handler = std::signal(SIGINT, on_sigint);
    g_stop = false;
    t0_ = std::chrono::steady_clock::now();
    int64_t step = start_step_;
    for (; step < T && !g_stop && (opt_.stop_after <= 0 || step < opt_.stop_after); ++step) {
      enter_stage(step);
      if (opt_.test_before_step) opt_.test_before_step(step, model_.params());
      const double lr = optim::lr_at(cfg_.schedule, step), wd = optim::wd_at(cfg_.schedule, step);
      if (deferred_) {
        queue_step(step, lr, wd);
        if (!flush_due(step)) continue;
        if (!flush_steps()) continue;  // the step just queued was skipped
      } else if (!immediate_step(step, lr, wd)) {
        continue;
      }
      if (eval_every > 0 && (step + 1) % eval_every == 0 && step + 1 < T)
        log_eval(step + 1, evaluate(model_, val_ds_, cfg_));
      if (every > 0 && (step + 1) % every == 0 && step + 1 < T) periodic_checkpoint(step + 1);
    }
    std::signal(SIGINT, prev_handler);
    flush_steps();
    finish(step);
    return res_;
  }

 private:
  // One step read back at once: false when it was skipped.
  bool immediate_step(int64_t step, double lr, double wd) {
    const auto [loss, gnorm] = forward_backward();
    if (!std::isfinite(loss) || !std::isfinite(gnorm)) {
      skip_step(step, loss, gnorm);
      return false;
    }
    bad_in_row_ = 0;
    adamw_.step(lr, wd);
    dp_.after_step();  // ZeRO-1: all-gather the updated parameter slices
    log_step(step, loss, lr, wd, gnorm);
    return true;
  }

  // Deferred steps (TrainOptions::deferred): forward/backward, the norm and clipping, the skip
  // verdict and the AdamW update are all queued on the device; the step's StepRecord lands in
  // records_[pending_.size()], read back by flush_steps.
  struct PendingStep {
    int64_t step;
    double lr, wd, time_s;
    nn::ActMode mode;
  };
  void queue_step(int64_t step, double lr, double wd) {
    auto& P = model_.params();
    if (!records_.defined()) {
      records_ =
          autograd::Tensor::empty(autograd::Shape{kMaxPending * int64_t(sizeof(optim::StepRecord))},
                                  autograd::DType::U8, at_.device);
      norm8_ = autograd::Tensor::empty(autograd::Shape{8}, autograd::DType::U8, at_.device);
    }
    micro_batches();
    if (opt_.test_after_backward) opt_.test_after_backward(P);
    optim::clip_grad_norm_queued(P, cfg_.grad_clip, norm8_);
    const int64_t k = int64_t(pending_.size());
    const int64_t rb = int64_t(sizeof(optim::StepRecord));
    adamw_.step_gated(lr, wd, losses_, norm8_, records_.slice0(k * rb, (k + 1) * rb));
    pending_.push_back({step, lr, wd, elapsed(), model_.mode()});
  }
  // A read-back is due after this step: a logged step, the last one, an evaluation or checkpoint
  // after it, a stage switch before the next one, a stop, or the record buffer full.
  bool flush_due(int64_t step) const {
    const int64_t T = cfg_.training.steps, n = step + 1;
    const int64_t ev = cfg_.training.eval_every, ck = cfg_.checkpoint.every;
    return n % cfg_.training.log_every == 0 || n == T || (ev > 0 && n % ev == 0) ||
           (ck > 0 && n % ck == 0) || int64_t(pending_.size()) == kMaxPending ||
           (stage_ + 1 < cfg_.stages.size() && n >= cfg_.stage_start(stage_ + 1)) || g_stop ||
           (opt_.stop_after > 0 && n >= opt_.stop_after);
  }
  // Reads the pending steps' records (one copy) and logs or skips each in order, as
  // immediate_step would have; returns whether the last one was applied (true when none).
  bool flush_steps() {
    if (pending_.empty()) return true;
    const int64_t n = int64_t(pending_.size()), rb = int64_t(sizeof(optim::StepRecord));
    const autograd::Tensor host = records_.slice0(0, n * rb).to(autograd::Device::cpu());
    std::vector<optim::StepRecord> recs(static_cast<size_t>(n));
    std::memcpy(recs.data(), host.raw(), size_t(n * rb));
    const std::vector<PendingStep> steps = std::move(pending_);
    pending_.clear();
    const double now = elapsed();
    bool ok = true;
    for (int64_t i = 0; i < n; ++i) {
      const PendingStep& p = steps[size_t(i)];
      const optim::StepRecord& r = recs[size_t(i)];
      ok = r.ok != 0;
      if (!ok) {
        skip_step(p.step, r.loss, r.norm);
        continue;
      }
      bad_in_row_ = 0;
      log_step(p.step, r.loss, p.lr, p.wd, r.norm, i + 1 == n ? now : p.time_s, p.mode);
    }
    adamw_.steps_read(recs.back().t);
    return ok;
  }

  double elapsed() const {
    return elapsed_before_ +
           std::chrono::duration<double>(std::chrono::steady_clock::now() - t0_).count();
  }
  const char* clear() const { return tty_ ? "\r\033[K" : ""; }

  void print_plan() const {
    if (!talk_) return;
    const auto& P = model_.params();
    std::printf("model: %lld params (%lld non-embedding), d_model %lld, %lld layers\n",
                (long long)P.numel(), (long long)cfg_.model.non_embedding_params(),
                (long long)cfg_.model.d_model, (long long)cfg_.model.n_layers);
    const int64_t T = cfg_.training.steps, tok_step = cfg_.tokens_per_step(comm_.world());
    std::printf(
        "data: %lld train tokens, %lld val tokens; %lld tokens/step; %lld steps (%.1fM tokens)\n",
        (long long)train_ds_.size(), (long long)val_ds_.size(), (long long)tok_step, (long long)T,
        double(T * tok_step) / 1e6);
    for (size_t i = 0; i < cfg_.stages.size(); ++i)
      std::printf("stage %zu: %s from step %lld\n", i + 1,
                  nn::to_string(cfg_.stages[i].mode).c_str(), (long long)cfg_.stage_start(i));
    std::printf("schedule: LR/WD switch at step %lld; run directory %s\n",
                (long long)cfg_.schedule.switch_step, res_.run_dir.c_str());
  }

  // Stage switches due at `step` (each evaluated with the stage that ends), then the step's mode.
  void enter_stage(int64_t step) {
    while (stage_ + 1 < cfg_.stages.size() && step >= cfg_.stage_start(stage_ + 1)) {
      ++stage_;
      if (cfg_.training.eval_every > 0) {  // validation loss reached by the previous stage
        model_.set_mode(cfg_.stages[stage_ - 1].mode);
        const EvalResult ev = evaluate(model_, val_ds_, cfg_);
        res_.val_loss_at_stage2 = ev.loss;
        log_eval(step, ev);
      }
      if (talk_)
        std::printf("%sstage switch at step %lld: %s -> %s (optimizer state kept)\n", clear(),
                    (long long)step, nn::to_string(cfg_.stages[stage_ - 1].mode).c_str(),
                    nn::to_string(cfg_.stages[stage_].mode).c_str());
    }
    model_.set_mode(cfg_.stages[stage_].mode);
  }

  // grad_accum micro-batches into zeroed gradients: forward, backward seeded 1/accum; micro-batch
  // a's loss goes to losses_[a] on the device (nothing is read back here).
  void micro_batches() {
    const int64_t B = cfg_.data.micro_batch, S = cfg_.data.seq_len, accum = cfg_.data.grad_accum;
    if (!losses_.defined())
      losses_ = autograd::Tensor::empty(autograd::Shape{accum}, autograd::DType::F32, at_.device);
    model_.params().zero_grad();
    for (int64_t a = 0; a < accum; ++a) {
      loader_.next(B, comm_.rank(), comm_.world(), x_, y_);
      TapeScope scope(tape_);
      Variable loss = model_.loss(x_, y_, B, S);
      losses_.slice0(a, a + 1).copy_from(loss.value());  // queued on the device
      if (a + 1 == accum)
        dp_.before_last_backward(tape_);  // buckets start as backward completes them
      tape_.backward(loss, autograd::Tensor::full(loss.shape(), 1.0f / float(accum), at_.device));
      trace_samples();
    }
  }

  // grad_accum micro-batches, all-reduce, clipping; returns (mean loss, gradient norm).
  std::pair<double, double> forward_backward() {
    auto& P = model_.params();
    micro_batches();
    const std::vector<float> losses = losses_.to_vector();  // once all backward passes are queued
    double loss_sum = 0;
    for (float l : losses) loss_sum += l;
    const double loss =  // mean over ranks (ZeRO-1: this rank's slice)
        dp_.reduce(tape_, loss_sum, cfg_.data.grad_accum);
    if (opt_.test_after_backward) opt_.test_after_backward(P);
    return {loss, dp_.clip_grad_norm(cfg_.grad_clip)};
  }

  void skip_step(int64_t step, double loss, double gnorm) {
    ++res_.skipped;
    if (++bad_in_row_ >= cfg_.training.max_bad_steps) {
      std::string culprit;
      on_host([&] { culprit = nonfinite_culprit(model_.params()); });
      autograd::fail(
          "training aborted at step ", step, ": ", bad_in_row_,
          " consecutive steps with non-finite loss or gradients (training.max_bad_steps = ",
          cfg_.training.max_bad_steps, "); last loss ", loss, ", grad norm ", gnorm, culprit);
    }
    if (talk_)
      std::printf("%sstep %lld: non-finite loss/gradient, step skipped\n", clear(),
                  (long long)step);
  }

  // The step's metrics line, plot points, and the progress bar / line every log_every steps.
  // time_s < 0: now; mode: the step's (default: the model's current one).
  void log_step(int64_t step, double loss, double lr, double wd, double gnorm, double time_s = -1,
                std::optional<nn::ActMode> step_mode = std::nullopt) {
    window_loss_ += loss;
    ++window_n_;
    if (!lead_) return;
    const nn::ActMode mode = step_mode.value_or(model_.mode());
    const int64_t T = cfg_.training.steps, tok_step = cfg_.tokens_per_step(comm_.world());
    const double el = time_s >= 0 ? time_s : elapsed(), tps = double((step + 1) * tok_step) / el;
    metrics_ << nlohmann::json({{"step", step},
                                {"loss", loss},
                                {"lr", lr},
                                {"wd", wd},
                                {"grad_norm", gnorm},
                                {"mode", nn::to_string(mode)},
                                {"tokens", (step + 1) * tok_step},
                                {"tok_s", tps},
                                {"time_s", el},
                                {"comm_s", comm_.comm_seconds()}})
                    .dump()
             << '\n';
    train_pts_.emplace_back(double(step), loss);
    lr_pts_.emplace_back(double(step), lr);
    wd_pts_.emplace_back(double(step), wd);
    if ((step + 1) % cfg_.training.log_every != 0 && step + 1 != T) return;
    const double mean = window_loss_ / double(window_n_);
    if (res_.first_loss == 0) res_.first_loss = mean;
    res_.last_loss = mean;
    window_loss_ = 0, window_n_ = 0;
    const double eta = el / double(step + 1) * double(T - step - 1);
    if (talk_ && tty_) {
      const int w = 24, fill = int(double(w) * double(step + 1) / double(T));
      std::printf("\r\033[K[%s%s] %lld/%lld loss %.4f lr %.2e %s %.0f tok/s ETA %s",
                  std::string(size_t(fill), '#').c_str(),
                  std::string(size_t(w - fill), '.').c_str(), (long long)step + 1, (long long)T,
                  mean, lr, nn::to_string(mode).c_str(), tps, hms(eta).c_str());
      std::fflush(stdout);
    } else if (talk_) {
      std::printf("step %lld/%lld loss %.4f lr %.2e wd %.3f %s gnorm %.3f %.0f tok/s ETA %s\n",
                  (long long)step + 1, (long long)T, mean, lr, wd, nn::to_string(mode).c_str(),
                  gnorm, tps, hms(eta).c_str());
      std::fflush(stdout);
    }
  }

  void log_eval(int64_t step, const EvalResult& ev) {
    if (!lead_ || !std::isfinite(ev.loss)) return;
    val_pts_.emplace_back(double(step), ev.loss);
    const auto& s = ev.sparsity;
    nlohmann::json j = {{"step", step},
                        {"val_loss", ev.loss},
                        {"val_ppl", std::exp(ev.loss)},
                        {"mode", nn::to_string(model_.mode())},
                        {"sparsity",
                         {{"qkv", s.qkv},
                          {"out", s.out},
                          {"up", s.up},
                          {"gate", s.gate},
                          {"down", s.down},
                          {"overall", s.overall}}}};
    metrics_ << j.dump() << '\n' << std::flush;
    if (talk_)
      std::printf(
          "%seval step %lld: val loss %.4f, ppl %.2f, sparsity overall %.1f%% (qkv %.1f out %.1f "
          "up %.1f gate %.1f down %.1f)\n",
          clear(), (long long)step, ev.loss, std::exp(ev.loss), 100 * s.overall, 100 * s.qkv,
          100 * s.out, 100 * s.up, 100 * s.gate, 100 * s.down);
  }

  int64_t metrics_size() {
    metrics_.flush();
    if (!metrics_.good()) autograd::fail(metrics_path_, ": write failed (disk full?)");
    std::error_code ec;
    const auto n = fs::file_size(metrics_path_, ec);
    return ec ? 0 : int64_t(n);
  }

  // Writes checkpoints/step-<step>.h5 (atomically) and keeps the newest checkpoint.keep.
  // metrics_bytes < 0: the metrics file as it is now.
  // Collective under ZeRO-1 (the moments are gathered to rank 0) unless `full` is given.
  void checkpoint(int64_t step, int64_t metrics_bytes = -1, const optim::AdamW* full = nullptr) {
    if (step == last_checkpoint_) return;  // (a stop right after a periodic checkpoint)
    last_checkpoint_ = step;
    if (!full) full = gathered_optimizer();
    if (!lead_) return;
    TrainState s;
    s.step = step;
    s.stage = int64_t(stage_);
    s.mode = nn::to_string(cfg_.stages[stage_].mode);
    s.loader_cursor = loader_.cursor();
    s.training_seed = cfg_.training.seed;
    s.data_seed = cfg_.data.seed;
    s.world = facts_.world;
    s.threads = omp_get_max_threads();
    s.train_tokens = facts_.train_tokens;
    s.train_fingerprint = facts_.train_fingerprint;
    s.skipped = res_.skipped;
    s.bad_in_row = bad_in_row_;
    s.first_loss = res_.first_loss;
    s.window_loss = window_loss_;
    s.window_n = window_n_;
    s.val_loss_at_stage2 = res_.val_loss_at_stage2;
    s.elapsed_s = elapsed();
    s.metrics_bytes = metrics_bytes >= 0 ? metrics_bytes : metrics_size();
    s.numerics = current_numerics(model_);
    const std::string path = checkpoint_path(res_.run_dir, step);
    fs::create_directories(fs::path(path).parent_path());
    const auto t = std::chrono::steady_clock::now();
    on_host([&] { save_checkpoint(path, model_, *full, s, cfg_.resolved_yaml, tokenizer_); });
    full_.reset();  // ZeRO-1: the gathered state is not kept between checkpoints
    rotate_checkpoints(fs::path(path).parent_path().string(), cfg_.checkpoint.keep);
    if (talk_ && !tty_)
      std::printf("checkpoint %s (%.1f MB, %.2f s)\n", path.c_str(),
                  double(fs::file_size(path)) / 1e6,
                  std::chrono::duration<double>(std::chrono::steady_clock::now() - t).count());
  }

  // A failed periodic checkpoint (disk full, ...) stops the run, naming the newest complete
  // checkpoint (untouched: the failed write only ever touched its .tmp). Training on without
  // checkpoints would put ever more work at risk.
  void periodic_checkpoint(int64_t step) {
    try {
      checkpoint(step);
    } catch (const std::exception& e) {
      const auto list =
          list_checkpoints(fs::path(checkpoint_path(res_.run_dir, 0)).parent_path().string());
      autograd::fail(e.what(), "\ntraining stopped after step ", step, ": ",
                     list.empty() ? std::string("no earlier checkpoint exists")
                                  : "the newest complete checkpoint is " + list.back().second +
                                        " (continue with --resume " + res_.run_dir +
                                        " once the cause is fixed)");
    }
  }

  // Restores everything a checkpoint holds; metrics.jsonl is cut back to the checkpoint's step.
  void resume(const std::string& where) {
    if (!lead_) return;  // rank 0 reads; sync_ranks() shares the state and the tensors
    const std::string path = resolve_checkpoint(where);
    const CheckpointInfo ci = load_checkpoint(path, model_, loading_optimizer(), &cfg_, &facts_);
    const TrainState& s = ci.state;
    start_step_ = s.step;
    loader_.set_cursor(s.loader_cursor);
    stage_ = s.step > 0 ? stage_of(cfg_, s.step - 1) : 0;
    model_.set_mode(cfg_.stages[stage_].mode);
    res_.skipped = s.skipped;
    res_.first_loss = s.first_loss;
    res_.val_loss_at_stage2 = s.val_loss_at_stage2;
    bad_in_row_ = s.bad_in_row;
    window_loss_ = s.window_loss;
    window_n_ = s.window_n;
    elapsed_before_ = s.elapsed_s;
    if (talk_) {
      std::printf("resuming from %s at step %lld (%s)\n", path.c_str(), (long long)s.step,
                  s.mode.c_str());
      const int64_t saved_steps = parse_config(ci.config_yaml, path).training.steps;
      if (saved_steps != cfg_.training.steps)
        std::printf(
            "note: the checkpoint's run had %lld steps, this one has %lld: the LR/WD schedule and "
            "stage "
            "boundaries follow the new length\n",
            (long long)saved_steps, (long long)cfg_.training.steps);
    }
    if (lead_) note_regrouping(parse_config(ci.config_yaml, path), s.world);
    if (lead_ && s.threads != omp_get_max_threads())
      std::fprintf(
          stderr,
          "warning: the checkpoint was written with %lld OpenMP threads, this run has %d: the GEMM "
          "blocking (and so the rounding) differs, the continuation will not be bit-identical\n",
          (long long)s.threads, omp_get_max_threads());
    const Numerics now = current_numerics(model_, at_.device);
    for (const std::string& m : numerics_mismatches(s.numerics, now))
      std::fprintf(stderr, "%s\n", m.c_str());
    if (s.numerics.bitlinear_route.empty())
      std::fprintf(
          stderr,
          "note: the checkpoint does not record its BitLinear route and fp32 GEMM (written before "
          "they were recorded); this run takes %s with %s (kernel %s)\n",
          now.bitlinear_route.c_str(), now.gemm_backend.c_str(), now.gemm_core.c_str());
    resumed_ = s;
    resumed_path_ = path;
    if (!lead_) return;
    restore_metrics(path, s.metrics_bytes);
    for (auto& [step, file] :
         list_checkpoints(fs::path(checkpoint_path(res_.run_dir, 0)).parent_path().string()))
      if (step > s.step) {
        fs::remove(file);  // a later checkpoint of the continuation being replaced
        if (talk_) std::printf("removed %s (after the resume point)\n", file.c_str());
      }
  }

  // A resume on another rank count or micro-batch split: same samples per step in the same order
  // (the loader's global cursor re-shards them), but another float reduction order.
  void note_regrouping(const Config& saved, int64_t saved_world) const {
    const auto& d = saved.data;
    if (saved_world == comm_.world() && d.micro_batch == cfg_.data.micro_batch &&
        d.grad_accum == cfg_.data.grad_accum)
      return;
    std::fprintf(stderr,
                 "note: the checkpoint was written by %lld rank(s) x micro-batch %lld x "
                 "accumulation %lld, this run has "
                 "%d x %lld x %lld: the same %lld samples per step, re-sharded from sample %llu "
                 "on; equal to an "
                 "uninterrupted run to float-reduction tolerance (not bit for bit)\n",
                 (long long)saved_world, (long long)d.micro_batch, (long long)d.grad_accum,
                 comm_.world(), (long long)cfg_.data.micro_batch, (long long)cfg_.data.grad_accum,
                 (long long)(cfg_.data.micro_batch * cfg_.data.grad_accum * comm_.world()),
                 (unsigned long long)loader_.cursor());
  }

  // metrics.jsonl = the first `bytes` of the checkpoint's run's metrics (the lines of steps before
  // the checkpoint); the plot points are rebuilt from them.
  void restore_metrics(const std::string& ckpt, int64_t bytes) {
    fs::path dir = fs::path(ckpt).parent_path();
    if (dir.filename() == "checkpoints") dir = dir.parent_path();
    const fs::path src = dir / "metrics.jsonl";
    std::error_code ec;
    const auto have = fs::file_size(src, ec);
    std::string text(size_t(std::clamp<int64_t>(bytes, 0, ec ? 0 : int64_t(have))), '\0');
    std::ifstream in(src, std::ios::binary);
    in.read(text.data(), std::streamsize(text.size()));
    text.resize(size_t(std::max<std::streamsize>(in.gcount(), 0)));
    if (int64_t(text.size()) < bytes)
      std::fprintf(stderr,
                   "warning: %s holds %zu of the %lld bytes of metrics recorded in the checkpoint; "
                   "earlier steps' metrics are incomplete\n",
                   src.string().c_str(), text.size(), (long long)bytes);
    text.resize(text.rfind('\n') == std::string::npos ? 0 : text.rfind('\n') + 1);
    in.close();
    write_file(metrics_path_, text);
    std::istringstream lines(text);
    for (std::string line; std::getline(lines, line);) {
      const nlohmann::json j = nlohmann::json::parse(line, nullptr, false);
      if (j.is_discarded() || !j.contains("step")) continue;
      const double step = j["step"].get<double>();
      if (j.contains("loss")) {
        train_pts_.emplace_back(step, j["loss"].get<double>());
        lr_pts_.emplace_back(step, j.value("lr", 0.0));
        wd_pts_.emplace_back(step, j.value("wd", 0.0));
      }
      if (j.contains("val_loss")) val_pts_.emplace_back(step, j["val_loss"].get<double>());
    }
  }

  // Final evaluation, model file, plot, final checkpoint.
  void finish(int64_t step) {
    const int64_t T = cfg_.training.steps;
    res_.steps = step;
    res_.interrupted = step < T;
    if (talk_ && tty_) std::printf("\n");
    if (talk_ && res_.interrupted)
      std::printf("interrupted: stopped cleanly after step %lld\n", (long long)step);
    const int64_t metrics_bytes =
        lead_ ? metrics_size() : 0;  // the final evaluation is not part of a resumed run
    const EvalResult fin = evaluate(model_, val_ds_, cfg_);
    res_.val_loss = fin.loss;
    log_eval(step, fin);
    const optim::AdamW* full = gathered_optimizer();  // collective under ZeRO-1
    if (!lead_) return;
    metrics_.flush();
    on_host([&] {
      save_model(res_.run_dir + "/model.safetensors", model_, full, final_metadata(step),
                 tokenizer_);
    });
    std::vector<Marker> marks;
    for (size_t i = 1; i < cfg_.stages.size(); ++i)
      marks.push_back({double(cfg_.stage_start(i)), "-> " + nn::to_string(cfg_.stages[i].mode)});
    if (cfg_.schedule.switch_step > 0 && cfg_.schedule.switch_step < T)
      marks.push_back({double(cfg_.schedule.switch_step), "LR/WD switch"});
    Panel loss_p{"Loss",
                 "cross-entropy",
                 {{"train", "#1f77b4", train_pts_}, {"validation", "#d62728", val_pts_, true}}};
    Panel lr_p{"Learning rate", "lr", {{"lr", "#2ca02c", lr_pts_}}};
    Panel wd_p{"Weight decay", "wd", {{"wd", "#9467bd", wd_pts_}}};
    write_file(res_.run_dir + "/training.svg", render_svg({loss_p, lr_p, wd_p}, marks, "step"));
    checkpoint(step, metrics_bytes, full);
  }

  const int prev_threads_;
  const autograd::GemmPrecision prev_precision_ = autograd::gemm_precision();
  const Config cfg_;
  const TrainOptions& opt_;
  Comm& comm_;
  const bool lead_, talk_, tty_;
  const data::TokenDataset train_ds_, val_ds_;
  data::Loader loader_;
  nn::BitNetLM model_;
  DataParallel dp_;
  optim::AdamW adamw_;
  RunFacts facts_;
  config::Placement at_;  // training.device / training.precision, resolved (place())
  std::optional<TrainState>
      resumed_;  // rank 0: the state of the checkpoint this session resumed from
  std::string resumed_path_;
  std::unique_ptr<optim::AdamW>
      full_;  // ZeRO-1, rank 0: the whole optimizer state while loading or saving
  std::FILE* trace_ = nullptr;
  std::string tokenizer_, metrics_path_;
  std::string hf_source_;  // --init-from HF_DIR: kept in the model file for the export's tokenizer

  std::map<std::string, std::string> final_metadata(int64_t step) const {
    std::map<std::string, std::string> m = {{"config", cfg_.resolved_yaml},
                                            {"step", std::to_string(step)},
                                            {"mode", nn::to_string(model_.mode())}};
    if (!hf_source_.empty()) m["hf_source"] = hf_source_;
    return m;
  }
  std::ofstream metrics_;
  Tape tape_;
  std::vector<int32_t> x_, y_;
  // losses_: the step's micro-batch losses; deferred steps: records_ holds kMaxPending
  // StepRecords, norm8_ the gradient norm; all on the run's device
  static constexpr int64_t kMaxPending = 256;
  bool deferred_ = false;
  autograd::Tensor losses_, records_, norm8_;
  std::vector<PendingStep> pending_;
  std::vector<std::pair<double, double>> train_pts_, val_pts_, lr_pts_, wd_pts_;
  TrainResult res_;
  size_t stage_ = 0;
  int64_t start_step_ = 0, bad_in_row_ = 0, window_n_ = 0, last_checkpoint_ = -1;
  double window_loss_ = 0, elapsed_before_ = 0;
  std::chrono::steady_clock::time_point t0_ = std::chrono::steady_clock::now();
};
}  // namespace

std::string hms(double s) {
  char b[32];
  const long t = long(s);
  if (t >= 3600)
    std::snprintf(b, sizeof b, "%ldh%02ldm", t / 3600, (t / 60) % 60);
  else
    std::snprintf(b, sizeof b, "%ldm%02lds", t / 60, t % 60);
  return b;
}

TrainResult train(const Config& cfg, const TrainOptions& opt, Comm& comm) {
  Run run(cfg, opt, comm);
  return run.go();
}

}  // namespace trainers::train
