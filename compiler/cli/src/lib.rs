//! `lmc`: the command line. Each subcommand drives the pipeline stages from the other crates;
//! nothing here knows about any particular model. A library, so that another front end (the
//! Python package's `lmc` command and its functions that take a command's options) runs the
//! same commands in its own process; `src/main.rs` is the program.

mod commands;
mod generate;
mod train;

use lmc_lab::{ab, bench, experiment, Failure, Weights};

use clap::{Args, CommandFactory, FromArgMatches, Parser, Subcommand, ValueEnum};
use std::path::PathBuf;

#[derive(Parser)]
#[command(name = "lmc", version, about = "A compiler for language-model architectures")]
struct Cli {
    /// When to colour diagnostics and `error:` lines (`auto`: on a terminal, unless `NO_COLOR`
    /// is set).
    #[arg(
        long,
        global = true,
        value_enum,
        value_name = "WHEN",
        default_value_t = ColorArg::Auto,
        help_heading = "Global options"
    )]
    color: ColorArg,
    #[command(subcommand)]
    command: Command,
}

/// `--color WHEN`.
#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum ColorArg {
    Auto,
    Always,
    Never,
}

impl ColorArg {
    fn choice(self) -> lmc_lab::output::ColorChoice {
        match self {
            ColorArg::Auto => lmc_lab::output::ColorChoice::Auto,
            ColorArg::Always => lmc_lab::output::ColorChoice::Always,
            ColorArg::Never => lmc_lab::output::ColorChoice::Never,
        }
    }
}

/// What `lmc --version` says: `0.1.0 (commit abc1234, LLVM 22.1.8)`; the commit is the one
/// built from (`-dirty` with uncommitted changes, `unknown` outside git), LLVM's version is
/// what the linked LLVM reports.
fn version() -> String {
    format!(
        "{} (commit {}, LLVM {})",
        env!("CARGO_PKG_VERSION"),
        env!("LMC_COMMIT"),
        lmc_codegen::version::llvm_version()
    )
}

/// `--color` as the command line gives it, read before clap parses, so that clap's own help
/// and errors follow it too.
fn color_from_args(args: &[std::ffi::OsString]) -> Option<ColorArg> {
    let mut value = None;
    let mut iter = args.iter().skip(1).map(|a| a.to_string_lossy());
    while let Some(arg) = iter.next() {
        if arg == "--" {
            break;
        }
        let given = match arg.strip_prefix("--color") {
            Some("") => iter.next().map(|v| v.into_owned()),
            Some(rest) => rest.strip_prefix('=').map(str::to_string),
            None => continue,
        };
        value = given.and_then(|v| ColorArg::from_str(&v, false).ok()).or(value);
    }
    value
}

/// Parses a command line; `Err` is clap's error (a usage error, or the text of `--help` and
/// `--version`).
fn parse_args(args: Vec<std::ffi::OsString>) -> Result<Cli, clap::Error> {
    let color = match color_from_args(&args) {
        Some(ColorArg::Always) => clap::ColorChoice::Always,
        Some(ColorArg::Never) => clap::ColorChoice::Never,
        _ => clap::ColorChoice::Auto,
    };
    let version: &'static str = Box::leak(version().into_boxed_str());
    let matches = Cli::command().version(version).color(color).try_get_matches_from(args)?;
    Cli::from_arg_matches(&matches)
}

/// Options that configure a model: a checkpoint's config.json and command-line overrides.
#[derive(clap::Args, Clone, Default)]
pub struct ConfigArgs {
    /// A Hugging Face `config.json`, or a directory holding one; its keys override the config
    /// block's defaults where the names match.
    #[arg(long, value_name = "PATH")]
    pub config: Option<PathBuf>,
    /// Override one config value: `--set hidden_size=256` (repeatable; wins over --config).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<String>,
    /// Make a config.json key that the model computes otherwise (its config's `assume "key" =
    /// value`; `rope_scaling` on a model without it, say) an error rather than a warning.
    #[arg(long)]
    pub strict: bool,
}

impl ConfigArgs {
    /// The configuration these options name, for the library crates.
    pub fn source(&self) -> lmc_lab::ConfigSource {
        lmc_lab::ConfigSource {
            config: self.config.clone(),
            set: self.set.clone(),
            strict: self.strict,
        }
    }
}

