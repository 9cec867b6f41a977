"""A compiled GPT-2 beside transformers': the same checkpoint (tests/fixtures/gpt2_tiny, saved by
`save_pretrained`), the same prompts, greedy decoding on both, compared token for token, with
the time each took.

    python python/examples/gpt2_beside_transformers.py [checkpoint-dir]
"""

import pathlib
import sys
import time

import numpy as np
import torch
from transformers import GPT2LMHeadModel

import lmc

REPO = pathlib.Path(__file__).resolve().parents[2]


def main() -> None:
    checkpoint = pathlib.Path(sys.argv[1]) if len(sys.argv) > 1 else REPO / "tests" / "fixtures" / "gpt2_tiny"
    prompts = np.array([[16, 93, 22, 87, 84], [48, 88, 80, 89, 62]], dtype=np.int64)
    new = 12  # the checkpoint's position table holds 24 positions

    reference = GPT2LMHeadModel.from_pretrained(checkpoint).eval()
    started = time.perf_counter()
    with torch.no_grad():
        want = reference.generate(
            torch.from_numpy(prompts),
            attention_mask=torch.ones_like(torch.from_numpy(prompts)),
            max_new_tokens=new,
            min_new_tokens=new,
            do_sample=False,
            pad_token_id=reference.config.eos_token_id,
        ).numpy()
    torch_s = time.perf_counter() - started

    # The decode step the compiler derives from the forward, caches for prompt + new tokens.
    step = lmc.compile(REPO / "models" / "gpt2.model:GPT2LMHeadModel", weights=checkpoint, decode=prompts.shape[1] + new)
    started = time.perf_counter()
    got = lmc.generate(step, prompts, max_new_tokens=new, eos_token_id=[]).sequences
    lmc_s = time.perf_counter() - started

    print(f"transformers: {want.shape[1] - prompts.shape[1]} new tokens x {len(prompts)} in {torch_s * 1e3:.1f} ms")
    print(f"lmc:          {got.shape[1] - prompts.shape[1]} new tokens x {len(prompts)} in {lmc_s * 1e3:.1f} ms")
    same = got.shape == want.shape and bool(np.array_equal(got, want))
    print("token for token the same" if same else f"they differ:\nlmc          {got}\ntransformers {want}")
    if not same:
        sys.exit(1)


if __name__ == "__main__":
    main()
