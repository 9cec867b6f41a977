//! Split-K for the GPU's sums (`--target cuda`, after fusion): a nest whose threads each sum
//! `K` products (a matmul's output element, fused with its epilogue) has as many threads as
//! outputs. With one token per step (decoding), a matmul of 3072 columns is 3072 threads, 24
//! blocks on a GPU of 132 multiprocessors, each thread summing 768 or 3072 products one after
//! another. Here such a nest becomes two:
//!
//! 1. partial sums: `S` threads per output, thread `s` summing its chunk of `ceil(K / S)`
//!    products into `partial[..., s·Y + i, n]` (the chunk index merged with the axis next to
//!    the innermost, so the nest keeps at most three axes, which the GPU mapping gives all to
//!    blocks and threads);
//! 2. the original nest, whose sum is now over the `S` partial sums, then its epilogue.
//!
//! `S` is chosen at run time, from the nest's size: enough threads to fill the GPU
//! ([`TARGET_THREADS`]) where the outputs alone do not, and chunks of at least [`MIN_CHUNK`]
//! products. A large nest gets `S = 1`: one extra write and read of its outputs.
//!
//! Only plain sums qualify: an `scf.parallel` nest of two or three axes, from 0 in steps of 1,
//! directly in a function's body (not inside a loop, such as a scan's steps), whose first op is
//! an `scf.for` from 0 to a constant `K` of at least [`MIN_K`] in steps of 1 that carries one
//! `f32` starting at +0.0 and yields `arith.addf` of it (its only use) and another value. The
//! order of summation changes, as it does between the CPU's kernels and the GPU.
//!
//! MLIR's transform dialect has no form of this: `transform.structured.split_reduction` and
//! `tile_reduction_using_for`/`_forall` take `linalg` ops and a split factor or tile sizes fixed
//! when the transform is written, and the `transform.loop.*` ops do not split reductions. So the
//! rewrite walks the module's operations (through melior and MLIR's C API) and changes them in
//! place: the sum's loop moves, with its body, into the new first nest, which is built around
//! it; what it leaves is checked by MLIR's verifier when the next pass pipeline runs. An op it
//! matches that is not in the shape its dialect defines (a parallel loop whose bounds are not
//! three per axis, a loop without its body) is an error; a module without the pattern is left
//! as it is.

use crate::mlir_ops::{Blk, Op, Val};
use crate::mlir_pipeline::MlirError;
use melior::ir::attribute::{AttributeLike, DenseI32ArrayAttribute, IntegerAttribute};
use melior::ir::operation::{OperationBuilder, OperationLike};
use melior::ir::r#type::{IntegerType, MemRefType};
use melior::ir::{Block, BlockLike, Identifier, Location, Module, Region, RegionLike, Type, TypeLike, Value, ValueLike};
use melior::Context;

/// Threads that keep a GPU of compute capability 9.0 busy: 132 multiprocessors (H100 SXM and
/// H200 have 132) of 2048 resident threads each.
pub const TARGET_THREADS: i64 = 132 * 2048;

/// The fewest products a chunk sums.
pub const MIN_CHUNK: i64 = 64;

/// The shortest sum that is split.
pub const MIN_K: i64 = 256;

const STAGE: &str = "splitting long sums";

/// Splits every qualifying sum in the nests of each function's body (not those inside loops,
/// such as a scan's steps).
pub fn split_sums(context: &Context, module: &mut Module) -> Result<(), MlirError> {
    let mut nests = Vec::new();
    for function in Blk(module.body().to_raw()).ops() {
        if function.is("func.func") {
            for block in function.blocks() {
                nests.extend(block.ops().into_iter().filter(|op| op.is("scf.parallel")));
            }
        }
    }
    // All are found before any is split: the nests a split builds are not looked at.
    for nest in nests {
        if let Some(sum) = qualifying(nest)? {
            split(context, &sum)?;
        }
    }
    Ok(())
}

/// An error at `op`.
fn failed(what: impl std::fmt::Display, op: Op) -> MlirError {
    MlirError {
        stage: STAGE,
        diagnostics: vec![format!("{what}: {}", op.get())],
    }
}