/// Where a command takes its weights from: a checkpoint, or seeded random values.
#[derive(Args)]
pub struct WeightsArgs {
    /// A safetensors checkpoint, or a `save_pretrained` directory (config.json +
    /// model.safetensors); the directory's config.json also configures the model.
    #[arg(long, required_unless_present = "random_weights")]
    weights: Option<PathBuf>,
    /// Random weights (as transformers initialises: N(0, 0.02²), norm gains 1, biases 0; seeded
    /// by tensor name) instead of a checkpoint: for variants that have none. Configure the model
    /// with --config and --set.
    #[arg(long, conflicts_with = "weights")]
    random_weights: bool,
    /// The seed of --random-weights (default 0); `lmc generate` also samples with it.
    #[arg(long)]
    seed: Option<u64>,
}

impl WeightsArgs {
    /// The weights these options name. `--seed` seeds random weights; with a checkpoint it would
    /// change nothing, and is refused unless the command has another use for it (`uses_seed`).
    fn resolve(&self, uses_seed: bool) -> Result<Weights, Failure> {
        if self.weights.is_some() && self.seed.is_some() && !uses_seed {
            return Err(Failure::Message(
                "--seed seeds --random-weights; with --weights it changes nothing".into(),
            ));
        }
        Ok(Weights::new(self.weights.clone(), self.seed.unwrap_or(0)))
    }
}

