//! The backward pass against PyTorch and against finite differences.

use super::*;
use crate::config::ConfigOverrides;
use crate::interp::{evaluate, Data, Tensor};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The f32 and i64 tensors of a safetensors file, by name.
fn read(path: &Path) -> HashMap<String, Tensor> {
    let file = lmc_runtime::SafeTensorsFile::open(path).unwrap_or_else(|e| panic!("{e}"));
    file.tensors()
        .map(|info| {
            let t = file.get(&info.name).unwrap().to_host().unwrap();
            let tensor = match (t.as_f32(), t.as_i64()) {
                (Some(v), _) => Tensor::f32(t.shape.clone(), v.to_vec()),
                (_, Some(v)) => Tensor::int(t.shape.clone(), v.to_vec()),
                _ => panic!("{}: neither f32 nor i64", info.name),
            };
            (info.name.clone(), tensor)
        })
        .collect()
}

fn checked(file: &str, model: &str, fixture: &Path, given: &[&str]) -> Graph {
    let text = std::fs::read_to_string(root().join(file)).unwrap();
    let program = crate::load_source(file, &text, Some(&root().join("models"))).unwrap_or_else(|f| panic!("{:?}", f.diagnostics));
    let config = std::fs::read_to_string(fixture.join("config.json")).unwrap();
    let mut overrides = ConfigOverrides::default().with_checkpoint_json(&config).unwrap();
    overrides.given = crate::config::Given::Named(given.iter().map(|s| s.to_string()).collect());
    crate::check_model(&program, Some(model), &overrides)
        .unwrap_or_else(|e| panic!("{e:?}"))
        .graph
}

/// The derived backward, run by the reference interpreter, against PyTorch's
/// `loss.backward()` on the same checkpoint and batch (tests/reference/make_grad_fixtures.py).
fn matches_torch(file: &str, model: &str, fixture: &str) {
    let dir = root().join("tests/fixtures").join(fixture);
    let g = checked(file, model, &dir, &["labels"]);
    let grad = derive_grad(&g, "loss").unwrap_or_else(|e| panic!("{e:?}"));
    let weights = read(&dir.join("model.safetensors"));
    let inputs = read(&dir.join("inputs_grad.safetensors"));
    let expected = read(&dir.join("expected_grad.safetensors"));
    let params: Vec<Tensor> = grad.params.iter().map(|p| weights[&p.name].clone()).collect();
    // Position ids the batch leaves out are their default, 0..T in every row.
    let args: Vec<Tensor> = grad
        .inputs
        .iter()
        .map(|i| match (inputs.get(&i.name), i.default) {
            (Some(t), _) => t.clone(),
            (None, Some(lmc_abi::InputDefault::Arange)) => {
                let shape = inputs["input_ids"].shape.clone();
                let n: usize = shape.iter().product();
                let t = shape[shape.len() - 1];
                Tensor::int(shape, (0..n).map(|k| (k % t) as i64).collect())
            }
            (None, _) => panic!("the batch has no input {}", i.name),
        })
        .collect();
    let outputs = evaluate(&grad, &params, &args);
    for ((decl, _), got) in grad.outputs.iter().zip(&outputs) {
        let want = &expected[&decl.name];
        let (Data::F32(got), Data::F32(want)) = (&got.data, &want.data) else {
            panic!()
        };
        let scale = want.iter().fold(0.0f32, |m, x| m.max(x.abs()));
        let err = got.iter().zip(want).fold(0.0f32, |m, (a, b)| m.max((a - b).abs()));
        let bound = if decl.name == "loss" { 1e-5 * scale } else { 1e-3 * scale + 1e-6 };
        assert!(
            err <= bound,
            "{fixture}: {}: max |lmc - torch| = {err:e} > {bound:e} (max |torch| {scale:e})",
            decl.name
        );
    }
    assert_eq!(grad.outputs.len(), 1 + weights.len(), "a gradient for every checkpoint tensor");
}

