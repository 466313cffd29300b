// The registry of the optim kernel tables, one per device type (dispatch.h).
#include "optim/dispatch.h"

namespace optim {

namespace {
autograd::KernelRegistry<Kernels>& registry() {
  static autograd::KernelRegistry<Kernels> r("optim", cpu_kernels);
  return r;
}
}  // namespace

void register_kernels(autograd::DeviceType type, const Kernels* k) { registry().set(type, k); }
const Kernels& kernels_for(autograd::Device d) { return registry().get(d); }

}  // namespace optim
