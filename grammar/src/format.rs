//! `lmc fmt`: the canonical layout of a `.model` file. Two-space indentation, one item per
//! paragraph, minimal parentheses, single blank lines kept where the author put them, and every
//! comment kept: own-line comments before the construct that follows them, trailing comments at
//! the end of their line. Lines are not wrapped. Formatting is idempotent (a test checks it).

use crate::ast::*;
use crate::SourceFile;

/// A comment of the source: where it starts, its text (with `#`), and whether code precedes it
/// on its line.
struct Comment {
    offset: usize,
    line: usize,
    text: String,
    trailing: bool,
    emitted: bool,
}

fn comments(source: &SourceFile) -> Vec<Comment> {
    let mut out = Vec::new();
    let mut in_string = false;
    let mut line_has_code = false;
    let text = &source.text;
    let mut i = 0;
    while i < text.len() {
        let c = text.as_bytes()[i];
        match c {
            b'\n' => {
                line_has_code = false;
                in_string = false;
            }
            b'"' => {
                in_string = !in_string;
                line_has_code = true;
            }
            b'#' if !in_string => {
                let end = text[i..].find('\n').map_or(text.len(), |n| i + n);
                out.push(Comment {
                    offset: i,
                    line: source.line_col(i).0,
                    text: text[i..end].trim_end().to_string(),
                    trailing: line_has_code,
                    emitted: false,
                });
                i = end;
                continue;
            }
            b' ' | b'\t' | b'\r' => {}
            _ => line_has_code = true,
        }
        i += 1;
    }
    out
}

struct Formatter<'a> {
    source: &'a SourceFile,
    comments: Vec<Comment>,
    out: String,
    indent: usize,
}

/// Formats a parsed file canonically.
pub fn format_file(file: &File, source: &SourceFile) -> String {
    let mut f = Formatter {
        source,
        comments: comments(source),
        out: String::new(),
        indent: 0,
    };
    let mut previous: Option<&Item> = None;
    for item in &file.items {
        let start = item_span(item).start;
        if let Some(prev) = previous {
            // Runs of `use`s and of `variant`s stay together unless the author separated them.
            let both_uses = matches!((prev, item), (Item::Use(_), Item::Use(_)) | (Item::Variant(_), Item::Variant(_)));
            if !both_uses || f.blank_line_before(start) {
                f.out.push('\n');
            }
        }
        f.flush_before(start);
        f.item(item);
        previous = Some(item);
    }
    f.flush_before(usize::MAX);
    if f.out.is_empty() {
        return f.out;
    }
    while f.out.ends_with("\n\n") {
        f.out.pop();
    }
    f.out
}

fn item_span(item: &Item) -> crate::Span {
    match item {
        Item::Use(u) => u.span,
        Item::Config(c) => c.span,
        Item::Block(b) => b.span,
        Item::Model(m) => m.span,
        Item::Variant(v) => v.span,
        Item::Fn(f) => f.span,
    }
}

fn member_start(m: &Member) -> usize {
    match m {
        Member::Param { span, .. } | Member::Instance { span, .. } | Member::If { span, .. } => span.start,
        Member::Forward(f) => f.span.start,
    }
}

fn stmt_span(s: &Stmt) -> crate::Span {
    match s {
        Stmt::Assign { span, .. } | Stmt::Return { span, .. } | Stmt::For { span, .. } | Stmt::If { span, .. } => *span,
    }
}

