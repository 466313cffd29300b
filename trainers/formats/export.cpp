// Hugging Face (online/offline) and GGUF exports of a trained model; refusals for targets whose
// runtime cannot compute the model. Formats and the runtimes' expectations: docs/EXPORT.md.
#include "trainers/formats/export.h"

#include "trainers/formats/compact.h"

#include <algorithm>
#include <charconv>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "autograd/error.h"
#include "autograd/safetensors.h"
#include "autograd/tape.h"
#include "data/tokenizer.h"
#include "nn/names.h"
#include "quant/quantizers.h"
#include "trainers/config/config.h"
#include "trainers/formats/gguf.h"
#include "trainers/formats/hf_import.h"

namespace fs = std::filesystem;

namespace trainers::formats {
using config::parse_config;
namespace {

using autograd::fail;
using autograd::NamedBlob;
using json = nlohmann::ordered_json;

// ---- SentencePiece NormalizerSpec (ModelProto field 3), read straight from the proto bytes ----

struct SpNormalizer {
  std::string name = "(none)";
  bool has_charsmap = false;
  bool add_dummy_prefix = true;  // proto defaults
  bool remove_extra_whitespaces = true;
  bool escape_whitespaces = true;
};

bool read_varint(const std::string& s, size_t& pos, uint64_t& v) {
  v = 0;
  for (int shift = 0; shift < 64; shift += 7) {
    if (pos >= s.size()) return false;
    const uint8_t b = uint8_t(s[pos++]);
    v |= uint64_t(b & 0x7f) << shift;
    if (!(b & 0x80)) return true;
  }
  return false;
}

// Skips one field of wire type wt; false on malformed input.
bool skip(const std::string& s, size_t& pos, uint64_t wt) {
  uint64_t v = 0;
  switch (wt) {
    case 0:
      return read_varint(s, pos, v);
    case 1:
      pos += 8;
      return pos <= s.size();
    case 2:
      if (!read_varint(s, pos, v) || v > s.size() - pos) return false;
      pos += size_t(v);
      return true;
    case 5:
      pos += 4;
      return pos <= s.size();
    default:
      return false;
  }
}

SpNormalizer parse_normalizer(const std::string& proto) {
  SpNormalizer n;
  size_t pos = 0;
  while (pos < proto.size()) {
    uint64_t key = 0;
    if (!read_varint(proto, pos, key)) break;
    if ((key >> 3) == 3 && (key & 7) == 2) {  // normalizer_spec
      uint64_t len = 0;
      if (!read_varint(proto, pos, len) || len > proto.size() - pos) break;
      const std::string sub = proto.substr(pos, size_t(len));
      pos += size_t(len);
      size_t p = 0;
      while (p < sub.size()) {
        uint64_t k = 0, v = 0;
        if (!read_varint(sub, p, k)) break;
        const uint64_t field = k >> 3, wt = k & 7;
        if ((field == 1 || field == 2) && wt == 2) {
          if (!read_varint(sub, p, v) || v > sub.size() - p) break;
          if (field == 1)
            n.name = sub.substr(p, size_t(v));
          else
            n.has_charsmap = v > 0;
          p += size_t(v);
        } else if (field >= 3 && field <= 5 && wt == 0) {
          if (!read_varint(sub, p, v)) break;
          (field == 3   ? n.add_dummy_prefix
           : field == 4 ? n.remove_extra_whitespaces
                        : n.escape_whitespaces) = v != 0;
        } else if (!skip(sub, p, wt)) {
          break;
        }
      }
    } else if (!skip(proto, pos, key & 7)) {
      break;
    }
  }
  return n;
}

// ---- helpers ---------------------------------------------------------------------------------

// A float as the double with the same shortest decimal form (1e-5f -> 1e-05, not 9.99e-06).
double clean(float f) {
  char buf[32];
  auto r = std::to_chars(buf, buf + sizeof buf, f);
  return std::strtod(std::string(buf, r.ptr).c_str(), nullptr);
}

void write_text(const fs::path& p, const std::string& s) {
  std::ofstream f(p, std::ios::binary | std::ios::trunc);
  BN_CHECK(f.good(), "export", "cannot open '", p.string(), "' for writing");
  f << s;
  f.flush();
  BN_CHECK(f.good(), "export", "write to '", p.string(), "' failed");
}

std::vector<uint8_t> f32_bytes(const autograd::Tensor& t) {
  std::vector<uint8_t> b(size_t(t.numel()) * 4);
  if (t.numel()) std::memcpy(b.data(), t.data(), b.size());
  return b;
}

int64_t context_length(const TrainedModel& tm, const ExportOptions& opt) {
  if (opt.context_length > 0) return opt.context_length;
  try {
    return parse_config(tm.config_yaml, "embedded config").data.seq_len;
  } catch (const std::exception&) {
    return 2048;
  }
}

// The model's tokenizer (nullptr-equivalent: empty optional via bool) with vocabulary checks.
struct Vocab {
  bool present = false;
  data::Tokenizer tok;
  SpNormalizer norm;
};

Vocab load_vocab(const TrainedModel& tm, const char* what) {
  Vocab v;
  if (tm.tokenizer_proto.empty()) return v;
  v.tok = data::Tokenizer::from_serialized(tm.tokenizer_proto);
  v.norm = parse_normalizer(tm.tokenizer_proto);
  v.present = true;
  const int64_t V = tm.model->config().vocab_size;
  if (v.tok.vocab_size() > V)
    fail("export ", what, ": the tokenizer has ", v.tok.vocab_size(),
         " pieces but the model's vocab_size is ", V, ": token ids >= ", V,
         " could not be embedded");
  return v;
}

std::string piece_or_empty(const Vocab& v, int id) {
  return id >= 0 ? v.tok.piece(id) : std::string();
}

// ---- Hugging Face ----------------------------------------------------------------------------

json hf_config(const TrainedModel& tm, const ExportOptions& opt, const Vocab& vocab, bool offline) {
  const nn::ModelConfig& c = tm.model->config();
  json j;
  j["architectures"] = {"BitNetForCausalLM"};
  j["model_type"] = "bitnet";
  j["vocab_size"] = c.vocab_size;
  j["hidden_size"] = c.d_model;
  j["intermediate_size"] = c.ffn_dim;
  j["num_hidden_layers"] = c.n_layers;
  j["num_attention_heads"] = c.n_heads;
  j["num_key_value_heads"] = c.kv_heads();
  j["head_dim"] = c.head_dim();
  j["hidden_act"] = c.glu == nn::Glu::ReLU2 ? "relu2" : "silu";
  j["max_position_embeddings"] = context_length(tm, opt);
  j["rms_norm_eps"] = clean(c.norm_eps);
  j["rope_theta"] = clean(c.rope_theta);
  j["rope_scaling"] = nullptr;
  j["attention_bias"] = false;
  j["attention_dropout"] = 0.0;
  j["initializer_range"] = clean(c.init_std);
  j["tie_word_embeddings"] = c.tie_embeddings;
  j["use_cache"] = true;
  if (vocab.present) {
    j["bos_token_id"] = vocab.tok.bos_id() >= 0 ? json(vocab.tok.bos_id()) : json(nullptr);
    j["eos_token_id"] = vocab.tok.eos_id() >= 0 ? json(vocab.tok.eos_id()) : json(nullptr);
  } else {
    j["bos_token_id"] = nullptr;
    j["eos_token_id"] = nullptr;
  }
  j["pad_token_id"] = nullptr;
  j["torch_dtype"] = "float32";
  j["quantization_config"] = {{"quant_method", "bitnet"},
                              {"linear_class", "autobitlinear"},
                              {"quantization_mode", offline ? "offline" : "online"},
                              {"modules_to_not_convert", nullptr},
                              {"use_rms_norm", false}};
  j["bitnet_a48"] = {
      {"trained_activation_mode", nn::to_string(tm.model->mode())},
      {"step", tm.step},
      {"note",
       "transformers' AutoBitLinear computes ternary weights with INT8 absmax per-token "
       "activations on every BitLinear input (the w158a8 arithmetic)"}};
  return j;
}

void write_hf_tokenizer(const fs::path& dir, const Vocab& v, int64_t ctx, ExportResult& r) {
  {
    std::ofstream f(dir / "tokenizer.model", std::ios::binary | std::ios::trunc);
    const std::string bytes = v.tok.serialized();
    f.write(bytes.data(), std::streamsize(bytes.size()));
    BN_CHECK(f.good(), "export", "write to '", (dir / "tokenizer.model").string(), "' failed");
    r.files.push_back((dir / "tokenizer.model").string());
  }
  const std::string bos = piece_or_empty(v, v.tok.bos_id()),
                    eos = piece_or_empty(v, v.tok.eos_id()),
                    unk = piece_or_empty(v, v.tok.unk_id());
  auto tok_or_null = [](const std::string& s) { return s.empty() ? json(nullptr) : json(s); };
  json tc;
  tc["tokenizer_class"] = "LlamaTokenizer";
  tc["bos_token"] = tok_or_null(bos);
  tc["eos_token"] = tok_or_null(eos);
  tc["unk_token"] = tok_or_null(unk);
  tc["pad_token"] = nullptr;
  tc["add_bos_token"] = true;
  tc["add_eos_token"] = false;
  // legacy = true: the slow tokenizer runs sentencepiece on the text with the proto's own
  // normalizer (identity, dummy prefix), i.e. exactly what `bitnet` encodes; the fast tokenizer
  // converted from it prepends "▁" (add_prefix_space) and maps " " to "▁", the same for text
  // without special tokens.
  tc["legacy"] = true;
  tc["add_prefix_space"] = v.norm.add_dummy_prefix;
  tc["clean_up_tokenization_spaces"] = false;
  tc["spaces_between_special_tokens"] = false;
  tc["sp_model_kwargs"] = json::object();
  tc["model_max_length"] = ctx;
  write_text(dir / "tokenizer_config.json", tc.dump(2) + "\n");
  r.files.push_back((dir / "tokenizer_config.json").string());
  json sm = json::object();
  if (!bos.empty()) sm["bos_token"] = bos;
  if (!eos.empty()) sm["eos_token"] = eos;
  if (!unk.empty()) sm["unk_token"] = unk;
  write_text(dir / "special_tokens_map.json", sm.dump(2) + "\n");
  r.files.push_back((dir / "special_tokens_map.json").string());
  if (v.norm.name != "identity")
    r.warnings.push_back("tokenizer normalizer is '" + v.norm.name +
                         "', not 'identity': transformers' fast Llama tokenizer does not apply it");
}

ExportResult export_hf(const TrainedModel& tm, const fs::path& dir, const ExportOptions& opt,
                       bool offline) {
  const char* what = offline ? "hf-offline" : "hf";
  const Vocab vocab = load_vocab(tm, what);
  const nn::BitNetLM& m = *tm.model;
  // Validate everything before writing anything.
  if (offline)
    for (const auto& e : m.params().entries())
      if (is_bitlinear_weight(e.name) && e.var.shape()[0] % 4)
        fail("export hf-offline: ", e.name, " has ", e.var.shape()[0],
             " output rows, not divisible by 4: transformers' offline BitLinear packs 4 rows per "
             "byte "
             "(uint8 [out/4, in]); export with --format hf (online) instead");

  std::vector<NamedBlob> blobs;
  for (const auto& e : m.params().entries()) {
    const autograd::Tensor w = e.var.value();
    if (!offline || !is_bitlinear_weight(e.name)) {
      blobs.push_back(autograd::blob_f32(e.name, w));
      continue;
    }
    const int64_t out = w.shape()[0], in = w.shape()[1];
    std::vector<int8_t> codes(size_t(w.numel()));
    const float a = quant::ternary_absmean(w.data(), w.numel(), nullptr, codes.data());
    blobs.push_back({e.name, "U8", {out / 4, in}, pack_ternary(codes.data(), out, in)});
    std::vector<uint8_t> s(4);
    std::memcpy(s.data(), &a, 4);
    const std::string base = e.name.substr(0, e.name.size() - std::string("weight").size());
    blobs.push_back({base + "weight_scale", "F32", {1}, std::move(s)});
  }

  ExportResult r;
  std::error_code ec;
  fs::create_directories(dir, ec);
  BN_CHECK(fs::is_directory(dir), "export", "cannot create output directory '", dir.string(), "'");
  const fs::path st = dir / "model.safetensors";
  autograd::write_safetensors(st.string() + ".tmp", blobs, {{"format", "pt"}});
  fs::rename(st.string() + ".tmp", st);
  r.files.push_back(st.string());

  const int64_t ctx = context_length(tm, opt);
  // Tokenizer files: copied from the Hugging Face source when there is one, with its special
  // token ids; else ours (SentencePiece), else none.
  const std::string tok_src = !opt.tokenizer_from.empty() ? opt.tokenizer_from : tm.hf_source;
  std::vector<std::string> copied;
  if (!tok_src.empty()) {
    if (fs::is_directory(tok_src)) copied = copy_hf_tokenizer(tok_src, dir.string());
    r.warnings.push_back(
        copied.empty() ? "no tokenizer files in '" + tok_src + "' to copy" +
                             (vocab.present ? ": wrote the embedded SentencePiece tokenizer" : "")
                       : "tokenizer files copied from " + tok_src);
    r.files.insert(r.files.end(), copied.begin(), copied.end());
  }
  json cfg = hf_config(tm, opt, vocab, offline);
  if (!copied.empty())
    if (const auto ids = hf_token_ids(tok_src)) {
      cfg["bos_token_id"] = ids->first >= 0 ? json(ids->first) : json(nullptr);
      cfg["eos_token_id"] = ids->second >= 0 ? json(ids->second) : json(nullptr);
    }
  write_text(dir / "config.json", cfg.dump(2) + "\n");
  r.files.push_back((dir / "config.json").string());
  json gc;
  gc["_from_model_config"] = true;
  for (const char* key : {"bos_token_id", "eos_token_id"})
    if (!cfg[key].is_null()) gc[key] = cfg[key];
  write_text(dir / "generation_config.json", gc.dump(2) + "\n");
  r.files.push_back((dir / "generation_config.json").string());
  if (copied.empty() && vocab.present)
    write_hf_tokenizer(dir, vocab, ctx, r);
  else if (copied.empty())
    r.warnings.push_back(
        "the model has no tokenizer: tokenizer files were not written (feed token ids)");
  if (m.mode() != nn::ActMode::W158A8)
    r.warnings.push_back(
        "the model was trained last in mode " + nn::to_string(m.mode()) +
        "; transformers computes the w158a8 arithmetic (INT8 absmax on every BitLinear input)");
  return r;
}

// ---- GGUF ------------------------------------------------------------------------------------

// The llama.cpp version read for the refusals and notes (docs/EXPORT.md): llama.rn 0.13.0-rc.5's
// vendor/llama.cpp, commit e6ab7c1 (build 11118), src/models/bitnet.cpp.
constexpr const char* kLlamaCppRead = "llama.cpp e6ab7c1 (llama.rn 0.13.0-rc.5)";

void check_gguf_target(const TrainedModel& tm, const ExportOptions& opt, const GgufPlan& p) {
  const nn::ModelConfig& c = tm.model->config();
  if (p.target == "llama.cpp") {
    // llama.cpp's bitnet arch creates no `output` tensor (an extra tensor fails the load with
    // "wrong number of tensors") and computes the logits with token_embd.
    if (!c.tie_embeddings)
      fail(
          "export gguf: --target llama.cpp (arch 'bitnet') computes the logits with token_embd "
          "and does not load an `output` tensor (",
          kLlamaCppRead,
          "), so this untied model (model.tie_embeddings=false) cannot run there; train with "
          "model.tie_embeddings=true (the shipped configs do), or export --format hf, which "
          "transformers computes untied");
  } else {
    if (c.glu != nn::Glu::ReLU2)
      fail(
          "export gguf: --target bitnet.cpp (arch 'bitnet-b1.58', build_bitnet_158) hard-codes "
          "ReLU² gating (LLM_FFN_RELU_SQR) but this model uses SwiGLU; use --target llama.cpp "
          "(arch 'bitnet', SiLU gating), which computes a tied SwiGLU model exactly");
    if (!c.tie_embeddings && !opt.allow_untied_output)
      fail(
          "export gguf: --target bitnet.cpp (build_bitnet_158) computes the logits with "
          "token_embd (tied embeddings); the separate `output` tensor is loaded but never used, "
          "so this untied model would produce wrong logits. Train with "
          "model.tie_embeddings=true, or pass --allow-untied-output to write `output` anyway "
          "for a runtime that uses it");
  }
  if (opt.allow_untied_output && p.target == "llama.cpp")
    fail(
        "export gguf: --allow-untied-output applies to --target bitnet.cpp only: llama.cpp's "
        "bitnet arch refuses a file with an `output` tensor");
  if (p.weights == gguf::TensorType::TQ2_0 || p.weights == gguf::TensorType::TQ1_0)
    for (const auto& e : tm.model->params().entries())
      if (is_bitlinear_weight(e.name) && e.var.shape()[1] % gguf::kQK_K)
        fail("export gguf: --type ", opt.type, " packs rows in ", gguf::kQK_K,
             "-element blocks but ", e.name, " has rows of ", e.var.shape()[1],
             " (model.d_model and model.ffn_dim must be multiples of 256); export with --type "
             "f16 or f32");
  if (tm.tokenizer_proto.empty())
    fail(
        "export gguf: the model has no tokenizer (a GGUF file must carry its vocabulary); train on "
        "data "
        "written by `bitnet prepare` so that model.safetensors embeds tokenizer.model");
}

// IEEE binary16 bytes of x[0..n), round to nearest even.
std::vector<uint8_t> f16_bytes(const float* x, int64_t n) {
  std::vector<uint8_t> bytes(size_t(n) * 2);
  for (int64_t i = 0; i < n; ++i) {
    const uint16_t h = gguf::f32_to_f16(x[i]);
    std::memcpy(bytes.data() + 2 * i, &h, 2);
  }
  return bytes;
}

// A BitLinear weight as the GGUF tensor bytes of type t: the ternarized values Wq = c/s (F32, or
// F16 rounded to nearest even) or the codes c packed in TQ2_0 / TQ1_0 blocks with d = a.
std::vector<uint8_t> bitlinear_bytes(const autograd::Tensor& t, gguf::TensorType type) {
  const int64_t n = t.numel();
  std::vector<float> wq(static_cast<size_t>(n));
  std::vector<int8_t> codes(static_cast<size_t>(n));
  const float a = quant::ternary_absmean(t.data(), n, wq.data(), codes.data());
  switch (type) {
    case gguf::TensorType::TQ2_0:
      return gguf::pack_tq2_0(codes.data(), n, a);
    case gguf::TensorType::TQ1_0:
      return gguf::pack_tq1_0(codes.data(), n, a);
    case gguf::TensorType::F16:
      return f16_bytes(wq.data(), n);
    case gguf::TensorType::F32:
      break;
  }
  std::vector<uint8_t> bytes(wq.size() * 4);
  std::memcpy(bytes.data(), wq.data(), bytes.size());
  return bytes;
}

std::vector<uint8_t> embedding_bytes(const autograd::Tensor& t, gguf::TensorType type) {
  return type == gguf::TensorType::F32 ? f32_bytes(t) : f16_bytes(t.data(), t.numel());
}

uint32_t file_type(gguf::TensorType t) {  // llama_ftype: ALL_F32, MOSTLY_F16, _TQ1_0, _TQ2_0
  switch (t) {
    case gguf::TensorType::F16:
      return 1;
    case gguf::TensorType::TQ1_0:
      return 36;
    case gguf::TensorType::TQ2_0:
      return 37;
    case gguf::TensorType::F32:
      break;
  }
  return 0;
}

ExportResult export_gguf(const TrainedModel& tm, const fs::path& path, const ExportOptions& opt) {
  const GgufPlan plan = gguf_plan(opt);
  check_gguf_target(tm, opt, plan);
  const Vocab vocab = load_vocab(tm, "gguf");
  const nn::BitNetLM& m = *tm.model;
  const nn::ModelConfig& c = m.config();
  const std::string& A = plan.arch;

  gguf::Writer w(32);
  w.add_string("general.architecture", A);
  w.add_string("general.name", opt.name.empty() ? "bitnet-a4.8" : opt.name);
  w.add_u32("general.alignment", w.alignment());
  w.add_u32("general.file_type", file_type(plan.weights));
  w.add_u32(A + ".vocab_size", uint32_t(c.vocab_size));
  w.add_u32(A + ".context_length", uint32_t(context_length(tm, opt)));
  w.add_u32(A + ".embedding_length", uint32_t(c.d_model));
  w.add_u32(A + ".block_count", uint32_t(c.n_layers));
  w.add_u32(A + ".feed_forward_length", uint32_t(c.ffn_dim));
  w.add_u32(A + ".attention.head_count", uint32_t(c.n_heads));
  w.add_u32(A + ".attention.head_count_kv", uint32_t(c.kv_heads()));
  w.add_u32(A + ".rope.dimension_count", uint32_t(c.head_dim()));
  w.add_f32(A + ".rope.freq_base", c.rope_theta);
  w.add_f32(A + ".attention.layer_norm_rms_epsilon", c.norm_eps);
  // The FFN gate activation (HF hidden_act): read by llama.cpp's bitnet arch where it has the
  // feature (docs/EXPORT.md: absent means SiLU), informational for bitnet-b1.58.
  w.add_string(A + ".hidden_activation", c.glu == nn::Glu::ReLU2 ? "relu2" : "silu");

  // Vocabulary: the SentencePiece pieces as they are ("▁" for spaces), their scores and types
  // (SentencePiece's piece types 1..6 are llama.cpp's token types). Rows the tokenizer does not
  // cover (model vocab larger) are padded as unused tokens.
  std::vector<std::string> tokens;
  std::vector<float> scores;
  std::vector<int32_t> types;
  const int n_pieces = vocab.tok.vocab_size();
  for (int64_t id = 0; id < c.vocab_size; ++id) {
    if (id < n_pieces) {
      tokens.push_back(vocab.tok.piece(int32_t(id)));
      scores.push_back(vocab.tok.score(int32_t(id)));
      types.push_back(vocab.tok.type(int32_t(id)));
    } else {
      tokens.push_back("[PAD" + std::to_string(id) + "]");
      scores.push_back(0.0f);
      types.push_back(5);
    }
  }
  w.add_string("tokenizer.ggml.model", "llama");
  w.add_string_array("tokenizer.ggml.tokens", tokens);
  w.add_f32_array("tokenizer.ggml.scores", scores);
  w.add_i32_array("tokenizer.ggml.token_type", types);
  if (vocab.tok.bos_id() >= 0)
    w.add_u32("tokenizer.ggml.bos_token_id", uint32_t(vocab.tok.bos_id()));
  if (vocab.tok.eos_id() >= 0)
    w.add_u32("tokenizer.ggml.eos_token_id", uint32_t(vocab.tok.eos_id()));
  if (vocab.tok.unk_id() >= 0)
    w.add_u32("tokenizer.ggml.unknown_token_id", uint32_t(vocab.tok.unk_id()));
  w.add_bool("tokenizer.ggml.add_bos_token", true);
  w.add_bool("tokenizer.ggml.add_eos_token", false);
  w.add_bool("tokenizer.ggml.add_space_prefix", vocab.norm.add_dummy_prefix);
  w.add_bool("tokenizer.ggml.remove_extra_whitespaces", vocab.norm.remove_extra_whitespaces);

  // Tensors: HF registration order (embedding, per layer, final norm, lm_head). A row-major
  // [out, in] matrix is ggml ne = {in, out} with the same bytes; no q/k permutation (bitnet.cpp
  // uses NEOX RoPE for this arch, i.e. rotate-half as in our model and in transformers).
  for (const auto& e : m.params().entries()) {
    const std::string name = gguf_tensor_name(e.name);
    BN_CHECK(!name.empty(), "export gguf", "no GGUF name for parameter ", e.name);
    const autograd::Tensor t = e.var.value();
    std::vector<int64_t> ne = t.shape().vec();
    std::reverse(ne.begin(), ne.end());
    if (is_bitlinear_weight(e.name))
      w.add_tensor(name, ne, plan.weights, bitlinear_bytes(t, plan.weights));
    else if (name == "token_embd.weight")
      w.add_tensor(name, ne, plan.embedding, embedding_bytes(t, plan.embedding));
    else
      w.add_tensor(name, ne, gguf::TensorType::F32, f32_bytes(t));
  }

  ExportResult r;
  r.warnings = plan.notes;
  if (path.has_parent_path()) {
    std::error_code ec;
    fs::create_directories(path.parent_path(), ec);
  }
  w.write(path.string());
  r.files.push_back(path.string());
  if (!c.tie_embeddings)
    r.warnings.push_back(
        "untied lm_head written as `output`: bitnet.cpp's bitnet-b1.58 graph ignores it "
        "(--allow-untied-output)");
  if (plan.target == "llama.cpp" && c.glu == nn::Glu::ReLU2)
    r.warnings.push_back(std::string("bitnet.hidden_activation = relu2 written; ") + kLlamaCppRead +
                         " and earlier ignore the key and compute SiLU gating (wrong logits for "
                         "this ReLU² model): use a llama.cpp that reads it (docs/EXPORT.md), or "
                         "--target bitnet.cpp");
  if (vocab.norm.name != "identity")
    r.warnings.push_back("tokenizer normalizer is '" + vocab.norm.name +
                         "': llama.cpp's SPM tokenizer applies none");
  return r;
}

}  // namespace

GgufPlan gguf_plan(const ExportOptions& opt) {
  GgufPlan p;
  p.target = opt.target;
  if (!opt.arch.empty()) {
    if (opt.arch == "bitnet")
      p.target = "llama.cpp";
    else if (opt.arch == "bitnet-b1.58")
      p.target = "bitnet.cpp";
    else
      fail("export gguf: unknown --arch '", opt.arch,
           "' (--arch is deprecated: use --target llama.cpp for arch bitnet, --target bitnet.cpp "
           "for arch bitnet-b1.58)");
    p.notes.push_back("--arch " + opt.arch + " is deprecated: use --target " + p.target);
  }
  if (p.target == "llama.cpp")
    p.arch = "bitnet";
  else if (p.target == "bitnet.cpp")
    p.arch = "bitnet-b1.58";
  else
    fail("export gguf: unknown --target '", p.target, "' (llama.cpp or bitnet.cpp)");
  const std::string type = opt.f16 && opt.type == "f32" ? "f16" : opt.type;
  if (opt.f16 && type != "f16")
    fail("export gguf: --f16 (= --type f16) contradicts --type ", opt.type, "; pass one of them");
  if (type == "f32")
    p.weights = gguf::TensorType::F32;
  else if (type == "f16")
    p.weights = gguf::TensorType::F16;
  else if (type == "tq2_0")
    p.weights = gguf::TensorType::TQ2_0;
  else if (type == "tq1_0")
    p.weights = gguf::TensorType::TQ1_0;
  else
    fail("export gguf: unknown --type '", opt.type, "' (f32, f16, tq2_0, tq1_0)");
  if (opt.embedding_type == "f32")
    p.embedding = gguf::TensorType::F32;
  else if (opt.embedding_type == "f16")
    p.embedding = gguf::TensorType::F16;
  else
    fail("export gguf: unknown --embedding-type '", opt.embedding_type,
         "' (f32 or f16: the tied embedding is also the output matrix)");
  return p;
}

ExportFormat parse_export_format(const std::string& s) {
  if (s == "hf") return ExportFormat::HF;
  if (s == "hf-offline") return ExportFormat::HFOffline;
  if (s == "gguf") return ExportFormat::GGUF;
  if (s == "compact") return ExportFormat::Compact;
  fail("export: unknown format '", s, "' (one of hf, hf-offline, gguf, compact)");
}

std::string to_string(ExportFormat f) {
  switch (f) {
    case ExportFormat::HF:
      return "hf";
    case ExportFormat::HFOffline:
      return "hf-offline";
    case ExportFormat::GGUF:
      return "gguf";
    case ExportFormat::Compact:
      return "compact";
  }
  return "?";
}

std::vector<uint8_t> pack_ternary(const int8_t* codes, int64_t out, int64_t in) {
  BN_CHECK(out % 4 == 0, "pack_ternary", "out ", out, " is not divisible by 4");
  const int64_t R = out / 4;
  std::vector<uint8_t> p(size_t(R * in), 0);
  for (int64_t i = 0; i < 4; ++i)
    for (int64_t r = 0; r < R; ++r)
      for (int64_t j = 0; j < in; ++j) {
        const int8_t c = codes[(i * R + r) * in + j];
        BN_CHECK(c >= -1 && c <= 1, "pack_ternary", "code ", int(c), " at row ", i * R + r,
                 " is not ternary");
        p[size_t(r * in + j)] |= uint8_t((c + 1) << (2 * i));
      }
  return p;
}

std::vector<int8_t> unpack_ternary(const uint8_t* packed, int64_t out, int64_t in) {
  BN_CHECK(out % 4 == 0, "unpack_ternary", "out ", out, " is not divisible by 4");
  const int64_t R = out / 4;
  std::vector<int8_t> c(size_t(out * in));
  for (int64_t i = 0; i < 4; ++i)
    for (int64_t r = 0; r < R; ++r)
      for (int64_t j = 0; j < in; ++j)
        c[size_t((i * R + r) * in + j)] = int8_t(int((packed[r * in + j] >> (2 * i)) & 3) - 1);
  return c;
}

bool is_bitlinear_weight(const std::string& n) {
  const auto t = nn::find_tensor(n);
  return t && t->ternary();
}

std::string gguf_tensor_name(const std::string& n) {
  const auto t = nn::find_tensor(n);
  return t ? t->gguf : std::string();
}

ExportResult export_model(const TrainedModel& tm, const std::string& out,
                          const ExportOptions& opt) {
  BN_CHECK(tm.model, "export", "no model loaded");
  BN_CHECK(!out.empty(), "export", "empty output path");
  switch (opt.format) {
    case ExportFormat::HF:
      return export_hf(tm, out, opt, false);
    case ExportFormat::HFOffline:
      return export_hf(tm, out, opt, true);
    case ExportFormat::GGUF:
      return export_gguf(tm, out, opt);
    case ExportFormat::Compact: {
      const CompactInfo info = save_compact(out, tm, CompactOptions{opt.fp16_embeddings});
      char note[160];
      std::snprintf(note, sizeof note,
                    "compact: %lld bytes; ternary weights %.2fx smaller than their fp32 latents",
                    (long long)info.file_bytes, info.ternary_ratio());
      return ExportResult{{out}, {note}};
    }
  }
  fail("export: unknown format");
}

int run_export(const std::string& model, const std::string& out, const ExportOptions& opt,
               const std::string& reference, int64_t reference_len) {
  const TrainedModel tm = load_trained_model(model);
  const ExportResult r = export_model(tm, out, opt);
  for (const auto& f : r.files) std::printf("wrote %s\n", f.c_str());
  for (const auto& w : r.warnings) std::printf("note: %s\n", w.c_str());
  if (!reference.empty()) {
    write_reference_logits(tm, reference, reference_tokens(tm, reference_len));
    std::printf("wrote %s (reference logits, %lld tokens)\n", reference.c_str(),
                (long long)reference_len);
  }
  return 0;
}

static const char* kReferenceText =
    "The quick brown fox jumps over the lazy dog. 1234 ternary weights!";

std::vector<int32_t> reference_tokens(const TrainedModel& tm, int64_t n) {
  BN_CHECK(n >= 1, "reference_tokens", "need n >= 1, got ", n);
  const int64_t V = tm.model->config().vocab_size;
  std::vector<int32_t> base;
  if (!tm.tokenizer_proto.empty()) {
    const data::Tokenizer t = data::Tokenizer::from_serialized(tm.tokenizer_proto);
    if (t.bos_id() >= 0) base.push_back(t.bos_id());
    for (int32_t id : t.encode(kReferenceText)) base.push_back(id);
  }
  std::vector<int32_t> out;
  for (int64_t i = 0; i < n; ++i)
    out.push_back(base.empty() ? int32_t((i * 37 + 11) % V) : base[size_t(i) % base.size()]);
  for (int32_t id : out)
    BN_CHECK(id >= 0 && id < V, "reference_tokens", "token ", id, " outside vocab ", V);
  return out;
}

void write_reference_logits(const TrainedModel& tm, const std::string& path,
                            std::span<const int32_t> tokens) {
  BN_CHECK(!tokens.empty(), "write_reference_logits", "no tokens");
  nn::BitNetLM& m = *tm.model;
  const nn::ActMode saved = m.mode();
  const int64_t T = int64_t(tokens.size());
  std::vector<NamedBlob> blobs;
  {
    std::vector<uint8_t> ids(tokens.size() * 4);
    std::memcpy(ids.data(), tokens.data(), ids.size());
    blobs.push_back({"input_ids", "I32", {1, T}, std::move(ids)});
  }
  autograd::NoGradGuard ng;
  try {
    m.set_mode(nn::ActMode::W158A8);
    blobs.push_back(autograd::blob_f32("logits.w158a8", m.logits(tokens, 1, T).value()));
    m.set_mode(saved);
    blobs.push_back(autograd::blob_f32("logits.trained", m.logits(tokens, 1, T).value()));
  } catch (...) {
    m.set_mode(saved);
    throw;
  }
  if (!tm.tokenizer_proto.empty()) {
    const data::Tokenizer t = data::Tokenizer::from_serialized(tm.tokenizer_proto);
    const std::string text = kReferenceText;
    blobs.push_back({"tokenizer.text",
                     "U8",
                     {int64_t(text.size())},
                     std::vector<uint8_t>(text.begin(), text.end())});
    const std::vector<int32_t> ids = t.encode(text);
    std::vector<uint8_t> b(ids.size() * 4);
    if (!ids.empty()) std::memcpy(b.data(), ids.data(), b.size());
    blobs.push_back({"tokenizer.ids", "I32", {int64_t(ids.size())}, std::move(b)});
  }
  autograd::write_safetensors(path, blobs,
                              {{"format", "pt"},
                               {"trained_mode", nn::to_string(saved)},
                               {"step", std::to_string(tm.step)}});
}

}  // namespace trainers::formats
