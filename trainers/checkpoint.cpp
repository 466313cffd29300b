// HDF5 training checkpoints: atomic checksummed writes, verified reads, compatibility checks.
#include "trainers/checkpoint.h"

#include <fcntl.h>
#include <hdf5.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cerrno>
#include <charconv>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>
#include <sstream>
#include <thread>
#include <tuple>

#include "autograd/hash.h"
#include "autograd/kernels.h"
#include "quant/igemm.h"

namespace trainers {
namespace fs = std::filesystem;

namespace {
constexpr const char* kFormat = "bitnet-checkpoint";
constexpr const char* kHashName = "bitnet-hash64-v1";
constexpr size_t kChunkBytes = size_t(4) << 20;  // target chunk size (one Fletcher32 sum each)

// The checksum of every dataset, the trailer and the data fingerprint: bitnet-hash64-v1
// (autograd/hash.h, where its equation is written out).
uint64_t hash_bytes(const void* p, size_t n, uint64_t seed = 0) { return autograd::hash64_words(p, n, seed); }

std::string hex(uint64_t v) {
  char b[24];
  std::snprintf(b, sizeof b, "%016llx", (unsigned long long)v);
  return b;
}
std::string dims_str(const std::vector<int64_t>& d) {
  std::string s = "[";
  for (size_t i = 0; i < d.size(); ++i) s += (i ? ", " : "") + std::to_string(d[i]);
  return s + "]";
}

// HDF5 prints its error stack to stderr by default; we report our own messages instead.
// Also no HDF5 atexit clean-up: after a failed H5Fclose (a write error: a full disk) HDF5 1.10 keeps
// a half-destroyed file ID and closing it again at exit crashes in H5F__close_cb (found by
// tests/test_faults.cpp). Every file is closed explicitly, so the handler has nothing to do.
// (H5dont_atexit only works before the library's first call; this is the first.)
void quiet_hdf5() {
  static const bool no_atexit = H5dont_atexit() >= 0;
  (void)no_atexit;
  H5Eset_auto2(H5E_DEFAULT, nullptr, nullptr);
}

// File locks where the file system supports them, no failure where it does not (NFS, Lustre).
void lenient_locking(hid_t fapl) {
#if H5_VERSION_GE(1, 10, 7)
  H5Pset_file_locking(fapl, true, true);
#else
  (void)fapl;
#endif
}

herr_t collect_error(unsigned, const H5E_error2_t* e, void* data) {
  if (e->desc && *e->desc) static_cast<std::vector<std::string>*>(data)->push_back(e->desc);
  return 0;
}
// The most specific message of HDF5's current error stack, as " (HDF5: ...)", or "".
std::string h5_detail() {
  std::vector<std::string> msgs;
  H5Ewalk2(H5E_DEFAULT, H5E_WALK_UPWARD, collect_error, &msgs);
  if (msgs.empty()) return std::string();
  std::string m = msgs.front();  // (system errors carry a ctime() line break)
  std::replace(m.begin(), m.end(), '\n', ' ');
  return " (HDF5: " + m + ")";
}

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

void fsync_path(const std::string& p, bool dir, const std::string& what) {
  const int fd = ::open(p.c_str(), O_RDONLY | (dir ? O_DIRECTORY : 0));
  if (fd < 0 || ::fsync(fd) != 0) {
    const int err = errno;
    if (fd >= 0) ::close(fd);
    throw CheckpointError(what + ": fsync of '" + p + "' failed: " + std::strerror(err));
  }
  ::close(fd);
}

// ---------------------------------------------------------------------------------------------
// Integrity trailer (docs/RELIABILITY.md): 24 bytes appended after the HDF5 data,
//   "BNCKSUM1" | u64 LE n = bytes of HDF5 data before the trailer | u64 LE content hash,
// content hash: h = n; for each 1 MiB block b of the data (last one shorter): h = hash_bytes(b, |b|, h).
// It is verified before HDF5 parses a single byte: libhdf5 is not robust to arbitrary corruption.
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
      if (r <= 0) throw CheckpointError(path + ": read failed at byte " + std::to_string(done + got) + ": " +
                                        (r < 0 ? std::strerror(errno) : "unexpected end of file"));
      got += size_t(r);
    }
    h = hash_bytes(buf.data(), want, h);
    done += want;
  }
  return h;
}

// Non-finite value (or, with nonneg, a negative one) in n floats: its index, or -1.
int64_t first_bad_value(const float* p, int64_t n, bool nonneg) {
  for (int64_t i = 0; i < n; ++i)
    if (!std::isfinite(p[i]) || (nonneg && p[i] < 0)) return i;
  return -1;
}

// Throws `prefix` + the first parameter or AdamW moment holding a non-finite value (or a negative
// second moment): such a state is diverged or corrupted and must neither replace good checkpoints
// nor be resumed from.
void check_state_values(const std::string& prefix, const nn::BitNetLM& model, const optim::AdamW* opt) {
  for (const auto& e : model.params().entries()) {
    struct Part {
      const char* group;
      const float* p;
      bool nonneg;
    };
    std::vector<Part> parts = {{"/params/", e.var.data(), false}};
    if (opt) parts.push_back({"/optim/exp_avg/", opt->exp_avg().data() + e.offset, false}),
        parts.push_back({"/optim/exp_avg_sq/", opt->exp_avg_sq().data() + e.offset, true});
    for (const Part& q : parts) {
      const int64_t i = first_bad_value(q.p, e.numel, q.nonneg);
      if (i >= 0)
        throw CheckpointError(prefix + q.group + e.name + " holds " + std::to_string(q.p[i]) + " at flat index " +
                              std::to_string(i) + " (a diverged or corrupted training state)");
    }
  }
}

