// Tape-based reverse-mode autograd: Variables, Nodes, the Tape that records and replays them.
//
// The abstraction (after torch/csrc/autograd/function.h, minus the graph):
//  * A `Variable` is a shared handle to a value tensor, an optional gradient tensor, a
//    requires_grad flag and a name. Parameters are leaf Variables whose value and grad are views
//    into flat buffers owned by the model (see nn::ParameterSet), so the optimizer and the MPI
//    all-reduce each see one contiguous array.
//  * Every differentiable op is a free function (autograd/ops.h, quant/ste.h). Its forward runs
//    eagerly; if a Tape is current on this thread, gradients are enabled and some input
//    requires a gradient, it records one `Node` holding what the backward needs (inputs, saved
//    tensors) and the output Variable.
//  * `Tape::backward(loss)` seeds d loss = 1 and walks the nodes in reverse execution order.
//    Each node reads its output's gradient and *accumulates* (+=) into the gradients of those
//    inputs that require one; inputs that do not are skipped. Nodes no gradient reached are
//    skipped. Afterwards the nodes are destroyed, releasing saved tensors.
//  * Nodes live in a bump arena owned by the Tape; `reset()` destroys them but keeps the arena,
//    so recording step N+1 reuses step N's memory. Nodes are not copyable.
#pragma once
#include <chrono>
#include <cstddef>
#include <functional>
#include <map>
#include <memory>
#include <new>
#include <string>
#include <utility>
#include <vector>

#include "autograd/tensor.h"

namespace autograd {

// The gradient side of a Variable: shared by the Variable and by nodes that only accumulate into
// it (GradRef), so that keeping a gradient slot does not keep the value alive.
struct GradCell {
  Tensor grad;  // undefined until a gradient is first accumulated (or bound by the owner)
  bool requires_grad = false;
  Shape shape;    // of the value when the Variable was made (grad_accum allocates this)
  Device device;  // of the value (the gradient lives there too)
};

struct VarImpl {
  Tensor value;
  std::shared_ptr<GradCell> cell;
  std::string name;
};

class Variable {
 public:
  Variable() = default;
  explicit Variable(Tensor value, bool requires_grad = false, std::string name = {});

  bool defined() const { return p_ != nullptr; }
  Tensor& value() const { return p_->value; }
  Tensor& grad() const { return p_->cell->grad; }
  // Gradient tensor, allocated as f32 zeros of value's shape on value's device on first use.
  // Backward kernels add into it.
  Tensor& grad_accum() const;
  bool requires_grad() const { return p_ && p_->cell->requires_grad; }
  // Makes value and grad (same shape and device) the Variable's tensors: parameters are views of
  // the model's flat buffers, rebound when the buffers move to another device.
  void bind(Tensor value, Tensor grad) const;
  const std::string& name() const { return p_->name; }
  void set_name(std::string n) const { p_->name = std::move(n); }
  const Shape& shape() const { return p_->value.shape(); }
  int64_t numel() const { return p_->value.numel(); }
  float* data() const { return p_->value.data(); }
  VarImpl* impl() const { return p_.get(); }
  bool same(const Variable& o) const { return p_ == o.p_; }

 private:
  std::shared_ptr<VarImpl> p_;
};

// A node's handle on an input it only back-propagates into (reshape, transpose, add, the
// straight-through quantizers, ...): the input's gradient slot without its value, so the value
// is freed as soon as the forward no longer needs it. Nodes that need an input's value for their
// backward hold the Variable (or the Tensor) instead.
class GradRef {
 public:
  GradRef() = default;
  GradRef(const Variable& v) : c_(v.defined() ? v.impl()->cell : nullptr) {}  // NOLINT: implicit
  bool requires_grad() const { return c_ && c_->requires_grad; }
  Tensor& grad() const { return c_->grad; }
  Tensor& grad_accum() const;  // as Variable::grad_accum
  const Shape& shape() const { return c_->shape; }
  int64_t numel() const { return c_->shape.numel(); }
  bool same(const GradRef& o) const { return c_ == o.c_; }

