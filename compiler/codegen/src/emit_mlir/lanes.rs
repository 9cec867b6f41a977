//! Lanes of a scan: an axis along which its recurrence is independent, so that it can run as
//! one loop over time per block of that axis (each block's state stays in cache, and blocks
//! run on different threads) instead of one loop over time whose every step sweeps all of it.
//!
//! An axis of a state is a lane when every op of the body maps element `i` along it to element
//! `i` of its operands along the matching axis: elementwise math and broadcasting, reductions
//! over other axes, index functions that read with that index unchanged. Matching axes are
//! found by unification over `(value, axis)` pairs; an axis that is reduced, sliced, scanned or
//! read at a computed index is mixed and cannot be a lane. A body with an op outside that set
//! (a matmul, a gather, a nested scan) has no lanes.

use lmc_core::ir::{Dim, Graph, Op, ScalarFn, ScalarNode, Scan, ValueId};
use std::collections::HashMap;

/// How a scan is split into blocks of lanes.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Lanes {
    /// The lane axis of every value that has one: body nodes, the values defined outside the
    /// body that it reads (the scanned tensors, the initial states, parameters, ...), and the
    /// scan's results.
    pub axis: HashMap<ValueId, usize>,
    /// The number of lanes.
    pub size: Dim,
    /// Lanes per block; it divides a static `size`, and is 1 for a symbolic one.
    pub block: i64,
}

/// The lanes of scan `id`, if it has any; `regions` is [`Graph::enclosing_scans`].
pub(super) fn plan(g: &Graph, id: ValueId, s: &Scan, regions: &[Option<ValueId>]) -> Option<Lanes> {
    let n = id.0 as usize;
    let start = s.body_start.0 as usize;
    let mut u = Unifier::default();
    for (i, region) in regions.iter().enumerate().take(n).skip(start) {
        if *region != Some(id) {
            return None; // a nested scan's body
        }
        let node_id = ValueId(i as u32);
        let node = g.node(node_id);
        match &node.op {
            Op::Constant(_) | Op::Param(_) => {}
            Op::ScanArg(k) if *k < s.init.len() => {
                let result = ValueId((n + 1 + s.outputs.len() + k) as u32);
                for d in 0..node.ty.rank() {
                    u.unify((node_id, d), (s.init[*k], d));
                    u.unify((node_id, d), (s.next[*k], d));
                    u.unify((node_id, d), (result, d));
                }
            }
            Op::ScanArg(k) => {
                let x = s.xs[k - s.init.len()];
                u.mix((x, s.axis));
                for d in 0..node.ty.rank() {
                    u.unify((node_id, d), (x, if d < s.axis { d } else { d + 1 }));
                }
            }
            Op::Binary { lhs, rhs, .. } => {
                for o in [*lhs, *rhs] {
                    let ot = g.ty(o);
                    let offset = node.ty.rank() - ot.rank();
                    for (j, d) in ot.dims.iter().enumerate() {
                        // A stretched axis of length 1 reads the same element for every lane.
                        if !(*d == Dim::Static(1) && node.ty.dims[j + offset] != Dim::Static(1)) {
                            u.unify((o, j), (node_id, j + offset));
                        }
                    }
                }
            }
            Op::Unary { x, .. } | Op::ToFloat { x } => {
                for d in 0..node.ty.rank() {
                    u.unify((*x, d), (node_id, d));
                }
            }
            Op::Reduce { x, axis, keepdim, .. } => {
                u.mix((*x, *axis));
                if *keepdim {
                    u.mix((node_id, *axis));
                }
                for j in (0..g.ty(*x).rank()).filter(|j| j != axis) {
                    let out = if *keepdim || j < *axis { j } else { j - 1 };
                    u.unify((*x, j), (node_id, out));
                }
            }
            Op::Slice { x, axis, .. } => {
                u.mix((*x, *axis));
                u.mix((node_id, *axis));
                for j in (0..node.ty.rank()).filter(|j| j != axis) {
                    u.unify((*x, j), (node_id, j));
                }
            }
            Op::Transpose { x } => {
                let r = node.ty.rank();
                for j in 0..r {
                    let to = if j == r - 1 {
                        r - 2
                    } else if j == r - 2 {
                        r - 1
                    } else {
                        j
                    };
                    u.unify((*x, j), (node_id, to));
                }
            }
            Op::Tabulate { f } => tabulate(g, node_id, f, &mut u),
            _ => return None,
        }
    }
    for (k, out) in s.outputs.iter().enumerate() {
        let result = ValueId((n + 1 + k) as u32);
        u.mix((result, s.axis));
        for d in 0..g.ty(*out).rank() {
            u.unify((*out, d), (result, if d < s.axis { d } else { d + 1 }));
        }
    }
    // Every state, every output and every result must have the lane axis (the emitter slices
    // each result by it): a candidate is an axis of the first.
    let must_have: Vec<ValueId> = (0..s.init.len())
        .map(|k| ValueId((start + k) as u32))
        .chain(s.outputs.iter().copied())
        .chain((0..s.result_count()).map(|k| ValueId((n + 1 + k) as u32)))
        .collect();
    let first = *must_have.first()?;
    let mut best: Option<(HashMap<ValueId, usize>, Dim)> = None;
    for d in 0..g.ty(first).rank() {
        let Some(class) = u.class_of((first, d)) else { continue };
        if u.mixed[class] {
            continue;
        }
        let size = g.ty(first).dims[d];
        if size == Dim::Static(1) {
            continue;
        }
        let mut axis = HashMap::new();
        let mut valid = true;
        for (&(value, dim), &key) in &u.keys {
            if u.find(key) == class {
                valid &= g.ty(value).dims[dim] == size && axis.insert(value, dim).is_none();
            }
        }
        valid &= must_have.iter().all(|v| axis.contains_key(v));
        if !valid {
            continue;
        }
        // Prefer many lanes: a static size over a symbolic one (a batch), then the larger.
        let better = match (best.as_ref().map(|b| b.1), size) {
            (None, _) => true,
            (Some(Dim::Symbol(_)), Dim::Static(_)) => true,
            (Some(Dim::Static(a)), Dim::Static(b)) => b > a,
            _ => false,
        };
        if better {
            best = Some((axis, size));
        }
    }
    let (axis, size) = best?;
    let block = match size {
        Dim::Static(lanes) => {
            let state_elements = s.init.iter().map(|i| g.ty(*i)).chain(s.outputs.iter().map(|o| g.ty(*o)));
            let per_lane = state_elements
                .map(|t| {
                    let all: i64 = t.dims.iter().map(|d| if let Dim::Static(k) = d { *k } else { 1 }).product();
                    all / lanes
                })
                .max()
                .unwrap_or(1);
            block_size(lanes, per_lane)
        }
        Dim::Symbol(_) => 1,
    };
    Some(Lanes { axis, size, block })
}

