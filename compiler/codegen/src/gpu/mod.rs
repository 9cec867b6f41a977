//! The GPU lowering (`--target cuda`): the emitted module (plain loop nests, see
//! `emit_mlir`'s GPU forms) → buffers → one kernel per parallel loop nest, compiled to PTX for
//! sm_90 by MLIR's NVVM target, and host code (`llvm` dialect) that allocates device buffers and
//! launches the kernels through MLIR's `mgpu*` functions, which the runtime's device layer
//! provides (see `lmc_abi::DEVICE_FUNCTIONS` and [`crate::llvm::bind_device_functions`]).
//!
//! Steps, each checked by MLIR's verifier:
//! 1. bufferize as for a CPU ([`mlir_pipeline::bufferize`]); copies that bufferization inserts
//!    become `linalg.copy` ([`rewrite::copies_as_linalg`]), so that they run on the device too;
//! 2. every `linalg` op becomes an `scf.parallel` nest (reductions: a sequential loop inside);
//!    the ops the emitter outlined are inlined, and neighbouring nests over the same elements
//!    fuse ([`crate::loop_fusion`]): a matmul with its bias and activation is one kernel;
//! 3. each nest's axes are put innermost first ([`rewrite::innermost_first`]), tiled by
//!    [`THREADS_PER_BLOCK`] and mapped onto blocks and threads, so that a block's threads read
//!    consecutive elements of the innermost axis; nests become `gpu.launch`, then kernels, each
//!    distinct one kept once ([`rewrite::deduplicate_kernels`]);
//! 4. host code is checked to read no device memory ([`rewrite::check_host_code`]), and host
//!    allocations become device allocations ([`rewrite::allocate_on_device`]);
//! 5. the kernels go to NVVM and PTX (`gpu-module-to-binary{format=isa}`, so no CUDA toolkit
//!    is needed: the driver compiles the PTX when the runtime loads it), the host code to LLVM.
//!
//! Every kernel is a loop nest with one thread per result element; there are no tensor-core
//! matmuls or fused attention kernel yet.

use crate::mlir_pipeline::{self, run, MlirError};
use crate::CodegenError;
use crate::{loop_fusion, split_k};

mod rewrite;
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
    rewrite::innermost_first(module)?;
    run(
        context,
        module,
        &mlir_pipeline::gpu_kernels(THREADS_PER_BLOCK, ROWS_PER_BLOCK),
        "mapping parallel loops to GPU kernels",
    )?;
    rewrite::deduplicate_kernels(context, module)?;
    rewrite::check_host_code(module)?;
    rewrite::allocate_on_device(context, module)?;
    let libdevice = libdevice();
    run(
        context,
        module,
        &mlir_pipeline::gpu_to_nvvm(CHIP, PTX_FEATURES, libdevice.as_deref()),
        "lowering kernels to NVVM and host code to LLVM",
    )?;
    if libdevice.is_none() {
        let missing = rewrite::undefined_libdevice_functions(module);
        if !missing.is_empty() {
            return Err(CodegenError::Output(format!(
                "the model's GPU kernels call libdevice's {}, and no libdevice.10.bc was found: run scripts/setup.sh (it unpacks the PyPI package nvidia-cuda-nvcc-cu12 into ~/.cache/lmc/cuda-nvcc), or set LMC_CUDA_LIBDEVICE to the file",
                missing.join(", ")
            )));
        }
    }
    run(context, module, mlir_pipeline::GPU_TO_BINARY, "compiling the kernels to PTX")?;
    Ok(())
}

/// Steps 1 and 2 of [`lower`]: the emitted module as `scf.parallel` nests on buffers, fused
/// (`lmc emit --stage loops --target cuda`). The GPU forms lowered for the host's cores
/// (`jit_gpu_forms_on_host`) take the same steps, so that tests on a machine without a GPU run
/// the nests the kernels are made of.
pub fn to_fused_loops<'c>(context: &'c Context, module: &mut Module<'c>) -> Result<(), MlirError> {
    mlir_pipeline::bufferize(context, module)?;
    rewrite::copies_as_linalg(context, module)?;
    run(context, module, mlir_pipeline::GPU_TO_LOOPS, "lowering linalg to parallel loops")?;
    // The ops the emitter outlined as functions (one per distinct op, called wherever it
    // recurs) go back into their callers, where neighbouring nests can fuse once the
    // allocations between them are moved out of the way.
    run(context, module, mlir_pipeline::GPU_INLINE, "inlining the outlined ops")?;
    loop_fusion::gather_fusable_loops(module)?;
    run(context, module, mlir_pipeline::GPU_FUSE, "fusing parallel loops")?;
    // Fusion merges a reduction's initial store into its loop's nest; once the sum is carried
    // in a register, the nests that read it can join too.
    loop_fusion::accumulate_in_registers(module)?;
    loop_fusion::gather_fusable_loops(module)?;
    run(context, module, mlir_pipeline::GPU_FUSE, "fusing parallel loops")?;
    loop_fusion::temporaries_in_registers(module)?;
    // Splitting sums last, so that a split sum's second nest keeps the epilogue fused into it.
    split_k::split_sums(context, module)?;
    run(context, module, mlir_pipeline::GPU_TIDY, "simplifying the split sums")
}

/// Each kernel's PTX, from a module [`lower`] returned: `(kernel module name, PTX)`.
pub fn ptx_of(module: &Module) -> Vec<(String, String)> {
    rewrite::ptx_of(module)
}
