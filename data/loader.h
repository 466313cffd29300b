// Deterministic batch loader: fixed-length windows drawn from a seed, sharded across ranks.
//
// The dataset of N tokens is cut into W = (N - 1) / seq windows; window w covers tokens
// [w*seq, w*seq + seq] (seq + 1 tokens: inputs are the first seq, targets the last seq). Each
// epoch visits all windows in a permutation seeded by (seed, epoch). A single global cursor
// counts samples drawn; a global batch of R rows per rank on `world` ranks takes samples
// [cursor, cursor + R*world) and rank r gets samples cursor + r*R ... + R - 1. The state is the
// cursor alone, so a run saved on N ranks resumes on M ranks without skipping or repeating a
// sample (as long as the global batch is the same).
#pragma once
#include <cstdint>
#include <vector>

#include "data/tokens.h"

namespace data {

class Loader {
 public:
  // Keeps a reference to ds (which must outlive the loader). Throws unless seq >= 1 and the
  // dataset holds at least one window (N >= seq + 1).
  Loader(const TokenDataset& ds, int64_t seq, uint64_t seed);
  // Fills inputs/targets (rows*seq each, row-major [rows, seq]) with this rank's share of the
  // next global batch and advances the cursor by rows*world.
  void next(int64_t rows, int rank, int world, std::vector<int32_t>& inputs,
            std::vector<int32_t>& targets);
  int64_t windows() const { return nwin_; }
  uint64_t cursor() const { return cursor_; }
  void set_cursor(uint64_t c) { cursor_ = c; }
  // Window index of global sample i (epoch = i / W, permuted within the epoch).
  int64_t window_of(uint64_t i);

 private:
  const TokenDataset& ds_;
  int64_t seq_, nwin_;
  uint64_t seed_, cursor_ = 0;
  int64_t perm_epoch_ = -1;
  std::vector<int64_t> perm_;
  std::vector<uint32_t> window_;  // the seq + 1 tokens of the window being copied
};

}  // namespace data
