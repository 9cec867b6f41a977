//! Config evaluation: a model's `config` block, its defaults, and overrides from a checkpoint's
//! `config.json` and from `--set key=value`, evaluated in declaration order so derived fields
//! (`head_dim = hidden_size / num_attention_heads`) follow the overrides.

use crate::ir::ConfigValue;
use crate::suggest::did_you_mean;
use lmc_grammar::ast::{BinaryOp, ConfigDecl, Expr, ExprKind};
use lmc_grammar::{Diagnostic, Span};

/// Values that replace a config's defaults.
#[derive(Debug, Clone, Default)]
pub struct ConfigOverrides {
    /// The keys of a Hugging Face `config.json`. Keys the config does not declare are ignored:
    /// such files carry many keys a given model does not use.
    pub checkpoint: Vec<(String, serde_json::Value)>,
    /// `--set key=value` from the command line. Unknown keys are errors.
    pub set: Vec<(String, String)>,
}

impl ConfigOverrides {
    /// Reads the keys of a `config.json` file.
    pub fn with_checkpoint_json(mut self, text: &str) -> Result<Self, String> {
        let value: serde_json::Value = serde_json::from_str(text).map_err(|e| format!("config.json is not valid JSON: {e}"))?;
        let object = value.as_object().ok_or("config.json must hold a JSON object")?;
        self.checkpoint = object.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        Ok(self)
    }
}

/// Evaluates a config block with overrides applied.
pub fn evaluate_config(decl: &ConfigDecl, overrides: &ConfigOverrides) -> Result<Vec<(String, ConfigValue)>, Vec<Diagnostic>> {
    let mut errors = Vec::new();
    let names: Vec<&str> = decl.fields.iter().map(|f| f.name.name.as_str()).collect();
    for (key, _) in &overrides.set {
        if !names.contains(&key.as_str()) {
            let mut d = Diagnostic::error(
                "E0103",
                format!("`--set {key}=...` names no field of config `{}`", decl.name.name),
                decl.name.span,
                "this config has no such field",
            );
            d = match did_you_mean(key, names.iter().copied()) {
                Some(s) => d.with_help(format!("did you mean `{s}`?")),
                None => d.with_help(format!("its fields are: {}", names.join(", "))),
            };
            errors.push(d);
        }
    }
    let mut values: Vec<(String, ConfigValue)> = Vec::new();
    for field in &decl.fields {
        if let Some(prev) = decl
            .fields
            .iter()
            .find(|f| f.name.name == field.name.name && f.name.span != field.name.span)
        {
            if prev.name.span.start < field.name.span.start {
                errors.push(
                    Diagnostic::error(
                        "E0101",
                        format!("config field `{}` is defined twice", field.name.name),
                        field.name.span,
                        "defined again here",
                    )
                    .with_secondary(prev.name.span, "first defined here"),
                );
                continue;
            }
        }
        let default = match eval_const(&field.value, &|name| values.iter().find(|(n, _)| n == name).map(|(_, v)| *v)) {
            Ok(v) => v,
            Err(d) => {
                errors.push(d);
                continue;
            }
        };
        let name = &field.name.name;
        let overridden = if let Some((_, text)) = overrides.set.iter().rev().find(|(k, _)| k == name) {
            Some(
                parse_cli_value(text)
                    .and_then(|v| coerce(v, default))
                    .map_err(|why| format!("`--set {name}={text}`: {why}")),
            )
        } else if let Some((_, json)) = overrides.checkpoint.iter().find(|(k, _)| k == name) {
            Some(
                json_value(json)
                    .and_then(|v| coerce(v, default))
                    .map_err(|why| format!("config.json key `{name}`: {why}")),
            )
        } else {
            None
        };
        match overridden {
            Some(Ok(v)) => values.push((name.clone(), v)),
            Some(Err(why)) => errors.push(
                Diagnostic::error("E0104", format!("bad value for config field `{name}`"), field.name.span, why).with_help(format!(
                    "the default here is {default}, so the value must be {}",
                    kind_name(default)
                )),
            ),
            None => values.push((name.clone(), default)),
        }
    }
    if errors.is_empty() {
        Ok(values)
    } else {
        Err(errors)
    }
}

fn kind_name(v: ConfigValue) -> &'static str {
    match v {
        ConfigValue::Int(_) => "an integer",
        ConfigValue::Float(_) => "a number",
        ConfigValue::Bool(_) => "true or false",
    }
}

fn parse_cli_value(text: &str) -> Result<ConfigValue, String> {
    let t = text.trim();
    if let Ok(i) = t.parse::<i64>() {
        return Ok(ConfigValue::Int(i));
    }
    if let Ok(f) = t.parse::<f64>() {
        return Ok(ConfigValue::Float(f));
    }
    match t {
        "true" => Ok(ConfigValue::Bool(true)),
        "false" => Ok(ConfigValue::Bool(false)),
        _ => Err("not a number or a boolean".into()),
    }
}