/// A nest whose sum is split: the `scf.parallel`, its induction variables and upper bounds,
/// its body, and the sum, the body's first op, an `scf.for` over `0..k` from `init`.
struct Sum {
    nest: Op,
    ivs: Vec<Val>,
    upper: Vec<Val>,
    body: Blk,
    sum: Op,
    k: i64,
    init: Val,
}

/// `nest` (an `scf.parallel`) as a [`Sum`], if its sum qualifies (see the module's doc).
fn qualifying(nest: Op) -> Result<Option<Sum>, MlirError> {
    if nest.result_count() != 0 {
        return Ok(None);
    }
    let body = nest.only_block().ok_or_else(|| failed("a parallel loop without one block", nest))?;
    let ivs = body.arguments();
    let operands = nest.operands();
    if operands.len() != 3 * ivs.len() {
        return Err(failed(
            "a parallel loop without results whose bounds and steps are not three per induction variable",
            nest,
        ));
    }
    let (lower, rest) = operands.split_at(ivs.len());
    let (upper, step) = rest.split_at(ivs.len());
    if !(2..=3).contains(&ivs.len())
        || lower.iter().any(|l| l.index_constant() != Some(0))
        || step.iter().any(|s| s.index_constant() != Some(1))
    {
        return Ok(None);
    }
    let sum = body.first().ok_or_else(|| failed("a parallel loop with an empty body", nest))?;
    if !sum.is("scf.for") {
        return Ok(None);
    }
    let bounds = sum.operands();
    if bounds.len() != 3 + sum.result_count() {
        return Err(failed(
            "a loop whose operands are not its bounds, its step and one initial value per result",
            sum,
        ));
    }
    if sum.result_count() != 1 || !sum.result(0)?.get().r#type().is_f32() {
        return Ok(None);
    }
    let (init, k) = (bounds[3], bounds[1].index_constant());
    let Some(k) = k else { return Ok(None) };
    if bounds[0].index_constant() != Some(0) || bounds[2].index_constant() != Some(1) || k < MIN_K || !init.is_f32_zero() {
        return Ok(None);
    }
    // The loop's body sums: its yield is `arith.addf` of the carried value and one other, and
    // the carried value is used nowhere else.
    let for_body = sum.only_block().ok_or_else(|| failed("a loop without one block", sum))?;
    let [_, carried] = for_body.arguments()[..] else {
        return Err(failed(
            "a loop of one result whose body does not take an induction variable and one carried value",
            sum,
        ));
    };
    let terminator = for_body.ops().last().copied().filter(|t| t.is("scf.yield"));
    let yielded = match terminator.map(Op::operands).as_deref() {
        Some([yielded]) => *yielded,
        _ => return Err(failed("a loop of one result whose body does not end in a yield of one value", sum)),
    };
    let Some(add) = yielded
        .defining_op()
        .filter(|add| add.is("arith.addf") && add.block() == Some(for_body))
    else {
        return Ok(None);
    };
    if add.operands().len() != 2 {
        return Err(failed("an addition without two operands", add));
    }
    if carried.users().iter().map(|(user, _)| *user).collect::<Vec<_>>() != [add] {
        return Ok(None);
    }
    Ok(Some(Sum {
        nest,
        ivs,
        upper: upper.to_vec(),
        body,
        sum,
        k,
        init,
    }))
}

