//! The GPU lowering (`--target cuda`): the emitted module (plain loop nests, see
//! `emit_mlir`'s GPU forms) → buffers → one kernel per parallel loop nest, compiled to PTX for
//! sm_90 by MLIR's NVVM target, and host code (`llvm` dialect) that allocates device buffers and
//! launches the kernels through MLIR's `mgpu*` functions, which the runtime's device layer
//! provides (see `lmc_abi::DEVICE_FUNCTIONS` and [`crate::llvm::bind_device_functions`]).
//!
//! Steps, each checked by MLIR's verifier:
//! 1. bufferize as for a CPU ([`mlir_pipeline::bufferize`]); copies that bufferization inserts
//!    become `linalg.copy`, so that they run on the device too;
//! 2. every `linalg` op becomes an `scf.parallel` nest (reductions: a sequential loop inside);
//!    the ops the emitter outlined are inlined, and neighbouring nests over the same elements
//!    fuse ([`crate::loop_fusion`]): a matmul with its bias and activation is one kernel;
//! 3. each nest's axes are put innermost first ([`innermost_first`]), tiled by
//!    [`THREADS_PER_BLOCK`] and mapped onto blocks and threads, so that a block's threads read
//!    consecutive elements of the innermost axis; nests become `gpu.launch`, then kernels, each
//!    distinct one kept once ([`deduplicate_kernels`]);
//! 4. host allocations become device allocations ([`allocate_on_device`]);
//! 5. the kernels go to NVVM and PTX (`gpu-module-to-binary{format=isa}`, so no CUDA toolkit
//!    is needed: the driver compiles the PTX when the runtime loads it), the host code to LLVM.
//!
//! Every kernel is a loop nest with one thread per result element; there are no tensor-core
//! matmuls or fused attention kernel yet.

use crate::mlir_pipeline::{self, run, MlirError};
use crate::CodegenError;
use crate::{loop_fusion, split_k};
use melior::ir::Module;
use melior::Context;
use std::path::PathBuf;

/// Threads per block along a nest's innermost axis.
pub const THREADS_PER_BLOCK: usize = 128;

/// Threads per block along a nest's next axis: a matmul's block computes this many rows of
/// the same columns, whose threads read the same elements of the right operand at the same
/// step (one load from memory, the others from the block's L1 cache).
pub const ROWS_PER_BLOCK: usize = 4;

/// The compute capability kernels are compiled for, and the PTX version that has it.
pub const CHIP: &str = "sm_90";
const PTX_FEATURES: &str = "+ptx80";

/// Where `LMC_CUDA_LIBDEVICE` or lmc's cache (`scripts/setup.sh` fills it from the PyPI
/// package `nvidia-cuda-nvcc-cu12`) has NVIDIA's libdevice, the bitcode library that implements
/// the math functions (`exp`, `tanh`, `erf`, ...) on the device.
pub fn libdevice() -> Option<PathBuf> {
    cuda_tool("LMC_CUDA_LIBDEVICE", "nvvm/libdevice/libdevice.10.bc")
}

/// `ptxas`, to check PTX (tests): `LMC_PTXAS`, or lmc's cache (see [`libdevice`]).
pub fn ptxas() -> Option<PathBuf> {
    cuda_tool("LMC_PTXAS", "bin/ptxas")
}

/// The file `$variable` names, else `path` in the CUDA tools' directory, if it exists.
fn cuda_tool(variable: &str, path: &str) -> Option<PathBuf> {
    match std::env::var_os(variable) {
        Some(p) => Some(PathBuf::from(p)),
        None => Some(cuda_tools_dir()?.join(path)),
    }
    .filter(|p| p.is_file())
}

