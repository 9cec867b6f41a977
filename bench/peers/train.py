#!/usr/bin/env python3
"""One training step (forward, backward, AdamW), fp32, 2 threads: lmc (`lmc train`, the
backward the compiler derives, the step time its --log-json records) against PyTorch eager and
torch.compile on the same shapes, random weights, dropout off (with --dropout: on, as each config's
defaults ask, in both), in one run; and each one's peak
memory (the largest resident set of a process that does only that). Needs the peers' venv
(`bench/peers/setup_venv.sh`); never part of the test command.

    ~/.cache/lmc-peers/venv/bin/python bench/peers/train.py [--steps 4] [--only gpt2|bert|mamba|rwkv] [--no-compile] [--dropout]
"""
import argparse
import json
import pathlib
import platform
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parents[2]

# name: (lmc spec, batch, length); the recurrences at their 130M/169M checkpoints' width with
# 6 layers (their configs' other keys as in RECURRENT below)
SHAPES = {
    "gpt2": ("models/gpt2.model:GPT2LMHeadModel", 4, 256),
    "bert": ("models/bert.model:BertForMaskedLM", 8, 128),
    "mamba": ("models/mamba.model:MambaForCausalLM", 2, 256),
    "rwkv": ("models/rwkv.model:RwkvForCausalLM", 2, 256),
}

# Config keys of the recurrent shapes, given to transformers and as lmc's --set. RWKV's
# rescaling is off: transformers applies it only outside training.
RECURRENT = {
    "mamba": {"hidden_size": 768, "num_hidden_layers": 6, "vocab_size": 50280, "state_size": 16},
    "rwkv": {"hidden_size": 768, "num_hidden_layers": 6, "vocab_size": 50277, "rescale_every": 0},
}


def transformers_model(name, dropout=False):
    if name == "gpt2":
        from transformers import GPT2Config, GPT2LMHeadModel

        off = {} if dropout else {"attn_pdrop": 0.0, "embd_pdrop": 0.0, "resid_pdrop": 0.0}
        return GPT2LMHeadModel(GPT2Config(**off))
    if name == "mamba":
        from transformers import MambaConfig, MambaForCausalLM

        return MambaForCausalLM(MambaConfig(**RECURRENT[name]))
    if name == "rwkv":
        from transformers import RwkvConfig, RwkvForCausalLM

        return RwkvForCausalLM(RwkvConfig(**RECURRENT[name]))
    from transformers import BertConfig, BertForMaskedLM

    off = {} if dropout else {"hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0}
    return BertForMaskedLM(BertConfig(**off))


def batches(torch, name, steps, batch, length, vocab):
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, vocab, (steps, batch, length), generator=g)
    if name != "bert":
        return ids, ids.clone()
    labels = torch.full_like(ids, -100)
    chosen = torch.rand(ids.shape, generator=g) < 0.15
    labels[chosen] = ids[chosen]
    return ids, labels


def torch_steps(name, steps, compiled, dropout):
    """Runs in a child process: the median step time (ms) after the first, and prints it."""
    sys.path.insert(0, str(pathlib.Path(__file__).parent))
    from timing import offline_torch

    torch = offline_torch()
    _, batch, length = SHAPES[name]
    model = transformers_model(name, dropout).train()
    ids, labels = batches(torch, name, steps, batch, length, model.config.vocab_size)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.0)
    forward = torch.compile(model) if compiled else model
    times = []
    for s in range(steps):
        started = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        loss = forward(input_ids=ids[s], labels=labels[s]).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        times.append((time.perf_counter() - started) * 1e3)
    print(json.dumps({"step_ms": statistics.median(times[1:]), "loss": loss.item()}))


