// Differentiable ops: eager forward kernels that record a backward Node when grads are needed.
//
// Every op states its shapes and its backward in one line. Row broadcast means the second
// operand is a 1-D tensor [n] applied to every row of a [..., n] tensor. Misuse throws
// autograd::Error naming the op and the shapes.
#pragma once
#include <cstdint>
#include <span>
#include <vector>

#include "autograd/tape.h"

namespace autograd {

// ---- element-wise -----------------------------------------------------------------------------
// [...] + [...] or [..., n] + [n] -> [...];  da += dy, db += dy (summed over rows if broadcast)
Variable add(const Variable& a, const Variable& b);
// [...] - [...] or [..., n] - [n];            da += dy, db -= dy
Variable sub(const Variable& a, const Variable& b);
// [...] * [...] or [..., n] * [n];            da += dy*b, db += dy*a
Variable mul(const Variable& a, const Variable& b);
// [...] * s;                                  da += s*dy
Variable scale(const Variable& a, float s);
// relu(x) = max(x,0);                         dx += dy * (x > 0)
Variable relu(const Variable& x);
// relu(x)^2;                                  dx += dy * 2 relu(x)
Variable relu2(const Variable& x);
// x * sigmoid(x);                             dx += dy * s (1 + x (1 - s))
Variable silu(const Variable& x);
// ReLU²GLU gate, fused: relu(g)^2 * u, g and u of one shape;
//                                             dg += dy * u * 2 relu(g), du += dy * relu(g)^2
Variable relu2_mul(const Variable& g, const Variable& u);

// ---- reductions ---------------------------------------------------------------------------------
// [...] -> [] (sum in double);                da += dy
Variable sum(const Variable& a);
// [...] -> [] ;                               da += dy / numel
Variable mean(const Variable& a);

// ---- matmul -------------------------------------------------------------------------------------
// 2-D:     op(a)[M,K] @ op(b)[K,N] -> [M,N], op = transpose when ta/tb (no copy).
// N-D a:   a[..., K] @ op(b)[K,N] -> [..., N] (a's leading dims flattened; ta must be false).
// batched: a[Bt,M,K] @ b[Bt,K,N] -> [Bt,M,N] when both are rank 3 (flags apply per batch).
// Backward: d op(a) = dC op(b)^T,  d op(b) = op(a)^T dC.
Variable matmul(const Variable& a, const Variable& b, bool ta = false, bool tb = false);
// x[..., in] @ w[out, in]^T -> [..., out] (a Linear without bias).
inline Variable linear(const Variable& x, const Variable& w) { return matmul(x, w, false, true); }

// ---- shape --------------------------------------------------------------------------------------
// view with the same numel (zero-copy);       da += dy viewed back
Variable reshape(const Variable& a, const Shape& s);
// swaps dims d0 and d1 (copy);                da += transpose(dy)
Variable transpose(const Variable& a, int d0, int d1);
// [.., n, ..] -> [.., end-begin, ..] along dim; da[slice] += dy
Variable slice(const Variable& a, int dim, int64_t begin, int64_t end);
// concatenation along dim (other dims equal); each input gets its part of dy
Variable concat(const std::vector<Variable>& xs, int dim);

// ---- neural-network ops
// -------------------------------------------------------------------------- weight[V,D], ids[N] ->
// [N,D] (gather);       dweight[ids[i]] += dy[i] (scatter-add)
Variable embedding(const Variable& weight, std::span<const int32_t> ids);
// y = g * x / sqrt(mean(x^2) + eps) per row of x[..., D], g[D].
// dx = r (g dy - xhat mean(g dy xhat)), dg += sum_rows(dy xhat), r = 1/rms, xhat = x r
Variable rmsnorm(const Variable& x, const Variable& gain, float eps);
// softmax over the last dim of [..., n];     dx = y (dy - sum(dy y))
Variable softmax(const Variable& x);
// Rotary embedding, rotate-half convention, on x[B,H,T,hd] (hd even), position = pos0 + t:
// y1 = x1 c - x2 s, y2 = x2 c + x1 s with angle (pos) * theta^(-2i/hd), i < hd/2.
// Backward is the inverse rotation: dx1 = dy1 c + dy2 s, dx2 = dy2 c - dy1 s.
Variable rope(const Variable& x, float theta, int64_t pos0 = 0);
// Causal scaled-dot-product attention. q[B,H,T,hd], k,v[B,Hkv,T,hd], H % Hkv == 0 (GQA: query
// head h reads kv head h / (H/Hkv)) -> [B,H,T,hd]. P = softmax(q k^T / sqrt(hd) + causal), o = P v.
// Backward (P recomputed per head, not kept): dV += P^T dO; dS = P (dP - rowsum(dP P)),
// dP = dO V^T; dQ += dS K/sqrt(hd);
// dK += dS^T Q/sqrt(hd).
Variable causal_attention(const Variable& q, const Variable& k, const Variable& v);
// Fused log-softmax + cross-entropy: logits[N,V], targets[N] -> [] mean over targets != ignore.
// dlogits = (softmax(logits) - onehot(target)) * dy / count; ignored rows get 0.
Variable cross_entropy(const Variable& logits, std::span<const int32_t> targets,
                       int32_t ignore_index = -100);
// The LM head and cross-entropy fused, without the [N, V] logits: x[N,D], w[V,D], targets[N] ->
// [] = cross_entropy(x w^T, targets). The vocabulary runs in chunks of Vc rows of w (Vc N <=
// chunk_elements, at least one row): z_c = x w_c^T [N, Vc], an online log-sum-exp per row.
// Backward recomputes each z_c: dz_c = (e^(z_c - lse) - onehot) dy / count, dx += dz_c w_c,
// dw_c += dz_c^T x. One chunk computes what cross_entropy(linear(x, w)) does, bit for bit.
inline constexpr int64_t kLinearCeChunkElements = int64_t(64) << 20;
Variable linear_cross_entropy(const Variable& x, const Variable& w,
                              std::span<const int32_t> targets, int32_t ignore_index = -100,
                              int64_t chunk_elements = kLinearCeChunkElements);

}  // namespace autograd
