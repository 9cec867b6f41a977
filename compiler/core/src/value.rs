//! Compile-time values: config fields, block arguments, literals, and the arithmetic, comparisons
//! and conditionals the language evaluates before any tensor exists.

use lmc_grammar::ast::{BinaryOp, Expr, ExprKind, Path};
use lmc_grammar::{Diagnostic, Span};
use std::rc::Rc;

/// A value known when the model is compiled.
#[derive(Debug, Clone, PartialEq)]
pub enum CtValue {
    Int(i64),
    Float(f64),
    Bool(bool),
    Str(String),
    /// A value of an enum config field: its variant and the variants it could be.
    Enum {
        value: String,
        variants: Rc<Vec<String>>,
    },
    /// A whole config, passed to a block as `c`.
    Config(Rc<ConfigRecord>),
}

/// An evaluated config: its name and fields in declaration order.
#[derive(Debug, Clone, PartialEq)]
pub struct ConfigRecord {
    pub name: String,
    pub fields: Vec<(String, CtValue)>,
}

impl ConfigRecord {
    pub fn get(&self, field: &str) -> Option<&CtValue> {
        self.fields.iter().find(|(n, _)| n == field).map(|(_, v)| v)
    }
}

impl std::fmt::Display for CtValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CtValue::Int(v) => write!(f, "{v}"),
            CtValue::Float(v) if *v == 0.0 || (1e-4..1e15).contains(&v.abs()) => write!(f, "{v:?}"),
            CtValue::Float(v) => write!(f, "{v:e}"),
            CtValue::Bool(v) => write!(f, "{v}"),
            CtValue::Str(s) => write!(f, "\"{s}\""),
            CtValue::Enum { value, .. } => f.write_str(value),
            CtValue::Config(c) => write!(f, "config {}", c.name),
        }
    }
}

impl CtValue {
    /// The kind, for messages: "an integer", "true or false", ...
    pub fn kind_name(&self) -> String {
        match self {
            CtValue::Int(_) => "an integer".into(),
            CtValue::Float(_) => "a number".into(),
            CtValue::Bool(_) => "true or false".into(),
            CtValue::Str(_) => "a string".into(),
            CtValue::Enum { variants, .. } => format!("one of {}", variants.join(" | ")),
            CtValue::Config(c) => format!("config {}", c.name),
        }
    }

    pub fn as_f64(&self) -> Option<f64> {
        match self {
            CtValue::Int(i) => Some(*i as f64),
            CtValue::Float(f) => Some(*f),
            _ => None,
        }
    }

    /// The name of an enum value or a string, for comparisons between the two.
    fn text(&self) -> Option<&str> {
        match self {
            CtValue::Str(s) => Some(s),
            CtValue::Enum { value, .. } => Some(value),
            _ => None,
        }
    }
}

/// Resolves a name in a compile-time expression; `None` when it is unknown.
pub type Lookup<'a> = dyn Fn(&Path) -> Option<CtValue> + 'a;

