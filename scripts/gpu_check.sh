#!/usr/bin/env bash
# The GPU checks of docs/gpu.md, for a GPU machine that has no Rust toolchain
# and no LLVM (only an NVIDIA driver, Python with torch and transformers, and xz):
#
#   bash scripts/gpu_check.sh pack   # here: builds everything into .gpu/ (about 40 MB)
#   bash scripts/gpu_check.sh run    # there, from the repository root with .gpu/ beside it
#
# `run` runs the GPU tests of tests/gpu.rs, the ones marked #[ignore] because they need a GPU
# (GPU against CPU on every zoo model, GPU greedy decoding against transformers, split sums on
# the GPU against the CPU), from the test binary built here, then bench/gpu.py (BERT-base and
# GPT-2 decoding against PyTorch eager and torch.compile). Outputs go to $OUT (or .gpu/out).
# BENCH_ARGS=--no-compile skips torch.compile (a minute of GPT-2 compilation).
set -euo pipefail
cd "$(dirname "$0")/.."

case "${1:-}" in
pack)
  bash scripts/setup.sh
  mkdir -p .gpu
  grep -qx "/.gpu/" .git/info/exclude 2>/dev/null || echo "/.gpu/" >> .git/info/exclude
  cargo build --release -p lmc -p lmc-runtime
  ./target/release/lmc compile --target cuda models/bert.model:BertModel -o .gpu/bert_cuda.so
  ./target/release/lmc compile --target cuda --decode 128 models/gpt2.model:GPT2LMHeadModel -o .gpu/gpt2_cuda.so
  cp target/release/liblmc_runtime.so .gpu/
  cp -L /usr/lib/llvm-22/lib/libomp.so .gpu/libomp.so
  cp "${LMC_CUDA_TOOLS:-$HOME/.cache/lmc/cuda-nvcc/nvidia/cuda_nvcc}/nvvm/libdevice/libdevice.10.bc" .gpu/
  test_binary=$(cargo test --release -p lmc-tests --test gpu --no-run 2>&1 | sed -n 's/.*Executable .*(\(.*\))$/\1/p')
  cp "$test_binary" .gpu/gpu_test
  strip .gpu/gpu_test
  xz -T2 -6 -f .gpu/gpu_test
  du -sh .gpu
  ;;
run)
  export PYTHONUNBUFFERED=1
  out="${OUT:-.gpu/out}"
  mkdir -p "$out"
  # The test binary reads the repository (models, fixtures) at the path it was built in.
  built_in=/work/main
  if [ "$PWD" != "$built_in" ] && [ ! -e "$built_in" ]; then
    mkdir -p "$(dirname "$built_in")" && ln -s "$PWD" "$built_in"
  fi
  # It loads libomp from where Debian's LLVM puts it (the CPU side of each comparison).
  mkdir -p /usr/lib/llvm-22/lib && cp -n .gpu/libomp.so /usr/lib/llvm-22/lib/libomp.so
  mkdir -p target/release/deps
  xz -dc .gpu/gpu_test.xz > target/release/deps/gpu && chmod +x target/release/deps/gpu
  export LMC_CUDA_LIBDEVICE="$PWD/.gpu/libdevice.10.bc"
  nvidia-smi -L || echo "nvidia-smi: not found (the tests say whether a GPU is there)"
  status=0
  # The ignored tests, and only those: they need the GPU (and fail without one, saying so).
  # The others run without a GPU, in CI; some need the lmc binary or ptxas, which stay here.
  (cd "$built_in" && target/release/deps/gpu --ignored --nocapture --test-threads 1) 2>&1 | tee "$out/gpu_test.log" || status=1
  # The benchmark runs even when a test failed: its own check column compares with PyTorch.
  python3 bench/gpu.py --runtime .gpu/liblmc_runtime.so --bert .gpu/bert_cuda.so --gpt2 .gpu/gpt2_cuda.so \
    ${BENCH_ARGS:-} --json "$out/bench.json" 2>&1 | tee "$out/bench.log" || status=1
  exit $status
  ;;
*)
  echo "usage: bash scripts/gpu_check.sh pack|run" >&2
  exit 2
  ;;
esac
