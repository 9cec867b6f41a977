//! Weight matrices stored as bf16 or int8 (`--set weights=...`): the kernels compute with exactly
//! the values the format stores (an f32 model given those rounded values agrees to the last
//! bits, the forward and greedy decoding), the format visibly changes the numbers (it is not
//! ignored), a matrix int8 cannot hold stays f32 and says so, and what cannot be done is an error.

use lmc_abi::{Manifest, WeightFormat};
use lmc_core::ir::Graph;
use lmc_runtime::{HostTensor, LoadedModel, WeightsSource};
use lmc_tests::{bind_jit_with, lmc_fails, max_abs_diff, read_host_tensors, root, scratch, write_raw};
use std::path::Path;

const FIXTURE: &str = "tests/fixtures/llama_tiny";

/// The tiny LLaMA fixture's config widened so that its projections' rows are whole int8 blocks
/// (64 = 2 × 32), except the MLP's down projection (rows of 80), which int8 leaves f32.
fn llama(weights: WeightFormat) -> Graph {
    let file = "models/llama.model";
    let text = std::fs::read_to_string(root().join(file)).unwrap();
    let program = lmc_core::load_source(file, &text, Some(&root().join("models"))).unwrap_or_else(|f| panic!("{:?}", f.diagnostics));
    let config = std::fs::read_to_string(root().join(FIXTURE).join("config.json")).unwrap();
    let mut overrides = lmc_core::ConfigOverrides::default().with_checkpoint_json(&config).unwrap();
    for (key, value) in [
        ("hidden_size", "64"),
        ("num_attention_heads", "4"),
        ("intermediate_size", "80"),
        ("weights", weights.name()),
    ] {
        overrides.set.push((key.into(), value.into()));
    }
    match lmc_core::check_model(&program, Some("LlamaForCausalLM"), &overrides) {
        Ok(c) => c.graph,
        Err(e) => panic!("{e:?}"),
    }
}

/// Seeded random weights for `manifest`, every tensor f32: (name, shape, values).
fn random(manifest: &Manifest) -> Vec<(String, Vec<usize>, Vec<f32>)> {
    let file = lmc_runtime::random_weights(manifest, 5).unwrap_or_else(|e| panic!("{e}"));
    manifest
        .params
        .iter()
        .map(|spec| {
            let t = file.get(&spec.name).unwrap().to_host().unwrap();
            (spec.name.clone(), t.shape.clone(), t.as_f32().unwrap().to_vec())
        })
        .collect()
}

fn write(path: &Path, tensors: &[(String, Vec<usize>, Vec<f32>)]) {
    let raw: Vec<_> = tensors
        .iter()
        .map(|(name, shape, values)| {
            (
                name.clone(),
                "F32".to_string(),
                shape.clone(),
                values.iter().flat_map(|v| v.to_le_bytes()).collect(),
            )
        })
        .collect();
    write_raw(path, &raw);
}

/// `g` compiled and bound to the weights in `path`.
fn bound(g: &Graph, path: &Path) -> LoadedModel {
    bind_jit_with(g, lmc_codegen::jit(g), |_| WeightsSource::Path(path.to_path_buf()))
}

fn logits(model: &LoadedModel, inputs: &[HostTensor]) -> Vec<f32> {
    model.run(inputs).unwrap_or_else(|e| panic!("{e}"))[0].as_f32().unwrap().to_vec()
}

