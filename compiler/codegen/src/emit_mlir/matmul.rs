//! Matmul as register-tiled, vectorized loop nests, written out directly in `scf` and `vector`.
//!
//! `linalg` lowered to loops runs a matmul at 1–2 GFLOP/s; these kernels keep a tile of the
//! result in vector registers for the whole reduction. They are written out rather than derived
//! with the transform dialect so that the kernel shape is ours to choose and compile time stays
//! small and predictable (see `MLIR-CODEGEN-NOTES.md`, §1 and pitfalls P1, P5, P12).
//!
//! Three kernels, by the right operand's layout:
//! - `x @ transpose(w)` with `w` a parameter `[N, K]` (a Linear's weight: checkpoints store
//!   `[out, in]`), passed packed into panels of two vectors of columns ([`param_packing`]): a
//!   tile of 12 (AVX2: 6) rows by one panel; each step of `K` broadcasts one element of `x` per
//!   row and multiplies it with the panel's two contiguous vectors, prefetched ahead. A panel
//!   stored as bf16 is widened as it is read; an int8 one is converted and multiplied by its
//!   block's scales, read once per block of 32 steps (`--set weights=...`), or, on an AVX2 or
//!   AVX-512 CPU, multiplied in integers with `x` quantized likewise ([`int8_dot`]; int4 too).
//! - Any other `x @ transpose(w)`, `w: [..., N, K]` (attention's `q · kᵀ`): each result
//!   element is a dot product of two contiguous rows. A tile of rows of `x` by rows of `w`
//!   keeps one vector of partial sums per element and sums its lanes at the end.
//! - `x @ b` with `b: [..., K, N]` (attention's `p · v`): the broadcast tile of 6 or 8 rows by
//!   two vectors of columns, reading `b` in place.
//!
//! Vectors are as wide as the target's registers ([`crate::Target`]): 8 lanes on AVX2, 16 with
//! AVX-512. Each distinct kernel (layout and operand types) is one private function, called from
//! every place that needs it: BERT's 72 projections share three.

use super::{tensor_ty, Emitter};
use lmc_abi::{DType, Packing, WeightFormat, INT8_BLOCK, INT8_SCALE_ROWS};
use lmc_core::ir::{Dim, Graph, Op, TensorType, ValueId};
use std::collections::HashSet;
use std::fmt::Write as _;

mod int8_dot;
mod widen;

/// The broadcast tile: rows of `x` by two vectors of columns of `b`.
const AXPY_VECTORS: i64 = 2;

/// Rows of the broadcast tile for a vector register file: AVX2's 16 registers hold 6×2
/// accumulators, 2 vectors of `b` and a broadcast (the 6×16 tile of the notes); AVX-512's 32
/// hold 8×2 (19). On AVX-512, 8 rows against 6, both compiled modules run in turn in one
/// process: attention alone (12 heads × 64, 512 tokens, 2 threads) 2–6% faster with and without
/// a causal mask, since its `p · v` has 32 rows, four whole 8-row tiles where 6 rows left two
/// single rows; a whole 12-layer, 768-wide encoder, where attention is a small part, within
/// noise (three runs at 512 tokens between 2.6% faster and 1.7% slower).
fn axpy_rows(lanes: i64) -> i64 {
    if lanes >= 16 {
        8
    } else {
        6
    }
}

/// About how many blocks of columns a parallel kernel splits each batch index's result into
/// (the tasks shared out among threads).
const COLUMN_BLOCKS: i64 = 16;

/// How much of `K` the dot tile sums before moving on to the next tile (a multiple of every
/// vector width): a tile's rows of `w`, 4 × 1024 floats, fit in L1.
const K_BLOCK: i64 = 1024;

/// How many rows of `x` a kernel takes at a time: a multiple of every tile's rows (4, 6, 8),
/// and 96 rows of a 1024-long block of `K` (384 KiB) stay in L2.
const ROW_BLOCK: i64 = 96;

/// Rows of the packed kernel's tiles, tallest first (a kernel takes whole tiles of each in
/// turn): AVX-512's 32 registers hold 12×2 accumulators, 2 vectors of the panel and a broadcast
/// (27); AVX2's 16 hold 6×2 (15). The shorter tiles take the rows left over (128 rows: ten of
/// 12 and two of 4).
fn packed_rows(lanes: i64) -> [i64; 3] {
    if lanes >= 16 {
        [12, 4, 1]
    } else {
        [6, 2, 1]
    }
}

/// How much of `K` the packed kernel sums per pass over the panels: a 12-row tile's rows of
/// `x`, 12 × 768 floats (36 KiB), stay in L1.
const PACKED_K_BLOCK: i64 = 768;

/// How many steps of `K` ahead the packed kernel prefetches its panel (a step reads one row
/// of the panel, 64 or 128 bytes). On a 12-layer, 768-wide encoder at 128 tokens, two threads,
/// both modules run in turn in one process: 32 steps against 8, 0.94 of the time; 16, 0.97–0.98;
/// 64 against 32, 0.99; none (the prefetch of the step itself) against 8, 1.04.
const PREFETCH_STEPS: i64 = 32;

/// From how many rows a matmul with int8 panels widens each block of them to f32 first
/// ([`widen`]) rather than converting and scaling them in every tile: four tiles of 12 rows.
const WIDEN_ROWS: i64 = 48;

/// The type of the block of the result one task fills: `[M, columns]`.
const SLICE_TY: &str = "tensor<?x?xf32>";

/// The dot-product tile, rows of `x` by rows of `w`, for a vector register file: AVX2's 16
/// registers hold 4×3 accumulators, 3 vectors of `w` and one of `x`; AVX-512's 32 hold 4×6
/// accumulators, 6 vectors of `w` and one of `x` (31). The tile's rows of `w` stay in L1 while
/// rows of `x` stream from L2, so the shape with the fewest rows of `x` per FMA is fastest: on
/// twelve 768→3072→768 feed-forward pairs over 128 rows (one thread, best of five interleaved
/// rounds) 4×6 took 140 ms, 6×4 147 ms and 4×4 162 ms.
fn dot_tile_shape(lanes: i64) -> (i64, i64) {
    if lanes >= 16 {
        (4, 6)
    } else {
        (4, 3)
    }
}

/// How the right operand is stored.
#[derive(Clone, Copy, PartialEq, Debug)]
pub(super) enum RhsLayout {
    /// `w: [..., N, K]`, used as `transpose(w)`.
    Transposed,
    /// `b: [..., K, N]`.
    RowMajor,
    /// A parameter `w: [N, K]` used as `transpose(w)` and passed packed (see
    /// [`param_packing`]): `[ceil(N / panel), K, panel]` in this format (an int8 panel has
    /// its blocks' scales among its rows, see [`Packing`]).
    Packed(WeightFormat),
}

/// The parameters the runtime passes packed ([`Packing`]), one entry per parameter: every f32
/// matrix whose every read is `x @ transpose(w)` in the function body, the weight of a Linear
/// (or every read `x @ w`, a weight stored `[in, out]`).
/// Their kernel is the broadcast tile over panels as wide as the tile (two vectors): each step
/// of `K` reads two contiguous vectors of the panel and one element of each row of `x`, so no
/// lane sums are needed (the dot tile's) and `w` is read in the order it is stored (the
/// row-major broadcast tile strides a whole row of `b` per step). A matrix also read another
/// way (a tied embedding table's gather, inside a scan step) stays as it is. They are stored in
/// the graph's weight format, except a matrix that format cannot hold (int8 rows that are not
/// whole blocks), which stays f32.
pub(crate) fn param_packing(
    g: &Graph,
    regions: &[Option<ValueId>],
    readers: &[Vec<ValueId>],
    target: &crate::Target,
) -> Vec<Option<Packing>> {
    let reads = WeightReads::new(g, regions, readers);
    let read_as_weight = |param: ValueId| {
        let transposes = &readers[param.0 as usize];
        reads.in_body(param) && !transposes.is_empty() && transposes.iter().all(|&t| reads.is_weight_transpose(t, param))
    };
    // A weight stored `[in, out]` (`[K, N]`) and read as `x @ w`: the same panels.
    let read_in_by_out = |param: ValueId| reads.in_body(param) && reads.only_matmul_rhs(param);
    let mut packable: Vec<bool> = g
        .params
        .iter()
        .map(|p| p.ty.dtype == DType::F32 && p.ty.rank() == 2 && p.ty.dims.iter().all(|d| matches!(d, Dim::Static(n) if *n > 0)))
        .collect();
    let mut read = vec![false; g.params.len()];
    // Whether the reads of each parameter so far read it stored `[in, out]`.
    let mut in_by_out: Vec<Option<bool>> = vec![None; g.params.len()];
    for (n, node) in g.nodes.iter().enumerate() {
        if let Op::Param(i) = node.op {
            read[i] = true;
            let id = ValueId(n as u32);
            let this = if read_as_weight(id) {
                Some(false)
            } else if read_in_by_out(id) {
                Some(true)
            } else {
                None
            };
            match (this, in_by_out[i]) {
                (Some(a), Some(b)) if a != b => packable[i] = false,
                (Some(a), _) => in_by_out[i] = Some(a),
                (None, _) => packable[i] = false,
            }
        }
    }
    packable
        .iter()
        .zip(&read)
        .zip(g.params.iter().zip(&in_by_out))
        .map(|((&p, &r), (param, &in_by_out))| {
            let in_by_out = in_by_out == Some(true);
            let k = match (in_by_out, param.ty.dims.as_slice()) {
                (false, &[_, Dim::Static(k)]) | (true, &[Dim::Static(k), _]) => k as usize,
                _ => 0,
            };
            let format = if g.weights.fits_rows_of(k) { g.weights } else { WeightFormat::F32 };
            (p && r).then_some(Packing {
                panel: AXPY_VECTORS * target.lanes,
                format,
                in_by_out,
                int8_dot: format.is_blocked() && target.int8_dot.is_some(),
            })
        })
        .collect()
}

