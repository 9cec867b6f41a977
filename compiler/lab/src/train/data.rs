//! What `lmc train` feeds the model, one batch per step: a safetensors file of batches made
//! beforehand (`input_ids [steps, batch, seq]`, and any other input of the model shaped alike,
//! `labels` among them), consumed in order; or a text, tokenized, cut into windows of
//! `--seq-len` tokens and drawn in a shuffled order that is a function of the seed and the epoch
//! alone (so a resumed run draws what the stopped one would have). Labels the data does not
//! hold are made by the objective. Every random choice is a function of (seed, step), never of
//! a generator's history.

use lmc_runtime::safetensors::SafeTensorsFile;
use lmc_runtime::HostTensor;
use std::path::{Path, PathBuf};

/// How labels are made when the data has none (`--objective`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Objective {
    /// Next-token prediction: `labels = input_ids` (a causal LM shifts them itself).
    Causal,
    /// Masked LM as transformers' `DataCollatorForLanguageModeling`: each token chosen with
    /// probability `mlm_probability`; a chosen one becomes the mask token (80%), a random token
    /// (10%) or stays (10%), and only chosen tokens are labelled.
    Masked {
        mlm_probability: f64,
        mask_token_id: i64,
        vocab: i64,
    },
    /// T5's span corruption, as transformers' `DataCollatorForT5MLM` (its `run_t5_mlm_flax.py`):
    /// spans of mean length `mean_noise_span_length` covering `noise_density` of a window are
    /// each replaced by a sentinel in the input (`<extra_id_0>`, `<extra_id_1>`, …: `sentinel`
    /// less k, of which the tokenizer has `sentinels`), and the labels are the sentinels each
    /// followed by the span it stands for; both end with `eos`.
    SpanCorruption {
        noise_density: f64,
        mean_noise_span_length: f64,
        sentinel: i64,
        sentinels: usize,
        eos: i64,
    },
}

impl Objective {
    /// The tokens of text each sequence is made from, for inputs of `seq_len` tokens: more than
    /// `seq_len` for span corruption, whose spans shrink to one sentinel each.
    pub fn window(self, seq_len: usize) -> usize {
        match self {
            Objective::SpanCorruption {
                noise_density,
                mean_noise_span_length,
                ..
            } => span_window(seq_len, noise_density, mean_noise_span_length).0,
            _ => seq_len,
        }
    }
}

/// The lengths of span corruption's inputs and labels for a window of `tokens` tokens (each
/// with its end-of-sequence token).
pub fn span_lengths(tokens: usize, noise_density: f64, mean_noise_span_length: f64) -> (usize, usize) {
    let noise = (tokens as f64 * noise_density).round_ties_even() as usize;
    let spans = (noise as f64 / mean_noise_span_length).round_ties_even() as usize;
    (tokens - noise + spans + 1, noise + spans + 1)
}

/// The longest window whose corrupted input is at most `inputs` tokens, and its labels' length
/// (transformers' `compute_input_and_target_lengths`).
pub fn span_window(inputs: usize, noise_density: f64, mean_noise_span_length: f64) -> (usize, usize) {
    let mut tokens = inputs;
    while span_lengths(tokens + 1, noise_density, mean_noise_span_length).0 <= inputs {
        tokens += 1;
    }
    let (_, mut targets) = span_lengths(tokens, noise_density, mean_noise_span_length);
    if noise_density == 0.5 && targets > inputs {
        tokens -= 1;
        targets -= 1;
    }
    (tokens, targets)
}

/// Which of `length` tokens are noise: `random_spans_noise_mask` of transformers' collator,
/// its shuffles keyed by `key`. Spans alternate, starting with one that is kept.
fn noise_mask(length: usize, noise_density: f64, mean_noise_span_length: f64, key: u64) -> Vec<bool> {
    let noise = ((length as f64 * noise_density).round_ties_even() as usize).clamp(1, length - 1);
    let kept = length - noise;
    let spans = ((noise.min(kept) as f64 / mean_noise_span_length).round_ties_even() as usize).max(1);
    let noise_lengths = random_segmentation(noise, spans, mix(key ^ 0x4E4F_4953));
    let kept_lengths = random_segmentation(kept, spans, mix(key ^ 0x4B45_5054));
    let mut mask = Vec::with_capacity(length);
    for (k, n) in kept_lengths.iter().zip(&noise_lengths) {
        mask.extend(std::iter::repeat_n(false, *k));
        mask.extend(std::iter::repeat_n(true, *n));
    }
    mask
}

