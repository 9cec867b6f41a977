//! The quality A/B: `lmc ab EXPERIMENT.yaml` with a `train` section. Every variant is trained
//! once per seed from its own random initialisation, or from its `init` checkpoint for that
//! seed (`lmc train`, the same data and schedule for all, steps and a few settings per variant
//! where it says), then scored on a held-out text at every length of the experiment, including
//! lengths past the training length: mean next-token loss, perplexity, and loss by position
//! (the extrapolation curve); or on held-out batches, by the model's own loss and accuracy.
//! Seeds give the intervals: a t-interval over the seeds' mean losses, and for each variant
//! against the first, over the seeds' paired differences.
//!
//! A sweep is variants × seeds training runs, each in its own directory under `--out`
//! (`runs/LABEL/seed-S/`); a finished run is reused, an interrupted one resumed. `--shard I/N`
//! trains only the runs whose index is I modulo N (an array job's task), and a last call without
//! `--shard` trains what is missing and reports.

use crate::ab::{Reports, VariantSpec, Workload};
use crate::experiment_file::TrainSection;
use crate::train::optim::Schedule;
use crate::train::{ObjectiveArg, TrainOptions};
use crate::Failure;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};

/// Report format of the quality section; bumped when a field changes meaning.
pub const SCHEMA_VERSION: u32 = 1;

/// Windows of each length scored at most, per trained run.
pub const MAX_WINDOWS: usize = 32;

/// Buckets of positions in the loss-by-position curve of each length.
pub const POSITION_BUCKETS: usize = 8;

/// How an experiment trains and scores its variants.
pub struct Plan {
    pub seeds: Vec<u64>,
    /// `lmc train`'s options shared by every run (model, seed and output set per run).
    pub train: TrainOptions,
    pub eval_text: PathBuf,
}

impl Plan {
    /// From an experiment file's `train` section; paths resolved by `relative`.
    pub fn new(section: &TrainSection, seeds: Vec<u64>, eval_text: PathBuf, relative: &dyn Fn(&str) -> PathBuf) -> Result<Plan, String> {
        let mut t = TrainOptions::new("", relative(&section.data), "");
        t.tokenizer = section.tokenizer.as_deref().map(relative);
        t.objective = match section.objective.as_deref() {
            None => None,
            Some("causal") => Some(ObjectiveArg::Causal),
            Some("masked") => Some(ObjectiveArg::Masked),
            Some("span-corruption") => Some(ObjectiveArg::SpanCorruption),
            Some(other) => return Err(format!("train: objective `{other}`: expected causal, masked or span-corruption")),
        };
        t.seq_len = section.seq_len;
        t.max_steps = section.max_steps;
        if let Some(e) = section.num_train_epochs {
            t.num_train_epochs = e;
        }
        t.per_device_train_batch_size = section.per_device_train_batch_size;
        if let Some(v) = section.learning_rate {
            t.learning_rate = v;
        }
        let o = &mut t.optimizer;
        o.weight_decay = section.weight_decay.unwrap_or(o.weight_decay);
        o.beta1 = section.adam_beta1.unwrap_or(o.beta1);
        o.beta2 = section.adam_beta2.unwrap_or(o.beta2);
        o.epsilon = section.adam_epsilon.unwrap_or(o.epsilon);
        t.max_grad_norm = section.max_grad_norm.unwrap_or(t.max_grad_norm);
        if let Some(name) = &section.lr_scheduler_type {
            t.lr_scheduler_type = Schedule::parse(name)
                .ok_or_else(|| format!("train: lr_scheduler_type `{name}`: expected one of {}", Schedule::NAMES.join(", ")))?;
        }
        t.warmup_steps = section.warmup_steps.unwrap_or(0);
        t.mlm_probability = section.mlm_probability.unwrap_or(t.mlm_probability);
        t.mean_noise_span_length = section.mean_noise_span_length.unwrap_or(t.mean_noise_span_length);
        t.no_dropout = section.no_dropout;
        // A checkpoint at the end; the runs are short, and an interrupted one resumes from its
        // last checkpoint.
        t.save_steps = 0;
        t.logging_steps = 100;
        Ok(Plan {
            seeds,
            train: t,
            eval_text,
        })
    }

