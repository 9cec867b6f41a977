//! Incremental decoding, derived from a forward function.
//!
//! A causal model's forward computes every position of a sequence at once. Decoding runs it a
//! few positions at a time (the prompt, then one token per step), carrying what later positions
//! need from earlier ones. [`derive_decode`] writes that step function from the forward graph, so
//! no model file contains cache code:
//!
//! - The sequence axis `T` of the forward now counts the *new* positions of one call; a new
//!   scalar input `position` says where in the sequence they start.
//! - A value computed row by row along `T` (embeddings, projections, norms, feed-forwards) is
//!   computed for the new rows only.
//! - A value read at other positions than its own (an attention's keys and values, a padding
//!   mask read per key, a token shift or a causal convolution reading `t - k`) is kept in a
//!   *history cache* with room for `capacity` positions: each call writes its new rows at
//!   `position` (`write_rows`) and reads the whole cache. Reads must provably look back, never
//!   ahead: an attention's mask must contain `j <= i` (or `j < i`), and an index function's read
//!   at `t + c` needs `c <= 0` for every value of its other indices.
//! - A scan along `T` starts from a *state cache*: its initial value at position 0, the state a
//!   previous call left otherwise; its final state is the new state cache.
//! - Positions in index functions (`arange(T)`, `t` in a tabulate, `i` in a mask or score) become
//!   absolute: `position + t`.
//! - A table a tabulate builds over (query, key) positions, `[T, T]`, is computed for the new
//!   query rows against every key position of the caches: `[T, capacity]`.
//!
//! - A value that does not grow with the sequence but depends on other inputs (an encoder's
//!   keys and values, read by cross-attention) is computed once, by a separate *context*
//!   function, and given to every step as an input.
//!
//! Each cache is an output that the step also reads ([`Op::Carry`]): the caller passes its
//! buffer holding what the previous call left there (zeros at first), and the step writes only
//! what changes: a history cache's new rows, a scan's state. The first call (the prompt, `position` 0) is the prefill; the same function
//! with one new token is the decode step. What cannot be decoded this way (a sum over the whole
//! sequence, a read of a later position, a value with the sequence on two axes) is an error that
//! names the source line.

use std::collections::HashMap;

use lmc_abi::DType;

use crate::ir::{
    CacheKind, CacheSlot, DecodeInfo, Dim, Graph, Loc, Node, Op, ScalarBinary, ScalarFn, ScalarNode, ScalarType, Scan, SymbolId,
    TensorDecl, TensorType, ValueId,
};

/// The name of the input that holds the first new position of a call.
pub const POSITION_INPUT: &str = "position";

/// How a forward value relates to the sequence axis.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Kind {
    /// Does not depend on the sequence: weights, constants, tables of fixed size.
    Fixed,
    /// Computed row by row along the sequence axis at this position.
    Rows(usize),
    /// A table over (query, key) positions, `[.., T, .., T, ..]`: the sequence at the first axis
    /// (computed for the new rows) and the keys at the second (all `capacity` of them, at
    /// absolute positions). Only index functions build and read one, at exactly its query and
    /// key: a relative-position bias table.
    Grid(usize, usize),
    /// Inside the body of a scan over the sequence: one step's values.
    Step,
    /// The final state of a scan over the sequence: only the state cache may read it.
    Final,
}

/// What decoding a model takes: the step, and for an encoder-decoder the context function.
#[derive(Debug, Clone)]
pub struct Decoding {
    /// The decode step ([`Graph::decode`] describes its position, tokens and caches).
    pub step: Graph,
    /// Computes, once per prompt, the values the step reads that depend only on inputs other
    /// than the tokens (an encoder's keys and values): a forward whose outputs are the step's
    /// inputs of the same names ([`crate::ir::DecodeInfo::context`]). `None` when the step
    /// reads no such value.
    pub context: Option<Graph>,
}

/// Derives the decode step of `g` with caches for `capacity` positions, and its context
/// function. See the module documentation for what it computes and what it rejects.
pub fn derive_decode(g: &Graph, capacity: i64) -> Result<Decoding, String> {
    let (logits, logits_ty) = g.outputs.first().map(|(d, _)| (0, &d.ty)).ok_or("the model has no output")?;
    let time = match (logits_ty.dtype, logits_ty.dims.as_slice()) {
        (DType::F32, [_, Dim::Symbol(t), Dim::Static(_)]) => *t,
        _ => {
            return Err(format!(
                "its first output `{}` is {}, not logits [batch, sequence, vocabulary]",
                g.outputs[0].0.name,
                g.type_name(logits_ty)
            ))
        }
    };
    let time_name = g.symbols[time.0 as usize].name.clone();
    let tokens = g
        .inputs
        .iter()
        .position(|i| i.ty.dtype != DType::F32 && i.ty.dims.len() == 2 && i.ty.dims[1] == Dim::Symbol(time))
        .ok_or_else(|| format!("no integer input [batch, {time_name}] holds the tokens the logits are for"))?;
    if capacity < 1 {
        return Err(format!("a cache needs room for at least one position, not {capacity}"));
    }
    if let Some(max) = &g.symbols[time.0 as usize].max {
        if capacity > max.limit {
            return Err(format!(
                "{capacity} positions do not fit: the model runs at most {} ({})",
                max.limit, max.reason
            ));
        }
    }
    let mut d = Deriver::new(g, time, capacity);
    for i in 0..g.nodes.len() {
        d.node(i)?;
    }
    d.finish(tokens, logits)
}

struct Deriver<'g> {
    g: &'g Graph,
    time: SymbolId,
    capacity: i64,
    /// The graph being written.
    out: Graph,
    /// Forward node → its value in `out`.
    map: Vec<ValueId>,
    kind: Vec<Kind>,
    regions: Vec<Option<ValueId>>,
    /// Scans over the sequence, by the first node of their body.
    scan_at_body: HashMap<usize, usize>,
    /// For each such scan: the selected initial states (position 0: the forward's; later: the
    /// state cache).
    scan_init: HashMap<usize, Vec<ValueId>>,
    /// For each such scan: the cache slot of each state.
    scan_slots: HashMap<usize, Vec<usize>>,
    /// Forward value → its history cache after this call's write.
    history: HashMap<ValueId, ValueId>,
    /// Forward values read back only a few positions (by index functions at `t - c`): how many.
    windows: HashMap<ValueId, i64>,
    /// For each of those read so far: its ring as the call began, its cache slot and axis.
    rings: HashMap<ValueId, (ValueId, usize, usize)>,
    position: ValueId,
    caches: Vec<CacheSlot>,
    /// Each cache slot's output: its declaration and its value once made.
    cache_outputs: Vec<(TensorDecl, Option<ValueId>)>,
}

