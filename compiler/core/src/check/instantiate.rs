//! Instantiating blocks: each block (and the model) becomes an [`Instance`] at its checkpoint
//! path with its compile-time arguments bound; parameters get their paths, `if` members are
//! decided and arrays of layers expanded.

use super::*;

impl<'p> Elab<'p> {
    pub(super) fn instantiate_model(&mut self, r: ItemRef, decl: &'p ast::ModelDecl, config: Rc<ConfigRecord>) -> Option<usize> {
        let env = vec![(decl.config_binding.name.clone(), CtValue::Config(config))];
        self.instantiate(
            r.module,
            &decl.name.name,
            &decl.members,
            env,
            Vec::new(),
            decl.name.span,
            &mut Vec::new(),
        )
    }

    /// Evaluates a compile-time expression with an instance environment.
    pub(super) fn eval_in(&self, env: &[(String, CtValue)], e: &Expr, hint: Option<&Rc<Vec<String>>>) -> Result<CtValue, Diagnostic> {
        let lookup = |p: &ast::Path| ct_lookup(env, p);
        value::eval(e, &lookup, hint).map_err(|d| explain_unknown(d, env))
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn instantiate(
        &mut self,
        module: usize,
        block: &str,
        members: &'p [Member],
        env: Vec<(String, CtValue)>,
        path: Vec<String>,
        decl_span: Span,
        stack: &mut Vec<String>,
    ) -> Option<usize> {
        if self.instances.len() >= MAX_INSTANCES {
            self.errors.push(Diagnostic::error(
                "E0206",
                format!("the model instantiates more than {MAX_INSTANCES} blocks"),
                decl_span,
                "while instantiating this",
            ));
            return None;
        }
        let id = self.instances.len();
        self.instances.push(Instance {
            module,
            block: block.to_string(),
            path,
            env,
            params: Vec::new(),
            children: Vec::new(),
            forward: None,
            decl_span,
            parent: self.current_parent,
        });
        let saved = self.current_parent.replace(id);
        stack.push(block.to_string());
        self.members(id, members, stack);
        stack.pop();
        self.current_parent = saved;
        Some(id)
    }

    pub(super) fn members(&mut self, id: usize, members: &'p [Member], stack: &mut Vec<String>) {
        for m in members {
            match m {
                Member::Param { path, ty, .. } => {
                    let Some(local) = self.new_member(id, path) else { continue };
                    let mut dims = Vec::new();
                    let mut ok = true;
                    for d in &ty.dims {
                        match d {
                            DimExpr::Ellipsis(s) => {
                                self.errors.push(Diagnostic::error(
                                    "E0206",
                                    "a parameter's shape is fixed",
                                    *s,
                                    "`...` is only for forward signatures",
                                ));
                                ok = false;
                            }
                            DimExpr::Expr(e) => match self.static_dim(id, e) {
                                Ok(n) => dims.push(Dim::Static(n)),
                                Err(d) => {
                                    self.errors.push(d);
                                    ok = false;
                                }
                            },
                        }
                    }
                    if ok {
                        self.instances[id].params.push(ParamSlot {
                            local,
                            ty: TensorType::new(abi_dtype(ty.dtype), dims),
                            span: path.span,
                            index: None,
                            used: None,
                        });
                    }
                }
                Member::Instance {
                    path,
                    count,
                    block,
                    args,
                    span,
                } => self.instance_member(id, path, count.as_ref(), block, args, *span, stack),
                Member::If { cond, then, otherwise, .. } => {
                    let env = self.instances[id].env.clone();
                    let lookup = |p: &ast::Path| ct_lookup(&env, p);
                    match value::condition(cond, &lookup) {
                        Ok(true) => self.members(id, then, stack),
                        Ok(false) => self.members(id, otherwise, stack),
                        Err(d) => self.errors.push(explain_unknown(d, &env)),
                    }
                }
                Member::Forward(f) => {
                    if self.instances[id].forward.is_some() {
                        self.errors.push(Diagnostic::error(
                            "E0101",
                            "a block has exactly one forward function",
                            f.span,
                            "second forward here",
                        ));
                    } else {
                        self.instances[id].forward = Some(f);
                    }
                }
            }
        }
    }

    /// The local path of a member about to be declared, or `None` after reporting that the
    /// instance already has one there.
    pub(super) fn new_member(&mut self, id: usize, path: &ast::Path) -> Option<Vec<String>> {
        let local: Vec<String> = path.segments.iter().map(|s| s.name.clone()).collect();
        let Some(first) = self.declared(id, &local) else {
            return Some(local);
        };
        self.errors.push(
            Diagnostic::error(
                "E0101",
                format!("`{}` is declared twice in `{}`", path.dotted(), self.instances[id].block),
                path.span,
                "declared again here",
            )
            .with_secondary(first, "first declared here"),
        );
        None
    }

    /// Where a member of this local path was already declared, if it was.
    pub(super) fn declared(&self, id: usize, local: &[String]) -> Option<Span> {
        let inst = &self.instances[id];
        inst.params
            .iter()
            .find(|q| q.local == local)
            .map(|q| q.span)
            .or_else(|| inst.children.iter().find(|(c, ..)| c == local).map(|(.., s)| *s))
    }

    pub(super) fn static_dim(&self, id: usize, e: &Expr) -> Result<i64, Diagnostic> {
        match self.eval_in(&self.instances[id].env, e, None)? {
            CtValue::Int(n) if n > 0 => Ok(n),
            v => Err(Diagnostic::error("E0206", "invalid dimension", e.span, format!("this is {v}"))
                .with_help("a dimension must be a positive integer")),
        }
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn instance_member(
        &mut self,
        id: usize,
        path: &ast::Path,
        count: Option<&Expr>,
        block: &ast::Path,
        args: &[CallArg],
        span: Span,
        stack: &mut Vec<String>,
    ) {
        let Some(local) = self.new_member(id, path) else { return };
        let module = self.instances[id].module;
        let block_name = block.dotted();
        let found = self.p.lookup(module, &block_name).map(|r| (r, self.p.item(r)));
        let Some((target, Item::Block(decl))) = found else {
            let blocks: Vec<&str> = self
                .p
                .names(module)
                .into_iter()
                .filter(|n| self.p.lookup(module, n).is_some_and(|r| matches!(self.p.item(r), Item::Block(_))))
                .collect();
            let d = Diagnostic::error("E0100", format!("unknown block `{block_name}`"), block.span, "not a block in scope");
            self.errors.push(match did_you_mean(&block_name, blocks.iter().copied()) {
                Some(s) => d.with_help(format!("did you mean `{s}`?")),
                None => d.with_help("define it with `block Name(...) { ... }`, or import it: `use std.{Linear}`"),
            });
            return;
        };
        if stack.contains(&decl.name.name) {
            self.errors.push(
                Diagnostic::error(
                    "E0106",
                    format!("block `{}` contains itself", decl.name.name),
                    block.span,
                    format!("{} → {}", stack.join(" → "), decl.name.name),
                )
                .with_help("a block cannot be instantiated inside itself, directly or through others"),
            );
            return;
        }
        if stack.len() >= MAX_DEPTH {
            self.errors.push(Diagnostic::error(
                "E0106",
                format!("blocks nested more than {MAX_DEPTH} deep"),
                block.span,
                "while instantiating this",
            ));
            return;
        }
        let env = match self.bind_block_args(id, decl, args, span) {
            Some(env) => env,
            None => return,
        };
        let mut base = self.instances[id].path.clone();
        base.extend(local.iter().cloned());
        let before = self.errors.len();
        let child = match count {
            None => match self.instantiate(target.module, &decl.name.name, &decl.members, env, base, span, stack) {
                Some(c) => Child::One(c),
                None => return,
            },
            Some(count) => {
                let n = match self.eval_in(&self.instances[id].env, count, None) {
                    Ok(CtValue::Int(n)) if (0..=10_000).contains(&n) => n as usize,
                    Ok(v) => {
                        self.errors.push(
                            Diagnostic::error("E0206", "invalid instance count", count.span, format!("this is {v}"))
                                .with_help("an array of blocks has 0 to 10000 elements"),
                        );
                        return;
                    }
                    Err(d) => {
                        self.errors.push(d);
                        return;
                    }
                };
                let mut ids = Vec::with_capacity(n);
                for i in 0..n {
                    let mut p = base.clone();
                    p.push(i.to_string());
                    match self.instantiate(target.module, &decl.name.name, &decl.members, env.clone(), p, span, stack) {
                        Some(c) => ids.push(c),
                        None => return,
                    }
                }
                Child::Array(ids)
            }
        };
        let first = match &child {
            Child::One(c) => Some(*c),
            Child::Array(ids) => ids.first().copied(),
        };
        if let Some(c) = first {
            self.attach_context(before, c, "while instantiating");
        }
        self.instances[id].children.push((local, child, path.span));
    }

    /// Errors found inside a block defined elsewhere (the standard library) also point at the
    /// place in the user's file that used it.
    pub(super) fn attach_context(&mut self, before: usize, inst: usize, doing: &str) {
        let user_file = self.p.modules[0].file;
        let mut anchor = (self.instances[inst].decl_span, self.instances[inst].parent);
        while anchor.0.file != user_file {
            let Some(i) = anchor.1 else { return };
            anchor = (self.instances[i].decl_span, self.instances[i].parent);
        }
        let block = self.instances[inst].block.clone();
        for d in &mut self.errors[before..] {
            let in_user_file = d.primary.span.file == user_file || d.secondary.iter().any(|l| l.span.file == user_file);
            if !in_user_file {
                d.secondary.push(lmc_grammar::Label {
                    span: anchor.0,
                    message: format!("{doing} `{block}`, used here"),
                });
            }
        }
    }

    /// Binds a block's parameters from constructor arguments evaluated in the parent.
    pub(super) fn bind_block_args(
        &mut self,
        parent: usize,
        decl: &'p ast::BlockDecl,
        args: &[CallArg],
        span: Span,
    ) -> Option<Vec<(String, CtValue)>> {
        let usage = || {
            let ps: Vec<String> = decl.params.iter().map(|p| format!("{}: {}", p.name.name, p.ty.name)).collect();
            format!("`{}({})`", decl.name.name, ps.join(", "))
        };
        let mut given: Vec<Option<(CtValue, Span)>> = vec![None; decl.params.len()];
        let mut positional = 0;
        for a in args {
            let slot = match &a.name {
                None => {
                    positional += 1;
                    if positional > decl.params.len() {
                        self.errors.push(
                            Diagnostic::error(
                                "E0202",
                                format!("too many arguments to `{}`", decl.name.name),
                                a.value.span,
                                format!("it takes {}", decl.params.len()),
                            )
                            .with_help(format!("declared as {}", usage())),
                        );
                        return None;
                    }
                    positional - 1
                }
                Some(n) => match decl.params.iter().position(|p| p.name.name == n.name) {
                    Some(i) => i,
                    None => {
                        let d = Diagnostic::error(
                            "E0202",
                            format!("`{}` has no parameter `{}`", decl.name.name, n.name),
                            n.span,
                            "unknown parameter",
                        );
                        self.errors
                            .push(match did_you_mean(&n.name, decl.params.iter().map(|p| p.name.name.as_str())) {
                                Some(s) => d.with_help(format!("did you mean `{s}`?")),
                                None => d.with_help(format!("declared as {}", usage())),
                            });
                        return None;
                    }
                },
            };
            if given[slot].is_some() {
                self.errors.push(Diagnostic::error(
                    "E0202",
                    format!("parameter `{}` is given twice", decl.params[slot].name.name),
                    a.value.span,
                    "given again here",
                ));
                return None;
            }
            match self.eval_in(&self.instances[parent].env, &a.value, None) {
                Ok(v) => given[slot] = Some((v, a.value.span)),
                Err(d) => {
                    self.errors.push(d);
                    return None;
                }
            }
        }
        let mut env = Vec::new();
        for (param, g) in decl.params.iter().zip(given) {
            let (value, vspan) = match (g, &param.default) {
                (Some(v), _) => v,
                (None, Some(d)) => match self.eval_in(&env, d, None) {
                    Ok(v) => (v, d.span),
                    Err(e) => {
                        self.errors.push(e);
                        return None;
                    }
                },
                (None, None) => {
                    self.errors.push(
                        Diagnostic::error(
                            "E0202",
                            format!("missing argument `{}` of `{}`", param.name.name, decl.name.name),
                            span,
                            "in this instance",
                        )
                        .with_secondary(param.name.span, "declared here")
                        .with_help(format!("declared as {}", usage())),
                    );
                    return None;
                }
            };
            let value = match (param.ty.name.as_str(), value) {
                ("int", v @ CtValue::Int(_))
                | ("float", v @ CtValue::Float(_))
                | ("bool", v @ CtValue::Bool(_))
                | ("str", v @ CtValue::Str(_)) => v,
                ("float", CtValue::Int(i)) => CtValue::Float(i as f64),
                ("str", CtValue::Enum { value, .. }) => CtValue::Str(value),
                (ty, CtValue::Config(c)) if c.name == ty => CtValue::Config(c),
                (ty, v) => {
                    let expected = match ty {
                        "int" => "an integer".to_string(),
                        "float" => "a number".to_string(),
                        "bool" => "true or false".to_string(),
                        "str" => "a string".to_string(),
                        other => format!("config {other}"),
                    };
                    self.errors.push(
                        Diagnostic::error(
                            "E0202",
                            format!("argument `{}` of `{}` must be {expected}", param.name.name, decl.name.name),
                            vspan,
                            format!("this is {v}"),
                        )
                        .with_secondary(param.ty.span, "declared here"),
                    );
                    return None;
                }
            };
            env.push((param.name.name.clone(), value));
        }
        Some(env)
    }

    /// Warnings for declared parameters that no forward reads, grouped at the place in the
    /// user's file that declared them: the `param` itself, or the instance that brought them in
    /// (a standard-library block's parameters are reported where the block is used).
    pub(super) fn unused_param_warnings(&self) -> Vec<Diagnostic> {
        let user_file = self.p.modules[0].file;
        let mut groups: Vec<(Span, Vec<String>)> = Vec::new();
        for (id, inst) in self.instances.iter().enumerate() {
            for q in inst.params.iter().filter(|q| q.index.is_none()) {
                let mut name = inst.path.clone();
                name.extend(q.local.iter().cloned());
                let mut anchor = (q.span, Some(id));
                while anchor.0.file != user_file {
                    let Some(i) = anchor.1 else { break };
                    anchor = (self.instances[i].decl_span, self.instances[i].parent);
                }
                match groups.iter_mut().find(|(s, _)| *s == anchor.0) {
                    Some((_, names)) => names.push(name.join(".")),
                    None => groups.push((anchor.0, vec![name.join(".")])),
                }
            }
        }
        groups
            .into_iter()
            .map(|(span, names)| {
                let (message, label) = match names.as_slice() {
                    [one] => (format!("parameter `{one}` is never used"), "declared here".to_string()),
                    many => {
                        let shown: Vec<&str> = many.iter().take(4).map(String::as_str).collect();
                        let more = if many.len() > 4 {
                            format!(" and {} more", many.len() - 4)
                        } else {
                            String::new()
                        };
                        (
                            format!("{} parameters are never used: {}{more}", many.len(), shown.join(", ")),
                            "declared by this".to_string(),
                        )
                    }
                };
                let help = if names.len() == 1 {
                    "remove it, or use it"
                } else {
                    "remove them, or use them"
                };
                Diagnostic::warning("W0300", message, span, label).with_help(format!(
                    "{help} in the forward function; unused parameters are not read from the checkpoint"
                ))
            })
            .collect()
    }
}
