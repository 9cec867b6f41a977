//! Index functions ([`ScalarFn`]: masks, score modifiers, `tabulate` bodies) emitted inline in
//! the loop body of the op that uses them; element reads are clamped.

use super::*;

impl Emitter<'_> {
    /// Emits an index function inside a generic body; `args` are the SSA values of its
    /// parameters (f32 for a score, i64 for indices). Returns the result's SSA name.
    pub(super) fn emit_scalar_fn(&mut self, f: &ScalarFn, args: &[String], prefix: &str) -> String {
        let name = |k: usize| format!("{prefix}{k}");
        let ty_of = |t: ScalarType| match t {
            ScalarType::Int => "i64",
            ScalarType::F32 => "f32",
            ScalarType::Bool => "i1",
        };
        for (k, (node, t)) in f.nodes.iter().enumerate() {
            let out = name(k);
            let ts = ty_of(*t);
            let lines: Vec<String> = match node {
                // Parameters are the caller's SSA values (see `scalar_arg`).
                ScalarNode::Param(_) => vec![],
                ScalarNode::Int(v) => vec![format!("{out} = arith.constant {v} : i64")],
                ScalarNode::Symbol(s) => vec![format!("{out} = arith.index_cast %sym{} : index to i64", s.0)],
                ScalarNode::F32(v) => vec![format!("{out} = arith.constant {} : f32", f32_literal(*v))],
                ScalarNode::Bool(b) => vec![format!("{out} = arith.constant {b}")],
                ScalarNode::Load { tensor, indices } => {
                    let tt = self.ty(*tensor);
                    let tensor = self.name(*tensor);
                    let mut l = Vec::new();
                    let mut coords = Vec::new();
                    for (axis, i) in indices.iter().enumerate() {
                        let size = match tt.dims[axis] {
                            Dim::Static(n) => {
                                l.push(format!("{out}_n{axis} = arith.constant {} : i64", n - 1));
                                format!("{out}_n{axis}")
                            }
                            Dim::Symbol(_) => {
                                l.push(format!("{out}_a{axis} = arith.constant {axis} : index"));
                                l.push(format!("{out}_d{axis} = tensor.dim {tensor}, {out}_a{axis} : {}", tensor_ty(&tt)));
                                l.push(format!("{out}_e{axis} = arith.index_cast {out}_d{axis} : index to i64"));
                                l.push(format!("{out}_one{axis} = arith.constant 1 : i64"));
                                l.push(format!("{out}_n{axis} = arith.subi {out}_e{axis}, {out}_one{axis} : i64"));
                                format!("{out}_n{axis}")
                            }
                        };
                        // Clamp, so an index function never reads out of bounds.
                        l.push(format!("{out}_z{axis} = arith.constant 0 : i64"));
                        l.push(format!(
                            "{out}_lo{axis} = arith.maxsi {}, {out}_z{axis} : i64",
                            self.scalar_arg(f, *i, args, prefix)
                        ));
                        l.push(format!("{out}_c{axis} = arith.minsi {out}_lo{axis}, {size} : i64"));
                        l.push(format!("{out}_x{axis} = arith.index_cast {out}_c{axis} : i64 to index"));
                        coords.push(format!("{out}_x{axis}"));
                    }
                    let elem_ty = elem(tt.dtype);
                    match tt.dtype {
                        // A rank-0 f32 value is an SSA scalar already (`Emitter::is_scalar`, and
                        // outlined functions take it as `f32`); a rank-0 integer is a tensor.
                        lmc_abi::DType::F32 if tt.rank() == 0 => {
                            l.push(format!("{out}_always = arith.constant true"));
                            l.push(format!("{out} = arith.select {out}_always, {tensor}, {tensor} : {elem_ty}"));
                        }
                        lmc_abi::DType::F32 | lmc_abi::DType::I64 => l.push(format!(
                            "{out} = tensor.extract {tensor}[{}] : {}",
                            coords.join(", "),
                            tensor_ty(&tt)
                        )),
                        lmc_abi::DType::I32 => {
                            l.push(format!(
                                "{out}_raw = tensor.extract {tensor}[{}] : {}",
                                coords.join(", "),
                                tensor_ty(&tt)
                            ));
                            l.push(format!("{out} = arith.extsi {out}_raw : {elem_ty} to i64"));
                        }
                    }
                    l
                }
                ScalarNode::Unary { op, a } => {
                    let a = self.scalar_arg(f, *a, args, prefix);
                    match (op, *t) {
                        (ScalarUnary::Neg, ScalarType::Int) => vec![
                            format!("{out}_z = arith.constant 0 : i64"),
                            format!("{out} = arith.subi {out}_z, {a} : i64"),
                        ],
                        (ScalarUnary::Neg, _) => vec![format!("{out} = arith.negf {a} : f32")],
                        (ScalarUnary::Not, _) => vec![
                            format!("{out}_t = arith.constant true"),
                            format!("{out} = arith.xori {a}, {out}_t : i1"),
                        ],
                        (ScalarUnary::Abs, ScalarType::Int) => vec![format!("{out} = math.absi {a} : i64")],
                        (ScalarUnary::Abs, _) => vec![format!("{out} = math.absf {a} : f32")],
                        (ScalarUnary::Log, _) => vec![format!("{out} = math.log {a} : f32")],
                        (ScalarUnary::Exp, _) => vec![format!("{out} = math.exp {a} : f32")],
                        (ScalarUnary::Sqrt, _) => vec![format!("{out} = math.sqrt {a} : f32")],
                        (ScalarUnary::Sin, _) => vec![format!("{out} = math.sin {a} : f32")],
                        (ScalarUnary::Cos, _) => vec![format!("{out} = math.cos {a} : f32")],
                        (ScalarUnary::ToFloat, _) => vec![format!("{out} = arith.sitofp {a} : i64 to f32")],
                        (ScalarUnary::ToInt, _) => vec![format!("{out} = arith.fptosi {a} : f32 to i64")],
                        (ScalarUnary::Unit, _) => vec![
                            format!("{out}_c40 = arith.constant 40 : i64"),
                            format!("{out}_top = arith.shrui {a}, {out}_c40 : i64"),
                            format!("{out}_f = arith.uitofp {out}_top : i64 to f32"),
                            format!("{out}_k = arith.constant 5.9604644775390625e-08 : f32"),
                            format!("{out} = arith.mulf {out}_f, {out}_k : f32"),
                        ],
                    }
                }
                ScalarNode::Binary { op, a, b } => {
                    let operand_ty = f.nodes[*a].1;
                    let (x, y) = (self.scalar_arg(f, *a, args, prefix), self.scalar_arg(f, *b, args, prefix));
                    let ot = ty_of(operand_ty);
                    let int = operand_ty != ScalarType::F32;
                    let cmp = |i: &str, fl: &str| {
                        if int {
                            format!("{out} = arith.cmpi {i}, {x}, {y} : {ot}")
                        } else {
                            format!("{out} = arith.cmpf {fl}, {x}, {y} : f32")
                        }
                    };
                    match op {
                        ScalarBinary::Add => vec![format!("{out} = {} {x}, {y} : {ts}", if int { "arith.addi" } else { "arith.addf" })],
                        ScalarBinary::Sub => vec![format!("{out} = {} {x}, {y} : {ts}", if int { "arith.subi" } else { "arith.subf" })],
                        ScalarBinary::Mul => vec![format!("{out} = {} {x}, {y} : {ts}", if int { "arith.muli" } else { "arith.mulf" })],
                        ScalarBinary::Div if int => vec![
                            // A zero divisor gives 0 instead of undefined behaviour.
                            format!("{out}_z = arith.constant 0 : i64"),
                            format!("{out}_one = arith.constant 1 : i64"),
                            format!("{out}_isz = arith.cmpi eq, {y}, {out}_z : i64"),
                            format!("{out}_den = arith.select {out}_isz, {out}_one, {y} : i64"),
                            format!("{out}_q = arith.floordivsi {x}, {out}_den : i64"),
                            format!("{out} = arith.select {out}_isz, {out}_z, {out}_q : i64"),
                        ],
                        ScalarBinary::Div => vec![format!("{out} = arith.divf {x}, {y} : f32")],
                        ScalarBinary::Pow => vec![format!("{out} = math.powf {x}, {y} : f32")],
                        ScalarBinary::Rem => vec![
                            // x - floor(x / y) * y, and 0 for a zero divisor.
                            format!("{out}_z = arith.constant 0 : i64"),
                            format!("{out}_one = arith.constant 1 : i64"),
                            format!("{out}_isz = arith.cmpi eq, {y}, {out}_z : i64"),
                            format!("{out}_den = arith.select {out}_isz, {out}_one, {y} : i64"),
                            format!("{out}_q = arith.floordivsi {x}, {out}_den : i64"),
                            format!("{out}_m = arith.muli {out}_q, {out}_den : i64"),
                            format!("{out}_r = arith.subi {x}, {out}_m : i64"),
                            format!("{out} = arith.select {out}_isz, {out}_z, {out}_r : i64"),
                        ],
                        ScalarBinary::Min => vec![format!(
                            "{out} = {} {x}, {y} : {ts}",
                            if int { "arith.minsi" } else { "arith.minimumf" }
                        )],
                        ScalarBinary::Max => vec![format!(
                            "{out} = {} {x}, {y} : {ts}",
                            if int { "arith.maxsi" } else { "arith.maximumf" }
                        )],
                        ScalarBinary::Lt => vec![cmp("slt", "olt")],
                        ScalarBinary::Le => vec![cmp("sle", "ole")],
                        ScalarBinary::Gt => vec![cmp("sgt", "ogt")],
                        ScalarBinary::Ge => vec![cmp("sge", "oge")],
                        ScalarBinary::Eq => vec![cmp("eq", "oeq")],
                        ScalarBinary::Ne => vec![cmp("ne", "une")],
                        ScalarBinary::And => vec![format!("{out} = arith.andi {x}, {y} : i1")],
                        ScalarBinary::Or => vec![format!("{out} = arith.ori {x}, {y} : i1")],
                        ScalarBinary::Hash => hash_lines(&out, &x, &y),
                    }
                }
                ScalarNode::Select { cond, a, b } => {
                    let (c, x, y) = (
                        self.scalar_arg(f, *cond, args, prefix),
                        self.scalar_arg(f, *a, args, prefix),
                        self.scalar_arg(f, *b, args, prefix),
                    );
                    vec![format!("{out} = arith.select {c}, {x}, {y} : {ts}")]
                }
            };
            for l in lines {
                self.line(&format!("  {l}"));
            }
        }
        self.scalar_arg(f, f.result, args, prefix)
    }

    /// The SSA name of node `k` of an index function (parameters are the caller's values).
    pub(super) fn scalar_arg(&self, f: &ScalarFn, k: usize, args: &[String], prefix: &str) -> String {
        match f.nodes[k].0 {
            ScalarNode::Param(p) => args[p].clone(),
            _ => format!("{prefix}{k}"),
        }
    }
}

