#!/usr/bin/env bash
# The main job: an A/B experiment with `lmc ab`, models/experiments/positions_small.yaml. BERT's
# position schemes (learned table, ALiBi, RoPE, sinusoidal), each a one-line variant of
# models/bert.model, on a small BERT shape with seeded random weights (shared by name, so the
# variants differ only in how positions enter): parameters, FLOPs per token, compile time,
# latency with confidence intervals from interleaved runs, and how far each variant's output
# drifts from the learned-position model's. The last length is past the learned table, which
# the report says instead of failing. The report is printed and written to out/main/ as HTML
# (charts), JSON and CSV.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
cargo build --release -p lmc -p lmc-runtime
LMC=target/release/lmc
OUT=out/main
mkdir -p "$OUT"

$LMC check models/*.model models/std/*.model
$LMC fmt --check models/*.model models/std/*.model

$LMC ab models/experiments/positions_small.yaml \
  --html "$OUT/ab.html" --json "$OUT/ab.json" --csv "$OUT/ab.csv"