// Test hook (tests/test_faults.cpp): BITNET_TEST_CHECKPOINT_DELAY_MS=N sleeps N ms after each
// dataset written, so that a kill lands inside a checkpoint write often enough to be tested.
void test_write_delay() {
  static const long ms = [] {
    const char* e = std::getenv("BITNET_TEST_CHECKPOINT_DELAY_MS");
    return e ? std::atol(e) : 0L;
  }();
  if (ms > 0) std::this_thread::sleep_for(std::chrono::milliseconds(ms));
}

// ---------------------------------------------------------------------------------------------
// Writing

class Writer {
 public:
  Writer(const std::string& tmp, const std::string& final_path) : path_(final_path) {
    // Every metadata structure checksummed: the 1.10 format (v2/v3 superblock, v2 object headers,
    // fixed-array chunk indices), and links and attributes kept in the (checksummed) object
    // headers rather than in fractal heaps, whose blocks carry no checksum by default.
    Handle fapl(H5Pcreate(H5P_FILE_ACCESS), H5Pclose), fcpl(H5Pcreate(H5P_FILE_CREATE), H5Pclose);
    ok(fapl, "property list");
    ok(fcpl, "property list");
    ok(H5Pset_libver_bounds(fapl, H5F_LIBVER_V110, H5F_LIBVER_LATEST), "libver bounds");
    lenient_locking(fapl);
    gcpl_ = Handle(H5Pcreate(H5P_GROUP_CREATE), H5Pclose);
    ok(gcpl_, "property list");
    for (hid_t p : {fcpl.get(), gcpl_.get()}) {
      ok(H5Pset_link_phase_change(p, kMaxCompact, kMaxCompact), "compact link storage");
      ok(H5Pset_attr_phase_change(p, kMaxCompact, kMaxCompact), "compact attribute storage");
    }
    file_ = Handle(H5Fcreate(tmp.c_str(), H5F_ACC_TRUNC, fcpl, fapl), H5Fclose);
    ok(file_, "cannot create '" + tmp + "'");
  }

  hid_t file() const { return file_; }
  Handle group(const std::string& name) {
    Handle g(H5Gcreate2(file_, name.c_str(), H5P_DEFAULT, gcpl_, H5P_DEFAULT), H5Gclose);
    ok(g, "group " + name);
    return g;
  }

  void attr(hid_t obj, const char* name, int64_t v) { put_attr(obj, name, H5T_STD_I64LE, H5T_NATIVE_INT64, &v); }
  void attr(hid_t obj, const char* name, uint64_t v) { put_attr(obj, name, H5T_STD_U64LE, H5T_NATIVE_UINT64, &v); }
  void attr(hid_t obj, const char* name, double v) { put_attr(obj, name, H5T_IEEE_F64LE, H5T_NATIVE_DOUBLE, &v); }
  void attr(hid_t obj, const char* name, const std::string& v) {
    Handle t(H5Tcopy(H5T_C_S1), H5Tclose);
    ok(t, "string type");
    ok(H5Tset_size(t, v.size() + 1), "string type");
    ok(H5Tset_strpad(t, H5T_STR_NULLTERM), "string type");
    put_attr(obj, name, t, t, v.c_str());
  }

  // A chunked, Fletcher32-protected dataset with a "checksum" attribute (hash_bytes of the data).
  void dataset(hid_t loc, const std::string& name, const void* data, const std::vector<int64_t>& shape, hid_t ftype,
               hid_t mtype, size_t esize) {
    std::vector<hsize_t> dims(shape.begin(), shape.end()), chunk = dims;
    size_t row = esize, total = esize;
    for (size_t i = 1; i < dims.size(); ++i) row *= size_t(dims[i]);
    for (hsize_t d : dims) total *= size_t(d);
    if (dims.empty() || total == 0) fail("dataset " + name + ": empty or scalar data cannot be stored");
    if (row >= (size_t(1) << 32)) fail("dataset " + name + ": a row of " + std::to_string(row) + " bytes exceeds HDF5's 4 GiB chunk limit");
    chunk[0] = std::clamp<hsize_t>(hsize_t(kChunkBytes / row), 1, dims[0]);
    Handle space(H5Screate_simple(int(dims.size()), dims.data(), nullptr), H5Sclose);
    ok(space, "dataspace of " + name);
    Handle dcpl(H5Pcreate(H5P_DATASET_CREATE), H5Pclose);
    ok(dcpl, "dataset properties");
    ok(H5Pset_chunk(dcpl, int(chunk.size()), chunk.data()), "chunking of " + name);
    ok(H5Pset_fletcher32(dcpl), "Fletcher32 filter on " + name);
    Handle d(H5Dcreate2(loc, name.c_str(), ftype, space, H5P_DEFAULT, dcpl, H5P_DEFAULT), H5Dclose);
    ok(d, "dataset " + name);
    ok(H5Dwrite(d, mtype, H5S_ALL, H5S_ALL, H5P_DEFAULT, data), "writing dataset " + name);
    attr(d, "checksum", hash_bytes(data, total));
    test_write_delay();
  }
  void floats(hid_t loc, const std::string& name, const float* data, const autograd::Shape& s) {
    dataset(loc, name, data, s.vec(), H5T_IEEE_F32LE, H5T_NATIVE_FLOAT, 4);
  }
  void bytes(hid_t loc, const std::string& name, const std::string& b) {
    dataset(loc, name, b.data(), {int64_t(b.size())}, H5T_STD_U8LE, H5T_NATIVE_UINT8, 1);
  }

  // H5Fflush, close (checked), then fsync the file.
  void finish(const std::string& tmp) {
    ok(H5Fflush(file_, H5F_SCOPE_GLOBAL), "flush");
    ok(file_.reset(), "close");
    seal_checkpoint_file(tmp, path_);
    fsync_path(tmp, false, path_ + ": cannot write checkpoint");
  }

