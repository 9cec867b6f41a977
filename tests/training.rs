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
    // The sequence classifier: the first token's state through its head, one label per sequence.
    grad_matches_torch("models/electra.model:ElectraForSequenceClassification", "electra_classifier");
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

/// `uniform` gives numbers strictly inside (0, 1) that look uniform, a stream per call, a new
/// draw for each `dropout_seed` and the same draw for the same one; `argmax` takes the first of
/// equal elements, and Gumbel-max sampling with it picks each class as often as softmax says
/// (each count within 5 standard deviations of its expectation over 20,000 draws).
#[test]
fn uniform_and_argmax_sample_a_softmax() {
    let dir = scratch("uniform_and_argmax");
    let weights = dir.join("none.safetensors");
    lmc_runtime::write_safetensors(&weights, &[]).unwrap();
    let (rows, logits) = (20_000usize, [0.0f32, 1.0, 2.0, 2.0, -1.0]);
    let classes = logits.len();
    let values: Vec<f32> = (0..rows).flat_map(|_| logits).collect();
    let run = |seed: Option<i64>, name: &str| {
        let inputs = dir.join(format!("{name}.safetensors"));
        let mut table = vec![("logits", lmc_abi::DType::F32, vec![rows, classes], bytes_of_f32(&values))];
        if let Some(s) = seed {
            table.push(("dropout_seed", lmc_abi::DType::I64, vec![], s.to_le_bytes().to_vec()));
        }
        let entries: Vec<_> = table.iter().map(|(n, d, s, b)| (*n, *d, s.as_slice(), b.as_slice())).collect();
        lmc_runtime::write_safetensors(&inputs, &entries).unwrap();
        let out = dir.join(format!("{name}_out.safetensors"));
        let r = lmc_run(
            "tests/corpus/random.model:Draws",
            weights.to_str().unwrap(),
            inputs.to_str().unwrap(),
            &out,
            &[],
        );
        assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
        read_host_tensors(&out)
    };
    let unseeded = run(None, "unseeded");
    let u = unseeded[0].as_f32().unwrap();
    assert!(u.iter().all(|&x| x > 0.0 && x < 1.0), "uniform leaves (0, 1)");
    let mean = u.iter().map(|&x| f64::from(x)).sum::<f64>() / u.len() as f64;
    assert!((mean - 0.5).abs() < 0.01, "mean of {} draws {mean}", u.len());
    let below_tenth = u.iter().filter(|&&x| x < 0.1).count() as f64 / u.len() as f64;
    assert!((below_tenth - 0.1).abs() < 0.01, "fraction below 0.1: {below_tenth}");
    assert_ne!(u, unseeded[1].as_f32().unwrap(), "two calls draw two streams");
    let zero = run(Some(0), "seed0");
    assert_eq!(u, zero[0].as_f32().unwrap(), "an input not given is seed 0");
    let other = run(Some(7), "seed7");
    let same = u.iter().zip(other[0].as_f32().unwrap()).filter(|(a, b)| a == b).count();
    assert!(same < u.len() / 1000, "another seed draws anew ({same} equal)");
    let best = unseeded[3].as_i64().unwrap();
    assert_eq!(unseeded[3].shape, vec![rows, 1]);
    assert!(best.iter().all(|&b| b == 2), "argmax takes the first of equal elements");
    let total: f64 = logits.iter().map(|&l| f64::from(l).exp()).sum();
    for draws in [&unseeded[2], &other[2]] {
        let sample = draws.as_i64().unwrap();
        for (class, &l) in logits.iter().enumerate() {
            let p = f64::from(l).exp() / total;
            let expected = p * rows as f64;
            let count = sample.iter().filter(|&&s| s == class as i64).count() as f64;
            let sd = (rows as f64 * p * (1.0 - p)).sqrt();
            assert!(
                (count - expected).abs() < 5.0 * sd,
                "class {class}: {count} draws, expected {expected:.0} ± {sd:.0}"
            );
        }
    }
}

fn bytes_of_f32(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// ELECTRA's joint pre-training step, generator and discriminator in one model: the fixture's
/// generator gives one token a bias of +40 in its head, more than the widest gap Gumbel noise
/// can close, so the sample is that token at every masked position whatever `uniform` draws
/// (one masked position holds it already and stays "original"). Torch can then compute the step
/// exactly: the loss and every gradient (generator, discriminator and the shared embeddings,
/// sampling and corruption included) equal PyTorch's, and so do the discriminator's logits on
/// the corrupted input, which ElectraForPreTraining also gives on the same checkpoint.
#[test]
fn electra_joint_pretraining_matches_torch() {
    let (spec, dir) = ("models/electra.model:ElectraForJointPreTraining", "tests/fixtures/electra_joint");
    grad_matches_torch(spec, "electra_joint");
    let scratch_dir = scratch("electra_joint_run");
    let want = read_f32_tensors(&root().join(dir).join("expected_grad.safetensors"));
    let expected = |name: &str| &want.iter().find(|(n, _, _)| n == name).unwrap().2;
    let out = scratch_dir.join("out.safetensors");
    let got = run_outputs(spec, dir, &format!("{dir}/inputs_grad.safetensors"), &out, &[]);
    assert_eq!(got.iter().map(|(n, _, _)| n.as_str()).collect::<Vec<_>>(), ["logits", "loss"]);
    for (name, _, values) in &got {
        let bound = if name == "loss" { 1e-5 * expected(name)[0].abs() } else { 1e-4 };
        let err = max_abs_diff(values, expected(name));
        assert!(err <= bound, "{name}: max |lmc - torch| {err:e} > {bound:e}");
    }
    // The checkpoint is ElectraForPreTraining's with the generator beside it: that model, on the
    // corrupted batch (the forced token at every labelled position), gives the same logits.
    let weights = read_f32_tensors(&root().join(dir).join("model.safetensors"));
    let bias = &weights.iter().find(|(n, _, _)| n == "generator.generator_lm_head.bias").unwrap().2;
    let forced = (0..bias.len()).max_by(|&a, &b| bias[a].total_cmp(&bias[b])).unwrap() as i64;
    let all = read_host_tensors(&root().join(dir).join("inputs_grad.safetensors"));
    let find = |name: &str| all.iter().find(|t| t.name == name).unwrap();
    let labels = find("labels").as_i64().unwrap();
    let corrupted: Vec<u8> = find("input_ids")
        .as_i64()
        .unwrap()
        .iter()
        .zip(labels)
        .flat_map(|(&id, &label)| if label == -100 { id } else { forced }.to_le_bytes())
        .collect();
    let kept: Vec<_> = all.iter().filter(|t| t.name != "labels").collect();
    let table: Vec<(&str, lmc_abi::DType, &[usize], &[u8])> = kept
        .iter()
        .map(|t| {
            let bytes = if t.name == "input_ids" { &corrupted[..] } else { t.bytes() };
            (t.name.as_str(), t.dtype, t.shape.as_slice(), bytes)
        })
        .collect();
    let inputs = scratch_dir.join("corrupted.safetensors");
    lmc_runtime::write_safetensors(&inputs, &table).unwrap();
    let discriminator = "models/electra.model:ElectraForPreTraining";
    let got = run_outputs(discriminator, dir, inputs.to_str().unwrap(), &out, &[]);
    assert_eq!(got.len(), 1, "without labels, the logits alone");
    let err = max_abs_diff(&got[0].2, expected("logits"));
    assert!(err <= 1e-4, "the discriminator's logits: max |lmc - torch| {err:e}");
}
