#!/usr/bin/env python3
"""What calling a compiled model from Python costs: BERT-base (batch 1, fp32, 2 threads) as one
library of `lmc compile`, called through the Python package (`lmc.load`) and through the C API
(ctypes on liblmc_runtime.so: lmc_model_open, lmc_model_run, lmc_outputs_free), with ONNX
Runtime's Python API on the same model (random weights, exported from transformers) as the
anchor; interleaved rounds, each keeping its best round's median. Prints the medians and the
ratios Python / C. Needs the peers' venv with the package installed into it
(`pip install ./python`) and a release build of the runtime (`cargo build --release -p
lmc-runtime -p lmc`); never part of the test command.

    ~/.cache/lmc-peers/venv/bin/python bench/peers/python_overhead.py [--seq 128] [--runs 20] [--rounds 3]
"""
import argparse
import ctypes
import pathlib
import platform
import subprocess
import tempfile
import time

import numpy as np

from bert_model import export_onnx, last_hidden_state_model
from timing import median_ms

ROOT = pathlib.Path(__file__).resolve().parents[2]


class LmcTensor(ctypes.Structure):
    _fields_ = [
        ("name", ctypes.c_char_p),
        ("dtype", ctypes.c_int32),
        ("rank", ctypes.c_int32),
        ("shape", ctypes.POINTER(ctypes.c_int64)),
        ("data", ctypes.c_void_p),
        ("data_bytes", ctypes.c_size_t),
    ]


def c_api_call(runtime, library, weights, feed):
    """A call of lmc_model_run through ctypes: inputs described once, outputs freed each call."""
    runtime.lmc_model_open.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.POINTER(ctypes.c_void_p)]
    runtime.lmc_model_run.argtypes = [ctypes.c_void_p, ctypes.POINTER(LmcTensor), ctypes.c_size_t, ctypes.POINTER(ctypes.c_void_p)]
    runtime.lmc_outputs_free.argtypes = [ctypes.c_void_p]
    runtime.lmc_last_error.restype = ctypes.c_char_p
    model = ctypes.c_void_p()
    if runtime.lmc_model_open(str(library).encode(), str(weights).encode(), ctypes.byref(model)) != 0:
        raise SystemExit(runtime.lmc_last_error().decode())
    keep = []
    tensors = (LmcTensor * len(feed))()
    for t, (name, array) in zip(tensors, feed.items()):
        shape = (ctypes.c_int64 * array.ndim)(*array.shape)
        keep += [shape, array]
        t.name, t.dtype, t.rank, t.shape = name.encode(), 1, array.ndim, shape
        t.data, t.data_bytes = array.ctypes.data, array.nbytes
    outputs = ctypes.c_void_p()

    def call():
        if runtime.lmc_model_run(model, tensors, len(feed), ctypes.byref(outputs)) != 0:
            raise SystemExit(runtime.lmc_last_error().decode())
        runtime.lmc_outputs_free(outputs)

    call.keep = keep
    return call


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--lmc", default=str(ROOT / "target/release/lmc"))
    ap.add_argument("--runtime", default=str(ROOT / "target/release/liblmc_runtime.so"))
    args = ap.parse_args()

    import lmc
    import onnxruntime as ort
    import torch

    torch.set_num_threads(2)
    model = last_hidden_state_model()
    rng = np.random.default_rng(0)
    feed = {
        "input_ids": rng.integers(0, 30522, (1, args.seq), dtype=np.int64),
        "attention_mask": np.ones((1, args.seq), np.int64),
        "token_type_ids": np.zeros((1, args.seq), np.int64),
    }
    with tempfile.TemporaryDirectory() as tmp:
        tmp = pathlib.Path(tmp)
        weights = tmp / "bert"
        model.bert.save_pretrained(weights)
        library = tmp / "libbert.so"
        subprocess.run([args.lmc, "compile", "models/bert.model:BertModel", "--config", str(weights), "-o", str(library)],
                       cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
        export_onnx(model, torch.from_numpy(feed["input_ids"]), tmp / "bert.onnx")
        options = ort.SessionOptions()
        options.intra_op_num_threads = 2
        session = ort.InferenceSession(str(tmp / "bert.onnx"), options, providers=["CPUExecutionProvider"])

        python_model = lmc.load(library, weights=weights, threads=2)
        c_call = c_api_call(ctypes.CDLL(args.runtime), library, weights, feed)
        # Both lmc paths return the same numbers: the same library, the same weights.
        contestants = {
            "lmc (C API, ctypes)": c_call,
            "lmc (Python package)": lambda: python_model(**feed),
            "ONNX Runtime (Python)": lambda: session.run(None, feed),
        }
        best = {name: float("inf") for name in contestants}
        for _ in range(args.rounds):
            for name, call in contestants.items():
                best[name] = min(best[name], median_ms(call, args.runs, args.warmup))

    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), platform.processor())
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    print(f"{time.strftime('%Y-%m-%d')}, {cpu}, commit {commit}; BERT-base, batch 1, length {args.seq}, 2 threads, "
          f"median of {args.runs} calls, best of {args.rounds} interleaved rounds")
    for name, ms in best.items():
        print(f"  {name:<24}{ms:9.2f} ms")
    c = best["lmc (C API, ctypes)"]
    print(f"  Python package / C API: {best['lmc (Python package)'] / c:.4f}")
    print(f"  ONNX Runtime / C API:   {best['ONNX Runtime (Python)'] / c:.4f}")


if __name__ == "__main__":
    main()
