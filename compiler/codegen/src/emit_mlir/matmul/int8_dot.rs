//! Int8 and int4 panels multiplied in integers ([`crate::Target`]'s `int8_dot`): llama.cpp's
//! Q8_0 and Q4_0 arithmetic. Converting every weight to f32 and scaling it costs two
//! instructions per vector of weights on top of the multiply, more than a decode step's memory
//! reads leave time for.
//!
//! `x` is quantized once per call, each row's blocks of 32 elements of `K` as the weights are
//! (`q = round(x / s)`, `s = max |x| / 127`), and each block of a tile is one integer dot product
//! per element: `vpdpbusd` multiplies 4 unsigned bytes of the panel (stored `q + 128`, see
//! [`lmc_abi::Packing::int8_dot`]) with 4 signed bytes of `x` and adds them to a 32-bit lane,
//! so a vector of 16 columns takes 4 steps of `K` per instruction. The panel's offset of 128
//! adds `128 · Σ q_x` to every column, which is taken off the block's sum. The block's sum
//! (exact in 32 bits: at most 32 · 255 · 127) is then converted once and added, times the
//! column's scale and the row's, to the f32 result. Without VNNI, `vpmaddwd` multiplies the
//! same bytes widened to 16 bits two pairs per lane, and the pairs are added per block.
//!
//! Int4 panels (llama.cpp's Q4_0) hold two groups of 4 steps in each byte's nibbles, `q + 8`:
//! one load, two masks and a shift give the two groups' unsigned bytes, and `8 · Σ q_x` is
//! taken off.

use super::{Kernel, MatMul, PanelStep, RhsLayout, TileAt};
use crate::emit_mlir::{tensor_ty, Emitter};
use crate::Int8Dot;
use lmc_abi::{WeightFormat, INT8_BLOCK, INT8_DOT_GROUP};

/// `x` quantized by [`Kernel::quantize_x`]: `q`, `[..., M, K / 4 + K / 32]` of i32, holds each
/// row's bytes 4 to an element and then, one per block, `Σ q` over the block; `scales`,
/// `[..., M, K / 32]` of f32, each block's scale.
pub(super) struct QuantizedX {
    q: String,
    q_ty: String,
    scales: String,
    scales_ty: String,
    /// Where the blocks' sums start in a row of `q` (`K / 4`), an index value.
    sums_at: String,
}

/// How far ahead of a group of the panel its kernel prefetches, in bytes. Decoding a LLaMA
/// shape (8 layers of 1024, 100 tokens, 2 threads; AMD EPYC, 2026-12-07), AVX2's `vpmaddwd`
/// kernels took 7.6–8.1 ms per token with the f32 kernels' 32 rows ahead (512 bytes of its
/// 16-byte rows), 5.2–5.8 ms with 2 KiB and 4.7–5.8 ms with 4 KiB; `vpdpbusd` on AVX-512
/// (32-byte rows) 4.1–4.3 ms at 1 KiB, 4.0–4.4 ms at 4 KiB, 4.3–4.6 ms at 16 KiB.
const PREFETCH_BYTES: i64 = 4096;

/// Rows of the tiles, tallest first: each element of a tile keeps an f32 sum across blocks and
/// an i32 sum within one (two with `vpmaddwd`); with two vectors of the panel, a broadcast and
/// two vectors of scales, AVX-512's 32 registers hold 6 rows (29; `vpmaddwd`: 4, 29), AVX2's
/// 16 hold 3 (15; `vpmaddwd`: 2, 15).
pub(super) fn dot_rows(lanes: i64, kind: Int8Dot) -> [i64; 2] {
    match (lanes >= 16, kind) {
        (true, Int8Dot::Vnni) => [6, 1],
        (true, Int8Dot::Madd) => [4, 1],
        (false, Int8Dot::Vnni) => [3, 1],
        (false, Int8Dot::Madd) => [2, 1],
    }
}

