//! Attention's backward pass from its row statistics, as flash attention computes it:
//! `attention_lse` (each query's log-sum-exp) and `attention_grad` (the gradient of the query,
//! key or value). Every score is recomputed from `q` and `k` where it is needed, its
//! probability from the row's `lse`; no `[batch, heads, queries, keys]` tensor exists.
//!
//! Each is an `scf.forall` over batch, heads (key heads for the key's and value's gradients)
//! and blocks of [`QUERY_ROWS`] result rows; a row is one loop over the keys (a query's row)
//! or over the queries of every head of the key's group (a key's row), whose dot products and
//! updates of the row are vectors of the target's width. Every thread writes only its own rows,
//! so no sum is shared between threads.

use super::*;
use lmc_core::ir::{AttentionGrad, AttentionInput};

/// What a backward attention op computes: `lse`, or one operand's gradient from what it reads.
#[derive(Clone, Copy, PartialEq)]
enum Computes {
    Lse,
    Grad(Gradient),
}

/// What `attention_grad` reads beside the forward's operands, and which gradient it computes.
#[derive(Clone, Copy, PartialEq)]
struct Gradient {
    wrt: AttentionInput,
    v: ValueId,
    lse: ValueId,
    delta: ValueId,
    dout: ValueId,
}

/// The operands and functions of a backward attention op, as its loops read them.
#[derive(Clone, Copy)]
struct Backward<'g> {
    computes: Computes,
    q: ValueId,
    k: ValueId,
    scale: f64,
    mask: Option<&'g ScalarFn>,
    score: Option<&'g ScalarFn>,
    dscore: Option<&'g ScalarFn>,
    /// The forward's dropout factor of each probability.
    dropout: Option<&'g ScalarFn>,
}

/// Where one result row is computed: the SSA names of its batch, head (a key head for a key's
/// or value's gradient) and row indices, and, for a gradient, what its sums start from and its
/// type: the row's slice of the result (`[width]`, zero-filled) on a CPU; on a GPU, whose
/// threads compute one element each, `0.0` and the element's index along the row, `element`.
struct Row {
    b: String,
    head: String,
    row: String,
    dest: Option<(String, String)>,
    element: Option<String>,
}

