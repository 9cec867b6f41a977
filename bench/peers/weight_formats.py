#!/usr/bin/env python3
"""Greedy decoding speed with the weight matrices stored as f32, bf16, int8 and int4 (`--set
weights=...`) on a LLaMA-shaped random model (8 layers of 1024, MLP 2816, 32k vocabulary,
untied head), on GPT-2 small (its tied head read through a packed copy) and on a Mamba of
mamba-130m's shape (24 layers of 768, state 16, tied head), beside
transformers in fp32 and bf16 (and, for the LLaMA shape, llama.cpp in Q8_0 and Q4_0 where its
Python bindings are installed), in interleaved rounds of one run; and each format's
memory-bandwidth bound: the bytes a step reads (the matmuls' weights in the format, int8's and
int4's scales included; every other weight in f32; of the input embedding one row) over the read
bandwidth measured here (a 2-thread sum over 1 GiB). Batch 1, an 8-token prompt, 2 threads.
Needs the peers' venv (`bench/peers/setup_venv.sh`); never part of the test command.

    ~/.cache/lmc-peers/venv/bin/python bench/peers/weight_formats.py [--new 64] [--rounds 3] [--only Mamba]
"""
import argparse
import json
import pathlib
import subprocess
import tempfile

from decode import PROMPT, read_bandwidth, transformers_tokens_per_s
from timing import offline_torch

ROOT = pathlib.Path(__file__).resolve().parents[2]
SHAPE = {"hidden_size": 1024, "intermediate_size": 2816, "num_hidden_layers": 8, "num_attention_heads": 16,
         "num_key_value_heads": 16, "head_dim": 64, "vocab_size": 32000, "max_position_embeddings": 512}
# Bytes per element of a Linear weight: int8's and int4's f32 scale per block of 32 adds 4/32.
BYTES = {"f32": 4.0, "bf16": 2.0, "int8": 1.0 + 4.0 / 32, "int4": 0.5 + 4.0 / 32}
# llama.cpp's formats beside them: int8 and 4-bit blocks of 32 with an f16 scale each.
LLAMA_CPP = ["Q8_0", "Q4_0"]
# mamba-130m's shape; transformers resolves time_step_rank "auto" to ceil(768 / 16) = 48, lmc's default.
MAMBA = {"hidden_size": 768, "num_hidden_layers": 24, "vocab_size": 50280}


def step_bytes(model, per_element):
    """Bytes one decode step reads: the matmuls' weights (Linear, Conv1D, the head) at
    `per_element` bytes, the rest in f32, one row of the input embedding."""
    head = model.get_output_embeddings().weight
    embedding = model.get_input_embeddings().weight
    matrices = [m.weight for m in model.modules() if type(m).__name__ in ("Linear", "Conv1D") and m.weight is not head]
    matmul = sum(w.numel() for w in matrices) + head.numel()
    other = sum(p.numel() for p in model.parameters()) - sum(w.numel() for w in matrices) - embedding.numel()
    if head.data_ptr() != embedding.data_ptr():
        other -= head.numel()
    return matmul * per_element + 4 * other


# transformers' LLaMA names and GGUF's (llama.cpp's `llama` architecture).
GGUF_NAMES = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
              "lm_head.weight": "output.weight"}
GGUF_LAYER = {"self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
              "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
              "mlp.down_proj": "ffn_down", "input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm"}


def llama_cpp_tokens_per_s(model, ids, new, tmp, kind):
    """llama.cpp's greedy decoding (its Python bindings, 2 threads) of `model`'s shape with its
    matrices in `kind` (Q8_0 or Q4_0, llama.cpp's int8 or 4-bit blocks of 32 with an f16 scale
    each), written as a GGUF file here; its decode steps' tokens per second. None when the bindings are not installed
    (`pip install llama-cpp-python gguf`: they build llama.cpp from source). The weights are
    the transformers model's, unpermuted (their values do not change the time), and the
    vocabulary is placeholder pieces (the prompt goes in as ids)."""
    try:
        import gguf
        import llama_cpp
    except ImportError:
        return None
    import time
    path = pathlib.Path(tmp) / f"llama-{kind.lower()}.gguf"
    quant = getattr(gguf.GGMLQuantizationType, kind)
    if not path.exists():
        cfg = model.config
        writer = gguf.GGUFWriter(str(path), "llama")
        writer.add_context_length(cfg.max_position_embeddings)
        writer.add_embedding_length(cfg.hidden_size)
        writer.add_block_count(cfg.num_hidden_layers)
        writer.add_feed_forward_length(cfg.intermediate_size)
        writer.add_head_count(cfg.num_attention_heads)
        writer.add_head_count_kv(cfg.num_key_value_heads)
        writer.add_rope_dimension_count(cfg.head_dim)
        writer.add_layer_norm_rms_eps(cfg.rms_norm_eps)
        # transformers 5 keeps it among `rope_parameters`.
        rope = getattr(cfg, "rope_parameters", None) or {}
        writer.add_rope_freq_base(float(rope.get("rope_theta", getattr(cfg, "rope_theta", 10000.0))))
        writer.add_file_type(getattr(gguf.LlamaFileType, f"MOSTLY_{kind}"))
        writer.add_tokenizer_model("llama")
        writer.add_token_list([f"<t{i}>".encode() for i in range(cfg.vocab_size)])
        writer.add_token_scores([0.0] * cfg.vocab_size)
        writer.add_token_types([gguf.TokenType.CONTROL] * 3 + [gguf.TokenType.NORMAL] * (cfg.vocab_size - 3))
        writer.add_bos_token_id(1)
        writer.add_eos_token_id(2)
        for name, tensor in model.state_dict().items():
            if name.startswith("model.layers."):
                layer, rest = name[len("model.layers."):].split(".", 1)
                module, kind = rest.rsplit(".", 1)
                name = f"blk.{layer}.{GGUF_LAYER[module]}.{kind}"
            else:
                name = GGUF_NAMES[name]
            values = tensor.float().numpy()
            if values.ndim == 2:
                quantized = gguf.quants.quantize(values, quant)
                writer.add_tensor(name, quantized, raw_dtype=quant)
            else:
                writer.add_tensor(name, values)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
    llm = llama_cpp.Llama(str(path), n_ctx=ids.shape[1] + new + 8, n_threads=2, n_threads_batch=2, verbose=False)
    started = None
    for i, _ in enumerate(llm.generate([int(t) for t in ids[0]], temp=0.0, top_k=1)):
        if i == 0:
            started = time.perf_counter()
        if i == new - 1:
            break
    return (new - 1) / (time.perf_counter() - started)


