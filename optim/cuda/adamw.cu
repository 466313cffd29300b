// CUDA kernels of the optimizer (the optim table for DeviceType::CUDA, optim/dispatch.h): AdamW
// bit-identical to the CPU's, gradient sum-of-squares chunks, the global-norm clip kept on the
// device, the clipping scale and the non-finite count. Registered by optim::cuda::init().
//
// Float results must equal the CPU table's bit for bit where the CPU's op order is fixed (AdamW,
// scaling): every float op is written as an explicit IEEE intrinsic (__fmul_rn, __fdiv_rn,
// __fadd_rn, __fsqrt_rn, fmaf) so that nvcc's FMA contraction cannot fuse a product into a later
// addition. Reductions run in double in a fixed order (deterministic run to run).
#include <algorithm>
#include <cstring>
#include <mutex>
#include <vector>

#include "autograd/cuda/common.cuh"
#include "autograd/cuda/cuda.h"
#include "optim/cuda/cuda.h"
#include "optim/dispatch.h"

namespace optim::cuda {
namespace {
using autograd::Tensor;
using autograd::cuda::blocks_for;
using autograd::cuda::kThreads;
using autograd::cuda::On;

// ---- AdamW ------------------------------------------------------------------------------------

// Device copies of decay ranges, keyed by device and content: the optimizer passes the same ranges
// every step, so they are uploaded once (flat [b0, e0, b1, e1, ...] int64). At most kMaxCached
// sets are kept; the oldest is freed (after its device's stream drained) to make room.
struct CachedRanges {
  int dev;
  DecayRanges key;
  std::vector<int64_t> flat;  // the upload's source, kept alive for the asynchronous copy
  int64_t* d;
};
constexpr size_t kMaxCached = 32;
std::mutex g_ranges_mu;
std::vector<CachedRanges>& ranges_cache() {
  static auto* v = new std::vector<CachedRanges>();  // leaked: used until process exit
  return *v;
}

// The device copy of `r` on on.dev (null when r is empty), uploaded on on.s the first time.
const int64_t* device_ranges(const On& on, const DecayRanges& r) {
  if (r.empty()) return nullptr;
  std::lock_guard<std::mutex> lk(g_ranges_mu);
  std::vector<CachedRanges>& cache = ranges_cache();
  for (const CachedRanges& e : cache)
    if (e.dev == on.dev && e.key == r) return e.d;
  if (cache.size() >= kMaxCached) {
    const CachedRanges& old = cache.front();
    BN_CUDA(cudaStreamSynchronize(autograd::cuda::stream(old.dev)), old.dev);
    BN_CUDA(cudaFree(old.d), old.dev);
    cache.erase(cache.begin());
    (void)autograd::cuda::stream(on.dev);  // on.dev current again
  }
  CachedRanges e{on.dev, r, {}, nullptr};
  e.flat.reserve(2 * r.size());
  for (const auto& [b, x] : r) {
    e.flat.push_back(b);
    e.flat.push_back(x);
  }
  const size_t bytes = e.flat.size() * sizeof(int64_t);
  BN_CUDA(cudaMalloc(&e.d, bytes), on.dev);
  BN_CUDA(cudaMemcpyAsync(e.d, e.flat.data(), bytes, cudaMemcpyHostToDevice, on.s), on.dev);
  cache.push_back(std::move(e));  // (moving the vector keeps its buffer: the copy's source)
  return cache.back().d;
}

// For k < n, flat offset i = begin + k (w, g: [>= begin + n]; m, v: [n], indexed k):
//   decayed = i lies in one of the R sorted, disjoint ranges [r[2j], r[2j+1]);
//   w = w*decay (decayed only);  m = fma(g, a1, m*b1);  v = fma(a2*g, g, v*b2);
//   w = w + (neg_step*m) / (sqrt(v)/bc2_sqrt + eps).
// The range of i is found by binary search; i only grows along a thread's grid-stride loop, so
// each search starts at the previous one's answer.
// gate (gated steps): c and the ok flag are read from the device's GateState instead.
__global__ void adamw_kernel(float* __restrict__ w, const float* __restrict__ g,
                             float* __restrict__ m, float* __restrict__ v, int64_t begin, int64_t n,
                             const int64_t* __restrict__ r, int64_t R, AdamCoeffs c,
                             const GateState* gate) {
  if (gate) {
    if (!gate->ok) return;
    c = gate->c;
  }
  int64_t lo = 0;
  for (int64_t k = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; k < n;
       k += int64_t(gridDim.x) * blockDim.x) {
    const int64_t i = begin + k;
    int64_t hi = R;  // first range with end > i
    while (lo < hi) {
      const int64_t mid = lo + (hi - lo) / 2;
      if (r[2 * mid + 1] <= i)
        lo = mid + 1;
      else
        hi = mid;
    }
    const bool decayed = lo < R && r[2 * lo] <= i;
    float wi = w[i];
    if (decayed) wi = __fmul_rn(wi, c.decay);
    const float gi = g[i];
    const float mi = fmaf(gi, c.a1, __fmul_rn(m[k], c.b1));
    const float vi = fmaf(__fmul_rn(c.a2, gi), gi, __fmul_rn(v[k], c.b2));
    const float denom = __fadd_rn(__fdiv_rn(__fsqrt_rn(vi), c.bc2_sqrt), c.eps);
    w[i] = __fadd_rn(wi, __fdiv_rn(__fmul_rn(c.neg_step, mi), denom));
    m[k] = mi;
    v[k] = vi;
  }
}

// One launch over [begin, end); the kernel sees only the ranges that can meet [begin, end).
void launch_adamw(const Tensor& w, const Tensor& g, const Tensor& m, const Tensor& v, int64_t begin,
                  int64_t end, const DecayRanges& ranges, const AdamCoeffs& c,
                  const GateState* gate) {
  const int64_t n = end - begin;
  if (n <= 0) return;
  On on(w);
  const int64_t* r = device_ranges(on, ranges);
  const auto first = std::upper_bound(
      ranges.begin(), ranges.end(), begin,
      [](int64_t x, const std::pair<int64_t, int64_t>& p) { return x < p.second; });
  const auto last =
      std::lower_bound(first, ranges.end(), end,
                       [](const std::pair<int64_t, int64_t>& p, int64_t x) { return p.first < x; });
  const int64_t lo = first - ranges.begin(), count = last - first;
  adamw_kernel<<<blocks_for(n), kThreads, 0, on.s>>>(w.data(), g.data(), m.data(), v.data(), begin,
                                                     n, r ? r + 2 * lo : nullptr, count, c, gate);
  on.launched("adamw");
}
void cuda_adamw(const Tensor& w, const Tensor& g, const Tensor& m, const Tensor& v, int64_t begin,
                int64_t end, const DecayRanges& ranges, const AdamCoeffs& c) {
  launch_adamw(w, g, m, v, begin, end, ranges, c, nullptr);
}
void cuda_adamw_gated(const Tensor& w, const Tensor& g, const Tensor& m, const Tensor& v,
                      int64_t begin, int64_t end, const DecayRanges& ranges, const Tensor& state) {
  launch_adamw(w, g, m, v, begin, end, ranges, AdamCoeffs{},
               static_cast<const GateState*>(state.raw()));
}

// One thread: the gate's formulas (dispatch.h), every double op an IEEE intrinsic, so the
// coefficients equal the host's (AdamW::step, cpu_adamw_gate) bit for bit.
__global__ void adamw_gate_kernel(const float* losses, int64_t n, const double* norm,
                                  const double* powers, int64_t t0, double lr, AdamCoeffs base,
                                  GateState* s, StepRecord* rec) {
  double sum = 0;
  for (int64_t a = 0; a < n; ++a) sum = __dadd_rn(sum, double(losses[a]));
  StepRecord r{};
  r.loss = __ddiv_rn(sum, double(n));
  r.norm = norm[0];
  r.ok = s->ok = isfinite(r.loss) && isfinite(r.norm);
  if (s->ok) {
    const double* p = powers + 2 * (s->t - t0);
    s->c = base;
    s->c.bc2_sqrt = float(__dsqrt_rn(__dsub_rn(1.0, p[1])));
    s->c.neg_step = float(-__ddiv_rn(lr, __dsub_rn(1.0, p[0])));
    ++s->t;
  }
  r.t = s->t;
  *rec = r;
}
void cuda_adamw_gate(const Tensor& losses, const Tensor& norm8, const Tensor& powers, int64_t t0,
                     double lr, const AdamCoeffs& base, const Tensor& state, const Tensor& record) {
  On on(state);
  adamw_gate_kernel<<<1, 1, 0, on.s>>>(
      losses.data(), losses.numel(), static_cast<const double*>(norm8.raw()),
      static_cast<const double*>(powers.raw()), t0, lr, base, static_cast<GateState*>(state.raw()),
      static_cast<StepRecord*>(record.raw()));
  on.launched("adamw_gate");
}

// ---- gradient norm --------------------------------------------------------------------------

constexpr int kMaxChunks = 64;  // grad_norm_chunks(n) <= 64 (kernels::det_chunks)
constexpr int kBlocksPerChunk =
    16;  // blocks summing one chunk (fixed: the order depends on n only)
static_assert(kMaxChunks <= kThreads);

// Chunk borders: at[j] = grad_norm_chunk_begin(n, c0 + j), j = 0 .. c1 - c0 (host-computed, so
// the layout has one definition).
struct ChunkBorders {
  int64_t at[kMaxChunks + 1];
};

// Block (p, k): part[k*P + p] = sum of double(g_i)^2 over sub-range p of chunk c0 + k, where the
// chunk [a, b) is cut into P = kBlocksPerChunk pieces [a + (b-a)p/P, a + (b-a)(p+1)/P); each
// thread sums a fixed strided subset (the product of two floats is exact in double), then
// block_sum's fixed tree.
__global__ void sq_partials_kernel(const float* __restrict__ g, ChunkBorders cb,
                                   double* __restrict__ part) {
  __shared__ double sh[kThreads];
  const int k = int(blockIdx.y), p = int(blockIdx.x);
  const int64_t a = cb.at[k], len = cb.at[k + 1] - a;
  const int64_t i0 = a + len * p / kBlocksPerChunk, i1 = a + len * (p + 1) / kBlocksPerChunk;
  double s = 0;
  for (int64_t i = i0 + threadIdx.x; i < i1; i += kThreads) {
    const double x = g[i];
    s = __dadd_rn(s, __dmul_rn(x, x));
  }
  s = autograd::cuda::block_sum(s, sh);
  if (threadIdx.x == 0) part[k * kBlocksPerChunk + p] = s;
}

// One block of kMaxChunks threads. Thread k < chunks: chunk[k] = sum_p part[k*P + p] in order.
// When norm is set (all chunks 0 .. chunks-1 present): norm[0] = sqrt(sum_k chunk[k]), k in
// order (norm_from_chunks); apply[0] = norm finite && max_norm > 0 && norm > max_norm, and then
// scale[0] = f32(max_norm / (norm + 1e-6)) (clip_grads' coefficient).
__global__ void sq_finish_kernel(const double* __restrict__ part, int chunks,
                                 double* __restrict__ chunk, double* norm, double max_norm,
                                 float* scale, int* apply) {
  __shared__ double sh[kMaxChunks];
  const int k = int(threadIdx.x);
  if (k < chunks) {
    double s = 0;
    for (int p = 0; p < kBlocksPerChunk; ++p) s = __dadd_rn(s, part[k * kBlocksPerChunk + p]);
    sh[k] = s;
    chunk[k] = s;
  }
  __syncthreads();
  if (norm && k == 0) {
    double s = 0;
    for (int j = 0; j < chunks; ++j) s = __dadd_rn(s, sh[j]);
    const double nv = __dsqrt_rn(s);
    norm[0] = nv;
    const bool clip = isfinite(nv) && max_norm > 0 && nv > max_norm;
    apply[0] = clip;
    scale[0] = clip ? __double2float_rn(__ddiv_rn(max_norm, __dadd_rn(nv, 1e-6))) : 1.0f;
  }
}

// Device scratch of the norm kernels, from the caching pool (a u8 tensor; all its users are
// queued on the device's one stream, so returning it to the pool at scope exit is safe).
struct NormScratch {
  Tensor t;
  double* part;   // [chunks * kBlocksPerChunk]
  double* chunk;  // [chunks]
  float* scale;   // [1]
  int* apply;     // [1]
  NormScratch(const Tensor& g, int chunks) {
    const size_t nd = size_t(chunks) * (kBlocksPerChunk + 1);
    t = Tensor::empty(autograd::Shape{int64_t(nd * sizeof(double) + 8)}, autograd::DType::U8,
                      g.device());
    part = static_cast<double*>(t.raw());
    chunk = part + size_t(chunks) * kBlocksPerChunk;
    scale = reinterpret_cast<float*>(chunk + chunks);
    apply = reinterpret_cast<int*>(scale + 1);
  }
};

// Queues the partials of chunks [c0, c1) of g: s.chunk[k] = chunk c0 + k's sum of squares.
void queue_chunk_sums(const On& on, const Tensor& g, int64_t c0, int64_t c1, const NormScratch& s) {
  const int64_t n = g.numel(), chunks = c1 - c0;
  BN_CHECK(0 <= c0 && c0 <= c1 && c1 <= grad_norm_chunks(n) && grad_norm_chunks(n) <= kMaxChunks,
           "grad_sq_chunks", "chunks [", c0, ", ", c1, ") of ", grad_norm_chunks(n), " (at most ",
           kMaxChunks, " on cuda)");
  ChunkBorders cb{};
  for (int64_t j = 0; j <= chunks; ++j) cb.at[j] = grad_norm_chunk_begin(n, c0 + j);
  sq_partials_kernel<<<dim3(kBlocksPerChunk, unsigned(chunks)), kThreads, 0, on.s>>>(g.data(), cb,
                                                                                     s.part);
  on.launched("grad_sq_chunks");
}

// out[k] (host) = sum of g^2 over norm chunk c0 + k, k < c1 - c0 (sq_partials_kernel then
// sq_finish_kernel); waits for the stream to copy them back.
void cuda_grad_sq_chunks(const Tensor& g, int64_t c0, int64_t c1, double* out) {
  if (c1 <= c0) return;
  On on(g);
  const NormScratch s(g, int(c1 - c0));
  queue_chunk_sums(on, g, c0, c1, s);
  sq_finish_kernel<<<1, kMaxChunks, 0, on.s>>>(s.part, int(c1 - c0), s.chunk, nullptr, 0.0, nullptr,
                                               nullptr);
  on.launched("grad_sq_chunks");
  BN_CUDA(
      cudaMemcpyAsync(out, s.chunk, size_t(c1 - c0) * sizeof(double), cudaMemcpyDeviceToHost, on.s),
      on.dev);
  BN_CUDA(cudaStreamSynchronize(on.s), on.dev);
}

// g[i] *= scale[0] for i < n when apply[0] (both read on the device). A bounded grid: when apply
// is 0 the launch costs little more than its blocks' first read.
__global__ void clip_scale_kernel(float* __restrict__ g, int64_t n, const float* scale,
                                  const int* apply) {
  if (!apply[0]) return;
  const float s = scale[0];
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x)
    g[i] = __fmul_rn(g[i], s);
}

// g: f32 [n]; norm_out: >= 8 bytes on g's device. norm_out <- sqrt(sum g^2) (double, chunk
// order as grad_sq_chunks + norm_from_chunks); g *= f32(max_norm / (norm + 1e-6)) when norm is
// finite and > max_norm > 0. Three launches, no synchronisation.
void cuda_grad_norm_clip(const Tensor& g, double max_norm, const Tensor& norm_out) {
  BN_CHECK(norm_out.nbytes() >= sizeof(double) && norm_out.device() == g.device(), "grad_norm_clip",
           "norm_out ", norm_out.describe(), " must hold 8 bytes on ", g.device().str());
  On on(g);
  const int64_t n = g.numel(), chunks = grad_norm_chunks(n);
  const NormScratch s(g, int(chunks));
  queue_chunk_sums(on, g, 0, chunks, s);
  sq_finish_kernel<<<1, kMaxChunks, 0, on.s>>>(s.part, int(chunks), s.chunk,
                                               static_cast<double*>(norm_out.raw()), max_norm,
                                               s.scale, s.apply);
  on.launched("grad_norm_clip");
  if (n == 0) return;
  const unsigned blocks = std::min(blocks_for(n), 4096u);
  clip_scale_kernel<<<blocks, kThreads, 0, on.s>>>(g.data(), n, s.scale, s.apply);
  on.launched("grad_norm_clip");
}

// ---- scaling, finite count ------------------------------------------------------------------

// g[begin, end) *= s (one IEEE float multiply each, as the CPU).
void cuda_scale_range(const Tensor& gt, int64_t begin, int64_t end, float s) {
  if (end <= begin) return;
  On on(gt);
  float* g = gt.data() + begin;
  autograd::cuda::for_each(
      on, end - begin, [=] __device__(int64_t i) { g[i] = __fmul_rn(g[i], s); }, "scale_range");
}

// count[0] += number of i < n with !isfinite(p[i]): per-block sums (exact in double), one
// integer atomicAdd per block (integer addition: the total does not depend on the order).
__global__ void nonfinite_kernel(const float* __restrict__ p, int64_t n,
                                 unsigned long long* count) {
  __shared__ double sh[kThreads];
  double k = 0;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x)
    k += isfinite(p[i]) ? 0.0 : 1.0;
  k = autograd::cuda::block_sum(k, sh);
  if (threadIdx.x == 0 && k > 0) atomicAdd(count, static_cast<unsigned long long>(k));
}

