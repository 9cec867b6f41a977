//! `lmc train`: the derived backward pass, compiled once, run on one batch per step, and AdamW
//! applied to the parameters between steps (see [`optim`]); batches from [`data`], checkpoints
//! and resuming in [`checkpoint`]. The options carry `TrainingArguments`' names and defaults.

pub mod checkpoint;
pub mod data;
pub mod optim;

use crate::{ConfigSource, Failure};
use checkpoint::{DataRecord, ModelIdentity, ParamState, Snapshot, TrainArgsRecord, TrainerState};
use data::{Data, Objective};
use optim::{AdamW, Schedule};
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

/// How labels are made when the data holds none (`--objective`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ObjectiveArg {
    Causal,
    Masked,
}

impl ObjectiveArg {
    fn name(self) -> &'static str {
        match self {
            ObjectiveArg::Causal => "causal",
            ObjectiveArg::Masked => "masked",
        }
    }
}

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
    pub mlm_probability: f64,
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

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

/// The first Ctrl-C stops after the step under way and saves a checkpoint; a second one ends
/// the process at once.
fn install_interrupt_handler() {
    let installed = ctrlc::set_handler(|| {
        if INTERRUPTED.swap(true, Ordering::SeqCst) {
            std::process::exit(130);
        }
        eprintln!("\nsaving a checkpoint after this step (Ctrl-C again to quit without one)");
    });
    if let Err(e) = installed {
        crate::output::warning(&format!("Ctrl-C will end lmc without saving ({e})"));
    }
}

/// The parameters' starting values, widened to f32, by manifest order.
fn initial_values(manifest: &lmc_abi::Manifest, files: &[lmc_runtime::SafeTensorsFile]) -> Result<Vec<Vec<f32>>, String> {
    let mut out = Vec::with_capacity(manifest.params.len());
    for spec in &manifest.params {
        let t = files
            .iter()
            .find_map(|f| f.get(&spec.name))
            .ok_or_else(|| format!("parameter \"{}\" is missing from the weights", spec.name))?;
        let values = match t.dtype() {
            lmc_runtime::StDType::Other(name) => match lmc_runtime::widen::Half::from_name(name) {
                Some(h) => h.widen(t.bytes()),
                None => {
                    return Err(format!(
                        "parameter \"{}\" has dtype {}, which lmc cannot train",
                        spec.name,
                        t.dtype()
                    ))
                }
            },
            _ if t.dtype().as_dtype() == Some(lmc_abi::DType::F32) => t
                .bytes()
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect(),
            d => {
                return Err(format!(
                    "parameter \"{}\" has dtype {d}; only floating-point parameters are trained",
                    spec.name
                ))
            }
        };
        out.push(values);
    }
    Ok(out)
}

fn static_shape(shape: &[lmc_abi::Dim]) -> Vec<usize> {
    shape
        .iter()
        .map(|d| match d {
            lmc_abi::Dim::Static(n) => usize::try_from(*n).unwrap_or(0),
            lmc_abi::Dim::Symbol(_) => 0,
        })
        .collect()
}

/// Config keys of the checkpoint that ask for dropout (a probability above 0), which lmc does
/// not apply: said once, unless `--no-dropout` says it is meant.
fn dropout_keys(checkpoint: &[(String, serde_json::Value)]) -> Vec<String> {
    checkpoint
        .iter()
        .filter(|(k, v)| (k.contains("dropout") || k.contains("pdrop")) && v.as_f64().is_some_and(|p| p > 0.0))
        .map(|(k, v)| format!("{k} = {v}"))
        .collect()
}

/// The tokenizer a text is read with: `--tokenizer`, else the checkpoint's `tokenizer.json`.
fn tokenizer_path(opts: &TrainOptions, checkpoint_dir: Option<&Path>) -> Option<PathBuf> {
    opts.tokenizer
        .clone()
        .or_else(|| checkpoint_dir.map(|d| d.join("tokenizer.json")).filter(|p| p.is_file()))
}

fn is_text(path: &Path) -> bool {
    path.extension().is_none_or(|e| e != "safetensors")
}

