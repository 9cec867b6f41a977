//! Loading a model for a command: `FILE[:MODEL]`, reading the file and its imports, applying
//! config overrides, and checking it. Diagnostics are printed here, once.

use crate::ConfigSource;
use crate::Failure;
use lmc_core::{CheckError, ConfigOverrides, LoadFailure, Program};
use lmc_grammar::{Diagnostic, SourceMap};
use std::path::{Path, PathBuf};

/// `models/bert.model:BertEmbeddings` → (`models/bert.model`, Some(`BertEmbeddings`)).
pub fn split_model_ref(spec: &str) -> (PathBuf, Option<String>) {
    match spec.rsplit_once(':') {
        Some((file, name)) if !name.is_empty() && !name.contains('/') && !file.is_empty() => (PathBuf::from(file), Some(name.to_string())),
        _ => (PathBuf::from(spec), None),
    }
}

/// A diagnostic as a front end that collects them receives it: its JSON form (`lmc check
/// --message-format json`: code, severity, message, file, line, column, help) and its text as
/// `lmc` prints it, uncoloured.
#[derive(Clone, Debug)]
pub struct Collected {
    pub json: serde_json::Value,
    pub rendered: String,
}

thread_local! {
    /// Where this thread's diagnostics go while [`collect_diagnostics`] runs; stderr otherwise.
    static COLLECTING: std::cell::RefCell<Option<Vec<Collected>>> = const { std::cell::RefCell::new(None) };
}

/// Prints diagnostics to stderr, or hands them to the [`collect_diagnostics`] under way on
/// this thread.
pub fn print_diagnostics(diags: &[Diagnostic], sources: &SourceMap) {
    if collected(diags, sources) {
        return;
    }
    for d in diags {
        eprint!("{}", d.render_styled(sources, crate::output::stderr_colors()));
        eprintln!();
    }
}

/// As [`print_diagnostics`], one JSON object per line on stdout (`--message-format json`).
pub fn print_json_diagnostics(diags: &[Diagnostic], sources: &SourceMap) {
    if collected(diags, sources) {
        return;
    }
    for d in diags {
        crate::outln!("{}", d.to_json(sources));
    }
}

/// Hands `diags` to the collection under way on this thread; false when there is none.
fn collected(diags: &[Diagnostic], sources: &SourceMap) -> bool {
    COLLECTING.with(|c| match c.borrow_mut().as_mut() {
        Some(list) => {
            list.extend(diags.iter().map(|d| Collected {
                json: d.to_json(sources),
                rendered: d.render(sources),
            }));
            true
        }
        None => false,
    })
}

/// Runs `work`, collecting the diagnostics (errors and warnings) it would print on this thread:
/// for front ends that hand them to their users as values (the Python package's exceptions).
pub fn collect_diagnostics<R>(work: impl FnOnce() -> R) -> (R, Vec<Collected>) {
    let outer = COLLECTING.with(|c| c.borrow_mut().replace(Vec::new()));
    let result = work();
    let collected = COLLECTING
        .with(|c| std::mem::replace(&mut *c.borrow_mut(), outer))
        .unwrap_or_default();
    (result, collected)
}

/// Loads a file and its imports; prints what is wrong with them.
pub fn load_program(path: &Path) -> Result<Program, Failure> {
    lmc_core::load_file(path).map_err(report_load_failure)
}

pub fn report_load_failure(f: LoadFailure) -> Failure {
    print_diagnostics(&f.diagnostics, &f.sources);
    match f.io.into_iter().next() {
        Some(m) => Failure::Message(m),
        None => Failure::Reported,
    }
}

/// Builds config overrides from `--config` (a config.json or a directory with one) or a
/// checkpoint directory, and `--set`.
pub fn overrides(args: &ConfigSource, checkpoint_dir: Option<&Path>) -> Result<ConfigOverrides, Failure> {
    let mut set = Vec::new();
    for kv in &args.set {
        let (k, v) = kv
            .split_once('=')
            .ok_or_else(|| Failure::Message(format!("`--set {kv}`: expected KEY=VALUE, e.g. `--set hidden_size=256`")))?;
        set.push((k.trim().to_string(), v.trim().to_string()));
    }
    let mut o = ConfigOverrides {
        set,
        strict: args.strict,
        ..Default::default()
    };
    let config_path = match (&args.config, checkpoint_dir) {
        (Some(p), _) if p.is_dir() => Some(p.join("config.json")),
        (Some(p), _) => Some(p.clone()),
        (None, Some(dir)) if dir.join("config.json").is_file() => Some(dir.join("config.json")),
        _ => None,
    };
    if let Some(path) = config_path {
        let text = std::fs::read_to_string(&path).map_err(|e| Failure::Message(format!("cannot read {}: {e}", path.display())))?;
        o = o
            .with_checkpoint_json(&text)
            .map_err(|e| Failure::Message(format!("{}: {e}", path.display())))?;
    }
    Ok(o)
}

