//! The GPU lowering's fusion of loop nests (`--target cuda`, between "linalg to parallel loops"
//! and "parallel loops to kernels"). Every op is one `scf.parallel` nest, so a matmul, its bias
//! and its activation's ten elementwise steps would be a dozen kernels, each writing its result
//! to device memory for the next to read back. MLIR's `scf-parallel-loop-fusion` merges adjacent
//! nests over the same iteration space when each reads what the one before wrote only at its own
//! index, but it stops at anything with a memory effect between them (an allocation, a
//! deallocation) and at a buffer written twice (a reduction's initial value, then its sum).
//! The rewrites here remove those obstacles, and the memory traffic fusion leaves:
//!
//! - [`gather_fusable_loops`]: in a run of nests over one iteration space, the buffers the run
//!   allocates are allocated before it and the ones it frees are freed after it;
//! - [`accumulate_in_registers`]: a reduction's sequential loop that reads and writes one element
//!   of a fresh buffer at every step (`linalg`'s lowering) carries the running value instead
//!   (`iter_args`) and stores it once, after the loop. Besides making the nest fusable, this
//!   halves the loop's memory accesses;
//! - [`temporaries_in_registers`], after fusion: a buffer that is written and read at one
//!   element only inside one nest's body (an intermediate of a fused chain) is not allocated;
//!   its reads take the value written.
//!
//! All three work on the printed module: MLIR prints one op per line, and an
//! op's regions are the lines indented deeper than it, up to its closing brace at its own
//! indentation. A block they do not understand (one with block labels) is left as it is.

/// Moves allocations and deallocations out of runs of `scf.parallel` nests over the same
/// iteration space, in every block of the module, so that nothing with a memory effect separates
/// the nests.
pub fn gather_fusable_loops(text: &str) -> String {
    let lines: Vec<&str> = text.lines().collect();
    let mut out = Vec::with_capacity(lines.len());
    rewrite_block(&lines, &mut out, &gather_block);
    join(out)
}

/// Rewrites every reduction loop that accumulates into one element of a fresh buffer so that the
/// running value is a loop-carried value, stored once after the loop.
pub fn accumulate_in_registers(text: &str) -> String {
    let lines: Vec<&str> = text.lines().collect();
    let fresh = Fresh::of(text);
    let counter = std::cell::Cell::new(0usize);
    let mut out = Vec::with_capacity(lines.len());
    rewrite_block(&lines, &mut out, &|ops: Vec<Vec<String>>| accumulate_block(ops, &fresh, &counter));
    join(out)
}

/// Removes the buffers that one block writes once and then only reads back at the same element,
/// and that nothing else mentions but their allocation and deallocation: the reads become the
/// value written.
pub fn temporaries_in_registers(text: &str) -> String {
    let mut lines: Vec<Option<String>> = text.lines().map(|l| Some(l.to_string())).collect();
    let fresh = Fresh::of(text);
    let mut mentions: std::collections::HashMap<&str, Vec<usize>> = std::collections::HashMap::new();
    for (k, line) in text.lines().enumerate() {
        for name in ssa_names(line) {
            if fresh.names.contains(name) {
                mentions.entry(name).or_default().push(k);
            }
        }
    }
    let all: Vec<&str> = text.lines().collect();
    let mut temporaries: Vec<Temporary> = mentions.iter().filter_map(|(buffer, at)| temporary(&all, buffer, at)).collect();
    // Last first: a later temporary may store what an earlier one's read gave, so its reads are
    // renamed to that read first, and the earlier temporary's renaming then takes them on to
    // the value the earlier store wrote.
    temporaries.sort_by_key(|t| std::cmp::Reverse(t.store));
    for t in temporaries {
        for k in &t.removed {
            lines[*k] = None;
        }
        for line in lines[t.store + 1..t.block_end].iter_mut().flatten() {
            for load in &t.loads {
                if line.contains(load.as_str()) {
                    *line = rename(line, load, &t.value);
                }
            }
        }
    }
    join(lines.into_iter().flatten().collect())
}