/// The LLVM intrinsic of `vpdpbusd` on `lanes` 32-bit lanes. It is called as a function of
/// that name (LLVM takes a function named `llvm.*` for the intrinsic): an `llvm` dialect op
/// among the kernels' tensors would stop bufferization, which needs every op's memory effects.
fn vpdpbusd(lanes: i64) -> String {
    format!("@llvm.x86.avx512.vpdpbusd.{}", lanes * 32)
}

/// The LLVM intrinsic of `vpmaddwd` with `lanes` 32-bit results (as [`vpdpbusd`]).
fn vpmaddwd(lanes: i64) -> &'static str {
    match lanes {
        16 => "@llvm.x86.avx512.pmaddw.d.512",
        8 => "@llvm.x86.avx2.pmadd.wd",
        _ => "@llvm.x86.sse2.pmadd.wd",
    }
}

impl Emitter<'_> {
    /// Declares the intrinsic the kernel of `mm` calls, if it multiplies int8 panels with integer
    /// dot products.
    pub(super) fn declare_int8_dot(&mut self, mm: &MatMul) {
        if !matches!(mm.layout, RhsLayout::Packed(f) if f.is_blocked()) {
            return;
        }
        let lanes = self.target.lanes;
        let v = format!("vector<{lanes}xi32>");
        let declaration = match self.target.int8_dot {
            Some(Int8Dot::Vnni) => {
                let b = format!("vector<{}xi8>", 4 * lanes);
                format!("  func.func private {}({v}, {b}, {b}) -> {v}\n", vpdpbusd(lanes))
            }
            Some(Int8Dot::Madd) => {
                let h = format!("vector<{}xi16>", 2 * lanes);
                format!("  func.func private {}({h}, {h}) -> {v}\n", vpmaddwd(lanes))
            }
            None => return,
        };
        self.functions.declare(declaration);
    }
}

