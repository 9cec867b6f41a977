#!/usr/bin/env python3
"""Peak memory of BERT-base (fp32, 2 threads) in lmc and in ONNX Runtime, in one run.

Each runs in a process of its own, so each peak is that process's alone: lmc through
`lmc bench --json` (its whole-process peak RSS, which includes compiling; its peak RSS while
running, measured after resetting the peak once compiling is over; and its activations), ONNX
Runtime in a Python process that imports only onnxruntime and numpy, measured the same two ways
(whole process, and while running after the session is created). The ONNX model is exported
from transformers' BertModel here first. Needs the peers' venv
(`bench/peers/setup_venv.sh`); never part of the test command.

    ~/.cache/lmc-peers/venv/bin/python bench/peers/memory.py [--seq 512] [--batch 1] [--runs 3]
"""

import argparse
import json
import pathlib
import subprocess
import sys
import tempfile

from bert_model import export_onnx, last_hidden_state_model

ROOT = pathlib.Path(__file__).resolve().parents[2]

# Runs in its own process: peak RSS overall (ru_maxrss) and while running (VmHWM after a reset
# through /proc/self/clear_refs, as `lmc bench` does).
ORT_PROCESS = r"""
import json, resource, sys
import numpy as np
import onnxruntime as ort
path, batch, seq, runs = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
options = ort.SessionOptions()
options.intra_op_num_threads = 2
session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
rng = np.random.default_rng(0)
feed = {"input_ids": rng.integers(0, 30522, (batch, seq), dtype=np.int64),
        "attention_mask": np.ones((batch, seq), dtype=np.int64),
        "token_type_ids": np.zeros((batch, seq), dtype=np.int64)}
def status(field):
    for line in open("/proc/self/status"):
        if line.startswith(field):
            return int(line.split()[1]) * 1024
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")
for _ in range(runs):
    session.run(None, feed)
running = status("VmHWM:")
print(json.dumps({"peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
                  "run_peak_rss_bytes": running}))
"""


def mib(b):
    return f"{b / 1048576:.0f} MiB" if b is not None else "-"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--seq", type=int, default=512)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--lmc", default=str(ROOT / "target/release/lmc"))
    args = ap.parse_args()

    model = last_hidden_state_model()
    import torch

    ids = torch.randint(0, 30522, (args.batch, args.seq))
    with tempfile.TemporaryDirectory() as tmp:
        onnx_path = pathlib.Path(tmp) / "bert.onnx"
        export_onnx(model, ids, onnx_path)
        ort_run = subprocess.run([sys.executable, "-c", ORT_PROCESS, str(onnx_path), str(args.batch), str(args.seq), str(args.runs)],
                                 check=True, capture_output=True, text=True)
        ort_mem = json.loads(ort_run.stdout.strip().splitlines()[-1])
        out = pathlib.Path(tmp) / "lmc.json"
        subprocess.run([args.lmc, "bench", "models/bert.model:BertModel", "--random-weights", "--batch", str(args.batch),
                        "--seq", str(args.seq), "--threads", "2", "--runs", str(args.runs), "--warmup", "0", "--json", str(out)],
                       cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
        lmc = json.loads(out.read_text())

    print(f"BERT-base, batch {args.batch}, seq {args.seq}, fp32, 2 threads, {args.runs} runs; peak RSS of each process")
    print(f"  {'':<14}{'whole process':>16}{'while running':>16}")
    print(f"  {'lmc':<14}{mib(lmc['peak_rss_bytes']):>16}{mib(lmc.get('run_peak_rss_bytes')):>16}"
          f"   (activations {mib(lmc.get('activation_bytes'))}; the whole process includes compiling)")
    print(f"  {'ONNX Runtime':<14}{mib(ort_mem['peak_rss_bytes']):>16}{mib(ort_mem['run_peak_rss_bytes']):>16}")
    for key, what in [("peak_rss_bytes", "whole process"), ("run_peak_rss_bytes", "while running")]:
        if lmc.get(key) and ort_mem.get(key):
            print(f"  lmc / ONNX Runtime, {what}: {lmc[key] / ort_mem[key]:.2f}")


if __name__ == "__main__":
    main()
