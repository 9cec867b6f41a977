//! Text → [`ast::File`]. pest does the recognition; this module builds the spanned tree, gives
//! operators their precedence (a Pratt parser), and turns pest's errors into [`Diagnostic`]s that
//! name what was expected in words.

use crate::ast::*;
use crate::{Diagnostic, Span};
use pest::iterators::Pair;
use pest::pratt_parser::{Assoc, Op, PrattParser};
use pest::Parser as _;
use std::sync::OnceLock;

#[derive(pest_derive::Parser)]
#[grammar = "model.pest"]
struct ModelParser;

/// Nesting deeper than this is refused before pest sees it, so no input can overflow the stack.
const MAX_NESTING: usize = 200;

/// Parses a whole `.model` file.
pub fn parse_file(text: &str) -> Result<File, Diagnostic> {
    check_nesting(text)?;
    let mut pairs = ModelParser::parse(Rule::file, text).map_err(syntax_error)?;
    let file = pairs.next().expect("the file rule always produces one pair");
    let mut items = Vec::new();
    for pair in file.into_inner() {
        match pair.as_rule() {
            Rule::config_decl => items.push(Item::Config(config_decl(pair))),
            Rule::model_decl => items.push(Item::Model(model_decl(pair))),
            Rule::EOI => {}
            rule => unreachable!("grammar produced {rule:?} at file level"),
        }
    }
    Ok(File { items })
}

