//! Checked IR → MLIR text on upstream dialects (`func`, `linalg`, `tensor`, `arith`, `math`,
//! `bufferization`, `memref`).
//!
//! The function works on tensors; only its boundary is memrefs, in destination-passing style:
//! `@forward(params..., inputs..., outputs...)`, with inputs read through
//! `bufferization.to_tensor` and results written with `materialize_in_destination`, so the caller
//! owns every buffer (see `lmc_abi`). Symbolic dimensions are dynamic (`?`) sizes read from the
//! first input that carries them. Rank-0 values (config constants) are plain `f32` SSA values that
//! the `linalg.generic` bodies capture, never tensors.
//!
//! We emit text and let MLIR's parser build the module: the text is what `lmc emit --stage mlir`
//! prints and what the snapshot tests compare, and every op carries its `.model` location.

use crate::Target;
use lmc_abi::{DType, WeightFormat};
use lmc_core::ir::{
    BinaryOp, Dim, Graph, Loc, Op, ReduceOp, ScalarBinary, ScalarFn, ScalarNode, ScalarType, ScalarUnary, Scan, TensorType, UnaryOp,
    ValueId,
};
use std::fmt::Write as _;

mod approx;
mod attention;
mod attention_grad;
mod elementwise;
mod fuse;
mod index;
mod lanes;
mod matmul;
mod outline;
mod plan;
mod scalar_fn;
mod scan;
mod schedule;
mod text;

pub(crate) use fuse::readers;
pub(crate) use matmul::WeightReads;

use attention::*;
use outline::*;
use schedule::*;
use text::*;

pub use plan::Plan;

/// The start of every matmul kernel function's name (`lmc_matmul0`, ...): the pipeline gives
/// their parallel loops a schedule of their own (`mlir_pipeline::schedule_kernels_dynamically`).
pub const MATMUL_KERNEL_PREFIX: &str = "lmc_matmul";

/// The name of the generated function that implements `forward`.
pub const FORWARD_FUNC: &str = "forward";

/// Emits the MLIR module for a graph's forward function, with kernels shaped for `target` as
/// `plan` decided (see [`Plan::new`]).
pub fn emit_module(g: &Graph, plan: &Plan, target: &Target) -> String {
    let mut e = Emitter {
        plan,
        mode: Mode::default(),
        row_group_schedules: Vec::new(),
        written: vec![false; g.outputs.len()],
        g,
        target: *target,
        functions: Functions::default(),
        row_tile_sizes: Vec::new(),
        body: String::new(),
        tmp: 0,
    };
    e.emit_function()
}

/// Where the node being emitted is: in a scan's body or an attention block (matmuls are inlined
/// loops, elementwise chains fused), in a row group, in a block of a scan's lanes; the names of
/// the sizes a block's symbols stand for, and the extra indentation of its lines.
/// [`Emitter::within`] sets a mode for a region and restores the outer one after it.
#[derive(Clone, Default)]
struct Mode {
    /// Whether the node being emitted is in a scan's body, where matmuls are inlined loops and
    /// elementwise chains are fused; also set while an attention block is emitted, for its
    /// inlined matmuls.
    in_scan_body: bool,
    /// Whether the ops of a row group are being emitted (see [`Emitter::emit_row_group`]).
    in_row_group: bool,
    /// The block of lanes the scan body being emitted works on, if it was split into blocks.
    block: Option<Block>,
    /// The SSA name of the length of the block of query rows an attention is computing, the
    /// run-time size [`BLOCK_ROWS`] stands for.
    block_rows: Option<String>,
    /// Likewise, the number of keys a block of query rows attends to ([`BLOCK_KEYS`]).
    block_keys: Option<String>,
    /// Extra indentation of the lines being emitted (two spaces each), inside a block's loop.
    indent: usize,
}

