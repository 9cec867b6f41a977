//! A reference interpreter of the IR, used only by tests: it states each op's meaning as plain
//! loops, and the compiled code is compared against it (differential tests). `lmc run` never
//! uses it.

use crate::ir::{
    AttentionGrad, AttentionInput, BinaryOp, Dim, Graph, Op, ReduceOp, ScalarBinary, ScalarFn, ScalarNode, ScalarUnary, Scan, UnaryOp,
    ValueId,
};
use lmc_abi::DType;

/// A dense row-major tensor.
#[derive(Debug, Clone, PartialEq)]
pub struct Tensor {
    pub shape: Vec<usize>,
    pub data: Data,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Data {
    F32(Vec<f32>),
    /// i64 and i32 tensors alike.
    Int(Vec<i64>),
}

impl Tensor {
    pub fn f32(shape: Vec<usize>, values: Vec<f32>) -> Tensor {
        Tensor {
            shape,
            data: Data::F32(values),
        }
    }

    pub fn int(shape: Vec<usize>, values: Vec<i64>) -> Tensor {
        Tensor {
            shape,
            data: Data::Int(values),
        }
    }

    pub fn floats(&self) -> &[f32] {
        match &self.data {
            Data::F32(v) => v,
            Data::Int(_) => panic!("the checker guarantees an f32 operand here"),
        }
    }
}

fn strides(shape: &[usize]) -> Vec<usize> {
    let mut s = vec![1; shape.len()];
    for i in (0..shape.len().saturating_sub(1)).rev() {
        s[i] = s[i + 1] * shape[i + 1];
    }
    s
}

/// Calls `f` with every multi-index of `shape`, in row-major order.
/// The value of an integer scalar (a position).
fn int_scalar(t: &Tensor) -> i64 {
    match &t.data {
        Data::Int(a) => a[0],
        Data::F32(_) => unreachable!("the checker makes positions integer scalars"),
    }
}

/// `base` with each row r of `rows` (along `axis`, in order, so a later row that lands on the
/// same entry replaces an earlier one) written at entry `entry(r)`.
fn write_rows(base: &Tensor, rows: &Tensor, axis: usize, entry: impl Fn(i64) -> usize) -> Tensor {
    let mut out = base.clone();
    let so = strides(&out.shape);
    // `for_each_index` walks the rows in their row-major order: `src` counts along.
    let mut src = 0;
    for_each_index(&rows.shape, |i| {
        let dst: usize = i
            .iter()
            .zip(&so)
            .enumerate()
            .map(|(d, (x, st))| if d == axis { entry(*x as i64) * st } else { x * st })
            .sum();
        match (&mut out.data, &rows.data) {
            (Data::F32(o), Data::F32(x)) => o[dst] = x[src],
            (Data::Int(o), Data::Int(x)) => o[dst] = x[src],
            _ => unreachable!("the checker gives base and rows one dtype"),
        }
        src += 1;
    });
    out
}

fn for_each_index(shape: &[usize], mut f: impl FnMut(&[usize])) {
    if shape.contains(&0) {
        return;
    }
    let mut idx = vec![0; shape.len()];
    loop {
        f(&idx);
        let mut k = shape.len();
        loop {
            if k == 0 {
                return;
            }
            k -= 1;
            idx[k] += 1;
            if idx[k] < shape[k] {
                break;
            }
            idx[k] = 0;
        }
    }
}

/// Offset in `t` of the output index `out`, broadcasting `t` from the right.
fn broadcast_offset(t: &Tensor, out: &[usize]) -> usize {
    let st = strides(&t.shape);
    let skip = out.len() - t.shape.len();
    t.shape
        .iter()
        .enumerate()
        .map(|(j, &n)| if n == 1 { 0 } else { out[j + skip] * st[j] })
        .sum()
}

/// erf, Abramowitz & Stegun 7.1.26 in f64 (|error| < 1.5e-7), enough to check f32 code.
fn erf(x: f64) -> f64 {
    let t = 1.0 / (1.0 + 0.3275911 * x.abs());
    let y = 1.0 - (((((1.061405429 * t - 1.453152027) * t) + 1.421413741) * t - 0.284496736) * t + 0.254829592) * t * (-x * x).exp();
    y.copysign(x)
}

/// Evaluates a graph. Symbols are bound from the inputs' shapes.
pub fn evaluate(g: &Graph, params: &[Tensor], inputs: &[Tensor]) -> Vec<Tensor> {
    evaluate_carrying(g, params, inputs, &[])
}

/// [`evaluate`] for a graph that carries outputs from call to call ([`Op::Carry`]): `carried`
/// holds, by output index, the values they had when the call began.
pub fn evaluate_carrying(g: &Graph, params: &[Tensor], inputs: &[Tensor], carried: &[(usize, Tensor)]) -> Vec<Tensor> {
    let mut run = Run {
        g,
        params,
        inputs,
        carried,
        regions: g.enclosing_scans(),
        values: vec![Tensor::f32(vec![], vec![]); g.nodes.len()],
    };
    for i in 0..g.nodes.len() {
        if run.regions[i].is_none() {
            run.node(i);
        }
    }
    g.outputs.iter().map(|(_, id)| run.values[id.0 as usize].clone()).collect()
}

/// One evaluation: every node's value, where body nodes hold their latest step's.
struct Run<'a> {
    g: &'a Graph,
    params: &'a [Tensor],
    inputs: &'a [Tensor],
    carried: &'a [(usize, Tensor)],
    regions: Vec<Option<ValueId>>,
    values: Vec<Tensor>,
}