/// Which reads of a value the packed kernel can serve: as the right operand of matmuls in the
/// function body (not in a scan step, whose kernels are inlined and take no panels).
pub(crate) struct WeightReads<'g> {
    g: &'g Graph,
    regions: &'g [Option<ValueId>],
    readers: &'g [Vec<ValueId>],
    outputs: HashSet<ValueId>,
}

impl<'g> WeightReads<'g> {
    /// `regions` and `readers` as [`Graph::enclosing_scans`] and `fuse::readers` give them.
    pub(crate) fn new(g: &'g Graph, regions: &'g [Option<ValueId>], readers: &'g [Vec<ValueId>]) -> Self {
        let outputs = g.outputs.iter().map(|(_, v)| *v).collect();
        WeightReads {
            g,
            regions,
            readers,
            outputs,
        }
    }

    /// In the function body, and not an output.
    fn in_body(&self, id: ValueId) -> bool {
        self.regions[id.0 as usize].is_none() && !self.outputs.contains(&id)
    }

    /// Every reader of `v` (at least one) is a function-body matmul that reads it as its right
    /// operand only.
    fn only_matmul_rhs(&self, v: ValueId) -> bool {
        let matmuls = &self.readers[v.0 as usize];
        !matmuls.is_empty()
            && matmuls.iter().all(|&m| {
                matches!(self.g.node(m).op, Op::MatMul { lhs, rhs } if rhs == v && lhs != v && self.g.ty(lhs).rank() >= 2)
                    && self.regions[m.0 as usize].is_none()
            })
    }

    /// `t` is `transpose(param)` in the body, read only as matmuls' right operand: a weight
    /// read as `x @ transpose(w)`.
    pub(crate) fn is_weight_transpose(&self, t: ValueId, param: ValueId) -> bool {
        matches!(self.g.node(t).op, Op::Transpose { x } if x == param) && self.in_body(t) && self.only_matmul_rhs(t)
    }
}

/// The type a packed parameter `[N, K]` (or `[K, N]`, stored in by out) is read as:
/// `[ceil(N / panel), K, panel]`.
pub(super) fn packed_ty(t: &TensorType, packing: Packing) -> TensorType {
    let dims = match t.dims.as_slice() {
        &[Dim::Static(a), Dim::Static(b)] => match packing.matrix(&[a as usize, b as usize]) {
            Some((n, k)) => packing.packed_shape(n, k).iter().map(|&d| Dim::Static(d as i64)).collect(),
            None => t.dims.clone(),
        },
        other => other.to_vec(),
    };
    TensorType::new(t.dtype, dims)
}

/// A matmul to emit: `out[..., m, n] = Σ_k x[..., m, k] · rhs(..., k, n)`. A batched right
/// operand has the output's leading axes, except that its axis 1 may be `group` times smaller
/// (grouped-query attention: head `h` reads key head `h / group`).
pub(super) struct MatMul {
    pub layout: RhsLayout,
    pub x: TensorType,
    pub rhs: TensorType,
    pub out: TensorType,
    pub group: i64,
    /// `x` is stored `[..., K, M]` and read as its transpose (attention's probabilities when
    /// its scores are kept keys by queries). Only the axpy tile (a right operand in
    /// [`RhsLayout::RowMajor`]) reads `x` one element at a time, so only it supports this.
    pub x_transposed: bool,
    /// A bias `[N]` added to every row of the result (a Linear's): the first block of `K` adds
    /// its sums to the bias instead of zero. Only the packed and dot kernels (a right operand
    /// in [`RhsLayout::Packed`] or [`RhsLayout::Transposed`], outside scan steps) take one.
    pub bias: Option<TensorType>,
}

impl MatMul {
    /// The right operand's tensor type, in its stored element type.
    fn rhs_ty(&self) -> String {
        match self.layout {
            RhsLayout::Packed(format) => format!("tensor<{}>", super::text::shape_str_of(&self.rhs, super::text::format_elem(format))),
            _ => tensor_ty(&self.rhs),
        }
    }
}

/// Where a tile is emitted.
struct TileAt<'a> {
    /// Index values of the output's batch axes, and of the right operand's (empty when it is
    /// not batched).
    batch: &'a [String],
    rhs_batch: &'a [String],
    /// First row and first column of the tile in the result block (index values), and the
    /// tile's first column of the whole result (the right operand's row or column).
    row: &'a str,
    col: &'a str,
    rhs_col: &'a str,
    /// The reduction range `k_lo..k` (index values); for the dot tile a block of `K`, for the
    /// axpy tile all of it.
    k_lo: &'a str,
    k: &'a str,
    /// The result block being filled (a loop's iteration argument), of type [`SLICE_TY`].
    acc: &'a str,
}

/// What every step of a packed tile reads: the panel (its source, its buffer for the
/// prefetches, its index), the first lane of each of its vectors, and the tile's rows of `x`.
struct PanelStep<'a> {
    source: &'a PanelSource,
    buf: &'a str,
    mt: &'a str,
    panel: &'a str,
    lanes: &'a [String],
    x_rows: &'a [String],
}

/// Where a packed tile reads its panels: the packed weight itself, or the f32 panels a block of
/// many rows widened it into first ([`Kernel::widened_panels`]).
struct PanelSource {
    tensor: String,
    /// Its tensor type, in its stored element type.
    ty: String,
    format: WeightFormat,
    /// The source's first panel and first step of `K` (index values) where it holds only a
    /// block of them: subtracted from a tile's panel and step to address it.
    first: Option<(String, String)>,
}

impl PanelSource {
    /// The packed right operand, read as it is stored.
    fn packed(kernel: &Kernel, mm: &MatMul) -> PanelSource {
        PanelSource {
            tensor: kernel.rhs.clone(),
            ty: mm.rhs_ty(),
            format: match mm.layout {
                RhsLayout::Packed(format) => format,
                _ => WeightFormat::F32,
            },
            first: None,
        }
    }
}

/// Text of one kernel, built apart from the forward function's body: a function's body, or
/// (inside a scan step, where a call per step is not wanted) code inlined in the step.
struct Kernel {
    text: String,
    /// Prefix of its temporaries, unique in the function the code lands in.
    prefix: String,
    tmp: usize,
    lanes: i64,
    /// The names of the operands and of the destination.
    x: String,
    rhs: String,
    out: String,
    /// The name of the bias, if the kernel adds one.
    bias: Option<String>,
    /// Int8 panels are multiplied with integer dot products ([`int8_dot`]), and `x` quantized
    /// for them once the kernel has read its sizes.
    int8_dot: Option<crate::Int8Dot>,
    x_int8: Option<int8_dot::QuantizedX>,
}

