//! The checked IR: one forward function of one model, as a graph of typed tensor operations.
//!
//! The op set is closed. Each op below documents its operands, its typing rule and its meaning;
//! the meaning is what codegen must compute and what the test interpreter (`interp`) computes.
//! Values live in an arena ([`Graph::nodes`]) and are referred to by [`ValueId`]; every node
//! refers only to earlier nodes, so the arena order is a valid execution order.

use lmc_abi::{Bound, DType};
use std::fmt::Write as _;

mod scalar_builder;
mod typing;
pub use scalar_builder::{concat_index_fn, dropout_scale_fn, scalar_type, uniform_fn, ScalarBuilder};
pub use typing::{broadcast, infer_type};

/// Index of a node in [`Graph::nodes`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ValueId(pub u32);

/// Index of a symbolic dimension in [`Graph::symbols`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SymbolId(pub u32);

/// One dimension: known at compile time, or a symbol bound from the inputs at run time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Dim {
    Static(i64),
    Symbol(SymbolId),
}

/// Element type and shape of a value. Rank 0 is a scalar.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TensorType {
    pub dtype: DType,
    pub dims: Vec<Dim>,
}

impl TensorType {
    pub fn new(dtype: DType, dims: Vec<Dim>) -> Self {
        TensorType { dtype, dims }
    }

    pub fn rank(&self) -> usize {
        self.dims.len()
    }
}