/// [`ScalarBinary::Hash`] of `x` and `y` into `out`: the bits of `lmc_core::ir::hash_mix`.
fn hash_lines(out: &str, x: &str, y: &str) -> Vec<String> {
    use lmc_core::ir::{HASH_GOLDEN, HASH_MUL1, HASH_MUL2};
    let mut l = vec![
        format!("{out}_g = arith.constant {} : i64", HASH_GOLDEN as i64),
        format!("{out}_yg = arith.muli {y}, {out}_g : i64"),
        format!("{out}_z0 = arith.xori {x}, {out}_yg : i64"),
    ];
    // z = (z ^ (z >> s)) · m, twice, then z ^ (z >> 31).
    for (k, (shift, mul)) in [(30, Some(HASH_MUL1)), (27, Some(HASH_MUL2)), (31, None)].into_iter().enumerate() {
        let z = format!("{out}_z{k}");
        l.push(format!("{out}_s{k} = arith.constant {shift} : i64"));
        l.push(format!("{out}_r{k} = arith.shrui {z}, {out}_s{k} : i64"));
        let mixed = if mul.is_some() { format!("{out}_x{k}") } else { out.to_string() };
        l.push(format!("{mixed} = arith.xori {z}, {out}_r{k} : i64"));
        if let Some(m) = mul {
            l.push(format!("{out}_m{k} = arith.constant {} : i64", m as i64));
            l.push(format!("{out}_z{} = arith.muli {mixed}, {out}_m{k} : i64", k + 1));
        }
    }
    l
}
