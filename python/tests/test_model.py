"""lmc.compile, lmc.load and calling a model: numpy and torch tensors, outputs that own their
memory, wrong inputs as exceptions that name the tensor, threads."""

import gc
import os
import subprocess
import sys
import threading

import numpy as np
import pytest

import lmc
from conftest import BERT, FIXTURES, GPT2, REPO, max_abs_diff, torch_or_skip


def test_bert_matches_transformers(bert, bert_case):
    inputs, expected = bert_case
    out = bert(**inputs)
    assert list(out) == ["last_hidden_state"]
    got = out["last_hidden_state"]
    assert isinstance(got, np.ndarray) and got.dtype == np.float32
    assert got.shape == expected["last_hidden_state"].shape
    assert max_abs_diff(got, expected["last_hidden_state"]) < 1e-4


def test_a_feed_dict_works_as_keywords_do(bert, bert_case):
    inputs, _ = bert_case
    a = bert(inputs)["last_hidden_state"]
    b = bert(**inputs)["last_hidden_state"]
    assert np.array_equal(a, b)


def test_outputs_are_writable_arrays_that_own_their_memory(bert, bert_case):
    inputs, expected = bert_case
    out = bert(**inputs)["last_hidden_state"]
    out += 1.0  # writable: handed over through DLPack 1.0 without the read-only flag
    del bert_case
    gc.collect()
    assert max_abs_diff(out - 1.0, expected["last_hidden_state"]) < 1e-4


def test_model_describes_itself(bert):
    assert [i.name for i in bert.inputs] == ["input_ids", "attention_mask", "token_type_ids"]
    assert bert.inputs[0].dtype == "int64" and bert.inputs[0].shape == ("B", "T")
    assert bert.inputs[1].default == "ones"
    out = bert.outputs[0]
    assert out.name == "last_hidden_state" and out.dtype == "float32" and out.shape[:2] == ("B", "T")
    assert bert.manifest["model"] == "BertModel"
    assert bert.config["model_type"] == "bert"
    assert bert.config["hidden_size"] == out.shape[2]
    assert bert.name == "BertModel" and not bert.is_decode_step
    assert "BertModel" in repr(bert)


def test_inputs_with_defaults_may_be_left_out(bert, bert_case):
    inputs, _ = bert_case
    ids = inputs["input_ids"]
    full = bert(input_ids=ids, attention_mask=np.ones_like(ids), token_type_ids=np.zeros_like(ids))
    left_out = bert(input_ids=ids)
    assert np.array_equal(full["last_hidden_state"], left_out["last_hidden_state"])


def test_lists_and_int32_and_non_contiguous_arrays_are_taken(bert, bert_case):
    inputs, _ = bert_case
    ids = inputs["input_ids"]
    want = bert(input_ids=ids)["last_hidden_state"]
    assert np.array_equal(bert(input_ids=ids.tolist())["last_hidden_state"], want)
    assert np.array_equal(bert(input_ids=ids.astype(np.int32))["last_hidden_state"], want)
    strided = np.asfortranarray(ids)
    assert not strided.flags.c_contiguous or ids.shape[0] == 1
    assert np.array_equal(bert(input_ids=strided)["last_hidden_state"], want)


def test_torch_tensors_in_give_torch_tensors_out(bert, bert_case):
    torch = torch_or_skip()
    inputs, expected = bert_case
    feed = {k: torch.from_numpy(v) for k, v in inputs.items()}
    out = bert(**feed)["last_hidden_state"]
    assert isinstance(out, torch.Tensor) and out.dtype == torch.float32
    assert max_abs_diff(out.numpy(), expected["last_hidden_state"]) < 1e-4
    # A transposed (non-contiguous) tensor, and one that requires grad, are taken as well.
    ids = feed["input_ids"].t().contiguous().t()
    assert not ids.is_contiguous() or ids.shape[0] == 1
    again = bert(input_ids=ids, attention_mask=feed["attention_mask"], token_type_ids=feed["token_type_ids"])
    assert torch.equal(again["last_hidden_state"], out)
    floats = torch.zeros(2, 2, requires_grad=True)
    with pytest.raises(lmc.InputError, match="input_ids"):
        bert(input_ids=floats)


def test_wrong_dtype_is_an_input_error_naming_the_tensor(bert, bert_case):
    inputs, _ = bert_case
    with pytest.raises(lmc.InputError, match='"input_ids" is float64'):
        bert(input_ids=inputs["input_ids"].astype(np.float64))
    with pytest.raises(lmc.InputError, match="input_ids"):
        bert(input_ids=inputs["input_ids"].astype(np.float32))


def test_wrong_shape_is_an_input_error_naming_the_tensor(bert, bert_case):
    inputs, _ = bert_case
    with pytest.raises(lmc.InputError, match='input "input_ids" has rank 3'):
        bert(input_ids=inputs["input_ids"][None])
    with pytest.raises(lmc.InputError, match="attention_mask"):
        bert(input_ids=inputs["input_ids"], attention_mask=np.ones((1, 2), np.int64))


