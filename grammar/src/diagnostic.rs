//! Diagnostics in the rustc style: a stable code, a lowercase message, the source line with the
//! span underlined, secondary labels where two places disagree, and a `help:` line.
//!
//! We render them ourselves rather than through miette: the format is small, fixed, and is what
//! the UI tests compare byte for byte.

use crate::{FileId, Span};
use serde::Serialize;
use std::fmt::Write as _;

/// A source text with the name it is reported under.
#[derive(Debug, Clone)]
pub struct SourceFile {
    pub name: String,
    pub text: String,
    /// Byte offset of the start of each line, for fast position lookups.
    line_starts: Vec<usize>,
}

impl SourceFile {
    pub fn new(name: impl Into<String>, text: impl Into<String>) -> Self {
        let text = text.into();
        let line_starts = std::iter::once(0).chain(text.match_indices('\n').map(|(i, _)| i + 1)).collect();
        SourceFile {
            name: name.into(),
            text,
            line_starts,
        }
    }

    /// 1-based line and column (in characters) of a byte offset.
    pub fn line_col(&self, offset: usize) -> (usize, usize) {
        let offset = floor_char_boundary(&self.text, offset.min(self.text.len()));
        let line = self.line_starts.partition_point(|&s| s <= offset);
        let line_start = self.line_starts[line - 1];
        let col = self.text[line_start..offset].chars().count() + 1;
        (line, col)
    }

    /// The text of a 1-based line, without its newline.
    fn line_text(&self, line: usize) -> &str {
        self.text.split('\n').nth(line - 1).unwrap_or("").trim_end_matches('\r')
    }
}

/// Every source file of one compilation (the model file, its imports, the standard library),
/// so a span can name its file.
#[derive(Debug, Clone, Default)]
pub struct SourceMap {
    files: Vec<SourceFile>,
}

impl SourceMap {
    pub fn new() -> Self {
        SourceMap::default()
    }

    /// Adds a file and returns the id its spans carry.
    pub fn add(&mut self, file: SourceFile) -> FileId {
        self.files.push(file);
        (self.files.len() - 1) as FileId
    }

    pub fn get(&self, id: FileId) -> &SourceFile {
        &self.files[id as usize]
    }

    pub fn try_get(&self, id: FileId) -> Option<&SourceFile> {
        self.files.get(id as usize)
    }

    pub fn len(&self) -> usize {
        self.files.len()
    }

    pub fn is_empty(&self) -> bool {
        self.files.is_empty()
    }

    /// The id of a file already added under this name.
    pub fn find(&self, name: &str) -> Option<FileId> {
        self.files.iter().position(|f| f.name == name).map(|i| i as FileId)
    }

    /// `file:line:col` of a span's start.
    pub fn location(&self, span: Span) -> String {
        let f = self.get(span.file);
        let (l, c) = f.line_col(span.start);
        format!("{}:{l}:{c}", f.name)
    }
}

/// The part of a long source line that is shown: lines are clipped to [`Window::WIDTH`]
/// characters around the first label, so a huge one-line file cannot flood the terminal.
#[derive(Default, Clone, Copy)]
pub(crate) struct Window {
    /// 0-based index of the first character shown.
    start: usize,
    /// Whether characters were cut on the left / right.
    clipped_left: bool,
    clipped_right: bool,
}

impl Window {
    pub(crate) const WIDTH: usize = 120;

    fn around(text: &str, col: usize) -> Window {
        let len = text.chars().count();
        if len <= Self::WIDTH {
            return Window::default();
        }
        let start = col.saturating_sub(1).saturating_sub(Self::WIDTH / 3).min(len - Self::WIDTH);
        Window {
            start,
            clipped_left: start > 0,
            clipped_right: start + Self::WIDTH < len,
        }
    }

    fn show(&self, text: &str) -> String {
        let clipped = self.clipped_left || self.clipped_right;
        let shown: String = text
            .chars()
            .skip(self.start)
            .take(if clipped { Self::WIDTH } else { usize::MAX })
            .collect();
        format!(
            "{}{shown}{}",
            if self.clipped_left { "..." } else { "" },
            if self.clipped_right { "..." } else { "" }
        )
    }

    /// The 1-based column and width of a label within the shown text.
    fn place(&self, col: usize, width: usize) -> (usize, usize) {
        let clipped = self.clipped_left || self.clipped_right;
        if !clipped {
            return (col, width);
        }
        let prefix = if self.clipped_left { 3 } else { 0 };
        let col0 = col.saturating_sub(1).saturating_sub(self.start).min(Self::WIDTH - 1);
        (col0 + prefix + 1, width.min(Self::WIDTH - col0).max(1))
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
    pub fn render(&self, sources: &SourceMap) -> String {
        let kind = match self.severity {
            Severity::Error => "error",
            Severity::Warning => "warning",
        };
        let mut labels = vec![(&self.primary, '^')];
        labels.extend(self.secondary.iter().map(|l| (l, '-')));
        let max_line = labels
            .iter()
            .map(|(l, _)| sources.get(l.span.file).line_col(l.span.start).0)
            .max()
            .unwrap_or(1);
        let gutter = max_line.to_string().len();
        let pad = " ".repeat(gutter);

        let mut out = String::new();
        let _ = writeln!(out, "{kind}[{}]: {}", self.code, self.message);
        let _ = writeln!(out, "{pad}--> {}", sources.location(self.primary.span));
        let _ = writeln!(out, "{pad} |");
        // The primary's file first, then other files; within a file, labels in source order,
        // and a line with several labels printed once with one underline row per label.
        let primary_file = self.primary.span.file;
        labels.sort_by_key(|(l, _)| (l.span.file != primary_file, l.span.file, l.span.start));
        let mut previous = (primary_file, 0);
        let mut window = Window::default();
        for (label, mark) in labels {
            let source = sources.get(label.span.file);
            if source.text.is_empty() {
                // A whole-file problem (too large, unreadable): no line to show.
                continue;
            }
            if label.span.file != previous.0 {
                let _ = writeln!(out, "{pad}::: {}", sources.location(label.span));
                previous = (label.span.file, 0);
            }
            let (l, c) = source.line_col(label.span.start);
            let text = source.line_text(l);
            let (end_line, end_col) = source.line_col(label.span.end);
            let width = if end_line == l {
                end_col.saturating_sub(c).max(1)
            } else {
                text.chars().count().saturating_sub(c - 1).max(1)
            };
            if l != previous.1 {
                window = Window::around(text, c);
                let _ = writeln!(out, "{l:>gutter$} | {}", window.show(text));
                previous.1 = l;
            }
            let (col, width) = window.place(c, width);
            let underline = mark.to_string().repeat(width);
            let _ = writeln!(out, "{pad} | {}{underline} {}", " ".repeat(col - 1), label.message);
        }
        if let Some(help) = &self.help {
            let _ = writeln!(out, "{pad} |");
            let _ = writeln!(out, "{pad} = help: {help}");
        }
        out
    }

    /// The diagnostic as a JSON object, for `--message-format json`.
    pub fn to_json(&self, sources: &SourceMap) -> serde_json::Value {
        let label = |l: &Label| {
            let source = sources.get(l.span.file);
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