    /// `lmc train`'s options for variant `v` with `seed`: the experiment's, with the variant's
    /// own settings and its starting checkpoint.
    fn options_for(&self, v: &VariantSpec, seed: u64) -> TrainOptions {
        let mut t = self.train.clone();
        let own = &v.train;
        t.max_steps = own.max_steps.or(t.max_steps);
        if let Some(e) = own.num_train_epochs {
            t.num_train_epochs = e;
        }
        t.per_device_train_batch_size = own.per_device_train_batch_size.or(t.per_device_train_batch_size);
        t.learning_rate = own.learning_rate.unwrap_or(t.learning_rate);
        t.warmup_steps = own.warmup_steps.unwrap_or(t.warmup_steps);
        t.optimizer.weight_decay = own.weight_decay.unwrap_or(t.optimizer.weight_decay);
        t.weights = init_dir(v, seed);
        t.seed = seed;
        t
    }
}

/// The checkpoint variant `v` is trained from for `seed` (`init`), if not random weights.
fn init_dir(v: &VariantSpec, seed: u64) -> Option<PathBuf> {
    v.init.as_ref().map(|t| PathBuf::from(t.replace("{seed}", &seed.to_string())))
}

/// Where a sweep writes, and which part of it this process runs.
pub struct Sweep {
    pub out: PathBuf,
    /// `--shard I/N`: the runs whose index is I modulo N, and no report.
    pub shard: Option<(usize, usize)>,
    /// The runs were gathered from the parts of a split sweep (`lmc ab merge`): report, and
    /// train nothing.
    pub merged: bool,
}

/// A variant's name in the report and on disk.
fn label(v: &VariantSpec) -> String {
    v.label
        .clone()
        .unwrap_or_else(|| crate::source::split_model_ref(&v.spec).1.unwrap_or_else(|| v.spec.clone()))
}

fn slug(s: &str) -> String {
    s.chars().map(|c| if c.is_ascii_alphanumeric() { c } else { '-' }).collect()
}

/// Where a variant's run of `seed` is: under `out`, or for a variant trained elsewhere, its
/// checkpoint for the seed.
fn run_dir(out: &Path, v: &VariantSpec, seed: u64) -> PathBuf {
    match &v.trained_elsewhere {
        Some(template) => PathBuf::from(template.replace("{seed}", &seed.to_string())),
        None => out.join("runs").join(slug(&label(v))).join(format!("seed-{seed}")),
    }
}

/// Whether a run directory holds a finished training: the trained model at its top, and its
/// last checkpoint at the last step.
pub(crate) fn finished(dir: &Path) -> bool {
    let Some((_, last)) = crate::train::checkpoint::checkpoints(dir).pop() else {
        return false;
    };
    let Ok(resumed) = crate::train::checkpoint::load(&last) else {
        return false;
    };
    dir.join(lmc_runtime::model::SINGLE_FILE_NAME).is_file() && resumed.state.global_step >= resumed.state.max_steps
}

