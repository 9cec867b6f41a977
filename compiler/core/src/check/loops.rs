//! `for` loops, unrolled at compile time: over an array of block instances, or over
//! `range(n)`; and one instance of an array picked by a compile-time index (`groups[k]`).

use super::*;

/// A `range` may count at most this many steps (as an array holds at most this many blocks).
const MAX_RANGE: i64 = 10_000;

impl<'p> Elab<'p> {
    /// What a `for` binds its name to, step by step.
    pub(super) fn loop_items(&mut self, frame: &mut Frame, iter: &'p Expr) -> Result<Vec<Binding>, Diagnostic> {
        if let ExprKind::Call { callee, args } = &iter.kind {
            if let [one] = callee.segments.as_slice() {
                if one.name == "range" && !frame.locals.contains_key("range") {
                    return self.range(frame, args, iter.span);
                }
            }
        }
        match self.sub(frame, iter)? {
            Val::Array(ids) => Ok(ids.into_iter().map(Binding::Instance).collect()),
            other => Err(Diagnostic::error(
                "E0201",
                format!("`for` goes over an array of blocks or a `range`, and this is {}", describe(&other)),
                iter.span,
                "not an array",
            )
            .with_help("write `for layer in encoder.layer { ... }` or `for i in range(c.num_hidden_layers) { ... }`")),
        }
    }

    /// `range(n)` or `range(start, end)`: the integers `start..end`, as Python counts them.
    fn range(&mut self, frame: &mut Frame, args: &'p [CallArg], span: Span) -> Result<Vec<Binding>, Diagnostic> {
        let usage = "write `range(n)` for 0, 1, ..., n - 1, or `range(start, end)`";
        if let Some(named) = args.iter().find_map(|a| a.name.as_ref()) {
            return Err(Diagnostic::error("E0202", "`range` takes no named arguments", named.span, "named here").with_help(usage));
        }
        let mut ints = Vec::new();
        for a in args {
            match self.sub(frame, &a.value)? {
                Val::Const(CtValue::Int(i)) => ints.push(i),
                other => {
                    return Err(Diagnostic::error(
                        "E0202",
                        "`range` counts with integers known at compile time",
                        a.value.span,
                        format!("this is {}", describe(&other)),
                    )
                    .with_help(usage))
                }
            }
        }
        let (start, end) = match ints.as_slice() {
            [n] => (0, *n),
            [a, b] => (*a, *b),
            _ => {
                return Err(Diagnostic::error(
                    "E0202",
                    format!("`range` takes 1 or 2 integers, found {}", ints.len()),
                    span,
                    "in this range",
                )
                .with_help(usage))
            }
        };
        if end.saturating_sub(start) > MAX_RANGE {
            return Err(Diagnostic::error(
                "E0206",
                format!("this loop would run {} times, more than {MAX_RANGE}", end.saturating_sub(start)),
                span,
                "too many steps",
            ));
        }
        Ok((start..end.max(start)).map(|i| Binding::Const(CtValue::Int(i))).collect())
    }

    /// `groups[k]`: the `k`-th instance of an array of blocks, `k` known at compile time.
    pub(super) fn array_element(
        &mut self,
        frame: &mut Frame,
        base: &'p ast::Path,
        indices: &'p [Expr],
        span: Span,
    ) -> Result<Val, Diagnostic> {
        let Val::Array(ids) = self.resolve_path(frame, base)? else {
            return Err(Diagnostic::error(
                "E0201",
                format!("`{}` is not an array of blocks", base.dotted()),
                base.span,
                "not an array",
            ));
        };
        let [index] = indices else {
            return Err(Diagnostic::error(
                "E0202",
                format!("an array of blocks takes one index, found {}", indices.len()),
                span,
                "in this index",
            ));
        };
        match self.sub(frame, index)? {
            Val::Const(CtValue::Int(k)) if (0..ids.len() as i64).contains(&k) => Ok(Val::Instance(ids[k as usize])),
            Val::Const(CtValue::Int(k)) => Err(Diagnostic::error(
                "E0207",
                format!("index {k} is out of range for `{}`, which has {} blocks", base.dotted(), ids.len()),
                index.span,
                "out of range",
            )),
            other => Err(Diagnostic::error(
                "E0202",
                "an array of blocks is indexed by an integer known at compile time",
                index.span,
                format!("this is {}", describe(&other)),
            )
            .with_help("compute it from config values and loop counters: `groups[int(i / (c.num_hidden_layers / c.num_hidden_groups))]`")),
        }
    }
}
