// The CUDA backend of the autograd layer: device memory and the autograd kernel table for
// DeviceType::CUDA (autograd/cuda/*.cu; built when CMake finds nvcc, see docs/GPU.md).
//
// `init()` registers both; tensor.cpp and dispatch.cpp call it lazily the first time a CUDA
// tensor or table is needed, so user code never has to. Entries still missing are null in the
// table: the op that needs one throws "<entry>: no kernel on device cuda:0 ...".
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>

namespace autograd::cuda {

// Registers DeviceMemory and autograd::Kernels for DeviceType::CUDA. Throws autograd::Error
// "no CUDA device (...)" when cudaGetDeviceCount fails or reports 0 devices.
void init();
// Number of CUDA devices (0 when the driver or a device is missing; never throws).
int device_count();
// Waits for the work queued on device `index`'s stream (tests, timing).
void synchronize(int index = 0);
// How many times the host has waited for device `index` so far: synchronize(), copies to the
// host, large uploads, a staging slot still in use. Small uploads (<= 256 KiB: token ids,
// targets) do not wait. Tests count the waits of a training step with it.
int64_t host_waits(int index = 0);

// Causal attention follows the GEMM precision: fp32 runs the fp32 flash kernel (attention.cu),
// bf16 / tf32 the tensor-core route (attention_tc.cu), which cuts the queries into chunks whose
// [B H, chunk, T] fp32 scores hold at most `elements` (default 128 Mi; tests lower it to force
// several chunks). Throws when elements < 1.
void set_attention_chunk_limit(int64_t elements);

// autograd/cuda/ceiling.cu: the device's name ("NVIDIA H200") and memory; its dense bf16
// tensor-core peak from the datasheet in TFLOP/s (0 when the part is not in the table); and the
// measured rate in TFLOP/s (TOP/s for int8) of C[M,N] = A[M,K] B[N,K]^T with cuBLAS in `kind`
// (bf16 -> fp32, int8 -> int32, tf32, fp32), the median of `reps` runs timed by CUDA events after
// two warm-ups, on pseudo-random operands.
std::string device_name(int index);
size_t device_total_memory(int index);
double nominal_bf16_tflops(int index);
double gemm_rate(int index, const std::string& kind, int64_t M, int64_t N, int64_t K,
                 int reps = 10);

}  // namespace autograd::cuda