impl Run<'_> {
    fn dim(&self, d: Dim) -> usize {
        match d {
            Dim::Static(n) => n as usize,
            Dim::Symbol(s) => {
                let (input, axis) = self.g.symbols[s.0 as usize].source;
                self.inputs[input].shape[axis]
            }
        }
    }

    /// Evaluates node `i` (a scan runs its whole body) and stores its value.
    fn node(&mut self, i: usize) {
        let g = self.g;
        let result = match &g.nodes[i].op {
            // Set by the scan before each step.
            Op::ScanArg(_) => return,
            Op::Scan(s) => {
                let results = self.scan(i, s);
                for (k, r) in results.into_iter().enumerate() {
                    self.values[i + 1 + k] = r;
                }
                return;
            }
            // Stored by their scan.
            Op::ScanResult { .. } => return,
            _ => self.plain(i),
        };
        self.values[i] = result;
    }

    /// Runs a scan's body once per step; returns the stacked outputs, then the final states.
    fn scan(&mut self, i: usize, s: &Scan) -> Vec<Tensor> {
        let length = self.values[s.xs[0].0 as usize].shape[s.axis];
        let mut states: Vec<Tensor> = s.init.iter().map(|id| self.values[id.0 as usize].clone()).collect();
        let mut steps: Vec<Vec<Tensor>> = vec![Vec::new(); s.outputs.len()];
        let start = s.body_start.0 as usize;
        let order: Vec<usize> = if s.reverse {
            (0..length).rev().collect()
        } else {
            (0..length).collect()
        };
        for &t in &order {
            for (k, state) in states.iter().enumerate() {
                self.values[start + k] = state.clone();
            }
            for (k, x) in s.xs.iter().enumerate() {
                self.values[start + s.init.len() + k] = take(&self.values[x.0 as usize], s.axis, t);
            }
            for j in start..i {
                if self.regions[j] == Some(ValueId(i as u32)) {
                    self.node(j);
                }
            }
            states = s.next.iter().map(|id| self.values[id.0 as usize].clone()).collect();
            for (k, out) in s.outputs.iter().enumerate() {
                steps[k].push(self.values[out.0 as usize].clone());
            }
        }
        if s.reverse {
            steps.iter_mut().for_each(|parts| parts.reverse());
        }
        let mut results: Vec<Tensor> = s
            .outputs
            .iter()
            .zip(steps)
            .map(|(out, parts)| {
                let mut shape: Vec<usize> = self.g.ty(*out).dims.iter().map(|&d| self.dim(d)).collect();
                shape.insert(s.axis, length);
                stack(parts, s.axis, shape)
            })
            .collect();
        results.extend(states);
        results
    }

    /// The value of a node that is not part of a scan's structure.
    fn plain(&self, i: usize) -> Tensor {
        let (g, params, inputs, values) = (self.g, self.params, self.inputs, &self.values);
        let node = &g.nodes[i];
        let dim = |d: Dim| self.dim(d);
        let shape: Vec<usize> = node.ty.dims.iter().map(|&d| dim(d)).collect();
        let v = |id: ValueId| &values[id.0 as usize];
        let symbols: Vec<i64> = (0..g.symbols.len())
            .map(|k| dim(Dim::Symbol(crate::ir::SymbolId(k as u32))) as i64)
            .collect();
        let result = match &node.op {
            Op::Param(i) => params[*i].clone(),
            Op::Input(i) => inputs[*i].clone(),
            Op::Carry(k) => match self.carried.iter().find(|(o, _)| o == k) {
                Some((_, t)) => t.clone(),
                None => panic!("output {k} is carried but no value was given for it"),
            },
            Op::Constant(c) => Tensor::f32(vec![], vec![*c as f32]),
            Op::Arange(_) => Tensor::int(shape.clone(), (0..shape[0] as i64).collect()),
            Op::Gather { table, indices } => {
                let (t, ix) = (v(*table), v(*indices));
                let Data::Int(ids) = &ix.data else { panic!("indices are integers") };
                let row: usize = t.shape[1..].iter().product();
                let rows = t.shape[0] as i64;
                let mut out = Vec::with_capacity(ids.len() * row);
                for &id in ids {
                    let r = id.clamp(0, rows - 1) as usize;
                    out.extend_from_slice(&t.floats()[r * row..(r + 1) * row]);
                }
                Tensor::f32(shape.clone(), out)
            }
            Op::Binary { op, lhs, rhs } => {
                let (a, b) = (v(*lhs), v(*rhs));
                let mut out = Vec::new();
                for_each_index(&shape, |i| {
                    let (x, y) = (a.floats()[broadcast_offset(a, i)], b.floats()[broadcast_offset(b, i)]);
                    out.push(match op {
                        BinaryOp::Add => x + y,
                        BinaryOp::Sub => x - y,
                        BinaryOp::Mul => x * y,
                        BinaryOp::Div => x / y,
                        BinaryOp::Max => x.max(y),
                        BinaryOp::Min => x.min(y),
                        BinaryOp::Pow => x.powf(y),
                    });
                });
                Tensor::f32(shape.clone(), out)
            }
            Op::Unary { op, x } => {
                let out = v(*x)
                    .floats()
                    .iter()
                    .map(|&a| match op {
                        UnaryOp::Neg => -a,
                        UnaryOp::Detach => a,
                        UnaryOp::Sqrt => a.sqrt(),
                        UnaryOp::Rsqrt => 1.0 / a.sqrt(),
                        UnaryOp::Exp => a.exp(),
                        UnaryOp::Log => a.ln(),
                        UnaryOp::Abs => a.abs(),
                        UnaryOp::Tanh => a.tanh(),
                        UnaryOp::Erf => erf(a as f64) as f32,
                        UnaryOp::Sin => a.sin(),
                        UnaryOp::Cos => a.cos(),
                        UnaryOp::Sigmoid => 1.0 / (1.0 + (-a).exp()),
                        UnaryOp::Relu => a.max(0.0),
                        UnaryOp::Silu => a / (1.0 + (-a).exp()),
                        UnaryOp::Gelu => (a as f64 * 0.5 * (1.0 + erf(a as f64 / std::f64::consts::SQRT_2))) as f32,
                    })
                    .collect();
                Tensor::f32(shape.clone(), out)
            }
            Op::Reduce { op, x, axis, .. } => {
                let t = v(*x);
                let n = t.shape[*axis];
                let mut reduced_shape = t.shape.clone();
                reduced_shape[*axis] = 1;
                let st = strides(&t.shape);
                let mut out = Vec::new();
                for_each_index(&reduced_shape, |i| {
                    let base: usize = i.iter().zip(&st).map(|(a, b)| a * b).sum();
                    let elements = (0..n).map(|k| t.floats()[base + k * st[*axis]]);
                    out.push(match op {
                        ReduceOp::Sum => elements.sum(),
                        ReduceOp::Mean => elements.sum::<f32>() / n as f32,
                        ReduceOp::Max => elements.fold(f32::NEG_INFINITY, f32::max),
                    });
                });
                Tensor::f32(shape.clone(), out)
            }
            Op::SplitHeads { x, heads } => {
                let t = v(*x);
                let r = t.shape.len();
                let (seq, c) = (t.shape[r - 2], t.shape[r - 1]);
                let d = c / *heads as usize;
                let mut out = Vec::new();
                for_each_index(&shape, |i| {
                    let n = i.len();
                    let (h, s, e) = (i[n - 3], i[n - 2], i[n - 1]);
                    let lead: usize = i[..n - 3].iter().zip(strides(&t.shape[..r - 2])).map(|(a, b)| a * b).sum::<usize>() * seq * c;
                    out.push(t.floats()[lead + s * c + h * d + e]);
                });
                Tensor::f32(shape.clone(), out)
            }
            Op::MergeHeads { x } => {
                let t = v(*x);
                let st = strides(&t.shape);
                let d = t.shape[t.shape.len() - 1];
                let mut out = Vec::new();
                for_each_index(&shape, |i| {
                    let n = i.len();
                    let (s, c) = (i[n - 2], i[n - 1]);
                    let mut src: Vec<usize> = i[..n - 2].to_vec();
                    src.extend([c / d, s, c % d]);
                    out.push(t.floats()[src.iter().zip(&st).map(|(a, b)| a * b).sum::<usize>()]);
                });
                Tensor::f32(shape.clone(), out)
            }
            Op::Slice { x, axis, start, .. } => {
                let t = v(*x);
                let st = strides(&t.shape);
                let mut out = Vec::new();
                for_each_index(&shape, |i| {
                    let mut src = i.to_vec();
                    src[*axis] += *start as usize;
                    out.push(t.floats()[src.iter().zip(&st).map(|(a, b)| a * b).sum::<usize>()]);
                });
                Tensor::f32(shape.clone(), out)
            }
            Op::Concat { parts, axis } => {
                // Each output element from the part whose range of `axis` holds it.
                let mut starts = Vec::new();
                let mut start = 0;
                for p in parts {
                    starts.push(start);
                    start += v(*p).shape[*axis];
                }
                let (mut floats, mut ints) = (Vec::new(), Vec::new());
                for_each_index(&shape, |i| {
                    let k = starts.iter().rposition(|s| *s <= i[*axis]).unwrap_or(0);
                    let t = v(parts[k]);
                    let mut src = i.to_vec();
                    src[*axis] -= starts[k];
                    let at = src.iter().zip(strides(&t.shape)).map(|(a, b)| a * b).sum::<usize>();
                    match &t.data {
                        Data::F32(x) => floats.push(x[at]),
                        Data::Int(x) => ints.push(x[at]),
                    }
                });
                if ints.is_empty() {
                    Tensor::f32(shape.clone(), floats)
                } else {
                    Tensor::int(shape.clone(), ints)
                }
            }
            Op::WriteRows { base, rows, axis, at } => {
                let (len, n) = (v(*base).shape[*axis] as i64, v(*rows).shape[*axis] as i64);
                let start = int_scalar(v(*at)).clamp(0, (len - n).max(0));
                write_rows(v(*base), v(*rows), *axis, |r| (start + r) as usize)
            }
            Op::WriteRing { base, rows, axis, at } => {
                let len = v(*base).shape[*axis] as i64;
                let start = int_scalar(v(*at));
                write_rows(v(*base), v(*rows), *axis, |r| (start + r).rem_euclid(len) as usize)
            }
            Op::Tabulate { f } => {
                let mut out_f = Vec::new();
                let mut out_i = Vec::new();
                for_each_index(&shape, |i| {
                    let idx: Vec<i64> = i.iter().map(|&x| x as i64).collect();
                    match scalar_eval(f, None, &idx, values, &symbols) {
                        Scalar::Int(x) if node.ty.dtype != DType::F32 => out_i.push(x),
                        x => out_f.push(x.as_f32()),
                    }
                });
                if node.ty.dtype == DType::F32 {
                    Tensor::f32(shape.clone(), out_f)
                } else {
                    Tensor::int(shape.clone(), out_i)
                }
            }
            Op::Attention {
                q,
                k,
                v: val,
                scale,
                mask,
                score,
                dropout,
            } => {
                let (qt, kt, vt) = (v(*q), v(*k), v(*val));
                let (b_n, h_n, t_n) = (qt.shape[0], qt.shape[1], qt.shape[2]);
                let (g_n, s_n, e_n) = (kt.shape[1], kt.shape[2], vt.shape[3]);
                let mut out = vec![0.0f32; b_n * h_n * t_n * e_n];
                for b in 0..b_n {
                    for h in 0..h_n {
                        let g = h / (h_n / g_n);
                        for i in 0..t_n {
                            let scores = attention_scores(qt, kt, (b, h, i), *scale, (mask.as_ref(), score.as_ref()), values, &symbols);
                            let m = scores.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
                            if m == f32::NEG_INFINITY {
                                continue;
                            }
                            let weights: Vec<f32> = scores.iter().map(|s| (s - m).exp()).collect();
                            let z: f32 = weights.iter().sum();
                            let dropped: Vec<f32> = (0..s_n)
                                .map(|j| dropout_factor(dropout.as_ref(), [b, h, i, j], values, &symbols))
                                .collect();
                            for e in 0..e_n {
                                let mut acc = 0.0f32;
                                for (j, w) in weights.iter().enumerate() {
                                    acc += w * dropped[j] * vt.floats()[((b * g_n + g) * s_n + j) * e_n + e];
                                }
                                out[((b * h_n + h) * t_n + i) * e_n + e] = acc / z;
                            }
                        }
                    }
                }
                Tensor::f32(shape.clone(), out)
            }
            Op::ToFloat { x } => match &v(*x).data {
                Data::Int(values) => Tensor::f32(shape.clone(), values.iter().map(|&i| i as f32).collect()),
                Data::F32(values) => Tensor::f32(shape.clone(), values.clone()),
            },
            Op::Transpose { x } => {
                let t = v(*x);
                let st = strides(&t.shape);
                let r = shape.len();
                let mut out = Vec::new();
                for_each_index(&shape, |i| {
                    let mut src = i.to_vec();
                    src.swap(r - 1, r - 2);
                    out.push(t.floats()[src.iter().zip(&st).map(|(a, b)| a * b).sum::<usize>()]);
                });
                Tensor::f32(shape.clone(), out)
            }
            Op::MatMul { lhs, rhs } => {
                let (a, b) = (v(*lhs), v(*rhs));
                let k = b.shape[0];
                let n = b.shape[1];
                let mut out = Vec::new();
                for_each_index(&shape, |i| {
                    let r = i.len();
                    let row_base: usize = {
                        let sa = strides(&a.shape);
                        i[..r - 1].iter().zip(&sa).map(|(x, s)| x * s).sum()
                    };
                    let mut acc = 0.0f32;
                    for kk in 0..k {
                        acc += a.floats()[row_base + kk] * b.floats()[kk * n + i[r - 1]];
                    }
                    out.push(acc);
                });
                Tensor::f32(shape.clone(), out)
            }
            Op::MatMulTN { lhs, rhs } => {
                let (a, b) = (v(*lhs), v(*rhs));
                let (k, n) = (shape[0], shape[1]);
                let rows = a.floats().len() / k.max(1);
                let mut out = vec![0.0f32; k * n];
                for r in 0..rows {
                    for kk in 0..k {
                        let x = a.floats()[r * k + kk];
                        for nn in 0..n {
                            out[kk * n + nn] += x * b.floats()[r * n + nn];
                        }
                    }
                }
                Tensor::f32(shape.clone(), out)
            }
            Op::ScatterAdd { indices, values, .. } => {
                let (ix, vals) = (v(*indices), v(*values));
                let Data::Int(ids) = &ix.data else { panic!("indices are integers") };
                let row: usize = shape[1..].iter().product();
                let rows = shape[0] as i64;
                let mut out = vec![0.0f32; shape[0] * row];
                for (i, &id) in ids.iter().enumerate().filter(|_| rows > 0) {
                    let r = id.clamp(0, rows - 1) as usize;
                    for d in 0..row {
                        out[r * row + d] += vals.floats()[i * row + d];
                    }
                }
                Tensor::f32(shape.clone(), out)
            }
            Op::AttentionLse { q, k, scale, mask, score } => {
                let (qt, kt) = (v(*q), v(*k));
                let (b_n, h_n, t_n) = (qt.shape[0], qt.shape[1], qt.shape[2]);
                let mut out = Vec::with_capacity(b_n * h_n * t_n);
                for b in 0..b_n {
                    for h in 0..h_n {
                        for i in 0..t_n {
                            let scores = attention_scores(qt, kt, (b, h, i), *scale, (mask.as_ref(), score.as_ref()), values, &symbols);
                            let m = scores.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
                            out.push(if m == f32::NEG_INFINITY {
                                0.0
                            } else {
                                m + scores.iter().map(|s| (s - m).exp()).sum::<f32>().ln()
                            });
                        }
                    }
                }
                Tensor::f32(shape.clone(), out)
            }
            Op::AttentionGrad(a) => attention_grad(a, |id| v(id), &shape, values, &symbols),
            Op::Scan(_) | Op::ScanArg(_) | Op::ScanResult { .. } => unreachable!("scan structure is evaluated by `node`"),
        };
        debug_assert_eq!(node.ty.dtype == DType::F32, matches!(result.data, Data::F32(_)));
        result
    }
}