/// Where a node came from in the `.model` source: printed in the IR and carried into MLIR
/// locations.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Loc {
    /// Index into [`Graph::files`].
    pub file: u32,
    pub line: usize,
    pub col: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BinaryOp {
    Add,
    Sub,
    Mul,
    Div,
    /// Elementwise maximum.
    Max,
    /// Elementwise minimum.
    Min,
    /// `a` to the power `b`.
    Pow,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UnaryOp {
    Neg,
    Sqrt,
    /// `1 / sqrt(x)`.
    Rsqrt,
    Exp,
    /// Natural logarithm.
    Log,
    Abs,
    Tanh,
    Erf,
    Sin,
    Cos,
    /// `1 / (1 + exp(-x))`.
    Sigmoid,
    /// `max(x, 0)`.
    Relu,
    /// `x * sigmoid(x)`.
    Silu,
    /// The exact GELU: `x * 0.5 * (1 + erf(x / sqrt(2)))`.
    Gelu,
    /// `x` itself, read by the backward as a constant: no gradient passes through it (torch's
    /// `detach`).
    Detach,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReduceOp {
    Sum,
    Mean,
    /// The largest element (`-inf` for none); a numerically stable log-sum-exp subtracts it.
    Max,
}

/// Which operand of an attention an [`AttentionGrad`] gives the gradient of.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttentionInput {
    Query,
    Key,
    Value,
    /// Not an operand: the scores' own gradient, for a score function that reads
    /// parameter-dependent values (a learned position bias).
    Score,
}

/// `attention_grad`: the gradient of one operand of `attention q, k, v` (same scale, mask and
/// score) given the gradient `dout` of its result, computed as flash attention's backward does:
/// each probability `p[i, j] = exp(score(scale · q_i·k_j) − lse[i])` is recomputed from the row
/// statistics `lse` ([`Op::AttentionLse`]) and never stored. With `dp[i, j] = dout_i · v_j`,
/// `delta[i] = Σ_e dout[i, e] · out[i, e]` and `ds[i, j] = p[i, j] (dp[i, j] − delta[i]) ·
/// dscore(s, b, h, i, j)` (1 without `dscore`; masked keys have `p = 0`):
/// - `Query`: `dq_i = scale Σ_j ds[i, j] k_j`, `f32[B, H, T, D]`;
/// - `Key`: `dk_j = scale Σ_{h in j's group} Σ_i ds[i, j] q_i`, `f32[B, G, S, D]`;
/// - `Value`: `dv_j = Σ_{h in j's group} Σ_i p[i, j] dout_i`, `f32[B, G, S, E]`;
/// - `Score`: the gradient of the score function's result, `dz[i, j] = p[i, j] (dp[i, j] −
///   delta[i])` (without `dscore`), 0 for a key the mask hides: `f32[B, H, T, S]`.
///
/// `lse: f32[B, H, T]`, `delta: f32[B, H, T]`, `dout: f32[B, H, T, E]`.
#[derive(Debug, Clone, PartialEq)]
pub struct AttentionGrad {
    pub q: ValueId,
    pub k: ValueId,
    pub v: ValueId,
    pub lse: ValueId,
    pub delta: ValueId,
    pub dout: ValueId,
    pub scale: f64,
    pub mask: Option<ScalarFn>,
    pub score: Option<ScalarFn>,
    /// The derivative of `score` by its first argument, with the same arguments.
    pub dscore: Option<ScalarFn>,
    /// The forward's dropout (see [`Op::Attention`]): with its factor `w[i, j]`, `dp[i, j]` is
    /// `w[i, j] · dout_i · v_j` and `dv_j` sums `p[i, j] w[i, j] dout_i`.
    pub dropout: Option<ScalarFn>,
    pub wrt: AttentionInput,
}

impl AttentionGrad {
    /// The index functions it evaluates per element.
    pub fn functions(&self) -> impl Iterator<Item = &ScalarFn> {
        self.mask.iter().chain(&self.score).chain(&self.dscore).chain(&self.dropout)
    }
}

/// The type of a value inside an index function.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScalarType {
    /// A 64-bit integer: positions and indices.
    Int,
    F32,
    Bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScalarBinary {
    Add,
    Sub,
    Mul,
    /// Integer division rounds toward negative infinity (floor), like Python's `//`; a zero
    /// divisor gives 0.
    Div,
    Min,
    Max,
    /// F32 power.
    Pow,
    /// Integer remainder with the sign of the divisor (Python's `%`); a zero divisor gives 0.
    Rem,
    Lt,
    Le,
    Gt,
    Ge,
    Eq,
    Ne,
    And,
    Or,
    /// Integers → integer: `a` and `b` mixed by [`hash_mix`], so that every bit of the result
    /// depends on every bit of both. Over a step's seed, a stream and an element's position it
    /// gives that element its own random bits (dropout's keep mask, [`dropout_scale_fn`]).
    Hash,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScalarUnary {
    Neg,
    Not,
    Abs,
    Log,
    Exp,
    Sqrt,
    Sin,
    Cos,
    /// Int → F32.
    ToFloat,
    /// F32 → Int, rounding toward zero.
    ToInt,
    /// Int → F32 in `[0, 1)`: the top 24 bits of the integer over 2^24 (see [`unit_interval`]);
    /// of a [`ScalarBinary::Hash`], a uniform random number.
    Unit,
}

/// [`ScalarBinary::Hash`]: SplitMix64's finaliser applied to `a ^ (b · φ)` (φ the 64-bit golden
/// ratio), in wrapping 64-bit arithmetic; the generated code computes the same bits.
pub fn hash_mix(a: i64, b: i64) -> i64 {
    let mut z = (a as u64) ^ (b as u64).wrapping_mul(HASH_GOLDEN);
    z = (z ^ (z >> 30)).wrapping_mul(HASH_MUL1);
    z = (z ^ (z >> 27)).wrapping_mul(HASH_MUL2);
    (z ^ (z >> 31)) as i64
}

/// The constants of [`hash_mix`] (SplitMix64's).
pub const HASH_GOLDEN: u64 = 0x9E37_79B9_7F4A_7C15;
pub const HASH_MUL1: u64 = 0xBF58_476D_1CE4_E5B9;
pub const HASH_MUL2: u64 = 0x94D0_49BB_1331_11EB;

/// [`ScalarUnary::Unit`]: the top 24 bits of `x` as a fraction of 2^24, exact in f32.
pub fn unit_interval(x: i64) -> f32 {
    ((x as u64) >> 40) as f32 * (1.0 / 16_777_216.0)
}

/// A node of an index function; operands refer to earlier nodes.
#[derive(Debug, Clone, PartialEq)]
pub enum ScalarNode {
    /// The function's k-th parameter.
    Param(usize),
    Int(i64),
    F32(f64),
    Bool(bool),
    /// The run-time value of a symbolic dimension (`T` in `x[b, T - 1 - t]`).
    Symbol(SymbolId),
    /// One element of a graph value; each index is clamped to its axis, so no index function
    /// reads out of bounds.
    Load {
        tensor: ValueId,
        indices: Vec<usize>,
    },
    Binary {
        op: ScalarBinary,
        a: usize,
        b: usize,
    },
    Unary {
        op: ScalarUnary,
        a: usize,
    },
    Select {
        cond: usize,
        a: usize,
        b: usize,
    },
}

/// An index function such as an attention mask `(b, h, i, j) => j <= i`, as a small graph of
/// scalar operations evaluated per element, inside the kernel that uses it.
#[derive(Debug, Clone, PartialEq)]
pub struct ScalarFn {
    pub params: Vec<ScalarType>,
    pub nodes: Vec<(ScalarNode, ScalarType)>,
    pub result: usize,
}

impl ScalarFn {
    /// The graph values the function reads.
    pub fn tensors(&self) -> Vec<ValueId> {
        let mut v: Vec<ValueId> = self
            .nodes
            .iter()
            .filter_map(|(n, _)| {
                if let ScalarNode::Load { tensor, .. } = n {
                    Some(*tensor)
                } else {
                    None
                }
            })
            .collect();
        v.dedup();
        v
    }

    /// A one-line text form for the IR printer.
    pub fn print(&self) -> String {
        let parts: Vec<String> = self
            .nodes
            .iter()
            .enumerate()
            .map(|(k, (n, _))| {
                let body = match n {
                    ScalarNode::Param(p) => format!("arg{p}"),
                    ScalarNode::Int(v) => v.to_string(),
                    ScalarNode::F32(v) => format!("{v:e}"),
                    ScalarNode::Bool(b) => b.to_string(),
                    ScalarNode::Symbol(s) => format!("symbol{}", s.0),
                    ScalarNode::Load { tensor, indices } => {
                        format!(
                            "%{}[{}]",
                            tensor.0,
                            indices.iter().map(|i| format!("s{i}")).collect::<Vec<_>>().join(", ")
                        )
                    }
                    ScalarNode::Binary { op, a, b } => format!("{} s{a}, s{b}", format!("{op:?}").to_lowercase()),
                    ScalarNode::Unary { op, a } => format!("{} s{a}", format!("{op:?}").to_lowercase()),
                    ScalarNode::Select { cond, a, b } => format!("select s{cond}, s{a}, s{b}"),
                };
                format!("s{k} = {body}")
            })
            .collect();
        format!("{{{}; -> s{}}}", parts.join("; "), self.result)
    }
}

/// The operations of the IR.
#[derive(Debug, Clone, PartialEq)]
pub enum Op {
    /// `param i`: the i-th entry of [`Graph::params`]. Type: the parameter's declared type.
    Param(usize),
    /// `input i`: the i-th entry of [`Graph::inputs`]. Type: the input's declared type.
    Input(usize),
    /// `carry k`: the value output k held when the call began: a cache a decode step carries
    /// from one call to the next in the output's own buffer (the caller passes it holding the
    /// previous call's value). Type: output k's declared type.
    Carry(usize),
    /// `constant v`: an f32 scalar (rank 0).
    Constant(f64),
    /// `arange n`: i64[n] with element k equal to k.
    Arange(Dim),
    /// `gather table, indices`: table `T[R, D...]`, indices `i64[I...]` → `T[I..., D...]`;
    /// `out[i..., d...] = table[indices[i...], d...]`. Indices are clamped to `0..R` by the
    /// generated code; the runtime rejects out-of-range ones before that can matter.
    Gather { table: ValueId, indices: ValueId },
    /// `add|sub|mul|div a, b` on f32 with numpy broadcasting: shapes are aligned on the right, and
    /// a dimension of size 1 (or a missing one) stretches to the other.
    Binary { op: BinaryOp, lhs: ValueId, rhs: ValueId },
    /// Elementwise f32 function (see [`UnaryOp`]).
    Unary { op: UnaryOp, x: ValueId },
    /// `sum|mean x, axis`: reduces one axis of an f32 tensor; with `keepdim` the axis stays with
    /// size 1, otherwise it is removed. `mean` divides by the axis length.
    Reduce {
        op: ReduceOp,
        x: ValueId,
        axis: usize,
        keepdim: bool,
    },
    /// `float x`: converts an integer tensor to f32, same shape.
    ToFloat { x: ValueId },
    /// `split_heads x, H`: `f32[..., T, H*D]` → `f32[..., H, T, D]`,
    /// `out[..., h, t, d] = x[..., t, h*D + d]`.
    SplitHeads { x: ValueId, heads: i64 },
    /// `merge_heads x`: `f32[..., H, T, D]` → `f32[..., T, H*D]`, the inverse of `split_heads`.
    MergeHeads { x: ValueId },
    /// `attention q, k, v`: `q: f32[B, H, T, D]`, `k: f32[B, G, S, D]`, `v: f32[B, G, S, E]` with
    /// `H % G == 0` (grouped-query heads: query head h reads key/value head `h / (H / G)`) →
    /// `f32[B, H, T, E]`. Scores `s = scale · q·k`, then `score(s, b, h, i, j)` if given;
    /// keys where `mask(b, h, i, j)` is false are excluded; softmax over j; weighted sum of v.
    /// A row with every key masked gives zeros. With `dropout`, each probability is multiplied
    /// by `dropout(b, h, i, j)` after the softmax (dropout's keep scale, `1 / (1 - p)` or 0; see
    /// [`dropout_scale_fn`]) before it weighs the values.
    Attention {
        q: ValueId,
        k: ValueId,
        v: ValueId,
        scale: f64,
        mask: Option<ScalarFn>,
        score: Option<ScalarFn>,
        dropout: Option<ScalarFn>,
    },
    /// `slice x, axis, start, length`: the elements `start .. start + length` along `axis`
    /// (fixed at compile time and within the axis).
    Slice { x: ValueId, axis: usize, start: i64, length: i64 },
    /// `concat parts, axis`: the parts joined along `axis` in order. They agree in dtype and on
    /// every other axis, and each has a fixed length on `axis` (which the result's is the sum of).
    Concat { parts: Vec<ValueId>, axis: usize },
    /// `tabulate d0, d1, ..., f`: the tensor whose element at `(i0, i1, ...)` is `f(i0, i1, ...)`;
    /// f32 when `f` gives an f32, i64 when it gives an integer.
    Tabulate { f: ScalarFn },
    /// `write_rows base, rows, axis, at`: `base` with the `n` entries `at .. at + n` along `axis`
    /// replaced by `rows`, which has base's type except `n` along that axis; `at` is an i64
    /// scalar. The generated code clamps `at` into `0 ..= len - n` so it never writes out of
    /// bounds; the runtime rejects an `at` that would need clamping before that can matter.
    /// `base` is a carried cache ([`Op::Carry`]), written in place. Decoding writes a step's
    /// keys and values into its cache with it.
    WriteRows {
        base: ValueId,
        rows: ValueId,
        axis: usize,
        at: ValueId,
    },
    /// `write_ring base, rows, axis, at`: `base` as a ring of `len` entries along `axis` with the
    /// `n` rows written at `(at + r) mod len` in order (so with `n > len` only the last `len`
    /// rows remain); `rows` has base's type except `n` along that axis. Decoding keeps the last
    /// few rows that a token shift or a causal convolution reads back with it.
    WriteRing {
        base: ValueId,
        rows: ValueId,
        axis: usize,
        at: ValueId,
    },
    /// `transpose x`: swaps the last two axes (rank ≥ 2).
    Transpose { x: ValueId },
    /// `scatter_add indices, values, rows`: the gradient of a gather. `indices: i64[I...]`,
    /// `values: f32[I..., D...]` → `f32[rows, D...]`; `out[r, d...]` is the sum of
    /// `values[i..., d...]` over every `i...` whose index, clamped to `0..rows` as a gather
    /// clamps it, is `r` (0 where none is).
    ScatterAdd { indices: ValueId, values: ValueId, rows: Dim },
    /// `matmul_tn a, b`: `a: f32[P..., M, K]`, `b: f32[P..., M, N]` → `f32[K, N]`,
    /// `out[k, n] = Σ_{p, m} a[p, m, k] · b[p, m, n]`: the gradient of a matmul's right operand.
    MatMulTN { lhs: ValueId, rhs: ValueId },
    /// `attention_lse q, k`: the row statistics of `attention q, k, v` with the same scale, mask
    /// and score: `f32[B, H, T]`, `lse[b, h, i] = log Σ_j exp(s[i, j])` over the keys the mask
    /// keeps, or 0 for a row that keeps none.
    AttentionLse {
        q: ValueId,
        k: ValueId,
        scale: f64,
        mask: Option<ScalarFn>,
        score: Option<ScalarFn>,
    },
    /// See [`AttentionGrad`].
    AttentionGrad(Box<AttentionGrad>),
    /// `matmul a, b`: `a: f32[P..., M, K]`, `b: f32[K, N]` → `f32[P..., M, N]`,
    /// `out[p, m, n] = Σ_k a[p, m, k] · b[k, n]`.
    MatMul { lhs: ValueId, rhs: ValueId },
    /// `scan`: a recurrence over one axis (see [`Scan`]). The node itself has no value of its
    /// own (its type is a rank-0 f32 placeholder); its results are the [`Op::ScanResult`] nodes
    /// that directly follow it.
    Scan(Box<Scan>),
    /// `scan_arg k`: inside a scan body, the body's k-th argument: the carried states first (the
    /// value of the previous step, or the initial value), then the current slice of each scanned
    /// tensor. Type: the state's type, or the scanned tensor's type without the scan axis.
    ScanArg(usize),
    /// `scan_result scan, k`: the k-th result of a scan: its per-step outputs stacked along the
    /// scan axis (the axis inserted at that position, with the scanned length), then the final
    /// values of its states.
    ScanResult { scan: ValueId, index: usize },
}

/// A recurrence in the style of `jax.lax.scan`. Its body is a region of the graph's arena: the
/// nodes from `body_start` up to the scan node itself, beginning with one [`Op::ScanArg`] per
/// argument. The body runs once per step, in order along `axis`; body nodes may read any value
/// defined before the scan, but nothing after the scan may read a body node (only its results).
#[derive(Debug, Clone, PartialEq)]
pub struct Scan {
    /// The scanned axis of every tensor in `xs`; their lengths along it agree.
    pub axis: usize,
    /// Steps run from the end of the axis to its start (a backward pass's recurrence); step t
    /// still reads slice t and writes its outputs at t.
    pub reverse: bool,
    /// The states' initial values.
    pub init: Vec<ValueId>,
    /// The tensors sliced step by step.
    pub xs: Vec<ValueId>,
    /// The first node of the body.
    pub body_start: ValueId,
    /// The states' values at the end of a step, in `init` order, each of its state's type.
    pub next: Vec<ValueId>,
    /// The per-step outputs.
    pub outputs: Vec<ValueId>,
}

impl Scan {
    /// How many results the scan has: the stacked outputs, then the final states.
    pub fn result_count(&self) -> usize {
        self.outputs.len() + self.init.len()
    }

    /// How many arguments the body has: the states, then the slices.
    pub fn arg_count(&self) -> usize {
        self.init.len() + self.xs.len()
    }
}

impl Op {
    /// `op` with its operands (and the values its index functions read) renamed by `map`.
    pub fn remapped(&self, map: &[ValueId]) -> Op {
        let m = |v: &ValueId| map[v.0 as usize];
        let f = |f: &ScalarFn| ScalarFn {
            nodes: f
                .nodes
                .iter()
                .map(|(n, t)| match n {
                    ScalarNode::Load { tensor, indices } => (
                        ScalarNode::Load {
                            tensor: m(tensor),
                            indices: indices.clone(),
                        },
                        *t,
                    ),
                    n => (n.clone(), *t),
                })
                .collect(),
            ..f.clone()
        };
        match self {
            Op::Param(_) | Op::Input(_) | Op::Carry(_) | Op::Constant(_) | Op::Arange(_) | Op::ScanArg(_) => self.clone(),
            Op::Gather { table, indices } => Op::Gather {
                table: m(table),
                indices: m(indices),
            },
            Op::Binary { op, lhs, rhs } => Op::Binary {
                op: *op,
                lhs: m(lhs),
                rhs: m(rhs),
            },
            Op::Unary { op, x } => Op::Unary { op: *op, x: m(x) },
            Op::Reduce { op, x, axis, keepdim } => Op::Reduce {
                op: *op,
                x: m(x),
                axis: *axis,
                keepdim: *keepdim,
            },
            Op::ToFloat { x } => Op::ToFloat { x: m(x) },
            Op::SplitHeads { x, heads } => Op::SplitHeads { x: m(x), heads: *heads },
            Op::MergeHeads { x } => Op::MergeHeads { x: m(x) },
            Op::Attention {
                q,
                k,
                v,
                scale,
                mask,
                score,
                dropout,
            } => Op::Attention {
                q: m(q),
                k: m(k),
                v: m(v),
                scale: *scale,
                mask: mask.as_ref().map(f),
                score: score.as_ref().map(f),
                dropout: dropout.as_ref().map(f),
            },
            Op::Slice { x, axis, start, length } => Op::Slice {
                x: m(x),
                axis: *axis,
                start: *start,
                length: *length,
            },
            Op::WriteRows { base, rows, axis, at } => Op::WriteRows {
                base: m(base),
                rows: m(rows),
                axis: *axis,
                at: m(at),
            },
            Op::WriteRing { base, rows, axis, at } => Op::WriteRing {
                base: m(base),
                rows: m(rows),
                axis: *axis,
                at: m(at),
            },
            Op::Tabulate { f: g } => Op::Tabulate { f: f(g) },
            Op::Transpose { x } => Op::Transpose { x: m(x) },
            Op::Concat { parts, axis } => Op::Concat {
                parts: parts.iter().map(m).collect(),
                axis: *axis,
            },
            Op::MatMul { lhs, rhs } => Op::MatMul { lhs: m(lhs), rhs: m(rhs) },
            Op::MatMulTN { lhs, rhs } => Op::MatMulTN { lhs: m(lhs), rhs: m(rhs) },
            Op::ScatterAdd { indices, values, rows } => Op::ScatterAdd {
                indices: m(indices),
                values: m(values),
                rows: *rows,
            },
            Op::AttentionLse { q, k, scale, mask, score } => Op::AttentionLse {
                q: m(q),
                k: m(k),
                scale: *scale,
                mask: mask.as_ref().map(f),
                score: score.as_ref().map(f),
            },
            Op::AttentionGrad(a) => Op::AttentionGrad(Box::new(AttentionGrad {
                q: m(&a.q),
                k: m(&a.k),
                v: m(&a.v),
                lse: m(&a.lse),
                delta: m(&a.delta),
                dout: m(&a.dout),
                scale: a.scale,
                mask: a.mask.as_ref().map(f),
                score: a.score.as_ref().map(f),
                dscore: a.dscore.as_ref().map(f),
                dropout: a.dropout.as_ref().map(f),
                wrt: a.wrt,
            })),
            Op::Scan(s) => Op::Scan(Box::new(Scan {
                axis: s.axis,
                reverse: s.reverse,
                init: s.init.iter().map(m).collect(),
                xs: s.xs.iter().map(m).collect(),
                body_start: m(&s.body_start),
                next: s.next.iter().map(m).collect(),
                outputs: s.outputs.iter().map(m).collect(),
            })),
            Op::ScanResult { scan, index } => Op::ScanResult {
                scan: m(scan),
                index: *index,
            },
        }
    }

    /// The values this op reads.
    pub fn operands(&self) -> Vec<ValueId> {
        match *self {
            Op::Param(_) | Op::Input(_) | Op::Carry(_) | Op::Constant(_) | Op::Arange(_) | Op::ScanArg(_) => vec![],
            Op::ScanResult { scan, .. } => vec![scan],
            Op::Scan(ref s) => s.init.iter().chain(&s.xs).chain(&s.next).chain(&s.outputs).copied().collect(),
            Op::Gather { table, indices } => vec![table, indices],
            Op::Binary { lhs, rhs, .. } | Op::MatMul { lhs, rhs } | Op::MatMulTN { lhs, rhs } => vec![lhs, rhs],
            Op::ScatterAdd { indices, values, .. } => vec![indices, values],
            Op::AttentionLse {
                q, k, ref mask, ref score, ..
            } => {
                let mut ops = vec![q, k];
                for f in mask.iter().chain(score.iter()) {
                    ops.extend(f.tensors());
                }
                ops
            }
            Op::AttentionGrad(ref a) => {
                let mut ops = vec![a.q, a.k, a.v, a.lse, a.delta, a.dout];
                for f in a.functions() {
                    ops.extend(f.tensors());
                }
                ops
            }
            Op::WriteRows { base, rows, at, .. } | Op::WriteRing { base, rows, at, .. } => vec![base, rows, at],
            Op::Unary { x, .. }
            | Op::Reduce { x, .. }
            | Op::Transpose { x }
            | Op::ToFloat { x }
            | Op::SplitHeads { x, .. }
            | Op::Slice { x, .. }
            | Op::MergeHeads { x } => {
                vec![x]
            }
            Op::Tabulate { ref f } => f.tensors(),
            Op::Concat { ref parts, .. } => parts.clone(),
            Op::Attention {
                q,
                k,
                v,
                ref mask,
                ref score,
                ref dropout,
                ..
            } => {
                let mut ops = vec![q, k, v];
                for f in mask.iter().chain(score.iter()).chain(dropout.iter()) {
                    ops.extend(f.tensors());
                }
                ops
            }
        }
    }
}

/// One value of the graph.
#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    pub op: Op,
    pub ty: TensorType,
    pub loc: Loc,
}

/// A symbolic dimension (`B`, `T`) and the limits on it.
#[derive(Debug, Clone, PartialEq)]
pub struct Symbol {
    pub name: String,
    /// Largest value the model supports, e.g. the rows of a learned position table.
    pub max: Option<Bound>,
    /// The first input and axis that carries it: where its run-time value is read from.
    pub source: (usize, usize),
}

/// A declared tensor: a parameter, an input or an output.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorDecl {
    pub name: String,
    pub ty: TensorType,
    /// For integer inputs used as gather indices: values must be below this.
    pub index_bound: Option<Bound>,
    /// For model inputs the caller may leave out: what they hold then.
    pub default: Option<lmc_abi::InputDefault>,
}

