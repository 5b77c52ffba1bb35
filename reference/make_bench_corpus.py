#!/usr/bin/env python3
"""Write a deterministic ~20 MB mixed-language UTF-8 text file for tokenizer benchmarks (not committed).

The file interleaves (seeded shuffle) the golden corpus strings and longer prose paragraphs built from
the multilingual sentence pools in tokenizer_corpus.py, plus code. Corpus strings over 1,000 characters
(the 5,000-'a' style stress lines) are left out so they don't dominate the timing. The output ends with a
newline. The same seed and size always give the same bytes.

Usage:  python reference/make_bench_corpus.py OUT_PATH [--mb 20] [--seed N]
"""

from __future__ import annotations

import argparse
import hashlib
import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from tokenizer_corpus import CODE, PROSE, build_corpus  # noqa: E402

CJK = ("zh_hans", "zh_hant", "ja", "th")


def paragraph(rng: random.Random) -> str:
    lang = rng.choice(sorted(PROSE))
    sep = "" if lang in CJK else " "
    return sep.join(rng.choice(PROSE[lang]) for _ in range(4 + rng.randrange(12)))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out")
    ap.add_argument("--mb", type=float, default=20.0, help="target size in 10^6 bytes (default 20)")
    ap.add_argument("--seed", type=int, default=7)
    args = ap.parse_args(argv)
    rng = random.Random(args.seed)
    strings = [s for s in build_corpus() if 0 < len(s) <= 1000]
    target = int(args.mb * 1e6)
    chunks, size = [], 0
    while size < target:
        block = list(strings)
        rng.shuffle(block)
        for s in block:
            r = rng.random()
            piece = paragraph(rng) if r < 0.45 else rng.choice(CODE) if r < 0.55 else s
            piece += "\n" if not piece.endswith("\n") else ""
            chunks.append(piece)
            size += len(piece.encode())
            if size >= target:
                break
    data = "".join(chunks).encode()
    Path(args.out).write_bytes(data)
    n_lines = data.count(b"\n")
    print(f"wrote {args.out}: {len(data)} bytes, {n_lines} lines, sha256 {hashlib.sha256(data).hexdigest()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
