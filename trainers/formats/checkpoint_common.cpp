// The checksum, HDF5 helpers and state check shared by the checkpoint_*.cpp files and
// checkpoint.cpp.
#include "trainers/formats/checkpoint_common.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <vector>

#include "autograd/dispatch.h"
#include "autograd/hash.h"
#include "autograd/kernels.h"
#include "data/tokens.h"
#include "quant/igemm.h"
#include "trainers/formats/checkpoint.h"

namespace trainers::formats::detail {

// The checksum of every dataset, the trailer and the data fingerprint: bitnet-hash64-v1
// (autograd/hash.h, where its equation is written out).
uint64_t hash_bytes(const void* p, size_t n, uint64_t seed) {
  return autograd::hash64_words(p, n, seed);
}

std::string hex(uint64_t v) {
  char b[24];
  std::snprintf(b, sizeof b, "%016llx", (unsigned long long)v);
  return b;
}

// HDF5 prints its error stack to stderr by default; we report our own messages instead.
// Also no HDF5 atexit clean-up: after a failed H5Fclose (a write error: a full disk) HDF5 1.10
// keeps a half-destroyed file ID and closing it again at exit crashes in H5F__close_cb (found by
// tests/trainers/train/test_faults.cpp). Every file is closed explicitly, so the handler has
// nothing to do. (H5dont_atexit only works before the library's first call; this is the first.)
void quiet_hdf5() {
  static const bool no_atexit = H5dont_atexit() >= 0;
  (void)no_atexit;
  H5Eset_auto2(H5E_DEFAULT, nullptr, nullptr);
}

void lenient_locking(hid_t fapl) {
#if H5_VERSION_GE(1, 10, 7)
  H5Pset_file_locking(fapl, true, true);
#else
  (void)fapl;
#endif
}

namespace {
herr_t collect_error(unsigned, const H5E_error2_t* e, void* data) {
  if (e->desc && *e->desc) static_cast<std::vector<std::string>*>(data)->push_back(e->desc);
  return 0;
}
}  // namespace

std::string h5_detail() {
  std::vector<std::string> msgs;
  H5Ewalk2(H5E_DEFAULT, H5E_WALK_UPWARD, collect_error, &msgs);
  if (msgs.empty()) return std::string();
  std::string m = msgs.front();  // (system errors carry a ctime() line break)
  std::replace(m.begin(), m.end(), '\n', ' ');
  return " (HDF5: " + m + ")";
}

namespace {
// Non-finite value (or, with nonneg, a negative one) in n floats: its index, or -1.
int64_t first_bad_value(const float* p, int64_t n, bool nonneg) {
  for (int64_t i = 0; i < n; ++i)
    if (!std::isfinite(p[i]) || (nonneg && p[i] < 0)) return i;
  return -1;
}
}  // namespace

void check_state_values(const std::string& prefix, const nn::BitNetLM& model,
                        const optim::AdamW* opt) {
  for (const auto& e : model.params().entries()) {
    struct Part {
      const char* group;
      const float* p;
      bool nonneg;
    };
    std::vector<Part> parts = {{"/params/", e.var.data(), false}};
    if (opt)
      parts.push_back({"/optim/exp_avg/", opt->exp_avg().data() + e.offset, false}),
          parts.push_back({"/optim/exp_avg_sq/", opt->exp_avg_sq().data() + e.offset, true});
    for (const Part& q : parts) {
      const int64_t i = first_bad_value(q.p, e.numel, q.nonneg);
      if (i >= 0)
        throw CheckpointError(prefix + q.group + e.name + " holds " + std::to_string(q.p[i]) +
                              " at flat index " + std::to_string(i) +
                              " (a diverged or corrupted training state)");
    }
  }
}

}  // namespace trainers::formats::detail

namespace trainers::formats {
using detail::hash_bytes;

uint64_t data_fingerprint(const data::TokenDataset& ds) {
  const int64_t n = ds.size(), k = std::min<int64_t>(n, int64_t(1) << 20);
  if (n == 0) return 0;
  std::vector<uint32_t> buf(static_cast<size_t>(k));  // the first and the last 1M tokens
  ds.read(0, k, buf.data());
  const uint64_t h = hash_bytes(buf.data(), size_t(k) * 4, uint64_t(n));
  ds.read(n - k, k, buf.data());
  return hash_bytes(buf.data(), size_t(k) * 4, h);
}

uint64_t checkpoint_hash(const void* p, size_t n, uint64_t seed) { return hash_bytes(p, n, seed); }

Numerics current_numerics(const nn::BitNetLM& model) {
  return current_numerics(model, model.params().device());
}
Numerics current_numerics(const nn::BitNetLM& model, autograd::Device device) {
  if (!device.is_cpu())  // the GPU: int8 tensor-core GEMM, cuBLAS at a precision
    return {model.integer_gemm() ? "integer-cuda" : "float", "cublas",
            autograd::to_string(autograd::gemm_precision())};
  const quant::BitLinearRoute route =
      model.integer_gemm() ? quant::bitlinear_route() : quant::BitLinearRoute::Float;
  return {quant::to_string(route), autograd::kernels::gemm_backend(),
          autograd::kernels::gemm_core()};
}

std::vector<std::string> numerics_mismatches(const Numerics& saved, const Numerics& now) {
  std::vector<std::string> out;
  auto integer = [](const std::string& r) { return r.rfind("integer-", 0) == 0; };
  if (!saved.bitlinear_route.empty() && saved.bitlinear_route != now.bitlinear_route) {
    const std::string what = "the checkpoint was written with BitLinear route " +
                             saved.bitlinear_route + ", this run takes " + now.bitlinear_route;
    if (integer(saved.bitlinear_route) && integer(now.bitlinear_route))
      out.push_back(
          "note: " + what +
          ": both compute the same exact integer sums, the continuation stays bit-identical");
    else
      out.push_back("warning: " + what +
                    ": the integer and float routes agree only to fp32 rounding, the "
                    "continuation will not be bit-identical");
  }
  auto gemm = [](const Numerics& n) { return n.gemm_backend + " (kernel " + n.gemm_core + ")"; };
  if (!saved.gemm_backend.empty() &&
      (saved.gemm_backend != now.gemm_backend || saved.gemm_core != now.gemm_core))
    out.push_back("warning: the checkpoint was written with fp32 GEMM " + gemm(saved) +
                  ", this run uses " + gemm(now) +
                  ": the rounding differs, the continuation will not be bit-identical");
  return out;
}

}  // namespace trainers::formats
