//! Checkpoints as users have them: half-precision (bf16, f16) copies of the fixtures run, widened
//! to f32 when bound, and give the f32 checkpoint's outputs within what the rounding of the
//! weights allows; a checkpoint that mixes floating-point dtypes is refused, naming a tensor of
//! each.

use lmc_tests::{
    assert_loss_matches_fixture, assert_matches_fixture, bf16_bits, lmc, lmc_run, max_abs_diff, read_f32_tensors, root, run_outputs,
    scratch, write_half, write_raw,
};
use std::path::{Path, PathBuf};

/// A safetensors file's f32 tensors: (name, shape, values), in file order.
type Tensors = Vec<(String, Vec<usize>, Vec<f32>)>;

/// The f32 tensors of a fixture's `model.safetensors`.
fn fixture_weights(fixture: &str) -> Tensors {
    read_f32_tensors(&root().join("tests/fixtures").join(fixture).join("model.safetensors"))
}

/// f32 → IEEE binary16 bits, rounding to nearest, ties to even (for the values of a small
/// model's weights: normal and subnormal f16 range, no overflow).
fn f16_bits(x: f32) -> u16 {
    let sign = ((x.to_bits() >> 16) & 0x8000) as u16;
    let a = x.abs();
    assert!(a < 65504.0, "{x} overflows f16");
    // Scale so that one unit in the last place of the f16 result is 1.0, then round.
    let exponent = if a < 6.103_515_6e-5 { -14 } else { a.log2().floor() as i32 };
    let ulp = 2f64.powi(exponent - 10);
    let units = (f64::from(a) / ulp).round_ties_even() as u32;
    let bits = if exponent == -14 && units < 1024 {
        units
    } else {
        // A carry may bump the exponent (units == 2048): the formula below absorbs it.
        (((exponent + 15) as u32) << 10) + (units - 1024)
    };
    sign | bits as u16
}

/// A checkpoint directory: `fixture`'s config.json beside the given weights.
fn checkpoint_dir(name: &str, fixture: &str) -> PathBuf {
    let dir = scratch(name);
    std::fs::copy(
        root().join("tests/fixtures").join(fixture).join("config.json"),
        dir.join("config.json"),
    )
    .unwrap();
    dir
}

/// `lmc run` on a checkpoint directory; the outputs and what it printed on stderr. The outputs
/// go to a scratch directory of their own, never beside a committed fixture.
fn run(spec: &str, weights: &Path, inputs: &Path) -> (Tensors, String) {
    static RUNS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let k = RUNS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let out = scratch(&format!("checkpoint_run_{k}")).join("out.safetensors");
    let r = lmc_run(spec, weights.to_str().unwrap(), inputs.to_str().unwrap(), &out, &[]);
    let stderr = String::from_utf8_lossy(&r.stderr).into_owned();
    assert!(r.status.success(), "{spec} on {}: {stderr}", weights.display());
    (read_f32_tensors(&out), stderr)
}

/// Largest difference between two runs' outputs, and the largest magnitude of the reference.
fn distance(got: &Tensors, want: &Tensors) -> (f32, f32) {
    assert_eq!(got.len(), want.len());
    let mut worst = (0.0f32, 0.0f32);
    for ((gn, gs, gv), (wn, ws, wv)) in got.iter().zip(want) {
        assert_eq!((gn, gs), (wn, ws));
        worst.0 = worst.0.max(max_abs_diff(gv, wv));
        worst.1 = worst.1.max(wv.iter().fold(0.0f32, |m, v| m.max(v.abs())));
    }
    worst
}

/// (fixture, model, inputs, transformers' outputs)
const CASES: [(&str, &str, &str, &str); 2] = [
    ("llama_tiny", "models/llama.model:LlamaForCausalLM", "inputs", "expected"),
    ("bert_tiny", "models/bert.model:BertModel", "inputs_model", "expected_model"),
];

/// The error rounding the weights allows, relative to the outputs' largest magnitude: eight
/// units of the format's rounding (2^-9 for bf16's 8 significant bits, 2^-12 for f16's 11),
/// for the rounding errors of a few layers that add up.
const BF16_ALLOWED: f32 = 8.0 / 512.0;
const F16_ALLOWED: f32 = 8.0 / 4096.0;

