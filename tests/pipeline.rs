//! End-to-end tests of the pipeline: stage snapshots, numerics against Hugging Face, the C host,
//! bad inputs, and diagnostics (UI tests). One binary, because each links MLIR and LLVM.

use lmc_core::ConfigOverrides;
use lmc_tests::*;
use std::path::Path;
use std::process::Command;

const CHECKPOINT: &str = "tests/fixtures/bert_tiny";

/// The shipped models that run today: (model, inputs fixture, expected-outputs fixture).
const MODELS: &[(&str, &str, &str)] = &[
    ("BertEmbeddings", "embeddings", "embeddings"),
    ("BertIntermediate", "intermediate", "intermediate"),
    ("BertFeedForwardStack", "intermediate", "feed_forward_stack"),
    ("BertModel", "model", "model"),
];

fn fixture_overrides() -> ConfigOverrides {
    let text = std::fs::read_to_string(root().join(CHECKPOINT).join("config.json")).unwrap();
    ConfigOverrides::default().with_checkpoint_json(&text).unwrap()
}

/// Loads a model file as `lmc` does, with paths relative to the repository root.
fn program(path: &str) -> lmc_core::Program {
    let text = std::fs::read_to_string(root().join(path)).unwrap();
    let dir = root().join(path).parent().unwrap().to_path_buf();
    lmc_core::load_source(path, &text, Some(&dir)).unwrap_or_else(|f| panic!("{path}: {:?}", f.diagnostics))
}

fn graph(model: &str) -> lmc_core::ir::Graph {
    match lmc_core::check_model(&program("models/bert.model"), Some(model), &fixture_overrides()) {
        Ok(c) => c.graph,
        Err(e) => panic!("{model} does not check: {e:?}"),
    }
}

mod stages {
    use super::*;

    #[test]
    fn ast() {
        let p = program("models/bert.model");
        let m = &p.modules[0];
        insta::assert_snapshot!("bert_ast", lmc_grammar::print_ast(&m.ast, p.sources.get(m.file)));
    }

    #[test]
    fn ir_mlir_llvm() {
        for (model, ..) in MODELS {
            let g = graph(model);
            g.verify().unwrap();
            insta::assert_snapshot!(format!("{model}_ir"), g.print());
            insta::assert_snapshot!(format!("{model}_mlir"), lmc_codegen::emit_mlir(&g, &lmc_codegen::Target::AVX2));
            // LLVM IR is large; the small models show every lowering step well enough.
            if g.nodes.len() < 40 {
                insta::assert_snapshot!(
                    format!("{model}_llvm"),
                    lmc_codegen::emit_llvm_ir(&g, &lmc_codegen::Target::AVX2).unwrap()
                );
            }
            insta::assert_snapshot!(
                format!("{model}_manifest"),
                lmc_codegen::manifest(&g, &lmc_codegen::Target::AVX2).to_json()
            );
        }
    }
}

/// The op corpus: every model's MLIR is snapshotted, and its compiled code agrees with the IR
/// interpreter on random data.
mod corpus {
    use super::*;
    use lmc_abi::DType;
    use lmc_core::interp::{self, Data, Tensor};
    use lmc_core::ir::Dim;
    use lmc_runtime::HostTensor;

    const FILE: &str = "tests/corpus/ops.model";
    /// Values given to the symbolic dimensions, odd so no tile size divides them.
    const SYMBOL_VALUES: &[(&str, usize)] = &[("B", 3), ("T", 5), ("N", 6)];

    /// A deterministic pseudo-random stream (no dependency needed for test data).
    struct Lcg(u64);