impl<'g> Deriver<'g> {
    fn new(g: &'g Graph, time: SymbolId, capacity: i64) -> Self {
        let mut out = Graph {
            nodes: Vec::new(),
            outputs: Vec::new(),
            decode: None,
            ..g.clone()
        };
        // `T` now counts new positions; the limit of a position table applies to `capacity`.
        out.symbols[time.0 as usize].max = None;
        out.inputs.push(TensorDecl {
            name: POSITION_INPUT.into(),
            ty: TensorType::new(DType::I64, vec![]),
            // The runtime checks `position + new tokens <= capacity` (the manifest's decode
            // section), which says more than a bound on the position alone.
            index_bound: None,
            default: None,
        });
        let regions = g.enclosing_scans();
        let mut scan_at_body = HashMap::new();
        for (i, n) in g.nodes.iter().enumerate() {
            if let Op::Scan(s) = &n.op {
                if s.xs.iter().any(|x| g.ty(*x).dims.contains(&Dim::Symbol(time))) {
                    scan_at_body.insert(s.body_start.0 as usize, i);
                }
            }
        }
        let mut d = Deriver {
            g,
            time,
            capacity,
            out,
            map: Vec::with_capacity(g.nodes.len()),
            kind: Vec::with_capacity(g.nodes.len()),
            regions,
            scan_at_body,
            scan_init: HashMap::new(),
            scan_slots: HashMap::new(),
            history: HashMap::new(),
            windows: windows(g, time),
            rings: HashMap::new(),
            position: ValueId(0),
            caches: Vec::new(),
            cache_outputs: Vec::new(),
        };
        let input = d.out.inputs.len() - 1;
        d.position = d.push(Op::Input(input), TensorType::new(DType::I64, vec![]), Loc::default());
        d
    }

    fn push(&mut self, op: Op, ty: TensorType, loc: Loc) -> ValueId {
        self.out.nodes.push(Node { op, ty, loc });
        ValueId(self.out.nodes.len() as u32 - 1)
    }

    fn at(&self, loc: Loc) -> String {
        let file = self.g.files.get(loc.file as usize).map_or("?", String::as_str);
        format!("{file}:{}:{}", loc.line, loc.col)
    }

    /// The axes of `ty` that are the sequence.
    fn time_axes(&self, ty: &TensorType) -> Vec<usize> {
        ty.dims
            .iter()
            .enumerate()
            .filter(|(_, d)| **d == Dim::Symbol(self.time))
            .map(|(k, _)| k)
            .collect()
    }

    fn two_axes_error(&self, ty: &TensorType, loc: Loc) -> String {
        format!(
            "the value at {} is {}: the sequence on two axes can only be a [query, key] table that a tabulate builds and \
             index functions read at their own query and key; decoding cannot compute this one a few rows at a time",
            self.at(loc),
            self.g.type_name(ty)
        )
    }

    /// Whether node `i` is in the body of a scan over the sequence (directly, or in a scan
    /// nested in one).
    fn in_step(&self, i: usize) -> bool {
        let mut region = self.regions[i];
        while let Some(s) = region {
            if self.scan_at_body.values().any(|&x| x == s.0 as usize) {
                return true;
            }
            region = self.regions[s.0 as usize];
        }
        false
    }

    fn node(&mut self, i: usize) -> Result<(), String> {
        if let Some(&scan) = self.scan_at_body.get(&i) {
            self.state_prelude(scan)?;
        }
        let node = &self.g.nodes[i];
        let loc = node.loc;
        let axes = self.time_axes(&node.ty);
        let in_step = self.in_step(i);
        let axis = match (axes.as_slice(), &node.op) {
            ([], _) => None,
            ([a], _) => Some(*a),
            ([row, key], Op::Tabulate { f }) if !in_step => return self.grid(i, f, *row, *key),
            _ => return Err(self.two_axes_error(&node.ty, loc)),
        };
        let (op, kind) = match &node.op {
            Op::Arange(Dim::Symbol(s)) if *s == self.time => {
                // Absolute positions: `position + t`.
                let f = ScalarFn {
                    params: vec![ScalarType::Int],
                    nodes: vec![
                        (ScalarNode::Param(0), ScalarType::Int),
                        (
                            ScalarNode::Load {
                                tensor: self.position,
                                indices: vec![],
                            },
                            ScalarType::Int,
                        ),
                        (
                            ScalarNode::Binary {
                                op: ScalarBinary::Add,
                                a: 0,
                                b: 1,
                            },
                            ScalarType::Int,
                        ),
                    ],
                    result: 2,
                };
                (Op::Tabulate { f }, Kind::Rows(0))
            }
            Op::Tabulate { .. } if in_step => {
                self.step_reads_outside(&node.op, loc)?;
                (node.op.remapped(&self.map), Kind::Step)
            }
            Op::Tabulate { f } => {
                let ranges = index_maxima(&node.ty);
                let f = self.rewrite_fn(f, axis, None, &ranges, loc)?;
                (Op::Tabulate { f }, axis.map_or(Kind::Fixed, Kind::Rows))
            }
            Op::Attention {
                q,
                k,
                v,
                scale,
                mask,
                score,
                dropout: None,
            } => return self.attention(i, [*q, *k, *v], *scale, mask.as_ref(), score.as_ref()),
            Op::Attention { dropout: Some(_), .. } => return Err("a training step's dropout is not decoded".into()),
            Op::Scan(s) => return self.scan(i, s, in_step),
            Op::ScanResult { scan, index } if self.scan_init.contains_key(&(scan.0 as usize)) => {
                let Op::Scan(s) = &self.g.node(*scan).op else {
                    return Err("internal: a scan result without its scan".into());
                };
                let kind = if *index < s.outputs.len() {
                    Kind::Rows(axis.ok_or("internal: a stacked scan output without the sequence axis")?)
                } else {
                    Kind::Final
                };
                let op = Op::ScanResult {
                    scan: self.map[scan.0 as usize],
                    index: *index,
                };
                let id = self.push(op, node.ty.clone(), loc);
                if kind == Kind::Final {
                    let slot = self.scan_slots[&(scan.0 as usize)][index - s.outputs.len()];
                    self.cache_outputs[slot].1 = Some(id);
                }
                self.map.push(id);
                self.kind.push(kind);
                return Ok(());
            }
            op => {
                let kinds: Vec<Kind> = op.operands().iter().map(|o| self.kind[o.0 as usize]).collect();
                if let Some(o) = op.operands().iter().find(|o| matches!(self.kind[o.0 as usize], Kind::Grid(..))) {
                    return Err(self.two_axes_error(self.g.ty(*o), loc));
                }
                if kinds.contains(&Kind::Final) {
                    return Err(format!(
                        "the value at {} reads the final state of a scan over the sequence; decoding keeps that state in its cache, so nothing else may read it",
                        self.at(loc)
                    ));
                }
                let kind = if in_step {
                    self.step_reads_outside(op, loc)?;
                    Kind::Step
                } else if kinds.iter().any(|k| matches!(k, Kind::Rows(_))) {
                    self.rows_op(op, axis, loc)?;
                    Kind::Rows(axis.ok_or_else(|| {
                        format!(
                            "the value at {} combines every position of the sequence into one; decoding computes a few positions at a time and cannot",
                            self.at(loc)
                        )
                    })?)
                } else {
                    axis.map_or(Kind::Fixed, Kind::Rows)
                };
                (op.remapped(&self.map), kind)
            }
        };
        let id = self.push(op, node.ty.clone(), loc);
        self.map.push(id);
        self.kind.push(kind);
        Ok(())
    }

