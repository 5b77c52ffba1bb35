#!/usr/bin/env python3
"""Differential fuzzing of whale's tokenizer against HF tokenizers.

Generates N random strings (seeded; the pool is `fuzz_string` in tokenizer_corpus.py: ASCII letters and
punctuation, digits of many systems, combining marks, CJK and kana around the edges of the pre-tokenizer's
class, Hangul, every White_Space character, format characters, symbols, PUA, Unicode 15/16 additions,
unassigned points and special-token strings with their fragments; 1-40 characters, with runs), encodes
them with HF tokenizers and with `whale tokenize DIR --jsonl FILE [--special]` (one whale call per mode
per tokenizer) and compares the ids.

Modes follow make_tokenizer_golden.py: `special` = Tokenizer.from_file(tokenizer.json).encode(text,
add_special_tokens=False).ids; `plain` = the same with `added_tokens` emptied (whale without --special).

For each mismatch it prints repr(text), HF ids, whale ids, HF's pre-tokens (the tokenizer's pre_tokenizer,
pre_tokenize_str, shown as slices of the text) and the pre-tokens of a Python port of whale's
src/tokenizer/pretokenizer.cpp (marked "port ok" when the port's pieces, BPE-encoded by HF's model,
give whale's ids, i.e. the port explains whale's output). With --minimize K it shrinks the first K
mismatches of each tokenizer/mode by deleting characters while the ids still differ.

    reference/.venv/bin/python reference/fuzz_tokenizer.py --n 20000 --whale build/apps/whale/whale
    reference/.venv/bin/python reference/fuzz_tokenizer.py --n 5000 --tokenizers v4 --seed 2

Exit status: 0 when every string matches, 1 on mismatches, 2 when whale fails.
"""

from __future__ import annotations

import argparse
import functools
import itertools
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

from tokenizers import Tokenizer  # noqa: E402

from tokenizer_corpus import FUZZ_POOL, fuzz_string  # noqa: E402

MODES = ("plain", "special")
# One character for each behaviour of the three patterns: ASCII letter/punctuation/symbol, non-ASCII letter
# (Ll, Lm, Lo), marks (Mn, Mc, Me, in the kana class), digits (Nd ASCII/other, No, Nl), non-ASCII P and S,
# CJK inside/outside U+4E00..U+9FA5, kana and its edges (U+30A0 Pd, U+3040 unassigned), Hangul, each kind of
# space (CR, LF, TAB, VT, FF, NEL, NBSP, U+2028, U+3000, U+1680), not-spaces (ZWSP, U+180E, U+001C), controls,
# PUA, unassigned, Unicode 16.0 letter/digit/mark, 17.0 letter (unassigned in 16.0), special-token pieces.
EXHAUSTIVE_ALPHABET = ("a", "Z", "é", "ʰ", "ا", "\u0301", "\u093e", "\u20dd", "\u3099", "0", "٣", "²", "Ⅻ",
                       "!", "'", "<", ">", "+", "_", "¡", "\u2014", "€", "😀", "\u02c2", "中", "\u9fa6", "㐀", "あ",
                       "ア", "\u30a0", "\u3040", "ー", "가", " ", "\r", "\n", "\t", "\x0b", "\x0c", "\x85",
                       "\xa0", "\u2028", "\u3000", "\u1680", "\u200b", "\u180e", "\x1c", "\x00", "\ue000",
                       "\u0378", "\u1c89", "\U0001e4f0", "\U00011f00", "\ua7ce", "｜", "▁")


# --------------------------------------------------------------------------------------------------
# HF side (same construction as make_tokenizer_golden.load_pair, without importing transformers)
# --------------------------------------------------------------------------------------------------

def load_pair(tokdir: Path) -> dict:
    spec = json.loads((tokdir / "tokenizer.json").read_text(encoding="utf-8"))
    full = Tokenizer.from_file(str(tokdir / "tokenizer.json"))
    plain = Tokenizer.from_str(json.dumps(dict(spec, added_tokens=[]), ensure_ascii=False))
    return {"special": full, "plain": plain, "spec": spec}


