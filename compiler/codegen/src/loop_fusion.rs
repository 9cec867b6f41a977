//! The GPU lowering's fusion of loop nests (`--target cuda`, between "linalg to parallel loops"
//! and "parallel loops to kernels"). Every op is one `scf.parallel` nest, so a matmul, its bias
//! and its activation's ten elementwise steps would be a dozen kernels, each writing its result
//! to device memory for the next to read back. MLIR's `scf-parallel-loop-fusion` merges adjacent
//! nests over the same iteration space when each reads what the one before wrote only at its own
//! index, but it stops at anything with a memory effect between them (an allocation, a
//! deallocation) and at a buffer written twice (a reduction's initial value, then its sum).
//! The rewrites here remove those obstacles, and the memory traffic fusion leaves:
//!
//! - [`gather_fusable_loops`]: in a run of nests over one iteration space, the buffers the run
//!   allocates are allocated before it and the ones it frees are freed after it;
//! - [`accumulate_in_registers`]: a reduction's sequential loop that reads and writes one element
//!   of a fresh buffer at every step (`linalg`'s lowering) carries the running value instead
//!   (`iter_args`) and stores it once, after the loop. Besides making the nest fusable, this
//!   halves the loop's memory accesses;
//! - [`temporaries_in_registers`], after fusion: a buffer that is written and read at one
//!   element only inside one nest's body (an intermediate of a fused chain) is not allocated;
//!   its reads take the value written.
//!
//! No upstream pass does these on `scf` loops over `memref`s: `mem2reg` promotes only
//! single-element `memref.alloca`s, `affine-scalrep` forwards only `affine` loads and stores,
//! `loop-invariant-subset-hoisting` hoists only subsets of loop-carried values (tensors), and
//! `buffer-hoisting` moves an allocation to where it dominates its uses, not ahead of a run of
//! loops (nor deallocations after it).
//!
//! Each rewrite walks the module's operations (through melior and MLIR's C API) and changes
//! them in place; what it leaves is checked by MLIR's verifier when the next pass pipeline runs.
//! An operation it matches that is not in the shape its dialect defines (a store without a
//! buffer, a parallel loop whose bounds do not come in threes) is an error; a block without the
//! pattern is left as it is.

use crate::mlir_ops::{blocks, operations, Blk, Op, Val};
use crate::mlir_pipeline::MlirError;
use melior::ir::operation::{OperationBuilder, OperationLike, WalkOrder};
use melior::ir::r#type::{MemRefType, ShapedTypeLike, TypeLike};
use melior::ir::{Module, Region};

/// Moves allocations and deallocations out of runs of `scf.parallel` nests over the same
/// iteration space, in every block of the module, so that nothing with a memory effect separates
/// the nests.
pub fn gather_fusable_loops(module: &mut Module) -> Result<(), MlirError> {
    for block in blocks(module, WalkOrder::PreOrder) {
        gather_block(block)?;
    }
    Ok(())
}

/// Rewrites every reduction loop that accumulates into one element of a fresh buffer so that the
/// running value is a loop-carried value, stored once after the loop. Inner blocks are rewritten
/// before the blocks around them.
pub fn accumulate_in_registers(module: &mut Module) -> Result<(), MlirError> {
    for block in blocks(module, WalkOrder::PostOrder) {
        // The op before the one looked at, as rewritten so far: a rewritten loop's store.
        let mut previous = None;
        let mut next = block.first();
        while let Some(op) = next {
            next = op.next();
            previous = Some(accumulated(op, previous)?.unwrap_or(op));
        }
    }
    Ok(())
}

/// Removes the buffers that one block writes once and then only reads back at the same element,
/// and that nothing else uses but their allocation and deallocation: the reads become the value
/// written.
pub fn temporaries_in_registers(module: &mut Module) -> Result<(), MlirError> {
    let mut temporaries = Vec::new();
    for alloc in operations(module, WalkOrder::PreOrder) {
        if alloc.is("memref.alloc") {
            temporaries.extend(temporary(alloc)?);
        }
    }
    // All are found before any is removed: removing one leaves the others' ops as they were,
    // except that the store of one may have stored a load of another, and then stores what that
    // load read. So each store's value is read when its temporary is removed.
    for t in temporaries {
        let (value, _, _) = store_parts(t.store).map_err(|e| failed(TEMPORARIES, e, t.store))?;
        for &load in &t.loads {
            // The stored value dominates the store, and so the loads after it in its block, and
            // every use of their results.
            load.result(0).map_err(|e| failed(TEMPORARIES, e, load))?.replace_uses_with(value);
        }
        for &op in t.loads.iter().chain([&t.store]).chain(&t.deallocs).chain([&t.alloc]) {
            op.erase().map_err(|e| failed(TEMPORARIES, e, op))?;
        }
    }
    Ok(())
}