/// What a finished run was trained with that differs from what the experiment asks now (the
/// settings it names, the data, the model and its config), one line each: such a run is not
/// reused silently.
fn differences(dir: &Path, v: &VariantSpec, seed: u64, plan: &Plan, data_sha: &str) -> Result<Vec<String>, Failure> {
    use crate::train::checkpoint;
    let state = checkpoint::load(&checkpoint::resolve_resume(dir).map_err(Failure::Message)?)
        .map_err(Failure::Message)?
        .state;
    let t = &plan.options_for(v, seed);
    let a = &state.args;
    let mut out = Vec::new();
    let mut check = |name: &str, there: String, now: String| {
        if there != now {
            out.push(format!("{name}: {there} there, {now} now"));
        }
    };
    check("learning_rate", a.learning_rate.to_string(), t.learning_rate.to_string());
    check("weight_decay", a.weight_decay.to_string(), t.optimizer.weight_decay.to_string());
    check("adam_beta1", a.adam_beta1.to_string(), t.optimizer.beta1.to_string());
    check("adam_beta2", a.adam_beta2.to_string(), t.optimizer.beta2.to_string());
    check("adam_epsilon", a.adam_epsilon.to_string(), t.optimizer.epsilon.to_string());
    check("max_grad_norm", a.max_grad_norm.to_string(), t.max_grad_norm.to_string());
    check(
        "lr_scheduler_type",
        a.lr_scheduler_type.clone(),
        t.lr_scheduler_type.name().to_string(),
    );
    check("warmup_steps", a.warmup_steps.to_string(), t.warmup_steps.to_string());
    check(
        "objective",
        a.objective.clone(),
        t.objective.map_or("labels", ObjectiveArg::name).to_string(),
    );
    if let Some(n) = t.seq_len {
        check("seq_len", a.seq_len.to_string(), n.to_string());
    }
    if let Some(n) = t.per_device_train_batch_size {
        check(
            "per_device_train_batch_size",
            a.per_device_train_batch_size.to_string(),
            n.to_string(),
        );
    }
    if let Some(n) = t.max_steps {
        check("max_steps", state.max_steps.to_string(), n.to_string());
    }
    if state.data.sha256 != data_sha {
        out.push(format!(
            "the training data: {} (sha256 {}) there",
            state.data.path,
            &state.data.sha256[..12]
        ));
    }
    // A run fine-tuned from a checkpoint that has changed since (retrained) is another run.
    if let Some(init) = init_dir(v, seed) {
        let now = checkpoint::weights_sha256(&init).map_err(Failure::Message)?;
        match &state.init {
            Some(there) if there.sha256 == now => {}
            Some(there) => out.push(format!(
                "the init checkpoint {}: other weights there (sha256 {} there, {} now)",
                init.display(),
                &there.sha256[..12.min(there.sha256.len())],
                &now[..12.min(now.len())]
            )),
            None => out.push(format!(
                "the init checkpoint {}: which weights it started from is not recorded there (an older lmc trained it)",
                init.display()
            )),
        }
    }
    // The model as this experiment configures it (from random weights or its `init`
    // checkpoint, as it was trained).
    let overrides = crate::source::overrides(&training_config(&v.config), init_dir(v, seed).as_deref())?;
    let model = crate::source::load_training_model(&v.spec, &overrides)?;
    out.extend(checkpoint::identity_differences(
        &state.model,
        &crate::train::setup::identity(&model.grad),
    ));
    Ok(out)
}

/// A variant's config for training: without its weight format (`weights=int8`), which is for
/// inference. Variants that differ only in it train the same f32 weights from the same seed,
/// and their scores differ by what the format costs.
fn training_config(c: &crate::ConfigSource) -> crate::ConfigSource {
    let mut c = c.clone();
    let format_key = format!("{}=", lmc_core::config::WEIGHTS_KEY);
    c.set.retain(|s| !s.trim_start().starts_with(&format_key));
    c
}

