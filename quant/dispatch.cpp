// The registry of the quant kernel tables, one per device type (dispatch.h).
#include "quant/dispatch.h"

namespace quant {

namespace {
autograd::KernelRegistry<Kernels>& registry() {
  static autograd::KernelRegistry<Kernels> r("quant", cpu_kernels);
  return r;
}
}  // namespace

void register_kernels(autograd::DeviceType type, const Kernels* k) { registry().set(type, k); }
const Kernels& kernels_for(autograd::Device d) { return registry().get(d); }

}  // namespace quant
