//! Decoding with a derived step function (a module whose manifest has a `decode` section, from
//! `lmc compile --decode`): the runtime owns the caches, outputs of the step that it passes
//! back to every call holding what the last one left, and the step updates them in place.
//!
//! A [`Decoder`] holds one batch of sequences in flight. Its first [`Decoder::step`] is the
//! prefill (the prompt, at position 0, with zero-filled caches); every later one appends tokens
//! at the next position. [`greedy`] runs the usual loop: prefill, then one token per step, each
//! the argmax of the last logits.

use std::time::Instant;

use lmc_abi::{DType, DecodeSpec, Dim, InputDefault, TensorSpec};

use crate::error::RuntimeError;
use crate::model::LoadedModel;
use crate::tensor::HostTensor;

/// One batch of sequences being decoded: its caches and its position. Every step runs with
/// the model the decoder was made for (a step with another model is refused: its caches would
/// mean nothing there).
pub struct Decoder {
    /// The module the caches belong to: its manifest, hashed.
    module: u64,
    model_name: String,
    spec: DecodeSpec,
    batch: usize,
    /// The next position to be written.
    position: i64,
    /// Each sequence's tokens so far, padding left out: its next position id.
    counted: Vec<i64>,
    /// Every cache (an output of the step, passed back to every step), in manifest order.
    caches: Vec<HostTensor>,
    /// A CUDA module's caches, on the GPU from the first step on (then `caches` keeps its
    /// zeros): a step copies none of them to or from the device.
    device_caches: Vec<crate::cuda::DeviceBuffer>,
    /// Inputs given whole to every step: an encoder's values and its mask (only those the
    /// step reads).
    context: Vec<HostTensor>,
    /// The step's input names, to keep only the context it reads.
    inputs: Vec<String>,
}

