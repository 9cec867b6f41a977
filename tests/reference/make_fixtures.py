#!/usr/bin/env python3
"""Makes the numeric fixtures under tests/fixtures/ with Hugging Face transformers.

Run by hand, never by CI (it needs torch and transformers; see docs/testing.md, "Fixtures"):

    python3 tests/reference/make_fixtures.py            # every fixture
    python3 tests/reference/make_fixtures.py gpt2_even  # only the named ones

Each fixture directory holds an unmodified `save_pretrained` checkpoint (config.json +
model.safetensors) of a tiny, randomly initialised model at deliberately odd sizes (3, 5 or 7
heads, widths that are not powers of two, padded batches), the inputs
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
        num_attention_heads=3,
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

    # UniLM's masks on the same network, given to BertModel as [B, 1, T, T] boolean masks (what
    # transformers 5 takes for custom masks): left-to-right, and seq2seq (segment 0 = source,
    # segment 1 = target).
    segments = torch.tensor([[0, 0, 0, 1, 1, 1, 1], [0, 0, 1, 1, 1, 1, 1]])
    keep = attention_mask[:, None, :].bool()
    i = torch.arange(7)[:, None]
    j = torch.arange(7)[None, :]
    causal = (j <= i)[None] & keep
    source_key = segments[:, None, :] == 0
    target_query = segments[:, :, None] != 0
    seq2seq = (source_key | (target_query & (j <= i)[None])) & keep
    save_file(
        {"input_ids": input_ids, "attention_mask": attention_mask, "token_type_ids": segments},
        out / "inputs_unilm.safetensors",
    )
    for name, mask in [("causal", causal), ("seq2seq", seq2seq)]:
        with torch.no_grad():
            result = model(input_ids=input_ids, attention_mask=mask[:, None], token_type_ids=segments).last_hidden_state
        save_file({"last_hidden_state": result.contiguous()}, out / f"expected_unilm_{name}.safetensors")


def unilm_mask_matrices():
    """UniLM's masks given whole, as a [B, T, T] `attention_mask` of 1s and 0s: the inputs of
    `UniLMMaskMatrix`, whose expected outputs are `expected_unilm_*`. Checked here: BertModel
    given the same mask (as a boolean [B, 1, T, T], what transformers 5 takes) computes them."""
    from safetensors.torch import load_file

    out = FIXTURES / "bert_tiny"
    model = BertModel.from_pretrained(out).eval()
    inputs = load_file(out / "inputs_unilm.safetensors")
    segments, keep = inputs["token_type_ids"], inputs["attention_mask"][:, None, :].bool()
    t_len = segments.shape[1]
    i = torch.arange(t_len)[:, None]
    j = torch.arange(t_len)[None, :]
    masks = {
        "causal": (j <= i)[None] & keep,
        "seq2seq": ((segments[:, None, :] == 0) | ((segments[:, :, None] != 0) & (j <= i)[None])) & keep,
    }
    for name, mask in masks.items():
        matrix = mask.to(torch.int64)
        with torch.no_grad():
            result = model(input_ids=inputs["input_ids"], attention_mask=matrix[:, None].bool(), token_type_ids=segments).last_hidden_state
        expected = load_file(out / f"expected_unilm_{name}.safetensors")["last_hidden_state"]
        assert torch.allclose(result, expected, atol=1e-6), f"BertModel with a [B, T, T] {name} mask differs"
        save_file(
            {"input_ids": inputs["input_ids"], "attention_mask": matrix, "token_type_ids": segments},
            out / f"inputs_unilm_matrix_{name}.safetensors",
        )


def positions():
    """References for the standard library's position schemes (tests/corpus/positions.model)."""
    import math

    from transformers import LlamaConfig
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding, apply_rotary_pos_emb

    out = FIXTURES / "positions"
    out.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(2)

    # Rotary, as LLaMA applies it to queries: head_dim 8, theta 10000.
    q = torch.randn(2, 3, 5, 8, generator=g)
    config = LlamaConfig(hidden_size=24, num_attention_heads=3, head_dim=8, rope_theta=10000.0)
    rotary = LlamaRotaryEmbedding(config)
    position_ids = torch.arange(5).unsqueeze(0)
    cos, sin = rotary(q, position_ids)
    rotated, _ = apply_rotary_pos_emb(q, q, cos, sin)
    save_file({"q": q}, out / "inputs_rotary.safetensors")
    save_file({"rotated": rotated.contiguous()}, out / "expected_rotary.safetensors")

    # Sinusoidal (Vaswani et al.): PE[t, 2k] = sin(t / 10000^(2k/d)), PE[t, 2k+1] = cos(same).
    t_len, d = 7, 16
    table = torch.zeros(t_len, d)
    pos = torch.arange(t_len, dtype=torch.float64).unsqueeze(1)
    div = torch.pow(10000.0, torch.arange(0, d, 2, dtype=torch.float64) / d)
    table[:, 0::2] = torch.sin(pos / div).float()
    table[:, 1::2] = torch.cos(pos / div).float()
    save_file({"x": torch.zeros(t_len, d)}, out / "inputs_sinusoid.safetensors")
    save_file({"positions": table}, out / "expected_sinusoid.safetensors")

    # ALiBi slopes for 8 heads, from the paper's reference code (power-of-two case).
    start = 2 ** (-(2 ** -(math.log2(8) - 3)))
    slopes = torch.tensor([start * start**i for i in range(8)], dtype=torch.float32)
    save_file({"x": torch.zeros(1)}, out / "inputs_alibi.safetensors")
    save_file({"slopes": slopes}, out / "expected_alibi.safetensors")

    # T5's relative position buckets (32 buckets, max distance 20) over 40 positions, both ways.
    from transformers.models.t5.modeling_t5 import T5Attention

    positions = torch.arange(40)
    relative = positions[None, :] - positions[:, None]
    buckets = {
        f"{name}_buckets": T5Attention._relative_position_bucket(relative, bidirectional=bi, num_buckets=32, max_distance=20).float()
        for name, bi in [("bidirectional", True), ("causal", False)]
    }
    save_file({"q": torch.zeros(1, 1, 40, 8)}, out / "inputs_t5_buckets.safetensors")
    save_file(buckets, out / "expected_t5_buckets.safetensors")

    # These models have no parameters: an empty checkpoint.
    save_file({}, out / "empty.safetensors")


