//! Spelling MLIR: element and tensor types, SSA names, indexing maps and the scalar bodies of
//! elementwise ops.

use super::*;

pub(super) fn elem(d: DType) -> &'static str {
    match d {
        DType::F32 => "f32",
        DType::I64 => "i64",
        DType::I32 => "i32",
    }
}

/// The element type a packed weight is stored in.
pub(super) fn format_elem(f: lmc_abi::WeightFormat) -> &'static str {
    match f {
        lmc_abi::WeightFormat::F32 => "f32",
        lmc_abi::WeightFormat::Bf16 => "bf16",
        lmc_abi::WeightFormat::Int8 | lmc_abi::WeightFormat::Int4 => "i8",
    }
}

pub(super) fn shape_str(t: &TensorType) -> String {
    shape_str_of(t, elem(t.dtype))
}

/// `t`'s shape with elements of type `elem`.
pub(super) fn shape_str_of(t: &TensorType, elem: &str) -> String {
    let mut s = String::new();
    for d in &t.dims {
        match d {
            Dim::Static(n) => {
                let _ = write!(s, "{n}x");
            }
            Dim::Symbol(_) => s.push_str("?x"),
        }
    }
    s.push_str(elem);
    s
}

pub(super) fn tensor_ty(t: &TensorType) -> String {
    format!("tensor<{}>", shape_str(t))
}

pub(super) fn memref_ty(t: &TensorType) -> String {
    format!("memref<{}>", shape_str(t))
}

pub(super) fn v(id: ValueId) -> String {
    format!("%v{}", id.0)
}

/// `(d0, d1, d2)`
pub(super) fn dims_list(rank: usize) -> String {
    let ds: Vec<String> = (0..rank).map(|i| format!("d{i}")).collect();
    format!("({})", ds.join(", "))
}

pub(super) fn parallel(rank: usize) -> String {
    vec!["\"parallel\""; rank].join(", ")
}

/// A dimension as a size in an op's text: its number, or its symbol's SSA value.
pub(super) fn dim_size(d: Dim) -> String {
    match d {
        Dim::Static(n) => n.to_string(),
        Dim::Symbol(s) => format!("%sym{}", s.0),
    }
}

/// The loop indices `d0, d1, ...` of a loop nest of `rank` dimensions.
pub(super) fn loop_indices(rank: usize) -> Vec<String> {
    (0..rank).map(|i| format!("d{i}")).collect()
}

/// Where an operand of type `operand` is read for the element of a broadcasting op's result
/// (`result`) at `at` (one index per result axis): numpy broadcasting aligns the axes on the
/// right, and an axis of length 1 stretched over a longer one is read at 0.
pub(super) fn broadcast_read(operand: &TensorType, result: &TensorType, at: &[String]) -> Vec<String> {
    let offset = result.rank() - operand.rank();
    operand
        .dims
        .iter()
        .enumerate()
        .map(|(j, d)| {
            if *d == Dim::Static(1) && result.dims[j + offset] != Dim::Static(1) {
                "0".to_string()
            } else {
                at[j + offset].clone()
            }
        })
        .collect()
}

/// `ins(...) ` of a fused loop nest's inputs, or nothing.
pub(super) fn ins_clause(fused: &FusedBody) -> String {
    if fused.inputs.is_empty() {
        return String::new();
    }
    let names: Vec<&str> = fused.inputs.iter().map(|i| i.0.as_str()).collect();
    let types: Vec<&str> = fused.inputs.iter().map(|i| i.1.as_str()).collect();
    format!("ins({} : {}) ", names.join(", "), types.join(", "))
}

/// The arith/math operation of an elementwise binary op on f32.
pub(super) fn binary_op(op: BinaryOp) -> &'static str {
    match op {
        BinaryOp::Add => "arith.addf",
        BinaryOp::Sub => "arith.subf",
        BinaryOp::Mul => "arith.mulf",
        BinaryOp::Div => "arith.divf",
        BinaryOp::Max => "arith.maximumf",
        BinaryOp::Min => "arith.minimumf",
        BinaryOp::Pow => "math.powf",
    }
}