    /// A tabulate over (query, key) positions: its new query rows against every key position.
    fn grid(&mut self, i: usize, f: &ScalarFn, row: usize, key: usize) -> Result<(), String> {
        let node = &self.g.nodes[i];
        let mut ty = node.ty.clone();
        ty.dims[key] = Dim::Static(self.capacity);
        let f = self.rewrite_fn(f, Some(row), Some(key), &[], node.loc)?;
        let id = self.push(Op::Tabulate { f }, ty, node.loc);
        self.map.push(id);
        self.kind.push(Kind::Grid(row, key));
        Ok(())
    }

    /// Rejects an op that would mix positions: reducing, slicing or contracting along the
    /// sequence, or looking rows up in a table that grows with it.
    fn rows_op(&self, op: &Op, axis: Option<usize>, loc: Loc) -> Result<(), String> {
        let axis_of = |v: &ValueId| match self.kind[v.0 as usize] {
            Kind::Rows(a) => Some(a),
            _ => None,
        };
        let mixes = match op {
            Op::Reduce { x, axis: r, .. } => axis_of(x) == Some(*r),
            Op::Slice { x, axis: s, .. } => axis_of(x) == Some(*s),
            Op::Concat { parts, axis: c } => parts.iter().any(|p| axis_of(p) == Some(*c)),
            Op::MatMul { lhs, rhs } => axis_of(rhs).is_some() || axis_of(lhs) == Some(self.g.ty(*lhs).rank() - 1),
            Op::Gather { table, .. } => axis_of(table).is_some(),
            _ => axis.is_none(),
        };
        if mixes {
            return Err(format!(
                "the value at {} combines different positions of the sequence (a sum, slice or product along it); \
                 decoding computes a few positions at a time and can only look back through attention, scans and index functions",
                self.at(loc)
            ));
        }
        Ok(())
    }

    /// A scan step sees one position at a time: it may not read a whole sequence from outside
    /// its body (values inside it are steps; values that grow with the sequence are outside).
    fn step_reads_outside(&self, op: &Op, loc: Loc) -> Result<(), String> {
        let reads: Vec<ValueId> = match op {
            Op::Tabulate { f } => f.tensors(),
            op => op.operands(),
        };
        if reads
            .iter()
            .any(|o| matches!(self.kind[o.0 as usize], Kind::Rows(_) | Kind::Grid(..) | Kind::Final))
        {
            return Err(format!(
                "the scan step at {} reads a whole sequence from outside the scan; pass it as a scanned input instead",
                self.at(loc)
            ));
        }
        Ok(())
    }

    /// The history cache of `v` (a value computed row by row), with this call's rows written:
    /// made at its first reader.
    fn history(&mut self, v: ValueId) -> Result<ValueId, String> {
        if let Some(&h) = self.history.get(&v) {
            return Ok(h);
        }
        let (slot, carried, axis) = self.cache_of(v, self.capacity, |axis| CacheKind::History { axis })?;
        let op = Op::WriteRows {
            base: carried,
            rows: self.map[v.0 as usize],
            axis,
            at: self.position,
        };
        let written = self.push(op, self.out.node(carried).ty.clone(), self.g.node(v).loc);
        self.cache_outputs[slot].1 = Some(written);
        self.history.insert(v, written);
        Ok(written)
    }

    /// The ring of the last `length` rows of `v` as the call began (made at its first reader;
    /// the call's rows are written into it at the end, after every read).
    fn ring(&mut self, v: ValueId, length: i64) -> Result<ValueId, String> {
        if let Some(&(ring, ..)) = self.rings.get(&v) {
            return Ok(ring);
        }
        let (slot, carried, axis) = self.cache_of(v, length, |axis| CacheKind::Window { axis, length })?;
        self.rings.insert(v, (carried, slot, axis));
        Ok(carried)
    }

    /// A cache of `length` rows of `v` along its sequence axis: its slot, its value as the call
    /// began, and the axis.
    fn cache_of(&mut self, v: ValueId, length: i64, kind: impl Fn(usize) -> CacheKind) -> Result<(usize, ValueId, usize), String> {
        let Kind::Rows(axis) = self.kind[v.0 as usize] else {
            return Err("internal: a cache of a value that has no sequence axis".into());
        };
        let node = self.g.node(v);
        let mut ty = node.ty.clone();
        ty.dims[axis] = Dim::Static(length);
        let (slot, carried) = self.cache(ty, kind(axis), node.loc);
        Ok((slot, carried, axis))
    }

    /// A new cache: an output (after the forward's) read as it was when the call began. Returns
    /// its slot and that value.
    fn cache(&mut self, ty: TensorType, kind: CacheKind, loc: Loc) -> (usize, ValueId) {
        let slot = self.caches.len();
        let output = self.g.outputs.len() + slot;
        self.caches.push(CacheSlot { output, kind });
        let decl = TensorDecl {
            name: format!("cache.{slot}"),
            ty: ty.clone(),
            index_bound: None,
            default: None,
        };
        self.cache_outputs.push((decl, None));
        (slot, self.push(Op::Carry(output), ty, loc))
    }

    /// Before a scan's body: a state cache per state, and the state each call starts from.
    fn state_prelude(&mut self, scan: usize) -> Result<(), String> {
        let Op::Scan(s) = &self.g.nodes[scan].op else {
            return Err("internal: not a scan".into());
        };
        let loc = self.g.nodes[scan].loc;
        if s.reverse {
            return Err(format!(
                "the scan at {} runs backward in time; a decode step runs forward",
                self.at(loc)
            ));
        }
        let mut init = Vec::new();
        let mut slots = Vec::new();
        for &v in &s.init {
            if v.0 >= s.body_start.0 || self.kind[v.0 as usize] != Kind::Fixed {
                return Err(format!(
                    "the scan at {} starts from a state that depends on the sequence; decoding starts each call from the state the last one left",
                    self.at(loc)
                ));
            }
            let ty = self.g.ty(v).clone();
            if ty.dtype != DType::F32 {
                return Err(format!("internal: a scan state of type {}", self.g.type_name(&ty)));
            }
            let (slot, state) = self.cache(ty.clone(), CacheKind::State, loc);
            // `if position == 0 { init } else { state }`, element by element.
            let rank = ty.rank();
            let mut nodes: Vec<(ScalarNode, ScalarType)> = (0..rank).map(|k| (ScalarNode::Param(k), ScalarType::Int)).collect();
            let all: Vec<usize> = (0..rank).collect();
            nodes.extend([
                (
                    ScalarNode::Load {
                        tensor: self.position,
                        indices: vec![],
                    },
                    ScalarType::Int,
                ),
                (ScalarNode::Int(0), ScalarType::Int),
                (
                    ScalarNode::Binary {
                        op: ScalarBinary::Eq,
                        a: rank,
                        b: rank + 1,
                    },
                    ScalarType::Bool,
                ),
                (
                    ScalarNode::Load {
                        tensor: self.map[v.0 as usize],
                        indices: all.clone(),
                    },
                    ScalarType::F32,
                ),
                (
                    ScalarNode::Load {
                        tensor: state,
                        indices: all,
                    },
                    ScalarType::F32,
                ),
                (
                    ScalarNode::Select {
                        cond: rank + 2,
                        a: rank + 3,
                        b: rank + 4,
                    },
                    ScalarType::F32,
                ),
            ]);
            let f = ScalarFn {
                params: vec![ScalarType::Int; rank],
                nodes,
                result: rank + 5,
            };
            init.push(self.push(Op::Tabulate { f }, ty, loc));
            slots.push(slot);
        }
        self.scan_init.insert(scan, init);
        self.scan_slots.insert(scan, slots);
        Ok(())
    }

