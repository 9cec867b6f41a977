//! What `lmc train` saves and resumes from. A checkpoint is a directory
//! `OUTDIR/checkpoint-STEP/` as transformers' Trainer lays one out: a `save_pretrained`
//! directory (`config.json`, `model.safetensors` under the checkpoint's names, one tensor per
//! tied group, the tokenizer's files) that `from_pretrained` loads, plus `optimizer.safetensors`
//! (AdamW's moments) and `trainer_state.json` (the step, the run's settings, the model's identity
//! and the data's digest, the log). Every random choice of a run is a function of the seed and the
//! step (see `data`), so these are all a resumed run needs to continue exactly.
//!
//! A checkpoint is written into `checkpoint-STEP.partial/`, each file flushed to disk, and the
//! directory renamed into place last: a full disk or a kill while saving leaves the previous
//! checkpoint as it was, and a directory without `.partial` is always complete.

use serde::{Deserialize, Serialize};
use std::borrow::Cow;
use std::io::Write;
use std::path::{Path, PathBuf};

/// What a checkpoint records about its run (`trainer_state.json`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TrainerState {
    pub schema_version: u32,
    /// Updates done.
    pub global_step: u64,
    pub max_steps: u64,
    pub model: ModelIdentity,
    pub args: TrainArgsRecord,
    pub data: DataRecord,
    /// The checkpoint the run started from (`--weights`): its path and its weight files'
    /// sha256; none for random weights (and in states saved before it was recorded).
    #[serde(default)]
    pub init: Option<DataRecord>,
    /// One entry per logged step (and evaluation), as `--log-json` writes them.
    pub log_history: Vec<serde_json::Value>,
    pub lmc_version: String,
}

/// Which model a checkpoint belongs to: a resumed run must compile the same one.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelIdentity {
    pub name: String,
    /// The resolved config, key by key.
    pub config: Vec<(String, String)>,
    /// Every parameter's name and shape, in manifest order.
    pub params: Vec<(String, Vec<usize>)>,
}

/// The settings that shape the trajectory (`TrainingArguments`' names).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainArgsRecord {
    pub learning_rate: f64,
    pub weight_decay: f64,
    pub adam_beta1: f64,
    pub adam_beta2: f64,
    pub adam_epsilon: f64,
    pub max_grad_norm: f64,
    pub lr_scheduler_type: String,
    pub warmup_steps: u64,
    pub per_device_train_batch_size: usize,
    pub seq_len: usize,
    pub seed: u64,
    pub objective: String,
    /// `--no-dropout` (absent from states saved before dropout was applied: false).
    #[serde(default)]
    pub no_dropout: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DataRecord {
    pub path: String,
    pub sha256: String,
}

pub const SCHEMA_VERSION: u32 = 1;
pub const STATE_FILE: &str = "trainer_state.json";
pub const OPTIMIZER_FILE: &str = "optimizer.safetensors";

/// Files of a checkpoint directory that describe the tokenizer and generation, copied as they are.
pub const TOKENIZER_FILES: &[&str] = &[
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.txt",
    "vocab.json",
    "merges.txt",
    "generation_config.json",
];

/// A parameter and AdamW's moments for it (its values live in the bound model alone).
pub struct ParamState {
    pub name: String,
    pub shape: Vec<usize>,
    pub exp_avg: Vec<f32>,
    pub exp_avg_sq: Vec<f32>,
}

/// Everything one save writes.
pub struct Snapshot<'a> {
    pub config_json: &'a serde_json::Map<String, serde_json::Value>,
    pub params: &'a [ParamState],
    /// Each parameter's values, in `params` order.
    pub values: &'a [Cow<'a, [f32]>],
    /// Files copied in (the tokenizer's).
    pub extra_files: &'a [PathBuf],
    /// The run's state, saved with the optimizer's; `None` for the model alone.
    pub state: Option<&'a TrainerState>,
}

pub fn f32_bytes(values: &[f32]) -> &[u8] {
    // SAFETY: f32 has no padding or invalid bit patterns, and u8's alignment is 1.
    unsafe { std::slice::from_raw_parts(values.as_ptr().cast::<u8>(), std::mem::size_of_val(values)) }
}

