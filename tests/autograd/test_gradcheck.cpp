// Gradient checks of every autograd op (central differences, one harness, per-op tolerances).
#include <gtest/gtest.h>

#include <cmath>

#include "autograd/gradcheck.h"
#include "autograd/ops.h"
#include "autograd/random.h"

using namespace autograd;

namespace {

Variable rv(const Shape& s, uint64_t seed, float std = 1.0f) {
  return Variable(randn(s, seed, std), true);
}
// Random values at least `gap` away from 0 (for ops with a kink at 0).
Variable away_from_zero(const Shape& s, uint64_t seed, float gap = 0.05f) {
  Tensor t = randn(s, seed);
  for (int64_t i = 0; i < t.numel(); ++i) t[i] += t[i] >= 0 ? gap : -gap;
  return Variable(t, true);
}
std::vector<int32_t> rand_ids(int64_t n, int64_t v, uint64_t seed) {
  Rng r(seed);
  std::vector<int32_t> ids(static_cast<size_t>(n));
  for (auto& i : ids) i = int32_t(r.below(uint64_t(v)));
  return ids;
}

void expect_ok(const std::string& op, const GradFn& f, const std::vector<Variable>& in,
               GradCheckOptions opt = {}) {
  GradCheckResult r = gradcheck(op, f, in, opt);
  EXPECT_TRUE(r.ok) << r.report;
}

}  // namespace

// Shapes cover size 1, odd sizes and lengths that are not multiples of 8.
TEST(GradCheck, ElementwiseBinary) {
  for (const Shape& s : {Shape{1}, Shape{3, 7}, Shape{2, 5, 13}}) {
    expect_ok("add", [](auto& v) { return add(v[0], v[1]); }, {rv(s, 1), rv(s, 2)});
    expect_ok("sub", [](auto& v) { return sub(v[0], v[1]); }, {rv(s, 3), rv(s, 4)});
    expect_ok("mul", [](auto& v) { return mul(v[0], v[1]); }, {rv(s, 5), rv(s, 6)});
    const Shape row{s.back()};  // row broadcast
    expect_ok("add_bcast", [](auto& v) { return add(v[0], v[1]); }, {rv(s, 7), rv(row, 8)});
    expect_ok("sub_bcast", [](auto& v) { return sub(v[0], v[1]); }, {rv(s, 9), rv(row, 10)});
    expect_ok("mul_bcast", [](auto& v) { return mul(v[0], v[1]); }, {rv(s, 11), rv(row, 12)});
  }
}

TEST(GradCheck, ElementwiseUnary) {
  for (const Shape& s : {Shape{1}, Shape{4, 9}, Shape{3, 2, 11}}) {
    expect_ok("scale", [](auto& v) { return scale(v[0], -1.7f); }, {rv(s, 1)});
    expect_ok("relu", [](auto& v) { return relu(v[0]); }, {away_from_zero(s, 2)});
    expect_ok("relu2", [](auto& v) { return relu2(v[0]); }, {away_from_zero(s, 3)});
    expect_ok("silu", [](auto& v) { return silu(v[0]); }, {rv(s, 4)});
    expect_ok("relu2_mul", [](auto& v) { return relu2_mul(v[0], v[1]); },
              {away_from_zero(s, 5), rv(s, 6)});
  }
}

TEST(GradCheck, Reductions) {
  for (const Shape& s : {Shape{1}, Shape{5, 3}, Shape{2, 3, 7}}) {
    expect_ok("sum", [](auto& v) { return sum(v[0]); }, {rv(s, 1)});
    expect_ok("mean", [](auto& v) { return mean(v[0]); }, {rv(s, 2)});
  }
}

TEST(GradCheck, Matmul) {
  struct C {
    Shape a, b;
    bool ta, tb;
  };
  for (const C& c : {C{{1, 1}, {1, 1}, false, false}, C{{5, 7}, {7, 3}, false, false},
                     C{{7, 5}, {7, 3}, true, false}, C{{5, 7}, {3, 7}, false, true},
                     C{{7, 5}, {3, 7}, true, true}, C{{2, 3, 7}, {9, 7}, false, true},
                     C{{3, 4, 5}, {3, 5, 2}, false, false}, C{{3, 5, 4}, {3, 2, 5}, true, true}}) {
    expect_ok("matmul", [&](auto& v) { return matmul(v[0], v[1], c.ta, c.tb); },
              {rv(c.a, 1), rv(c.b, 2)});
  }
}

TEST(GradCheck, ShapeOps) {
  expect_ok("reshape", [](auto& v) { return reshape(v[0], Shape{3, 2, 5}); }, {rv(Shape{6, 5}, 1)});
  for (auto [d0, d1] : {std::pair{0, 1}, std::pair{1, 2}, std::pair{0, 3}, std::pair{-1, -3}})
    expect_ok("transpose", [d0 = d0, d1 = d1](auto& v) { return transpose(v[0], d0, d1); },
              {rv(Shape{2, 3, 5, 7}, 2)});
  for (int dim : {0, 1, 2})
    expect_ok("slice", [dim](auto& v) { return slice(v[0], dim, 1, 3); }, {rv(Shape{4, 5, 3}, 3)});
  expect_ok("slice_size1", [](auto& v) { return slice(v[0], 0, 0, 1); }, {rv(Shape{1, 3}, 4)});
  for (int dim : {0, 1, -1})
    expect_ok("concat",
              [dim](auto& v) {
                return concat({v[0], v[1], v[0]}, dim);
              },
              {rv(Shape{3, 3, 3}, 5), rv(Shape{3, 3, 3}, 6)});
  expect_ok("concat_uneven",
            [](auto& v) {
              return concat({v[0], v[1]}, 1);
            },
            {rv(Shape{2, 1, 3}, 7), rv(Shape{2, 4, 3}, 8)});
}

