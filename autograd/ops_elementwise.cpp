// Element-wise ops (with row broadcast), activations and full reductions.
#include <cmath>

#include "autograd/error.h"
#include "autograd/kernels.h"
#include "autograd/ops.h"

namespace autograd {
using kernels::parallel_for;

using kernels::parallel_range;

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

// add/sub keep only the inputs' gradient slots; mul also saves both values.
struct BinaryNode final : Node {
  Bin kind;
  bool bcast;
  GradRef a, b;
  Tensor av_, bv_;  // values (mul only)
  BinaryNode(Bin k, bool bc, const Variable& a_, const Variable& b_)
      : kind(k), bcast(bc), a(a_), b(b_) {
    if (k == Bin::Mul) av_ = a_.value(), bv_ = b_.value();
  }
  const char* name() const override { return bin_name(kind); }
  void backward() override {
    const Tensor& g = out.grad();
    const float* dy = g.data();
    const int64_t n = out.numel(), D = b.shape().back(), rows = bcast ? n / D : 1;
    const bool same = a.same(b);
    if (a.requires_grad()) {
      if (kind == Bin::Mul) {
        float* da = a.grad_accum().data();
        const float* bv = bv_.data();
        if (bcast)
          parallel_for(rows, [&](int64_t r) {
            for (int64_t j = 0; j < D; ++j) da[r * D + j] += dy[r * D + j] * bv[j];
          });
        else
          parallel_range(n, [&](int64_t i0, int64_t i1) {
            for (int64_t i = i0; i < i1; ++i) da[i] += dy[i] * bv[i];
          });
      } else {
        accumulate_grad(a, g, /*may_alias=*/!same);
      }
    }
    if (b.requires_grad()) {
      const float* av = kind == Bin::Mul ? av_.data() : nullptr;
      if (!bcast) {
        if (kind == Bin::Add) {
          accumulate_grad(b, g, /*may_alias=*/false);
        } else {
          float* db = b.grad_accum().data();
          if (kind == Bin::Mul)
            parallel_range(n, [&](int64_t i0, int64_t i1) {
              for (int64_t i = i0; i < i1; ++i) db[i] += dy[i] * av[i];
            });
          else
            parallel_range(n, [&](int64_t i0, int64_t i1) {
              for (int64_t i = i0; i < i1; ++i) db[i] -= dy[i];
            });
        }
      } else {
        float* db = b.grad_accum().data();
        const float sgn = kind == Bin::Sub ? -1.0f : 1.0f;
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
  auto run = [&](auto op) {
    if (bc)
      parallel_for(n / D, [&](int64_t r) {
        for (int64_t j = 0; j < D; ++j) yv[r * D + j] = op(av[r * D + j], bv[j]);
      });
    else
      parallel_range(n, [&](int64_t i0, int64_t i1) {
        for (int64_t i = i0; i < i1; ++i) yv[i] = op(av[i], bv[i]);
      });
  };
  if (k == Bin::Add) run([](float x, float z) { return x + z; });
  else if (k == Bin::Sub) run([](float x, float z) { return x - z; });
  else run([](float x, float z) { return x * z; });
  if (Tape* t = recording({&a, &b})) {
    auto& node = t->record<BinaryNode>(k, bc, a, b);
    return node.set_output(y);
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
    auto run = [&](auto deriv) {
      parallel_range(x.numel(), [&](int64_t i0, int64_t i1) {
        for (int64_t i = i0; i < i1; ++i) dx[i] += dy[i] * deriv(xv[i]);
      });
    };
    if (kind == Un::Relu) run([](float v) { return v > 0 ? 1.0f : 0.0f; });
    else if (kind == Un::Relu2) run([](float v) { return v > 0 ? 2.0f * v : 0.0f; });
    else
      run([](float v) {
        const float s = 1.0f / (1.0f + std::exp(-v));
        return s * (1.0f + v * (1.0f - s));
      });
  }
};

Variable unary(Un k, const Variable& x) {
  BN_CHECK(x.defined(), "unary", "undefined operand");
  Tensor y = Tensor::empty(x.shape());
  const float* xv = x.data();
  float* yv = y.data();
  auto run = [&](auto f) {
    parallel_range(x.numel(), [&](int64_t i0, int64_t i1) {
      for (int64_t i = i0; i < i1; ++i) yv[i] = f(xv[i]);
    });
  };
  if (k == Un::Relu) run([](float v) { return v > 0 ? v : 0.0f; });
  else if (k == Un::Relu2) run([](float v) { return v > 0 ? v * v : 0.0f; });
  else run([](float v) { return v / (1.0f + std::exp(-v)); });
  if (Tape* t = recording({&x})) {
    auto& node = t->record<UnaryNode>(k, x);
    return node.set_output(y);
  }
  return Variable(y);
}

struct Relu2MulNode final : Node {
  Variable g, u;
  Relu2MulNode(Variable g_, Variable u_) : g(g_), u(u_) {}
  const char* name() const override { return "relu2_mul"; }
  void backward() override {
    const float *dy = out.grad().data(), *gv = g.data(), *uv = u.data();
    float* dg = g.requires_grad() ? g.grad_accum().data() : nullptr;
    float* du = u.requires_grad() ? u.grad_accum().data() : nullptr;
    parallel_range(g.numel(), [&](int64_t i0, int64_t i1) {
      if (dg)
        for (int64_t i = i0; i < i1; ++i) {
          const float r = gv[i] > 0 ? gv[i] : 0.0f;
          dg[i] += (dy[i] * uv[i]) * (2.0f * r);  // torch's order: (dy u) (2 relu(g))
        }
      if (du)
        for (int64_t i = i0; i < i1; ++i) {
          const float r = gv[i] > 0 ? gv[i] : 0.0f;
          du[i] += dy[i] * (r * r);
        }
    });
  }
};

struct ScaleNode final : Node {
  GradRef a;
  float s;
  ScaleNode(const Variable& a_, float s_) : a(a_), s(s_) {}
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
  GradRef a;
  float factor;
  SumNode(const Variable& a_, float f) : a(a_), factor(f) {}
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
    return node.set_output(y);
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

Variable relu2_mul(const Variable& g, const Variable& u) {
  BN_CHECK(g.defined() && u.defined() && g.shape() == u.shape(), "relu2_mul", "gate ",
           g.defined() ? g.shape().str() : "undefined", " and up ",
           u.defined() ? u.shape().str() : "undefined", " must have one shape");
  Tensor y = Tensor::empty(g.shape());
  const float *gv = g.data(), *uv = u.data();
  float* yv = y.data();
  parallel_range(g.numel(), [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) {
      const float r = gv[i] > 0 ? gv[i] : 0.0f;
      yv[i] = (r * r) * uv[i];
    }
  });
  if (Tape* t = recording({&g, &u})) {
    auto& node = t->record<Relu2MulNode>(g, u);
    return node.set_output(y);
  }
  return Variable(y);
}

Variable scale(const Variable& a, float s) {
  BN_CHECK(a.defined(), "scale", "undefined operand");
  Tensor y = Tensor::empty(a.shape());
  const float* av = a.data();
  float* yv = y.data();
  parallel_for(a.numel(), [&](int64_t i) { yv[i] = s * av[i]; });
  if (Tape* t = recording({&a})) {
    auto& node = t->record<ScaleNode>(a, s);
    return node.set_output(y);
  }
  return Variable(y);
}

}  // namespace autograd
