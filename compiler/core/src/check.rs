//! AST → checked IR. Resolves names, evaluates the config, infers element types and symbolic
//! shapes, and reports every problem as a [`Diagnostic`] pointing at the source.

use crate::config::{eval_const, evaluate_config, ConfigOverrides};
use crate::ir::*;
use crate::suggest::did_you_mean;
use lmc_abi::{Bound, DType};
use lmc_grammar::ast::{self, CallArg, Expr, ExprKind, Item, Stmt};
use lmc_grammar::{Diagnostic, SourceFile, Span};
use std::collections::HashMap;

/// Why a model could not be checked.
#[derive(Debug)]
pub enum CheckError {
    /// Problems in the source, with spans.
    Diagnostics(Vec<Diagnostic>),
    /// A request that names nothing in the file (`FILE:NAME` with an unknown NAME).
    Selection(String),
}

/// A checked model: the graph, and warnings found on the way.
#[derive(Debug)]
pub struct Checked {
    pub graph: Graph,
    pub warnings: Vec<Diagnostic>,
}

/// The names of the models a file defines, in order.
pub fn model_names(file: &ast::File) -> Vec<String> {
    file.items
        .iter()
        .filter_map(|i| match i {
            Item::Model(m) => Some(m.name.name.clone()),
            _ => None,
        })
        .collect()
}

/// Checks one model of a file (the only one when `model` is `None`) with the given config
/// overrides, and builds its IR graph.
pub fn check_model(file: &ast::File, source: &SourceFile, model: Option<&str>, overrides: &ConfigOverrides) -> Result<Checked, CheckError> {
    let diags = file_level_errors(file);
    if !diags.is_empty() {
        return Err(CheckError::Diagnostics(diags));
    }
    let models: Vec<&ast::ModelDecl> = file
        .items
        .iter()
        .filter_map(|i| match i {
            Item::Model(m) => Some(m),
            _ => None,
        })
        .collect();
    let names: Vec<&str> = models.iter().map(|m| m.name.name.as_str()).collect();
    let decl = match model {
        Some(name) => models.iter().find(|m| m.name.name == name).copied().ok_or_else(|| {
            let hint = match did_you_mean(name, names.iter().copied()) {
                Some(s) => format!("did you mean `{s}`?"),
                None => format!(
                    "it defines: {}",
                    if names.is_empty() {
                        "no models".to_string()
                    } else {
                        names.join(", ")
                    }
                ),
            };
            CheckError::Selection(format!("{} defines no model `{name}`; {hint}", source.name))
        })?,
        None => match models.as_slice() {
            [only] => *only,
            [] => return Err(CheckError::Selection(format!("{} defines no model", source.name))),
            _ => {
                return Err(CheckError::Selection(format!(
                    "{} defines several models ({}); choose one with {}:NAME",
                    source.name,
                    names.join(", "),
                    source.name
                )))
            }
        },
    };
    let config_decl = file
        .items
        .iter()
        .find_map(|i| match i {
            Item::Config(c) if c.name.name == decl.config_type.name => Some(c),
            _ => None,
        })
        .ok_or_else(|| {
            let configs: Vec<&str> = file
                .items
                .iter()
                .filter_map(|i| match i {
                    Item::Config(c) => Some(c.name.name.as_str()),
                    _ => None,
                })
                .collect();
            let d = Diagnostic::error(
                "E0100",
                format!("unknown config `{}`", decl.config_type.name),
                decl.config_type.span,
                "no config of this name in the file",
            );
            CheckError::Diagnostics(vec![match did_you_mean(&decl.config_type.name, configs.iter().copied()) {
                Some(s) => d.with_help(format!("did you mean `{s}`?")),
                None => d.with_help("declare it with `config Name { key = value }`"),
            }])
        })?;
    let config = evaluate_config(config_decl, overrides).map_err(CheckError::Diagnostics)?;
    let mut checker = Checker {
        source,
        decl,
        config,
        graph: None,
        spans: Vec::new(),
        errors: Vec::new(),
        used_params: Vec::new(),
        param_nodes: HashMap::new(),
    };
    let graph = checker.run();
    match graph {
        Some(graph) if checker.errors.is_empty() => {
            debug_assert_eq!(graph.verify(), Ok(()));
            let warnings = checker.unused_param_warnings(&graph);
            Ok(Checked { graph, warnings })
        }
        _ => Err(CheckError::Diagnostics(checker.errors)),
    }
}

