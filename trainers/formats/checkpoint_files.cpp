// Checkpoint files on disk: the integrity trailer (seal, verify), the HDF5 signature, the
// step-numbered names, listing, resolving a run directory, and rotation.
#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <vector>

#include "trainers/formats/checkpoint.h"
#include "trainers/formats/checkpoint_common.h"

namespace trainers::formats {
namespace fs = std::filesystem;
using namespace detail;

namespace {
// Integrity trailer (docs/RELIABILITY.md): 24 bytes appended after the HDF5 data,
//   "BNCKSUM1" | u64 LE n = bytes of HDF5 data before the trailer | u64 LE content hash,
// content hash: h = n; for each 1 MiB block b of the data (last one shorter): h = hash_bytes(b,
// |b|, h). It is verified before HDF5 parses a single byte: libhdf5 is not robust to arbitrary
// corruption.
constexpr char kTrailerMagic[8] = {'B', 'N', 'C', 'K', 'S', 'U', 'M', '1'};
constexpr size_t kTrailerBytes = 24;

// A file descriptor closed on scope exit.
struct Fd {
  int fd;
  ~Fd() {
    if (fd >= 0) ::close(fd);
  }
};

// Content hash of the first n bytes of fd (read from offset 0).
uint64_t hash_fd(int fd, uint64_t n, const std::string& path) {
  thread_local std::vector<unsigned char> buf(size_t(1) << 20);  // one per thread, not one per file
  uint64_t h = n, done = 0;
  while (done < n) {
    const size_t want = size_t(std::min<uint64_t>(buf.size(), n - done));
    size_t got = 0;
    while (got < want) {
      const ssize_t r = ::pread(fd, buf.data() + got, want - got, off_t(done + got));
      if (r < 0 && errno == EINTR) continue;
      if (r <= 0)
        throw CheckpointError(path + ": read failed at byte " + std::to_string(done + got) + ": " +
                              (r < 0 ? std::strerror(errno) : "unexpected end of file"));
      got += size_t(r);
    }
    h = hash_bytes(buf.data(), want, h);
    done += want;
  }
  return h;
}

}  // namespace

void seal_checkpoint_file(const std::string& path, const std::string& name) {
  const std::string what = name + ": cannot write checkpoint: ";
  Fd f{::open(path.c_str(), O_RDWR)};
  if (f.fd < 0)
    throw CheckpointError(what + "cannot reopen '" + path + "': " + std::strerror(errno));
  const off_t n = ::lseek(f.fd, 0, SEEK_END);
  if (n < 0) throw CheckpointError(what + "cannot seek '" + path + "': " + std::strerror(errno));
  const uint64_t h = hash_fd(f.fd, uint64_t(n), name);
  unsigned char t[kTrailerBytes];
  const uint64_t un = uint64_t(n);
  std::memcpy(t, kTrailerMagic, 8);
  std::memcpy(t + 8, &un, 8);
  std::memcpy(t + 16, &h, 8);
  size_t put = 0;
  while (put < kTrailerBytes) {
    const ssize_t r = ::pwrite(f.fd, t + put, kTrailerBytes - put, n + off_t(put));
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0)
      throw CheckpointError(
          what + "writing the integrity trailer failed: " + std::strerror(r < 0 ? errno : EIO));
    put += size_t(r);
  }
}

