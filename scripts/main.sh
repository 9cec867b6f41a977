#!/usr/bin/env bash
# The main job, as far as lmc goes today: check the shipped models, compile each to a shared
# library, and run each on the bundled Hugging Face checkpoint, JIT-compiled and from the
# library, comparing the two. (`lmc ab`, the A/B report, is the next step.)
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
cargo build --release -p lmc -p lmc-runtime
LMC=target/release/lmc
CKPT=tests/fixtures/bert_tiny
OUT=out/main
mkdir -p "$OUT"

$LMC check models/*.model models/std/*.model
$LMC fmt --check models/*.model models/std/*.model
for spec in BertEmbeddings:embeddings BertIntermediate:intermediate BertFeedForwardStack:intermediate; do
  model=${spec%%:*}; fixture=${spec##*:}
  $LMC compile "models/bert.model:$model" --config "$CKPT" -o "$OUT/lib$model.so"
  $LMC run "models/bert.model:$model" --weights "$CKPT" --inputs "$CKPT/inputs_$fixture.safetensors" -o "$OUT/$model.jit.safetensors"
  $LMC run "models/bert.model:$model" --library "$OUT/lib$model.so" --weights "$CKPT" \
       --inputs "$CKPT/inputs_$fixture.safetensors" -o "$OUT/$model.so.safetensors"
  cmp "$OUT/$model.jit.safetensors" "$OUT/$model.so.safetensors" && echo "$model: JIT and shared library agree bit for bit"
done

# A one-line architectural variant against its base, on the same checkpoint.
$LMC run models/bert.model:BertFeedForwardStackRelu --weights "$CKPT" \
     --inputs "$CKPT/inputs_intermediate.safetensors" -o "$OUT/BertFeedForwardStackRelu.jit.safetensors"
