//! Recurrent models (`scan`) against their references: Mamba's and RWKV's logits against
//! transformers on tiny random checkpoints, an LSTM encoder and a linear-attention LM against
//! torch; causality, and bad checkpoints and inputs ending in exit 1 with the tensor or limit
//! named.

use lmc_abi::DType;
use lmc_tests::*;
use std::path::{Path, PathBuf};

const MAMBA: &str = "models/mamba.model:MambaForCausalLM";
/// No projection biases, a convolution bias, kernel 4, the head tied to the embedding.
const MAMBA_TINY: &str = "tests/fixtures/mamba_tiny";
/// Projection biases, no convolution bias, kernel 3, an untied head.
const MAMBA_UNTIED: &str = "tests/fixtures/mamba_untied";

type Tensors = Vec<(String, DType, Vec<usize>, Vec<u8>)>;

/// Every tensor of a safetensors file, raw, in file order.
fn read_raw(path: &Path) -> Tensors {
    let file = lmc_runtime::safetensors::SafeTensorsFile::open(path).unwrap_or_else(|e| panic!("{e}"));
    file.tensors()
        .map(|i| {
            let t = file.get(&i.name).unwrap().to_host().unwrap();
            (i.name.clone(), t.dtype, t.shape.clone(), t.bytes().to_vec())
        })
        .collect()
}

fn write_raw(path: &Path, tensors: &Tensors) {
    let refs: Vec<(&str, DType, &[usize], &[u8])> = tensors
        .iter()
        .map(|(n, d, s, b)| (n.as_str(), *d, s.as_slice(), b.as_slice()))
        .collect();
    lmc_runtime::safetensors::write_safetensors(path, &refs).unwrap();
}

/// A copy of a fixture checkpoint in a scratch directory, with `edit` applied to its tensors.
fn edited_checkpoint(name: &str, fixture: &str, edit: impl Fn(&mut Tensors)) -> PathBuf {
    let dir = scratch(name);
    std::fs::copy(root().join(fixture).join("config.json"), dir.join("config.json")).unwrap();
    let mut tensors = read_raw(&root().join(fixture).join("model.safetensors"));
    edit(&mut tensors);
    write_raw(&dir.join("model.safetensors"), &tensors);
    dir
}

/// `lmc run` of `spec`: its exit code and stderr.
fn run(spec: &str, weights: &Path, inputs: &Path, out: &Path) -> (i32, String) {
    let r = lmc(&[
        "run",
        spec,
        "--weights",
        weights.to_str().unwrap(),
        "--inputs",
        inputs.to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
    ]);
    (r.status.code().unwrap_or(-1), String::from_utf8_lossy(&r.stderr).into_owned())
}

/// Mamba (MambaForCausalLM: causal depthwise convolution, the selective scan, RMSNorm) reproduces
/// transformers' logits on a left-padded batch, with a tied head and an untied one.
#[test]
fn mamba_matches_hugging_face() {
    for ckpt in [MAMBA_TINY, MAMBA_UNTIED] {
        assert_matches_fixture(MAMBA, ckpt, 1e-4);
    }
}

/// Each position sees only its past: the first two tokens alone (fewer than the convolution's
/// kernel) give the logits the whole sequence gives there.
#[test]
fn mamba_is_causal() {
    let dir = scratch("mamba_prefix");
    let inputs = read_raw(&root().join(MAMBA_TINY).join("inputs.safetensors"));
    let (keep, full_t) = (2usize, inputs[0].2[1]);
    // [B, T] int64 tensors cut to [B, keep].
    let prefix: Tensors = inputs
        .iter()
        .map(|(n, d, s, b)| {
            assert_eq!((*d, s.len()), (DType::I64, 2), "{n}");
            let bytes = b.chunks(full_t * 8).flat_map(|row| row[..keep * 8].to_vec()).collect();
            (n.clone(), *d, vec![s[0], keep], bytes)
        })
        .collect();
    let prefix_inputs = dir.join("inputs.safetensors");
    write_raw(&prefix_inputs, &prefix);
    let got = run_outputs(
        MAMBA,
        MAMBA_TINY,
        prefix_inputs.to_str().unwrap(),
        &dir.join("out.safetensors"),
        &[],
    )
    .remove(0);
    let (_, shape, want) = read_f32_tensors(&root().join(MAMBA_TINY).join("expected.safetensors")).remove(0);
    let vocab = shape[2];
    assert_eq!(got.1, vec![shape[0], keep, vocab]);
    let want: Vec<f32> = want.chunks(full_t * vocab).flat_map(|row| row[..keep * vocab].to_vec()).collect();
    let err = max_abs_diff(&got.2, &want);
    assert!(err <= 1e-4, "the first {keep} positions differ by {err}");
}

#[test]
fn mamba_missing_tensor_is_named() {
    let dir = edited_checkpoint("mamba_missing", MAMBA_TINY, |t| {
        t.retain(|(n, ..)| n != "backbone.layers.1.mixer.A_log")
    });
    let inputs = root().join(MAMBA_TINY).join("inputs.safetensors");
    let (code, err) = run(MAMBA, &dir, &inputs, &dir.join("out.safetensors"));
    expect_error(code, &err, &["backbone.layers.1.mixer.A_log"]);
}

