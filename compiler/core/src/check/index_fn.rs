//! Index functions: lambdas and `fn` items used as attention masks, score modifiers and
//! `tabulate` bodies, compiled into one [`ScalarFn`] at their use.

use super::*;

impl<'p> Elab<'p> {
    pub(super) fn add_fn(&mut self, f: IndexFn<'p>) -> usize {
        self.fns.push(f);
        self.fns.len() - 1
    }

    /// Compiles an index function (`(b, h, i, j) => ...`, a named mask such as `causal()`, or
    /// masks combined with `and`/`or`/`not`) to a [`ScalarFn`].
    #[allow(clippy::too_many_arguments)]
    pub(super) fn scalar_fn(
        &mut self,
        frame: &mut Frame,
        e: &'p Expr,
        names: &[&str],
        params: &[ScalarType],
        result: Option<ScalarType>,
        what: &str,
    ) -> Result<ScalarFn, Diagnostic> {
        let k = match self.sub(frame, e)? {
            Val::Fn(k) => k,
            other => {
                return Err(Diagnostic::error(
                    "E0202",
                    format!("`{what}` must be an index function"),
                    e.span,
                    format!("this is {}", describe(&other)),
                )
                .with_help(format!("write `{what} = ({}) => ...`", names.join(", "))))
            }
        };
        let mut f = ScalarFn {
            params: params.to_vec(),
            nodes: Vec::new(),
            result: 0,
        };
        let args: Vec<usize> = params
            .iter()
            .enumerate()
            .map(|(i, t)| push_scalar(&mut f, ScalarNode::Param(i), *t))
            .collect();
        let (r, body_span) = self.index_fn_into(k, &mut f, &args, names, what).map_err(|d| {
            if d.code != POISONED && d.primary.span.file != e.span.file {
                d.with_secondary(e.span, format!("used as `{what}` here"))
            } else {
                d
            }
        })?;
        let Some(result) = result else {
            f.result = r;
            return Ok(f);
        };
        let r = match (f.nodes[r].1, result) {
            (a, b) if a == b => r,
            (ScalarType::Int, ScalarType::F32) => push_scalar(
                &mut f,
                ScalarNode::Unary {
                    op: ScalarUnary::ToFloat,
                    a: r,
                },
                ScalarType::F32,
            ),
            (a, b) => {
                return Err(Diagnostic::error(
                    "E0201",
                    format!("`{what}` must give {}, this gives {}", scalar_name(b), scalar_name(a)),
                    body_span,
                    "wrong type",
                )
                .with_help(if b == ScalarType::Bool {
                    "a mask says which keys a query may see: compare, e.g. `j <= i`"
                } else {
                    "a score function returns the new score, e.g. `s - slope * float(i - j)`"
                }))
            }
        };
        f.result = r;
        Ok(f)
    }

    /// Appends index function `k` applied to the scalar nodes `args` to `f`; returns its result
    /// node and the span of the code that computes it.
    pub(super) fn index_fn_into(
        &mut self,
        k: usize,
        f: &mut ScalarFn,
        args: &[usize],
        names: &[&str],
        what: &str,
    ) -> Result<(usize, Span), Diagnostic> {
        match self.fns[k].clone() {
            IndexFn::Lambda {
                params,
                body,
                span,
                mut scope,
            } => {
                if params.len() != args.len() {
                    return Err(Diagnostic::error(
                        "E0202",
                        format!("`{what}` takes {} parameters, ({})", args.len(), names.join(", ")),
                        span,
                        format!("this takes {}", params.len()),
                    ));
                }
                let locals: HashMap<String, usize> = params.iter().map(|p| p.name.clone()).zip(args.iter().copied()).collect();
                let r = self.scalar_expr(&mut scope, f, &locals, body)?;
                Ok((r, body.span))
            }
            IndexFn::Not(a) => {
                let (ra, sa) = self.index_fn_into(a, f, args, names, what)?;
                self.require_bool(f, ra, sa, "not")?;
                Ok((
                    push_scalar(
                        f,
                        ScalarNode::Unary {
                            op: ScalarUnary::Not,
                            a: ra,
                        },
                        ScalarType::Bool,
                    ),
                    sa,
                ))
            }
            IndexFn::And(a, b) | IndexFn::Or(a, b) => {
                let op = if matches!(self.fns[k], IndexFn::And(..)) {
                    ScalarBinary::And
                } else {
                    ScalarBinary::Or
                };
                let (ra, sa) = self.index_fn_into(a, f, args, names, what)?;
                let (rb, sb) = self.index_fn_into(b, f, args, names, what)?;
                let word = if op == ScalarBinary::And { "and" } else { "or" };
                self.require_bool(f, ra, sa, word)?;
                self.require_bool(f, rb, sb, word)?;
                Ok((push_scalar(f, ScalarNode::Binary { op, a: ra, b: rb }, ScalarType::Bool), sa.to(sb)))
            }
        }
    }

