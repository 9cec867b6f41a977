//! Checked IR → MLIR text on upstream dialects (`func`, `linalg`, `tensor`, `arith`, `math`,
//! `bufferization`, `memref`).
//!
//! The function works on tensors; only its boundary is memrefs, in destination-passing style:
//! `@forward(params..., inputs..., outputs...)`, with inputs read through
//! `bufferization.to_tensor` and results written with `materialize_in_destination`, so the caller
//! owns every buffer (see `lmc_abi`). Symbolic dimensions are dynamic (`?`) sizes read from the
//! first input that carries them. Rank-0 values (config constants) are plain `f32` SSA values that
//! the `linalg.generic` bodies capture, never tensors.
//!
//! We emit text and let MLIR's parser build the module: the text is what `lmc emit --stage mlir`
//! prints and what the snapshot tests compare, and every op carries its `.model` location.

use crate::Target;
use lmc_abi::DType;
use lmc_core::ir::{
    BinaryOp, Dim, Graph, Loc, Op, ReduceOp, ScalarBinary, ScalarFn, ScalarNode, ScalarType, ScalarUnary, Scan, TensorType, UnaryOp,
    ValueId,
};
use std::fmt::Write as _;

mod approx;
mod fuse;
mod lanes;
mod matmul;

/// Per parameter, how the kernels emitted for `target` read it packed ([`lmc_abi::Packing`]),
/// if they do (see `matmul::param_packing`): what the manifest tells the runtime.
pub(crate) fn param_packing(g: &Graph, target: &Target) -> Vec<Option<lmc_abi::Packing>> {
    packing_for(g, &g.enclosing_scans(), &fuse::readers(g), target)
}

/// [`param_packing`], from the regions and readers the emitter has computed.
fn packing_for(g: &Graph, regions: &[Option<ValueId>], readers: &[Vec<ValueId>], target: &Target) -> Vec<Option<lmc_abi::Packing>> {
    let packing = matmul::param_packing(g, regions, readers, target.lanes);
    if target.is_gpu() {
        return transposed_for_gpu(g, packing);
    }
    packing
}

/// For a GPU, a Linear's weight `[N, K]` is passed transposed, as one panel `[1, K, N]`: a
/// block's threads compute consecutive columns `n`, so at each step of `K` they read
/// consecutive elements of the weight (one coalesced load per warp) instead of elements a row
/// apart.
fn transposed_for_gpu(g: &Graph, packing: Vec<Option<lmc_abi::Packing>>) -> Vec<Option<lmc_abi::Packing>> {
    packing
        .into_iter()
        .zip(&g.params)
        .map(|(p, param)| match (p, param.ty.dims.first()) {
            (Some(_), Some(&Dim::Static(n))) => Some(lmc_abi::Packing { panel: n }),
            _ => None,
        })
        .collect()
}

/// The start of every matmul kernel function's name (`lmc_matmul0`, ...): the pipeline gives
/// their parallel loops a schedule of their own (`mlir_pipeline::schedule_kernels_dynamically`).
pub const MATMUL_KERNEL_PREFIX: &str = "lmc_matmul";

/// The name of the generated function that implements `forward`.
pub const FORWARD_FUNC: &str = "forward";

/// Emits the MLIR module for a graph's forward function, with kernels shaped for `target`.
pub fn emit_module(g: &Graph, target: &Target) -> String {
    let regions = g.enclosing_scans();
    let readers = fuse::readers(g);
    let uses: Vec<usize> = readers.iter().map(Vec::len).collect();
    let mut fully_fused = fuse::fully_fused(g, &regions, &uses, &readers);
    // For a GPU, every op is a plain loop nest (each one becomes a kernel): the CPU kernels'
    // panels, bias epilogues and row groups are CPU schedules.
    let packing = packing_for(g, &regions, &readers, target);
    let (biased, row_groups) = if target.is_gpu() {
        (Default::default(), fuse::RowGroups::default())
    } else {
        let biased = fuse::bias_epilogues(g, &regions, &readers);
        // A matmul whose bias its kernel adds is computed where the add is.
        fully_fused.extend(biased.values().map(|&(matmul, _)| matmul));
        let bias_adds = biased.keys().copied().collect();
        let row_groups = fuse::row_groups(g, &regions, &readers, &bias_adds);
        (biased, row_groups)
    };
    let mut e = Emitter {
        packing,
        row_groups,
        in_row_group: false,
        row_group_schedules: Vec::new(),
        fully_fused,
        biased,
        uses,
        g,
        target: *target,
        functions: Functions::default(),
        row_tile_sizes: Vec::new(),
        in_scan_body: false,
        block: None,
        block_rows: None,
        block_keys: None,
        indent: 0,
        body: String::new(),
        tmp: 0,
        regions,
    };
    e.emit_function()
}

struct Emitter<'a> {
    g: &'a Graph,
    target: Target,
    /// Whether the node being emitted is in a scan's body, where matmuls are inlined loops and
    /// elementwise chains are fused; also set while an attention block is emitted, for its
    /// inlined matmuls.
    in_scan_body: bool,
    /// The block of lanes the scan body being emitted works on, if it was split into blocks.
    block: Option<Block>,
    /// The SSA name of the length of the block of query rows an attention is computing, the
    /// run-time size [`BLOCK_ROWS`] stands for.
    block_rows: Option<String>,
    /// Likewise, the number of keys a block of query rows attends to ([`BLOCK_KEYS`]).
    block_keys: Option<String>,
    /// Extra indentation of the lines being emitted (two spaces each), inside a block's loop.
    indent: usize,
    /// The private functions defined so far: matmul kernels and outlined ops.
    functions: Functions,
    /// The distinct tile sizes [`mark_row_parallel`] has marked loop nests with, for the
    /// [`schedule`].
    row_tile_sizes: Vec<String>,
    body: String,
    tmp: usize,
    /// The innermost scan each node's body belongs to (`None`: the function body).
    regions: Vec<Option<ValueId>>,
    /// How many times each value is read (see [`fuse`]).
    uses: Vec<usize>,
    /// The nodes computed only inside the ops that read them: scan-body nodes (see [`fuse`]) and
    /// the matmuls of [`Emitter::biased`].
    fully_fused: std::collections::HashSet<ValueId>,
    /// The adds of a bias to a matmul that the matmul kernel computes (at the add; the matmul
    /// itself emits nothing): add → (matmul, bias). See [`fuse::bias_epilogues`].
    biased: std::collections::HashMap<ValueId, (ValueId, ValueId)>,
    /// Per parameter, how it is passed packed (`matmul::param_packing`), if it is.
    packing: Vec<Option<lmc_abi::Packing>>,
    /// The function body's ops computed row by row together (see [`fuse::row_groups`]).
    row_groups: fuse::RowGroups,
    /// Whether the ops of a row group are being emitted (see [`Emitter::emit_row_group`]).
    in_row_group: bool,
    /// Per distinct tile sizes of the row groups' roots so far, the most ops any of their
    /// functions fuses into the root's loop (see [`schedule`]).
    row_group_schedules: Vec<(String, usize)>,
}

/// The result side of a fused `linalg.generic`: its SSA name, output map (the part after
/// `->`), iterator types, initial value and type, and the block argument of the output.
struct Generic<'s> {
    name: &'s str,
    map: &'s str,
    iterators: &'s str,
    init: &'s str,
    ty: &'s str,
    arg: &'s str,
}

/// The inputs and body of a loop nest that computes a chain of fused ops (see [`fuse`]).
#[derive(Default)]
struct FusedBody {
    /// The loop nest's number of dimensions.
    rank: usize,
    /// Each input once: its SSA name, tensor type, indexing map and element type.
    inputs: Vec<(String, String, String, &'static str)>,
    lines: Vec<String>,
    /// The fused ops computed so far, with where: an op read twice at the same element (a row
    /// group's `x - mean` squared) is computed once.
    computed: Vec<(ValueId, Vec<String>)>,
}

/// The length of a block of query rows (see `Emitter::emit_attention`): not one of the
/// graph's symbols, but a size known only inside the block.
const BLOCK_ROWS: lmc_core::ir::SymbolId = lmc_core::ir::SymbolId(u32::MAX);

/// The number of keys a block of query rows attends to (see `Emitter::emit_attention`).
const BLOCK_KEYS: lmc_core::ir::SymbolId = lmc_core::ir::SymbolId(u32::MAX - 1);

/// How many query rows an attention computes at a time: its scores are a `[QUERY_ROWS, keys]`
/// block, never the whole `[heads, queries, keys]`. A multiple of every vector width: a tall
/// block's rows are whole vectors (see `Emitter::attention_rows_tall`).
const QUERY_ROWS: i64 = 32;

/// How many keys a tall block of queries scores at a time (`Emitter::attention_rows_tall`):
/// its scores, `[KEY_TILE, QUERY_ROWS]` f32 (32 KiB), stay in L1 whatever the length.
const KEY_TILE: i64 = 256;

/// The fewest rows a block of queries computes with its scores keys by queries
/// (`Emitter::attention_rows_tall`); fewer, and most lanes of its vectors would be padding.
const TALL_MIN_ROWS: i64 = 8;

/// One block of query rows of an attention, as both block layouts take it: the block's slices
/// of `q`, `k` and `v` and of the result (`dest`, computed in place), each `[1, 1, rows, ·]` with
/// its SSA name; the block's indices ([`at_block`]), which index functions see added to the
/// block's own; and the attention's scale, mask and score functions.
struct AttentionBlock<'a> {
    q: (&'a String, &'a TensorType),
    k: (&'a String, &'a TensorType),
    v: (&'a String, &'a TensorType),
    dest: (&'a String, &'a TensorType),
    /// Block indices (see [`at_block`]); empty for a whole attention (a GPU's), whose batch
    /// and head are its loop nests' first two indices and whose rows and keys start at 0.
    at: &'a [String; 4],
    /// Query heads per key head (grouped-query attention) when the keys are not sliced per
    /// head (a whole attention); 1 for a block.
    group: i64,
    scale: f64,
    mask: Option<&'a ScalarFn>,
    score: Option<&'a ScalarFn>,
    loc: &'a str,
}

/// The block indices of attention block `p` (see `Emitter::emit_attention`): its batch, its
/// head, its first query row and its first key.
fn at_block(p: &str) -> [String; 4] {
    [format!("{p}_b"), format!("{p}_h"), format!("{p}_i"), format!("{p}_k0")]
}

/// One block of a scan's lanes (see [`lanes`]): inside it, every value with a lane axis has
/// `lanes.block` elements along it, and the values defined outside the body are read through
/// their block's slice.
struct Block {
    lanes: lanes::Lanes,
    /// The SSA names of those slices.
    slices: std::collections::HashMap<ValueId, String>,
}

/// The module's private functions, each distinct one defined once and named by its kind and
/// its rank among that kind (`@lmc_op3`, `@lmc_matmul0`).
#[derive(Default)]
struct Functions {
    /// (kind, what it computes, text), in order of definition.
    defined: Vec<(&'static str, String, String)>,
}

impl Functions {
    /// The name of the function of `kind` that computes `key`, defined by `define(name)` on
    /// first use.
    fn get_or_define(&mut self, kind: &'static str, key: String, define: impl FnOnce(&str) -> String) -> String {
        let mut rank = 0;
        for (k, existing, _) in &self.defined {
            if *k == kind {
                if *existing == key {
                    return format!("@lmc_{kind}{rank}");
                }
                rank += 1;
            }
        }
        let name = format!("@lmc_{kind}{rank}");
        let text = define(&name);
        self.defined.push((kind, key, text));
        name
    }

    /// The text of every function of `kind`.
    fn texts<'a>(&'a self, kind: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.defined
            .iter()
            .filter(move |(k, ..)| *k == kind)
            .map(|(.., text)| text.as_str())
    }
}

/// A node's code as a function of the values it reads (see `Emitter::emit_outlined`).
struct Outlined {
    /// The function's text with locations left out and names made canonical: equal keys
    /// compute the same thing.
    key: String,
    /// The body with canonical names (locations kept).
    body: String,
    /// The values read, in order of first use, with their types.
    args: Vec<(String, String)>,
    result_ty: String,
}

impl Outlined {
    fn define(&self, name: &str) -> String {
        let mut params: Vec<String> = self.args.iter().enumerate().map(|(i, (_, t))| format!("%in{i}: {t}")).collect();
        params.push(format!("%dest: {}", self.result_ty));
        format!(
            "  func.func private {name}({}) -> {} attributes {{llvm.linkage = #llvm.linkage<internal>}} {{\n{}    return %result : {}\n  }}\n",
            params.join(", "),
            self.result_ty,
            self.body,
            self.result_ty
        )
    }
}

/// Rewrites the code of node `id` as the body of a function: the node values and symbols it
/// reads become arguments `%in0, %in1, ...`, its result `%result`, its temporaries and the
/// nodes in `locals` (computed by the code too) `%l0, ...`, the names inside fused loop bodies
/// (`%f12`) `%e0, ...`. `None` when it reads something that cannot be passed (a temporary of
/// another node, an integer scalar).
fn outline(g: &Graph, id: ValueId, text: &str, first_tmp: usize, locals: &[ValueId]) -> Option<Outlined> {
    let mut args: Vec<(String, String)> = Vec::new();
    let mut temps: Vec<String> = Vec::new();
    let mut fused_names: Vec<String> = Vec::new();
    let local = |names: &mut Vec<String>, name: &str| {
        names.iter().position(|t| t == name).unwrap_or_else(|| {
            names.push(name.to_string());
            names.len() - 1
        })
    };
    let mut body = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find('%') {
        body.push_str(&rest[..at]);
        let name_len = rest[at + 1..]
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(rest.len() - at - 1);
        let name = &rest[at..at + 1 + name_len];
        rest = &rest[at + 1 + name_len..];
        let numbered = |prefix: &str| {
            name.strip_prefix(prefix)
                .filter(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|n| n.parse::<usize>().ok())
        };
        let canonical = if let Some(n) = numbered("%v") {
            if n == id.0 as usize {
                "%result".to_string()
            } else if locals.contains(&ValueId(n as u32)) {
                format!("%l{}", local(&mut temps, name))
            } else {
                let t = g.ty(ValueId(n as u32));
                let ty = match (t.rank(), t.dtype) {
                    (0, DType::F32) => "f32".to_string(),
                    (0, _) => return None,
                    _ => tensor_ty(t),
                };
                param_name(&mut args, name, ty)
            }
        } else if numbered("%sym").is_some() {
            param_name(&mut args, name, "index".to_string())
        } else if let Some(n) = numbered("%t") {
            if n <= first_tmp {
                return None;
            }
            format!("%l{}", local(&mut temps, name))
        } else if numbered("%f").is_some() {
            format!("%e{}", local(&mut fused_names, name))
        } else if let Some((base, suffix)) = name.split_once('_').filter(|(b, _)| {
            b.strip_prefix("%t")
                .is_some_and(|n| !n.is_empty() && n.bytes().all(|c| c.is_ascii_digit()))
        }) {
            // A family of names made from one temporary (`%t3_rows`): renamed with it.
            if base[2..].parse::<usize>().map_or(true, |n| n <= first_tmp) {
                return None;
            }
            format!("%l{}_{suffix}", local(&mut temps, base))
        } else if let Some((base, suffix)) = name.split_once('_').filter(|(b, _)| {
            b.strip_prefix("%f")
                .is_some_and(|n| !n.is_empty() && n.bytes().all(|c| c.is_ascii_digit()))
        }) {
            // The temporaries of a fused op's math (`%f12_3`).
            format!("%e{}_{suffix}", local(&mut fused_names, base))
        } else {
            name.to_string()
        };
        body.push_str(&canonical);
    }
    body.push_str(rest);
    let result_ty = tensor_ty(g.ty(id));
    let body = write_into_destination(&body).unwrap_or_else(|| {
        let pre = body.replace("%result ", "%pre_result ");
        format!("{pre}    %result = linalg.copy ins(%pre_result : {result_ty}) outs(%dest : {result_ty}) -> {result_ty}\n")
    });
    let arg_types: Vec<&str> = args.iter().map(|(_, t)| t.as_str()).collect();
    let key = format!("({}) -> {result_ty}\n{}", arg_types.join(", "), strip_locations(&body));
    Some(Outlined {
        key,
        body,
        args,
        result_ty,
    })
}