    impl Lcg {
        fn next(&mut self) -> f32 {
            self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((self.0 >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        }
    }

    fn graphs() -> Vec<lmc_core::ir::Graph> {
        let p = program(FILE);
        lmc_core::model_names(&p)
            .iter()
            .map(|name| match lmc_core::check_model(&p, Some(name), &ConfigOverrides::default()) {
                Ok(c) => {
                    assert!(c.warnings.is_empty(), "{name}: {:?}", c.warnings);
                    c.graph
                }
                Err(e) => panic!("{name}: {e:?}"),
            })
            .collect()
    }

    fn concrete(g: &lmc_core::ir::Graph, dims: &[Dim]) -> Vec<usize> {
        dims.iter()
            .map(|d| match d {
                Dim::Static(n) => *n as usize,
                Dim::Symbol(s) => SYMBOL_VALUES.iter().find(|(n, _)| *n == g.symbols[s.0 as usize].name).unwrap().1,
            })
            .collect()
    }

    fn random_tensor(dtype: DType, shape: Vec<usize>, bound: Option<i64>, rng: &mut Lcg) -> Tensor {
        let n: usize = shape.iter().product();
        match dtype {
            DType::F32 => Tensor::f32(shape, (0..n).map(|_| rng.next()).collect()),
            _ => {
                let limit = bound.unwrap_or(100);
                Tensor::int(
                    shape,
                    (0..n).map(|_| ((rng.next() + 1.0) * 0.5 * limit as f32) as i64 % limit).collect(),
                )
            }
        }
    }

    fn to_host(name: &str, dtype: DType, t: &Tensor) -> HostTensor {
        match (&t.data, dtype) {
            (Data::F32(v), _) => HostTensor::from_f32(name, t.shape.clone(), v.clone()).unwrap(),
            (Data::Int(v), DType::I32) => HostTensor::from_i32(name, t.shape.clone(), v.iter().map(|&x| x as i32).collect()).unwrap(),
            (Data::Int(v), _) => HostTensor::from_i64(name, t.shape.clone(), v.clone()).unwrap(),
        }
    }

    /// erf in f64 from its Maclaurin series (exact to about 1e-11 for |x| <= 4; beyond, erf
    /// is ±1 in f32).
    fn erf64(x: f64) -> f64 {
        if x.abs() > 4.0 {
            return x.signum();
        }
        let (mut term, mut sum) = (x, x);
        for n in 1..120 {
            term *= -x * x / n as f64;
            sum += term / (2 * n + 1) as f64;
        }
        sum * std::f64::consts::FRAC_2_SQRT_PI
    }

    /// `exp` and `erf` are computed by lmc's own arithmetic (vectorizable), not libm: over
    /// their whole f32 range, including overflow, underflow through subnormals, infinities and
    /// NaN, they stay within a few ulp (exp) or 3e-7 (erf, and relatively 1e-6 near zero)
    /// of f64 references; sigmoid and GELU follow.
    #[test]
    fn approximations_match_f64_over_the_whole_range() {
        let p = program("tests/corpus/math.model");
        let g = lmc_core::check_model(&p, Some("Approximations"), &ConfigOverrides::default())
            .unwrap()
            .graph;
        let mut xs: Vec<f32> = (-22000..=22000).map(|i| i as f32 * 0.005).collect();
        xs.extend([
            0.0,
            -0.0,
            1e-30,
            -1e-30,
            88.72,
            88.73,
            -87.3,
            -103.0,
            -104.5,
            -1e4,
            1e4,
            f32::INFINITY,
            f32::NEG_INFINITY,
            f32::NAN,
        ]);
        let dir = scratch("approximations");
        let weights = dir.join("none.safetensors");
        lmc_runtime::write_safetensors(&weights, &[]).unwrap();
        for target in [lmc_codegen::Target::AVX2, lmc_codegen::Target::AVX512] {
            let jit = std::sync::Arc::new(lmc_codegen::jit_for(&g, &target).unwrap());
            let handle = jit.clone();
            let lookup = move |name: &str| handle.lookup(name);
            // SAFETY: the symbols come from the module just generated for this ABI; the JIT
            // that owns the code is the keep-alive.
            let module = unsafe { lmc_runtime::Module::from_symbols(&lookup, Box::new(jit)) }.unwrap();
            let model = module.bind_weights(weights.as_path().into()).unwrap();
            let input = HostTensor::from_f32("x", vec![xs.len()], xs.clone()).unwrap();
            let outputs = model.run(&[input]).unwrap();
            let [e, r, s, gelu] = [0, 1, 2, 3].map(|i| outputs[i].as_f32().unwrap().to_vec());
            for (i, &x) in xs.iter().enumerate() {
                let x64 = f64::from(x);
                let close = |got: f32, want: f64, abs: f64, rel: f64| {
                    let want32 = want as f32;
                    (got.is_nan() && want.is_nan()) || got == want32 || (f64::from(got) - want).abs() <= abs + rel * want.abs()
                };
                let checks = [
                    ("exp", e[i], x64.exp(), 1e-44, 4e-7),
                    ("erf", r[i], erf64(x64), 3e-7, 1e-6),
                    ("sigmoid", s[i], 1.0 / (1.0 + (-x64).exp()), 1e-7, 1e-6),
                    (
                        "gelu",
                        gelu[i],
                        x64 * 0.5 * (1.0 + erf64(x64 / std::f64::consts::SQRT_2)),
                        3e-7,
                        1e-6,
                    ),
                ];
                for (name, got, want, abs, rel) in checks {
                    assert!(
                        close(got, want, abs, rel),
                        "{name}({x:e}) = {got:e}, want {want:e} ({} lanes)",
                        target.lanes
                    );
                }
            }
        }
    }

    #[test]
    fn mlir_snapshots() {
        for g in graphs() {
            insta::assert_snapshot!(
                format!("corpus_{}_mlir", g.model),
                lmc_codegen::emit_mlir(&g, &lmc_codegen::Target::AVX2)
            );
        }
    }

    /// The GPU's forms of the ops (`--target cuda`: plain loop nests, transposed weights, a
    /// whole attention), as its MLIR is emitted, and its loop nests after fusion, one per kernel
    /// (`lmc emit --stage loops`): a change in what fuses shows here.
    #[test]
    fn cuda_mlir_snapshots() {
        for g in graphs()
            .into_iter()
            .filter(|g| ["Contractions", "Attentions", "Recurrences"].contains(&g.model.as_str()))
        {
            insta::assert_snapshot!(
                format!("corpus_{}_cuda_mlir", g.model),
                lmc_codegen::emit_mlir(&g, &lmc_codegen::Target::CUDA)
            );
            insta::assert_snapshot!(
                format!("corpus_{}_cuda_loops", g.model),
                lmc_codegen::emit_fused_loops(&g).unwrap_or_else(|e| panic!("{e}"))
            );
        }
    }

    /// Both kernel shapes (AVX2's 8 lanes and AVX-512's 16) run on any x86-64 host: LLVM splits
    /// vectors wider than the machine's. So do the GPU's forms of the ops, lowered for the host
    /// (`None` below; see `lmc_codegen::jit_gpu_forms_on_host`).
    #[test]
    fn compiled_code_matches_the_interpreter() {
        let dir = scratch("corpus");
        let mut rng = Lcg(42);
        let targets = [Some(lmc_codegen::Target::AVX2), Some(lmc_codegen::Target::AVX512), None];
        for (g, target) in graphs().into_iter().flat_map(|g| targets.map(|t| (g.clone(), t))) {
            let params: Vec<Tensor> = g
                .params
                .iter()
                .map(|p| random_tensor(p.ty.dtype, concrete(&g, &p.ty.dims), None, &mut rng))
                .collect();
            let inputs: Vec<Tensor> = g
                .inputs
                .iter()
                .map(|p| {
                    random_tensor(
                        p.ty.dtype,
                        concrete(&g, &p.ty.dims),
                        p.index_bound.as_ref().map(|b| b.limit),
                        &mut rng,
                    )
                })
                .collect();
            let expected = interp::evaluate(&g, &params, &inputs);

            let weights = dir.join(format!("{}.safetensors", g.model));
            let hosts: Vec<HostTensor> = g.params.iter().zip(&params).map(|(p, t)| to_host(&p.name, p.ty.dtype, t)).collect();
            let refs: Vec<(&str, DType, &[usize], &[u8])> = hosts
                .iter()
                .map(|h| (h.name.as_str(), h.dtype, h.shape.as_slice(), h.bytes()))
                .collect();
            lmc_runtime::write_safetensors(&weights, &refs).unwrap();

            let jit = match target {
                Some(target) => lmc_codegen::jit_for(&g, &target),
                None => lmc_codegen::jit_gpu_forms_on_host(&g),
            };
            let jit = std::sync::Arc::new(jit.unwrap_or_else(|e| panic!("{}: {e}", g.model)));
            let handle = jit.clone();
            let lookup = move |name: &str| handle.lookup(name);
            // SAFETY: the symbols come from the module just generated for this ABI; the JIT
            // that owns the code is the keep-alive.
            let module = unsafe { lmc_runtime::Module::from_symbols(&lookup, Box::new(jit)) }.unwrap();
            let model = module.bind_weights(weights.as_path().into()).unwrap();
            let shape = target.map_or("the GPU's loop nests".to_string(), |t| format!("{} lanes", t.lanes));
            let host_inputs: Vec<HostTensor> = g.inputs.iter().zip(&inputs).map(|(p, t)| to_host(&p.name, p.ty.dtype, t)).collect();
            let outputs = model.run(&host_inputs).unwrap();
            assert_eq!(outputs.len(), expected.len());
            for ((out, want), (decl, _)) in outputs.iter().zip(&expected).zip(&g.outputs) {
                assert_eq!(out.shape, want.shape, "{}.{}", g.model, decl.name);
                let Data::F32(want) = &want.data else { panic!("f32 outputs only") };
                let err = max_abs_diff(out.as_f32().unwrap(), want);
                // f32 rounding grows with the values summed: 1e-5 of the largest magnitude.
                let scale = want.iter().fold(1.0f32, |m, v| m.max(v.abs()));
                assert!(
                    err <= 1e-5 * scale,
                    "{}.{} ({shape}): compiled code and interpreter differ by {err} (largest value {scale})",
                    g.model,
                    decl.name
                );
            }
        }
    }
}

/// `lmc run` (JIT) on each model reproduces what Hugging Face transformers computed.
#[test]
fn numerics_match_hugging_face() {
    let dir = scratch("numerics");
    for (model, inputs, expected) in MODELS {
        let out = dir.join(format!("{model}.safetensors"));
        let inputs = format!("{CHECKPOINT}/inputs_{inputs}.safetensors");
        let result = lmc(&[
            "run",
            &format!("models/bert.model:{model}"),
            "--weights",
            CHECKPOINT,
            "--inputs",
            &inputs,
            "-o",
            out.to_str().unwrap(),
        ]);
        assert!(result.status.success(), "{model}: {}", String::from_utf8_lossy(&result.stderr));
        let got = read_f32_tensors(&out);
        let want = read_f32_tensors(&root().join(format!("{CHECKPOINT}/expected_{expected}.safetensors")));
        assert_eq!(got.len(), want.len());
        for ((gn, gs, gv), (wn, ws, wv)) in got.iter().zip(&want) {
            assert_eq!((gn, gs), (wn, ws));
            let err = max_abs_diff(gv, wv);
            assert!(err <= 1e-5, "{model}.{gn}: max abs error {err} > 1e-5");
        }
    }
}

/// Writes a safetensors file's tensors in the C host's text format.
fn host_input_text(path: &Path) -> String {
    let file = lmc_runtime::safetensors::SafeTensorsFile::open(path).unwrap();
    let mut text = String::new();
    for info in file.tensors() {
        let t = file.get(&info.name).unwrap().to_host().unwrap();
        let dims: Vec<String> = t.shape.iter().map(|d| d.to_string()).collect();
        let values: Vec<String> = match (t.as_f32(), t.as_i64()) {
            (Some(f), _) => f.iter().map(|x| format!("{x:e}")).collect(),
            (_, Some(i)) => i.iter().map(|x| x.to_string()).collect(),
            _ => t.as_i32().unwrap().iter().map(|x| x.to_string()).collect(),
        };
        text.push_str(&format!(
            "{} {} {} {} {}\n",
            info.name,
            t.dtype.as_str(),
            t.shape.len(),
            dims.join(" "),
            values.join(" ")
        ));
    }
    text
}

/// Runs the C host on `lib`. `LMC_HOST_WRAPPER` runs it under another program: docs/testing.md's
/// memory-safety check is `LMC_HOST_WRAPPER="valgrind --error-exitcode=99 ..."`.
fn run_host(host: &Path, lib: &Path, input: &str) -> std::process::Output {
    use std::io::Write;
    let wrapper = std::env::var("LMC_HOST_WRAPPER").unwrap_or_default();
    let mut words = wrapper.split_whitespace();
    let mut command = match words.next() {
        Some(program) => {
            let mut c = Command::new(program);
            c.args(words).arg(host);
            c
        }
        None => Command::new(host),
    };
    let mut child = command
        .arg(lib)
        .arg(root().join(CHECKPOINT))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
    child.wait_with_output().unwrap()
}

/// One loaded model, used from several threads at once, gives bit for bit what sequential runs
/// give; and sequential runs repeat bit for bit (generated code is deterministic), whatever the
/// number of threads its kernels use.
#[test]
fn concurrent_runs_match_sequential_runs_bit_for_bit() {
    let p = program("models/bert.model");
    let g = lmc_core::check_model(&p, Some("BertModel"), &fixture_overrides()).unwrap().graph;
    let jit = std::sync::Arc::new(lmc_codegen::jit(&g).unwrap());
    let handle = jit.clone();
    let lookup = move |name: &str| handle.lookup(name);
    // SAFETY: the symbols come from the module just generated for this ABI; the JIT that owns
    // the code is the keep-alive.
    let module = unsafe { lmc_runtime::Module::from_symbols(&lookup, Box::new(jit)) }.unwrap();
    let model = module
        .bind_weights(lmc_runtime::WeightsSource::Path(root().join(CHECKPOINT)))
        .unwrap();
    let inputs: Vec<Vec<lmc_runtime::HostTensor>> = (0..4i64)
        .map(|k| {
            let t = 5 + k as usize;
            let ids: Vec<i64> = (0..2 * t as i64).map(|i| (i * 7 + k * 13) % 99).collect();
            vec![
                lmc_runtime::HostTensor::from_i64("input_ids", vec![2, t], ids).unwrap(),
                lmc_runtime::HostTensor::from_i64("attention_mask", vec![2, t], vec![1; 2 * t]).unwrap(),
                lmc_runtime::HostTensor::from_i64("token_type_ids", vec![2, t], vec![0; 2 * t]).unwrap(),
            ]
        })
        .collect();
    let bits = |outs: Vec<lmc_runtime::HostTensor>| outs[0].bytes().to_vec();
    let sequential: Vec<Vec<u8>> = inputs.iter().map(|i| bits(model.run(i).unwrap())).collect();
    let again: Vec<Vec<u8>> = inputs.iter().map(|i| bits(model.run(i).unwrap())).collect();
    assert_eq!(sequential, again, "the same inputs gave different outputs");
    // Kernels split work by rows and column blocks, never inside one element's arithmetic, so
    // the thread count does not change a bit either.
    let threads = lmc_codegen::llvm::threads();
    for n in [1, 3] {
        lmc_codegen::llvm::set_threads(n);
        let other: Vec<Vec<u8>> = inputs.iter().map(|i| bits(model.run(i).unwrap())).collect();
        assert_eq!(sequential, other, "{n} threads gave other outputs than {threads}");
    }
    lmc_codegen::llvm::set_threads(threads);
    for _ in 0..3 {
        let concurrent: Vec<Vec<u8>> = std::thread::scope(|s| {
            let workers: Vec<_> = inputs.iter().map(|i| s.spawn(|| bits(model.run(i).unwrap()))).collect();
            workers.into_iter().map(|w| w.join().unwrap()).collect()
        });
        assert_eq!(concurrent, sequential, "concurrent runs differ from sequential ones");
    }
}

/// A C program includes the generated header, links the `.so` and the runtime's C API, runs
/// the model, and prints what `lmc run` computes.
#[test]
fn c_host_runs_the_shared_library() {
    let dir = scratch("c_host");
    for (model, fixture, _) in MODELS {
        let lib = dir.join(format!("lib{model}.so"));
        let spec = format!("models/bert.model:{model}");
        let r = lmc(&["compile", &spec, "--config", CHECKPOINT, "-o", lib.to_str().unwrap()]);
        assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
        let header = dir.join(format!("lib{model}.h"));
        assert!(header.exists());

        let host = dir.join(format!("host_{model}"));
        let abi_macro = format!("LMC_{}_ABI_VERSION", model.to_uppercase());
        build_c_host(
            "host.c",
            &host,
            &lib,
            &[format!("MODEL_HEADER=\"lib{model}.h\""), format!("MODEL_ABI_VERSION={abi_macro}")],
        );

        let inputs = root().join(format!("{CHECKPOINT}/inputs_{fixture}.safetensors"));
        let out = run_host(&host, &lib, &host_input_text(&inputs));
        assert!(out.status.success(), "host failed: {}", String::from_utf8_lossy(&out.stderr));

        // The same model through `lmc run`'s JIT.
        let jit_out = dir.join(format!("{model}.safetensors"));
        let r = lmc(&[
            "run",
            &spec,
            "--weights",
            CHECKPOINT,
            "--inputs",
            inputs.to_str().unwrap(),
            "-o",
            jit_out.to_str().unwrap(),
        ]);
        assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
        let jit = read_f32_tensors(&jit_out);
        let printed = String::from_utf8(out.stdout).unwrap();
        let lines: Vec<&str> = printed.lines().collect();
        assert_eq!(lines.len(), jit.len());
        for (line, (name, shape, values)) in lines.iter().zip(&jit) {
            let mut words = line.split_whitespace();
            assert_eq!(words.next(), Some(name.as_str()));
            assert_eq!(words.next(), Some("f32"));
            let rank: usize = words.next().unwrap().parse().unwrap();
            let dims: Vec<usize> = (0..rank).map(|_| words.next().unwrap().parse().unwrap()).collect();
            assert_eq!(&dims, shape);
            let host_values: Vec<f32> = words.map(|w| w.parse().unwrap()).collect();
            let err = max_abs_diff(&host_values, values);
            assert!(err <= 1e-6, "{model}: C host and lmc run differ by {err}");
        }

        // A bad input comes back as a status and a message through the C ABI.
        if *fixture == "embeddings" {
            // Replace the first token id (after name, dtype, rank 2 and two dims) with 12345.
            let bad: Vec<String> = host_input_text(&inputs)
                .lines()
                .map(|l| {
                    let mut w: Vec<&str> = l.split(' ').collect();
                    if w[0] == "input_ids" {
                        w[5] = "12345";
                    }
                    w.join(" ")
                })
                .collect();
            let bad = bad.join("\n");
            let out = run_host(&host, &lib, &bad);
            assert_eq!(out.status.code(), Some(2));
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(err.contains("input_ids") && err.contains("12345"), "unexpected error: {err}");
        }
    }
}

mod bad_input {
    use super::*;
    use lmc_abi::DType;

