//! `lmc.Diagnostic`: one finding of the checker, with its place, as `lmc check` reports it.

use lmc_lab::source::Collected;
use pyo3::prelude::*;

/// One diagnostic: `code` (`E0100`), `severity` (`error`, `warning`), `message`, where it points
/// (`file`, `line`, `column`, 1-based, and where it ends), the label there, `help`, and
/// `rendered`: the text `lmc check` prints, with the source line and a caret.
#[pyclass(frozen, module = "lmc", get_all)]
#[derive(Clone)]
pub struct Diagnostic {
    pub code: String,
    pub severity: String,
    pub message: String,
    pub file: String,
    pub line: u64,
    pub column: u64,
    pub end_line: u64,
    pub end_column: u64,
    pub label: String,
    pub help: Option<String>,
    pub rendered: String,
}

#[pymethods]
impl Diagnostic {
    fn __repr__(&self) -> String {
        format!(
            "<Diagnostic {} {} at {}:{}:{}: {}>",
            self.severity, self.code, self.file, self.line, self.column, self.message
        )
    }

    fn __str__(&self) -> String {
        self.rendered.clone()
    }
}

impl Diagnostic {
    /// From the JSON form of `lmc check --message-format json`.
    pub fn from_json(json: &serde_json::Value, rendered: &str) -> PyResult<Diagnostic> {
        let text = |v: &serde_json::Value, key: &str| v.get(key).and_then(|s| s.as_str()).unwrap_or_default().to_string();
        let number = |v: &serde_json::Value, key: &str| v.get(key).and_then(|n| n.as_u64()).unwrap_or_default();
        let primary = json.get("primary").cloned().unwrap_or_default();
        Ok(Diagnostic {
            code: text(json, "code"),
            severity: text(json, "severity"),
            message: text(json, "message"),
            file: text(&primary, "file"),
            line: number(&primary, "line"),
            column: number(&primary, "column"),
            end_line: number(&primary, "end_line"),
            end_column: number(&primary, "end_column"),
            label: text(&primary, "message"),
            help: json.get("help").and_then(|h| h.as_str()).map(str::to_string),
            rendered: rendered.to_string(),
        })
    }

    pub fn from_collected(c: &Collected) -> PyResult<Diagnostic> {
        Diagnostic::from_json(&c.json, &c.rendered)
    }
}
