//! The backward of a `scan`: a second scan that runs in reverse time.
//!
//! Step t of the forward maps (states s_t, slices x_t) to (s_{t+1}, outputs y_t), reading values
//! from outside its body (captured: a decay, a parameter). Its backward needs s_t at every step,
//! so a scan first recomputes the forward's states and keeps each step's (the states are the
//! only thing saved; everything else in a step is recomputed from them). The reverse scan then
//! carries the gradient of the states, λ, from the end back to the start: its step t recomputes
//! the forward's step t from s_t and x_t, and differentiates it given λ (the gradient of
//! s_{t+1}) and the gradient of y_t, giving the gradient of s_t (the new λ) and of x_t (a
//! per-step output), and adding the gradient of each captured value to a sum it carries. The
//! body's differentiation is the same reverse-mode pass as the whole graph's, run on the
//! recomputed step inside the reverse scan's body.

use super::{needs_grad_from, Deriv, GradError};
use crate::ir::*;
use lmc_abi::DType;

impl Deriv<'_> {
    /// Differentiates forward scan `n` given the adjoints of its results.
    pub(super) fn scan_backward(&mut self, n: usize) -> Result<(), GradError> {
        let fwd = self.fwd;
        let Op::Scan(s) = &fwd.nodes[n].op else { unreachable!() };
        let s = s.as_ref().clone();
        let start = s.body_start.0 as usize;
        let body_nodes = start + s.arg_count()..n;
        if body_nodes.clone().any(|i| matches!(fwd.nodes[i].op, Op::Scan(_))) {
            return self.fail("a `scan` inside another's body cannot be differentiated yet".into(), "");
        }
        if let Some(k) = s.init.iter().position(|v| fwd.ty(*v).dtype != DType::F32) {
            return self.fail(
                format!("this `scan` carries an integer state (state {k}); only f32 states are differentiated"),
                "",
            );
        }
        let adjoint = |k: usize| self.adjoint[n + 1 + k];
        let output_grads: Vec<Option<ValueId>> = (0..s.outputs.len()).map(adjoint).collect();
        let final_grads: Vec<Option<ValueId>> = (0..s.init.len()).map(|k| adjoint(s.outputs.len() + k)).collect();
        let live = live_body(fwd, &s, n);
        // Values from outside the body that it reads (parameters read inside it included),
        // whose gradient the reverse scan sums over the steps.
        let mut captured: Vec<ValueId> = Vec::new();
        for i in body_nodes.clone().filter(|i| live[*i]) {
            let outer = fwd.nodes[i].op.operands().into_iter().filter(|o| (o.0 as usize) < start);
            let param = matches!(fwd.nodes[i].op, Op::Param(_)).then_some(ValueId(i as u32));
            for v in outer.chain(param) {
                if self.needs[v.0 as usize] && !captured.contains(&v) {
                    captured.push(v);
                }
            }
        }
        for v in s.next.iter().chain(&s.outputs) {
            if (v.0 as usize) < start && self.needs[v.0 as usize] && !captured.contains(v) {
                captured.push(*v);
            }
        }

        let saved = self.recomputed_states(&s, n, &live);
        let zeros = |d: &mut Self, ty: &TensorType| {
            let f = ScalarFn {
                params: vec![ScalarType::Int; ty.rank()],
                nodes: vec![(ScalarNode::F32(0.0), ScalarType::F32)],
                result: 0,
            };
            d.push_typed(Op::Tabulate { f }, ty.clone())
        };
        let state_ty = |k: usize| fwd.ty(s.init[k]).clone();
        let mut init = Vec::new();
        for (k, g) in final_grads.iter().enumerate() {
            init.push(match g {
                Some(g) => *g,
                None => zeros(self, &state_ty(k)),
            });
        }
        for c in &captured {
            init.push(zeros(self, &fwd.ty(*c).clone()));
        }
        let grad_outputs: Vec<(usize, ValueId)> = output_grads.iter().enumerate().filter_map(|(m, g)| g.map(|g| (m, g))).collect();
        let mut xs: Vec<ValueId> = saved.clone();
        xs.extend(&s.xs);
        xs.extend(grad_outputs.iter().map(|(_, g)| *g));

        // The reverse scan's body: its arguments (λ, the sums, then the slices of the saved
        // states, the forward's slices and the outputs' gradients), the forward's step
        // recomputed, and that step's backward.
        let body_start = ValueId(self.out.nodes.len() as u32);
        let (states, sums) = (s.init.len(), captured.len());
        let arg = |d: &mut Self, k: usize, ty: TensorType| d.push_typed(Op::ScanArg(k), ty);
        let lambda: Vec<ValueId> = (0..states).map(|k| arg(self, k, state_ty(k))).collect();
        let sum_args: Vec<ValueId> = captured
            .iter()
            .enumerate()
            .map(|(c, v)| arg(self, states + c, fwd.ty(*v).clone()))
            .collect();
        let mut slices = Vec::new();
        for (k, x) in xs.iter().enumerate() {
            let mut ty = self.out.ty(*x).clone();
            ty.dims.remove(s.axis);
            slices.push(arg(self, states + sums + k, ty));
        }
        let mut map: Vec<ValueId> = (0..fwd.nodes.len() as u32).map(ValueId).collect();
        // The forward's arguments (its states, then its slices) are the saved states' and the
        // forward's slices.
        map[start..start + s.arg_count()].copy_from_slice(&slices[..s.arg_count()]);
        let copies_start = self.out.nodes.len();
        for i in body_nodes.clone().filter(|i| live[*i]) {
            let node = &fwd.nodes[i];
            map[i] = self.push_typed(node.op.remapped(&map), node.ty.clone());
            self.out.nodes.last_mut().expect("just pushed").loc = node.loc;
        }
        let copies_end = self.out.nodes.len();

        // The step's backward, on the recomputed step.
        let mut seeds: Vec<usize> = slices[..states].iter().map(|v| v.0 as usize).collect();
        for (j, x) in s.xs.iter().enumerate() {
            if self.needs[x.0 as usize] {
                seeds.push(slices[states + j].0 as usize);
            }
        }
        let snapshot = self.out.clone();
        let out = std::mem::replace(&mut self.out, snapshot);
        let (out, step_adjoint) = {
            let mut step = Deriv {
                fwd: &self.out,
                out,
                needs: std::rc::Rc::new(needs_grad_from(&self.out, &seeds)),
                adjoint: vec![None; copies_end],
                loc: self.loc,
            };
            for (m, _) in &grad_outputs {
                let at = grad_outputs.iter().position(|(o, _)| o == m).expect("listed");
                step.accumulate(map[s.outputs[*m].0 as usize], slices[states + s.xs.len() + at]);
            }
            for (k, next) in s.next.iter().enumerate() {
                step.accumulate(map[next.0 as usize], lambda[k]);
            }
            for i in (copies_start..copies_end).rev() {
                let Some(adj) = step.adjoint[i] else { continue };
                if !step.needs[i] {
                    continue;
                }
                step.loc = step.fwd.nodes[i].loc;
                step.backward(i, adj)?;
            }
            (step.out, step.adjoint)
        };
        self.out = out;
        let mut next = Vec::new();
        for k in 0..states {
            next.push(match step_adjoint[slices[k].0 as usize] {
                Some(g) => g,
                None => zeros(self, &state_ty(k)),
            });
        }
        for (c, v) in captured.iter().enumerate() {
            next.push(match step_adjoint[map[v.0 as usize].0 as usize] {
                Some(g) => self.binary(BinaryOp::Add, sum_args[c], g),
                None => sum_args[c],
            });
        }
        let mut outputs = Vec::new();
        let mut output_of = Vec::new();
        for (j, x) in s.xs.iter().enumerate() {
            if !self.needs[x.0 as usize] {
                continue;
            }
            let slice = slices[states + j];
            let ty = self.out.ty(slice).clone();
            outputs.push(match step_adjoint[slice.0 as usize] {
                Some(g) => g,
                None => zeros(self, &ty),
            });
            output_of.push(*x);
        }
        let scan = self.push_typed(
            Op::Scan(Box::new(Scan {
                axis: s.axis,
                reverse: true,
                init,
                xs,
                body_start,
                next,
                outputs,
            })),
            TensorType::new(DType::F32, vec![]),
        );
        let results: Vec<ValueId> = (0..output_of.len() + states + sums)
            .map(|index| self.push(Op::ScanResult { scan, index }))
            .collect();
        for (x, g) in output_of.iter().zip(&results) {
            self.accumulate(*x, *g);
        }
        for (k, init) in s.init.iter().enumerate() {
            self.accumulate(*init, results[output_of.len() + k]);
        }
        for (c, v) in captured.iter().enumerate() {
            self.accumulate(*v, results[output_of.len() + states + c]);
        }
        Ok(())
    }

    /// A scan recomputing forward scan `n`'s states, stacked: for each state, its value as each
    /// step begins.
    fn recomputed_states(&mut self, s: &Scan, n: usize, live: &[bool]) -> Vec<ValueId> {
        let fwd = self.fwd;
        let start = s.body_start.0 as usize;
        let body_start = ValueId(self.out.nodes.len() as u32);
        let mut map: Vec<ValueId> = (0..fwd.nodes.len() as u32).map(ValueId).collect();
        for k in 0..s.arg_count() {
            let arg = &fwd.nodes[start + k];
            map[start + k] = self.push_typed(arg.op.clone(), arg.ty.clone());
        }
        // Only what the next states need.
        let needed = live_from(fwd, &s.next, start, n);
        for i in start + s.arg_count()..n {
            if needed[i] && live[i] {
                let node = &fwd.nodes[i];
                map[i] = self.push_typed(node.op.remapped(&map), node.ty.clone());
            }
        }
        let scan = self.push_typed(
            Op::Scan(Box::new(Scan {
                axis: s.axis,
                reverse: false,
                init: s.init.clone(),
                xs: s.xs.clone(),
                body_start,
                next: s.next.iter().map(|v| map[v.0 as usize]).collect(),
                outputs: (0..s.init.len()).map(|k| map[start + k]).collect(),
            })),
            TensorType::new(DType::F32, vec![]),
        );
        let saved: Vec<ValueId> = (0..s.init.len()).map(|index| self.push(Op::ScanResult { scan, index })).collect();
        // The final states are results too; the reverse scan does not read them.
        for index in s.init.len()..2 * s.init.len() {
            self.push(Op::ScanResult { scan, index });
        }
        saved
    }
}

/// The body nodes of scan `n` that its next states or outputs read.
fn live_body(g: &Graph, s: &Scan, n: usize) -> Vec<bool> {
    let roots: Vec<ValueId> = s.next.iter().chain(&s.outputs).copied().collect();
    live_from(g, &roots, s.body_start.0 as usize, n)
}

/// The nodes in `start..end` that `roots` read, directly or not.
fn live_from(g: &Graph, roots: &[ValueId], start: usize, end: usize) -> Vec<bool> {
    let mut live = vec![false; g.nodes.len()];
    for r in roots {
        live[r.0 as usize] = true;
    }
    for i in (start..end).rev() {
        if live[i] {
            for o in g.nodes[i].op.operands() {
                live[o.0 as usize] = true;
            }
        }
    }
    live
}
