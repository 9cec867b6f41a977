//! Elementwise ops, their fused chains (see [`fuse`]), reductions and transposes, as
//! `linalg.generic` loop nests.

use super::*;

impl Emitter<'_> {
    /// `x` with its last two axes swapped, named `out` (or a fresh name); returns the result's
    /// name and type.
    pub(super) fn emit_transpose(&mut self, out: Option<&str>, x: &str, xt: &TensorType, loc: &str) -> (String, TensorType) {
        let mut ty = xt.clone();
        let r = ty.rank();
        ty.dims.swap(r - 1, r - 2);
        let mut perm: Vec<String> = (0..r).map(|p| p.to_string()).collect();
        perm.swap(r - 1, r - 2);
        let e = self.empty(&ty);
        let out = out.map_or_else(|| self.fresh(), str::to_string);
        self.line(&format!(
            "{out} = linalg.transpose ins({x} : {}) outs({e} : {}) permutation = [{}] {loc}",
            tensor_ty(xt),
            tensor_ty(&ty),
            perm.join(", ")
        ));
        (out, ty)
    }

    /// An elementwise op with numpy broadcasting. Scalar operands are captured, not iterated.
    pub(super) fn emit_elementwise(&mut self, id: ValueId, operands: &[ValueId], loc: &str, body: &ScalarBody<'_>) {
        let ty = &self.ty(id);
        let out = v(id);
        if ty.rank() == 0 {
            // All operands are scalars: plain arith at the top level.
            let args: Vec<String> = operands.iter().map(|o| self.name(*o)).collect();
            for l in body(&args, &out, &format!("{out}_")) {
                self.line(&format!("{l} {loc}"));
            }
            return;
        }
        let rank = ty.rank();
        let mut maps = Vec::new();
        let mut ins = Vec::new();
        let mut in_types = Vec::new();
        let mut block_args = Vec::new();
        let mut body_args = Vec::new();
        let identity = loop_indices(rank);
        for (k, o) in operands.iter().enumerate() {
            if self.is_scalar(*o) {
                body_args.push(self.name(*o));
                continue;
            }
            let ot = self.ty(*o);
            let exprs = broadcast_read(&ot, ty, &identity);
            maps.push(format!("affine_map<{} -> ({})>", dims_list(rank), exprs.join(", ")));
            ins.push(self.name(*o));
            in_types.push(tensor_ty(&ot));
            block_args.push(format!("%a{k}: {}", elem(ot.dtype)));
            body_args.push(format!("%a{k}"));
        }
        maps.push(format!("affine_map<{} -> {}>", dims_list(rank), dims_list(rank)));
        let e = self.empty(ty);
        let ins_clause = if ins.is_empty() {
            String::new()
        } else {
            format!("ins({} : {}) ", ins.join(", "), in_types.join(", "))
        };
        self.line(&format!(
            "{out} = linalg.generic {{indexing_maps = [{}], iterator_types = [{}]}} {ins_clause}outs({e} : {}) {{",
            maps.join(", "),
            parallel(rank),
            tensor_ty(ty)
        ));
        block_args.push(format!("%o: {}", elem(ty.dtype)));
        self.line(&format!("^bb0({}):", block_args.join(", ")));
        for l in body(&body_args, "%r", "%r") {
            self.line(&format!("  {l}"));
        }
        self.line(&format!("  linalg.yield %r : {}", elem(ty.dtype)));
        self.line(&format!("}} -> {} {loc}", tensor_ty(ty)));
    }

    /// An elementwise op of a scan body as one loop nest that also computes the ops fused into
    /// it (see [`fuse`]).
    pub(super) fn emit_fused(&mut self, id: ValueId, loc: &str) {
        let ty = self.ty(id);
        let rank = ty.rank();
        let mut fused = FusedBody {
            rank,
            ..FusedBody::default()
        };
        let value = self.fused_op(id, &loop_indices(rank), &mut fused);
        let e = self.empty(&ty);
        let out = Generic {
            name: &v(id),
            map: &dims_list(rank),
            iterators: &parallel(rank),
            init: &e,
            ty: &tensor_ty(&ty),
            arg: &format!("%o: {}", elem(ty.dtype)),
        };
        let tail = [format!("linalg.yield {value} : {}", elem(ty.dtype))];
        self.emit_fused_generic(&fused, &out, &tail, loc);
    }

    /// A `linalg.generic` computing `fused` into `out`, its body ending with `tail`.
    pub(super) fn emit_fused_generic(&mut self, fused: &FusedBody, out: &Generic<'_>, tail: &[String], loc: &str) {
        let rank = fused.rank;
        let mut maps: Vec<String> = fused.inputs.iter().map(|i| i.2.clone()).collect();
        maps.push(format!("affine_map<{} -> {}>", dims_list(rank), out.map));
        self.line(&format!(
            "{} = linalg.generic {{indexing_maps = [{}], iterator_types = [{}]}} {}outs({} : {}) {{",
            out.name,
            maps.join(", "),
            out.iterators,
            ins_clause(fused),
            out.init,
            out.ty
        ));
        let mut args: Vec<String> = fused.inputs.iter().enumerate().map(|(k, i)| format!("%a{k}: {}", i.3)).collect();
        args.push(out.arg.to_string());
        self.line(&format!("^bb0({}):", args.join(", ")));
        for l in fused.lines.iter().chain(tail) {
            self.line(&format!("  {l}"));
        }
        self.line(&format!("}} -> {} {loc}", out.ty));
    }

    /// The element of `operand` that op `user` reads, where `at` indexes each of the operand's
    /// axes in the loop nest's dimensions: computed in place when fused, else read from an input.
    pub(super) fn fused_value(&mut self, user: ValueId, operand: ValueId, at: &[String], body: &mut FusedBody) -> String {
        if self.is_scalar(operand) {
            return self.name(operand);
        }
        if self.plan.row_groups.inlined.contains(&operand) {
            return self.fused_op(operand, at, body);
        }
        if fuse::fused_into(self.g, &self.plan.regions, &self.plan.uses, user, operand) {
            if let Some((read, axes)) = fuse::view_axes(self.g, operand) {
                let read_at: Vec<String> = axes.iter().map(|a| a.map_or("0".to_string(), |p| at[p].clone())).collect();
                return self.fused_value(operand, read, &read_at, body);
            }
            return self.fused_op(operand, at, body);
        }
        self.fused_input(operand, at, body)
    }

    /// The element of `value` at `at`, read from an input of the loop nest (each input once).
    pub(super) fn fused_input(&mut self, value: ValueId, at: &[String], body: &mut FusedBody) -> String {
        let (name, ty) = (self.name(value), self.ty(value));
        let map = format!("affine_map<{} -> ({})>", dims_list(body.rank), at.join(", "));
        if let Some(k) = body.inputs.iter().position(|i| i.0 == name && i.2 == map) {
            return format!("%a{k}");
        }
        body.inputs.push((name, tensor_ty(&ty), map, elem(ty.dtype)));
        format!("%a{}", body.inputs.len() - 1)
    }

    /// The element of elementwise op `id` at `at`, computed from its operands' elements.
    pub(super) fn fused_op(&mut self, id: ValueId, at: &[String], body: &mut FusedBody) -> String {
        let g = self.g;
        let ty = self.ty(id);
        let (res, tmp) = (format!("%f{}", id.0), format!("%f{}_", id.0));
        if body.computed.iter().any(|(c, c_at)| *c == id && c_at == at) {
            return res;
        }
        match g.node(id).op {
            Op::Binary { op, lhs, rhs } => {
                let mut args = Vec::new();
                for o in [lhs, rhs] {
                    let read_at = broadcast_read(&self.ty(o), &ty, at);
                    args.push(self.fused_value(id, o, &read_at, body));
                }
                body.lines.push(format!("{res} = {} {}, {} : f32", binary_op(op), args[0], args[1]));
            }
            Op::Unary { op, x } => {
                let a = self.fused_value(id, x, at, body);
                body.lines.extend(unary_body(op, &a, &res, &tmp));
            }
            Op::ToFloat { x } => {
                let from = elem(g.ty(x).dtype);
                let a = self.fused_value(id, x, at, body);
                body.lines.push(format!("{res} = arith.sitofp {a} : {from} to f32"));
            }
            // Only elementwise ops are fused (`fuse::fused_into`); anything else is read.
            _ => return self.fused_input(id, at, body),
        }
        body.computed.push((id, at.to_vec()));
        res
    }

    pub(super) fn emit_reduce(&mut self, id: ValueId, op: ReduceOp, x: ValueId, axis: usize, keepdim: bool, loc: &str) {
        let xt = self.ty(x);
        let rank = xt.rank();
        let mut reduced = xt.clone();
        reduced.dims.remove(axis);
        // Combine into an accumulator filled with the combination's identity.
        let e = self.empty(&reduced);
        let identity = self.fresh();
        self.line(&format!("{identity} = arith.constant {} : f32", reduce_identity(op)));
        let filled = self.fresh();
        self.line(&format!(
            "{filled} = linalg.fill ins({identity} : f32) outs({e} : {}) -> {}",
            tensor_ty(&reduced),
            tensor_ty(&reduced)
        ));
        let combine = reduce_combine(op);
        let out_dims: Vec<String> = (0..rank).filter(|&i| i != axis).map(|i| format!("d{i}")).collect();
        let iters: Vec<&str> = (0..rank)
            .map(|i| if i == axis { "\"reduction\"" } else { "\"parallel\"" })
            .collect();
        let sum = self.fresh();
        if self.mode.in_scan_body && rank > 0 {
            // The reduced value's ops are computed inside the reduction's loop nest.
            let mut fused = FusedBody {
                rank,
                ..FusedBody::default()
            };
            let value = self.fused_value(id, x, &loop_indices(rank), &mut fused);
            let out = Generic {
                name: &sum,
                map: &format!("({})", out_dims.join(", ")),
                iterators: &iters.join(", "),
                init: &filled,
                ty: &tensor_ty(&reduced),
                arg: "%acc: f32",
            };
            let tail = [format!("%r = {combine} {value}, %acc : f32"), "linalg.yield %r : f32".to_string()];
            self.emit_fused_generic(&fused, &out, &tail, loc);
            return self.finish_reduce(id, op, &xt, axis, keepdim, sum, loc);
        }
        self.line(&format!(
            "{sum} = linalg.generic {{indexing_maps = [affine_map<{} -> {}>, affine_map<{} -> ({})>], iterator_types = [{}]}} ins({} : {}) outs({filled} : {}) {{",
            dims_list(rank),
            dims_list(rank),
            dims_list(rank),
            out_dims.join(", "),
            iters.join(", "),
            self.name(x),
            tensor_ty(&xt),
            tensor_ty(&reduced)
        ));
        self.line("^bb0(%a: f32, %acc: f32):");
        self.line(&format!("  %r = {combine} %a, %acc : f32"));
        self.line("  linalg.yield %r : f32");
        self.line(&format!("}} -> {} {loc}", tensor_ty(&reduced)));
        self.finish_reduce(id, op, &xt, axis, keepdim, sum, loc);
    }

    /// A row group's reduction of the last axis, keeping it (see [`fuse::row_groups`]): the
    /// loop nest has one more dimension than the result, the kept axis (length 1) and the
    /// reduced one after it, so that the result is written as it is typed, `[rows..., 1]`,
    /// and no reshape stands between it and the ops the schedule fuses.
    pub(super) fn emit_row_reduce(&mut self, id: ValueId, op: ReduceOp, x: ValueId, loc: &str) {
        let ty = self.ty(id);
        let xt = self.ty(x);
        let rank = ty.rank();
        let e = self.empty(&ty);
        let identity = self.fresh();
        self.line(&format!("{identity} = arith.constant {} : f32", reduce_identity(op)));
        let filled = self.fresh();
        let t = tensor_ty(&ty);
        self.line(&format!("{filled} = linalg.fill ins({identity} : f32) outs({e} : {t}) -> {t}"));
        let mut fused = FusedBody {
            rank: rank + 1,
            ..FusedBody::default()
        };
        let mut at: Vec<String> = (0..rank - 1).map(|i| format!("d{i}")).collect();
        at.push(format!("d{rank}"));
        let value = self.fused_value(id, x, &at, &mut fused);
        let sum = if op == ReduceOp::Mean { self.fresh() } else { v(id) };
        let mut iterators = vec!["\"parallel\""; rank];
        iterators.push("\"reduction\"");
        let out = Generic {
            name: &sum,
            map: &dims_list(rank),
            iterators: &iterators.join(", "),
            init: &filled,
            ty: &t,
            arg: "%acc: f32",
        };
        // A sum's `reassoc` lets LLVM vectorise it; a maximum is exact in any order anyway.
        let combined = match op {
            ReduceOp::Sum | ReduceOp::Mean => format!("%r = arith.addf {value}, %acc fastmath<reassoc> : f32"),
            ReduceOp::Max => format!("%r = arith.maximumf {value}, %acc : f32"),
        };
        let tail = [combined, "linalg.yield %r : f32".to_string()];
        self.emit_fused_generic(&fused, &out, &tail, loc);
        if op == ReduceOp::Mean {
            let n = self.axis_length(xt.dims[rank - 1]);
            self.emit_divide(&sum, &ty, &n, Some(v(id)), loc);
        }
    }

    /// `sum / n` elementwise (`sum` of type `t`, `n` an `f32`): a mean's division. Named `out`,
    /// or a fresh name after its destination's; returns the name.
    pub(super) fn emit_divide(&mut self, sum: &str, t: &TensorType, n: &str, out: Option<String>, loc: &str) -> String {
        let e = self.empty(t);
        let out = out.unwrap_or_else(|| self.fresh());
        let (rank, ty) = (t.rank(), tensor_ty(t));
        let map = format!("affine_map<{} -> {}>", dims_list(rank), dims_list(rank));
        self.line(&format!(
            "{out} = linalg.generic {{indexing_maps = [{map}, {map}], iterator_types = [{}]}} ins({sum} : {ty}) outs({e} : {ty}) {{",
            parallel(rank)
        ));
        self.line("^bb0(%a: f32, %o: f32):");
        self.line(&format!("  %r = arith.divf %a, {n} : f32"));
        self.line("  linalg.yield %r : f32");
        self.line(&format!("}} -> {ty} {loc}"));
        out
    }

    /// The length of an axis as an `f32` SSA value, known now or read from a symbol: what a
    /// mean divides by.
    pub(super) fn axis_length(&mut self, d: Dim) -> String {
        let n = self.fresh();
        match d {
            Dim::Static(k) => self.line(&format!("{n} = arith.constant {} : f32", f32_literal(k as f64))),
            Dim::Symbol(s) => {
                let as_int = self.fresh();
                self.line(&format!("{as_int} = arith.index_cast %sym{} : index to i64", s.0));
                self.line(&format!("{n} = arith.sitofp {as_int} : i64 to f32"));
            }
        }
        n
    }

    /// The rest of a reduction of `xt` whose combined value is `sum`: the division of a mean, and the
    /// result's shape.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn finish_reduce(&mut self, id: ValueId, op: ReduceOp, xt: &TensorType, axis: usize, keepdim: bool, sum: String, loc: &str) {
        let mut reduced = xt.clone();
        reduced.dims.remove(axis);
        let mut result = sum;
        if op == ReduceOp::Mean {
            let n = self.axis_length(xt.dims[axis]);
            result = self.emit_divide(&result, &reduced, &n, None, loc);
        }
        let ty = self.ty(id);
        let out = v(id);
        if ty.rank() == 0 {
            self.line(&format!("{out} = tensor.extract {result}[] : tensor<f32> {loc}"));
        } else if keepdim {
            // Reinsert the reduced axis as size 1, grouped with a neighbour.
            let r = reduced.rank();
            let groups: Vec<String> = if r == 0 {
                vec![]
            } else {
                let mut gs: Vec<Vec<usize>> = (0..r).map(|j| vec![if j < axis { j } else { j + 1 }]).collect();
                if axis == 0 {
                    gs[0].insert(0, 0);
                } else {
                    gs[axis - 1].push(axis);
                }
                gs.iter()
                    .map(|g| format!("[{}]", g.iter().map(|x| x.to_string()).collect::<Vec<_>>().join(", ")))
                    .collect()
            };
            let sizes: Vec<String> = ty.dims.iter().map(|d| dim_size(*d)).collect();
            self.line(&format!(
                "{out} = tensor.expand_shape {result} [{}] output_shape [{}] : {} into {} {loc}",
                groups.join(", "),
                sizes.join(", "),
                tensor_ty(&reduced),
                tensor_ty(&ty)
            ));
        } else {
            self.line(&format!(
                "{out} = tensor.cast {result} : {} to {} {loc}",
                tensor_ty(&reduced),
                tensor_ty(&ty)
            ));
        }
    }
}

/// The value a reduction's accumulator starts from: 0 for a sum (or mean), `-inf` for a maximum.
pub(super) fn reduce_identity(op: ReduceOp) -> &'static str {
    match op {
        ReduceOp::Sum | ReduceOp::Mean => "0.0",
        ReduceOp::Max => "0xFF800000",
    }
}

/// The `arith` op that adds one element to a reduction's accumulator.
pub(super) fn reduce_combine(op: ReduceOp) -> &'static str {
    match op {
        ReduceOp::Sum | ReduceOp::Mean => "arith.addf",
        ReduceOp::Max => "arith.maximumf",
    }
}
