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
    if g.weights != lmc_abi::WeightFormat::F32 {
        return Err(no_loc(
            format!(
                "weights stored as {} are for inference: gradients and training update f32 weights",
                g.weights.name()
            ),
            "leave out `--set weights=...`",
        ));
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
        let Some(adj) = d.adjoint[i] else { continue };
        if !d.needs[i] {
            continue;
        }
        d.loc = g.nodes[i].loc;
        d.backward(i, adj)?;
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
    d.out
        .verify()
        .map_err(|e| no_loc(format!("internal error: the gradient graph is malformed: {e}"), ""))?;
    Ok(d.out)
}

/// Which nodes depend on a parameter (and so have a gradient to pass on).
fn needs_grad(g: &Graph) -> Vec<bool> {
    let mut needs = vec![false; g.nodes.len()];
    for (i, n) in g.nodes.iter().enumerate() {
        needs[i] = n.ty.dtype == DType::F32
            && match &n.op {
                Op::Param(_) => true,
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

    fn binary(&mut self, op: BinaryOp, lhs: ValueId, rhs: ValueId) -> ValueId {
        self.push(Op::Binary { op, lhs, rhs })
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
                                f.add(
                                    ScalarNode::Unary {
                                        op: ScalarUnary::ToFloat,
                                        a: n,
                                    },
                                    ScalarType::F32,
                                )
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
            } => {
                for f in mask.iter().chain(score.iter()) {
                    if let Some(t) = f.tensors().into_iter().find(|t| needs(t)) {
                        return self.fail(
                            format!(
                                "this attention's mask or score function reads a value that depends on parameters \
                                 (made at {}); differentiating through an index function's reads is not supported yet",
                                self.place(t)
                            ),
                            "a score bias computed from parameters has no backward yet",
                        );
                    }
                }
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
                for (operand, wrt) in [(*q, AttentionInput::Query), (*k, AttentionInput::Key), (*v, AttentionInput::Value)] {
                    if !needs(&operand) {
                        continue;
                    }
                    let grad = self.push(Op::AttentionGrad(Box::new(AttentionGrad {
                        q: *q,
                        k: *k,
                        v: *v,
                        lse,
                        delta,
                        dout: g,
                        scale: *scale,
                        mask: mask.clone(),
                        score: score.clone(),
                        dscore: dscore.clone(),
                        wrt,
                    })));
                    self.accumulate(operand, grad);
                }
            }
            Op::Tabulate { f } => {
                if let Some(t) = f.tensors().into_iter().find(|t| needs(t)) {
                    return self.fail(
                        format!(
                            "this `tabulate` reads a value that depends on parameters (made at {}); \
                             differentiating through an index function's reads is not supported yet",
                            self.place(t)
                        ),
                        "a `tabulate` that rearranges a parameter-dependent tensor (a rotation, a shift) has no backward yet",
                    );
                }
            }
            Op::Scan(_) | Op::ScanArg(_) | Op::ScanResult { .. } => {
                return self.fail(
                    "a `scan` cannot be differentiated yet".into(),
                    "a recurrence has no backward pass yet",
                )
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
                let minus = f.add(
                    ScalarNode::Unary {
                        op: ScalarUnary::Neg,
                        a: gv,
                    },
                    ScalarType::F32,
                );
                f.select(negative, minus, zero)
            } else {
                zero
            };
            let r = f.select(positive, gv, below);
            this.tabulate(dims.to_vec(), f.finish(r))
        };
        match op {
            UnaryOp::Neg => self.unary(UnaryOp::Neg, g),
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

/// A scalar function's derivative term: zero, one, or a node of the function being built.
#[derive(Clone, Copy, PartialEq)]
enum Term {
    Zero,
    One,
    Node(usize),
}

/// The derivative of a score function `(s, b, h, i, j) => ...` by `s`, with the same
/// arguments; `None` where it is 1 everywhere (a score that adds to `s`).
pub fn derivative_by_first(f: &ScalarFn) -> Result<Option<ScalarFn>, String> {
    let mut out = f.clone();
    let mut terms: Vec<Term> = Vec::with_capacity(f.nodes.len());
    let add = |out: &mut ScalarFn, node: ScalarNode| {
        out.nodes.push((node, ScalarType::F32));
        out.nodes.len() - 1
    };
    let materialise = |out: &mut ScalarFn, t: Term| match t {
        Term::Zero => add(out, ScalarNode::F32(0.0)),
        Term::One => add(out, ScalarNode::F32(1.0)),
        Term::Node(n) => n,
    };
    let mul = |out: &mut ScalarFn, a: usize, t: Term| -> Term {
        match t {
            Term::Zero => Term::Zero,
            Term::One => Term::Node(a),
            Term::Node(n) => Term::Node(add(
                out,
                ScalarNode::Binary {
                    op: ScalarBinary::Mul,
                    a,
                    b: n,
                },
            )),
        }
    };
    let neg = |out: &mut ScalarFn, t: Term| -> Term {
        match t {
            Term::Zero => Term::Zero,
            t => {
                let n = materialise(out, t);
                Term::Node(add(
                    out,
                    ScalarNode::Unary {
                        op: ScalarUnary::Neg,
                        a: n,
                    },
                ))
            }
        }
    };
    for (k, (node, _)) in f.nodes.iter().enumerate() {
        let t = match *node {
            ScalarNode::Param(0) => Term::One,
            ScalarNode::Param(_)
            | ScalarNode::Int(_)
            | ScalarNode::F32(_)
            | ScalarNode::Bool(_)
            | ScalarNode::Symbol(_)
            | ScalarNode::Load { .. } => Term::Zero,
            ScalarNode::Binary { op, a, b } => {
                let (da, db) = (terms[a], terms[b]);
                match op {
                    _ if da == Term::Zero && db == Term::Zero => Term::Zero,
                    ScalarBinary::Add => match (da, db) {
                        (t, Term::Zero) | (Term::Zero, t) => t,
                        (x, y) => {
                            let (x, y) = (materialise(&mut out, x), materialise(&mut out, y));
                            Term::Node(add(
                                &mut out,
                                ScalarNode::Binary {
                                    op: ScalarBinary::Add,
                                    a: x,
                                    b: y,
                                },
                            ))
                        }
                    },
                    ScalarBinary::Sub => match (da, db) {
                        (t, Term::Zero) => t,
                        (Term::Zero, t) => neg(&mut out, t),
                        (x, y) => {
                            let (x, y) = (materialise(&mut out, x), materialise(&mut out, y));
                            Term::Node(add(
                                &mut out,
                                ScalarNode::Binary {
                                    op: ScalarBinary::Sub,
                                    a: x,
                                    b: y,
                                },
                            ))
                        }
                    },
                    ScalarBinary::Mul => {
                        let l = mul(&mut out, b, da);
                        let r = mul(&mut out, a, db);
                        match (l, r) {
                            (t, Term::Zero) | (Term::Zero, t) => t,
                            (x, y) => {
                                let (x, y) = (materialise(&mut out, x), materialise(&mut out, y));
                                Term::Node(add(
                                    &mut out,
                                    ScalarNode::Binary {
                                        op: ScalarBinary::Add,
                                        a: x,
                                        b: y,
                                    },
                                ))
                            }
                        }
                    }
                    ScalarBinary::Div if db == Term::Zero => {
                        let d = materialise(&mut out, da);
                        Term::Node(add(
                            &mut out,
                            ScalarNode::Binary {
                                op: ScalarBinary::Div,
                                a: d,
                                b,
                            },
                        ))
                    }
                    ScalarBinary::Min | ScalarBinary::Max => {
                        let cmp = if op == ScalarBinary::Max {
                            ScalarBinary::Ge
                        } else {
                            ScalarBinary::Le
                        };
                        out.nodes.push((ScalarNode::Binary { op: cmp, a, b }, ScalarType::Bool));
                        let cond = out.nodes.len() - 1;
                        let (x, y) = (materialise(&mut out, da), materialise(&mut out, db));
                        Term::Node(add(&mut out, ScalarNode::Select { cond, a: x, b: y }))
                    }
                    _ => return Err(format!("`{}` of the score is not differentiated", format!("{op:?}").to_lowercase())),
                }
            }
            ScalarNode::Unary { op, a } => {
                let da = terms[a];
                match op {
                    _ if da == Term::Zero => Term::Zero,
                    ScalarUnary::Neg => neg(&mut out, da),
                    ScalarUnary::Exp => mul(&mut out, k, da),
                    ScalarUnary::ToFloat | ScalarUnary::ToInt | ScalarUnary::Not => Term::Zero,
                    _ => return Err(format!("`{}` of the score is not differentiated", format!("{op:?}").to_lowercase())),
                }
            }
            ScalarNode::Select { cond, a, b } => match (terms[a], terms[b]) {
                (Term::Zero, Term::Zero) => Term::Zero,
                (x, y) => {
                    let (x, y) = (materialise(&mut out, x), materialise(&mut out, y));
                    Term::Node(add(&mut out, ScalarNode::Select { cond, a: x, b: y }))
                }
            },
        };
        terms.push(t);
    }
    Ok(match terms[f.result] {
        Term::One => None,
        t => {
            let r = materialise(&mut out, t);
            out.result = r;
            Some(out)
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ConfigOverrides;
    use crate::interp::{evaluate, Data, Tensor};
    use std::collections::HashMap;
    use std::path::{Path, PathBuf};

    fn root() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
    }

    /// The f32 and i64 tensors of a safetensors file, by name.
    fn read(path: &Path) -> HashMap<String, Tensor> {
        let file = lmc_runtime::SafeTensorsFile::open(path).unwrap_or_else(|e| panic!("{e}"));
        file.tensors()
            .map(|info| {
                let t = file.get(&info.name).unwrap().to_host().unwrap();
                let tensor = match (t.as_f32(), t.as_i64()) {
                    (Some(v), _) => Tensor::f32(t.shape.clone(), v.to_vec()),
                    (_, Some(v)) => Tensor::int(t.shape.clone(), v.to_vec()),
                    _ => panic!("{}: neither f32 nor i64", info.name),
                };
                (info.name.clone(), tensor)
            })
            .collect()
    }

    fn checked(file: &str, model: &str, fixture: &Path, given: &[&str]) -> Graph {
        let text = std::fs::read_to_string(root().join(file)).unwrap();
        let program = crate::load_source(file, &text, Some(&root().join("models"))).unwrap_or_else(|f| panic!("{:?}", f.diagnostics));
        let config = std::fs::read_to_string(fixture.join("config.json")).unwrap();
        let mut overrides = ConfigOverrides::default().with_checkpoint_json(&config).unwrap();
        overrides.given = crate::config::Given::Named(given.iter().map(|s| s.to_string()).collect());
        crate::check_model(&program, Some(model), &overrides)
            .unwrap_or_else(|e| panic!("{e:?}"))
            .graph
    }

    /// The derived backward, run by the reference interpreter, against PyTorch's
    /// `loss.backward()` on the same checkpoint and batch (tests/reference/make_grad_fixtures.py).
    fn matches_torch(file: &str, model: &str, fixture: &str) {
        let dir = root().join("tests/fixtures").join(fixture);
        let g = checked(file, model, &dir, &["labels"]);
        let grad = derive_grad(&g, "loss").unwrap_or_else(|e| panic!("{e:?}"));
        let weights = read(&dir.join("model.safetensors"));
        let inputs = read(&dir.join("inputs_grad.safetensors"));
        let expected = read(&dir.join("expected_grad.safetensors"));
        let params: Vec<Tensor> = grad.params.iter().map(|p| weights[&p.name].clone()).collect();
        // Position ids the batch leaves out are their default, 0..T in every row.
        let args: Vec<Tensor> = grad
            .inputs
            .iter()
            .map(|i| match (inputs.get(&i.name), i.default) {
                (Some(t), _) => t.clone(),
                (None, Some(lmc_abi::InputDefault::Arange)) => {
                    let shape = inputs["input_ids"].shape.clone();
                    let n: usize = shape.iter().product();
                    let t = shape[shape.len() - 1];
                    Tensor::int(shape, (0..n).map(|k| (k % t) as i64).collect())
                }
                (None, _) => panic!("the batch has no input {}", i.name),
            })
            .collect();
        let outputs = evaluate(&grad, &params, &args);
        for ((decl, _), got) in grad.outputs.iter().zip(&outputs) {
            let want = &expected[&decl.name];
            let (Data::F32(got), Data::F32(want)) = (&got.data, &want.data) else {
                panic!()
            };
            let scale = want.iter().fold(0.0f32, |m, x| m.max(x.abs()));
            let err = got.iter().zip(want).fold(0.0f32, |m, (a, b)| m.max((a - b).abs()));
            let bound = if decl.name == "loss" { 1e-5 * scale } else { 1e-3 * scale + 1e-6 };
            assert!(
                err <= bound,
                "{fixture}: {}: max |lmc - torch| = {err:e} > {bound:e} (max |torch| {scale:e})",
                decl.name
            );
        }
        assert_eq!(grad.outputs.len(), 1 + weights.len(), "a gradient for every checkpoint tensor");
    }

    #[test]
    fn gpt2_gradients_match_torch() {
        matches_torch("models/gpt2.model", "GPT2LMHeadModel", "gpt2_grad");
    }

    #[test]
    fn bert_masked_lm_gradients_match_torch() {
        matches_torch("models/bert.model", "BertForMaskedLM", "bert_mlm");
    }

    /// Gradients of a small model by central finite differences of its loss, against the
    /// derived backward, run by the reference interpreter, for every parameter element.
    fn matches_finite_differences(source: &str, given: &[&str], inputs: Vec<Tensor>) {
        let program = crate::load_source("t.model", source, None).unwrap_or_else(|f| panic!("{:?}", f.diagnostics));
        let overrides = ConfigOverrides {
            given: crate::config::Given::Named(given.iter().map(|s| s.to_string()).collect()),
            ..Default::default()
        };
        let g = crate::check_model(&program, None, &overrides)
            .unwrap_or_else(|e| panic!("{e:?}"))
            .graph;
        let grad = derive_grad(&g, "loss").unwrap_or_else(|e| panic!("{e:?}"));
        let mut seed = 7u64;
        let mut random = || {
            seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((seed >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        };
        let mut params: Vec<Tensor> = g
            .params
            .iter()
            .map(|p| {
                let shape: Vec<usize> =
                    p.ty.dims
                        .iter()
                        .map(|d| if let Dim::Static(n) = d { *n as usize } else { panic!() })
                        .collect();
                let n = shape.iter().product();
                Tensor::f32(shape, (0..n).map(|_| random()).collect())
            })
            .collect();
        let loss_of = |params: &[Tensor]| -> f64 {
            let out = evaluate(&g, params, &inputs);
            let k = g.outputs.iter().position(|(d, _)| d.name == "loss").unwrap();
            out[k].floats()[0] as f64
        };
        let derived = evaluate(&grad, &params, &inputs);
        let eps = 3e-3f32;
        for (k, p) in g.params.iter().enumerate() {
            let want = derived[1 + k].floats().to_vec();
            let scale = want.iter().fold(0.0f32, |m, x| m.max(x.abs()));
            for e in 0..want.len() {
                let Data::F32(values) = &mut params[k].data else { panic!() };
                let x = values[e];
                values[e] = x + eps;
                let up = loss_of(&params);
                let Data::F32(values) = &mut params[k].data else { panic!() };
                values[e] = x - eps;
                let down = loss_of(&params);
                let Data::F32(values) = &mut params[k].data else { panic!() };
                values[e] = x;
                let fd = ((up - down) / (2.0 * eps as f64)) as f32;
                let bound = 2e-2 * scale + 2e-3;
                assert!(
                    (fd - want[e]).abs() <= bound,
                    "{}[{e}]: derived {} but finite differences give {fd}",
                    p.name,
                    want[e]
                );
            }
        }
    }

    const HEAD: &str = "config C { n = 1 }\n";

    fn ids() -> Vec<Tensor> {
        vec![Tensor::int(vec![2, 3], vec![0, 2, 2, 1, 0, 2])]
    }

    #[test]
    fn elementwise_derivatives_match_finite_differences() {
        let source = format!(
            "{HEAD}model M(c: C) {{
  param x: f32[3, 4]
  forward(ids: i64[B, T]) -> (loss: f32[]) {{
    p = x * x + 1.0
    y = exp(x) + log(p) + sqrt(p) + rsqrt(p) + abs(x) + tanh(x) + erf(x) + sin(x) + cos(x)
    y = y + sigmoid(x) + relu(x) + silu(x) + gelu(x) - x
    w = tabulate(3, 4, (i, j) => float(i * 4 + j) / 7.0 - 0.8)
    return sum(sum(y * w * y, axis = -1), axis = -1)
  }}
}}"
        );
        matches_finite_differences(&source, &[], ids());
    }

    #[test]
    fn broadcasting_derivatives_match_finite_differences() {
        let source = format!(
            "{HEAD}model M(c: C) {{
  param a: f32[3, 4]
  param row: f32[4]
  param column: f32[3, 1]
  forward(ids: i64[B, T]) -> (loss: f32[]) {{
    y = (a + row) * column - a / (row * row + 1.0) + maximum(a, row) - minimum(a, column)
    y = y + pow(a * a + 1.0, column) + 2.0 * a
    w = tabulate(3, 4, (i, j) => float(j * 3 + i) / 5.0 - 1.0)
    return sum(sum(y * w, axis = -1), axis = -1)
  }}
}}"
        );
        matches_finite_differences(&source, &[], ids());
    }

    #[test]
    fn reduction_and_layout_derivatives_match_finite_differences() {
        let source = format!(
            "{HEAD}model M(c: C) {{
  param table: f32[3, 6]
  param w: f32[6, 4]
  param u: f32[5, 6]
  forward(ids: i64[B, T]) -> (loss: f32[]) {{
    x = gather(table, ids)
    h = merge_heads(split_heads(x, 2))
    y = h @ w + slice(h @ transpose(u), 1, 4)
    m = max(y, axis = 1, keepdim = true) + mean(y, axis = -1, keepdim = true)
    z = y * m + sum(y, axis = 0) * 0.5
    return sum(sum(sum(z * z, axis = -1), axis = -1), axis = -1) + max(mean(sum(y, axis = -1), axis = -1), axis = 0)
  }}
}}"
        );
        matches_finite_differences(&source, &[], ids());
    }

    #[test]
    fn attention_derivatives_match_finite_differences() {
        let source = format!(
            "{HEAD}model M(c: C) {{
  param x: f32[2, 5, 8]
  param wq: f32[8, 8]
  param wk: f32[8, 4]
  param wv: f32[8, 6]
  forward(keep: i64[B, T]) -> (loss: f32[]) {{
    q = split_heads(x @ wq, 2)
    k = split_heads(x @ wk, 1)
    v = split_heads(x @ wv, 1)
    slopes = tabulate(2, (h) => 0.5 * float(h + 1))
    o = attention(q, k, v, mask = (b, h, i, j) => j <= i and keep[b, j] != 0, score = (s, b, h, i, j) => 2.0 * s - slopes[h] * float(i - j))
    w = tabulate(2, 2, 5, 6, (b, h, i, e) => float(b + 2 * h + i - e) / 4.0)
    return sum(sum(sum(sum(o * w, axis = -1), axis = -1), axis = -1), axis = -1)
  }}
}}"
        );
        matches_finite_differences(&source, &[], vec![Tensor::int(vec![2, 5], vec![1, 1, 1, 1, 1, 0, 1, 1, 1, 0])]);
    }

    #[test]
    fn what_has_no_backward_is_reported_where_it_is() {
        let source = format!(
            "{HEAD}model M(c: C) {{
  param x: f32[2, 3]
  forward(ids: i64[B, T]) -> (loss: f32[]) {{
    y = tabulate(2, 3, (i, j) => x[i, 2 - j])
    return sum(sum(y, axis = -1), axis = -1)
  }}
}}"
        );
        let program = crate::load_source("t.model", &source, None).unwrap();
        let g = crate::check_model(&program, None, &ConfigOverrides::default()).unwrap().graph;
        let e = derive_grad(&g, "loss").unwrap_err();
        assert!(e.message.contains("`tabulate` reads"), "{e:?}");
        assert_eq!(e.loc.map(|l| (l.line, l.col)), Some((5, 9)));
        let e = derive_grad(&g, "logits").unwrap_err();
        assert!(e.message.contains("no `logits` output") && e.loc.is_none(), "{e:?}");
    }
}
