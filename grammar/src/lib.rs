//! `lmc-grammar`: the first stage of lmc. It turns the text of a `.model` file into a spanned
//! [`ast::File`] (syntax only), prints that tree for `lmc emit --stage ast`, and owns the
//! [`Diagnostic`] type every later stage reports errors with.

pub mod ast;
mod diagnostic;
mod format;
mod parse;
mod print;

#[cfg(test)]
use diagnostic::Window;
pub use diagnostic::{Diagnostic, Label, Severity, SourceFile, SourceMap};
pub use format::format_file;
pub use parse::parse_file;
pub use print::print_ast;

/// Identifies a source file in a [`SourceMap`].
pub type FileId = u32;

/// A byte range in one source file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Span {
    pub file: FileId,
    pub start: usize,
    pub end: usize,
}

impl Span {
    pub fn new(file: FileId, start: usize, end: usize) -> Self {
        Span { file, start, end }
    }

    /// The smallest span covering both (which must be in the same file).
    pub fn to(self, other: Span) -> Span {
        Span::new(self.file, self.start.min(other.start), self.end.max(other.end))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<ast::File, Diagnostic> {
        parse_file(text, 0)
    }

    #[test]
    fn limits_turn_deep_or_long_input_into_errors() {
        let deep = format!(
            "model M(c: C) {{ forward(x: f32[B]) -> (y: f32[B]) {{ return {}x{} }} }}",
            "(".repeat(100),
            ")".repeat(100)
        );
        assert_eq!(parse(&deep).unwrap_err().code, "E0002");
        let long = format!(
            "model M(c: C) {{ forward(x: f32[B]) -> (y: f32[B]) {{ return x{} }} }}",
            " + x".repeat(300)
        );
        assert_eq!(parse(&long).unwrap_err().code, "E0002");
        let negs = format!(
            "model M(c: C) {{ forward(x: f32[B]) -> (y: f32[B]) {{ return {}x }} }}",
            "- ".repeat(300)
        );
        assert_eq!(parse(&negs).unwrap_err().code, "E0002");
    }

    #[test]
    fn precedence_follows_the_usual_rules() {
        let f = parse("config C { a = 1 + 2 * 3 @ 4 == 5 and not true or false }").unwrap();
        let ast::Item::Config(c) = &f.items[0] else { panic!() };
        let source = SourceFile::new("t", "");
        let printed = print_ast(
            &ast::File {
                items: vec![ast::Item::Config(c.clone())],
            },
            &source,
        );
        assert!(
            printed.contains("field a = ((((1 + (2 * (3 @ 4))) == 5) and (not true)) or false)"),
            "{printed}"
        );
    }

    #[test]
    fn keywords_are_not_names_but_may_be_path_segments() {
        assert!(parse("config for { a = 1 }").is_err());
        assert!(parse("model M(c: C) { encoder.block.0.layer = L(c) forward(x: f32[B]) -> (y: f32[B]) { return x } }").is_ok());
    }

    #[test]
    fn long_lines_are_clipped_in_diagnostics() {
        let text = format!("config C {{ a = {}! }}", "1 + ".repeat(100));
        let mut sources = SourceMap::new();
        let id = sources.add(SourceFile::new("t.model", text.clone()));
        let d = parse_file(&text, id).unwrap_err();
        let rendered = d.render(&sources);
        let shown = rendered.lines().find(|l| l.starts_with("1 |")).unwrap();
        assert!(shown.chars().count() <= 4 + 3 + Window::WIDTH + 3, "{rendered}");
        assert!(
            shown.contains("...") && shown.contains('!'),
            "the clipped line must still show the error: {rendered}"
        );
    }

    #[test]
    fn formatting_keeps_comments_and_is_idempotent() {
        let text = "# head\n\nconfig C { # trailing\n  a = 1   # one\n\n  # own line\n  b: x | y = x }\nmodel M(c: C) { forward(x: f32[B]) -> (y: f32[B]) { z = if c.b == x { x } else { x * 2.0 }  # pick\n return z } }\n";
        let f = parse(text).unwrap();
        let once = format_file(&f, &SourceFile::new("t", text));
        let twice = format_file(&parse(&once).unwrap(), &SourceFile::new("t", once.clone()));
        assert_eq!(once, twice);
        for c in ["# head", "# trailing", "# one", "# own line", "# pick"] {
            assert!(once.contains(c), "{c} lost:\n{once}");
        }
    }
}
