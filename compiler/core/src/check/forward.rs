//! Elaborating a forward body: statements, expressions and names are evaluated symbolically
//! into IR nodes, with element types and shapes inferred and checked on the way.

use super::*;

impl<'p> Elab<'p> {
    /// Runs the model's forward: inputs become graph inputs and symbols.
    pub(super) fn run_model(&mut self, root: usize) {
        let Some(forward) = self.instances[root].forward else {
            self.errors.push(
                Diagnostic::error(
                    "E0205",
                    format!("model `{}` has no forward function", self.instances[root].block),
                    self.instances[root].decl_span,
                    "declared here",
                )
                .with_help("add `forward(inputs) -> (outputs) { ... }`"),
            );
            return;
        };
        let ast::Outputs::Named(outputs) = &forward.outputs else {
            let ast::Outputs::Single(t) = &forward.outputs else {
                unreachable!()
            };
            self.errors.push(
                Diagnostic::error("E0205", "a model's outputs are named", t.span, "unnamed output")
                    .with_help("write `-> (last_hidden_state: f32[B, T, c.d])`"),
            );
            return;
        };
        let mut frame = Frame::new(root);
        for input in forward.inputs.iter() {
            let index = self.graph.inputs.len();
            if frame.locals.contains_key(&input.name.name) {
                self.errors.push(Diagnostic::error(
                    "E0101",
                    format!("input `{}` is declared twice", input.name.name),
                    input.name.span,
                    "declared again here",
                ));
                continue;
            }
            let input_ty = match &input.ty {
                ast::InputType::Tensor(t) => t,
                ast::InputType::IndexFn(span) => {
                    self.errors.push(
                        Diagnostic::error("E0206", "a model's inputs are tensors", *span, "an index function")
                            .with_help("build the mask inside the model from tensor inputs, e.g. `padding(attention_mask)`"),
                    );
                    continue;
                }
            };
            let absent = input.default.as_ref().is_some_and(|d| d.name == "absent");
            if absent && !self.given.contains(&input.name.name) {
                frame.locals.insert(input.name.name.clone(), Binding::Absent);
                continue;
            }
            let mut dims = Vec::new();
            for (axis, d) in input_ty.dims.iter().enumerate() {
                match self.model_input_dim(d, index, axis, &mut frame) {
                    Ok(dim) => dims.push(dim),
                    Err(e) => self.errors.push(e),
                }
            }
            let ty = TensorType::new(abi_dtype(input_ty.dtype), dims);
            let default = input
                .default
                .as_ref()
                .filter(|_| !absent)
                .and_then(|d| match lmc_abi::InputDefault::from_name(&d.name) {
                    Some(default) => Some(default),
                    None => {
                        let help = match did_you_mean(&d.name, lmc_abi::InputDefault::NAMES.iter().copied()) {
                            Some(s) => format!("did you mean `{s}`?"),
                            None => format!("an input's default is one of {}", lmc_abi::InputDefault::NAMES.join(", ")),
                        };
                        self.errors.push(
                            Diagnostic::error(
                                "E0210",
                                format!("unknown default `{}` for input `{}`", d.name, input.name.name),
                                d.span,
                                "not a default",
                            )
                            .with_help(help),
                        );
                        None
                    }
                });
            self.graph.inputs.push(TensorDecl {
                name: input.name.name.clone(),
                ty: ty.clone(),
                index_bound: None,
                default,
            });
            match self.push(Op::Input(index), ty, input.name.span) {
                Ok(id) => {
                    frame.locals.insert(input.name.name.clone(), Binding::Value(id));
                }
                Err(e) => self.errors.push(e),
            }
        }
        self.check_defaults_are_shaped(forward);
        if !self.errors.is_empty() {
            return;
        }
        let Some(values) = self.run_body(&mut frame, forward) else { return };
        if values.len() != outputs.len() {
            let span = forward.body.last().map_or(forward.span, stmt_span);
            self.errors.push(
                Diagnostic::error(
                    "E0205",
                    format!(
                        "`return` gives {} value(s) but {} output(s) are declared",
                        values.len(),
                        outputs.len()
                    ),
                    span,
                    "returned here",
                )
                .with_help("return one value per declared output, in order"),
            );
            return;
        }
        for ((value, vspan), out) in values.into_iter().zip(outputs) {
            // An output that returns `absent` (a loss without its labels) is left out.
            let Some(value) = value else { continue };
            let mut dims = Vec::new();
            for d in &out.ty.dims {
                match self.signature_dim(&frame, d) {
                    Ok(SigDim::Known(dim)) => dims.push(dim),
                    Ok(SigDim::Var(name, span)) => {
                        self.errors.push(
                            Diagnostic::error(
                                "E0100",
                                format!("symbolic dimension `{name}` is not bound by any input"),
                                span,
                                "unknown dimension",
                            )
                            .with_help("every symbolic dimension of an output must appear in an input's type"),
                        );
                        return;
                    }
                    Ok(SigDim::Ellipsis(s)) => {
                        self.errors.push(Diagnostic::error(
                            "E0206",
                            "a model's outputs have a fixed rank",
                            s,
                            "`...` is only for block signatures",
                        ));
                        return;
                    }
                    Err(e) => {
                        self.errors.push(e);
                        return;
                    }
                }
            }
            let declared = TensorType::new(abi_dtype(out.ty.dtype), dims);
            let actual = self.ty(value).clone();
            if actual != declared {
                let (a, d) = (self.graph.type_name(&actual), self.graph.type_name(&declared));
                self.errors.push(
                    Diagnostic::error(
                        "E0204",
                        format!("output `{}` has type {a}, but {d} is declared", out.name.name),
                        vspan,
                        format!("this is {a}"),
                    )
                    .with_secondary(out.ty.span, format!("declared {d}")),
                );
                continue;
            }
            self.graph.outputs.push((
                TensorDecl {
                    name: out.name.name.clone(),
                    ty: declared,
                    index_bound: None,
                    default: None,
                },
                value,
            ));
        }
    }

