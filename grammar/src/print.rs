//! `lmc emit --stage ast`: the syntax tree as an indented outline with `line:col` positions, so a
//! snapshot shows exactly what the parser understood.

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
            Item::Config(c) => {
                p.line(0, c.span.start, &format!("config {}", c.name.name));
                for f in &c.fields {
                    p.line(1, f.name.span.start, &format!("{} = {}", f.name.name, expr(&f.value)));
                }
            }
            Item::Model(m) => {
                p.line(
                    0,
                    m.span.start,
                    &format!("model {}({}: {})", m.name.name, m.config_binding.name, m.config_type.name),
                );
                for param in &m.params {
                    p.line(1, param.span.start, &format!("param {}: {}", param.path.dotted(), ty(&param.ty)));
                }
                for f in &m.forwards {
                    p.line(1, f.span.start, "forward");
                    for i in &f.inputs {
                        p.line(2, i.name.span.start, &format!("input {}: {}", i.name.name, ty(&i.ty)));
                    }
                    for o in &f.outputs {
                        p.line(2, o.name.span.start, &format!("output {}: {}", o.name.name, ty(&o.ty)));
                    }
                    for s in &f.body {
                        match s {
                            Stmt::Assign { name, value, span } => p.line(2, span.start, &format!("{} = {}", name.name, expr(value))),
                            Stmt::Return { values, span } => {
                                let vs: Vec<String> = values.iter().map(expr).collect();
                                p.line(2, span.start, &format!("return {}", vs.join(", ")))
                            }
                        }
                    }
                }
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
}

fn ty(t: &TensorType) -> String {
    let dims: Vec<String> = t.dims.iter().map(expr).collect();
    format!("{}[{}]", t.dtype.as_str(), dims.join(", "))
}

/// Fully parenthesised, so precedence is visible in the snapshot.
fn expr(e: &Expr) -> String {
    match &e.kind {
        ExprKind::Int(s) | ExprKind::Float(s) => s.clone(),
        ExprKind::Bool(b) => b.to_string(),
        ExprKind::Path(p) => p.dotted(),
        ExprKind::Neg(x) => format!("(-{})", expr(x)),
        ExprKind::Binary { op, lhs, rhs } => format!("({} {} {})", expr(lhs), op.symbol(), expr(rhs)),
        ExprKind::Call { callee, args } => {
            let a: Vec<String> = args
                .iter()
                .map(|a| match &a.name {
                    Some(n) => format!("{} = {}", n.name, expr(&a.value)),
                    None => expr(&a.value),
                })
                .collect();
            format!("{}({})", callee.name, a.join(", "))
        }
    }
}