#[derive(Subcommand)]
enum Command {
    /// Parse and check model files; exit 1 if any has an error.
    Check {
        /// Model files, or directories: every `*.model` file under one, in sorted order.
        #[arg(required = true, value_name = "FILE|DIR")]
        files: Vec<PathBuf>,
        /// Diagnostics as text (default) or one JSON object per line.
        #[arg(long, value_enum, default_value_t = MessageFormat::Human)]
        message_format: MessageFormat,
        /// Check each model configured by this `config.json` (or a directory holding one), and
        /// list the keys its config reads, assumes and ignores.
        #[arg(long, value_name = "PATH")]
        config: Option<PathBuf>,
        /// A key the config assumes otherwise is an error rather than a warning.
        #[arg(long)]
        strict: bool,
    },
    /// Rewrite model files in the canonical layout (comments kept).
    Fmt {
        /// Model files, or directories: every `*.model` file under one, in sorted order. `-`
        /// reads a model from stdin and writes it formatted to stdout.
        #[arg(required = true, value_name = "FILE|DIR|-")]
        files: Vec<PathBuf>,
        /// Change nothing: print a diff of what would change, and exit 1 if a file is not
        /// formatted.
        #[arg(long)]
        check: bool,
    },
    /// Print one stage of the pipeline for a model.
    Emit {
        #[arg(long, value_enum)]
        stage: Stage,
        /// FILE or FILE:MODEL.
        model: String,
        /// Shape the kernels for vectors of this many f32 lanes (8: AVX2, 16: AVX-512) instead
        /// of the host's
        #[arg(long, value_parser = clap::value_parser!(i64).range(4..=64))]
        lanes: Option<i64>,
        /// The device the model is compiled for.
        #[arg(long, value_enum, default_value_t = DeviceArg::Cpu)]
        target: DeviceArg,
        /// Print the decode step derived from the forward, with caches for this many positions.
        #[arg(long, value_name = "CAPACITY")]
        decode: Option<i64>,
        /// Print the backward pass derived from the forward: its loss and every parameter's
        /// gradient (the graph `lmc grad` runs).
        #[arg(long, conflicts_with = "decode")]
        grad: bool,
        /// With --grad: the training step as `lmc train` compiles it, with dropout where the
        /// model applies it (seeded by the input `dropout_seed`).
        #[arg(long, requires = "grad")]
        dropout: bool,
        #[command(flatten)]
        config: ConfigArgs,
    },
    /// Compile a model to a shared library and a C header (never containing weights).
    Compile {
        /// FILE or FILE:MODEL.
        model: String,
        /// The library to write, e.g. `libbert.so`; the header is written beside it (`libbert.h`).
        #[arg(short, long)]
        output: PathBuf,
        /// The device the library runs the model on: the host's cores, or an NVIDIA GPU
        /// (sm_90; the library's host code launches the kernels through lmc's runtime).
        #[arg(long, value_enum, default_value_t = DeviceArg::Cpu)]
        target: DeviceArg,
        /// The x86-64 CPU to generate code for: this machine's (`host`), or a level every
        /// machine that loads the library meets (`x86-64-v3` for a cluster of mixed nodes;
        /// `x86-64-v2`, `x86-64-v4`).
        #[arg(long, value_name = "NAME", default_value = "host", value_parser = parse_cpu)]
        target_cpu: lmc_codegen::Cpu,
        /// Compile the decode step derived from the forward, with caches for this many
        /// positions, instead of the forward (see `lmc generate`).
        #[arg(long, value_name = "CAPACITY")]
        decode: Option<i64>,
        #[command(flatten)]
        config: ConfigArgs,
    },
    /// Compile a model in memory (JIT) and run it on inputs from a safetensors file.
    Run {
        /// FILE or FILE:MODEL.
        model: String,
        #[command(flatten)]
        weights: WeightsArgs,
        /// Inputs, as a safetensors file whose tensor names are the model's input names.
        #[arg(long)]
        inputs: PathBuf,
        /// Where to write the outputs (safetensors, named as the model's outputs).
        #[arg(short, long)]
        output: PathBuf,
        /// Run this library from `lmc compile` instead of compiling MODEL in memory.
        #[arg(long, value_name = "LIB.so")]
        library: Option<PathBuf>,
        /// Where to run the model (the JIT compiles for it).
        #[arg(long, value_enum, default_value_t = DeviceArg::Cpu)]
        device: DeviceArg,
        #[command(flatten)]
        config: ConfigArgs,
    },
    /// The loss and the gradient of every parameter: derives the backward pass from the
    /// forward, compiles it in memory and runs it on a batch with `labels`; writes `loss` and
    /// one gradient per checkpoint tensor, named as in the checkpoint.
    Grad {
        /// FILE or FILE:MODEL.
        model: String,
        #[command(flatten)]
        weights: WeightsArgs,
        /// The batch, as a safetensors file named as the model's inputs, `labels` included.
        #[arg(long)]
        inputs: PathBuf,
        /// Where to write `loss` and the gradients (safetensors).
        #[arg(short, long)]
        output: PathBuf,
        #[command(flatten)]
        config: ConfigArgs,
    },
    /// Trains a model: derives its backward pass, runs it on one batch per step and updates the
    /// weights with AdamW (options as transformers' TrainingArguments); saves checkpoints that
    /// transformers loads and that --resume continues.
    Train(train::TrainArgs),
    /// Greedy decoding: derives the model's decode step from its forward (caches for the prompt
    /// and the new tokens), runs the prompt, then one token per step; prints the new tokens, one
    /// line per sequence.
    Generate {
        /// FILE or FILE:MODEL.
        model: String,
        #[command(flatten)]
        weights: WeightsArgs,
        /// The prompt as text, tokenized with --tokenizer or the checkpoint's tokenizer.json;
        /// the output is then text too. Repeat it for a batch: shorter prompts are left-padded.
        #[arg(long, conflicts_with_all = ["input_ids", "inputs"])]
        prompt: Vec<String>,
        /// A Hugging Face tokenizer.json for --prompt (default: the checkpoint's).
        #[arg(long, value_name = "FILE")]
        tokenizer: Option<PathBuf>,
        /// The prompt's token ids: `--input-ids 5,17,42`.
        #[arg(long, value_delimiter = ',', conflicts_with = "inputs")]
        input_ids: Option<Vec<i64>>,
        /// A batch of prompts: a safetensors file with the tokens input (`input_ids`), [batch,
        /// length], and optionally their `attention_mask` (left padding: zeros, then ones).
        #[arg(long)]
        inputs: Option<PathBuf>,
        #[arg(long)]
        max_new_tokens: usize,
        /// Stop a sequence at this token (it is padded while others go on); default: the
        /// checkpoint's `eos_token_id` (generation_config.json, else config.json), as
        /// transformers reads it.
        #[arg(long)]
        eos_token_id: Option<i64>,
        /// Draw each token as transformers' `do_sample=True` does (temperature, then top-k, then
        /// top-p; seeded by --seed); default: as the checkpoint's generation_config.json says.
        #[arg(long, conflicts_with = "greedy")]
        do_sample: bool,
        /// The argmax at every step, whatever generation_config.json says.
        #[arg(long)]
        greedy: bool,
        /// Sampling's temperature (default: generation_config.json's, else 1).
        #[arg(long)]
        temperature: Option<f32>,
        /// Keep the k most likely tokens when sampling; 0 keeps all (default: generation_config.json's, else 50).
        #[arg(long)]
        top_k: Option<usize>,
        /// Keep the most likely tokens up to this much probability when sampling (default:
        /// generation_config.json's, else 1: all).
        #[arg(long)]
        top_p: Option<f32>,
        /// An encoder-decoder's first decoder token (the prompt goes to the encoder); default:
        /// the checkpoint's `decoder_start_token_id`.
        #[arg(long)]
        decoder_start_token_id: Option<i64>,
        /// Threads the kernels run on (default: `OMP_NUM_THREADS`, or one per core).
        #[arg(long)]
        threads: Option<usize>,
        /// Where to run (the JIT compiles for it): `cuda` for an NVIDIA GPU.
        #[arg(long, value_enum, default_value_t = DeviceArg::Cpu)]
        device: DeviceArg,
        /// Write the sequences (each prompt followed by its new tokens, as Hugging Face's
        /// `generate` returns them) to this safetensors file as `sequences` instead of printing.
        #[arg(short, long)]
        output: Option<PathBuf>,
        /// Also write the timings as JSON (`prefill_ms`, `decode_tokens_per_s`, ...); `-` writes
        /// it to stdout (the tokens go into it, and what is printed goes to stderr).
        #[arg(long, value_name = "PATH")]
        json: Option<PathBuf>,
        #[command(flatten)]
        config: ConfigArgs,
    },
    /// Time one model: latency, GFLOP/s, compile time, peak memory.
    Bench {
        /// FILE or FILE:MODEL.
        model: String,
        /// A `save_pretrained` directory or safetensors file; seeded random weights without it.
        #[arg(long)]
        weights: Option<PathBuf>,
        /// Seeded random weights (the default without --weights; says so explicitly).
        #[arg(long, conflicts_with = "weights")]
        random_weights: bool,
        /// The seed of the random weights (when no --weights).
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// The batch size (one: `lmc ab` compares several).
        #[arg(long, value_name = "B", value_delimiter = ',', default_value = "1")]
        batch: Vec<usize>,
        /// The sequence length (one: `lmc ab` sweeps several). `--seq` is an old name for it.
        #[arg(long, alias = "seq", value_name = "T", value_delimiter = ',', default_value = "128")]
        lengths: Vec<usize>,
        /// Threads the kernels run on (default: `OMP_NUM_THREADS`, or one per core).
        #[arg(long)]
        threads: Option<usize>,
        /// Where to run (the JIT compiles for it): `cuda` for an NVIDIA GPU.
        #[arg(long, value_enum, default_value_t = DeviceArg::Cpu)]
        device: DeviceArg,
        /// Timed runs.
        #[arg(long, default_value_t = 10)]
        runs: usize,
        /// Untimed runs before them.
        #[arg(long, default_value_t = 2)]
        warmup: usize,
        /// Also write the numbers as JSON (`median_ms`, `gflop_per_s`, ...); `-` writes it to
        /// stdout (and the table to stderr).
        #[arg(long, value_name = "PATH")]
        json: Option<PathBuf>,
        #[command(flatten)]
        config: ConfigArgs,
    },
    /// Compare variants side by side: parameters, FLOPs, compile time, latency with confidence
    /// intervals from interleaved runs, and how far their outputs drift from the first's.
    ///
    /// Exits 1 when a variant fails (it does not compile, or a run fails), after printing and
    /// writing the report; a size a variant cannot run by design (past a learned position
    /// table, a model that cannot decode) is reported in the table, not failed.
    Ab {
        /// Two or more of FILE:MODEL; after one, a bare name is a model or variant of that file
        /// (`models/bert.model:BertModel BertALiBi`). Or one experiment file (`.yaml`), which
        /// names the variants, weights and workload itself (see models/experiments/). Or
        /// `merge [EXPERIMENT.yaml] PART...`: the --out directories of a sweep's parts (--shard),
        /// gathered into --out (default: the first part) and reported.
        #[arg(required = true, num_args = 1..)]
        variants: Vec<String>,
        /// A safetensors checkpoint, or a `save_pretrained` directory, which every variant reads.
        #[arg(long, conflicts_with = "random_weights")]
        weights: Option<PathBuf>,
        /// Random weights, seeded by tensor name, so the variants share the values of the
        /// parameters they share.
        #[arg(long)]
        random_weights: bool,
        /// The seed of --random-weights.
        #[arg(long, default_value_t = 0, requires = "random_weights")]
        seed: u64,
        /// Batch sizes to measure [default: 1; with an experiment file, replaces its `batch`].
        #[arg(long, value_name = "B,...", value_delimiter = ',')]
        batch: Option<Vec<usize>>,
        /// Sequence lengths to measure [default: 128; replaces an experiment file's `lengths`].
        #[arg(long, value_name = "T,...", value_delimiter = ',')]
        lengths: Option<Vec<usize>>,
        /// Timed rounds per cell, each running every variant once in rotating order [default:
        /// 15; replaces an experiment file's `runs`].
        #[arg(long)]
        runs: Option<usize>,
        /// Untimed rounds before them [default: 2; replaces an experiment file's `warmup`].
        #[arg(long)]
        warmup: Option<usize>,
        /// Threads the kernels run on [default: `OMP_NUM_THREADS`, or one per core; replaces an
        /// experiment file's `threads`].
        #[arg(long)]
        threads: Option<usize>,
        /// Time generation instead of the forward: each length is a prompt (an encoder-decoder's
        /// encoder input), then N new tokens decoded greedily one at a time by the derived
        /// decode step [replaces an experiment file's `decode`].
        #[arg(long, value_name = "N")]
        decode: Option<usize>,
        /// Where the variants run (the JIT compiles for it): `cuda` for an NVIDIA GPU [applies to
        /// an experiment file too].
        #[arg(long, value_enum, default_value_t = DeviceArg::Cpu)]
        device: DeviceArg,
        /// Score every variant on this text at each length: loss and perplexity of next-token
        /// prediction, tokenized with the checkpoint's `tokenizer.json` (needs --weights DIR)
        /// [replaces an experiment file's `eval_text`].
        #[arg(long, value_name = "FILE")]
        eval_text: Option<PathBuf>,
        /// Also write the report as JSON; `-` writes it to stdout (and the tables to stderr).
        #[arg(long, value_name = "PATH")]
        json: Option<PathBuf>,
        /// Also write one row per variant and size as CSV (`-`: to stdout).
        #[arg(long, value_name = "PATH")]
        csv: Option<PathBuf>,
        /// Also write a self-contained HTML report with charts (`-`: to stdout).
        #[arg(long, value_name = "PATH")]
        html: Option<PathBuf>,
        /// An experiment with a `train` section: where the training runs go (`runs/LABEL/seed-S/`;
        /// a finished run is reused, an interrupted one resumed). Default: `out/` and the
        /// experiment file's name.
        #[arg(long, value_name = "DIR")]
        out: Option<PathBuf>,
        /// An experiment with a `train` section: train only the runs whose index is I modulo N
        /// (an array job's task; `--shard N` reads I from SLURM_ARRAY_TASK_ID or
        /// JOB_COMPLETION_INDEX); a last call without it, or `lmc ab merge`, reports.
        #[arg(long, value_name = "I/N | N")]
        shard: Option<String>,
        #[command(flatten)]
        config: ConfigArgs,
    },
}