def models(torch):
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM, MambaConfig, MambaForCausalLM

    llama = LlamaConfig(**SHAPE, tie_word_embeddings=False)
    yield ("LLaMA shape", "models/llama.model:LlamaForCausalLM", [a for k, v in SHAPE.items() for a in ("--set", f"{k}={v}")],
           LlamaForCausalLM(llama).eval(), LlamaForCausalLM(llama).eval().to(torch.bfloat16))
    yield ("GPT-2 small", "models/gpt2.model:GPT2LMHeadModel", [], GPT2LMHeadModel(GPT2Config()).eval(),
           GPT2LMHeadModel(GPT2Config()).eval().to(torch.bfloat16))
    mamba = MambaConfig(**MAMBA)
    yield ("Mamba shape", "models/mamba.model:MambaForCausalLM", [a for k, v in MAMBA.items() for a in ("--set", f"{k}={v}")],
           MambaForCausalLM(mamba).eval(), MambaForCausalLM(mamba).eval().to(torch.bfloat16))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--new", type=int, default=64, help="new tokens per sequence")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--lmc", default=str(ROOT / "target/release/lmc"))
    ap.add_argument("--only", help="run the models whose title contains this (LLaMA, GPT-2, Mamba)")
    args = ap.parse_args()
    torch = offline_torch()
    bandwidth = read_bandwidth(torch)
    print(f"batch 1, prompt {PROMPT}, {args.new} new tokens, 2 threads, best of {args.rounds} interleaved rounds; "
          f"read bandwidth {bandwidth / 1e9:.1f} GB/s; LLaMA shape {SHAPE}")
    for title, spec, sets, model, half in models(torch):
        if args.only and args.only not in title:
            continue
        ids = torch.randint(0, model.config.vocab_size, (1, PROMPT))
        best = {name: 0.0 for name in [*BYTES, "transformers fp32", "transformers bf16"]}
        if spec.startswith("models/llama.model"):
            best.update({f"llama.cpp {kind}": 0.0 for kind in LLAMA_CPP})
        with tempfile.TemporaryDirectory() as tmp:
            out = pathlib.Path(tmp) / "lmc.json"
            for _ in range(args.rounds):
                for fmt in BYTES:
                    subprocess.run(
                        [args.lmc, "generate", spec, *sets, "--set", f"weights={fmt}", "--random-weights", "--threads", "2",
                         "--input-ids", ",".join(str(int(i)) for i in ids[0]), "--max-new-tokens", str(args.new),
                         "--json", str(out)],
                        cwd=ROOT, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                    )
                    best[fmt] = max(best[fmt], json.loads(out.read_text())["decode_tokens_per_s"])
                best["transformers fp32"] = max(best["transformers fp32"], transformers_tokens_per_s(torch, model, ids, args.new))
                best["transformers bf16"] = max(best["transformers bf16"], transformers_tokens_per_s(torch, half, ids, args.new))
                for kind in LLAMA_CPP:
                    name = f"llama.cpp {kind}"
                    if name in best:
                        best[name] = max(best[name], llama_cpp_tokens_per_s(model, ids, args.new, tmp, kind) or 0.0)
        print(title)
        for name, tokens_per_s in best.items():
            if name.startswith("llama.cpp") and tokens_per_s == 0.0:
                print(f"  {name:18} not installed (pip install llama-cpp-python gguf)")
                continue
            line = f"  {name:18} {tokens_per_s:7.1f} tokens/s  {tokens_per_s / best['f32']:.2f}x lmc f32"
            if name in BYTES:
                step = step_bytes(model, BYTES[name])
                line += f"; bound {bandwidth / step:.1f} tokens/s ({step / 1e6:.0f} MB per step), at {tokens_per_s * step / bandwidth:.0%} of it"
            print(line)


if __name__ == "__main__":
    main()