#[test]
fn gpt2_gradients_match_torch() {
    matches_torch("models/gpt2.model", "GPT2LMHeadModel", "gpt2_grad");
}

#[test]
fn bert_masked_lm_gradients_match_torch() {
    matches_torch("models/bert.model", "BertForMaskedLM", "bert_mlm");
}

/// Gradients of a small model by central finite differences of its loss, against the
/// derived backward, run by the reference interpreter, for every parameter element.
fn matches_finite_differences(source: &str, given: &[&str], inputs: Vec<Tensor>) {
    let overrides = ConfigOverrides {
        given: crate::config::Given::Named(given.iter().map(|s| s.to_string()).collect()),
        ..Default::default()
    };
    finite_differences_under(source, &overrides, inputs);
}

fn finite_differences_under(source: &str, overrides: &ConfigOverrides, inputs: Vec<Tensor>) {
    let program = crate::load_source("t.model", source, None).unwrap_or_else(|f| panic!("{:?}", f.diagnostics));
    let g = crate::check_model(&program, None, overrides)
        .unwrap_or_else(|e| panic!("{e:?}"))
        .graph;
    let grad = derive_grad(&g, "loss").unwrap_or_else(|e| panic!("{e:?}"));
    let mut seed = 7u64;
    let mut random = || {
        seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        ((seed >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    };
    let mut params: Vec<Tensor> = g
        .params
        .iter()
        .map(|p| {
            let shape: Vec<usize> =
                p.ty.dims
                    .iter()
                    .map(|d| if let Dim::Static(n) = d { *n as usize } else { panic!() })
                    .collect();
            let n = shape.iter().product();
            Tensor::f32(shape, (0..n).map(|_| random()).collect())
        })
        .collect();
    let loss_of = |params: &[Tensor]| -> f64 {
        let out = evaluate(&g, params, &inputs);
        let k = g.outputs.iter().position(|(d, _)| d.name == "loss").unwrap();
        out[k].floats()[0] as f64
    };
    let derived = evaluate(&grad, &params, &inputs);
    let eps = 3e-3f32;
    for (k, p) in g.params.iter().enumerate() {
        let want = derived[1 + k].floats().to_vec();
        let scale = want.iter().fold(0.0f32, |m, x| m.max(x.abs()));
        for e in 0..want.len() {
            let Data::F32(values) = &mut params[k].data else { panic!() };
            let x = values[e];
            values[e] = x + eps;
            let up = loss_of(&params);
            let Data::F32(values) = &mut params[k].data else { panic!() };
            values[e] = x - eps;
            let down = loss_of(&params);
            let Data::F32(values) = &mut params[k].data else { panic!() };
            values[e] = x;
            let fd = ((up - down) / (2.0 * eps as f64)) as f32;
            let bound = 2e-2 * scale + 2e-3;
            assert!(
                (fd - want[e]).abs() <= bound,
                "{}[{e}]: derived {} but finite differences give {fd}",
                p.name,
                want[e]
            );
        }
    }
}

const HEAD: &str = "config C { n = 1 }\n";

/// A model of two dropouts, one of them on a parameter used twice.
fn dropout_model(p: f64) -> String {
    format!(
        "{HEAD}model M(c: C) {{
  param x: f32[6, 8]
  forward(ids: i64[B, T]) -> (loss: f32[], y: f32[6, 8]) {{
    y = dropout(x * x + x, {p})
    return sum(sum(y * dropout(x, 0.5) + x, axis = -1), axis = -1), y
  }}
}}"
    )
}

#[test]
fn dropout_derivatives_match_finite_differences() {
    let training = ConfigOverrides {
        training: true,
        ..Default::default()
    };
    let mut inputs = ids();
    inputs.push(Tensor::int(Vec::new(), vec![20261207]));
    finite_differences_under(&dropout_model(0.25), &training, inputs);
}