 private:
  std::shared_ptr<GradCell> c_;
};

class Node {
 public:
  Node() = default;
  Node(const Node&) = delete;
  Node& operator=(const Node&) = delete;
  virtual ~Node() = default;
  virtual const char* name() const = 0;
  // Reads out.grad() and accumulates into the gradients of inputs that require one.
  virtual void backward() = 0;
  // Makes y the node's output and returns it as a Variable (requires_grad). The node keeps only
  // the output's gradient slot: the value lives as long as the caller (or a consumer that saved
  // it) needs it, not until the backward.
  Variable set_output(Tensor y);
  GradRef out;
};

// Wall time per op name, when a Tape profiles (bitnet bench --profile).
struct OpTime {
  double forward_ms = 0, backward_ms = 0;
  int64_t calls = 0;
};

class Tape {
 public:
  Tape() = default;
  Tape(const Tape&) = delete;
  Tape& operator=(const Tape&) = delete;
  ~Tape();

  // Constructs a node of type N in the arena and appends it to the execution order.
  template <class N, class... A>
  N& record(A&&... args) {
    void* mem = allocate(sizeof(N), alignof(N));
    N* n = new (mem) N(std::forward<A>(args)...);
    nodes_.push_back(n);
    if (profiling_) note_forward(*n);
    return *n;
  }
  // Profiling: an op's forward time is the wall time since the previous node was recorded (its
  // eager forward ran in between; the first node of a tape only starts the clock), its backward
  // time that of backward(). Accumulates over the tape's lifetime. On a device that queues work
  // (a GPU), each clock reading first waits for `device` (autograd::synchronize), so an op's time
  // is the device time of its kernels plus their launch.
  void set_profiling(bool on, Device device = Device::cpu()) {
    profiling_ = on;
    profile_device_ = device;
  }
  const std::map<std::string, OpTime>& profile() const { return profile_; }
  // Seeds d(loss) = 1 (loss must have one element) and back-propagates; then reset().
  void backward(const Variable& loss);
  // Seeds d(out) = seed (same shape) and back-propagates; then reset() unless retain.
  void backward(const Variable& out, const Tensor& seed, bool retain = false);
  // Destroys all recorded nodes (releasing saved tensors); keeps the arena for reuse.
  void reset();
  // Called during backward after node `index` (its position in execution order) has been
  // processed or skipped, in decreasing index order; used to start gradient all-reduces of
  // parameters whose gradients are complete. Cleared by passing {}.
  void set_hook(std::function<void(size_t index)> hook) { hook_ = std::move(hook); }
  size_t size() const { return nodes_.size(); }
  size_t arena_bytes() const;

 private:
  void* allocate(size_t bytes, size_t align);
  struct Chunk {
    std::unique_ptr<std::byte[]> mem;
    size_t size;
  };
  std::vector<Chunk> chunks_;
  size_t chunk_ = 0, used_ = 0;  // current chunk and bytes used in it
  void note_forward(const Node& n);
  std::vector<Node*> nodes_;
  std::function<void(size_t)> hook_;
  bool profiling_ = false;
  Device profile_device_ = Device::cpu();
  std::chrono::steady_clock::time_point now() const;  // after synchronize(profile_device_)
  std::chrono::steady_clock::time_point last_{};
  std::map<std::string, OpTime> profile_;
};

// Makes `tape` the current tape of this thread for the scope's lifetime (scopes nest).
class TapeScope {
 public:
  explicit TapeScope(Tape& tape);
  ~TapeScope();
  TapeScope(const TapeScope&) = delete;
  TapeScope& operator=(const TapeScope&) = delete;

 private:
  Tape* prev_;
};

// Disables recording on this thread for the scope's lifetime (evaluation, optimizer updates).
class NoGradGuard {
 public:
  NoGradGuard();
  ~NoGradGuard();
  NoGradGuard(const NoGradGuard&) = delete;
  NoGradGuard& operator=(const NoGradGuard&) = delete;

 private:
  bool prev_;
};

Tape* current_tape();
bool grad_enabled();

// The tape to record on if any of `inputs` requires a gradient and recording is on, else null.
Tape* recording(std::initializer_list<const Variable*> inputs);
// The tape to record on if needs_grad and recording is on, else null.
Tape* recording_if(bool needs_grad);

// Adds g (same numel) into v's gradient. When v has no gradient yet, the gradient becomes g
// itself (viewed to v's shape, no copy) if may_alias, else a copy. Aliasing is safe for the
// out.grad() of the node whose backward is running: nothing reads it afterwards. Never alias one
// g into two inputs.
void accumulate_grad(const GradRef& v, const Tensor& g, bool may_alias);

// Output variable of a recorded op: requires_grad = true.
Variable make_output(Tensor value);

}  // namespace autograd
