#!/usr/bin/env bash
# Regenerate every golden file from HF transformers / tokenizers:
#   bash reference/regen.sh                      model fixtures (tests/fixtures/) + training golden
#                                                (tests/fixtures/train_tiny/) + tokenizer goldens (tests/data/tokenizer/)
#   bash reference/regen.sh --only NAME ...      just these model fixtures (make_fixtures.py)
#   bash reference/regen.sh --tokenizer [ARGS]   just the tokenizer goldens; ARGS go to make_tokenizer_golden.py
#                                                (e.g. --templates DIR, --only corpus v3 v4 chat)
# Creates reference/.venv on first use (re-installs only when requirements.txt changes), then runs
# reference/make_fixtures.py, reference/make_train_golden.py and reference/make_tokenizer_golden.py,
# which rewrite their outputs from scratch. Idempotent. The chat templates are read from
# ../shared/models/chat-templates (see README.md).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/.." && pwd)"
venv="$here/.venv"
python="${PYTHON:-python3}"

if [ ! -x "$venv/bin/python" ]; then
    echo "regen: creating $venv"
    "$python" -m venv "$venv"
fi

stamp="$venv/.requirements.sha256"
want="$(sha256sum "$here/requirements.txt" | cut -d' ' -f1)"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
    echo "regen: installing $here/requirements.txt"
    "$venv/bin/python" -m pip install --disable-pip-version-check -r "$here/requirements.txt"
    echo "$want" > "$stamp"
fi

# everything is local: never reach for the Hub
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1
export PYTHONDONTWRITEBYTECODE=1
if [ "${1:-}" = "--tokenizer" ]; then
    shift
    "$venv/bin/python" "$here/make_unicode_tables.py" "$root/src/tokenizer/unicode_tables.inc"
    exec "$venv/bin/python" "$here/make_tokenizer_golden.py" --out "$root/tests/data/tokenizer" "$@"
fi
if [ "$#" -gt 0 ]; then
    exec "$venv/bin/python" "$here/make_fixtures.py" --out "$root/tests/fixtures" "$@"
fi
"$venv/bin/python" "$here/make_fixtures.py" --out "$root/tests/fixtures"
"$venv/bin/python" "$here/make_train_golden.py" --out "$root/tests/fixtures/train_tiny"
"$venv/bin/python" "$here/make_unicode_tables.py" "$root/src/tokenizer/unicode_tables.inc"
exec "$venv/bin/python" "$here/make_tokenizer_golden.py" --out "$root/tests/data/tokenizer"