/// A training compile drops each element with probability p and scales the rest by 1 / (1 - p);
/// another seed drops others; outside training, and at p = 0, dropout is the identity.
#[test]
fn dropout_drops_as_asked_and_only_when_training() {
    let program = crate::load_source("t.model", &dropout_model(0.3), None).unwrap();
    let graph = |training| {
        let o = ConfigOverrides {
            training,
            ..Default::default()
        };
        crate::check_model(&program, None, &o).unwrap().graph
    };
    let (train, infer) = (graph(true), graph(false));
    assert_eq!(train.inputs.last().map(|i| i.name.as_str()), Some(crate::DROPOUT_SEED));
    assert!(
        infer.inputs.iter().all(|i| i.name != crate::DROPOUT_SEED),
        "nothing random outside training"
    );
    let x = Tensor::f32(vec![6, 8], (0..48).map(|k| k as f32 * 0.01 + 1.0).collect());
    let y_of = |g: &Graph, seed: Option<i64>| {
        let mut inputs = ids();
        inputs.extend(seed.map(|s| Tensor::int(Vec::new(), vec![s])));
        evaluate(g, std::slice::from_ref(&x), &inputs)[1].floats().to_vec()
    };
    let want: Vec<f32> = x.floats().iter().map(|v| v * v + v).collect();
    assert_eq!(y_of(&infer, None), want);
    let mut dropped = 0;
    let mut masks = Vec::new();
    for seed in 0..40 {
        let y = y_of(&train, Some(seed));
        for (got, full) in y.iter().zip(&want) {
            if *got == 0.0 {
                dropped += 1;
            } else {
                assert!(
                    (got - full / 0.7).abs() <= 1e-5 * got.abs(),
                    "{got} is {full} scaled by 1 / (1 - p)"
                );
            }
        }
        masks.push(y.iter().map(|v| *v == 0.0).collect::<Vec<_>>());
    }
    let rate = f64::from(dropped) / (40.0 * 48.0);
    assert!((rate - 0.3).abs() < 0.035, "dropped {rate} of the elements at p = 0.3");
    assert_ne!(masks[0], masks[1], "another seed drops other elements");
}

fn ids() -> Vec<Tensor> {
    vec![Tensor::int(vec![2, 3], vec![0, 2, 2, 1, 0, 2])]
}

#[test]
fn elementwise_derivatives_match_finite_differences() {
    let source = format!(
        "{HEAD}model M(c: C) {{
  param x: f32[3, 4]
  forward(ids: i64[B, T]) -> (loss: f32[]) {{
    p = x * x + 1.0
    y = exp(x) + log(p) + sqrt(p) + rsqrt(p) + abs(x) + tanh(x) + erf(x) + sin(x) + cos(x)
    y = y + sigmoid(x) + relu(x) + silu(x) + gelu(x) - x
    w = tabulate(3, 4, (i, j) => float(i * 4 + j) / 7.0 - 0.8)
    return sum(sum(y * w * y, axis = -1), axis = -1)
  }}
}}"
    );
    matches_finite_differences(&source, &[], ids());
}

#[test]
fn broadcasting_derivatives_match_finite_differences() {
    let source = format!(
        "{HEAD}model M(c: C) {{
  param a: f32[3, 4]
  param row: f32[4]
  param column: f32[3, 1]
  forward(ids: i64[B, T]) -> (loss: f32[]) {{
    y = (a + row) * column - a / (row * row + 1.0) + maximum(a, row) - minimum(a, column)
    y = y + pow(a * a + 1.0, column) + 2.0 * a
    w = tabulate(3, 4, (i, j) => float(j * 3 + i) / 5.0 - 1.0)
    return sum(sum(y * w, axis = -1), axis = -1)
  }}
}}"
    );
    matches_finite_differences(&source, &[], ids());
}

