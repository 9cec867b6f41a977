//! `lmc generate FILE[:MODEL] --weights DIR --input-ids 5,17,42 --max-new-tokens N`: greedy
//! decoding with the decode step the compiler derives from the model's forward
//! (`lmc_core::decode`), its caches sized for exactly the prompt and the new tokens.

use crate::ab::compile_graph;
use crate::commands::{use_threads, Failure, Weights};
use crate::source::{load_model, overrides};
use crate::ConfigArgs;
use std::path::Path;
use std::time::Instant;

/// What to generate from.
pub struct Prompt<'a> {
    /// `--input-ids 5,17,42`: one sequence.
    pub ids: Option<&'a [i64]>,
    /// `--inputs FILE`: a safetensors file whose tokens input (`input_ids`) is `[batch, length]`.
    pub file: Option<&'a Path>,
}

pub struct Options {
    pub max_new_tokens: usize,
    pub eos: Option<i64>,
    pub threads: Option<usize>,
}

pub fn generate(
    spec: &str,
    weights: &Weights,
    config: &ConfigArgs,
    prompt: &Prompt<'_>,
    o: &Options,
    output: Option<&Path>,
) -> Result<(), Failure> {
    if o.max_new_tokens == 0 {
        return Err(Failure::Message("`--max-new-tokens` must be at least 1".into()));
    }
    use_threads(o.threads)?;
    let checkpoint = match weights {
        Weights::Checkpoint(p) => Some(p.as_path()).filter(|p| p.is_dir()),
        Weights::Random(_) => None,
    };
    let forward = load_model(spec, &overrides(config, checkpoint)?)?;
    let tokens_name = forward
        .inputs
        .iter()
        .find(|i| i.ty.dtype != lmc_abi::DType::F32 && i.ty.rank() == 2)
        .map_or("input_ids".to_string(), |i| i.name.clone());
    let prompts = read_prompts(prompt, &tokens_name)?;
    let length = prompts[0].len();
    // The last new token is returned, never fed back: the caches need one position less.
    let capacity = (length as u64)
        .checked_add(o.max_new_tokens as u64 - 1)
        .and_then(|c| i64::try_from(c).ok())
        .ok_or_else(|| Failure::Message(format!("`--max-new-tokens {}` is too large", o.max_new_tokens)))?;
    let step = crate::commands::decode_step(forward, Some(capacity))?;
    let compiled = compile_graph(spec, step, weights).map_err(Failure::Message)?;
    eprintln!(
        "compiled the decode step of {} in {:.0} ms (caches for {capacity} positions)",
        compiled.graph.model, compiled.compile_ms
    );
    let started = Instant::now();
    let generated = lmc_runtime::greedy(&compiled.model, &prompts, o.max_new_tokens, o.eos).map_err(|e| Failure::Message(e.to_string()))?;
    let seconds = started.elapsed().as_secs_f64();
    let made: usize = generated.iter().map(Vec::len).sum();
    eprintln!(
        "generated {made} token(s) for {} sequence(s) in {:.0} ms ({:.1} tokens/s, prefill included)",
        prompts.len(),
        seconds * 1e3,
        made as f64 / seconds
    );
    match output {
        None => {
            for row in &generated {
                let ids: Vec<String> = row.iter().map(i64::to_string).collect();
                println!("{}", ids.join(" "));
            }
        }
        Some(path) => {
            // As Hugging Face's `generate` returns them: each prompt followed by its new tokens.
            let width = length + generated[0].len();
            let sequences: Vec<u8> = prompts
                .iter()
                .zip(&generated)
                .flat_map(|(p, g)| p.iter().chain(g))
                .flat_map(|v| v.to_le_bytes())
                .collect();
            let entries = [("sequences", lmc_abi::DType::I64, &[prompts.len(), width][..], &sequences[..])];
            lmc_runtime::write_safetensors(path, &entries)
                .map_err(|e| Failure::Message(format!("cannot write {}: {e}", path.display())))?;
            eprintln!("wrote {}", path.display());
        }
    }
    Ok(())
}

/// The prompts: the `--input-ids` sequence, or the rows of the tokens tensor of `--inputs`.
fn read_prompts(prompt: &Prompt<'_>, tokens_name: &str) -> Result<Vec<Vec<i64>>, Failure> {
    match (prompt.ids, prompt.file) {
        (Some(ids), None) if !ids.is_empty() => Ok(vec![ids.to_vec()]),
        (None, Some(path)) => {
            let file = lmc_runtime::SafeTensorsFile::open(path).map_err(|e| Failure::Message(e.to_string()))?;
            let t = file
                .get(tokens_name)
                .ok_or_else(|| {
                    Failure::Message(format!(
                        "{} has no tensor \"{tokens_name}\" (the prompts, [batch, length])",
                        path.display()
                    ))
                })?
                .to_host()
                .map_err(|e| Failure::Message(e.to_string()))?;
            let values: Vec<i64> = match (t.as_i64(), t.as_i32()) {
                (Some(v), _) => v.to_vec(),
                (None, Some(v)) => v.iter().map(|&x| i64::from(x)).collect(),
                _ => return Err(Failure::Message(format!("\"{tokens_name}\" in {} is not integer", path.display()))),
            };
            match t.shape.as_slice() {
                &[batch, length] if batch > 0 && length > 0 => Ok(values.chunks(length).map(<[i64]>::to_vec).collect()),
                shape => Err(Failure::Message(format!(
                    "\"{tokens_name}\" in {} has shape {shape:?}; the prompts are [batch, length]",
                    path.display()
                ))),
            }
        }
        _ => Err(Failure::Message(
            "give the prompt: --input-ids 5,17,42, or --inputs FILE with a [batch, length] tensor".into(),
        )),
    }
}
