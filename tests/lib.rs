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

/// `lmc run SPEC --weights WEIGHTS --inputs INPUTS -o OUT [extra...]`.
pub fn lmc_run(spec: &str, weights: &str, inputs: &str, out: &Path, extra: &[&str]) -> Output {
    let mut args = vec!["run", spec, "--weights", weights, "--inputs", inputs, "-o", out.to_str().unwrap()];
    args.extend_from_slice(extra);
    lmc(&args)
}

/// [`lmc_run`], asserting success, and the outputs it wrote (sorted by name).
pub fn run_outputs(spec: &str, weights: &str, inputs: &str, out: &Path, extra: &[&str]) -> Vec<(String, Vec<usize>, Vec<f32>)> {
    let r = lmc_run(spec, weights, inputs, out, extra);
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

/// Runs `spec` on a gradient fixture's batch (`inputs_grad.safetensors`, labels included) and
/// asserts that its `logits` and `loss` are within `tolerance` of the fixture's
/// (`expected_grad.safetensors`, what transformers computed).
pub fn assert_loss_matches_fixture(spec: &str, dir: &str, tolerance: f32) {
    let out = scratch(&format!(
        "loss_{}_{}",
        spec.replace(['/', ':', '.'], "_"),
        dir.replace(['/', '.'], "_")
    ));
    let got = run_outputs(
        spec,
        dir,
        &format!("{dir}/inputs_grad.safetensors"),
        &out.join("out.safetensors"),
        &[],
    );
    let want = read_f32_tensors(&root().join(dir).join("expected_grad.safetensors"));
    for name in ["logits", "loss"] {
        let (_, gs, gv) = got.iter().find(|(n, _, _)| n == name).expect("an output of that name");
        let (_, ws, wv) = want.iter().find(|(n, _, _)| n == name).expect("a reference of that name");
        assert_eq!(gs, ws, "{spec}: {name} shape");
        let err = max_abs_diff(gv, wv);
        assert!(err <= tolerance, "{spec}: {name}: max abs error {err}");
    }
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

/// Focused checks of emitted text, in the manner of LLVM's FileCheck: each pattern is matched
/// against one line, in order, each after the line the previous one matched. Within a pattern,
/// `{{.*}}` matches any run of characters of the line (SSA names, say), and the rest is matched
/// literally, anywhere in the line. A pattern may start with a directive:
///
/// - `LABEL: p`: a line matching `p`; the patterns after it, up to the next `LABEL:`, must match
///   before that label's line (one function's checks stay in that function);
/// - `NEXT: p`: the line right after the previous match;
/// - `NOT: p`: no line matches `p` between the previous match (or the label, or the start) and
///   the next one (or the next label, or the end);
/// - `COUNT-n: p`: `n` lines match `p`, each after the last (`n` more, not exactly `n`: follow
///   with `NOT: p` for that).
///
/// A failure names the pattern, where the search started and the text that follows, and the
/// nearest line (the one that matches the longest start of the pattern).
#[track_caller]
pub fn check_lines<P: AsRef<str>>(what: &str, text: &str, patterns: &[P]) {
    if let Err(e) = try_check_lines(text, patterns) {
        panic!("{what}: {e}");
    }
}

/// How many lines of `text` match `pattern` (a [`check_lines`] pattern, without a directive).
pub fn count_lines(text: &str, pattern: &str) -> usize {
    text.lines().filter(|l| line_matches(l, pattern)).count()
}

/// The top-level functions of a printed MLIR module, as (name, text from its `func.func` line
/// to its closing brace), in order.
pub fn mlir_functions(module: &str) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::new();
    let mut current: Option<(String, String)> = None;
    for line in module.lines() {
        if let Some((_, body)) = &mut current {
            body.push_str(line);
            body.push('\n');
            if line == "  }" {
                out.extend(current.take());
            }
        } else if line.starts_with("  func.func ") {
            let name = line.split('@').nth(1).and_then(|s| s.split('(').next()).unwrap_or_default();
            current = Some((name.to_string(), format!("{line}\n")));
        }
    }
    out
}

/// The text of the function `name` of a printed MLIR module.
#[track_caller]
pub fn mlir_function<'a>(functions: &'a [(String, String)], name: &str) -> &'a str {
    functions
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, body)| body.as_str())
        .unwrap_or_else(|| panic!("no function @{name}"))
}