    fn scan(&mut self, i: usize, s: &Scan, in_step: bool) -> Result<(), String> {
        let loc = self.g.nodes[i].loc;
        let Some(init) = self.scan_init.get(&i).cloned() else {
            // Not over the sequence: nothing in it may grow with the sequence.
            if s.init
                .iter()
                .chain(&s.xs)
                .any(|v| matches!(self.kind[v.0 as usize], Kind::Rows(_) | Kind::Final))
            {
                return Err(format!(
                    "the scan at {} runs along another axis of a value that grows with the sequence; decoding cannot split it",
                    self.at(loc)
                ));
            }
            let id = self.push(self.g.nodes[i].op.remapped(&self.map), self.g.nodes[i].ty.clone(), loc);
            self.map.push(id);
            self.kind.push(if in_step { Kind::Step } else { Kind::Fixed });
            return Ok(());
        };
        for x in &s.xs {
            if self.kind[x.0 as usize] != Kind::Rows(s.axis) {
                return Err(format!(
                    "the scan at {} scans a value that is not along the sequence with the others",
                    self.at(loc)
                ));
            }
        }
        let m = |v: &ValueId| self.map[v.0 as usize];
        let op = Op::Scan(Box::new(Scan {
            axis: s.axis,
            reverse: false,
            init,
            xs: s.xs.iter().map(m).collect(),
            body_start: m(&s.body_start),
            next: s.next.iter().map(m).collect(),
            outputs: s.outputs.iter().map(m).collect(),
        }));
        let id = self.push(op, self.g.nodes[i].ty.clone(), loc);
        self.map.push(id);
        self.kind.push(Kind::Step);
        Ok(())
    }

    fn attention(
        &mut self,
        i: usize,
        qkv: [ValueId; 3],
        scale: f64,
        mask: Option<&ScalarFn>,
        score: Option<&ScalarFn>,
    ) -> Result<(), String> {
        let node = &self.g.nodes[i];
        let loc = node.loc;
        let [q, k_kind, v] = qkv.map(|x| self.kind[x.0 as usize]);
        let (k, v, kind) = match (q, k_kind, v) {
            (Kind::Fixed, Kind::Fixed, Kind::Fixed) => (self.map[qkv[1].0 as usize], self.map[qkv[2].0 as usize], Kind::Fixed),
            // Cross-attention: the keys do not grow with the sequence.
            (Kind::Rows(2), Kind::Fixed, Kind::Fixed) => (self.map[qkv[1].0 as usize], self.map[qkv[2].0 as usize], Kind::Rows(2)),
            (Kind::Rows(2), Kind::Rows(2), Kind::Rows(2)) => {
                if !mask.is_some_and(is_causal) {
                    return Err(format!(
                        "the attention at {} is not causal: its keys are the sequence itself, so its mask must contain `j <= i` \
                         (or `j < i`), or a position would see later ones that decoding has not computed yet",
                        self.at(loc)
                    ));
                }
                (self.history(qkv[1])?, self.history(qkv[2])?, Kind::Rows(2))
            }
            _ => {
                return Err(format!(
                "the attention at {} mixes the sequence axis into heads or features; decoding needs queries, keys and values [B, H, T, D]",
                self.at(loc)
            ))
            }
        };
        // Queries walk the new rows; keys walk the history caches of a self-attention (an
        // encoder's keys in a cross-attention are not positions of the sequence).
        let own = (kind != Kind::Fixed).then_some(2);
        let key = matches!(k_kind, Kind::Rows(_)).then_some(3);
        let mask = mask.map(|f| self.rewrite_fn(f, own, key, &[], loc)).transpose()?;
        let score = score
            .map(|f| self.rewrite_fn(f, own.map(|p| p + 1), key.map(|p| p + 1), &[], loc))
            .transpose()?;
        let op = Op::Attention {
            q: self.map[qkv[0].0 as usize],
            k,
            v,
            scale,
            mask,
            score,
            dropout: None,
        };
        let id = self.push(op, node.ty.clone(), loc);
        self.map.push(id);
        self.kind.push(kind);
        Ok(())
    }

