// Gradient-check harness implementation (see gradcheck.h).
#include "autograd/gradcheck.h"

#include <cmath>
#include <sstream>

#include "autograd/error.h"
#include "autograd/random.h"

namespace autograd {

Tensor randn(const Shape& s, uint64_t seed, float stddev) {
  Rng rng(seed);
  Tensor t = Tensor::empty(s);
  for (int64_t i = 0; i < t.numel(); ++i) t[i] = float(rng.normal()) * stddev;
  return t;
}

namespace {
double weighted_loss(const Tensor& y, const Tensor& w) {
  double s = 0;
  for (int64_t i = 0; i < y.numel(); ++i) s += double(w[i]) * double(y[i]);
  return s;
}
}  // namespace

GradCheckResult gradcheck(const std::string& op, const GradFn& f,
                          const std::vector<Variable>& inputs, const GradCheckOptions& opt) {
  GradCheckResult res;
  std::ostringstream rep;
  // Analytic gradients.
  for (auto& x : inputs)
    if (x.requires_grad()) x.grad() = Tensor();
  Tensor w;
  {
    Tape tape;
    TapeScope scope(tape);
    Variable y = f(inputs);
    w = randn(y.shape(), opt.seed ^ 0x5eedULL);
    tape.backward(y, w);
  }
  for (size_t k = 0; k < inputs.size(); ++k) {
    const Variable& x = inputs[k];
    if (!x.requires_grad()) continue;
    const Tensor analytic = x.grad().defined() ? x.grad() : Tensor::zeros(x.shape());
    const int64_t n = x.numel();
    std::vector<int64_t> idx;
    if (n <= opt.max_elems) {
      for (int64_t i = 0; i < n; ++i) idx.push_back(i);
    } else {
      Rng rng(opt.seed + k);
      for (int64_t i = 0; i < opt.max_elems; ++i) idx.push_back(int64_t(rng.below(uint64_t(n))));
    }
    double dot = 0, na = 0, nn = 0, worst = -1;
    int64_t worst_i = -1;
    double worst_a = 0, worst_n = 0;
    NoGradGuard ng;
    for (int64_t i : idx) {
      float* p = x.data() + i;
      const float orig = *p;
      const float xp = orig + float(opt.eps), xm = orig - float(opt.eps);
      *p = xp;
      const double lp = weighted_loss(f(inputs).value(), w);
      *p = xm;
      const double lm = weighted_loss(f(inputs).value(), w);
      *p = orig;
      const double num = (lp - lm) / (double(xp) - double(xm));
      const double an = analytic[i];
      dot += an * num;
      na += an * an;
      nn += num * num;
      const double err = std::abs(an - num), tol = opt.atol + opt.rtol * std::abs(num);
      res.max_abs_err = std::max(res.max_abs_err, err);
      if (err - tol > worst) {
        worst = err - tol;
        worst_i = i;
        worst_a = an;
        worst_n = num;
      }
    }
    const double cos = (na == 0 && nn == 0) ? 1.0 : dot / (std::sqrt(na * nn) + 1e-300);
    res.min_cos = std::min(res.min_cos, cos);
    const bool ok_elems = worst <= 0, ok_cos = cos >= opt.min_cos;
    rep << op << " input " << k << " " << x.shape() << ": checked " << idx.size() << " elems, cos "
        << cos << ", max|err| " << res.max_abs_err;
    if (!ok_elems)
      rep << " FAIL at elem " << worst_i << ": analytic " << worst_a << " numeric " << worst_n;
    if (!ok_cos) rep << " FAIL cosine < " << opt.min_cos;
    rep << '\n';
    res.ok = res.ok && ok_elems && ok_cos;
  }
  res.report = rep.str();
  return res;
}

}  // namespace autograd
