//! The built-in functions (`matmul`, `softmax`, `attention`, `gather`, ...) and the operators:
//! their argument checking and the IR nodes they make.

use super::*;

impl<'p> Elab<'p> {
    pub(super) fn require_f32(&self, id: ValueId, what: &str) -> Result<(), Diagnostic> {
        if self.ty(id).dtype == DType::F32 {
            return Ok(());
        }
        Err(Diagnostic::error(
            "E0201",
            format!("{what} needs f32 values"),
            self.span_of(id),
            format!("this is {}", self.type_name(id)),
        )
        .with_help("integer tensors are indices; convert them with `float(x)`"))
    }

    pub(super) fn unary(&mut self, op: UnaryOp, x: ValueId, span: Span) -> Result<Val, Diagnostic> {
        self.require_f32(x, &format!("`{}`", format!("{op:?}").to_lowercase()))?;
        let ty = self.ty(x).clone();
        self.push(Op::Unary { op, x }, ty, span).map(Val::Tensor)
    }

    pub(super) fn binary(&mut self, op: BinaryOp, symbol: &str, l: ValueId, r: ValueId, span: Span) -> Result<Val, Diagnostic> {
        let what = format!("`{symbol}`");
        self.require_f32(l, &what)?;
        self.require_f32(r, &what)?;
        let dims = self.broadcast_dims(l, r, span)?;
        self.push(Op::Binary { op, lhs: l, rhs: r }, TensorType::new(DType::F32, dims), span)
            .map(Val::Tensor)
    }

    /// The shape `l` and `r` broadcast to (numpy's rule), or E0200 showing both.
    pub(super) fn broadcast_dims(&self, l: ValueId, r: ValueId, span: Span) -> Result<Vec<Dim>, Diagnostic> {
        broadcast(&self.ty(l).dims, &self.ty(r).dims).map_err(|(a, b)| {
            Diagnostic::error(
                "E0200",
                format!("shapes {} and {} do not broadcast", self.type_name(l), self.type_name(r)),
                span,
                format!("dimension {} against {}", self.graph.dim_name(a), self.graph.dim_name(b)),
            )
            .with_secondary(self.span_of(l), format!("this is {}", self.type_name(l)))
            .with_secondary(self.span_of(r), format!("this is {}", self.type_name(r)))
            .with_help("aligned from the right, each pair of dimensions must be equal or one of them 1")
        })
    }

    pub(super) fn matmul(&mut self, l: ValueId, r: ValueId, span: Span) -> Result<Val, Diagnostic> {
        self.require_f32(l, "`@`")?;
        self.require_f32(r, "`@`")?;
        let (a, b) = (self.ty(l).clone(), self.ty(r).clone());
        if a.rank() < 2 || b.rank() != 2 {
            return Err(Diagnostic::error(
                "E0200",
                format!(
                    "`@` needs [..., M, K] @ [K, N], found {} @ {}",
                    self.type_name(l),
                    self.type_name(r)
                ),
                span,
                "unsupported operand ranks",
            )
            .with_help("the right operand of `@` is a matrix (rank 2); the left has rank 2 or more"));
        }
        let k_left = a.dims[a.rank() - 1];
        if k_left != b.dims[0] {
            return Err(Diagnostic::error(
                "E0200",
                format!(
                    "inner dimensions of `@` differ: {} and {}",
                    self.graph.dim_name(k_left),
                    self.graph.dim_name(b.dims[0])
                ),
                span,
                "contraction over mismatched dimensions",
            )
            .with_secondary(self.span_of(l), format!("this is {}", self.type_name(l)))
            .with_secondary(self.span_of(r), format!("this is {}", self.type_name(r)))
            .with_help("a Hugging Face Linear weight is [out, in]: write `x @ transpose(weight)`"));
        }
        let mut dims = a.dims.clone();
        *dims.last_mut().unwrap() = b.dims[1];
        self.push(Op::MatMul { lhs: l, rhs: r }, TensorType::new(DType::F32, dims), span)
            .map(Val::Tensor)
    }

