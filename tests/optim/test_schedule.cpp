// Learning-rate and weight-decay schedules: two-stage, cosine, constant, validation, parsing.
#include "tests/optim/optim_helpers.h"

// ---------------------------------------------------------------------------------------------
// Schedules
// ---------------------------------------------------------------------------------------------

namespace {
optim::Schedule paper_700m() {  // SPEC §5 defaults: 1.5e-3 -> 1e-3, warm-up 375, switch at T/2
  optim::Schedule s;
  s.peak1 = 1.5e-3, s.peak2 = 1e-3, s.warmup = 375, s.total = 1000, s.switch_step = 500;
  s.end_ratio = 0.02, s.wd1 = 0.1, s.wd2 = 0.0;
  return s;
}
}  // namespace

TEST(Schedule, TwoStageLrAtTheBoundaries) {
  const optim::Schedule s = paper_700m();
  EXPECT_EQ(optim::lr_at(s, 0), 0.0);
  EXPECT_DOUBLE_EQ(optim::lr_at(s, 1), 1.5e-3 / 375);
  EXPECT_DOUBLE_EQ(optim::lr_at(s, 374), 1.5e-3 * 374 / 375);
  EXPECT_DOUBLE_EQ(optim::lr_at(s, 375), 1.5e-3);                           // peak1
  EXPECT_DOUBLE_EQ(optim::lr_at(s, 499), 1.5e-3 * (1 - 0.98 * 124 / 625));  // peak1 line
  EXPECT_DOUBLE_EQ(optim::lr_at(s, 500), 1e-3 * (1 - 0.98 * 125 / 625));    // drops to peak2 line
  EXPECT_DOUBLE_EQ(optim::lr_at(s, 999), 1e-3 * (1 - 0.98 * 624 / 625));
  EXPECT_DOUBLE_EQ(optim::lr_at(s, 1000), 1e-3 * (1 - 0.98));    // end value
  EXPECT_DOUBLE_EQ(optim::lr_at(s, 123456), 1e-3 * (1 - 0.98));  // clamps
  EXPECT_LT(optim::lr_at(s, 500), optim::lr_at(s, 499));
  // Monotone within each piece.
  for (int64_t t = 1; t < 1000; ++t) {
    if (t == 500) continue;
    if (t <= 375)
      EXPECT_GT(optim::lr_at(s, t), optim::lr_at(s, t - 1)) << t;
    else
      EXPECT_LT(optim::lr_at(s, t), optim::lr_at(s, t - 1)) << t;
  }
  // No warm-up: t = 0 is already at peak1. Switch at 0: the whole decay is on the peak2 line.
  optim::Schedule z = s;
  z.warmup = 0;
  EXPECT_DOUBLE_EQ(optim::lr_at(z, 0), 1.5e-3);
  z.switch_step = 0;
  EXPECT_DOUBLE_EQ(optim::lr_at(z, 0), 1e-3);
  // Switch at total: never switches.
  optim::Schedule n = s;
  n.switch_step = 1000;
  EXPECT_DOUBLE_EQ(optim::lr_at(n, 999), 1.5e-3 * (1 - 0.98 * 624 / 625));
  EXPECT_THROW(optim::lr_at(s, -1), Error);
}

TEST(Schedule, CosineAndConstantLr) {
  optim::Schedule s = paper_700m();
  s.lr_kind = optim::LrKind::Cosine;
  s.total = 1375;  // decay span 1000
  EXPECT_EQ(optim::lr_at(s, 0), 0.0);
  EXPECT_DOUBLE_EQ(optim::lr_at(s, 374), 1.5e-3 * 374 / 375);
  EXPECT_DOUBLE_EQ(optim::lr_at(s, 375), 1.5e-3);
  EXPECT_NEAR(optim::lr_at(s, 875), 1.5e-3 * (0.02 + 0.98 * 0.5), 1e-18);  // half way
  EXPECT_DOUBLE_EQ(optim::lr_at(s, 1374),
                   1.5e-3 * (0.02 + 0.98 * (1 + std::cos(std::numbers::pi * 999 / 1000)) / 2));
  EXPECT_DOUBLE_EQ(optim::lr_at(s, 1375), 1.5e-3 * 0.02);
  EXPECT_DOUBLE_EQ(optim::lr_at(s, 99999), 1.5e-3 * 0.02);
  // Cosine ignores peak2 and the switch.
  EXPECT_DOUBLE_EQ(optim::lr_at(s, 500),
                   1.5e-3 * (0.02 + 0.98 * (1 + std::cos(std::numbers::pi * 0.125)) / 2));

  s.lr_kind = optim::LrKind::Constant;
  EXPECT_EQ(optim::lr_at(s, 0), 0.0);
  EXPECT_DOUBLE_EQ(optim::lr_at(s, 374), 1.5e-3 * 374 / 375);
  EXPECT_EQ(optim::lr_at(s, 375), 1.5e-3);
  EXPECT_EQ(optim::lr_at(s, 500), 1.5e-3);
  EXPECT_EQ(optim::lr_at(s, 1374), 1.5e-3);
}

