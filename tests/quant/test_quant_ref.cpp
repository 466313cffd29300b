// Quantizer kernels vs. the PyTorch reference's outputs (tests/golden/quant_ref.safetensors):
// every value must be equal (==, so -0 equals +0), including the tie and edge rows.
#include <gtest/gtest.h>

#include <filesystem>

#include "autograd/safetensors.h"
#include "quant/quantizers.h"

using namespace autograd;

namespace {
std::vector<std::string> files() {
  std::vector<std::string> f{std::string(BITNET_SOURCE_DIR) +
                             "/tests/golden/quant_ref.safetensors"};
  const std::string fresh = std::string(BITNET_BINARY_DIR) + "/golden/quant_ref.safetensors";
  if (std::filesystem::exists(fresh)) f.push_back(fresh);
  return f;
}
int64_t mismatches(const Tensor& a, const Tensor& b, std::string* first) {
  int64_t n = 0;
  for (int64_t i = 0; i < a.numel(); ++i)
    if (!(a[i] == b[i])) {
      if (!n)
        *first = "elem " + std::to_string(i) + ": ours " + std::to_string(a[i]) + " ref " +
                 std::to_string(b[i]);
      ++n;
    }
  return n;
}
}  // namespace

TEST(QuantVsTorch, EveryKernelBitExact) {
  using quant::ActKind;
  using quant::ActSpec;
  for (const std::string& path : files()) {
    SCOPED_TRACE(path);
    const SafetensorsFile f = read_safetensors(path);
    const Tensor x = f.f32("quant.input");
    const int64_t R = x.dim(0), C = x.dim(1);
    struct Case {
      const char* key;
      ActSpec spec;
    };
    for (const Case& c :
         {Case{"quant.int8", {ActKind::Int8}}, Case{"quant.int4", {ActKind::Int4}},
          Case{"quant.int4x2", {ActKind::Int4, 0.0f, 2.0f}}, Case{"quant.fp4", {ActKind::Fp4}},
          Case{"quant.topk0.5", {ActKind::None, 0.5f}},
          Case{"quant.topk0.5+int8", {ActKind::Int8, 0.5f}},
          Case{"quant.topk0.5+fp4", {ActKind::Fp4, 0.5f}}}) {
      Tensor y = Tensor::empty(x.shape());
      quant::act_quantize(c.spec, x.data(), R, C, y.data(), nullptr, nullptr);
      std::string first;
      EXPECT_EQ(mismatches(y, f.f32(c.key), &first), 0) << c.key << ": " << first;
    }
    const Tensor w = f.f32("quant.weight");
    Tensor wq = Tensor::empty(w.shape());
    quant::ternary_absmean(w.data(), w.numel(), wq.data(), nullptr);
    std::string first;
    EXPECT_EQ(mismatches(wq, f.f32("quant.ternary"), &first), 0) << "ternary: " << first;
  }
}