impl Formatter<'_> {
    /// Whether the source has an empty line between the previous code and `offset`.
    fn blank_line_before(&self, offset: usize) -> bool {
        let before = &self.source.text[..offset.min(self.source.text.len())];
        let mut newlines = 0;
        for line in before.rsplit('\n').skip(1) {
            let t = line.trim();
            if t.is_empty() {
                newlines += 1;
                continue;
            }
            if t.starts_with('#') {
                continue;
            }
            break;
        }
        newlines > 0
    }

    fn flush_before(&mut self, offset: usize) {
        let pad = "  ".repeat(self.indent);
        let text = &self.source.text;
        for c in self.comments.iter_mut().filter(|c| !c.emitted && c.offset < offset) {
            self.out.push_str(&format!("{pad}{}\n", c.text));
            c.emitted = true;
            // Keep a blank line that separates a comment from what follows it.
            let after = &text[c.offset + c.text.len()..];
            let gap = &after[..after.len() - after.trim_start().len()];
            if gap.matches('\n').count() > 1 && !after.trim_start().is_empty() {
                self.out.push('\n');
            }
        }
    }

    /// Emits one line of code for source line `src_line`, with that line's trailing comment.
    fn line(&mut self, text: &str, src_line: usize) {
        let pad = "  ".repeat(self.indent);
        let mut l = format!("{pad}{text}");
        for c in self.comments.iter_mut().filter(|c| !c.emitted && c.trailing && c.line == src_line) {
            l.push_str("  ");
            l.push_str(&c.text);
            c.emitted = true;
        }
        self.out.push_str(&l);
        self.out.push('\n');
    }

    fn line_of(&self, offset: usize) -> usize {
        self.source.line_col(offset).0
    }

    /// The closing brace of a construct opened at the current indentation; comments just before
    /// it stay inside.
    fn close(&mut self, end: usize) {
        self.indent += 1;
        self.flush_before(end.saturating_sub(1));
        self.indent -= 1;
        let line = self.line_of(end.saturating_sub(1));
        self.line("}", line);
    }

    /// `} else if cond {` or `} else {` on one line.
    fn else_header(&mut self, text: &str, src_line: usize) {
        let pad = "  ".repeat(self.indent);
        self.out.push_str(&pad);
        self.out.push('}');
        self.line_raw(text, src_line);
    }

    fn item(&mut self, item: &Item) {
        match item {
            Item::Use(u) => {
                let module: Vec<&str> = u.module.iter().map(|i| i.name.as_str()).collect();
                let names: Vec<&str> = u.names.iter().map(|i| i.name.as_str()).collect();
                let l = self.line_of(u.span.end);
                self.line(&format!("use {}.{{{}}}", module.join("."), names.join(", ")), l);
            }
            Item::Config(c) => {
                let l = self.line_of(c.span.start);
                self.line(&format!("config {}{} {{", c.name.name, model_types(c)), l);
                self.indent += 1;
                // Fields and assumptions, in the order they are written.
                let mut entries: Vec<(usize, Result<&ConfigField, &ConfigAssumption>)> = c
                    .fields
                    .iter()
                    .map(|f| (f.name.span.start, Ok(f)))
                    .chain(c.assumptions.iter().map(|a| (a.span.start, Err(a))))
                    .collect();
                entries.sort_by_key(|(start, _)| *start);
                for (k, (start, entry)) in entries.into_iter().enumerate() {
                    if k > 0 && self.blank_line_before(start) {
                        self.out.push('\n');
                    }
                    self.flush_before(start);
                    let field = match entry {
                        Ok(field) => field,
                        Err(a) => {
                            let value = a.value.as_ref().map_or("null".to_string(), expr);
                            let l = self.line_of(a.value.as_ref().map_or(a.key.span.end, |v| v.span.end));
                            self.line(&format!("assume \"{}\" = {value}", a.key.value), l);
                            continue;
                        }
                    };
                    let ty = match &field.ty {
                        None => String::new(),
                        Some(ConfigType::Int(_)) => ": int".into(),
                        Some(ConfigType::Float(_)) => ": float".into(),
                        Some(ConfigType::Bool(_)) => ": bool".into(),
                        Some(ConfigType::Enum(vs)) => format!(": {}", vs.iter().map(|v| v.name.as_str()).collect::<Vec<_>>().join(" | ")),
                    };
                    let from = if field.hf_keys.is_empty() {
                        String::new()
                    } else {
                        let keys: Vec<String> = field.hf_keys.iter().map(|k| format!("\"{}\"", k.value)).collect();
                        format!(" from {}", keys.join(" or "))
                    };
                    let l = self.line_of(field.value.span.end);
                    self.line(&format!("{}{ty} = {}{from}", field.name.name, expr(&field.value)), l);
                }
                self.indent -= 1;
                self.close(c.span.end);
            }
            Item::Block(b) => {
                let params: Vec<String> = b
                    .params
                    .iter()
                    .map(|p| match &p.default {
                        Some(d) => format!("{}: {} = {}", p.name.name, p.ty.name, expr(d)),
                        None => format!("{}: {}", p.name.name, p.ty.name),
                    })
                    .collect();
                let l = self.line_of(b.span.start);
                self.line(&format!("block {}({}) {{", b.name.name, params.join(", ")), l);
                self.members(&b.members);
                self.close(b.span.end);
            }
            Item::Model(m) => {
                let l = self.line_of(m.span.start);
                self.line(
                    &format!("model {}({}: {}) {{", m.name.name, m.config_binding.name, m.config_type.name),
                    l,
                );
                self.members(&m.members);
                self.close(m.span.end);
            }
            Item::Variant(v) => {
                let fields: Vec<String> = v.overrides.iter().map(|(k, e)| format!("{} = {}", k.name, expr(e))).collect();
                let l = self.line_of(v.span.end);
                let body = if fields.is_empty() {
                    "{}".to_string()
                } else {
                    format!("{{ {} }}", fields.join(", "))
                };
                self.line(&format!("variant {} = {} {body}", v.name.name, v.base.name), l);
            }
            Item::Fn(f) => {
                let l = self.line_of(f.value.span.end);
                self.value_line(
                    &format!("fn {}({}) = ", f.name.name, fn_params(&f.params)),
                    std::slice::from_ref(&f.value),
                    l,
                );
            }
        }
    }

    fn members(&mut self, members: &[Member]) {
        self.indent += 1;
        for (k, m) in members.iter().enumerate() {
            let start = member_start(m);
            if k > 0 && (self.blank_line_before(start) || matches!(m, Member::Forward(_))) {
                self.out.push('\n');
            }
            self.flush_before(start);
            self.member(m);
        }
        self.indent -= 1;
    }

    fn member(&mut self, m: &Member) {
        match m {
            Member::Param { path, ty, span } => {
                let l = self.line_of(span.end);
                self.line(&format!("param {}: {}", path.dotted(), tensor_type(ty)), l);
            }
            Member::Instance {
                path,
                count,
                block,
                args,
                span,
            } => {
                let count = count.as_ref().map(|c| format!("[{}]", expr(c))).unwrap_or_default();
                let l = self.line_of(span.end);
                self.line(&format!("{}{count} = {}({})", path.dotted(), block.dotted(), call_args(args)), l);
            }
            Member::If {
                cond,
                then,
                otherwise,
                span,
            } => self.member_if(cond, then, otherwise, span.start, span.end, ""),
            Member::Forward(f) => {
                let inputs: Vec<String> = f
                    .inputs
                    .iter()
                    .map(|i| match &i.default {
                        Some(d) => format!("{}: {} = {}", i.name.name, input_type(&i.ty), d.name),
                        None => format!("{}: {}", i.name.name, input_type(&i.ty)),
                    })
                    .collect();
                let outputs = match &f.outputs {
                    Outputs::Single(t) => tensor_type(t),
                    Outputs::Named(os) => format!(
                        "({})",
                        os.iter()
                            .map(|o| format!("{}: {}", o.name.name, tensor_type(&o.ty)))
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                };
                let l = self.line_of(f.span.start);
                self.line(&format!("forward({}) -> {outputs} {{", inputs.join(", ")), l);
                self.stmts(&f.body);
                self.close(f.span.end);
            }
        }
    }

    fn member_if(&mut self, cond: &Expr, then: &[Member], otherwise: &[Member], start: usize, end: usize, prefix: &str) {
        let l = self.line_of(start);
        self.line(&format!("{prefix}if {} {{", expr(cond)), l);
        self.members(then);
        self.else_members(otherwise, end);
    }

    fn else_members(&mut self, otherwise: &[Member], end: usize) {
        match otherwise {
            [] => self.close(end),
            [Member::If {
                cond,
                then,
                otherwise,
                span,
            }] => {
                self.flush_before(span.start);
                let l = self.line_of(span.start);
                self.else_header(&format!(" else if {} {{", expr(cond)), l);
                self.members(then);
                self.else_members(otherwise, span.end);
            }
            rest => {
                let l = self.line_of(member_start(&rest[0]));
                self.else_header(" else {", l);
                self.members(rest);
                self.close(end);
            }
        }
    }

    /// Appends to the current line (no indentation) and ends it.
    fn line_raw(&mut self, text: &str, src_line: usize) {
        let indent = self.indent;
        self.indent = 0;
        self.line(text, src_line);
        self.indent = indent;
    }

    fn stmts(&mut self, stmts: &[Stmt]) {
        self.indent += 1;
        for (k, s) in stmts.iter().enumerate() {
            let span = stmt_span(s);
            if k > 0 && self.blank_line_before(span.start) {
                self.out.push('\n');
            }
            self.flush_before(span.start);
            self.stmt(s);
        }
        self.indent -= 1;
    }

    fn stmt(&mut self, s: &Stmt) {
        match s {
            Stmt::Assign { names, value, span } => {
                let names: Vec<&str> = names.iter().map(|n| n.name.as_str()).collect();
                let l = self.line_of(span.end);
                self.value_line(&format!("{} = ", names.join(", ")), std::slice::from_ref(value), l);
            }
            Stmt::Return { values, span } => {
                let l = self.line_of(span.end);
                self.value_line("return ", values, l);
            }
            Stmt::For { var, iter, body, span } => {
                let l = self.line_of(span.start);
                self.line(&format!("for {} in {} {{", var.name, expr(iter)), l);
                self.stmts(body);
                self.close(span.end);
            }
            Stmt::If {
                cond,
                then,
                otherwise,
                span,
            } => {
                let l = self.line_of(span.start);
                self.line(&format!("if {} {{", expr(cond)), l);
                self.stmts(then);
                self.else_stmts(otherwise, span.end);
            }
        }
    }

    /// `prefix` and values on one line, or, for a single long `if` expression, one branch per
    /// line.
    fn value_line(&mut self, prefix: &str, values: &[Expr], src_line: usize) {
        let one_line: Vec<String> = values.iter().map(expr).collect();
        let text = format!("{prefix}{}", one_line.join(", "));
        match values {
            [Expr {
                kind: ExprKind::Scan { bindings, along, body },
                span,
            }] => {
                let l = self.line_of(span.start);
                self.line(&format!("{prefix}{} {{", scan_head(bindings, along.as_deref(), expr)), l);
                self.stmts(body);
                self.close(span.end);
            }
            [e @ Expr {
                kind: ExprKind::If { .. }, ..
            }] if text.len() + 2 * self.indent > MAX_LINE => {
                let lines = if_lines(e);
                let pad = "  ".repeat(self.indent);
                for (k, l) in lines.iter().enumerate() {
                    if k == 0 {
                        self.out.push_str(&format!("{pad}{prefix}{l}\n"));
                    } else if k + 1 == lines.len() {
                        self.line(l, src_line);
                    } else {
                        self.out.push_str(&format!("{pad}{l}\n"));
                    }
                }
            }
            [e @ Expr {
                kind: ExprKind::Call { .. },
                ..
            }] if text.len() + 2 * self.indent > MAX_LINE => {
                let lines = call_lines(e);
                let pad = "  ".repeat(self.indent);
                for (k, l) in lines.iter().enumerate() {
                    if k == 0 {
                        self.out.push_str(&format!("{pad}{prefix}{l}\n"));
                    } else if k + 1 == lines.len() {
                        self.line(l, src_line);
                    } else {
                        self.out.push_str(&format!("{pad}{l}\n"));
                    }
                }
            }
            _ => self.line(&text, src_line),
        }
    }

    fn else_stmts(&mut self, otherwise: &[Stmt], end: usize) {
        match otherwise {
            [] => self.close(end),
            [Stmt::If {
                cond,
                then,
                otherwise,
                span,
            }] => {
                self.flush_before(span.start);
                let l = self.line_of(span.start);
                self.else_header(&format!(" else if {} {{", expr(cond)), l);
                self.stmts(then);
                self.else_stmts(otherwise, span.end);
            }
            rest => {
                let l = self.line_of(stmt_span(&rest[0]).start);
                self.else_header(" else {", l);
                self.stmts(rest);
                self.close(end);
            }
        }
    }
}

