//! Lowered MLIR → an LLVM module (inkwell) with the ABI glue of `lmc_abi`, then either JIT-
//! compiled in memory or written as an object file.
//!
//! melior and inkwell link the same static LLVM 22, so the MLIR module is translated straight
//! into an inkwell context through `mlirTranslateModuleToLLVMIR` (the one C-API function
//! mlir-sys does not bind).

use crate::mlir_pipeline::MlirError;
use inkwell::attributes::AttributeLoc;
use inkwell::context::Context;
use inkwell::execution_engine::ExecutionEngine;
use inkwell::module::{Linkage, Module};
use inkwell::passes::PassBuilderOptions;
use inkwell::targets::{CodeModel, FileType, InitializationConfig, RelocMode, Target, TargetMachine};
use inkwell::AddressSpace;
use inkwell::OptimizationLevel;
use std::ffi::{c_char, c_void};
use std::path::Path;

extern "C" {
    // From mlir-c/Target/LLVMIR.h; present in the linked MLIR archives.
    fn mlirTranslateModuleToLLVMIR(
        module: mlir_sys::MlirOperation,
        context: inkwell::llvm_sys::prelude::LLVMContextRef,
    ) -> inkwell::llvm_sys::prelude::LLVMModuleRef;
    // From llvm-c/Support.h: with a null name, makes the host process's own symbols (libm's
    // `erff`, `malloc`, ...) visible to the JIT.
    fn LLVMLoadLibraryPermanently(filename: *const c_char) -> i32;
}

// libomp's (linked by build.rs), which runs the parallel kernels' worksharing loops.
extern "C" {
    fn omp_get_max_threads() -> i32;
    fn omp_set_num_threads(n: i32);
}

/// How many threads the calling thread's parallel kernels use: `OMP_NUM_THREADS`, or one per
/// core, unless [`set_threads`] said otherwise.
pub fn threads() -> usize {
    // SAFETY: reads libomp's per-thread setting; no memory of ours is involved.
    unsafe { omp_get_max_threads() }.max(1) as usize
}

/// Sets how many threads the parallel kernels started from the calling thread use. Results do
/// not depend on it: each element is computed the same way whichever thread computes it.
pub fn set_threads(n: usize) {
    let n = i32::try_from(n.max(1)).unwrap_or(i32::MAX);
    // SAFETY: sets libomp's per-thread setting; any positive count is valid.
    unsafe { omp_set_num_threads(n) }
}

/// Translates a module in the `llvm` dialect into an LLVM module owned by `context`.
pub fn translate<'ctx>(context: &'ctx Context, module: &melior::ir::Module) -> Result<Module<'ctx>, MlirError> {
    // SAFETY: the operation is a live, verified `builtin.module` in the llvm dialect, and the
    // context is a live inkwell context; the returned module (or null on failure) is owned by it
    // and handed to inkwell, which frees it with the context.
    let raw = unsafe { mlirTranslateModuleToLLVMIR(module.as_operation().to_raw(), context.raw()) };
    if raw.is_null() {
        return Err(MlirError {
            stage: "translating the llvm dialect to LLVM IR",
            diagnostics: vec!["mlirTranslateModuleToLLVMIR returned no module".into()],
        });
    }
    // SAFETY: `raw` is a fresh, non-null module created in `context`, owned by nobody else.
    Ok(unsafe { Module::new(raw) })
}

