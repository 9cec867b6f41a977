//! What `lmc train` does before its first step: the command checked, the backward pass compiled
//! and bound to the starting weights (a checkpoint's, or random ones drawn with `--seed`), the
//! tokenizer, objective and data opened and checked, a resumed run's state taken over, and what
//! each saved checkpoint will say about itself. [`prepare`] hands all of it to the step loop as
//! a [`Run`]; every mistake it can find is reported before the first step.

use super::checkpoint::{self, DataRecord, ModelIdentity, ParamState, Resumed, TrainArgsRecord, TrainerState};
use super::data::{Data, Objective};
use super::optim::Schedule;
use super::{check_labels, ObjectiveArg, TrainOptions};
use crate::Failure;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// What the step loop works with.
pub(crate) struct Run {
    /// The backward pass, bound to the parameters; each step's update is written into it.
    pub(crate) bound: lmc_runtime::LoadedModel,
    pub(crate) manifest: lmc_abi::Manifest,
    /// The parameters' f32 values and AdamW moments: what is updated and saved.
    pub(crate) params: Vec<ParamState>,
    pub(crate) data: Data,
    /// The evaluation data and the forward it is scored with, bound to its own copy of the
    /// weights (set to the current ones before each evaluation).
    pub(crate) eval: Option<(Data, lmc_runtime::LoadedModel)>,
    pub(crate) state: TrainerState,
    pub(crate) max_steps: u64,
    /// The bound on `input_ids` (the vocabulary), which labels are checked against.
    pub(crate) vocab_bound: Option<i64>,
    /// The `config.json` every checkpoint carries.
    pub(crate) config_json: serde_json::Map<String, serde_json::Value>,
    /// The tokenizer's files, copied into every checkpoint so that it loads on its own.
    pub(crate) extra_files: Vec<PathBuf>,
    /// `--log-json`, open.
    pub(crate) log: Option<std::fs::File>,
    /// Where each parameter's gradient is among the backward pass's outputs, in `params` order.
    pub(crate) grad_index: Vec<usize>,
    /// Where the loss is among them.
    pub(crate) loss_index: usize,
}

