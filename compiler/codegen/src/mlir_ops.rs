//! Handles on the operations, values and blocks of a module that a rewrite of MLIR operations
//! walks and changes (the GPU lowering's fusion and split sums): small copies of MLIR's C handles
//! with the few queries and edits the rewrites need, each C call with its reason for being safe.

use crate::mlir_pipeline::MlirError;
use melior::ir::attribute::{Attribute, AttributeLike, FloatAttribute, IntegerAttribute};
use melior::ir::operation::{OperationLike, OperationRef, WalkOrder, WalkResult};
use melior::ir::{Location, Module, Type, TypeLike, Value, ValueLike};
use mlir_sys::{MlirBlock, MlirOperation, MlirValue};

/// An operation of the module that a rewrite borrows mutably. Rewrites make these only from that
/// module's operations and use none after destroying it, so every one they use is alive.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Op(pub(crate) MlirOperation);

impl PartialEq for Op {
    fn eq(&self, other: &Op) -> bool {
        self.0.ptr == other.0.ptr
    }
}

/// A value of the module a rewrite borrows, alive like an [`Op`].
#[derive(Clone, Copy, Debug)]
pub(crate) struct Val(pub(crate) MlirValue);

impl PartialEq for Val {
    fn eq(&self, other: &Val) -> bool {
        self.0.ptr == other.0.ptr
    }
}

/// A block of the module a rewrite borrows, alive like an [`Op`].
#[derive(Clone, Copy, Debug)]
pub(crate) struct Blk(pub(crate) MlirBlock);

impl PartialEq for Blk {
    fn eq(&self, other: &Blk) -> bool {
        self.0.ptr == other.0.ptr
    }
}

/// Null handles (no operation, no block) as `None`.
pub(crate) fn op_or_none(raw: MlirOperation) -> Option<Op> {
    (!raw.ptr.is_null()).then_some(Op(raw))
}

pub(crate) fn block_or_none(raw: MlirBlock) -> Option<Blk> {
    (!raw.ptr.is_null()).then_some(Blk(raw))
}

/// The module's operations (the module's own included) in `order`.
pub(crate) fn operations(module: &Module, order: WalkOrder) -> Vec<Op> {
    let mut found = Vec::new();
    module.as_operation().walk(order, |op| {
        found.push(Op(op.to_raw()));
        WalkResult::Advance
    });
    found
}

/// The blocks of the module's operations' regions, with the operations in `order`: post-order
/// gives every block after the blocks nested in it.
pub(crate) fn blocks(module: &Module, order: WalkOrder) -> Vec<Blk> {
    operations(module, order).into_iter().flat_map(Op::blocks).collect()
}

impl Op {
    pub(crate) fn get<'c, 'a>(self) -> OperationRef<'c, 'a> {
        // SAFETY: a live operation (see `Op`).
        unsafe { OperationRef::from_raw(self.0) }
    }

    pub(crate) fn is(self, name: &str) -> bool {
        self.get().name().as_string_ref().as_str() == Ok(name)
    }

    pub(crate) fn operands(self) -> Vec<Val> {
        self.get().operands().map(|v| Val(v.to_raw())).collect()
    }

    pub(crate) fn result(self, k: usize) -> Result<Val, MlirError> {
        let result = self.get().result(k).map_err(|e| MlirError {
            stage: "rewriting MLIR operations",
            diagnostics: vec![format!("{e}: {}", self.get())],
        })?;
        Ok(Val(result.to_raw()))
    }

    pub(crate) fn location<'c>(self) -> Location<'c> {
        self.get::<'c, '_>().location()
    }

    /// The operation's one block, if it has exactly one.
    pub(crate) fn only_block(self) -> Option<Blk> {
        match self.blocks().as_slice() {
            [block] => Some(*block),
            _ => None,
        }
    }

    /// Sets operand `k` to `value`.
    pub(crate) fn set_operand(self, k: usize, value: Val) {
        // SAFETY: a live operation and value; each call's reason that `k` is an operand, and that
        // `value` has its type and dominates the operation, is at the call.
        unsafe { mlir_sys::mlirOperationSetOperand(self.0, k as isize, value.0) }
    }

    pub(crate) fn result_count(self) -> usize {
        self.get().result_count()
    }

    pub(crate) fn region_count(self) -> usize {
        self.get().region_count()
    }

    pub(crate) fn block(self) -> Option<Blk> {
        // SAFETY: reads a live operation's block.
        block_or_none(unsafe { mlir_sys::mlirOperationGetBlock(self.0) })
    }

