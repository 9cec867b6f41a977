"""lmc on an NVIDIA GPU against PyTorch eager and torch.compile on the same GPU, in one run.

Workloads (fp32, batch 1, random weights of the default Hugging Face configs, seeded):
  bert128     BERT-base forward over 128 tokens (last_hidden_state)
  gpt2decode  GPT-2 small greedy decode: a 32-token prompt, then 32 single-token steps with
              the KV cache; the time is per new token

Every timing spans host in to host out, for all three: lmc's C API copies inputs to the GPU and
outputs back (its run returns host tensors), so PyTorch's is timed with its output copied to
the host too (`.cpu()`), and with its inputs already on the GPU. Each is the median of RUNS
timed calls after WARMUP untimed ones. lmc's outputs are also compared with PyTorch's (max abs
difference), so a fast wrong answer shows.

Usage (see docs/gpu.md):
  lmc compile --target cuda models/bert.model:BertModel -o bert_cuda.so
  lmc compile --target cuda --decode 128 models/gpt2.model:GPT2LMHeadModel -o gpt2_cuda.so
  python3 bench/gpu.py --runtime target/release/liblmc_runtime.so \
      --bert bert_cuda.so --gpt2 gpt2_cuda.so [--no-compile] [--json out.json]
"""
import argparse
import ctypes
import json
import os
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "peers"))
from timing import median_ms  # noqa: E402  (the peers' timing, the same for every contestant)

WARMUP = 3
RUNS = 10
BERT_TOKENS = 128
PROMPT = 32
NEW = 32


class LmcTensor(ctypes.Structure):
    _fields_ = [
        ("name", ctypes.c_char_p),
        ("dtype", ctypes.c_int32),
        ("rank", ctypes.c_int32),
        ("shape", ctypes.POINTER(ctypes.c_int64)),
        ("data", ctypes.c_void_p),
        ("data_bytes", ctypes.c_size_t),
    ]


LMC_I64 = 1


class Lmc:
    """The runtime's C API (runtime/include/lmc_runtime.h) through ctypes."""

    def __init__(self, path):
        self.lib = ctypes.CDLL(path)
        self.lib.lmc_last_error.restype = ctypes.c_char_p
        self.lib.lmc_decoder_position.restype = ctypes.c_int64

    def check(self, rc, what):
        if rc != 0:
            raise RuntimeError(f"{what}: {self.lib.lmc_last_error().decode()}")

    def open(self, library, weights):
        model = ctypes.c_void_p()
        self.check(self.lib.lmc_model_open(library.encode(), weights.encode(), ctypes.byref(model)), f"opening {library}")
        return model

    def outputs(self, out, np):
        """The first output of an LmcOutputs, as a numpy array, and frees it."""
        t = LmcTensor()
        self.check(self.lib.lmc_outputs_get(out, ctypes.c_size_t(0), ctypes.byref(t)), "reading an output")
        shape = [t.shape[i] for i in range(t.rank)]
        data = np.frombuffer(ctypes.string_at(t.data, t.data_bytes), dtype=np.float32).reshape(shape).copy()
        self.lib.lmc_outputs_free(out)
        return data

    def run(self, model, tensors, np):
        """Runs a forward on named i64 arrays; returns the first output."""
        keep = []
        inputs = (LmcTensor * len(tensors))()
        for i, (name, array) in enumerate(tensors):
            array = np.ascontiguousarray(array, dtype=np.int64)
            shape = (ctypes.c_int64 * array.ndim)(*array.shape)
            keep += [array, shape, name.encode()]
            inputs[i] = LmcTensor(keep[-1], LMC_I64, array.ndim, shape, array.ctypes.data, array.nbytes)
        out = ctypes.c_void_p()
        self.check(self.lib.lmc_model_run(model, inputs, ctypes.c_size_t(len(tensors)), ctypes.byref(out)), "running")
        return self.outputs(out, np)

    def decode(self, model, prompt, new, np):
        """Greedy decode of one sequence: the prompt as one step, then `new` single-token
        steps. Returns (generated tokens, seconds of the single-token steps)."""
        decoder = ctypes.c_void_p()
        self.check(self.lib.lmc_decoder_new(model, ctypes.c_size_t(1), ctypes.byref(decoder)), "starting a decoder")
        try:
            tokens = list(prompt)
            step = list(prompt)
            started = None
            for i in range(new + 1):
                if i == 1:
                    started = time.perf_counter()
                ids = (ctypes.c_int64 * len(step))(*step)
                out = ctypes.c_void_p()
                self.check(self.lib.lmc_decoder_step(model, decoder, ids, ctypes.c_size_t(len(step)), ctypes.byref(out)), "a decode step")
                logits = self.outputs(out, np)
                step = [int(logits[0, -1].argmax())]
                tokens += step
            return tokens[len(prompt):], time.perf_counter() - started
        finally:
            self.lib.lmc_decoder_free(decoder)


def timed(fn):
    return median_ms(fn, RUNS, WARMUP)


