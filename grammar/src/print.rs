//! `lmc emit --stage ast`: the syntax tree as an indented outline with `line:col` positions and
//! fully parenthesised expressions, so a snapshot shows exactly what the parser understood.

use crate::ast::*;
use crate::SourceFile;
use std::fmt::Write as _;

/// Prints a parsed file as an indented tree.
pub fn print_ast(file: &File, source: &SourceFile) -> String {
    let mut p = Printer {
        out: String::new(),
        source,
    };
    for item in &file.items {
        match item {
            Item::Use(u) => {
                let module: Vec<&str> = u.module.iter().map(|i| i.name.as_str()).collect();
                let names: Vec<&str> = u.names.iter().map(|i| i.name.as_str()).collect();
                p.line(0, u.span.start, &format!("use {} {{{}}}", module.join("."), names.join(", ")));
            }
            Item::Config(c) => {
                p.line(0, c.span.start, &format!("config {}{}", c.name.name, crate::format::model_types(c)));
                for f in &c.fields {
                    let ty = match &f.ty {
                        None => String::new(),
                        Some(ConfigType::Int(_)) => " : int".into(),
                        Some(ConfigType::Float(_)) => " : float".into(),
                        Some(ConfigType::Bool(_)) => " : bool".into(),
                        Some(ConfigType::Enum(v)) => {
                            format!(" : enum({})", v.iter().map(|i| i.name.as_str()).collect::<Vec<_>>().join(" | "))
                        }
                    };
                    let from: String = f.hf_keys.iter().map(|k| format!(" from {:?}", k.value)).collect();
                    p.line(
                        1,
                        f.name.span.start,
                        &format!("field {}{ty} = {}{from}", f.name.name, expr(&f.value)),
                    );
                }
                for a in &c.assumptions {
                    let value = a.value.as_ref().map_or("null".to_string(), expr);
                    p.line(1, a.span.start, &format!("assume {:?} = {value}", a.key.value));
                }
            }
            Item::Block(b) => {
                let params: Vec<String> = b
                    .params
                    .iter()
                    .map(|q| {
                        format!(
                            "{}: {}{}",
                            q.name.name,
                            q.ty.name,
                            q.default.as_ref().map(|d| format!(" = {}", expr(d))).unwrap_or_default()
                        )
                    })
                    .collect();
                p.line(0, b.span.start, &format!("block {}({})", b.name.name, params.join(", ")));
                p.members(1, &b.members);
            }
            Item::Model(m) => {
                p.line(
                    0,
                    m.span.start,
                    &format!("model {}({}: {})", m.name.name, m.config_binding.name, m.config_type.name),
                );
                p.members(1, &m.members);
            }
            Item::Variant(v) => {
                p.line(0, v.span.start, &format!("variant {} = {}", v.name.name, v.base.name));
                for (k, e) in &v.overrides {
                    p.line(1, k.span.start, &format!("override {} = {}", k.name, expr(e)));
                }
            }
            Item::Fn(f) => {
                let params = crate::format::fn_params_with(&f.params, expr);
                p.line(0, f.span.start, &format!("fn {}({params}) = {}", f.name.name, expr(&f.value)));
            }
        }
    }
    p.out
}

struct Printer<'a> {
    out: String,
    source: &'a SourceFile,
}