// Number of elements of t (f32) with !isfinite; reads the count back (synchronises).
int64_t cuda_count_nonfinite(const Tensor& t) {
  const float* p = t.data();
  const int64_t n = t.numel();
  if (n == 0) return 0;
  On on(t);
  const Tensor count = Tensor::zeros(autograd::Shape{8}, autograd::DType::U8, t.device());
  const unsigned blocks = std::min(blocks_for(n), 4096u);
  nonfinite_kernel<<<blocks, kThreads, 0, on.s>>>(p, n,
                                                  static_cast<unsigned long long*>(count.raw()));
  on.launched("count_nonfinite");
  const Tensor host = count.to(autograd::Device::cpu());
  unsigned long long k = 0;
  std::memcpy(&k, host.raw(), sizeof(k));
  return int64_t(k);
}

}  // namespace

void init() {
  ::autograd::cuda::init();  // throws "no CUDA device (...)" without a GPU
  static const Kernels k{
      .device = "cuda",
      .adamw = cuda_adamw,
      .grad_sq_chunks = cuda_grad_sq_chunks,
      .grad_norm_clip = cuda_grad_norm_clip,
      .scale_range = cuda_scale_range,
      .count_nonfinite = cuda_count_nonfinite,
      .adamw_gate = cuda_adamw_gate,
      .adamw_gated = cuda_adamw_gated,
  };
  register_kernels(autograd::DeviceType::CUDA, &k);
}

}  // namespace optim::cuda