#[test]
fn half_precision_checkpoints_run_widened_to_f32() {
    for (fixture, spec, inputs, expected) in CASES {
        let weights = fixture_weights(fixture);
        let inputs = root().join("tests/fixtures").join(fixture).join(format!("{inputs}.safetensors"));
        let reference = read_f32_tensors(&root().join("tests/fixtures").join(fixture).join(format!("{expected}.safetensors")));

        // bf16, and the same rounded values stored as f32: widening is exact, so the two runs
        // compute the same numbers, bit for bit.
        let bf16 = checkpoint_dir(&format!("bf16_{fixture}"), fixture);
        let halves: Vec<_> = weights
            .iter()
            .map(|(n, s, v)| (n.clone(), s.clone(), v.iter().map(|&x| bf16_bits(x)).collect::<Vec<_>>()))
            .collect();
        write_half(&bf16.join("model.safetensors"), "BF16", &halves);
        let rounded = checkpoint_dir(&format!("bf16_as_f32_{fixture}"), fixture);
        let as_f32: Vec<_> = halves
            .iter()
            .map(|(n, s, h)| {
                (
                    n.clone(),
                    "F32".to_string(),
                    s.clone(),
                    h.iter().flat_map(|&b| f32::from_bits(u32::from(b) << 16).to_le_bytes()).collect(),
                )
            })
            .collect();
        write_raw(&rounded.join("model.safetensors"), &as_f32);
        let (from_bf16, stderr) = run(spec, &bf16, &inputs);
        assert!(stderr.contains("in BF16, widened to f32 when bound"), "{stderr}");
        let (from_rounded, stderr) = run(spec, &rounded, &inputs);
        assert!(!stderr.contains("widened"), "{stderr}");
        for ((name, _, a), (_, _, b)) in from_bf16.iter().zip(&from_rounded) {
            let same = a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits());
            assert!(same, "{spec}: {name} from BF16 weights differs from the same values stored as F32");
        }
        let (err, scale) = distance(&from_bf16, &reference);
        eprintln!("{spec}: bf16 weights give transformers' f32 outputs within {err:.2e} (outputs up to {scale:.2})");
        assert!(err <= BF16_ALLOWED * scale, "{spec}: bf16 weights are {err} from the f32 outputs");

        // f16: three more bits of mantissa, so closer still.
        let f16 = checkpoint_dir(&format!("f16_{fixture}"), fixture);
        let halves: Vec<_> = weights
            .iter()
            .map(|(n, s, v)| (n.clone(), s.clone(), v.iter().map(|&x| f16_bits(x)).collect::<Vec<_>>()))
            .collect();
        write_half(&f16.join("model.safetensors"), "F16", &halves);
        let (from_f16, stderr) = run(spec, &f16, &inputs);
        assert!(stderr.contains("in F16, widened to f32 when bound"), "{stderr}");
        let (err16, _) = distance(&from_f16, &reference);
        eprintln!("{spec}: f16 weights give transformers' f32 outputs within {err16:.2e}");
        assert!(
            err16 <= F16_ALLOWED * scale && err16 < err,
            "{spec}: f16 weights are {err16} from the f32 outputs (bf16: {err})"
        );
    }
}

#[test]
fn f16_rounding_of_the_test_matches_the_format() {
    // The test's own f32 → f16 rounding, against values whose f16 bits are known.
    for (x, bits) in [
        (1.0f32, 0x3c00u16),
        (-2.0, 0xc000),
        (0.333_333_34, 0x3555),
        (65504.0 - 1.0, 0x7bff),
        (6.0e-8, 0x0001),
        (1e-4, 0x068e),
    ] {
        assert_eq!(f16_bits(x), bits, "{x}");
    }
    assert_eq!(bf16_bits(1.0 + 1.0 / 256.0), 0x3f80, "a tie rounds to even");
    assert_eq!(bf16_bits(1.0 + 3.0 / 256.0), 0x3f82, "a tie rounds to even");
}