def hf_encode(tok: Tokenizer, texts: list[str]) -> list[list[int]]:
    return [tok.encode(t, add_special_tokens=False).ids for t in texts]


def hf_pieces(tok: Tokenizer, text: str) -> list[str]:
    return [text[a:b] for _, (a, b) in tok.pre_tokenizer.pre_tokenize_str(text)]


# --------------------------------------------------------------------------------------------------
# whale side
# --------------------------------------------------------------------------------------------------

def whale_encode(whale: str, tokdir: Path, texts: list[str], mode: str) -> list[list[int]]:
    with tempfile.NamedTemporaryFile("w", encoding="utf-8", newline="\n", suffix=".jsonl", delete=False) as f:
        for t in texts:
            f.write(json.dumps({"text": t}, ensure_ascii=False) + "\n")
        path = f.name
    try:
        cmd = [whale, "tokenize", str(tokdir), "--jsonl", path] + (["--special"] if mode == "special" else [])
        r = subprocess.run(cmd, capture_output=True)
    finally:
        os.unlink(path)
    if r.returncode != 0:
        sys.stderr.write(f"whale failed ({r.returncode}): {' '.join(cmd)}\n{r.stderr.decode(errors='replace')}\n")
        sys.exit(2)
    out = [json.loads(line)["ids"] for line in r.stdout.decode("utf-8").split("\n") if line]
    if len(out) != len(texts):
        sys.stderr.write(f"whale printed {len(out)} lines for {len(texts)} inputs\n")
        sys.exit(2)
    return out


# --------------------------------------------------------------------------------------------------
# Python port of src/tokenizer/pretokenizer.cpp (diagnostics only)
# --------------------------------------------------------------------------------------------------

def _char_class():
    try:
        from make_unicode_tables import char_class  # unicodedata2 16.0, as unicode_tables.inc
    except Exception:  # noqa: BLE001
        return None
    return functools.lru_cache(maxsize=None)(lambda c: char_class(ord(c)))


L, M, N, P, S, SPACE = 1, 2, 4, 8, 16, 32
_ASCII_PUNCT = set("!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~")


def _is_ascii_letter(c: str) -> bool:
    return ("a" <= c <= "z") or ("A" <= c <= "Z")


def _is_cjk_kana(c: str) -> bool:
    o = ord(c)
    return 0x4E00 <= o <= 0x9FA5 or 0x3040 <= o <= 0x30FF


def _match_words(s: str, i: int, end: int, cls) -> int | None:
    """Where whale's match of the words pattern starting at s[i] ends (exclusive), or None."""
    def run(k, mask):
        while k < end and cls(s[k]) & mask:
            k += 1
        return k

    def run_if(k, pred):
        while k < end and pred(s[k]):
            k += 1
        return k

    c0 = s[i]
    has_next = i + 1 < end
    c1 = s[i + 1] if has_next else None
    k0, k1 = cls(c0), (cls(c1) if has_next else 0)
    if c0 in _ASCII_PUNCT and has_next and _is_ascii_letter(c1):
        return run_if(i + 2, _is_ascii_letter)
    optional_ok = c0 not in "\r\n" and not (k0 & (L | P | S))
    if optional_ok and has_next and (k1 & (L | M)):
        return run(i + 2, L | M)
    if k0 & (L | M):
        return run(i + 1, L | M)
    ps = None
    if c0 == " " and has_next and (k1 & (P | S)):
        ps = i + 2
    if k0 & (P | S):
        ps = i + 1
    if ps is not None:
        return run_if(run(ps, P | S), lambda c: c in "\r\n")
    if not (k0 & SPACE):
        return None
    last_crlf, last_start, k = None, i, i
    while k < end and cls(s[k]) & SPACE:
        if s[k] in "\r\n":
            last_crlf = k
        last_start = k
        k += 1
    if last_crlf is not None:
        return last_crlf + 1
    if k == end:
        return k
    if last_start > i:
        return last_start
    return k


