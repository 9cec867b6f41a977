//! The module's schedule, a transform-dialect sequence: loop nests marked row-parallel are tiled
//! into `scf.forall` over rows, and a row group's ops are fused into its root's loop.

use super::*;

/// The attribute by which [`schedule`] finds the loop nests it spreads over threads.
pub(super) const ROW_PARALLEL_ATTR: &str = "lmc.row_parallel";

/// Marks each `linalg.generic` of a top-level op's code to run in parallel over its leading
/// parallel dimensions (rows), all but the innermost loop, which stays a sequential, vectorizable
/// loop inside each task: `lmc.row_parallel = [1, 1, 0]` are the tile sizes [`schedule`] tiles
/// it by, added to `tile_sizes` when new. (Scan steps are never marked: they would start threads
/// once per time step.)
pub(super) fn mark_row_parallel(text: &str, tile_sizes: &mut Vec<String>) -> String {
    const ITERATORS: &str = "iterator_types = [";
    let mut out = String::with_capacity(text.len() + 256);
    for line in text.split_inclusive('\n') {
        let marked = line
            .contains(" = linalg.generic {indexing_maps = ")
            .then(|| line.find(ITERATORS))
            .flatten()
            .and_then(|start| {
                let list_start = start + ITERATORS.len();
                let list_end = list_start + line[list_start..].find(']')?;
                let iterators: Vec<&str> = line[list_start..list_end].split(", ").collect();
                let leading = iterators.iter().take_while(|i| **i == "\"parallel\"").count();
                let tiled = leading.min(iterators.len().saturating_sub(1));
                (tiled > 0).then(|| {
                    let sizes: Vec<&str> = (0..iterators.len()).map(|i| if i < tiled { "1" } else { "0" }).collect();
                    let sizes = format!("[{}]", sizes.join(", "));
                    let marked = format!("{}, {ROW_PARALLEL_ATTR} = {sizes}{}", &line[..=list_end], &line[list_end + 1..]);
                    if !tile_sizes.contains(&sizes) {
                        tile_sizes.push(sizes);
                    }
                    marked
                })
            });
        out.push_str(marked.as_deref().unwrap_or(line));
    }
    out
}

/// Marks a row group's function body (see `Emitter::emit_row_group`) for the [`schedule`]: its
/// root, the loop nest that defines `%result`, with `lmc.row_group = tile_sizes`, and every other
/// loop nest (and accumulator fill) with `lmc.row_fused = k`, numbered from the last back, the
/// order in which they are fused into the root's loop (each is fused into its readers, which
/// must be in the loop already). Returns the text and how many are fused; `None` when no loop
/// nest defines `%result`.
pub(super) fn tag_row_group(body: &str, tile_sizes: &str) -> Option<(String, usize)> {
    const GENERIC: &str = " = linalg.generic {indexing_maps = ";
    const FILL: &str = " = linalg.fill ins(";
    let is_root = |line: &str| line.trim_start().starts_with("%result = linalg.generic {");
    if !body.lines().any(is_root) {
        return None;
    }
    let fused = body
        .lines()
        .filter(|l| !is_root(l) && (l.contains(GENERIC) || l.contains(FILL)))
        .count();
    let mut k = fused;
    let mut out = String::with_capacity(body.len() + 64 * (fused + 1));
    for line in body.split_inclusive('\n') {
        let attribute = if is_root(line) {
            format!("lmc.row_group = {tile_sizes}")
        } else if line.contains(GENERIC) || line.contains(FILL) {
            k -= 1;
            format!("lmc.row_fused = {k}")
        } else {
            out.push_str(line);
            continue;
        };
        if let Some(at) = line.find(FILL) {
            out.push_str(&format!(
                "{} = linalg.fill {{{attribute}}} ins({}",
                &line[..at],
                &line[at + FILL.len()..]
            ));
        } else {
            // After the generic's iterator types, the last entry of its attribute dictionary.
            let list = line.find("iterator_types = [").and_then(|i| line[i..].find(']').map(|j| i + j));
            match list {
                Some(end) => out.push_str(&format!("{}, {attribute}{}", &line[..=end], &line[end + 1..])),
                None => out.push_str(line),
            }
        }
    }
    Some((out, fused))
}

