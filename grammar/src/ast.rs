//! The spanned syntax tree of a `.model` file. Syntax only: nothing here is resolved or typed;
//! `lmc-core` turns it into the checked IR.

use crate::Span;

/// A whole `.model` file.
#[derive(Debug, Clone, PartialEq)]
pub struct File {
    pub items: Vec<Item>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Item {
    Config(ConfigDecl),
    Model(ModelDecl),
}

/// An identifier with the place it was written.
#[derive(Debug, Clone, PartialEq)]
pub struct Ident {
    pub name: String,
    pub span: Span,
}

/// `config Name { key = value ... }`: named compile-time values with their defaults.
#[derive(Debug, Clone, PartialEq)]
pub struct ConfigDecl {
    pub name: Ident,
    pub fields: Vec<ConfigField>,
    pub span: Span,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ConfigField {
    pub name: Ident,
    pub value: Expr,
}

/// `model Name(c: Config) { params; forward }`.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelDecl {
    pub name: Ident,
    /// The name the body uses for its config (`c` in `model M(c: Cfg)`).
    pub config_binding: Ident,
    pub config_type: Ident,
    pub params: Vec<ParamDecl>,
    pub forwards: Vec<ForwardDecl>,
    pub span: Span,
}

/// `param embeddings.word_embeddings.weight: f32[c.vocab_size, c.hidden_size]`.
/// The dotted path is the tensor's name in the checkpoint.
#[derive(Debug, Clone, PartialEq)]
pub struct ParamDecl {
    pub path: Path,
    pub ty: TensorType,
    pub span: Span,
}

/// `forward(inputs) -> (outputs) { statements }`.
#[derive(Debug, Clone, PartialEq)]
pub struct ForwardDecl {
    pub inputs: Vec<ValueDecl>,
    pub outputs: Vec<ValueDecl>,
    pub body: Vec<Stmt>,
    pub span: Span,
}

/// A named, typed input or output of a forward function.
#[derive(Debug, Clone, PartialEq)]
pub struct ValueDecl {
    pub name: Ident,
    pub ty: TensorType,
}

/// `f32[B, T, c.hidden_size]`: an element type and one expression per dimension.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorType {
    pub dtype: DType,
    pub dtype_span: Span,
    pub dims: Vec<Expr>,
    pub span: Span,
}

/// Element types the language can name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DType {
    F32,
    I64,
    I32,
}

impl DType {
    pub fn as_str(self) -> &'static str {
        match self {
            DType::F32 => "f32",
            DType::I64 => "i64",
            DType::I32 => "i32",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum Stmt {
    /// `name = expr`
    Assign { name: Ident, value: Expr, span: Span },
    /// `return a, b`: one expression per declared output, in order.
    Return { values: Vec<Expr>, span: Span },
}

/// A dotted name: `x`, `c.hidden_size`, `encoder.layer.0.output.dense.bias`.
#[derive(Debug, Clone, PartialEq)]
pub struct Path {
    pub segments: Vec<Ident>,
    pub span: Span,
}

impl Path {
    /// The path as written, segments joined by dots.
    pub fn dotted(&self) -> String {
        let names: Vec<&str> = self.segments.iter().map(|s| s.name.as_str()).collect();
        names.join(".")
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BinaryOp {
    Add,
    Sub,
    Mul,
    Div,
    MatMul,
}

impl BinaryOp {
    pub fn symbol(self) -> &'static str {
        match self {
            BinaryOp::Add => "+",
            BinaryOp::Sub => "-",
            BinaryOp::Mul => "*",
            BinaryOp::Div => "/",
            BinaryOp::MatMul => "@",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Expr {
    pub kind: ExprKind,
    pub span: Span,
}

#[derive(Debug, Clone, PartialEq)]
pub enum ExprKind {
    /// An integer literal, kept as written so huge values are reported, not wrapped.
    Int(String),
    Float(String),
    Bool(bool),
    Path(Path),
    Neg(Box<Expr>),
    Binary {
        op: BinaryOp,
        lhs: Box<Expr>,
        rhs: Box<Expr>,
    },
    Call {
        callee: Ident,
        args: Vec<CallArg>,
    },
}

/// A call argument, positional (`x`) or named (`axis = -1`).
#[derive(Debug, Clone, PartialEq)]
pub struct CallArg {
    pub name: Option<Ident>,
    pub value: Expr,
}
