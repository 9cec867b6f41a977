#!/usr/bin/env python3
"""Makes tests/fixtures/sampling: the probabilities transformers' `generate(do_sample=True)`
draws the next token from, for given logits, under several settings: its warpers applied in
the order `generate` applies them (TemperatureLogitsWarper, TopKLogitsWarper,
TopPLogitsWarper, each only when it changes something, as `_get_logits_processor` adds them),
then the softmax. lmc's sampler (runtime/src/sampling.rs) must give the same probabilities.

Run by hand, never by CI (it needs torch and transformers; see docs/testing.md, "Fixtures"):

    ~/.cache/lmc-peers/venv/bin/python tests/reference/make_sampling_fixture.py

- `sampling.safetensors`: `logits` [4, 40] (seeded normal, one row with ties and one with a
  dominant token), and `probs.C` [4, 40] for case C of `cases.json`.
- `cases.json`: the settings of each case: temperature, top_k (0: off), top_p (1: off).
"""
import json
import pathlib

import torch
from safetensors.torch import save_file
from transformers.generation.logits_process import TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

OUT = pathlib.Path(__file__).resolve().parent.parent / "fixtures" / "sampling"
CASES = [
    {"temperature": 1.0, "top_k": 0, "top_p": 1.0},
    {"temperature": 0.7, "top_k": 10, "top_p": 1.0},
    {"temperature": 1.3, "top_k": 0, "top_p": 0.9},
    {"temperature": 0.8, "top_k": 20, "top_p": 0.75},
    {"temperature": 1.0, "top_k": 50, "top_p": 0.5},
]


def main():
    g = torch.Generator().manual_seed(11)
    logits = torch.randn(4, 40, generator=g) * 2.0
    logits[2, 5:9] = logits[2].max()  # ties at the top
    logits[3, 17] = 25.0  # one token takes nearly all the probability
    tensors = {"logits": logits.contiguous()}
    input_ids = torch.zeros(4, 1, dtype=torch.long)
    for c, case in enumerate(CASES):
        scores = logits.clone()
        if case["temperature"] != 1.0:
            scores = TemperatureLogitsWarper(case["temperature"])(input_ids, scores)
        if case["top_k"] != 0:
            scores = TopKLogitsWarper(case["top_k"])(input_ids, scores)
        if case["top_p"] < 1.0:
            scores = TopPLogitsWarper(case["top_p"])(input_ids, scores)
        tensors[f"probs.{c}"] = torch.softmax(scores, dim=-1).contiguous()
    OUT.mkdir(parents=True, exist_ok=True)
    save_file(tensors, OUT / "sampling.safetensors")
    (OUT / "cases.json").write_text(json.dumps(CASES, indent=1) + "\n")
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
