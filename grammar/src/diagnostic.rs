//! Diagnostics in the rustc style: a stable code, a lowercase message, the source line with the
//! span underlined, secondary labels where two places disagree, and a `help:` line.
//!
//! We render them ourselves rather than through miette: the format is small, fixed, and is what
//! the UI tests compare byte for byte.

use crate::Span;
use serde::Serialize;
use std::fmt::Write as _;

/// A source text with the name it is reported under.
#[derive(Debug, Clone)]
pub struct SourceFile {
    pub name: String,
    pub text: String,
}

impl SourceFile {
    pub fn new(name: impl Into<String>, text: impl Into<String>) -> Self {
        SourceFile {
            name: name.into(),
            text: text.into(),
        }
    }

    /// 1-based line and column (in characters) of a byte offset.
    pub fn line_col(&self, offset: usize) -> (usize, usize) {
        let offset = floor_char_boundary(&self.text, offset.min(self.text.len()));
        let before = &self.text[..offset];
        let line = before.matches('\n').count() + 1;
        let line_start = before.rfind('\n').map_or(0, |i| i + 1);
        let col = self.text[line_start..offset].chars().count() + 1;
        (line, col)
    }

    /// The text of a 1-based line, without its newline.
    fn line_text(&self, line: usize) -> &str {
        self.text.split('\n').nth(line - 1).unwrap_or("").trim_end_matches('\r')
    }
}

fn floor_char_boundary(s: &str, mut i: usize) -> usize {
    while i > 0 && !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Error,
    Warning,
}

/// A span with the words printed under it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Label {
    pub span: Span,
    pub message: String,
}

/// One problem found in a source file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    pub severity: Severity,
    /// A stable code, `E0001`..; documented in the language reference.
    pub code: &'static str,
    pub message: String,
    pub primary: Label,
    pub secondary: Vec<Label>,
    pub help: Option<String>,
}

impl Diagnostic {
    pub fn error(code: &'static str, message: impl Into<String>, span: Span, label: impl Into<String>) -> Self {
        Diagnostic {
            severity: Severity::Error,
            code,
            message: message.into(),
            primary: Label {
                span,
                message: label.into(),
            },
            secondary: Vec::new(),
            help: None,
        }
    }

    pub fn warning(code: &'static str, message: impl Into<String>, span: Span, label: impl Into<String>) -> Self {
        Diagnostic {
            severity: Severity::Warning,
            ..Diagnostic::error(code, message, span, label)
        }
    }

    pub fn with_secondary(mut self, span: Span, message: impl Into<String>) -> Self {
        self.secondary.push(Label {
            span,
            message: message.into(),
        });
        self
    }

    pub fn with_help(mut self, help: impl Into<String>) -> Self {
        self.help = Some(help.into());
        self
    }

    /// Renders the diagnostic as text, rustc style, for a terminal or a UI test.
    pub fn render(&self, source: &SourceFile) -> String {
        let kind = match self.severity {
            Severity::Error => "error",
            Severity::Warning => "warning",
        };
        let (line, col) = source.line_col(self.primary.span.start);
        let mut labels = vec![(&self.primary, '^')];
        labels.extend(self.secondary.iter().map(|l| (l, '-')));
        let max_line = labels.iter().map(|(l, _)| source.line_col(l.span.start).0).max().unwrap_or(line);
        let gutter = max_line.to_string().len();
        let pad = " ".repeat(gutter);

        let mut out = String::new();
        let _ = writeln!(out, "{kind}[{}]: {}", self.code, self.message);
        let _ = writeln!(out, "{pad}--> {}:{line}:{col}", source.name);
        let _ = writeln!(out, "{pad} |");
        // Labels in source order, so the snippet reads top to bottom; a line with several labels
        // is printed once, with one underline row per label.
        labels.sort_by_key(|(l, _)| l.span.start);
        let mut previous_line = 0;
        for (label, mark) in labels {
            let (l, c) = source.line_col(label.span.start);
            let text = source.line_text(l);
            let (end_line, end_col) = source.line_col(label.span.end);
            let width = if end_line == l {
                end_col.saturating_sub(c).max(1)
            } else {
                text.chars().count().saturating_sub(c - 1).max(1)
            };
            if l != previous_line {
                let _ = writeln!(out, "{l:>gutter$} | {text}");
                previous_line = l;
            }
            let underline = mark.to_string().repeat(width);
            let _ = writeln!(out, "{pad} | {}{underline} {}", " ".repeat(c - 1), label.message);
        }
        if let Some(help) = &self.help {
            let _ = writeln!(out, "{pad} |");
            let _ = writeln!(out, "{pad} = help: {help}");
        }
        out
    }

    /// The diagnostic as a JSON object, for `--message-format json`.
    pub fn to_json(&self, source: &SourceFile) -> serde_json::Value {
        let label = |l: &Label| {
            let (line, col) = source.line_col(l.span.start);
            let (end_line, end_col) = source.line_col(l.span.end);
            serde_json::json!({
                "file": source.name, "line": line, "column": col,
                "end_line": end_line, "end_column": end_col, "message": l.message,
            })
        };
        serde_json::json!({
            "severity": self.severity,
            "code": self.code,
            "message": self.message,
            "primary": label(&self.primary),
            "secondary": self.secondary.iter().map(label).collect::<Vec<_>>(),
            "help": self.help,
        })
    }
}
