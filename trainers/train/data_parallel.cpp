// Gradient synchronisation of data-parallel training: overlapped bucketed all-reduce, or ZeRO-1.
#include "trainers/train/data_parallel.h"

#include <algorithm>
#include <climits>
#include <string>

#include "autograd/error.h"
#include "autograd/kernels.h"
#include "nn/names.h"

namespace trainers::train {

std::vector<int64_t> zero1_bounds(int64_t n, int world) {
  const int64_t C = optim::grad_norm_chunks(n);
  std::vector<int64_t> b(size_t(world) + 1);
  for (int r = 0; r <= world; ++r)
    b[size_t(r)] = optim::grad_norm_chunk_begin(n, std::min<int64_t>(C, C * r / world));
  return b;
}

DataParallel::DataParallel(nn::BitNetLM& model, Comm& comm, bool zero1)
    : model_(model), comm_(comm), zero1_(zero1 && comm.world() > 1) {
  const int64_t n = model.params().numel();
  end_ = n;
  if (!zero1_) return;
  bounds_ = zero1_bounds(n, comm.world());
  for (size_t r = 0; r + 1 < bounds_.size(); ++r) counts_.push_back(bounds_[r + 1] - bounds_[r]);
  begin_ = bounds_[size_t(comm.rank())], end_ = bounds_[size_t(comm.rank()) + 1];
  slice_.resize(size_t(end_ - begin_));
}

// Gradient buckets in the order backward completes them: final norm + LM head, blocks L-1..0,
// embedding; each a contiguous range of the flat gradient buffer, tied to a block mark.
void DataParallel::make_buckets() {
  const auto& E = model_.params().entries();
  const int64_t L = model_.config().n_layers;
  std::vector<Bucket> layer(size_t(L), Bucket{INT64_MAX, 0, 0});
  Bucket head{INT64_MAX, 0, size_t(L)}, embed{INT64_MAX, 0, SIZE_MAX};
  for (const auto& e : E) {
    const auto t = nn::find_tensor(e.name);
    BN_CHECK(t, "DataParallel", "parameter ", e.name, " is not in the tensor table (nn/names.h)");
    Bucket* b = &head;
    if (t->slot() == nn::TensorSlot::Embed)
      b = &embed;
    else if (t->layer >= 0)
      b = &layer[size_t(t->layer)];
    b->begin = std::min(b->begin, e.offset);
    b->end = std::max(b->end, e.offset + e.numel);
  }
  buckets_.push_back(head);
  for (int64_t l = L - 1; l >= 0; --l)
    buckets_.push_back({layer[size_t(l)].begin, layer[size_t(l)].end, size_t(l)});
  buckets_.push_back(embed);
  buckets_.erase(std::remove_if(buckets_.begin(), buckets_.end(),
                                [](const Bucket& b) { return b.begin >= b.end; }),
                 buckets_.end());
  // Every gradient must be reduced exactly once: the buckets tile the flat buffer.
  std::vector<std::pair<int64_t, int64_t>> r;
  for (const Bucket& b : buckets_) r.emplace_back(b.begin, b.end);
  std::sort(r.begin(), r.end());
  int64_t at = 0;
  for (auto [b, e] : r) {
    if (b != at)
      autograd::fail(
          "DataParallel: gradient buckets do not tile the flat buffer (gap or overlap at ", at,
          ")");
    at = e;
  }
  if (at != model_.params().numel())
    autograd::fail("DataParallel: gradient buckets end at ", at, " of ", model_.params().numel());
}

// All-reduce of the bucket, or (ZeRO-1) reduce-scatter of it: rank r receives the sums of the
// part of the bucket inside its slice, at that part's place in slice_.
void DataParallel::start_bucket(size_t i) {
  const Bucket& b = buckets_[i];
  float* g = model_.params().grads().data();
  if (!zero1_) return void(comm_.start_allreduce_sum(g + b.begin, b.end - b.begin));
  std::vector<int64_t>& part = bucket_counts_;
  part.assign(counts_.size(), 0);
  for (size_t r = 0; r < part.size(); ++r)
    part[r] = std::max<int64_t>(0, std::min(b.end, bounds_[r + 1]) - std::max(b.begin, bounds_[r]));
  const int64_t at = std::clamp(b.begin, begin_, end_) - begin_;
  comm_.start_reduce_scatter_sum(g + b.begin, slice_.data() + at, part);
}

void DataParallel::before_last_backward(autograd::Tape& tape) {
  if (comm_.world() == 1) return;
  if (buckets_.empty()) make_buckets();
  next_bucket_ = 0;
  const std::vector<size_t>& marks = model_.block_marks();  // unchanged until the next forward
  tape.set_hook([this, &marks](size_t node) {
    while (next_bucket_ < buckets_.size() && buckets_[next_bucket_].mark < marks.size() &&
           node <= marks[buckets_[next_bucket_].mark])
      start_bucket(next_bucket_++);
    comm_.progress();
  });
}

double DataParallel::reduce(autograd::Tape& tape, double loss_sum, int64_t accum) {
  auto& P = model_.params();
  if (comm_.world() == 1) return loss_sum / double(accum);
  tape.set_hook({});  // finish the sums (the buckets the hook has not started yet, then the wait)
  while (next_bucket_ < buckets_.size()) start_bucket(next_bucket_++);
  comm_.wait_all();
  // Mean over ranks: all gradients, or (ZeRO-1) this rank's slice, written back in place.
  const float inv = 1.0f / float(comm_.world());
  float* g = P.grads().data();
  if (!zero1_) {
    autograd::kernels::parallel_for(P.grads().numel(), [&](int64_t i) { g[i] *= inv; });
  } else {
    const float* s = slice_.data();
    g += begin_;
    autograd::kernels::parallel_for(end_ - begin_, [&](int64_t i) { g[i] = s[i] * inv; });
  }
  return comm_.allreduce_sum_f64(loss_sum) / double(comm_.world()) /
         double(accum);  // every rank logs the same
}

double DataParallel::clip_grad_norm(double grad_clip) {
  auto& P = model_.params();
  if (!zero1_) return optim::clip_grad_norm(P, grad_clip);
  // ZeRO-1: the norm from every chunk's partial (each chunk owned by one rank, zeros elsewhere:
  // the sum over ranks is exact), summed in chunk order like optim::clip_grad_norm.
  const int64_t N = P.numel(), C = optim::grad_norm_chunks(N);
  partials_.assign(size_t(C), 0.0);
  int64_t c0 = 0;
  while (c0 < C && optim::grad_norm_chunk_begin(N, c0) < begin_) ++c0;
  int64_t c1 = c0;
  while (c1 < C && optim::grad_norm_chunk_begin(N, c1) < end_) ++c1;
  if (end_ > begin_) optim::grad_sq_chunks(P, c0, c1, partials_.data() + c0);
  comm_.allreduce_sum_f64(partials_.data(), C);
  const double norm = optim::norm_from_chunks(partials_);
  optim::clip_grads(P, begin_, end_, norm, grad_clip);
  return norm;
}

void DataParallel::after_step() {
  if (zero1_) comm_.allgather(model_.params().values().data(), counts_);
}

}  // namespace trainers::train
