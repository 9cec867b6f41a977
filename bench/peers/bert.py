#!/usr/bin/env python3
"""BERT-base (batch 1, fp32, 2 threads) in lmc, PyTorch eager, torch.compile and ONNX Runtime, in one run.

Each runs the same shape on random weights; lmc through `lmc bench --json`, the peers in this
process, in interleaved rounds (lmc, eager, compiled, ORT, lmc, ...); each keeps its best
round's median. Prints them and the ratios lmc / peer. Needs the peers' venv
(`bench/peers/setup_venv.sh`); never part of the test command.

    ~/.cache/lmc-peers/venv/bin/python bench/peers/bert.py [--seq 128] [--batch 1] [--runs 5] [--rounds 3]
"""
import argparse
import json
import pathlib
import subprocess
import tempfile
import time

from bert_model import export_onnx, last_hidden_state_model
from timing import median_ms

ROOT = pathlib.Path(__file__).resolve().parents[2]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds; each contestant keeps its best")
    ap.add_argument("--lmc", default=str(ROOT / "target/release/lmc"))
    ap.add_argument("--no-compile", action="store_true", help="skip torch.compile (about 35 s of compiling)")
    args = ap.parse_args()

    import torch

    torch.set_num_threads(2)
    model = last_hidden_state_model()
    ids = torch.randint(0, 30522, (args.batch, args.seq))
    mask = torch.ones_like(ids)
    types = torch.zeros_like(ids)
    results = {}

    with tempfile.TemporaryDirectory() as tmp:
        out = pathlib.Path(tmp) / "lmc.json"

        def run_lmc():
            subprocess.run(
                [args.lmc, "bench", "models/bert.model:BertModel", "--batch", str(args.batch), "--seq", str(args.seq),
                 "--threads", "2", "--runs", str(args.runs), "--warmup", str(args.warmup), "--json", str(out)],
                cwd=ROOT, check=True, stdout=subprocess.DEVNULL,
            )
            return json.loads(out.read_text())

        contestants = {"lmc": lambda: run_lmc()["median_ms"]}
        with torch.no_grad():
            contestants["PyTorch eager"] = lambda: median_ms(lambda: model(ids, mask, types), args.runs, args.warmup)

        if not args.no_compile:
            compiled = torch.compile(model)
            started = time.perf_counter()
            with torch.no_grad():
                compiled(ids, mask, types)
            print(f"torch.compile: compiled in {time.perf_counter() - started:.1f} s")

            def run_compiled():
                with torch.no_grad():
                    return median_ms(lambda: compiled(ids, mask, types), args.runs, args.warmup)

            contestants["torch.compile"] = run_compiled

        import onnxruntime as ort

        onnx_path = pathlib.Path(tmp) / "bert.onnx"
        export_onnx(model, ids, onnx_path)
        options = ort.SessionOptions()
        options.intra_op_num_threads = 2
        session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
        feed = {"input_ids": ids.numpy(), "attention_mask": mask.numpy(), "token_type_ids": types.numpy()}
        contestants["ONNX Runtime"] = lambda: median_ms(lambda: session.run(None, feed), args.runs, args.warmup)

        # Rounds alternate between the contestants, so that each sees the same machine; each
        # keeps its best round's median (on a shared machine the slow rounds are other work's).
        results = {}
        for _ in range(args.rounds):
            for name, run in contestants.items():
                results[name] = min(results.get(name, float("inf")), run())
        lmc = json.loads(out.read_text())

    print(f"\nBERT-base, batch {args.batch}, seq {args.seq}, fp32, 2 threads; lmc: {lmc['gflop']:.2f} GFLOP, "
          f"{lmc['gflop'] / (results['lmc'] / 1e3):.2f} GFLOP/s, compiled in {lmc['compile_ms'] / 1e3:.1f} s")
    for name, ms in results.items():
        ratio = "" if name == "lmc" else f"   lmc / {name} = {results['lmc'] / ms:.2f}"
        print(f"  {name:<16}{ms:10.1f} ms{ratio}")


if __name__ == "__main__":
    main()
