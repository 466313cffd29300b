// Shape ops: reshape (view), transpose / slice / concat (copies) and their backward.
#include <cstring>

#include "autograd/error.h"
#include "autograd/kernels.h"
#include "autograd/ops.h"

namespace autograd {
namespace {

int norm_dim(int d, int rank, const char* op, const Shape& s) {
  const int r = d < 0 ? d + rank : d;
  BN_CHECK(r >= 0 && r < rank, op, "dim ", d, " out of range for ", s);
  return r;
}

// Product of dims in [lo, hi).
int64_t prod(const Shape& s, int lo, int hi) {
  int64_t p = 1;
  for (int i = lo; i < hi; ++i) p *= s[i];
  return p;
}

struct ReshapeNode final : Node {
  GradRef a;
  explicit ReshapeNode(const Variable& a_) : a(a_) {}
  const char* name() const override { return "reshape"; }
  void backward() override {
    if (a.requires_grad()) accumulate_grad(a, out.grad(), /*may_alias=*/true);
  }
};

// Views x as [pre, A, mid, B, post] (d0 < d1) and writes y[pre, B, mid, A, post]; when
// `accumulate`, adds instead (used by the backward, which is the same permutation).
void swap_dims(const float* x, float* y, const Shape& s, int d0, int d1, bool accumulate) {
  const int64_t pre = prod(s, 0, d0), A = s[d0], mid = prod(s, d0 + 1, d1), B = s[d1],
                post = prod(s, d1 + 1, s.rank());
  kernels::parallel_for(pre * A, [&](int64_t pa) {
    const int64_t p = pa / A, a = pa % A;
    for (int64_t m = 0; m < mid; ++m)
      for (int64_t b = 0; b < B; ++b) {
        const float* src = x + (((p * A + a) * mid + m) * B + b) * post;
        float* dst = y + (((p * B + b) * mid + m) * A + a) * post;
        if (accumulate)
          for (int64_t q = 0; q < post; ++q) dst[q] += src[q];
        else
          std::memcpy(dst, src, size_t(post) * sizeof(float));
      }
  });
}

struct TransposeNode final : Node {
  GradRef a;
  int d0, d1;
  TransposeNode(const Variable& a_, int x, int y) : a(a_), d0(x), d1(y) {}
  const char* name() const override { return "transpose"; }
  void backward() override {
    if (!a.requires_grad()) return;
    // dy has the swapped shape; swapping back maps it onto a.
    swap_dims(out.grad().data(), a.grad_accum().data(), out.shape(), d0, d1, true);
  }
};

// Moves data between `big` viewed as [pre, n, post] and `small` viewed as [pre, m, post], where
// small is the band [at, at+m) of big's middle dim. to_small: small (+)= band; else band (+)= small.
void copy_band(float* big, int64_t n, float* small, int64_t m, int64_t pre, int64_t post,
               int64_t at, bool to_small, bool accumulate) {
  kernels::parallel_for(pre, [&](int64_t p) {
    float* b = big + (p * n + at) * post;
    float* s = small + p * m * post;
    float* dst = to_small ? s : b;
    const float* src = to_small ? b : s;
    const int64_t len = m * post;
    if (accumulate)
      for (int64_t q = 0; q < len; ++q) dst[q] += src[q];
    else
      std::memcpy(dst, src, size_t(len) * sizeof(float));
  });
}

struct SliceNode final : Node {
  GradRef a;
  int dim;
  int64_t begin;
  SliceNode(const Variable& a_, int d, int64_t b) : a(a_), dim(d), begin(b) {}
  const char* name() const override { return "slice"; }
  void backward() override {
    if (!a.requires_grad()) return;
    const Shape& s = a.shape();
    copy_band(a.grad_accum().data(), s[dim], out.grad().data(), out.shape()[dim], prod(s, 0, dim),
              prod(s, dim + 1, s.rank()), begin, false, true);  // grad band += dy
  }
};

struct ConcatNode final : Node {
  std::vector<GradRef> xs;
  int dim;
  ConcatNode(const std::vector<Variable>& x, int d) : xs(x.begin(), x.end()), dim(d) {}
  const char* name() const override { return "concat"; }
  void backward() override {
    const Shape& s = out.shape();
    int64_t at = 0;
    for (auto& x : xs) {
      const int64_t m = x.shape()[dim];
      if (x.requires_grad())  // x.grad += out.grad[.., at:at+m, ..]
        copy_band(out.grad().data(), s[dim], x.grad_accum().data(), m, prod(s, 0, dim),
                  prod(s, dim + 1, s.rank()), at, true, true);
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
  Tensor y = Tensor::empty(os);
  if (d0 == d1) y.copy_from(a.value());
  else swap_dims(a.data(), y.data(), s, d0, d1, false);
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
  Tensor y = Tensor::empty(os);
  copy_band(a.data(), s[dim], y.data(), end - begin, prod(s, 0, dim), prod(s, dim + 1, s.rank()),
            begin, true, false);  // y = band
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
    total += s[dim];
  }
  os.at(dim) = total;
  Tensor y = Tensor::empty(os);
  int64_t at = 0;
  bool any = false;
  for (auto& x : xs) {
    const int64_t m = x.shape()[dim];
    copy_band(y.data(), total, x.data(), m, prod(os, 0, dim), prod(os, dim + 1, os.rank()), at,
              false, false);  // band of y = x
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
