//! The backward pass, derived from a checked forward by reverse-mode differentiation.
//!
//! [`derive_grad`] turns a graph with a scalar `loss` output into one that computes the loss and
//! the gradient of every parameter: the forward's nodes, then each node's adjoint in reverse
//! order, accumulated over its uses (so a tied parameter's gradient sums over every place that
//! reads it). The backward is made of ordinary IR ops, so it is emitted, fused and threaded as
//! the forward is. Ops whose backward is not a composition of others have their own ops:
//! `scatter_add` (a gather's), `matmul_tn` (a matmul's right operand's), and `attention_lse` with
//! `attention_grad`, which recompute attention's probabilities from its row statistics instead
//! of storing them. Elementwise masks (ReLU, `maximum`, slices padded back) are `tabulate`s.
//! An index function's reads of parameter-dependent tensors are turned around in
//! [`tabulate`], and a `scan` is differentiated by a scan in reverse time in [`scan`].

mod recompute;
mod scalar;
mod scan;
mod tabulate;

pub use scalar::derivative_by_first;

use crate::ir::*;
use lmc_abi::DType;

/// Why a graph cannot be differentiated: a message, and the source location of the op that has
/// no backward (none for what concerns the whole model, such as a missing loss).
#[derive(Debug, Clone, PartialEq)]
pub struct GradError {
    pub message: String,
    pub loc: Option<Loc>,
    pub help: String,
}

/// The gradient graph of `g`: same params and inputs; outputs `loss` (the forward's output of
/// that name, an f32 scalar) and then, per parameter, its gradient under the parameter's name.
pub fn derive_grad(g: &Graph, loss: &str) -> Result<Graph, GradError> {
    let no_loc = |message: String, help: &str| GradError {
        message,
        loc: None,
        help: help.to_string(),
    };
    if g.weights != lmc_abi::WeightFormat::F32 {
        return Err(no_loc(
            format!(
                "weights stored as {} are for inference: gradients and training update f32 weights",
                g.weights.name()
            ),
            "leave out `--set weights=...`",
        ));
    }
    let Some((decl, loss_id)) = g.outputs.iter().find(|(d, _)| d.name == loss) else {
        return Err(no_loc(
            format!("the model has no `{loss}` output"),
            "a model returns its loss when it is given `labels` (declared `labels: ... = absent`)",
        ));
    };
    if decl.ty != TensorType::new(DType::F32, vec![]) {
        return Err(no_loc(
            format!("output `{loss}` is {}, not an f32 scalar", g.type_name(&decl.ty)),
            "",
        ));
    }
    if g.decode.is_some() {
        return Err(no_loc("a decode step is not differentiated; differentiate the forward".into(), ""));
    }
    let mut d = Deriv {
        fwd: g,
        out: Graph {
            outputs: Vec::new(),
            ..g.clone()
        },
        needs: std::rc::Rc::new(needs_grad(g)),
        adjoint: vec![None; g.nodes.len()],
        loc: Loc::default(),
    };
    let seed = d.push(Op::Constant(1.0));
    d.adjoint[loss_id.0 as usize] = Some(seed);
    for i in (0..=loss_id.0 as usize).rev() {
        if !d.needs[i] {
            continue;
        }
        d.loc = g.nodes[i].loc;
        match &g.nodes[i].op {
            // A scan's results pass their adjoints to the scan, which differentiates its body.
            Op::ScanResult { .. } => {}
            Op::Scan(s) => {
                if (1..=s.result_count()).any(|k| d.adjoint[i + k].is_some()) {
                    d.scan_backward(i)?;
                }
            }
            _ => {
                let Some(adj) = d.adjoint[i] else { continue };
                d.backward(i, adj)?;
            }
        }
    }
    d.out.outputs.push((decl.clone(), *loss_id));
    // A parameter read in several places (a tied one) sums the gradients of its reads.
    let mut param_grads: Vec<Option<ValueId>> = vec![None; g.params.len()];
    for (i, node) in g.nodes.iter().enumerate() {
        if let (Op::Param(k), Some(grad)) = (&node.op, d.adjoint[i]) {
            param_grads[*k] = Some(match param_grads[*k] {
                Some(prev) => d.binary(BinaryOp::Add, prev, grad),
                None => grad,
            });
        }
    }
    for (k, p) in g.params.iter().enumerate() {
        let grad = match param_grads[k] {
            Some(v) => v,
            None => {
                // A parameter the loss does not read: its gradient is zero.
                let f = ScalarFn {
                    params: vec![ScalarType::Int; p.ty.rank()],
                    nodes: vec![(ScalarNode::F32(0.0), ScalarType::F32)],
                    result: 0,
                };
                d.push_typed(Op::Tabulate { f }, p.ty.clone())
            }
        };
        let decl = TensorDecl {
            name: p.name.clone(),
            ty: p.ty.clone(),
            index_bound: None,
            default: None,
        };
        d.out.outputs.push((decl, grad));
    }
    let out = recompute::without_unused(recompute::recompute_in_backward(d.out, g.nodes.len()));
    out.verify()
        .map_err(|e| no_loc(format!("internal error: the gradient graph is malformed: {e}"), ""))?;
    Ok(out)
}

