// Module registration and the flat ParameterSet.
#include "nn/module.h"

#include "autograd/error.h"
#include "autograd/hash.h"
#include "autograd/random.h"

namespace nn {

Variable Module::register_parameter(const std::string& name, const Shape& shape, Init init,
                                    bool decay) {
  for (auto& [n, p] : params_)
    BN_CHECK(n != name, "Module::register_parameter", "duplicate parameter '", name, "'");
  // Uninitialised placeholder: ParameterSet rebinds every parameter to its slice of the flat
  // buffer and initialises it there. (Untouched pages never become resident, so the placeholders
  // cost no memory once they return to the pool.)
  Variable v(Tensor::empty(shape), true, name);
  params_.emplace_back(name, ParamInfo{v, init, decay});
  return v;
}

void Module::named_parameters(std::vector<std::pair<std::string, ParamInfo>>& out,
                              const std::string& prefix) const {
  for (auto& [n, p] : params_) out.emplace_back(prefix + n, p);
  for (auto& [n, c] : children_) c->named_parameters(out, prefix + n + ".");
}

ParameterSet::ParameterSet(const Module& root, uint64_t seed, float init_std) {
  std::vector<std::pair<std::string, ParamInfo>> ps;
  root.named_parameters(ps);
  int64_t total = 0;
  for (auto& [name, info] : ps) {
    for (auto& e : entries_)
      BN_CHECK(e.name != name, "ParameterSet", "duplicate parameter name '", name, "'");
    entries_.push_back({name, info.var, total, info.var.numel(), info.init, info.decay});
    total += info.var.numel();
  }
  values_ = Tensor::zeros(Shape{total});
  grads_ = Tensor::zeros(Shape{total});
  for (auto& e : entries_) e.var.set_name(e.name);
  rebind();
  init(seed, init_std);
}

void ParameterSet::rebind() {
  for (auto& e : entries_) {
    const Shape s = e.var.shape();
    e.var.bind(values_.slice0(e.offset, e.offset + e.numel).view(s),
               grads_.slice0(e.offset, e.offset + e.numel).view(s));
  }
}

void ParameterSet::to(autograd::Device device) {
  if (device == values_.device()) return;
  values_ = values_.to(device);
  grads_ = grads_.to(device);
  rebind();
}

void ParameterSet::init(uint64_t seed, float init_std) {
  for (auto& e : entries_) {
    // FNV-1a over the name, mixed with the seed
    autograd::Rng rng(
        autograd::fnv1a64(e.name.data(), e.name.size(), autograd::kFnv64Offset ^ seed));
    float* p = e.var.data();
    for (int64_t i = 0; i < e.numel; ++i)
      p[i] = e.init == Init::Normal ? float(rng.normal()) * init_std
             : e.init == Init::Ones ? 1.0f
                                    : 0.0f;
  }
}

const ParameterSet::Entry* ParameterSet::find(const std::string& name) const {
  for (auto& e : entries_)
    if (e.name == name) return &e;
  return nullptr;
}

const ParameterSet::Entry& ParameterSet::at(const std::string& name) const {
  const Entry* e = find(name);
  BN_CHECK(e, "ParameterSet", "no parameter named '", name, "'");
  return *e;
}

}  // namespace nn
