//! `lmc-grammar`: the first stage of lmc. It turns the text of a `.model` file into a spanned
//! [`ast::File`] (syntax only), prints that tree for `lmc emit --stage ast`, and owns the
//! [`Diagnostic`] type every later stage reports errors with.

pub mod ast;
mod diagnostic;
mod parse;
mod print;

pub use diagnostic::{Diagnostic, Label, Severity, SourceFile};
pub use parse::parse_file;
pub use print::print_ast;

/// A byte range in a source file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Span {
    pub start: usize,
    pub end: usize,
}

impl Span {
    pub fn new(start: usize, end: usize) -> Self {
        Span { start, end }
    }

    /// The smallest span covering both.
    pub fn to(self, other: Span) -> Span {
        Span::new(self.start.min(other.start), self.end.max(other.end))
    }
}
