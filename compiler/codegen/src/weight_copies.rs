//! A weight matrix read both by matmuls and another way (a tied embedding: gathered for the
//! input, `x @ transpose(w)` for the head) gets a second parameter of the same checkpoint name
//! for its matmuls when the graph stores weight matrices in a format other than f32 (`--set
//! weights=int8`): the matmuls then read the packed, smaller copy, and the gather the f32
//! table. With f32 weights the matmul reads the table in place (the dot-product kernel), and a
//! copy would only cost memory; a GPU reads f32 weights.

use crate::Target;
use lmc_abi::{DType, WeightFormat};
use lmc_core::ir::{Dim, Graph, Node, Op, ValueId};
use std::borrow::Cow;

/// `g` with a copy of every parameter that some matmuls read as `x @ transpose(w)` and other
/// ops read otherwise, the matmuls reading the copy (see the module's documentation).
pub(crate) fn with_weight_copies<'g>(g: &'g Graph, target: &Target) -> Cow<'g, Graph> {
    if g.weights == WeightFormat::F32 || target.is_gpu() {
        return Cow::Borrowed(g);
    }
    let readers = crate::emit_mlir::readers(g);
    let regions = g.enclosing_scans();
    let reads = crate::emit_mlir::WeightReads::new(g, &regions, &readers);
    let mut out: Option<Graph> = None;
    for (i, param) in g.params.iter().enumerate() {
        let k = match param.ty.dims.as_slice() {
            &[Dim::Static(n), Dim::Static(k)] if n > 0 && param.ty.dtype == DType::F32 => k as usize,
            _ => continue,
        };
        if !g.weights.fits_rows_of(k) {
            continue;
        }
        let nodes: Vec<ValueId> = (0..g.nodes.len() as u32)
            .map(ValueId)
            .filter(|&id| matches!(g.node(id).op, Op::Param(p) if p == i))
            .collect();
        let (mut weights, mut others) = (Vec::new(), 0);
        for &p in &nodes {
            for &r in &readers[p.0 as usize] {
                if reads.is_weight_transpose(r, p) {
                    weights.push(r);
                } else {
                    others += 1;
                }
            }
        }
        if weights.is_empty() || others == 0 {
            continue;
        }
        let copy = out.get_or_insert_with(|| g.clone());
        let j = copy.params.len();
        copy.params.push(param.clone());
        // Parameters are read at the top of the function whatever their place in the nodes.
        let node = ValueId(copy.nodes.len() as u32);
        copy.nodes.push(Node {
            op: Op::Param(j),
            ty: param.ty.clone(),
            loc: g.node(weights[0]).loc,
        });
        for t in weights {
            copy.nodes[t.0 as usize].op = Op::Transpose { x: node };
        }
    }
    out.map_or(Cow::Borrowed(g), Cow::Owned)
}
