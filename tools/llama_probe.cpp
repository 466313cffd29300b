// A probe of upstream llama.cpp (linked against its libllama, built by scripts/llama_cpp): loads a
// GGUF file and prints, for given token ids, the per-position logits (to a raw f32 file), the
// perplexity of the ids and a greedy continuation. Used by tests/trainers/formats/test_llama_cpp.
//
//   llama_probe MODEL.gguf --tokens 1,5,9,... [--logits OUT.f32] [--greedy N] [--threads N]
//               [--kv f32|f16]
//
// The KV cache is F32 by default (llama.cpp's own default is F16, which rounds K and V) and flash
// attention is off, so that the comparison sees the weights and the matmuls, not the cache.
// Output lines (stdout): "arch A", "meta KEY VALUE" for a few keys, "n_vocab V", "n_tokens T",
// "nll X" (mean -log p(token[t+1] | tokens[..t]) over t = 0..T-2, in nats, double precision
// log-softmax of the runtime's logits) and "ppl exp(X)", "greedy id id ..." (N tokens continued
// greedily from the ids), and "ok" last. Failures print "error: ..." on stderr and exit 1.
#include <llama.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

namespace {

[[noreturn]] void die(const std::string& m) {
  std::fprintf(stderr, "error: %s\n", m.c_str());
  std::exit(1);
}

std::vector<llama_token> parse_ids(const std::string& s) {
  std::vector<llama_token> ids;
  size_t p = 0;
  while (p < s.size()) {
    size_t q = s.find(',', p);
    if (q == std::string::npos) q = s.size();
    ids.push_back(llama_token(std::stol(s.substr(p, q - p))));
    p = q + 1;
  }
  return ids;
}

std::string meta(const llama_model* m, const char* key) {
  char buf[256];
  const int n = llama_model_meta_val_str(m, key, buf, sizeof buf);
  return n < 0 ? std::string("(absent)") : std::string(buf);
}

void quiet_log(ggml_log_level level, const char* text, void*) {
  if (level >= GGML_LOG_LEVEL_WARN) std::fputs(text, stderr);
}

// Decodes ids[0..n) at positions pos.. in sequence 0; logits for every position when all_logits.
void decode(llama_context* ctx, const llama_token* ids, int n, int pos, bool all_logits) {
  llama_batch b = llama_batch_init(n, 0, 1);
  for (int i = 0; i < n; ++i) {
    b.token[i] = ids[i];
    b.pos[i] = pos + i;
    b.n_seq_id[i] = 1;
    b.seq_id[i][0] = 0;
    b.logits[i] = all_logits || i == n - 1;
  }
  b.n_tokens = n;
  const int rc = llama_decode(ctx, b);
  llama_batch_free(b);
  if (rc != 0) die("llama_decode returned " + std::to_string(rc));
}

int argmax(const float* x, int n) {
  int best = 0;
  for (int i = 1; i < n; ++i)
    if (x[i] > x[best]) best = i;
  return best;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) die("usage: llama_probe MODEL.gguf --tokens 1,2,3 [--logits F] [--greedy N]");
  std::string model_path = argv[1], logits_path;
  std::vector<llama_token> ids;
  int greedy = 0, threads = 2;
  std::string kv = "f32";
  for (int i = 2; i < argc; ++i) {
    const std::string a = argv[i];
    if (i + 1 >= argc) die("missing value after " + a);
    if (a == "--tokens")
      ids = parse_ids(argv[++i]);
    else if (a == "--logits")
      logits_path = argv[++i];
    else if (a == "--greedy")
      greedy = std::atoi(argv[++i]);
    else if (a == "--threads")
      threads = std::atoi(argv[++i]);
    else if (a == "--kv")
      kv = argv[++i];
    else
      die("unknown argument " + a);
  }
  if (ids.size() < 2) die("need at least 2 token ids (--tokens)");
  if (kv != "f32" && kv != "f16") die("--kv takes f32 or f16, not " + kv);

  llama_log_set(quiet_log, nullptr);
  llama_backend_init();
  llama_model_params mp = llama_model_default_params();
  mp.n_gpu_layers = 0;
  llama_model* model = llama_model_load_from_file(model_path.c_str(), mp);
  if (!model) die("llama_model_load_from_file failed for " + model_path);
  std::printf("arch %s\n", meta(model, "general.architecture").c_str());
  for (const char* k : {"bitnet.hidden_activation", "general.file_type"})
    std::printf("meta %s %s\n", k, meta(model, k).c_str());
  const int V = llama_vocab_n_tokens(llama_model_get_vocab(model));
  const int T = int(ids.size());
  std::printf("n_vocab %d\nn_tokens %d\nkv %s\n", V, T, kv.c_str());

  llama_context_params cp = llama_context_default_params();
  cp.n_ctx = uint32_t(T + greedy + 8);
  cp.n_batch = cp.n_ubatch = uint32_t(T + greedy + 8);
  cp.n_threads = cp.n_threads_batch = threads;
  cp.no_perf = true;
  cp.type_k = cp.type_v = kv == "f32" ? GGML_TYPE_F32 : GGML_TYPE_F16;
  cp.flash_attn_type = LLAMA_FLASH_ATTN_TYPE_DISABLED;
  llama_context* ctx = llama_init_from_model(model, cp);
  if (!ctx) die("llama_init_from_model failed");

  decode(ctx, ids.data(), T, 0, true);
  std::vector<float> all(size_t(T) * size_t(V));
  double nll = 0;
  for (int t = 0; t < T; ++t) {
    const float* l = llama_get_logits_ith(ctx, t);
    if (!l) die("no logits at position " + std::to_string(t));
    std::memcpy(all.data() + size_t(t) * size_t(V), l, size_t(V) * sizeof(float));
    if (t + 1 < T) {
      double mx = l[0];
      for (int v = 1; v < V; ++v) mx = std::max(mx, double(l[v]));
      double z = 0;
      for (int v = 0; v < V; ++v) z += std::exp(double(l[v]) - mx);
      nll += -(double(l[ids[size_t(t) + 1]]) - mx - std::log(z));
    }
  }
  nll /= double(T - 1);
  std::printf("nll %.9g\nppl %.9g\n", nll, std::exp(nll));
  if (!logits_path.empty()) {
    FILE* f = std::fopen(logits_path.c_str(), "wb");
    if (!f || std::fwrite(all.data(), sizeof(float), all.size(), f) != all.size())
      die("cannot write " + logits_path);
    std::fclose(f);
    std::printf("logits %s\n", logits_path.c_str());
  }

  if (greedy > 0) {  // continue the ids greedily: a fresh KV cache, the prompt, then 1 token a step
    llama_memory_clear(llama_get_memory(ctx), true);
    decode(ctx, ids.data(), T, 0, false);
    std::printf("greedy");
    int pos = T;
    for (int s = 0; s < greedy; ++s) {
      const llama_token next = llama_token(argmax(llama_get_logits_ith(ctx, -1), V));
      std::printf(" %d", int(next));
      decode(ctx, &next, 1, pos++, false);
    }
    std::printf("\n");
  }
  llama_free(ctx);
  llama_model_free(model);
  llama_backend_free();
  std::printf("ok\n");
  return 0;
}
