// The registry of the quant kernel tables, one per device type (dispatch.h).
#include "quant/dispatch.h"

#ifdef BITNET_CUDA
namespace quant::cuda {
void init();  // quant/cuda/cuda.h (declared here: quant/cuda includes this layer, not the reverse)
}
#endif

namespace quant {

namespace {
autograd::KernelRegistry<Kernels>& registry() {
  static autograd::KernelRegistry<Kernels> r("quant", cpu_kernels);
  return r;
}
}  // namespace

void register_kernels(autograd::DeviceType type, const Kernels* k) { registry().set(type, k); }
// The CUDA table registers itself the first time it is needed (as autograd::kernels_for does).
const Kernels& kernels_for(autograd::Device d) {
#ifdef BITNET_CUDA
  if (d.type == autograd::DeviceType::CUDA && !registry().slot(autograd::DeviceType::CUDA))
    cuda::init();
#endif
  return registry().get(d);
}

}  // namespace quant
