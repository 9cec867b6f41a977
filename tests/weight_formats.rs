//! Weight matrices stored as bf16, int8 or int4 (`--set weights=...`), Linear weights (LLaMA) and
//! weights stored [in, out] (GPT-2's Conv1D): the kernels compute with exactly the values the
//! format stores (an f32 model given those rounded values agrees to the last
//! bits, the forward and greedy decoding; multiplied in integers, int8 also quantizes `x`,
//! checked against Q8_0's arithmetic), the format visibly changes the numbers (it is not
//! ignored), a matrix int8 cannot hold stays f32 and says so, and what cannot be done is an error.

use lmc_abi::{Manifest, WeightFormat};
use lmc_core::ir::Graph;
use lmc_runtime::{HostTensor, LoadedModel, WeightsSource};
use lmc_tests::{bind_jit_with, lmc_fails, max_abs_diff, read_host_tensors, root, scratch, write_raw};
use std::path::Path;

const FIXTURE: &str = "tests/fixtures/llama_tiny";

/// A model for the formats: a tiny fixture's config widened so that its weight matrices' rows
/// are whole int8 blocks of 32, but for one kind of matrix whose rows (80) are not, which int8
/// leaves f32.
struct Case {
    file: &'static str,
    model: &'static str,
    fixture: &'static str,
    set: &'static [(&'static str, &'static str)],
    /// The matrices int8 leaves f32 end with this.
    unblocked: &'static str,
    /// A tied embedding, which the matmuls of the head read through a packed copy.
    tied: Option<&'static str>,
}

const CASES: [Case; 2] = [
    // Linear weights, stored [out, in] and read as `x @ transpose(w)`.
    Case {
        file: "models/llama.model",
        model: "LlamaForCausalLM",
        fixture: FIXTURE,
        set: &[("hidden_size", "64"), ("num_attention_heads", "4"), ("intermediate_size", "80")],
        unblocked: "down_proj.weight",
        tied: None,
    },
    // Conv1D weights, stored [in, out] and read as `x @ w`; the tied head through a copy.
    Case {
        file: "models/gpt2.model",
        model: "GPT2LMHeadModel",
        fixture: "tests/fixtures/gpt2_tiny",
        set: &[("n_embd", "64"), ("n_head", "4"), ("inner", "80"), ("n_positions", "64")],
        unblocked: "mlp.c_proj.weight",
        tied: Some("transformer.wte.weight"),
    },
];

