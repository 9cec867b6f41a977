//! The text of an experiment file (`lmc ab EXPERIMENT.yaml`, see `experiment.rs` in the
//! command line for its meaning): YAML into typed entries, with unknown keys, malformed YAML and
//! wrong value types reported as a diagnostic at their place in the file.

use lmc_grammar::{Diagnostic, SourceFile, SourceMap, Span};
use serde::Deserialize;
use std::collections::BTreeMap;

/// The file's top level.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExperimentFile {
    pub title: Option<String>,
    pub variants: Vec<VariantEntry>,
    /// `random`, or a checkpoint (a `save_pretrained` directory or a safetensors file).
    #[serde(default = "random")]
    pub weights: String,
    #[serde(default)]
    pub seed: u64,
    /// A `config.json`, or a directory holding one.
    pub config: Option<String>,
    #[serde(default)]
    pub set: BTreeMap<String, serde_yaml::Value>,
    #[serde(default = "one_batch")]
    pub batch: Vec<usize>,
    #[serde(default = "one_length")]
    pub lengths: Vec<usize>,
    #[serde(default = "default_runs")]
    pub runs: usize,
    #[serde(default = "default_warmup")]
    pub warmup: usize,
    /// Threads for the kernels (one per core by default).
    pub threads: Option<usize>,
    /// Time generation instead of the forward: each length is a prompt, then this many new
    /// tokens decoded greedily one at a time.
    pub decode: Option<usize>,
    /// A text to score the variants on (relative to this file); needs a checkpoint with a
    /// `tokenizer.json`, or the `train` section's tokenizer.
    pub eval_text: Option<String>,
    /// Train every variant once per seed, each from its own random initialisation, and compare
    /// them by their loss on `eval_text` (the quality A/B).
    pub seeds: Option<Vec<u64>>,
    pub train: Option<TrainSection>,
}

/// How each variant is trained (`lmc train`'s options, under `TrainingArguments`' names).
#[derive(Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub struct TrainSection {
    /// The training text or batches (relative to the experiment file).
    pub data: String,
    pub tokenizer: Option<String>,
    pub objective: Option<String>,
    pub seq_len: Option<usize>,
    pub max_steps: Option<u64>,
    pub num_train_epochs: Option<f64>,
    pub per_device_train_batch_size: Option<usize>,
    pub learning_rate: Option<f64>,
    pub weight_decay: Option<f64>,
    pub adam_beta1: Option<f64>,
    pub adam_beta2: Option<f64>,
    pub adam_epsilon: Option<f64>,
    pub max_grad_norm: Option<f64>,
    pub lr_scheduler_type: Option<String>,
    pub warmup_steps: Option<u64>,
    pub mlm_probability: Option<f64>,
    pub mean_noise_span_length: Option<f64>,
    #[serde(default)]
    pub no_dropout: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VariantEntry {
    /// `FILE.model:MODEL`, or a bare model or variant name of the file of the entry before.
    pub model: String,
    /// What the report calls it (the model's name by default).
    pub label: Option<String>,
    #[serde(default)]
    pub set: BTreeMap<String, serde_yaml::Value>,
    /// With a `train` section: the variant was trained elsewhere, and this is its checkpoint
    /// for each seed (`{seed}` stands for the seed; relative to the experiment file).
    pub weights: Option<String>,
    /// With a `train` section: the variant is trained from this checkpoint for each seed
    /// (`{seed}` as in `weights`) instead of random weights, as fine-tuning starts from a
    /// pre-trained model: parameters it lacks are initialised at random.
    pub init: Option<String>,
    /// With a `train` section: this variant's own values of some of its settings.
    pub train: Option<VariantTrain>,
}

/// The training settings a variant may set for itself (a budget of steps that makes compute
/// equal, a learning rate of its own).
#[derive(Deserialize, Clone, Default)]
#[serde(deny_unknown_fields)]
pub struct VariantTrain {
    pub max_steps: Option<u64>,
    pub num_train_epochs: Option<f64>,
    pub per_device_train_batch_size: Option<usize>,
    pub learning_rate: Option<f64>,
    pub warmup_steps: Option<u64>,
    pub weight_decay: Option<f64>,
}

fn random() -> String {
    "random".into()
}
fn one_batch() -> Vec<usize> {
    vec![1]
}
fn one_length() -> Vec<usize> {
    vec![128]
}
fn default_runs() -> usize {
    15
}
fn default_warmup() -> usize {
    2
}