fn check_nesting(text: &str) -> Result<(), Diagnostic> {
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
                        Span::new(i, i + 1),
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

fn span_of(pair: &Pair<'_, Rule>) -> Span {
    let s = pair.as_span();
    Span::new(s.start(), s.end())
}

fn ident(pair: Pair<'_, Rule>) -> Ident {
    debug_assert!(matches!(pair.as_rule(), Rule::ident | Rule::segment));
    Ident {
        name: pair.as_str().to_string(),
        span: span_of(&pair),
    }
}

fn path(pair: Pair<'_, Rule>) -> Path {
    let span = span_of(&pair);
    Path {
        segments: pair.into_inner().map(ident).collect(),
        span,
    }
}

fn config_decl(pair: Pair<'_, Rule>) -> ConfigDecl {
    let span = span_of(&pair);
    let mut inner = pair.into_inner();
    let name = ident(inner.next().unwrap());
    let fields = inner
        .map(|field| {
            let mut f = field.into_inner();
            ConfigField {
                name: ident(f.next().unwrap()),
                value: expr(f.next().unwrap()),
            }
        })
        .collect();
    ConfigDecl { name, fields, span }
}

fn model_decl(pair: Pair<'_, Rule>) -> ModelDecl {
    let span = span_of(&pair);
    let mut inner = pair.into_inner();
    let name = ident(inner.next().unwrap());
    let config_binding = ident(inner.next().unwrap());
    let config_type = ident(inner.next().unwrap());
    let mut params = Vec::new();
    let mut forwards = Vec::new();
    for member in inner {
        match member.as_rule() {
            Rule::param_decl => {
                let span = span_of(&member);
                let mut m = member.into_inner();
                params.push(ParamDecl {
                    path: path(m.next().unwrap()),
                    ty: tensor_type(m.next().unwrap()),
                    span,
                });
            }
            Rule::forward_decl => forwards.push(forward_decl(member)),
            rule => unreachable!("grammar produced {rule:?} in a model"),
        }
    }
    ModelDecl {
        name,
        config_binding,
        config_type,
        params,
        forwards,
        span,
    }
}

fn forward_decl(pair: Pair<'_, Rule>) -> ForwardDecl {
    let span = span_of(&pair);
    let mut inputs = Vec::new();
    let mut outputs = Vec::new();
    let mut body = Vec::new();
    for part in pair.into_inner() {
        match part.as_rule() {
            Rule::input_decl | Rule::output_decl => {
                let is_input = part.as_rule() == Rule::input_decl;
                let mut p = part.into_inner();
                let decl = ValueDecl {
                    name: ident(p.next().unwrap()),
                    ty: tensor_type(p.next().unwrap()),
                };
                if is_input {
                    inputs.push(decl)
                } else {
                    outputs.push(decl)
                }
            }
            Rule::body => body = part.into_inner().map(stmt).collect(),
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

fn tensor_type(pair: Pair<'_, Rule>) -> TensorType {
    let span = span_of(&pair);
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
        dtype_span: span_of(&dt),
        dims: inner.map(expr).collect(),
        span,
    }
}

fn stmt(pair: Pair<'_, Rule>) -> Stmt {
    let span = span_of(&pair);
    match pair.as_rule() {
        Rule::assign_stmt => {
            let mut p = pair.into_inner();
            Stmt::Assign {
                name: ident(p.next().unwrap()),
                value: expr(p.next().unwrap()),
                span,
            }
        }
        Rule::return_stmt => Stmt::Return {
            values: pair.into_inner().map(expr).collect(),
            span,
        },
        rule => unreachable!("grammar produced {rule:?} as a statement"),
    }
}

fn pratt() -> &'static PrattParser<Rule> {
    static PRATT: OnceLock<PrattParser<Rule>> = OnceLock::new();
    PRATT.get_or_init(|| {
        PrattParser::new()
            .op(Op::infix(Rule::add, Assoc::Left) | Op::infix(Rule::sub, Assoc::Left))
            .op(Op::infix(Rule::mul, Assoc::Left) | Op::infix(Rule::div, Assoc::Left))
            .op(Op::infix(Rule::matmul, Assoc::Left))
            .op(Op::prefix(Rule::neg))
    })
}

fn expr(pair: Pair<'_, Rule>) -> Expr {
    debug_assert_eq!(pair.as_rule(), Rule::expr);
    pratt()
        .map_primary(primary)
        .map_prefix(|op, rhs| Expr {
            span: span_of(&op).to(rhs.span),
            kind: ExprKind::Neg(Box::new(rhs)),
        })
        .map_infix(|lhs, op, rhs| {
            let op = match op.as_rule() {
                Rule::add => BinaryOp::Add,
                Rule::sub => BinaryOp::Sub,
                Rule::mul => BinaryOp::Mul,
                Rule::div => BinaryOp::Div,
                Rule::matmul => BinaryOp::MatMul,
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

fn primary(pair: Pair<'_, Rule>) -> Expr {
    let span = span_of(&pair);
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
        Rule::path => ExprKind::Path(path(pair)),
        Rule::call => {
            let mut inner = pair.into_inner();
            let callee = ident(inner.next().unwrap());
            let args = inner
                .map(|arg| {
                    let mut a: Vec<_> = arg.into_inner().collect();
                    let value = expr(a.pop().unwrap());
                    CallArg {
                        name: a.pop().map(ident),
                        value,
                    }
                })
                .collect();
            ExprKind::Call { callee, args }
        }
        Rule::expr => return expr(pair),
        rule => unreachable!("grammar produced {rule:?} as a primary"),
    };
    Expr { kind, span }
}

/// Human names for grammar rules, so "expected ident" reads "expected a name".
fn rule_name(rule: Rule) -> &'static str {
    match rule {
        Rule::EOI => "end of file",
        Rule::file | Rule::config_decl | Rule::model_decl => "`config` or `model`",
        Rule::config_field => "a config field (`name = value`)",
        Rule::param_decl => "`param`",
        Rule::forward_decl => "`forward`",
        Rule::input_decl => "an input (`name: f32[dims]`)",
        Rule::output_decl => "an output (`name: f32[dims]`)",
        Rule::tensor_type => "a tensor type such as `f32[B, T, 768]`",
        Rule::dtype => "an element type (`f32`, `i64` or `i32`)",
        Rule::body => "a body in braces",
        Rule::assign_stmt => "an assignment (`name = expression`)",
        Rule::return_stmt => "`return`",
        Rule::expr | Rule::neg | Rule::call | Rule::call_arg => "an expression",
        Rule::add | Rule::sub | Rule::mul | Rule::div | Rule::matmul => "an operator",
        Rule::number => "a number",
        Rule::boolean => "`true` or `false`",
        Rule::path | Rule::param_path => "a name",
        Rule::segment => "a name or an index",
        Rule::ident => "a name",
        Rule::keyword => "a keyword",
        _ => "something else",
    }
}

fn syntax_error(err: pest::error::Error<Rule>) -> Diagnostic {
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
    let diag = Diagnostic::error("E0001", "syntax error", Span::new(start, end), label);
    match help {
        Some(h) => diag.with_help(h),
        None => diag,
    }
}

fn help_for(positives: &[Rule]) -> Option<String> {
    if positives.contains(&Rule::dtype) {
        Some("tensor types are written `f32[dims]`, `i64[dims]` or `i32[dims]`".into())
    } else if positives.contains(&Rule::config_decl) || positives.contains(&Rule::model_decl) {
        Some("a file holds `config Name { ... }` and `model Name(c: Config) { ... }` items".into())
    } else if positives.contains(&Rule::param_decl) || positives.contains(&Rule::forward_decl) {
        Some("a model holds `param path: type` declarations and one `forward(...) -> (...) { ... }`".into())
    } else {
        None
    }
}
