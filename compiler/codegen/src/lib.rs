//! `lmc-codegen`: checked IR → MLIR → LLVM → native code. The only crate that links MLIR and
//! LLVM. One file per step: `emit_mlir` (IR → MLIR text), `mlir_pipeline` (passes, melior),
//! `llvm` (translation, ABI glue, JIT and objects), `link` (shared library), `header` (C header).

#[cfg(test)]
mod backward_tests;
pub mod emit_mlir;
pub mod gpu;
mod header;
mod link;
pub mod llvm;
mod loop_fusion;
mod mlir_ops;
pub mod mlir_pipeline;
mod split_k;
pub mod version;
mod weight_copies;

pub use header::c_header;
pub use mlir_pipeline::MlirError;

use emit_mlir::Plan;
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
    /// The graph asks for something this target does not do (int8 weights on a GPU).
    Unsupported(String),
}

impl std::fmt::Display for CodegenError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CodegenError::Mlir(e) => e.fmt(f),
            CodegenError::Llvm(e) => write!(f, "internal compiler error in LLVM: {e}"),
            CodegenError::Output(e) | CodegenError::Unsupported(e) => f.write_str(e),
        }
    }
}

impl std::error::Error for CodegenError {}

impl From<MlirError> for CodegenError {
    fn from(e: MlirError) -> Self {
        CodegenError::Mlir(e)
    }
}

/// What the generated kernels are shaped for. JIT code is always compiled for the host; a
/// library can be compiled for an x86-64 microarchitecture level ([`Cpu`]) so that it runs on
/// every machine of a cluster. A fixed CPU target exists so that printed stages (and their
/// snapshots) do not depend on the machine.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Target {
    /// f32 lanes of one vector register: 4 with SSE, 8 with AVX2, 16 with AVX-512. (CPU kernels
    /// only.)
    pub lanes: i64,
    /// Where the model's ops run.
    pub device: Device,
    /// The CPU the code (a GPU target's host code included) is generated for.
    pub cpu: Cpu,
    /// How the CPU multiplies bytes in integers, if the kernels do: int8 and int4 weights are
    /// then multiplied by `x` quantized to int8 per block rather than converted to f32
    /// (`matmul/int8_dot.rs`).
    pub int8_dot: Option<Int8Dot>,
}

/// The instructions int8 and int4 weights are multiplied with ([`Target::int8_dot`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Int8Dot {
    /// `vpdpbusd` (AVX512-VNNI on 16 lanes, AVX-VNNI on 8): 4 byte products summed into each
    /// 32-bit lane.
    Vnni,
    /// `vpmaddwd` on bytes widened to 16 bits (AVX2; AVX-512BW on 16 lanes): 2 products summed
    /// into each 32-bit lane.
    Madd,
}

/// The x86-64 CPU code is generated for: this machine's, or a microarchitecture level that
/// every CPU of a cluster meets (`x86-64-v2`: SSE4.2; `x86-64-v3`: AVX2 and FMA, Haswell and
/// Zen on; `x86-64-v4`: AVX-512).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cpu {
    Host,
    X86_64V2,
    X86_64V3,
    X86_64V4,
}

impl Cpu {
    /// The names `--target-cpu` takes, as LLVM and GCC spell the levels.
    pub const NAMES: [&'static str; 4] = ["host", "x86-64-v2", "x86-64-v3", "x86-64-v4"];

    /// Reads a name of [`Cpu::NAMES`].
    pub fn parse(name: &str) -> Result<Cpu, String> {
        match name {
            "host" | "native" => Ok(Cpu::Host),
            "x86-64-v2" => Ok(Cpu::X86_64V2),
            "x86-64-v3" => Ok(Cpu::X86_64V3),
            "x86-64-v4" => Ok(Cpu::X86_64V4),
            other => Err(format!("unknown CPU `{other}`: expected one of {}", Cpu::NAMES.join(", "))),
        }
    }

    /// LLVM's name of the level; `None` for the host.
    pub fn llvm_name(self) -> Option<&'static str> {
        match self {
            Cpu::Host => None,
            Cpu::X86_64V2 => Some("x86-64-v2"),
            Cpu::X86_64V3 => Some("x86-64-v3"),
            Cpu::X86_64V4 => Some("x86-64-v4"),
        }
    }
}

