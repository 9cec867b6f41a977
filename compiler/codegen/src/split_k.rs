//! Split-K for the GPU's sums (`--target cuda`, after fusion): a nest whose threads each sum
//! `K` products (a matmul's output element, fused with its epilogue) has as many threads as
//! outputs. With one token per step (decoding), a matmul of 3072 columns is 3072 threads, 24
//! blocks on a GPU of 132 multiprocessors, each thread summing 768 or 3072 products one after
//! another. Here such a nest becomes two:
//!
//! 1. partial sums: `S` threads per output, thread `s` summing its chunk of `ceil(K / S)`
//!    products into `partial[..., s·Y + i, n]` (the chunk index merged with the axis next to
//!    the innermost, so the nest keeps at most three axes, which the GPU mapping gives all to
//!    blocks and threads);
//! 2. the original nest, whose sum is now over the `S` partial sums, then its epilogue.
//!
//! `S` is chosen at run time, from the nest's size: enough threads to fill the GPU
//! ([`TARGET_THREADS`]) where the outputs alone do not, and chunks of at least [`MIN_CHUNK`]
//! products. A large nest gets `S = 1`: one extra write and read of its outputs.
//!
//! Only plain sums qualify (`arith.addf` into a loop-carried value that starts at 0.0, over a
//! constant `K` of at least [`MIN_K`]); the order of summation changes, as it does between the
//! CPU's kernels and the GPU. This works on the printed module: MLIR prints one op per line,
//! and an op's regions are the lines indented deeper than it, up to its closing brace at its own
//! indentation.

use std::collections::HashMap;

/// Threads that keep a GPU of compute capability 9.0 busy: 132 multiprocessors (H100 SXM and
/// H200 have 132) of 2048 resident threads each.
pub const TARGET_THREADS: i64 = 132 * 2048;

/// The fewest products a chunk sums.
pub const MIN_CHUNK: i64 = 64;

/// The shortest sum that is split.
pub const MIN_K: i64 = 256;

/// Splits every qualifying sum in the nests of each function's body (not those inside loops,
/// such as a scan's steps).
pub fn split_sums(text: &str) -> String {
    let lines: Vec<&str> = text.lines().collect();
    let mut out: Vec<String> = Vec::with_capacity(lines.len());
    let mut counter = 0usize;
    let mut k = 0;
    while k < lines.len() {
        let line = lines[k];
        if indent_of(line) == 2 && line.trim_start().starts_with("func.func ") && line.ends_with('{') {
            let end = (k + 1..lines.len()).find(|&j| lines[j] == "  }").unwrap_or(lines.len());
            out.push(line.to_string());
            let body = &lines[k + 1..end];
            let constants = constants_of(body);
            for range in split_ops(body) {
                let op = &body[range];
                match split(op, &constants, counter) {
                    Some(rewritten) => {
                        counter += 1;
                        out.extend(rewritten);
                    }
                    None => out.extend(op.iter().map(|l| l.to_string())),
                }
            }
            k = end;
            continue;
        }
        out.push(line.to_string());
        k += 1;
    }
    join(out)
}

/// A function's constants: name → (value as printed, type).
fn constants_of<'a>(body: &[&'a str]) -> HashMap<&'a str, (&'a str, &'a str)> {
    body.iter()
        .filter_map(|line| {
            let (name, rest) = line.trim_start().split_once(" = arith.constant ")?;
            let (value, ty) = rest.split_once(" : ")?;
            Some((name, (value, ty)))
        })
        .collect()
}

fn index_constant(constants: &HashMap<&str, (&str, &str)>, name: &str) -> Option<i64> {
    let (value, ty) = constants.get(name)?;
    (*ty == "index").then(|| value.parse().ok()).flatten()
}

/// `(a, b, c)` → `["a", "b", "c"]`.
fn list(text: &str) -> Vec<&str> {
    text.split(", ").collect()
}

