// Shared helpers of the optimizer tests: tiny modules, the torch golden files, ulps, error checks.
#pragma once

#include <gtest/gtest.h>
#include <omp.h>

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <functional>
#include <limits>
#include <memory>
#include <numbers>
#include <string>
#include <vector>

#include "autograd/error.h"
#include "autograd/random.h"
#include "autograd/safetensors.h"
#include "nn/module.h"
#include "optim/adamw.h"
#include "optim/schedule.h"

using autograd::Error;
using autograd::SafetensorsFile;
using autograd::Shape;
using autograd::Tensor;
namespace fs = std::filesystem;

namespace {

const char* kEmbed = "model.embed_tokens.weight";
const std::vector<std::string> kNames = {"w", "g", kEmbed};
constexpr int kSteps = 6;

// The reference's three parameters: a decayed matrix, a gain, an (undecayed) embedding.
class Tiny : public nn::Module {
 public:
  Tiny() {
    register_parameter("w", Shape{7, 5}, nn::Init::Normal, true);
    register_parameter("g", Shape{5}, nn::Init::Ones, false);
    register_parameter(kEmbed, Shape{11, 3}, nn::Init::Normal, false);
  }
};

// Parameters of the given sizes and decay flags, named p0, p1, ...
class Blocks : public nn::Module {
 public:
  Blocks(const std::vector<int64_t>& sizes, const std::vector<bool>& decay) {
    for (size_t i = 0; i < sizes.size(); ++i)
      register_parameter(
          std::string("p").append(std::to_string(i)), Shape{sizes[i]}, nn::Init::Normal,
          decay[i]);  // (not "p" + ...: GCC 12 -Wrestrict false positive once inlined)
  }
};

// Committed golden file, plus the one regenerated into the build tree when present.
inline std::vector<std::string> golden_files() {
  std::vector<std::string> f{std::string(BITNET_SOURCE_DIR) +
                             "/tests/golden/adamw_ref.safetensors"};
  const std::string fresh = std::string(BITNET_BINARY_DIR) + "/golden/adamw_ref.safetensors";
  if (fs::exists(fresh)) f.push_back(fresh);
  return f;
}

// The schedule adamw_ref.py uses (SCHEDULE there).
inline optim::Schedule golden_schedule() {
  optim::Schedule s;
  s.lr_kind = optim::LrKind::TwoStage;
  s.peak1 = 2e-2, s.peak2 = 1.2e-2, s.warmup = 2, s.total = 6, s.switch_step = 3, s.end_ratio = 0.1;
  s.wd_kind = optim::WdKind::TwoStage;
  s.wd1 = 0.1, s.wd2 = 0.02;
  return s;
}

// Distance in units in the last place between two finite floats.
inline int64_t ulps(float a, float b) {
  auto key = [](float x) {
    int32_t i;
    std::memcpy(&i, &x, 4);
    return i < 0 ? int64_t(INT32_MIN) - i : int64_t(i);
  };
  return std::llabs(key(a) - key(b));
}

// Agreement of n floats with a reference: max|a - ref| / max|ref|, max ulp distance, exact count.
struct Agreement {
  double rel = 0;
  int64_t max_ulp = 0, exact = 0, total = 0;
  void add(const float* a, const float* ref, int64_t n) {
    double md = 0, mr = 0;
    for (int64_t i = 0; i < n; ++i) {
      md = std::max(md, double(std::abs(a[i] - ref[i])));
      mr = std::max(mr, double(std::abs(ref[i])));
      max_ulp = std::max(max_ulp, ulps(a[i], ref[i]));
      exact += a[i] == ref[i];
    }
    rel = std::max(rel, md / std::max(mr, 1e-30));
    total += n;
  }
};

inline void load_values(nn::ParameterSet& ps, const SafetensorsFile& f, const std::string& prefix,
                        const Tensor& dst) {
  for (const auto& e : ps.entries()) {
    const Tensor t = f.f32(prefix + e.name);
    ASSERT_EQ(t.shape(), e.var.shape()) << e.name;
    std::memcpy(dst.data() + e.offset, t.data(), size_t(e.numel) * 4);
  }
}

// Runs `fn` and checks it throws autograd::Error with exactly `msg`.
inline void expect_error(const std::function<void()>& fn, const std::string& msg) {
  try {
    fn();
    ADD_FAILURE() << "no exception, expected: " << msg;
  } catch (const Error& e) {
    EXPECT_EQ(std::string(e.what()), msg);
  }
}

}  // namespace