impl Emitter<'_> {
    pub(super) fn emit_attention_lse(
        &mut self,
        id: ValueId,
        [q, k]: [ValueId; 2],
        scale: f64,
        (mask, score): (Option<&ScalarFn>, Option<&ScalarFn>),
        loc: &str,
    ) {
        let op = Backward {
            computes: Computes::Lse,
            q,
            k,
            scale,
            mask,
            score,
            dscore: None,
            dropout: None,
        };
        self.emit_backward(id, &op, loc);
    }

    pub(super) fn emit_attention_grad(&mut self, id: ValueId, a: &AttentionGrad, loc: &str) {
        let op = Backward {
            computes: Computes::Grad(Gradient {
                wrt: a.wrt,
                v: a.v,
                lse: a.lse,
                delta: a.delta,
                dout: a.dout,
            }),
            q: a.q,
            k: a.k,
            scale: a.scale,
            mask: a.mask.as_ref(),
            score: a.score.as_ref(),
            dscore: a.dscore.as_ref(),
            dropout: a.dropout.as_ref(),
        };
        self.emit_backward(id, &op, loc);
    }

    /// The result, `[B, heads, rows]` or `[B, heads, rows, width]`, as an `scf.forall` over
    /// batch, heads and blocks of [`QUERY_ROWS`] rows; each block's rows are computed one
    /// after another into the block's slice of the result.
    fn emit_backward(&mut self, id: ValueId, op: &Backward<'_>, loc: &str) {
        if self.target.is_gpu() {
            return self.emit_backward_loops(id, op, loc);
        }
        let ty = self.g.ty(id).clone();
        let p = self.fresh();
        let batch = self.dim_value(ty.dims[0]);
        let heads = self.dim_value(ty.dims[1]);
        let rows = self.dim_value(ty.dims[2]);
        self.line(&format!("{p}_bs = arith.constant {QUERY_ROWS} : index"));
        self.line(&format!("{p}_blocks = arith.ceildivui {rows}, {p}_bs : index"));
        let dest = self.empty(&ty);
        let out_t = tensor_ty(&ty);
        self.line(&format!(
            "{} = scf.forall ({p}_b, {p}_h, {p}_q) in ({batch}, {heads}, {p}_blocks) shared_outs({p}_out = {dest}) -> ({out_t}) {{",
            v(id)
        ));
        self.nested(|e| {
            e.line(&format!("{p}_c0 = arith.constant 0 : index"));
            e.line(&format!("{p}_c1 = arith.constant 1 : index"));
            e.line(&format!("{p}_i0 = arith.muli {p}_q, {p}_bs : index"));
            e.line(&format!("{p}_left = arith.subi {rows}, {p}_i0 : index"));
            e.line(&format!("{p}_n = arith.minui {p}_left, {p}_bs : index"));
            let width = ty.dims.get(3).copied();
            let (block_t, row_t, at) = match width {
                Some(w) => (
                    format!("tensor<?x{}>", shape_str(&TensorType::new(DType::F32, vec![w]))),
                    Some(tensor_ty(&TensorType::new(DType::F32, vec![w]))),
                    format!("[{p}_b, {p}_h, {p}_i0, 0] [1, 1, {p}_n, {}] [1, 1, 1, 1]", dim_size(w)),
                ),
                None => (
                    "tensor<?xf32>".to_string(),
                    None,
                    format!("[{p}_b, {p}_h, {p}_i0] [1, 1, {p}_n] [1, 1, 1]"),
                ),
            };
            e.line(&format!("{p}_blk = tensor.extract_slice {p}_out{at} : {out_t} to {block_t}"));
            e.line(&format!(
                "{p}_done = scf.for {p}_r = {p}_c0 to {p}_n step {p}_c1 iter_args({p}_acc = {p}_blk) -> ({block_t}) {{"
            ));
            e.nested(|e| {
                e.line(&format!("{p}_row = arith.addi {p}_i0, {p}_r : index"));
                let row_at = width.map(|w| format!("[{p}_r, 0] [1, {}] [1, 1]", dim_size(w)));
                let dest = match (&row_t, &row_at) {
                    (Some(row_t), Some(row_at)) => {
                        e.line(&format!("{p}_dst = tensor.extract_slice {p}_acc{row_at} : {block_t} to {row_t}"));
                        e.line(&format!("{p}_zero = arith.constant 0.0 : f32"));
                        e.line(&format!(
                            "{p}_clear = linalg.fill ins({p}_zero : f32) outs({p}_dst : {row_t}) -> {row_t}"
                        ));
                        Some((format!("{p}_clear"), row_t.clone()))
                    }
                    _ => None,
                };
                let row = Row {
                    b: format!("{p}_b"),
                    head: format!("{p}_h"),
                    row: format!("{p}_row"),
                    dest,
                    element: None,
                };
                let value = e.row_value(op, &row);
                match (&row_t, &row_at) {
                    (Some(row_t), Some(row_at)) => e.line(&format!(
                        "{p}_put = tensor.insert_slice {value} into {p}_acc{row_at} : {row_t} into {block_t}"
                    )),
                    _ => e.line(&format!("{p}_put = tensor.insert {value} into {p}_acc[{p}_r] : {block_t}")),
                }
                e.line(&format!("scf.yield {p}_put : {block_t}"));
            });
            e.line("}");
            e.line("scf.forall.in_parallel {");
            e.line(&format!(
                "  tensor.parallel_insert_slice {p}_done into {p}_out{at} : {block_t} into {out_t}"
            ));
            e.line("}");
        });
        self.line(&format!("}} {loc}"));
    }

    /// For a GPU: one loop nest over the result's elements, a thread each, whose body is a
    /// row's computation (on a CPU, [`Emitter::emit_backward`]) for its one element: the sums
    /// over keys or queries are loops inside the thread, in scalars.
    fn emit_backward_loops(&mut self, id: ValueId, op: &Backward<'_>, loc: &str) {
        let ty = self.g.ty(id).clone();
        let (rank, out_t) = (ty.rank(), tensor_ty(&ty));
        let e = self.empty(&ty);
        let map = format!("affine_map<{} -> {}>", dims_list(rank), dims_list(rank));
        self.line(&format!(
            "{} = linalg.generic {{indexing_maps = [{map}], iterator_types = [{}]}} outs({e} : {out_t}) {{",
            v(id),
            parallel(rank)
        ));
        self.line("^bb0(%o: f32):");
        let p = self.fresh();
        let value = self.nested(|e| {
            let names = ["b", "h", "row", "el"];
            for (k, name) in names.iter().take(rank).enumerate() {
                e.line(&format!("{p}_{name} = linalg.index {k} : index"));
            }
            e.line(&format!("{p}_zero = arith.constant 0.0 : f32"));
            let gradient = rank == 4;
            let row = Row {
                b: format!("{p}_b"),
                head: format!("{p}_h"),
                row: format!("{p}_row"),
                dest: gradient.then(|| (format!("{p}_zero"), "f32".to_string())),
                element: gradient.then(|| format!("{p}_el")),
            };
            e.row_value(op, &row)
        });
        self.line(&format!("  linalg.yield {value} : f32"));
        self.line(&format!("}} -> {out_t} {loc}"));
    }

    /// One row of the result (a CPU's) or one element of it (a GPU's).
    /// A row has a destination exactly when the result has a width: a gradient's
    /// (`[B, heads, rows, width]`, by the IR's typing rules), never `lse`'s.
    fn row_value(&mut self, op: &Backward<'_>, row: &Row) -> String {
        match (op.computes, &row.dest) {
            (Computes::Grad(g), Some(dest)) if g.wrt == AttentionInput::Query => self.query_grad_row(op, &g, row, dest),
            (Computes::Grad(g), Some(dest)) if g.wrt == AttentionInput::Score => self.score_grad_row(op, &g, row, dest),
            (Computes::Grad(g), Some(dest)) => self.key_grad_row(op, &g, row, dest),
            _ => self.lse_row(op, row),
        }
    }

    /// Emits `emit` one level of indentation deeper (the body of a loop or branch).
    fn nested<T>(&mut self, emit: impl FnOnce(&mut Self) -> T) -> T {
        self.within(|mode| mode.indent += 1, emit)
    }

    /// The key head that query head `head` reads (grouped-query attention: `H / G` query heads
    /// per key head).
    fn group_size(&mut self, op: &Backward<'_>) -> String {
        let (qt, kt) = (self.g.ty(op.q).clone(), self.g.ty(op.k).clone());
        let (heads, key_heads) = (self.dim_value(qt.dims[1]), self.dim_value(kt.dims[1]));
        let group = self.fresh();
        self.line(&format!("{group} = arith.divui {heads}, {key_heads} : index"));
        group
    }

    /// Query row `i` of head `h`: `log Σ_j exp(s[i, j])` over the keys the mask keeps (0 when
    /// it keeps none), with a running maximum (each new maximum rescales the sum so far).
    fn lse_row(&mut self, op: &Backward<'_>, row: &Row) -> String {
        let x = self.fresh();
        let group = self.group_size(op);
        self.line(&format!("{x}_kh = arith.divui {}, {group} : index", row.head));
        let keys = self.dim_value(self.g.ty(op.k).dims[2]);
        self.constants(&x, op);
        self.line(&format!(
            "{x}_run:2 = scf.for {x}_j = {x}_c0 to {keys} step {x}_c1 iter_args({x}_m = {x}_ninf, {x}_l = {x}_zero) -> (f32, f32) {{"
        ));
        let pair = [row.b.clone(), row.head.clone(), row.row.clone(), format!("{x}_j")];
        let key_head = format!("{x}_kh");
        self.nested(|e| {
            let carried = [format!("{x}_m"), format!("{x}_l")];
            let next = e.where_kept(op, &pair, &carried, &["f32", "f32"], |e, idx| {
                let (_, s) = e.pair_score(op, &pair, &key_head, idx);
                let y = e.fresh();
                e.line(&format!("{y}_mn = arith.maximumf {x}_m, {s} : f32"));
                // A maximum still -inf (only -inf scores so far) shifts by 0: the terms are 0, not NaN.
                e.line(&format!("{y}_none = arith.cmpf oeq, {y}_mn, {x}_ninf : f32"));
                e.line(&format!("{y}_safe = arith.select {y}_none, {x}_zero, {y}_mn : f32"));
                e.line(&format!("{y}_d0 = arith.subf {x}_m, {y}_safe : f32"));
                e.line(&format!("{y}_d1 = arith.subf {s}, {y}_safe : f32"));
                e.exp(&format!("{y}_d0"), &format!("{y}_e0"));
                e.exp(&format!("{y}_d1"), &format!("{y}_e1"));
                e.line(&format!("{y}_kept = arith.mulf {x}_l, {y}_e0 : f32"));
                e.line(&format!("{y}_ln = arith.addf {y}_kept, {y}_e1 : f32"));
                vec![format!("{y}_mn"), format!("{y}_ln")]
            });
            e.line(&format!("scf.yield {} : f32, f32", next.join(", ")));
        });
        self.line("}");
        self.line(&format!("{x}_none = arith.cmpf oeq, {x}_run#0, {x}_ninf : f32"));
        self.line(&format!("{x}_log = math.log {x}_run#1 : f32"));
        self.line(&format!("{x}_sum = arith.addf {x}_run#0, {x}_log : f32"));
        self.line(&format!("{x}_lse = arith.select {x}_none, {x}_zero, {x}_sum : f32"));
        format!("{x}_lse")
    }

    /// Query row `i` of head `h` of `dq`: `scale Σ_j ds[i, j] k_j` over the keys the mask keeps.
    fn query_grad_row(&mut self, op: &Backward<'_>, g: &Gradient, row: &Row, (dest, row_t): &(String, String)) -> String {
        let x = self.fresh();
        let group = self.group_size(op);
        self.line(&format!("{x}_kh = arith.divui {}, {group} : index", row.head));
        let keys = self.dim_value(self.g.ty(op.k).dims[2]);
        self.constants(&x, op);
        let query = [row.b.clone(), row.head.clone(), row.row.clone()];
        let (lse, delta) = (self.row_statistic(g.lse, &query), self.row_statistic(g.delta, &query));
        self.line(&format!(
            "{x}_run = scf.for {x}_j = {x}_c0 to {keys} step {x}_c1 iter_args({x}_acc = {dest}) -> ({row_t}) {{"
        ));
        let pair = [row.b.clone(), row.head.clone(), row.row.clone(), format!("{x}_j")];
        let key_head = format!("{x}_kh");
        self.nested(|e| {
            let next = e.where_kept(op, &pair, &[format!("{x}_acc")], &[row_t], |e, idx| {
                let ds = e.score_gradient(op, g, &pair, &key_head, idx, (&lse, &delta));
                let c = e.fresh();
                e.line(&format!("{c} = arith.mulf {ds}, {x}_scale : f32"));
                let key = [pair[0].clone(), key_head.clone(), pair[3].clone()];
                vec![e.row_axpy((&format!("{x}_acc"), row_t), &c, (op.k, &key), row.element.as_deref())]
            });
            e.line(&format!("scf.yield {} : {row_t}", next[0]));
        });
        self.line("}");
        format!("{x}_run")
    }

    /// Query row `i` of head `h` of the scores' gradient: `dz[i, j]` for each key j (0 where
    /// the mask hides it; the row starts zeroed), or on a GPU its one element j.
    fn score_grad_row(&mut self, op: &Backward<'_>, g: &Gradient, row: &Row, (dest, row_t): &(String, String)) -> String {
        // The gradient of the score function's result: `dscore` is not applied.
        let op = &Backward { dscore: None, ..*op };
        let x = self.fresh();
        let group = self.group_size(op);
        self.line(&format!("{x}_kh = arith.divui {}, {group} : index", row.head));
        self.constants(&x, op);
        let query = [row.b.clone(), row.head.clone(), row.row.clone()];
        let (lse, delta) = (self.row_statistic(g.lse, &query), self.row_statistic(g.delta, &query));
        let key_head = format!("{x}_kh");
        if let Some(j) = &row.element {
            let pair = [row.b.clone(), row.head.clone(), row.row.clone(), j.clone()];
            let next = self.where_kept(op, &pair, std::slice::from_ref(dest), &[row_t], |e, idx| {
                vec![e.score_gradient(op, g, &pair, &key_head, idx, (&lse, &delta))]
            });
            return next[0].clone();
        }
        let keys = self.dim_value(self.g.ty(op.k).dims[2]);
        self.line(&format!(
            "{x}_run = scf.for {x}_j = {x}_c0 to {keys} step {x}_c1 iter_args({x}_acc = {dest}) -> ({row_t}) {{"
        ));
        let pair = [row.b.clone(), row.head.clone(), row.row.clone(), format!("{x}_j")];
        self.nested(|e| {
            let next = e.where_kept(op, &pair, &[format!("{x}_acc")], &[row_t], |e, idx| {
                let dz = e.score_gradient(op, g, &pair, &key_head, idx, (&lse, &delta));
                let y = e.fresh();
                e.line(&format!("{y} = tensor.insert {dz} into {x}_acc[{x}_j] : {row_t}"));
                vec![y]
            });
            e.line(&format!("scf.yield {} : {row_t}", next[0]));
        });
        self.line("}");
        format!("{x}_run")
    }

    /// Key row `j` of key head `g` of `dk` (`scale Σ_h Σ_i ds[i, j] q_i`) or `dv`
    /// (`Σ_h Σ_i p[i, j] dout_i`), over the query heads of the group and their queries.
    fn key_grad_row(&mut self, op: &Backward<'_>, g: &Gradient, row: &Row, (dest, row_t): &(String, String)) -> String {
        let wrt_key = g.wrt == AttentionInput::Key;
        let x = self.fresh();
        let group = self.group_size(op);
        self.line(&format!("{x}_h0 = arith.muli {}, {group} : index", row.head));
        let queries = self.dim_value(self.g.ty(op.q).dims[2]);
        self.constants(&x, op);
        self.line(&format!(
            "{x}_heads = scf.for {x}_hh = {x}_c0 to {group} step {x}_c1 iter_args({x}_hacc = {dest}) -> ({row_t}) {{"
        ));
        self.nested(|e| {
            e.line(&format!("{x}_h = arith.addi {x}_h0, {x}_hh : index"));
            e.line(&format!(
                "{x}_run = scf.for {x}_i = {x}_c0 to {queries} step {x}_c1 iter_args({x}_acc = {x}_hacc) -> ({row_t}) {{"
            ));
            let pair = [row.b.clone(), format!("{x}_h"), format!("{x}_i"), row.row.clone()];
            let key_head = row.head.clone();
            e.nested(|e| {
                let next = e.where_kept(op, &pair, &[format!("{x}_acc")], &[row_t], |e, idx| {
                    let query = [pair[0].clone(), pair[1].clone(), pair[2].clone()];
                    let acc = (format!("{x}_acc"), row_t.clone());
                    let lse = e.row_statistic(g.lse, &query);
                    if wrt_key {
                        let delta = e.row_statistic(g.delta, &query);
                        let ds = e.score_gradient(op, g, &pair, &key_head, idx, (&lse, &delta));
                        let c = e.fresh();
                        e.line(&format!("{c} = arith.mulf {ds}, {x}_scale : f32"));
                        vec![e.row_axpy((&acc.0, &acc.1), &c, (op.q, &query), row.element.as_deref())]
                    } else {
                        let (_, s) = e.pair_score(op, &pair, &key_head, idx);
                        let prob = e.probability(&s, &lse);
                        let prob = e.dropped(op, prob, idx);
                        vec![e.row_axpy((&acc.0, &acc.1), &prob, (g.dout, &query), row.element.as_deref())]
                    }
                });
                e.line(&format!("scf.yield {} : {row_t}", next[0]));
            });
            e.line("}");
            e.line(&format!("scf.yield {x}_run : {row_t}"));
        });
        self.line("}");
        format!("{x}_heads")
    }

    /// The constants of a row's loops, `{x}_c0`, `{x}_c1`, `{x}_zero`, `{x}_ninf` and the
    /// op's scale, `{x}_scale`.
    fn constants(&mut self, x: &str, op: &Backward<'_>) {
        self.line(&format!("{x}_c0 = arith.constant 0 : index"));
        self.line(&format!("{x}_c1 = arith.constant 1 : index"));
        self.line(&format!("{x}_zero = arith.constant 0.0 : f32"));
        self.line(&format!("{x}_ninf = arith.constant 0xFF800000 : f32"));
        self.line(&format!("{x}_scale = arith.constant {} : f32", f32_literal(op.scale)));
    }

    /// `ds[i, j] = p (w · dout_i · v_j − delta_i) · dscore(s, b, h, i, j)` of a pair the mask
    /// keeps, `w` the pair's dropout factor (1 without dropout).
    fn score_gradient(
        &mut self,
        op: &Backward<'_>,
        g: &Gradient,
        pair: &[String; 4],
        key_head: &str,
        idx: &[String],
        (lse, delta): (&str, &str),
    ) -> String {
        let (s0, s) = self.pair_score(op, pair, key_head, idx);
        let prob = self.probability(&s, lse);
        let (dout, v_id) = (g.dout, g.v);
        let query = [pair[0].clone(), pair[1].clone(), pair[2].clone()];
        let key = [pair[0].clone(), key_head.to_string(), pair[3].clone()];
        let dp = self.row_dot((dout, &query), (v_id, &key));
        let dp = self.dropped(op, dp, idx);
        let y = self.fresh();
        self.line(&format!("{y}_c = arith.subf {dp}, {delta} : f32"));
        self.line(&format!("{y}_ds = arith.mulf {prob}, {y}_c : f32"));
        let Some(f) = op.dscore else {
            return format!("{y}_ds");
        };
        let mut args = vec![s0];
        args.extend(idx.iter().cloned());
        let slope = self.emit_scalar_fn(f, &args, &format!("{y}_dsc"));
        self.line(&format!("{y}_dss = arith.mulf {y}_ds, {slope} : f32"));
        format!("{y}_dss")
    }

    /// `x` times the dropout factor of the pair at `idx`, or `x` without dropout.
    fn dropped(&mut self, op: &Backward<'_>, x: String, idx: &[String]) -> String {
        let Some(f) = op.dropout else {
            return x;
        };
        let y = self.fresh();
        let factor = self.emit_scalar_fn(f, idx, &format!("{y}_dr"));
        self.line(&format!("{y} = arith.mulf {x}, {factor} : f32"));
        y
    }

    /// `exp(s − lse)`.
    fn probability(&mut self, s: &str, lse: &str) -> String {
        let y = self.fresh();
        self.line(&format!("{y}_d = arith.subf {s}, {lse} : f32"));
        self.exp(&format!("{y}_d"), &format!("{y}_p"));
        format!("{y}_p")
    }

    /// `res = exp(x)` (the arithmetic of [`approx`], as the forward attention's).
    fn exp(&mut self, x: &str, res: &str) {
        for l in approx::exp(x, res, &format!("{res}_")) {
            self.line(&l);
        }
    }

    /// Element `[b, h, i]` of a row statistic (`lse`, `delta`).
    fn row_statistic(&mut self, of: ValueId, [b, h, i]: &[String; 3]) -> String {
        let t = self.fresh();
        self.line(&format!(
            "{t} = tensor.extract {}[{b}, {h}, {i}] : {}",
            self.name(of),
            tensor_ty(self.g.ty(of))
        ));
        t
    }

    /// Emits `body` only for a pair `(b, h, i, j)` the mask keeps (always, without a mask): an
    /// `scf.if` that yields what `body` returns, and `carried` (of `types`) where the mask
    /// hides the key. `body` gets the pair's indices as `i64` (empty without index functions).
    /// Returns the values.
    fn where_kept(
        &mut self,
        op: &Backward<'_>,
        pair: &[String; 4],
        carried: &[String],
        types: &[&str],
        body: impl FnOnce(&mut Self, &[String]) -> Vec<String>,
    ) -> Vec<String> {
        let mut idx = Vec::new();
        if op.mask.is_some() || op.score.is_some() || op.dscore.is_some() || op.dropout.is_some() {
            let y = self.fresh();
            for (k, index) in pair.iter().enumerate() {
                self.line(&format!("{y}_i{k} = arith.index_cast {index} : index to i64"));
                idx.push(format!("{y}_i{k}"));
            }
        }
        let Some(mask) = op.mask else {
            return body(self, &idx);
        };
        let y = self.fresh();
        let keep = self.emit_scalar_fn(mask, &idx, &format!("{y}_mk"));
        let types = types.join(", ");
        let result = if carried.len() == 1 {
            format!("{y}_if")
        } else {
            format!("{y}_if:{}", carried.len())
        };
        self.line(&format!("{result} = scf.if {keep} -> ({types}) {{"));
        let values = self.nested(|e| body(e, &idx));
        self.line(&format!("  scf.yield {} : {types}", values.join(", ")));
        self.line("} else {");
        self.line(&format!("  scf.yield {} : {types}", carried.join(", ")));
        self.line("}");
        if carried.len() == 1 {
            vec![format!("{y}_if")]
        } else {
            (0..carried.len()).map(|k| format!("{y}_if#{k}")).collect()
        }
    }

    /// The score of query `(b, h, i)` against key `j` of `key_head`: `s0 = scale · q_i·k_j`,
    /// then through the score function as the forward attention applies it (`scored_element`).
    /// Returns `(s0, s)`.
    fn pair_score(&mut self, op: &Backward<'_>, pair: &[String; 4], key_head: &str, idx: &[String]) -> (String, String) {
        let query = [pair[0].clone(), pair[1].clone(), pair[2].clone()];
        let key = [pair[0].clone(), key_head.to_string(), pair[3].clone()];
        let raw = self.row_dot((op.q, &query), (op.k, &key));
        let y = self.fresh();
        self.line(&format!("{y}_scale = arith.constant {} : f32", f32_literal(op.scale)));
        self.line(&format!("{y}_s0 = arith.mulf {raw}, {y}_scale : f32"));
        let s0 = format!("{y}_s0");
        let Some(f) = op.score else {
            return (s0.clone(), s0);
        };
        let mut args = vec![s0.clone()];
        args.extend(idx.iter().cloned());
        let s = self.emit_scalar_fn(f, &args, &format!("{y}_sc"));
        (s0, s)
    }

    /// How the last axis of a rank-4 value is walked a vector at a time: the vector type,
    /// where its whole vectors end, and whether one masked vector is left after them.
    fn row_vectors(&mut self, t: &TensorType, y: &str) -> (String, String, bool) {
        let lanes = self.target.lanes;
        let vec = format!("vector<{lanes}xf32>");
        self.line(&format!("{y}_lanes = arith.constant {lanes} : index"));
        match t.dims[3] {
            Dim::Static(n) => {
                self.line(&format!("{y}_full = arith.constant {} : index", n - n % lanes));
                (vec, format!("{y}_full"), n % lanes != 0)
            }
            Dim::Symbol(s) => {
                self.line(&format!("{y}_rem = arith.remui %sym{}, {y}_lanes : index", s.0));
                self.line(&format!("{y}_full = arith.subi %sym{}, {y}_rem : index", s.0));
                (vec, format!("{y}_full"), true)
            }
        }
    }

    /// `a[a0, a1, a2, :] · b[b0, b1, b2, :]`, a vector at a time. Returns the f32's name.
    fn row_dot(&mut self, (a, a_at): (ValueId, &[String; 3]), (b, b_at): (ValueId, &[String; 3])) -> String {
        let y = self.fresh();
        let (at, bt) = (self.g.ty(a).clone(), self.g.ty(b).clone());
        let (a, b) = (self.name(a), self.name(b));
        let (a_ty, b_ty) = (tensor_ty(&at), tensor_ty(&bt));
        self.line(&format!("{y}_c0 = arith.constant 0 : index"));
        if self.target.is_gpu() {
            // A thread's dot product, in scalars.
            let len = self.dim_value(at.dims[3]);
            self.line(&format!("{y}_c1 = arith.constant 1 : index"));
            self.line(&format!("{y}_zero = arith.constant 0.0 : f32"));
            self.line(&format!(
                "{y}_dot = scf.for {y}_d = {y}_c0 to {len} step {y}_c1 iter_args({y}_acc = {y}_zero) -> (f32) {{"
            ));
            self.line(&format!(
                "  {y}_a = tensor.extract {a}[{}, {}, {}, {y}_d] : {a_ty}",
                a_at[0], a_at[1], a_at[2]
            ));
            self.line(&format!(
                "  {y}_b = tensor.extract {b}[{}, {}, {}, {y}_d] : {b_ty}",
                b_at[0], b_at[1], b_at[2]
            ));
            self.line(&format!("  {y}_p = arith.mulf {y}_a, {y}_b : f32"));
            self.line(&format!("  {y}_s = arith.addf {y}_acc, {y}_p : f32"));
            self.line(&format!("  scf.yield {y}_s : f32"));
            self.line("}");
            return format!("{y}_dot");
        }
        let (vec, full, tail) = self.row_vectors(&at, &y);
        self.line(&format!("{y}_pad = arith.constant 0.0 : f32"));
        self.line(&format!("{y}_vz = arith.constant dense<0.0> : {vec}"));
        let read = |e: &mut Self, name: &str, of: &str, ty: &str, at: &[String; 3], d: &str, in_bounds: bool| {
            e.line(&format!(
                "{name} = vector.transfer_read {of}[{}, {}, {}, {d}], {y}_pad {{in_bounds = [{in_bounds}]}} : {ty}, {vec}",
                at[0], at[1], at[2]
            ));
        };
        self.line(&format!(
            "{y}_vs = scf.for {y}_d = {y}_c0 to {full} step {y}_lanes iter_args({y}_va = {y}_vz) -> ({vec}) {{"
        ));
        read(self, &format!("  {y}_a"), &a, &a_ty, a_at, &format!("{y}_d"), true);
        read(self, &format!("  {y}_b"), &b, &b_ty, b_at, &format!("{y}_d"), true);
        self.line(&format!("  {y}_f = vector.fma {y}_a, {y}_b, {y}_va : {vec}"));
        self.line(&format!("  scf.yield {y}_f : {vec}"));
        self.line("}");
        let mut sum = format!("{y}_vs");
        if tail {
            read(self, &format!("{y}_ta"), &a, &a_ty, a_at, &full, false);
            read(self, &format!("{y}_tb"), &b, &b_ty, b_at, &full, false);
            self.line(&format!("{y}_tf = vector.fma {y}_ta, {y}_tb, {y}_vs : {vec}"));
            sum = format!("{y}_tf");
        }
        self.line(&format!("{y}_dot = vector.reduction <add>, {sum} : {vec} into f32"));
        format!("{y}_dot")
    }

    /// `acc + c · x[x0, x1, x2, :]` for a row `acc` (of type `acc_t`), a vector at a time; or,
    /// given an `element` of the row, for that element alone (`acc` an `f32`). Returns the
    /// updated row's (or element's) name.
    fn row_axpy(&mut self, (acc, acc_t): (&str, &str), c: &str, (x, x_at): (ValueId, &[String; 3]), element: Option<&str>) -> String {
        let y = self.fresh();
        let xt = self.g.ty(x).clone();
        let (x, x_ty) = (self.name(x), tensor_ty(&xt));
        if let Some(d) = element {
            self.line(&format!(
                "{y}_x = tensor.extract {x}[{}, {}, {}, {d}] : {x_ty}",
                x_at[0], x_at[1], x_at[2]
            ));
            self.line(&format!("{y}_m = arith.mulf {c}, {y}_x : f32"));
            self.line(&format!("{y}_r = arith.addf {acc}, {y}_m : f32"));
            return format!("{y}_r");
        }
        self.line(&format!("{y}_c0 = arith.constant 0 : index"));
        let (vec, full, tail) = self.row_vectors(&xt, &y);
        self.line(&format!("{y}_pad = arith.constant 0.0 : f32"));
        self.line(&format!("{y}_cv = vector.broadcast {c} : f32 to {vec}"));
        let step = |e: &mut Self, into: &str, d: &str, in_bounds: bool, out: &str| {
            e.line(&format!(
                "{out}_o = vector.transfer_read {into}[{d}], {y}_pad {{in_bounds = [{in_bounds}]}} : {acc_t}, {vec}"
            ));
            e.line(&format!(
                "{out}_x = vector.transfer_read {x}[{}, {}, {}, {d}], {y}_pad {{in_bounds = [{in_bounds}]}} : {x_ty}, {vec}",
                x_at[0], x_at[1], x_at[2]
            ));
            e.line(&format!("{out}_f = vector.fma {y}_cv, {out}_x, {out}_o : {vec}"));
            e.line(&format!(
                "{out} = vector.transfer_write {out}_f, {into}[{d}] {{in_bounds = [{in_bounds}]}} : {vec}, {acc_t}"
            ));
        };
        self.line(&format!(
            "{y}_rows = scf.for {y}_d = {y}_c0 to {full} step {y}_lanes iter_args({y}_va = {acc}) -> ({acc_t}) {{"
        ));
        self.nested(|e| {
            step(e, &format!("{y}_va"), &format!("{y}_d"), true, &format!("{y}_w"));
            e.line(&format!("scf.yield {y}_w : {acc_t}"));
        });
        self.line("}");
        if !tail {
            return format!("{y}_rows");
        }
        step(self, &format!("{y}_rows"), &full, false, &format!("{y}_t"));
        format!("{y}_t")
    }
}