    /// An index function with its positions made absolute. `own` is the parameter that walks
    /// the sequence axis of the value it computes (`t` of a tabulate, `i` of a mask); `key` the
    /// one that walks an attention's keys, which may read a history cache freely (the mask is
    /// causal). `ranges` are the largest values of parameters with a fixed range.
    fn rewrite_fn(
        &mut self,
        f: &ScalarFn,
        own: Option<usize>,
        key: Option<usize>,
        ranges: &[Option<i64>],
        loc: Loc,
    ) -> Result<ScalarFn, String> {
        let mut nodes: Vec<(ScalarNode, ScalarType)> = Vec::with_capacity(f.nodes.len() + 3);
        let mut raw_own = None;
        let mut absolute = None;
        if let Some(p) = own {
            nodes.push((ScalarNode::Param(p), ScalarType::Int));
            nodes.push((
                ScalarNode::Load {
                    tensor: self.position,
                    indices: vec![],
                },
                ScalarType::Int,
            ));
            nodes.push((
                ScalarNode::Binary {
                    op: ScalarBinary::Add,
                    a: 0,
                    b: 1,
                },
                ScalarType::Int,
            ));
            raw_own = Some(0);
            absolute = Some(2);
        }
        let mut map: Vec<usize> = Vec::with_capacity(f.nodes.len());
        for (k, (n, t)) in f.nodes.iter().enumerate() {
            let new = match n {
                ScalarNode::Param(p) if Some(*p) == own => {
                    map.push(absolute.unwrap_or(0));
                    continue;
                }
                ScalarNode::Symbol(s) if *s == self.time && own.is_some() => {
                    return Err(format!(
                        "the index function at {} reads the sequence length {}, which decoding changes from call to call",
                        self.at(loc),
                        self.g.symbols[s.0 as usize].name
                    ))
                }
                ScalarNode::Load { tensor, indices } => {
                    let mut new_indices: Vec<usize> = indices.iter().map(|i| map[*i]).collect();
                    let target = match self.kind[tensor.0 as usize] {
                        Kind::Fixed => self.map[tensor.0 as usize],
                        Kind::Rows(axis) => {
                            let index = indices[axis];
                            let is_param = |p: Option<usize>| p.is_some() && f.nodes[index].0 == ScalarNode::Param(p.unwrap_or(0));
                            if own.is_none() {
                                return Err(format!(
                                    "the index function at {} reads a value that grows with the sequence, but its own value does not; \
                                     decoding cannot compute it a few positions at a time",
                                    self.at(loc)
                                ));
                            } else if is_param(own) {
                                // Its own row: read from this call's rows.
                                new_indices[axis] = raw_own.unwrap_or(0);
                                self.map[tensor.0 as usize]
                            } else if let (Some(&length), false) = (self.windows.get(tensor), is_param(key)) {
                                // A read a few positions back: from this call's rows, or from
                                // the ring of the last `length` rows before them.
                                let ring = self.ring(*tensor, length)?;
                                let rows = self.map[tensor.0 as usize];
                                let at = push_ring_read(&mut nodes, new_indices, axis, [rows, ring, self.position], length, *t);
                                nodes.push((
                                    ScalarNode::Select {
                                        cond: at.0,
                                        a: at.1,
                                        b: at.2,
                                    },
                                    *t,
                                ));
                                map.push(nodes.len() - 1);
                                continue;
                            } else if is_param(key) || looks_back(f, index, own.unwrap_or(0), ranges) {
                                self.history(*tensor)?
                            } else {
                                return Err(format!(
                                    "the index function at {} reads a position that may come after its own; decoding has not computed it yet \
                                     (a causal read is `t - c` with c >= 0 for every value of the other indices)",
                                    self.at(loc)
                                ));
                            }
                        }
                        Kind::Grid(row, key_axis) => {
                            let at = |axis: usize, p: Option<usize>| {
                                p.is_some() && f.nodes[indices[axis]].0 == ScalarNode::Param(p.unwrap_or(0))
                            };
                            if !(at(row, own) && at(key_axis, key)) {
                                return Err(format!(
                                    "the index function at {} reads a [query, key] table elsewhere than at its own query and key",
                                    self.at(loc)
                                ));
                            }
                            new_indices[row] = raw_own.unwrap_or(0);
                            self.map[tensor.0 as usize]
                        }
                        Kind::Step | Kind::Final => {
                            return Err(format!("the index function at {} reads a scan's state", self.at(loc)));
                        }
                    };
                    ScalarNode::Load {
                        tensor: target,
                        indices: new_indices,
                    }
                }
                ScalarNode::Binary { op, a, b } => ScalarNode::Binary {
                    op: *op,
                    a: map[*a],
                    b: map[*b],
                },
                ScalarNode::Unary { op, a } => ScalarNode::Unary { op: *op, a: map[*a] },
                ScalarNode::Select { cond, a, b } => ScalarNode::Select {
                    cond: map[*cond],
                    a: map[*a],
                    b: map[*b],
                },
                other => other.clone(),
            };
            debug_assert_eq!(map.len(), k);
            nodes.push((new, *t));
            map.push(nodes.len() - 1);
        }
        Ok(ScalarFn {
            params: f.params.clone(),
            nodes,
            result: map[f.result],
        })
    }

    fn finish(mut self, tokens: usize, logits: usize) -> Result<Decoding, String> {
        // Each ring takes this call's rows last, once everything has read its older rows.
        let mut rings: Vec<(ValueId, (ValueId, usize, usize))> = self.rings.iter().map(|(v, r)| (*v, *r)).collect();
        rings.sort();
        for (v, (ring, slot, axis)) in rings {
            let op = Op::WriteRing {
                base: ring,
                rows: self.map[v.0 as usize],
                axis,
                at: self.position,
            };
            let ty = self.out.node(ring).ty.clone();
            let written = self.push(op, ty, self.g.node(v).loc);
            self.cache_outputs[slot].1 = Some(written);
        }
        let mut outputs: Vec<(TensorDecl, ValueId)> = self.g.outputs.iter().map(|(d, v)| (d.clone(), self.map[v.0 as usize])).collect();
        for (decl, value) in std::mem::take(&mut self.cache_outputs) {
            let value = value.ok_or("internal: a cache without its new value")?;
            outputs.push((decl, value));
        }
        self.out.outputs = outputs;
        let context_values = self.context_values();
        let context = if context_values.is_empty() {
            None
        } else {
            let mut c = self.out.clone();
            c.outputs = context_values
                .iter()
                .enumerate()
                .map(|(k, v)| {
                    let decl = TensorDecl {
                        name: format!("context.{k}"),
                        ty: c.node(*v).ty.clone(),
                        index_bound: None,
                        default: None,
                    };
                    (decl, *v)
                })
                .collect();
            c.model = format!("{}Context", self.g.model);
            Some(prune(c)?)
        };
        // In the step, each context value is an input; what only computed it goes.
        let mut context_inputs = Vec::new();
        for (k, v) in context_values.iter().enumerate() {
            let ty = self.out.node(*v).ty.clone();
            self.out.inputs.push(TensorDecl {
                name: format!("context.{k}"),
                ty,
                index_bound: None,
                default: None,
            });
            context_inputs.push(self.out.inputs.len() - 1);
            self.out.nodes[v.0 as usize].op = Op::Input(self.out.inputs.len() - 1);
        }
        // Position ids that default to 0..T number a whole sequence; a step's new rows start at
        // `position`, and in a left-padded batch each row's count differs: the caller gives them.
        let time = self.time;
        let position_ids = self
            .out
            .inputs
            .iter()
            .position(|i| i.default == Some(lmc_abi::InputDefault::Arange) && i.ty.dims.last() == Some(&Dim::Symbol(time)));
        if let Some(k) = position_ids {
            self.out.inputs[k].default = None;
        }
        self.out.decode = Some(DecodeInfo {
            capacity: self.capacity,
            position_ids,
            position: self.out.inputs.iter().position(|i| i.name == POSITION_INPUT).unwrap_or(0),
            tokens,
            logits,
            caches: self.caches,
            context: context_inputs,
        });
        let step = prune(self.out)?;
        if let Some(c) = &context {
            c.verify()
                .map_err(|e| format!("internal: the derived context function is malformed: {e}"))?;
        }
        step.verify()
            .map_err(|e| format!("internal: the derived step function is malformed: {e}"))?;
        Ok(Decoding { step, context })
    }

