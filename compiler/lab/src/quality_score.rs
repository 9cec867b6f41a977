//! How the quality A/B scores one trained run (see `quality.rs`): on a held-out text, by
//! next-token loss per length and position, or by the model's own loss with labels made by its
//! training objective; or on held-out batches, by the model's own loss and accuracy.

use crate::ab::{VariantSpec, Workload};
use crate::quality::{Plan, MAX_WINDOWS, POSITION_BUCKETS};
use crate::train::ObjectiveArg;
use crate::Failure;
use serde_json::{json, Value};
use std::path::Path;

/// One trained run: its training curve and speed, and its scores at every length.
pub(crate) fn score_run(v: &VariantSpec, dir: &Path, seed: u64, plan: &Plan, work: &Workload) -> Result<Value, Failure> {
    // A run trained elsewhere has no lmc training log: no curve, no speed.
    let log_history = match &v.trained_elsewhere {
        Some(_) => Vec::new(),
        None => {
            crate::train::checkpoint::load(&crate::train::checkpoint::resolve_resume(dir).map_err(Failure::Message)?)
                .map_err(Failure::Message)?
                .state
                .log_history
        }
    };
    let curve: Vec<(u64, f64)> = log_history
        .iter()
        .filter_map(|r| Some((r["step"].as_u64()?, r["loss"].as_f64()?)))
        .collect();
    let mut speeds: Vec<f64> = log_history.iter().skip(1).filter_map(|r| r["tokens_per_s"].as_f64()).collect();
    speeds.sort_by(f64::total_cmp);
    let tokens_per_s = speeds.get(speeds.len() / 2).copied();
    if is_batches(&plan.eval_text) {
        let (graph, lengths) = score_by_batches(v, dir, plan, work)?;
        return Ok(run_record(seed, dir, &graph, &curve, tokens_per_s, lengths));
    }
    if matches!(plan.train.objective, Some(ObjectiveArg::Masked | ObjectiveArg::SpanCorruption)) {
        let (graph, lengths) = score_by_objective(v, dir, plan, work)?;
        return Ok(run_record(seed, dir, &graph, &curve, tokens_per_s, lengths));
    }
    let text = crate::eval::load(&plan.eval_text, Some(dir)).map_err(Failure::Message)?;
    let compiled = crate::ab::compile_variant(&v.spec, &crate::Weights::Checkpoint(dir.to_path_buf()), &v.config, work.device)
        .map_err(|e| Failure::Message(format!("{}: {e}", dir.display())))?;
    let mut lengths = serde_json::Map::new();
    for &length in &work.lengths {
        let entry = match crate::ab::length_limit(&compiled.graph, length) {
            Some(why) => json!({"error": why}),
            None => match crate::eval::score_windows(&compiled.model, &text, length, MAX_WINDOWS) {
                Ok(s) => {
                    let width = (length - 1).div_ceil(POSITION_BUCKETS).max(1);
                    let buckets: Vec<Value> = (0..length - 1)
                        .step_by(width)
                        .map(|start| {
                            let end = (start + width).min(length - 1);
                            let sum: f64 = s.position_sums[start..end].iter().sum();
                            let count: usize = s.position_counts[start..end].iter().sum();
                            json!({"from": start, "to": end, "loss": sum / count.max(1) as f64})
                        })
                        .collect();
                    json!({"loss": s.loss(), "windows": s.window_losses.len(), "window_losses": s.window_losses, "by_position": buckets})
                }
                Err(e) => json!({"error": e}),
            },
        };
        lengths.insert(length.to_string(), entry);
    }
    Ok(run_record(seed, dir, &compiled.graph, &curve, tokens_per_s, lengths))
}

fn run_record(
    seed: u64,
    dir: &Path,
    graph: &lmc_core::ir::Graph,
    curve: &[(u64, f64)],
    tokens_per_s: Option<f64>,
    lengths: serde_json::Map<String, Value>,
) -> Value {
    json!({
        "seed": seed,
        "dir": dir.display().to_string(),
        "config": graph.config.iter().map(|(k, v)| (k.clone(), Value::String(v.to_string()))).collect::<serde_json::Map<_, _>>(),
        "final_loss": curve.last().map(|(_, l)| *l),
        "train_tokens_per_s": tokens_per_s,
        "curve": curve,
        "lengths": lengths,
    })
}

/// The seed of the masks the held-out text is scored under: one for every variant and seed,
/// so that their losses differ only by the models.
const EVAL_MASK_SEED: u64 = 0x0005_C04E;

