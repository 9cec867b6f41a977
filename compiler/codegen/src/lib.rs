//! `lmc-codegen`: checked IR → MLIR → LLVM → native code. The only crate that links MLIR and
//! LLVM. One file per step: `emit_mlir` (IR → MLIR text), `mlir_pipeline` (passes, melior),
//! `llvm` (translation, ABI glue, JIT and objects), `link` (shared library), `header` (C header).

mod dealloc;
pub mod emit_mlir;
mod header;
mod link;
pub mod llvm;
pub mod mlir_pipeline;

pub use header::c_header;
pub use mlir_pipeline::MlirError;

use inkwell::context::Context;
use inkwell::execution_engine::ExecutionEngine;
use lmc_core::ir::Graph;
use std::ffi::c_void;
use std::path::Path;

/// Why code generation failed.
#[derive(Debug)]
pub enum CodegenError {
    /// MLIR rejected what we emitted (a compiler bug).
    Mlir(MlirError),
    /// LLVM failed (a compiler bug, or an unsupported host).
    Llvm(String),
    /// Writing or linking the shared library failed.
    Output(String),
}

impl std::fmt::Display for CodegenError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CodegenError::Mlir(e) => e.fmt(f),
            CodegenError::Llvm(e) => write!(f, "internal compiler error in LLVM: {e}"),
            CodegenError::Output(e) => f.write_str(e),
        }
    }
}

impl std::error::Error for CodegenError {}

impl From<MlirError> for CodegenError {
    fn from(e: MlirError) -> Self {
        CodegenError::Mlir(e)
    }
}

/// What the generated kernels are shaped for. Code is always compiled for the host; a fixed
/// target exists so that printed stages (and their snapshots) do not depend on the machine.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Target {
    /// f32 lanes of one vector register: 8 with AVX2, 16 with AVX-512.
    pub lanes: i64,
}

impl Target {
    /// An AVX2 machine (the printed stages of the snapshot tests).
    pub const AVX2: Target = Target { lanes: 8 };

    /// The machine lmc runs on.
    pub fn host() -> Target {
        let features = llvm::host_features();
        let lanes = if features.split(',').any(|f| f == "+avx512f") { 16 } else { 8 };
        Target { lanes }
    }
}

/// Describes a graph's calling convention for the runtime, as compiled for `target`: the
/// graph's own ([`lmc_core::manifest`]) with the parameters that its matmul kernels read packed.
pub fn manifest(g: &Graph, target: &Target) -> lmc_abi::Manifest {
    let mut manifest = lmc_core::manifest(g);
    for (spec, packing) in manifest.params.iter_mut().zip(emit_mlir::param_packing(g, target)) {
        spec.packing = packing;
    }
    manifest
}

/// `lmc emit --stage mlir`: the module as emitted, before any pass.
pub fn emit_mlir(g: &Graph, target: &Target) -> String {
    emit_mlir::emit_module(g, target)
}

/// `lmc emit --stage buffers`: the module after bufferization (see
/// [`mlir_pipeline::BUFFERIZE`]): where memory is allocated, copied and freed.
pub fn emit_buffers(g: &Graph, target: &Target) -> Result<String, CodegenError> {
    let text = emit_mlir::emit_module(g, target);
    let mlir = mlir_pipeline::new_context();
    let mut module = mlir_pipeline::parse(&mlir, &text)?;
    mlir_pipeline::bufferize(&mlir, &mut module)?;
    Ok(module.as_operation().to_string())
}

/// `lmc emit --stage llvm`: the LLVM module with its ABI glue, before LLVM's optimizer.
pub fn emit_llvm_ir(g: &Graph, target: &Target) -> Result<String, CodegenError> {
    let context = Context::create();
    let module = build_llvm_module(&context, g, target)?;
    Ok(module.print_to_string().to_string())
}