const GATHER: &str = "gathering parallel loops to fuse";
const ACCUMULATE: &str = "carrying reductions in registers";
const TEMPORARIES: &str = "keeping fused intermediates in registers";

/// An error of `stage` at `op`.
fn failed(stage: &'static str, what: impl std::fmt::Display, op: Op) -> MlirError {
    MlirError {
        stage,
        diagnostics: vec![format!("{what}: {}", op.get())],
    }
}

/// What kind of op a block's op is, for [`gather_block`].
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// An `scf.parallel` nest (without results); its iteration space is its operands.
    Loop,
    Alloc,
    Dealloc,
    /// An op without memory effects (a view, a size, arithmetic), which fusion looks past.
    Pure,
    Other,
}

/// The ops, besides those of [`PURE_DIALECTS`], that [`Kind::Pure`] takes.
const PURE_OPS: [&str; 7] = [
    "memref.dim",
    "memref.subview",
    "memref.expand_shape",
    "memref.collapse_shape",
    "memref.cast",
    "memref.reinterpret_cast",
    "affine.apply",
];

const PURE_DIALECTS: [&str; 3] = ["arith.", "index.", "math."];

fn kind(op: Op) -> Kind {
    let name = op.get().name();
    let name = name.as_string_ref().as_str().unwrap_or_default();
    if name == "scf.parallel" && op.result_count() == 0 {
        Kind::Loop
    } else if op.region_count() > 0 {
        Kind::Other
    } else if name == "memref.alloc" {
        Kind::Alloc
    } else if name == "memref.dealloc" {
        Kind::Dealloc
    } else if op.result_count() > 0 && (PURE_OPS.contains(&name) || PURE_DIALECTS.iter().any(|d| name.starts_with(d))) {
        Kind::Pure
    } else {
        Kind::Other
    }
}

/// [`gather_fusable_loops`] on one block.
fn gather_block(block: Blk) -> Result<(), MlirError> {
    let ops = block.ops();
    let kinds: Vec<Kind> = ops.iter().map(|&op| kind(op)).collect();
    for (&op, _) in ops.iter().zip(&kinds).filter(|(_, k)| **k == Kind::Loop) {
        if op.operands().len() % 3 != 0 {
            return Err(failed(GATHER, "a parallel loop whose bounds and steps do not come in threes", op));
        }
    }
    let mut order = Vec::with_capacity(ops.len());
    let mut i = 0;
    while i < ops.len() {
        if kinds[i] != Kind::Loop {
            order.push(ops[i]);
            i += 1;
            continue;
        }
        // The run: from this nest to the last nest over the same space that only allocations,
        // deallocations and pure ops separate from it.
        let space = ops[i].operands();
        let mut last = i;
        let mut j = i + 1;
        while j < ops.len() && kinds[j] != Kind::Other {
            if kinds[j] == Kind::Loop {
                if ops[j].operands() != space {
                    break;
                }
                last = j;
            }
            j += 1;
        }
        // Allocations go before the run unless a size they take is computed inside it;
        // deallocations go after it.
        let mut before = Vec::new();
        let mut inside = Vec::new();
        let mut after = Vec::new();
        for k in i..=last {
            let op = ops[k];
            let sized_inside = || op.operands().iter().any(|v| v.defining_op().is_some_and(|d| inside.contains(&d)));
            match kinds[k] {
                Kind::Alloc if !sized_inside() => before.push(op),
                Kind::Dealloc => after.push(op),
                _ => inside.push(op),
            }
        }
        order.extend(before);
        order.extend(inside);
        order.extend(after);
        i = last + 1;
    }
    // Each op after the one before it in the new order: the block ends up in that order.
    for pair in order.windows(2) {
        if pair[0].next() != Some(pair[1]) {
            pair[1].move_after(pair[0]);
        }
    }
    Ok(())
}