/// Whether one line matches a pattern: its pieces between `{{.*}}` in order.
fn line_matches(line: &str, pattern: &str) -> bool {
    matched_prefix(line, pattern) == pattern.split("{{.*}}").count()
}

/// How many of a pattern's pieces (between `{{.*}}`) a line matches, in order.
fn matched_prefix(line: &str, pattern: &str) -> usize {
    let mut rest = line;
    let mut matched = 0;
    for piece in pattern.split("{{.*}}") {
        match rest.find(piece) {
            Some(at) => {
                rest = &rest[at + piece.len()..];
                matched += 1;
            }
            None => break,
        }
    }
    matched
}

/// How long a start of a pattern a line matches, in characters: the pieces it matches whole,
/// then the longest start of the next one found after them.
fn matched_chars(line: &str, pattern: &str) -> usize {
    let mut rest = line;
    let mut matched = 0;
    for piece in pattern.split("{{.*}}") {
        if let Some(at) = rest.find(piece) {
            rest = &rest[at + piece.len()..];
            matched += piece.len();
            continue;
        }
        let cuts: Vec<usize> = piece.char_indices().map(|(i, _)| i).skip(1).collect();
        matched += cuts.iter().rev().find(|&&k| rest.contains(&piece[..k])).copied().unwrap_or(0);
        break;
    }
    matched
}

#[derive(Clone, Copy, PartialEq)]
enum Directive {
    Plain,
    Label,
    Next,
    Not,
    Count(usize),
}

fn directive(pattern: &str) -> (Directive, &str) {
    for (prefix, d) in [
        ("LABEL: ", Directive::Label),
        ("NEXT: ", Directive::Next),
        ("NOT: ", Directive::Not),
    ] {
        if let Some(p) = pattern.strip_prefix(prefix) {
            return (d, p);
        }
    }
    if let Some(rest) = pattern.strip_prefix("COUNT-") {
        if let Some((n, p)) = rest.split_once(": ") {
            if let Ok(n) = n.parse() {
                return (Directive::Count(n), p);
            }
        }
    }
    (Directive::Plain, pattern)
}

