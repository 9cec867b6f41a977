//! The backward of a `tabulate` that reads parameter-dependent tensors (a token shift, a
//! causal convolution, an `unsqueeze`): each read `x[e(i)]` of the output's element `i` passes
//! `g[i] · ∂f/∂x[e(i)]` back to `x[e(i)]`. Turned around, element `j` of x's gradient sums over
//! the `i` that read it. An index that is a parameter plus an offset (`t - 1`, `t + k - 3`) is
//! solved for that parameter (`t = j + 1`), so the sum runs over the parameters left over (`k`)
//! only; any other index is matched by comparison, its parameters summed over in full.
//!
//! Solving is exact only where the read stays inside x (a read outside is clamped to the edge,
//! so the edge element would receive it too): it is used where the guards around the read prove
//! that (`if t > 0 { x[b, t - 1, c] }`), by bounds on the parameters and the `if` conditions
//! that must hold for the read to count.

use super::scalar::derivative;
use super::{Deriv, GradError};
use crate::ir::*;
use std::collections::BTreeMap;

/// An integer expression `Σ params[p] · arg_p + Σ symbols[s] · s + constant` of an index
/// function's arguments and the model's symbolic sizes.
#[derive(Debug, Clone, PartialEq, Default)]
struct Affine {
    params: Vec<i64>,
    symbols: BTreeMap<u32, i64>,
    constant: i64,
}

impl Affine {
    fn constant(rank: usize, c: i64) -> Self {
        Affine {
            params: vec![0; rank],
            constant: c,
            ..Default::default()
        }
    }

    fn dim(rank: usize, d: Dim) -> Self {
        match d {
            Dim::Static(n) => Affine::constant(rank, n),
            Dim::Symbol(s) => {
                let mut a = Affine::constant(rank, 0);
                a.symbols.insert(s.0, 1);
                a
            }
        }
    }

    fn scaled(&self, k: i64) -> Self {
        Affine {
            params: self.params.iter().map(|c| c * k).collect(),
            symbols: self.symbols.iter().map(|(s, c)| (*s, c * k)).collect(),
            constant: self.constant * k,
        }
    }

    fn plus(&self, other: &Affine) -> Self {
        let mut symbols = self.symbols.clone();
        for (s, c) in &other.symbols {
            *symbols.entry(*s).or_insert(0) += c;
        }
        symbols.retain(|_, c| *c != 0);
        Affine {
            params: self.params.iter().zip(&other.params).map(|(a, b)| a + b).collect(),
            symbols,
            constant: self.constant + other.constant,
        }
    }

    fn minus(&self, other: &Affine) -> Self {
        self.plus(&other.scaled(-1))
    }

    fn is_constant(&self) -> bool {
        self.params.iter().all(|c| *c == 0) && self.symbols.is_empty()
    }

    /// Whether the expression is ≥ 0 for every argument in range (`0 <= arg_p < dims[p]`) and
    /// every size ≥ 1, given `facts` (`E >= c`) that hold where it matters.
    fn provably_non_negative(&self, dims: &[Dim], facts: &[(Affine, i64)]) -> bool {
        let rank = self.params.len();
        let without_params = |q: &Affine, floor: i64| {
            // The least value of q over the arguments' ranges, as an expression of the sizes.
            let mut low = Affine::constant(rank, q.constant + floor);
            low.symbols = q.symbols.clone();
            for (p, c) in q.params.iter().enumerate() {
                if *c < 0 {
                    let last = Affine::dim(rank, dims[p]).plus(&Affine::constant(rank, -1));
                    low = low.plus(&last.scaled(*c));
                }
            }
            low.symbols.values().all(|c| *c >= 0) && low.constant + low.symbols.values().sum::<i64>() >= 0
        };
        without_params(self, 0)
            || facts
                .iter()
                .filter(|(e, _)| e.params == self.params)
                .any(|(e, c)| without_params(&self.minus(e), *c))
    }
}

