"""Shared paths and helpers of the Python package's tests. They run from any directory; model
files and fixtures are the repository's (tests/fixtures/: tiny checkpoints saved by
transformers, with what transformers computed)."""

import os
import pathlib

import numpy as np
import pytest

REPO = pathlib.Path(__file__).resolve().parents[2]
FIXTURES = REPO / "tests" / "fixtures"
BERT = str(REPO / "models" / "bert.model") + ":BertModel"
GPT2 = str(REPO / "models" / "gpt2.model") + ":GPT2LMHeadModel"


def torch_or_skip():
    """torch, which the README's test command installs (LMC_REQUIRE_TORCH=1 makes its absence a
    failure rather than a skip)."""
    if os.environ.get("LMC_REQUIRE_TORCH") == "1":
        import torch

        return torch
    return pytest.importorskip("torch")


def max_abs_diff(a, b) -> float:
    return float(np.max(np.abs(np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64))))


@pytest.fixture(scope="session")
def bert():
    import lmc

    return lmc.compile(BERT, weights=FIXTURES / "bert_tiny")


@pytest.fixture(scope="session")
def bert_case():
    import lmc

    inputs = lmc.read_safetensors(FIXTURES / "bert_tiny" / "inputs_model.safetensors")
    expected = lmc.read_safetensors(FIXTURES / "bert_tiny" / "expected_model.safetensors")
    return inputs, expected
