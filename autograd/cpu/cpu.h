// The CPU kernels of the autograd ops (entries of the CPU table, autograd/dispatch.h).
//
// Implemented with OpenMP over static partitions and the deterministic reductions of
// autograd/kernels.h, so results do not depend on the thread count (GEMM blocking aside).
#pragma once
#include "autograd/dispatch.h"

namespace autograd::cpu {

void fill(const Tensor& t, float v);
void gemm(const GemmArgs& g);
void round_bf16(const Tensor& x, const Tensor& y);
void binary(BinOp op, const Tensor& a, const Tensor& b, const Tensor& y);
void axpy(const Tensor& d, const Tensor& s, float alpha);
void mul_acc(const Tensor& d, const Tensor& dy, const Tensor& b, bool bcast);
void row_sum(const Tensor& d, const Tensor& dy, const Tensor& a, float sign);
void scale(const Tensor& a, float s, const Tensor& y);
void sum_all(const Tensor& a, bool mean, float factor, const Tensor& y);
void add_scalar(const Tensor& d, const Tensor& dy, float factor);
void unary(UnOp op, const Tensor& x, const Tensor& y);
void unary_backward(UnOp op, const Tensor& x, const Tensor& dy, const Tensor& dx);
void relu2_mul(const Tensor& g, const Tensor& u, const Tensor& y);
void relu2_mul_backward(const Tensor& g, const Tensor& u, const Tensor& dy, const Tensor& dg,
                        const Tensor& du);
void transpose(const Tensor& x, const Tensor& y, const Shape& s, int d0, int d1, bool accumulate);
void band_copy(const Tensor& big, const Tensor& small, int dim, int64_t at, bool to_small,
               bool accumulate);
void embedding(const Tensor& w, const Tensor& ids, const Tensor& y);
void embedding_backward(const Tensor& ids, const Tensor& dy, const Tensor& dw);
void rmsnorm(const Tensor& x, const Tensor& g, float eps, const Tensor& y, const Tensor& rinv);
void rmsnorm_backward(const Tensor& x, const Tensor& g, const Tensor& rinv, const Tensor& dy,
                      const Tensor& dx, const Tensor& dg);
void softmax(const Tensor& x, const Tensor& y);
void softmax_backward(const Tensor& y, const Tensor& dy, const Tensor& dx);
void rope(const Tensor& x, const Tensor& y, float theta, int64_t pos0, bool inverse,
          bool accumulate);
void attention(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& o);
void attention_backward(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& dout,
                        const Tensor& dq, const Tensor& dk, const Tensor& dv);
void ce_chunk(const Tensor& z, int64_t v0, const Tensor& targets, const Tensor& state);
void ce_finish(const Tensor& state, const Tensor& targets, int32_t ignore, int64_t count,
               const Tensor& lse, const Tensor& loss);
void ce_chunk_backward(const Tensor& z, int64_t v0, const Tensor& targets, int32_t ignore,
                       int64_t count, const Tensor& lse, const Tensor& dy, const Tensor& y);

// Pointer of an optional gradient (null when undefined).
inline float* opt(const Tensor& t) { return t.defined() ? t.data() : nullptr; }

}  // namespace autograd::cpu
