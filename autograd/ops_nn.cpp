// Neural-network ops: embedding, RMSNorm, softmax, RoPE, causal attention, cross-entropy
// (operand checks, nodes, dispatch to the device's kernels in autograd/<device>/).
#include <vector>

#include "autograd/dispatch.h"
#include "autograd/ops.h"

namespace autograd {

// ---- embedding ------------------------------------------------------------------------------
namespace {
struct EmbeddingNode final : Node {
  Variable w;
  Tensor ids;  // i32 [N] on w's device
  EmbeddingNode(Variable w_, Tensor i) : w(w_), ids(std::move(i)) {}
  const char* name() const override { return "embedding"; }
  void backward() override {
    if (!w.requires_grad()) return;
    BN_KERNEL(ids.device(), embedding_backward)(ids, out.grad(), w.grad_accum());
  }
};
}  // namespace

Variable embedding(const Variable& weight, std::span<const int32_t> ids) {
  BN_CHECK(weight.defined() && weight.shape().rank() == 2, "embedding",
           "weight must be [V, D], got ", weight.defined() ? weight.shape().str() : "undefined");
  check_f32("embedding", {&weight.value()});
  const int64_t V = weight.shape()[0], D = weight.shape()[1], N = int64_t(ids.size());
  for (int64_t i = 0; i < N; ++i)
    BN_CHECK(ids[i] >= 0 && ids[i] < V, "embedding", "token id ", ids[i], " at position ", i,
             " is outside the vocabulary [0, ", V, ") of weight ", weight.shape());
  const Device dev = weight.value().device();
  Tensor idt = Tensor::from_host(Shape{N}, ids.data(), dev);
  Tensor y = Tensor::empty(Shape{N, D}, DType::F32, dev);
  BN_KERNEL(dev, embedding)(weight.value(), idt, y);
  if (Tape* t = recording({&weight})) {
    auto& node = t->record<EmbeddingNode>(weight, std::move(idt));
    return node.set_output(y);
  }
  return Variable(y);
}

// ---- RMSNorm --------------------------------------------------------------------------------
namespace {
struct RMSNormNode final : Node {
  Variable x, g;
  Tensor rinv;  // [rows] 1/rms
  RMSNormNode(Variable x_, Variable g_, Tensor r) : x(x_), g(g_), rinv(std::move(r)) {}
  const char* name() const override { return "rmsnorm"; }
  void backward() override {
    BN_KERNEL(rinv.device(), rmsnorm_backward)
    (x.value(), g.value(), rinv, out.grad(), x.requires_grad() ? x.grad_accum() : Tensor(),
     g.requires_grad() ? g.grad_accum() : Tensor());
  }
};
}  // namespace

Variable rmsnorm(const Variable& x, const Variable& gain, float eps) {
  BN_CHECK(x.defined() && gain.defined(), "rmsnorm", "undefined operand");
  BN_CHECK(x.shape().rank() >= 1 && gain.shape().rank() == 1 && gain.shape()[0] == x.shape().back(),
           "rmsnorm", "x ", x.shape(), " and gain ", gain.shape(),
           " do not match ([..., D] and [D])");
  check_same_device("rmsnorm", {&x.value(), &gain.value()});
  check_f32("rmsnorm", {&x.value(), &gain.value()});
  const Device dev = x.value().device();
  Tensor y = Tensor::empty(x.shape(), DType::F32, dev);
  Tensor rinv = Tensor::empty(Shape{x.shape().rows()}, DType::F32, dev);
  BN_KERNEL(dev, rmsnorm)(x.value(), gain.value(), eps, y, rinv);
  if (Tape* t = recording({&x, &gain})) {
    auto& node = t->record<RMSNormNode>(x, gain, rinv);
    return node.set_output(y);
  }
  return Variable(y);
}

// ---- softmax --------------------------------------------------------------------------------
namespace {
struct SoftmaxNode final : Node {
  GradRef x;
  Tensor yv;  // the output probabilities (the backward needs them, not x)
  SoftmaxNode(const Variable& x_, Tensor y_) : x(x_), yv(std::move(y_)) {}
  const char* name() const override { return "softmax"; }
  void backward() override {
    if (!x.requires_grad()) return;
    BN_KERNEL(yv.device(), softmax_backward)(yv, out.grad(), x.grad_accum());
  }
};
}  // namespace

Variable softmax(const Variable& x) {
  BN_CHECK(x.defined() && x.shape().rank() >= 1 && x.shape().back() > 0, "softmax",
           "needs [..., n>0], got ", x.defined() ? x.shape().str() : "undefined");
  check_f32("softmax", {&x.value()});
  Tensor y = Tensor::empty(x.shape(), DType::F32, x.value().device());
  BN_KERNEL(y.device(), softmax)(x.value(), y);
  if (Tape* t = recording({&x})) {
    auto& node = t->record<SoftmaxNode>(x, y);
    return node.set_output(y);
  }
  return Variable(y);
}

// ---- RoPE -----------------------------------------------------------------------------------
namespace {
struct RopeNode final : Node {
  GradRef x;
  float theta;
  int64_t pos0;
  RopeNode(const Variable& x_, float th, int64_t p) : x(x_), theta(th), pos0(p) {}
  const char* name() const override { return "rope"; }
  void backward() override {
    if (!x.requires_grad()) return;
    BN_KERNEL(out.grad().device(), rope)(out.grad(), x.grad_accum(), theta, pos0, true, true);
  }
};
}  // namespace

Variable rope(const Variable& x, float theta, int64_t pos0) {
  BN_CHECK(x.defined() && x.shape().rank() == 4 && x.shape()[3] % 2 == 0, "rope",
           "needs [B, H, T, hd] with even hd, got ", x.defined() ? x.shape().str() : "undefined");
  BN_CHECK(theta > 0 && pos0 >= 0, "rope", "theta ", theta, " and pos0 ", pos0,
           " must be positive");
  check_f32("rope", {&x.value()});
  Tensor y = Tensor::empty(x.shape(), DType::F32, x.value().device());
  BN_KERNEL(y.device(), rope)(x.value(), y, theta, pos0, false, false);
  if (Tape* t = recording({&x})) {
    auto& node = t->record<RopeNode>(x, theta, pos0);
    return node.set_output(y);
  }
  return Variable(y);
}

// ---- causal attention -----------------------------------------------------------------------
namespace {
// Saves q, k, v only: the kernels recompute P per head in the backward.
struct AttentionNode final : Node {
  Variable q, k, v;
  AttentionNode(Variable q_, Variable k_, Variable v_) : q(q_), k(k_), v(v_) {}
  const char* name() const override { return "causal_attention"; }
  void backward() override {
    BN_KERNEL(q.value().device(), attention_backward)
    (q.value(), k.value(), v.value(), out.grad(), q.requires_grad() ? q.grad_accum() : Tensor(),
     k.requires_grad() ? k.grad_accum() : Tensor(), v.requires_grad() ? v.grad_accum() : Tensor());
  }
};
}  // namespace

Variable causal_attention(const Variable& q, const Variable& k, const Variable& v) {
  BN_CHECK(q.defined() && k.defined() && v.defined(), "causal_attention", "undefined operand");
  const Shape &sq = q.shape(), &sk = k.shape(), &sv = v.shape();
  BN_CHECK(sq.rank() == 4 && sk.rank() == 4 && sk == sv && sq[0] == sk[0] && sq[2] == sk[2] &&
               sq[3] == sk[3] && sk[1] > 0 && sq[1] % sk[1] == 0,
           "causal_attention", "q ", sq, ", k ", sk, ", v ", sv,
           " must be [B,H,T,hd], [B,Hkv,T,hd], [B,Hkv,T,hd] with H % Hkv == 0");
  check_same_device("causal_attention", {&q.value(), &k.value(), &v.value()});
  check_f32("causal_attention", {&q.value(), &k.value(), &v.value()});
  Tensor y = Tensor::empty(sq, DType::F32, q.value().device());
  BN_KERNEL(y.device(), attention)(q.value(), k.value(), v.value(), y);
  if (Tape* t = recording({&q, &k, &v})) {
    auto& node = t->record<AttentionNode>(q, k, v);
    return node.set_output(y);
  }
  return Variable(y);
}

// ---- cross-entropy --------------------------------------------------------------------------
namespace {
struct CrossEntropyNode final : Node {
  Variable logits;
  Tensor targets;  // i32 [N] on the logits' device
  Tensor lse;      // [N] log-sum-exp per row
  int32_t ignore;
  int64_t count;
  CrossEntropyNode(Variable l, Tensor t, Tensor s, int32_t ig, int64_t c)
      : logits(l), targets(std::move(t)), lse(std::move(s)), ignore(ig), count(c) {}
  const char* name() const override { return "cross_entropy"; }
  void backward() override {
    if (!logits.requires_grad()) return;
    BN_KERNEL(lse.device(), cross_entropy_backward)
    (logits.value(), targets, ignore, count, lse, out.grad(), logits.grad_accum());
  }
};
}  // namespace

Variable cross_entropy(const Variable& logits, std::span<const int32_t> targets,
                       int32_t ignore_index) {
  BN_CHECK(logits.defined() && logits.shape().rank() == 2, "cross_entropy",
           "logits must be [N, V], got ", logits.defined() ? logits.shape().str() : "undefined");
  check_f32("cross_entropy", {&logits.value()});
  const int64_t N = logits.shape()[0], V = logits.shape()[1];
  BN_CHECK(int64_t(targets.size()) == N, "cross_entropy", "logits ", logits.shape(), " but ",
           targets.size(), " targets");
  int64_t count = 0;
  for (int64_t i = 0; i < N; ++i) {
    const int32_t t = targets[size_t(i)];
    if (t == ignore_index) continue;
    BN_CHECK(t >= 0 && t < V, "cross_entropy", "target ", t, " at row ", i,
             " is outside the vocabulary [0, ", V, ") of logits ", logits.shape());
    ++count;
  }
  const Device dev = logits.value().device();
  Tensor tg = Tensor::from_host(Shape{N}, targets.data(), dev);
  Tensor lse = Tensor::empty(Shape{N}, DType::F32, dev);
  Tensor y = Tensor::empty(Shape{}, DType::F32, dev);
  BN_KERNEL(dev, cross_entropy)(logits.value(), tg, ignore_index, count, lse, y);
  if (Tape* t = recording({&logits})) {
    auto& node = t->record<CrossEntropyNode>(logits, std::move(tg), lse, ignore_index, count);
    return node.set_output(y);
  }
  return Variable(y);
}

}  // namespace autograd