/// The scores of query row `(b, h, i)` of an attention against every key, `-inf` where the mask
/// excludes a key.
fn attention_scores(
    q: &Tensor,
    k: &Tensor,
    (b, h, i): (usize, usize, usize),
    scale: f64,
    (mask, score): (Option<&ScalarFn>, Option<&ScalarFn>),
    values: &[Tensor],
    symbols: &[i64],
) -> Vec<f32> {
    let (h_n, t_n, d_n) = (q.shape[1], q.shape[2], q.shape[3]);
    let (g_n, s_n) = (k.shape[1], k.shape[2]);
    let g = h / (h_n / g_n);
    (0..s_n)
        .map(|j| {
            let idx = [b as i64, h as i64, i as i64, j as i64];
            if mask.is_some_and(|m| !scalar_eval(m, None, &idx, values, symbols).as_bool()) {
                return f32::NEG_INFINITY;
            }
            let qi = &q.floats()[((b * h_n + h) * t_n + i) * d_n..][..d_n];
            let kj = &k.floats()[((b * g_n + g) * s_n + j) * d_n..][..d_n];
            let s = qi.iter().zip(kj).map(|(x, y)| x * y).sum::<f32>() * scale as f32;
            match score {
                Some(f) => scalar_eval(f, Some(s), &idx, values, symbols).as_f32(),
                None => s,
            }
        })
        .collect()
}

