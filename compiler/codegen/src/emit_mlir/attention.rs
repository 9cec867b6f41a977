//! Attention, one block of query rows at a time with an online softmax over tiles of keys, its
//! mask and score functions inlined and fully masked tiles skipped; a GPU's attention whole.

use super::*;

/// The length of a block of query rows (see `Emitter::emit_attention`): not one of the
/// graph's symbols, but a size known only inside the block.
pub(super) const BLOCK_ROWS: lmc_core::ir::SymbolId = lmc_core::ir::SymbolId(u32::MAX);

/// The number of keys a block of query rows attends to (see `Emitter::emit_attention`).
pub(super) const BLOCK_KEYS: lmc_core::ir::SymbolId = lmc_core::ir::SymbolId(u32::MAX - 1);

/// How many query rows an attention computes at a time: its scores are a `[QUERY_ROWS, keys]`
/// block, never the whole `[heads, queries, keys]`. A multiple of every vector width: a tall
/// block's rows are whole vectors (see `Emitter::attention_rows_tall`).
pub(super) const QUERY_ROWS: i64 = 32;

/// How many keys a tall block of queries scores at a time (`Emitter::attention_rows_tall`):
/// its scores, `[KEY_TILE, QUERY_ROWS]` f32 (32 KiB), stay in L1 whatever the length.
pub(super) const KEY_TILE: i64 = 256;

/// The fewest rows a block of queries computes with its scores keys by queries
/// (`Emitter::attention_rows_tall`); fewer, and most lanes of its vectors would be padding.
pub(super) const TALL_MIN_ROWS: i64 = 8;

/// One block of query rows of an attention, as both block layouts take it: the block's slices
/// of `q`, `k` and `v` and of the result (`dest`, computed in place), each `[1, 1, rows, ·]` with
/// its SSA name; the block's indices ([`at_block`]), which index functions see added to the
/// block's own; and the attention's scale, mask, score and dropout functions.
pub(super) struct AttentionBlock<'a> {
    q: (&'a String, &'a TensorType),
    k: (&'a String, &'a TensorType),
    v: (&'a String, &'a TensorType),
    dest: (&'a String, &'a TensorType),
    /// Block indices (see [`at_block`]); empty for a whole attention (a GPU's), whose batch
    /// and head are its loop nests' first two indices and whose rows and keys start at 0.
    at: &'a [String; 4],
    /// Query heads per key head (grouped-query attention) when the keys are not sliced per
    /// head (a whole attention); 1 for a block.
    group: i64,
    scale: f64,
    mask: Option<&'a ScalarFn>,
    score: Option<&'a ScalarFn>,
    /// The factor of each probability after the softmax (dropout's).
    dropout: Option<&'a ScalarFn>,
    loc: &'a str,
}

/// The block's own columns of a tile of scores in the tall layout: their type, the whole tile's
/// type, and where they sit in it (`[offsets] [sizes] [strides]`).
struct OwnColumns {
    own_s: String,
    st_s: String,
    at: String,
}

/// The block indices of attention block `p` (see `Emitter::emit_attention`): its batch, its
/// head, its first query row and its first key.
pub(super) fn at_block(p: &str) -> [String; 4] {
    [format!("{p}_b"), format!("{p}_h"), format!("{p}_i"), format!("{p}_k0")]
}

