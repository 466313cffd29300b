// Learning-rate and weight-decay schedules (docs/SPEC.md §5): validation and the per-step formulas.
#include "optim/schedule.h"

#include <algorithm>
#include <cmath>
#include <numbers>

#include "autograd/error.h"

namespace optim {

using autograd::fail;

namespace {

// "schedule.<field>: <x> must be >= 0" unless x is finite and >= 0 (NaN fails).
void check_nonneg(const char* field, double x) {
  if (!(x >= 0.0 && std::isfinite(x)))
    fail("schedule.", field, ": ", x, " must be finite and >= 0");
}

// Step index used by the formulas: t must be >= 0; t > total clamps to total.
int64_t clamp_step(const Schedule& s, int64_t t, const char* fn) {
  if (t < 0) fail(fn, ": step ", t, " must be >= 0");
  return std::min(t, s.total);
}

}  // namespace

// Checks the ranges listed in schedule.h, in field order; the first violation throws.
void validate(const Schedule& s) {
  if (s.total < 1) fail("schedule.total: ", s.total, " must be >= 1");
  if (s.warmup < 0) fail("schedule.warmup: ", s.warmup, " must be >= 0");
  if (s.warmup >= s.total) fail("schedule.warmup: ", s.warmup, " must be < total ", s.total);
  if (s.switch_step < 0 || s.switch_step > s.total)
    fail("schedule.switch_step: ", s.switch_step, " must be in [0, total ", s.total, "]");
  if (!(s.end_ratio >= 0.0 && s.end_ratio <= 1.0))
    fail("schedule.end_ratio: ", s.end_ratio, " must be in [0, 1]");
  check_nonneg("peak1", s.peak1);
  check_nonneg("peak2", s.peak2);
  check_nonneg("wd1", s.wd1);
  check_nonneg("wd2", s.wd2);
}

// t < warmup: peak1 * t / warmup. Otherwise, with p = (t - warmup) / (total - warmup):
//   two-stage: peak * (1 - (1 - end_ratio) * (t - warmup) / (total - warmup)),
//              peak = peak1 if t < switch_step else peak2;
//   cosine:    peak1 * (end_ratio + (1 - end_ratio) * (1 + cos(pi p)) / 2);
//   constant:  peak1.
double lr_at(const Schedule& s, int64_t t) {
  validate(s);
  t = clamp_step(s, t, "lr_at");
  if (t < s.warmup) return s.peak1 * double(t) / double(s.warmup);
  const double span = double(s.total - s.warmup), done = double(t - s.warmup);
  switch (s.lr_kind) {
    case LrKind::TwoStage: {  // evaluated left to right as written in SPEC §5
      const double peak = t < s.switch_step ? s.peak1 : s.peak2;
      return peak * (1.0 - (1.0 - s.end_ratio) * done / span);
    }
    case LrKind::Cosine: {
      const double p = done / span;
      return s.peak1 *
             (s.end_ratio + (1.0 - s.end_ratio) * (1.0 + std::cos(std::numbers::pi * p)) / 2.0);
    }
    case LrKind::Constant:
      return s.peak1;
  }
  fail("lr_at: invalid LrKind ", int(s.lr_kind));
}

// two-stage: wd1 if t < switch_step else wd2; constant: wd1;
// cosine: wd1 * (1 + cos(pi t / switch_step)) / 2 if t < switch_step else wd2.
double wd_at(const Schedule& s, int64_t t) {
  validate(s);
  t = clamp_step(s, t, "wd_at");
  switch (s.wd_kind) {
    case WdKind::TwoStage:
      return t < s.switch_step ? s.wd1 : s.wd2;
    case WdKind::Constant:
      return s.wd1;
    case WdKind::Cosine:  // t < switch_step implies switch_step > 0
      if (t < s.switch_step)
        return s.wd1 * (1.0 + std::cos(std::numbers::pi * double(t) / double(s.switch_step))) / 2.0;
      return s.wd2;
  }
  fail("wd_at: invalid WdKind ", int(s.wd_kind));
}

// Names <-> kinds; unknown names throw with the allowed list.
LrKind parse_lr_kind(const std::string& s) {
  if (s == "two-stage") return LrKind::TwoStage;
  if (s == "cosine") return LrKind::Cosine;
  if (s == "constant") return LrKind::Constant;
  fail("schedule.lr_kind: unknown LR schedule '", s, "' (allowed: two-stage, cosine, constant)");
}

WdKind parse_wd_kind(const std::string& s) {
  if (s == "two-stage") return WdKind::TwoStage;
  if (s == "constant") return WdKind::Constant;
  if (s == "cosine") return WdKind::Cosine;
  fail("schedule.wd_kind: unknown weight-decay schedule '", s,
       "' (allowed: two-stage, constant, cosine)");
}

std::string to_string(LrKind k) {
  switch (k) {
    case LrKind::TwoStage:
      return "two-stage";
    case LrKind::Cosine:
      return "cosine";
    case LrKind::Constant:
      return "constant";
  }
  return "invalid";
}

std::string to_string(WdKind k) {
  switch (k) {
    case WdKind::TwoStage:
      return "two-stage";
    case WdKind::Constant:
      return "constant";
    case WdKind::Cosine:
      return "cosine";
  }
  return "invalid";
}

}  // namespace optim
