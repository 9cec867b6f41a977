#!/usr/bin/env python3
"""Makes the training fixtures: losses, gradients and an AdamW trajectory computed by PyTorch
and Hugging Face transformers, for lmc's backward pass and optimizer.

Run by hand, never by CI (it needs torch and transformers; see docs/testing.md, "Fixtures"):

    ~/.cache/lmc-peers/venv/bin/python tests/reference/make_grad_fixtures.py [FIXTURE ...]

(all of them when none is named).

Made with torch 2.15.0 (CPU, one thread, deterministic algorithms) and transformers 5.25.0 (the
script prints the versions it runs with). Every tensor is float32 except the integer inputs
(int64). Both models have every dropout at 0.0; the gradients were computed in train mode and
checked to equal eval mode's.

`gpt2_grad/`: GPT2LMHeadModel (vocab 101, 24 positions, width 35, 2 layers, 5 heads of 7,
gelu_new, LayerNorm eps 1e-5, head tied to `transformer.wte.weight`), seed 0, LayerNorm weights
and biases perturbed by 0.1 * randn.
- `config.json`, `generation_config.json`, `model.safetensors`: the unmodified `save_pretrained`
  checkpoint. transformers 5 stores a tied tensor once, under the name it is tied to:
  `model.safetensors` holds `transformer.wte.weight` and no `lm_head.weight`.
- `inputs_grad.safetensors`: `input_ids` [2, 9], `attention_mask` [2, 9] (row 1 right-padded:
  its last 3 positions are 0), `labels` [2, 9] (= input_ids, but -100 at row 1's padding and at
  row 0, position 4).
- `expected_grad.safetensors`: `loss` (scalar, shape []), `logits` [2, 9, 101], and for every
  tensor of `model.safetensors`, under that same name and shape, d loss / d tensor (the tied
  `transformer.wte.weight` gets both uses: embedding and head). transformers' causal LM loss
  shifts the labels: loss = mean over (b, t) with labels[b, t + 1] != -100 of
  cross_entropy(logits[b, t], labels[b, t + 1]) (here 7 + 5 = 12 terms; each AdamW
  step's loss is defined the same way).
- `adamw_inputs.safetensors`: `input_ids`, `attention_mask`, `labels`, each [6, 2, 9]: six
  batches of two right-padded rows (labels = input_ids, -100 at padding).
- `adamw_expected.safetensors`: from the checkpoint above, six steps of
  torch.optim.AdamW(lr=1e-2, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01, amsgrad=False),
  batch i at step i, constant learning rate, no gradient clipping, no accumulation:
  `losses` [6] (step i's loss, before its update) and `final.<name>` for every tensor of
  `model.safetensors` (the weights after the sixth update). torch's AdamW decays every
  parameter, biases, LayerNorm and embeddings included (no exclusion list), decoupled:
      p *= 1 - lr * wd;  m = b1 m + (1 - b1) g;  v = b2 v + (1 - b2) g^2;
      p -= lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)
  The tied embedding/head is one parameter with one (m, v) and one decay.

`llama_grad/`: LlamaForCausalLM (vocab 97, width 42, 2 layers, 3 query heads of 14 sharing one
key/value head, SwiGLU intermediate 37, RMSNorm eps 1e-6, rotary positions with theta 500,
untied head), seed 0, RMSNorm weights perturbed by 0.1 * randn.
- `config.json`, `generation_config.json`, `model.safetensors`: the `save_pretrained` checkpoint.
- `inputs_grad.safetensors`: `input_ids`, `attention_mask` (row 1 right-padded by 2), `labels`
  (= input_ids, -100 at row 1's padding and at row 0, position 3), each [2, 9].
- `expected_grad.safetensors`: `loss`, `logits` [2, 9, 97] and one gradient per tensor of
  `model.safetensors` (causal LM loss as gpt2_grad's).

`gpt_neox_grad/`: GPTNeoXForCausalLM (vocab 97, width 48, 2 layers, 3 heads of 16 with the
first 4 features rotated, theta 500, parallel residuals, intermediate 37, untied head stored as
`embed_out.weight`), seed 0, LayerNorm weights and biases perturbed by 0.1 * randn; inputs and
expected as llama_grad's.

`phi_grad/`: PhiForCausalLM (vocab 97, width 48, 2 layers, 3 query heads of 16 sharing one
key/value head, query/key LayerNorms, 6 of 16 features rotated, theta 500, intermediate 37, the
head's weight tied to the embedding and its bias its own), seed 0, LayerNorms and biases
perturbed by 0.1 * randn; inputs and expected as llama_grad's.

`mixtral_grad/`: MixtralForCausalLM (vocab 97, width 32, 2 layers, 4 query heads of 8 sharing 2
key/value heads, rotary theta 500, no sliding window, RMSNorm eps 1e-6, untied head; a sparse
mixture of 4 SwiGLU experts of width 24, 2 chosen per token, their softmax weights renormalised
over the 2), seed 0, RMSNorm weights perturbed by 0.1 * randn, then each router redrawn with std
0.3 (as make_fixtures.py's mixtral_tiny) so the top-2 choice is far from a tie: the 2nd and 3rd
router probabilities differ by more than 1e-3 at all 18 tokens of the batch, padding included
(checked). output_router_logits is false: the loss is the causal LM loss alone, no auxiliary
balancing loss. Inputs and expected as llama_grad's. transformers 5 keeps a layer's experts
fused in memory (`mlp.experts.gate_up_proj` [4, 48, 32] = w1 over w3, `mlp.experts.down_proj`
[4, 32, 24]) but `model.safetensors` holds the 4.x names
`model.layers.N.block_sparse_moe.experts.E.w1.weight` [24, 32], `.w3.weight` [24, 32],
`.w2.weight` [32, 24] and `model.layers.N.block_sparse_moe.gate.weight` [4, 32]; the gradients
are the fused gradients' matching slices, under those names (the saved weights are checked to
equal the same slices of the fused weights). Every expert is chosen somewhere in the batch, so
no gradient is all zero.

`t5_grad/`: T5ForConditionalGeneration (T5 1.0 style; vocab 101, width 20, 3 heads of 6 (inner
width 18), ReLU feed-forward of 28, a deep encoder of 3 blocks and a shallow decoder of 1, no
biases, RMS-style T5 LayerNorm eps 1e-6, relative position buckets 8 with max distance 20 (the
bias table lives in the first block of each stack: `encoder.block.0...relative_attention_bias`
bidirectional, `decoder.block.0...` causal), dropout 0, pad = decoder start = 0), seed 0, layer
norms and both relative_attention_bias tables perturbed by 0.1 * randn. The head is the shared
embedding applied to the decoder's final output times d_model**-0.5 (transformers 5 keys this on
`scale_decoder_outputs`, which `config.json` stores as true, set from tie_word_embeddings).
- `model.safetensors` holds `shared.weight` [101, 20] and none of `lm_head.weight`,
  `encoder.embed_tokens.weight`, `decoder.embed_tokens.weight` (all three tied to it).
- `inputs_grad.safetensors`: `input_ids` [2, 7] (ids in [1, 101), row 1 right-padded from
  position 5 with the pad id 0), `attention_mask` [2, 7] (row 1: 0 at 5, 6), `labels` [2, 5]
  (ids in [1, 101), -100 at row 0, position 2 and row 1, position 4), `decoder_input_ids`
  [2, 5] = model._shift_right(labels): start token 0, then labels[:, :-1] with -100 as 0. No
  decoder attention mask: the decoder's self-attention is causal only.
- `expected_grad.safetensors`: `loss` (scalar: mean cross-entropy of logits[b, t] against
  labels[b, t] over the 8 labelled positions, no shift), `logits` [2, 5, 101] and one gradient
  per tensor of `model.safetensors` (`shared.weight` gets the encoder's, the decoder's and the
  head's uses).

`electra_discriminator/`, `electra_generator/` (the checkpoints of make_fixtures.py): loss and
gradients in eval mode (their configs keep dropout at 0.1), batch [2, 7], row 1 padded by 2.
- `inputs_grad.safetensors`: `input_ids`, `token_type_ids`, `attention_mask`, `labels`: for the
  discriminator (ElectraForPreTraining) 0/1 per position, padding included, which transformers'
  loss leaves out by the attention mask (BCEWithLogitsLoss over the active positions); for the
  generator (ElectraForMaskedLM) the token at 3 positions a row and -100 elsewhere.
- `expected_grad.safetensors`: `loss`, `logits` and one gradient per stored tensor.

`electra_joint/`: ELECTRA's joint pre-training step (models/electra.model's
ElectraForJointPreTraining): an ElectraForPreTraining discriminator (vocab 53, embeddings 12
wide projected to width 16 by `electra.embeddings_project`, 2 layers, 2 heads of 8, intermediate
19, 12 positions, 2 token types, LayerNorm eps 1e-12, exact gelu, dropout 0) and a 1-layer
ElectraForMaskedLM generator of the same widths over the discriminator's own `electra.embeddings`
and `electra.embeddings_project`, its head tied to `electra.embeddings.word_embeddings.weight`
with a bias of its own; seed 0, LayerNorms and biases perturbed by 0.1 * randn, then the
generator's head bias of token k0 = 5 set to 40.
- `config.json`: the ELECTRA config (model_type "electra", architectures
  ["ElectraForJointPreTraining"]) with `generator_num_hidden_layers` 1 and
  `discriminator_loss_weight` 50.0.
- `model.safetensors`: ElectraForPreTraining's tensors under its names (`electra.*`,
  `discriminator_predictions.*`: the file loads into transformers' ElectraForPreTraining, which
  reports the rest unused) and the generator's own under `generator.`: its ElectraForMaskedLM
  names `electra.encoder.layer.N.*` as `generator.encoder.layer.N.*`, `generator_predictions.*`
  as `generator.generator_predictions.*`, `generator_lm_head.bias` as
  `generator.generator_lm_head.bias` (no embeddings, no head weight: they are the
  discriminator's).
- `inputs_grad.safetensors`: `input_ids`, `token_type_ids`, `attention_mask` (row 1
  right-padded by 2), `labels` (the original token at row 0, positions 1, 4, 6 and row 1,
  positions 0, 2, 3, -100 elsewhere), each [2, 7]. The input holds [MASK] (3) at 4 of the 6,
  its own token at row 0, position 6 and another token (7) at row 1, position 3.
- The step: the generator (ElectraForMaskedLM on `input_ids`) samples a token at each labelled
  position, `input_ids` elsewhere; the discriminator (ElectraForPreTraining) reads that corrupted
  input with labels "replaced" = (corrupted != original), original being `labels` where given and
  `input_ids` elsewhere. lmc samples by Gumbel-max, argmax(logits - log(-log u)), with its own
  random numbers u in (2^-25, 1 - 2^-25): the noise lies in [-2.86, 17.33], and token k0 leads
  every other by more than 39 at every position (checked), so the sample is k0 whatever u is,
  and torch can follow it exactly. k0 is row 1, position 2's original token and no other
  labelled position's: that position is not replaced (label 0), the other 5 are (label 1).
- `expected_grad.safetensors`: `loss` (scalar: the generator's masked-LM cross-entropy, mean over
  the 6 labelled positions, plus 50 times the discriminator's BCE-with-logits, mean over the 12
  positions the attention mask keeps), `logits` [2, 7] (the discriminator's, on the corrupted
  input) and one gradient per tensor of `model.safetensors` (the sample carries none; the shared
  embeddings and projection get both models' uses, the word embeddings the generator head's
  too).

`electra_classifier/`: ElectraForSequenceClassification (the first token's state through a dense
layer, GELU and the output projection; cross-entropy against one label per sequence) over the
electra_discriminator fixture's config with transformers' default two labels, seed 0, LayerNorms
and biases perturbed; in eval mode, batch [2, 7] with row 1 padded by 2 and labels [2].

`bert_mlm/`: BertForMaskedLM (vocab 99, width 36, 2 layers, 3 heads of 12, intermediate 37,
40 positions, 3 token types, LayerNorm eps 1e-12, exact (erf) gelu), seed 0, LayerNorm weights
and biases perturbed by 0.1 * randn.
- `config.json`, `model.safetensors`: the `save_pretrained` checkpoint. It holds neither
  `cls.predictions.decoder.weight` (tied to `bert.embeddings.word_embeddings.weight`) nor
  `cls.predictions.decoder.bias` (tied to `cls.predictions.bias`).
- `inputs_grad.safetensors`: `input_ids`, `token_type_ids`, `attention_mask` (row 1
  right-padded by 2), `labels` (-100 except 4 positions per row, none on padding; most of those
  positions' input ids are replaced by token 3, playing [MASK]), each [2, 7].
- `expected_grad.safetensors`: `loss` (scalar: mean cross-entropy over the 8 labelled positions,
  no shift), `logits` [2, 7, 99] and one gradient per tensor of `model.safetensors`, under its
  stored name (`bert.embeddings.word_embeddings.weight` gets the decoder's use too,
  `cls.predictions.bias` is the decoder's bias).

`distilbert_mlm/`: DistilBertForMaskedLM (vocab 99, width 36, 2 layers, 3 heads of 12, hidden
37, 40 positions, exact gelu, dropout 0), seed 0, LayerNorm weights and biases perturbed by
0.1 * randn; `vocab_projector.weight` tied to (and stored as) the word embeddings. The batch is
bert_mlm's without token types; `expected_grad.safetensors` as bert_mlm's.

`roberta_mlm/`: RobertaForMaskedLM (vocab 99, width 36, 2 layers, 3 heads of 12, intermediate
37, 12 positions, one token type, pad id 1, LayerNorm eps 1e-5, exact gelu, dropout 0), seed 0,
LayerNorm weights and biases and every bias perturbed by 0.1 * randn.
- `model.safetensors` holds neither `lm_head.decoder.weight` (tied to
  `roberta.embeddings.word_embeddings.weight`) nor `lm_head.decoder.bias` (tied to
  `lm_head.bias`).
- `inputs_grad.safetensors`: `input_ids`, `attention_mask`, `labels`, each [2, 7]: bert_mlm's
  batch shape without token types, row 1's padding (positions 5, 6) holding the pad id 1, since
  RoBERTa numbers positions from the ids: padding_idx + cumsum(id != pad) at real tokens,
  padding_idx at pads (so the real tokens sit at positions 2..8).
- `expected_grad.safetensors` as bert_mlm's (`lm_head.bias` is the decoder's bias).

`albert_mlm/`: AlbertForMaskedLM (vocab 99, embeddings 16 wide projected to width 36 by
`albert.encoder.embedding_hidden_mapping_in`, one layer shared by all 3 layers, 3 heads of 12,
intermediate 37, 40 positions, 2 token types, LayerNorm eps 1e-12, gelu_new, dropout 0), seed 0,
LayerNorms and biases perturbed by 0.1 * randn; `predictions.decoder.weight` tied to (stored as)
`albert.embeddings.word_embeddings.weight`, `predictions.decoder.bias` to `predictions.bias`.
The batch is bert_mlm's shape with token types; the shared layer's gradients sum its 3 uses.

`rwkv_grad/`: RwkvForCausalLM (RWKV-4; vocab 97, width 22, attention width 18, intermediate 37,
3 layers, LayerNorm eps 1e-3 (the last LayerNorm, `rwkv.ln_out`, keeps 1e-5: RwkvModel builds
it without the config's eps), rescale_every 0, untied `head.weight`, use_cache false: eval mode
would keep a recurrent state, which RwkvModel sizes by hidden_size alone, failing when
attention_hidden_size differs), seed 0, every parameter perturbed by 0.1 * randn (as
make_fixtures.py's rwkv_tiny: the initialisation's embeddings are ~1e-4, which the first
LayerNorm's eps would flatten; its norms are (1, 0) and every time_first is 1). On the CPU transformers runs the WKV as `rwkv_linear_attention_cpu`'s loop (its CUDA
kernel is never loaded). rescale_every is 0 because transformers rescales only in eval mode: in
train mode RwkvModel multiplies the rescaled blocks' `attention.output` / `feed_forward.value`
weights back and never halves the hidden state, so with rescale_every > 0 train and eval mode
compute different functions of the stored weights (the same logits only up to LayerNorm's eps).
- `inputs_grad.safetensors`: `input_ids` [2, 9], `labels` [2, 9] (= input_ids, but -100 at row 1,
  positions 7 and 8, and at row 0, position 3). No `attention_mask`: RWKV takes none (RwkvModel
  ignores one), so the batch is unpadded.
- `expected_grad.safetensors`: `loss`, `logits` [2, 9, 97] and one gradient per tensor of
  `model.safetensors` (causal LM loss as gpt2_grad's: 7 + 6 = 13 terms).

`mamba_grad/`: MambaForCausalLM (vocab 97, width 21, state 5, expand 2 (inner width 42), Δ-rank
3, conv kernel 4 with a bias, no projection biases, 2 layers, RMSNorm eps 1e-5, head tied to
`backbone.embeddings.weight` and not stored), seed 0, perturbed as make_mamba_fixture.py's
mamba_tiny: RMSNorm weights and conv biases + 0.1 * randn, `A_log` and `D` + 0.3 * randn,
`dt_proj.bias` = randn - 1, `x_proj.weight` * 3. Computed on the torch path (MambaMixer's
`slow_forward` equivalent: F.conv1d and `mamba_selective_scan`'s sequential loop; neither
mamba-ssm, causal-conv1d nor mambapy is installed, and no hub kernel is requested).
- `inputs_grad.safetensors`: `input_ids`, `attention_mask` (row 1 left-padded by 3, as
  mamba_tiny: Mamba zeroes the padding's hidden states before each in_proj and after each
  convolution, so the row's real tokens start from a zero state), `labels` (= input_ids, -100 at
  row 1's padding and at row 0, position 3), each [2, 9]. Row 1's first real token (position 3)
  keeps its label, as a collator that masks only the padding leaves it: its loss term reads the
  logits at padding position 2 (head(norm_f(embedding)): the mixers add exactly 0 there).
- `expected_grad.safetensors`: `loss`, `logits` [2, 9, 97] and one gradient per tensor of
  `model.safetensors` (`backbone.embeddings.weight` gets the head's use too); 7 + 6 = 13 terms.

For rwkv_grad, mamba_grad and electra_joint every stored gradient is also checked against a
float64 copy of the model (transformers' float32 casts inside the WKV, the scan, RMSNorm and
ELECTRA's discriminator loss kept float64): its gradients, and central finite differences
(h = 1e-6) at 3 entries of every tensor.
"""
import copy
import importlib.util
import pathlib
import re
import sys
import types

