//! `lmc ab --eval-text FILE`: how well each variant predicts a text, per length. The text is
//! tokenized with the checkpoint's `tokenizer.json` (the Hugging Face `tokenizers` crate), cut
//! into windows of each length, and each window's next-token loss is computed from the forward's
//! logits: loss is the mean negative log-likelihood (nats per token), perplexity its exponential.

use lmc_abi::{DType, Dim};
use lmc_runtime::{HostTensor, LoadedModel};
use std::path::{Path, PathBuf};

/// Windows of each length evaluated at most (consecutive, from the start of the text).
pub const MAX_WINDOWS: usize = 8;

/// A text, tokenized.
pub struct EvalText {
    pub path: PathBuf,
    pub ids: Vec<i64>,
}

/// How well a variant predicted the text's windows of one length.
pub struct Score {
    pub loss: f64,
    pub perplexity: f64,
    pub windows: usize,
}

/// Tokenizes `path` with the `tokenizer.json` of the checkpoint directory `checkpoint`.
pub fn load(path: &Path, checkpoint: Option<&Path>) -> Result<EvalText, String> {
    let dir = checkpoint
        .filter(|p| p.is_dir())
        .ok_or("--eval-text needs the variants' checkpoint directory (--weights DIR) with its tokenizer.json")?;
    let tokenizer_path = dir.join("tokenizer.json");
    if !tokenizer_path.is_file() {
        return Err(format!(
            "--eval-text needs {}: the checkpoint has no tokenizer",
            tokenizer_path.display()
        ));
    }
    let tokenizer = crate::tokenizer::load(&tokenizer_path)?;
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let encoding = tokenizer
        .encode(text.as_str(), false)
        .map_err(|e| format!("cannot tokenize {}: {e}", path.display()))?;
    let ids: Vec<i64> = encoding.get_ids().iter().map(|&i| i64::from(i)).collect();
    if ids.len() < 2 {
        return Err(format!(
            "{} holds {} token(s); a loss needs at least two",
            path.display(),
            ids.len()
        ));
    }
    Ok(EvalText {
        path: path.to_path_buf(),
        ids,
    })
}

/// The variant's loss on up to [`MAX_WINDOWS`] windows of `length` tokens (predicting each
/// token after the first from those before it), or why it has none.
pub fn score(model: &LoadedModel, text: &EvalText, length: usize) -> Result<Score, String> {
    let s = score_windows(model, text, length, MAX_WINDOWS)?;
    let loss = s.loss();
    Ok(Score {
        loss,
        perplexity: loss.exp(),
        windows: s.window_losses.len(),
    })
}

/// Losses on consecutive windows of a text: each window's mean, and the sum and count of the
/// losses at each position (the loss of predicting token t + 1 from tokens 0..=t).
pub struct WindowScores {
    pub window_losses: Vec<f64>,
    pub position_sums: Vec<f64>,
    pub position_counts: Vec<usize>,
}

impl WindowScores {
    /// The mean loss over every predicted token.
    pub fn loss(&self) -> f64 {
        self.position_sums.iter().sum::<f64>() / self.position_counts.iter().sum::<usize>().max(1) as f64
    }
}

/// [`score`]'s computation on up to `max_windows` windows, kept per window and per position.
pub fn score_windows(model: &LoadedModel, text: &EvalText, length: usize, max_windows: usize) -> Result<WindowScores, String> {
    let m = model.manifest();
    let logits = m.outputs.first().filter(|o| o.dtype == DType::F32 && o.shape.len() == 3);
    let (Some(logits), true) = (logits, length >= 2) else {
        return Err("no next-token logits to score".into());
    };
    let tokens = m
        .inputs
        .iter()
        .find(|i| i.dtype != DType::F32 && i.shape.len() == 2 && i.shape[1] == logits.shape[1])
        .ok_or("no token input beside its logits")?;
    let vocab = match logits.shape[2] {
        Dim::Static(v) => v as usize,
        Dim::Symbol(_) => return Err("its vocabulary is not fixed".into()),
    };
    let windows = (text.ids.len() / length).min(max_windows);
    if windows == 0 {
        return Err(format!("the text has {} tokens, fewer than {length}", text.ids.len()));
    }
    let mut out = WindowScores {
        window_losses: Vec::with_capacity(windows),
        position_sums: vec![0.0; length - 1],
        position_counts: vec![0; length - 1],
    };
    for w in text.ids.chunks_exact(length).take(windows) {
        if let Some(bad) = w.iter().find(|&&t| tokens.index_bound.as_ref().is_some_and(|b| t >= b.limit)) {
            return Err(format!("the tokenizer gave id {bad}, past its vocabulary"));
        }
        let mut inputs = Vec::new();
        // Inputs with a default (an attention mask, position ids) keep it.
        for spec in m.inputs.iter().filter(|s| s.default.is_none()) {
            let values = if spec.name == tokens.name {
                w.to_vec()
            } else if spec.dtype != DType::F32 && spec.shape == tokens.shape {
                vec![1; length]
            } else {
                return Err(format!("cannot fill its input \"{}\" for a text", spec.name));
            };
            inputs.push(HostTensor::from_i64(spec.name.clone(), [1, length], values).map_err(|e| e.to_string())?);
        }
        let result = model.run(&inputs).map_err(|e| e.to_string())?;
        let values = result[0].as_f32().ok_or("logits are not f32")?;
        let mut total = 0.0;
        for t in 0..length - 1 {
            let row = &values[t * vocab..(t + 1) * vocab];
            let max = row.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b)) as f64;
            let log_sum = row.iter().map(|&x| (x as f64 - max).exp()).sum::<f64>().ln() + max;
            let loss = log_sum - row[w[t + 1] as usize] as f64;
            out.position_sums[t] += loss;
            out.position_counts[t] += 1;
            total += loss;
        }
        out.window_losses.push(total / (length - 1) as f64);
    }
    Ok(out)
}