def gpt2_tiny():
    """GPT2LMHeadModel at odd sizes: logits for a padded batch."""
    gpt2_fixture("gpt2_tiny", seeds=(3, 4), n_embd=35, n_head=5, length=6)


def gpt2_even():
    """GPT2LMHeadModel with an even head width (3 heads of 14), so the RoPE variant
    (models/gpt2.model:GPT2RoPE) has a checkpoint to run on: logits for a padded batch."""
    gpt2_fixture("gpt2_even", seeds=(11, 12), n_embd=42, n_head=3, length=7)


def gpt2_fixture(name, seeds, n_embd, n_head, length):
    """A 2-layer GPT2LMHeadModel with perturbed layer norms, and its logits for a batch of two
    whose second row is padded from `length - 2` on."""
    from transformers import GPT2Config, GPT2LMHeadModel

    out = FIXTURES / name
    torch.manual_seed(seeds[0])
    config = GPT2Config(vocab_size=101, n_embd=n_embd, n_layer=2, n_head=n_head, n_positions=24, layer_norm_epsilon=1e-5)
    model = GPT2LMHeadModel(config).eval()
    with torch.no_grad():
        for param_name, p in model.named_parameters():
            if ".ln_" in param_name or "ln_f" in param_name:
                p.add_(0.1 * torch.randn_like(p))
    model.save_pretrained(out, safe_serialization=True)
    g = torch.Generator().manual_seed(seeds[1])
    input_ids = torch.randint(0, config.vocab_size, (2, length), generator=g)
    attention_mask = torch.ones(2, length, dtype=torch.int64)
    attention_mask[1, length - 2 :] = 0
    with torch.no_grad():
        logits = model(input_ids=input_ids, attention_mask=attention_mask).logits
    save_file({"input_ids": input_ids, "attention_mask": attention_mask}, out / "inputs.safetensors")
    save_file({"logits": logits.contiguous()}, out / "expected.safetensors")