/// The transform-dialect schedule that tiles every loop nest marked by [`mark_row_parallel`]
/// (with one of `tile_sizes`) into an `scf.forall` of one row per iteration (threads, through
/// OpenMP, once lowered); empty when nothing is marked. It lives in the module until the
/// pipeline applies and removes it.
///
/// Each row group's function has its root tiled the same way and the ops marked by
/// [`tag_row_group`] fused into the root's loop, in the order of their numbers: one loop over
/// the roots of each tile sizes in `row_groups`, matching as many numbers as the largest group
/// fuses (a smaller group's extra matches are empty).
pub(super) fn schedule(tile_sizes: &[String], row_groups: &[(String, usize)]) -> String {
    if tile_sizes.is_empty() && row_groups.is_empty() {
        return String::new();
    }
    let mut text = String::new();
    let _ = writeln!(
        text,
        "  transform.named_sequence @__transform_main(%root: !transform.any_op {{transform.readonly}}) {{"
    );
    for (i, sizes) in tile_sizes.iter().enumerate() {
        let _ = writeln!(
            text,
            "    %ops{i} = transform.structured.match attributes {{{ROW_PARALLEL_ATTR} = {sizes}}} in %root : (!transform.any_op) -> !transform.any_op"
        );
        let _ = writeln!(
            text,
            "    %tiled{i}:2 = transform.structured.tile_using_forall %ops{i} tile_sizes {sizes} : (!transform.any_op) -> (!transform.any_op, !transform.any_op)"
        );
    }
    const ANY: &str = "!transform.any_op";
    for (i, (sizes, fused)) in row_groups.iter().enumerate() {
        let _ = writeln!(
            text,
            "    %groups{i} = transform.structured.match attributes {{lmc.row_group = {sizes}}} in %root : ({ANY}) -> {ANY}"
        );
        let _ = writeln!(text, "    transform.foreach %groups{i} : {ANY} {{");
        let _ = writeln!(text, "    ^bb0(%group: {ANY}):");
        let _ = writeln!(
            text,
            "      %tiled, %rows = transform.structured.tile_using_forall %group tile_sizes {sizes} : ({ANY}) -> ({ANY}, {ANY})"
        );
        if *fused > 0 {
            let _ = writeln!(
                text,
                "      %func = transform.get_parent_op %rows {{op_name = \"func.func\"}} : ({ANY}) -> {ANY}"
            );
            for k in 0..*fused {
                let _ = writeln!(
                    text,
                    "      %op{k} = transform.structured.match attributes {{lmc.row_fused = {k}}} in %func : ({ANY}) -> {ANY}"
                );
            }
            let ops: Vec<String> = (0..*fused).map(|k| format!("%op{k}")).collect();
            let _ = writeln!(text, "      %ops = transform.merge_handles {} : {ANY}", ops.join(", "));
            let _ = writeln!(
                text,
                "      %fused, %fused_rows = transform.structured.fuse_into_containing_op %ops into %rows : ({ANY}, {ANY}) -> ({ANY}, {ANY})"
            );
        }
        let _ = writeln!(text, "    }}");
    }
    let _ = writeln!(text, "    transform.yield");
    let _ = writeln!(text, "  }}");
    text
}

impl Emitter<'_> {
    /// A row group (see [`fuse::row_groups`]) as a call to a function of its own. The function
    /// computes the group's ops one after the other, each over the whole tensor (those the
    /// others compute inside their own loops left out), and the schedule then tiles the root
    /// into a parallel loop over rows and fuses the others into it: each row is computed from
    /// start to end while it is in cache, in one parallel loop instead of one per op.
    pub(super) fn emit_row_group(&mut self, root: ValueId) {
        let first_tmp = self.tmp;
        let members = self.plan.row_groups.members.get(&root).cloned().unwrap_or_default();
        let text = self.emitted_apart(|e| {
            e.within(
                |mode| mode.in_row_group = true,
                |e| {
                    for &m in &members {
                        if !e.plan.row_groups.inlined.contains(&m) {
                            e.emit_node(m);
                        }
                    }
                    e.emit_node(root);
                },
            )
        });
        let Some(mut f) = outline(self.g, root, &text, first_tmp, &members) else {
            self.body.push_str(&text);
            return;
        };
        let rank = self.g.ty(root).rank();
        let sizes: Vec<&str> = (0..rank).map(|i| if i + 1 < rank { "1" } else { "0" }).collect();
        let sizes = format!("[{}]", sizes.join(", "));
        match tag_row_group(&f.body, &sizes) {
            Some((tagged, fused)) => {
                f.body = tagged;
                match self.row_group_schedules.iter_mut().find(|(s, _)| *s == sizes) {
                    Some(entry) => entry.1 = entry.1.max(fused),
                    None => self.row_group_schedules.push((sizes, fused)),
                }
            }
            // The root is not a loop nest of its own (never for an elementwise root): each op
            // gets its own parallel loop instead.
            None => f.body = mark_row_parallel(&f.body, &mut self.row_tile_sizes),
        }
        self.call_outlined(root, &f);
    }
}