    /// Copies the fixture checkpoint with `edit` applied to its tensors.
    fn edited_checkpoint(name: &str, edit: impl Fn(&mut Vec<(String, DType, Vec<usize>, Vec<u8>)>)) -> std::path::PathBuf {
        let dir = scratch(name);
        std::fs::copy(root().join(CHECKPOINT).join("config.json"), dir.join("config.json")).unwrap();
        let file = lmc_runtime::safetensors::SafeTensorsFile::open(&root().join(CHECKPOINT).join("model.safetensors")).unwrap();
        let mut tensors: Vec<(String, DType, Vec<usize>, Vec<u8>)> = file
            .tensors()
            .map(|i| {
                let t = file.get(&i.name).unwrap().to_host().unwrap();
                (i.name.clone(), t.dtype, t.shape.clone(), t.bytes().to_vec())
            })
            .collect();
        edit(&mut tensors);
        let refs: Vec<(&str, DType, &[usize], &[u8])> = tensors
            .iter()
            .map(|(n, d, s, b)| (n.as_str(), *d, s.as_slice(), b.as_slice()))
            .collect();
        lmc_runtime::safetensors::write_safetensors(&dir.join("model.safetensors"), &refs).unwrap();
        dir
    }

    /// Runs the embeddings on `weights`, writing the outputs to a scratch directory of the
    /// call's own (never beside the weights: the checkpoint is a committed fixture).
    fn run_embeddings(weights: &Path, inputs: &Path) -> (i32, String) {
        static CALLS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let call = CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let out = scratch(&format!("embeddings_out_{call}")).join("out.safetensors");
        let r = lmc(&[
            "run",
            "models/bert.model:BertEmbeddings",
            "--weights",
            weights.to_str().unwrap(),
            "--inputs",
            inputs.to_str().unwrap(),
            "-o",
            out.to_str().unwrap(),
        ]);
        (r.status.code().unwrap_or(-1), String::from_utf8_lossy(&r.stderr).into_owned())
    }

