"""lmc.check, lmc.grad, lmc.train, lmc.ab and the `lmc` command the package installs."""

import json
import os
import shutil
import subprocess
import sys
import warnings

import numpy as np
import pytest

import lmc
from conftest import BERT, FIXTURES, GPT2, REPO


def test_check_returns_diagnostics_with_their_places(tmp_path):
    assert [d for d in lmc.check(REPO / "models") if d.severity == "error"] == []
    bad = tmp_path / "bad.model"
    bad.write_text("config C {\n  d = 4\n}\n\nmodel M(c: C) {\n  forward(x: f32[B, T]) -> (y: f32[B, T]) {\n    return relu(x) * nope\n  }\n}\n")
    [d] = lmc.check(bad)
    assert (d.severity, d.line) == ("error", 7)
    assert d.file.endswith("bad.model") and d.column == bad.read_text().splitlines()[6].index("nope") + 1
    assert d.code.startswith("E") and "nope" in d.message
    assert "^" in d.rendered and str(d) == d.rendered and "error" in repr(d)
    with pytest.raises(lmc.LmcError, match="missing.model: No such file"):
        lmc.check(tmp_path / "missing.model")


def test_check_reports_warnings_too():
    config = FIXTURES / "gpt2_tiny" / "config.json"
    assert isinstance(lmc.check(REPO / "models" / "gpt2.model", config=config), list)


def test_compile_warnings_are_python_warnings(tmp_path):
    # A config.json key the model assumes otherwise: a warning (an error with strict=True).
    config = json.loads((FIXTURES / "gpt2_tiny" / "config.json").read_text())
    config["scale_attn_by_inverse_layer_idx"] = True
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        lmc.compile(GPT2, weights=FIXTURES / "gpt2_tiny" / "model.safetensors", config=path)
    assert any(issubclass(w.category, lmc.LmcWarning) and "scale_attn_by_inverse_layer_idx" in str(w.message) for w in caught)
    with pytest.raises(lmc.CompileError, match="scale_attn_by_inverse_layer_idx") as e:
        lmc.compile(GPT2, weights=FIXTURES / "gpt2_tiny" / "model.safetensors", config=path, strict=True)
    assert e.value.diagnostics and e.value.diagnostics[0].severity == "error"


def test_grad_matches_torch():
    fixture = FIXTURES / "gpt2_grad"
    got = lmc.grad(GPT2, fixture / "inputs_grad.safetensors", weights=fixture)
    want = lmc.read_safetensors(fixture / "expected_grad.safetensors")
    stored = lmc.read_safetensors(fixture / "model.safetensors")
    assert set(got) == set(stored) | {"loss"}
    assert abs(float(got["loss"]) - float(want["loss"])) <= 1e-5 * abs(float(want["loss"]))
    for name in stored:
        scale = float(np.max(np.abs(want[name])))
        assert float(np.max(np.abs(got[name] - want[name]))) <= 1e-3 * scale + 1e-6, name


def test_grad_takes_a_dict_of_arrays():
    fixture = FIXTURES / "gpt2_grad"
    inputs = lmc.read_safetensors(fixture / "inputs_grad.safetensors")
    a = lmc.grad(GPT2, inputs, weights=fixture)
    b = lmc.grad(GPT2, fixture / "inputs_grad.safetensors", weights=fixture)
    assert set(a) == set(b) and all(np.array_equal(a[k], b[k]) for k in a)
    with pytest.raises(lmc.LmcError):
        lmc.grad(GPT2, {"input_ids": inputs["input_ids"]}, weights=fixture, set={"no_such_key": 1})


def test_train_saves_checkpoints_and_returns_its_log(tmp_path):
    fixture = FIXTURES / "gpt2_grad"
    out = tmp_path / "run"
    r = lmc.train(
        GPT2,
        weights=fixture,
        data=fixture / "adamw_inputs.safetensors",
        output_dir=out,
        max_steps=6,
        learning_rate=1e-2,
        weight_decay=0.01,
        max_grad_norm=0,
        lr_scheduler_type="constant",
        no_dropout=True,
        save_steps=3,
        logging_steps=1,
    )
    assert [rec["step"] for rec in r.log if "loss" in rec] == [1, 2, 3, 4, 5, 6]
    # The six AdamW steps PyTorch took from the same weights on the same batches.
    want = lmc.read_safetensors(fixture / "adamw_expected.safetensors")["losses"]
    assert len(r.losses) == 6 and max(abs(a - b) for a, b in zip(r.losses, want)) < 1e-4
    assert [p.name for p in r.checkpoints] == ["checkpoint-3", "checkpoint-6"]
    assert (r.checkpoints[-1] / "model.safetensors").is_file() and (r.checkpoints[-1] / "config.json").is_file()
    # The trained weights are a checkpoint lmc (and transformers) load.
    m = lmc.compile(GPT2, weights=r.checkpoints[-1])
    feed = lmc.read_safetensors(FIXTURES / "gpt2_grad" / "inputs_grad.safetensors")
    assert np.isfinite(m(input_ids=feed["input_ids"])["logits"]).all()
    # Resumed from its output directory (where it saves by default), it goes on from step 3
    # exactly as the uninterrupted run did.
    shutil.rmtree(out / "checkpoint-6")
    resumed = lmc.train(
        GPT2, resume=out, data=fixture / "adamw_inputs.safetensors", max_steps=6, learning_rate=1e-2,
        weight_decay=0.01, max_grad_norm=0, lr_scheduler_type="constant", no_dropout=True, save_steps=3, logging_steps=1,
    )
    assert resumed.output_dir == out and [p.name for p in resumed.checkpoints] == ["checkpoint-3", "checkpoint-6"]
    assert max(abs(a - b) for a, b in zip(resumed.losses, r.losses[3:])) < 1e-6, (resumed.losses, r.losses)