/// Opens training or evaluation data.
fn open_data(
    path: &Path,
    opts: &TrainOptions,
    tokenizer: Option<&(PathBuf, tokenizers::Tokenizer)>,
    objective: Option<Objective>,
    shuffle: bool,
) -> Result<Data, Failure> {
    crate::check_input_file(if shuffle { "--data" } else { "--eval-data" }, path)?;
    if !is_text(path) {
        let data = Data::batches(path, objective, opts.seed).map_err(Failure::Message)?;
        if let Some(b) = opts.per_device_train_batch_size.filter(|&b| shuffle && b != data.batch_size()) {
            return Err(Failure::Message(format!(
                "{} holds batches of {}; --per-device-train-batch-size {b} cannot apply (batches are made beforehand)",
                path.display(),
                data.batch_size()
            )));
        }
        if let Some(t) = opts.seq_len.filter(|&t| t != data.seq_len()) {
            return Err(Failure::Message(format!(
                "{} holds sequences of {}; --seq-len {t} cannot apply",
                path.display(),
                data.seq_len()
            )));
        }
        return Ok(data);
    }
    let Some((_, tokenizer)) = tokenizer else {
        return Err(Failure::Message(format!(
            "{} is a text: give its tokenizer with --tokenizer tokenizer.json, or a checkpoint (--weights DIR) that has one",
            path.display()
        )));
    };
    let seq_len = opts.seq_len.ok_or_else(|| {
        Failure::Message(format!(
            "{} is a text: say how long each sequence is with --seq-len",
            path.display()
        ))
    })?;
    let batch = if shuffle {
        opts.per_device_train_batch_size.unwrap_or(8)
    } else {
        opts.per_device_eval_batch_size
    };
    let mut data = Data::text(path, tokenizer, seq_len, batch, !shuffle, objective, opts.seed).map_err(Failure::Message)?;
    data.shuffle = shuffle;
    Ok(data)
}

