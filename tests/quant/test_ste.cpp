// STE nodes (docs/SPEC.md §4): straight-through backward, determinism, misuse, the PyTorch golden
// file.
#include "tests/quant/quant_helpers.h"

// ---- STE tape nodes ---------------------------------------------------------------------------

namespace {
Tensor randn_tensor(const Shape& s, uint64_t seed) {
  auto v = gaussian(s.numel(), seed);
  return Tensor::from(s, v);
}
}  // namespace

TEST(Ste, ActQuantBackwardIsExactlyTheIdentity) {
  const Shape shape{3, 5, 37};
  for (ActSpec spec :
       {ActSpec{ActKind::Int8, 0, 1}, ActSpec{ActKind::Int4, 0, 1}, ActSpec{ActKind::Int4, 0, 2},
        ActSpec{ActKind::Fp4, 0, 1}, ActSpec{ActKind::Int8, 0.5f, 1},
        ActSpec{ActKind::Fp4, 0.5f, 1}, ActSpec{ActKind::None, 0.5f, 1}}) {
    Variable x(randn_tensor(shape, 90), true);
    Tensor seed = randn_tensor(shape, 91);
    seed[3] = 0.0f;  // a zero gradient passes through as well
    autograd::Tape tape;
    {
      autograd::TapeScope scope(tape);
      Variable y = act_quant(x, spec);
      ASSERT_EQ(y.shape(), shape);
      ASSERT_TRUE(y.requires_grad());
      // forward equals the kernel
      std::vector<float> want(size_t(shape.numel()));
      act_quantize(spec, x.data(), shape.rows(), shape.back(), want.data(), nullptr, nullptr);
      EXPECT_TRUE(bit_equal(y.data(), want.data(), shape.numel())) << to_string(spec);
      tape.backward(y, seed);
    }
    ASSERT_TRUE(x.grad().defined());
    EXPECT_TRUE(bit_equal(x.grad().data(), seed.data(), shape.numel())) << to_string(spec);
  }
}

TEST(Ste, GradientsAccumulateOverUses) {
  const Shape shape{4, 16};
  Variable x(randn_tensor(shape, 92), true);
  Tensor seed = randn_tensor(shape, 93);
  autograd::Tape tape;
  {
    autograd::TapeScope scope(tape);
    Variable y =
        autograd::add(act_quant(x, {ActKind::Int4, 0, 1}), act_quant(x, {ActKind::Int8, 0.5f, 1}));
    tape.backward(y, seed);
  }
  for (int64_t i = 0; i < shape.numel(); ++i) ASSERT_EQ(x.grad()[i], seed[i] + seed[i]);
}

TEST(Ste, TernaryBackwardIsExactlyTheIdentity) {
  const Shape shape{6, 33};
  Variable w(randn_tensor(shape, 94), true);
  Tensor seed = randn_tensor(shape, 95);
  autograd::Tape tape;
  float a = 0;
  {
    autograd::TapeScope scope(tape);
    Variable wq = ternary(w, &a);
    std::vector<float> want(size_t(shape.numel()));
    EXPECT_EQ(ternary_absmean(w.data(), shape.numel(), want.data(), nullptr), a);
    EXPECT_TRUE(bit_equal(wq.data(), want.data(), shape.numel()));
    tape.backward(wq, seed);
  }
  EXPECT_TRUE(bit_equal(w.grad().data(), seed.data(), shape.numel()));
}

TEST(Ste, InactiveSpecReturnsTheInputAndCountsItsZeros) {
  Tensor t = randn_tensor(Shape{2, 8}, 96);
  t[1] = 0.0f;
  t[9] = -0.0f;
  Variable x(t, true);
  autograd::Tape tape;
  autograd::TapeScope scope(tape);
  int64_t z = 5;
  Variable y = act_quant(x, ActSpec{}, &z);
  EXPECT_TRUE(y.same(x));
  EXPECT_EQ(tape.size(), 0u);
  EXPECT_EQ(z, 7);
}

TEST(Ste, ZeroHookAddsTheOutputZeros) {
  Variable x(randn_tensor(Shape{5, 64}, 97), false);
  int64_t z = 10;
  Variable y = act_quant(x, {ActKind::Int8, 0.5f, 1}, &z);
  const auto v = y.value().to_vector();
  EXPECT_EQ(z, 10 + std::count(v.begin(), v.end(), 0.0f));
  EXPECT_GE(z, 10 + 5 * 32);  // top-K alone zeroes half of each row
  EXPECT_FALSE(y.requires_grad()) << "no tape, no node";
}

// ---- determinism ------------------------------------------------------------------------------

TEST(Determinism, RepeatableAndIndependentOfThreadCount) {
  const int64_t rows = 257, cols = 1000;
  auto x = gaussian_rows(rows, cols, 98);
  const int saved = omp_get_max_threads();
  auto run_all = [&] {
    std::vector<float> out;
    auto take = [&](const std::vector<float>& v) { out.insert(out.end(), v.begin(), v.end()); };
    std::vector<float> y(x.size()), sc(static_cast<size_t>(rows));
    for (ActSpec spec : {ActSpec{ActKind::Int8, 0.5f, 1}, ActSpec{ActKind::Int4, 0, 1},
                         ActSpec{ActKind::Fp4, 0.5f, 1}}) {
      act_quantize(spec, x.data(), rows, cols, y.data(), nullptr, sc.data());
      take(y);
      take(sc);
    }
    const float a = ternary_absmean(x.data(), rows * cols, y.data(), nullptr);
    take(y);
    out.push_back(a);
    return out;
  };
  omp_set_num_threads(2);
  const auto r2 = run_all(), r2b = run_all();
  omp_set_num_threads(1);
  const auto r1 = run_all();
  omp_set_num_threads(3);
  const auto r3 = run_all();
  omp_set_num_threads(saved);
  EXPECT_TRUE(bit_equal(r2, r2b));
  EXPECT_TRUE(bit_equal(r1, r2));
  EXPECT_TRUE(bit_equal(r3, r2));
}