/// `items` split into `segments` non-empty runs at random: the lengths of the runs.
fn random_segmentation(items: usize, segments: usize, key: u64) -> Vec<usize> {
    // Which of the gaps between items start a new run: segments - 1 of them, shuffled.
    let mut starts: Vec<bool> = (0..items - 1).map(|i| i < segments - 1).collect();
    for i in (1..starts.len()).rev() {
        let j = (mix(key.wrapping_add(i as u64)) % (i as u64 + 1)) as usize;
        starts.swap(i, j);
    }
    let mut lengths = vec![1usize];
    for s in starts {
        if s {
            lengths.push(1);
        } else if let Some(last) = lengths.last_mut() {
            *last += 1;
        }
    }
    lengths
}

/// Where batches come from.
pub enum Source {
    Batches {
        file: SafeTensorsFile,
        /// The tensors' names, in file order.
        names: Vec<String>,
        steps: usize,
        batch: usize,
        seq: usize,
    },
    Text {
        ids: Vec<i64>,
        /// Tokens in each input sequence.
        seq_len: usize,
        /// Tokens of text each is made from (more than `seq_len` for span corruption).
        window: usize,
        batch: usize,
        windows: usize,
    },
}

/// The training (or evaluation) data.
pub struct Data {
    pub path: PathBuf,
    pub source: Source,
    pub objective: Option<Objective>,
    pub seed: u64,
    /// Whether a text's windows are drawn shuffled (training) or in order (evaluation).
    pub shuffle: bool,
    /// The order of the windows of the epoch drawn last (a function of the seed and the epoch).
    order: std::cell::RefCell<Option<(u64, Vec<usize>)>>,
    /// The sha256 of the file (hex), recorded with a checkpoint so a resumed run can check it
    /// reads the same data.
    pub sha256: String,
}

/// The counter-based random numbers behind every choice: SplitMix64 of a key.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn uniform(key: u64) -> f64 {
    (mix(key) >> 11) as f64 / (1u64 << 53) as f64
}

/// The order of `n` windows in `epoch` (a Fisher–Yates shuffle keyed by seed and epoch).
fn permutation(n: usize, seed: u64, epoch: u64) -> Vec<usize> {
    let mut order: Vec<usize> = (0..n).collect();
    let key = mix(seed ^ mix(epoch.wrapping_add(0x5EED)));
    for i in (1..n).rev() {
        let j = (mix(key.wrapping_add(i as u64)) % (i as u64 + 1)) as usize;
        order.swap(i, j);
    }
    order
}

impl Data {
    /// Opens a safetensors file of batches.
    pub fn batches(path: &Path, objective: Option<Objective>, seed: u64) -> Result<Data, String> {
        let file = SafeTensorsFile::open(path).map_err(|e| e.to_string())?;
        let Some(ids) = file.get("input_ids") else {
            let names: Vec<&str> = file.tensors().map(|t| t.name.as_str()).collect();
            return Err(format!(
                "{} holds no `input_ids` (it holds: {}); batches are `input_ids [steps, batch, seq]`",
                path.display(),
                if names.is_empty() {
                    "nothing".to_string()
                } else {
                    names.join(", ")
                }
            ));
        };
        let &[steps, batch, seq] = ids.shape() else {
            return Err(format!(
                "{}: `input_ids` has shape {:?}; batches are [steps, batch, seq]",
                path.display(),
                ids.shape()
            ));
        };
        if steps == 0 || batch == 0 || seq == 0 {
            return Err(format!(
                "{}: `input_ids` has shape {:?}: not one batch",
                path.display(),
                ids.shape()
            ));
        }
        let mut names = Vec::new();
        for t in file.tensors() {
            if t.shape.len() < 2 || t.shape[0] != steps || t.shape[1] != batch {
                return Err(format!(
                    "{}: `{}` has shape {:?}; every tensor is [steps, batch, ...] as `input_ids` [{steps}, {batch}, {seq}]",
                    path.display(),
                    t.name,
                    t.shape
                ));
            }
            if t.dtype.as_dtype().is_none() {
                return Err(format!(
                    "{}: `{}` has dtype {}, which lmc does not read",
                    path.display(),
                    t.name,
                    t.dtype
                ));
            }
            names.push(t.name.clone());
        }
        Ok(Data {
            path: path.to_path_buf(),
            sha256: sha256_file(path)?,
            source: Source::Batches {
                file,
                names,
                steps,
                batch,
                seq,
            },
            objective,
            seed,
            shuffle: true,
            order: std::cell::RefCell::new(None),
        })
    }