    pub(crate) fn next(self) -> Option<Op> {
        // SAFETY: reads a live operation's successor in its block.
        op_or_none(unsafe { mlir_sys::mlirOperationGetNextInBlock(self.0) })
    }

    pub(crate) fn parent(self) -> Option<Op> {
        // SAFETY: reads a live operation's parent.
        op_or_none(unsafe { mlir_sys::mlirOperationGetParentOperation(self.0) })
    }

    /// Whether `ancestor` holds this operation in one of its regions, at any depth.
    pub(crate) fn is_inside(self, ancestor: Op) -> bool {
        std::iter::successors(self.parent(), |op| op.parent()).any(|op| op == ancestor)
    }

    /// Whether this operation comes before `other` in their block.
    pub(crate) fn is_before(self, other: Op) -> bool {
        // SAFETY: reads two live operations of one block.
        unsafe { mlir_sys::mlirOperationIsBeforeInBlock(self.0, other.0) }
    }

    /// The blocks of the operation's regions, in order.
    pub(crate) fn blocks(self) -> Vec<Blk> {
        let mut found = Vec::new();
        // SAFETY: reads a live operation's regions and their blocks.
        unsafe {
            for k in 0..mlir_sys::mlirOperationGetNumRegions(self.0) {
                let region = mlir_sys::mlirOperationGetRegion(self.0, k);
                let mut block = block_or_none(mlir_sys::mlirRegionGetFirstBlock(region));
                while let Some(b) = block {
                    found.push(b);
                    block = block_or_none(mlir_sys::mlirBlockGetNextInRegion(b.0));
                }
            }
        }
        found
    }

    /// Moves the operation to just after `other`, in `other`'s block.
    pub(crate) fn move_after(self, other: Op) {
        // SAFETY: two live operations; `other` is in a block, which the moved operation joins.
        unsafe { mlir_sys::mlirOperationMoveAfter(self.0, other.0) }
    }

    /// Moves the operation to just before `other`, in `other`'s block.
    pub(crate) fn move_before(self, other: Op) {
        // SAFETY: as in `move_after`.
        unsafe { mlir_sys::mlirOperationMoveBefore(self.0, other.0) }
    }

    /// Removes the operation from its block and destroys it; an error, changing nothing, while
    /// any of its results is used.
    pub(crate) fn erase(self) -> Result<(), &'static str> {
        for k in 0..self.result_count() {
            if !self.result(k).map_err(|_| "a result that is not there")?.users().is_empty() {
                return Err("removing an operation whose result is still used");
            }
        }
        // SAFETY: a live operation whose results nothing uses; removed from its block first, it
        // is ours to destroy, and no `Op` of it is used afterwards.
        unsafe {
            mlir_sys::mlirOperationRemoveFromParent(self.0);
            mlir_sys::mlirOperationDestroy(self.0);
        }
        Ok(())
    }
}

impl Val {
    pub(crate) fn get<'c, 'a>(self) -> Value<'c, 'a> {
        // SAFETY: a live value (see `Val`).
        unsafe { Value::from_raw(self.0) }
    }

    pub(crate) fn r#type<'c>(self) -> Type<'c> {
        self.get::<'c, '_>().r#type()
    }

    /// The operations that use the value, each with the operand it is (once per use).
    pub(crate) fn users(self) -> Vec<(Op, usize)> {
        let mut found = Vec::new();
        // SAFETY: reads a live value's uses.
        unsafe {
            let mut operand = mlir_sys::mlirValueGetFirstUse(self.0);
            while !mlir_sys::mlirOpOperandIsNull(operand) {
                found.push((
                    Op(mlir_sys::mlirOpOperandGetOwner(operand)),
                    mlir_sys::mlirOpOperandGetOperandNumber(operand) as usize,
                ));
                operand = mlir_sys::mlirOpOperandGetNextUse(operand);
            }
        }
        found
    }

    /// The operation whose result the value is (none for a block argument).
    pub(crate) fn defining_op(self) -> Option<Op> {
        // SAFETY: reads a live value's owner, once it is known to be an operation's result.
        unsafe { mlir_sys::mlirValueIsAOpResult(self.0).then(|| Op(mlir_sys::mlirOpResultGetOwner(self.0))) }
    }

    /// The value's `arith.constant` attribute, if it is one's result.
    pub(crate) fn constant<'c>(self) -> Option<Attribute<'c>> {
        let op = self.defining_op().filter(|op| op.is("arith.constant"))?;
        op.get::<'c, '_>().attribute("value").ok()
    }

    /// The value as an `index` constant.
    pub(crate) fn index_constant(self) -> Option<i64> {
        let value = self.constant()?;
        value
            .r#type()
            .is_index()
            .then(|| IntegerAttribute::try_from(value).ok())
            .flatten()
            .map(|v| v.value())
    }

    /// Whether the value is the `f32` constant +0.0.
    pub(crate) fn is_f32_zero(self) -> bool {
        self.constant().is_some_and(|value| {
            value.r#type().is_f32() && FloatAttribute::try_from(value).is_ok_and(|v| v.value() == 0.0 && v.value().is_sign_positive())
        })
    }

    pub(crate) fn replace_uses_with(self, other: Val) {
        // SAFETY: two live values of the same type; `other` dominates the uses it takes over
        // (each rewrite's reason is at its call).
        unsafe { mlir_sys::mlirValueReplaceAllUsesOfWith(self.0, other.0) }
    }
}