/// Everything `train` does before its first step; see the module's documentation.
pub(crate) fn prepare(opts: &TrainOptions) -> Result<Run, Failure> {
    let resumed = check_command(opts)?;
    // The weights (and config) come from the checkpoint resumed, else from --weights.
    let weights_path: Option<PathBuf> = resumed.as_ref().map(|r| r.dir.clone()).or_else(|| opts.weights.clone());
    let checkpoint_dir = weights_path.as_deref().filter(|p| p.is_dir());
    let overrides = crate::source::overrides(&opts.config, checkpoint_dir)?;
    let overrides = lmc_core::ConfigOverrides {
        given: lmc_core::Given::Named(data_inputs(opts)?),
        training: !opts.no_dropout,
        ..overrides
    };
    let model = crate::source::load_training_model(&opts.spec, &overrides)?;
    if !opts.no_dropout {
        let unread = unread_dropout_keys(&overrides.checkpoint, &model.grad);
        if !unread.is_empty() {
            crate::output::warning(&format!(
                "the config asks for dropout that {} does not read, so none is applied for it: {} (--no-dropout says this is meant)",
                model.grad.model,
                unread.join(", ")
            ));
        }
    }
    let identity = identity(&model.grad);
    if let Some(r) = &resumed {
        // Before compiling: another model's checkpoint would not even bind.
        let differences = checkpoint::identity_differences(&r.state.model, &identity);
        if !differences.is_empty() {
            return Err(Failure::Message(format!(
                "--resume {}: that run trained another model: {}",
                r.dir.display(),
                differences.join("; ")
            )));
        }
    }

    let (bound, manifest, mut params) = compile(opts, &model.grad, weights_path.as_deref())?;

    // The tokenizer, the objective and the data.
    let vocab_bound = manifest
        .inputs
        .iter()
        .find(|i| i.name == "input_ids")
        .and_then(|i| i.index_bound.as_ref())
        .map(|b| b.limit);
    let tokenizer = read_tokenizer(opts, checkpoint_dir, &manifest, vocab_bound)?;
    let objective = objective(opts, tokenizer.as_ref(), vocab_bound)?;
    let data = open_data(&opts.data, opts, tokenizer.as_ref(), objective, true)?;
    check_data(opts, &data, &manifest, vocab_bound)?;
    let eval = match &opts.eval_data {
        Some(path) => {
            let data = open_data(path, opts, tokenizer.as_ref(), objective, false)?;
            let module = crate::jit_module(&model.forward, opts.device).map_err(Failure::Message)?;
            let files = vec![weights_file(&bound, &params)?];
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
    let mut state = fresh_state(opts, &data, identity, max_steps);
    if let Some(w) = opts.weights.as_deref().filter(|_| resumed.is_none()) {
        state.init = Some(DataRecord {
            path: w.display().to_string(),
            sha256: checkpoint::weights_sha256(w).map_err(Failure::Message)?,
        });
    }
    if let Some(r) = &resumed {
        take_over(r, &mut state, &mut params)?;
    }
    if state.global_step >= max_steps {
        return Err(Failure::Message(format!(
            "the run is at step {} of --max-steps {max_steps}: nothing left to train (raise --max-steps)",
            state.global_step
        )));
    }

    let config_json = checkpoint_config(&overrides.checkpoint, &model.checkpoint_config);
    let extra_files = tokenizer_files(opts, checkpoint_dir);

    std::fs::create_dir_all(&opts.output).map_err(|e| Failure::Message(format!("cannot create {}: {e}", opts.output.display())))?;
    let log = match &opts.log_json {
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
        crate::units::fmt_count(params.iter().map(|p| p.exp_avg.len() as u64).sum()),
        data.batch_size(),
        data.seq_len()
    );
    let (grad_index, loss_index) = output_indices(&manifest, &params)?;
    Ok(Run {
        bound,
        manifest,
        params,
        data,
        eval,
        state,
        max_steps,
        vocab_bound,
        config_json,
        extra_files,
        log,
        grad_index,
        loss_index,
    })
}

/// What is wrong with the command is said before anything is compiled. Returns the checkpoint
/// `--resume` names, read.
fn check_command(opts: &TrainOptions) -> Result<Option<Resumed>, Failure> {
    crate::require_device(opts.device)?;
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
    Ok(resumed)
}

/// The backward pass compiled and bound to the starting weights (`weights_path`'s, or random
/// ones drawn with `--seed`), its manifest, and the parameters' states with zero moments.
fn compile(
    opts: &TrainOptions,
    grad: &lmc_core::ir::Graph,
    weights_path: Option<&Path>,
) -> Result<(lmc_runtime::LoadedModel, lmc_abi::Manifest, Vec<ParamState>), Failure> {
    let started = Instant::now();
    let module = crate::jit_module(grad, opts.device).map_err(Failure::Message)?;
    eprintln!(
        "compiled the backward pass of {} in {:.1} s",
        grad.model,
        started.elapsed().as_secs_f64()
    );
    let manifest = module.manifest().clone();
    let files = match weights_path {
        Some(p) => {
            let mut files = lmc_runtime::weight_files(p)?
                .iter()
                .map(|f| lmc_runtime::SafeTensorsFile::open(f))
                .collect::<Result<Vec<_>, _>>()?;
            if opts.resume.is_none() {
                files.extend(newly_initialised(&manifest, &files, p, opts.seed)?);
            }
            files
        }
        None => vec![lmc_runtime::random_weights(&manifest, opts.seed)?],
    };
    if let Some(spec) = manifest.params.iter().find(|p| p.dtype != lmc_abi::DType::F32) {
        return Err(Failure::Message(format!(
            "parameter \"{}\" is {}; only floating-point parameters are trained",
            spec.name,
            spec.dtype.as_str()
        )));
    }
    // The bound model holds the only copy of the weights; the optimizer updates it in place.
    let bound = module.bind_weights(lmc_runtime::WeightsSource::Files(files))?;
    let params: Vec<ParamState> = manifest
        .params
        .iter()
        .map(|spec| {
            let shape = static_shape(&spec.shape);
            let len = shape.iter().product();
            ParamState {
                name: spec.name.clone(),
                shape,
                exp_avg: vec![0.0; len],
                exp_avg_sq: vec![0.0; len],
            }
        })
        .collect();
    Ok((bound, manifest, params))
}

/// Starting from a checkpoint (`--weights`), as transformers' `from_pretrained` does: the
/// parameters it lacks (a new task head over a pre-trained encoder) are drawn at random with
/// `seed`, and the tensors the model does not read (a pre-training head) are left; both are
/// said. A tensor of the wrong shape stays an error when the weights are bound.
fn newly_initialised(
    manifest: &lmc_abi::Manifest,
    files: &[lmc_runtime::SafeTensorsFile],
    path: &Path,
    seed: u64,
) -> Result<Option<lmc_runtime::SafeTensorsFile>, Failure> {
    let stored = |name: &str| files.iter().any(|f| f.get(name).is_some());
    let mut missing = manifest.clone();
    missing.params.retain(|p| !stored(&p.name));
    let unused: Vec<String> = files
        .iter()
        .flat_map(|f| f.tensors())
        .map(|t| t.name.clone())
        .filter(|n| !manifest.params.iter().any(|p| &p.name == n))
        .collect();
    if !unused.is_empty() {
        eprintln!(
            "{} tensors of {} are not parameters of this model and are left: {}",
            unused.len(),
            path.display(),
            crate::output::list_some(&unused, 6)
        );
    }
    if missing.params.is_empty() {
        return Ok(None);
    }
    if missing.params.len() == manifest.params.len() {
        return Err(Failure::Message(format!(
            "{} holds none of the {} parameters of this model (its first is \"{}\"): is it this model's checkpoint?",
            path.display(),
            manifest.params.len(),
            manifest.params[0].name
        )));
    }
    let names: Vec<String> = missing.params.iter().map(|p| p.name.clone()).collect();
    crate::output::warning(&format!(
        "{} of the {} parameters are not in {} and are newly initialised (drawn with --seed {seed}), as from_pretrained does: {}",
        names.len(),
        manifest.params.len(),
        path.display(),
        crate::output::list_some(&names, 6)
    ));
    Ok(Some(lmc_runtime::random_weights(&missing, seed)?))
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

/// Config keys of the checkpoint that ask for dropout (a probability above 0) that the model's
/// config does not read: dropout the training step does not apply. Said once, unless
/// `--no-dropout` says no dropout is meant.
fn unread_dropout_keys(checkpoint: &[(String, serde_json::Value)], grad: &lmc_core::ir::Graph) -> Vec<String> {
    checkpoint
        .iter()
        .filter(|(k, v)| (k.contains("dropout") || k.contains("pdrop")) && v.as_f64().is_some_and(|p| p > 0.0))
        .filter(|(k, _)| !grad.config.iter().any(|(read, _)| read == k))
        .map(|(k, v)| format!("{k} = {v}"))
        .collect()
}

/// The tokenizer, read when a text or the masked objective needs it; one with more tokens than
/// the model's `input_ids` index is an error, since its ids would run past the embedding.
fn read_tokenizer(
    opts: &TrainOptions,
    checkpoint_dir: Option<&Path>,
    manifest: &lmc_abi::Manifest,
    vocab_bound: Option<i64>,
) -> Result<Option<(PathBuf, tokenizers::Tokenizer)>, Failure> {
    let tokenizer = match tokenizer_path(opts, checkpoint_dir) {
        Some(path) if is_text(&opts.data) || matches!(opts.objective, Some(ObjectiveArg::Masked | ObjectiveArg::SpanCorruption)) => {
            let t = crate::tokenizer::load(&path).map_err(Failure::Message)?;
            Some((path, t))
        }
        _ => None,
    };
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
    Ok(tokenizer)
}

/// The tokenizer a text is read with: `--tokenizer`, else the checkpoint's `tokenizer.json`.
fn tokenizer_path(opts: &TrainOptions, checkpoint_dir: Option<&Path>) -> Option<PathBuf> {
    opts.tokenizer
        .clone()
        .or_else(|| checkpoint_dir.map(|d| d.join("tokenizer.json")).filter(|p| p.is_file()))
}

/// How labels are made (`--objective`); the masked objective takes its mask token from the
/// tokenizer, span corruption its sentinels and `</s>`.
pub(crate) fn objective(
    opts: &TrainOptions,
    tokenizer: Option<&(PathBuf, tokenizers::Tokenizer)>,
    vocab_bound: Option<i64>,
) -> Result<Option<Objective>, Failure> {
    Ok(match opts.objective {
        None => None,
        Some(ObjectiveArg::Causal) => Some(Objective::Causal),
        Some(ObjectiveArg::Masked) => {
            let Some((path, t)) = tokenizer else {
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
        Some(ObjectiveArg::SpanCorruption) => {
            let Some((path, t)) = tokenizer else {
                return Err(Failure::Message(
                    "--objective span-corruption needs the tokenizer's sentinels (<extra_id_0>, …) and </s>: give --tokenizer, or a checkpoint with its tokenizer.json".into(),
                ));
            };
            let missing = |what: &str| {
                Failure::Message(format!(
                    "the tokenizer {} has no {what}, which span corruption needs",
                    path.display()
                ))
            };
            let sentinel = t.token_to_id("<extra_id_0>").ok_or_else(|| missing("<extra_id_0>"))?;
            let eos = t.token_to_id("</s>").ok_or_else(|| missing("</s>"))?;
            // As transformers' collator numbers them: <extra_id_k> is <extra_id_0> less k.
            let sentinels = (0..)
                .take_while(|&k| k <= sentinel && t.token_to_id(&format!("<extra_id_{k}>")) == Some(sentinel - k))
                .count();
            if !(opts.mlm_probability > 0.0 && opts.mlm_probability < 1.0) || opts.mean_noise_span_length < 1.0 {
                return Err(Failure::Message(format!(
                    "span corruption needs 0 < --mlm-probability < 1 and --mean-noise-span-length ≥ 1 (given {} and {})",
                    opts.mlm_probability, opts.mean_noise_span_length
                )));
            }
            Some(Objective::SpanCorruption {
                noise_density: opts.mlm_probability,
                mean_noise_span_length: opts.mean_noise_span_length,
                sentinel: i64::from(sentinel),
                sentinels,
                eos: i64::from(eos),
            })
        }
    })
}

/// The inputs each batch gives the model: the data's tensors (a text's `input_ids`), and the
/// `labels` the objective makes when it has none. Inputs a model may be left without are
/// compiled in only when the data gives them (so a model may make one from the labels).
fn data_inputs(opts: &TrainOptions) -> Result<Vec<String>, Failure> {
    crate::check_input_file("--data", &opts.data)?;
    let mut names = if is_text(&opts.data) {
        vec!["input_ids".to_string()]
    } else {
        let file = lmc_runtime::safetensors::SafeTensorsFile::open(&opts.data).map_err(|e| Failure::Message(e.to_string()))?;
        file.tensors().map(|t| t.name.clone()).collect()
    };
    if !names.iter().any(|n| n == "labels") {
        names.push("labels".into());
    }
    Ok(names)
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
        opts.per_device_train_batch_size.unwrap_or(super::DEFAULT_BATCH_SIZE)
    } else {
        opts.per_device_eval_batch_size
    };
    let mut data = Data::text(path, tokenizer, seq_len, batch, !shuffle, objective, opts.seed).map_err(Failure::Message)?;
    data.shuffle = shuffle;
    Ok(data)
}

/// The training data fits the model: no tensor it does not take, labels or a way to make them,
/// and every batch made beforehand valid.
fn check_data(opts: &TrainOptions, data: &Data, manifest: &lmc_abi::Manifest, vocab_bound: Option<i64>) -> Result<(), Failure> {
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
            "{} has no `labels`: {}",
            opts.data.display(),
            super::data::MAKE_LABELS
        )));
    }
    // Every batch is checked before the first step (ids past the vocabulary, bad shapes).
    if let Some(steps) = data.steps() {
        for s in 0..steps as u64 {
            let batch = data.batch(s).map_err(Failure::Message)?;
            lmc_runtime::validate_inputs(manifest, &batch)
                .map_err(|e| Failure::Message(format!("{}, batch {}: {}", opts.data.display(), s + 1, e.message())))?;
            check_labels(&batch, vocab_bound).map_err(|e| Failure::Message(format!("{}, batch {}: {e}", opts.data.display(), s + 1)))?;
        }
    }
    Ok(())
}