 private:
  void put_attr(hid_t obj, const char* name, hid_t ftype, hid_t mtype, const void* v) {
    Handle space(H5Screate(H5S_SCALAR), H5Sclose);
    ok(space, "scalar dataspace");
    Handle a(H5Acreate2(obj, name, ftype, space, H5P_DEFAULT, H5P_DEFAULT), H5Aclose);
    ok(a, std::string("attribute ") + name);
    ok(H5Awrite(a, mtype, v), std::string("attribute ") + name);
  }
  void ok(int64_t r, const std::string& what) {
    if (r < 0) fail(what + h5_detail());
  }
  [[noreturn]] void fail(const std::string& what) { throw CheckpointError(path_ + ": cannot write checkpoint: " + what); }

  static constexpr unsigned kMaxCompact = 65535;  // links / attributes per object, all compact
  std::string path_;
  Handle gcpl_, file_;
};

// ---------------------------------------------------------------------------------------------
// Reading

struct DsInfo {
  H5T_class_t cls = H5T_NO_CLASS;
  size_t esize = 0;
  std::vector<int64_t> dims;
};

class Reader {
 public:
  explicit Reader(const std::string& path) : path_(path) {
    quiet_hdf5();
    std::error_code ec;
    if (!fs::exists(path, ec)) fail("no such file");
    if (fs::is_directory(path, ec)) fail("is a directory, not a checkpoint file");
    const auto size = fs::file_size(path, ec);
    if (ec) fail("cannot read: " + ec.message());
    if (size == 0) fail("empty file (0 bytes): not a checkpoint (interrupted write?)");
    if (!is_hdf5_file(path)) fail("not an HDF5 file (no HDF5 signature at the start): not a bitnet checkpoint");
    verify_checkpoint_file(path);  // before HDF5 parses anything
    Handle fapl(H5Pcreate(H5P_FILE_ACCESS), H5Pclose);
    if (fapl < 0) fail("cannot create a property list" + h5_detail());
    lenient_locking(fapl);
    file_ = Handle(H5Fopen(path.c_str(), H5F_ACC_RDONLY, fapl), H5Fclose);
    if (file_ < 0) fail("cannot open: truncated or corrupted HDF5 file (" + std::to_string(size) + " bytes)" + h5_detail());
    if (!has_attr(file_, "format")) fail("not a bitnet checkpoint (no 'format' attribute on /)");
    const std::string fmt = str_attr(file_, "/", "format");
    if (fmt != kFormat) fail("not a bitnet checkpoint (format '" + fmt + "', expected '" + kFormat + "')");
    const int64_t v = i64_attr(file_, "/", "format_version");
    if (v != kCheckpointFormatVersion)
      fail("checkpoint format version " + std::to_string(v) + " is not supported (this build reads version " +
           std::to_string(kCheckpointFormatVersion) + ")");
    version_ = v;
  }

  int64_t version() const { return version_; }
  hid_t file() const { return file_; }

  // True when every component of an absolute path ("/optim/exp_avg/name") exists.
  bool exists(const std::string& p) {
    std::string cur;
    size_t pos = 1;
    while (pos <= p.size()) {
      size_t next = p.find('/', pos);
      if (next == std::string::npos) next = p.size();
      cur = p.substr(0, next);
      const htri_t r = H5Lexists(file_, cur.c_str(), H5P_DEFAULT);
      if (r < 0) fail("cannot look up " + cur + ": corrupted metadata" + h5_detail());
      if (r == 0) return false;
      pos = next + 1;
    }
    return true;
  }

  std::vector<std::string> list(const std::string& group) {
    Handle g(H5Gopen2(file_, group.c_str(), H5P_DEFAULT), H5Gclose);
    if (g < 0) fail("cannot open group " + group + ": corrupted metadata" + h5_detail());
    H5G_info_t gi;
    if (H5Gget_info(g, &gi) < 0) fail("cannot list group " + group + ": corrupted metadata" + h5_detail());
    std::vector<std::string> names;
    for (hsize_t i = 0; i < gi.nlinks; ++i) {
      const ssize_t n = H5Lget_name_by_idx(g, ".", H5_INDEX_NAME, H5_ITER_INC, i, nullptr, 0, H5P_DEFAULT);
      if (n < 0) fail("cannot list group " + group + ": corrupted metadata" + h5_detail());
      std::string s(size_t(n) + 1, '\0');
      if (H5Lget_name_by_idx(g, ".", H5_INDEX_NAME, H5_ITER_INC, i, s.data(), s.size(), H5P_DEFAULT) < 0)
        fail("cannot list group " + group + ": corrupted metadata" + h5_detail());
      s.resize(size_t(n));
      names.push_back(s);
    }
    return names;
  }

  DsInfo info(const std::string& name) {
    Handle d = open_ds(name);
    Handle t(H5Dget_type(d), H5Tclose), s(H5Dget_space(d), H5Sclose);
    if (t < 0 || s < 0) fail("dataset " + name + ": cannot read its type/shape: corrupted metadata" + h5_detail());
    DsInfo r;
    r.cls = H5Tget_class(t);
    r.esize = H5Tget_size(t);
    const int rank = H5Sget_simple_extent_ndims(s);
    if (rank < 0) fail("dataset " + name + ": cannot read its shape" + h5_detail());
    std::vector<hsize_t> d2(static_cast<size_t>(rank));
    if (rank > 0 && H5Sget_simple_extent_dims(s, d2.data(), nullptr) < 0) fail("dataset " + name + ": cannot read its shape" + h5_detail());
    r.dims.assign(d2.begin(), d2.end());
    return r;
  }

