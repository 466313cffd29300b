// Reading HDF5 training checkpoints: the verified reader, the stored state, and loading into a run
// after every compatibility check (writing: checkpoint_write.cpp; files on disk:
// checkpoint_files.cpp).
#include "trainers/formats/checkpoint.h"

#include <hdf5.h>

#include <cstring>
#include <filesystem>
#include <set>
#include <tuple>

#include "trainers/formats/checkpoint_common.h"

namespace trainers::formats {
namespace fs = std::filesystem;
using config::Config;
using config::parse_config;
using namespace detail;

namespace {
std::string dims_str(const std::vector<int64_t>& d) {
  std::string s = "[";
  for (size_t i = 0; i < d.size(); ++i) s += (i ? ", " : "") + std::to_string(d[i]);
  return s + "]";
}

struct DsInfo {
  H5T_class_t cls = H5T_NO_CLASS;
  size_t esize = 0;
  std::vector<int64_t> dims;
};

// One checkpoint file open for reading: verified before HDF5 opens it; errors name the file.
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
    if (!is_hdf5_file(path))
      fail("not an HDF5 file (no HDF5 signature at the start): not a bitnet checkpoint");
    verify_checkpoint_file(path);  // before HDF5 parses anything
    Handle fapl(H5Pcreate(H5P_FILE_ACCESS), H5Pclose);
    if (fapl < 0) fail("cannot create a property list" + h5_detail());
    lenient_locking(fapl);
    file_ = Handle(H5Fopen(path.c_str(), H5F_ACC_RDONLY, fapl), H5Fclose);
    if (file_ < 0)
      fail("cannot open: truncated or corrupted HDF5 file (" + std::to_string(size) + " bytes)" +
           h5_detail());
    if (!has_attr(file_, "format")) fail("not a bitnet checkpoint (no 'format' attribute on /)");
    const std::string fmt = str_attr(file_, "/", "format");
    if (fmt != kFormat)
      fail("not a bitnet checkpoint (format '" + fmt + "', expected '" + kFormat + "')");
    const int64_t v = i64_attr(file_, "/", "format_version");
    if (v != kCheckpointFormatVersion)
      fail("checkpoint format version " + std::to_string(v) +
           " is not supported (this build reads version " +
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
    if (H5Gget_info(g, &gi) < 0)
      fail("cannot list group " + group + ": corrupted metadata" + h5_detail());
    std::vector<std::string> names;
    for (hsize_t i = 0; i < gi.nlinks; ++i) {
      const ssize_t n =
          H5Lget_name_by_idx(g, ".", H5_INDEX_NAME, H5_ITER_INC, i, nullptr, 0, H5P_DEFAULT);
      if (n < 0) fail("cannot list group " + group + ": corrupted metadata" + h5_detail());
      std::string s(size_t(n) + 1, '\0');
      if (H5Lget_name_by_idx(g, ".", H5_INDEX_NAME, H5_ITER_INC, i, s.data(), s.size(),
                             H5P_DEFAULT) < 0)
        fail("cannot list group " + group + ": corrupted metadata" + h5_detail());
      s.resize(size_t(n));
      names.push_back(s);
    }
    return names;
  }

  DsInfo info(const std::string& name) {
    Handle d = open_ds(name);
    Handle t(H5Dget_type(d), H5Tclose), s(H5Dget_space(d), H5Sclose);
    if (t < 0 || s < 0)
      fail("dataset " + name + ": cannot read its type/shape: corrupted metadata" + h5_detail());
    DsInfo r;
    r.cls = H5Tget_class(t);
    r.esize = H5Tget_size(t);
    const int rank = H5Sget_simple_extent_ndims(s);
    if (rank < 0) fail("dataset " + name + ": cannot read its shape" + h5_detail());
    std::vector<hsize_t> d2(static_cast<size_t>(rank));
    if (rank > 0 && H5Sget_simple_extent_dims(s, d2.data(), nullptr) < 0)
      fail("dataset " + name + ": cannot read its shape" + h5_detail());
    r.dims.assign(d2.begin(), d2.end());
    return r;
  }

