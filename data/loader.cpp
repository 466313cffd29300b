// Deterministic batch loader: per-epoch window permutations and rank sharding by a global cursor.
#include "data/loader.h"

#include <limits>
#include <numeric>
#include <utility>

#include "autograd/error.h"
#include "autograd/random.h"

namespace data {

Loader::Loader(const TokenDataset& ds, int64_t seq, uint64_t seed)
    : ds_(ds), seq_(seq), nwin_(0), seed_(seed) {
  BN_CHECK(seq >= 1, "Loader", "sequence length must be >= 1, got ", seq);
  nwin_ = ds.size() > 0 ? (ds.size() - 1) / seq : 0;
  BN_CHECK(nwin_ >= 1, "Loader", "dataset of ", ds.size(), " tokens is too small for seq ", seq,
           ": one window needs seq + 1 = ", seq + 1, " tokens");
}

int64_t Loader::window_of(uint64_t i) {
  const uint64_t w = uint64_t(nwin_);
  const int64_t epoch = int64_t(i / w);
  if (epoch != perm_epoch_) {
    perm_.resize(size_t(nwin_));
    std::iota(perm_.begin(), perm_.end(), int64_t(0));
    autograd::Rng rng(seed_ * 0x9E3779B97F4A7C15ULL + uint64_t(epoch));
    for (uint64_t k = w - 1; k >= 1; --k) std::swap(perm_[k], perm_[rng.below(k + 1)]);
    perm_epoch_ = epoch;
  }
  return perm_[size_t(i % w)];
}

void Loader::next(int64_t rows, int rank, int world, std::vector<int32_t>& inputs,
                  std::vector<int32_t>& targets) {
  BN_CHECK(rows >= 1, "Loader::next", "rows must be >= 1, got ", rows);
  BN_CHECK(world >= 1 && rank >= 0 && rank < world, "Loader::next", "rank ", rank,
           " is not in [0, world) for world ", world);
  inputs.resize(size_t(rows * seq_));
  targets.resize(size_t(rows * seq_));
  window_.resize(size_t(seq_ + 1));
  const uint64_t first = cursor_ + uint64_t(rank) * uint64_t(rows);
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t w = window_of(first + uint64_t(r));
    ds_.read(w * seq_, seq_ + 1, window_.data());
    const uint32_t* src = window_.data();
    int32_t* in = inputs.data() + r * seq_;
    int32_t* tg = targets.data() + r * seq_;
    for (int64_t j = 0; j <= seq_; ++j) {
      const uint32_t t = src[j];
      BN_CHECK(t <= uint32_t(std::numeric_limits<int32_t>::max()), "Loader::next", "token ", t,
               " at dataset position ", w * seq_ + j, " does not fit in int32");
      if (j < seq_) in[j] = int32_t(t);
      if (j > 0) tg[j - 1] = int32_t(t);
    }
  }
  cursor_ += uint64_t(rows) * uint64_t(world);
}

}  // namespace data