/// Adds the exported ABI symbols: `lmc_abi_version`, `lmc_manifest`, and `lmc_<entry>` calling
/// the MLIR C-interface function with one descriptor pointer per argument. Internal functions
/// become private so only the ABI is exported.
pub fn add_abi_glue<'ctx>(
    context: &'ctx Context,
    module: &Module<'ctx>,
    manifest_json: &str,
    entries: &[(String, String, usize)],
) -> Result<(), String> {
    let builder = context.create_builder();
    let i32t = context.i32_type();
    let ptr = context.ptr_type(AddressSpace::default());

    let version = module.add_function(lmc_abi::ABI_VERSION_SYMBOL, i32t.fn_type(&[], false), None);
    builder.position_at_end(context.append_basic_block(version, "entry"));
    builder
        .build_return(Some(&i32t.const_int(lmc_abi::ABI_VERSION as u64, false)))
        .map_err(|e| e.to_string())?;

    let text = context.const_string(manifest_json.as_bytes(), true);
    let global = module.add_global(text.get_type(), None, "lmc_manifest_json");
    global.set_initializer(&text);
    global.set_constant(true);
    global.set_linkage(Linkage::Private);
    let manifest = module.add_function(lmc_abi::MANIFEST_SYMBOL, ptr.fn_type(&[], false), None);
    builder.position_at_end(context.append_basic_block(manifest, "entry"));
    builder.build_return(Some(&global.as_pointer_value())).map_err(|e| e.to_string())?;

    for (symbol, mlir_func, nargs) in entries {
        let ciface_name = format!("_mlir_ciface_{mlir_func}");
        let ciface = module
            .get_function(&ciface_name)
            .ok_or_else(|| format!("the lowered module has no {ciface_name}"))?;
        let entry = module.add_function(symbol, context.void_type().fn_type(&[ptr.into()], false), None);
        builder.position_at_end(context.append_basic_block(entry, "entry"));
        let args_array = entry.get_nth_param(0).unwrap().into_pointer_value();
        let mut args = Vec::with_capacity(*nargs);
        for i in 0..*nargs {
            // SAFETY (of the generated code, not of this builder call): the ABI says `args`
            // holds `nargs` descriptor pointers.
            let slot = unsafe {
                builder.build_in_bounds_gep(
                    ptr,
                    args_array,
                    &[context.i64_type().const_int(i as u64, false)],
                    &format!("slot{i}"),
                )
            }
            .map_err(|e| e.to_string())?;
            args.push(builder.build_load(ptr, slot, &format!("arg{i}")).map_err(|e| e.to_string())?.into());
        }
        builder.build_call(ciface, &args, "").map_err(|e| e.to_string())?;
        builder.build_return(None).map_err(|e| e.to_string())?;
        ciface.set_linkage(Linkage::Internal);
        if let Some(f) = module.get_function(mlir_func) {
            f.set_linkage(Linkage::Internal);
        }
    }
    module.verify().map_err(|e| e.to_string())
}

/// `LMC_TARGET_CPU` names another CPU to generate code for (a debugging aid, not
/// configuration): `LMC_TARGET_CPU=haswell` gives AVX2 code that valgrind, which does not know
/// AVX-512, can run on an AVX-512 machine; a level (`x86-64-v3`) gives the kernels that
/// `lmc compile --target-cpu` gives it.
pub(crate) fn cpu_override() -> Option<String> {
    std::env::var("LMC_TARGET_CPU").ok().filter(|c| !c.is_empty())
}

/// The features of the CPU code is generated for, as LLVM spells them (`+avx2,+fma,...`):
/// the host's, or none beyond the CPU's own under `LMC_TARGET_CPU`.
pub fn host_features() -> String {
    match cpu_override() {
        Some(_) => String::new(),
        None => TargetMachine::get_host_cpu_features().to_string_lossy().into_owned(),
    }
}

/// A target machine for `cpu`: the host's CPU and features (or `LMC_TARGET_CPU`'s), or a
/// microarchitecture level with its own features; position-independent code.
pub fn target_machine(cpu: crate::Cpu) -> Result<TargetMachine, String> {
    Target::initialize_native(&InitializationConfig::default())?;
    let triple = TargetMachine::get_default_triple();
    let target = Target::from_triple(&triple).map_err(|e| e.to_string())?;
    let (cpu, features) = match cpu.llvm_name() {
        Some(level) => (level.to_string(), String::new()),
        None => (
            cpu_override().unwrap_or_else(|| TargetMachine::get_host_cpu_name().to_string_lossy().into_owned()),
            host_features(),
        ),
    };
    target
        .create_target_machine(
            &triple,
            &cpu,
            &features,
            OptimizationLevel::Aggressive,
            RelocMode::PIC,
            CodeModel::Default,
        )
        .ok_or_else(|| format!("LLVM cannot create a target machine for {}", triple.as_str().to_string_lossy()))
}

