// Neural-network ops: embedding, RMSNorm, softmax, RoPE, causal attention, cross-entropy (alone
// and fused with the LM head): operand checks, nodes, dispatch to autograd/<device>/ kernels.
#include <algorithm>
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
  check_float("rmsnorm", {&x.value()});
  check_f32("rmsnorm", {&gain.value()});
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
  check_float("rope", {&x.value()});
  Tensor y = Tensor::empty(x.shape(), x.value().dtype(), x.value().device());
  BN_KERNEL(y.device(), rope)(x.value(), y, theta, pos0, false, false);
  if (Tape* t = recording({&x})) {
    auto& node = t->record<RopeNode>(x, theta, pos0);
    return node.set_output(y);
  }
  return Variable(y);
}

// ---- causal attention -----------------------------------------------------------------------
namespace {
// Saves q, k, v only (saved_activation: bf16 under bf16 activations; the tensor-core route rounds
// them anyway): the kernels recompute P per head in the backward.
struct AttentionNode final : Node {
  GradRef q, k, v;
  Tensor qs, ks, vs;
  AttentionNode(const Variable& q_, const Variable& k_, const Variable& v_, Tensor a, Tensor b,
                Tensor c)
      : q(q_), k(k_), v(v_), qs(std::move(a)), ks(std::move(b)), vs(std::move(c)) {}
  const char* name() const override { return "causal_attention"; }
  void backward() override {
    BN_KERNEL(qs.device(), attention_backward)
    (qs, ks, vs, out.grad(), q.requires_grad() ? q.grad_accum() : Tensor(),
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
  check_float("causal_attention", {&q.value(), &k.value(), &v.value()});
  const Device dev = q.value().device();
  Tensor y = Tensor::empty(sq, activation_dtype(dev), dev);
  Tensor qs = saved_activation(q.value()), ks = saved_activation(k.value()),
         vs = saved_activation(v.value());
  BN_KERNEL(y.device(), attention)(qs, ks, vs, y);
  if (Tape* t = recording({&q, &k, &v})) {
    auto& node = t->record<AttentionNode>(q, k, v, std::move(qs), std::move(ks), std::move(vs));
    return node.set_output(y);
  }
  return Variable(y);
}

// ---- cross-entropy --------------------------------------------------------------------------
namespace {
// Checks targets[N] against a vocabulary of V (each in [0, V) or ignore) and counts the rows that
// are not ignored; `of` names the operand that sets V (for the message).
int64_t count_targets(const char* op, std::span<const int32_t> targets, int64_t N, int64_t V,
                      int32_t ignore, const char* of, const Shape& shape) {
  BN_CHECK(int64_t(targets.size()) == N, op, of, " ", shape, " but ", targets.size(), " targets");
  int64_t count = 0;
  for (int64_t i = 0; i < N; ++i) {
    const int32_t t = targets[size_t(i)];
    if (t == ignore) continue;
    BN_CHECK(t >= 0 && t < V, op, "target ", t, " at row ", i, " is outside the vocabulary [0, ", V,
             ") of ", of, " ", shape);
    ++count;
  }
  return count;
}
Tensor ce_state(int64_t N, Device dev) {
  return Tensor::empty(Shape{std::max<int64_t>(N, 1) * int64_t(sizeof(CeRowState))}, DType::U8,
                       dev);
}

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
    const Device dev = lse.device();
    Tensor& g = logits.grad();
    if (!g.defined()) {  // first gradient: written in place
      g = Tensor::empty(logits.shape(), DType::F32, dev);
      BN_KERNEL(dev, ce_chunk_backward)
      (logits.value(), 0, targets, ignore, count, lse, out.grad(), g);
      return;
    }
    const Tensor d = Tensor::empty(logits.shape(), DType::F32, dev);
    BN_KERNEL(dev, ce_chunk_backward)
    (logits.value(), 0, targets, ignore, count, lse, out.grad(), d);
    BN_KERNEL(dev, axpy)(g, d, 1.0f);
  }
};
}  // namespace

Variable cross_entropy(const Variable& logits, std::span<const int32_t> targets,
                       int32_t ignore_index) {
  BN_CHECK(logits.defined() && logits.shape().rank() == 2, "cross_entropy",
           "logits must be [N, V], got ", logits.defined() ? logits.shape().str() : "undefined");
  check_f32("cross_entropy", {&logits.value()});
  const int64_t N = logits.shape()[0], V = logits.shape()[1];
  BN_CHECK(V > 0, "cross_entropy", "empty vocabulary: logits ", logits.shape());
  const int64_t count =
      count_targets("cross_entropy", targets, N, V, ignore_index, "logits", logits.shape());
  const Device dev = logits.value().device();
  Tensor tg = Tensor::from_host(Shape{N}, targets.data(), dev);
  Tensor lse = Tensor::empty(Shape{N}, DType::F32, dev);
  Tensor y = Tensor::empty(Shape{}, DType::F32, dev);
  const Tensor state = ce_state(N, dev);
  BN_KERNEL(dev, ce_chunk)(logits.value(), 0, tg, state);  // the whole row as one chunk
  BN_KERNEL(dev, ce_finish)(state, tg, ignore_index, count, lse, y);
  if (Tape* t = recording({&logits})) {
    auto& node = t->record<CrossEntropyNode>(logits, std::move(tg), lse, ignore_index, count);
    return node.set_output(y);
  }
  return Variable(y);
}

// ---- LM head + cross-entropy, chunked over the vocabulary -----------------------------------
namespace {
// The GEMMs of one vocabulary chunk; under bf16 the operands shared by several chunks (x, w) are
// rounded once per op call, not once per GEMM.
struct LinearCeGeom {
  Device dev;
  int64_t N, D, V, Vc;
  bool bf16;
  Tensor x16, w16;  // bf16 copies of x and w (bf16 only)