/// The factor dropout leaves on probability `(b, h, i, j)`: 1 without dropout.
fn dropout_factor(dropout: Option<&ScalarFn>, [b, h, i, j]: [usize; 4], values: &[Tensor], symbols: &[i64]) -> f32 {
    dropout.map_or(1.0, |f| {
        scalar_eval(f, None, &[b as i64, h as i64, i as i64, j as i64], values, symbols).as_f32()
    })
}

/// [`AttentionGrad`]'s meaning, directly: every probability recomputed from the row statistics.
fn attention_grad<'t>(a: &AttentionGrad, v: impl Fn(ValueId) -> &'t Tensor, shape: &[usize], values: &[Tensor], symbols: &[i64]) -> Tensor {
    let (qt, kt, vt, lse, delta, dout) = (v(a.q), v(a.k), v(a.v), v(a.lse), v(a.delta), v(a.dout));
    let (b_n, h_n, t_n, d_n) = (qt.shape[0], qt.shape[1], qt.shape[2], qt.shape[3]);
    let (g_n, s_n, e_n) = (kt.shape[1], kt.shape[2], vt.shape[3]);
    let mut out = vec![0.0f32; shape.iter().product()];
    for b in 0..b_n {
        for h in 0..h_n {
            let g = h / (h_n / g_n);
            for i in 0..t_n {
                let row = (b * h_n + h) * t_n + i;
                let scores = attention_scores(qt, kt, (b, h, i), a.scale, (a.mask.as_ref(), a.score.as_ref()), values, symbols);
                let douti = &dout.floats()[row * e_n..][..e_n];
                for (j, &s) in scores.iter().enumerate() {
                    if s == f32::NEG_INFINITY {
                        continue;
                    }
                    let p = (s - lse.floats()[row]).exp();
                    let key = (b * g_n + g) * s_n + j;
                    let vj = &vt.floats()[key * e_n..][..e_n];
                    let kept = dropout_factor(a.dropout.as_ref(), [b, h, i, j], values, symbols);
                    let dp: f32 = douti.iter().zip(vj).map(|(x, y)| x * y).sum::<f32>() * kept;
                    let slope = match &a.dscore {
                        Some(f) => {
                            let idx = [b as i64, h as i64, i as i64, j as i64];
                            let raw = qt.floats()[row * d_n..][..d_n]
                                .iter()
                                .zip(&kt.floats()[key * d_n..][..d_n])
                                .map(|(x, y)| x * y)
                                .sum::<f32>()
                                * a.scale as f32;
                            scalar_eval(f, Some(raw), &idx, values, symbols).as_f32()
                        }
                        None => 1.0,
                    };
                    if a.wrt == AttentionInput::Score {
                        out[row * s_n + j] = p * (dp - delta.floats()[row]);
                        continue;
                    }
                    let ds = p * (dp - delta.floats()[row]) * slope;
                    match a.wrt {
                        AttentionInput::Query => {
                            for d in 0..d_n {
                                out[row * d_n + d] += a.scale as f32 * ds * kt.floats()[key * d_n + d];
                            }
                        }
                        AttentionInput::Key => {
                            for d in 0..d_n {
                                out[key * d_n + d] += a.scale as f32 * ds * qt.floats()[row * d_n + d];
                            }
                        }
                        AttentionInput::Value => {
                            for e in 0..e_n {
                                out[key * e_n + e] += p * kept * douti[e];
                            }
                        }
                        AttentionInput::Score => unreachable!("written above"),
                    }
                }
            }
        }
    }
    Tensor::f32(shape.to_vec(), out)
}