/// Duplicate item names.
fn file_level_errors(file: &ast::File) -> Vec<Diagnostic> {
    let mut seen: HashMap<(&str, bool), Span> = HashMap::new();
    let mut errors = Vec::new();
    for item in &file.items {
        let (name, is_model) = match item {
            Item::Config(c) => (&c.name, false),
            Item::Model(m) => (&m.name, true),
        };
        if let Some(first) = seen.insert((name.name.as_str(), is_model), name.span) {
            let kind = if is_model { "model" } else { "config" };
            errors.push(
                Diagnostic::error(
                    "E0101",
                    format!("{kind} `{}` is defined twice", name.name),
                    name.span,
                    "defined again here",
                )
                .with_secondary(first, "first defined here"),
            );
        }
    }
    errors
}

/// The types the typing rules give an op, or `None` for ops whose type is declared (params,
/// inputs). Used by the checker and by [`Graph::verify`].
pub fn infer_type(g: &Graph, op: &Op) -> Option<TensorType> {
    Some(match op {
        Op::Param(_) | Op::Input(_) => return None,
        Op::Constant(_) => TensorType::new(DType::F32, vec![]),
        Op::Arange(d) => TensorType::new(DType::I64, vec![*d]),
        Op::Gather { table, indices } => {
            let t = g.ty(*table);
            let mut dims = g.ty(*indices).dims.clone();
            dims.extend_from_slice(t.dims.get(1..)?);
            TensorType::new(t.dtype, dims)
        }
        Op::Binary { lhs, rhs, .. } => TensorType::new(DType::F32, broadcast(&g.ty(*lhs).dims, &g.ty(*rhs).dims).ok()?),
        Op::Unary { x, .. } => g.ty(*x).clone(),
        Op::Reduce { x, axis, keepdim, .. } => {
            let mut dims = g.ty(*x).dims.clone();
            if *axis >= dims.len() {
                return None;
            }
            if *keepdim {
                dims[*axis] = Dim::Static(1);
            } else {
                dims.remove(*axis);
            }
            TensorType::new(DType::F32, dims)
        }
        Op::Transpose { x } => {
            let mut t = g.ty(*x).clone();
            let r = t.rank();
            if r < 2 {
                return None;
            }
            t.dims.swap(r - 1, r - 2);
            t
        }
        Op::MatMul { lhs, rhs } => {
            let (a, b) = (g.ty(*lhs), g.ty(*rhs));
            if a.rank() < 2 || b.rank() != 2 {
                return None;
            }
            let mut dims = a.dims.clone();
            *dims.last_mut().unwrap() = b.dims[1];
            TensorType::new(DType::F32, dims)
        }
    })
}

/// Numpy broadcasting of two shapes, right-aligned. `Err` carries the first clashing pair.
pub fn broadcast(a: &[Dim], b: &[Dim]) -> Result<Vec<Dim>, (Dim, Dim)> {
    let rank = a.len().max(b.len());
    let mut out = Vec::with_capacity(rank);
    for i in 0..rank {
        let da = (i + a.len()).checked_sub(rank).map(|j| a[j]);
        let db = (i + b.len()).checked_sub(rank).map(|j| b[j]);
        out.push(match (da, db) {
            (Some(x), None) | (None, Some(x)) => x,
            (Some(x), Some(y)) if x == y => x,
            (Some(Dim::Static(1)), Some(y)) => y,
            (Some(x), Some(Dim::Static(1))) => x,
            (Some(x), Some(y)) => return Err((x, y)),
            (None, None) => unreachable!(),
        });
    }
    Ok(out)
}

/// What a name in a forward body refers to.
#[derive(Clone, Copy)]
enum Binding {
    Value(ValueId),
    Symbol(SymbolId),
    /// A name whose definition failed to check; uses of it are not reported again.
    Poisoned,
}

/// The code of an error already reported elsewhere; never shown.
const POISONED: &str = "poisoned";

/// Stands for an error that has already been reported (a failed operand).
fn poisoned() -> Diagnostic {
    Diagnostic::error(POISONED, "", Span::default(), "")
}

