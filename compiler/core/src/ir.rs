//! The checked IR: one forward function of one model, as a graph of typed tensor operations.
//!
//! The op set is closed. Each op below documents its operands, its typing rule and its meaning;
//! the meaning is what codegen must compute and what the test interpreter (`interp`) computes.
//! Values live in an arena ([`Graph::nodes`]) and are referred to by [`ValueId`]; every node
//! refers only to earlier nodes, so the arena order is a valid execution order.

use lmc_abi::{Bound, DType};
use std::fmt::Write as _;

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
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReduceOp {
    Sum,
    Mean,
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
}

/// A node of an index function; operands refer to earlier nodes.
#[derive(Debug, Clone, PartialEq)]
pub enum ScalarNode {
    /// The function's k-th parameter.
    Param(usize),
    Int(i64),
    F32(f64),
    Bool(bool),
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
    /// A row with every key masked gives zeros.
    Attention {
        q: ValueId,
        k: ValueId,
        v: ValueId,
        scale: f64,
        mask: Option<ScalarFn>,
        score: Option<ScalarFn>,
    },
    /// `slice x, axis, start, length`: the elements `start .. start + length` along `axis`
    /// (fixed at compile time and within the axis).
    Slice { x: ValueId, axis: usize, start: i64, length: i64 },
    /// `tabulate d0, d1, ..., f`: the tensor whose element at `(i0, i1, ...)` is `f(i0, i1, ...)`;
    /// f32 when `f` gives an f32, i64 when it gives an integer.
    Tabulate { f: ScalarFn },
    /// `transpose x`: swaps the last two axes (rank ≥ 2).
    Transpose { x: ValueId },
    /// `matmul a, b`: `a: f32[P..., M, K]`, `b: f32[K, N]` → `f32[P..., M, N]`,
    /// `out[p, m, n] = Σ_k a[p, m, k] · b[k, n]`.
    MatMul { lhs: ValueId, rhs: ValueId },
}

impl Op {
    /// The values this op reads.
    pub fn operands(&self) -> Vec<ValueId> {
        match *self {
            Op::Param(_) | Op::Input(_) | Op::Constant(_) | Op::Arange(_) => vec![],
            Op::Gather { table, indices } => vec![table, indices],
            Op::Binary { lhs, rhs, .. } | Op::MatMul { lhs, rhs } => vec![lhs, rhs],
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
            Op::Attention {
                q,
                k,
                v,
                ref mask,
                ref score,
                ..
            } => {
                let mut ops = vec![q, k, v];
                for f in mask.iter().chain(score.iter()) {
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
        for (i, node) in self.nodes.iter().enumerate() {
            for operand in node.op.operands() {
                if operand.0 as usize >= i {
                    return Err(format!("%{i} uses %{} before it is defined", operand.0));
                }
            }
            if let Some(expected) = crate::check::infer_type(self, &node.op) {
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
            if self.ty(*v) != &decl.ty {
                return Err(format!("output {} does not have its declared type", decl.name));
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
            let _ = writeln!(out, "  input {i} {}: {}{bound}", p.name, self.type_name(&p.ty));
        }
        for (i, n) in self.nodes.iter().enumerate() {
            let v = |id: &ValueId| format!("%{}", id.0);
            let body = match &n.op {
                Op::Param(p) => format!("param {p}"),
                Op::Input(p) => format!("input {p}"),
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
                Op::Attention {
                    q,
                    k,
                    v: val,
                    scale,
                    mask,
                    score,
                } => {
                    let mut s = format!("attention {}, {}, {}, scale {scale:e}", v(q), v(k), v(val));
                    if let Some(m) = mask {
                        s.push_str(&format!(", mask {}", m.print()));
                    }
                    if let Some(f) = score {
                        s.push_str(&format!(", score {}", f.print()));
                    }
                    s
                }
                Op::MatMul { lhs, rhs } => format!("matmul {}, {}", v(lhs), v(rhs)),
            };
            let file = if n.loc.file == 0 {
                String::new()
            } else {
                format!("{}:", self.files[n.loc.file as usize])
            };
            let _ = writeln!(
                out,
                "  %{i} = {body} : {}  @{file}{}:{}",
                self.type_name(&n.ty),
                n.loc.line,
                n.loc.col
            );
        }
        for (decl, v) in &self.outputs {
            let _ = writeln!(out, "  output {} = %{} : {}", decl.name, v.0, self.type_name(&decl.ty));
        }
        out
    }
}
