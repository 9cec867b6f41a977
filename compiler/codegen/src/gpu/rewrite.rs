//! The GPU lowering's changes to the module where no upstream pass makes them: each walks the
//! module's operations (through melior and MLIR's C API), never its printed text, and what it
//! builds is checked by MLIR's verifier when the next pass pipeline runs.

use crate::mlir_pipeline::MlirError;
use melior::ir::attribute::{AttributeLike, DenseI32ArrayAttribute};
use melior::ir::operation::{OperationBuilder, OperationLike, OperationRef, WalkOrder, WalkResult};
use melior::ir::r#type::{MemRefType, ShapedTypeLike};
use melior::ir::{Block, BlockLike, Identifier, Module, Region, RegionLike, Type, Value, ValueLike};
use melior::Context;
use mlir_sys::MlirOperation;
use std::collections::HashMap;

/// The operations named `name` in the module, in pre-order; with `host_only`, not those inside
/// `gpu.module`s or `gpu.launch`es.
fn operations_named(module: &Module, name: &str, host_only: bool) -> Vec<MlirOperation> {
    let mut found = Vec::new();
    module.as_operation().walk(WalkOrder::PreOrder, |op| {
        let op_name = op.name();
        let op_name = op_name.as_string_ref().as_str().unwrap_or("");
        if host_only && (op_name == "gpu.module" || op_name == "gpu.launch") {
            return WalkResult::Skip;
        }
        if op_name == name {
            found.push(op.to_raw());
        }
        WalkResult::Advance
    });
    found
}

/// An operation collected by [`operations_named`].
///
/// # Safety
///
/// `raw` must be an operation of a module that outlives the returned reference and that no
/// other reference changes meanwhile.
unsafe fn op<'c, 'a>(raw: MlirOperation) -> OperationRef<'c, 'a> {
    // SAFETY: the caller's.
    unsafe { OperationRef::from_raw(raw) }
}

/// Inserts `new` before `old` in `old`'s block, makes every use of `old`'s results a use of
/// `new`'s, and destroys `old`.
///
/// # Safety
///
/// `old` must be a live operation in a block, with as many results as `new`, of the same types.
unsafe fn replace(old: MlirOperation, new: melior::ir::Operation) {
    // SAFETY: the caller's; `new` is owned here and given to the block, which then owns it;
    // `old` is removed from its block before it is destroyed, and nothing refers to its results
    // once their uses are replaced.
    unsafe {
        let block = mlir_sys::mlirOperationGetBlock(old);
        let new = new.into_raw();
        mlir_sys::mlirBlockInsertOwnedOperationBefore(block, old, new);
        for k in 0..mlir_sys::mlirOperationGetNumResults(old) {
            mlir_sys::mlirValueReplaceAllUsesOfWith(mlir_sys::mlirOperationGetResult(old, k), mlir_sys::mlirOperationGetResult(new, k));
        }
        mlir_sys::mlirOperationRemoveFromParent(old);
        mlir_sys::mlirOperationDestroy(old);
    }
}

fn failed(stage: &'static str, what: String) -> MlirError {
    MlirError {
        stage,
        diagnostics: vec![what],
    }
}