def _split(kind: str, s: str, begin: int, end: int, cls, out: list) -> None:
    gap = i = begin
    while i < end:
        m = None
        if kind == "digits":
            j = i
            while j < end and j - i < 3 and cls(s[j]) & N:
                j += 1
            m = j if j > i else None
        elif kind == "cjk":
            j = i
            while j < end and _is_cjk_kana(s[j]):
                j += 1
            m = j if j > i else None
        else:
            m = _match_words(s, i, end, cls)
        if m is None:
            i += 1
            continue
        if i > gap:
            out.append((gap, i))
        out.append((i, m))
        gap = i = m
    if end > gap:
        out.append((gap, end))


def port_pretokenize(s: str, cls) -> list[tuple[int, int]]:
    pieces = [(0, len(s))] if s else []
    for kind in ("digits", "cjk", "words"):
        nxt: list = []
        for a, b in pieces:
            _split(kind, s, a, b, cls, nxt)
        pieces = nxt
    return pieces


def _bytes_to_unicode() -> dict[int, str]:
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {b: chr(c) for b, c in zip(bs, cs)}


_B2U = _bytes_to_unicode()


def port_ids(tok: Tokenizer, spec: dict, text: str, mode: str, cls) -> tuple[list[int], list[str]]:
    """whale's pipeline in Python: added tokens (one leftmost-longest pass, special mode), port pieces,
    HF's BPE model for each piece. Returns (ids, pieces)."""
    segs: list[tuple[int, int, int | None]] = []
    if mode == "special":
        added = {a["content"]: a["id"] for a in spec["added_tokens"]}
        longest = max(map(len, added))
        start = i = 0
        while i < len(text):
            hit = None
            for n in range(min(longest, len(text) - i), 0, -1):
                if text[i:i + n] in added:
                    hit = n
                    break
            if hit is None:
                i += 1
                continue
            if i > start:
                segs.append((start, i, None))
            segs.append((i, i + hit, added[text[i:i + hit]]))
            i = start = i + hit
        if start < len(text):
            segs.append((start, len(text), None))
    else:
        segs = [(0, len(text), None)]
    ids: list[int] = []
    pieces: list[str] = []
    for a, b, tid in segs:
        if tid is not None:
            ids.append(tid)
            pieces.append(text[a:b])
            continue
        sub = text[a:b]
        for x, y in port_pretokenize(sub, cls):
            piece = sub[x:y]
            pieces.append(piece)
            bl = "".join(_B2U[c] for c in piece.encode("utf-8"))
            ids += [t.id for t in tok.model.tokenize(bl)]
    return ids, pieces


# --------------------------------------------------------------------------------------------------
# driver
# --------------------------------------------------------------------------------------------------

def describe(text: str) -> str:
    return " ".join(f"U+{ord(c):04X}" for c in text)