/// A convolution weight stored [channels, kernel, 1] instead of [channels, 1, kernel].
#[test]
fn mamba_wrong_shape_is_named() {
    let dir = edited_checkpoint("mamba_wrong_shape", MAMBA_TINY, |t| {
        let e = t.iter_mut().find(|(n, ..)| n == "backbone.layers.0.mixer.conv1d.weight").unwrap();
        e.2 = vec![e.2[0], e.2[2], e.2[1]];
    });
    let inputs = root().join(MAMBA_TINY).join("inputs.safetensors");
    let (code, err) = run(MAMBA, &dir, &inputs, &dir.join("out.safetensors"));
    expect_error(code, &err, &["backbone.layers.0.mixer.conv1d.weight", "[42, 4, 1]", "[42, 1, 4]"]);
}

/// A scratch copy of a fixture's checkpoint whose config.json has `from` replaced by `to`.
fn edited_config(name: &str, fixture: &str, from: &str, to: &str) -> PathBuf {
    let dir = scratch(name);
    std::fs::copy(root().join(fixture).join("model.safetensors"), dir.join("model.safetensors")).unwrap();
    let config = std::fs::read_to_string(root().join(fixture).join("config.json")).unwrap();
    assert!(config.contains(from), "{fixture}/config.json has no `{from}`");
    std::fs::write(dir.join("config.json"), config.replace(from, to)).unwrap();
    dir
}

/// The untied fixture's checkpoint has no convolution bias; its config says it has one.
#[test]
fn mamba_config_and_checkpoint_disagree() {
    let dir = edited_config(
        "mamba_conv_bias",
        MAMBA_UNTIED,
        "\"use_conv_bias\": false",
        "\"use_conv_bias\": true",
    );
    let inputs = root().join(MAMBA_UNTIED).join("inputs.safetensors");
    let (code, err) = run(MAMBA, &dir, &inputs, &dir.join("out.safetensors"));
    expect_error(code, &err, &["backbone.layers.0.mixer.conv1d.bias"]);
}

/// A config.json whose `time_step_rank` is still "auto" is refused, naming the key.
#[test]
fn mamba_unresolved_time_step_rank_is_named() {
    let dir = edited_config(
        "mamba_auto_rank",
        MAMBA_TINY,
        "\"time_step_rank\": 3",
        "\"time_step_rank\": \"auto\"",
    );
    let inputs = root().join(MAMBA_TINY).join("inputs.safetensors");
    let (code, err) = run(MAMBA, &dir, &inputs, &dir.join("out.safetensors"));
    expect_error(code, &err, &["time_step_rank", "\"auto\" is not an integer"]);
}

/// A token id equal to the vocabulary size is refused before anything runs, naming the input,
/// the value and the embedding table that bounds it.
#[test]
fn mamba_token_id_out_of_range() {
    let dir = scratch("mamba_token_range");
    let mut inputs = read_raw(&root().join(MAMBA_TINY).join("inputs.safetensors"));
    let ids = inputs.iter_mut().find(|(n, ..)| n == "input_ids").unwrap();
    ids.3[16..24].copy_from_slice(&97i64.to_le_bytes());
    let path = dir.join("inputs.safetensors");
    write_raw(&path, &inputs);
    let (code, err) = run(MAMBA, &root().join(MAMBA_TINY), &path, &dir.join("out.safetensors"));
    expect_error(code, &err, &["input_ids", "[0, 2]", "97", "0..97", "backbone.embeddings.weight"]);
}

/// The model file is in `lmc fmt`'s canonical layout and checks without warnings.
#[test]
fn mamba_model_is_formatted_and_checks() {
    let r = lmc(&["fmt", "--check", "models/mamba.model"]);
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    let r = lmc(&["check", "models/mamba.model"]);
    let stderr = String::from_utf8_lossy(&r.stderr);
    assert!(r.status.success(), "{stderr}");
    assert!(!stderr.contains("warning"), "{stderr}");
}

/// RWKV-4 (RwkvForCausalLM: token shift, the WKV recurrence as a `scan`, channel mixing, and
/// inference rescaling inside the stack) reproduces transformers' logits. Rescaling matters at
/// this tolerance: without it (`rescale_every = 0`) the logits move by about 2e-3.
#[test]
fn rwkv_matches_hugging_face() {
    let ckpt = "tests/fixtures/rwkv_tiny";
    assert_matches_fixture("models/rwkv.model:RwkvForCausalLM", ckpt, 1e-4);
    let dir = scratch("rwkv_unscaled");
    let out = dir.join("outputs.safetensors");
    let inputs = format!("{ckpt}/inputs.safetensors");
    let got = run_outputs(
        "models/rwkv.model:RwkvForCausalLM",
        ckpt,
        &inputs,
        &out,
        &["--set", "rescale_every=0"],
    );
    let want = read_f32_tensors(&root().join(format!("{ckpt}/expected.safetensors")));
    assert!(
        max_abs_diff(&got[0].2, &want[0].2) > 1e-4,
        "rescaling is not exercised by the fixture"
    );
}

/// Two models that show `scan` is general: an ELMo-style two-layer bidirectional LSTM
/// (torch.nn.LSTM's cell; both layers' states) and a causal linear-attention transformer (whose
/// reference computes attention in parallel form, with cumulative sums) reproduce their torch
/// references.
#[test]
fn scan_models_match_torch_references() {
    assert_matches_fixture("models/lstm.model:ElmoLstmEncoder", "tests/fixtures/lstm_tiny", 1e-4);
    assert_matches_fixture(
        "models/linear_transformer.model:LinearTransformerLM",
        "tests/fixtures/linear_transformer_tiny",
        1e-4,
    );
}