/// A compile-time config value after defaults and overrides.
#[derive(Debug, Clone, PartialEq)]
pub enum ConfigValue {
    Int(i64),
    Float(f64),
    Bool(bool),
    /// An enum variant or a string.
    Text(String),
}

impl std::fmt::Display for ConfigValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ConfigValue::Int(v) => write!(f, "{v}"),
            ConfigValue::Float(v) => write!(f, "{v:e}"),
            ConfigValue::Bool(v) => write!(f, "{v}"),
            ConfigValue::Text(v) => f.write_str(v),
        }
    }
}

/// A checked forward function of one model.
#[derive(Debug, Clone, PartialEq)]
pub struct Graph {
    pub model: String,
    /// The source files nodes come from; [`Loc::file`] indexes it. The first is the model's.
    pub files: Vec<String>,
    pub config: Vec<(String, ConfigValue)>,
    pub symbols: Vec<Symbol>,
    pub params: Vec<TensorDecl>,
    pub inputs: Vec<TensorDecl>,
    pub nodes: Vec<Node>,
    /// Output name and the value it returns.
    pub outputs: Vec<(TensorDecl, ValueId)>,
    /// For a decode-step function derived from a forward (`decode::derive_decode`): its
    /// position input and caches.
    pub decode: Option<DecodeInfo>,
    /// How the weight matrices that only matmuls read are stored (`--set weights=...`): the
    /// codegen packs them in this format; every other tensor is as declared.
    pub weights: lmc_abi::WeightFormat,
}