    /// An input the caller may leave out is made by the runtime in the shape the other inputs
    /// give: each of its symbolic dimensions must be one that an input without a default has.
    fn check_defaults_are_shaped(&mut self, forward: &'p ast::ForwardDecl) {
        let required: Vec<Dim> = self
            .graph
            .inputs
            .iter()
            .filter(|i| i.default.is_none())
            .flat_map(|i| i.ty.dims.iter().copied())
            .collect();
        // By name: an input declared `= absent` and not given has no graph input.
        for decl in &self.graph.inputs {
            let input = forward.inputs.iter().find(|i| i.name.name == decl.name);
            let (Some(_), Some(d)) = (decl.default, input.and_then(|i| i.default.as_ref())) else {
                continue;
            };
            for dim in &decl.ty.dims {
                if let Dim::Symbol(s) = dim {
                    if !required.contains(dim) {
                        let name = &self.graph.symbols[s.0 as usize].name;
                        self.errors.push(
                            Diagnostic::error(
                                "E0210",
                                format!("input `{}` may be left out, but no other input gives its size `{name}`", decl.name),
                                d.span,
                                "its default needs the size from another input",
                            )
                            .with_help(format!("drop the default, or declare `{name}` in an input without one")),
                        );
                    }
                }
            }
        }
    }

    pub(super) fn model_input_dim(&mut self, d: &DimExpr, input: usize, axis: usize, frame: &mut Frame) -> Result<Dim, Diagnostic> {
        match self.signature_dim(frame, d)? {
            SigDim::Known(dim) => Ok(dim),
            SigDim::Ellipsis(s) => Err(Diagnostic::error(
                "E0206",
                "a model's inputs have a fixed rank",
                s,
                "`...` is only for block signatures",
            )),
            SigDim::Var(name, _) => {
                let id = SymbolId(self.graph.symbols.len() as u32);
                self.graph.symbols.push(Symbol {
                    name: name.clone(),
                    max: None,
                    source: (input, axis),
                });
                frame.locals.insert(name, Binding::Dim(Dim::Symbol(id)));
                Ok(Dim::Symbol(id))
            }
        }
    }

