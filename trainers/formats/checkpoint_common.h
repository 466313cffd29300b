// What the checkpoint writer and reader share (private to trainers/formats): the dataset checksum,
// HDF5 error and locking helpers, an owning HDF5 handle, and the check of a state's values.
#pragma once
#include <hdf5.h>

#include <cstddef>
#include <cstdint>
#include <string>

#include "nn/model.h"
#include "optim/adamw.h"

namespace trainers::formats::detail {

inline constexpr const char* kFormat = "bitnet-checkpoint";

// 64-bit checksum over 8-byte little-endian words (tail zero-padded), seeded with the length:
//   h = seed ^ (n * 0x9e3779b97f4a7c15); per word w: h = (h ^ w) * 0x100000001b3; h ^= h >> 29;
//   final: h ^= h >> 33; h *= 0xff51afd7ed558ccd; h ^= h >> 33.
// Every step is a bijection of h for a fixed word, so any change confined to one word changes h.
uint64_t hash_bytes(const void* p, size_t n, uint64_t seed = 0);

std::string hex(uint64_t v);  // 16 hex digits

// HDF5 prints its error stack to stderr by default; we report our own messages instead (no HDF5
// atexit clean-up either: see the .cpp). Called before every HDF5 use.
void quiet_hdf5();
// File locks where the file system supports them, no failure where it does not (NFS, Lustre).
void lenient_locking(hid_t fapl);
// The most specific message of HDF5's current error stack, as " (HDF5: ...)", or "".
std::string h5_detail();

// Owns one HDF5 identifier.
class Handle {
 public:
  Handle() = default;
  Handle(hid_t id, herr_t (*close)(hid_t)) : id_(id), close_(close) {}
  Handle(Handle&& o) noexcept : id_(o.id_), close_(o.close_) { o.id_ = -1; }
  Handle& operator=(Handle&& o) noexcept {
    if (this != &o) {
      reset();
      id_ = o.id_, close_ = o.close_;
      o.id_ = -1;
    }
    return *this;
  }
  Handle(const Handle&) = delete;
  Handle& operator=(const Handle&) = delete;
  ~Handle() { reset(); }
  herr_t reset() {
    herr_t r = 0;
    if (id_ >= 0 && close_) r = close_(id_);
    id_ = -1;
    return r;
  }
  hid_t get() const { return id_; }
  operator hid_t() const { return id_; }

 private:
  hid_t id_ = -1;
  herr_t (*close_)(hid_t) = nullptr;
};

// Throws `prefix` + the first parameter or AdamW moment holding a non-finite value (or a negative
// second moment): such a state is diverged or corrupted and must neither replace good checkpoints
// nor be resumed from.
void check_state_values(const std::string& prefix, const nn::BitNetLM& model,
                        const optim::AdamW* opt);

}  // namespace trainers::formats::detail