    pub(super) fn require_bool(&self, f: &ScalarFn, r: usize, span: Span, word: &str) -> Result<(), Diagnostic> {
        if f.nodes[r].1 == ScalarType::Bool {
            return Ok(());
        }
        Err(Diagnostic::error(
            "E0201",
            format!(
                "`{word}` combines masks, but this index function gives {}",
                scalar_name(f.nodes[r].1)
            ),
            span,
            "not a mask",
        )
        .with_help("only masks (index functions that give true or false) combine with `and`, `or` and `not`"))
    }

    /// Calls an `fn` item: binds its parameters and evaluates its value in a scope of its own.
    pub(super) fn call_fn(
        &mut self,
        frame: &mut Frame,
        r: ItemRef,
        decl: &'p ast::FnDecl,
        args: &'p [CallArg],
        span: Span,
    ) -> Result<Val, Diagnostic> {
        let name = &decl.name.name;
        let mut given: Vec<Option<&'p Expr>> = vec![None; decl.params.len()];
        let mut positional = 0;
        for a in args {
            let slot = match &a.name {
                None => {
                    positional += 1;
                    positional - 1
                }
                Some(n) => decl.params.iter().position(|q| q.name.name == n.name).ok_or_else(|| {
                    Diagnostic::error(
                        "E0202",
                        format!("`{name}` has no parameter `{}`", n.name),
                        n.span,
                        "unknown parameter",
                    )
                    .with_secondary(decl.name.span, "declared here")
                })?,
            };
            if slot >= given.len() {
                return Err(Diagnostic::error(
                    "E0202",
                    format!("too many arguments to `{name}`"),
                    a.value.span,
                    format!("it takes {}", decl.params.len()),
                )
                .with_secondary(decl.name.span, "declared here"));
            }
            given[slot] = Some(&a.value);
        }
        if self.call_depth >= MAX_DEPTH {
            return Err(Diagnostic::error("E0106", "calls nested too deeply", span, "while calling this"));
        }
        let mut scope = Frame {
            inst: frame.inst,
            locals: HashMap::new(),
            fn_module: Some(r.module),
        };
        let mut ellipsis = None;
        for (q, g) in decl.params.iter().zip(given) {
            let Some(arg) = g else {
                return Err(Diagnostic::error(
                    "E0202",
                    format!("missing argument `{}` of `{name}`", q.name.name),
                    span,
                    "in this call",
                )
                .with_secondary(q.name.span, "declared here"));
            };
            let v = self.sub(frame, arg)?;
            let binding = match &q.ty {
                ast::FnParamType::Tensor(t) => {
                    let id = self.tensor_of(v, arg.span)?;
                    self.bind_input(&mut scope, &mut ellipsis, (&q.name, t), id, arg.span, name)?;
                    Binding::Value(id)
                }
                ast::FnParamType::Scalar(kind) => match (kind.name.as_str(), v) {
                    ("int", Val::Const(c @ CtValue::Int(_))) | ("bool", Val::Const(c @ CtValue::Bool(_))) => Binding::Const(c),
                    ("float", Val::Const(c)) if c.as_f64().is_some() => Binding::Const(CtValue::Float(c.as_f64().unwrap_or_default())),
                    (_, other) => {
                        return Err(Diagnostic::error(
                            "E0208",
                            format!("argument `{}` of `{name}` must be {} known at compile time", q.name.name, kind.name),
                            arg.span,
                            format!("this is {}", describe(&other)),
                        )
                        .with_secondary(kind.span, "declared here"))
                    }
                },
            };
            scope.locals.insert(q.name.name.clone(), binding);
        }
        self.call_depth += 1;
        let value = self.sub(&mut scope, &decl.value);
        self.call_depth -= 1;
        match value? {
            Val::Fn(k) => Ok(Val::Fn(k)),
            other => Err(Diagnostic::error(
                "E0202",
                format!("`fn {name}` must give an index function"),
                decl.value.span,
                format!("this is {}", describe(&other)),
            )
            .with_help("an `fn` names a mask or score function: `fn causal() = (b, h, i, j) => j <= i`")),
        }
    }