/// Writes `bytes` to `path` and flushes them to the disk.
fn write_synced(path: &Path, bytes: &[u8]) -> Result<(), String> {
    let mut f = std::fs::File::create(path).map_err(|e| format!("cannot create {}: {e}", path.display()))?;
    f.write_all(bytes)
        .and_then(|()| f.sync_all())
        .map_err(|e| format!("cannot write {}: {e}", path.display()))
}

/// Writes a safetensors file of `tensors` to `path` a tensor at a time (no copy of the whole
/// file in memory: a checkpoint is as large as the weights, or twice, with the moments) and
/// flushes it to the disk.
fn write_tensors_synced(path: &Path, tensors: &[(&str, lmc_abi::DType, &[usize], &[u8])]) -> Result<(), String> {
    let f = std::fs::File::create(path).map_err(|e| format!("cannot create {}: {e}", path.display()))?;
    let mut out = std::io::BufWriter::new(f);
    lmc_runtime::write_safetensors_to(&mut out, tensors)
        .and_then(|()| out.flush())
        .and_then(|()| out.get_ref().sync_all())
        .map_err(|e| format!("cannot write {}: {e}", path.display()))
}

/// Writes `snapshot` as a `save_pretrained` directory at `dir` (with the optimizer state when it
/// has the run's), atomically: into `dir.partial`, then renamed. An existing `dir` is replaced.
pub fn save(dir: &Path, snapshot: &Snapshot<'_>) -> Result<(), String> {
    let partial = PathBuf::from(format!("{}.partial", dir.display()));
    if partial.exists() {
        std::fs::remove_dir_all(&partial).map_err(|e| format!("cannot remove {}: {e}", partial.display()))?;
    }
    std::fs::create_dir_all(&partial).map_err(|e| format!("cannot create {}: {e}", partial.display()))?;
    let config = serde_json::to_string_pretty(snapshot.config_json).map_err(|e| format!("cannot write config.json: {e}"))?;
    write_synced(&partial.join("config.json"), format!("{config}\n").as_bytes())?;
    let weights: Vec<(&str, lmc_abi::DType, &[usize], &[u8])> = snapshot
        .params
        .iter()
        .zip(snapshot.values)
        .map(|(p, values)| (p.name.as_str(), lmc_abi::DType::F32, p.shape.as_slice(), f32_bytes(values)))
        .collect();
    write_tensors_synced(&partial.join(lmc_runtime::model::SINGLE_FILE_NAME), &weights)?;
    for file in snapshot.extra_files {
        let name = file
            .file_name()
            .ok_or_else(|| format!("{} names no file to copy", file.display()))?;
        let bytes = std::fs::read(file).map_err(|e| format!("cannot read {}: {e}", file.display()))?;
        write_synced(&partial.join(name), &bytes)?;
    }
    if let Some(state) = snapshot.state {
        let names: Vec<(String, String)> = snapshot
            .params
            .iter()
            .map(|p| (format!("exp_avg.{}", p.name), format!("exp_avg_sq.{}", p.name)))
            .collect();
        let mut moments: Vec<(&str, lmc_abi::DType, &[usize], &[u8])> = Vec::new();
        for (p, (m, v)) in snapshot.params.iter().zip(&names) {
            moments.push((m.as_str(), lmc_abi::DType::F32, p.shape.as_slice(), f32_bytes(&p.exp_avg)));
            moments.push((v.as_str(), lmc_abi::DType::F32, p.shape.as_slice(), f32_bytes(&p.exp_avg_sq)));
        }
        write_tensors_synced(&partial.join(OPTIMIZER_FILE), &moments)?;
        let state = serde_json::to_string_pretty(state).map_err(|e| format!("cannot write {STATE_FILE}: {e}"))?;
        write_synced(&partial.join(STATE_FILE), format!("{state}\n").as_bytes())?;
    }
    if dir.exists() {
        // The old directory goes only once the new one is complete beside it.
        let old = PathBuf::from(format!("{}.old", dir.display()));
        let _ = std::fs::remove_dir_all(&old);
        std::fs::rename(dir, &old).map_err(|e| format!("cannot move {} aside: {e}", dir.display()))?;
        std::fs::rename(&partial, dir).map_err(|e| format!("cannot rename {} to {}: {e}", partial.display(), dir.display()))?;
        std::fs::remove_dir_all(&old).map_err(|e| format!("cannot remove {}: {e}", old.display()))?;
    } else {
        std::fs::rename(&partial, dir).map_err(|e| format!("cannot rename {} to {}: {e}", partial.display(), dir.display()))?;
    }
    Ok(())
}