struct Emitter<'a> {
    g: &'a Graph,
    /// Where the node being emitted is (see [`Mode`]).
    mode: Mode,
    /// What was decided before emitting: fusion sets, bias epilogues, row groups, packing.
    plan: &'a Plan,
    target: Target,
    /// The private functions defined so far: matmul kernels and outlined ops.
    functions: Functions,
    /// The distinct tile sizes [`mark_row_parallel`] has marked loop nests with, for the
    /// [`schedule`].
    row_tile_sizes: Vec<String>,
    body: String,
    tmp: usize,
    /// Per distinct tile sizes of the row groups' roots so far, the most ops any of their
    /// functions fuses into the root's loop (see [`schedule`]).
    row_group_schedules: Vec<(String, usize)>,
    /// Per output, whether its value has been written to its destination yet.
    written: Vec<bool>,
}

/// The result side of a fused `linalg.generic`: its SSA name, output map (the part after
/// `->`), iterator types, initial value and type, and the block argument of the output.
struct Generic<'s> {
    name: &'s str,
    map: &'s str,
    iterators: &'s str,
    init: &'s str,
    ty: &'s str,
    arg: &'s str,
}

/// The inputs and body of a loop nest that computes a chain of fused ops (see [`fuse`]).
#[derive(Default)]
struct FusedBody {
    /// The loop nest's number of dimensions.
    rank: usize,
    /// Each input once: its SSA name, tensor type, indexing map and element type.
    inputs: Vec<(String, String, String, &'static str)>,
    lines: Vec<String>,
    /// The fused ops computed so far, with where: an op read twice at the same element (a row
    /// group's `x - mean` squared) is computed once.
    computed: Vec<(ValueId, Vec<String>)>,
}

/// One block of a scan's lanes (see [`lanes`]): inside it, every value with a lane axis has
/// `lanes.block` elements along it, and the values defined outside the body are read through
/// their block's slice.
#[derive(Clone)]
struct Block {
    lanes: lanes::Lanes,
    /// The SSA names of those slices.
    slices: std::collections::HashMap<ValueId, String>,
}

/// Computes, inside a generic body, where an output element comes from: given the output's
/// index names, pushes the lines it needs and returns the source coordinates.
type Coordinates<'a> = dyn Fn(&[String], &mut Vec<String>) -> Vec<String> + 'a;

/// Writes the scalar body of an elementwise op: given the operand names, the result name and a
/// prefix for temporaries, the lines that define the result.
type ScalarBody<'a> = dyn Fn(&[String], &str, &str) -> Vec<String> + 'a;

impl Emitter<'_> {
    fn loc(&self, l: Loc) -> String {
        let file = self.g.files.get(l.file as usize).map_or("?", String::as_str);
        format!("loc(\"{}\":{}:{})", file, l.line, l.col)
    }

    /// A dimension as an SSA `index` value: a symbol's is already one, a static size becomes a
    /// constant named `name`.
    fn index_value(&mut self, d: Dim, name: &str) -> String {
        match d {
            Dim::Static(n) => {
                self.line(&format!("{name} = arith.constant {n} : index"));
                name.to_string()
            }
            Dim::Symbol(s) => format!("%sym{}", s.0),
        }
    }

    /// Emits with the mode `change` makes of the current one, then restores the current one.
    fn within<T>(&mut self, change: impl FnOnce(&mut Mode), emit: impl FnOnce(&mut Self) -> T) -> T {
        let outer = self.mode.clone();
        change(&mut self.mode);
        let result = emit(self);
        self.mode = outer;
        result
    }

    /// The lines `emit` emits, kept apart from the body emitted so far.
    fn emitted_apart(&mut self, emit: impl FnOnce(&mut Self)) -> String {
        let outer = std::mem::take(&mut self.body);
        emit(self);
        std::mem::replace(&mut self.body, outer)
    }

    fn fresh(&mut self) -> String {
        self.tmp += 1;
        format!("%t{}", self.tmp)
    }

    fn line(&mut self, text: &str) {
        let _ = writeln!(self.body, "    {}{text}", "  ".repeat(self.mode.indent));
    }

    /// A value's type where it is being emitted: within a block of lanes, its lane axis has the
    /// block's length.
    fn ty(&self, id: ValueId) -> TensorType {
        let mut t = self.g.ty(id).clone();
        if let Some(b) = &self.mode.block {
            if let Some(&axis) = b.lanes.axis.get(&id) {
                t.dims[axis] = Dim::Static(b.lanes.block);
            }
        }
        t
    }