def llama_tiny():
    """LlamaForCausalLM at odd sizes with grouped-query attention: logits for a padded batch."""
    from transformers import LlamaConfig, LlamaForCausalLM

    out = FIXTURES / "llama_tiny"
    torch.manual_seed(5)
    config = LlamaConfig(
        vocab_size=97,
        hidden_size=48,
        intermediate_size=50,
        num_hidden_layers=2,
        num_attention_heads=3,
        num_key_value_heads=1,
        max_position_embeddings=64,
        rms_norm_eps=1e-6,
        rope_theta=500.0,
        tie_word_embeddings=False,
    )
    model = LlamaForCausalLM(config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.add_(0.1 * torch.randn_like(p))
    model.save_pretrained(out, safe_serialization=True)
    g = torch.Generator().manual_seed(6)
    input_ids = torch.randint(0, config.vocab_size, (2, 7), generator=g)
    attention_mask = torch.ones(2, 7, dtype=torch.int64)
    attention_mask[1, 5:] = 0
    with torch.no_grad():
        logits = model(input_ids=input_ids, attention_mask=attention_mask).logits
    save_file({"input_ids": input_ids, "attention_mask": attention_mask}, out / "inputs.safetensors")
    save_file({"logits": logits.contiguous()}, out / "expected.safetensors")


def llama_family_tiny(name, config_cls, model_cls, seed, **settings):
    """A LLaMA relative (Qwen2, Mistral) at odd sizes with grouped-query attention: logits for a
    padded batch of 9 tokens."""
    torch.manual_seed(seed)
    config = config_cls(
        vocab_size=97,
        hidden_size=48,
        intermediate_size=50,
        num_hidden_layers=2,
        num_attention_heads=3,
        num_key_value_heads=1,
        rms_norm_eps=1e-6,
        rope_theta=500.0,
        **settings,
    )
    save_causal_fixture(FIXTURES / name, model_cls(config).eval(), seed + 1, ("norm",))


def save_causal_fixture(out, model, seed, perturbed):
    """Perturbs the norms' parameters (names containing one of `perturbed`) and every bias by
    0.1 * randn (random init leaves norms at (1, 0) and biases at 0), saves the checkpoint, and
    the logits of a batch of two 9-token rows, the second padded from position 7 (inputs drawn
    with `seed`)."""
    with torch.no_grad():
        for pname, p in model.named_parameters():
            if any(k in pname for k in perturbed) or pname.endswith(".bias"):
                p.add_(0.1 * torch.randn_like(p))
    model.save_pretrained(out, safe_serialization=True)
    g = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(0, model.config.vocab_size, (2, 9), generator=g)
    attention_mask = torch.ones(2, 9, dtype=torch.int64)
    attention_mask[1, 7:] = 0
    with torch.no_grad():
        logits = model(input_ids=input_ids, attention_mask=attention_mask).logits
    save_file({"input_ids": input_ids, "attention_mask": attention_mask}, out / "inputs.safetensors")
    save_file({"logits": logits.contiguous()}, out / "expected.safetensors")


def qwen2_tiny():
    """Qwen2ForCausalLM: biased query/key/value projections, the head tied to the embedding."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    llama_family_tiny("qwen2_tiny", Qwen2Config, Qwen2ForCausalLM, 21, tie_word_embeddings=True)


def mistral_tiny():
    """MistralForCausalLM with a sliding window of 4 keys (shorter than the 9-token inputs)."""
    from transformers import MistralConfig, MistralForCausalLM

    llama_family_tiny("mistral_tiny", MistralConfig, MistralForCausalLM, 23, sliding_window=4, head_dim=16)


def gemma_tiny():
    """GemmaForCausalLM: norms with gain 1 + weight, scaled embeddings, GeGLU with tanh GELU, a
    head width (20) that is not hidden_size / heads (16), the head tied to the embedding."""
    from transformers import GemmaConfig, GemmaForCausalLM

    llama_family_tiny("gemma_tiny", GemmaConfig, GemmaForCausalLM, 25, head_dim=20, hidden_act="gelu_pytorch_tanh")


def gpt_neox_tiny(name="gpt_neox_tiny", seed=27, rotary_pct=0.25, **settings):
    """GPTNeoXForCausalLM (Pythia's architecture): rotary positions on the first quarter of each
    16-wide head (4 features), parallel residuals, a fused query/key/value projection with
    biases; logits for a padded batch of 9 tokens."""
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    torch.manual_seed(seed)
    config = GPTNeoXConfig(
        vocab_size=97,
        hidden_size=48,
        intermediate_size=50,
        num_hidden_layers=2,
        num_attention_heads=3,
        max_position_embeddings=64,
        rotary_pct=rotary_pct,
        rotary_emb_base=500.0,
        layer_norm_eps=1e-5,
        **settings,
    )
    save_causal_fixture(FIXTURES / name, GPTNeoXForCausalLM(config).eval(), seed + 1, ("layernorm", "layer_norm"))


def gpt_neox_sequential():
    """GPT-NeoX with `use_parallel_residual = false` (the feed-forward reads the attention's
    residual) and half of each head rotated."""
    gpt_neox_tiny("gpt_neox_sequential", 29, use_parallel_residual=False, rotary_pct=0.5)


def phi_tiny(name="phi_tiny", seed=31, **settings):
    """PhiForCausalLM: the attention and feed-forward of a layer read one LayerNorm, biased
    projections, a key/value head shared by 3 query heads, LayerNorms of query and key heads,
    half of each 16-wide head rotated, a head with a bias; logits for a padded batch of 9."""
    from transformers import PhiConfig, PhiForCausalLM

    torch.manual_seed(seed)
    config = PhiConfig(
        vocab_size=97,
        hidden_size=48,
        intermediate_size=50,
        num_hidden_layers=2,
        num_attention_heads=3,
        num_key_value_heads=1,
        max_position_embeddings=64,
        rope_theta=500.0,
        layer_norm_eps=1e-5,
        **{"partial_rotary_factor": 0.5, "qk_layernorm": True, **settings},
    )
    save_causal_fixture(FIXTURES / name, PhiForCausalLM(config).eval(), seed + 1, ("layernorm",))


def phi_tied():
    """Phi without the query/key LayerNorms, int(16 * 0.4) = 6 features of each head rotated
    (transformers truncates), and the head's weight tied to the embedding (its bias its own)."""
    phi_tiny("phi_tied", 33, partial_rotary_factor=0.4, qk_layernorm=False, tie_word_embeddings=True)


def distilbert_tiny():
    """DistilBertModel at odd sizes (3 heads of 12, hidden 37), LayerNorms perturbed:
    last_hidden_state of a padded batch."""
    from transformers import DistilBertConfig, DistilBertModel

    out = FIXTURES / "distilbert_tiny"
    torch.manual_seed(27)
    config = DistilBertConfig(
        vocab_size=99, dim=36, n_layers=2, n_heads=3, hidden_dim=37, max_position_embeddings=40, activation="gelu"
    )
    model = DistilBertModel(config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "LayerNorm" in name or "layer_norm" in name:
                p.add_(0.1 * torch.randn_like(p))
    model.save_pretrained(out, safe_serialization=True)
    g = torch.Generator().manual_seed(28)
    input_ids = torch.randint(0, config.vocab_size, (2, 8), generator=g)
    attention_mask = torch.ones(2, 8, dtype=torch.int64)
    attention_mask[1, 5:] = 0
    with torch.no_grad():
        hidden = model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
    save_file({"input_ids": input_ids, "attention_mask": attention_mask}, out / "inputs.safetensors")
    save_file({"last_hidden_state": hidden.contiguous()}, out / "expected.safetensors")


def assert_reloads(out, cls, pairs, key, atol=1e-6):
    """The saved checkpoint, loaded back with `cls.from_pretrained`, reproduces `key` of each
    (inputs file, expected file) pair in `out`; returns the largest difference."""
    from safetensors.torch import load_file

    model = cls.from_pretrained(out).eval()
    worst = 0.0
    for inputs_name, expected_name in pairs:
        inputs = load_file(out / inputs_name)
        with torch.no_grad():
            result = getattr(model(**inputs), key)
        worst = max(worst, (result - load_file(out / expected_name)[key]).abs().max().item())
    print(f"{out.name}: from_pretrained reproduces {key}, max |difference| {worst:.3g}")
    assert worst <= atol, f"{out.name}: reloaded {key} differs by {worst}"
    return worst


def roberta_tiny():
    """RobertaModel at odd sizes (3 heads of 12, intermediate 37, one token type), LayerNorms and
    biases perturbed: last_hidden_state of a batch of 9 whose second row holds 6 tokens and 3 pads
    (id 1), right-padded in `inputs.safetensors` and left-padded in `inputs_left.safetensors`.
    RoBERTa numbers positions from the input ids, padding_idx + cumsum(id != pad) at real tokens
    and padding_idx at pads, so both paddings give the real tokens positions 2..7."""
    from transformers import RobertaConfig, RobertaModel

    out = FIXTURES / "roberta_tiny"
    torch.manual_seed(35)
    config = RobertaConfig(
        vocab_size=99,
        hidden_size=36,
        num_hidden_layers=2,
        num_attention_heads=3,
        intermediate_size=37,
        max_position_embeddings=14,  # positions 2..10 for 9 tokens (padding_idx 1), and spare
        type_vocab_size=1,
        pad_token_id=1,
        layer_norm_eps=1e-5,
        hidden_act="gelu",
    )
    model = RobertaModel(config, add_pooling_layer=False).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "LayerNorm" in name or name.endswith(".bias"):
                p.add_(0.1 * torch.randn_like(p))
    model.save_pretrained(out, safe_serialization=True)
    g = torch.Generator().manual_seed(36)
    # Ids from {0, 2, 3, ..., 98}: no real token is the pad id 1.
    real = torch.randint(0, config.vocab_size - 1, (2, 9), generator=g)
    real = real + (real >= config.pad_token_id).long()
    right = real.clone()
    right[1, 6:] = config.pad_token_id
    right_mask = (right != config.pad_token_id).long()
    left = real.clone()
    left[1] = torch.cat([torch.full((3,), config.pad_token_id), real[1, :6]])
    left_mask = (left != config.pad_token_id).long()
    results = {}
    for suffix, input_ids, attention_mask in [("", right, right_mask), ("_left", left, left_mask)]:
        with torch.no_grad():
            hidden = model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        results[suffix] = hidden
        save_file({"input_ids": input_ids, "attention_mask": attention_mask}, out / f"inputs{suffix}.safetensors")
        save_file({"last_hidden_state": hidden.contiguous()}, out / f"expected{suffix}.safetensors")
    # Same positions either way: row 1's real tokens come out the same, row 0 is unchanged.
    assert torch.allclose(results[""][1, :6], results["_left"][1, 3:], atol=1e-5)
    assert torch.equal(results[""][0], results["_left"][0])
    assert_reloads(out, RobertaModel, [("inputs.safetensors", "expected.safetensors"),
                                       ("inputs_left.safetensors", "expected_left.safetensors")], "last_hidden_state")


def albert_fixture(name, seed, **settings):
    """An AlbertModel (no pooler) with factorised embeddings (16 wide, projected to 36), 3 heads
    of 12, intermediate 37, gelu_new, LayerNorms and biases perturbed: last_hidden_state of a
    batch of 8 with token types, the second row padded from position 5."""
    from transformers import AlbertConfig, AlbertModel

    out = FIXTURES / name
    torch.manual_seed(seed)
    config = AlbertConfig(
        vocab_size=99,
        embedding_size=16,
        hidden_size=36,
        num_attention_heads=3,
        intermediate_size=37,
        max_position_embeddings=40,
        type_vocab_size=2,
        layer_norm_eps=1e-12,
        hidden_act="gelu_new",
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        **settings,
    )
    model = AlbertModel(config, add_pooling_layer=False).eval()
    with torch.no_grad():
        for pname, p in model.named_parameters():
            if "LayerNorm" in pname or pname.endswith(".bias"):
                p.add_(0.1 * torch.randn_like(p))
    model.save_pretrained(out, safe_serialization=True)
    g = torch.Generator().manual_seed(seed + 1)
    input_ids = torch.randint(0, config.vocab_size, (2, 8), generator=g)
    token_type_ids = torch.randint(0, config.type_vocab_size, (2, 8), generator=g)
    attention_mask = torch.ones(2, 8, dtype=torch.int64)
    attention_mask[1, 5:] = 0
    inputs = {"input_ids": input_ids, "attention_mask": attention_mask, "token_type_ids": token_type_ids}

    # Which shared layer runs at each step: layer i runs group
    # int(i / (num_hidden_layers / num_hidden_groups)), whose inner_group_num layers run in order.
    calls = []
    hooks = [
        layer.register_forward_hook(lambda m, a, o, gi=gi, li=li: calls.append((gi, li)))
        for gi, group in enumerate(model.encoder.albert_layer_groups)
        for li, layer in enumerate(group.albert_layers)
    ]
    with torch.no_grad():
        hidden = model(**inputs).last_hidden_state
    for h in hooks:
        h.remove()
    n, groups, inner = config.num_hidden_layers, config.num_hidden_groups, config.inner_group_num
    assert calls == [(int(i / (n / groups)), j) for i in range(n) for j in range(inner)], calls
    print(f"{name}: shared layers run as (group, inner layer) {calls}")
    save_file(inputs, out / "inputs.safetensors")
    save_file({"last_hidden_state": hidden.contiguous()}, out / "expected.safetensors")
    assert_reloads(out, AlbertModel, [("inputs.safetensors", "expected.safetensors")], "last_hidden_state")


def albert_tiny():
    """ALBERT with one layer shared by all 3 layers (one group of one)."""
    albert_fixture("albert_tiny", 37, num_hidden_layers=3, num_hidden_groups=1, inner_group_num=1)


def albert_groups():
    """ALBERT with 4 layers in 2 groups of 2 inner layers: the layers run group 0's (0, 1, 0, 1)
    then group 1's (0, 1, 0, 1), 8 layer applications from 4 stored layers."""
    albert_fixture("albert_groups", 39, num_hidden_layers=4, num_hidden_groups=2, inner_group_num=2)


def mixtral_tiny():
    """MixtralForCausalLM (sparse mixture of experts): 4 heads of 8 sharing 2 key/value heads,
    4 SwiGLU experts of width 24, 2 chosen per token; logits for a padded batch of 9. The router
    is drawn wider than its initialisation (std 0.3, not 0.02) so the top-2 choice is far from a
    tie at every token (checked: the 2nd and 3rd probabilities differ by more than 1e-3), and
    the mixture is checked against a float64 re-implementation of the routing."""
    from safetensors.torch import load_file
    from transformers import MixtralConfig, MixtralForCausalLM

    out = FIXTURES / "mixtral_tiny"
    torch.manual_seed(41)
    config = MixtralConfig(
        vocab_size=97,
        hidden_size=32,
        intermediate_size=24,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        num_local_experts=4,
        num_experts_per_tok=2,
        max_position_embeddings=64,
        rms_norm_eps=1e-6,
        rope_theta=500.0,
        sliding_window=None,
    )
    model = MixtralForCausalLM(config).eval()
    with torch.no_grad():
        for layer in model.model.layers:
            layer.mlp.gate.weight.normal_(0.0, 0.3)
    save_causal_fixture(out, model, 42, ("norm",))

    # The router's margins and the mixture's formula, on the fixture's inputs.
    inputs = load_file(out / "inputs.safetensors")
    seen = []
    hooks = [layer.mlp.register_forward_hook(lambda m, a, o: seen.append((a[0], o))) for layer in model.model.layers]
    with torch.no_grad():
        logits = model(**inputs).logits
    for h in hooks:
        h.remove()
    assert torch.equal(logits, load_file(out / "expected.safetensors")["logits"])
    k = config.num_experts_per_tok
    for layer, (x, y) in zip(model.model.layers, seen):
        x = x.reshape(-1, config.hidden_size).double()
        probs = torch.softmax(x @ layer.mlp.gate.weight.double().T, dim=-1)
        top = probs.sort(dim=-1, descending=True).values
        margin = (top[:, k - 1] - top[:, k]).min().item()
        assert margin > 1e-3, f"router top-{k} margin {margin}"
        weights, chosen = torch.topk(probs, k, dim=-1)
        weights = weights / weights.sum(-1, keepdim=True)
        experts = layer.mlp.experts
        mixed = torch.zeros_like(x)
        for t in range(x.shape[0]):
            for w, e in zip(weights[t], chosen[t]):
                gate, up = (experts.gate_up_proj[e].double() @ x[t]).chunk(2)
                mixed[t] += w * (experts.down_proj[e].double() @ (torch.nn.functional.silu(gate) * up))
        diff = (mixed - y.reshape(-1, config.hidden_size).double()).abs().max().item()
        print(f"mixtral_tiny: router margin {margin:.3g}, mixture vs float64 routing {diff:.3g}")
        assert diff < 1e-5
    assert_reloads(out, MixtralForCausalLM, [("inputs.safetensors", "expected.safetensors")], "logits")


def t5_tiny(name, **overrides):
    """T5ForConditionalGeneration at odd sizes, a deeper encoder than decoder: logits."""
    from transformers import T5Config, T5ForConditionalGeneration

    out = FIXTURES / name
    torch.manual_seed(7)
    settings = dict(
        vocab_size=103,
        d_model=32,
        d_kv=8,
        d_ff=37,
        num_layers=3,
        num_decoder_layers=2,
        num_heads=5,
        relative_attention_num_buckets=8,
        relative_attention_max_distance=20,
        feed_forward_proj="relu",
        tie_word_embeddings=True,
        decoder_start_token_id=0,
    )
    settings.update(overrides)
    untied = settings.pop("untied", False)
    config = T5Config(**settings)
    model = T5ForConditionalGeneration(config).eval()
    if untied:
        # transformers 5 ties T5's head whatever the constructor says: untie it by hand, with
        # weights of its own, as an untied checkpoint has them.
        model.config.tie_word_embeddings = False
        model.config.scale_decoder_outputs = False
        model.lm_head.weight = torch.nn.Parameter(0.05 * torch.randn(config.vocab_size, config.d_model))
    with torch.no_grad():
        for pname, p in model.named_parameters():
            if "layer_norm" in pname:
                p.add_(0.1 * torch.randn_like(p))
    model.save_pretrained(out, safe_serialization=True)
    g = torch.Generator().manual_seed(8)
    input_ids = torch.randint(1, config.vocab_size, (2, 7), generator=g)
    attention_mask = torch.ones(2, 7, dtype=torch.int64)
    attention_mask[1, 5:] = 0
    decoder_input_ids = torch.randint(1, config.vocab_size, (2, 4), generator=g)
    with torch.no_grad():
        logits = model(input_ids=input_ids, attention_mask=attention_mask, decoder_input_ids=decoder_input_ids).logits
    save_file(
        {"input_ids": input_ids, "attention_mask": attention_mask, "decoder_input_ids": decoder_input_ids},
        out / "inputs.safetensors",
    )
    save_file({"logits": logits.contiguous()}, out / "expected.safetensors")


def electra_tiny():
    """ELECTRA's discriminator and generator, embeddings narrower than the hidden size."""
    from transformers import ElectraConfig, ElectraForMaskedLM, ElectraForPreTraining

    g = torch.Generator().manual_seed(10)
    input_ids = torch.randint(0, 99, (2, 7), generator=g)
    token_type_ids = torch.randint(0, 2, (2, 7), generator=g)
    attention_mask = torch.ones(2, 7, dtype=torch.int64)
    attention_mask[0, 6:] = 0
    inputs = {"input_ids": input_ids, "attention_mask": attention_mask, "token_type_ids": token_type_ids}
    for name, cls, hidden, heads, inner in [
        ("electra_discriminator", ElectraForPreTraining, 36, 3, 37),
        ("electra_generator", ElectraForMaskedLM, 35, 7, 21),
    ]:
        out = FIXTURES / name
        torch.manual_seed(9)
        config = ElectraConfig(
            vocab_size=99,
            embedding_size=24,
            hidden_size=hidden,
            num_hidden_layers=2,
            num_attention_heads=heads,
            intermediate_size=inner,
            max_position_embeddings=40,
            type_vocab_size=2,
        )
        model = cls(config).eval()
        with torch.no_grad():
            for pname, p in model.named_parameters():
                if "LayerNorm" in pname:
                    p.add_(0.1 * torch.randn_like(p))
        model.save_pretrained(out, safe_serialization=True)
        with torch.no_grad():
            logits = model(**inputs).logits
        save_file(inputs, out / "inputs.safetensors")
        save_file({"logits": logits.contiguous()}, out / "expected.safetensors")


def rwkv_tiny():
    """RwkvForCausalLM (RWKV-4) at odd sizes, with rescaling inside the stack: logits, computed
    by transformers' CPU recurrence (`rwkv_linear_attention_cpu`)."""
    from transformers import RwkvConfig, RwkvForCausalLM

    out = FIXTURES / "rwkv_tiny"
    torch.manual_seed(11)
    config = RwkvConfig(
        vocab_size=97,
        hidden_size=22,
        attention_hidden_size=18,
        intermediate_size=37,
        num_hidden_layers=3,
        rescale_every=2,
        # Not the default: RwkvModel's last LayerNorm ignores it, which the model must too.
        layer_norm_epsilon=1e-3,
        context_length=64,
    )
    model = RwkvForCausalLM(config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            # Away from the initialisation's special values (unit norms, zero embeddings rows).
            p.add_(0.1 * torch.randn_like(p))
    model.save_pretrained(out, safe_serialization=True)
    g = torch.Generator().manual_seed(12)
    input_ids = torch.randint(0, config.vocab_size, (2, 9), generator=g)
    with torch.no_grad():
        logits = model(input_ids=input_ids, use_cache=False).logits
    save_file({"input_ids": input_ids}, out / "inputs.safetensors")
    save_file({"logits": logits.contiguous()}, out / "expected.safetensors")


def save_reference_checkpoint(out, module, config):
    """A checkpoint in save_pretrained's layout (config.json + model.safetensors) for a reference
    module that transformers does not have."""
    import json

    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    save_file({k: v.contiguous() for k, v in module.state_dict().items()}, out / "model.safetensors")


def lstm_tiny():
    """A two-layer bidirectional LSTM encoder, ELMo-style (models/lstm.model): torch.nn.LSTM
    stacks read the sequence forwards and reversed; each layer's states are concatenated."""
    from torch import nn

    out = FIXTURES / "lstm_tiny"
    torch.manual_seed(13)
    config = {"vocab_size": 53, "input_size": 11, "hidden_size": 7}

    class Encoder(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = nn.Embedding(config["vocab_size"], config["input_size"])
            self.forward_lstm = nn.LSTM(config["input_size"], config["hidden_size"], num_layers=2, batch_first=True)
            self.backward_lstm = nn.LSTM(config["input_size"], config["hidden_size"], num_layers=2, batch_first=True)

    def first_layer(lstm, x):
        # The same weights as a one-layer LSTM: the first layer's states alone.
        one = nn.LSTM(config["input_size"], config["hidden_size"], num_layers=1, batch_first=True)
        one.load_state_dict({k: v for k, v in lstm.state_dict().items() if k.endswith("_l0")})
        return one(x)[0]

    model = Encoder().eval()
    g = torch.Generator().manual_seed(14)
    input_ids = torch.randint(0, config["vocab_size"], (2, 8), generator=g)
    with torch.no_grad():
        x = model.embed(input_ids)
        reversed_x = x.flip(1)
        first = torch.cat([first_layer(model.forward_lstm, x), first_layer(model.backward_lstm, reversed_x).flip(1)], -1)
        last = torch.cat([model.forward_lstm(x)[0], model.backward_lstm(reversed_x)[0].flip(1)], -1)
    save_reference_checkpoint(out, model, config)
    save_file({"input_ids": input_ids}, out / "inputs.safetensors")
    save_file({"first_layer": first.contiguous(), "last_hidden_state": last.contiguous()}, out / "expected.safetensors")


def linear_transformer_tiny():
    """A causal linear-attention LM (models/linear_transformer.model). The reference computes
    attention in its parallel form, with cumulative sums over the sequence, not as a recurrence."""
    from torch import nn

    out = FIXTURES / "linear_transformer_tiny"
    torch.manual_seed(15)
    config = {
        "vocab_size": 61,
        "max_position_embeddings": 16,
        "hidden_size": 15,
        "num_heads": 3,
        "num_layers": 2,
        "intermediate_size": 23,
        "layer_norm_eps": 1e-5,
        "eps": 1e-6,
    }
    d, heads = config["hidden_size"], config["num_heads"]

    def phi(x):
        return nn.functional.elu(x) + 1

    class Attention(nn.Module):
        def __init__(self):
            super().__init__()
            self.query, self.key, self.value, self.out = (nn.Linear(d, d) for _ in range(4))

        def forward(self, x):
            b, t, _ = x.shape
            split = lambda y: y.view(b, t, heads, d // heads).transpose(1, 2)  # noqa: E731
            q, k, v = phi(split(self.query(x))), phi(split(self.key(x))), split(self.value(x))
            sums = torch.einsum("bhtd,bhte->bhtde", k, v).cumsum(2)
            numerator = torch.einsum("bhtd,bhtde->bhte", q, sums)
            denominator = torch.einsum("bhtd,bhtd->bht", q, k.cumsum(2))
            y = numerator / (denominator[..., None] + config["eps"])
            return self.out(y.transpose(1, 2).reshape(b, t, d))

    class FeedForward(nn.Module):
        def __init__(self):
            super().__init__()
            self.up = nn.Linear(d, config["intermediate_size"])
            self.down = nn.Linear(config["intermediate_size"], d)

        def forward(self, x):
            return self.down(nn.functional.gelu(self.up(x)))

    class Layer(nn.Module):
        def __init__(self):
            super().__init__()
            self.ln_1 = nn.LayerNorm(d, eps=config["layer_norm_eps"])
            self.attention = Attention()
            self.ln_2 = nn.LayerNorm(d, eps=config["layer_norm_eps"])
            self.mlp = FeedForward()

        def forward(self, x):
            x = x + self.attention(self.ln_1(x))
            return x + self.mlp(self.ln_2(x))

    class LM(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed_tokens = nn.Embedding(config["vocab_size"], d)
            self.embed_positions = nn.Embedding(config["max_position_embeddings"], d)
            self.layers = nn.ModuleList(Layer() for _ in range(config["num_layers"]))
            self.norm = nn.LayerNorm(d, eps=config["layer_norm_eps"])

        def forward(self, input_ids):
            x = self.embed_tokens(input_ids) + self.embed_positions(torch.arange(input_ids.shape[1]))
            for layer in self.layers:
                x = layer(x)
            return self.norm(x) @ self.embed_tokens.weight.T

    model = LM().eval()
    g = torch.Generator().manual_seed(16)
    input_ids = torch.randint(0, config["vocab_size"], (2, 9), generator=g)
    with torch.no_grad():
        logits = model(input_ids)
    save_reference_checkpoint(out, model, config)
    save_file({"input_ids": input_ids}, out / "inputs.safetensors")
    save_file({"logits": logits.contiguous()}, out / "expected.safetensors")


if __name__ == "__main__":
    import sys

    if len(sys.argv) > 1:
        for name in sys.argv[1:]:
            globals()[name]()
        sys.exit(0)
    bert_tiny()
    unilm_mask_matrices()
    positions()
    gpt2_tiny()
    gpt2_even()
    llama_tiny()
    qwen2_tiny()
    mistral_tiny()
    gemma_tiny()
    gpt_neox_tiny()
    gpt_neox_sequential()
    phi_tiny()
    phi_tied()
    distilbert_tiny()
    roberta_tiny()
    albert_tiny()
    albert_groups()
    mixtral_tiny()
    t5_tiny("t5_tiny")
    t5_tiny("t5_gated", feed_forward_proj="gated-gelu")
    t5_tiny("t5_untied", untied=True)
    electra_tiny()
    rwkv_tiny()
    lstm_tiny()
    linear_transformer_tiny()
    print("fixtures written to", FIXTURES)