pub use lmc_abi::Device;

impl Target {
    /// An AVX2 machine (the printed stages of the snapshot tests).
    pub const AVX2: Target = Target {
        lanes: 8,
        device: Device::Cpu,
        cpu: Cpu::Host,
        int8_dot: None,
    };

    /// An AVX-512 machine.
    pub const AVX512: Target = Target {
        lanes: 16,
        device: Device::Cpu,
        cpu: Cpu::Host,
        int8_dot: None,
    };

    /// An NVIDIA GPU of compute capability 9.0 (H100, H200), with a host of this machine's kind.
    pub const CUDA: Target = Target {
        lanes: 8,
        device: Device::Cuda,
        cpu: Cpu::Host,
        int8_dot: None,
    };

    /// The machine lmc runs on (or, under `LMC_TARGET_CPU`, the CPU named there: a level's
    /// kernels for a level, AVX2's otherwise).
    pub fn host() -> Target {
        let level = llvm::cpu_override()
            .and_then(|name| Cpu::parse(&name).ok())
            .filter(|cpu| *cpu != Cpu::Host);
        if let Some(level) = level {
            return Target {
                cpu: Cpu::Host,
                ..Target::for_cpu(level)
            };
        }
        let features = llvm::host_features();
        let has = |feature: &str| features.split(',').any(|f| f == feature);
        let dot = |vnni: &str, madd: &str| match (has(vnni), has(madd)) {
            (true, _) => Some(Int8Dot::Vnni),
            (false, true) => Some(Int8Dot::Madd),
            (false, false) => None,
        };
        if has("+avx512f") {
            Target {
                int8_dot: dot("+avx512vnni", "+avx512bw"),
                ..Target::AVX512
            }
        } else {
            Target {
                int8_dot: dot("+avxvnni", "+avx2"),
                ..Target::AVX2
            }
        }
    }

    /// Kernels for `cpu`'s vectors, generated for it: the host's, or a level's (whose vector
    /// width the kernels are shaped for: 4 lanes at `x86-64-v2`, 8 at `v3`, 16 at `v4`).
    pub fn for_cpu(cpu: Cpu) -> Target {
        let lanes = match cpu {
            Cpu::Host => return Target::host(),
            Cpu::X86_64V2 => 4,
            Cpu::X86_64V3 => 8,
            Cpu::X86_64V4 => 16,
        };
        // The levels do not include VNNI; v3 has AVX2 and v4 AVX-512BW.
        Target {
            lanes,
            device: Device::Cpu,
            cpu,
            int8_dot: (lanes >= 8).then_some(Int8Dot::Madd),
        }
    }

    /// The device's target: the host's for [`Device::Cpu`].
    pub fn for_device(device: Device) -> Target {
        match device {
            Device::Cpu => Target::host(),
            Device::Cuda => Target::CUDA,
        }
    }

    pub fn is_gpu(&self) -> bool {
        self.device == Device::Cuda
    }
}

/// Describes a graph's calling convention for the runtime, as compiled for `target`: the
/// graph's own ([`lmc_core::manifest`]) with the parameters that its matmul kernels read packed.
pub fn manifest(g: &Graph, target: &Target) -> lmc_abi::Manifest {
    let g = &weight_copies::with_weight_copies(g, target);
    manifest_of(g, target, &Plan::new(g, target))
}

/// [`manifest`], with the packing `plan` decided for the kernels.
fn manifest_of(g: &Graph, target: &Target, plan: &Plan) -> lmc_abi::Manifest {
    let mut manifest = lmc_core::manifest(g);
    manifest.device = target.device;
    for (spec, packing) in manifest.params.iter_mut().zip(&plan.packing) {
        spec.packing = *packing;
    }
    manifest
}

/// `lmc emit --stage mlir`: the module as emitted, before any pass.
pub fn emit_mlir(g: &Graph, target: &Target) -> String {
    let g = &weight_copies::with_weight_copies(g, target);
    emit_mlir::emit_module(g, &Plan::new(g, target), target)
}

