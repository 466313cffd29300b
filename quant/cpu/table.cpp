// The CPU quant kernel table: the fused raw-pointer kernels of quantizers.h / igemm.h on tensors.
#include "autograd/kernels.h"
#include "quant/dispatch.h"

namespace quant {
using autograd::Tensor;

namespace {
float* opt(const Tensor& t) { return t.defined() ? t.data() : nullptr; }

int64_t cpu_act_quantize(const ActSpec& spec, const Tensor& x, const Tensor& y, bool count) {
  const int64_t cols = x.shape().back(), rows = x.numel() / cols;
  if (count)
    return act_quantize_count_zeros(spec, x.data(), rows, cols, y.data(), nullptr, nullptr);
  act_quantize(spec, x.data(), rows, cols, y.data(), nullptr, nullptr);
  return 0;
}

int64_t cpu_count_zeros(const Tensor& x) {
  const float* v = x.data();
  const int64_t n = x.numel();
  int64_t z = 0;
#pragma omp parallel for schedule(static) reduction(+ : z)
  for (int64_t i = 0; i < n; ++i) z += v[i] == 0.0f;
  return z;
}

void cpu_ternary(const Tensor& w, const Tensor& wq, const Tensor& codes, const Tensor& a) {
  a.data()[0] = ternary_absmean(w.data(), w.numel(), opt(wq),
                                codes.defined() ? codes.data<int8_t>() : nullptr);
}

void cpu_ternary_apply(const Tensor& w, const Tensor& a, const Tensor& wq) {
  ternary_apply(w.data(), w.numel(), a.data()[0], wq.data(), nullptr);
}

int64_t cpu_act_codes(const ActSpec& spec, const Tensor& x, const Tensor& codes, const Tensor& mult,
                      const Tensor& scale, bool count) {
  const int64_t cols = x.shape().back(), rows = x.numel() / cols, ld = codes.shape().back();
  return act_quantize_codes(spec, x.data(), rows, cols, codes.data<int8_t>(), ld, opt(mult),
                            opt(scale), count);
}

void cpu_dequantize(const Tensor& codes, const Tensor& mult, const Tensor& y) {
  const int64_t rows = y.shape()[0], K = y.shape()[1], L = codes.shape().back();
  const int8_t* c = codes.data<int8_t>();
  const float* s = mult.data();
  if (y.dtype() == autograd::DType::BF16) {
    autograd::bf16* o = y.data<autograd::bf16>();
    autograd::kernels::parallel_for(rows, [&](int64_t r) {
      const float sr = s[r];
      for (int64_t k = 0; k < K; ++k) o[r * K + k] = autograd::to_bf16(float(c[r * L + k]) / sr);
    });
    return;
  }
  float* o = y.data();
  autograd::kernels::parallel_for(rows, [&](int64_t r) {
    const float sr = s[r];
    for (int64_t k = 0; k < K; ++k) o[r * K + k] = float(c[r * L + k]) / sr;
  });
}

PackedTernary cpu_pack(const Tensor& codes) {
  return pack_ternary(codes.data<int8_t>(), codes.shape()[0], codes.shape()[1]);
}

void cpu_ternary_gemm(const Tensor& xcodes, int64_t, const PackedTernary& w, const Tensor& xscale,
                      const Tensor& a, const Tensor& y) {
  const float wscale = 1.0f / (1.0f / a.data()[0]);  // Wq = c / s with s = 1/a: the value of code 1
  igemm_ternary_f32(xcodes.data<int8_t>(), xcodes.shape()[0], xcodes.shape().back(), w,
                    xscale.data(), wscale, y.data(), w.N);
}

}  // namespace

const Kernels& cpu_kernels() {
  static const Kernels k{
      .device = "cpu",
      .act_quantize = cpu_act_quantize,
      .count_zeros = cpu_count_zeros,
      .ternary = cpu_ternary,
      .ternary_apply = cpu_ternary_apply,
      .act_codes = cpu_act_codes,
      .dequantize = cpu_dequantize,
      .pack_ternary = cpu_pack,
      .ternary_gemm = cpu_ternary_gemm,
  };
  return k;
}

}  // namespace quant