def bert(args, lmc, torch, np, rows):
    from safetensors.torch import save_file
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    model = BertModel(BertConfig()).eval()
    weights = tempfile.mkdtemp(prefix="bert_")
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, os.path.join(weights, "model.safetensors"))
    ids = torch.randint(0, 30522, (1, BERT_TOKENS), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(ids)
    types = torch.zeros_like(ids)
    handle = lmc.open(args.bert, os.path.join(weights, "model.safetensors"))
    feed = [("input_ids", ids.numpy()), ("attention_mask", mask.numpy()), ("token_type_ids", types.numpy())]
    ours = lmc.run(handle, feed, np)
    lmc_ms = timed(lambda: lmc.run(handle, feed, np))
    gpu = model.cuda()
    on_gpu = dict(input_ids=ids.cuda(), attention_mask=mask.cuda(), token_type_ids=types.cuda())
    with torch.inference_mode():
        reference = gpu(**on_gpu).last_hidden_state.cpu().numpy()
        row = {"workload": f"BERT-base forward, {BERT_TOKENS} tokens", "lmc_ms": lmc_ms,
               "max_abs_diff": float(np.abs(ours - reference).max())}
        row["eager_ms"] = timed(lambda: gpu(**on_gpu).last_hidden_state.cpu())
        if not args.no_compile:
            compiled = torch.compile(gpu)
            t = time.perf_counter()
            compiled(**on_gpu)
            row["compile_s"] = time.perf_counter() - t
            row["compiled_ms"] = timed(lambda: compiled(**on_gpu).last_hidden_state.cpu())
    rows.append(row)


def gpt2(args, lmc, torch, np, rows):
    from safetensors.torch import save_file
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    cfg = GPT2Config()
    model = GPT2LMHeadModel(cfg).eval()
    weights = tempfile.mkdtemp(prefix="gpt2_")
    state = {k: v.contiguous() for k, v in model.state_dict().items() if not k.endswith(".attn.bias") and k != "lm_head.weight"}
    save_file(state, os.path.join(weights, "model.safetensors"))
    prompt = torch.randint(0, cfg.vocab_size, (1, PROMPT), generator=torch.Generator().manual_seed(1))
    handle = lmc.open(args.gpt2, os.path.join(weights, "model.safetensors"))
    ours, _ = lmc.decode(handle, prompt[0].tolist(), NEW, np)
    times = []
    for _ in range(3):
        _, seconds = lmc.decode(handle, prompt[0].tolist(), NEW, np)
        times.append(seconds * 1e3 / NEW)
    row = {"workload": f"GPT-2 small greedy decode ({PROMPT}-token prompt, {NEW} new), per token", "lmc_ms": statistics.median(times)}
    gpu = model.cuda()

    def greedy(forward):
        out = forward(input_ids=prompt.cuda(), use_cache=True)
        cache = out.past_key_values
        tok = out.logits[:, -1:].argmax(-1)
        generated = []
        t = time.perf_counter()
        for _ in range(NEW):
            out = forward(input_ids=tok, past_key_values=cache, use_cache=True)
            cache = out.past_key_values
            tok = out.logits[:, -1:].argmax(-1)
            generated.append(int(tok.cpu()))
        return generated, (time.perf_counter() - t) * 1e3 / NEW

    with torch.inference_mode():
        reference, _ = greedy(gpu)
        row["same_tokens"] = f"{sum(a == b for a, b in zip(ours, reference))}/{NEW}"
        row["eager_ms"] = statistics.median([greedy(gpu)[1] for _ in range(3)])
        if not args.no_compile:
            compiled = torch.compile(gpu, dynamic=True)
            t = time.perf_counter()
            greedy(compiled)
            row["compile_s"] = time.perf_counter() - t
            row["compiled_ms"] = statistics.median([greedy(compiled)[1] for _ in range(3)])
    rows.append(row)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--runtime", required=True, help="liblmc_runtime.so")
    parser.add_argument("--bert", help="BERT-base library from lmc compile --target cuda")
    parser.add_argument("--gpt2", help="GPT-2 decode-step library from lmc compile --target cuda --decode N")
    parser.add_argument("--no-compile", action="store_true", help="skip torch.compile")
    parser.add_argument("--json", help="also write the rows here")
    args = parser.parse_args()
    import numpy as np
    import torch

    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    lmc = Lmc(args.runtime)
    rows = []
    for name, bench in (("bert", bert), ("gpt2", gpt2)):
        if getattr(args, name):
            try:
                bench(args, lmc, torch, np, rows)
            except Exception as e:  # one failing workload still leaves the others' rows
                rows.append({"workload": name, "error": f"{type(e).__name__}: {e}"})
            print(json.dumps(rows[-1]), flush=True)
    device = torch.cuda.get_device_name(0)
    print(f"\n{time.strftime('%Y-%m-%d')}, {device}, torch {torch.__version__}, fp32 (no TF32)\n")
    print("| workload | lmc | PyTorch eager | torch.compile | lmc ÷ eager | lmc ÷ torch.compile | check |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        if "error" in r:
            print(f"| {r['workload']} | error: {r['error']} | | | | | |")
            continue
        eager, compiled = r.get("eager_ms"), r.get("compiled_ms")
        check = f"max abs diff {r['max_abs_diff']:.1e}" if "max_abs_diff" in r else f"same tokens {r.get('same_tokens')}"
        ratio = lambda peer: f"{r['lmc_ms'] / peer:.2f}" if peer else "-"
        fmt = lambda ms: f"{ms:.2f} ms" if ms else "-"
        print(f"| {r['workload']} | {fmt(r['lmc_ms'])} | {fmt(eager)} | {fmt(compiled)} | {ratio(eager)} | {ratio(compiled)} | {check} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": device, "rows": rows}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
