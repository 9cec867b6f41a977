//! Text → [`ast::File`]. pest does the recognition; this module builds the spanned tree, gives
//! operators their precedence (a Pratt parser), and turns pest's errors into [`Diagnostic`]s that
//! name what was expected in words.

use crate::ast::*;
use crate::{Diagnostic, FileId, Span};
use pest::iterators::Pair;
use pest::pratt_parser::{Assoc, Op, PrattParser};
use pest::Parser as _;
use std::sync::OnceLock;

#[derive(pest_derive::Parser)]
#[grammar = "model.pest"]
struct ModelParser;

/// Nesting deeper than this is refused before pest sees it, so no input can overflow the stack.
const MAX_NESTING: usize = 64;
/// At most this many operators in one expression (outside brackets), for the same reason.
const MAX_OPERATORS: usize = 256;

/// Parses a whole `.model` file; every span carries `file`.
pub fn parse_file(text: &str, file: FileId) -> Result<File, Diagnostic> {
    check_nesting(text, file)?;
    let mut pairs = ModelParser::parse(Rule::file, text).map_err(|e| syntax_error(e, file, text))?;
    let root = pairs.next().expect("the file rule always produces one pair");
    let p = Builder {
        file,
        error: std::cell::RefCell::new(None),
    };
    let mut items = Vec::new();
    for pair in root.into_inner() {
        match pair.as_rule() {
            Rule::use_decl => items.push(Item::Use(p.use_decl(pair))),
            Rule::config_decl => items.push(Item::Config(p.config_decl(pair))),
            Rule::block_decl => items.push(Item::Block(p.block_decl(pair))),
            Rule::model_decl => items.push(Item::Model(p.model_decl(pair))),
            Rule::variant_decl => items.push(Item::Variant(p.variant_decl(pair))),
            Rule::fn_decl => items.push(Item::Fn(p.fn_decl(pair))),
            Rule::EOI => {}
            rule => unreachable!("grammar produced {rule:?} at file level"),
        }
    }
    match p.error.into_inner() {
        Some(d) => Err(d),
        None => Ok(File { items }),
    }
}

