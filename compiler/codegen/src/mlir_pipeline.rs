//! MLIR text → lowered MLIR (`llvm` dialect), in-process through melior. The pass pipelines, the
//! CPU's and the GPU lowering's, live here and only here.
//!
//! Apply the module's own schedule (the emitter's transform-dialect sequence, which tiles the
//! ops it marked into parallel rows), bufferize (across functions: kernels and outlined ops are
//! private functions that write into a destination argument), free temporaries, make parallel
//! loops OpenMP, lower the remaining `linalg` to loops and the matmul kernels' vector ops to
//! LLVM vectors, then everything to LLVM. What is tiled and vectorized how is decided in the
//! emitter (`emit_mlir`, `emit_mlir::matmul`), not here; this stage's contract (text in, `llvm`
//! dialect out) does not change with it.

use melior::dialect::DialectRegistry;
use melior::ir::attribute::{AttributeLike, StringAttribute};
use melior::ir::operation::{OperationLike, WalkOrder, WalkResult};
use melior::ir::Attribute;
use melior::ir::BlockLike;
use melior::ir::Module;
use melior::pass::PassManager;
use melior::utility::{parse_pass_pipeline, register_all_dialects, register_all_llvm_translations, register_all_passes};
use melior::{Context, StringRef};
use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Once;

/// The passes of [`BUFFERIZE`], without the module wrapper.
macro_rules! bufferize_passes {
    () => {
        concat!(
            // No `linalg-fuse-elementwise-ops`: it also fuses an elementwise producer into a
            // consumer with a reduction (attention scores, a generic matmul), which then
            // recomputes the producer once per reduced element: a rotary embedding made a BERT 5x
            // slower. Without it, the same models ran no slower. Fusion returns with tiling
            // (issue 8), where what is fused into what is chosen.
            // Dead tensor ops (a transpose that a matmul reads through) go before they become
            // buffer writes.
            "canonicalize,",
            // No `eliminate-empty-tensors`: it would compute a result straight into its output
            // buffer (saving one copy), but it also made scan steps allocate their temporaries
            // inside the loop.
            "one-shot-bufferize{bufferize-function-boundaries=1 function-boundary-type-conversion=identity-layout-map allow-return-allocs-from-loops=1},",
            "canonicalize,cse,canonicalize,",
            // A kernel function writes into its destination argument and returns it; once the
            // loops no longer carry the buffer (canonicalize), the result goes, so callers use
            // the destination and nothing is cloned.
            "drop-equivalent-buffer-results,",
            // A scan body's temporaries have loop-invariant sizes: allocate them once, before
            // its loop.
            "func.func(buffer-hoisting,buffer-loop-hoisting),",
            "buffer-deallocation-pipeline,",
            // The pipeline frees a buffer at the end of the block that allocated it: in a
            // forward function, the end of the whole forward, so every layer's intermediates
            // would be alive at once. Each dealloc moves to just after the last use of its
            // buffer or a view of it; lmc's allocator (`lmc_abi::buffers`) hands the freed
            // buffer to the next request of its size, so the peak is what is live at once.
            "func.func(optimize-allocation-liveness)"
        )
    };
}

/// The first half of the lowering, tensors to buffers: bufferize, hoist temporaries out of
/// loops, free what is allocated right after its last use. What it leaves is
/// `lmc emit --stage buffers`.
pub const BUFFERIZE: &str = concat!("builtin.module(", bufferize_passes!(), ")");

/// The second half of the lowering, buffers to the `llvm` dialect, begins here: parallel loops
/// (`scf.forall`: the matmul kernels' column blocks, the tiled ops' rows) become OpenMP
/// worksharing loops, `__kmpc_*` calls into libomp, which the JIT's process and every linked
/// library load.
pub const TO_OPENMP: &str = concat!(
    "builtin.module(",
    "scf-forall-to-parallel,",
    "func.func(convert-linalg-to-loops),",
    "convert-scf-to-openmp",
    ")"
);