def test_missing_and_unknown_inputs_are_input_errors(bert, bert_case):
    inputs, _ = bert_case
    with pytest.raises(lmc.InputError, match='missing input "input_ids"'):
        bert(attention_mask=inputs["attention_mask"])
    with pytest.raises(lmc.InputError, match='unknown input "labels"'):
        bert(input_ids=inputs["input_ids"], labels=inputs["input_ids"])
    with pytest.raises(lmc.InputError, match="not a tensor"):
        bert(input_ids="hello")
    # InputError is an LmcError, and the interpreter is still alive to say so.
    assert issubclass(lmc.InputError, lmc.LmcError)


def test_out_of_range_ids_are_input_errors(bert, bert_case):
    inputs, _ = bert_case
    ids = inputs["input_ids"].copy()
    ids[0, 0] = 10**6
    with pytest.raises(lmc.InputError, match="input_ids"):
        bert(input_ids=ids)


def test_a_model_file_that_does_not_check_is_a_compile_error(tmp_path):
    bad = tmp_path / "bad.model"
    bad.write_text("config C {\n  d = 4\n}\n\nmodel M(c: C) {\n  forward(x: f32[B, T]) -> (y: f32[B, T]) {\n    return x + missing\n  }\n}\n")
    with pytest.raises(lmc.CompileError) as e:
        lmc.compile(str(bad), random_weights=True)
    [d] = [d for d in e.value.diagnostics if d.severity == "error"]
    assert d.file.endswith("bad.model") and d.line == 7 and d.column == 16
    assert d.code.startswith("E") and "missing" in d.rendered
    assert "missing" in str(e.value)


def test_weights_that_do_not_fit_are_a_weights_error_naming_the_tensor():
    with pytest.raises(lmc.WeightsError, match=r"wte|wpe|h\.0"):
        lmc.compile(GPT2, weights=FIXTURES / "bert_tiny" / "model.safetensors", config=FIXTURES / "gpt2_tiny")


def test_bad_arguments_are_errors_before_compiling(tmp_path):
    with pytest.raises(lmc.LmcError, match="no such file"):
        lmc.compile(BERT, weights=tmp_path / "nowhere")
    with pytest.raises(lmc.LmcError, match="give the weights"):
        lmc.compile(BERT)
    with pytest.raises(lmc.LmcError, match="not both"):
        lmc.compile(BERT, weights=FIXTURES / "bert_tiny", random_weights=True)
    with pytest.raises(lmc.LmcError, match="seed"):
        lmc.compile(BERT, weights=FIXTURES / "bert_tiny", seed=3)
    with pytest.raises(lmc.LmcError, match="none.model: No such file"):
        lmc.compile(str(tmp_path / "none.model"), random_weights=True)
    with pytest.raises(ValueError, match="threads"):
        lmc.compile(BERT, random_weights=True, threads=0)
    with pytest.raises(lmc.LmcError, match="NoSuchModel"):
        lmc.compile(str(REPO / "models" / "bert.model") + ":NoSuchModel", random_weights=True)


def test_random_weights_and_overrides():
    a = lmc.compile(BERT, random_weights=True, seed=1, set={"hidden_size": 16, "num_attention_heads": 2, "num_hidden_layers": 1})
    assert a.config["hidden_size"] == 16 and a.outputs[0].shape[2] == 16
    ids = np.array([[1, 2, 3]])
    b = lmc.compile(BERT, random_weights=True, seed=1, set={"hidden_size": 16, "num_attention_heads": 2, "num_hidden_layers": 1})
    c = lmc.compile(BERT, random_weights=True, seed=2, set={"hidden_size": 16, "num_attention_heads": 2, "num_hidden_layers": 1})
    assert np.array_equal(a(input_ids=ids)["last_hidden_state"], b(input_ids=ids)["last_hidden_state"])
    assert not np.array_equal(a(input_ids=ids)["last_hidden_state"], c(input_ids=ids)["last_hidden_state"])