impl Decoder {
    /// Starts decoding `batch` sequences with `model`; allocates zero-filled caches.
    pub fn new(model: &LoadedModel, batch: usize) -> Result<Decoder, RuntimeError> {
        let m = model.manifest();
        let spec = m.decode.clone().ok_or_else(|| {
            RuntimeError::invalid_argument(format!(
                "{} is a forward, not a decode step; compile it with a cache capacity (`lmc compile --decode N`)",
                m.model
            ))
        })?;
        if batch == 0 {
            return Err(RuntimeError::input("a batch of zero sequences has nothing to decode"));
        }
        let tokens = input_spec(model, &spec.tokens)?;
        let batch_dim = tokens.shape.first().cloned();
        let mut shapes = Vec::new();
        let mut bytes: u128 = 0;
        for name in &spec.caches {
            let s = m
                .outputs
                .iter()
                .find(|s| &s.name == name)
                .ok_or_else(|| RuntimeError::internal(format!("the decode section names cache \"{name}\", which the outputs lack")))?;
            let shape = s
                .shape
                .iter()
                .map(|d| match d {
                    Dim::Static(n) => usize::try_from(*n).map_err(|_| RuntimeError::internal("a negative cache dimension")),
                    d if Some(d) == batch_dim.as_ref() => Ok(batch),
                    d => Err(RuntimeError::invalid_argument(format!(
                        "cache \"{name}\" has dimension {d}, which only the batch size may be; it cannot be allocated"
                    ))),
                })
                .collect::<Result<Vec<usize>, _>>()?;
            bytes += shape.iter().map(|&d| d as u128).product::<u128>() * s.dtype.size_bytes() as u128;
            shapes.push((name.clone(), s.dtype, shape));
        }
        if let Some(total) = physical_memory() {
            if bytes > total as u128 {
                return Err(RuntimeError::invalid_argument(format!(
                    "the caches for {} positions of {batch} sequence(s) need {:.1} GiB, more than this machine's {:.1} GiB",
                    spec.capacity,
                    bytes as f64 / (1u64 << 30) as f64,
                    total as f64 / (1u64 << 30) as f64
                )));
            }
        }
        let caches = shapes
            .into_iter()
            .map(|(name, dtype, shape)| HostTensor::zeros(name, dtype, shape))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Decoder {
            module: fingerprint(model),
            model_name: m.model.clone(),
            spec,
            batch,
            position: 0,
            counted: vec![0; batch],
            caches,
            device_caches: Vec::new(),
            context: Vec::new(),
            inputs: m.inputs.iter().map(|i| i.name.clone()).collect(),
        })
    }

    /// Inputs that do not grow with the sequence, given whole to every step (an encoder's
    /// tokens and mask); checked against the manifest at the first step.
    pub fn with_context(mut self, context: Vec<HostTensor>) -> Decoder {
        self.set_context(context);
        self
    }

    /// Replaces the context (see [`Decoder::with_context`]); tensors the step does not read
    /// are dropped.
    pub fn set_context(&mut self, mut context: Vec<HostTensor>) {
        context.retain(|t| self.inputs.contains(&t.name));
        self.context = context;
    }

    /// The next position a token goes to (the number of tokens decoded so far).
    pub fn position(&self) -> i64 {
        self.position
    }

    /// The sequences decoded together.
    pub fn batch(&self) -> usize {
        self.batch
    }

    /// The positions the caches hold.
    pub fn capacity(&self) -> i64 {
        self.spec.capacity
    }

    /// Runs `tokens` (`[batch, n]`, row-major) at the next `n` positions; returns their logits
    /// `[batch, n, vocabulary]`. Inputs other than the tokens, the position, the position ids
    /// and the context must be per-token masks (`[batch, n]` integers, like an `attention_mask`,
    /// all ones) or have a default, which they keep. The caches are updated in place.
    pub fn step(&mut self, model: &LoadedModel, tokens: &[i64], n: usize) -> Result<HostTensor, RuntimeError> {
        self.step_masked(model, tokens, n, None)
    }

    /// [`Decoder::step`] with `mask` (`[batch, n]`: 1 for a token, 0 for padding) as the
    /// per-token masks: a left-padded prompt, whose padding later steps do not attend to. The
    /// model's position ids count each row's tokens only, as transformers' `generate` numbers
    /// them (padding takes position 1); padding needs a model that takes position ids and a
    /// mask, or its positions and keys would count the padding.
    pub fn step_masked(&mut self, model: &LoadedModel, tokens: &[i64], n: usize, mask: Option<&[i64]>) -> Result<HostTensor, RuntimeError> {
        if fingerprint(model) != self.module {
            return Err(RuntimeError::invalid_argument(format!(
                "this decoder's caches belong to another module ({}); step it with the model it was made for",
                self.model_name
            )));
        }
        if n == 0 || tokens.len() != self.batch * n {
            return Err(RuntimeError::input(format!(
                "a step takes [batch, n] tokens with n >= 1: {} token(s) given for a batch of {}",
                tokens.len(),
                self.batch
            )));
        }
        let m = model.manifest();
        let token_spec = input_spec(model, &self.spec.tokens)?;
        let is_mask = |s: &TensorSpec| {
            s.shape == token_spec.shape
                && s.dtype != DType::F32
                && s.name != self.spec.tokens
                && Some(&s.name) != self.spec.position_ids.as_ref()
                && matches!(s.default, None | Some(InputDefault::Ones))
        };
        let ones = vec![1; self.batch * n];
        let mask = match mask {
            None => ones.as_slice(),
            Some(mask) => {
                if mask.len() != self.batch * n || mask.iter().any(|&v| v != 0 && v != 1) {
                    return Err(RuntimeError::input(format!(
                        "the mask of a step is [batch, n] of 0 (padding) and 1 (a token): {} value(s) given for {} token(s)",
                        mask.len(),
                        self.batch * n
                    )));
                }
                let padded = mask.contains(&0);
                if padded && !m.inputs.iter().any(&is_mask) {
                    return Err(RuntimeError::input(format!(
                        "{} takes no attention mask, so it would read padding as tokens; pad only a model with one",
                        m.model
                    )));
                }
                if padded && self.spec.position_ids.is_none() {
                    return Err(RuntimeError::input(format!(
                        "{} takes no position_ids: padded prompts need a model that numbers its positions by them (as transformers' causal LMs do), so that the padding is not counted",
                        m.model
                    )));
                }
                mask
            }
        };
        // Position ids count each row's tokens; padding takes 1, as transformers fills it.
        let mut position_ids = Vec::with_capacity(self.batch * n);
        let mut counted = self.counted.clone();
        for (b, row) in mask.chunks(n).enumerate() {
            for &token in row {
                position_ids.push(if token == 1 { counted[b] } else { 1 });
                counted[b] += token;
            }
        }
        let mut inputs = Vec::with_capacity(m.inputs.len());
        for s in &m.inputs {
            if s.name == self.spec.tokens {
                inputs.push(HostTensor::from_i64(s.name.clone(), [self.batch, n], tokens.to_vec())?);
            } else if s.name == self.spec.position {
                inputs.push(HostTensor::from_i64(s.name.clone(), Vec::<usize>::new(), vec![self.position])?);
            } else if Some(&s.name) == self.spec.position_ids.as_ref() {
                inputs.push(HostTensor::from_i64(s.name.clone(), [self.batch, n], position_ids.clone())?);
            } else if self.context.iter().any(|t| t.name == s.name) {
                // Moved in below, without a copy.
            } else if is_mask(s) {
                inputs.push(HostTensor::from_i64(s.name.clone(), [self.batch, n], mask.to_vec())?);
            } else if s.default.is_some() {
                // Left to its default, which the runtime fills (token type ids of zeros).
            } else {
                return Err(RuntimeError::invalid_argument(format!(
                    "input \"{}\" is neither the tokens, a per-token mask, the position nor defaulted; give it as context (an encoder's input)",
                    s.name
                )));
            }
        }
        // The context goes in and comes back out whole (an encoder's keys and values are large:
        // no copy per step). Validation precedes any write: a failed step leaves the caches as
        // they were.
        let own = inputs.len();
        inputs.append(&mut self.context);
        let result = model.run_carrying_resident(&inputs, &mut self.caches, &mut self.device_caches);
        self.context = inputs.split_off(own);
        let mut outputs = result?;
        self.position += n as i64;
        self.counted = counted;
        let k = outputs
            .iter()
            .position(|t| t.name == self.spec.logits)
            .ok_or_else(|| RuntimeError::internal("the step did not return its logits"))?;
        Ok(outputs.swap_remove(k))
    }
}