/// The rest of the second half, after [`TO_OPENMP`] and [`schedule_kernels_dynamically`]:
/// loops and LLVM.
pub const OPENMP_TO_LLVM: &str = concat!(
    "builtin.module(",
    // The OpenMP conversion wraps each loop body in a `memref.alloca_scope`, which
    // `convert-scf-to-cf` would make multi-block, an error when it is lowered (notes, P6). Ours
    // allocate nothing, so canonicalize inlines them. (Running `finalize-memref-to-llvm` first,
    // the notes' fix, made the whole model 40% slower.)
    "canonicalize,",
    // The matmul kernels' 1-D transfers become plain or masked vector loads and stores.
    "convert-vector-to-scf,",
    "convert-scf-to-cf,",
    "expand-strided-metadata,",
    "lower-affine,",
    "finalize-memref-to-llvm{use-generic-functions=1},",
    // Lane sums of the dot-product kernels as a shuffle tree, not a serial chain (P10).
    "convert-vector-to-llvm{reassociate-fp-reductions=1},",
    // Again: a masked store into a block of dynamic size reads the block's size (`memref.dim`),
    // which the vector lowering above creates.
    "finalize-memref-to-llvm{use-generic-functions=1},",
    "convert-math-to-llvm,",
    "convert-math-to-libm,",
    "arith-expand,",
    "convert-arith-to-llvm,",
    "convert-cf-to-llvm,",
    "convert-openmp-to-llvm,",
    "convert-func-to-llvm,",
    "convert-index-to-llvm,",
    "reconcile-unrealized-casts",
    ")"
);

/// The GPU lowering's pipelines, in the order `gpu::lower` runs them (with its own rewrites of
/// operations between them). First, every `linalg` op becomes an `scf.parallel` nest.
pub const GPU_TO_LOOPS: &str = "builtin.module(func.func(convert-linalg-to-parallel-loops),canonicalize)";

/// The ops the emitter outlined as functions go back into their callers, where neighbouring
/// nests can fuse.
pub const GPU_INLINE: &str = "builtin.module(inline,symbol-dce,canonicalize,cse)";

/// Neighbouring nests over the same elements fuse. `cse` first: fusion needs two nests' bounds
/// to be the same SSA values.
pub const GPU_FUSE: &str = "builtin.module(cse,func.func(scf-parallel-loop-fusion),canonicalize,cse)";

/// Simplifies the split sums' constants and sizes.
pub const GPU_TIDY: &str = "builtin.module(canonicalize,cse)";

/// Tiles each nest's first (once `gpu::rewrite::innermost_first` has run, innermost) axis by
/// `threads` and its second by `rows`, with a bounds check instead of a shorter last tile
/// (launch sizes must be known before the launch), maps the tiles to blocks and their elements
/// to threads, and outlines the launches as kernels.
pub fn gpu_kernels(threads: usize, rows: usize) -> String {
    format!(
        "builtin.module(func.func(scf-parallel-loop-tiling{{parallel-loop-tile-sizes={threads},{rows} no-min-max-bounds=1}}),\
         func.func(gpu-map-parallel-loops),convert-parallel-loops-to-gpu,canonicalize,gpu-kernel-outlining)"
    )
}

/// Kernels to NVVM for `chip` (linking `libdevice` where given), host code to LLVM.
/// `gpu-async-region` makes the host's GPU ops asynchronous on a stream: `gpu-to-llvm` lowers
/// device allocations only in that form.
pub fn gpu_to_nvvm(chip: &str, features: &str, libdevice: Option<&std::path::Path>) -> String {
    let link = libdevice.map_or(String::new(), |p| format!(" l={}", p.display()));
    format!(
        "builtin.module(func.func(gpu-async-region),nvvm-attach-target{{chip={chip} features={features} O=3{link}}},\
         convert-scf-to-cf,expand-strided-metadata,lower-affine,gpu.module(convert-gpu-to-nvvm),\
         convert-to-llvm,gpu-to-llvm,reconcile-unrealized-casts,canonicalize,cse)"
    )
}