/// Lines longer than this are split where the layout allows (long `if` expressions).
const MAX_LINE: usize = 100;

/// A long call, one argument per line; a long `if` argument gets one branch per line.
fn call_lines(e: &Expr) -> Vec<String> {
    let ExprKind::Call { callee, args } = &e.kind else {
        return vec![expr(e)];
    };
    let mut lines = vec![format!("{}(", callee.dotted())];
    for a in args {
        let name = a.name.as_ref().map(|n| format!("{} = ", n.name)).unwrap_or_default();
        let one = format!("  {name}{},", expr(&a.value));
        match &a.value.kind {
            ExprKind::If { .. } if one.len() > MAX_LINE => {
                let branches = if_lines(&a.value);
                let last = branches.len() - 1;
                for (k, b) in branches.into_iter().enumerate() {
                    let lead = if k == 0 { format!("  {name}") } else { "  ".to_string() };
                    let tail = if k == last { "," } else { "" };
                    lines.push(format!("{lead}{b}{tail}"));
                }
            }
            _ => lines.push(one),
        }
    }
    lines.push(")".to_string());
    lines
}

/// A chain of `if` / `else if` / `else` expressions, one branch per line.
fn if_lines(e: &Expr) -> Vec<String> {
    let mut lines = Vec::new();
    let mut current = e;
    let mut first = true;
    loop {
        match &current.kind {
            ExprKind::If { cond, then, otherwise } => {
                let head = format!("if {} {{", expr(cond));
                if first {
                    lines.push(head);
                } else {
                    lines.push(format!("}} else {head}"));
                }
                lines.push(format!("  {}", expr(then)));
                first = false;
                current = otherwise;
            }
            _ => {
                lines.push("} else {".to_string());
                lines.push(format!("  {}", expr(current)));
                lines.push("}".to_string());
                return lines;
            }
        }
    }
}

