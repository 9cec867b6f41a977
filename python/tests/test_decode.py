"""Decoding from Python: lmc.generate from a model file and from a compiled decode step, the
Decoder step by step, text in and out; against the tokens transformers generated."""

import numpy as np
import pytest

import lmc
from conftest import FIXTURES, GPT2, REPO, torch_or_skip

T5 = str(REPO / "models" / "t5.model") + ":T5ForConditionalGeneration"


@pytest.fixture(scope="module")
def gpt2_case():
    prompts = lmc.read_safetensors(FIXTURES / "gpt2_tiny" / "generate_inputs.safetensors")["input_ids"]
    want = lmc.read_safetensors(FIXTURES / "gpt2_tiny" / "generate_expected.safetensors")["sequences"]
    return prompts, want


def test_generate_from_a_model_file_matches_transformers(gpt2_case):
    prompts, want = gpt2_case
    new = want.shape[1] - prompts.shape[1]
    g = lmc.generate(GPT2, prompts, weights=FIXTURES / "gpt2_tiny", max_new_tokens=new)
    assert np.array_equal(g.sequences, want)
    assert np.array_equal(g.new_tokens, want[:, prompts.shape[1] :])
    assert g.text is not None and len(g.text) == 2  # the checkpoint's tokenizer.json


def test_generate_with_a_compiled_decode_step_matches_transformers(gpt2_case):
    prompts, want = gpt2_case
    new = want.shape[1] - prompts.shape[1]
    step = lmc.compile(GPT2, weights=FIXTURES / "gpt2_tiny", decode=want.shape[1])
    assert step.is_decode_step
    for _ in range(2):  # compiled once, used twice
        g = lmc.generate(step, prompts, max_new_tokens=new)
        assert np.array_equal(g.sequences, want)


def test_the_decoder_steps_as_generate_does(gpt2_case):
    prompts, want = gpt2_case
    step = lmc.compile(GPT2, weights=FIXTURES / "gpt2_tiny", decode=want.shape[1])
    d = lmc.Decoder(step, batch=2)
    assert d.position == 0 and d.capacity == want.shape[1] and d.batch == 2
    logits = d.step(prompts)
    assert logits.shape[:2] == prompts.shape
    tokens = [prompts]
    for _ in range(want.shape[1] - prompts.shape[1]):
        nxt = logits[:, -1].argmax(-1).reshape(2, 1)
        tokens.append(nxt)
        if d.position < d.capacity:
            logits = d.step(nxt)
    assert np.array_equal(np.concatenate(tokens, axis=1), want)
    with pytest.raises(lmc.InputError, match="positions|capacity|hold"):
        d.step(np.zeros((2, 1), np.int64))
    with pytest.raises(lmc.InputError, match="batch"):
        lmc.Decoder(step, batch=2).step([1, 2, 3])


def test_a_decoder_keeps_its_model_alive(gpt2_case):
    prompts, _ = gpt2_case
    d = lmc.Decoder(lmc.compile(GPT2, weights=FIXTURES / "gpt2_tiny", decode=8), batch=2)
    import gc

    gc.collect()
    assert d.step(prompts).shape[0] == 2


def test_decoding_needs_a_decode_step(gpt2_case):
    prompts, _ = gpt2_case
    forward = lmc.compile(GPT2, weights=FIXTURES / "gpt2_tiny")
    with pytest.raises(lmc.LmcError, match="decode"):
        lmc.generate(forward, prompts, max_new_tokens=2)
    with pytest.raises(lmc.InputError, match="decode step"):
        lmc.Decoder(forward)


def test_text_in_text_out():
    tok = lmc.Tokenizer(FIXTURES / "gpt2_tiny")
    g = lmc.generate(GPT2, prompt="hello", weights=FIXTURES / "gpt2_tiny", max_new_tokens=4)
    ids = tok.encode("hello")
    assert g.sequences[0, : len(ids)].tolist() == ids
    assert g.text == [tok.decode(g.sequences[0].tolist())]
    step = lmc.compile(GPT2, weights=FIXTURES / "gpt2_tiny", decode=len(ids) + 3)
    h = lmc.generate(step, prompt="hello", tokenizer=FIXTURES / "gpt2_tiny" / "tokenizer.json", max_new_tokens=4)
    assert np.array_equal(h.sequences, g.sequences) and h.text == g.text
    with pytest.raises(lmc.LmcError, match="tokenizer"):
        lmc.generate(step, prompt="hello", max_new_tokens=2)


