//! Randomness: `training()`, `dropout(x, p)`, attention's `dropout = p` and `uniform(dims)`.
//! Outside a training compile ([`ConfigOverrides::training`]) dropout is the identity. In one,
//! each dropout is a stream of its own: an element is kept where
//! `unit(hash(hash(seed, stream), offset)) ≥ p` and scaled by `1 / (1 - p)`, with `seed` the
//! `dropout_seed` input (a new value each step) and `offset` the element's row-major position
//! ([`dropout_scale_fn`]). The mask is a function of the indices, so the backward pass
//! recomputes it instead of storing it: the gradient of `x · mask` is `dx · mask`, the same
//! elements kept. `uniform` draws from a stream of its own in the same way, in every compile
//! (seeded by `dropout_seed`, 0 when not given): what a model samples (ELECTRA's generator)
//! is sampled when it evaluates too, the same for every evaluation.

use super::*;

/// The input that seeds every dropout of a training step.
pub const DROPOUT_SEED: &str = "dropout_seed";

impl<'p> Elab<'p> {
    /// `dropout(x, p)`: `x` with each element zeroed with probability `p` and the rest scaled by
    /// `1 / (1 - p)` in a training compile, `x` itself otherwise (and when `p` is 0), as
    /// `torch.nn.functional.dropout`.
    pub(super) fn dropout(&mut self, frame: &mut Frame, x: &'p Expr, p: &'p Expr, span: Span) -> Result<Val, Diagnostic> {
        let val = self.sub(frame, x)?;
        let x_id = self.tensor_of(val, x.span)?;
        self.require_f32(x_id, "`dropout`")?;
        let p = self.dropout_probability(frame, p)?;
        if !self.training || p == 0.0 {
            return Ok(Val::Tensor(x_id));
        }
        let ty = self.ty(x_id).clone();
        let keep = self.dropout_scale(&ty.dims, p, span)?;
        let scale = self.push(Op::Tabulate { f: keep }, ty.clone(), span)?;
        self.push(
            Op::Binary {
                op: BinaryOp::Mul,
                lhs: x_id,
                rhs: scale,
            },
            ty,
            span,
        )
        .map(Val::Tensor)
    }

    /// `uniform(d0, d1, ...)`: an f32 tensor of those dimensions whose elements are random,
    /// uniform strictly between 0 and 1 ([`uniform_fn`]), a constant to the backward pass.
    pub(super) fn uniform(&mut self, dims: Vec<Dim>, span: Span) -> Result<Val, Diagnostic> {
        if self.scan_depth > 0 {
            return Err(
                Diagnostic::error("E0202", "`uniform` inside a `scan` body is not supported", span, "inside a scan")
                    .with_help("draw the numbers outside the scan and scan over them"),
            );
        }
        let seed = self.dropout_seed(span)?;
        let stream = self.dropout_streams;
        self.dropout_streams += 1;
        let f = uniform_fn(&dims, seed, stream);
        self.push(Op::Tabulate { f }, TensorType::new(DType::F32, dims), span)
            .map(Val::Tensor)
    }

    /// A dropout probability: a compile-time number in `[0, 1)`, outside a scan's body (whose
    /// steps the seed input is not threaded into), checked whether or not this compile drops.
    pub(super) fn dropout_probability(&mut self, frame: &mut Frame, e: &'p Expr) -> Result<f64, Diagnostic> {
        if self.scan_depth > 0 {
            return Err(
                Diagnostic::error("E0202", "dropout inside a `scan` body is not supported", e.span, "inside a scan")
                    .with_help("apply dropout to the scan's inputs or outputs"),
            );
        }
        match self.sub(frame, e)? {
            Val::Const(c) if c.as_f64().is_some_and(|p| (0.0..1.0).contains(&p)) => Ok(c.as_f64().unwrap_or_default()),
            Val::Const(c) if c.as_f64().is_some() => Err(Diagnostic::error(
                "E0202",
                format!("a dropout probability is at least 0 and below 1, found {c}"),
                e.span,
                "out of range",
            )
            .with_help("p is the probability that an element is zeroed; 0 turns the dropout off")),
            other => Err(Diagnostic::error(
                "E0202",
                "a dropout probability is a compile-time number",
                e.span,
                format!("this is {}", describe(&other)),
            )
            .with_help("pass a config value such as `c.hidden_dropout_prob`")),
        }
    }

    /// The index function over a tensor of `dims` giving `1 / (1 - p)` where an element is kept
    /// and 0 where it is dropped, on a stream of its own.
    pub(super) fn dropout_scale(&mut self, dims: &[Dim], p: f64, span: Span) -> Result<ScalarFn, Diagnostic> {
        let seed = self.dropout_seed(span)?;
        let stream = self.dropout_streams;
        self.dropout_streams += 1;
        Ok(dropout_scale_fn(dims, seed, stream, p))
    }

    /// The `dropout_seed` input (`i64[]`, 0 when not given), made the first time it is needed.
    /// It seeds `uniform` too.
    fn dropout_seed(&mut self, span: Span) -> Result<ValueId, Diagnostic> {
        if let Some(id) = self.dropout_seed {
            return Ok(id);
        }
        if self.graph.inputs.iter().any(|i| i.name == DROPOUT_SEED) {
            return Err(Diagnostic::error(
                "E0202",
                format!("dropout and `uniform` add the input `{DROPOUT_SEED}`, which this model declares itself"),
                span,
                "a dropout here",
            )
            .with_help("rename the model's input"));
        }
        let ty = TensorType::new(DType::I64, Vec::new());
        self.graph.inputs.push(TensorDecl {
            name: DROPOUT_SEED.into(),
            ty: ty.clone(),
            index_bound: None,
            default: Some(lmc_abi::InputDefault::Zeros),
        });
        let id = self.push(Op::Input(self.graph.inputs.len() - 1), ty, span)?;
        self.dropout_seed = Some(id);
        Ok(id)
    }
}
