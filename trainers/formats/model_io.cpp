// Model file save/load with name and shape checks (all mismatches reported at once).
#include "trainers/formats/model_io.h"

#include <cstdio>
#include <cstring>
#include <filesystem>
#include <set>
#include <sstream>

#include "autograd/error.h"
#include "autograd/safetensors.h"

namespace trainers::formats {
using autograd::NamedBlob;

void save_model(const std::string& path, const nn::BitNetLM& model, const optim::AdamW* opt,
                std::map<std::string, std::string> metadata, const std::string& tokenizer_proto) {
  if (opt && opt->sharded())
    autograd::fail(path, ": cannot save a sharded (ZeRO-1) optimizer state; gather it first");
  std::vector<NamedBlob> blobs;
  for (auto& e : model.params().entries())
    blobs.push_back(autograd::blob_f32(e.name, e.var.value()));
  if (opt) {
    for (auto& e : model.params().entries()) {
      const autograd::Shape s = e.var.shape();
      blobs.push_back(autograd::blob_f32(
          "optim.exp_avg." + e.name, opt->exp_avg().slice0(e.offset, e.offset + e.numel).view(s)));
      blobs.push_back(
          autograd::blob_f32("optim.exp_avg_sq." + e.name,
                             opt->exp_avg_sq().slice0(e.offset, e.offset + e.numel).view(s)));
    }
    metadata["optim.steps"] = std::to_string(opt->steps());
  }
  if (!tokenizer_proto.empty())
    blobs.push_back({"tokenizer.model",
                     "U8",
                     {int64_t(tokenizer_proto.size())},
                     std::vector<uint8_t>(tokenizer_proto.begin(), tokenizer_proto.end())});
  metadata["format"] = "pt";
  const std::string tmp = path + ".tmp";
  autograd::write_safetensors(tmp, blobs, metadata);
  std::filesystem::rename(tmp, path);
}

bool load_model(const std::string& path, nn::BitNetLM& model, optim::AdamW* opt) {
  if (opt && opt->sharded())
    autograd::fail(path, ": cannot load into a sharded (ZeRO-1) optimizer state");
  const autograd::SafetensorsFile f = autograd::read_safetensors(path);
  std::ostringstream err;
  int problems = 0;
  std::set<std::string> known;
  auto check = [&](const std::string& name, const autograd::Shape& s) -> const NamedBlob* {
    known.insert(name);
    const NamedBlob* b = f.find(name);
    if (!b) {
      err << "\n  missing: " << name << " " << s;
      ++problems;
      return nullptr;
    }
    if (b->dtype != "F32" || autograd::Shape(b->shape) != s) {
      err << "\n  mismatch: " << name << " is " << b->dtype << " " << autograd::Shape(b->shape)
          << ", model has F32 " << s;
      ++problems;
      return nullptr;
    }
    return b;
  };
  const bool has_moments = opt && f.metadata.count("optim.steps");
  for (auto& e : model.params().entries()) {
    check(e.name, e.var.shape());
    if (has_moments) {
      check("optim.exp_avg." + e.name, e.var.shape());
      check("optim.exp_avg_sq." + e.name, e.var.shape());
    }
  }
  for (auto& t : f.tensors)
    if (!known.count(t.name) && t.name.rfind("optim.", 0) != 0 && t.name != "tokenizer.model") {
      err << "\n  unexpected: " << t.name << " " << autograd::Shape(t.shape);
      ++problems;
    }
  if (problems)
    autograd::fail(path, ": does not match the model (", problems, " problems):", err.str());
  for (auto& e : model.params().entries()) {
    std::memcpy(e.var.data(), f.find(e.name)->bytes.data(), size_t(e.numel) * 4);
    if (has_moments) {
      std::memcpy(opt->exp_avg().data() + e.offset, f.find("optim.exp_avg." + e.name)->bytes.data(),
                  size_t(e.numel) * 4);
      std::memcpy(opt->exp_avg_sq().data() + e.offset,
                  f.find("optim.exp_avg_sq." + e.name)->bytes.data(), size_t(e.numel) * 4);
    }
  }
  if (has_moments) opt->set_steps(std::stoll(f.metadata.at("optim.steps")));
  return has_moments;
}

}  // namespace trainers::formats
