//! Panels stored as int8, widened to f32 panels once per block of `K` for a matmul of many
//! rows. The packed kernel converts and scales a panel's vectors as a tile of rows reads them, so
//! a prefill of 512 rows converts every weight 512 / 12 times; widened first, each is converted
//! once and the tiles run as f32's do, reading the widened block from cache instead of the
//! packed matrix.

use super::{Kernel, MatMul, PanelSource, AXPY_VECTORS, PACKED_K_BLOCK};
use lmc_abi::{WeightFormat, INT8_BLOCK};

impl Kernel {
    /// The int8 panels of columns `lo..lo + size` (whole panels from `lo`), steps `k_lo..k_hi`
    /// of `K` (a block of at most [`PACKED_K_BLOCK`], whole int8 blocks), widened to f32 into a new
    /// `[panels, PACKED_K_BLOCK, panel]` tensor: the values the packed tile would compute with.
    pub(super) fn widened_panels(&mut self, mm: &MatMul, lo: &str, size: &str, [k_lo, k_hi]: [&str; 2]) -> PanelSource {
        let packed = PanelSource::packed(self, mm);
        let lanes = self.lanes;
        let width = AXPY_VECTORS * lanes;
        let (c0, c1) = (self.index_const(0), self.index_const(1));
        let panel_len = self.index_const(width);
        let first_panel = self.index_op("divui", lo, &panel_len);
        let panels = self.ceil_div(size, width);
        let ty = format!("tensor<?x{PACKED_K_BLOCK}x{width}xf32>");
        let vec = format!("vector<{lanes}xf32>");
        let empty = self.fresh();
        self.line(&format!("{empty} = tensor.empty({panels}) : {ty}"));
        let lane_ix = self.offsets(&c0, AXPY_VECTORS, lanes);
        let (res, p, block) = self.open_loop(&c0, &panels, &c1, &empty, &ty);
        let panel = self.index_op("addi", &p, &first_panel);
        // Block by block: a block's scales are read once, then its steps, each written into the
        // block's panel `p` at its step from `k_lo`.
        let block_len = self.index_const(INT8_BLOCK as i64);
        let (filled, kb, arg) = self.open_loop(k_lo, k_hi, &block_len, &block, &ty);
        let (scales, first_row) = self.int8_scales(&packed.ty, WeightFormat::Int8, &panel, &kb);
        let block_end = self.index_op("addi", &kb, &block_len);
        let (steps, kk, mut written) = self.open_loop(&kb, &block_end, &c1, &arg, &ty);
        let row = self.index_op("addi", &kk, &first_row);
        let at = self.index_op("subi", &kk, k_lo);
        let values = self.panel_vectors(&packed, &panel, &row, &lane_ix, Some(&scales));
        for (v, lane) in values.iter().zip(&lane_ix) {
            let next = self.fresh();
            self.line(&format!(
                "  {next} = vector.transfer_write {v}, {written}[{p}, {at}, {lane}] {{in_bounds = [true]}} : {vec}, {ty}"
            ));
            written = next;
        }
        self.close_loop(&written, &ty);
        self.close_loop(&steps, &ty);
        self.close_loop(&filled, &ty);
        PanelSource {
            tensor: res,
            ty,
            format: WeightFormat::F32,
            first: Some((first_panel, k_lo.to_string())),
        }
    }
}
