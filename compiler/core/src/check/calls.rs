//! Calls in a forward body: block instances are inlined (their inputs bound and checked against
//! the block's signature), `fn` items evaluated, built-ins dispatched.

use super::*;

impl<'p> Elab<'p> {
    pub(super) fn call(&mut self, frame: &mut Frame, callee: &'p ast::Path, args: &'p [CallArg], span: Span) -> Result<Val, Diagnostic> {
        // Locals and members shadow built-ins: a checkpoint may name a layer `attention`.
        let shadowed = |this: &Self, name: &str| {
            let inst = &this.instances[frame.inst];
            frame.locals.contains_key(name)
                || inst.children.iter().any(|(c, ..)| c.len() == 1 && c[0] == name)
                || inst.params.iter().any(|q| q.local.len() == 1 && q.local[0] == name)
        };
        // `fn` items of the module: `causal()`, `padding(attention_mask)`.
        if let [one] = callee.segments.as_slice() {
            let p = self.p;
            let module = frame.fn_module.unwrap_or(self.instances[frame.inst].module);
            let hidden = if frame.fn_module.is_some() {
                frame.locals.contains_key(&one.name)
            } else {
                shadowed(self, &one.name)
            };
            if let (false, Some(r)) = (hidden, p.lookup(module, &one.name)) {
                if let Item::Fn(decl) = p.item(r) {
                    return self.call_fn(frame, r, decl, args, span);
                }
            }
        }
        let target = match callee.segments.as_slice() {
            [one] if !shadowed(self, &one.name) && BUILTINS.iter().any(|(n, _)| *n == one.name) => None,
            _ => Some(self.resolve_path(frame, callee)),
        };
        match target {
            None => self.builtin(frame, &callee.segments[0], args, span),
            Some(Ok(Val::Instance(i))) => self.call_instance(frame, i, args, span),
            Some(Ok(other)) => Err(Diagnostic::error(
                "E0203",
                format!("`{}` is {}, not something to call", callee.dotted(), describe(&other)),
                callee.span,
                "not callable",
            )),
            Some(Err(d)) if d.code == "E0100" && callee.segments.len() == 1 => {
                let name = &callee.segments[0].name;
                let d = Diagnostic::error(
                    "E0203",
                    format!("unknown function `{name}`"),
                    callee.span,
                    "not a built-in function or a block in scope",
                );
                let inst = &self.instances[frame.inst];
                let mut candidates: Vec<String> = BUILTINS.iter().map(|(n, _)| n.to_string()).collect();
                candidates.extend(inst.children.iter().map(|(c, ..)| c.join(".")));
                Err(match did_you_mean(name, candidates.iter().map(String::as_str)) {
                    Some(s) => d.with_help(format!("did you mean `{s}`?")),
                    None => d.with_help(format!(
                        "the built-in functions are: {}",
                        BUILTINS.iter().map(|(n, _)| *n).collect::<Vec<_>>().join(", ")
                    )),
                })
            }
            Some(Err(d)) => Err(d),
        }
    }