    /// Interprets one dimension of a signature: a known dimension, a new name, or `...`.
    pub(super) fn signature_dim(&self, frame: &Frame, d: &DimExpr) -> Result<SigDim, Diagnostic> {
        let e = match d {
            DimExpr::Ellipsis(s) => return Ok(SigDim::Ellipsis(*s)),
            DimExpr::Expr(e) => e,
        };
        if let ExprKind::Path(p) = &e.kind {
            if let [one] = p.segments.as_slice() {
                match frame.locals.get(&one.name) {
                    Some(Binding::Dim(d)) => return Ok(SigDim::Known(*d)),
                    Some(_) => {}
                    None => {
                        if ct_lookup(self.frame_env(frame), p).is_none() {
                            return Ok(SigDim::Var(one.name.clone(), p.span));
                        }
                    }
                }
            }
        }
        match self.eval_in(self.frame_env(frame), e, None)? {
            CtValue::Int(n) if n > 0 => Ok(SigDim::Known(Dim::Static(n))),
            v => Err(Diagnostic::error("E0206", "invalid dimension", e.span, format!("this is {v}"))
                .with_help("a dimension must be a positive integer")),
        }
    }

    /// The compile-time names a frame sees: its instance's, or none in an `fn`.
    pub(super) fn frame_env(&self, frame: &Frame) -> &[(String, CtValue)] {
        if frame.fn_module.is_some() {
            &[]
        } else {
            &self.instances[frame.inst].env
        }
    }

    /// Runs a forward body; returns the values of its `return` with their spans, each a tensor
    /// or `None` for `absent`.
    pub(super) fn run_body(&mut self, frame: &mut Frame, forward: &'p ast::ForwardDecl) -> Option<Vec<(Option<ValueId>, Span)>> {
        let (last, rest) = match forward.body.split_last() {
            Some((last @ Stmt::Return { .. }, rest)) => (last, rest),
            _ => {
                self.errors.push(
                    Diagnostic::error(
                        "E0205",
                        "forward function does not return",
                        forward.span,
                        "no `return` at the end of this body",
                    )
                    .with_help("end the body with `return` and one value per declared output"),
                );
                return None;
            }
        };
        for s in rest {
            self.stmt(frame, s);
        }
        let Stmt::Return { values, .. } = last else { unreachable!() };
        let mut out = Vec::new();
        for v in values {
            match self.expr(frame, v) {
                Some(Val::Tuple(ids)) if values.len() == 1 => out.extend(ids.into_iter().map(|i| (Some(i), v.span))),
                Some(Val::Absent) => out.push((None, v.span)),
                Some(val) => match self.tensor_of(val, v.span) {
                    Ok(id) => out.push((Some(id), v.span)),
                    Err(d) => self.report(d),
                },
                None => {}
            }
        }
        if !self.errors.is_empty() {
            return None;
        }
        Some(out)
    }

    pub(super) fn stmt(&mut self, frame: &mut Frame, s: &'p Stmt) {
        match s {
            Stmt::Return { span, .. } => self.errors.push(
                Diagnostic::error(
                    "E0205",
                    "`return` must be the last statement of a forward function",
                    *span,
                    "returns early",
                )
                .with_help("compute the value in a variable and return it at the end"),
            ),
            Stmt::Assign { names, value, span } => {
                let v = self.expr(frame, value);
                match (names.as_slice(), v) {
                    ([one], Some(v)) => {
                        let b = match v {
                            Val::Tensor(id) => Binding::Value(id),
                            Val::Tuple(ids) => Binding::Tuple(ids),
                            Val::Const(c) => Binding::Const(c),
                            Val::Dim(d) => Binding::Dim(d),
                            Val::Instance(i) => Binding::Instance(i),
                            Val::Array(a) => Binding::Array(a),
                            Val::Fn(k) => Binding::Fn(k),
                            Val::Absent => Binding::Absent,
                        };
                        frame.locals.insert(one.name.clone(), b);
                    }
                    (many, Some(Val::Tuple(ids))) if many.len() == ids.len() => {
                        for (n, id) in many.iter().zip(ids) {
                            frame.locals.insert(n.name.clone(), Binding::Value(id));
                        }
                    }
                    (many, Some(v)) => {
                        let count = if let Val::Tuple(ids) = &v { ids.len() } else { 1 };
                        self.errors.push(Diagnostic::error(
                            "E0205",
                            format!("{} names on the left, but the value has {count} part(s)", many.len()),
                            *span,
                            "in this assignment",
                        ));
                        for n in many {
                            frame.locals.insert(n.name.clone(), Binding::Poisoned);
                        }
                    }
                    (many, None) => {
                        for n in many {
                            frame.locals.insert(n.name.clone(), Binding::Poisoned);
                        }
                    }
                }
            }
            Stmt::For { var, iter, body, .. } => {
                let items = match self.loop_items(frame, iter) {
                    Ok(items) => items,
                    Err(d) => {
                        self.report(d);
                        return;
                    }
                };
                for item in items {
                    frame.locals.insert(var.name.clone(), item);
                    for s in body {
                        self.stmt(frame, s);
                    }
                }
            }
            Stmt::If { cond, then, otherwise, .. } => match self.condition(frame, cond) {
                Ok(true) => then.iter().for_each(|s| self.stmt(frame, s)),
                Ok(false) => otherwise.iter().for_each(|s| self.stmt(frame, s)),
                Err(d) => self.report(d),
            },
        }
    }