struct Checker<'a> {
    source: &'a SourceFile,
    decl: &'a ast::ModelDecl,
    config: Vec<(String, ConfigValue)>,
    graph: Option<Graph>,
    /// Source span of each node, for secondary labels.
    spans: Vec<Span>,
    errors: Vec<Diagnostic>,
    used_params: Vec<bool>,
    /// The node of each parameter already referenced: a parameter is read once per graph.
    param_nodes: HashMap<usize, ValueId>,
}

impl<'a> Checker<'a> {
    fn g(&mut self) -> &mut Graph {
        self.graph.as_mut().expect("graph is built before statements are checked")
    }

    fn config_lookup(&self, dotted: &str) -> Option<ConfigValue> {
        let binding = &self.decl.config_binding.name;
        let field = dotted.strip_prefix(binding.as_str())?.strip_prefix('.')?;
        self.config.iter().find(|(n, _)| n == field).map(|(_, v)| *v)
    }

    /// Evaluates a compile-time expression in the model's scope (`c.hidden_size / 12`).
    fn eval(&self, e: &Expr) -> Result<ConfigValue, Diagnostic> {
        eval_const(e, &|name| self.config_lookup(name)).map_err(|d| self.explain_unknown(d, e))
    }

    /// Adds a "did you mean" to unknown-name errors about config fields.
    fn explain_unknown(&self, d: Diagnostic, _e: &Expr) -> Diagnostic {
        if d.code != "E0100" {
            return d;
        }
        let src = &self.source.text[d.primary.span.start..d.primary.span.end];
        let binding = &self.decl.config_binding.name;
        if let Some(field) = src.strip_prefix(binding.as_str()).and_then(|s| s.strip_prefix('.')) {
            let names: Vec<&str> = self.config.iter().map(|(n, _)| n.as_str()).collect();
            let d = Diagnostic::error(
                "E0100",
                format!("config `{}` has no field `{field}`", self.decl.config_type.name),
                d.primary.span,
                "unknown config field",
            );
            return match did_you_mean(field, names.iter().copied()) {
                Some(s) => d.with_help(format!("did you mean `{binding}.{s}`?")),
                None => d.with_help(format!("its fields are: {}", names.join(", "))),
            };
        }
        d
    }

    fn static_dim(&self, e: &Expr) -> Result<i64, Diagnostic> {
        match self.eval(e)? {
            ConfigValue::Int(n) if n > 0 => Ok(n),
            v => Err(Diagnostic::error("E0206", "invalid dimension", e.span, format!("this is {v}"))
                .with_help("a dimension must be a positive integer")),
        }
    }

    fn loc(&self, span: Span) -> Loc {
        let (line, col) = self.source.line_col(span.start);
        Loc { line, col }
    }

