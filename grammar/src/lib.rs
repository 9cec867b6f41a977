//! `lmc-grammar`: the first stage of lmc. It turns the text of a `.model` file into a spanned
//! [`ast::File`] (syntax only), prints that tree for `lmc emit --stage ast`, and owns the
//! [`Diagnostic`] type every later stage reports errors with.

pub mod ast;
mod diagnostic;
mod format;
mod parse;
mod print;

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