/// `memref.store`'s value, buffer and indices.
fn store_parts(store: Op) -> Result<(Val, Val, Vec<Val>), &'static str> {
    match store.operands().as_slice() {
        [value, buffer, indices @ ..] => Ok((*value, *buffer, indices.to_vec())),
        _ => Err("a store without a value and a buffer"),
    }
}

/// `memref.load`'s buffer and indices.
fn load_parts(load: Op) -> Result<(Val, Vec<Val>), &'static str> {
    match load.operands().as_slice() {
        [buffer, indices @ ..] if load.result_count() == 1 => Ok((*buffer, indices.to_vec())),
        _ => Err("a load without a buffer or without one result"),
    }
}

/// A buffer [`temporaries_in_registers`] removes.
struct Temporary {
    alloc: Op,
    /// Its one store.
    store: Op,
    loads: Vec<Op>,
    deallocs: Vec<Op>,
}

/// `alloc`'s buffer as a [`Temporary`], if it is one: besides its deallocations, it is stored
/// to once and every load reads the stored element in the straight-line code that follows the
/// store in its block (not in a region nested in it, nor after an op that has one).
fn temporary(alloc: Op) -> Result<Option<Temporary>, MlirError> {
    let buffer = alloc.result(0).map_err(|e| failed(TEMPORARIES, e, alloc))?;
    let mut store = None;
    let mut loads = Vec::new();
    let mut deallocs = Vec::new();
    for (user, operand) in buffer.users() {
        if user.is("memref.store") && operand == 1 {
            if store.is_some() {
                return Ok(None);
            }
            store = Some(user);
        } else if user.is("memref.load") && operand == 0 {
            loads.push(user);
        } else if user.is("memref.dealloc") {
            deallocs.push(user);
        } else {
            return Ok(None);
        }
    }
    let Some(store) = store else { return Ok(None) };
    let (_, _, indices) = store_parts(store).map_err(|e| failed(TEMPORARIES, e, store))?;
    // The straight-line code after the store: up to the first op with regions (a loop).
    let end = std::iter::successors(store.next(), |op| op.next()).find(|op| op.region_count() > 0);
    for &load in &loads {
        let (_, at) = load_parts(load).map_err(|e| failed(TEMPORARIES, e, load))?;
        if load.block() != store.block() || !store.is_before(load) || end.is_some_and(|end| end.is_before(load)) || at != indices {
            return Ok(None);
        }
    }
    Ok(Some(Temporary {
        alloc,
        store,
        loads,
        deallocs,
    }))
}

/// A buffer that nothing can read except through its own value: the result of `memref.alloc`
/// or `memref.alloca` that no op with results takes but loads and sizes (no view, no cast).
fn is_fresh(buffer: Val) -> bool {
    buffer.defining_op().is_some_and(|d| d.is("memref.alloc") || d.is("memref.alloca"))
        && buffer
            .users()
            .iter()
            .all(|(user, _)| user.result_count() == 0 || user.is("memref.load") || user.is("memref.dim"))
}