    pub(super) fn condition(&mut self, frame: &mut Frame, cond: &'p Expr) -> Result<bool, Diagnostic> {
        match self.expr(frame, cond) {
            Some(Val::Const(CtValue::Bool(b))) => Ok(b),
            Some(other) => Err(Diagnostic::error(
                "E0104",
                "a condition must be true or false, known at compile time",
                cond.span,
                format!("this is {}", describe(&other)),
            )
            .with_help("conditions choose between code paths when the model is compiled, e.g. `c.position == rope`")),
            None => Err(poisoned()),
        }
    }

    /// Evaluates an expression; `None` after reporting an error.
    pub(super) fn expr(&mut self, frame: &mut Frame, e: &'p Expr) -> Option<Val> {
        match self.expr_inner(frame, e) {
            Ok(v) => Some(v),
            Err(d) => {
                self.report(d);
                None
            }
        }
    }

    pub(super) fn sub(&mut self, frame: &mut Frame, e: &'p Expr) -> Result<Val, Diagnostic> {
        self.expr(frame, e).ok_or_else(poisoned)
    }

    pub(super) fn expr_inner(&mut self, frame: &mut Frame, e: &'p Expr) -> Result<Val, Diagnostic> {
        match &e.kind {
            ExprKind::Int(_) | ExprKind::Float(_) | ExprKind::Bool(_) | ExprKind::Str(_) => self.eval_in(&[], e, None).map(Val::Const),
            ExprKind::Path(p) => self.resolve_path(frame, p),
            ExprKind::Neg(x) => match self.sub(frame, x)? {
                Val::Const(c) => value::binary(ast::BinaryOp::Sub, CtValue::Int(0), c, e.span, e.span, x.span).map(Val::Const),
                v => {
                    let id = self.tensor_of(v, x.span)?;
                    self.unary(UnaryOp::Neg, id, e.span)
                }
            },
            ExprKind::Not(x) => match self.sub(frame, x)? {
                Val::Const(CtValue::Bool(b)) => Ok(Val::Const(CtValue::Bool(!b))),
                Val::Fn(k) => Ok(Val::Fn(self.add_fn(IndexFn::Not(k)))),
                v => Err(Diagnostic::error(
                    "E0201",
                    "`not` needs true or false",
                    x.span,
                    format!("this is {}", describe(&v)),
                )),
            },
            ExprKind::If { cond, then, otherwise } => {
                if self.condition(frame, cond)? {
                    self.sub(frame, then)
                } else {
                    self.sub(frame, otherwise)
                }
            }
            ExprKind::Binary {
                op: op @ (ast::BinaryOp::Eq | ast::BinaryOp::Ne),
                lhs,
                rhs,
            } => {
                // A bare name compared with an enum value names one of its variants.
                let (l, r) = match self.expr_inner(frame, lhs) {
                    Ok(l) => {
                        let r = self.enum_operand(frame, rhs, &l)?;
                        (l, r)
                    }
                    Err(d) if d.code == "E0100" => {
                        let r = self.expr_inner(frame, rhs)?;
                        let l = self.enum_operand(frame, lhs, &r).map_err(|_| d)?;
                        (l, r)
                    }
                    Err(d) => return Err(d),
                };
                match (l, r) {
                    (Val::Const(a), Val::Const(b)) => value::binary(*op, a, b, e.span, lhs.span, rhs.span).map(Val::Const),
                    (l, r) => {
                        let (l, r) = (self.tensor_of(l, lhs.span)?, self.tensor_of(r, rhs.span)?);
                        self.compare(*op, l, r, e.span)
                    }
                }
            }
            ExprKind::Binary { op, lhs, rhs } => {
                let (l, r) = (self.expr(frame, lhs), self.expr(frame, rhs));
                let (l, r) = (l.ok_or_else(poisoned)?, r.ok_or_else(poisoned)?);
                if let (Val::Const(a), Val::Const(b)) = (&l, &r) {
                    return value::binary(*op, a.clone(), b.clone(), e.span, lhs.span, rhs.span).map(Val::Const);
                }
                // Masks combine: `padding(attention_mask) and causal()`.
                match (op, &l, &r) {
                    (ast::BinaryOp::And, Val::Fn(a), Val::Fn(b)) => return Ok(Val::Fn(self.add_fn(IndexFn::And(*a, *b)))),
                    (ast::BinaryOp::Or, Val::Fn(a), Val::Fn(b)) => return Ok(Val::Fn(self.add_fn(IndexFn::Or(*a, *b)))),
                    (ast::BinaryOp::And | ast::BinaryOp::Or, Val::Fn(_), other)
                    | (ast::BinaryOp::And | ast::BinaryOp::Or, other, Val::Fn(_)) => {
                        return Err(Diagnostic::error(
                            "E0201",
                            format!(
                                "`{}` combines two index functions, but one side is {}",
                                op.symbol(),
                                describe(other)
                            ),
                            e.span,
                            "in this combination",
                        )
                        .with_help("combine masks with masks: `padding(attention_mask) and causal()`"))
                    }
                    _ => {}
                }
                let (l, r) = (self.tensor_of(l, lhs.span)?, self.tensor_of(r, rhs.span)?);
                match op {
                    ast::BinaryOp::MatMul => self.matmul(l, r, e.span),
                    ast::BinaryOp::Add => self.binary(BinaryOp::Add, "+", l, r, e.span),
                    ast::BinaryOp::Sub => self.binary(BinaryOp::Sub, "-", l, r, e.span),
                    ast::BinaryOp::Mul => self.binary(BinaryOp::Mul, "*", l, r, e.span),
                    ast::BinaryOp::Div => self.binary(BinaryOp::Div, "/", l, r, e.span),
                    other => self.compare(*other, l, r, e.span),
                }
            }
            ExprKind::Call { callee, args } => self.call(frame, callee, args, e.span),
            ExprKind::Lambda { params, body } => Ok(Val::Fn(self.add_fn(IndexFn::Lambda {
                params,
                body,
                span: e.span,
                scope: frame.clone(),
            }))),
            ExprKind::Scan { bindings, along, body } => self.scan(frame, bindings, along.as_deref(), body, e.span),
            ExprKind::Index { base, indices } if matches!(self.resolve_path(frame, base), Ok(Val::Array(_))) => {
                self.array_element(frame, base, indices, e.span)
            }
            ExprKind::Index { base, .. } => Err(Diagnostic::error(
                "E0201",
                format!("`{}[...]` reads one element, which only an index function can do", base.dotted()),
                e.span,
                "not allowed here",
            )
            .with_help("elements are read inside attention masks and scores: `mask = (b, h, i, j) => attention_mask[b, j] == 1`")),
        }
    }

