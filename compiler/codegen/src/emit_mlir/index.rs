//! Ops that read or write at computed positions: gathers, a decode step's row and ring writes,
//! `tabulate`, and the head split and merge.

use super::*;

impl Emitter<'_> {
    pub(super) fn emit_gather(&mut self, id: ValueId, table: ValueId, indices: ValueId, loc: &str) {
        let g = self.g;
        let ty = g.ty(id).clone();
        let tt = g.ty(table).clone();
        let it = g.ty(indices).clone();
        let rank = ty.rank();
        let ki = it.rank();
        let rows = match tt.dims[0] {
            Dim::Static(n) => n,
            Dim::Symbol(_) => unreachable!("the checker requires a static row count"),
        };
        let e = self.empty(&ty);
        let idx_map: Vec<String> = (0..ki).map(|i| format!("d{i}")).collect();
        self.line(&format!(
            "{} = linalg.generic {{indexing_maps = [affine_map<{} -> ({})>, affine_map<{} -> {}>], iterator_types = [{}]}} ins({} : {}) outs({e} : {}) {{",
            v(id),
            dims_list(rank),
            idx_map.join(", "),
            dims_list(rank),
            dims_list(rank),
            parallel(rank),
            v(indices),
            tensor_ty(&it),
            tensor_ty(&ty)
        ));
        self.line(&format!("^bb0(%idx: {}, %o: {}):", elem(it.dtype), elem(ty.dtype)));
        self.line(&format!("  %i = arith.index_cast %idx : {} to index", elem(it.dtype)));
        // Clamp, so an unchecked caller cannot read out of bounds.
        self.line("  %zero = arith.constant 0 : index");
        self.line(&format!("  %last = arith.constant {} : index", rows - 1));
        self.line("  %lo = arith.maxsi %i, %zero : index");
        self.line("  %row = arith.minsi %lo, %last : index");
        let mut coords = vec!["%row".to_string()];
        for k in ki..rank {
            self.line(&format!("  %j{k} = linalg.index {k} : index"));
            coords.push(format!("%j{k}"));
        }
        self.line(&format!(
            "  %r = tensor.extract {}[{}] : {}",
            v(table),
            coords.join(", "),
            tensor_ty(&tt)
        ));
        self.line(&format!("  linalg.yield %r : {}", elem(ty.dtype)));
        self.line(&format!("}} -> {} {loc}", tensor_ty(&ty)));
    }

    /// A generic over the output's dimensions whose body reads `x` at computed coordinates.
    pub(super) fn emit_gather_like(&mut self, id: ValueId, x: ValueId, loc: &str, coords: &Coordinates<'_>) {
        let g = self.g;
        let ty = g.ty(id).clone();
        let xt = g.ty(x).clone();
        let idx = self.open_index_generic(id, "%d");
        let mut body = Vec::new();
        let at = coords(&idx, &mut body);
        for l in body {
            self.line(&format!("  {l}"));
        }
        self.line(&format!("  %r = tensor.extract {}[{}] : {}", v(x), at.join(", "), tensor_ty(&xt)));
        self.line("  linalg.yield %r : f32");
        self.line(&format!("}} -> {} {loc}", tensor_ty(&ty)));
    }

    /// Opens a `linalg.generic` that computes node `id` element by element from its indices
    /// alone (no inputs): emits the header, the block and one `linalg.index` per dimension,
    /// named `{prefix}0`, `{prefix}1`, ...; returns those names. The caller writes the body.
    pub(super) fn open_index_generic(&mut self, id: ValueId, prefix: &str) -> Vec<String> {
        let ty = self.ty(id);
        let r = ty.rank();
        let e = self.empty(&ty);
        let map = format!("affine_map<{} -> {}>", dims_list(r), dims_list(r));
        self.line(&format!(
            "{} = linalg.generic {{indexing_maps = [{map}], iterator_types = [{}]}} outs({e} : {}) {{",
            v(id),
            parallel(r),
            tensor_ty(&ty)
        ));
        self.line(&format!("^bb0(%o: {}):", elem(ty.dtype)));
        let idx: Vec<String> = (0..r).map(|k| format!("{prefix}{k}")).collect();
        for (k, name) in idx.iter().enumerate() {
            self.line(&format!("  {name} = linalg.index {k} : index"));
        }
        idx
    }

    /// What `write_rows` and `write_ring` both start from: the first row's position `{t}_i`,
    /// the lengths along the axis of the base (`len`) and of the rows (`n`), and `{t}_zero`,
    /// `{t}_last` (= n - 1). Returns `(t, len, n)`.
    pub(super) fn row_write_prelude(&mut self, at: ValueId, bt: &TensorType, rt: &TensorType, axis: usize) -> (String, String, String) {
        let t = self.fresh();
        self.line(&format!("{t}_at = tensor.extract {}[] : tensor<i64>", self.name(at)));
        self.line(&format!("{t}_i = arith.index_cast {t}_at : i64 to index"));
        let len = self.index_value(bt.dims[axis], &format!("{t}_len"));
        let n = self.index_value(rt.dims[axis], &format!("{t}_n"));
        self.line(&format!("{t}_zero = arith.constant 0 : index"));
        self.line(&format!("{t}_one = arith.constant 1 : index"));
        self.line(&format!("{t}_last = arith.subi {n}, {t}_one : index"));
        (t, len, n)
    }

    /// `write_rows`, into a carried cache (the verifier admits no other base), in place: the
    /// rows are copied into a slice of the cache's own buffer and nothing else of it is touched.
    /// (Inserting a separate tensor would bufferize to a strided `memref.copy`, which lowers to
    /// a call into MLIR's C runner library, not linked here.)
    pub(super) fn emit_write_rows(&mut self, id: ValueId, [base, rows, at]: [ValueId; 3], axis: usize, loc: &str) {
        let (bt, rt) = (self.ty(base), self.ty(rows));
        let (t, len, n) = self.row_write_prelude(at, &bt, &rt, axis);
        // The first row's place, clamped into 0 ..= len - n so every write stays in bounds.
        self.line(&format!("{t}_room = arith.subi {len}, {n} : index"));
        self.line(&format!("{t}_lo = arith.maxsi {t}_i, {t}_zero : index"));
        self.line(&format!("{t}_start = arith.minsi {t}_lo, {t}_room : index"));
        let r = bt.rank();
        let offsets: Vec<String> = (0..r)
            .map(|k| if k == axis { format!("{t}_start") } else { "0".to_string() })
            .collect();
        let sizes: Vec<String> = rt.dims.iter().map(|d| dim_size(*d)).collect();
        let place = format!("[{}] [{}] [{}]", offsets.join(", "), sizes.join(", "), vec!["1"; r].join(", "));
        let (bts, rts) = (tensor_ty(&bt), tensor_ty(&rt));
        let base = self.name(base);
        self.line(&format!("{t}_slot = tensor.extract_slice {base}{place} : {bts} to {rts}"));
        self.line(&format!(
            "{t}_rows = linalg.copy ins({} : {rts}) outs({t}_slot : {rts}) -> {rts}",
            self.name(rows)
        ));
        self.line(&format!(
            "{} = tensor.insert_slice {t}_rows into {base}{place} : {rts} into {bts} {loc}",
            v(id)
        ));
    }

    /// `write_ring`: one pass over the ring (a few rows) in its own buffer; entry c takes the
    /// last row r < n with (at + r) mod len = c, if there is one: r0 = (c - at) mod len, and
    /// r = r0 + len * ((n - 1 - r0) div len) when r0 < n.
    pub(super) fn emit_write_ring(&mut self, id: ValueId, [base, rows, at]: [ValueId; 3], axis: usize, loc: &str) {
        let (bt, rt) = (self.ty(base), self.ty(rows));
        let (t, len, n) = self.row_write_prelude(at, &bt, &rt, axis);
        let r = bt.rank();
        let map = format!("affine_map<{} -> {}>", dims_list(r), dims_list(r));
        let et = elem(bt.dtype);
        self.line(&format!(
            "{} = linalg.generic {{indexing_maps = [{map}], iterator_types = [{}]}} outs({} : {}) {{",
            v(id),
            parallel(r),
            self.name(base),
            tensor_ty(&bt)
        ));
        self.line(&format!("^bb0(%o: {et}):"));
        let mut at_rows: Vec<String> = (0..r).map(|k| format!("%w{k}")).collect();
        for (k, name) in at_rows.iter().enumerate() {
            self.line(&format!("  {name} = linalg.index {k} : index"));
        }
        self.line(&format!("  %back = arith.subi %w{axis}, {t}_i : index"));
        self.line(&format!("  %r0 = arith.remsi %back, {len} : index"));
        self.line(&format!("  %neg = arith.cmpi slt, %r0, {t}_zero : index"));
        self.line(&format!("  %wrapped = arith.addi %r0, {len} : index"));
        self.line("  %first = arith.select %neg, %wrapped, %r0 : index");
        self.line(&format!("  %written = arith.cmpi slt, %first, {n} : index"));
        self.line(&format!("  %left = arith.subi {t}_last, %first : index"));
        self.line(&format!("  %laps = arith.divsi %left, {len} : index"));
        self.line(&format!("  %skip = arith.muli %laps, {len} : index"));
        self.line("  %latest = arith.addi %first, %skip : index");
        self.line(&format!("  %row = arith.minsi %latest, {t}_last : index"));
        self.line(&format!("  %row_in = arith.maxsi %row, {t}_zero : index"));
        at_rows[axis] = "%row_in".into();
        self.line(&format!(
            "  %new = tensor.extract {}[{}] : {}",
            self.name(rows),
            at_rows.join(", "),
            tensor_ty(&rt)
        ));
        self.line(&format!("  %res = arith.select %written, %new, %o : {et}"));
        self.line(&format!("  linalg.yield %res : {et}"));
        self.line(&format!("}} -> {} {loc}", tensor_ty(&bt)));
    }

    pub(super) fn emit_tabulate(&mut self, id: ValueId, f: &ScalarFn, loc: &str) {
        let ty = self.ty(id);
        let mut args = Vec::new();
        for (k, ix) in self.open_index_generic(id, "%ix").iter().enumerate() {
            self.line(&format!("  %i{k} = arith.index_cast {ix} : index to i64"));
            args.push(format!("%i{k}"));
        }
        let mut result = self.emit_scalar_fn(f, &args, "%tb");
        if ty.dtype == lmc_abi::DType::F32 && f.nodes[f.result].1 == ScalarType::Int {
            self.line(&format!("  %tbf = arith.sitofp {result} : i64 to f32"));
            result = "%tbf".into();
        }
        self.line(&format!("  linalg.yield {result} : {}", elem(ty.dtype)));
        self.line(&format!("}} -> {} {loc}", tensor_ty(&ty)));
    }

    pub(super) fn emit_split_heads(&mut self, id: ValueId, x: ValueId, heads: i64, loc: &str) {
        let xt = self.g.ty(x).clone();
        let Dim::Static(c) = xt.dims[xt.rank() - 1] else {
            unreachable!("the checker requires a fixed width")
        };
        let d = c / heads;
        // out[..., h, t, e] = x[..., t, h * D + e]
        self.emit_gather_like(id, x, loc, &|idx, body| {
            let n = idx.len();
            body.push(format!("%width = arith.constant {d} : index"));
            body.push(format!("%base = arith.muli {}, %width : index", idx[n - 3]));
            body.push(format!("%col = arith.addi %base, {} : index", idx[n - 1]));
            let mut at: Vec<String> = idx[..n - 3].to_vec();
            at.push(idx[n - 2].clone());
            at.push("%col".into());
            at
        });
    }

    pub(super) fn emit_merge_heads(&mut self, id: ValueId, x: ValueId, loc: &str) {
        let xt = self.g.ty(x).clone();
        let Dim::Static(d) = xt.dims[xt.rank() - 1] else {
            unreachable!("the checker requires a fixed width")
        };
        // out[..., t, c] = x[..., c / D, t, c % D]
        self.emit_gather_like(id, x, loc, &|idx, body| {
            let n = idx.len();
            body.push(format!("%width = arith.constant {d} : index"));
            body.push(format!("%head = arith.divui {}, %width : index", idx[n - 1]));
            body.push(format!("%col = arith.remui {}, %width : index", idx[n - 1]));
            let mut at: Vec<String> = idx[..n - 2].to_vec();
            at.extend(["%head".to_string(), idx[n - 2].clone(), "%col".to_string()]);
            at
        });
    }
}