impl Kernel {
    /// Quantizes `x` (`[..., M, K]`, batch axes `bounds`, `K` whole blocks) into a
    /// [`QuantizedX`], read by every tile of the call.
    pub(super) fn quantize_x(&mut self, mm: &MatMul, bounds: &[String], m: &str, k: &str) -> QuantizedX {
        let rank = mm.x.rank();
        let block = INT8_BLOCK as i64;
        let (c0, c1) = (self.index_const(0), self.index_const(1));
        let group = self.index_const(INT8_DOT_GROUP as i64);
        let sums_at = self.index_op("divui", k, &group);
        let blocks = self.ceil_div(k, block);
        let q_cols = self.index_op("addi", &sums_at, &blocks);
        let dynamic = vec!["?"; rank].join("x");
        let (q_ty, scales_ty) = (format!("tensor<{dynamic}xi32>"), format!("tensor<{dynamic}xf32>"));
        let mut sizes = bounds.to_vec();
        sizes.push(m.to_string());
        let (q0, s0) = (self.fresh(), self.fresh());
        self.line(&format!("{q0} = tensor.empty({}, {q_cols}) : {q_ty}", sizes.join(", ")));
        self.line(&format!("{s0} = tensor.empty({}, {blocks}) : {scales_ty}", sizes.join(", ")));
        let both = format!("{q_ty}, {scales_ty}");
        // One loop per axis of `x` but `K`, then the blocks; each carries both tensors.
        let (mut q, mut s) = (q0, s0);
        let mut ivs = Vec::new();
        let mut results = Vec::new();
        let mut uppers = sizes.clone();
        uppers.push(blocks.clone());
        for upper in &uppers {
            let (res, iv, qa, sa) = (self.fresh(), self.fresh(), self.fresh(), self.fresh());
            self.line(&format!(
                "{res}:2 = scf.for {iv} = {c0} to {upper} step {c1} iter_args({qa} = {q}, {sa} = {s}) -> ({both}) {{"
            ));
            ivs.push(iv);
            results.push(res);
            (q, s) = (qa, sa);
        }
        let b = ivs.pop().unwrap_or_default();
        let block_len = self.index_const(block);
        let at = self.index_op("muli", &b, &block_len);
        let vec = format!("vector<{block}xf32>");
        let ints = format!("vector<{block}xi32>");
        let (zero, one, most) = (self.fresh(), self.fresh(), self.fresh());
        self.line(&format!("{zero} = arith.constant 0.0 : f32"));
        self.line(&format!("{one} = arith.constant 1.0 : f32"));
        self.line(&format!("{most} = arith.constant 127.0 : f32"));
        let mut idx = ivs.clone();
        idx.push(at);
        let names: Vec<String> = (0..12).map(|_| self.fresh()).collect();
        let [v, abs, amax, scale, some, inverse, inv, inv_v, t, rounded, qi, sum] = names.as_slice() else {
            unreachable!("twelve names")
        };
        self.line(&format!(
            "{v} = vector.transfer_read {}[{}], {zero} {{in_bounds = [true]}} : {}, {vec}",
            self.x,
            idx.join(", "),
            tensor_ty(&mm.x)
        ));
        self.line(&format!("{abs} = math.absf {v} : {vec}"));
        // NaN's maximum is NaN, and an infinity's scale infinite: either makes the block's scale,
        // and so every result it enters, not finite, as f32's arithmetic would.
        self.line(&format!("{amax} = vector.reduction <maximumf>, {abs} : {vec} into f32"));
        // As the weights' blocks are quantized (`lmc_abi::WeightFormat::Int8`).
        self.line(&format!("{scale} = arith.divf {amax}, {most} : f32"));
        self.line(&format!("{some} = arith.cmpf ogt, {scale}, {zero} : f32"));
        self.line(&format!("{inverse} = arith.divf {one}, {scale} : f32"));
        self.line(&format!("{inv} = arith.select {some}, {inverse}, {zero} : f32"));
        self.line(&format!("{inv_v} = vector.broadcast {inv} : f32 to {vec}"));
        self.line(&format!("{t} = arith.mulf {v}, {inv_v} : {vec}"));
        self.line(&format!("{rounded} = math.round {t} : {vec}"));
        self.line(&format!("{qi} = arith.fptosi {rounded} : {vec} to {ints}"));
        self.line(&format!("{sum} = vector.reduction <add>, {qi} : {ints} into i32"));
        let (bytes, words) = (self.fresh(), self.fresh());
        self.line(&format!("{bytes} = arith.trunci {qi} : {ints} to vector<{block}xi8>"));
        let per_block = block / INT8_DOT_GROUP as i64;
        self.line(&format!(
            "{words} = vector.bitcast {bytes} : vector<{block}xi8> to vector<{per_block}xi32>"
        ));
        let words_per_block = self.index_const(per_block);
        let word_at = self.index_op("muli", &b, &words_per_block);
        let sum_at = self.index_op("addi", &sums_at, &b);
        let row = ivs.join(", ");
        let (q1, q2, s1) = (self.fresh(), self.fresh(), self.fresh());
        self.line(&format!(
            "{q1} = vector.transfer_write {words}, {q}[{row}, {word_at}] {{in_bounds = [true]}} : vector<{per_block}xi32>, {q_ty}"
        ));
        self.line(&format!("{q2} = tensor.insert {sum} into {q1}[{row}, {sum_at}] : {q_ty}"));
        self.line(&format!("{s1} = tensor.insert {scale} into {s}[{row}, {b}] : {scales_ty}"));
        let mut yielded = (q2, s1);
        for res in results.iter().rev() {
            self.line(&format!("  scf.yield {}, {} : {both}", yielded.0, yielded.1));
            self.line("}");
            yielded = (format!("{res}#0"), format!("{res}#1"));
        }
        QuantizedX {
            q: yielded.0,
            q_ty,
            scales: yielded.1,
            scales_ty,
            sums_at,
        }
    }

