//! What the emitter decides about a graph before it emits a line: which nodes are computed
//! inside the ops that read them, which bias adds and row groups are fused, and how each
//! parameter is passed (packed panels for the CPU's matmul kernels, transposed for a GPU). The
//! manifest reads the same decisions, so the runtime packs exactly what the kernels expect.

use super::*;
use std::collections::{HashMap, HashSet};

/// The decisions of one graph compiled for one target, made once and read by the emitter and by
/// the manifest ([`crate::manifest`]).
pub struct Plan {
    /// The innermost scan each node's body belongs to (`None`: the function body).
    pub(super) regions: Vec<Option<ValueId>>,
    /// How many times each value is read (see [`fuse`]).
    pub(super) uses: Vec<usize>,
    /// The nodes computed only inside the ops that read them: scan-body nodes (see [`fuse`]) and
    /// the matmuls of [`Plan::biased`].
    pub(super) fully_fused: HashSet<ValueId>,
    /// The adds of a bias to a matmul that the matmul kernel computes (at the add; the matmul
    /// itself emits nothing): add → (matmul, bias). See [`fuse::bias_epilogues`].
    pub(super) biased: HashMap<ValueId, (ValueId, ValueId)>,
    /// Per parameter, how it is passed packed ([`lmc_abi::Packing`], see
    /// `matmul::param_packing`), if it is: what the manifest tells the runtime.
    pub packing: Vec<Option<lmc_abi::Packing>>,
    /// The function body's ops computed row by row together (see [`fuse::row_groups`]).
    pub(super) row_groups: fuse::RowGroups,
}

impl Plan {
    /// Decides how `g` is emitted for `target`. For a GPU, every op is a plain loop nest (each
    /// one becomes a kernel): the CPU kernels' panels, bias epilogues and row groups are CPU
    /// schedules.
    pub fn new(g: &Graph, target: &Target) -> Plan {
        let regions = g.enclosing_scans();
        let readers = fuse::readers(g);
        let uses: Vec<usize> = readers.iter().map(Vec::len).collect();
        let mut fully_fused = fuse::fully_fused(g, &regions, &uses, &readers);
        let packing = matmul::param_packing(g, &regions, &readers, target);
        let (packing, biased, row_groups) = if target.is_gpu() {
            (transposed_for_gpu(g, packing), Default::default(), fuse::RowGroups::default())
        } else {
            let biased = fuse::bias_epilogues(g, &regions, &readers, &packing);
            // A matmul whose bias its kernel adds is computed where the add is.
            fully_fused.extend(biased.values().map(|&(matmul, _)| matmul));
            let bias_adds = biased.keys().copied().collect();
            let row_groups = fuse::row_groups(g, &regions, &readers, &bias_adds);
            (packing, biased, row_groups)
        };
        Plan {
            regions,
            uses,
            fully_fused,
            biased,
            packing,
            row_groups,
        }
    }
}

/// For a GPU, a Linear's weight `[N, K]` is passed transposed, as one panel `[1, K, N]`: a
/// block's threads compute consecutive columns `n`, so at each step of `K` they read
/// consecutive elements of the weight (one coalesced load per warp) instead of elements a row
/// apart.
fn transposed_for_gpu(g: &Graph, packing: Vec<Option<lmc_abi::Packing>>) -> Vec<Option<lmc_abi::Packing>> {
    packing
        .into_iter()
        .zip(&g.params)
        .map(|(p, param)| {
            let p = p?;
            let n = if p.in_by_out { param.ty.dims.last() } else { param.ty.dims.first() };
            match n {
                Some(&Dim::Static(n)) => Some(lmc_abi::Packing {
                    in_by_out: p.in_by_out,
                    ..lmc_abi::Packing::f32(n)
                }),
                _ => None,
            }
        })
        .collect()
}
