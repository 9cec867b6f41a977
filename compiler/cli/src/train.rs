//! `lmc train`: the command line's options, named and defaulted as Hugging Face's
//! `TrainingArguments` (in kebab case), handed to `lmc_lab::train`.

use crate::{ConfigArgs, DeviceArg};
use clap::{Args, ValueEnum};
use lmc_lab::train::optim::{AdamW, Schedule};
use lmc_lab::train::{ObjectiveArg, TrainOptions};
use lmc_lab::Failure;
use std::path::PathBuf;

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ScheduleArg {
    Constant,
    ConstantWithWarmup,
    Linear,
    Cosine,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Objective {
    /// Labels are the inputs (a causal LM shifts them itself).
    Causal,
    /// Masked LM: tokens chosen with --mlm-probability become the mask token (80%), a random
    /// token (10%) or stay (10%); only they are labelled.
    Masked,
    /// T5's span corruption: spans covering --mlm-probability of each window become sentinels
    /// (<extra_id_0>, …) in the input; the labels are the sentinels and their spans.
    SpanCorruption,
}

#[derive(Args)]
pub struct TrainArgs {
    /// FILE or FILE:MODEL: a model whose forward returns `loss` when given `labels`.
    model: String,
    /// The checkpoint to start from: a `save_pretrained` directory (its config.json configures
    /// the model) or a safetensors file.
    #[arg(long, required_unless_present_any = ["random_weights", "resume"], conflicts_with = "random_weights")]
    weights: Option<PathBuf>,
    /// Start from random weights drawn with --seed (as transformers initialises); configure the
    /// model with --config and --set.
    #[arg(long)]
    random_weights: bool,
    /// Continue a stopped run: a checkpoint directory, or the output directory of the run (its
    /// latest checkpoint).
    #[arg(long, value_name = "DIR", conflicts_with_all = ["weights", "random_weights"])]
    resume: Option<PathBuf>,
    /// The training data: a text (tokenized with --tokenizer or the checkpoint's tokenizer.json,
    /// cut into --seq-len windows) or a `.safetensors` file of batches, `input_ids [steps, batch,
    /// seq]` and other inputs shaped alike (`labels`, `attention_mask`), read in order.
    #[arg(long, value_name = "FILE")]
    data: PathBuf,
    /// The tokenizer of a text (a Hugging Face tokenizer.json).
    #[arg(long, value_name = "FILE")]
    tokenizer: Option<PathBuf>,
    /// Where checkpoints (`checkpoint-STEP/`) and the trained model go (default: the directory
    /// of --resume).
    #[arg(
        short,
        long = "output-dir",
        visible_alias = "output",
        value_name = "DIR",
        required_unless_present = "resume"
    )]
    output_dir: Option<PathBuf>,
    /// Updates to make in all (default: --num-train-epochs passes over the data).
    #[arg(long)]
    max_steps: Option<u64>,
    #[arg(long, default_value_t = 3.0)]
    num_train_epochs: f64,
    /// Sequences per step (a text's; a file of batches sets its own). Default 8.
    #[arg(long)]
    per_device_train_batch_size: Option<usize>,
    /// Tokens per sequence of a text.
    #[arg(long)]
    seq_len: Option<usize>,
    #[arg(long, default_value_t = 5e-5)]
    learning_rate: f64,
    /// AdamW's decoupled weight decay, applied to every parameter as `torch.optim.AdamW` does.
    #[arg(long, default_value_t = 0.0)]
    weight_decay: f64,
    #[arg(long, default_value_t = 0.9)]
    adam_beta1: f64,
    #[arg(long, default_value_t = 0.999)]
    adam_beta2: f64,
    #[arg(long, default_value_t = 1e-8)]
    adam_epsilon: f64,
    /// Clip the gradients' global L2 norm to this (0 turns clipping off).
    #[arg(long, default_value_t = 1.0)]
    max_grad_norm: f64,
    #[arg(long, value_enum, default_value_t = ScheduleArg::Linear)]
    lr_scheduler_type: ScheduleArg,
    #[arg(long, default_value_t = 0)]
    warmup_steps: u64,
    /// Seeds the random weights, the order a text's windows are drawn in, and masking.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// How labels are made when the data has none.
    #[arg(long, value_enum)]
    objective: Option<Objective>,
    /// The share of tokens masked (--objective masked) or in noise spans (span-corruption).
    #[arg(long, default_value_t = 0.15)]
    mlm_probability: f64,
    /// The mean length of span corruption's spans.
    #[arg(long, default_value_t = 3.0)]
    mean_noise_span_length: f64,
    /// Held-out data (a text or batches, as --data): its mean loss every --eval-steps and at the end.
    #[arg(long, value_name = "FILE")]
    eval_data: Option<PathBuf>,
    #[arg(long)]
    eval_steps: Option<u64>,
    /// Sequences per evaluation batch of a text (fewer when it has fewer windows).
    #[arg(long, default_value_t = 8)]
    per_device_eval_batch_size: usize,
    /// Save a checkpoint every this many steps (0: only at the end).
    #[arg(long, default_value_t = 500)]
    save_steps: u64,
    /// Keep only the latest this many checkpoints.
    #[arg(long)]
    save_total_limit: Option<usize>,
    /// Print a line every this many steps when stderr is not a terminal (a terminal gets a bar).
    #[arg(long, default_value_t = 500)]
    logging_steps: u64,
    /// Write one JSON object per step (step, loss, learning_rate, grad_norm, tokens_per_s, ...)
    /// and per evaluation (eval_loss) to this file.
    #[arg(long, value_name = "FILE")]
    log_json: Option<PathBuf>,
    /// Turn every dropout off (for checks against a reference); without it, dropout is applied
    /// where the model file applies it, with the config's probabilities.
    #[arg(long)]
    no_dropout: bool,
    /// Threads the kernels run on (default: `OMP_NUM_THREADS`, or one per core).
    #[arg(long)]
    threads: Option<usize>,
    /// Where to run the model (the JIT compiles for it).
    #[arg(long, value_enum, default_value_t = DeviceArg::Cpu)]
    device: DeviceArg,
    #[command(flatten)]
    config: ConfigArgs,
}

