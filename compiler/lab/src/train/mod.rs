//! `lmc train`: the derived backward pass, compiled once, run on one batch per step, and AdamW
//! applied to the parameters between steps (see [`optim`]); batches from [`data`], checkpoints
//! and resuming in [`checkpoint`]. The options carry `TrainingArguments`' names and defaults.
//! What happens before the first step is in `setup.rs`; this file holds the steps themselves.

pub mod checkpoint;
pub mod data;
pub mod optim;
mod progress;
pub(crate) mod setup;

use crate::{ConfigSource, Failure};
use checkpoint::{ParamState, Snapshot, TrainerState};
use data::Data;
use optim::{AdamW, Schedule};
use progress::Progress;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// How labels are made when the data holds none (`--objective`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ObjectiveArg {
    Causal,
    Masked,
    SpanCorruption,
}

impl ObjectiveArg {
    pub(crate) fn name(self) -> &'static str {
        match self {
            ObjectiveArg::Causal => "causal",
            ObjectiveArg::Masked => "masked",
            ObjectiveArg::SpanCorruption => "span-corruption",
        }
    }
}

/// Windows of a text per step when `--per-device-train-batch-size` is not given (transformers'
/// default).
pub const DEFAULT_BATCH_SIZE: usize = 8;

/// Everything `lmc train` is told.
#[derive(Debug, Clone)]
pub struct TrainOptions {
    /// FILE or FILE:MODEL.
    pub spec: String,
    /// A checkpoint to start from; `None`: random weights drawn with `seed`.
    pub weights: Option<PathBuf>,
    pub config: ConfigSource,
    pub data: PathBuf,
    /// A `tokenizer.json` for a text (default: the checkpoint's).
    pub tokenizer: Option<PathBuf>,
    pub output: PathBuf,
    /// A checkpoint directory, or an output directory whose latest checkpoint to continue.
    pub resume: Option<PathBuf>,
    pub max_steps: Option<u64>,
    pub num_train_epochs: f64,
    pub per_device_train_batch_size: Option<usize>,
    pub seq_len: Option<usize>,
    pub learning_rate: f64,
    pub optimizer: AdamW,
    pub max_grad_norm: f64,
    pub lr_scheduler_type: Schedule,
    pub warmup_steps: u64,
    pub seed: u64,
    pub objective: Option<ObjectiveArg>,
    /// The masked objective's share of tokens chosen; span corruption's noise density (as
    /// transformers' T5 pretraining script reads `mlm_probability`).
    pub mlm_probability: f64,
    pub mean_noise_span_length: f64,
    pub eval_data: Option<PathBuf>,
    pub eval_steps: Option<u64>,
    /// Sequences per evaluation batch of a text (fewer when the text is shorter).
    pub per_device_eval_batch_size: usize,
    pub save_steps: u64,
    pub save_total_limit: Option<usize>,
    pub logging_steps: u64,
    pub log_json: Option<PathBuf>,
    pub no_dropout: bool,
    pub device: lmc_codegen::Device,
}

impl TrainOptions {
    /// `TrainingArguments`' defaults, for a model, data and output directory.
    pub fn new(spec: impl Into<String>, data: impl Into<PathBuf>, output: impl Into<PathBuf>) -> TrainOptions {
        TrainOptions {
            spec: spec.into(),
            weights: None,
            config: ConfigSource::default(),
            data: data.into(),
            tokenizer: None,
            output: output.into(),
            resume: None,
            max_steps: None,
            num_train_epochs: 3.0,
            per_device_train_batch_size: None,
            seq_len: None,
            learning_rate: 5e-5,
            optimizer: AdamW::default(),
            max_grad_norm: 1.0,
            lr_scheduler_type: Schedule::Linear,
            warmup_steps: 0,
            seed: 42,
            objective: None,
            mlm_probability: 0.15,
            mean_noise_span_length: 3.0,
            eval_data: None,
            eval_steps: None,
            per_device_eval_batch_size: 8,
            save_steps: 500,
            save_total_limit: None,
            logging_steps: 500,
            log_json: None,
            no_dropout: false,
            device: lmc_codegen::Device::Cpu,
        }
    }
}