    /// Evaluates `e`; when it is a bare unknown name and `other` is an enum value, the name is
    /// one of that enum's variants.
    pub(super) fn enum_operand(&mut self, frame: &mut Frame, e: &'p Expr, other: &Val) -> Result<Val, Diagnostic> {
        // Compared with an enum value, a bare name that is one of its variants means the variant,
        // even where a member has the same name (`c.position == sinusoidal`).
        if let (ExprKind::Path(p), Val::Const(CtValue::Enum { variants, .. })) = (&e.kind, other) {
            if let [name] = p.segments.as_slice() {
                if variants.contains(&name.name) {
                    return Ok(Val::Const(CtValue::Enum {
                        value: name.name.clone(),
                        variants: variants.clone(),
                    }));
                }
            }
        }
        match self.expr_inner(frame, e) {
            Err(d) if d.code == "E0100" => {
                let (ExprKind::Path(p), Val::Const(CtValue::Enum { variants, .. })) = (&e.kind, other) else {
                    return Err(d);
                };
                let [name] = p.segments.as_slice() else { return Err(d) };
                if variants.contains(&name.name) {
                    return Ok(Val::Const(CtValue::Enum {
                        value: name.name.clone(),
                        variants: variants.clone(),
                    }));
                }
                let d = Diagnostic::error(
                    "E0100",
                    format!("`{}` is not a variant of this enum", name.name),
                    p.span,
                    format!("expected one of {}", variants.join(" | ")),
                );
                Err(match did_you_mean(&name.name, variants.iter().map(String::as_str)) {
                    Some(s) => d.with_help(format!("did you mean `{s}`?")),
                    None => d,
                })
            }
            other => other,
        }
    }