/// How a derived decode-step function is called: see `crate::decode`.
#[derive(Debug, Clone, PartialEq)]
pub struct DecodeInfo {
    /// Positions every history cache has room for.
    pub capacity: i64,
    /// The input (an i64 scalar) holding the first new position of a call.
    pub position: usize,
    /// The input holding the new tokens, [batch, new positions].
    pub tokens: usize,
    /// The input of the new tokens' position ids, [batch, new positions], when the forward
    /// takes one (an input that defaults to 0..T): each row's own count of tokens, so that a
    /// left-padded row numbers its tokens from 0.
    pub position_ids: Option<usize>,
    /// The output holding their logits.
    pub logits: usize,
    pub caches: Vec<CacheSlot>,
    /// The inputs that the context function computes (`decode::Decoding::context`).
    pub context: Vec<usize>,
}

/// One cache: an output that the step reads as it was when the call began ([`Op::Carry`]) and
/// leaves updated.
#[derive(Debug, Clone, PartialEq)]
pub struct CacheSlot {
    pub output: usize,
    pub kind: CacheKind,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum CacheKind {
    /// A value at every position so far, along this axis (`capacity` long).
    History { axis: usize },
    /// The last `length` values along this axis, as a ring: entry `p mod length` holds
    /// position p.
    Window { axis: usize, length: i64 },
    /// A scan's state after the last position.
    State,
}

impl Graph {
    pub fn node(&self, id: ValueId) -> &Node {
        &self.nodes[id.0 as usize]
    }