/// The slice of `t` at `index` along `axis`, without that axis.
fn take(t: &Tensor, axis: usize, index: usize) -> Tensor {
    let outer: usize = t.shape[..axis].iter().product();
    let inner: usize = t.shape[axis + 1..].iter().product();
    let n = t.shape[axis];
    let mut shape = t.shape.clone();
    shape.remove(axis);
    fn pick<T: Copy>(data: &[T], outer: usize, n: usize, inner: usize, index: usize) -> Vec<T> {
        let mut out = Vec::with_capacity(outer * inner);
        for o in 0..outer {
            let base = (o * n + index) * inner;
            out.extend_from_slice(&data[base..base + inner]);
        }
        out
    }
    match &t.data {
        Data::F32(d) => Tensor::f32(shape, pick(d, outer, n, inner, index)),
        Data::Int(d) => Tensor::int(shape, pick(d, outer, n, inner, index)),
    }
}

/// Stacks equally shaped `parts` along a new `axis`, giving `shape`.
fn stack(parts: Vec<Tensor>, axis: usize, shape: Vec<usize>) -> Tensor {
    let outer: usize = shape[..axis].iter().product();
    let inner: usize = shape[axis + 1..].iter().product();
    let ints = parts.first().is_some_and(|p| matches!(p.data, Data::Int(_)));
    let mut f = Vec::new();
    let mut n = Vec::new();
    for o in 0..outer {
        for p in &parts {
            match &p.data {
                Data::F32(d) => f.extend_from_slice(&d[o * inner..(o + 1) * inner]),
                Data::Int(d) => n.extend_from_slice(&d[o * inner..(o + 1) * inner]),
            }
        }
    }
    if ints {
        Tensor::int(shape, n)
    } else {
        Tensor::f32(shape, f)
    }
}

