//! `lmc ab A B [C ...]`: compares architectural variants side by side. Each variant is checked
//! and compiled once; then, for every cell of a batch × length grid, all variants run on the same
//! inputs in interleaved rounds (A B C, B C A, ...), so that drift of the machine affects each
//! alike. The report gives, per variant, parameters, FLOPs per token (from the IR), compile time
//! and latency percentiles; per other variant, its latency ratio to the first with a bootstrap
//! interval and a verdict, and how far its outputs are from the first's.

use crate::source::{load_model, overrides, split_model_ref};
use crate::stats::{divergence, paired_ratio, quantile, verdict, Ratio, Rng};
use crate::units::{fmt_bytes, fmt_count, fmt_ms};
use crate::ConfigSource;
use crate::{Failure, Weights};
use lmc_abi::{DType, Dim};
use lmc_core::ir::Graph;
use lmc_runtime::{HostTensor, LoadedModel};
use serde_json::json;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// What to run and how often.
pub struct Workload {
    pub batches: Vec<usize>,
    pub lengths: Vec<usize>,
    pub runs: usize,
    pub warmup: usize,
    /// Threads for the kernels; libomp's default (one per core) when `None`.
    pub threads: Option<usize>,
    /// Time generation instead of the forward: a prompt of each length, then this many new
    /// tokens decoded greedily with the derived decode step.
    pub decode: Option<usize>,
    /// A text to score every variant on, per length (loss and perplexity): `--eval-text`.
    pub eval_text: Option<PathBuf>,
    /// Where the variants run: `--device`.
    pub device: lmc_codegen::Device,
}

/// A variant to compare: `FILE.model:MODEL`, what the report calls it, and its configuration.
pub struct VariantSpec {
    pub spec: String,
    pub label: Option<String>,
    pub config: ConfigSource,
    /// A quality experiment's variant trained elsewhere: its checkpoint for each seed, `{seed}`
    /// standing for the seed (scored, not trained).
    pub trained_elsewhere: Option<String>,
    /// A quality experiment's variant trained from a checkpoint for each seed (`{seed}`
    /// standing for the seed) rather than from random weights.
    pub init: Option<String>,
    /// A quality experiment's variant's own training settings.
    pub train: crate::experiment_file::VariantTrain,
}

/// Where `lmc ab` writes its report besides the terminal.
pub struct Reports {
    pub json: Option<PathBuf>,
    pub csv: Option<PathBuf>,
    pub html: Option<PathBuf>,
}

/// One variant, compiled and bound to its weights (or why it could not be).
struct Variant {
    spec: String,
    label: Option<String>,
    compiled: Result<Compiled, String>,
    /// With a decode workload: its decode step (or why it has none: "cannot decode: ...", or
    /// "failed: ...").
    decoding: Option<Result<DecodeModels, String>>,
    /// Whether it failed: did not compile, or a run failed (`lmc ab` then exits 1).
    failed: bool,
}

/// A variant's derived decode step and, for an encoder-decoder, its context function.
struct DecodeModels {
    step: Compiled,
    context: Option<Compiled>,
}

/// Why a variant has no decode step.
enum NoDecoding {
    /// Its forward cannot be decoded (a bidirectional attention, say): a limit of the
    /// architecture, reported in each cell.
    Underivable(String),
    /// The step was derived but did not compile: a failure of the variant.
    Failed(String),
}

impl DecodeModels {
    /// Derives and compiles the decoding of `forward`, with caches for the longest prompt and
    /// `new` tokens (within a learned position table; longer prompts are skipped).
    fn compile(spec: &str, forward: &Graph, weights: &Weights, work: &Workload, new: usize) -> Result<DecodeModels, NoDecoding> {
        let lengths = &work.lengths;
        let longest = lengths.iter().max().copied().unwrap_or(1) + new - 1;
        let limit = forward.outputs.first().and_then(|(d, _)| match d.ty.dims.get(1) {
            Some(lmc_core::ir::Dim::Symbol(t)) => forward.symbols[t.0 as usize].max.as_ref().map(|b| b.limit as usize),
            _ => None,
        });
        let capacity = limit.map_or(longest, |l| longest.min(l)) as i64;
        let underivable = NoDecoding::Underivable;
        let mut decoding = lmc_core::decode::derive_decode(forward, capacity).map_err(underivable)?;
        if decoding.context.is_some() && capacity != new as i64 {
            // An encoder-decoder's prompt goes to the encoder: its decoder holds the new tokens.
            decoding = lmc_core::decode::derive_decode(forward, new as i64).map_err(underivable)?;
        }
        let step = compile_graph(spec, decoding.step, weights, work.device).map_err(NoDecoding::Failed)?;
        let context = decoding
            .context
            .map(|g| compile_graph(spec, g, weights, work.device))
            .transpose()
            .map_err(NoDecoding::Failed)?;
        Ok(DecodeModels { step, context })
    }