def test_sampling_is_seeded(gpt2_case):
    prompts, _ = gpt2_case
    step = lmc.compile(GPT2, weights=FIXTURES / "gpt2_tiny", decode=prompts.shape[1] + 9)
    a = lmc.generate(step, prompts, max_new_tokens=10, do_sample=True, top_k=20, temperature=1.5, seed=7)
    b = lmc.generate(step, prompts, max_new_tokens=10, do_sample=True, top_k=20, temperature=1.5, seed=7)
    greedy = lmc.generate(step, prompts, max_new_tokens=10)
    assert np.array_equal(a.sequences, b.sequences)
    assert not np.array_equal(a.sequences, greedy.sequences)
    with pytest.raises(lmc.LmcError, match="do_sample"):
        lmc.generate(step, prompts, max_new_tokens=2, temperature=0.7)
    # From a model file, through lmc generate: seeded the same way.
    c = lmc.generate(GPT2, prompts, weights=FIXTURES / "gpt2_tiny", max_new_tokens=10, do_sample=True, top_k=20, temperature=1.5, seed=7)
    d = lmc.generate(GPT2, prompts, weights=FIXTURES / "gpt2_tiny", max_new_tokens=10, do_sample=True, top_k=20, temperature=1.5, seed=7)
    assert np.array_equal(c.sequences, d.sequences) and not np.array_equal(c.sequences, greedy.sequences)
    with pytest.raises(lmc.InputError, match="temperature"):
        lmc.generate(step, prompts, max_new_tokens=2, do_sample=True, temperature=-1.0)


def test_an_encoder_decoder_generates_from_a_model_file_and_a_decode_step():
    fixture = FIXTURES / "t5_untied"
    prompts = lmc.read_safetensors(fixture / "generate_inputs.safetensors")["input_ids"]
    want = lmc.read_safetensors(fixture / "generate_expected.safetensors")["sequences"]
    g = lmc.generate(T5, prompts, weights=fixture, max_new_tokens=want.shape[1] - 1)
    assert np.array_equal(g.sequences, want)
    step = lmc.compile(T5, weights=fixture, decode=want.shape[1])
    start = np.full((prompts.shape[0], 1), want[0, 0], np.int64)
    h = lmc.generate(step, start, max_new_tokens=want.shape[1] - 1, context={"input_ids": prompts, "attention_mask": np.ones_like(prompts)})
    assert np.array_equal(h.sequences, want)


def test_torch_prompts_work():
    torch = torch_or_skip()
    step = lmc.compile(GPT2, weights=FIXTURES / "gpt2_tiny", decode=8)
    d = lmc.Decoder(step, batch=1)
    logits = d.step(torch.tensor([[1, 2, 3]]))
    assert isinstance(logits, torch.Tensor) and logits.shape[:2] == (1, 3)


def test_a_tokenizer_file_that_pads_and_truncates_is_read_as_transformers_reads_it(tmp_path):
    """sentence-transformers' tokenizer.json pads every text to 128 tokens and cuts it there;
    transformers turns both off unless asked, and so does lmc (for generate, train and eval too)."""
    import json

    config = json.loads((FIXTURES / "gpt2_tiny" / "tokenizer.json").read_text())
    config["padding"] = {"strategy": {"Fixed": 64}, "direction": "Right", "pad_to_multiple_of": None, "pad_id": 0, "pad_type_id": 0, "pad_token": "!"}
    config["truncation"] = {"direction": "Right", "max_length": 3, "strategy": "LongestFirst", "stride": 0}
    (tmp_path / "tokenizer.json").write_text(json.dumps(config))
    plain = lmc.Tokenizer(FIXTURES / "gpt2_tiny")
    configured = lmc.Tokenizer(tmp_path / "tokenizer.json")
    text = "hello there, a longer prompt than three tokens"
    assert configured.encode(text) == plain.encode(text) and len(plain.encode(text)) > 3
    batch = configured.encode_batch(["hello", text])
    assert batch["input_ids"][1] == plain.encode(text)
    assert batch["attention_mask"][0] == [1] * len(plain.encode("hello")) + [0] * (len(plain.encode(text)) - len(plain.encode("hello")))
    g = lmc.generate(GPT2, prompt=text, tokenizer=tmp_path / "tokenizer.json", weights=FIXTURES / "gpt2_tiny", max_new_tokens=2)
    assert g.sequences.shape[1] == len(plain.encode(text)) + 2


def test_left_padded_prompts_generate_as_transformers_does():
    fixture = FIXTURES / "llama_tiny"
    padded = lmc.read_safetensors(fixture / "generate_padded_inputs.safetensors")
    want = lmc.read_safetensors(fixture / "generate_padded_expected.safetensors")["sequences"]
    new = want.shape[1] - padded["input_ids"].shape[1]
    llama = str(REPO / "models" / "llama.model")
    # As a tokenizer pads them (ids and mask), and as rows of different lengths.
    g = lmc.generate(llama, padded["input_ids"], attention_mask=padded["attention_mask"], weights=fixture, max_new_tokens=new)
    assert np.array_equal(g.sequences, want)
    rows = [list(r[m == 1]) for r, m in zip(padded["input_ids"], padded["attention_mask"])]
    assert len(rows[0]) != len(rows[1])
    step = lmc.compile(llama, weights=fixture, decode=want.shape[1])
    g = lmc.generate(step, rows, max_new_tokens=new)
    assert np.array_equal(g.new_tokens, want[:, padded["input_ids"].shape[1] :])
    with pytest.raises(lmc.LmcError, match="left"):
        lmc.generate(step, padded["input_ids"], attention_mask=padded["attention_mask"][:, ::-1], max_new_tokens=2)