    /// The loop of a packed tile over the int8 (or int4) blocks of `at.k_lo..at.k`, as
    /// `{res}:{count}` carrying the f32 sums `args` from `inits` (`arg = value` each): per block, the weights'
    /// scales, the integer sums of 8 groups of 4 steps (int4: 4 loads of two groups each), then
    /// the scaled sums added in f32.
    pub(super) fn int8_dot_blocks(&mut self, at: &TileAt<'_>, step: &PanelStep<'_>, res: &str, [args, inits]: [&[String]; 2]) {
        let (Some(x), Some(kind)) = (self.x_int8.take(), self.int8_dot) else {
            unreachable!("an int8 dot tile runs after `quantize_x`")
        };
        // `vpmaddwd` sums pairs: a vector of the panel's columns takes two vectors of sums,
        // each column's two pairs side by side, added when the block is done.
        let per = if kind == Int8Dot::Madd { 2 } else { 1 };
        let lanes = self.lanes;
        let (fv, iv) = (format!("vector<{lanes}xf32>"), format!("vector<{lanes}xi32>"));
        let count = inits.len();
        let f_types = vec![fv.as_str(); count].join(", ");
        let i_types = vec![iv.as_str(); count * per].join(", ");
        let vectors = step.lanes.len();
        let (kb, block_len) = (self.fresh(), self.index_const(INT8_BLOCK as i64));
        self.line(&format!(
            "{res}:{count} = scf.for {kb} = {} to {} step {block_len} iter_args({}) -> ({f_types}) {{",
            at.k_lo,
            at.k,
            inits.join(", ")
        ));
        let (wt, format) = (step.source.ty.clone(), step.source.format);
        let int4 = format == WeightFormat::Int4;
        let (w_scales, first_row) = self.int8_scales(&wt, format, step.panel, &kb);
        let block_row = self.index_op("addi", &kb, &first_row);
        let block = self.index_op("divui", &kb, &block_len);
        let sum_at = self.index_op("addi", &x.sums_at, &block);
        let group = self.index_const(INT8_DOT_GROUP as i64);
        let word0 = self.index_op("divui", &kb, &group);
        // Each row's block: its scale, and the offset of its integer sums (the panel's bytes are
        // `q + 128`, int4's `q + 8`).
        let minus = self.fresh();
        self.line(&format!("  {minus} = arith.constant {} : i32", if int4 { -8 } else { -128 }));
        let mut x_scales = Vec::new();
        let mut offsets = Vec::new();
        for row in step.x_rows {
            let mut idx = at.batch.to_vec();
            idx.push(row.clone());
            let (s, sv, sum, o, ov) = (self.fresh(), self.fresh(), self.fresh(), self.fresh(), self.fresh());
            let (scale_at, sum_idx) = ([idx.clone(), vec![block.clone()]].concat(), [idx, vec![sum_at.clone()]].concat());
            self.line(&format!(
                "  {s} = tensor.extract {}[{}] : {}",
                x.scales,
                scale_at.join(", "),
                x.scales_ty
            ));
            self.line(&format!("  {sv} = vector.broadcast {s} : f32 to {fv}"));
            self.line(&format!("  {sum} = tensor.extract {}[{}] : {}", x.q, sum_idx.join(", "), x.q_ty));
            self.line(&format!("  {o} = arith.muli {sum}, {minus} : i32"));
            self.line(&format!("  {ov} = vector.broadcast {o} : i32 to {iv}"));
            x_scales.push(sv);
            offsets.push(ov);
        }
        // `vpdpbusd`'s sums start from the offset; `vpmaddwd`'s from zero, the offset added with
        // the pairs.
        let starts: Vec<String> = match kind {
            Int8Dot::Vnni => offsets.iter().flat_map(|o| std::iter::repeat_n(o.clone(), vectors)).collect(),
            Int8Dot::Madd => {
                let zero = self.fresh();
                self.line(&format!("  {zero} = arith.constant dense<0> : {iv}"));
                vec![zero; count * per]
            }
        };
        // The 8 groups of 4 steps (int4: 4 loads of two groups, `g` and `g + 4`).
        let loads = (INT8_BLOCK / INT8_DOT_GROUP) as i64 / if int4 { 2 } else { 1 };
        let groups = self.index_const(loads);
        let (c0, c1) = (self.index_const(0), self.index_const(1));
        let (sums, g) = (self.fresh(), self.fresh());
        let sum_args: Vec<String> = starts.iter().map(|_| self.fresh()).collect();
        let sum_inits: Vec<String> = sum_args.iter().zip(&starts).map(|(a, s)| format!("{a} = {s}")).collect();
        self.line(&format!(
            "  {sums}:{} = scf.for {g} = {c0} to {groups} step {c1} iter_args({}) -> ({i_types}) {{",
            count * per,
            sum_inits.join(", ")
        ));
        let four = self.index_const(INT8_DOT_GROUP as i64);
        let rows_in = self.index_op("muli", &g, &four);
        let row = self.index_op("addi", &block_row, &rows_in);
        let ahead = self.index_const(PREFETCH_BYTES / (2 * lanes));
        let later = self.index_op("addi", &row, &ahead);
        // A group is 4 rows of the panel, 2 · 64 bytes with 16 lanes.
        for r in (0..INT8_DOT_GROUP as i64).step_by((64 / (2 * lanes)).max(1) as usize) {
            let offset = self.index_const(r);
            let line = self.index_op("addi", &later, &offset);
            self.line(&format!(
                "  memref.prefetch {}[{}, {line}, {c0}], read, locality<3>, data : {}",
                step.buf, step.panel, step.mt
            ));
        }
        let loaded = self.group_vectors(&wt, step, &row, vectors);
        let word = self.index_op("addi", &word0, &g);
        // (x's word, the panel's vectors) per group of this step.
        let mut groups_here = Vec::new();
        if int4 {
            let (low, high) = self.nibbles(&loaded);
            let half = self.index_const(loads);
            let word_high = self.index_op("addi", &word, &half);
            groups_here.push((word, low));
            groups_here.push((word_high, high));
        } else {
            groups_here.push((word, loaded));
        }
        let mut next = sum_args.clone();
        for (word, weights) in &groups_here {
            for (i, x_row) in step.x_rows.iter().enumerate() {
                let mut idx = at.batch.to_vec();
                idx.extend([x_row.clone(), word.clone()]);
                let xw = self.fresh();
                self.line(&format!("  {xw} = tensor.extract {}[{}] : {}", x.q, idx.join(", "), x.q_ty));
                let acc = &mut next[i * vectors * per..(i + 1) * vectors * per];
                match kind {
                    Int8Dot::Vnni => self.vnni_step(&xw, weights, acc),
                    Int8Dot::Madd => self.madd_step(&xw, weights, acc),
                }
            }
        }
        self.line(&format!("  scf.yield {} : {i_types}", next.join(", ")));
        self.line("}");
        // Each block's sums, scaled by the column's scale and the row's, added in f32.
        let mut out = Vec::with_capacity(count);
        for (i, x_scale) in x_scales.iter().enumerate() {
            for (j, w_scale) in w_scales.iter().enumerate() {
                let at = i * vectors + j;
                let sum = match kind {
                    Int8Dot::Vnni => format!("{sums}#{at}"),
                    Int8Dot::Madd => self.madd_sum([&format!("{sums}#{}", 2 * at), &format!("{sums}#{}", 2 * at + 1)], &offsets[i]),
                };
                let (f, s, added) = (self.fresh(), self.fresh(), self.fresh());
                self.line(&format!("  {f} = arith.sitofp {sum} : {iv} to {fv}"));
                self.line(&format!("  {s} = arith.mulf {w_scale}, {x_scale} : {fv}"));
                self.line(&format!("  {added} = vector.fma {f}, {s}, {} : {fv}", args[at]));
                out.push(added);
            }
        }
        self.line(&format!("  scf.yield {} : {f_types}", out.join(", ")));
        self.line("}");
        self.x_int8 = Some(x);
    }