/// An encoder-decoder's context for [`Decoder::with_context`]: runs the context module (its
/// encoder, from `lmc compile --decode`'s `*.context.so` or the JIT) on those of `given` it
/// reads, and returns its outputs followed by `given` (the step reads the encoder's mask too).
pub fn context(encoder: &LoadedModel, given: Vec<HostTensor>) -> Result<Vec<HostTensor>, RuntimeError> {
    let wanted = &encoder.manifest().inputs;
    let inputs: Vec<HostTensor> = given.iter().filter(|t| wanted.iter().any(|w| w.name == t.name)).cloned().collect();
    let mut values = encoder.run(&inputs)?;
    values.extend(given);
    Ok(values)
}

/// Identifies a module by its manifest (names, shapes, capacity and the lmc that made it).
fn fingerprint(model: &LoadedModel) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    model.module().manifest_json().hash(&mut h);
    h.finish()
}

fn input_spec<'a>(model: &'a LoadedModel, name: &str) -> Result<&'a TensorSpec, RuntimeError> {
    model
        .manifest()
        .inputs
        .iter()
        .find(|s| s.name == name)
        .ok_or_else(|| RuntimeError::internal(format!("the decode section names input \"{name}\", which the manifest lacks")))
}

/// Total physical memory, where the system says (Linux).
fn physical_memory() -> Option<u64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = info.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    kib.checked_mul(1024)
}

/// Each sequence's logits at the last position of `logits` `[batch, n, vocabulary]`.
fn last_rows(logits: &HostTensor) -> Result<Vec<&[f32]>, RuntimeError> {
    let (&[batch, n, vocab], Some(values)) = (logits.shape.as_slice(), logits.as_f32()) else {
        return Err(RuntimeError::internal("logits are not f32 [batch, n, vocabulary]"));
    };
    Ok((0..batch).map(|b| &values[(b * n + n - 1) * vocab..(b * n + n) * vocab]).collect())
}

/// For each row of `logits` `[batch, n, vocabulary]`, the index of the largest logit at the last
/// position (the first one on ties, as `torch.argmax`).
pub fn last_argmax(logits: &HostTensor) -> Result<Vec<i64>, RuntimeError> {
    let (&[batch, n, vocab], Some(values)) = (logits.shape.as_slice(), logits.as_f32()) else {
        return Err(RuntimeError::internal("logits are not f32 [batch, n, vocabulary]"));
    };
    Ok((0..batch)
        .map(|b| {
            let row = &values[(b * n + n - 1) * vocab..(b * n + n) * vocab];
            let mut best = 0;
            for (k, &x) in row.iter().enumerate() {
                if x > row[best] {
                    best = k;
                }
            }
            best as i64
        })
        .collect())
}

/// What [`greedy`] produced, and how long its two phases took.
#[derive(Debug, Clone)]
pub struct Generated {
    /// The new tokens of each sequence.
    pub tokens: Vec<Vec<i64>>,
    /// The prompt's step.
    pub prefill: std::time::Duration,
    /// Every later step together (one per new token after the first).
    pub decode: std::time::Duration,
    pub decode_steps: usize,
}

/// Greedy decoding: the prompts (one per sequence, all the same length), then `max_new_tokens`
/// tokens each, every one the argmax of the previous position's logits. With `eos`, a sequence
/// that produced it is finished: it takes `eos` from then on, and decoding stops once every
/// sequence is. `context` goes to every step whole (see [`Decoder::with_context`]).
pub fn greedy(
    model: &LoadedModel,
    prompts: &[Vec<i64>],
    context: Vec<HostTensor>,
    max_new_tokens: usize,
    eos: Option<i64>,
) -> Result<Generated, RuntimeError> {
    let stop = Stop {
        eos: eos.into_iter().collect(),
        pad: eos,
    };
    generate(model, prompts, context, max_new_tokens, &stop, None)
}

