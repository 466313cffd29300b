#!/usr/bin/env python3
# A synthetic JSON Lines corpus for `bitnet prepare` measurements (docs/TRAINING.md):
#   synthetic_corpus.py OUT.jsonl MB [SEED]
# Records {"text": 1-6 lines of 20-120 words, "id": n}; words from a 20,000-word Zipf vocabulary of
# syllable strings. Bigger corpora in the docs are varied copies (tr on letters, tac).
import json
import random
import sys
from itertools import accumulate

out, mb = sys.argv[1], int(sys.argv[2])
r = random.Random(int(sys.argv[3]) if len(sys.argv) > 3 else 1)
syl = ["ka", "to", "ri", "men", "sa", "lo", "ne", "vi", "dor", "pa",
       "qu", "el", "is", "an", "ther", "ing", "un", "re", "st", "ol"]
vocab = ["".join(r.choice(syl) for _ in range(r.randint(1, 4))) for _ in range(20000)]
cum = list(accumulate(1.0 / (i + 1) for i in range(len(vocab))))
target, n = mb * 1000 * 1000, 0
with open(out, "w") as f:
    while n < target:
        lines = [" ".join(r.choices(vocab, cum_weights=cum, k=r.randint(20, 120))) +
                 r.choice([".", "!", "?", ","]) for _ in range(r.randint(1, 6))]
        s = json.dumps({"text": "\n".join(lines), "id": n}) + "\n"
        f.write(s)
        n += len(s)