/// Runs the quality A/B; see the module's documentation.
pub fn run(
    title: Option<&str>,
    experiment: &Path,
    variants: &[VariantSpec],
    plan: &Plan,
    work: &Workload,
    reports: &Reports,
    sweep: &Sweep,
) -> Result<(), Failure> {
    crate::check_input_file("eval_text", &plan.eval_text)?;
    let threads = crate::use_threads(work.threads)?;
    let jobs: Vec<(usize, u64)> = (0..variants.len()).flat_map(|v| plan.seeds.iter().map(move |&s| (v, s))).collect();
    let data_sha = crate::train::data::sha256_file(&plan.train.data).map_err(Failure::Message)?;
    crate::sweep::SweepRecord::new(experiment)?.write(&sweep.out)?;
    let mut failures: Vec<Option<String>> = vec![None; variants.len()];
    for (index, &(vi, seed)) in jobs.iter().enumerate() {
        if sweep.shard.is_some_and(|(i, n)| index % n != i) {
            continue;
        }
        let v = &variants[vi];
        if v.trained_elsewhere.is_some() {
            continue;
        }
        let dir = run_dir(&sweep.out, v, seed);
        if finished(&dir) {
            let differ = differences(&dir, v, seed, plan, &data_sha)?;
            if !differ.is_empty() {
                return Err(Failure::Message(format!(
                    "{} was trained otherwise than the experiment now says ({}); remove it to train it again, or give another --out",
                    dir.display(),
                    differ.join("; ")
                )));
            }
            eprintln!("{} seed {seed}: trained already ({})", label(v), dir.display());
            continue;
        }
        if failures[vi].is_some() {
            continue;
        }
        if sweep.merged {
            return Err(Failure::Message(format!(
                "{} seed {seed} was trained by none of the parts ({} is missing)",
                label(v),
                dir.display()
            )));
        }
        let mut opts = plan.options_for(v, seed);
        opts.spec = v.spec.clone();
        opts.config = training_config(&v.config);
        opts.device = work.device;
        opts.log_json = Some(dir.with_extension("log.jsonl"));
        opts.resume = (!crate::train::checkpoint::checkpoints(&dir).is_empty()).then(|| dir.clone());
        opts.output = dir.clone();
        eprintln!("training {} with seed {seed} ({} of {})", label(v), index + 1, jobs.len());
        if let Err(e) = crate::train::train(&opts) {
            if crate::interrupt::interrupted() {
                return Err(Failure::Message(
                    "the sweep was interrupted; the same command continues it (finished runs are kept, the interrupted one resumes)".into(),
                ));
            }
            let message = match e {
                Failure::Message(m) => m,
                Failure::Reported => "its model has errors (above)".to_string(),
            };
            crate::output::warning(&format!("{} cannot be trained: {message}", label(v)));
            failures[vi] = Some(message);
        }
    }
    if let Some((i, n)) = sweep.shard {
        eprintln!(
            "shard {i}/{n} done; when every shard is, `lmc ab {}` without --shard (same --out) reports",
            experiment.display()
        );
        return Ok(());
    }
    let report = evaluate(title, experiment, variants, plan, work, sweep, &failures, threads)?;
    print_report(&report);
    let text = serde_json::to_string_pretty(&report).map_err(|e| Failure::Message(format!("cannot write the report: {e}")))?;
    if let Some(path) = &reports.json {
        crate::output::write_report(path, &format!("{text}\n"))?;
    }
    if let Some(path) = &reports.csv {
        crate::output::write_report(path, &crate::quality_report::csv(&report))?;
    }
    if let Some(path) = &reports.html {
        crate::output::write_report(path, &crate::quality_report::html(&report))?;
    }
    if failures.iter().any(Option::is_some) {
        return Err(Failure::Message("some variants could not be trained (above)".into()));
    }
    Ok(())
}