/// When a sequence is finished, as transformers' `generate` decides it.
#[derive(Debug, Clone, Default)]
pub struct Stop {
    /// Any of these ends a sequence (`eos_token_id`, one or several).
    pub eos: Vec<i64>,
    /// What a finished sequence takes from then on (`pad_token_id`; transformers uses the first
    /// end-of-sequence token when there is none).
    pub pad: Option<i64>,
}

/// Decoding: the prompts (one per sequence; shorter ones left-padded, as transformers'
/// tokenizers pad for generation, see [`Decoder::step_masked`]), then up to `max_new_tokens`
/// tokens each, every one the argmax of the previous position's logits, or drawn by `sampler`.
/// A sequence that produced an end-of-sequence token is finished and takes `stop.pad` from
/// then on; decoding stops once every sequence is.
pub fn generate(
    model: &LoadedModel,
    prompts: &[Vec<i64>],
    context: Vec<HostTensor>,
    max_new_tokens: usize,
    stop: &Stop,
    mut sampler: Option<&mut crate::sampling::Sampler>,
) -> Result<Generated, RuntimeError> {
    let length = prompts.iter().map(Vec::len).max().unwrap_or(0);
    if prompts.iter().any(Vec::is_empty) || length == 0 {
        return Err(RuntimeError::input("decoding needs at least one prompt, and no empty one"));
    }
    if max_new_tokens == 0 {
        return Err(RuntimeError::input("max_new_tokens must be at least 1"));
    }
    // The tokens themselves must fit (a recurrent model's caches do not grow with them).
    let token_bytes = prompts.len() as u128 * max_new_tokens as u128 * 8;
    if let Some(total) = physical_memory().filter(|t| token_bytes > *t as u128) {
        return Err(RuntimeError::input(format!(
            "{max_new_tokens} new tokens for {} sequence(s) would need {:.1} GiB for the tokens alone, more than this machine's {:.1} GiB",
            prompts.len(),
            token_bytes as f64 / (1u64 << 30) as f64,
            total as f64 / (1u64 << 30) as f64
        )));
    }
    let mut decoder = Decoder::new(model, prompts.len())?.with_context(context);
    let needed = length as u128 + max_new_tokens as u128 - 1;
    if needed > decoder.capacity() as u128 {
        return Err(RuntimeError::input(format!(
            "a prompt of {length} and {max_new_tokens} new tokens need {needed} positions; the caches hold {}",
            decoder.capacity()
        )));
    }
    let mut choose = |logits: &HostTensor| -> Result<Vec<i64>, RuntimeError> {
        match sampler.as_deref_mut() {
            None => last_argmax(logits),
            Some(s) => Ok(last_rows(logits)?.into_iter().map(|row| s.sample(row)).collect()),
        }
    };
    let pad = stop.pad.or(stop.eos.first().copied());
    // Shorter prompts are left-padded: padding first, masked, then the prompt. The padding's
    // token is never attended to; 0 is in every vocabulary (a checkpoint's padding token may be
    // past a small model's).
    let mut tokens = Vec::with_capacity(prompts.len() * length);
    let mut mask = Vec::with_capacity(prompts.len() * length);
    for p in prompts {
        tokens.extend(std::iter::repeat_n(0, length - p.len()).chain(p.iter().copied()));
        mask.extend(std::iter::repeat_n(0, length - p.len()).chain(std::iter::repeat_n(1, p.len())));
    }
    let padded = prompts.iter().any(|p| p.len() != length);
    let started = Instant::now();
    let mut next = choose(&decoder.step_masked(model, &tokens, length, padded.then_some(mask.as_slice()))?)?;
    let prefill = started.elapsed();
    let started = Instant::now();
    let mut steps = 0;
    let mut tokens: Vec<Vec<i64>> = vec![Vec::with_capacity(max_new_tokens.min(1 << 16)); prompts.len()];
    let mut done = vec![false; prompts.len()];
    loop {
        for (b, t) in next.iter_mut().enumerate() {
            if done[b] {
                *t = pad.unwrap_or(*t);
            }
            tokens[b].push(*t);
            done[b] |= stop.eos.contains(t);
        }
        if tokens[0].len() == max_new_tokens || done.iter().all(|d| *d) {
            return Ok(Generated {
                tokens,
                prefill,
                decode: started.elapsed(),
                decode_steps: steps,
            });
        }
        next = choose(&decoder.step(model, &next, 1)?)?;
        steps += 1;
    }
}