    /// The values the step reads that do not change from step to step but depend on inputs:
    /// fixed values (not inputs themselves) read by a value that grows with the sequence.
    fn context_values(&self) -> Vec<ValueId> {
        let n = self.out.nodes.len();
        let mut fixed = vec![false; n];
        for (v, k) in self.map.iter().zip(&self.kind) {
            fixed[v.0 as usize] = *k == Kind::Fixed;
        }
        let mut from_inputs = vec![false; n];
        let mut context = Vec::new();
        for (i, node) in self.out.nodes.iter().enumerate() {
            let reads = node.op.operands();
            from_inputs[i] = matches!(node.op, Op::Input(_)) || reads.iter().any(|r| from_inputs[r.0 as usize]);
            if fixed[i] {
                continue;
            }
            for r in reads {
                let r = r.0 as usize;
                if fixed[r] && from_inputs[r] && !matches!(self.out.nodes[r].op, Op::Input(_)) && !context.contains(&ValueId(r as u32)) {
                    context.push(ValueId(r as u32));
                }
            }
        }
        context.sort();
        context
    }
}

/// `g` without what its outputs do not need: dead nodes, unused inputs and symbols (each
/// symbol then read from the first input left that has it).
fn prune(mut g: Graph) -> Result<Graph, String> {
    let n = g.nodes.len();
    let mut live = vec![false; n];
    for (_, v) in &g.outputs {
        live[v.0 as usize] = true;
    }
    for i in (0..n).rev() {
        if !live[i] {
            continue;
        }
        match &g.nodes[i].op {
            // A live scan keeps its whole body, and every result (they must follow it).
            Op::Scan(s) => {
                for l in live.iter_mut().take(i).skip(s.body_start.0 as usize) {
                    *l = true;
                }
                for l in live.iter_mut().skip(i + 1).take(s.result_count()) {
                    *l = true;
                }
            }
            op => {
                for o in op.operands() {
                    live[o.0 as usize] = true;
                }
            }
        }
        if let Op::Scan(s) = &g.nodes[i].op {
            for o in s.init.iter().chain(&s.xs) {
                live[o.0 as usize] = true;
            }
        }
    }
    // Renumber the nodes kept, then the inputs they read.
    let mut map = vec![ValueId(u32::MAX); n];
    let mut nodes = Vec::with_capacity(n);
    for (i, node) in g.nodes.iter().enumerate().filter(|(i, _)| live[*i]) {
        map[i] = ValueId(nodes.len() as u32);
        nodes.push(Node {
            op: node.op.remapped(&map),
            ..node.clone()
        });
    }
    let used_inputs: Vec<usize> = (0..g.inputs.len())
        .filter(|k| nodes.iter().any(|node: &Node| node.op == Op::Input(*k)))
        .collect();
    let input_index = |k: usize| used_inputs.iter().position(|u| *u == k);
    for node in &mut nodes {
        if let Op::Input(k) = node.op {
            node.op = Op::Input(input_index(k).ok_or("internal: a live input was dropped")?);
        }
    }
    g.inputs = used_inputs.iter().map(|k| g.inputs[*k].clone()).collect();
    if let Some(d) = &mut g.decode {
        d.position = input_index(d.position).ok_or("internal: the step lost its position")?;
        d.tokens = input_index(d.tokens).ok_or("internal: the step lost its tokens")?;
        d.position_ids = d.position_ids.and_then(input_index);
        d.context = d.context.iter().filter_map(|k| input_index(*k)).collect();
    }
    for (_, v) in &mut g.outputs {
        *v = map[v.0 as usize];
    }
    g.nodes = nodes;
    // Symbols: those still used, each read from the first input that has it.
    let mut used = vec![false; g.symbols.len()];
    let mut mark = |t: &TensorType| {
        for d in &t.dims {
            if let Dim::Symbol(s) = d {
                used[s.0 as usize] = true;
            }
        }
    };
    g.nodes.iter().for_each(|node| mark(&node.ty));
    g.inputs.iter().for_each(|d| mark(&d.ty));
    g.outputs.iter().for_each(|(d, _)| mark(&d.ty));
    for node in &g.nodes {
        let fns: Vec<&ScalarFn> = match &node.op {
            Op::Tabulate { f } => vec![f],
            Op::Attention { mask, score, dropout, .. } => mask.iter().chain(score.iter()).chain(dropout.iter()).collect(),
            Op::Arange(Dim::Symbol(s)) => {
                used[s.0 as usize] = true;
                vec![]
            }
            _ => vec![],
        };
        for f in fns {
            for (sn, _) in &f.nodes {
                if let ScalarNode::Symbol(s) = sn {
                    used[s.0 as usize] = true;
                }
            }
        }
    }
    let kept: Vec<usize> = (0..g.symbols.len()).filter(|s| used[*s]).collect();
    let new_id = |s: SymbolId| SymbolId(kept.iter().position(|k| *k == s.0 as usize).unwrap_or(0) as u32);
    let rename = |t: &mut TensorType| {
        for d in &mut t.dims {
            if let Dim::Symbol(s) = d {
                *s = new_id(*s);
            }
        }
    };
    for node in &mut g.nodes {
        rename(&mut node.ty);
        let fns: Vec<&mut ScalarFn> = match &mut node.op {
            Op::Tabulate { f } => vec![f],
            Op::Attention { mask, score, dropout, .. } => mask.iter_mut().chain(score.iter_mut()).chain(dropout.iter_mut()).collect(),
            Op::Arange(Dim::Symbol(s)) => {
                *s = new_id(*s);
                vec![]
            }
            _ => vec![],
        };
        for f in fns {
            for (sn, _) in &mut f.nodes {
                if let ScalarNode::Symbol(s) = sn {
                    *s = new_id(*s);
                }
            }
        }
    }
    g.inputs.iter_mut().for_each(|d| rename(&mut d.ty));
    g.outputs.iter_mut().for_each(|(d, _)| rename(&mut d.ty));
    let mut symbols = Vec::with_capacity(kept.len());
    for (new, &old) in kept.iter().enumerate() {
        let mut symbol = g.symbols[old].clone();
        symbol.source = g
            .inputs
            .iter()
            .enumerate()
            .find_map(|(k, d)| {
                d.ty.dims
                    .iter()
                    .position(|x| *x == Dim::Symbol(SymbolId(new as u32)))
                    .map(|axis| (k, axis))
            })
            .ok_or_else(|| format!("{} is used, but no input of the derived function has it", symbol.name))?;
        symbols.push(symbol);
    }
    g.symbols = symbols;
    Ok(g)
}