/// `lmc emit --stage buffers`: the module after bufferization (see
/// [`mlir_pipeline::BUFFERIZE`]): where memory is allocated, copied and freed.
pub fn emit_buffers(g: &Graph, target: &Target) -> Result<String, CodegenError> {
    let g = &weight_copies::with_weight_copies(g, target);
    with_emitted(g, target, &Plan::new(g, target), |mlir, module| {
        mlir_pipeline::bufferize(mlir, module)?;
        Ok(module.as_operation().to_string())
    })
}

/// Whether `target` can run `g` as it asks: the packed weight formats are CPU kernels.
pub fn check_target(g: &Graph, target: &Target) -> Result<(), CodegenError> {
    if target.is_gpu() && g.weights != lmc_abi::WeightFormat::F32 {
        return Err(CodegenError::Unsupported(format!(
            "weights={} is a CPU weight format; a CUDA target reads f32 weights (leave out `--set weights=...`)",
            g.weights.name()
        )));
    }
    if g.weights == lmc_abi::WeightFormat::Int4 && target.int8_dot.is_none() {
        return Err(CodegenError::Unsupported(
            "weights=int4 is multiplied in integers (AVX2, AVX-512BW or VNNI), which the CPU compiled for \
             lacks; weights=int8 runs there (converted to f32 as read)"
                .to_string(),
        ));
    }
    Ok(())
}

/// A weight format that no matrix of the graph is stored in would change nothing: an error
/// rather than a variant that silently equals f32.
fn check_weight_format(g: &Graph, plan: &Plan) -> Result<(), CodegenError> {
    if g.weights == lmc_abi::WeightFormat::F32 || plan.packing.iter().flatten().any(|p| p.format == g.weights) {
        return Ok(());
    }
    let why = match plan.packing.iter().flatten().count() {
        0 => "the formats apply to matrices read only by matmuls, as `x @ transpose(w)` (a Linear's weight) \
              or `x @ w`, and it has none; a matrix also read another way (a tied embedding's gather) stays f32"
            .to_string(),
        n => format!(
            "the rows of its {n} Linear weight(s) are not whole blocks of {} elements",
            lmc_abi::INT8_BLOCK
        ),
    };
    Err(CodegenError::Unsupported(format!(
        "--set weights={} stores no weight of {} in that format: {why}",
        g.weights.name(),
        g.model
    )))
}

/// Emits the graph's MLIR for `target` as `plan` decided, parses it in a fresh MLIR context and
/// hands both to `f`.
fn with_emitted<T>(
    g: &Graph,
    target: &Target,
    plan: &Plan,
    f: impl for<'c> FnOnce(&'c melior::Context, &mut melior::ir::Module<'c>) -> Result<T, CodegenError>,
) -> Result<T, CodegenError> {
    check_target(g, target)?;
    check_weight_format(g, plan)?;
    let text = emit_mlir::emit_module(g, plan, target);
    let mlir = mlir_pipeline::new_context();
    let mut module = mlir_pipeline::parse(&mlir, &text)?;
    f(&mlir, &mut module)
}

/// `lmc emit --stage loops`: the GPU lowering's fused `scf.parallel` nests, one per kernel.
pub fn emit_fused_loops(g: &Graph) -> Result<String, CodegenError> {
    with_emitted(g, &Target::CUDA, &Plan::new(g, &Target::CUDA), |mlir, module| {
        gpu::to_fused_loops(mlir, module)?;
        Ok(module.as_operation().to_string())
    })
}

/// `lmc emit --stage ptx`: the PTX of every GPU kernel of the graph, as `(name, PTX)`.
pub fn emit_ptx(g: &Graph) -> Result<Vec<(String, String)>, CodegenError> {
    with_emitted(g, &Target::CUDA, &Plan::new(g, &Target::CUDA), |mlir, module| {
        gpu::lower(mlir, module)?;
        Ok(gpu::ptx_of(module))
    })
}

/// `lmc emit --stage llvm`: the LLVM module with its ABI glue, before LLVM's optimizer.
pub fn emit_llvm_ir(g: &Graph, target: &Target) -> Result<String, CodegenError> {
    let context = Context::create();
    let (module, _) = build_llvm_module(&context, g, target)?;
    Ok(module.print_to_string().to_string())
}

