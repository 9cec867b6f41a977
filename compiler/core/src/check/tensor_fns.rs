//! Built-ins that models of the Hub need beyond the core ops: `concat` (an op of its own, so it
//! has a backward pass), comparisons of tensors and `int(x)` (index functions underneath),
//! `cumsum` (a `scan` underneath, so decoding carries it as a state), and `int`, `floor`,
//! `ceil` of compile-time numbers in a forward body.

use super::*;

impl<'p> Elab<'p> {
    /// `a < b`, `a == b`, ... of tensors (broadcasting): an i64 tensor of 1 where it holds and
    /// 0 elsewhere. An integer compared with an f32 is compared as an f32.
    pub(super) fn compare(&mut self, op: ast::BinaryOp, l: ValueId, r: ValueId, span: Span) -> Result<Val, Diagnostic> {
        let scalar_op = match op {
            ast::BinaryOp::Eq => ScalarBinary::Eq,
            ast::BinaryOp::Ne => ScalarBinary::Ne,
            ast::BinaryOp::Lt => ScalarBinary::Lt,
            ast::BinaryOp::Le => ScalarBinary::Le,
            ast::BinaryOp::Gt => ScalarBinary::Gt,
            ast::BinaryOp::Ge => ScalarBinary::Ge,
            other => {
                return Err(Diagnostic::error(
                    "E0201",
                    format!("`{}` is not defined on tensors", other.symbol()),
                    span,
                    "logic is for compile-time values and masks",
                )
                .with_help("a comparison of tensors gives 0 or 1: combine two with `float(a) * float(b)`"))
            }
        };
        let dims = self.broadcast_dims(l, r, span)?;
        if dims.is_empty() {
            return Err(Diagnostic::error(
                "E0201",
                format!("`{}` of two scalar tensors is not supported", op.symbol()),
                span,
                "both sides are scalars",
            )
            .with_help("compare compile-time values, or tensors with at least one axis"));
        }
        let (lt, rt) = (self.ty(l).clone(), self.ty(r).clone());
        let mut f = ScalarBuilder::new(dims.len());
        let mut a = f.load_broadcast_as(l, &lt.dims, &dims, scalar_type(lt.dtype));
        let mut b = f.load_broadcast_as(r, &rt.dims, &dims, scalar_type(rt.dtype));
        if lt.dtype != rt.dtype {
            let to_float = |f: &mut ScalarBuilder, x| f.unary(ScalarUnary::ToFloat, x, ScalarType::F32);
            if lt.dtype == DType::F32 {
                b = to_float(&mut f, b);
            } else {
                a = to_float(&mut f, a);
            }
        }
        let holds = f.binary(scalar_op, a, b, ScalarType::Bool);
        let (one, zero) = (f.int(1), f.int(0));
        let value = f.select(holds, one, zero);
        self.push(Op::Tabulate { f: f.finish(value) }, TensorType::new(DType::I64, dims), span)
            .map(Val::Tensor)
    }

    /// `argmax(x, axis, keepdim)`: the index along `axis` of the largest element, the first of
    /// equal ones (as `torch.argmax`), as i64. Two max-reductions underneath: the largest
    /// value, then the largest `-index` among the elements equal to it (others count as
    /// `-2^25`, below every index an f32 holds exactly). A row without a largest element (NaN)
    /// gives 2^25, an index that `gather` refuses. Integers carry no gradient: the backward
    /// pass stops here.
    pub(super) fn argmax(&mut self, x: ValueId, axis: usize, keepdim: bool, span: Span) -> Result<Val, Diagnostic> {
        let t = self.ty(x).clone();
        let rank = t.rank();
        let mut kept = t.dims.clone();
        kept[axis] = Dim::Static(1);
        let top = self.push(
            Op::Reduce {
                op: ReduceOp::Max,
                x,
                axis,
                keepdim: true,
            },
            TensorType::new(DType::F32, kept.clone()),
            span,
        )?;
        let mut f = ScalarBuilder::new(rank);
        let element = f.load(x, (0..rank).collect());
        let zero = f.int(0);
        let top_element = f.load(top, (0..rank).map(|k| if k == axis { zero } else { k }).collect());
        let is_top = f.binary(ScalarBinary::Eq, element, top_element, ScalarType::Bool);
        let index = f.unary(ScalarUnary::ToFloat, axis, ScalarType::F32);
        let negated = f.unary(ScalarUnary::Neg, index, ScalarType::F32);
        let below_all = f.float(-ARGMAX_NONE);
        let candidate = f.select(is_top, negated, below_all);
        let candidates = self.push(
            Op::Tabulate { f: f.finish(candidate) },
            TensorType::new(DType::F32, t.dims.clone()),
            span,
        )?;
        let mut out = t.dims;
        if keepdim {
            out[axis] = Dim::Static(1);
        } else {
            out.remove(axis);
        }
        let best = self.push(
            Op::Reduce {
                op: ReduceOp::Max,
                x: candidates,
                axis,
                keepdim,
            },
            TensorType::new(DType::F32, out.clone()),
            span,
        )?;
        let mut f = ScalarBuilder::new(out.len());
        let element = f.load(best, (0..out.len()).collect());
        let index = f.unary(ScalarUnary::Neg, element, ScalarType::F32);
        let value = f.unary(ScalarUnary::ToInt, index, ScalarType::Int);
        self.push(Op::Tabulate { f: f.finish(value) }, TensorType::new(DType::I64, out), span)
            .map(Val::Tensor)
    }