  // Reads a whole dataset (HDF5 verifies each chunk's Fletcher32) and checks its checksum attribute.
  void read(const std::string& name, hid_t mtype, void* dst, size_t nbytes) {
    Handle d = open_ds(name);
    {  // H5S_ALL reads every stored element: the count must match the destination exactly.
      Handle s(H5Dget_space(d), H5Sclose);
      const hssize_t n = s < 0 ? -1 : H5Sget_simple_extent_npoints(s);
      const size_t want = nbytes / H5Tget_size(mtype);
      if (n < 0 || size_t(n) != want)
        fail("dataset " + name + ": holds " + std::to_string(n) + " elements, expected " + std::to_string(want));
    }
    if (H5Dread(d, mtype, H5S_ALL, H5S_ALL, H5P_DEFAULT, dst) < 0)
      fail("dataset " + name + ": read failed, the data is corrupted" + h5_detail());
    if (!has_attr(d, "checksum")) fail("dataset " + name + ": no checksum attribute");
    uint64_t stored = 0;
    Handle a(H5Aopen(d, "checksum", H5P_DEFAULT), H5Aclose);
    if (a < 0) fail("dataset " + name + ": cannot open its checksum: corrupted metadata" + h5_detail());
    require_one_element(a, name, "checksum");
    if (H5Aread(a, H5T_NATIVE_UINT64, &stored) < 0)
      fail("dataset " + name + ": cannot read its checksum: corrupted metadata" + h5_detail());
    const uint64_t got = hash_bytes(dst, nbytes);
    if (got != stored)
      fail("dataset " + name + ": checksum mismatch (stored " + hex(stored) + ", computed " + hex(got) + "): the data is corrupted");
  }
  std::string read_bytes(const std::string& name) {
    const DsInfo i = info(name);
    if (i.cls != H5T_INTEGER || i.esize != 1 || i.dims.size() != 1) fail("dataset " + name + ": expected a 1-D array of bytes");
    if (i.dims[0] > (int64_t(1) << 30)) fail("dataset " + name + ": " + std::to_string(i.dims[0]) + " bytes, more than the 1 GiB a config or tokenizer can take");
    std::string s(size_t(i.dims[0]), '\0');
    read(name, H5T_NATIVE_UINT8, s.data(), s.size());
    return s;
  }

  bool has_attr(hid_t obj, const char* name) {
    const htri_t r = H5Aexists(obj, name);
    if (r < 0) fail(std::string("cannot look up attribute ") + name + ": corrupted metadata" + h5_detail());
    return r > 0;
  }
  int64_t i64_attr(hid_t loc, const std::string& obj, const char* name) {
    int64_t v = 0;
    num_attr(loc, obj, name, H5T_NATIVE_INT64, &v);
    return v;
  }
  uint64_t u64_attr(hid_t loc, const std::string& obj, const char* name) {
    uint64_t v = 0;
    num_attr(loc, obj, name, H5T_NATIVE_UINT64, &v);
    return v;
  }
  double f64_attr(hid_t loc, const std::string& obj, const char* name) {
    double v = 0;
    num_attr(loc, obj, name, H5T_NATIVE_DOUBLE, &v);
    return v;
  }
  std::string str_attr(hid_t loc, const std::string& obj, const char* name) {
    Handle a = open_attr(loc, obj, name);
    Handle t(H5Aget_type(a), H5Tclose);
    if (t < 0 || H5Tget_class(t) != H5T_STRING || H5Tis_variable_str(t) != 0)
      fail("attribute " + obj + " " + name + ": expected a fixed-length string");
    require_one_element(a, obj, name);
    std::string s(H5Tget_size(t), '\0');
    if (H5Aread(a, t, s.data()) < 0) fail("attribute " + obj + " " + name + ": read failed" + h5_detail());
    s.resize(std::strlen(s.c_str()));
    return s;
  }
  Handle open_group(const std::string& name) {
    if (!exists(name)) fail("missing group " + name + " (not a complete checkpoint)");
    Handle g(H5Gopen2(file_, name.c_str(), H5P_DEFAULT), H5Gclose);
    if (g < 0) fail("cannot open group " + name + ": corrupted metadata" + h5_detail());
    return g;
  }

  [[noreturn]] void fail(const std::string& what) const { throw CheckpointError(path_ + ": " + what); }

 private:
  Handle open_ds(const std::string& name) {
    Handle d(H5Dopen2(file_, name.c_str(), H5P_DEFAULT), H5Dclose);
    if (d < 0) fail("cannot open dataset " + name + ": corrupted metadata" + h5_detail());
    return d;
  }
  Handle open_attr(hid_t loc, const std::string& obj, const char* name) {
    if (!has_attr(loc, name)) fail("missing attribute '" + std::string(name) + "' on " + obj + " (not a complete checkpoint)");
    Handle a(H5Aopen(loc, name, H5P_DEFAULT), H5Aclose);
    if (a < 0) fail("attribute " + obj + " " + name + ": cannot open, corrupted metadata" + h5_detail());
    return a;
  }
  // H5Aread writes every element: an attribute rewritten as an array would overrun the scalar.
  void require_one_element(hid_t a, const std::string& obj, const char* name) {
    Handle s(H5Aget_space(a), H5Sclose);
    const hssize_t n = s < 0 ? -1 : H5Sget_simple_extent_npoints(s);
    if (n != 1) fail("attribute " + obj + " " + name + ": holds " + std::to_string(n) + " elements, expected one");
  }
  void num_attr(hid_t loc, const std::string& obj, const char* name, hid_t mtype, void* v) {
    Handle a = open_attr(loc, obj, name);
    require_one_element(a, obj, name);
    if (H5Aread(a, mtype, v) < 0) fail("attribute " + obj + " " + name + ": read failed" + h5_detail());
  }