fn tensor_type(t: &TensorType) -> String {
    tensor_type_with(t, expr)
}

fn input_type(t: &InputType) -> String {
    input_type_with(t, expr)
}

fn fn_params(params: &[FnParam]) -> String {
    fn_params_with(params, expr)
}

/// A forward input's type as written.
pub(crate) fn input_type_with(t: &InputType, expr: fn(&Expr) -> String) -> String {
    match t {
        InputType::Tensor(t) => tensor_type_with(t, expr),
        InputType::IndexFn(_) => "fn".to_string(),
    }
}

/// The parameters of an `fn` item as written.
pub(crate) fn fn_params_with(params: &[FnParam], expr: fn(&Expr) -> String) -> String {
    let ps: Vec<String> = params
        .iter()
        .map(|p| match &p.ty {
            FnParamType::Tensor(t) => format!("{}: {}", p.name.name, tensor_type_with(t, expr)),
            FnParamType::Scalar(t) => format!("{}: {}", p.name.name, t.name),
        })
        .collect();
    ps.join(", ")
}

/// `scan(x_t in x, h = h0) along 1`: a scan up to its body.
pub(crate) fn scan_head(bindings: &[ScanBinding], along: Option<&Expr>, expr: fn(&Expr) -> String) -> String {
    let bs: Vec<String> = bindings
        .iter()
        .map(|b| format!("{} {} {}", b.name.name, if b.carry { "=" } else { "in" }, expr(&b.value)))
        .collect();
    let along = along.map(|a| format!(" along {}", expr(a))).unwrap_or_default();
    format!("scan({}){along}", bs.join(", "))
}

