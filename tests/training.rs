//! Training: the backward pass derived from the forward, compiled and run (`lmc grad`), against
//! PyTorch's `loss.backward()` on the fixtures of tests/reference/make_grad_fixtures.py, and the
//! loss a forward returns when it is given labels (`lmc run`).

use lmc_tests::*;
use std::path::Path;

/// `lmc grad` on a fixture: the loss within 1e-5 and every gradient within 1e-3 of the largest
/// element of PyTorch's, per tensor; one gradient per checkpoint tensor, named as stored.
fn grad_matches_torch(spec: &str, fixture: &str) {
    let inputs = root().join(format!("tests/fixtures/{fixture}/inputs_grad.safetensors"));
    grad_matches_torch_on(spec, fixture, &inputs);
}

/// As [`grad_matches_torch`], on other inputs that must give the same loss and gradients.
fn grad_matches_torch_on(spec: &str, fixture: &str, inputs: &Path) {
    let dir = format!("tests/fixtures/{fixture}");
    let out = scratch(&format!("grad_{fixture}")).join("grads.safetensors");
    let r = lmc(&[
        "grad",
        spec,
        "--weights",
        &dir,
        "--inputs",
        inputs.to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
    ]);
    assert!(r.status.success(), "{spec}: {}", String::from_utf8_lossy(&r.stderr));
    let got = read_f32_tensors(&out);
    let want: Vec<_> = read_f32_tensors(&root().join(&dir).join("expected_grad.safetensors"))
        .into_iter()
        .filter(|(n, _, _)| n != "logits")
        .collect();
    let stored: Vec<String> = read_f32_tensors(&root().join(&dir).join("model.safetensors"))
        .into_iter()
        .map(|(n, _, _)| n)
        .collect();
    assert_eq!(got.len(), stored.len() + 1, "{spec}: loss and one gradient per stored tensor");
    for ((gn, gs, gv), (wn, ws, wv)) in got.iter().zip(&want) {
        assert_eq!((gn, gs), (wn, ws), "{spec}: gradient name and shape");
        let scale = wv.iter().fold(0.0f32, |m, x| m.max(x.abs()));
        let bound = if gn == "loss" { 1e-5 * scale } else { 1e-3 * scale + 1e-6 };
        let err = max_abs_diff(gv, wv);
        assert!(err <= bound, "{spec}: {gn}: max |lmc - torch| {err:e} > {bound:e}");
    }
}

#[test]
fn gpt2_gradients_match_torch() {
    grad_matches_torch("models/gpt2.model:GPT2LMHeadModel", "gpt2_grad");
}

#[test]
fn llama_gradients_match_torch() {
    grad_matches_torch("models/llama.model:LlamaForCausalLM", "llama_grad");
}

#[test]
fn gpt_neox_gradients_match_torch() {
    grad_matches_torch("models/gpt_neox.model", "gpt_neox_grad");
}

#[test]
fn phi_gradients_match_torch() {
    grad_matches_torch("models/phi.model", "phi_grad");
}

#[test]
fn electra_gradients_match_torch() {
    grad_matches_torch("models/electra.model:ElectraForPreTraining", "electra_discriminator");
    grad_matches_torch("models/electra.model:ElectraForMaskedLM", "electra_generator");
}

#[test]
fn bert_masked_lm_gradients_match_torch() {
    grad_matches_torch("models/bert.model:BertForMaskedLM", "bert_mlm");
}

#[test]
fn distilbert_masked_lm_gradients_match_torch() {
    grad_matches_torch("models/distilbert.model:DistilBertForMaskedLM", "distilbert_mlm");
}

/// RoBERTa's positions come from a running count of its tokens (a `cumsum` of the ids, which
/// carries no gradient); the head is tied to the word embeddings.
#[test]
fn roberta_masked_lm_gradients_match_torch() {
    grad_matches_torch("models/roberta.model:RobertaForMaskedLM", "roberta_mlm");
}

/// Mixtral's experts and router: the gradient reaches the chosen experts through their routing
/// weights (the choice itself has none), and the router through the renormalised softmax.
#[test]
fn mixtral_gradients_match_torch() {
    grad_matches_torch("models/llama.model:MixtralForCausalLM", "mixtral_grad");
}

/// T5 with a deep encoder and a shallow decoder (3 and 1 layers), padded source, -100 labels:
/// the learned relative-position biases get their gradient through the attention scores (each
/// stack's one table, summed over every layer that adds it), the tied embedding through the
/// encoder, the decoder and the rescaled head.
#[test]
fn t5_gradients_match_torch() {
    grad_matches_torch("models/t5.model", "t5_grad");
}

/// Without `decoder_input_ids`, T5 reads its labels shifted right behind
/// decoder_start_token_id, -100 read as the pad token (transformers' `_shift_right`, which made
/// the fixture's decoder inputs): the same loss and gradients.
#[test]
fn t5_makes_its_decoder_inputs_from_the_labels() {
    let all = read_host_tensors(&root().join("tests/fixtures/t5_grad/inputs_grad.safetensors"));
    let labels = all.iter().find(|t| t.name == "labels").unwrap().as_i64().unwrap();
    assert!(labels.contains(&-100), "the fixture's labels ignore some positions");
    let kept: Vec<_> = all.iter().filter(|t| t.name != "decoder_input_ids").collect();
    assert_eq!(kept.len() + 1, all.len());
    let inputs = scratch("t5_shift_right").join("inputs.safetensors");
    let table: Vec<(&str, lmc_abi::DType, &[usize], &[u8])> = kept
        .iter()
        .map(|t| (t.name.as_str(), t.dtype, t.shape.as_slice(), t.bytes()))
        .collect();
    lmc_runtime::write_safetensors(&inputs, &table).unwrap();
    grad_matches_torch_on("models/t5.model", "t5_grad", &inputs);
}

