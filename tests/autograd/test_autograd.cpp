// Tape semantics: accumulation, skipping, no-grad, release, reuse, determinism, errors, toy MLP.
#include <gtest/gtest.h>
#include <omp.h>

#include <cmath>
#include <cstring>

#include "autograd/error.h"
#include "autograd/gradcheck.h"
#include "autograd/ops.h"
#include "autograd/random.h"

using namespace autograd;

namespace {
Variable param(const Shape& s, uint64_t seed, float std = 1.0f) {
  return Variable(randn(s, seed, std), true);
}
bool bit_equal(const Tensor& a, const Tensor& b) {
  return a.numel() == b.numel() && std::memcmp(a.data(), b.data(), size_t(a.numel()) * 4) == 0;
}
}  // namespace

TEST(Tape, GradientsAccumulateAcrossUsesAndBackwards) {
  Variable x = param(Shape{3}, 1);
  Tape tape;
  {
    TapeScope s(tape);
    Variable y = sum(add(x, x));  // dy/dx = 2
    tape.backward(y);
  }
  for (int i = 0; i < 3; ++i) EXPECT_FLOAT_EQ(x.grad()[i], 2.0f);
  {
    TapeScope s(tape);
    tape.backward(sum(x));  // accumulates +1
  }
  for (int i = 0; i < 3; ++i) EXPECT_FLOAT_EQ(x.grad()[i], 3.0f);
}

TEST(Tape, SkipsInputsWithoutGradAndUnreachedNodes) {
  Variable x = param(Shape{2, 2}, 2), c = Variable(randn(Shape{2, 2}, 3));
  Tape tape;
  TapeScope s(tape);
  Variable unused = mul(x, x);  // recorded but not on the path to the loss
  Variable loss = sum(mul(x, c));
  EXPECT_EQ(tape.size(), 3u);
  tape.backward(loss);
  EXPECT_FALSE(c.grad().defined());  // constant never gets a gradient buffer
  EXPECT_FALSE(unused.grad().defined());
  for (int i = 0; i < 4; ++i) EXPECT_FLOAT_EQ(x.grad()[i], c.value()[i]);
}

TEST(Tape, NoGradGuardRecordsNothing) {
  Variable x = param(Shape{4}, 4);
  Tape tape;
  TapeScope s(tape);
  {
    NoGradGuard ng;
    Variable y = relu(x);
    EXPECT_FALSE(y.requires_grad());
  }
  EXPECT_EQ(tape.size(), 0u);
  Variable y = relu(x);
  EXPECT_TRUE(y.requires_grad());
  EXPECT_EQ(tape.size(), 1u);
}

TEST(Tape, NoTapeMeansNoRecording) {
  Variable x = param(Shape{4}, 4);
  Variable y = relu(x);
  EXPECT_FALSE(y.requires_grad());
}

TEST(Tape, BackwardReleasesSavedTensorsAndReusesArena) {
  Variable x = param(Shape{64, 64}, 5);
  Tape tape;
  size_t arena = 0;
  for (int step = 0; step < 3; ++step) {
    TapeScope s(tape);
    Variable h = x;
    for (int i = 0; i < 50; ++i) h = softmax(h);
    Variable y = sum(h);
    EXPECT_EQ(tape.size(), 51u);
    std::weak_ptr<Storage> saved = h.value().storage();
    h = Variable();
    tape.backward(y);
    EXPECT_EQ(tape.size(), 0u);
    EXPECT_TRUE(saved.expired()) << "saved activation still alive after backward";
    if (step == 0) arena = tape.arena_bytes();
    EXPECT_EQ(tape.arena_bytes(), arena) << "arena grew on step " << step;
  }
}

TEST(Tape, BackwardOfNonScalarNeedsSeed) {
  Variable x = param(Shape{3}, 6);
  Tape tape;
  TapeScope s(tape);
  Variable y = relu(x);
  EXPECT_THROW(tape.backward(y), Error);
  EXPECT_THROW(tape.backward(y, Tensor::zeros(Shape{4})), Error);
}