/// The body of an elementwise unary op on `x`, defining `res`; temporaries are named `{tmp}N`.
/// `exp`, `erf` and `tanh`, alone or inside another op, are the written-out arithmetic of
/// [`approx`] (vectorizable), not libm calls.
pub(super) fn unary_body(op: UnaryOp, x: &str, res: &str, tmp: &str) -> Vec<String> {
    let simple = |name: &str| vec![format!("{res} = {name} {x} : f32")];
    match op {
        UnaryOp::Neg => simple("arith.negf"),
        UnaryOp::Sqrt => simple("math.sqrt"),
        UnaryOp::Rsqrt => simple("math.rsqrt"),
        UnaryOp::Exp => approx::exp(x, res, tmp),
        UnaryOp::Log => simple("math.log"),
        UnaryOp::Abs => simple("math.absf"),
        UnaryOp::Tanh => approx::tanh(x, res, tmp),
        UnaryOp::Erf => approx::erf(x, res, tmp),
        UnaryOp::Sin => simple("math.sin"),
        UnaryOp::Cos => simple("math.cos"),
        // x + (-0.0) is x for every x (-0.0 and NaN included); LLVM folds it away.
        UnaryOp::Detach => vec![
            format!("{tmp}0 = arith.constant -0.0 : f32"),
            format!("{res} = arith.addf {x}, {tmp}0 : f32"),
        ],
        // 1 / (1 + exp(-x))
        UnaryOp::Sigmoid => {
            let mut lines = one_plus_exp_neg(x, tmp);
            lines.push(format!("{res} = arith.divf {tmp}2, {tmp}3 : f32"));
            lines
        }
        UnaryOp::Relu => vec![
            format!("{tmp}0 = arith.constant 0.0 : f32"),
            format!("{res} = arith.maximumf {x}, {tmp}0 : f32"),
        ],
        // x / (1 + exp(-x))
        UnaryOp::Silu => {
            let mut lines = one_plus_exp_neg(x, tmp);
            lines.push(format!("{res} = arith.divf {x}, {tmp}3 : f32"));
            lines
        }
        // x * 0.5 * (1 + erf(x / sqrt(2)))
        UnaryOp::Gelu => {
            let mut lines = vec![
                format!("{tmp}0 = arith.constant 0.70710678118654752 : f32"),
                format!("{tmp}1 = arith.mulf {x}, {tmp}0 : f32"),
            ];
            lines.extend(approx::erf(&format!("{tmp}1"), &format!("{tmp}2"), &format!("{tmp}e")));
            lines.extend([
                format!("{tmp}3 = arith.constant 1.0 : f32"),
                format!("{tmp}4 = arith.addf {tmp}2, {tmp}3 : f32"),
                format!("{tmp}5 = arith.mulf {x}, {tmp}4 : f32"),
                format!("{tmp}6 = arith.constant 0.5 : f32"),
                format!("{res} = arith.mulf {tmp}5, {tmp}6 : f32"),
            ]);
            lines
        }
    }
}

/// `{tmp}3 = 1 + exp(-x)`, with `{tmp}2` the constant 1 (sigmoid's and SiLU's denominator).
pub(super) fn one_plus_exp_neg(x: &str, tmp: &str) -> Vec<String> {
    let mut lines = vec![format!("{tmp}0 = arith.negf {x} : f32")];
    lines.extend(approx::exp(&format!("{tmp}0"), &format!("{tmp}1"), &format!("{tmp}e")));
    lines.extend([
        format!("{tmp}2 = arith.constant 1.0 : f32"),
        format!("{tmp}3 = arith.addf {tmp}1, {tmp}2 : f32"),
    ]);
    lines
}

/// An f32 literal MLIR accepts: always with a decimal point or exponent.
pub(super) fn f32_literal(x: f64) -> String {
    let f = x as f32;
    if f.is_finite() {
        // Shortest round-trip digits, always with a mantissa point (MLIR lexes `1e0` as `1`).
        let s = format!("{f:e}");
        match s.split_once('e') {
            Some((m, e)) if !m.contains('.') => format!("{m}.0e{e}"),
            _ => s,
        }
    } else if f.is_nan() {
        "0x7FC00000".into()
    } else if f > 0.0 {
        "0x7F800000".into()
    } else {
        "0xFF800000".into()
    }
}
