// Hugging Face BitNetForCausalLM import: config.json, single or sharded safetensors, online
// (F32/BF16/F16 latent) and offline (packed uint8 + weight_scale) layouts, all problems at once.
#include "trainers/formats/hf_import.h"

#include <algorithm>
#include <charconv>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <optional>
#include <set>
#include <sstream>

#include "autograd/error.h"
#include "autograd/safetensors.h"
#include "data/tokenizer.h"
#include "nn/names.h"
#include "trainers/formats/export.h"

namespace fs = std::filesystem;

namespace trainers::formats {
namespace {

using autograd::fail;
using autograd::NamedBlob;
using json = nlohmann::json;

std::string read_text(const fs::path& p) {
  std::ifstream f(p, std::ios::binary);
  BN_CHECK(f.good(), "hf import", "cannot open '", p.string(), "'");
  return std::string(std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>());
}

json read_json_file(const fs::path& p) {
  try {
    return json::parse(read_text(p));
  } catch (const json::exception& e) {
    fail("hf import: ", p.string(), " is not valid JSON: ", e.what());
  }
}

std::string shape_str(const std::vector<int64_t>& s) {
  std::string o = "[";
  for (size_t i = 0; i < s.size(); ++i) o += (i ? ", " : "") + std::to_string(s[i]);
  return o + "]";
}

// A float as its shortest decimal form (1e-05, 500000).
std::string num(float f) {
  char buf[32];
  auto r = std::to_chars(buf, buf + sizeof buf, f);
  std::string s(buf, r.ptr);
  if (s.find_first_of(".e") == std::string::npos) s += ".0";
  return s;
}

float bf16_to_f32(uint16_t h) {
  const uint32_t u = uint32_t(h) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

float f16_to_f32(uint16_t h) {
  const uint32_t sign = uint32_t(h >> 15) << 31, e = (h >> 10) & 0x1f, m = h & 0x3ff;
  uint32_t u;
  if (e == 0) {
    if (m == 0) {
      u = sign;
    } else {  // subnormal: m * 2^-24
      const float v = std::ldexp(float(m), -24);
      std::memcpy(&u, &v, 4);
      u |= sign;
    }
  } else if (e == 31) {
    u = sign | 0x7f800000u | (m << 13);
  } else {
    u = sign | ((e + 112) << 23) | (m << 13);
  }
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

bool is_float_dtype(const std::string& d) { return d == "F32" || d == "BF16" || d == "F16"; }

// The blob's values as fp32 (F32, BF16 or F16).
std::vector<float> to_f32(const NamedBlob& b) {
  const size_t n = b.bytes.size() / autograd::dtype_size(b.dtype);
  std::vector<float> v(n);
  if (b.dtype == "F32") {
    if (n) std::memcpy(v.data(), b.bytes.data(), n * 4);
    return v;
  }
  for (size_t i = 0; i < n; ++i) {
    uint16_t h;
    std::memcpy(&h, b.bytes.data() + 2 * i, 2);
    v[i] = b.dtype == "BF16" ? bf16_to_f32(h) : f16_to_f32(h);
  }
  return v;
}

// Collects problems; thrown together at the end.
struct Problems {
  std::vector<std::string> list;
  void add(std::string s) { list.push_back(std::move(s)); }
  void throw_if_any(const std::string& what) const {
    if (list.empty()) return;
    std::ostringstream o;
    o << what << " (" << list.size() << (list.size() == 1 ? " problem" : " problems") << "):";
    for (const auto& s : list) o << "\n  " << s;
    fail(o.str());
  }
};

// config.json integer field (required unless a default is given).
int64_t get_int(const json& j, const char* key, Problems& p, std::optional<int64_t> def = {}) {
  if (!j.contains(key) || j[key].is_null()) {
    if (def) return *def;
    p.add(std::string("config.json: missing ") + key);
    return 0;
  }
  if (!j[key].is_number_integer()) {
    p.add(std::string("config.json: ") + key + " is " + j[key].dump() + ", not an integer");
    return 0;
  }
  const int64_t v = j[key].get<int64_t>();
  if (v <= 0) p.add(std::string("config.json: ") + key + " is " + std::to_string(v) + ", not > 0");
  return v;
}

double get_num(const json& j, const char* key, double def, Problems& p) {
  if (!j.contains(key) || j[key].is_null()) return def;
  if (!j[key].is_number()) {
    p.add(std::string("config.json: ") + key + " is " + j[key].dump() + ", not a number");
    return def;
  }
  return j[key].get<double>();
}

int64_t token_id(const json& j, const char* key) {
  if (!j.contains(key)) return -1;
  if (j[key].is_number_integer()) return j[key].get<int64_t>();
  if (j[key].is_array() && !j[key].empty() && j[key][0].is_number_integer())
    return j[key][0].get<int64_t>();
  return -1;
}

// The safetensors files of DIR: the shards named by the index (with the tensors each should
// hold), else model.safetensors.
struct Layout {
  std::vector<std::string> files;                 // relative to DIR, in order
  std::map<std::string, std::string> weight_map;  // tensor -> file (sharded only)
  bool sharded = false;
};

Layout find_files(const fs::path& dir, Problems& p) {
  Layout l;
  const fs::path index = dir / "model.safetensors.index.json";
  if (fs::exists(index)) {
    l.sharded = true;
    const json j = read_json_file(index);
    if (!j.contains("weight_map") || !j["weight_map"].is_object()) {
      p.add("model.safetensors.index.json: no weight_map object");
      return l;
    }
    std::set<std::string> seen;
    for (auto it = j["weight_map"].begin(); it != j["weight_map"].end(); ++it) {
      if (!it->is_string()) {
        p.add("model.safetensors.index.json: weight_map['" + it.key() + "'] is not a file name");
        continue;
      }
      const std::string f = it->get<std::string>();
      l.weight_map[it.key()] = f;
      if (seen.insert(f).second) l.files.push_back(f);
    }
    for (auto it = l.files.begin(); it != l.files.end();) {
      if (fs::exists(dir / *it)) {
        ++it;
        continue;
      }
      int64_t n = 0;
      std::string example;
      for (const auto& [t, f] : l.weight_map)
        if (f == *it && n++ == 0) example = t;
      p.add("missing shard: " + *it + " (model.safetensors.index.json maps " + std::to_string(n) +
            " tensors to it, e.g. " + example + ")");
      it = l.files.erase(it);
    }
    return l;
  }
  if (fs::exists(dir / "model.safetensors")) {
    l.files.push_back("model.safetensors");
    return l;
  }
  std::string other;
  for (const char* f : {"pytorch_model.bin", "model.safetensors.index.json"})
    if (fs::exists(dir / f)) other = f;
  p.add("no model.safetensors and no model.safetensors.index.json in " + dir.string() +
        (fs::exists(dir / "pytorch_model.bin")
             ? " (pytorch_model.bin is not read: re-save with safe_serialization=True)"
             : ""));
  return l;
}

// A packed BitLinear weight waiting for its weight_scale (which may sit in another shard).
struct Packed {
  std::vector<uint8_t> bytes;
  std::vector<int64_t> shape;  // the unpacked [out, in]
  std::string file;
};

}  // namespace

bool is_hf_dir(const std::string& path) {
  return fs::is_directory(path) && fs::exists(fs::path(path) / "config.json");
}

HfConfig read_hf_config(const std::string& dir) {
  const fs::path cp = fs::path(dir) / "config.json";
  BN_CHECK(fs::exists(cp), "hf import", "no config.json in '", dir, "'");
  const json j = read_json_file(cp);
  BN_CHECK(j.is_object(), "hf import", cp.string(), " is not a JSON object");
  Problems p;
  HfConfig h;
  nn::ModelConfig& m = h.model;
  bool arch_ok = j.value("model_type", std::string()) == "bitnet";
  if (j.contains("architectures") && j["architectures"].is_array())
    for (const auto& a : j["architectures"]) arch_ok |= a == "BitNetForCausalLM";
  if (!arch_ok)
    p.add("config.json: model_type is " +
          (j.contains("model_type") ? j["model_type"].dump() : "absent") +
          " and architectures do not name BitNetForCausalLM: not a BitNet checkpoint");
  m.vocab_size = get_int(j, "vocab_size", p);
  m.d_model = get_int(j, "hidden_size", p);
  m.ffn_dim = get_int(j, "intermediate_size", p);
  m.n_layers = get_int(j, "num_hidden_layers", p);
  m.n_heads = get_int(j, "num_attention_heads", p);
  m.n_kv_heads = get_int(j, "num_key_value_heads", p, m.n_heads);
  if (m.n_kv_heads == m.n_heads) m.n_kv_heads = 0;  // our spelling of "no GQA"
  if (m.n_heads > 0 && m.d_model % m.n_heads)
    p.add("config.json: hidden_size " + std::to_string(m.d_model) +
          " is not divisible by num_attention_heads " + std::to_string(m.n_heads));
  if (j.contains("head_dim") && !j["head_dim"].is_null() && m.n_heads > 0) {
    const int64_t hd = get_int(j, "head_dim", p);
    if (hd != m.d_model / m.n_heads)
      p.add(
          "config.json: head_dim " + std::to_string(hd) +
          " != hidden_size / num_attention_heads = " + std::to_string(m.d_model / m.n_heads) +
          ": the model's q/k/v widths are heads x hidden_size / heads (a decoupled head_dim is not "
          "supported)");
  }
  if (m.n_kv_heads > 0 && m.n_heads % m.n_kv_heads)
    p.add("config.json: num_attention_heads " + std::to_string(m.n_heads) +
          " is not a multiple of num_key_value_heads " + std::to_string(m.n_kv_heads));
  // RoPE: transformers 4.x writes rope_theta (+ rope_scaling), 5.x rope_parameters.
  double theta = get_num(j, "rope_theta", 500000.0, p);  // BitNetConfig's default
  auto rope_type_ok = [&](const json& r, const char* where) {
    if (!r.is_object()) return;
    const std::string t = r.value("rope_type", r.value("type", std::string("default")));
    if (t != "default")
      p.add(std::string("config.json: ") + where + " rope_type '" + t +
            "' is not supported (plain RoPE only)");
  };
  if (j.contains("rope_scaling") && !j["rope_scaling"].is_null())
    rope_type_ok(j["rope_scaling"], "rope_scaling");
  if (j.contains("rope_parameters") && j["rope_parameters"].is_object()) {
    theta = get_num(j["rope_parameters"], "rope_theta", theta, p);
    rope_type_ok(j["rope_parameters"], "rope_parameters");
  }
  m.rope_theta = float(theta);
  m.norm_eps = float(get_num(j, "rms_norm_eps", 1e-5, p));
  m.init_std = float(get_num(j, "initializer_range", 0.02, p));
  if (j.contains("tie_word_embeddings") && !j["tie_word_embeddings"].is_boolean())
    p.add("config.json: tie_word_embeddings is " + j["tie_word_embeddings"].dump() +
          ", not a boolean");
  m.tie_embeddings = j.value("tie_word_embeddings", false) == true;  // BitNetConfig: false
  const std::string act = j.contains("hidden_act") && j["hidden_act"].is_string()
                              ? j["hidden_act"].get<std::string>()
                              : (j.contains("hidden_act") ? j["hidden_act"].dump() : "relu2");
  if (act == "relu2")
    m.glu = nn::Glu::ReLU2;
  else if (act == "silu" || act == "swish")
    m.glu = nn::Glu::SwiGLU;
  else
    p.add("config.json: unknown hidden_act '" + act + "' (relu2 or silu)");
  for (const char* b : {"attention_bias", "mlp_bias"})
    if (j.value(b, false) == true)
      p.add(std::string("config.json: ") + b + " is true: the model has no biases");
  h.max_position_embeddings = get_int(j, "max_position_embeddings", p, 0);
  h.bos_token_id = token_id(j, "bos_token_id");  // -1 = null
  h.eos_token_id = token_id(j, "eos_token_id");
  if (j.contains("quantization_config") && !j["quantization_config"].is_null()) {
    const json& q = j["quantization_config"];
    if (!q.is_object() || q.value("quant_method", std::string()) != "bitnet") {
      p.add("config.json: quantization_config.quant_method is " +
            (q.is_object() && q.contains("quant_method") ? q["quant_method"].dump() : "absent") +
            ", not \"bitnet\"");
    } else {
      h.quantized = true;
      h.linear_class = q.value("linear_class", std::string("bitlinear"));
      h.quantization_mode = q.value("quantization_mode", std::string("offline"));
      if (h.linear_class != "bitlinear" && h.linear_class != "autobitlinear")
        p.add("config.json: quantization_config.linear_class '" + h.linear_class +
              "' (bitlinear or autobitlinear)");
      if (h.quantization_mode != "online" && h.quantization_mode != "offline")
        p.add("config.json: quantization_config.quantization_mode '" + h.quantization_mode +
              "' (online or offline)");
      if (q.value("use_rms_norm", false) == true)
        p.add(
            "config.json: quantization_config.use_rms_norm is true: an RMSNorm inside every "
            "BitLinear, which the model does not have");
    }
  }
  if (p.list.empty()) {
    try {
      m.validate();
    } catch (const std::exception& e) {
      p.add(std::string("config.json: ") + e.what());
    }
  }
  p.throw_if_any("hf import: " + cp.string() + " does not describe a model bitnet can build");
  return h;
}

HfImportResult import_hf(const std::string& dir_in, nn::BitNetLM& model) {
  const fs::path dir(dir_in);
  HfImportResult r;
  r.config = read_hf_config(dir_in);
  const HfConfig& h = r.config;
  const nn::ModelConfig& mc = model.config();
  {
    const nn::ModelConfig& c = h.model;
    BN_CHECK(mc.vocab_size == c.vocab_size && mc.d_model == c.d_model &&
                 mc.n_layers == c.n_layers && mc.n_heads == c.n_heads &&
                 mc.kv_heads() == c.kv_heads() && mc.ffn_dim == c.ffn_dim &&
                 mc.tie_embeddings == c.tie_embeddings && mc.glu == c.glu,
             "hf import", dir_in, ": the model's shape differs from config.json's");
  }
  Problems p;
  const Layout layout = find_files(dir, p);

  // Expected parameters by name.
  std::map<std::string, const nn::ParameterSet::Entry*> params;
  for (const auto& e : model.params().entries()) params[e.name] = &e;
  std::set<std::string> done;
  std::map<std::string, Packed> packed;                         // "...q_proj." -> codes
  std::map<std::string, std::pair<float, std::string>> scales;  // "...q_proj." -> (scale, file)
  std::map<std::string, std::string> where;                     // tensor -> file it came from
  std::set<std::string> float_bitlinear;  // BitLinear weights stored as floats
  const std::string kScale = "weight_scale";

  for (const std::string& file : layout.files) {
    autograd::SafetensorsFile st;
    try {
      st = autograd::read_safetensors((dir / file).string());
    } catch (const std::exception& e) {
      p.add(e.what());
      continue;
    }
    r.files.push_back((dir / file).string());
    for (NamedBlob& b : st.tensors) {
      const std::string& n = b.name;
      const std::string at = n + " (" + file + ")";
      if (auto w = where.find(n); w != where.end()) {
        p.add("duplicate: " + n + " in " + w->second + " and " + file);
        continue;
      }
      where[n] = file;
      if (layout.sharded) {
        auto m = layout.weight_map.find(n);
        if (m == layout.weight_map.end())
          r.notes.push_back(n + " is in " + file + " but not in the index's weight_map");
        else if (m->second != file)
          p.add(n + ": the index maps it to " + m->second + " but it is in " + file);
      }
      if (n.size() > kScale.size() &&
          n.compare(n.size() - kScale.size(), kScale.size(), kScale) == 0) {
        const std::string base = n.substr(0, n.size() - kScale.size());
        if (!is_bitlinear_weight(base + "weight") || !params.count(base + "weight")) {
          p.add("unexpected: " + at + " " + shape_str(b.shape));
          continue;
        }
        const size_t numel =
            is_float_dtype(b.dtype) ? b.bytes.size() / autograd::dtype_size(b.dtype) : 0;
        if (!is_float_dtype(b.dtype) || numel != 1) {
          p.add(at + ": " + b.dtype + " " + shape_str(b.shape) + ", want one F32/BF16/F16 value");
          continue;
        }
        scales[base] = {to_f32(b)[0], file};
        continue;
      }
      if (n.find("rotary_emb.inv_freq") != std::string::npos) {
        r.notes.push_back("ignored " + n + " (RoPE frequencies are recomputed from rope_theta)");
        continue;
      }
      auto it = params.find(n);
      if (it == params.end()) {
        if (n == nn::kLmHead.name && mc.tie_embeddings)
          r.notes.push_back(
              "ignored lm_head.weight: tie_word_embeddings is true (transformers ties "
              "it to model.embed_tokens.weight)");
        else
          p.add("unexpected: " + at + " " + b.dtype + " " + shape_str(b.shape));
        continue;
      }
      const nn::ParameterSet::Entry& e = *it->second;
      const std::vector<int64_t> want = e.var.shape().vec();
      const bool ternary = is_bitlinear_weight(n);
      if (b.dtype == "U8" && ternary) {
        const std::vector<int64_t> pk = {want[0] / 4, want[1]};
        if (want[0] % 4 || b.shape != pk) {
          p.add("shape: " + at + " is U8 " + shape_str(b.shape) + ", expected packed " +
                shape_str(pk) + " (uint8 [out/4, in] of " + shape_str(want) + ")");
          continue;
        }
        packed[n.substr(0, n.size() - 6)] = {std::move(b.bytes), want, file};
        done.insert(n);
        continue;
      }
      if (!is_float_dtype(b.dtype)) {
        p.add("dtype: " + at + " is " + b.dtype + " (F32, BF16 or F16" +
              (ternary ? "; U8 packed ternary" : "") + ")");
        continue;
      }
      if (b.shape != want) {
        p.add("shape: " + at + " is " + shape_str(b.shape) + ", expected " + shape_str(want));
        continue;
      }
      const std::vector<float> v = to_f32(b);
      std::memcpy(e.var.data(), v.data(), v.size() * 4);
      if (ternary) float_bitlinear.insert(n);
      done.insert(n);
    }
  }
  if (layout.sharded)
    for (const auto& [t, f] : layout.weight_map)
      if (!where.count(t) && fs::exists(dir / f))
        p.add("missing: " + t + " (the index maps it to " + f + ", which does not hold it)");

  // Packed weights: W = c * a / p, a = the absmean scale of the convention.
  const bool divides = h.linear_class != "autobitlinear";
  for (auto& [base, pk] : packed) {
    auto s = scales.find(base);
    if (s == scales.end()) {
      p.add("missing: " + base + "weight_scale (the packed " + base + "weight needs it)");
      continue;
    }
    if (!h.quantized) {
      p.add(base +
            "weight is packed U8 but config.json has no quantization_config: cannot tell "
            "whether weight_scale multiplies (autobitlinear) or divides (bitlinear)");
      continue;
    }
    const float ws = s->second.first;
    if (!(std::isfinite(ws) && ws > 0)) {
      p.add(base + "weight_scale is " + std::to_string(ws) + ", not a positive number");
      continue;
    }
    const int64_t out = pk.shape[0], in = pk.shape[1];
    const std::vector<int8_t> c = unpack_ternary(pk.bytes.data(), out, in);
    int64_t nz = 0, bad = -1;
    for (size_t i = 0; i < c.size(); ++i) {
      nz += c[i] != 0;
      if (c[i] > 1 && bad < 0) bad = int64_t(i);
    }
    if (bad >= 0) {
      p.add(base + "weight: 2-bit code 3 (not ternary) at row " + std::to_string(bad / in) +
            ", column " + std::to_string(bad % in));
      continue;
    }
    const float a = divides ? 1.0f / ws : ws;
    const float v = nz ? float(double(a) * double(c.size()) / double(nz)) : 0.0f;
    float* w = params.at(base + "weight")->var.data();
    for (size_t i = 0; i < c.size(); ++i) w[i] = float(c[i]) * v;
  }
  for (const auto& [base, s] : scales)
    if (!packed.count(base) && where.count(base + "weight"))
      p.add("unexpected: " + base + "weight_scale (" + s.second + "): " + base +
            "weight is not packed U8");
  for (const auto& e : model.params().entries())
    if (!where.count(e.name)) p.add("missing: " + e.name + " " + shape_str(e.var.shape().vec()));
  p.throw_if_any("hf import: " + dir.string() + " does not match its config.json");

  const bool declared_offline = h.quantized && h.quantization_mode == "offline";
  if (declared_offline && !float_bitlinear.empty())
    r.notes.push_back("quantization_config says offline but " + *float_bitlinear.begin() +
                      " (and " + std::to_string(float_bitlinear.size() - 1) +
                      " more) are float latent weights: imported as latent weights");
  if (!declared_offline && !packed.empty() && h.quantized)
    r.notes.push_back(
        "quantization_config says online but the BitLinear weights are packed U8: "
        "imported as codes x scale");
  if (!packed.empty())
    r.notes.push_back(
        "offline layout: " + std::to_string(packed.size()) +
        " packed BitLinear weights imported as latent W = c * a / p (codes c, absmean scale a = " +
        (divides ? "1 / weight_scale (linear_class bitlinear)" : "weight_scale (autobitlinear)") +
        ", p = fraction of nonzero codes), which ternarize back to the same codes and scale");
  if (!h.quantized)
    r.notes.push_back(
        "config.json has no quantization_config: transformers would compute this checkpoint in "
        "full "
        "precision; bitnet imports the weights as latent weights and ternarizes them");
  return r;
}

TrainedModel load_hf_model(const std::string& dir) {
  const HfConfig h = read_hf_config(dir);
  TrainedModel tm;
  tm.config_yaml = hf_recipe_yaml(dir, h);
  tm.model = std::make_unique<nn::BitNetLM>(h.model, 0);
  import_hf(dir, *tm.model);
  tm.model->set_mode(nn::ActMode::W158A8);
  tm.hf_source = fs::absolute(dir).lexically_normal().string();
  const fs::path tok = fs::path(dir) / "tokenizer.model";
  if (fs::exists(tok)) {
    std::string bytes = read_text(tok);
    try {
      (void)data::Tokenizer::from_serialized(bytes);
      tm.tokenizer_proto = std::move(bytes);
    } catch (const std::exception&) {  // not a SentencePiece model: leave the tokenizer out
    }
  }
  return tm;
}

std::string hf_model_yaml(const HfConfig& h) {
  const nn::ModelConfig& m = h.model;
  std::ostringstream o;
  o << "model:\n"
    << "  vocab_size: " << m.vocab_size << "\n"
    << "  d_model: " << m.d_model << "\n"
    << "  n_layers: " << m.n_layers << "\n"
    << "  n_heads: " << m.n_heads << "\n"
    << "  n_kv_heads: " << m.kv_heads() << "\n"
    << "  ffn_dim: " << m.ffn_dim << "\n"
    << "  rope_theta: " << num(m.rope_theta) << "\n"
    << "  norm_eps: " << num(m.norm_eps) << "\n"
    << "  tie_embeddings: " << (m.tie_embeddings ? "true" : "false") << "\n"
    << "  glu: " << (m.glu == nn::Glu::ReLU2 ? "relu2" : "swiglu") << "\n";
  return o.str();
}

std::string hf_recipe_yaml(const std::string& dir, const HfConfig& h) {
  const int64_t seq =
      h.max_position_embeddings > 0 ? std::min<int64_t>(h.max_position_embeddings, 2048) : 2048;
  std::ostringstream o;
  o << "# Continue-train " << dir << " into a4.8 (docs/TRAINING.md; configs/continue-a4.8.yaml):\n"
    << "# the paper's stage 2 alone, fresh AdamW state (HF checkpoints carry none), short "
       "warm-up.\n"
    << "# Run: bitnet train THIS.yaml --init-from " << dir << "\n"
    << hf_model_yaml(h) << "stages:\n  - {mode: a4.8}\n"
    << "optim: {beta1: 0.9, beta2: 0.95, eps: 1.0e-8, grad_clip: 1.0}\n"
    << "schedule:\n  lr: two-stage\n  peak1: 8.0e-5\n  peak2: 8.0e-5\n  warmup: 100\n"
    << "  switch: 0.5\n  end_ratio: 0.2\n  wd1: 0.0\n  wd2: 0.0\n"
    << "data:\n  train: data/continue/train   # token shards (bitnet prepare, or llm.c .bin)\n"
    << "  val: data/continue/val\n  seq_len: " << seq << "\n  micro_batch: 1\n"
    << "  grad_accum: " << std::max<int64_t>(1, (int64_t(1) << 20) / seq)
    << "   # 1M tokens per step on one rank\n"
    << "training:\n  tokens: 2000000000\n  eval_every: 200\n  out_dir: runs/continue-a4.8\n"
    << "checkpoint: {every: 200, keep: 3}\n";
  return o.str();
}

config::Config load_config_for_hf(const std::string& yaml_path, const std::string& hf_dir,
                                  const std::vector<std::string>& overrides) {
  const HfConfig h = read_hf_config(hf_dir);
  const nn::ModelConfig& m = h.model;
  struct Key {
    const char* key;
    const char* hf;
    std::string value;
  };
  const std::vector<Key> keys = {
      {"model.vocab_size", "vocab_size", std::to_string(m.vocab_size)},
      {"model.d_model", "hidden_size", std::to_string(m.d_model)},
      {"model.n_layers", "num_hidden_layers", std::to_string(m.n_layers)},
      {"model.n_heads", "num_attention_heads", std::to_string(m.n_heads)},
      {"model.n_kv_heads", "num_key_value_heads", std::to_string(m.kv_heads())},
      {"model.ffn_dim", "intermediate_size", std::to_string(m.ffn_dim)},
      {"model.rope_theta", "rope_theta", num(m.rope_theta)},
      {"model.norm_eps", "rms_norm_eps", num(m.norm_eps)},
      {"model.tie_embeddings", "tie_word_embeddings", m.tie_embeddings ? "true" : "false"},
      {"model.glu", "hidden_act", m.glu == nn::Glu::ReLU2 ? "relu2" : "swiglu"}};
  const std::set<std::string> set = config::keys_set(yaml_path, overrides, "model");
  std::vector<std::string> ov;
  for (const Key& k : keys)
    if (!set.count(k.key)) ov.push_back(std::string(k.key) + "=" + k.value);
  ov.insert(ov.end(), overrides.begin(), overrides.end());
  config::Config c = config::load_config(yaml_path, ov);
  const nn::ModelConfig& y = c.model;
  const std::vector<std::string> got = {std::to_string(y.vocab_size),
                                        std::to_string(y.d_model),
                                        std::to_string(y.n_layers),
                                        std::to_string(y.n_heads),
                                        std::to_string(y.kv_heads()),
                                        std::to_string(y.ffn_dim),
                                        num(y.rope_theta),
                                        num(y.norm_eps),
                                        y.tie_embeddings ? "true" : "false",
                                        y.glu == nn::Glu::ReLU2 ? "relu2" : "swiglu"};
  std::string err;
  int n = 0;
  for (size_t i = 0; i < keys.size(); ++i)
    if (got[i] != keys[i].value) {
      err += std::string("\n  ") + keys[i].key + ": config " + got[i] + ", config.json " +
             keys[i].hf + " " + keys[i].value;
      ++n;
    }
  if (n)
    throw config::ConfigError(
        yaml_path + ": the model block disagrees with " + hf_dir + "/config.json (" +
        std::to_string(n) + " keys; omit the model block " + "to take it from config.json):" + err);
  return c;
}

std::optional<std::pair<int64_t, int64_t>> hf_token_ids(const std::string& dir) {
  const fs::path cp = fs::path(dir) / "config.json";
  if (!fs::exists(cp)) return std::nullopt;
  try {
    const json j = json::parse(read_text(cp));
    return std::pair{token_id(j, "bos_token_id"), token_id(j, "eos_token_id")};
  } catch (const std::exception&) {
    return std::nullopt;
  }
}

std::vector<std::string> copy_hf_tokenizer(const std::string& src, const std::string& out) {
  std::vector<std::string> files;
  for (const char* f : {"tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                        "tokenizer.model", "added_tokens.json"}) {
    const fs::path from = fs::path(src) / f;
    if (!fs::exists(from)) continue;
    const fs::path to = fs::path(out) / f;
    std::error_code ec;
    fs::copy_file(from, to, fs::copy_options::overwrite_existing, ec);
    BN_CHECK(!ec, "export", "cannot copy '", from.string(), "' to '", to.string(),
             "': ", ec.message());
    files.push_back(to.string());
  }
  return files;
}

}  // namespace trainers::formats