/// The checkpoint directory for `step` under `out`.
pub fn checkpoint_dir(out: &Path, step: u64) -> PathBuf {
    out.join(format!("checkpoint-{step}"))
}

/// The complete checkpoints under `out`, by step, oldest first.
pub fn checkpoints(out: &Path) -> Vec<(u64, PathBuf)> {
    let mut found: Vec<(u64, PathBuf)> = std::fs::read_dir(out)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            let step = name.strip_prefix("checkpoint-")?.parse::<u64>().ok()?;
            let path = e.path();
            path.join(STATE_FILE).is_file().then_some((step, path))
        })
        .collect();
    found.sort();
    found
}

/// The checkpoint `--resume PATH` names: PATH itself when it is one, else the latest under it.
pub fn resolve_resume(path: &Path) -> Result<PathBuf, String> {
    if path.join(STATE_FILE).is_file() {
        return Ok(path.to_path_buf());
    }
    if !path.is_dir() {
        return Err(format!("--resume {}: no such directory", path.display()));
    }
    checkpoints(path).pop().map(|(_, p)| p).ok_or_else(|| {
        format!(
            "--resume {}: holds no checkpoint (a checkpoint-STEP directory with {STATE_FILE})",
            path.display()
        )
    })
}

/// A checkpoint's state and AdamW moments.
pub struct Resumed {
    pub dir: PathBuf,
    pub state: TrainerState,
    pub moments: lmc_runtime::SafeTensorsFile,
}

pub fn load(dir: &Path) -> Result<Resumed, String> {
    let state_path = dir.join(STATE_FILE);
    let text = std::fs::read_to_string(&state_path).map_err(|e| format!("cannot read {}: {e}", state_path.display()))?;
    let state: TrainerState = serde_json::from_str(&text).map_err(|e| format!("{}: {e}", state_path.display()))?;
    if state.schema_version != SCHEMA_VERSION {
        return Err(format!(
            "{}: schema_version {} (this lmc reads {SCHEMA_VERSION})",
            state_path.display(),
            state.schema_version
        ));
    }
    let moments = lmc_runtime::SafeTensorsFile::open(&dir.join(OPTIMIZER_FILE)).map_err(|e| e.to_string())?;
    Ok(Resumed {
        dir: dir.to_path_buf(),
        state,
        moments,
    })
}

/// What differs between the model a checkpoint was trained as and the one compiled now, one
/// line each (empty: the same).
pub fn identity_differences(saved: &ModelIdentity, now: &ModelIdentity) -> Vec<String> {
    let mut out = Vec::new();
    if saved.name != now.name {
        out.push(format!("the model: {} there, {} now", saved.name, now.name));
    }
    for (k, v) in &saved.config {
        match now.config.iter().find(|(n, _)| n == k) {
            Some((_, w)) if w != v => out.push(format!("config `{k}`: {v} there, {w} now")),
            None => out.push(format!("config `{k}`: {v} there, absent now")),
            _ => {}
        }
    }
    for (k, w) in &now.config {
        if !saved.config.iter().any(|(n, _)| n == k) {
            out.push(format!("config `{k}`: absent there, {w} now"));
        }
    }
    if out.is_empty() && saved.params != now.params {
        out.push("the parameters' names or shapes".to_string());
    }
    out
}

/// The settings that differ between the run saved and the one resuming it.
pub fn args_differences(saved: &TrainArgsRecord, now: &TrainArgsRecord) -> Vec<String> {
    let (Ok(serde_json::Value::Object(a)), Ok(serde_json::Value::Object(b))) = (serde_json::to_value(saved), serde_json::to_value(now))
    else {
        return Vec::new();
    };
    a.iter()
        .filter_map(|(k, v)| {
            let w = b.get(k)?;
            (v != w).then(|| format!("--{} {v} there, {w} now", k.replace('_', "-")))
        })
        .collect()
}

/// The sha256 of a checkpoint's weight files (`--weights`), one per file, joined by commas.
pub fn weights_sha256(path: &Path) -> Result<String, String> {
    let files = lmc_runtime::weight_files(path).map_err(|e| e.to_string())?;
    let sums = files.iter().map(|f| super::data::sha256_file(f)).collect::<Result<Vec<_>, _>>()?;
    Ok(sums.join(","))
}
