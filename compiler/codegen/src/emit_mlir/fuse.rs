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
//! Readers that can take fused operands are elementwise math and reductions. In the function
//! body, ops are each outlined into a function of their own, except that a matmul's bias is
//! added by the matmul kernel itself ([`bias_epilogues`]) and that a reduction over the last
//! axis and the elementwise math around it run row by row in one loop ([`row_groups`]).

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
pub(crate) fn readers(g: &Graph) -> Vec<Vec<ValueId>> {
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

/// The function body's `x @ transpose(w) + b` (a Linear with a bias; or `x @ w + b` with `w`
/// packed, stored `[in, out]`), keyed by the add: the
/// matmul and the bias `b: [N]`. The matmul kernel (packed or dot-product) then adds its first
/// block of `K` to the bias instead of to zero, which saves a pass over the result; the matmul
/// must have no other reader (nor be an output), and the add must not broadcast it.
pub(super) fn bias_epilogues(
    g: &Graph,
    regions: &[Option<ValueId>],
    readers: &[Vec<ValueId>],
    packing: &[Option<lmc_abi::Packing>],
) -> HashMap<ValueId, (ValueId, ValueId)> {
    let outputs: HashSet<ValueId> = g.outputs.iter().map(|(_, v)| *v).collect();
    let mut fused = HashMap::new();
    for (i, node) in g.nodes.iter().enumerate() {
        let m = ValueId(i as u32);
        let Op::MatMul { rhs, .. } = node.op else { continue };
        // The kernels that take a bias: the dot tile (`transpose(w)`) and the packed one.
        let transposed = match g.node(rhs).op {
            Op::Transpose { x } => g.ty(x).rank() == 2,
            Op::Param(i) => packing.get(i).copied().flatten().is_some(),
            _ => false,
        };
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

/// The function body's groups of ops that run row by row in one loop nest: a reduction over the
/// last axis, the elementwise math around it and the elementwise op that reads them all (a
/// normalisation, with the residual add before it), tiled into one parallel loop over rows
/// where each op was a loop, and a pass over memory, of its own. See [`row_groups`].
#[derive(Default)]
pub(super) struct RowGroups {
    /// Each group's ops but its last (its root), in node order, keyed by the root.
    pub members: HashMap<ValueId, Vec<ValueId>>,
    /// Every group's members but the roots: the ops emitted by their group's root.
    pub grouped: HashSet<ValueId>,
    /// Members computed inside the loop nests of the members that read them (elementwise ops
    /// read element for element, or by a reduction), instead of into a temporary of their own.
    pub inlined: HashSet<ValueId>,
}

/// The row groups of the function body. Every op of a group is elementwise math whose type is
/// `[rows..., n]` or `[rows..., 1]` for the root's `[rows..., n]` (the same leading axes), or a
/// reduction of the last axis that keeps it; its readers are all in the group, and it is not
/// an output. The last axis is the one a row's loop walks; the leading ones are what the
/// group's loop is parallel over (the schedule tiles the root and fuses the others into it),
/// so a member may read anything from outside the group, broadcasting as it likes.
///
/// Found from the last node back: a node not yet in a group that could be a root starts one,
/// which takes in the operands that qualify, in decreasing node order, so that every reader of
/// an operand (a later node) has been decided before it. A root that takes in nothing stays an
/// op of its own. `excluded`: nodes computed elsewhere (a matmul's bias add).
pub(super) fn row_groups(g: &Graph, regions: &[Option<ValueId>], readers: &[Vec<ValueId>], excluded: &HashSet<ValueId>) -> RowGroups {
    let outputs: HashSet<ValueId> = g.outputs.iter().map(|(_, v)| *v).collect();
    let mut groups = RowGroups::default();
    for root in (0..g.nodes.len()).rev().map(|i| ValueId(i as u32)) {
        if groups.grouped.contains(&root) || regions[root.0 as usize].is_some() || excluded.contains(&root) {
            continue;
        }
        let rt = g.ty(root);
        if !is_elementwise(&g.node(root).op) || rt.rank() < 2 || rt.dtype != lmc_abi::DType::F32 {
            continue;
        }
        let leading = &rt.dims[..rt.rank() - 1];
        let row = rt.dims[rt.rank() - 1];
        let mut members: HashSet<ValueId> = HashSet::from([root]);
        let mut pending: std::collections::BTreeSet<ValueId> = g.node(root).op.operands().into_iter().collect();
        // Each operand is decided once: an op's operands are earlier nodes, so once `o` is
        // taken off, nothing taken in later can read it.
        while let Some(o) = pending.pop_last() {
            let (i, ot) = (o.0 as usize, g.ty(o));
            let node = &g.node(o).op;
            let shaped = ot.rank() == rt.rank()
                && ot.dtype == lmc_abi::DType::F32
                && &ot.dims[..ot.rank() - 1] == leading
                && (ot.dims[ot.rank() - 1] == row || ot.dims[ot.rank() - 1] == Dim::Static(1));
            let row_op = match node {
                op if is_elementwise(op) => true,
                Op::Reduce { x, axis, keepdim, .. } => *keepdim && *axis + 1 == g.ty(*x).rank() && ot.dims[ot.rank() - 1] == Dim::Static(1),
                _ => false,
            };
            let free = regions[i].is_none()
                && !excluded.contains(&o)
                && !outputs.contains(&o)
                && !groups.grouped.contains(&o)
                && !readers[i].is_empty()
                && readers[i].iter().all(|r| members.contains(r));
            if shaped && row_op && free {
                members.insert(o);
                pending.extend(node.operands());
            }
        }
        if members.len() < 2 {
            continue;
        }
        let mut ordered: Vec<ValueId> = members.iter().copied().filter(|&m| m != root).collect();
        ordered.sort_unstable();
        for &m in &ordered {
            groups.grouped.insert(m);
            let inline_everywhere = is_elementwise(&g.node(m).op)
                && readers[m.0 as usize].iter().all(|&r| match &g.node(r).op {
                    Op::Reduce { x, .. } => *x == m,
                    op => is_elementwise(op) && g.ty(r).dims == g.ty(m).dims,
                });
            if inline_everywhere {
                groups.inlined.insert(m);
            }
        }
        groups.members.insert(root, ordered);
    }
    groups
}
