#!/usr/bin/env python3
"""Plot a `whale train` log (train_log.jsonl) as a PNG: training and validation loss, the MTP
module's validation loss and top-1 accuracy, and each MoE layer's max/mean expert load.

    /usr/bin/python3 scripts/whale_mini/plot_training.py OUT/train_log.jsonl docs/whale-mini/training.png

Uses Debian's python3-matplotlib (no virtualenv needed).
"""

import json
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def main(log_path: str, png_path: str) -> int:
    entries = [json.loads(line) for line in open(log_path, encoding="utf-8") if line.strip()]
    if not entries:
        print("empty log", file=sys.stderr)
        return 1
    steps = [e["step"] for e in entries]
    evals = [e for e in entries if "val_loss" in e]
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.5))

    ax = axes[0]
    ax.plot(steps, [e["loss"] for e in entries], lw=0.6, alpha=0.7, label="train (next token)")
    ax.plot(steps, [e["mtp_loss"][0] for e in entries], lw=0.6, alpha=0.5, label="train MTP (token after)")
    if evals:
        ax.plot([e["step"] for e in evals], [e["val_loss"] for e in evals], "o-", ms=3, label="validation")
        ax.plot([e["step"] for e in evals], [e["val_mtp_loss"] for e in evals], "s-", ms=3,
                label="validation MTP")
    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy (nats)")
    ax.set_title("loss")
    ax.set_ylim(top=min(10, max(e["loss"] for e in entries)))
    ax.grid(alpha=0.3)
    ax.legend()

    ax = axes[1]
    if evals:
        ax.plot([e["step"] for e in evals], [100 * e["val_accuracy"] for e in evals], "o-", ms=3,
                label="next token")
        ax.plot([e["step"] for e in evals], [100 * e["val_mtp_accuracy"] for e in evals], "s-", ms=3,
                label="MTP: the token after next")
    ax.set_xlabel("step")
    ax.set_ylabel("top-1 accuracy on validation (%)")
    ax.set_title("validation accuracy")
    ax.grid(alpha=0.3)
    ax.legend()

    ax = axes[2]
    n_layers = len(entries[0]["expert_load"])
    for i in range(n_layers):
        # a moving average over 20 steps keeps the lines readable
        raw = [e["expert_load"][i] for e in entries]
        smooth = [sum(raw[max(0, j - 19):j + 1]) / len(raw[max(0, j - 19):j + 1]) for j in range(len(raw))]
        label = f"MoE layer {i + 1}" if i + 1 < n_layers else "MTP layer"
        ax.plot(steps, smooth, lw=1, label=label)
    ax.axhline(1.5, color="gray", ls="--", lw=0.8)
    ax.set_xlabel("step")
    ax.set_ylabel("max / mean tokens per expert (20-step mean)")
    ax.set_title("expert load balance")
    ax.grid(alpha=0.3)
    ax.legend()

    fig.tight_layout()
    fig.savefig(png_path, dpi=110)
    print(f"wrote {png_path}")
    return 0


if __name__ == "__main__":
    if len(sys.argv) != 3:
        print(__doc__)
        sys.exit(2)
    sys.exit(main(sys.argv[1], sys.argv[2]))
