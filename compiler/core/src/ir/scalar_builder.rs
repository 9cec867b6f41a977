//! Builds index functions ([`ScalarFn`]) node by node: the checker's built-ins that are
//! index functions underneath (`unsqueeze`, comparisons of tensors, `concat`'s element rule) and
//! the backward pass's rearrangements.

use super::*;
use lmc_abi::DType;

/// A scalar function built node by node.
pub struct ScalarBuilder {
    f: ScalarFn,
}

impl ScalarBuilder {
    pub fn new(rank: usize) -> Self {
        ScalarBuilder {
            f: ScalarFn {
                params: vec![ScalarType::Int; rank],
                nodes: (0..rank).map(|k| (ScalarNode::Param(k), ScalarType::Int)).collect(),
                result: 0,
            },
        }
    }

    pub fn add(&mut self, node: ScalarNode, ty: ScalarType) -> usize {
        self.f.nodes.push((node, ty));
        self.f.nodes.len() - 1
    }

    pub fn int(&mut self, v: i64) -> usize {
        self.add(ScalarNode::Int(v), ScalarType::Int)
    }

    pub fn float(&mut self, v: f64) -> usize {
        self.add(ScalarNode::F32(v), ScalarType::F32)
    }

    pub fn binary(&mut self, op: ScalarBinary, a: usize, b: usize, ty: ScalarType) -> usize {
        self.add(ScalarNode::Binary { op, a, b }, ty)
    }

    /// `op a`, of type `ty`.
    pub fn unary(&mut self, op: ScalarUnary, a: usize, ty: ScalarType) -> usize {
        self.add(ScalarNode::Unary { op, a }, ty)
    }

    /// `if cond { a } else { b }`, of `a`'s type.
    pub fn select(&mut self, cond: usize, a: usize, b: usize) -> usize {
        let ty = self.f.nodes[a].1;
        self.add(ScalarNode::Select { cond, a, b }, ty)
    }

    /// One element of an f32 tensor.
    pub fn load(&mut self, tensor: ValueId, indices: Vec<usize>) -> usize {
        self.load_as(tensor, indices, ScalarType::F32)
    }

    pub fn load_as(&mut self, tensor: ValueId, indices: Vec<usize>, ty: ScalarType) -> usize {
        self.add(ScalarNode::Load { tensor, indices }, ty)
    }

    /// Loads element `out` of a tensor of `dims` broadcast to `out_dims` (numpy's rule: dims
    /// aligned on the right, a size-1 axis read at 0).
    pub fn load_broadcast(&mut self, tensor: ValueId, dims: &[Dim], out_dims: &[Dim]) -> usize {
        self.load_broadcast_as(tensor, dims, out_dims, ScalarType::F32)
    }

    /// [`Self::load_broadcast`] of a tensor whose elements are `ty`.
    pub fn load_broadcast_as(&mut self, tensor: ValueId, dims: &[Dim], out_dims: &[Dim], ty: ScalarType) -> usize {
        let lead = out_dims.len() - dims.len();
        let indices = dims
            .iter()
            .enumerate()
            .map(|(k, d)| {
                if *d == Dim::Static(1) && out_dims[lead + k] != Dim::Static(1) {
                    self.int(0)
                } else {
                    lead + k
                }
            })
            .collect();
        self.load_as(tensor, indices, ty)
    }

    pub fn finish(mut self, result: usize) -> ScalarFn {
        self.f.result = result;
        self.f
    }
}

/// The scalar type of an element of `dtype`.
pub fn scalar_type(dtype: DType) -> ScalarType {
    if dtype == DType::F32 {
        ScalarType::F32
    } else {
        ScalarType::Int
    }
}