/// A run trained with a masked or span-corruption objective, scored as it was trained: the
/// model's own `loss` on the held-out text's windows with labels made by the same objective
/// (the same masks for every variant and seed), at each length (the input's).
fn score_by_objective(
    v: &VariantSpec,
    dir: &Path,
    plan: &Plan,
    work: &Workload,
) -> Result<(lmc_core::ir::Graph, serde_json::Map<String, Value>), Failure> {
    let mut overrides = crate::source::overrides(&v.config, Some(dir))?;
    overrides.given = lmc_core::Given::Named(vec!["input_ids".into(), "labels".into()]);
    let graph = crate::source::load_model(&v.spec, &overrides)?;
    let compiled = crate::ab::compile_graph(&v.spec, graph, &crate::Weights::Checkpoint(dir.to_path_buf()), work.device)
        .map_err(|e| Failure::Message(format!("{}: {e}", dir.display())))?;
    let model = compiled.model;
    let tokenizer_path = dir.join("tokenizer.json");
    let tokenizer = (
        tokenizer_path.clone(),
        crate::tokenizer::load(&tokenizer_path).map_err(Failure::Message)?,
    );
    let vocab_bound = model
        .manifest()
        .inputs
        .iter()
        .find(|i| i.name == "input_ids")
        .and_then(|i| i.index_bound.as_ref())
        .map(|b| b.limit);
    let objective = crate::train::setup::objective(&plan.train, Some(&tokenizer), vocab_bound)?;
    let mut lengths = serde_json::Map::new();
    for &length in &work.lengths {
        let entry = match crate::ab::length_limit(&compiled.graph, length) {
            Some(why) => json!({"error": why}),
            None => {
                let batch = 8.min(MAX_WINDOWS);
                match crate::train::data::Data::text(&plan.eval_text, &tokenizer.1, length, batch, true, objective, EVAL_MASK_SEED) {
                    Ok(mut data) => {
                        data.shuffle = false;
                        let batches = data.eval_batches().min(MAX_WINDOWS.div_ceil(data.batch_size())).max(1);
                        let losses = crate::train::batch_losses(&model, &data, batches)?;
                        let mean = losses.iter().sum::<f64>() / losses.len() as f64;
                        json!({"loss": mean, "windows": batches * data.batch_size(), "batch_losses": losses, "by_position": []})
                    }
                    Err(e) => json!({"error": e}),
                }
            }
        };
        lengths.insert(length.to_string(), entry);
    }
    Ok((compiled.graph, lengths))
}

/// Whether the held-out data is a file of batches (as `--data` takes them) rather than a text.
pub(crate) fn is_batches(path: &Path) -> bool {
    path.extension().is_some_and(|e| e == "safetensors")
}

/// A run scored on held-out batches: the model's own `loss` on each batch (its labels are in
/// the file), and where the model gives one class per sequence (`logits [B, C]` against
/// `labels [B]`), the fraction of labelled sequences whose largest logit is their label. The
/// batches have one length: the experiment's other lengths say so.
fn score_by_batches(
    v: &VariantSpec,
    dir: &Path,
    plan: &Plan,
    work: &Workload,
) -> Result<(lmc_core::ir::Graph, serde_json::Map<String, Value>), Failure> {
    let data = crate::train::data::Data::batches(&plan.eval_text, None, EVAL_MASK_SEED).map_err(Failure::Message)?;
    let crate::train::data::Source::Batches { names, steps, .. } = &data.source else {
        return Err(Failure::Message(format!("{}: not batches", plan.eval_text.display())));
    };
    let mut overrides = crate::source::overrides(&v.config, Some(dir))?;
    overrides.given = lmc_core::Given::Named(names.clone());
    let graph = crate::source::load_model(&v.spec, &overrides)?;
    let compiled = crate::ab::compile_graph(&v.spec, graph, &crate::Weights::Checkpoint(dir.to_path_buf()), work.device)
        .map_err(|e| Failure::Message(format!("{}: {e}", dir.display())))?;
    let manifest = compiled.model.manifest();
    let output = |name: &str| manifest.outputs.iter().position(|o| o.name == name);
    let loss_index = output("loss")
        .ok_or_else(|| Failure::Message(format!("{}: the model returns no `loss` for the held-out batches' labels", v.spec)))?;
    let logits_index = output("logits");
    let batches = (*steps).min(MAX_WINDOWS);
    let (mut losses, mut right, mut labelled) = (Vec::new(), 0usize, 0usize);
    for b in 0..batches {
        let batch = data.batch(b as u64).map_err(Failure::Message)?;
        let outputs = compiled
            .model
            .run(&batch)
            .map_err(|e| Failure::Message(format!("{}, batch {}: {}", plan.eval_text.display(), b + 1, e.message())))?;
        losses.push(f64::from(
            outputs[loss_index].as_f32().and_then(|l| l.first().copied()).unwrap_or(f32::NAN),
        ));
        let labels = batch.iter().find(|t| t.name == "labels");
        if let (Some(logits), Some(labels)) = (logits_index.map(|i| &outputs[i]), labels) {
            let (r, l) = classified(logits, labels);
            right += r;
            labelled += l;
        }
    }
    let seq = data.seq_len();
    let mut lengths = serde_json::Map::new();
    for &length in &work.lengths {
        let entry = if length != seq {
            json!({"error": format!("the held-out batches are {seq} tokens long")})
        } else {
            let mean = losses.iter().sum::<f64>() / losses.len() as f64;
            let accuracy = (labelled > 0).then(|| right as f64 / labelled as f64);
            json!({"loss": mean, "accuracy": accuracy, "windows": batches * data.batch_size(), "batch_losses": losses, "by_position": []})
        };
        lengths.insert(length.to_string(), entry);
    }
    Ok((compiled.graph, lengths))
}

/// Of one batch, how many labelled sequences have their label as the largest logit, and how
/// many are labelled (-100: none), where the logits are one row of classes per sequence
/// (`[B, C]` against labels `[B]`); none otherwise.
fn classified(logits: &lmc_runtime::HostTensor, labels: &lmc_runtime::HostTensor) -> (usize, usize) {
    let (Some(scores), Some(ids), [rows, classes], [label_rows]) =
        (logits.as_f32(), labels.as_i64(), logits.shape.as_slice(), labels.shape.as_slice())
    else {
        return (0, 0);
    };
    if rows != label_rows {
        return (0, 0);
    }
    let labelled = scores.chunks(*classes).zip(ids).filter(|(_, &label)| label != -100);
    let (mut right, mut count) = (0, 0);
    for (row, &label) in labelled {
        let best = (0..*classes).fold(0, |m, k| if row[k] > row[m] { k } else { m });
        right += usize::from(best as i64 == label);
        count += 1;
    }
    (right, count)
}