    /// Tokenizes a text with `tokenizer` and cuts it into windows of `seq_len` tokens (the rest
    /// dropped, as transformers' `group_texts` does), `batch` per step; for evaluation
    /// (`shrink`), fewer when the text has fewer windows.
    #[allow(clippy::too_many_arguments)]
    pub fn text(
        path: &Path,
        tokenizer: &tokenizers::Tokenizer,
        seq_len: usize,
        batch: usize,
        shrink: bool,
        objective: Option<Objective>,
        seed: u64,
    ) -> Result<Data, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        if text.trim().is_empty() {
            return Err(format!("{} is empty", path.display()));
        }
        let encoding = tokenizer
            .encode(text.as_str(), false)
            .map_err(|e| format!("cannot tokenize {}: {e}", path.display()))?;
        let ids: Vec<i64> = encoding.get_ids().iter().map(|&i| i64::from(i)).collect();
        let window = objective.map_or(seq_len, |o| o.window(seq_len));
        let windows = ids.len() / window;
        let batch = if shrink { batch.min(windows.max(1)) } else { batch };
        if windows < batch {
            return Err(format!(
                "{} is {} tokens: fewer than one batch of {batch} windows of {window} tokens ({} needed); \
                 give a longer text, or a smaller --per-device-train-batch-size or --seq-len",
                path.display(),
                ids.len(),
                batch * window
            ));
        }
        Ok(Data {
            path: path.to_path_buf(),
            sha256: sha256_file(path)?,
            source: Source::Text {
                ids,
                seq_len,
                window,
                batch,
                windows,
            },
            objective,
            seed,
            shuffle: true,
            order: std::cell::RefCell::new(None),
        })
    }

    /// Batches the data holds, when it is read once in order (`None`: a text, drawn epoch after
    /// epoch).
    pub fn steps(&self) -> Option<usize> {
        match &self.source {
            Source::Batches { steps, .. } => Some(*steps),
            Source::Text { .. } => None,
        }
    }

    /// Batches in one pass over the data.
    pub fn batches_per_epoch(&self) -> usize {
        match &self.source {
            Source::Batches { steps, .. } => *steps,
            Source::Text { windows, batch, .. } => windows.div_ceil(*batch),
        }
    }

    /// Batches an evaluation reads: every batch of the file, or every whole batch of a text's
    /// windows in order.
    pub fn eval_batches(&self) -> usize {
        match &self.source {
            Source::Batches { steps, .. } => *steps,
            Source::Text { windows, batch, .. } => windows / batch,
        }
    }

    pub fn batch_size(&self) -> usize {
        match &self.source {
            Source::Batches { batch, .. } | Source::Text { batch, .. } => *batch,
        }
    }

    pub fn seq_len(&self) -> usize {
        match &self.source {
            Source::Batches { seq, .. } => *seq,
            Source::Text { seq_len, .. } => *seq_len,
        }
    }

    /// What `describe` prints: "42 windows of 64 tokens from wiki.txt" and so on.
    pub fn describe(&self) -> String {
        match &self.source {
            Source::Batches {
                steps, batch, seq, names, ..
            } => format!("{}: {steps} batches of {batch} × {seq} ({})", self.path.display(), names.join(", ")),
            Source::Text { ids, window, windows, .. } => {
                format!("{}: {} tokens, {windows} windows of {window}", self.path.display(), ids.len())
            }
        }
    }

    /// Tensors that are not among `inputs` (a misnamed column would otherwise be dropped).
    pub fn unknown_tensors(&self, inputs: &[String]) -> Vec<String> {
        match &self.source {
            Source::Batches { names, .. } => names.iter().filter(|n| !inputs.contains(n)).cloned().collect(),
            Source::Text { .. } => Vec::new(),
        }
    }

    /// Whether the data holds labels itself.
    pub fn has_labels(&self) -> bool {
        matches!(&self.source, Source::Batches { names, .. } if names.iter().any(|n| n == "labels"))
    }

    /// The batch of `step` (counted from 0), named as the model's inputs; `labels` made by the
    /// objective when the data has none.
    pub fn batch(&self, step: u64) -> Result<Vec<HostTensor>, String> {
        let mut tensors = match &self.source {
            Source::Batches { file, names, steps, .. } => {
                // Read in order, again from the first batch after the last.
                let s = (step % *steps as u64) as usize;
                let mut out = Vec::new();
                for name in names {
                    let t = file
                        .get(name)
                        .ok_or_else(|| format!("{}: `{name}` is gone from the file", self.path.display()))?;
                    let row = t.bytes().len() / steps;
                    let bytes = &t.bytes()[s * row..(s + 1) * row];
                    let dtype = t
                        .dtype()
                        .as_dtype()
                        .ok_or_else(|| format!("{}: `{name}` has dtype {}, which lmc does not read", self.path.display(), t.dtype()))?;
                    out.push(HostTensor::from_bytes(name.clone(), dtype, t.shape()[1..].to_vec(), bytes).map_err(|e| e.to_string())?);
                }
                out
            }
            Source::Text {
                ids,
                window,
                batch,
                windows,
                ..
            } => {
                let mut values = Vec::with_capacity(batch * window);
                let mut order = self.order.borrow_mut();
                for j in 0..*batch as u64 {
                    let sample = step * *batch as u64 + j;
                    let epoch = sample / *windows as u64;
                    let within = (sample % *windows as u64) as usize;
                    let w = if self.shuffle {
                        // An epoch's order is made once, when its first sample is drawn.
                        if order.as_ref().is_none_or(|(e, _)| *e != epoch) {
                            *order = Some((epoch, permutation(*windows, self.seed, epoch)));
                        }
                        order.as_ref().map_or(within, |(_, o)| o[within])
                    } else {
                        within
                    };
                    values.extend_from_slice(&ids[w * window..(w + 1) * window]);
                }
                vec![HostTensor::from_i64("input_ids", vec![*batch, *window], values).map_err(|e| e.to_string())?]
            }
        };
        if !tensors.iter().any(|t| t.name == "labels") {
            let Some(objective) = self.objective else {
                return Err(format!("{} has no `labels`: {}", self.path.display(), MAKE_LABELS));
            };
            let ids = tensors
                .iter_mut()
                .find(|t| t.name == "input_ids")
                .ok_or_else(|| format!("{} has no `input_ids` to make labels from", self.path.display()))?;
            let (inputs, labels) = make_labels(ids, objective, self.seed, step)?;
            *ids = inputs;
            tensors.push(labels);
        }
        Ok(tensors)
    }
}

