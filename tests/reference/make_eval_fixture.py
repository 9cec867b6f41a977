#!/usr/bin/env python3
"""Makes the fixture of `lmc ab --eval-text`: a word-level tokenizer for gpt2_tiny's vocabulary
(`tests/fixtures/gpt2_tiny/tokenizer.json`, by the `tokenizers` library), a text of its words
(`eval.txt`), and the mean next-token loss transformers computes on the windows lmc scores
(`eval_expected.json`: per window length, up to 8 consecutive windows from the text's start,
each window's loss from `GPT2LMHeadModel(x, labels=x)`, averaged over windows).

Run by hand, never by CI (it needs torch, transformers and tokenizers; see docs/testing.md,
"Fixtures"):

    python3 tests/reference/make_eval_fixture.py
"""
import json
import pathlib
import random

import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import GPT2LMHeadModel, PreTrainedTokenizerFast

FIXTURE = pathlib.Path(__file__).resolve().parent.parent / "fixtures" / "gpt2_tiny"
MAX_WINDOWS = 8


def main():
    model = GPT2LMHeadModel.from_pretrained(FIXTURE).eval()
    vocab = {f"w{i}": i for i in range(model.config.vocab_size)}
    tokenizer = Tokenizer(models.WordLevel(vocab=vocab, unk_token="w0"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.save(str(FIXTURE / "tokenizer.json"))
    rng = random.Random(3)
    text = " ".join(f"w{rng.randrange(model.config.vocab_size)}" for _ in range(40)) + "\n"
    (FIXTURE / "eval.txt").write_text(text)
    ids = PreTrainedTokenizerFast(tokenizer_file=str(FIXTURE / "tokenizer.json"))(text, add_special_tokens=False)["input_ids"]
    expected = {}
    for length in (8, 16):
        windows = min(len(ids) // length, MAX_WINDOWS)
        losses = []
        for w in range(windows):
            x = torch.tensor([ids[w * length:(w + 1) * length]])
            with torch.no_grad():
                losses.append(model(x, labels=x).loss.item())
        expected[str(length)] = {"loss": sum(losses) / windows, "windows": windows}
    (FIXTURE / "eval_expected.json").write_text(json.dumps(expected, indent=2) + "\n")
    print(expected)


if __name__ == "__main__":
    main()
