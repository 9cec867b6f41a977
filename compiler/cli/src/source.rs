//! Loading a model for a command: `FILE[:MODEL]`, reading and parsing the file, applying config
//! overrides, and checking it. Diagnostics are printed here, once.

use crate::commands::Failure;
use crate::ConfigArgs;
use lmc_core::{CheckError, ConfigOverrides};
use lmc_grammar::{Diagnostic, SourceFile};
use std::path::{Path, PathBuf};

/// `models/bert.model:BertEmbeddings` → (`models/bert.model`, Some(`BertEmbeddings`)).
pub fn split_model_ref(spec: &str) -> (PathBuf, Option<String>) {
    match spec.rsplit_once(':') {
        Some((file, name)) if !name.is_empty() && !name.contains('/') && !file.is_empty() => (PathBuf::from(file), Some(name.to_string())),
        _ => (PathBuf::from(spec), None),
    }
}

/// Reads a source file; a missing or non-UTF-8 file is an error naming it.
pub fn read_source(path: &Path) -> Result<SourceFile, Failure> {
    let bytes = std::fs::read(path).map_err(|e| Failure::Message(format!("cannot read {}: {e}", path.display())))?;
    let text = String::from_utf8(bytes).map_err(|e| {
        let offset = e.utf8_error().valid_up_to();
        Failure::Message(format!("{}: not valid UTF-8 (first bad byte at offset {offset})", path.display()))
    })?;
    Ok(SourceFile::new(path.display().to_string(), text))
}

pub fn print_diagnostics(diags: &[Diagnostic], source: &SourceFile) {
    for d in diags {
        eprint!("{}", d.render(source));
        eprintln!();
    }
}

/// Builds config overrides from `--config` (a config.json or a directory with one) or a
/// checkpoint directory, and `--set`.
pub fn overrides(args: &ConfigArgs, checkpoint_dir: Option<&Path>) -> Result<ConfigOverrides, Failure> {
    let mut set = Vec::new();
    for kv in &args.set {
        let (k, v) = kv
            .split_once('=')
            .ok_or_else(|| Failure::Message(format!("`--set {kv}`: expected KEY=VALUE, e.g. `--set hidden_size=256`")))?;
        set.push((k.trim().to_string(), v.trim().to_string()));
    }
    let mut o = ConfigOverrides { set, ..Default::default() };
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

/// Parses the file and checks the selected model; prints diagnostics (and warnings).
pub fn load_model(spec: &str, overrides: &ConfigOverrides) -> Result<(SourceFile, lmc_core::ir::Graph), Failure> {
    let (path, name) = split_model_ref(spec);
    let source = read_source(&path)?;
    let file = lmc_grammar::parse_file(&source.text).map_err(|d| {
        print_diagnostics(&[d], &source);
        Failure::Reported
    })?;
    match lmc_core::check_model(&file, &source, name.as_deref(), overrides) {
        Ok(checked) => {
            print_diagnostics(&checked.warnings, &source);
            Ok((source, checked.graph))
        }
        Err(CheckError::Diagnostics(d)) => {
            print_diagnostics(&d, &source);
            Err(Failure::Reported)
        }
        Err(CheckError::Selection(m)) => Err(Failure::Message(m)),
    }
}