/// The parameters `bound` holds, as an in-memory safetensors file (to bind a second module to).
fn weights_file(bound: &lmc_runtime::LoadedModel, params: &[ParamState]) -> Result<lmc_runtime::SafeTensorsFile, Failure> {
    let values = super::parameter_values(bound, params)?;
    let weights: Vec<(&str, lmc_abi::DType, &[usize], &[u8])> = params
        .iter()
        .zip(&values)
        .map(|(p, values)| {
            (
                p.name.as_str(),
                lmc_abi::DType::F32,
                p.shape.as_slice(),
                checkpoint::f32_bytes(values),
            )
        })
        .collect();
    let bytes = lmc_runtime::safetensors_bytes(&weights)?;
    Ok(lmc_runtime::SafeTensorsFile::from_bytes("the weights being trained", bytes)?)
}

/// A new run's state at step 0, recording the model, the settings and the data so that
/// `--resume` can tell whether it continues the same run.
fn fresh_state(opts: &TrainOptions, data: &Data, model: ModelIdentity, max_steps: u64) -> TrainerState {
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
        no_dropout: opts.no_dropout,
    };
    let data_record = DataRecord {
        path: opts.data.display().to_string(),
        sha256: data.sha256.clone(),
    };
    TrainerState {
        schema_version: checkpoint::SCHEMA_VERSION,
        global_step: 0,
        max_steps,
        model,
        args,
        data: data_record,
        init: None,
        log_history: Vec::new(),
        lmc_version: env!("CARGO_PKG_VERSION").into(),
    }
}