fn check_nesting(text: &str, file: FileId) -> Result<(), Diagnostic> {
    let mut depth = 0usize;
    let mut in_comment = false;
    for (i, b) in text.bytes().enumerate() {
        match b {
            b'#' => in_comment = true,
            b'\n' => in_comment = false,
            b'(' | b'[' | b'{' if !in_comment => {
                depth += 1;
                if depth > MAX_NESTING {
                    return Err(Diagnostic::error(
                        "E0002",
                        "brackets nested too deeply",
                        Span::new(file, i, i + 1),
                        format!("nesting depth {depth} here"),
                    )
                    .with_help(format!(
                        "lmc accepts at most {MAX_NESTING} nested brackets; name intermediate values instead"
                    )));
                }
            }
            b')' | b']' | b'}' if !in_comment => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    Ok(())
}

/// The length of `text` without trailing whitespace and comments (strings have no escapes and
/// no newlines, so a `#` outside quotes starts a comment).
fn code_len(text: &str) -> usize {
    let mut end = 0;
    let mut in_string = false;
    let mut in_comment = false;
    for (i, c) in text.char_indices() {
        match c {
            '\n' => in_comment = false,
            _ if in_comment => {}
            '"' => {
                in_string = !in_string;
                end = i + 1;
            }
            '#' if !in_string => in_comment = true,
            c if c.is_whitespace() && !in_string => {}
            c => end = i + c.len_utf8(),
        }
    }
    end
}

/// Builds AST nodes from pest pairs of one file.
struct Builder {
    file: FileId,
    /// The first limit exceeded while building, if any.
    error: std::cell::RefCell<Option<Diagnostic>>,
}

impl Builder {
    fn span(&self, pair: &Pair<'_, Rule>) -> Span {
        let s = pair.as_span();
        let end = match pair.as_rule() {
            // Rules that end in an optional `;` also swallow the whitespace and comments pest
            // skipped while looking for it; the construct itself ends before them.
            // So do those that end in an optional `else` or `along` part, or `fn` items.
            Rule::use_decl
            | Rule::config_field
            | Rule::config_assume
            | Rule::param_decl
            | Rule::instance_decl
            | Rule::assign_stmt
            | Rule::return_stmt
            | Rule::if_stmt
            | Rule::member_if
            | Rule::fn_decl => s.start() + code_len(pair.as_str()),
            _ => s.end(),
        };
        Span::new(self.file, s.start(), end)
    }

    fn ident(&self, pair: Pair<'_, Rule>) -> Ident {
        Ident {
            name: pair.as_str().to_string(),
            span: self.span(&pair),
        }
    }

    fn path(&self, pair: Pair<'_, Rule>) -> Path {
        let span = self.span(&pair);
        Path {
            segments: pair.into_inner().map(|p| self.ident(p)).collect(),
            span,
        }
    }

    fn string(&self, pair: Pair<'_, Rule>) -> StringLit {
        let text = pair.as_str();
        StringLit {
            value: text[1..text.len() - 1].to_string(),
            span: self.span(&pair),
        }
    }

    fn use_decl(&self, pair: Pair<'_, Rule>) -> UseDecl {
        let span = self.span(&pair);
        let mut inner = pair.into_inner();
        let module = inner.next().unwrap().into_inner().map(|p| self.ident(p)).collect();
        UseDecl {
            module,
            names: inner.map(|p| self.ident(p)).collect(),
            span,
        }
    }

    fn config_decl(&self, pair: Pair<'_, Rule>) -> ConfigDecl {
        let span = self.span(&pair);
        let mut inner = pair.into_inner();
        let name = self.ident(inner.next().unwrap());
        let mut model_types = Vec::new();
        let mut fields_pairs = Vec::new();
        let mut assumptions = Vec::new();
        for part in inner {
            match part.as_rule() {
                Rule::string => model_types.push(self.string(part)),
                Rule::config_assume => {
                    let span = self.span(&part);
                    let mut p = part.into_inner();
                    let key = self.string(p.next().unwrap());
                    let value = p.next().filter(|v| v.as_rule() == Rule::expr).map(|v| self.expr(v));
                    assumptions.push(ConfigAssumption { key, value, span });
                }
                _ => fields_pairs.push(part),
            }
        }
        let fields = fields_pairs
            .into_iter()
            .map(|field| {
                let mut name = None;
                let mut ty = None;
                let mut value = None;
                let mut hf_keys = Vec::new();
                for part in field.into_inner() {
                    match part.as_rule() {
                        Rule::ident => name = Some(self.ident(part)),
                        Rule::scalar_type => {
                            let sp = self.span(&part);
                            ty = Some(match part.as_str() {
                                "int" => ConfigType::Int(sp),
                                "float" => ConfigType::Float(sp),
                                _ => ConfigType::Bool(sp),
                            })
                        }
                        Rule::enum_type => ty = Some(ConfigType::Enum(part.into_inner().map(|p| self.ident(p)).collect())),
                        Rule::expr => value = Some(self.expr(part)),
                        Rule::string => hf_keys.push(self.string(part)),
                        rule => unreachable!("grammar produced {rule:?} in a config field"),
                    }
                }
                ConfigField {
                    name: name.unwrap(),
                    ty,
                    value: value.unwrap(),
                    hf_keys,
                }
            })
            .collect();
        ConfigDecl {
            name,
            model_types,
            fields,
            assumptions,
            span,
        }
    }

    fn block_decl(&self, pair: Pair<'_, Rule>) -> BlockDecl {
        let span = self.span(&pair);
        let mut inner = pair.into_inner();
        let name = self.ident(inner.next().unwrap());
        let mut params = Vec::new();
        let mut members = Vec::new();
        for part in inner {
            match part.as_rule() {
                Rule::block_param => {
                    let mut p = part.into_inner();
                    params.push(BlockParam {
                        name: self.ident(p.next().unwrap()),
                        ty: self.ident(p.next().unwrap()),
                        default: p.next().map(|e| self.expr(e)),
                    });
                }
                Rule::members => members = self.members(part),
                rule => unreachable!("grammar produced {rule:?} in a block"),
            }
        }
        BlockDecl {
            name,
            params,
            members,
            span,
        }
    }

    fn model_decl(&self, pair: Pair<'_, Rule>) -> ModelDecl {
        let span = self.span(&pair);
        let mut inner = pair.into_inner();
        ModelDecl {
            name: self.ident(inner.next().unwrap()),
            config_binding: self.ident(inner.next().unwrap()),
            config_type: self.ident(inner.next().unwrap()),
            members: self.members(inner.next().unwrap()),
            span,
        }
    }

    fn variant_decl(&self, pair: Pair<'_, Rule>) -> VariantDecl {
        let span = self.span(&pair);
        let mut inner = pair.into_inner();
        let name = self.ident(inner.next().unwrap());
        let base = self.ident(inner.next().unwrap());
        let overrides = inner
            .map(|f| {
                let mut f = f.into_inner();
                (self.ident(f.next().unwrap()), self.expr(f.next().unwrap()))
            })
            .collect();
        VariantDecl {
            name,
            base,
            overrides,
            span,
        }
    }

    fn fn_decl(&self, pair: Pair<'_, Rule>) -> FnDecl {
        let span = self.span(&pair);
        let mut parts: Vec<_> = pair.into_inner().collect();
        let value = self.expr(parts.pop().unwrap());
        let mut parts = parts.into_iter();
        let name = self.ident(parts.next().unwrap());
        let params = parts
            .map(|p| {
                let mut p = p.into_inner();
                let name = self.ident(p.next().unwrap());
                let t = p.next().unwrap();
                let ty = if t.as_rule() == Rule::tensor_type {
                    FnParamType::Tensor(self.tensor_type(t))
                } else {
                    FnParamType::Scalar(self.ident(t))
                };
                FnParam { name, ty }
            })
            .collect();
        FnDecl { name, params, value, span }
    }

    fn members(&self, pair: Pair<'_, Rule>) -> Vec<Member> {
        debug_assert_eq!(pair.as_rule(), Rule::members);
        pair.into_inner().map(|m| self.member(m)).collect()
    }

    fn member(&self, pair: Pair<'_, Rule>) -> Member {
        let span = self.span(&pair);
        match pair.as_rule() {
            Rule::param_decl => {
                let mut m = pair.into_inner();
                Member::Param {
                    path: self.path(m.next().unwrap()),
                    ty: self.tensor_type(m.next().unwrap()),
                    span,
                }
            }
            Rule::instance_decl => {
                let mut parts: Vec<_> = pair.into_inner().collect();
                let call = parts.pop().unwrap();
                let path = self.path(parts.remove(0));
                let count = parts.pop().map(|e| self.expr(e));
                let (block, args) = self.call_parts(call);
                Member::Instance {
                    path,
                    count,
                    block,
                    args,
                    span,
                }
            }
            Rule::member_if => {
                let mut m = pair.into_inner();
                let cond = self.expr(m.next().unwrap());
                let then = self.members(m.next().unwrap());
                let otherwise = match m.next() {
                    None => Vec::new(),
                    Some(e) if e.as_rule() == Rule::member_if => vec![self.member(e)],
                    Some(e) => self.members(e),
                };
                Member::If {
                    cond,
                    then,
                    otherwise,
                    span,
                }
            }
            Rule::forward_decl => Member::Forward(self.forward_decl(pair)),
            rule => unreachable!("grammar produced {rule:?} as a member"),
        }
    }

    fn forward_decl(&self, pair: Pair<'_, Rule>) -> ForwardDecl {
        let span = self.span(&pair);
        let mut inputs = Vec::new();
        let mut outputs = Outputs::Named(Vec::new());
        let mut body = Vec::new();
        for part in pair.into_inner() {
            match part.as_rule() {
                Rule::input_decl => {
                    let mut p = part.into_inner();
                    let name = self.ident(p.next().unwrap());
                    let t = p.next().unwrap();
                    let ty = if t.as_rule() == Rule::tensor_type {
                        InputType::Tensor(self.tensor_type(t))
                    } else {
                        InputType::IndexFn(self.span(&t))
                    };
                    let default = p.next().map(|d| self.ident(d));
                    inputs.push(InputDecl { name, ty, default });
                }
                Rule::outputs => {
                    let parts: Vec<_> = part.into_inner().collect();
                    outputs = if parts.len() == 1 && parts[0].as_rule() == Rule::tensor_type {
                        Outputs::Single(self.tensor_type(parts.into_iter().next().unwrap()))
                    } else {
                        Outputs::Named(parts.into_iter().map(|p| self.value_decl(p)).collect())
                    };
                }
                Rule::body => body = self.body(part),
                rule => unreachable!("grammar produced {rule:?} in a forward"),
            }
        }
        ForwardDecl {
            inputs,
            outputs,
            body,
            span,
        }
    }

    fn value_decl(&self, pair: Pair<'_, Rule>) -> ValueDecl {
        let mut p = pair.into_inner();
        ValueDecl {
            name: self.ident(p.next().unwrap()),
            ty: self.tensor_type(p.next().unwrap()),
        }
    }

    fn tensor_type(&self, pair: Pair<'_, Rule>) -> TensorType {
        let span = self.span(&pair);
        let mut inner = pair.into_inner();
        let dt = inner.next().unwrap();
        let dtype = match dt.as_str() {
            "f32" => DType::F32,
            "i64" => DType::I64,
            "i32" => DType::I32,
            other => unreachable!("grammar accepted dtype {other}"),
        };
        TensorType {
            dtype,
            dtype_span: self.span(&dt),
            dims: inner
                .map(|d| match d.as_rule() {
                    Rule::ellipsis => DimExpr::Ellipsis(self.span(&d)),
                    _ => DimExpr::Expr(self.expr(d)),
                })
                .collect(),
            span,
        }
    }

    fn body(&self, pair: Pair<'_, Rule>) -> Vec<Stmt> {
        pair.into_inner().map(|s| self.stmt(s)).collect()
    }

    fn stmt(&self, pair: Pair<'_, Rule>) -> Stmt {
        let span = self.span(&pair);
        match pair.as_rule() {
            Rule::assign_stmt => {
                let mut parts: Vec<_> = pair.into_inner().collect();
                let value = self.expr(parts.pop().unwrap());
                Stmt::Assign {
                    names: parts.into_iter().map(|p| self.ident(p)).collect(),
                    value,
                    span,
                }
            }
            Rule::return_stmt => Stmt::Return {
                values: pair.into_inner().map(|e| self.expr(e)).collect(),
                span,
            },
            Rule::for_stmt => {
                let mut p = pair.into_inner();
                Stmt::For {
                    var: self.ident(p.next().unwrap()),
                    iter: self.expr(p.next().unwrap()),
                    body: self.body(p.next().unwrap()),
                    span,
                }
            }
            Rule::if_stmt => {
                let mut p = pair.into_inner();
                let cond = self.expr(p.next().unwrap());
                let then = self.body(p.next().unwrap());
                let otherwise = match p.next() {
                    None => Vec::new(),
                    Some(e) if e.as_rule() == Rule::if_stmt => vec![self.stmt(e)],
                    Some(e) => self.body(e),
                };
                Stmt::If {
                    cond,
                    then,
                    otherwise,
                    span,
                }
            }
            rule => unreachable!("grammar produced {rule:?} as a statement"),
        }
    }

    fn call_parts(&self, pair: Pair<'_, Rule>) -> (Path, Vec<CallArg>) {
        let mut inner = pair.into_inner();
        let callee = self.path(inner.next().unwrap());
        let args = inner
            .map(|arg| {
                let mut a: Vec<_> = arg.into_inner().collect();
                let value = self.expr(a.pop().unwrap());
                CallArg {
                    name: a.pop().map(|n| self.ident(n)),
                    value,
                }
            })
            .collect();
        (callee, args)
    }

    fn expr(&self, pair: Pair<'_, Rule>) -> Expr {
        debug_assert_eq!(pair.as_rule(), Rule::expr);
        let span = self.span(&pair);
        let operators = pair
            .clone()
            .into_inner()
            .filter(|p| {
                !matches!(
                    p.as_rule(),
                    Rule::number | Rule::boolean | Rule::string | Rule::call | Rule::path | Rule::if_expr | Rule::scan_expr | Rule::expr
                )
            })
            .count();
        if operators > MAX_OPERATORS {
            self.error.borrow_mut().get_or_insert_with(|| {
                Diagnostic::error(
                    "E0002",
                    "expression too long",
                    span,
                    format!("{operators} operators in one expression"),
                )
                .with_help(format!(
                    "lmc accepts at most {MAX_OPERATORS} operators in one expression; name intermediate values instead"
                ))
            });
            return Expr {
                kind: ExprKind::Int("0".into()),
                span,
            };
        }
        pratt()
            .map_primary(|p| self.primary(p))
            .map_prefix(|op, rhs| Expr {
                span: self.span(&op).to(rhs.span),
                kind: if op.as_rule() == Rule::not {
                    ExprKind::Not(Box::new(rhs))
                } else {
                    ExprKind::Neg(Box::new(rhs))
                },
            })
            .map_infix(|lhs, op, rhs| {
                let op = match op.as_rule() {
                    Rule::add => BinaryOp::Add,
                    Rule::sub => BinaryOp::Sub,
                    Rule::mul => BinaryOp::Mul,
                    Rule::div => BinaryOp::Div,
                    Rule::matmul => BinaryOp::MatMul,
                    Rule::eq => BinaryOp::Eq,
                    Rule::ne => BinaryOp::Ne,
                    Rule::lt => BinaryOp::Lt,
                    Rule::le => BinaryOp::Le,
                    Rule::gt => BinaryOp::Gt,
                    Rule::ge => BinaryOp::Ge,
                    Rule::and => BinaryOp::And,
                    Rule::or => BinaryOp::Or,
                    rule => unreachable!("grammar produced infix {rule:?}"),
                };
                Expr {
                    span: lhs.span.to(rhs.span),
                    kind: ExprKind::Binary {
                        op,
                        lhs: Box::new(lhs),
                        rhs: Box::new(rhs),
                    },
                }
            })
            .parse(pair.into_inner())
    }

    fn primary(&self, pair: Pair<'_, Rule>) -> Expr {
        let span = self.span(&pair);
        let kind = match pair.as_rule() {
            Rule::number => {
                let text = pair.as_str().to_string();
                if text.contains(['.', 'e', 'E']) {
                    ExprKind::Float(text)
                } else {
                    ExprKind::Int(text)
                }
            }
            Rule::boolean => ExprKind::Bool(pair.as_str() == "true"),
            Rule::string => ExprKind::Str(self.string(pair).value),
            Rule::path => ExprKind::Path(self.path(pair)),
            Rule::call => {
                let (callee, args) = self.call_parts(pair);
                ExprKind::Call { callee, args }
            }
            Rule::lambda => {
                let mut parts: Vec<_> = pair.into_inner().collect();
                let body = self.expr(parts.pop().unwrap());
                ExprKind::Lambda {
                    params: parts.into_iter().map(|p| self.ident(p)).collect(),
                    body: Box::new(body),
                }
            }
            Rule::index => {
                let mut inner = pair.into_inner();
                let base = self.path(inner.next().unwrap());
                ExprKind::Index {
                    base,
                    indices: inner.map(|e| self.expr(e)).collect(),
                }
            }
            Rule::if_expr => {
                let mut p = pair.into_inner();
                let cond = self.expr(p.next().unwrap());
                let then = self.expr(p.next().unwrap());
                let next = p.next().unwrap();
                let otherwise = if next.as_rule() == Rule::if_expr {
                    self.primary(next)
                } else {
                    self.expr(next)
                };
                ExprKind::If {
                    cond: Box::new(cond),
                    then: Box::new(then),
                    otherwise: Box::new(otherwise),
                }
            }
            Rule::scan_expr => {
                let mut bindings = Vec::new();
                let mut along = None;
                let mut body = Vec::new();
                for part in pair.into_inner() {
                    match part.as_rule() {
                        Rule::scan_over | Rule::scan_carry => {
                            let carry = part.as_rule() == Rule::scan_carry;
                            let mut p = part.into_inner();
                            bindings.push(ScanBinding {
                                name: self.ident(p.next().unwrap()),
                                carry,
                                value: self.expr(p.next().unwrap()),
                            });
                        }
                        Rule::expr => along = Some(Box::new(self.expr(part))),
                        Rule::body => body = self.body(part),
                        rule => unreachable!("grammar produced {rule:?} in a scan"),
                    }
                }
                ExprKind::Scan { bindings, along, body }
            }
            Rule::expr => return self.expr(pair),
            rule => unreachable!("grammar produced {rule:?} as a primary"),
        };
        Expr { kind, span }
    }
}

fn pratt() -> &'static PrattParser<Rule> {
    static PRATT: OnceLock<PrattParser<Rule>> = OnceLock::new();
    PRATT.get_or_init(|| {
        PrattParser::new()
            .op(Op::infix(Rule::or, Assoc::Left))
            .op(Op::infix(Rule::and, Assoc::Left))
            .op(Op::infix(Rule::eq, Assoc::Left)
                | Op::infix(Rule::ne, Assoc::Left)
                | Op::infix(Rule::lt, Assoc::Left)
                | Op::infix(Rule::le, Assoc::Left)
                | Op::infix(Rule::gt, Assoc::Left)
                | Op::infix(Rule::ge, Assoc::Left))
            .op(Op::infix(Rule::add, Assoc::Left) | Op::infix(Rule::sub, Assoc::Left))
            .op(Op::infix(Rule::mul, Assoc::Left) | Op::infix(Rule::div, Assoc::Left))
            .op(Op::infix(Rule::matmul, Assoc::Left))
            .op(Op::prefix(Rule::neg) | Op::prefix(Rule::not))
    })
}

/// The keywords of `model.pest`, for the "is a keyword" hint.
const KEYWORDS: &[&str] = &[
    "config", "model", "block", "variant", "param", "forward", "return", "use", "if", "else", "for", "in", "from", "and", "or", "not",
    "true", "false", "scan", "fn",
];

/// Human names for grammar rules, so "expected ident" reads "expected a name".
fn rule_name(rule: Rule) -> &'static str {
    match rule {
        Rule::EOI => "end of file",
        Rule::file | Rule::use_decl | Rule::config_decl | Rule::block_decl | Rule::model_decl | Rule::variant_decl | Rule::fn_decl => {
            "an item (`use`, `config`, `block`, `model`, `variant` or `fn`)"
        }
        Rule::fn_param => "a parameter (`name: i64[B, T]` or `name: int`)",
        Rule::fn_type => "`fn`",
        Rule::scan_expr => "`scan`",
        Rule::scan_over | Rule::scan_carry => "a scan binding (`x_t in x` or `state = initial`)",
        Rule::module_path => "a module name",
        Rule::config_field => "a config field (`name = value`)",
        Rule::config_assume => "an assumption (`assume \"key\" = value`)",
        Rule::null_lit => "`null`",
        Rule::enum_type => "an enum type (`a | b | c`)",
        Rule::scalar_type => "a type (`int`, `float`, `bool`)",
        Rule::block_param => "a block parameter (`name: int`)",
        Rule::variant_field => "an override (`key = value`)",
        Rule::members => "a body in braces",
        Rule::param_decl => "`param`",
        Rule::instance_decl => "an instance (`name = Block(args)`)",
        Rule::member_if => "`if`",
        Rule::forward_decl => "`forward`",
        Rule::input_decl => "an input (`name: f32[dims]` or `name: fn`)",
        Rule::outputs | Rule::output_decl => "outputs (`(name: f32[dims])` or `f32[dims]`)",
        Rule::tensor_type => "a tensor type such as `f32[B, T, 768]`",
        Rule::dtype => "an element type (`f32`, `i64` or `i32`)",
        Rule::ellipsis => "`...`",
        Rule::body => "a body in braces",
        Rule::assign_stmt => "an assignment (`name = expression`)",
        Rule::return_stmt => "`return`",
        Rule::for_stmt => "`for`",
        Rule::if_stmt | Rule::if_expr => "`if`",
        Rule::lambda => "an index function (`(i, j) => ...`)",
        Rule::index => "an element (`x[i, j]`)",
        Rule::expr | Rule::neg | Rule::not | Rule::call | Rule::call_arg => "an expression",
        Rule::add | Rule::sub | Rule::mul | Rule::div | Rule::matmul => "an operator",
        Rule::eq | Rule::ne | Rule::lt | Rule::le | Rule::gt | Rule::ge | Rule::and | Rule::or => "an operator",
        Rule::number => "a number",
        Rule::boolean => "`true` or `false`",
        Rule::string => "a string",
        Rule::path | Rule::param_path => "a name",
        Rule::segment => "a name or an index",
        Rule::head => "a name",
        Rule::ident => "a name",
        Rule::keyword => "a keyword",
        _ => "something else",
    }
}