/// The two nests that replace `op`, if it is a qualifying `scf.parallel` nest.
fn split(op: &[&str], constants: &HashMap<&str, (&str, &str)>, n: usize) -> Option<Vec<String>> {
    let header = op.first()?;
    let indent = &header[..indent_of(header)];
    let head = header.trim_start().strip_prefix("scf.parallel (")?.strip_suffix(" {")?;
    let (ivs, rest) = head.split_once(") = (")?;
    let (lower, rest) = rest.split_once(") to (")?;
    let (upper, step) = rest.split_once(") step (")?;
    let step = step.strip_suffix(')')?;
    let (ivs, lower, upper, step) = (list(ivs), list(lower), list(upper), list(step));
    if !(2..=3).contains(&ivs.len())
        || lower.iter().any(|l| index_constant(constants, l) != Some(0))
        || step.iter().any(|s| index_constant(constants, s) != Some(1))
    {
        return None;
    }
    let body = &op[1..op.len() - 1];
    let closing = op.last()?;
    let body_ops = split_ops(body);
    let first = body_ops.first()?.clone();
    let sum = &body[first.clone()];
    let (sum_name, for_head) = sum[0].trim_start().split_once(" = scf.for ")?;
    let for_head = for_head.strip_suffix(" -> (f32) {")?;
    let (loop_part, iter) = for_head.split_once(" iter_args(")?;
    let (carried, init) = iter.strip_suffix(')')?.split_once(" = ")?;
    let (k, range) = loop_part.split_once(" = ")?;
    let (k_lower, range) = range.split_once(" to ")?;
    let (k_upper, k_step) = range.split_once(" step ")?;
    let k_total = index_constant(constants, k_upper)?;
    if index_constant(constants, k_lower) != Some(0)
        || index_constant(constants, k_step) != Some(1)
        || k_total < MIN_K
        || !constants
            .get(init)
            .is_some_and(|(v, t)| *t == "f32" && v.parse::<f32>().is_ok_and(|v| v == 0.0 && v.is_sign_positive()))
    {
        return None;
    }
    // The loop's body sums: its yield is `arith.addf` of the carried value and one product, and
    // the carried value is used nowhere else.
    let for_body = &sum[1..sum.len() - 1];
    let yield_line = for_body.last()?.trim_start();
    let yielded = yield_line.strip_prefix("scf.yield ")?.strip_suffix(" : f32")?;
    let add = for_body
        .iter()
        .find(|l| l.trim_start().starts_with(&format!("{yielded} = arith.addf ")))?;
    let operands = add.trim_start().split_once(" = arith.addf ")?.1.strip_suffix(" : f32")?;
    let (x, y) = operands.split_once(", ")?;
    if !(x == carried || y == carried) || for_body.iter().filter(|l| ssa_names(l).contains(&carried)).count() != 1 {
        return None;
    }
    // Names.
    let (s, chunk, rows, partial, j, lo, hi) = (
        format!("%lmc_split{n}"),
        format!("%lmc_chunk{n}"),
        format!("%lmc_split_rows{n}"),
        format!("%lmc_partial{n}"),
        format!("%lmc_part{n}"),
        format!("%lmc_lo{n}"),
        format!("%lmc_hi{n}"),
    );
    let c = |name: &str| format!("%lmc_c{name}_{n}");
    let inner = format!("{indent}  ");
    let deeper = format!("{indent}    ");
    // The axis the chunks share: the one next to the innermost, which the GPU's mapping spreads
    // over a block's rows (the innermost goes across its threads). A nest of one row (a token
    // being decoded) then still fills its blocks, with chunks, and a nest of many rows that
    // gets one chunk keeps its shape.
    let merged = ivs.len() - 2;
    let merged_size = upper[merged];
    let mut host = vec![
        format!("{indent}{} = arith.constant 0 : index", c("0")),
        format!("{indent}{} = arith.constant 1 : index", c("1")),
        format!("{indent}{} = arith.constant {k_total} : index", c("k")),
        format!("{indent}{} = arith.constant {TARGET_THREADS} : index", c("target")),
        format!("{indent}{} = arith.constant {} : index", c("most"), (k_total / MIN_CHUNK).max(1)),
    ];
    // Threads the nest has: the product of its sizes.
    let mut size = upper[0].to_string();
    for (a, u) in upper.iter().enumerate().skip(1) {
        let next = format!("%lmc_size{n}_{a}");
        host.push(format!("{indent}{next} = arith.muli {size}, {u} : index"));
        size = next;
    }
    host.extend([
        format!("{indent}%lmc_want{n} = arith.ceildivui {}, {size} : index", c("target")),
        format!("{indent}%lmc_atleast{n} = arith.maxui %lmc_want{n}, {} : index", c("1")),
        format!("{indent}{s} = arith.minui %lmc_atleast{n}, {} : index", c("most")),
        format!("{indent}{chunk} = arith.ceildivui {}, {s} : index", c("k")),
        format!("{indent}{rows} = arith.muli {s}, {merged_size} : index"),
    ]);
    // The partial sums' buffer: the nest's shape, its shared axis S times longer.
    let sizes: Vec<&str> = upper
        .iter()
        .enumerate()
        .map(|(a, u)| if a == merged { rows.as_str() } else { u })
        .collect();
    let dynamic: Vec<&str> = sizes.iter().copied().filter(|u| index_constant(constants, u).is_none()).collect();
    let shape: Vec<String> = sizes
        .iter()
        .map(|u| index_constant(constants, u).map_or("?".to_string(), |v| v.to_string()))
        .collect();
    let partial_ty = format!("memref<{}xf32>", shape.join("x"));
    host.push(format!(
        "{indent}{partial} = memref.alloc({}) {{alignment = 64 : i64}} : {partial_ty}",
        dynamic.join(", ")
    ));
    // Nest 1: each thread sums its chunk of one output's products.
    let with = |at: &str| -> String {
        ivs.iter()
            .enumerate()
            .map(|(a, iv)| if a == merged { at } else { iv })
            .collect::<Vec<_>>()
            .join(", ")
    };
    let zeros = vec![c("0"); ivs.len()].join(", ");
    let ones = vec![c("1"); ivs.len()].join(", ");
    let mut nest1 = vec![format!(
        "{indent}scf.parallel ({}) = ({zeros}) to ({}) step ({ones}) {{",
        with(&j),
        sizes.join(", ")
    )];
    nest1.extend([
        format!("{inner}%lmc_which{n} = arith.divui {j}, {merged_size} : index"),
        format!("{inner}{} = arith.remui {j}, {merged_size} : index", ivs[merged]),
        format!("{inner}{lo} = arith.muli %lmc_which{n}, {chunk} : index"),
        format!("{inner}%lmc_end{n} = arith.addi {lo}, {chunk} : index"),
        format!("{inner}{hi} = arith.minui %lmc_end{n}, {} : index", c("k")),
        format!(
            "{inner}%lmc_psum{n} = scf.for {k} = {lo} to {hi} step {} iter_args({carried} = {init}) -> (f32) {{",
            c("1")
        ),
    ]);
    nest1.extend(for_body.iter().map(|l| l.to_string()));
    nest1.push(sum[sum.len() - 1].to_string());
    nest1.push(format!("{inner}memref.store %lmc_psum{n}, {partial}[{}] : {partial_ty}", with(&j)));
    nest1.push(format!("{inner}scf.reduce"));
    nest1.push(closing.to_string());
    // Nest 2: the original, summing the partial sums.
    let mut nest2 = vec![header.to_string()];
    nest2.extend([
        format!(
            "{inner}{sum_name} = scf.for %lmc_s{n} = {} to {s} step {} iter_args(%lmc_acc{n} = {init}) -> (f32) {{",
            c("0"),
            c("1")
        ),
        format!("{deeper}%lmc_base{n} = arith.muli %lmc_s{n}, {merged_size} : index"),
        format!("{deeper}%lmc_row{n} = arith.addi %lmc_base{n}, {} : index", ivs[merged]),
        format!(
            "{deeper}%lmc_p{n} = memref.load {partial}[{}] : {partial_ty}",
            with(&format!("%lmc_row{n}"))
        ),
        format!("{deeper}%lmc_total{n} = arith.addf %lmc_acc{n}, %lmc_p{n} : f32"),
        format!("{deeper}scf.yield %lmc_total{n} : f32"),
        format!("{inner}}}"),
    ]);
    nest2.extend(body[first.end..].iter().map(|l| l.to_string()));
    nest2.push(closing.to_string());
    let mut out = host;
    out.extend(nest1);
    out.extend(nest2);
    out.push(format!("{indent}memref.dealloc {partial} : {partial_ty}"));
    Some(out)
}