import torch
import transformers
from safetensors import safe_open
from safetensors.torch import save_file
from transformers import (
    AlbertConfig,
    AlbertForMaskedLM,
    BertConfig,
    BertForMaskedLM,
    DistilBertConfig,
    DistilBertForMaskedLM,
    ElectraConfig,
    ElectraForMaskedLM,
    ElectraForPreTraining,
    ElectraForSequenceClassification,
    GPT2Config,
    GPT2LMHeadModel,
    GPTNeoXConfig,
    GPTNeoXForCausalLM,
    LlamaConfig,
    LlamaForCausalLM,
    MambaConfig,
    MambaForCausalLM,
    MixtralConfig,
    MixtralForCausalLM,
    PhiConfig,
    PhiForCausalLM,
    RobertaConfig,
    RobertaForMaskedLM,
    RwkvConfig,
    RwkvForCausalLM,
    T5Config,
    T5ForConditionalGeneration,
)

HERE = pathlib.Path(__file__).resolve().parent
FIXTURES = HERE.parent / "fixtures"

LR, BETAS, EPS, WEIGHT_DECAY, STEPS = 1e-2, (0.9, 0.999), 1e-8, 0.01, 6

# Checkpoint names that transformers 5 maps to another module path when it loads and saves.
STORED_AS = {"embed_out.weight": "lm_head.weight"}