/// What a finished run reports.
#[derive(Debug, Clone)]
pub struct TrainSummary {
    /// Updates done in all (a resumed run counts those before it).
    pub steps: u64,
    /// The loss of each step this run made.
    pub losses: Vec<f64>,
    /// The last evaluation's loss, when there was evaluation data.
    pub eval_loss: Option<f64>,
    pub output: PathBuf,
}

/// Trains; see the module's documentation and `docs/commands.md`.
pub fn train(opts: &TrainOptions) -> Result<TrainSummary, Failure> {
    let setup::Run {
        mut bound,
        manifest,
        mut params,
        data,
        mut eval,
        mut state,
        max_steps,
        vocab_bound,
        config_json,
        extra_files,
        mut log,
        grad_index,
        loss_index,
    } = setup::prepare(opts)?;
    crate::interrupt::arm(
        "saving a checkpoint after this step (Ctrl-C again to quit without one)",
        "without saving",
    );
    let mut progress = Progress::new(max_steps, state.global_step, opts.logging_steps);
    let save = |state: &TrainerState, bound: &lmc_runtime::LoadedModel, params: &[ParamState]| -> Result<PathBuf, Failure> {
        let dir = checkpoint::checkpoint_dir(&opts.output, state.global_step);
        let values = parameter_values(bound, params)?;
        let snapshot = Snapshot {
            config_json: &config_json,
            params,
            values: &values,
            extra_files: &extra_files,
            state: Some(state),
        };
        checkpoint::save(&dir, &snapshot).map_err(|e| Failure::Message(format!("{e} (the previous checkpoint is intact)")))?;
        if let Some(limit) = opts.save_total_limit {
            let all = checkpoint::checkpoints(&opts.output);
            for (_, old) in all.iter().take(all.len().saturating_sub(limit.max(1))) {
                let _ = std::fs::remove_dir_all(old);
            }
        }
        Ok(dir)
    };
    let last_saved = |state: &TrainerState| -> String {
        match checkpoint::checkpoints(&opts.output).pop() {
            Some((_, dir)) => format!("the last checkpoint, {}, is intact", dir.display()),
            None if state.global_step == 0 => "no step was made".to_string(),
            None => "no checkpoint was saved (--save-steps)".to_string(),
        }
    };

    let mut losses = Vec::new();
    let mut eval_loss = None;
    let tokens_per_step = (data.batch_size() * data.seq_len()) as f64;
    // The kernels' thread count, for the optimizer too.
    let threads = lmc_codegen::llvm::threads();
    let drops = manifest.inputs.iter().any(|i| i.name == lmc_core::DROPOUT_SEED);
    while state.global_step < max_steps {
        let step = state.global_step;
        let t0 = Instant::now();
        let mut batch = data.batch(step).map_err(Failure::Message)?;
        if data.steps().is_none() {
            check_labels(&batch, vocab_bound).map_err(|e| Failure::Message(format!("step {}: {e}", step + 1)))?;
        }
        if drops {
            batch.push(dropout_seed(opts.seed, step)?);
        }
        lmc_abi::buffers::reset_peak_live_bytes();
        let outputs = bound
            .run(&batch)
            .map_err(|e| Failure::Message(format!("step {}: {}", step + 1, e.message())))?;
        let activation_bytes = lmc_abi::buffers::peak_live_bytes();
        let cached_buffer_bytes = lmc_abi::buffers::cached_bytes();
        let loss = f64::from(outputs[loss_index].as_f32().and_then(|l| l.first().copied()).unwrap_or(f32::NAN));
        let norm = optim::global_norm(grad_index.iter().map(|&i| outputs[i].as_f32().unwrap_or(&[])));
        if !loss.is_finite() || !norm.is_finite() {
            progress.finish();
            let what = if loss.is_finite() {
                format!("the gradients' norm is {norm}")
            } else {
                format!("the loss is {loss}")
            };
            return Err(Failure::Message(format!(
                "step {}: {what}; stopped before updating the weights; {}\nhelp: a lower --learning-rate, --warmup-steps or --max-grad-norm usually helps",
                step + 1,
                last_saved(&state)
            )));
        }
        let scale = optim::clip_factor(norm, opts.max_grad_norm).unwrap_or(1.0);
        let lr = opts.learning_rate * opts.lr_scheduler_type.factor(step, max_steps, opts.warmup_steps);
        for (p, &gi) in params.iter_mut().zip(&grad_index) {
            let grad = outputs[gi]
                .as_f32()
                .ok_or_else(|| Failure::Message(format!("the gradient of \"{}\" is not f32", p.name)))?;
            // In place, in the model's own copy: the trainer keeps no other.
            bound.update_parameter(&p.name, |values| {
                opts.optimizer
                    .update_threaded(threads, step + 1, lr, scale, values, grad, &mut p.exp_avg, &mut p.exp_avg_sq)
            })?;
        }
        state.global_step += 1;
        losses.push(loss);
        let seconds = t0.elapsed().as_secs_f64();
        let record = serde_json::json!({
            "step": state.global_step,
            "epoch": state.global_step as f64 / data.batches_per_epoch() as f64,
            "loss": loss,
            "learning_rate": lr,
            "grad_norm": norm,
            "tokens_per_s": tokens_per_step / seconds,
            "step_s": seconds,
            "activation_bytes": activation_bytes,
            "cached_buffer_bytes": cached_buffer_bytes,
        });
        write_log(&mut log, &record, opts.log_json.as_deref())?;
        state.log_history.push(record);
        progress.step(state.global_step, loss, tokens_per_step / seconds);

        let last = state.global_step == max_steps;
        if let Some((eval_data, eval_model)) = &mut eval {
            if last || opts.eval_steps.is_some_and(|n| n > 0 && state.global_step.is_multiple_of(n)) {
                let l = evaluate(eval_model, &bound, &params, eval_data)?;
                let record = serde_json::json!({"step": state.global_step, "eval_loss": l});
                write_log(&mut log, &record, opts.log_json.as_deref())?;
                state.log_history.push(record);
                progress.note(&format!("step {}: eval loss {l:.4}", state.global_step));
                eval_loss = Some(l);
            }
        }
        let interrupted = crate::interrupt::interrupted();
        if last || interrupted || (opts.save_steps > 0 && state.global_step.is_multiple_of(opts.save_steps)) {
            let dir = save(&state, &bound, &params)?;
            if interrupted {
                progress.finish();
                return Err(Failure::Message(format!(
                    "interrupted at step {} of {max_steps}; saved {}; continue with --resume {}",
                    state.global_step,
                    dir.display(),
                    opts.output.display()
                )));
            }
        }
    }
    progress.finish();
    // The trained model at the top of the output directory, as `save_pretrained` leaves it.
    save_pretrained_root(&opts.output, &config_json, &bound, &params, &extra_files)?;
    eprintln!(
        "trained {} to step {max_steps}: loss {:.4}; saved {}",
        manifest.model,
        losses.last().copied().unwrap_or(f64::NAN),
        opts.output.display()
    );
    Ok(TrainSummary {
        steps: state.global_step,
        losses,
        eval_loss,
        output: opts.output.clone(),
    })
}