/// Continues the run `r` saved: its step, log history and AdamW moments. Another model or
/// other data is an error, since the moments and the batch order would not fit them; other
/// settings are only warned about.
/// The model a checkpoint belongs to, from its backward pass: its name, resolved config and
/// parameters.
pub(crate) fn identity(grad: &lmc_core::ir::Graph) -> ModelIdentity {
    let shape = |t: &lmc_core::ir::TensorType| -> Vec<usize> {
        t.dims
            .iter()
            .map(|d| match d {
                lmc_core::ir::Dim::Static(n) => usize::try_from(*n).unwrap_or(0),
                lmc_core::ir::Dim::Symbol(_) => 0,
            })
            .collect()
    };
    ModelIdentity {
        name: grad.model.clone(),
        config: grad.config.iter().map(|(k, v)| (k.clone(), v.to_string())).collect(),
        params: grad.params.iter().map(|p| (p.name.clone(), shape(&p.ty))).collect(),
    }
}

fn take_over(r: &Resumed, state: &mut TrainerState, params: &mut [ParamState]) -> Result<(), Failure> {
    if r.state.data.sha256 != state.data.sha256 {
        return Err(Failure::Message(format!(
            "--resume {}: that run read other data ({}, sha256 {}); give the same --data to continue it",
            r.dir.display(),
            r.state.data.path,
            &r.state.data.sha256[..12]
        )));
    }
    for d in checkpoint::args_differences(&r.state.args, &state.args) {
        crate::output::warning(&format!("resuming with other settings than the run saved: {d}"));
    }
    let max_steps = state.max_steps;
    if r.state.max_steps != max_steps {
        crate::output::warning(&format!(
            "the schedule now spans {max_steps} steps ({} when saved)",
            r.state.max_steps
        ));
    }
    for p in params {
        for (field, target) in [("exp_avg", &mut p.exp_avg), ("exp_avg_sq", &mut p.exp_avg_sq)] {
            let name = format!("{field}.{}", p.name);
            *target = r
                .moments
                .get(&name)
                .filter(|t| t.shape() == p.shape.as_slice() && t.dtype().as_dtype() == Some(lmc_abi::DType::F32))
                .and_then(|t| t.f32_values())
                .ok_or_else(|| {
                    Failure::Message(format!(
                        "{}: the optimizer state has no f32 \"{name}\" of shape {:?}",
                        r.dir.display(),
                        p.shape
                    ))
                })?;
        }
    }
    state.global_step = r.state.global_step;
    state.log_history = r.state.log_history.clone();
    state.init = r.state.init.clone();
    eprintln!("resuming {} at step {}", r.dir.display(), state.global_step);
    Ok(())
}

