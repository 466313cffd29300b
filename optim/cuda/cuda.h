// The CUDA backend of the optim layer: the optim kernel table for DeviceType::CUDA
// (optim/cuda/*.cu).
//
// `init()` registers it; optim/dispatch.cpp calls it lazily the first time a CUDA table is needed,
// so user code never has to.
#pragma once

namespace optim::cuda {

// Initialises the autograd CUDA backend (autograd::cuda::init(): device memory, the autograd
// table), then registers optim::Kernels for DeviceType::CUDA. Throws autograd::Error
// "no CUDA device (...)" without a usable GPU.
void init();

}  // namespace optim::cuda