/// Runs the whole pipeline up to an unoptimized LLVM module in `context`.
fn build_llvm_module<'ctx>(context: &'ctx Context, g: &Graph, target: &Target) -> Result<inkwell::module::Module<'ctx>, CodegenError> {
    let text = emit_mlir::emit_module(g, target);
    let mlir = mlir_pipeline::new_context();
    let mut module = mlir_pipeline::parse(&mlir, &text)?;
    mlir_pipeline::lower(&mlir, &mut module)?;
    let llvm_module = llvm::translate(context, &module)?;
    let manifest = manifest(g, target);
    let nargs = manifest.arg_count();
    let entries: Vec<(String, String, usize)> = manifest
        .entries
        .iter()
        .map(|e| (e.symbol.clone(), emit_mlir::FORWARD_FUNC.to_string(), nargs))
        .collect();
    llvm::add_abi_glue(context, &llvm_module, &manifest.to_json(), &entries).map_err(CodegenError::Llvm)?;
    Ok(llvm_module)
}

type Engine<'ctx> = ExecutionEngine<'ctx>;

self_cell::self_cell!(
    struct JitCell {
        owner: Context,
        #[not_covariant]
        dependent: Engine,
    }
);

/// A model compiled in memory. Holds the LLVM context and the machine code; function addresses
/// from [`JitModule::lookup`] stay valid while it lives.
pub struct JitModule {
    cell: JitCell,
}

// SAFETY: after construction the JIT is only read (symbol lookups, which take LLVM's own lock in
// MCJIT) and finally dropped; nothing in it is tied to the creating thread.
unsafe impl Send for JitModule {}
// SAFETY: see `Send`: shared access is lookups only.
unsafe impl Sync for JitModule {}

impl JitModule {
    /// The address of an exported symbol.
    pub fn lookup(&self, name: &str) -> Option<*const c_void> {
        self.cell.with_dependent(|_, engine| llvm::lookup(engine, name))
    }
}

/// Compiles a graph to machine code in memory (`lmc run`).
pub fn jit(g: &Graph) -> Result<JitModule, CodegenError> {
    jit_for(g, &Target::host())
}

/// Compiles a graph to machine code in memory with kernels shaped for `target` (which must not
/// need more than the host has: narrower vectors always run). Tests use it to run both shapes
/// on one machine. With `LMC_PERF_MAP` set, every function stays a symbol of its own and
/// `/tmp/perf-PID.map` names them for `perf report` (a profiling aid).
pub fn jit_for(g: &Graph, target: &Target) -> Result<JitModule, CodegenError> {
    let cell = JitCell::try_new(Context::create(), |context| -> Result<Engine<'_>, CodegenError> {
        let module = build_llvm_module(context, g, target)?;
        let perf_map = std::env::var_os("LMC_PERF_MAP").is_some();
        if perf_map {
            llvm::keep_functions_visible(&module);
        }
        let machine = llvm::host_target_machine().map_err(CodegenError::Llvm)?;
        llvm::optimize(&module, &machine).map_err(CodegenError::Llvm)?;
        let engine = llvm::jit_engine(&module).map_err(CodegenError::Llvm)?;
        if perf_map {
            llvm::write_perf_map(&module, &engine);
        }
        Ok(engine)
    })?;
    Ok(JitModule { cell })
}

/// Compiles a graph to a shared library at `so_path` and its C header beside it (same stem,
/// `.h`). Returns the header's path.
pub fn compile_shared_library(g: &Graph, so_path: &Path) -> Result<std::path::PathBuf, CodegenError> {
    let context = Context::create();
    let module = build_llvm_module(&context, g, &Target::host())?;
    let machine = llvm::host_target_machine().map_err(CodegenError::Llvm)?;
    llvm::optimize(&module, &machine).map_err(CodegenError::Llvm)?;
    let object = so_path.with_extension("o");
    llvm::write_object(&module, &machine, &object).map_err(|e| CodegenError::Output(format!("cannot write {}: {e}", object.display())))?;
    let linked = link::link_shared_library(&object, so_path);
    let _ = std::fs::remove_file(&object);
    linked.map_err(CodegenError::Output)?;
    let header_path = so_path.with_extension("h");
    let manifest = manifest(g, &Target::host());
    std::fs::write(&header_path, c_header(&manifest, so_path))
        .map_err(|e| CodegenError::Output(format!("cannot write {}: {e}", header_path.display())))?;
    Ok(header_path)
}
