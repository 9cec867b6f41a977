//! Helpers for the checker's diagnostics: errors already reported, names of values for
//! messages, and hints for unknown names.

use super::*;

/// The code of an error already reported elsewhere; never shown.
pub(super) const POISONED: &str = "poisoned";

/// Stands for an error that has already been reported (a failed operand).
pub(super) fn poisoned() -> Diagnostic {
    Diagnostic::error(POISONED, "", Span::default(), "")
}

pub(super) fn describe(v: &Val) -> String {
    match v {
        Val::Tensor(_) => "a tensor".into(),
        Val::Tuple(ids) => format!("{} tensors", ids.len()),
        Val::Const(c) => format!("the value {c}"),
        Val::Dim(_) => "a dimension".into(),
        Val::Instance(_) => "a block".into(),
        Val::Array(_) => "an array of blocks".into(),
        Val::Fn(_) => "an index function".into(),
        Val::Absent => "`absent`".into(),
    }
}

pub(super) fn stmt_span(s: &Stmt) -> Span {
    match s {
        Stmt::Assign { span, .. } | Stmt::Return { span, .. } | Stmt::For { span, .. } | Stmt::If { span, .. } => *span,
    }
}

/// Looks a dotted name up among compile-time bindings: `eps`, `c.hidden_size`.
pub(super) fn ct_lookup(env: &[(String, CtValue)], p: &ast::Path) -> Option<CtValue> {
    let first = &p.segments[0].name;
    let v = env.iter().find(|(n, _)| n == first).map(|(_, v)| v)?;
    match (v, &p.segments[1..]) {
        (v, []) => Some(v.clone()),
        (CtValue::Config(c), [field]) => c.get(&field.name).cloned(),
        _ => None,
    }
}

/// Adds a "did you mean" to unknown-name errors about config fields.
pub(super) fn explain_unknown(d: Diagnostic, env: &[(String, CtValue)]) -> Diagnostic {
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