#[derive(Clone, Copy, ValueEnum)]
pub enum Stage {
    /// The syntax tree.
    Ast,
    /// The checked, typed IR.
    Ir,
    /// The MLIR module as emitted, before any pass.
    Mlir,
    /// The MLIR module after bufferization: where memory is allocated, copied and freed.
    Buffers,
    /// The GPU lowering's loop nests after fusion, before they become kernels: one
    /// `scf.parallel` per kernel (`--target cuda` only).
    Loops,
    /// The LLVM module with the ABI glue, before LLVM's optimizer.
    Llvm,
    /// The PTX of every GPU kernel (`--target cuda` only).
    Ptx,
    /// The manifest the library exports.
    Manifest,
}

/// A device to compile for or run on.
#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum DeviceArg {
    /// The host's cores.
    Cpu,
    /// An NVIDIA GPU of compute capability 9.0 (H100, H200).
    Cuda,
}

impl DeviceArg {
    pub fn device(self) -> lmc_codegen::Device {
        match self {
            DeviceArg::Cpu => lmc_codegen::Device::Cpu,
            DeviceArg::Cuda => lmc_codegen::Device::Cuda,
        }
    }
}

/// `--target-cpu NAME`.
fn parse_cpu(name: &str) -> Result<lmc_codegen::Cpu, String> {
    lmc_codegen::Cpu::parse(name)
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum MessageFormat {
    Human,
    Json,
}

/// The stack the compiler runs on. Parsing and checking recurse over expressions whose depth the
/// parser bounds; this leaves a wide margin over those bounds on every platform.
const STACK_BYTES: usize = 256 << 20;

/// The program: runs the command line `args` (the program's name first) and returns its exit
/// status (0 success, 1 failure, 101 a crash). Usage errors, `--help` and `--version` print as
/// clap prints them, and end the process with clap's status.
pub fn main_with(args: Vec<std::ffi::OsString>) -> u8 {
    // Writing to a closed pipe (`lmc emit ... | head`) ends the process quietly, as it does
    // other Unix tools, instead of failing the print with a panic: Rust ignores SIGPIPE.
    // SAFETY: sets the default disposition of one signal; the process is this command's.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    let cli = match parse_args(args) {
        Ok(cli) => cli,
        Err(e) => e.exit(),
    };
    match on_compiler_stack(move || dispatch(cli)) {
        Some(Ok(())) => 0,
        Some(Err(Failure::Reported)) => 1,
        Some(Err(Failure::Message(m))) => {
            lmc_lab::output::error(&m);
            1
        }
        None => {
            lmc_lab::output::error(CRASHED);
            101
        }
    }
}