    /// A value's SSA name where it is being read: within a block of lanes, a value defined
    /// outside the scan body is read through its block's slice.
    fn name(&self, id: ValueId) -> String {
        self.mode
            .block
            .as_ref()
            .and_then(|b| b.slices.get(&id).cloned())
            .unwrap_or_else(|| v(id))
    }

    fn is_scalar(&self, id: ValueId) -> bool {
        self.g.ty(id).rank() == 0
    }

    /// SSA values of the dynamic sizes of a type, in order, as `tensor.empty` wants them.
    fn dynamic_sizes(&self, t: &TensorType) -> Vec<String> {
        t.dims
            .iter()
            .filter_map(|d| match d {
                Dim::Symbol(s) if *s == BLOCK_ROWS => self.mode.block_rows.clone(),
                Dim::Symbol(s) if *s == BLOCK_KEYS => self.mode.block_keys.clone(),
                Dim::Symbol(s) => Some(format!("%sym{}", s.0)),
                Dim::Static(_) => None,
            })
            .collect()
    }

    /// `tensor.empty` of a type; returns its SSA name.
    fn empty(&mut self, t: &TensorType) -> String {
        let name = self.fresh();
        let sizes = self.dynamic_sizes(t).join(", ");
        self.line(&format!("{name} = tensor.empty({sizes}) : {}", tensor_ty(t)));
        name
    }

    fn emit_function(&mut self) -> String {
        let g = self.g;
        let mut args = Vec::new();
        for i in 0..g.params.len() {
            args.push(format!("%param{i}: {}", self.param_types(i).0));
        }
        for (i, p) in g.inputs.iter().enumerate() {
            args.push(format!("%input{i}: {}", memref_ty(&p.ty)));
        }
        for (i, (p, _)) in g.outputs.iter().enumerate() {
            args.push(format!("%output{i}: {}", memref_ty(&p.ty)));
        }
        // Symbol values, read once from the inputs.
        let mut axes: Vec<usize> = g.symbols.iter().map(|s| s.source.1).collect();
        axes.sort_unstable();
        axes.dedup();
        for a in axes {
            self.line(&format!("%c{a} = arith.constant {a} : index"));
        }
        for (i, s) in g.symbols.iter().enumerate() {
            let (input, axis) = s.source;
            let ty = memref_ty(&g.inputs[input].ty);
            self.line(&format!("%sym{i} = memref.dim %input{input}, %c{axis} : {ty}  // {}", s.name));
        }
        // Parameters are read at the top, once each: a parameter first read inside a scan body
        // has a node there, and a later read outside gets its own node, which aliases the first.
        let mut first_read: Vec<Option<ValueId>> = vec![None; g.params.len()];
        for (n, node) in g.nodes.iter().enumerate() {
            let Op::Param(i) = node.op else { continue };
            let (id, (memref, tensor), loc) = (ValueId(n as u32), self.param_types(i), self.loc(node.loc));
            match first_read[i] {
                None => {
                    first_read[i] = Some(id);
                    self.line(&format!(
                        "{} = bufferization.to_tensor %param{i} restrict : {} to {} {loc}",
                        v(id),
                        memref,
                        tensor
                    ));
                }
                Some(first) => self.line(&format!("{} = tensor.cast {} : {} to {} {loc}", v(id), v(first), tensor, tensor)),
            }
        }
        self.emit_region(None, 0, g.nodes.len());
        for i in 0..g.outputs.len() {
            if !self.written[i] {
                self.write_output(i);
            }
        }
        let mut out = String::new();
        let _ = writeln!(out, "// {} from {}", g.model, g.files.first().map_or("?", String::as_str));
        let _ = writeln!(out, "module {{");
        let _ = writeln!(
            out,
            "  func.func @{FORWARD_FUNC}({}) attributes {{llvm.emit_c_interface}} {{",
            args.join(", ")
        );
        out.push_str(&self.body);
        let _ = writeln!(out, "    return");
        let _ = writeln!(out, "  }}");
        let texts = ["declaration", "op", "matmul"]
            .into_iter()
            .flat_map(|kind| self.functions.texts(kind));
        for function in texts {
            out.push_str(function);
        }
        let schedule = schedule(&self.row_tile_sizes, &self.row_group_schedules);
        if !schedule.is_empty() {
            out = out.replacen("module {", "module attributes {transform.with_named_sequence} {", 1);
            out.push_str(&schedule);
        }
        let _ = writeln!(out, "}}");
        out
    }