#[test]
fn a_checkpoint_mixing_float_dtypes_is_refused() {
    let weights = fixture_weights("gpt2_tiny");
    let dir = checkpoint_dir("mixed_dtypes", "gpt2_tiny");
    let tensors: Vec<_> = weights
        .iter()
        .enumerate()
        .map(|(k, (n, s, v))| {
            if k == 0 {
                (
                    n.clone(),
                    "BF16".to_string(),
                    s.clone(),
                    v.iter().flat_map(|&x| bf16_bits(x).to_le_bytes()).collect(),
                )
            } else {
                (
                    n.clone(),
                    "F32".to_string(),
                    s.clone(),
                    v.iter().flat_map(|x| x.to_le_bytes()).collect(),
                )
            }
        })
        .collect();
    write_raw(&dir.join("model.safetensors"), &tensors);
    let out = dir.join("out.safetensors");
    let r = lmc_run(
        "models/gpt2.model:GPT2LMHeadModel",
        dir.to_str().unwrap(),
        "tests/fixtures/gpt2_tiny/inputs.safetensors",
        &out,
        &[],
    );
    let stderr = String::from_utf8_lossy(&r.stderr);
    assert_eq!(r.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains(&format!("BF16 (e.g. \"{}\")", weights[0].0)), "{stderr}");
    assert!(stderr.contains("F32 (e.g. \""), "{stderr}");
    assert!(!out.exists());
}

#[test]
fn bench_reports_the_weights_dtype() {
    let dir = checkpoint_dir("bench_bf16", "gpt2_tiny");
    let halves: Vec<_> = fixture_weights("gpt2_tiny")
        .iter()
        .map(|(n, s, v)| (n.clone(), s.clone(), v.iter().map(|&x| bf16_bits(x)).collect::<Vec<_>>()))
        .collect();
    write_half(&dir.join("model.safetensors"), "BF16", &halves);
    let r = lmc(&[
        "bench",
        "models/gpt2.model:GPT2LMHeadModel",
        "--weights",
        dir.to_str().unwrap(),
        "--lengths",
        "8",
        "--runs",
        "2",
        "--warmup",
        "0",
        "--json",
        "-",
    ]);
    let stderr = String::from_utf8_lossy(&r.stderr);
    assert!(r.status.success(), "{stderr}");
    assert!(stderr.contains("weights      BF16, widened to f32 when bound"), "{stderr}");
    let report: serde_json::Value = serde_json::from_slice(&r.stdout).unwrap();
    assert_eq!(report["weights_dtype"], "BF16");
}

/// `lmc run` with the given integer inputs (taken from a fixture's inputs file), on the fixture's
/// checkpoint; the outputs.
fn run_with_inputs(spec: &str, fixture: &str, inputs_file: &str, keep: &[&str], name: &str) -> Tensors {
    let dir = scratch(name);
    let file = lmc_runtime::SafeTensorsFile::open(&root().join("tests/fixtures").join(fixture).join(inputs_file)).unwrap();
    let tensors: Vec<_> = keep.iter().map(|n| file.get(n).unwrap().to_host().unwrap()).collect();
    let table: Vec<_> = tensors
        .iter()
        .map(|t| (t.name.as_str(), t.dtype, t.shape.as_slice(), t.bytes()))
        .collect();
    let inputs = dir.join("inputs.safetensors");
    lmc_runtime::write_safetensors(&inputs, &table).unwrap();
    let weights = root().join("tests/fixtures").join(fixture);
    run(spec, &weights, &inputs).0
}