# Mixtral: transformers 5 keeps a layer's experts fused in memory, `mlp.experts.gate_up_proj`
# [E, 2I, H] (expert e's w1 [I, H] over its w3 [I, H]) and `mlp.experts.down_proj` [E, H, I] (w2),
# and its router as `mlp.gate.weight`; save_pretrained writes (and from_pretrained reads) the 4.x
# names below, one tensor per expert.
MIXTRAL_EXPERT = re.compile(r"model\.layers\.(\d+)\.block_sparse_moe\.experts\.(\d+)\.(w[123])\.weight")
MIXTRAL_GATE = re.compile(r"model\.layers\.(\d+)\.block_sparse_moe\.gate\.weight")


def parameter(model, name):
    """The parameter a checkpoint tensor `name` loads into (for a Mixtral expert, the fused one
    that holds it)."""
    m = MIXTRAL_EXPERT.fullmatch(name)
    if m:
        experts = model.get_submodule(f"model.layers.{m[1]}.mlp.experts")
        return experts.down_proj if m[3] == "w2" else experts.gate_up_proj
    m = MIXTRAL_GATE.fullmatch(name)
    if m:
        return model.get_parameter(f"model.layers.{m[1]}.mlp.gate.weight")
    return model.get_parameter(STORED_AS.get(name, name))


def stored_part(model, name, tensor):
    """The part of `tensor` (the parameter `name` loads into, or its gradient) that checkpoint
    tensor `name` holds: all of it, but for a Mixtral expert its slice of the fused tensor."""
    m = MIXTRAL_EXPERT.fullmatch(name)
    if not m:
        return tensor
    expert, half = int(m[2]), tensor.shape[1] // 2
    return {"w1": tensor[expert, :half], "w3": tensor[expert, half:], "w2": tensor[expert]}[m[3]]


def stored_names(out):
    with safe_open(out / "model.safetensors", "pt") as f:
        return sorted(f.keys())


def gradients(model, names):
    """d loss / d tensor for each checkpoint name, f32, zeros where the grad is None."""
    grads = {}
    for name in names:
        p = parameter(model, name)
        g = p.grad if p.grad is not None else torch.zeros_like(p)
        grads[name] = stored_part(model, name, g).detach().float().contiguous()
    return grads