  std::string path_;
  Handle file_;
  int64_t version_ = 0;
};

CheckpointInfo read_info(Reader& r, const std::string& path) {
  CheckpointInfo ci;
  ci.path = path;
  ci.format_version = r.version();
  TrainState& s = ci.state;
  s.step = r.i64_attr(r.file(), "/", "step");
  {
    Handle g = r.open_group("/state");
    s.stage = r.i64_attr(g, "/state", "stage");
    s.mode = r.str_attr(g, "/state", "mode");
    s.world = r.i64_attr(g, "/state", "world");
    s.threads = r.i64_attr(g, "/state", "threads");
    s.skipped = r.i64_attr(g, "/state", "skipped");
    s.bad_in_row = r.i64_attr(g, "/state", "bad_in_row");
    s.first_loss = r.f64_attr(g, "/state", "first_loss");
    s.window_loss = r.f64_attr(g, "/state", "window_loss");
    s.window_n = r.i64_attr(g, "/state", "window_n");
    s.val_loss_at_stage2 = r.f64_attr(g, "/state", "val_loss_at_stage2");
    s.elapsed_s = r.f64_attr(g, "/state", "elapsed_s");
    s.metrics_bytes = r.i64_attr(g, "/state", "metrics_bytes");
    // Optional: checkpoints written before they were recorded lack them (left empty).
    for (auto [name, field] : {std::pair{"bitlinear_route", &s.numerics.bitlinear_route},
                               {"gemm_backend", &s.numerics.gemm_backend}, {"gemm_core", &s.numerics.gemm_core}})
      if (r.has_attr(g, name)) *field = r.str_attr(g, "/state", name);
  }
  {
    Handle g = r.open_group("/rng");
    s.training_seed = r.u64_attr(g, "/rng", "training_seed");
    s.data_seed = r.u64_attr(g, "/rng", "data_seed");
  }
  {
    Handle g = r.open_group("/data");
    s.loader_cursor = r.u64_attr(g, "/data", "loader_cursor");
    s.train_tokens = r.i64_attr(g, "/data", "train_tokens");
    s.train_fingerprint = r.u64_attr(g, "/data", "train_fingerprint");
  }
  {
    Handle g = r.open_group("/optim");
    ci.optim_steps = r.i64_attr(g, "/optim", "steps");
  }
  // Counters a resume relies on: out-of-range values mean a damaged (or foreign) state.
  for (const auto& [name, v, min] : {std::tuple<const char*, int64_t, int64_t>{"/ step", s.step, 0}, {"/state world", s.world, 1},
                                     {"/state threads", s.threads, 0}, {"/state skipped", s.skipped, 0},
                                     {"/state bad_in_row", s.bad_in_row, 0}, {"/state window_n", s.window_n, 0},
                                     {"/state metrics_bytes", s.metrics_bytes, 0}, {"/data train_tokens", s.train_tokens, 0},
                                     {"/optim steps", ci.optim_steps, 0}})
    if (v < min) r.fail(std::string("attribute ") + name + " = " + std::to_string(v) + " is out of range (must be >= " + std::to_string(min) + ")");
  if (!r.exists("/config")) r.fail("missing dataset /config (not a complete checkpoint)");
  ci.config_yaml = r.read_bytes("/config");
  if (r.exists("/tokenizer")) ci.tokenizer = r.read_bytes("/tokenizer");
  return ci;
}

// Shortest round-trip text of a value, for mismatch messages.
std::string show(double v) {
  char b[32];
  auto res = std::to_chars(b, b + sizeof b, v);
  return std::string(b, res.ptr);
}
std::string show(float v) { return show(double(v)); }
std::string show(bool v) { return v ? "true" : "false"; }
std::string show(int64_t v) { return std::to_string(v); }
std::string show(uint64_t v) { return std::to_string(v); }
std::string show(const std::string& v) { return v; }
}  // namespace

// ---------------------------------------------------------------------------------------------

uint64_t data_fingerprint(const data::TokenDataset& ds) {
  const int64_t n = ds.size(), k = std::min<int64_t>(n, int64_t(1) << 20);
  if (n == 0) return 0;
  const uint64_t h = hash_bytes(ds.data(), size_t(k) * 4, uint64_t(n));
  return hash_bytes(ds.data() + (n - k), size_t(k) * 4, h);
}

uint64_t checkpoint_hash(const void* p, size_t n, uint64_t seed) { return hash_bytes(p, n, seed); }

Numerics current_numerics(const nn::BitNetLM& model) {
  const quant::BitLinearRoute route = model.integer_gemm() ? quant::bitlinear_route() : quant::BitLinearRoute::Float;
  return {quant::to_string(route), autograd::kernels::gemm_backend(), autograd::kernels::gemm_core()};
}

std::vector<std::string> numerics_mismatches(const Numerics& saved, const Numerics& now) {
  std::vector<std::string> out;
  auto integer = [](const std::string& r) { return r.rfind("integer-", 0) == 0; };
  if (!saved.bitlinear_route.empty() && saved.bitlinear_route != now.bitlinear_route) {
    const std::string what = "the checkpoint was written with BitLinear route " + saved.bitlinear_route +
                             ", this run takes " + now.bitlinear_route;
    if (integer(saved.bitlinear_route) && integer(now.bitlinear_route))
      out.push_back("note: " + what + ": both compute the same exact integer sums, the continuation stays bit-identical");
    else
      out.push_back("warning: " + what + ": the integer and float routes agree only to fp32 rounding, the "
                    "continuation will not be bit-identical");
  }
  auto gemm = [](const Numerics& n) { return n.gemm_backend + " (kernel " + n.gemm_core + ")"; };
  if (!saved.gemm_backend.empty() && (saved.gemm_backend != now.gemm_backend || saved.gemm_core != now.gemm_core))
    out.push_back("warning: the checkpoint was written with fp32 GEMM " + gemm(saved) + ", this run uses " + gemm(now) +
                  ": the rounding differs, the continuation will not be bit-identical");
  return out;
}