/// Parses an experiment file's text, named `name` in diagnostics (added to `sources`).
pub fn parse(sources: &mut SourceMap, name: String, text: &str) -> Result<ExperimentFile, Box<Diagnostic>> {
    serde_yaml::from_str(text).map_err(|e| {
        let id = sources.add(SourceFile::new(name, text.to_string()));
        let mut at = e.location().map_or(0, |l| l.index()).min(text.len());
        while !text.is_char_boundary(at) {
            at -= 1;
        }
        let end = text[at..]
            .find(|c: char| c.is_whitespace() || c == ':')
            .map_or(text.len(), |n| at + n.max(1));
        let end = (end..=text.len()).find(|&i| text.is_char_boundary(i)).unwrap_or(text.len());
        let (message, help) = explain(&e.to_string());
        let mut d = Diagnostic::error("E0700", "bad experiment file", Span::new(id, at, end), message);
        if let Some(h) = help {
            d = d.with_help(h);
        }
        Box::new(d)
    })
}

/// `set` values as the text `--set` would take.
pub fn set_pairs(set: &BTreeMap<String, serde_yaml::Value>) -> Result<Vec<(String, String)>, String> {
    set.iter()
        .map(|(k, v)| {
            let text = match v {
                serde_yaml::Value::Bool(b) => b.to_string(),
                serde_yaml::Value::Number(n) => n.to_string(),
                serde_yaml::Value::String(s) => s.clone(),
                _ => return Err(format!("`set: {k}` must be a number, a boolean or a name")),
            };
            Ok((k.clone(), text))
        })
        .collect()
}

/// serde_yaml's message without its position (the diagnostic shows it), and a hint: the closest
/// known key for an unknown one.
fn explain(message: &str) -> (String, Option<String>) {
    let message = message.split(" at line ").next().unwrap_or(message).to_string();
    let Some(rest) = message.split("unknown field `").nth(1) else {
        return (message, None);
    };
    let unknown = rest.split('`').next().unwrap_or("");
    let expected: Vec<&str> = rest
        .split("expected ")
        .nth(1)
        .map(|list| list.split('`').skip(1).step_by(2).collect())
        .unwrap_or_default();
    let help = match lmc_core::suggest::did_you_mean(unknown, expected.iter().copied()) {
        Some(s) => format!("did you mean `{s}`?"),
        None => format!(
            "the keys here are {}",
            expected.iter().map(|e| format!("`{e}`")).collect::<Vec<_>>().join(", ")
        ),
    };
    (format!("unknown key `{unknown}`"), Some(help))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_keys_get_the_closest_known_one() {
        let (m, help) = explain("variants[0]: unknown field `modle`, expected one of `model`, `label`, `set` at line 3 column 5");
        assert_eq!(m, "unknown key `modle`");
        assert_eq!(help.as_deref(), Some("did you mean `model`?"));
        let (_, help) = explain("unknown field `zzz`, expected one of `title`, `variants` at line 1 column 1");
        assert_eq!(help.as_deref(), Some("the keys here are `title`, `variants`"));
        let (m, help) = explain("invalid type: string \"x\", expected usize at line 2 column 3");
        assert_eq!((m.as_str(), help), ("invalid type: string \"x\", expected usize", None));
    }

    /// Every shipped experiment file parses, and names model files and data that exist.
    #[test]
    fn shipped_experiments_parse() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models/experiments");
        let mut files: Vec<_> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().path()).collect();
        files.sort();
        assert!(files.len() >= 8, "{files:?}");
        for path in files {
            let text = std::fs::read_to_string(&path).unwrap();
            let mut sources = SourceMap::new();
            let file =
                parse(&mut sources, path.display().to_string(), &text).unwrap_or_else(|d| panic!("{}: {}", path.display(), d.message));
            let mut named: Vec<String> = file
                .variants
                .iter()
                .filter_map(|v| {
                    v.model
                        .split_once(':')
                        .map(|(f, _)| f.to_string())
                        .or_else(|| v.model.ends_with(".model").then(|| v.model.clone()))
                })
                .collect();
            named.extend(file.eval_text.clone());
            if let Some(train) = &file.train {
                named.push(train.data.clone());
                named.extend(train.tokenizer.clone());
            }
            for f in named {
                assert!(dir.join(&f).exists(), "{}: {f} does not exist", path.display());
            }
        }
    }

    /// A parse error at a multi-byte character still points at whole characters.
    #[test]
    fn errors_in_multibyte_text_render() {
        let text = "title: ééé\nvariants:\n  - model: a.model\n    labèl: é\n";
        let mut sources = SourceMap::new();
        let Err(d) = parse(&mut sources, "x.yaml".into(), text) else {
            panic!("an unknown key parsed")
        };
        let shown = d.render(&sources);
        assert!(shown.contains("4:5") && shown.contains("did you mean `label`?"), "{shown}");
    }
}