def loss_and_grads(model, inputs, names, train):
    model.train(train)
    model.zero_grad(set_to_none=True)
    out = model(**inputs)
    out.loss.backward()
    result = {"loss": out.loss.detach().float().reshape(()), "logits": out.logits.detach().float().contiguous()}
    result.update(gradients(model, names))
    model.zero_grad(set_to_none=True)
    return result


def compare(a, b, what, atol=0.0):
    assert a.keys() == b.keys(), what
    worst = max((x - b[k]).abs().max().item() for k, x in a.items())
    print(f"  {what}: max |difference| {worst:.3g}")
    assert worst <= atol, f"{what} differ by {worst}"


def check_reload(cls, out, inputs, expected_logits, tied):
    """The saved checkpoint, loaded back, computes the same logits and keeps its ties."""
    reloaded = cls.from_pretrained(out).eval()
    for a, b in tied:
        assert reloaded.get_parameter(a) is reloaded.get_parameter(b), f"{a} not tied to {b} after reload"
    with torch.no_grad():
        logits = reloaded(**{k: v for k, v in inputs.items() if k != "labels"}).logits
    diff = (logits - expected_logits).abs().max().item()
    print(f"  from_pretrained({out.name}) logits: max |difference| {diff:.3g}")
    assert diff <= 1e-6, f"{out.name}: reloaded logits differ by {diff}"
    return reloaded


def report_names(model, names, tied):
    print(f"  model.safetensors holds {len(names)} tensors:")
    for n in names:
        print(f"    {n} {list(stored_part(model, n, parameter(model, n)).shape)}")
    for a, b in tied:
        print(f"  {a}: {'STORED' if a in names else 'not stored'} (tied to {b}: {'stored' if b in names else 'NOT STORED'})")
        assert model.get_parameter(a) is model.get_parameter(b), f"{a} is not tied to {b}"
    param_ids = {id(p) for p in model.parameters()}
    assert {id(parameter(model, n)) for n in names} == param_ids, "stored names do not cover every parameter once"
    stored_numel = sum(stored_part(model, n, parameter(model, n)).numel() for n in names)
    assert stored_numel == sum(p.numel() for p in model.parameters()), "stored names do not cover every parameter once"