    /// Generates `new` tokens greedily after the prompt in `forward_inputs` (the forward's
    /// inputs of this size); returns the last step's logits.
    fn generate(&self, forward_inputs: &[HostTensor], batch: usize, new: usize) -> Result<Vec<HostTensor>, String> {
        let manifest = self.step.model.manifest();
        let spec = manifest.decode.as_ref().ok_or("not a decode step")?;
        let (context, prompt, length) = match &self.context {
            Some(encoder) => {
                let values = lmc_runtime::generate::context(&encoder.model, forward_inputs.to_vec()).map_err(|e| e.to_string())?;
                // The decoder starts from token 0: what its first token is does not change the
                // work a generation does, which is what is timed here.
                (values, vec![0; batch], 1)
            }
            None => {
                let tokens = forward_inputs
                    .iter()
                    .find(|t| t.name == spec.tokens)
                    .ok_or("the prompt has no tokens")?;
                let ids = tokens
                    .as_i64()
                    .map(<[i64]>::to_vec)
                    .or_else(|| tokens.as_i32().map(|v| v.iter().map(|&x| i64::from(x)).collect()));
                (Vec::new(), ids.ok_or("the tokens are not integers")?, tokens.shape[1])
            }
        };
        let model = &self.step.model;
        let mut decoder = lmc_runtime::Decoder::new(model, batch)
            .map_err(|e| e.to_string())?
            .with_context(context);
        let mut logits = decoder.step(model, &prompt, length).map_err(|e| e.to_string())?;
        for _ in 1..new {
            let next = lmc_runtime::generate::last_argmax(&logits).map_err(|e| e.to_string())?;
            logits = decoder.step(model, &next, 1).map_err(|e| e.to_string())?;
        }
        Ok(vec![logits])
    }

    /// Why a prompt of `length` does not fit the caches, if it does not.
    fn too_long(&self, length: usize, new: usize) -> Option<String> {
        let capacity = self.step.model.manifest().decode.as_ref().map_or(0, |d| d.capacity) as usize;
        let needed = if self.context.is_some() { new } else { length + new - 1 };
        (needed > capacity).then(|| format!("cannot decode past {capacity} positions (its position table)"))
    }
}

impl Variant {
    /// What the tables call it: its label, else the model's name, else the spec.
    fn name(&self) -> String {
        match (&self.label, &self.compiled) {
            (Some(l), _) => l.clone(),
            (None, Ok(c)) => c.graph.model.clone(),
            (None, Err(_)) => self.spec.clone(),
        }
    }
}

/// A model checked, compiled in memory and bound to its weights.
pub struct Compiled {
    pub graph: Graph,
    pub model: LoadedModel,
    pub compile_ms: f64,
}

/// One cell of the grid for one variant.
enum Cell {
    Ran {
        times_ms: Vec<f64>,
        outputs: Vec<HostTensor>,
        /// The most the forward's buffers held at once, over its runs (lmc's allocator counts;
        /// the temporaries of parallel loops' iterations make it vary a little with threads).
        /// `None` on a GPU, whose buffers the driver's pool holds.
        activation_bytes: Option<usize>,
        /// The process's peak resident set during its runs (every variant's weights and code
        /// are loaded: differences between variants are what their runs add). `None` where
        /// Linux's `clear_refs` is not writable.
        peak_rss: Option<u64>,
    },
    /// The variant cannot run at this size (a learned position table is too short, say): a limit
    /// by design, not a failure.
    Skipped(String),
    /// The variant failed: it did not compile, or a run failed.
    Failed(String),
}

