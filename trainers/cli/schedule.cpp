// `bitnet schedule CONFIG`: the LR/WD table of a config, and its plot.
#include <algorithm>
#include <cstdio>
#include <string>
#include <vector>

#include "optim/schedule.h"
#include "trainers/cli/command.h"
#include "trainers/config/config.h"
#include "trainers/train/plot.h"

namespace trainers::cli {
namespace {
using config::Config;
using train::Marker;
using train::Panel;
using train::render_svg;
using train::Series;
using train::write_file;

int cmd_schedule(const Config& c, const std::string& svg, int rows) {
  const auto& s = c.schedule;
  std::printf("%8s %12s %8s  %s\n", "step", "lr", "wd", "mode");
  std::vector<int64_t> pts;
  for (int i = 0; i < rows; ++i)
    pts.push_back(int64_t(double(s.total - 1) * i / std::max(1, rows - 1)));
  for (int64_t b :
       {int64_t(0), s.warmup - 1, s.warmup, s.switch_step - 1, s.switch_step, s.total - 1})
    if (b >= 0 && b < s.total) pts.push_back(b);
  for (size_t i = 1; i < c.stages.size(); ++i)
    pts.push_back(c.stage_start(i) - 1), pts.push_back(c.stage_start(i));
  std::sort(pts.begin(), pts.end());
  pts.erase(std::unique(pts.begin(), pts.end()), pts.end());
  for (int64_t t : pts)
    std::printf("%8lld %12.4e %8.4f  %s\n", (long long)t, optim::lr_at(s, t), optim::wd_at(s, t),
                nn::to_string(c.mode_at(t)).c_str());
  if (!svg.empty()) {
    Series lr{"lr", "#2ca02c", {}}, wd{"wd", "#9467bd", {}};
    const int64_t n = std::min<int64_t>(s.total, 2000);
    for (int64_t i = 0; i < n; ++i) {
      const int64_t t = s.total <= 2000 ? i : i * (s.total - 1) / (n - 1);
      lr.pts.emplace_back(double(t), optim::lr_at(s, t));
      wd.pts.emplace_back(double(t), optim::wd_at(s, t));
    }
    std::vector<Marker> marks{{double(s.switch_step), "LR/WD switch"}};
    for (size_t i = 1; i < c.stages.size(); ++i)
      marks.push_back({double(c.stage_start(i)), "-> " + nn::to_string(c.stages[i].mode)});
    write_file(svg,
               render_svg({Panel{"Learning rate", "lr", {lr}}, Panel{"Weight decay", "wd", {wd}}},
                          marks, "step"));
    std::printf("plot written to %s\n", svg.c_str());
  }
  return 0;
}
}  // namespace

Command add_schedule(CLI::App& app) {
  struct Args {
    ConfigArgs config;
    std::string svg;
    int rows = 20;
  };
  auto a = std::make_shared<Args>();
  CLI::App* sched =
      app.add_subcommand("schedule", "print the LR/WD table of a config and write a plot");
  add_config_args(sched, a->config, "override a config key: key.path=value");
  sched->add_option("--plot", a->svg, "SVG file to write (default: schedule.svg)");
  sched->add_option("--rows", a->rows, "table rows besides the boundaries")
      ->check(CLI::Range(2, 10000));
  return {sched, [a] {
            return cmd_schedule(config::load_config(a->config.file, a->config.sets),
                                a->svg.empty() ? "schedule.svg" : a->svg, a->rows);
          }};
}

}  // namespace trainers::cli
