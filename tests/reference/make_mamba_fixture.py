#!/usr/bin/env python3
"""Makes the Mamba fixtures under tests/fixtures/ with Hugging Face transformers.

Run by hand, never by CI (it needs torch and transformers; see docs/testing.md, "Fixtures"):

    python3 tests/reference/make_mamba_fixture.py

Each fixture directory holds an unmodified `save_pretrained` checkpoint (config.json +
model.safetensors) of a tiny, randomly initialised `MambaForCausalLM` at odd sizes (hidden 21,
state 5, Δ-rank 3, kernel 4), the inputs (`inputs.safetensors`: `input_ids` and an
`attention_mask` that left-pads the second sequence) and the logits transformers computed from
them (`expected.safetensors`), on the CPU's sequential (slow) path: no CUDA, no mamba-ssm or
causal-conv1d kernels, no cache.

- `mamba_tiny`: as the released Mamba checkpoints are: no projection biases, a convolution bias,
  the head tied to the embedding.
- `mamba_untied`: projection biases, no convolution bias, an untied head, kernel 3.
"""
import importlib.util
import pathlib

import torch
from safetensors.torch import save_file
from transformers import MambaConfig, MambaForCausalLM

HERE = pathlib.Path(__file__).resolve().parent
FIXTURES = HERE.parent / "fixtures"


def reference_path_only():
    """The expected outputs must come from transformers' own torch code (`slow_forward`'s
    sequential scan and `F.conv1d`), not from optional fused kernels."""
    for package in ["mamba_ssm", "causal_conv1d", "kernels", "mambapy"]:
        assert importlib.util.find_spec(package) is None, f"uninstall {package}: the fixture needs the torch path"


def mamba_tiny(name, seed, **overrides):
    out = FIXTURES / name
    torch.manual_seed(seed)
    settings = dict(
        vocab_size=97,
        hidden_size=21,
        state_size=5,
        expand=2,
        conv_kernel=4,
        time_step_rank=3,
        num_hidden_layers=2,
        layer_norm_epsilon=1e-5,
        use_bias=False,
        use_conv_bias=True,
        tie_word_embeddings=True,
    )
    settings.update(overrides)
    config = MambaConfig(**settings)
    model = MambaForCausalLM(config).eval()
    # Random init leaves RMSNorm weights at 1, conv and projection biases at 0, D at 1 and every
    # row of A_log equal (log 1..N): perturb them so each is tested. Init also makes Δ tiny
    # (1e-3 to 0.1) and B, C small, so the state would barely matter next to D·x: set dt_proj's
    # bias so Δ spreads around 0.3 (exp(Δ·A) from near 1 to near 0) and scale x_proj up.
    with torch.no_grad():
        for pname, p in model.named_parameters():
            if "norm" in pname:
                p.add_(0.1 * torch.randn_like(p))
            elif pname.endswith(".A_log") or pname.endswith(".D"):
                p.add_(0.3 * torch.randn_like(p))
            elif pname.endswith("dt_proj.bias"):
                p.copy_(torch.randn_like(p) - 1.0)
            elif pname.endswith("x_proj.weight"):
                p.mul_(3.0)
            elif pname.endswith(".bias"):
                p.add_(0.1 * torch.randn_like(p))
    model.save_pretrained(out, safe_serialization=True)

    g = torch.Generator().manual_seed(seed + 1)
    input_ids = torch.randint(0, config.vocab_size, (2, 9), generator=g)
    # The second sequence is left-padded by 3: Mamba zeroes the padding's hidden states before
    # the input projection and after the convolution.
    attention_mask = torch.ones(2, 9, dtype=torch.int64)
    attention_mask[1, :3] = 0
    with torch.no_grad():
        logits = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits
    save_file({"input_ids": input_ids, "attention_mask": attention_mask}, out / "inputs.safetensors")
    save_file({"logits": logits.contiguous()}, out / "expected.safetensors")


if __name__ == "__main__":
    reference_path_only()
    mamba_tiny("mamba_tiny", 11)
    mamba_tiny("mamba_untied", 13, use_bias=True, use_conv_bias=False, conv_kernel=3, tie_word_embeddings=False)
    print("fixtures written to", FIXTURES)
