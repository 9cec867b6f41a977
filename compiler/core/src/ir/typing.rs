//! The typing rules: the type each op gives its result, from its operands' types. The checker
//! types nodes with them, and [`Graph::verify`](super::Graph::verify) re-checks every node.

use super::*;
use lmc_abi::DType;

/// The types the typing rules give an op, or `None` for ops whose type is declared (params,
/// inputs). Used by the checker and by [`Graph::verify`].
pub fn infer_type(g: &Graph, op: &Op) -> Option<TensorType> {
    Some(match op {
        Op::Param(_) | Op::Input(_) | Op::Carry(_) => return None,
        Op::Constant(_) => TensorType::new(DType::F32, vec![]),
        Op::Arange(d) => TensorType::new(DType::I64, vec![*d]),
        Op::Gather { table, indices } => {
            let t = g.ty(*table);
            let mut dims = g.ty(*indices).dims.clone();
            dims.extend_from_slice(t.dims.get(1..)?);
            TensorType::new(t.dtype, dims)
        }
        Op::Binary { lhs, rhs, .. } => TensorType::new(DType::F32, broadcast(&g.ty(*lhs).dims, &g.ty(*rhs).dims).ok()?),
        Op::Unary { x, .. } => g.ty(*x).clone(),
        Op::ToFloat { x } => TensorType::new(DType::F32, g.ty(*x).dims.clone()),
        Op::SplitHeads { x, heads } => {
            let t = g.ty(*x);
            let r = t.rank();
            let Dim::Static(c) = *t.dims.get(r.checked_sub(1)?)? else {
                return None;
            };
            if r < 2 || *heads <= 0 || c % heads != 0 {
                return None;
            }
            let mut dims = t.dims[..r - 2].to_vec();
            dims.extend([Dim::Static(*heads), t.dims[r - 2], Dim::Static(c / heads)]);
            TensorType::new(DType::F32, dims)
        }
        Op::MergeHeads { x } => {
            let t = g.ty(*x);
            let r = t.rank();
            if r < 3 {
                return None;
            }
            let (Dim::Static(h), Dim::Static(d)) = (t.dims[r - 3], t.dims[r - 1]) else {
                return None;
            };
            let mut dims = t.dims[..r - 3].to_vec();
            dims.extend([t.dims[r - 2], Dim::Static(h * d)]);
            TensorType::new(DType::F32, dims)
        }
        Op::Tabulate { .. } => return None,
        Op::Slice { x, axis, start, length } => {
            let mut t = g.ty(*x).clone();
            match t.dims.get(*axis)? {
                Dim::Static(n) if *start >= 0 && *length > 0 && start + length <= *n => {}
                _ => return None,
            }
            t.dims[*axis] = Dim::Static(*length);
            t
        }
        Op::Concat { parts, axis } => {
            let mut t = g.ty(*parts.first()?).clone();
            let mut length = 0;
            for p in parts {
                let pt = g.ty(*p);
                let same_elsewhere =
                    pt.rank() == t.rank() && pt.dims.iter().zip(&t.dims).enumerate().all(|(k, (x, y))| k == *axis || x == y);
                match pt.dims.get(*axis)? {
                    Dim::Static(n) if pt.dtype == t.dtype && same_elsewhere => length += n,
                    _ => return None,
                }
            }
            t.dims[*axis] = Dim::Static(length);
            t
        }
        Op::WriteRows { base, rows, axis, at } | Op::WriteRing { base, rows, axis, at } => {
            let (b, r) = (g.ty(*base), g.ty(*rows));
            let same_elsewhere = b.rank() == r.rank() && b.dims.iter().zip(&r.dims).enumerate().all(|(k, (x, y))| k == *axis || x == y);
            if *axis >= b.rank() || b.dtype != r.dtype || !same_elsewhere || g.ty(*at) != &TensorType::new(DType::I64, vec![]) {
                return None;
            }
            b.clone()
        }
        Op::Attention { q, v, .. } => {
            let (q, v) = (g.ty(*q), g.ty(*v));
            if q.rank() != 4 || v.rank() != 4 {
                return None;
            }
            TensorType::new(DType::F32, vec![q.dims[0], q.dims[1], q.dims[2], v.dims[3]])
        }
        Op::Reduce { x, axis, keepdim, .. } => {
            let mut dims = g.ty(*x).dims.clone();
            if *axis >= dims.len() {
                return None;
            }
            if *keepdim {
                dims[*axis] = Dim::Static(1);
            } else {
                dims.remove(*axis);
            }
            TensorType::new(DType::F32, dims)
        }
        Op::Transpose { x } => {
            let mut t = g.ty(*x).clone();
            let r = t.rank();
            if r < 2 {
                return None;
            }
            t.dims.swap(r - 1, r - 2);
            t
        }
        Op::MatMul { lhs, rhs } => {
            let (a, b) = (g.ty(*lhs), g.ty(*rhs));
            if a.rank() < 2 || b.rank() != 2 {
                return None;
            }
            let mut dims = a.dims.clone();
            *dims.last_mut().unwrap() = b.dims[1];
            TensorType::new(DType::F32, dims)
        }
        Op::MatMulTN { lhs, rhs } => {
            let (a, b) = (g.ty(*lhs), g.ty(*rhs));
            let r = a.rank();
            if r < 2 || b.rank() != r || a.dims[..r - 1] != b.dims[..r - 1] {
                return None;
            }
            TensorType::new(DType::F32, vec![a.dims[r - 1], b.dims[r - 1]])
        }
        Op::ScatterAdd { indices, values, rows } => {
            let (i, v) = (g.ty(*indices), g.ty(*values));
            if i.dtype != DType::I64 || v.dtype != DType::F32 || v.rank() <= i.rank() || v.dims[..i.rank()] != i.dims[..] {
                return None;
            }
            let mut dims = vec![*rows];
            dims.extend_from_slice(&v.dims[i.rank()..]);
            TensorType::new(DType::F32, dims)
        }
        Op::AttentionLse { q, .. } => {
            let q = g.ty(*q);
            if q.rank() != 4 {
                return None;
            }
            TensorType::new(DType::F32, q.dims[..3].to_vec())
        }
        Op::AttentionGrad(a) => {
            let (q, k, v) = (g.ty(a.q), g.ty(a.k), g.ty(a.v));
            if q.rank() != 4 || k.rank() != 4 || v.rank() != 4 {
                return None;
            }
            match a.wrt {
                AttentionInput::Query => q.clone(),
                AttentionInput::Key => k.clone(),
                AttentionInput::Value => v.clone(),
                AttentionInput::Score => TensorType::new(DType::F32, vec![q.dims[0], q.dims[1], q.dims[2], k.dims[2]]),
            }
        }
        // A body argument's type comes from its scan, which `Graph::verify` checks.
        Op::ScanArg(_) => return None,
        Op::Scan(_) => TensorType::new(DType::F32, vec![]),
        Op::ScanResult { scan, index } => {
            let Op::Scan(s) = &g.node(*scan).op else { return None };
            match s.outputs.get(*index) {
                Some(out) => {
                    let mut t = g.ty(*out).clone();
                    let length = *g.ty(*s.xs.first()?).dims.get(s.axis)?;
                    if s.axis > t.rank() {
                        return None;
                    }
                    t.dims.insert(s.axis, length);
                    t
                }
                None => g.ty(*s.init.get(index - s.outputs.len())?).clone(),
            }
        }
    })
}

/// Numpy broadcasting of two shapes, right-aligned. `Err` carries the first clashing pair.
pub fn broadcast(a: &[Dim], b: &[Dim]) -> Result<Vec<Dim>, (Dim, Dim)> {
    let rank = a.len().max(b.len());
    let mut out = Vec::with_capacity(rank);
    for i in 0..rank {
        let da = (i + a.len()).checked_sub(rank).map(|j| a[j]);
        let db = (i + b.len()).checked_sub(rank).map(|j| b[j]);
        out.push(match (da, db) {
            (Some(x), None) | (None, Some(x)) => x,
            (Some(x), Some(y)) if x == y => x,
            (Some(Dim::Static(1)), Some(y)) => y,
            (Some(x), Some(Dim::Static(1))) => x,
            (Some(x), Some(y)) => return Err((x, y)),
            (None, None) => unreachable!(),
        });
    }
    Ok(out)
}