    /// `int(x)`, `floor(x)`, `ceil(x)` (`name`): of compile-time numbers (`a / b` of integers
    /// rounded exactly, as in config expressions), or `int` of an f32 tensor, toward zero as
    /// torch's `.long()` rounds.
    pub(super) fn rounding(&mut self, frame: &mut Frame, name: &str, positional: &[&'p Expr], span: Span) -> Result<Val, Diagnostic> {
        let [x] = positional else {
            return Err(Diagnostic::error(
                "E0202",
                format!("`{name}` takes one value, found {}", positional.len()),
                span,
                "in this call",
            ));
        };
        if let ExprKind::Binary {
            op: ast::BinaryOp::Div,
            lhs,
            rhs,
        } = &x.kind
        {
            if let (Val::Const(CtValue::Int(a)), Val::Const(CtValue::Int(b))) = (self.sub(frame, lhs)?, self.sub(frame, rhs)?) {
                return value::round_quotient(name, a, b, rhs.span).map(Val::Const);
            }
        }
        match self.sub(frame, x)? {
            Val::Const(c @ (CtValue::Int(_) | CtValue::Float(_))) => value::round_number(name, c, x.span).map(Val::Const),
            Val::Tensor(id) if name == "int" => {
                let t = self.ty(id).clone();
                if t.dtype != DType::F32 {
                    return Ok(Val::Tensor(id));
                }
                let mut f = ScalarBuilder::new(t.rank());
                let element = f.load(id, (0..t.rank()).collect());
                let value = f.unary(ScalarUnary::ToInt, element, ScalarType::Int);
                self.push(Op::Tabulate { f: f.finish(value) }, TensorType::new(DType::I64, t.dims), span)
                    .map(Val::Tensor)
            }
            other => Err(Diagnostic::error(
                "E0201",
                format!("`{name}` takes a number{}", if name == "int" { " or an f32 tensor" } else { "" }),
                x.span,
                format!("this is {}", describe(&other)),
            )
            .with_help("`int(x)` converts a tensor to integers, rounding toward zero")),
        }
    }

    /// The `axis = ...` argument of a built-in: an axis of a rank-`rank` tensor, negative axes
    /// counting from the end; the last when not given.
    fn axis_argument(
        &mut self,
        frame: &mut Frame,
        named: &[(&ast::Ident, &'p Expr)],
        rank: usize,
        what: &str,
    ) -> Result<usize, Diagnostic> {
        let rank = rank as i64;
        let Some((_, a)) = named.iter().find(|(n, _)| n.name == "axis") else {
            return Ok((rank - 1).max(0) as usize);
        };
        match self.sub(frame, a)? {
            Val::Const(CtValue::Int(i)) if (-rank..rank).contains(&i) => Ok(i.rem_euclid(rank) as usize),
            other => Err(Diagnostic::error(
                "E0202",
                format!("`{what}` takes an axis from {} to {}", -rank, rank - 1),
                a.span,
                format!(
                    "this is {}",
                    if let Val::Const(c) = &other {
                        c.to_string()
                    } else {
                        describe(&other)
                    }
                ),
            )
            .with_help("negative axes count from the end: -1 is the last")),
        }
    }

    /// `concat(a, b, ..., axis = -1)`: tensors joined along an axis of fixed length.
    pub(super) fn concat(
        &mut self,
        frame: &mut Frame,
        positional: &[&'p Expr],
        named: &[(&ast::Ident, &'p Expr)],
        span: Span,
    ) -> Result<Val, Diagnostic> {
        let mut parts = Vec::new();
        for e in positional {
            let v = self.sub(frame, e)?;
            parts.push((self.tensor_of(v, e.span)?, e.span));
        }
        let Some(&(first, first_span)) = parts.first() else {
            return Err(
                Diagnostic::error("E0202", "`concat` needs tensors to join", span, "nothing to join")
                    .with_help("write `concat(a, b, axis = -1)`"),
            );
        };
        let t = self.ty(first).clone();
        if t.rank() == 0 {
            return Err(Diagnostic::error(
                "E0200",
                "`concat` joins tensors along an axis, and this is a scalar",
                first_span,
                "a scalar",
            ));
        }
        let axis = self.axis_argument(frame, named, t.rank(), "concat")?;
        for &(p, pspan) in &parts {
            let pt = self.ty(p).clone();
            if pt.dtype != t.dtype {
                return Err(Diagnostic::error(
                    "E0201",
                    format!(
                        "`concat` joins tensors of one element type: {} and {}",
                        self.type_name(first),
                        self.type_name(p)
                    ),
                    pspan,
                    format!("this is {}", self.type_name(p)),
                )
                .with_secondary(first_span, format!("this is {}", self.type_name(first)))
                .with_help("convert with `float(x)` or `int(x)` first"));
            }
            let agrees = pt.rank() == t.rank() && pt.dims.iter().zip(&t.dims).enumerate().all(|(k, (a, b))| k == axis || a == b);
            if !agrees {
                return Err(Diagnostic::error(
                    "E0200",
                    format!(
                        "`concat` along axis {axis} needs the other axes equal: {} and {}",
                        self.type_name(first),
                        self.type_name(p)
                    ),
                    pspan,
                    format!("this is {}", self.type_name(p)),
                )
                .with_secondary(first_span, format!("this is {}", self.type_name(first))));
            }
        }
        for &(p, pspan) in &parts {
            let pt = self.ty(p).clone();
            if let Dim::Symbol(_) = pt.dims[axis] {
                return Err(Diagnostic::error(
                    "E0207",
                    format!(
                        "`concat` joins along axes of fixed length, and this one is {}",
                        self.graph.dim_name(pt.dims[axis])
                    ),
                    pspan,
                    format!("this is {}", self.type_name(p)),
                )
                .with_help("join along a feature axis (`axis = -1`); a sequence axis has a length known only at run time"));
            }
        }
        if parts.len() == 1 {
            return Ok(Val::Tensor(first));
        }
        let op = Op::Concat {
            parts: parts.iter().map(|p| p.0).collect(),
            axis,
        };
        let ty = infer_type(&self.graph, &op)
            .ok_or_else(|| Diagnostic::error("E0206", "internal error: a concat without a type", span, "here"))?;
        self.push(op, ty, span).map(Val::Tensor)
    }

    /// `cumsum(x, axis = -1)`: running sums of an f32 tensor along an axis, as a `scan` whose
    /// state is the sum so far (so a decode step carries it along the sequence).
    pub(super) fn cumsum(
        &mut self,
        frame: &mut Frame,
        positional: &[&'p Expr],
        named: &[(&ast::Ident, &'p Expr)],
        span: Span,
    ) -> Result<Val, Diagnostic> {
        let [x] = positional else {
            return Err(Diagnostic::error(
                "E0202",
                format!("`cumsum` takes one tensor, found {}", positional.len()),
                span,
                "in this call",
            )
            .with_help("write `cumsum(x, axis = -1)`"));
        };
        let v = self.sub(frame, x)?;
        let arg_span = x.span;
        let x = self.tensor_of(v, arg_span)?;
        if self.ty(x).dtype != DType::F32 {
            return Err(Diagnostic::error(
                "E0201",
                "`cumsum` needs f32 values",
                arg_span,
                format!("this is {}", self.type_name(x)),
            )
            .with_help("convert integers with `float(x)`, and back with `int(x)`"));
        }
        let t = self.ty(x).clone();
        if t.rank() == 0 {
            return Err(Diagnostic::error(
                "E0200",
                "`cumsum` runs along an axis, and this is a scalar",
                self.span_of(x),
                "a scalar",
            ));
        }
        let axis = self.axis_argument(frame, named, t.rank(), "cumsum")?;
        let mut state = t.clone();
        state.dims.remove(axis);
        let zero = if state.rank() == 0 {
            self.push(Op::Constant(0.0), state.clone(), span)?
        } else {
            let mut f = ScalarBuilder::new(state.rank());
            let z = f.float(0.0);
            self.push(Op::Tabulate { f: f.finish(z) }, state.clone(), span)?
        };
        let body_start = self.push(Op::ScanArg(0), state.clone(), span)?;
        let step = self.push(Op::ScanArg(1), state.clone(), span)?;
        let sum = self.push(
            Op::Binary {
                op: BinaryOp::Add,
                lhs: body_start,
                rhs: step,
            },
            state,
            span,
        )?;
        let scan = Scan {
            axis,
            reverse: false,
            init: vec![zero],
            xs: vec![x],
            body_start,
            next: vec![sum],
            outputs: vec![sum],
        };
        let scan = self.push(Op::Scan(Box::new(scan)), TensorType::new(DType::F32, vec![]), span)?;
        // A scan's results follow it: the stacked sums, then the final sum (unused).
        let running = self.push(Op::ScanResult { scan, index: 0 }, t, span)?;
        let total = Op::ScanResult { scan, index: 1 };
        let total_ty = infer_type(&self.graph, &total)
            .ok_or_else(|| Diagnostic::error("E0206", "internal error: a scan result without a type", span, "here"))?;
        self.push(total, total_ty, span)?;
        Ok(Val::Tensor(running))
    }
}

/// What [`Elab::argmax`] gives a row with no largest element: 2^25, past every index an f32
/// holds exactly.
const ARGMAX_NONE: f64 = 33_554_432.0;
