//! How a Linear's weight crosses the ABI: in panels the matmul kernel reads in order, and in the
//! storage format the model was compiled for (f32, bf16, or int8 in blocks with a scale each).

use serde::{Deserialize, Serialize};

/// Elements of `K` that share one scale in [`WeightFormat::Int8`] (llama.cpp's Q8_0 blocks).
pub const INT8_BLOCK: usize = 32;

/// Rows of a packed int8 (or int4) panel that hold one block's scales: `panel` f32 scales are
/// `4 · panel` bytes, four rows of `panel` one-byte elements.
pub const INT8_SCALE_ROWS: usize = 4;

/// How the elements of a packed weight are stored. The kernels accumulate in f32 whatever the
/// format: bf16 is widened as it is read, int8 multiplied by its block's scale.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WeightFormat {
    #[default]
    F32,
    /// bfloat16, rounded to nearest (ties to even) from f32.
    Bf16,
    /// Signed bytes, each block of [`INT8_BLOCK`] elements of a row along `K` with one f32
    /// scale: `w ≈ scale · q`, `scale = max |w| / 127` over the block, `q = round(w / scale)`
    /// (llama.cpp's Q8_0, with an f32 scale where it stores an f16).
    Int8,
    /// 4-bit integers, two to a byte, in blocks of [`INT8_BLOCK`] with one f32 scale each:
    /// `w ≈ scale · q`, `q` in `-8..=7`, `scale = m / -8` for the block's element `m` of largest
    /// magnitude, `q = round(w / scale)` clamped (llama.cpp's Q4_0, with an f32 scale). Read
    /// only by the kernels that multiply in integers ([`Packing::int8_dot`]).
    Int4,
}