/// A model's optional inputs default as Hugging Face's do: a causal LM or BERT given
/// `input_ids` alone computes what it computes with an all-ones `attention_mask` (and BERT with
/// all-zero `token_type_ids`), bit for bit.
#[test]
fn inputs_left_out_take_huggingface_defaults() {
    for (spec, fixture, inputs, defaulted) in [
        (
            "models/gpt2.model:GPT2LMHeadModel",
            "gpt2_tiny",
            "inputs.safetensors",
            &["attention_mask"][..],
        ),
        (
            "models/llama.model:LlamaForCausalLM",
            "llama_tiny",
            "inputs.safetensors",
            &["attention_mask"][..],
        ),
        (
            "models/bert.model:BertModel",
            "bert_tiny",
            "inputs_model.safetensors",
            &["attention_mask", "token_type_ids"][..],
        ),
    ] {
        let alone = run_with_inputs(spec, fixture, inputs, &["input_ids"], &format!("alone_{fixture}"));
        // The same ids with the defaults written out.
        let dir = scratch(&format!("explicit_{fixture}"));
        let file = lmc_runtime::SafeTensorsFile::open(&root().join("tests/fixtures").join(fixture).join(inputs)).unwrap();
        let ids = file.get("input_ids").unwrap().to_host().unwrap();
        let count = ids.shape.iter().product::<usize>();
        let ones: Vec<u8> = std::iter::repeat_n(1i64, count).flat_map(|v| v.to_le_bytes()).collect();
        let zeros = vec![0u8; count * 8];
        let mut table = vec![("input_ids", ids.dtype, ids.shape.as_slice(), ids.bytes())];
        for name in defaulted {
            let bytes = if *name == "attention_mask" { &ones } else { &zeros };
            table.push((name, lmc_abi::DType::I64, ids.shape.as_slice(), bytes));
        }
        let explicit = dir.join("inputs.safetensors");
        lmc_runtime::write_safetensors(&explicit, &table).unwrap();
        let (spelled_out, _) = run(spec, &root().join("tests/fixtures").join(fixture), &explicit);
        assert_eq!(alone.len(), spelled_out.len());
        for ((name, shape, a), (_, _, b)) in alone.iter().zip(&spelled_out) {
            let same = a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits());
            assert!(
                same,
                "{spec}: {name} {shape:?} with {defaulted:?} left out differs from it written out"
            );
        }
    }
    // An input without a default is still required, and the message says which.
    let dir = scratch("no_ids");
    let inputs = dir.join("inputs.safetensors");
    let mask: Vec<u8> = std::iter::repeat_n(1i64, 4).flat_map(|v| v.to_le_bytes()).collect();
    lmc_runtime::write_safetensors(&inputs, &[("attention_mask", lmc_abi::DType::I64, &[1, 4], &mask)]).unwrap();
    let r = lmc_run(
        "models/gpt2.model:GPT2LMHeadModel",
        "tests/fixtures/gpt2_tiny",
        inputs.to_str().unwrap(),
        &dir.join("out.safetensors"),
        &[],
    );
    let stderr = String::from_utf8_lossy(&r.stderr);
    assert_eq!(r.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("missing input \"input_ids\" (i64 [B, T])"), "{stderr}");
}

/// A checkpoint of another architecture is refused by its `model_type`, before any tensor is
/// compared: a BERT file given a GPT-2 checkpoint says so, at the config's `for`.
#[test]
fn a_checkpoint_of_another_model_type_is_refused() {
    let dir = scratch("wrong_model_type");
    // RoBERTa's config is BERT's, and its positions are not: BERT's embeddings refuse it.
    let r = lmc_run(
        "models/bert.model:BertModel",
        "tests/fixtures/roberta_tiny",
        "tests/fixtures/roberta_tiny/inputs.safetensors",
        &dir.join("out.safetensors"),
        &[],
    );
    let stderr = String::from_utf8_lossy(&r.stderr);
    assert!(
        r.status.code() == Some(1) && stderr.contains("run it with models/roberta.model"),
        "{stderr}"
    );
    let r = lmc_run(
        "models/bert.model:BertModel",
        "tests/fixtures/gpt2_tiny",
        "tests/fixtures/bert_tiny/inputs_model.safetensors",
        &dir.join("out.safetensors"),
        &[],
    );
    let stderr = String::from_utf8_lossy(&r.stderr);
    assert_eq!(r.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("error[E0108]: the checkpoint's config.json is for model_type \"gpt2\", but config `BertConfig` reads \"bert\" or \"electra\" or \"roberta\" checkpoints"),
        "{stderr}"
    );
    assert!(stderr.contains("--> models/bert.model:10:"), "{stderr}");
    // Variants and other models of the same file read the same checkpoints.
    let r = lmc(&[
        "emit",
        "--stage",
        "ir",
        "models/electra.model:ElectraForPreTraining",
        "--config",
        "tests/fixtures/electra_discriminator",
    ]);
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
}