/// Runs LLVM's O2 pipeline for the machine's CPU. Not O3: on today's untiled loops O3's unrolling made
/// compiling 4× slower (tiny T5: 47 s against 11 s) and the code no faster (1.4 ms against
/// 1.1 ms). The performance work revisits this with tiled, vectorized kernels.
pub fn optimize(module: &Module, machine: &TargetMachine) -> Result<(), String> {
    // MCJIT generates code for a generic x86-64 unless each function names its CPU: without
    // these attributes a `vector<8xf32>` FMA became two SSE multiplies and two adds (13 GFLOP/s
    // against 60 on the same kernel).
    let cpu = machine.get_cpu();
    let features = machine.get_feature_string();
    let (cpu, features) = (cpu.to_string_lossy(), features.to_string_lossy());
    let context = module.get_context();
    for f in module.get_functions() {
        if f.count_basic_blocks() == 0 {
            continue;
        }
        f.add_attribute(AttributeLoc::Function, context.create_string_attribute("target-cpu", &cpu));
        f.add_attribute(
            AttributeLoc::Function,
            context.create_string_attribute("target-features", &features),
        );
    }
    module.set_triple(&machine.get_triple());
    module.set_data_layout(&machine.get_target_data().get_data_layout());
    module
        .run_passes("default<O2>", machine, PassBuilderOptions::create())
        .map_err(|e| e.to_string())
}

/// Writes the module as an object file.
pub fn write_object(module: &Module, machine: &TargetMachine, path: &Path) -> Result<(), String> {
    machine.write_to_file(module, FileType::Object, path).map_err(|e| e.to_string())
}

/// The file of the OpenMP runtime this process runs: the one lmc was linked against, wherever
/// the loader found it (a wheel carries its own copy, under another name). `None` when the
/// loader cannot say.
pub fn openmp_runtime() -> Option<std::path::PathBuf> {
    // SAFETY: `dladdr` only reads the loader's tables for an address of this process; the name
    // it returns is a NUL-terminated string the loader owns, copied at once.
    unsafe {
        let mut info: libc::Dl_info = std::mem::zeroed();
        let address = omp_get_max_threads as *const c_void;
        if libc::dladdr(address, &mut info) == 0 || info.dli_fname.is_null() {
            return None;
        }
        let name = std::ffi::CStr::from_ptr(info.dli_fname).to_str().ok()?;
        Some(std::path::PathBuf::from(name)).filter(|p| p.is_absolute() && p.is_file())
    }
}

/// Makes the host process's symbols, libomp's and the buffer allocator's visible to JIT'd code;
/// idempotent. libomp is named by its file: a library loaded as a dependency of a Python
/// extension is not in the process's global symbols, and loading another copy would start a
/// second OpenMP runtime.
pub fn expose_process_symbols() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    const LIBOMP: &str = concat!(env!("LMC_LIBOMP_DIR"), "/libomp.so");
    let libomp = openmp_runtime().map_or_else(|| LIBOMP.to_string(), |p| p.to_string_lossy().into_owned());
    let libomp = std::ffi::CString::new(libomp).unwrap_or_default();
    // SAFETY: a null file name asks LLVM to add the running process to its symbol search path;
    // the other is a NUL-terminated path. Neither reads memory of ours.
    ONCE.call_once(|| unsafe {
        LLVMLoadLibraryPermanently(std::ptr::null());
        LLVMLoadLibraryPermanently(libomp.as_ptr());
        // The buffer allocator: a Rust program does not export its functions to dlsym, so they
        // are registered by address.
        for (name, address) in lmc_abi::buffers::symbols() {
            if let Ok(name) = std::ffi::CString::new(name) {
                inkwell::llvm_sys::support::LLVMAddSymbol(name.as_ptr(), address as *mut c_void);
            }
        }
    });
}