/// ALBERT applies one layer at every depth: its gradient is the sum over the passes.
#[test]
fn albert_masked_lm_gradients_match_torch() {
    grad_matches_torch("models/albert.model:AlbertForMaskedLM", "albert_mlm");
}

/// Given labels, the forward also returns the loss transformers computes; without them, only
/// the logits.
#[test]
fn run_returns_the_loss_when_given_labels() {
    let dir = "tests/fixtures/gpt2_grad";
    let out = scratch("run_loss").join("out.safetensors");
    let got = run_outputs(
        "models/gpt2.model:GPT2LMHeadModel",
        dir,
        &format!("{dir}/inputs_grad.safetensors"),
        &out,
        &[],
    );
    let want = read_f32_tensors(&root().join(dir).join("expected_grad.safetensors"));
    let names: Vec<&str> = got.iter().map(|(n, _, _)| n.as_str()).collect();
    assert_eq!(names, ["logits", "loss"]);
    for (name, _, values) in &got {
        let (_, _, expected) = want.iter().find(|(n, _, _)| n == name).unwrap();
        assert!(max_abs_diff(values, expected) <= 1e-4, "{name}");
    }
    let got = run_outputs(
        "models/gpt2.model:GPT2LMHeadModel",
        "tests/fixtures/gpt2_tiny",
        "tests/fixtures/gpt2_tiny/inputs.safetensors",
        &out,
        &[],
    );
    assert_eq!(got.iter().map(|(n, _, _)| n.as_str()).collect::<Vec<_>>(), ["logits"]);
}

/// What has no backward yet is a diagnostic at its place in the model file, never a crash.
#[test]
fn what_cannot_be_differentiated_is_reported_where_it_is() {
    // An index function applying `sin` to a parameter-dependent value it reads.
    let model = scratch("grad_e0400").join("shift.model");
    std::fs::write(
        &model,
        "config C { v = 11  d = 4 }\n\nmodel M(c: C) {\n  param table: f32[c.v, c.d]\n\n  forward(ids: i64[B, T]) -> (loss: f32[]) {\n    h = gather(table, ids)\n    shifted = tabulate(B, T, c.d, (b, t, i) => if t == 0 { 0.0 } else { sin(h[b, t - 1, i]) })\n    return sum(sum(sum(shifted, axis = -1), axis = -1), axis = -1)\n  }\n}\n",
    )
    .unwrap();
    let r = lmc(&["emit", "--stage", "ir", "--grad", model.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&r.stderr);
    expect_error(
        r.status.code().unwrap_or(-1),
        &stderr,
        &["error[E0400]", "`sin` is not differentiated", "shift.model:8:15"],
    );
    // A model without a loss says so.
    lmc_fails(
        &["emit", "--stage", "ir", "--grad", "models/bert.model:BertModel"],
        &["no `loss` output"],
    );
}

/// `lmc emit --grad` prints the derived graph: the loss, then a gradient per parameter, with
/// attention's backward from its row statistics.
#[test]
fn emit_prints_the_backward_pass() {
    let r = lmc(&["emit", "--stage", "ir", "--grad", "models/gpt2.model", "--set", "n_layer=1"]);
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    let ir = String::from_utf8_lossy(&r.stdout);
    check_lines(
        "gpt2 backward",
        &ir,
        &[
            "input 3 labels: i64[B, T]",
            "attention_lse",
            "attention_grad query",
            "attention_grad key",
            "attention_grad value",
            "matmul_tn",
            "scatter_add",
            "output loss = ",
            "output transformer.wte.weight = ",
        ],
    );
    assert!(!ir.contains("dropout_seed"), "`lmc grad`'s backward drops nothing");
    // The training step: GPT-2's dropouts (embeddings, attention, residuals) drawn from the
    // step's seed, the attention's inside its kernels, forward and backward.
    let r = lmc(&[
        "emit",
        "--stage",
        "ir",
        "--grad",
        "--dropout",
        "models/gpt2.model",
        "--set",
        "n_layer=1",
    ]);
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    let ir = String::from_utf8_lossy(&r.stdout);
    check_lines(
        "gpt2 training step",
        &ir,
        &["input 4 dropout_seed: i64[] = zeros", "hash", "output loss = "],
    );
    let attentions: Vec<&str> = ir
        .lines()
        .filter(|l| l.contains(" = attention ") || l.contains(" = attention_grad "))
        .collect();
    assert_eq!(attentions.len(), 4, "{ir}");
    assert!(attentions.iter().all(|l| l.contains(", dropout {")), "{attentions:?}");
}

/// RWKV and Mamba: the backward runs their `scan`s in reverse time (the WKV's stable form with
/// its running maximum, the selective scan with its input-dependent step) and turns their
/// shifted reads around (the token shift, the causal convolution); Mamba's batch is
/// left-padded. The forward's loss matches transformers' too.
#[test]
fn recurrent_models_gradients_match_torch() {
    for (spec, fixture) in [("models/rwkv.model", "rwkv_grad"), ("models/mamba.model", "mamba_grad")] {
        assert_loss_matches_fixture(spec, &format!("tests/fixtures/{fixture}"), 1e-5);
        grad_matches_torch(spec, fixture);
    }
}