    /// One group of `vpdpbusd`: the 4 bytes of `x` in `word` times each vector of bytes of the
    /// panel, added to `acc` (one per vector).
    fn vnni_step(&mut self, word: &str, weights: &[String], acc: &mut [String]) {
        let lanes = self.lanes;
        let (iv, bytes) = (format!("vector<{lanes}xi32>"), format!("vector<{}xi8>", 4 * lanes));
        let (xv, xb) = (self.fresh(), self.fresh());
        self.line(&format!("  {xv} = vector.broadcast {word} : i32 to {iv}"));
        self.line(&format!("  {xb} = vector.bitcast {xv} : {iv} to {bytes}"));
        for (w, acc) in weights.iter().zip(acc.iter_mut()) {
            let d = self.fresh();
            self.line(&format!(
                "  {d} = func.call {}({acc}, {w}, {xb}) : ({iv}, {bytes}, {bytes}) -> {iv}",
                vpdpbusd(lanes)
            ));
            *acc = d;
        }
    }

    /// One group of `vpmaddwd`: the panel's bytes widened to 16 bits (unsigned) and `x`'s 4
    /// bytes (signed), repeated per column, multiplied in pairs; each vector of bytes gives two
    /// vectors of pair sums (its first and second half of columns), added to `acc` (two per
    /// vector). No product or pair sum overflows (at most 255 · 127, and twice that).
    fn madd_step(&mut self, word: &str, weights: &[String], acc: &mut [String]) {
        let lanes = self.lanes;
        let (iv, bytes) = (format!("vector<{lanes}xi32>"), format!("vector<{}xi8>", 4 * lanes));
        let (wide, half) = (format!("vector<{}xi16>", 4 * lanes), format!("vector<{}xi16>", 2 * lanes));
        let names: Vec<String> = (0..6).map(|_| self.fresh()).collect();
        let [w1, x4, x4w, x64, x, xh] = names.as_slice() else {
            unreachable!("six names")
        };
        self.line(&format!("  {w1} = vector.broadcast {word} : i32 to vector<1xi32>"));
        self.line(&format!("  {x4} = vector.bitcast {w1} : vector<1xi32> to vector<4xi8>"));
        self.line(&format!("  {x4w} = arith.extsi {x4} : vector<4xi8> to vector<4xi16>"));
        self.line(&format!("  {x64} = vector.bitcast {x4w} : vector<4xi16> to vector<1xi64>"));
        self.line(&format!(
            "  {x} = vector.broadcast {x64} : vector<1xi64> to vector<{}xi64>",
            lanes / 2
        ));
        self.line(&format!("  {xh} = vector.bitcast {x} : vector<{}xi64> to {half}", lanes / 2));
        for (v, w) in weights.iter().enumerate() {
            let widened = self.fresh();
            self.line(&format!("  {widened} = arith.extui {w} : {bytes} to {wide}"));
            for h in 0..2usize {
                let (part, d, sum) = (self.fresh(), self.fresh(), self.fresh());
                self.line(&format!(
                    "  {part} = vector.extract_strided_slice {widened} {{offsets = [{}], sizes = [{}], strides = [1]}} : {wide} to {half}",
                    h as i64 * 2 * lanes,
                    2 * lanes
                ));
                self.line(&format!(
                    "  {d} = func.call {}({part}, {xh}) : ({half}, {half}) -> {iv}",
                    vpmaddwd(lanes)
                ));
                let acc = &mut acc[2 * v + h];
                self.line(&format!("  {sum} = arith.addi {acc}, {d} : {iv}"));
                *acc = sum;
            }
        }
    }