/// Per node of `f`, its value as an [`Affine`] where it is one.
fn affine_nodes(f: &ScalarFn) -> Vec<Option<Affine>> {
    let rank = f.params.len();
    let mut out: Vec<Option<Affine>> = Vec::with_capacity(f.nodes.len());
    for (node, ty) in &f.nodes {
        let a = match node {
            _ if *ty != ScalarType::Int => None,
            ScalarNode::Param(p) => {
                let mut a = Affine::constant(rank, 0);
                a.params[*p] = 1;
                Some(a)
            }
            ScalarNode::Int(v) => Some(Affine::constant(rank, *v)),
            ScalarNode::Symbol(s) => Some(Affine::dim(rank, Dim::Symbol(*s))),
            ScalarNode::Binary { op, a, b } => match (op, &out[*a], &out[*b]) {
                (ScalarBinary::Add, Some(x), Some(y)) => Some(x.plus(y)),
                (ScalarBinary::Sub, Some(x), Some(y)) => Some(x.minus(y)),
                (ScalarBinary::Mul, Some(x), Some(y)) if y.is_constant() => Some(x.scaled(y.constant)),
                (ScalarBinary::Mul, Some(x), Some(y)) if x.is_constant() => Some(y.scaled(x.constant)),
                _ => None,
            },
            ScalarNode::Unary { op: ScalarUnary::Neg, a } => out[*a].as_ref().map(|x| x.scaled(-1)),
            _ => None,
        };
        out.push(a);
    }
    out
}

/// Per node of `f`, the conditions (node, value) that hold wherever the node's value can change
/// the result: the `if`s it sits in. `None` for a node the result does not read.
fn guards(f: &ScalarFn) -> Vec<Option<Vec<(usize, bool)>>> {
    let mut guards: Vec<Option<Vec<(usize, bool)>>> = vec![None; f.nodes.len()];
    guards[f.result] = Some(Vec::new());
    let meet = |guards: &mut Vec<Option<Vec<(usize, bool)>>>, m: usize, g: Vec<(usize, bool)>| {
        guards[m] = Some(match guards[m].take() {
            None => g,
            Some(old) => old.into_iter().filter(|c| g.contains(c)).collect(),
        });
    };
    for u in (0..f.nodes.len()).rev() {
        let Some(gu) = guards[u].clone() else { continue };
        match &f.nodes[u].0 {
            ScalarNode::Select { cond, a, b } => {
                let with = |c: bool| {
                    let mut g = gu.clone();
                    g.push((*cond, c));
                    g
                };
                meet(&mut guards, *a, with(true));
                meet(&mut guards, *b, with(false));
                meet(&mut guards, *cond, gu.clone());
            }
            ScalarNode::Binary { a, b, .. } => {
                meet(&mut guards, *a, gu.clone());
                meet(&mut guards, *b, gu);
            }
            ScalarNode::Unary { a, .. } => meet(&mut guards, *a, gu),
            ScalarNode::Load { indices, .. } => {
                for i in indices {
                    meet(&mut guards, *i, gu.clone());
                }
            }
            _ => {}
        }
    }
    guards
}

/// The facts `E >= c` that conditions give, with `and`, `or` and `not` taken apart; `x != y`
/// where `x - y` cannot be negative (`t != 0`) is `x - y >= 1`.
fn facts(f: &ScalarFn, affine: &[Option<Affine>], conditions: &[(usize, bool)], dims: &[Dim]) -> Vec<(Affine, i64)> {
    let mut out = Vec::new();
    let mut todo = conditions.to_vec();
    while let Some((n, holds)) = todo.pop() {
        match &f.nodes[n].0 {
            ScalarNode::Unary { op: ScalarUnary::Not, a } => todo.push((*a, !holds)),
            ScalarNode::Binary {
                op: ScalarBinary::And,
                a,
                b,
            } if holds => todo.extend([(*a, true), (*b, true)]),
            ScalarNode::Binary {
                op: ScalarBinary::Or,
                a,
                b,
            } if !holds => todo.extend([(*a, false), (*b, false)]),
            ScalarNode::Binary { op, a, b } => {
                let (Some(x), Some(y)) = (&affine[*a], &affine[*b]) else { continue };
                let (x_minus_y, y_minus_x) = (x.minus(y), y.minus(x));
                match (op, holds) {
                    (ScalarBinary::Ge, true) | (ScalarBinary::Lt, false) => out.push((x_minus_y, 0)),
                    (ScalarBinary::Gt, true) | (ScalarBinary::Le, false) => out.push((x_minus_y, 1)),
                    (ScalarBinary::Le, true) | (ScalarBinary::Gt, false) => out.push((y_minus_x, 0)),
                    (ScalarBinary::Lt, true) | (ScalarBinary::Ge, false) => out.push((y_minus_x, 1)),
                    (ScalarBinary::Eq, true) => out.extend([(x_minus_y, 0), (y_minus_x, 0)]),
                    (ScalarBinary::Eq, false) | (ScalarBinary::Ne, true) => {
                        for d in [x_minus_y, y_minus_x] {
                            if d.provably_non_negative(dims, &[]) {
                                out.push((d, 1));
                            }
                        }
                    }
                    _ => {}
                }
            }
            _ => {}
        }
    }
    out
}