/// Evaluates a compile-time expression. `enum_hint` lets a bare name stand for a variant of the
/// enum the value is expected to be (`position = rope`).
pub fn eval(e: &Expr, lookup: &Lookup<'_>, enum_hint: Option<&Rc<Vec<String>>>) -> Result<CtValue, Diagnostic> {
    match &e.kind {
        ExprKind::Int(text) => text.parse::<i64>().map(CtValue::Int).map_err(|_| {
            Diagnostic::error("E0104", "integer literal too large", e.span, "does not fit in 64 bits")
                .with_help("integers range up to 9223372036854775807")
        }),
        ExprKind::Float(text) => match text.parse::<f64>() {
            Ok(f) if f.is_finite() => Ok(CtValue::Float(f)),
            _ => Err(Diagnostic::error(
                "E0104",
                "number literal out of range",
                e.span,
                "not a finite 64-bit float",
            )),
        },
        ExprKind::Bool(b) => Ok(CtValue::Bool(*b)),
        ExprKind::Str(s) => Ok(CtValue::Str(s.clone())),
        ExprKind::Path(p) => {
            if let Some(v) = lookup(p) {
                return Ok(v);
            }
            if let (Some(variants), [name]) = (enum_hint, p.segments.as_slice()) {
                if variants.contains(&name.name) {
                    return Ok(CtValue::Enum {
                        value: name.name.clone(),
                        variants: variants.clone(),
                    });
                }
                let d = Diagnostic::error(
                    "E0100",
                    format!("`{}` is not a variant of this enum", name.name),
                    p.span,
                    format!("expected one of {}", variants.join(" | ")),
                );
                return Err(
                    match crate::suggest::did_you_mean(&name.name, variants.iter().map(String::as_str)) {
                        Some(s) => d.with_help(format!("did you mean `{s}`?")),
                        None => d,
                    },
                );
            }
            Err(Diagnostic::error(
                "E0100",
                format!("unknown name `{}`", p.dotted()),
                p.span,
                "not a compile-time value in scope",
            ))
        }
        ExprKind::Neg(x) => match eval(x, lookup, None)? {
            CtValue::Int(i) => i.checked_neg().map(CtValue::Int).ok_or_else(|| overflow(e.span)),
            CtValue::Float(f) => Ok(CtValue::Float(-f)),
            v => Err(Diagnostic::error(
                "E0104",
                format!("cannot negate {}", v.kind_name()),
                e.span,
                format!("this is {v}"),
            )),
        },
        ExprKind::Not(x) => match eval(x, lookup, None)? {
            CtValue::Bool(b) => Ok(CtValue::Bool(!b)),
            v => Err(Diagnostic::error(
                "E0104",
                "`not` needs true or false",
                x.span,
                format!("this is {v}"),
            )),
        },
        ExprKind::If { cond, then, otherwise } => {
            if condition(cond, lookup)? {
                eval(then, lookup, enum_hint)
            } else {
                eval(otherwise, lookup, enum_hint)
            }
        }
        ExprKind::Binary { op, lhs, rhs } => {
            // A bare name compared with an enum value names one of its variants.
            let (a, b) = if matches!(op, BinaryOp::Eq | BinaryOp::Ne) {
                match eval(lhs, lookup, None) {
                    Ok(a) => {
                        let hint = if let CtValue::Enum { variants, .. } = &a {
                            Some(variants.clone())
                        } else {
                            None
                        };
                        let b = eval(rhs, lookup, hint.as_ref())?;
                        (a, b)
                    }
                    Err(err) => {
                        let b = eval(rhs, lookup, None).map_err(|_| err.clone())?;
                        let hint = if let CtValue::Enum { variants, .. } = &b {
                            Some(variants.clone())
                        } else {
                            None
                        };
                        match hint {
                            Some(h) => (eval(lhs, lookup, Some(&h))?, b),
                            None => return Err(err),
                        }
                    }
                }
            } else {
                (eval(lhs, lookup, None)?, eval(rhs, lookup, None)?)
            };
            binary(*op, a, b, e.span, lhs.span, rhs.span)
        }
        ExprKind::Lambda { .. } | ExprKind::Index { .. } => Err(Diagnostic::error(
            "E0104",
            "an index function or element is not a compile-time value",
            e.span,
            "only allowed in a forward function",
        )),
        ExprKind::Scan { .. } => Err(Diagnostic::error(
            "E0104",
            "a `scan` is not a compile-time value",
            e.span,
            "only allowed in a forward function",
        )),
        ExprKind::Call { callee, args } => match callee.segments.as_slice() {
            [name] if COMPILE_TIME_CALLS.contains(&name.name.as_str()) => compile_time_call(&name.name, args, e.span, lookup),
            _ => Err(Diagnostic::error(
                "E0104",
                format!("a call to `{}` is not a compile-time value", callee.dotted()),
                e.span,
                "needs a value known when the model is compiled",
            )
            .with_help(format!(
                "config values, dimensions and block arguments are built from literals, other config values and {}",
                COMPILE_TIME_CALLS.map(|c| format!("`{c}(...)`")).join(", ")
            ))),
        },
    }
}

/// The functions a compile-time value may call.
const COMPILE_TIME_CALLS: [&str; 5] = ["int", "floor", "ceil", "min", "max"];