/// The seed of step `step`'s dropout masks: a function of `--seed` and the step alone, so that a
/// resumed run drops what the uninterrupted one would have.
fn dropout_seed(seed: u64, step: u64) -> Result<lmc_runtime::HostTensor, Failure> {
    let value = lmc_core::ir::hash_mix(seed as i64, step as i64);
    lmc_runtime::HostTensor::from_i64(lmc_core::DROPOUT_SEED, Vec::new(), vec![value]).map_err(|e| Failure::Message(e.to_string()))
}

/// Labels are -100 (ignored) or a token of the vocabulary; anything else would be scored as no
/// class at all.
pub(crate) fn check_labels(batch: &[lmc_runtime::HostTensor], vocab: Option<i64>) -> Result<(), String> {
    let (Some(labels), Some(limit)) = (batch.iter().find(|t| t.name == "labels"), vocab) else {
        return Ok(());
    };
    let Some(values) = labels.as_i64() else {
        return Err(format!("`labels` is {}; labels are i64", labels.dtype.as_str()));
    };
    if let Some(bad) = values.iter().find(|&&l| l != -100 && !(0..limit).contains(&l)) {
        return Err(format!(
            "`labels` holds {bad}: a label is -100 (ignored) or a token id in 0..{limit}"
        ));
    }
    Ok(())
}

