// The CPU kernel table of the autograd ops: every entry of autograd::Kernels, from cpu.h.
#include "autograd/cpu/cpu.h"

namespace autograd {

const Kernels& cpu_kernels() {
  static const Kernels k{
      .device = "cpu",
      .fill = cpu::fill,
      .gemm = cpu::gemm,
      .round_bf16 = cpu::round_bf16,
      .binary = cpu::binary,
      .axpy = cpu::axpy,
      .mul_acc = cpu::mul_acc,
      .row_sum = cpu::row_sum,
      .scale = cpu::scale,
      .sum_all = cpu::sum_all,
      .add_scalar = cpu::add_scalar,
      .unary = cpu::unary,
      .unary_backward = cpu::unary_backward,
      .relu2_mul = cpu::relu2_mul,
      .relu2_mul_backward = cpu::relu2_mul_backward,
      .transpose = cpu::transpose,
      .band_copy = cpu::band_copy,
      .embedding = cpu::embedding,
      .embedding_backward = cpu::embedding_backward,
      .rmsnorm = cpu::rmsnorm,
      .rmsnorm_backward = cpu::rmsnorm_backward,
      .softmax = cpu::softmax,
      .softmax_backward = cpu::softmax_backward,
      .rope = cpu::rope,
      .attention = cpu::attention,
      .attention_backward = cpu::attention_backward,
      .ce_chunk = cpu::ce_chunk,
      .ce_finish = cpu::ce_finish,
      .ce_chunk_backward = cpu::ce_chunk_backward,
  };
  return k;
}

}  // namespace autograd