/// Trains; see the module's documentation and `docs/commands.md`.
pub fn train(opts: &TrainOptions) -> Result<TrainSummary, Failure> {
    crate::require_device(opts.device)?;
    // What is wrong with the command is said before anything is compiled.
    let resumed = match &opts.resume {
        Some(path) => Some(checkpoint::load(&checkpoint::resolve_resume(path).map_err(Failure::Message)?).map_err(Failure::Message)?),
        None => None,
    };
    if let Some(w) = &opts.weights {
        crate::Weights::Checkpoint(w.clone()).check("--weights")?;
    }
    crate::check_input_file("--data", &opts.data)?;
    if let Some(t) = &opts.tokenizer {
        crate::check_input_file("--tokenizer", t)?;
    }
    if opts.eval_steps.is_some() && opts.eval_data.is_none() {
        return Err(Failure::Message("--eval-steps needs --eval-data".into()));
    }
    // The weights (and config) come from the checkpoint resumed, else from --weights.
    let weights_path: Option<PathBuf> = resumed.as_ref().map(|r| r.dir.clone()).or_else(|| opts.weights.clone());
    let checkpoint_dir = weights_path.as_deref().filter(|p| p.is_dir());
    let overrides = crate::source::overrides(&opts.config, checkpoint_dir)?;
    if !opts.no_dropout {
        let keys = dropout_keys(&overrides.checkpoint);
        if !keys.is_empty() {
            crate::output::warning(&format!(
                "lmc train applies no dropout; the config asks for {} (--no-dropout says this is meant)",
                keys.join(", ")
            ));
        }
    }
    let model = crate::source::load_training_model(&opts.spec, &overrides)?;

    let started = Instant::now();
    let module = crate::jit_module(&model.grad, opts.device).map_err(Failure::Message)?;
    eprintln!(
        "compiled the backward pass of {} in {:.1} s",
        model.grad.model,
        started.elapsed().as_secs_f64()
    );
    let manifest = module.manifest().clone();
    let files = match &weights_path {
        Some(p) => lmc_runtime::weight_files(p)?
            .iter()
            .map(|f| lmc_runtime::SafeTensorsFile::open(f))
            .collect::<Result<Vec<_>, _>>()?,
        None => vec![lmc_runtime::random_weights(&manifest, opts.seed)?],
    };
    let values = initial_values(&manifest, &files).map_err(Failure::Message)?;
    let source = match &weights_path {
        Some(p) => lmc_runtime::WeightsSource::Path(p.clone()),
        None => lmc_runtime::WeightsSource::Files(files),
    };
    let mut bound = module.bind_weights(source)?;

    let identity = ModelIdentity {
        name: manifest.model.clone(),
        config: model.grad.config.iter().map(|(k, v)| (k.clone(), v.to_string())).collect(),
        params: manifest.params.iter().map(|p| (p.name.clone(), static_shape(&p.shape))).collect(),
    };
    let mut params: Vec<ParamState> = manifest
        .params
        .iter()
        .zip(values)
        .map(|(spec, values)| ParamState {
            name: spec.name.clone(),
            shape: static_shape(&spec.shape),
            exp_avg: vec![0.0; values.len()],
            exp_avg_sq: vec![0.0; values.len()],
            values,
        })
        .collect();

    // The tokenizer, the objective and the data.
    let tokenizer = match tokenizer_path(opts, checkpoint_dir) {
        Some(path) if is_text(&opts.data) || opts.objective == Some(ObjectiveArg::Masked) => {
            let t =
                tokenizers::Tokenizer::from_file(&path).map_err(|e| Failure::Message(format!("cannot read {}: {e}", path.display())))?;
            Some((path, t))
        }
        _ => None,
    };
    let vocab_bound = manifest
        .inputs
        .iter()
        .find(|i| i.name == "input_ids")
        .and_then(|i| i.index_bound.as_ref())
        .map(|b| b.limit);
    if let (Some((path, t)), Some(limit)) = (&tokenizer, vocab_bound) {
        let size = t.get_vocab_size(true) as i64;
        if size > limit {
            return Err(Failure::Message(format!(
                "the tokenizer {} has {size} tokens, but the model's input_ids index {limit} ({}): they do not belong together",
                path.display(),
                manifest
                    .inputs
                    .iter()
                    .find(|i| i.name == "input_ids")
                    .and_then(|i| i.index_bound.as_ref())
                    .map_or("", |b| b.reason.as_str())
            )));
        }
    }
    let objective = match opts.objective {
        None => None,
        Some(ObjectiveArg::Causal) => Some(Objective::Causal),
        Some(ObjectiveArg::Masked) => {
            let Some((path, t)) = &tokenizer else {
                return Err(Failure::Message(
                    "--objective masked needs the tokenizer's mask token: give --tokenizer, or a checkpoint with its tokenizer.json".into(),
                ));
            };
            let mask = ["[MASK]", "<mask>"]
                .iter()
                .find_map(|m| t.token_to_id(m))
                .ok_or_else(|| Failure::Message(format!("the tokenizer {} has no mask token ([MASK] or <mask>)", path.display())))?;
            Some(Objective::Masked {
                mlm_probability: opts.mlm_probability,
                mask_token_id: i64::from(mask),
                vocab: vocab_bound.unwrap_or(i64::from(t.get_vocab_size(true) as u32)),
            })
        }
    };
    let data = open_data(&opts.data, opts, tokenizer.as_ref(), objective, true)?;
    let inputs: Vec<String> = manifest.inputs.iter().map(|i| i.name.clone()).collect();
    let unknown = data.unknown_tensors(&inputs);
    if !unknown.is_empty() {
        return Err(Failure::Message(format!(
            "{} holds {}, which {} does not take (its inputs: {})",
            opts.data.display(),
            unknown.join(", "),
            manifest.model,
            inputs.join(", ")
        )));
    }
    if !data.has_labels() && opts.objective.is_none() {
        return Err(Failure::Message(format!(
            "{} has no `labels`: say how to make them with --objective causal (labels = input_ids; a causal LM shifts them itself) or --objective masked (masked LM, as transformers' DataCollatorForLanguageModeling)",
            opts.data.display()
        )));
    }
    // Every batch is checked before the first step (ids past the vocabulary, bad shapes).
    if let Some(steps) = data.steps() {
        for s in 0..steps as u64 {
            let batch = data.batch(s).map_err(Failure::Message)?;
            lmc_runtime::validate_inputs(&manifest, &batch)
                .map_err(|e| Failure::Message(format!("{}, batch {}: {}", opts.data.display(), s + 1, e.message())))?;
            check_labels(&batch, vocab_bound).map_err(|e| Failure::Message(format!("{}, batch {}: {e}", opts.data.display(), s + 1)))?;
        }
    }
    let mut eval = match &opts.eval_data {
        Some(path) => {
            let data = open_data(path, opts, tokenizer.as_ref(), objective, false)?;
            let module = crate::jit_module(&model.forward, opts.device).map_err(Failure::Message)?;
            let files = vec![weights_file(&params)?];
            Some((data, module.bind_weights(lmc_runtime::WeightsSource::Files(files))?))
        }
        None => None,
    };

    let max_steps = opts
        .max_steps
        .unwrap_or_else(|| (opts.num_train_epochs * data.batches_per_epoch() as f64).ceil() as u64);
    if max_steps == 0 {
        return Err(Failure::Message("--max-steps is 0: nothing to train".into()));
    }
    if opts.lr_scheduler_type == Schedule::Constant && opts.warmup_steps > 0 {
        return Err(Failure::Message(
            "--warmup-steps has no effect with --lr-scheduler-type constant (as in transformers); use constant_with_warmup".into(),
        ));
    }
    let args = TrainArgsRecord {
        learning_rate: opts.learning_rate,
        weight_decay: opts.optimizer.weight_decay,
        adam_beta1: opts.optimizer.beta1,
        adam_beta2: opts.optimizer.beta2,
        adam_epsilon: opts.optimizer.epsilon,
        max_grad_norm: opts.max_grad_norm,
        lr_scheduler_type: opts.lr_scheduler_type.name().into(),
        warmup_steps: opts.warmup_steps,
        per_device_train_batch_size: data.batch_size(),
        seq_len: data.seq_len(),
        seed: opts.seed,
        objective: opts.objective.map_or("labels", ObjectiveArg::name).into(),
    };
    let data_record = DataRecord {
        path: opts.data.display().to_string(),
        sha256: data.sha256.clone(),
    };
    let mut state = TrainerState {
        schema_version: checkpoint::SCHEMA_VERSION,
        global_step: 0,
        max_steps,
        model: identity.clone(),
        args: args.clone(),
        data: data_record.clone(),
        log_history: Vec::new(),
        lmc_version: env!("CARGO_PKG_VERSION").into(),
    };
    if let Some(r) = &resumed {
        let differences = checkpoint::identity_differences(&r.state.model, &identity);
        if !differences.is_empty() {
            return Err(Failure::Message(format!(
                "--resume {}: that run trained another model: {}",
                r.dir.display(),
                differences.join("; ")
            )));
        }
        if r.state.data.sha256 != data_record.sha256 {
            return Err(Failure::Message(format!(
                "--resume {}: that run read other data ({}, sha256 {}); give the same --data to continue it",
                r.dir.display(),
                r.state.data.path,
                &r.state.data.sha256[..12]
            )));
        }
        for d in checkpoint::args_differences(&r.state.args, &args) {
            crate::output::warning(&format!("resuming with other settings than the run saved: {d}"));
        }
        if r.state.max_steps != max_steps {
            crate::output::warning(&format!(
                "the schedule now spans {max_steps} steps ({} when saved)",
                r.state.max_steps
            ));
        }
        for p in &mut params {
            for (field, target) in [("exp_avg", &mut p.exp_avg), ("exp_avg_sq", &mut p.exp_avg_sq)] {
                let name = format!("{field}.{}", p.name);
                let t = r
                    .moments
                    .get(&name)
                    .filter(|t| t.shape() == p.shape.as_slice() && t.dtype().as_dtype() == Some(lmc_abi::DType::F32))
                    .ok_or_else(|| {
                        Failure::Message(format!(
                            "{}: the optimizer state has no f32 \"{name}\" of shape {:?}",
                            r.dir.display(),
                            p.shape
                        ))
                    })?;
                *target = t
                    .bytes()
                    .chunks_exact(4)
                    .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                    .collect();
            }
        }
        state.global_step = r.state.global_step;
        state.log_history = r.state.log_history.clone();
        eprintln!("resuming {} at step {}", r.dir.display(), state.global_step);
    }
    if state.global_step >= max_steps {
        return Err(Failure::Message(format!(
            "the run is at step {} of --max-steps {max_steps}: nothing left to train (raise --max-steps)",
            state.global_step
        )));
    }

    // What a saved checkpoint says about itself.
    let mut config_json = overrides
        .checkpoint
        .iter()
        .cloned()
        .collect::<serde_json::Map<String, serde_json::Value>>();
    for (k, v) in &model.checkpoint_config {
        config_json.insert(k.clone(), v.clone());
    }
    config_json.insert("dtype".into(), "float32".into());
    if config_json.contains_key("torch_dtype") {
        config_json.insert("torch_dtype".into(), "float32".into());
    }
    let mut extra_files: Vec<PathBuf> = checkpoint_dir
        .map(|d| {
            checkpoint::TOKENIZER_FILES
                .iter()
                .map(|f| d.join(f))
                .filter(|p| p.is_file() && (opts.tokenizer.is_none() || !p.ends_with("tokenizer.json")))
                .collect()
        })
        .unwrap_or_default();
    if let Some(t) = &opts.tokenizer {
        if t.file_name().is_some_and(|n| n == "tokenizer.json") {
            extra_files.push(t.clone());
        } else {
            crate::output::warning(&format!(
                "--tokenizer {} is not named tokenizer.json; the checkpoints will not carry it",
                t.display()
            ));
        }
    }

    std::fs::create_dir_all(&opts.output).map_err(|e| Failure::Message(format!("cannot create {}: {e}", opts.output.display())))?;
    let mut log = match &opts.log_json {
        Some(path) => Some(
            std::fs::OpenOptions::new()
                .create(true)
                .append(resumed.is_some())
                .write(true)
                .truncate(resumed.is_none())
                .open(path)
                .map_err(|e| Failure::Message(format!("cannot open {}: {e}", path.display())))?,
        ),
        None => None,
    };
    eprintln!("data: {}", data.describe());
    eprintln!(
        "training {} ({} parameters) for {max_steps} steps of {} × {}",
        manifest.model,
        crate::units::fmt_count(params.iter().map(|p| p.values.len() as u64).sum()),
        data.batch_size(),
        data.seq_len()
    );
    install_interrupt_handler();
    let mut progress = Progress::new(max_steps, state.global_step, opts.logging_steps);
    let grad_index: Vec<usize> = {
        let outputs: Vec<&str> = manifest.outputs.iter().map(|o| o.name.as_str()).collect();
        let mut index = Vec::with_capacity(params.len());
        for p in &params {
            let i = outputs
                .iter()
                .position(|o| *o == p.name)
                .ok_or_else(|| Failure::Message(format!("the backward pass has no gradient for \"{}\"", p.name)))?;
            index.push(i);
        }
        index
    };
    let loss_index = manifest
        .outputs
        .iter()
        .position(|o| o.name == "loss")
        .ok_or_else(|| Failure::Message("the backward pass has no `loss` output".into()))?;
    let save = |state: &TrainerState, params: &[ParamState]| -> Result<PathBuf, Failure> {
        let dir = checkpoint::checkpoint_dir(&opts.output, state.global_step);
        let snapshot = Snapshot {
            config_json: &config_json,
            params,
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
    while state.global_step < max_steps {
        let step = state.global_step;
        let t0 = Instant::now();
        let batch = data.batch(step).map_err(Failure::Message)?;
        if data.steps().is_none() {
            check_labels(&batch, vocab_bound).map_err(|e| Failure::Message(format!("step {}: {e}", step + 1)))?;
        }
        let outputs = bound
            .run(&batch)
            .map_err(|e| Failure::Message(format!("step {}: {}", step + 1, e.message())))?;
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
            let grad = outputs[gi].as_f32().expect("gradients are f32");
            opts.optimizer
                .update(step + 1, lr, scale, &mut p.values, grad, &mut p.exp_avg, &mut p.exp_avg_sq);
            bound.set_parameter(&p.name, &p.values)?;
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
        });
        write_log(&mut log, &record, opts.log_json.as_deref())?;
        state.log_history.push(record);
        progress.step(state.global_step, loss, tokens_per_step / seconds);

        let last = state.global_step == max_steps;
        if let Some((eval_data, eval_model)) = &mut eval {
            if last || opts.eval_steps.is_some_and(|n| n > 0 && state.global_step.is_multiple_of(n)) {
                let l = evaluate(eval_model, &params, eval_data)?;
                let record = serde_json::json!({"step": state.global_step, "eval_loss": l});
                write_log(&mut log, &record, opts.log_json.as_deref())?;
                state.log_history.push(record);
                progress.note(&format!("step {}: eval loss {l:.4}", state.global_step));
                eval_loss = Some(l);
            }
        }
        let interrupted = INTERRUPTED.load(Ordering::SeqCst);
        if last || interrupted || (opts.save_steps > 0 && state.global_step.is_multiple_of(opts.save_steps)) {
            let dir = save(&state, &params)?;
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
    save_pretrained_root(&opts.output, &config_json, &params, &extra_files)?;
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

/// Labels are -100 (ignored) or a token of the vocabulary; anything else would be scored as no
/// class at all.
fn check_labels(batch: &[lmc_runtime::HostTensor], vocab: Option<i64>) -> Result<(), String> {
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
        writeln!(f, "{record}").map_err(|e| Failure::Message(format!("cannot write {}: {e}", path.display())))?;
    }
    Ok(())
}

/// The parameters as an in-memory safetensors file (to bind a second module to).
fn weights_file(params: &[ParamState]) -> Result<lmc_runtime::SafeTensorsFile, Failure> {
    let weights: Vec<(&str, lmc_abi::DType, &[usize], &[u8])> = params
        .iter()
        .map(|p| {
            (
                p.name.as_str(),
                lmc_abi::DType::F32,
                p.shape.as_slice(),
                checkpoint::f32_bytes(&p.values),
            )
        })
        .collect();
    let bytes = lmc_runtime::safetensors_bytes(&weights)?;
    Ok(lmc_runtime::SafeTensorsFile::from_bytes("the weights being trained", bytes)?)
}

/// The mean of the evaluation batches' losses (as transformers' Trainer averages them), with
/// the current parameters.
fn evaluate(model: &mut lmc_runtime::LoadedModel, params: &[ParamState], data: &Data) -> Result<f64, Failure> {
    for p in params {
        model.set_parameter(&p.name, &p.values)?;
    }
    let loss_index = model
        .manifest()
        .outputs
        .iter()
        .position(|o| o.name == "loss")
        .ok_or_else(|| Failure::Message("the forward has no `loss` output".into()))?;
    let batches = data.eval_batches();
    let mut total = 0.0;
    for b in 0..batches as u64 {
        let batch = data.batch(b).map_err(Failure::Message)?;
        let outputs = model
            .run(&batch)
            .map_err(|e| Failure::Message(format!("{}, batch {}: {}", data.path.display(), b + 1, e.message())))?;
        total += f64::from(outputs[loss_index].as_f32().and_then(|l| l.first().copied()).unwrap_or(f32::NAN));
    }
    Ok(total / batches as f64)
}

/// Writes the trained model at the top of `out` (config, weights, tokenizer), each file
/// replaced atomically.
fn save_pretrained_root(
    out: &Path,
    config_json: &serde_json::Map<String, serde_json::Value>,
    params: &[ParamState],
    extra_files: &[PathBuf],
) -> Result<(), Failure> {
    let staging = out.join(".final");
    let snapshot = Snapshot {
        config_json,
        params,
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

/// A progress bar on a terminal; plain lines every `logging_steps` otherwise.
struct Progress {
    total: u64,
    first: u64,
    started: Instant,
    every: u64,
    terminal: bool,
    drawn: bool,
}

impl Progress {
    fn new(total: u64, first: u64, every: u64) -> Progress {
        Progress {
            total,
            first,
            started: Instant::now(),
            every: every.max(1),
            terminal: std::io::stderr().is_terminal(),
            drawn: false,
        }
    }

    fn step(&mut self, step: u64, loss: f64, tokens_per_s: f64) {
        let done = step - self.first;
        let elapsed = self.started.elapsed().as_secs_f64();
        let left = elapsed / done as f64 * (self.total - step) as f64;
        let line = format!(
            "step {step}/{} · loss {loss:.4} · {} tokens/s · {} left",
            self.total,
            crate::units::fmt_count(tokens_per_s as u64),
            clock(left)
        );
        if self.terminal {
            let width = 24usize;
            let filled = (width as u64 * step / self.total) as usize;
            eprint!("\r\x1b[2K[{}{}] {line}", "#".repeat(filled), "-".repeat(width - filled));
            self.drawn = true;
        } else if step.is_multiple_of(self.every) || step == self.total {
            eprintln!("{line}");
        }
    }

    fn note(&mut self, text: &str) {
        if self.drawn {
            eprint!("\r\x1b[2K");
        }
        eprintln!("{text}");
    }

    fn finish(&mut self) {
        if self.drawn {
            eprintln!();
            self.drawn = false;
        }
    }
}

/// `1:02:03` or `4:05`.
fn clock(seconds: f64) -> String {
    let s = seconds.max(0.0).round() as u64;
    if s >= 3600 {
        format!("{}:{:02}:{:02}", s / 3600, s / 60 % 60, s % 60)
    } else {
        format!("{}:{:02}", s / 60, s % 60)
    }
}