const CRASHED: &str = "internal compiler error (lmc crashed); please report it with the input that caused it";

/// Runs one command (`args` without the program's name) in this process, for another front end:
/// what went wrong is returned, not printed, with the diagnostics (errors and warnings) the
/// command would have printed. A usage error is a message; a crash is a message that says so.
pub fn execute(args: Vec<std::ffi::OsString>) -> (Result<(), Failure>, Vec<lmc_lab::source::Collected>) {
    let args = std::iter::once(std::ffi::OsString::from("lmc")).chain(args).collect();
    let cli = match parse_args(args) {
        Ok(cli) => cli,
        Err(e) => return (Err(Failure::Message(e.render().to_string().trim_end().to_string())), Vec::new()),
    };
    on_compiler_stack(move || lmc_lab::source::collect_diagnostics(|| dispatch(cli)))
        .unwrap_or_else(|| (Err(Failure::Message(CRASHED.into())), Vec::new()))
}

/// Runs `work` on a thread with the compiler's stack (see [`STACK_BYTES`]); `None` when it
/// panicked. The caller's thread-local state (colours, collected diagnostics) is not carried
/// over: `work` sets up what it needs.
pub fn on_compiler_stack<R: Send + 'static>(work: impl FnOnce() -> R + Send + 'static) -> Option<R> {
    let worker = std::thread::Builder::new().stack_size(STACK_BYTES).spawn(work).ok()?;
    worker.join().ok()
}