/// [`check_lines`], with the failure as a message.
pub fn try_check_lines<P: AsRef<str>>(text: &str, patterns: &[P]) -> Result<(), String> {
    let lines: Vec<&str> = text.lines().collect();
    let patterns: Vec<&str> = patterns.iter().map(AsRef::as_ref).collect();
    let parsed: Vec<(Directive, &str)> = patterns.iter().map(|p| directive(p)).collect();
    // The labels first: each bounds the search of the patterns before it.
    let mut label_at = vec![None; parsed.len()];
    let mut from = 0;
    for (i, (d, p)) in parsed.iter().enumerate() {
        if *d == Directive::Label {
            let Some(at) = (from..lines.len()).find(|&l| line_matches(lines[l], p)) else {
                return Err(failure(&lines, patterns[i], i, from, lines.len(), None));
            };
            label_at[i] = Some(at);
            from = at + 1;
        }
    }
    let limit_after = |i: usize| label_at[i + 1..].iter().flatten().next().copied().unwrap_or(lines.len());
    let mut pos = 0; // the first line the next pattern may match
    let mut last: Option<usize> = None; // the line the previous pattern matched
    let mut nots: Vec<usize> = Vec::new(); // NOT patterns waiting for the next match
    let check_nots = |nots: &mut Vec<usize>, from: usize, to: usize| -> Result<(), String> {
        for &n in nots.iter() {
            let p = parsed[n].1;
            if let Some(l) = (from..to).find(|&l| line_matches(lines[l], p)) {
                return Err(format!(
                    "pattern {} `{}` matches line {}, which it must not:\n{}",
                    n + 1,
                    patterns[n],
                    l + 1,
                    excerpt(&lines, l, l + 1)
                ));
            }
        }
        nots.clear();
        Ok(())
    };
    for (i, &(d, p)) in parsed.iter().enumerate() {
        let limit = limit_after(i);
        match d {
            Directive::Label => {
                let at = label_at[i].unwrap();
                check_nots(&mut nots, pos, at)?;
                pos = at + 1;
                last = Some(at);
            }
            Directive::Not => nots.push(i),
            Directive::Next => {
                let want = last.map_or(0, |l| l + 1);
                if want >= limit || !line_matches(lines[want], p) {
                    return Err(failure(&lines, patterns[i], i, want, (want + 1).min(lines.len()), last));
                }
                check_nots(&mut nots, pos, want)?;
                pos = want + 1;
                last = Some(want);
            }
            Directive::Plain | Directive::Count(_) => {
                let times = if let Directive::Count(n) = d { n } else { 1 };
                let start = pos;
                for k in 0..times {
                    let Some(at) = (pos..limit).find(|&l| line_matches(lines[l], p)) else {
                        let what = if times > 1 {
                            format!("{} (match {} of {times})", patterns[i], k + 1)
                        } else {
                            patterns[i].to_string()
                        };
                        return Err(failure(&lines, &what, i, pos, limit, last));
                    };
                    if k == 0 {
                        check_nots(&mut nots, start, at)?;
                    }
                    pos = at + 1;
                    last = Some(at);
                }
            }
        }
    }
    let end = parsed.len().checked_sub(1).map_or(lines.len(), limit_after);
    check_nots(&mut nots, pos, end)
}

/// The message of a pattern not found between lines `from` and `to`.
fn failure(lines: &[&str], pattern: &str, index: usize, from: usize, to: usize, last: Option<usize>) -> String {
    let bare = directive(pattern).1;
    let after = last.map_or("from the start".to_string(), |l| format!("after line {}", l + 1));
    let mut message = format!(
        "pattern {} `{pattern}` not found in lines {}..{} ({after}); the text from there:\n{}",
        index + 1,
        from + 1,
        to,
        excerpt(lines, from, (from + 8).min(to.max(from + 1)))
    );
    // The nearest line: the one that matches the longest start of the pattern, then the first.
    let best = (from..to.min(lines.len()))
        .map(|l| (matched_chars(lines[l], bare), l))
        .filter(|&(m, _)| m > 0)
        .max_by_key(|&(m, l)| (m, std::cmp::Reverse(l)));
    match best {
        Some((_, l)) => message.push_str(&format!("\nthe nearest line:\n{}", excerpt(lines, l, l + 1))),
        None => message.push_str("\nno line there matches even the start of the pattern"),
    }
    message
}