/// Every kernel module's PTX, into the module (`format=isa`: no CUDA toolkit is needed; the
/// driver compiles the PTX when the runtime loads it).
pub const GPU_TO_BINARY: &str = "builtin.module(gpu-module-to-binary{format=isa})";

/// A failure inside MLIR: our emitter produced something MLIR rejects. Always a compiler bug,
/// reported with MLIR's own diagnostics.
#[derive(Debug)]
pub struct MlirError {
    pub stage: &'static str,
    pub diagnostics: Vec<String>,
}

impl std::fmt::Display for MlirError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "internal compiler error while {}", self.stage)?;
        for d in &self.diagnostics {
            write!(f, "\n  {d}")?;
        }
        write!(f, "\n(this is a bug in lmc; `lmc emit --stage mlir` shows the module that failed)")
    }
}

impl std::error::Error for MlirError {}

/// Creates an MLIR context with every upstream dialect and the LLVM translations. The one place
/// contexts are made.
pub fn new_context() -> Context {
    static PASSES: Once = Once::new();
    PASSES.call_once(register_all_passes);
    let registry = DialectRegistry::new();
    register_all_dialects(&registry);
    let context = Context::new();
    context.append_dialect_registry(&registry);
    context.load_all_available_dialects();
    register_all_llvm_translations(&context);
    context
}

/// Collects MLIR's diagnostics while `f` runs.
fn with_diagnostics<T>(context: &Context, stage: &'static str, f: impl FnOnce() -> Option<T>) -> Result<T, MlirError> {
    let diagnostics = Rc::new(RefCell::new(Vec::new()));
    let sink = diagnostics.clone();
    let id = context.attach_diagnostic_handler(move |d| {
        sink.borrow_mut().push(format!("{} {}", d.location(), d));
        true
    });
    let result = f();
    context.detach_diagnostic_handler(id);
    result.ok_or_else(|| MlirError {
        stage,
        diagnostics: diagnostics.take(),
    })
}

/// Parses MLIR text into a module of `context`.
pub fn parse<'c>(context: &'c Context, text: &str) -> Result<Module<'c>, MlirError> {
    with_diagnostics(context, "parsing the generated MLIR", || Module::parse(context, text))
}

/// Bufferizes the module ([`bufferize`]), then runs [`TO_OPENMP`] and [`OPENMP_TO_LLVM`],
/// leaving it in the `llvm` dialect.
pub fn lower<'c>(context: &'c Context, module: &mut Module<'c>) -> Result<(), MlirError> {
    bufferize(context, module)?;
    run(context, module, TO_OPENMP, "lowering parallel loops to OpenMP")?;
    schedule_kernels_dynamically(context, module)?;
    run(context, module, OPENMP_TO_LLVM, "lowering MLIR to the llvm dialect")
}

/// The second half of [`lower`] alone, for a module already on buffers and loops: the GPU forms
/// lowered for the host's cores after the GPU lowering's own first steps
/// (`gpu::to_fused_loops`), which leave no matmul kernels to schedule.
pub fn lower_loops<'c>(context: &'c Context, module: &mut Module<'c>) -> Result<(), MlirError> {
    run(context, module, TO_OPENMP, "lowering parallel loops to OpenMP")?;
    run(context, module, OPENMP_TO_LLVM, "lowering MLIR to the llvm dialect")
}