/// Per node of `f`, which of its arguments it depends on.
fn arguments_used(f: &ScalarFn) -> Vec<Vec<bool>> {
    let rank = f.params.len();
    let mut out: Vec<Vec<bool>> = Vec::with_capacity(f.nodes.len());
    for (node, _) in &f.nodes {
        let mut used = vec![false; rank];
        let mut take = |k: usize, out: &Vec<Vec<bool>>| {
            for (u, o) in used.iter_mut().zip(&out[k]) {
                *u |= *o;
            }
        };
        match node {
            ScalarNode::Param(p) => used[*p] = true,
            ScalarNode::Binary { a, b, .. } => {
                take(*a, &out);
                take(*b, &out);
            }
            ScalarNode::Unary { a, .. } => take(*a, &out),
            ScalarNode::Select { cond, a, b } => {
                for k in [*cond, *a, *b] {
                    take(k, &out);
                }
            }
            ScalarNode::Load { indices, .. } => {
                for k in indices {
                    take(*k, &out);
                }
            }
            _ => {}
        }
        out.push(used);
    }
    out
}

/// How one axis of a read is turned around.
enum AxisRule {
    /// The index is `sign · arg_p + rest`: `arg_p = sign · (j - rest)`.
    Solve { param: usize, sign: i64, rest: Affine },
    /// Any other index: element j receives where the (clamped) index equals j.
    Match,
}

