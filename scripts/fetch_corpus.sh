#!/usr/bin/env bash
# Fetches the open training corpus of whale-mini from Debian 12 packages and
# extracts clean text: scripts/fetch_corpus.sh [--with-fortunes-zh] [OUT_DIR]
#
# OUT_DIR defaults to data/corpus in the repository (ignored by git). The
# packages are downloaded with `apt-get download` into OUT_DIR/.cache/debs and
# unpacked with `dpkg-deb -R` into OUT_DIR/.cache/root: nothing is installed
# on the system, and neither R nor libsword is needed. Then
# scripts/extract_corpus.py writes OUT_DIR/*.txt and OUT_DIR/MANIFEST.json.
# Safe to run again: packages already downloaded at the current version are
# reused, and the output is rewritten identically. See docs/corpus.md.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
with_zh=0
out=""
for arg in "$@"; do
  case "$arg" in
    --with-fortunes-zh) with_zh=1 ;;
    -h|--help) sed -n '2,11p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    -*) echo "fetch_corpus: unknown option $arg" >&2; exit 2 ;;
    *) [ -z "$out" ] || { echo "fetch_corpus: one OUT_DIR only" >&2; exit 2; }; out="$arg" ;;
  esac
done
out="${out:-$repo/data/corpus}"

packages=(
  sword-text-web       # World English Bible (public domain)
  r-cran-janeaustenr   # Jane Austen's six novels (public domain; package MIT)
  r-cran-tokenizers    # Moby Dick, data set of the package (public domain; package MIT)
  dict-devil           # Ambrose Bierce, The Devil's Dictionary (public domain)
  jargon-text          # The Jargon File 4.4.7 (public domain)
  sword-comm-mhcc      # Matthew Henry's Concise Commentary (public domain)
  sword-comm-tdavid    # C. H. Spurgeon, The Treasury of David (public domain)
)
if [ "$with_zh" -eq 1 ]; then
  packages+=(fortunes-zh)  # Tang and Song poems; the package is GPL-3.0+
fi

sudo=""
if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi
apt_opts=(-q)
# apt's download sandbox user (_apt) cannot write into a root-owned cache
# folder; as root, download as root instead of printing a warning.
if [ "$(id -u)" -eq 0 ]; then apt_opts+=(-o APT::Sandbox::User=root); fi

# Tools: apt-get and dpkg-deb are part of every Debian system; python3 may not be.
if ! command -v python3 >/dev/null 2>&1; then
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends python3
fi

debs="$out/.cache/debs"
root="$out/.cache/root"
mkdir -p "$debs" "$root"

candidate() {
  apt-cache show --no-all-versions "$1" 2>/dev/null | sed -n 's/^Version: //p' | head -n 1
}

updated=0
for p in "${packages[@]}"; do
  version="$(candidate "$p")"
  if [ -z "$version" ] && [ "$updated" -eq 0 ]; then
    $sudo apt-get update -qq
    updated=1
    version="$(candidate "$p")"
  fi
  deb=""
  shopt -s nullglob
  for f in "$debs/${p}"_*.deb; do
    if [ "$(dpkg-deb -f "$f" Package)" != "$p" ]; then continue; fi
    if [ -z "$version" ] || [ "$(dpkg-deb -f "$f" Version)" = "$version" ]; then
      deb="$f"
    else
      rm -f "$f"  # an older version
    fi
  done
  shopt -u nullglob
  if [ -z "$deb" ]; then
    if [ -z "$version" ]; then
      echo "fetch_corpus: package $p not found (is this Debian 12 with main enabled?)" >&2
      exit 1
    fi
    (cd "$debs" && apt-get "${apt_opts[@]}" download "$p=$version")
    for f in "$debs/${p}"_*.deb; do deb="$f"; done
    [ -f "$deb" ] || { echo "fetch_corpus: download of $p failed" >&2; exit 1; }
  elif [ -z "$version" ]; then
    echo "fetch_corpus: $p: no package lists; using the downloaded $(basename "$deb")" >&2
  fi
  # Unpack (again) unless this exact .deb is already unpacked.
  sum="$(sha256sum "$deb" | cut -d' ' -f1)"
  if [ "$(cat "$root/$p.sha256" 2>/dev/null || true)" != "$sum" ]; then
    rm -rf "${root:?}/$p" "$root/$p.sha256"
    dpkg-deb -R "$deb" "$root/$p"
    echo "$sum" > "$root/$p.sha256"
  fi
done

zh_opt=()
if [ "$with_zh" -eq 1 ]; then zh_opt=(--with-fortunes-zh); fi
python3 "$repo/scripts/extract_corpus.py" --root "$root" --out "$out" "${zh_opt[@]}"
