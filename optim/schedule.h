// Learning-rate and weight-decay schedules as pure functions of the step (docs/SPEC.md §5).
//
// Steps are 0-based update indices t in [0, total). Two-stage linear LR:
//   t <  warmup: lr = peak1 * t / warmup
//   t >= warmup: lr = peak * (1 - (1 - end_ratio) * (t - warmup) / (total - warmup)),
//                peak = peak1 before the switch step and peak2 from it on (the LR drops).
// Cosine: warm-up as above, then peak1 * (end_ratio + (1 - end_ratio) * (1 + cos(pi p)) / 2),
// p = (t - warmup) / (total - warmup). Constant: warm-up, then peak1.
// Weight decay: two-stage (wd1 before the switch, wd2 from it on), constant (wd1), or the 2B4T
// cosine (wd1 * (1 + cos(pi t / switch)) / 2 before the switch, wd2 after).
#pragma once
#include <cstdint>
#include <string>

namespace optim {

enum class LrKind { TwoStage, Cosine, Constant };
enum class WdKind { TwoStage, Constant, Cosine };

struct Schedule {
  LrKind lr_kind = LrKind::TwoStage;
  double peak1 = 1.5e-3, peak2 = 1e-3;
  int64_t warmup = 375;
  int64_t total = 1000;
  int64_t switch_step = 500;  // LR/WD stage switch (default total/2)
  double end_ratio = 0.02;
  WdKind wd_kind = WdKind::TwoStage;
  double wd1 = 0.1, wd2 = 0.0;
};

// Throws autograd::Error naming the field unless total >= 1, 0 <= warmup < total,
// 0 <= switch_step <= total, end_ratio in [0, 1], peak1, peak2, wd1, wd2 >= 0 (all finite), e.g.
// "schedule.warmup: 500 must be < total 400".
void validate(const Schedule& s);
// LR / weight decay at step t >= 0 (validates s; steps past the end clamp to t = total, i.e. the
// final value of the line: peak2 * end_ratio for two-stage).
double lr_at(const Schedule& s, int64_t t);
double wd_at(const Schedule& s, int64_t t);
// Throw autograd::Error listing the allowed names for anything else.
LrKind parse_lr_kind(const std::string& s);  // "two-stage", "cosine", "constant"
WdKind parse_wd_kind(const std::string& s);  // "two-stage", "constant", "cosine"
std::string to_string(LrKind k);
std::string to_string(WdKind k);

}  // namespace optim
