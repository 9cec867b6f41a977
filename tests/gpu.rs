//! The GPU target (`--target cuda`), in two parts.
//!
//! Without a GPU (CI), ordinary tests: every zoo model lowers to PTX for sm_90, each distinct
//! kernel once, and each kernel's PTX assembles with `ptxas` (from the PyPI package
//! `nvidia-cuda-nvcc-cu12`, which `scripts/setup.sh` unpacks; without it the test fails and
//! says so); the host code of a CUDA module links into a shared library that exports the device
//! ABI; the GPU's forms of the ops, fused and with split sums, lowered for the host, match
//! Hugging Face and the CPU's kernels, forward and greedy decoding.
//!
//! With a GPU, the tests marked `#[ignore = "needs an NVIDIA GPU..."]`: every zoo model,
//! compiled for the GPU and for the CPU, runs on its Hugging Face fixture's inputs, and the two
//! agree within 1e-3 (absolute, on outputs of order 1-10); GPU greedy decoding gives
//! transformers' tokens; split sums on the GPU give the CPU's results. They run only when asked
//! for (`cargo test --release -p lmc-tests --test gpu -- --ignored`, which
//! `scripts/gpu_check.sh run` does), and without a GPU they fail, saying why: a run without one
//! never counts them as passes.

use lmc_tests::*;
use std::path::Path;

/// (fixture, model file, model, inputs, expected outputs).
const ZOO: &[(&str, &str, &str, &str, &str)] = &[
    ("bert_tiny", "models/bert.model", "BertModel", "inputs_model", "expected_model"),
    (
        "electra_discriminator",
        "models/electra.model",
        "ElectraForPreTraining",
        "inputs",
        "expected",
    ),
    (
        "electra_generator",
        "models/electra.model",
        "ElectraForMaskedLM",
        "inputs",
        "expected",
    ),
    ("gpt2_tiny", "models/gpt2.model", "GPT2LMHeadModel", "inputs", "expected"),
    ("llama_tiny", "models/llama.model", "LlamaForCausalLM", "inputs", "expected"),
    ("t5_tiny", "models/t5.model", "T5ForConditionalGeneration", "inputs", "expected"),
    ("lstm_tiny", "models/lstm.model", "ElmoLstmEncoder", "inputs", "expected"),
    ("mamba_tiny", "models/mamba.model", "MambaForCausalLM", "inputs", "expected"),
    ("rwkv_tiny", "models/rwkv.model", "RwkvForCausalLM", "inputs", "expected"),
    (
        "linear_transformer_tiny",
        "models/linear_transformer.model",
        "LinearTransformerLM",
        "inputs",
        "expected",
    ),
];

/// GPU against CPU, both lmc: the same ops in another order of summation.
const GPU_VS_CPU: f32 = 1e-3;

/// lmc against the Hugging Face fixtures (as the CPU numerics tests allow).
const HUGGING_FACE: f32 = 1e-3;

fn graph(fixture: &str, file: &str, model: &str) -> lmc_core::ir::Graph {
    checked_model(file, model, &root().join("tests/fixtures").join(fixture))
}

