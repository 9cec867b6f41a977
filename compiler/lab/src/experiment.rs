//! `lmc ab EXPERIMENT.yaml`: an A/B experiment written down, so that it can be rerun and
//! shared. The file names the variants (each a model or variant of a `.model` file, with its own
//! `set` overrides if it needs them), the weights, and the workload grid; `lmc ab` then runs it
//! as it runs variants named on the command line.
//!
//! ```yaml
//! title: Position encodings on a small BERT
//! variants:
//!   - model: ../bert.model:BertModel      # paths are relative to this file
//!     label: learned
//!   - model: BertALiBi                    # a bare name: a model or variant of the file above
//! weights: random                         # or a checkpoint directory
//! seed: 1
//! set: { hidden_size: 128 }               # for every variant; a variant's own `set` wins
//! batch: [1]
//! lengths: [128, 512]
//! runs: 10
//! warmup: 2
//! threads: 2                             # one per core by default
//! decode: 32                             # time a prompt of each length and 32 new tokens
//! eval_text: wiki.txt                    # loss and perplexity per length (a checkpoint's tokenizer)
//! ```
//!
//! Unknown keys are errors at their line and column, with the closest known key suggested.

use crate::ab::{VariantSpec, Workload};
use crate::experiment_file::{self, set_pairs};
use crate::source::split_model_ref;
use crate::ConfigSource;
use crate::{Failure, Weights};
use lmc_grammar::SourceMap;
use std::path::{Path, PathBuf};

/// An experiment, ready for `ab::ab` (or, with a `train` section, `quality::run`).
pub struct Experiment {
    pub title: Option<String>,
    pub variants: Vec<VariantSpec>,
    pub weights: Weights,
    pub work: Workload,
    pub quality: Option<crate::quality::Plan>,
    /// The experiment file, for the report.
    pub path: PathBuf,
}

/// Whether a command-line argument names an experiment file rather than a variant.
pub fn is_experiment_file(arg: &str) -> bool {
    let path = Path::new(arg);
    path.extension().is_some_and(|e| e == "yaml" || e == "yml")
}

