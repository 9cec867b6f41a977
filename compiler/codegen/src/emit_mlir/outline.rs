//! One function per distinct op: a node's code becomes a private function keyed by its
//! canonical text, defined once and called by every layer that computes the same thing.

use super::*;

/// The module's private functions, each distinct one defined once and named by its kind and
/// its rank among that kind (`@lmc_op3`, `@lmc_matmul0`).
#[derive(Default)]
pub(super) struct Functions {
    /// (kind, what it computes, text), in order of definition.
    defined: Vec<(&'static str, String, String)>,
}

impl Functions {
    /// The name of the function of `kind` that computes `key`, defined by `define(name)` on
    /// first use.
    pub(super) fn get_or_define(&mut self, kind: &'static str, key: String, define: impl FnOnce(&str) -> String) -> String {
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

    /// Declares an external function (an LLVM intrinsic called by name) once.
    pub(super) fn declare(&mut self, text: String) {
        if !self.defined.iter().any(|(kind, key, _)| *kind == "declaration" && *key == text) {
            self.defined.push(("declaration", text.clone(), text));
        }
    }

    /// The text of every function of `kind`.
    pub(super) fn texts<'a>(&'a self, kind: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.defined
            .iter()
            .filter(move |(k, ..)| *k == kind)
            .map(|(.., text)| text.as_str())
    }
}

/// A node's code as a function of the values it reads (see `Emitter::emit_outlined`).
pub(super) struct Outlined {
    /// The function's text with locations left out and names made canonical: equal keys
    /// compute the same thing.
    pub(super) key: String,
    /// The body with canonical names (locations kept).
    pub(super) body: String,
    /// The values read, in order of first use, with their types.
    pub(super) args: Vec<(String, String)>,
    pub(super) result_ty: String,
}

impl Outlined {
    pub(super) fn define(&self, name: &str) -> String {
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
pub(super) fn outline(g: &Graph, id: ValueId, text: &str, first_tmp: usize, locals: &[ValueId]) -> Option<Outlined> {
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
pub(super) fn write_into_destination(body: &str) -> Option<String> {
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
pub(super) fn param_name(args: &mut Vec<(String, String)>, name: &str, ty: String) -> String {
    let i = args.iter().position(|(a, _)| a == name).unwrap_or_else(|| {
        args.push((name.to_string(), ty));
        args.len() - 1
    });
    format!("%in{i}")
}

/// `text` without its ` loc(...)` suffixes.
pub(super) fn strip_locations(text: &str) -> String {
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

impl Emitter<'_> {
    /// Whether a node of the function body becomes a call to a function of its own: every
    /// op that is a loop nest. Not views (slices), transposes that a matmul reads through,
    /// matmuls and `matmul_tn` (already calls), `scatter_add` (a loop over positions into a
    /// zero-filled result, which a function would copy into its destination), scalars, scans
    /// (their bodies use the enclosing function's values) or the function's arguments.
    pub(super) fn outlinable(&self, id: ValueId) -> bool {
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
                    | Op::AttentionLse { .. }
                    | Op::AttentionGrad(_)
                    | Op::Arange(_)
            )
    }

    /// Emits a node as a call to a private function that computes it from the values it
    /// reads. Nodes that compute the same thing from values of the same types (a layer's ops,
    /// repeated in every layer) share one function: a 12-layer model's forward function shrinks
    /// twelve times, and LLVM, whose time grows faster than a function's size, compiles it in a
    /// fraction of the time.
    pub(super) fn emit_outlined(&mut self, id: ValueId) {
        let first_tmp = self.tmp;
        let text = self.emitted_apart(|e| e.emit_node(id));
        // An attention (forward or backward) is already a parallel loop over its blocks of
        // rows; on a GPU every loop nest is parallel already.
        let attention = matches!(
            self.g.node(id).op,
            Op::Attention { .. } | Op::AttentionLse { .. } | Op::AttentionGrad(_)
        );
        let text = if attention || self.target.is_gpu() {
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
    pub(super) fn call_outlined(&mut self, id: ValueId, f: &Outlined) {
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
}