/// If `op` is an `scf.for` (over `index`, without results or attributes) whose body loads one
/// element of a fresh buffer and, as its last op, stores the next value to the same element,
/// and uses the buffer nowhere else, rewrites it to carry the value and returns the store, now
/// after the loop. The element's initial value is what the op before the loop (`previous`)
/// stores to it, that store then going, or else a load of the element before the loop.
fn accumulated(op: Op, previous: Option<Op>) -> Result<Option<Op>, MlirError> {
    let bounds = op.operands();
    if !op.is("scf.for") || op.result_count() != 0 || bounds.len() != 3 || op.get().attribute_count() != 0 {
        return Ok(None);
    }
    let body = match op.blocks().as_slice() {
        [body] => *body,
        _ => return Err(failed(ACCUMULATE, "a loop without one block", op)),
    };
    let iv = body
        .argument(0)
        .ok_or_else(|| failed(ACCUMULATE, "a loop without an induction variable", op))?;
    if !iv.r#type().is_index() {
        return Ok(None);
    }
    let ops = body.ops();
    let [.., store, terminator] = ops.as_slice() else {
        return Ok(None);
    };
    let (store, terminator) = (*store, *terminator);
    if !terminator.is("scf.yield") || !terminator.operands().is_empty() {
        return Err(failed(
            ACCUMULATE,
            "a loop without results whose body does not end in an empty yield",
            op,
        ));
    }
    if !store.is("memref.store") {
        return Ok(None);
    }
    let (_, buffer, indices) = store_parts(store).map_err(|e| failed(ACCUMULATE, e, store))?;
    if !is_fresh(buffer) {
        return Ok(None);
    }
    // Exactly one load of the same element, in the body's block, and no other use of the buffer
    // anywhere in the body.
    let mut load = None;
    for (user, _) in buffer.users() {
        if user == store || !user.is_inside(op) {
            continue;
        }
        let same_element =
            user.is("memref.load") && user.block() == Some(body) && load_parts(user).map_err(|e| failed(ACCUMULATE, e, user))?.1 == indices;
        if !same_element || load.is_some() {
            return Ok(None);
        }
        load = Some(user);
    }
    let Some(load) = load else { return Ok(None) };
    // The element's indices must not change inside the loop.
    if indices
        .iter()
        .any(|&i| i == iv || i.defining_op().is_some_and(|d| d.block() == Some(body)))
    {
        return Ok(None);
    }
    let element = MemRefType::try_from(buffer.r#type())
        .map_err(|_| failed(ACCUMULATE, "a store to something other than a memref", store))?
        .element();
    let initial = match previous.filter(|p| p.is("memref.store")) {
        Some(p) => {
            let (value, b, i) = store_parts(p).map_err(|e| failed(ACCUMULATE, e, p))?;
            (b == buffer && i == indices).then_some((p, value))
        }
        None => None,
    };

    // The body takes the running value as its second argument, in place of the load, and
    // yields what it stored.
    let location = op.get().location();
    let carried = body.add_argument(element, load.get().location());
    let loaded = load.result(0).map_err(|e| failed(ACCUMULATE, e, load))?;
    // The argument is the body's, where every use of the load is.
    loaded.replace_uses_with(carried);
    let next = store.operands()[0];
    let yielded = OperationBuilder::new("scf.yield", store.get().location())
        .add_operands(&[next.get()])
        .build()
        .map_err(|e| failed(ACCUMULATE, e, store))?;
    // SAFETY: the new yield is owned here and given to the body's block, before its old
    // terminator, which nothing uses (it has no results) and is then removed.
    unsafe { mlir_sys::mlirBlockInsertOwnedOperationBefore(body.0, terminator.0, yielded.into_raw()) };
    terminator.erase().map_err(|e| failed(ACCUMULATE, e, terminator))?;
    let init = match initial {
        Some((_, value)) => value,
        None => {
            // The load, before the loop, reads the initial value: its buffer and indices are
            // defined outside the loop.
            load.move_before(op);
            loaded
        }
    };
    let looped = OperationBuilder::new("scf.for", location)
        .add_operands(&[bounds[0].get(), bounds[1].get(), bounds[2].get(), init.get()])
        .add_results(&[element])
        .add_regions([Region::new()])
        .build()
        .map_err(|e| failed(ACCUMULATE, e, op))?;
    let looped = looped.into_raw();
    // SAFETY: the new loop is owned here and given to the old loop's block, before it; the old
    // loop's body (its one region's blocks) moves into the new loop's empty region; the old loop,
    // left without a body and without results, is removed below.
    unsafe {
        let block = mlir_sys::mlirOperationGetBlock(op.0);
        mlir_sys::mlirBlockInsertOwnedOperationBefore(block, op.0, looped);
        mlir_sys::mlirRegionTakeBody(
            mlir_sys::mlirOperationGetRegion(looped, 0),
            mlir_sys::mlirOperationGetRegion(op.0, 0),
        );
    }
    let looped = Op(looped);
    // The store, after the loop, stores its result.
    store.move_after(looped);
    let sum = looped.result(0).map_err(|e| failed(ACCUMULATE, e, looped))?;
    // SAFETY: the store is live and has a value operand (`store_parts`); the loop's result, of
    // the element's type, is defined just before it.
    unsafe { mlir_sys::mlirOperationSetOperand(store.0, 0, sum.0) };
    op.erase().map_err(|e| failed(ACCUMULATE, e, op))?;
    if let Some((previous, _)) = initial {
        previous.erase().map_err(|e| failed(ACCUMULATE, e, previous))?;
        load.erase().map_err(|e| failed(ACCUMULATE, e, load))?;
    }
    Ok(Some(store))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mlir_pipeline::{new_context, parse};
    use melior::ir::Location;
    use mlir_sys::MlirValue;

    type Rewrite = fn(&mut Module) -> Result<(), MlirError>;

    use crate::mlir_ops::testing::printed;

    /// `text` parsed, rewritten by `f`, verified and printed.
    fn rewritten(text: &str, f: impl FnOnce(&mut Module) -> Result<(), MlirError>) -> String {
        crate::mlir_ops::testing::rewritten(text, |_, module| f(module))
    }

    /// The function's ops, each as the first two words of its first line.
    fn top_level(printed: &str) -> Vec<String> {
        printed
            .lines()
            .filter(|l| l.len() - l.trim_start().len() == 4 && !l.trim_start().starts_with('}'))
            .map(|l| l.trim_start().split(' ').take(2).collect::<Vec<_>>().join(" "))
            .collect()
    }

    const MATMUL_THEN_BIAS: &str = "\
func.func @f(%a: memref<?x8xf32>, %w: memref<8x4xf32>, %b: memref<4xf32>, %n: index) {
  %c0 = arith.constant 0 : index
  %c1 = arith.constant 1 : index
  %c4 = arith.constant 4 : index
  %c8 = arith.constant 8 : index
  %cst = arith.constant 0.0 : f32
  %alloc = memref.alloc(%n) {alignment = 64 : i64} : memref<?x4xf32>
  scf.parallel (%i, %j) = (%c0, %c0) to (%n, %c4) step (%c1, %c1) {
    memref.store %cst, %alloc[%i, %j] : memref<?x4xf32>
    scf.for %k = %c0 to %c8 step %c1 {
      %0 = memref.load %a[%i, %k] : memref<?x8xf32>
      %1 = memref.load %w[%k, %j] : memref<8x4xf32>
      %2 = memref.load %alloc[%i, %j] : memref<?x4xf32>
      %3 = arith.mulf %0, %1 : f32
      %4 = arith.addf %2, %3 : f32
      memref.store %4, %alloc[%i, %j] : memref<?x4xf32>
    }
    scf.reduce
  }
  %dim = memref.dim %alloc, %c0 : memref<?x4xf32>
  memref.dealloc %a : memref<?x8xf32>
  %alloc_1 = memref.alloc(%n) {alignment = 64 : i64} : memref<?x4xf32>
  scf.parallel (%i, %j) = (%c0, %c0) to (%n, %c4) step (%c1, %c1) {
    %0 = memref.load %alloc[%i, %j] : memref<?x4xf32>
    %1 = memref.load %b[%j] : memref<4xf32>
    %2 = arith.addf %0, %1 : f32
    memref.store %2, %alloc_1[%i, %j] : memref<?x4xf32>
    scf.reduce
  }
  memref.dealloc %alloc : memref<?x4xf32>
  return
}
";

    #[test]
    fn allocations_and_deallocations_leave_runs_of_nests() {
        let out = rewritten(MATMUL_THEN_BIAS, gather_fusable_loops);
        assert_eq!(
            top_level(&out)[5..],
            [
                "%alloc =",
                "%alloc_0 =",
                "scf.parallel (%arg4,",
                "%dim =",
                "scf.parallel (%arg4,",
                "memref.dealloc %arg0",
                "memref.dealloc %alloc",
                "return",
            ]
        );
        // Nothing inside the nests moved.
        assert_eq!(out.lines().count(), printed(MATMUL_THEN_BIAS).lines().count());
        assert!(
            out.contains("      memref.store %cst, %alloc[%arg4, %arg5] : memref<?x4xf32>\n      scf.for %arg6"),
            "{out}"
        );
    }

    #[test]
    fn nests_over_other_spaces_end_the_run() {
        let text = MATMUL_THEN_BIAS.replace(
            "to (%n, %c4) step (%c1, %c1) {\n    %0 = memref.load %alloc",
            "to (%n, %c8) step (%c1, %c1) {\n    %0 = memref.load %alloc",
        );
        assert_ne!(text, MATMUL_THEN_BIAS);
        assert_eq!(
            rewritten(&text, gather_fusable_loops),
            printed(&text),
            "a run of one nest is left as it is"
        );
    }

    #[test]
    fn an_allocation_sized_inside_the_run_stays_in_it() {
        let text = MATMUL_THEN_BIAS
            .replace(
                "%dim = memref.dim %alloc, %c0 : memref<?x4xf32>",
                "%dim = memref.dim %a, %c0 : memref<?x8xf32>",
            )
            .replace("%alloc_1 = memref.alloc(%n)", "%alloc_1 = memref.alloc(%dim)");
        let out = rewritten(&text, gather_fusable_loops);
        assert_eq!(
            top_level(&out)[5..],
            [
                "%alloc =",
                "scf.parallel (%arg4,",
                "%dim =",
                "%alloc_0 =",
                "scf.parallel (%arg4,",
                "memref.dealloc %arg0",
                "memref.dealloc %alloc",
                "return",
            ]
        );
    }

    #[test]
    fn a_reduction_carries_its_sum() {
        let out = rewritten(MATMUL_THEN_BIAS, accumulate_in_registers);
        let expected = "
    scf.parallel (%arg4, %arg5) = (%c0, %c0) to (%arg3, %c4) step (%c1, %c1) {
      %0 = scf.for %arg6 = %c0 to %c8 step %c1 iter_args(%arg7 = %cst) -> (f32) {
        %1 = memref.load %arg0[%arg4, %arg6] : memref<?x8xf32>
        %2 = memref.load %arg1[%arg6, %arg5] : memref<8x4xf32>
        %3 = arith.mulf %1, %2 : f32
        %4 = arith.addf %arg7, %3 : f32
        scf.yield %4 : f32
      }
      memref.store %0, %alloc[%arg4, %arg5] : memref<?x4xf32>
      scf.reduce 
    }
";
        assert!(out.contains(expected), "{out}");
    }

    #[test]
    fn a_reduction_without_initial_store_loads_it() {
        let text = MATMUL_THEN_BIAS.replace("    memref.store %cst, %alloc[%i, %j] : memref<?x4xf32>\n", "");
        assert_ne!(text, MATMUL_THEN_BIAS);
        let out = rewritten(&text, accumulate_in_registers);
        assert!(
            out.contains(
                "      %0 = memref.load %alloc[%arg4, %arg5] : memref<?x4xf32>
      %1 = scf.for %arg6 = %c0 to %c8 step %c1 iter_args(%arg7 = %0) -> (f32) {"
            ),
            "{out}"
        );
        assert!(
            out.contains("      memref.store %1, %alloc[%arg4, %arg5] : memref<?x4xf32>\n      scf.reduce"),
            "{out}"
        );
    }

    #[test]
    fn consecutive_reductions_of_one_element_chain() {
        // The second loop starts from what the first stored, which goes.
        let first = "    scf.for %k = %c0 to %c8 step %c1 {
      %0 = memref.load %a[%i, %k] : memref<?x8xf32>
      %1 = memref.load %w[%k, %j] : memref<8x4xf32>
      %2 = memref.load %alloc[%i, %j] : memref<?x4xf32>
      %3 = arith.mulf %0, %1 : f32
      %4 = arith.addf %2, %3 : f32
      memref.store %4, %alloc[%i, %j] : memref<?x4xf32>
    }
";
        let text = MATMUL_THEN_BIAS.replace(first, &format!("{first}{first}"));
        let out = rewritten(&text, accumulate_in_registers);
        assert!(
            out.contains("iter_args(%arg7 = %cst) -> (f32) {") && out.contains("iter_args(%arg7 = %0) -> (f32) {"),
            "{out}"
        );
        assert_eq!(out.matches("memref.store").count(), 2, "{out}");
    }

    #[test]
    fn buffers_that_may_be_aliased_are_left_alone() {
        // A view of the buffer could be read inside the loop under another name.
        let viewed = MATMUL_THEN_BIAS.replace(
            "  %dim = memref.dim %alloc, %c0 : memref<?x4xf32>\n",
            "  %view = memref.subview %alloc[0, 0] [%n, 2] [1, 1] : memref<?x4xf32> to memref<?x2xf32, strided<[4, 1]>>\n",
        );
        assert_ne!(viewed, MATMUL_THEN_BIAS);
        assert_eq!(rewritten(&viewed, accumulate_in_registers), printed(&viewed));
        // An index that changes inside the loop: not one element.
        let moving = MATMUL_THEN_BIAS
            .replace("%2 = memref.load %alloc[%i, %j]", "%2 = memref.load %alloc[%i, %k]")
            .replace("memref.store %4, %alloc[%i, %j]", "memref.store %4, %alloc[%i, %k]");
        assert_ne!(moving, MATMUL_THEN_BIAS);
        assert_eq!(rewritten(&moving, accumulate_in_registers), printed(&moving));
        // A second read of the buffer in the loop.
        let twice = MATMUL_THEN_BIAS.replace(
            "%3 = arith.mulf %0, %1 : f32",
            "%5 = memref.load %alloc[%i, %c0] : memref<?x4xf32>\n      %3 = arith.mulf %0, %5 : f32",
        );
        assert_ne!(twice, MATMUL_THEN_BIAS);
        assert_eq!(rewritten(&twice, accumulate_in_registers), printed(&twice));
    }

    const FUSED_CHAIN: &str = "\
func.func @f(%a: memref<?x4xf32>, %n: index) -> memref<?x4xf32> {
  %c0 = arith.constant 0 : index
  %c1 = arith.constant 1 : index
  %c4 = arith.constant 4 : index
  %alloc = memref.alloc(%n) {alignment = 64 : i64} : memref<?x4xf32>
  %alloc_1 = memref.alloc(%n) {alignment = 64 : i64} : memref<?x4xf32>
  %alloc_2 = memref.alloc(%n) {alignment = 64 : i64} : memref<?x4xf32>
  scf.parallel (%i, %j) = (%c0, %c0) to (%n, %c4) step (%c1, %c1) {
    %0 = memref.load %a[%i, %j] : memref<?x4xf32>
    %1 = arith.mulf %0, %0 : f32
    memref.store %1, %alloc[%i, %j] : memref<?x4xf32>
    %2 = memref.load %alloc[%i, %j] : memref<?x4xf32>
    memref.store %2, %alloc_1[%i, %j] : memref<?x4xf32>
    %3 = memref.load %alloc_1[%i, %j] : memref<?x4xf32>
    %4 = memref.load %alloc[%i, %j] : memref<?x4xf32>
    %5 = arith.addf %3, %4 : f32
    memref.store %5, %alloc_2[%i, %j] : memref<?x4xf32>
    scf.reduce
  }
  memref.dealloc %alloc : memref<?x4xf32>
  memref.dealloc %alloc_1 : memref<?x4xf32>
  return %alloc_2 : memref<?x4xf32>
}
";

    #[test]
    fn fused_intermediates_stay_in_registers() {
        let expected = "\
module {
  func.func @f(%arg0: memref<?x4xf32>, %arg1: index) -> memref<?x4xf32> {
    %c0 = arith.constant 0 : index
    %c1 = arith.constant 1 : index
    %c4 = arith.constant 4 : index
    %alloc = memref.alloc(%arg1) {alignment = 64 : i64} : memref<?x4xf32>
    scf.parallel (%arg2, %arg3) = (%c0, %c0) to (%arg1, %c4) step (%c1, %c1) {
      %0 = memref.load %arg0[%arg2, %arg3] : memref<?x4xf32>
      %1 = arith.mulf %0, %0 : f32
      %2 = arith.addf %1, %1 : f32
      memref.store %2, %alloc[%arg2, %arg3] : memref<?x4xf32>
      scf.reduce 
    }
    return %alloc : memref<?x4xf32>
  }
}
";
        assert_eq!(rewritten(FUSED_CHAIN, temporaries_in_registers), expected);
        // Read elsewhere (another element, after the nest): kept.
        let other_element = FUSED_CHAIN.replace("%4 = memref.load %alloc[%i, %j]", "%4 = memref.load %alloc[%i, %c0]");
        assert_eq!(
            rewritten(&other_element, temporaries_in_registers).matches("memref.alloc").count(),
            2
        );
        // Returned: kept (and the buffer that is now only written goes too).
        let returned = FUSED_CHAIN.replace("return %alloc_2", "return %alloc");
        let out = rewritten(&returned, temporaries_in_registers);
        assert_eq!(out.matches("memref.alloc").count(), 1, "{out}");
        assert!(
            out.contains("memref.store %1, %alloc[%arg2, %arg3]") && out.contains("return %alloc :"),
            "{out}"
        );
        // Read in a loop inside the nest, not in the store's block: kept.
        let nested = FUSED_CHAIN.replace(
            "    %4 = memref.load %alloc[%i, %j] : memref<?x4xf32>\n",
            "    %4 = scf.for %k = %c0 to %c4 step %c1 iter_args(%s = %3) -> (f32) {
      %l = memref.load %alloc[%i, %j] : memref<?x4xf32>
      scf.yield %l : f32
    }
