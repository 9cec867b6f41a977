//! Shared helpers of the integration tests: where the built `lmc` binary and runtime library
//! are, running commands, and reading results.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The repository root.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

/// The cargo profile directory the tests were built into (`target/debug`).
pub fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    // target/debug/deps/pipeline-<hash> → target/debug
    exe.parent()
        .and_then(Path::parent)
        .expect("tests run from target/<profile>/deps")
        .to_path_buf()
}

/// The `lmc` binary. The README's test command builds it before running the tests.
pub fn lmc_bin() -> PathBuf {
    let p = profile_dir().join("lmc");
    assert!(
        p.exists(),
        "{} is missing: run `cargo build --workspace` before the tests (scripts/test.sh does)",
        p.display()
    );
    p
}

/// Runs `lmc` with arguments from the repository root.
pub fn lmc(args: &[&str]) -> Output {
    Command::new(lmc_bin()).args(args).current_dir(root()).output().expect("run lmc")
}

/// A fresh scratch directory for one test.
pub fn scratch(name: &str) -> PathBuf {
    let dir = profile_dir().join("lmc-test-scratch").join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Reads every tensor of a safetensors file as (name, shape, f32 values).
pub fn read_f32_tensors(path: &Path) -> Vec<(String, Vec<usize>, Vec<f32>)> {
    let file = lmc_runtime::safetensors::SafeTensorsFile::open(path).unwrap_or_else(|e| panic!("{e}"));
    let mut out: Vec<(String, Vec<usize>, Vec<f32>)> = file
        .tensors()
        .map(|info| {
            let t = file.get(&info.name).unwrap().to_host().unwrap();
            (info.name.clone(), t.shape.clone(), t.as_f32().expect("f32 tensor").to_vec())
        })
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

/// Largest absolute difference between two equally shaped tensors.
pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "tensors differ in size");
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

/// `lmc run SPEC --weights WEIGHTS --inputs INPUTS -o OUT [extra...]`, asserting success, and the
/// outputs it wrote (sorted by name).
pub fn run_outputs(spec: &str, weights: &str, inputs: &str, out: &Path, extra: &[&str]) -> Vec<(String, Vec<usize>, Vec<f32>)> {
    let mut args = vec!["run", spec, "--weights", weights, "--inputs", inputs, "-o", out.to_str().unwrap()];
    args.extend_from_slice(extra);
    let r = lmc(&args);
    assert!(r.status.success(), "{spec}: {}", String::from_utf8_lossy(&r.stderr));
    read_f32_tensors(out)
}

/// Asserts that a command failed cleanly: exit 1, no panic, and every needle in its stderr.
pub fn expect_error(code: i32, stderr: &str, needles: &[&str]) {
    assert_eq!(code, 1, "expected exit 1, got {code}: {stderr}");
    assert!(!stderr.contains("panicked"), "panic: {stderr}");
    for n in needles {
        assert!(stderr.contains(n), "`{n}` not in: {stderr}");
    }
}

/// Runs `lmc` with `args` and asserts it failed cleanly with every needle in its stderr.
pub fn lmc_fails(args: &[&str], needles: &[&str]) {
    let r = lmc(args);
    expect_error(r.status.code().unwrap_or(-1), &String::from_utf8_lossy(&r.stderr), needles);
}

/// Runs `spec` on a fixture directory (`inputs.safetensors` → `expected.safetensors`), compares
/// every output with the reference, and gives the largest error.
pub fn assert_matches_fixture(spec: &str, ckpt: &str, tolerance: f32) -> f32 {
    let dir = scratch(&format!(
        "fixture_{}_{}",
        spec.replace(['/', ':', '.'], "_"),
        ckpt.replace(['/', '.'], "_")
    ));
    let out = dir.join("outputs.safetensors");
    let got = run_outputs(spec, ckpt, &format!("{ckpt}/inputs.safetensors"), &out, &[]);
    let want = read_f32_tensors(&root().join(format!("{ckpt}/expected.safetensors")));
    assert_eq!(got.len(), want.len(), "{spec}: outputs");
    let mut worst = 0.0f32;
    for ((gn, gs, gv), (wn, ws, wv)) in got.iter().zip(&want) {
        assert_eq!((gn, gs), (wn, ws), "{spec}: output name and shape");
        let err = max_abs_diff(gv, wv);
        assert!(err <= tolerance, "{spec} on {ckpt}: {gn}: max abs error {err} > {tolerance}");
        worst = worst.max(err);
    }
    worst
}

/// JIT-compiles a graph and binds a checkpoint's weights: the model as `lmc run` would run it.
pub fn jit_model(g: &lmc_core::ir::Graph, weights: &Path) -> lmc_runtime::LoadedModel {
    bind_jit(g, lmc_codegen::jit(g), weights)
}

/// Loads a module the JIT compiled for graph `g` and binds a checkpoint's weights.
pub fn bind_jit(
    g: &lmc_core::ir::Graph,
    jit: Result<lmc_codegen::JitModule, lmc_codegen::CodegenError>,
    weights: &Path,
) -> lmc_runtime::LoadedModel {
    bind_jit_with(g, jit, |_| lmc_runtime::WeightsSource::Path(weights.to_path_buf()))
}

/// Loads a module the JIT compiled for graph `g` and binds the weights `weights` gives for its
/// manifest (random ones, say).
pub fn bind_jit_with(
    g: &lmc_core::ir::Graph,
    jit: Result<lmc_codegen::JitModule, lmc_codegen::CodegenError>,
    weights: impl FnOnce(&lmc_abi::Manifest) -> lmc_runtime::WeightsSource,
) -> lmc_runtime::LoadedModel {
    let jit = std::sync::Arc::new(jit.unwrap_or_else(|e| panic!("{}: {e}", g.model)));
    let handle = jit.clone();
    let lookup = move |name: &str| handle.lookup(name);
    // SAFETY: the symbols come from the module just generated for this ABI; the JIT that owns
    // the code is the keep-alive.
    let module = unsafe { lmc_runtime::Module::from_symbols(&lookup, Box::new(jit)) }.unwrap_or_else(|e| panic!("{}: {e}", g.model));
    let source = weights(module.manifest());
    module.bind_weights(source).unwrap_or_else(|e| panic!("{}: {e}", g.model))
}

/// Reads every tensor of a safetensors file as it is (any dtype).
pub fn read_host_tensors(path: &Path) -> Vec<lmc_runtime::HostTensor> {
    let file = lmc_runtime::SafeTensorsFile::open(path).unwrap_or_else(|e| panic!("{e}"));
    file.tensors()
        .map(|info| file.get(&info.name).unwrap().to_host().unwrap())
        .collect()
}

/// Checks model `name` of a model file (relative to the repository root), configured by a
/// checkpoint directory's config.json.
pub fn checked_model(file: &str, name: &str, checkpoint: &Path) -> lmc_core::ir::Graph {
    let text = std::fs::read_to_string(root().join(file)).unwrap();
    let dir = root().join(file).parent().unwrap().to_path_buf();
    let program = lmc_core::load_source(file, &text, Some(&dir)).unwrap_or_else(|f| panic!("{file}: {:?}", f.diagnostics));
    let config = std::fs::read_to_string(checkpoint.join("config.json")).unwrap();
    let overrides = lmc_core::ConfigOverrides::default().with_checkpoint_json(&config).unwrap();
    match lmc_core::check_model(&program, Some(name), &overrides) {
        Ok(c) => c.graph,
        Err(e) => panic!("{file}:{name} does not check: {e:?}"),
    }
}

/// Builds a C host program from `tests/c_host/SOURCE` against the runtime's C API and the given
/// library (with `-I` for its header's directory and `defines` as `-D`), asserting success.
/// `LMC_HOST_CC` and `LMC_HOST_CFLAGS` build it otherwise: docs/testing.md's AddressSanitizer run links
/// it with `clang-22 -fsanitize=address`.
pub fn build_c_host(source: &str, exe: &Path, library: &Path, defines: &[String]) {
    let runtime_lib = profile_dir().join("liblmc_runtime.so");
    assert!(
        runtime_lib.exists(),
        "{} is missing: run `cargo build --workspace` first",
        runtime_lib.display()
    );
    let dir = library.parent().unwrap();
    let cc = Command::new(std::env::var("LMC_HOST_CC").unwrap_or_else(|_| "cc".into()))
        .args(std::env::var("LMC_HOST_CFLAGS").unwrap_or_default().split_whitespace())
        .args(["-std=c99", "-Wall", "-Wextra", "-Werror", "-o"])
        .arg(exe)
        .arg(root().join("tests/c_host").join(source))
        .arg(format!("-I{}", root().join("runtime/include").display()))
        .arg(format!("-I{}", dir.display()))
        .args(defines.iter().map(|d| format!("-D{d}")))
        .arg(library)
        .arg(&runtime_lib)
        .arg(format!("-Wl,-rpath,{}:{}", dir.display(), profile_dir().display()))
        .output()
        .unwrap();
    assert!(cc.status.success(), "cc failed: {}", String::from_utf8_lossy(&cc.stderr));
}