def test_train_options_are_checked_as_the_command_checks_them(tmp_path):
    with pytest.raises(lmc.LmcError, match="learning-rate|learning_rate"):
        lmc.train(GPT2, random_weights=True, data=FIXTURES / "gpt2_grad" / "adamw_inputs.safetensors", output_dir=tmp_path, learning_rate="fast")
    with pytest.raises(lmc.LmcError, match="no-such-option"):
        lmc.train(GPT2, random_weights=True, data=FIXTURES / "gpt2_grad" / "adamw_inputs.safetensors", output_dir=tmp_path, no_such_option=3)


def test_ab_returns_records_and_a_dataframe():
    small = {"hidden_size": 32, "num_attention_heads": 2, "num_hidden_layers": 1, "intermediate_size": 64}
    result = lmc.ab(
        BERT,
        str(REPO / "models" / "bert.model") + ":BertALiBi",
        random_weights=True,
        lengths=[16, 32],
        runs=3,
        warmup=1,
        set=small,
    )
    assert len(result) == 4
    assert {r["label"] for r in result} == {"BertModel", "BertALiBi"}
    assert all(isinstance(r["median_ms"], float) and r["median_ms"] > 0 for r in result)
    against = [r for r in result if r["variant"] == "B"]
    assert all(r["ratio_low"] <= r["ratio_vs_base"] <= r["ratio_high"] for r in against)
    assert result.report["cells"] and result.report["variants"][0]["label"] == "BertModel"
    pandas = pytest.importorskip("pandas")
    frame = result.dataframe()
    assert isinstance(frame, pandas.DataFrame) and len(frame) == 4 and "tokens_per_s" in frame.columns


def test_ab_failures_are_exceptions():
    with pytest.raises(lmc.LmcError, match="weights"):
        lmc.ab(BERT, str(REPO / "models" / "bert.model") + ":BertALiBi")
    with pytest.raises(lmc.LmcError, match="variants"):
        lmc.ab()


def _lmc_command():
    return shutil.which("lmc", path=os.path.dirname(sys.executable)) or shutil.which("lmc")


def test_the_lmc_command_comes_with_the_package():
    exe = _lmc_command()
    assert exe is not None and os.path.dirname(exe) == os.path.dirname(sys.executable)
    r = subprocess.run([exe, "--version"], capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout.startswith("lmc ")
    r = subprocess.run([exe, "check", str(REPO / "models" / "bert.model")], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    r = subprocess.run([exe, "check", str(REPO / "nowhere.model")], capture_output=True, text=True)
    assert r.returncode == 1 and "nowhere.model" in r.stderr
    r = subprocess.run([sys.executable, "-m", "lmc", "fmt", "--check", str(REPO / "models" / "gpt2.model")], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


CTRL_C_RUN = """
import signal, sys
import lmc
try:
    lmc.train(sys.argv[1], random_weights=True, data=sys.argv[2], tokenizer=sys.argv[3], output_dir=sys.argv[4],
              log_json=sys.argv[5], max_steps=100000, save_steps=0, logging_steps=1, seq_len=16,
              per_device_train_batch_size=4, objective="causal", learning_rate=3e-3,
              set={"n_layer": 1, "n_embd": 16, "n_head": 2, "vocab_size": 101, "n_positions": 32})
except KeyboardInterrupt as e:
    print("interrupted:", e, flush=True)
# Ctrl-C is still Python's after lmc.train.
try:
    signal.raise_signal(signal.SIGINT)
except KeyboardInterrupt:
    print("python's ctrl-c still works", flush=True)
"""


def test_ctrl_c_stops_training_saves_it_and_stays_a_keyboard_interrupt(tmp_path):
    import signal
    import time

    import random

    log = tmp_path / "log.jsonl"
    out = tmp_path / "run"
    data = tmp_path / "train.txt"
    words = random.Random(1)
    data.write_text(" ".join(f"w{words.randrange(30)}" for _ in range(4000)))
    child = subprocess.Popen(
        [sys.executable, "-c", CTRL_C_RUN, GPT2, str(data),
         str(FIXTURES / "gpt2_tiny" / "tokenizer.json"), str(out), str(log)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    started = time.time()
    while not log.is_file() or len([l for l in log.read_text().splitlines() if l.endswith("}")]) < 3:
        assert child.poll() is None, child.communicate()
        assert time.time() - started < 300, "no progress logged"
        time.sleep(0.05)
    child.send_signal(signal.SIGINT)
    stdout, stderr = child.communicate(timeout=300)
    assert child.returncode == 0, stderr
    assert "interrupted: interrupted at step" in stdout and "--resume" in stdout, stdout + stderr
    assert "python's ctrl-c still works" in stdout
    saved = [p for p in out.glob("checkpoint-*") if (p / "model.safetensors").is_file()]
    assert saved, "a checkpoint saved on Ctrl-C"
