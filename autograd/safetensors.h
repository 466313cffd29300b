// Named-tensor files in the safetensors format (golden test data, Hugging Face exports).
//
// Layout: u64 little-endian header size N, N bytes of JSON {name: {dtype, shape, data_offsets},
// "__metadata__": {str: str}}, then the data, contiguous from offset 0, in entry order.
#pragma once
#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "autograd/tensor.h"

namespace autograd {

struct NamedBlob {
  std::string name;
  std::string dtype;  // "F32", "F16", "U8", "I8", "I32", ...
  std::vector<int64_t> shape;
  std::vector<uint8_t> bytes;
};

struct SafetensorsFile {
  std::vector<NamedBlob> tensors;  // in file order
  std::map<std::string, std::string> metadata;
  const NamedBlob* find(const std::string& name) const;
  // The named F32 tensor as a Tensor; throws naming the file entry when absent or not F32.
  Tensor f32(const std::string& name) const;
};

NamedBlob blob_f32(const std::string& name, const Tensor& t);
size_t dtype_size(const std::string& dtype);  // throws on unknown dtype

void write_safetensors(const std::string& path, const std::vector<NamedBlob>& tensors,
                       const std::map<std::string, std::string>& metadata = {{"format", "pt"}});
// Reads and validates the whole file; errors name the path and what is wrong.
SafetensorsFile read_safetensors(const std::string& path);

}  // namespace autograd
