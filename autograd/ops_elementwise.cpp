// Element-wise ops (with row broadcast), activations and full reductions.
#include <cmath>

#include "autograd/error.h"
#include "autograd/kernels.h"
#include "autograd/ops.h"

namespace autograd {
using kernels::parallel_for;

namespace {

enum class Bin { Add, Sub, Mul };
const char* bin_name(Bin k) { return k == Bin::Add ? "add" : k == Bin::Sub ? "sub" : "mul"; }

// true when b is row-broadcast over a; throws when shapes are incompatible.
bool check_binary(Bin k, const Variable& a, const Variable& b) {
  BN_CHECK(a.defined() && b.defined(), bin_name(k), "undefined operand");
  if (a.shape() == b.shape()) return false;
  BN_CHECK(b.shape().rank() == 1 && a.shape().rank() >= 1 && a.shape().back() == b.shape()[0],
           bin_name(k), "shapes ", a.shape(), " and ", b.shape(),
           " are neither equal nor [..., n] with [n]");
  return true;
}

struct BinaryNode final : Node {
  Bin kind;
  bool bcast;
  Variable a, b;
  BinaryNode(Bin k, bool bc, Variable a_, Variable b_) : kind(k), bcast(bc), a(a_), b(b_) {}
  const char* name() const override { return bin_name(kind); }
  void backward() override {
    const float* dy = out.grad().data();
    const int64_t n = out.numel(), D = b.shape().back(), rows = bcast ? n / D : 1;
    if (a.requires_grad()) {
      float* da = a.grad_accum().data();
      if (kind == Bin::Mul) {
        const float* bv = b.data();
        parallel_for(n, [&](int64_t i) { da[i] += dy[i] * bv[bcast ? i % D : i]; });
      } else {
        parallel_for(n, [&](int64_t i) { da[i] += dy[i]; });
      }
    }
    if (b.requires_grad()) {
      float* db = b.grad_accum().data();
      const float sgn = kind == Bin::Sub ? -1.0f : 1.0f;
      const float* av = a.data();
      if (!bcast) {
        if (kind == Bin::Mul) parallel_for(n, [&](int64_t i) { db[i] += dy[i] * av[i]; });
        else parallel_for(n, [&](int64_t i) { db[i] += sgn * dy[i]; });
      } else {
        kernels::det_reduce_rows(rows, D, db, [&](int64_t r0, int64_t r1, double* acc) {
          for (int64_t r = r0; r < r1; ++r)
            for (int64_t j = 0; j < D; ++j)
              acc[j] += kind == Bin::Mul ? double(dy[r * D + j]) * av[r * D + j]
                                         : double(sgn * dy[r * D + j]);
        });
      }
    }
  }
};

Variable binary(Bin k, const Variable& a, const Variable& b) {
  const bool bc = check_binary(k, a, b);
  Tensor y = Tensor::empty(a.shape());
  const float *av = a.data(), *bv = b.data();
  float* yv = y.data();
  const int64_t n = y.numel(), D = b.shape().back();
  parallel_for(n, [&](int64_t i) {
    const float x = av[i], z = bv[bc ? i % D : i];
    yv[i] = k == Bin::Add ? x + z : k == Bin::Sub ? x - z : x * z;
  });
  if (Tape* t = recording({&a, &b})) {
    auto& node = t->record<BinaryNode>(k, bc, a, b);
    node.out = make_output(y);
    return node.out;
  }
  return Variable(y);
}

// Unary ops: forward f(x), derivative f'(x) from x.
enum class Un { Relu, Relu2, Silu };
struct UnaryNode final : Node {
  Un kind;
  Variable x;
  UnaryNode(Un k, Variable x_) : kind(k), x(x_) {}
  const char* name() const override {
    return kind == Un::Relu ? "relu" : kind == Un::Relu2 ? "relu2" : "silu";
  }
  void backward() override {
    if (!x.requires_grad()) return;
    const float *dy = out.grad().data(), *xv = x.data();
    float* dx = x.grad_accum().data();
    parallel_for(x.numel(), [&](int64_t i) {
      const float v = xv[i];
      float d;
      if (kind == Un::Relu) d = v > 0 ? 1.0f : 0.0f;
      else if (kind == Un::Relu2) d = v > 0 ? 2.0f * v : 0.0f;
      else {
        const float s = 1.0f / (1.0f + std::exp(-v));
        d = s * (1.0f + v * (1.0f - s));
      }
      dx[i] += dy[i] * d;
    });
  }
};

Variable unary(Un k, const Variable& x) {
  BN_CHECK(x.defined(), "unary", "undefined operand");
  Tensor y = Tensor::empty(x.shape());
  const float* xv = x.data();
  float* yv = y.data();
  parallel_for(x.numel(), [&](int64_t i) {
    const float v = xv[i];
    if (k == Un::Relu) yv[i] = v > 0 ? v : 0.0f;
    else if (k == Un::Relu2) yv[i] = v > 0 ? v * v : 0.0f;
    else yv[i] = v / (1.0f + std::exp(-v));
  });
  if (Tape* t = recording({&x})) {
    auto& node = t->record<UnaryNode>(k, x);
    node.out = make_output(y);
    return node.out;
  }
  return Variable(y);
}

struct ScaleNode final : Node {
  Variable a;
  float s;
  ScaleNode(Variable a_, float s_) : a(a_), s(s_) {}
  const char* name() const override { return "scale"; }
  void backward() override {
    if (!a.requires_grad()) return;
    const float* dy = out.grad().data();
    float* da = a.grad_accum().data();
    parallel_for(a.numel(), [&](int64_t i) { da[i] += s * dy[i]; });
  }
};

// sum (mean when divide) of all elements.
struct SumNode final : Node {
  Variable a;
  float factor;
  SumNode(Variable a_, float f) : a(a_), factor(f) {}
  const char* name() const override { return "sum"; }
  void backward() override {
    if (!a.requires_grad()) return;
    const float g = out.grad()[0] * factor;
    float* da = a.grad_accum().data();
    parallel_for(a.numel(), [&](int64_t i) { da[i] += g; });
  }
};

Variable reduce_all(const Variable& a, bool is_mean) {
  BN_CHECK(a.defined(), is_mean ? "mean" : "sum", "undefined operand");
  const float* av = a.data();
  double s = kernels::det_reduce(a.numel(), [&](int64_t i0, int64_t i1) {
    double p = 0;
    for (int64_t i = i0; i < i1; ++i) p += av[i];
    return p;
  });
  const float factor = is_mean ? (a.numel() ? 1.0f / float(a.numel()) : 0.0f) : 1.0f;
  Tensor y = Tensor::full(Shape{}, float(is_mean ? s * factor : s));
  if (Tape* t = recording({&a})) {
    auto& node = t->record<SumNode>(a, factor);
    node.out = make_output(y);
    return node.out;
  }
  return Variable(y);
}

}  // namespace

Variable add(const Variable& a, const Variable& b) { return binary(Bin::Add, a, b); }
Variable sub(const Variable& a, const Variable& b) { return binary(Bin::Sub, a, b); }
Variable mul(const Variable& a, const Variable& b) { return binary(Bin::Mul, a, b); }
Variable relu(const Variable& x) { return unary(Un::Relu, x); }
Variable relu2(const Variable& x) { return unary(Un::Relu2, x); }
Variable silu(const Variable& x) { return unary(Un::Silu, x); }
Variable sum(const Variable& a) { return reduce_all(a, false); }
Variable mean(const Variable& a) { return reduce_all(a, true); }

Variable scale(const Variable& a, float s) {
  BN_CHECK(a.defined(), "scale", "undefined operand");
  Tensor y = Tensor::empty(a.shape());
  const float* av = a.data();
  float* yv = y.data();
  parallel_for(a.numel(), [&](int64_t i) { yv[i] = s * av[i]; });
  if (Tape* t = recording({&a})) {
    auto& node = t->record<ScaleNode>(a, s);
    node.out = make_output(y);
    return node.out;
  }
  return Variable(y);
}

}  // namespace autograd
