//! `lmc generate FILE[:MODEL] --weights DIR (--prompt TEXT | --input-ids 5,17,42) --max-new-tokens
//! N`: decoding with the decode step the compiler derives from the model's forward
//! (`lmc_core::decode`), its caches sized for exactly the prompt and the new tokens; greedy, or
//! sampled as transformers samples, with the end-of-sequence and padding tokens and the
//! sampling settings of the checkpoint's `generation_config.json` unless the command line says
//! otherwise.

use lmc_lab::ab::compile_graph;
use lmc_lab::source::{load_model, overrides};
use lmc_lab::{require_device, use_threads, ConfigSource, Failure, Weights};
use std::path::Path;

/// What to generate from.
pub struct Prompt<'a> {
    /// `--prompt TEXT`, once per sequence: tokenized (special tokens added as the tokenizer adds
    /// them).
    pub texts: &'a [String],
    /// `--tokenizer FILE`; the checkpoint's `tokenizer.json` by default.
    pub tokenizer: Option<&'a Path>,
    /// `--input-ids 5,17,42`: one sequence.
    pub ids: Option<&'a [i64]>,
    /// `--inputs FILE`: a safetensors file whose tokens input (`input_ids`) is `[batch, length]`,
    /// left-padded where its `attention_mask` says so.
    pub file: Option<&'a Path>,
}

/// How tokens are chosen, as the command line says (the checkpoint's generation_config.json
/// fills in what it leaves out).
pub struct SamplingArgs {
    pub do_sample: bool,
    pub greedy: bool,
    pub temperature: Option<f32>,
    pub top_k: Option<usize>,
    pub top_p: Option<f32>,
    pub seed: Option<u64>,
}

pub struct Options {
    pub max_new_tokens: usize,
    pub eos: Option<i64>,
    pub sampling: SamplingArgs,
    pub threads: Option<usize>,
    /// `--decoder-start-token-id`: an encoder-decoder's first decoder token.
    pub decoder_start: Option<i64>,
    /// `--json PATH`: timings (`prefill_ms`, `decode_tokens_per_s`) for the benchmarks; `-`
    /// writes them to stdout, with the tokens, and prints to stderr what would go to stdout.
    pub json: Option<std::path::PathBuf>,
    /// Where the decode step runs: `--device`.
    pub device: lmc_codegen::Device,
}