    /// A value used as a tensor: numbers become f32 constants.
    pub(super) fn tensor_of(&mut self, v: Val, span: Span) -> Result<ValueId, Diagnostic> {
        match v {
            Val::Tensor(id) => Ok(id),
            Val::Absent => Err(Diagnostic::error(
                "E0211",
                "this value is `absent`: an input this compile is not given",
                span,
                "absent here",
            )
            .with_help("use such an input under `if given(name) { ... } else { absent }`")),
            Val::Const(c) => match c.as_f64() {
                Some(x) => self.push(Op::Constant(x), TensorType::new(DType::F32, vec![]), span),
                None => Err(Diagnostic::error(
                    "E0201",
                    format!("{} is not a tensor", c.kind_name()),
                    span,
                    format!("this is {c}"),
                )),
            },
            other => Err(Diagnostic::error(
                "E0201",
                format!("expected a tensor, found {}", describe(&other)),
                span,
                "not a tensor",
            )
            .with_help(match other {
                Val::Dim(_) => "use `arange(T)` for the positions 0..T".to_string(),
                Val::Instance(_) => "call the block: `name(x)`".to_string(),
                Val::Fn(_) => "an index function is an attention `mask` or `score`, or the function of `tabulate`".to_string(),
                _ => "use one value at a time".to_string(),
            })),
        }
    }

    /// Resolves a dotted name: a local, a compile-time value, or an instance member.
    pub(super) fn resolve_path(&mut self, frame: &Frame, p: &ast::Path) -> Result<Val, Diagnostic> {
        let first = &p.segments[0].name;
        let rest = &p.segments[1..];
        if let Some(b) = frame.locals.get(first) {
            let no_fields = |what: &str| {
                Diagnostic::error(
                    "E0201",
                    format!("`{first}` is {what} and has no member `{}`", rest[0].name),
                    rest[0].span,
                    "no such member",
                )
            };
            return match b.clone() {
                Binding::Poisoned => Err(poisoned()),
                Binding::Instance(i) if !rest.is_empty() => self.member(i, rest, p),
                Binding::Instance(i) => Ok(Val::Instance(i)),
                _ if !rest.is_empty() => Err(no_fields("a value")),
                Binding::Value(v) => Ok(Val::Tensor(v)),
                Binding::Tuple(v) => Ok(Val::Tuple(v)),
                Binding::Const(c) => Ok(Val::Const(c)),
                Binding::Dim(d) => Ok(Val::Dim(d)),
                Binding::Array(a) => Ok(Val::Array(a)),
                Binding::Fn(k) => Ok(Val::Fn(k)),
                Binding::Absent => Ok(Val::Absent),
            };
        }
        if first == "absent" && rest.is_empty() {
            return Ok(Val::Absent);
        }
        if frame.fn_module.is_some() {
            let d = Diagnostic::error(
                "E0100",
                format!("unknown name `{}`", p.dotted()),
                p.span,
                "not a parameter of this `fn`",
            );
            let names: Vec<&String> = frame.locals.keys().collect();
            return Err(match did_you_mean(first, names.iter().map(|n| n.as_str())) {
                Some(s) => d.with_help(format!("did you mean `{s}`?")),
                None => d.with_help("an `fn` sees only its parameters; pass what it reads as one"),
            });
        }
        let env = &self.instances[frame.inst].env;
        if env.iter().any(|(n, _)| n == first) {
            return match ct_lookup(env, p) {
                Some(v) => Ok(Val::Const(v)),
                None => Err(explain_unknown(
                    Diagnostic::error(
                        "E0100",
                        format!("unknown name `{}`", p.dotted()),
                        p.span,
                        "not a compile-time value in scope",
                    ),
                    env,
                )),
            };
        }
        match self.member(frame.inst, &p.segments, p) {
            Ok(v) => Ok(v),
            Err(d) if d.code == "E0100" => {
                let inst = &self.instances[frame.inst];
                let mut candidates: Vec<String> = frame
                    .locals
                    .iter()
                    .filter(|(_, b)| !matches!(b, Binding::Poisoned))
                    .map(|(k, _)| k.clone())
                    .collect();
                candidates.extend(inst.env.iter().map(|(k, _)| k.clone()));
                candidates.extend(inst.params.iter().map(|q| q.local.join(".")));
                candidates.extend(inst.children.iter().map(|(c, ..)| c.join(".")));
                let dotted = p.dotted();
                let d = Diagnostic::error(
                    "E0100",
                    format!("unknown name `{dotted}`"),
                    p.span,
                    "not a value, input, parameter or block in scope",
                );
                Err(match did_you_mean(&dotted, candidates.iter().map(String::as_str)) {
                    Some(s) => d.with_help(format!("did you mean `{s}`?")),
                    None => d.with_help("values come from `name = ...`, inputs from the forward signature, parameters from `param`, blocks from `name = Block(...)`"),
                })
            }
            Err(d) => Err(d),
        }
    }