impl WeightFormat {
    /// The names `--set weights=...` takes.
    pub const NAMES: [&'static str; 4] = ["f32", "bf16", "int8", "int4"];

    pub fn from_name(name: &str) -> Option<WeightFormat> {
        match name {
            "f32" => Some(WeightFormat::F32),
            "bf16" => Some(WeightFormat::Bf16),
            "int8" => Some(WeightFormat::Int8),
            "int4" => Some(WeightFormat::Int4),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            WeightFormat::F32 => "f32",
            WeightFormat::Bf16 => "bf16",
            WeightFormat::Int8 => "int8",
            WeightFormat::Int4 => "int4",
        }
    }

    fn is_f32(&self) -> bool {
        *self == WeightFormat::F32
    }

    /// Bytes of one element of the packed form (an int4 byte holds two weights; an int8 or
    /// int4 block's scale comes on top).
    pub fn element_bytes(self) -> usize {
        match self {
            WeightFormat::F32 => 4,
            WeightFormat::Bf16 => 2,
            WeightFormat::Int8 | WeightFormat::Int4 => 1,
        }
    }

    /// Whether the format stores blocks of integers with a scale each (int8, int4).
    pub fn is_blocked(self) -> bool {
        matches!(self, WeightFormat::Int8 | WeightFormat::Int4)
    }

    /// Rows of a packed panel per block of [`INT8_BLOCK`] steps of `K` of a blocked format:
    /// the scales' rows, then a byte per step (int8) or per two steps (int4).
    pub fn block_rows(self) -> usize {
        match self {
            WeightFormat::Int4 => INT8_SCALE_ROWS + INT8_BLOCK / 2,
            _ => INT8_SCALE_ROWS + INT8_BLOCK,
        }
    }

    /// Whether a matrix whose rows have `k` elements can be stored this way: int8 and int4 need
    /// whole blocks.
    pub fn fits_rows_of(self, k: usize) -> bool {
        !self.is_blocked() || (k > 0 && k.is_multiple_of(INT8_BLOCK))
    }

    /// One block of a blocked format: its scale and its integers ([`quantize_block`] for int8,
    /// [`quantize_int4_block`] for int4).
    pub fn quantize(self, block: &[f32]) -> (f32, [i8; INT8_BLOCK]) {
        match self {
            WeightFormat::Int4 => quantize_int4_block(block),
            _ => quantize_block(block),
        }
    }

    /// The values a kernel multiplies by when a row-major `[n, k]` matrix `w` is stored this way
    /// (`w` itself for f32): what the format costs in accuracy, element by element.
    pub fn round_trip(self, w: &[f32], k: usize) -> Vec<f32> {
        match self {
            WeightFormat::F32 => w.to_vec(),
            WeightFormat::Bf16 => w.iter().map(|&x| bf16_to_f32(f32_to_bf16(x))).collect(),
            WeightFormat::Int8 | WeightFormat::Int4 => {
                let mut out = Vec::with_capacity(w.len());
                for row in w.chunks(k.max(1)) {
                    for block in row.chunks(INT8_BLOCK) {
                        let (scale, q) = self.quantize(block);
                        out.extend(q.iter().take(block.len()).map(|&q| scale * f32::from(q)));
                    }
                }
                out
            }
        }
    }
}

/// One int4 block: its scale and its elements, within `-8..=7` (see [`WeightFormat::Int4`]).
pub fn quantize_int4_block(block: &[f32]) -> (f32, [i8; INT8_BLOCK]) {
    let m = block.iter().fold(0.0f32, |m, &x| if x.abs() > m.abs() { x } else { m });
    let scale = m / -8.0;
    let inverse = if scale != 0.0 { 1.0 / scale } else { 0.0 };
    let mut q = [0i8; INT8_BLOCK];
    for (q, x) in q.iter_mut().zip(block) {
        *q = (x * inverse).round().clamp(-8.0, 7.0) as i8;
    }
    (scale, q)
}

/// `x` rounded to bfloat16 (to nearest, ties to even; NaN stays NaN), as its bits.
pub fn f32_to_bf16(x: f32) -> u16 {
    let bits = x.to_bits();
    if x.is_nan() {
        return ((bits >> 16) as u16) | 0x40;
    }
    let round = 0x7fff + ((bits >> 16) & 1);
    (bits.wrapping_add(round) >> 16) as u16
}

pub fn bf16_to_f32(bits: u16) -> f32 {
    f32::from_bits(u32::from(bits) << 16)
}

/// One int8 block: its scale and its elements (`round(w / scale)`, which is within ±127). The
/// kernels that multiply int8 and int4 weights in integers quantize `x` so too.
pub fn quantize_block(block: &[f32]) -> (f32, [i8; INT8_BLOCK]) {
    let amax = block.iter().fold(0.0f32, |m, x| m.max(x.abs()));
    let scale = amax / 127.0;
    let inverse = if scale > 0.0 { 1.0 / scale } else { 0.0 };
    let mut q = [0i8; INT8_BLOCK];
    for (q, x) in q.iter_mut().zip(block) {
        *q = (x * inverse).round().clamp(-127.0, 127.0) as i8;
    }
    (scale, q)
}

/// A `[N, K]` matrix stored as panels of `panel` of its rows, each panel `K` by `panel` (row
/// `k` of panel `p` holds elements `k` of rows `p·panel ..`), zero past row `N`: the layout
/// `[ceil(N / panel), K, panel]` of elements of `format`. A matmul kernel that multiplies by
/// the matrix's transpose then reads `panel` contiguous columns per step of `K` (see the
/// codegen's `matmul.rs`). An int8 panel puts each block's scales before its rows: per block
/// of [`INT8_BLOCK`] rows, four rows of bytes holding `panel` little-endian f32 scales, then the
/// block's rows, so a panel is `K / 32 · 36` rows of `panel` bytes. With [`Packing::int8_dot`]
/// the block's rows are in the order integer dot products read them instead.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Packing {
    pub panel: i64,
    #[serde(default, skip_serializing_if = "WeightFormat::is_f32")]
    pub format: WeightFormat,
    /// The checkpoint stores the matrix `[K, N]`, `[in, out]` (a weight read as `x @ w`), rather
    /// than a Linear's `[N, K]`; the panels are the same.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub in_by_out: bool,
    /// An int8 block's rows are laid out for 4-byte integer dot products (x86's `vpdpbusd`,
    /// which multiplies 4 unsigned bytes by 4 signed ones and adds the sum to a 32-bit lane;
    /// `vpmaddwd` reads them widened to 16 bits):
    /// each group of 4 steps of `K` stores a column's 4 bytes together, column after column,
    /// and each byte is `q + 128` (unsigned). The scales' rows are as without it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub int8_dot: bool,
}

/// Steps of `K` whose bytes a 4-byte integer dot product takes per column ([`Packing::int8_dot`]).
pub const INT8_DOT_GROUP: usize = 4;