/// A buffer [`temporaries_in_registers`] removes.
struct Temporary {
    /// The line of its one store.
    store: usize,
    /// The value stored.
    value: String,
    /// The names its loads define.
    loads: Vec<String>,
    /// Its lines: allocation, store, loads, deallocations.
    removed: Vec<usize>,
    /// The line after the store's block.
    block_end: usize,
}

/// `buffer` as a [`Temporary`], given the lines that mention it, if it is one.
fn temporary(lines: &[&str], buffer: &str, at: &[usize]) -> Option<Temporary> {
    let mut store = None;
    let mut loads = Vec::new();
    for &k in at {
        let line = lines[k].trim_start();
        if let Some(rest) = line.strip_prefix("memref.store ") {
            let (value, target) = rest.split_once(", ")?;
            let (b, indices, ty) = access(target)?;
            if b != buffer || store.is_some() {
                return None;
            }
            store = Some((k, value, indices, ty));
        } else if let Some((name, rest)) = line.split_once(" = memref.load ") {
            loads.push((k, name, access(rest)?));
        } else if !(line.starts_with("memref.dealloc ") || line.split_once(" = ").is_some_and(|(_, rhs)| rhs.starts_with("memref.alloc(")))
        {
            return None;
        }
    }
    let (store, value, indices, ty) = store?;
    let depth = indent_of(lines[store]);
    let block_end = (store + 1..lines.len())
        .find(|&k| {
            let d = indent_of(lines[k]);
            d < depth || (d == depth && lines[k].trim_start().starts_with('}'))
        })
        .unwrap_or(lines.len());
    // Every load reads the stored element, after the store, at the top level of its block.
    for (k, _, (b, i, t)) in &loads {
        let top_level = (store..*k).all(|j| indent_of(lines[j]) >= depth) && indent_of(lines[*k]) == depth;
        if *k <= store || *k >= block_end || !top_level || *b != buffer || *i != indices || *t != ty {
            return None;
        }
    }
    Some(Temporary {
        store,
        value: value.to_string(),
        loads: loads.iter().map(|(_, name, _)| name.to_string()).collect(),
        removed: at.to_vec(),
        block_end,
    })
}

/// Lines back into a module's text.
pub(crate) fn join(lines: Vec<String>) -> String {
    let mut text = lines.join("\n");
    text.push('\n');
    text
}

pub(crate) fn indent_of(line: &str) -> usize {
    line.len() - line.trim_start().len()
}

/// Splits a block's lines (all at one indentation for its ops) into ops: a line at that
/// indentation and the lines after it that are deeper, or at the same indentation and start with
/// `}` (a region's end, `} else {`).
pub(crate) fn split_ops<S: AsRef<str>>(lines: &[S]) -> Vec<std::ops::Range<usize>> {
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

/// A rewrite of one block's list of ops, each op its lines.
type BlockRewrite<'a> = dyn Fn(Vec<Vec<String>>) -> Vec<Vec<String>> + 'a;

/// Rewrites a block: first each op's regions (recursively), then the block's own list of ops
/// with `f`. `lines` is a whole block (or the whole module, whose single op is `module`).
fn rewrite_block(lines: &[&str], out: &mut Vec<String>, f: &BlockRewrite) {
    let mut ops = Vec::new();
    for range in split_ops(lines) {
        ops.push(rewrite_regions(&lines[range], f));
    }
    // A block with labels (`^bb1:`) has more than one block; leave its order alone.
    let labelled = ops.iter().any(|op| op.first().is_some_and(|l| l.trim_start().starts_with('^')));
    let ops = if labelled { ops } else { f(ops) };
    out.extend(ops.into_iter().flatten());
}

/// One op's lines with each of its regions' blocks rewritten.
fn rewrite_regions(op: &[&str], f: &BlockRewrite) -> Vec<String> {
    let mut out = vec![op[0].to_string()];
    let depth = indent_of(op[0]);
    let mut i = 1;
    while i < op.len() {
        // A region's block: the deeper lines up to the next line at the op's own indentation.
        let start = i;
        while i < op.len() && (indent_of(op[i]) > depth || op[i].trim().is_empty()) {
            i += 1;
        }
        if start < i {
            rewrite_block(&op[start..i], &mut out, f);
        }
        if i < op.len() {
            out.push(op[i].to_string());
            i += 1;
        }
    }
    out
}

/// What kind of op a block's op is, for [`gather_block`].
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// An `scf.parallel` nest; its iteration space is the header's text after `=`.
    Loop,
    Alloc,
    Dealloc,
    /// An op without memory effects (a view, a size, arithmetic), which fusion looks past.
    Pure,
    Other,
}