def minimize(texts: list[str], still_bad) -> list[str]:
    """Greedy one-character deletion, all strings at once (one whale call per round per batch):
    `still_bad(candidates) -> list[bool]`."""
    cur = list(texts)
    active = list(range(len(cur)))
    while active:
        cands, owner = [], []
        for k in active:
            s = cur[k]
            seen = set()
            for j in range(len(s)):
                c = s[:j] + s[j + 1:]
                if c and c not in seen:
                    seen.add(c)
                    cands.append(c)
                    owner.append(k)
        if not cands:
            break
        bad = still_bad(cands)
        progressed = set()
        for c, k, b in zip(cands, owner, bad):
            if b and k not in progressed:
                cur[k] = c
                progressed.add(k)
        active = sorted(progressed)
    return cur


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=20000)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--whale", default=str(ROOT / "build/apps/whale/whale"))
    ap.add_argument("--tokenizers", nargs="+", default=["v3", "v4"], choices=["v3", "v4"])
    ap.add_argument("--show", type=int, default=20, help="mismatches printed per tokenizer and mode")
    ap.add_argument("--minimize", type=int, default=0, help="shrink this many mismatches per tokenizer/mode")
    ap.add_argument("--exhaustive", type=int, default=0, metavar="LEN",
                    help="also every string of length 1..LEN over EXHAUSTIVE_ALPHABET (one character per "
                         "behaviour the patterns distinguish)")
    ap.add_argument("--check-splits", action="store_true",
                    help="also compare the port's pre-tokens with HF's pre_tokenize_str for every string (plain "
                         "mode; catches split differences that equal ids would hide)")
    args = ap.parse_args()

    import random
    rng = random.Random(args.seed)
    texts = [fuzz_string(rng) for _ in range(args.n)]
    if args.exhaustive:
        texts += ["".join(t) for k in range(1, args.exhaustive + 1)
                  for t in itertools.product(EXHAUSTIVE_ALPHABET, repeat=k)]
    print(f"[fuzz] n={len(texts)} seed={args.seed} unique={len(set(texts))} "
          f"chars={sum(map(len, texts))} pool={ {k: len(v) for k, v in FUZZ_POOL.items()} }")
    cls = _char_class()
    total_bad = 0
    summary = []
    for name in args.tokenizers:
        tokdir = ROOT / "models" / f"deepseek-{name}-tokenizer"
        if not (tokdir / "tokenizer.json").exists():
            print(f"[{name}] skipped: no {tokdir}/tokenizer.json")
            continue
        pair = load_pair(tokdir)
        for mode in MODES:
            t0 = time.time()
            hf = hf_encode(pair[mode], texts)
            t1 = time.time()
            wh = whale_encode(args.whale, tokdir, texts, mode)
            t2 = time.time()
            bad = [i for i in range(len(texts)) if hf[i] != wh[i]]
            total_bad += len(bad)
            summary.append((name, mode, len(bad), len(texts)))
            print(f"\n[{name} {mode}] mismatches: {len(bad)} / {len(texts)}  (hf {t1 - t0:.1f}s, whale {t2 - t1:.1f}s)")
            if args.check_splits and mode == "plain" and cls is not None:
                port_bad = split_bad = 0
                first = []
                for i, s in enumerate(texts):
                    pids, ppieces = port_ids(pair["plain"], pair["spec"], s, mode, cls)
                    port_bad += pids != wh[i]
                    if ppieces != hf_pieces(pair["plain"], s):
                        split_bad += 1
                        first.append(s)
                print(f"  port ids != whale ids: {port_bad}; port pre-tokens != HF pre-tokens: {split_bad}"
                      + (f", first {first[:5]!r}" if first else ""))
                total_bad += split_bad
            for i in bad[:args.show]:
                s = texts[i]
                print(f"  #{i} {s!r}")
                print(f"     code points: {describe(s)}")
                print(f"     hf    ids: {hf[i]}")
                print(f"     whale ids: {wh[i]}")
                print(f"     hf    pre-tokens: {hf_pieces(pair[mode], s)!r}")
                if cls is not None:
                    pids, ppieces = port_ids(pair["plain"], pair["spec"], s, mode, cls)
                    print(f"     whale pre-tokens (port{', port ok' if pids == wh[i] else ', PORT DIFFERS'}): "
                          f"{ppieces!r}")
            if bad and args.minimize:
                tok = pair[mode]

                def still_bad(cands, tok=tok, tokdir=tokdir, mode=mode):
                    h = hf_encode(tok, cands)
                    w = whale_encode(args.whale, tokdir, cands, mode)
                    return [a != b for a, b in zip(h, w)]

                small = minimize([texts[i] for i in bad[:args.minimize]], still_bad)
                uniq = sorted(set(small), key=lambda x: (len(x), x))
                print(f"  minimized ({len(uniq)} distinct):")
                h = hf_encode(tok, uniq)
                w = whale_encode(args.whale, tokdir, uniq, mode)
                for s, hi, wi in zip(uniq, h, w):
                    print(f"    {s!r}  [{describe(s)}]  hf {hi}  whale {wi}")
                    print(f"       hf    pre-tokens: {hf_pieces(tok, s)!r}")
                    if cls is not None:
                        pids, ppieces = port_ids(pair["plain"], pair["spec"], s, mode, cls)
                        print(f"       whale pre-tokens (port{', port ok' if pids == wi else ', PORT DIFFERS'}): "
                              f"{ppieces!r}")
    print("\n[summary] " + "  ".join(f"{n} {m}: {b}/{t}" for n, m, b, t in summary))
    return 1 if total_bad else 0


if __name__ == "__main__":
    sys.exit(main())