TEST(Errors, ShapeMismatchNamesOpAndBothShapes) {
  Variable a = param(Shape{2, 3}, 7), b = param(Shape{4, 5}, 8);
  auto msg = [](auto&& f) {
    try {
      f();
    } catch (const Error& e) {
      return std::string(e.what());
    }
    return std::string("no throw");
  };
  std::string m = msg([&] { matmul(a, b); });
  EXPECT_NE(m.find("matmul"), std::string::npos) << m;
  EXPECT_NE(m.find("[2, 3]"), std::string::npos) << m;
  EXPECT_NE(m.find("[4, 5]"), std::string::npos) << m;
  m = msg([&] { add(a, b); });
  EXPECT_NE(m.find("add"), std::string::npos) << m;
  EXPECT_NE(m.find("[4, 5]"), std::string::npos) << m;
  m = msg([&] { rmsnorm(a, param(Shape{4}, 1), 1e-5f); });
  EXPECT_NE(m.find("rmsnorm"), std::string::npos) << m;
  m = msg([&] {
    causal_attention(param(Shape{1, 3, 4, 8}, 1), param(Shape{1, 2, 4, 8}, 2),
                     param(Shape{1, 2, 4, 8}, 3));
  });
  EXPECT_NE(m.find("causal_attention"), std::string::npos) << m;
  EXPECT_NE(m.find("[1, 3, 4, 8]"), std::string::npos) << m;
  const int32_t bad[] = {0, 9};
  m = msg([&] { embedding(param(Shape{5, 2}, 1), bad); });
  EXPECT_NE(m.find("token id 9"), std::string::npos) << m;
  m = msg([&] { cross_entropy(a, std::vector<int32_t>{0}); });
  EXPECT_NE(m.find("cross_entropy"), std::string::npos) << m;
}

// One forward+backward of a small transformer-ish graph; returns loss and all gradients.
static std::vector<Tensor> run_graph(int threads) {
  omp_set_num_threads(threads);
  const int64_t B = 2, H = 4, T = 33, hd = 20, D = H * hd, V = 50;
  Variable x = param(Shape{B * T, D}, 11), w = param(Shape{3 * D, D}, 12, 0.1f),
           g = param(Shape{D}, 13), head = param(Shape{V, D}, 14, 0.1f);
  std::vector<int32_t> tgt(size_t(B * T));
  Rng rng(15);
  for (auto& t : tgt) t = int32_t(rng.below(V));
  Tape tape;
  TapeScope s(tape);
  Variable qkv = linear(rmsnorm(x, g, 1e-5f), w);
  auto part = [&](int i) {
    return transpose(reshape(slice(qkv, 1, i * D, (i + 1) * D), Shape{B, T, H, hd}), 1, 2);
  };
  Variable o = causal_attention(rope(part(0), 10000.f), rope(part(1), 10000.f), part(2));
  o = reshape(transpose(o, 1, 2), Shape{B * T, D});
  Variable loss = cross_entropy(linear(relu2(o), head), tgt);
  std::vector<Tensor> out{loss.value().clone()};
  tape.backward(loss);
  for (auto* v : {&x, &w, &g, &head}) out.push_back(v->grad().clone());
  return out;
}

TEST(Determinism, BitIdenticalRunToRun) {
  const int nt = omp_get_max_threads();
  auto a = run_graph(2), b = run_graph(2);
  ASSERT_EQ(a.size(), b.size());
  for (size_t i = 0; i < a.size(); ++i) EXPECT_TRUE(bit_equal(a[i], b[i])) << "tensor " << i;
  omp_set_num_threads(nt);
}

// A two-layer MLP built from the ops learns XOR with plain gradient descent.
TEST(Toy, MlpLearnsXor) {
  Variable w1 = param(Shape{8, 2}, 21, 1.0f), b1 = Variable(Tensor::zeros(Shape{8}), true),
           w2 = param(Shape{2, 8}, 22, 0.5f), b2 = Variable(Tensor::zeros(Shape{2}), true);
  Variable X(Tensor::from(Shape{4, 2}, {0, 0, 0, 1, 1, 0, 1, 1}));
  const std::vector<int32_t> y = {0, 1, 1, 0};
  Tape tape;
  float loss_v = 1e9f;
  for (int step = 0; step < 1500; ++step) {
    {
      TapeScope s(tape);
      Variable h = silu(add(linear(X, w1), b1));
      Variable loss = cross_entropy(add(linear(h, w2), b2), y);
      loss_v = loss.value()[0];
      tape.backward(loss);
    }
    NoGradGuard ng;
    for (auto* p : {&w1, &b1, &w2, &b2}) {
      for (int64_t i = 0; i < p->numel(); ++i) p->data()[i] -= 0.5f * p->grad()[i];
      p->grad().zero_();
    }
  }
  EXPECT_LT(loss_v, 0.05f);
}