/// [`Op::Concat`]'s element rule as an index function: element `i` along `axis` is read from
/// the part whose range of that axis holds `i`, shifted to the part's own start.
pub fn concat_index_fn(g: &Graph, parts: &[ValueId], axis: usize) -> ScalarFn {
    let first = g.ty(parts[0]);
    let (rank, ty) = (first.rank(), scalar_type(first.dtype));
    let mut f = ScalarBuilder::new(rank);
    let mut starts = Vec::new();
    let mut start = 0;
    for p in parts {
        starts.push(start);
        start += static_len(g.ty(*p).dims[axis]);
    }
    let mut value = None;
    for (p, start) in parts.iter().zip(starts).rev() {
        let offset = f.int(start);
        let shifted = f.binary(ScalarBinary::Sub, axis, offset, ScalarType::Int);
        let indices = (0..rank).map(|k| if k == axis { shifted } else { k }).collect();
        let load = f.load_as(*p, indices, ty);
        value = Some(match value {
            None => load,
            Some(later) => {
                let end = f.int(start + static_len(g.ty(*p).dims[axis]));
                let inside = f.binary(ScalarBinary::Lt, axis, end, ScalarType::Bool);
                f.select(inside, load, later)
            }
        });
    }
    f.finish(value.unwrap_or(0))
}

/// Dropout's scale over a tensor of `dims`: `1 / (1 - p)` where the element is kept and 0 where
/// it is dropped, with probability `p`. An element is dropped where its [`random_unit`] is
/// below `p`.
pub fn dropout_scale_fn(dims: &[Dim], seed: ValueId, stream: i64, p: f64) -> ScalarFn {
    let mut f = ScalarBuilder::new(dims.len());
    let u = random_unit(&mut f, dims, seed, stream);
    let p_node = f.float(p);
    let keep = f.binary(ScalarBinary::Ge, u, p_node, ScalarType::Bool);
    let kept = f.float(1.0 / (1.0 - p));
    let dropped = f.float(0.0);
    let r = f.select(keep, kept, dropped);
    f.finish(r)
}

/// `uniform`'s elements over a tensor of `dims`: [`random_unit`] moved by half a step, so that
/// each lies strictly between 0 and 1 (`-log(u)` and `log(1 - u)` are finite).
pub fn uniform_fn(dims: &[Dim], seed: ValueId, stream: i64) -> ScalarFn {
    let mut f = ScalarBuilder::new(dims.len());
    let u = random_unit(&mut f, dims, seed, stream);
    let half_step = f.float(UNIT_STEP / 2.0);
    let r = f.binary(ScalarBinary::Add, u, half_step, ScalarType::F32);
    f.finish(r)
}

/// The spacing of [`ScalarUnary::Unit`]'s values (it keeps a hash's top 24 bits).
const UNIT_STEP: f64 = 1.0 / (1u64 << 24) as f64;

/// An element's random number in `[0, 1)` (a multiple of [`UNIT_STEP`]):
/// `unit(hash(hash(seed, stream), offset))`, `offset` the element's row-major position in a
/// tensor of `dims`: `seed` is the i64 scalar tensor seeding a compile's random numbers, and
/// `stream` tells apart the random tensors of one model. (One hash per element: the first is
/// the same for all, and the kernels compute it once.)
fn random_unit(f: &mut ScalarBuilder, dims: &[Dim], seed: ValueId, stream: i64) -> usize {
    let seed = f.load_as(seed, Vec::new(), ScalarType::Int);
    let stream = f.int(stream);
    let base = f.binary(ScalarBinary::Hash, seed, stream, ScalarType::Int);
    let mut offset = 0;
    for (axis, d) in dims.iter().enumerate().skip(1) {
        let len = match d {
            Dim::Static(n) => f.int(*n),
            Dim::Symbol(s) => f.add(ScalarNode::Symbol(*s), ScalarType::Int),
        };
        let scaled = f.binary(ScalarBinary::Mul, offset, len, ScalarType::Int);
        offset = f.binary(ScalarBinary::Add, scaled, axis, ScalarType::Int);
    }
    let h = f.binary(ScalarBinary::Hash, base, offset, ScalarType::Int);
    f.unary(ScalarUnary::Unit, h, ScalarType::F32)
}

/// A length the checker requires to be fixed (`concat`'s parts along their axis).
fn static_len(d: Dim) -> i64 {
    match d {
        Dim::Static(n) => n,
        Dim::Symbol(_) => 0,
    }
}
