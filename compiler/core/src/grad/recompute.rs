//! Which forward values the backward recomputes instead of keeping.
//!
//! A backward rule reads forward values (a product's other factor, `tanh`'s result), and each
//! one read stays in memory from the forward until its last adjoint is done. For a chain of
//! elementwise math (GELU's tanh form is six ops on `[B, T, 3072]` per layer; the loss's
//! `exp(logits - max)` is `[B, T, vocab]`) that is one buffer per op per layer. Instead, a
//! cheap value the backward reads is computed again just before its first backward use, from
//! the values it was computed from: the forward frees its buffer right after its forward user,
//! and the copy lives only while that layer's backward runs. This trades a pass over memory per
//! recomputed op for the buffers kept (the recomputed ops are the forward's elementwise passes
//! again, once).
//!
//! A value is recomputed when it is pointwise (elementwise math, an index function, a
//! transpose) at the top level (not in a scan body), not an output, and read by at most one
//! forward op: what it is computed from is then kept anyway (a matmul's result, a reduction, a
//! value with several readers such as the residual stream) or recomputed in turn, so no chain of
//! recomputation reaches back further than the values kept, and each op is recomputed at most
//! once.

use crate::ir::*;

/// `g` (the forward's `forward_len` nodes, then the backward's) with the backward's reads of
/// recomputable forward values redirected to copies made right before their first backward
/// use. Scans and the ops inside scan bodies keep reading the forward's values.
pub(super) fn recompute_in_backward(mut g: Graph, forward_len: usize) -> Graph {
    let regions = g.enclosing_scans();
    let mut forward_readers = vec![0usize; forward_len];
    for node in &g.nodes[..forward_len] {
        for o in node.op.operands() {
            forward_readers[o.0 as usize] += 1;
        }
    }
    let mut is_output = vec![false; g.nodes.len()];
    for (_, v) in &g.outputs {
        is_output[v.0 as usize] = true;
    }
    let recomputable: Vec<bool> = (0..forward_len)
        .map(|i| {
            let node = &g.nodes[i];
            regions[i].is_none()
                && !is_output[i]
                && forward_readers[i] <= 1
                && node.ty.rank() > 0
                && matches!(
                    node.op,
                    Op::Binary { .. } | Op::Unary { .. } | Op::ToFloat { .. } | Op::Tabulate { .. } | Op::Transpose { .. }
                )
        })
        .collect();
    if !recomputable.iter().any(|&r| r) {
        return g;
    }
    // The nodes and outputs are read while the new graph is built; the rest moves into it.
    let (nodes, outputs) = (std::mem::take(&mut g.nodes), std::mem::take(&mut g.outputs));
    let mut out = Graph {
        nodes: nodes[..forward_len].to_vec(),
        outputs: Vec::new(),
        ..g
    };
    // Old id → new id: `plain` for the forward's own values, `recomputed` with each
    // recomputable forward value replaced by its copy once one is made.
    let mut plain: Vec<ValueId> = (0..nodes.len() as u32).map(ValueId).collect();
    let mut recomputed = plain.clone();
    let mut made = vec![false; forward_len];
    for j in forward_len..nodes.len() {
        let node = &nodes[j];
        let reads_forward_copies = regions[j].is_none() && !matches!(node.op, Op::Scan(_) | Op::ScanResult { .. });
        let op = if reads_forward_copies {
            for o in node.op.operands() {
                copy(&nodes, &recomputable, &mut made, &mut recomputed, &mut out, o);
            }
            node.op.remapped(&recomputed)
        } else {
            node.op.remapped(&plain)
        };
        out.nodes.push(Node {
            op,
            ty: node.ty.clone(),
            loc: node.loc,
        });
        let id = ValueId(out.nodes.len() as u32 - 1);
        plain[j] = id;
        recomputed[j] = id;
    }
    out.outputs = outputs.iter().map(|(d, v)| (d.clone(), plain[v.0 as usize])).collect();
    out
}

/// Makes the copy of forward value `v` (and first of the recomputable values it reads) if `v`
/// is recomputable and has none yet.
fn copy(nodes: &[Node], recomputable: &[bool], made: &mut [bool], recomputed: &mut [ValueId], out: &mut Graph, v: ValueId) {
    let i = v.0 as usize;
    if i >= recomputable.len() || !recomputable[i] || made[i] {
        return;
    }
    made[i] = true;
    let node = &nodes[i];
    for o in node.op.operands() {
        copy(nodes, recomputable, made, recomputed, out, o);
    }
    out.nodes.push(Node {
        op: node.op.remapped(recomputed),
        ty: node.ty.clone(),
        loc: node.loc,
    });
    recomputed[i] = ValueId(out.nodes.len() as u32 - 1);
}

/// `g` without the top-level nodes nothing reads: forward values whose only reader was the
/// backward (which now reads a copy), stretched copies the backward read through broadcasting
/// instead. Parameters, inputs, scans and everything in a scan body stay.
pub(super) fn without_unused(g: Graph) -> Graph {
    let regions = g.enclosing_scans();
    let mut used = vec![false; g.nodes.len()];
    for (_, v) in &g.outputs {
        used[v.0 as usize] = true;
    }
    for i in (0..g.nodes.len()).rev() {
        let node = &g.nodes[i];
        let structural = regions[i].is_some()
            || matches!(
                node.op,
                Op::Param(_) | Op::Input(_) | Op::Carry(_) | Op::Scan(_) | Op::ScanArg(_) | Op::ScanResult { .. }
            );
        if structural || used[i] {
            used[i] = true;
            for o in node.op.operands() {
                used[o.0 as usize] = true;
            }
        }
    }
    if used.iter().all(|&u| u) {
        return g;
    }
    let mut new_id = vec![ValueId(0); g.nodes.len()];
    let mut nodes = Vec::with_capacity(g.nodes.len());
    for (i, node) in g.nodes.iter().enumerate() {
        if used[i] {
            nodes.push(Node {
                op: node.op.remapped(&new_id),
                ty: node.ty.clone(),
                loc: node.loc,
            });
            new_id[i] = ValueId(nodes.len() as u32 - 1);
        }
    }
    Graph {
        outputs: g.outputs.iter().map(|(d, v)| (d.clone(), new_id[v.0 as usize])).collect(),
        nodes,
        ..g
    }
}
