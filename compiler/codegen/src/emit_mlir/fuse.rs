//! Which ops of a scan body are computed inside the loop nest of the op that reads them, so
//! that a step's chain of elementwise math is one pass over the state instead of one pass, and
//! one temporary, per op.
//!
//! An op is fused into its reader when recomputing it there costs nothing extra:
//! - elementwise math (`Binary`, `Unary`, `ToFloat`) read by exactly one op, element for
//!   element (no broadcasting: a value stretched over an axis would be recomputed along it);
//! - views, index functions that only read another value at their indices (`unsqueeze`), read
//!   by any number of ops: each reader reads the underlying value directly.
//!
//! Readers that can take fused operands are elementwise math and reductions. Only scan bodies
//! are fused: the function body's ops are each outlined into a function of their own, except
//! that a matmul's bias is added by the matmul kernel itself ([`bias_epilogues`]).

use lmc_core::ir::{BinaryOp, Dim, Graph, Op, ScalarFn, ScalarNode, ValueId};
use std::collections::{HashMap, HashSet};

/// For a view: the index of the view's axis that each axis of the value it reads is read at,
/// or `None` for an axis of length 1 read at 0.
pub(super) fn view_axes(g: &Graph, id: ValueId) -> Option<(ValueId, Vec<Option<usize>>)> {
    let Op::Tabulate { f } = &g.node(id).op else {
        return None;
    };
    let ScalarNode::Load { tensor, indices } = &f.nodes[f.result].0 else {
        return None;
    };
    let out = &g.ty(id).dims;
    let tt = g.ty(*tensor);
    let mut axes = Vec::new();
    for (j, &i) in indices.iter().enumerate() {
        let ScalarNode::Param(p) = f.nodes[i].0 else {
            return None;
        };
        if tt.dims[j] == out[p] {
            axes.push(Some(p));
        } else if tt.dims[j] == Dim::Static(1) {
            axes.push(None); // clamped to 0
        } else {
            return None;
        }
    }
    (tt.dtype == g.ty(id).dtype).then_some((*tensor, axes))
}

fn is_elementwise(op: &Op) -> bool {
    matches!(op, Op::Binary { .. } | Op::Unary { .. } | Op::ToFloat { .. })
}

/// Whether op `user` computes its operand `operand` inside its own loop nest. Both must be
/// direct nodes of the same scan body (`regions`: [`Graph::enclosing_scans`]); `uses` counts
/// every read of each value.
pub(super) fn fused_into(g: &Graph, regions: &[Option<ValueId>], uses: &[usize], user: ValueId, operand: ValueId) -> bool {
    let (u, o) = (user.0 as usize, operand.0 as usize);
    if regions[u].is_none() || regions[u] != regions[o] || g.ty(operand).rank() == 0 {
        return false;
    }
    let user_node = g.node(user);
    let space = match &user_node.op {
        Op::Binary { .. } | Op::Unary { .. } | Op::ToFloat { .. } => &user_node.ty,
        Op::Reduce { x, .. } => g.ty(*x),
        _ => return false,
    };
    if space.rank() == 0 {
        return false;
    }
    if view_axes(g, operand).is_some() {
        return true;
    }
    is_elementwise(&g.node(operand).op) && uses[o] == 1 && g.ty(operand).dims == space.dims
}

/// The readers of each value, one entry per read (by ops, every load of an index function,
/// scans' states and outputs): a value's use count is its number of entries.
pub(super) fn readers(g: &Graph) -> Vec<Vec<ValueId>> {
    let mut readers: Vec<Vec<ValueId>> = vec![Vec::new(); g.nodes.len()];
    for (i, node) in g.nodes.iter().enumerate() {
        let reads = match &node.op {
            // Every load counts: `f.tensors()` merges repeated reads.
            Op::Tabulate { f } => loads(f),
            op => op.operands(),
        };
        for r in reads {
            readers[r.0 as usize].push(ValueId(i as u32));
        }
    }
    readers
}

fn loads(f: &ScalarFn) -> Vec<ValueId> {
    f.nodes
        .iter()
        .filter_map(|(n, _)| match n {
            ScalarNode::Load { tensor, .. } => Some(*tensor),
            _ => None,
        })
        .collect()
}

/// The scan-body nodes that are not emitted on their own: every read of them is fused.
pub(super) fn fully_fused(g: &Graph, regions: &[Option<ValueId>], uses: &[usize], readers: &[Vec<ValueId>]) -> HashSet<ValueId> {
    (0..g.nodes.len())
        .map(|i| ValueId(i as u32))
        .filter(|&id| {
            let rs = &readers[id.0 as usize];
            regions[id.0 as usize].is_some() && !rs.is_empty() && rs.iter().all(|&r| fused_into(g, regions, uses, r, id))
        })
        .collect()
}

/// The function body's `x @ transpose(w) + b` (a Linear with a bias), keyed by the add: the
/// matmul and the bias `b: [N]`. The matmul kernel (packed or dot-product) then adds its first
/// block of `K` to the bias instead of to zero, which saves a pass over the result; the matmul
/// must have no other reader (nor be an output), and the add must not broadcast it.
pub(super) fn bias_epilogues(g: &Graph, regions: &[Option<ValueId>], readers: &[Vec<ValueId>]) -> HashMap<ValueId, (ValueId, ValueId)> {
    let outputs: HashSet<ValueId> = g.outputs.iter().map(|(_, v)| *v).collect();
    let mut fused = HashMap::new();
    for (i, node) in g.nodes.iter().enumerate() {
        let m = ValueId(i as u32);
        let Op::MatMul { rhs, .. } = node.op else { continue };
        let transposed = matches!(g.node(rhs).op, Op::Transpose { x } if g.ty(x).rank() == 2);
        let [add] = readers[i].as_slice() else { continue };
        if !transposed || regions[i].is_some() || regions[add.0 as usize].is_some() || outputs.contains(&m) {
            continue;
        }
        let Op::Binary {
            op: BinaryOp::Add,
            lhs,
            rhs,
        } = g.node(*add).op
        else {
            continue;
        };
        let bias = if lhs == m { rhs } else { lhs };
        let (bt, mt) = (g.ty(bias), g.ty(m));
        if bias != m && bt.rank() == 1 && bt.dtype == mt.dtype && bt.dims.last() == mt.dims.last() && g.ty(*add).dims == mt.dims {
            fused.insert(*add, (m, bias));
        }
    }
    fused
}