TEST(GradCheck, Embedding) {
  for (int64_t n : {1, 13}) {
    auto ids = rand_ids(n, 7, 3);  // repeated ids exercise the scatter-add
    expect_ok("embedding", [ids](auto& v) { return embedding(v[0], ids); }, {rv(Shape{7, 5}, 1)});
  }
}

TEST(GradCheck, RMSNorm) {
  for (const Shape& s : {Shape{1, 1}, Shape{5, 12}, Shape{2, 3, 100}}) {
    Variable g(Tensor::full(Shape{s.back()}, 1.0f), true);
    Tensor gv = randn(Shape{s.back()}, 9, 0.3f);
    for (int64_t i = 0; i < gv.numel(); ++i) g.value()[i] += gv[i];
    expect_ok("rmsnorm", [](auto& v) { return rmsnorm(v[0], v[1], 1e-5f); }, {rv(s, 1), g});
  }
}

TEST(GradCheck, Softmax) {
  for (const Shape& s : {Shape{1, 1}, Shape{3, 9}, Shape{2, 2, 17}})
    expect_ok("softmax", [](auto& v) { return softmax(v[0]); }, {rv(s, 1)});
}

TEST(GradCheck, Rope) {
  for (const Shape& s : {Shape{1, 1, 1, 2}, Shape{2, 3, 7, 12}, Shape{1, 2, 5, 100}})
    for (int64_t pos0 : {0, 5})
      expect_ok("rope", [pos0](auto& v) { return rope(v[0], 10000.0f, pos0); }, {rv(s, 1)});
  expect_ok("rope_theta", [](auto& v) { return rope(v[0], 500000.0f); },
            {rv(Shape{1, 2, 9, 8}, 2)});
}

TEST(GradCheck, CausalAttention) {
  struct C {
    int64_t B, H, Hkv, T, hd;
  };
  for (const C& c :
       {C{1, 1, 1, 1, 1}, C{2, 4, 4, 7, 8}, C{1, 4, 2, 9, 12}, C{1, 2, 1, 5, 100},
        C{2, 6, 3, 11, 5}, C{1, 2, 1, 150, 4}}) {  // last: 3 causal blocks (64, 64, 22)
    GradCheckOptions o;
    o.max_elems = 64;
    expect_ok(
        "causal_attention", [](auto& v) { return causal_attention(v[0], v[1], v[2]); },
        {rv(Shape{c.B, c.H, c.T, c.hd}, 1), rv(Shape{c.B, c.Hkv, c.T, c.hd}, 2),
         rv(Shape{c.B, c.Hkv, c.T, c.hd}, 3)},
        o);
  }
}

TEST(GradCheck, CrossEntropy) {
  for (int64_t n : {1, 9}) {
    auto t = rand_ids(n, 11, 4);
    expect_ok("cross_entropy", [t](auto& v) { return cross_entropy(v[0], t); },
              {rv(Shape{n, 11}, 1)});
  }
  std::vector<int32_t> t = {3, -100, 0, -100, 10};  // ignore_index rows get no gradient
  expect_ok("cross_entropy_ignore", [t](auto& v) { return cross_entropy(v[0], t); },
            {rv(Shape{5, 11}, 2)});
}

TEST(GradCheck, LinearCrossEntropy) {
  // chunk_elements 9 with N 4: 2 vocabulary rows per chunk (7 = 2+2+2+1); 1000: one chunk
  std::vector<int32_t> t = {3, -100, 0, 6};
  for (int64_t chunk : {int64_t(9), int64_t(4), int64_t(1000)})
    expect_ok("linear_cross_entropy",
              [t, chunk](auto& v) { return linear_cross_entropy(v[0], v[1], t, -100, chunk); },
              {rv(Shape{4, 5}, 1), rv(Shape{7, 5}, 2)});
}

TEST(GradCheck, Composite) {
  // A chain through several ops at once: the errors of individual backward passes compound.
  auto f = [](auto& v) {
    Variable h = rmsnorm(linear(v[0], v[1]), v[2], 1e-5f);
    return softmax(mul(silu(h), h));
  };
  expect_ok("composite", f, {rv(Shape{6, 10}, 1), rv(Shape{7, 10}, 2, 0.3f), rv(Shape{7}, 3)});
}

// The harness itself must catch a wrong backward: an op whose backward doubles the gradient.
namespace {
struct WrongScaleNode final : Node {
  Variable a;
  explicit WrongScaleNode(Variable x) : a(x) {}
  const char* name() const override { return "wrong"; }
  void backward() override {
    Tensor& g = a.grad_accum();
    for (int64_t i = 0; i < g.numel(); ++i) g[i] += 2.0f * out.grad()[i];  // should be 1x
  }
};
Variable wrong_identity(const Variable& a) {
  Tensor y = a.value().clone();
  if (Tape* t = recording({&a})) {
    auto& n = t->record<WrongScaleNode>(a);
    return n.set_output(y);
  }
  return Variable(y);
}
}  // namespace

TEST(GradCheck, HarnessCatchesWrongBackward) {
  GradCheckResult r =
      gradcheck("wrong", [](auto& v) { return wrong_identity(v[0]); }, {rv(Shape{4, 5}, 1)});
  EXPECT_FALSE(r.ok) << r.report;
  EXPECT_NE(r.report.find("FAIL"), std::string::npos);
}