/// Lines back into a module's text.
fn join(lines: Vec<String>) -> String {
    let mut text = lines.join("\n");
    text.push('\n');
    text
}

fn indent_of(line: &str) -> usize {
    line.len() - line.trim_start().len()
}

/// Splits a block's lines (all at one indentation for its ops) into ops: a line at that
/// indentation and the lines after it that are deeper, or at the same indentation and start with
/// `}` (a region's end, `} else {`).
fn split_ops<S: AsRef<str>>(lines: &[S]) -> Vec<std::ops::Range<usize>> {
    let mut ops = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        let depth = indent_of(lines[i].as_ref());
        let mut j = i + 1;
        while j < lines.len() {
            let line = lines[j].as_ref();
            let d = indent_of(line);
            if d > depth || (d == depth && line.trim_start().starts_with('}')) || line.trim().is_empty() {
                j += 1;
            } else {
                break;
            }
        }
        ops.push(i..j);
        i = j;
    }
    ops
}

fn is_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '_' | '$' | '.' | '-')
}

/// Every `%name` in `text`, in order.
fn ssa_names(text: &str) -> Vec<&str> {
    let mut names = Vec::new();
    let mut rest = text;
    while let Some(at) = rest.find('%') {
        let tail = &rest[at..];
        let end = tail[1..].find(|c: char| !is_name_char(c)).map_or(tail.len(), |e| e + 1);
        if end > 1 {
            names.push(&tail[..end]);
        }
        rest = &tail[end..];
    }
    names
}

