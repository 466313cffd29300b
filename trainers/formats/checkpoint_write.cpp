// Writing HDF5 training checkpoints: every dataset chunked, Fletcher32-protected and checksummed,
// the file sealed with the integrity trailer, flushed, fsynced and renamed into place.
#include <fcntl.h>
#include <hdf5.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <thread>

#include "trainers/formats/checkpoint.h"
#include "trainers/formats/checkpoint_common.h"

namespace trainers::formats {
namespace fs = std::filesystem;
using namespace detail;

namespace {
constexpr const char* kHashName = "bitnet-hash64-v1";
constexpr size_t kChunkBytes = size_t(4) << 20;  // target chunk size (one Fletcher32 sum each)

void fsync_path(const std::string& p, bool dir, const std::string& what) {
  const int fd = ::open(p.c_str(), O_RDONLY | (dir ? O_DIRECTORY : 0));
  if (fd < 0 || ::fsync(fd) != 0) {
    const int err = errno;
    if (fd >= 0) ::close(fd);
    throw CheckpointError(what + ": fsync of '" + p + "' failed: " + std::strerror(err));
  }
  ::close(fd);
}

// Test hook (tests/trainers/train/test_faults.cpp): BITNET_TEST_CHECKPOINT_DELAY_MS=N sleeps N ms
// after each dataset written, so that a kill lands inside a checkpoint write often enough to be
// tested.
void test_write_delay() {
  static const long ms = [] {
    const char* e = std::getenv("BITNET_TEST_CHECKPOINT_DELAY_MS");
    return e ? std::atol(e) : 0L;
  }();
  if (ms > 0) std::this_thread::sleep_for(std::chrono::milliseconds(ms));
}

// One checkpoint file being written (to the .tmp path; errors name the final path).
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

  void attr(hid_t obj, const char* name, int64_t v) {
    put_attr(obj, name, H5T_STD_I64LE, H5T_NATIVE_INT64, &v);
  }
  void attr(hid_t obj, const char* name, uint64_t v) {
    put_attr(obj, name, H5T_STD_U64LE, H5T_NATIVE_UINT64, &v);
  }
  void attr(hid_t obj, const char* name, double v) {
    put_attr(obj, name, H5T_IEEE_F64LE, H5T_NATIVE_DOUBLE, &v);
  }
  void attr(hid_t obj, const char* name, const std::string& v) {
    Handle t(H5Tcopy(H5T_C_S1), H5Tclose);
    ok(t, "string type");
    ok(H5Tset_size(t, v.size() + 1), "string type");
    ok(H5Tset_strpad(t, H5T_STR_NULLTERM), "string type");
    put_attr(obj, name, t, t, v.c_str());
  }

  // A chunked, Fletcher32-protected dataset with a "checksum" attribute (hash_bytes of the data).
  void dataset(hid_t loc, const std::string& name, const void* data,
               const std::vector<int64_t>& shape, hid_t ftype, hid_t mtype, size_t esize) {
    std::vector<hsize_t> dims(shape.begin(), shape.end()), chunk = dims;
    size_t row = esize, total = esize;
    for (size_t i = 1; i < dims.size(); ++i) row *= size_t(dims[i]);
    for (hsize_t d : dims) total *= size_t(d);
    if (dims.empty() || total == 0)
      fail("dataset " + name + ": empty or scalar data cannot be stored");
    if (row >= (size_t(1) << 32))
      fail("dataset " + name + ": a row of " + std::to_string(row) +
           " bytes exceeds HDF5's 4 GiB chunk limit");
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
  [[noreturn]] void fail(const std::string& what) {
    throw CheckpointError(path_ + ": cannot write checkpoint: " + what);
  }

  static constexpr unsigned kMaxCompact = 65535;  // links / attributes per object, all compact
  std::string path_;
  Handle gcpl_, file_;
};

}  // namespace

void save_checkpoint(const std::string& path, const nn::BitNetLM& model, const optim::AdamW& opt,
                     const TrainState& st, const std::string& config_yaml,
                     const std::string& tokenizer) {
  quiet_hdf5();
  if (opt.sharded())
    throw CheckpointError(
        path +
        ": cannot write checkpoint: the optimizer state is sharded (ZeRO-1); gather it first");
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
      w.attr(g, "bitlinear_route",
             n.bitlinear_route.empty() ? now.bitlinear_route : n.bitlinear_route);
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
    throw CheckpointError(
        path + ": cannot write checkpoint: rename of the temporary file failed: " + ec.message());
  }
  fs::path dir = fs::path(path).parent_path();
  fsync_path(dir.empty() ? std::string(".") : dir.string(), true,
             path + ": cannot write checkpoint");
}

}  // namespace trainers::formats
