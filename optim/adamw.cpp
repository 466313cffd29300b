// AdamW update (torch.optim.AdamW op order), global-norm gradient clipping and finite checks.
#include "optim/adamw.h"

#include <cmath>
#include <cstring>

#include "autograd/error.h"
#include "autograd/kernels.h"
#include "nn/names.h"
#include "optim/dispatch.h"

namespace optim {

using autograd::Tensor;
namespace kernels = autograd::kernels;

namespace {
void check_beta(const char* field, double x) {
  if (!(x >= 0.0 && x < 1.0)) autograd::fail("adamw.", field, ": ", x, " must be in [0, 1)");
}
}  // namespace

// m = v = 0 over the flat buffer; decay_ranges_ = merged [offset, offset + numel) of the entries
// that are decayed (entry.decay, or the token embedding when cfg.decay_embeddings).
AdamW::AdamW(nn::ParameterSet& params, const AdamWConfig& cfg)
    : AdamW(params, cfg, 0, params.numel()) {}

AdamW::AdamW(nn::ParameterSet& params, const AdamWConfig& cfg, int64_t begin, int64_t end)
    : p_(params), cfg_(cfg), begin_(begin), end_(end) {
  BN_CHECK(0 <= begin && begin <= end && end <= params.numel(), "AdamW", "shard [", begin, ", ",
           end, ") is not inside the ", params.numel(), " parameters");
  check_beta("beta1", cfg.beta1);
  check_beta("beta2", cfg.beta2);
  if (!(cfg.eps >= 0.0 && std::isfinite(cfg.eps)))
    autograd::fail("adamw.eps: ", cfg.eps, " must be finite and >= 0");
  const autograd::Device dev = params.values().device();
  m_ = Tensor::zeros(autograd::Shape{end - begin}, autograd::DType::F32, dev);
  v_ = Tensor::zeros(autograd::Shape{end - begin}, autograd::DType::F32, dev);
  for (const auto& e : params.entries()) {
    const bool decay = e.decay || (cfg.decay_embeddings && e.name == nn::kEmbedTokens.name);
    if (!decay || e.numel == 0) continue;
    if (!decay_ranges_.empty() && decay_ranges_.back().second == e.offset)
      decay_ranges_.back().second = e.offset + e.numel;
    else
      decay_ranges_.emplace_back(e.offset, e.offset + e.numel);
  }  // entries come in increasing offset order, so the ranges are sorted and disjoint
}

void AdamW::to(autograd::Device device) {
  sync_steps();
  m_ = m_.to(device);
  v_ = v_.to(device);
  gate_fresh_ = false;
}

int64_t AdamW::steps() const {
  sync_steps();
  return t_;
}
void AdamW::set_steps(int64_t t) {
  sync_steps();
  t_ = t;
  gate_fresh_ = false;
}
void AdamW::steps_read(int64_t t) {
  t_ = t;
  pending_ = 0;
  gate_fresh_ = false;
}
void AdamW::sync_steps() const {
  if (pending_ == 0) return;
  GateState s{};
  const Tensor host = gate_.to(autograd::Device::cpu());
  std::memcpy(&s, host.raw(), sizeof s);
  t_ = s.t;
  pending_ = 0;
  gate_fresh_ = false;  // t0_ moves to t_ at the next gated step
}

// The gate and the update queued on the device; the host's part is what it knows without the
// device: this step's lr and decay, and beta powers for the next kPowers values of t (rebuilt
// with the gate state after each read of t: steps_read, sync_steps — one at the latest every
// kPowers gated steps).
void AdamW::step_gated(double lr, double weight_decay, const Tensor& losses, const Tensor& norm8,
                       const Tensor& record) {
  BN_CHECK(std::isfinite(lr) && std::isfinite(weight_decay), "AdamW::step_gated", "lr ", lr,
           ", weight decay ", weight_decay, " must be finite");
  BN_CHECK(!sharded(), "AdamW::step_gated", "a sharded (ZeRO-1) optimizer steps on the host");
  const autograd::Device dev = p_.values().device();
  BN_CHECK(losses.numel() > 0 && losses.device() == dev && norm8.nbytes() >= sizeof(double) &&
               norm8.device() == dev && record.nbytes() >= sizeof(StepRecord) &&
               record.device() == dev,
           "AdamW::step_gated", "losses ", losses.describe(), ", norm8 ", norm8.describe(),
           ", record ", record.describe(), " must be non-empty, >= 8 and >= ", sizeof(StepRecord),
           " bytes on ", dev.str());
  if (pending_ >= kPowers) sync_steps();
  if (!gate_fresh_) {
    GateState s{};
    s.t = t_;
    gate_ =
        Tensor::from_host(autograd::Shape{int64_t(sizeof s)}, reinterpret_cast<uint8_t*>(&s), dev);
    std::vector<double> pw(size_t(2 * kPowers));
    for (int64_t k = 0; k < kPowers; ++k) {
      pw[size_t(2 * k)] = std::pow(cfg_.beta1, double(t_ + 1 + k));
      pw[size_t(2 * k + 1)] = std::pow(cfg_.beta2, double(t_ + 1 + k));
    }
    powers_ = Tensor::from_host(autograd::Shape{int64_t(pw.size() * sizeof(double))},
                                reinterpret_cast<const uint8_t*>(pw.data()), dev);
    t0_ = t_;
    gate_fresh_ = true;
  }
  const AdamCoeffs base{float(1.0 - lr * weight_decay),
                        float(cfg_.beta1),
                        float(1.0 - cfg_.beta1),
                        float(cfg_.beta2),
                        float(1.0 - cfg_.beta2),
                        0.0f,
                        float(cfg_.eps),
                        0.0f};
  BN_OKERNEL(dev, adamw_gate)(losses, norm8, powers_, t0_, lr, base, gate_, record);
  BN_OKERNEL(dev, adamw_gated)(p_.values(), p_.grads(), m_, v_, begin_, end_, decay_ranges_, gate_);
  ++pending_;
}

// t += 1; coefficients in double (Python-float semantics), rounded to float once; then a
// parallel pass over fixed chunks of the flat buffers, each split at the decay-range borders into
// runs updated by update_run<true/false>. No allocation.
void AdamW::step(double lr, double weight_decay) {
  BN_CHECK(std::isfinite(lr) && std::isfinite(weight_decay), "AdamW::step", "lr ", lr,
           " and weight_decay ", weight_decay, " must be finite");
  const int64_t n = p_.numel(), b0 = begin_, len = end_ - begin_;
  BN_CHECK(p_.grads().numel() == n && m_.numel() == len && end_ <= n, "AdamW::step",
           "parameter set has ", n, " elements, optimizer state ", m_.numel(), " for the shard [",
           begin_, ", ", end_, ")");
  sync_steps();  // after gated steps
  gate_fresh_ = false;
  ++t_;
  const double bc1 = 1.0 - std::pow(cfg_.beta1, double(t_));
  const double bc2 = 1.0 - std::pow(cfg_.beta2, double(t_));
  const double step_size = lr / bc1;
  const AdamCoeffs c{float(1.0 - lr * weight_decay),
                     float(cfg_.beta1),
                     float(1.0 - cfg_.beta1),
                     float(cfg_.beta2),
                     float(1.0 - cfg_.beta2),
                     float(std::sqrt(bc2)),
                     float(cfg_.eps),
                     float(-step_size)};
  BN_OKERNEL(p_.values().device(), adamw)
  (p_.values(), p_.grads(), m_, v_, b0, end_, decay_ranges_, c);
}

// norm = sqrt(sum g^2), summed in double over det_reduce's fixed chunks (four interleaved partial
// sums inside a chunk, added in a fixed order); if finite and max_norm > 0 and norm > max_norm:
// g *= f32(max_norm / (norm + 1e-6)).
int64_t grad_norm_chunks(int64_t n) { return kernels::det_chunks(n); }
int64_t grad_norm_chunk_begin(int64_t n, int64_t c) { return n * c / kernels::det_chunks(n); }

void grad_sq_chunks(const nn::ParameterSet& params, int64_t c0, int64_t c1, double* out) {
  BN_OKERNEL(params.grads().device(), grad_sq_chunks)(params.grads(), c0, c1, out);
}

double norm_from_chunks(const std::vector<double>& partials) {
  double s = 0;
  for (double p : partials) s += p;  // chunk order, as det_reduce
  return std::sqrt(s);
}

void clip_grads(nn::ParameterSet& params, int64_t begin, int64_t end, double norm,
                double max_norm) {
  if (!(std::isfinite(norm) && max_norm > 0 && norm > max_norm)) return;
  const float scale = float(max_norm / (norm + 1e-6));
  BN_OKERNEL(params.grads().device(), scale_range)(params.grads(), begin, end, scale);
}

// One grad_norm_clip call on the gradients' device (norm and clip without a host round trip), then
// one 8-byte readback of the norm (on the CPU, the same buffer: no copy).
double clip_grad_norm(nn::ParameterSet& params, double max_norm) {
  const Tensor norm =
      Tensor::empty(autograd::Shape{8}, autograd::DType::U8, params.grads().device());
  clip_grad_norm_queued(params, max_norm, norm);
  const Tensor host = norm.to(autograd::Device::cpu());
  double v = 0;
  std::memcpy(&v, host.raw(), sizeof(v));
  return v;
}

void clip_grad_norm_queued(nn::ParameterSet& params, double max_norm, const Tensor& norm8) {
  const Tensor& g = params.grads();
  BN_OKERNEL(g.device(), grad_norm_clip)(g, max_norm, norm8);
}

// Counts elements with !isfinite(x) over det_reduce's chunks; true when the count is 0.
bool all_finite(const Tensor& t) {
  if (!t.defined()) return true;
  return BN_OKERNEL(t.device(), count_nonfinite)(t) == 0;
}

}  // namespace optim
