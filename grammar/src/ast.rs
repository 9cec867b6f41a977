//! The spanned syntax tree of a `.model` file. Syntax only: nothing here is resolved or typed;
//! `lmc-core` elaborates it into the checked IR.

use crate::Span;

/// A whole `.model` file.
#[derive(Debug, Clone, PartialEq)]
pub struct File {
    pub items: Vec<Item>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Item {
    Use(UseDecl),
    Config(ConfigDecl),
    Block(BlockDecl),
    Model(ModelDecl),
    Variant(VariantDecl),
    Fn(FnDecl),
}

impl Item {
    /// The name the item defines (none for `use`).
    pub fn name(&self) -> Option<&Ident> {
        match self {
            Item::Use(_) => None,
            Item::Config(c) => Some(&c.name),
            Item::Block(b) => Some(&b.name),
            Item::Model(m) => Some(&m.name),
            Item::Variant(v) => Some(&v.name),
            Item::Fn(f) => Some(&f.name),
        }
    }
}

/// An identifier with the place it was written.
#[derive(Debug, Clone, PartialEq)]
pub struct Ident {
    pub name: String,
    pub span: Span,
}

/// `use std.{Linear, LayerNorm}`: brings named items of another module into scope.
#[derive(Debug, Clone, PartialEq)]
pub struct UseDecl {
    /// `std`, or a path of a `.model` file relative to the importing one (`layers.attention`).
    pub module: Vec<Ident>,
    pub names: Vec<Ident>,
    pub span: Span,
}

/// `config Name for "type" { fields }`: named compile-time values with their defaults.
#[derive(Debug, Clone, PartialEq)]
pub struct ConfigDecl {
    pub name: Ident,
    /// `for "gpt2" or "gpt2-like"`: the `model_type`s of the checkpoints this config reads; a
    /// checkpoint of another type is an error. Empty: any.
    pub model_types: Vec<StringLit>,
    pub fields: Vec<ConfigField>,
    /// `assume "key" = value`: keys of config.json the model does not read, with the value it
    /// computes as if they had.
    pub assumptions: Vec<ConfigAssumption>,
    pub span: Span,
}

/// `assume "rope_scaling" = null`, `assume "head_dim" = hidden_size / num_heads`.
#[derive(Debug, Clone, PartialEq)]
pub struct ConfigAssumption {
    pub key: StringLit,
    /// The value assumed; `None` for `null` (the key absent or null).
    pub value: Option<Expr>,
    pub span: Span,
}

/// `name: type = default from "hf_key" or "other.key"`.
#[derive(Debug, Clone, PartialEq)]
pub struct ConfigField {
    pub name: Ident,
    pub ty: Option<ConfigType>,
    pub value: Expr,
    /// The Hugging Face `config.json` keys this field is read from, first found wins, when they
    /// differ from `name`; a dotted key reads a nested object (`rope_parameters.rope_theta`).
    pub hf_keys: Vec<StringLit>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum ConfigType {
    Int(Span),
    Float(Span),
    Bool(Span),
    /// `learned | sinusoidal | rope`
    Enum(Vec<Ident>),
}

#[derive(Debug, Clone, PartialEq)]
pub struct StringLit {
    /// Without the quotes.
    pub value: String,
    pub span: Span,
}

/// `block Name(params) { members }`: a reusable layer with parameters and a forward function.
#[derive(Debug, Clone, PartialEq)]
pub struct BlockDecl {
    pub name: Ident,
    pub params: Vec<BlockParam>,
    pub members: Vec<Member>,
    pub span: Span,
}

/// `name: int = default`, or `c: ConfigName`.
#[derive(Debug, Clone, PartialEq)]
pub struct BlockParam {
    pub name: Ident,
    /// `int`, `float`, `bool`, or the name of a config.
    pub ty: Ident,
    pub default: Option<Expr>,
}

/// `model Name(c: Config) { members }`.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelDecl {
    pub name: Ident,
    /// The name the body uses for its config (`c` in `model M(c: Cfg)`).
    pub config_binding: Ident,
    pub config_type: Ident,
    pub members: Vec<Member>,
    pub span: Span,
}

/// `variant Name = Model { key = value, ... }`: the model with other config defaults.
#[derive(Debug, Clone, PartialEq)]
pub struct VariantDecl {
    pub name: Ident,
    pub base: Ident,
    pub overrides: Vec<(Ident, Expr)>,
    pub span: Span,
}

/// `fn padding(attention_mask: i64[B, S]) = (b, h, i, j) => attention_mask[b, j] != 0`: a named
/// index function (a mask or a score modifier), parameterised by tensors it reads and
/// compile-time values. Calling it gives the index function.
#[derive(Debug, Clone, PartialEq)]
pub struct FnDecl {
    pub name: Ident,
    pub params: Vec<FnParam>,
    pub value: Expr,
    pub span: Span,
}

#[derive(Debug, Clone, PartialEq)]
pub struct FnParam {
    pub name: Ident,
    pub ty: FnParamType,
}

#[derive(Debug, Clone, PartialEq)]
pub enum FnParamType {
    /// A tensor the function reads, with a signature like a block input's.
    Tensor(TensorType),
    /// `int`, `float` or `bool`: a value known at compile time.
    Scalar(Ident),
}

/// What a block or model body holds.
#[derive(Debug, Clone, PartialEq)]
pub enum Member {
    /// `param embeddings.word_embeddings.weight: f32[c.vocab_size, c.hidden_size]`; the dotted
    /// path, prefixed by the instance's own path, is the tensor's checkpoint name.
    Param {
        path: Path,
        ty: TensorType,
        span: Span,
    },
    /// `attention.self.query = Linear(c.d, c.d)` or, with a count, an array of instances
    /// (`encoder.layer[c.layers] = BertLayer(c)`, checkpoint names `encoder.layer.0...`).
    Instance {
        path: Path,
        count: Option<Expr>,
        block: Path,
        args: Vec<CallArg>,
        span: Span,
    },
    /// `if cond { members } else { members }`, decided when the block is instantiated.
    If {
        cond: Expr,
        then: Vec<Member>,
        otherwise: Vec<Member>,
        span: Span,
    },
    Forward(ForwardDecl),
}

/// `forward(inputs) -> (outputs) { statements }` or `forward(inputs) -> type { ... }`.
#[derive(Debug, Clone, PartialEq)]
pub struct ForwardDecl {
    pub inputs: Vec<InputDecl>,
    pub outputs: Outputs,
    pub body: Vec<Stmt>,
    pub span: Span,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Outputs {
    Named(Vec<ValueDecl>),
    /// A single unnamed result, as blocks return.
    Single(TensorType),
}

/// A named input of a forward function: a tensor, or (blocks only) an index function.
#[derive(Debug, Clone, PartialEq)]
pub struct InputDecl {
    pub name: Ident,
    pub ty: InputType,
    /// `= ones`: what a model input is when the caller leaves it out (`ones`, `zeros`,
    /// `arange`); the checker decides which names mean something.
    pub default: Option<Ident>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum InputType {
    Tensor(TensorType),
    /// `mask: fn`: an index function the caller passes, such as an attention mask.
    IndexFn(Span),
}

/// A named, typed output of a forward function.
#[derive(Debug, Clone, PartialEq)]
pub struct ValueDecl {
    pub name: Ident,
    pub ty: TensorType,
}

/// `f32[B, T, c.hidden_size]`, `f32[..., d]`: an element type and its dimensions.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorType {
    pub dtype: DType,
    pub dtype_span: Span,
    pub dims: Vec<DimExpr>,
    pub span: Span,
}

#[derive(Debug, Clone, PartialEq)]
pub enum DimExpr {
    /// `...`: any number of leading dimensions, the same wherever it appears in one signature.
    Ellipsis(Span),
    Expr(Expr),
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
    /// `name = expr`, or `a, b = expr` for a call with several results.
    Assign { names: Vec<Ident>, value: Expr, span: Span },
    /// `return a, b`: one expression per declared output, in order.
    Return { values: Vec<Expr>, span: Span },
    /// `for layer in encoder.layer { ... }` or `for i in range(n) { ... }`, unrolled at compile
    /// time.
    For {
        var: Ident,
        iter: Expr,
        body: Vec<Stmt>,
        span: Span,
    },
    /// `if cond { ... } else { ... }`, decided at compile time.
    If {
        cond: Expr,
        then: Vec<Stmt>,
        otherwise: Vec<Stmt>,
        span: Span,
    },
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
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
    And,
    Or,
}

impl BinaryOp {
    pub fn symbol(self) -> &'static str {
        match self {
            BinaryOp::Add => "+",
            BinaryOp::Sub => "-",
            BinaryOp::Mul => "*",
            BinaryOp::Div => "/",
            BinaryOp::MatMul => "@",
            BinaryOp::Eq => "==",
            BinaryOp::Ne => "!=",
            BinaryOp::Lt => "<",
            BinaryOp::Le => "<=",
            BinaryOp::Gt => ">",
            BinaryOp::Ge => ">=",
            BinaryOp::And => "and",
            BinaryOp::Or => "or",
        }
    }