    /// Emits the nodes in `start..end` that belong directly to `region`; a scan emits its own
    /// body.
    fn emit_region(&mut self, region: Option<ValueId>, start: usize, end: usize) {
        for i in start..end {
            if self.plan.regions[i] != region {
                continue;
            }
            let id = ValueId(i as u32);
            if self.plan.fully_fused.contains(&id) || self.reads_packed(id).is_some() || self.plan.row_groups.grouped.contains(&id) {
                continue;
            }
            if region.is_none() && self.plan.row_groups.members.contains_key(&id) {
                self.emit_row_group(id);
            } else if let Some(&(m, bias)) = self.plan.biased.get(&id) {
                let Op::MatMul { lhs, rhs } = self.g.node(m).op else { continue };
                let loc = self.loc(self.g.node(id).loc);
                self.emit_matmul(id, (lhs, rhs), Some(bias), &loc);
            } else {
                self.mode.in_scan_body = region.is_some();
                if region.is_none() && self.outlinable(id) {
                    self.emit_outlined(id);
                } else {
                    self.emit_node(id);
                }
            }
            // An output is written as soon as it is computed, so that its own buffer can be
            // freed then rather than at the end (a training step's gradients are made one
            // layer at a time). Not in a decode step: its caches are outputs written in place
            // over the carried ones, which later ops may still read.
            if region.is_none() && self.g.decode.is_none() {
                for k in 0..self.g.outputs.len() {
                    if self.g.outputs[k].1 == id && !self.written[k] {
                        self.write_output(k);
                    }
                }
            }
        }
    }

    /// Writes output `k`'s value into its destination buffer.
    fn write_output(&mut self, k: usize) {
        let (decl, id) = &self.g.outputs[k];
        let mut value = v(*id);
        if self.is_scalar(*id) {
            let t = self.fresh();
            self.line(&format!("{t} = tensor.from_elements {value} : tensor<f32>"));
            value = t;
        }
        self.line(&format!(
            "bufferization.materialize_in_destination {value} in restrict writable %output{k} : ({}, {}) -> ()",
            tensor_ty(&decl.ty),
            memref_ty(&decl.ty)
        ));
        self.written[k] = true;
    }

    /// The type parameter `i` is passed as: packed (`matmul::param_packing`) or as declared.
    fn param_ty(&self, i: usize) -> TensorType {
        let ty = &self.g.params[i].ty;
        match self.plan.packing[i] {
            Some(p) => matmul::packed_ty(ty, p),
            None => ty.clone(),
        }
    }

    /// [`Emitter::param_ty`] spelled as a memref and as a tensor, in the element type of its
    /// packing's format.
    fn param_types(&self, i: usize) -> (String, String) {
        let ty = self.param_ty(i);
        let shape = match self.plan.packing[i] {
            Some(p) => text::shape_str_of(&ty, text::format_elem(p.format)),
            None => text::shape_str(&ty),
        };
        (format!("memref<{shape}>"), format!("tensor<{shape}>"))
    }

    /// The packed parameter `w` if `id` is `transpose(w)`: the matmul kernel reads `w` as it
    /// is passed, so the transpose emits nothing.
    fn reads_packed(&self, id: ValueId) -> Option<usize> {
        let Op::Transpose { x } = self.g.node(id).op else { return None };
        match self.g.node(x).op {
            Op::Param(i) if self.plan.packing[i].is_some() => Some(i),
            _ => None,
        }
    }