fn write_log(log: &mut Option<std::fs::File>, record: &serde_json::Value, path: Option<&Path>) -> Result<(), Failure> {
    if let (Some(f), Some(path)) = (log.as_mut(), path) {
        // One write per line, so that a reader following the file never sees half a record.
        f.write_all(format!("{record}\n").as_bytes())
            .map_err(|e| Failure::Message(format!("cannot write {}: {e}", path.display())))?;
    }
    Ok(())
}

/// The mean of the evaluation batches' losses (as transformers' Trainer averages them), with
/// the parameters `trained` holds now.
fn evaluate(
    model: &mut lmc_runtime::LoadedModel,
    trained: &lmc_runtime::LoadedModel,
    params: &[ParamState],
    data: &Data,
) -> Result<f64, Failure> {
    for p in params {
        model.set_parameter(&p.name, &trained.parameter_f32(&p.name)?)?;
    }
    let losses = batch_losses(model, data, data.eval_batches())?;
    Ok(losses.iter().sum::<f64>() / losses.len() as f64)
}

/// Each parameter's values as `bound` holds them, in `params` order (borrowed where it stores
/// them plain).
pub(crate) fn parameter_values<'m>(
    bound: &'m lmc_runtime::LoadedModel,
    params: &[ParamState],
) -> Result<Vec<std::borrow::Cow<'m, [f32]>>, Failure> {
    params.iter().map(|p| Ok(bound.parameter_f32(&p.name)?)).collect()
}

/// The model's `loss` on each of the first `batches` batches of `data`, in order.
pub(crate) fn batch_losses(model: &lmc_runtime::LoadedModel, data: &Data, batches: usize) -> Result<Vec<f64>, Failure> {
    let loss_index = model
        .manifest()
        .outputs
        .iter()
        .position(|o| o.name == "loss")
        .ok_or_else(|| Failure::Message("the forward has no `loss` output".into()))?;
    (0..batches as u64)
        .map(|b| {
            let batch = data.batch(b).map_err(Failure::Message)?;
            let outputs = model
                .run(&batch)
                .map_err(|e| Failure::Message(format!("{}, batch {}: {}", data.path.display(), b + 1, e.message())))?;
            Ok(f64::from(
                outputs[loss_index].as_f32().and_then(|l| l.first().copied()).unwrap_or(f32::NAN),
            ))
        })
        .collect()
}

/// Writes the trained model at the top of `out` (config, weights, tokenizer), each file
/// replaced atomically.
fn save_pretrained_root(
    out: &Path,
    config_json: &serde_json::Map<String, serde_json::Value>,
    bound: &lmc_runtime::LoadedModel,
    params: &[ParamState],
    extra_files: &[PathBuf],
) -> Result<(), Failure> {
    let staging = out.join(".final");
    let values = parameter_values(bound, params)?;
    let snapshot = Snapshot {
        config_json,
        params,
        values: &values,
        extra_files,
        state: None,
    };
    checkpoint::save(&staging, &snapshot).map_err(Failure::Message)?;
    for entry in std::fs::read_dir(&staging).map_err(|e| Failure::Message(format!("cannot read {}: {e}", staging.display())))? {
        let entry = entry.map_err(|e| Failure::Message(e.to_string()))?;
        let target = out.join(entry.file_name());
        std::fs::rename(entry.path(), &target).map_err(|e| Failure::Message(format!("cannot write {}: {e}", target.display())))?;
    }
    let _ = std::fs::remove_dir(&staging);
    Ok(())
}
