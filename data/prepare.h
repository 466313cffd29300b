// Corpus preparation: raw text -> tokenizer + train/validation token shards (`bitnet prepare`).
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "data/tokenizer.h"

namespace data {

// Inputs are text files or directories. A directory contributes its regular files (not
// recursive), sorted by name, except non-text files, which are skipped: names starting with '.',
// README and README.*, CONTENTS, cats.txt, and names ending in .pickle or .json (this covers the
// NLTK Brown corpus' categories.pickle and package.json). Files named explicitly are always read.
//
// Documents: each input file is one document; when there is exactly one input file, its
// blank-line separated blocks are the documents instead, and when that file has no blank lines
// between text, each line is a document. Lines are read as is (a trailing '\r'
// is dropped; with brown_tags each line goes through strip_brown_tags); blank lines are dropped.
// The split is a seeded permutation of the documents: round(val_fraction * documents) of them,
// at least one when val_fraction > 0 (which then needs >= 2 documents), are validation.
//
// Outputs in out_dir (created if missing):
//   train.txt        the training documents' lines, one per line (the tokenizer's input)
//   tokenizer.model  (and tokenizer.vocab) trained on train.txt only, with `tokenizer` options
//   train.bin        each training document as BOS + the encodings of its lines, concatenated
//   val.bin          the same for validation documents; not written (and an old one removed)
//                    when val_fraction is 0
//   meta.json        token/document counts, vocabulary size, special ids, files and options
struct PrepareOptions {
  std::vector<std::string> inputs;  // text files, or directories (see above)
  std::string out_dir;              // receives tokenizer.model, train.bin, val.bin, meta.json
  TokenizerTrainOptions tokenizer;  // its own seed drives sentencepiece's sentence sampling
  double val_fraction = 0.05;       // fraction of documents held out, in [0, 0.5]
  uint64_t seed = 0;                // train/val split
  bool brown_tags = false;          // strip Brown-corpus part-of-speech tags ("word/tag" -> "word")
};

struct PrepareResult {
  int64_t train_tokens = 0, val_tokens = 0, documents = 0;
};

// Strips Brown-corpus tags from one line: "The/at Fulton/np-tl ,/," -> "The Fulton ,".
// Each whitespace-separated token keeps the part before its last '/' (tokens without '/' are
// kept; tokens that become empty are dropped); Brown's `` and '' quotes become a plain '"';
// the result has single spaces and no leading/trailing whitespace.
std::string strip_brown_tags(const std::string& line);

// Runs the whole preparation; prints nothing. Throws with the offending path on bad input
// (missing file, empty corpus, val_fraction outside [0, 0.5], a split needing 2 documents).
PrepareResult prepare(const PrepareOptions& opt);

}  // namespace data
