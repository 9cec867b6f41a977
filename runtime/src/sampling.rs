//! How the next token is chosen from a position's logits: the argmax, or a draw from the
//! distribution transformers' `generate(do_sample=True)` draws from: the logits divided by the
//! temperature (`TemperatureLogitsWarper`), all but the `top_k` largest removed
//! (`TopKLogitsWarper`: ties with the k-th are kept), then the smallest whose probabilities add
//! up to at most `1 - top_p` removed (`TopPLogitsWarper`, keeping at least one), in that order
//! and in f32 as torch computes them; then the softmax. The draw uses lmc's own seeded
//! generator, so a seed gives the same tokens in lmc every time, not torch's tokens.

use crate::error::RuntimeError;

/// Sampling's settings; [`Sampler::new`] checks them.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sampling {
    pub temperature: f32,
    /// 0: no top-k filter.
    pub top_k: usize,
    /// 1: no top-p filter.
    pub top_p: f32,
    pub seed: u64,
}

/// Chooses tokens by [`Sampling`], drawing from its own generator.
#[derive(Debug, Clone)]
pub struct Sampler {
    settings: Sampling,
    state: u64,
}

impl Sampler {
    pub fn new(settings: Sampling) -> Result<Sampler, RuntimeError> {
        if !(settings.temperature > 0.0 && settings.temperature.is_finite()) {
            return Err(RuntimeError::input(format!(
                "temperature {} must be above 0 (for the argmax, do not sample)",
                settings.temperature
            )));
        }
        if !(settings.top_p > 0.0 && settings.top_p <= 1.0) {
            return Err(RuntimeError::input(format!("top_p {} must be in (0, 1]", settings.top_p)));
        }
        Ok(Sampler {
            settings,
            state: settings.seed,
        })
    }

    /// The probabilities a token is drawn with, from one position's logits.
    pub fn probabilities(&self, logits: &[f32]) -> Vec<f32> {
        let s = &self.settings;
        let mut scores: Vec<f32> = logits.iter().map(|&x| x / s.temperature).collect();
        if s.top_k > 0 && s.top_k < scores.len() {
            let mut sorted = scores.clone();
            sorted.sort_unstable_by(|a, b| b.total_cmp(a));
            let kth = sorted[s.top_k - 1];
            for x in &mut scores {
                if *x < kth {
                    *x = f32::NEG_INFINITY;
                }
            }
        }
        if s.top_p < 1.0 {
            // Ascending, as transformers sorts; the cumulative probability from the smallest.
            let mut order: Vec<usize> = (0..scores.len()).collect();
            order.sort_by(|&a, &b| scores[a].total_cmp(&scores[b]));
            let sorted: Vec<f32> = order.iter().map(|&i| scores[i]).collect();
            let probs = softmax(&sorted);
            let mut cumulative = 0.0f32;
            let last = order.len().saturating_sub(1);
            for (k, (&i, p)) in order.iter().zip(probs).enumerate() {
                cumulative += p;
                if cumulative <= 1.0 - s.top_p && k < last {
                    scores[i] = f32::NEG_INFINITY;
                }
            }
        }
        softmax(&scores)
    }

    /// A token drawn from [`Sampler::probabilities`].
    pub fn sample(&mut self, logits: &[f32]) -> i64 {
        let probs = self.probabilities(logits);
        let total: f64 = probs.iter().map(|&p| f64::from(p)).sum();
        let mut u = self.next_uniform() * total;
        for (k, &p) in probs.iter().enumerate() {
            u -= f64::from(p);
            if u < 0.0 && p > 0.0 {
                return k as i64;
            }
        }
        // Rounding left `u` at or above the last probability: the last token that can be drawn.
        probs.iter().rposition(|&p| p > 0.0).unwrap_or(0) as i64
    }