    fn fixture_inputs() -> std::path::PathBuf {
        root().join(CHECKPOINT).join("inputs_embeddings.safetensors")
    }

    #[test]
    fn missing_tensor_is_named() {
        let dir = edited_checkpoint("missing_tensor", |t| t.retain(|(n, ..)| n != "embeddings.LayerNorm.bias"));
        let (code, err) = run_embeddings(&dir, &fixture_inputs());
        expect_error(code, &err, &["embeddings.LayerNorm.bias"]);
    }

    #[test]
    fn wrong_shape_is_named() {
        let dir = edited_checkpoint("wrong_shape", |t| {
            let e = t.iter_mut().find(|(n, ..)| n == "embeddings.token_type_embeddings.weight").unwrap();
            e.2 = vec![e.2[1], e.2[0]];
        });
        let (code, err) = run_embeddings(&dir, &fixture_inputs());
        expect_error(code, &err, &["embeddings.token_type_embeddings.weight", "[36, 3]", "[3, 36]"]);
    }

    #[test]
    fn wrong_dtype_is_named() {
        let dir = edited_checkpoint("wrong_dtype", |t| {
            let e = t.iter_mut().find(|(n, ..)| n == "embeddings.LayerNorm.weight").unwrap();
            e.1 = DType::I32;
        });
        let (code, err) = run_embeddings(&dir, &fixture_inputs());
        expect_error(code, &err, &["embeddings.LayerNorm.weight", "I32", "F32"]);
    }

    /// NaN or infinite weights are a warning naming the tensor and the counts; the run goes on.
    #[test]
    fn non_finite_weights_are_a_warning() {
        let dir = edited_checkpoint("non_finite", |t| {
            let e = t.iter_mut().find(|(n, ..)| n == "embeddings.LayerNorm.weight").unwrap();
            e.3[0..4].copy_from_slice(&f32::NAN.to_le_bytes());
            e.3[4..8].copy_from_slice(&f32::INFINITY.to_le_bytes());
            e.3[8..12].copy_from_slice(&f32::NEG_INFINITY.to_le_bytes());
        });
        let (code, err) = run_embeddings(&dir, &fixture_inputs());
        assert_eq!(code, 0, "{err}");
        assert!(
            err.contains("warning: parameter \"embeddings.LayerNorm.weight\" holds 1 NaN and 2 infinite value(s) of 36"),
            "{err}"
        );
        let (code, err) = run_embeddings(&root().join(CHECKPOINT), &fixture_inputs());
        assert_eq!(code, 0, "{err}");
        assert!(!err.contains("NaN"), "{err}");
    }

    #[test]
    fn truncated_file_is_reported() {
        let dir = scratch("truncated");
        std::fs::copy(root().join(CHECKPOINT).join("config.json"), dir.join("config.json")).unwrap();
        let bytes = std::fs::read(root().join(CHECKPOINT).join("model.safetensors")).unwrap();
        std::fs::write(dir.join("model.safetensors"), &bytes[..bytes.len() - 100]).unwrap();
        let (code, err) = run_embeddings(&dir, &fixture_inputs());
        expect_error(code, &err, &["model.safetensors"]);
    }

    fn inputs_with(name: &str, ids: Vec<i64>, t: usize) -> std::path::PathBuf {
        let dir = scratch(name);
        let path = dir.join("inputs.safetensors");
        let types = vec![0i64; ids.len()];
        let as_bytes = |v: &[i64]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
        let shape = [ids.len() / t, t];
        lmc_runtime::safetensors::write_safetensors(
            &path,
            &[
                ("input_ids", DType::I64, &shape, &as_bytes(&ids)),
                ("token_type_ids", DType::I64, &shape, &as_bytes(&types)),
            ],
        )
        .unwrap();
        path
    }

    #[test]
    fn token_id_out_of_range() {
        let inputs = inputs_with("token_range", vec![1, 2, 99, 4], 4);
        let (code, err) = run_embeddings(&root().join(CHECKPOINT), &inputs);
        expect_error(code, &err, &["input_ids", "99"]);
    }

    #[test]
    fn sequence_longer_than_position_table() {
        let inputs = inputs_with("too_long", vec![1; 41], 41);
        let (code, err) = run_embeddings(&root().join(CHECKPOINT), &inputs);
        expect_error(code, &err, &["41", "40", "embeddings.position_embeddings.weight"]);
    }

