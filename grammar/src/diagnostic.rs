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

    /// The byte offset of a 1-based line and column (in characters), clamped to the text.
    pub fn offset(&self, line: usize, col: usize) -> usize {
        let start = self.line_starts.get(line.max(1) - 1).copied().unwrap_or(self.text.len());
        let rest = &self.text[start..];
        start + rest.char_indices().nth(col.max(1) - 1).map_or(rest.len(), |(k, _)| k)
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

/// The SGR sequences a rendering uses: all empty without colour.
struct Style {
    severity: &'static str,
    blue: &'static str,
    bold: &'static str,
    reset: &'static str,
}

impl Style {
    fn new(color: bool, severity: Severity) -> Style {
        if !color {
            return Style {
                severity: "",
                blue: "",
                bold: "",
                reset: "",
            };
        }
        Style {
            severity: match severity {
                Severity::Error => "\x1b[1;31m",
                Severity::Warning => "\x1b[1;33m",
            },
            blue: "\x1b[1;34m",
            bold: "\x1b[1m",
            reset: "\x1b[0m",
        }
    }
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

    /// Renders the diagnostic as text, rustc style, for a UI test or a file: no colours.
    pub fn render(&self, sources: &SourceMap) -> String {
        self.render_styled(sources, false)
    }

    /// Renders the diagnostic as [`render`](Self::render) does, coloured for a terminal when
    /// `color` is true, as rustc colours it: the severity bold red (an error) or yellow (a
    /// warning), the message bold, line numbers, gutters and secondary labels bold blue, the
    /// primary label in the severity's colour. Without colour the text is that of `render`,
    /// byte for byte.
    pub fn render_styled(&self, sources: &SourceMap, color: bool) -> String {
        let kind = match self.severity {
            Severity::Error => "error",
            Severity::Warning => "warning",
        };
        let s = Style::new(color, self.severity);
        let (blue, bold, reset) = (s.blue, s.bold, s.reset);
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
        let severity = s.severity;
        let _ = writeln!(out, "{severity}{kind}[{}]{reset}{bold}: {}{reset}", self.code, self.message);
        let _ = writeln!(out, "{pad}{blue}-->{reset} {}", sources.location(self.primary.span));
        let _ = writeln!(out, "{pad} {blue}|{reset}");
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
                let _ = writeln!(out, "{pad}{blue}:::{reset} {}", sources.location(label.span));
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
                let _ = writeln!(out, "{blue}{l:>gutter$} |{reset} {}", window.show(text));
                previous.1 = l;
            }
            let (col, width) = window.place(c, width);
            let underline = mark.to_string().repeat(width);
            let mark_color = if mark == '^' { s.severity } else { blue };
            let _ = writeln!(
                out,
                "{pad} {blue}|{reset} {}{mark_color}{underline} {}{reset}",
                " ".repeat(col - 1),
                label.message
            );
        }
        if let Some(help) = &self.help {
            let _ = writeln!(out, "{pad} {blue}|{reset}");
            let _ = writeln!(out, "{pad} {blue}={reset} {bold}help{reset}: {help}");
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Without the escape sequences, the coloured rendering is the plain one, byte for byte.
    #[test]
    fn colours_only_add_escape_sequences() {
        let mut sources = SourceMap::new();
        let a = sources.add(SourceFile::new("a.model", "config C {\n  a = 1\n  b = a + x\n}\n"));
        let b = sources.add(SourceFile::new("b.model", "x = 2\n"));
        let d = Diagnostic::error("E0100", "unknown name", Span::new(a, 28, 29), "not defined")
            .with_secondary(Span::new(a, 13, 14), "defined here")
            .with_secondary(Span::new(b, 0, 1), "elsewhere")
            .with_help("did you mean `a`?");
        for d in [d.clone(), Diagnostic::warning("W0001", "unused", Span::new(a, 13, 14), "here")] {
            let plain = d.render(&sources);
            let colored = d.render_styled(&sources, true);
            assert_eq!(plain, d.render_styled(&sources, false));
            assert_ne!(plain, colored);
            let mut stripped = String::new();
            let mut rest = colored.as_str();
            while let Some(at) = rest.find('\x1b') {
                stripped.push_str(&rest[..at]);
                let end = rest[at..].find('m').expect("an SGR sequence ends in m");
                rest = &rest[at + end + 1..];
            }
            stripped.push_str(rest);
            assert_eq!(stripped, plain);
        }
        let colored = d.render_styled(&sources, true);
        assert!(
            colored.starts_with("\x1b[1;31merror[E0100]\x1b[0m\x1b[1m: unknown name\x1b[0m\n"),
            "{colored:?}"
        );
        assert!(colored.contains("\x1b[1;34m3 |\x1b[0m"), "{colored:?}");
    }
}
