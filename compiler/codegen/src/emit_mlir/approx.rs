//! `exp`, `erf` and `tanh` of f32 written out in `arith` ops, so that the loops around them
//! vectorize.
//!
//! `math.exp`, `math.erf` and `math.tanh` lower to calls to libm's `expf`, `erff` and `tanhf`,
//! one element at a time: a softmax or a GELU then costs more than the matmul next to it, and
//! the loop vectorizer cannot widen a loop with a call in it. MLIR's own polynomial
//! approximations are a test pass only (not in the registered passes), so the emitter writes the
//! arithmetic itself. Each is checked against f64 references over its whole range by the
//! op-corpus test (`tests/pipeline.rs`).
//!
//! Each function returns the lines that define `res` from `x`, with temporaries `{tmp}N`.

/// `exp(x)`: `x = n·ln 2 + r` with `|r| ≤ ln 2 / 2`, `exp(r)` from a degree-7 polynomial
/// (the Cephes coefficients, within 2 ulp), and `2^n` as two exact powers of two built from
/// exponent bits, so that results overflow to `inf` and underflow through subnormals to 0 as
/// libm's do. NaN stays NaN.
pub(super) fn exp(x: &str, res: &str, tmp: &str) -> Vec<String> {
    exp_of(x, res, tmp, None)
}

/// [`exp`] of every lane of a `vector<lanes x f32>` (of one `f32` when `lanes` is `None`).
pub(super) fn exp_of(x: &str, res: &str, tmp: &str, lanes: Option<i64>) -> Vec<String> {
    let t = |i: usize| format!("{tmp}{i}");
    let (f, i) = (of("f32", lanes), of("i32", lanes));
    let mut lines = Vec::new();
    let mut line = |s: String| lines.push(s);
    let mut constant = |name: String, value: &str, ty: &str| {
        line(format!("{name} = arith.constant {} : {ty}", literal(value, lanes)));
        name
    };
    // Past ±104 the result is 0 or inf whatever the polynomial says; the clamp keeps `n` an
    // integer the exponent bits can hold (two halves of at most 76 each).
    let lo = constant(t(0), "-104.0", &f);
    let hi = constant(t(1), "89.0", &f);
    let log2e = constant(t(4), "1.44269504088896341", &f);
    let half = constant(t(5), "0.5", &f);
    // r = x - n·ln 2, with ln 2 split in two so that n·C1 is exact.
    let c1 = constant(t(8), "-0.693359375", &f);
    let c2 = constant(t(9), "2.12194440e-4", &f);
    let coefficients = [
        "1.9875691500e-4",
        "1.3981999507e-3",
        "8.3334519073e-3",
        "4.1665795894e-2",
        "1.6666665459e-1",
        "5.0000001201e-1",
    ];
    let mut p = constant(t(12), coefficients[0], &f);
    let mut next = 13;
    let mut ks = Vec::new();
    for c in &coefficients[1..] {
        ks.push(constant(t(next), c, &f));
        next += 2;
    }
    let one = constant(t(next + 2), "1.0", &f);
    let shift = constant(t(next + 5), "1", &i);
    let bias = constant(t(next + 8), "127", &i);
    let c23 = constant(t(next + 9), "23", &i);
    line(format!("{} = arith.maximumf {x}, {lo} : {f}", t(2)));
    line(format!("{} = arith.minimumf {}, {hi} : {f}", t(3), t(2)));
    line(format!("{} = math.fma {}, {log2e}, {half} : {f}", t(6), t(3)));
    line(format!("{} = math.floor {} : {f}", t(7), t(6)));
    line(format!("{} = math.fma {}, {c1}, {} : {f}", t(10), t(7), t(3)));
    line(format!("{} = math.fma {}, {c2}, {} : {f}", t(11), t(7), t(10)));
    let r = t(11);
    for (j, k) in ks.iter().enumerate() {
        let q = t(14 + 2 * j);
        line(format!("{q} = math.fma {p}, {r}, {k} : {f}"));
        p = q;
    }
    // exp(r) = 1 + r + r²·p
    let (r2, y0, y) = (t(next), t(next + 1), t(next + 3));
    line(format!("{r2} = arith.mulf {r}, {r} : {f}"));
    line(format!("{y0} = math.fma {r2}, {p}, {r} : {f}"));
    line(format!("{y} = arith.addf {y0}, {one} : {f}"));
    // 2^n = 2^a · 2^b with a = n >> 1, b = n - a; 2^a is the float with exponent bits a + 127.
    let (n, a, b) = (t(next + 4), t(next + 6), t(next + 7));
    line(format!("{n} = arith.fptosi {} : {f} to {i}", t(7)));
    line(format!("{a} = arith.shrsi {n}, {shift} : {i}"));
    line(format!("{b} = arith.subi {n}, {a} : {i}"));
    next += 10;
    let mut scaled = y;
    for part in [a, b] {
        let (biased, bits, pow, product) = (t(next), t(next + 1), t(next + 2), t(next + 3));
        line(format!("{biased} = arith.addi {part}, {bias} : {i}"));
        line(format!("{bits} = arith.shli {biased}, {c23} : {i}"));
        line(format!("{pow} = arith.bitcast {bits} : {i} to {f}"));
        line(format!("{product} = arith.mulf {scaled}, {pow} : {f}"));
        scaled = product;
        next += 4;
    }
    // NaN in, NaN out (the integer path above says nothing useful about it).
    let nan = t(next);
    line(format!("{nan} = arith.cmpf uno, {x}, {x} : {f}"));
    line(format!(
        "{res} = arith.select {nan}, {x}, {scaled} : {}{f}",
        if lanes.is_some() {
            format!("{}, ", of("i1", lanes))
        } else {
            String::new()
        }
    ));
    lines
}