    /// Inlines a block instance's forward function.
    pub(super) fn call_instance(&mut self, frame: &mut Frame, inst: usize, args: &'p [CallArg], span: Span) -> Result<Val, Diagnostic> {
        let block = self.instances[inst].block.clone();
        let Some(forward) = self.instances[inst].forward else {
            return Err(
                Diagnostic::error("E0209", format!("block `{block}` has no forward function"), span, "called here")
                    .with_secondary(self.instances[inst].decl_span, "instantiated here"),
            );
        };
        if self.call_depth >= MAX_DEPTH {
            return Err(Diagnostic::error(
                "E0106",
                "block calls nested too deeply",
                span,
                "while calling this",
            ));
        }
        // Arguments, positional then named, in the caller's frame.
        let mut given: Vec<Option<(Val, Span)>> = vec![None; forward.inputs.len()];
        let mut positional = 0;
        for a in args {
            let slot = match &a.name {
                None => {
                    positional += 1;
                    if positional > forward.inputs.len() {
                        return Err(Diagnostic::error(
                            "E0202",
                            format!("too many arguments to `{block}`"),
                            a.value.span,
                            format!("its forward takes {}", forward.inputs.len()),
                        )
                        .with_secondary(forward.span, "forward declared here"));
                    }
                    positional - 1
                }
                Some(n) => forward.inputs.iter().position(|i| i.name.name == n.name).ok_or_else(|| {
                    Diagnostic::error(
                        "E0202",
                        format!("the forward of `{block}` has no input `{}`", n.name),
                        n.span,
                        "unknown input",
                    )
                    .with_secondary(forward.span, "forward declared here")
                })?,
            };
            let v = match forward.inputs[slot].ty {
                ast::InputType::Tensor(_) => Val::Tensor({
                    let v = self.sub(frame, &a.value)?;
                    self.tensor_of(v, a.value.span)?
                }),
                ast::InputType::IndexFn(_) => self.sub(frame, &a.value)?,
            };
            given[slot] = Some((v, a.value.span));
        }
        let mut callee = Frame::new(inst);
        let mut ellipsis: Option<Vec<Dim>> = None;
        for (input, g) in forward.inputs.iter().zip(given) {
            if let Some(d) = &input.default {
                return Err(Diagnostic::error(
                    "E0210",
                    format!("input `{}` of block `{block}` has a default", input.name.name),
                    d.span,
                    "a default",
                )
                .with_help("only a model's inputs can be left out by its caller; a block's caller passes every input"));
            }
            let Some((v, aspan)) = g else {
                return Err(Diagnostic::error(
                    "E0202",
                    format!("missing input `{}` of `{block}`", input.name.name),
                    span,
                    "in this call",
                )
                .with_secondary(input.name.span, "declared here"));
            };
            let binding = match (&input.ty, v) {
                (ast::InputType::Tensor(t), Val::Tensor(id)) => {
                    self.bind_input(&mut callee, &mut ellipsis, (&input.name, t), id, aspan, &block)?;
                    Binding::Value(id)
                }
                (ast::InputType::IndexFn(_), Val::Fn(k)) => Binding::Fn(k),
                (_, other) => {
                    return Err(Diagnostic::error(
                        "E0208",
                        format!("argument `{}` of `{block}` must be an index function", input.name.name),
                        aspan,
                        format!("this is {}", describe(&other)),
                    )
                    .with_secondary(input.name.span, "declared `fn` here")
                    .with_help("pass a mask such as `(b, h, i, j) => j <= i`, or an `fn` of the standard library: `causal()`"))
                }
            };
            callee.locals.insert(input.name.name.clone(), binding);
        }
        self.call_depth += 1;
        let before = self.errors.len();
        let result = self.run_body(&mut callee, forward);
        self.attach_context(before, inst, "while running");
        self.call_depth -= 1;
        let values = result
            .ok_or_else(poisoned)?
            .into_iter()
            .map(|(id, vspan)| match id {
                Some(id) => Ok((id, vspan)),
                None => Err(
                    Diagnostic::error("E0211", format!("the forward of `{block}` returns `absent`"), vspan, "absent here")
                        .with_help("only a model's outputs may be `absent`; a block returns tensors"),
                ),
            })
            .collect::<Result<Vec<_>, _>>()?;
        let declared: Vec<(&ast::TensorType, Option<&str>)> = match &forward.outputs {
            ast::Outputs::Single(t) => vec![(t, None)],
            ast::Outputs::Named(os) => os.iter().map(|o| (&o.ty, Some(o.name.name.as_str()))).collect(),
        };
        if values.len() != declared.len() {
            return Err(Diagnostic::error(
                "E0205",
                format!(
                    "the forward of `{block}` returns {} value(s) but declares {}",
                    values.len(),
                    declared.len()
                ),
                forward.span,
                "declared here",
            ));
        }
        for ((id, vspan), (ty, _)) in values.iter().zip(&declared) {
            let expected = self.expand_type(&callee, &ellipsis, ty)?;
            let actual = self.ty(*id).clone();
            if actual != expected {
                let (a, d) = (self.graph.type_name(&actual), self.graph.type_name(&expected));
                return Err(Diagnostic::error(
                    "E0204",
                    format!("`{block}` returns {a}, but its signature promises {d}"),
                    *vspan,
                    format!("this is {a}"),
                )
                .with_secondary(ty.span, format!("declared {d}"))
                .with_secondary(span, "called here"));
            }
        }
        Ok(if values.len() == 1 {
            Val::Tensor(values[0].0)
        } else {
            Val::Tuple(values.iter().map(|(i, _)| *i).collect())
        })
    }

