#!/usr/bin/env python3
"""Single-threaded throughput of HF `tokenizers` on the DeepSeek-V3 tokenizer (reference numbers for whale).

Encodes PATH line by line with `Tokenizer.encode(line, add_special_tokens=False)` (each line keeps its
'\\n', so the whole file is covered; added tokens are recognised). A second pass encodes the whole file in
~1 MB chunks that are cut at line ends. No encode_batch. RAYON_NUM_THREADS=1 and TOKENIZERS_PARALLELISM=false
are set before `tokenizers` is imported. MB = 10^6 bytes of UTF-8 input. Prints one JSON line.

Usage:  python reference/bench_hf_tokenizer.py PATH [--tokenizer models/deepseek-v3-tokenizer/tokenizer.json]
"""

from __future__ import annotations

import os

os.environ["RAYON_NUM_THREADS"] = "1"
os.environ["RAYON_RS_NUM_CPUS"] = "1"
os.environ["TOKENIZERS_PARALLELISM"] = "false"

import argparse  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("path")
    ap.add_argument("--tokenizer", default=str(ROOT / "models" / "deepseek-v3-tokenizer" / "tokenizer.json"))
    ap.add_argument("--chunk-mb", type=float, default=1.0)
    args = ap.parse_args(argv)

    t0 = time.perf_counter()
    import tokenizers
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(args.tokenizer)
    load_s = time.perf_counter() - t0

    with open(args.path, encoding="utf-8", newline="") as f:
        text = f.read()
    nbytes = len(text.encode())
    lines = text.split("\n")  # only "\n" ends a line (not \r, U+2028, ...)
    lines = [s + "\n" for s in lines[:-1]] + ([lines[-1]] if lines[-1] else [])

    t0 = time.perf_counter()
    n_tok = 0
    for line in lines:
        n_tok += len(tok.encode(line, add_special_tokens=False).ids)
    line_s = time.perf_counter() - t0

    chunks, cur, cur_len, limit = [], [], 0, int(args.chunk_mb * 1e6)
    for line in lines:
        cur.append(line)
        cur_len += len(line.encode())
        if cur_len >= limit:
            chunks.append("".join(cur))
            cur, cur_len = [], 0
    if cur:
        chunks.append("".join(cur))
    t0 = time.perf_counter()
    n_tok_chunks = 0
    for c in chunks:
        n_tok_chunks += len(tok.encode(c, add_special_tokens=False).ids)
    chunk_s = time.perf_counter() - t0

    print(json.dumps({
        "mb_per_s": round(nbytes / 1e6 / line_s, 3),
        "tokens": n_tok,
        "seconds": round(line_s, 3),
        "load_seconds": round(load_s, 3),
        "bytes": nbytes,
        "lines": len(lines),
        "mode": "encode per line",
        "chunked": {"mb_per_s": round(nbytes / 1e6 / chunk_s, 3), "tokens": n_tok_chunks,
                    "seconds": round(chunk_s, 3), "chunks": len(chunks), "chunk_mb": args.chunk_mb},
        "tokenizers_version": tokenizers.__version__,
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
