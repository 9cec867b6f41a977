//! `scan`: a loop over time whose iteration arguments are the states and the stacked outputs,
//! or, where the recurrence is independent along an axis, an `scf.forall` over blocks of lanes
//! around that loop (see [`lanes`]).

use super::*;

impl Emitter<'_> {
    /// Offsets, sizes and strides of the slice of a tensor of type `t` at step `iv` of `axis`.
    pub(super) fn step_slice(&self, t: &TensorType, axis: usize, iv: &str) -> String {
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
    pub(super) fn emit_scan(&mut self, id: ValueId, s: &Scan, loc: &str) {
        // Only a scan of the function body: one nested in another scan's body would start its
        // threads once per step of the outer one.
        // On a GPU, each step's ops are parallel loops of their own.
        if self.plan.regions[id.0 as usize].is_none() && !self.target.is_gpu() {
            if let Some(lanes) = lanes::plan(self.g, id, s, &self.plan.regions) {
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
    pub(super) fn emit_blocked_scan(&mut self, id: ValueId, s: &Scan, lanes: lanes::Lanes, loc: &str) {
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
        // Inside the block's loop, `self.ty` gives the block's types.
        self.within(
            |mode| {
                mode.block = Some(Block {
                    lanes,
                    slices: std::collections::HashMap::new(),
                });
                mode.indent += 1;
            },
            |e| {
                for (value, axis) in outer {
                    let t = g.ty(value);
                    let name = format!("{prefix}_in{}", value.0);
                    let line = format!(
                        "{name} = tensor.extract_slice {}{} : {} to {}",
                        v(value),
                        block_slice(t, axis),
                        tensor_ty(t),
                        tensor_ty(&e.ty(value))
                    );
                    e.line(&line);
                    if let Some(b) = e.mode.block.as_mut() {
                        b.slices.insert(value, name);
                    }
                }
                // Each result's slice for this block: (name, slice, block type, full type).
                let mut result_slices = Vec::new();
                for (k, (r, axis)) in results.iter().zip(result_axes).enumerate() {
                    let t = g.ty(*r);
                    let slice = block_slice(t, axis);
                    let name = format!("{prefix}_part{k}");
                    let (part_ty, full_ty) = (tensor_ty(&e.ty(*r)), tensor_ty(t));
                    e.line(&format!(
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
                    e.line(&format!(
                        "{state} = linalg.copy ins({} : {ty}) outs({part} : {ty}) -> {ty}",
                        e.name(*init)
                    ));
                    inits.push(state);
                }
                let stacked: Vec<String> = result_slices[..s.outputs.len()].iter().map(|r| r.0.clone()).collect();
                let finals: Vec<String> = (0..s.init.len()).map(|k| format!("{prefix}_final{k}")).collect();
                let outputs: Vec<String> = (0..s.outputs.len()).map(|k| format!("{prefix}_stacked{k}")).collect();
                e.emit_scan_loop(id, s, &inits, Some(&stacked), &finals, &outputs, loc);
                e.line("scf.forall.in_parallel {");
                for (k, (_, slice, part_ty, full_ty)) in result_slices.iter().enumerate() {
                    let value = if k < s.outputs.len() {
                        &outputs[k]
                    } else {
                        &finals[k - s.outputs.len()]
                    };
                    e.line(&format!(
                        "  tensor.parallel_insert_slice {value} into {prefix}_out{k}{slice} : {part_ty} into {full_ty}"
                    ));
                }
                e.line("}");
            },
        );
        self.line(&format!("}} {loc}"));
    }

    /// A scan's loop over time: an `scf.for` over the axis whose iteration arguments are the
    /// states (starting from `inits`) and the stacked outputs (written into `accumulators`, or
    /// new tensors); each step extracts its slices, runs the body and inserts its outputs. The
    /// loop's results are named `finals` (the states) and `stacked` (the outputs).
    #[allow(clippy::too_many_arguments)]
    pub(super) fn emit_scan_loop(
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
        // The step's position along the axis: the loop's counter, or for a reverse scan
        // length - 1 - counter.
        let iv = if s.reverse {
            self.line(&format!("{prefix}_last = arith.subi {length}, {prefix}_c1 : index"));
            self.line(&format!("{prefix}_step = arith.subi {prefix}_last, {prefix}_iv : index"));
            format!("{prefix}_step")
        } else {
            format!("{prefix}_iv")
        };
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
        // Each output is copied into its slot before the states are updated: an output may be
        // a state as the step began, which the update below overwrites in place.
        let mut output_yields = Vec::new();
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
            output_yields.push(updated);
        }
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
        yields.extend(output_yields);
        self.line(&format!("  scf.yield {} : {}", yields.join(", "), types.join(", ")));
        self.line(&format!("}} {loc}"));
    }
}