/// A scalar value inside an index function.
#[derive(Debug, Clone, Copy)]
enum Scalar {
    Int(i64),
    F32(f32),
    Bool(bool),
}

impl Scalar {
    fn as_bool(self) -> bool {
        matches!(self, Scalar::Bool(true))
    }

    fn as_f32(self) -> f32 {
        match self {
            Scalar::F32(x) => x,
            Scalar::Int(i) => i as f32,
            Scalar::Bool(b) => b as i64 as f32,
        }
    }

    fn as_int(self) -> i64 {
        match self {
            Scalar::Int(i) => i,
            Scalar::F32(x) => x as i64,
            Scalar::Bool(b) => b as i64,
        }
    }
}

/// Evaluates an index function: `s` is the score for score functions, `idx` the indices.
fn scalar_eval(f: &ScalarFn, s: Option<f32>, idx: &[i64], values: &[Tensor], symbols: &[i64]) -> Scalar {
    let mut vals: Vec<Scalar> = Vec::with_capacity(f.nodes.len());
    for (node, _) in &f.nodes {
        let v = match node {
            ScalarNode::Param(k) => match (s, *k) {
                (Some(score), 0) => Scalar::F32(score),
                (Some(_), k) => Scalar::Int(idx[k - 1]),
                (None, k) => Scalar::Int(idx[k]),
            },
            ScalarNode::Int(i) => Scalar::Int(*i),
            ScalarNode::Symbol(k) => Scalar::Int(symbols[k.0 as usize]),
            ScalarNode::F32(x) => Scalar::F32(*x as f32),
            ScalarNode::Bool(b) => Scalar::Bool(*b),
            ScalarNode::Load { tensor, indices } => {
                let t = &values[tensor.0 as usize];
                let st = strides(&t.shape);
                let offset: usize = indices
                    .iter()
                    .zip(&t.shape)
                    .zip(&st)
                    .map(|((i, n), s)| vals[*i].as_int().clamp(0, *n as i64 - 1) as usize * s)
                    .sum();
                match &t.data {
                    Data::F32(v) => Scalar::F32(v[offset]),
                    Data::Int(v) => Scalar::Int(v[offset]),
                }
            }
            ScalarNode::Unary { op, a } => match (op, vals[*a]) {
                (ScalarUnary::Neg, Scalar::Int(i)) => Scalar::Int(-i),
                (ScalarUnary::Neg, x) => Scalar::F32(-x.as_f32()),
                (ScalarUnary::Not, x) => Scalar::Bool(!x.as_bool()),
                (ScalarUnary::Abs, Scalar::Int(i)) => Scalar::Int(i.abs()),
                (ScalarUnary::Abs, x) => Scalar::F32(x.as_f32().abs()),
                (ScalarUnary::Log, x) => Scalar::F32(x.as_f32().ln()),
                (ScalarUnary::Exp, x) => Scalar::F32(x.as_f32().exp()),
                (ScalarUnary::Sqrt, x) => Scalar::F32(x.as_f32().sqrt()),
                (ScalarUnary::Sin, x) => Scalar::F32(x.as_f32().sin()),
                (ScalarUnary::Cos, x) => Scalar::F32(x.as_f32().cos()),
                (ScalarUnary::ToFloat, x) => Scalar::F32(x.as_f32()),
                (ScalarUnary::ToInt, x) => Scalar::Int(x.as_int()),
                (ScalarUnary::Unit, x) => Scalar::F32(crate::ir::unit_interval(x.as_int())),
            },
            ScalarNode::Binary { op, a, b } => {
                let (x, y) = (vals[*a], vals[*b]);
                match (x, y) {
                    (Scalar::Int(p), Scalar::Int(q)) => match op {
                        ScalarBinary::Add => Scalar::Int(p.wrapping_add(q)),
                        ScalarBinary::Sub => Scalar::Int(p.wrapping_sub(q)),
                        ScalarBinary::Mul => Scalar::Int(p.wrapping_mul(q)),
                        ScalarBinary::Div => Scalar::Int(floor_div(p, q)),
                        ScalarBinary::Rem => Scalar::Int(p.wrapping_sub(floor_div(p, q).wrapping_mul(q)) * i64::from(q != 0)),
                        ScalarBinary::Pow => Scalar::F32((p as f32).powf(q as f32)),
                        ScalarBinary::Min => Scalar::Int(p.min(q)),
                        ScalarBinary::Max => Scalar::Int(p.max(q)),
                        ScalarBinary::Lt => Scalar::Bool(p < q),
                        ScalarBinary::Le => Scalar::Bool(p <= q),
                        ScalarBinary::Gt => Scalar::Bool(p > q),
                        ScalarBinary::Ge => Scalar::Bool(p >= q),
                        ScalarBinary::Eq => Scalar::Bool(p == q),
                        ScalarBinary::Ne => Scalar::Bool(p != q),
                        ScalarBinary::Hash => Scalar::Int(crate::ir::hash_mix(p, q)),
                        ScalarBinary::And | ScalarBinary::Or => unreachable!("logic on integers is rejected by the checker"),
                    },
                    (Scalar::Bool(p), Scalar::Bool(q)) => Scalar::Bool(match op {
                        ScalarBinary::And => p && q,
                        ScalarBinary::Or => p || q,
                        ScalarBinary::Eq => p == q,
                        _ => p != q,
                    }),
                    _ => {
                        let (p, q) = (x.as_f32(), y.as_f32());
                        match op {
                            ScalarBinary::Add => Scalar::F32(p + q),
                            ScalarBinary::Sub => Scalar::F32(p - q),
                            ScalarBinary::Mul => Scalar::F32(p * q),
                            ScalarBinary::Div => Scalar::F32(p / q),
                            ScalarBinary::Pow => Scalar::F32(p.powf(q)),
                            ScalarBinary::Rem | ScalarBinary::Hash => unreachable!("the checker gives `rem` and `hash` integers"),
                            ScalarBinary::Min => Scalar::F32(p.min(q)),
                            ScalarBinary::Max => Scalar::F32(p.max(q)),
                            ScalarBinary::Lt => Scalar::Bool(p < q),
                            ScalarBinary::Le => Scalar::Bool(p <= q),
                            ScalarBinary::Gt => Scalar::Bool(p > q),
                            ScalarBinary::Ge => Scalar::Bool(p >= q),
                            ScalarBinary::Eq => Scalar::Bool(p == q),
                            ScalarBinary::Ne => Scalar::Bool(p != q),
                            ScalarBinary::And | ScalarBinary::Or => unreachable!("logic on numbers is rejected by the checker"),
                        }
                    }
                }
            }
            ScalarNode::Select { cond, a, b } => {
                if vals[*cond].as_bool() {
                    vals[*a]
                } else {
                    vals[*b]
                }
            }
        };
        vals.push(v);
    }
    vals[f.result]
}

/// Integer division rounding toward negative infinity; division by zero gives 0 (as the
/// generated code's guard does).
fn floor_div(p: i64, q: i64) -> i64 {
    if q == 0 {
        return 0;
    }
    let d = p.wrapping_div(q);
    if p.wrapping_rem(q) != 0 && ((p < 0) != (q < 0)) {
        d - 1
    } else {
        d
    }
}