    /// Matches an argument against a block input's type, binding the signature's names.
    pub(super) fn bind_input(
        &mut self,
        callee: &mut Frame,
        ellipsis: &mut Option<Vec<Dim>>,
        (name, ty): (&ast::Ident, &ast::TensorType),
        id: ValueId,
        aspan: Span,
        block: &str,
    ) -> Result<(), Diagnostic> {
        let actual = self.ty(id).clone();
        let mismatch = |this: &Self, why: String| {
            Diagnostic::error(
                "E0208",
                format!("argument `{}` of `{block}` does not match its declared type", name.name),
                aspan,
                format!("this is {}", this.graph.type_name(&actual)),
            )
            .with_secondary(ty.span, why)
        };
        let dtype = abi_dtype(ty.dtype);
        let dtype_ok = actual.dtype == dtype || (dtype == DType::I64 && actual.dtype == DType::I32);
        if !dtype_ok {
            return Err(mismatch(self, format!("declared {}", ty.dtype.as_str())));
        }
        let dims = &ty.dims;
        let ell = dims.iter().position(|d| matches!(d, DimExpr::Ellipsis(_)));
        let fixed = dims.len() - usize::from(ell.is_some());
        if actual.rank() < fixed || (ell.is_none() && actual.rank() != fixed) {
            return Err(mismatch(
                self,
                format!("declared with {}{fixed} dimension(s)", if ell.is_some() { "at least " } else { "" }),
            ));
        }
        let extra = actual.rank() - fixed;
        let mut a = 0;
        for d in dims {
            match self.signature_dim(callee, d)? {
                SigDim::Ellipsis(_) => {
                    let part = actual.dims[a..a + extra].to_vec();
                    match ellipsis {
                        Some(prev) if *prev != part => {
                            return Err(mismatch(self, "`...` stands for different dimensions in another input".into()))
                        }
                        _ => *ellipsis = Some(part),
                    }
                    a += extra;
                }
                SigDim::Var(name, _) => {
                    callee.locals.insert(name, Binding::Dim(actual.dims[a]));
                    a += 1;
                }
                SigDim::Known(dim) => {
                    if dim != actual.dims[a] {
                        let why = format!(
                            "dimension {} is declared {}, found {}",
                            a,
                            self.graph.dim_name(dim),
                            self.graph.dim_name(actual.dims[a])
                        );
                        return Err(mismatch(self, why));
                    }
                    a += 1;
                }
            }
        }
        Ok(())
    }

    /// A signature type with its names and `...` replaced by what the call bound.
    pub(super) fn expand_type(&self, frame: &Frame, ellipsis: &Option<Vec<Dim>>, t: &ast::TensorType) -> Result<TensorType, Diagnostic> {
        let mut dims = Vec::new();
        for d in &t.dims {
            match self.signature_dim(frame, d)? {
                SigDim::Known(dim) => dims.push(dim),
                SigDim::Ellipsis(s) => match ellipsis {
                    Some(e) => dims.extend_from_slice(e),
                    None => {
                        return Err(Diagnostic::error(
                            "E0206",
                            "`...` in an output needs `...` in an input",
                            s,
                            "nothing to stand for",
                        ))
                    }
                },
                SigDim::Var(name, s) => {
                    return Err(Diagnostic::error(
                        "E0100",
                        format!("dimension `{name}` is not bound by any input"),
                        s,
                        "unknown dimension",
                    )
                    .with_help("every named dimension of an output must appear in an input's type"))
                }
            }
        }
        Ok(TensorType::new(abi_dtype(t.dtype), dims))
    }
}