impl Emitter<'_> {
    /// Emits `result = x @ rhs` as a call to the tiled kernel for these types (defining it on
    /// first use).
    pub(super) fn emit_matmul_call(&mut self, result: &str, [x, rhs]: [&str; 2], bias: Option<&str>, mm: &MatMul, loc: &str) {
        debug_assert_eq!(bias.is_some(), mm.bias.is_some(), "a bias's name and type come together");
        if self.target.is_gpu() {
            self.emit_matmul_loops(result, [x, rhs], mm, loc);
            return;
        }
        if self.mode.in_scan_body {
            debug_assert!(bias.is_none(), "scan steps add no bias in the kernel");
            // Inside a scan step the loops are inlined: a step calls nothing.
            let out = self.empty(&mm.out);
            let prefix = format!("{}_", self.fresh());
            let mut kernel = Kernel::new(&prefix, self.target.lanes, [x, rhs, &out]);
            kernel.int8_dot = self.target.int8_dot;
            self.declare_int8_dot(mm);
            let filled = kernel.body(mm, false);
            self.body.push_str(&kernel.text);
            let ot = tensor_ty(&mm.out);
            self.line(&format!("{result} = tensor.cast {filled} : {ot} to {ot} {loc}"));
            return;
        }
        let key = format!(
            "{:?} {} {} {} {} {} {:?}",
            mm.layout,
            mm.x_transposed,
            tensor_ty(&mm.x),
            mm.rhs_ty(),
            tensor_ty(&mm.out),
            mm.group,
            mm.bias.as_ref().map(tensor_ty)
        );
        let (lanes, int8_dot) = (self.target.lanes, self.target.int8_dot);
        let name = self.functions.get_or_define("matmul", key, |name| {
            let mut kernel = Kernel::new("%k", lanes, ["%x", "%rhs", "%out"]);
            kernel.int8_dot = int8_dot;
            kernel.bias = mm.bias.as_ref().map(|_| "%bias".to_string());
            kernel.function(name, mm)
        });
        self.declare_int8_dot(mm);
        let (x, rhs) = (self.contiguous(x), self.contiguous(rhs));
        let init = self.empty(&mm.out);
        let (xt, rt, ot) = (tensor_ty(&mm.x), mm.rhs_ty(), tensor_ty(&mm.out));
        let (bias_arg, bias_ty) = match (bias, &mm.bias) {
            (Some(b), Some(t)) => (format!("{b}, "), format!("{}, ", tensor_ty(t))),
            _ => (String::new(), String::new()),
        };
        self.line(&format!(
            "{result} = func.call {name}({x}, {rhs}, {bias_arg}{init}) : ({xt}, {rt}, {bias_ty}{ot}) -> {ot} {loc}"
        ));
    }
}

impl Emitter<'_> {
    /// Emits `result = x @ rhs` as one `linalg.generic` over the result's axes and `k` (for a
    /// GPU, where it becomes one kernel: a thread per result element, summing over `k`).
    /// A packed right operand is read as one panel, the transpose (the GPU's packing, see
    /// `transposed_for_gpu`).
    fn emit_matmul_loops(&mut self, result: &str, [x, rhs]: [&str; 2], mm: &MatMul, loc: &str) {
        if mm.layout == RhsLayout::Transposed {
            // Threads compute consecutive columns `n`: reading `rhs[n, k]` in place, a warp's
            // loads would be a row apart each. A transposed copy costs one pass over `rhs`
            // (a tied embedding table of 50k tokens by 768: 154 MB, a fraction of a millisecond
            // on a GPU) and makes every load of the matmul consecutive.
            let (transposed, t) = self.emit_transpose(None, rhs, &mm.rhs, loc);
            let row_major = MatMul {
                layout: RhsLayout::RowMajor,
                rhs: t,
                x: mm.x.clone(),
                out: mm.out.clone(),
                group: mm.group,
                x_transposed: mm.x_transposed,
                bias: None,
            };
            return self.emit_matmul_loops(result, [x, &transposed], &row_major, loc);
        }
        let rank = mm.out.rank();
        let d = |i: usize| format!("d{i}");
        let (m, n, k) = (d(rank - 2), d(rank - 1), d(rank));
        let batch: Vec<String> = (0..rank - 2).map(d).collect();
        let with_batch = |tail: [&str; 2], batched: bool, group: i64| -> String {
            let mut axes: Vec<String> = if batched { batch.clone() } else { Vec::new() };
            if group > 1 && axes.len() > 1 {
                axes[1] = format!("{} floordiv {group}", axes[1]);
            }
            axes.extend(tail.iter().map(|s| s.to_string()));
            axes.join(", ")
        };
        let x_map = if mm.x_transposed { [&*k, &*m] } else { [&*m, &*k] };
        // Row-major or packed: a transposed operand was copied row-major above.
        let rhs_map = [&*k, &*n];
        let dims = (0..=rank).map(d).collect::<Vec<_>>().join(", ");
        let rhs_axes = match mm.layout {
            // A GPU's packed weight is its transpose, one panel `[1, K, N]`.
            RhsLayout::Packed(_) => format!("0, {k}, {n}"),
            _ => with_batch(rhs_map, mm.rhs.rank() == rank, mm.group),
        };
        let maps = [
            with_batch(x_map, mm.x.rank() == rank, 1),
            rhs_axes,
            (0..rank).map(d).collect::<Vec<_>>().join(", "),
        ];
        let maps: Vec<String> = maps.iter().map(|m| format!("affine_map<({dims}) -> ({m})>")).collect();
        let mut iterators = vec!["\"parallel\""; rank];
        iterators.push("\"reduction\"");
        let (xt, rt, ot) = (tensor_ty(&mm.x), mm.rhs_ty(), tensor_ty(&mm.out));
        let empty = self.empty(&mm.out);
        let zero = self.fresh();
        let init = self.fresh();
        self.line(&format!("{zero} = arith.constant 0.0 : f32"));
        self.line(&format!("{init} = linalg.fill ins({zero} : f32) outs({empty} : {ot}) -> {ot}"));
        self.line(&format!(
            "{result} = linalg.generic {{indexing_maps = [{}], iterator_types = [{}]}} ins({x}, {rhs} : {xt}, {rt}) outs({init} : {ot}) {{",
            maps.join(", "),
            iterators.join(", ")
        ));
        self.line("^bb0(%a: f32, %b: f32, %acc: f32):");
        self.line("  %p = arith.mulf %a, %b : f32");
        self.line("  %s = arith.addf %acc, %p : f32");
        self.line("  linalg.yield %s : f32");
        self.line(&format!("}} -> {ot} {loc}"));
    }
}

impl Kernel {
    /// A kernel reading `[x, rhs]` and filling `out`, with temporaries `{prefix}1, ...`.
    fn new(prefix: &str, lanes: i64, [x, rhs, out]: [&str; 3]) -> Kernel {
        Kernel {
            text: String::new(),
            prefix: prefix.to_string(),
            tmp: 0,
            lanes,
            x: x.to_string(),
            rhs: rhs.to_string(),
            out: out.to_string(),
            bias: None,
            int8_dot: None,
            x_int8: None,
        }
    }

    fn fresh(&mut self) -> String {
        self.tmp += 1;
        format!("{}{}", self.prefix, self.tmp)
    }

    fn line(&mut self, text: &str) {
        let _ = writeln!(self.text, "    {text}");
    }

    /// `a op b` on index values (`op`: `addi`, `minui`, ...); returns the result's name.
    fn index_op(&mut self, op: &str, a: &str, b: &str) -> String {
        let r = self.fresh();
        self.line(&format!("{r} = arith.{op} {a}, {b} : index"));
        r
    }

    fn index_const(&mut self, n: i64) -> String {
        let c = self.fresh();
        self.line(&format!("{c} = arith.constant {n} : index"));
        c
    }

    /// A dimension of an argument as an index value.
    fn dim(&mut self, arg: &str, t: &TensorType, axis: usize) -> String {
        match t.dims[axis] {
            Dim::Static(n) => self.index_const(n),
            Dim::Symbol(_) => {
                let c = self.index_const(axis as i64);
                let d = self.fresh();
                self.line(&format!("{d} = tensor.dim {arg}, {c} : {}", tensor_ty(t)));
                d
            }
        }
    }

    /// `a - a % b` (the part of `a` that whole steps of `b` cover), as an index value.
    fn round_down(&mut self, a: &str, b: i64) -> String {
        let c = self.index_const(b);
        let rem = self.index_op("remui", a, &c);
        self.index_op("subi", a, &rem)
    }

    /// Opens `scf.for iv = from to to step step` carrying one tensor; returns (result, iv, arg).
    fn open_loop(&mut self, from: &str, to: &str, step: &str, init: &str, ty: &str) -> (String, String, String) {
        let (res, iv, arg) = (self.fresh(), self.fresh(), self.fresh());
        self.line(&format!(
            "{res} = scf.for {iv} = {from} to {to} step {step} iter_args({arg} = {init}) -> ({ty}) {{"
        ));
        (res, iv, arg)
    }

    fn close_loop(&mut self, value: &str, ty: &str) {
        self.line(&format!("  scf.yield {value} : {ty}"));
        self.line("}");
    }

    /// The whole kernel function `name(x, rhs, out) -> out`.
    fn function(mut self, name: &str, mm: &MatMul) -> String {
        let (xt, rt, ot) = (tensor_ty(&mm.x), mm.rhs_ty(), tensor_ty(&mm.out));
        let filled = self.body(mm, true);
        let bias = match (&self.bias, &mm.bias) {
            (Some(b), Some(t)) => format!("{b}: {}, ", tensor_ty(t)),
            _ => String::new(),
        };
        let mut text = String::new();
        let _ = writeln!(
            text,
            "  func.func private {name}(%x: {xt}, %rhs: {rt}, {bias}%out: {ot}) -> {ot} attributes {{llvm.linkage = #llvm.linkage<internal>}} {{"
        );
        text.push_str(&self.text);
        let _ = writeln!(text, "    return {filled} : {ot}");
        let _ = writeln!(text, "  }}");
        text
    }