impl Packing {
    /// Panels of `panel` rows of f32.
    pub fn f32(panel: i64) -> Packing {
        Packing {
            panel,
            format: WeightFormat::F32,
            in_by_out: false,
            int8_dot: false,
        }
    }

    /// `(N, K)` of a matrix of the checkpoint's `shape` (`None` unless it has two axes).
    pub fn matrix(&self, shape: &[usize]) -> Option<(usize, usize)> {
        match *shape {
            [a, b] if self.in_by_out => Some((b, a)),
            [a, b] => Some((a, b)),
            _ => None,
        }
    }

    /// The rows of the `[N, K]` matrix (row-major), from the checkpoint's `w`: itself, or its
    /// transpose when it stores `[K, N]`.
    fn rows_of<'w>(&self, w: &'w [f32], n: usize, k: usize) -> std::borrow::Cow<'w, [f32]> {
        if !self.in_by_out {
            return std::borrow::Cow::Borrowed(w);
        }
        let mut t = vec![0.0; n * k];
        for (kk, row) in w.chunks(n.max(1)).take(k).enumerate() {
            for (r, &x) in row.iter().enumerate() {
                t[r * k + kk] = x;
            }
        }
        std::borrow::Cow::Owned(t)
    }

    /// The packed shape of a `[n, k]` matrix, in elements of the format (bytes for int8,
    /// scales included).
    pub fn packed_shape(&self, n: usize, k: usize) -> [usize; 3] {
        let panel = self.panel_len();
        let rows = match self.format {
            WeightFormat::Int8 | WeightFormat::Int4 => k.div_ceil(INT8_BLOCK) * self.format.block_rows(),
            WeightFormat::F32 | WeightFormat::Bf16 => k,
        };
        [n.div_ceil(panel), rows, panel]
    }

    /// Bytes of the packed form of a `[n, k]` matrix.
    pub fn packed_bytes(&self, n: usize, k: usize) -> usize {
        self.packed_shape(n, k).iter().product::<usize>() * self.format.element_bytes()
    }

    /// `panel` as a length (at least 1).
    fn panel_len(&self) -> usize {
        usize::try_from(self.panel).unwrap_or(1).max(1)
    }

    /// The values the kernels multiply by for a matrix as the checkpoint stores it (see
    /// [`Packing::pack`]), in that layout: [`WeightFormat::round_trip`] along `K`.
    pub fn round_trip(&self, w: &[f32], n: usize, k: usize) -> Vec<f32> {
        let stored = self.format.round_trip(&self.rows_of(w, n, k), k);
        if !self.in_by_out {
            return stored;
        }
        let mut back = vec![0.0; n * k];
        for (r, row) in stored.chunks(k.max(1)).enumerate() {
            for (kk, &x) in row.iter().enumerate() {
                back[kk * n + r] = x;
            }
        }
        back
    }

    /// Packs an f32 `[n, k]` matrix, as the checkpoint stores it (row-major `[n, k]`, or
    /// `[k, n]` when `in_by_out`; `w.len() == n * k`, rows missing from a shorter `w` packed as
    /// zeros), ignoring the format: the f32 panels.
    pub fn pack(&self, w: &[f32], n: usize, k: usize) -> Vec<f32> {
        let [panels, _, panel] = Packing::f32(self.panel).packed_shape(n, k);
        let mut out = vec![0.0; panels * k * panel];
        self.pack_into(w, n, k, &mut out);
        out
    }

    /// As [`Packing::pack`], into `out` (`out.len()` the f32 packed shape's size; every element
    /// of it is written).
    pub fn pack_into(&self, w: &[f32], n: usize, k: usize, out: &mut [f32]) {
        let panel = self.panel_len();
        let w = self.rows_of(w, n, k);
        // Written in order, a panel's rows read side by side (a panel's worth of rows in cache),
        // rather than scattered one element per cache line.
        for (p, packed) in out.chunks_exact_mut((k * panel).max(1)).enumerate() {
            let rows: Vec<&[f32]> = (p * panel..((p + 1) * panel).min(n))
                .filter_map(|r| w.get(r * k..(r + 1) * k))
                .collect();
            for (kk, step) in packed.chunks_exact_mut(panel).enumerate() {
                for (x, row) in step.iter_mut().zip(&rows) {
                    *x = row[kk];
                }
                for x in step.iter_mut().skip(rows.len()) {
                    *x = 0.0;
                }
            }
        }
    }

    /// The matrix as the checkpoint stores it, from its f32 panels (`packed` as
    /// [`Packing::pack`] writes it, whatever the packing's format): the inverse of `pack`.
    pub fn unpack(&self, packed: &[f32], n: usize, k: usize) -> Vec<f32> {
        let panel = self.panel_len();
        let mut w = vec![0.0; n * k];
        for (p, panels) in packed.chunks_exact((k * panel).max(1)).enumerate() {
            for (kk, step) in panels.chunks_exact(panel).enumerate().take(k) {
                for (i, &x) in step.iter().enumerate().take(n.saturating_sub(p * panel)) {
                    let r = p * panel + i;
                    // Row `r` of `[n, k]`; element `(kk, r)` of a matrix stored `[k, n]`.
                    let at = if self.in_by_out { kk * n + r } else { r * k + kk };
                    w[at] = x;
                }
            }
        }
        w
    }

    /// The packed form of an f32 `[n, k]` matrix (as the checkpoint stores it, see
    /// [`Packing::pack`]) in the packing's format, as the module reads it: [`Packing::packed_bytes`] little-endian bytes. An int8 packing needs `k`
    /// a multiple of [`INT8_BLOCK`] ([`WeightFormat::fits_rows_of`]); the codegen packs no
    /// other matrix that way.
    pub fn pack_bytes(&self, w: &[f32], n: usize, k: usize) -> Vec<u8> {
        match self.format {
            WeightFormat::F32 => self.pack(w, n, k).iter().flat_map(|x| x.to_le_bytes()).collect(),
            WeightFormat::Bf16 => self.pack(w, n, k).iter().flat_map(|&x| f32_to_bf16(x).to_le_bytes()).collect(),
            WeightFormat::Int8 | WeightFormat::Int4 => self.pack_blocks(w, n, k),
        }
    }

    /// Where step `step` (of the block's [`INT8_BLOCK`]) of column `col` lies among an int8
    /// block's rows, in bytes from the first, and for int4 whether in the byte's high nibble.
    /// Int4's bytes are int8's dot product layout folded in two: group `g` of 4 steps in the low
    /// nibbles and group `g + 4` in the high nibbles of the same bytes, so that one load gives a
    /// kernel two groups.
    fn block_byte(&self, step: usize, col: usize) -> (usize, bool) {
        let panel = self.panel_len();
        let group = step / INT8_DOT_GROUP;
        let groups = INT8_BLOCK / INT8_DOT_GROUP;
        match (self.format, self.int8_dot) {
            (WeightFormat::Int4, _) => {
                let (pair, high) = (group % (groups / 2), group >= groups / 2);
                ((pair * panel + col) * INT8_DOT_GROUP + step % INT8_DOT_GROUP, high)
            }
            (_, true) => ((group * panel + col) * INT8_DOT_GROUP + step % INT8_DOT_GROUP, false),
            (_, false) => (step * panel + col, false),
        }
    }

    /// The packed bytes of a blocked format (int8 or int4).
    fn pack_blocks(&self, w: &[f32], n: usize, k: usize) -> Vec<u8> {
        let panel = self.panel_len();
        let w = self.rows_of(w, n, k);
        let mut out = vec![0u8; self.packed_bytes(n, k)];
        let block_bytes = self.format.block_rows() * panel;
        let panel_bytes = k.div_ceil(INT8_BLOCK) * block_bytes;
        for (p, packed) in out.chunks_exact_mut(panel_bytes.max(1)).enumerate() {
            let rows: Vec<&[f32]> = (p * panel..((p + 1) * panel).min(n))
                .filter_map(|r| w.get(r * k..(r + 1) * k))
                .collect();
            for (b, block) in packed.chunks_exact_mut(block_bytes).enumerate() {
                let (scales, quants) = block.split_at_mut(INT8_SCALE_ROWS * panel);
                // Zeros, as the padding columns hold them.
                match self.format {
                    WeightFormat::Int4 => quants.fill(0x88),
                    _ if self.int8_dot => quants.fill(128),
                    _ => {}
                }
                let lo = b * INT8_BLOCK;
                let hi = (lo + INT8_BLOCK).min(k);
                for (col, row) in rows.iter().enumerate() {
                    let (scale, q) = self.format.quantize(&row[lo..hi]);
                    scales[4 * col..4 * col + 4].copy_from_slice(&scale.to_le_bytes());
                    for (step, q) in q.iter().take(hi - lo).enumerate() {
                        let (at, high) = self.block_byte(step, col);
                        match (self.format, high) {
                            // Unsigned, `q + 8`.
                            (WeightFormat::Int4, false) => quants[at] = (quants[at] & 0xf0) | (q + 8) as u8,
                            (WeightFormat::Int4, true) => quants[at] = (quants[at] & 0x0f) | (((q + 8) as u8) << 4),
                            _ if self.int8_dot => quants[at] = (i16::from(*q) + 128) as u8,
                            _ => quants[at] = q.to_le_bytes()[0],
                        }
                    }
                }
            }
        }
        out
    }
}