#[test]
fn reduction_and_layout_derivatives_match_finite_differences() {
    let source = format!(
        "{HEAD}model M(c: C) {{
  param table: f32[3, 6]
  param w: f32[6, 4]
  param u: f32[5, 6]
  forward(ids: i64[B, T]) -> (loss: f32[]) {{
    x = gather(table, ids)
    h = merge_heads(split_heads(x, 2))
    y = h @ w + slice(h @ transpose(u), 1, 4)
    m = max(y, axis = 1, keepdim = true) + mean(y, axis = -1, keepdim = true)
    z = y * m + sum(y, axis = 0) * 0.5
    return sum(sum(sum(z * z, axis = -1), axis = -1), axis = -1) + max(mean(sum(y, axis = -1), axis = -1), axis = 0)
  }}
}}"
    );
    matches_finite_differences(&source, &[], ids());
}

/// A loss of one attention over `x`: two query heads sharing one key/value head, the score
/// bias `bias` (an index function over heads, queries and keys) built from `extra` parameters,
/// masked by `mask` and scored by `score`, each output element weighted differently.
fn attention_loss_model(extra: &str, bias: &str, mask: &str, score: &str) -> String {
    format!(
        "{HEAD}model M(c: C) {{
  param x: f32[2, 5, 8]
  param wq: f32[8, 8]
  param wk: f32[8, 4]
  param wv: f32[8, 6]
{extra}  forward(keep: i64[B, T]) -> (loss: f32[]) {{
    q = split_heads(x @ wq, 2)
    k = split_heads(x @ wk, 1)
    v = split_heads(x @ wv, 1)
    bias = {bias}
    o = attention(q, k, v, mask = {mask}, score = {score})
    w = tabulate(2, 2, 5, 6, (b, h, i, e) => float(b + 2 * h + i - e) / 4.0)
    return sum(sum(sum(sum(o * w, axis = -1), axis = -1), axis = -1), axis = -1)
  }}
}}"
    )
}

#[test]
fn attention_derivatives_match_finite_differences() {
    let source = attention_loss_model(
        "",
        "tabulate(2, (h) => 0.5 * float(h + 1))",
        "(b, h, i, j) => j <= i and keep[b, j] != 0",
        "(s, b, h, i, j) => 2.0 * s - bias[h] * float(i - j)",
    );
    matches_finite_differences(&source, &[], vec![Tensor::int(vec![2, 5], vec![1, 1, 1, 1, 1, 0, 1, 1, 1, 0])]);
}

#[test]
fn tabulate_derivatives_match_finite_differences() {
    // A token shift and a causal convolution (indices solved for an argument, guarded), a
    // reversal, an unsqueeze, a read whose index is data, and reads past the edge (clamped: the
    // edge element receives them too).
    let source = format!(
        "{HEAD}model M(c: C) {{
  param x: f32[2, 5, 3]
  param w: f32[3, 1, 4]
  forward(ids: i64[B, T]) -> (loss: f32[]) {{
    y = x * x + x
    shifted = tabulate(2, 5, 3, (b, t, i) => if t > 0 {{ y[b, t - 1, i] }} else {{ 0.0 }})
    taps = tabulate(2, 5, 3, 4, (b, t, i, k) => if t + k >= 3 {{ y[b, t + k - 3, i] * w[i, 0, k] }} else {{ 0.0 }})
    conv = sum(taps, axis = -1)
    reversed = tabulate(2, 5, 3, (b, t, i) => y[b, 4 - t, i] / (1.0 + w[i, 0, 0] * w[i, 0, 0]))
    column = tabulate(2, 5, 3, 1, (b, t, i, o) => exp(y[b, t, i]) * 0.1)
    picked = tabulate(2, 3, 3, (b, t, i) => y[b, ids[b, t], i] + x[b, t + 3, 2 - i])
    z = shifted * conv + reversed * y + sum(column, axis = -1)
    u = tabulate(2, 5, 3, (b, t, i) => float(b + t - i) / 6.0)
    return sum(sum(sum(z * u, axis = -1), axis = -1), axis = -1) + sum(sum(sum(picked * picked, axis = -1), axis = -1), axis = -1)
  }}
}}"
    );
    matches_finite_differences(&source, &[], ids());
}