/// What `lmc ab`'s command line replaces of an experiment file's workload.
struct WorkloadArgs {
    batch: Option<Vec<usize>>,
    lengths: Option<Vec<usize>>,
    runs: Option<usize>,
    warmup: Option<usize>,
    threads: Option<usize>,
    decode: Option<usize>,
    eval_text: Option<PathBuf>,
    device: lmc_codegen::Device,
}

/// Runs an experiment file: a speed A/B, or with a `train` section, the quality sweep (or the
/// part of it `sweep` names). `sweep_asked`: the command line gave `--out` or `--shard`.
fn run_experiment(
    file: &std::path::Path,
    args: &WorkloadArgs,
    reports: &ab::Reports,
    sweep: lmc_lab::quality::Sweep,
    sweep_asked: bool,
) -> Result<(), Failure> {
    let mut e = experiment::load(file)?;
    // The command line replaces the file's workload where it is given: `--lengths 128` for a
    // quick look at a long sweep.
    let w = &mut e.work;
    w.batches = args.batch.clone().unwrap_or(std::mem::take(&mut w.batches));
    w.lengths = args.lengths.clone().unwrap_or(std::mem::take(&mut w.lengths));
    w.runs = args.runs.unwrap_or(w.runs);
    w.warmup = args.warmup.unwrap_or(w.warmup);
    w.threads = args.threads.or(w.threads);
    w.decode = args.decode.or(w.decode);
    w.eval_text = args.eval_text.clone().or(w.eval_text.take());
    w.device = args.device;
    match &e.quality {
        Some(plan) => lmc_lab::quality::run(e.title.as_deref(), file, &e.variants, plan, &e.work, reports, &sweep),
        None if sweep_asked => Err(Failure::Message(
            "--out and --shard are for an experiment with a `train` section".into(),
        )),
        None => ab::ab(e.title.as_deref(), &e.variants, &e.weights, &e.work, reports),
    }
}

/// `--shard I/N`: 0 ≤ I < N; `--shard N` takes I from the array job's index (Slurm's
/// `SLURM_ARRAY_TASK_ID`, a Kubernetes Indexed Job's `JOB_COMPLETION_INDEX`).
fn parse_shard(text: Option<&str>) -> Result<Option<(usize, usize)>, Failure> {
    let Some(text) = text else { return Ok(None) };
    let (index, count) = match text.split_once('/') {
        Some((i, n)) => (i.trim().to_string(), n),
        None => {
            let from_env = ["SLURM_ARRAY_TASK_ID", "JOB_COMPLETION_INDEX"]
                .iter()
                .find_map(|k| std::env::var(k).ok().map(|v| (*k, v)));
            let Some((key, value)) = from_env else {
                return Err(Failure::Message(format!(
                    "--shard {text} takes this part's index from SLURM_ARRAY_TASK_ID or JOB_COMPLETION_INDEX, and neither is set: give --shard I/{text}"
                )));
            };
            if value.trim().parse::<usize>().is_err() {
                return Err(Failure::Message(format!("--shard {text}: {key} is `{value}`, not an index")));
            }
            (value, text)
        }
    };
    match (index.trim().parse::<usize>(), count.trim().parse::<usize>()) {
        (Ok(i), Ok(n)) if n > 0 && i < n => Ok(Some((i, n))),
        _ => Err(Failure::Message(format!(
            "--shard {text}: expected I/N with 0 <= I < N (e.g. 0/4 for the first of four; part {index} of {count} is not one)"
        ))),
    }
}