/// An element type, or a vector of `lanes` of it.
fn of(elem: &str, lanes: Option<i64>) -> String {
    match lanes {
        Some(n) => format!("vector<{n}x{elem}>"),
        None => elem.to_string(),
    }
}

/// A constant's literal: the value, or a vector splat of it.
fn literal(value: &str, lanes: Option<i64>) -> String {
    match lanes {
        Some(_) => format!("dense<{value}>"),
        None => value.to_string(),
    }
}

/// Appends the lines of `P(z)` for the polynomial of `coefficients` (highest degree first) by
/// Horner's rule, one FMA per coefficient, with temporaries `{tmp}{first}` on; returns `P`'s
/// name and the first temporary number left free.
fn horner<C: AsRef<str>>(lines: &mut Vec<String>, coefficients: &[C], z: &str, tmp: &str, first: usize) -> (String, usize) {
    let t = |i: usize| format!("{tmp}{i}");
    let mut p = t(first);
    lines.push(format!("{p} = arith.constant {} : f32", coefficients[0].as_ref()));
    let mut next = first + 1;
    for c in &coefficients[1..] {
        let (k, q) = (t(next), t(next + 1));
        lines.push(format!("{k} = arith.constant {} : f32", c.as_ref()));
        lines.push(format!("{q} = math.fma {p}, {z}, {k} : f32"));
        p = q;
        next += 2;
    }
    (p, next)
}

