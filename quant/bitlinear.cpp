// BitLinear tape node over integer codes (declared in bitlinear.h): igemm forward, STE backward.
#include "quant/bitlinear.h"

#include "autograd/error.h"
#include "autograd/kernels.h"
#include "quant/igemm.h"

namespace quant {
using autograd::Shape;
using autograd::Tape;
using autograd::Tensor;
using autograd::Variable;
namespace kn = autograd::kernels;

namespace {

// Pooled byte buffer of n bytes (a float tensor of ceil(n/4) elements).
Tensor byte_buffer(int64_t n) { return Tensor::empty(Shape{(n + 3) / 4}); }

struct BitLinearNode final : autograd::Node {
  std::shared_ptr<const QuantizedAct> qa;
  Variable w;
  float absmean;  // a of the ternary quantizer in the forward (W is unchanged until the update)
  BitLinearNode(std::shared_ptr<const QuantizedAct> qa_, Variable w_, float a)
      : qa(std::move(qa_)), w(std::move(w_)), absmean(a) {}
  const char* name() const override { return "bitlinear"; }
  void backward() override {
    const Tensor& dy = out.grad();
    const int64_t M = qa->rows, K = qa->cols, N = w.shape()[0];
    if (qa->x.requires_grad()) {  // dx[M,K] += dy[M,N] · Wq[N,K]
      Tensor wq = Tensor::empty(w.shape());
      ternary_apply(w.data(), N * K, absmean, wq.data(), nullptr);
      Tensor& dx = qa->x.grad();
      const bool fresh = !dx.defined();  // first gradient: write it (beta 0), no zero fill
      if (fresh) dx = Tensor::empty(qa->shape);
      kn::gemm(false, false, M, K, N, 1.0f, dy.data(), N, wq.data(), K, fresh ? 0.0f : 1.0f, dx.data(), K);
    }
    if (w.requires_grad()) {  // dW[N,K] += dy^T[N,M] · Xq[M,K], Xq = c / s per row
      kn::gemm(true, false, N, K, M, 1.0f, dy.data(), N, qa->dequantized().data(), K, 1.0f,
               w.grad_accum().data(), K);
    }
  }
};

}  // namespace

const Tensor& QuantizedAct::dequantized() const {
  if (!xq_.defined()) {
    xq_ = Tensor::empty(Shape{rows, cols});
    const int8_t* c = code_data();
    const float* s = mult.data();
    float* o = xq_.data();
    const int64_t K = cols, L = ld;
    kn::parallel_for(rows, [&](int64_t r) {
      const float sr = s[r];
      for (int64_t k = 0; k < K; ++k) o[r * K + k] = float(c[r * L + k]) / sr;
    });
  }
  return xq_;
}

bool has_integer_codes(const ActSpec& spec) {
  return spec.kind == ActKind::Int8 || spec.kind == ActKind::Int4;
}

std::shared_ptr<const QuantizedAct> quantize_act(const Variable& x, const ActSpec& spec,
                                                 int64_t* zeros_out) {
  BN_CHECK(x.defined(), "quantize_act", "undefined input");
  const Shape& sh = x.shape();
  BN_CHECK(sh.rank() >= 1 && sh.back() >= 1, "quantize_act", "input ", sh,
           " must be [..., cols] with cols >= 1");
  BN_CHECK(has_integer_codes(spec), "quantize_act", "spec ", to_string(spec),
           " has no integer codes (input ", sh, ")");
  auto qa = std::make_shared<QuantizedAct>();
  qa->x = x;
  qa->shape = sh;
  qa->spec = spec;
  qa->cols = sh.back();
  qa->rows = sh.numel() / qa->cols;
  qa->ld = 4 * ((qa->cols + 3) / 4);
  qa->codes = byte_buffer(qa->rows * qa->ld);
  qa->mult = Tensor::empty(Shape{qa->rows});
  qa->scale = Tensor::empty(Shape{qa->rows});
  const int64_t z = act_quantize_codes(spec, x.data(), qa->rows, qa->cols,
                                       reinterpret_cast<int8_t*>(qa->codes.data()), qa->ld,
                                       qa->mult.data(), qa->scale.data(), zeros_out != nullptr);
  if (zeros_out) *zeros_out += z;
  return qa;
}

Variable bitlinear(const std::shared_ptr<const QuantizedAct>& qa, const Variable& w) {
  BN_CHECK(qa && w.defined(), "bitlinear", "undefined input or weight");
  const Shape& ws = w.shape();
  BN_CHECK(ws.rank() == 2 && ws[1] == qa->cols, "bitlinear", "input ", qa->shape, " vs weight ",
           ws, " (need weight [out, ", qa->cols, "])");
  const int64_t N = ws[0], K = ws[1];
  // Ternary codes of the latent weight (the same kernel as quant::ternary), then VNNI panels.
  Tensor codes = byte_buffer(N * K);
  int8_t* cw = reinterpret_cast<int8_t*>(codes.data());
  const float a = ternary_absmean(w.data(), N * K, nullptr, cw);
  const float wscale = 1.0f / (1.0f / a);  // Wq = c / s with s = 1/a: the value of code 1
  const PackedTernary packed = pack_ternary(cw, N, K);
  Shape os = qa->shape;
  os.at(-1) = N;
  Tensor y = Tensor::empty(os);
  igemm_ternary_f32(qa->code_data(), qa->rows, qa->ld, packed, qa->scale.data(), wscale, y.data(), N);
  if (Tape* t = autograd::recording_if(qa->x.requires_grad() || w.requires_grad())) {
    auto& node = t->record<BitLinearNode>(qa, w, a);
    return node.set_output(std::move(y));
  }
  return Variable(std::move(y));
}

}  // namespace quant
