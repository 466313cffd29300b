// Straight-through-estimator tape nodes (act_quant, ternary): fused quantizer forward, identity
// backward.
#include "quant/ste.h"

#include "quant/dispatch.h"

namespace quant {
using autograd::Tape;
using autograd::Tensor;
using autograd::Variable;

namespace {

// Identity backward of a quantizer: dx += dy (every element). When x has no gradient yet, dx
// becomes dy itself (bitwise equal to 0 + dy except that -0 stays -0; no zero fill, no copy).
struct StraightThroughNode final : autograd::Node {
  const char* op;
  autograd::GradRef x;
  StraightThroughNode(const char* op_, const Variable& x_) : op(op_), x(x_) {}
  const char* name() const override { return op; }
  void backward() override {
    if (x.requires_grad()) autograd::accumulate_grad(x, out.grad(), /*may_alias=*/true);
  }
};

Variable record_ste(const char* op, const Variable& x, Tensor y) {
  if (Tape* t = autograd::recording({&x})) {
    auto& node = t->record<StraightThroughNode>(op, x);
    return node.set_output(std::move(y));
  }
  return Variable(std::move(y));
}

}  // namespace

int64_t count_zeros(const Tensor& x) {
  autograd::check_f32("count_zeros", {&x});
  return BN_QKERNEL(x.device(), count_zeros)(x);
}

Variable act_quant(const Variable& x, const ActSpec& spec, int64_t* zeros_out) {
  BN_CHECK(x.defined(), "act_quant", "undefined input");
  autograd::check_f32("act_quant", {&x.value()});
  const autograd::Device dev = x.value().device();
  if (!spec.active()) {  // pass-through (fp mode): no node, no copy
    if (zeros_out) *zeros_out += count_zeros(x.value());
    return x;
  }
  const autograd::Shape& sh = x.shape();
  BN_CHECK(sh.rank() >= 1 && sh.back() >= 1, "act_quant", "input ", sh,
           " must be [..., cols] with cols >= 1");
  Tensor y = Tensor::empty(sh, autograd::DType::F32, dev);
  const int64_t z = BN_QKERNEL(dev, act_quantize)(spec, x.value(), y, zeros_out != nullptr);
  if (zeros_out) *zeros_out += z;
  return record_ste("act_quant", x, std::move(y));
}

Variable ternary(const Variable& w, float* scale_out) {
  BN_CHECK(w.defined(), "ternary", "undefined weight");
  BN_CHECK(w.numel() >= 1, "ternary", "empty weight ", w.shape());
  autograd::check_f32("ternary", {&w.value()});
  const autograd::Device dev = w.value().device();
  Tensor wq = Tensor::empty(w.shape(), autograd::DType::F32, dev);
  Tensor a = Tensor::empty(autograd::Shape{1}, autograd::DType::F32, dev);
  BN_QKERNEL(dev, ternary)(w.value(), wq, Tensor(), a);
  if (scale_out) *scale_out = a.item();  // host read only when asked
  return record_ste("ternary", w, std::move(wq));
}

}  // namespace quant