const PURE_OPS: [&str; 10] = [
    "memref.dim ",
    "memref.subview ",
    "memref.expand_shape ",
    "memref.collapse_shape ",
    "memref.cast ",
    "memref.reinterpret_cast ",
    "arith.",
    "affine.apply ",
    "index.",
    "math.",
];

fn kind(op: &[String]) -> Kind {
    let line = op[0].trim_start();
    let rhs = line.split_once(" = ").map_or(line, |(_, rhs)| rhs);
    if line.starts_with("scf.parallel ") {
        Kind::Loop
    } else if op.len() > 1 {
        Kind::Other
    } else if rhs.starts_with("memref.alloc(") {
        Kind::Alloc
    } else if line.starts_with("memref.dealloc ") {
        Kind::Dealloc
    } else if line.contains(" = ") && PURE_OPS.iter().any(|p| rhs.starts_with(p)) {
        Kind::Pure
    } else {
        Kind::Other
    }
}

/// A loop's iteration space: `(lower) to (upper) step (steps)`, as printed.
fn iteration_space(header: &str) -> &str {
    let rest = header.split_once(") = ").map_or("", |(_, rest)| rest);
    rest.rsplit_once(" {").map_or(rest, |(space, _)| space)
}

/// The SSA names an op line defines (`%a, %b = ...` or `%a:2 = ...`).
fn defined_names(line: &str) -> Vec<&str> {
    let Some((lhs, _)) = line.trim_start().split_once(" = ") else {
        return Vec::new();
    };
    lhs.split(", ")
        .map(|n| n.split(':').next().unwrap_or(n))
        .filter(|n| n.starts_with('%'))
        .collect()
}

/// The SSA names a line uses (after its `=`, or the whole line if it defines nothing).
fn used_names(line: &str) -> Vec<&str> {
    let rhs = line.split_once(" = ").map_or(line, |(_, rhs)| rhs);
    ssa_names(rhs)
}

fn is_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '_' | '$' | '.' | '-')
}