/// Turns `A B C` into full `FILE:MODEL` specs: a bare name is a model or variant of the file
/// named before it.
pub fn resolve_specs(specs: &[String]) -> Result<Vec<String>, Failure> {
    let mut file: Option<PathBuf> = None;
    let mut out = Vec::new();
    for s in specs {
        let (path, name) = split_model_ref(s);
        if path.extension().is_some_and(|e| e == "model") {
            file = Some(path);
            out.push(s.clone());
            continue;
        }
        match (&file, name) {
            (Some(f), None) => out.push(format!("{}:{s}", f.display())),
            _ => {
                return Err(Failure::Message(format!(
                    "`{s}`: name a model as FILE.model:MODEL, or after one as a bare variant name (`lmc ab models/bert.model:BertModel BertALiBi`)"
                )))
            }
        }
    }
    Ok(out)
}

pub fn compile_variant(spec: &str, weights: &Weights, config: &ConfigSource, device: lmc_codegen::Device) -> Result<Compiled, String> {
    let checkpoint = match weights {
        Weights::Checkpoint(p) => Some(p.as_path()),
        Weights::Random(_) => None,
    };
    let o = overrides(config, checkpoint.filter(|p| p.is_dir())).map_err(message)?;
    let graph = load_model(spec, &o).map_err(message)?;
    compile_graph(spec, graph, weights, device)
}

/// JIT-compiles a checked (or derived) graph for `device` and binds its weights.
pub fn compile_graph(spec: &str, graph: Graph, weights: &Weights, device: lmc_codegen::Device) -> Result<Compiled, String> {
    let started = Instant::now();
    let module = crate::jit_module(&graph, device)?;
    let compile_ms = started.elapsed().as_secs_f64() * 1e3;
    let source = match weights {
        Weights::Checkpoint(p) => lmc_runtime::WeightsSource::Path(p.clone()),
        Weights::Random(seed) => {
            // Seeded by tensor name: variants that share a parameter get the same values.
            lmc_runtime::WeightsSource::Files(vec![
                lmc_runtime::random_weights(module.manifest(), *seed).map_err(|e| e.to_string())?
            ])
        }
    };
    let model = module.bind_weights(source).map_err(|e| e.to_string())?;
    for w in model.non_finite_parameters() {
        crate::output::warning(&format!("{spec}: {w}"));
    }
    Ok(Compiled { graph, model, compile_ms })
}

fn message(f: Failure) -> String {
    match f {
        Failure::Reported => "it does not check (diagnostics above)".to_string(),
        Failure::Message(m) => m,
    }
}

/// The size of each of the graph's symbols: a symbol on an input's first axis is the batch,
/// any other the length.
pub fn symbol_sizes(g: &Graph, batch: usize, length: usize) -> Vec<u64> {
    g.symbols
        .iter()
        .map(|s| if s.source.1 == 0 { batch as u64 } else { length as u64 })
        .collect()
}

/// Inputs of one size, the same for every variant: token ids (inputs that index a table)
/// uniform over the table, other integer inputs 1 (a mask that keeps every token), f32 inputs
/// uniform in [-1, 1). Inputs with a default (an attention mask, position ids) are left to it,
/// as a caller of the model leaves them.
pub fn make_inputs(c: &Compiled, batch: usize, length: usize, seed: u64) -> Result<Vec<HostTensor>, String> {
    let manifest = c.model.manifest();
    let mut tensors = Vec::new();
    for (k, spec) in manifest.inputs.iter().enumerate().filter(|(_, s)| s.default.is_none()) {
        let shape: Vec<usize> = spec
            .shape
            .iter()
            .enumerate()
            .map(|(axis, d)| match d {
                Dim::Static(n) => *n as usize,
                Dim::Symbol(_) if axis == 0 => batch,
                Dim::Symbol(_) => length,
            })
            .collect();
        let n: usize = shape.iter().product();
        let mut rng = Rng::new(seed ^ (k as u64 + 1).wrapping_mul(0x9E37_79B9));
        let t = match (spec.dtype, &spec.index_bound) {
            (DType::F32, _) => HostTensor::from_f32(&spec.name, shape, (0..n).map(|_| rng.symmetric()).collect()),
            (dtype, bound) => {
                let values: Vec<i64> = match bound {
                    Some(b) => (0..n).map(|_| rng.below(b.limit.max(1) as u64) as i64).collect(),
                    None => vec![1; n],
                };
                if dtype == DType::I32 {
                    HostTensor::from_i32(&spec.name, shape, values.iter().map(|&v| v as i32).collect())
                } else {
                    HostTensor::from_i64(&spec.name, shape, values)
                }
            }
        };
        tensors.push(t.map_err(|e| e.to_string())?);
    }
    Ok(tensors)
}

