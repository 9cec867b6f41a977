//! Derivatives of index functions (scalar functions evaluated per element).

use crate::ir::*;

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
    derivative(f, |_, node| *node == ScalarNode::Param(0))
}

/// The derivative of `f` by the value of the nodes `seed` picks (forward mode: each node's
/// derivative is built after it), as `f` with the derivative's nodes appended and its result
/// moved to the derivative; `None` where it is 1 everywhere.
pub fn derivative(f: &ScalarFn, seed: impl Fn(usize, &ScalarNode) -> bool) -> Result<Option<ScalarFn>, String> {
    let mut out = f.clone();
    let mut terms: Vec<Term> = Vec::with_capacity(f.nodes.len());
    let add = |out: &mut ScalarFn, node: ScalarNode| {
        out.nodes.push((node, ScalarType::F32));
        out.nodes.len() - 1
    };
    let binary = |out: &mut ScalarFn, op: ScalarBinary, a: usize, b: usize| add(out, ScalarNode::Binary { op, a, b });
    let materialise = |out: &mut ScalarFn, t: Term| match t {
        Term::Zero => add(out, ScalarNode::F32(0.0)),
        Term::One => add(out, ScalarNode::F32(1.0)),
        Term::Node(n) => n,
    };
    // `x op y` of two terms, neither of which folds away.
    let combine = |out: &mut ScalarFn, op: ScalarBinary, x: Term, y: Term| -> Term {
        let (x, y) = (materialise(out, x), materialise(out, y));
        Term::Node(binary(out, op, x, y))
    };
    let mul = |out: &mut ScalarFn, a: usize, t: Term| -> Term {
        match t {
            Term::Zero => Term::Zero,
            Term::One => Term::Node(a),
            Term::Node(n) => Term::Node(binary(out, ScalarBinary::Mul, a, n)),
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
    let not_differentiated = |op: String| Err(format!("`{}` is not differentiated in an index function", op.to_lowercase()));
    for (k, (node, _)) in f.nodes.iter().enumerate() {
        let t = match *node {
            _ if seed(k, node) => Term::One,
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
                    // A comparison is piecewise constant: no gradient flows through a choice.
                    ScalarBinary::Lt
                    | ScalarBinary::Le
                    | ScalarBinary::Gt
                    | ScalarBinary::Ge
                    | ScalarBinary::Eq
                    | ScalarBinary::Ne
                    | ScalarBinary::And
                    | ScalarBinary::Or
                    | ScalarBinary::Hash => Term::Zero,
                    ScalarBinary::Add => match (da, db) {
                        (t, Term::Zero) | (Term::Zero, t) => t,
                        (x, y) => combine(&mut out, ScalarBinary::Add, x, y),
                    },
                    ScalarBinary::Sub => match (da, db) {
                        (t, Term::Zero) => t,
                        (Term::Zero, t) => neg(&mut out, t),
                        (x, y) => combine(&mut out, ScalarBinary::Sub, x, y),
                    },
                    ScalarBinary::Mul => {
                        let l = mul(&mut out, b, da);
                        let r = mul(&mut out, a, db);
                        match (l, r) {
                            (t, Term::Zero) | (Term::Zero, t) => t,
                            (x, y) => combine(&mut out, ScalarBinary::Add, x, y),
                        }
                    }
                    ScalarBinary::Div if db == Term::Zero => {
                        let d = materialise(&mut out, da);
                        Term::Node(binary(&mut out, ScalarBinary::Div, d, b))
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
                    ScalarBinary::Div => {
                        // (da - (a / b) · db) / b, where node k is a / b.
                        let q = mul(&mut out, k, db);
                        let n = combine(&mut out, ScalarBinary::Sub, da, q);
                        let n = materialise(&mut out, n);
                        Term::Node(binary(&mut out, ScalarBinary::Div, n, b))
                    }
                    _ => return not_differentiated(format!("{op:?}")),
                }
            }
            ScalarNode::Unary { op, a } => {
                let da = terms[a];
                match op {
                    _ if da == Term::Zero => Term::Zero,
                    ScalarUnary::Neg => neg(&mut out, da),
                    ScalarUnary::Exp => mul(&mut out, k, da),
                    ScalarUnary::Log => {
                        let d = materialise(&mut out, da);
                        Term::Node(binary(&mut out, ScalarBinary::Div, d, a))
                    }
                    ScalarUnary::ToFloat | ScalarUnary::ToInt | ScalarUnary::Not | ScalarUnary::Unit => Term::Zero,
                    _ => return not_differentiated(format!("{op:?}")),
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

/// Whether node `node` of `f` depends on argument `param`.
pub fn reads_param(f: &ScalarFn, node: usize, param: usize) -> bool {
    let mut reads = vec![false; node + 1];
    for (k, (n, _)) in f.nodes.iter().enumerate().take(node + 1) {
        reads[k] = match n {
            ScalarNode::Param(p) => *p == param,
            ScalarNode::Binary { a, b, .. } => reads[*a] || reads[*b],
            ScalarNode::Unary { a, .. } => reads[*a],
            ScalarNode::Select { cond, a, b } => reads[*cond] || reads[*a] || reads[*b],
            ScalarNode::Load { indices, .. } => indices.iter().any(|i| reads[*i]),
            _ => false,
        };
    }
    reads[node]
}