",
        );
        assert_ne!(nested, FUSED_CHAIN);
        assert_eq!(rewritten(&nested, temporaries_in_registers).matches("memref.alloc").count(), 2);
        // Read after a loop that follows the store: kept.
        let after_loop = FUSED_CHAIN.replace(
            "    %4 = memref.load %alloc[%i, %j] : memref<?x4xf32>\n",
            "    %s = scf.for %k = %c0 to %c4 step %c1 iter_args(%t = %3) -> (f32) {
      %u = arith.addf %t, %t : f32
      scf.yield %u : f32
    }
    %4 = memref.load %alloc[%i, %j] : memref<?x4xf32>
",
        );
        assert_ne!(after_loop, FUSED_CHAIN);
        assert_eq!(rewritten(&after_loop, temporaries_in_registers).matches("memref.alloc").count(), 2);
    }

    #[test]
    fn a_module_without_the_patterns_is_unchanged() {
        let text = "\
func.func @f(%a: memref<?x4xf32>, %out: memref<?x4xf32>, %n: index) {
  %c0 = arith.constant 0 : index
  %c1 = arith.constant 1 : index
  %c4 = arith.constant 4 : index
  scf.parallel (%i, %j) = (%c0, %c0) to (%n, %c4) step (%c1, %c1) {
    %0 = memref.load %a[%i, %j] : memref<?x4xf32>
    %1 = scf.for %k = %c0 to %c4 step %c1 iter_args(%s = %0) -> (f32) {
      %2 = arith.addf %s, %s : f32
      scf.yield %2 : f32
    }
    memref.store %1, %out[%i, %j] : memref<?x4xf32>
    scf.reduce
  }
  return
}
";
        let rewrites: [Rewrite; 3] = [gather_fusable_loops, accumulate_in_registers, temporaries_in_registers];
        for f in rewrites {
            assert_eq!(rewritten(text, f), printed(text));
        }
    }

    fn first_named(module: &Module, name: &str) -> Op {
        operations(module, WalkOrder::PreOrder).into_iter().find(|op| op.is(name)).unwrap()
    }

    /// Inserts `new`, which may be malformed (nothing verifies an op built in the generic form),
    /// before `op`.
    fn insert_before(op: Op, new: melior::ir::Operation) {
        // SAFETY: the new op is owned here and given to the live op's block.
        unsafe { mlir_sys::mlirBlockInsertOwnedOperationBefore(op.block().unwrap().0, op.0, new.into_raw()) };
    }

    #[test]
    fn malformed_ops_are_errors() {
        let context = new_context();
        let location = Location::unknown(&context);
        // A store without operands just before a reduction loop, where its initial value would
        // be stored.
        let mut module = parse(&context, MATMUL_THEN_BIAS).unwrap();
        insert_before(
            first_named(&module, "scf.for"),
            OperationBuilder::new("memref.store", location).build().unwrap(),
        );
        let e = accumulate_in_registers(&mut module).unwrap_err();
        assert!(e.diagnostics[0].contains("a store without a value and a buffer"), "{e}");
        // A load of a temporary without a result.
        let mut module = parse(&context, FUSED_CHAIN).unwrap();
        let buffer = first_named(&module, "memref.alloc").result(0).unwrap();
        let load = OperationBuilder::new("memref.load", location)
            .add_operands(&[buffer.get()])
            .build()
            .unwrap();
        insert_before(first_named(&module, "scf.reduce"), load);
        let e = temporaries_in_registers(&mut module).unwrap_err();
        assert!(e.diagnostics[0].contains("a load without a buffer or without one result"), "{e}");
        // A parallel loop whose bounds do not come in threes.
        let mut module = parse(&context, FUSED_CHAIN).unwrap();
        let nest = first_named(&module, "scf.parallel");
        let mut operands: Vec<MlirValue> = nest.operands().iter().map(|v| v.0).collect();
        operands.push(operands[0]);
        // SAFETY: a live op, given one operand more (which nothing verifies before the rewrite).
        unsafe { mlir_sys::mlirOperationSetOperands(nest.0, operands.len() as isize, operands.as_ptr()) };
        let e = gather_fusable_loops(&mut module).unwrap_err();
        assert!(e.diagnostics[0].contains("do not come in threes"), "{e}");
    }
}
