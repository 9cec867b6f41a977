//! The ops of a backward pass (max reductions, `scatter_add`, `matmul_tn`, `attention_lse`,
//! `attention_grad`) compiled and run, against the reference interpreter. Graphs are built
//! directly: the language does not write these ops.

use crate::{jit_for, jit_gpu_forms_on_host, JitModule, Target};
use lmc_abi::DType;
use lmc_core::interp::{evaluate, Data, Tensor};
use lmc_core::ir::{
    infer_type, AttentionGrad, AttentionInput, BinaryOp, Dim, Graph, Loc, Node, Op, ReduceOp, ScalarBinary, ScalarFn, ScalarNode,
    ScalarType, ScalarUnary, Symbol, SymbolId, TensorDecl, TensorType, ValueId,
};
use std::ffi::c_void;

/// A graph under construction.
struct Builder {
    g: Graph,
}

impl Builder {
    fn new() -> Builder {
        Builder {
            g: Graph {
                model: "backward".into(),
                files: vec!["backward.model".into()],
                config: Vec::new(),
                symbols: Vec::new(),
                params: Vec::new(),
                inputs: Vec::new(),
                nodes: Vec::new(),
                outputs: Vec::new(),
                decode: None,
                weights: Default::default(),
            },
        }
    }

    /// A symbol read from axis `axis` of input `input`.
    fn symbol(&mut self, name: &str, input: usize, axis: usize) -> Dim {
        self.g.symbols.push(Symbol {
            name: name.into(),
            max: None,
            source: (input, axis),
        });
        Dim::Symbol(SymbolId(self.g.symbols.len() as u32 - 1))
    }

    fn input(&mut self, name: &str, dtype: DType, dims: Vec<Dim>) -> ValueId {
        let ty = TensorType::new(dtype, dims);
        self.g.inputs.push(TensorDecl {
            name: name.into(),
            ty: ty.clone(),
            index_bound: None,
            default: None,
        });
        self.push(Op::Input(self.g.inputs.len() - 1), ty)
    }

    fn push(&mut self, op: Op, ty: TensorType) -> ValueId {
        self.g.nodes.push(Node {
            op,
            ty,
            loc: Loc::default(),
        });
        ValueId(self.g.nodes.len() as u32 - 1)
    }

    /// A node typed by the IR's rules.
    fn op(&mut self, op: Op) -> ValueId {
        let ty = infer_type(&self.g, &op).unwrap_or_else(|| panic!("{op:?} is ill-typed"));
        self.push(op, ty)
    }

    fn output(&mut self, name: &str, id: ValueId) {
        let decl = TensorDecl {
            name: name.into(),
            ty: self.g.ty(id).clone(),
            index_bound: None,
            default: None,
        };
        self.g.outputs.push((decl, id));
    }

    fn finish(self) -> Graph {
        self.g.verify().unwrap();
        self.g
    }
}