void seal_checkpoint_file(const std::string& path, const std::string& name) {
  const std::string what = name + ": cannot write checkpoint: ";
  Fd f{::open(path.c_str(), O_RDWR)};
  if (f.fd < 0) throw CheckpointError(what + "cannot reopen '" + path + "': " + std::strerror(errno));
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
    if (r <= 0) throw CheckpointError(what + "writing the integrity trailer failed: " + std::strerror(r < 0 ? errno : EIO));
    put += size_t(r);
  }
}

void verify_checkpoint_file(const std::string& path) {
  Fd f{::open(path.c_str(), O_RDONLY)};
  if (f.fd < 0) throw CheckpointError(path + ": cannot open: " + std::strerror(errno));
  const off_t size = ::lseek(f.fd, 0, SEEK_END);
  if (size < 0) throw CheckpointError(path + ": cannot seek: " + std::strerror(errno));
  unsigned char t[kTrailerBytes] = {};
  if (size_t(size) < kTrailerBytes || ::pread(f.fd, t, kTrailerBytes, size - off_t(kTrailerBytes)) != ssize_t(kTrailerBytes) ||
      std::memcmp(t, kTrailerMagic, 8) != 0)
    throw CheckpointError(path + ": truncated or corrupted checkpoint (" + std::to_string(size) +
                          " bytes): no integrity trailer at the end (an interrupted write or a partial copy?)");
  uint64_t n = 0, stored = 0;
  std::memcpy(&n, t + 8, 8);
  std::memcpy(&stored, t + 16, 8);
  if (n != uint64_t(size) - kTrailerBytes)
    throw CheckpointError(path + ": truncated or corrupted checkpoint: the integrity trailer covers " + std::to_string(n) +
                          " bytes, the file holds " + std::to_string(uint64_t(size) - kTrailerBytes) + " before it");
  const uint64_t got = hash_fd(f.fd, n, path);
  if (got != stored)
    throw CheckpointError(path + ": corrupted checkpoint: content hash mismatch (stored " + hex(stored) + ", computed " +
                          hex(got) + "): some byte changed after the file was written");
}

bool is_hdf5_file(const std::string& path) {
  static const char sig[8] = {'\x89', 'H', 'D', 'F', '\r', '\n', '\x1a', '\n'};
  std::ifstream f(path, std::ios::binary);
  char b[8] = {};
  return f.read(b, 8) && std::memcmp(b, sig, 8) == 0;
}

void save_checkpoint(const std::string& path, const nn::BitNetLM& model, const optim::AdamW& opt,
                     const TrainState& st, const std::string& config_yaml, const std::string& tokenizer) {
  quiet_hdf5();
  if (opt.sharded()) throw CheckpointError(path + ": cannot write checkpoint: the optimizer state is sharded (ZeRO-1); gather it first");
  check_state_values(path + ": refusing to write a checkpoint: ", model, &opt);
  const std::string tmp = path + ".tmp";
  try {
    Writer w(tmp, path);
    const hid_t root = w.file();
    w.attr(root, "format", std::string(kFormat));
    w.attr(root, "format_version", kCheckpointFormatVersion);
    w.attr(root, "checksum_algorithm", std::string(kHashName));
    w.attr(root, "step", st.step);
    w.attr(root, "mode", st.mode);
    {
      Handle g = w.group("/params");
      for (auto& e : model.params().entries()) w.floats(g, e.name, e.var.data(), e.var.shape());
    }
    {
      Handle g = w.group("/optim");
      w.attr(g, "steps", opt.steps());
      w.attr(g, "beta1", opt.config().beta1);
      w.attr(g, "beta2", opt.config().beta2);
      w.attr(g, "eps", opt.config().eps);
      Handle m = w.group("/optim/exp_avg"), v = w.group("/optim/exp_avg_sq");
      for (auto& e : model.params().entries()) {
        w.floats(m, e.name, opt.exp_avg().data() + e.offset, e.var.shape());
        w.floats(v, e.name, opt.exp_avg_sq().data() + e.offset, e.var.shape());
      }
    }
    {
      Handle g = w.group("/state");
      w.attr(g, "stage", st.stage);
      w.attr(g, "mode", st.mode);
      w.attr(g, "world", st.world);
      w.attr(g, "threads", st.threads);
      w.attr(g, "skipped", st.skipped);
      w.attr(g, "bad_in_row", st.bad_in_row);
      w.attr(g, "first_loss", st.first_loss);
      w.attr(g, "window_loss", st.window_loss);
      w.attr(g, "window_n", st.window_n);
      w.attr(g, "val_loss_at_stage2", st.val_loss_at_stage2);
      w.attr(g, "elapsed_s", st.elapsed_s);
      w.attr(g, "metrics_bytes", st.metrics_bytes);
      const Numerics now = current_numerics(model);
      const Numerics& n = st.numerics;
      w.attr(g, "bitlinear_route", n.bitlinear_route.empty() ? now.bitlinear_route : n.bitlinear_route);
      w.attr(g, "gemm_backend", n.gemm_backend.empty() ? now.gemm_backend : n.gemm_backend);
      w.attr(g, "gemm_core", n.gemm_core.empty() ? now.gemm_core : n.gemm_core);
    }
    {
      Handle g = w.group("/rng");
      w.attr(g, "training_seed", st.training_seed);
      w.attr(g, "data_seed", st.data_seed);
    }
    {
      Handle g = w.group("/data");
      w.attr(g, "loader_cursor", st.loader_cursor);
      w.attr(g, "train_tokens", st.train_tokens);
      w.attr(g, "train_fingerprint", st.train_fingerprint);
    }
    w.bytes(root, "config", config_yaml.empty() ? std::string("{}\n") : config_yaml);
    if (!tokenizer.empty()) w.bytes(root, "tokenizer", tokenizer);
    w.finish(tmp);
  } catch (...) {
    std::error_code ec;
    fs::remove(tmp, ec);
    throw;
  }
  std::error_code ec;
  fs::rename(tmp, path, ec);
  if (ec) {
    fs::remove(tmp, ec);
    throw CheckpointError(path + ": cannot write checkpoint: rename of the temporary file failed: " + ec.message());
  }
  fs::path dir = fs::path(path).parent_path();
  fsync_path(dir.empty() ? std::string(".") : dir.string(), true, path + ": cannot write checkpoint");
}

