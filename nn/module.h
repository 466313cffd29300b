// Module tree with parameters registered by dotted name, and the flat parameter/gradient buffers.
//
// Names are the checkpoint keys and equal the Hugging Face BitNet names (SPEC §6), e.g.
// "model.layers.3.self_attn.q_proj.weight". After the tree is built, ParameterSet packs every
// parameter into one flat value buffer and one flat gradient buffer (in registration order) and
// rebinds each parameter Variable to views of them: the optimizer, gradient clipping and the MPI
// all-reduce each work on a single contiguous array.
#pragma once
#include <functional>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "autograd/tape.h"

namespace nn {

using autograd::Shape;
using autograd::Tensor;
using autograd::Variable;

enum class Init { Normal, Ones, Zeros };

struct ParamInfo {
  Variable var;
  Init init;
  bool decay;  // weight decay applies (matrices and, optionally, embeddings; never norm gains)
};

class Module {
 public:
  Module() = default;
  Module(const Module&) = delete;
  Module& operator=(const Module&) = delete;
  virtual ~Module() = default;

  // Every parameter of the subtree as (full dotted name, info), in registration order.
  void named_parameters(std::vector<std::pair<std::string, ParamInfo>>& out,
                        const std::string& prefix = "") const;

 protected:
  Variable register_parameter(const std::string& name, const Shape& shape, Init init, bool decay);
  template <class M>
  M& register_module(const std::string& name, std::unique_ptr<M> m) {
    M& ref = *m;
    children_.emplace_back(name, std::move(m));
    return ref;
  }

 private:
  std::vector<std::pair<std::string, ParamInfo>> params_;
  std::vector<std::pair<std::string, std::unique_ptr<Module>>> children_;
};

class ParameterSet {
 public:
  struct Entry {
    std::string name;
    Variable var;
    int64_t offset, numel;
    Init init;
    bool decay;
  };
  // Packs all parameters of `root` into flat buffers and initialises them from `seed`
  // (see init()).
  ParameterSet(const Module& root, uint64_t seed, float init_std);
  ParameterSet(const ParameterSet&) = delete;
  ParameterSet& operator=(const ParameterSet&) = delete;

  // Deterministic init: each parameter draws from an RNG seeded by (seed, its name), so values do
  // not depend on registration order. Normal(0, std) / ones / zeros as registered.
  void init(uint64_t seed, float init_std);
  void zero_grad() { grads_.zero_(); }
  // Moves the flat value and gradient buffers to `device` (a copy) and rebinds every parameter's
  // views to them; init() and host-side readers need the buffers on the CPU.
  void to(autograd::Device device);
  autograd::Device device() const { return values_.device(); }
  const Tensor& values() const { return values_; }
  const Tensor& grads() const { return grads_; }
  const std::vector<Entry>& entries() const { return entries_; }
  const Entry* find(const std::string& name) const;
  const Entry& at(const std::string& name) const;  // throws naming the parameter
  int64_t numel() const { return values_.numel(); }

 private:
  void rebind();  // points every parameter at its slices of values_ / grads_
  std::vector<Entry> entries_;
  Tensor values_, grads_;
};

}  // namespace nn