/// Loads the file and checks the selected model or variant; prints diagnostics (and warnings).
pub fn load_model(spec: &str, overrides: &ConfigOverrides) -> Result<lmc_core::ir::Graph, Failure> {
    load_checked(spec, overrides).map(|(_, checked)| checked.graph)
}

/// As [`load_model`], with the config as a checkpoint's config.json states it (what a front end
/// shows as the model's configuration).
pub fn load_configured(
    spec: &str,
    overrides: &ConfigOverrides,
) -> Result<(lmc_core::ir::Graph, serde_json::Map<String, serde_json::Value>), Failure> {
    load_checked(spec, overrides).map(|(_, checked)| (checked.graph, checked.checkpoint_config))
}

/// Loads a model with the inputs it may be left without that `overrides` says are given (all of
/// them when it names none: `labels` among them), and derives its backward pass: the loss and
/// the gradient of every parameter (`lmc_core::grad`). What has no backward is a diagnostic at
/// its place in the model file.
pub fn load_grad_model(spec: &str, overrides: &ConfigOverrides) -> Result<lmc_core::ir::Graph, Failure> {
    load_training_model(spec, overrides).map(|t| t.grad)
}

/// What training compiles: the backward pass, the forward with its loss (for evaluation), and
/// the config as a checkpoint's config.json states it.
pub struct TrainingModel {
    pub grad: lmc_core::ir::Graph,
    pub forward: lmc_core::ir::Graph,
    pub checkpoint_config: serde_json::Map<String, serde_json::Value>,
}

/// As [`load_grad_model`], keeping the forward and the config.
pub fn load_training_model(spec: &str, overrides: &ConfigOverrides) -> Result<TrainingModel, Failure> {
    let mut overrides = overrides.clone();
    if overrides.given == lmc_core::Given::None {
        overrides.given = lmc_core::Given::All;
    }
    let (program, checked) = load_checked(spec, &overrides)?;
    let grad = lmc_core::grad::derive_grad(&checked.graph, "loss").map_err(|e| {
        let message = format!("cannot differentiate {}: {}", checked.graph.model, e.message);
        let Some(loc) = e.loc else {
            let help = if e.help.is_empty() {
                String::new()
            } else {
                format!("\nhelp: {}", e.help)
            };
            return Failure::Message(format!("{message}{help}"));
        };
        let offset = program.sources.try_get(loc.file).map_or(0, |s| s.offset(loc.line, loc.col));
        let span = lmc_grammar::Span::new(loc.file, offset, offset + 1);
        let mut d = Diagnostic::error("E0400", message, span, "no backward for this");
        if !e.help.is_empty() {
            d = d.with_help(e.help);
        }
        print_diagnostics(&[d], &program.sources);
        Failure::Reported
    })?;
    // The forward that evaluates never drops: where the training step does, it is checked
    // again without.
    let forward = if overrides.training && checked.graph.inputs.iter().any(|i| i.name == lmc_core::DROPOUT_SEED) {
        let evaluating = ConfigOverrides {
            training: false,
            ..overrides.clone()
        };
        // Its warnings were said by the first check.
        match lmc_core::check_model(&program, split_model_ref(spec).1.as_deref(), &evaluating) {
            Ok(checked) => checked.graph,
            Err(CheckError::Diagnostics(d)) => {
                print_diagnostics(&d, &program.sources);
                return Err(Failure::Reported);
            }
            Err(CheckError::Selection(m)) => return Err(Failure::Message(m)),
        }
    } else {
        checked.graph
    };
    Ok(TrainingModel {
        grad,
        forward,
        checkpoint_config: checked.checkpoint_config,
    })
}

fn load_checked(spec: &str, overrides: &ConfigOverrides) -> Result<(Program, lmc_core::Checked), Failure> {
    let (path, name) = split_model_ref(spec);
    let program = load_program(&path)?;
    match lmc_core::check_model(&program, name.as_deref(), overrides) {
        Ok(checked) => {
            print_diagnostics(&checked.warnings, &program.sources);
            Ok((program, checked))
        }
        Err(CheckError::Diagnostics(d)) => {
            print_diagnostics(&d, &program.sources);
            Err(Failure::Reported)
        }
        Err(CheckError::Selection(m)) => Err(Failure::Message(m)),
    }
}