/// Gives the matmul kernels' worksharing loops a dynamic schedule (one task at a time, to
/// whichever thread is free), where every other loop keeps the static one (an equal share per
/// thread, decided up front). A kernel's tasks are a few dozen blocks of columns, each long
/// (a tenth of a millisecond or more), so handing them out costs nothing measurable, and a
/// thread that runs slower (this machine's two virtual CPUs often do not run at the same
/// speed) no longer holds the other up at the end. The tiled ops' rows are many short tasks,
/// for which a dispatch each would cost more than it saves.
fn schedule_kernels_dynamically<'c>(context: &'c Context, module: &mut Module<'c>) -> Result<(), MlirError> {
    let dynamic = Attribute::parse(context, "#omp<schedulekind dynamic>").ok_or_else(|| MlirError {
        stage: "parsing the dynamic schedule attribute",
        diagnostics: Vec::new(),
    })?;
    let body = module.body();
    let mut op = body.first_operation();
    while let Some(function) = op {
        let is_kernel = function
            .attribute("sym_name")
            .ok()
            .and_then(|name| StringAttribute::try_from(name).ok())
            .is_some_and(|name| name.value().starts_with(crate::emit_mlir::MATMUL_KERNEL_PREFIX));
        if is_kernel {
            let mut loops = Vec::new();
            function.walk(WalkOrder::PreOrder, |nested| {
                if nested.name().as_string_ref().as_str() == Ok("omp.wsloop") {
                    loops.push(nested.to_raw());
                }
                WalkResult::Advance
            });
            for wsloop in loops {
                // SAFETY: `wsloop` is a live operation of the module, which `module` borrows
                // mutably here, and `dynamic` an attribute of the module's context; setting an
                // inherent attribute changes nothing else.
                unsafe {
                    mlir_sys::mlirOperationSetInherentAttributeByName(wsloop, StringRef::new("schedule_kind").to_raw(), dynamic.to_raw());
                }
            }
        }
        op = function.next_in_block();
    }
    Ok(())
}

/// Applies the module's schedule, then runs [`BUFFERIZE`]; leaves the module on buffers and
/// linalg ops.
pub fn bufferize<'c>(context: &'c Context, module: &mut Module<'c>) -> Result<(), MlirError> {
    apply_schedule(context, module)?;
    run(context, module, BUFFERIZE, "bufferizing MLIR")?;
    Ok(())
}

/// The name of the emitted schedule (a transform-dialect sequence; see `emit_mlir::schedule`).
const SCHEDULE_OP: &str = "transform.named_sequence";
const SCHEDULE_MODULE_ATTR: &str = "transform.with_named_sequence";

/// Runs the module's transform-dialect schedule, if it has one (it tiles the marked loop nests
/// into parallel loops), then removes the schedule, which the rest of the pipeline cannot lower.
fn apply_schedule(context: &Context, module: &mut Module) -> Result<(), MlirError> {
    let body = module.body();
    let mut op = body.first_operation();
    let mut schedule = None;
    while let Some(o) = op {
        if o.name().as_string_ref().as_str() == Ok(SCHEDULE_OP) {
            schedule = Some(o.to_raw());
        }
        op = o.next_in_block();
    }
    let Some(schedule) = schedule else {
        return Ok(());
    };
    run(context, module, "builtin.module(transform-interpreter)", "applying the schedule")?;
    // SAFETY: `schedule` is an operation of the module's body, alive (the interpreter only reads
    // it) and referenced by nothing else; removed from its block first, it is ours to destroy.
    // The module's attribute is removed by name from the live module operation.
    unsafe {
        mlir_sys::mlirOperationRemoveFromParent(schedule);
        mlir_sys::mlirOperationDestroy(schedule);
        mlir_sys::mlirOperationRemoveAttributeByName(module.as_operation().to_raw(), StringRef::new(SCHEDULE_MODULE_ATTR).to_raw());
    }
    Ok(())
}

/// Runs a textual pass pipeline on the module.
pub(crate) fn run(context: &Context, module: &mut Module, pipeline: &str, stage: &'static str) -> Result<(), MlirError> {
    with_diagnostics(context, stage, || {
        let pm = PassManager::new(context);
        parse_pass_pipeline(pm.as_operation_pass_manager(), pipeline).ok()?;
        pm.run(module).ok()
    })
}