    fn run(&mut self) -> Option<Graph> {
        let decl = self.decl;
        let mut params = Vec::new();
        let mut param_spans: HashMap<String, Span> = HashMap::new();
        for p in &decl.params {
            let name = p.path.dotted();
            if let Some(first) = param_spans.insert(name.clone(), p.path.span) {
                self.errors.push(
                    Diagnostic::error(
                        "E0101",
                        format!("parameter `{name}` is declared twice"),
                        p.path.span,
                        "declared again here",
                    )
                    .with_secondary(first, "first declared here"),
                );
                continue;
            }
            let mut dims = Vec::new();
            for d in &p.ty.dims {
                match self.static_dim(d) {
                    Ok(n) => dims.push(Dim::Static(n)),
                    Err(e) => self.errors.push(e),
                }
            }
            params.push(TensorDecl {
                name,
                ty: TensorType::new(abi_dtype(p.ty.dtype), dims),
                index_bound: None,
            });
        }
        let forward = match decl.forwards.as_slice() {
            [f] => f,
            [] => {
                self.errors.push(
                    Diagnostic::error(
                        "E0205",
                        format!("model `{}` has no forward function", decl.name.name),
                        decl.name.span,
                        "declared here",
                    )
                    .with_help("add `forward(inputs) -> (outputs) { ... }`"),
                );
                return None;
            }
            [_, second, ..] => {
                self.errors.push(Diagnostic::error(
                    "E0101",
                    "a model has exactly one forward function",
                    second.span,
                    "second forward here",
                ));
                return None;
            }
        };
        self.used_params = vec![false; params.len()];
        self.graph = Some(Graph {
            model: decl.name.name.clone(),
            file: self.source.name.clone(),
            config: self.config.clone(),
            symbols: Vec::new(),
            params,
            inputs: Vec::new(),
            nodes: Vec::new(),
            outputs: Vec::new(),
        });

        // Inputs: their dims introduce the symbols.
        let mut scope: HashMap<String, Binding> = HashMap::new();
        let mut input_spans: HashMap<String, Span> = HashMap::new();
        for (index, input) in forward.inputs.iter().enumerate() {
            if let Some(first) = input_spans.insert(input.name.name.clone(), input.name.span) {
                self.errors.push(
                    Diagnostic::error(
                        "E0101",
                        format!("input `{}` is declared twice", input.name.name),
                        input.name.span,
                        "declared again here",
                    )
                    .with_secondary(first, "first declared here"),
                );
                continue;
            }
            let mut dims = Vec::new();
            for (axis, d) in input.ty.dims.iter().enumerate() {
                match self.input_dim(d, index, axis, &mut scope) {
                    Ok(dim) => dims.push(dim),
                    Err(e) => self.errors.push(e),
                }
            }
            let ty = TensorType::new(abi_dtype(input.ty.dtype), dims);
            self.g().inputs.push(TensorDecl {
                name: input.name.name.clone(),
                ty: ty.clone(),
                index_bound: None,
            });
            let id = self.push(Op::Input(index), ty, input.name.span);
            scope.insert(input.name.name.clone(), Binding::Value(id));
        }
        if !self.errors.is_empty() {
            return None;
        }

        // Body.
        let mut returned = false;
        for stmt in &forward.body {
            match stmt {
                Stmt::Assign { name, value, .. } => {
                    if returned {
                        self.errors
                            .push(Diagnostic::error("E0205", "statement after `return`", name.span, "never runs"));
                    }
                    let binding = self.expr(value, &scope).map_or(Binding::Poisoned, Binding::Value);
                    scope.insert(name.name.clone(), binding);
                }
                Stmt::Return { values, span } => {
                    returned = true;
                    self.check_return(forward, values, *span, &scope);
                }
            }
        }
        if !returned {
            self.errors.push(
                Diagnostic::error(
                    "E0205",
                    "forward function does not return",
                    forward.span,
                    "no `return` in this body",
                )
                .with_help("end the body with `return` and one value per declared output"),
            );
        }
        self.graph.take()
    }

    fn input_dim(&mut self, d: &Expr, input: usize, axis: usize, scope: &mut HashMap<String, Binding>) -> Result<Dim, Diagnostic> {
        if let ExprKind::Path(p) = &d.kind {
            if p.segments.len() == 1 && p.segments[0].name != self.decl.config_binding.name {
                let name = &p.segments[0].name;
                if let Some(Binding::Symbol(s)) = scope.get(name) {
                    return Ok(Dim::Symbol(*s));
                }
                let g = self.g();
                let id = SymbolId(g.symbols.len() as u32);
                g.symbols.push(Symbol {
                    name: name.clone(),
                    max: None,
                    source: (input, axis),
                });
                scope.insert(name.clone(), Binding::Symbol(id));
                return Ok(Dim::Symbol(id));
            }
        }
        self.static_dim(d).map(Dim::Static)
    }

    /// A dimension in an output type: a symbol bound by an input, or a compile-time value.
    fn output_dim(&self, d: &Expr, scope: &HashMap<String, Binding>) -> Result<Dim, Diagnostic> {
        if let ExprKind::Path(p) = &d.kind {
            if p.segments.len() == 1 && p.segments[0].name != self.decl.config_binding.name {
                let name = &p.segments[0].name;
                return match scope.get(name) {
                    Some(Binding::Symbol(s)) => Ok(Dim::Symbol(*s)),
                    _ => Err(Diagnostic::error(
                        "E0100",
                        format!("symbolic dimension `{name}` is not bound by any input"),
                        p.span,
                        "unknown dimension",
                    )
                    .with_help("every symbolic dimension of an output must appear in an input's type")),
                };
            }
        }
        self.static_dim(d).map(Dim::Static)
    }