/// For each format: the model stored that way, the f32 model given the values the format
/// stores, and the f32 model given the original weights, on the same inputs.
#[test]
fn stored_formats_compute_with_exactly_the_values_they_store() {
    let dir = scratch("weight_formats");
    let inputs = read_host_tensors(&root().join(FIXTURE).join("inputs.safetensors"));
    let f32_graph = llama(WeightFormat::F32);
    let original = dir.join("original.safetensors");
    let manifest = lmc_codegen::manifest(&f32_graph, &lmc_codegen::Target::host());
    let weights = random(&manifest);
    write(&original, &weights);
    let plain = bound(&f32_graph, &original);
    let want_plain = logits(&plain, &inputs);
    let scale = want_plain.iter().fold(1e-3f32, |m, v| m.max(v.abs()));
    for format in [WeightFormat::Bf16, WeightFormat::Int8] {
        let g = llama(format);
        let target = lmc_codegen::Target::host();
        let m = lmc_codegen::manifest(&g, &target);
        // What each parameter is stored as: the format, except int8's rows of 80.
        let mut stored = 0;
        let rounded: Vec<_> = weights
            .iter()
            .map(|(name, shape, values)| {
                let spec = m.params.iter().find(|p| &p.name == name).unwrap();
                let format_of = spec.packing.map_or(WeightFormat::F32, |p| p.format);
                if name.ends_with("down_proj.weight") {
                    let want = if format == WeightFormat::Int8 { WeightFormat::F32 } else { format };
                    assert_eq!(format_of, want, "{name} as {}", format.name());
                }
                if format_of == format {
                    stored += 1;
                }
                (name.clone(), shape.clone(), format_of.round_trip(values, *shape.last().unwrap()))
            })
            .collect();
        assert!(stored >= 10, "{} stores only {stored} matrices", format.name());
        let rounded_path = dir.join(format!("{}.safetensors", format.name()));
        write(&rounded_path, &rounded);
        let quantized = bound(&g, &original);
        let storage = quantized.weight_storage().unwrap();
        assert!(
            storage.starts_with(&format!("{} for {stored} weight matrices", format.name())),
            "{storage}"
        );
        assert_eq!(storage.contains("kept f32"), format == WeightFormat::Int8, "{storage}");
        let got = logits(&quantized, &inputs);
        let want = logits(&bound(&f32_graph, &rounded_path), &inputs);
        let exact = max_abs_diff(&got, &want);
        assert!(
            exact <= 1e-6 * scale,
            "{}: {exact} from the f32 model given the stored values (logits up to {scale})",
            format.name()
        );
        // The format is applied: the rounding shows against the original weights.
        let rounding = max_abs_diff(&got, &want_plain);
        assert!(
            rounding > 1e-5 * scale && rounding < 0.05 * scale,
            "{}: {rounding} from the unrounded model (logits up to {scale})",
            format.name()
        );
        // The decode step reads the same packed weights: greedy decoding agrees token for token.
        let step = |g: &Graph| lmc_core::decode::derive_decode(g, 16).unwrap_or_else(|e| panic!("{e}")).step;
        let rows: Vec<Vec<i64>> = vec![vec![3, 14, 15, 92, 65], vec![35, 89, 79, 32, 38]];
        let decode = |g: &Graph, path: &Path| {
            let model = bound(&step(g), path);
            lmc_runtime::greedy(&model, &rows, Vec::new(), 8, None)
                .unwrap_or_else(|e| panic!("{e}"))
                .tokens
        };
        assert_eq!(
            decode(&g, &original),
            decode(&f32_graph, &rounded_path),
            "{}: greedy decoding differs",
            format.name()
        );
    }
}

#[test]
fn weight_formats_that_cannot_apply_are_errors() {
    let llama = "models/llama.model:LlamaForCausalLM";
    let fixture = root().join(FIXTURE);
    let fixture = fixture.to_str().unwrap();
    let inputs = format!("{fixture}/inputs.safetensors");
    let out = scratch("weight_format_errors").join("out.safetensors");
    let out = out.to_str().unwrap();
    lmc_fails(
        &[
            "run",
            llama,
            "--weights",
            fixture,
            "--inputs",
            &inputs,
            "-o",
            out,
            "--set",
            "weights=q4",
        ],
        &[
            "E0104",
            "`--set weights=q4` names no weight format",
            "the formats are f32, bf16, int8",
        ],
    );
    // The fixture's rows (48 and 50 elements) are no whole int8 blocks: nothing would change.
    lmc_fails(
        &[
            "run",
            llama,
            "--weights",
            fixture,
            "--inputs",
            &inputs,
            "-o",
            out,
            "--set",
            "weights=int8",
        ],
        &["--set weights=int8 stores no weight of LlamaForCausalLM", "not whole blocks of 32"],
    );
    let gpt2 = root().join("tests/fixtures/gpt2_tiny");
    let gpt2 = gpt2.to_str().unwrap();
    lmc_fails(
        &[
            "run",
            "models/gpt2.model",
            "--weights",
            gpt2,
            "--inputs",
            &format!("{gpt2}/inputs.safetensors"),
            "-o",
            out,
            "--set",
            "weights=bf16",
        ],
        &["stores no weight of GPT2LMHeadModel", "`x @ w`"],
    );
    lmc_fails(
        &[
            "emit",
            "--stage",
            "mlir",
            "--target",
            "cuda",
            llama,
            "--config",
            fixture,
            "--set",
            "weights=bf16",
        ],
        &["weights=bf16 is a CPU weight format"],
    );
    lmc_fails(
        &[
            "grad",
            llama,
            "--weights",
            fixture,
            "--inputs",
            &inputs,
            "-o",
            out,
            "--set",
            "weights=bf16",
        ],
        &["weights stored as bf16 are for inference"],
    );
}
