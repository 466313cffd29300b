// The registry of the optim kernel tables, one per device type (dispatch.h); the CUDA table is
// registered lazily, the first time it is asked for.
#include "optim/dispatch.h"

namespace optim {

namespace {
autograd::KernelRegistry<Kernels>& registry() {
  static autograd::KernelRegistry<Kernels> r("optim", cpu_kernels);
  return r;
}
}  // namespace

void register_kernels(autograd::DeviceType type, const Kernels* k) { registry().set(type, k); }
#ifdef BITNET_CUDA
namespace cuda {
void init();
}  // namespace cuda
#endif
const Kernels& kernels_for(autograd::Device d) {
#ifdef BITNET_CUDA
  // First CUDA table needed: register it (throws "no CUDA device (...)" without a GPU).
  if (d.type == autograd::DeviceType::CUDA && !registry().slot(autograd::DeviceType::CUDA))
    cuda::init();
#endif
  return registry().get(d);
}

}  // namespace optim