/// Reads an experiment file. Malformed YAML, unknown keys and wrong value types are printed as
/// diagnostics at their place in the file.
pub fn load(path: &Path) -> Result<Experiment, Failure> {
    let text = std::fs::read_to_string(path).map_err(|e| Failure::Message(format!("cannot read {}: {e}", path.display())))?;
    let mut sources = SourceMap::new();
    let file = experiment_file::parse(&mut sources, path.display().to_string(), &text).map_err(|d| {
        crate::source::print_diagnostics(&[*d], &sources);
        Failure::Reported
    })?;
    let dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
    let relative = |p: &str| -> PathBuf {
        let p = Path::new(p);
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            tidy(&dir.join(p))
        }
    };
    let bad = |m: String| Failure::Message(format!("{}: {m}", path.display()));
    if file.variants.len() < 2 {
        return Err(bad("`variants` needs two or more entries to compare".into()));
    }
    if file.batch.is_empty() || file.lengths.is_empty() || file.batch.contains(&0) || file.lengths.contains(&0) {
        return Err(bad("`batch` and `lengths` need one or more sizes, each at least 1".into()));
    }
    let shared = set_pairs(&file.set).map_err(&bad)?;
    let config = file.config.as_deref().map(relative);
    let mut variants = Vec::new();
    let mut model_file: Option<PathBuf> = None;
    for (k, entry) in file.variants.iter().enumerate() {
        let (file_part, name) = split_model_ref(&entry.model);
        let spec = if file_part.extension().is_some_and(|e| e == "model") {
            let full = relative(&file_part.to_string_lossy());
            model_file = Some(full.clone());
            match name {
                Some(n) => format!("{}:{n}", full.display()),
                None => full.display().to_string(),
            }
        } else {
            match &model_file {
                Some(f) => format!("{}:{}", f.display(), entry.model),
                None => {
                    return Err(bad(format!(
                        "variant {}: `{}` is a bare name, but no `.model` file was named before it (write `model: path/to/file.model:{}`)",
                        k + 1,
                        entry.model,
                        entry.model
                    )))
                }
            }
        };
        let mut set: Vec<String> = shared.iter().map(|(k, v)| format!("{k}={v}")).collect();
        set.extend(set_pairs(&entry.set).map_err(&bad)?.into_iter().map(|(k, v)| format!("{k}={v}")));
        variants.push(VariantSpec {
            spec,
            label: entry.label.clone(),
            config: ConfigSource {
                config: config.clone(),
                set,
                strict: false,
            },
            trained_elsewhere: entry.weights.as_deref().map(|w| relative(w).display().to_string()),
            init: entry.init.as_deref().map(|w| relative(w).display().to_string()),
            train: entry.train.clone().unwrap_or_default(),
        });
    }
    let weights = match file.weights.as_str() {
        "random" => Weights::Random(file.seed),
        p => Weights::Checkpoint(relative(p)),
    };
    // A checkpoint that is not there fails now, not after compiling every variant.
    weights.check(&format!("{}: weights", path.display()))?;
    if file.train.is_none() && file.variants.iter().any(|v| v.weights.is_some()) {
        return Err(bad(
            "a variant's own `weights` (trained elsewhere) are for an experiment with a `train` section; the variants of a speed A/B share the file's `weights`".into(),
        ));
    }
    let quality = match (&file.train, &file.seeds) {
        (None, None) => None,
        (None, Some(_)) => {
            return Err(bad(
                "`seeds` are for training: add a `train` section (how each variant is trained)".into()
            ))
        }
        (Some(train), seeds) => {
            if !matches!(weights, Weights::Random(_)) {
                return Err(bad(
                    "`train` trains every variant from its own random initialisation: leave out `weights`".into(),
                ));
            }
            let eval_text = file
                .eval_text
                .as_deref()
                .map(relative)
                .ok_or_else(|| bad("`train` needs `eval_text`: the held-out text the trained variants are compared on".into()))?;
            let seeds = seeds.clone().unwrap_or_else(|| vec![file.seed]);
            if seeds.is_empty() {
                return Err(bad("`seeds` needs one or more seeds".into()));
            }
            for (k, v) in variants.iter().enumerate() {
                if v.trained_elsewhere.is_some() && v.init.is_some() {
                    return Err(bad(format!(
                        "variant {}: `weights` (trained elsewhere, only scored) and `init` (trained here from a checkpoint) exclude each other",
                        k + 1
                    )));
                }
                let (key, template) = match (&v.trained_elsewhere, &v.init) {
                    (Some(t), _) => ("weights", t),
                    (None, Some(t)) => ("init", t),
                    (None, None) => continue,
                };
                if seeds.len() > 1 && !template.contains("{seed}") {
                    return Err(bad(format!(
                        "variant {}: `{key}: {template}` is one checkpoint for {} seeds; name one per seed with {{seed}} in the path (runs/alibi/seed-{{seed}})",
                        k + 1,
                        seeds.len()
                    )));
                }
                for &seed in &seeds {
                    let dir = PathBuf::from(template.replace("{seed}", &seed.to_string()));
                    if !dir.join("config.json").is_file() {
                        return Err(bad(format!(
                            "variant {}: `{key}`: {} is not a checkpoint directory (no config.json){}",
                            k + 1,
                            dir.display(),
                            if key == "init" {
                                "; train the experiment that makes it first"
                            } else {
                                ""
                            }
                        )));
                    }
                }
            }
            Some(crate::quality::Plan::new(train, seeds, eval_text, &relative).map_err(&bad)?)
        }
    };
    Ok(Experiment {
        title: file.title,
        variants,
        weights,
        work: Workload {
            batches: file.batch,
            lengths: file.lengths,
            runs: file.runs,
            warmup: file.warmup,
            threads: file.threads,
            decode: file.decode,
            eval_text: file.eval_text.as_deref().map(relative),
            // The command line's `--device`: where to run is the machine's business, not the
            // experiment's.
            device: lmc_codegen::Device::Cpu,
        },
        quality,
        path: path.to_path_buf(),
    })
}

/// `a/b/../c` as `a/c` (lexically: the report shows paths as a person would write them).
fn tidy(path: &Path) -> PathBuf {
    use std::path::Component;
    let mut out: Vec<Component> = Vec::new();
    for c in path.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir if matches!(out.last(), Some(Component::Normal(_))) => {
                out.pop();
            }
            other => out.push(other),
        }
    }
    out.iter().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_tidied_lexically() {
        assert_eq!(
            tidy(Path::new("models/experiments/../bert.model")),
            PathBuf::from("models/bert.model")
        );
        assert_eq!(tidy(Path::new("./x/../../y")), PathBuf::from("../y"));
    }
}