    fn check_return(&mut self, forward: &ast::ForwardDecl, values: &[Expr], span: Span, scope: &HashMap<String, Binding>) {
        if values.len() != forward.outputs.len() {
            self.errors.push(
                Diagnostic::error(
                    "E0205",
                    format!(
                        "`return` gives {} value(s) but {} output(s) are declared",
                        values.len(),
                        forward.outputs.len()
                    ),
                    span,
                    "returned here",
                )
                .with_help("return one value per declared output, in order"),
            );
            return;
        }
        for (value, out) in values.iter().zip(&forward.outputs) {
            let mut dims = Vec::new();
            for d in &out.ty.dims {
                match self.output_dim(d, scope) {
                    Ok(dim) => dims.push(dim),
                    Err(e) => {
                        self.errors.push(e);
                        return;
                    }
                }
            }
            let declared = TensorType::new(abi_dtype(out.ty.dtype), dims);
            let Some(id) = self.expr(value, scope) else { continue };
            let g = self.graph.as_ref().unwrap();
            let actual = g.ty(id).clone();
            if actual != declared {
                let (a, d) = (g.type_name(&actual), g.type_name(&declared));
                self.errors.push(
                    Diagnostic::error(
                        "E0204",
                        format!("output `{}` has type {a}, but {d} is declared", out.name.name),
                        value.span,
                        format!("this is {a}"),
                    )
                    .with_secondary(out.ty.span, format!("declared {d}")),
                );
                continue;
            }
            self.g().outputs.push((
                TensorDecl {
                    name: out.name.name.clone(),
                    ty: declared,
                    index_bound: None,
                },
                id,
            ));
        }
    }

    fn push(&mut self, op: Op, ty: TensorType, span: Span) -> ValueId {
        let loc = self.loc(span);
        let g = self.g();
        let id = ValueId(g.nodes.len() as u32);
        g.nodes.push(Node { op, ty, loc });
        self.spans.push(span);
        id
    }

    fn ty(&self, id: ValueId) -> &TensorType {
        self.graph.as_ref().unwrap().ty(id)
    }

    fn type_name(&self, id: ValueId) -> String {
        let g = self.graph.as_ref().unwrap();
        g.type_name(g.ty(id))
    }

    /// Checks an expression and adds its nodes; `None` after reporting an error.
    fn expr(&mut self, e: &Expr, scope: &HashMap<String, Binding>) -> Option<ValueId> {
        let result = match &e.kind {
            ExprKind::Int(_) | ExprKind::Float(_) => match self.eval(e) {
                Ok(v) => Ok(self.constant(v, e.span)),
                Err(d) => Err(d),
            },
            ExprKind::Bool(_) => Err(Diagnostic::error(
                "E0201",
                "a boolean is not a tensor",
                e.span,
                "booleans are only for options such as `keepdim`",
            )),
            ExprKind::Path(p) => self.path(p, scope),
            ExprKind::Neg(x) => {
                let x = self.expr(x, scope)?;
                self.unary(UnaryOp::Neg, x, e.span)
            }
            ExprKind::Binary { op, lhs, rhs } => {
                let (l, r) = (self.expr(lhs, scope), self.expr(rhs, scope));
                let (l, r) = (l?, r?);
                match op {
                    ast::BinaryOp::MatMul => self.matmul(l, r, e.span),
                    _ => self.binary(*op, l, r, e.span),
                }
            }
            ExprKind::Call { callee, args } => self.call(callee, args, e.span, scope),
        };
        match result {
            Ok(id) => Some(id),
            Err(d) if d.code == POISONED => None,
            Err(d) => {
                self.errors.push(d);
                None
            }
        }
    }

    fn constant(&mut self, v: ConfigValue, span: Span) -> ValueId {
        let value = match v {
            ConfigValue::Int(i) => i as f64,
            ConfigValue::Float(f) => f,
            ConfigValue::Bool(b) => b as i64 as f64,
        };
        self.push(Op::Constant(value), TensorType::new(DType::F32, vec![]), span)
    }

