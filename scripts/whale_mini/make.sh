#!/usr/bin/env bash
# Rebuilds whale-mini, the bundled default model, from nothing but Debian packages:
#   scripts/whale_mini/make.sh [WORK_DIR]        (default WORK_DIR: data/whale-mini)
# 1. fetches and cleans the open corpus (scripts/fetch_corpus.sh -> data/corpus),
# 2. trains the 8,192-token BPE tokenizer on it,
# 3. tokenizes it into shards with 2% of each text held out for validation,
# 4. trains the model with scripts/whale_mini/train.json (about 1.5 hours on 2 cores),
# 5. converts the last checkpoint to bf16 into models/whale-mini and plots the training record
#    into docs/whale-mini/training.png (needs Debian's python3-matplotlib).
# Every step is deterministic for a given machine and thread count; see docs/whale-mini.md.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
work="${1:-$repo/data/whale-mini}"
whale="$repo/build/apps/whale/whale"
[ -x "$whale" ] || { echo "make.sh: build whale first (see README)" >&2; exit 2; }

bash "$repo/scripts/fetch_corpus.sh" "$repo/data/corpus"
mkdir -p "$work"
"$whale" tokenizer train --vocab 8192 --input "$repo"/data/corpus/*.txt --out "$work/tokenizer"
"$whale" data prepare --tokenizer "$work/tokenizer" --input "$repo"/data/corpus/*.txt \
  --out "$work/data" --val-fraction 0.02
"$whale" train --config "$repo/scripts/whale_mini/train.json" --data "$work/data" \
  --tokenizer "$work/tokenizer" --out "$work/run" --resume auto
last="$(ls -d "$work"/run/checkpoint-* | sort | tail -1)"
rm -rf "$repo/models/whale-mini"
"$whale" quantize "$last" "$repo/models/whale-mini" --type bf16
cp "$repo/scripts/whale_mini/README.md" "$repo/models/whale-mini/README.md"
mkdir -p "$repo/docs/whale-mini"
cp "$work/run/train_log.jsonl" "$repo/docs/whale-mini/train_log.jsonl"
/usr/bin/python3 "$repo/scripts/whale_mini/plot_training.py" "$work/run/train_log.jsonl" \
  "$repo/docs/whale-mini/training.png"
