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

/// How many columns of a `scatter_add`'s rows one thread adds up (the blocks of columns are
/// what its `scf.forall` shares out: no two threads add into the same element).
const SCATTER_COLUMNS: i64 = 64;

/// A product of sizes known only at run time (printed `?`; its value is read with
/// `tensor.dim`): not one of the graph's symbols.
const FLATTENED: lmc_core::ir::SymbolId = lmc_core::ir::SymbolId(u32::MAX - 2);

/// `t` seen as `[prod(dims[..split]), prod(dims[split..])]` (or one axis when `split` is 0 or
/// the rank): a product of sizes is static when all of them are.
pub(super) fn flattened(t: &TensorType, split: usize) -> TensorType {
    let product = |dims: &[Dim]| {
        dims.iter().try_fold(1i64, |acc, d| match d {
            Dim::Static(n) => Some(acc * n),
            Dim::Symbol(_) => None,
        })
    };
    let mut dims = Vec::new();
    for part in [&t.dims[..split], &t.dims[split..]] {
        if !part.is_empty() {
            dims.push(product(part).map_or(Dim::Symbol(FLATTENED), Dim::Static));
        }
    }
    TensorType::new(t.dtype, dims)
}

impl Emitter<'_> {
    /// `x` (of type `t`) collapsed to `[prod(t[..split]), prod(t[split..])]` (one axis when a
    /// part is empty; a rank-0 `x` becomes `[1]`). Collapsing a contiguous tensor is free.
    pub(super) fn collapsed(&mut self, x: &str, t: &TensorType, split: usize) -> (String, String) {
        if t.rank() == 0 {
            let ty = format!("tensor<1x{}>", elem(t.dtype));
            let name = self.fresh();
            self.line(&format!(
                "{name} = tensor.expand_shape {x} [] output_shape [1] : {} into {ty}",
                tensor_ty(t)
            ));
            return (name, ty);
        }
        let flat = flattened(t, split);
        let groups: Vec<Vec<usize>> = [(0..split).collect::<Vec<_>>(), (split..t.rank()).collect()]
            .into_iter()
            .filter(|g| !g.is_empty())
            .collect();
        let ty = tensor_ty(&flat);
        if groups.iter().all(|g| g.len() == 1) {
            return (x.to_string(), ty);
        }
        let reassociation: Vec<String> = groups
            .iter()
            .map(|g| format!("[{}]", g.iter().map(usize::to_string).collect::<Vec<_>>().join(", ")))
            .collect();
        let name = self.fresh();
        self.line(&format!(
            "{name} = tensor.collapse_shape {x} [{}] : {} into {ty}",
            reassociation.join(", "),
            tensor_ty(t)
        ));
        (name, ty)
    }

    /// `scatter_add indices, values, rows`: the values' rows `[n, width]` (indices and the
    /// value's trailing axes each flattened) added into a zero-filled `[rows, width]`, position
    /// by position in order (rows may repeat), each index clamped into `0..rows` as a gather
    /// clamps it. Threads take blocks of columns, so none adds into another's elements. A GPU
    /// gets one loop nest over the result, each element summing the positions whose index
    /// is its row.
    pub(super) fn emit_scatter_add(&mut self, id: ValueId, [indices, values]: [ValueId; 2], loc: &str) {
        let g = self.g;
        let (it, vt, ty) = (g.ty(indices).clone(), g.ty(values).clone(), g.ty(id).clone());
        let k = it.rank();
        let values_name = self.contiguous(&self.name(values));
        let indices_name = self.contiguous(&self.name(indices));
        let (ix, ix_t) = self.collapsed(&indices_name, &it, k);
        // Values `[n, width]`: rank-0 indices stand for one position.
        let (vals, vals_t) = if k == 0 {
            let mut one = vt.clone();
            one.dims.insert(0, Dim::Static(1));
            let name = self.fresh();
            let groups: Vec<String> = (0..vt.rank())
                .map(|a| if a == 0 { "[0, 1]".to_string() } else { format!("[{}]", a + 1) })
                .collect();
            let sizes: Vec<String> = one.dims.iter().map(|d| dim_size(*d)).collect();
            self.line(&format!(
                "{name} = tensor.expand_shape {values_name} [{}] output_shape [{}] : {} into {}",
                groups.join(", "),
                sizes.join(", "),
                tensor_ty(&vt),
                tensor_ty(&one)
            ));
            self.collapsed(&name, &one, 1)
        } else {
            self.collapsed(&values_name, &vt, k)
        };
        let flat = flattened(&ty, 1);
        let flat_t = tensor_ty(&flat);
        let p = self.fresh();
        self.line(&format!("{p}_c0 = arith.constant 0 : index"));
        self.line(&format!("{p}_c1 = arith.constant 1 : index"));
        self.line(&format!("{p}_zero = arith.constant 0.0 : f32"));
        let rows = self.dim_value(ty.dims[0]);
        self.line(&format!("{p}_width = tensor.dim {vals}, {p}_c1 : {vals_t}"));
        let mut sizes = Vec::new();
        if let Dim::Symbol(_) = ty.dims[0] {
            sizes.push(rows.clone());
        }
        if let Dim::Symbol(_) = flat.dims[1] {
            sizes.push(format!("{p}_width"));
        }
        self.line(&format!("{p}_empty = tensor.empty({}) : {flat_t}", sizes.join(", ")));
        self.line(&format!(
            "{p}_zeros = linalg.fill ins({p}_zero : f32) outs({p}_empty : {flat_t}) -> {flat_t}"
        ));
        let sums = format!("{p}_sums");
        if self.target.is_gpu() {
            self.scatter_loops(&p, &sums, (&ix, &ix_t), (&vals, &vals_t), &flat_t, &rows, loc);
        } else {
            self.scatter_blocks(&p, &sums, (&ix, &ix_t), (&vals, &vals_t), &flat_t, &rows, loc);
        }
        let out = v(id);
        if ty.rank() == 2 {
            self.line(&format!("{out} = tensor.cast {sums} : {flat_t} to {} {loc}", tensor_ty(&ty)));
            return;
        }
        let groups: Vec<String> = std::iter::once("[0]".to_string())
            .chain(std::iter::once(format!(
                "[{}]",
                (1..ty.rank()).map(|a| a.to_string()).collect::<Vec<_>>().join(", ")
            )))
            .collect();
        let out_sizes: Vec<String> = ty.dims.iter().map(|d| dim_size(*d)).collect();
        self.line(&format!(
            "{out} = tensor.expand_shape {sums} [{}] output_shape [{}] : {flat_t} into {} {loc}",
            groups.join(", "),
            out_sizes.join(", "),
            tensor_ty(&ty)
        ));
    }
}

