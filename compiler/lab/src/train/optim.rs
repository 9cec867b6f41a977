//! The optimizer, its learning-rate schedule and gradient clipping, as PyTorch and Hugging Face
//! define them: `torch.optim.AdamW` (decoupled weight decay, bias-corrected moments, `amsgrad`
//! off), `torch.nn.utils.clip_grad_norm_` (one L2 norm over every gradient), and the schedules
//! of `transformers.get_scheduler`. Element-wise over flat f32 buffers; the moments stay in f32
//! as torch keeps them.

use std::f64::consts::PI;

/// AdamW's hyperparameters (`TrainingArguments`' names and defaults).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdamW {
    pub beta1: f64,
    pub beta2: f64,
    pub epsilon: f64,
    pub weight_decay: f64,
}

impl Default for AdamW {
    fn default() -> Self {
        AdamW {
            beta1: 0.9,
            beta2: 0.999,
            epsilon: 1e-8,
            weight_decay: 0.0,
        }
    }
}

impl AdamW {
    /// One update of `param` by `grad` (times `grad_scale`, the clipping factor) at learning
    /// rate `lr`; `step` counts from 1 (the bias corrections' exponent). In torch's order of operations (`_single_tensor_adamw`):
    /// `p *= 1 - lr·wd; m = β1·m + (1-β1)·g; v = β2·v + (1-β2)·g²;
    ///  p -= lr/(1-β1^t) · m / (√v / √(1-β2^t) + ε)`.
    #[allow(clippy::too_many_arguments)]
    pub fn update(&self, step: u64, lr: f64, grad_scale: f32, param: &mut [f32], grad: &[f32], m: &mut [f32], v: &mut [f32]) {
        // torch computes these scalars in Python floats (f64) and rounds them to f32 in the ops.
        let t = i32::try_from(step).unwrap_or(i32::MAX);
        let bias_correction1 = 1.0 - self.beta1.powi(t);
        let bias_correction2_sqrt = (1.0 - self.beta2.powi(t)).sqrt() as f32;
        let step_size = (lr / bias_correction1) as f32;
        let decay = (1.0 - lr * self.weight_decay) as f32;
        let (one_minus_b1, b2, one_minus_b2) = ((1.0 - self.beta1) as f32, self.beta2 as f32, (1.0 - self.beta2) as f32);
        let eps = self.epsilon as f32;
        for (((p, &g), m), v) in param.iter_mut().zip(grad).zip(m.iter_mut()).zip(v.iter_mut()) {
            let g = g * grad_scale;
            *p *= decay;
            *m += (g - *m) * one_minus_b1;
            *v = *v * b2 + one_minus_b2 * g * g;
            let denom = v.sqrt() / bias_correction2_sqrt + eps;
            *p -= step_size * *m / denom;
        }
    }
}

impl AdamW {
    /// [`AdamW::update`] on `threads` threads, each over its own contiguous part of the
    /// parameter (the same arithmetic per element, so the same result).
    #[allow(clippy::too_many_arguments)]
    pub fn update_threaded(
        &self,
        threads: usize,
        step: u64,
        lr: f64,
        grad_scale: f32,
        param: &mut [f32],
        grad: &[f32],
        m: &mut [f32],
        v: &mut [f32],
    ) {
        // Below this many elements a thread costs more than it saves.
        const SERIAL: usize = 1 << 15;
        if threads <= 1 || param.len() < SERIAL {
            return self.update(step, lr, grad_scale, param, grad, m, v);
        }
        let chunk = param.len().div_ceil(threads);
        std::thread::scope(|s| {
            let parts = param
                .chunks_mut(chunk)
                .zip(grad.chunks(chunk))
                .zip(m.chunks_mut(chunk))
                .zip(v.chunks_mut(chunk));
            for (((p, g), m), v) in parts {
                s.spawn(move || self.update(step, lr, grad_scale, p, g, m, v));
            }
        });
    }
}

/// The L2 norm of every gradient together (f64 sums, so the order of the tensors does not
/// matter), as `clip_grad_norm_` returns it.
pub fn global_norm<'a>(grads: impl Iterator<Item = &'a [f32]>) -> f64 {
    grads
        .map(|g| g.iter().map(|&x| f64::from(x) * f64::from(x)).sum::<f64>())
        .sum::<f64>()
        .sqrt()
}

/// The factor `clip_grad_norm_(max_norm)` scales every gradient by: `max_norm / (norm + 1e-6)`,
/// at most 1. `None` when clipping is off (`max_norm` 0).
pub fn clip_factor(norm: f64, max_norm: f64) -> Option<f32> {
    if max_norm <= 0.0 {
        return None;
    }
    Some((max_norm / (norm + 1e-6)).min(1.0) as f32)
}

/// `--lr-scheduler-type`: `transformers.get_scheduler`'s schedules.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Schedule {
    /// The learning rate throughout; `--warmup-steps` has no effect (as in transformers).
    Constant,
    /// Linear warm-up from 0, then the learning rate.
    ConstantWithWarmup,
    /// Linear warm-up, then linear decay to 0 at the last step.
    Linear,
    /// Linear warm-up, then half a cosine down to 0 at the last step.
    Cosine,
}