    /// Emits the loops; returns the name of the filled result. A `parallel` kernel is one
    /// `scf.forall` over the batch axes and blocks of result columns (threads, through
    /// OpenMP); otherwise (inlined in a scan step) nested `scf.for` loops over the batch axes.
    /// Either way each block of columns is filled by [`Kernel::columns`], so the arithmetic of
    /// every element, and its result, does not depend on the number of threads.
    fn body(&mut self, mm: &MatMul, parallel: bool) -> String {
        let ot = tensor_ty(&mm.out);
        let r = mm.out.rank();
        let c0 = self.index_const(0);
        let c1 = self.index_const(1);
        // The right operand's axes of `N` and `K`; a packed one, `[panels, K, panel]`, pads
        // `N`, so `N` is the result's.
        let (n, k) = match mm.layout {
            RhsLayout::Transposed => (Some(mm.rhs.rank() - 2), mm.rhs.rank() - 1),
            RhsLayout::RowMajor => (Some(mm.rhs.rank() - 1), mm.rhs.rank() - 2),
            RhsLayout::Packed(_) => (None, 1),
        };
        let n = match n {
            Some(axis) => self.dim(&self.rhs.clone(), &mm.rhs, axis),
            None => self.dim(&self.out.clone(), &mm.out, r - 1),
        };
        let k = match mm.layout {
            // An int8 panel's rows include its blocks' scales: `K` is `x`'s.
            RhsLayout::Packed(_) => self.dim(&self.x.clone(), &mm.x, mm.x.rank() - 1),
            _ => self.dim(&self.rhs.clone(), &mm.rhs, k),
        };
        let m = self.dim(&self.out.clone(), &mm.out, r - 2);
        let bounds: Vec<String> = (0..r - 2).map(|axis| self.dim(&self.out.clone(), &mm.out, axis)).collect();
        if self.int8_dot.is_some() && matches!(mm.layout, RhsLayout::Packed(f) if f.is_blocked()) {
            self.x_int8 = Some(self.quantize_x(mm, &bounds, &m, &k));
        }
        let cols_per_tile = self.tile_shape(mm.layout).1;
        if parallel {
            // Blocks of whole tiles of columns, about COLUMN_BLOCKS of them: enough for every
            // thread to get several, and each block of `w` small enough to stay in cache while
            // all rows of `x` pass it.
            let per_block = self.ceil_div(&n, COLUMN_BLOCKS);
            let tiles = self.ceil_div(&per_block, cols_per_tile);
            let tile_cols = self.index_const(cols_per_tile);
            let width = self.index_op("muli", &tiles, &tile_cols);
            let block = self.index_op("maxui", &width, &tile_cols);
            let blocks = self.ceil_div_by(&n, &block);
            let (res, out) = (self.fresh(), self.fresh());
            let batch: Vec<String> = bounds.iter().map(|_| self.fresh()).collect();
            let b = self.fresh();
            let mut ivs = batch.clone();
            ivs.push(b.clone());
            let mut upper = bounds.clone();
            upper.push(blocks);
            self.line(&format!(
                "{res} = scf.forall ({}) in ({}) shared_outs({out} = {}) -> ({ot}) {{",
                ivs.join(", "),
                upper.join(", "),
                self.out
            ));
            let lo = self.index_op("muli", &b, &block);
            let left = self.index_op("subi", &n, &lo);
            let size = self.index_op("minui", &left, &block);
            let (slice, at) = self.slice_of(&out, &ot, r, &batch, &m, &lo, &size);
            let filled = self.columns(mm, &batch, &slice, &lo, &size, &m, &k);
            self.line("scf.forall.in_parallel {");
            self.line(&format!(
                "  tensor.parallel_insert_slice {filled} into {out}{at} : {SLICE_TY} into {ot}"
            ));
            self.line("}");
            self.line("}");
            return res;
        }
        // One loop per batch axis, innermost last; each carries the result tensor.
        let mut batch = Vec::new();
        let mut acc = self.out.clone();
        let mut closers = Vec::new();
        for bound in &bounds {
            let (res, iv, arg) = self.open_loop(&c0, bound, &c1, &acc, &ot);
            batch.push(iv);
            acc = arg;
            closers.push(res);
        }
        let (slice, at) = self.slice_of(&acc, &ot, r, &batch, &m, &c0, &n);
        let filled = self.columns(mm, &batch, &slice, &c0, &n, &m, &k);
        let mut result = self.fresh();
        self.line(&format!(
            "{result} = tensor.insert_slice {filled} into {acc}{at} : {SLICE_TY} into {ot}"
        ));
        for res in closers.iter().rev() {
            self.close_loop(&result, &ot);
            result = res.clone();
        }
        result
    }

    /// The `[M, size]` block of `tensor` at batch index `batch` and first column `lo`: its
    /// name, and the offsets, sizes and strides that address it (for the insert back).
    #[allow(clippy::too_many_arguments)]
    fn slice_of(&mut self, tensor: &str, ty: &str, rank: usize, batch: &[String], m: &str, lo: &str, size: &str) -> (String, String) {
        let mut offsets = batch.to_vec();
        offsets.extend(["0".to_string(), lo.to_string()]);
        let mut sizes = vec!["1".to_string(); rank - 2];
        sizes.extend([m.to_string(), size.to_string()]);
        let at = format!("[{}] [{}] [{}]", offsets.join(", "), sizes.join(", "), vec!["1"; rank].join(", "));
        let slice = self.fresh();
        self.line(&format!("{slice} = tensor.extract_slice {tensor}{at} : {ty} to {SLICE_TY}"));
        (slice, at)
    }

    /// Fills the `[M, size]` block `slice` of the result (its columns `lo..lo + size`) for one
    /// batch index: column tiles outermost, so the tile's rows of `w` (or panel of `b`) stay in
    /// cache while every row of `x` passes them. Within, whole tiles of rows, then the rows
    /// left over one at a time. Columns left over: one at a time (dot), or one masked tile
    /// (axpy).
    #[allow(clippy::too_many_arguments)]
    fn columns(&mut self, mm: &MatMul, batch: &[String], slice: &str, lo: &str, size: &str, m: &str, k: &str) -> String {
        if matches!(mm.layout, RhsLayout::Packed(_)) {
            return self.packed_columns(mm, batch, slice, lo, size, m, k);
        }
        let (c0, c1) = (self.index_const(0), self.index_const(1));
        let rhs_batch: Vec<String> = if mm.rhs.rank() == 2 {
            Vec::new()
        } else if mm.group > 1 {
            let g = self.index_const(mm.group);
            let head = self.fresh();
            self.line(&format!("{head} = arith.divui {}, {g} : index", batch[1]));
            let mut b = batch.to_vec();
            b[1] = head;
            b
        } else {
            batch.to_vec()
        };
        let (rows_per_tile, cols_per_tile) = self.tile_shape(mm.layout);
        let full_cols = self.round_down(size, cols_per_tile);
        let tile_step = self.index_const(cols_per_tile);
        let row_step = self.index_const(rows_per_tile);
        // (A packed right operand took `packed_columns` above.)
        let leftover_step = match mm.layout {
            RhsLayout::Transposed => c1.clone(),
            RhsLayout::RowMajor | RhsLayout::Packed(_) => tile_step.clone(),
        };
        let col_groups = [
            (c0.clone(), full_cols.clone(), tile_step, true),
            (full_cols, size.to_string(), leftover_step, false),
        ];
        // The dot tile sums `K` a block at a time ([`Kernel::open_k_blocks`]): the tile's rows
        // of `w` then stay in L1 while rows of `x` pass (K = 3072 spills it otherwise).
        let mut filled = slice.to_string();
        let mut k_block = None;
        if mm.layout == RhsLayout::Transposed {
            let (res, k_lo, k_hi, arg) = self.open_k_blocks(k, K_BLOCK, [&c0, &c1], slice, None);
            filled = arg;
            k_block = Some((res, k_lo, k_hi));
        }
        let (k_lo, k_hi) = match &k_block {
            Some((_, lo, hi)) => (lo.clone(), hi.clone()),
            None => (c0.clone(), k.to_string()),
        };
        // Rows a block at a time, so that the block of `x` stays in L2 while the columns pass
        // it (128 rows fit whole; 512 did not). Blocks are whole tiles
        // long, so only the last has rows left over.
        let row_block = self.index_const(ROW_BLOCK);
        let (rows_res, block_lo, arg) = self.open_loop(&c0, m, &row_block, &filled, SLICE_TY);
        filled = arg;
        let block_end = self.index_op("addi", &block_lo, &row_block);
        let block_hi = self.index_op("minui", &block_end, m);
        let block_rows = self.index_op("subi", &block_hi, &block_lo);
        let whole_rows = self.round_down(&block_rows, rows_per_tile);
        let full_rows = self.index_op("addi", &block_lo, &whole_rows);
        for (from, to, step, whole) in col_groups {
            let (res, col, arg) = self.open_loop(&from, &to, &step, &filled, SLICE_TY);
            let rhs_col = self.fresh();
            self.line(&format!("  {rhs_col} = arith.addi {col}, {lo} : index"));
            let mut inner = arg;
            for (from, to, step, rows) in [(&block_lo, &full_rows, &row_step, rows_per_tile), (&full_rows, &block_hi, &c1, 1)] {
                let (res, row, arg) = self.open_loop(from, to, step, &inner, SLICE_TY);
                let at = TileAt {
                    batch,
                    rhs_batch: &rhs_batch,
                    row: &row,
                    col: &col,
                    rhs_col: &rhs_col,
                    k_lo: &k_lo,
                    k: &k_hi,
                    acc: &arg,
                };
                let next = match mm.layout {
                    RhsLayout::Transposed => self.dot_tile(mm, &at, rows, if whole { cols_per_tile } else { 1 }),
                    RhsLayout::RowMajor | RhsLayout::Packed(_) => self.axpy_tile(mm, &at, rows, whole),
                };
                self.close_loop(&next, SLICE_TY);
                inner = res;
            }
            self.close_loop(&inner, SLICE_TY);
            filled = res;
        }
        self.close_loop(&filled, SLICE_TY);
        filled = rows_res;
        if let Some((res, ..)) = k_block {
            self.close_loop(&filled, SLICE_TY);
            filled = res;
        }
        filled
    }

