// safetensors reader/writer (little-endian hosts), with strict validation on read.
#include "autograd/safetensors.h"

#include <cstring>
#include <fstream>
#include <nlohmann/json.hpp>

#include "autograd/error.h"

namespace autograd {

size_t dtype_size(const std::string& d) {
  if (d == "F32" || d == "I32" || d == "U32") return 4;
  if (d == "F16" || d == "BF16" || d == "I16" || d == "U16") return 2;
  if (d == "U8" || d == "I8" || d == "BOOL") return 1;
  if (d == "F64" || d == "I64" || d == "U64") return 8;
  fail("safetensors: unknown dtype '", d, "'");
}

const NamedBlob* SafetensorsFile::find(const std::string& name) const {
  for (auto& t : tensors)
    if (t.name == name) return &t;
  return nullptr;
}

Tensor SafetensorsFile::f32(const std::string& name) const {
  const NamedBlob* b = find(name);
  BN_CHECK(b, "safetensors", "no tensor named '", name, "'");
  BN_CHECK(b->dtype == "F32", "safetensors", "tensor '", name, "' has dtype ", b->dtype,
           ", want F32");
  Tensor t = Tensor::empty(Shape(b->shape));
  BN_CHECK(b->bytes.size() == size_t(t.numel()) * 4, "safetensors", "tensor '", name,
           "' size mismatch");
  if (t.numel()) std::memcpy(t.data(), b->bytes.data(), b->bytes.size());
  return t;
}

NamedBlob blob_f32(const std::string& name, const Tensor& t) {
  NamedBlob b{name, "F32", t.shape().vec(), {}};
  b.bytes.resize(size_t(t.numel()) * 4);
  if (t.numel()) std::memcpy(b.bytes.data(), t.data(), b.bytes.size());
  return b;
}

void write_safetensors(const std::string& path, const std::vector<NamedBlob>& tensors,
                       const std::map<std::string, std::string>& metadata) {
  nlohmann::ordered_json h;
  if (!metadata.empty()) h["__metadata__"] = metadata;
  uint64_t off = 0;
  for (auto& t : tensors) {
    int64_t n = 1;
    for (int64_t d : t.shape) n *= d;
    BN_CHECK(uint64_t(n) * dtype_size(t.dtype) == t.bytes.size(), "write_safetensors", "tensor '",
             t.name, "' has ", t.bytes.size(), " bytes for shape of ", n, " ", t.dtype);
    h[t.name] = {
        {"dtype", t.dtype}, {"shape", t.shape}, {"data_offsets", {off, off + t.bytes.size()}}};
    off += t.bytes.size();
  }
  std::string js = h.dump();
  while ((js.size() + 8) % 8) js.push_back(' ');  // keep the data 8-byte aligned
  std::ofstream f(path, std::ios::binary | std::ios::trunc);
  BN_CHECK(f.good(), "write_safetensors", "cannot open '", path, "' for writing");
  uint64_t n = js.size();
  uint8_t le[8];
  for (int i = 0; i < 8; ++i) le[i] = uint8_t(n >> (8 * i));
  f.write(reinterpret_cast<const char*>(le), 8);
  f.write(js.data(), std::streamsize(js.size()));
  for (auto& t : tensors)
    f.write(reinterpret_cast<const char*>(t.bytes.data()), std::streamsize(t.bytes.size()));
  f.flush();
  BN_CHECK(f.good(), "write_safetensors", "write to '", path, "' failed");
}

SafetensorsFile read_safetensors(const std::string& path) {
  std::ifstream f(path, std::ios::binary | std::ios::ate);
  BN_CHECK(f.good(), "read_safetensors", "cannot open '", path, "'");
  const uint64_t size = uint64_t(f.tellg());
  f.seekg(0);
  BN_CHECK(size >= 8, "read_safetensors", path, ": file of ", size, " bytes is too short");
  uint8_t le[8];
  f.read(reinterpret_cast<char*>(le), 8);
  uint64_t hn = 0;
  for (int i = 0; i < 8; ++i) hn |= uint64_t(le[i]) << (8 * i);
  BN_CHECK(hn <= size - 8 && hn < (uint64_t(100) << 20), "read_safetensors", path, ": header size ",
           hn, " exceeds the file (", size, " bytes)");
  std::string js(hn, '\0');
  f.read(js.data(), std::streamsize(hn));
  nlohmann::json h;
  try {
    h = nlohmann::json::parse(js);
  } catch (const std::exception& e) {
    fail("read_safetensors: ", path, ": header is not valid JSON: ", e.what());
  }
  BN_CHECK(h.is_object(), "read_safetensors", path, ": header is not a JSON object");
  const uint64_t data_size = size - 8 - hn;
  SafetensorsFile out;
  struct Pending {
    NamedBlob b;
    uint64_t begin, end;
  };
  std::vector<Pending> pend;
  for (auto it = h.begin(); it != h.end(); ++it) {
    if (it.key() == "__metadata__") {
      BN_CHECK(it->is_object(), "read_safetensors", path, ": __metadata__ is not an object");
      for (auto m = it->begin(); m != it->end(); ++m) {
        BN_CHECK(m->is_string(), "read_safetensors", path, ": metadata '", m.key(),
                 "' is not a string");
        out.metadata[m.key()] = m->get<std::string>();
      }
      continue;
    }
    const auto& e = *it;
    BN_CHECK(
        e.is_object() && e.contains("dtype") && e.contains("shape") && e.contains("data_offsets"),
        "read_safetensors", path, ": entry '", it.key(), "' lacks dtype/shape/data_offsets");
    Pending p;
    p.b.name = it.key();
    try {
      p.b.dtype = e["dtype"].get<std::string>();
      p.b.shape = e["shape"].get<std::vector<int64_t>>();
      auto offs = e["data_offsets"].get<std::vector<uint64_t>>();
      BN_CHECK(offs.size() == 2, "read_safetensors", path, ": '", it.key(),
               "' data_offsets needs 2 values");
      p.begin = offs[0];
      p.end = offs[1];
    } catch (const nlohmann::json::exception& ex) {
      fail("read_safetensors: ", path, ": entry '", it.key(), "': ", ex.what());
    }
    uint64_t n = 1;
    for (int64_t d : p.b.shape) {
      BN_CHECK(d >= 0, "read_safetensors", path, ": '", p.b.name, "' has a negative dimension");
      n *= uint64_t(d);
    }
    BN_CHECK(p.begin <= p.end && p.end <= data_size, "read_safetensors", path, ": '", p.b.name,
             "' offsets [", p.begin, ", ", p.end, ") exceed the data (", data_size, " bytes)");
    BN_CHECK(p.end - p.begin == n * dtype_size(p.b.dtype), "read_safetensors", path, ": '",
             p.b.name, "' has ", p.end - p.begin, " bytes, shape needs ",
             n * dtype_size(p.b.dtype));
    pend.push_back(std::move(p));
  }
  for (auto& p : pend) {
    p.b.bytes.resize(p.end - p.begin);
    f.seekg(std::streamoff(8 + hn + p.begin));
    f.read(reinterpret_cast<char*>(p.b.bytes.data()), std::streamsize(p.b.bytes.size()));
    BN_CHECK(f.good(), "read_safetensors", path, ": read of '", p.b.name, "' failed");
    out.tensors.push_back(std::move(p.b));
  }
  return out;
}

}  // namespace autograd
