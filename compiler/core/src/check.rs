//! Program → checked IR. Selects a model or variant, evaluates its config, instantiates its
//! blocks (parameters get their checkpoint paths, `if` members are decided, arrays of layers are
//! expanded), then runs the model's forward function symbolically: block calls are inlined and
//! loops unrolled, so the IR is one flat graph. Element types and symbolic shapes are inferred
//! and checked on the way, and every problem becomes a [`Diagnostic`] at its source span.

use crate::config::{evaluate_config, ConfigOverrides};
use crate::ir::*;
use crate::program::{ItemRef, Program};
use crate::suggest::did_you_mean;
use crate::value::{self, ConfigRecord, CtValue};
use lmc_abi::{Bound, DType};
use lmc_grammar::ast::{self, CallArg, DimExpr, Expr, ExprKind, Item, Member, Stmt};
use lmc_grammar::{Diagnostic, Span};
use std::collections::HashMap;
use std::rc::Rc;

/// Why a model could not be checked.
#[derive(Debug)]
pub enum CheckError {
    /// Problems in the sources, with spans.
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

/// Instances may nest this deep (a guard against runaway instantiation).
const MAX_DEPTH: usize = 64;
/// At most this many block instances in one model.
const MAX_INSTANCES: usize = 100_000;
/// At most this many IR nodes in one model.
const MAX_NODES: usize = 2_000_000;
/// Largest axis `along` may name; tensors have far fewer.
const MAX_SCAN_AXIS: i64 = 64;

/// The models and variants the user's file defines, in order.
pub fn model_names(p: &Program) -> Vec<String> {
    p.modules[0]
        .ast
        .items
        .iter()
        .filter_map(|i| match i {
            Item::Model(m) => Some(m.name.name.clone()),
            Item::Variant(v) => Some(v.name.name.clone()),
            _ => None,
        })
        .collect()
}

/// Checks one model or variant of the user's file (the only one when `model` is `None`) with
/// the given config overrides, and builds its IR graph.
pub fn check_model(p: &Program, model: Option<&str>, overrides: &ConfigOverrides) -> Result<Checked, CheckError> {
    let names = model_names(p);
    let file = &p.sources.get(p.modules[0].file).name;
    let name = match model {
        Some(n) => n.to_string(),
        None => match names.as_slice() {
            [only] => only.clone(),
            [] => return Err(CheckError::Selection(format!("{file} defines no model"))),
            _ => {
                let models: Vec<&str> = p.modules[0]
                    .ast
                    .items
                    .iter()
                    .filter_map(|i| if let Item::Model(m) = i { Some(m.name.name.as_str()) } else { None })
                    .collect();
                if let [only] = models.as_slice() {
                    only.to_string()
                } else {
                    return Err(CheckError::Selection(format!(
                        "{file} defines several models and variants ({}); choose one with {file}:NAME",
                        names.join(", ")
                    )));
                }
            }
        },
    };
    let Some(item) = p
        .lookup(0, &name)
        .filter(|r| matches!(p.item(*r), Item::Model(_) | Item::Variant(_)))
    else {
        let hint = match did_you_mean(&name, names.iter().map(String::as_str)) {
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
        return Err(CheckError::Selection(format!(
            "{file} defines no model or variant `{name}`; {hint}"
        )));
    };
    let (model_ref, variant_overrides) = resolve_variant(p, item).map_err(|d| CheckError::Diagnostics(vec![d]))?;
    let Item::Model(decl) = p.item(model_ref) else {
        unreachable!("resolve_variant returns a model")
    };
    let config_ref = p
        .lookup(model_ref.module, &decl.config_type.name)
        .filter(|r| matches!(p.item(*r), Item::Config(_)));
    let Some(config_ref) = config_ref else {
        let d = Diagnostic::error(
            "E0100",
            format!("unknown config `{}`", decl.config_type.name),
            decl.config_type.span,
            "no config of this name in scope",
        );
        let configs: Vec<&str> = p
            .names(model_ref.module)
            .into_iter()
            .filter(|n| p.lookup(model_ref.module, n).is_some_and(|r| matches!(p.item(r), Item::Config(_))))
            .collect();
        return Err(CheckError::Diagnostics(vec![
            match did_you_mean(&decl.config_type.name, configs.iter().copied()) {
                Some(s) => d.with_help(format!("did you mean `{s}`?")),
                None => d.with_help("declare it with `config Name { key = value }`"),
            },
        ]));
    };
    let Item::Config(config_decl) = p.item(config_ref) else {
        unreachable!()
    };
    let config = evaluate_config(config_decl, &variant_overrides, overrides).map_err(CheckError::Diagnostics)?;

    let mut e = Elab::new(p, &name);
    e.graph.config = config.fields.iter().map(|(k, v)| (k.clone(), config_value(v))).collect();
    let root = e.instantiate_model(model_ref, decl, Rc::new(config));
    if e.errors.is_empty() {
        if let Some(root) = root {
            e.run_model(root);
        }
    }
    if !e.errors.is_empty() {
        // A block used many times reports the same problem once.
        let mut unique: Vec<Diagnostic> = Vec::new();
        for d in e.errors {
            if !unique.contains(&d) {
                unique.push(d);
            }
        }
        return Err(CheckError::Diagnostics(unique));
    }
    debug_assert_eq!(e.graph.verify(), Ok(()));
    let warnings = e.unused_param_warnings();
    Ok(Checked { graph: e.graph, warnings })
}

/// Follows a variant to its model, collecting overrides base first.
fn resolve_variant(p: &Program, mut item: ItemRef) -> Result<(ItemRef, Vec<(ast::Ident, Expr)>), Diagnostic> {
    let mut chain: Vec<&ast::VariantDecl> = Vec::new();
    loop {
        match p.item(item) {
            Item::Model(_) => break,
            Item::Variant(v) => {
                if chain.iter().any(|c| c.name.name == v.name.name) || chain.len() > MAX_DEPTH {
                    let path: Vec<&str> = chain.iter().map(|c| c.name.name.as_str()).collect();
                    return Err(Diagnostic::error(
                        "E0106",
                        format!("variant `{}` is defined in terms of itself", v.name.name),
                        v.base.span,
                        format!("{} → {}", path.join(" → "), v.name.name),
                    ));
                }
                chain.push(v);
                let next = p
                    .lookup(item.module, &v.base.name)
                    .filter(|r| matches!(p.item(*r), Item::Model(_) | Item::Variant(_)));
                item = next.ok_or_else(|| {
                    let d = Diagnostic::error(
                        "E0100",
                        format!("unknown model `{}`", v.base.name),
                        v.base.span,
                        "a variant is based on a model or another variant",
                    );
                    match did_you_mean(&v.base.name, p.names(item.module)) {
                        Some(s) => d.with_help(format!("did you mean `{s}`?")),
                        None => d,
                    }
                })?;
            }
            _ => unreachable!("only models and variants are selected"),
        }
    }
    let overrides = chain.iter().rev().flat_map(|v| v.overrides.iter().cloned()).collect();
    Ok((item, overrides))
}

fn config_value(v: &CtValue) -> ConfigValue {
    match v {
        CtValue::Int(i) => ConfigValue::Int(*i),
        CtValue::Float(f) => ConfigValue::Float(*f),
        CtValue::Bool(b) => ConfigValue::Bool(*b),
        CtValue::Str(s) | CtValue::Enum { value: s, .. } => ConfigValue::Text(s.clone()),
        CtValue::Config(c) => ConfigValue::Text(format!("config {}", c.name)),
    }
}

/// The types the typing rules give an op, or `None` for ops whose type is declared (params,
/// inputs). Used by the checker and by [`Graph::verify`].
pub fn infer_type(g: &Graph, op: &Op) -> Option<TensorType> {
    Some(match op {
        Op::Param(_) | Op::Input(_) | Op::Carry(_) => return None,
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
        Op::ToFloat { x } => TensorType::new(DType::F32, g.ty(*x).dims.clone()),
        Op::SplitHeads { x, heads } => {
            let t = g.ty(*x);
            let r = t.rank();
            let Dim::Static(c) = *t.dims.get(r.checked_sub(1)?)? else {
                return None;
            };
            if r < 2 || *heads <= 0 || c % heads != 0 {
                return None;
            }
            let mut dims = t.dims[..r - 2].to_vec();
            dims.extend([Dim::Static(*heads), t.dims[r - 2], Dim::Static(c / heads)]);
            TensorType::new(DType::F32, dims)
        }
        Op::MergeHeads { x } => {
            let t = g.ty(*x);
            let r = t.rank();
            if r < 3 {
                return None;
            }
            let (Dim::Static(h), Dim::Static(d)) = (t.dims[r - 3], t.dims[r - 1]) else {
                return None;
            };
            let mut dims = t.dims[..r - 3].to_vec();
            dims.extend([t.dims[r - 2], Dim::Static(h * d)]);
            TensorType::new(DType::F32, dims)
        }
        Op::Tabulate { .. } => return None,
        Op::Slice { x, axis, start, length } => {
            let mut t = g.ty(*x).clone();
            match t.dims.get(*axis)? {
                Dim::Static(n) if *start >= 0 && *length > 0 && start + length <= *n => {}
                _ => return None,
            }
            t.dims[*axis] = Dim::Static(*length);
            t
        }
        Op::WriteRows { base, rows, axis, at } | Op::WriteRing { base, rows, axis, at } => {
            let (b, r) = (g.ty(*base), g.ty(*rows));
            let same_elsewhere = b.rank() == r.rank() && b.dims.iter().zip(&r.dims).enumerate().all(|(k, (x, y))| k == *axis || x == y);
            if *axis >= b.rank() || b.dtype != r.dtype || !same_elsewhere || g.ty(*at) != &TensorType::new(DType::I64, vec![]) {
                return None;
            }
            b.clone()
        }
        Op::Attention { q, v, .. } => {
            let (q, v) = (g.ty(*q), g.ty(*v));
            if q.rank() != 4 || v.rank() != 4 {
                return None;
            }
            TensorType::new(DType::F32, vec![q.dims[0], q.dims[1], q.dims[2], v.dims[3]])
        }
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
        // A body argument's type comes from its scan, which `Graph::verify` checks.
        Op::ScanArg(_) => return None,
        Op::Scan(_) => TensorType::new(DType::F32, vec![]),
        Op::ScanResult { scan, index } => {
            let Op::Scan(s) = &g.node(*scan).op else { return None };
            match s.outputs.get(*index) {
                Some(out) => {
                    let mut t = g.ty(*out).clone();
                    let length = *g.ty(*s.xs.first()?).dims.get(s.axis)?;
                    if s.axis > t.rank() {
                        return None;
                    }
                    t.dims.insert(s.axis, length);
                    t
                }
                None => g.ty(*s.init.get(index - s.outputs.len())?).clone(),
            }
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

/// A child of an instance: one block instance, or an array of them.
#[derive(Debug, Clone)]
enum Child {
    One(usize),
    Array(Vec<usize>),
}

/// A declared parameter of an instance.
#[derive(Debug)]
struct ParamSlot {
    /// Local dotted path (`word_embeddings.weight`).
    local: Vec<String>,
    ty: TensorType,
    span: Span,
    /// Its index in [`Graph::params`], once the forward reads it.
    index: Option<usize>,
    /// The node that reads it at the top level, shared by every later use. A read inside a scan
    /// body gets a node of its own there, since body nodes are not visible after the body.
    used: Option<ValueId>,
}

/// A block (or the model) instantiated at a checkpoint path with its compile-time arguments.
#[derive(Debug)]
struct Instance<'p> {
    /// The module whose names the block's body sees.
    module: usize,
    /// The block's name, for messages.
    block: String,
    /// Full checkpoint path prefix (`encoder.layer.3.attention`).
    path: Vec<String>,
    /// Compile-time bindings: block arguments, or the model's config binding.
    env: Vec<(String, CtValue)>,
    params: Vec<ParamSlot>,
    children: Vec<(Vec<String>, Child, Span)>,
    forward: Option<&'p ast::ForwardDecl>,
    decl_span: Span,
    parent: Option<usize>,
}

/// What a name in a forward body stands for.
#[derive(Debug, Clone)]
enum Binding {
    Value(ValueId),
    Tuple(Vec<ValueId>),
    Const(CtValue),
    /// A dimension: a model symbol, or a block signature's name for a caller's dimension.
    Dim(Dim),
    Instance(usize),
    Array(Vec<usize>),
    /// An index function: an entry of [`Elab::fns`].
    Fn(usize),
    /// A name whose definition failed to check; uses of it are not reported again.
    Poisoned,
}

/// What an expression evaluates to.
#[derive(Debug, Clone)]
enum Val {
    Tensor(ValueId),
    Tuple(Vec<ValueId>),
    Const(CtValue),
    Dim(Dim),
    Instance(usize),
    Array(Vec<usize>),
    /// An index function: an entry of [`Elab::fns`].
    Fn(usize),
}

/// A local scope while running a forward body (or evaluating an `fn` item).
#[derive(Debug, Clone)]
struct Frame {
    inst: usize,
    locals: HashMap<String, Binding>,
    /// `Some(module)` while evaluating an `fn` item of that module: only its parameters are in
    /// scope (not the calling instance's members or config), and item names resolve there.
    fn_module: Option<usize>,
}

impl Frame {
    fn new(inst: usize) -> Frame {
        Frame {
            inst,
            locals: HashMap::new(),
            fn_module: None,
        }
    }
}

/// An index function as a value: a lambda with the scope it was written in (so it can read the
/// tensors and compile-time values visible there), or masks combined with `and`, `or`, `not`.
#[derive(Debug, Clone)]
enum IndexFn<'p> {
    Lambda {
        params: &'p [ast::Ident],
        body: &'p Expr,
        span: Span,
        scope: Frame,
    },
    And(usize, usize),
    Or(usize, usize),
    Not(usize),
}

/// The code of an error already reported elsewhere; never shown.
const POISONED: &str = "poisoned";

/// Stands for an error that has already been reported (a failed operand).
fn poisoned() -> Diagnostic {
    Diagnostic::error(POISONED, "", Span::default(), "")
}

struct Elab<'p> {
    p: &'p Program,
    graph: Graph,
    instances: Vec<Instance<'p>>,
    errors: Vec<Diagnostic>,
    /// Source span of each node, for secondary labels.
    spans: Vec<Span>,
    call_depth: usize,
    /// The instance whose members are being instantiated.
    current_parent: Option<usize>,
    /// Index-function values, referred to by [`Binding::Fn`] and [`Val::Fn`].
    fns: Vec<IndexFn<'p>>,
    /// How many scan bodies are open: values made inside one are not visible after it.
    scan_depth: usize,
}

impl<'p> Elab<'p> {
    fn new(p: &'p Program, model: &str) -> Self {
        let files = (0..).map_while(|i| p.sources.try_get(i).map(|f| f.name.clone())).collect();
        Elab {
            p,
            graph: Graph {
                model: model.to_string(),
                files,
                config: Vec::new(),
                symbols: Vec::new(),
                params: Vec::new(),
                inputs: Vec::new(),
                nodes: Vec::new(),
                outputs: Vec::new(),
                decode: None,
            },
            instances: Vec::new(),
            errors: Vec::new(),
            spans: Vec::new(),
            call_depth: 0,
            current_parent: None,
            fns: Vec::new(),
            scan_depth: 0,
        }
    }

    // ----- instantiation ---------------------------------------------------------------------

    fn instantiate_model(&mut self, r: ItemRef, decl: &'p ast::ModelDecl, config: Rc<ConfigRecord>) -> Option<usize> {
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
    fn eval_in(&self, env: &[(String, CtValue)], e: &Expr, hint: Option<&Rc<Vec<String>>>) -> Result<CtValue, Diagnostic> {
        let lookup = |p: &ast::Path| ct_lookup(env, p);
        value::eval(e, &lookup, hint).map_err(|d| explain_unknown(d, env))
    }

    #[allow(clippy::too_many_arguments)]
    fn instantiate(
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

    fn members(&mut self, id: usize, members: &'p [Member], stack: &mut Vec<String>) {
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
    fn new_member(&mut self, id: usize, path: &ast::Path) -> Option<Vec<String>> {
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
    fn declared(&self, id: usize, local: &[String]) -> Option<Span> {
        let inst = &self.instances[id];
        inst.params
            .iter()
            .find(|q| q.local == local)
            .map(|q| q.span)
            .or_else(|| inst.children.iter().find(|(c, ..)| c == local).map(|(.., s)| *s))
    }

    fn static_dim(&self, id: usize, e: &Expr) -> Result<i64, Diagnostic> {
        match self.eval_in(&self.instances[id].env, e, None)? {
            CtValue::Int(n) if n > 0 => Ok(n),
            v => Err(Diagnostic::error("E0206", "invalid dimension", e.span, format!("this is {v}"))
                .with_help("a dimension must be a positive integer")),
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn instance_member(
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
    fn attach_context(&mut self, before: usize, inst: usize, doing: &str) {
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
    fn bind_block_args(&mut self, parent: usize, decl: &'p ast::BlockDecl, args: &[CallArg], span: Span) -> Option<Vec<(String, CtValue)>> {
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

    // ----- running forward bodies ------------------------------------------------------------

    fn loc(&self, span: Span) -> Loc {
        let (line, col) = self.p.sources.get(span.file).line_col(span.start);
        Loc {
            file: span.file,
            line,
            col,
        }
    }

    fn push(&mut self, op: Op, ty: TensorType, span: Span) -> Result<ValueId, Diagnostic> {
        if self.graph.nodes.len() >= MAX_NODES {
            return Err(Diagnostic::error(
                "E0206",
                format!("the model has more than {MAX_NODES} operations"),
                span,
                "while adding this",
            ));
        }
        let loc = self.loc(span);
        let id = ValueId(self.graph.nodes.len() as u32);
        self.graph.nodes.push(Node { op, ty, loc });
        self.spans.push(span);
        Ok(id)
    }

    fn ty(&self, id: ValueId) -> &TensorType {
        self.graph.ty(id)
    }

    fn type_name(&self, id: ValueId) -> String {
        self.graph.type_name(self.graph.ty(id))
    }

    fn span_of(&self, id: ValueId) -> Span {
        self.spans[id.0 as usize]
    }

    /// Runs the model's forward: inputs become graph inputs and symbols.
    fn run_model(&mut self, root: usize) {
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
        for (index, input) in forward.inputs.iter().enumerate() {
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
            let mut dims = Vec::new();
            for (axis, d) in input_ty.dims.iter().enumerate() {
                match self.model_input_dim(d, index, axis, &mut frame) {
                    Ok(dim) => dims.push(dim),
                    Err(e) => self.errors.push(e),
                }
            }
            let ty = TensorType::new(abi_dtype(input_ty.dtype), dims);
            self.graph.inputs.push(TensorDecl {
                name: input.name.name.clone(),
                ty: ty.clone(),
                index_bound: None,
            });
            match self.push(Op::Input(index), ty, input.name.span) {
                Ok(id) => {
                    frame.locals.insert(input.name.name.clone(), Binding::Value(id));
                }
                Err(e) => self.errors.push(e),
            }
        }
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
                },
                value,
            ));
        }
    }

    fn model_input_dim(&mut self, d: &DimExpr, input: usize, axis: usize, frame: &mut Frame) -> Result<Dim, Diagnostic> {
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
    fn signature_dim(&self, frame: &Frame, d: &DimExpr) -> Result<SigDim, Diagnostic> {
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
    fn frame_env(&self, frame: &Frame) -> &[(String, CtValue)] {
        if frame.fn_module.is_some() {
            &[]
        } else {
            &self.instances[frame.inst].env
        }
    }

    /// Runs a forward body; returns the values of its `return` with their spans.
    fn run_body(&mut self, frame: &mut Frame, forward: &'p ast::ForwardDecl) -> Option<Vec<(ValueId, Span)>> {
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
                Some(Val::Tuple(ids)) if values.len() == 1 => out.extend(ids.into_iter().map(|i| (i, v.span))),
                Some(val) => match self.tensor_of(val, v.span) {
                    Ok(id) => out.push((id, v.span)),
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

    fn report(&mut self, d: Diagnostic) {
        if d.code != POISONED {
            self.errors.push(d);
        }
    }

    fn stmt(&mut self, frame: &mut Frame, s: &'p Stmt) {
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
            Stmt::For { var, array, body, .. } => {
                let ids = match self.resolve_path(frame, array) {
                    Ok(Val::Array(ids)) => ids,
                    Ok(other) => {
                        self.errors.push(
                            Diagnostic::error(
                                "E0201",
                                format!("`for` needs an array of blocks, and `{}` is {}", array.dotted(), describe(&other)),
                                array.span,
                                "not an array",
                            )
                            .with_help("declare one with `name[count] = Block(...)`"),
                        );
                        return;
                    }
                    Err(d) => {
                        self.report(d);
                        return;
                    }
                };
                for id in ids {
                    frame.locals.insert(var.name.clone(), Binding::Instance(id));
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

    fn condition(&mut self, frame: &mut Frame, cond: &'p Expr) -> Result<bool, Diagnostic> {
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
    fn expr(&mut self, frame: &mut Frame, e: &'p Expr) -> Option<Val> {
        match self.expr_inner(frame, e) {
            Ok(v) => Some(v),
            Err(d) => {
                self.report(d);
                None
            }
        }
    }

    fn sub(&mut self, frame: &mut Frame, e: &'p Expr) -> Result<Val, Diagnostic> {
        self.expr(frame, e).ok_or_else(poisoned)
    }

    fn expr_inner(&mut self, frame: &mut Frame, e: &'p Expr) -> Result<Val, Diagnostic> {
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
                    _ => Err(Diagnostic::error(
                        "E0201",
                        format!("`{}` is not defined on tensors", op.symbol()),
                        e.span,
                        "comparisons and logic are for compile-time values",
                    )
                    .with_help("use `maximum`, `minimum` or arithmetic on tensors")),
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
                    other => Err(Diagnostic::error(
                        "E0201",
                        format!("`{}` is not defined on tensors", other.symbol()),
                        e.span,
                        "comparisons and logic are for compile-time values",
                    )
                    .with_help("use `maximum`, `minimum` or arithmetic on tensors")),
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
    fn enum_operand(&mut self, frame: &mut Frame, e: &'p Expr, other: &Val) -> Result<Val, Diagnostic> {
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
    fn tensor_of(&mut self, v: Val, span: Span) -> Result<ValueId, Diagnostic> {
        match v {
            Val::Tensor(id) => Ok(id),
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
    fn resolve_path(&mut self, frame: &Frame, p: &ast::Path) -> Result<Val, Diagnostic> {
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
            };
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
    fn member(&mut self, inst: usize, segments: &[ast::Ident], whole: &ast::Path) -> Result<Val, Diagnostic> {
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
    fn param(&mut self, inst: usize, k: usize, span: Span) -> Result<ValueId, Diagnostic> {
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

    fn call(&mut self, frame: &mut Frame, callee: &'p ast::Path, args: &'p [CallArg], span: Span) -> Result<Val, Diagnostic> {
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
    fn call_instance(&mut self, frame: &mut Frame, inst: usize, args: &'p [CallArg], span: Span) -> Result<Val, Diagnostic> {
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
        let values = result.ok_or_else(poisoned)?;
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
    fn bind_input(
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
    fn expand_type(&self, frame: &Frame, ellipsis: &Option<Vec<Dim>>, t: &ast::TensorType) -> Result<TensorType, Diagnostic> {
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

    // ----- built-in functions ----------------------------------------------------------------

    fn require_f32(&self, id: ValueId, what: &str) -> Result<(), Diagnostic> {
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

    fn unary(&mut self, op: UnaryOp, x: ValueId, span: Span) -> Result<Val, Diagnostic> {
        self.require_f32(x, &format!("`{}`", format!("{op:?}").to_lowercase()))?;
        let ty = self.ty(x).clone();
        self.push(Op::Unary { op, x }, ty, span).map(Val::Tensor)
    }

    fn binary(&mut self, op: BinaryOp, symbol: &str, l: ValueId, r: ValueId, span: Span) -> Result<Val, Diagnostic> {
        let what = format!("`{symbol}`");
        self.require_f32(l, &what)?;
        self.require_f32(r, &what)?;
        let dims = broadcast(&self.ty(l).dims, &self.ty(r).dims).map_err(|(a, b)| {
            Diagnostic::error(
                "E0200",
                format!("shapes {} and {} do not broadcast", self.type_name(l), self.type_name(r)),
                span,
                format!("dimension {} against {}", self.graph.dim_name(a), self.graph.dim_name(b)),
            )
            .with_secondary(self.span_of(l), format!("this is {}", self.type_name(l)))
            .with_secondary(self.span_of(r), format!("this is {}", self.type_name(r)))
            .with_help("aligned from the right, each pair of dimensions must be equal or one of them 1")
        })?;
        self.push(Op::Binary { op, lhs: l, rhs: r }, TensorType::new(DType::F32, dims), span)
            .map(Val::Tensor)
    }

    fn matmul(&mut self, l: ValueId, r: ValueId, span: Span) -> Result<Val, Diagnostic> {
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

    fn builtin(&mut self, frame: &mut Frame, callee: &ast::Ident, args: &'p [CallArg], span: Span) -> Result<Val, Diagnostic> {
        let name = callee.name.as_str();
        // `call` dispatches here only names of BUILTINS.
        let signature = BUILTINS.iter().find(|(n, _)| *n == name).map_or(name, |(_, s)| *s);
        let arity_error = |why: String| {
            Diagnostic::error("E0202", format!("wrong arguments to `{name}`"), span, why).with_help(format!("call it as `{signature}`"))
        };
        let positional: Vec<&'p Expr> = args.iter().filter(|a| a.name.is_none()).map(|a| &a.value).collect();
        let named: Vec<(&ast::Ident, &'p Expr)> = args.iter().filter_map(|a| a.name.as_ref().map(|n| (n, &a.value))).collect();
        let allowed_named: &[&str] = match name {
            "mean" | "sum" => &["axis", "keepdim"],
            "attention" => &["mask", "score", "scale"],
            "slice" => &["axis"],
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
                let op = if name == "mean" { ReduceOp::Mean } else { ReduceOp::Sum };
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
    fn attention(
        &mut self,
        frame: &mut Frame,
        [q, k, v]: [ValueId; 3],
        spans: [Span; 3],
        mask: Option<&'p Expr>,
        score: Option<&'p Expr>,
        scale: Option<&'p Expr>,
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
        let ty = TensorType::new(DType::F32, vec![qt.dims[0], qt.dims[1], qt.dims[2], vt.dims[3]]);
        self.push(
            Op::Attention {
                q,
                k,
                v,
                scale,
                mask,
                score,
            },
            ty,
            span,
        )
        .map(Val::Tensor)
    }

    /// `scan(x_t in x, h = h0) along axis { ...; return y }`: elaborates the body once, as a
    /// region of the arena between the scan's arguments and the scan node (see [`Scan`]).
    fn scan(
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

    fn add_fn(&mut self, f: IndexFn<'p>) -> usize {
        self.fns.push(f);
        self.fns.len() - 1
    }

    /// Compiles an index function (`(b, h, i, j) => ...`, a named mask such as `causal()`, or
    /// masks combined with `and`/`or`/`not`) to a [`ScalarFn`].
    #[allow(clippy::too_many_arguments)]
    fn scalar_fn(
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
    fn index_fn_into(
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

    fn require_bool(&self, f: &ScalarFn, r: usize, span: Span, word: &str) -> Result<(), Diagnostic> {
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
    fn call_fn(
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

    fn scalar_expr(
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

    fn gather(&mut self, table: ValueId, indices: ValueId, span: Span, table_span: Span, indices_span: Span) -> Result<Val, Diagnostic> {
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

    /// Warnings for declared parameters that no forward reads, grouped at the place in the
    /// user's file that declared them: the `param` itself, or the instance that brought them in
    /// (a standard-library block's parameters are reported where the block is used).
    fn unused_param_warnings(&self) -> Vec<Diagnostic> {
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

fn push_scalar(f: &mut ScalarFn, node: ScalarNode, t: ScalarType) -> usize {
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

/// A dimension of a signature, interpreted.
enum SigDim {
    Known(Dim),
    /// A name not bound yet: a new symbol (model inputs) or a pattern variable (block inputs).
    Var(String, Span),
    Ellipsis(Span),
}

/// The built-in functions and how to call them.
const BUILTINS: &[(&str, &str)] = &[
    ("gather", "gather(table, indices)"),
    ("arange", "arange(n)"),
    ("mean", "mean(x, axis = -1, keepdim = false)"),
    ("sum", "sum(x, axis = -1, keepdim = false)"),
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
    ("maximum", "maximum(a, b)"),
    ("minimum", "minimum(a, b)"),
    ("pow", "pow(a, b)"),
    ("float", "float(x)"),
    ("transpose", "transpose(x)"),
    ("split_heads", "split_heads(x, heads)"),
    ("merge_heads", "merge_heads(x)"),
    ("tabulate", "tabulate(d0, d1, ..., (i0, i1, ...) => value)"),
    ("unsqueeze", "unsqueeze(x, axis)"),
    ("slice", "slice(x, start, length, axis = -1)"),
    (
        "attention",
        "attention(q, k, v, mask = (b, h, i, j) => ..., score = (s, b, h, i, j) => ..., scale = 0.125)",
    ),
    ("matmul", "matmul(a, b)"),
    ("fail", "fail(\"message\")"),
];

fn describe(v: &Val) -> String {
    match v {
        Val::Tensor(_) => "a tensor".into(),
        Val::Tuple(ids) => format!("{} tensors", ids.len()),
        Val::Const(c) => format!("the value {c}"),
        Val::Dim(_) => "a dimension".into(),
        Val::Instance(_) => "a block".into(),
        Val::Array(_) => "an array of blocks".into(),
        Val::Fn(_) => "an index function".into(),
    }
}

fn stmt_span(s: &Stmt) -> Span {
    match s {
        Stmt::Assign { span, .. } | Stmt::Return { span, .. } | Stmt::For { span, .. } | Stmt::If { span, .. } => *span,
    }
}

/// Looks a dotted name up among compile-time bindings: `eps`, `c.hidden_size`.
fn ct_lookup(env: &[(String, CtValue)], p: &ast::Path) -> Option<CtValue> {
    let first = &p.segments[0].name;
    let v = env.iter().find(|(n, _)| n == first).map(|(_, v)| v)?;
    match (v, &p.segments[1..]) {
        (v, []) => Some(v.clone()),
        (CtValue::Config(c), [field]) => c.get(&field.name).cloned(),
        _ => None,
    }
}

/// Adds a "did you mean" to unknown-name errors about config fields.
fn explain_unknown(d: Diagnostic, env: &[(String, CtValue)]) -> Diagnostic {
    if d.code != "E0100" || !d.message.starts_with("unknown name `") {
        return d;
    }
    let name = d.message.trim_start_matches("unknown name `").trim_end_matches('`').to_string();
    if let Some((binding, field)) = name.split_once('.') {
        if let Some((_, CtValue::Config(c))) = env.iter().find(|(n, _)| n == binding) {
            let names: Vec<&str> = c.fields.iter().map(|(n, _)| n.as_str()).collect();
            let e = Diagnostic::error(
                "E0100",
                format!("config `{}` has no field `{field}`", c.name),
                d.primary.span,
                "unknown config field",
            );
            return match did_you_mean(field, names.iter().copied()) {
                Some(s) => e.with_help(format!("did you mean `{binding}.{s}`?")),
                None => e.with_help(format!("its fields are: {}", names.join(", "))),
            };
        }
    }
    match did_you_mean(&name, env.iter().map(|(n, _)| n.as_str())) {
        Some(s) => d.with_help(format!("did you mean `{s}`?")),
        None => d,
    }
}

fn abi_dtype(d: ast::DType) -> DType {
    match d {
        ast::DType::F32 => DType::F32,
        ast::DType::I64 => DType::I64,
        ast::DType::I32 => DType::I32,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::program::load_source;

    const FILE: &str = r#"
config C {
  d: int = 4 from "hidden_size"
  act: gelu | relu = gelu from "hidden_act"
  half = d / 2
}
model M(c: C) {
  param w: f32[c.half]
  forward(x: f32[B, c.half]) -> (y: f32[B, c.half]) { return if c.act == relu { relu(x * w) } else { gelu(x * w) } }
}
variant R = M { act = relu }
"#;

    fn config_of(model: &str, overrides: &ConfigOverrides) -> Vec<(String, String)> {
        let p = load_source("t.model", FILE, None).unwrap();
        let g = check_model(&p, Some(model), overrides).unwrap_or_else(|e| panic!("{e:?}")).graph;
        g.config.iter().map(|(k, v)| (k.clone(), v.to_string())).collect()
    }

    fn get(config: &[(String, String)], key: &str) -> String {
        config.iter().find(|(k, _)| k == key).unwrap().1.clone()
    }

    #[test]
    fn config_json_keys_configure_fields_and_derived_values_follow() {
        let o = ConfigOverrides::default()
            .with_checkpoint_json(r#"{"hidden_size": 12, "hidden_act": "relu", "d": 99}"#)
            .unwrap();
        let c = config_of("M", &o);
        assert_eq!(get(&c, "d"), "12", "`from` names the key; the field's own name is not read");
        assert_eq!(get(&c, "half"), "6");
        assert_eq!(get(&c, "act"), "relu");
    }

    #[test]
    fn variants_beat_the_checkpoint_and_set_beats_both() {
        let o = ConfigOverrides::default()
            .with_checkpoint_json(r#"{"hidden_act": "gelu"}"#)
            .unwrap();
        assert_eq!(get(&config_of("R", &o), "act"), "relu");
        let o = ConfigOverrides {
            set: vec![("act".into(), "gelu".into())],
            ..o
        };
        assert_eq!(get(&config_of("R", &o), "act"), "gelu");
    }

    #[test]
    fn bad_overrides_are_errors_at_the_field() {
        let p = load_source("t.model", FILE, None).unwrap();
        let o = ConfigOverrides::default()
            .with_checkpoint_json(r#"{"hidden_act": "swish"}"#)
            .unwrap();
        let Err(CheckError::Diagnostics(d)) = check_model(&p, Some("M"), &o) else {
            panic!("accepted")
        };
        assert_eq!(d[0].code, "E0104");
        assert!(d[0].message.contains("hidden_act"), "{}", d[0].message);
        let o = ConfigOverrides {
            set: vec![("dd".into(), "3".into())],
            ..Default::default()
        };
        let Err(CheckError::Diagnostics(d)) = check_model(&p, Some("M"), &o) else {
            panic!("accepted")
        };
        assert_eq!(d[0].code, "E0103");
        assert!(d[0].help.as_deref().unwrap_or("").contains("`d`"));
    }

    #[test]
    fn the_chosen_branch_alone_is_compiled() {
        let p = load_source("t.model", FILE, None).unwrap();
        let ir = |m: &str| check_model(&p, Some(m), &ConfigOverrides::default()).unwrap().graph.print();
        assert!(ir("M").contains("gelu") && !ir("M").contains("relu"));
        assert!(ir("R").contains("relu") && !ir("R").contains("gelu"));
    }

    const SCAN: &str = r#"
config C { d = 3 }
model S(c: C) {
  param w: f32[c.d]
  forward(x: f32[B, T, c.d], h0: f32[B, c.d]) -> (y: f32[B, T, c.d], h: f32[B, c.d]) {
    y, h = scan(x_t in x, h = h0) {
      h = h * w + x_t
      return h
    }
    return y, h * w
  }
}
"#;

    #[test]
    fn scan_bodies_are_regions_only_their_scan_sees() {
        let p = load_source("s.model", SCAN, None).unwrap();
        let g = check_model(&p, Some("S"), &ConfigOverrides::default())
            .unwrap_or_else(|e| panic!("{e:?}"))
            .graph;
        g.verify().unwrap();
        // `w` is read in the body and after it: one graph parameter, two nodes.
        assert_eq!(g.params.len(), 1);
        assert_eq!(g.nodes.iter().filter(|n| n.op == Op::Param(0)).count(), 2);
        let regions = g.enclosing_scans();
        let (scan, body) = g
            .nodes
            .iter()
            .enumerate()
            .find_map(|(i, n)| match &n.op {
                Op::Scan(s) => Some((ValueId(i as u32), s.clone())),
                _ => None,
            })
            .unwrap();
        assert!(regions[body.body_start.0 as usize..scan.0 as usize]
            .iter()
            .all(|r| *r == Some(scan)));
        // An output that reads a body value directly is malformed.
        let mut bad = g.clone();
        bad.outputs[1].1 = body.next[0];
        assert!(bad.verify().unwrap_err().contains("scan body"));
        // So is a scan whose results do not follow it.
        let mut bad = g.clone();
        bad.nodes[scan.0 as usize + 1].op = Op::Constant(0.0);
        assert!(bad.verify().is_err());
    }
}
