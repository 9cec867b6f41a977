//! The command line's front door: reports to stdout (`--json -`), one naming across
//! subcommands, `check`/`fmt` on directories and stdin, colours, `lmc ab`'s exit status,
//! `--version`, and missing weights said before anything is compiled.

use lmc_tests::{expect_error, lmc, lmc_bin, lmc_fails, root, scratch};
use std::io::Write;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

const GPT2: &str = "models/gpt2.model:GPT2LMHeadModel";
const GPT2_TINY: &str = "tests/fixtures/gpt2_tiny";

/// Runs `lmc` from the repository root with `args`, `stdin` piped in and `env` set.
fn lmc_with(args: &[&str], stdin: &str, env: &[(&str, &str)]) -> Output {
    let mut child = Command::new(lmc_bin())
        .args(args)
        .current_dir(root())
        .envs(env.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run lmc");
    let mut pipe = child.stdin.take().unwrap();
    pipe.write_all(stdin.as_bytes()).unwrap();
    drop(pipe);
    child.wait_with_output().unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Parses stdout as one JSON document, or fails showing both streams.
fn stdout_json(r: &Output) -> serde_json::Value {
    serde_json::from_slice(&r.stdout)
        .unwrap_or_else(|e| panic!("stdout is not JSON ({e}):\n{}\n--- stderr\n{}", text(&r.stdout), text(&r.stderr)))
}

const UNFORMATTED: &str = "config C {  a = 1\n b = 2 }\nmodel M(c: C) { forward(x: f32[B]) -> (y: f32[B]) { return x } }\n";
const FORMATTED: &str = "config C {\n  a = 1\n  b = 2\n}\n\nmodel M(c: C) {\n  forward(x: f32[B]) -> (y: f32[B]) {\n    return x\n  }\n}\n";

// 1. `--json -`: the report on stdout, what a person reads on stderr.

/// `lmc ab --json -` writes only the JSON report to stdout; the tables go to stderr. A length
/// past GPT-2's learned table (24 positions) is skipped for it by design: not a failure.
#[test]
fn ab_writes_json_to_stdout() {
    let r = lmc(&[
        "ab",
        GPT2,
        "GPT2ALiBi",
        "--weights",
        GPT2_TINY,
        "--lengths",
        "8,30",
        "--runs",
        "3",
        "--warmup",
        "0",
        "--json",
        "-",
    ]);
    let stderr = text(&r.stderr);
    assert_eq!(r.status.code(), Some(0), "a length past a table is not a failure: {stderr}");
    let report = stdout_json(&r);
    assert_eq!(report["variants"].as_array().unwrap().len(), 2);
    let cells = report["cells"].as_array().unwrap();
    assert_eq!(cells.len(), 2);
    assert_eq!(cells[0]["variants"][0]["times_ms"].as_array().unwrap().len(), 3);
    let skipped = cells[1]["variants"][0]["skipped"].as_str().unwrap();
    assert!(skipped.contains("cannot run past 24"), "{skipped}");
    assert!(cells[1]["variants"][0].get("failed").is_none(), "{}", cells[1]);
    // The human-readable report went to stderr.
    assert!(
        stderr.contains("variants (kernels on") && stderr.contains("batch 1, length 8"),
        "{stderr}"
    );
    assert!(!stderr.contains("wrote -"), "{stderr}");
}

/// Only one report can take stdout; that is said before anything is compiled.
#[test]
fn ab_takes_one_report_on_stdout() {
    let r = lmc(&["ab", GPT2, "GPT2ALiBi", "--weights", GPT2_TINY, "--json", "-", "--csv", "-"]);
    let stderr = text(&r.stderr);
    expect_error(
        r.status.code().unwrap_or(-1),
        &stderr,
        &["only one of --json, --csv and --html can be `-`"],
    );
    assert!(!stderr.contains("compiling"), "{stderr}");
}

/// `lmc bench --json -` (and `--lengths`, the name `lmc ab` uses): JSON on stdout, the table on
/// stderr. `--seq` still works for old scripts.
#[test]
fn bench_writes_json_to_stdout() {
    let r = lmc(&[
        "bench",
        GPT2,
        "--weights",
        GPT2_TINY,
        "--lengths",
        "8",
        "--runs",
        "3",
        "--warmup",
        "0",
        "--json",
        "-",
    ]);
    let stderr = text(&r.stderr);
    assert!(r.status.success(), "{stderr}");
    let report = stdout_json(&r);
    assert_eq!(report["length"], 8);
    assert_eq!(report["seq"], 8, "the old key stays for the peers' scripts");
    assert_eq!(report["times_ms"].as_array().unwrap().len(), 3);
    assert!(report["median_ms"].as_f64().unwrap() > 0.0);
    assert!(stderr.contains("batch 1, length 8") && stderr.contains("latency"), "{stderr}");

    let r = lmc(&["bench", GPT2, "--weights", GPT2_TINY, "--seq", "4", "--runs", "3", "--warmup", "0"]);
    let stdout = text(&r.stdout);
    assert!(r.status.success(), "{}", text(&r.stderr));
    assert!(stdout.contains("batch 1, length 4"), "{stdout}");
}

/// `lmc generate --json -`: the timings and the tokens as JSON on stdout, the tokens as text
/// on stderr.
#[test]
fn generate_writes_json_to_stdout() {
    let r = lmc(&[
        "generate",
        GPT2,
        "--weights",
        GPT2_TINY,
        "--input-ids",
        "16,5,26",
        "--max-new-tokens",
        "3",
        "--json",
        "-",
    ]);
    let stderr = text(&r.stderr);
    assert!(r.status.success(), "{stderr}");
    let report = stdout_json(&r);
    assert_eq!(report["new_tokens"], 3);
    let tokens: Vec<String> = report["tokens"][0]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_i64().unwrap().to_string())
        .collect();
    assert_eq!(tokens.len(), 3);
    assert!(stderr.lines().any(|l| l == tokens.join(" ")), "the tokens on stderr: {stderr}");
}

// 2. One naming: `--batch` and `--lengths`.

/// `lmc bench` times one length and one batch size: a list is an error that points to `lmc ab`,
/// before anything is compiled.
#[test]
fn bench_takes_one_length() {
    lmc_fails(
        &["bench", GPT2, "--weights", GPT2_TINY, "--lengths", "8,16"],
        &["`--lengths 8,16`: lmc bench times one length", "`lmc ab` sweeps several"],
    );
    lmc_fails(
        &["bench", GPT2, "--weights", GPT2_TINY, "--batch", "1,2"],
        &["lmc bench times one batch size", "`lmc ab` sweeps several"],
    );
    lmc_fails(&["bench", GPT2, "--weights", GPT2_TINY, "--lengths", "0"], &["must be at least 1"]);
    let help = text(&lmc(&["bench", "--help"]).stdout);
    assert!(help.contains("--lengths <T>") && help.contains("--batch <B>"), "{help}");
    assert!(!help.contains("--seq <"), "--seq is a hidden alias: {help}");
}

// 3. `check` and `fmt` on directories and stdin; `fmt --check` shows a diff.

/// `lmc check DIR` checks every `.model` file under it, in sorted order, skipping hidden
/// entries and other files; the repository's models (with the standard library) pass.
#[test]
fn check_takes_directories() {
    let r = lmc(&["check", "models"]);
    assert!(r.status.success(), "{}", text(&r.stderr));
    assert!(r.stderr.is_empty(), "{}", text(&r.stderr));

    let dir = scratch("cli_check_dir");
    std::fs::create_dir_all(dir.join("a")).unwrap();
    std::fs::create_dir_all(dir.join(".hidden")).unwrap();
    let bad = "model M(c: C) { forward(x: f32[B]) -> (y: f32[B]) { return x } }\n";
    for f in ["b.model", "a/z.model", ".hidden/x.model"] {
        std::fs::write(dir.join(f), bad).unwrap();
    }
    std::fs::write(dir.join("notes.txt"), "not a model").unwrap();
    let r = lmc(&["check", dir.to_str().unwrap(), "--message-format", "json"]);
    assert_eq!(r.status.code(), Some(1), "{}", text(&r.stderr));
    let files: Vec<String> = text(&r.stdout)
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["primary"]["file"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    let names: Vec<&str> = files.iter().map(|f| f.strip_prefix(dir.to_str().unwrap()).unwrap()).collect();
    assert_eq!(names, ["/a/z.model", "/b.model"], "{files:?}");

    let empty = scratch("cli_check_empty");
    lmc_fails(&["check", empty.to_str().unwrap()], &["no `.model` files in this directory"]);
}

/// `lmc fmt --check DIR` prints a unified diff of every file that would change and exits 1,
/// changing nothing; `lmc fmt DIR` rewrites them; then `--check` passes, silently.
#[test]
fn fmt_takes_directories_and_shows_a_diff() {
    let dir = scratch("cli_fmt_dir");
    std::fs::create_dir_all(dir.join("nested")).unwrap();
    let (a, b) = (dir.join("a.model"), dir.join("nested/b.model"));
    std::fs::write(&a, UNFORMATTED).unwrap();
    std::fs::write(&b, UNFORMATTED).unwrap();
    let d = dir.to_str().unwrap();
    let r = lmc(&["fmt", "--check", d]);
    let (stdout, stderr) = (text(&r.stdout), text(&r.stderr));
    expect_error(r.status.code().unwrap_or(-1), &stderr, &["not formatted", "a.model", "b.model"]);
    for want in [
        format!("--- {}", a.display()),
        format!("+++ {} (formatted)", a.display()),
        format!("--- {}", b.display()),
        "@@ -1,3 +1,10 @@".to_string(),
        "-config C {  a = 1".to_string(),
        "+config C {".to_string(),
        "+  a = 1".to_string(),
        "+    return x".to_string(),
    ] {
        assert!(stdout.lines().any(|l| l == want), "`{want}` not in:\n{stdout}");
    }
    assert!(stdout.find("a.model").unwrap() < stdout.find("b.model").unwrap(), "{stdout}");
    assert_eq!(std::fs::read_to_string(&a).unwrap(), UNFORMATTED, "--check changes nothing");

    let r = lmc(&["fmt", d]);
    assert!(r.status.success(), "{}", text(&r.stderr));
    assert_eq!(std::fs::read_to_string(&a).unwrap(), FORMATTED);
    assert_eq!(std::fs::read_to_string(&b).unwrap(), FORMATTED);
    let r = lmc(&["fmt", "--check", d]);
    assert!(r.status.success() && r.stdout.is_empty(), "{}{}", text(&r.stdout), text(&r.stderr));
}

/// `lmc fmt -` formats stdin to stdout; `lmc fmt --check -` exits 1 with a diff when stdin is
/// not formatted and 0 when it is; a syntax error is a diagnostic naming `<stdin>`.
#[test]
fn fmt_reads_stdin() {
    let r = lmc_with(&["fmt", "-"], UNFORMATTED, &[]);
    assert!(r.status.success(), "{}", text(&r.stderr));
    assert_eq!(text(&r.stdout), FORMATTED);

    let r = lmc_with(&["fmt", "--check", "-"], UNFORMATTED, &[]);
    let stdout = text(&r.stdout);
    expect_error(r.status.code().unwrap_or(-1), &text(&r.stderr), &["<stdin> is not formatted"]);
    assert!(stdout.starts_with("--- <stdin>\n+++ <stdin> (formatted)\n@@ "), "{stdout}");

    let r = lmc_with(&["fmt", "--check", "-"], FORMATTED, &[]);
    assert!(r.status.success() && r.stdout.is_empty(), "{}", text(&r.stderr));

    let r = lmc_with(&["fmt", "-"], "model (\n", &[]);
    expect_error(
        r.status.code().unwrap_or(-1),
        &text(&r.stderr),
        &["error[E0001]", "--> <stdin>:1:7"],
    );
    assert!(r.stdout.is_empty());
    lmc_fails(&["fmt", "-", "models/bert.model"], &["formats stdin alone"]);
}

// 4. Colour.

/// The UI case whose diagnostics the colour tests look at.
const UI_CASE: &str = "tests/ui/arange_past_table.model";

/// Into a pipe the diagnostics are plain, byte for byte the UI test's; `--color always` colours
/// them as rustc does (and wins over `NO_COLOR`); `--color never` does not.
#[test]
fn color_follows_the_option() {
    let expected = std::fs::read_to_string(root().join(UI_CASE).with_extension("stderr")).unwrap();
    let plain = text(&lmc(&["check", UI_CASE]).stderr);
    assert_eq!(plain, expected);
    assert!(!plain.contains('\x1b'));
    let never = text(&lmc(&["--color", "never", "check", UI_CASE]).stderr);
    assert_eq!(never, expected);

    let r = lmc_with(&["check", UI_CASE, "--color=always"], "", &[("NO_COLOR", "1")]);
    assert_eq!(r.status.code(), Some(1));
    let colored = text(&r.stderr);
    assert!(colored.starts_with("\x1b[1;31merror[E0207]\x1b[0m\x1b[1m: "), "{colored:?}");
    assert!(colored.contains("\x1b[1;34m4 |\x1b[0m"), "blue line numbers: {colored:?}");
    assert!(colored.contains("\x1b[1;31m^^^"), "red carets: {colored:?}");
    assert_eq!(strip_ansi(&colored), expected);

    // `error:` lines too.
    let r = lmc(&["--color", "always", "check", "no/such.model"]);
    let stderr = text(&r.stderr);
    assert!(stderr.starts_with("\x1b[1;31merror\x1b[0m\x1b[1m: "), "{stderr:?}");
    // `--message-format json` is JSON whatever the colour.
    let r = lmc(&["--color", "always", "check", UI_CASE, "--message-format", "json"]);
    assert!(!text(&r.stdout).contains('\x1b'));
    serde_json::from_str::<serde_json::Value>(text(&r.stdout).lines().next().unwrap()).unwrap();
    // A usage error, which clap exits 2 for (as for every option).
    let r = lmc(&["--color", "sometimes", "check", UI_CASE]);
    assert_eq!(r.status.code(), Some(2));
    assert!(text(&r.stderr).contains("invalid value 'sometimes'"), "{}", text(&r.stderr));
}

/// `--color auto` colours on a terminal unless `NO_COLOR` is set (non-empty): run under
/// `script`, which gives lmc a terminal, where the machine has it.
#[test]
fn color_auto_on_a_terminal() {
    if Command::new("script").arg("--version").output().is_err() {
        eprintln!("skipped: no `script` to run lmc on a terminal");
        return;
    }
    let on_terminal = |no_color: &str| {
        let command = format!("{} check {UI_CASE}", lmc_bin().display());
        let mut c = Command::new("script");
        c.args(["-qec", &command, "/dev/null"]).current_dir(root()).env_remove("NO_COLOR");
        if !no_color.is_empty() {
            c.env("NO_COLOR", no_color);
        }
        text(&c.output().unwrap().stdout)
    };
    assert!(on_terminal("").contains("\x1b[1;31merror[E0207]"), "{:?}", on_terminal(""));
    let without = on_terminal("1");
    assert!(without.contains("error[E0207]") && !without.contains('\x1b'), "{without:?}");
}

fn strip_ansi(s: &str) -> String {
    let mut out = String::new();
    let mut rest = s;
    while let Some(at) = rest.find('\x1b') {
        out.push_str(&rest[..at]);
        let end = rest[at..].find('m').unwrap();
        rest = &rest[at + end + 1..];
    }
    out.push_str(rest);
    out
}

// 5. `lmc ab` fails when a variant fails.

/// A variant that does not compile (a bad `set` value in an experiment file) fails `lmc ab`
/// with exit 1, after the report is printed and written (here the CSV, to stdout).
#[test]
fn ab_fails_when_a_variant_fails() {
    let dir = scratch("cli_ab_failed");
    let yaml = dir.join("bad.yaml");
    std::fs::write(
        &yaml,
        format!(
            "variants:\n  - model: {root}/{GPT2}\n  - model: GPT2ALiBi\n    set: {{ n_embd: abc }}\n\
             weights: {root}/{GPT2_TINY}\nlengths: [8]\nruns: 3\nwarmup: 0\n",
            root = root().display()
        ),
    )
    .unwrap();
    // A report's directory is made if it is not there: the measurements are not lost to it.
    let json = dir.join("reports").join("r.json");
    let r = lmc(&["ab", yaml.to_str().unwrap(), "--csv", "-", "--json", json.to_str().unwrap()]);
    let (stdout, stderr) = (text(&r.stdout), text(&r.stderr));
    expect_error(
        r.status.code().unwrap_or(-1),
        &stderr,
        &["\"abc\" is not an integer", "error: 1 variant(s) failed: B"],
    );
    // The CSV on stdout, the tables on stderr, the error after them.
    assert!(stdout.lines().count() >= 2 && stdout.lines().all(|l| l.contains(',')), "{stdout}");
    assert!(
        stderr.find("batch 1, length 8").unwrap() < stderr.find("variant(s) failed").unwrap(),
        "{stderr}"
    );
    let report: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert!(report["variants"][1]["error"].is_string(), "{report}");
    assert!(report["cells"][0]["variants"][0]["median_ms"].as_f64().is_some(), "{report}");
    // Where and when the numbers were measured.
    for key in ["commit", "cpu", "date", "generator"] {
        assert!(report[key].as_str().is_some_and(|s| !s.is_empty()), "{key}: {report}");
    }
}

/// `lmc check --config DIR`: per model, the config.json keys its config reads, assumes a value
/// of, and ignores.
#[test]
fn check_lists_the_config_keys() {
    let r = lmc(&["check", "--config", "tests/fixtures/llama_tiny", "models/llama.model"]);
    let stdout = text(&r.stdout);
    assert!(r.status.success(), "{}", text(&r.stderr));
    for line in [
        "LlamaForCausalLM",
        "  reads    model_type, vocab_size, hidden_size, intermediate_size, num_hidden_layers, num_attention_heads, num_key_value_heads, head_dim, rms_norm_eps, rope_parameters.rope_theta, hidden_act, max_position_embeddings, attention_bias, tie_word_embeddings, attention_dropout",
        "  assumes  rope_parameters.rope_type, mlp_bias, pretraining_tp",
    ] {
        assert!(stdout.lines().any(|l| l == line), "`{line}` not in:\n{stdout}");
    }
    let ignores = stdout.lines().find(|l| l.starts_with("  ignores  ")).unwrap_or_default();
    assert!(ignores.contains("architectures") && !ignores.contains("hidden_size"), "{stdout}");
    // Without --config, nothing is listed.
    let r = lmc(&["check", "models/llama.model"]);
    assert!(r.status.success() && text(&r.stdout).is_empty(), "{}", text(&r.stdout));
}

// 6. `--version`.

/// `lmc --version`: the version, the commit built from, and the LLVM linked.
#[test]
fn version_names_commit_and_llvm() {
    let r = lmc(&["--version"]);
    assert!(r.status.success());
    let line = text(&r.stdout);
    let line = line.trim_end();
    let rest = line
        .strip_prefix(&format!("lmc {} (commit ", env!("CARGO_PKG_VERSION")))
        .unwrap_or_else(|| panic!("{line}"));
    let (commit, llvm) = rest
        .strip_suffix(')')
        .and_then(|r| r.split_once(", LLVM "))
        .unwrap_or_else(|| panic!("{line}"));
    let hash = commit.strip_suffix("-dirty").unwrap_or(commit);
    assert!(
        commit == "unknown" || (hash.len() >= 7 && hash.chars().all(|c| c.is_ascii_hexdigit())),
        "{line}"
    );
    assert!(
        llvm.split('.').count() == 3 && llvm.split('.').all(|p| p.parse::<u32>().is_ok()),
        "{line}"
    );
    if let Ok(out) = Command::new("/usr/lib/llvm-22/bin/llvm-config").arg("--version").output() {
        let installed = text(&out.stdout);
        assert!(
            installed.starts_with(llvm.split('.').next().unwrap()),
            "{line} vs llvm-config {installed}"
        );
    }
}

// 7. Missing weights are said before anything is compiled.

/// `--weights` that does not exist, or a directory without a checkpoint, fails at once for
/// every command that runs a model (and for an experiment file's `weights`).
#[test]
fn missing_weights_fail_fast() {
    let dir = scratch("cli_weights");
    let yaml = dir.join("nope.yaml");
    std::fs::write(
        &yaml,
        format!(
            "variants:\n  - model: {}/{GPT2}\n  - model: GPT2ALiBi\nweights: nope\n",
            root().display()
        ),
    )
    .unwrap();
    let nope = "tests/fixtures/nope";
    let inputs = "tests/fixtures/gpt2_tiny/inputs.safetensors";
    let cases: [(&[&str], String); 7] = [
        (
            &["run", GPT2, "--weights", nope, "--inputs", inputs, "-o", "out.safetensors"],
            format!("error: --weights {nope}: no such file or directory"),
        ),
        (
            &["generate", GPT2, "--weights", nope, "--input-ids", "1,2", "--max-new-tokens", "2"],
            format!("error: --weights {nope}: no such file or directory"),
        ),
        (
            &["bench", GPT2, "--weights", nope, "--lengths", "8"],
            format!("error: --weights {nope}: no such file or directory"),
        ),
        (
            &["ab", GPT2, "GPT2ALiBi", "--weights", nope, "--json", "-"],
            format!("error: --weights {nope}: no such file or directory"),
        ),
        (
            &["ab", yaml.to_str().unwrap()],
            format!(
                "error: {}: weights {}: no such file or directory",
                yaml.display(),
                dir.join("nope").display()
            ),
        ),
        (
            &[
                "run",
                GPT2,
                "--weights",
                "tests/fixtures",
                "--inputs",
                inputs,
                "-o",
                "out.safetensors",
            ],
            "error: --weights tests/fixtures: holds no .safetensors file".to_string(),
        ),
        (
            &[
                "run",
                GPT2,
                "--weights",
                GPT2_TINY,
                "--inputs",
                "tests/fixtures/nope.safetensors",
                "-o",
                "out.safetensors",
            ],
            "error: --inputs tests/fixtures/nope.safetensors: no such file or directory".to_string(),
        ),
    ];
    for (args, message) in cases {
        let started = Instant::now();
        let r = lmc(args);
        let elapsed = started.elapsed();
        let stderr = text(&r.stderr);
        expect_error(r.status.code().unwrap_or(-1), &stderr, &[&message]);
        assert!(
            !stderr.contains("compil") && r.stdout.is_empty(),
            "{args:?} compiled first: {stderr}"
        );
        assert!(elapsed < Duration::from_secs(10), "{args:?} took {elapsed:?}");
    }
    assert!(!root().join("out.safetensors").exists());
}