#[test]
fn what_has_no_backward_is_reported_where_it_is() {
    let source = format!(
        "{HEAD}model M(c: C) {{
  param x: f32[2, 3]
  forward(ids: i64[B, T]) -> (loss: f32[]) {{
    y = tabulate(2, 3, (i, j) => sin(x[i, 2 - j]))
    return sum(sum(y, axis = -1), axis = -1)
  }}
}}"
    );
    let program = crate::load_source("t.model", &source, None).unwrap();
    let g = crate::check_model(&program, None, &ConfigOverrides::default()).unwrap().graph;
    let e = derive_grad(&g, "loss").unwrap_err();
    assert!(e.message.contains("`sin` is not differentiated"), "{e:?}");
    assert_eq!(e.loc.map(|l| (l.line, l.col)), Some((5, 9)));
    let e = derive_grad(&g, "logits").unwrap_err();
    assert!(e.message.contains("no `logits` output") && e.loc.is_none(), "{e:?}");
}

#[test]
fn a_guarded_shift_is_turned_around_without_a_sum() {
    // `t - 1` under `t > 0` stays inside x, so x's gradient reads g at t + 1 directly instead
    // of comparing every (t, t') pair.
    let source = format!(
        "{HEAD}model M(c: C) {{
  param x: f32[2, 5, 3]
  forward(ids: i64[B, T]) -> (loss: f32[]) {{
    y = x * x
    shifted = tabulate(2, 5, 3, (b, t, i) => if t > 0 {{ y[b, t - 1, i] }} else {{ 0.0 }})
    return sum(sum(sum(shifted * x, axis = -1), axis = -1), axis = -1)
  }}
}}"
    );
    let program = crate::load_source("t.model", &source, None).unwrap();
    let g = crate::check_model(&program, None, &ConfigOverrides::default()).unwrap().graph;
    let grad = derive_grad(&g, "loss").unwrap();
    assert!(grad.nodes.iter().all(|n| n.ty.rank() <= 3), "{}", grad.print());
    // `t != 0` is as good a guard as `t > 0` for an argument that cannot be negative.
    let not_first = source.replace("if t > 0", "if t != 0");
    let program = crate::load_source("t.model", &not_first, None).unwrap();
    let g = crate::check_model(&program, None, &ConfigOverrides::default()).unwrap().graph;
    assert!(derive_grad(&g, "loss").unwrap().nodes.iter().all(|n| n.ty.rank() <= 3));
    // Unguarded, `t - 1` reads x[b, 0] at t = 0 as well (clamped): compared, not solved.
    let unguarded = source.replace("if t > 0 { y[b, t - 1, i] } else { 0.0 }", "y[b, t - 1, i]");
    let program = crate::load_source("t.model", &unguarded, None).unwrap();
    let g = crate::check_model(&program, None, &ConfigOverrides::default()).unwrap().graph;
    let grad = derive_grad(&g, "loss").unwrap();
    assert!(grad.nodes.iter().any(|n| n.ty.rank() == 4));
}

#[test]
fn scan_derivatives_match_finite_differences() {
    // States that start from a parameter, slices that depend on parameters, values captured
    // from outside the body (a parameter among them), a maximum, and both results read.
    let source = format!(
        "{HEAD}model M(c: C) {{
  param x: f32[2, 4, 3]
  param first: f32[3]
  param decay: f32[3]
  param start: f32[2, 3]
  forward(ids: i64[B, T]) -> (loss: f32[]) {{
    k = x * 0.5
    # kept away from the maxima's kinks, where finite differences mislead
    d = -exp(decay) - 0.5
    y, num_last, top_last = scan(k_t in k, v_t in x, num = start, top = start * 0.0 - 1.0) {{
      out_top = maximum(top, k_t + first)
      y = exp(top - out_top) * num + exp(k_t + first - out_top) * v_t
      next_top = maximum(top + d, k_t)
      num = exp(top + d - next_top) * num + exp(k_t - next_top) * v_t
      top = next_top
      return y * y
    }}
    w = tabulate(2, 4, 3, (b, t, i) => float(b + t - i) / 5.0)
    return sum(sum(sum(y * w, axis = -1), axis = -1), axis = -1) + sum(sum(num_last * num_last, axis = -1), axis = -1)
  }}
}}"
    );
    matches_finite_differences(&source, &[], ids());
}

