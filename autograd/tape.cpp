// Tape and Variable implementation: arena-backed node recording and the reverse sweep.
#include "autograd/tape.h"

#include <algorithm>

#include "autograd/dispatch.h"

namespace autograd {

Variable::Variable(Tensor value, bool requires_grad, std::string name)
    : p_(std::make_shared<VarImpl>()) {
  p_->cell = std::make_shared<GradCell>();
  p_->cell->shape = value.shape();
  p_->cell->requires_grad = requires_grad;
  p_->cell->device = value.device();
  p_->value = std::move(value);
  p_->name = std::move(name);
}

Tensor& Variable::grad_accum() const {
  Tensor& g = p_->cell->grad;
  if (!g.defined()) g = Tensor::zeros(p_->value.shape(), DType::F32, p_->value.device());
  return g;
}

void Variable::bind(Tensor value, Tensor grad) const {
  BN_CHECK(value.shape() == grad.shape() && value.device() == grad.device(), "Variable::bind",
           "value ", value.describe(), " and gradient ", grad.describe(), " differ");
  p_->cell->shape = value.shape();
  p_->cell->device = value.device();
  p_->value = std::move(value);
  p_->cell->grad = std::move(grad);
}

Tensor& GradRef::grad_accum() const {
  if (!c_->grad.defined()) c_->grad = Tensor::zeros(c_->shape, DType::F32, c_->device);
  return c_->grad;
}

Tape::~Tape() { reset(); }

void* Tape::allocate(size_t bytes, size_t align) {
  for (;;) {
    if (chunk_ < chunks_.size()) {
      size_t start = (used_ + align - 1) / align * align;
      if (start + bytes <= chunks_[chunk_].size) {
        used_ = start + bytes;
        return chunks_[chunk_].mem.get() + start;
      }
      ++chunk_;
      used_ = 0;
      continue;
    }
    size_t sz = std::max<size_t>(size_t(1) << 16, bytes + align);
    chunks_.push_back({std::unique_ptr<std::byte[]>(new std::byte[sz]), sz});
    chunk_ = chunks_.size() - 1;
    used_ = 0;
  }
}

std::chrono::steady_clock::time_point Tape::now() const {
  synchronize(profile_device_);
  return std::chrono::steady_clock::now();
}

void Tape::note_forward(const Node& n) {
  const auto now = this->now();
  if (nodes_.size() > 1) {
    OpTime& t = profile_[n.name()];
    t.forward_ms += std::chrono::duration<double, std::milli>(now - last_).count();
    ++t.calls;
  }
  last_ = now;
}

size_t Tape::arena_bytes() const {
  size_t s = 0;
  for (auto& c : chunks_) s += c.size;
  return s;
}

void Tape::reset() {
  for (auto it = nodes_.rbegin(); it != nodes_.rend(); ++it)
    if (*it) (*it)->~Node();  // (null: already destroyed during backward)
  nodes_.clear();
  chunk_ = 0;
  used_ = 0;
}

void Tape::backward(const Variable& loss) {
  BN_CHECK(loss.defined() && loss.numel() == 1, "backward", "loss must be a single element, got ",
           loss.defined() ? loss.shape().str() : "undefined");
  backward(loss, Tensor::full(loss.shape(), 1.0f, loss.value().device()));
}

void Tape::backward(const Variable& out, const Tensor& seed, bool retain) {
  BN_CHECK(out.defined(), "backward", "undefined output");
  BN_CHECK(seed.shape() == out.shape(), "backward", "seed shape ", seed.shape(),
           " differs from output shape ", out.shape());
  BN_CHECK(out.requires_grad(), "backward", "output ", out.shape(),
           " does not require grad (nothing was recorded)");
  NoGradGuard ng;  // backward kernels never record
  check_same_device("backward", {&out.value(), &seed});
  BN_KERNEL(seed.device(), axpy)(out.grad_accum(), seed, 1.0f);
  for (size_t i = nodes_.size(); i-- > 0;) {
    Node* n = nodes_[i];
    const auto t0 = profiling_ ? now() : last_;
    if (n->out.grad().defined()) n->backward();  // else: no gradient reached this node
    if (profiling_)
      profile_[n->name()].backward_ms +=
          std::chrono::duration<double, std::milli>(now() - t0).count();
    if (hook_) hook_(i);
    if (!retain) {  // done with it: release its saved tensors and output (and that gradient) now,
      n->~Node();   // so the backward's peak memory is not forward activations + all their grads
      nodes_[i] = nullptr;
    }
  }
  if (!retain) reset();
}

namespace {
thread_local Tape* t_tape = nullptr;
thread_local bool t_grad = true;
}  // namespace

TapeScope::TapeScope(Tape& tape) : prev_(t_tape) { t_tape = &tape; }
TapeScope::~TapeScope() { t_tape = prev_; }
NoGradGuard::NoGradGuard() : prev_(t_grad) { t_grad = false; }
NoGradGuard::~NoGradGuard() { t_grad = prev_; }
Tape* current_tape() { return t_tape; }
bool grad_enabled() { return t_grad; }

Tape* recording(std::initializer_list<const Variable*> inputs) {
  if (!t_tape || !t_grad) return nullptr;
  for (const Variable* v : inputs)
    if (v->requires_grad()) return t_tape;
  return nullptr;
}

void accumulate_grad(const GradRef& v, const Tensor& g, bool may_alias) {
  BN_CHECK(g.numel() == v.numel(), "accumulate_grad", "gradient ", g.shape(), " for value ",
           v.shape());
  Tensor& dst = v.grad();
  if (!dst.defined()) {
    dst = may_alias ? g.view(v.shape()) : g.clone().view(v.shape());
    return;
  }
  BN_KERNEL(g.device(), axpy)(dst, g, 1.0f);
}

Tape* recording_if(bool needs_grad) { return needs_grad && t_tape && t_grad ? t_tape : nullptr; }

Variable Node::set_output(Tensor y) {
  Variable v = make_output(std::move(y));
  out = v;
  return v;
}

Variable make_output(Tensor value) { return Variable(std::move(value), true); }

}  // namespace autograd