impl Printer<'_> {
    fn line(&mut self, depth: usize, offset: usize, text: &str) {
        let (l, c) = self.source.line_col(offset);
        let _ = writeln!(self.out, "{:indent$}{text}  @{l}:{c}", "", indent = depth * 2);
    }

    fn members(&mut self, depth: usize, members: &[Member]) {
        for m in members {
            match m {
                Member::Param { path, ty: t, span } => self.line(depth, span.start, &format!("param {}: {}", path.dotted(), ty(t))),
                Member::Instance {
                    path,
                    count,
                    block,
                    args,
                    span,
                } => {
                    let count = count.as_ref().map(|c| format!("[{}]", expr(c))).unwrap_or_default();
                    self.line(
                        depth,
                        span.start,
                        &format!("instance {}{count} = {}({})", path.dotted(), block.dotted(), call_args(args)),
                    );
                }
                Member::If {
                    cond,
                    then,
                    otherwise,
                    span,
                } => {
                    self.line(depth, span.start, &format!("if {}", expr(cond)));
                    self.members(depth + 1, then);
                    if !otherwise.is_empty() {
                        self.line(depth, span.start, "else");
                        self.members(depth + 1, otherwise);
                    }
                }
                Member::Forward(f) => {
                    self.line(depth, f.span.start, "forward");
                    for i in &f.inputs {
                        let t = crate::format::input_type_with(&i.ty, expr);
                        let default = i.default.as_ref().map_or(String::new(), |d| format!(" = {}", d.name));
                        self.line(depth + 1, i.name.span.start, &format!("input {}: {t}{default}", i.name.name));
                    }
                    match &f.outputs {
                        Outputs::Single(t) => self.line(depth + 1, t.span.start, &format!("output {}", ty(t))),
                        Outputs::Named(os) => {
                            for o in os {
                                self.line(depth + 1, o.name.span.start, &format!("output {}: {}", o.name.name, ty(&o.ty)));
                            }
                        }
                    }
                    self.stmts(depth + 1, &f.body);
                }
            }
        }
    }

    fn stmts(&mut self, depth: usize, stmts: &[Stmt]) {
        for s in stmts {
            match s {
                Stmt::Assign { names, value, span } => {
                    let names: Vec<&str> = names.iter().map(|n| n.name.as_str()).collect();
                    if let ExprKind::Scan { bindings, along, body } = &value.kind {
                        let head = crate::format::scan_head(bindings, along.as_deref(), expr);
                        self.line(depth, span.start, &format!("{} = {head}", names.join(", ")));
                        self.stmts(depth + 1, body);
                    } else {
                        self.line(depth, span.start, &format!("{} = {}", names.join(", "), expr(value)))
                    }
                }
                Stmt::Return { values, span } => {
                    let vs: Vec<String> = values.iter().map(expr).collect();
                    self.line(depth, span.start, &format!("return {}", vs.join(", ")))
                }
                Stmt::For { var, iter, body, span } => {
                    self.line(depth, span.start, &format!("for {} in {}", var.name, expr(iter)));
                    self.stmts(depth + 1, body);
                }
                Stmt::If {
                    cond,
                    then,
                    otherwise,
                    span,
                } => {
                    self.line(depth, span.start, &format!("if {}", expr(cond)));
                    self.stmts(depth + 1, then);
                    if !otherwise.is_empty() {
                        self.line(depth, span.start, "else");
                        self.stmts(depth + 1, otherwise);
                    }
                }
            }
        }
    }
}

fn ty(t: &TensorType) -> String {
    crate::format::tensor_type_with(t, expr)
}

fn call_args(args: &[CallArg]) -> String {
    crate::format::call_args_with(args, expr)
}

/// Fully parenthesised, so precedence is visible in the snapshot.
fn expr(e: &Expr) -> String {
    match &e.kind {
        ExprKind::Int(s) | ExprKind::Float(s) => s.clone(),
        ExprKind::Bool(b) => b.to_string(),
        ExprKind::Str(s) => format!("{s:?}"),
        ExprKind::Path(p) => p.dotted(),
        ExprKind::Neg(x) => format!("(-{})", expr(x)),
        ExprKind::Not(x) => format!("(not {})", expr(x)),
        ExprKind::Binary { op, lhs, rhs } => format!("({} {} {})", expr(lhs), op.symbol(), expr(rhs)),
        ExprKind::If { cond, then, otherwise } => format!("(if {} then {} else {})", expr(cond), expr(then), expr(otherwise)),
        ExprKind::Call { callee, args } => format!("{}({})", callee.dotted(), call_args(args)),
        ExprKind::Lambda { params, body } => {
            let ps: Vec<&str> = params.iter().map(|p| p.name.as_str()).collect();
            format!("(({}) => {})", ps.join(", "), expr(body))
        }
        ExprKind::Index { base, indices } => format!("{}[{}]", base.dotted(), indices.iter().map(expr).collect::<Vec<_>>().join(", ")),
        ExprKind::Scan { bindings, along, body } => format!(
            "({} {{ {} }})",
            crate::format::scan_head(bindings, along.as_deref(), expr),
            crate::format::stmts_inline(body, expr)
        ),
    }
}