/// `memref.copy %a, %b` → `linalg.copy ins(%a) outs(%b)`: a loop nest, which becomes a kernel,
/// where `memref.copy` would be a host `memcpy` of device memory.
pub fn copies_as_linalg(context: &Context, module: &mut Module) -> Result<(), MlirError> {
    const STAGE: &str = "making copies loop nests";
    for raw in operations_named(module, "memref.copy", false) {
        // SAFETY: collected above from `module`, which is borrowed mutably here.
        let copy = unsafe { op(raw) };
        let (Ok(from), Ok(to)) = (copy.operand(0), copy.operand(1)) else {
            return Err(failed(STAGE, format!("a copy without two operands: {copy}")));
        };
        let element = MemRefType::try_from(from.r#type())
            .map_err(|_| failed(STAGE, format!("a copy of something other than a memref: {copy}")))?
            .element();
        let location = copy.location();
        let body = Block::new(&[(element, location), (element, location)]);
        let input: Value = body.argument(0).map_err(|e| failed(STAGE, e.to_string()))?.into();
        body.append_operation(
            OperationBuilder::new("linalg.yield", location)
                .add_operands(&[input])
                .build()
                .map_err(|e| failed(STAGE, e.to_string()))?,
        );
        let region = Region::new();
        region.append_block(body);
        let linalg = OperationBuilder::new("linalg.copy", location)
            .add_operands(&[from, to])
            .add_attributes(&[(
                Identifier::new(context, "operandSegmentSizes"),
                DenseI32ArrayAttribute::new(context, &[1, 1]).into(),
            )])
            .add_regions([region])
            .build()
            .map_err(|e| failed(STAGE, e.to_string()))?;
        // SAFETY: a live copy, with no results.
        unsafe { replace(raw, linalg) };
    }
    Ok(())
}

/// Reverses the axes of every `scf.parallel`: `(%i, %j) = (..) to (%n, %m)` becomes
/// `(%j, %i) = (..) to (%m, %n)`. Only the order of the axes changes (each induction variable
/// keeps its bounds and its uses), so the mapping onto a block's threads, which takes the
/// first axis, takes the innermost, whose elements are consecutive in memory.
pub fn innermost_first(module: &mut Module) -> Result<(), MlirError> {
    const STAGE: &str = "ordering parallel loops innermost first";
    for raw in operations_named(module, "scf.parallel", false) {
        // SAFETY: collected above from `module`, which is borrowed mutably here; the bounds are
        // operands `0..3n` (lower bounds, upper bounds, steps: `operandSegmentSizes`), the
        // induction variables the first `n` arguments of the body's one block.
        unsafe {
            let body = mlir_sys::mlirRegionGetFirstBlock(mlir_sys::mlirOperationGetRegion(raw, 0));
            let n = mlir_sys::mlirBlockGetNumArguments(body);
            if n < 2 {
                continue;
            }
            if mlir_sys::mlirOperationGetNumOperands(raw) < 3 * n {
                return Err(failed(
                    STAGE,
                    format!("a parallel loop of {n} axes with fewer than {} bounds: {}", 3 * n, op(raw)),
                ));
            }
            for segment in 0..3 {
                let first = segment * n;
                let values: Vec<_> = (0..n).map(|k| mlir_sys::mlirOperationGetOperand(raw, first + k)).collect();
                for (k, value) in values.into_iter().rev().enumerate() {
                    mlir_sys::mlirOperationSetOperand(raw, first + k as isize, value);
                }
            }
            let old: Vec<_> = (0..n).map(|k| mlir_sys::mlirBlockGetArgument(body, k)).collect();
            // New arguments after the old, in reversed order; then the old ones go.
            for &value in old.iter().rev() {
                let new = mlir_sys::mlirBlockAddArgument(body, mlir_sys::mlirValueGetType(value), mlir_sys::mlirValueGetLocation(value));
                mlir_sys::mlirValueReplaceAllUsesOfWith(value, new);
            }
            for _ in 0..n {
                mlir_sys::mlirBlockEraseArgument(body, 0);
            }
        }
    }
    Ok(())
}

/// Keeps one of each set of identical kernels and launches it wherever any of the set was.
/// Outlining makes a kernel module per launch site, and fusion inlined the ops that recur (every
/// layer's same ops), so without this a 12-layer model would carry, and the driver compile at
/// load, twelve copies of each of its layer's kernels. Kernels take their buffers and sizes as
/// arguments, so the same op in another layer is the same operations; two kernel modules are
/// compared by their contents (each operation as MLIR prints it, without the module's name).
pub fn deduplicate_kernels(context: &Context, module: &mut Module) -> Result<(), MlirError> {
    const STAGE: &str = "keeping each distinct kernel once";
    let mut first_of: HashMap<String, String> = HashMap::new();
    let mut replaced_by: HashMap<String, String> = HashMap::new();
    let mut duplicates = Vec::new();
    for raw in operations_named(module, "gpu.module", false) {
        // SAFETY: collected above from `module`, which is borrowed mutably here.
        let kernel_module = unsafe { op(raw) };
        let name = symbol_name(&kernel_module).ok_or_else(|| failed(STAGE, format!("a kernel module without a name: {kernel_module}")))?;
        let mut contents = String::new();
        if let Ok(region) = kernel_module.region(0) {
            let mut block = region.first_block();
            while let Some(b) = block {
                let mut next = b.first_operation();
                while let Some(o) = next {
                    contents.push_str(&o.to_string());
                    contents.push('\n');
                    next = o.next_in_block();
                }
                block = b.next_in_region();
            }
        }
        match first_of.get(&contents) {
            Some(kept) => {
                replaced_by.insert(name, kept.clone());
                duplicates.push(raw);
            }
            None => {
                first_of.insert(contents, name);
            }
        }
    }
    for raw in operations_named(module, "gpu.launch_func", true) {
        // SAFETY: collected above from `module`, which is borrowed mutably here.
        let launch = unsafe { op(raw) };
        let kernel = launch
            .attribute("kernel")
            .map_err(|_| failed(STAGE, format!("a launch without a kernel: {launch}")))?
            .to_raw();
        // SAFETY: reads a live operation's attribute, once it is known to be a symbol reference;
        // a replacement `@kept::@function` is made in the same context, with the same nested
        // reference, and set in place of the old one.
        unsafe {
            if !mlir_sys::mlirAttributeIsASymbolRef(kernel) || mlir_sys::mlirSymbolRefAttrGetNumNestedReferences(kernel) != 1 {
                return Err(failed(STAGE, format!("a launch's kernel is not @module::@function: {launch}")));
            }
            let root = mlir_sys::mlirSymbolRefAttrGetRootReference(kernel);
            let root = std::str::from_utf8(std::slice::from_raw_parts(root.data.cast::<u8>(), root.length)).unwrap_or_default();
            let Some(kept) = replaced_by.get(root) else { continue };
            let function = mlir_sys::mlirSymbolRefAttrGetNestedReference(kernel, 0);
            let replacement = mlir_sys::mlirSymbolRefAttrGet(context.to_raw(), melior::StringRef::new(kept).to_raw(), 1, &function);
            mlir_sys::mlirOperationSetAttributeByName(launch.to_raw(), melior::StringRef::new("kernel").to_raw(), replacement);
        }
    }
    for raw in duplicates {
        // SAFETY: a kernel module of `module` that no launch refers to any more; removed from
        // its block first, it is ours to destroy.
        unsafe {
            mlir_sys::mlirOperationRemoveFromParent(raw);
            mlir_sys::mlirOperationDestroy(raw);
        }
    }
    Ok(())
}

/// The `sym_name` of a symbol operation (`gpu.module @name`), without its quotes.
fn symbol_name(symbol: &OperationRef) -> Option<String> {
    let attribute = symbol.attribute("sym_name").ok()?;
    melior::ir::attribute::StringAttribute::try_from(attribute)
        .ok()
        .map(|s| s.value().to_string())
}

/// Host code (outside `gpu.module`s and `gpu.launch`es) must not touch memory: every buffer is
/// on the device. A loop nest that did not become a kernel would read device memory on the host
/// and crash; this turns that compiler bug into an error naming the op. The one exception is a
/// scalar function argument (`memref.load %argN[]`: a decode step's position, which places
/// slices; or a scalar output's store), which the runtime passes in host memory that the device
/// also reads.
pub fn check_host_code(module: &Module) -> Result<(), MlirError> {
    let mut problems = Vec::new();
    module.as_operation().walk(WalkOrder::PreOrder, |op| {
        let name = op.name();
        let name = name.as_string_ref().as_str().unwrap_or("");
        if name == "gpu.module" || name == "gpu.launch" {
            return WalkResult::Skip;
        }
        let touches_memory = ["memref.load", "memref.store", "memref.copy", "scf.parallel"].contains(&name)
            || name.starts_with("linalg.")
            || name.starts_with("vector.");
        let scalar_argument = match name {
            "memref.load" => op.operand(0).is_ok_and(|m| is_scalar_argument(&m)),
            "memref.store" => op.operand(1).is_ok_and(|m| is_scalar_argument(&m)),
            _ => false,
        };
        if touches_memory && !scalar_argument {
            problems.push(op.to_string().lines().next().unwrap_or_default().trim().to_string());
        }
        WalkResult::Advance
    });
    if problems.is_empty() {
        return Ok(());
    }
    problems.truncate(5);
    Err(MlirError {
        stage: "mapping loop nests to GPU kernels (host code would read device memory)",
        diagnostics: problems,
    })
}

/// A rank-0 memref that is an argument of a function.
fn is_scalar_argument(memref: &Value) -> bool {
    let rank0 = MemRefType::try_from(memref.r#type()).is_ok_and(|t| t.rank() == 0);
    // SAFETY: reads the owner of a live block argument and that block's parent operation.
    let of_function = memref.is_block_argument()
        && unsafe {
            let block = mlir_sys::mlirBlockArgumentGetOwner(memref.to_raw());
            let parent = mlir_sys::mlirBlockGetParentOperation(block);
            !parent.ptr.is_null() && OperationRef::from_raw(parent).name().as_string_ref().as_str() == Ok("func.func")
        };
    rank0 && of_function
}

/// Host `memref.alloc`/`memref.dealloc` → `gpu.alloc`/`gpu.dealloc`: every buffer the host
/// code allocates is read and written only by kernels. (A `memref.alloc`'s alignment goes:
/// device allocations are 256-byte aligned.)
pub fn allocate_on_device(context: &Context, module: &mut Module) -> Result<(), MlirError> {
    const STAGE: &str = "allocating host buffers on the device";
    for raw in operations_named(module, "memref.alloc", true) {
        // SAFETY: collected above from `module`, which is borrowed mutably here.
        let alloc = unsafe { op(raw) };
        let sizes: Vec<Value> = alloc.operands().collect();
        let symbols = alloc
            .attribute("operandSegmentSizes")
            .ok()
            .and_then(|a| DenseI32ArrayAttribute::try_from(a).ok())
            .and_then(|a| a.element(1).ok())
            .unwrap_or(0);
        if symbols != 0 {
            return Err(failed(STAGE, format!("an allocation with symbol operands: {alloc}")));
        }
        let result: Type = alloc
            .result(0)
            .map_err(|_| failed(STAGE, format!("an allocation without a result: {alloc}")))?
            .r#type();
        let device = OperationBuilder::new("gpu.alloc", alloc.location())
            .add_operands(&sizes)
            .add_results(&[result])
            .add_attributes(&[(
                Identifier::new(context, "operandSegmentSizes"),
                DenseI32ArrayAttribute::new(context, &[0, sizes.len() as i32, 0]).into(),
            )])
            .build()
            .map_err(|e| failed(STAGE, e.to_string()))?;
        // SAFETY: a live allocation with one memref result, replaced by one of the same type.
        unsafe { replace(raw, device) };
    }
    for raw in operations_named(module, "memref.dealloc", true) {
        // SAFETY: collected above from `module`, which is borrowed mutably here.
        let dealloc = unsafe { op(raw) };
        let buffer = dealloc
            .operand(0)
            .map_err(|_| failed(STAGE, format!("a deallocation without a buffer: {dealloc}")))?;
        let device = OperationBuilder::new("gpu.dealloc", dealloc.location())
            .add_operands(&[buffer])
            .build()
            .map_err(|e| failed(STAGE, e.to_string()))?;
        // SAFETY: a live deallocation, without results.
        unsafe { replace(raw, device) };
    }
    Ok(())
}

/// Each kernel module's PTX, from the `gpu.binary` ops that `gpu-module-to-binary{format=isa}`
/// leaves: `(kernel module name, PTX)`, read from each binary's `#gpu.object`.
pub fn ptx_of(module: &Module) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for raw in operations_named(module, "gpu.binary", false) {
        // SAFETY: collected above from `module`, which is borrowed here.
        let binary = unsafe { op(raw) };
        let Some(name) = symbol_name(&binary) else { continue };
        let Ok(objects) = binary.attribute("objects") else { continue };
        // SAFETY: `objects` is an attribute of a live operation; an array's elements are read by
        // index below its length, and only `#gpu.object` elements are asked for their object.
        unsafe {
            let objects = objects.to_raw();
            if !mlir_sys::mlirAttributeIsAArray(objects) {
                continue;
            }
            for k in 0..mlir_sys::mlirArrayAttrGetNumElements(objects) {
                let object = mlir_sys::mlirArrayAttrGetElement(objects, k);
                if !mlir_sys::mlirAttributeIsAGPUObjectAttr(object) {
                    continue;
                }
                let text = mlir_sys::mlirGPUObjectAttrGetObject(object);
                let bytes = std::slice::from_raw_parts(text.data.cast::<u8>(), text.length);
                out.push((name.clone(), String::from_utf8_lossy(bytes).into_owned()));
            }
        }
    }
    out
}

/// The libdevice functions (`__nv_expf`, ...) the kernels call, declared and not defined: what a
/// module lowered without libdevice lacks.
pub fn undefined_libdevice_functions(module: &Module) -> Vec<String> {
    let mut missing = Vec::new();
    module.as_operation().walk(WalkOrder::PreOrder, |op| {
        let name = op.name();
        if name.as_string_ref().as_str() == Ok("llvm.func") {
            let declared_only = op.region(0).is_ok_and(|r| r.first_block().is_none());
            if let Some(f) = symbol_name(&op).filter(|f| f.starts_with("__nv_") && declared_only) {
                missing.push(f);
            }
        }
        WalkResult::Advance
    });
    missing.sort_unstable();
    missing.dedup();
    missing
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mlir_pipeline::{new_context, parse};

    use crate::mlir_ops::testing::rewritten;

    #[test]
    fn parallel_loops_innermost_first() {
        let text = "func.func @f(%m: memref<?x?x768xf32>, %d: index, %e: index) {
  %c0 = arith.constant 0 : index
  %c1 = arith.constant 1 : index
  %c768 = arith.constant 768 : index
  %x = arith.constant 1.0 : f32
  scf.parallel (%a, %b, %c) = (%c0, %c0, %c0) to (%d, %e, %c768) step (%c1, %c1, %c1) {
    memref.store %x, %m[%a, %b, %c] : memref<?x?x768xf32>
  }
  return
}";
        let out = rewritten(text, |_, m| innermost_first(m));
        let parallel = out.lines().find(|l| l.contains("scf.parallel")).unwrap();
        let store = out.lines().find(|l| l.contains("memref.store")).unwrap();
        // The first axis now runs to 768 and indexes the last dimension.
        let (ivs, rest) = parallel.split_once(") = (").unwrap();
        let ivs: Vec<&str> = ivs.rsplit_once('(').unwrap().1.split(", ").collect();
        assert!(rest.contains("to (%c768, %arg2, %arg1)"), "{out}");
        assert!(store.contains(&format!("[{}, {}, {}]", ivs[2], ivs[1], ivs[0])), "{out}");
    }

    #[test]
    fn host_allocations_only() {
        let text = "module attributes {gpu.container_module} {
  func.func @f(%d: index) {
    %a = memref.alloc(%d) {alignment = 64 : i64} : memref<?xf32>
    %c1 = arith.constant 1 : index
    gpu.launch blocks(%bx, %by, %bz) in (%x = %c1, %y = %c1, %z = %c1) threads(%tx, %ty, %tz) in (%p = %c1, %q = %c1, %r = %c1) {
      %t = memref.alloc() : memref<4xf32>
      memref.dealloc %t : memref<4xf32>
      gpu.terminator
    }
    memref.dealloc %a : memref<?xf32>
    return
  }
}";
        let out = rewritten(text, allocate_on_device);
        assert!(out.contains("= gpu.alloc  (%arg0) : memref<?xf32>"), "{out}");
        assert!(out.contains("= memref.alloc() : memref<4xf32>"), "{out}");
        assert!(out.contains("gpu.dealloc  %"), "{out}");
        assert_eq!(out.matches("memref.dealloc").count(), 1, "{out}");
    }

    #[test]
    fn identical_kernels_are_kept_once() {
        let text = "module attributes {gpu.container_module} {
  func.func @forward(%a: memref<?xf32>, %b: memref<?xf64>) {
    %c1 = arith.constant 1 : index
    gpu.launch_func @forward_kernel::@forward_kernel blocks in (%c1, %c1, %c1) threads in (%c1, %c1, %c1) args(%a : memref<?xf32>)
    gpu.launch_func @forward_kernel_0::@forward_kernel blocks in (%c1, %c1, %c1) threads in (%c1, %c1, %c1) args(%a : memref<?xf32>)
    gpu.launch_func @forward_kernel_1::@forward_kernel blocks in (%c1, %c1, %c1) threads in (%c1, %c1, %c1) args(%b : memref<?xf64>)
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
}";
        let out = rewritten(text, deduplicate_kernels);
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
    }

    #[test]
    fn copies_become_loop_nests() {
        let text = "func.func @f(%a: memref<?x4xf32>, %b: memref<?x4xf32, strided<[8, 1]>>) {
  memref.copy %a, %b : memref<?x4xf32> to memref<?x4xf32, strided<[8, 1]>>
  return
}";
        let out = rewritten(text, copies_as_linalg);
        assert!(
            out.contains("linalg.copy ins(%arg0 : memref<?x4xf32>) outs(%arg1 : memref<?x4xf32, strided<[8, 1]>>)"),
            "{out}"
        );
        assert!(!out.contains("memref.copy"), "{out}");
    }

    #[test]
    fn ptx_and_missing_libdevice_functions_are_read_from_operations() {
        let text = r#"module attributes {gpu.container_module} {
  gpu.binary @forward_kernel [#gpu.object<#nvvm.target<chip = "sm_90">, assembly = "//\0A.version 8.0\0A.target sm_90\0A">]
  llvm.func @__nv_expf(f32) -> f32
  llvm.func @__nv_tanhf(f32) -> f32
  llvm.func @__nv_local(%x: f32) -> f32 {
    llvm.return %x : f32
  }
}"#;
        let context = new_context();
        let module = parse(&context, text).unwrap_or_else(|e| panic!("{e}"));
        let ptx = ptx_of(&module);
        assert_eq!(
            ptx,
            [("forward_kernel".to_string(), "//\n.version 8.0\n.target sm_90\n".to_string())]
        );
        assert_eq!(undefined_libdevice_functions(&module), ["__nv_expf", "__nv_tanhf"]);
    }

    #[test]
    fn host_code_that_reads_memory_is_an_error() {
        let text = "func.func @f(%p: memref<i64>, %m: memref<4xf32>) -> f32 {
  %c0 = arith.constant 0 : index
  %i = memref.load %p[] : memref<i64>
  %x = memref.load %m[%c0] : memref<4xf32>
  return %x : f32
}";
        let context = new_context();
        let module = parse(&context, text).unwrap();
        let e = check_host_code(&module).unwrap_err();
        assert_eq!(e.diagnostics.len(), 1, "{e}");
        assert!(e.diagnostics[0].contains("memref.load %arg1[%c0]"), "{e}");
    }
}
