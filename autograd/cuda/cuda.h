// The CUDA backend of the autograd layer: device memory and the autograd kernel table for
// DeviceType::CUDA (autograd/cuda/*.cu; built when CMake finds nvcc, see docs/GPU.md).
//
// `init()` registers both; tensor.cpp and dispatch.cpp call it lazily the first time a CUDA
// tensor or table is needed, so user code never has to. Entries still missing are null in the
// table: the op that needs one throws "<entry>: no kernel on device cuda:0 ...".
#pragma once

namespace autograd::cuda {

// Registers DeviceMemory and autograd::Kernels for DeviceType::CUDA. Throws autograd::Error
// "no CUDA device (...)" when cudaGetDeviceCount fails or reports 0 devices.
void init();
// Number of CUDA devices (0 when the driver or a device is missing; never throws).
int device_count();
// Waits for the work queued on device `index`'s stream (tests, timing).
void synchronize(int index = 0);

}  // namespace autograd::cuda