/// Every `%name` in `text`, in order.
pub(crate) fn ssa_names(text: &str) -> Vec<&str> {
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

/// Replaces the SSA name `from` (whole names only) with `to`.
fn rename(line: &str, from: &str, to: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut rest = line;
    while let Some(at) = rest.find(from) {
        let after = &rest[at + from.len()..];
        out.push_str(&rest[..at]);
        if after.chars().next().is_some_and(is_name_char) {
            out.push_str(from);
        } else {
            out.push_str(to);
        }
        rest = after;
    }
    out.push_str(rest);
    out
}

/// [`gather_fusable_loops`] on one block's ops.
fn gather_block(ops: Vec<Vec<String>>) -> Vec<Vec<String>> {
    let kinds: Vec<Kind> = ops.iter().map(|op| kind(op)).collect();
    let mut out: Vec<Vec<String>> = Vec::with_capacity(ops.len());
    let mut ops = ops.into_iter().map(Some).collect::<Vec<_>>();
    let mut i = 0;
    while i < ops.len() {
        if kinds[i] != Kind::Loop {
            out.extend(ops[i].take());
            i += 1;
            continue;
        }
        // The run: from this nest to the last nest over the same space that only allocations,
        // deallocations and pure ops separate from it.
        let space = ops[i].as_ref().map_or(String::new(), |op| iteration_space(&op[0]).to_string());
        let mut last = i;
        let mut j = i + 1;
        while j < ops.len() && kinds[j] != Kind::Other {
            if kinds[j] == Kind::Loop {
                let same = ops[j].as_ref().is_some_and(|op| iteration_space(&op[0]) == space);
                if !same {
                    break;
                }
                last = j;
            }
            j += 1;
        }
        // Allocations go before the run unless a size they take is computed inside it;
        // deallocations go after it.
        let mut before = Vec::new();
        let mut inside = Vec::new();
        let mut after = Vec::new();
        let mut defined_inside: Vec<String> = Vec::new();
        for k in i..=last {
            let Some(op) = ops[k].take() else { continue };
            match kinds[k] {
                Kind::Alloc if !used_names(&op[0]).iter().any(|n| defined_inside.iter().any(|d| d == n)) => before.push(op),
                Kind::Dealloc => after.push(op),
                _ => {
                    defined_inside.extend(defined_names(&op[0]).into_iter().map(str::to_string));
                    inside.push(op);
                }
            }
        }
        out.extend(before);
        out.extend(inside);
        out.extend(after);
        i = last + 1;
    }
    out
}

/// The module's fresh buffers (results of `memref.alloc`) that no view is taken of: nothing can
/// read such a buffer except through its own name.
struct Fresh {
    names: std::collections::HashSet<String>,
}

impl Fresh {
    fn of(text: &str) -> Fresh {
        let mut allocated = std::collections::HashSet::new();
        let mut viewed = std::collections::HashSet::new();
        for line in text.lines() {
            let trimmed = line.trim_start();
            let Some((lhs, rhs)) = trimmed.split_once(" = ") else { continue };
            if rhs.starts_with("memref.alloc(") || rhs.starts_with("memref.alloca(") {
                allocated.insert(lhs.to_string());
            } else if !rhs.starts_with("memref.load ") && !rhs.starts_with("memref.dim ") {
                // Any other op that takes a buffer (a view, a call, a cast) may alias it.
                for name in ssa_names(rhs) {
                    viewed.insert(name.to_string());
                }
            }
        }
        Fresh {
            names: allocated.difference(&viewed).cloned().collect(),
        }
    }
}

/// `memref.load %buf[%i, %j] : T` → (`%buf`, `%i, %j`, `T`).
fn access(text: &str) -> Option<(&str, &str, &str)> {
    let (buffer, rest) = text.split_once('[')?;
    let (indices, ty) = rest.split_once("] : ")?;
    Some((buffer.trim(), indices, ty.trim()))
}

/// A memref type's element type: `memref<?x768xf32, strided<..>>` → `f32`.
fn element_type(memref: &str) -> Option<&str> {
    let inner = memref.strip_prefix("memref<")?;
    let shape = inner.split([',', '>']).next()?;
    shape.rsplit('x').next()
}

/// [`accumulate_in_registers`] on one block's ops.
/// `counter` numbers the loop-carried values, which are named after it.
fn accumulate_block(ops: Vec<Vec<String>>, fresh: &Fresh, counter: &std::cell::Cell<usize>) -> Vec<Vec<String>> {
    let mut out: Vec<Vec<String>> = Vec::with_capacity(ops.len());
    for op in ops {
        match accumulated(&op, out.last(), fresh, counter.get()) {
            Some((replaces_previous, rewritten)) => {
                if replaces_previous {
                    out.pop();
                }
                counter.set(counter.get() + 1);
                out.extend(rewritten);
            }
            None => out.push(op),
        }
    }
    out
}

/// If `op` is an `scf.for` whose body loads one element of a fresh buffer and, as its last op,
/// stores the next value to the same element, and mentions the buffer nowhere else, the loop
/// that carries the value instead: `(whether it replaces the previous op, the new ops)`. The
/// previous op is replaced when it is the store of the element's initial value.
fn accumulated(op: &[String], previous: Option<&Vec<String>>, fresh: &Fresh, n: usize) -> Option<(bool, Vec<Vec<String>>)> {
    let header = op.first()?;
    let indent = &header[..indent_of(header)];
    let head = header.trim_start().strip_prefix("scf.for ")?;
    let (iv, _) = head.split_once(" = ")?;
    if head.contains(" iter_args(") || head.contains(" : ") || !head.ends_with(" {") || op.len() < 3 {
        return None;
    }
    let closing = op.last()?;
    if closing.trim() != "}" {
        return None;
    }
    let body = &op[1..op.len() - 1];
    let body_ops = split_ops(body);
    let last = body_ops.last()?.clone();
    let store = body[last.start].trim_start().strip_prefix("memref.store ")?;
    if last.len() != 1 {
        return None;
    }
    let (value, target) = store.split_once(", ")?;
    let (buffer, indices, ty) = access(target)?;
    if !fresh.names.contains(buffer) {
        return None;
    }
    // Exactly one load of the same element, at the body's top level, and no other mention of the
    // buffer anywhere in the body.
    let mut load = None;
    for range in &body_ops {
        for line in &body[range.clone()] {
            if !ssa_names(line).contains(&buffer) {
                continue;
            }
            let trimmed = line.trim_start();
            let is_load = trimmed
                .split_once(" = memref.load ")
                .and_then(|(name, rest)| Some((name, access(rest)?)))
                .filter(|(_, (b, i, t))| range.len() == 1 && *b == buffer && *i == indices && *t == ty)
                .map(|(name, _)| name);
            match is_load {
                Some(name) if load.is_none() => load = Some((range.start, name)),
                _ if range.start == last.start => {}
                _ => return None,
            }
        }
    }
    let (load_at, loaded) = load?;
    // The element's indices must not change inside the loop.
    let defined_in_body: Vec<&str> = body.iter().flat_map(|l| defined_names(l)).collect();
    if ssa_names(indices).iter().any(|i| *i == iv || defined_in_body.contains(i)) {
        return None;
    }
    let element = element_type(ty)?;
    let (acc, acc_in) = (format!("%lmc_acc{n}"), format!("%lmc_acc_in{n}"));
    let element_store = |v: &str| format!("memref.store {v}, {buffer}[{indices}] : {ty}");
    // The initial value: the store just before the loop, or the element as it is.
    let initial = previous.filter(|p| p.len() == 1).and_then(|p| {
        let (v, target) = p[0].trim_start().strip_prefix("memref.store ")?.split_once(", ")?;
        (access(target)? == (buffer, indices, ty)).then(|| v.to_string())
    });
    let mut new_ops = Vec::new();
    let init = match &initial {
        Some(v) => v.clone(),
        None => {
            let name = format!("%lmc_acc_init{n}");
            new_ops.push(vec![format!("{indent}{name} = memref.load {buffer}[{indices}] : {ty}")]);
            name
        }
    };
    let head_without_brace = head.strip_suffix(" {")?;
    let mut looped = vec![format!(
        "{indent}{acc} = scf.for {head_without_brace} iter_args({acc_in} = {init}) -> ({element}) {{"
    )];
    let body_indent = &body[last.start][..indent_of(&body[last.start])];
    for (k, line) in body.iter().enumerate() {
        if k == load_at {
            continue;
        }
        if k == last.start {
            looped.push(format!("{body_indent}scf.yield {} : {element}", rename(value, loaded, &acc_in)));
            continue;
        }
        looped.push(rename(line, loaded, &acc_in));
    }
    looped.push(closing.clone());
    new_ops.push(looped);
    new_ops.push(vec![format!("{indent}{}", element_store(&acc))]);
    Some((initial.is_some(), new_ops))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MATMUL_THEN_BIAS: &str = "\
  func.func @f(%a: memref<?x8xf32>, %w: memref<8x4xf32>, %b: memref<4xf32>, %n: index) {
    %alloc = memref.alloc(%n) {alignment = 64 : i64} : memref<?x4xf32>
    scf.parallel (%i, %j) = (%c0, %c0) to (%n, %c4) step (%c1, %c1) {
      memref.store %cst, %alloc[%i, %j] : memref<?x4xf32>
      scf.for %k = %c0 to %c8 step %c1 {
        %0 = memref.load %a[%i, %k] : memref<?x8xf32>
        %1 = memref.load %w[%k, %j] : memref<8x4xf32>
        %2 = memref.load %alloc[%i, %j] : memref<?x4xf32>
        %3 = arith.mulf %0, %1 : f32
        %4 = arith.addf %2, %3 : f32
        memref.store %4, %alloc[%i, %j] : memref<?x4xf32>
      }
      scf.reduce 
    }
    %dim = memref.dim %alloc, %c0 : memref<?x4xf32>
    memref.dealloc %a : memref<?x8xf32>
    %alloc_1 = memref.alloc(%n) {alignment = 64 : i64} : memref<?x4xf32>
    scf.parallel (%i, %j) = (%c0, %c0) to (%n, %c4) step (%c1, %c1) {
      %0 = memref.load %alloc[%i, %j] : memref<?x4xf32>
      %1 = memref.load %b[%j] : memref<4xf32>
      %2 = arith.addf %0, %1 : f32
      memref.store %2, %alloc_1[%i, %j] : memref<?x4xf32>
      scf.reduce 
    }
    memref.dealloc %alloc : memref<?x4xf32>
    return
  }
";

    #[test]
    fn allocations_and_deallocations_leave_runs_of_nests() {
        let out = gather_fusable_loops(MATMUL_THEN_BIAS);
        let order: Vec<String> = out
            .lines()
            .filter(|l| indent_of(l) == 4 && !l.trim_start().starts_with('}'))
            .map(|l| l.trim_start().split(' ').take(2).collect::<Vec<_>>().join(" "))
            .collect();
        assert_eq!(
            order,
            [
                "%alloc =",
                "%alloc_1 =",
                "scf.parallel (%i,",
                "%dim =",
                "scf.parallel (%i,",
                "memref.dealloc %a",
                "memref.dealloc %alloc",
                "return",
            ]
        );
        // Nothing inside the nests moved.
        assert_eq!(out.lines().count(), MATMUL_THEN_BIAS.lines().count());
        assert!(
            out.contains("      memref.store %cst, %alloc[%i, %j] : memref<?x4xf32>\n      scf.for %k"),
            "{out}"
        );
    }

    #[test]
    fn nests_over_other_spaces_end_the_run() {
        let text = MATMUL_THEN_BIAS.replace(
            "to (%n, %c4) step (%c1, %c1) {\n      %0 = memref.load %alloc",
            "to (%n, %c8) step (%c1, %c1) {\n      %0 = memref.load %alloc",
        );
        let out = gather_fusable_loops(&text);
        assert_eq!(out, text, "a run of one nest is left as it is");
    }

    #[test]
    fn a_reduction_carries_its_sum() {
        let out = accumulate_in_registers(MATMUL_THEN_BIAS);
        let expected = "\
    scf.parallel (%i, %j) = (%c0, %c0) to (%n, %c4) step (%c1, %c1) {
      %lmc_acc0 = scf.for %k = %c0 to %c8 step %c1 iter_args(%lmc_acc_in0 = %cst) -> (f32) {
        %0 = memref.load %a[%i, %k] : memref<?x8xf32>
        %1 = memref.load %w[%k, %j] : memref<8x4xf32>
        %3 = arith.mulf %0, %1 : f32
        %4 = arith.addf %lmc_acc_in0, %3 : f32
        scf.yield %4 : f32
      }
      memref.store %lmc_acc0, %alloc[%i, %j] : memref<?x4xf32>
      scf.reduce 
    }
";
        assert!(out.contains(expected), "{out}");
    }

    #[test]
    fn a_reduction_without_initial_store_loads_it() {
        let text = MATMUL_THEN_BIAS.replace("      memref.store %cst, %alloc[%i, %j] : memref<?x4xf32>\n", "");
        let out = accumulate_in_registers(&text);
        assert!(out.contains("      %lmc_acc_init0 = memref.load %alloc[%i, %j] : memref<?x4xf32>\n      %lmc_acc0 = scf.for %k = %c0 to %c8 step %c1 iter_args(%lmc_acc_in0 = %lmc_acc_init0) -> (f32) {"), "{out}");
    }

    #[test]
    fn buffers_that_may_be_aliased_are_left_alone() {
        // A view of the buffer could be read inside the loop under another name.
        let viewed = MATMUL_THEN_BIAS.replace(
            "    %dim = memref.dim %alloc, %c0 : memref<?x4xf32>\n",
            "    %view = memref.subview %alloc[0, 0] [%n, 2] [1, 1] : memref<?x4xf32> to memref<?x2xf32, strided<[4, 1]>>\n",
        );
        assert_eq!(accumulate_in_registers(&viewed), viewed);
        // An index that changes inside the loop: not one element.
        let moving = MATMUL_THEN_BIAS
            .replace("%2 = memref.load %alloc[%i, %j]", "%2 = memref.load %alloc[%i, %k]")
            .replace("memref.store %4, %alloc[%i, %j]", "memref.store %4, %alloc[%i, %k]");
        assert_eq!(accumulate_in_registers(&moving), moving);
        // A second read of the buffer in the loop.
        let twice = MATMUL_THEN_BIAS.replace(
            "%3 = arith.mulf %0, %1 : f32",
            "%5 = memref.load %alloc[%i, %c0] : memref<?x4xf32>\n        %3 = arith.mulf %0, %5 : f32",
        );
        assert_eq!(accumulate_in_registers(&twice), twice);
    }

    #[test]
    fn fused_intermediates_stay_in_registers() {
        let text = "\
  func.func @f(%a: memref<?x4xf32>, %n: index) {
    %alloc = memref.alloc(%n) {alignment = 64 : i64} : memref<?x4xf32>
    %alloc_1 = memref.alloc(%n) {alignment = 64 : i64} : memref<?x4xf32>
    %alloc_2 = memref.alloc(%n) {alignment = 64 : i64} : memref<?x4xf32>
    scf.parallel (%i, %j) = (%c0, %c0) to (%n, %c4) step (%c1, %c1) {
      %0 = memref.load %a[%i, %j] : memref<?x4xf32>
      %1 = arith.mulf %0, %0 : f32
      memref.store %1, %alloc[%i, %j] : memref<?x4xf32>
      %2 = memref.load %alloc[%i, %j] : memref<?x4xf32>
      memref.store %2, %alloc_1[%i, %j] : memref<?x4xf32>
      %3 = memref.load %alloc_1[%i, %j] : memref<?x4xf32>
      %4 = memref.load %alloc[%i, %j] : memref<?x4xf32>
      %5 = arith.addf %3, %4 : f32
      memref.store %5, %alloc_2[%i, %j] : memref<?x4xf32>
      scf.reduce 
    }
    memref.dealloc %alloc : memref<?x4xf32>
    memref.dealloc %alloc_1 : memref<?x4xf32>
    return %alloc_2 : memref<?x4xf32>
  }