/// `erf(x)`, odd, from `|x|`: below 0.5 its Maclaurin series to `x^13` (relative error below
/// 1e-8 there, so small arguments keep their precision); above, Abramowitz and Stegun 7.1.26,
/// `1 - t·P(t)·exp(-x²)` with `t = 1 / (1 + p|x|)` (absolute error below 1.5e-7).
pub(super) fn erf(x: &str, res: &str, tmp: &str) -> Vec<String> {
    let t = |i: usize| format!("{tmp}{i}");
    let mut lines = Vec::new();
    let ax = t(0);
    lines.push(format!("{ax} = math.absf {x} : f32"));
    // Series: (2/√π) · Σ (-1)^k x^(2k+1) / (k! (2k+1)), Horner in x².
    let x2 = t(1);
    lines.push(format!("{x2} = arith.mulf {ax}, {ax} : f32"));
    let series: Vec<f64> = (0..7)
        .map(|k: i32| {
            let factorial: f64 = (1..=k).map(f64::from).product();
            let sign = if k % 2 == 0 { 1.0 } else { -1.0 };
            sign * std::f64::consts::FRAC_2_SQRT_PI / (factorial * f64::from(2 * k + 1))
        })
        .collect();
    let series: Vec<String> = series.iter().rev().map(|&c| super::f32_literal(c)).collect();
    let (p, mut next) = horner(&mut lines, &series, &x2, tmp, 2);
    let small = t(next);
    lines.push(format!("{small} = arith.mulf {p}, {ax} : f32"));
    next += 1;
    // Abramowitz and Stegun 7.1.26.
    let (pc, one, den, tt) = (t(next), t(next + 1), t(next + 2), t(next + 3));
    lines.push(format!("{pc} = arith.constant 0.3275911 : f32"));
    lines.push(format!("{one} = arith.constant 1.0 : f32"));
    lines.push(format!("{den} = math.fma {pc}, {ax}, {one} : f32"));
    lines.push(format!("{tt} = arith.divf {one}, {den} : f32"));
    next += 4;
    let a = ["1.061405429", "-1.453152027", "1.421413741", "-0.284496736", "0.254829592"];
    let q;
    (q, next) = horner(&mut lines, &a, &tt, tmp, next);
    let (tq, negx2, e) = (t(next), t(next + 1), t(next + 2));
    lines.push(format!("{tq} = arith.mulf {q}, {tt} : f32"));
    lines.push(format!("{negx2} = arith.negf {x2} : f32"));
    next += 3;
    lines.extend(exp(&negx2, &e, &format!("{tmp}e")));
    let (tail, large, half, is_small, magnitude) = (t(next), t(next + 1), t(next + 2), t(next + 3), t(next + 4));
    lines.push(format!("{tail} = arith.mulf {tq}, {e} : f32"));
    lines.push(format!("{large} = arith.subf {one}, {tail} : f32"));
    lines.push(format!("{half} = arith.constant 0.5 : f32"));
    lines.push(format!("{is_small} = arith.cmpf olt, {ax}, {half} : f32"));
    lines.push(format!("{magnitude} = arith.select {is_small}, {small}, {large} : f32"));
    lines.push(format!("{res} = math.copysign {magnitude}, {x} : f32"));
    lines
}

/// `tanh(x)`, odd, from `|x|`: below 0.625 the Cephes polynomial `x + x³·P(x²)` (within 2 ulp,
/// so small arguments keep their precision); above, `1 - 2 / (exp(2|x|) + 1)` with [`exp`],
/// which is 1 once `exp` is past f32's range. NaN stays NaN (through `exp`).
pub(super) fn tanh(x: &str, res: &str, tmp: &str) -> Vec<String> {
    let t = |i: usize| format!("{tmp}{i}");
    let mut lines = Vec::new();
    let (ax, z) = (t(0), t(1));
    lines.push(format!("{ax} = math.absf {x} : f32"));
    lines.push(format!("{z} = arith.mulf {ax}, {ax} : f32"));
    let coefficients = [
        "-5.70498872745e-3",
        "2.06390887954e-2",
        "-5.37397155531e-2",
        "1.33314422036e-1",
        "-3.33332819422e-1",
    ];
    let (p, mut next) = horner(&mut lines, &coefficients, &z, tmp, 2);
    let (xz, small) = (t(next), t(next + 1));
    lines.push(format!("{xz} = arith.mulf {ax}, {z} : f32"));
    lines.push(format!("{small} = math.fma {xz}, {p}, {ax} : f32"));
    next += 2;
    let (two, twice, e) = (t(next), t(next + 1), t(next + 2));
    lines.push(format!("{two} = arith.constant 2.0 : f32"));
    lines.push(format!("{twice} = arith.mulf {ax}, {two} : f32"));
    next += 3;
    lines.extend(exp(&twice, &e, &format!("{tmp}e")));
    let (one, e1, q, large) = (t(next), t(next + 1), t(next + 2), t(next + 3));
    lines.push(format!("{one} = arith.constant 1.0 : f32"));
    lines.push(format!("{e1} = arith.addf {e}, {one} : f32"));
    lines.push(format!("{q} = arith.divf {two}, {e1} : f32"));
    lines.push(format!("{large} = arith.subf {one}, {q} : f32"));
    next += 4;
    let (bound, is_small, magnitude) = (t(next), t(next + 1), t(next + 2));
    lines.push(format!("{bound} = arith.constant 0.625 : f32"));
    lines.push(format!("{is_small} = arith.cmpf olt, {ax}, {bound} : f32"));
    lines.push(format!("{magnitude} = arith.select {is_small}, {small}, {large} : f32"));
    lines.push(format!("{res} = math.copysign {magnitude}, {x} : f32"));
    lines
}
