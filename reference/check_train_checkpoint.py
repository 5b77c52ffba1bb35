#!/usr/bin/env python3
"""Check that a checkpoint written by `whale train` loads in HF transformers and gives the
logits whale gives for it.

    python reference/check_train_checkpoint.py WHALE_BINARY CHECKPOINT_DIR

Loads CHECKPOINT_DIR with transformers' native DeepseekV3ForCausalLM (float32), runs a fixed
token sequence through it, runs `whale logits` on the same directory and ids, and fails if the
largest difference of any logit exceeds 1e-3. The MTP tensors stored after the main layers are
reported by transformers as unexpected keys; that is expected (transformers has no MTP module).
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from transformers import DeepseekV3ForCausalLM


def main() -> int:
    if len(sys.argv) != 3:
        print(__doc__)
        return 2
    whale, ckpt = sys.argv[1], Path(sys.argv[2])
    model, info = DeepseekV3ForCausalLM.from_pretrained(
        ckpt, torch_dtype=torch.float32, output_loading_info=True)
    if info["missing_keys"]:
        print("missing keys:", info["missing_keys"])
        return 1
    vocab = model.config.vocab_size
    ids = [(i * 7919 + 13) % vocab for i in range(24)]
    with torch.no_grad():
        ref = model(torch.tensor([ids])).logits[0].numpy()
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "logits.f32"
        subprocess.run([whale, "logits", str(ckpt), "--ids", ",".join(map(str, ids)),
                        "--out", str(out)], check=True)
        got = np.fromfile(out, dtype=np.float32).reshape(len(ids), vocab)
    diff = float(np.abs(got - ref).max())
    print(f"{ckpt}: transformers loaded it ({len(info['unexpected_keys'])} MTP tensors unused); "
          f"max |logit difference| vs whale = {diff:.2e}")
    return 0 if diff < 1e-3 else 1


if __name__ == "__main__":
    sys.exit(main())