";
        let expected = "\
  func.func @f(%a: memref<?x4xf32>, %n: index) {
    %alloc_2 = memref.alloc(%n) {alignment = 64 : i64} : memref<?x4xf32>
    scf.parallel (%i, %j) = (%c0, %c0) to (%n, %c4) step (%c1, %c1) {
      %0 = memref.load %a[%i, %j] : memref<?x4xf32>
      %1 = arith.mulf %0, %0 : f32
      %5 = arith.addf %1, %1 : f32
      memref.store %5, %alloc_2[%i, %j] : memref<?x4xf32>
      scf.reduce 
    }
    return %alloc_2 : memref<?x4xf32>
  }
";
        assert_eq!(temporaries_in_registers(text), expected);
        // Read elsewhere (another nest, another element): kept.
        let other_element = text.replace("%4 = memref.load %alloc[%i, %j]", "%4 = memref.load %alloc[%i, %c0]");
        assert!(temporaries_in_registers(&other_element).contains("%alloc = memref.alloc"));
        let returned = text.replace("return %alloc_2", "return %alloc");
        assert!(temporaries_in_registers(&returned).contains("%alloc = memref.alloc"));
    }

    #[test]
    fn names_are_renamed_whole() {
        assert_eq!(rename("%2 = arith.addf %2, %20 : f32", "%2", "%x"), "%x = arith.addf %x, %20 : f32");
        assert_eq!(ssa_names("memref.load %alloc_1[%i, %c0]"), ["%alloc_1", "%i", "%c0"]);
        assert_eq!(element_type("memref<?x?x768xf32, strided<[?, 1]>>"), Some("f32"));
        assert_eq!(element_type("memref<f32>"), Some("f32"));
    }
}