#[test]
fn every_zoo_model_lowers_to_ptx_that_assembles() {
    // The GPU target already needs the same package's libdevice; without ptxas the PTX would
    // be generated but not assembled, and the test would check much less than it says.
    let ptxas = lmc_codegen::gpu::ptxas()
        .unwrap_or_else(|| panic!("no ptxas: run scripts/setup.sh (it unpacks the PyPI package nvidia-cuda-nvcc-cu12), or set LMC_PTXAS"));
    for &(fixture, file, model, _, _) in ZOO {
        let kernels = lmc_codegen::emit_ptx(&graph(fixture, file, model)).unwrap_or_else(|e| panic!("{model}: {e}"));
        assert!(!kernels.is_empty(), "{model}: no kernels");
        // Every layer's same op is one kernel, launched once per layer, not a copy per layer.
        // (Two kernels that differ only in a buffer's static shape, such as two embedding
        // tables' gathers, are distinct kernels with the same PTX; a model has a few.)
        let distinct: std::collections::HashSet<&String> = kernels.iter().map(|(_, ptx)| ptx).collect();
        let copies = kernels.len() - distinct.len();
        assert!(copies <= 3, "{model}: {copies} kernels compiled twice, of {}", kernels.len());
        for (name, ptx) in &kernels {
            assert!(ptx.contains(".target sm_90"), "{model}: {name} is not for sm_90");
            assert!(ptx.contains(".entry "), "{model}: {name} has no kernel entry");
        }
        let dir = scratch(&format!("ptx_{fixture}"));
        for (name, ptx) in &kernels {
            let path = dir.join(format!("{name}.ptx"));
            std::fs::write(&path, ptx).unwrap();
            let out = std::process::Command::new(&ptxas)
                .args(["-arch=sm_90", "-o", "/dev/null"])
                .arg(&path)
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{model}: ptxas rejects kernel {name} ({}): {}",
                path.display(),
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
}

#[test]
fn a_cuda_library_exports_the_device_abi() {
    let dir = scratch("cuda_library");
    let lib = dir.join("libgpt2_cuda.so");
    let spec = "models/gpt2.model:GPT2LMHeadModel";
    let out = lmc(&[
        "compile",
        "--target",
        "cuda",
        spec,
        "--config",
        "tests/fixtures/gpt2_tiny/config.json",
        "-o",
        lib.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let header = std::fs::read_to_string(lib.with_extension("h")).unwrap();
    // The header every library has (its first line names the model whatever it holds): the
    // entry point and the arguments' indices.
    for line in [
        "void lmc_forward(void **args);",
        "#define LMC_GPT2LMHEADMODEL_INPUT_INPUT_IDS 28",
        "#define LMC_GPT2LMHEADMODEL_OUTPUT_LOGITS 31",
    ] {
        assert!(header.lines().any(|l| l == line), "`{line}` is not in the header:\n{header}");
    }
    let symbols = std::process::Command::new("nm")
        .arg("-D")
        .arg("--defined-only")
        .arg(&lib)
        .output()
        .unwrap();
    let symbols = String::from_utf8_lossy(&symbols.stdout);
    for name in [
        lmc_abi::DEVICE_BIND_SYMBOL,
        lmc_abi::DEVICE_INIT_SYMBOL,
        lmc_abi::DEVICE_FINI_SYMBOL,
        "lmc_forward",
        "lmc_manifest",
    ] {
        assert!(
            symbols.lines().any(|l| l.ends_with(&format!(" {name}"))),
            "{name} not exported:\n{symbols}"
        );
    }
    // No kernel loads at dlopen: they wait for the runtime's device layer.
    assert!(!symbols.contains("mgpu"), "device functions must stay internal:\n{symbols}");
    if lmc_runtime::cuda::cuda().is_err() {
        // Opening it needs a GPU, and says so.
        let err = lmc_runtime::Module::open_library(&lib).unwrap_err();
        assert!(err.message().contains("runs on an NVIDIA GPU"), "{}", err.message());
    }
}

/// The GPU's forms of the ops (plain loop nests, transposed weights, a whole attention), lowered
/// for the CPU instead: the front half of the GPU target, checked against Hugging Face where no
/// GPU is present.
#[test]
fn gpu_forms_match_hugging_face_on_the_host() {
    for &(fixture, file, model, inputs, expected) in ZOO {
        let dir = root().join("tests/fixtures").join(fixture);
        let g = graph(fixture, file, model);
        let loaded = host_model(&g, &dir);
        let outputs = loaded.run(&read_host_tensors(&dir.join(format!("{inputs}.safetensors")))).unwrap();
        let want = read_f32_tensors(&dir.join(format!("{expected}.safetensors")));
        for got in &outputs {
            let Some((_, shape, values)) = want.iter().find(|(n, _, _)| *n == got.name) else {
                continue;
            };
            assert_eq!(&got.shape, shape, "{model}: {}", got.name);
            let err = max_abs_diff(got.as_f32().unwrap(), values);
            assert!(err <= HUGGING_FACE, "{model}: {} differs from Hugging Face by {err}", got.name);
        }
    }
}

/// Every zoo model, compiled for the GPU and for the CPU, agrees on its Hugging Face fixture's
/// inputs (the report gives each output's distance from Hugging Face too).
#[test]
#[ignore = "needs an NVIDIA GPU: run scripts/gpu_check.sh"]
fn cpu_and_gpu_agree_on_every_zoo_model() {
    require_gpu();
    let mut report = Vec::new();
    for &(fixture, file, model, inputs, expected) in ZOO {
        let dir = root().join("tests/fixtures").join(fixture);
        let g = graph(fixture, file, model);
        let cpu = jit_model_for(&g, &dir, lmc_codegen::Target::host());
        let gpu = jit_model_for(&g, &dir, lmc_codegen::Target::CUDA);
        let inputs = read_host_tensors(&dir.join(format!("{inputs}.safetensors")));
        let want = read_f32_tensors(&dir.join(format!("{expected}.safetensors")));
        let on_cpu = cpu.run(&inputs).unwrap_or_else(|e| panic!("{model} on the CPU: {e}"));
        let on_gpu = gpu.run(&inputs).unwrap_or_else(|e| panic!("{model} on the GPU: {e}"));
        assert_eq!(on_cpu.len(), on_gpu.len(), "{model}: outputs");
        for (c, g) in on_cpu.iter().zip(&on_gpu) {
            let (c_values, g_values) = (c.as_f32().unwrap(), g.as_f32().unwrap());
            let err = max_abs_diff(c_values, g_values);
            let reference = want
                .iter()
                .find(|(n, _, _)| *n == g.name)
                .map(|(_, _, v)| max_abs_diff(v, g_values));
            let reference = reference.map_or("-".to_string(), |r| format!("{r:.2e}"));
            report.push(format!("{model}.{}: GPU vs CPU {err:.2e}, GPU vs Hugging Face {reference}", g.name));
            assert!(err <= GPU_VS_CPU, "{model}: {} differs by {err} between GPU and CPU", g.name);
        }
    }
    eprintln!("{}", report.join("\n"));
}

/// The causal zoo models whose greedy decoding is compared with transformers' tokens.
const DECODERS: [(&str, &str, &str); 4] = [
    ("gpt2_tiny", "models/gpt2.model", "GPT2LMHeadModel"),
    ("llama_tiny", "models/llama.model", "LlamaForCausalLM"),
    ("mamba_tiny", "models/mamba.model", "MambaForCausalLM"),
    ("rwkv_tiny", "models/rwkv.model", "RwkvForCausalLM"),
];

/// Greedy decoding with the GPU's decode steps, loaded by `load` (`place` says where they run),
/// gives Hugging Face's tokens.
fn greedy_decoding_matches_transformers(place: &str, load: impl Fn(&lmc_core::ir::Graph, &Path) -> lmc_runtime::LoadedModel) {
    for (fixture, file, model) in DECODERS {
        let dir = root().join("tests/fixtures").join(fixture);
        let want = read_host_tensors(&dir.join("generate_expected.safetensors"));
        let want = want.iter().find(|t| t.name == "sequences").unwrap();
        let prompts = read_host_tensors(&dir.join("generate_inputs.safetensors"));
        let prompts = prompts.iter().find(|t| t.name == "input_ids").unwrap();
        let (batch, length) = (prompts.shape[0], prompts.shape[1]);
        let total = want.shape[1];
        let step = lmc_core::decode::derive_decode(&graph(fixture, file, model), total as i64)
            .unwrap_or_else(|e| panic!("{model}: {e}"))
            .step;
        let ids = prompts.as_i64().unwrap();
        let rows: Vec<Vec<i64>> = (0..batch).map(|b| ids[b * length..(b + 1) * length].to_vec()).collect();
        let want: Vec<Vec<i64>> = want.as_i64().unwrap().chunks(total).map(|s| s[length..].to_vec()).collect();
        let loaded = load(&step, &dir);
        let got = lmc_runtime::greedy(&loaded, &rows, Vec::new(), total - length, None).unwrap_or_else(|e| panic!("{model}: {e}"));
        assert_eq!(got.tokens, want, "{model}: the GPU's decode step {place} vs transformers");
    }
}

/// The GPU's decode steps, lowered for the host, decode greedily as transformers does.
#[test]
fn gpu_forms_decode_greedily_as_transformers_on_the_host() {
    greedy_decoding_matches_transformers("on the host", host_model);
}

/// The same on the GPU, its caches kept on the device between steps.
#[test]
#[ignore = "needs an NVIDIA GPU: run scripts/gpu_check.sh"]
fn gpu_greedy_decoding_matches_transformers() {
    require_gpu();
    greedy_decoding_matches_transformers("on the GPU", |g, dir| jit_model_for(g, dir, lmc_codegen::Target::CUDA));
}

/// GPT-2 widened to 258 (two heads of 129; sums of 258 and 1032 products, in chunks of 65 with
/// a shorter last one), one layer: wide enough that the GPU splits its matmuls' sums (`K`
/// shared among threads when its outputs are too few to fill the GPU; the fixtures are too
/// narrow, `K` under 256).
fn wide_gpt2() -> lmc_core::ir::Graph {
    let dir = scratch("wide_gpt2");
    let fixture = root().join("tests/fixtures/gpt2_tiny");
    let mut config: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(fixture.join("config.json")).unwrap()).unwrap();
    config["n_embd"] = 258.into();
    config["n_head"] = 2.into();
    config["n_layer"] = 1.into();
    std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
    checked_model("models/gpt2.model", "GPT2LMHeadModel", &dir)
}

/// Split sums (`jit` compiles a graph with them; `place` says where it runs) give the CPU's
/// results on the widened GPT-2 with seeded random weights: the forward, and greedy decoding
/// through the derived decode step.
fn split_sums_match_the_cpu(place: &str, jit: impl Fn(&lmc_core::ir::Graph) -> Result<lmc_codegen::JitModule, lmc_codegen::CodegenError>) {
    let g = wide_gpt2();
    let random = |manifest: &lmc_abi::Manifest| {
        lmc_runtime::WeightsSource::Files(vec![lmc_runtime::random_weights(manifest, 7).unwrap_or_else(|e| panic!("{e}"))])
    };
    let (batch, length) = (2, 7);
    let ids: Vec<i64> = (0..batch * length).map(|i| (i as i64 * 37 + 11) % 101).collect();
    let inputs = [
        lmc_runtime::HostTensor::from_i64("input_ids", vec![batch, length], ids.clone()).unwrap(),
        lmc_runtime::HostTensor::from_i64("attention_mask", vec![batch, length], vec![1; batch * length]).unwrap(),
    ];
    let cpu = bind_jit_with(&g, lmc_codegen::jit(&g), random);
    let want = cpu.run(&inputs).unwrap();
    let want = want[0].as_f32().unwrap();
    let scale = want.iter().fold(1f32, |m, v| m.max(v.abs()));
    let split = bind_jit_with(&g, jit(&g), random);
    let got = split.run(&inputs).unwrap();
    let err = max_abs_diff(want, got[0].as_f32().unwrap());
    assert!(
        err <= 1e-5 * scale,
        "split sums {place} differ from the CPU's by {err} (outputs up to {scale})"
    );
    // Decoding: one position per step, the case split sums are for.
    let step = lmc_core::decode::derive_decode(&g, (length + 5) as i64)
        .unwrap_or_else(|e| panic!("{e}"))
        .step;
    let rows: Vec<Vec<i64>> = ids.chunks(length).map(<[i64]>::to_vec).collect();
    let cpu = bind_jit_with(&step, lmc_codegen::jit(&step), random);
    let want = lmc_runtime::greedy(&cpu, &rows, Vec::new(), 6, None).unwrap_or_else(|e| panic!("{e}"));
    let split = bind_jit_with(&step, jit(&step), random);
    let got = lmc_runtime::greedy(&split, &rows, Vec::new(), 6, None).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(got.tokens, want.tokens, "greedy decoding with split sums {place}");
}

/// The widened GPT-2's sums are split, and its GPU forms with them, lowered for the host, give
/// the CPU's kernels' results.
#[test]
fn gpu_split_sums_match_the_cpu_on_the_host() {
    let loops = lmc_codegen::emit_fused_loops(&wide_gpt2()).unwrap_or_else(|e| panic!("{e}"));
    assert!(loops.contains("arith.ceildivui"), "no sum was split:\n{loops}");
    split_sums_match_the_cpu("on the host", lmc_codegen::jit_gpu_forms_on_host);
}

/// The same on the GPU.
#[test]
#[ignore = "needs an NVIDIA GPU: run scripts/gpu_check.sh"]
fn gpu_split_sums_match_the_cpu() {
    require_gpu();
    split_sums_match_the_cpu("on the GPU", |g| lmc_codegen::jit_for(g, &lmc_codegen::Target::CUDA));
}

/// The tests marked `#[ignore]` need a GPU: asked for without one, they fail, saying why.
fn require_gpu() {
    if let Err(e) = lmc_runtime::cuda::cuda() {
        panic!(
            "this test needs an NVIDIA GPU, and there is none: {} (run it on a GPU machine: scripts/gpu_check.sh, or `cargo test --release -p lmc-tests --test gpu -- --ignored` there)",
            e.message()
        );
    }
}

/// A graph's GPU forms, lowered for the host, with a checkpoint's weights bound.
fn host_model(g: &lmc_core::ir::Graph, weights: &Path) -> lmc_runtime::LoadedModel {
    bind_jit(g, lmc_codegen::jit_gpu_forms_on_host(g), weights)
}

/// The GPU's loop nests are fused: a matmul's bias and activation run in the matmul's kernel,
/// their intermediates never stored, and a layer takes a fraction of the kernels its ops
/// would. (Numerics of the fused nests: `gpu_forms_match_hugging_face_on_the_host`, and the
/// op corpus against the interpreter in `pipeline.rs`.)
#[test]
fn kernels_fuse_elementwise_chains_into_their_producers() {
    let g = graph("gpt2_tiny", "models/gpt2.model", "GPT2LMHeadModel");
    let loops = lmc_codegen::emit_fused_loops(&g).unwrap_or_else(|e| panic!("{e}"));
    let nests: Vec<String> = top_level_nests(&loops);
    // GPT-2's GELU is the tanh form; lmc's tanh ends in a copysign (`approx.rs`).
    let activations: Vec<&String> = nests.iter().filter(|n| n.contains("math.copysign")).collect();
    assert!(!activations.is_empty(), "no GELU nest:\n{loops}");
    for nest in &activations {
        // The matmul's sum, carried in a register, then its bias and GELU, stored once.
        assert!(nest.contains("iter_args("), "GELU not fused into its matmul:\n{nest}");
        assert_eq!(nest.matches("memref.store ").count(), 1, "{nest}");
    }
    let ops = g.nodes.len();
    assert!(nests.len() * 3 < ops * 2, "{} kernels for {ops} ops", nests.len());
}

/// The top-level `scf.parallel` nests of a function, each as its text.
fn top_level_nests(text: &str) -> Vec<String> {
    let mut nests = Vec::new();
    let mut current: Option<(usize, String)> = None;
    for line in text.lines() {
        let indent = line.len() - line.trim_start().len();
        if let Some((depth, nest)) = &mut current {
            nest.push_str(line);
            nest.push('\n');
            if indent == *depth && line.trim() == "}" {
                nests.extend(current.take().map(|(_, n)| n));
            }
        } else if line.trim_start().starts_with("scf.parallel ") {
            current = Some((indent, format!("{line}\n")));
        }
    }
    nests
}

/// A graph compiled for `target`, with a checkpoint's weights bound.
fn jit_model_for(g: &lmc_core::ir::Graph, weights: &Path, target: lmc_codegen::Target) -> lmc_runtime::LoadedModel {
    bind_jit(g, lmc_codegen::jit_for(g, &target), weights)
}

/// What cannot run on a GPU says so and exits 1, never a crash: `--stage ptx` or `loops` without
/// the CUDA target, and (on a machine without a GPU or driver) running, timing, comparing or
/// decoding a model on one.
#[test]
fn cuda_requests_that_cannot_be_met_are_clear_errors() {
    lmc_fails(
        &["emit", "--stage", "ptx", "models/gpt2.model:GPT2LMHeadModel"],
        &["--stage ptx needs --target cuda"],
    );
    lmc_fails(
        &["emit", "--stage", "loops", "models/gpt2.model:GPT2LMHeadModel"],
        &["--stage loops needs --target cuda"],
    );
    if lmc_runtime::cuda::cuda().is_ok() {
        return;
    }
    let dir = scratch("no_gpu");
    let out = dir.join("out.safetensors");
    lmc_fails(
        &[
            "run",
            "--device",
            "cuda",
            "models/bert.model:BertModel",
            "--weights",
            "tests/fixtures/bert_tiny",
            "--inputs",
            "tests/fixtures/bert_tiny/inputs_model.safetensors",
            "-o",
            out.to_str().unwrap(),
        ],
        &["runs on an NVIDIA GPU", "use --device cpu"],
    );
    assert!(!out.exists(), "no output without a GPU");
    // The commands that time and compare models check for the GPU before compiling anything.
    let json = dir.join("report.json");
    let commands: [&[&str]; 3] = [
        &[
            "ab",
            "models/bert.model:BertModel",
            "BertALiBi",
            "--random-weights",
            "--lengths",
            "8",
        ],
        &["bench", "models/bert.model:BertModel", "--seq", "8"],
        &[
            "generate",
            "models/gpt2.model",
            "--random-weights",
            "--input-ids",
            "1,2",
            "--max-new-tokens",
            "2",
        ],
    ];
    for command in commands {
        let mut args = command.to_vec();
        args.extend(["--device", "cuda", "--json", json.to_str().unwrap()]);
        lmc_fails(&args, &["--device cuda: no", "use --device cpu"]);
        assert!(!json.exists(), "{command:?} wrote a report without a GPU");
    }
}