/// Why a variant cannot run at `length`, if a symbol it bounds (a learned position table) is
/// shorter.
pub fn length_limit(g: &Graph, length: usize) -> Option<String> {
    g.symbols.iter().filter(|s| s.source.1 != 0).find_map(|s| match &s.max {
        Some(b) if (length as i64) > b.limit => Some(format!("cannot run past {} ({})", b.limit, b.reason)),
        _ => None,
    })
}

/// `lmc ab`: compiles every variant, measures the grid, prints the report and writes the
/// requested files. Ctrl-C stops the measuring; what was measured is still reported.
pub fn ab(title: Option<&str>, specs: &[VariantSpec], weights: &Weights, work: &Workload, reports: &Reports) -> Result<(), Failure> {
    if specs.len() < 2 {
        return Err(Failure::Message("`lmc ab` compares two or more variants".into()));
    }
    if work.runs < 3 {
        return Err(Failure::Message("`--runs` must be at least 3 for an interval".into()));
    }
    if work.batches.is_empty() || work.lengths.is_empty() || work.batches.contains(&0) || work.lengths.contains(&0) {
        return Err(Failure::Message(
            "`--batch` and `--lengths` need one or more sizes, each at least 1".into(),
        ));
    }
    if work.decode == Some(0) {
        return Err(Failure::Message("`decode` must be at least 1 new token".into()));
    }
    let to_stdout = [&reports.json, &reports.csv, &reports.html]
        .iter()
        .filter(|p| p.as_deref().is_some_and(crate::output::is_stdout))
        .count();
    if to_stdout > 1 {
        return Err(Failure::Message(
            "only one of --json, --csv and --html can be `-` (stdout); write the others to files".into(),
        ));
    }
    if to_stdout == 1 {
        // The table goes to stderr, so that stdout is the report alone.
        crate::output::reserve_stdout();
    }
    weights.check("--weights")?;
    let threads = crate::use_threads(work.threads)?;
    crate::require_device(work.device)?;
    let text = match &work.eval_text {
        None => None,
        Some(path) => {
            let checkpoint = match weights {
                Weights::Checkpoint(p) => Some(p.as_path()),
                Weights::Random(_) => None,
            };
            let t = crate::eval::load(path, checkpoint).map_err(Failure::Message)?;
            eprintln!("scoring on {} ({} tokens)", path.display(), t.ids.len());
            Some(t)
        }
    };
    crate::interrupt::arm("stopping after this run (Ctrl-C again to quit now)", "without a report");
    if let Some(t) = title {
        crate::outln!("{t}");
    }
    let mut variants = Vec::new();
    for (k, v) in specs.iter().enumerate() {
        eprintln!("[{}/{}] compiling {}", k + 1, specs.len(), v.spec);
        let compiled = compile_variant(&v.spec, weights, &v.config, work.device);
        if let Err(e) = &compiled {
            eprintln!("  {} is left out: {e}", v.spec);
        }
        let mut failed = compiled.is_err();
        let decoding = match (work.decode, &compiled) {
            (None, _) => None,
            (Some(_), Err(e)) => Some(Err(e.clone())),
            (Some(new), Ok(c)) => match DecodeModels::compile(&v.spec, &c.graph, weights, work, new) {
                Ok(d) => Some(Ok(d)),
                Err(NoDecoding::Underivable(e)) => {
                    eprintln!("  {} cannot decode: {e}", v.spec);
                    Some(Err(format!("cannot decode: {e}")))
                }
                Err(NoDecoding::Failed(e)) => {
                    eprintln!("  {}: its decode step did not compile: {e}", v.spec);
                    failed = true;
                    Some(Err(format!("failed: its decode step did not compile: {e}")))
                }
            },
        };
        variants.push(Variant {
            spec: v.spec.clone(),
            label: v.label.clone(),
            compiled,
            decoding,
            failed,
        });
    }
    let letter = |k: usize| ((b'A' + (k % 26) as u8) as char).to_string();

    // Static facts.
    match work.device {
        lmc_codegen::Device::Cpu => crate::outln!("\nvariants (kernels on {threads} thread{})", if threads == 1 { "" } else { "s" }),
        lmc_codegen::Device::Cuda => crate::outln!("\nvariants (kernels on the GPU)"),
    }
    let mut report_variants = Vec::new();
    for (k, v) in variants.iter().enumerate() {
        match &v.compiled {
            Ok(c) => {
                let p = lmc_core::cost::param_counts(&c.graph);
                // With a decode workload, the decode step (and context function) compiled too.
                let decode_ms = match &v.decoding {
                    Some(Ok(d)) => Some(d.step.compile_ms + d.context.as_ref().map_or(0.0, |c| c.compile_ms)),
                    _ => None,
                };
                crate::outln!(
                    "  {}  {:<44} params {:>9} (embedding {:>9}, other {:>9})  compiled in {}{}",
                    letter(k),
                    describe(v),
                    fmt_count(p.total),
                    fmt_count(p.embedding),
                    fmt_count(p.total - p.embedding),
                    fmt_ms(c.compile_ms),
                    decode_ms.map_or(String::new(), |ms| format!(", its decode step in {}", fmt_ms(ms)))
                );
                report_variants.push(json!({
                    "name": letter(k), "label": v.name(), "spec": v.spec, "params": p.total,
                    "embedding_params": p.embedding, "compile_ms": c.compile_ms, "decode_compile_ms": decode_ms,
                }));
            }
            Err(e) => {
                crate::outln!("  {}  {:<44} not compiled: {e}", letter(k), describe(v));
                report_variants.push(json!({ "name": letter(k), "label": v.name(), "spec": v.spec, "error": e }));
            }
        }
    }

    let mut report_cells = Vec::new();
    let seed = match weights {
        Weights::Random(s) => *s,
        Weights::Checkpoint(_) => 0,
    };
    let sizes: Vec<(usize, usize)> = work
        .batches
        .iter()
        .flat_map(|&b| work.lengths.iter().map(move |&l| (b, l)))
        .collect();
    for (i, &(batch, length)) in sizes.iter().enumerate() {
        if crate::interrupt::interrupted() {
            break;
        }
        let progress = format!("[{}/{}] batch {batch}, length {length}", i + 1, sizes.len());
        let cells = measure(&variants, batch, length, work, seed, &progress);
        for (v, cell) in variants.iter_mut().zip(&cells) {
            v.failed |= matches!(cell, Cell::Failed(_));
        }
        let scores: Option<Vec<Result<crate::eval::Score, String>>> = text.as_ref().map(|t| {
            variants
                .iter()
                .map(|v| match &v.compiled {
                    Err(e) => Err(e.clone()),
                    Ok(c) => match length_limit(&c.graph, length) {
                        Some(why) => Err(why),
                        None => crate::eval::score(&c.model, t, length),
                    },
                })
                .collect()
        });
        let mut cell = print_cell(&variants, &cells, (batch, length), work.decode, &letter);
        if let (Some(scores), Some(t)) = (&scores, &text) {
            print_scores(&variants, scores, t, length, &letter, &mut cell);
        }
        report_cells.push(cell);
    }
    let stopped = crate::interrupt::interrupted();
    if stopped {
        eprintln!(
            "interrupted: reporting the {} of {} sizes measured",
            report_cells.len(),
            sizes.len()
        );
    }
    let report = json!({
        "title": title, "generator": lmc_abi::generator_string(),
        "commit": crate::machine::commit(), "date": crate::machine::date_utc(), "cpu": crate::machine::cpu_model(),
        "eval_text": text.as_ref().map(|t| json!({ "path": t.path.display().to_string(), "tokens": t.ids.len() })),
        "runs": work.runs, "warmup": work.warmup, "threads": threads, "device": work.device.as_str(), "interrupted": stopped,
        "variants": report_variants, "cells": report_cells,
    });
    let write = |path: &Path, text: String| {
        if crate::output::write_report(path, &text)? {
            eprintln!("wrote {}", path.display());
        }
        Ok::<(), Failure>(())
    };
    if let Some(path) = &reports.json {
        write(path, serde_json::to_string_pretty(&report).unwrap_or_default() + "\n")?;
    }
    if let Some(path) = &reports.csv {
        write(path, crate::report::csv(&report))?;
    }
    if let Some(path) = &reports.html {
        write(path, crate::report::html(&report))?;
    }
    // A variant that failed (did not compile, or a run failed) fails the command, after the
    // report; one that cannot run a size by design (past a learned table) does not.
    let failed: Vec<String> = variants
        .iter()
        .enumerate()
        .filter(|(_, v)| v.failed)
        .map(|(k, v)| format!("{} ({})", letter(k), v.spec))
        .collect();
    let failed = (!failed.is_empty()).then(|| format!("{} variant(s) failed: {}", failed.len(), failed.join(", ")));
    match (stopped, failed) {
        (false, None) => Ok(()),
        (false, Some(f)) => Err(Failure::Message(f)),
        (true, None) => Err(Failure::Message("interrupted".into())),
        (true, Some(f)) => Err(Failure::Message(format!("interrupted; {f}"))),
    }
}

