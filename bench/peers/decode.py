#!/usr/bin/env python3
"""Greedy decoding speed: tokens per second of the steps after the prompt (batch 1, fp32,
2 threads) for a GPT-2-small-shaped, an RWKV-4 169M-shaped and a Mamba 130M-shaped random model,
in lmc (`lmc generate --json`, the decode step the compiler derives) and in Hugging Face
transformers (`generate` with its cache), in interleaved rounds of one run; and the memory
bandwidth bound: the fp32 weight bytes a step reads, divided by the read bandwidth measured
here (a 2-thread sum over 1 GiB). Needs the peers' venv (`bench/peers/setup_venv.sh`); never
part of the test command.

    ~/.cache/lmc-peers/venv/bin/python bench/peers/decode.py [--new 64] [--rounds 2]
"""
import argparse
import json
import pathlib
import subprocess
import tempfile
import time

from recurrent import SHAPES, hf_model
from timing import offline_torch

ROOT = pathlib.Path(__file__).resolve().parents[2]
PROMPT = 8

MODELS = {"GPT-2 small": ("models/gpt2.model:GPT2LMHeadModel", {})}
MODELS.update(SHAPES)


def transformers_model(name, settings):
    if name.startswith("GPT-2"):
        from transformers import GPT2Config, GPT2LMHeadModel

        return GPT2LMHeadModel(GPT2Config()).eval()
    return hf_model(name, settings)


def read_bandwidth(torch):
    """Bytes per second of the best of five 2-thread sums over 1 GiB."""
    a = torch.ones(1 << 28, dtype=torch.float32)
    best = float("inf")
    for _ in range(5):
        started = time.perf_counter()
        a.sum()
        best = min(best, time.perf_counter() - started)
    return a.numel() * 4 / best


def bytes_per_step(model):
    """fp32 bytes of the weights one step reads: all of them, but only a row of an input
    embedding that the head does not share."""
    total = sum(p.numel() for p in model.parameters())
    embedding = model.get_input_embeddings().weight
    tied = embedding.data_ptr() == model.get_output_embeddings().weight.data_ptr()
    return 4 * (total if tied else total - embedding.numel())


def transformers_tokens_per_s(torch, model, ids, new):
    """Decode steps per second: generate `new` tokens and one, the difference is the steps."""
    def run(n):
        started = time.perf_counter()
        with torch.no_grad():
            model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, min_new_tokens=n,
                           do_sample=False, pad_token_id=0)
        return time.perf_counter() - started

    run(2)
    return (new - 1) / (run(new) - run(1))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--new", type=int, default=64, help="new tokens per sequence")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--lmc", default=str(ROOT / "target/release/lmc"))
    args = ap.parse_args()
    torch = offline_torch()
    bandwidth = read_bandwidth(torch)
    print(f"batch 1, prompt {PROMPT}, {args.new} new tokens, fp32, 2 threads, best of {args.rounds} interleaved rounds; "
          f"read bandwidth {bandwidth / 1e9:.1f} GB/s")
    with tempfile.TemporaryDirectory() as tmp:
        out = pathlib.Path(tmp) / "lmc.json"
        for name, (spec, settings) in MODELS.items():
            model = transformers_model(name, settings)
            vocab = model.config.vocab_size
            ids = torch.randint(0, vocab, (1, PROMPT))
            sets = [a for k, v in settings.items() for a in ("--set", f"{k}={v}")]
            best = {"lmc": 0.0, "transformers": 0.0}
            for _ in range(args.rounds):
                subprocess.run(
                    [args.lmc, "generate", spec, *sets, "--random-weights", "--threads", "2",
                     "--input-ids", ",".join(str(int(i)) for i in ids[0]), "--max-new-tokens", str(args.new),
                     "--json", str(out)],
                    cwd=ROOT, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                )
                best["lmc"] = max(best["lmc"], json.loads(out.read_text())["decode_tokens_per_s"])
                best["transformers"] = max(best["transformers"], transformers_tokens_per_s(torch, model, ids, args.new))
            bound = bandwidth / bytes_per_step(model)
            print(f"{name}: lmc {best['lmc']:.1f} tokens/s, transformers {best['transformers']:.1f} tokens/s "
                  f"(lmc {best['lmc'] / best['transformers']:.2f}x); bandwidth bound {bound:.1f} tokens/s "
                  f"({bytes_per_step(model) / 1e6:.0f} MB per step): lmc at {best['lmc'] / bound:.0%} of it")


if __name__ == "__main__":
    main()
