// Loader throughput on a shard file or directory: `bench_loader DATA [SEQ] [ROWS] [BATCHES]`
// opens the (memory-mapped) dataset and draws random windows as the trainer does.
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "data/loader.h"
#include "data/tokens.h"

int main(int argc, char** argv) {
  if (argc < 2) {
    std::fprintf(stderr, "usage: bench_loader DATA [SEQ=2048] [ROWS=8] [BATCHES=2000]\n");
    return 2;
  }
  const int64_t seq = argc > 2 ? std::atoll(argv[2]) : 2048;
  const int64_t rows = argc > 3 ? std::atoll(argv[3]) : 8;
  const int64_t batches = argc > 4 ? std::atoll(argv[4]) : 2000;
  try {
    const auto t0 = std::chrono::steady_clock::now();
    const data::TokenDataset ds({argv[1]});
    const double open_s =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    data::Loader loader(ds, seq, 1);
    std::vector<int32_t> x, y;
    uint64_t sum = 0;
    const auto t1 = std::chrono::steady_clock::now();
    for (int64_t b = 0; b < batches; ++b) {
      loader.next(rows, 0, 1, x, y);
      sum += uint64_t(x[0]) + uint64_t(y.back());
    }
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t1).count();
    const double toks = double(batches * rows * seq);
    std::printf(
        "%s: %lld tokens in %lld shard(s), opened in %.3f s; %lld batches of %lld x %lld: "
        "%.1f M tokens/s (%.1f ms per batch, checksum %llu)\n",
        argv[1], (long long)ds.size(), (long long)ds.shards(), open_s, (long long)batches,
        (long long)rows, (long long)seq, toks / s / 1e6, 1e3 * s / double(batches),
        (unsigned long long)sum);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bench_loader: %s\n", e.what());
    return 1;
  }
  return 0;
}