  // Reads a whole dataset (HDF5 verifies each chunk's Fletcher32) and checks its checksum
  // attribute.
  void read(const std::string& name, hid_t mtype, void* dst, size_t nbytes) {
    Handle d = open_ds(name);
    {  // H5S_ALL reads every stored element: the count must match the destination exactly.
      Handle s(H5Dget_space(d), H5Sclose);
      const hssize_t n = s < 0 ? -1 : H5Sget_simple_extent_npoints(s);
      const size_t want = nbytes / H5Tget_size(mtype);
      if (n < 0 || size_t(n) != want)
        fail("dataset " + name + ": holds " + std::to_string(n) + " elements, expected " +
             std::to_string(want));
    }
    if (H5Dread(d, mtype, H5S_ALL, H5S_ALL, H5P_DEFAULT, dst) < 0)
      fail("dataset " + name + ": read failed, the data is corrupted" + h5_detail());
    if (!has_attr(d, "checksum")) fail("dataset " + name + ": no checksum attribute");
    uint64_t stored = 0;
    Handle a(H5Aopen(d, "checksum", H5P_DEFAULT), H5Aclose);
    if (a < 0)
      fail("dataset " + name + ": cannot open its checksum: corrupted metadata" + h5_detail());
    require_one_element(a, name, "checksum");
    if (H5Aread(a, H5T_NATIVE_UINT64, &stored) < 0)
      fail("dataset " + name + ": cannot read its checksum: corrupted metadata" + h5_detail());
    const uint64_t got = hash_bytes(dst, nbytes);
    if (got != stored)
      fail("dataset " + name + ": checksum mismatch (stored " + hex(stored) + ", computed " +
           hex(got) + "): the data is corrupted");
  }
  std::string read_bytes(const std::string& name) {
    const DsInfo i = info(name);
    if (i.cls != H5T_INTEGER || i.esize != 1 || i.dims.size() != 1)
      fail("dataset " + name + ": expected a 1-D array of bytes");
    if (i.dims[0] > (int64_t(1) << 30))
      fail("dataset " + name + ": " + std::to_string(i.dims[0]) +
           " bytes, more than the 1 GiB a config or tokenizer can take");
    std::string s(size_t(i.dims[0]), '\0');
    read(name, H5T_NATIVE_UINT8, s.data(), s.size());
    return s;
  }

  bool has_attr(hid_t obj, const char* name) {
    const htri_t r = H5Aexists(obj, name);
    if (r < 0)
      fail(std::string("cannot look up attribute ") + name + ": corrupted metadata" + h5_detail());
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
    if (H5Aread(a, t, s.data()) < 0)
      fail("attribute " + obj + " " + name + ": read failed" + h5_detail());
    s.resize(std::strlen(s.c_str()));
    return s;
  }
  Handle open_group(const std::string& name) {
    if (!exists(name)) fail("missing group " + name + " (not a complete checkpoint)");
    Handle g(H5Gopen2(file_, name.c_str(), H5P_DEFAULT), H5Gclose);
    if (g < 0) fail("cannot open group " + name + ": corrupted metadata" + h5_detail());
    return g;
  }

  [[noreturn]] void fail(const std::string& what) const {
    throw CheckpointError(path_ + ": " + what);
  }

 private:
  Handle open_ds(const std::string& name) {
    Handle d(H5Dopen2(file_, name.c_str(), H5P_DEFAULT), H5Dclose);
    if (d < 0) fail("cannot open dataset " + name + ": corrupted metadata" + h5_detail());
    return d;
  }
  Handle open_attr(hid_t loc, const std::string& obj, const char* name) {
    if (!has_attr(loc, name))
      fail("missing attribute '" + std::string(name) + "' on " + obj +
           " (not a complete checkpoint)");
    Handle a(H5Aopen(loc, name, H5P_DEFAULT), H5Aclose);
    if (a < 0)
      fail("attribute " + obj + " " + name + ": cannot open, corrupted metadata" + h5_detail());
    return a;
  }
  // H5Aread writes every element: an attribute rewritten as an array would overrun the scalar.
  void require_one_element(hid_t a, const std::string& obj, const char* name) {
    Handle s(H5Aget_space(a), H5Sclose);
    const hssize_t n = s < 0 ? -1 : H5Sget_simple_extent_npoints(s);
    if (n != 1)
      fail("attribute " + obj + " " + name + ": holds " + std::to_string(n) +
           " elements, expected one");
  }
  void num_attr(hid_t loc, const std::string& obj, const char* name, hid_t mtype, void* v) {
    Handle a = open_attr(loc, obj, name);
    require_one_element(a, obj, name);
    if (H5Aread(a, mtype, v) < 0)
      fail("attribute " + obj + " " + name + ": read failed" + h5_detail());
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
                               {"gemm_backend", &s.numerics.gemm_backend},
                               {"gemm_core", &s.numerics.gemm_core}})
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
  for (const auto& [name, v, min] : {std::tuple<const char*, int64_t, int64_t>{"/ step", s.step, 0},
                                     {"/state world", s.world, 1},
                                     {"/state threads", s.threads, 0},
                                     {"/state skipped", s.skipped, 0},
                                     {"/state bad_in_row", s.bad_in_row, 0},
                                     {"/state window_n", s.window_n, 0},
                                     {"/state metrics_bytes", s.metrics_bytes, 0},
                                     {"/data train_tokens", s.train_tokens, 0},
                                     {"/optim steps", ci.optim_steps, 0}})
    if (v < min)
      r.fail(std::string("attribute ") + name + " = " + std::to_string(v) +
             " is out of range (must be >= " + std::to_string(min) + ")");
  if (!r.exists("/config")) r.fail("missing dataset /config (not a complete checkpoint)");
  ci.config_yaml = r.read_bytes("/config");
  if (r.exists("/tokenizer")) ci.tokenizer = r.read_bytes("/tokenizer");
  return ci;
}
}  // namespace