/// Statements on one line, separated by `;`, for a `scan` inside a larger expression.
pub(crate) fn stmts_inline(stmts: &[Stmt], expr: fn(&Expr) -> String) -> String {
    let parts: Vec<String> = stmts
        .iter()
        .map(|s| match s {
            Stmt::Assign { names, value, .. } => {
                let names: Vec<&str> = names.iter().map(|n| n.name.as_str()).collect();
                format!("{} = {}", names.join(", "), expr(value))
            }
            Stmt::Return { values, .. } => format!("return {}", values.iter().map(expr).collect::<Vec<_>>().join(", ")),
            Stmt::For { var, iter, body, .. } => format!("for {} in {} {{ {} }}", var.name, expr(iter), stmts_inline(body, expr)),
            Stmt::If { cond, then, otherwise, .. } => {
                let mut t = format!("if {} {{ {} }}", expr(cond), stmts_inline(then, expr));
                if !otherwise.is_empty() {
                    t.push_str(&format!(" else {{ {} }}", stmts_inline(otherwise, expr)));
                }
                t
            }
        })
        .collect();
    parts.join("; ")
}

fn call_args(args: &[CallArg]) -> String {
    call_args_with(args, expr)
}

/// A tensor type as written, with dimension expressions printed by `expr`.
pub(crate) fn tensor_type_with(t: &TensorType, expr: fn(&Expr) -> String) -> String {
    let dims: Vec<String> = t
        .dims
        .iter()
        .map(|d| match d {
            DimExpr::Ellipsis(_) => "...".to_string(),
            DimExpr::Expr(e) => expr(e),
        })
        .collect();
    format!("{}[{}]", t.dtype.as_str(), dims.join(", "))
}

