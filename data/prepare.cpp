// Corpus preparation: scan the corpus, split documents, sample and train the tokenizer, tokenize
// in parallel into resumable shards, write the index.
#include "data/prepare.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include <omp.h>

#include "autograd/error.h"
#include "autograd/random.h"
#include "data/tokens.h"

namespace data {

namespace fs = std::filesystem;
using nlohmann::json;

namespace {

constexpr size_t kChunkBytes = size_t(8) << 20;  // text tokenized per parallel step
constexpr const char* kFormat = "bitnet-prepare-2";
constexpr const char* kSplits[2] = {"train", "val"};

using Clock = std::chrono::steady_clock;
double since(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

// Seeded selection sampling: exactly `nval` of `docs` documents are validation, decided in order.
class Splitter {
 public:
  Splitter(int64_t docs, int64_t nval, uint64_t seed)
      : docs_(docs), left_(nval), rng_(seed * 0x9E3779B97F4A7C15ULL + 0x5eed) {}
  bool val(int64_t doc) {
    BN_CHECK(doc == next_ && doc < docs_, "prepare", "document ", doc, " out of order (expected ",
             next_, " of ", docs_, "): the corpus changed while read");
    const bool v = left_ > 0 && int64_t(rng_.below(uint64_t(docs_ - doc))) < left_;
    left_ -= v;
    ++next_;
    return v;
  }

 private:
  int64_t docs_, left_, next_ = 0;
  autograd::Rng rng_;
};

// Walks the corpus' pieces with each one's split (true = validation).
template <class F>
void for_each_piece(CorpusReader& rd, Splitter& sp, F&& f) {
  Piece p;
  bool val = false;
  while (rd.next(p)) {
    if (p.first) val = sp.val(p.doc);
    if (!f(p, val)) break;
  }
}

// Throttles progress calls to one per 8 MiB of input.
struct Reporter {
  const PrepareOptions& opt;
  const char* phase;
  uint64_t total;
  Clock::time_point t0 = Clock::now();
  uint64_t last = 0;
  void operator()(uint64_t bytes, int64_t tokens, bool force = false) {
    if (!opt.progress || (!force && bytes - last < kChunkBytes)) return;
    last = bytes;
    opt.progress({phase, bytes, total, tokens, since(t0)});
  }
};

struct Scan {
  int64_t docs = 0, lines = 0;
  uint64_t text_bytes = 0;
};

// Pass 1: documents, lines and text bytes; bad input goes to the log.
Scan scan(const std::vector<std::string>& files, const CorpusOptions& co, BadInputLog& log,
          Reporter rep) {
  Scan s;
  CorpusReader rd(files, co, &log);
  Piece p;
  while (rd.next(p)) {
    s.docs += p.first;
    s.lines += int64_t(p.lines.size());
    s.text_bytes += p.bytes;
    rep(rd.consumed(), 0);
  }
  rep(rd.consumed(), 0, true);
  return s;
}

void write_json(const fs::path& path, const json& j) {
  const fs::path tmp = path.string() + ".tmp";
  {
    std::ofstream f(tmp, std::ios::binary | std::ios::trunc);
    BN_CHECK(bool(f), "prepare", "cannot write ", tmp.string());
    f << j.dump(2, ' ', false, json::error_handler_t::replace) << '\n';
    f.close();
    BN_CHECK(!f.fail(), "prepare", "write failed for ", tmp.string());
  }
  std::error_code ec;
  fs::rename(tmp, path, ec);
  BN_CHECK(!ec, "prepare", "cannot rename ", tmp.string(), " to ", path.string(), ": ",
           ec.message());
}

// One split's output: complete shards in <out>/<name>/, the shard being written, and where in the
// corpus the first token that is in no complete shard comes from.
struct SplitOut {
  std::string name;
  fs::path out;
  int64_t shard_tokens = 0;
  uint64_t vocab = 0;
  uint32_t width = 2;
  std::vector<int64_t> shards;  // token counts of the complete shards
  std::unique_ptr<ShardWriter> w;
  int64_t resume_doc = 0, resume_off = 0;  // updated after every complete shard
  int64_t start_doc = 0, start_off = 0;    // where this session starts (fixed)
  int64_t docs = 0;
  int64_t single = 0;  // tokens of the finished <name>.bin (a split without a complete shard)

  static std::string shard_name(size_t k) {
    char b[32];
    std::snprintf(b, sizeof b, "%06zu.bin", k);
    return b;
  }
  int64_t tokens() const {
    int64_t t = (w ? int64_t(w->count()) : 0) + single;
    for (int64_t n : shards) t += n;
    return t;
  }
  const json* inputs = nullptr;  // identity()'s inputs
  // <out>/<name>/index.json: the shards, token counts, tokenizer, vocabulary and inputs.
  void write_index(bool complete) const {
    json idx;
    idx["format"] = "bitnet-shards-1";
    idx["complete"] = complete;
    idx["split"] = name;
    idx["tokens"] = tokens();
    idx["documents"] = docs;
    idx["vocab_size"] = vocab;
    idx["tokenizer"] = "../tokenizer.model";
    idx["shards"] = json::array();
    for (size_t k = 0; k < shards.size(); ++k)
      idx["shards"].push_back({{"file", shard_name(k)}, {"tokens", shards[k]}});
    idx["inputs"] = json::array();
    for (const auto& in : *inputs)
      idx["inputs"].push_back({{"path", in["path"]}, {"bytes", in["bytes"]}});
    write_json(out / name / "index.json", idx);
  }
  // Appends tokens of document `doc` starting at its token `off`; on_shard() after each shard.
  template <class F>
  void emit(const uint32_t* t, size_t n, int64_t doc, int64_t off, F&& on_shard) {
    while (n > 0) {
      if (!w) w = std::make_unique<ShardWriter>((out / (name + ".bin")).string(), vocab, width);
      const size_t m = std::min(n, size_t(shard_tokens - int64_t(w->count())));
      w->append(t, m);
      t += m, n -= m, off += int64_t(m);
      if (int64_t(w->count()) == shard_tokens) {
        fs::create_directories(out / name);
        w->finish((out / name / shard_name(shards.size())).string());
        w.reset();
        shards.push_back(shard_tokens);
        resume_doc = doc, resume_off = off;
        write_index(false);  // the directory is refused as data until it is complete
        on_shard();
      }
    }
  }
};

// Removes what an earlier run wrote for a split (its single file, its directory's shards/index).
void remove_split_outputs(const fs::path& out, const std::string& name) {
  std::error_code ec;
  fs::remove(out / (name + ".bin"), ec);
  fs::remove(out / (name + ".bin.tmp"), ec);
  const fs::path dir = out / name;
  if (!fs::is_directory(dir, ec)) return;
  for (const auto& e : fs::directory_iterator(dir, ec)) {
    const std::string f = e.path().filename().string();
    const bool shard =
        f.size() == 10 && f.compare(6, 4, ".bin") == 0 &&
        std::all_of(f.begin(), f.begin() + 6, [](char c) { return c >= '0' && c <= '9'; });
    if (shard || f == "index.json") fs::remove(e.path(), ec);
  }
  fs::remove(dir, ec);  // only if now empty
}

json bad_json(const BadInputLog& log) {
  json j;
  for (int k = 0; k < kBadKinds; ++k) j[to_string(BadKind(k))] = log.counts[size_t(k)];
  j["total"] = log.total();
  j["first"] = log.first;
  return j;
}

// What a resume must find unchanged: the inputs (path, size, modification time) and the options
// that shape the output (not threads or strict).
json identity(const PrepareOptions& opt, const std::vector<std::string>& files) {
  json in = json::array();
  auto stamp = [](const std::string& f) {
    std::error_code ec;
    const auto t = fs::last_write_time(f, ec);
    return json{{"path", f},
                {"bytes", fs::file_size(f, ec)},
                {"mtime", int64_t(t.time_since_epoch().count())}};
  };
  for (const auto& f : files) in.push_back(stamp(f));
  return {
      {"inputs", in},
      {"tokenizer_model", opt.tokenizer_model.empty() ? json(nullptr) : stamp(opt.tokenizer_model)},
      {"options",
       {{"val_fraction", opt.val_fraction},
        {"seed", opt.seed},
        {"brown_tags", opt.brown_tags},
        {"text_field", opt.text_field},
        {"shard_tokens", opt.shard_tokens},
        {"sample_bytes", opt.sample_bytes},
        {"tokenizer",
         {{"vocab_size", opt.tokenizer.vocab_size},
          {"model_type", opt.tokenizer.model_type},
          {"byte_fallback", opt.tokenizer.byte_fallback},
          {"normalization", opt.tokenizer.normalization},
          {"input_sentence_size", opt.tokenizer.input_sentence_size},
          {"num_threads", opt.tokenizer.num_threads},
          {"seed", opt.tokenizer.seed}}}}}};
}

// Pass 2: a sample of at most sample_bytes of the training documents' lines, spread evenly (every
// piece whose running share crosses an integer), one line per line.
void write_sample(const std::vector<std::string>& files, const CorpusOptions& co, Splitter sp,
                  double train_bytes, const PrepareOptions& opt, const std::string& path,
                  Reporter rep) {
  std::ofstream tx(path, std::ios::binary | std::ios::trunc);
  BN_CHECK(bool(tx), "prepare", "cannot write ", path);
  const double rate = std::min(1.0, double(opt.sample_bytes) / std::max(1.0, train_bytes));
  CorpusReader rd(files, co, nullptr);
  int64_t k = 0, written = 0;
  for_each_piece(rd, sp, [&](const Piece& p, bool val) {
    if (val) return true;
    const bool take = std::floor(double(k + 1) * rate) > std::floor(double(k) * rate);
    ++k;
    for (size_t i = 0; take && i < p.lines.size() && written < opt.sample_bytes; ++i) {
      tx << p.lines[i] << '\n';
      written += int64_t(p.lines[i].size()) + 1;
    }
    rep(rd.consumed(), 0);
    return written < opt.sample_bytes;
  });
  tx.close();
  BN_CHECK(!tx.fail(), "prepare", "write failed for ", path);
}

struct Stop {};  // stop_after_shards reached

}  // namespace

PrepareResult prepare(const PrepareOptions& opt) {
  BN_CHECK(!opt.inputs.empty(), "prepare", "no inputs given");
  BN_CHECK(!opt.out_dir.empty(), "prepare", "no output directory given");
  BN_CHECK(opt.val_fraction >= 0.0 && opt.val_fraction <= 0.5, "prepare", "val_fraction ",
           opt.val_fraction, " is outside [0, 0.5]");
  BN_CHECK(opt.shard_tokens >= 1, "prepare", "shard_tokens must be >= 1, got ", opt.shard_tokens);
  BN_CHECK(opt.sample_bytes >= 1, "prepare", "sample_bytes must be >= 1, got ", opt.sample_bytes);
  BN_CHECK(!opt.text_field.empty(), "prepare", "empty text_field");
  BN_CHECK(opt.threads >= 0, "prepare", "threads must be >= 0, got ", opt.threads);
  if (!opt.tokenizer_model.empty()) {
    std::error_code ec;
    BN_CHECK(fs::is_regular_file(opt.tokenizer_model, ec), "prepare",
             "tokenizer model not found: ", opt.tokenizer_model);
  }

  PrepareResult res;
  const std::vector<std::string> files = gather_inputs(opt.inputs);
  for (const auto& f : files) {
    std::error_code ec;
    res.input_bytes += fs::file_size(f, ec);
  }

  // Pass 1: count documents (the split needs the count) and find bad input.
  CorpusOptions co;
  co.text_field = opt.text_field;
  co.brown_tags = opt.brown_tags;
  const bool single_plain = files.size() == 1 && !is_json_lines(files[0]);
  co.plain = single_plain ? DocMode::PerBlock : DocMode::PerFile;
  res.bad.strict = opt.strict;
  Scan sc = scan(files, co, res.bad, Reporter{opt, "scan", res.input_bytes});
  if (single_plain && sc.docs == 1 && sc.lines > 1) {
    co.plain = DocMode::PerLine;  // one file without blank lines: its lines are the documents
    sc.docs = sc.lines;
  }
  if (sc.docs == 0) {
    std::ostringstream os;
    for (size_t i = 0; i < files.size() && i < 5; ++i) os << (i ? ", " : "") << files[i];
    if (files.size() > 5) os << ", ... (" << files.size() << " files)";
    autograd::fail("prepare: corpus is empty", opt.brown_tags ? " after stripping Brown tags" : "",
                   " (no non-blank lines) in ", os.str());
  }
  const int64_t D = sc.docs;
  int64_t nval = 0;
  if (opt.val_fraction > 0) {
    BN_CHECK(D >= 2, "prepare", "val_fraction ", opt.val_fraction,
             " needs at least 2 documents, the corpus has 1 (a single line in ", files.front(),
             "); use val_fraction 0 or add text");
    nval = std::clamp<int64_t>(std::llround(opt.val_fraction * double(D)), 1, D - 1);
  }
  const Splitter split0(D, nval, opt.seed);
  res.documents = D;

  {
    std::error_code ec;
    fs::create_directories(opt.out_dir, ec);
    BN_CHECK(!ec && fs::is_directory(opt.out_dir), "prepare", "cannot create output directory ",
             opt.out_dir, ec ? ": " + ec.message() : std::string());
  }
  const fs::path out(opt.out_dir);
  const fs::path meta_path = out / "meta.json";
  const std::string tok_path = (out / "tokenizer.model").string();
  const json ident = identity(opt, files);

  // An interrupted run of the same preparation: go on after its last complete shard.
  json old;
  {
    std::error_code ec;
    if (fs::exists(meta_path, ec) && fs::exists(tok_path, ec)) try {
        std::ifstream f(meta_path, std::ios::binary);
        old = json::parse(f);
        if (old.value("format", "") != kFormat || old.value("complete", true) ||
            old.value("identity", json()) != ident)
          old = json();
      } catch (const json::exception&) {
        old = json();
      }
  }
  const bool resume = !old.is_null();
  if (!resume) {
    std::error_code ec;
    fs::remove(meta_path, ec);  // no stale resume state while the tokenizer trains
    for (const char* s : kSplits) remove_split_outputs(out, s);
    if (opt.tokenizer_model.empty()) {
      // Pass 2: the tokenizer, trained on a bounded sample of the training documents.
      const std::string sample = (out / "train.txt").string();
      write_sample(files, co, split0, double(sc.text_bytes) * double(D - nval) / double(D), opt,
                   sample, Reporter{opt, "sample", res.input_bytes});
      Tokenizer::train({sample}, (out / "tokenizer").string(), opt.tokenizer);
    } else {
      ec.clear();
      if (!fs::exists(tok_path, ec) || !fs::equivalent(opt.tokenizer_model, tok_path, ec))
        fs::copy_file(opt.tokenizer_model, tok_path, fs::copy_options::overwrite_existing, ec);
      BN_CHECK(!ec, "prepare", "cannot copy ", opt.tokenizer_model, " to ", tok_path, ": ",
               ec.message());
    }
  }
  const Tokenizer tok = Tokenizer::load(tok_path);
  const int bos = tok.bos_id();
  const auto vocab = uint64_t(tok.vocab_size());

  SplitOut so[2];
  for (int s = 0; s < 2; ++s) {
    so[s].name = kSplits[s];
    so[s].out = out;
    so[s].shard_tokens = opt.shard_tokens;
    so[s].vocab = vocab;
    so[s].width = vocab <= 65536 ? 2 : 4;
    so[s].docs = s ? nval : D - nval;
    so[s].inputs = &ident["inputs"];
    if (!resume) continue;
    const json& st = old.at("splits").at(kSplits[s]);
    for (const auto& sh : st.at("shards")) so[s].shards.push_back(sh.at("tokens").get<int64_t>());
    so[s].resume_doc = so[s].start_doc = st.at("resume").at("doc").get<int64_t>();
    so[s].resume_off = so[s].start_off = st.at("resume").at("offset").get<int64_t>();
    for (size_t k = 0; k < so[s].shards.size(); ++k) {
      const fs::path f = out / kSplits[s] / SplitOut::shard_name(k);
      std::error_code ec;
      BN_CHECK(fs::file_size(f, ec) == 32 + uint64_t(so[s].shards[k]) * so[s].width && !ec,
               "prepare", "resuming: shard ", f.string(),
               " recorded as complete is missing or has the wrong size; remove ", opt.out_dir,
               "/meta.json to start afresh");
    }
    res.resumed_shards += int64_t(so[s].shards.size());
  }

  auto meta = [&](bool complete) {
    json m;
    m["format"] = kFormat;
    m["complete"] = complete;
    m["train_tokens"] = so[0].tokens();
    m["val_tokens"] = so[1].tokens();
    m["documents"] = D;
    m["train_documents"] = D - nval;
    m["val_documents"] = nval;
    m["vocab_size"] = vocab;
    m["bos_id"] = bos;
    m["eos_id"] = tok.eos_id();
    m["unk_id"] = tok.unk_id();
    m["tokenizer"] = "tokenizer.model";
    for (int s = 0; s < 2; ++s) {
      json sh = json::array();
      const bool dir = !so[s].shards.empty();
      for (size_t k = 0; k < so[s].shards.size(); ++k)
        sh.push_back({{"file", std::string(kSplits[s]) + "/" + SplitOut::shard_name(k)},
                      {"tokens", so[s].shards[k]}});
      if (complete && !dir && so[s].tokens() > 0)
        sh.push_back({{"file", std::string(kSplits[s]) + ".bin"}, {"tokens", so[s].tokens()}});
      m["splits"][kSplits[s]] = {
          {"path", complete && so[s].tokens() == 0 ? json(nullptr)
                   : dir                           ? json(kSplits[s])
                                                   : json(std::string(kSplits[s]) + ".bin")},
          {"tokens", so[s].tokens()},
          {"documents", so[s].docs},
          {"shards", sh},
          {"resume", {{"doc", so[s].resume_doc}, {"offset", so[s].resume_off}}}};
    }
    m["train_shard"] = m["splits"]["train"]["path"];
    m["val_shard"] = m["splits"]["val"]["path"];
    m["input_files"] = files;
    m["inputs"] = json::array();
    for (const auto& in : ident["inputs"])
      m["inputs"].push_back({{"path", in["path"]}, {"bytes", in["bytes"]}});
    m["input_bytes"] = res.input_bytes;
    m["bad_input"] = bad_json(res.bad);
    m["identity"] = ident;
    m["options"] = ident["options"];
    m["options"]["inputs"] = opt.inputs;
    m["options"]["strict"] = opt.strict;
    m["options"]["tokenizer_model"] = opt.tokenizer_model;
    write_json(meta_path, m);
    return m;
  };
  meta(false);  // from here on an interruption resumes without retraining the tokenizer

  // Pass 3: tokenize chunks of pieces in parallel, emit in corpus order.
  Reporter rep{opt, "tokenize", res.input_bytes};
  const int threads = opt.threads;
  int64_t new_shards = 0;
  auto on_shard = [&] {
    meta(false);
    if (opt.stop_after_shards > 0 && ++new_shards >= opt.stop_after_shards) throw Stop{};
  };
  CorpusReader rd(files, co, nullptr);
  Splitter sp = split0;
  std::vector<Piece> chunk;
  std::vector<char> chunk_val;
  std::vector<std::pair<size_t, size_t>> lines;  // (piece, line) of the chunk
  std::vector<std::vector<int>> enc;
  std::vector<uint32_t> toks;
  bool val = false;
  int64_t doc_off = 0;  // tokens of the current document emitted before the current piece
  try {
    Piece p;
    bool more = true;
    while (more) {
      chunk.clear(), chunk_val.clear(), lines.clear();
      size_t bytes = 0;
      while (bytes < kChunkBytes && (more = rd.next(p))) {
        if (p.first) val = sp.val(p.doc);
        if (p.doc < so[val].start_doc) continue;  // in the complete shards of the last run
        bytes += p.bytes;
        for (size_t l = 0; l < p.lines.size(); ++l) lines.emplace_back(chunk.size(), l);
        chunk.push_back(std::move(p));
        chunk_val.push_back(char(val));
      }
      enc.assign(lines.size(), {});
      std::string enc_error;
#pragma omp parallel for schedule(dynamic, 16) \
    num_threads(threads > 0 ? threads : omp_get_max_threads())
      for (int64_t i = 0; i < int64_t(lines.size()); ++i) {
        try {
          enc[size_t(i)] = tok.encode(chunk[lines[size_t(i)].first].lines[lines[size_t(i)].second]);
        } catch (const std::exception& e) {
#pragma omp critical(prepare_encode_error)
          if (enc_error.empty()) enc_error = e.what();
        }
      }
      if (!enc_error.empty()) autograd::fail("prepare: ", enc_error);
      size_t li = 0;
      for (size_t c = 0; c < chunk.size(); ++c) {
        const Piece& pc = chunk[c];
        SplitOut& s = so[int(chunk_val[c])];
        toks.clear();
        if (pc.first) {
          doc_off = 0;
          if (bos >= 0) toks.push_back(uint32_t(bos));
        }
        for (size_t l = 0; l < pc.lines.size(); ++l, ++li)
          for (int id : enc[li]) toks.push_back(uint32_t(id));
        int64_t skip = 0;
        if (pc.doc == s.start_doc)
          skip = std::clamp<int64_t>(s.start_off - doc_off, 0, int64_t(toks.size()));
        s.emit(toks.data() + skip, toks.size() - size_t(skip), pc.doc, doc_off + skip, on_shard);
        doc_off += int64_t(toks.size());
      }
      rep(rd.consumed(), so[0].tokens() + so[1].tokens());
    }
  } catch (const Stop&) {
    res.complete = false;
  }
  rep(rd.consumed(), so[0].tokens() + so[1].tokens(), true);

  res.train_tokens = so[0].tokens();
  res.val_tokens = so[1].tokens();
  if (!res.complete) {
    for (auto& s : so) s.w.reset();  // the partial shards are dropped, as by a kill
    res.train_shards = int64_t(so[0].shards.size());
    res.val_shards = int64_t(so[1].shards.size());
    return res;
  }
  // The last, partial shard of each split; a split without a complete shard is one <name>.bin.
  for (auto& s : so) {
    if (!s.shards.empty()) {
      if (s.w) {
        const int64_t n = int64_t(s.w->count());
        s.w->finish((out / s.name / SplitOut::shard_name(s.shards.size())).string());
        s.w.reset();
        s.shards.push_back(n);
      }
      s.write_index(true);
    } else if (s.w) {
      s.single = int64_t(s.w->count());
      s.w->finish();
      s.w.reset();
    }
  }
  for (auto& s : so)
    if (s.tokens() == 0) remove_split_outputs(out, s.name);  // no stale validation shard
  res.train_shards =
      so[0].shards.empty() ? int64_t(so[0].tokens() > 0) : int64_t(so[0].shards.size());
  res.val_shards =
      so[1].shards.empty() ? int64_t(so[1].tokens() > 0) : int64_t(so[1].shards.size());
  meta(true);
  return res;
}

}  // namespace data
