// The CUDA backend of the quant layer: the quant::Kernels table for DeviceType::CUDA
// (quant/cuda/quant.cu; built when CMake finds nvcc, see docs/GPU.md).
//
// `init()` registers it; quant/dispatch.cpp calls it lazily the first time a CUDA quant table is
// needed, so user code never has to.
//
// CUDA weight layout (PackedTernary from the CUDA pack_ternary): `bytes` is a u8 tensor on the
// device holding int8 ternary codes row-major [Np, Kp], Np = 16 ceil(N / 16), Kp = 16 ceil(K /
// 16), zero padded (rows >= N and columns >= K are 0); K4 = Kp / 4. This is the "A" operand of a
// TN int8 cuBLAS GEMM (lda = Kp), not the CPU's panel layout: a PackedTernary is only valid on the
// device that packed it.
#pragma once

namespace quant::cuda {

// Registers quant::Kernels for DeviceType::CUDA (after autograd::cuda::init(), which throws
// autograd::Error "no CUDA device (...)" without a device).
void init();

// Test hook: when on, ternary_gemm skips cuBLAS and uses the simple exact int32 kernel (the
// fallback taken when cuBLAS refuses a shape). Off by default.
void force_simple_igemm(bool on);
// "cublas" or "simple": the path the last CUDA ternary_gemm took ("none" before the first).
const char* last_igemm_path();

}  // namespace quant::cuda