    pub fn ty(&self, id: ValueId) -> &TensorType {
        &self.node(id).ty
    }

    pub fn dim_name(&self, d: Dim) -> String {
        match d {
            Dim::Static(n) => n.to_string(),
            Dim::Symbol(s) => self.symbols[s.0 as usize].name.clone(),
        }
    }

    pub fn type_name(&self, t: &TensorType) -> String {
        let dims: Vec<String> = t.dims.iter().map(|&d| self.dim_name(d)).collect();
        format!("{}[{}]", t.dtype.as_str(), dims.join(", "))
    }

    /// Checks the structural invariants every pass must keep: operands precede their users, and
    /// each node's type follows from its operands by the typing rules above.
    pub fn verify(&self) -> Result<(), String> {
        let regions = self.enclosing_scans();
        for (i, node) in self.nodes.iter().enumerate() {
            for operand in node.op.operands() {
                if operand.0 as usize >= i {
                    return Err(format!("%{i} uses %{} before it is defined", operand.0));
                }
                // A body value is visible only inside its body (and bodies nested in it); the
                // scan node itself yields its body's values.
                let user = match node.op {
                    Op::Scan(_) => Some(ValueId(i as u32)),
                    _ => regions[i],
                };
                if !self.is_within(&regions, user, regions[operand.0 as usize]) {
                    return Err(format!("%{i} reads %{}, a value of a scan body it is not in", operand.0));
                }
            }
            match &node.op {
                Op::Scan(s) => self.verify_scan(i, s)?,
                Op::WriteRows { base, .. } if !matches!(self.node(*base).op, Op::Carry(_)) => {
                    return Err(format!("%{i} writes rows into %{}, which is not a carried cache", base.0))
                }
                Op::Carry(k) if self.outputs.get(*k).is_none_or(|(d, _)| d.ty != node.ty) => {
                    return Err(format!("%{i} carries output {k}, which does not exist or has another type"))
                }
                Op::ScanArg(_) if regions[i].is_none() => return Err(format!("%{i}: scan_arg outside a scan body")),
                _ => {}
            }
            if let Some(expected) = infer_type(self, &node.op) {
                if expected != node.ty {
                    return Err(format!(
                        "%{i} has type {} but its operands give {}",
                        self.type_name(&node.ty),
                        self.type_name(&expected)
                    ));
                }
            }
        }
        for (decl, v) in &self.outputs {
            if regions[v.0 as usize].is_some() {
                return Err(format!("output {} reads %{}, a value of a scan body", decl.name, v.0));
            }
            if self.ty(*v) != &decl.ty {
                return Err(format!("output {} does not have its declared type", decl.name));
            }
        }
        Ok(())
    }

