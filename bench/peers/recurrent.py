#!/usr/bin/env python3
"""RWKV-4 169M-shaped and Mamba 130M-shaped models over 512 tokens (batch 1, fp32, 2 threads) in
lmc and in Hugging Face transformers' CPU path, in interleaved rounds of one run.

Both run random weights at the same shapes (transformers' own initialisation; lmc's seeded
one); the work is the same whatever the values. lmc runs through `lmc bench --json`,
transformers in this process with `torch.set_num_threads(2)`. Each keeps its best round's
median. Needs the peers' venv (`bench/peers/setup_venv.sh`); never part of the test command.

    ~/.cache/lmc-peers/venv/bin/python bench/peers/recurrent.py [--seq 512] [--runs 3] [--rounds 2]
"""
import argparse
import json
import pathlib
import subprocess
import tempfile

from timing import median_ms, offline_torch

ROOT = pathlib.Path(__file__).resolve().parents[2]

SHAPES = {
    "RWKV-4 169M": ("models/rwkv.model", {"hidden_size": 768, "num_hidden_layers": 12, "vocab_size": 50277}),
    "Mamba 130M": ("models/mamba.model", {"hidden_size": 768, "num_hidden_layers": 24, "vocab_size": 50280}),
}


def hf_model(name, settings):
    from transformers import MambaConfig, MambaForCausalLM, RwkvConfig, RwkvForCausalLM

    if name.startswith("RWKV"):
        config = RwkvConfig(hidden_size=settings["hidden_size"], num_hidden_layers=settings["num_hidden_layers"],
                            vocab_size=settings["vocab_size"], attention_hidden_size=settings["hidden_size"],
                            intermediate_size=4 * settings["hidden_size"])
        return RwkvForCausalLM(config).eval()
    config = MambaConfig(hidden_size=settings["hidden_size"], num_hidden_layers=settings["num_hidden_layers"],
                         vocab_size=settings["vocab_size"])
    return MambaForCausalLM(config).eval()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seq", type=int, default=512)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--lmc", default=str(ROOT / "target/release/lmc"))
    args = ap.parse_args()
    torch = offline_torch()
    print(f"batch 1, {args.seq} tokens, fp32, 2 threads, best of {args.rounds} interleaved rounds")
    with tempfile.TemporaryDirectory() as tmp:
        out = pathlib.Path(tmp) / "lmc.json"
        for name, (path, settings) in SHAPES.items():
            model = hf_model(name, settings)
            ids = torch.randint(0, settings["vocab_size"], (1, args.seq))
            sets = [a for k, v in settings.items() for a in ("--set", f"{k}={v}")]
            best = {"lmc": float("inf"), "transformers": float("inf")}
            for _ in range(args.rounds):
                subprocess.run(
                    [args.lmc, "bench", path, *sets, "--seq", str(args.seq), "--threads", "2",
                     "--runs", str(args.runs), "--warmup", str(args.warmup), "--json", str(out)],
                    cwd=ROOT, check=True, stdout=subprocess.DEVNULL,
                )
                best["lmc"] = min(best["lmc"], json.loads(out.read_text())["median_ms"])
                with torch.no_grad():
                    best["transformers"] = min(best["transformers"], median_ms(lambda: model(ids), args.runs, args.warmup))
            lmc = json.loads(out.read_text())
            print(f"{name}: lmc {best['lmc']:.0f} ms ({lmc['gflop']:.1f} GFLOP, "
                  f"{lmc['gflop'] / best['lmc'] * 1e3:.1f} GFLOP/s, compiled in {lmc['compile_ms'] / 1e3:.1f} s), "
                  f"transformers {best['transformers']:.0f} ms: lmc is {best['transformers'] / best['lmc']:.2f}x faster")


if __name__ == "__main__":
    main()