/// Lanes per block for `lanes` lanes of `per_lane` elements of state each: a divisor of
/// `lanes`, small enough that a block's states and temporaries stay in the first-level cache
/// (about 4096 elements per state) and that there are at least 16 blocks to share among
/// threads when there are enough lanes, preferring a multiple of the vector width.
fn block_size(lanes: i64, per_lane: i64) -> i64 {
    let cap = (4096 / per_lane.max(1)).min((lanes / 16).max(16)).max(1);
    (1..=cap.min(lanes))
        .filter(|d| lanes % d == 0)
        .max_by_key(|d| (d % 16 == 0, d % 8 == 0, *d))
        .unwrap_or(1)
}

/// An index function over the axes of `node`: an axis whose index is used only to read another
/// value at the same index, along an axis of the same length, matches that axis; any other use
/// (arithmetic, a comparison, a computed index) mixes it.
fn tabulate(g: &Graph, node: ValueId, f: &ScalarFn, u: &mut Unifier) {
    let param = |k: usize| match f.nodes[k].0 {
        ScalarNode::Param(p) => Some(p),
        _ => None,
    };
    let out_dims = &g.ty(node).dims;
    for (n, _) in &f.nodes {
        match n {
            ScalarNode::Load { tensor, indices } => {
                for (j, &i) in indices.iter().enumerate() {
                    match param(i) {
                        Some(p) if g.ty(*tensor).dims[j] == out_dims[p] => u.unify((*tensor, j), (node, p)),
                        Some(p) => {
                            u.mix((*tensor, j));
                            u.mix((node, p));
                        }
                        None => u.mix((*tensor, j)),
                    }
                }
            }
            ScalarNode::Unary { a, .. } => {
                if let Some(p) = param(*a) {
                    u.mix((node, p));
                }
            }
            ScalarNode::Binary { a, b, .. } => {
                for p in [*a, *b].into_iter().filter_map(param) {
                    u.mix((node, p));
                }
            }
            ScalarNode::Select { cond, a, b } => {
                for p in [*cond, *a, *b].into_iter().filter_map(param) {
                    u.mix((node, p));
                }
            }
            ScalarNode::Param(_) | ScalarNode::Int(_) | ScalarNode::F32(_) | ScalarNode::Bool(_) | ScalarNode::Symbol(_) => {}
        }
    }
    if let Some(p) = param(f.result) {
        u.mix((node, p));
    }
}

/// Union-find over `(value, axis)` pairs, with a "mixed" flag per class.
#[derive(Default)]
struct Unifier {
    keys: HashMap<(ValueId, usize), usize>,
    parent: Vec<usize>,
    mixed: Vec<bool>,
}

impl Unifier {
    fn key(&mut self, k: (ValueId, usize)) -> usize {
        let next = self.parent.len();
        let key = *self.keys.entry(k).or_insert(next);
        if key == next {
            self.parent.push(next);
            self.mixed.push(false);
        }
        key
    }

    fn find(&self, mut k: usize) -> usize {
        while self.parent[k] != k {
            k = self.parent[k];
        }
        k
    }

    fn class_of(&self, k: (ValueId, usize)) -> Option<usize> {
        self.keys.get(&k).map(|&key| self.find(key))
    }

    fn unify(&mut self, a: (ValueId, usize), b: (ValueId, usize)) {
        let (a, b) = (self.key(a), self.key(b));
        let (ra, rb) = (self.find(a), self.find(b));
        if ra != rb {
            self.parent[rb] = ra;
            self.mixed[ra] |= self.mixed[rb];
        }
    }

    fn mix(&mut self, k: (ValueId, usize)) {
        let key = self.key(k);
        let root = self.find(key);
        self.mixed[root] = true;
    }
}

#[cfg(test)]
mod tests {
    use super::block_size;

    #[test]
    fn blocks_divide_the_lanes_and_fit_the_cache() {
        // 1536 channels of 16 state elements: 16 blocks of 96, a multiple of 16.
        assert_eq!(block_size(1536, 16), 96);
        // One value per lane: still at least 16 blocks.
        assert_eq!(block_size(768, 1), 48);
        // Few lanes: one block of them all, up to 16.
        assert_eq!(block_size(12, 1), 12);
        // A prime number of lanes above the cap: blocks of one.
        assert_eq!(block_size(37, 1), 1);
        // A large state per lane: blocks shrink to fit.
        assert_eq!(block_size(4096, 1024), 4);
        assert_eq!(block_size(100, 1), 10);
    }
}