    /// For each node, the innermost scan whose body holds it (`None` at the top level).
    pub fn enclosing_scans(&self) -> Vec<Option<ValueId>> {
        let mut region = vec![None; self.nodes.len()];
        // Outer scans come after the scans nested in them: visit from the last scan down, so
        // inner bodies overwrite their part of the outer one.
        for (i, node) in self.nodes.iter().enumerate().rev() {
            if let Op::Scan(s) = &node.op {
                for r in region.iter_mut().take(i).skip(s.body_start.0 as usize) {
                    *r = Some(ValueId(i as u32));
                }
            }
        }
        region
    }

    /// Whether region `inner` is `outer` or nested in it (`None` is the top level).
    fn is_within(&self, regions: &[Option<ValueId>], inner: Option<ValueId>, outer: Option<ValueId>) -> bool {
        let mut r = inner;
        loop {
            if r == outer {
                return true;
            }
            match r {
                None => return false,
                Some(s) => r = regions[s.0 as usize],
            }
        }
    }

    /// The structure of a scan at node `i`: arguments first in its body, results after it, and
    /// the types of states, slices and outputs.
    fn verify_scan(&self, i: usize, s: &Scan) -> Result<(), String> {
        let start = s.body_start.0 as usize;
        if s.xs.is_empty() || start + s.arg_count() > i {
            return Err(format!("%{i}: a scan needs a scanned tensor and a body that holds its arguments"));
        }
        let length = self.ty(s.xs[0]).dims.get(s.axis).copied();
        for (k, x) in s.xs.iter().enumerate() {
            let t = self.ty(*x);
            if t.dims.get(s.axis).copied() != length || length.is_none() {
                return Err(format!(
                    "%{i}: scanned tensor %{} does not have the scan's length on axis {}",
                    x.0, s.axis
                ));
            }
            let mut slice = t.clone();
            slice.dims.remove(s.axis);
            let arg = &self.nodes[start + s.init.len() + k];
            if arg.op != Op::ScanArg(s.init.len() + k) || arg.ty != slice {
                return Err(format!("%{i}: body argument {} is not the slice of %{}", s.init.len() + k, x.0));
            }
        }
        for (k, (init, next)) in s.init.iter().zip(&s.next).enumerate() {
            let arg = &self.nodes[start + k];
            if arg.op != Op::ScanArg(k) || arg.ty != *self.ty(*init) || self.ty(*next) != self.ty(*init) {
                return Err(format!("%{i}: state {k} does not keep its type through the body"));
            }
        }
        if s.next.len() != s.init.len() || s.outputs.is_empty() {
            return Err(format!("%{i}: a scan gives a new value for every state and at least one output"));
        }
        for k in 0..s.result_count() {
            let r = self.nodes.get(i + 1 + k).map(|n| &n.op);
            if r != Some(&Op::ScanResult {
                scan: ValueId(i as u32),
                index: k,
            }) {
                return Err(format!("%{i}: result {k} must directly follow the scan"));
            }
        }
        Ok(())
    }