/// Scores every trained run, and summarises over seeds.
#[allow(clippy::too_many_arguments)]
fn evaluate(
    title: Option<&str>,
    experiment: &Path,
    variants: &[VariantSpec],
    plan: &Plan,
    work: &Workload,
    sweep: &Sweep,
    failures: &[Option<String>],
    threads: usize,
) -> Result<Value, Failure> {
    let mut out_variants = Vec::new();
    for (vi, v) in variants.iter().enumerate() {
        if let Some(e) = &failures[vi] {
            out_variants.push(json!({"label": label(v), "spec": v.spec, "set": v.config.set, "error": e}));
            continue;
        }
        let mut runs = Vec::new();
        for &seed in &plan.seeds {
            let dir = run_dir(&sweep.out, v, seed);
            if v.trained_elsewhere.is_none() && !finished(&dir) {
                return Err(Failure::Message(format!(
                    "{} seed {seed} is not trained ({}): run the shards first, or without --shard",
                    label(v),
                    dir.display()
                )));
            }
            runs.push(crate::quality_score::score_run(v, &dir, seed, plan, work)?);
        }
        let summary = summarise(&runs, &work.lengths);
        out_variants.push(json!({
            "label": label(v),
            "spec": v.spec,
            "set": v.config.set,
            "trained_elsewhere": v.trained_elsewhere,
            "init": v.init,
            "train": {
                "max_steps": v.train.max_steps, "num_train_epochs": v.train.num_train_epochs,
                "per_device_train_batch_size": v.train.per_device_train_batch_size,
                "learning_rate": v.train.learning_rate, "warmup_steps": v.train.warmup_steps,
                "weight_decay": v.train.weight_decay,
            },
            "config": runs.first().map_or(Value::Null, |r| r["config"].clone()),
            "runs": runs,
            "summary": summary,
        }));
    }
    let own_loss = crate::quality_score::is_batches(&plan.eval_text)
        || matches!(plan.train.objective, Some(ObjectiveArg::Masked | ObjectiveArg::SpanCorruption));
    let verdicts = compare(&out_variants, &work.lengths, own_loss);
    let text_sha = crate::train::data::sha256_file(&plan.eval_text).map_err(Failure::Message)?;
    let data_sha = crate::train::data::sha256_file(&plan.train.data).map_err(Failure::Message)?;
    Ok(json!({
        "schema_version": SCHEMA_VERSION,
        "kind": "quality",
        "title": title.unwrap_or("lmc ab"),
        "experiment": experiment.display().to_string(),
        "generator": format!("lmc {}", env!("CARGO_PKG_VERSION")),
        "commit": env!("LMC_COMMIT"),
        "date": crate::machine::date_utc(),
        "cpu": crate::machine::cpu_model(),
        "threads": threads,
        "seeds": plan.seeds,
        "interval": "95% t-interval over seeds (of each seed's mean loss; of paired per-seed differences against the first variant)",
        "train": {
            "data": {"path": plan.train.data.display().to_string(), "sha256": data_sha},
            "seq_len": plan.train.seq_len,
            "max_steps": plan.train.max_steps,
            "per_device_train_batch_size": plan.train.per_device_train_batch_size,
            "learning_rate": plan.train.learning_rate,
            "lr_scheduler_type": plan.train.lr_scheduler_type.name(),
            "objective": plan.train.objective.map_or("labels", ObjectiveArg::name),
            "warmup_steps": plan.train.warmup_steps,
            "weight_decay": plan.train.optimizer.weight_decay,
            "max_grad_norm": plan.train.max_grad_norm,
        },
        "eval_text": {"path": plan.eval_text.display().to_string(), "sha256": text_sha},
        "scored_by": match plan.train.objective {
            _ if crate::quality_score::is_batches(&plan.eval_text) => "the model's own loss on the held-out batches' labels (and accuracy where it gives one class per sequence)".to_string(),
            Some(o @ (ObjectiveArg::Masked | ObjectiveArg::SpanCorruption)) => format!("the model's own loss, labels made by {} with one seed for all", o.name()),
            _ => "next-token loss".to_string(),
        },
        "lengths": work.lengths,
        "variants": out_variants,
        "verdicts": verdicts,
    }))
}