    /// Opens the loop over blocks of `K`, `block` long, carrying the result block `init`;
    /// returns (result, first `k` of the block, its end, carried value). A tile adds the first
    /// block's sums to the bias (or zero) and later blocks' to the result so far, so the result
    /// needs no pass of its own to clear it. At least one block runs, so that `K = 0` still
    /// writes the bias; none where `only_if` (an `i1`) is false.
    fn open_k_blocks(
        &mut self,
        k: &str,
        block: i64,
        [c0, c1]: [&str; 2],
        init: &str,
        only_if: Option<&str>,
    ) -> (String, String, String, String) {
        let block = self.index_const(block);
        let mut blocks_end = self.index_op("maxui", k, c1);
        if let Some(cond) = only_if {
            let end = self.fresh();
            self.line(&format!("{end} = arith.select {cond}, {blocks_end}, {c0} : index"));
            blocks_end = end;
        }
        let (res, k_lo, arg) = self.open_loop(c0, &blocks_end, &block, init, SLICE_TY);
        let end = self.index_op("addi", &k_lo, &block);
        let k_hi = self.index_op("minui", &end, k);
        (res, k_lo, k_hi, arg)
    }

    /// Rows and columns of this layout's tile.
    fn tile_shape(&self, layout: RhsLayout) -> (i64, i64) {
        match layout {
            RhsLayout::Transposed => dot_tile_shape(self.lanes),
            RhsLayout::RowMajor => (axpy_rows(self.lanes), AXPY_VECTORS * self.lanes),
            RhsLayout::Packed(_) => (packed_rows(self.lanes)[0], AXPY_VECTORS * self.lanes),
        }
    }

    /// Fills the `[M, size]` block `slice` of `x @ transpose(w)` for a packed `w` (columns
    /// `lo..lo + size`, whole panels from `lo` on): `K` a block at a time, and in each block,
    /// tiles of rows, each across every panel of the block. A tile's rows of `x` (at most
    /// 12 × [`PACKED_K_BLOCK`] floats) stay in L1 while the panels stream from L2, prefetched
    /// a few steps ahead.
    ///
    /// Panels stored as bf16 or int8 are converted as a tile reads them, once per tile of rows;
    /// with many rows (a prefill), each block of `K` of an int8 block's panels is first widened
    /// to f32 panels, once, and the tiles read those ([`Kernel::widened_panels`]). (bf16's
    /// conversion is a shift: widening its panels first measured no faster.) Int8 panels read
    /// with integer dot products are not converted at all, whatever the rows.
    #[allow(clippy::too_many_arguments)]
    fn packed_columns(&mut self, mm: &MatMul, batch: &[String], slice: &str, lo: &str, size: &str, m: &str, k: &str) -> String {
        if PanelSource::packed(self, mm).format != WeightFormat::Int8 || self.int8_dot.is_some() {
            return self.packed_blocks(mm, batch, [slice, lo, size, m, k], None);
        }
        // Both loop nests, one after the other, each running only where it applies (rather than
        // an `scf.if` between them, whose result bufferization copies back into the result).
        let (least, many, few) = (self.index_const(WIDEN_ROWS), self.fresh(), self.fresh());
        self.line(&format!("{many} = arith.cmpi uge, {m}, {least} : index"));
        self.line(&format!("{few} = arith.cmpi ult, {m}, {least} : index"));
        let widened = self.packed_blocks(mm, batch, [slice, lo, size, m, k], Some((&many, true)));
        self.packed_blocks(mm, batch, [&widened, lo, size, m, k], Some((&few, false)))
    }

    /// The loops of [`Kernel::packed_columns`] over blocks of `K`, tiles of rows and panels,
    /// reading the panels as stored, or from their block widened to f32 panels first; with
    /// `only_if = (cond, widen)`, none of it runs unless `cond` holds.
    fn packed_blocks(
        &mut self,
        mm: &MatMul,
        batch: &[String],
        [slice, lo, size, m, k]: [&str; 5],
        only_if: Option<(&str, bool)>,
    ) -> String {
        let (c0, c1) = (self.index_const(0), self.index_const(1));
        let panel = AXPY_VECTORS * self.lanes;
        let panel_step = self.index_const(panel);
        let full_cols = self.round_down(size, panel);
        let (res, k_lo, k_hi, mut filled) = self.open_k_blocks(k, PACKED_K_BLOCK, [&c0, &c1], slice, only_if.map(|(c, _)| c));
        let source = if only_if.is_some_and(|(_, widen)| widen) {
            self.widened_panels(mm, lo, size, [&k_lo, &k_hi])
        } else {
            PanelSource::packed(self, mm)
        };
        // Rows: whole tiles of each height in turn, down to single rows.
        let mut row_lo = c0.clone();
        let tiles = match self.int8_dot.filter(|_| source.format.is_blocked()) {
            Some(kind) => int8_dot::dot_rows(self.lanes, kind).to_vec(),
            None => packed_rows(self.lanes).to_vec(),
        };
        for rows in tiles {
            let left = self.index_op("subi", m, &row_lo);
            let whole = self.round_down(&left, rows);
            let row_hi = self.index_op("addi", &row_lo, &whole);
            let step = self.index_const(rows);
            let (rows_res, row, rows_arg) = self.open_loop(&row_lo, &row_hi, &step, &filled, SLICE_TY);
            let mut inner = rows_arg;
            for (from, to, whole) in [(c0.as_str(), full_cols.as_str(), true), (full_cols.as_str(), size, false)] {
                let (cols_res, col, cols_arg) = self.open_loop(from, to, &panel_step, &inner, SLICE_TY);
                let rhs_col = self.index_op("addi", &col, lo);
                let at = TileAt {
                    batch,
                    rhs_batch: &[],
                    row: &row,
                    col: &col,
                    rhs_col: &rhs_col,
                    k_lo: &k_lo,
                    k: &k_hi,
                    acc: &cols_arg,
                };
                let next = self.packed_tile(mm, &at, rows, whole, &source);
                self.close_loop(&next, SLICE_TY);
                inner = cols_res;
            }
            self.close_loop(&inner, SLICE_TY);
            filled = rows_res;
            row_lo = row_hi;
        }
        self.close_loop(&filled, SLICE_TY);
        res
    }

