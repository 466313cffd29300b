// Shape ops: reshape (view), transpose / slice / concat (copies) and their backward.
#include "autograd/dispatch.h"
#include "autograd/ops.h"

namespace autograd {
namespace {

int norm_dim(int d, int rank, const char* op, const Shape& s) {
  const int r = d < 0 ? d + rank : d;
  BN_CHECK(r >= 0 && r < rank, op, "dim ", d, " out of range for ", s);
  return r;
}

struct ReshapeNode final : Node {
  GradRef a;
  explicit ReshapeNode(const Variable& a_) : a(a_) {}
  const char* name() const override { return "reshape"; }
  void backward() override {
    if (a.requires_grad()) accumulate_grad(a, out.grad(), /*may_alias=*/true);
  }
};

struct TransposeNode final : Node {
  GradRef a;
  int d0, d1;
  TransposeNode(const Variable& a_, int x, int y) : a(a_), d0(x), d1(y) {}
  const char* name() const override { return "transpose"; }
  void backward() override {
    if (!a.requires_grad()) return;
    // dy has the swapped shape; swapping back maps it onto a.
    BN_KERNEL(out.grad().device(), transpose)
    (out.grad(), a.grad_accum(), out.shape(), d0, d1, true);
  }
};

struct SliceNode final : Node {
  GradRef a;
  int dim;
  int64_t begin;
  SliceNode(const Variable& a_, int d, int64_t b) : a(a_), dim(d), begin(b) {}
  const char* name() const override { return "slice"; }
  void backward() override {
    if (!a.requires_grad()) return;
    // grad band += dy
    BN_KERNEL(out.grad().device(), band_copy)(a.grad_accum(), out.grad(), dim, begin, false, true);
  }
};

struct ConcatNode final : Node {
  std::vector<GradRef> xs;
  int dim;
  ConcatNode(const std::vector<Variable>& x, int d) : xs(x.begin(), x.end()), dim(d) {}
  const char* name() const override { return "concat"; }
  void backward() override {
    int64_t at = 0;
    for (auto& x : xs) {
      const int64_t m = x.shape()[dim];
      if (x.requires_grad())  // x.grad += out.grad[.., at:at+m, ..]
        BN_KERNEL(out.grad().device(), band_copy)(out.grad(), x.grad_accum(), dim, at, true, true);
      at += m;
    }
  }
};

}  // namespace

Variable reshape(const Variable& a, const Shape& s) {
  BN_CHECK(a.defined(), "reshape", "undefined operand");
  BN_CHECK(a.numel() == s.numel(), "reshape", "cannot reshape ", a.shape(), " to ", s);
  Tensor y = a.value().view(s);
  if (Tape* t = recording({&a})) {
    auto& node = t->record<ReshapeNode>(a);
    return node.set_output(y);
  }
  return Variable(y);
}

Variable transpose(const Variable& a, int d0, int d1) {
  BN_CHECK(a.defined(), "transpose", "undefined operand");
  const Shape& s = a.shape();
  d0 = norm_dim(d0, s.rank(), "transpose", s);
  d1 = norm_dim(d1, s.rank(), "transpose", s);
  if (d0 > d1) std::swap(d0, d1);
  Shape os = s;
  os.at(d0) = s[d1];
  os.at(d1) = s[d0];
  check_float("transpose", {&a.value()});
  Tensor y = Tensor::empty(os, a.value().dtype(), a.value().device());  // (a copy: same dtype)
  if (d0 == d1)
    y.copy_from(a.value());
  else
    BN_KERNEL(y.device(), transpose)(a.value(), y, s, d0, d1, false);
  if (Tape* t = recording({&a})) {
    auto& node = t->record<TransposeNode>(a, d0, d1);
    return node.set_output(y);
  }
  return Variable(y);
}

Variable slice(const Variable& a, int dim, int64_t begin, int64_t end) {
  BN_CHECK(a.defined(), "slice", "undefined operand");
  const Shape& s = a.shape();
  dim = norm_dim(dim, s.rank(), "slice", s);
  BN_CHECK(0 <= begin && begin <= end && end <= s[dim], "slice", "range [", begin, ", ", end,
           ") out of dim ", dim, " of ", s);
  Shape os = s;
  os.at(dim) = end - begin;
  check_f32("slice", {&a.value()});
  Tensor y = Tensor::empty(os, DType::F32, a.value().device());
  BN_KERNEL(y.device(), band_copy)(a.value(), y, dim, begin, true, false);  // y = band
  if (Tape* t = recording({&a})) {
    auto& node = t->record<SliceNode>(a, dim, begin);
    return node.set_output(y);
  }
  return Variable(y);
}

Variable concat(const std::vector<Variable>& xs, int dim) {
  BN_CHECK(!xs.empty(), "concat", "no inputs");
  const Shape& s0 = xs[0].shape();
  dim = norm_dim(dim, s0.rank(), "concat", s0);
  Shape os = s0;
  int64_t total = 0;
  for (auto& x : xs) {
    const Shape& s = x.shape();
    bool ok = s.rank() == s0.rank();
    for (int i = 0; ok && i < s.rank(); ++i) ok = i == dim || s[i] == s0[i];
    BN_CHECK(ok, "concat", "shape ", s, " does not match ", s0, " outside dim ", dim);
    check_same_device("concat", {&xs[0].value(), &x.value()});
    check_f32("concat", {&x.value()});
    total += s[dim];
  }
  os.at(dim) = total;
  Tensor y = Tensor::empty(os, DType::F32, xs[0].value().device());
  int64_t at = 0;
  bool any = false;
  for (auto& x : xs) {
    const int64_t m = x.shape()[dim];
    BN_KERNEL(y.device(), band_copy)(y, x.value(), dim, at, false, false);  // band of y = x
    at += m;
    any = any || x.requires_grad();
  }
  if (any && grad_enabled() && current_tape()) {
    Tape* t = current_tape();
    auto& node = t->record<ConcatNode>(xs, dim);
    return node.set_output(y);
  }
  return Variable(y);
}

}  // namespace autograd