pub fn generate(
    spec: &str,
    weights: &Weights,
    config: &ConfigSource,
    prompt: &Prompt<'_>,
    o: &Options,
    output: Option<&Path>,
) -> Result<(), Failure> {
    if o.max_new_tokens == 0 {
        return Err(Failure::Message("`--max-new-tokens` must be at least 1".into()));
    }
    let json_to_stdout = o.json.as_deref().is_some_and(lmc_lab::output::is_stdout);
    if json_to_stdout {
        lmc_lab::output::reserve_stdout();
    }
    // What is missing is said before anything is compiled.
    weights.check("--weights")?;
    if let Some(path) = prompt.file {
        lmc_lab::check_input_file("--inputs", path)?;
    }
    use_threads(o.threads)?;
    require_device(o.device)?;
    let checkpoint = match weights {
        Weights::Checkpoint(p) => Some(p.as_path()).filter(|p| p.is_dir()),
        Weights::Random(_) => None,
    };
    let forward = load_model(spec, &overrides(config, checkpoint)?)?;
    // The sequence axis is the logits' second; integer inputs without it are an encoder's.
    let time = forward.outputs.first().and_then(|(d, _)| d.ty.dims.get(1).copied());
    let is_int = |d: &&lmc_core::ir::TensorDecl| d.ty.dtype != lmc_abi::DType::F32;
    let context_decls: Vec<&lmc_core::ir::TensorDecl> = forward
        .inputs
        .iter()
        .filter(is_int)
        .filter(|d| time.is_none_or(|t| !d.ty.dims.contains(&t)))
        .collect();
    let prompt_name = match context_decls.first() {
        Some(encoder) => encoder.name.clone(),
        None => forward
            .inputs
            .iter()
            .find(|d| is_int(d) && d.ty.rank() == 2)
            .map_or("input_ids".to_string(), |d| d.name.clone()),
    };
    let tokenizer = match prompt.texts {
        [] => None,
        _ => Some(load_tokenizer(prompt.tokenizer, checkpoint)?),
    };
    // The prompts, and the rows as the file pads them (its own padding tokens in the output).
    let (prompts, file_rows) = match &tokenizer {
        Some(t) => {
            let mut prompts = Vec::new();
            for text in prompt.texts {
                let encoding = t
                    .encode(text.as_str(), true)
                    .map_err(|e| Failure::Message(format!("cannot tokenize the prompt: {e}")))?;
                let ids: Vec<i64> = encoding.get_ids().iter().map(|&i| i64::from(i)).collect();
                if ids.is_empty() {
                    return Err(Failure::Message(format!("the prompt {text:?} is empty once tokenized")));
                }
                prompts.push(ids);
            }
            (prompts, None)
        }
        None => read_prompts(prompt, &prompt_name, context_decls.is_empty())?,
    };
    let generation = GenerationConfig::read(checkpoint)?;
    let stop = lmc_runtime::Stop {
        eos: match o.eos {
            Some(t) => vec![t],
            None => generation.eos.clone(),
        },
        pad: generation.pad,
    };
    let mut sampler = sampler(&o.sampling, &generation)?;
    if sampler.is_none() && o.sampling.seed.is_some() && matches!(weights, Weights::Checkpoint(_)) {
        return Err(Failure::Message(
            "--seed seeds sampling (and --random-weights); without either it changes nothing".into(),
        ));
    }
    // An encoder-decoder's prompt (with all-ones masks beside it) goes to its encoder, whose
    // values are computed once below; its decoder starts from its start token.
    let (context, prompts) = if context_decls.is_empty() {
        (Vec::new(), prompts)
    } else {
        let start = decoder_start(o.decoder_start, checkpoint)?;
        let (batch, length) = (prompts.len(), prompts[0].len());
        if prompts.iter().any(|p| p.len() != length) {
            return Err(Failure::Message(
                "an encoder-decoder's prompts go to its encoder unpadded: give prompts of one length".into(),
            ));
        }
        let mut context = Vec::new();
        for (k, d) in context_decls.iter().enumerate() {
            let values = if k == 0 { prompts.concat() } else { vec![1; batch * length] };
            if d.ty.rank() != 2 {
                return Err(Failure::Message(format!(
                    "input `{}` is neither the prompt nor a [batch, length] mask beside it; lmc generate cannot fill it",
                    d.name
                )));
            }
            context.push(
                lmc_runtime::HostTensor::from_i64(d.name.clone(), [batch, length], values).map_err(|e| Failure::Message(e.to_string()))?,
            );
        }
        (context, vec![vec![start]; batch])
    };
    let length = prompts.iter().map(Vec::len).max().unwrap_or(0);
    // The last new token is returned, never fed back: the caches need one position less.
    let capacity = (length as u64)
        .checked_add(o.max_new_tokens as u64 - 1)
        .and_then(|c| i64::try_from(c).ok())
        .ok_or_else(|| Failure::Message(format!("`--max-new-tokens {}` is too large", o.max_new_tokens)))?;
    let model_name = forward.model.clone();
    let decoding = lmc_core::decode::derive_decode(&forward, capacity)
        .map_err(|e| Failure::Message(format!("cannot derive decoding for {model_name}: {e}")))?;
    let compiled = compile_graph(spec, decoding.step, weights, o.device).map_err(Failure::Message)?;
    eprintln!(
        "compiled the decode step of {model_name} in {:.0} ms (caches for {capacity} positions)",
        compiled.compile_ms
    );
    if let Some(storage) = compiled.model.weight_storage() {
        eprintln!("weights stored as {storage}");
    }
    // An encoder-decoder's context (its encoder's keys and values) is computed once.
    let context = match decoding.context {
        None => context,
        Some(graph) => {
            let encoder = compile_graph(spec, graph, weights, o.device).map_err(Failure::Message)?;
            eprintln!("compiled its context function in {:.0} ms", encoder.compile_ms);
            lmc_runtime::generate::context(&encoder.model, context).map_err(|e| Failure::Message(e.to_string()))?
        }
    };
    let g = lmc_runtime::generate(&compiled.model, &prompts, context, o.max_new_tokens, &stop, sampler.as_mut())
        .map_err(|e| Failure::Message(e.to_string()))?;
    let ms = |d: std::time::Duration| d.as_secs_f64() * 1e3;
    // Tokens per second of the steps after the prompt: one new token per sequence each.
    let per_s = (g.decode_steps * prompts.len()) as f64 / g.decode.as_secs_f64();
    eprintln!(
        "prefill of {length} token(s) x {}: {:.1} ms; then {} step(s): {:.1} ms each, {per_s:.1} tokens/s",
        prompts.len(),
        ms(g.prefill),
        g.decode_steps,
        ms(g.decode) / g.decode_steps.max(1) as f64
    );
    if let Some(path) = o.json.as_deref() {
        let report = serde_json::json!({
            "model": compiled.graph.model,
            "batch": prompts.len(),
            "prompt_tokens": length,
            "new_tokens": g.tokens[0].len(),
            "compile_ms": compiled.compile_ms,
            "prefill_ms": ms(g.prefill),
            "decode_steps": g.decode_steps,
            "decode_ms_per_step": ms(g.decode) / g.decode_steps.max(1) as f64,
            "decode_tokens_per_s": if g.decode_steps > 0 { per_s } else { 0.0 },
            "cache_capacity": capacity,
            "tokens": g.tokens,
        });
        lmc_lab::output::write_report(path, &format!("{report:#}\n"))?;
    }
    let generated = g.tokens;
    match (output, &tokenizer) {
        (None, Some(t)) => {
            for (p, row) in prompts.iter().zip(&generated) {
                let ids: Vec<u32> = p.iter().chain(row).map(|&i| u32::try_from(i).unwrap_or(u32::MAX)).collect();
                let text = t
                    .decode(&ids, true)
                    .map_err(|e| Failure::Message(format!("cannot decode the tokens: {e}")))?;
                lmc_lab::outln!("{text}");
            }
        }
        (None, None) => {
            for row in &generated {
                let ids: Vec<String> = row.iter().map(i64::to_string).collect();
                lmc_lab::outln!("{}", ids.join(" "));
            }
        }
        (Some(path), _) => {
            // As Hugging Face's `generate` returns them: each prompt (an encoder-decoder's: the
            // start token), left-padded as given (or with the padding token), then its new
            // tokens.
            let width = length + generated[0].len();
            let pad = stop.pad.or(stop.eos.first().copied()).unwrap_or(0);
            let padded: Vec<Vec<i64>> = match file_rows.filter(|_| context_decls.is_empty()) {
                Some(rows) => rows,
                None => prompts
                    .iter()
                    .map(|p| std::iter::repeat_n(pad, length - p.len()).chain(p.iter().copied()).collect())
                    .collect(),
            };
            let sequences: Vec<u8> = padded
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

/// An encoder-decoder's first decoder token: given, or the checkpoint's `decoder_start_token_id`.
fn decoder_start(given: Option<i64>, checkpoint: Option<&Path>) -> Result<i64, Failure> {
    if let Some(t) = given {
        return Ok(t);
    }
    let from_config = checkpoint.and_then(|dir| {
        let text = std::fs::read_to_string(dir.join("config.json")).ok()?;
        serde_json::from_str::<serde_json::Value>(&text)
            .ok()?
            .get("decoder_start_token_id")?
            .as_i64()
    });
    from_config.ok_or_else(|| {
        Failure::Message(
            "the model is an encoder-decoder: give its first decoder token with --decoder-start-token-id (the checkpoint's config.json has none)".into(),
        )
    })
}

/// Rows of token ids.
type Rows = Vec<Vec<i64>>;

/// The prompts: the `--input-ids` sequence, or the rows of the tokens tensor of `--inputs`
/// (with `masked`, each row without the left padding its `attention_mask` marks, and the rows as
/// the file has them).
fn read_prompts(prompt: &Prompt<'_>, tokens_name: &str, masked: bool) -> Result<(Rows, Option<Rows>), Failure> {
    match (prompt.ids, prompt.file) {
        (Some(ids), None) if !ids.is_empty() => Ok((vec![ids.to_vec()], None)),
        (None, Some(path)) => {
            let file = lmc_runtime::SafeTensorsFile::open(path).map_err(|e| Failure::Message(e.to_string()))?;
            let rows = |name: &str| -> Result<Option<Vec<Vec<i64>>>, Failure> {
                let Some(t) = file.get(name) else { return Ok(None) };
                let t = t.to_host().map_err(|e| Failure::Message(e.to_string()))?;
                let values: Vec<i64> = match (t.as_i64(), t.as_i32()) {
                    (Some(v), _) => v.to_vec(),
                    (None, Some(v)) => v.iter().map(|&x| i64::from(x)).collect(),
                    _ => return Err(Failure::Message(format!("\"{name}\" in {} is not integer", path.display()))),
                };
                match t.shape.as_slice() {
                    &[batch, length] if batch > 0 && length > 0 => Ok(Some(values.chunks(length).map(<[i64]>::to_vec).collect())),
                    shape => Err(Failure::Message(format!(
                        "\"{name}\" in {} has shape {shape:?}; the prompts are [batch, length]",
                        path.display()
                    ))),
                }
            };
            let tokens = rows(tokens_name)?.ok_or_else(|| {
                Failure::Message(format!(
                    "{} has no tensor \"{tokens_name}\" (the prompts, [batch, length])",
                    path.display()
                ))
            })?;
            let mask = if masked { rows("attention_mask")? } else { None };
            let Some(mask) = mask else { return Ok((tokens, None)) };
            if mask.len() != tokens.len() || mask[0].len() != tokens[0].len() {
                return Err(Failure::Message(format!(
                    "\"attention_mask\" in {} is [{}, {}], and \"{tokens_name}\" [{}, {}]: one mask entry per token",
                    path.display(),
                    mask.len(),
                    mask[0].len(),
                    tokens.len(),
                    tokens[0].len()
                )));
            }
            let mut prompts = Vec::new();
            for (b, (row, m)) in tokens.iter().zip(&mask).enumerate() {
                let pads = m.iter().take_while(|&&v| v == 0).count();
                if pads == m.len() || m[pads..].iter().any(|&v| v != 1) {
                    return Err(Failure::Message(format!(
                        "row {b} of \"attention_mask\" in {} is not left padding (zeros, then at least one 1): decoding continues every row at its end, so pad on the left (padding_side=\"left\")",
                        path.display()
                    )));
                }
                prompts.push(row[pads..].to_vec());
            }
            Ok((prompts, Some(tokens)))
        }
        _ => Err(Failure::Message(
            "give the prompt: --prompt TEXT, --input-ids 5,17,42, or --inputs FILE with a [batch, length] tensor".into(),
        )),
    }
}

/// `--tokenizer`, or the checkpoint's `tokenizer.json`.
fn load_tokenizer(given: Option<&Path>, checkpoint: Option<&Path>) -> Result<tokenizers::Tokenizer, Failure> {
    let path = match (given, checkpoint) {
        (Some(p), _) => p.to_path_buf(),
        (None, Some(dir)) if dir.join("tokenizer.json").is_file() => dir.join("tokenizer.json"),
        _ => {
            return Err(Failure::Message(
                "--prompt is text: give its tokenizer with --tokenizer tokenizer.json, or a checkpoint directory that has one".into(),
            ))
        }
    };
    lmc_lab::check_input_file("--tokenizer", &path)?;
    lmc_lab::tokenizer::load(&path).map_err(Failure::Message)
}

/// What the checkpoint says about generating (`generation_config.json`, and `config.json` for the
/// special tokens it does not name), as transformers reads them.
#[derive(Default)]
struct GenerationConfig {
    eos: Vec<i64>,
    pad: Option<i64>,
    do_sample: bool,
    temperature: Option<f32>,
    top_k: Option<usize>,
    top_p: Option<f32>,
}

impl GenerationConfig {
    fn read(checkpoint: Option<&Path>) -> Result<GenerationConfig, Failure> {
        let Some(dir) = checkpoint else {
            return Ok(GenerationConfig::default());
        };
        let read = |name: &str| -> Result<Option<serde_json::Value>, Failure> {
            let path = dir.join(name);
            if !path.is_file() {
                return Ok(None);
            }
            let text = std::fs::read_to_string(&path).map_err(|e| Failure::Message(format!("cannot read {}: {e}", path.display())))?;
            serde_json::from_str(&text)
                .map(Some)
                .map_err(|e| Failure::Message(format!("{}: {e}", path.display())))
        };
        let generation = read("generation_config.json")?.unwrap_or(serde_json::Value::Null);
        let config = read("config.json")?.unwrap_or(serde_json::Value::Null);
        let key = |k: &str| -> &serde_json::Value {
            match &generation[k] {
                serde_json::Value::Null => &config[k],
                v => v,
            }
        };
        let ids = |v: &serde_json::Value| -> Vec<i64> {
            match v {
                serde_json::Value::Array(a) => a.iter().filter_map(serde_json::Value::as_i64).collect(),
                v => v.as_i64().into_iter().collect(),
            }
        };
        Ok(GenerationConfig {
            eos: ids(key("eos_token_id")),
            pad: key("pad_token_id").as_i64(),
            do_sample: generation["do_sample"].as_bool().unwrap_or(false),
            temperature: generation["temperature"].as_f64().map(|t| t as f32),
            top_k: generation["top_k"].as_u64().map(|k| k as usize),
            top_p: generation["top_p"].as_f64().map(|p| p as f32),
        })
    }
}

/// The sampler the command line and the checkpoint ask for, or none (the argmax).
fn sampler(args: &SamplingArgs, generation: &GenerationConfig) -> Result<Option<lmc_runtime::sampling::Sampler>, Failure> {
    let sampling = !args.greedy && (args.do_sample || generation.do_sample);
    if !sampling {
        if args.temperature.is_some() || args.top_k.is_some() || args.top_p.is_some() {
            return Err(Failure::Message(
                "--temperature, --top-k and --top-p are for sampling: add --do-sample".into(),
            ));
        }
        return Ok(None);
    }
    if !args.do_sample {
        eprintln!("sampling, as the checkpoint's generation_config.json says (--greedy for the argmax)");
    }
    let settings = lmc_runtime::sampling::Sampling {
        temperature: args.temperature.or(generation.temperature).unwrap_or(1.0),
        top_k: args.top_k.or(generation.top_k).unwrap_or(50),
        top_p: args.top_p.or(generation.top_p).unwrap_or(1.0),
        seed: args.seed.unwrap_or(0),
    };
    lmc_runtime::sampling::Sampler::new(settings)
        .map(Some)
        .map_err(|e| Failure::Message(e.message().to_string()))
}