/// Which nodes depend on a parameter (and so have a gradient to pass on).
fn needs_grad(g: &Graph) -> Vec<bool> {
    needs_grad_from(g, &[])
}

/// Which nodes depend on a parameter or on one of the nodes `seeds` (a scan body's arguments
/// that carry a gradient).
fn needs_grad_from(g: &Graph, seeds: &[usize]) -> Vec<bool> {
    let mut needs = vec![false; g.nodes.len()];
    for (i, n) in g.nodes.iter().enumerate() {
        needs[i] = n.ty.dtype == DType::F32
            && match &n.op {
                Op::Param(_) => true,
                _ if seeds.contains(&i) => true,
                Op::Unary { op: UnaryOp::Detach, .. } => false,
                op => op.operands().iter().any(|o| needs[o.0 as usize]),
            };
    }
    needs
}

struct Deriv<'g> {
    fwd: &'g Graph,
    out: Graph,
    /// Per forward node, whether it depends on a parameter (shared with `backward`'s closures).
    needs: std::rc::Rc<Vec<bool>>,
    /// Per forward node, the sum so far of the gradients its users pass back.
    adjoint: Vec<Option<ValueId>>,
    /// The forward op being differentiated: where its backward nodes come from.
    loc: Loc,
}

impl Deriv<'_> {
    fn push_typed(&mut self, op: Op, ty: TensorType) -> ValueId {
        self.out.nodes.push(Node { op, ty, loc: self.loc });
        ValueId(self.out.nodes.len() as u32 - 1)
    }

    fn push(&mut self, op: Op) -> ValueId {
        let ty = infer_type(&self.out, &op).unwrap_or_else(|| panic!("the backward built an ill-typed op: {op:?}"));
        self.push_typed(op, ty)
    }

    fn dims(&self, v: ValueId) -> Vec<Dim> {
        self.out.ty(v).dims.clone()
    }

    fn constant(&mut self, c: f64) -> ValueId {
        self.push(Op::Constant(c))
    }

    /// `lhs op rhs`; an operand that only stretches a smaller tensor over more axes (the
    /// gradient of a sum, `tabulate (b, t, k) => g[b, t]`) is read through the op's own
    /// broadcasting instead, so the stretched copy is never made (it is left unused).
    fn binary(&mut self, op: BinaryOp, lhs: ValueId, rhs: ValueId) -> ValueId {
        let wanted = infer_type(&self.out, &Op::Binary { op, lhs, rhs });
        let read = |this: &mut Self, v: ValueId, other: ValueId, v_is_lhs: bool| -> ValueId {
            let Some(small) = this.unstretched(v) else { return v };
            let (l, r) = if v_is_lhs { (small, other) } else { (other, small) };
            if infer_type(&this.out, &Op::Binary { op, lhs: l, rhs: r }) == wanted {
                small
            } else {
                v
            }
        };
        let lhs = read(self, lhs, rhs, true);
        let rhs = read(self, rhs, lhs, false);
        self.push(Op::Binary { op, lhs, rhs })
    }

    /// For a backward value that is a tabulate reading one element of a tensor `y` at some of
    /// its indices in order (the others stretch `y` over new axes): `y` with those axes as
    /// length 1, which broadcasting stretches back. `None` for anything else.
    fn unstretched(&mut self, v: ValueId) -> Option<ValueId> {
        if (v.0 as usize) < self.fwd.nodes.len() {
            return None;
        }
        let Op::Tabulate { f } = &self.out.node(v).op else { return None };
        let ScalarNode::Load { tensor, indices } = &f.nodes[f.result].0 else {
            return None;
        };
        let (y, out_dims) = (*tensor, self.out.ty(v).dims.clone());
        let y_ty = self.out.ty(y).clone();
        // The axis of `v` each axis of `y` is read at, in increasing order.
        let mut read_at = Vec::with_capacity(indices.len());
        for (axis, &i) in indices.iter().enumerate() {
            match f.nodes[i].0 {
                ScalarNode::Param(p) if y_ty.dims[axis] == out_dims[p] && read_at.last().is_none_or(|&q| q < p) => read_at.push(p),
                _ => return None,
            }
        }
        if y_ty.dtype != DType::F32 || read_at.len() == out_dims.len() {
            return None;
        }
        let dims: Vec<Dim> = (0..out_dims.len())
            .map(|p| if read_at.contains(&p) { out_dims[p] } else { Dim::Static(1) })
            .collect();
        // `y` itself where it already has that shape (leading axes of length 1 aside).
        let leading = dims.len() - y_ty.rank();
        if dims[..leading].iter().all(|d| *d == Dim::Static(1)) && dims[leading..] == y_ty.dims[..] {
            return Some(y);
        }
        let mut b = ScalarBuilder::new(dims.len());
        let r = b.load(y, read_at);
        Some(self.tabulate(dims, b.finish(r)))
    }

    fn mul(&mut self, a: ValueId, b: ValueId) -> ValueId {
        self.binary(BinaryOp::Mul, a, b)
    }

    fn scaled(&mut self, a: ValueId, c: f64) -> ValueId {
        let c = self.constant(c);
        self.mul(a, c)
    }

    fn unary(&mut self, op: UnaryOp, x: ValueId) -> ValueId {
        self.push(Op::Unary { op, x })
    }

    fn tabulate(&mut self, dims: Vec<Dim>, f: ScalarFn) -> ValueId {
        self.push_typed(Op::Tabulate { f }, TensorType::new(DType::F32, dims))
    }

    /// Where forward value `v` was made, as `file:line:col`.
    fn place(&self, v: ValueId) -> String {
        let loc = self.fwd.node(v).loc;
        format!("{}:{}:{}", self.fwd.files[loc.file as usize], loc.line, loc.col)
    }

    fn fail<T>(&self, message: String, help: &str) -> Result<T, GradError> {
        Err(GradError {
            message,
            loc: Some(self.loc),
            help: help.to_string(),
        })
    }

    /// Adds `grad` to the adjoint of forward value `v` (if `v` has one to receive).
    fn accumulate(&mut self, v: ValueId, grad: ValueId) {
        let i = v.0 as usize;
        if !self.needs[i] {
            return;
        }
        self.adjoint[i] = Some(match self.adjoint[i] {
            Some(prev) => self.binary(BinaryOp::Add, prev, grad),
            None => grad,
        });
    }

    /// `grad`, shaped like the result of a broadcasting op, summed down to `to`'s shape.
    fn unbroadcast(&mut self, grad: ValueId, to: &[Dim]) -> ValueId {
        let mut cur = grad;
        while self.dims(cur).len() > to.len() {
            cur = self.push(Op::Reduce {
                op: ReduceOp::Sum,
                x: cur,
                axis: 0,
                keepdim: false,
            });
        }
        for (axis, d) in to.iter().enumerate() {
            if *d == Dim::Static(1) && self.dims(cur)[axis] != Dim::Static(1) {
                cur = self.push(Op::Reduce {
                    op: ReduceOp::Sum,
                    x: cur,
                    axis,
                    keepdim: true,
                });
            }
        }
        cur
    }

    fn backward(&mut self, i: usize, g: ValueId) -> Result<(), GradError> {
        let fwd = self.fwd;
        let node = &fwd.nodes[i];
        let this = ValueId(i as u32);
        let flags = std::rc::Rc::clone(&self.needs);
        let needs = |v: &ValueId| flags[v.0 as usize];
        match &node.op {
            Op::Param(_) | Op::Input(_) | Op::Constant(_) | Op::Arange(_) | Op::ToFloat { .. } => {}
            Op::Binary { op, lhs, rhs } => {
                let (a, b) = (*lhs, *rhs);
                let (ga, gb): (Option<ValueId>, Option<ValueId>) = match op {
                    BinaryOp::Add => (Some(g), Some(g)),
                    BinaryOp::Sub => (Some(g), needs(&b).then(|| self.unary(UnaryOp::Neg, g))),
                    BinaryOp::Mul => (needs(&a).then(|| self.mul(g, b)), needs(&b).then(|| self.mul(g, a))),
                    BinaryOp::Div => {
                        let ga = needs(&a).then(|| self.binary(BinaryOp::Div, g, b));
                        let gb = needs(&b).then(|| {
                            let t = self.mul(g, this);
                            let t = self.binary(BinaryOp::Div, t, b);
                            self.unary(UnaryOp::Neg, t)
                        });
                        (ga, gb)
                    }
                    BinaryOp::Max | BinaryOp::Min => {
                        // The gradient goes to the operand that was chosen, half to each on a
                        // tie, as torch's `maximum` and `minimum` share it.
                        let out_dims = node.ty.dims.clone();
                        let side = |first: bool, this: &mut Self| {
                            let mut f = ScalarBuilder::new(out_dims.len());
                            let x = f.load_broadcast(a, &fwd.ty(a).dims, &out_dims);
                            let y = f.load_broadcast(b, &fwd.ty(b).dims, &out_dims);
                            let (mine, theirs) = if first { (x, y) } else { (y, x) };
                            let wins = if *op == BinaryOp::Max { ScalarBinary::Gt } else { ScalarBinary::Lt };
                            let won = f.binary(wins, mine, theirs, ScalarType::Bool);
                            let tied = f.binary(ScalarBinary::Eq, mine, theirs, ScalarType::Bool);
                            let gv = f.load_broadcast(g, &out_dims, &out_dims);
                            let half = f.float(0.5);
                            let shared = f.binary(ScalarBinary::Mul, gv, half, ScalarType::F32);
                            let zero = f.float(0.0);
                            let on_tie = f.select(tied, shared, zero);
                            let r = f.select(won, gv, on_tie);
                            this.tabulate(out_dims.clone(), f.finish(r))
                        };
                        let ga = needs(&a).then(|| side(true, self));
                        let gb = needs(&b).then(|| side(false, self));
                        (ga, gb)
                    }
                    BinaryOp::Pow => {
                        let ga = needs(&a).then(|| {
                            let one = self.constant(1.0);
                            let e = self.binary(BinaryOp::Sub, b, one);
                            let p = self.binary(BinaryOp::Pow, a, e);
                            let t = self.mul(g, b);
                            self.mul(t, p)
                        });
                        let gb = needs(&b).then(|| {
                            let l = self.unary(UnaryOp::Log, a);
                            let t = self.mul(g, this);
                            self.mul(t, l)
                        });
                        (ga, gb)
                    }
                };
                if let Some(ga) = ga.filter(|_| needs(&a)) {
                    let ga = self.unbroadcast(ga, &fwd.ty(a).dims);
                    self.accumulate(a, ga);
                }
                if let Some(gb) = gb.filter(|_| needs(&b)) {
                    let gb = self.unbroadcast(gb, &fwd.ty(b).dims);
                    self.accumulate(b, gb);
                }
            }
            Op::Unary { op, x } => {
                let x = *x;
                let gx = self.unary_backward(*op, x, this, g, &node.ty.dims);
                self.accumulate(x, gx);
            }
            Op::Reduce { op, x, axis, keepdim } => {
                let xt = fwd.ty(*x).clone();
                let mut f = ScalarBuilder::new(xt.rank());
                let indices: Vec<usize> = (0..xt.rank())
                    .filter(|k| k != axis || *keepdim)
                    .map(|k| if k == *axis { f.int(0) } else { k })
                    .collect();
                let gv = f.load(g, indices.clone());
                let r = match op {
                    ReduceOp::Sum => gv,
                    ReduceOp::Mean => {
                        let n = match xt.dims[*axis] {
                            Dim::Static(n) => f.float(n as f64),
                            Dim::Symbol(s) => {
                                let n = f.add(ScalarNode::Symbol(s), ScalarType::Int);
                                f.unary(ScalarUnary::ToFloat, n, ScalarType::F32)
                            }
                        };
                        f.binary(ScalarBinary::Div, gv, n, ScalarType::F32)
                    }
                    ReduceOp::Max => {
                        // Shared evenly among the elements equal to the maximum, as torch's
                        // `amax` does (a stable log-sum-exp subtracts it; there it cancels).
                        let mut m = ScalarBuilder::new(xt.rank());
                        let xv = m.load(*x, (0..xt.rank()).collect());
                        let reduced: Vec<usize> = (0..xt.rank())
                            .filter(|k| k != axis || *keepdim)
                            .map(|k| if k == *axis { m.int(0) } else { k })
                            .collect();
                        let top = m.load(this, reduced);
                        let hit = m.binary(ScalarBinary::Eq, xv, top, ScalarType::Bool);
                        let (one, zero) = (m.float(1.0), m.float(0.0));
                        let r = m.select(hit, one, zero);
                        let hits = self.tabulate(xt.dims.clone(), m.finish(r));
                        let count = self.push(Op::Reduce {
                            op: ReduceOp::Sum,
                            x: hits,
                            axis: *axis,
                            keepdim: true,
                        });
                        let hit = f.load(hits, (0..xt.rank()).collect());
                        let at_axis = f.int(0);
                        let n = f.load(count, (0..xt.rank()).map(|k| if k == *axis { at_axis } else { k }).collect());
                        let share = f.binary(ScalarBinary::Div, gv, n, ScalarType::F32);
                        f.binary(ScalarBinary::Mul, hit, share, ScalarType::F32)
                    }
                };
                let gx = self.tabulate(xt.dims.clone(), f.finish(r));
                self.accumulate(*x, gx);
            }
            Op::Gather { table, indices } => {
                let rows = fwd.ty(*table).dims[0];
                let gt = self.push(Op::ScatterAdd {
                    indices: *indices,
                    values: g,
                    rows,
                });
                self.accumulate(*table, gt);
            }
            Op::SplitHeads { x, .. } => {
                let gx = self.push(Op::MergeHeads { x: g });
                self.accumulate(*x, gx);
            }
            Op::MergeHeads { x } => {
                let xt = fwd.ty(*x);
                let Dim::Static(heads) = xt.dims[xt.rank() - 3] else {
                    return self.fail(
                        "this `merge_heads` has no fixed head count to split its gradient by".into(),
                        "give the heads as a config value",
                    );
                };
                let gx = self.push(Op::SplitHeads { x: g, heads });
                self.accumulate(*x, gx);
            }
            Op::Slice { x, axis, start, length } => {
                // The gradient in the slice's place, zeros around it.
                let xt = fwd.ty(*x).clone();
                let mut f = ScalarBuilder::new(xt.rank());
                let lo = f.int(*start);
                let hi = f.int(start + length);
                let above = f.binary(ScalarBinary::Ge, *axis, lo, ScalarType::Bool);
                let below = f.binary(ScalarBinary::Lt, *axis, hi, ScalarType::Bool);
                let inside = f.binary(ScalarBinary::And, above, below, ScalarType::Bool);
                let shifted = f.binary(ScalarBinary::Sub, *axis, lo, ScalarType::Int);
                let indices = (0..xt.rank()).map(|k| if k == *axis { shifted } else { k }).collect();
                let gv = f.load(g, indices);
                let zero = f.float(0.0);
                let r = f.select(inside, gv, zero);
                let gx = self.tabulate(xt.dims, f.finish(r));
                self.accumulate(*x, gx);
            }
            Op::Concat { parts, axis } => {
                // Each part's gradient is its range of the output's.
                let mut start = 0;
                for p in parts {
                    let Dim::Static(length) = fwd.ty(*p).dims[*axis] else {
                        return self.fail("internal: a concat part without a fixed length".into(), "");
                    };
                    if needs(p) {
                        let gp = self.push(Op::Slice {
                            x: g,
                            axis: *axis,
                            start,
                            length,
                        });
                        self.accumulate(*p, gp);
                    }
                    start += length;
                }
            }
            Op::Transpose { x } => {
                let gx = self.push(Op::Transpose { x: g });
                self.accumulate(*x, gx);
            }
            Op::MatMul { lhs, rhs } => {
                if needs(lhs) {
                    let bt = self.push(Op::Transpose { x: *rhs });
                    let ga = self.push(Op::MatMul { lhs: g, rhs: bt });
                    self.accumulate(*lhs, ga);
                }
                if needs(rhs) {
                    let gb = self.push(Op::MatMulTN { lhs: *lhs, rhs: g });
                    self.accumulate(*rhs, gb);
                }
            }
            Op::Attention {
                q,
                k,
                v,
                scale,
                mask,
                score,
                dropout,
            } => {
                // A mask passes no gradient (a choice has none); a score function that reads
                // parameter-dependent values (a learned bias) passes the scores' gradient on.
                let score_reads = score.as_ref().map(|f| self.score_reads(f)).transpose()?.flatten();
                let dscore = match score {
                    Some(f) => match derivative_by_first(f) {
                        Ok(d) => d,
                        Err(why) => return self.fail(format!("cannot differentiate this attention's score function: {why}"), ""),
                    },
                    None => None,
                };
                let lse = self.push(Op::AttentionLse {
                    q: *q,
                    k: *k,
                    scale: *scale,
                    mask: mask.clone(),
                    score: score.clone(),
                });
                let product = self.mul(g, this);
                let delta = self.push(Op::Reduce {
                    op: ReduceOp::Sum,
                    x: product,
                    axis: 3,
                    keepdim: false,
                });
                let backward = |wrt: AttentionInput, dscore: Option<ScalarFn>| {
                    Op::AttentionGrad(Box::new(AttentionGrad {
                        q: *q,
                        k: *k,
                        v: *v,
                        lse,
                        delta,
                        dout: g,
                        scale: *scale,
                        mask: mask.clone(),
                        score: score.clone(),
                        dscore,
                        dropout: dropout.clone(),
                        wrt,
                    }))
                };
                if let Some(reads) = score_reads {
                    let dz = self.push(backward(AttentionInput::Score, None));
                    let dims = self.dims(dz);
                    self.reads_backward(&reads, &dims, dz)?;
                }
                for (operand, wrt) in [(*q, AttentionInput::Query), (*k, AttentionInput::Key), (*v, AttentionInput::Value)] {
                    if needs(&operand) {
                        let grad = self.push(backward(wrt, dscore.clone()));
                        self.accumulate(operand, grad);
                    }
                }
            }
            Op::Tabulate { f } => self.tabulate_backward(this, f, g)?,
            Op::Scan(_) | Op::ScanArg(_) | Op::ScanResult { .. } => {
                return self.fail("internal: a scan's structure is differentiated by the scan".into(), "")
            }
            Op::Carry(_) | Op::WriteRows { .. } | Op::WriteRing { .. } => {
                return self.fail("a decode step's cache is not differentiated".into(), "")
            }
            Op::MatMulTN { .. } | Op::ScatterAdd { .. } | Op::AttentionLse { .. } | Op::AttentionGrad(_) => {
                return self.fail("a gradient op is not differentiated again".into(), "")
            }
        }
        Ok(())
    }

    /// For a score function `(s, b, h, i, j) => ...` that reads parameter-dependent tensors,
    /// the same function of `(b, h, i, j)` alone, whose reads [`Self::reads_backward`] turns
    /// around given the scores' gradient; `None` where it reads none. The derivative by each
    /// such read may not depend on `s` (a bias added to the score's does not), since the scores
    /// themselves are not kept.
    fn score_reads(&self, f: &ScalarFn) -> Result<Option<ScalarFn>, GradError> {
        let mut any = false;
        for (k, (node, _)) in f.nodes.iter().enumerate() {
            let ScalarNode::Load { tensor, .. } = node else { continue };
            if !self.needs[tensor.0 as usize] {
                continue;
            }
            any = true;
            let by_read = match scalar::derivative(f, |n, _| n == k) {
                Ok(d) => d,
                Err(why) => return self.fail(format!("cannot differentiate this attention's score function: {why}"), ""),
            };
            if by_read.is_some_and(|d| scalar::reads_param(&d, d.result, 0)) {
                return self.fail(
                    format!(
                        "this attention's score function reads a value that depends on parameters (made at {}) \
                         in a way whose derivative depends on the score itself",
                        self.place(*tensor)
                    ),
                    "a score function that adds a parameter-dependent bias to the score is differentiated",
                );
            }
        }
        if !any {
            return Ok(None);
        }
        let nodes = f
            .nodes
            .iter()
            .map(|(n, t)| match n {
                ScalarNode::Param(0) => (ScalarNode::F32(0.0), *t),
                ScalarNode::Param(p) => (ScalarNode::Param(p - 1), *t),
                n => (n.clone(), *t),
            })
            .collect();
        Ok(Some(ScalarFn {
            params: f.params[1..].to_vec(),
            nodes,
            result: f.result,
        }))
    }

    /// The gradient of `x` through `out = op(x)`, given the gradient `g` of `out`.
    fn unary_backward(&mut self, op: UnaryOp, x: ValueId, out: ValueId, g: ValueId, dims: &[Dim]) -> ValueId {
        use std::f64::consts::{FRAC_2_SQRT_PI, PI, SQRT_2};
        let sign_mask = |this: &mut Self, keep_negative: bool| {
            // g where x > 0, -g (or 0 for ReLU) where x < 0, 0 at 0.
            let mut f = ScalarBuilder::new(dims.len());
            let xv = f.load(x, (0..dims.len()).collect());
            let gv = f.load(g, (0..dims.len()).collect());
            let zero = f.float(0.0);
            let positive = f.binary(ScalarBinary::Gt, xv, zero, ScalarType::Bool);
            let below = if keep_negative {
                let negative = f.binary(ScalarBinary::Lt, xv, zero, ScalarType::Bool);
                let minus = f.unary(ScalarUnary::Neg, gv, ScalarType::F32);
                f.select(negative, minus, zero)
            } else {
                zero
            };
            let r = f.select(positive, gv, below);
            this.tabulate(dims.to_vec(), f.finish(r))
        };
        match op {
            UnaryOp::Neg => self.unary(UnaryOp::Neg, g),
            // Not reached: a detached value needs no gradient (`needs_grad_from`).
            UnaryOp::Detach => g,
            UnaryOp::Sqrt => {
                let t = self.binary(BinaryOp::Div, g, out);
                self.scaled(t, 0.5)
            }
            UnaryOp::Rsqrt => {
                // d x^(-1/2) = -1/2 x^(-3/2) = -1/2 out³.
                let o2 = self.mul(out, out);
                let o3 = self.mul(o2, out);
                let t = self.mul(g, o3);
                self.scaled(t, -0.5)
            }
            UnaryOp::Exp => self.mul(g, out),
            UnaryOp::Log => self.binary(BinaryOp::Div, g, x),
            UnaryOp::Abs => sign_mask(self, true),
            UnaryOp::Relu => sign_mask(self, false),
            UnaryOp::Tanh => {
                let o2 = self.mul(out, out);
                let one = self.constant(1.0);
                let d = self.binary(BinaryOp::Sub, one, o2);
                self.mul(g, d)
            }
            UnaryOp::Erf => {
                let x2 = self.mul(x, x);
                let n = self.unary(UnaryOp::Neg, x2);
                let e = self.unary(UnaryOp::Exp, n);
                let t = self.mul(g, e);
                self.scaled(t, FRAC_2_SQRT_PI)
            }
            UnaryOp::Sin => {
                let c = self.unary(UnaryOp::Cos, x);
                self.mul(g, c)
            }
            UnaryOp::Cos => {
                let s = self.unary(UnaryOp::Sin, x);
                let t = self.mul(g, s);
                self.unary(UnaryOp::Neg, t)
            }
            UnaryOp::Sigmoid => {
                let one = self.constant(1.0);
                let rest = self.binary(BinaryOp::Sub, one, out);
                let d = self.mul(out, rest);
                self.mul(g, d)
            }
            UnaryOp::Silu => {
                // s (1 + x (1 - s)) with s = sigmoid(x).
                let s = self.unary(UnaryOp::Sigmoid, x);
                let one = self.constant(1.0);
                let rest = self.binary(BinaryOp::Sub, one, s);
                let xr = self.mul(x, rest);
                let one = self.constant(1.0);
                let inner = self.binary(BinaryOp::Add, one, xr);
                let d = self.mul(s, inner);
                self.mul(g, d)
            }
            UnaryOp::Gelu => {
                // Φ(x) + x φ(x): ½(1 + erf(x/√2)) + x e^(-x²/2)/√(2π).
                let xs = self.scaled(x, 1.0 / SQRT_2);
                let erf = self.unary(UnaryOp::Erf, xs);
                let one = self.constant(1.0);
                let cdf = self.binary(BinaryOp::Add, one, erf);
                let cdf = self.scaled(cdf, 0.5);
                let x2 = self.mul(x, x);
                let e = self.scaled(x2, -0.5);
                let e = self.unary(UnaryOp::Exp, e);
                let pdf = self.scaled(e, 1.0 / (2.0 * PI).sqrt());
                let xpdf = self.mul(x, pdf);
                let d = self.binary(BinaryOp::Add, cdf, xpdf);
                self.mul(g, d)
            }
        }
    }
}

#[cfg(test)]
mod tests;