def perturb(model, chosen):
    """Adds 0.1 * randn to the parameters `chosen(name)` picks: random init leaves norms at
    (1, 0) and biases at 0, which would test neither."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if chosen(name):
                p.add_(0.1 * torch.randn_like(p))


def gpt2_model():
    torch.manual_seed(0)
    config = GPT2Config(
        vocab_size=101,
        n_positions=24,
        n_embd=35,
        n_layer=2,
        n_head=5,
        activation_function="gelu_new",
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        tie_word_embeddings=True,
    )
    model = GPT2LMHeadModel(config)
    perturb(model, lambda name: ".ln_" in name or "ln_f" in name)
    return model


def causal_batch(vocab, padded_from, unlabelled):
    """Two rows of 9 tokens (seed 1), row 1 right-padded from `padded_from`; labels are the
    inputs, -100 at the padding and at row 0, position `unlabelled`."""
    g = torch.Generator().manual_seed(1)
    input_ids = torch.randint(0, vocab, (2, 9), generator=g)
    attention_mask = torch.ones(2, 9, dtype=torch.int64)
    attention_mask[1, padded_from:] = 0
    labels = input_ids.clone()
    labels[1, padded_from:] = -100
    labels[0, unlabelled] = -100
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


def grad_fixture(out, cls, model, inputs, tied):
    """Saves the model and its loss and gradients on `inputs` (train mode, checked against eval
    mode and against the reloaded checkpoint); returns the stored names."""
    model.save_pretrained(out, safe_serialization=True)
    names = stored_names(out)
    report_names(model, names, tied)
    with safe_open(out / "model.safetensors", "pt") as f:
        for n in names:
            assert torch.equal(f.get_tensor(n), stored_part(model, n, parameter(model, n)).detach()), f"{n} saved differently"
    expected = loss_and_grads(model, inputs, names, train=True)
    compare(expected, loss_and_grads(model, inputs, names, train=False), "train vs eval mode")
    print(f"  loss {expected['loss'].item():.8f}")
    save_file(inputs, out / "inputs_grad.safetensors")
    save_file(expected, out / "expected_grad.safetensors")
    reloaded = check_reload(cls, out, inputs, expected["logits"], tied)
    compare(expected, loss_and_grads(reloaded, inputs, names, train=True), "reloaded checkpoint's loss and gradients")
    return names


def gpt2_grad():
    out = FIXTURES / "gpt2_grad"
    print("gpt2_grad")
    tied = [("lm_head.weight", "transformer.wte.weight")]
    names = grad_fixture(out, GPT2LMHeadModel, gpt2_model(), causal_batch(101, 6, 4), tied)
    adamw(out, names)


def adamw(out, names):
    g = torch.Generator().manual_seed(2)
    input_ids = torch.randint(0, 101, (STEPS, 2, 9), generator=g)
    attention_mask = torch.ones(STEPS, 2, 9, dtype=torch.int64)
    # Real lengths per (step, row): every step has padding somewhere, some rows are full.
    lengths = [(9, 6), (7, 9), (5, 8), (9, 9), (8, 4), (6, 7)]
    for step, row_lengths in enumerate(lengths):
        for row, n in enumerate(row_lengths):
            attention_mask[step, row, n:] = 0
    labels = input_ids.masked_fill(attention_mask == 0, -100)
    save_file(
        {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels},
        out / "adamw_inputs.safetensors",
    )

    model = GPT2LMHeadModel.from_pretrained(out).train()
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=LR, betas=BETAS, eps=EPS, weight_decay=WEIGHT_DECAY, amsgrad=False, foreach=False
    )
    # An independent AdamW in float64, fed the same gradients, checks the formula in the docstring.
    params = {n: model.get_parameter(n) for n in names}
    mine = {n: p.detach().double().clone() for n, p in params.items()}
    m = {n: torch.zeros_like(p) for n, p in mine.items()}
    v = {n: torch.zeros_like(p) for n, p in mine.items()}
    losses = []
    for step in range(STEPS):
        optimizer.zero_grad(set_to_none=True)
        loss = model(
            input_ids=input_ids[step], attention_mask=attention_mask[step], labels=labels[step]
        ).loss
        loss.backward()
        losses.append(loss.item())
        t = step + 1
        for n, p in params.items():
            grad = p.grad.double()
            mine[n].mul_(1 - LR * WEIGHT_DECAY)
            m[n].mul_(BETAS[0]).add_((1 - BETAS[0]) * grad)
            v[n].mul_(BETAS[1]).add_((1 - BETAS[1]) * grad * grad)
            denom = v[n].sqrt() / (1 - BETAS[1] ** t) ** 0.5 + EPS
            mine[n].sub_(LR / (1 - BETAS[0] ** t) * m[n] / denom)
        optimizer.step()
        worst = max((params[n].detach().double() - mine[n]).abs().max().item() for n in names)
        print(f"  AdamW step {t}: loss {losses[-1]:.8f}, float64 re-implementation differs by {worst:.3g}")
        assert worst < 1e-5, f"AdamW step {t} differs from the formula by {worst}"
    final = {f"final.{n}": params[n].detach().float().contiguous() for n in names}
    save_file({"losses": torch.tensor(losses, dtype=torch.float32), **final}, out / "adamw_expected.safetensors")


def bert_mlm():
    out = FIXTURES / "bert_mlm"
    print("bert_mlm")
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
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    model = BertForMaskedLM(config)
    perturb(model, lambda name: "LayerNorm" in name)
    model.save_pretrained(out, safe_serialization=True)
    names = stored_names(out)
    tied = [
        ("cls.predictions.decoder.weight", "bert.embeddings.word_embeddings.weight"),
        ("cls.predictions.decoder.bias", "cls.predictions.bias"),
    ]
    report_names(model, names, tied)

    g = torch.Generator().manual_seed(1)
    original = torch.randint(5, config.vocab_size, (2, 7), generator=g)
    token_type_ids = torch.randint(0, config.type_vocab_size, (2, 7), generator=g)
    attention_mask = torch.ones(2, 7, dtype=torch.int64)
    attention_mask[1, 5:] = 0
    input_ids, labels = masked_lm_batch(original)
    inputs = {"input_ids": input_ids, "token_type_ids": token_type_ids, "attention_mask": attention_mask, "labels": labels}

    expected = loss_and_grads(model, inputs, names, train=True)
    compare(expected, loss_and_grads(model, inputs, names, train=False), "train vs eval mode")
    print(f"  loss {expected['loss'].item():.8f}")
    save_file(inputs, out / "inputs_grad.safetensors")
    save_file(expected, out / "expected_grad.safetensors")
    reloaded = check_reload(BertForMaskedLM, out, inputs, expected["logits"], tied)
    compare(expected, loss_and_grads(reloaded, inputs, names, train=True), "reloaded checkpoint's loss and gradients")


def masked_lm_batch(original, mask_token=3):
    """A masked LM's batch of 2 rows of 7 from `original`: 4 labelled positions a row (none on
    row 1's padding from position 5), most replaced by `mask_token` ([MASK]); one labelled
    position a row keeps its own token, as BERT's 80/10/10 recipe sometimes does. Returns
    (input_ids, labels)."""
    labels = torch.full(original.shape, -100, dtype=torch.int64)
    input_ids = original.clone()
    for row, pos, masked in [(0, 0, True), (0, 2, True), (0, 3, False), (0, 6, True),
                             (1, 1, True), (1, 2, False), (1, 3, True), (1, 4, True)]:
        labels[row, pos] = original[row, pos]
        if masked:
            input_ids[row, pos] = mask_token
    return input_ids, labels


def distilbert_mlm():
    out = FIXTURES / "distilbert_mlm"
    print("distilbert_mlm")
    torch.manual_seed(0)
    config = DistilBertConfig(
        vocab_size=99,
        dim=36,
        n_layers=2,
        n_heads=3,
        hidden_dim=37,
        max_position_embeddings=40,
        activation="gelu",
        dropout=0.0,
        attention_dropout=0.0,
    )
    model = DistilBertForMaskedLM(config)
    perturb(model, lambda name: "LayerNorm" in name or "layer_norm" in name)
    model.save_pretrained(out, safe_serialization=True)
    names = stored_names(out)
    tied = [("vocab_projector.weight", "distilbert.embeddings.word_embeddings.weight")]
    report_names(model, names, tied)

    g = torch.Generator().manual_seed(1)
    original = torch.randint(5, config.vocab_size, (2, 7), generator=g)
    attention_mask = torch.ones(2, 7, dtype=torch.int64)
    attention_mask[1, 5:] = 0
    input_ids, labels = masked_lm_batch(original)
    inputs = {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}

    expected = loss_and_grads(model, inputs, names, train=True)
    compare(expected, loss_and_grads(model, inputs, names, train=False), "train vs eval mode")
    print(f"  loss {expected['loss'].item():.8f}")
    save_file(inputs, out / "inputs_grad.safetensors")
    save_file(expected, out / "expected_grad.safetensors")
    reloaded = check_reload(DistilBertForMaskedLM, out, inputs, expected["logits"], tied)
    compare(expected, loss_and_grads(reloaded, inputs, names, train=True), "reloaded checkpoint's loss and gradients")


def roberta_mlm():
    out = FIXTURES / "roberta_mlm"
    print("roberta_mlm")
    torch.manual_seed(0)
    config = RobertaConfig(
        vocab_size=99,
        hidden_size=36,
        num_hidden_layers=2,
        num_attention_heads=3,
        intermediate_size=37,
        max_position_embeddings=12,  # positions 2..8 for 7 tokens (padding_idx 1), and spare
        type_vocab_size=1,
        pad_token_id=1,
        layer_norm_eps=1e-5,
        hidden_act="gelu",
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    model = RobertaForMaskedLM(config)
    perturb(model, lambda name: "LayerNorm" in name or "layer_norm" in name or name.endswith(".bias"))
    tied = [
        ("lm_head.decoder.weight", "roberta.embeddings.word_embeddings.weight"),
        ("lm_head.decoder.bias", "lm_head.bias"),
    ]
    g = torch.Generator().manual_seed(1)
    original = torch.randint(5, config.vocab_size, (2, 7), generator=g)
    attention_mask = torch.ones(2, 7, dtype=torch.int64)
    attention_mask[1, 5:] = 0
    input_ids, labels = masked_lm_batch(original)
    # RoBERTa numbers positions from the ids (padding_idx + cumsum(id != pad)): the padding must
    # hold the pad id.
    input_ids[1, 5:] = config.pad_token_id
    inputs = {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}
    grad_fixture(out, RobertaForMaskedLM, model, inputs, tied)


def albert_mlm():
    out = FIXTURES / "albert_mlm"
    print("albert_mlm")
    torch.manual_seed(0)
    config = AlbertConfig(
        vocab_size=99,
        embedding_size=16,
        hidden_size=36,
        num_hidden_layers=3,
        num_hidden_groups=1,
        inner_group_num=1,
        num_attention_heads=3,
        intermediate_size=37,
        max_position_embeddings=40,
        type_vocab_size=2,
        layer_norm_eps=1e-12,
        hidden_act="gelu_new",
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    model = AlbertForMaskedLM(config)
    perturb(model, lambda name: "LayerNorm" in name or name.endswith(".bias"))
    tied = [
        ("predictions.decoder.weight", "albert.embeddings.word_embeddings.weight"),
        ("predictions.decoder.bias", "predictions.bias"),
    ]
    g = torch.Generator().manual_seed(1)
    original = torch.randint(5, config.vocab_size, (2, 7), generator=g)
    token_type_ids = torch.randint(0, config.type_vocab_size, (2, 7), generator=g)
    attention_mask = torch.ones(2, 7, dtype=torch.int64)
    attention_mask[1, 5:] = 0
    input_ids, labels = masked_lm_batch(original)
    inputs = {"input_ids": input_ids, "token_type_ids": token_type_ids, "attention_mask": attention_mask, "labels": labels}
    grad_fixture(out, AlbertForMaskedLM, model, inputs, tied)


def llama_grad():
    out = FIXTURES / "llama_grad"
    print("llama_grad")
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=97,
        hidden_size=42,
        intermediate_size=37,
        num_hidden_layers=2,
        num_attention_heads=3,
        num_key_value_heads=1,
        max_position_embeddings=32,
        rms_norm_eps=1e-6,
        rope_theta=500.0,
        tie_word_embeddings=False,
        attention_dropout=0.0,
    )
    model = LlamaForCausalLM(config)
    perturb(model, lambda name: "norm" in name)
    grad_fixture(out, LlamaForCausalLM, model, causal_batch(config.vocab_size, 7, 3), [])


def gpt_neox_grad():
    out = FIXTURES / "gpt_neox_grad"
    print("gpt_neox_grad")
    torch.manual_seed(0)
    config = GPTNeoXConfig(
        vocab_size=97,
        hidden_size=48,
        intermediate_size=37,
        num_hidden_layers=2,
        num_attention_heads=3,
        max_position_embeddings=32,
        rotary_pct=0.25,
        rotary_emb_base=500.0,
        attention_dropout=0.0,
        hidden_dropout=0.0,
    )
    model = GPTNeoXForCausalLM(config)
    perturb(model, lambda name: "layernorm" in name or "layer_norm" in name or name.endswith(".bias"))
    grad_fixture(out, GPTNeoXForCausalLM, model, causal_batch(config.vocab_size, 7, 3), [])


def phi_grad():
    out = FIXTURES / "phi_grad"
    print("phi_grad")
    torch.manual_seed(0)
    config = PhiConfig(
        vocab_size=97,
        hidden_size=48,
        intermediate_size=37,
        num_hidden_layers=2,
        num_attention_heads=3,
        num_key_value_heads=1,
        max_position_embeddings=32,
        rope_theta=500.0,
        partial_rotary_factor=0.4,
        qk_layernorm=True,
        tie_word_embeddings=True,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attention_dropout=0.0,
    )
    model = PhiForCausalLM(config)
    perturb(model, lambda name: "layernorm" in name or name.endswith(".bias"))
    tied = [("lm_head.weight", "model.embed_tokens.weight")]
    grad_fixture(out, PhiForCausalLM, model, causal_batch(config.vocab_size, 7, 3), tied)


def mixtral_grad():
    out = FIXTURES / "mixtral_grad"
    print("mixtral_grad")
    torch.manual_seed(0)
    config = MixtralConfig(
        vocab_size=97,
        hidden_size=32,
        intermediate_size=24,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        num_local_experts=4,
        num_experts_per_tok=2,
        max_position_embeddings=32,
        rms_norm_eps=1e-6,
        rope_theta=500.0,
        sliding_window=None,
        tie_word_embeddings=False,
        output_router_logits=False,
        router_jitter_noise=0.0,
        attention_dropout=0.0,
    )
    model = MixtralForCausalLM(config)
    perturb(model, lambda name: "norm" in name)
    with torch.no_grad():
        # As mixtral_tiny's: a router wider than its initialisation keeps the top-2 choice far
        # from a tie.
        for layer in model.model.layers:
            layer.mlp.gate.weight.normal_(0.0, 0.3)
    inputs = causal_batch(config.vocab_size, 7, 3)

    # The router's margin at every token of the batch (padding included: it is routed too).
    seen = []
    hooks = [layer.mlp.gate.register_forward_hook(lambda m, a, o: seen.append(o[0])) for layer in model.model.layers]
    with torch.no_grad():
        model.eval()(**inputs)
    for h in hooks:
        h.remove()
    k = config.num_experts_per_tok
    for i, router_logits in enumerate(seen):
        top = torch.softmax(router_logits.double(), dim=-1).sort(dim=-1, descending=True).values
        assert top.shape[0] == inputs["input_ids"].numel()
        margin = (top[:, k - 1] - top[:, k]).min().item()
        print(f"  layer {i}: router top-{k} margin {margin:.3g}")
        assert margin > 1e-3, f"layer {i}: router top-{k} margin {margin}"

    grad_fixture(out, MixtralForCausalLM, model, inputs, [])


def t5_grad():
    out = FIXTURES / "t5_grad"
    print("t5_grad")
    torch.manual_seed(0)
    config = T5Config(
        vocab_size=101,
        d_model=20,
        d_kv=6,
        d_ff=28,
        num_heads=3,
        num_layers=3,
        num_decoder_layers=1,
        relative_attention_num_buckets=8,
        relative_attention_max_distance=20,
        dropout_rate=0.0,
        feed_forward_proj="relu",
        # T5 1.0: the head is the shared embedding, applied to the decoder's output * d_model**-0.5
        # (transformers 5 keys the rescaling on the config's scale_decoder_outputs, which it sets
        # from tie_word_embeddings).
        tie_word_embeddings=True,
        decoder_start_token_id=0,
        pad_token_id=0,
    )
    model = T5ForConditionalGeneration(config)
    assert config.scale_decoder_outputs
    perturb(model, lambda name: "layer_norm" in name or "relative_attention_bias" in name)
    tied = [
        ("lm_head.weight", "shared.weight"),
        ("encoder.embed_tokens.weight", "shared.weight"),
        ("decoder.embed_tokens.weight", "shared.weight"),
    ]
    g = torch.Generator().manual_seed(1)
    input_ids = torch.randint(1, config.vocab_size, (2, 7), generator=g)
    attention_mask = torch.ones(2, 7, dtype=torch.int64)
    attention_mask[1, 5:] = 0
    input_ids[1, 5:] = config.pad_token_id
    labels = torch.randint(1, config.vocab_size, (2, 5), generator=g)
    labels[1, 4] = -100
    labels[0, 2] = -100
    # Teacher forcing: the decoder reads the labels shifted right behind the start token (0), -100
    # replaced by the pad id (0); what transformers derives from labels alone, stored explicitly.
    decoder_input_ids = model._shift_right(labels)
    inputs = {
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "decoder_input_ids": decoder_input_ids,
        "labels": labels,
    }
    grad_fixture(out, T5ForConditionalGeneration, model, inputs, tied)


class Float64Throughout:
    """Within it, `.float()` and `.to(torch.float32)` leave a float64 tensor float64: transformers'
    RWKV and Mamba cast parts of their computation to float32 (the WKV recurrence, the selective
    scan, RMSNorm), which would leave a float64 copy of the model partly float32."""

    def __enter__(self):
        self.saved = torch.Tensor.float, torch.Tensor.to
        to_float, to = self.saved

        def keep_float(t, *args, **kwargs):
            return t if t.dtype == torch.float64 else to_float(t, *args, **kwargs)

        def keep_to(t, *args, **kwargs):
            if t.dtype == torch.float64:
                args = tuple(torch.float64 if a is torch.float32 else a for a in args)
                if kwargs.get("dtype") is torch.float32:
                    kwargs["dtype"] = torch.float64
            return to(t, *args, **kwargs)

        torch.Tensor.float, torch.Tensor.to = keep_float, keep_to
        return self

    def __exit__(self, *exc):
        torch.Tensor.float, torch.Tensor.to = self.saved


def float64_check(model, inputs, expected, names, h=1e-6):
    """The stored (float32) gradients against a float64 copy of the model in train mode: its
    autograd gradients (all of them), and central finite differences at 3 entries of every tensor
    (its largest gradient and two random entries)."""
    model64 = copy.deepcopy(model).double().train()
    g = torch.Generator().manual_seed(5)

    def loss():
        value = model64(**inputs).loss
        assert value.dtype == torch.float64
        return value

    with Float64Throughout():
        model64.zero_grad(set_to_none=True)
        value = loss()
        value.backward()
        diff = abs(value.item() - expected["loss"].item())
        print(f"  float64 loss {value.item():.10f} (float32 differs by {diff:.3g})")
        assert diff < 1e-5, f"float64 loss differs by {diff}"
        worst_grad, worst_fd = 0.0, 0.0
        for name in names:
            p = parameter(model64, name)
            grad64 = stored_part(model64, name, p.grad).detach().clone()
            scale = max(grad64.abs().max().item(), 1e-3)
            worst_grad = max(worst_grad, (expected[name].double() - grad64).abs().max().item() / scale)
            flat = grad64.reshape(-1)
            picks = [flat.abs().argmax().item()] + torch.randint(0, flat.numel(), (2,), generator=g).tolist()
            values = stored_part(model64, name, p.data)
            assert values.data_ptr() == stored_part(model64, name, p).data_ptr()
            with torch.no_grad():
                for i in picks:
                    index = torch.unravel_index(torch.tensor(i), values.shape)
                    original = values[index].item()
                    values[index] = original + h
                    plus = loss().item()
                    values[index] = original - h
                    minus = loss().item()
                    values[index] = original
                    fd = (plus - minus) / (2 * h)
                    err = abs(fd - flat[i].item()) / max(abs(flat[i].item()), 1e-2)
                    worst_fd = max(worst_fd, err)
                    assert err < 1e-5, f"{name}[{i}]: finite difference {fd}, autograd {flat[i].item()}"
        print(f"  float32 gradients vs float64: max |difference| / max |gradient| of its tensor {worst_grad:.3g}")
        print(f"  float64 gradients vs central differences at {3 * len(names)} entries: max relative difference {worst_fd:.3g}")
        assert worst_grad < 1e-4, f"float32 gradients differ from float64 by {worst_grad}"
        model64.zero_grad(set_to_none=True)


def rwkv_grad():
    out = FIXTURES / "rwkv_grad"
    print("rwkv_grad")
    torch.manual_seed(0)
    config = RwkvConfig(
        vocab_size=97,
        hidden_size=22,
        attention_hidden_size=18,
        intermediate_size=37,
        num_hidden_layers=3,
        # transformers rescales only in eval mode; 0 makes train and eval mode the same function.
        rescale_every=0,
        layer_norm_epsilon=1e-3,
        context_length=64,
        tie_word_embeddings=False,
        # Eval mode would otherwise keep a state, which RwkvModel sizes by hidden_size alone and
        # so fails when attention_hidden_size differs.
        use_cache=False,
    )
    model = RwkvForCausalLM(config)
    perturb(model, lambda name: True)
    batch = causal_batch(config.vocab_size, 7, 3)
    # RWKV takes no attention mask: every position is a real token, rows 1's last two unlabelled.
    inputs = {"input_ids": batch["input_ids"], "labels": batch["labels"]}
    names = grad_fixture(out, RwkvForCausalLM, model, inputs, [])
    float64_check(model, inputs, load_expected(out), names)


def mamba_grad():
    out = FIXTURES / "mamba_grad"
    print("mamba_grad")
    for package in ["mamba_ssm", "causal_conv1d", "mambapy"]:
        assert importlib.util.find_spec(package) is None, f"uninstall {package}: the fixture needs the torch path"
    torch.manual_seed(0)
    config = MambaConfig(
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
    model = MambaForCausalLM(config)
    # As make_mamba_fixture.py's mamba_tiny: away from init's unit norms, zero biases, unit D and
    # equal A_log rows, with Δ spread around 0.3 and B, C large enough for the state to matter.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.add_(0.1 * torch.randn_like(p))
            elif name.endswith(".A_log") or name.endswith(".D"):
                p.add_(0.3 * torch.randn_like(p))
            elif name.endswith("dt_proj.bias"):
                p.copy_(torch.randn_like(p) - 1.0)
            elif name.endswith("x_proj.weight"):
                p.mul_(3.0)
            elif name.endswith(".bias"):
                p.add_(0.1 * torch.randn_like(p))
    g = torch.Generator().manual_seed(1)
    input_ids = torch.randint(0, config.vocab_size, (2, 9), generator=g)
    attention_mask = torch.ones(2, 9, dtype=torch.int64)
    attention_mask[1, :3] = 0
    labels = input_ids.masked_fill(attention_mask == 0, -100)
    labels[0, 3] = -100
    inputs = {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}
    tied = [("lm_head.weight", "backbone.embeddings.weight")]
    names = grad_fixture(out, MambaForCausalLM, model, inputs, tied)
    float64_check(model, inputs, load_expected(out), names)


def load_expected(out):
    with safe_open(out / "expected_grad.safetensors", "pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}


def electra_grad(name, cls, labels_for):
    """Loss and gradients of an ELECTRA fixture checkpoint (made by make_fixtures.py), in eval
    mode (its config keeps dropout 0.1): `inputs_grad.safetensors` and `expected_grad.safetensors`
    beside it."""
    out = FIXTURES / name
    print(name)
    model = cls.from_pretrained(out)
    names = stored_names(out)
    g = torch.Generator().manual_seed(3)
    input_ids = torch.randint(5, model.config.vocab_size, (2, 7), generator=g)
    token_type_ids = torch.randint(0, model.config.type_vocab_size, (2, 7), generator=g)
    attention_mask = torch.ones(2, 7, dtype=torch.int64)
    attention_mask[1, 5:] = 0
    labels = labels_for(input_ids, attention_mask, g)
    inputs = {"input_ids": input_ids, "token_type_ids": token_type_ids, "attention_mask": attention_mask, "labels": labels}
    expected = loss_and_grads(model, inputs, names, train=False)
    print(f"  loss {expected['loss'].item():.8f}")
    save_file(inputs, out / "inputs_grad.safetensors")
    save_file(expected, out / "expected_grad.safetensors")


def replaced_labels(input_ids, attention_mask, g):
    """ELECTRA's discriminator: 1 where a token was replaced; padding positions are labelled too
    (transformers leaves them out of the loss by the attention mask)."""
    return torch.randint(0, 2, input_ids.shape, generator=g)


def masked_labels(input_ids, attention_mask, g):
    """ELECTRA's generator: the token at 3 positions a row, -100 elsewhere (none on padding)."""
    labels = torch.full_like(input_ids, -100)
    for row, positions in [(0, [1, 4, 6]), (1, [0, 2, 3])]:
        labels[row, positions] = input_ids[row, positions]
    return labels