/// Call arguments as written, with expressions printed by `expr`.
pub(crate) fn call_args_with(args: &[CallArg], expr: fn(&Expr) -> String) -> String {
    let a: Vec<String> = args
        .iter()
        .map(|a| match &a.name {
            Some(n) => format!("{} = {}", n.name, expr(&a.value)),
            None => expr(&a.value),
        })
        .collect();
    a.join(", ")
}

/// An expression with the fewest parentheses that keep its meaning.
pub(crate) fn expr(e: &Expr) -> String {
    match &e.kind {
        ExprKind::Int(s) | ExprKind::Float(s) => s.clone(),
        ExprKind::Bool(b) => b.to_string(),
        ExprKind::Str(s) => format!("\"{s}\""),
        ExprKind::Path(p) => p.dotted(),
        ExprKind::Neg(x) => format!("-{}", operand(x, 7, false)),
        ExprKind::Not(x) => format!("not {}", operand(x, 7, false)),
        ExprKind::Binary { op, lhs, rhs } => {
            let p = op.precedence();
            format!("{} {} {}", operand(lhs, p, false), op.symbol(), operand(rhs, p, true))
        }
        ExprKind::If { cond, then, otherwise } => {
            let other = match &otherwise.kind {
                ExprKind::If { .. } => expr(otherwise),
                _ => format!("{{ {} }}", expr(otherwise)),
            };
            format!("if {} {{ {} }} else {other}", expr(cond), expr(then))
        }
        ExprKind::Call { callee, args } => format!("{}({})", callee.dotted(), call_args(args)),
        ExprKind::Lambda { params, body } => {
            let ps: Vec<&str> = params.iter().map(|p| p.name.as_str()).collect();
            format!("({}) => {}", ps.join(", "), expr(body))
        }
        ExprKind::Index { base, indices } => format!("{}[{}]", base.dotted(), indices.iter().map(expr).collect::<Vec<_>>().join(", ")),
        ExprKind::Scan { bindings, along, body } => {
            format!("{} {{ {} }}", scan_head(bindings, along.as_deref(), expr), stmts_inline(body, expr))
        }
    }
}

/// An operand of an operator of precedence `p`; the right operand of a left-associative
/// operator needs parentheses at equal precedence too.
fn operand(e: &Expr, p: u8, right: bool) -> String {
    let inner = match &e.kind {
        ExprKind::Binary { op, .. } => Some(op.precedence()),
        ExprKind::If { .. } | ExprKind::Lambda { .. } | ExprKind::Scan { .. } => Some(0),
        ExprKind::Neg(_) | ExprKind::Not(_) if p == 7 => Some(7),
        _ => None,
    };
    match inner {
        Some(q) if q < p || (right && q == p) => format!("({})", expr(e)),
        _ => expr(e),
    }
}

/// ` for "a" or "b"`, or nothing: a config's model types as written.
pub(crate) fn model_types(c: &ConfigDecl) -> String {
    if c.model_types.is_empty() {
        return String::new();
    }
    let names: Vec<String> = c.model_types.iter().map(|t| format!("\"{}\"", t.value)).collect();
    format!(" for {}", names.join(" or "))
}