impl Emitter<'_> {
    /// A CPU's `scatter_add` into `{p}_zeros` (`[rows, width]`), named `sums`: an `scf.forall`
    /// over blocks of [`SCATTER_COLUMNS`] columns, each adding every position's row, in order,
    /// into its block.
    #[allow(clippy::too_many_arguments)]
    fn scatter_blocks(
        &mut self,
        p: &str,
        sums: &str,
        (ix, ix_t): (&str, &str),
        (vals, vals_t): (&str, &str),
        flat_t: &str,
        rows: &str,
        loc: &str,
    ) {
        self.line(&format!("{p}_n = tensor.dim {ix}, {p}_c0 : {ix_t}"));
        // No rows: nothing to add into (a clamped index would still point outside).
        self.line(&format!("{p}_norows = arith.cmpi eq, {rows}, {p}_c0 : index"));
        self.line(&format!("{p}_count = arith.select {p}_norows, {p}_c0, {p}_n : index"));
        self.line(&format!("{p}_last = arith.subi {rows}, {p}_c1 : index"));
        self.line(&format!("{p}_bw = arith.constant {SCATTER_COLUMNS} : index"));
        self.line(&format!("{p}_blocks = arith.ceildivui {p}_width, {p}_bw : index"));
        self.line(&format!(
            "{sums} = scf.forall ({p}_blk) in ({p}_blocks) shared_outs({p}_out = {p}_zeros) -> ({flat_t}) {{"
        ));
        let block_t = "tensor<?x?xf32>";
        let row_t = "tensor<?xf32>";
        self.line(&format!("  {p}_lo = arith.muli {p}_blk, {p}_bw : index"));
        self.line(&format!("  {p}_left = arith.subi {p}_width, {p}_lo : index"));
        self.line(&format!("  {p}_w = arith.minui {p}_left, {p}_bw : index"));
        let at = format!("[0, {p}_lo] [{rows}, {p}_w] [1, 1]");
        self.line(&format!("  {p}_block = tensor.extract_slice {p}_out{at} : {flat_t} to {block_t}"));
        self.line(&format!(
            "  {p}_added = scf.for {p}_i = {p}_c0 to {p}_count step {p}_c1 iter_args({p}_acc = {p}_block) -> ({block_t}) {{"
        ));
        self.line(&format!("    {p}_idx = tensor.extract {ix}[{p}_i] : {ix_t}"));
        self.line(&format!("    {p}_ii = arith.index_cast {p}_idx : i64 to index"));
        // Clamp, as a gather does: no index writes out of bounds.
        self.line(&format!("    {p}_hi = arith.minsi {p}_ii, {p}_last : index"));
        self.line(&format!("    {p}_row = arith.maxsi {p}_hi, {p}_c0 : index"));
        let row_at = format!("[{p}_row, 0] [1, {p}_w] [1, 1]");
        self.line(&format!(
            "    {p}_dst = tensor.extract_slice {p}_acc{row_at} : {block_t} to {row_t}"
        ));
        self.line(&format!(
            "    {p}_src = tensor.extract_slice {vals}[{p}_i, {p}_lo] [1, {p}_w] [1, 1] : {vals_t} to {row_t}"
        ));
        let map = "affine_map<(d0) -> (d0)>";
        self.line(&format!(
            "    {p}_sum = linalg.generic {{indexing_maps = [{map}, {map}], iterator_types = [\"parallel\"]}} ins({p}_src : {row_t}) outs({p}_dst : {row_t}) {{"
        ));
        self.line("    ^bb0(%a: f32, %o: f32):");
        self.line("      %r = arith.addf %o, %a : f32");
        self.line("      linalg.yield %r : f32");
        self.line(&format!("    }} -> {row_t} {loc}"));
        self.line(&format!(
            "    {p}_put = tensor.insert_slice {p}_sum into {p}_acc{row_at} : {row_t} into {block_t}"
        ));
        self.line(&format!("    scf.yield {p}_put : {block_t}"));
        self.line("  }");
        self.line("  scf.forall.in_parallel {");
        self.line(&format!(
            "    tensor.parallel_insert_slice {p}_added into {p}_out{at} : {block_t} into {flat_t}"
        ));
        self.line("  }");
        self.line(&format!("}} {loc}"));
    }

    /// A GPU's `scatter_add` into `{p}_zeros`, named `sums`: one loop nest over the result's
    /// elements (a thread each), each summing, in order, the positions whose clamped index is
    /// its row. Every thread reads every index: the work grows with rows × positions, the
    /// price of needing no atomic adds.
    #[allow(clippy::too_many_arguments)]
    fn scatter_loops(
        &mut self,
        p: &str,
        sums: &str,
        (ix, ix_t): (&str, &str),
        (vals, vals_t): (&str, &str),
        flat_t: &str,
        rows: &str,
        loc: &str,
    ) {
        self.line(&format!("{p}_last = arith.subi {rows}, {p}_c1 : index"));
        let maps = [
            "affine_map<(d0, d1, d2) -> (d2)>",
            "affine_map<(d0, d1, d2) -> (d2, d1)>",
            "affine_map<(d0, d1, d2) -> (d0, d1)>",
        ];
        self.line(&format!(
            "{sums} = linalg.generic {{indexing_maps = [{}], iterator_types = [\"parallel\", \"parallel\", \"reduction\"]}} ins({ix}, {vals} : {ix_t}, {vals_t}) outs({p}_zeros : {flat_t}) {{",
            maps.join(", ")
        ));
        self.line("^bb0(%idx: i64, %a: f32, %acc: f32):");
        self.line("  %ii = arith.index_cast %idx : i64 to index");
        self.line(&format!("  %hi = arith.minsi %ii, {p}_last : index"));
        self.line(&format!("  %row = arith.maxsi %hi, {p}_c0 : index"));
        self.line("  %r = linalg.index 0 : index");
        self.line("  %mine = arith.cmpi eq, %row, %r : index");
        self.line("  %sum = arith.addf %acc, %a : f32");
        self.line("  %res = arith.select %mine, %sum, %acc : f32");
        self.line("  linalg.yield %res : f32");
        self.line(&format!("}} -> {flat_t} {loc}"));
    }
}
