#!/usr/bin/env bash
# The main job: two A/B experiments with `lmc ab` on position schemes (learned table, ALiBi,
# RoPE, sinusoidal), each a one-line variant of a model file.
# models/experiments/positions_small.yaml times them on a small BERT shape with seeded random
# weights (shared by name, so the variants differ only in how positions enter): parameters,
# FLOPs per token, compile time, latency with confidence intervals from interleaved runs, and
# how far each variant's output drifts from the learned-position model's. The last length is
# past the learned table, which the report says instead of failing.
# models/experiments/positions_trained.yaml trains a small GPT-2 with each scheme, three seeds,
# at 64 tokens, and scores them on a held-out text at 64 to 256 tokens: which extrapolates.
# The reports are printed and written to out/main/ as HTML (charts), JSON and CSV; the trained
# runs stay in out/main/positions_trained/, so running the job again only reports.
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
$LMC ab models/experiments/positions_trained.yaml --out "$OUT/positions_trained" \
  --html "$OUT/trained.html" --json "$OUT/trained.json" --csv "$OUT/trained.csv"