    /// Walks `segments` through an instance's parameters and children.
    pub(super) fn member(&mut self, inst: usize, segments: &[ast::Ident], whole: &ast::Path) -> Result<Val, Diagnostic> {
        let names: Vec<&str> = segments.iter().map(|s| s.name.as_str()).collect();
        if let Some(k) = self.instances[inst].params.iter().position(|q| q.local == names) {
            return self.param(inst, k, whole.span).map(Val::Tensor);
        }
        let found = self.instances[inst]
            .children
            .iter()
            .find(|(c, ..)| names.len() >= c.len() && names[..c.len()] == c[..])
            .cloned();
        let Some((prefix, child, _)) = found else {
            return Err(Diagnostic::error(
                "E0100",
                format!("unknown name `{}`", whole.dotted()),
                whole.span,
                "not found",
            ));
        };
        let rest = &segments[prefix.len()..];
        match (child, rest) {
            (Child::One(c), []) => Ok(Val::Instance(c)),
            (Child::One(c), rest) => self.member(c, rest, whole),
            (Child::Array(ids), []) => Ok(Val::Array(ids)),
            (Child::Array(ids), [index, more @ ..]) => {
                let i: usize = index.name.parse().map_err(|_| {
                    Diagnostic::error(
                        "E0201",
                        format!("`{}` is an array of blocks; index it with a number", prefix.join(".")),
                        index.span,
                        "not an index",
                    )
                })?;
                let Some(&c) = ids.get(i) else {
                    return Err(Diagnostic::error(
                        "E0207",
                        format!(
                            "index {i} is past the end of `{}`, which has {} elements",
                            prefix.join("."),
                            ids.len()
                        ),
                        index.span,
                        "out of range",
                    ));
                };
                if more.is_empty() {
                    Ok(Val::Instance(c))
                } else {
                    self.member(c, more, whole)
                }
            }
        }
    }

    /// The graph value of an instance's parameter, registering it on first use.
    pub(super) fn param(&mut self, inst: usize, k: usize, span: Span) -> Result<ValueId, Diagnostic> {
        if let Some(id) = self.instances[inst].params[k].used {
            return Ok(id);
        }
        let slot = &self.instances[inst].params[k];
        let ty = slot.ty.clone();
        let index = match slot.index {
            Some(index) => index,
            None => {
                let mut name = self.instances[inst].path.clone();
                name.extend(slot.local.iter().cloned());
                let index = self.graph.params.len();
                self.graph.params.push(TensorDecl {
                    name: name.join("."),
                    ty: ty.clone(),
                    index_bound: None,
                    default: None,
                });
                self.instances[inst].params[k].index = Some(index);
                index
            }
        };
        let id = self.push(Op::Param(index), ty, span)?;
        if self.scan_depth == 0 {
            self.instances[inst].params[k].used = Some(id);
        }
        Ok(id)
    }
}
