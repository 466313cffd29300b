// The per-device kernel table of the autograd ops: what a backend implements, and the lookup.
//
// Every op in ops_*.cpp validates its operands (shapes, dtypes, one device), allocates its output
// on the operands' device and calls its kernels through `kernels_for(device)`; its Node's
// backward does the same. The model (nn/), the tape and the optimizer never call a kernel
// directly, so a new device is a new table: its kernels go in `autograd/<device>/` beside
// `autograd/cpu/` (see docs/ARCHITECTURE.md, "Adding a device"), registered with
// `register_kernels` together with the device's memory functions (tensor.h). A null entry is a
// kernel the device does not have yet: calling it throws naming the op and the device.
//
// Conventions for every entry: tensors are contiguous, on the table's device and f32 unless
// stated; an output named `y` is overwritten, one named `d*` (a gradient) is accumulated into
// (+=) unless stated; an undefined optional gradient means "not needed".
#pragma once
#include <cstdint>
#include <string>

#include "autograd/error.h"
#include "autograd/tensor.h"

namespace autograd {

enum class BinOp : uint8_t { Add, Sub, Mul };
enum class UnOp : uint8_t { Relu, Relu2, Silu };

// Arithmetic of the float GEMMs (training.precision): F32 is exact fp32 products and sums (the
// CPU; cuBLAS in pedantic mode), TF32 rounds the operands to TF32 (10-bit mantissa) on the tensor
// cores, BF16 rounds them to bf16 (round to nearest even); both accumulate and write fp32.
// A device without the arithmetic refuses it (the CPU has F32 only).
enum class GemmPrecision : uint8_t { F32, TF32, BF16 };
const char* to_string(GemmPrecision p);                    // "fp32", "tf32", "bf16"
GemmPrecision parse_gemm_precision(const std::string& s);  // throws naming the accepted values
// The precision every GemmArgs starts with (process-wide; default F32). The trainer sets it from
// training.precision; the quantized forward's integer GEMM is exact whatever it is.
GemmPrecision gemm_precision();
void set_gemm_precision(GemmPrecision p);
// Sets the precision for the scope's lifetime (tests, benchmarks).
class ScopedGemmPrecision {
 public:
  explicit ScopedGemmPrecision(GemmPrecision p) : prev_(gemm_precision()) { set_gemm_precision(p); }
  ~ScopedGemmPrecision() { set_gemm_precision(prev_); }
  ScopedGemmPrecision(const ScopedGemmPrecision&) = delete;
  ScopedGemmPrecision& operator=(const ScopedGemmPrecision&) = delete;