/// The result is written into the function's last argument `%dest` (a `tensor.empty` of the
/// caller): the function returns that argument, bufferization drops the result, and the caller
/// frees a buffer it allocated itself (a function that returned a buffer of its own would leave
/// the caller checking ownership at run time, for every buffer). When the op that defines
/// `%result` writes into a `tensor.empty` used nowhere else, this is the body with that tensor
/// replaced by `%dest`; otherwise (a reshaped reduction) the caller copies.
fn write_into_destination(body: &str) -> Option<String> {
    let def = body.lines().find(|l| l.trim_start().starts_with("%result = "))?;
    let outs = &def[def.find(" outs(")? + 6..];
    let init = &outs[..outs.find([' ', ':'])?];
    let empty_line = body
        .lines()
        .find(|l| l.trim_start().starts_with(&format!("{init} = tensor.empty(")))?;
    let uses = body
        .match_indices(init)
        .filter(|(i, _)| !body[i + init.len()..].starts_with(|c: char| c.is_ascii_alphanumeric() || c == '_'))
        .count();
    if uses != 2 {
        return None;
    }
    let mut out = String::with_capacity(body.len());
    for line in body.lines() {
        if line == empty_line {
            continue;
        }
        if line == def {
            out.push_str(&line.replacen(&format!("outs({init} "), "outs(%dest ", 1));
        } else {
            out.push_str(line);
        }
        out.push('\n');
    }
    Some(out)
}

/// The canonical name of an argument read as `name`, adding it on first use.
fn param_name(args: &mut Vec<(String, String)>, name: &str, ty: String) -> String {
    let i = args.iter().position(|(a, _)| a == name).unwrap_or_else(|| {
        args.push((name.to_string(), ty));
        args.len() - 1
    });
    format!("%in{i}")
}

/// `text` without its ` loc(...)` suffixes.
fn strip_locations(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find(" loc(") {
        out.push_str(&rest[..at]);
        match rest[at..].find(')') {
            Some(end) => rest = &rest[at + end + 1..],
            None => {
                rest = "";
                break;
            }
        }
    }
    out.push_str(rest);
    out
}

fn elem(d: DType) -> &'static str {
    match d {
        DType::F32 => "f32",
        DType::I64 => "i64",
        DType::I32 => "i32",
    }
}

fn shape_str(t: &TensorType) -> String {
    let mut s = String::new();
    for d in &t.dims {
        match d {
            Dim::Static(n) => {
                let _ = write!(s, "{n}x");
            }
            Dim::Symbol(_) => s.push_str("?x"),
        }
    }
    s.push_str(elem(t.dtype));
    s
}

fn tensor_ty(t: &TensorType) -> String {
    format!("tensor<{}>", shape_str(t))
}

fn memref_ty(t: &TensorType) -> String {
    format!("memref<{}>", shape_str(t))
}

/// Computes, inside a generic body, where an output element comes from: given the output's
/// index names, pushes the lines it needs and returns the source coordinates.
type Coordinates<'a> = dyn Fn(&[String], &mut Vec<String>) -> Vec<String> + 'a;

/// Writes the scalar body of an elementwise op: given the operand names, the result name and a
/// prefix for temporaries, the lines that define the result.
type ScalarBody<'a> = dyn Fn(&[String], &str, &str) -> Vec<String> + 'a;

fn v(id: ValueId) -> String {
    format!("%v{}", id.0)
}

/// The attribute by which [`schedule`] finds the loop nests it spreads over threads.
const ROW_PARALLEL_ATTR: &str = "lmc.row_parallel";

