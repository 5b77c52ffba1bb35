#!/usr/bin/env python3
"""`whale tokenizer train` writes a tokenizer that HF tokenizers loads and that encodes exactly
as whale does.

    tokenizer_train_test.py WHALE_BINARY CORPUS_JSONL [BUNDLED_MODEL_DIR]

Trains a 2,000-token vocabulary on the multilingual tokenizer corpus, then encodes every text of
that corpus with HF tokenizers and with `whale tokenize --jsonl`, and requires the same ids and
a byte-exact round trip for each. With BUNDLED_MODEL_DIR, the tokenizer whale-mini ships with
(trained the same way on its own corpus) is checked on the same texts.
"""

import json
import subprocess
import sys
import tempfile
from pathlib import Path

from tokenizers import Tokenizer


def compare(whale: str, tok_dir: Path, corpus: str, texts: list) -> int:
    """Mismatching texts between HF tokenizers and whale for the tokenizer in tok_dir."""
    hf = Tokenizer.from_file(str(tok_dir / "tokenizer.json"))
    # HF recognises added tokens written in the text, as whale does with --special.
    out = subprocess.run([whale, "tokenize", str(tok_dir), "--special", "--jsonl", corpus], check=True,
                         capture_output=True, text=True).stdout.split("\n")
    out = [l for l in out if l]
    assert len(out) == len(texts), (len(out), len(texts))
    mismatches = 0
    for text, line in zip(texts, out):
        ours = json.loads(line)["ids"]
        theirs = hf.encode(text, add_special_tokens=False).ids
        if ours != theirs:
            mismatches += 1
            if mismatches <= 5:
                print("mismatch:", repr(text[:80]), ours[:20], theirs[:20])
        if hf.decode(theirs, skip_special_tokens=False) != text:
            print("no round trip:", repr(text[:80]))
            mismatches += 1
    print(f"{tok_dir}: {len(texts)} texts, {sum(len(json.loads(l)['ids']) for l in out)} tokens, "
          f"{mismatches} mismatches")
    return mismatches


def main(whale: str, corpus: str, bundled: str = "") -> int:
    # split("\n"), not splitlines(): the texts hold U+2028 and other line breaks of their own.
    lines = [l for l in Path(corpus).read_text(encoding="utf-8").split("\n") if l]
    texts = [json.loads(line)["text"] for line in lines]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        (tmp / "train.txt").write_text("\n".join(texts), encoding="utf-8")
        subprocess.run([whale, "tokenizer", "train", "--vocab", "2000", "--input", str(tmp / "train.txt"),
                        "--out", str(tmp / "tok")], check=True, stderr=subprocess.DEVNULL)
        hf = Tokenizer.from_file(str(tmp / "tok" / "tokenizer.json"))
        assert hf.get_vocab_size() == 2000, hf.get_vocab_size()
        config = json.loads((tmp / "tok" / "tokenizer_config.json").read_text(encoding="utf-8"))
        assert hf.token_to_id(config["bos_token"]) is not None
        assert "chat_template" in config and "<｜User｜>" in config["chat_template"]
        bad = compare(whale, tmp / "tok", corpus, texts)
        if bundled:
            bad += compare(whale, Path(bundled), corpus, texts)
        return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:4]))
