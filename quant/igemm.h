// Exact integer GEMM of BitLinear's forward: int8 activation codes x ternary weight codes.
//
// y[m, n] = (sum_k cx[m, k] * cw[n, k]) * xscale[m] * wscale            (SPEC §2, integer form)
//
// cx are the activation quantizer's codes (INT8 in [-128, 127] or INT4 in [-8, 7]) and cw the
// ternary codes {-1, 0, 1}; the sum is computed exactly in int32. Three kernels compute it, the
// fastest the CPU has chosen at run time: AVX512-VNNI (vpdpbusd), AVX2 (vpmaddubsw + vpmaddwd)
// and a portable scalar loop. Both SIMD kernels multiply unsigned by signed bytes, so the weights
// are the unsigned operand, stored biased as cw + 1 in {0, 1, 2}, and the bias is removed exactly:
// sum (cw + 1) cx = sum cw cx + rowsum(cx). All three give the same int32 sums bit for bit, so the
// integer route, and a run's numerics, do not depend on the CPU.
//
// Weight layout (PackedTernary): panels of kPanel = 32 output columns; panel p holds, for each
// group g of 4 consecutive k, 32 columns x 4 bytes (128 bytes), i.e. byte
// [p][g][col % 32][k % 4]. K is padded to a multiple of 4 and N to a multiple of 32 with zero
// weights (biased byte 0, which contributes 0 whatever the activation byte).
#pragma once
#include <cstdint>

#include "autograd/tensor.h"

namespace quant {

inline constexpr int64_t kPanel = 32;

struct PackedTernary {
  int64_t N = 0, K = 0, K4 = 0;  // logical shape [N, K]; K4 = ceil(K / 4) groups
  autograd::Tensor bytes;        // u8 [ceil(N/32) * K4 * 128], pooled
  const uint8_t* data() const { return bytes.data<uint8_t>(); }
};

// codes[N, K] (row-major, values in {-1, 0, 1}) -> packed panels.
PackedTernary pack_ternary(const int8_t* codes, int64_t N, int64_t K);

// Activation codes x[M, K] with row stride ldx. ldx must be >= 4 * ceil(K/4) (the kernel reads
// whole groups of 4 bytes; bytes past K in a row are ignored because their weights are zero).
// acc[m, n] = sum_k x[m, k] * cw[n, k], exact; acc has row stride ldacc.
void igemm_ternary_s32(const int8_t* x, int64_t M, int64_t ldx, const PackedTernary& w,
                       int32_t* acc, int64_t ldacc);

// y[m, n] = float(acc[m, n]) * (xscale[m] * wscale) with acc as above; y has row stride ldy.
void igemm_ternary_f32(const int8_t* x, int64_t M, int64_t ldx, const PackedTernary& w,
                       const float* xscale, float wscale, float* y, int64_t ldy);

// The kernels behind igemm_ternary_*; Auto is the fastest one this CPU has (the default).
enum class IgemmKernel { Auto, Portable, Avx2, Avx512Vnni };

// Name of the kernel that runs now: "avx512-vnni", "avx2" or "portable".
const char* igemm_kernel();
// Name of k ("auto" for Auto), whether or not this CPU has it.
const char* igemm_kernel_name(IgemmKernel k);
// True when this CPU can run k (Auto and Portable: always; the SIMD kernels only on x86).
bool igemm_available(IgemmKernel k);
// Makes k run from now on (Auto: back to the fastest); throws when the CPU lacks k. Tests and
// benchmarks compare the kernels with it. Not thread-safe against concurrent GEMMs.
void igemm_force(IgemmKernel k);

// The route nn::BitLinear's forward takes where the integer GEMM applies (ternary weights, INT8 or
// INT4 input codes): the exact integer GEMM above with the VNNI kernel or the portable loop (equal
// int32 sums), or the float route (act_quant -> ternary -> fp32 GEMM), which agrees with them to
// fp32 rounding only. Runs on different routes therefore train differently; the trainer records
// the route in the run info and the checkpoints (docs/CHECKPOINTS.md).
// The BitLinear route this process takes where the codes are integers: always the integer GEMM,
// named by its igemm kernel (all three give the same int32 sums); Float only where a caller turns
// the integer route off (BitNetLM::set_integer_gemm(false)).
enum class BitLinearRoute { IntegerVnni, IntegerAvx2, IntegerPortable, Float };
BitLinearRoute bitlinear_route();
const char* to_string(
    BitLinearRoute r);  // "integer-vnni", "integer-avx2", "integer-portable", "float"

}  // namespace quant
