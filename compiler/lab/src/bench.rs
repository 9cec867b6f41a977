//! `lmc bench FILE[:MODEL] --batch B --lengths T`: one model's latency (median, p10–p90), GFLOP/s
//! from the FLOPs counted in its IR, compile time, the process's peak resident memory (overall,
//! and while running), and the most memory the forward's buffers held at once (activations). The
//! peers of `bench/peers/` read its JSON (`median_ms`) to print ratios against PyTorch and ONNX
//! Runtime measured in the same run.

use crate::ab::{compile_variant, length_limit, make_inputs, symbol_sizes};
use crate::process::{reset_peak_rss, status_bytes};
use crate::stats::quantile;
use crate::units::{fmt_count, fmt_ms};
use crate::ConfigSource;
use crate::{Failure, Weights};
use serde_json::json;
use std::path::Path;
use std::time::Instant;

/// What `lmc bench` runs and how often.
#[derive(Clone, Copy)]
pub struct Work {
    pub batch: usize,
    /// The sequence length (`--lengths T`: one, where `lmc ab` sweeps several).
    pub length: usize,
    /// Threads for the kernels; libomp's default (one per core) when `None`.
    pub threads: Option<usize>,
    pub runs: usize,
    pub warmup: usize,
    /// Where the model runs: `--device`.
    pub device: lmc_codegen::Device,
}

pub fn bench(spec: &str, weights: &Weights, config: &ConfigSource, work: &Work, json_path: Option<&Path>) -> Result<(), Failure> {
    let Work {
        batch,
        length,
        threads,
        runs,
        warmup,
        device,
    } = *work;
    if runs == 0 {
        return Err(Failure::Message("`--runs` must be at least 1".into()));
    }
    if batch == 0 || length == 0 {
        return Err(Failure::Message("`--batch` and `--lengths` must be at least 1".into()));
    }
    if json_path.is_some_and(crate::output::is_stdout) {
        // The table goes to stderr, so that stdout is the JSON alone.
        crate::output::reserve_stdout();
    }
    weights.check("--weights")?;
    let threads = crate::use_threads(threads)?;
    crate::require_device(device)?;
    let c = compile_variant(spec, weights, config, device).map_err(Failure::Message)?;
    if let Some(why) = length_limit(&c.graph, length) {
        return Err(Failure::Message(format!("{spec} {why}")));
    }
    let seed = match weights {
        Weights::Random(s) => *s,
        Weights::Checkpoint(_) => 0,
    };
    let inputs = make_inputs(&c, batch, length, seed).map_err(Failure::Message)?;
    let rss = status_bytes("VmHWM:");
    // From here on, the peaks are those of running: compiling is over.
    let resettable = reset_peak_rss();
    lmc_abi::buffers::reset_peak_live_bytes();
    let mut times = Vec::with_capacity(runs);
    for round in 0..warmup + runs {
        let started = Instant::now();
        c.model.run(&inputs).map_err(|e| Failure::Message(e.to_string()))?;
        if round >= warmup {
            times.push(started.elapsed().as_secs_f64() * 1e3);
        }
    }
    let flops = lmc_core::cost::flops(&c.graph, &symbol_sizes(&c.graph, batch, length));
    let params = lmc_core::cost::param_counts(&c.graph);
    let (median, p10, p90) = (quantile(&times, 0.5), quantile(&times, 0.1), quantile(&times, 0.9));
    let run_peak = status_bytes("VmHWM:").filter(|_| resettable);
    // On a GPU the buffers are the driver's, which lmc's allocator does not see.
    let activations = device.is_cpu().then(lmc_abi::buffers::peak_live_bytes);
    let rss = rss.max(run_peak);
    match device {
        lmc_codegen::Device::Cpu => crate::outln!(
            "{spec}  batch {batch}, length {length}, {threads} thread{}",
            if threads == 1 { "" } else { "s" }
        ),
        lmc_codegen::Device::Cuda => crate::outln!("{spec}  batch {batch}, length {length}, on the GPU"),
    }
    crate::outln!("  parameters   {}", fmt_count(params.total));
    if let (Some(dtype), Weights::Checkpoint(_)) = (c.model.weights_dtype(), weights) {
        crate::outln!("  weights      {dtype}{}", crate::widened(dtype));
    }
    if let Some(storage) = c.model.weight_storage() {
        crate::outln!("  stored as    {storage}");
    }
    crate::outln!("  compile      {}", fmt_ms(c.compile_ms));
    crate::outln!(
        "  latency      {} median, {} – {} (p10 – p90, {runs} runs)",
        fmt_ms(median),
        fmt_ms(p10),
        fmt_ms(p90)
    );
    crate::outln!(
        "  work         {:.3} GFLOP, {:.2} GFLOP/s",
        flops / 1e9,
        flops / 1e9 / (median / 1e3)
    );
    if let Some(rss) = rss {
        crate::outln!(
            "  peak RSS     {:.1} MiB (the whole process: weights, activations, compiler)",
            rss as f64 / 1048576.0
        );
    }
    if let Some(peak) = run_peak {
        crate::outln!("  running      {:.1} MiB peak RSS (the whole process)", peak as f64 / 1048576.0);
    }
    match activations {
        Some(bytes) => crate::outln!(
            "  activations  {:.1} MiB (the most the forward's buffers held at once)",
            bytes as f64 / 1048576.0
        ),
        None => crate::outln!("  activations  not counted on a GPU (the driver's memory pool holds the buffers)"),
    }
    if let Some(path) = json_path {
        let report = json!({
            "model": spec, "batch": batch, "length": length, "seq": length, "threads": threads, "runs": runs, "warmup": warmup,
            "median_ms": median, "p10_ms": p10, "p90_ms": p90, "times_ms": times,
            "gflop": flops / 1e9, "gflop_per_s": flops / 1e9 / (median / 1e3),
            "compile_ms": c.compile_ms, "params": params.total, "peak_rss_bytes": rss,
            "run_peak_rss_bytes": run_peak, "activation_bytes": activations, "device": device.as_str(),
            "weights_dtype": match weights { Weights::Checkpoint(_) => c.model.weights_dtype(), Weights::Random(_) => None },
            "weight_storage": c.model.weight_storage(),
            "generator": lmc_abi::generator_string(),
            "commit": crate::machine::commit(), "date": crate::machine::date_utc(), "cpu": crate::machine::cpu_model(),
        });
        crate::output::write_report(path, &(serde_json::to_string_pretty(&report).unwrap_or_default() + "\n"))?;
    }
    Ok(())
}