/// How to say which objective makes labels.
pub const MAKE_LABELS: &str = "say how to make them with --objective causal (labels = input_ids; a causal LM shifts them itself), \
     --objective masked (masked LM, as transformers' DataCollatorForLanguageModeling) or --objective span-corruption (T5's, as transformers' DataCollatorForT5MLM)";

/// The inputs and labels of a batch without labels, by the objective.
fn make_labels(ids: &HostTensor, objective: Objective, seed: u64, step: u64) -> Result<(HostTensor, HostTensor), String> {
    let values = ids.as_i64().ok_or("`input_ids` must be i64 to make labels from")?;
    let shape = ids.shape.clone();
    match objective {
        Objective::Causal => Ok((
            ids.clone(),
            HostTensor::from_i64("labels", shape, values.to_vec()).map_err(|e| e.to_string())?,
        )),
        Objective::Masked {
            mlm_probability,
            mask_token_id,
            vocab,
        } => {
            let key = mix(seed ^ mix(step ^ 0x4D41_534B));
            let mut inputs = values.to_vec();
            let mut labels = vec![-100i64; values.len()];
            for (i, (input, label)) in inputs.iter_mut().zip(labels.iter_mut()).enumerate() {
                let k = key.wrapping_add(3 * i as u64);
                if uniform(k) >= mlm_probability {
                    continue;
                }
                *label = *input;
                let r = uniform(k + 1);
                if r < 0.8 {
                    *input = mask_token_id;
                } else if r < 0.9 {
                    *input = (mix(k + 2) % vocab as u64) as i64;
                }
            }
            Ok((
                HostTensor::from_i64("input_ids", shape.clone(), inputs).map_err(|e| e.to_string())?,
                HostTensor::from_i64("labels", shape, labels).map_err(|e| e.to_string())?,
            ))
        }
        Objective::SpanCorruption {
            noise_density,
            mean_noise_span_length,
            sentinel,
            sentinels,
            eos,
        } => {
            let &[batch, length] = shape.as_slice() else {
                return Err(format!("`input_ids` has shape {shape:?}; span corruption reads [batch, seq]"));
            };
            if length < 2 {
                return Err(format!("span corruption needs windows of 2 tokens or more, not {length}"));
            }
            let (input_len, label_len) = span_lengths(length, noise_density, mean_noise_span_length);
            let mut inputs = Vec::with_capacity(batch * input_len);
            let mut labels = Vec::with_capacity(batch * label_len);
            for (row, tokens) in values.chunks(length).enumerate() {
                let key = mix(seed ^ mix(step ^ 0x5350_414E)).wrapping_add(row as u64);
                let noise = noise_mask(length, noise_density, mean_noise_span_length, mix(key));
                let spans = noise.iter().enumerate().filter(|&(i, &n)| n && (i == 0 || !noise[i - 1])).count();
                if spans > sentinels {
                    return Err(format!(
                        "span corruption of a window of {length} tokens makes {spans} spans, but the tokenizer has {sentinels} sentinels (<extra_id_0> …); give a shorter --seq-len"
                    ));
                }
                let (i, l) = corrupt(tokens, &noise, sentinel, eos);
                if i.len() != input_len || l.len() != label_len {
                    return Err(format!(
                        "span corruption made {} input and {} label tokens of a window of {length}, not {input_len} and {label_len}",
                        i.len(),
                        l.len()
                    ));
                }
                inputs.extend(i);
                labels.extend(l);
            }
            Ok((
                HostTensor::from_i64("input_ids", vec![batch, input_len], inputs).map_err(|e| e.to_string())?,
                HostTensor::from_i64("labels", vec![batch, label_len], labels).map_err(|e| e.to_string())?,
            ))
        }
    }
}