    #[test]
    fn unknown_model_name() {
        let r = lmc(&["emit", "--stage", "ir", "models/bert.model:BertEmbedding"]);
        expect_error(r.status.code().unwrap(), &String::from_utf8_lossy(&r.stderr), &["BertEmbeddings"]);
    }
}

/// A reader that stops early (`lmc emit ... | head`) ends `lmc` quietly, not with a crash report.
#[test]
fn closed_stdout_is_not_a_crash() {
    use std::io::Read;
    let mut child = Command::new(lmc_bin())
        .args(["emit", "models/bert.model:BertModel", "--stage", "mlir"])
        .current_dir(root())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run lmc");
    let mut first = [0u8; 16];
    child
        .stdout
        .take()
        .expect("piped stdout")
        .read_exact(&mut first)
        .expect("some output");
    // The pipe's read end is dropped here, with most of the module unwritten.
    let out = child.wait_with_output().expect("wait for lmc");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("crashed") && !stderr.contains("panicked"), "{stderr}");
}

/// Each `tests/ui/*.model` is checked with `lmc check`; its stderr must equal the `.stderr` file
/// beside it. `LMC_BLESS=1` rewrites the expectations.
#[test]
fn ui_diagnostics() {
    let dir = root().join("tests/ui");
    let mut cases: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "model"))
        .collect();
    cases.sort();
    assert!(!cases.is_empty());
    let bless = std::env::var_os("LMC_BLESS").is_some();
    let mut failures = Vec::new();
    for case in cases {
        let rel = case.strip_prefix(root()).unwrap().to_str().unwrap().to_string();
        let r = lmc(&["check", &rel]);
        let stderr = String::from_utf8_lossy(&r.stderr).into_owned();
        assert!(!stderr.contains("panicked"), "{rel}: {stderr}");
        let has_error = stderr.contains("error[") || stderr.contains("error:");
        assert_eq!(r.status.code(), Some(if has_error { 1 } else { 0 }), "{rel}: {stderr}");
        let expected_path = case.with_extension("stderr");
        if bless {
            std::fs::write(&expected_path, &stderr).unwrap();
            continue;
        }
        let expected = std::fs::read_to_string(&expected_path).unwrap_or_default();
        if expected != stderr {
            failures.push(format!("{rel}:\n--- expected\n{expected}\n--- got\n{stderr}"));
        }
    }
    assert!(
        failures.is_empty(),
        "{} UI test(s) differ (LMC_BLESS=1 to accept):\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// The `.model` files of a directory of the repository, sorted.
fn model_files(dir: &str) -> Vec<String> {
    let mut files: Vec<String> = std::fs::read_dir(root().join(dir))
        .unwrap()
        .filter_map(|e| {
            let name = e.unwrap().file_name().into_string().unwrap();
            name.ends_with(".model").then(|| format!("{dir}/{name}"))
        })
        .collect();
    files.sort();
    files
}

/// Every shipped model file (and the standard library) passes `lmc check`, without warnings.
#[test]
fn shipped_models_check() {
    let mut args = vec!["check".to_string()];
    args.extend(model_files("models"));
    args.extend(model_files("models/std"));
    assert!(args.len() > 8, "{args:?}");
    let r = lmc(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    assert!(r.stderr.is_empty(), "{}", String::from_utf8_lossy(&r.stderr));
}

/// Every shipped model file, the standard library and the op corpus are in `lmc fmt`'s
/// canonical layout.
#[test]
fn shipped_models_are_formatted() {
    let mut args = vec!["fmt".to_string(), "--check".to_string()];
    args.extend(model_files("models"));
    args.extend(model_files("models/std"));
    args.extend(model_files("tests/corpus"));
    let r = lmc(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
}

/// Formatting is idempotent, keeps every comment, and does not change what a file means.
#[test]
fn fmt_is_idempotent_and_keeps_comments() {
    let mut files = vec![
        root().join("models/bert.model"),
        root().join("models/std/nn.model"),
        root().join("tests/corpus/ops.model"),
    ];
    files.extend(
        std::fs::read_dir(root().join("tests/ui"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "model")),
    );
    let comments = |text: &str| {
        text.lines()
            .filter_map(|l| l.find('#').map(|i| l[i..].trim_end().to_string()))
            .collect::<Vec<_>>()
    };
    for path in files {
        let Ok(text) = std::fs::read_to_string(&path) else { continue };
        let name = path.display().to_string();
        let Ok(ast) = lmc_grammar::parse_file(&text, 0) else { continue };
        let once = lmc_grammar::format_file(&ast, &lmc_grammar::SourceFile::new(&name, text.clone()));
        let reparsed = lmc_grammar::parse_file(&once, 0).unwrap_or_else(|d| panic!("{name}: formatted text does not parse: {d:?}\n{once}"));
        let twice = lmc_grammar::format_file(&reparsed, &lmc_grammar::SourceFile::new(&name, once.clone()));
        assert_eq!(once, twice, "{name}: formatting is not idempotent");
        assert_eq!(comments(&text), comments(&once), "{name}: comments changed");
        // Same meaning: every model checks to the same IR (locations aside).
        let dir = path.parent().unwrap();
        if let (Ok(a), Ok(b)) = (
            lmc_core::load_source(&name, &text, Some(dir)),
            lmc_core::load_source(&name, &once, Some(dir)),
        ) {
            for model in lmc_core::model_names(&a) {
                let ir = |p: &lmc_core::Program| match lmc_core::check_model(p, Some(&model), &ConfigOverrides::default()) {
                    Ok(c) => c
                        .graph
                        .print()
                        .lines()
                        .map(|l| l.split("  @").next().unwrap().to_string())
                        .collect::<Vec<_>>(),
                    Err(_) => vec!["error".to_string()],
                };
                assert_eq!(ir(&a), ir(&b), "{name}:{model}: formatting changed the model");
            }
        }
    }
}

/// A variant is the model with one line changed: `hidden_act = relu` swaps the activation of
/// every layer, reads the same checkpoint, and computes something else.
#[test]
fn variant_changes_one_line() {
    let dir = scratch("variant");
    let inputs = format!("{CHECKPOINT}/inputs_intermediate.safetensors");
    let mut results = Vec::new();
    for model in ["BertFeedForwardStack", "BertFeedForwardStackRelu"] {
        let spec = format!("models/bert.model:{model}");
        let ir = lmc(&["emit", "--stage", "ir", &spec, "--config", CHECKPOINT]);
        assert!(ir.status.success(), "{}", String::from_utf8_lossy(&ir.stderr));
        let ir = String::from_utf8(ir.stdout).unwrap();
        let expect = if model.ends_with("Relu") {
            ("relu ", "gelu ")
        } else {
            ("gelu ", "relu ")
        };
        assert!(ir.contains(expect.0) && !ir.contains(expect.1), "{model}:\n{ir}");
        let out = dir.join(format!("{model}.safetensors"));
        results.push(run_outputs(&spec, CHECKPOINT, &inputs, &out, &[]).remove(0).2);
    }
    assert!(
        max_abs_diff(&results[0], &results[1]) > 1e-3,
        "the variant computed the same outputs"
    );
}

/// The standard library's position schemes reproduce reference implementations: transformers'
/// LLaMA rotary embedding and T5 relative buckets, the sinusoidal formula, and the ALiBi paper's
/// slopes.
#[test]
fn position_schemes_match_references() {
    let dir = scratch("positions");
    let fixtures = "tests/fixtures/positions";
    for (model, fixture) in [
        ("Rotary", "rotary"),
        ("Sinusoid", "sinusoid"),
        ("Alibi", "alibi"),
        ("T5Buckets", "t5_buckets"),
    ] {
        let out = dir.join(format!("{model}.safetensors"));
        let r = lmc(&[
            "run",
            &format!("tests/corpus/positions.model:{model}"),
            "--weights",
            &format!("{fixtures}/empty.safetensors"),
            "--inputs",
            &format!("{fixtures}/inputs_{fixture}.safetensors"),
            "-o",
            out.to_str().unwrap(),
        ]);
        assert!(r.status.success(), "{model}: {}", String::from_utf8_lossy(&r.stderr));
        let got = read_f32_tensors(&out);
        let want = read_f32_tensors(&root().join(format!("{fixtures}/expected_{fixture}.safetensors")));
        assert_eq!(got.len(), want.len(), "{model}: outputs");
        for ((gn, gs, gv), (wn, ws, wv)) in got.iter().zip(&want) {
            assert_eq!((gn, gs), (wn, ws), "{model}: name and shape");
            let err = max_abs_diff(gv, wv);
            assert!(err <= 1e-5, "{model}.{gn}: max abs error {err}");
        }
    }
}

/// Every position scheme is a one-line variant of BertModel that runs on the same checkpoint
/// and changes the result; an odd head width for RoPE is a diagnostic, not a crash.
#[test]
fn position_variants_run_on_the_bert_checkpoint() {
    let dir = scratch("position_variants");
    let inputs = format!("{CHECKPOINT}/inputs_model.safetensors");
    let run = |model: &str, extra: &[&str]| {
        let out = dir.join(format!("{}.safetensors", model.rsplit(':').next().unwrap()));
        let mut args = vec![
            "run",
            model,
            "--weights",
            CHECKPOINT,
            "--inputs",
            &inputs,
            "-o",
            out.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        let r = lmc(&args);
        (r, out)
    };
    let (r, base) = run("models/bert.model:BertModel", &[]);
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    let base = read_f32_tensors(&base).remove(0).2;
    for variant in ["BertSinusoidal", "BertALiBi", "BertNoPositions"] {
        let (r, out) = run(&format!("models/bert.model:{variant}"), &[]);
        assert!(r.status.success(), "{variant}: {}", String::from_utf8_lossy(&r.stderr));
        let values = read_f32_tensors(&out).remove(0).2;
        assert!(values.iter().all(|v| v.is_finite()), "{variant}: non-finite output");
        assert!(max_abs_diff(&values, &base) > 1e-3, "{variant}: same output as the learned table");
    }
    // 4 heads of width 9 cannot be rotated in halves: a diagnostic, not a crash.
    let (r, _) = run("models/bert.model:BertRoPE", &["--set", "num_attention_heads=4"]);
    assert_eq!(r.status.code(), Some(1));
    let err = String::from_utf8_lossy(&r.stderr);
    assert!(err.contains("E0105") && err.contains("9 is not divisible by 2"), "{err}");
    // The fixture's 3 heads of width 12 can.
    let (r, out) = run("models/bert.model:BertRoPE", &[]);
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    let values = read_f32_tensors(&out).remove(0).2;
    assert!(max_abs_diff(&values, &base) > 1e-3, "BertRoPE: same output as the learned table");
}

/// GPT-2 (GPT2LMHeadModel, tied head, causal + padding mask) reproduces transformers' logits.
#[test]
fn gpt2_matches_hugging_face() {
    assert_matches_fixture("models/gpt2.model", "tests/fixtures/gpt2_tiny", 1e-4);
}

/// T5 (T5ForConditionalGeneration: a deeper encoder than decoder, relative buckets shared by
/// each stack's layers, cross-attention) reproduces transformers' logits with a ReLU and with a
/// gated-GELU feed-forward, and with a tied, rescaled head and an untied one.
#[test]
fn t5_matches_hugging_face() {
    assert_matches_fixture("models/t5.model:T5ForConditionalGeneration", "tests/fixtures/t5_tiny", 1e-4);
    assert_matches_fixture("models/t5.model:T5ForConditionalGeneration", "tests/fixtures/t5_gated", 1e-4);
    assert_matches_fixture("models/t5.model:T5ForConditionalGeneration", "tests/fixtures/t5_untied", 1e-4);
}

/// ELECTRA's discriminator (ElectraForPreTraining) and generator (ElectraForMaskedLM, tied
/// head), with embeddings narrower than the hidden size, reproduce transformers' logits.
#[test]
fn electra_matches_hugging_face() {
    assert_matches_fixture(
        "models/electra.model:ElectraForPreTraining",
        "tests/fixtures/electra_discriminator",
        1e-4,
    );
    assert_matches_fixture("models/electra.model:ElectraForMaskedLM", "tests/fixtures/electra_generator", 1e-4);
}

/// LLaMA (LlamaForCausalLM: RMSNorm, RoPE with a nested `rope_theta`, SwiGLU, grouped-query
/// attention) reproduces transformers' logits.
#[test]
fn llama_matches_hugging_face() {
    assert_matches_fixture("models/llama.model", "tests/fixtures/llama_tiny", 1e-4);
}

/// The lines inside every `scf.for` of a printed MLIR module (nested loops included; not
/// `scf.forall`, the loop over a scan's blocks of lanes).
fn loop_bodies(mlir: &str) -> Vec<&str> {
    let mut inside = Vec::new();
    let mut depth = 0i64;
    let mut loop_depths: Vec<i64> = Vec::new();
    for line in mlir.lines() {
        if !loop_depths.is_empty() {
            inside.push(line);
        }
        let opens = line.matches('{').count() as i64;
        let closes = line.matches('}').count() as i64;
        if line.contains("scf.for ") && opens > closes {
            loop_depths.push(depth);
        }
        depth += opens - closes;
        while loop_depths.last().is_some_and(|d| depth <= *d) {
            loop_depths.pop();
        }
    }
    inside
}

/// A scan is one loop over time (per block of lanes, where it has them) whose steps allocate
/// nothing: the body's temporaries are allocated once before the loop, states are updated in
/// place, and each step's output is written into its slice of the result. Checked on the bufferized module of every model with a
/// scan, and snapshotted for the op corpus' scans.
#[test]
fn scan_steps_allocate_nothing() {
    for (spec, config) in [
        ("models/rwkv.model:RwkvForCausalLM", "tests/fixtures/rwkv_tiny"),
        ("models/mamba.model:MambaForCausalLM", "tests/fixtures/mamba_tiny"),
        ("models/lstm.model:ElmoLstmEncoder", "tests/fixtures/lstm_tiny"),
        (
            "models/linear_transformer.model:LinearTransformerLM",
            "tests/fixtures/linear_transformer_tiny",
        ),
    ] {
        let out = lmc(&["emit", "--stage", "buffers", spec, "--config", config]);
        assert!(out.status.success(), "{spec}: {}", String::from_utf8_lossy(&out.stderr));
        let text = String::from_utf8(out.stdout).unwrap();
        let body = loop_bodies(&text);
        assert!(body.iter().any(|l| l.contains("linalg.generic")), "{spec}: no scan loop found");
        for l in body {
            for banned in ["memref.alloc", "memref.copy", "memref.dealloc", "call @"] {
                assert!(!l.contains(banned), "{spec}: a scan step does `{banned}`: {l}");
            }
        }
    }
    let p = program("tests/corpus/ops.model");
    let g = lmc_core::check_model(&p, Some("Recurrences"), &ConfigOverrides::default())
        .unwrap()
        .graph;
    insta::assert_snapshot!(
        "corpus_Recurrences_buffers",
        lmc_codegen::emit_buffers(&g, &lmc_codegen::Target::AVX2).unwrap()
    );
}

/// A scan whose recurrence is independent per channel is one loop over time per block of
/// channels: an `scf.forall` over the blocks (threads, once lowered) around one `scf.for` over
/// time, calling nothing. A step's chain of elementwise math is one loop nest: Mamba's step is
/// two (the state update `exp(Δ·A)·h + Δ·B·x`, and `Σ_n h·C`); RWKV's WKV step keeps a nest
/// for each value it reads more than once. Every layer's scan is split so.
#[test]
fn scans_are_fused_loops_per_block_of_channels() {
    for (spec, config, layers, blocks, nests_per_step) in [
        ("models/mamba.model:MambaForCausalLM", "tests/fixtures/mamba_tiny", 2, 3, 2),
        ("models/rwkv.model:RwkvForCausalLM", "tests/fixtures/rwkv_tiny", 3, 2, 9),
    ] {
        let out = lmc(&["emit", "--stage", "mlir", spec, "--config", config]);
        assert!(out.status.success(), "{spec}: {}", String::from_utf8_lossy(&out.stderr));
        let text = String::from_utf8(out.stdout).unwrap();
        assert_eq!(
            text.matches("= scf.forall (%s").count(),
            layers,
            "{spec}: one blocked scan per layer"
        );
        assert_eq!(text.matches("= scf.for %s").count(), layers, "{spec}: every scan is blocked");
        let start = text.find("_blocks = arith.constant").expect("a blocked scan");
        let end = start + text[start..].find("scf.forall.in_parallel").expect("the end of the blocks");
        let scan = &text[start..end];
        assert!(
            scan.starts_with(&format!("_blocks = arith.constant {blocks} : index")),
            "{spec}: {scan}"
        );
        assert_eq!(scan.matches("scf.for ").count(), 1, "{spec}: one loop over time");
        assert_eq!(scan.matches("linalg.generic").count(), nests_per_step, "{spec}: {scan}");
        assert!(!scan.contains("call @"), "{spec}: a scan step calls a function");
    }
}

/// Buffers are freed right after their last use, not all at the end of the forward: in BERT's
/// bufferized forward function, every dealloc but those of buffers read by the last op comes
/// before that op.
#[test]
fn buffers_are_freed_after_their_last_use() {
    let out = lmc(&["emit", "--stage", "buffers", "models/bert.model:BertModel"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8(out.stdout).unwrap();
    let start = text.find("func.func @forward").expect("the forward function");
    let forward: Vec<&str> = text[start..].lines().take_while(|l| *l != "  }").collect();
    let last_call = forward.iter().rposition(|l| l.contains("call @")).expect("calls");
    let deallocs: Vec<usize> = (0..forward.len()).filter(|&i| forward[i].contains("memref.dealloc")).collect();
    let late = deallocs.iter().filter(|&&i| i > last_call).count();
    assert!(
        deallocs.len() > 100 && late <= 3,
        "{late} of {} deallocs after the last call",
        deallocs.len()
    );
}

/// `lmc ab` compares variants on one checkpoint: a variant identical to the base (UniLM's
/// bidirectional mask is BERT's) gives the same outputs; a different one (ALiBi) does not; a
/// length past the learned position table is reported for that variant alone; a variant that
/// does not exist is reported while the others run; the JSON report holds every number.
#[test]
fn ab_compares_variants() {
    let dir = scratch("ab");
    let json = dir.join("ab.json");
    let r = lmc(&[
        "ab",
        "models/bert.model:BertModel",
        "BertALiBi",
        "models/unilm.model:UniLMBidirectional",
        "models/bert.model:NoSuchModel",
        "--weights",
        CHECKPOINT,
        "--batch",
        "2",
        "--lengths",
        "8,48",
        "--runs",
        "5",
        "--warmup",
        "1",
        // One thread: a parallel loop's iterations each hold their temporaries, and how many
        // threads hold theirs at the same moment is up to the scheduler, so the activation peak
        // is only deterministic, and comparable across variants, on one thread.
        "--threads",
        "1",
        "--json",
        json.to_str().unwrap(),
    ]);
    let stdout = String::from_utf8_lossy(&r.stdout);
    let stderr = String::from_utf8_lossy(&r.stderr);
    assert!(r.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.contains("cannot run past 40"), "{stdout}");
    assert!(stdout.contains("not compiled"), "{stdout}");
    let report: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let variants = report["variants"].as_array().unwrap();
    assert_eq!(variants.len(), 4);
    assert_eq!(variants[0]["params"], variants[2]["params"]);
    assert!(variants[3]["error"].is_string());
    let cells = report["cells"].as_array().unwrap();
    assert_eq!(cells.len(), 2);
    let short = &cells[0];
    for row in short["variants"].as_array().unwrap().iter().take(3) {
        assert_eq!(row["times_ms"].as_array().unwrap().len(), 5, "{row}");
        assert!(row["flops_per_token"].as_f64().unwrap() > 0.0);
    }
    let comparisons = short["comparisons"].as_array().unwrap();
    assert_eq!(comparisons.len(), 2);
    for c in comparisons {
        let (low, ratio, high) = (
            c["low"].as_f64().unwrap(),
            c["ratio"].as_f64().unwrap(),
            c["high"].as_f64().unwrap(),
        );
        assert!(low <= ratio && ratio <= high, "{c}");
    }
    let alibi = &comparisons[0]["divergence"];
    assert!(alibi["max_abs_diff"].as_f64().unwrap() > 1e-3, "{alibi}");
    let same = &comparisons[1]["divergence"];
    assert_eq!(same["max_abs_diff"].as_f64().unwrap(), 0.0, "{same}");
    // At length 48 the learned table (40 rows) rules out both learned-position variants; ALiBi
    // still runs, with nothing left to compare it to.
    let long = &cells[1];
    for k in [0, 2] {
        assert!(long["variants"][k]["skipped"].as_str().unwrap().contains("cannot run past 40"));
    }
    assert_eq!(long["variants"][1]["times_ms"].as_array().unwrap().len(), 5);
    assert!(long["comparisons"].as_array().unwrap().is_empty());
    // Activation memory per variant: on one thread the same network holds the same buffers, to
    // the byte; six times the length holds more than three times as much.
    let bytes = |cell: &serde_json::Value, k: usize| cell["variants"][k]["activation_bytes"].as_u64().unwrap() as f64;
    assert!(bytes(short, 0) > 0.0);
    assert_eq!(bytes(short, 0), bytes(short, 2), "{short}");
    assert!(bytes(long, 1) > 3.0 * bytes(short, 1), "{long}");
}

/// `lmc ab EXPERIMENT.yaml` runs what the file names: paths relative to it, a bare name after a
/// file, per-variant `set` over the shared one, labels; it writes the same report as JSON, CSV
/// and a self-contained HTML page. A typo in a key is an error at its line with the closest key.
#[test]
fn ab_runs_an_experiment_file() {
    let dir = scratch("experiment");
    let root_path = root();
    let yaml = dir.join("layers.yaml");
    std::fs::write(
        &yaml,
        format!(
            "title: One layer against two\n\
             variants:\n  - model: {}/models/bert.model:BertModel\n    label: one layer\n    set: {{ num_hidden_layers: 1 }}\n\
             \x20 - model: BertALiBi\n    label: two, ALiBi\n\
             weights: random\nseed: 3\n\
             set: {{ hidden_size: 32, num_attention_heads: 2, intermediate_size: 64, num_hidden_layers: 2, max_position_embeddings: 16 }}\n\
             lengths: [8, 24]\nruns: 3\nwarmup: 1\n",
            root_path.display()
        ),
    )
    .unwrap();
    let (json, csv, html) = (dir.join("r.json"), dir.join("r.csv"), dir.join("r.html"));
    let r = lmc(&[
        "ab",
        yaml.to_str().unwrap(),
        "--json",
        json.to_str().unwrap(),
        "--csv",
        csv.to_str().unwrap(),
        "--html",
        html.to_str().unwrap(),
    ]);
    let stdout = String::from_utf8_lossy(&r.stdout);
    assert!(r.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&r.stderr));
    assert!(stdout.starts_with("One layer against two"), "{stdout}");
    let report: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let variants = report["variants"].as_array().unwrap();
    assert_eq!(variants[0]["label"], "one layer");
    assert_eq!(variants[1]["label"], "two, ALiBi");
    // The variant's own `set` won: one layer has fewer parameters than two.
    assert!(variants[0]["params"].as_u64().unwrap() < variants[1]["params"].as_u64().unwrap());
    // Past the learned table (16 positions) only ALiBi runs.
    let cells = report["cells"].as_array().unwrap();
    assert!(cells[1]["variants"][0]["skipped"].as_str().unwrap().contains("cannot run past 16"));
    let csv = std::fs::read_to_string(&csv).unwrap();
    assert_eq!(csv.lines().count(), 1 + 4, "{csv}");
    assert!(csv.contains("\"two, ALiBi\""), "{csv}");
    let html = std::fs::read_to_string(&html).unwrap();
    assert!(html.contains("<title>One layer against two</title>") && html.matches("<svg").count() == 4);

    let typo = dir.join("typo.yaml");
    std::fs::write(&typo, "variants:\n  - model: a.model:A\n  - model: B\nlenghts: [8]\n").unwrap();
    let r = lmc(&["ab", typo.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&r.stderr);
    assert_eq!(r.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("typo.yaml:4:1") && stderr.contains("did you mean `lengths`?"),
        "{stderr}"
    );
}

/// `lmc ab --eval-text` scores each variant on a text with the checkpoint's tokenizer: the loss
/// transformers computes on the same windows, and its exponential; a checkpoint without a
/// tokenizer is an error before anything is compiled.
#[test]
fn ab_scores_a_text() {
    let dir = scratch("ab_eval");
    let json = dir.join("r.json");
    let fixture = "tests/fixtures/gpt2_tiny";
    let r = lmc(&[
        "ab",
        "models/gpt2.model:GPT2LMHeadModel",
        "GPT2ALiBi",
        "--weights",
        fixture,
        "--eval-text",
        &format!("{fixture}/eval.txt"),
        "--lengths",
        "8,16",
        "--runs",
        "3",
        "--warmup",
        "0",
        "--json",
        json.to_str().unwrap(),
        "--html",
        dir.join("r.html").to_str().unwrap(),
    ]);
    let stdout = String::from_utf8_lossy(&r.stdout);
    assert!(r.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&r.stderr));
    let html = std::fs::read_to_string(dir.join("r.html")).unwrap();
    assert!(
        html.contains("Perplexity on the text") && html.contains("<th>perplexity</th>"),
        "the HTML report shows the scores"
    );
    let expected: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(root().join(fixture).join("eval_expected.json")).unwrap()).unwrap();
    let report: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    for cell in report["cells"].as_array().unwrap() {
        let want = &expected[cell["length"].to_string()];
        let base = &cell["variants"][0];
        let loss = base["loss"].as_f64().unwrap();
        assert!((loss - want["loss"].as_f64().unwrap()).abs() < 1e-4, "{loss} vs {want}");
        assert_eq!(base["eval_windows"], want["windows"]);
        assert!((base["perplexity"].as_f64().unwrap() - loss.exp()).abs() < 1e-9);
        // ALiBi on GPT-2's weights predicts otherwise.
        assert_ne!(cell["variants"][1]["loss"], base["loss"]);
    }
    // Peak RSS per variant, where Linux lets a process reset its peak: at least its weights.
    if std::fs::write("/proc/self/clear_refs", "5").is_ok() {
        let rss = report["cells"][0]["variants"][0]["peak_rss_bytes"].as_u64().unwrap();
        assert!(rss > 141_628, "peak RSS {rss} is below the checkpoint's size");
    }

    lmc_fails(
        &[
            "ab",
            "models/bert.model:BertModel",
            "BertALiBi",
            "--weights",
            CHECKPOINT,
            "--eval-text",
            "tests/fixtures/gpt2_tiny/eval.txt",
        ],
        &["tokenizer.json: the checkpoint has no tokenizer"],
    );
}

/// `lmc bench` times one model and writes its numbers (`median_ms` for the peers' scripts); a
/// length past the learned position table is an error naming the table.
#[test]
fn bench_reports_one_model() {
    let dir = scratch("bench");
    let json = dir.join("bench.json");
    let spec = "models/bert.model:BertModel";
    let common = ["--weights", CHECKPOINT, "--batch", "2", "--runs", "3", "--warmup", "1"];
    let mut args = vec!["bench", spec, "--seq", "16", "--json", json.to_str().unwrap()];
    args.extend(common);
    let r = lmc(&args);
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    let report: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(report["times_ms"].as_array().unwrap().len(), 3);
    let (p10, median, p90) = (
        report["p10_ms"].as_f64().unwrap(),
        report["median_ms"].as_f64().unwrap(),
        report["p90_ms"].as_f64().unwrap(),
    );
    assert!(0.0 < p10 && p10 <= median && median <= p90, "{report}");
    assert!(report["gflop"].as_f64().unwrap() > 0.0);
    assert!(report["activation_bytes"].as_u64().unwrap() > 0, "{report}");
    let mut args = vec!["bench", spec, "--seq", "41"];
    args.extend(common);
    let r = lmc(&args);
    expect_error(
        r.status.code().unwrap_or(-1),
        &String::from_utf8_lossy(&r.stderr),
        &["cannot run past 40", "embeddings.position_embeddings.weight"],
    );
}

/// UniLM's left-to-right and seq2seq masks on the BERT network reproduce transformers' BertModel
/// given the same masks as [B, 1, T, T] tensors.
#[test]
fn unilm_masks_match_hugging_face() {
    let dir = scratch("unilm");
    let inputs = format!("{CHECKPOINT}/inputs_unilm.safetensors");
    for (variant, expected) in [("UniLMLeftToRight", "causal"), ("UniLMSeq2Seq", "seq2seq")] {
        let out = dir.join(format!("{variant}.safetensors"));
        let got = run_outputs(&format!("models/unilm.model:{variant}"), CHECKPOINT, &inputs, &out, &[])
            .remove(0)
            .2;
        let want = read_f32_tensors(&root().join(format!("{CHECKPOINT}/expected_unilm_{expected}.safetensors")))
            .remove(0)
            .2;
        let err = max_abs_diff(&got, &want);
        assert!(err <= 1e-5, "{variant}: max abs error {err}");
        // The same mask given whole, as a [B, T, T] `attention_mask` input.
        let inputs = format!("{CHECKPOINT}/inputs_unilm_matrix_{expected}.safetensors");
        let out = dir.join(format!("matrix_{expected}.safetensors"));
        let got = run_outputs("models/unilm.model:UniLMMaskMatrix", CHECKPOINT, &inputs, &out, &[])
            .remove(0)
            .2;
        let err = max_abs_diff(&got, &want);
        assert!(err <= 1e-5, "UniLMMaskMatrix with the {expected} mask: max abs error {err}");
    }
}

/// Masks are index functions evaluated inside the attention kernel: no model's MLIR holds a
/// boolean tensor, and the mask's inputs are read element by element there.
#[test]
fn masks_are_never_materialised() {
    for (file, model, config) in [
        ("models/bert.model", "BertModel", CHECKPOINT),
        ("models/unilm.model", "UniLMSeq2Seq", CHECKPOINT),
        ("models/unilm.model", "UniLMMaskMatrix", CHECKPOINT),
        ("models/gpt2.model", "GPT2LMHeadModel", "tests/fixtures/gpt2_tiny"),
        ("models/t5.model", "T5ForConditionalGeneration", "tests/fixtures/t5_tiny"),
    ] {
        let out = lmc(&["emit", "--stage", "mlir", &format!("{file}:{model}"), "--config", config]);
        assert!(out.status.success(), "{model}: {}", String::from_utf8_lossy(&out.stderr));
        let mlir = String::from_utf8(out.stdout).unwrap();
        assert!(mlir.contains("linalg.generic"), "{model}: no kernels emitted");
        // (Vectors of booleans are registers: a tall attention block's "row sees no key".)
        let boolean_tensor = mlir
            .match_indices("tensor<")
            .any(|(at, _)| mlir[at..].split('>').next().is_some_and(|ty| ty.ends_with("xi1")));
        assert!(!boolean_tensor, "{model}: a boolean (mask) tensor is materialised");
        assert!(
            mlir.contains("%masked = arith.select"),
            "{model}: no mask evaluated in the attention kernel"
        );
    }
}

/// A variant without a checkpoint runs on seeded random weights, the same ones every time.
#[test]
fn random_weights_are_seeded() {
    let dir = scratch("random_weights");
    let inputs = format!("{CHECKPOINT}/inputs_model.safetensors");
    let mut outputs = Vec::new();
    for (name, seed) in [("a", "7"), ("b", "7"), ("c", "8")] {
        let out = dir.join(format!("{name}.safetensors"));
        let r = lmc(&[
            "run",
            "models/bert.model:BertALiBi",
            "--random-weights",
            "--seed",
            seed,
            "--config",
            CHECKPOINT,
            "--inputs",
            &inputs,
            "-o",
            out.to_str().unwrap(),
        ]);
        assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
        outputs.push(read_f32_tensors(&out).remove(0).2);
    }
    assert_eq!(outputs[0], outputs[1], "the same seed gives the same weights");
    assert!(max_abs_diff(&outputs[0], &outputs[2]) > 1e-3, "another seed gives other weights");
    assert!(outputs[0].iter().all(|v| v.is_finite()));
}