    /// A block's `vpmaddwd` sums of one vector of columns: the pairs of `halves` (each column's
    /// two lanes side by side, the first half of the columns, then the second) added, plus the
    /// row's `offset`.
    fn madd_sum(&mut self, halves: [&String; 2], offset: &str) -> String {
        let lanes = self.lanes;
        let iv = format!("vector<{lanes}xi32>");
        let even: Vec<String> = (0..lanes).map(|i| (2 * i).to_string()).collect();
        let odd: Vec<String> = (0..lanes).map(|i| (2 * i + 1).to_string()).collect();
        let (a, b, pairs, sum) = (self.fresh(), self.fresh(), self.fresh(), self.fresh());
        let [first, second] = halves;
        self.line(&format!(
            "  {a} = vector.shuffle {first}, {second} [{}] : {iv}, {iv}",
            even.join(", ")
        ));
        self.line(&format!(
            "  {b} = vector.shuffle {first}, {second} [{}] : {iv}, {iv}",
            odd.join(", ")
        ));
        self.line(&format!("  {pairs} = arith.addi {a}, {b} : {iv}"));
        self.line(&format!("  {sum} = arith.addi {pairs}, {offset} : {iv}"));
        sum
    }

    /// The low and high nibbles of int4 panel vectors, as bytes: the groups `g` and `g + 4`.
    fn nibbles(&mut self, loaded: &[String]) -> (Vec<String>, Vec<String>) {
        let ty = format!("vector<{}xi8>", 4 * self.lanes);
        let (mask, four) = (self.fresh(), self.fresh());
        self.line(&format!("  {mask} = arith.constant dense<15> : {ty}"));
        self.line(&format!("  {four} = arith.constant dense<4> : {ty}"));
        let (mut low, mut high) = (Vec::new(), Vec::new());
        for v in loaded {
            let (l, shifted, h) = (self.fresh(), self.fresh(), self.fresh());
            self.line(&format!("  {l} = arith.andi {v}, {mask} : {ty}"));
            self.line(&format!("  {shifted} = arith.shrui {v}, {four} : {ty}"));
            self.line(&format!("  {h} = arith.andi {shifted}, {mask} : {ty}"));
            low.push(l);
            high.push(h);
        }
        (low, high)
    }