/// A config.json key that the model does not read but computes as if it had a value (its
/// config's `assume "key" = value`) is a warning when the checkpoint sets another value, and
/// an error under `--strict`; an unchanged checkpoint gets neither.
#[test]
fn a_key_the_model_assumes_otherwise_is_reported() {
    let dir = checkpoint_dir("rope_scaling", "llama_tiny");
    std::fs::copy(
        root().join("tests/fixtures/llama_tiny/model.safetensors"),
        dir.join("model.safetensors"),
    )
    .unwrap();
    let mut config: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
    config["rope_scaling"] = serde_json::json!({ "type": "linear", "factor": 2.0 });
    std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
    let spec = "models/llama.model:LlamaForCausalLM";
    let inputs = "tests/fixtures/llama_tiny/inputs.safetensors";
    let out = scratch("rope_scaling_out").join("out.safetensors");

    let r = lmc_run(spec, dir.to_str().unwrap(), inputs, &out, &[]);
    let stderr = String::from_utf8_lossy(&r.stderr);
    assert!(r.status.success(), "{stderr}");
    assert!(
        stderr.contains("warning[W0101]: config.json sets `rope_scaling` to {\"factor\":2.0,\"type\":\"linear\"}, which config `LlamaConfig` does not read: the model computes as if it were null"),
        "{stderr}"
    );

    let r = lmc_run(spec, dir.to_str().unwrap(), inputs, &out, &["--strict"]);
    let stderr = String::from_utf8_lossy(&r.stderr);
    assert_eq!(r.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("error[E0109]: config.json sets `rope_scaling`"), "{stderr}");

    let r = lmc_run(spec, "tests/fixtures/llama_tiny", inputs, &out, &["--strict"]);
    let stderr = String::from_utf8_lossy(&r.stderr);
    assert!(r.status.success() && !stderr.contains("W0101"), "{stderr}");
}

/// The LLaMA file reads its relatives' checkpoints as transformers does: Qwen2 (biased query,
/// key and value projections, the head tied to the embedding), Mistral (a sliding window of 4
/// keys, shorter than the 9-token inputs, so a model without it is off by 0.19), Gemma (gains
/// of 1 + weight, scaled embeddings, tanh GELU, a head width of its own, a tied head) and
/// Mixtral (4 experts, 2 per token; routing with 3 experts per token is off).
#[test]
fn llama_relatives_match_transformers() {
    for (name, fixture) in [
        ("LlamaForCausalLM", "tests/fixtures/qwen2_tiny"),
        ("Qwen2ForCausalLM", "tests/fixtures/qwen2_tiny"),
        ("LlamaForCausalLM", "tests/fixtures/mistral_tiny"),
        ("MistralForCausalLM", "tests/fixtures/mistral_tiny"),
        ("LlamaForCausalLM", "tests/fixtures/gemma_tiny"),
        ("GemmaForCausalLM", "tests/fixtures/gemma_tiny"),
        ("MixtralForCausalLM", "tests/fixtures/mixtral_tiny"),
    ] {
        assert_matches_fixture(&format!("models/llama.model:{name}"), fixture, 1e-4);
    }
    let dir = scratch("mistral_without_window");
    let got = run_outputs(
        "models/llama.model:LlamaForCausalLM",
        "tests/fixtures/mistral_tiny",
        "tests/fixtures/mistral_tiny/inputs.safetensors",
        &dir.join("out.safetensors"),
        &["--set", "sliding_window=0"],
    );
    let want = read_f32_tensors(&root().join("tests/fixtures/mistral_tiny/expected.safetensors"));
    assert!(
        max_abs_diff(&got[0].2, &want[0].2) > 1e-2,
        "the fixture's window changes its logits"
    );
    let want = read_f32_tensors(&root().join("tests/fixtures/mixtral_tiny/expected.safetensors"));
    let got = run_outputs(
        "models/llama.model:MixtralForCausalLM",
        "tests/fixtures/mixtral_tiny",
        "tests/fixtures/mixtral_tiny/inputs.safetensors",
        &dir.join("mixtral_3.safetensors"),
        &["--set", "num_experts_per_tok=3"],
    );
    // Its logits are small (at most 0.39): a third expert moves them by 3.8e-3, 40 times the
    // tolerance of the match above.
    assert!(
        max_abs_diff(&got[0].2, &want[0].2) > 1e-3,
        "the fixture's routing changes its logits"
    );
    // Each of Gemma's differences matters on its fixture: without it the logits are off.
    let want = read_f32_tensors(&root().join("tests/fixtures/gemma_tiny/expected.safetensors"));
    for (k, set) in ["norm_offset=0.0", "scale_embeddings=false", "mlp_act=relu"].iter().enumerate() {
        let got = run_outputs(
            "models/llama.model:GemmaForCausalLM",
            "tests/fixtures/gemma_tiny",
            "tests/fixtures/gemma_tiny/inputs.safetensors",
            &dir.join(format!("gemma_{k}.safetensors")),
            &["--set", set],
        );
        assert!(
            max_abs_diff(&got[0].2, &want[0].2) > 1e-2,
            "--set {set} changes the fixture's logits"
        );
    }
}