#[test]
fn scan_bodies_match_finite_differences() {
    // A state left unchanged, states that swap, a state that is returned, exp and maximum.
    for body in [
        "num = num * d + v_t\n      return num * k_t",
        "num = num * first + v_t * v_t\n      return num",
        "num = num * first + v_t * v_t\n      return num * num",
        "num = exp(num * d) + v_t\n      return num",
        "num = maximum(num, v_t)\n      return num",
        "top = num * 0.5 + v_t\n      num = num * d + top\n      return num",
        "q = num\n      num = top * d + v_t\n      top = q + k_t\n      return num * top",
    ] {
        eprintln!("{body}");
        let source = format!(
            "{HEAD}model M(c: C) {{
  param x: f32[2, 4, 3]
  param first: f32[3]
  param decay: f32[3]
  param start: f32[2, 3]
  forward(ids: i64[B, T]) -> (loss: f32[]) {{
    k = x * 0.4 - 0.2
    d = -exp(decay)
    y, num_last, top_last = scan(k_t in k, v_t in x, num = start, top = start * 0.3) {{
      {body}
    }}
    w = tabulate(2, 4, 3, (b, t, i) => float(b + t - i) / 5.0)
    return sum(sum(sum(y * w, axis = -1), axis = -1), axis = -1) + sum(sum(num_last * num_last, axis = -1), axis = -1)
  }}
}}"
        );
        matches_finite_differences(&source, &[], ids());
    }
}

#[test]
fn cumsum_derivatives_match_finite_differences() {
    let source = format!(
        "{HEAD}model M(c: C) {{
  param x: f32[2, 4, 3]
  forward(ids: i64[B, T]) -> (loss: f32[]) {{
    y = cumsum(x * x, axis = 1) + cumsum(x, axis = -1)
    w = tabulate(2, 4, 3, (b, t, i) => float(b + t - i) / 5.0)
    return sum(sum(sum(y * w * y, axis = -1), axis = -1), axis = -1)
  }}
}}"
    );
    matches_finite_differences(&source, &[], ids());
}

#[test]
fn rwkv_gradients_match_torch() {
    matches_torch("models/rwkv.model", "RwkvForCausalLM", "rwkv_grad");
}

#[test]
fn mamba_gradients_match_torch() {
    matches_torch("models/mamba.model", "MambaForCausalLM", "mamba_grad");
}

#[test]
fn learned_score_bias_derivatives_match_finite_differences() {
    // T5's relative-position bias: a table of buckets × heads, read at a bucket computed from
    // the distance, added to each head's scores; the mask reads the keys kept.
    let source = attention_loss_model(
        "  param table: f32[4, 2]\n",
        "tabulate(2, 5, 5, (h, i, j) => table[rem(abs(i - j), 4), h] * 2.0)",
        "(b, h, i, j) => keep[b, j] != 0",
        "(s, b, h, i, j) => s + bias[h, i, j]",
    );
    matches_finite_differences(&source, &[], vec![Tensor::int(vec![2, 5], vec![1, 1, 1, 1, 1, 1, 1, 1, 0, 0])]);
}

#[test]
fn t5_gradients_match_torch() {
    matches_torch("models/t5.model", "T5ForConditionalGeneration", "t5_grad");
}

fn gradient_graph(source: &str) -> (Graph, Graph) {
    let program = crate::load_source("t.model", source, None).unwrap_or_else(|f| panic!("{:?}", f.diagnostics));
    let g = crate::check_model(&program, None, &ConfigOverrides::default()).unwrap().graph;
    let grad = derive_grad(&g, "loss").unwrap_or_else(|e| panic!("{e:?}"));
    (g, grad)
}

