// `bitnet sweep`: the runs (in this process or as `bitnet train` children), their results, the
// report (sweep.jsonl, sweep.md) and the overlay plots (sweep_loss.svg / .png). See sweep.h.
#include "trainers/train/sweep.h"

#include <fcntl.h>
#include <omp.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cmath>
#include <csignal>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <map>
#include <nlohmann/json.hpp>
#include <sstream>

#include "autograd/error.h"
#include "trainers/config/config.h"
#include "trainers/formats/checkpoint.h"
#include "trainers/train/plot.h"
#include "trainers/train/trainer.h"

extern char** environ;

namespace trainers::train {
namespace {
namespace fs = std::filesystem;
using json = nlohmann::ordered_json;
constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();
constexpr const char* kResult = "sweep_result.json";  // in a run directory: the run is done

std::string run_dir(const config::Sweep& sw, const config::SweepRun& r) {
  return (fs::path(sw.out_dir) / r.name).string();
}
bool finished(const std::string& dir) { return fs::exists(fs::path(dir) / kResult); }
bool has_checkpoint(const std::string& dir) {
  try {
    (void)formats::resolve_checkpoint(dir);
    return true;
  } catch (const std::exception&) {
    return false;
  }
}
// A training error that is a divergence (the trainer's max_bad_steps abort), not a failure.
bool is_divergence(const std::string& msg) {
  return msg.find("non-finite loss or gradients") != std::string::npos;
}

// What metrics.jsonl says of a run: its last train step, tokens, time; its evaluations.
struct Metrics {
  std::vector<std::pair<double, double>> train, val;  // (tokens, loss)
  int64_t steps = 0, tokens = 0;
  double time_s = 0;
  std::vector<int64_t> val_steps;
  json last_sparsity;
};
Metrics read_metrics(const std::string& dir) {
  Metrics m;
  std::ifstream f(fs::path(dir) / "metrics.jsonl");
  int64_t tok_step = 0;
  for (std::string line; std::getline(f, line);) {
    json j;
    try {
      j = json::parse(line);
    } catch (const json::exception&) {
      continue;  // a line cut by a kill: the resumed run rewrites it
    }
    const int64_t step = j.value("step", int64_t(0));
    if (j.contains("loss") && j["loss"].is_number()) {
      m.steps = step + 1;
      m.tokens = j.value("tokens", int64_t(0));
      tok_step = m.tokens / std::max<int64_t>(1, m.steps);
      m.time_s = j.value("time_s", 0.0);
      m.train.emplace_back(double(m.tokens), j["loss"].get<double>());
    }
    if (j.contains("val_loss") && j["val_loss"].is_number()) {
      m.val.emplace_back(double(step * tok_step), j["val_loss"].get<double>());
      m.val_steps.push_back(step);
      if (j.contains("sparsity")) m.last_sparsity = j["sparsity"];
    }
  }
  return m;
}

void write_result(const std::string& dir, const std::string& status, const std::string& message) {
  json j = {{"status", status}, {"message", message}};
  write_file((fs::path(dir) / kResult).string(), j.dump(2) + "\n");
}

// The end of a log file (the error a child printed).
std::string last_error_line(const std::string& path) {
  std::ifstream f(path);
  std::string last, line;
  while (std::getline(f, line))
    if (line.rfind("error: ", 0) == 0 || line.rfind("config error: ", 0) == 0) last = line;
  return last;
}

// What a finished run recorded ({status, message}); null when it has no result yet. A result cut
// short counts as finished (it is written only after the run ended).
json read_result(const std::string& dir) {
  std::ifstream f(fs::path(dir) / kResult);
  if (!f) return nullptr;
  try {
    return json::parse(f);
  } catch (const json::exception&) {
    return json{{"status", "finished"}};
  }
}
std::string result_status(const std::string& dir) {
  const json r = read_result(dir);
  return r.is_null() ? "" : r.value("status", std::string("finished"));
}

// The model file a run starts from ("" = none); throws when its source run has not finished.
std::string init_model(const config::Sweep& sw, const config::SweepRun& r) {
  if (!r.init_file.empty()) return r.init_file;
  if (r.init_run.empty()) return "";
  const std::string src = (fs::path(sw.out_dir) / r.init_run).string(), status = result_status(src);
  if (status != "finished")
    autograd::fail("init_from: the run '", r.init_run, "' it starts from ",
                   status.empty() ? std::string("has not finished") : "ended " + status);
  return (fs::path(src) / "model.safetensors").string();
}

// The error of a failed run, left for the report until the run is tried again.
fs::path error_file(const std::string& dir) { return fs::path(dir) / "sweep_error.txt"; }

// Records a run that failed (not a divergence: retried by the next invocation).
void record_failure(const std::string& dir, const std::string& msg) {
  fs::create_directories(dir);
  write_file(error_file(dir).string(), msg + "\n");
}

// Runs one run in this process (every rank under mpirun). Returns false when interrupted.
bool run_here(const config::Sweep& sw, const config::SweepRun& r, const SweepOptions& opt,
              int64_t stop_after, Comm& comm) {
  const std::string dir = run_dir(sw, r);
  const config::Config cfg = config::load_config(sw.base, r.sets);
  TrainOptions o;
  o.quiet = opt.quiet;
  o.stop_after = stop_after;
  fs::remove(error_file(dir));  // tried again: an earlier failure no longer describes it
  try {
    if (has_checkpoint(dir))
      o.resume = dir;
    else
      o.init_from = init_model(sw, r);
    const TrainResult res = train(cfg, o, comm);
    if (res.interrupted) return false;
    if (comm.rank() == 0) write_result(dir, "finished", "");
  } catch (const std::exception& e) {
    const std::string msg = e.what();
    if (comm.rank() == 0) {
      std::printf("sweep: %s %s: %s\n", r.name.c_str(), is_divergence(msg) ? "diverged" : "failed",
                  msg.c_str());
      if (is_divergence(msg))
        write_result(dir, "diverged", msg);  // a result: not retried
      else
        record_failure(dir, msg);
    }
  }
  return true;
}

// Several runs at a time as `bitnet train` processes (one process only: refused under mpirun).
bool run_children(const config::Sweep& sw, const std::vector<const config::SweepRun*>& todo,
                  const SweepOptions& opt) {
  const int threads = std::max(1, omp_get_max_threads() / opt.jobs);
  std::map<pid_t, const config::SweepRun*> live;
  bool interrupted = false;
  std::vector<bool> started(todo.size(), false);
  // A run whose init_from source is still to run or running waits for it.
  auto waiting = [&](const config::SweepRun& r) {
    if (r.init_run.empty()) return false;
    for (size_t i = 0; i < todo.size(); ++i)
      if (todo[i]->name == r.init_run && !finished(run_dir(sw, *todo[i]))) {
        if (!started[i]) return true;
        for (const auto& [pid, lr] : live)
          if (lr == todo[i]) return true;
      }
    return false;
  };
  auto start = [&](const config::SweepRun& r) {
    const std::string dir = run_dir(sw, r);
    fs::create_directories(dir);
    fs::remove(error_file(dir));
    std::string init;
    if (!has_checkpoint(dir)) {
      try {
        init = init_model(sw, r);
      } catch (const std::exception& e) {
        std::printf("sweep: %s failed: %s\n", r.name.c_str(), e.what());
        record_failure(dir, e.what());
        return;
      }
    }
    std::vector<std::string> args = {opt.self, "train", sw.base, "--quiet"};
    for (const std::string& s : r.sets) args.insert(args.end(), {"--set", s});
    args.insert(args.end(), {"--set", "training.threads=" + std::to_string(threads)});
    if (has_checkpoint(dir)) args.insert(args.end(), {"--resume", dir});
    if (!init.empty()) args.insert(args.end(), {"--init-from", init});
    std::vector<char*> argv;
    for (std::string& a : args) argv.push_back(a.data());
    argv.push_back(nullptr);
    const std::string log = (fs::path(dir) / "train.log").string();
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_addopen(&fa, 1, log.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0644);
    posix_spawn_file_actions_adddup2(&fa, 1, 2);
    pid_t pid = 0;
    const int rc = posix_spawn(&pid, opt.self.c_str(), &fa, nullptr, argv.data(), environ);
    posix_spawn_file_actions_destroy(&fa);
    if (rc != 0) autograd::fail("bitnet sweep: cannot start '", opt.self, "': ", std::strerror(rc));
    std::printf("sweep: started %s (%d threads, log %s)\n", r.name.c_str(), threads, log.c_str());
    live[pid] = &r;
  };
  for (;;) {
    for (size_t i = 0; i < todo.size() && !interrupted && int(live.size()) < opt.jobs; ++i)
      if (!started[i] && !waiting(*todo[i])) started[i] = true, start(*todo[i]);
    if (live.empty()) break;
    int status = 0;
    const pid_t pid = waitpid(-1, &status, 0);
    if (pid < 0) autograd::fail("bitnet sweep: waitpid failed: ", std::strerror(errno));
    auto it = live.find(pid);
    if (it == live.end()) continue;
    const config::SweepRun& r = *it->second;
    live.erase(it);
    const std::string dir = run_dir(sw, r), log = (fs::path(dir) / "train.log").string();
    const int code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
    if (code == 0) {
      write_result(dir, "finished", "");
      std::printf("sweep: %s finished\n", r.name.c_str());
    } else if (code == 130 || (WIFSIGNALED(status) && WTERMSIG(status) == SIGINT)) {
      interrupted = true;
      std::printf("sweep: %s interrupted\n", r.name.c_str());
    } else {
      const std::string msg = last_error_line(log);
      const bool div = is_divergence(msg);
      std::printf("sweep: %s %s (exit %d): %s\n", r.name.c_str(), div ? "diverged" : "failed", code,
                  msg.c_str());
      if (div)
        write_result(dir, "diverged", msg);
      else
        record_failure(dir, msg);
    }
    std::fflush(stdout);
  }
  return !interrupted;
}

// The step of the trainer's "training aborted at step N: ..." (else `fallback`).
int64_t aborted_at(const std::string& msg, int64_t fallback) {
  const std::string key = "aborted at step ";
  const size_t p = msg.find(key);
  if (p == std::string::npos) return fallback;
  return std::strtoll(msg.c_str() + p + key.size(), nullptr, 10);
}

std::string fmt(const char* f, double v) {
  char b[64];
  std::snprintf(b, sizeof b, f, v);
  return b;
}

// Mean of each window of `w` points (a readable training curve from per-step losses).
std::vector<std::pair<double, double>> smooth(const std::vector<std::pair<double, double>>& p,
                                              size_t w) {
  if (w <= 1) return p;
  std::vector<std::pair<double, double>> out;
  for (size_t i = 0; i < p.size(); i += w) {
    const size_t e = std::min(p.size(), i + w);
    double s = 0;
    for (size_t k = i; k < e; ++k) s += p[k].second;
    out.emplace_back(p[e - 1].first, s / double(e - i));
  }
  return out;
}

}  // namespace

std::vector<SweepRow> write_sweep_report(const std::string& out_dir) {
  const fs::path top(out_dir);
  std::ifstream f(top / "sweep.json");
  if (!f)
    autograd::fail("bitnet sweep --report: ", (top / "sweep.json").string(),
                   " not found (not a sweep directory: `bitnet sweep SWEEP.yaml` writes it)");
  json spec;
  try {
    spec = json::parse(f);
  } catch (const json::exception& e) {
    autograd::fail((top / "sweep.json").string(), ": not valid JSON: ", e.what());
  }
  static const char* kPalette[] = {"#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e",
                                   "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"};
  std::vector<SweepRow> rows;
  Panel train_p{"Training loss (mean per window)", "cross-entropy", {}};
  Panel val_p{"Validation loss", "cross-entropy", {}};
  std::vector<Marker> marks;
  for (const json& r : spec["runs"]) {
    SweepRow row;
    row.name = r["name"].get<std::string>();
    row.sets = r["own"].get<std::vector<std::string>>();
    if (!r.value("init_from", std::string()).empty())
      row.sets.insert(row.sets.begin(), "init_from=" + r["init_from"].get<std::string>());
    const std::string dir = (top / row.name).string();
    const Metrics m = read_metrics(dir);
    row.steps = m.steps, row.tokens = m.tokens, row.wall_s = m.time_s;
    row.final_val = m.val.empty() ? kNaN : m.val.back().second;
    row.best_val = kNaN;
    for (size_t i = 0; i < m.val.size(); ++i)
      if (std::isfinite(m.val[i].second) &&
          (!std::isfinite(row.best_val) || m.val[i].second < row.best_val))
        row.best_val = m.val[i].second, row.best_step = m.val_steps[i];
    const char* keys[] = {"qkv", "out", "up", "gate", "down", "overall"};
    if (m.last_sparsity.is_object())
      for (int k = 0; k < 6; ++k) row.sparsity[k] = m.last_sparsity.value(keys[k], 0.0);
    if (const json res = read_result(dir); !res.is_null()) {
      row.status = res.value("status", std::string("finished"));
      row.message = res.value("message", std::string());
      if (row.status == "diverged") row.diverged_step = aborted_at(row.message, m.steps);
    } else if (fs::exists(error_file(dir))) {
      std::ifstream ef(error_file(dir));
      std::getline(ef, row.message);
      row.status = "failed";
    } else {
      row.status = fs::exists(fs::path(dir) / "metrics.jsonl") ? "interrupted" : "not run";
    }
    const std::string color = kPalette[rows.size() % 10];
    train_p.series.push_back(
        {row.name, color, smooth(m.train, std::max<size_t>(1, m.train.size() / 60))});
    val_p.series.push_back({row.name, color, m.val, true});
    if (rows.empty()) {
      // the first run's stage and LR/WD switches: from its config.yaml, else from the sweep's
      // base and the run's overrides (a report of copied metrics); none if neither loads
      std::optional<config::Config> cfg;
      try {
        cfg = fs::exists(fs::path(dir) / "config.yaml")
                  ? config::load_config((fs::path(dir) / "config.yaml").string())
                  : config::load_config(spec.value("base", std::string()),
                                        r["sets"].get<std::vector<std::string>>());
      } catch (const std::exception&) {
      }
      if (!cfg) {
        rows.push_back(std::move(row));
        continue;
      }
      const config::Config& c = *cfg;
      const double tok = double(c.tokens_per_step());
      for (size_t i = 1; i < c.stages.size(); ++i)
        marks.push_back({double(c.stage_start(i)) * tok, "-> " + nn::to_string(c.stages[i].mode)});
      if (c.schedule.switch_step > 0 && c.schedule.switch_step < c.training.steps)
        marks.push_back({double(c.schedule.switch_step) * tok, "LR/WD switch"});
    }
    rows.push_back(std::move(row));
  }
  // sweep.jsonl
  std::ostringstream jl;
  for (const SweepRow& r : rows) {
    auto num = [](double v) { return std::isfinite(v) ? json(v) : json(nullptr); };
    jl << json{{"name", r.name},
               {"sets", r.sets},
               {"status", r.status},
               {"final_val_loss", num(r.final_val)},
               {"final_val_ppl", num(std::exp(r.final_val))},
               {"best_val_loss", num(r.best_val)},
               {"best_val_ppl", num(std::exp(r.best_val))},
               {"best_val_step", r.best_step},
               {"steps", r.steps},
               {"tokens", r.tokens},
               {"wall_s", r.wall_s},
               {"diverged", r.status == "diverged"},
               {"diverged_step", r.diverged_step},
               {"message", r.message},
               {"sparsity",
                {{"qkv", r.sparsity[0]},
                 {"out", r.sparsity[1]},
                 {"up", r.sparsity[2]},
                 {"gate", r.sparsity[3]},
                 {"down", r.sparsity[4]},
                 {"overall", r.sparsity[5]}}}}
              .dump()
       << "\n";
  }
  write_file((top / "sweep.jsonl").string(), jl.str());
  // sweep.md
  std::ostringstream md;
  md << "# Sweep " << spec.value("path", std::string()) << "\n\nBase config `"
     << spec.value("base", std::string()) << "`; rebuilt by `bitnet sweep --report " << out_dir
     << "`. Sparsity: the final evaluation's share of zero activations (qkv / out / up / gate / "
        "down inputs).\n\n"
     << "| run | status | final val loss | ppl | best val loss (step) | tokens | wall s | sparsity "
        "overall (qkv/out/up/gate/down) | overrides |\n|---|---|---|---|---|---|---|---|---|\n";
  for (const SweepRow& r : rows) {
    std::string sets;
    for (const std::string& s : r.sets) sets += (sets.empty() ? "`" : ", `") + s + "`";
    std::string status = r.status;
    if (r.status == "diverged") status += " at step " + std::to_string(r.diverged_step);
    md << "| " << r.name << " | " << status << " | "
       << (std::isfinite(r.final_val) ? fmt("%.4f", r.final_val) : "-") << " | "
       << (std::isfinite(r.final_val) ? fmt("%.2f", std::exp(r.final_val)) : "-") << " | "
       << (std::isfinite(r.best_val)
               ? fmt("%.4f", r.best_val) + " (" + std::to_string(r.best_step) + ")"
               : "-")
       << " | " << r.tokens << " | " << fmt("%.1f", r.wall_s) << " | "
       << fmt("%.1f%%", 100 * r.sparsity[5]) << " (" << fmt("%.1f", 100 * r.sparsity[0]) << "/"
       << fmt("%.1f", 100 * r.sparsity[1]) << "/" << fmt("%.1f", 100 * r.sparsity[2]) << "/"
       << fmt("%.1f", 100 * r.sparsity[3]) << "/" << fmt("%.1f", 100 * r.sparsity[4]) << ") | "
       << sets << " |\n";
  }
  md << "\n![loss](sweep_loss.svg)\n";
  write_file((top / "sweep.md").string(), md.str());
  const std::string svg = render_svg({train_p, val_p}, marks, "tokens");
  write_file((top / "sweep_loss.svg").string(), svg);
  if (png_supported()) write_png((top / "sweep_loss.png").string(), svg);
  return rows;
}

int run_sweep(const config::Sweep& sw, const SweepOptions& opt, Comm& comm) {
  if (opt.jobs < 1) autograd::fail("bitnet sweep: --jobs must be at least 1, got ", opt.jobs);
  if (opt.jobs > 1 && comm.world() > 1)
    autograd::fail("bitnet sweep: --jobs ", opt.jobs,
                   " starts processes of its own; under mpirun use --jobs 1 (each run on every "
                   "rank)");
  // Every run's data must exist before the first starts (a fresh clone has not prepared it).
  for (const config::SweepRun& r : sw.runs) {
    const config::Config c = config::load_config(sw.base, r.sets);
    for (const auto* paths : {&c.data.train, &c.data.val})
      for (const std::string& p : *paths)
        if (!fs::exists(p))
          autograd::fail("bitnet sweep: run '", r.name, "': data '", p,
                         "' does not exist; prepare it first (`bitnet prepare --config ", sw.base,
                         "`, or scripts/demo for the Brown corpus)");
  }
  const bool lead = comm.rank() == 0;
  if (lead) {
    fs::create_directories(sw.out_dir);
    json runs = json::array();
    for (const config::SweepRun& r : sw.runs)
      runs.push_back({{"name", r.name},
                      {"own", r.own},
                      {"sets", r.sets},
                      {"init_from", r.init_run.empty() ? r.init_file : r.init_run}});
    write_file((fs::path(sw.out_dir) / "sweep.json").string(),
               json{{"path", sw.path}, {"base", sw.base}, {"runs", runs}}.dump(2) + "\n");
  }
  std::vector<const config::SweepRun*> todo;
  for (const config::SweepRun& r : sw.runs) {
    if (finished(run_dir(sw, r))) {
      if (lead) std::printf("sweep: %s done before, skipped\n", r.name.c_str());
      continue;
    }
    todo.push_back(&r);
  }
  if (lead)
    std::printf("sweep: %zu run(s), %zu to run, into %s\n", sw.runs.size(), todo.size(),
                sw.out_dir.c_str());
  std::fflush(stdout);
  bool complete = true;
  if (opt.jobs > 1) {
    complete = run_children(sw, todo, opt);
  } else {
    for (size_t i = 0; i < todo.size() && complete; ++i) {
      if (lead)
        std::printf("sweep: run %zu/%zu: %s%s\n", i + 1, todo.size(), todo[i]->name.c_str(),
                    has_checkpoint(run_dir(sw, *todo[i])) ? " (resuming)" : "");
      std::fflush(stdout);
      complete = run_here(sw, *todo[i], opt, i == 0 ? opt.stop_after : 0, comm);
    }
  }
  if (!lead) return complete ? 0 : 130;
  const std::vector<SweepRow> rows = write_sweep_report(sw.out_dir);
  std::printf("sweep: %s\n", complete ? "done" : "interrupted (run it again to resume)");
  std::printf("table:   %s/sweep.md (rows: %s/sweep.jsonl)\nplot:    %s/sweep_loss.svg%s\n",
              sw.out_dir.c_str(), sw.out_dir.c_str(), sw.out_dir.c_str(),
              png_supported() ? " and .png" : " (no PNG: built without librsvg)");
  for (const SweepRow& r : rows)
    std::printf("  %-28s %-12s val %s\n", r.name.c_str(), r.status.c_str(),
                std::isfinite(r.final_val) ? fmt("%.4f", r.final_val).c_str() : "-");
  return complete ? 0 : 130;
}

}  // namespace trainers::train
