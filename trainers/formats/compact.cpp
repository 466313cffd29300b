// Compact inference checkpoint writer/reader (format in compact.h) and the generic model loader.
#include "trainers/formats/compact.h"

#include <bit>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>

#include "autograd/error.h"
#include "nn/names.h"
#include "trainers/config/config.h"

namespace trainers::formats {
using config::Config;
using config::parse_config;
namespace {

constexpr char kMagic[8] = {'B', 'N', 'C', 'O', 'M', 'P', 'C', 'T'};
constexpr uint32_t kVersion = 1;
constexpr uint32_t kFlagF16 = 1;
constexpr size_t kHeader = 32;
enum Kind : uint8_t { kBytes = 0, kF32 = 1, kF16 = 2, kTernary2 = 3 };

// ---- fp16 (IEEE binary16), round to nearest even
// -------------------------------------------------
uint16_t f32_to_f16(float f) {
  const uint32_t x = std::bit_cast<uint32_t>(f);
  const uint32_t sign = (x >> 16) & 0x8000u;
  const uint32_t ax = x & 0x7fffffffu;
  if (ax >= 0x7f800000u)
    return uint16_t(sign | 0x7c00u | (ax > 0x7f800000u ? 0x200u : 0u));  // inf/nan
  if (ax >= 0x477ff000u) return uint16_t(sign | 0x7c00u);  // rounds to >= 65520: overflow to inf
  if (ax < 0x38800000u) {  // subnormal half (|f| < 2^-14): value = m * 2^-24
    const float v = std::bit_cast<float>(ax) * 16777216.0f;  // exact scaling by 2^24
    return uint16_t(sign | uint32_t(std::nearbyint(v)));
  }
  const uint32_t mant = ax & 0x7fffffu;
  uint32_t h = ((ax >> 23) - 112) << 10 | (mant >> 13);
  const uint32_t rest = mant & 0x1fffu;
  if (rest > 0x1000u || (rest == 0x1000u && (h & 1u))) ++h;
  return uint16_t(sign | h);
}
float f16_to_f32(uint16_t h) {
  const uint32_t sign = uint32_t(h & 0x8000u) << 16, e = (h >> 10) & 0x1fu, m = h & 0x3ffu;
  if (e == 0) {
    const float v = float(m) * (1.0f / 16777216.0f);
    return sign ? -v : v;
  }
  if (e == 31) return std::bit_cast<float>(sign | 0x7f800000u | (m << 13));
  return std::bit_cast<float>(sign | ((e + 112) << 23) | (m << 13));
}

// ---- writer
// --------------------------------------------------------------------------------------
struct Writer {
  std::string buf;
  uint32_t count = 0;
  template <class T>
  void put(const T& v) {
    buf.append(reinterpret_cast<const char*>(&v), sizeof(T));
  }
  // Returns the number of data bytes written.
  size_t record(const std::string& name, Kind kind, const std::vector<int64_t>& dims,
                const void* data, size_t nbytes) {
    BN_CHECK(name.size() < 65536 && dims.size() < 256, "save_compact", "bad record ", name);
    put(uint16_t(name.size()));
    buf += name;
    put(uint8_t(kind));
    put(uint8_t(dims.size()));
    for (int64_t d : dims) put(uint64_t(d));
    put(uint64_t(nbytes));
    buf.append(static_cast<const char*>(data), nbytes);
    ++count;
    return nbytes;
  }
  void text(const std::string& name, const std::string& s) {
    record(name, kBytes, {int64_t(s.size())}, s.data(), s.size());
  }
  void f32(const std::string& name, const std::vector<float>& v, std::vector<int64_t> dims) {
    record(name, kF32, dims, v.data(), v.size() * 4);
  }
  void f16(const std::string& name, const std::vector<float>& v, std::vector<int64_t> dims) {
    std::vector<uint16_t> h(v.size());
    for (size_t i = 0; i < v.size(); ++i) h[i] = f32_to_f16(v[i]);
    record(name, kF16, dims, h.data(), h.size() * 2);
  }
  size_t ternary(const std::string& name, const nn::TernaryMatrix& m) {
    const int64_t n = m.rows * m.cols;
    std::vector<uint8_t> d(4 + size_t((n + 3) / 4), 0);
    std::memcpy(d.data(), &m.scale, 4);
    for (int64_t i = 0; i < n; ++i) {
      const int c = m.codes[size_t(i)];
      BN_CHECK(c >= -1 && c <= 1, "save_compact", name, ": code ", c, " at ", i, " is not ternary");
      d[4 + size_t(i / 4)] |= uint8_t((c + 1) << (2 * (i % 4)));
    }
    return record(name, kTernary2, {m.rows, m.cols}, d.data(), d.size());
  }
};

// ---- reader
// --------------------------------------------------------------------------------------
struct Record {
  Kind kind;
  std::vector<int64_t> dims;
  const uint8_t* data;
  size_t nbytes;
};

struct Reader {
  const std::string& path;
  const uint8_t* p;
  size_t left;
  template <class T>
  T get(const char* what) {
    BN_CHECK(left >= sizeof(T), "load_compact", path, ": corrupt payload (ends inside ", what, ")");
    T v;
    std::memcpy(&v, p, sizeof(T));
    p += sizeof(T);
    left -= sizeof(T);
    return v;
  }
  const uint8_t* bytes(size_t n, const char* what) {
    BN_CHECK(left >= n, "load_compact", path, ": corrupt payload (", what, " needs ", n, " bytes, ",
             left, " left)");
    const uint8_t* r = p;
    p += n;
    left -= n;
    return r;
  }
};

std::string read_file(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  BN_CHECK(bool(f), "load_compact", "cannot open '", path, "'");
  std::string s((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
  return s;
}

}  // namespace

CompactInfo save_compact(const std::string& path, const nn::InferenceWeights& w, nn::ActMode mode,
                         const std::string& config_yaml, const std::string& tokenizer_proto,
                         int64_t step, const CompactOptions& opt) {
  BN_CHECK(mode != nn::ActMode::FP, "save_compact", path,
           ": the model's mode is fp (full-precision weights); a compact file holds ternary "
           "weights only");
  const nn::ModelConfig& c = w.config;
  const int64_t d = c.d_model, V = c.vocab_size;
  Writer wr;
  CompactInfo info;
  wr.text("meta.config", config_yaml);
  wr.text("meta.mode", nn::to_string(mode));
  wr.text("meta.step", std::to_string(step));
  if (!tokenizer_proto.empty()) wr.text("tokenizer.model", tokenizer_proto);
  auto emb = [&](const std::string& name, const std::vector<float>& v) {
    if (opt.fp16_embeddings)
      wr.f16(name, v, {V, d});
    else
      wr.f32(name, v, {V, d});
  };
  emb(nn::kEmbedTokens.name, w.embed);
  for (size_t i = 0; i < w.layers.size(); ++i)  // every block's RMSNorm gains, then the BitLinears
    for (const nn::TensorName& t : nn::kBlockTensors)
      if (!t.ternary)
        wr.f32(nn::block_prefix(int64_t(i)) + t.name, w.layers[i].gains(t.slot),
               nn::tensor_shape(t.slot, c));
  w.for_each_matrix([&](const std::string& name, const nn::TernaryMatrix& m) {
    info.ternary_bytes += int64_t(wr.ternary(name, m));
    info.ternary_params += m.rows * m.cols;
  });
  wr.f32(nn::kFinalNorm.name, w.final_norm, {d});
  if (!w.lm_head.empty()) emb(nn::kLmHead.name, w.lm_head);

  std::string payload;
  payload.reserve(wr.buf.size() + 4);
  payload.append(reinterpret_cast<const char*>(&wr.count), 4);
  payload += wr.buf;
  std::string header(kHeader, '\0');
  std::memcpy(header.data(), kMagic, 8);
  const uint32_t flags = opt.fp16_embeddings ? kFlagF16 : 0u;
  const uint64_t psize = payload.size();
  const uint32_t pcrc = crc32(payload.data(), payload.size());
  std::memcpy(header.data() + 8, &kVersion, 4);
  std::memcpy(header.data() + 12, &flags, 4);
  std::memcpy(header.data() + 16, &psize, 8);
  std::memcpy(header.data() + 24, &pcrc, 4);
  const uint32_t hcrc = crc32(header.data(), 28);
  std::memcpy(header.data() + 28, &hcrc, 4);

  const std::string tmp = path + ".tmp";
  {
    std::ofstream f(tmp, std::ios::binary | std::ios::trunc);
    BN_CHECK(bool(f), "save_compact", "cannot write '", tmp, "'");
    f.write(header.data(), std::streamsize(header.size()));
    f.write(payload.data(), std::streamsize(payload.size()));
    f.close();
    BN_CHECK(!f.fail(), "save_compact", "write failed for '", tmp, "'");
  }
  std::filesystem::rename(tmp, path);
  info.file_bytes = int64_t(header.size() + payload.size());
  return info;
}

CompactInfo save_compact(const std::string& path, const TrainedModel& tm,
                         const CompactOptions& opt) {
  BN_CHECK(tm.model != nullptr, "save_compact", path, ": no model");
  const auto w = nn::InferenceWeights::from_model(*tm.model, false);
  return save_compact(path, *w, tm.model->mode(), tm.config_yaml, tm.tokenizer_proto, tm.step, opt);
}

void save_compact(const std::string& path, const TrainedModel& tm) {
  save_compact(path, tm, CompactOptions{});
}

bool is_compact_file(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  char m[8] = {};
  return f && f.read(m, 8) && std::memcmp(m, kMagic, 8) == 0;
}

InferenceModel load_compact(const std::string& path) {
  const std::string s = read_file(path);
  const char* op = "load_compact";
  BN_CHECK(s.size() >= kHeader, op, path, ": truncated (", s.size(), " bytes, the header alone is ",
           kHeader, ")");
  BN_CHECK(std::memcmp(s.data(), kMagic, 8) == 0, op, path,
           ": not a compact model file (bad magic)");
  uint32_t version, flags, pcrc, hcrc;
  uint64_t psize;
  std::memcpy(&version, s.data() + 8, 4);
  std::memcpy(&flags, s.data() + 12, 4);
  std::memcpy(&psize, s.data() + 16, 8);
  std::memcpy(&pcrc, s.data() + 24, 4);
  std::memcpy(&hcrc, s.data() + 28, 4);
  BN_CHECK(crc32(s.data(), 28) == hcrc, op, path, ": corrupt header (checksum mismatch)");
  BN_CHECK(version == kVersion, op, path, ": unsupported version ", version, " (this build reads ",
           kVersion, ")");
  BN_CHECK((flags & ~kFlagF16) == 0, op, path, ": unknown flags 0x", std::hex, flags);
  BN_CHECK(s.size() - kHeader >= psize, op, path, ": truncated (payload ", s.size() - kHeader,
           " of ", psize, " bytes)");
  BN_CHECK(s.size() - kHeader == psize, op, path, ": ", s.size() - kHeader - psize,
           " trailing bytes after the payload");
  const auto* payload = reinterpret_cast<const uint8_t*>(s.data()) + kHeader;
  BN_CHECK(crc32(payload, psize) == pcrc, op, path, ": corrupt payload (CRC-32 mismatch)");

  Reader rd{path, payload, size_t(psize)};
  std::map<std::string, Record> recs;
  const uint32_t count = rd.get<uint32_t>("record count");
  for (uint32_t i = 0; i < count; ++i) {
    const uint16_t nl = rd.get<uint16_t>("a record name");
    const std::string name(reinterpret_cast<const char*>(rd.bytes(nl, "a record name")), nl);
    Record r;
    r.kind = Kind(rd.get<uint8_t>("a record kind"));
    BN_CHECK(r.kind <= kTernary2, op, path, ": record ", name, " has unknown kind ", int(r.kind));
    const uint8_t rank = rd.get<uint8_t>("a record rank");
    for (int k = 0; k < rank; ++k) r.dims.push_back(int64_t(rd.get<uint64_t>("record dims")));
    r.nbytes = size_t(rd.get<uint64_t>("a record size"));
    r.data = rd.bytes(r.nbytes, name.c_str());
    BN_CHECK(recs.emplace(name, r).second, op, path, ": duplicate record ", name);
  }
  BN_CHECK(rd.left == 0, op, path, ": ", rd.left, " unparsed payload bytes");

  auto find = [&](const std::string& name) -> const Record& {
    auto it = recs.find(name);
    BN_CHECK(it != recs.end(), op, path, ": missing record ", name);
    return it->second;
  };
  auto text = [&](const std::string& name) {
    const Record& r = find(name);
    BN_CHECK(r.kind == kBytes, op, path, ": record ", name, " is not bytes");
    return std::string(reinterpret_cast<const char*>(r.data), r.nbytes);
  };
  auto shape_str = [](const std::vector<int64_t>& d) {
    std::string s = "[";
    for (size_t i = 0; i < d.size(); ++i) s += (i ? ", " : "") + std::to_string(d[i]);
    return s + "]";
  };
  auto floats = [&](const std::string& name, const std::vector<int64_t>& dims) {
    const Record& r = find(name);
    BN_CHECK(r.dims == dims, op, path, ": record ", name, " has shape ", shape_str(r.dims),
             ", expected ", shape_str(dims));
    size_t n = 1;
    for (int64_t d : dims) n *= size_t(d);
    std::vector<float> v(n);
    if (r.kind == kF32) {
      BN_CHECK(r.nbytes == 4 * n, op, path, ": record ", name, " has ", r.nbytes, " bytes for ", n,
               " F32 values");
      std::memcpy(v.data(), r.data, 4 * n);
    } else if (r.kind == kF16) {
      BN_CHECK(r.nbytes == 2 * n, op, path, ": record ", name, " has ", r.nbytes, " bytes for ", n,
               " F16 values");
      for (size_t i = 0; i < n; ++i) {
        uint16_t h;
        std::memcpy(&h, r.data + 2 * i, 2);
        v[i] = f16_to_f32(h);
      }
    } else {
      autograd::fail(op, ": ", path, ": record ", name, " is not F32/F16");
    }
    return v;
  };

  InferenceModel m;
  m.path = path;
  m.compact = true;
  m.config_yaml = text("meta.config");
  m.mode = nn::parse_mode(text("meta.mode"));
  m.step = std::stoll(text("meta.step"));
  if (recs.count("tokenizer.model")) m.tokenizer_proto = text("tokenizer.model");
  const Config cfg = parse_config(m.config_yaml, path + " (embedded config)");
  auto w = std::make_shared<nn::InferenceWeights>();
  w->config = cfg.model;
  const nn::ModelConfig& c = w->config;
  w->embed = floats(nn::kEmbedTokens.name, nn::tensor_shape(nn::TensorSlot::Embed, c));
  w->final_norm = floats(nn::kFinalNorm.name, nn::tensor_shape(nn::TensorSlot::FinalNorm, c));
  if (!c.tie_embeddings)
    w->lm_head = floats(nn::kLmHead.name, nn::tensor_shape(nn::TensorSlot::LmHead, c));
  auto unpack = [&](const std::string& name, const std::vector<int64_t>& dims,
                    nn::TernaryMatrix& t) {
    const Record& r = find(name);
    const int64_t rows = dims[0], cols = dims[1];
    BN_CHECK(r.kind == kTernary2, op, path, ": record ", name, " is not TERNARY2");
    BN_CHECK(r.dims == dims, op, path, ": record ", name, " has shape ", shape_str(r.dims),
             ", expected ", shape_str(dims));
    const int64_t n = rows * cols;
    BN_CHECK(r.nbytes == 4 + size_t((n + 3) / 4), op, path, ": record ", name, " has ", r.nbytes,
             " bytes for ", n, " ternary values");
    t.rows = rows;
    t.cols = cols;
    std::memcpy(&t.scale, r.data, 4);
    BN_CHECK(std::isfinite(t.scale) && t.scale > 0, op, path, ": record ", name, " has scale ",
             t.scale);
    t.absmean = t.scale;
    t.codes.resize(size_t(n));
    for (int64_t i = 0; i < n; ++i) {
      const int c2 = (r.data[4 + size_t(i / 4)] >> (2 * (i % 4))) & 3;
      BN_CHECK(c2 != 3, op, path, ": record ", name, " holds an invalid 2-bit code at ", i);
      t.codes[size_t(i)] = int8_t(c2 - 1);
    }
  };
  w->layers.resize(size_t(c.n_layers));
  for (int64_t i = 0; i < c.n_layers; ++i)
    for (const nn::TensorName& t : nn::kBlockTensors) {
      const std::string name = nn::block_prefix(i) + t.name;
      nn::InferenceLayer& L = w->layers[size_t(i)];
      if (t.ternary)
        unpack(name, nn::tensor_shape(t.slot, c), L.matrix(t.slot));
      else
        L.gains(t.slot) = floats(name, nn::tensor_shape(t.slot, c));
    }
  m.weights = std::move(w);
  return m;
}

InferenceModel load_inference_model(const std::string& path) {
  if (!std::filesystem::is_directory(path) && is_compact_file(path)) return load_compact(path);
  TrainedModel tm = load_trained_model(path);
  InferenceModel m;
  m.path = path;
  m.mode = tm.model->mode();
  m.config_yaml = std::move(tm.config_yaml);
  m.tokenizer_proto = std::move(tm.tokenizer_proto);
  m.step = tm.step;
  m.weights = nn::InferenceWeights::from_model(*tm.model, true);
  m.model = std::move(tm.model);
  return m;
}

}  // namespace trainers::formats
