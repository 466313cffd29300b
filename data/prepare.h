// Corpus preparation: raw text -> tokenizer + train/validation token shards (`bitnet prepare`).
#pragma once
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "data/corpus.h"
#include "data/tokenizer.h"

namespace data {

// Inputs are files or directories (gather_inputs in corpus.h: a directory's regular files,
// sorted, non-text names skipped). Each file is plain text or, when named *.jsonl / *.ndjson,
// JSON Lines; either may be gzip- or zstd-compressed (detected by magic bytes). Everything is
// read as a stream: memory does not grow with the corpus.
//
// Documents: a JSON line is one document, the string member `text_field` (its lines are the
// document's lines). A plain file is one document; when there is exactly one input file and it is
// plain text, its blank-line separated blocks are the documents instead, and when that file has
// no blank lines between text, each line is a document. Lines are read as is (a trailing '\r' is
// dropped; with brown_tags each line goes through strip_brown_tags); blank lines are dropped.
// The split: exactly round(val_fraction * documents) documents, at least one when val_fraction
// > 0 (which then needs >= 2 documents), are validation, chosen by seeded selection sampling
// (each document in turn with probability remaining-to-pick / remaining-documents).
//
// Bad input (corpus.h: invalid UTF-8, a malformed JSON line, a missing text field, a truncated or
// corrupt gzip/zstd stream, an over-long line) is skipped and counted, the first few with
// FILE:LINE, in the result and meta.json; with `strict` the first one throws instead, before
// any token is written (a first pass reads the whole corpus).
//
// Passes: 1. read the corpus once (documents, bad input; the split needs the count); 2. unless a
// tokenizer is given, write a sample of the training documents' lines of at most sample_bytes,
// spread evenly over the corpus, to train.txt and train the tokenizer on it; 3. tokenize in
// parallel (OpenMP over the lines of a chunk of documents; the output is the same for any thread
// count) into shards of exactly shard_tokens tokens (the last one smaller).
//
// Outputs in out_dir (created if missing):
//   tokenizer.model  (and tokenizer.vocab) trained on train.txt, or a copy of `tokenizer_model`
//   train.txt        the tokenizer's training sample (not written with tokenizer_model)
//   train.bin        each training document as BOS + the encodings of its lines, concatenated,
//                    when the split has fewer than shard_tokens tokens; otherwise
//   train/           000000.bin, 000001.bin, ... of shard_tokens tokens each, and index.json
//                    (shards, token counts, tokenizer, vocabulary, inputs): the directory is a
//                    data path for TokenDataset / data.train
//   val.bin, val/    the same for validation documents; neither is written (and old ones are
//                    removed) when val_fraction is 0
//   meta.json        token/document counts, vocabulary, special ids, the inputs with their sizes,
//                    shards, bad input, options; while running also the resume state
// Resume: meta.json is rewritten after every complete shard with the position in the corpus that
// follows it; a prepare that finds an incomplete meta.json for the same inputs (paths, sizes,
// modification times) and options goes on after the last complete shard, and the result is
// byte-identical to an uninterrupted run. Anything else starts afresh.
struct PrepareProgress {
  const char* phase = "";               // "scan", "sample", "tokenize"
  uint64_t bytes = 0, total_bytes = 0;  // input bytes read in this phase / all input bytes
  int64_t tokens = 0;                   // tokens written (tokenize)
  double seconds = 0;                   // since the phase began
};

struct PrepareOptions {
  std::vector<std::string> inputs;  // files or directories (see above)
  std::string out_dir;              // receives tokenizer.model, shards, meta.json
  TokenizerTrainOptions tokenizer;  // its own seed drives sentencepiece's sentence sampling
  std::string tokenizer_model;      // a SentencePiece .model to use instead of training one
  double val_fraction = 0.05;       // fraction of documents held out, in [0, 0.5]
  uint64_t seed = 0;                // train/val split
  bool brown_tags = false;          // strip Brown-corpus part-of-speech tags ("word/tag" -> "word")
  std::string text_field = "text";  // JSON Lines: the member holding the text
  int64_t shard_tokens = 100'000'000;  // tokens per shard (>= 1)
  int64_t sample_bytes = 100'000'000;  // tokenizer training sample (>= 1)
  bool strict = false;                 // bad input throws instead of being skipped
  int threads = 0;                     // tokenization threads (0 = OpenMP default)
  int64_t stop_after_shards = 0;  // testing: stop (complete = false) after this many new shards
  // Called after every chunk of work (the caller throttles what it prints); may be empty.
  std::function<void(const PrepareProgress&)> progress;
};

struct PrepareResult {
  int64_t train_tokens = 0, val_tokens = 0, documents = 0;
  int64_t train_shards = 0, val_shards = 0;  // 1 for a single train.bin / val.bin
  uint64_t input_bytes = 0;                  // the input files' sizes
  BadInputLog bad;
  int64_t resumed_shards = 0;  // complete shards found from an interrupted run
  bool complete = true;        // false only when stopped by stop_after_shards
};

// Runs the whole preparation; prints nothing. Throws with the offending path on bad input
// (missing file, empty corpus, val_fraction outside [0, 0.5], a split needing 2 documents; with
// strict, the first bad line as FILE:LINE).
PrepareResult prepare(const PrepareOptions& opt);

}  // namespace data