void verify_checkpoint_file(const std::string& path) {
  Fd f{::open(path.c_str(), O_RDONLY)};
  if (f.fd < 0) throw CheckpointError(path + ": cannot open: " + std::strerror(errno));
  const off_t size = ::lseek(f.fd, 0, SEEK_END);
  if (size < 0) throw CheckpointError(path + ": cannot seek: " + std::strerror(errno));
  unsigned char t[kTrailerBytes] = {};
  if (size_t(size) < kTrailerBytes ||
      ::pread(f.fd, t, kTrailerBytes, size - off_t(kTrailerBytes)) != ssize_t(kTrailerBytes) ||
      std::memcmp(t, kTrailerMagic, 8) != 0)
    throw CheckpointError(
        path + ": truncated or corrupted checkpoint (" + std::to_string(size) +
        " bytes): no integrity trailer at the end (an interrupted write or a partial copy?)");
  uint64_t n = 0, stored = 0;
  std::memcpy(&n, t + 8, 8);
  std::memcpy(&stored, t + 16, 8);
  if (n != uint64_t(size) - kTrailerBytes)
    throw CheckpointError(path +
                          ": truncated or corrupted checkpoint: the integrity trailer covers " +
                          std::to_string(n) + " bytes, the file holds " +
                          std::to_string(uint64_t(size) - kTrailerBytes) + " before it");
  const uint64_t got = hash_fd(f.fd, n, path);
  if (got != stored)
    throw CheckpointError(path + ": corrupted checkpoint: content hash mismatch (stored " +
                          hex(stored) + ", computed " + hex(got) +
                          "): some byte changed after the file was written");
}

bool is_hdf5_file(const std::string& path) {
  static const char sig[8] = {'\x89', 'H', 'D', 'F', '\r', '\n', '\x1a', '\n'};
  std::ifstream f(path, std::ios::binary);
  char b[8] = {};
  return f.read(b, 8) && std::memcmp(b, sig, 8) == 0;
}

std::string checkpoint_path(const std::string& run_dir, int64_t step) {
  char b[32];
  std::snprintf(b, sizeof b, "step-%09lld.h5", (long long)step);
  return (fs::path(run_dir) / "checkpoints" / b).string();
}

namespace {
// Step of "step-<digits>.h5" (tmp = true: "step-<digits>.h5.tmp"), or -1.
int64_t step_of(const std::string& name, bool tmp) {
  const std::string suffix = tmp ? ".h5.tmp" : ".h5";
  if (name.size() <= 5 + suffix.size() || name.rfind("step-", 0) != 0 ||
      name.compare(name.size() - suffix.size(), suffix.size(), suffix) != 0)
    return -1;
  const std::string digits = name.substr(5, name.size() - 5 - suffix.size());
  if (digits.empty() || digits.size() > 18 ||
      !std::all_of(digits.begin(), digits.end(), [](char c) { return c >= '0' && c <= '9'; }))
    return -1;
  return std::stoll(digits);
}
}  // namespace

std::vector<std::pair<int64_t, std::string>> list_checkpoints(const std::string& dir) {
  std::vector<std::pair<int64_t, std::string>> out;
  std::error_code ec;
  if (!fs::is_directory(dir, ec)) return out;
  for (auto& de : fs::directory_iterator(dir, ec)) {
    if (!de.is_regular_file(ec)) continue;
    const int64_t s = step_of(de.path().filename().string(), false);
    if (s >= 0) out.emplace_back(s, de.path().string());
  }
  std::sort(out.begin(), out.end());
  return out;
}

std::string resolve_checkpoint(const std::string& p) {
  std::error_code ec;
  if (fs::is_regular_file(p, ec)) return p;
  if (!fs::is_directory(p, ec))
    throw CheckpointError(p + ": no such checkpoint file or run directory");
  const fs::path sub = fs::path(p) / "checkpoints";
  const std::string dir = fs::is_directory(sub, ec) ? sub.string() : p;
  const auto list = list_checkpoints(dir);
  if (list.empty())
    throw CheckpointError(p + ": no complete checkpoint in " + dir +
                          " (looked for step-*.h5; *.tmp files are unfinished writes)");
  return list.back().second;
}

void rotate_checkpoints(const std::string& dir, int64_t keep) {
  auto list = list_checkpoints(dir);
  std::error_code ec;
  for (size_t i = 0; i + size_t(std::max<int64_t>(keep, 1)) < list.size(); ++i)
    fs::remove(list[i].second, ec);
  for (auto& de : fs::directory_iterator(dir, ec))
    if (step_of(de.path().filename().string(), true) >= 0) fs::remove(de.path(), ec);
}

}  // namespace trainers::formats