/// Lines `from..to` (1-based numbers), each cut at 200 characters.
fn excerpt(lines: &[&str], from: usize, to: usize) -> String {
    lines[from.min(lines.len())..to.min(lines.len())]
        .iter()
        .enumerate()
        .map(|(k, l)| {
            let cut: String = l.chars().take(200).collect();
            let more = if cut.len() < l.len() { " ..." } else { "" };
            format!("  {:>6} | {cut}{more}", from + k + 1)
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// f32 → bf16 bits, rounding to nearest, ties to even (as `torch.Tensor.to(torch.bfloat16)`).
pub fn bf16_bits(x: f32) -> u16 {
    let bits = x.to_bits();
    let rounded = bits + 0x7fff + ((bits >> 16) & 1);
    (rounded >> 16) as u16
}

/// Writes a safetensors file of 16-bit tensors of `dtype` (`BF16`, `F16`).
pub fn write_half(path: &Path, dtype: &str, tensors: &[(String, Vec<usize>, Vec<u16>)]) {
    write_raw(
        path,
        &tensors
            .iter()
            .map(|(n, s, v)| {
                (
                    n.clone(),
                    dtype.to_string(),
                    s.clone(),
                    v.iter().flat_map(|h| h.to_le_bytes()).collect(),
                )
            })
            .collect::<Vec<_>>(),
    );
}

/// Writes a safetensors file as `save_pretrained` lays it out: a little-endian header length,
/// the JSON header (padded with spaces to 8 bytes), then the tensors' bytes in order.
pub fn write_raw(path: &Path, tensors: &[(String, String, Vec<usize>, Vec<u8>)]) {
    let mut header = serde_json::Map::new();
    header.insert("__metadata__".into(), serde_json::json!({ "format": "pt" }));
    let mut data = Vec::new();
    for (name, dtype, shape, bytes) in tensors {
        let start = data.len();
        data.extend_from_slice(bytes);
        header.insert(
            name.clone(),
            serde_json::json!({ "dtype": dtype, "shape": shape, "data_offsets": [start, data.len()] }),
        );
    }
    let mut text = serde_json::to_string(&header).unwrap();
    while !text.len().is_multiple_of(8) {
        text.push(' ');
    }
    let mut file = (text.len() as u64).to_le_bytes().to_vec();
    file.extend_from_slice(text.as_bytes());
    file.extend_from_slice(&data);
    std::fs::write(path, file).unwrap();
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "func @a\n  x = add 1\n  y = mul x\nfunc @b\n  z = add 2\n";

    #[test]
    fn patterns_match_in_order() {
        try_check_lines(TEXT, &["add 1", "NEXT: y = mul", "func @b", "z = {{.*}} 2"]).unwrap();
        assert!(try_check_lines(TEXT, &["mul", "add 1"]).is_err(), "out of order");
        assert!(try_check_lines(TEXT, &["add 1", "NEXT: func @b"]).is_err(), "not the next line");
        assert!(try_check_lines(TEXT, &["z = {{.*}} 3"]).is_err());
    }

    #[test]
    fn labels_keep_checks_in_their_block() {
        try_check_lines(TEXT, &["LABEL: func @a", "mul", "LABEL: func @b", "add 2"]).unwrap();
        let e = try_check_lines(TEXT, &["LABEL: func @a", "add 2", "LABEL: func @b"]).unwrap_err();
        assert!(e.contains("pattern 2 `add 2` not found in lines 2..3"), "{e}");
        assert!(e.contains("the nearest line:\n       2 |   x = add 1"), "{e}");
    }

    #[test]
    fn not_and_count() {
        try_check_lines(TEXT, &["COUNT-2: = add", "NOT: = add"]).unwrap();
        assert!(try_check_lines(TEXT, &["COUNT-3: = add"]).is_err());
        assert!(try_check_lines(TEXT, &["= add", "NOT: = add"]).is_err());
        try_check_lines(TEXT, &["LABEL: func @a", "NOT: add 2", "LABEL: func @b"]).unwrap();
        let e = try_check_lines(TEXT, &["func @a", "NOT: mul", "func @b"]).unwrap_err();
        assert!(e.contains("matches line 3, which it must not"), "{e}");
        assert_eq!(count_lines(TEXT, "= add"), 2);
    }

    #[test]
    fn functions_of_a_module() {
        let module = "module {\n  func.func @forward(%a: i32) {\n    return\n  }\n  func.func private @f() {\n  }\n}\n";
        let f = mlir_functions(module);
        assert_eq!(f.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>(), ["forward", "f"]);
        assert_eq!(mlir_function(&f, "forward").lines().count(), 3);
    }
}
