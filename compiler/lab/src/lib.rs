//! `lmc-lab`: the research tools that drive the pipeline rather than belong to it. `lmc ab`
//! ([`ab`]: variants compiled once and run interleaved, with [`stats`] for their intervals and
//! verdicts, [`eval`] for losses on a text, [`experiment`] files and the [`report`] pages),
//! `lmc bench` ([`bench`]), and what front ends share to load and compile a model ([`source`]).
//! The command line is a thin front over this crate.

pub mod ab;
pub mod bench;
pub mod eval;
pub mod experiment;
pub mod experiment_file;
pub mod interrupt;
pub mod machine;
pub mod output;
pub mod process;
pub mod quality;
pub mod quality_report;
pub mod quality_score;
pub mod report;
pub mod source;
pub mod stats;
pub mod sweep;
pub mod tokenizer;
pub mod train;
pub mod units;

use std::path::PathBuf;

/// How a command failed: diagnostics already printed, or one message still to print.
pub enum Failure {
    Reported,
    Message(String),
}

impl<E: std::fmt::Display> From<E> for Failure {
    fn from(e: E) -> Self {
        Failure::Message(e.to_string())
    }
}

/// What configures a model: a checkpoint's `config.json` (or a directory holding one), and
/// `KEY=VALUE` overrides that win over it.
#[derive(Clone, Debug, Default)]
pub struct ConfigSource {
    pub config: Option<PathBuf>,
    pub set: Vec<String>,
    /// A checkpoint key that the model's config assumes otherwise (`assume "key" = value`) is an
    /// error rather than a warning.
    pub strict: bool,
}

/// Where a command takes its weights from.
pub enum Weights {
    Checkpoint(PathBuf),
    /// `--random-weights --seed N`.
    Random(u64),
}

impl Weights {
    /// A checkpoint when one is given, otherwise random weights with `seed`.
    pub fn new(checkpoint: Option<PathBuf>, seed: u64) -> Weights {
        match checkpoint {
            Some(path) => Weights::Checkpoint(path),
            None => Weights::Random(seed),
        }
    }

    /// Fails at once, before anything is compiled, when a checkpoint path does not exist or is
    /// a directory without a checkpoint in it. `what` names where the path was given
    /// (`--weights`, or an experiment file's `weights`).
    pub fn check(&self, what: &str) -> Result<(), Failure> {
        let Weights::Checkpoint(path) = self else { return Ok(()) };
        let shown = path.display();
        match std::fs::metadata(path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                Err(Failure::Message(format!("{what} {shown}: no such file or directory")))
            }
            Err(e) => Err(Failure::Message(format!("{what} {shown}: cannot read it: {e}"))),
            Ok(m) if m.is_dir() => match lmc_runtime::weight_files(path) {
                Ok(_) => Ok(()),
                Err(e) => {
                    // "weights directory DIR holds no ..." → "--weights DIR: holds no ...".
                    let prefix = format!("weights directory {shown} ");
                    let why = e.message().strip_prefix(&prefix).unwrap_or(e.message());
                    Err(Failure::Message(format!("{what} {shown}: {why}")))
                }
            },
            Ok(_) => Ok(()),
        }
    }
}

/// Fails at once, before anything is compiled, when an input file does not exist.
pub fn check_input_file(what: &str, path: &std::path::Path) -> Result<(), Failure> {
    match std::fs::metadata(path) {
        Ok(m) if m.is_file() => Ok(()),
        Ok(_) => Err(Failure::Message(format!("{what} {}: not a file", path.display()))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            Err(Failure::Message(format!("{what} {}: no such file or directory", path.display())))
        }
        Err(e) => Err(Failure::Message(format!("{what} {}: cannot read it: {e}", path.display()))),
    }
}

/// How a checkpoint's floating-point dtype reaches the kernels, for reports: nothing to say for
/// f32; half precision is widened to f32 when the weights are bound.
pub fn widened(dtype: &str) -> &'static str {
    match dtype {
        "F32" => "",
        _ => ", widened to f32 when bound",
    }
}

/// Applies a thread count (libomp's default, one per core, when `None`) for the kernels the
/// calling thread starts; returns the count in effect.
pub fn use_threads(threads: Option<usize>) -> Result<usize, Failure> {
    match threads {
        Some(0) => return Err(Failure::Message("`--threads` must be at least 1".into())),
        Some(n) => lmc_codegen::llvm::set_threads(n),
        None => {}
    }
    Ok(lmc_codegen::llvm::threads())
}

/// Fails at once, saying what is missing, when `device` is a GPU that this machine does not have
/// (no driver, no GPU): before anything is compiled.
pub fn require_device(device: lmc_codegen::Device) -> Result<(), Failure> {
    match device {
        lmc_codegen::Device::Cpu => Ok(()),
        lmc_codegen::Device::Cuda => lmc_runtime::cuda::cuda()
            .map(|_| ())
            .map_err(|e| Failure::Message(format!("--device cuda: {}", e.message()))),
    }
}

/// JIT-compiles a checked (or derived) graph for `device` into a runtime module.
pub fn jit_module(graph: &lmc_core::ir::Graph, device: lmc_codegen::Device) -> Result<lmc_runtime::Module, String> {
    let target = lmc_codegen::Target::for_device(device);
    let jit = std::sync::Arc::new(lmc_codegen::jit_for(graph, &target).map_err(|e| e.to_string())?);
    let in_jit = jit.clone();
    let lookup = move |name: &str| in_jit.lookup(name);
    // SAFETY: the symbols come from a module lmc just generated for this ABI, and the JIT that
    // holds their code is handed over as the keep-alive.
    unsafe { lmc_runtime::Module::from_symbols(&lookup, Box::new(jit)) }.map_err(|e| e.to_string())
}