impl Deriv<'_> {
    /// Passes the gradient `g` of `this = tabulate f` back to every parameter-dependent tensor
    /// that `f` reads.
    pub(super) fn tabulate_backward(&mut self, this: ValueId, f: &ScalarFn, g: ValueId) -> Result<(), GradError> {
        let out_dims = self.fwd.ty(this).dims.clone();
        self.reads_backward(f, &out_dims, g)
    }

    /// Passes `g`, the gradient of `f`'s values over the index space `out_dims`, back to every
    /// parameter-dependent tensor that `f` reads.
    pub(super) fn reads_backward(&mut self, f: &ScalarFn, out_dims: &[Dim], g: ValueId) -> Result<(), GradError> {
        let out_dims = out_dims.to_vec();
        let affine = affine_nodes(f);
        let guards = guards(f);
        let used = arguments_used(f);
        for (k, (node, ty)) in f.nodes.iter().enumerate() {
            let ScalarNode::Load { tensor, indices } = node else { continue };
            if *ty != ScalarType::F32 || !self.needs[tensor.0 as usize] {
                continue;
            }
            let Some(conditions) = &guards[k] else { continue };
            let df = match derivative(f, |n, _| n == k) {
                Ok(Some(df)) => df,
                Ok(None) => {
                    let mut one = f.clone();
                    one.nodes.push((ScalarNode::F32(1.0), ScalarType::F32));
                    one.result = one.nodes.len() - 1;
                    one
                }
                Err(why) => return self.fail(format!("cannot differentiate this `tabulate`: {why}"), ""),
            };
            let facts = facts(f, &affine, conditions, &out_dims);
            let x_dims = self.fwd.ty(*tensor).dims.clone();
            let rules = axis_rules(indices, &affine, &used, &out_dims, &x_dims, &facts);
            let grad = self.turned_around(&df, k, &rules, &out_dims, &x_dims, g);
            self.accumulate(*tensor, grad);
        }
        Ok(())
    }

    /// The gradient that the read at node `k` of `f` (whose derivative `df` is) passes back:
    /// a tabulate over x's elements and the arguments left over, summed over the latter.
    fn turned_around(&mut self, df: &ScalarFn, k: usize, rules: &[AxisRule], out_dims: &[Dim], x_dims: &[Dim], g: ValueId) -> ValueId {
        let ScalarNode::Load { indices, .. } = &df.nodes[k].0 else {
            unreachable!()
        };
        let solved: Vec<Option<usize>> = (0..out_dims.len())
            .map(|p| rules.iter().position(|r| matches!(r, AxisRule::Solve { param, .. } if *param == p)))
            .collect();
        // The arguments summed over; one of length 1 is just 0.
        let free: Vec<usize> = (0..out_dims.len())
            .filter(|p| solved[*p].is_none() && out_dims[*p] != Dim::Static(1))
            .collect();
        let rank = x_dims.len();
        let mut b = ScalarBuilder::new(rank + free.len());
        let mut args: Vec<Option<usize>> = vec![None; out_dims.len()];
        for (n, p) in free.iter().enumerate() {
            args[*p] = Some(rank + n);
        }
        for (p, arg) in args.iter_mut().enumerate() {
            if arg.is_none() && solved[p].is_none() {
                *arg = Some(b.int(0));
            }
        }
        let mut conds = Vec::new();
        for (axis, rule) in rules.iter().enumerate() {
            if let AxisRule::Solve { param, sign, rest } = rule {
                let rest = build_affine(&mut b, rest, &args);
                let v = if *sign == 1 {
                    b.binary(ScalarBinary::Sub, axis, rest, ScalarType::Int)
                } else {
                    b.binary(ScalarBinary::Sub, rest, axis, ScalarType::Int)
                };
                let zero = b.int(0);
                let len = build_dim(&mut b, out_dims[*param]);
                conds.push(b.binary(ScalarBinary::Ge, v, zero, ScalarType::Bool));
                conds.push(b.binary(ScalarBinary::Lt, v, len, ScalarType::Bool));
                args[*param] = Some(v);
            }
        }
        let args: Vec<usize> = args.into_iter().map(|a| a.expect("every argument has a value")).collect();
        let mut roots = indices.clone();
        roots.push(df.result);
        let map = copy_nodes(&mut b, df, &args, &roots);
        for (axis, rule) in rules.iter().enumerate() {
            if let AxisRule::Match = rule {
                let zero = b.int(0);
                let last = build_dim(&mut b, x_dims[axis]);
                let one = b.int(1);
                let last = b.binary(ScalarBinary::Sub, last, one, ScalarType::Int);
                let low = b.binary(ScalarBinary::Max, map[indices[axis]], zero, ScalarType::Int);
                let clamped = b.binary(ScalarBinary::Min, low, last, ScalarType::Int);
                conds.push(b.binary(ScalarBinary::Eq, axis, clamped, ScalarType::Bool));
            }
        }
        let upstream = b.load(g, args.clone());
        let value = b.binary(ScalarBinary::Mul, upstream, map[df.result], ScalarType::F32);
        let zero = b.float(0.0);
        let result = match conds.split_first() {
            None => value,
            Some((first, rest)) => {
                let all = rest
                    .iter()
                    .fold(*first, |acc, c| b.binary(ScalarBinary::And, acc, *c, ScalarType::Bool));
                b.select(all, value, zero)
            }
        };
        let mut dims = x_dims.to_vec();
        dims.extend(free.iter().map(|p| out_dims[*p]));
        let mut grad = self.tabulate(dims, b.finish(result));
        for _ in &free {
            let axis = self.out.ty(grad).rank() - 1;
            grad = self.push(Op::Reduce {
                op: ReduceOp::Sum,
                x: grad,
                axis,
                keepdim: false,
            });
        }
        grad
    }
}