    /// A value passed to a function, by name: a slice is copied first. Functions take
    /// contiguous buffers (`identity-layout-map`), and bufferization would pass a strided view
    /// of a slice as if it were one: the callee would read the wrong elements.
    fn contiguous(&mut self, name: &str) -> String {
        let Some(n) = name.strip_prefix("%v").and_then(|n| n.parse::<u32>().ok()) else {
            return name.to_string();
        };
        let id = ValueId(n);
        if !matches!(self.g.node(id).op, Op::Slice { .. }) {
            return name.to_string();
        }
        let ty = self.g.ty(id).clone();
        let dest = self.empty(&ty);
        let copy = self.fresh();
        let t = tensor_ty(&ty);
        self.line(&format!("{copy} = linalg.copy ins({name} : {t}) outs({dest} : {t}) -> {t}"));
        copy
    }

    /// A dimension as an `index` SSA value (or constant).
    fn dim_value(&mut self, d: Dim) -> String {
        match d {
            Dim::Symbol(s) => format!("%sym{}", s.0),
            Dim::Static(n) => {
                let c = self.fresh();
                self.line(&format!("{c} = arith.constant {n} : index"));
                c
            }
        }
    }

    fn emit_node(&mut self, id: ValueId) {
        let g = self.g;
        let node = &g.nodes[id.0 as usize];
        let loc = self.loc(node.loc);
        let out = v(id);
        let ty = &self.ty(id);
        match &node.op {
            // Read at the top of the function (`emit_function`).
            Op::Param(_) => {}
            Op::Input(i) => self.line(&format!(
                "{out} = bufferization.to_tensor %input{i} restrict : {} to {} {loc}",
                memref_ty(ty),
                tensor_ty(ty)
            )),
            // A carried cache is read from its output's buffer, which the step may write: its
            // new value is written there in place (`emit_write_rows`).
            Op::Carry(k) => self.line(&format!(
                "{out} = bufferization.to_tensor %output{k} restrict writable : {} to {} {loc}",
                memref_ty(ty),
                tensor_ty(ty)
            )),
            Op::Constant(c) => self.line(&format!("{out} = arith.constant {} : f32 {loc}", f32_literal(*c))),
            Op::Arange(_) => {
                let e = self.empty(ty);
                self.line(&format!(
                    "{out} = linalg.generic {{indexing_maps = [affine_map<(d0) -> (d0)>], iterator_types = [\"parallel\"]}} outs({e} : {}) {{",
                    tensor_ty(ty)
                ));
                self.line("^bb0(%o: i64):");
                self.line("  %i = linalg.index 0 : index");
                self.line("  %r = arith.index_cast %i : index to i64");
                self.line("  linalg.yield %r : i64");
                self.line(&format!("}} -> {} {loc}", tensor_ty(ty)));
            }
            Op::Gather { table, indices } => self.emit_gather(id, *table, *indices, &loc),
            Op::Binary { .. } | Op::Unary { .. } | Op::ToFloat { .. }
                if (self.mode.in_scan_body || self.mode.in_row_group) && ty.rank() > 0 =>
            {
                self.emit_fused(id, &loc)
            }
            Op::Reduce { op, x, .. } if self.mode.in_row_group => self.emit_row_reduce(id, *op, *x, &loc),
            Op::Binary { op, lhs, rhs } => {
                let name = binary_op(*op);
                self.emit_elementwise(id, &[*lhs, *rhs], &loc, &|args, res, _| {
                    vec![format!("{res} = {name} {}, {} : f32", args[0], args[1])]
                });
            }
            Op::Unary { op, x } => {
                let op = *op;
                self.emit_elementwise(id, &[*x], &loc, &move |args, res, tmp| unary_body(op, &args[0], res, tmp));
            }
            Op::Reduce { op, x, axis, keepdim } => self.emit_reduce(id, *op, *x, *axis, *keepdim, &loc),
            Op::ToFloat { x } => {
                let from = elem(g.ty(*x).dtype);
                self.emit_elementwise(id, &[*x], &loc, &move |args, res, _| {
                    vec![format!("{res} = arith.sitofp {} : {from} to f32", args[0])]
                });
            }
            Op::Transpose { x } => {
                let (x, xt) = (self.name(*x), self.ty(*x));
                self.emit_transpose(Some(&out), &x, &xt, &loc);
            }
            Op::MatMul { lhs, rhs } => self.emit_matmul(id, (*lhs, *rhs), None, &loc),
            Op::MatMulTN { lhs, rhs } => self.emit_matmul_tn(id, (*lhs, *rhs), &loc),
            Op::ScatterAdd { indices, values, .. } => self.emit_scatter_add(id, [*indices, *values], &loc),
            Op::AttentionLse { q, k, scale, mask, score } => {
                self.emit_attention_lse(id, [*q, *k], *scale, (mask.as_ref(), score.as_ref()), &loc)
            }
            Op::AttentionGrad(a) => self.emit_attention_grad(id, a, &loc),
            Op::SplitHeads { x, heads } => self.emit_split_heads(id, *x, *heads, &loc),
            Op::MergeHeads { x } => self.emit_merge_heads(id, *x, &loc),
            Op::Tabulate { f } => self.emit_tabulate(id, f, &loc),
            // Each element read from the part that holds it: one pass, fused like a tabulate.
            Op::Concat { parts, axis } => self.emit_tabulate(id, &lmc_core::ir::concat_index_fn(g, parts, *axis), &loc),
            Op::Slice { x, axis, start, length } => {
                let xt = self.ty(*x);
                let mut offsets = Vec::new();
                let mut sizes = Vec::new();
                for (k, d) in xt.dims.iter().enumerate() {
                    if k == *axis {
                        offsets.push(start.to_string());
                        sizes.push(length.to_string());
                    } else {
                        offsets.push("0".to_string());
                        sizes.push(dim_size(*d));
                    }
                }
                let strides = vec!["1"; xt.rank()].join(", ");
                self.line(&format!(
                    "{out} = tensor.extract_slice {}[{}] [{}] [{strides}] : {} to {} {loc}",
                    self.name(*x),
                    offsets.join(", "),
                    sizes.join(", "),
                    tensor_ty(&xt),
                    tensor_ty(ty)
                ));
            }
            Op::WriteRows { base, rows, axis, at } => self.emit_write_rows(id, [*base, *rows, *at], *axis, &loc),
            Op::WriteRing { base, rows, axis, at } => self.emit_write_ring(id, [*base, *rows, *at], *axis, &loc),
            Op::Attention {
                q,
                k,
                v,
                scale,
                mask,
                score,
                dropout,
            } => self.emit_attention(id, [*q, *k, *v], *scale, (mask.as_ref(), score.as_ref(), dropout.as_ref()), &loc),
            Op::Scan(s) => self.emit_scan(id, s, &loc),
            // Defined by their scan: the loop's iteration arguments, slices and results.
            Op::ScanArg(_) | Op::ScanResult { .. } => {}
        }
    }

