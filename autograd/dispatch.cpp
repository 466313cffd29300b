// The kernel-table registry (one table per device type) and the shared operand checks.
#include "autograd/dispatch.h"

#include <sstream>

namespace autograd {

namespace {
KernelRegistry<Kernels>& registry() {
  static KernelRegistry<Kernels> r("autograd", cpu_kernels);
  return r;
}
}  // namespace

void register_kernels(DeviceType type, const Kernels* k) { registry().set(type, k); }
#ifdef BITNET_CUDA
namespace cuda {
void init();
}  // namespace cuda
#endif
const Kernels& kernels_for(Device d) {
#ifdef BITNET_CUDA
  if (d.type == DeviceType::CUDA && !registry().slot(DeviceType::CUDA)) cuda::init();
#endif
  return registry().get(d);
}

namespace {
GemmPrecision g_precision = GemmPrecision::F32;
}
const char* to_string(GemmPrecision p) {
  switch (p) {
    case GemmPrecision::F32:
      return "fp32";
    case GemmPrecision::TF32:
      return "tf32";
    case GemmPrecision::BF16:
      return "bf16";
  }
  return "?";
}
GemmPrecision parse_gemm_precision(const std::string& s) {
  for (GemmPrecision p : {GemmPrecision::F32, GemmPrecision::TF32, GemmPrecision::BF16})
    if (s == to_string(p)) return p;
  fail("unknown GEMM precision '", s, "' (expected fp32, tf32 or bf16)");
}
GemmPrecision gemm_precision() { return g_precision; }
void set_gemm_precision(GemmPrecision p) { g_precision = p; }

ScopedKernels::ScopedKernels(DeviceType type, const Kernels* k)
    : type_(type), prev_(registry().slot(type)) {
  registry().set(type, k);
}
ScopedKernels::~ScopedKernels() { registry().set(type_, prev_); }

void check_same_device(const char* op, std::initializer_list<const Tensor*> ts) {
  const Tensor* first = nullptr;
  for (const Tensor* t : ts) {
    if (!t->defined()) continue;
    if (!first)
      first = t;
    else if (t->device() != first->device()) {
      std::ostringstream os;
      for (const Tensor* u : ts) os << (u == *ts.begin() ? "" : ", ") << u->describe();
      fail(op, ": operands are on different devices (", os.str(), ")");
    }
  }
}

void check_f32(const char* op, std::initializer_list<const Tensor*> ts) {
  int i = 0;
  for (const Tensor* t : ts) {
    if (t->defined() && t->dtype() != DType::F32) {
      const std::string what = "operand " + std::to_string(i);
      t->check_dtype(DType::F32, op, what.c_str());
    }
    ++i;
  }
}

void check_float(const char* op, std::initializer_list<const Tensor*> ts) {
  int i = 0;
  for (const Tensor* t : ts) {
    if (t->defined() && t->dtype() != DType::F32) {
      const std::string what = "operand " + std::to_string(i);
      if (t->dtype() != DType::BF16) t->check_dtype(DType::F32, op, what.c_str());
      BN_CHECK(kernels_for(t->device()).bf16_activations, op, what, " is ", t->describe(),
               ": bf16 activations need a device whose kernels take them (cuda)");
    }
    ++i;
  }
}

DType activation_dtype(Device d) {
  return gemm_precision() == GemmPrecision::BF16 && kernels_for(d).bf16_activations ? DType::BF16
                                                                                    : DType::F32;
}

Tensor saved_activation(const Tensor& x) {
  if (x.dtype() != DType::F32 || activation_dtype(x.device()) != DType::BF16) return x;
  Tensor y = Tensor::empty(x.shape(), DType::BF16, x.device());
  BN_KERNEL(x.device(), round_bf16)(x, y);
  return y;
}

}  // namespace autograd
