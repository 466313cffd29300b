// Corpus preparation: gather text, split documents train/val, train the tokenizer, write shards.
#include "data/prepare.h"

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <numeric>
#include <sstream>

#include "autograd/error.h"
#include "autograd/random.h"
#include "data/tokens.h"

namespace data {

namespace fs = std::filesystem;

namespace {

bool is_space(char c) {
  return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\v' || c == '\f';
}

bool blank(const std::string& s) {
  return std::all_of(s.begin(), s.end(), [](char c) { return is_space(c); });
}

// The "non-text files skipped" rule (prepare.h), applied to files found inside directories.
bool skipped_name(const std::string& name) {
  auto ends_with = [&](const char* suf) {
    const std::string s(suf);
    return name.size() >= s.size() && name.compare(name.size() - s.size(), s.size(), s) == 0;
  };
  return name.empty() || name[0] == '.' || name == "README" || name.rfind("README.", 0) == 0 ||
         name == "CONTENTS" || name == "cats.txt" || ends_with(".pickle") || ends_with(".json");
}

std::vector<std::string> gather_files(const std::vector<std::string>& inputs) {
  std::vector<std::string> files;
  for (const auto& in : inputs) {
    std::error_code ec;
    if (fs::is_directory(in, ec)) {
      std::vector<std::string> found;
      for (const auto& e : fs::directory_iterator(in, ec)) {
        std::error_code ec2;
        if (!e.is_regular_file(ec2)) continue;
        if (skipped_name(e.path().filename().string())) continue;
        found.push_back(e.path().string());
      }
      if (ec) autograd::fail("prepare: cannot list directory ", in, ": ", ec.message());
      if (found.empty()) autograd::fail("prepare: input directory ", in, " contains no text files");
      std::sort(found.begin(), found.end());
      files.insert(files.end(), found.begin(), found.end());
    } else if (fs::is_regular_file(in, ec)) {
      files.push_back(in);
    } else if (fs::exists(in, ec)) {
      autograd::fail("prepare: input ", in, " is neither a regular file nor a directory");
    } else {
      autograd::fail("prepare: input not found: ", in);
    }
  }
  return files;
}

using Doc = std::vector<std::string>;  // cleaned, non-empty lines

// Reads one file as cleaned lines; blank lines end a block when `blocks` is set (each block is
// then one document), otherwise the whole file is one document. Empty documents are dropped.
void read_documents(const std::string& path, bool brown, bool blocks, std::vector<Doc>& docs) {
  std::ifstream in(path, std::ios::binary);
  if (!in) autograd::fail("prepare: cannot open ", path);
  Doc cur;
  std::string line;
  while (std::getline(in, line)) {
    if (!line.empty() && line.back() == '\r') line.pop_back();
    if (brown) line = strip_brown_tags(line);
    if (blank(line)) {
      if (blocks && !cur.empty()) docs.push_back(std::move(cur)), cur.clear();
      continue;
    }
    cur.push_back(std::move(line));
  }
  if (in.bad()) autograd::fail("prepare: read error in ", path);
  if (!cur.empty()) docs.push_back(std::move(cur));
}

}  // namespace

std::string strip_brown_tags(const std::string& line) {
  std::string out;
  size_t i = 0;
  while (i < line.size()) {
    while (i < line.size() && is_space(line[i])) ++i;
    if (i >= line.size()) break;
    size_t j = i;
    while (j < line.size() && !is_space(line[j])) ++j;
    std::string tok = line.substr(i, j - i);
    i = j;
    const size_t slash = tok.rfind('/');
    if (slash != std::string::npos) tok.resize(slash);
    if (tok.empty()) continue;
    if (tok == "``" || tok == "''") tok = "\"";
    if (!out.empty()) out += ' ';
    out += tok;
  }
  return out;
}

PrepareResult prepare(const PrepareOptions& opt) {
  BN_CHECK(!opt.inputs.empty(), "prepare", "no inputs given");
  BN_CHECK(!opt.out_dir.empty(), "prepare", "no output directory given");
  BN_CHECK(opt.val_fraction >= 0.0 && opt.val_fraction <= 0.5, "prepare", "val_fraction ",
           opt.val_fraction, " is outside [0, 0.5]");

  const std::vector<std::string> files = gather_files(opt.inputs);
  std::vector<Doc> docs;
  for (const auto& f : files) read_documents(f, opt.brown_tags, files.size() == 1, docs);
  if (files.size() == 1 && docs.size() == 1 && docs[0].size() > 1) {
    // One file without blank lines (e.g. one sentence per line): its lines are the documents.
    Doc lines = std::move(docs[0]);
    docs.clear();
    for (auto& l : lines) docs.push_back(Doc{std::move(l)});
  }
  if (docs.empty()) {
    std::ostringstream os;
    for (size_t i = 0; i < files.size() && i < 5; ++i) os << (i ? ", " : "") << files[i];
    if (files.size() > 5) os << ", ... (" << files.size() << " files)";
    autograd::fail("prepare: corpus is empty", opt.brown_tags ? " after stripping Brown tags" : "",
                   " (no non-blank lines) in ", os.str());
  }

  // Split documents: a seeded permutation picks the validation ones; both keep corpus order.
  const size_t D = docs.size();
  size_t nval = 0;
  if (opt.val_fraction > 0) {
    BN_CHECK(D >= 2, "prepare", "val_fraction ", opt.val_fraction,
             " needs at least 2 documents, the corpus has 1 (a single line in ", files.front(),
             "); use val_fraction 0 or add text");
    nval = size_t(std::llround(opt.val_fraction * double(D)));
    nval = std::clamp<size_t>(nval, 1, D - 1);
  }
  std::vector<size_t> perm(D);
  std::iota(perm.begin(), perm.end(), size_t(0));
  autograd::Rng rng(opt.seed * 0x9E3779B97F4A7C15ULL + 0x5eed);
  for (size_t k = D - 1; k >= 1; --k) std::swap(perm[k], perm[rng.below(k + 1)]);
  std::vector<char> is_val(D, 0);
  for (size_t k = 0; k < nval; ++k) is_val[perm[k]] = 1;

  {
    std::error_code ec;
    fs::create_directories(opt.out_dir, ec);
    BN_CHECK(!ec && fs::is_directory(opt.out_dir), "prepare", "cannot create output directory ",
             opt.out_dir, ec ? ": " + ec.message() : std::string());
  }
  const fs::path out(opt.out_dir);

  // Training text for the tokenizer: the training documents only, one line per line.
  const std::string train_txt = (out / "train.txt").string();
  {
    std::ofstream tx(train_txt, std::ios::binary | std::ios::trunc);
    BN_CHECK(bool(tx), "prepare", "cannot write ", train_txt);
    for (size_t d = 0; d < D; ++d)
      if (!is_val[d])
        for (const auto& l : docs[d]) tx << l << '\n';
    tx.close();
    BN_CHECK(!tx.fail(), "prepare", "write failed for ", train_txt);
  }
  const std::string prefix = (out / "tokenizer").string();
  Tokenizer::train({train_txt}, prefix, opt.tokenizer);
  const Tokenizer tok = Tokenizer::load(prefix + ".model");
  const int bos = tok.bos_id();

  // Encode every line (in parallel; the result is assembled in corpus order).
  std::vector<std::pair<size_t, size_t>> lines;  // (document, line)
  for (size_t d = 0; d < D; ++d)
    for (size_t l = 0; l < docs[d].size(); ++l) lines.emplace_back(d, l);
  std::vector<std::vector<int32_t>> enc(lines.size());
  std::string enc_error;
#pragma omp parallel for schedule(dynamic, 64)
  for (int64_t i = 0; i < int64_t(lines.size()); ++i) {
    try {
      enc[size_t(i)] = tok.encode(docs[lines[size_t(i)].first][lines[size_t(i)].second]);
    } catch (const std::exception& e) {
#pragma omp critical(prepare_encode_error)
      if (enc_error.empty()) enc_error = e.what();
    }
  }
  if (!enc_error.empty()) autograd::fail("prepare: ", enc_error);

  std::vector<uint32_t> train, val;
  size_t li = 0;
  for (size_t d = 0; d < D; ++d) {
    auto& dst = is_val[d] ? val : train;
    if (bos >= 0) dst.push_back(uint32_t(bos));
    for (size_t l = 0; l < docs[d].size(); ++l, ++li)
      for (int32_t id : enc[li]) dst.push_back(uint32_t(id));
  }
  const auto vocab = uint64_t(tok.vocab_size());
  write_shard((out / "train.bin").string(), train, vocab);
  const fs::path val_path = out / "val.bin";
  if (nval > 0) {
    write_shard(val_path.string(), val, vocab);
  } else {
    std::error_code ec;
    fs::remove(val_path, ec);  // no stale validation shard from an earlier run
  }

  PrepareResult res;
  res.train_tokens = int64_t(train.size());
  res.val_tokens = int64_t(val.size());
  res.documents = int64_t(D);

  nlohmann::json meta;
  meta["format"] = "bitnet-prepare-1";
  meta["train_tokens"] = res.train_tokens;
  meta["val_tokens"] = res.val_tokens;
  meta["documents"] = res.documents;
  meta["train_documents"] = D - nval;
  meta["val_documents"] = nval;
  meta["vocab_size"] = vocab;
  meta["bos_id"] = bos;
  meta["eos_id"] = tok.eos_id();
  meta["unk_id"] = tok.unk_id();
  meta["tokenizer"] = "tokenizer.model";
  meta["train_shard"] = "train.bin";
  meta["val_shard"] = nval > 0 ? nlohmann::json("val.bin") : nlohmann::json(nullptr);
  meta["input_files"] = files;
  meta["options"] = {{"inputs", opt.inputs},
                     {"val_fraction", opt.val_fraction},
                     {"seed", opt.seed},
                     {"brown_tags", opt.brown_tags},
                     {"tokenizer",
                      {{"vocab_size", opt.tokenizer.vocab_size},
                       {"model_type", opt.tokenizer.model_type},
                       {"byte_fallback", opt.tokenizer.byte_fallback},
                       {"normalization", opt.tokenizer.normalization},
                       {"input_sentence_size", opt.tokenizer.input_sentence_size},
                       {"num_threads", opt.tokenizer.num_threads},
                       {"seed", opt.tokenizer.seed}}}};
  const std::string meta_path = (out / "meta.json").string();
  std::ofstream mj(meta_path, std::ios::binary | std::ios::trunc);
  BN_CHECK(bool(mj), "prepare", "cannot write ", meta_path);
  mj << meta.dump(2, ' ', false, nlohmann::json::error_handler_t::replace) << '\n';
  mj.close();
  BN_CHECK(!mj.fail(), "prepare", "write failed for ", meta_path);
  return res;
}

}  // namespace data