/// Creates an MCJIT engine that owns `module`. Every function the module calls but does not
/// define must be found in the process first: MCJIT would otherwise link a call to address 0.
pub fn jit_engine<'ctx>(module: &Module<'ctx>) -> Result<ExecutionEngine<'ctx>, String> {
    expose_process_symbols();
    for f in module.get_functions() {
        if f.count_basic_blocks() > 0 || f.get_intrinsic_id() != 0 {
            continue;
        }
        let name = f.get_name();
        // SAFETY: a NUL-terminated symbol name; the lookup only reads it.
        let address = unsafe { inkwell::llvm_sys::support::LLVMSearchForAddressOfSymbol(name.as_ptr()) };
        if address.is_null() {
            return Err(format!(
                "the generated code calls `{}`, which this process does not have (is libomp installed? see scripts/setup.sh)",
                name.to_string_lossy()
            ));
        }
    }
    module
        .create_jit_execution_engine(OptimizationLevel::Aggressive)
        .map_err(|e| e.to_string())
}

/// Makes every defined function external, so that LLVM neither inlines nor drops it and the
/// JIT can say where it is ([`write_perf_map`]).
pub fn keep_functions_visible(module: &Module) {
    for f in module.get_functions() {
        if f.count_basic_blocks() > 0 {
            f.set_linkage(Linkage::External);
            f.remove_enum_attribute(
                AttributeLoc::Function,
                inkwell::attributes::Attribute::get_named_enum_kind_id("alwaysinline"),
            );
            f.add_attribute(
                AttributeLoc::Function,
                module
                    .get_context()
                    .create_enum_attribute(inkwell::attributes::Attribute::get_named_enum_kind_id("noinline"), 0),
            );
        }
    }
}

/// Writes `/tmp/perf-PID.map`, which `perf report` reads to name JIT'd code: each function's
/// address, its size (up to the next function, a good enough bound for sampling) and name.
pub fn write_perf_map(module: &Module, engine: &ExecutionEngine) {
    let mut found: Vec<(usize, String)> = module
        .get_functions()
        .filter(|f| f.count_basic_blocks() > 0)
        .filter_map(|f| {
            let name = f.get_name().to_string_lossy().into_owned();
            engine.get_function_address(&name).ok().map(|a| (a, name))
        })
        .collect();
    found.sort();
    let mut text = String::new();
    for (i, (address, name)) in found.iter().enumerate() {
        let size = found.get(i + 1).map_or(4096, |(next, _)| next - address);
        text.push_str(&format!("{address:x} {size:x} {name}\n"));
    }
    let path = format!("/tmp/perf-{}.map", std::process::id());
    if let Err(e) = std::fs::write(&path, text) {
        eprintln!("lmc: cannot write {path}: {e}");
    }
}

/// The address of a JIT'd function.
pub fn lookup(engine: &ExecutionEngine, name: &str) -> Option<*const c_void> {
    engine.get_function_address(name).ok().map(|a| a as *const c_void)
}