CheckpointInfo read_checkpoint_info(const std::string& path) {
  Reader r(path);
  return read_info(r, path);
}

CheckpointInfo load_checkpoint(const std::string& path, nn::BitNetLM& model, optim::AdamW* opt,
                               const Config* now, const RunFacts* facts) {
  Reader r(path);
  if (opt && opt->sharded())
    r.fail(
        "cannot load into a sharded (ZeRO-1) optimizer state; load the whole state and scatter it");
  CheckpointInfo ci = read_info(r, path);
  std::vector<std::string> problems;
  if (now) {
    Config saved;
    try {
      saved = parse_config(ci.config_yaml, path + " (stored config)");
    } catch (const std::exception& e) {
      r.fail(std::string("the stored config does not parse: ") + e.what());
    }
    problems = config::config_mismatches(saved, *now, ci.state.world,
                                         facts ? facts->world : ci.state.world);
  }
  if (facts) {
    const TrainState& s = ci.state;
    if (s.train_tokens != facts->train_tokens || s.train_fingerprint != facts->train_fingerprint)
      problems.push_back("data.train: checkpoint " + std::to_string(s.train_tokens) +
                         " tokens (fingerprint " + hex(s.train_fingerprint) + "), this run " +
                         std::to_string(facts->train_tokens) + " tokens (fingerprint " +
                         hex(facts->train_fingerprint) + ")");
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
        problems.push_back("mismatch: " + full + " is " +
                           (i.cls == H5T_FLOAT && i.esize == 4 ? "float32 " : "not float32, ") +
                           dims_str(i.dims) + " in the checkpoint, the model has float32 " +
                           dims_str(want));
        bad.insert(e.name);
      }
    }
    for (auto& n : names)
      if (!known.count(n) && !(moments && bad.count("unexpected:" + n))) {
        problems.push_back("unexpected: " + group + "/" + n + " " +
                           dims_str(r.info(group + "/" + n).dims));
        bad.insert("unexpected:" + n);
      }
  };
  check_group("/params", false);
  if (opt) {
    check_group("/optim/exp_avg", true);
    check_group("/optim/exp_avg_sq", true);
  }
  if (!problems.empty()) {
    std::string msg =
        path + ": cannot load into this run: " + std::to_string(problems.size()) + " problem(s):";
    for (auto& p : problems) msg += "\n  " + p;
    throw CheckpointError(msg);
  }

  for (auto& e : entries)
    r.read("/params/" + e.name, H5T_NATIVE_FLOAT, e.var.data(), size_t(e.numel) * 4);
  if (opt) {
    for (auto& e : entries) {
      r.read("/optim/exp_avg/" + e.name, H5T_NATIVE_FLOAT, opt->exp_avg().data() + e.offset,
             size_t(e.numel) * 4);
      r.read("/optim/exp_avg_sq/" + e.name, H5T_NATIVE_FLOAT, opt->exp_avg_sq().data() + e.offset,
             size_t(e.numel) * 4);
    }
    opt->set_steps(ci.optim_steps);
  }
  check_state_values(path + ": ", model, opt);
  return ci;
}

}  // namespace trainers::formats