class ElectraJoint(torch.nn.Module):
    """ELECTRA's pre-training step (lmc's ElectraForJointPreTraining) in transformers' modules: the
    generator `gen` (an ElectraForMaskedLM) runs over the discriminator's own embeddings and
    projection, its head tied to the word embeddings; it fills the masked positions with its
    top token (forced by its bias: see electra_joint), and the discriminator `disc` (an
    ElectraForPreTraining) labels the corrupted input. Its parameters are registered under the
    checkpoint's names: ElectraForPreTraining's, and the generator's under `generator.`."""

    def __init__(self, disc, gen, loss_weight):
        super().__init__()
        self.electra = disc.electra
        self.discriminator_predictions = disc.discriminator_predictions
        self.generator = torch.nn.Module()
        self.generator.encoder = gen.electra.encoder
        self.generator.generator_predictions = gen.generator_predictions
        self.generator.generator_lm_head = gen.generator_lm_head
        self.models = (disc, gen)  # not registered: every parameter is registered above
        self.loss_weight = loss_weight

    def forward(self, input_ids, token_type_ids, attention_mask, labels):
        disc, gen = self.models
        out = gen(input_ids=input_ids, token_type_ids=token_type_ids, attention_mask=attention_mask, labels=labels)
        masked = labels != -100
        sampled = out.logits.detach().argmax(dim=-1)
        corrupted = torch.where(masked, sampled, input_ids)
        original = torch.where(masked, labels, input_ids)
        replaced = (corrupted != original).long()
        # The labels in the logits' dtype: ElectraForPreTraining's loss calls `.float()` on them, and
        # BCEWithLogitsLoss computes in its target's dtype (float32 in float64_check's copy else).
        labels01 = replaced.to(out.logits.dtype)
        d = disc(input_ids=corrupted, token_type_ids=token_type_ids, attention_mask=attention_mask, labels=labels01)
        return types.SimpleNamespace(
            loss=out.loss + self.loss_weight * d.loss,
            logits=d.logits,
            generated=out.logits,
            corrupted=corrupted,
            replaced=replaced,
        )