    /// One `rows × panel` tile of `x @ transpose(w)` for a packed `w`, over the block
    /// `k_lo..k` of `K`: starts from the bias (or zero) in the first block and from the result
    /// so far after it; a tile that is not `whole` masks the columns past `N`.
    fn packed_tile(&mut self, mm: &MatMul, at: &TileAt<'_>, rows: i64, whole: bool, source: &PanelSource) -> String {
        let wt = source.ty.clone();
        let lanes = self.lanes;
        let vec = format!("vector<{lanes}xf32>");
        let bounds = if whole { "true" } else { "false" };
        let row_ix = self.offsets(at.row, rows, 1);
        let col_ix = self.offsets(at.col, AXPY_VECTORS, lanes);
        let rhs_col_ix = self.offsets(at.rhs_col, AXPY_VECTORS, lanes);
        let c0 = self.index_const(0);
        let lane_ix = self.offsets(&c0, AXPY_VECTORS, lanes);
        let pad = self.fresh();
        self.line(&format!("{pad} = arith.constant 0.0 : f32"));
        let panel_len = self.index_const(AXPY_VECTORS * lanes);
        let mut panel = self.index_op("divui", at.rhs_col, &panel_len);
        if let Some((first_panel, _)) = &source.first {
            panel = self.index_op("subi", &panel, first_panel);
        }
        let count = rows as usize * col_ix.len();
        let types = vec![vec.as_str(); count].join(", ");
        // Where the tile starts: the bias of its columns (zero without one) in the first block
        // of `K`, the result so far after it.
        let first_block = self.fresh();
        self.line(&format!("{first_block} = arith.cmpi eq, {}, {c0} : index", at.k_lo));
        let start = self.fresh();
        self.line(&format!("{start}:{count} = scf.if {first_block} -> ({types}) {{"));
        let mut starts = Vec::with_capacity(count);
        match (&self.bias.clone(), &mm.bias) {
            (Some(bias), Some(bt)) => {
                let per_row: Vec<String> = rhs_col_ix
                    .iter()
                    .map(|col| {
                        let b = self.fresh();
                        self.line(&format!(
                            "  {b} = vector.transfer_read {bias}[{col}], {pad} {{in_bounds = [{bounds}]}} : {}, {vec}",
                            tensor_ty(bt)
                        ));
                        b
                    })
                    .collect();
                for _ in 0..rows {
                    starts.extend(per_row.iter().cloned());
                }
            }
            _ => {
                let zero = self.fresh();
                self.line(&format!("  {zero} = arith.constant dense<0.0> : {vec}"));
                starts = vec![zero; count];
            }
        }
        self.line(&format!("  scf.yield {} : {types}", starts.join(", ")));
        self.line("} else {");
        let mut so_far = Vec::with_capacity(count);
        for row in &row_ix {
            for col in &col_ix {
                let a = self.fresh();
                self.line(&format!(
                    "  {a} = vector.transfer_read {}[{row}, {col}], {pad} {{in_bounds = [{bounds}]}} : {SLICE_TY}, {vec}",
                    at.acc
                ));
                so_far.push(a);
            }
        }
        self.line(&format!("  scf.yield {} : {types}", so_far.join(", ")));
        self.line("}");
        // The panel is read through its buffer too, for the prefetches (tensors have none).
        let (buf, mt) = (self.fresh(), wt.replacen("tensor", "memref", 1));
        self.line(&format!(
            "{buf} = bufferization.to_buffer {} read_only : {wt} to {mt}",
            source.tensor
        ));
        let format = source.format;
        let (res, kk, by) = (self.fresh(), self.fresh(), self.index_const(1));
        let args: Vec<String> = (0..count).map(|_| self.fresh()).collect();
        let inits: Vec<String> = args.iter().enumerate().map(|(i, a)| format!("{a} = {start}#{i}")).collect();
        let step = PanelStep {
            source,
            buf: &buf,
            mt: &mt,
            panel: &panel,
            lanes: &lane_ix,
            x_rows: &row_ix,
        };
        if format.is_blocked() && self.int8_dot.is_some() {
            self.int8_dot_blocks(at, &step, &res, [&args, &inits]);
        } else if format == WeightFormat::Int8 {
            // Blocks of K, each with its scales, and the block's steps within (`k_lo` and `k`
            // are whole blocks: the codegen packs int8 only rows of whole blocks).
            let (kb, block_len) = (self.fresh(), self.index_const(INT8_BLOCK as i64));
            self.line(&format!(
                "{res}:{count} = scf.for {kb} = {} to {} step {block_len} iter_args({}) -> ({types}) {{",
                at.k_lo,
                at.k,
                inits.join(", ")
            ));
            let (scales, first_row) = self.int8_scales(&wt, format, &panel, &kb);
            let block_end = self.index_op("addi", &kb, &block_len);
            let (inner, inner_args) = (self.fresh(), args.iter().map(|_| self.fresh()).collect::<Vec<_>>());
            let inner_inits: Vec<String> = inner_args.iter().zip(&args).map(|(a, b)| format!("{a} = {b}")).collect();
            self.line(&format!(
                "  {inner}:{count} = scf.for {kk} = {kb} to {block_end} step {by} iter_args({}) -> ({types}) {{",
                inner_inits.join(", ")
            ));
            let row = self.index_op("addi", &kk, &first_row);
            let next = self.panel_step(mm, at, &step, [&row, &kk], Some(&scales), &inner_args);
            self.line(&format!("  scf.yield {} : {types}", next.join(", ")));
            self.line("}");
            let done: Vec<String> = (0..count).map(|i| format!("{inner}#{i}")).collect();
            self.line(&format!("  scf.yield {} : {types}", done.join(", ")));
            self.line("}");
        } else {
            self.line(&format!(
                "{res}:{count} = scf.for {kk} = {} to {} step {by} iter_args({}) -> ({types}) {{",
                at.k_lo,
                at.k,
                inits.join(", ")
            ));
            let row = match &source.first {
                Some((_, first_step)) => self.index_op("subi", &kk, first_step),
                None => kk.clone(),
            };
            let next = self.panel_step(mm, at, &step, [&row, &kk], None, &args);
            self.line(&format!("  scf.yield {} : {types}", next.join(", ")));
            self.line("}");
        }
        self.write_tile(at.acc, &res, [&row_ix, &col_ix], whole)
    }

    /// One step of the packed kernel: the panel's `row` (the step `kk` of `K`, or for int8 its
    /// row among the blocks' scales) read as f32 vectors (widened from bf16, or int8 times its
    /// block's `scales`, one per vector; without them, unscaled), prefetched ahead, and
    /// multiplied into the accumulators `acc`.
    fn panel_step(
        &mut self,
        mm: &MatMul,
        at: &TileAt<'_>,
        step: &PanelStep<'_>,
        [row, kk]: [&String; 2],
        scales: Option<&[String]>,
        acc: &[String],
    ) -> Vec<String> {
        let lanes = self.lanes;
        let (ahead, later) = (self.index_const(PREFETCH_STEPS), self.fresh());
        self.line(&format!("  {later} = arith.addi {row}, {ahead} : index"));
        // One prefetch per 64-byte line of the panel's row (an f32 panel row is whole lines;
        // a bf16 or int8 one is at most one).
        let bytes_per_lane = step.source.format.element_bytes() as i64;
        let per_line = (64 / (lanes * bytes_per_lane)).max(1) as usize;
        for lane in step.lanes.iter().step_by(per_line) {
            self.line(&format!(
                "  memref.prefetch {}[{}, {later}, {lane}], read, locality<3>, data : {}",
                step.buf, step.panel, step.mt
            ));
        }
        let bs = self.panel_vectors(step.source, step.panel, row, step.lanes, scales);
        self.broadcast_step(mm, at.batch, step.x_rows, kk, &bs, acc)
    }

    /// The vectors of row `row` of panel `panel` of `source` starting at lanes `lanes_at`, as f32:
    /// widened from bf16, or int8 times its block's `scales` (one per vector; without them,
    /// unscaled).
    fn panel_vectors(
        &mut self,
        source: &PanelSource,
        panel: &str,
        row: &str,
        lanes_at: &[String],
        scales: Option<&[String]>,
    ) -> Vec<String> {
        let lanes = self.lanes;
        let elem = super::text::format_elem(source.format);
        let (stored, vec) = (format!("vector<{lanes}x{elem}>"), format!("vector<{lanes}xf32>"));
        let pad = self.fresh();
        let zero = if source.format.is_blocked() { "0" } else { "0.0" };
        self.line(&format!("  {pad} = arith.constant {zero} : {elem}"));
        let mut bs = Vec::with_capacity(lanes_at.len());
        for (j, lane) in lanes_at.iter().enumerate() {
            let read = self.fresh();
            self.line(&format!(
                "  {read} = vector.transfer_read {}[{panel}, {row}, {lane}], {pad} {{in_bounds = [true]}} : {}, {stored}",
                source.tensor, source.ty
            ));
            let value = match (source.format, scales) {
                (WeightFormat::F32, _) => read,
                (WeightFormat::Bf16, _) => {
                    let wide = self.fresh();
                    self.line(&format!("  {wide} = arith.extf {read} : {stored} to {vec}"));
                    wide
                }
                (WeightFormat::Int4, _) => unreachable!("int4 panels are read with dot products only (`check_target`)"),
                (WeightFormat::Int8, scales) => {
                    let float = self.fresh();
                    self.line(&format!("  {float} = arith.sitofp {read} : {stored} to {vec}"));
                    match scales.and_then(|s| s.get(j)) {
                        Some(scale) => {
                            let scaled = self.fresh();
                            self.line(&format!("  {scaled} = arith.mulf {float}, {scale} : {vec}"));
                            scaled
                        }
                        None => float,
                    }
                }
            };
            bs.push(value);
        }
        bs
    }