/// Per length: the mean over seeds of each seed's loss, its t-interval and perplexity.
fn summarise(runs: &[Value], lengths: &[usize]) -> Value {
    let mut out = serde_json::Map::new();
    for length in lengths {
        let key = length.to_string();
        let losses: Vec<f64> = runs.iter().filter_map(|r| r["lengths"][&key]["loss"].as_f64()).collect();
        if losses.len() < runs.len() {
            let why = runs
                .iter()
                .find_map(|r| r["lengths"][&key]["error"].as_str())
                .unwrap_or("not scored");
            out.insert(key, json!({"error": why}));
            continue;
        }
        let (mean, lo, hi) = crate::stats::t_interval(&losses);
        let mut entry = json!({"loss": mean, "low": lo, "high": hi, "perplexity": mean.exp(), "seeds": losses.len()});
        let accuracies: Vec<f64> = runs.iter().filter_map(|r| r["lengths"][&key]["accuracy"].as_f64()).collect();
        if accuracies.len() == runs.len() {
            let (a, lo, hi) = crate::stats::t_interval(&accuracies);
            entry["accuracy"] = json!({"mean": a, "low": lo, "high": hi});
        }
        out.insert(key, entry);
    }
    let speeds: Vec<f64> = runs.iter().filter_map(|r| r["train_tokens_per_s"].as_f64()).collect();
    out.insert(
        "train_tokens_per_s".into(),
        json!(if speeds.is_empty() {
            None
        } else {
            Some(speeds.iter().sum::<f64>() / speeds.len() as f64)
        }),
    );
    Value::Object(out)
}

/// Each variant against the baseline, per length: the mean paired difference of loss (same
/// seed) with its t-interval, a verdict, and the training time ratio. The baseline is the first
/// variant, or at a length it cannot run, the first that can (the verdict says so).
fn compare(variants: &[Value], lengths: &[usize], own_loss: bool) -> Vec<Value> {
    let scored = |v: &Value, key: &str| v["summary"][key]["loss"].is_f64();
    let mut out = Vec::new();
    for length in lengths {
        let key = length.to_string();
        let Some(b) = variants.iter().position(|v| scored(v, &key)) else {
            continue;
        };
        let base = &variants[b];
        let replaces = (b > 0).then(|| {
            let why = variants[0]["summary"][&key]["error"]
                .as_str()
                .or(variants[0]["error"].as_str())
                .unwrap_or("not scored");
            format!("{} at {length}: {why}", variants[0]["label"].as_str().unwrap_or(""))
        });
        for v in variants.iter().skip(b + 1).filter(|v| scored(v, &key)) {
            if own_loss && v["spec"] != base["spec"] {
                // Each model's own loss means what that model makes it (ELECTRA's adds its
                // discriminator's to its generator's): different models' are not compared.
                out.push(json!({
                    "variant": v["label"], "baseline": base["label"], "length": length,
                    "verdict": "not compared: each model scores its own loss",
                }));
                continue;
            }
            let paired = |field: &dyn Fn(&Value) -> Option<f64>| -> Vec<f64> {
                array_of(&v["runs"])
                    .zip(array_of(&base["runs"]))
                    .filter_map(|(a, b)| Some(field(&a["lengths"][&key])? - field(&b["lengths"][&key])?))
                    .collect()
            };
            let pairs = paired(&|r| r["loss"].as_f64());
            let (mean, lo, hi) = crate::stats::t_interval(&pairs);
            let verdict = if pairs.len() < 2 {
                "one seed: no interval"
            } else if hi < 0.0 {
                "better"
            } else if lo > 0.0 {
                "worse"
            } else {
                "no clear difference"
            };
            let accuracy = paired(&|r| r["accuracy"].as_f64());
            let accuracy = (accuracy.len() == pairs.len() && !accuracy.is_empty()).then(|| {
                let (a, lo, hi) = crate::stats::t_interval(&accuracy);
                json!({"difference": a, "low": lo, "high": hi})
            });
            let time_ratio = match (
                base["summary"]["train_tokens_per_s"].as_f64(),
                v["summary"]["train_tokens_per_s"].as_f64(),
            ) {
                (Some(b), Some(s)) if s > 0.0 => Some(b / s),
                _ => None,
            };
            out.push(json!({
                "variant": v["label"], "baseline": base["label"], "baseline_replaces": replaces, "length": length,
                "loss_difference": mean, "low": lo, "high": hi, "verdict": verdict,
                "accuracy_difference": accuracy, "train_time_ratio": time_ratio,
            }));
        }
    }
    out
}