impl Blk {
    pub(crate) fn first(self) -> Option<Op> {
        // SAFETY: reads a live block's first operation.
        op_or_none(unsafe { mlir_sys::mlirBlockGetFirstOperation(self.0) })
    }

    pub(crate) fn ops(self) -> Vec<Op> {
        std::iter::successors(self.first(), |op| op.next()).collect()
    }

    pub(crate) fn argument(self, k: usize) -> Option<Val> {
        // SAFETY: reads a live block's argument, once `k` is known to be one.
        unsafe {
            (k < mlir_sys::mlirBlockGetNumArguments(self.0) as usize).then(|| Val(mlir_sys::mlirBlockGetArgument(self.0, k as isize)))
        }
    }

    /// Adds an argument of type `r#type` after the block's arguments.
    pub(crate) fn add_argument(self, r#type: Type, location: Location) -> Val {
        // SAFETY: a live block; the type and location are of its context.
        Val(unsafe { mlir_sys::mlirBlockAddArgument(self.0, r#type.to_raw(), location.to_raw()) })
    }

    pub(crate) fn arguments(self) -> Vec<Val> {
        // SAFETY: reads a live block's arguments, `0..` their count.
        unsafe {
            (0..mlir_sys::mlirBlockGetNumArguments(self.0))
                .map(|k| Val(mlir_sys::mlirBlockGetArgument(self.0, k)))
                .collect()
        }
    }

    /// Inserts `op` before `before`, an operation of this block.
    pub(crate) fn insert_before(self, before: Op, op: melior::ir::Operation) -> Op {
        let op = op.into_raw();
        // SAFETY: `op` is owned here and given to the live block, which owns it from now on;
        // each call's `before` is an operation of the block.
        unsafe { mlir_sys::mlirBlockInsertOwnedOperationBefore(self.0, before.0, op) };
        Op(op)
    }

    /// Inserts `op` after `after`, an operation of this block.
    pub(crate) fn insert_after(self, after: Op, op: melior::ir::Operation) -> Op {
        let op = op.into_raw();
        // SAFETY: as in `insert_before`.
        unsafe { mlir_sys::mlirBlockInsertOwnedOperationAfter(self.0, after.0, op) };
        Op(op)
    }

    /// Appends `op` to the block.
    pub(crate) fn append(self, op: melior::ir::Operation) -> Op {
        let op = op.into_raw();
        // SAFETY: `op` is owned here and given to the live block, which owns it from now on.
        unsafe { mlir_sys::mlirBlockAppendOwnedOperation(self.0, op) };
        Op(op)
    }
}

/// What the rewrites' unit tests share: a module parsed from text, rewritten, verified, printed.
#[cfg(test)]
pub(crate) mod testing {
    use crate::mlir_pipeline::{new_context, parse, MlirError};
    use melior::ir::operation::OperationLike;
    use melior::ir::Module;
    use melior::Context;

    /// `text` parsed, rewritten by `f`, verified and printed.
    pub(crate) fn rewritten(text: &str, f: impl FnOnce(&Context, &mut Module) -> Result<(), MlirError>) -> String {
        let context = new_context();
        let mut module = parse(&context, text).unwrap_or_else(|e| panic!("{e}"));
        f(&context, &mut module).unwrap_or_else(|e| panic!("{e}"));
        assert!(module.as_operation().verify(), "the rewritten module does not verify");
        module.as_operation().to_string()
    }

    /// `text` as MLIR prints it, for comparing with a rewrite that changed nothing.
    pub(crate) fn printed(text: &str) -> String {
        let context = new_context();
        let module = parse(&context, text).unwrap_or_else(|e| panic!("{e}"));
        module.as_operation().to_string()
    }
}