/// Appends to `nodes` a read of `rows` (this call's rows of a value, along `axis`) at the
/// absolute position in `indices[axis]`, falling back to `ring` (its last `length` rows before
/// the call, entry p mod length for position p) for a position before the call; `elem` is the
/// element's type. A position before 0 reads position 0, as the forward's clamped read does.
/// Returns the nodes of the condition (in this call's rows), the new-rows read and the ring
/// read, for a `Select`.
fn push_ring_read(
    nodes: &mut Vec<(ScalarNode, ScalarType)>,
    indices: Vec<usize>,
    axis: usize,
    [rows, ring, position]: [ValueId; 3],
    length: i64,
    elem: ScalarType,
) -> (usize, usize, usize) {
    let mut push = |n: ScalarNode, t: ScalarType| {
        nodes.push((n, t));
        nodes.len() - 1
    };
    let zero = push(ScalarNode::Int(0), ScalarType::Int);
    let at = push(
        ScalarNode::Binary {
            op: ScalarBinary::Max,
            a: indices[axis],
            b: zero,
        },
        ScalarType::Int,
    );
    let first = push(
        ScalarNode::Load {
            tensor: position,
            indices: vec![],
        },
        ScalarType::Int,
    );
    let fresh = push(
        ScalarNode::Binary {
            op: ScalarBinary::Ge,
            a: at,
            b: first,
        },
        ScalarType::Bool,
    );
    let row = push(
        ScalarNode::Binary {
            op: ScalarBinary::Sub,
            a: at,
            b: first,
        },
        ScalarType::Int,
    );
    let len = push(ScalarNode::Int(length), ScalarType::Int);
    let entry = push(
        ScalarNode::Binary {
            op: ScalarBinary::Rem,
            a: at,
            b: len,
        },
        ScalarType::Int,
    );
    let mut new_indices = indices.clone();
    new_indices[axis] = row;
    let mut ring_indices = indices;
    ring_indices[axis] = entry;
    let a = push(
        ScalarNode::Load {
            tensor: rows,
            indices: new_indices,
        },
        elem,
    );
    let b = push(
        ScalarNode::Load {
            tensor: ring,
            indices: ring_indices,
        },
        elem,
    );
    (fresh, a, b)
}

/// The values of `g` that only index functions read back, each at most a few positions before
/// its own (`t - c` with `0 <= c <= k` over its other indices' ranges), with the most `k` they
/// read back (at least 1): a window of them is enough. A value read any other way (an
/// attention's keys, a read at an expression that is not `t` plus a bounded offset) keeps its
/// whole history.
fn windows(g: &Graph, time: SymbolId) -> HashMap<ValueId, i64> {
    let axis_of = |t: &TensorType| t.dims.iter().position(|d| *d == Dim::Symbol(time));
    let mut back: HashMap<ValueId, i64> = HashMap::new();
    let mut whole: Vec<ValueId> = Vec::new();
    for node in &g.nodes {
        match &node.op {
            Op::Tabulate { f } => {
                let own = axis_of(&node.ty);
                let ranges = index_maxima(&node.ty);
                for (n, _) in &f.nodes {
                    let ScalarNode::Load { tensor, indices } = n else { continue };
                    let Some(axis) = axis_of(g.ty(*tensor)) else { continue };
                    let index = indices[axis];
                    match own.map(|p| (p, affine(f, index, p, &ranges))) {
                        Some((p, _)) if f.nodes[index].0 == ScalarNode::Param(p) => {}
                        Some((_, Some((1, lo, hi)))) if hi <= 0 => {
                            let k = back.entry(*tensor).or_insert(1);
                            *k = (*k).max(-lo);
                        }
                        _ => whole.push(*tensor),
                    }
                }
            }
            Op::Attention { k, v, mask, score, .. } => {
                whole.extend([*k, *v]);
                for f in mask.iter().chain(score.iter()) {
                    whole.extend(f.tensors());
                }
            }
            _ => {}
        }
    }
    back.retain(|v, _| !whole.contains(v));
    back
}

/// Whether a mask keeps only keys at or before the query: a conjunction with `j <= i` or `j < i`
/// in it (parameters 2 and 3 are the query and the key).
fn is_causal(mask: &ScalarFn) -> bool {
    fn conjunct(f: &ScalarFn, k: usize) -> bool {
        let param = |x: usize, p: usize| f.nodes[x].0 == ScalarNode::Param(p);
        match f.nodes[k].0 {
            ScalarNode::Binary {
                op: ScalarBinary::And,
                a,
                b,
            } => conjunct(f, a) || conjunct(f, b),
            ScalarNode::Binary {
                op: ScalarBinary::Le | ScalarBinary::Lt,
                a,
                b,
            } => param(a, 3) && param(b, 2),
            ScalarNode::Binary {
                op: ScalarBinary::Ge | ScalarBinary::Gt,
                a,
                b,
            } => param(a, 2) && param(b, 3),
            _ => false,
        }
    }
    conjunct(mask, mask.result)
}

/// Whether index `k` of `f` is at or before the position `own` walks, for every value of the
/// other parameters (`ranges` gives their largest values; a read of a fixed early row counts).
fn looks_back(f: &ScalarFn, k: usize, own: usize, ranges: &[Option<i64>]) -> bool {
    match f.nodes[k].0 {
        ScalarNode::Binary {
            op: ScalarBinary::Max,
            a,
            b,
        } => looks_back(f, a, own, ranges) && looks_back(f, b, own, ranges),
        ScalarNode::Binary {
            op: ScalarBinary::Min,
            a,
            b,
        } => looks_back(f, a, own, ranges) || looks_back(f, b, own, ranges),
        ScalarNode::Select { a, b, .. } => looks_back(f, a, own, ranges) && looks_back(f, b, own, ranges),
        // `coef · t + offset` with offset <= 0 is at most t for every t >= 0.
        _ => matches!(affine(f, k, own, ranges), Some((0 | 1, _, hi)) if hi <= 0),
    }
}

/// The largest value each index of a tabulate over `ty` takes: its size less one where the
/// size is fixed, unknown where it is a symbol.
fn index_maxima(ty: &TensorType) -> Vec<Option<i64>> {
    ty.dims
        .iter()
        .map(|d| if let Dim::Static(n) = d { Some(n - 1) } else { None })
        .collect()
}