    /// The scales of the int8 (or int4) block starting at step `kb` of `K`, one f32 vector per vector of
    /// the panel (the block's first rows hold them as bytes, see [`Packing`]), and what to add
    /// to a step of the block to get its row of the panel.
    fn int8_scales(&mut self, wt: &str, format: WeightFormat, panel: &str, kb: &str) -> (Vec<String>, String) {
        let lanes = self.lanes;
        let width = AXPY_VECTORS * lanes;
        // The panel's `width` scales fill its first INT8_SCALE_ROWS rows; each vector of them
        // (4 · lanes bytes) this many.
        let rows_per_vector = INT8_SCALE_ROWS as i64 / AXPY_VECTORS;
        let block_len = self.index_const(INT8_BLOCK as i64);
        let block = self.index_op("divui", kb, &block_len);
        let block_rows = self.index_const(format.block_rows() as i64);
        let scale_row = self.index_op("muli", &block, &block_rows);
        let (c0, pad) = (self.index_const(0), self.fresh());
        self.line(&format!("  {pad} = arith.constant 0 : i8"));
        // Rows are read one vector each and joined with a shuffle: a 2-D transfer is lowered
        // through a stack buffer, allocated anew at every block of every tile (a stack
        // overflow on a 32k-row head).
        debug_assert_eq!(rows_per_vector, 2, "a vector of scales is two rows of the panel");
        let row_ty = format!("vector<{width}xi8>");
        let joined: Vec<String> = (0..2 * width).map(|i| i.to_string()).collect();
        let joined = joined.join(", ");
        let mut scales = Vec::with_capacity(AXPY_VECTORS as usize);
        for j in 0..AXPY_VECTORS {
            let mut rows = Vec::new();
            for r in 0..rows_per_vector {
                let offset = self.index_const(j * rows_per_vector + r);
                let at = self.index_op("addi", &scale_row, &offset);
                let bytes = self.fresh();
                self.line(&format!(
                    "  {bytes} = vector.transfer_read {}[{panel}, {at}, {c0}], {pad} {{in_bounds = [true]}} : {wt}, {row_ty}",
                    self.rhs
                ));
                rows.push(bytes);
            }
            let (line, scale) = (self.fresh(), self.fresh());
            self.line(&format!(
                "  {line} = vector.shuffle {}, {} [{joined}] : {row_ty}, {row_ty}",
                rows[0], rows[1]
            ));
            self.line(&format!(
                "  {scale} = vector.bitcast {line} : vector<{}xi8> to vector<{lanes}xf32>",
                2 * width
            ));
            scales.push(scale);
        }
        // Step `kk` of the block is row `scale_row + scale rows + (kk - kb)`.
        let scale_rows = self.index_const(INT8_SCALE_ROWS as i64);
        let first = self.index_op("addi", &scale_row, &scale_rows);
        let offset = self.index_op("subi", &first, kb);
        (scales, offset)
    }

    /// One step `kk` of a broadcast tile: for each row, `x[row, kk]` (`x[kk, row]` when
    /// `x_transposed`) broadcast and multiplied with each vector of `bs`, added to the row's
    /// accumulators `acc` (row-major, `bs.len()` per row). Returns the new accumulators.
    fn broadcast_step(&mut self, mm: &MatMul, batch: &[String], row_ix: &[String], kk: &str, bs: &[String], acc: &[String]) -> Vec<String> {
        let xt = tensor_ty(&mm.x);
        let vec = format!("vector<{}xf32>", self.lanes);
        let mut next = Vec::with_capacity(acc.len());
        for (i, row) in row_ix.iter().enumerate() {
            let (a, splat) = (self.fresh(), self.fresh());
            let mut idx = batch.to_vec();
            if mm.x_transposed {
                idx.extend([kk.to_string(), row.clone()]);
            } else {
                idx.extend([row.clone(), kk.to_string()]);
            }
            self.line(&format!("  {a} = tensor.extract {}[{}] : {xt}", self.x, idx.join(", ")));
            self.line(&format!("  {splat} = vector.broadcast {a} : f32 to {vec}"));
            for (j, bv) in bs.iter().enumerate() {
                let f = self.fresh();
                self.line(&format!("  {f} = vector.fma {splat}, {bv}, {} : {vec}", acc[i * bs.len() + j]));
                next.push(f);
            }
        }
        next
    }

    /// Writes a broadcast tile's accumulators, the results of `res` (row-major), into `acc` at
    /// rows `row_ix` and columns `col_ix` (each a vector's first); columns past the end are
    /// masked off unless the tile is `whole`. Returns the updated tensor.
    fn write_tile(&mut self, acc: &str, res: &str, [row_ix, col_ix]: [&[String]; 2], whole: bool) -> String {
        let vec = format!("vector<{}xf32>", self.lanes);
        let mut acc = acc.to_string();
        for (i, row) in row_ix.iter().enumerate() {
            for (j, col) in col_ix.iter().enumerate() {
                let written = self.fresh();
                self.line(&format!(
                    "{written} = vector.transfer_write {res}#{}, {acc}[{row}, {col}] {{in_bounds = [{whole}]}} : {vec}, {SLICE_TY}",
                    i * col_ix.len() + j,
                ));
                acc = written;
            }
        }
        acc
    }

    /// `ceil(a / b)` for a constant `b`, as an index value.
    fn ceil_div(&mut self, a: &str, b: i64) -> String {
        let c = self.index_const(b);
        self.ceil_div_by(a, &c)
    }

    /// `ceil(a / b)`, as an index value.
    fn ceil_div_by(&mut self, a: &str, b: &str) -> String {
        self.index_op("ceildivui", a, b)
    }

    /// One `rows × cols` tile of `x @ transpose(w)`: a vector of partial sums per element over
    /// `k` a vector at a time, the last, partial vector masked, then summed across lanes.
    fn dot_tile(&mut self, mm: &MatMul, at: &TileAt<'_>, rows: i64, cols: i64) -> String {
        debug_assert!(!mm.x_transposed, "the dot tile reads rows of x as vectors");
        let (xt, wt) = (tensor_ty(&mm.x), mm.rhs_ty());
        let lanes = self.lanes;
        let vec = format!("vector<{lanes}xf32>");
        let row_ix = self.offsets(at.row, rows, 1);
        let col_ix = self.offsets(at.col, cols, 1);
        let rhs_col_ix = self.offsets(at.rhs_col, cols, 1);
        let zero = self.fresh();
        self.line(&format!("{zero} = arith.constant dense<0.0> : {vec}"));
        let pad = self.fresh();
        self.line(&format!("{pad} = arith.constant 0.0 : f32"));
        let count = (rows * cols) as usize;
        let types = vec![vec.as_str(); count].join(", ");
        let span = self.fresh();
        self.line(&format!("{span} = arith.subi {}, {} : index", at.k, at.k_lo));
        let whole = self.round_down(&span, lanes);
        let full = self.fresh();
        self.line(&format!("{full} = arith.addi {}, {whole} : index", at.k_lo));
        let step = self.index_const(lanes);
        // Whole vectors, then the partial one (a loop of zero or one step; only the last block
        // of `K` has one, since blocks are whole vectors long).
        let mut sums: Vec<String> = vec![zero.clone(); count];
        for (from, to, in_bounds) in [(at.k_lo, full.as_str(), true), (full.as_str(), at.k, false)] {
            let (res, kk) = (self.fresh(), self.fresh());
            let args: Vec<String> = (0..count).map(|_| self.fresh()).collect();
            let inits: Vec<String> = args.iter().zip(&sums).map(|(a, s)| format!("{a} = {s}")).collect();
            self.line(&format!(
                "{res}:{count} = scf.for {kk} = {from} to {to} step {step} iter_args({}) -> ({types}) {{",
                inits.join(", ")
            ));
            let xs: Vec<String> = row_ix
                .iter()
                .map(|row| self.read_vector(&self.x.clone(), &xt, at.batch, [row, &kk], &pad, in_bounds))
                .collect();
            let ws: Vec<String> = rhs_col_ix
                .iter()
                .map(|col| self.read_vector(&self.rhs.clone(), &wt, at.rhs_batch, [col, &kk], &pad, in_bounds))
                .collect();
            let mut next = Vec::with_capacity(count);
            for (i, xv) in xs.iter().enumerate() {
                for (j, wv) in ws.iter().enumerate() {
                    let f = self.fresh();
                    self.line(&format!("  {f} = vector.fma {xv}, {wv}, {} : {vec}", args[i * cols as usize + j]));
                    next.push(f);
                }
            }
            self.line(&format!("  scf.yield {} : {types}", next.join(", ")));
            self.line("}");
            sums = (0..count).map(|i| format!("{res}#{i}")).collect();
        }
        let mut acc = at.acc.to_string();
        let c0 = self.index_const(0);
        let first_block = self.fresh();
        self.line(&format!("{first_block} = arith.cmpi eq, {}, {c0} : index", at.k_lo));
        if cols > 1 {
            // A whole tile: each row's lane sums at once, added to its columns as one vector.
            let cv = format!("vector<{cols}xf32>");
            for (i, row) in row_ix.iter().enumerate() {
                let row_sums = sums[i * cols as usize..(i + 1) * cols as usize].to_vec();
                let folded = self.lane_sums(&row_sums, &zero);
                let (picked, total, next) = (self.fresh(), self.fresh(), self.fresh());
                let first: Vec<String> = (0..cols).map(|c| c.to_string()).collect();
                self.line(&format!(
                    "{picked} = vector.shuffle {folded}, {folded} [{}] : {vec}, {vec}",
                    first.join(", ")
                ));
                let before = self.sum_start(mm, [&first_block, &pad], &acc, [row, &col_ix[0]], &rhs_col_ix[0], cols);
                self.line(&format!("{total} = arith.addf {before}, {picked} : {cv}"));
                self.line(&format!(
                    "{next} = vector.transfer_write {total}, {acc}[{row}, {}] {{in_bounds = [true]}} : {cv}, {SLICE_TY}",
                    col_ix[0]
                ));
                acc = next;
            }
            return acc;
        }
        for (i, row) in row_ix.iter().enumerate() {
            for (j, col) in col_ix.iter().enumerate() {
                let s = self.fresh();
                self.line(&format!(
                    "{s} = vector.reduction <add>, {} : {vec} into f32",
                    sums[i * cols as usize + j]
                ));
                let (total, next) = (self.fresh(), self.fresh());
                let before = self.sum_start(mm, [&first_block, &pad], &acc, [row, col], &rhs_col_ix[j], 1);
                self.line(&format!("{total} = arith.addf {before}, {s} : f32"));
                self.line(&format!("{next} = tensor.insert {total} into {acc}[{row}, {col}] : {SLICE_TY}"));
                acc = next;
            }
        }
        acc
    }