    fn path(&mut self, p: &ast::Path, scope: &HashMap<String, Binding>) -> Result<ValueId, Diagnostic> {
        let dotted = p.dotted();
        if p.segments.len() == 1 {
            match scope.get(&dotted) {
                Some(Binding::Value(v)) => return Ok(*v),
                Some(Binding::Poisoned) => return Err(poisoned()),
                Some(Binding::Symbol(_)) => {
                    return Err(Diagnostic::error(
                        "E0201",
                        format!("`{dotted}` is a dimension, not a tensor"),
                        p.span,
                        "a symbolic dimension",
                    )
                    .with_help(format!("use `arange({dotted})` for the positions 0..{dotted}")))
                }
                None => {}
            }
        }
        if p.segments[0].name == self.decl.config_binding.name && p.segments.len() > 1 {
            let e = Expr {
                kind: ExprKind::Path(p.clone()),
                span: p.span,
            };
            let v = self.eval(&e)?;
            return Ok(self.constant(v, p.span));
        }
        let g = self.graph.as_ref().unwrap();
        if let Some(index) = g.params.iter().position(|q| q.name == dotted) {
            self.used_params[index] = true;
            if let Some(id) = self.param_nodes.get(&index) {
                return Ok(*id);
            }
            let ty = g.params[index].ty.clone();
            let id = self.push(Op::Param(index), ty, p.span);
            self.param_nodes.insert(index, id);
            return Ok(id);
        }
        let mut candidates: Vec<&str> = scope
            .iter()
            .filter(|(_, b)| matches!(b, Binding::Value(_)))
            .map(|(k, _)| k.as_str())
            .collect();
        candidates.extend(g.params.iter().map(|q| q.name.as_str()));
        let d = Diagnostic::error(
            "E0100",
            format!("unknown name `{dotted}`"),
            p.span,
            "not a value, input or parameter in scope",
        );
        Err(match did_you_mean(&dotted, candidates) {
            Some(s) => d.with_help(format!("did you mean `{s}`?")),
            None => d.with_help("values are defined by `name = ...`, inputs in the forward signature, and parameters by `param`"),
        })
    }

    fn require_f32(&self, id: ValueId, what: &str) -> Result<(), Diagnostic> {
        let ty = self.ty(id);
        if ty.dtype == DType::F32 {
            return Ok(());
        }
        Err(Diagnostic::error(
            "E0201",
            format!("{what} needs f32 values"),
            self.spans[id.0 as usize],
            format!("this is {}", self.type_name(id)),
        )
        .with_help("integer tensors are only used as indices (`gather`)"))
    }

    fn unary(&mut self, op: UnaryOp, x: ValueId, span: Span) -> Result<ValueId, Diagnostic> {
        self.require_f32(x, &format!("`{}`", format!("{op:?}").to_lowercase()))?;
        let ty = self.ty(x).clone();
        Ok(self.push(Op::Unary { op, x }, ty, span))
    }

    fn binary(&mut self, op: ast::BinaryOp, l: ValueId, r: ValueId, span: Span) -> Result<ValueId, Diagnostic> {
        let what = format!("`{}`", op.symbol());
        self.require_f32(l, &what)?;
        self.require_f32(r, &what)?;
        let dims = broadcast(&self.ty(l).dims, &self.ty(r).dims).map_err(|(a, b)| {
            let g = self.graph.as_ref().unwrap();
            Diagnostic::error(
                "E0200",
                format!("shapes {} and {} do not broadcast", self.type_name(l), self.type_name(r)),
                span,
                format!("dimension {} against {}", g.dim_name(a), g.dim_name(b)),
            )
            .with_secondary(self.spans[l.0 as usize], format!("this is {}", self.type_name(l)))
            .with_secondary(self.spans[r.0 as usize], format!("this is {}", self.type_name(r)))
            .with_help("aligned from the right, each pair of dimensions must be equal or one of them 1")
        })?;
        let op = match op {
            ast::BinaryOp::Add => BinaryOp::Add,
            ast::BinaryOp::Sub => BinaryOp::Sub,
            ast::BinaryOp::Mul => BinaryOp::Mul,
            ast::BinaryOp::Div => BinaryOp::Div,
            ast::BinaryOp::MatMul => unreachable!("matmul is checked by `matmul`"),
        };
        Ok(self.push(Op::Binary { op, lhs: l, rhs: r }, TensorType::new(DType::F32, dims), span))
    }

