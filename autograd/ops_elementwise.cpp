// Element-wise ops (with row broadcast), activations and full reductions: checks, nodes, dispatch.
#include "autograd/dispatch.h"
#include "autograd/ops.h"

namespace autograd {
namespace {

const char* bin_name(BinOp k) { return k == BinOp::Add ? "add" : k == BinOp::Sub ? "sub" : "mul"; }

// true when b is row-broadcast over a; throws when shapes, dtypes or devices are incompatible.
bool check_binary(BinOp k, const Variable& a, const Variable& b) {
  BN_CHECK(a.defined() && b.defined(), bin_name(k), "undefined operand");
  check_same_device(bin_name(k), {&a.value(), &b.value()});
  if (a.shape() == b.shape()) {
    check_float(bin_name(k), {&a.value(), &b.value()});
    return false;
  }
  check_f32(bin_name(k), {&a.value(), &b.value()});  // (row_sum of a broadcast reads f32)
  BN_CHECK(b.shape().rank() == 1 && a.shape().rank() >= 1 && a.shape().back() == b.shape()[0],
           bin_name(k), "shapes ", a.shape(), " and ", b.shape(),
           " are neither equal nor [..., n] with [n]");
  return true;
}

void check_unary(const char* op, const Variable& x, bool bf16_ok = false) {
  BN_CHECK(x.defined(), op, "undefined operand");
  if (bf16_ok)
    check_float(op, {&x.value()});
  else
    check_f32(op, {&x.value()});
}

// add/sub keep only the inputs' gradient slots; mul also saves both values.
struct BinaryNode final : Node {
  BinOp kind;
  bool bcast;
  GradRef a, b;
  Tensor av_, bv_;  // values (mul only)
  BinaryNode(BinOp k, bool bc, const Variable& a_, const Variable& b_)
      : kind(k), bcast(bc), a(a_), b(b_) {
    if (k == BinOp::Mul) av_ = a_.value(), bv_ = b_.value();
  }
  const char* name() const override { return bin_name(kind); }
  void backward() override {
    const Tensor& g = out.grad();
    const Device dev = g.device();
    const bool same = a.same(b);
    if (a.requires_grad()) {
      if (kind == BinOp::Mul)
        BN_KERNEL(dev, mul_acc)(a.grad_accum(), g, bv_, bcast);
      else
        accumulate_grad(a, g, /*may_alias=*/!same);
    }
    if (b.requires_grad()) {
      if (!bcast) {
        if (kind == BinOp::Add)
          accumulate_grad(b, g, /*may_alias=*/false);
        else if (kind == BinOp::Mul)
          BN_KERNEL(dev, mul_acc)(b.grad_accum(), g, av_, false);
        else
          BN_KERNEL(dev, axpy)(b.grad_accum(), g, -1.0f);
      } else {
        BN_KERNEL(dev, row_sum)
        (b.grad_accum(), g, kind == BinOp::Mul ? av_ : Tensor(), kind == BinOp::Sub ? -1.0f : 1.0f);
      }
    }
  }
};

Variable binary(BinOp k, const Variable& a, const Variable& b) {
  const bool bc = check_binary(k, a, b);
  Tensor y = Tensor::empty(a.shape(), DType::F32, a.value().device());
  BN_KERNEL(y.device(), binary)(k, a.value(), b.value(), y);
  if (Tape* t = recording({&a, &b})) {
    auto& node = t->record<BinaryNode>(k, bc, a, b);
    return node.set_output(y);
  }
  return Variable(y);
}

// Unary ops: forward f(x), derivative f'(x) from x.
struct UnaryNode final : Node {
  UnOp kind;
  Variable x;
  UnaryNode(UnOp k, Variable x_) : kind(k), x(x_) {}
  const char* name() const override {
    return kind == UnOp::Relu ? "relu" : kind == UnOp::Relu2 ? "relu2" : "silu";
  }
  void backward() override {
    if (!x.requires_grad()) return;
    BN_KERNEL(x.value().device(), unary_backward)(kind, x.value(), out.grad(), x.grad_accum());
  }
};

Variable unary(UnOp k, const Variable& x) {
  check_unary(k == UnOp::Relu ? "relu" : k == UnOp::Relu2 ? "relu2" : "silu", x, true);
  Tensor y = Tensor::empty(x.shape(), DType::F32, x.value().device());
  BN_KERNEL(y.device(), unary)(k, x.value(), y);
  if (Tape* t = recording({&x})) {
    auto& node = t->record<UnaryNode>(k, x);
    return node.set_output(y);
  }
  return Variable(y);
}

// Keeps g and u as saved_activation (bf16 under bf16 activations).
struct Relu2MulNode final : Node {
  GradRef g, u;
  Tensor gs, us;
  Relu2MulNode(const Variable& g_, const Variable& u_)
      : g(g_), u(u_), gs(saved_activation(g_.value())), us(saved_activation(u_.value())) {}
  const char* name() const override { return "relu2_mul"; }
  void backward() override {
    BN_KERNEL(gs.device(), relu2_mul_backward)
    (gs, us, out.grad(), g.requires_grad() ? g.grad_accum() : Tensor(),
     u.requires_grad() ? u.grad_accum() : Tensor());
  }
};

struct ScaleNode final : Node {
  GradRef a;
  float s;
  ScaleNode(const Variable& a_, float s_) : a(a_), s(s_) {}
  const char* name() const override { return "scale"; }
  void backward() override {
    if (!a.requires_grad()) return;
    BN_KERNEL(out.grad().device(), axpy)(a.grad_accum(), out.grad(), s);
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
    BN_KERNEL(out.grad().device(), add_scalar)(a.grad_accum(), out.grad(), factor);
  }
};

Variable reduce_all(const Variable& a, bool is_mean) {
  check_unary(is_mean ? "mean" : "sum", a);
  const float factor = is_mean ? (a.numel() ? 1.0f / float(a.numel()) : 0.0f) : 1.0f;
  Tensor y = Tensor::empty(Shape{}, DType::F32, a.value().device());
  BN_KERNEL(y.device(), sum_all)(a.value(), is_mean, factor, y);
  if (Tape* t = recording({&a})) {
    auto& node = t->record<SumNode>(a, factor);
    return node.set_output(y);
  }
  return Variable(y);
}

}  // namespace

Variable add(const Variable& a, const Variable& b) { return binary(BinOp::Add, a, b); }
Variable sub(const Variable& a, const Variable& b) { return binary(BinOp::Sub, a, b); }
Variable mul(const Variable& a, const Variable& b) { return binary(BinOp::Mul, a, b); }
Variable relu(const Variable& x) { return unary(UnOp::Relu, x); }
Variable relu2(const Variable& x) { return unary(UnOp::Relu2, x); }
Variable silu(const Variable& x) { return unary(UnOp::Silu, x); }
Variable sum(const Variable& a) { return reduce_all(a, false); }
Variable mean(const Variable& a) { return reduce_all(a, true); }

Variable relu2_mul(const Variable& g, const Variable& u) {
  BN_CHECK(g.defined() && u.defined() && g.shape() == u.shape(), "relu2_mul", "gate ",
           g.defined() ? g.shape().str() : "undefined", " and up ",
           u.defined() ? u.shape().str() : "undefined", " must have one shape");
  check_same_device("relu2_mul", {&g.value(), &u.value()});
  check_float("relu2_mul", {&g.value(), &u.value()});
  BN_CHECK(g.value().dtype() == u.value().dtype(), "relu2_mul", "gate ", g.value().describe(),
           " and up ", u.value().describe(), " must have one dtype");
  const Device dev = g.value().device();
  Tensor y = Tensor::empty(g.shape(), activation_dtype(dev), dev);
  BN_KERNEL(y.device(), relu2_mul)(g.value(), u.value(), y);
  if (Tape* t = recording({&g, &u})) {
    auto& node = t->record<Relu2MulNode>(g, u);
    return node.set_output(y);
  }
  return Variable(y);
}

Variable scale(const Variable& a, float s) {
  check_unary("scale", a);
  Tensor y = Tensor::empty(a.shape(), DType::F32, a.value().device());
  BN_KERNEL(y.device(), scale)(a.value(), s, y);
  if (Tape* t = recording({&a})) {
    auto& node = t->record<ScaleNode>(a, s);
    return node.set_output(y);
  }
  return Variable(y);
}

}  // namespace autograd