CheckpointInfo read_checkpoint_info(const std::string& path) {
  Reader r(path);
  return read_info(r, path);
}

namespace {
// "global batch (data.micro_batch x data.grad_accum x ranks): checkpoint 4 x 1 x 2 = 8, this run ...".
void global_batch_mismatch(const Config& a, const Config& b, int64_t wa, int64_t wb, std::vector<std::string>& out) {
  auto geo = [](const Config& c, int64_t w) {
    return std::to_string(c.data.micro_batch) + " x " + std::to_string(c.data.grad_accum) + " x " + std::to_string(w) +
           " = " + std::to_string(c.data.micro_batch * c.data.grad_accum * w);
  };
  if (a.data.micro_batch * a.data.grad_accum * wa != b.data.micro_batch * b.data.grad_accum * wb)
    out.push_back("global batch (data.micro_batch x data.grad_accum x ranks): checkpoint " + geo(a, wa) + ", this run " +
                  geo(b, wb) + " (the sequences per step must stay the same)");
}
}  // namespace

std::vector<std::string> config_mismatches(const Config& a, const Config& b, int64_t world_a, int64_t world_b) {
  std::vector<std::string> out;
  auto cmp = [&](const std::string& key, const auto& x, const auto& y) {
    if (!(x == y)) out.push_back(key + ": checkpoint " + show(x) + ", config " + show(y));
  };
  const auto &ma = a.model, &mb = b.model;
  cmp("model.vocab_size", ma.vocab_size, mb.vocab_size);
  cmp("model.d_model", ma.d_model, mb.d_model);
  cmp("model.n_layers", ma.n_layers, mb.n_layers);
  cmp("model.n_heads", ma.n_heads, mb.n_heads);
  cmp("model.n_kv_heads", ma.kv_heads(), mb.kv_heads());
  cmp("model.ffn_dim", ma.ffn_dim, mb.ffn_dim);
  cmp("model.rope_theta", ma.rope_theta, mb.rope_theta);
  cmp("model.norm_eps", ma.norm_eps, mb.norm_eps);
  cmp("model.tie_embeddings", ma.tie_embeddings, mb.tie_embeddings);
  cmp("model.glu", std::string(ma.glu == nn::Glu::ReLU2 ? "relu2" : "swiglu"),
      std::string(mb.glu == nn::Glu::ReLU2 ? "relu2" : "swiglu"));
  cmp("model.topk_ratio", ma.topk_ratio, mb.topk_ratio);
  cmp("model.fp4_topk", ma.fp4_topk, mb.fp4_topk);
  cmp("model.init_std", ma.init_std, mb.init_std);
  if (a.stages.size() != b.stages.size()) {
    out.push_back("stages: checkpoint has " + std::to_string(a.stages.size()) + ", config " + std::to_string(b.stages.size()));
  } else {
    for (size_t i = 0; i < a.stages.size(); ++i) {
      const std::string k = "stages[" + std::to_string(i) + "]";
      cmp(k + ".mode", nn::to_string(a.stages[i].mode), nn::to_string(b.stages[i].mode));
      cmp(k + ".until", a.stages[i].until, b.stages[i].until);
    }
  }
  cmp("optim.beta1", a.adamw.beta1, b.adamw.beta1);
  cmp("optim.beta2", a.adamw.beta2, b.adamw.beta2);
  cmp("optim.eps", a.adamw.eps, b.adamw.eps);
  cmp("optim.grad_clip", a.grad_clip, b.grad_clip);
  cmp("optim.decay_embeddings", a.adamw.decay_embeddings, b.adamw.decay_embeddings);
  const auto &sa = a.schedule, &sb = b.schedule;
  cmp("schedule.lr", optim::to_string(sa.lr_kind), optim::to_string(sb.lr_kind));
  cmp("schedule.peak1", sa.peak1, sb.peak1);
  cmp("schedule.peak2", sa.peak2, sb.peak2);
  cmp("schedule.warmup", sa.warmup, sb.warmup);
  cmp("schedule.switch", a.lr_switch, b.lr_switch);
  cmp("schedule.end_ratio", sa.end_ratio, sb.end_ratio);
  cmp("schedule.wd", optim::to_string(sa.wd_kind), optim::to_string(sb.wd_kind));
  cmp("schedule.wd1", sa.wd1, sb.wd1);
  cmp("schedule.wd2", sa.wd2, sb.wd2);
  cmp("data.seq_len", a.data.seq_len, b.data.seq_len);
  global_batch_mismatch(a, b, world_a, world_b, out);
  cmp("data.seed", a.data.seed, b.data.seed);
  cmp("training.seed", a.training.seed, b.training.seed);
  return out;
}

