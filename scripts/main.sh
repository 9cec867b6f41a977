#!/usr/bin/env bash
# The main job: an A/B comparison of architectural variants with `lmc ab`. BERT's position
# schemes (learned table, ALiBi, RoPE, sinusoidal), each a one-line variant of
# models/bert.model, on a small BERT shape with seeded random weights (shared by name, so the
# variants differ only in how positions enter): parameters, FLOPs per token, compile time,
# latency with confidence intervals from interleaved runs, and how far each variant's output
# drifts from the learned-position model's. The last length is past the learned table, which
# the report says instead of failing. The report is printed and written to out/main/ab.json.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
cargo build --release -p lmc -p lmc-runtime
LMC=target/release/lmc
OUT=out/main
mkdir -p "$OUT"

$LMC check models/*.model models/std/*.model
$LMC fmt --check models/*.model models/std/*.model

$LMC ab models/bert.model:BertModel BertALiBi BertRoPE BertSinusoidal \
  --random-weights --seed 1 \
  --set hidden_size=128 --set num_attention_heads=4 --set intermediate_size=512 \
  --set num_hidden_layers=2 --set max_position_embeddings=128 \
  --batch 1 --lengths 32,128,256 --runs 10 \
  --json "$OUT/ab.json"