    /// `id = lhs @ rhs`, plus `bias` along the last axis when given (see
    /// [`fuse::bias_epilogues`]).
    fn emit_matmul(&mut self, id: ValueId, (lhs, rhs): (ValueId, ValueId), bias: Option<ValueId>, loc: &str) {
        let g = self.g;
        // `x @ transpose(w)` reads `w` as it is passed: a Linear's weight (checkpoints store
        // `[out, in]`) in the panels the runtime packed it in (`matmul::param_packing`), any other
        // `w` in place with the dot-product kernel. Neither makes a transposed copy per call;
        // an unused transpose is removed as dead code.
        let (rhs, layout, rhs_ty) = match (&g.node(rhs).op, self.reads_packed(rhs)) {
            (&Op::Transpose { x }, Some(param)) => {
                let format = self.plan.packing[param].map_or(WeightFormat::F32, |p| p.format);
                (x, matmul::RhsLayout::Packed(format), self.param_ty(param))
            }
            (&Op::Transpose { x }, None) if g.ty(x).rank() == 2 => (x, matmul::RhsLayout::Transposed, g.ty(x).clone()),
            (&Op::Param(i), _) if self.plan.packing[i].is_some_and(|p| p.in_by_out) => {
                let format = self.plan.packing[i].map_or(WeightFormat::F32, |p| p.format);
                (rhs, matmul::RhsLayout::Packed(format), self.param_ty(i))
            }
            _ => (rhs, matmul::RhsLayout::RowMajor, g.ty(rhs).clone()),
        };
        let mm = matmul::MatMul {
            layout,
            x: g.ty(lhs).clone(),
            rhs: rhs_ty,
            out: g.ty(id).clone(),
            group: 1,
            x_transposed: false,
            bias: bias.map(|b| g.ty(b).clone()),
        };
        let bias = bias.map(v);
        self.emit_matmul_call(&v(id), [&v(lhs), &v(rhs)], bias.as_deref(), &mm, loc);
    }

