//! Libraries from `lmc compile` are portable: built for an x86-64 level (`--target-cpu`), they
//! record no path of the machine that built them, find the OpenMP runtime beside themselves,
//! and run after their directory has moved.

use lmc_tests::{lmc, lmc_run, max_abs_diff, read_f32_tensors, root, scratch};
use std::path::Path;

/// (model, checkpoint, inputs, expected outputs, tolerance, CPU level)
const CASES: [(&str, &str, &str, &str, f32, &str); 3] = [
    (
        "models/bert.model:BertModel",
        "tests/fixtures/bert_tiny",
        "inputs_model.safetensors",
        "expected_model.safetensors",
        1e-5,
        "x86-64-v2",
    ),
    (
        "models/gpt2.model:GPT2LMHeadModel",
        "tests/fixtures/gpt2_tiny",
        "inputs.safetensors",
        "expected.safetensors",
        1e-4,
        "x86-64-v2",
    ),
    (
        "models/mamba.model:MambaForCausalLM",
        "tests/fixtures/mamba_tiny",
        "inputs.safetensors",
        "expected.safetensors",
        1e-4,
        "x86-64-v3",
    ),
];

#[test]
fn libraries_built_for_a_cpu_level_run_after_moving() {
    let base = scratch("artifacts");
    for (k, (spec, checkpoint, inputs, expected, tolerance, cpu)) in CASES.iter().enumerate() {
        let built = base.join(format!("built{k}"));
        std::fs::create_dir_all(&built).unwrap();
        let lib = built.join("libmodel.so");
        let r = lmc(&[
            "compile",
            spec,
            "--config",
            checkpoint,
            "--target-cpu",
            cpu,
            "-o",
            lib.to_str().unwrap(),
        ]);
        assert!(r.status.success(), "{spec}: {}", String::from_utf8_lossy(&r.stderr));

        // Nothing of this machine's paths is recorded; libomp is looked for beside the library.
        let bytes = std::fs::read(&lib).unwrap();
        for path in ["/usr/lib/llvm", built.to_str().unwrap(), root().to_str().unwrap()] {
            assert!(!contains(&bytes, path.as_bytes()), "{spec}: the library records the path {path}");
        }
        assert!(contains(&bytes, b"$ORIGIN"), "{spec}: no $ORIGIN run path");
        assert!(
            built.join("libomp.so.5").is_file(),
            "{spec}: libomp.so.5 was not put beside the library"
        );

        // Another directory, as on another machine: the loader finds libomp there.
        let moved = base.join(format!("moved{k}"));
        let _ = std::fs::remove_dir_all(&moved);
        std::fs::rename(&built, &moved).unwrap();
        let lib = moved.join("libmodel.so");
        let ldd = std::process::Command::new("ldd").arg(&lib).output().unwrap();
        let resolved = String::from_utf8_lossy(&ldd.stdout);
        let beside = format!("libomp.so.5 => {}", moved.join("libomp.so.5").display());
        assert!(
            resolved.contains(&beside),
            "{spec}: libomp is not taken from beside the library:\n{resolved}"
        );

        let out = moved.join("out.safetensors");
        let r = lmc_run(
            spec,
            checkpoint,
            &format!("{checkpoint}/{inputs}"),
            &out,
            &["--library", lib.to_str().unwrap()],
        );
        assert!(r.status.success(), "{spec}: {}", String::from_utf8_lossy(&r.stderr));
        let got = read_f32_tensors(&out);
        let want = read_f32_tensors(&root().join(checkpoint).join(expected));
        assert_eq!(got.len(), want.len(), "{spec}: outputs");
        for ((gn, gs, gv), (wn, ws, wv)) in got.iter().zip(&want) {
            assert_eq!((gn, gs), (wn, ws), "{spec}: output name and shape");
            let err = max_abs_diff(gv, wv);
            assert!(err <= *tolerance, "{spec} for {cpu}: {gn} differs from transformers by {err}");
        }
    }
}

/// An x86-64-v2 library has no AVX instructions at all: it runs on any x86-64 CPU of the last
/// fifteen years.
#[test]
fn a_v2_library_uses_no_avx_registers() {
    let dir = scratch("artifacts_v2_isa");
    let lib = dir.join("libemb.so");
    let r = lmc(&[
        "compile",
        "models/bert.model:BertEmbeddings",
        "--config",
        "tests/fixtures/bert_tiny",
        "--target-cpu",
        "x86-64-v2",
        "-o",
        lib.to_str().unwrap(),
    ]);
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    let listing = disassemble(&lib);
    assert!(listing.contains("xmm"), "no SSE code at all: the disassembly is not what it seems");
    assert!(
        !listing.contains("ymm") && !listing.contains("zmm"),
        "AVX registers in an x86-64-v2 library"
    );
}

#[test]
fn an_unknown_cpu_is_refused() {
    let r = lmc(&[
        "compile",
        "models/bert.model:BertEmbeddings",
        "--target-cpu",
        "znver9",
        "-o",
        "/nonexistent/x.so",
    ]);
    let stderr = String::from_utf8_lossy(&r.stderr);
    assert_eq!(r.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("unknown CPU `znver9`") && stderr.contains("x86-64-v3"), "{stderr}");
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

fn disassemble(lib: &Path) -> String {
    let out = std::process::Command::new("objdump")
        .arg("-d")
        .arg(lib)
        .output()
        .expect("objdump (binutils)");
    assert!(out.status.success());
    String::from_utf8_lossy(&out.stdout).into_owned()
}
