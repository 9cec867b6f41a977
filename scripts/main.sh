#!/usr/bin/env bash
# The main job, as far as lmc goes today: check the shipped models, compile each to a shared
# library, run each on the bundled Hugging Face checkpoint, JIT-compiled and from the library,
# comparing the two, and run BERT's position-scheme variants beside it. (`lmc ab`, the A/B
# report with timings and divergence, is the next step.)
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
for spec in BertModel:model BertEmbeddings:embeddings BertIntermediate:intermediate BertFeedForwardStack:intermediate; do
  model=${spec%%:*}; fixture=${spec##*:}
  $LMC compile "models/bert.model:$model" --config "$CKPT" -o "$OUT/lib$model.so"
  $LMC run "models/bert.model:$model" --weights "$CKPT" --inputs "$CKPT/inputs_$fixture.safetensors" -o "$OUT/$model.jit.safetensors"
  $LMC run "models/bert.model:$model" --library "$OUT/lib$model.so" --weights "$CKPT" \
       --inputs "$CKPT/inputs_$fixture.safetensors" -o "$OUT/$model.so.safetensors"
  cmp "$OUT/$model.jit.safetensors" "$OUT/$model.so.safetensors" && echo "$model: JIT and shared library agree bit for bit"
done

# GPT-2 on its own checkpoint.
$LMC run models/gpt2.model --weights tests/fixtures/gpt2_tiny \
     --inputs tests/fixtures/gpt2_tiny/inputs.safetensors -o "$OUT/GPT2LMHeadModel.jit.safetensors"

# LLaMA on its own checkpoint.
$LMC run models/llama.model --weights tests/fixtures/llama_tiny \
     --inputs tests/fixtures/llama_tiny/inputs.safetensors -o "$OUT/LlamaForCausalLM.jit.safetensors"

# T5, a 3-layer encoder and a 2-layer decoder, on its own checkpoint.
$LMC run models/t5.model:T5ForConditionalGeneration --weights tests/fixtures/t5_tiny \
     --inputs tests/fixtures/t5_tiny/inputs.safetensors -o "$OUT/T5.jit.safetensors"

# One-line architectural variants of BERT, on the same checkpoint: every position scheme.
for variant in BertSinusoidal BertALiBi BertNoPositions; do
  $LMC run "models/bert.model:$variant" --weights "$CKPT" \
       --inputs "$CKPT/inputs_model.safetensors" -o "$OUT/$variant.jit.safetensors"
done
# RoPE rotates halves of each head, so it needs an even head width: 6 heads of 6 here.
$LMC run models/bert.model:BertRoPE --weights "$CKPT" --set num_attention_heads=6 \
     --inputs "$CKPT/inputs_model.safetensors" -o "$OUT/BertRoPE.jit.safetensors"