fn syntax_error(err: pest::error::Error<Rule>, file: FileId, text: &str) -> Diagnostic {
    let (start, end) = match err.location {
        pest::error::InputLocation::Pos(p) => (p, p + 1),
        pest::error::InputLocation::Span((s, e)) => (s, e.max(s + 1)),
    };
    let (label, help) = match &err.variant {
        pest::error::ErrorVariant::ParsingError { positives, .. } => {
            let mut names: Vec<&str> = positives.iter().map(|r| rule_name(*r)).collect();
            names.sort_unstable();
            names.dedup();
            let expected = match names.len() {
                0 => "something else".to_string(),
                1 => names[0].to_string(),
                _ => {
                    let last = names.pop().unwrap();
                    format!("{} or {}", names.join(", "), last)
                }
            };
            (format!("expected {expected}"), help_for(positives))
        }
        pest::error::ErrorVariant::CustomError { message } => (message.clone(), None),
    };
    let diag = Diagnostic::error("E0001", "syntax error", Span::new(file, start, end), label);
    // A keyword where a name belongs: say so.
    let word: String = text
        .get(start..)
        .unwrap_or("")
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
        .collect();
    let wanted_name = matches!(&err.variant, pest::error::ErrorVariant::ParsingError { positives, .. } if positives.contains(&Rule::ident));
    let help = if wanted_name && KEYWORDS.contains(&word.as_str()) {
        Some(format!("`{word}` is a keyword; choose another name"))
    } else {
        help
    };
    let help = match model_without_config(text.get(start..).unwrap_or("")) {
        Some(name) => Some(format!(
            "a model names its config: `model {name}(c: MyConfig) {{ ... }}`, with `config MyConfig {{ ... }}` declared (it may be empty)"
        )),
        None => help,
    };
    let help = if text.get(start..).is_some_and(|rest| rest.trim().is_empty()) && help.is_none() {
        Some("the file ends inside a block or a call: is a closing `}` or `)` missing?".to_string())
    } else {
        help
    };
    match help {
        Some(h) => diag.with_help(h),
        None => diag,
    }
}

/// `model Name {` (the config left out): the model's name.
fn model_without_config(rest: &str) -> Option<&str> {
    let after = rest.strip_prefix("model")?;
    if !after.starts_with(char::is_whitespace) {
        return None;
    }
    let after = after.trim_start();
    let len = after.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))?;
    let (name, tail) = after.split_at(len);
    (!name.is_empty() && tail.trim_start().starts_with('{')).then_some(name)
}

fn help_for(positives: &[Rule]) -> Option<String> {
    if positives.contains(&Rule::dtype) {
        Some("tensor types are written `f32[dims]`, `i64[dims]` or `i32[dims]`".into())
    } else if positives.contains(&Rule::config_decl) || positives.contains(&Rule::model_decl) {
        Some("a file holds `use`, `config`, `block`, `model` and `variant` items".into())
    } else if positives.contains(&Rule::param_decl) || positives.contains(&Rule::forward_decl) {
        Some("a block or model holds `param`s, instances (`name = Block(...)`), `if`s and one `forward`".into())
    } else {
        None
    }
}