fn json_value(v: &serde_json::Value) -> Result<ConfigValue, String> {
    match v {
        serde_json::Value::Bool(b) => Ok(ConfigValue::Bool(*b)),
        serde_json::Value::Number(n) => match n.as_i64() {
            Some(i) => Ok(ConfigValue::Int(i)),
            None => n.as_f64().map(ConfigValue::Float).ok_or_else(|| "number out of range".into()),
        },
        other => Err(format!("expected a number or a boolean, found {other}")),
    }
}

/// An override takes the kind of the default it replaces: an integer may stand for a float.
fn coerce(value: ConfigValue, default: ConfigValue) -> Result<ConfigValue, String> {
    match (value, default) {
        (ConfigValue::Int(i), ConfigValue::Float(_)) => Ok(ConfigValue::Float(i as f64)),
        (ConfigValue::Float(f), ConfigValue::Int(_)) if f.fract() == 0.0 && f.abs() < 9.0e15 => Ok(ConfigValue::Int(f as i64)),
        (v @ ConfigValue::Int(_), ConfigValue::Int(_))
        | (v @ ConfigValue::Float(_), ConfigValue::Float(_))
        | (v @ ConfigValue::Bool(_), ConfigValue::Bool(_)) => Ok(v),
        (v, d) => Err(format!("{v} is not {}", kind_name(d))),
    }
}

/// Evaluates a compile-time expression. `lookup` resolves a (possibly dotted) name to a value.
pub fn eval_const(e: &Expr, lookup: &dyn Fn(&str) -> Option<ConfigValue>) -> Result<ConfigValue, Diagnostic> {
    let not_const = |what: &str| {
        Diagnostic::error(
            "E0104",
            format!("{what} is not a compile-time value"),
            e.span,
            "needs a number known when the model is compiled",
        )
        .with_help("config values and dimensions are built from literals and other config values")
    };
    match &e.kind {
        ExprKind::Int(text) => text.parse::<i64>().map(ConfigValue::Int).map_err(|_| {
            Diagnostic::error("E0104", "integer literal too large", e.span, "does not fit in 64 bits")
                .with_help("integers range up to 9223372036854775807")
        }),
        ExprKind::Float(text) => match text.parse::<f64>() {
            Ok(f) if f.is_finite() => Ok(ConfigValue::Float(f)),
            _ => Err(Diagnostic::error(
                "E0104",
                "number literal out of range",
                e.span,
                "not a finite 64-bit float",
            )),
        },
        ExprKind::Bool(b) => Ok(ConfigValue::Bool(*b)),
        ExprKind::Path(p) => lookup(&p.dotted()).ok_or_else(|| {
            Diagnostic::error(
                "E0100",
                format!("unknown name `{}`", p.dotted()),
                p.span,
                "not a config value in scope",
            )
        }),
        ExprKind::Neg(x) => match eval_const(x, lookup)? {
            ConfigValue::Int(i) => i.checked_neg().map(ConfigValue::Int).ok_or_else(|| overflow(e.span)),
            ConfigValue::Float(f) => Ok(ConfigValue::Float(-f)),
            ConfigValue::Bool(_) => Err(Diagnostic::error(
                "E0104",
                "cannot negate a boolean",
                e.span,
                "this is true or false",
            )),
        },
        ExprKind::Binary { op, lhs, rhs } => {
            let a = eval_const(lhs, lookup)?;
            let b = eval_const(rhs, lookup)?;
            const_binary(*op, a, b, e.span, lhs.span, rhs.span)
        }
        ExprKind::Call { callee, .. } => Err(not_const(&format!("a call to `{}`", callee.name))),
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

fn const_binary(op: BinaryOp, a: ConfigValue, b: ConfigValue, span: Span, lspan: Span, rspan: Span) -> Result<ConfigValue, Diagnostic> {
    use ConfigValue::*;
    match (a, b) {
        (Int(x), Int(y)) => {
            let r = match op {
                BinaryOp::Add => x.checked_add(y),
                BinaryOp::Sub => x.checked_sub(y),
                BinaryOp::Mul => x.checked_mul(y),
                BinaryOp::Div => {
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
                BinaryOp::MatMul => {
                    return Err(Diagnostic::error(
                        "E0104",
                        "`@` needs tensors",
                        span,
                        "both sides are config values",
                    ))
                }
            };
            r.map(Int).ok_or_else(|| overflow(span))
        }
        (Float(_) | Int(_), Float(_) | Int(_)) => {
            let (x, y) = (as_f64(a), as_f64(b));
            let r = match op {
                BinaryOp::Add => x + y,
                BinaryOp::Sub => x - y,
                BinaryOp::Mul => x * y,
                BinaryOp::Div => x / y,
                BinaryOp::MatMul => {
                    return Err(Diagnostic::error(
                        "E0104",
                        "`@` needs tensors",
                        span,
                        "both sides are config values",
                    ))
                }
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
        _ => Err(Diagnostic::error(
            "E0104",
            "arithmetic on a boolean",
            span,
            "booleans have no arithmetic",
        )),
    }
}

fn as_f64(v: ConfigValue) -> f64 {
    match v {
        ConfigValue::Int(i) => i as f64,
        ConfigValue::Float(f) => f,
        ConfigValue::Bool(b) => b as i64 as f64,
    }
}