    pub(super) fn scalar_expr(
        &mut self,
        frame: &mut Frame,
        f: &mut ScalarFn,
        locals: &HashMap<String, usize>,
        e: &'p Expr,
    ) -> Result<usize, Diagnostic> {
        use ScalarType::*;
        let num = |f: &mut ScalarFn, a: usize, b: usize| -> (usize, usize, ScalarType) {
            match (f.nodes[a].1, f.nodes[b].1) {
                (Int, F32) => (
                    push_scalar(
                        f,
                        ScalarNode::Unary {
                            op: ScalarUnary::ToFloat,
                            a,
                        },
                        F32,
                    ),
                    b,
                    F32,
                ),
                (F32, Int) => (
                    a,
                    push_scalar(
                        f,
                        ScalarNode::Unary {
                            op: ScalarUnary::ToFloat,
                            a: b,
                        },
                        F32,
                    ),
                    F32,
                ),
                (t, _) => (a, b, t),
            }
        };
        match &e.kind {
            ExprKind::Path(p) if p.segments.len() == 1 && locals.contains_key(&p.segments[0].name) => Ok(locals[&p.segments[0].name]),
            ExprKind::Index { base, indices } => {
                let tensor = match self.resolve_path(frame, base)? {
                    Val::Tensor(t) => t,
                    other => {
                        return Err(Diagnostic::error(
                            "E0201",
                            format!("`{}` is {}, not a tensor", base.dotted(), describe(&other)),
                            base.span,
                            "cannot index this",
                        ))
                    }
                };
                let ty = self.ty(tensor).clone();
                if ty.rank() != indices.len() {
                    return Err(Diagnostic::error(
                        "E0202",
                        format!(
                            "`{}` has {} dimension(s) but {} index(es) are given",
                            base.dotted(),
                            ty.rank(),
                            indices.len()
                        ),
                        e.span,
                        format!("this is {}", self.type_name(tensor)),
                    ));
                }
                let mut idx = Vec::new();
                for i in indices {
                    let n = self.scalar_expr(frame, f, locals, i)?;
                    if f.nodes[n].1 != Int {
                        return Err(Diagnostic::error(
                            "E0201",
                            "an index must be an integer",
                            i.span,
                            format!("this is {}", scalar_name(f.nodes[n].1)),
                        ));
                    }
                    idx.push(n);
                }
                let t = if ty.dtype == DType::F32 { F32 } else { Int };
                Ok(push_scalar(f, ScalarNode::Load { tensor, indices: idx }, t))
            }
            ExprKind::Neg(x) => {
                let a = self.scalar_expr(frame, f, locals, x)?;
                if f.nodes[a].1 == Bool {
                    return Err(Diagnostic::error("E0201", "cannot negate true or false", x.span, "use `not`"));
                }
                let t = f.nodes[a].1;
                Ok(push_scalar(f, ScalarNode::Unary { op: ScalarUnary::Neg, a }, t))
            }
            ExprKind::Not(x) => {
                let a = self.scalar_expr(frame, f, locals, x)?;
                if f.nodes[a].1 != Bool {
                    return Err(Diagnostic::error(
                        "E0201",
                        "`not` needs true or false",
                        x.span,
                        format!("this is {}", scalar_name(f.nodes[a].1)),
                    ));
                }
                Ok(push_scalar(f, ScalarNode::Unary { op: ScalarUnary::Not, a }, Bool))
            }
            ExprKind::If { cond, then, otherwise } => {
                let c = self.scalar_expr(frame, f, locals, cond)?;
                if f.nodes[c].1 != Bool {
                    return Err(Diagnostic::error(
                        "E0201",
                        "a condition must be true or false",
                        cond.span,
                        format!("this is {}", scalar_name(f.nodes[c].1)),
                    ));
                }
                let a = self.scalar_expr(frame, f, locals, then)?;
                let b = self.scalar_expr(frame, f, locals, otherwise)?;
                let (a, b, t) = num(f, a, b);
                if f.nodes[a].1 != f.nodes[b].1 {
                    return Err(Diagnostic::error(
                        "E0201",
                        "the branches of `if` have different types",
                        e.span,
                        format!("{} and {}", scalar_name(f.nodes[a].1), scalar_name(f.nodes[b].1)),
                    ));
                }
                Ok(push_scalar(f, ScalarNode::Select { cond: c, a, b }, t))
            }
            ExprKind::Binary { op, lhs, rhs } => {
                let a = self.scalar_expr(frame, f, locals, lhs)?;
                let b = self.scalar_expr(frame, f, locals, rhs)?;
                let bad = |f: &ScalarFn| {
                    Diagnostic::error(
                        "E0201",
                        format!(
                            "`{}` cannot combine {} and {}",
                            op.symbol(),
                            scalar_name(f.nodes[a].1),
                            scalar_name(f.nodes[b].1)
                        ),
                        e.span,
                        "in this index function",
                    )
                };
                let (sop, logic, compare) = match op {
                    ast::BinaryOp::Add => (ScalarBinary::Add, false, false),
                    ast::BinaryOp::Sub => (ScalarBinary::Sub, false, false),
                    ast::BinaryOp::Mul => (ScalarBinary::Mul, false, false),
                    ast::BinaryOp::Div => (ScalarBinary::Div, false, false),
                    ast::BinaryOp::Lt => (ScalarBinary::Lt, false, true),
                    ast::BinaryOp::Le => (ScalarBinary::Le, false, true),
                    ast::BinaryOp::Gt => (ScalarBinary::Gt, false, true),
                    ast::BinaryOp::Ge => (ScalarBinary::Ge, false, true),
                    ast::BinaryOp::Eq => (ScalarBinary::Eq, false, true),
                    ast::BinaryOp::Ne => (ScalarBinary::Ne, false, true),
                    ast::BinaryOp::And => (ScalarBinary::And, true, false),
                    ast::BinaryOp::Or => (ScalarBinary::Or, true, false),
                    ast::BinaryOp::MatMul => {
                        return Err(Diagnostic::error(
                            "E0201",
                            "`@` is not defined in an index function",
                            e.span,
                            "scalars only",
                        ))
                    }
                };
                if logic {
                    if f.nodes[a].1 != Bool || f.nodes[b].1 != Bool {
                        return Err(bad(f));
                    }
                    return Ok(push_scalar(f, ScalarNode::Binary { op: sop, a, b }, Bool));
                }
                if f.nodes[a].1 == Bool || f.nodes[b].1 == Bool {
                    if compare && matches!(sop, ScalarBinary::Eq | ScalarBinary::Ne) && f.nodes[a].1 == f.nodes[b].1 {
                        return Ok(push_scalar(f, ScalarNode::Binary { op: sop, a, b }, Bool));
                    }
                    return Err(bad(f));
                }
                let (a, b, t) = num(f, a, b);
                Ok(push_scalar(f, ScalarNode::Binary { op: sop, a, b }, if compare { Bool } else { t }))
            }
            ExprKind::Call { callee, args } if callee.segments.len() == 1 && args.iter().all(|a| a.name.is_none()) => {
                let name = callee.segments[0].name.as_str();
                let mut xs = Vec::new();
                for a in args {
                    xs.push(self.scalar_expr(frame, f, locals, &a.value)?);
                }
                let arity = |n: usize| -> Result<(), Diagnostic> {
                    if xs.len() == n {
                        Ok(())
                    } else {
                        Err(Diagnostic::error(
                            "E0202",
                            format!("`{name}` takes {n} argument(s) in an index function"),
                            e.span,
                            format!("{} given", xs.len()),
                        ))
                    }
                };
                match name {
                    "float" => {
                        arity(1)?;
                        match f.nodes[xs[0]].1 {
                            Int => Ok(push_scalar(f, ScalarNode::Unary { op: ScalarUnary::ToFloat, a: xs[0] }, F32)),
                            F32 => Ok(xs[0]),
                            Bool => Err(Diagnostic::error("E0201", "`float` needs a number", e.span, "this is true or false")),
                        }
                    }
                    "int" => {
                        arity(1)?;
                        match f.nodes[xs[0]].1 {
                            F32 => Ok(push_scalar(f, ScalarNode::Unary { op: ScalarUnary::ToInt, a: xs[0] }, Int)),
                            Int => Ok(xs[0]),
                            Bool => Err(Diagnostic::error("E0201", "`int` needs a number", e.span, "this is true or false")),
                        }
                    }
                    "abs" | "log" | "exp" | "sqrt" | "sin" | "cos" => {
                        arity(1)?;
                        let mut a = xs[0];
                        if f.nodes[a].1 == Bool {
                            return Err(Diagnostic::error("E0201", format!("`{name}` needs a number"), e.span, "this is true or false"));
                        }
                        let op = match name {
                            "abs" => ScalarUnary::Abs,
                            "log" => ScalarUnary::Log,
                            "sqrt" => ScalarUnary::Sqrt,
                            "sin" => ScalarUnary::Sin,
                            "cos" => ScalarUnary::Cos,
                            _ => ScalarUnary::Exp,
                        };
                        if op != ScalarUnary::Abs && f.nodes[a].1 == Int {
                            a = push_scalar(f, ScalarNode::Unary { op: ScalarUnary::ToFloat, a }, F32);
                        }
                        let t = f.nodes[a].1;
                        Ok(push_scalar(f, ScalarNode::Unary { op, a }, t))
                    }
                    "pow" => {
                        arity(2)?;
                        if f.nodes[xs[0]].1 == Bool || f.nodes[xs[1]].1 == Bool {
                            return Err(Diagnostic::error("E0201", "`pow` needs numbers", e.span, "true or false given"));
                        }
                        let to_f32 = |f: &mut ScalarFn, a: usize| if f.nodes[a].1 == Int { push_scalar(f, ScalarNode::Unary { op: ScalarUnary::ToFloat, a }, F32) } else { a };
                        let (a, b) = (to_f32(f, xs[0]), to_f32(f, xs[1]));
                        Ok(push_scalar(f, ScalarNode::Binary { op: ScalarBinary::Pow, a, b }, F32))
                    }
                    "rem" => {
                        arity(2)?;
                        if f.nodes[xs[0]].1 != Int || f.nodes[xs[1]].1 != Int {
                            return Err(Diagnostic::error("E0201", "`rem` needs integers", e.span, "not integers"));
                        }
                        Ok(push_scalar(f, ScalarNode::Binary { op: ScalarBinary::Rem, a: xs[0], b: xs[1] }, Int))
                    }
                    "minimum" | "maximum" => {
                        arity(2)?;
                        if f.nodes[xs[0]].1 == Bool || f.nodes[xs[1]].1 == Bool {
                            return Err(Diagnostic::error("E0201", format!("`{name}` needs numbers"), e.span, "true or false given"));
                        }
                        let (a, b, t) = num(f, xs[0], xs[1]);
                        let op = if name == "minimum" { ScalarBinary::Min } else { ScalarBinary::Max };
                        Ok(push_scalar(f, ScalarNode::Binary { op, a, b }, t))
                    }
                    _ => Err(Diagnostic::error("E0203", format!("`{name}` is not available in an index function"), callee.span, "unknown here")
                        .with_help("index functions use arithmetic, comparisons, `and`/`or`/`not`, `if`, elements `x[i, j]`, and float, int, abs, log, exp, sqrt, sin, cos, pow, rem, minimum, maximum")),
                }
            }
            _ => match self.expr_inner(frame, e)? {
                Val::Const(CtValue::Int(i)) => Ok(push_scalar(f, ScalarNode::Int(i), Int)),
                Val::Const(CtValue::Float(x)) => Ok(push_scalar(f, ScalarNode::F32(x), F32)),
                Val::Const(CtValue::Bool(b)) => Ok(push_scalar(f, ScalarNode::Bool(b), Bool)),
                Val::Dim(Dim::Static(n)) => Ok(push_scalar(f, ScalarNode::Int(n), Int)),
                Val::Dim(Dim::Symbol(s)) => Ok(push_scalar(f, ScalarNode::Symbol(s), Int)),
                Val::Tensor(t) if self.ty(t).rank() == 0 => {
                    let ty = if self.ty(t).dtype == DType::F32 { F32 } else { Int };
                    Ok(push_scalar(
                        f,
                        ScalarNode::Load {
                            tensor: t,
                            indices: vec![],
                        },
                        ty,
                    ))
                }
                other => Err(Diagnostic::error(
                    "E0201",
                    format!("{} cannot be used in an index function", describe(&other)),
                    e.span,
                    "not a scalar",
                )
                .with_help("read one element with `x[i, j]`")),
            },
        }
    }
}

pub(super) fn push_scalar(f: &mut ScalarFn, node: ScalarNode, t: ScalarType) -> usize {
    f.nodes.push((node, t));
    f.nodes.len() - 1
}

fn scalar_name(t: ScalarType) -> &'static str {
    match t {
        ScalarType::Int => "an integer",
        ScalarType::F32 => "an f32 number",
        ScalarType::Bool => "true or false",
    }
}