/// The `config.json` each checkpoint carries: the checkpoint's keys, the model's own over them,
/// and float32, the dtype lmc trains and saves in.
fn checkpoint_config(
    checkpoint: &[(String, serde_json::Value)],
    model_config: &serde_json::Map<String, serde_json::Value>,
) -> serde_json::Map<String, serde_json::Value> {
    let mut config_json = checkpoint.iter().cloned().collect::<serde_json::Map<String, serde_json::Value>>();
    for (k, v) in model_config {
        config_json.insert(k.clone(), v.clone());
    }
    config_json.insert("dtype".into(), "float32".into());
    if config_json.contains_key("torch_dtype") {
        config_json.insert("torch_dtype".into(), "float32".into());
    }
    config_json
}

/// The tokenizer's files each checkpoint carries: the checkpoint's, with `--tokenizer` in place
/// of its `tokenizer.json`.
fn tokenizer_files(opts: &TrainOptions, checkpoint_dir: Option<&Path>) -> Vec<PathBuf> {
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
    extra_files
}

/// Where each parameter's gradient (in `params` order), and the loss, are among the backward
/// pass's outputs.
fn output_indices(manifest: &lmc_abi::Manifest, params: &[ParamState]) -> Result<(Vec<usize>, usize), Failure> {
    let grad_index: Vec<usize> = {
        let outputs: Vec<&str> = manifest.outputs.iter().map(|o| o.name.as_str()).collect();
        let mut index = Vec::with_capacity(params.len());
        for p in params {
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
    Ok((grad_index, loss_index))
}
