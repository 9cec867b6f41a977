//! The `scan` built-in: a recurrence over one axis whose body is elaborated once into a region
//! of the graph (see ARCHITECTURE.md, "A scan body is a region of the same arena").

use super::*;

impl<'p> Elab<'p> {
    /// `scan(x_t in x, h = h0) along axis { ...; return y }`: elaborates the body once, as a
    /// region of the arena between the scan's arguments and the scan node (see [`Scan`]).
    pub(super) fn scan(
        &mut self,
        frame: &mut Frame,
        bindings: &'p [ast::ScanBinding],
        along: Option<&'p Expr>,
        body: &'p [Stmt],
        span: Span,
    ) -> Result<Val, Diagnostic> {
        let axis = match along {
            None => 1,
            Some(a) => match self.sub(frame, a)? {
                Val::Const(CtValue::Int(n)) if (0..=MAX_SCAN_AXIS).contains(&n) => n as usize,
                other => {
                    return Err(Diagnostic::error(
                        "E0202",
                        "`along` takes an axis number known at compile time",
                        a.span,
                        format!("this is {}", describe(&other)),
                    )
                    .with_help("axes count from 0: `along 1` scans the T of [B, T, D]"))
                }
            },
        };
        // Initial states and scanned tensors, in the enclosing scope.
        let mut states: Vec<(&'p ast::Ident, ValueId, Span)> = Vec::new();
        let mut scanned: Vec<(&'p ast::Ident, ValueId, Span)> = Vec::new();
        for (k, b) in bindings.iter().enumerate() {
            if let Some(prev) = bindings[..k].iter().find(|p| p.name.name == b.name.name) {
                return Err(Diagnostic::error(
                    "E0101",
                    format!("`{}` is bound twice in this scan", b.name.name),
                    b.name.span,
                    "bound again here",
                )
                .with_secondary(prev.name.span, "first bound here"));
            }
            let v = self.sub(frame, &b.value)?;
            let id = self.tensor_of(v, b.value.span)?;
            if b.carry {
                states.push((&b.name, id, b.value.span));
                continue;
            }
            let t = self.ty(id).clone();
            if t.rank() <= axis {
                return Err(Diagnostic::error(
                    "E0200",
                    format!(
                        "`scan` along axis {axis} needs tensors with at least {} axes, and this is {}",
                        axis + 1,
                        self.type_name(id)
                    ),
                    b.value.span,
                    "too few axes",
                )
                .with_help("choose the axis with `along`, e.g. `scan(x_t in x) along 0 { ... }`"));
            }
            if let Some((_, first, first_span)) = scanned.first() {
                let (a, l) = (self.ty(*first).dims[axis], t.dims[axis]);
                if a != l {
                    return Err(Diagnostic::error(
                        "E0200",
                        format!(
                            "scanned tensors differ in length along axis {axis}: {} and {}",
                            self.graph.dim_name(a),
                            self.graph.dim_name(l)
                        ),
                        b.value.span,
                        format!("this has {}", self.graph.dim_name(l)),
                    )
                    .with_secondary(*first_span, format!("this has {}", self.graph.dim_name(a))));
                }
            }
            scanned.push((&b.name, id, b.value.span));
        }
        if scanned.is_empty() {
            return Err(
                Diagnostic::error("E0202", "`scan` needs a tensor to scan", span, "nothing to scan over")
                    .with_help("bind one slice per step with `in`: `scan(x_t in x, h = h0) { ... }`"),
            );
        }
        let (last, rest) = match body.split_last() {
            Some((last @ Stmt::Return { .. }, rest)) => (last, rest),
            _ => {
                return Err(
                    Diagnostic::error("E0205", "a scan body does not return", span, "no `return` at the end of this body")
                        .with_help("end the body with `return` and the step's outputs, e.g. `return h`"),
                )
            }
        };
        // The body: its arguments first, then whatever its statements compute.
        let body_start = ValueId(self.graph.nodes.len() as u32);
        let mut inner = frame.clone();
        for (k, (name, id, _)) in states.iter().enumerate() {
            let ty = self.ty(*id).clone();
            let arg = self.push(Op::ScanArg(k), ty, name.span)?;
            inner.locals.insert(name.name.clone(), Binding::Value(arg));
        }
        for (k, (name, id, _)) in scanned.iter().enumerate() {
            let mut ty = self.ty(*id).clone();
            ty.dims.remove(axis);
            let arg = self.push(Op::ScanArg(states.len() + k), ty, name.span)?;
            inner.locals.insert(name.name.clone(), Binding::Value(arg));
        }
        let before = self.errors.len();
        self.scan_depth += 1;
        for st in rest {
            self.stmt(&mut inner, st);
        }
        let Stmt::Return { values, .. } = last else { unreachable!() };
        let mut outputs = Vec::new();
        for v in values {
            match self.expr(&mut inner, v) {
                Some(Val::Tuple(ids)) if values.len() == 1 => outputs.extend(ids.into_iter().map(|i| (i, v.span))),
                Some(val) => match self.tensor_of(val, v.span) {
                    Ok(id) => outputs.push((id, v.span)),
                    Err(d) => self.report(d),
                },
                None => {}
            }
        }
        self.scan_depth -= 1;
        if self.errors.len() > before {
            return Err(poisoned());
        }
        let mut next = Vec::new();
        for (name, init, init_span) in &states {
            let Some(Binding::Value(id)) = inner.locals.get(&name.name).cloned() else {
                return Err(Diagnostic::error(
                    "E0204",
                    format!("state `{}` must stay a tensor in the scan body", name.name),
                    name.span,
                    "declared here",
                ));
            };
            if self.ty(id) != self.ty(*init) {
                let (a, b) = (self.type_name(*init), self.type_name(id));
                return Err(Diagnostic::error(
                    "E0204",
                    format!("state `{}` starts as {a} but the body makes it {b}", name.name),
                    self.span_of(id),
                    format!("this is {b}"),
                )
                .with_secondary(*init_span, format!("this is {a}"))
                .with_help("a state keeps its type from step to step; reduce or broadcast the new value to the initial shape"));
            }
            next.push(id);
        }
        for (id, vspan) in &outputs {
            if self.ty(*id).rank() < axis {
                return Err(Diagnostic::error(
                    "E0200",
                    format!("a step output of {} cannot be stacked along axis {axis}", self.type_name(*id)),
                    *vspan,
                    "too few axes",
                )
                .with_help("step outputs keep the other axes of the slices, e.g. [B, D] stacked to [B, T, D]"));
            }
        }
        let scan = Scan {
            axis,
            reverse: false,
            init: states.iter().map(|s| s.1).collect(),
            xs: scanned.iter().map(|s| s.1).collect(),
            body_start,
            next,
            outputs: outputs.iter().map(|o| o.0).collect(),
        };
        let count = scan.result_count();
        let scan_id = self.push(Op::Scan(Box::new(scan)), TensorType::new(DType::F32, vec![]), span)?;
        let mut results = Vec::new();
        for index in 0..count {
            let op = Op::ScanResult { scan: scan_id, index };
            // The checks above (axes, lengths, states' types) give every result a type.
            let ty = infer_type(&self.graph, &op)
                .ok_or_else(|| Diagnostic::error("E0206", "internal error: a scan result has no type", span, "in this scan"))?;
            results.push(self.push(op, ty, span)?);
        }
        Ok(if results.len() == 1 {
            Val::Tensor(results[0])
        } else {
            Val::Tuple(results)
        })
    }
}
