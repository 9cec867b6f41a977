//! What a model costs, read off its checked IR: parameter counts and floating-point operations
//! for given sizes of its symbolic dimensions. `lmc ab` reports these beside what it measures.
//!
//! FLOPs count arithmetic on tensor elements, a multiply-add as two: `matmul` `2·M·K·N`,
//! attention `2·T·S·(D + E)` per batch and head for the two products plus five per score
//! (scale, mask or score function, max, exp, normalise), one per element for elementwise ops and
//! reductions, and the scalar operations of an index function once per element it computes.
//! Data movement (gather, slices, head splits, transposes) costs nothing. A scan costs its body
//! once per step.

use crate::ir::{Dim, Graph, Op, ScalarFn, ScalarNode, ValueId};

/// Parameter counts, in elements.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ParamCounts {
    pub total: u64,
    /// Parameters read as embedding tables (by a gather): token, position and segment tables.
    pub embedding: u64,
}

/// Counts a model's parameters; a table that is also an output head counts as embedding.
pub fn param_counts(g: &Graph) -> ParamCounts {
    let elements = |i: usize| -> u64 {
        g.params[i]
            .ty
            .dims
            .iter()
            .map(|d| match d {
                Dim::Static(n) => *n as u64,
                Dim::Symbol(_) => 0,
            })
            .product()
    };
    let mut is_table = vec![false; g.params.len()];
    for node in &g.nodes {
        if let Op::Gather { table, .. } = node.op {
            if let Op::Param(i) = g.node(table).op {
                is_table[i] = true;
            }
        }
    }
    let total = (0..g.params.len()).map(elements).sum();
    let embedding = (0..g.params.len()).filter(|i| is_table[*i]).map(elements).sum();
    ParamCounts { total, embedding }
}

/// Floating-point operations of one forward call, with `symbols[k]` the size of symbol k.
pub fn flops(g: &Graph, symbols: &[u64]) -> f64 {
    let regions = g.enclosing_scans();
    (0..g.nodes.len())
        .filter(|i| regions[*i].is_none())
        .map(|i| node_flops(g, symbols, &regions, i))
        .sum()
}

fn node_flops(g: &Graph, symbols: &[u64], regions: &[Option<ValueId>], i: usize) -> f64 {
    let size = |d: Dim| -> f64 {
        match d {
            Dim::Static(n) => n as f64,
            Dim::Symbol(s) => symbols.get(s.0 as usize).copied().unwrap_or(1) as f64,
        }
    };
    let elements = |id: ValueId| -> f64 { g.ty(id).dims.iter().map(|d| size(*d)).product() };
    let this = ValueId(i as u32);
    match &g.nodes[i].op {
        Op::Binary { .. } | Op::Unary { .. } => elements(this),
        Op::Reduce { x, .. } => elements(*x),
        Op::MatMul { lhs, .. } => {
            let k = g.ty(*lhs).dims.last().map_or(1.0, |d| size(*d));
            2.0 * elements(this) * k
        }
        Op::Attention { q, k, v, mask, score, .. } => {
            let (q, k, v) = (g.ty(*q), g.ty(*k), g.ty(*v));
            let scores = size(q.dims[0]) * size(q.dims[1]) * size(q.dims[2]) * size(k.dims[2]);
            let functions = mask.iter().chain(score.iter()).map(arithmetic).sum::<usize>() as f64;
            scores * (2.0 * (size(q.dims[3]) + size(v.dims[3])) + 5.0 + functions)
        }
        Op::MatMulTN { lhs, rhs } => {
            let n = g.ty(*rhs).dims.last().map_or(1.0, |d| size(*d));
            2.0 * elements(*lhs) * n
        }
        Op::ScatterAdd { values, .. } => elements(*values),
        Op::AttentionLse { q, k, mask, score, .. } => {
            let (q, k) = (g.ty(*q), g.ty(*k));
            let scores = size(q.dims[0]) * size(q.dims[1]) * size(q.dims[2]) * size(k.dims[2]);
            let functions = mask.iter().chain(score.iter()).map(arithmetic).sum::<usize>() as f64;
            scores * (2.0 * size(q.dims[3]) + 3.0 + functions)
        }
        Op::AttentionGrad(a) => {
            let (q, k, v) = (g.ty(a.q), g.ty(a.k), g.ty(a.v));
            let scores = size(q.dims[0]) * size(q.dims[1]) * size(q.dims[2]) * size(k.dims[2]);
            let functions = a.functions().map(arithmetic).sum::<usize>() as f64;
            // Scores and probabilities again, `dout · v`, and the product the operand needs.
            let product = match a.wrt {
                crate::ir::AttentionInput::Value => size(v.dims[3]),
                crate::ir::AttentionInput::Score => 0.0,
                _ => size(q.dims[3]),
            };
            scores * (2.0 * (size(q.dims[3]) + size(v.dims[3]) + product) + 6.0 + functions)
        }
        Op::Tabulate { f } => elements(this) * arithmetic(f) as f64,
        Op::Scan(s) => {
            let steps = size(g.ty(s.xs[0]).dims[s.axis]);
            let body: f64 = (s.body_start.0 as usize..i)
                .filter(|j| regions[*j] == Some(this))
                .map(|j| node_flops(g, symbols, regions, j))
                .sum();
            steps * body
        }
        Op::Param(_)
        | Op::Input(_)
        | Op::Carry(_)
        | Op::Constant(_)
        | Op::Arange(_)
        | Op::Gather { .. }
        | Op::ToFloat { .. }
        | Op::SplitHeads { .. }
        | Op::MergeHeads { .. }
        | Op::Slice { .. }
        | Op::Concat { .. }
        | Op::WriteRows { .. }
        | Op::WriteRing { .. }
        | Op::Transpose { .. }
        | Op::ScanArg(_)
        | Op::ScanResult { .. } => 0.0,
    }
}

/// The arithmetic nodes of an index function (its parameters, constants and loads are free).
fn arithmetic(f: &ScalarFn) -> usize {
    f.nodes
        .iter()
        .filter(|(n, _)| matches!(n, ScalarNode::Binary { .. } | ScalarNode::Unary { .. } | ScalarNode::Select { .. }))
        .count()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ConfigOverrides;
    use crate::program::load_source;

    const FILE: &str = r#"
config C { d = 4  v = 10 }
model M(c: C) {
  param table: f32[c.v, c.d]
  param w: f32[c.d, 3]
  forward(ids: i64[B, T]) -> (y: f32[B, T, 3], s: f32[B, T, 3]) {
    x = gather(table, ids)
    y = x @ w
    s, last = scan(y_t in y, h = tabulate(B, 3, (b, i) => 0.0)) {
      h = h + y_t
      return h
    }
    return relu(y), s
  }
}
"#;

    #[test]
    fn counts_follow_the_shapes() {
        let p = load_source("m.model", FILE, None).unwrap();
        let g = crate::check_model(&p, Some("M"), &ConfigOverrides::default()).unwrap().graph;
        assert_eq!(param_counts(&g), ParamCounts { total: 52, embedding: 40 });
        // B = 2, T = 5: the matmul 2·(2·5·3)·4 = 240, relu 30, the scan's add 5 steps × 6 = 30.
        assert_eq!(flops(&g, &[2, 5]), 300.0);
        assert_eq!(flops(&g, &[4, 5]), 600.0);
    }
}