/// A variant's line in the table: its spec, and its label when it has one.
fn describe(v: &Variant) -> String {
    match &v.label {
        Some(l) => format!("{l} ({})", v.spec),
        None => v.spec.clone(),
    }
}

/// Runs every variant at one size: warm-ups, then interleaved timed rounds.
fn measure(variants: &[Variant], batch: usize, length: usize, work: &Workload, seed: u64, progress: &str) -> Vec<Cell> {
    use std::io::{IsTerminal, Write};
    let terminal = std::io::stderr().is_terminal();
    let mut cells: Vec<Cell> = Vec::new();
    let mut inputs: Vec<Option<Vec<HostTensor>>> = Vec::new();
    for v in variants {
        let prepared = match (&v.compiled, &v.decoding, work.decode) {
            (Err(_), _, _) => Err("not compiled".to_string()),
            (Ok(_), Some(Err(why)), _) => Err(why.clone()),
            (Ok(c), Some(Ok(d)), Some(new)) => match d.too_long(length, new) {
                Some(why) => Err(why),
                None => make_inputs(c, batch, length, seed).map_err(|e| format!("failed: {e}")),
            },
            (Ok(c), _, _) => match length_limit(&c.graph, length) {
                Some(why) => Err(why),
                None => make_inputs(c, batch, length, seed).map_err(|e| format!("failed: {e}")),
            },
        };
        match prepared {
            Ok(i) => {
                inputs.push(Some(i));
                cells.push(Cell::Ran {
                    times_ms: Vec::new(),
                    outputs: Vec::new(),
                    activation_bytes: None,
                    peak_rss: None,
                });
            }
            Err(why) => {
                inputs.push(None);
                cells.push(if why.starts_with("failed: ") {
                    Cell::Failed(why)
                } else {
                    Cell::Skipped(why)
                });
            }
        }
    }
    let n = variants.len();
    let rounds = work.warmup + work.runs;
    for round in 0..rounds {
        if crate::interrupt::interrupted() {
            // Every variant keeps the same number of rounds, so runs stay paired.
            for cell in &mut cells {
                if let Cell::Ran { times_ms, .. } = cell {
                    times_ms.truncate(round.saturating_sub(work.warmup));
                    if times_ms.is_empty() {
                        *cell = Cell::Skipped("interrupted before any timed run".into());
                    }
                }
            }
            break;
        }
        if terminal {
            eprint!("\r{progress}: round {}/{rounds} {}", round + 1, progress_bar(round, rounds));
            let _ = std::io::stderr().flush();
        }
        for step in 0..n {
            let k = (round + step) % n;
            let (Ok(c), Some(input)) = (&variants[k].compiled, &inputs[k]) else {
                continue;
            };
            if !matches!(cells[k], Cell::Ran { .. }) {
                continue;
            }
            // Variants run one at a time, so the allocator's peak over one run is this one's, and
            // so is the resident set's peak after a reset.
            lmc_abi::buffers::reset_peak_live_bytes();
            let resettable = crate::process::reset_peak_rss();
            let started = Instant::now();
            let result = match (&variants[k].decoding, work.decode) {
                (Some(Ok(d)), Some(new)) => d.generate(input, batch, new),
                _ => c.model.run(input).map_err(|e| e.to_string()),
            };
            let ms = started.elapsed().as_secs_f64() * 1e3;
            let peak = lmc_abi::buffers::peak_live_bytes();
            let rss = crate::process::status_bytes("VmHWM:").filter(|_| resettable);
            match (result, &mut cells[k]) {
                (
                    Ok(out),
                    Cell::Ran {
                        times_ms,
                        outputs,
                        activation_bytes,
                        peak_rss,
                    },
                ) => {
                    if round >= work.warmup {
                        times_ms.push(ms);
                    }
                    *outputs = out;
                    if work.device == lmc_codegen::Device::Cpu {
                        *activation_bytes = Some(activation_bytes.unwrap_or(0).max(peak));
                    }
                    *peak_rss = rss.map(|r| peak_rss.map_or(r, |p| p.max(r)));
                }
                (Err(e), cell) => *cell = Cell::Failed(format!("failed: {e}")),
                (Ok(_), _) => {}
            }
        }
    }
    if terminal {
        eprint!("\r{}\r", " ".repeat(progress.len() + 40));
    }
    cells
}