pub fn train(args: TrainArgs) -> Result<(), Failure> {
    lmc_lab::use_threads(args.threads)?;
    // Without --weights or --resume the weights are random: the flag only says so.
    debug_assert!(args.random_weights || args.weights.is_some() || args.resume.is_some());
    let output = args
        .output_dir
        .or_else(|| args.resume.clone())
        .ok_or_else(|| Failure::Message("give the output directory: --output-dir DIR".into()))?;
    let mut opts = TrainOptions::new(args.model, args.data, output);
    opts.weights = args.weights;
    opts.config = args.config.source();
    opts.tokenizer = args.tokenizer;
    opts.resume = args.resume;
    opts.max_steps = args.max_steps;
    opts.num_train_epochs = args.num_train_epochs;
    opts.per_device_train_batch_size = args.per_device_train_batch_size;
    opts.seq_len = args.seq_len;
    opts.learning_rate = args.learning_rate;
    opts.optimizer = AdamW {
        beta1: args.adam_beta1,
        beta2: args.adam_beta2,
        epsilon: args.adam_epsilon,
        weight_decay: args.weight_decay,
    };
    opts.max_grad_norm = args.max_grad_norm;
    opts.lr_scheduler_type = match args.lr_scheduler_type {
        ScheduleArg::Constant => Schedule::Constant,
        ScheduleArg::ConstantWithWarmup => Schedule::ConstantWithWarmup,
        ScheduleArg::Linear => Schedule::Linear,
        ScheduleArg::Cosine => Schedule::Cosine,
    };
    opts.warmup_steps = args.warmup_steps;
    opts.seed = args.seed;
    opts.objective = args.objective.map(|o| match o {
        Objective::Causal => ObjectiveArg::Causal,
        Objective::Masked => ObjectiveArg::Masked,
        Objective::SpanCorruption => ObjectiveArg::SpanCorruption,
    });
    opts.mlm_probability = args.mlm_probability;
    opts.mean_noise_span_length = args.mean_noise_span_length;
    opts.eval_data = args.eval_data;
    opts.eval_steps = args.eval_steps;
    opts.per_device_eval_batch_size = args.per_device_eval_batch_size;
    opts.save_steps = args.save_steps;
    opts.save_total_limit = args.save_total_limit;
    opts.logging_steps = args.logging_steps;
    opts.log_json = args.log_json;
    opts.no_dropout = args.no_dropout;
    opts.device = args.device.device();
    lmc_lab::train::train(&opts).map(|_| ())
}