/// GPT-NeoX (Pythia) against transformers: parallel residuals with a quarter of each head
/// rotated, and sequential ones with half of it; each of the two matters on its fixture.
#[test]
fn gpt_neox_matches_transformers() {
    for fixture in ["tests/fixtures/gpt_neox_tiny", "tests/fixtures/gpt_neox_sequential"] {
        assert_matches_fixture("models/gpt_neox.model", fixture, 1e-4);
    }
    let dir = scratch("gpt_neox_settings");
    let want = read_f32_tensors(&root().join("tests/fixtures/gpt_neox_tiny/expected.safetensors"));
    for (k, set) in ["use_parallel_residual=false", "partial_rotary_factor=1.0"].iter().enumerate() {
        let got = run_outputs(
            "models/gpt_neox.model",
            "tests/fixtures/gpt_neox_tiny",
            "tests/fixtures/gpt_neox_tiny/inputs.safetensors",
            &dir.join(format!("neox_{k}.safetensors")),
            &["--set", set],
        );
        // Past the fixture's tolerance (its random attention is nearly uniform, so turning more
        // of each head moves the logits by only 4.7e-4; the residuals by 4.1e-2).
        assert!(
            max_abs_diff(&got[0].2, &want[0].2) > 2e-4,
            "--set {set} changes the fixture's logits"
        );
    }
    // transformers 5 keeps RoPE scaling in `rope_parameters`, which the file does not implement.
    let scaled = scratch("gpt_neox_scaled_rope");
    for f in ["model.safetensors", "inputs.safetensors"] {
        std::fs::copy(root().join("tests/fixtures/gpt_neox_tiny").join(f), scaled.join(f)).unwrap();
    }
    let config = std::fs::read_to_string(root().join("tests/fixtures/gpt_neox_tiny/config.json")).unwrap();
    let mut config: serde_json::Value = serde_json::from_str(&config).unwrap();
    config["rope_parameters"]["rope_type"] = "linear".into();
    config["rope_parameters"]["factor"] = 2.0.into();
    std::fs::write(scaled.join("config.json"), config.to_string()).unwrap();
    let (weights, inputs) = (scaled.to_str().unwrap(), scaled.join("inputs.safetensors"));
    let out = scaled.join("out.safetensors");
    let r = lmc_run("models/gpt_neox.model", weights, inputs.to_str().unwrap(), &out, &[]);
    let stderr = String::from_utf8_lossy(&r.stderr);
    assert!(
        r.status.success() && stderr.contains("warning[W0101]: config.json sets `rope_parameters.rope_type` to \"linear\""),
        "{stderr}"
    );
    let r = lmc_run("models/gpt_neox.model", weights, inputs.to_str().unwrap(), &out, &["--strict"]);
    assert_eq!(r.status.code(), Some(1), "{}", String::from_utf8_lossy(&r.stderr));
}