fn checked(case: &Case, weights: WeightFormat) -> Graph {
    let text = std::fs::read_to_string(root().join(case.file)).unwrap();
    let program = lmc_core::load_source(case.file, &text, Some(&root().join("models"))).unwrap_or_else(|f| panic!("{:?}", f.diagnostics));
    let config = std::fs::read_to_string(root().join(case.fixture).join("config.json")).unwrap();
    let mut overrides = lmc_core::ConfigOverrides::default().with_checkpoint_json(&config).unwrap();
    for &(key, value) in case.set.iter().chain(&[("weights", weights.name())]) {
        overrides.set.push((key.into(), value.into()));
    }
    match lmc_core::check_model(&program, Some(case.model), &overrides) {
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
    bound_on(g, path, &lmc_codegen::Target::host())
}

/// This machine's target with int8 weights converted to f32 as they are read (the kernels of a
/// CPU that cannot multiply them in integers), which compute with exactly the values stored.
fn converting() -> lmc_codegen::Target {
    lmc_codegen::Target {
        int8_dot: None,
        ..lmc_codegen::Target::host()
    }
}

/// [`bound`], compiled for `target`.
fn bound_on(g: &Graph, path: &Path, target: &lmc_codegen::Target) -> LoadedModel {
    bind_jit_with(g, lmc_codegen::jit_for(g, target), |_| WeightsSource::Path(path.to_path_buf()))
}

/// One row of `len` tokens (ids below both fixtures' vocabularies), all attended to.
fn long_prompt(len: usize) -> Vec<HostTensor> {
    let ids: Vec<i64> = (0..len as i64).map(|i| (i * 37 + 11) % 97).collect();
    vec![
        HostTensor::from_i64("input_ids", [1, len], ids).unwrap(),
        HostTensor::from_i64("attention_mask", [1, len], vec![1; len]).unwrap(),
    ]
}

fn logits(model: &LoadedModel, inputs: &[HostTensor]) -> Vec<f32> {
    model.run(inputs).unwrap_or_else(|e| panic!("{e}"))[0].as_f32().unwrap().to_vec()
}

/// For each model and format: the model stored that way, the f32 model given the values the
/// format stores, and the f32 model given the original weights, on the same inputs.
#[test]
fn stored_formats_compute_with_exactly_the_values_they_store() {
    for case in &CASES {
        formats_compute_with_the_stored_values(case);
    }
}

fn formats_compute_with_the_stored_values(case: &Case) {
    let dir = scratch(&format!("weight_formats_{}", case.model));
    let inputs = read_host_tensors(&root().join(case.fixture).join("inputs.safetensors"));
    let f32_graph = checked(case, WeightFormat::F32);
    let original = dir.join("original.safetensors");
    let target = converting();
    let weights = random(&lmc_codegen::manifest(&f32_graph, &target));
    write(&original, &weights);
    let want_plain = logits(&bound(&f32_graph, &original), &inputs);
    let scale = want_plain.iter().fold(1e-3f32, |m, v| m.max(v.abs()));
    for format in [WeightFormat::Bf16, WeightFormat::Int8] {
        let what = format!("{} as {}", case.model, format.name());
        let g = checked(case, format);
        let m = lmc_codegen::manifest(&g, &target);
        let packed = |name: &str| m.params.iter().filter(|p| p.name == name).find_map(|p| p.packing);
        // A tensor the model reads both as it is (a tied embedding's gather) and through a packed
        // copy is given already rounded, so that one f32 model can stand for both reads.
        let copied = |name: &str| m.params.iter().filter(|p| p.name == name).count() == 2;
        if let Some(tied) = case.tied {
            assert!(copied(tied), "{what}: {tied} has no packed copy");
        }
        let base: Vec<_> = weights
            .iter()
            .map(|(name, shape, values)| match packed(name).filter(|_| copied(name)) {
                Some(p) => {
                    let (n, k) = p.matrix(shape).unwrap();
                    (name.clone(), shape.clone(), p.round_trip(values, n, k))
                }
                None => (name.clone(), shape.clone(), values.clone()),
            })
            .collect();
        let base_path = dir.join(format!("{}_base.safetensors", format.name()));
        write(&base_path, &base);
        // What each parameter is stored as: the format, except int8's rows of 80.
        let mut stored = 0;
        let rounded: Vec<_> = base
            .iter()
            .map(|(name, shape, values)| {
                let Some(packing) = packed(name) else {
                    return (name.clone(), shape.clone(), values.clone());
                };
                if name.ends_with(case.unblocked) {
                    let want = if format == WeightFormat::Int8 { WeightFormat::F32 } else { format };
                    assert_eq!(packing.format, want, "{what}: {name}");
                }
                stored += usize::from(packing.format == format);
                let (n, k) = packing.matrix(shape).unwrap();
                (name.clone(), shape.clone(), packing.round_trip(values, n, k))
            })
            .collect();
        assert!(stored >= 6, "{what}: only {stored} matrices stored so");
        let rounded_path = dir.join(format!("{}.safetensors", format.name()));
        write(&rounded_path, &rounded);
        let quantized = bound_on(&g, &base_path, &target);
        let storage = quantized.weight_storage().unwrap();
        assert!(
            storage.starts_with(&format!("{} for {stored} weight matrices", format.name())),
            "{what}: {storage}"
        );
        assert_eq!(storage.contains("kept f32"), format == WeightFormat::Int8, "{what}: {storage}");
        assert_eq!(
            storage.contains("converted to f32 as read"),
            format == WeightFormat::Int8,
            "{what}: {storage}"
        );
        let got = logits(&quantized, &inputs);
        let want = logits(&bound(&f32_graph, &rounded_path), &inputs);
        let exact = max_abs_diff(&got, &want);
        assert!(
            exact <= 1e-6 * scale,
            "{what}: {exact} from the f32 model given the stored values (logits up to {scale})"
        );
        // A prompt of 56 tokens, 48 rows or more: the kernels widen each block of panels to f32
        // before its tiles read it, and compute with the same values.
        let long = long_prompt(56);
        let want_long = logits(&bound(&f32_graph, &rounded_path), &long);
        let long_scale = want_long.iter().fold(1e-3f32, |m, v| m.max(v.abs()));
        let exact = max_abs_diff(&logits(&quantized, &long), &want_long);
        assert!(
            exact <= 1e-6 * long_scale,
            "{what}, 56 tokens: {exact} from the f32 model given the stored values (logits up to {long_scale})"
        );
        // AVX2's kernels (8 lanes, panels of 16: an int8 block's scales in four rows of 16
        // bytes) and SSE's (4 lanes, panels of 8) sum in the same order.
        let sse = lmc_codegen::Target {
            lanes: 4,
            ..lmc_codegen::Target::AVX2
        };
        for (isa, target) in [("AVX2", lmc_codegen::Target::AVX2), ("SSE", sse)] {
            let narrow = bind_jit_with(&g, lmc_codegen::jit_for(&g, &target), |_| WeightsSource::Path(base_path.clone()));
            let err = max_abs_diff(&logits(&narrow, &inputs), &want);
            assert!(
                err <= 1e-6 * scale,
                "{what} on {isa}: {err} from the f32 model given the stored values"
            );
            let err = max_abs_diff(&logits(&narrow, &long), &want_long);
            assert!(
                err <= 1e-6 * long_scale,
                "{what} on {isa}, 56 tokens: {err} from the f32 model given the stored values"
            );
        }
        // The format is applied: the rounding shows against the original weights.
        let rounding = max_abs_diff(&got, &want_plain);
        assert!(
            rounding > 1e-5 * scale && rounding < 0.05 * scale,
            "{what}: {rounding} from the unrounded model (logits up to {scale})"
        );
        // The decode step reads the same packed weights: greedy decoding agrees token for token.
        let step = |g: &Graph| lmc_core::decode::derive_decode(g, 16).unwrap_or_else(|e| panic!("{e}")).step;
        let rows: Vec<Vec<i64>> = vec![vec![3, 14, 15, 92, 65], vec![35, 89, 79, 32, 38]];
        let decode = |g: &Graph, path: &Path| {
            let model = bound_on(&step(g), path, &target);
            lmc_runtime::greedy(&model, &rows, Vec::new(), 8, None)
                .unwrap_or_else(|e| panic!("{e}"))
                .tokens
        };
        assert_eq!(
            decode(&g, &base_path),
            decode(&f32_graph, &rounded_path),
            "{what}: greedy decoding differs"
        );
        // Multiplied in integers, `x` is quantized too (`int8_dot_products_compute_q8_0_exactly`):
        // close to the stored values' f32 model, not equal to it.
        if format == WeightFormat::Int8 && lmc_codegen::Target::host().int8_dot.is_some() {
            let dot = bound(&g, &base_path);
            for (inputs, want, scale) in [(&inputs, &want, scale), (&long, &want_long, long_scale)] {
                let err = max_abs_diff(&logits(&dot, inputs), want);
                assert!(
                    err > 0.0 && err <= 0.03 * scale,
                    "{what} with dot products: {err} from the f32 model given the stored values (logits up to {scale})"
                );
            }
        }
    }
}

/// A 56-token prompt through a matrix whose `K` (800) spans two of the packed kernel's blocks
/// of `K` (768): each block is widened to f32 panels on its own, and the result is still
/// exactly the f32 model's given the stored values.
#[test]
fn long_prompts_widen_each_block_of_k() {
    let case = Case {
        set: &[("hidden_size", "64"), ("num_attention_heads", "4"), ("intermediate_size", "800")],
        ..CASES[0]
    };
    let dir = scratch("weight_formats_long_k");
    let long = long_prompt(56);
    let f32_graph = checked(&case, WeightFormat::F32);
    let target = converting();
    let weights = random(&lmc_codegen::manifest(&f32_graph, &target));
    let original = dir.join("original.safetensors");
    write(&original, &weights);
    for format in [WeightFormat::Bf16, WeightFormat::Int8] {
        let g = checked(&case, format);
        let m = lmc_codegen::manifest(&g, &target);
        let rounded: Vec<_> = weights
            .iter()
            .map(
                |(name, shape, values)| match m.params.iter().find(|p| &p.name == name).and_then(|p| p.packing) {
                    Some(p) => {
                        assert!(p.format == format, "{name} is not stored as {}", format.name());
                        let (n, k) = p.matrix(shape).unwrap();
                        (name.clone(), shape.clone(), p.round_trip(values, n, k))
                    }
                    None => (name.clone(), shape.clone(), values.clone()),
                },
            )
            .collect();
        assert!(rounded.iter().any(|(name, ..)| name.ends_with("down_proj.weight")));
        let rounded_path = dir.join(format!("{}.safetensors", format.name()));
        write(&rounded_path, &rounded);
        let want = logits(&bound(&f32_graph, &rounded_path), &long);
        let scale = want.iter().fold(1e-3f32, |m, v| m.max(v.abs()));
        let err = max_abs_diff(&logits(&bound_on(&g, &original, &target), &long), &want);
        assert!(
            err <= 1e-6 * scale,
            "{}: {err} from the f32 model given the stored values (logits up to {scale})",
            format.name()
        );
    }
}

/// What training does between steps: a parameter read back in the checkpoint's layout from
/// whatever form the model binds it in (plain, f32 panels, panels of a matrix stored [in, out],
/// a tied embedding with a packed copy), and updated in place, every copy with it: the model
/// then computes what a model freshly bound to the updated weights computes. A form that keeps
/// no f32 values cannot be read back.
#[test]
fn parameters_are_read_back_and_updated_in_every_bound_form() {
    for case in &CASES {
        let dir = scratch(&format!("parameter_update_{}", case.model));
        let inputs = read_host_tensors(&root().join(case.fixture).join("inputs.safetensors"));
        for format in [WeightFormat::F32, WeightFormat::Bf16] {
            let what = format!("{} as {}", case.model, format.name());
            let g = checked(case, format);
            let m = lmc_codegen::manifest(&g, &lmc_codegen::Target::host());
            let weights = random(&m);
            let weights: Vec<_> = weights
                .iter()
                .enumerate()
                .filter(|(i, (name, ..))| weights[..*i].iter().all(|(n, ..)| n != name))
                .map(|(_, w)| w.clone())
                .collect();
            let original = dir.join(format!("{}_original.safetensors", format.name()));
            write(&original, &weights);
            let mut model = bound(&g, &original);
            let e = model.update_parameter("no.such.weight", |_| ()).unwrap_err().to_string();
            assert!(e.contains("has no parameter \"no.such.weight\""), "{what}: {e}");
            let forms = |name: &str| m.params.iter().filter(|p| p.name == name).map(|p| p.packing).collect::<Vec<_>>();
            let mut updated = Vec::new();
            let mut packed_f32 = 0;
            for (name, shape, values) in &weights {
                let forms = forms(name);
                let lossy = forms.iter().all(|p| p.is_some_and(|p| p.format != WeightFormat::F32));
                let read = model.parameter_f32(name);
                if lossy {
                    let e = read.expect_err(&format!("{what}: {name} read back")).to_string();
                    assert!(e.contains(name) && e.contains("bf16"), "{what}: {e}");
                    updated.push((name.clone(), shape.clone(), values.clone()));
                    continue;
                }
                assert_eq!(read.unwrap().as_ref(), values.as_slice(), "{what}: {name} read back");
                packed_f32 += usize::from(forms.iter().any(|p| p.is_some_and(|p| p.format == WeightFormat::F32)));
                let step: Vec<f32> = values.iter().enumerate().map(|(i, v)| v + 0.01 * (i % 7) as f32).collect();
                let out = model
                    .update_parameter(name, |w| {
                        for (w, s) in w.iter_mut().zip(&step) {
                            *w = *s;
                        }
                        w.len()
                    })
                    .unwrap_or_else(|e| panic!("{what}: {name}: {e}"));
                assert_eq!(out, values.len());
                assert_eq!(
                    model.parameter_f32(name).unwrap().as_ref(),
                    step.as_slice(),
                    "{what}: {name} after the update"
                );
                updated.push((name.clone(), shape.clone(), step));
            }
            if format == WeightFormat::F32 {
                assert!(packed_f32 >= 6, "{what}: only {packed_f32} matrices bound in f32 panels");
            }
            let fresh_path = dir.join(format!("{}_updated.safetensors", format.name()));
            write(&fresh_path, &updated);
            let fresh = bound(&g, &fresh_path);
            let got = logits(&model, &inputs);
            assert_eq!(got, logits(&fresh, &inputs), "{what}: updated in place vs bound fresh");
            assert!(
                max_abs_diff(&got, &logits(&bound(&g, &original), &inputs)) > 1e-4,
                "{what}: the update changed nothing"
            );
        }
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
    // Nor GPT-2's (35 and 140 elements).
    let gpt2 = root().join("tests/fixtures/gpt2_tiny");
    lmc_fails(
        &[
            "emit",
            "--stage",
            "llvm",
            "models/gpt2.model",
            "--config",
            gpt2.to_str().unwrap(),
            "--set",
            "weights=int8",
        ],
        &["stores no weight of GPT2LMHeadModel", "not whole blocks of 32"],
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

/// Stack slots of the matmul kernels' functions in a module's LLVM IR, but for the values
/// their parallel loop captures (`.reloaded`, once per call: the quantized `x` adds two).
fn matmul_allocas(llvm: &str) -> usize {
    llvm.split("\ndefine ")
        .filter(|f| f.split('(').next().is_some_and(|name| name.contains("lmc_matmul")))
        .map(|f| {
            let body = f.split("\n}\n").next().unwrap_or("");
            body.lines()
                .filter(|l| l.contains(" alloca ") && !l.trim_start().starts_with("%.reloaded"))
                .count()
        })
        .sum()
}

/// The kernels of the formats take no stack of their own beyond the f32 kernels': a stack
/// buffer allocated at every block of every tile (a 2-D transfer of int8 scales) overflowed a
/// thread's stack on a 32k-row head at 128 rows.
#[test]
fn stored_formats_take_no_stack_per_block() {
    for target in [converting(), lmc_codegen::Target::host()] {
        let llvm = |format| lmc_codegen::emit_llvm_ir(&checked(&CASES[0], format), &target).unwrap_or_else(|e| panic!("{e}"));
        let f32_slots = matmul_allocas(&llvm(WeightFormat::F32));
        assert!(f32_slots > 0, "no matmul kernels found");
        for format in [WeightFormat::Bf16, WeightFormat::Int8] {
            assert_eq!(matmul_allocas(&llvm(format)), f32_slots, "{} ({target:?})", format.name());
        }
    }
}

/// Where the kernels multiply in integers (`vpdpbusd`, or `vpmaddwd`), int8 weights multiply
/// `x` quantized per block of 32 as the weights are (llama.cpp's Q8_0 arithmetic): every result is exactly the
/// bias plus, block by block, the integer sum times the two scales, added in f32 in order. Rows
/// of one (decoding), tiles of 6 and the rows left over, and 50 rows (where the float kernels
/// would widen the panels); 40 columns, a whole panel and a part of one.
#[test]
fn int8_dot_products_compute_q8_0_exactly() {
    use lmc_codegen::Int8Dot;
    let host = lmc_codegen::Target::host();
    let Some(kind) = host.int8_dot else {
        eprintln!("skipped: the kernels multiply no integers on this CPU (it lacks AVX2)");
        return;
    };
    // The host's instructions and vector width, and the narrower and older ones it also runs:
    // `vpdpbusd` on 8 lanes (AVX-VNNI's width), `vpmaddwd` on 16 (AVX-512BW) and 8 (AVX2).
    let mut targets = vec![(host.lanes, kind), (8, Int8Dot::Madd)];
    if host.lanes == 16 {
        targets.extend([(16, Int8Dot::Madd), (8, kind)]);
    }
    targets.dedup();
    for (lanes, kind) in targets {
        for format in [WeightFormat::Int8, WeightFormat::Int4] {
            let target = lmc_codegen::Target {
                lanes,
                int8_dot: Some(kind),
                ..host
            };
            int8_dot_linear(&target, format);
        }
    }
}

/// One Linear stored in `format` (int8 or int4) against its blocks' arithmetic in Rust.
fn int8_dot_linear(target: &lmc_codegen::Target, format: WeightFormat) {
    let file = "tests/corpus/linear.model";
    let text = std::fs::read_to_string(root().join(file)).unwrap();
    let program = lmc_core::load_source(file, &text, Some(&root().join("models"))).unwrap_or_else(|f| panic!("{:?}", f.diagnostics));
    let mut overrides = lmc_core::ConfigOverrides::default();
    overrides.set.push(("weights".into(), format.name().into()));
    let g = lmc_core::check_model(&program, Some("OneLinear"), &overrides)
        .unwrap_or_else(|e| panic!("{e:?}"))
        .graph;
    let m = lmc_codegen::manifest(&g, target);
    let packing = m.params.iter().find_map(|p| p.packing).unwrap();
    assert!(packing.int8_dot && packing.format == format, "{packing:?}");
    let (k, n) = (96usize, 40usize);
    let weights = random(&m);
    let dir = scratch("weight_formats_int8_dot");
    let path = dir.join("linear.safetensors");
    write(&path, &weights);
    let tensor = |name: &str| weights.iter().find(|(t, ..)| t == name).unwrap().2.clone();
    let (w, bias) = (tensor("proj.weight"), tensor("proj.bias"));
    let model = bound_on(&g, &path, target);
    let storage = model.weight_storage().unwrap();
    assert!(storage.ends_with(&format!("{} multiplied in integers, x quantized per block of 32", format.name())));
    for (b, t) in [(1usize, 1usize), (2, 7), (1, 50)] {
        let x: Vec<f32> = (0..b * t * k).map(|i| ((i * 7919 % 1009) as f32 - 504.0) / 97.0).collect();
        let inputs = vec![HostTensor::from_f32("x", [b, t, k], x.clone()).unwrap()];
        let got = model.run(&inputs).unwrap_or_else(|e| panic!("{e}"))[0].as_f32().unwrap().to_vec();
        for (row, x) in x.chunks(k).enumerate() {
            for col in 0..n {
                let mut want = bias[col];
                for (xb, wb) in x.chunks(32).zip(w[col * k..(col + 1) * k].chunks(32)) {
                    let ((xs, xq), (ws, wq)) = (lmc_abi::quantize_block(xb), format.quantize(wb));
                    let sum: i32 = xq.iter().zip(&wq).map(|(&a, &b)| i32::from(a) * i32::from(b)).sum();
                    want = (sum as f32).mul_add(ws * xs, want);
                }
                let got = got[row * n + col];
                assert_eq!(
                    got,
                    want,
                    "{} at {} lanes with {:?}, {b}×{t} rows: row {row}, column {col}",
                    format.name(),
                    target.lanes,
                    target.int8_dot
                );
            }
        }
    }
    // A NaN or an infinity in `x` is not quantized away: every result its row reaches is not
    // finite, as in f32.
    for bad in [f32::NAN, f32::INFINITY] {
        let mut x = vec![0.5f32; k];
        x[40] = bad;
        let inputs = vec![HostTensor::from_f32("x", [1, 1, k], x).unwrap()];
        let got = model.run(&inputs).unwrap_or_else(|e| panic!("{e}"))[0].as_f32().unwrap().to_vec();
        assert!(got.iter().all(|v| !v.is_finite()), "{} with {bad} in x: {got:?}", format.name());
    }
}

/// Int4 (Q4_0's blocks) on LLaMA: close to the f32 model given the values int4 stores (the
/// difference is `x`'s quantization), further from the original weights than int8; on a CPU
/// whose kernels cannot multiply in integers, an error that says so.
#[test]
fn int4_stores_q4_0_blocks_and_needs_dot_products() {
    let case = &CASES[0];
    let g = checked(case, WeightFormat::Int4);
    let err = lmc_codegen::jit_for(&g, &converting())
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(
        err.contains("weights=int4 is multiplied in integers") && err.contains("weights=int8 runs there"),
        "{err}"
    );
    if lmc_codegen::Target::host().int8_dot.is_none() {
        eprintln!("skipped the rest: the kernels multiply no integers on this CPU");
        return;
    }
    let dir = scratch("weight_formats_int4");
    let inputs = read_host_tensors(&root().join(case.fixture).join("inputs.safetensors"));
    let f32_graph = checked(case, WeightFormat::F32);
    let weights = random(&lmc_codegen::manifest(&f32_graph, &converting()));
    let original = dir.join("original.safetensors");
    write(&original, &weights);
    let m = lmc_codegen::manifest(&g, &lmc_codegen::Target::host());
    let rounded: Vec<_> = weights
        .iter()
        .map(
            |(name, shape, values)| match m.params.iter().find(|p| &p.name == name).and_then(|p| p.packing) {
                Some(p) => {
                    let (n, k) = p.matrix(shape).unwrap();
                    (name.clone(), shape.clone(), p.round_trip(values, n, k))
                }
                None => (name.clone(), shape.clone(), values.clone()),
            },
        )
        .collect();
    let rounded_path = dir.join("int4.safetensors");
    write(&rounded_path, &rounded);
    let model = bound(&g, &original);
    let storage = model.weight_storage().unwrap();
    assert!(storage.starts_with("int4 for ") && storage.contains("kept f32"), "{storage}");
    let got = logits(&model, &inputs);
    let want = logits(&bound(&f32_graph, &rounded_path), &inputs);
    let scale = want.iter().fold(1e-3f32, |m, v| m.max(v.abs()));
    let err = max_abs_diff(&got, &want);
    assert!(
        err > 0.0 && err <= 0.03 * scale,
        "{err} from the f32 model given int4's values (logits up to {scale})"
    );
    let plain = logits(&bound(&f32_graph, &original), &inputs);
    let int8 = logits(&bound(&checked(case, WeightFormat::Int8), &original), &inputs);
    let (int4_off, int8_off) = (max_abs_diff(&got, &plain), max_abs_diff(&int8, &plain));
    assert!(
        int4_off > 2.0 * int8_off && int4_off < 0.3 * scale,
        "int4 {int4_off}, int8 {int8_off} from f32 (logits up to {scale})"
    );
}
