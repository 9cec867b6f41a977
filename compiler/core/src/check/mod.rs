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

mod builtins;
mod calls;
mod diagnostics;
mod dropout;
mod forward;
mod index_fn;
mod instantiate;
mod loops;
mod scan;
mod tensor_fns;

use builtins::BUILTINS;
use diagnostics::{ct_lookup, describe, explain_unknown, poisoned, stmt_span, POISONED};
pub use dropout::DROPOUT_SEED;
use index_fn::push_scalar;

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
    /// Which keys of the checkpoint's config.json the model's config read, assumed and ignored.
    pub config_keys: crate::config::KeyUsage,
    /// The config as a `config.json` states it (`config::checkpoint_json`), and the model's
    /// name as `architectures` lists it: what a checkpoint lmc writes says about its model.
    pub checkpoint_config: serde_json::Map<String, serde_json::Value>,
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
    let (weights, overrides) =
        crate::config::take_weight_format(config_decl, overrides, decl.name.span).map_err(|d| CheckError::Diagnostics(vec![d]))?;
    let overrides = &overrides;
    let (config, config_warnings) = evaluate_config(config_decl, &variant_overrides, overrides).map_err(CheckError::Diagnostics)?;
    let config_keys = crate::config::key_usage(config_decl, overrides);
    let mut checkpoint_config = crate::config::checkpoint_json(config_decl, &config, &variant_overrides, overrides);
    // The name asked for: a variant named as a transformers class (`Qwen2ForCausalLM`,
    // `RobertaForMaskedLM`) is that class.
    checkpoint_config.insert("architectures".into(), serde_json::json!([name]));

    let config = Rc::new(config);
    let elaborate = |given: &crate::config::Given| -> Result<Elab, (Vec<Diagnostic>, Vec<String>)> {
        let mut e = Elab::new(p, &name);
        e.given = given.clone();
        e.training = overrides.training;
        e.graph.weights = weights;
        e.graph.config = config.fields.iter().map(|(k, v)| (k.clone(), config_value(v))).collect();
        let root = e.instantiate_model(model_ref, decl, config.clone());
        if e.errors.is_empty() {
            if let Some(root) = root {
                e.run_model(root);
            }
        }
        if e.errors.is_empty() {
            return Ok(e);
        }
        // A block used many times reports the same problem once.
        let mut unique: Vec<Diagnostic> = Vec::new();
        for d in e.errors.drain(..) {
            if !unique.contains(&d) {
                unique.push(d);
            }
        }
        Err((unique, e.asked_absent))
    };
    let mut elaborated = elaborate(&overrides.given);
    // A compile is given the absent inputs its caller names (none, when it names none), and
    // where the model cannot check with those, the fewest more, in declaration order, of the
    // ones it asks about with `given(name)` (whose absence it handles). A model that makes an
    // input from another when not given it (`if given(a) { a } else { f(b) }`, `b` also absent)
    // is so compiled with `a`, and a run given neither is told `a` is missing. A model that
    // checks with none of them reports what is wrong as it stands (an input used where it may
    // be absent is E0211).
    if let Err((_, asked)) = &elaborated {
        let named: Vec<String> = match &overrides.given {
            crate::config::Given::None => Vec::new(),
            crate::config::Given::Named(names) => names.clone(),
            // Every input is given: none is asked about.
            crate::config::Given::All => Vec::new(),
        };
        let candidates: Vec<String> = absent_inputs(decl)
            .into_iter()
            .filter(|i| asked.contains(i) && !named.contains(i))
            .collect();
        for k in 1..=candidates.len() {
            let given = named.iter().chain(&candidates[..k]).cloned().collect();
            if let Ok(e) = elaborate(&crate::config::Given::Named(given)) {
                elaborated = Ok(e);
                break;
            }
        }
    }
    let e = elaborated.map_err(|(errors, _)| CheckError::Diagnostics(errors))?;
    debug_assert_eq!(e.graph.verify(), Ok(()));
    let mut warnings = config_warnings;
    warnings.extend(e.unused_param_warnings());
    Ok(Checked {
        graph: e.graph,
        warnings,
        config_keys,
        checkpoint_config,
    })
}

/// The names of the model's inputs declared `= absent`, in order.
fn absent_inputs(decl: &ast::ModelDecl) -> Vec<String> {
    decl.members
        .iter()
        .filter_map(|m| match m {
            ast::Member::Forward(f) => Some(f),
            _ => None,
        })
        .flat_map(|f| &f.inputs)
        .filter(|i| i.default.as_ref().is_some_and(|d| d.name == "absent"))
        .map(|i| i.name.name.clone())
        .collect()
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
    /// An input declared `= absent` that this compile is not given.
    Absent,
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
    /// `absent`, or an input declared `= absent` that this compile is not given: a model output
    /// that returns it is left out.
    Absent,
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
    /// See [`ConfigOverrides::given`].
    given: crate::config::Given,
    /// Inputs not given that the forward asked about with `given(name)`: those whose absence
    /// it handles.
    asked_absent: Vec<String>,
    /// See [`ConfigOverrides::training`].
    training: bool,
    /// The `dropout_seed` input, made at the first dropout that drops.
    dropout_seed: Option<ValueId>,
    /// Dropouts made so far: each gets its own stream of random numbers.
    dropout_streams: i64,
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
                weights: Default::default(),
            },
            instances: Vec::new(),
            errors: Vec::new(),
            spans: Vec::new(),
            call_depth: 0,
            current_parent: None,
            fns: Vec::new(),
            scan_depth: 0,
            given: Default::default(),
            asked_absent: Vec::new(),
            training: false,
            dropout_seed: None,
            dropout_streams: 0,
        }
    }

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

    fn report(&mut self, d: Diagnostic) {
        if d.code != POISONED {
            self.errors.push(d);
        }
    }
}

/// A dimension of a signature, interpreted.
enum SigDim {
    Known(Dim),
    /// A name not bound yet: a new symbol (model inputs) or a pattern variable (block inputs).
    Var(String, Span),
    Ellipsis(Span),
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
    fn compile_time_calls_round_as_python_does() {
        let file = r#"
config C {
  d = 64 from "hidden_size"
  rotary = int(d * 0.25)
  third = floor(d / 3)
  third_up = ceil(d / 3)
  neg_floor = floor(-7 / 2)
  neg_ceil = ceil(-7 / 2)
  neg_int = int(-3.5)
  exact = floor(d / 4)
  small = min(d, 48)
  big = max(2.5, 1)
}
model M(c: C) {
  param w: f32[c.rotary]
  forward(x: f32[B, c.rotary]) -> (y: f32[B, c.rotary]) { return x * w }
}
"#;
        let p = load_source("t.model", file, None).unwrap();
        let o = ConfigOverrides::default().with_checkpoint_json(r#"{"hidden_size": 100}"#).unwrap();
        let g = check_model(&p, Some("M"), &o).unwrap_or_else(|e| panic!("{e:?}")).graph;
        let config: Vec<(String, String)> = g.config.iter().map(|(k, v)| (k.clone(), v.to_string())).collect();
        for (key, want) in [
            ("rotary", "25"),
            ("third", "33"),
            ("third_up", "34"),
            ("neg_floor", "-4"),
            ("neg_ceil", "-3"),
            ("neg_int", "-3"),
            ("exact", "25"),
            ("small", "48"),
            ("big", "2.5e0"),
        ] {
            assert_eq!(get(&config, key), want, "{key}");
        }
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