fn array_of(v: &Value) -> impl Iterator<Item = &Value> {
    v.as_array().into_iter().flatten()
}

fn print_report(report: &Value) {
    let lengths: Vec<String> = report["lengths"].as_array().into_iter().flatten().map(|l| l.to_string()).collect();
    crate::output::line(format_args!(
        "{}: {} variant(s) × {} seed(s), held-out loss (nats/token; {}) on {}, {}",
        report["title"].as_str().unwrap_or(""),
        report["variants"].as_array().map_or(0, Vec::len),
        report["seeds"].as_array().map_or(0, Vec::len),
        report["scored_by"].as_str().unwrap_or(""),
        report["eval_text"]["path"].as_str().unwrap_or(""),
        report["interval"].as_str().unwrap_or("")
    ));
    for v in report["variants"].as_array().into_iter().flatten() {
        let name = v["label"].as_str().unwrap_or("");
        if let Some(e) = v["error"].as_str() {
            crate::output::line(format_args!("  {name}: not trained: {e}"));
            continue;
        }
        let mut cells = Vec::new();
        for l in &lengths {
            let s = &v["summary"][l];
            let accuracy = s["accuracy"]["mean"].as_f64().map_or(String::new(), |a| {
                format!(
                    " accuracy {a:.3} [{:.3}, {:.3}]",
                    s["accuracy"]["low"].as_f64().unwrap_or(a),
                    s["accuracy"]["high"].as_f64().unwrap_or(a)
                )
            });
            cells.push(match s["loss"].as_f64() {
                Some(m) => format!(
                    "{l}: {m:.3} [{:.3}, {:.3}] ppl {:.2}{accuracy}",
                    s["low"].as_f64().unwrap_or(m),
                    s["high"].as_f64().unwrap_or(m),
                    s["perplexity"].as_f64().unwrap_or(f64::NAN)
                ),
                None => format!("{l}: {}", s["error"].as_str().unwrap_or("-")),
            });
        }
        let speed = v["summary"]["train_tokens_per_s"]
            .as_f64()
            .map_or(String::new(), |s| format!(" · trains at {s:.0} tokens/s"));
        crate::output::line(format_args!("  {name}: {}{speed}", cells.join(" · ")));
    }
    for d in report["verdicts"].as_array().into_iter().flatten() {
        let Some(difference) = d["loss_difference"].as_f64() else {
            crate::output::line(format_args!(
                "  {} vs {} at {}: {}",
                d["variant"].as_str().unwrap_or(""),
                d["baseline"].as_str().unwrap_or(""),
                d["length"],
                d["verdict"].as_str().unwrap_or("")
            ));
            continue;
        };
        let accuracy = &d["accuracy_difference"];
        let accuracy = accuracy["difference"].as_f64().map_or(String::new(), |a| {
            format!(
                ", accuracy {a:+.3} [{:+.3}, {:+.3}]",
                accuracy["low"].as_f64().unwrap_or(a),
                accuracy["high"].as_f64().unwrap_or(a)
            )
        });
        let time = d["train_time_ratio"].as_f64().map_or(String::new(), |r| {
            if r >= 1.0 {
                format!(", {r:.2}× slower to train")
            } else {
                format!(", {:.2}× faster to train", 1.0 / r)
            }
        });
        let replaces = d["baseline_replaces"].as_str().map_or(String::new(), |r| {
            format!(" (baseline {}: {r})", d["baseline"].as_str().unwrap_or(""))
        });
        crate::output::line(format_args!(
            "  {} vs {} at {}: loss {difference:+.3} [{:+.3}, {:+.3}]{accuracy}: {}{time}{replaces}",
            d["variant"].as_str().unwrap_or(""),
            d["baseline"].as_str().unwrap_or(""),
            d["length"],
            d["low"].as_f64().unwrap_or(f64::NAN),
            d["high"].as_f64().unwrap_or(f64::NAN),
            d["verdict"].as_str().unwrap_or("")
        ));
    }
}