    /// `id = Σ_{p, m} lhs[p, m, :]ᵀ rhs[p, m, :]` (`[K, N]`): both operands' leading axes
    /// collapsed into one, `[M, K]` and `[M, N]` (free for contiguous tensors). On a CPU the
    /// left operand is transposed into `[K, M]` first, one pass over it, and the broadcast-tile
    /// kernel of `x @ b` runs on it: reading it in place, transposed (a row of `[M, K]` apart
    /// per step), is slower (docs/performance.md). A GPU's loop nest and a scan step's inlined
    /// loops read it transposed in place.
    fn emit_matmul_tn(&mut self, id: ValueId, (lhs, rhs): (ValueId, ValueId), loc: &str) {
        let g = self.g;
        let (at, bt) = (g.ty(lhs).clone(), g.ty(rhs).clone());
        let (a, b) = (self.contiguous(&v(lhs)), self.contiguous(&v(rhs)));
        let (a, a_t) = self.collapsed(&a, &at, at.rank() - 1);
        let (b, _) = self.collapsed(&b, &bt, bt.rank() - 1);
        let matrix = |t: &TensorType| index::flattened(t, t.rank() - 1);
        let (x, x_ty, x_transposed) = if self.target.is_gpu() || self.mode.in_scan_body {
            (a, matrix(&at), true)
        } else {
            let flat = matrix(&at);
            let mut ty = flat.clone();
            ty.dims.swap(0, 1);
            let (rows, c0) = (self.fresh(), self.fresh());
            self.line(&format!("{c0} = arith.constant 0 : index"));
            self.line(&format!("{rows} = tensor.dim {a}, {c0} : {a_t}"));
            let dynamic = if matches!(flat.dims[0], Dim::Static(_)) {
                String::new()
            } else {
                rows
            };
            let (empty, transposed) = (self.fresh(), self.fresh());
            let t = tensor_ty(&ty);
            self.line(&format!("{empty} = tensor.empty({dynamic}) : {t}"));
            // A `linalg.generic` rather than `linalg.transpose`, marked for the schedule to
            // spread over the threads by rows: the copy is a whole pass over the operand.
            let head = format!(
                "{transposed} = linalg.generic {{indexing_maps = [affine_map<(d0, d1) -> (d1, d0)>, affine_map<(d0, d1) -> (d0, d1)>], iterator_types = [{}]}} ins({a} : {a_t}) outs({empty} : {t}) {{\n",
                parallel(2)
            );
            let marked = mark_row_parallel(&head, &mut self.row_tile_sizes);
            self.line(marked.trim_end());
            self.line("^bb0(%in: f32, %out: f32):");
            self.line("  linalg.yield %in : f32");
            self.line(&format!("}} -> {t} {loc}"));
            (transposed, ty, false)
        };
        let mm = matmul::MatMul {
            layout: matmul::RhsLayout::RowMajor,
            x: x_ty,
            rhs: matrix(&bt),
            out: g.ty(id).clone(),
            group: 1,
            x_transposed,
            bias: None,
        };
        self.emit_matmul_call(&v(id), [&x, &b], None, &mm, loc);
    }
}

impl Emitter<'_> {}
