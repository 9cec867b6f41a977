//! `lmc bench FILE[:MODEL] --batch B --seq T`: one model's latency (median, p10–p90), GFLOP/s
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
    pub seq: usize,
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
        seq,
        threads,
        runs,
        warmup,
        device,
    } = *work;
    if runs == 0 {
        return Err(Failure::Message("`--runs` must be at least 1".into()));
    }
    let threads = crate::use_threads(threads)?;
    crate::require_device(device)?;
    let c = compile_variant(spec, weights, config, device).map_err(Failure::Message)?;
    if let Some(why) = length_limit(&c.graph, seq) {
        return Err(Failure::Message(format!("{spec} {why}")));
    }
    let seed = match weights {
        Weights::Random(s) => *s,
        Weights::Checkpoint(_) => 0,
    };
    let inputs = make_inputs(&c, batch, seq, seed).map_err(Failure::Message)?;
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
    let flops = lmc_core::cost::flops(&c.graph, &symbol_sizes(&c.graph, batch, seq));
    let params = lmc_core::cost::param_counts(&c.graph);
    let (median, p10, p90) = (quantile(&times, 0.5), quantile(&times, 0.1), quantile(&times, 0.9));
    let run_peak = status_bytes("VmHWM:").filter(|_| resettable);
    // On a GPU the buffers are the driver's, which lmc's allocator does not see.
    let activations = device.is_cpu().then(lmc_abi::buffers::peak_live_bytes);
    let rss = rss.max(run_peak);
    match device {
        lmc_codegen::Device::Cpu => println!(
            "{spec}  batch {batch}, seq {seq}, {threads} thread{}",
            if threads == 1 { "" } else { "s" }
        ),
        lmc_codegen::Device::Cuda => println!("{spec}  batch {batch}, seq {seq}, on the GPU"),
    }
    println!("  parameters   {}", fmt_count(params.total));
    println!("  compile      {}", fmt_ms(c.compile_ms));
    println!(
        "  latency      {} median, {} – {} (p10 – p90, {runs} runs)",
        fmt_ms(median),
        fmt_ms(p10),
        fmt_ms(p90)
    );
    println!(
        "  work         {:.3} GFLOP, {:.2} GFLOP/s",
        flops / 1e9,
        flops / 1e9 / (median / 1e3)
    );
    if let Some(rss) = rss {
        println!(
            "  peak RSS     {:.1} MiB (the whole process: weights, activations, compiler)",
            rss as f64 / 1048576.0
        );
    }
    if let Some(peak) = run_peak {
        println!("  running      {:.1} MiB peak RSS (the whole process)", peak as f64 / 1048576.0);
    }
    match activations {
        Some(bytes) => println!(
            "  activations  {:.1} MiB (the most the forward's buffers held at once)",
            bytes as f64 / 1048576.0
        ),
        None => println!("  activations  not counted on a GPU (the driver's memory pool holds the buffers)"),
    }
    if let Some(path) = json_path {
        let report = json!({
            "model": spec, "batch": batch, "seq": seq, "threads": threads, "runs": runs, "warmup": warmup,
            "median_ms": median, "p10_ms": p10, "p90_ms": p90, "times_ms": times,
            "gflop": flops / 1e9, "gflop_per_s": flops / 1e9 / (median / 1e3),
            "compile_ms": c.compile_ms, "params": params.total, "peak_rss_bytes": rss,
            "run_peak_rss_bytes": run_peak, "activation_bytes": activations, "device": device.as_str(),
            "generator": lmc_abi::generator_string(),
        });
        std::fs::write(path, serde_json::to_string_pretty(&report).unwrap_or_default() + "\n")
            .map_err(|e| Failure::Message(format!("cannot write {}: {e}", path.display())))?;
    }
    Ok(())
}