fn dispatch(cli: Cli) -> Result<(), Failure> {
    lmc_lab::output::set_color(cli.color.choice());
    match cli.command {
        Command::Check {
            files,
            message_format,
            config,
            strict,
        } => commands::check(
            &files,
            message_format,
            &lmc_lab::ConfigSource {
                config,
                set: Vec::new(),
                strict,
            },
        ),
        Command::Fmt { files, check } => commands::fmt(&files, check),
        Command::Emit {
            stage,
            model,
            lanes,
            target,
            decode,
            grad,
            dropout,
            config,
        } => {
            let derived = match (decode, grad, dropout) {
                (Some(capacity), _, _) => commands::Derived::Decode(capacity),
                (None, true, true) => commands::Derived::TrainingStep,
                (None, true, false) => commands::Derived::Grad,
                (None, false, _) => commands::Derived::Forward,
            };
            commands::emit(stage, &model, lanes, target.device(), derived, &config.source())
        }
        Command::Compile {
            model,
            output,
            target,
            target_cpu,
            decode,
            config,
        } => commands::compile(&model, &output, target.device(), target_cpu, decode, &config.source()),
        Command::Run {
            model,
            weights,
            inputs,
            output,
            library,
            device,
            config,
        } => weights.resolve(false).and_then(|weights| {
            commands::run(
                &model,
                &weights,
                &inputs,
                &output,
                library.as_deref(),
                device.device(),
                &config.source(),
                commands::Derived::Forward,
            )
        }),
        Command::Grad {
            model,
            weights,
            inputs,
            output,
            config,
        } => weights.resolve(false).and_then(|weights| {
            commands::run(
                &model,
                &weights,
                &inputs,
                &output,
                None,
                lmc_codegen::Device::Cpu,
                &config.source(),
                commands::Derived::Grad,
            )
        }),
        Command::Train(args) => train::train(args),
        Command::Generate {
            model,
            weights,
            prompt,
            tokenizer,
            input_ids,
            inputs,
            max_new_tokens,
            eos_token_id,
            do_sample,
            greedy,
            temperature,
            top_k,
            top_p,
            decoder_start_token_id,
            threads,
            device,
            output,
            json,
            config,
        } => weights.resolve(true).and_then(|resolved| {
            let prompt = generate::Prompt {
                texts: &prompt,
                tokenizer: tokenizer.as_deref(),
                ids: input_ids.as_deref(),
                file: inputs.as_deref(),
            };
            let options = generate::Options {
                max_new_tokens,
                eos: eos_token_id,
                decoder_start: decoder_start_token_id,
                sampling: generate::SamplingArgs {
                    do_sample,
                    greedy,
                    temperature,
                    top_k,
                    top_p,
                    seed: weights.seed,
                },
                threads,
                json,
                device: device.device(),
            };
            generate::generate(&model, &resolved, &config.source(), &prompt, &options, output.as_deref())
        }),
        Command::Bench {
            model,
            weights,
            random_weights: _,
            seed,
            batch,
            lengths,
            threads,
            device,
            runs,
            warmup,
            json,
            config,
        } => one_size(&batch, "batch", "batch size")
            .and_then(|batch| Ok((batch, one_size(&lengths, "lengths", "length")?)))
            .and_then(|(batch, length)| {
                let weights = Weights::new(weights, seed);
                let work = bench::Work {
                    batch,
                    length,
                    threads,
                    runs,
                    warmup,
                    device: device.device(),
                };
                bench::bench(&model, &weights, &config.source(), &work, json.as_deref())
            }),
        Command::Ab {
            variants,
            weights,
            random_weights,
            seed,
            batch,
            lengths,
            runs,
            warmup,
            threads,
            decode,
            device,
            eval_text,
            json,
            csv,
            html,
            out,
            shard,
            config,
        } => {
            let reports = ab::Reports { json, csv, html };
            let command_line = WorkloadArgs {
                batch: batch.clone(),
                lengths: lengths.clone(),
                runs,
                warmup,
                threads,
                decode,
                eval_text: eval_text.clone(),
                device: device.device(),
            };
            match variants.as_slice() {
                [command, parts @ ..] if command == "merge" => {
                    if weights.is_some() || random_weights || config.config.is_some() || !config.set.is_empty() || shard.is_some() {
                        Err(Failure::Message(
                            "lmc ab merge takes the parts' --out directories (and --out, the report's options): leave out --weights, --random-weights, --config, --set and --shard".into(),
                        ))
                    } else {
                        // The experiment file first, where it is not where the parts ran it.
                        let (experiment, parts) = match parts {
                            [file, rest @ ..] if experiment::is_experiment_file(file) => (Some(PathBuf::from(file)), rest),
                            _ => (None, parts),
                        };
                        let parts: Vec<PathBuf> = parts.iter().map(PathBuf::from).collect();
                        lmc_lab::sweep::merge(experiment.as_deref(), &parts, out.as_deref()).and_then(|(file, out)| {
                            let sweep = lmc_lab::quality::Sweep {
                                out,
                                shard: None,
                                merged: true,
                            };
                            run_experiment(&file, &command_line, &reports, sweep, true)
                        })
                    }
                }
                [file] if experiment::is_experiment_file(file) => {
                    if weights.is_some() || random_weights || config.config.is_some() || !config.set.is_empty() {
                        Err(Failure::Message(
                            "an experiment file names its weights and configuration itself: leave out --weights, --random-weights, --config and --set".into(),
                        ))
                    } else {
                        let file = std::path::Path::new(file);
                        let sweep_asked = out.is_some() || shard.is_some();
                        parse_shard(shard.as_deref()).and_then(|shard| {
                            let out = out
                                .clone()
                                .unwrap_or_else(|| std::path::Path::new("out").join(file.file_stem().unwrap_or_default()));
                            let sweep = lmc_lab::quality::Sweep { out, shard, merged: false };
                            run_experiment(file, &command_line, &reports, sweep, sweep_asked)
                        })
                    }
                }
                _ if out.is_some() || shard.is_some() => Err(Failure::Message(
                    "--out and --shard are for an experiment file with a `train` section".into(),
                )),
                _ if weights.is_none() && !random_weights => Err(Failure::Message(
                    "give the variants' weights: --weights DIR (a checkpoint) or --random-weights".into(),
                )),
                _ => ab::resolve_specs(&variants).and_then(|specs| {
                    let specs: Vec<ab::VariantSpec> = specs
                        .into_iter()
                        .map(|spec| ab::VariantSpec {
                            spec,
                            label: None,
                            config: config.source(),
                            trained_elsewhere: None,
                            init: None,
                            train: Default::default(),
                        })
                        .collect();
                    let weights = Weights::new(weights, seed);
                    let work = ab::Workload {
                        batches: batch.unwrap_or(vec![1]),
                        lengths: lengths.unwrap_or(vec![128]),
                        runs: runs.unwrap_or(15),
                        warmup: warmup.unwrap_or(2),
                        threads,
                        decode,
                        eval_text,
                        device: device.device(),
                    };
                    ab::ab(None, &specs, &weights, &work, &reports)
                }),
            }
        }
    }
}