 private:
  GemmPrecision prev_;
};

// C_i = alpha op(A_i) op(B_i) + beta C_i for i < max(batch, 1), row-major with leading strides;
// operand i starts at A + i*stride_a (likewise B, C). op(A) is [M,K] (A stored [K,M] when ta),
// op(B) is [K,N]. beta == 0 overwrites C. Pointers are of the table's device, f32.
// A16 / B16 (precision BF16 only): the operand already rounded to bf16 (round_bf16), same layout,
// used instead of A / B, so an operand shared by several GEMMs is rounded once; the result is
// bit-identical to passing the f32 operand.
struct GemmArgs {
  bool ta = false, tb = false;
  int64_t M = 0, N = 0, K = 0;
  float alpha = 1.0f;
  const float* A = nullptr;
  int64_t lda = 0;
  const float* B = nullptr;
  int64_t ldb = 0;
  float beta = 0.0f;
  float* C = nullptr;
  int64_t ldc = 0;
  int64_t batch = 0, stride_a = 0, stride_b = 0, stride_c = 0;  // batch 0: one GEMM
  GemmPrecision precision = gemm_precision();
  const void* A16 = nullptr;
  const void* B16 = nullptr;
};

// Per-row running state of linear_cross_entropy's online log-sum-exp over vocabulary chunks,
// stored in a u8 tensor of N * sizeof(CeRowState) bytes: e = sum_j e^(z_j - m) over the columns
// seen so far (double), m their max, t the target's logit once its chunk has been seen.
struct CeRowState {
  double e;
  float m, t;
};

struct Kernels {
  const char* device = "?";
  // bf16 activations (activation_dtype): the kernels marked "f32|bf16" below also read (and,
  // where stated, write) bf16 values; gradients are f32 on every device.
  bool bf16_activations = false;
  // t[:] = v
  void (*fill)(const Tensor& t, float v) = nullptr;
  void (*gemm)(const GemmArgs& g) = nullptr;
  // y (bf16) = x (f32) rounded to nearest even, same numel (NaN stays NaN)
  void (*round_bf16)(const Tensor& x, const Tensor& y) = nullptr;
  // y (f32) = a op b; b is either a's shape or [n] broadcast over the rows of a[..., n]; a, b
  // f32|bf16 for Add and Sub (the residual stream adds a bf16 BitLinear output)
  void (*binary)(BinOp op, const Tensor& a, const Tensor& b, const Tensor& y) = nullptr;
  // d += alpha * s   (same numel)
  void (*axpy)(const Tensor& d, const Tensor& s, float alpha) = nullptr;
  // d += dy * b, b as in `binary` (broadcast when bcast)
  void (*mul_acc)(const Tensor& d, const Tensor& dy, const Tensor& b, bool bcast) = nullptr;
  // d[n] += sum over rows of sign*dy[.., n] (a undefined) or dy*a (a defined), in fixed order
  void (*row_sum)(const Tensor& d, const Tensor& dy, const Tensor& a, float sign) = nullptr;
  // y = s * a
  void (*scale)(const Tensor& a, float s, const Tensor& y) = nullptr;
  // y[] = sum(a) (mean when mean; factor = 1/numel), accumulated in double in fixed order
  void (*sum_all)(const Tensor& a, bool mean, float factor, const Tensor& y) = nullptr;
  // d += dy[0] * factor for every element of d (dy has one element)
  void (*add_scalar)(const Tensor& d, const Tensor& dy, float factor) = nullptr;
  // y (f32) = f(x), x f32|bf16
  void (*unary)(UnOp op, const Tensor& x, const Tensor& y) = nullptr;
  // dx += dy * f'(x), x f32|bf16
  void (*unary_backward)(UnOp op, const Tensor& x, const Tensor& dy, const Tensor& dx) = nullptr;
  // y = relu(g)^2 * u;  dg += dy u 2 relu(g), du += dy relu(g)^2; g, u f32|bf16 (each), y
  // f32|bf16 (rounded once, from the f32 product)
  void (*relu2_mul)(const Tensor& g, const Tensor& u, const Tensor& y) = nullptr;
  void (*relu2_mul_backward)(const Tensor& g, const Tensor& u, const Tensor& dy, const Tensor& dg,
                             const Tensor& du) = nullptr;
  // x shaped s viewed [pre, A, mid, B, post] (A = s[d0], B = s[d1], d0 < d1) -> y[pre, B, mid,
  // A, post]; y += instead of = when accumulate; x, y both f32 or both bf16 (bf16: a copy, not
  // accumulate)
  void (*transpose)(const Tensor& x, const Tensor& y, const Shape& s, int d0, int d1,
                    bool accumulate) = nullptr;
  // big[pre, n, post] and small[pre, m, post] where small is the band [at, at+m) of dim `dim`
  // of big: to_small: small (+)= band, else band (+)= small (+= when accumulate)
  void (*band_copy)(const Tensor& big, const Tensor& small, int dim, int64_t at, bool to_small,
                    bool accumulate) = nullptr;
  // w[V,D], ids i32[N] -> y[N,D];  dw[ids[i]] += dy[i], deterministic (no atomics order issue)
  void (*embedding)(const Tensor& w, const Tensor& ids, const Tensor& y) = nullptr;
  void (*embedding_backward)(const Tensor& ids, const Tensor& dy, const Tensor& dw) = nullptr;
  // x[rows, D] f32|bf16, g[D] -> y (f32) = g x r, rinv[rows] = r = 1/sqrt(mean(x^2) + eps)
  void (*rmsnorm)(const Tensor& x, const Tensor& g, float eps, const Tensor& y,
                  const Tensor& rinv) = nullptr;
  // dx += r (g dy - xhat mean(g dy xhat)), dg += sum_rows(dy xhat) (either may be undefined);
  // x f32|bf16
  void (*rmsnorm_backward)(const Tensor& x, const Tensor& g, const Tensor& rinv, const Tensor& dy,
                           const Tensor& dx, const Tensor& dg) = nullptr;
  // y = softmax over the last dim; dx += y (dy - sum(dy y))
  void (*softmax)(const Tensor& x, const Tensor& y) = nullptr;
  void (*softmax_backward)(const Tensor& y, const Tensor& dy, const Tensor& dx) = nullptr;
  // x[B,H,T,hd] rotated by angle (pos0 + t) theta^(-2i/hd) (inverse: by minus it); y (+)= result;
  // x, y both f32 or (not accumulate) both bf16, the rotation in f32
  void (*rope)(const Tensor& x, const Tensor& y, float theta, int64_t pos0, bool inverse,
               bool accumulate) = nullptr;
  // q[B,H,T,hd], k,v[B,Hkv,T,hd] -> o = softmax(q k^T / sqrt(hd) + causal) v; q, k, v, o f32, or
  // (each) bf16 where bf16_activations and precision BF16
  void (*attention)(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& o) = nullptr;
  void (*attention_backward)(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& dout,
                             const Tensor& dq, const Tensor& dk, const Tensor& dv) = nullptr;
  // Cross-entropy over vocabulary chunks (cross_entropy: one chunk, the whole row;
  // linear_cross_entropy: many). z[N, Vc] holds logit columns [v0, v0 + Vc); state u8[N *
  // sizeof(CeRowState)] (reset when v0 == 0). Per row: m' = max(m, max_j z_j), e' = e e^(m - m') +
  // sum_j e^(z_j - m'), t = z[target - v0] if there.
  void (*ce_chunk)(const Tensor& z, int64_t v0, const Tensor& targets,
                   const Tensor& state) = nullptr;
  // lse[i] = m + log e; loss[] = sum over rows with target != ignore of (lse - t) / count
  // (0 when count == 0), in double in fixed order
  void (*ce_finish)(const Tensor& state, const Tensor& targets, int32_t ignore, int64_t count,
                    const Tensor& lse, const Tensor& loss) = nullptr;
  // y[N, Vc] = (e^(z - lse) - onehot(target - v0)) dy[0] / count, 0 on ignored rows; y may be z
  void (*ce_chunk_backward)(const Tensor& z, int64_t v0, const Tensor& targets, int32_t ignore,
                            int64_t count, const Tensor& lse, const Tensor& dy,
                            const Tensor& y) = nullptr;
};

// Installs `k` as the kernel table of `type` (a backend's initialisation does this).
void register_kernels(DeviceType type, const Kernels* k);
// The table of d's type; throws naming the device when none is registered.
const Kernels& kernels_for(Device d);
// The built-in CPU table (autograd/cpu/).
const Kernels& cpu_kernels();

// Replaces a device's table for the scope's lifetime (tests: a counting or failing double).
class ScopedKernels {
 public:
  ScopedKernels(DeviceType type, const Kernels* k);
  ~ScopedKernels();
  ScopedKernels(const ScopedKernels&) = delete;
  ScopedKernels& operator=(const ScopedKernels&) = delete;