    /// The panel's vectors of the group of 4 steps at `row`, each 4 bytes per column: vector
    /// `j` (columns `j · lanes ..`) is the group's rows `2j` and `2j + 1`, read one at a time and
    /// joined (a 2-D transfer is lowered through a stack buffer).
    fn group_vectors(&mut self, wt: &str, step: &PanelStep<'_>, row: &str, vectors: usize) -> Vec<String> {
        let lanes = self.lanes;
        let width = 2 * lanes;
        let (pad, c0) = (self.fresh(), self.index_const(0));
        self.line(&format!("  {pad} = arith.constant 0 : i8"));
        let row_ty = format!("vector<{width}xi8>");
        let joined: Vec<String> = (0..2 * width).map(|i| i.to_string()).collect();
        let joined = joined.join(", ");
        let mut out = Vec::with_capacity(vectors);
        for j in 0..vectors as i64 {
            let mut halves = Vec::new();
            for r in [2 * j, 2 * j + 1] {
                let offset = self.index_const(r);
                let at = self.index_op("addi", row, &offset);
                let bytes = self.fresh();
                self.line(&format!(
                    "  {bytes} = vector.transfer_read {}[{}, {at}, {c0}], {pad} {{in_bounds = [true]}} : {wt}, {row_ty}",
                    step.source.tensor, step.panel
                ));
                halves.push(bytes);
            }
            let line = self.fresh();
            self.line(&format!(
                "  {line} = vector.shuffle {}, {} [{joined}] : {row_ty}, {row_ty}",
                halves[0], halves[1]
            ));
            out.push(line);
        }
        out
    }
}