/// One window's input (noise spans replaced by sentinels) and labels (each sentinel followed
/// by its span), each ended by `eos`.
fn corrupt(tokens: &[i64], noise: &[bool], sentinel: i64, eos: i64) -> (Vec<i64>, Vec<i64>) {
    let (mut input, mut labels) = (Vec::new(), Vec::new());
    let mut span = 0;
    for (i, (&t, &n)) in tokens.iter().zip(noise).enumerate() {
        if !n {
            input.push(t);
            continue;
        }
        if i == 0 || !noise[i - 1] {
            input.push(sentinel - span);
            labels.push(sentinel - span);
            span += 1;
        }
        labels.push(t);
    }
    input.push(eos);
    labels.push(eos);
    (input, labels)
}

/// The sha256 of a file, in hex.
pub fn sha256_file(path: &Path) -> Result<String, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    Ok(hex_digest(&bytes))
}

/// Hex of the sha256 of `bytes`.
pub fn hex_digest(bytes: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permutations_are_permutations_and_differ_by_epoch() {
        let a = permutation(50, 7, 0);
        let b = permutation(50, 7, 1);
        let mut sorted = a.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, (0..50).collect::<Vec<_>>());
        assert_ne!(a, b);
        assert_eq!(a, permutation(50, 7, 0));
    }

    #[test]
    fn masking_labels_only_what_it_chose() {
        let ids = HostTensor::from_i64("input_ids", vec![4, 250], (0..1000).map(|i| 5 + i % 90).collect()).unwrap();
        let objective = Objective::Masked {
            mlm_probability: 0.15,
            mask_token_id: 3,
            vocab: 99,
        };
        let (inputs, labels) = make_labels(&ids, objective, 1, 0).unwrap();
        let (inputs, labels, original) = (inputs.as_i64().unwrap(), labels.as_i64().unwrap(), ids.as_i64().unwrap());
        let chosen = labels.iter().filter(|&&l| l != -100).count();
        assert!((100..200).contains(&chosen), "{chosen} of 1000 chosen");
        let masked = inputs.iter().filter(|&&t| t == 3).count();
        assert!(masked as f64 > 0.6 * chosen as f64 && (masked as f64) < 0.95 * chosen as f64);
        for ((i, l), o) in inputs.iter().zip(labels).zip(original) {
            if *l == -100 {
                assert_eq!(i, o, "an unchosen token is left as it was");
            } else {
                assert_eq!(l, o, "a chosen token is labelled with itself");
            }
        }
    }

    #[test]
    fn span_corruption_lengths_are_transformers() {
        // compute_input_and_target_lengths(512, 0.15, 3) of run_t5_mlm_flax.py, and smaller.
        assert_eq!(span_window(512, 0.15, 3.0), (568, 114));
        assert_eq!(span_window(64, 0.15, 3.0), (70, 14));
        assert_eq!(span_window(256, 0.15, 3.0), (284, 58));
        assert_eq!(span_window(32, 0.15, 3.0), (34, 8));
    }

    #[test]
    fn span_corruption_hides_spans_the_labels_give_back() {
        let (window, targets) = span_window(64, 0.15, 3.0);
        let ids = HostTensor::from_i64("input_ids", vec![3, window], (0..3 * window as i64).map(|i| 10 + i).collect()).unwrap();
        let objective = Objective::SpanCorruption {
            noise_density: 0.15,
            mean_noise_span_length: 3.0,
            sentinel: 999,
            sentinels: 100,
            eos: 1,
        };
        let (inputs, labels) = make_labels(&ids, objective, 7, 3).unwrap();
        assert_eq!(inputs.shape, vec![3, 64]);
        assert_eq!(labels.shape, vec![3, targets]);
        let (inputs, labels) = (inputs.as_i64().unwrap(), labels.as_i64().unwrap());
        for (row, original) in ids.as_i64().unwrap().chunks(window).enumerate() {
            let input = &inputs[row * 64..(row + 1) * 64];
            let label = &labels[row * targets..(row + 1) * targets];
            assert_eq!((input[63], label[targets - 1]), (1, 1), "both end with eos");
            // Putting each sentinel's span back where the sentinel stands gives the window.
            let mut spans = std::collections::HashMap::new();
            let mut current = None;
            for &t in &label[..targets - 1] {
                if t > 900 {
                    current = Some(t);
                    spans.insert(t, Vec::new());
                } else {
                    spans.get_mut(&current.expect("labels start with a sentinel")).unwrap().push(t);
                }
            }
            let sentinels: Vec<i64> = input.iter().copied().filter(|&t| t > 900).collect();
            assert_eq!(sentinels, (0..sentinels.len() as i64).map(|k| 999 - k).collect::<Vec<_>>());
            assert!(input[0] < 900, "the first span is kept");
            let mut rebuilt = Vec::new();
            for &t in &input[..63] {
                match spans.get(&t) {
                    Some(span) => {
                        assert!(!span.is_empty());
                        rebuilt.extend(span);
                    }
                    None => rebuilt.push(t),
                }
            }
            assert_eq!(rebuilt, original);
            let hidden: usize = spans.values().map(Vec::len).sum();
            assert_eq!(hidden, 10, "round(70 * 0.15) tokens are noise");
        }
        // A function of (seed, step): the same again, another mask at the next step.
        let again = make_labels(&ids, objective, 7, 3).unwrap();
        assert_eq!(again.0.as_i64().unwrap(), inputs);
        let next = make_labels(&ids, objective, 7, 4).unwrap();
        assert_ne!(next.0.as_i64().unwrap(), inputs);
        // Too few sentinels is an error, not a sentinel that is a word.
        let few = Objective::SpanCorruption {
            noise_density: 0.15,
            mean_noise_span_length: 3.0,
            sentinel: 999,
            sentinels: 1,
            eos: 1,
        };
        let err = make_labels(&ids, few, 7, 3).unwrap_err();
        assert!(err.contains("1 sentinels"), "{err}");
    }
}