/// `int(x)` (toward zero, as Python's `int`), `floor(x)`, `ceil(x)` of a number, as an integer;
/// given `a / b` of two integers they divide without the exactness `/` asks for (`floor(a / b)`
/// is Python's `a // b`). `min(a, b)` and `max(a, b)` of numbers.
fn compile_time_call(name: &str, args: &[lmc_grammar::ast::CallArg], span: Span, lookup: &Lookup<'_>) -> Result<CtValue, Diagnostic> {
    let wrong_args = |want: &str| {
        Diagnostic::error("E0104", format!("`{name}` takes {want}"), span, "in this call")
            .with_help(format!("write `{name}({})`", if want.contains("two") { "a, b" } else { "x" }))
    };
    if let Some(named) = args.iter().find_map(|a| a.name.as_ref()) {
        return Err(Diagnostic::error(
            "E0104",
            format!("`{name}` takes no named arguments"),
            named.span,
            "named here",
        ));
    }
    let number = |e: &Expr| -> Result<CtValue, Diagnostic> {
        match eval(e, lookup, None)? {
            v @ (CtValue::Int(_) | CtValue::Float(_)) => Ok(v),
            v => Err(Diagnostic::error(
                "E0104",
                format!("`{name}` needs a number"),
                e.span,
                format!("this is {v}"),
            )),
        }
    };
    match name {
        "min" | "max" => {
            let [a, b] = args else { return Err(wrong_args("two numbers")) };
            let (x, y) = (number(&a.value)?, number(&b.value)?);
            let first = match (x.as_f64(), y.as_f64()) {
                (Some(p), Some(q)) => (p <= q) == (name == "min"),
                _ => true,
            };
            Ok(match (x, y) {
                (CtValue::Int(p), CtValue::Int(q)) => CtValue::Int(if first { p } else { q }),
                (x, y) => CtValue::Float((if first { x.as_f64() } else { y.as_f64() }).unwrap_or(0.0)),
            })
        }
        _ => {
            let [x] = args else { return Err(wrong_args("one number")) };
            let x = &x.value;
            // `a / b` of integers: the rounding of the exact quotient.
            if let ExprKind::Binary {
                op: BinaryOp::Div,
                lhs,
                rhs,
            } = &x.kind
            {
                if let (CtValue::Int(a), CtValue::Int(b)) = (number(lhs)?, number(rhs)?) {
                    return round_quotient(name, a, b, rhs.span);
                }
            }
            round_number(name, number(x)?, span)
        }
    }
}

/// `int`, `floor` or `ceil` (`name`) of `a / b` of two integers: the rounding of the exact
/// quotient (`floor(a / b)` is Python's `a // b`).
pub fn round_quotient(name: &str, a: i64, b: i64, divisor: Span) -> Result<CtValue, Diagnostic> {
    if b == 0 {
        return Err(Diagnostic::error(
            "E0105",
            "division by zero in config arithmetic",
            divisor,
            "this is 0",
        ));
    }
    let (q, r) = (a / b, a % b);
    let below = r != 0 && ((r < 0) != (b < 0));
    Ok(CtValue::Int(match name {
        "floor" if below => q - 1,
        "ceil" if r != 0 && !below => q + 1,
        _ => q,
    }))
}

/// `int` (toward zero, as Python's `int`), `floor` or `ceil` (`name`) of a number.
pub fn round_number(name: &str, v: CtValue, span: Span) -> Result<CtValue, Diagnostic> {
    if let CtValue::Int(i) = v {
        return Ok(CtValue::Int(i));
    }
    let f = v.as_f64().unwrap_or(0.0);
    let r = match name {
        "floor" => f.floor(),
        "ceil" => f.ceil(),
        _ => f.trunc(),
    };
    if r.abs() < 9.2e18 {
        Ok(CtValue::Int(r as i64))
    } else {
        Err(overflow(span))
    }
}

/// Evaluates a condition, which must be true or false.
pub fn condition(e: &Expr, lookup: &Lookup<'_>) -> Result<bool, Diagnostic> {
    match eval(e, lookup, None)? {
        CtValue::Bool(b) => Ok(b),
        v => Err(
            Diagnostic::error("E0104", "a condition must be true or false", e.span, format!("this is {v}"))
                .with_help("compare values to get a condition, e.g. `c.position == rope`"),
        ),
    }
}