/// Connects a GPU module's host code to the runtime's device layer. The `mgpu*` functions that
/// MLIR's `gpu-to-llvm` lowering calls are declared, not defined: each gets a body that calls
/// the function at its index of [`lmc_abi::DEVICE_FUNCTIONS`] in the table
/// `lmc_device_bind(table)` stored. The kernels' loads and unloads, which the translation made
/// global constructors and destructors (they would run at `dlopen`, before the table is
/// bound), become `lmc_device_init` and `lmc_device_fini`, which the runtime calls.
pub fn bind_device_functions<'ctx>(context: &'ctx Context, module: &Module<'ctx>) -> Result<(), String> {
    use inkwell::llvm_sys::core::{LLVMGetNumOperands, LLVMGetOperand, LLVMGetValueName2};
    use inkwell::values::{AsValueRef, BasicMetadataValueEnum};
    let builder = context.create_builder();
    let ptr = context.ptr_type(AddressSpace::default());
    let void_fn = context.void_type().fn_type(&[], false);
    let table = module.add_global(ptr, None, "lmc_device_table");
    table.set_initializer(&ptr.const_null());
    table.set_linkage(Linkage::Internal);

    let bind = module.add_function(lmc_abi::DEVICE_BIND_SYMBOL, context.void_type().fn_type(&[ptr.into()], false), None);
    builder.position_at_end(context.append_basic_block(bind, "entry"));
    let given = bind.get_nth_param(0).ok_or("lmc_device_bind has no parameter")?;
    builder.build_store(table.as_pointer_value(), given).map_err(|e| e.to_string())?;
    builder.build_return(None).map_err(|e| e.to_string())?;

    for f in module.get_functions() {
        let name = f.get_name().to_string_lossy().into_owned();
        if !name.starts_with("mgpu") || f.count_basic_blocks() > 0 {
            continue;
        }
        let index = lmc_abi::DEVICE_FUNCTIONS
            .iter()
            .position(|n| *n == name)
            .ok_or_else(|| format!("the GPU host code calls {name}, which lmc's runtime does not provide"))?;
        f.set_linkage(Linkage::Internal);
        builder.position_at_end(context.append_basic_block(f, "entry"));
        let functions = builder
            .build_load(ptr, table.as_pointer_value(), "table")
            .map_err(|e| e.to_string())?
            .into_pointer_value();
        // SAFETY (of the generated code): the runtime binds a table with one entry per name of
        // DEVICE_FUNCTIONS before it calls anything else.
        let slot = unsafe { builder.build_in_bounds_gep(ptr, functions, &[context.i64_type().const_int(index as u64, false)], "slot") }
            .map_err(|e| e.to_string())?;
        let target = builder.build_load(ptr, slot, "fn").map_err(|e| e.to_string())?.into_pointer_value();
        let args: Vec<BasicMetadataValueEnum> = f.get_param_iter().map(Into::into).collect();
        let call = builder
            .build_indirect_call(f.get_type(), target, &args, "")
            .map_err(|e| e.to_string())?;
        match call.try_as_basic_value().basic() {
            Some(value) => builder.build_return(Some(&value)),
            None => builder.build_return(None),
        }
        .map_err(|e| e.to_string())?;
    }

    for (list, symbol) in [
        ("llvm.global_ctors", lmc_abi::DEVICE_INIT_SYMBOL),
        ("llvm.global_dtors", lmc_abi::DEVICE_FINI_SYMBOL),
    ] {
        let mut names = Vec::new();
        if let Some(global) = module.get_global(list) {
            if let Some(init) = global.get_initializer() {
                let array = init.as_value_ref();
                // SAFETY: `array` is the live initializer of the module's constructor list, an
                // array of `{ i32 priority, ptr function, ptr data }` structs; reading operands and
                // names does not change it.
                unsafe {
                    for i in 0..LLVMGetNumOperands(array) {
                        let function = LLVMGetOperand(LLVMGetOperand(array, i as u32), 1);
                        let mut len = 0usize;
                        let name = LLVMGetValueName2(function, &mut len);
                        if !name.is_null() {
                            let bytes = std::slice::from_raw_parts(name.cast::<u8>(), len);
                            names.push(String::from_utf8_lossy(bytes).into_owned());
                        }
                    }
                }
            }
            // SAFETY: the list is referenced by nothing (LLVM reads it by name), and is not used
            // after this.
            unsafe { global.delete() };
        }
        let caller = module.add_function(symbol, void_fn, None);
        builder.position_at_end(context.append_basic_block(caller, "entry"));
        for name in &names {
            let callee = module
                .get_function(name)
                .ok_or_else(|| format!("the GPU module's constructor list names {name}, which it does not define"))?;
            builder.build_call(callee, &[], "").map_err(|e| e.to_string())?;
        }
        builder.build_return(None).map_err(|e| e.to_string())?;
    }
    Ok(())
}