    /// What `cols` sums of one row of a dot tile are added to, as a `vector<cols x f32>` (an
    /// `f32` for one column): in the first block of `K` the bias of their columns (zero
    /// without one), after it the result so far at `acc[at]`. `rhs_col` is the first column's
    /// index in the whole result (the bias's index).
    fn sum_start(
        &mut self,
        mm: &MatMul,
        [first_block, pad]: [&str; 2],
        acc: &str,
        [row, col]: [&String; 2],
        rhs_col: &str,
        cols: i64,
    ) -> String {
        let ty = if cols > 1 {
            format!("vector<{cols}xf32>")
        } else {
            "f32".to_string()
        };
        let (start, before, so_far) = (self.fresh(), self.fresh(), self.fresh());
        self.line(&format!("{before} = scf.if {first_block} -> ({ty}) {{"));
        match (&self.bias.clone(), &mm.bias, cols > 1) {
            (Some(bias), Some(bt), true) => self.line(&format!(
                "  {start} = vector.transfer_read {bias}[{rhs_col}], {pad} {{in_bounds = [true]}} : {}, {ty}",
                tensor_ty(bt)
            )),
            (Some(bias), Some(bt), false) => self.line(&format!("  {start} = tensor.extract {bias}[{rhs_col}] : {}", tensor_ty(bt))),
            (_, _, true) => self.line(&format!("  {start} = arith.constant dense<0.0> : {ty}")),
            (_, _, false) => self.line(&format!("  {start} = arith.constant 0.0 : f32")),
        }
        self.line(&format!("  scf.yield {start} : {ty}"));
        self.line("} else {");
        if cols > 1 {
            self.line(&format!(
                "  {so_far} = vector.transfer_read {acc}[{row}, {col}], {pad} {{in_bounds = [true]}} : {SLICE_TY}, {ty}"
            ));
        } else {
            self.line(&format!("  {so_far} = tensor.extract {acc}[{row}, {col}] : {SLICE_TY}"));
        }
        self.line(&format!("  scf.yield {so_far} : {ty}"));
        self.line("}");
        before
    }

    /// The lane sums of `vectors` (each a vector of partial sums) as the first lanes of one
    /// vector, in order: a tree of shuffles that halves the partials of two vectors at a time
    /// (an unpaired vector pairs with `zero`), instead of one shuffle tree per vector. Returns
    /// the vector's name.
    fn lane_sums(&mut self, vectors: &[String], zero: &str) -> String {
        let lanes = self.lanes as usize;
        debug_assert!(vectors.len() <= lanes, "more sums than lanes");
        let vec = format!("vector<{lanes}xf32>");
        // Each vector holds `groups` sums, lanes `[g·partials, (g+1)·partials)` for sum g.
        let (mut level, mut partials) = (vectors.to_vec(), lanes);
        while partials > 1 || level.len() > 1 {
            let half = partials / 2;
            let mut next = Vec::new();
            for pair in level.chunks(2) {
                let (v, w) = (&pair[0], pair.get(1).map_or(zero, String::as_str));
                let groups = lanes / partials;
                // Sum g of v, then sum g of w (lanes offset by `lanes` in the shuffle).
                let pick = |second_half: bool| -> Vec<String> {
                    (0..2 * groups)
                        .flat_map(|g| {
                            let base = if g < groups {
                                g * partials
                            } else {
                                lanes + (g - groups) * partials
                            };
                            let from = base + if second_half { half } else { 0 };
                            (from..from + half).map(|l| l.to_string())
                        })
                        .collect()
                };
                let (lo, hi, sum) = (self.fresh(), self.fresh(), self.fresh());
                self.line(&format!(
                    "{lo} = vector.shuffle {v}, {w} [{}] : {vec}, {vec}",
                    pick(false).join(", ")
                ));
                self.line(&format!(
                    "{hi} = vector.shuffle {v}, {w} [{}] : {vec}, {vec}",
                    pick(true).join(", ")
                ));
                self.line(&format!("{sum} = arith.addf {lo}, {hi} : {vec}"));
                next.push(sum);
            }
            level = next;
            partials = half;
        }
        level.remove(0)
    }

    /// One `rows × (2 vectors)` tile of `x @ b`, accumulated over every `k`; a tile that is not
    /// `whole` masks the columns past `N`.
    fn axpy_tile(&mut self, mm: &MatMul, at: &TileAt<'_>, rows: i64, whole: bool) -> String {
        let bt = mm.rhs_ty();
        let lanes = self.lanes;
        let vec = format!("vector<{lanes}xf32>");
        let row_ix = self.offsets(at.row, rows, 1);
        let col_ix = self.offsets(at.col, AXPY_VECTORS, lanes);
        let rhs_col_ix = self.offsets(at.rhs_col, AXPY_VECTORS, lanes);
        let zero = self.fresh();
        self.line(&format!("{zero} = arith.constant dense<0.0> : {vec}"));
        let pad = self.fresh();
        self.line(&format!("{pad} = arith.constant 0.0 : f32"));
        let vectors = col_ix.len();
        let count = rows as usize * vectors;
        let (lo, by) = (self.index_const(0), self.index_const(1));
        let (res, kk) = (self.fresh(), self.fresh());
        let args: Vec<String> = (0..count).map(|_| self.fresh()).collect();
        let inits: Vec<String> = args.iter().map(|a| format!("{a} = {zero}")).collect();
        let types = vec![vec.as_str(); count].join(", ");
        self.line(&format!(
            "{res}:{count} = scf.for {kk} = {lo} to {} step {by} iter_args({}) -> ({types}) {{",
            at.k,
            inits.join(", ")
        ));
        let bs: Vec<String> = rhs_col_ix
            .iter()
            .map(|col| self.read_vector(&self.rhs.clone(), &bt, at.rhs_batch, [&kk, col], &pad, whole))
            .collect();
        let next = self.broadcast_step(mm, at.batch, &row_ix, &kk, &bs, &args);
        self.line(&format!("  scf.yield {} : {types}", next.join(", ")));
        self.line("}");
        self.write_tile(at.acc, &res, [&row_ix, &col_ix], whole)
    }

    /// `operand[prefix..., at[0], at[1]...]` as one vector register (a load; masked, with `pad`
    /// past the end, when not `in_bounds`). Returns its name.
    fn read_vector(&mut self, operand: &str, ty: &str, prefix: &[String], at: [&String; 2], pad: &str, in_bounds: bool) -> String {
        let v = self.fresh();
        let mut idx = prefix.to_vec();
        idx.extend(at.map(String::clone));
        self.line(&format!(
            "  {v} = vector.transfer_read {operand}[{}], {pad} {{in_bounds = [{in_bounds}]}} : {ty}, vector<{}xf32>",
            idx.join(", "),
            self.lanes
        ));
        v
    }

    /// `base + i * stride` for `i < count`, as index values (`base` itself first).
    fn offsets(&mut self, base: &str, count: i64, stride: i64) -> Vec<String> {
        let mut out = vec![base.to_string()];
        for i in 1..count {
            let c = self.index_const(i * stride);
            let s = self.index_op("addi", base, &c);
            out.push(s);
        }
        out
    }
}
