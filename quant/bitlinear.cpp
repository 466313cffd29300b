// BitLinear tape node over integer codes (declared in bitlinear.h): igemm forward, STE backward.
#include "quant/bitlinear.h"

#include "quant/dispatch.h"

namespace quant {
using autograd::Device;
using autograd::DType;
using autograd::Shape;
using autograd::Tape;
using autograd::Tensor;
using autograd::Variable;

namespace {

// C[M,N] (+)= op(A) op(B) on dev (one GEMM through the autograd kernel table); A16 / B16: the
// operands already rounded to bf16 (GemmArgs), or null.
void gemm(Device dev, bool ta, bool tb, int64_t M, int64_t N, int64_t K, const float* A,
          int64_t lda, const float* B, int64_t ldb, float beta, float* C, int64_t ldc,
          const void* A16 = nullptr, const void* B16 = nullptr) {
  autograd::GemmArgs g;
  g.ta = ta, g.tb = tb, g.M = M, g.N = N, g.K = K, g.A = A, g.lda = lda, g.B = B, g.ldb = ldb;
  g.beta = beta, g.C = C, g.ldc = ldc, g.A16 = A16, g.B16 = B16;
  BN_KERNEL(dev, gemm)(g);
}

struct BitLinearNode final : autograd::Node {
  std::shared_ptr<const QuantizedAct> qa;
  Variable w;
  Tensor
      absmean;  // [1]: a of the ternary quantizer in the forward (W is unchanged until the update)
  BitLinearNode(std::shared_ptr<const QuantizedAct> qa_, Variable w_, Tensor a)
      : qa(std::move(qa_)), w(std::move(w_)), absmean(std::move(a)) {}
  const char* name() const override { return "bitlinear"; }
  void backward() override {
    const Tensor& dy = out.grad();
    const Device dev = dy.device();
    const int64_t M = qa->rows, K = qa->cols, N = w.shape()[0];
    // GEMM precision bf16: dy rounded once for both GEMMs, Xq produced in bf16 (the GEMMs would
    // round the same values each call; the results are bit-identical).
    const bool bf = autograd::gemm_precision() == autograd::GemmPrecision::BF16;
    Tensor dy16;
    if (bf && qa->x.requires_grad() && w.requires_grad()) {
      dy16 = Tensor::empty(dy.shape(), DType::BF16, dev);
      BN_KERNEL(dev, round_bf16)(dy, dy16);
    }
    const void* dyb = dy16.defined() ? dy16.raw() : nullptr;
    if (qa->x.requires_grad()) {  // dx[M,K] += dy[M,N] · Wq[N,K]
      Tensor wq = Tensor::empty(w.shape(), DType::F32, dev);
      BN_QKERNEL(dev, ternary_apply)(w.value(), absmean, wq);
      Tensor& dx = qa->x.grad();
      const bool fresh = !dx.defined();  // first gradient: write it (beta 0), no zero fill
      if (fresh) dx = Tensor::empty(qa->shape, DType::F32, dev);
      gemm(dev, false, false, M, K, N, dy.data(), N, wq.data(), K, fresh ? 0.0f : 1.0f, dx.data(),
           K, dyb);
    }
    if (w.requires_grad()) {  // dW[N,K] += dy^T[N,M] · Xq[M,K], Xq = c / s per row
      if (bf)
        gemm(dev, true, false, N, K, M, dy.data(), N, nullptr, K, 1.0f, w.grad_accum().data(), K,
             dyb, qa->dequantized_bf16().raw());
      else
        gemm(dev, true, false, N, K, M, dy.data(), N, qa->dequantized().data(), K, 1.0f,
             w.grad_accum().data(), K);
    }
  }
};

}  // namespace

const Tensor& QuantizedAct::dequantized_bf16() const {
  if (!xq16_.defined()) {
    xq16_ = Tensor::empty(Shape{rows, cols}, DType::BF16, codes.device());
    BN_QKERNEL(codes.device(), dequantize)(codes, mult, xq16_);
  }
  return xq16_;
}

const Tensor& QuantizedAct::dequantized() const {
  if (!xq_.defined()) {
    xq_ = Tensor::empty(Shape{rows, cols}, DType::F32, codes.device());
    BN_QKERNEL(codes.device(), dequantize)(codes, mult, xq_);
  }
  return xq_;
}

bool has_integer_codes(const ActSpec& spec) { return integer_codes(spec.kind); }

std::shared_ptr<const QuantizedAct> quantize_act(const Variable& x, const ActSpec& spec,
                                                 int64_t* zeros_out) {
  BN_CHECK(x.defined(), "quantize_act", "undefined input");
  const Shape& sh = x.shape();
  BN_CHECK(sh.rank() >= 1 && sh.back() >= 1, "quantize_act", "input ", sh,
           " must be [..., cols] with cols >= 1");
  BN_CHECK(has_integer_codes(spec), "quantize_act", "spec ", to_string(spec),
           " has no integer codes (input ", sh, ")");
  autograd::check_f32("quantize_act", {&x.value()});
  const Device dev = x.value().device();
  auto qa = std::make_shared<QuantizedAct>();
  qa->x = x;
  qa->shape = sh;
  qa->spec = spec;
  qa->cols = sh.back();
  qa->rows = sh.numel() / qa->cols;
  qa->ld = 4 * ((qa->cols + 3) / 4);
  qa->codes = Tensor::empty(Shape{qa->rows, qa->ld}, DType::I8, dev);
  qa->mult = Tensor::empty(Shape{qa->rows}, DType::F32, dev);
  qa->scale = Tensor::empty(Shape{qa->rows}, DType::F32, dev);
  const int64_t z = BN_QKERNEL(dev, act_codes)(spec, x.value(), qa->codes, qa->mult, qa->scale,
                                               zeros_out != nullptr);
  if (zeros_out) *zeros_out += z;
  return qa;
}

Variable bitlinear(const std::shared_ptr<const QuantizedAct>& qa, const Variable& w) {
  BN_CHECK(qa && w.defined(), "bitlinear", "undefined input or weight");
  const Shape& ws = w.shape();
  BN_CHECK(ws.rank() == 2 && ws[1] == qa->cols, "bitlinear", "input ", qa->shape, " vs weight ", ws,
           " (need weight [out, ", qa->cols, "])");
  autograd::check_f32("bitlinear", {&w.value()});
  autograd::check_same_device("bitlinear", {&qa->codes, &w.value()});
  const Device dev = w.value().device();
  const int64_t N = ws[0], K = ws[1];
  // Ternary codes of the latent weight (the same kernel as quant::ternary), then the device's
  // packed layout; a stays on the device.
  Tensor codes = Tensor::empty(Shape{N, K}, DType::I8, dev);
  Tensor a = Tensor::empty(Shape{1}, DType::F32, dev);
  BN_QKERNEL(dev, ternary)(w.value(), Tensor(), codes, a);
  const PackedTernary packed = BN_QKERNEL(dev, pack_ternary)(codes);
  Shape os = qa->shape;
  os.at(-1) = N;
  Tensor y = Tensor::empty(os, autograd::activation_dtype(dev), dev);  // (bf16: rounded once)
  BN_QKERNEL(dev, ternary_gemm)(qa->codes, qa->cols, packed, qa->scale, a, y);
  if (Tape* t = autograd::recording_if(qa->x.requires_grad() || w.requires_grad())) {
    auto& node = t->record<BitLinearNode>(qa, w, a);
    return node.set_output(std::move(y));
  }
  return Variable(std::move(y));
}

}  // namespace quant
