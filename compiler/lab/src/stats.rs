//! The statistics of `lmc ab`: percentiles of latencies, and the ratio of two variants' latencies
//! with a bootstrap confidence interval from paired, interleaved runs.

/// A small deterministic generator (SplitMix64): inputs and bootstrap resamples are the same on
/// every run of the same command.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (`n > 0`).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }

    /// Uniform in `[-1, 1)`.
    pub fn symmetric(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 23) as f32 - 1.0
    }
}

/// The `q`-quantile (0 ≤ q ≤ 1) of `values`, interpolating linearly between order statistics.
pub fn quantile(values: &[f64], q: f64) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    if v.is_empty() {
        return f64::NAN;
    }
    let pos = q.clamp(0.0, 1.0) * (v.len() - 1) as f64;
    let (lo, hi) = (pos.floor() as usize, pos.ceil() as usize);
    v[lo] + (v[hi] - v[lo]) * (pos - lo as f64)
}

/// How much slower `b` is than `a` (`> 1`: slower), from runs paired by round: the median of
/// the per-round ratios, with a 95% percentile-bootstrap interval. Medians of log-ratios keep a
/// stray slow run (another process, a page fault) from moving the estimate.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Ratio {
    pub estimate: f64,
    pub low: f64,
    pub high: f64,
}

pub fn paired_ratio(a: &[f64], b: &[f64], rng: &mut Rng) -> Ratio {
    let logs: Vec<f64> = a.iter().zip(b).map(|(x, y)| (y / x).ln()).collect();
    let estimate = quantile(&logs, 0.5).exp();
    const RESAMPLES: usize = 2000;
    let mut medians = Vec::with_capacity(RESAMPLES);
    let mut sample = vec![0.0; logs.len()];
    for _ in 0..RESAMPLES {
        for s in sample.iter_mut() {
            *s = logs[rng.below(logs.len() as u64) as usize];
        }
        medians.push(quantile(&sample, 0.5));
    }
    Ratio {
        estimate,
        low: quantile(&medians, 0.025).exp(),
        high: quantile(&medians, 0.975).exp(),
    }
}

/// "B is 1.31× faster [1.27, 1.35]", or no significant difference when the interval holds 1.
pub fn verdict(name: &str, r: Ratio) -> String {
    if r.high < 1.0 {
        format!(
            "{name} is {:.2}× faster [{:.2}, {:.2}]",
            1.0 / r.estimate,
            1.0 / r.high,
            1.0 / r.low
        )
    } else if r.low > 1.0 {
        format!("{name} is {:.2}× slower [{:.2}, {:.2}]", r.estimate, r.low, r.high)
    } else {
        format!(
            "no significant difference ({name} takes {:.2}× the time [{:.2}, {:.2}])",
            r.estimate, r.low, r.high
        )
    }
}

/// Largest absolute difference and cosine similarity of two equally long vectors.
pub fn divergence(a: &[f32], b: &[f32]) -> (f64, f64) {
    let mut max = 0.0f64;
    let (mut dot, mut na, mut nb) = (0.0f64, 0.0f64, 0.0f64);
    for (x, y) in a.iter().zip(b) {
        let (x, y) = (*x as f64, *y as f64);
        max = max.max((x - y).abs());
        dot += x * y;
        na += x * x;
        nb += y * y;
    }
    let cosine = if na == 0.0 || nb == 0.0 {
        f64::NAN
    } else {
        dot / (na.sqrt() * nb.sqrt())
    };
    (max, cosine)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_interpolate() {
        let v = [4.0, 1.0, 3.0, 2.0, 5.0];
        assert_eq!(quantile(&v, 0.5), 3.0);
        assert_eq!(quantile(&v, 0.0), 1.0);
        assert_eq!(quantile(&v, 1.0), 5.0);
        assert!((quantile(&v, 0.1) - 1.4).abs() < 1e-12);
    }

    #[test]
    fn a_clear_slowdown_is_significant_and_noise_is_not() {
        let mut rng = Rng::new(1);
        let a: Vec<f64> = (0..20).map(|i| 10.0 + (i % 3) as f64 * 0.1).collect();
        let slower: Vec<f64> = a.iter().enumerate().map(|(i, x)| x * 1.5 + (i % 2) as f64 * 0.05).collect();
        let r = paired_ratio(&a, &slower, &mut rng);
        assert!(r.low > 1.4 && r.high < 1.6, "{r:?}");
        assert!(verdict("B", r).starts_with("B is 1.50× slower"), "{}", verdict("B", r));
        // Same distribution, shuffled pairing: the interval holds 1.
        let same: Vec<f64> = a.iter().rev().copied().collect();
        let r = paired_ratio(&a, &same, &mut rng);
        assert!(r.low <= 1.0 && r.high >= 1.0, "{r:?}");
        assert!(verdict("B", r).starts_with("no significant difference"));
        // One outlier round does not move the estimate.
        let mut outlier = a.clone();
        outlier[3] *= 50.0;
        let r = paired_ratio(&a, &outlier, &mut rng);
        assert!((r.estimate - 1.0).abs() < 1e-9, "{r:?}");
    }

    #[test]
    fn divergence_of_equal_and_opposite_vectors() {
        let (max, cos) = divergence(&[1.0, 2.0], &[1.0, 2.0]);
        assert_eq!(max, 0.0);
        assert!((cos - 1.0).abs() < 1e-12);
        let (max, cos) = divergence(&[1.0, 0.0], &[-1.0, 0.0]);
        assert_eq!(max, 2.0);
        assert!((cos + 1.0).abs() < 1e-12);
    }
}

/// Student's t quantile for a two-sided 95% interval with `df` degrees of freedom (a table to
/// 30; 1.96 past it).
fn t_95(df: usize) -> f64 {
    const TABLE: [f64; 30] = [
        12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145, 2.131, 2.120, 2.110, 2.101,
        2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042,
    ];
    match df {
        0 => f64::NAN,
        d if d <= 30 => TABLE[d - 1],
        _ => 1.96,
    }
}

/// The mean of `values` and its 95% t-interval (mean ± t · s / √n); the interval is the mean
/// itself for a single value.
pub fn t_interval(values: &[f64]) -> (f64, f64, f64) {
    let n = values.len();
    if n == 0 {
        return (f64::NAN, f64::NAN, f64::NAN);
    }
    let mean = values.iter().sum::<f64>() / n as f64;
    if n == 1 {
        return (mean, mean, mean);
    }
    let var = values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1) as f64;
    let half = t_95(n - 1) * (var / n as f64).sqrt();
    (mean, mean - half, mean + half)
}

#[cfg(test)]
mod t_tests {
    use super::*;

    #[test]
    fn t_interval_of_three_values() {
        // mean 2, s = 1, n = 3: 2 ± 4.303 / √3.
        let (m, lo, hi) = t_interval(&[1.0, 2.0, 3.0]);
        assert_eq!(m, 2.0);
        assert!((hi - m - 4.303 / 3f64.sqrt()).abs() < 1e-12);
        assert!((m - lo - 4.303 / 3f64.sqrt()).abs() < 1e-12);
        assert_eq!(t_interval(&[5.0]), (5.0, 5.0, 5.0));
    }
}
