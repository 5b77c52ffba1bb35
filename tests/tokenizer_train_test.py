#!/usr/bin/env python3
"""`whale tokenizer train` writes a tokenizer that HF tokenizers loads and that encodes exactly
as whale does.

    tokenizer_train_test.py WHALE_BINARY CORPUS_JSONL

Trains a 2,000-token vocabulary on the multilingual tokenizer corpus, then encodes every text of
that corpus with HF tokenizers and with `whale tokenize --jsonl`, and requires the same ids and
a byte-exact round trip for each.
"""

import json
import subprocess
import sys
import tempfile
from pathlib import Path

from tokenizers import Tokenizer


def main(whale: str, corpus: str) -> int:
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
        # HF recognises added tokens written in the text, as whale does with --special.
        out = subprocess.run([whale, "tokenize", str(tmp / "tok"), "--special", "--jsonl", corpus], check=True,
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
                return 1
        print(f"{len(texts)} texts, {sum(len(json.loads(l)['ids']) for l in out)} tokens, "
              f"{mismatches} mismatches")
        return 1 if mismatches else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2]))
