#!/usr/bin/env python3
"""Makes the greedy-decoding fixtures: what Hugging Face's `generate(do_sample=False)` produces
from the causal fixtures' checkpoints (made by make_fixtures.py / make_mamba_fixture.py).

Run by hand, never by CI (it needs torch and transformers; see docs/testing.md, "Fixtures"):

    python3 tests/reference/make_generate_fixtures.py [FIXTURE ...]

For each fixture it writes `generate_inputs.safetensors` (`input_ids`: two prompts of one
length) and `generate_expected.safetensors` (`sequences`: each prompt followed by exactly
NEW_TOKENS greedy tokens, each the argmax of the logits: the end-of-sequence token is switched
off, so it neither stops a sequence nor is suppressed before a minimum length, as `lmc generate`
without `--eos-token-id`).
For T5 the prompts are the encoder's input, and `sequences` holds the decoder's start token and
the new tokens, as transformers returns them.
`lmc generate --inputs ... -o ...` must reproduce `sequences` token for token.
"""
import pathlib

import torch
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM

HERE = pathlib.Path(__file__).resolve().parent
FIXTURES = HERE.parent / "fixtures"
NEW_TOKENS = 12
PROMPT_LENGTH = 5
# RWKV: transformers' cached CPU path sizes its state by hidden_size, not attention_hidden_size
# (a shape error on this fixture, where they differ), so its reference runs without the cache:
# the full forward for every new token, which is what the cache must reproduce anyway.
WITHOUT_CACHE = {"rwkv_tiny"}
# The fixtures that also get a left-padded batch (models that take position_ids).
PADDED = {"gpt2_tiny", "llama_tiny", "gemma_tiny", "gpt_neox_tiny", "phi_tiny", "mixtral_tiny"}


def make(name):
    out = FIXTURES / name
    auto = AutoModelForSeq2SeqLM if name.startswith("t5") else AutoModelForCausalLM
    model = auto.from_pretrained(out).eval()
    model.generation_config.eos_token_id = None
    g = torch.Generator().manual_seed(7)
    input_ids = torch.randint(1, model.config.vocab_size, (2, PROMPT_LENGTH), generator=g)
    with torch.no_grad():
        sequences = model.generate(
            input_ids,
            attention_mask=torch.ones_like(input_ids),
            max_new_tokens=NEW_TOKENS,
            do_sample=False,
            pad_token_id=0,
            use_cache=name not in WITHOUT_CACHE,
        )
    save_file({"input_ids": input_ids.contiguous()}, out / "generate_inputs.safetensors")
    save_file({"sequences": sequences.contiguous()}, out / "generate_expected.safetensors")
    print(name, sequences.tolist())
    if name in PADDED:
        # Prompts of different lengths, left-padded (with token 0) as a tokenizer pads them
        # for generation: transformers masks the padding and numbers each row's tokens from 0.
        attention_mask = torch.ones_like(input_ids)
        attention_mask[1, :2] = 0
        padded = input_ids.clone()
        padded[1, :2] = 0
        with torch.no_grad():
            sequences = model.generate(
                padded,
                attention_mask=attention_mask,
                max_new_tokens=NEW_TOKENS,
                do_sample=False,
                pad_token_id=0,
            )
        save_file(
            {"input_ids": padded.contiguous(), "attention_mask": attention_mask.contiguous()},
            out / "generate_padded_inputs.safetensors",
        )
        save_file({"sequences": sequences.contiguous()}, out / "generate_padded_expected.safetensors")
        print(name, "left-padded", sequences.tolist())


if __name__ == "__main__":
    # T5: the untied fixture; greedy decoding of t5_tiny and t5_gated gives the pad token at
    # every step, which a wrong decoder could match by accident.
    import sys

    names = sys.argv[1:] or ["gpt2_tiny", "llama_tiny", "qwen2_tiny", "mistral_tiny", "gemma_tiny", "gpt_neox_tiny", "phi_tiny", "mixtral_tiny", "rwkv_tiny", "mamba_tiny", "t5_untied"]
    for name in names:
        make(name)
