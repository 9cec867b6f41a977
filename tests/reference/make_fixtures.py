#!/usr/bin/env python3
"""Makes the numeric fixtures under tests/fixtures/ with Hugging Face transformers.

Run by hand, never by CI (it needs torch and transformers; see ../../README.md, "Fixtures"):

    python3 tests/reference/make_fixtures.py

Each fixture directory holds an unmodified `save_pretrained` checkpoint (config.json +
model.safetensors) of a tiny, randomly initialised model at deliberately odd sizes, the inputs
(`inputs*.safetensors`, named as the model's forward arguments) and what transformers computed
from them (`expected*.safetensors`).
"""
import pathlib

import torch
from safetensors.torch import save_file
from transformers import BertConfig, BertModel

HERE = pathlib.Path(__file__).resolve().parent
FIXTURES = HERE.parent / "fixtures"


def bert_tiny():
    out = FIXTURES / "bert_tiny"
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=99,
        hidden_size=36,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=37,
        max_position_embeddings=40,
        type_vocab_size=3,
        layer_norm_eps=1e-12,
        hidden_act="gelu",
    )
    model = BertModel(config, add_pooling_layer=False).eval()
    # Random init leaves LayerNorm at (1, 0); perturb it so the affine part is tested too.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "LayerNorm" in name:
                p.add_(0.1 * torch.randn_like(p))
    model.save_pretrained(out, safe_serialization=True)

    g = torch.Generator().manual_seed(1)
    input_ids = torch.randint(0, config.vocab_size, (2, 7), generator=g)
    token_type_ids = torch.randint(0, config.type_vocab_size, (2, 7), generator=g)
    with torch.no_grad():
        embeddings = model.embeddings(input_ids=input_ids, token_type_ids=token_type_ids)
        hidden = torch.randn(3, 5, config.hidden_size, generator=g)
        intermediate = model.encoder.layer[0].intermediate(hidden)
        # The feed-forward half of every layer in turn (BertLayer.feed_forward_chunk).
        stacked = hidden
        for layer in model.encoder.layer:
            stacked = layer.feed_forward_chunk(stacked)
    save_file({"input_ids": input_ids, "token_type_ids": token_type_ids}, out / "inputs_embeddings.safetensors")
    save_file({"last_hidden_state": embeddings.contiguous()}, out / "expected_embeddings.safetensors")
    save_file({"hidden_states": hidden}, out / "inputs_intermediate.safetensors")
    save_file({"intermediate_output": intermediate.contiguous()}, out / "expected_intermediate.safetensors")
    save_file({"last_hidden_state": stacked.contiguous()}, out / "expected_feed_forward_stack.safetensors")

    # The whole BertModel, with padding: the second sequence's last three tokens are masked.
    attention_mask = torch.ones(2, 7, dtype=torch.int64)
    attention_mask[1, 4:] = 0
    with torch.no_grad():
        full = model(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids).last_hidden_state
    save_file(
        {"input_ids": input_ids, "attention_mask": attention_mask, "token_type_ids": token_type_ids},
        out / "inputs_model.safetensors",
    )
    save_file({"last_hidden_state": full.contiguous()}, out / "expected_model.safetensors")


if __name__ == "__main__":
    bert_tiny()
    print("fixtures written to", FIXTURES)