// ---- misuse -----------------------------------------------------------------------------------

TEST(Misuse, ThrowsNamingTheOp) {
  std::vector<float> x(16, 1.0f), y(16);
  std::vector<uint8_t> u(16);
  expect_error([&] { int8_absmax(x.data(), 2, 0, y.data(), nullptr, nullptr); }, "int8_absmax");
  expect_error([&] { int4_absmean(x.data(), -1, 4, y.data(), nullptr, nullptr); }, "int4_absmean");
  expect_error([&] { int4_absmean(x.data(), 2, 8, y.data(), nullptr, nullptr, 0.0f); },
               "int4_absmean");
  expect_error([&] { fp4_minmax(nullptr, 2, 8, y.data(), nullptr, nullptr); }, "fp4_minmax");
  expect_error([&] { fp4_value(16); }, "fp4_value");
  expect_error([&] { uint_absmax(x.data(), 2, 8, 1, y.data(), u.data(), nullptr); }, "uint_absmax");
  expect_error([&] { uint_absmax(x.data(), 2, 8, 9, y.data(), u.data(), nullptr); }, "uint_absmax");
  expect_error([&] { topk_rows(x.data(), 2, 8, 0.0f, y.data()); }, "topk_rows");
  expect_error([&] { topk_rows(x.data(), 2, 8, 1.5f, y.data()); }, "topk_rows");
  expect_error([&] { ternary_absmean(x.data(), 0, y.data(), nullptr); }, "ternary_absmean");
  expect_error(
      [&] {
        act_quantize({ActKind::Int8, 2.0f, 1}, x.data(), 2, 8, y.data(), nullptr, nullptr);
      },
      "act_quantize");
  expect_error(
      [&] {
        act_quantize({ActKind::Int8, -0.5f, 1}, x.data(), 2, 8, y.data(), nullptr, nullptr);
      },
      "act_quantize");
  expect_error(
      [&] {
        act_quant(Variable(Tensor::full(Shape{}, 1.0f)), {ActKind::Int8, 0, 1});
      },
      "act_quant");
  expect_error([&] { act_quant(Variable(), {ActKind::Int8, 0, 1}); }, "act_quant");
  expect_error([&] { ternary(Variable()); }, "ternary");
  try {
    act_quant(Variable(Tensor::zeros(Shape{3, 0})), {ActKind::Int8, 0, 1});
    ADD_FAILURE() << "expected a shape error";
  } catch (const autograd::Error& e) {
    EXPECT_NE(std::string(e.what()).find("[3, 0]"), std::string::npos) << e.what();
  }
}

// ---- PyTorch golden (tests/reference/bitnet_ref.py) -------------------------------------------

TEST(Golden, MatchesThePyTorchReferenceBitForBit) {
  const std::string path = std::string(BITNET_SOURCE_DIR) + "/tests/golden/quant_ref.safetensors";
  const auto f = autograd::read_safetensors(path);
  const Tensor x = f.f32("quant.input"), w = f.f32("quant.weight");
  const int64_t rows = x.dim(0), cols = x.dim(1);
  struct Case {
    const char* name;
    ActSpec spec;
  };
  for (Case c :
       {Case{"quant.int8", {ActKind::Int8, 0, 1}}, Case{"quant.int4", {ActKind::Int4, 0, 1}},
        Case{"quant.int4x2", {ActKind::Int4, 0, 2}}, Case{"quant.fp4", {ActKind::Fp4, 0, 1}},
        Case{"quant.topk0.5", {ActKind::None, 0.5f, 1}},
        Case{"quant.topk0.5+int8", {ActKind::Int8, 0.5f, 1}},
        Case{"quant.topk0.5+fp4", {ActKind::Fp4, 0.5f, 1}}}) {
    const Tensor want = f.f32(c.name);
    ASSERT_EQ(want.shape(), x.shape());
    std::vector<float> y(size_t(x.numel()));
    act_quantize(c.spec, x.data(), rows, cols, y.data(), nullptr, nullptr);
    int64_t diff = 0;
    for (int64_t i = 0; i < x.numel(); ++i)
      if (std::bit_cast<uint32_t>(y[size_t(i)]) != std::bit_cast<uint32_t>(want[i])) {
        if (diff++ < 5)
          ADD_FAILURE() << c.name << " element " << i << " (row " << i / cols << "): got "
                        << y[size_t(i)] << " want " << want[i];
      }
    EXPECT_EQ(diff, 0) << c.name;
  }
  const Tensor want = f.f32("quant.ternary");
  std::vector<float> wq(size_t(w.numel()));
  ternary_absmean(w.data(), w.numel(), wq.data(), nullptr);
  EXPECT_TRUE(bit_equal(wq.data(), want.data(), w.numel()));
}