#[cfg(test)]
mod tests {
    use super::*;

    const MATMUL: &str = "\
module {
  func.func @forward(%a: memref<?x?x512xf32>, %w: memref<512x64xf32>, %out: memref<?x?x64xf32>) {
    %cst = arith.constant 0.000000e+00 : f32
    %c0 = arith.constant 0 : index
    %c1 = arith.constant 1 : index
    %c64 = arith.constant 64 : index
    %c512 = arith.constant 512 : index
    %dim = memref.dim %a, %c0 : memref<?x?x512xf32>
    %dim_0 = memref.dim %a, %c1 : memref<?x?x512xf32>
    scf.parallel (%i, %t, %n) = (%c0, %c0, %c0) to (%dim, %dim_0, %c64) step (%c1, %c1, %c1) {
      %0 = scf.for %k = %c0 to %c512 step %c1 iter_args(%acc = %cst) -> (f32) {
        %2 = memref.load %a[%i, %t, %k] : memref<?x?x512xf32>
        %3 = memref.load %w[%k, %n] : memref<512x64xf32>
        %4 = arith.mulf %2, %3 : f32
        %5 = arith.addf %acc, %4 : f32
        scf.yield %5 : f32
      }
      %1 = math.tanh %0 : f32
      memref.store %1, %out[%i, %t, %n] : memref<?x?x64xf32>
      scf.reduce 
    }
    return
  }
}
";

    #[test]
    fn a_long_sum_is_split_in_two_nests() {
        let out = split_sums(MATMUL);
        // The chunk count, chosen at run time within [1, K / 64].
        assert!(
            out.contains("%lmc_split0 = arith.minui %lmc_atleast0, %lmc_cmost_0 : index"),
            "{out}"
        );
        assert!(out.contains("%lmc_cmost_0 = arith.constant 8 : index"), "{out}");
        // Nest 1: chunks merged with the axis next to the innermost; each sums its chunk.
        assert!(
            out.contains("scf.parallel (%i, %lmc_part0, %n) = (%lmc_c0_0, %lmc_c0_0, %lmc_c0_0) to (%dim, %lmc_split_rows0, %c64)"),
            "{out}"
        );
        assert!(out.contains("%lmc_split_rows0 = arith.muli %lmc_split0, %dim_0 : index"), "{out}");
        assert!(out.contains("%t = arith.remui %lmc_part0, %dim_0 : index"), "{out}");
        assert!(
            out.contains("%lmc_psum0 = scf.for %k = %lmc_lo0 to %lmc_hi0 step %lmc_c1_0 iter_args(%acc = %cst) -> (f32) {"),
            "{out}"
        );
        assert!(
            out.contains("memref.store %lmc_psum0, %lmc_partial0[%i, %lmc_part0, %n] : memref<?x?x64xf32>"),
            "{out}"
        );
        // Nest 2: the original, its sum over the partial sums, then its epilogue.
        assert!(
            out.contains("%0 = scf.for %lmc_s0 = %lmc_c0_0 to %lmc_split0 step %lmc_c1_0 iter_args(%lmc_acc0 = %cst) -> (f32) {"),
            "{out}"
        );
        assert!(
            out.contains("%lmc_p0 = memref.load %lmc_partial0[%i, %lmc_row0, %n] : memref<?x?x64xf32>"),
            "{out}"
        );
        assert!(out.contains("      %1 = math.tanh %0 : f32"), "{out}");
        assert!(out.contains("memref.dealloc %lmc_partial0 : memref<?x?x64xf32>"), "{out}");
    }

    #[test]
    fn short_sums_and_other_reductions_are_left_alone() {
        let short = MATMUL.replace("%k = %c0 to %c512", "%k = %c0 to %c64");
        assert_eq!(split_sums(&short), short);
        let max = MATMUL.replace("%5 = arith.addf %acc, %4 : f32", "%5 = arith.maximumf %acc, %4 : f32");
        assert_eq!(split_sums(&max), max);
        let not_from_zero = MATMUL.replace(
            "%cst = arith.constant 0.000000e+00 : f32",
            "%cst = arith.constant 1.000000e+00 : f32",
        );
        assert_eq!(split_sums(&not_from_zero), not_from_zero);
        let reused = MATMUL.replace("%4 = arith.mulf %2, %3 : f32", "%4 = arith.mulf %acc, %3 : f32");
        assert_eq!(split_sums(&reused), reused);
    }

    #[test]
    fn names_are_read_whole() {
        assert_eq!(ssa_names("memref.load %alloc_1[%i, %c0]"), ["%alloc_1", "%i", "%c0"]);
    }
}