/// A new operation `name` of `operands`, with results of `results`.
fn operation<'c>(name: &str, location: Location<'c>, operands: &[Val], results: &[Type<'c>]) -> OperationBuilder<'c> {
    let operands: Vec<Value> = operands.iter().map(|v| v.get()).collect();
    OperationBuilder::new(name, location).add_operands(&operands).add_results(results)
}

/// Replaces `s.nest` by the two nests of the module's doc, with the partial sums' buffer
/// allocated before them and freed after them.
fn split<'c>(context: &'c Context, s: &Sum) -> Result<(), MlirError> {
    let Sum {
        nest,
        ref ivs,
        ref upper,
        body,
        sum,
        k,
        init,
    } = *s;
    let block = nest.block().ok_or_else(|| failed("a parallel loop outside a block", nest))?;
    let location = nest.location();
    let index = Type::index(context);
    let f32 = Type::float32(context);
    let build =
        |builder: OperationBuilder<'c>| -> Result<melior::ir::Operation<'c>, MlirError> { builder.build().map_err(|e| failed(e, nest)) };
    let host = |builder: OperationBuilder<'c>| -> Result<Val, MlirError> { block.insert_before(nest, build(builder)?).result(0) };
    let arith = |name: &str, operands: &[Val]| operation(name, location, operands, &[index]);
    let constant = |value: i64| {
        operation("arith.constant", location, &[], &[index])
            .add_attributes(&[(Identifier::new(context, "value"), IntegerAttribute::new(index, value).into())])
    };
    let (c0, c1, ck) = (host(constant(0))?, host(constant(1))?, host(constant(k))?);
    let target = host(constant(TARGET_THREADS))?;
    let most = host(constant((k / MIN_CHUNK).max(1)))?;
    // Threads the nest has: the product of its sizes.
    let mut size = upper[0];
    for &u in &upper[1..] {
        size = host(arith("arith.muli", &[size, u]))?;
    }
    let want = host(arith("arith.ceildivui", &[target, size]))?;
    let at_least = host(arith("arith.maxui", &[want, c1]))?;
    let split_count = host(arith("arith.minui", &[at_least, most]))?;
    let chunk = host(arith("arith.ceildivui", &[ck, split_count]))?;
    // The axis the chunks share: the one next to the innermost, which the GPU's mapping spreads
    // over a block's rows (the innermost goes across its threads). A nest of one row (a token
    // being decoded) then still fills its blocks, with chunks, and a nest of many rows that
    // gets one chunk keeps its shape.
    let merged = ivs.len() - 2;
    let merged_size = upper[merged];
    let rows = host(arith("arith.muli", &[split_count, merged_size]))?;

    // The partial sums' buffer: the nest's shape, its shared axis S times longer.
    let sizes: Vec<Val> = (0..ivs.len()).map(|a| if a == merged { rows } else { upper[a] }).collect();
    let dynamic: Vec<Val> = sizes.iter().copied().filter(|u| u.index_constant().is_none()).collect();
    // SAFETY: reads the marker MLIR's shaped types use for a dynamic size.
    let unknown = unsafe { mlir_sys::mlirShapedTypeGetDynamicSize() };
    let shape: Vec<i64> = sizes.iter().map(|u| u.index_constant().unwrap_or(unknown)).collect();
    let partial_type: Type = MemRefType::new(f32, &shape, None, None).into();
    let partial = host(operation("memref.alloc", location, &dynamic, &[partial_type]).add_attributes(&[
        (
            Identifier::new(context, "operandSegmentSizes"),
            DenseI32ArrayAttribute::new(context, &[dynamic.len() as i32, 0]).into(),
        ),
        (
            Identifier::new(context, "alignment"),
            IntegerAttribute::new(IntegerType::new(context, 64).into(), 64).into(),
        ),
    ]))?;

    // Nest 1: each thread sums its chunk of one output's products. Its axes are the nest's,
    // the shared one `S` times longer.
    let axes = Block::new(&vec![(index, location); ivs.len()]);
    let first_body = Blk(axes.to_raw());
    let region = Region::new();
    region.append_block(axes);
    let n = ivs.len() as i32;
    let mut bounds = vec![c0; ivs.len()];
    bounds.extend(&sizes);
    bounds.extend(vec![c1; ivs.len()]);
    let first = block.insert_before(
        nest,
        build(
            operation("scf.parallel", location, &bounds, &[])
                .add_attributes(&[(
                    Identifier::new(context, "operandSegmentSizes"),
                    DenseI32ArrayAttribute::new(context, &[n, n, n, 0]).into(),
                )])
                .add_regions([region]),
        )?,
    );
    let axes = first_body.arguments();
    let part = axes[merged];
    let which = first_body.append(build(arith("arith.divui", &[part, merged_size]))?).result(0)?;
    let row = first_body.append(build(arith("arith.remui", &[part, merged_size]))?).result(0)?;
    let lo = first_body.append(build(arith("arith.muli", &[which, chunk]))?).result(0)?;
    let end = first_body.append(build(arith("arith.addi", &[lo, chunk]))?).result(0)?;
    let hi_op = first_body.append(build(arith("arith.minui", &[end, ck]))?);
    let hi = hi_op.result(0)?;

    // Nest 2, the original: its sum is over the partial sums, in a new loop where the old one
    // was.
    let step_body = Block::new(&[(index, location), (f32, location)]);
    let steps = Blk(step_body.to_raw());
    let step_region = Region::new();
    step_region.append_block(step_body);
    let total = body.insert_before(
        sum,
        build(operation("scf.for", location, &[c0, split_count, c1, init], &[f32]).add_regions([step_region]))?,
    );
    let [chunk_index, acc] = steps.arguments()[..] else {
        return Err(failed("a loop built without its two arguments", total));
    };
    let base = steps.append(build(arith("arith.muli", &[chunk_index, merged_size]))?).result(0)?;
    let at = steps.append(build(arith("arith.addi", &[base, ivs[merged]]))?).result(0)?;
    let mut indices = ivs.clone();
    indices[merged] = at;
    let mut operands = vec![partial];
    operands.extend(&indices);
    let p = steps
        .append(build(operation("memref.load", location, &operands, &[f32]))?)
        .result(0)?;
    let added = steps
        .append(build(operation("arith.addf", location, &[acc, p], &[f32]))?)
        .result(0)?;
    steps.append(build(operation("scf.yield", location, &[added], &[]))?);
    // SAFETY: two live results of type f32; the new loop is where the old one was, before every
    // use of its result.
    unsafe { mlir_sys::mlirValueReplaceAllUsesOfWith(sum.result(0)?.0, total.result(0)?.0) };

    // The old loop, with its body, goes into nest 1 and sums one chunk, `lo..hi`.
    // SAFETY: two live operations; `hi_op` is in nest 1's block, which the loop joins.
    unsafe { mlir_sys::mlirOperationMoveAfter(sum.0, hi_op.0) };
    // Its bounds and step are operands 0 to 2 (`qualifying`), all of type index, and are
    // defined before it in nest 1 or before nest 1.
    sum.set_operand(0, lo);
    sum.set_operand(1, hi);
    sum.set_operand(2, c1);
    // Inside it, the nest's induction variables become nest 1's, the shared one recovered from
    // the chunk's row.
    for (a, &iv) in ivs.iter().enumerate() {
        let now = if a == merged { row } else { axes[a] };
        for (user, operand) in iv.users() {
            if user == sum || user.is_inside(sum) {
                // An index operand, given an index defined before the loop in nest 1.
                user.set_operand(operand, now);
            }
        }
    }
    let partial_sum = sum.result(0)?;
    let mut operands = vec![partial_sum, partial];
    operands.extend(&axes);
    first_body.append(build(operation("memref.store", location, &operands, &[]))?);
    first_body.append(build(operation("scf.reduce", location, &[], &[]))?);
    // Nest 1 keeps the original's attributes, as its copy.
    for k in 0..nest.get().discardable_attribute_count() {
        let (name, value) = nest.get().discardable_attribute_at(k).map_err(|e| failed(e, nest))?;
        // SAFETY: a live operation, given a discardable attribute of its context.
        unsafe { mlir_sys::mlirOperationSetDiscardableAttributeByName(first.0, name.as_string_ref().to_raw(), value.to_raw()) };
    }
    block.insert_after(nest, build(operation("memref.dealloc", location, &[partial], &[]))?);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mlir_pipeline::{new_context, parse};
    use melior::ir::operation::{WalkOrder, WalkResult};
    use mlir_sys::MlirValue;

    const MATMUL: &str = "\
func.func @forward(%a: memref<?x?x512xf32>, %w: memref<512x64xf32>, %out: memref<?x?x64xf32>) {
  %cst = arith.constant 0.000000e+00 : f32
  %c0 = arith.constant 0 : index
  %c1 = arith.constant 1 : index
  %c64 = arith.constant 64 : index
  %c512 = arith.constant 512 : index
  %dim = memref.dim %a, %c0 : memref<?x?x512xf32>
  %dim_0 = memref.dim %a, %c1 : memref<?x?x512xf32>
  scf.parallel (%i, %t, %n) = (%c0, %c0, %c0) to (%dim, %dim_0, %c64) step (%c1, %c1, %c1) {
    %0 = scf.for %k = %c0 to %c512 step %c1 iter_args(%acc = %cst) -> (f32) {
      %2 = memref.load %a[%i, %t, %k] : memref<?x?x512xf32>
      %3 = memref.load %w[%k, %n] : memref<512x64xf32>
      %4 = arith.mulf %2, %3 : f32
      %5 = arith.addf %acc, %4 : f32
      scf.yield %5 : f32
    }
    %1 = math.tanh %0 : f32
    memref.store %1, %out[%i, %t, %n] : memref<?x?x64xf32>
    scf.reduce
  }
  return
}
";

    use crate::mlir_ops::testing::printed;

    /// `text` parsed, its sums split, verified and printed.
    fn rewritten(text: &str) -> String {
        crate::mlir_ops::testing::rewritten(text, split_sums)
    }

    #[test]
    fn a_long_sum_is_split_in_two_nests() {
        let out = rewritten(MATMUL);
        // The chunk count, chosen at run time within [1, K / 64]: threads to fill the GPU over
        // the nest's size.
        let host = "
    %c0_1 = arith.constant 0 : index
    %c1_2 = arith.constant 1 : index
    %c512_3 = arith.constant 512 : index
    %c270336 = arith.constant 270336 : index
    %c8 = arith.constant 8 : index
    %0 = arith.muli %dim, %dim_0 : index
    %1 = arith.muli %0, %c64 : index
    %2 = arith.ceildivui %c270336, %1 : index
    %3 = arith.maxui %2, %c1_2 : index
    %4 = arith.minui %3, %c8 : index
    %5 = arith.ceildivui %c512_3, %4 : index
    %6 = arith.muli %4, %dim_0 : index
    %alloc = memref.alloc(%dim, %6) {alignment = 64 : i64} : memref<?x?x64xf32>
";
        assert!(out.contains(host), "{out}");
        // Nest 1: chunks merged with the axis next to the innermost; each sums its chunk.
        let partial_sums = "
    scf.parallel (%arg3, %arg4, %arg5) = (%c0_1, %c0_1, %c0_1) to (%dim, %6, %c64) step (%c1_2, %c1_2, %c1_2) {
      %7 = arith.divui %arg4, %dim_0 : index
      %8 = arith.remui %arg4, %dim_0 : index
      %9 = arith.muli %7, %5 : index
      %10 = arith.addi %9, %5 : index
      %11 = arith.minui %10, %c512_3 : index
      %12 = scf.for %arg6 = %9 to %11 step %c1_2 iter_args(%arg7 = %cst) -> (f32) {
        %13 = memref.load %arg0[%arg3, %8, %arg6] : memref<?x?x512xf32>
        %14 = memref.load %arg1[%arg6, %arg5] : memref<512x64xf32>
        %15 = arith.mulf %13, %14 : f32
        %16 = arith.addf %arg7, %15 : f32
        scf.yield %16 : f32
      }
      memref.store %12, %alloc[%arg3, %arg4, %arg5] : memref<?x?x64xf32>
      scf.reduce 
    }
";
        // Nest 2: the original, its sum over the partial sums, then its epilogue; the buffer is
        // freed after it.
        let total = "
    scf.parallel (%arg3, %arg4, %arg5) = (%c0, %c0, %c0) to (%dim, %dim_0, %c64) step (%c1, %c1, %c1) {
      %7 = scf.for %arg6 = %c0_1 to %4 step %c1_2 iter_args(%arg7 = %cst) -> (f32) {
        %9 = arith.muli %arg6, %dim_0 : index
        %10 = arith.addi %9, %arg4 : index
        %11 = memref.load %alloc[%arg3, %10, %arg5] : memref<?x?x64xf32>
        %12 = arith.addf %arg7, %11 : f32
        scf.yield %12 : f32
      }
      %8 = math.tanh %7 : f32
      memref.store %8, %arg2[%arg3, %arg4, %arg5] : memref<?x?x64xf32>
      scf.reduce 
    }
    memref.dealloc %alloc : memref<?x?x64xf32>
    return
";
        assert!(out.contains(&format!("{host}{}{}", &partial_sums[1..], &total[1..])), "{out}");
        assert_eq!(out.matches("scf.parallel").count(), 2, "{out}");
    }

    #[test]
    fn short_sums_and_other_reductions_are_left_alone() {
        let short = MATMUL.replace("%k = %c0 to %c512", "%k = %c0 to %c64");
        let max = MATMUL.replace("%5 = arith.addf %acc, %4 : f32", "%5 = arith.maximumf %acc, %4 : f32");
        let not_from_zero = MATMUL.replace(
            "%cst = arith.constant 0.000000e+00 : f32",
            "%cst = arith.constant 1.000000e+00 : f32",
        );
        let reused = MATMUL.replace("%4 = arith.mulf %2, %3 : f32", "%4 = arith.mulf %acc, %3 : f32");
        let in_a_loop = MATMUL
            .replace("  scf.parallel", "  scf.for %r = %c0 to %c64 step %c1 {\n  scf.parallel")
            .replace("    scf.reduce\n  }\n", "    scf.reduce\n  }\n  }\n");
        for text in [short, max, not_from_zero, reused, in_a_loop] {
            assert_ne!(text, MATMUL);
            assert_eq!(rewritten(&text), printed(&text));
        }
    }

    /// The module's first op named `name`.
    fn first_named(module: &Module, name: &str) -> Op {
        let mut found = None;
        module.as_operation().walk(WalkOrder::PreOrder, |op| {
            if found.is_none() && op.name().as_string_ref().as_str() == Ok(name) {
                found = Some(Op(op.to_raw()));
            }
            WalkResult::Advance
        });
        found.unwrap()
    }

    #[test]
    fn malformed_ops_are_errors() {
        let context = new_context();
        let location = Location::unknown(&context);
        // A nest given one operand more than its bounds and steps (nothing verifies it before
        // the rewrite).
        let mut module = parse(&context, MATMUL).unwrap();
        let nest = first_named(&module, "scf.parallel");
        let mut operands: Vec<MlirValue> = nest.operands().iter().map(|v| v.0).collect();
        operands.push(operands[0]);
        // SAFETY: a live op, given one operand more.
        unsafe { mlir_sys::mlirOperationSetOperands(nest.0, operands.len() as isize, operands.as_ptr()) };
        let e = split_sums(&context, &mut module).unwrap_err();
        assert!(e.diagnostics[0].contains("are not three per induction variable"), "{e}");
        // A loop without bounds or body, built in the generic form, first in a nest.
        let mut module = parse(&context, MATMUL).unwrap();
        let sum = first_named(&module, "scf.for");
        let body = sum.block().unwrap();
        body.insert_before(sum, OperationBuilder::new("scf.for", location).build().unwrap());
        let e = split_sums(&context, &mut module).unwrap_err();
        assert!(e.diagnostics[0].contains("a loop whose operands are not its bounds"), "{e}");
        // A qualifying loop whose body ends in a yield of nothing.
        let mut module = parse(&context, MATMUL).unwrap();
        let old = first_named(&module, "scf.yield");
        let block = old.block().unwrap();
        block.insert_before(old, OperationBuilder::new("scf.yield", location).build().unwrap());
        // SAFETY: the old yield, which has no results, is removed from its block and destroyed.
        unsafe {
            mlir_sys::mlirOperationRemoveFromParent(old.0);
            mlir_sys::mlirOperationDestroy(old.0);
        }
        let e = split_sums(&context, &mut module).unwrap_err();
        assert!(e.diagnostics[0].contains("does not end in a yield of one value"), "{e}");
    }
}