/// Runs the whole pipeline up to an unoptimized LLVM module in `context`; also returns the
/// manifest embedded in it.
fn build_llvm_module<'ctx>(
    context: &'ctx Context,
    g: &Graph,
    target: &Target,
) -> Result<(inkwell::module::Module<'ctx>, lmc_abi::Manifest), CodegenError> {
    build_llvm_module_on(context, g, target, target.device)
}

/// [`build_llvm_module`], with the ops emitted for `target` and lowered for `device`: a GPU's
/// loop nests can also be lowered for the host's cores ([`jit_gpu_forms_on_host`]).
fn build_llvm_module_on<'ctx>(
    context: &'ctx Context,
    g: &Graph,
    target: &Target,
    device: Device,
) -> Result<(inkwell::module::Module<'ctx>, lmc_abi::Manifest), CodegenError> {
    let g = &weight_copies::with_weight_copies(g, target);
    let plan = Plan::new(g, target);
    let llvm_module = with_emitted(g, target, &plan, |mlir, module| {
        match device {
            Device::Cuda => gpu::lower(mlir, module)?,
            Device::Cpu if target.is_gpu() => {
                gpu::to_fused_loops(mlir, module)?;
                mlir_pipeline::lower_loops(mlir, module)?;
            }
            Device::Cpu => mlir_pipeline::lower(mlir, module)?,
        }
        Ok(llvm::translate(context, module)?)
    })?;
    if device == Device::Cuda {
        llvm::bind_device_functions(context, &llvm_module).map_err(CodegenError::Llvm)?;
    }
    let mut manifest = manifest_of(g, target, &plan);
    manifest.device = device;
    let nargs = manifest.arg_count();
    let entries: Vec<(String, String, usize)> = manifest
        .entries
        .iter()
        .map(|e| (e.symbol.clone(), emit_mlir::FORWARD_FUNC.to_string(), nargs))
        .collect();
    llvm::add_abi_glue(context, &llvm_module, &manifest.to_json(), &entries).map_err(CodegenError::Llvm)?;
    Ok((llvm_module, manifest))
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
    jit_on(g, target, target.device)
}

/// Compiles the ops a GPU would run (the loop nests and weight layouts of [`Target::CUDA`]) for
/// the host's cores instead: where no GPU is present, this checks the GPU's forms of the ops
/// (its matmuls, its whole attention, its scans) against the same references as the CPU's.
pub fn jit_gpu_forms_on_host(g: &Graph) -> Result<JitModule, CodegenError> {
    jit_on(g, &Target::CUDA, Device::Cpu)
}

/// [`jit_for`], with the ops emitted for `target` and lowered for `device`.
fn jit_on(g: &Graph, target: &Target, device: Device) -> Result<JitModule, CodegenError> {
    let cell = JitCell::try_new(Context::create(), |context| -> Result<Engine<'_>, CodegenError> {
        let (module, _) = build_llvm_module_on(context, g, target, device)?;
        let perf_map = std::env::var_os("LMC_PERF_MAP").is_some();
        if perf_map {
            llvm::keep_functions_visible(&module);
        }
        let machine = llvm::target_machine(Cpu::Host).map_err(CodegenError::Llvm)?;
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
pub fn compile_shared_library(g: &Graph, target: &Target, so_path: &Path) -> Result<std::path::PathBuf, CodegenError> {
    let context = Context::create();
    let (module, manifest) = build_llvm_module(&context, g, target)?;
    let machine = llvm::target_machine(target.cpu).map_err(CodegenError::Llvm)?;
    llvm::optimize(&module, &machine).map_err(CodegenError::Llvm)?;
    let object = so_path.with_extension("o");
    llvm::write_object(&module, &machine, &object).map_err(|e| CodegenError::Output(format!("cannot write {}: {e}", object.display())))?;
    let linked = link::link_shared_library(&object, so_path);
    let _ = std::fs::remove_file(&object);
    linked.map_err(CodegenError::Output)?;
    let header_path = so_path.with_extension("h");
    std::fs::write(&header_path, c_header(&manifest, so_path))
        .map_err(|e| CodegenError::Output(format!("cannot write {}: {e}", header_path.display())))?;
    Ok(header_path)
}