/// `$LMC_CUDA_TOOLS`, or `~/.cache/lmc/cuda-nvcc/nvidia/cuda_nvcc` (the unpacked PyPI wheel).
fn cuda_tools_dir() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("LMC_CUDA_TOOLS") {
        return Some(PathBuf::from(p));
    }
    let home = std::env::var_os("HOME")?;
    Some(PathBuf::from(home).join(".cache/lmc/cuda-nvcc/nvidia/cuda_nvcc"))
}

/// Lowers an emitted GPU module to the `llvm` dialect with its kernels as PTX (`gpu.binary`).
pub fn lower<'c>(context: &'c Context, module: &mut Module<'c>) -> Result<(), CodegenError> {
    to_fused_loops(context, module)?;
    rewrite(context, module, &[innermost_first], "ordering parallel loops innermost first")?;
    run(context, module, &to_kernels(), "mapping parallel loops to GPU kernels")?;
    let text = deduplicate_kernels(&module.as_operation().to_string());
    check_host_code(&text)?;
    *module = mlir_pipeline::parse(context, &allocate_on_device(&text)).map_err(|e| MlirError {
        stage: "allocating host buffers on the device",
        ..e
    })?;
    let libdevice = libdevice();
    run(
        context,
        module,
        &to_nvvm(libdevice.as_deref()),
        "lowering kernels to NVVM and host code to LLVM",
    )?;
    if libdevice.is_none() {
        let text = module.as_operation().to_string();
        let mut missing: Vec<&str> = text
            .match_indices("llvm.func @__nv_")
            .filter_map(|(i, _)| text[i + "llvm.func @".len()..].split('(').next())
            .collect();
        missing.sort_unstable();
        missing.dedup();
        if !missing.is_empty() {
            return Err(CodegenError::Output(format!(
                "the model's GPU kernels call libdevice's {}, and no libdevice.10.bc was found: run scripts/setup.sh (it unpacks the PyPI package nvidia-cuda-nvcc-cu12 into ~/.cache/lmc/cuda-nvcc), or set LMC_CUDA_LIBDEVICE to the file",
                missing.join(", ")
            )));
        }
    }
    run(context, module, TO_BINARY, "compiling the kernels to PTX")?;
    Ok(())
}

/// Steps 1 and 2 of [`lower`]: the emitted module as `scf.parallel` nests on buffers, fused
/// (`lmc emit --stage loops --target cuda`). The GPU forms lowered for the host's cores
/// (`jit_gpu_forms_on_host`) take the same steps, so that tests on a machine without a GPU run
/// the nests the kernels are made of.
pub fn to_fused_loops<'c>(context: &'c Context, module: &mut Module<'c>) -> Result<(), MlirError> {
    mlir_pipeline::bufferize(context, module)?;
    rewrite(context, module, &[copies_as_linalg], "making copies loop nests")?;
    run(context, module, TO_LOOPS, "lowering linalg to parallel loops")?;
    // The ops the emitter outlined as functions (one per distinct op, called wherever it
    // recurs) go back into their callers, where neighbouring nests can fuse once the
    // allocations between them are moved out of the way.
    run(context, module, INLINE, "inlining the outlined ops")?;
    rewrite(
        context,
        module,
        &[loop_fusion::gather_fusable_loops],
        "gathering parallel loops to fuse",
    )?;
    run(context, module, FUSE, "fusing parallel loops")?;
    // Fusion merges a reduction's initial store into its loop's nest; once the sum is carried
    // in a register, the nests that read it can join too.
    rewrite(
        context,
        module,
        &[loop_fusion::accumulate_in_registers, loop_fusion::gather_fusable_loops],
        "carrying reductions in registers and gathering parallel loops to fuse",
    )?;
    run(context, module, FUSE, "fusing parallel loops")?;
    // Splitting sums last, so that a split sum's second nest keeps the epilogue fused into it.
    rewrite(
        context,
        module,
        &[loop_fusion::temporaries_in_registers, split_k::split_sums],
        "keeping fused intermediates in registers and splitting long sums",
    )?;
    run(context, module, TIDY, "simplifying the split sums")
}