/// Index `k` as `coef · t + [lo, hi]` over the other parameters' ranges, when it is that simple.
fn affine(f: &ScalarFn, k: usize, own: usize, ranges: &[Option<i64>]) -> Option<(i64, i64, i64)> {
    match f.nodes[k].0 {
        ScalarNode::Param(p) if p == own => Some((1, 0, 0)),
        ScalarNode::Param(p) => ranges.get(p).copied().flatten().map(|max| (0, 0, max)),
        ScalarNode::Int(c) => Some((0, c, c)),
        ScalarNode::Binary { op, a, b } => {
            let (x, y) = (affine(f, a, own, ranges)?, affine(f, b, own, ranges)?);
            match op {
                ScalarBinary::Add => Some((x.0 + y.0, x.1.checked_add(y.1)?, x.2.checked_add(y.2)?)),
                ScalarBinary::Sub => Some((x.0 - y.0, x.1.checked_sub(y.2)?, x.2.checked_sub(y.1)?)),
                _ => None,
            }
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ConfigOverrides;
    use crate::interp::{evaluate, evaluate_carrying, Data, Tensor};
    use crate::ir::CacheKind;
    use crate::program::load_source;

    /// Every way a position may look back: learned positions, a token shift, a causal
    /// convolution, causal attention with a padding mask read per key and a distance penalty,
    /// and a scan; then the ways it may not.
    const FILE: &str = r#"
config C { v = 11  d = 6  p = 16 }

model Mix(c: C) {
  param table: f32[c.v, c.d]
  param pos: f32[c.p, c.d]
  param w: f32[c.d, c.d]
  param kernel: f32[c.d, 3]
  param head: f32[c.d, c.v]

  forward(ids: i64[B, T], keep: i64[B, T]) -> (logits: f32[B, T, c.v]) {
    x = gather(table, ids) + gather(pos, arange(T))
    shifted = tabulate(B, T, c.d, (b, t, i) => if t > 0 { x[b, t - 1, i] } else { 0.0 })
    taps = tabulate(B, T, c.d, 3, (b, t, i, k) => if t + k >= 2 { x[b, t + k - 2, i] * kernel[i, k] } else { 0.0 })
    h = x @ w + shifted + sum(taps, axis = -1)
    context = attention(
      split_heads(h, 2),
      split_heads(h * 0.5, 2),
      split_heads(h, 2),
      mask = (b, n, i, j) => j <= i and keep[b, j] != 0,
      score = (s, b, n, i, j) => s - 0.1 * float(i - j),
    )
    s, last = scan(y_t in merge_heads(context), state = tabulate(B, c.d, (b, i) => 1.0)) {
      state = 0.5 * state + y_t
      return state
    }
    return s @ head
  }
}

model Ahead(c: C) {
  param table: f32[c.v, c.v]
  forward(ids: i64[B, T]) -> (logits: f32[B, T, c.v]) {
    x = gather(table, ids)
    return tabulate(B, T, c.v, (b, t, i) => x[b, t + 1, i])
  }
}

model Everywhere(c: C) {
  param table: f32[c.v, c.v]
  forward(ids: i64[B, T]) -> (logits: f32[B, T, c.v]) {
    x = gather(table, ids)
    return x - mean(x, axis = 1, keepdim = true)
  }
}

model Table(c: C) {
  param table: f32[c.v, c.v]
  forward(ids: i64[B, T]) -> (logits: f32[B, T, c.v]) {
    distances = tabulate(T, T, (i, j) => float(i - j))
    return gather(table, ids) + unsqueeze(sum(distances, axis = -1), -1)
  }
}

model Bidirectional(c: C) {
  param table: f32[c.v, c.v]
  forward(ids: i64[B, T]) -> (logits: f32[B, T, c.v]) {
    x = split_heads(gather(table, ids), 1)
    return merge_heads(attention(x, x, x, mask = (b, n, i, j) => true))
  }
}
"#;

    fn graph(model: &str) -> Graph {
        let p = load_source("t.model", FILE, None).unwrap();
        crate::check_model(&p, Some(model), &ConfigOverrides::default()).unwrap().graph
    }

    fn floats(t: &Tensor) -> &[f32] {
        match &t.data {
            Data::F32(v) => v,
            Data::Int(_) => panic!("not f32"),
        }
    }

    /// Deterministic values in [-1, 1).
    fn values(n: usize, seed: u64) -> Vec<f32> {
        let mut x = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (0..n)
            .map(|_| {
                x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                ((x >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
            })
            .collect()
    }

    #[test]
    fn decoding_in_chunks_gives_the_forward_at_every_position() {
        let forward = graph("Mix");
        let capacity = 9;
        let step = derive_decode(&forward, capacity).unwrap().step;
        let params: Vec<Tensor> = forward
            .params
            .iter()
            .enumerate()
            .map(|(k, p)| {
                let shape: Vec<usize> =
                    p.ty.dims
                        .iter()
                        .map(|d| if let Dim::Static(n) = d { *n as usize } else { 0 })
                        .collect();
                Tensor::f32(shape.clone(), values(shape.iter().product(), k as u64))
            })
            .collect();
        let (batch, length) = (2usize, 9usize);
        let ids: Vec<i64> = (0..batch * length).map(|k| (k as i64 * 7 + 3) % 11).collect();
        // The second sequence has a padding token at position 1, which later keys skip.
        let keep: Vec<i64> = (0..batch * length).map(|k| i64::from(k != length + 1)).collect();
        let full = evaluate(
            &forward,
            &params,
            &[
                Tensor::int(vec![batch, length], ids.clone()),
                Tensor::int(vec![batch, length], keep.clone()),
            ],
        );
        let full = floats(&full[0]);
        let vocab = 11;

        let info = step.decode.clone().unwrap();
        assert_eq!(
            info.caches.len(),
            5,
            "x (one window for the shift and the convolution), keys, values, the mask, the scan state"
        );
        // The shift reads one position back, the convolution two: a window of two rows.
        assert_eq!(info.caches[0].kind, CacheKind::Window { axis: 1, length: 2 });
        let mut caches: Vec<(usize, Tensor)> = info
            .caches
            .iter()
            .map(|c| {
                let ty = &step.outputs[c.output].0.ty;
                let shape: Vec<usize> = ty
                    .dims
                    .iter()
                    .map(|d| if let Dim::Static(n) = d { *n as usize } else { batch })
                    .collect();
                let n = shape.iter().product();
                let zeros = match ty.dtype {
                    DType::F32 => Tensor::f32(shape, vec![0.0; n]),
                    _ => Tensor::int(shape, vec![0; n]),
                };
                (c.output, zeros)
            })
            .collect();
        let mut at = 0;
        for n in [3usize, 1, 2, 1, 1, 1] {
            let cut = |v: &[i64]| -> Vec<i64> { (0..batch).flat_map(|b| v[b * length + at..b * length + at + n].to_vec()).collect() };
            let inputs = vec![
                Tensor::int(vec![batch, n], cut(&ids)),
                Tensor::int(vec![batch, n], cut(&keep)),
                Tensor::int(vec![], vec![at as i64]),
            ];
            let out = evaluate_carrying(&step, &params, &inputs, &caches);
            let logits = floats(&out[0]);
            for b in 0..batch {
                for t in 0..n {
                    for v in 0..vocab {
                        let got = logits[(b * n + t) * vocab + v];
                        let want = full[(b * length + at + t) * vocab + v];
                        assert!(
                            (got - want).abs() <= 1e-5,
                            "sequence {b}, position {}, logit {v}: {got} vs {want}",
                            at + t
                        );
                    }
                }
            }
            caches = info.caches.iter().map(|c| (c.output, out[c.output].clone())).collect();
            at += n;
        }
        assert_eq!(at, length);
    }

    #[test]
    fn what_cannot_be_decoded_is_an_error_naming_its_line() {
        let cases = [
            ("Ahead", "t.model:35:12", "may come after its own"),
            ("Everywhere", "t.model:43:16", "combines different positions"),
            ("Bidirectional", "t.model:59:24", "is not causal"),
            (
                "Table",
                "t.model:51:43",
                "the sequence on two axes can only be a [query, key] table",
            ),
        ];
        for (model, at, why) in cases {
            let e = derive_decode(&graph(model), 8).unwrap_err();
            assert!(e.contains(at) && e.contains(why), "{model}: {e}");
        }
        let e = derive_decode(&graph("Mix"), 17).unwrap_err();
        assert!(e.contains("17 positions do not fit: the model runs at most 16"), "{e}");
        assert!(derive_decode(&graph("Mix"), 0).is_err());
    }
}