TEST(Schedule, WeightDecayAroundTheSwitch) {
  optim::Schedule s = paper_700m();
  s.wd2 = 0.03;
  // Two-stage: wd1 up to switch-1, wd2 from the switch on.
  EXPECT_EQ(optim::wd_at(s, 0), 0.1);
  EXPECT_EQ(optim::wd_at(s, 499), 0.1);
  EXPECT_EQ(optim::wd_at(s, 500), 0.03);
  EXPECT_EQ(optim::wd_at(s, 999), 0.03);
  EXPECT_EQ(optim::wd_at(s, 5000), 0.03);
  // Constant: wd1 throughout.
  s.wd_kind = optim::WdKind::Constant;
  for (int64_t t : {0, 499, 500, 999}) EXPECT_EQ(optim::wd_at(s, t), 0.1) << t;
  // Cosine (2B4T): wd1 (1 + cos(pi t / switch)) / 2 before the switch, then wd2.
  s.wd_kind = optim::WdKind::Cosine;
  EXPECT_EQ(optim::wd_at(s, 0), 0.1);
  EXPECT_NEAR(optim::wd_at(s, 250), 0.05, 1e-17);
  EXPECT_DOUBLE_EQ(optim::wd_at(s, 499), 0.1 * (1 + std::cos(std::numbers::pi * 499 / 500)) / 2);
  EXPECT_LT(optim::wd_at(s, 499), 1e-5);
  EXPECT_EQ(optim::wd_at(s, 500), 0.03);
  EXPECT_EQ(optim::wd_at(s, 999), 0.03);
  s.switch_step = 0;  // no stage 1
  EXPECT_EQ(optim::wd_at(s, 0), 0.03);
}

TEST(Schedule, ValidationNamesTheField) {
  const optim::Schedule ok = paper_700m();
  EXPECT_NO_THROW(optim::validate(ok));
  auto bad = [&](const std::function<void(optim::Schedule&)>& edit, const std::string& msg) {
    optim::Schedule s = ok;
    edit(s);
    expect_error([&] { optim::validate(s); }, msg);
    expect_error([&] { optim::lr_at(s, 0); }, msg);  // the formulas validate too
  };
  bad([](auto& s) { s.total = 0; }, "schedule.total: 0 must be >= 1");
  bad([](auto& s) { s.warmup = -1; }, "schedule.warmup: -1 must be >= 0");
  bad([](auto& s) { s.total = 400, s.warmup = 500, s.switch_step = 200; },
      "schedule.warmup: 500 must be < total 400");
  bad([](auto& s) { s.warmup = 1000; }, "schedule.warmup: 1000 must be < total 1000");
  bad([](auto& s) { s.switch_step = 1001; },
      "schedule.switch_step: 1001 must be in [0, total 1000]");
  bad([](auto& s) { s.switch_step = -5; }, "schedule.switch_step: -5 must be in [0, total 1000]");
  bad([](auto& s) { s.end_ratio = 1.5; }, "schedule.end_ratio: 1.5 must be in [0, 1]");
  bad([](auto& s) { s.end_ratio = -0.1; }, "schedule.end_ratio: -0.1 must be in [0, 1]");
  bad([](auto& s) { s.peak1 = -1e-3; }, "schedule.peak1: -0.001 must be finite and >= 0");
  bad([](auto& s) { s.peak2 = std::nan(""); }, "schedule.peak2: nan must be finite and >= 0");
  bad([](auto& s) { s.wd1 = -0.1; }, "schedule.wd1: -0.1 must be finite and >= 0");
  bad([](auto& s) { s.wd2 = INFINITY; }, "schedule.wd2: inf must be finite and >= 0");
  // Boundary values that are allowed.
  optim::Schedule e = ok;
  e.total = 1, e.warmup = 0, e.switch_step = 1, e.end_ratio = 1.0, e.peak2 = 0, e.wd1 = 0;
  EXPECT_NO_THROW(optim::validate(e));
  EXPECT_EQ(optim::lr_at(e, 0), 1.5e-3);
  expect_error([&] { optim::lr_at(ok, -3); }, "lr_at: step -3 must be >= 0");
  expect_error([&] { optim::wd_at(ok, -3); }, "wd_at: step -3 must be >= 0");
}

TEST(Schedule, ParseAndPrintKinds) {
  for (auto k : {optim::LrKind::TwoStage, optim::LrKind::Cosine, optim::LrKind::Constant})
    EXPECT_EQ(optim::parse_lr_kind(optim::to_string(k)), k);
  for (auto k : {optim::WdKind::TwoStage, optim::WdKind::Constant, optim::WdKind::Cosine})
    EXPECT_EQ(optim::parse_wd_kind(optim::to_string(k)), k);
  EXPECT_EQ(optim::to_string(optim::LrKind::TwoStage), "two-stage");
  expect_error(
      [] { optim::parse_lr_kind("linear"); },
      "schedule.lr_kind: unknown LR schedule 'linear' (allowed: two-stage, cosine, constant)");
  expect_error([] { optim::parse_wd_kind("Cosine"); },
               "schedule.wd_kind: unknown weight-decay schedule 'Cosine' (allowed: two-stage, "
               "constant, cosine)");
}