impl crate::Manifest {
    /// How the weight matrices are stored when the model was compiled with a weight format
    /// other than f32 (`--set weights=...`): the format, how many matrices it holds, and the
    /// bytes they take against f32's. `None` for f32.
    pub fn weight_storage(&self) -> Option<String> {
        let mut formats: Vec<WeightFormat> = Vec::new();
        let (mut stored, mut as_f32, mut matrices, mut kept) = (0usize, 0usize, 0usize, 0usize);
        let mut int8_dot = None;
        for spec in &self.params {
            let shape: Vec<usize> = spec
                .shape
                .iter()
                .map(|d| match d {
                    crate::Dim::Static(n) => usize::try_from(*n).unwrap_or(0),
                    crate::Dim::Symbol(_) => 0,
                })
                .collect();
            let Some((p, (n, k))) = spec.packing.and_then(|p| Some((p, p.matrix(&shape)?))) else {
                continue;
            };
            if p.format == WeightFormat::F32 {
                kept += 1;
                continue;
            }
            if !formats.contains(&p.format) {
                formats.push(p.format);
            }
            if p.format.is_blocked() {
                int8_dot = Some(p.int8_dot);
            }
            matrices += 1;
            stored += p.packed_bytes(n, k);
            as_f32 += n * k * 4;
        }
        let format = match formats.as_slice() {
            [] => return None,
            [one] => one.name().to_string(),
            several => several.iter().map(|f| f.name()).collect::<Vec<_>>().join(" and "),
        };
        let kept = match kept {
            0 => String::new(),
            n => format!(", {n} kept f32 (rows not whole blocks of {})", INT8_BLOCK),
        };
        let how = match int8_dot {
            Some(true) => format!("; {format} multiplied in integers, x quantized per block of 32"),
            Some(false) => format!("; {format} converted to f32 as read (no integer kernels for the CPU compiled for)"),
            None => String::new(),
        };
        Some(format!(
            "{format} for {matrices} weight matrices ({:.1} MB, {:.1} MB as f32){kept}; every other tensor f32{how}",
            stored as f64 / 1e6,
            as_f32 as f64 / 1e6
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packing_puts_rows_side_by_side_and_pads_with_zeros() {
        // Rows 0..5 of a [5, 3] matrix, element (r, k) = 10 r + k, in panels of 2 rows.
        let w: Vec<f32> = (0..5).flat_map(|r| (0..3).map(move |k| (10 * r + k) as f32)).collect();
        let p = Packing::f32(2);
        assert_eq!(p.packed_shape(5, 3), [3, 3, 2]);
        #[rustfmt::skip]
        let want = [
            0.0, 10.0,  1.0, 11.0,  2.0, 12.0,
            20.0, 30.0, 21.0, 31.0, 22.0, 32.0,
            40.0, 0.0,  41.0, 0.0,  42.0, 0.0,
        ];
        assert_eq!(p.pack(&w, 5, 3), want);
        assert_eq!(p.unpack(&want, 5, 3), w);
        let bytes: Vec<u8> = want.iter().flat_map(|x: &f32| x.to_le_bytes()).collect();
        assert_eq!(p.pack_bytes(&w, 5, 3), bytes);
    }

    #[test]
    fn a_matrix_stored_in_by_out_packs_as_its_transpose() {
        let w: Vec<f32> = (0..15).map(|i| i as f32).collect();
        // [5, 3] row-major, and the same matrix stored [3, 5].
        let t: Vec<f32> = (0..3).flat_map(|k| (0..5).map(move |r| (r * 3 + k) as f32)).collect();
        let stored = Packing {
            in_by_out: true,
            ..Packing::f32(2)
        };
        assert_eq!(stored.matrix(&[3, 5]), Some((5, 3)));
        assert_eq!(stored.pack(&t, 5, 3), Packing::f32(2).pack(&w, 5, 3));
        assert_eq!(stored.unpack(&stored.pack(&t, 5, 3), 5, 3), t);
        let int8 = |in_by_out| Packing {
            format: WeightFormat::Int8,
            in_by_out,
            ..Packing::f32(4)
        };
        let w: Vec<f32> = (0..64).map(|i| (i as f32 - 30.0) / 9.0).collect();
        let t: Vec<f32> = (0..32)
            .flat_map(|k| (0..2).map(move |r| (r * 32 + k) as f32))
            .map(|i| w[i as usize])
            .collect();
        assert_eq!(int8(true).pack_bytes(&t, 2, 32), int8(false).pack_bytes(&w, 2, 32));
    }

    #[test]
    fn bf16_rounds_to_nearest_even() {
        assert_eq!(f32_to_bf16(1.0), 0x3f80);
        // 1 + 2^-8 is halfway between 1 and 1 + 2^-7: ties to the even 1.0.
        assert_eq!(f32_to_bf16(1.0 + 1.0 / 256.0), 0x3f80);
        // Just above halfway rounds up.
        assert_eq!(f32_to_bf16(f32::from_bits(0x3f80_8001)), 0x3f81);
        // 1 + 3·2^-8 is halfway between 1 + 2^-7 (odd) and 1 + 2^-6: ties to the even one.
        assert_eq!(f32_to_bf16(1.0 + 3.0 / 256.0), 0x3f82);
        assert_eq!(bf16_to_f32(f32_to_bf16(-2.5)), -2.5);
        assert!(bf16_to_f32(f32_to_bf16(f32::NAN)).is_nan());
        assert_eq!(bf16_to_f32(f32_to_bf16(f32::INFINITY)), f32::INFINITY);
    }

    #[test]
    fn bf16_panels_hold_the_rounded_values_in_the_f32_layout() {
        let w: Vec<f32> = (0..6).map(|i| 0.1 * i as f32).collect();
        let p = Packing {
            format: WeightFormat::Bf16,
            ..Packing::f32(2)
        };
        let bytes = p.pack_bytes(&w, 2, 3);
        assert_eq!(bytes.len(), p.packed_bytes(2, 3));
        let read: Vec<f32> = bytes.chunks(2).map(|b| bf16_to_f32(u16::from_le_bytes([b[0], b[1]]))).collect();
        let rounded = WeightFormat::Bf16.round_trip(&w, 3);
        assert_eq!(read, Packing::f32(2).pack(&rounded, 2, 3));
    }

    #[test]
    fn int8_blocks_hold_their_scale_then_their_rows() {
        // Two rows of 64 (two blocks each) in one panel of 4 (rows 2 and 3 are padding).
        let (n, k, panel) = (2usize, 64usize, 4usize);
        let w: Vec<f32> = (0..n * k).map(|i| ((i * 37 % 101) as f32 - 50.0) / 7.0).collect();
        let p = Packing {
            format: WeightFormat::Int8,
            ..Packing::f32(panel as i64)
        };
        assert_eq!(p.packed_shape(n, k), [1, 72, 4]);
        let bytes = p.pack_bytes(&w, n, k);
        assert_eq!(bytes.len(), 72 * 4);
        let stored = WeightFormat::Int8.round_trip(&w, k);
        for row in 0..n {
            for kk in 0..k {
                let block = &bytes[(kk / 32) * 36 * panel..];
                let s = &block[4 * row..4 * row + 4];
                let scale = f32::from_le_bytes([s[0], s[1], s[2], s[3]]);
                let q = block[(4 + kk % 32) * panel + row] as i8;
                assert_eq!(scale * f32::from(q), stored[row * k + kk]);
                // Within half a step of the block's scale.
                assert!((stored[row * k + kk] - w[row * k + kk]).abs() <= scale / 2.0 + 1e-6);
            }
        }
        // The padding rows are zero.
        let block = &bytes[..36 * panel];
        assert!(block[8..16].iter().all(|&b| b == 0));
        assert!((4..36).all(|r| block[r * panel + 2] == 0 && block[r * panel + 3] == 0));
    }

    #[test]
    fn int8_dot_blocks_hold_each_columns_four_steps_together_offset_by_128() {
        let (n, k, panel) = (3usize, 64usize, 4usize);
        let w: Vec<f32> = (0..n * k).map(|i| ((i * 53 % 97) as f32 - 48.0) / 5.0).collect();
        let plain = Packing {
            format: WeightFormat::Int8,
            ..Packing::f32(panel as i64)
        };
        let dot = Packing { int8_dot: true, ..plain };
        assert_eq!(dot.packed_shape(n, k), plain.packed_shape(n, k));
        let (a, b) = (plain.pack_bytes(&w, n, k), dot.pack_bytes(&w, n, k));
        for block in 0..k / 32 {
            let (a, b) = (&a[block * 36 * panel..], &b[block * 36 * panel..]);
            // The scales' rows are the same.
            assert_eq!(a[..4 * panel], b[..4 * panel]);
            for step in 0..32 {
                for col in 0..panel {
                    let q = a[(4 + step) * panel + col] as i8;
                    let at = 4 * panel + (step / 4 * panel + col) * 4 + step % 4;
                    assert_eq!(i16::from(b[at]) - 128, i16::from(q), "block {block} step {step} column {col}");
                }
            }
        }
        // Padding columns hold q = 0, stored 128.
        assert_eq!(b[4 * panel + 3 * 4], 128);
    }

    #[test]
    fn int4_blocks_hold_two_groups_per_byte_offset_by_8() {
        let (n, k, panel) = (3usize, 64usize, 4usize);
        let w: Vec<f32> = (0..n * k).map(|i| ((i * 53 % 97) as f32 - 48.0) / 5.0).collect();
        let p = Packing {
            format: WeightFormat::Int4,
            int8_dot: true,
            ..Packing::f32(panel as i64)
        };
        assert_eq!(p.packed_shape(n, k), [1, 2 * 20, 4]);
        let bytes = p.pack_bytes(&w, n, k);
        let stored = WeightFormat::Int4.round_trip(&w, k);
        for row in 0..n {
            for kk in 0..k {
                let block = &bytes[(kk / 32) * 20 * panel..];
                let s = &block[4 * row..4 * row + 4];
                let scale = f32::from_le_bytes([s[0], s[1], s[2], s[3]]);
                let (step, group) = (kk % 32, kk % 32 / 4);
                let byte = block[4 * panel + ((group % 4) * panel + row) * 4 + step % 4];
                let nibble = if group >= 4 { byte >> 4 } else { byte & 0x0f };
                let q = i16::from(nibble) - 8;
                assert_eq!(scale * f32::from(q), stored[row * k + kk], "row {row} step {kk}");
                // Within half a step, or the one step that 8 levels above zero lacks.
                assert!((stored[row * k + kk] - w[row * k + kk]).abs() <= scale.abs() * 1.0 + 1e-6);
            }
            // The element of largest magnitude is -8 steps exactly.
            let block = &w[row * k..row * k + 32];
            let m = block.iter().fold(0.0f32, |m, &x| if x.abs() > m.abs() { x } else { m });
            assert!(stored[row * k..row * k + 32].contains(&m));
        }
        // Padding columns hold q = 0: both nibbles 8.
        assert_eq!(bytes[4 * panel + 3 * 4], 0x88);
    }

    #[test]
    fn int8_needs_whole_blocks_and_keeps_zero_blocks_zero() {
        assert!(WeightFormat::Int8.fits_rows_of(768));
        assert!(!WeightFormat::Int8.fits_rows_of(100));
        assert!(WeightFormat::Bf16.fits_rows_of(100));
        assert_eq!(WeightFormat::Int8.round_trip(&[0.0; 32], 32), vec![0.0; 32]);
    }

    #[test]
    fn manifests_of_f32_packing_are_unchanged() -> Result<(), serde_json::Error> {
        assert_eq!(serde_json::to_string(&Packing::f32(32))?, r#"{"panel":32}"#);
        let int8: Packing = serde_json::from_str(r#"{"panel":32,"format":"int8"}"#)?;
        assert_eq!(int8.format, WeightFormat::Int8);
        assert!(serde_json::from_str::<Packing>(r#"{"panel":32,"format":"q4"}"#).is_err());
        Ok(())
    }
}