    /// The text form printed by `lmc emit --stage ir`.
    pub fn print(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "model {}  # {}", self.model, self.files.join(", "));
        for (name, value) in &self.config {
            let _ = writeln!(out, "  config {name} = {value}");
        }
        if self.weights != lmc_abi::WeightFormat::F32 {
            let _ = writeln!(
                out,
                "  weights {}  # how the matmuls' weight matrices are stored",
                self.weights.name()
            );
        }
        for s in &self.symbols {
            match &s.max {
                Some(b) => {
                    let _ = writeln!(out, "  symbol {} <= {}  # {}", s.name, b.limit, b.reason);
                }
                None => {
                    let _ = writeln!(out, "  symbol {}", s.name);
                }
            }
        }
        for (i, p) in self.params.iter().enumerate() {
            let _ = writeln!(out, "  param {i} \"{}\": {}", p.name, self.type_name(&p.ty));
        }
        for (i, p) in self.inputs.iter().enumerate() {
            let bound = match &p.index_bound {
                Some(b) => format!("  # values < {} ({})", b.limit, b.reason),
                None => String::new(),
            };
            let default = p.default.map_or(String::new(), |d| format!(" = {}", d.name()));
            let _ = writeln!(out, "  input {i} {}: {}{default}{bound}", p.name, self.type_name(&p.ty));
        }
        let regions = self.enclosing_scans();
        let depth = |mut r: Option<ValueId>| {
            let mut d = 0;
            while let Some(s) = r {
                d += 1;
                r = regions[s.0 as usize];
            }
            d
        };
        for (i, n) in self.nodes.iter().enumerate() {
            let v = |id: &ValueId| format!("%{}", id.0);
            let vs = |ids: &[ValueId]| ids.iter().map(v).collect::<Vec<_>>().join(", ");
            let indent = "  ".repeat(depth(regions[i]));
            let body = match &n.op {
                Op::Param(p) => format!("param {p}"),
                Op::Input(p) => format!("input {p}"),
                Op::Carry(k) => format!("carry {k}"),
                Op::Constant(c) => format!("constant {c:e}"),
                Op::Arange(d) => format!("arange {}", self.dim_name(*d)),
                Op::Gather { table, indices } => format!("gather {}, {}", v(table), v(indices)),
                Op::Binary { op, lhs, rhs } => format!("{} {}, {}", format!("{op:?}").to_lowercase(), v(lhs), v(rhs)),
                Op::Unary { op, x } => format!("{} {}", format!("{op:?}").to_lowercase(), v(x)),
                Op::Reduce { op, x, axis, keepdim } => format!(
                    "{} {}, axis {axis}{}",
                    format!("{op:?}").to_lowercase(),
                    v(x),
                    if *keepdim { ", keepdim" } else { "" }
                ),
                Op::Transpose { x } => format!("transpose {}", v(x)),
                Op::ToFloat { x } => format!("float {}", v(x)),
                Op::SplitHeads { x, heads } => format!("split_heads {}, {heads}", v(x)),
                Op::MergeHeads { x } => format!("merge_heads {}", v(x)),
                Op::Tabulate { f } => format!("tabulate {}", f.print()),
                Op::Slice { x, axis, start, length } => format!("slice {}, axis {axis}, {start}..{}", v(x), start + length),
                Op::Concat { parts, axis } => format!("concat {}, axis {axis}", vs(parts)),
                Op::WriteRows { base, rows, axis, at } => format!("write_rows {}, {}, axis {axis}, at {}", v(base), v(rows), v(at)),
                Op::WriteRing { base, rows, axis, at } => format!("write_ring {}, {}, axis {axis}, at {}", v(base), v(rows), v(at)),
                Op::Attention {
                    q,
                    k,
                    v: val,
                    scale,
                    mask,
                    score,
                    dropout,
                } => {
                    let mut s = format!("attention {}, {}, {}, scale {scale:e}", v(q), v(k), v(val));
                    if let Some(m) = mask {
                        s.push_str(&format!(", mask {}", m.print()));
                    }
                    if let Some(f) = score {
                        s.push_str(&format!(", score {}", f.print()));
                    }
                    if let Some(f) = dropout {
                        s.push_str(&format!(", dropout {}", f.print()));
                    }
                    s
                }
                Op::MatMul { lhs, rhs } => format!("matmul {}, {}", v(lhs), v(rhs)),
                Op::MatMulTN { lhs, rhs } => format!("matmul_tn {}, {}", v(lhs), v(rhs)),
                Op::ScatterAdd { indices, values, rows } => {
                    format!("scatter_add {}, {}, rows {}", v(indices), v(values), self.dim_name(*rows))
                }
                Op::AttentionLse { q, k, scale, mask, score } => {
                    let mut s = format!("attention_lse {}, {}, scale {scale:e}", v(q), v(k));
                    if let Some(m) = mask {
                        s.push_str(&format!(", mask {}", m.print()));
                    }
                    if let Some(f) = score {
                        s.push_str(&format!(", score {}", f.print()));
                    }
                    s
                }
                Op::AttentionGrad(a) => {
                    let mut s = format!(
                        "attention_grad {:?}, {}, {}, {}, lse {}, delta {}, dout {}, scale {:e}",
                        a.wrt,
                        v(&a.q),
                        v(&a.k),
                        v(&a.v),
                        v(&a.lse),
                        v(&a.delta),
                        v(&a.dout),
                        a.scale
                    )
                    .to_lowercase();
                    for (name, f) in [
                        ("mask", &a.mask),
                        ("score", &a.score),
                        ("dscore", &a.dscore),
                        ("dropout", &a.dropout),
                    ] {
                        if let Some(f) = f {
                            s.push_str(&format!(", {name} {}", f.print()));
                        }
                    }
                    s
                }
                Op::ScanArg(k) => format!("scan_arg {k}"),
                Op::ScanResult { scan, index } => format!("scan_result {}, {index}", v(scan)),
                Op::Scan(s) => format!(
                    "scan{} axis {}, init [{}], xs [{}], body %{}.., next [{}], outputs [{}]",
                    if s.reverse { " reverse" } else { "" },
                    s.axis,
                    vs(&s.init),
                    vs(&s.xs),
                    s.body_start.0,
                    vs(&s.next),
                    vs(&s.outputs)
                ),
            };
            let ty = if matches!(n.op, Op::Scan(_)) {
                "()".to_string()
            } else {
                self.type_name(&n.ty)
            };
            let file = if n.loc.file == 0 {
                String::new()
            } else {
                format!("{}:", self.files[n.loc.file as usize])
            };
            let _ = writeln!(out, "  {indent}%{i} = {body} : {ty}  @{file}{}:{}", n.loc.line, n.loc.col);
        }
        for (decl, v) in &self.outputs {
            let _ = writeln!(out, "  output {} = %{} : {}", decl.name, v.0, self.type_name(&decl.ty));
        }
        if let Some(d) = &self.decode {
            let caches: Vec<String> = d
                .caches
                .iter()
                .map(|c| match c.kind {
                    CacheKind::History { axis } => format!("{} (history, axis {axis})", self.outputs[c.output].0.name),
                    CacheKind::Window { axis, length } => format!("{} (last {length}, axis {axis})", self.outputs[c.output].0.name),
                    CacheKind::State => format!("{} (state)", self.outputs[c.output].0.name),
                })
                .collect();
            let context: Vec<&str> = d.context.iter().map(|k| self.inputs[*k].name.as_str()).collect();
            let _ = writeln!(
                out,
                "  decode capacity {}, position {}, tokens {}, logits {}, caches [{}], context [{}]",
                d.capacity,
                self.inputs[d.position].name,
                self.inputs[d.tokens].name,
                self.outputs[d.logits].0.name,
                caches.join(", "),
                context.join(", ")
            );
        }
        out
    }
}
