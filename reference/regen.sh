#!/usr/bin/env bash
# Regenerate the golden fixtures in tests/fixtures/ from HF transformers.
#   bash reference/regen.sh [--only NAME ...]
# Creates reference/.venv on first use (re-installs only when requirements.txt changes), then runs
# reference/make_fixtures.py, which rewrites each fixture directory from scratch. Idempotent.
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
exec "$venv/bin/python" "$here/make_fixtures.py" --out "$root/tests/fixtures" "$@"