    /// SplitMix64, as a number in [0, 1).
    fn next_uniform(&mut self) -> f64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        (z >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// torch's softmax in f32: `exp(x - max)` normalised; -inf gives 0.
fn softmax(x: &[f32]) -> Vec<f32> {
    let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let e: Vec<f32> = x.iter().map(|&v| (v - max).exp()).collect();
    let sum: f32 = e.iter().sum();
    e.iter().map(|&v| v / sum).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    type TestResult = Result<(), Box<dyn std::error::Error>>;

    fn sampler(temperature: f32, top_k: usize, top_p: f32) -> Result<Sampler, RuntimeError> {
        Sampler::new(Sampling {
            temperature,
            top_k,
            top_p,
            seed: 3,
        })
    }

    /// Against transformers' warpers on the same logits: tests/fixtures/sampling (made by
    /// tests/reference/make_sampling_fixture.py).
    #[test]
    fn probabilities_match_transformers_warpers() -> TestResult {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/sampling");
        let file = crate::SafeTensorsFile::open(&dir.join("sampling.safetensors"))?;
        let logits = file.get("logits").ok_or("no logits in the fixture")?.to_host()?;
        let [rows, vocab] = logits.shape[..] else {
            return Err("logits are [rows, vocab]".into());
        };
        let logits = logits.as_f32().ok_or("logits are f32")?;
        let cases: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(dir.join("cases.json"))?)?;
        let number = |case: &serde_json::Value, key: &str| case[key].as_f64().ok_or(format!("case {case}: no number {key}"));
        for (c, case) in cases.as_array().ok_or("cases.json is a list")?.iter().enumerate() {
            let s = sampler(
                number(case, "temperature")? as f32,
                number(case, "top_k")? as usize,
                number(case, "top_p")? as f32,
            )?;
            let want = file
                .get(&format!("probs.{c}"))
                .ok_or(format!("no probs.{c} in the fixture"))?
                .to_host()?;
            let want = want.as_f32().ok_or("probabilities are f32")?;
            for r in 0..rows {
                let row = &logits[r * vocab..(r + 1) * vocab];
                let got = s.probabilities(row);
                let want = &want[r * vocab..(r + 1) * vocab];
                // Which of several tied tokens top-p drops follows the sort's order of ties,
                // which torch leaves unspecified: with ties, the distributions are compared as
                // sorted lists of probabilities.
                let tied = (0..vocab).any(|a| (a + 1..vocab).any(|b| row[a] == row[b]));
                let (mut g, mut w) = (got.clone(), want.to_vec());
                if tied {
                    g.sort_by(f32::total_cmp);
                    w.sort_by(f32::total_cmp);
                }
                for (k, (g, w)) in g.iter().zip(&w).enumerate() {
                    assert!((g - w).abs() <= 1e-6, "case {case}, row {r}, token {k}: {g} vs transformers' {w}");
                }
            }
        }
        Ok(())
    }

    #[test]
    fn draws_follow_the_probabilities_and_the_seed() -> TestResult {
        let logits = [0.0f32, 1.0, 2.0, -1.0];
        let mut s = sampler(1.0, 0, 1.0)?;
        let probs = s.probabilities(&logits);
        let mut counts = [0usize; 4];
        for _ in 0..20_000 {
            counts[s.sample(&logits) as usize] += 1;
        }
        for (c, p) in counts.iter().zip(&probs) {
            let f = *c as f32 / 20_000.0;
            assert!((f - p).abs() < 0.015, "{counts:?} vs {probs:?}");
        }
        let mut a = sampler(1.0, 0, 1.0)?;
        let mut b = sampler(1.0, 0, 1.0)?;
        let ta: Vec<i64> = (0..50).map(|_| a.sample(&logits)).collect();
        let tb: Vec<i64> = (0..50).map(|_| b.sample(&logits)).collect();
        assert_eq!(ta, tb, "the same seed draws the same tokens");
        // Top-k 1 is the argmax.
        let mut greedy = sampler(0.7, 1, 1.0)?;
        assert!((0..20).all(|_| greedy.sample(&logits) == 2));
        Ok(())
    }

    #[test]
    fn bad_settings_are_errors() {
        for (t, p) in [(0.0, 1.0), (f32::NAN, 1.0), (1.0, 0.0), (1.0, 1.5)] {
            assert!(Sampler::new(Sampling {
                temperature: t,
                top_k: 0,
                top_p: p,
                seed: 0
            })
            .is_err());
        }
    }
}
