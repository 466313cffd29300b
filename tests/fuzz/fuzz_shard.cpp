// libFuzzer target: the token-shard reader (own and llm.c formats), the dataset and the loader.
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <string>

#include "autograd/error.h"
#include "data/loader.h"
#include "data/tokens.h"

namespace {
// The scratch file each input is written to; removed after each input.
struct Scratch {
  std::string path =
      (access("/dev/shm", W_OK) == 0 ? std::string("/dev/shm") : std::string("/tmp")) +
      "/bitnet_fuzz_shard_" + std::to_string(getpid()) + ".bin";
};
struct RemoveAfter {
  const std::string& path;
  ~RemoveAfter() { std::remove(path.c_str()); }
};
}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const Scratch scratch;
  const std::string& path = scratch.path;
  const RemoveAfter cleanup{path};
  {
    std::ofstream f(path, std::ios::binary | std::ios::trunc);
    f.write(reinterpret_cast<const char*>(data), std::streamsize(size));
  }
  try {
    uint64_t vocab = 0;
    const std::vector<uint32_t> t = data::read_shard(path, &vocab);
    data::TokenDataset ds({path});
    if (size_t(ds.size()) != t.size())
      std::abort();  // the dataset holds exactly the shard's tokens
    ds.check_vocab(vocab ? vocab : uint64_t(ds.max_token()) + 1);
    const int64_t seq = 1 + int64_t(size % 7);
    data::Loader loader(ds, seq, size);
    std::vector<int32_t> x, y;
    loader.next(2, 1, 2, x, y);
    if (x.size() != size_t(2 * seq) || y.size() != x.size()) std::abort();
  } catch (const autograd::Error& e) {
    if (std::string(e.what()).find(path) == std::string::npos &&
        std::string(e.what()).find("Loader") == std::string::npos) {
      std::fprintf(stderr, "error does not name the file: %s\n", e.what());
      std::abort();
    }
  }
  return 0;
}