/// Prints each variant's loss and perplexity on the text at one length, and adds them to the
/// cell's report rows.
fn print_scores(
    variants: &[Variant],
    scores: &[Result<crate::eval::Score, String>],
    text: &crate::eval::EvalText,
    length: usize,
    letter: &dyn Fn(usize) -> String,
    cell: &mut serde_json::Value,
) {
    crate::outln!("  on {} (windows of {length} tokens):", text.path.display());
    for (k, (v, score)) in variants.iter().zip(scores).enumerate() {
        let row = cell["variants"].as_array_mut().and_then(|rows| rows.get_mut(k));
        match score {
            Ok(s) => {
                crate::outln!(
                    "    {}  {:<34} loss {:.4}, perplexity {:.2} ({} window{})",
                    letter(k),
                    v.name(),
                    s.loss,
                    s.perplexity,
                    s.windows,
                    if s.windows == 1 { "" } else { "s" }
                );
                if let Some(r) = row {
                    r["loss"] = json!(s.loss);
                    r["perplexity"] = json!(s.perplexity);
                    r["eval_windows"] = json!(s.windows);
                }
            }
            Err(why) => {
                crate::outln!("    {}  {:<34} no score: {why}", letter(k), v.name());
                if let Some(r) = row {
                    r["eval_skipped"] = json!(why);
                }
            }
        }
    }
}