  LinearCeGeom(const Tensor& x, const Tensor& w, int64_t chunk_elements)
      : dev(x.device()), N(x.shape()[0]), D(x.shape()[1]), V(w.shape()[0]) {
    Vc = std::clamp<int64_t>(chunk_elements / std::max<int64_t>(N, 1), 1, std::max<int64_t>(V, 1));
    bf16 = gemm_precision() == GemmPrecision::BF16 && D > 0;
    if (bf16) {
      x16 = Tensor::empty(x.shape(), DType::BF16, dev);
      w16 = Tensor::empty(w.shape(), DType::BF16, dev);
      BN_KERNEL(dev, round_bf16)(x, x16);
      BN_KERNEL(dev, round_bf16)(w, w16);
    }
  }
  const void* w16_at(int64_t v0) const {
    return bf16 ? static_cast<const uint16_t*>(w16.raw()) + v0 * D : nullptr;
  }
  // z[N, vc] = x w[v0 : v0+vc]^T
  void logits(const Tensor& x, const Tensor& w, int64_t v0, int64_t vc, const Tensor& z) const {
    GemmArgs a;
    a.tb = true, a.M = N, a.N = vc, a.K = D, a.A = x.data(), a.lda = D;
    a.B = w.data() + v0 * D, a.ldb = D, a.C = z.data(), a.ldc = vc;
    a.A16 = bf16 ? x16.raw() : nullptr, a.B16 = w16_at(v0);
    BN_KERNEL(dev, gemm)(a);
  }
};

struct LinearCeNode final : Node {
  Variable x, w;
  Tensor targets, lse;  // i32 [N], f32 [N] on the device
  int32_t ignore;
  int64_t count, chunk_elements;
  LinearCeNode(Variable x_, Variable w_, Tensor t, Tensor s, int32_t ig, int64_t c, int64_t ce)
      : x(x_),
        w(w_),
        targets(std::move(t)),
        lse(std::move(s)),
        ignore(ig),
        count(c),
        chunk_elements(ce) {}
  const char* name() const override { return "linear_cross_entropy"; }
  void backward() override {
    if (!x.requires_grad() && !w.requires_grad()) return;
    const LinearCeGeom g(x.value(), w.value(), chunk_elements);
    const Device dev = g.dev;
    const Tensor buf = Tensor::empty(Shape{g.N * g.Vc}, DType::F32, dev);
    const Tensor buf16 = g.bf16 ? Tensor::empty(Shape{g.N * g.Vc}, DType::BF16, dev) : Tensor();
    float* dx = x.requires_grad() ? x.grad_accum().data() : nullptr;
    float* dw = w.requires_grad() ? w.grad_accum().data() : nullptr;
    for (int64_t v0 = 0; v0 < g.V; v0 += g.Vc) {
      const int64_t vc = std::min(g.Vc, g.V - v0);
      const Tensor z = buf.slice0(0, g.N * vc).view(Shape{g.N, vc});
      g.logits(x.value(), w.value(), v0, vc, z);
      BN_KERNEL(dev, ce_chunk_backward)(z, v0, targets, ignore, count, lse, out.grad(), z);
      const void* z16 = nullptr;
      if (g.bf16) {  // dz feeds two GEMMs: rounded once
        const Tensor h = buf16.slice0(0, g.N * vc).view(Shape{g.N, vc});
        BN_KERNEL(dev, round_bf16)(z, h);
        z16 = h.raw();
      }
      if (dx) {  // dx[N, D] += dz[N, vc] w_c[vc, D]
        GemmArgs a;
        a.M = g.N, a.N = g.D, a.K = vc, a.A = z.data(), a.lda = vc, a.B = w.data() + v0 * g.D;
        a.ldb = g.D, a.beta = 1.0f, a.C = dx, a.ldc = g.D, a.A16 = z16, a.B16 = g.w16_at(v0);
        BN_KERNEL(dev, gemm)(a);
      }
      if (dw) {  // dw_c[vc, D] += dz^T[vc, N] x[N, D]
        GemmArgs a;
        a.ta = true, a.M = vc, a.N = g.D, a.K = g.N, a.A = z.data(), a.lda = vc, a.B = x.data();
        a.ldb = g.D, a.beta = 1.0f, a.C = dw + v0 * g.D, a.ldc = g.D, a.A16 = z16;
        a.B16 = g.bf16 ? g.x16.raw() : nullptr;
        BN_KERNEL(dev, gemm)(a);
      }
    }
  }
};
}  // namespace

Variable linear_cross_entropy(const Variable& x, const Variable& w,
                              std::span<const int32_t> targets, int32_t ignore_index,
                              int64_t chunk_elements) {
  BN_CHECK(x.defined() && w.defined() && x.shape().rank() == 2 && w.shape().rank() == 2 &&
               x.shape()[1] == w.shape()[1],
           "linear_cross_entropy", "x must be [N, D] and w [V, D], got ",
           x.defined() ? x.shape().str() : "undefined", " and ",
           w.defined() ? w.shape().str() : "undefined");
  check_same_device("linear_cross_entropy", {&x.value(), &w.value()});
  check_f32("linear_cross_entropy", {&x.value(), &w.value()});
  BN_CHECK(chunk_elements > 0, "linear_cross_entropy", "chunk_elements must be > 0, got ",
           chunk_elements);
  const int64_t N = x.shape()[0], V = w.shape()[0];
  BN_CHECK(V > 0, "linear_cross_entropy", "empty vocabulary: w ", w.shape());
  const int64_t count =
      count_targets("linear_cross_entropy", targets, N, V, ignore_index, "w", w.shape());
  const LinearCeGeom g(x.value(), w.value(), chunk_elements);
  const Device dev = g.dev;
  Tensor tg = Tensor::from_host(Shape{N}, targets.data(), dev);
  Tensor lse = Tensor::empty(Shape{N}, DType::F32, dev);
  Tensor y = Tensor::empty(Shape{}, DType::F32, dev);
  const Tensor state = ce_state(N, dev);
  const Tensor buf = Tensor::empty(Shape{g.N * g.Vc}, DType::F32, dev);
  for (int64_t v0 = 0; v0 < V; v0 += g.Vc) {
    const int64_t vc = std::min(g.Vc, V - v0);
    const Tensor z = buf.slice0(0, g.N * vc).view(Shape{g.N, vc});
    g.logits(x.value(), w.value(), v0, vc, z);
    BN_KERNEL(dev, ce_chunk)(z, v0, tg, state);
  }
  BN_KERNEL(dev, ce_finish)(state, tg, ignore_index, count, lse, y);
  if (Tape* t = recording({&x, &w})) {
    auto& node =
        t->record<LinearCeNode>(x, w, std::move(tg), lse, ignore_index, count, chunk_elements);
    return node.set_output(y);
  }
  return Variable(y);
}

}  // namespace autograd