CheckpointInfo load_checkpoint(const std::string& path, nn::BitNetLM& model, optim::AdamW* opt, const Config* now,
                               const RunFacts* facts) {
  Reader r(path);
  if (opt && opt->sharded()) r.fail("cannot load into a sharded (ZeRO-1) optimizer state; load the whole state and scatter it");
  CheckpointInfo ci = read_info(r, path);
  std::vector<std::string> problems;
  if (now) {
    Config saved;
    try {
      saved = parse_config(ci.config_yaml, path + " (stored config)");
    } catch (const std::exception& e) {
      r.fail(std::string("the stored config does not parse: ") + e.what());
    }
    problems = config_mismatches(saved, *now, ci.state.world, facts ? facts->world : ci.state.world);
  }
  if (facts) {
    const TrainState& s = ci.state;
    if (s.train_tokens != facts->train_tokens || s.train_fingerprint != facts->train_fingerprint)
      problems.push_back("data.train: checkpoint " + std::to_string(s.train_tokens) + " tokens (fingerprint " +
                         hex(s.train_fingerprint) + "), this run " + std::to_string(facts->train_tokens) +
                         " tokens (fingerprint " + hex(facts->train_fingerprint) + ")");
  }

  // Names, types and shapes of /params (and the moments), checked before anything is copied.
  const auto& entries = model.params().entries();
  std::set<std::string> bad;  // parameters already reported
  auto check_group = [&](const std::string& group, bool moments) {
    if (!r.exists(group)) {
      problems.push_back("missing: " + group + " (the whole group)");
      return;
    }
    const std::vector<std::string> names = r.list(group);
    const std::set<std::string> have(names.begin(), names.end());
    std::set<std::string> known;
    for (auto& e : entries) {
      known.insert(e.name);
      if (moments && bad.count(e.name)) continue;  // reported once, for the parameter
      const std::vector<int64_t> want = e.var.shape().vec();
      const std::string full = group + "/" + e.name;
      if (!have.count(e.name)) {
        problems.push_back("missing: " + full + " " + dims_str(want));
        bad.insert(e.name);
        continue;
      }
      const DsInfo i = r.info(full);
      if (i.cls != H5T_FLOAT || i.esize != 4 || i.dims != want) {
        problems.push_back("mismatch: " + full + " is " + (i.cls == H5T_FLOAT && i.esize == 4 ? "float32 " : "not float32, ") +
                           dims_str(i.dims) + " in the checkpoint, the model has float32 " + dims_str(want));
        bad.insert(e.name);
      }
    }
    for (auto& n : names)
      if (!known.count(n) && !(moments && bad.count("unexpected:" + n))) {
        problems.push_back("unexpected: " + group + "/" + n + " " + dims_str(r.info(group + "/" + n).dims));
        bad.insert("unexpected:" + n);
      }
  };
  check_group("/params", false);
  if (opt) {
    check_group("/optim/exp_avg", true);
    check_group("/optim/exp_avg_sq", true);
  }
  if (!problems.empty()) {
    std::string msg = path + ": cannot load into this run: " + std::to_string(problems.size()) + " problem(s):";
    for (auto& p : problems) msg += "\n  " + p;
    throw CheckpointError(msg);
  }

  for (auto& e : entries) r.read("/params/" + e.name, H5T_NATIVE_FLOAT, e.var.data(), size_t(e.numel) * 4);
  if (opt) {
    for (auto& e : entries) {
      r.read("/optim/exp_avg/" + e.name, H5T_NATIVE_FLOAT, opt->exp_avg().data() + e.offset, size_t(e.numel) * 4);
      r.read("/optim/exp_avg_sq/" + e.name, H5T_NATIVE_FLOAT, opt->exp_avg_sq().data() + e.offset, size_t(e.numel) * 4);
    }
    opt->set_steps(ci.optim_steps);
  }
  check_state_values(path + ": ", model, opt);
  return ci;
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
  if (digits.empty() || digits.size() > 18 || !std::all_of(digits.begin(), digits.end(), [](char c) { return c >= '0' && c <= '9'; }))
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
  if (!fs::is_directory(p, ec)) throw CheckpointError(p + ": no such checkpoint file or run directory");
  const fs::path sub = fs::path(p) / "checkpoints";
  const std::string dir = fs::is_directory(sub, ec) ? sub.string() : p;
  const auto list = list_checkpoints(dir);
  if (list.empty())
    throw CheckpointError(p + ": no complete checkpoint in " + dir + " (looked for step-*.h5; *.tmp files are unfinished writes)");
  return list.back().second;
}

void rotate_checkpoints(const std::string& dir, int64_t keep) {
  auto list = list_checkpoints(dir);
  std::error_code ec;
  for (size_t i = 0; i + size_t(std::max<int64_t>(keep, 1)) < list.size(); ++i) fs::remove(list[i].second, ec);
  for (auto& de : fs::directory_iterator(dir, ec))
    if (step_of(de.path().filename().string(), true) >= 0) fs::remove(de.path(), ec);
}

TrainedModel load_trained_checkpoint(const std::string& path) {
  const CheckpointInfo info = read_checkpoint_info(path);
  Config cfg;
  try {
    cfg = parse_config(info.config_yaml, path + " (stored config)");
  } catch (const std::exception& e) {
    throw CheckpointError(path + ": the stored config does not parse: " + e.what());
  }
  TrainedModel tm;
  tm.model = std::make_unique<nn::BitNetLM>(cfg.model, 0);
  load_checkpoint(path, *tm.model, nullptr);
  try {
    if (!info.state.mode.empty()) tm.model->set_mode(nn::parse_mode(info.state.mode));
  } catch (const std::exception& e) {
    throw CheckpointError(path + ": /state mode: " + e.what());
  }
  tm.config_yaml = info.config_yaml;
  tm.tokenizer_proto = info.tokenizer;
  tm.step = info.state.step;
  return tm;
}

}  // namespace trainers