/// `[=====     ]` for `done` of `total`.
fn progress_bar(done: usize, total: usize) -> String {
    const WIDTH: usize = 20;
    let filled = (done * WIDTH) / total.max(1);
    format!("[{}{}]", "=".repeat(filled), " ".repeat(WIDTH - filled))
}

/// Prints one cell of the grid and returns it for the JSON report.
fn print_cell(
    variants: &[Variant],
    cells: &[Cell],
    (batch, length): (usize, usize),
    decode: Option<usize>,
    letter: &dyn Fn(usize) -> String,
) -> serde_json::Value {
    match decode {
        None => crate::outln!("\nbatch {batch}, length {length}"),
        Some(new) => crate::outln!("\nbatch {batch}, prompt of {length}, then {new} new tokens (times: the whole generation)"),
    }
    crate::outln!(
        "  {:<3}{:<34}{:>13}{:>12}{:>22}{:>14}{:>13}{:>11}",
        "",
        "model",
        "FLOPs/token",
        "median",
        "p10 – p90",
        if decode.is_some() { "new tokens/s" } else { "tokens/s" },
        "activations",
        "peak RSS"
    );
    // Tokens per second: of the forward's positions, or of the new tokens generated.
    let tokens = (batch * decode.unwrap_or(length)) as f64;
    let forward_tokens = (batch * length) as f64;
    let mut rows = Vec::new();
    for (k, (v, cell)) in variants.iter().zip(cells).enumerate() {
        let name = v.name();
        match (cell, &v.compiled) {
            (
                Cell::Ran {
                    times_ms,
                    activation_bytes,
                    peak_rss,
                    ..
                },
                Ok(c),
            ) => {
                let flops = lmc_core::cost::flops(&c.graph, &symbol_sizes(&c.graph, batch, length));
                let (median, p10, p90) = (quantile(times_ms, 0.5), quantile(times_ms, 0.1), quantile(times_ms, 0.9));
                crate::outln!(
                    "  {:<3}{:<34}{:>13}{:>12}{:>22}{:>14.0}{:>13}{:>11}",
                    letter(k),
                    name,
                    fmt_count((flops / forward_tokens) as u64),
                    fmt_ms(median),
                    format!("{} – {}", fmt_ms(p10), fmt_ms(p90)),
                    tokens / (median / 1e3),
                    activation_bytes.map_or("on GPU".to_string(), fmt_bytes),
                    peak_rss.map_or("?".to_string(), |b| fmt_bytes(b as usize))
                );
                rows.push(json!({
                    "name": letter(k), "label": name, "flops_per_token": flops / forward_tokens, "median_ms": median,
                    "p10_ms": p10, "p90_ms": p90, "tokens_per_s": tokens / (median / 1e3), "times_ms": times_ms,
                    "activation_bytes": activation_bytes, "peak_rss_bytes": peak_rss,
                }));
            }
            (Cell::Skipped(why), _) => {
                crate::outln!("  {:<3}{:<34}{why}", letter(k), name);
                rows.push(json!({ "name": letter(k), "label": name, "skipped": why }));
            }
            (Cell::Failed(why), _) | (Cell::Ran { .. }, Err(why)) => {
                crate::outln!("  {:<3}{:<34}{why}", letter(k), name);
                rows.push(json!({ "name": letter(k), "label": name, "skipped": why, "failed": true }));
            }
        }
    }
    // Each other variant against the first that ran.
    let base = cells.iter().position(|c| matches!(c, Cell::Ran { .. }));
    let mut comparisons = Vec::new();
    if let Some(b) = base {
        let Cell::Ran {
            times_ms: base_times,
            outputs: base_out,
            ..
        } = &cells[b]
        else {
            unreachable!()
        };
        let mut rng = Rng::new(0x5EED);
        for (k, cell) in cells.iter().enumerate().skip(b + 1) {
            let Cell::Ran { times_ms, outputs, .. } = cell else { continue };
            let r: Ratio = paired_ratio(base_times, times_ms, &mut rng);
            let mut line = format!("  {} vs {}: {}", letter(k), letter(b), verdict(&letter(k), r));
            let mut diverged = serde_json::Value::Null;
            if let (Some(a), Some(o)) = (base_out.first(), outputs.first()) {
                if a.name == o.name && a.shape == o.shape {
                    if let (Some(x), Some(y)) = (a.as_f32(), o.as_f32()) {
                        let (max, cosine) = divergence(x, y);
                        line.push_str(&format!("; `{}` differs by up to {max:.3e} (cosine {cosine:.4})", a.name));
                        diverged = json!({ "output": a.name, "max_abs_diff": max, "cosine": cosine });
                    }
                }
            }
            crate::outln!("{line}");
            comparisons.push(json!({
                "name": letter(k), "against": letter(b), "ratio": r.estimate, "low": r.low, "high": r.high,
                "verdict": verdict(&letter(k), r), "divergence": diverged,
            }));
        }
    }
    json!({ "batch": batch, "length": length, "decode": decode, "variants": rows, "comparisons": comparisons })
}