fn overflow(span: Span) -> Diagnostic {
    Diagnostic::error(
        "E0104",
        "integer overflow in config arithmetic",
        span,
        "the result does not fit in 64 bits",
    )
}

/// Arithmetic, comparison and logic on compile-time values.
pub fn binary(op: BinaryOp, a: CtValue, b: CtValue, span: Span, lspan: Span, rspan: Span) -> Result<CtValue, Diagnostic> {
    use CtValue::*;
    let mismatch = |a: &CtValue, b: &CtValue| {
        Diagnostic::error(
            "E0104",
            format!("`{}` cannot combine {} and {}", op.symbol(), a.kind_name(), b.kind_name()),
            span,
            "in this expression",
        )
        .with_secondary(lspan, format!("this is {a}"))
        .with_secondary(rspan, format!("this is {b}"))
    };
    match op {
        BinaryOp::And | BinaryOp::Or => match (&a, &b) {
            (Bool(x), Bool(y)) => Ok(Bool(if op == BinaryOp::And { *x && *y } else { *x || *y })),
            _ => Err(mismatch(&a, &b)),
        },
        BinaryOp::Eq | BinaryOp::Ne => {
            let equal = match (&a, &b) {
                (Bool(x), Bool(y)) => x == y,
                _ if a.as_f64().is_some() && b.as_f64().is_some() => a.as_f64() == b.as_f64(),
                _ if a.text().is_some() && b.text().is_some() => a.text() == b.text(),
                _ => return Err(mismatch(&a, &b)),
            };
            Ok(Bool(equal == (op == BinaryOp::Eq)))
        }
        BinaryOp::Lt | BinaryOp::Le | BinaryOp::Gt | BinaryOp::Ge => match (a.as_f64(), b.as_f64()) {
            (Some(x), Some(y)) => Ok(Bool(match op {
                BinaryOp::Lt => x < y,
                BinaryOp::Le => x <= y,
                BinaryOp::Gt => x > y,
                _ => x >= y,
            })),
            _ => Err(mismatch(&a, &b)),
        },
        BinaryOp::MatMul => Err(Diagnostic::error(
            "E0104",
            "`@` needs tensors",
            span,
            "both sides are compile-time values",
        )),
        BinaryOp::Add | BinaryOp::Sub | BinaryOp::Mul | BinaryOp::Div => match (&a, &b) {
            (Int(x), Int(y)) => {
                let (x, y) = (*x, *y);
                let r = match op {
                    BinaryOp::Add => x.checked_add(y),
                    BinaryOp::Sub => x.checked_sub(y),
                    BinaryOp::Mul => x.checked_mul(y),
                    _ => {
                        if y == 0 {
                            return Err(Diagnostic::error(
                                "E0105",
                                "division by zero in config arithmetic",
                                rspan,
                                "this is 0",
                            ));
                        }
                        if x % y != 0 {
                            return Err(Diagnostic::error(
                                "E0105",
                                format!("{x} is not divisible by {y}"),
                                span,
                                format!("{x} / {y} leaves a remainder of {}", x % y),
                            )
                            .with_secondary(lspan, format!("this is {x}"))
                            .with_secondary(rspan, format!("this is {y}"))
                            .with_help("integer config arithmetic must divide exactly; change one of the values"));
                        }
                        x.checked_div(y)
                    }
                };
                r.map(Int).ok_or_else(|| overflow(span))
            }
            _ => match (a.as_f64(), b.as_f64()) {
                (Some(x), Some(y)) => {
                    let r = match op {
                        BinaryOp::Add => x + y,
                        BinaryOp::Sub => x - y,
                        BinaryOp::Mul => x * y,
                        _ => x / y,
                    };
                    if r.is_finite() {
                        Ok(Float(r))
                    } else {
                        Err(Diagnostic::error(
                            "E0104",
                            "config arithmetic is not finite",
                            span,
                            format!("{x} {} {y} is {r}", op.symbol()),
                        ))
                    }
                }
                _ => Err(mismatch(&a, &b)),
            },
        },
    }
}