impl Emitter<'_> {
    /// Attention, one block of query rows at a time: an `scf.forall` over batch, heads and
    /// blocks of [`QUERY_ROWS`] queries (threads, once lowered), each computing its rows'
    /// scores against every key, their softmax and the weighted sum of values. Scores exist
    /// only per block, so memory grows with the keys, not with queries × keys per head.
    pub(super) fn emit_attention(
        &mut self,
        id: ValueId,
        [q, k, v_id]: [ValueId; 3],
        scale: f64,
        (mask, score, dropout): (Option<&ScalarFn>, Option<&ScalarFn>, Option<&ScalarFn>),
        loc: &str,
    ) {
        let g = self.g;
        let (qt, kt, vt) = (g.ty(q).clone(), g.ty(k).clone(), g.ty(v_id).clone());
        let ty = g.ty(id).clone();
        let group = match (qt.dims[1], kt.dims[1]) {
            (Dim::Static(hq), Dim::Static(hk)) if hq != hk => hq / hk,
            _ => 1,
        };
        if self.target.is_gpu() {
            self.emit_whole_attention(id, [q, k, v_id], group, (scale, mask, score, dropout), loc);
            return;
        }
        let p = self.fresh();
        let batch = self.dim_value(qt.dims[0]);
        let heads = self.dim_value(qt.dims[1]);
        let queries = self.dim_value(qt.dims[2]);
        self.line(&format!("{p}_rows = arith.constant {QUERY_ROWS} : index"));
        self.line(&format!("{p}_blocks = arith.ceildivui {queries}, {p}_rows : index"));
        let dest = self.empty(&ty);
        let out_t = tensor_ty(&ty);
        self.line(&format!(
            "{} = scf.forall ({p}_b, {p}_h, {p}_q) in ({batch}, {heads}, {p}_blocks) shared_outs({p}_out = {dest}) -> ({out_t}) {{",
            v(id)
        ));
        self.within(
            |mode| mode.indent += 1,
            |e| {
                e.line(&format!("{p}_i = arith.muli {p}_q, {p}_rows : index"));
                e.line(&format!("{p}_left = arith.subi {queries}, {p}_i : index"));
                e.line(&format!("{p}_n = arith.minui {p}_left, {p}_rows : index"));
                let key_head = if group > 1 {
                    e.line(&format!("{p}_group = arith.constant {group} : index"));
                    e.line(&format!("{p}_kh = arith.divui {p}_h, {p}_group : index"));
                    format!("{p}_kh")
                } else {
                    format!("{p}_h")
                };
                let size = dim_size;
                let rows = Dim::Symbol(BLOCK_ROWS);
                let block =
                    |t: &TensorType, rows_or_keys: Dim| TensorType::new(t.dtype, vec![Dim::Static(1), Dim::Static(1), rows_or_keys, t.dims[3]]);
                let (qb, kb, vb, ob) = (block(&qt, rows), block(&kt, kt.dims[2]), block(&vt, vt.dims[2]), block(&ty, rows));
                let slice = |e: &mut Self, name: &str, of: ValueId, head: &str, start: &str, rows: &str, t: &TensorType, b: &TensorType| {
                    e.line(&format!(
                        "{name} = tensor.extract_slice {}[{p}_b, {head}, {start}, 0] [1, 1, {rows}, {}] [1, 1, 1, 1] : {} to {}",
                        v(of),
                        size(t.dims[3]),
                        tensor_ty(t),
                        tensor_ty(b)
                    ));
                };
                slice(
                    e,
                    &format!("{p}_qs"),
                    q,
                    &format!("{p}_h"),
                    &format!("{p}_i"),
                    &format!("{p}_n"),
                    &qt,
                    &qb,
                );
                // With a mask, the block reads only the keys from the first to the last one any of its
                // rows may see: keys masked for the whole block (a causal mask's future, padding at the
                // end) cost nothing.
                let (first_key, keys, kb, vb) = match mask {
                    Some(f) => {
                        e.emit_key_range(&p, f, &kt, &at_block(&p));
                        let b = Dim::Symbol(BLOCK_KEYS);
                        (format!("{p}_k0"), format!("{p}_kn"), block(&kt, b), block(&vt, b))
                    }
                    None => {
                        e.line(&format!("{p}_k0 = arith.constant 0 : index"));
                        (format!("{p}_k0"), size(kt.dims[2]), kb, vb)
                    }
                };
                slice(e, &format!("{p}_ks"), k, &key_head, &first_key, &keys, &kt, &kb);
                slice(e, &format!("{p}_vs"), v_id, &key_head, &first_key, &keys, &vt, &vb);
                // Inside a block the matmuls are inlined loops, as in a scan step.
                let result = e.within(
                    |mode| {
                        mode.in_scan_body = true;
                        mode.block_rows = Some(format!("{p}_n"));
                        if mask.is_some() {
                            mode.block_keys = Some(format!("{p}_kn"));
                        }
                    },
                    |e| {
                        // The block's result is computed in its slice of the output, so the insert below
                        // writes in place (a copy between strided views would call MLIR's runner library).
                        e.line(&format!(
                            "{p}_os = tensor.extract_slice {p}_out[{p}_b, {p}_h, {p}_i, 0] [1, 1, {p}_n, {}] [1, 1, 1, 1] : {out_t} to {}",
                            size(ty.dims[3]),
                            tensor_ty(&ob)
                        ));
                        let at = at_block(&p);
                        // A block of many rows keeps its scores keys by queries (`attention_rows_tall`); a few
                        // rows (a decode step's new tokens) would waste most of its vectors' lanes, and keep
                        // them queries by keys.
                        let names = [format!("{p}_qs"), format!("{p}_ks"), format!("{p}_vs"), format!("{p}_os")];
                        let block = AttentionBlock {
                            q: (&names[0], &qb),
                            k: (&names[1], &kb),
                            v: (&names[2], &vb),
                            dest: (&names[3], &ob),
                            at: &at,
                            group: 1,
                            scale,
                            mask,
                            score,
                            dropout,
                            loc,
                        };
                        let result = format!("{p}_block");
                        e.line(&format!("{p}_tall_min = arith.constant {TALL_MIN_ROWS} : index"));
                        e.line(&format!("{p}_tall = arith.cmpi uge, {p}_n, {p}_tall_min : index"));
                        e.line(&format!("{result} = scf.if {p}_tall -> ({}) {{", tensor_ty(&ob)));
                        let tall = e.attention_rows_tall(&block);
                        e.line(&format!("  scf.yield {tall} : {}", tensor_ty(&ob)));
                        e.line("} else {");
                        let short = e.attention_rows(&block);
                        e.line(&format!("  scf.yield {short} : {}", tensor_ty(&ob)));
                        e.line("}");
                        result
                    },
                );
                e.line("scf.forall.in_parallel {");
                e.line(&format!(
                    "  tensor.parallel_insert_slice {result} into {p}_out[{p}_b, {p}_h, {p}_i, 0] [1, 1, {p}_n, {}] [1, 1, 1, 1] : {} into {out_t}",
                    size(ty.dims[3]),
                    tensor_ty(&ob)
                ));
                e.line("}");
            },
        );
        self.line(&format!("}} {loc}"));
    }

    /// A whole attention in loop nests over all its heads, rows and keys at once (for a GPU,
    /// where each nest is one kernel): the steps of [`Emitter::attention_rows`] on the whole
    /// `[batch, heads, queries, keys]` scores. Memory grows with the square of the length; a
    /// fused attention kernel for GPUs is not written yet.
    pub(super) fn emit_whole_attention(
        &mut self,
        id: ValueId,
        [q, k, v_id]: [ValueId; 3],
        group: i64,
        (scale, mask, score, dropout): (f64, Option<&ScalarFn>, Option<&ScalarFn>, Option<&ScalarFn>),
        loc: &str,
    ) {
        let g = self.g;
        let (qt, kt, vt, ty) = (g.ty(q).clone(), g.ty(k).clone(), g.ty(v_id).clone(), g.ty(id).clone());
        let names = [self.name(q), self.name(k), self.name(v_id), self.empty(&ty)];
        let whole = [String::new(), String::new(), String::new(), String::new()];
        let block = AttentionBlock {
            q: (&names[0], &qt),
            k: (&names[1], &kt),
            v: (&names[2], &vt),
            dest: (&names[3], &ty),
            at: &whole,
            group,
            scale,
            mask,
            score,
            dropout,
            loc,
        };
        let result = self.attention_rows(&block);
        let t = tensor_ty(&ty);
        self.line(&format!("{} = tensor.cast {result} : {t} to {t} {loc}", v(id)));
    }

    /// The range of keys the rows of attention block `p` may see under `mask`: `{p}_k0`, the
    /// first, and `{p}_kn`, how many from it (0 when the mask hides every key from every row).
    /// Scans inwards from both ends and stops at the first key some row keeps: padding's mask
    /// is evaluated for one key at each end, a causal mask only for the keys the block skips.
    pub(super) fn emit_key_range(&mut self, p: &str, mask: &ScalarFn, kt: &TensorType, at: &[String; 4]) {
        let keys = self.dim_value(kt.dims[2]);
        self.line(&format!("{p}_c0 = arith.constant 0 : index"));
        self.line(&format!("{p}_c1 = arith.constant 1 : index"));
        self.line(&format!("{p}_false = arith.constant false"));
        // The first key some row keeps (`keys` if none), then one past the last (scanning down
        // no further than the first).
        self.line(&format!("{p}_k0 = scf.while ({p}_lj = {p}_c0) : (index) -> index {{"));
        self.line(&format!("  {p}_lin = arith.cmpi ult, {p}_lj, {keys} : index"));
        let seen = self.any_row_keeps(p, "l", mask, at, &format!("{p}_lin"), &format!("{p}_lj"));
        self.line(&format!("  {p}_lgo = arith.cmpi ugt, {p}_lin, {seen} : i1"));
        self.line(&format!("  scf.condition({p}_lgo) {p}_lj : index"));
        self.line("} do {");
        self.line(&format!("^bb0({p}_lnext: index):"));
        self.line(&format!("  {p}_lstep = arith.addi {p}_lnext, {p}_c1 : index"));
        self.line(&format!("  scf.yield {p}_lstep : index"));
        self.line("}");
        self.line(&format!("{p}_kend = scf.while ({p}_hj = {keys}) : (index) -> index {{"));
        self.line(&format!("  {p}_hin = arith.cmpi ugt, {p}_hj, {p}_k0 : index"));
        self.line(&format!("  {p}_hprev = arith.subi {p}_hj, {p}_c1 : index"));
        let seen = self.any_row_keeps(p, "h", mask, at, &format!("{p}_hin"), &format!("{p}_hprev"));
        self.line(&format!("  {p}_hgo = arith.cmpi ugt, {p}_hin, {seen} : i1"));
        self.line(&format!("  scf.condition({p}_hgo) {p}_hj : index"));
        self.line("} do {");
        self.line(&format!("^bb0({p}_hnext: index):"));
        self.line(&format!("  {p}_hstep = arith.subi {p}_hnext, {p}_c1 : index"));
        self.line(&format!("  scf.yield {p}_hstep : index"));
        self.line("}");
        self.line(&format!("{p}_span = arith.subi {p}_kend, {p}_k0 : index"));
        self.line(&format!("{p}_kn = arith.maxsi {p}_span, {p}_c0 : index"));
    }

    /// Inside a key scan of [`Emitter::emit_key_range`]: whether any row of block `p` keeps key
    /// `key` under `mask`, evaluated only when `valid` (the key is in range). Returns the i1.
    pub(super) fn any_row_keeps(&mut self, p: &str, side: &str, mask: &ScalarFn, at: &[String; 4], valid: &str, key: &str) -> String {
        let any = format!("{p}_{side}any");
        self.line(&format!("  {any} = scf.if {valid} -> (i1) {{"));
        self.line(&format!(
            "    {p}_{side}kept = scf.for {p}_{side}r = {p}_c0 to {p}_n step {p}_c1 iter_args({p}_{side}acc = {p}_false) -> (i1) {{"
        ));
        self.line(&format!("      {p}_{side}row = arith.addi {}, {p}_{side}r : index", at[2]));
        let mut idx = Vec::new();
        for (k, index) in [at[0].clone(), at[1].clone(), format!("{p}_{side}row"), key.to_string()]
            .iter()
            .enumerate()
        {
            self.line(&format!("      %i{k} = arith.index_cast {index} : index to i64"));
            idx.push(format!("%i{k}"));
        }
        let keep = self.emit_scalar_fn(mask, &idx, "%rg");
        self.line(&format!("      {p}_{side}or = arith.ori {p}_{side}acc, {keep} : i1"));
        self.line(&format!("      scf.yield {p}_{side}or : i1"));
        self.line("    }");
        self.line(&format!("    scf.yield {p}_{side}kept : i1"));
        self.line("  } else {");
        self.line(&format!("    scf.yield {p}_false : i1"));
        self.line("  }");
        any
    }

    /// The attention of one block of query rows ([`AttentionBlock`]). Returns the result's SSA
    /// name. Scores are queries by keys: `q · kᵀ` as dot products, then the softmax along each
    /// row; the layout for blocks of fewer than [`TALL_MIN_ROWS`] rows (a decode step's new
    /// tokens), where [`Emitter::attention_rows_tall`] would waste most lanes.
    pub(super) fn attention_rows(&mut self, block: &AttentionBlock<'_>) -> String {
        let AttentionBlock {
            q: (q, qt),
            k: (k, kt),
            v: (v_in, vt),
            dest: (dest, ty),
            at,
            group,
            scale,
            mask,
            score,
            dropout,
            loc,
        } = *block;
        let (qt, kt, vt, ty) = (qt.clone(), kt.clone(), vt.clone(), ty.clone());
        let (b, h, t, s) = (qt.dims[0], qt.dims[1], qt.dims[2], kt.dims[2]);
        let scores_ty = TensorType::new(lmc_abi::DType::F32, vec![b, h, t, s]);
        let rows_ty = TensorType::new(lmc_abi::DType::F32, vec![b, h, t]);
        let st = tensor_ty(&scores_ty);
        let rt = tensor_ty(&rows_ty);
        let fill = |e: &mut Self, ty: &TensorType, value: &str| {
            let empty = e.empty(ty);
            let c = e.fresh();
            e.line(&format!("{c} = arith.constant {value} : f32"));
            let f = e.fresh();
            e.line(&format!(
                "{f} = linalg.fill ins({c} : f32) outs({empty} : {}) -> {}",
                tensor_ty(ty),
                tensor_ty(ty)
            ));
            f
        };
        // 1. raw scores q·kᵀ
        let raw = self.fresh();
        let scores = matmul::MatMul {
            layout: matmul::RhsLayout::Transposed,
            x: qt.clone(),
            rhs: kt.clone(),
            out: scores_ty.clone(),
            group,
            x_transposed: false,
            bias: None,
        };
        self.emit_matmul_call(&raw, [q, k], None, &scores, loc);
        // 2. scale, score function, mask
        let empty = self.empty(&scores_ty);
        let scored = self.fresh();
        let map4 = "affine_map<(d0, d1, d2, d3) -> (d0, d1, d2, d3)>";
        self.line(&format!("{scored} = linalg.generic {{indexing_maps = [{map4}, {map4}], iterator_types = [{}]}} ins({raw} : {st}) outs({empty} : {st}) {{", parallel(4)));
        self.line("^bb0(%raw: f32, %o: f32):");
        let current = self.scored_element(at, scale, mask, score, (2, 3));
        self.line(&format!("  linalg.yield {current} : f32"));
        self.line(&format!("}} -> {st} {loc}"));
        // 3. row maximum
        let neg = fill(self, &rows_ty, "0xFF800000");
        let max = self.fresh();
        let red = "[\"parallel\", \"parallel\", \"parallel\", \"reduction\"]";
        let row_map = "affine_map<(d0, d1, d2, d3) -> (d0, d1, d2)>";
        self.line(&format!("{max} = linalg.generic {{indexing_maps = [{map4}, {row_map}], iterator_types = {red}}} ins({scored} : {st}) outs({neg} : {rt}) {{"));
        self.line("^bb0(%a: f32, %acc: f32):");
        self.line("  %r = arith.maximumf %a, %acc : f32");
        self.line("  linalg.yield %r : f32");
        self.line(&format!("}} -> {rt} {loc}"));
        // 4. exp(s - max); a fully masked row (max = -inf) gives zeros, not NaN
        let empty = self.empty(&scores_ty);
        let probs = self.fresh();
        self.line(&format!("{probs} = linalg.generic {{indexing_maps = [{map4}, {row_map}, {map4}], iterator_types = [{}]}} ins({scored}, {max} : {st}, {rt}) outs({empty} : {st}) {{", parallel(4)));
        self.line("^bb0(%s: f32, %m: f32, %o: f32):");
        self.line("  %neginf = arith.constant 0xFF800000 : f32");
        self.line("  %zero = arith.constant 0.0 : f32");
        self.line("  %empty = arith.cmpf oeq, %m, %neginf : f32");
        self.line("  %safe = arith.select %empty, %zero, %m : f32");
        self.line("  %d = arith.subf %s, %safe : f32");
        for l in approx::exp("%d", "%r", "%e") {
            self.line(&format!("  {l}"));
        }
        self.line("  linalg.yield %r : f32");
        self.line(&format!("}} -> {st} {loc}"));
        // 5. row sums
        let zr = fill(self, &rows_ty, "0.0");
        let sums = self.fresh();
        self.line(&format!("{sums} = linalg.generic {{indexing_maps = [{map4}, {row_map}], iterator_types = {red}}} ins({probs} : {st}) outs({zr} : {rt}) {{"));
        self.line("^bb0(%a: f32, %acc: f32):");
        self.line("  %r = arith.addf %a, %acc : f32");
        self.line("  linalg.yield %r : f32");
        self.line(&format!("}} -> {rt} {loc}"));
        // 5b. dropout of the probabilities, after their sums
        let probs = match dropout {
            Some(f) => {
                let empty = self.empty(&scores_ty);
                let dropped = self.fresh();
                self.line(&format!("{dropped} = linalg.generic {{indexing_maps = [{map4}, {map4}], iterator_types = [{}]}} ins({probs} : {st}) outs({empty} : {st}) {{", parallel(4)));
                self.line("^bb0(%p: f32, %o: f32):");
                let kept = self.dropped_element(at, f, "%p", (2, 3));
                self.line(&format!("  linalg.yield {kept} : f32"));
                self.line(&format!("}} -> {st} {loc}"));
                dropped
            }
            None => probs,
        };
        // 6. weighted sum of v
        let weighted = self.fresh();
        let out_t = tensor_ty(&ty);
        let values = matmul::MatMul {
            layout: matmul::RhsLayout::RowMajor,
            x: scores_ty.clone(),
            rhs: vt.clone(),
            out: ty.clone(),
            group,
            x_transposed: false,
            bias: None,
        };
        self.emit_matmul_call(&weighted, [&probs, v_in], None, &values, loc);
        // 7. normalise; an empty row stays zero
        let result = self.fresh();
        self.normalise(&result, (&weighted, &out_t), (&sums, &rt, row_map), dest, loc);
        result
    }

    /// The attention of one block of query rows (as [`Emitter::attention_rows`]), its scores
    /// kept keys by queries: `sᵀ = k · qᵀ` as `[keys, QUERY_ROWS]`, the block's queries
    /// transposed into zero-padded columns. Every step is then vectors across queries: both
    /// matmuls are the axpy tile (`k` rows against whole vectors of queries, `pᵀ` read
    /// transposed against `v`), and the softmax's maximum and sum run down the keys, with no
    /// sums across lanes. Scores of the padding columns are never masked, read or written out.
    ///
    /// Keys are taken [`KEY_TILE`] at a time with an online softmax: each tile's scores raise
    /// the running maximum, the sums and weighted values so far are rescaled by
    /// `exp(old max - new max)`, and the tile's own are added. A block's scores are then never
    /// more than one tile, whatever the length.
    pub(super) fn attention_rows_tall(&mut self, block: &AttentionBlock<'_>) -> String {
        let AttentionBlock {
            q: (q, qt),
            k: (k, kt),
            v: (v_in, vt),
            dest: (dest, ty),
            at,
            scale,
            mask,
            score,
            dropout,
            loc,
            ..
        } = *block;
        let (qt, kt, vt, ty) = (qt.clone(), kt.clone(), vt.clone(), ty.clone());
        let lanes = self.target.lanes;
        let vectors = (QUERY_ROWS / lanes) as usize;
        let vec = format!("vector<{lanes}xf32>");
        let x = self.fresh();
        let n = self.mode.block_rows.clone().unwrap_or_default();
        let keys = match kt.dims[2] {
            Dim::Symbol(s) if s == BLOCK_KEYS => self.mode.block_keys.clone().unwrap_or_default(),
            d => self.dim_value(d),
        };
        let (b, h, d) = (qt.dims[0], qt.dims[1], qt.dims[3]);
        let wide = Dim::Static(QUERY_ROWS);
        let qtt = TensorType::new(qt.dtype, vec![b, h, d, wide]);
        let qtt_s = tensor_ty(&qtt);
        // A tile's keys, values and scores: `BLOCK_KEYS` stands for the tile's key count inside
        // the tile loop.
        let tile_keys = Dim::Symbol(BLOCK_KEYS);
        let ktile = TensorType::new(kt.dtype, vec![b, h, tile_keys, kt.dims[3]]);
        let vtile = TensorType::new(vt.dtype, vec![b, h, tile_keys, vt.dims[3]]);
        let st = TensorType::new(lmc_abi::DType::F32, vec![b, h, tile_keys, wide]);
        let st_s = tensor_ty(&st);
        let ty_s = tensor_ty(&ty);
        // 1. the block's queries as columns, zero past its rows
        self.line(&format!("{x}_c0 = arith.constant 0 : index"));
        self.line(&format!("{x}_c1 = arith.constant 1 : index"));
        self.line(&format!("{x}_zero = arith.constant 0.0 : f32"));
        let empty = self.empty(&qtt);
        self.line(&format!(
            "{x}_qz = linalg.fill ins({x}_zero : f32) outs({empty} : {qtt_s}) -> {qtt_s}"
        ));
        let cols_t = TensorType::new(qt.dtype, vec![b, h, d, Dim::Symbol(BLOCK_ROWS)]);
        let cols_at = format!("[0, 0, 0, 0] [1, 1, {}, {n}] [1, 1, 1, 1]", dim_size(d));
        self.line(&format!(
            "{x}_qcols = tensor.extract_slice {x}_qz{cols_at} : {qtt_s} to {}",
            tensor_ty(&cols_t)
        ));
        self.line(&format!(
            "{x}_qtr = linalg.transpose ins({q} : {}) outs({x}_qcols : {}) permutation = [0, 1, 3, 2] {loc}",
            tensor_ty(&qt),
            tensor_ty(&cols_t)
        ));
        self.line(&format!(
            "{x}_qt = tensor.insert_slice {x}_qtr into {x}_qz{cols_at} : {} into {qtt_s}",
            tensor_ty(&cols_t)
        ));
        let cols: Vec<String> = (0..vectors).map(|c| format!("{x}_col{c}")).collect();
        for (c, col) in cols.iter().enumerate() {
            self.line(&format!("{col} = arith.constant {} : index", c as i64 * lanes));
        }
        self.line(&format!("{x}_ninf = arith.constant dense<0xFF800000> : {vec}"));
        self.line(&format!("{x}_vzero = arith.constant dense<0.0> : {vec}"));
        // Without a mask or score function, the scale (when positive, so that it keeps the
        // maximum) is folded into the exponentials.
        let fold_scale = mask.is_none() && score.is_none() && scale > 0.0;
        let factor = if fold_scale { scale } else { 1.0 };
        self.line(&format!("{x}_factor = arith.constant dense<{}> : {vec}", f32_literal(factor)));
        let mask_ty = format!("vector<{lanes}xi1>");
        let types = vec![vec.as_str(); vectors].join(", ");
        let names = |name: &str| (0..vectors).map(|c| format!("{x}_{name}{c}")).collect::<Vec<_>>();
        let inits = |name: &str, init: &str| names(name).iter().map(|a| format!("{a} = {init}")).collect::<Vec<_>>().join(", ");
        // The weighted values so far, queries by the value's width: zero before the first tile.
        let acc0 = self.empty(&ty);
        self.line(&format!(
            "{x}_acc0 = linalg.fill ins({x}_zero : f32) outs({acc0} : {ty_s}) -> {ty_s}"
        ));
        self.line(&format!("{x}_tile = arith.constant {KEY_TILE} : index"));
        // The loop carries each query's running maximum and sum (vectors across queries) and
        // the weighted values.
        self.line(&format!(
            "{x}_run:{} = scf.for {x}_t = {x}_c0 to {keys} step {x}_tile iter_args({}, {}, {x}_acc = {x}_acc0) -> ({types}, {types}, {ty_s}) {{",
            2 * vectors + 1,
            inits("m", &format!("{x}_ninf")),
            inits("l", &format!("{x}_vzero"))
        ));
        self.line(&format!("{x}_tleft = arith.subi {keys}, {x}_t : index"));
        self.line(&format!("{x}_tn = arith.minui {x}_tleft, {x}_tile : index"));
        let row_map = "affine_map<(d0, d1, d2, d3) -> (d2)>";
        self.within(
            |mode| mode.block_keys = Some(format!("{x}_tn")),
            |e| {
                for (name, of, t, tile) in [("kt", k, &kt, &ktile), ("vt", v_in, &vt, &vtile)] {
                    e.line(&format!(
                        "{x}_{name} = tensor.extract_slice {of}[0, 0, {x}_t, 0] [1, 1, {x}_tn, {}] [1, 1, 1, 1] : {} to {}",
                        dim_size(t.dims[3]),
                        tensor_ty(t),
                        tensor_ty(tile)
                    ));
                }
                // Index functions see the tile's keys offset by its first.
                e.line(&format!("{x}_tk0 = arith.addi {}, {x}_t : index", at[3]));
                let tile_at = [at[0].clone(), at[1].clone(), at[2].clone(), format!("{x}_tk0")];
                // 2. raw scores of the tile, keys by queries
                let scores = matmul::MatMul {
                    layout: matmul::RhsLayout::RowMajor,
                    x: ktile.clone(),
                    rhs: qtt.clone(),
                    out: st.clone(),
                    group: 1,
                    x_transposed: false,
                    bias: None,
                };
                e.emit_matmul_call(&format!("{x}_raw"), [&format!("{x}_kt"), &format!("{x}_qt")], None, &scores, loc);
                // The block's own columns of a tile's scores (not the padding columns).
                let own = TensorType::new(lmc_abi::DType::F32, vec![b, h, tile_keys, Dim::Symbol(BLOCK_ROWS)]);
                let own_cols = OwnColumns {
                    own_s: tensor_ty(&own),
                    st_s: st_s.clone(),
                    at: format!("[0, 0, 0, 0] [1, 1, {x}_tn, {n}] [1, 1, 1, 1]"),
                };
                // 3. scale, score function and mask, on the block's own columns
                let mut s = format!("{x}_raw");
                if !fold_scale {
                    s = e.map_own_columns((&format!("{x}_s"), &format!("{x}_scored")), &s, &own_cols, ("%raw", loc), |e| {
                        e.scored_element(&tile_at, scale, mask, score, (3, 2))
                    });
                }
                // 4. each query's maximum down the tile's keys, and the running maximum
                e.line(&format!(
                    "{x}_max:{vectors} = scf.for {x}_j = {x}_c0 to {x}_tn step {x}_c1 iter_args({}) -> ({types}) {{",
                    (0..vectors)
                        .map(|c| format!("{x}_macc{c} = {x}_m{c}"))
                        .collect::<Vec<_>>()
                        .join(", ")
                ));
                for (c, col) in cols.iter().enumerate() {
                    e.line(&format!(
                        "  {x}_ms{c} = vector.transfer_read {s}[{x}_c0, {x}_c0, {x}_j, {col}], {x}_zero {{in_bounds = [true]}} : {st_s}, {vec}"
                    ));
                    e.line(&format!("  {x}_mx{c} = arith.maximumf {x}_macc{c}, {x}_ms{c} : {vec}"));
                }
                e.line(&format!("  scf.yield {} : {types}", names("mx").join(", ")));
                e.line("}");
                // A query that has seen no key yet (maximum -inf) shifts by 0, so its exponentials are
                // 0, not NaN; the rescaling of what it had (nothing) is then 0 as well.
                for c in 0..vectors {
                    e.line(&format!("{x}_none{c} = arith.cmpf oeq, {x}_max#{c}, {x}_ninf : {vec}"));
                    e.line(&format!(
                        "{x}_safe{c} = arith.select {x}_none{c}, {x}_vzero, {x}_max#{c} : {mask_ty}, {vec}"
                    ));
                    e.line(&format!("{x}_shift{c} = arith.mulf {x}_safe{c}, {x}_factor : {vec}"));
                    e.line(&format!("{x}_neg{c} = arith.negf {x}_shift{c} : {vec}"));
                    // exp(factor·old max - factor·new max)
                    e.line(&format!("{x}_rd{c} = math.fma {x}_m{c}, {x}_factor, {x}_neg{c} : {vec}"));
                    for l in approx::exp_of(&format!("{x}_rd{c}"), &format!("{x}_re{c}"), &format!("{x}_rt{c}_"), Some(lanes)) {
                        e.line(&l);
                    }
                }
                // 5. probabilities exp(factor·s - factor·max) in place, and their sums
                e.line(&format!(
                    "{x}_exp:{} = scf.for {x}_j = {x}_c0 to {x}_tn step {x}_c1 iter_args({}, {x}_pacc = {s}) -> ({types}, {st_s}) {{",
                    vectors + 1,
                    inits("sacc", &format!("{x}_vzero"))
                ));
                let mut p = format!("{x}_pacc");
                for (c, col) in cols.iter().enumerate() {
                    e.line(&format!(
                        "  {x}_es{c} = vector.transfer_read {p}[{x}_c0, {x}_c0, {x}_j, {col}], {x}_zero {{in_bounds = [true]}} : {st_s}, {vec}"
                    ));
                    e.line(&format!("  {x}_ed{c} = math.fma {x}_es{c}, {x}_factor, {x}_neg{c} : {vec}"));
                    for l in approx::exp_of(&format!("{x}_ed{c}"), &format!("{x}_ee{c}"), &format!("{x}_et{c}_"), Some(lanes)) {
                        e.line(&format!("  {l}"));
                    }
                    e.line(&format!("  {x}_esum{c} = arith.addf {x}_sacc{c}, {x}_ee{c} : {vec}"));
                    e.line(&format!(
                        "  {x}_ep{c} = vector.transfer_write {x}_ee{c}, {p}[{x}_c0, {x}_c0, {x}_j, {col}] {{in_bounds = [true]}} : {vec}, {st_s}"
                    ));
                    p = format!("{x}_ep{c}");
                }
                e.line(&format!("  scf.yield {}, {p} : {types}, {st_s}", names("esum").join(", ")));
                e.line("}");
                // The running sums: the old ones rescaled, plus the tile's.
                for c in 0..vectors {
                    e.line(&format!("{x}_ln{c} = math.fma {x}_l{c}, {x}_re{c}, {x}_exp#{c} : {vec}"));
                }
                // 5b. dropout of the tile's probabilities (after their sums), on the block's own
                // columns
                let mut probs = format!("{x}_exp#{vectors}");
                if let Some(f) = dropout {
                    probs = e.map_own_columns((&format!("{x}_pd"), &format!("{x}_dropped")), &probs, &own_cols, ("%p", loc), |e| {
                        e.dropped_element(&tile_at, f, "%p", (3, 2))
                    });
                }
                // 6. the tile's weighted sum of values, the probabilities read transposed
                let values = matmul::MatMul {
                    layout: matmul::RhsLayout::RowMajor,
                    x: st.clone(),
                    rhs: vtile.clone(),
                    out: ty.clone(),
                    group: 1,
                    x_transposed: true,
                    bias: None,
                };
                e.emit_matmul_call(
                    &format!("{x}_weighted"),
                    [&probs, &format!("{x}_vt")],
                    None,
                    &values,
                    loc,
                );
                // ... added to the running weighted values rescaled, each query (row) by its factor
                let rescale = e.vectors_to_rows(&x, "re", &names("re"), &cols);
                let map4 = "affine_map<(d0, d1, d2, d3) -> (d0, d1, d2, d3)>";
                e.line(&format!(
                    "{x}_accn = linalg.generic {{indexing_maps = [{map4}, {row_map}, {map4}], iterator_types = [{}]}} ins({x}_weighted, {rescale} : {ty_s}, tensor<?xf32>) outs({x}_acc : {ty_s}) {{",
                    parallel(4)
                ));
                e.line("^bb0(%w: f32, %r: f32, %a: f32):");
                e.line("  %kept = arith.mulf %a, %r : f32");
                e.line("  %sum = arith.addf %kept, %w : f32");
                e.line("  linalg.yield %sum : f32");
                e.line(&format!("}} -> {ty_s} {loc}"));
            },
        );
        self.line(&format!(
            "scf.yield {}, {}, {x}_accn : {types}, {types}, {ty_s}",
            (0..vectors).map(|c| format!("{x}_max#{c}")).collect::<Vec<_>>().join(", "),
            names("ln").join(", ")
        ));
        self.line("}");
        // 7. normalise by the sums (of the block's own rows); a query that sees no key stays zero
        let sums: Vec<String> = (0..vectors).map(|c| format!("{x}_run#{}", vectors + c)).collect();
        let rowsums = self.vectors_to_rows(&x, "sums", &sums, &cols);
        let result = format!("{x}_result");
        self.normalise(
            &result,
            (&format!("{x}_run#{}", 2 * vectors), &ty_s),
            (&rowsums, "tensor<?xf32>", row_map),
            dest,
            loc,
        );
        result
    }

    /// Per-query values held as vectors across the block's queries (vector `c` at query
    /// `cols[c]`), written out as a `tensor<?xf32>` of the block's own rows (`{x}_{name}` and
    /// temporaries after it). Returns its name.
    pub(super) fn vectors_to_rows(&mut self, x: &str, name: &str, vectors: &[String], cols: &[String]) -> String {
        let lanes = self.target.lanes;
        let vec = format!("vector<{lanes}xf32>");
        let n = self.mode.block_rows.clone().unwrap_or_default();
        let all_ty = format!("tensor<{QUERY_ROWS}xf32>");
        self.line(&format!("{x}_{name}_0 = tensor.empty() : {all_ty}"));
        let mut t = format!("{x}_{name}_0");
        for (c, (v, col)) in vectors.iter().zip(cols).enumerate() {
            self.line(&format!(
                "{x}_{name}_{} = vector.transfer_write {v}, {t}[{col}] {{in_bounds = [true]}} : {vec}, {all_ty}",
                c + 1
            ));
            t = format!("{x}_{name}_{}", c + 1);
        }
        self.line(&format!(
            "{x}_{name} = tensor.extract_slice {t}[0] [{n}] [1] : {all_ty} to tensor<?xf32>"
        ));
        format!("{x}_{name}")
    }

    /// `tensor` (a tile's scores or probabilities, keys by queries) with each element of the
    /// block's own columns replaced by what `element` emits from it (named `arg` in the
    /// generic's body, whose result is `mapped`); the padding columns are left as they are.
    /// Returns `name`, the whole tile's result.
    fn map_own_columns(
        &mut self,
        (name, mapped): (&str, &str),
        tensor: &str,
        cols: &OwnColumns,
        (arg, loc): (&str, &str),
        element: impl FnOnce(&mut Self) -> String,
    ) -> String {
        let OwnColumns { own_s, st_s, at } = cols;
        let map4 = "affine_map<(d0, d1, d2, d3) -> (d0, d1, d2, d3)>";
        self.line(&format!("{mapped}_own = tensor.extract_slice {tensor}{at} : {st_s} to {own_s}"));
        self.line(&format!(
            "{mapped} = linalg.generic {{indexing_maps = [{map4}], iterator_types = [{}]}} outs({mapped}_own : {own_s}) {{",
            parallel(4)
        ));
        self.line(&format!("^bb0({arg}: f32):"));
        let value = element(self);
        self.line(&format!("  linalg.yield {value} : f32"));
        self.line(&format!("}} -> {own_s} {loc}"));
        self.line(&format!(
            "{name} = tensor.insert_slice {mapped} into {tensor}{at} : {own_s} into {st_s}"
        ));
        name.to_string()
    }

    /// Inside an attention's scores generic (its element `%raw`): the scaled score, through
    /// the score function, `-inf` where the mask hides it. `(row, key)` are the generic's
    /// dimensions of the block's query rows and keys, which index functions see offset by the
    /// block's first row and key (`at`). Returns the value's SSA name.
    pub(super) fn scored_element(
        &mut self,
        at: &[String; 4],
        scale: f64,
        mask: Option<&ScalarFn>,
        score: Option<&ScalarFn>,
        (row, key): (usize, usize),
    ) -> String {
        self.line(&format!("  %scale = arith.constant {} : f32", f32_literal(scale)));
        self.line("  %s0 = arith.mulf %raw, %scale : f32");
        let idx = if mask.is_some() || score.is_some() {
            self.element_indices(at, (row, key))
        } else {
            Vec::new()
        };
        let mut current = "%s0".to_string();
        if let Some(f) = score {
            let mut args = vec![current.clone()];
            args.extend(idx.iter().cloned());
            current = self.emit_scalar_fn(f, &args, "%sc");
        }
        if let Some(f) = mask {
            let keep = self.emit_scalar_fn(f, &idx, "%mk");
            self.line("  %neginf = arith.constant 0xFF800000 : f32");
            self.line(&format!("  %masked = arith.select {keep}, {current}, %neginf : f32"));
            current = "%masked".into();
        }
        current
    }

    /// Inside a generic over an attention's probabilities (its element `p`): `p` times the
    /// dropout factor `f` of its batch, head, row and key (`(row, key)` and `at` as in
    /// [`Emitter::scored_element`]). Returns the value's SSA name.
    pub(super) fn dropped_element(&mut self, at: &[String; 4], f: &ScalarFn, p: &str, (row, key): (usize, usize)) -> String {
        let idx = self.element_indices(at, (row, key));
        let factor = self.emit_scalar_fn(f, &idx, "%dr");
        self.line(&format!("  %kept = arith.mulf {p}, {factor} : f32"));
        "%kept".into()
    }

    /// Inside a generic over an attention's scores or probabilities: the element's batch, head,
    /// query row and key as `i64` (`%i0` .. `%i3`), for its index functions.
    fn element_indices(&mut self, at: &[String; 4], (row, key): (usize, usize)) -> Vec<String> {
        let whole = at.iter().all(String::is_empty);
        if whole {
            // The whole attention: the loop nest's own batch, head, row and key.
            for (k, name) in ["%bat", "%head", "%row", "%key"].iter().enumerate() {
                self.line(&format!("  {name} = linalg.index {} : index", [0, 1, row, key][k]));
            }
        } else {
            // The block's batch and head, its first row plus the row, its first key plus the key.
            self.line(&format!("  %ixr = linalg.index {row} : index"));
            self.line(&format!("  %row = arith.addi {}, %ixr : index", at[2]));
            self.line(&format!("  %ixk = linalg.index {key} : index"));
            self.line(&format!("  %key = arith.addi {}, %ixk : index", at[3]));
        }
        let (bat, head) = if whole {
            ("%bat", "%head")
        } else {
            (at[0].as_str(), at[1].as_str())
        };
        [bat, head, "%row", "%key"]
            .iter()
            .enumerate()
            .map(|(k, index)| {
                self.line(&format!("  %i{k} = arith.index_cast {index} : index to i64"));
                format!("%i{k}")
            })
            .collect()
    }

    /// `result = weighted / sums` into `dest` (`[1, 1, rows, ·]`), the sums read through
    /// `sums_map`; a row whose sum is 0 (it saw no key) stays zero.
    pub(super) fn normalise(
        &mut self,
        result: &str,
        (weighted, out_t): (&str, &str),
        (sums, sums_t, sums_map): (&str, &str, &str),
        dest: &str,
        loc: &str,
    ) {
        let map4 = "affine_map<(d0, d1, d2, d3) -> (d0, d1, d2, d3)>";
        self.line(&format!(
            "{result} = linalg.generic {{indexing_maps = [{map4}, {sums_map}, {map4}], iterator_types = [{}]}} ins({weighted}, {sums} : {out_t}, {sums_t}) outs({dest} : {out_t}) {{",
            parallel(4)
        ));
        self.line("^bb0(%w: f32, %z: f32, %o: f32):");
        self.line("  %zero = arith.constant 0.0 : f32");
        self.line("  %none = arith.cmpf oeq, %z, %zero : f32");
        self.line("  %q = arith.divf %w, %z : f32");
        self.line("  %r = arith.select %none, %zero, %q : f32");
        self.line("  linalg.yield %r : f32");
        self.line(&format!("}} -> {out_t} {loc}"));
    }
}