def electra_classifier():
    """ElectraForSequenceClassification over the electra_discriminator fixture's config (two
    labels, transformers' default), seed 0, LayerNorms and biases perturbed, saved; then its
    loss and gradients as electra_grad makes them, labels [2]."""
    out = FIXTURES / "electra_classifier"
    out.mkdir(exist_ok=True)
    torch.manual_seed(0)
    config = ElectraConfig.from_pretrained(FIXTURES / "electra_discriminator")
    config.architectures = ["ElectraForSequenceClassification"]
    model = ElectraForSequenceClassification(config)
    perturb(model, lambda n: "LayerNorm" in n or n.endswith("bias"))
    model.save_pretrained(out)
    electra_grad("electra_classifier", ElectraForSequenceClassification, class_labels)


def class_labels(input_ids, attention_mask, g):
    """A sequence classifier's: one class per row."""
    return torch.tensor([1, 0])


def electra_joint():
    out = FIXTURES / "electra_joint"
    print("electra_joint")
    out.mkdir(exist_ok=True)
    torch.manual_seed(0)
    common = dict(
        vocab_size=53,
        embedding_size=12,
        hidden_size=16,
        num_attention_heads=2,
        intermediate_size=19,
        max_position_embeddings=12,
        type_vocab_size=2,
        layer_norm_eps=1e-12,
        hidden_act="gelu",
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    config = ElectraConfig(
        num_hidden_layers=2,
        generator_num_hidden_layers=1,
        discriminator_loss_weight=50.0,
        architectures=["ElectraForJointPreTraining"],
        **common,
    )
    disc = ElectraForPreTraining(config)
    gen = ElectraForMaskedLM(ElectraConfig(num_hidden_layers=config.generator_num_hidden_layers, **common))
    # The generator's embeddings and projection are the discriminator's; its head stays tied.
    gen.electra.embeddings = disc.electra.embeddings
    gen.electra.embeddings_project = disc.electra.embeddings_project
    gen.generator_lm_head.weight = disc.electra.embeddings.word_embeddings.weight
    joint = ElectraJoint(disc, gen, config.discriminator_loss_weight)
    params = {id(p) for m in (disc, gen) for p in m.parameters()}
    assert params == {id(p) for p in joint.parameters()}, "the joint model registers every parameter once"
    perturb(joint, lambda name: "LayerNorm" in name or name.endswith(".bias"))

    g = torch.Generator().manual_seed(1)
    original = torch.randint(5, config.vocab_size, (2, 7), generator=g)
    token_type_ids = torch.randint(0, config.type_vocab_size, (2, 7), generator=g)
    attention_mask = torch.ones(2, 7, dtype=torch.int64)
    attention_mask[1, 5:] = 0
    labels = torch.full_like(original, -100)
    input_ids = original.clone()
    # (row, position, what the input holds there): [MASK] (3), the token itself, another token.
    for row, pos, shown in [(0, 1, 3), (0, 4, 3), (0, 6, None), (1, 0, 3), (1, 2, 3), (1, 3, 7)]:
        labels[row, pos] = original[row, pos]
        if shown is not None:
            input_ids[row, pos] = shown
    # The generator always samples k0, the original token at row 1, position 2 (so one masked
    # position keeps its token and is not "replaced") and at no other labelled position.
    k0 = original[1, 2].item()
    assert [(r, t) for r, t in (labels == k0).nonzero().tolist()] == [(1, 2)], "k0 labels one position"
    with torch.no_grad():
        gen.generator_lm_head.bias[k0] = 40.0
    inputs = {"input_ids": input_ids, "token_type_ids": token_type_ids, "attention_mask": attention_mask, "labels": labels}

    joint.eval()
    with torch.no_grad():
        result = joint(**inputs)
    # lmc draws u strictly inside (2^-25, 1 - 2^-25): its Gumbel noise -log(-log u) lies in
    # [-2.86, 17.33], so a lead of more than 20.2 makes the sample the top token whatever u is.
    top = result.generated.topk(2, dim=-1).values
    lead = (top[..., 0] - top[..., 1]).min().item()
    print(f"  k0 = {k0}: generator's lead over the runner-up at every position >= {lead:.3f}")
    assert lead > 30.0 and (result.generated.argmax(dim=-1) == k0).all()
    print(f"  corrupted input {result.corrupted.tolist()}, replaced {result.replaced.tolist()}")

    config.save_pretrained(out)
    names = sorted(n for n, _ in joint.named_parameters())
    weights = {n: joint.get_parameter(n).detach().contiguous() for n in names}
    save_file(weights, out / "model.safetensors", metadata={"format": "pt"})
    print(f"  model.safetensors holds {len(names)} tensors")
    expected = loss_and_grads(joint, inputs, names, train=False)
    compare(expected, loss_and_grads(joint, inputs, names, train=True), "train vs eval mode")
    print(f"  loss {expected['loss'].item():.8f}")
    save_file(inputs, out / "inputs_grad.safetensors")
    save_file(expected, out / "expected_grad.safetensors")

    # The checkpoint loads into transformers' ElectraForPreTraining (the generator's tensors left
    # unused), which gives the same discriminator logits on the corrupted input.
    reloaded = ElectraForPreTraining.from_pretrained(out).eval()
    with torch.no_grad():
        logits = reloaded(input_ids=result.corrupted, token_type_ids=token_type_ids, attention_mask=attention_mask).logits
    diff = (logits - expected["logits"]).abs().max().item()
    print(f"  ElectraForPreTraining.from_pretrained logits: max |difference| {diff:.3g}")
    assert diff <= 1e-6
    float64_check(joint, inputs, expected, names)


FIXTURE_MAKERS = {
    "gpt2_grad": lambda: gpt2_grad(),
    "bert_mlm": lambda: bert_mlm(),
    "distilbert_mlm": lambda: distilbert_mlm(),
    "roberta_mlm": lambda: roberta_mlm(),
    "albert_mlm": lambda: albert_mlm(),
    "llama_grad": lambda: llama_grad(),
    "gpt_neox_grad": lambda: gpt_neox_grad(),
    "phi_grad": lambda: phi_grad(),
    "mixtral_grad": lambda: mixtral_grad(),
    "rwkv_grad": lambda: rwkv_grad(),
    "mamba_grad": lambda: mamba_grad(),
    "t5_grad": lambda: t5_grad(),
    "electra_discriminator": lambda: electra_grad("electra_discriminator", ElectraForPreTraining, replaced_labels),
    "electra_generator": lambda: electra_grad("electra_generator", ElectraForMaskedLM, masked_labels),
    "electra_joint": lambda: electra_joint(),
    "electra_classifier": lambda: electra_classifier(),
}


def main():
    print(f"torch {torch.__version__}, transformers {transformers.__version__}")
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)
    chosen = sys.argv[1:] or list(FIXTURE_MAKERS)
    for name in chosen:
        FIXTURE_MAKERS[name]()
    for name in chosen:
        for f in sorted((FIXTURES / name).iterdir()):
            print(f"  {name}/{f.name}: {f.stat().st_size / 1024:.1f} KiB")


if __name__ == "__main__":
    main()