#[test]
fn a_detached_value_passes_no_gradient() {
    // d/dx of x · detach(x) is detach(x) = x, where without `detach` it would be 2x.
    let source = format!(
        "{HEAD}model M(c: C) {{
  param x: f32[2, 3]
  forward(ids: i64[B, T]) -> (loss: f32[]) {{
    return sum(sum(x * detach(x), axis = -1), axis = -1)
  }}
}}"
    );
    let (g, grad) = gradient_graph(&source);
    let x: Vec<f32> = vec![0.5, -1.0, 2.0, 0.25, -0.75, 3.0];
    let params = vec![Tensor::f32(vec![2, 3], x.clone())];
    let loss = evaluate(&g, &params, &ids());
    let out = evaluate(&grad, &params, &ids());
    assert_eq!(out[0].floats(), loss[0].floats(), "the forward value is x · x");
    assert_eq!(out[1].floats(), &x[..]);
}

#[test]
fn a_read_at_a_data_index_is_turned_around_without_a_sum() {
    // A cross-entropy's `logits[b, t, target[b, t]]`: b and t are solved, the class is matched,
    // so the gradient is one tensor of the logits' shape, not a sum over every (b, t) pair.
    let source = format!(
        "{HEAD}model M(c: C) {{
  param x: f32[2, 3, 4]
  forward(ids: i64[B, T]) -> (loss: f32[]) {{
    y = x * x
    chosen = tabulate(2, 3, (b, t) => y[b, t, ids[b, t]])
    return sum(sum(chosen * chosen, axis = -1), axis = -1)
  }}
}}"
    );
    let (_, grad) = gradient_graph(&source);
    assert!(grad.nodes.iter().all(|n| n.ty.rank() <= 3), "{}", grad.print());
    matches_finite_differences(&source, &[], ids());
}

#[test]
fn elementwise_values_are_recomputed_in_the_backward_not_kept() {
    // tanh(h) is read once in the forward; its backward reads it too, so it is recomputed from
    // h there instead of kept from the forward: the forward's tanh has no reader after the
    // backward's copy is made.
    let source = format!(
        "{HEAD}model M(c: C) {{
  param w: f32[4, 4]
  param v: f32[4, 4]
  forward(ids: i64[B, T]) -> (loss: f32[]) {{
    h = v @ transpose(w)
    y = tanh(h) @ transpose(w)
    return sum(sum(y * y, axis = -1), axis = -1)
  }}
}}"
    );
    let (_, grad) = gradient_graph(&source);
    let tanhs: Vec<usize> = (0..grad.nodes.len())
        .filter(|&i| matches!(grad.nodes[i].op, Op::Unary { op: UnaryOp::Tanh, .. }))
        .collect();
    assert_eq!(tanhs.len(), 2, "{}", grad.print());
    let last_reader_of_forward = (0..grad.nodes.len())
        .filter(|&i| grad.nodes[i].op.operands().contains(&ValueId(tanhs[0] as u32)))
        .max()
        .unwrap();
    assert!(last_reader_of_forward < tanhs[1], "{}", grad.print());
    matches_finite_differences(&source, &[], ids());
}

#[test]
fn a_sum_s_gradient_is_read_through_broadcasting() {
    // The gradient of sum(exp(x), axis = -1) stretches g over x's last axis: the product with
    // exp(x) reads g as [2, 1] instead of a [2, 5] copy.
    let source = format!(
        "{HEAD}model M(c: C) {{
  param x: f32[2, 5]
  forward(ids: i64[B, T]) -> (loss: f32[]) {{
    s = sum(exp(x), axis = -1)
    return sum(s * s, axis = -1)
  }}
}}"
    );
    let (_, grad) = gradient_graph(&source);
    let stretched = grad.nodes.iter().any(|n| {
        let Op::Tabulate { f } = &n.op else { return false };
        n.ty.dims == [Dim::Static(2), Dim::Static(5)] && matches!(f.nodes[f.result].0, ScalarNode::Load { .. })
    });
    assert!(!stretched, "{}", grad.print());
    matches_finite_differences(&source, &[], ids());
}