    pub(super) fn builtin(&mut self, frame: &mut Frame, callee: &ast::Ident, args: &'p [CallArg], span: Span) -> Result<Val, Diagnostic> {
        let name = callee.name.as_str();
        // `call` dispatches here only names of BUILTINS.
        let signature = BUILTINS.iter().find(|(n, _)| *n == name).map_or(name, |(_, s)| *s);
        let arity_error = |why: String| {
            Diagnostic::error("E0202", format!("wrong arguments to `{name}`"), span, why).with_help(format!("call it as `{signature}`"))
        };
        let positional: Vec<&'p Expr> = args.iter().filter(|a| a.name.is_none()).map(|a| &a.value).collect();
        let named: Vec<(&ast::Ident, &'p Expr)> = args.iter().filter_map(|a| a.name.as_ref().map(|n| (n, &a.value))).collect();
        let allowed_named: &[&str] = match name {
            "mean" | "sum" | "max" | "argmax" => &["axis", "keepdim"],
            "attention" => &["mask", "score", "scale", "dropout"],
            "slice" | "concat" | "cumsum" => &["axis"],
            _ => &[],
        };
        for (n, _) in &named {
            if !allowed_named.contains(&n.name.as_str()) {
                return Err(Diagnostic::error(
                    "E0202",
                    format!("`{name}` has no argument `{}`", n.name),
                    n.span,
                    "unknown argument name",
                )
                .with_help(format!("call it as `{signature}`")));
            }
        }
        match name {
            "int" | "floor" | "ceil" => self.rounding(frame, name, &positional, span),
            "concat" => self.concat(frame, &positional, &named, span),
            "cumsum" => self.cumsum(frame, &positional, &named, span),
            "fail" => {
                let message = match positional.as_slice() {
                    [m] => match self.sub(frame, m)? {
                        Val::Const(CtValue::Str(s)) => s,
                        _ => return Err(arity_error("the message must be a string".into())),
                    },
                    _ => return Err(arity_error(format!("expected 1 argument, found {}", positional.len()))),
                };
                let mut d = Diagnostic::error("E0300", message, span, "the model file reached this `fail`");
                if frame.inst != 0 {
                    let inst = &self.instances[frame.inst];
                    let args: Vec<String> = inst.env.iter().map(|(k, v)| format!("{k} = {v}")).collect();
                    d = d.with_secondary(inst.decl_span, format!("in `{}` with {}", inst.block, args.join(", ")));
                }
                Err(d)
            }
            "arange" => {
                let [n] = positional.as_slice() else {
                    return Err(arity_error(format!("expected 1 argument, found {}", positional.len())));
                };
                let dim = match self.sub(frame, n)? {
                    Val::Dim(d) => d,
                    Val::Const(CtValue::Int(k)) if k > 0 => Dim::Static(k),
                    other => {
                        return Err(arity_error(format!(
                            "the length must be a dimension or a positive integer, found {}",
                            describe(&other)
                        )))
                    }
                };
                self.push(Op::Arange(dim), TensorType::new(DType::I64, vec![dim]), span)
                    .map(Val::Tensor)
            }
            "attention" => {
                let [q, k, v] = positional.as_slice() else {
                    return Err(arity_error(format!("expected 3 tensors, found {}", positional.len())));
                };
                let mut ids = Vec::new();
                for a in [q, k, v] {
                    let val = self.sub(frame, a)?;
                    ids.push(self.tensor_of(val, a.span)?);
                }
                let named_arg = |n: &str| named.iter().find(|(i, _)| i.name == n).map(|(_, e)| *e);
                self.attention(
                    frame,
                    [ids[0], ids[1], ids[2]],
                    [q.span, k.span, v.span],
                    named_arg("mask"),
                    named_arg("score"),
                    named_arg("scale"),
                    named_arg("dropout"),
                    span,
                )
            }
            "slice" => {
                let [x, start, length] = positional.as_slice() else {
                    return Err(arity_error(format!("expected 3 positional arguments, found {}", positional.len())));
                };
                let v = self.sub(frame, x)?;
                let x_id = self.tensor_of(v, x.span)?;
                let rank = self.ty(x_id).rank() as i64;
                let mut ints = Vec::new();
                for e in [*start, *length] {
                    match self.sub(frame, e)? {
                        Val::Const(CtValue::Int(i)) => ints.push(i),
                        other => {
                            return Err(Diagnostic::error(
                                "E0202",
                                "slice bounds must be integers known at compile time",
                                e.span,
                                format!("this is {}", describe(&other)),
                            ))
                        }
                    }
                }
                let axis = match named.iter().find(|(n, _)| n.name == "axis") {
                    None => rank - 1,
                    Some((_, a)) => match self.sub(frame, a)? {
                        Val::Const(CtValue::Int(i)) if (-rank..rank).contains(&i) => i.rem_euclid(rank),
                        other => {
                            return Err(Diagnostic::error(
                                "E0202",
                                format!("axis {} is out of range for {}", describe(&other), self.type_name(x_id)),
                                a.span,
                                "bad axis",
                            ))
                        }
                    },
                } as usize;
                let op = Op::Slice {
                    x: x_id,
                    axis,
                    start: ints[0],
                    length: ints[1],
                };
                let Some(ty) = infer_type(&self.graph, &op) else {
                    let dim = self.graph.dim_name(self.ty(x_id).dims.get(axis).copied().unwrap_or(Dim::Static(0)));
                    return Err(Diagnostic::error(
                        "E0207",
                        format!("slice {}..{} does not fit an axis of length {dim}", ints[0], ints[0] + ints[1]),
                        span,
                        "out of range",
                    )
                    .with_help("the axis must have a fixed length, and 0 <= start < start + length <= length"));
                };
                self.push(op, ty, span).map(Val::Tensor)
            }
            "unsqueeze" => {
                let [x, axis] = positional.as_slice() else {
                    return Err(arity_error(format!("expected 2 arguments, found {}", positional.len())));
                };
                let v = self.sub(frame, x)?;
                let x_id = self.tensor_of(v, x.span)?;
                let t = self.ty(x_id).clone();
                let rank = t.rank() as i64 + 1;
                let axis = match self.sub(frame, axis)? {
                    Val::Const(CtValue::Int(i)) if (-rank..rank).contains(&i) => i.rem_euclid(rank) as usize,
                    other => {
                        return Err(Diagnostic::error(
                            "E0202",
                            format!(
                                "`unsqueeze` of {} takes an axis from {} to {}",
                                self.type_name(x_id),
                                -rank,
                                rank - 1
                            ),
                            axis.span,
                            format!("this is {}", describe(&other)),
                        ))
                    }
                };
                // A new axis of length 1: the tensor whose element (.., 0, ..) is x's element.
                let scalar = if t.dtype == DType::F32 { ScalarType::F32 } else { ScalarType::Int };
                let mut f = ScalarFn {
                    params: vec![ScalarType::Int; t.rank() + 1],
                    nodes: Vec::new(),
                    result: 0,
                };
                let args: Vec<usize> = (0..=t.rank())
                    .map(|k| push_scalar(&mut f, ScalarNode::Param(k), ScalarType::Int))
                    .collect();
                let indices = args.iter().enumerate().filter(|(k, _)| *k != axis).map(|(_, a)| *a).collect();
                f.result = push_scalar(&mut f, ScalarNode::Load { tensor: x_id, indices }, scalar);
                let mut dims = t.dims.clone();
                dims.insert(axis, Dim::Static(1));
                let dtype = if t.dtype == DType::F32 { DType::F32 } else { DType::I64 };
                self.push(Op::Tabulate { f }, TensorType::new(dtype, dims), span).map(Val::Tensor)
            }
            "tabulate" => {
                let Some((f, dims)) = positional.split_last() else {
                    return Err(arity_error("expected dimensions and an index function".into()));
                };
                if dims.is_empty() {
                    return Err(arity_error("expected at least one dimension before the index function".into()));
                }
                let shape = self.shape_of(frame, dims)?;
                let names: Vec<String> = (0..shape.len()).map(|k| format!("i{k}")).collect();
                let names: Vec<&str> = names.iter().map(String::as_str).collect();
                let params = vec![ScalarType::Int; shape.len()];
                let func = self.scalar_fn(frame, f, &names, &params, None, "tabulate")?;
                let dtype = match func.nodes[func.result].1 {
                    ScalarType::F32 => DType::F32,
                    ScalarType::Int => DType::I64,
                    ScalarType::Bool => {
                        return Err(Diagnostic::error(
                            "E0201",
                            "`tabulate` needs numbers, not true or false",
                            f.span,
                            "gives true or false",
                        )
                        .with_help("use `if cond { 1.0 } else { 0.0 }`"))
                    }
                };
                self.push(Op::Tabulate { f: func }, TensorType::new(dtype, shape), span)
                    .map(Val::Tensor)
            }
            "split_heads" => {
                let [x, heads] = positional.as_slice() else {
                    return Err(arity_error(format!("expected 2 arguments, found {}", positional.len())));
                };
                let v = self.sub(frame, x)?;
                let x_id = self.tensor_of(v, x.span)?;
                self.require_f32(x_id, "`split_heads`")?;
                let heads = match self.sub(frame, heads)? {
                    Val::Const(CtValue::Int(h)) if h > 0 => h,
                    other => {
                        return Err(Diagnostic::error(
                            "E0202",
                            "the number of heads must be a positive integer",
                            heads.span,
                            format!("this is {}", describe(&other)),
                        ))
                    }
                };
                let t = self.ty(x_id).clone();
                let ok = t.rank() >= 2 && matches!(t.dims[t.rank() - 1], Dim::Static(c) if c % heads == 0);
                if !ok {
                    return Err(Diagnostic::error(
                        "E0200",
                        format!("cannot split {} into {heads} heads", self.type_name(x_id)),
                        x.span,
                        "needs [..., T, C] with C a multiple of the heads",
                    )
                    .with_help("the last dimension must be fixed and divisible by the number of heads"));
                }
                let op = Op::SplitHeads { x: x_id, heads };
                let ty = infer_type(&self.graph, &op)
                    .ok_or_else(|| Diagnostic::error("E0200", "internal error: split_heads has no type", span, "here"))?;
                self.push(op, ty, span).map(Val::Tensor)
            }
            "merge_heads" => {
                let [x] = positional.as_slice() else {
                    return Err(arity_error(format!("expected 1 argument, found {}", positional.len())));
                };
                let v = self.sub(frame, x)?;
                let x_id = self.tensor_of(v, x.span)?;
                self.require_f32(x_id, "`merge_heads`")?;
                let op = Op::MergeHeads { x: x_id };
                let Some(ty) = infer_type(&self.graph, &op) else {
                    return Err(Diagnostic::error(
                        "E0200",
                        format!("cannot merge the heads of {}", self.type_name(x_id)),
                        x.span,
                        "needs [..., H, T, D] with H and D fixed",
                    ));
                };
                self.push(op, ty, span).map(Val::Tensor)
            }
            "uniform" => {
                if positional.is_empty() {
                    return Err(arity_error("expected the dimensions of the tensor".into()));
                }
                let shape = self.shape_of(frame, &positional)?;
                self.uniform(shape, span)
            }
            "dropout" => {
                let [x, p] = positional.as_slice() else {
                    return Err(arity_error(format!("expected 2 arguments, found {}", positional.len())));
                };
                self.dropout(frame, x, p, span)
            }
            "training" => {
                if !positional.is_empty() {
                    return Err(arity_error(format!("expected no arguments, found {}", positional.len())));
                }
                Ok(Val::Const(CtValue::Bool(self.training)))
            }
            "given" => {
                let [x] = positional.as_slice() else {
                    return Err(arity_error(format!("expected 1 argument, found {}", positional.len())));
                };
                let ExprKind::Path(p) = &x.kind else {
                    return Err(arity_error("the argument is the name of an input".into()));
                };
                match frame.locals.get(&p.segments[0].name) {
                    Some(Binding::Absent) => {
                        let name = &p.segments[0].name;
                        if !self.asked_absent.contains(name) {
                            self.asked_absent.push(name.clone());
                        }
                        Ok(Val::Const(CtValue::Bool(false)))
                    }
                    Some(_) if p.segments.len() == 1 => Ok(Val::Const(CtValue::Bool(true))),
                    _ => Err(Diagnostic::error(
                        "E0100",
                        format!("unknown input `{}`", p.dotted()),
                        x.span,
                        "not an input of this forward",
                    )
                    .with_help("`given(name)` asks whether an input declared `= absent` was given")),
                }
            }
            "mean" | "sum" | "max" | "argmax" => {
                let (x, axis_expr) = match positional.as_slice() {
                    [x] => (*x, named.iter().find(|(n, _)| n.name == "axis").map(|(_, e)| *e)),
                    [x, axis] => (*x, Some(*axis)),
                    _ => {
                        return Err(arity_error(format!(
                            "expected 1 or 2 positional arguments, found {}",
                            positional.len()
                        )))
                    }
                };
                let v = self.sub(frame, x)?;
                let x = self.tensor_of(v, x.span)?;
                self.require_f32(x, &format!("`{name}`"))?;
                let rank = self.ty(x).rank() as i64;
                if rank == 0 {
                    return Err(arity_error("cannot reduce a scalar".into()));
                }
                let axis = match axis_expr {
                    None => rank - 1,
                    Some(a) => match self.sub(frame, a)? {
                        Val::Const(CtValue::Int(i)) if (-rank..rank).contains(&i) => i.rem_euclid(rank),
                        v => {
                            let shown = if let Val::Const(c) = &v { c.to_string() } else { describe(&v) };
                            return Err(Diagnostic::error(
                                "E0202",
                                format!("axis {shown} is out of range for {}", self.type_name(x)),
                                a.span,
                                format!("valid axes are {} to {}", -rank, rank - 1),
                            )
                            .with_help("negative axes count from the end: -1 is the last"));
                        }
                    },
                } as usize;
                let keepdim = match named.iter().find(|(n, _)| n.name == "keepdim") {
                    None => false,
                    Some((_, e)) => match self.sub(frame, e)? {
                        Val::Const(CtValue::Bool(b)) => b,
                        v => {
                            return Err(Diagnostic::error(
                                "E0202",
                                "`keepdim` must be true or false",
                                e.span,
                                format!("this is {}", describe(&v)),
                            ))
                        }
                    },
                };
                if name == "argmax" {
                    return self.argmax(x, axis, keepdim, span);
                }
                let op = match name {
                    "mean" => ReduceOp::Mean,
                    "max" => ReduceOp::Max,
                    _ => ReduceOp::Sum,
                };
                let mut dims = self.ty(x).dims.clone();
                if keepdim {
                    dims[axis] = Dim::Static(1);
                } else {
                    dims.remove(axis);
                }
                self.push(Op::Reduce { op, x, axis, keepdim }, TensorType::new(DType::F32, dims), span)
                    .map(Val::Tensor)
            }
            _ => {
                let expected = if matches!(name, "gather" | "matmul" | "maximum" | "minimum" | "pow") {
                    2
                } else {
                    1
                };
                if positional.len() != expected {
                    return Err(arity_error(format!("expected {expected} argument(s), found {}", positional.len())));
                }
                let mut ids = Vec::new();
                for a in &positional {
                    let v = self.sub(frame, a)?;
                    ids.push(self.tensor_of(v, a.span)?);
                }
                let unary = |op| Some(op);
                let op = match name {
                    "sqrt" => unary(UnaryOp::Sqrt),
                    "rsqrt" => unary(UnaryOp::Rsqrt),
                    "exp" => unary(UnaryOp::Exp),
                    "log" => unary(UnaryOp::Log),
                    "abs" => unary(UnaryOp::Abs),
                    "tanh" => unary(UnaryOp::Tanh),
                    "erf" => unary(UnaryOp::Erf),
                    "sin" => unary(UnaryOp::Sin),
                    "cos" => unary(UnaryOp::Cos),
                    "sigmoid" => unary(UnaryOp::Sigmoid),
                    "relu" => unary(UnaryOp::Relu),
                    "silu" => unary(UnaryOp::Silu),
                    "gelu" => unary(UnaryOp::Gelu),
                    "detach" => unary(UnaryOp::Detach),
                    _ => None,
                };
                if let Some(op) = op {
                    return self.unary(op, ids[0], span);
                }
                match name {
                    "float" => {
                        let x = ids[0];
                        if self.ty(x).dtype == DType::F32 {
                            return Ok(Val::Tensor(x));
                        }
                        let dims = self.ty(x).dims.clone();
                        self.push(Op::ToFloat { x }, TensorType::new(DType::F32, dims), span)
                            .map(Val::Tensor)
                    }
                    "transpose" => {
                        let mut ty = self.ty(ids[0]).clone();
                        let r = ty.rank();
                        if r < 2 {
                            return Err(arity_error(format!("needs rank 2 or more, found {}", self.type_name(ids[0]))));
                        }
                        ty.dims.swap(r - 1, r - 2);
                        self.push(Op::Transpose { x: ids[0] }, ty, span).map(Val::Tensor)
                    }
                    "matmul" => self.matmul(ids[0], ids[1], span),
                    "maximum" => self.binary(BinaryOp::Max, "maximum", ids[0], ids[1], span),
                    "minimum" => self.binary(BinaryOp::Min, "minimum", ids[0], ids[1], span),
                    "pow" => self.binary(BinaryOp::Pow, "pow", ids[0], ids[1], span),
                    "gather" => self.gather(ids[0], ids[1], span, positional[0].span, positional[1].span),
                    _ => unreachable!("builtin {name} has no checker"),
                }
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn attention(
        &mut self,
        frame: &mut Frame,
        [q, k, v]: [ValueId; 3],
        spans: [Span; 3],
        mask: Option<&'p Expr>,
        score: Option<&'p Expr>,
        scale: Option<&'p Expr>,
        dropout: Option<&'p Expr>,
        span: Span,
    ) -> Result<Val, Diagnostic> {
        for (id, s) in [q, k, v].iter().zip(spans) {
            self.require_f32(*id, "`attention`")?;
            if self.ty(*id).rank() != 4 {
                return Err(Diagnostic::error(
                    "E0200",
                    format!("`attention` needs [B, H, T, D] tensors, found {}", self.type_name(*id)),
                    s,
                    "not rank 4",
                )
                .with_help("split the model dimension into heads first: `split_heads(x, heads)`"));
            }
        }
        let (qt, kt, vt) = (self.ty(q).clone(), self.ty(k).clone(), self.ty(v).clone());
        let g = &self.graph;
        let mismatch = |what: &str, a: Dim, b: Dim, sa: Span, sb: Span| {
            Diagnostic::error(
                "E0200",
                format!("`attention`: {what} differ: {} and {}", g.dim_name(a), g.dim_name(b)),
                span,
                "in this attention",
            )
            .with_secondary(sa, format!("this has {}", g.dim_name(a)))
            .with_secondary(sb, format!("this has {}", g.dim_name(b)))
        };
        if qt.dims[0] != kt.dims[0] || qt.dims[0] != vt.dims[0] {
            return Err(mismatch(
                "batch sizes",
                qt.dims[0],
                if qt.dims[0] != kt.dims[0] { kt.dims[0] } else { vt.dims[0] },
                spans[0],
                spans[1],
            ));
        }
        if qt.dims[3] != kt.dims[3] {
            return Err(mismatch("query and key widths", qt.dims[3], kt.dims[3], spans[0], spans[1]));
        }
        if kt.dims[1] != vt.dims[1] || kt.dims[2] != vt.dims[2] {
            return Err(mismatch(
                "key and value heads or lengths",
                kt.dims[2],
                vt.dims[2],
                spans[1],
                spans[2],
            ));
        }
        let grouped = match (qt.dims[1], kt.dims[1]) {
            (a, b) if a == b => true,
            (Dim::Static(h), Dim::Static(g)) => h % g == 0,
            _ => false,
        };
        if !grouped {
            let (hq, hk) = (g.dim_name(qt.dims[1]), g.dim_name(kt.dims[1]));
            return Err(Diagnostic::error(
                "E0200",
                format!("`attention`: {hq} query heads are not a multiple of {hk} key/value heads"),
                span,
                "in this attention",
            )
            .with_secondary(spans[0], format!("{hq} heads"))
            .with_secondary(spans[1], format!("{hk} heads"))
            .with_help("grouped-query attention shares each key/value head among an equal number of query heads"));
        }
        let scale = match scale {
            None => match qt.dims[3] {
                Dim::Static(d) => 1.0 / (d as f64).sqrt(),
                Dim::Symbol(_) => {
                    return Err(Diagnostic::error(
                        "E0200",
                        "`attention` needs a fixed head width to default its scale",
                        spans[0],
                        "symbolic width",
                    )
                    .with_help("pass `scale = ...`"))
                }
            },
            Some(e) => match self.sub(frame, e)? {
                Val::Const(c) if c.as_f64().is_some() => c.as_f64().unwrap_or_default(),
                other => {
                    return Err(Diagnostic::error(
                        "E0202",
                        "`scale` must be a number known at compile time",
                        e.span,
                        format!("this is {}", describe(&other)),
                    ))
                }
            },
        };
        use ScalarType::{Int, F32};
        let mask = match mask {
            Some(m) => Some(self.scalar_fn(
                frame,
                m,
                &["b", "h", "i", "j"],
                &[Int, Int, Int, Int],
                Some(ScalarType::Bool),
                "mask",
            )?),
            None => None,
        };
        let score = match score {
            Some(m) => Some(self.scalar_fn(frame, m, &["s", "b", "h", "i", "j"], &[F32, Int, Int, Int, Int], Some(F32), "score")?),
            None => None,
        };
        // Dropout of the probabilities, in a training compile.
        let dropout = match dropout {
            Some(e) => match self.dropout_probability(frame, e)? {
                p if self.training && p > 0.0 => Some(self.dropout_scale(&[qt.dims[0], qt.dims[1], qt.dims[2], kt.dims[2]], p, span)?),
                _ => None,
            },
            None => None,
        };
        let ty = TensorType::new(DType::F32, vec![qt.dims[0], qt.dims[1], qt.dims[2], vt.dims[3]]);
        self.push(
            Op::Attention {
                q,
                k,
                v,
                scale,
                mask,
                score,
                dropout,
            },
            ty,
            span,
        )
        .map(Val::Tensor)
    }

    pub(super) fn gather(
        &mut self,
        table: ValueId,
        indices: ValueId,
        span: Span,
        table_span: Span,
        indices_span: Span,
    ) -> Result<Val, Diagnostic> {
        let t = self.ty(table).clone();
        let i = self.ty(indices).clone();
        if t.rank() < 1 {
            return Err(Diagnostic::error(
                "E0201",
                "`gather` needs a table of rank 1 or more",
                table_span,
                format!("this is {}", self.type_name(table)),
            ));
        }
        if i.dtype == DType::F32 {
            return Err(Diagnostic::error(
                "E0201",
                "`gather` indices must be integers",
                indices_span,
                format!("this is {}", self.type_name(indices)),
            )
            .with_help("declare the input as i64[...] or i32[...]"));
        }
        let rows = match t.dims[0] {
            Dim::Static(n) => n,
            Dim::Symbol(_) => {
                return Err(Diagnostic::error(
                    "E0201",
                    "`gather` needs a table with a fixed number of rows",
                    table_span,
                    format!("this is {}", self.type_name(table)),
                ))
            }
        };
        let reason = match self.graph.node(table).op {
            Op::Param(p) => format!("rows of {}", self.graph.params[p].name),
            _ => "rows of the gathered table".to_string(),
        };
        let bound = Bound { limit: rows, reason };
        // Record the limit where the runtime can check it: on the input, or on the symbol.
        match self.graph.node(indices).op.clone() {
            Op::Input(k) => {
                // Position ids that default to 0..T bound T as `arange(T)` would: a sequence
                // longer than the table has no positions to number it by.
                let input = &self.graph.inputs[k];
                if let (Some(lmc_abi::InputDefault::Arange), Some(Dim::Symbol(s))) = (input.default, input.ty.dims.last()) {
                    let slot = &mut self.graph.symbols[s.0 as usize].max;
                    if slot.as_ref().is_none_or(|b| b.limit > rows) {
                        *slot = Some(bound.clone());
                    }
                }
                let slot = &mut self.graph.inputs[k].index_bound;
                if slot.as_ref().is_none_or(|b| b.limit > rows) {
                    *slot = Some(bound);
                }
            }
            Op::Arange(Dim::Symbol(s)) => {
                let slot = &mut self.graph.symbols[s.0 as usize].max;
                if slot.as_ref().is_none_or(|b| b.limit > rows) {
                    *slot = Some(bound);
                }
            }
            Op::Arange(Dim::Static(n)) if n > rows => {
                return Err(Diagnostic::error(
                    "E0207",
                    format!("`arange({n})` indexes past the {rows} rows of the table"),
                    indices_span,
                    format!("positions up to {}", n - 1),
                )
                .with_secondary(table_span, format!("this has {rows} rows")));
            }
            _ => {}
        }
        let mut dims = i.dims.clone();
        dims.extend_from_slice(&t.dims[1..]);
        self.push(Op::Gather { table, indices }, TensorType::new(t.dtype, dims), span)
            .map(Val::Tensor)
    }
}

impl<'p> Elab<'p> {
    /// The dimensions a built-in is given (`tabulate`'s, `uniform`'s): symbols or positive
    /// integers.
    fn shape_of(&mut self, frame: &mut Frame, dims: &[&'p Expr]) -> Result<Vec<Dim>, Diagnostic> {
        let mut shape = Vec::new();
        for d in dims {
            shape.push(match self.sub(frame, d)? {
                Val::Dim(d) => d,
                Val::Const(CtValue::Int(k)) if k > 0 => Dim::Static(k),
                other => {
                    return Err(Diagnostic::error(
                        "E0202",
                        "a dimension must be a symbol or a positive integer",
                        d.span,
                        format!("this is {}", describe(&other)),
                    ))
                }
            });
        }
        Ok(shape)
    }
}

/// The built-in functions and how to call them.
pub(super) const BUILTINS: &[(&str, &str)] = &[
    ("gather", "gather(table, indices)"),
    ("arange", "arange(n)"),
    ("mean", "mean(x, axis = -1, keepdim = false)"),
    ("sum", "sum(x, axis = -1, keepdim = false)"),
    ("max", "max(x, axis = -1, keepdim = false)"),
    ("argmax", "argmax(x, axis = -1, keepdim = false)"),
    ("given", "given(input)"),
    ("training", "training()"),
    ("dropout", "dropout(x, p)"),
    ("uniform", "uniform(d0, d1, ...)"),
    ("sqrt", "sqrt(x)"),
    ("rsqrt", "rsqrt(x)"),
    ("exp", "exp(x)"),
    ("log", "log(x)"),
    ("abs", "abs(x)"),
    ("tanh", "tanh(x)"),
    ("erf", "erf(x)"),
    ("sin", "sin(x)"),
    ("cos", "cos(x)"),
    ("sigmoid", "sigmoid(x)"),
    ("relu", "relu(x)"),
    ("silu", "silu(x)"),
    ("gelu", "gelu(x)"),
    ("detach", "detach(x)"),
    ("maximum", "maximum(a, b)"),
    ("minimum", "minimum(a, b)"),
    ("pow", "pow(a, b)"),
    ("float", "float(x)"),
    ("int", "int(x)"),
    ("floor", "floor(x)"),
    ("ceil", "ceil(x)"),
    ("concat", "concat(a, b, ..., axis = -1)"),
    ("cumsum", "cumsum(x, axis = -1)"),
    ("transpose", "transpose(x)"),
    ("split_heads", "split_heads(x, heads)"),
    ("merge_heads", "merge_heads(x)"),
    ("tabulate", "tabulate(d0, d1, ..., (i0, i1, ...) => value)"),
    ("unsqueeze", "unsqueeze(x, axis)"),
    ("slice", "slice(x, start, length, axis = -1)"),
    (
        "attention",
        "attention(q, k, v, mask = (b, h, i, j) => ..., score = (s, b, h, i, j) => ..., scale = 0.125, dropout = 0.1)",
    ),
    ("matmul", "matmul(a, b)"),
    ("fail", "fail(\"message\")"),
];