    /// Binding strength, for the printer's parentheses (higher binds tighter).
    pub fn precedence(self) -> u8 {
        match self {
            BinaryOp::Or => 1,
            BinaryOp::And => 2,
            BinaryOp::Eq | BinaryOp::Ne | BinaryOp::Lt | BinaryOp::Le | BinaryOp::Gt | BinaryOp::Ge => 3,
            BinaryOp::Add | BinaryOp::Sub => 4,
            BinaryOp::Mul | BinaryOp::Div => 5,
            BinaryOp::MatMul => 6,
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
    Str(String),
    Path(Path),
    Neg(Box<Expr>),
    Not(Box<Expr>),
    Binary {
        op: BinaryOp,
        lhs: Box<Expr>,
        rhs: Box<Expr>,
    },
    /// `if cond { a } else { b }`, decided at compile time.
    If {
        cond: Box<Expr>,
        then: Box<Expr>,
        otherwise: Box<Expr>,
    },
    /// `(b, h, i, j) => expr`: an index function (attention masks and score modifiers).
    Lambda {
        params: Vec<Ident>,
        body: Box<Expr>,
    },
    /// `scan(x_t in x, h = h0) along 1 { ...; return y }`: a recurrence over one axis; see
    /// [`ScanBinding`]. Its value is the stacked per-step outputs, then the final states.
    Scan {
        bindings: Vec<ScanBinding>,
        /// The scanned axis; axis 1 (the sequence axis of `[B, T, ...]`) when absent.
        along: Option<Box<Expr>>,
        body: Vec<Stmt>,
    },
    /// `tensor[i, j]`: one element, inside an index function.
    Index {
        base: Path,
        indices: Vec<Expr>,
    },
    /// A built-in function (`gelu(x)`), a block instance's forward (`attention.self.query(x)`)
    /// or, in instance declarations, a block constructor (`Linear(c.d, c.ff)`).
    Call {
        callee: Path,
        args: Vec<CallArg>,
    },
}

/// One binding of a `scan`: `x_t in x` (a slice of `x` per step) or `h = h0` (a carried state
/// with its initial value).
#[derive(Debug, Clone, PartialEq)]
pub struct ScanBinding {
    pub name: Ident,
    pub carry: bool,
    pub value: Expr,
}

/// A call argument, positional (`x`) or named (`axis = -1`).
#[derive(Debug, Clone, PartialEq)]
pub struct CallArg {
    pub name: Option<Ident>,
    pub value: Expr,
}