// Found by the CUDA op tests: add/mul of two rank-0 tensors (a loss plus a regulariser) read the
// broadcast width of a shape with no dims and threw.
TEST(Ops, ScalarOperandsAddAndMultiply) {
  Tape tape;
  Variable a(Tensor::full(Shape{}, 2.0f), true), b(Tensor::full(Shape{}, 3.0f), true);
  Variable y;
  {
    TapeScope scope(tape);
    y = add(mul(a, b), b);  // y = ab + b
    tape.backward(y);
  }
  EXPECT_EQ(y.value()[0], 9.0f);
  EXPECT_EQ(a.grad()[0], 3.0f);  // dy/da = b
  EXPECT_EQ(b.grad()[0], 3.0f);  // dy/db = a + 1
}

// The fused LM head + loss: one vocabulary chunk is cross_entropy(linear(x, w)) bit for bit;
// several chunks (uneven last one, one row per chunk) agree to fp32 rounding; w also used
// elsewhere (a tied embedding) accumulates both gradients.
TEST(LinearCrossEntropy, MatchesTheUnfusedHeadAndLoss) {
  const int64_t N = 37, D = 24, V = 101;
  std::vector<int32_t> tgt(static_cast<size_t>(N));
  Rng rng(7);
  for (auto& t : tgt) t = int32_t(rng.below(V));
  tgt[3] = tgt[20] = -100;
  tgt[5] = 0, tgt[6] = int32_t(V - 1);
  auto run = [&](int64_t chunk) {  // chunk 0: the unfused ops
    Variable x = param(Shape{N, D}, 1), w = param(Shape{V, D}, 2, 0.2f);
    Tape tape;
    TapeScope s(tape);
    Variable loss =
        chunk ? linear_cross_entropy(x, w, tgt, -100, chunk) : cross_entropy(linear(x, w), tgt);
    Variable total = add(loss, mean(w));  // w used twice
    tape.backward(total);
    return std::vector<Tensor>{loss.value().clone(), x.grad().clone(), w.grad().clone()};
  };
  const auto ref = run(0);
  const auto one = run(N * V);
  for (size_t i = 0; i < ref.size(); ++i) EXPECT_TRUE(bit_equal(one[i], ref[i])) << "tensor " << i;
  for (int64_t chunk : {N * 30, N * 8, N}) {  // 30+30+30+11, 8 x 12 + 5, 101 chunks of 1
    const auto got = run(chunk);
    for (size_t i = 0; i < ref.size(); ++i)
      for (int64_t j = 0; j < ref[i].numel(); ++j)
        ASSERT_NEAR(got[i][j], ref[i][j], 2e-6f * (1 + std::fabs(ref[i][j])))
            << "chunk " << chunk << " tensor " << i << " at " << j;
  }
  EXPECT_GT(ref[0][0], 3.0f);  // ~log(101) at init: a real loss, not 0
}

TEST(LinearCrossEntropy, RefusesBadOperandsNamingThem) {
  auto msg = [](auto&& f) -> std::string {
    try {
      f();
    } catch (const Error& e) {
      return e.what();
    }
    return "";
  };
  Variable x = param(Shape{3, 4}, 1), w = param(Shape{6, 4}, 2);
  const std::vector<int32_t> ok = {0, 1, 2};
  std::string m = msg([&] { linear_cross_entropy(x, param(Shape{6, 5}, 3), ok); });
  EXPECT_NE(m.find("linear_cross_entropy"), std::string::npos) << m;
  EXPECT_NE(m.find("[6, 5]"), std::string::npos) << m;
  m = msg([&] { linear_cross_entropy(x, w, std::vector<int32_t>{0, 6, 1}); });
  EXPECT_NE(m.find("target 6 at row 1"), std::string::npos) << m;
  m = msg([&] { linear_cross_entropy(x, w, std::vector<int32_t>{0, 1}); });
  EXPECT_NE(m.find("2 targets"), std::string::npos) << m;
  m = msg([&] { linear_cross_entropy(x, w, ok, -100, 0); });
  EXPECT_NE(m.find("chunk_elements"), std::string::npos) << m;
  // every target ignored: loss 0 and no gradient
  Tape tape;
  TapeScope s(tape);
  Variable l = linear_cross_entropy(x, w, std::vector<int32_t>{-100, -100, -100}, -100, 4);
  EXPECT_EQ(l.value()[0], 0.0f);
  tape.backward(l);
  for (int64_t j = 0; j < w.numel(); ++j) EXPECT_EQ(w.grad()[j], 0.0f);
}