/// The one size `lmc bench` times, of `--batch` or `--lengths` (which `lmc ab` takes as lists).
fn one_size(values: &[usize], option: &str, what: &str) -> Result<usize, Failure> {
    match values {
        [v] => Ok(*v),
        _ => {
            let list: Vec<String> = values.iter().map(usize::to_string).collect();
            let list = list.join(",");
            Err(Failure::Message(format!(
                "`--{option} {list}`: lmc bench times one {what}; `lmc ab` sweeps several (`lmc ab FILE:MODEL VARIANT --{option} {list}`)"
            )))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn color(args: &[&str]) -> Option<ColorArg> {
        let args: Vec<std::ffi::OsString> = std::iter::once("lmc").chain(args.iter().copied()).map(Into::into).collect();
        color_from_args(&args)
    }

    #[test]
    fn color_is_read_before_clap_parses() {
        assert!(color(&["check", "x.model"]).is_none());
        assert!(color(&["--color", "never", "check"]) == Some(ColorArg::Never));
        assert!(color(&["check", "--color=always", "x"]) == Some(ColorArg::Always));
        // The last one wins, as it does for clap; a bad value is left to clap to report.
        assert!(color(&["--color=never", "--color", "always"]) == Some(ColorArg::Always));
        assert!(color(&["--color", "sometimes"]).is_none());
        // After `--` it is an argument, not an option.
        assert!(color(&["fmt", "--", "--color=never"]).is_none());
    }

    #[test]
    fn the_command_line_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn bench_times_one_size() {
        assert!(matches!(one_size(&[8], "lengths", "length"), Ok(8)));
        let Err(Failure::Message(m)) = one_size(&[8, 16], "lengths", "length") else {
            panic!("a list was taken")
        };
        assert!(m.contains("`--lengths 8,16`") && m.contains("lmc ab"), "{m}");
    }
}