    fn matmul(&mut self, l: ValueId, r: ValueId, span: Span) -> Result<ValueId, Diagnostic> {
        self.require_f32(l, "`@`")?;
        self.require_f32(r, "`@`")?;
        let (a, b) = (self.ty(l).clone(), self.ty(r).clone());
        let g = self.graph.as_ref().unwrap();
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
                    g.dim_name(k_left),
                    g.dim_name(b.dims[0])
                ),
                span,
                "contraction over mismatched dimensions",
            )
            .with_secondary(self.spans[l.0 as usize], format!("this is {}", self.type_name(l)))
            .with_secondary(self.spans[r.0 as usize], format!("this is {}", self.type_name(r)))
            .with_help("a Hugging Face Linear weight is [out, in]: write `x @ transpose(weight)`"));
        }
        let mut dims = a.dims.clone();
        *dims.last_mut().unwrap() = b.dims[1];
        Ok(self.push(Op::MatMul { lhs: l, rhs: r }, TensorType::new(DType::F32, dims), span))
    }

    fn call(&mut self, callee: &ast::Ident, args: &[CallArg], span: Span, scope: &HashMap<String, Binding>) -> Result<ValueId, Diagnostic> {
        const BUILTINS: &[(&str, &str)] = &[
            ("gather", "gather(table, indices)"),
            ("arange", "arange(n)"),
            ("mean", "mean(x, axis = -1, keepdim = false)"),
            ("sum", "sum(x, axis = -1, keepdim = false)"),
            ("sqrt", "sqrt(x)"),
            ("exp", "exp(x)"),
            ("gelu", "gelu(x)"),
            ("transpose", "transpose(x)"),
            ("matmul", "matmul(a, b)"),
        ];
        let name = callee.name.as_str();
        let Some(&(_, signature)) = BUILTINS.iter().find(|(n, _)| *n == name) else {
            let d = Diagnostic::error(
                "E0203",
                format!("unknown function `{name}`"),
                callee.span,
                "not a built-in function",
            );
            return Err(match did_you_mean(name, BUILTINS.iter().map(|(n, _)| *n)) {
                Some(s) => d.with_help(format!("did you mean `{s}`?")),
                None => d.with_help(format!(
                    "the built-in functions are: {}",
                    BUILTINS.iter().map(|(n, _)| *n).collect::<Vec<_>>().join(", ")
                )),
            });
        };
        let arity_error = |why: String| {
            Diagnostic::error("E0202", format!("wrong arguments to `{name}`"), span, why).with_help(format!("call it as `{signature}`"))
        };
        let positional: Vec<&Expr> = args.iter().filter(|a| a.name.is_none()).map(|a| &a.value).collect();
        let named: Vec<(&ast::Ident, &Expr)> = args.iter().filter_map(|a| a.name.as_ref().map(|n| (n, &a.value))).collect();
        let allowed_named: &[&str] = if matches!(name, "mean" | "sum") {
            &["axis", "keepdim"]
        } else {
            &[]
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
            "arange" => {
                let [n] = positional.as_slice() else {
                    return Err(arity_error(format!("expected 1 argument, found {}", positional.len())));
                };
                let dim = match &n.kind {
                    ExprKind::Path(p) if p.segments.len() == 1 && matches!(scope.get(&p.segments[0].name), Some(Binding::Symbol(_))) => {
                        let Some(Binding::Symbol(s)) = scope.get(&p.segments[0].name) else {
                            unreachable!()
                        };
                        Dim::Symbol(*s)
                    }
                    _ => Dim::Static(self.static_dim(n)?),
                };
                Ok(self.push(Op::Arange(dim), TensorType::new(DType::I64, vec![dim]), span))
            }
            "mean" | "sum" => {
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
                let x = self.expr(x, scope).ok_or_else(poisoned)?;
                self.require_f32(x, &format!("`{name}`"))?;
                let rank = self.ty(x).rank() as i64;
                let axis = match axis_expr {
                    None => rank - 1,
                    Some(a) => match self.eval(a)? {
                        ConfigValue::Int(i) if (-rank..rank).contains(&i) => i.rem_euclid(rank.max(1)),
                        v => {
                            return Err(Diagnostic::error(
                                "E0202",
                                format!("axis {v} is out of range for {}", self.type_name(x)),
                                a.span,
                                format!("valid axes are {} to {}", -rank, rank - 1),
                            )
                            .with_help("negative axes count from the end: -1 is the last"))
                        }
                    },
                } as usize;
                let keepdim = match named.iter().find(|(n, _)| n.name == "keepdim") {
                    None => false,
                    Some((_, e)) => match self.eval(e)? {
                        ConfigValue::Bool(b) => b,
                        v => {
                            return Err(Diagnostic::error(
                                "E0202",
                                "`keepdim` must be true or false",
                                e.span,
                                format!("this is {v}"),
                            ))
                        }
                    },
                };
                if rank == 0 {
                    return Err(arity_error("cannot reduce a scalar".into()));
                }
                let op = if name == "mean" { ReduceOp::Mean } else { ReduceOp::Sum };
                let mut dims = self.ty(x).dims.clone();
                if keepdim {
                    dims[axis] = Dim::Static(1);
                } else {
                    dims.remove(axis);
                }
                Ok(self.push(Op::Reduce { op, x, axis, keepdim }, TensorType::new(DType::F32, dims), span))
            }
            _ => {
                let expected = if matches!(name, "gather" | "matmul") { 2 } else { 1 };
                if positional.len() != expected {
                    return Err(arity_error(format!("expected {expected} argument(s), found {}", positional.len())));
                }
                let mut ids = Vec::new();
                for a in &positional {
                    ids.push(self.expr(a, scope));
                }
                let ids: Vec<ValueId> = ids.into_iter().collect::<Option<_>>().ok_or_else(poisoned)?;
                match name {
                    "sqrt" => self.unary(UnaryOp::Sqrt, ids[0], span),
                    "exp" => self.unary(UnaryOp::Exp, ids[0], span),
                    "gelu" => self.unary(UnaryOp::Gelu, ids[0], span),
                    "transpose" => {
                        let mut ty = self.ty(ids[0]).clone();
                        let r = ty.rank();
                        if r < 2 {
                            return Err(arity_error(format!("needs rank 2 or more, found {}", self.type_name(ids[0]))));
                        }
                        ty.dims.swap(r - 1, r - 2);
                        Ok(self.push(Op::Transpose { x: ids[0] }, ty, span))
                    }
                    "matmul" => self.matmul(ids[0], ids[1], span),
                    "gather" => self.gather(ids[0], ids[1], span, positional[0].span, positional[1].span),
                    _ => unreachable!("builtin {name} has no checker"),
                }
            }
        }
    }

    fn gather(
        &mut self,
        table: ValueId,
        indices: ValueId,
        span: Span,
        table_span: Span,
        indices_span: Span,
    ) -> Result<ValueId, Diagnostic> {
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
        let g = self.graph.as_ref().unwrap();
        let reason = match g.node(table).op {
            Op::Param(p) => format!("rows of {}", g.params[p].name),
            _ => "rows of the gathered table".to_string(),
        };
        let bound = Bound { limit: rows, reason };
        // Record the limit where the runtime can check it: on the input, or on the symbol.
        match g.node(indices).op.clone() {
            Op::Input(k) => {
                let slot = &mut self.g().inputs[k].index_bound;
                if slot.as_ref().is_none_or(|b| b.limit > rows) {
                    *slot = Some(bound);
                }
            }
            Op::Arange(Dim::Symbol(s)) => {
                let slot = &mut self.g().symbols[s.0 as usize].max;
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
        Ok(self.push(Op::Gather { table, indices }, TensorType::new(t.dtype, dims), span))
    }

    fn unused_param_warnings(&self, g: &Graph) -> Vec<Diagnostic> {
        self.decl
            .params
            .iter()
            .filter(|p| {
                g.params
                    .iter()
                    .position(|q| q.name == p.path.dotted())
                    .is_some_and(|i| !self.used_params[i])
            })
            .map(|p| {
                Diagnostic::warning(
                    "W0300",
                    format!("parameter `{}` is never used", p.path.dotted()),
                    p.path.span,
                    "declared here",
                )
                .with_help("remove it, or use it in the forward function; it is still required in the checkpoint")
            })
            .collect()
    }
}

fn abi_dtype(d: ast::DType) -> DType {
    match d {
        ast::DType::F32 => DType::F32,
        ast::DType::I64 => DType::I64,
        ast::DType::I32 => DType::I32,
    }
}
