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
            // BertModel's MLIR (250 KB) and the LLVM IR (90 KB a model) are checked for the lines
            // that matter instead, in `focused`.
            if *model != "BertModel" {
                insta::assert_snapshot!(format!("{model}_mlir"), lmc_codegen::emit_mlir(&g, &lmc_codegen::Target::AVX2));
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

    /// `exp`, `erf` and `tanh` are computed by lmc's own arithmetic (vectorizable), not libm:
    /// over their whole f32 range, including overflow, underflow through subnormals,
    /// infinities and NaN, they stay within a few ulp (exp, tanh) or 3e-7 (erf, and relatively
    /// 1e-6 near zero) of f64 references; sigmoid and GELU follow.
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
            let [e, r, s, gelu, tanh] = [0, 1, 2, 3, 4].map(|i| outputs[i].as_f32().unwrap().to_vec());
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
                    ("tanh", tanh[i], x64.tanh(), 1e-44, 2.5e-7),
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

    /// The corpus models whose MLIR is checked for the lines that matter (`mod focused`) instead
    /// of snapshotted: hundreds of KB of text no one reviews.
    pub(super) const FOCUSED: &[&str] = &[
        "TiledAttention",
        "LongAttention",
        "Attentions",
        "NamedMasks",
        "StdAttention",
        "Kernels",
        "Composition",
        "CompositionPlain",
        "Recurrences",
    ];

    /// A corpus model's MLIR, for AVX2's 8 lanes (as the snapshots).
    pub(super) fn corpus_mlir(model: &str) -> String {
        let p = program(FILE);
        match lmc_core::check_model(&p, Some(model), &ConfigOverrides::default()) {
            Ok(c) => lmc_codegen::emit_mlir(&c.graph, &lmc_codegen::Target::AVX2),
            Err(e) => panic!("{model}: {e:?}"),
        }
    }

    #[test]
    fn mlir_snapshots() {
        let graphs = graphs();
        for name in FOCUSED {
            assert!(graphs.iter().any(|g| g.model == *name), "{name} is not in the corpus");
        }
        for g in graphs.into_iter().filter(|g| !FOCUSED.contains(&g.model.as_str())) {
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
                let want = match &want.data {
                    Data::F32(want) => want,
                    Data::Int(want) => {
                        assert_eq!(out.as_i64().unwrap(), want.as_slice(), "{}.{} ({shape})", g.model, decl.name);
                        continue;
                    }
                };
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

/// Focused checks, in the manner of LLVM's FileCheck (`check_lines`), of the emitted text too
/// large to review as a snapshot: the op corpus's attentions, kernels, blocks and scans, BERT's
/// MLIR and the LLVM IR of its small parts. Each checks the lines that matter for what the model
/// exists to test (its comment in `tests/corpus/ops.model`); the numerics are checked apart
/// (`corpus::compiled_code_matches_the_interpreter`, the Hugging Face comparisons).
mod focused {
    use super::*;

    /// The functions `@forward` calls at source position `at` (`"file":line:col`, as in their
    /// `loc`), in the order of the calls.
    fn calls_at<'a>(functions: &'a [(String, String)], at: &str) -> Vec<&'a str> {
        let forward = mlir_function(functions, "forward");
        let names: Vec<&str> = forward
            .lines()
            .filter(|l| l.contains("func.call @") && l.ends_with(&format!("loc({at})")))
            .map(|l| l.split("func.call @").nth(1).unwrap().split('(').next().unwrap())
            .collect();
        assert!(!names.is_empty(), "@forward calls nothing at {at}");
        names.iter().map(|n| mlir_function(functions, n)).collect()
    }

    /// A location in the op corpus, as the emitted MLIR names it: `"tests/corpus/ops.model":L:C`.
    fn corpus_at(line_col: &str) -> String {
        format!("\"tests/corpus/ops.model\":{line_col}")
    }

    /// The one function `@forward` calls at `at`.
    fn called_at<'a>(functions: &'a [(String, String)], at: &str) -> &'a str {
        let called = calls_at(functions, at);
        assert_eq!(called.len(), 1, "@forward makes {} calls at {at}", called.len());
        called[0]
    }

    /// The names of the functions `@forward` calls, in order.
    fn callees(functions: &[(String, String)]) -> Vec<String> {
        mlir_function(functions, "forward")
            .lines()
            .filter_map(|l| l.split("func.call @").nth(1))
            .map(|l| l.split('(').next().unwrap().to_string())
            .collect()
    }

    /// An attention, as `Emitter::emit_attention` writes it for the CPU: a function with an
    /// `scf.forall` over batch, heads and blocks of 32 query rows. A block computes its scores
    /// against the keys from the first to the last one of its rows sees under the mask (two
    /// `scf.while` scans in from both ends: keys hidden from the whole block are never read),
    /// else against all. A tall block (8 rows or more) keeps its scores keys by queries and
    /// takes the keys 256 at a time with an online softmax: each tile raises the running
    /// maxima, the sums and weighted values so far are rescaled by exp(old max - new max), a
    /// query that has seen no key yet shifts by 0 (not NaN). A short block keeps them queries
    /// by keys. Each block is written into its slice of the result.
    struct Attention<'a> {
        /// A mask, so a range of keys per block.
        masked: bool,
        /// Query heads per key head (grouped-query attention), if more than one.
        group: Option<u32>,
        /// The scale, as printed.
        scale: &'a str,
        /// No mask or score function and a positive scale: the tall block folds the scale into
        /// its exponentials (no scores generic of its own).
        folded: bool,
        /// The lines of the scores generic after the scaling (the score function's, then the
        /// mask's), in order, as in both blocks.
        scored: &'a [&'a str],
    }

    impl<'a> Attention<'a> {
        /// A masked attention scaled by 1/2 (the corpus's head width of 4), with `scored` lines.
        fn masked(scored: &'a [&'a str]) -> Attention<'a> {
            Attention {
                masked: true,
                group: None,
                scale: "5.0e-1",
                folded: false,
                scored,
            }
        }

        fn patterns(&self) -> Vec<String> {
            let mut p: Vec<String> = Vec::new();
            let mut push = |lines: &[&str]| p.extend(lines.iter().map(|l| l.to_string()));
            // The scores generic's lines, each before the generic's end.
            let scored: Vec<&str> = self.scored.iter().flat_map(|l| ["NOT: linalg.yield", l]).collect();
            push(&[
                "_rows = arith.constant 32 : index",
                "_blocks = arith.ceildivui {{.*}}_rows : index",
                "= scf.forall ({{.*}}_b, {{.*}}_h, {{.*}}_q) in (%in{{.*}}_blocks) shared_outs(",
            ]);
            let group = self.group.map(|g| format!("_group = arith.constant {g} : index"));
            match &group {
                Some(g) => push(&[g, "NEXT: _kh = arith.divui {{.*}}_h, {{.*}}_group : index"]),
                None => push(&["NOT: _kh = "]),
            }
            if self.masked {
                push(&[
                    "_k0 = scf.while (",
                    "scf.condition(",
                    "_kend = scf.while (",
                    "scf.condition(",
                    "_kn = arith.maxsi {{.*}}_span, ",
                ]);
            } else {
                push(&["NOT: scf.while", "_k0 = arith.constant 0 : index"]);
            }
            let key_head = if self.group.is_some() { "_kh" } else { "_h" };
            let keys = format!("_ks = tensor.extract_slice %in{{{{.*}}}}_b, {{{{.*}}}}{key_head}, {{{{.*}}}}_k0, 0]");
            let factor = format!(
                "_factor = arith.constant dense<{}> : vector<8xf32>",
                if self.folded { self.scale } else { "1.0e0" }
            );
            let scale = format!("%scale = arith.constant {} : f32", self.scale);
            push(&[
                &keys,
                "_tall = arith.cmpi uge, {{.*}}_n, {{.*}}_tall_min : index",
                "_block = scf.if {{.*}}_tall -> (",
                &factor,
                "_tile = arith.constant 256 : index",
                "_run:9 = scf.for {{.*}} step {{.*}}_tile iter_args({{.*}}_m0 = {{.*}}_ninf, {{.*}}_l0 = {{.*}}_vzero, {{.*}}_acc = ",
                "_kt = tensor.extract_slice ",
                "vector.fma ",
            ]);
            if self.folded {
                push(&["NOT: _scored = linalg.generic", "_max:4 = scf.for "]);
            } else {
                push(&["_scored = linalg.generic", &scale, "NEXT: %s0 = arith.mulf %raw, %scale : f32"]);
                push(&scored);
                push(&["_max:4 = scf.for "]);
            }
            push(&[
                "arith.maximumf {{.*}}_macc0, ",
                "_none0 = arith.cmpf oeq, {{.*}}_max#0, {{.*}}_ninf",
                "_rd0 = math.fma {{.*}}_m0, {{.*}}_factor, {{.*}}_neg0",
                "_exp:5 = scf.for ",
                "_ed0 = math.fma {{.*}}_es0, {{.*}}_factor, {{.*}}_neg0",
                "_ln0 = math.fma {{.*}}_l0, {{.*}}_re0, {{.*}}_exp#0",
                "vector.fma ",
                "_accn = linalg.generic",
                "scf.yield {{.*}}_max#0, {{.*}}_ln0, {{.*}}_accn : ",
                "_result = linalg.generic",
                "scf.yield {{.*}}_result : ",
                "NEXT: } else {",
                "^bb0(%raw: f32, %o: f32):",
                &scale,
                "NEXT: %s0 = arith.mulf %raw, %scale : f32",
            ]);
            push(&scored);
            push(&[
                "%r = arith.maximumf %a, %acc : f32",
                "%empty = arith.cmpf oeq, %m, %neginf : f32",
                "%r = arith.addf %a, %acc : f32",
                "scf.forall.in_parallel {",
                "NEXT: tensor.parallel_insert_slice {{.*}}_block into {{.*}}_out[",
            ]);
            p
        }

        #[track_caller]
        fn check(&self, what: &str, function: &str) {
            check_lines(what, function, &self.patterns());
        }
    }

    /// A causal mask: key `j` (`%i3`) at or before query row `i` (`%i2`).
    const CAUSAL: &str = "arith.cmpi sle, %i3, %i2 : i64";
    const MASKED: &str = "%masked = arith.select ";
    /// The score or mask is the scaled score itself, nothing more.
    const PLAIN: &[&str] = &["NEXT: linalg.yield %s0 : f32"];

    /// TiledAttention's first: keys scored up by their position, causal.
    const RISING: Attention = Attention {
        masked: true,
        group: None,
        scale: "5.0e-1",
        folded: false,
        scored: &[
            "arith.sitofp %i3 : i64 to f32",
            "arith.constant 2.0e-2 : f32",
            "= arith.addf %s0, ",
            CAUSAL,
            MASKED,
        ],
    };

    /// Attention over more keys than a block scores at a time (600 keys, tiles of 256): every
    /// kind of mask and score on the online softmax's tile loop.
    #[test]
    fn tiled_attention() {
        let mlir = corpus::corpus_mlir("TiledAttention");
        let functions = mlir_functions(&mlir);
        let at = |line: &str| called_at(&functions, &corpus_at(line));
        RISING.check("rising", at("230:14"));
        // falling: keys scored down, no mask
        Attention {
            masked: false,
            group: None,
            scale: "5.0e-1",
            folded: false,
            scored: &[
                "arith.sitofp %i3 : i64 to f32",
                "= arith.subf %s0, ",
                "NOT: %masked",
                "linalg.yield %sc",
            ],
        }
        .check("falling", at("237:15"));
        // late: even rows see only keys from 256 on
        Attention::masked(&[
            "arith.constant 256 : i64",
            "arith.cmpi sge, %i3, ",
            "arith.floordivsi %i2, ",
            "arith.cmpi slt, %i3, ",
            "arith.ori ",
            MASKED,
        ])
        .check("late", at("238:12"));
        // padded: the mask reads the input `keep` element by element
        Attention::masked(&["tensor.extract %in2[", "arith.constant 50 : i64", "arith.cmpi slt, ", MASKED]).check("padded", at("244:14"));
        // window: keys hidden at both ends of a block
        Attention::masked(&[CAUSAL, "arith.subi %i2, %i3 : i64", "arith.constant 7 : i64", "arith.andi ", MASKED])
            .check("window", at("245:14"));
        // full: no mask, the scale folded into the exponentials
        Attention {
            masked: false,
            group: None,
            scale: "5.0e-1",
            folded: true,
            scored: PLAIN,
        }
        .check("full", at("246:12"));
        // negative: a negative scale is not folded (it would turn the maximum into a minimum)
        Attention {
            masked: false,
            group: None,
            scale: "-5.0e-1",
            folded: false,
            scored: PLAIN,
        }
        .check("negative", at("247:16"));
    }

    /// Attention over more query rows than one block computes (36: a tall block of 32 and a
    /// short one of 4).
    #[test]
    fn long_attention() {
        let mlir = corpus::corpus_mlir("LongAttention");
        let functions = mlir_functions(&mlir);
        let at = |line: &str| called_at(&functions, &corpus_at(line));
        Attention::masked(&[CAUSAL, MASKED]).check("causal", at("205:14"));
        Attention::masked(&[CAUSAL, "arith.subi %i2, %i3 : i64", "arith.constant 7 : i64", "arith.andi ", MASKED])
            .check("window", at("206:14"));
        Attention::masked(&["tensor.extract %in2[", "arith.constant 50 : i64", "arith.cmpi slt, ", MASKED]).check("padded", at("207:14"));
        // every key hidden: the range is empty, the rows zeros
        Attention::masked(&["arith.constant 100 : i64", "arith.cmpi sgt, %i3, ", MASKED]).check("hidden", at("208:14"));
        Attention {
            masked: false,
            group: None,
            scale: "5.0e-1",
            folded: true,
            scored: PLAIN,
        }
        .check("full", at("209:12"));
        Attention {
            masked: false,
            group: None,
            scale: "-5.0e-1",
            folded: false,
            scored: PLAIN,
        }
        .check("negative", at("210:16"));
        // grouped-query heads (two per key head), ALiBi-style scores reading a parameter, causal
        Attention {
            masked: true,
            group: Some(2),
            scale: "5.0e-1",
            folded: false,
            scored: &[
                "tensor.extract %in3[",
                "arith.subi %i2, %i3 : i64",
                "arith.sitofp ",
                "= arith.subf %s0, ",
                CAUSAL,
                MASKED,
            ],
        }
        .check("grouped", at("211:15"));
    }

    /// Attention with every kind of index function, and heads split and merged.
    #[test]
    fn attentions() {
        let mlir = corpus::corpus_mlir("Attentions");
        let functions = mlir_functions(&mlir);
        let at = |line: &str| calls_at(&functions, &format!("\"tests/corpus/ops.model\":{line}"));
        // padding: reads the input `keep`
        Attention {
            masked: true,
            group: None,
            scale: "5.0e-1",
            folded: false,
            scored: &["tensor.extract %in3[", "arith.constant 50 : i64", "arith.cmpi slt, ", MASKED],
        }
        .check("padded", at("173:26")[0]);
        // causal, with ALiBi-style scores reading the parameter `slopes`
        Attention {
            masked: true,
            group: None,
            scale: "5.0e-1",
            folded: false,
            scored: &[
                "tensor.extract %in4[",
                "arith.subi %i2, %i3 : i64",
                "arith.sitofp ",
                "arith.constant 5.0e-1 : f32",
                "= arith.subf %s0, ",
                CAUSAL,
                MASKED,
            ],
        }
        .check("causal", at("174:14")[0]);
        // grouped-query heads, an explicit scale and a score function with a branch
        Attention {
            masked: false,
            group: Some(2),
            scale: "2.5e-1",
            folded: false,
            scored: &[
                "arith.addi %i2, %i3 : i64",
                "arith.floordivsi ",
                "arith.cmpi sgt, ",
                "arith.constant 2.0e0 : f32",
                "= arith.mulf %s0, ",
                "= arith.select {{.*}}, %s0, ",
                "NOT: %masked",
                "linalg.yield ",
            ],
        }
        .check("grouped", at("182:9")[0]);
        // Heads are split and merged by one function each, called wherever they are.
        let split = |line: &str| at(line)[0];
        assert_eq!(split("171:9"), split("172:10"), "split_heads is one function");
        assert_eq!(split("171:9"), split("189:28"), "split_heads is one function");
        assert_eq!(at("173:14")[0], at("189:40")[0], "merge_heads is one function");
    }

    /// Named masks of the standard library, combined, passed to a block as an index function:
    /// each call of the block evaluates its own mask inside its attention.
    #[test]
    fn named_masks() {
        let mlir = corpus::corpus_mlir("NamedMasks");
        let functions = mlir_functions(&mlir);
        let attends = calls_at(&functions, "\"tests/corpus/ops.model\":340:12");
        assert_eq!(attends.len(), 2, "one attention per call of the block");
        // causal() or not padding(keep)
        Attention::masked(&[
            CAUSAL,
            "tensor.extract %in3[",
            "arith.cmpi ne, ",
            "arith.xori ",
            "arith.ori ",
            MASKED,
        ])
        .check("either", attends[0]);
        // padding(keep) and sliding_window(2)
        Attention::masked(&[
            "tensor.extract %in3[",
            "arith.cmpi ne, ",
            CAUSAL,
            "arith.subi %i2, %i3 : i64",
            "arith.constant 2 : i64",
            "arith.cmpi slt, ",
            "arith.andi ",
            "arith.andi ",
            MASKED,
        ])
        .check("windowed", attends[1]);
    }

    /// The standard library's attention block: projections with biases, grouped-query heads,
    /// padding and causal masks.
    #[test]
    fn std_attention() {
        let mlir = corpus::corpus_mlir("StdAttention");
        let functions = mlir_functions(&mlir);
        check_lines(
            "StdAttention's forward",
            mlir_function(&functions, "forward"),
            &[
                // q_proj, k_proj and v_proj: packed weights and a bias each
                "func.call @lmc_matmul{{.*}} : (tensor<?x?x8xf32>, tensor<1x8x16xf32>, tensor<8xf32>, tensor<?x?x8xf32>)",
                "func.call @lmc_matmul{{.*}} : (tensor<?x?x8xf32>, tensor<1x8x16xf32>, tensor<4xf32>, tensor<?x?x4xf32>)",
                "func.call @lmc_matmul{{.*}} : (tensor<?x?x8xf32>, tensor<1x8x16xf32>, tensor<4xf32>, tensor<?x?x4xf32>)",
                "loc(\"std/nn.model\":194:15)",
                // o_proj
                "func.call @lmc_matmul{{.*}} : (tensor<?x?x8xf32>, tensor<1x8x16xf32>, tensor<8xf32>, tensor<?x?x8xf32>)",
            ],
        );
        Attention {
            masked: true,
            group: Some(2),
            scale: "5.0e-1",
            folded: false,
            scored: &["tensor.extract %in3[", "arith.cmpi ne, ", CAUSAL, "arith.andi ", MASKED],
        }
        .check("StdAttention", called_at(&functions, "\"std/nn.model\":194:15"));
    }

    /// The matmul kernels at sizes no register tile or vector divides, packed and not, rank 2
    /// and 3, on slices; an attention whose head width (37) is past whole vectors.
    #[test]
    fn kernels() {
        let mlir = corpus::corpus_mlir("Kernels");
        let functions = mlir_functions(&mlir);
        check_lines(
            "Kernels' forward",
            mlir_function(&functions, "forward"),
            &[
                // The weights are packed: [ceil(19 / 16), K, 16]; `b`, an input, is not.
                "func.func @forward(%param0: memref<2x30x16xf32>, %param1: memref<2x37x16xf32>, %input0: ",
                // A slice passed to a kernel is copied out of its strided view first.
                "= tensor.extract_slice %v0[0, 0, 3] [%sym0, %sym1, 30] [1, 1, 1] : tensor<?x?x37xf32> to tensor<?x?x30xf32>",
                "= linalg.copy ins(%v{{.*}} : tensor<?x?x30xf32>)",
                "func.call @lmc_matmul{{.*}} : (tensor<?x?x30xf32>, tensor<2x30x16xf32>, tensor<?x?x19xf32>)",
                "func.call @lmc_matmul{{.*}} : (tensor<?x?x37xf32>, tensor<2x37x16xf32>, tensor<?x?x19xf32>)",
                "func.call @lmc_matmul{{.*}} : (tensor<?x?x37xf32>, tensor<37x35xf32>, tensor<?x?x35xf32>)",
                "func.call @lmc_matmul{{.*}} : (tensor<?x37xf32>, tensor<2x37x16xf32>, tensor<?x19xf32>)",
                "func.call @lmc_matmul{{.*}} : (tensor<?x37xf32>, tensor<37x35xf32>, tensor<?x35xf32>)",
                // So is one passed to an elementwise op.
                "= tensor.extract_slice %v0[0, 0, 5] [%sym0, %sym1, 30] [1, 1, 1] : tensor<?x?x37xf32> to tensor<?x?x30xf32>",
                "= linalg.copy ins(%v{{.*}} : tensor<?x?x30xf32>)",
                "func.call @lmc_op{{.*}} : (index, index, tensor<?x?x30xf32>, tensor<?x?x30xf32>)",
            ],
        );
        // The packed kernel: a task per batch index and block of columns; `K` in blocks of 768,
        // each from zero (the first) or the result so far; 6-row tiles of 12 accumulators across
        // a panel (two vectors), its next rows prefetched; the last panel's columns past N masked.
        check_lines(
            "the packed kernel",
            &mlir,
            &[
                "LABEL: func.func private @lmc_matmul{{.*}}(%x: tensor<?x?x37xf32>, %rhs: tensor<2x37x16xf32>, %out: tensor<?x?x19xf32>)",
                "= scf.forall ({{.*}}) in ({{.*}}) shared_outs({{.*}} = %out) -> (tensor<?x?x19xf32>)",
                "= arith.constant 768 : index",
                "= arith.constant 6 : index",
                ":12 = scf.if ",
                "NEXT: arith.constant dense<0.0> : vector<8xf32>",
                ":12 = scf.for ",
                "memref.prefetch ",
                "COUNT-12: vector.fma ",
                "NOT: vector.fma ",
                "scf.yield ",
                "COUNT-12: vector.transfer_write ",
                "in_bounds = [false]",
                "LABEL: func.func private @",
            ],
        );
        // The kernel of a row-major right operand (`x @ b`): blocks of 96 rows, 6-row tiles of
        // two vectors of columns (12 accumulators), the rows left over one at a time (two), the
        // columns past a whole tile in a masked one.
        check_lines(
            "the row-major kernel",
            &mlir,
            &[
                "LABEL: func.func private @lmc_matmul{{.*}}(%x: tensor<?x?x37xf32>, %rhs: tensor<37x35xf32>, %out: tensor<?x?x35xf32>)",
                "= scf.forall ({{.*}}) in ({{.*}}) shared_outs({{.*}} = %out) -> (tensor<?x?x35xf32>)",
                "= arith.constant 96 : index",
                ":12 = scf.for ",
                "COUNT-12: vector.fma ",
                ":2 = scf.for ",
                "COUNT-2: vector.fma ",
                "in_bounds = [false]",
                "LABEL: func.func private @",
            ],
        );
        // The attention: head width 37 (1/sqrt(37) folded), no mask.
        Attention {
            masked: false,
            group: None,
            scale: "1.6439898e-1",
            folded: true,
            scored: PLAIN,
        }
        .check("Kernels' attention", called_at(&functions, "\"tests/corpus/ops.model\":56:68"));
    }

    // Composition's calls: standard-library blocks, arrays, loops and a compile-time `if`.
    /// A Linear 6 -> 6 with a bias (SplitHeads' `right`, each layer of the loop).
    const LINEAR_6: &str = "func.call @lmc_matmul{{.*}} : (tensor<?x?x6xf32>, tensor<1x6x16xf32>, tensor<6xf32>, tensor<?x?x6xf32>)";
    const RMS_NORM: &str = "func.call @lmc_op{{.*}} loc(\"std/nn.model\":44:12)";
    const LEFT: &str = "func.call @lmc_matmul{{.*}} : (tensor<?x?x6xf32>, tensor<1x6x16xf32>, tensor<?x?x6xf32>)";
    const RESIDUAL: &str = "func.call @lmc_op{{.*}} loc(\"tests/corpus/ops.model\":144:9)";
    const GELU_NEW: &str = "func.call @lmc_op{{.*}} loc(\"std/nn.model\":54:7)";
    const PRODUCT: &str = "func.call @lmc_op{{.*}} loc(\"tests/corpus/ops.model\":151:15)";

    /// The names of the functions the lines of `text` matching `pattern` call.
    fn callee_names(text: &str, pattern: &str) -> std::collections::BTreeSet<String> {
        text.lines()
            .filter(|l| count_lines(l, pattern) == 1)
            .filter_map(|l| l.split("func.call @").nth(1))
            .map(|l| l.split('(').next().unwrap().to_string())
            .collect()
    }

    /// Standard-library blocks, arrays, loops and a compile-time `if`, in the forward's calls:
    /// RMSNorm, SplitHeads' two projections (`right` with a bias), the feed-forward, `ffn(a) +
    /// b`, then `layers` times a Linear and `gelu_new`, the `if`'s `float(ids) / 10.0` (when
    /// `layers > 2`), and `a * b`. Here gated (SiLU), with three layers.
    #[test]
    fn composition() {
        let mlir = corpus::corpus_mlir("Composition");
        let functions = mlir_functions(&mlir);
        let forward = mlir_function(&functions, "forward");
        check_lines(
            "Composition's forward",
            forward,
            &[
                RMS_NORM,
                LEFT,
                LINEAR_6,
                // GatedFeedForward: gate and up (no bias), silu(gate) * up, down
                "func.call @lmc_matmul{{.*}} : (tensor<?x?x6xf32>, tensor<1x6x16xf32>, tensor<?x?x10xf32>)",
                "NEXT: tensor.empty",
                "NEXT: func.call @lmc_matmul{{.*}} : (tensor<?x?x6xf32>, tensor<1x6x16xf32>, tensor<?x?x10xf32>)",
                "func.call @lmc_op{{.*}} loc(\"std/nn.model\":88:17)",
                "func.call @lmc_matmul{{.*}} : (tensor<?x?x10xf32>, tensor<1x10x16xf32>, tensor<?x?x6xf32>)",
                RESIDUAL,
                // the loop, unrolled: three layers; the third's activation is fused with the
                // `if`'s addition
                LINEAR_6,
                GELU_NEW,
                LINEAR_6,
                GELU_NEW,
                LINEAR_6,
                "NOT: func.call @lmc_matmul",
                "func.call @lmc_op{{.*}} : (tensor<6xi64>, tensor<6xf32>) -> tensor<6xf32> loc(\"tests/corpus/ops.model\":149:15)",
                "func.call @lmc_op{{.*}} : (tensor<6xf32>, f32, tensor<6xf32>) -> tensor<6xf32> loc(\"tests/corpus/ops.model\":149:15)",
                "func.call @lmc_op{{.*}} loc(\"tests/corpus/ops.model\":149:11)",
                PRODUCT,
            ],
        );
        assert_eq!(callee_names(forward, LINEAR_6).len(), 1, "the layers share one kernel");
        check_lines(
            "SiLU(gate) * up",
            called_at(&functions, "\"std/nn.model\":88:17"),
            &[
                "^bb0(%a0: f32, %a1: f32, %o: f32):",
                "arith.negf %a0 : f32",
                "math.floor ",
                "= arith.divf %a0, ",
                "arith.mulf {{.*}}, %a1 : f32",
            ],
        );
        let gelu_new = calls_at(&functions, "\"std/nn.model\":54:7");
        assert_eq!(gelu_new, [gelu_new[0]; 2], "the first two layers' gelu_new is one function");
        // tanh is lmc's own arithmetic (a polynomial and an exp), not math.tanh (a libm call).
        check_lines(
            "gelu_new",
            gelu_new[0],
            &["NOT: math.tanh", "arith.constant 0.625 : f32", "NOT: math.tanh"],
        );
        check_lines(
            "gelu_new(l(h)) + float(ids) / 10.0",
            called_at(&functions, "\"tests/corpus/ops.model\":149:11"),
            &["arith.constant 0.625 : f32", "arith.addf {{.*}}, %a1 : f32"],
        );
    }

    /// The same not gated (ReLU), with one layer: no `float(ids)`.
    #[test]
    fn composition_plain() {
        let mlir = corpus::corpus_mlir("CompositionPlain");
        let functions = mlir_functions(&mlir);
        let forward = mlir_function(&functions, "forward");
        check_lines(
            "CompositionPlain's forward",
            forward,
            &[
                RMS_NORM,
                LEFT,
                LINEAR_6,
                // FeedForward: up with a bias, ReLU, down
                "func.call @lmc_matmul{{.*}} : (tensor<?x?x6xf32>, tensor<1x6x16xf32>, tensor<10xf32>, tensor<?x?x10xf32>)",
                "func.call @lmc_op{{.*}} loc(\"std/nn.model\":56:7)",
                "func.call @lmc_matmul{{.*}} : (tensor<?x?x10xf32>, tensor<1x10x16xf32>, tensor<6xf32>, tensor<?x?x6xf32>)",
                RESIDUAL,
                LINEAR_6,
                GELU_NEW,
                "NOT: func.call @lmc_matmul",
                "NOT: tensor<6xi64>",
                PRODUCT,
            ],
        );
        check_lines("ReLU", called_at(&functions, "\"std/nn.model\":56:7"), &["= arith.maximumf %a0, "]);
    }

    /// Scans: a state per batch row, blocked per lane, with a parameter read in the body; a
    /// block in the body, inlined; several states and outputs; a scan along axis 0 with rank-0
    /// slices and a rank-0 state; a scan nested in another.
    #[test]
    fn recurrences() {
        let mlir = corpus::corpus_mlir("Recurrences");
        let functions = mlir_functions(&mlir);
        let scan_end = |at: &str| format!("}} loc(\"tests/corpus/ops.model\":{at})");
        let ema = scan_end("285:17");
        let mixed = scan_end("289:35");
        let running = scan_end("294:27");
        let peak = scan_end("298:19");
        let (nested, inner) = (scan_end("302:21"), scan_end("303:23"));
        check_lines(
            "Recurrences' forward",
            mlir_function(&functions, "forward"),
            &[
                // ema: an scf.forall over blocks of lanes around one loop over time; sigmoid(decay)
                // computed in the body
                "= scf.forall ({{.*}}_block) in ({{.*}}_blocks) shared_outs(",
                "= scf.for {{.*}}_iv = {{.*}} to %sym1 step {{.*}} iter_args(",
                "ins({{.*}} : tensor<4xf32>)",
                "arith.negf ",
                "scf.yield {{.*}}_state0, {{.*}}_upd0 : ",
                &ema,
                "scf.forall.in_parallel {",
                &ema,
                // cell(h0), outside a scan: a call
                "func.call @lmc_matmul{{.*}} : (tensor<?x4xf32>, tensor<4x4xf32>, tensor<4xf32>, tensor<?x4xf32>)",
                // mixed: two states and two outputs; the block in the body (Linear, tanh)
                // inlined, with no call
                "%v{{.*}}, %v{{.*}}, %v{{.*}}, %v{{.*}} = scf.for {{.*}}_iv = {{.*}} to %sym1 step ",
                "NOT: func.call",
                ":12 = scf.for ",
                "NOT: func.call",
                "vector.fma ",
                "NOT: func.call",
                "arith.constant 0.625 : f32",
                "NOT: func.call",
                "scf.yield {{.*}}_state0, {{.*}}_state1, {{.*}}_upd0, {{.*}}_upd1 : ",
                "NOT: func.call",
                &mixed,
                // running: along axis 0, over the rows of `w`, blocked
                "= scf.forall ({{.*}}_block) in ({{.*}}_blocks) shared_outs(",
                "= scf.for {{.*}}_iv = {{.*}} to %sym2 step ",
                &running,
                &running,
                // peak: rank-0 slices and a rank-0 state, an f32 carried
                "= scf.for {{.*}}_iv = {{.*}} to %sym2 step {{.*}} -> (f32, tensor<?xf32>)",
                "= arith.maximumf %v{{.*}}, %v{{.*}} : f32",
                &peak,
                // nested: a scan over the batch rows of each step, inside the scan over time
                "= scf.for {{.*}}_iv = {{.*}} to %sym1 step ",
                "NOT: } loc(",
                "= scf.for {{.*}}_iv = ",
                &inner,
                &nested,
            ],
        );
    }

    /// BERT (two layers): the embeddings, then each layer's ops as calls of outlined functions,
    /// the same in every layer (a layer is never a copy of the last one's code); its attention
    /// a blocked attention with the padding mask read from `attention_mask`; GELU with lmc's
    /// own erf.
    #[test]
    fn bert_model_mlir() {
        let g = graph("BertModel");
        let mlir = lmc_codegen::emit_mlir(&g, &lmc_codegen::Target::AVX2);
        let functions = mlir_functions(&mlir);
        let forward = mlir_function(&functions, "forward");
        let (embeddings, layer) = (5, 14);
        let calls = callees(&functions);
        assert_eq!(calls.len(), embeddings + 2 * layer, "{calls:?}");
        assert_eq!(
            calls[embeddings..embeddings + layer],
            calls[embeddings + layer..],
            "both layers call the same functions"
        );
        let linear = |from: u32, to: u32| {
            format!("func.call @lmc_matmul{{{{.*}}}} : (tensor<?x?x{from}xf32>, tensor<3x{from}x16xf32>, tensor<{to}xf32>, tensor<?x?x{to}xf32>)")
        };
        let split = "func.call @lmc_op{{.*}} : (index, index, tensor<?x?x36xf32>, tensor<?x3x?x12xf32>)".to_string();
        let one_layer = [
            linear(36, 36),
            split.clone(),
            linear(36, 36),
            split.clone(),
            linear(36, 36),
            split,
            // attention, then merge_heads
            "func.call @lmc_op{{.*}} : (index, index, tensor<?x3x?x12xf32>, tensor<?x?xi64>, tensor<?x3x?x12xf32>, tensor<?x3x?x12xf32>"
                .into(),
            "func.call @lmc_op{{.*}} : (index, index, tensor<?x3x?x12xf32>, tensor<?x?x36xf32>)".into(),
            linear(36, 36),
            // the residual and LayerNorm, one row group
            "func.call @lmc_op{{.*}} : (index, index, tensor<?x?x36xf32>, tensor<?x?x36xf32>, f32, ".into(),
            linear(36, 37),
            "func.call @lmc_op{{.*}} : (index, index, tensor<?x?x37xf32>, tensor<?x?x37xf32>)".into(),
            linear(37, 36),
            "func.call @lmc_op{{.*}} : (index, index, tensor<?x?x36xf32>, tensor<?x?x36xf32>, f32, ".into(),
        ];
        let mut p: Vec<String> = one_layer.iter().chain(&one_layer).cloned().collect();
        p.push("NOT: func.call".into());
        p.push("return".into());
        check_lines("BertModel's forward", forward, &p);
        let attention = functions
            .iter()
            .find(|(_, body)| body.contains("_tall_min = "))
            .map(|(_, body)| body.as_str())
            .expect("an attention function");
        Attention {
            masked: true,
            group: None,
            scale: "2.8867513e-1",
            folded: false,
            scored: &["tensor.extract %in3[", "arith.cmpi ne, ", MASKED],
        }
        .check("BertModel's attention", attention);
        let gelu = &calls[embeddings + 11];
        check_lines(
            "BertModel's GELU",
            mlir_function(&functions, gelu),
            &["math.absf ", "math.fma ", "math.floor ", "math.copysign "],
        );
        assert_eq!(count_lines(&mlir, "math.erf"), 0, "erf is lmc's, not math.erf");
    }

    /// What the LLVM IR of a small BERT part exports: the ABI's three functions, everything else
    /// internal.
    fn exports(llvm: &str) -> Vec<&str> {
        llvm.lines()
            .filter(|l| l.starts_with("define ") && !l.starts_with("define internal "))
            .map(|l| l.split('@').nth(1).unwrap().split('(').next().unwrap())
            .collect()
    }

    /// The C ABI's entry point of a library: `lmc_forward(args)` unpacks the argument array
    /// into the MLIR C interface.
    fn abi(args: usize) -> Vec<String> {
        let unpacked = (0..args).map(|i| format!("ptr %arg{i}")).collect::<Vec<_>>().join(", ");
        vec![
            "LABEL: define i32 @lmc_abi_version()".into(),
            "LABEL: define ptr @lmc_manifest()".into(),
            "ret ptr @lmc_manifest_json".into(),
            "LABEL: define void @lmc_forward(ptr %0)".into(),
            format!("call void @_mlir_ciface_forward({unpacked})"),
        ]
    }

    /// BertEmbeddings, lowered to LLVM IR: the three gathers and LayerNorm, each an OpenMP
    /// parallel loop over rows; the positions' gather's index buffer freed after it.
    #[test]
    fn bert_embeddings_llvm() {
        let llvm = lmc_codegen::emit_llvm_ir(&graph("BertEmbeddings"), &lmc_codegen::Target::AVX2).unwrap();
        let mut p: Vec<String> = [
            "@lmc_manifest_json = private constant ",
            "LABEL: define internal void @forward(",
            "call ptr @_mlir_memref_to_llvm_alloc(",
            "call void @lmc_op0(",
            "call void @lmc_op1(",
            "call void @lmc_op2(",
            "call void @lmc_op3(",
            "NEXT: call void @_mlir_memref_to_llvm_free(",
            "call void @lmc_op4(",
            "LABEL: define internal void @lmc_op0(",
            "call void (ptr, i32, ptr, ...) @__kmpc_fork_call(ptr @{{.*}}, i32 1, ptr @lmc_op0..omp_par, ",
            "LABEL: define internal void @lmc_op0..omp_par(",
            "call void @__kmpc_for_static_init_8u(",
            "LABEL: define internal void @lmc_op4(",
            "call void (ptr, i32, ptr, ...) @__kmpc_fork_call(ptr @{{.*}}, i32 1, ptr @lmc_op4..omp_par, ",
            "LABEL: define internal void @lmc_op4..omp_par(",
            "call void @__kmpc_for_static_init_8u(",
            "call float @llvm.sqrt.f32(",
        ]
        .map(String::from)
        .to_vec();
        p.extend(abi(8));
        check_lines("BertEmbeddings' LLVM IR", &llvm, &p);
        assert_eq!(exports(&llvm), ["lmc_abi_version", "lmc_manifest", "lmc_forward"]);
    }

    /// BertIntermediate, lowered to LLVM IR: the packed kernel under OpenMP's dynamic schedule
    /// (8-lane FMAs, its panel prefetched, the columns past 37 masked), then GELU with lmc's
    /// own erf (a polynomial of FMAs; no libm call), an OpenMP parallel loop over rows.
    #[test]
    fn bert_intermediate_llvm() {
        let llvm = lmc_codegen::emit_llvm_ir(&graph("BertIntermediate"), &lmc_codegen::Target::AVX2).unwrap();
        let mut p: Vec<String> = [
            "LABEL: define internal void @forward(",
            "call void @lmc_matmul0(",
            "call void @lmc_op0(",
            "LABEL: define internal void @lmc_op0(",
            "call void (ptr, i32, ptr, ...) @__kmpc_fork_call(ptr @{{.*}}, i32 1, ptr @lmc_op0..omp_par, ",
            "LABEL: define internal void @lmc_op0..omp_par(",
            "call void @__kmpc_for_static_init_8u(",
            "call float @llvm.fabs.f32(",
            "call float @llvm.fma.f32(",
            "call float @llvm.floor.f32(",
            "call float @llvm.copysign.f32(",
            "LABEL: define internal void @lmc_matmul0(",
            "call void (ptr, i32, ptr, ...) @__kmpc_fork_call(ptr @{{.*}}, i32 1, ptr @lmc_matmul0..omp_par, ",
            "LABEL: define internal void @lmc_matmul0..omp_par(",
            "call void @__kmpc_dispatch_init_8u(",
            "call i32 @__kmpc_dispatch_next_8u(",
            "call void @llvm.prefetch.p0(",
            "call <8 x float> @llvm.fmuladd.v8f32(",
            "call void @llvm.masked.store.v8f32.p0(",
        ]
        .map(String::from)
        .to_vec();
        p.extend(abi(4));
        check_lines("BertIntermediate's LLVM IR", &llvm, &p);
        assert_eq!(exports(&llvm), ["lmc_abi_version", "lmc_manifest", "lmc_forward"]);
        assert_eq!(count_lines(&llvm, "@erff"), 0, "GELU calls libm's erf");
    }

    /// The checks fail where the behaviour they check is broken: on the emitted text, edited
    /// as a wrong emitter would write it.
    #[test]
    fn checks_fail_on_wrong_code() {
        // `from` replaced by `to` in the first line that has both `line` and `from`.
        let edit_line = |text: &str, line: &str, from: &str, to: &str| {
            let mut done = false;
            let edited: Vec<String> = text
                .lines()
                .map(|l| match !done && l.contains(line) && l.contains(from) {
                    true => {
                        done = true;
                        l.replacen(from, to, 1)
                    }
                    false => l.to_string(),
                })
                .collect();
            assert!(done, "no line has `{line}` and `{from}`");
            edited.join("\n")
        };
        let edit = |text: &str, from: &str, to: &str| edit_line(text, from, from, to);
        let mlir = corpus::corpus_mlir("TiledAttention");
        let functions = mlir_functions(&mlir);
        let at = |line: &str| called_at(&functions, &corpus_at(line));
        let rising = at("230:14");
        let full = at("246:12");
        let full_checks = Attention {
            masked: false,
            group: None,
            scale: "5.0e-1",
            folded: true,
            scored: PLAIN,
        };
        let scores = rising.find("_scored = linalg.generic").unwrap();
        let (before, after) = rising.split_at(scores);
        for (what, text, checks) in [
            (
                "the mask's comparison reversed in the scores",
                format!("{before}{}", edit(after, CAUSAL, "arith.cmpi sge, %i3, %i2 : i64")),
                &RISING,
            ),
            (
                "keys 128 at a time",
                edit(rising, "arith.constant 256 : index", "arith.constant 128 : index"),
                &RISING,
            ),
            (
                "no range of keys",
                edit(rising, "_k0 = scf.while", "_k0 = arith.constant 0 : index // "),
                &RISING,
            ),
            (
                "the running sums not rescaled",
                edit_line(rising, "_ln0 = math.fma", "_re0", "_vzero"),
                &RISING,
            ),
            (
                "the scale not folded",
                edit(full, "dense<5.0e-1> : vector<8xf32>", "dense<1.0e0> : vector<8xf32>"),
                &full_checks,
            ),
        ] {
            assert!(try_check_lines(&text, &checks.patterns()).is_err(), "{what}: the checks pass");
        }
        // A packed kernel with a tile of 11 FMAs.
        let mlir = corpus::corpus_mlir("Kernels");
        let kernel = mlir.find("func.func private @lmc_matmul").unwrap();
        let fma = kernel + mlir[kernel..].find("vector.fma ").unwrap();
        let line = mlir[..fma].rfind('\n').unwrap();
        let end = fma + mlir[fma..].find('\n').unwrap();
        let eleven = format!("{}{}", &mlir[..line], &mlir[end..]);
        let packed = [
            "LABEL: func.func private @lmc_matmul{{.*}}(%x: tensor<?x?x30xf32>, %rhs: tensor<2x30x16xf32>",
            ":12 = scf.for ",
            "COUNT-12: vector.fma ",
            "NOT: vector.fma ",
            "scf.yield ",
        ];
        try_check_lines(&mlir, &packed).unwrap();
        assert!(try_check_lines(&eleven, &packed).is_err(), "a tile of 11 FMAs passes");
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
        let (act, not) = if model.ends_with("Relu") {
            ("relu", "gelu")
        } else {
            ("gelu", "relu")
        };
        // The ops, one a layer (the IR's header names the configured activation either way).
        let op = |name: &str| count_lines(&ir, &format!(" = {name} %{{{{.*}}}} : f32[B, T, 37]"));
        assert_eq!((op(act), op(not)), (2, 0), "{model}: the {act} of each layer, and no {not}:\n{ir}");
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
    // A variant that does not compile is reported, the others measured, and the run fails.
    assert_eq!(r.status.code(), Some(1), "{stdout}\n{stderr}");
    assert!(
        stderr.contains("error: 1 variant(s) failed: D (models/bert.model:NoSuchModel)"),
        "{stderr}"
    );
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