def test_two_threads_call_two_models_at_once(bert, bert_case):
    inputs, expected = bert_case
    gpt2 = lmc.compile(GPT2, weights=FIXTURES / "gpt2_tiny", threads=1)
    gpt2_inputs = lmc.read_safetensors(FIXTURES / "gpt2_tiny" / "inputs.safetensors")
    gpt2_expected = lmc.read_safetensors(FIXTURES / "gpt2_tiny" / "expected.safetensors")["logits"]
    errors = []

    def work(model, feed, name, want):
        try:
            for _ in range(20):
                got = model(**feed)[name]
                assert max_abs_diff(got, want) < 1e-4
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [
        threading.Thread(target=work, args=(bert, inputs, "last_hidden_state", expected["last_hidden_state"])),
        threading.Thread(target=work, args=(gpt2, gpt2_inputs, "logits", gpt2_expected)),
        threading.Thread(target=work, args=(gpt2, gpt2_inputs, "logits", gpt2_expected)),
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors


def test_the_gil_is_released_while_kernels_run():
    big = lmc.compile(
        BERT,
        random_weights=True,
        set={"hidden_size": 256, "num_attention_heads": 4, "num_hidden_layers": 4, "intermediate_size": 1024},
        threads=1,
    )
    ids = np.ones((4, 128), np.int64)
    big(input_ids=ids)
    ticks = []
    done = threading.Event()

    def tick():
        while not done.is_set():
            ticks.append(1)

    # Python switches threads only when the running one lets go of the GIL; a call that held it
    # throughout would leave the ticking thread no turn until it returned.
    t = threading.Thread(target=tick)
    released = False
    sys.setswitchinterval(1.0)
    try:
        t.start()
        for _ in range(3):
            before = len(ticks)
            big(input_ids=ids)
            released = released or len(ticks) > before
        done.set()
        t.join()
    finally:
        sys.setswitchinterval(0.005)
    assert released


def _compile_library(directory, command):
    lib = directory / "libgpt2.so"
    r = subprocess.run(
        [*command, "compile", GPT2, "--config", str(FIXTURES / "gpt2_tiny"), "-o", str(lib)],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr
    return lib


def test_a_library_from_lmc_compile_loads_and_outlives_its_file(tmp_path):
    lib = _compile_library(tmp_path, [sys.executable, "-m", "lmc"])
    m = lmc.load(lib, weights=FIXTURES / "gpt2_tiny")
    feed = lmc.read_safetensors(FIXTURES / "gpt2_tiny" / "inputs.safetensors")
    want = lmc.read_safetensors(FIXTURES / "gpt2_tiny" / "expected.safetensors")["logits"]
    out = m(**feed)["logits"]
    assert max_abs_diff(out, want) < 1e-4
    assert m.config is None and m.manifest["model"] == "GPT2LMHeadModel"
    # The library's file is gone; the model keeps it loaded, and its outputs their memory.
    os.remove(lib)
    again = m(**feed)["logits"]
    del m
    gc.collect()
    assert np.array_equal(out, again)
    with pytest.raises(lmc.LmcError, match="no such file"):
        lmc.load(lib, weights=FIXTURES / "gpt2_tiny")
    with pytest.raises(lmc.LmcError):
        lmc.load(FIXTURES / "gpt2_tiny" / "config.json", weights=FIXTURES / "gpt2_tiny")


def test_a_library_built_by_another_lmc_shares_the_openmp_runtime(tmp_path):
    """A library the workspace's own `lmc` built (as a deployment would) runs in this process,
    on the OpenMP runtime the package already runs: two runtimes in one process would abort it."""
    binary = REPO / "target" / "debug" / "lmc"
    if not binary.is_file():
        if os.environ.get("LMC_REQUIRE_EXAMPLES") == "1":
            pytest.fail(f"{binary} is missing: the README's test command builds it first")
        pytest.skip("no workspace build of lmc")
    lib = _compile_library(tmp_path, [str(binary)])
    m = lmc.load(lib, weights=FIXTURES / "gpt2_tiny")
    feed = lmc.read_safetensors(FIXTURES / "gpt2_tiny" / "inputs.safetensors")
    want = lmc.read_safetensors(FIXTURES / "gpt2_tiny" / "expected.safetensors")["logits"]
    assert max_abs_diff(m(**feed)["logits"], want) < 1e-4
    # And the JIT's kernels still run, on threads, beside it.
    assert max_abs_diff(lmc.compile(GPT2, weights=FIXTURES / "gpt2_tiny", threads=2)(**feed)["logits"], want) < 1e-4


def test_weight_formats_are_a_set_value():
    inputs = lmc.read_safetensors(FIXTURES / "gpt2_tiny" / "inputs.safetensors")
    want = lmc.read_safetensors(FIXTURES / "gpt2_tiny" / "expected.safetensors")["logits"]
    half = lmc.compile(GPT2, weights=FIXTURES / "gpt2_tiny", set={"weights": "bf16"})
    formats = [p.get("packing", {}).get("format") for p in half.manifest["params"]]
    assert formats.count("bf16") >= 8
    err = max_abs_diff(half(**inputs)["logits"], want)
    assert 0 < err < 1e-2 * float(np.abs(want).max())
    with pytest.raises(lmc.CompileError, match="names no weight format"):
        lmc.compile(GPT2, weights=FIXTURES / "gpt2_tiny", set={"weights": "q4"})
    # The tiny GPT-2's rows (35 wide) are no whole int8 blocks of 32: nothing would change.
    with pytest.raises(lmc.LmcError, match="not whole blocks of 32"):
        lmc.compile(GPT2, weights=FIXTURES / "gpt2_tiny", set={"weights": "int8"})