/// Deterministic values in `[-scale, scale)`.
fn random(n: usize, seed: u64, scale: f32) -> Vec<f32> {
    let mut state = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    (0..n)
        .map(|_| {
            state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((state >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * scale
        })
        .collect()
}

fn floats(shape: &[usize], seed: u64, scale: f32) -> Tensor {
    Tensor::f32(shape.to_vec(), random(shape.iter().product(), seed, scale))
}

/// Runs the compiled graph's forward on `inputs` (the graphs here have no parameters); returns
/// its outputs, sized from the symbols the inputs bind.
fn run(g: &Graph, jit: &JitModule, inputs: &[Tensor]) -> Vec<Tensor> {
    let symbols: Vec<usize> = g.symbols.iter().map(|s| inputs[s.source.0].shape[s.source.1]).collect();
    let size = |d: &Dim| match d {
        Dim::Static(n) => *n as usize,
        Dim::Symbol(s) => symbols[s.0 as usize],
    };
    let mut outputs: Vec<Tensor> = g
        .outputs
        .iter()
        .map(|(decl, _)| {
            let shape: Vec<usize> = decl.ty.dims.iter().map(size).collect();
            Tensor::f32(shape.clone(), vec![f32::NAN; shape.iter().product()])
        })
        .collect();
    // Memref descriptors: allocated, aligned, offset, sizes, strides.
    let descriptor = |data: *mut c_void, shape: &[usize]| {
        let mut d = vec![data as i64, data as i64, 0];
        d.extend(shape.iter().map(|&s| s as i64));
        let mut stride = 1i64;
        let mut strides = vec![0i64; shape.len()];
        for (k, s) in shape.iter().enumerate().rev() {
            strides[k] = stride;
            stride *= *s as i64;
        }
        d.extend(strides);
        d
    };
    let mut inputs = inputs.to_vec();
    let mut descriptors: Vec<Vec<i64>> = Vec::new();
    for t in inputs.iter_mut().chain(outputs.iter_mut()) {
        let data = match &mut t.data {
            Data::F32(v) => v.as_mut_ptr() as *mut c_void,
            Data::Int(v) => v.as_mut_ptr() as *mut c_void,
        };
        descriptors.push(descriptor(data, &t.shape));
    }
    let mut args: Vec<*mut c_void> = descriptors.iter_mut().map(|d| d.as_mut_ptr() as *mut c_void).collect();
    let symbol = &crate::manifest(g, &Target::AVX2).entries[0].symbol;
    let entry = jit.lookup(symbol).expect("the module exports its entry point");
    // SAFETY: the entry point takes one descriptor per input and output, as built above, and
    // writes only the outputs' buffers, which live until it returns.
    unsafe {
        let f: extern "C" fn(*mut *mut c_void) = std::mem::transmute(entry);
        f(args.as_mut_ptr());
    }
    outputs
}

/// Compiles `g` for every CPU shape of kernels the host runs (and, with `gpu`, the GPU's forms
/// lowered for the host), runs it and compares each output with the interpreter's within
/// `tolerance`, relative to the output's largest magnitude.
fn check(g: &Graph, inputs: &[Tensor], tolerance: f32, gpu: bool) {
    let expected = evaluate(g, &[], inputs);
    let mut compiled = vec![("AVX2", jit_for(g, &Target::AVX2))];
    if Target::host() == Target::AVX512 {
        compiled.push(("AVX-512", jit_for(g, &Target::AVX512)));
    }
    if gpu {
        compiled.push(("GPU forms", jit_gpu_forms_on_host(g)));
    }
    for (what, jit) in compiled {
        let jit = jit.unwrap_or_else(|e| panic!("{what}: {e}\n{}", crate::emit_mlir(g, &Target::AVX2)));
        let got = run(g, &jit, inputs);
        for ((decl, _), (want, have)) in g.outputs.iter().zip(expected.iter().zip(&got)) {
            assert_eq!(want.shape, have.shape, "{what}: {}", decl.name);
            let (want, have) = (want.floats(), have.floats());
            let magnitude = want.iter().fold(1e-3f32, |m, x| m.max(x.abs()));
            for (k, (w, h)) in want.iter().zip(have).enumerate() {
                assert!(
                    (w - h).abs() <= tolerance * magnitude,
                    "{what}: {}[{k}] is {h}, expected {w} (largest magnitude {magnitude})",
                    decl.name
                );
            }
        }
    }
}

/// Maxima along every axis of `x: [B, 5, 7]`, kept or not, and a row group around one.
fn max_graph() -> Graph {
    let mut b = Builder::new();
    let x = b.input("x", DType::F32, vec![Dim::Static(0), Dim::Static(5), Dim::Static(7)]);
    let batch = b.symbol("B", 0, 0);
    b.g.inputs[0].ty.dims[0] = batch;
    b.g.nodes[x.0 as usize].ty.dims[0] = batch;
    for axis in 0..3 {
        for keepdim in [false, true] {
            let m = b.op(Op::Reduce {
                op: ReduceOp::Max,
                x,
                axis,
                keepdim,
            });
            b.output(&format!("max{axis}{}", if keepdim { "k" } else { "" }), m);
        }
    }
    // A row group: `x - max(x, -1, keepdim)` and its `exp`, a stable softmax's numerator.
    let m = b.op(Op::Reduce {
        op: ReduceOp::Max,
        x,
        axis: 2,
        keepdim: true,
    });
    let centred = b.op(Op::Binary {
        op: BinaryOp::Sub,
        lhs: x,
        rhs: m,
    });
    let e = b.op(Op::Unary {
        op: lmc_core::ir::UnaryOp::Exp,
        x: centred,
    });
    b.output("shifted", e);
    b.finish()
}

#[test]
fn max_reductions() {
    let g = max_graph();
    // Every element negative: a maximum computed as a sum, or from 0, would show.
    let mut x = floats(&[3, 5, 7], 1, 4.0);
    for v in match &mut x.data {
        Data::F32(v) => v,
        Data::Int(_) => unreachable!(),
    } {
        *v = -v.abs() - 0.5;
    }
    check(&g, &[x], 1e-6, true);
}

#[test]
fn max_reduction_emits_no_sum() {
    let mut b = Builder::new();
    let x = b.input("x", DType::F32, vec![Dim::Static(4), Dim::Static(6)]);
    let m = b.op(Op::Reduce {
        op: ReduceOp::Max,
        x,
        axis: 0,
        keepdim: false,
    });
    b.output("m", m);
    let mlir = crate::emit_mlir(&b.finish(), &Target::AVX2);
    assert!(mlir.contains("arith.maximumf") && mlir.contains("0xFF800000"), "{mlir}");
    assert!(!mlir.contains("arith.addf"), "{mlir}");
}

/// `scatter_add` with repeated, negative and too-large indices into rows of several axes, and
/// into rows wider than a thread's block of columns from a run-time number of positions.
fn scatter_graph() -> Graph {
    let mut b = Builder::new();
    let ix = b.input("ix", DType::I64, vec![Dim::Static(2), Dim::Static(5)]);
    let vals = b.input(
        "vals",
        DType::F32,
        vec![Dim::Static(2), Dim::Static(5), Dim::Static(3), Dim::Static(4)],
    );
    let s = b.op(Op::ScatterAdd {
        indices: ix,
        values: vals,
        rows: Dim::Static(6),
    });
    b.output("s", s);
    let ix2 = b.input("ix2", DType::I64, vec![Dim::Static(0)]);
    let n = b.symbol("N", 2, 0);
    b.g.inputs[2].ty.dims[0] = n;
    b.g.nodes[ix2.0 as usize].ty.dims[0] = n;
    let vals2 = b.input("vals2", DType::F32, vec![n, Dim::Static(70)]);
    let s2 = b.op(Op::ScatterAdd {
        indices: ix2,
        values: vals2,
        rows: Dim::Static(5),
    });
    b.output("s2", s2);
    b.finish()
}

#[test]
fn scatter_add_repeated_and_out_of_range_rows() {
    let g = scatter_graph();
    let indices = Tensor::int(vec![2, 5], vec![1, 3, 1, -3, 100, 0, 1, 5, 6, 3]);
    let indices2 = Tensor::int(vec![9], vec![4, 4, 0, -1, 7, 2, 2, 4, 1]);
    let inputs = [indices, floats(&[2, 5, 3, 4], 2, 1.0), indices2, floats(&[9, 70], 3, 1.0)];
    check(&g, &inputs, 1e-6, true);
}

/// `matmul_tn` of a rank-2 and a rank-3 left operand (with run-time axes), and beside it a
/// plain matmul of the same operand types, which must not share its kernel.
fn matmul_tn_graph() -> Graph {
    let mut b = Builder::new();
    let a = b.input("a", DType::F32, vec![Dim::Static(13), Dim::Static(7)]);
    let c = b.input("c", DType::F32, vec![Dim::Static(13), Dim::Static(9)]);
    let tn = b.op(Op::MatMulTN { lhs: a, rhs: c });
    b.output("tn2", tn);
    let x = b.input("x", DType::F32, vec![Dim::Static(0), Dim::Static(0), Dim::Static(6)]);
    let (batch, time) = (b.symbol("B", 2, 0), b.symbol("T", 2, 1));
    b.g.inputs[2].ty.dims = vec![batch, time, Dim::Static(6)];
    b.g.nodes[x.0 as usize].ty.dims = vec![batch, time, Dim::Static(6)];
    let y = b.input("y", DType::F32, vec![batch, time, Dim::Static(37)]);
    let tn3 = b.op(Op::MatMulTN { lhs: x, rhs: y });
    b.output("tn3", tn3);
    let s = b.input("s", DType::F32, vec![Dim::Static(8), Dim::Static(8)]);
    let t = b.input("t", DType::F32, vec![Dim::Static(8), Dim::Static(8)]);
    let plain = b.op(Op::MatMul { lhs: s, rhs: t });
    let transposed = b.op(Op::MatMulTN { lhs: s, rhs: t });
    b.output("plain", plain);
    b.output("transposed", transposed);
    b.finish()
}

#[test]
fn matmul_tn_ranks_and_symbols() {
    let g = matmul_tn_graph();
    let inputs = [
        floats(&[13, 7], 4, 1.0),
        floats(&[13, 9], 5, 1.0),
        floats(&[3, 11, 6], 6, 1.0),
        floats(&[3, 11, 37], 7, 1.0),
        floats(&[8, 8], 8, 1.0),
        floats(&[8, 8], 9, 1.0),
    ];
    check(&g, &inputs, 1e-5, true);
}

/// Index functions of the attention tests: a causal mask with padding (`j < len[b]`, a read of
/// an input) that also hides every key from row 3; a score `s (1 + s / 10) − slope[h] (i − j)`
/// and its derivative by `s`, `1 + s / 5`.
fn attention_functions(len: ValueId, slope: ValueId) -> (ScalarFn, ScalarFn, ScalarFn) {
    use ScalarNode::*;
    let (int, f32, bool) = (ScalarType::Int, ScalarType::F32, ScalarType::Bool);
    let bin = |op, a, b| Binary { op, a, b };
    let mask = ScalarFn {
        params: vec![int; 4],
        nodes: vec![
            (Param(0), int),
            (Param(1), int),
            (Param(2), int),
            (Param(3), int),
            (bin(ScalarBinary::Le, 3, 2), bool),
            (
                Load {
                    tensor: len,
                    indices: vec![0],
                },
                int,
            ),
            (bin(ScalarBinary::Lt, 3, 5), bool),
            (bin(ScalarBinary::And, 4, 6), bool),
            (Int(3), int),
            (bin(ScalarBinary::Ne, 2, 8), bool),
            (bin(ScalarBinary::And, 7, 9), bool),
        ],
        result: 10,
    };
    let params = vec![f32, int, int, int, int];
    let mut score = ScalarFn {
        params: params.clone(),
        nodes: vec![(Param(0), f32), (Param(1), int), (Param(2), int), (Param(3), int), (Param(4), int)],
        result: 0,
    };
    score.nodes.extend([
        (F32(0.1), f32),
        (bin(ScalarBinary::Mul, 0, 5), f32),
        (F32(1.0), f32),
        (bin(ScalarBinary::Add, 6, 7), f32),
        (bin(ScalarBinary::Mul, 0, 8), f32),
        (
            Load {
                tensor: slope,
                indices: vec![2],
            },
            f32,
        ),
        (bin(ScalarBinary::Sub, 3, 4), int),
        (
            Unary {
                op: ScalarUnary::ToFloat,
                a: 11,
            },
            f32,
        ),
        (bin(ScalarBinary::Mul, 10, 12), f32),
        (bin(ScalarBinary::Sub, 9, 13), f32),
    ]);
    score.result = 14;
    let mut dscore = ScalarFn {
        params,
        nodes: score.nodes[..5].to_vec(),
        result: 0,
    };
    dscore.nodes.extend([
        (F32(0.2), f32),
        (bin(ScalarBinary::Mul, 0, 5), f32),
        (F32(1.0), f32),
        (bin(ScalarBinary::Add, 6, 7), f32),
    ]);
    dscore.result = 8;
    (mask, score, dscore)
}

/// Attention's backward with grouped-query heads (4 query heads, 2 key heads), odd sizes
/// (`T` queries and keys at run time, width 5 for queries and keys, 6 for values), a mask that
/// reads an input and hides a whole row, and a score function with its derivative: `lse` from
/// `attention_lse`, `delta` from the forward's output, the three gradients and the scores'.
/// With `dropout`, the probabilities are dropped at 0.3, seeded by one more input.
fn attention_backward_graph(functions: bool, dropout: bool) -> Graph {
    let mut b = Builder::new();
    let (h, g, d, e) = (4, 2, 5, 6);
    let q = b.input(
        "q",
        DType::F32,
        vec![Dim::Static(0), Dim::Static(h), Dim::Static(0), Dim::Static(d)],
    );
    let (batch, time) = (b.symbol("B", 0, 0), b.symbol("T", 0, 2));
    let dims = |heads: i64, width: i64| vec![batch, Dim::Static(heads), time, Dim::Static(width)];
    b.g.inputs[0].ty.dims = dims(h, d);
    b.g.nodes[q.0 as usize].ty.dims = dims(h, d);
    let k = b.input("k", DType::F32, dims(g, d));
    let v = b.input("v", DType::F32, dims(g, e));
    let dout = b.input("dout", DType::F32, dims(h, e));
    let len = b.input("len", DType::I64, vec![batch]);
    let slope = b.input("slope", DType::F32, vec![Dim::Static(h)]);
    let (mask, score, dscore) = attention_functions(len, slope);
    let (mask, score, dscore) = if functions {
        (Some(mask), Some(score), Some(dscore))
    } else {
        (None, None, None)
    };
    let dropout = dropout.then(|| {
        let seed = b.input("dropout_seed", DType::I64, Vec::new());
        lmc_core::ir::dropout_scale_fn(&[batch, Dim::Static(h), time, time], seed, 3, 0.3)
    });
    let scale = 0.45;
    let out = b.op(Op::Attention {
        q,
        k,
        v,
        scale,
        mask: mask.clone(),
        score: score.clone(),
        dropout: dropout.clone(),
    });
    let lse = b.op(Op::AttentionLse {
        q,
        k,
        scale,
        mask: mask.clone(),
        score: score.clone(),
    });
    let product = b.op(Op::Binary {
        op: BinaryOp::Mul,
        lhs: dout,
        rhs: out,
    });
    let delta = b.op(Op::Reduce {
        op: ReduceOp::Sum,
        x: product,
        axis: 3,
        keepdim: false,
    });
    b.output("lse", lse);
    for (name, wrt) in [
        ("dq", AttentionInput::Query),
        ("dk", AttentionInput::Key),
        ("dv", AttentionInput::Value),
        ("dz", AttentionInput::Score),
    ] {
        let grad = b.op(Op::AttentionGrad(Box::new(AttentionGrad {
            q,
            k,
            v,
            lse,
            delta,
            dout,
            scale,
            mask: mask.clone(),
            score: score.clone(),
            dscore: dscore.clone(),
            dropout: dropout.clone(),
            wrt,
        })));
        b.output(name, grad);
    }
    b.output("out", out);
    b.finish()
}

fn attention_inputs(batch: usize, time: usize) -> Vec<Tensor> {
    vec![
        floats(&[batch, 4, time, 5], 10, 1.5),
        floats(&[batch, 2, time, 5], 11, 1.5),
        floats(&[batch, 2, time, 6], 12, 1.0),
        floats(&[batch, 4, time, 6], 13, 1.0),
        // Padding: the first sequence is cut short, the second is whole.
        Tensor::int(
            vec![batch],
            (0..batch).map(|b| if b == 0 { time as i64 - 2 } else { time as i64 }).collect(),
        ),
        Tensor::f32(vec![4], vec![0.5, 0.25, 0.125, 0.0625]),
    ]
}

#[test]
fn attention_backward_with_mask_score_and_groups() {
    let g = attention_backward_graph(true, false);
    check(&g, &attention_inputs(2, 7), 1e-5, true);
    // More rows than a block holds.
    check(&g, &attention_inputs(1, 37), 1e-5, false);
}

#[test]
fn attention_backward_plain() {
    let g = attention_backward_graph(false, false);
    check(&g, &attention_inputs(2, 7), 1e-5, true);
}

/// Dropout of the probabilities, forward and backward, in each block layout (a few rows, many
/// rows in one tile of keys or several, the GPU's whole attention): the compiled kernels drop what the interpreter drops.
#[test]
fn attention_backward_with_dropout() {
    let seeded = |batch, time, seed| {
        let mut inputs = attention_inputs(batch, time);
        inputs.push(Tensor::int(Vec::new(), vec![seed]));
        inputs
    };
    for functions in [true, false] {
        let g = attention_backward_graph(functions, true);
        check(&g, &seeded(2, 7, 99), 1e-5, true);
        check(&g, &seeded(1, 37, -4), 1e-5, false);
    }
    // Keys in more than one tile of the tall layout.
    check(&attention_backward_graph(true, true), &seeded(1, 300, 7), 1e-5, false);
    // It drops: the output differs from the attention's without dropout.
    let (with, without) = (attention_backward_graph(true, true), attention_backward_graph(true, false));
    let dq = |g: &Graph, inputs: &[Tensor]| evaluate(g, &[], inputs)[1].floats().to_vec();
    assert_ne!(dq(&with, &seeded(2, 7, 99)), dq(&without, &attention_inputs(2, 7)));
}

/// The GPU's forms of every backward op compile to kernels: no loop is left on the host.
#[test]
fn backward_ops_compile_for_a_gpu() {
    for g in [
        max_graph(),
        scatter_graph(),
        matmul_tn_graph(),
        attention_backward_graph(true, true),
    ] {
        match crate::emit_ptx(&g) {
            Ok(kernels) => assert!(!kernels.is_empty()),
            // Without libdevice, `log` cannot be compiled for the device; everything before it was.
            Err(e) => assert!(e.to_string().contains("libdevice"), "{e}"),
        }
    }
}

/// Dropout's scale (`x` times a tabulated keep mask seeded by an input), compiled for the CPU
/// and in the GPU's forms: the compiled hash keeps exactly the elements the interpreter keeps.
#[test]
fn dropout_masks_match_the_interpreter() {
    let mut b = Builder::new();
    let x = b.input("x", DType::F32, vec![Dim::Static(0), Dim::Static(33), Dim::Static(19)]);
    let batch = b.symbol("B", 0, 0);
    b.g.inputs[0].ty.dims[0] = batch;
    b.g.nodes[x.0 as usize].ty.dims[0] = batch;
    let seed = b.input("dropout_seed", DType::I64, Vec::new());
    let x_ty = b.g.ty(x).clone();
    let scale = b.push(
        Op::Tabulate {
            f: lmc_core::ir::dropout_scale_fn(&x_ty.dims, seed, 5, 0.375),
        },
        x_ty,
    );
    let y = b.op(Op::Binary {
        op: BinaryOp::Mul,
        lhs: x,
        rhs: scale,
    });
    b.output("y", y);
    let g = b.finish();
    for s in [0, 1, -7, i64::MAX] {
        let inputs = [floats(&[3, 33, 19], 11, 1.0), Tensor::int(Vec::new(), vec![s])];
        check(&g, &inputs, 1e-6, true);
        let y = &evaluate(&g, &[], &inputs)[0];
        let dropped = y.floats().iter().filter(|v| **v == 0.0).count() as f64 / y.floats().len() as f64;
        assert!((dropped - 0.375).abs() < 0.04, "seed {s}: dropped {dropped}");
    }
}
