#!/usr/bin/env python3
"""BERT-base's matmul shapes (M x N x K: 128x768x768, 128x3072x768, 128x768x3072), fp32, in lmc
and in numpy's OpenBLAS, interleaved in one run: lmc's GFLOP/s as a fraction of OpenBLAS's.

Each shape is `x @ transpose(w)` with `w: [N, K]`, as a Linear stores it. lmc runs through
`lmc bench --json` on a one-line model written to a temporary directory; OpenBLAS in this
process. Rounds alternate (lmc, OpenBLAS, lmc, ...) so that both see the same machine; the
best round of each is compared, since on a shared machine the slow rounds are other work's.
Needs the peers' venv (`bench/peers/setup_venv.sh`); never part of the test command.

    ~/.cache/lmc-peers/venv/bin/python bench/peers/matmul.py [--threads 2] [--rounds 5]
"""
import argparse
import json
import os
import pathlib
import subprocess
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parents[2]
SHAPES = [(128, 768, 768), (128, 3072, 768), (128, 768, 3072)]

MODEL = """config Shape {{
  n = {n}
  k = {k}
}}
model Linear(c: Shape) {{
  param w: f32[c.n, c.k]
  forward(x: f32[B, T, c.k]) -> (y: f32[B, T, c.n]) {{
    return x @ transpose(w)
  }}
}}
"""


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--lmc", default=str(ROOT / "target/release/lmc"))
    args = ap.parse_args()
    # OpenBLAS reads its thread count when numpy is imported.
    os.environ["OPENBLAS_NUM_THREADS"] = str(args.threads)
    import numpy as np

    print(f"fp32, {args.threads} threads, best of {args.rounds} interleaved rounds")
    print(f"{'M x N x K':<18}{'lmc GFLOP/s':>12}{'OpenBLAS':>10}{'lmc / OpenBLAS':>16}")
    with tempfile.TemporaryDirectory() as tmp:
        for m, n, k in SHAPES:
            model = pathlib.Path(tmp) / f"linear_{n}_{k}.model"
            model.write_text(MODEL.format(n=n, k=k))
            out = pathlib.Path(tmp) / "lmc.json"
            x = np.random.rand(m, k).astype(np.float32)
            w = np.random.rand(n, k).astype(np.float32)
            flop = 2.0 * m * n * k
            best_lmc = best_blas = 0.0
            for _ in range(args.rounds):
                subprocess.run(
                    [args.lmc, "bench", str(model), "--batch", "1", "--seq", str(m), "--threads", str(args.threads),
                     "--runs", "50", "--warmup", "5", "--json", str(out)],
                    check=True, stdout=subprocess.DEVNULL,
                )
                best_lmc = max(best_lmc, json.loads(out.read_text())["gflop_per_s"])
                for _ in range(5):
                    x @ w.T
                times = []
                for _ in range(50):
                    started = time.perf_counter()
                    x @ w.T
                    times.append(time.perf_counter() - started)
                times.sort()
                best_blas = max(best_blas, flop / times[len(times) // 2] / 1e9)
            print(f"{m}x{n}x{k:<10}{best_lmc:>12.1f}{best_blas:>10.1f}{best_lmc / best_blas:>15.0%}")


if __name__ == "__main__":
    main()
