#!/usr/bin/env bash
# Installs the Debian 12 packages whale builds and tests with. Safe to run again.
set -euo pipefail
packages=(
  g++ cmake ninja-build            # C++20 toolchain
  nlohmann-json3-dev               # config.json, safetensors headers, tokenizer.json
  libopenblas-dev                  # matrix products of the trainer
  libopenmpi-dev openmpi-bin       # data-parallel training (mpirun -np K whale train)
  libcli11-dev                     # the whale command line
  libcpp-httplib-dev pkg-config    # whale serve
  libgtest-dev libgmock-dev        # tests
  python3 python3-venv             # pty and HTTP tests (the openai client in a virtualenv)
)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi
sudo=""
if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