/// Marks each `linalg.generic` of a top-level op's code to run in parallel over its leading
/// parallel dimensions (rows), all but the innermost loop, which stays a sequential, vectorizable
/// loop inside each task: `lmc.row_parallel = [1, 1, 0]` are the tile sizes [`schedule`] tiles
/// it by, added to `tile_sizes` when new. (Scan steps are never marked: they would start threads
/// once per time step.)
fn mark_row_parallel(text: &str, tile_sizes: &mut Vec<String>) -> String {
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
fn tag_row_group(body: &str, tile_sizes: &str) -> Option<(String, usize)> {
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
fn schedule(tile_sizes: &[String], row_groups: &[(String, usize)]) -> String {
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

/// `(d0, d1, d2)`
fn dims_list(rank: usize) -> String {
    let ds: Vec<String> = (0..rank).map(|i| format!("d{i}")).collect();
    format!("({})", ds.join(", "))
}

fn parallel(rank: usize) -> String {
    vec!["\"parallel\""; rank].join(", ")
}

impl Emitter<'_> {
    fn loc(&self, l: Loc) -> String {
        let file = self.g.files.get(l.file as usize).map_or("?", String::as_str);
        format!("loc(\"{}\":{}:{})", file, l.line, l.col)
    }

    /// A dimension as an SSA `index` value: a symbol's is already one, a static size becomes a
    /// constant named `name`.
    fn index_value(&mut self, d: Dim, name: &str) -> String {
        match d {
            Dim::Static(n) => {
                self.line(&format!("{name} = arith.constant {n} : index"));
                name.to_string()
            }
            Dim::Symbol(s) => format!("%sym{}", s.0),
        }
    }

    fn fresh(&mut self) -> String {
        self.tmp += 1;
        format!("%t{}", self.tmp)
    }

    fn line(&mut self, text: &str) {
        let _ = writeln!(self.body, "    {}{text}", "  ".repeat(self.indent));
    }

    /// A value's type where it is being emitted: within a block of lanes, its lane axis has the
    /// block's length.
    fn ty(&self, id: ValueId) -> TensorType {
        let mut t = self.g.ty(id).clone();
        if let Some(b) = &self.block {
            if let Some(&axis) = b.lanes.axis.get(&id) {
                t.dims[axis] = Dim::Static(b.lanes.block);
            }
        }
        t
    }

    /// A value's SSA name where it is being read: within a block of lanes, a value defined
    /// outside the scan body is read through its block's slice.
    fn name(&self, id: ValueId) -> String {
        self.block
            .as_ref()
            .and_then(|b| b.slices.get(&id).cloned())
            .unwrap_or_else(|| v(id))
    }

    fn is_scalar(&self, id: ValueId) -> bool {
        self.g.ty(id).rank() == 0
    }

    /// SSA values of the dynamic sizes of a type, in order, as `tensor.empty` wants them.
    fn dynamic_sizes(&self, t: &TensorType) -> Vec<String> {
        t.dims
            .iter()
            .filter_map(|d| match d {
                Dim::Symbol(s) if *s == BLOCK_ROWS => self.block_rows.clone(),
                Dim::Symbol(s) if *s == BLOCK_KEYS => self.block_keys.clone(),
                Dim::Symbol(s) => Some(format!("%sym{}", s.0)),
                Dim::Static(_) => None,
            })
            .collect()
    }

    /// `tensor.empty` of a type; returns its SSA name.
    fn empty(&mut self, t: &TensorType) -> String {
        let name = self.fresh();
        let sizes = self.dynamic_sizes(t).join(", ");
        self.line(&format!("{name} = tensor.empty({sizes}) : {}", tensor_ty(t)));
        name
    }

    fn emit_function(&mut self) -> String {
        let g = self.g;
        let mut args = Vec::new();
        for i in 0..g.params.len() {
            args.push(format!("%param{i}: {}", memref_ty(&self.param_ty(i))));
        }
        for (i, p) in g.inputs.iter().enumerate() {
            args.push(format!("%input{i}: {}", memref_ty(&p.ty)));
        }
        for (i, (p, _)) in g.outputs.iter().enumerate() {
            args.push(format!("%output{i}: {}", memref_ty(&p.ty)));
        }
        // Symbol values, read once from the inputs.
        let mut axes: Vec<usize> = g.symbols.iter().map(|s| s.source.1).collect();
        axes.sort_unstable();
        axes.dedup();
        for a in axes {
            self.line(&format!("%c{a} = arith.constant {a} : index"));
        }
        for (i, s) in g.symbols.iter().enumerate() {
            let (input, axis) = s.source;
            let ty = memref_ty(&g.inputs[input].ty);
            self.line(&format!("%sym{i} = memref.dim %input{input}, %c{axis} : {ty}  // {}", s.name));
        }
        // Parameters are read at the top, once each: a parameter first read inside a scan body
        // has a node there, and a later read outside gets its own node, which aliases the first.
        let mut first_read: Vec<Option<ValueId>> = vec![None; g.params.len()];
        for (n, node) in g.nodes.iter().enumerate() {
            let Op::Param(i) = node.op else { continue };
            let (id, ty, loc) = (ValueId(n as u32), &self.param_ty(i), self.loc(node.loc));
            match first_read[i] {
                None => {
                    first_read[i] = Some(id);
                    self.line(&format!(
                        "{} = bufferization.to_tensor %param{i} restrict : {} to {} {loc}",
                        v(id),
                        memref_ty(ty),
                        tensor_ty(ty)
                    ));
                }
                Some(first) => self.line(&format!(
                    "{} = tensor.cast {} : {} to {} {loc}",
                    v(id),
                    v(first),
                    tensor_ty(ty),
                    tensor_ty(ty)
                )),
            }
        }
        self.emit_region(None, 0, g.nodes.len());
        for (i, (decl, id)) in g.outputs.iter().enumerate() {
            let mut value = v(*id);
            if self.is_scalar(*id) {
                let t = self.fresh();
                self.line(&format!("{t} = tensor.from_elements {value} : tensor<f32>"));
                value = t;
            }
            self.line(&format!(
                "bufferization.materialize_in_destination {value} in restrict writable %output{i} : ({}, {}) -> ()",
                tensor_ty(&decl.ty),
                memref_ty(&decl.ty)
            ));
        }
        let mut out = String::new();
        let _ = writeln!(out, "// {} from {}", g.model, g.files.first().map_or("?", String::as_str));
        let _ = writeln!(out, "module {{");
        let _ = writeln!(
            out,
            "  func.func @{FORWARD_FUNC}({}) attributes {{llvm.emit_c_interface}} {{",
            args.join(", ")
        );
        out.push_str(&self.body);
        let _ = writeln!(out, "    return");
        let _ = writeln!(out, "  }}");
        for function in self.functions.texts("op").chain(self.functions.texts("matmul")) {
            out.push_str(function);
        }
        let schedule = schedule(&self.row_tile_sizes, &self.row_group_schedules);
        if !schedule.is_empty() {
            out = out.replacen("module {", "module attributes {transform.with_named_sequence} {", 1);
            out.push_str(&schedule);
        }
        let _ = writeln!(out, "}}");
        out
    }

    /// Emits the nodes in `start..end` that belong directly to `region`; a scan emits its own
    /// body.
    fn emit_region(&mut self, region: Option<ValueId>, start: usize, end: usize) {
        for i in start..end {
            if self.regions[i] != region {
                continue;
            }
            let id = ValueId(i as u32);
            if self.fully_fused.contains(&id) || self.reads_packed(id).is_some() || self.row_groups.grouped.contains(&id) {
                continue;
            }
            if region.is_none() && self.row_groups.members.contains_key(&id) {
                self.emit_row_group(id);
                continue;
            }
            if let Some(&(m, bias)) = self.biased.get(&id) {
                let Op::MatMul { lhs, rhs } = self.g.node(m).op else { continue };
                let loc = self.loc(self.g.node(id).loc);
                self.emit_matmul(id, (lhs, rhs), Some(bias), &loc);
                continue;
            }
            self.in_scan_body = region.is_some();
            if region.is_none() && self.outlinable(id) {
                self.emit_outlined(id);
            } else {
                self.emit_node(id);
            }
        }
    }

    /// The type parameter `i` is passed as: packed (`matmul::param_packing`) or as declared.
    fn param_ty(&self, i: usize) -> TensorType {
        let ty = &self.g.params[i].ty;
        match self.packing[i] {
            Some(p) => matmul::packed_ty(ty, p),
            None => ty.clone(),
        }
    }

    /// The packed parameter `w` if `id` is `transpose(w)`: the matmul kernel reads `w` as it
    /// is passed, so the transpose emits nothing.
    fn reads_packed(&self, id: ValueId) -> Option<usize> {
        let Op::Transpose { x } = self.g.node(id).op else { return None };
        match self.g.node(x).op {
            Op::Param(i) if self.packing[i].is_some() => Some(i),
            _ => None,
        }
    }

    /// A value passed to a function, by name: a slice is copied first. Functions take
    /// contiguous buffers (`identity-layout-map`), and bufferization would pass a strided view
    /// of a slice as if it were one: the callee would read the wrong elements.
    fn contiguous(&mut self, name: &str) -> String {
        let Some(n) = name.strip_prefix("%v").and_then(|n| n.parse::<u32>().ok()) else {
            return name.to_string();
        };
        let id = ValueId(n);
        if !matches!(self.g.node(id).op, Op::Slice { .. }) {
            return name.to_string();
        }
        let ty = self.g.ty(id).clone();
        let dest = self.empty(&ty);
        let copy = self.fresh();
        let t = tensor_ty(&ty);
        self.line(&format!("{copy} = linalg.copy ins({name} : {t}) outs({dest} : {t}) -> {t}"));
        copy
    }

    /// Whether a node of the function body becomes a call to a function of its own: every
    /// op that is a loop nest. Not views (slices), transposes that a matmul reads through,
    /// matmuls (already calls), scalars, scans (their bodies use the enclosing function's
    /// values) or the function's arguments.
    fn outlinable(&self, id: ValueId) -> bool {
        let node = self.g.node(id);
        node.ty.rank() > 0
            && matches!(
                node.op,
                Op::Binary { .. }
                    | Op::Unary { .. }
                    | Op::Reduce { .. }
                    | Op::ToFloat { .. }
                    | Op::Gather { .. }
                    | Op::Tabulate { .. }
                    | Op::SplitHeads { .. }
                    | Op::MergeHeads { .. }
                    | Op::Attention { .. }
                    | Op::Arange(_)
            )
    }

    /// Emits a node as a call to a private function that computes it from the values it
    /// reads. Nodes that compute the same thing from values of the same types (a layer's ops,
    /// repeated in every layer) share one function: BERT-base's forward function shrinks twelve
    /// times, and LLVM, whose time grows faster than a function's size, compiles it in a
    /// fraction of the time.
    fn emit_outlined(&mut self, id: ValueId) {
        let first_tmp = self.tmp;
        let saved = std::mem::take(&mut self.body);
        self.emit_node(id);
        let text = std::mem::replace(&mut self.body, saved);
        // An attention is already a parallel loop over its blocks of rows; on a GPU every loop
        // nest is parallel already.
        let text = if matches!(self.g.node(id).op, Op::Attention { .. }) || self.target.is_gpu() {
            text
        } else {
            mark_row_parallel(&text, &mut self.row_tile_sizes)
        };
        match outline(self.g, id, &text, first_tmp, &[]) {
            Some(f) => self.call_outlined(id, &f),
            None => self.body.push_str(&text),
        }
    }

    /// Calls the function `f` computes node `id` with (defined on first use).
    fn call_outlined(&mut self, id: ValueId, f: &Outlined) {
        let name = self.functions.get_or_define("op", f.key.clone(), |name| f.define(name));
        let mut args: Vec<String> = f.args.iter().map(|(a, _)| self.contiguous(a)).collect();
        let mut types: Vec<&str> = f.args.iter().map(|(_, t)| t.as_str()).collect();
        args.push(self.empty(self.g.ty(id)));
        types.push(&f.result_ty);
        self.line(&format!(
            "{} = func.call {name}({}) : ({}) -> {} {}",
            v(id),
            args.join(", "),
            types.join(", "),
            f.result_ty,
            self.loc(self.g.node(id).loc)
        ));
    }

    /// A row group (see [`fuse::row_groups`]) as a call to a function of its own. The function
    /// computes the group's ops one after the other, each over the whole tensor (those the
    /// others compute inside their own loops left out), and the schedule then tiles the root
    /// into a parallel loop over rows and fuses the others into it: each row is computed from
    /// start to end while it is in cache, in one parallel loop instead of one per op.
    fn emit_row_group(&mut self, root: ValueId) {
        let first_tmp = self.tmp;
        let saved = std::mem::take(&mut self.body);
        let members = self.row_groups.members.get(&root).cloned().unwrap_or_default();
        self.in_row_group = true;
        for &m in &members {
            if !self.row_groups.inlined.contains(&m) {
                self.emit_node(m);
            }
        }
        self.emit_node(root);
        self.in_row_group = false;
        let text = std::mem::replace(&mut self.body, saved);
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

    /// A dimension as an `index` SSA value (or constant).
    fn dim_value(&mut self, d: Dim) -> String {
        match d {
            Dim::Symbol(s) => format!("%sym{}", s.0),
            Dim::Static(n) => {
                let c = self.fresh();
                self.line(&format!("{c} = arith.constant {n} : index"));
                c
            }
        }
    }

    /// Offsets, sizes and strides of the slice of a tensor of type `t` at step `iv` of `axis`.
    fn step_slice(&self, t: &TensorType, axis: usize, iv: &str) -> String {
        let mut offsets = Vec::new();
        let mut sizes = Vec::new();
        for (k, d) in t.dims.iter().enumerate() {
            if k == axis {
                offsets.push(iv.to_string());
                sizes.push("1".to_string());
            } else {
                offsets.push("0".to_string());
                sizes.push(dim_size(*d));
            }
        }
        format!(
            "[{}] [{}] [{}]",
            offsets.join(", "),
            sizes.join(", "),
            vec!["1"; t.rank()].join(", ")
        )
    }

    /// A scan: one loop over time per block of lanes when it has lanes (see
    /// [`Emitter::emit_blocked_scan`]), otherwise one loop over time.
    fn emit_scan(&mut self, id: ValueId, s: &Scan, loc: &str) {
        // Only a scan of the function body: one nested in another scan's body would start its
        // threads once per step of the outer one.
        // On a GPU, each step's ops are parallel loops of their own.
        if self.regions[id.0 as usize].is_none() && !self.target.is_gpu() {
            if let Some(lanes) = lanes::plan(self.g, id, s, &self.regions) {
                self.emit_blocked_scan(id, s, lanes, loc);
                return;
            }
        }
        let n = id.0 as usize;
        let finals: Vec<String> = (0..s.init.len())
            .map(|k| v(ValueId((n + 1 + s.outputs.len() + k) as u32)))
            .collect();
        let stacked: Vec<String> = (0..s.outputs.len()).map(|k| v(ValueId((n + 1 + k) as u32))).collect();
        let inits: Vec<String> = s.init.iter().map(|i| self.name(*i)).collect();
        self.emit_scan_loop(id, s, &inits, None, &finals, &stacked, loc);
    }

    /// A scan split into blocks of lanes: an `scf.forall` over the blocks (threads, once
    /// lowered) whose body is the scan's loop over time on that block's slices, so a block's
    /// states stay in cache for the whole sequence. Each block writes its slice of the results.
    fn emit_blocked_scan(&mut self, id: ValueId, s: &Scan, lanes: lanes::Lanes, loc: &str) {
        let g = self.g;
        let n = id.0 as usize;
        let start = s.body_start.0 as usize;
        let prefix = format!("%s{n}");
        let results: Vec<ValueId> = (0..s.result_count()).map(|k| ValueId((n + 1 + k) as u32)).collect();
        let shared: Vec<String> = results.iter().map(|r| self.empty(g.ty(*r))).collect();
        let blocks = match lanes.size {
            Dim::Static(size) => {
                self.line(&format!("{prefix}_blocks = arith.constant {} : index", size / lanes.block));
                format!("{prefix}_blocks")
            }
            Dim::Symbol(sym) => format!("%sym{}", sym.0),
        };
        self.line(&format!("{prefix}_lanes = arith.constant {} : index", lanes.block));
        let full_types: Vec<String> = results.iter().map(|r| tensor_ty(g.ty(*r))).collect();
        let shared_outs: Vec<String> = shared.iter().enumerate().map(|(k, e)| format!("{prefix}_out{k} = {e}")).collect();
        let names: Vec<String> = results.iter().map(|r| v(*r)).collect();
        self.line(&format!(
            "{} = scf.forall ({prefix}_block) in ({blocks}) shared_outs({}) -> ({}) {{",
            names.join(", "),
            shared_outs.join(", "),
            full_types.join(", ")
        ));
        self.line(&format!("  {prefix}_at = arith.muli {prefix}_block, {prefix}_lanes : index"));
        let at = format!("{prefix}_at");
        // The slices of the values defined outside the body (the body's parameters included:
        // they are read at the top of the function), in value order.
        let mut outer: Vec<(ValueId, usize)> = lanes
            .axis
            .iter()
            .map(|(v, a)| (*v, *a))
            .filter(|(v, _)| {
                let i = v.0 as usize;
                i < start || (i < n && matches!(g.node(*v).op, Op::Param(_)))
            })
            .collect();
        outer.sort_unstable();
        let block = lanes.block;
        // Offsets, sizes and strides of a value's slice for this block.
        let block_slice = |t: &TensorType, axis: usize| {
            let mut offsets = vec!["0".to_string(); t.rank()];
            offsets[axis] = at.clone();
            let mut sizes: Vec<String> = t.dims.iter().map(|d| dim_size(*d)).collect();
            sizes[axis] = block.to_string();
            format!(
                "[{}] [{}] [{}]",
                offsets.join(", "),
                sizes.join(", "),
                vec!["1"; t.rank()].join(", ")
            )
        };
        let result_axes: Vec<usize> = results.iter().map(|r| lanes.axis[r]).collect();
        // From here on `self.ty` gives the block's types.
        self.block = Some(Block {
            lanes,
            slices: std::collections::HashMap::new(),
        });
        self.indent += 1;
        for (value, axis) in outer {
            let t = g.ty(value);
            let name = format!("{prefix}_in{}", value.0);
            let line = format!(
                "{name} = tensor.extract_slice {}{} : {} to {}",
                v(value),
                block_slice(t, axis),
                tensor_ty(t),
                tensor_ty(&self.ty(value))
            );
            self.line(&line);
            if let Some(b) = self.block.as_mut() {
                b.slices.insert(value, name);
            }
        }
        // Each result's slice for this block: (name, slice, block type, full type).
        let mut result_slices = Vec::new();
        for (k, (r, axis)) in results.iter().zip(result_axes).enumerate() {
            let t = g.ty(*r);
            let slice = block_slice(t, axis);
            let name = format!("{prefix}_part{k}");
            let (part_ty, full_ty) = (tensor_ty(&self.ty(*r)), tensor_ty(t));
            self.line(&format!(
                "{name} = tensor.extract_slice {prefix}_out{k}{slice} : {full_ty} to {part_ty}"
            ));
            result_slices.push((name, slice, part_ty, full_ty));
        }
        // Each state starts as a copy of its initial value in its final value's slice, where
        // the loop then updates it in place.
        let mut inits = Vec::new();
        for (k, init) in s.init.iter().enumerate() {
            let (part, _, ty, _) = &result_slices[s.outputs.len() + k];
            let state = format!("{prefix}_init{k}");
            self.line(&format!(
                "{state} = linalg.copy ins({} : {ty}) outs({part} : {ty}) -> {ty}",
                self.name(*init)
            ));
            inits.push(state);
        }
        let stacked: Vec<String> = result_slices[..s.outputs.len()].iter().map(|r| r.0.clone()).collect();
        let finals: Vec<String> = (0..s.init.len()).map(|k| format!("{prefix}_final{k}")).collect();
        let outputs: Vec<String> = (0..s.outputs.len()).map(|k| format!("{prefix}_stacked{k}")).collect();
        self.emit_scan_loop(id, s, &inits, Some(&stacked), &finals, &outputs, loc);
        self.block = None;
        self.line("scf.forall.in_parallel {");
        for (k, (_, slice, part_ty, full_ty)) in result_slices.iter().enumerate() {
            let value = if k < s.outputs.len() {
                &outputs[k]
            } else {
                &finals[k - s.outputs.len()]
            };
            self.line(&format!(
                "  tensor.parallel_insert_slice {value} into {prefix}_out{k}{slice} : {part_ty} into {full_ty}"
            ));
        }
        self.line("}");
        self.indent -= 1;
        self.line(&format!("}} {loc}"));
    }

    /// A scan's loop over time: an `scf.for` over the axis whose iteration arguments are the
    /// states (starting from `inits`) and the stacked outputs (written into `accumulators`, or
    /// new tensors); each step extracts its slices, runs the body and inserts its outputs. The
    /// loop's results are named `finals` (the states) and `stacked` (the outputs).
    #[allow(clippy::too_many_arguments)]
    fn emit_scan_loop(
        &mut self,
        id: ValueId,
        s: &Scan,
        inits: &[String],
        accumulators: Option<&[String]>,
        finals: &[String],
        stacked: &[String],
        loc: &str,
    ) {
        let g = self.g;
        let n = id.0 as usize;
        let start = s.body_start.0 as usize;
        let prefix = format!("%s{n}");
        self.line(&format!("{prefix}_c0 = arith.constant 0 : index"));
        self.line(&format!("{prefix}_c1 = arith.constant 1 : index"));
        let length = self.dim_value(g.ty(s.xs[0]).dims[s.axis]);
        let result_ty = |e: &Self, k: usize| e.ty(ValueId((n + 1 + k) as u32));
        let accumulators: Vec<String> = match accumulators {
            Some(given) => given.to_vec(),
            None => (0..s.outputs.len()).map(|k| self.empty(&result_ty(self, k))).collect(),
        };
        let value_ty = |t: &TensorType| if t.rank() == 0 { elem(t.dtype).to_string() } else { tensor_ty(t) };
        let mut names = Vec::new();
        let mut iter_args = Vec::new();
        let mut types = Vec::new();
        for (k, init) in s.init.iter().enumerate() {
            names.push(finals[k].clone());
            iter_args.push(format!("{} = {}", v(ValueId((start + k) as u32)), inits[k]));
            types.push(value_ty(&self.ty(*init)));
        }
        for (k, acc) in accumulators.iter().enumerate() {
            names.push(stacked[k].clone());
            iter_args.push(format!("{prefix}_acc{k} = {acc}"));
            types.push(tensor_ty(&result_ty(self, k)));
        }
        self.line(&format!(
            "{} = scf.for {prefix}_iv = {prefix}_c0 to {length} step {prefix}_c1 iter_args({}) -> ({}) {{",
            names.join(", "),
            iter_args.join(", "),
            types.join(", ")
        ));
        let iv = format!("{prefix}_iv");
        for (k, x) in s.xs.iter().enumerate() {
            let arg = ValueId((start + s.init.len() + k) as u32);
            let (xt, at) = (&self.ty(*x), &self.ty(arg));
            let x = &self.name(*x);
            if at.rank() == 0 {
                let idx: Vec<String> = (0..xt.rank())
                    .map(|a| if a == s.axis { iv.clone() } else { format!("{prefix}_c0") })
                    .collect();
                self.line(&format!("{} = tensor.extract {x}[{}] : {}", v(arg), idx.join(", "), tensor_ty(xt)));
            } else {
                self.line(&format!(
                    "{} = tensor.extract_slice {x}{} : {} to {}",
                    v(arg),
                    self.step_slice(xt, s.axis, &iv),
                    tensor_ty(xt),
                    tensor_ty(at)
                ));
            }
        }
        self.emit_region(Some(id), start, n);
        // Each new state is copied into its iteration argument, so bufferization updates the
        // state's buffer in place instead of yielding a new buffer every step.
        let mut yields = Vec::new();
        for (k, next) in s.next.iter().enumerate() {
            let t = &self.ty(*next);
            if t.rank() == 0 {
                yields.push(v(*next));
                continue;
            }
            let state = v(ValueId((start + k) as u32));
            let updated = format!("{prefix}_state{k}");
            let ty = tensor_ty(t);
            self.line(&format!(
                "{updated} = linalg.copy ins({} : {ty}) outs({state} : {ty}) -> {ty}",
                v(*next)
            ));
            yields.push(updated);
        }
        for (k, out) in s.outputs.iter().enumerate() {
            let (ot, st) = (&self.ty(*out), result_ty(self, k));
            let updated = format!("{prefix}_upd{k}");
            if ot.rank() == 0 {
                let idx: Vec<String> = (0..st.rank())
                    .map(|a| if a == s.axis { iv.clone() } else { format!("{prefix}_c0") })
                    .collect();
                self.line(&format!(
                    "{updated} = tensor.insert {} into {prefix}_acc{k}[{}] : {}",
                    v(*out),
                    idx.join(", "),
                    tensor_ty(&st)
                ));
            } else {
                // Copy into the accumulator's slice, then insert that slice back: bufferization
                // turns the pair into an in-place write (a plain insert of a fresh value would
                // become a strided `memref.copy`, which needs MLIR's C runner library).
                let slice = self.step_slice(&st, s.axis, &iv);
                let (full, part) = (tensor_ty(&st), tensor_ty(ot));
                self.line(&format!(
                    "{prefix}_dst{k} = tensor.extract_slice {prefix}_acc{k}{slice} : {full} to {part}"
                ));
                self.line(&format!(
                    "{prefix}_cp{k} = linalg.copy ins({} : {part}) outs({prefix}_dst{k} : {part}) -> {part}",
                    v(*out)
                ));
                self.line(&format!(
                    "{updated} = tensor.insert_slice {prefix}_cp{k} into {prefix}_acc{k}{slice} : {part} into {full}"
                ));
            }
            yields.push(updated);
        }
        self.line(&format!("  scf.yield {} : {}", yields.join(", "), types.join(", ")));
        self.line(&format!("}} {loc}"));
    }

    fn emit_node(&mut self, id: ValueId) {
        let g = self.g;
        let node = &g.nodes[id.0 as usize];
        let loc = self.loc(node.loc);
        let out = v(id);
        let ty = &self.ty(id);
        match &node.op {
            // Read at the top of the function (`emit_function`).
            Op::Param(_) => {}
            Op::Input(i) => self.line(&format!(
                "{out} = bufferization.to_tensor %input{i} restrict : {} to {} {loc}",
                memref_ty(ty),
                tensor_ty(ty)
            )),
            // A carried cache is read from its output's buffer, which the step may write: its
            // new value is written there in place (`emit_write_rows`).
            Op::Carry(k) => self.line(&format!(
                "{out} = bufferization.to_tensor %output{k} restrict writable : {} to {} {loc}",
                memref_ty(ty),
                tensor_ty(ty)
            )),
            Op::Constant(c) => self.line(&format!("{out} = arith.constant {} : f32 {loc}", f32_literal(*c))),
            Op::Arange(_) => {
                let e = self.empty(ty);
                self.line(&format!(
                    "{out} = linalg.generic {{indexing_maps = [affine_map<(d0) -> (d0)>], iterator_types = [\"parallel\"]}} outs({e} : {}) {{",
                    tensor_ty(ty)
                ));
                self.line("^bb0(%o: i64):");
                self.line("  %i = linalg.index 0 : index");
                self.line("  %r = arith.index_cast %i : index to i64");
                self.line("  linalg.yield %r : i64");
                self.line(&format!("}} -> {} {loc}", tensor_ty(ty)));
            }
            Op::Gather { table, indices } => self.emit_gather(id, *table, *indices, &loc),
            Op::Binary { .. } | Op::Unary { .. } | Op::ToFloat { .. } if (self.in_scan_body || self.in_row_group) && ty.rank() > 0 => {
                self.emit_fused(id, &loc)
            }
            Op::Reduce { op, x, .. } if self.in_row_group => self.emit_row_reduce(id, *op, *x, &loc),
            Op::Binary { op, lhs, rhs } => {
                let name = binary_op(*op);
                self.emit_elementwise(id, &[*lhs, *rhs], &loc, &|args, res, _| {
                    vec![format!("{res} = {name} {}, {} : f32", args[0], args[1])]
                });
            }
            Op::Unary { op, x } => {
                let op = *op;
                self.emit_elementwise(id, &[*x], &loc, &move |args, res, tmp| unary_body(op, &args[0], res, tmp));
            }
            Op::Reduce { op, x, axis, keepdim } => self.emit_reduce(id, *op, *x, *axis, *keepdim, &loc),
            Op::ToFloat { x } => {
                let from = elem(g.ty(*x).dtype);
                self.emit_elementwise(id, &[*x], &loc, &move |args, res, _| {
                    vec![format!("{res} = arith.sitofp {} : {from} to f32", args[0])]
                });
            }
            Op::Transpose { x } => {
                let (x, xt) = (self.name(*x), self.ty(*x));
                self.emit_transpose(Some(&out), &x, &xt, &loc);
            }
            Op::MatMul { lhs, rhs } => self.emit_matmul(id, (*lhs, *rhs), None, &loc),
            Op::SplitHeads { x, heads } => self.emit_split_heads(id, *x, *heads, &loc),
            Op::MergeHeads { x } => self.emit_merge_heads(id, *x, &loc),
            Op::Tabulate { f } => self.emit_tabulate(id, f, &loc),
            Op::Slice { x, axis, start, length } => {
                let xt = self.ty(*x);
                let mut offsets = Vec::new();
                let mut sizes = Vec::new();
                for (k, d) in xt.dims.iter().enumerate() {
                    if k == *axis {
                        offsets.push(start.to_string());
                        sizes.push(length.to_string());
                    } else {
                        offsets.push("0".to_string());
                        sizes.push(dim_size(*d));
                    }
                }
                let strides = vec!["1"; xt.rank()].join(", ");
                self.line(&format!(
                    "{out} = tensor.extract_slice {}[{}] [{}] [{strides}] : {} to {} {loc}",
                    self.name(*x),
                    offsets.join(", "),
                    sizes.join(", "),
                    tensor_ty(&xt),
                    tensor_ty(ty)
                ));
            }
            Op::WriteRows { base, rows, axis, at } => self.emit_write_rows(id, [*base, *rows, *at], *axis, &loc),
            Op::WriteRing { base, rows, axis, at } => self.emit_write_ring(id, [*base, *rows, *at], *axis, &loc),
            Op::Attention {
                q,
                k,
                v,
                scale,
                mask,
                score,
            } => self.emit_attention(id, [*q, *k, *v], *scale, mask.as_ref(), score.as_ref(), &loc),
            Op::Scan(s) => self.emit_scan(id, s, &loc),
            // Defined by their scan: the loop's iteration arguments, slices and results.
            Op::ScanArg(_) | Op::ScanResult { .. } => {}
        }
    }

    /// `x` with its last two axes swapped, named `out` (or a fresh name); returns the result's
    /// name and type.
    fn emit_transpose(&mut self, out: Option<&str>, x: &str, xt: &TensorType, loc: &str) -> (String, TensorType) {
        let mut ty = xt.clone();
        let r = ty.rank();
        ty.dims.swap(r - 1, r - 2);
        let mut perm: Vec<String> = (0..r).map(|p| p.to_string()).collect();
        perm.swap(r - 1, r - 2);
        let e = self.empty(&ty);
        let out = out.map_or_else(|| self.fresh(), str::to_string);
        self.line(&format!(
            "{out} = linalg.transpose ins({x} : {}) outs({e} : {}) permutation = [{}] {loc}",
            tensor_ty(xt),
            tensor_ty(&ty),
            perm.join(", ")
        ));
        (out, ty)
    }

    /// An elementwise op with numpy broadcasting. Scalar operands are captured, not iterated.
    fn emit_elementwise(&mut self, id: ValueId, operands: &[ValueId], loc: &str, body: &ScalarBody<'_>) {
        let ty = &self.ty(id);
        let out = v(id);
        if ty.rank() == 0 {
            // All operands are scalars: plain arith at the top level.
            let args: Vec<String> = operands.iter().map(|o| self.name(*o)).collect();
            for l in body(&args, &out, &format!("{out}_")) {
                self.line(&format!("{l} {loc}"));
            }
            return;
        }
        let rank = ty.rank();
        let mut maps = Vec::new();
        let mut ins = Vec::new();
        let mut in_types = Vec::new();
        let mut block_args = Vec::new();
        let mut body_args = Vec::new();
        let identity = loop_indices(rank);
        for (k, o) in operands.iter().enumerate() {
            if self.is_scalar(*o) {
                body_args.push(self.name(*o));
                continue;
            }
            let ot = self.ty(*o);
            let exprs = broadcast_read(&ot, ty, &identity);
            maps.push(format!("affine_map<{} -> ({})>", dims_list(rank), exprs.join(", ")));
            ins.push(self.name(*o));
            in_types.push(tensor_ty(&ot));
            block_args.push(format!("%a{k}: {}", elem(ot.dtype)));
            body_args.push(format!("%a{k}"));
        }
        maps.push(format!("affine_map<{} -> {}>", dims_list(rank), dims_list(rank)));
        let e = self.empty(ty);
        let ins_clause = if ins.is_empty() {
            String::new()
        } else {
            format!("ins({} : {}) ", ins.join(", "), in_types.join(", "))
        };
        self.line(&format!(
            "{out} = linalg.generic {{indexing_maps = [{}], iterator_types = [{}]}} {ins_clause}outs({e} : {}) {{",
            maps.join(", "),
            parallel(rank),
            tensor_ty(ty)
        ));
        block_args.push(format!("%o: {}", elem(ty.dtype)));
        self.line(&format!("^bb0({}):", block_args.join(", ")));
        for l in body(&body_args, "%r", "%r") {
            self.line(&format!("  {l}"));
        }
        self.line(&format!("  linalg.yield %r : {}", elem(ty.dtype)));
        self.line(&format!("}} -> {} {loc}", tensor_ty(ty)));
    }

    /// An elementwise op of a scan body as one loop nest that also computes the ops fused into
    /// it (see [`fuse`]).
    fn emit_fused(&mut self, id: ValueId, loc: &str) {
        let ty = self.ty(id);
        let rank = ty.rank();
        let mut fused = FusedBody {
            rank,
            ..FusedBody::default()
        };
        let value = self.fused_op(id, &loop_indices(rank), &mut fused);
        let e = self.empty(&ty);
        let out = Generic {
            name: &v(id),
            map: &dims_list(rank),
            iterators: &parallel(rank),
            init: &e,
            ty: &tensor_ty(&ty),
            arg: &format!("%o: {}", elem(ty.dtype)),
        };
        let tail = [format!("linalg.yield {value} : {}", elem(ty.dtype))];
        self.emit_fused_generic(&fused, &out, &tail, loc);
    }

    /// A `linalg.generic` computing `fused` into `out`, its body ending with `tail`.
    fn emit_fused_generic(&mut self, fused: &FusedBody, out: &Generic<'_>, tail: &[String], loc: &str) {
        let rank = fused.rank;
        let mut maps: Vec<String> = fused.inputs.iter().map(|i| i.2.clone()).collect();
        maps.push(format!("affine_map<{} -> {}>", dims_list(rank), out.map));
        self.line(&format!(
            "{} = linalg.generic {{indexing_maps = [{}], iterator_types = [{}]}} {}outs({} : {}) {{",
            out.name,
            maps.join(", "),
            out.iterators,
            ins_clause(fused),
            out.init,
            out.ty
        ));
        let mut args: Vec<String> = fused.inputs.iter().enumerate().map(|(k, i)| format!("%a{k}: {}", i.3)).collect();
        args.push(out.arg.to_string());
        self.line(&format!("^bb0({}):", args.join(", ")));
        for l in fused.lines.iter().chain(tail) {
            self.line(&format!("  {l}"));
        }
        self.line(&format!("}} -> {} {loc}", out.ty));
    }

    /// The element of `operand` that op `user` reads, where `at` indexes each of the operand's
    /// axes in the loop nest's dimensions: computed in place when fused, else read from an input.
    fn fused_value(&mut self, user: ValueId, operand: ValueId, at: &[String], body: &mut FusedBody) -> String {
        if self.is_scalar(operand) {
            return self.name(operand);
        }
        if self.row_groups.inlined.contains(&operand) {
            return self.fused_op(operand, at, body);
        }
        if fuse::fused_into(self.g, &self.regions, &self.uses, user, operand) {
            if let Some((read, axes)) = fuse::view_axes(self.g, operand) {
                let read_at: Vec<String> = axes.iter().map(|a| a.map_or("0".to_string(), |p| at[p].clone())).collect();
                return self.fused_value(operand, read, &read_at, body);
            }
            return self.fused_op(operand, at, body);
        }
        self.fused_input(operand, at, body)
    }

    /// The element of `value` at `at`, read from an input of the loop nest (each input once).
    fn fused_input(&mut self, value: ValueId, at: &[String], body: &mut FusedBody) -> String {
        let (name, ty) = (self.name(value), self.ty(value));
        let map = format!("affine_map<{} -> ({})>", dims_list(body.rank), at.join(", "));
        if let Some(k) = body.inputs.iter().position(|i| i.0 == name && i.2 == map) {
            return format!("%a{k}");
        }
        body.inputs.push((name, tensor_ty(&ty), map, elem(ty.dtype)));
        format!("%a{}", body.inputs.len() - 1)
    }

    /// The element of elementwise op `id` at `at`, computed from its operands' elements.
    fn fused_op(&mut self, id: ValueId, at: &[String], body: &mut FusedBody) -> String {
        let g = self.g;
        let ty = self.ty(id);
        let (res, tmp) = (format!("%f{}", id.0), format!("%f{}_", id.0));
        if body.computed.iter().any(|(c, c_at)| *c == id && c_at == at) {
            return res;
        }
        match g.node(id).op {
            Op::Binary { op, lhs, rhs } => {
                let mut args = Vec::new();
                for o in [lhs, rhs] {
                    let read_at = broadcast_read(&self.ty(o), &ty, at);
                    args.push(self.fused_value(id, o, &read_at, body));
                }
                body.lines.push(format!("{res} = {} {}, {} : f32", binary_op(op), args[0], args[1]));
            }
            Op::Unary { op, x } => {
                let a = self.fused_value(id, x, at, body);
                body.lines.extend(unary_body(op, &a, &res, &tmp));
            }
            Op::ToFloat { x } => {
                let from = elem(g.ty(x).dtype);
                let a = self.fused_value(id, x, at, body);
                body.lines.push(format!("{res} = arith.sitofp {a} : {from} to f32"));
            }
            // Only elementwise ops are fused (`fuse::fused_into`); anything else is read.
            _ => return self.fused_input(id, at, body),
        }
        body.computed.push((id, at.to_vec()));
        res
    }

    fn emit_gather(&mut self, id: ValueId, table: ValueId, indices: ValueId, loc: &str) {
        let g = self.g;
        let ty = g.ty(id).clone();
        let tt = g.ty(table).clone();
        let it = g.ty(indices).clone();
        let rank = ty.rank();
        let ki = it.rank();
        let rows = match tt.dims[0] {
            Dim::Static(n) => n,
            Dim::Symbol(_) => unreachable!("the checker requires a static row count"),
        };
        let e = self.empty(&ty);
        let idx_map: Vec<String> = (0..ki).map(|i| format!("d{i}")).collect();
        self.line(&format!(
            "{} = linalg.generic {{indexing_maps = [affine_map<{} -> ({})>, affine_map<{} -> {}>], iterator_types = [{}]}} ins({} : {}) outs({e} : {}) {{",
            v(id),
            dims_list(rank),
            idx_map.join(", "),
            dims_list(rank),
            dims_list(rank),
            parallel(rank),
            v(indices),
            tensor_ty(&it),
            tensor_ty(&ty)
        ));
        self.line(&format!("^bb0(%idx: {}, %o: {}):", elem(it.dtype), elem(ty.dtype)));
        self.line(&format!("  %i = arith.index_cast %idx : {} to index", elem(it.dtype)));
        // Clamp, so an unchecked caller cannot read out of bounds.
        self.line("  %zero = arith.constant 0 : index");
        self.line(&format!("  %last = arith.constant {} : index", rows - 1));
        self.line("  %lo = arith.maxsi %i, %zero : index");
        self.line("  %row = arith.minsi %lo, %last : index");
        let mut coords = vec!["%row".to_string()];
        for k in ki..rank {
            self.line(&format!("  %j{k} = linalg.index {k} : index"));
            coords.push(format!("%j{k}"));
        }
        self.line(&format!(
            "  %r = tensor.extract {}[{}] : {}",
            v(table),
            coords.join(", "),
            tensor_ty(&tt)
        ));
        self.line(&format!("  linalg.yield %r : {}", elem(ty.dtype)));
        self.line(&format!("}} -> {} {loc}", tensor_ty(&ty)));
    }

    fn emit_reduce(&mut self, id: ValueId, op: ReduceOp, x: ValueId, axis: usize, keepdim: bool, loc: &str) {
        let xt = self.ty(x);
        let rank = xt.rank();
        let mut reduced = xt.clone();
        reduced.dims.remove(axis);
        // Sum into a zero-filled accumulator.
        let e = self.empty(&reduced);
        let zero = self.fresh();
        self.line(&format!("{zero} = arith.constant 0.0 : f32"));
        let filled = self.fresh();
        self.line(&format!(
            "{filled} = linalg.fill ins({zero} : f32) outs({e} : {}) -> {}",
            tensor_ty(&reduced),
            tensor_ty(&reduced)
        ));
        let out_dims: Vec<String> = (0..rank).filter(|&i| i != axis).map(|i| format!("d{i}")).collect();
        let iters: Vec<&str> = (0..rank)
            .map(|i| if i == axis { "\"reduction\"" } else { "\"parallel\"" })
            .collect();
        let sum = self.fresh();
        if self.in_scan_body && rank > 0 {
            // The reduced value's ops are computed inside the reduction's loop nest.
            let mut fused = FusedBody {
                rank,
                ..FusedBody::default()
            };
            let value = self.fused_value(id, x, &loop_indices(rank), &mut fused);
            let out = Generic {
                name: &sum,
                map: &format!("({})", out_dims.join(", ")),
                iterators: &iters.join(", "),
                init: &filled,
                ty: &tensor_ty(&reduced),
                arg: "%acc: f32",
            };
            let tail = [format!("%r = arith.addf {value}, %acc : f32"), "linalg.yield %r : f32".to_string()];
            self.emit_fused_generic(&fused, &out, &tail, loc);
            return self.finish_reduce(id, op, &xt, axis, keepdim, sum, loc);
        }
        self.line(&format!(
            "{sum} = linalg.generic {{indexing_maps = [affine_map<{} -> {}>, affine_map<{} -> ({})>], iterator_types = [{}]}} ins({} : {}) outs({filled} : {}) {{",
            dims_list(rank),
            dims_list(rank),
            dims_list(rank),
            out_dims.join(", "),
            iters.join(", "),
            self.name(x),
            tensor_ty(&xt),
            tensor_ty(&reduced)
        ));
        self.line("^bb0(%a: f32, %acc: f32):");
        self.line("  %r = arith.addf %a, %acc : f32");
        self.line("  linalg.yield %r : f32");
        self.line(&format!("}} -> {} {loc}", tensor_ty(&reduced)));
        self.finish_reduce(id, op, &xt, axis, keepdim, sum, loc);
    }

    /// A row group's reduction of the last axis, keeping it (see [`fuse::row_groups`]): the
    /// loop nest has one more dimension than the result, the kept axis (length 1) and the
    /// reduced one after it, so that the result is written as it is typed, `[rows..., 1]`,
    /// and no reshape stands between it and the ops the schedule fuses.
    fn emit_row_reduce(&mut self, id: ValueId, op: ReduceOp, x: ValueId, loc: &str) {
        let ty = self.ty(id);
        let xt = self.ty(x);
        let rank = ty.rank();
        let e = self.empty(&ty);
        let zero = self.fresh();
        self.line(&format!("{zero} = arith.constant 0.0 : f32"));
        let filled = self.fresh();
        let t = tensor_ty(&ty);
        self.line(&format!("{filled} = linalg.fill ins({zero} : f32) outs({e} : {t}) -> {t}"));
        let mut fused = FusedBody {
            rank: rank + 1,
            ..FusedBody::default()
        };
        let mut at: Vec<String> = (0..rank - 1).map(|i| format!("d{i}")).collect();
        at.push(format!("d{rank}"));
        let value = self.fused_value(id, x, &at, &mut fused);
        let sum = if op == ReduceOp::Mean { self.fresh() } else { v(id) };
        let mut iterators = vec!["\"parallel\""; rank];
        iterators.push("\"reduction\"");
        let out = Generic {
            name: &sum,
            map: &dims_list(rank),
            iterators: &iterators.join(", "),
            init: &filled,
            ty: &t,
            arg: "%acc: f32",
        };
        let tail = [
            format!("%r = arith.addf {value}, %acc fastmath<reassoc> : f32"),
            "linalg.yield %r : f32".to_string(),
        ];
        self.emit_fused_generic(&fused, &out, &tail, loc);
        if op == ReduceOp::Mean {
            let n = self.axis_length(xt.dims[rank - 1]);
            self.emit_divide(&sum, &ty, &n, Some(v(id)), loc);
        }
    }

    /// `sum / n` elementwise (`sum` of type `t`, `n` an `f32`): a mean's division. Named `out`,
    /// or a fresh name after its destination's; returns the name.
    fn emit_divide(&mut self, sum: &str, t: &TensorType, n: &str, out: Option<String>, loc: &str) -> String {
        let e = self.empty(t);
        let out = out.unwrap_or_else(|| self.fresh());
        let (rank, ty) = (t.rank(), tensor_ty(t));
        let map = format!("affine_map<{} -> {}>", dims_list(rank), dims_list(rank));
        self.line(&format!(
            "{out} = linalg.generic {{indexing_maps = [{map}, {map}], iterator_types = [{}]}} ins({sum} : {ty}) outs({e} : {ty}) {{",
            parallel(rank)
        ));
        self.line("^bb0(%a: f32, %o: f32):");
        self.line(&format!("  %r = arith.divf %a, {n} : f32"));
        self.line("  linalg.yield %r : f32");
        self.line(&format!("}} -> {ty} {loc}"));
        out
    }

    /// The length of an axis as an `f32` SSA value, known now or read from a symbol: what a
    /// mean divides by.
    fn axis_length(&mut self, d: Dim) -> String {
        let n = self.fresh();
        match d {
            Dim::Static(k) => self.line(&format!("{n} = arith.constant {} : f32", f32_literal(k as f64))),
            Dim::Symbol(s) => {
                let as_int = self.fresh();
                self.line(&format!("{as_int} = arith.index_cast %sym{} : index to i64", s.0));
                self.line(&format!("{n} = arith.sitofp {as_int} : i64 to f32"));
            }
        }
        n
    }

    /// The rest of a reduction of `xt` whose sum is `sum`: the division of a mean, and the
    /// result's shape.
    #[allow(clippy::too_many_arguments)]
    fn finish_reduce(&mut self, id: ValueId, op: ReduceOp, xt: &TensorType, axis: usize, keepdim: bool, sum: String, loc: &str) {
        let mut reduced = xt.clone();
        reduced.dims.remove(axis);
        let mut result = sum;
        if op == ReduceOp::Mean {
            let n = self.axis_length(xt.dims[axis]);
            result = self.emit_divide(&result, &reduced, &n, None, loc);
        }
        let ty = self.ty(id);
        let out = v(id);
        if ty.rank() == 0 {
            self.line(&format!("{out} = tensor.extract {result}[] : tensor<f32> {loc}"));
        } else if keepdim {
            // Reinsert the reduced axis as size 1, grouped with a neighbour.
            let r = reduced.rank();
            let groups: Vec<String> = if r == 0 {
                vec![]
            } else {
                let mut gs: Vec<Vec<usize>> = (0..r).map(|j| vec![if j < axis { j } else { j + 1 }]).collect();
                if axis == 0 {
                    gs[0].insert(0, 0);
                } else {
                    gs[axis - 1].push(axis);
                }
                gs.iter()
                    .map(|g| format!("[{}]", g.iter().map(|x| x.to_string()).collect::<Vec<_>>().join(", ")))
                    .collect()
            };
            let sizes: Vec<String> = ty.dims.iter().map(|d| dim_size(*d)).collect();
            self.line(&format!(
                "{out} = tensor.expand_shape {result} [{}] output_shape [{}] : {} into {} {loc}",
                groups.join(", "),
                sizes.join(", "),
                tensor_ty(&reduced),
                tensor_ty(&ty)
            ));
        } else {
            self.line(&format!(
                "{out} = tensor.cast {result} : {} to {} {loc}",
                tensor_ty(&reduced),
                tensor_ty(&ty)
            ));
        }
    }

    /// `id = lhs @ rhs`, plus `bias` along the last axis when given (see
    /// [`fuse::bias_epilogues`]).
    fn emit_matmul(&mut self, id: ValueId, (lhs, rhs): (ValueId, ValueId), bias: Option<ValueId>, loc: &str) {
        let g = self.g;
        // `x @ transpose(w)` reads `w` as it is passed: a Linear's weight (checkpoints store
        // `[out, in]`) in the panels the runtime packed it in (`matmul::param_packing`), any other
        // `w` in place with the dot-product kernel. Neither makes a transposed copy per call;
        // an unused transpose is removed as dead code.
        let (rhs, layout, rhs_ty) = match (&g.node(rhs).op, self.reads_packed(rhs)) {
            (&Op::Transpose { x }, Some(param)) => (x, matmul::RhsLayout::Packed, self.param_ty(param)),
            (&Op::Transpose { x }, None) if g.ty(x).rank() == 2 => (x, matmul::RhsLayout::Transposed, g.ty(x).clone()),
            _ => (rhs, matmul::RhsLayout::RowMajor, g.ty(rhs).clone()),
        };
        let mm = matmul::MatMul {
            layout,
            x: g.ty(lhs).clone(),
            rhs: rhs_ty,
            out: g.ty(id).clone(),
            group: 1,
            x_transposed: false,
            bias: bias.map(|b| g.ty(b).clone()),
        };
        let bias = bias.map(v);
        self.emit_matmul_call(&v(id), [&v(lhs), &v(rhs)], bias.as_deref(), &mm, loc);
    }
}

impl Emitter<'_> {
    /// A generic over the output's dimensions whose body reads `x` at computed coordinates.
    fn emit_gather_like(&mut self, id: ValueId, x: ValueId, loc: &str, coords: &Coordinates<'_>) {
        let g = self.g;
        let ty = g.ty(id).clone();
        let xt = g.ty(x).clone();
        let idx = self.open_index_generic(id, "%d");
        let mut body = Vec::new();
        let at = coords(&idx, &mut body);
        for l in body {
            self.line(&format!("  {l}"));
        }
        self.line(&format!("  %r = tensor.extract {}[{}] : {}", v(x), at.join(", "), tensor_ty(&xt)));
        self.line("  linalg.yield %r : f32");
        self.line(&format!("}} -> {} {loc}", tensor_ty(&ty)));
    }

    /// Opens a `linalg.generic` that computes node `id` element by element from its indices
    /// alone (no inputs): emits the header, the block and one `linalg.index` per dimension,
    /// named `{prefix}0`, `{prefix}1`, ...; returns those names. The caller writes the body.
    fn open_index_generic(&mut self, id: ValueId, prefix: &str) -> Vec<String> {
        let ty = self.ty(id);
        let r = ty.rank();
        let e = self.empty(&ty);
        let map = format!("affine_map<{} -> {}>", dims_list(r), dims_list(r));
        self.line(&format!(
            "{} = linalg.generic {{indexing_maps = [{map}], iterator_types = [{}]}} outs({e} : {}) {{",
            v(id),
            parallel(r),
            tensor_ty(&ty)
        ));
        self.line(&format!("^bb0(%o: {}):", elem(ty.dtype)));
        let idx: Vec<String> = (0..r).map(|k| format!("{prefix}{k}")).collect();
        for (k, name) in idx.iter().enumerate() {
            self.line(&format!("  {name} = linalg.index {k} : index"));
        }
        idx
    }

    /// What `write_rows` and `write_ring` both start from: the first row's position `{t}_i`,
    /// the lengths along the axis of the base (`len`) and of the rows (`n`), and `{t}_zero`,
    /// `{t}_last` (= n - 1). Returns `(t, len, n)`.
    fn row_write_prelude(&mut self, at: ValueId, bt: &TensorType, rt: &TensorType, axis: usize) -> (String, String, String) {
        let t = self.fresh();
        self.line(&format!("{t}_at = tensor.extract {}[] : tensor<i64>", self.name(at)));
        self.line(&format!("{t}_i = arith.index_cast {t}_at : i64 to index"));
        let len = self.index_value(bt.dims[axis], &format!("{t}_len"));
        let n = self.index_value(rt.dims[axis], &format!("{t}_n"));
        self.line(&format!("{t}_zero = arith.constant 0 : index"));
        self.line(&format!("{t}_one = arith.constant 1 : index"));
        self.line(&format!("{t}_last = arith.subi {n}, {t}_one : index"));
        (t, len, n)
    }

    /// `write_rows`, into a carried cache (the verifier admits no other base), in place: the
    /// rows are copied into a slice of the cache's own buffer and nothing else of it is touched.
    /// (Inserting a separate tensor would bufferize to a strided `memref.copy`, which lowers to
    /// a call into MLIR's C runner library, not linked here.)
    fn emit_write_rows(&mut self, id: ValueId, [base, rows, at]: [ValueId; 3], axis: usize, loc: &str) {
        let (bt, rt) = (self.ty(base), self.ty(rows));
        let (t, len, n) = self.row_write_prelude(at, &bt, &rt, axis);
        // The first row's place, clamped into 0 ..= len - n so every write stays in bounds.
        self.line(&format!("{t}_room = arith.subi {len}, {n} : index"));
        self.line(&format!("{t}_lo = arith.maxsi {t}_i, {t}_zero : index"));
        self.line(&format!("{t}_start = arith.minsi {t}_lo, {t}_room : index"));
        let r = bt.rank();
        let offsets: Vec<String> = (0..r)
            .map(|k| if k == axis { format!("{t}_start") } else { "0".to_string() })
            .collect();
        let sizes: Vec<String> = rt.dims.iter().map(|d| dim_size(*d)).collect();
        let place = format!("[{}] [{}] [{}]", offsets.join(", "), sizes.join(", "), vec!["1"; r].join(", "));
        let (bts, rts) = (tensor_ty(&bt), tensor_ty(&rt));
        let base = self.name(base);
        self.line(&format!("{t}_slot = tensor.extract_slice {base}{place} : {bts} to {rts}"));
        self.line(&format!(
            "{t}_rows = linalg.copy ins({} : {rts}) outs({t}_slot : {rts}) -> {rts}",
            self.name(rows)
        ));
        self.line(&format!(
            "{} = tensor.insert_slice {t}_rows into {base}{place} : {rts} into {bts} {loc}",
            v(id)
        ));
    }

    /// `write_ring`: one pass over the ring (a few rows) in its own buffer; entry c takes the
    /// last row r < n with (at + r) mod len = c, if there is one: r0 = (c - at) mod len, and
    /// r = r0 + len * ((n - 1 - r0) div len) when r0 < n.
    fn emit_write_ring(&mut self, id: ValueId, [base, rows, at]: [ValueId; 3], axis: usize, loc: &str) {
        let (bt, rt) = (self.ty(base), self.ty(rows));
        let (t, len, n) = self.row_write_prelude(at, &bt, &rt, axis);
        let r = bt.rank();
        let map = format!("affine_map<{} -> {}>", dims_list(r), dims_list(r));
        let et = elem(bt.dtype);
        self.line(&format!(
            "{} = linalg.generic {{indexing_maps = [{map}], iterator_types = [{}]}} outs({} : {}) {{",
            v(id),
            parallel(r),
            self.name(base),
            tensor_ty(&bt)
        ));
        self.line(&format!("^bb0(%o: {et}):"));
        let mut at_rows: Vec<String> = (0..r).map(|k| format!("%w{k}")).collect();
        for (k, name) in at_rows.iter().enumerate() {
            self.line(&format!("  {name} = linalg.index {k} : index"));
        }
        self.line(&format!("  %back = arith.subi %w{axis}, {t}_i : index"));
        self.line(&format!("  %r0 = arith.remsi %back, {len} : index"));
        self.line(&format!("  %neg = arith.cmpi slt, %r0, {t}_zero : index"));
        self.line(&format!("  %wrapped = arith.addi %r0, {len} : index"));
        self.line("  %first = arith.select %neg, %wrapped, %r0 : index");
        self.line(&format!("  %written = arith.cmpi slt, %first, {n} : index"));
        self.line(&format!("  %left = arith.subi {t}_last, %first : index"));
        self.line(&format!("  %laps = arith.divsi %left, {len} : index"));
        self.line(&format!("  %skip = arith.muli %laps, {len} : index"));
        self.line("  %latest = arith.addi %first, %skip : index");
        self.line(&format!("  %row = arith.minsi %latest, {t}_last : index"));
        self.line(&format!("  %row_in = arith.maxsi %row, {t}_zero : index"));
        at_rows[axis] = "%row_in".into();
        self.line(&format!(
            "  %new = tensor.extract {}[{}] : {}",
            self.name(rows),
            at_rows.join(", "),
            tensor_ty(&rt)
        ));
        self.line(&format!("  %res = arith.select %written, %new, %o : {et}"));
        self.line(&format!("  linalg.yield %res : {et}"));
        self.line(&format!("}} -> {} {loc}", tensor_ty(&bt)));
    }

    fn emit_tabulate(&mut self, id: ValueId, f: &ScalarFn, loc: &str) {
        let ty = self.ty(id);
        let mut args = Vec::new();
        for (k, ix) in self.open_index_generic(id, "%ix").iter().enumerate() {
            self.line(&format!("  %i{k} = arith.index_cast {ix} : index to i64"));
            args.push(format!("%i{k}"));
        }
        let mut result = self.emit_scalar_fn(f, &args, "%tb");
        if ty.dtype == lmc_abi::DType::F32 && f.nodes[f.result].1 == ScalarType::Int {
            self.line(&format!("  %tbf = arith.sitofp {result} : i64 to f32"));
            result = "%tbf".into();
        }
        self.line(&format!("  linalg.yield {result} : {}", elem(ty.dtype)));
        self.line(&format!("}} -> {} {loc}", tensor_ty(&ty)));
    }

    fn emit_split_heads(&mut self, id: ValueId, x: ValueId, heads: i64, loc: &str) {
        let xt = self.g.ty(x).clone();
        let Dim::Static(c) = xt.dims[xt.rank() - 1] else {
            unreachable!("the checker requires a fixed width")
        };
        let d = c / heads;
        // out[..., h, t, e] = x[..., t, h * D + e]
        self.emit_gather_like(id, x, loc, &|idx, body| {
            let n = idx.len();
            body.push(format!("%width = arith.constant {d} : index"));
            body.push(format!("%base = arith.muli {}, %width : index", idx[n - 3]));
            body.push(format!("%col = arith.addi %base, {} : index", idx[n - 1]));
            let mut at: Vec<String> = idx[..n - 3].to_vec();
            at.push(idx[n - 2].clone());
            at.push("%col".into());
            at
        });
    }

    fn emit_merge_heads(&mut self, id: ValueId, x: ValueId, loc: &str) {
        let xt = self.g.ty(x).clone();
        let Dim::Static(d) = xt.dims[xt.rank() - 1] else {
            unreachable!("the checker requires a fixed width")
        };
        // out[..., t, c] = x[..., c / D, t, c % D]
        self.emit_gather_like(id, x, loc, &|idx, body| {
            let n = idx.len();
            body.push(format!("%width = arith.constant {d} : index"));
            body.push(format!("%head = arith.divui {}, %width : index", idx[n - 1]));
            body.push(format!("%col = arith.remui {}, %width : index", idx[n - 1]));
            let mut at: Vec<String> = idx[..n - 2].to_vec();
            at.extend(["%head".to_string(), idx[n - 2].clone(), "%col".to_string()]);
            at
        });
    }

    /// Attention, one block of query rows at a time: an `scf.forall` over batch, heads and
    /// blocks of [`QUERY_ROWS`] queries (threads, once lowered), each computing its rows'
    /// scores against every key, their softmax and the weighted sum of values. Scores exist
    /// only per block, so memory grows with the keys, not with queries × keys per head.
    fn emit_attention(
        &mut self,
        id: ValueId,
        [q, k, v_id]: [ValueId; 3],
        scale: f64,
        mask: Option<&ScalarFn>,
        score: Option<&ScalarFn>,
        loc: &str,
    ) {
        let g = self.g;
        let (qt, kt, vt) = (g.ty(q).clone(), g.ty(k).clone(), g.ty(v_id).clone());
        let ty = g.ty(id).clone();
        let group = match (qt.dims[1], kt.dims[1]) {
            (Dim::Static(hq), Dim::Static(hk)) if hq != hk => hq / hk,
            _ => 1,
        };
        if self.target.is_gpu() {
            self.emit_whole_attention(id, [q, k, v_id], group, (scale, mask, score), loc);
            return;
        }
        let p = self.fresh();
        let batch = self.dim_value(qt.dims[0]);
        let heads = self.dim_value(qt.dims[1]);
        let queries = self.dim_value(qt.dims[2]);
        self.line(&format!("{p}_rows = arith.constant {QUERY_ROWS} : index"));
        self.line(&format!("{p}_blocks = arith.ceildivui {queries}, {p}_rows : index"));
        let dest = self.empty(&ty);
        let out_t = tensor_ty(&ty);
        self.line(&format!(
            "{} = scf.forall ({p}_b, {p}_h, {p}_q) in ({batch}, {heads}, {p}_blocks) shared_outs({p}_out = {dest}) -> ({out_t}) {{",
            v(id)
        ));
        self.indent += 1;
        self.line(&format!("{p}_i = arith.muli {p}_q, {p}_rows : index"));
        self.line(&format!("{p}_left = arith.subi {queries}, {p}_i : index"));
        self.line(&format!("{p}_n = arith.minui {p}_left, {p}_rows : index"));
        let key_head = if group > 1 {
            self.line(&format!("{p}_group = arith.constant {group} : index"));
            self.line(&format!("{p}_kh = arith.divui {p}_h, {p}_group : index"));
            format!("{p}_kh")
        } else {
            format!("{p}_h")
        };
        let size = dim_size;
        let rows = Dim::Symbol(BLOCK_ROWS);
        let block =
            |t: &TensorType, rows_or_keys: Dim| TensorType::new(t.dtype, vec![Dim::Static(1), Dim::Static(1), rows_or_keys, t.dims[3]]);
        let (qb, kb, vb, ob) = (block(&qt, rows), block(&kt, kt.dims[2]), block(&vt, vt.dims[2]), block(&ty, rows));
        let slice = |e: &mut Self, name: &str, of: ValueId, head: &str, start: &str, rows: &str, t: &TensorType, b: &TensorType| {
            e.line(&format!(
                "{name} = tensor.extract_slice {}[{p}_b, {head}, {start}, 0] [1, 1, {rows}, {}] [1, 1, 1, 1] : {} to {}",
                v(of),
                size(t.dims[3]),
                tensor_ty(t),
                tensor_ty(b)
            ));
        };
        slice(
            self,
            &format!("{p}_qs"),
            q,
            &format!("{p}_h"),
            &format!("{p}_i"),
            &format!("{p}_n"),
            &qt,
            &qb,
        );
        // With a mask, the block reads only the keys from the first to the last one any of its
        // rows may see: keys masked for the whole block (a causal mask's future, padding at the
        // end) cost nothing.
        let (first_key, keys, kb, vb) = match mask {
            Some(f) => {
                self.emit_key_range(&p, f, &kt, &at_block(&p));
                let b = Dim::Symbol(BLOCK_KEYS);
                (format!("{p}_k0"), format!("{p}_kn"), block(&kt, b), block(&vt, b))
            }
            None => {
                self.line(&format!("{p}_k0 = arith.constant 0 : index"));
                (format!("{p}_k0"), size(kt.dims[2]), kb, vb)
            }
        };
        slice(self, &format!("{p}_ks"), k, &key_head, &first_key, &keys, &kt, &kb);
        slice(self, &format!("{p}_vs"), v_id, &key_head, &first_key, &keys, &vt, &vb);
        // Inside a block the matmuls are inlined loops, as in a scan step.
        let saved = (self.in_scan_body, self.block_rows.clone(), self.block_keys.clone());
        self.in_scan_body = true;
        self.block_rows = Some(format!("{p}_n"));
        if mask.is_some() {
            self.block_keys = Some(format!("{p}_kn"));
        }
        // The block's result is computed in its slice of the output, so the insert below
        // writes in place (a copy between strided views would call MLIR's runner library).
        self.line(&format!(
            "{p}_os = tensor.extract_slice {p}_out[{p}_b, {p}_h, {p}_i, 0] [1, 1, {p}_n, {}] [1, 1, 1, 1] : {out_t} to {}",
            size(ty.dims[3]),
            tensor_ty(&ob)
        ));
        let at = at_block(&p);
        // A block of many rows keeps its scores keys by queries (`attention_rows_tall`); a few
        // rows (a decode step's new tokens) would waste most of its vectors' lanes, and keep
        // them queries by keys.
        let names = [format!("{p}_qs"), format!("{p}_ks"), format!("{p}_vs"), format!("{p}_os")];
        let block = AttentionBlock {
            q: (&names[0], &qb),
            k: (&names[1], &kb),
            v: (&names[2], &vb),
            dest: (&names[3], &ob),
            at: &at,
            group: 1,
            scale,
            mask,
            score,
            loc,
        };
        let result = format!("{p}_block");
        self.line(&format!("{p}_tall_min = arith.constant {TALL_MIN_ROWS} : index"));
        self.line(&format!("{p}_tall = arith.cmpi uge, {p}_n, {p}_tall_min : index"));
        self.line(&format!("{result} = scf.if {p}_tall -> ({}) {{", tensor_ty(&ob)));
        let tall = self.attention_rows_tall(&block);
        self.line(&format!("  scf.yield {tall} : {}", tensor_ty(&ob)));
        self.line("} else {");
        let short = self.attention_rows(&block);
        self.line(&format!("  scf.yield {short} : {}", tensor_ty(&ob)));
        self.line("}");
        (self.in_scan_body, self.block_rows, self.block_keys) = saved;
        self.line("scf.forall.in_parallel {");
        self.line(&format!(
            "  tensor.parallel_insert_slice {result} into {p}_out[{p}_b, {p}_h, {p}_i, 0] [1, 1, {p}_n, {}] [1, 1, 1, 1] : {} into {out_t}",
            size(ty.dims[3]),
            tensor_ty(&ob)
        ));
        self.line("}");
        self.indent -= 1;
        self.line(&format!("}} {loc}"));
    }

    /// A whole attention in loop nests over all its heads, rows and keys at once (for a GPU,
    /// where each nest is one kernel): the steps of [`Emitter::attention_rows`] on the whole
    /// `[batch, heads, queries, keys]` scores. Memory grows with the square of the length; a
    /// fused attention kernel for GPUs is not written yet.
    fn emit_whole_attention(
        &mut self,
        id: ValueId,
        [q, k, v_id]: [ValueId; 3],
        group: i64,
        (scale, mask, score): (f64, Option<&ScalarFn>, Option<&ScalarFn>),
        loc: &str,
    ) {
        let g = self.g;
        let (qt, kt, vt, ty) = (g.ty(q).clone(), g.ty(k).clone(), g.ty(v_id).clone(), g.ty(id).clone());
        let names = [self.name(q), self.name(k), self.name(v_id), self.empty(&ty)];
        let whole = [String::new(), String::new(), String::new(), String::new()];
        let block = AttentionBlock {
            q: (&names[0], &qt),
            k: (&names[1], &kt),
            v: (&names[2], &vt),
            dest: (&names[3], &ty),
            at: &whole,
            group,
            scale,
            mask,
            score,
            loc,
        };
        let result = self.attention_rows(&block);
        let t = tensor_ty(&ty);
        self.line(&format!("{} = tensor.cast {result} : {t} to {t} {loc}", v(id)));
    }

    /// The range of keys the rows of attention block `p` may see under `mask`: `{p}_k0`, the
    /// first, and `{p}_kn`, how many from it (0 when the mask hides every key from every row).
    /// Scans inwards from both ends and stops at the first key some row keeps: padding's mask
    /// is evaluated for one key at each end, a causal mask only for the keys the block skips.
    fn emit_key_range(&mut self, p: &str, mask: &ScalarFn, kt: &TensorType, at: &[String; 4]) {
        let keys = self.dim_value(kt.dims[2]);
        self.line(&format!("{p}_c0 = arith.constant 0 : index"));
        self.line(&format!("{p}_c1 = arith.constant 1 : index"));
        self.line(&format!("{p}_false = arith.constant false"));
        // The first key some row keeps (`keys` if none), then one past the last (scanning down
        // no further than the first).
        self.line(&format!("{p}_k0 = scf.while ({p}_lj = {p}_c0) : (index) -> index {{"));
        self.line(&format!("  {p}_lin = arith.cmpi ult, {p}_lj, {keys} : index"));
        let seen = self.any_row_keeps(p, "l", mask, at, &format!("{p}_lin"), &format!("{p}_lj"));
        self.line(&format!("  {p}_lgo = arith.cmpi ugt, {p}_lin, {seen} : i1"));
        self.line(&format!("  scf.condition({p}_lgo) {p}_lj : index"));
        self.line("} do {");
        self.line(&format!("^bb0({p}_lnext: index):"));
        self.line(&format!("  {p}_lstep = arith.addi {p}_lnext, {p}_c1 : index"));
        self.line(&format!("  scf.yield {p}_lstep : index"));
        self.line("}");
        self.line(&format!("{p}_kend = scf.while ({p}_hj = {keys}) : (index) -> index {{"));
        self.line(&format!("  {p}_hin = arith.cmpi ugt, {p}_hj, {p}_k0 : index"));
        self.line(&format!("  {p}_hprev = arith.subi {p}_hj, {p}_c1 : index"));
        let seen = self.any_row_keeps(p, "h", mask, at, &format!("{p}_hin"), &format!("{p}_hprev"));
        self.line(&format!("  {p}_hgo = arith.cmpi ugt, {p}_hin, {seen} : i1"));
        self.line(&format!("  scf.condition({p}_hgo) {p}_hj : index"));
        self.line("} do {");
        self.line(&format!("^bb0({p}_hnext: index):"));
        self.line(&format!("  {p}_hstep = arith.subi {p}_hnext, {p}_c1 : index"));
        self.line(&format!("  scf.yield {p}_hstep : index"));
        self.line("}");
        self.line(&format!("{p}_span = arith.subi {p}_kend, {p}_k0 : index"));
        self.line(&format!("{p}_kn = arith.maxsi {p}_span, {p}_c0 : index"));
    }

    /// Inside a key scan of [`Emitter::emit_key_range`]: whether any row of block `p` keeps key
    /// `key` under `mask`, evaluated only when `valid` (the key is in range). Returns the i1.
    fn any_row_keeps(&mut self, p: &str, side: &str, mask: &ScalarFn, at: &[String; 4], valid: &str, key: &str) -> String {
        let any = format!("{p}_{side}any");
        self.line(&format!("  {any} = scf.if {valid} -> (i1) {{"));
        self.line(&format!(
            "    {p}_{side}kept = scf.for {p}_{side}r = {p}_c0 to {p}_n step {p}_c1 iter_args({p}_{side}acc = {p}_false) -> (i1) {{"
        ));
        self.line(&format!("      {p}_{side}row = arith.addi {}, {p}_{side}r : index", at[2]));
        let mut idx = Vec::new();
        for (k, index) in [at[0].clone(), at[1].clone(), format!("{p}_{side}row"), key.to_string()]
            .iter()
            .enumerate()
        {
            self.line(&format!("      %i{k} = arith.index_cast {index} : index to i64"));
            idx.push(format!("%i{k}"));
        }
        let keep = self.emit_scalar_fn(mask, &idx, "%rg");
        self.line(&format!("      {p}_{side}or = arith.ori {p}_{side}acc, {keep} : i1"));
        self.line(&format!("      scf.yield {p}_{side}or : i1"));
        self.line("    }");
        self.line(&format!("    scf.yield {p}_{side}kept : i1"));
        self.line("  } else {");
        self.line(&format!("    scf.yield {p}_false : i1"));
        self.line("  }");
        any
    }

    /// The attention of one block of query rows ([`AttentionBlock`]). Returns the result's SSA
    /// name. Scores are queries by keys: `q · kᵀ` as dot products, then the softmax along each
    /// row; the layout for blocks of fewer than [`TALL_MIN_ROWS`] rows (a decode step's new
    /// tokens), where [`Emitter::attention_rows_tall`] would waste most lanes.
    fn attention_rows(&mut self, block: &AttentionBlock<'_>) -> String {
        let AttentionBlock {
            q: (q, qt),
            k: (k, kt),
            v: (v_in, vt),
            dest: (dest, ty),
            at,
            group,
            scale,
            mask,
            score,
            loc,
        } = *block;
        let (qt, kt, vt, ty) = (qt.clone(), kt.clone(), vt.clone(), ty.clone());
        let (b, h, t, s) = (qt.dims[0], qt.dims[1], qt.dims[2], kt.dims[2]);
        let scores_ty = TensorType::new(lmc_abi::DType::F32, vec![b, h, t, s]);
        let rows_ty = TensorType::new(lmc_abi::DType::F32, vec![b, h, t]);
        let st = tensor_ty(&scores_ty);
        let rt = tensor_ty(&rows_ty);
        let fill = |e: &mut Self, ty: &TensorType, value: &str| {
            let empty = e.empty(ty);
            let c = e.fresh();
            e.line(&format!("{c} = arith.constant {value} : f32"));
            let f = e.fresh();
            e.line(&format!(
                "{f} = linalg.fill ins({c} : f32) outs({empty} : {}) -> {}",
                tensor_ty(ty),
                tensor_ty(ty)
            ));
            f
        };
        // 1. raw scores q·kᵀ
        let raw = self.fresh();
        let scores = matmul::MatMul {
            layout: matmul::RhsLayout::Transposed,
            x: qt.clone(),
            rhs: kt.clone(),
            out: scores_ty.clone(),
            group,
            x_transposed: false,
            bias: None,
        };
        self.emit_matmul_call(&raw, [q, k], None, &scores, loc);
        // 2. scale, score function, mask
        let empty = self.empty(&scores_ty);
        let scored = self.fresh();
        let map4 = "affine_map<(d0, d1, d2, d3) -> (d0, d1, d2, d3)>";
        self.line(&format!("{scored} = linalg.generic {{indexing_maps = [{map4}, {map4}], iterator_types = [{}]}} ins({raw} : {st}) outs({empty} : {st}) {{", parallel(4)));
        self.line("^bb0(%raw: f32, %o: f32):");
        let current = self.scored_element(at, scale, mask, score, (2, 3));
        self.line(&format!("  linalg.yield {current} : f32"));
        self.line(&format!("}} -> {st} {loc}"));
        // 3. row maximum
        let neg = fill(self, &rows_ty, "0xFF800000");
        let max = self.fresh();
        let red = "[\"parallel\", \"parallel\", \"parallel\", \"reduction\"]";
        let row_map = "affine_map<(d0, d1, d2, d3) -> (d0, d1, d2)>";
        self.line(&format!("{max} = linalg.generic {{indexing_maps = [{map4}, {row_map}], iterator_types = {red}}} ins({scored} : {st}) outs({neg} : {rt}) {{"));
        self.line("^bb0(%a: f32, %acc: f32):");
        self.line("  %r = arith.maximumf %a, %acc : f32");
        self.line("  linalg.yield %r : f32");
        self.line(&format!("}} -> {rt} {loc}"));
        // 4. exp(s - max); a fully masked row (max = -inf) gives zeros, not NaN
        let empty = self.empty(&scores_ty);
        let probs = self.fresh();
        self.line(&format!("{probs} = linalg.generic {{indexing_maps = [{map4}, {row_map}, {map4}], iterator_types = [{}]}} ins({scored}, {max} : {st}, {rt}) outs({empty} : {st}) {{", parallel(4)));
        self.line("^bb0(%s: f32, %m: f32, %o: f32):");
        self.line("  %neginf = arith.constant 0xFF800000 : f32");
        self.line("  %zero = arith.constant 0.0 : f32");
        self.line("  %empty = arith.cmpf oeq, %m, %neginf : f32");
        self.line("  %safe = arith.select %empty, %zero, %m : f32");
        self.line("  %d = arith.subf %s, %safe : f32");
        for l in approx::exp("%d", "%r", "%e") {
            self.line(&format!("  {l}"));
        }
        self.line("  linalg.yield %r : f32");
        self.line(&format!("}} -> {st} {loc}"));
        // 5. row sums
        let zr = fill(self, &rows_ty, "0.0");
        let sums = self.fresh();
        self.line(&format!("{sums} = linalg.generic {{indexing_maps = [{map4}, {row_map}], iterator_types = {red}}} ins({probs} : {st}) outs({zr} : {rt}) {{"));
        self.line("^bb0(%a: f32, %acc: f32):");
        self.line("  %r = arith.addf %a, %acc : f32");
        self.line("  linalg.yield %r : f32");
        self.line(&format!("}} -> {rt} {loc}"));
        // 6. weighted sum of v
        let weighted = self.fresh();
        let out_t = tensor_ty(&ty);
        let values = matmul::MatMul {
            layout: matmul::RhsLayout::RowMajor,
            x: scores_ty.clone(),
            rhs: vt.clone(),
            out: ty.clone(),
            group,
            x_transposed: false,
            bias: None,
        };
        self.emit_matmul_call(&weighted, [&probs, v_in], None, &values, loc);
        // 7. normalise; an empty row stays zero
        let result = self.fresh();
        self.normalise(&result, (&weighted, &out_t), (&sums, &rt, row_map), dest, loc);
        result
    }

    /// The attention of one block of query rows (as [`Emitter::attention_rows`]), its scores
    /// kept keys by queries: `sᵀ = k · qᵀ` as `[keys, QUERY_ROWS]`, the block's queries
    /// transposed into zero-padded columns. Every step is then vectors across queries: both
    /// matmuls are the axpy tile (`k` rows against whole vectors of queries, `pᵀ` read
    /// transposed against `v`), and the softmax's maximum and sum run down the keys, with no
    /// sums across lanes. Scores of the padding columns are never masked, read or written out.
    ///
    /// Keys are taken [`KEY_TILE`] at a time with an online softmax: each tile's scores raise
    /// the running maximum, the sums and weighted values so far are rescaled by
    /// `exp(old max - new max)`, and the tile's own are added. A block's scores are then never
    /// more than one tile, whatever the length.
    fn attention_rows_tall(&mut self, block: &AttentionBlock<'_>) -> String {
        let AttentionBlock {
            q: (q, qt),
            k: (k, kt),
            v: (v_in, vt),
            dest: (dest, ty),
            at,
            scale,
            mask,
            score,
            loc,
            ..
        } = *block;
        let (qt, kt, vt, ty) = (qt.clone(), kt.clone(), vt.clone(), ty.clone());
        let lanes = self.target.lanes;
        let vectors = (QUERY_ROWS / lanes) as usize;
        let vec = format!("vector<{lanes}xf32>");
        let x = self.fresh();
        let n = self.block_rows.clone().unwrap_or_default();
        let keys = match kt.dims[2] {
            Dim::Symbol(s) if s == BLOCK_KEYS => self.block_keys.clone().unwrap_or_default(),
            d => self.dim_value(d),
        };
        let (b, h, d) = (qt.dims[0], qt.dims[1], qt.dims[3]);
        let wide = Dim::Static(QUERY_ROWS);
        let qtt = TensorType::new(qt.dtype, vec![b, h, d, wide]);
        let qtt_s = tensor_ty(&qtt);
        // A tile's keys, values and scores: `BLOCK_KEYS` stands for the tile's key count inside
        // the tile loop.
        let tile_keys = Dim::Symbol(BLOCK_KEYS);
        let ktile = TensorType::new(kt.dtype, vec![b, h, tile_keys, kt.dims[3]]);
        let vtile = TensorType::new(vt.dtype, vec![b, h, tile_keys, vt.dims[3]]);
        let st = TensorType::new(lmc_abi::DType::F32, vec![b, h, tile_keys, wide]);
        let st_s = tensor_ty(&st);
        let ty_s = tensor_ty(&ty);
        // 1. the block's queries as columns, zero past its rows
        self.line(&format!("{x}_c0 = arith.constant 0 : index"));
        self.line(&format!("{x}_c1 = arith.constant 1 : index"));
        self.line(&format!("{x}_zero = arith.constant 0.0 : f32"));
        let empty = self.empty(&qtt);
        self.line(&format!(
            "{x}_qz = linalg.fill ins({x}_zero : f32) outs({empty} : {qtt_s}) -> {qtt_s}"
        ));
        let cols_t = TensorType::new(qt.dtype, vec![b, h, d, Dim::Symbol(BLOCK_ROWS)]);
        let cols_at = format!("[0, 0, 0, 0] [1, 1, {}, {n}] [1, 1, 1, 1]", dim_size(d));
        self.line(&format!(
            "{x}_qcols = tensor.extract_slice {x}_qz{cols_at} : {qtt_s} to {}",
            tensor_ty(&cols_t)
        ));
        self.line(&format!(
            "{x}_qtr = linalg.transpose ins({q} : {}) outs({x}_qcols : {}) permutation = [0, 1, 3, 2] {loc}",
            tensor_ty(&qt),
            tensor_ty(&cols_t)
        ));
        self.line(&format!(
            "{x}_qt = tensor.insert_slice {x}_qtr into {x}_qz{cols_at} : {} into {qtt_s}",
            tensor_ty(&cols_t)
        ));
        let cols: Vec<String> = (0..vectors).map(|c| format!("{x}_col{c}")).collect();
        for (c, col) in cols.iter().enumerate() {
            self.line(&format!("{col} = arith.constant {} : index", c as i64 * lanes));
        }
        self.line(&format!("{x}_ninf = arith.constant dense<0xFF800000> : {vec}"));
        self.line(&format!("{x}_vzero = arith.constant dense<0.0> : {vec}"));
        // Without a mask or score function, the scale (when positive, so that it keeps the
        // maximum) is folded into the exponentials.
        let fold_scale = mask.is_none() && score.is_none() && scale > 0.0;
        let factor = if fold_scale { scale } else { 1.0 };
        self.line(&format!("{x}_factor = arith.constant dense<{}> : {vec}", f32_literal(factor)));
        let mask_ty = format!("vector<{lanes}xi1>");
        let types = vec![vec.as_str(); vectors].join(", ");
        let names = |name: &str| (0..vectors).map(|c| format!("{x}_{name}{c}")).collect::<Vec<_>>();
        let inits = |name: &str, init: &str| names(name).iter().map(|a| format!("{a} = {init}")).collect::<Vec<_>>().join(", ");
        // The weighted values so far, queries by the value's width: zero before the first tile.
        let acc0 = self.empty(&ty);
        self.line(&format!(
            "{x}_acc0 = linalg.fill ins({x}_zero : f32) outs({acc0} : {ty_s}) -> {ty_s}"
        ));
        self.line(&format!("{x}_tile = arith.constant {KEY_TILE} : index"));
        // The loop carries each query's running maximum and sum (vectors across queries) and
        // the weighted values.
        self.line(&format!(
            "{x}_run:{} = scf.for {x}_t = {x}_c0 to {keys} step {x}_tile iter_args({}, {}, {x}_acc = {x}_acc0) -> ({types}, {types}, {ty_s}) {{",
            2 * vectors + 1,
            inits("m", &format!("{x}_ninf")),
            inits("l", &format!("{x}_vzero"))
        ));
        self.line(&format!("{x}_tleft = arith.subi {keys}, {x}_t : index"));
        self.line(&format!("{x}_tn = arith.minui {x}_tleft, {x}_tile : index"));
        let saved_keys = self.block_keys.replace(format!("{x}_tn"));
        for (name, of, t, tile) in [("kt", k, &kt, &ktile), ("vt", v_in, &vt, &vtile)] {
            self.line(&format!(
                "{x}_{name} = tensor.extract_slice {of}[0, 0, {x}_t, 0] [1, 1, {x}_tn, {}] [1, 1, 1, 1] : {} to {}",
                dim_size(t.dims[3]),
                tensor_ty(t),
                tensor_ty(tile)
            ));
        }
        // Index functions see the tile's keys offset by its first.
        self.line(&format!("{x}_tk0 = arith.addi {}, {x}_t : index", at[3]));
        let tile_at = [at[0].clone(), at[1].clone(), at[2].clone(), format!("{x}_tk0")];
        // 2. raw scores of the tile, keys by queries
        let scores = matmul::MatMul {
            layout: matmul::RhsLayout::RowMajor,
            x: ktile.clone(),
            rhs: qtt.clone(),
            out: st.clone(),
            group: 1,
            x_transposed: false,
            bias: None,
        };
        self.emit_matmul_call(&format!("{x}_raw"), [&format!("{x}_kt"), &format!("{x}_qt")], None, &scores, loc);
        // 3. scale, score function and mask, on the block's own columns
        let mut s = format!("{x}_raw");
        if !fold_scale {
            let own = TensorType::new(lmc_abi::DType::F32, vec![b, h, tile_keys, Dim::Symbol(BLOCK_ROWS)]);
            let own_s = tensor_ty(&own);
            let own_at = format!("[0, 0, 0, 0] [1, 1, {x}_tn, {n}] [1, 1, 1, 1]");
            self.line(&format!("{x}_own = tensor.extract_slice {s}{own_at} : {st_s} to {own_s}"));
            let map4 = "affine_map<(d0, d1, d2, d3) -> (d0, d1, d2, d3)>";
            self.line(&format!(
                "{x}_scored = linalg.generic {{indexing_maps = [{map4}], iterator_types = [{}]}} outs({x}_own : {own_s}) {{",
                parallel(4)
            ));
            self.line("^bb0(%raw: f32):");
            let current = self.scored_element(&tile_at, scale, mask, score, (3, 2));
            self.line(&format!("  linalg.yield {current} : f32"));
            self.line(&format!("}} -> {own_s} {loc}"));
            self.line(&format!(
                "{x}_s = tensor.insert_slice {x}_scored into {s}{own_at} : {own_s} into {st_s}"
            ));
            s = format!("{x}_s");
        }
        // 4. each query's maximum down the tile's keys, and the running maximum
        self.line(&format!(
            "{x}_max:{vectors} = scf.for {x}_j = {x}_c0 to {x}_tn step {x}_c1 iter_args({}) -> ({types}) {{",
            (0..vectors)
                .map(|c| format!("{x}_macc{c} = {x}_m{c}"))
                .collect::<Vec<_>>()
                .join(", ")
        ));
        for (c, col) in cols.iter().enumerate() {
            self.line(&format!(
                "  {x}_ms{c} = vector.transfer_read {s}[{x}_c0, {x}_c0, {x}_j, {col}], {x}_zero {{in_bounds = [true]}} : {st_s}, {vec}"
            ));
            self.line(&format!("  {x}_mx{c} = arith.maximumf {x}_macc{c}, {x}_ms{c} : {vec}"));
        }
        self.line(&format!("  scf.yield {} : {types}", names("mx").join(", ")));
        self.line("}");
        // A query that has seen no key yet (maximum -inf) shifts by 0, so its exponentials are
        // 0, not NaN; the rescaling of what it had (nothing) is then 0 as well.
        for c in 0..vectors {
            self.line(&format!("{x}_none{c} = arith.cmpf oeq, {x}_max#{c}, {x}_ninf : {vec}"));
            self.line(&format!(
                "{x}_safe{c} = arith.select {x}_none{c}, {x}_vzero, {x}_max#{c} : {mask_ty}, {vec}"
            ));
            self.line(&format!("{x}_shift{c} = arith.mulf {x}_safe{c}, {x}_factor : {vec}"));
            self.line(&format!("{x}_neg{c} = arith.negf {x}_shift{c} : {vec}"));
            // exp(factor·old max - factor·new max)
            self.line(&format!("{x}_rd{c} = math.fma {x}_m{c}, {x}_factor, {x}_neg{c} : {vec}"));
            for l in approx::exp_of(&format!("{x}_rd{c}"), &format!("{x}_re{c}"), &format!("{x}_rt{c}_"), Some(lanes)) {
                self.line(&l);
            }
        }
        // 5. probabilities exp(factor·s - factor·max) in place, and their sums
        self.line(&format!(
            "{x}_exp:{} = scf.for {x}_j = {x}_c0 to {x}_tn step {x}_c1 iter_args({}, {x}_pacc = {s}) -> ({types}, {st_s}) {{",
            vectors + 1,
            inits("sacc", &format!("{x}_vzero"))
        ));
        let mut p = format!("{x}_pacc");
        for (c, col) in cols.iter().enumerate() {
            self.line(&format!(
                "  {x}_es{c} = vector.transfer_read {p}[{x}_c0, {x}_c0, {x}_j, {col}], {x}_zero {{in_bounds = [true]}} : {st_s}, {vec}"
            ));
            self.line(&format!("  {x}_ed{c} = math.fma {x}_es{c}, {x}_factor, {x}_neg{c} : {vec}"));
            for l in approx::exp_of(&format!("{x}_ed{c}"), &format!("{x}_ee{c}"), &format!("{x}_et{c}_"), Some(lanes)) {
                self.line(&format!("  {l}"));
            }
            self.line(&format!("  {x}_esum{c} = arith.addf {x}_sacc{c}, {x}_ee{c} : {vec}"));
            self.line(&format!(
                "  {x}_ep{c} = vector.transfer_write {x}_ee{c}, {p}[{x}_c0, {x}_c0, {x}_j, {col}] {{in_bounds = [true]}} : {vec}, {st_s}"
            ));
            p = format!("{x}_ep{c}");
        }
        self.line(&format!("  scf.yield {}, {p} : {types}, {st_s}", names("esum").join(", ")));
        self.line("}");
        // The running sums: the old ones rescaled, plus the tile's.
        for c in 0..vectors {
            self.line(&format!("{x}_ln{c} = math.fma {x}_l{c}, {x}_re{c}, {x}_exp#{c} : {vec}"));
        }
        // 6. the tile's weighted sum of values, the probabilities read transposed
        let values = matmul::MatMul {
            layout: matmul::RhsLayout::RowMajor,
            x: st.clone(),
            rhs: vtile.clone(),
            out: ty.clone(),
            group: 1,
            x_transposed: true,
            bias: None,
        };
        self.emit_matmul_call(
            &format!("{x}_weighted"),
            [&format!("{x}_exp#{vectors}"), &format!("{x}_vt")],
            None,
            &values,
            loc,
        );
        // ... added to the running weighted values rescaled, each query (row) by its factor
        let rescale = self.vectors_to_rows(&x, "re", &names("re"), &cols);
        let row_map = "affine_map<(d0, d1, d2, d3) -> (d2)>";
        let map4 = "affine_map<(d0, d1, d2, d3) -> (d0, d1, d2, d3)>";
        self.line(&format!(
            "{x}_accn = linalg.generic {{indexing_maps = [{map4}, {row_map}, {map4}], iterator_types = [{}]}} ins({x}_weighted, {rescale} : {ty_s}, tensor<?xf32>) outs({x}_acc : {ty_s}) {{",
            parallel(4)
        ));
        self.line("^bb0(%w: f32, %r: f32, %a: f32):");
        self.line("  %kept = arith.mulf %a, %r : f32");
        self.line("  %sum = arith.addf %kept, %w : f32");
        self.line("  linalg.yield %sum : f32");
        self.line(&format!("}} -> {ty_s} {loc}"));
        self.block_keys = saved_keys;
        self.line(&format!(
            "scf.yield {}, {}, {x}_accn : {types}, {types}, {ty_s}",
            (0..vectors).map(|c| format!("{x}_max#{c}")).collect::<Vec<_>>().join(", "),
            names("ln").join(", ")
        ));
        self.line("}");
        // 7. normalise by the sums (of the block's own rows); a query that sees no key stays zero
        let sums: Vec<String> = (0..vectors).map(|c| format!("{x}_run#{}", vectors + c)).collect();
        let rowsums = self.vectors_to_rows(&x, "sums", &sums, &cols);
        let result = format!("{x}_result");
        self.normalise(
            &result,
            (&format!("{x}_run#{}", 2 * vectors), &ty_s),
            (&rowsums, "tensor<?xf32>", row_map),
            dest,
            loc,
        );
        result
    }

    /// Per-query values held as vectors across the block's queries (vector `c` at query
    /// `cols[c]`), written out as a `tensor<?xf32>` of the block's own rows (`{x}_{name}` and
    /// temporaries after it). Returns its name.
    fn vectors_to_rows(&mut self, x: &str, name: &str, vectors: &[String], cols: &[String]) -> String {
        let lanes = self.target.lanes;
        let vec = format!("vector<{lanes}xf32>");
        let n = self.block_rows.clone().unwrap_or_default();
        let all_ty = format!("tensor<{QUERY_ROWS}xf32>");
        self.line(&format!("{x}_{name}_0 = tensor.empty() : {all_ty}"));
        let mut t = format!("{x}_{name}_0");
        for (c, (v, col)) in vectors.iter().zip(cols).enumerate() {
            self.line(&format!(
                "{x}_{name}_{} = vector.transfer_write {v}, {t}[{col}] {{in_bounds = [true]}} : {vec}, {all_ty}",
                c + 1
            ));
            t = format!("{x}_{name}_{}", c + 1);
        }
        self.line(&format!(
            "{x}_{name} = tensor.extract_slice {t}[0] [{n}] [1] : {all_ty} to tensor<?xf32>"
        ));
        format!("{x}_{name}")
    }

    /// Inside an attention's scores generic (its element `%raw`): the scaled score, through
    /// the score function, `-inf` where the mask hides it. `(row, key)` are the generic's
    /// dimensions of the block's query rows and keys, which index functions see offset by the
    /// block's first row and key (`at`). Returns the value's SSA name.
    fn scored_element(
        &mut self,
        at: &[String; 4],
        scale: f64,
        mask: Option<&ScalarFn>,
        score: Option<&ScalarFn>,
        (row, key): (usize, usize),
    ) -> String {
        self.line(&format!("  %scale = arith.constant {} : f32", f32_literal(scale)));
        self.line("  %s0 = arith.mulf %raw, %scale : f32");
        let mut idx = Vec::new();
        if mask.is_some() || score.is_some() {
            let whole = at.iter().all(String::is_empty);
            if whole {
                // The whole attention: the loop nest's own batch, head, row and key.
                for (k, name) in ["%bat", "%head", "%row", "%key"].iter().enumerate() {
                    self.line(&format!("  {name} = linalg.index {} : index", [0, 1, row, key][k]));
                }
            } else {
                // The block's batch and head, its first row plus the row, its first key plus
                // the key.
                self.line(&format!("  %ixr = linalg.index {row} : index"));
                self.line(&format!("  %row = arith.addi {}, %ixr : index", at[2]));
                self.line(&format!("  %ixk = linalg.index {key} : index"));
                self.line(&format!("  %key = arith.addi {}, %ixk : index", at[3]));
            }
            let (bat, head) = if whole {
                ("%bat", "%head")
            } else {
                (at[0].as_str(), at[1].as_str())
            };
            for (k, index) in [bat, head, "%row", "%key"].iter().enumerate() {
                self.line(&format!("  %i{k} = arith.index_cast {index} : index to i64"));
                idx.push(format!("%i{k}"));
            }
        }
        let mut current = "%s0".to_string();
        if let Some(f) = score {
            let mut args = vec![current.clone()];
            args.extend(idx.iter().cloned());
            current = self.emit_scalar_fn(f, &args, "%sc");
        }
        if let Some(f) = mask {
            let keep = self.emit_scalar_fn(f, &idx, "%mk");
            self.line("  %neginf = arith.constant 0xFF800000 : f32");
            self.line(&format!("  %masked = arith.select {keep}, {current}, %neginf : f32"));
            current = "%masked".into();
        }
        current
    }

    /// `result = weighted / sums` into `dest` (`[1, 1, rows, ·]`), the sums read through
    /// `sums_map`; a row whose sum is 0 (it saw no key) stays zero.
    fn normalise(
        &mut self,
        result: &str,
        (weighted, out_t): (&str, &str),
        (sums, sums_t, sums_map): (&str, &str, &str),
        dest: &str,
        loc: &str,
    ) {
        let map4 = "affine_map<(d0, d1, d2, d3) -> (d0, d1, d2, d3)>";
        self.line(&format!(
            "{result} = linalg.generic {{indexing_maps = [{map4}, {sums_map}, {map4}], iterator_types = [{}]}} ins({weighted}, {sums} : {out_t}, {sums_t}) outs({dest} : {out_t}) {{",
            parallel(4)
        ));
        self.line("^bb0(%w: f32, %z: f32, %o: f32):");
        self.line("  %zero = arith.constant 0.0 : f32");
        self.line("  %none = arith.cmpf oeq, %z, %zero : f32");
        self.line("  %q = arith.divf %w, %z : f32");
        self.line("  %r = arith.select %none, %zero, %q : f32");
        self.line("  linalg.yield %r : f32");
        self.line(&format!("}} -> {out_t} {loc}"));
    }

    /// Emits an index function inside a generic body; `args` are the SSA values of its
    /// parameters (f32 for a score, i64 for indices). Returns the result's SSA name.
    fn emit_scalar_fn(&mut self, f: &ScalarFn, args: &[String], prefix: &str) -> String {
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
    fn scalar_arg(&self, f: &ScalarFn, k: usize, args: &[String], prefix: &str) -> String {
        match f.nodes[k].0 {
            ScalarNode::Param(p) => args[p].clone(),
            _ => format!("{prefix}{k}"),
        }
    }
}

/// A dimension as a size in an op's text: its number, or its symbol's SSA value.
fn dim_size(d: Dim) -> String {
    match d {
        Dim::Static(n) => n.to_string(),
        Dim::Symbol(s) => format!("%sym{}", s.0),
    }
}

/// The loop indices `d0, d1, ...` of a loop nest of `rank` dimensions.
fn loop_indices(rank: usize) -> Vec<String> {
    (0..rank).map(|i| format!("d{i}")).collect()
}

/// Where an operand of type `operand` is read for the element of a broadcasting op's result
/// (`result`) at `at` (one index per result axis): numpy broadcasting aligns the axes on the
/// right, and an axis of length 1 stretched over a longer one is read at 0.
fn broadcast_read(operand: &TensorType, result: &TensorType, at: &[String]) -> Vec<String> {
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
fn ins_clause(fused: &FusedBody) -> String {
    if fused.inputs.is_empty() {
        return String::new();
    }
    let names: Vec<&str> = fused.inputs.iter().map(|i| i.0.as_str()).collect();
    let types: Vec<&str> = fused.inputs.iter().map(|i| i.1.as_str()).collect();
    format!("ins({} : {}) ", names.join(", "), types.join(", "))
}

/// The arith/math operation of an elementwise binary op on f32.
fn binary_op(op: BinaryOp) -> &'static str {
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
/// `exp` and `erf`, alone or inside another op, are the written-out arithmetic of
/// [`approx`] (vectorizable), not libm calls.
fn unary_body(op: UnaryOp, x: &str, res: &str, tmp: &str) -> Vec<String> {
    let simple = |name: &str| vec![format!("{res} = {name} {x} : f32")];
    match op {
        UnaryOp::Neg => simple("arith.negf"),
        UnaryOp::Sqrt => simple("math.sqrt"),
        UnaryOp::Rsqrt => simple("math.rsqrt"),
        UnaryOp::Exp => approx::exp(x, res, tmp),
        UnaryOp::Log => simple("math.log"),
        UnaryOp::Abs => simple("math.absf"),
        UnaryOp::Tanh => simple("math.tanh"),
        UnaryOp::Erf => approx::erf(x, res, tmp),
        UnaryOp::Sin => simple("math.sin"),
        UnaryOp::Cos => simple("math.cos"),
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
fn one_plus_exp_neg(x: &str, tmp: &str) -> Vec<String> {
    let mut lines = vec![format!("{tmp}0 = arith.negf {x} : f32")];
    lines.extend(approx::exp(&format!("{tmp}0"), &format!("{tmp}1"), &format!("{tmp}e")));
    lines.extend([
        format!("{tmp}2 = arith.constant 1.0 : f32"),
        format!("{tmp}3 = arith.addf {tmp}1, {tmp}2 : f32"),
    ]);
    lines
}

/// An f32 literal MLIR accepts: always with a decimal point or exponent.
fn f32_literal(x: f64) -> String {
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