impl Schedule {
    pub const NAMES: &'static [&'static str] = &["constant", "constant_with_warmup", "linear", "cosine"];

    pub fn parse(name: &str) -> Option<Schedule> {
        Some(match name {
            "constant" => Schedule::Constant,
            "constant_with_warmup" => Schedule::ConstantWithWarmup,
            "linear" => Schedule::Linear,
            "cosine" => Schedule::Cosine,
            _ => return None,
        })
    }

    pub fn name(&self) -> &'static str {
        match self {
            Schedule::Constant => "constant",
            Schedule::ConstantWithWarmup => "constant_with_warmup",
            Schedule::Linear => "linear",
            Schedule::Cosine => "cosine",
        }
    }

    /// The factor of the learning rate at `step` (counted from 0: the first update uses
    /// factor(0)), over `total` steps with `warmup` of warm-up; the `lr_lambda`s of
    /// transformers' `optimization.py`.
    pub fn factor(&self, step: u64, total: u64, warmup: u64) -> f64 {
        let (s, n, w) = (step as f64, total as f64, warmup as f64);
        let warming = step < warmup;
        match self {
            Schedule::Constant => 1.0,
            Schedule::ConstantWithWarmup if warming => s / w.max(1.0),
            Schedule::ConstantWithWarmup => 1.0,
            Schedule::Linear if warming => s / w.max(1.0),
            Schedule::Linear => ((n - s) / (n - w).max(1.0)).max(0.0),
            Schedule::Cosine if warming => s / w.max(1.0),
            Schedule::Cosine => {
                let progress = (s - w) / (n - w).max(1.0);
                (0.5 * (1.0 + (PI * progress).cos())).max(0.0)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedules_follow_transformers_lambdas() {
        // get_linear_schedule_with_warmup(warmup=2, total=10): 0, .5, then (10-s)/8.
        let f: Vec<f64> = (0..10).map(|s| Schedule::Linear.factor(s, 10, 2)).collect();
        assert_eq!(f[0], 0.0);
        assert_eq!(f[1], 0.5);
        assert_eq!(f[2], 1.0);
        assert!((f[6] - 0.5).abs() < 1e-12);
        assert!((f[9] - 0.125).abs() < 1e-12);
        // Cosine: 1 after warm-up, 0.5 half way through the decay.
        assert_eq!(Schedule::Cosine.factor(2, 10, 2), 1.0);
        assert!((Schedule::Cosine.factor(6, 10, 2) - 0.5).abs() < 1e-12);
        assert_eq!(Schedule::Constant.factor(0, 10, 5), 1.0);
        assert_eq!(Schedule::ConstantWithWarmup.factor(1, 10, 4), 0.25);
        for name in Schedule::NAMES {
            assert_eq!(Schedule::parse(name).map(|s| s.name()), Some(*name));
        }
    }

    #[test]
    fn adamw_first_step_moves_each_weight_by_lr() {
        // At t = 1, m̂ = g and v̂ = g², so each weight moves by lr · g / (|g| + ε) ≈ lr · sign(g).
        let opt = AdamW {
            weight_decay: 0.0,
            ..AdamW::default()
        };
        let mut p = vec![1.0f32, -2.0, 0.5];
        let g = [0.3f32, -4.0, 1e-3];
        let (mut m, mut v) = (vec![0.0; 3], vec![0.0; 3]);
        opt.update(1, 0.01f64, 1.0, &mut p, &g, &mut m, &mut v);
        assert!((p[0] - 0.99).abs() < 1e-6, "{p:?}");
        assert!((p[1] + 1.99).abs() < 1e-6, "{p:?}");
        assert!((p[2] - 0.49).abs() < 1e-5, "{p:?}");
        // Decoupled decay: a zero gradient still shrinks the weight by lr · wd.
        let opt = AdamW {
            weight_decay: 0.1,
            ..AdamW::default()
        };
        let mut p = vec![2.0f32];
        opt.update(1, 0.5, 1.0, &mut p, &[0.0], &mut [0.0], &mut [0.0]);
        assert!((p[0] - 1.9).abs() < 1e-6);
    }

    #[test]
    fn threads_compute_what_one_thread_does() {
        let opt = AdamW {
            weight_decay: 0.01,
            ..AdamW::default()
        };
        let n = 100_003;
        let grad: Vec<f32> = (0..n).map(|i| ((i * 7919) % 1000) as f32 / 500.0 - 1.0).collect();
        let start: Vec<f32> = (0..n).map(|i| (i % 13) as f32 * 0.1).collect();
        let (mut p1, mut m1, mut v1) = (start.clone(), vec![0.0; n], vec![0.0; n]);
        let (mut p3, mut m3, mut v3) = (start, vec![0.0; n], vec![0.0; n]);
        for step in 1..=3 {
            opt.update(step, 1e-3, 0.5, &mut p1, &grad, &mut m1, &mut v1);
            opt.update_threaded(3, step, 1e-3, 0.5, &mut p3, &grad, &mut m3, &mut v3);
        }
        assert_eq!((p1, m1, v1), (p3, m3, v3));
    }

    #[test]
    fn clipping_scales_to_the_max_norm() {
        let a = [3.0f32];
        let b = [4.0f32];
        let norm = global_norm([&a[..], &b[..]].into_iter());
        assert_eq!(norm, 5.0);
        let f = clip_factor(norm, 1.0).unwrap();
        assert!((f - 0.2).abs() < 1e-6);
        assert_eq!(clip_factor(norm, 10.0), Some(1.0));
        assert_eq!(clip_factor(norm, 0.0), None);
    }
}
