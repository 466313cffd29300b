#!/usr/bin/env bash
# LeakSanitizer-checked run of the real CLI (sanitizer pass): prepare a corpus, train with
# checkpoints, resume, evaluate and generate; any leak or sanitizer report fails the test.
# Usage: tests/leak_train.sh BITNET_BINARY SOURCE_DIR
set -euo pipefail
bitnet="$1"
src="$2"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
export ASAN_OPTIONS="${ASAN_OPTIONS:-}:detect_leaks=1"
words=(the quick brown fox jumps over a lazy dog while one bit models learn to predict text slowly)
n=${#words[@]}
for ((i = 0; i < 3000; ++i)); do
  echo "${words[i % n]} ${words[(i * 7 + 3) % n]} ${words[(i * 5 + 1) % n]} ${words[(i * 3) % n]} $((i % 50))."
  ((i % 40 == 39)) && echo
done > "$work/corpus.txt"
"$bitnet" prepare "$work/corpus.txt" --out "$work/data" --vocab 320 --val-fraction 0.1
sets=(--set "data.train=$work/data/train.bin" --set "data.val=$work/data/val.bin" --set model.vocab_size=320
      --set "training.out_dir=$work/run" --set checkpoint.every=20 --set training.eval_every=20)
"$bitnet" train "$src/configs/tiny.yaml" --quiet "${sets[@]}" --set training.steps=60
"$bitnet" train "$src/configs/tiny.yaml" --quiet "${sets[@]}" --set training.steps=80 --resume "$work/run"
"$bitnet" eval "$work/run" --max-tokens 2000 --no-attn
"$bitnet" generate "$work/run" --prompt "the quick" --max-tokens 8 --quiet
echo "leak_train: prepare, train, resume, eval, generate: no leak, no sanitizer report"