/// Phi against transformers: one LayerNorm read by attention and feed-forward, a key/value
/// head shared by three query heads, query/key LayerNorms and half of each head rotated; and
/// without the LayerNorms, 6 of 16 features rotated (int(16 · 0.4)) and a tied head with a bias
/// of its own.
#[test]
fn phi_matches_transformers() {
    for fixture in ["tests/fixtures/phi_tiny", "tests/fixtures/phi_tied"] {
        assert_matches_fixture("models/phi.model", fixture, 1e-4);
    }
    let dir = scratch("phi_settings");
    let want = read_f32_tensors(&root().join("tests/fixtures/phi_tiny/expected.safetensors"));
    for (k, set) in ["qk_layernorm=false", "partial_rotary_factor=0.25"].iter().enumerate() {
        let got = run_outputs(
            "models/phi.model",
            "tests/fixtures/phi_tiny",
            "tests/fixtures/phi_tiny/inputs.safetensors",
            &dir.join(format!("phi_{k}.safetensors")),
            &["--set", set],
        );
        assert!(
            max_abs_diff(&got[0].2, &want[0].2) > 2e-4,
            "--set {set} changes the fixture's logits"
        );
    }
}

/// DistilBERT's two models against transformers: the encoder's hidden states on a padded batch,
/// and the masked LM's logits and loss (its head tied to the word embeddings, which the
/// checkpoint stores once).
#[test]
fn distilbert_matches_transformers() {
    let worst = assert_matches_fixture("models/distilbert.model:DistilBertModel", "tests/fixtures/distilbert_tiny", 1e-5);
    assert!(worst > 0.0, "compared something");
    let dir = "tests/fixtures/distilbert_mlm";
    assert_loss_matches_fixture("models/distilbert.model:DistilBertForMaskedLM", dir, 1e-5);
    // Untied, the head needs a weight of its own, which this checkpoint does not have.
    let r = lmc_run(
        "models/distilbert.model:DistilBertForMaskedLM",
        dir,
        &format!("{dir}/inputs_grad.safetensors"),
        &scratch("distilbert_untied").join("out.safetensors"),
        &["--set", "tie_word_embeddings=false"],
    );
    let stderr = String::from_utf8_lossy(&r.stderr);
    assert!(!r.status.success() && stderr.contains("vocab_projector.weight"), "{stderr}");
}

/// RoBERTa against transformers: positions counted from the padding id over the tokens (right-
/// and left-padded rows, which give a row's tokens the same positions), and the masked LM's
/// logits and loss with its tied head.
#[test]
fn roberta_matches_transformers() {
    let spec = "models/roberta.model:RobertaModel";
    let dir = "tests/fixtures/roberta_tiny";
    assert!(assert_matches_fixture(spec, dir, 1e-5) > 0.0, "compared something");
    let got = run_outputs(
        spec,
        dir,
        &format!("{dir}/inputs_left.safetensors"),
        &scratch("roberta_left").join("out.safetensors"),
        &[],
    );
    let want = read_f32_tensors(&root().join(dir).join("expected_left.safetensors"));
    assert!(
        max_abs_diff(&got[0].2, &want[0].2) <= 1e-5,
        "left padding: {}",
        max_abs_diff(&got[0].2, &want[0].2)
    );
    let dir = "tests/fixtures/roberta_mlm";
    assert_loss_matches_fixture("models/roberta.model:RobertaForMaskedLM", dir, 1e-5);
}

/// ALBERT against transformers: narrow embeddings mapped up, one layer shared by three passes,
/// and two groups of two layers over four passes (pass i runs group int(i / 2)).
#[test]
fn albert_matches_transformers() {
    for dir in ["tests/fixtures/albert_tiny", "tests/fixtures/albert_groups"] {
        assert!(
            assert_matches_fixture("models/albert.model:AlbertModel", dir, 1e-5) > 0.0,
            "{dir}: compared something"
        );
    }
}