 private:
  DeviceType type_;
  const Kernels* prev_;
};

// The tables of one layer (autograd, quant, optim), one slot per device type. An empty slot of
// the CPU falls back to the layer's built-in CPU table; of another device, it throws.
template <class Table>
class KernelRegistry {
 public:
  KernelRegistry(const char* layer, const Table& (*cpu)()) : layer_(layer), cpu_(cpu) {}
  void set(DeviceType type, const Table* k) { tables_[int(type)] = k; }
  const Table* slot(DeviceType type) const { return tables_[int(type)]; }
  const Table& get(Device d) const {
    if (const Table* k = tables_[int(d.type)]) return *k;
    if (d.is_cpu()) return cpu_();
    fail("device ", d.str(), ": this build has no ", layer_,
         " kernels for it (built without CUDA?)");
  }

 private:
  const char* layer_;
  const Table& (*cpu_)();
  const Table* tables_[kDeviceTypes] = {};
};

namespace detail {
template <class F>
F need_kernel(F f, const char* name, Device d) {
  if (!f) fail(name, ": no kernel on device ", d.str(), " (its backend does not implement it yet)");
  return f;
}
}  // namespace detail

// Operand checks shared by the ops: one device for all, the expected dtype for each.
// "op: operands are on cpu and cuda:0 (q f32 [..] on cpu, k ...)" / "op: x is i8 [..], expected
// f32"
void check_same_device(const char* op, std::initializer_list<const Tensor*> ts);
void check_f32(const char* op, std::initializer_list<const Tensor*> ts);
// Each defined tensor f32, or bf16 on a device whose table has bf16_activations: "op: operand 1
// is bf16 [..] on cpu: bf16 activations need a device whose kernels take them (cuda)".
void check_float(const char* op, std::initializer_list<const Tensor*> ts);

// The dtype of the activations the ops write between the layers of a model (BitLinear outputs,
// attention outputs, relu²·up, and the transposes and RoPE that carry them): BF16 under GEMM
// precision BF16 on a device whose table has bf16_activations, else F32. Norms, quantizer
// inputs, the residual stream, logits and the loss stay f32 (docs/GPU.md, "dtypes").
DType activation_dtype(Device d);

// The copy of an activation that a node keeps for its backward: x rounded to bf16 (round_bf16)
// when x is f32 and activation_dtype(x's device) is BF16, so the fp32 value is freed once the
// forward is done with it; otherwise x itself (no copy).
Tensor saved_activation(const Tensor& x);

}  // namespace autograd

// BN_KERNEL(device, entry)(args...): calls the `entry` kernel of device's table.
#define BN_KERNEL(dev, entry) \
  (::autograd::detail::need_kernel(::autograd::kernels_for(dev).entry, #entry, (dev)))