/// Each kernel's PTX, from a module [`lower`] returned: `(kernel module name, PTX)`.
pub fn ptx_of(module: &Module) -> Vec<(String, String)> {
    let text = module.as_operation().to_string();
    let mut out = Vec::new();
    for (at, _) in text.match_indices("gpu.binary @") {
        let rest = &text[at + "gpu.binary @".len()..];
        let name: String = rest.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
        let Some(start) = rest.find("assembly = \"") else { continue };
        let body = &rest[start + "assembly = \"".len()..];
        let Some(end) = closing_quote(body) else { continue };
        out.push((name, unescape(&body[..end])));
    }
    out
}

/// The index of the quote that ends an MLIR string literal.
fn closing_quote(s: &str) -> Option<usize> {
    let bytes = s.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'\\' => i += 2,
            b'"' => return Some(i),
            _ => i += 1,
        }
    }
    None
}

/// Undoes MLIR's string escapes (`\0A`, `\22`, `\\`).
fn unescape(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' && i + 1 < bytes.len() {
            if bytes[i + 1] == b'\\' {
                out.push(b'\\');
                i += 2;
                continue;
            }
            if let Some(b) = s.get(i + 1..i + 3).and_then(|h| u8::from_str_radix(h, 16).ok()) {
                out.push(b);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

const TO_LOOPS: &str = "builtin.module(func.func(convert-linalg-to-parallel-loops),canonicalize)";

const TIDY: &str = "builtin.module(canonicalize,cse)";

const INLINE: &str = "builtin.module(inline,symbol-dce,canonicalize,cse)";

/// `cse` first: fusion needs two nests' bounds to be the same SSA values.
const FUSE: &str = "builtin.module(cse,func.func(scf-parallel-loop-fusion),canonicalize,cse)";

/// Tiles each nest's first (after [`innermost_first`], innermost) axis by
/// [`THREADS_PER_BLOCK`] and its second by [`ROWS_PER_BLOCK`], with a bounds check instead of a
/// shorter last tile (launch sizes must be known before the launch), maps the tiles to blocks
/// and their elements to threads, and outlines the launches as kernels.
fn to_kernels() -> String {
    format!(
        "builtin.module(func.func(scf-parallel-loop-tiling{{parallel-loop-tile-sizes={THREADS_PER_BLOCK},{ROWS_PER_BLOCK} no-min-max-bounds=1}}),\
         func.func(gpu-map-parallel-loops),convert-parallel-loops-to-gpu,canonicalize,gpu-kernel-outlining)"
    )
}

/// Kernels to NVVM, host code to LLVM. `gpu-async-region` makes the host's GPU ops
/// asynchronous on a stream: `gpu-to-llvm` lowers device allocations only in that form.
fn to_nvvm(libdevice: Option<&std::path::Path>) -> String {
    let link = libdevice.map_or(String::new(), |p| format!(" l={}", p.display()));
    format!(
        "builtin.module(func.func(gpu-async-region),nvvm-attach-target{{chip={CHIP} features={PTX_FEATURES} O=3{link}}},\
         convert-scf-to-cf,expand-strided-metadata,lower-affine,gpu.module(convert-gpu-to-nvvm),\
         convert-to-llvm,gpu-to-llvm,reconcile-unrealized-casts,canonicalize,cse)"
    )
}

const TO_BINARY: &str = "builtin.module(gpu-module-to-binary{format=isa})";

/// Rewrites the module's text with each of `rewrites` in turn and parses the result back.
fn rewrite<'c>(
    context: &'c Context,
    module: &mut Module<'c>,
    rewrites: &[fn(&str) -> String],
    stage: &'static str,
) -> Result<(), MlirError> {
    let mut text = module.as_operation().to_string();
    for f in rewrites {
        text = f(&text);
    }
    *module = mlir_pipeline::parse(context, &text).map_err(|e| MlirError { stage, ..e })?;
    Ok(())
}

/// `memref.copy %a, %b : A to B` → `linalg.copy ins(%a : A) outs(%b : B)`: a loop nest, which
/// becomes a kernel, where `memref.copy` would be a host `memcpy` of device memory.
fn copies_as_linalg(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for line in text.lines() {
        let trimmed = line.trim_start();
        let indent = &line[..line.len() - trimmed.len()];
        let rewritten = trimmed.strip_prefix("memref.copy ").and_then(|rest| {
            let (operands, types) = rest.split_once(" : ")?;
            let (a, b) = operands.split_once(", ")?;
            let (ta, tb) = types.split_once(" to ")?;
            Some(format!("{indent}linalg.copy ins({a} : {ta}) outs({b} : {tb})"))
        });
        out.push_str(rewritten.as_deref().unwrap_or(line));
        out.push('\n');
    }
    out
}

/// Reverses the axes of every `scf.parallel`: `(%i, %j) = (..) to (%n, %m)` becomes
/// `(%j, %i) = (..) to (%m, %n)`. The loop body names its induction variables, so this changes
/// only which axis the mapping sees first: the innermost, whose elements are consecutive in
/// memory, becomes the threads of a block.
fn innermost_first(text: &str) -> String {
    const HEAD: &str = "scf.parallel (";
    let mut out = String::with_capacity(text.len());
    for line in text.lines() {
        let reversed = line.find(HEAD).and_then(|at| {
            let (before, rest) = line.split_at(at);
            let rest = &rest[HEAD.len()..];
            let (ivs, rest) = rest.split_once(") = (")?;
            let (lower, rest) = rest.split_once(") to (")?;
            let (upper, rest) = rest.split_once(") step (")?;
            let (step, rest) = rest.split_once(')')?;
            let rev = |list: &str| {
                let mut items: Vec<&str> = list.split(", ").collect();
                items.reverse();
                items.join(", ")
            };
            if [ivs, lower, upper, step].iter().any(|l| l.contains('(')) {
                return None;
            }
            Some(format!(
                "{before}{HEAD}{}) = ({}) to ({}) step ({}){rest}",
                rev(ivs),
                rev(lower),
                rev(upper),
                rev(step)
            ))
        });
        out.push_str(reversed.as_deref().unwrap_or(line));
        out.push('\n');
    }
    out
}

/// Keeps one of each set of identical kernels and launches it wherever any of the set was.
/// Outlining makes a kernel module per launch site, and fusion inlined the ops that recur (every
/// layer's same ops), so without this a 12-layer model would carry, and the driver compile at
/// load, twelve copies of each of its layer's kernels. Kernels take their buffers and sizes as
/// arguments, so the same op in another layer is the same text.
fn deduplicate_kernels(text: &str) -> String {
    const HEAD: &str = "  gpu.module @";
    let lines: Vec<&str> = text.lines().collect();
    // Each kernel module: (name, first line, line after its end).
    let mut modules = Vec::new();
    let mut k = 0;
    while k < lines.len() {
        let Some(name) = lines[k].strip_prefix(HEAD).and_then(|rest| rest.strip_suffix(" {")) else {
            k += 1;
            continue;
        };
        let end = (k + 1..lines.len()).find(|&j| lines[j] == "  }").map_or(lines.len(), |j| j + 1);
        modules.push((name, k, end));
        k = end;
    }
    let mut first_of: std::collections::HashMap<&[&str], &str> = std::collections::HashMap::new();
    let mut replaced_by: std::collections::HashMap<&str, &str> = std::collections::HashMap::new();
    let mut dropped = vec![false; lines.len()];
    for &(name, start, end) in &modules {
        let body = &lines[start + 1..end];
        match first_of.get(body) {
            Some(&kept) => {
                replaced_by.insert(name, kept);
                dropped[start..end].iter_mut().for_each(|d| *d = true);
            }
            None => {
                first_of.insert(body, name);
            }
        }
    }
    let mut out = String::with_capacity(text.len());
    for (line, dropped) in lines.iter().zip(dropped) {
        if dropped {
            continue;
        }
        let launched = line
            .find("gpu.launch_func ")
            .and_then(|at| {
                let rest = line[at..].split_once('@')?.1;
                let name = rest.split_once("::")?.0;
                Some((name, replaced_by.get(name)?))
            })
            .map(|(name, kept)| line.replacen(&format!("@{name}::"), &format!("@{kept}::"), 1));
        out.push_str(launched.as_deref().unwrap_or(line));
        out.push('\n');
    }
    out
}

/// Host code (outside `gpu.module`s and `gpu.launch`es) must not touch memory: every buffer is
/// on the device. A loop nest that did not become a kernel would read device memory on the host
/// and crash; this turns that compiler bug into an error naming the op. The one exception is a
/// scalar argument (`memref.load %argN[]`: a decode step's position, which places slices; or a
/// scalar output's store), which the runtime passes in host memory that the device also reads.
fn check_host_code(text: &str) -> Result<(), MlirError> {
    let mut problems = Vec::new();
    for (line, host) in host_lines(text) {
        let op = line.trim_start();
        let op = op.split_once(" = ").map_or(op, |(_, rhs)| rhs);
        let scalar_argument = (op.starts_with("memref.load %arg") || (op.starts_with("memref.store ") && op.contains(", %arg")))
            && op.contains("[] : memref<");
        if host
            && !scalar_argument
            && ["memref.load", "memref.store", "memref.copy", "linalg.", "scf.parallel", "vector."]
                .iter()
                .any(|p| op.starts_with(p))
        {
            problems.push(line.trim().to_string());
        }
    }
    if problems.is_empty() {
        return Ok(());
    }
    problems.truncate(5);
    Err(MlirError {
        stage: "mapping loop nests to GPU kernels (host code would read device memory)",
        diagnostics: problems,
    })
}

/// The module's lines, each with whether it is host code: outside `gpu.module` and
/// `gpu.launch` regions (by brace depth; MLIR prints one op per line).
fn host_lines(text: &str) -> impl Iterator<Item = (&str, bool)> {
    let mut depth = 0i64;
    let mut device_from: Option<i64> = None;
    text.lines().map(move |line| {
        let trimmed = line.trim_start();
        let op = trimmed.split_once(" = ").map_or(trimmed, |(_, rhs)| rhs);
        if device_from.is_none() && (op.starts_with("gpu.module ") || op.starts_with("gpu.launch ")) {
            device_from = Some(depth);
        }
        let host = device_from.is_none();
        depth += line.matches('{').count() as i64 - line.matches('}').count() as i64;
        if device_from.is_some_and(|d| depth <= d) {
            device_from = None;
        }
        (line, host)
    })
}

/// Host `memref.alloc`/`memref.dealloc` → `gpu.alloc`/`gpu.dealloc`: every buffer the host
/// code allocates is read and written only by kernels.
fn allocate_on_device(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for (line, host) in host_lines(text) {
        let rewritten = if host { on_device(line) } else { None };
        out.push_str(rewritten.as_deref().unwrap_or(line));
        out.push('\n');
    }
    out
}

/// One host line's allocation or deallocation on the device, if it is one.
fn on_device(line: &str) -> Option<String> {
    if let Some(at) = line.find("memref.dealloc ") {
        return Some(format!("{}gpu.dealloc {}", &line[..at], &line[at + "memref.dealloc ".len()..]));
    }
    let at = line.find("memref.alloc(")?;
    let rest = &line[at + "memref.alloc(".len()..];
    let (sizes, rest) = rest.split_once(')')?;
    // Drop an alignment attribute (`{alignment = 64 : i64}`): gpu.alloc takes none, and device
    // allocations are 256-byte aligned.
    let rest = match rest.strip_prefix(" {").and_then(|r| r.split_once('}')) {
        Some((_, after)) => after,
        None => rest,
    };
    Some(format!("{}gpu.alloc ({sizes}){rest}", &line[..at]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parallel_loops_innermost_first() {
        let text = "    scf.parallel (%a, %b, %c) = (%c0, %c0, %c0) to (%d, %e, %c768) step (%c1, %c1, %c1) {\n      x\n";
        assert_eq!(
            innermost_first(text),
            "    scf.parallel (%c, %b, %a) = (%c0, %c0, %c0) to (%c768, %e, %d) step (%c1, %c1, %c1) {\n      x\n"
        );
    }

    #[test]
    fn host_allocations_only() {
        let text = "func.func @f() {\n  %a = memref.alloc(%d) {alignment = 64 : i64} : memref<?xf32>\n  gpu.launch blocks(%x) {\n    %t = memref.alloc() : memref<4xf32>\n  }\n  memref.dealloc %a : memref<?xf32>\n}\n";
        let out = allocate_on_device(text);
        assert!(out.contains("%a = gpu.alloc (%d) : memref<?xf32>"), "{out}");
        assert!(out.contains("%t = memref.alloc() : memref<4xf32>"), "{out}");
        assert!(out.contains("gpu.dealloc %a : memref<?xf32>"), "{out}");
    }

    #[test]
    fn identical_kernels_are_kept_once() {
        let text = "\
module attributes {gpu.container_module} {
  func.func @forward(%a: memref<?xf32>, %b: memref<?xf32>) {
    gpu.launch_func  @forward_kernel::@forward_kernel blocks in (%c1, %c1, %c1) threads in (%c128, %c1, %c1)  args(%a : memref<?xf32>)
    gpu.launch_func  @forward_kernel_0::@forward_kernel blocks in (%c1, %c1, %c1) threads in (%c128, %c1, %c1)  args(%b : memref<?xf32>)
    gpu.launch_func  @forward_kernel_1::@forward_kernel blocks in (%c1, %c1, %c1) threads in (%c128, %c1, %c1)  args(%b : memref<?xf32>)
    return
  }
  gpu.module @forward_kernel {
    gpu.func @forward_kernel(%arg0: memref<?xf32>) kernel {
      gpu.return
    }
  }
  gpu.module @forward_kernel_0 {
    gpu.func @forward_kernel(%arg0: memref<?xf32>) kernel {
      gpu.return
    }
  }
  gpu.module @forward_kernel_1 {
    gpu.func @forward_kernel(%arg0: memref<?xf64>) kernel {
      gpu.return
    }
  }
}
";
        let out = deduplicate_kernels(text);
        assert!(!out.contains("gpu.module @forward_kernel_0 "), "{out}");
        assert!(
            out.contains("gpu.module @forward_kernel {") && out.contains("gpu.module @forward_kernel_1 {"),
            "{out}"
        );
        assert_eq!(
            out.matches("gpu.launch_func  @forward_kernel::@forward_kernel ").count(),
            2,
            "{out}"
        );
        assert_eq!(
            out.matches("gpu.launch_func  @forward_kernel_1::@forward_kernel ").count(),
            1,
            "{out}"
        );
        assert_eq!(out.lines().count(), text.lines().count() - 5);
    }

    #[test]
    fn copies_become_loop_nests() {
        let text = "    memref.copy %a, %b : memref<?x4xf32> to memref<?x4xf32, strided<[8, 1]>>\n";
        assert_eq!(
            copies_as_linalg(text),
            "    linalg.copy ins(%a : memref<?x4xf32>) outs(%b : memref<?x4xf32, strided<[8, 1]>>)\n"
        );
    }

    #[test]
    fn mlir_strings_unescaped() {
        assert_eq!(unescape(r"a\0Ab\22c\\d"), "a\nb\"c\\d");
        assert_eq!(closing_quote(r#"x\"y" rest"#), Some(4));
    }
}