def child(args):
    """Runs a command; its stdout and its own peak resident set (bytes), from wait4."""
    import os

    with tempfile.TemporaryFile("w+") as out:
        p = subprocess.Popen(args, cwd=ROOT, stdout=out, stderr=subprocess.DEVNULL, text=True)
        _, status, usage = os.wait4(p.pid, 0)
        p.returncode = os.waitstatus_to_exitcode(status)
        if p.returncode != 0:
            raise SystemExit(f"{' '.join(args[:3])} ... failed with exit {p.returncode}")
        out.seek(0)
        return out.read(), usage.ru_maxrss * 1024


def lmc_steps(lmc, name, steps, tmp, dropout):
    from safetensors.torch import save_file

    sys.path.insert(0, str(pathlib.Path(__file__).parent))
    from timing import offline_torch

    torch = offline_torch()
    spec, batch, length = SHAPES[name]
    vocab = transformers_model(name).config.vocab_size
    ids, labels = batches(torch, name, steps, batch, length, vocab)
    data = pathlib.Path(tmp) / f"{name}.safetensors"
    save_file({"input_ids": ids, "labels": labels}, data)
    log = pathlib.Path(tmp) / f"{name}.jsonl"
    sets = [a for k, v in RECURRENT.get(name, {}).items() for a in ("--set", f"{k}={v}")]
    _, peak = child([lmc, "train", spec, "--random-weights", "--data", str(data), "--max-steps", str(steps),
                     "--learning-rate", "1e-4", "--threads", "2", "--save-steps", "0",
                     "--log-json", str(log), "-o", str(pathlib.Path(tmp) / f"{name}-out")] + sets
                    + ([] if dropout else ["--no-dropout"]))
    records = [json.loads(l) for l in log.read_text().splitlines()]
    return statistics.median(r["step_s"] * 1e3 for r in records[1:]), peak


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=4, help="steps per contestant (the first is not timed)")
    ap.add_argument("--only", choices=sorted(SHAPES))
    ap.add_argument("--no-compile", action="store_true")
    ap.add_argument("--dropout", action="store_true", help="dropout on, at each config's defaults, in lmc and PyTorch")
    ap.add_argument("--lmc", default=str(ROOT / "target/release/lmc"))
    ap.add_argument("--torch-child", nargs=2, metavar=("NAME", "MODE"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.torch_child:
        torch_steps(args.torch_child[0], args.steps, args.torch_child[1] == "compile", args.dropout)
        return
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), platform.processor())
    dropout = "dropout on" if args.dropout else "dropout off"
    print(f"{time.strftime('%Y-%m-%d')}, {cpu}, commit {commit}; fp32, 2 threads, {dropout}, median of {args.steps - 1} steps after one")
    with tempfile.TemporaryDirectory() as tmp:
        for name, (spec, batch, length) in SHAPES.items():
            if args.only and name != args.only:
                continue
            lmc_ms, lmc_peak = lmc_steps(args.lmc, name, args.steps, tmp, args.dropout)
            results = {}
            for mode in ["eager"] + ([] if args.no_compile else ["compile"]):
                out, peak = child([sys.executable, __file__, "--steps", str(args.steps), "--torch-child", name, mode]
                                  + (["--dropout"] if args.dropout else []))
                results[mode] = (json.loads(out.strip().splitlines()[-1])["step_ms"], peak)
            best_mode = min(results, key=lambda m: results[m][0])
            tokens = batch * length
            line = f"{name} {batch}x{length}: lmc {lmc_ms:.0f} ms/step ({tokens / lmc_ms * 1e3:.0f} tokens/s)"
            for mode, (ms, _) in results.items():
                line += f", torch {mode} {ms:.0f} ms"
            line += f"; lmc / best torch ({best_mode}) = {lmc_ms / results[best_mode][0]:.2f}x"
            peaks = [f"lmc {lmc_peak / 2**30:.2f} GiB"] + [f"torch {m} {p / 2**30:.2f} GiB" for m, (_, p) in results.items()]
            print(line + "; peak memory " + ", ".join(peaks))


if __name__ == "__main__":
    main()
