// libFuzzer target: the checkpoint loader. Raw bytes must be refused by the integrity trailer; the
// structure-aware mode edits a valid checkpoint through HDF5 (objects and attributes removed or
// retyped, datasets reshaped, values made non-finite, the stored config replaced), re-seals it and
// loads it: every outcome must be a success or an error naming the file, never a crash.
#include <hdf5.h>
#include <unistd.h>

#include <fuzzer/FuzzedDataProvider.h>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <memory>
#include <string>
#include <vector>

#include "trainers/config/config.h"
#include "trainers/formats/checkpoint.h"
#include "trainers/formats/trained_model.h"

namespace {
constexpr const char* kYaml =
    "model: {vocab_size: 32, d_model: 8, n_layers: 1, n_heads: 2, ffn_dim: 16}\n"
    "stages: [{mode: w158a8, until: 0.5}, {mode: a4.8}]\n"
    "schedule: {warmup: 1}\n"
    "data: {seq_len: 4, micro_batch: 1}\n"
    "training: {steps: 10}\n";

struct Fixture {
  std::string dir, path, tmpl, tmpl_bytes;
  trainers::config::Config cfg;
  std::unique_ptr<nn::BitNetLM> model;
  std::unique_ptr<optim::AdamW> opt;
  std::vector<std::string> groups, datasets;  // object paths of the template
  Fixture() {
    dir = (access("/dev/shm", W_OK) == 0 ? std::string("/dev/shm") : std::string("/tmp"));
    path = dir + "/bitnet_fuzz_ckpt_" + std::to_string(getpid()) + ".h5";
    tmpl = path + ".template";
    cfg = trainers::config::parse_config(kYaml, "fuzz.yaml");
    model = std::make_unique<nn::BitNetLM>(cfg.model, 1);
    opt = std::make_unique<optim::AdamW>(model->params(), cfg.adamw);
    trainers::formats::TrainState st;
    st.step = 3, st.mode = "w158a8", st.world = 1, st.threads = 1;
    trainers::formats::save_checkpoint(tmpl, *model, *opt, st, cfg.resolved_yaml,
                                       std::string("tokenizer bytes"));
    std::ifstream in(tmpl, std::ios::binary);
    tmpl_bytes.assign(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
    std::remove(tmpl.c_str());  // (libFuzzer may end the process without running destructors)
    groups = {"/",      "/params", "/optim", "/optim/exp_avg", "/optim/exp_avg_sq",
              "/state", "/rng",    "/data"};
    for (auto& e : model->params().entries())
      for (const char* g : {"/params/", "/optim/exp_avg/", "/optim/exp_avg_sq/"})
        datasets.push_back(g + e.name);
    datasets.push_back("/config");
    datasets.push_back("/tokenizer");
  }
};
Fixture& fx() {
  static Fixture f;
  return f;
}

const char* kAttrs[] = {"format",
                        "format_version",
                        "checksum_algorithm",
                        "step",
                        "mode",
                        "stage",
                        "world",
                        "threads",
                        "skipped",
                        "bad_in_row",
                        "first_loss",
                        "window_loss",
                        "window_n",
                        "val_loss_at_stage2",
                        "elapsed_s",
                        "metrics_bytes",
                        "training_seed",
                        "data_seed",
                        "loader_cursor",
                        "train_tokens",
                        "train_fingerprint",
                        "steps",
                        "beta1",
                        "beta2",
                        "eps",
                        "checksum"};

void set_attr(hid_t file, const std::string& obj, const char* name, FuzzedDataProvider& p) {
  H5Adelete_by_name(file, obj.c_str(), name, H5P_DEFAULT);
  hid_t type = -1;
  std::vector<unsigned char> buf;
  const int kind = p.ConsumeIntegralInRange(0, 4);
  hsize_t n = kind == 4 ? hsize_t(p.ConsumeIntegralInRange(0, 3)) : 1;
  if (kind == 0)
    type = H5Tcopy(H5T_NATIVE_INT64);
  else if (kind == 1)
    type = H5Tcopy(H5T_NATIVE_UINT64);
  else if (kind == 2)
    type = H5Tcopy(H5T_NATIVE_DOUBLE);
  else if (kind == 4)
    type = H5Tcopy(H5T_NATIVE_INT32);
  if (kind == 3) {
    const std::string s = p.ConsumeRandomLengthString(64);
    type = H5Tcopy(H5T_C_S1);
    H5Tset_size(type, s.size() + 1);
    buf.assign(s.begin(), s.end());
    buf.push_back(0);
  } else {
    buf = p.ConsumeBytes<unsigned char>(size_t(H5Tget_size(type) * n));
    buf.resize(size_t(H5Tget_size(type) * n), 0);
  }
  hid_t space = kind == 4 ? H5Screate_simple(1, &n, nullptr) : H5Screate(H5S_SCALAR);
  hid_t a = H5Acreate_by_name(file, obj.c_str(), name, type, space, H5P_DEFAULT, H5P_DEFAULT,
                              H5P_DEFAULT);
  if (a >= 0) H5Awrite(a, type, buf.data()), H5Aclose(a);
  H5Sclose(space);
  H5Tclose(type);
}

void put_checksum(hid_t d, uint64_t v) {
  H5Adelete(d, "checksum");
  hid_t space = H5Screate(H5S_SCALAR);
  hid_t a = H5Acreate2(d, "checksum", H5T_STD_U64LE, space, H5P_DEFAULT, H5P_DEFAULT);
  if (a >= 0) H5Awrite(a, H5T_NATIVE_UINT64, &v), H5Aclose(a);
  H5Sclose(space);
}

// Replaces a dataset by one of another type/shape (content from the input, checksum right or not).
void replace_dataset(hid_t file, const std::string& name, FuzzedDataProvider& p) {
  H5Ldelete(file, name.c_str(), H5P_DEFAULT);
  const hid_t types[] = {H5T_NATIVE_FLOAT, H5T_NATIVE_DOUBLE, H5T_NATIVE_UINT8, H5T_NATIVE_INT32};
  const hid_t type = types[p.ConsumeIntegralInRange(0, 3)];
  const int rank = p.ConsumeIntegralInRange(0, 3);
  std::vector<hsize_t> dims(static_cast<size_t>(rank));
  size_t total = 1;
  for (auto& d : dims) d = hsize_t(p.ConsumeIntegralInRange(0, 40)), total *= size_t(d);
  hid_t space = rank == 0 ? H5Screate(H5S_SCALAR) : H5Screate_simple(rank, dims.data(), nullptr);
  hid_t d = H5Dcreate2(file, name.c_str(), type, space, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
  if (d >= 0) {
    std::vector<unsigned char> buf = p.ConsumeBytes<unsigned char>(total * H5Tget_size(type));
    buf.resize(total * H5Tget_size(type), 0);
    if (total) H5Dwrite(d, type, H5S_ALL, H5S_ALL, H5P_DEFAULT, buf.data());
    put_checksum(d, p.ConsumeBool() ? trainers::formats::checkpoint_hash(buf.data(), buf.size())
                                    : p.ConsumeIntegral<uint64_t>());
    H5Dclose(d);
  }
  H5Sclose(space);
}

// Overwrites one float of a float dataset (same shape) and fixes its checksum.
void poke_value(hid_t file, const std::string& name, FuzzedDataProvider& p) {
  hid_t d = H5Dopen2(file, name.c_str(), H5P_DEFAULT);
  if (d < 0) return;
  hid_t s = H5Dget_space(d);
  const hssize_t n = H5Sget_simple_extent_npoints(s);
  H5Sclose(s);
  if (n > 0 && n < (1 << 20)) {
    std::vector<float> v(static_cast<size_t>(n));
    if (H5Dread(d, H5T_NATIVE_FLOAT, H5S_ALL, H5S_ALL, H5P_DEFAULT, v.data()) >= 0) {
      const float special[] = {NAN, INFINITY, -INFINITY, -1.0f, 3e38f, 0.0f};
      v[p.ConsumeIntegralInRange<size_t>(0, v.size() - 1)] =
          special[p.ConsumeIntegralInRange(0, 5)];
      H5Dwrite(d, H5T_NATIVE_FLOAT, H5S_ALL, H5S_ALL, H5P_DEFAULT, v.data());
      put_checksum(d, trainers::formats::checkpoint_hash(v.data(), v.size() * 4));
    }
  }
  H5Dclose(d);
}

void check_error(const std::exception& e, const std::string& path) {
  if (std::string(e.what()).find(path) == std::string::npos) {
    std::fprintf(stderr, "error does not name the file: %s\n", e.what());
    std::abort();
  }
}
}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  H5Eset_auto2(H5E_DEFAULT, nullptr, nullptr);
  fx();
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  Fixture& f = fx();
  FuzzedDataProvider p(data, size);
  if (p.ConsumeIntegralInRange(0, 3) == 0) {  // raw bytes
    const std::vector<unsigned char> b = p.ConsumeRemainingBytes<unsigned char>();
    std::ofstream(f.path, std::ios::binary | std::ios::trunc)
        .write(reinterpret_cast<const char*>(b.data()), std::streamsize(b.size()));
  } else {  // structured edits of a valid checkpoint
    std::string bytes = f.tmpl_bytes;
    bytes.resize(bytes.size() - 24);  // the HDF5 part; re-sealed below
    std::ofstream(f.path, std::ios::binary | std::ios::trunc)
        .write(bytes.data(), std::streamsize(bytes.size()));
    hid_t file = H5Fopen(f.path.c_str(), H5F_ACC_RDWR, H5P_DEFAULT);
    if (file < 0) std::abort();
    for (int k = p.ConsumeIntegralInRange(1, 4); k > 0 && p.remaining_bytes() > 0; --k) {
      const std::string& ds =
          f.datasets[p.ConsumeIntegralInRange<size_t>(0, f.datasets.size() - 1)];
      const std::string& grp = f.groups[p.ConsumeIntegralInRange<size_t>(0, f.groups.size() - 1)];
      const char* attr = kAttrs[p.ConsumeIntegralInRange<size_t>(0, std::size(kAttrs) - 1)];
      switch (p.ConsumeIntegralInRange(0, 6)) {
        case 0:
          H5Ldelete(file, (p.ConsumeBool() ? ds : grp).c_str(), H5P_DEFAULT);
          break;
        case 1:
          H5Adelete_by_name(file, (p.ConsumeBool() ? ds : grp).c_str(), attr, H5P_DEFAULT);
          break;
        case 2:
          set_attr(file, p.ConsumeBool() ? ds : grp, attr, p);
          break;
        case 3:
          replace_dataset(file, ds, p);
          break;
        case 4:
          poke_value(file, ds, p);
          break;
        case 5: {  // another stored config, checksummed
          const std::string yaml = p.ConsumeRandomLengthString(2048);
          H5Ldelete(file, "/config", H5P_DEFAULT);
          hsize_t n = yaml.size();
          hid_t space = H5Screate_simple(1, &n, nullptr);
          hid_t d = H5Dcreate2(file, "/config", H5T_STD_U8LE, space, H5P_DEFAULT, H5P_DEFAULT,
                               H5P_DEFAULT);
          if (d >= 0) {
            if (n) H5Dwrite(d, H5T_NATIVE_UINT8, H5S_ALL, H5S_ALL, H5P_DEFAULT, yaml.data());
            put_checksum(d, trainers::formats::checkpoint_hash(yaml.data(), yaml.size()));
            H5Dclose(d);
          }
          H5Sclose(space);
          break;
        }
        default:
          H5Ldelete(file, ds.c_str(), H5P_DEFAULT);
          break;
      }
    }
    if (H5Fclose(file) < 0) std::abort();
    trainers::formats::seal_checkpoint_file(f.path, f.path);
  }
  try {
    (void)trainers::formats::read_checkpoint_info(f.path);
  } catch (const std::exception& e) {
    check_error(e, f.path);
  }
  try {
    trainers::formats::RunFacts facts;
    (void)trainers::formats::load_checkpoint(f.path, *f.model, f.opt.get(), &f.cfg, &facts);
  } catch (const std::exception& e) {
    check_error(e, f.path);
  }
  try {
    (void)trainers::formats::load_trained_checkpoint(f.path);
  } catch (const std::exception& e) {
    check_error(e, f.path);
  }
  std::remove(f.path.c_str());
  return 0;
}