/// For each axis of a read, how it is turned around (see [`AxisRule`]).
fn axis_rules(
    indices: &[usize],
    affine: &[Option<Affine>],
    used: &[Vec<bool>],
    out_dims: &[Dim],
    x_dims: &[Dim],
    facts: &[(Affine, i64)],
) -> Vec<AxisRule> {
    let rank = out_dims.len();
    // An argument can be solved for on an axis whose index is the only affine one that uses
    // it. An index that is not affine (`logits[b, t, target[b, t]]`'s last) may use it too:
    // it is matched by comparison, computed from the solved arguments.
    let axes_using = |p: usize| indices.iter().filter(|i| used[**i][p] && affine[**i].is_some()).count();
    let size = |d: Dim| match d {
        Dim::Symbol(_) => i64::MAX,
        Dim::Static(n) => n,
    };
    indices
        .iter()
        .enumerate()
        .map(|(axis, i)| {
            let Some(e) = &affine[*i] else { return AxisRule::Match };
            // The index stays inside x wherever the read counts: e >= 0 and len - 1 - e >= 0.
            let last = Affine::dim(rank, x_dims[axis]).plus(&Affine::constant(rank, -1));
            if !e.provably_non_negative(out_dims, facts) || !last.minus(e).provably_non_negative(out_dims, facts) {
                return AxisRule::Match;
            }
            let best = (0..rank)
                .filter(|p| e.params[*p].abs() == 1 && axes_using(*p) == 1)
                .max_by_key(|p| size(out_dims[*p]));
            match best {
                Some(p) => {
                    let sign = e.params[p];
                    let mut rest = e.clone();
                    rest.params[p] = 0;
                    AxisRule::Solve { param: p, sign, rest }
                }
                None => AxisRule::Match,
            }
        })
        .collect()
}

/// Nodes computing `a`, with argument p's value at node `args[p]`.
fn build_affine(b: &mut ScalarBuilder, a: &Affine, args: &[Option<usize>]) -> usize {
    let mut acc = b.int(a.constant);
    for (p, c) in a.params.iter().enumerate() {
        if *c != 0 {
            let k = b.int(*c);
            let arg = args[p].expect("an offset reads only arguments summed over");
            let term = b.binary(ScalarBinary::Mul, k, arg, ScalarType::Int);
            acc = b.binary(ScalarBinary::Add, acc, term, ScalarType::Int);
        }
    }
    for (s, c) in &a.symbols {
        let k = b.int(*c);
        let sym = b.add(ScalarNode::Symbol(SymbolId(*s)), ScalarType::Int);
        let term = b.binary(ScalarBinary::Mul, k, sym, ScalarType::Int);
        acc = b.binary(ScalarBinary::Add, acc, term, ScalarType::Int);
    }
    acc
}

fn build_dim(b: &mut ScalarBuilder, d: Dim) -> usize {
    match d {
        Dim::Static(n) => b.int(n),
        Dim::Symbol(s) => b.add(ScalarNode::Symbol(s), ScalarType::Int),
    }
}

/// Copies the nodes of `f` that `roots` read into `b`, argument p becoming node `args[p]`;
/// returns where each copied node went (unread ones map to 0).
fn copy_nodes(b: &mut ScalarBuilder, f: &ScalarFn, args: &[usize], roots: &[usize]) -> Vec<usize> {
    let mut live = vec![false; f.nodes.len()];
    for r in roots {
        live[*r] = true;
    }
    for k in (0..f.nodes.len()).rev() {
        if !live[k] {
            continue;
        }
        let operands: Vec<usize> = match &f.nodes[k].0 {
            ScalarNode::Binary { a, b, .. } => vec![*a, *b],
            ScalarNode::Unary { a, .. } => vec![*a],
            ScalarNode::Select { cond, a, b } => vec![*cond, *a, *b],
            ScalarNode::Load { indices, .. } => indices.clone(),
            _ => vec![],
        };
        for o in operands {
            live[o] = true;
        }
    }
    let mut map = vec![0; f.nodes.len()];
    for (k, (node, ty)) in f.nodes.iter().enumerate() {
        if !live[k] {
            continue;
        }
        let m = |i: &usize| map[*i];
        map[k] = match node {
            ScalarNode::Param(p) => args[*p],
            ScalarNode::Binary { op, a, b: c } => b.binary(*op, m(a), m(c), *ty),
            ScalarNode::Unary { op, a } => b.add(ScalarNode::Unary { op: *op, a: m(a) }, *ty),
            ScalarNode::Select { cond, a, b: c } => b.add(
                ScalarNode::Select {
                    cond: m(cond),
                    a: m(a),
                    b: m(c),
                },
                *ty,
            ),
            ScalarNode::Load { tensor, indices } => b.load_as(*tensor, indices.iter().map(m).collect(), *ty),
            other => b.add(other.clone(), *ty),
        };
    }
    map
}
