//! Random weights for a module, for running an architectural variant that has no checkpoint
//! (`lmc run --random-weights --seed N`), initialised as transformers initialises a fresh model:
//! matrices (and every other f32 parameter) from N(0, 0.02²); vectors named `*bias` zero and
//! vectors named `*weight` one (a norm's gain: drawn from N(0, 0.02²), every post-norm layer
//! would shrink what depends on the input some thirtyfold, and a 12-layer model's output would
//! not depend on its input at all); integer parameters zero. Each tensor is seeded by the seed
//! and its name alone, so adding a parameter does not change the others.

use crate::error::RuntimeError;
use crate::safetensors::{safetensors_bytes, SafeTensorsFile};
use lmc_abi::{DType, Dim, Manifest};

/// SplitMix64: small, fast, and good enough for test weights.
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A uniform number in (0, 1].
    fn unit(&mut self) -> f64 {
        ((self.next() >> 11) as f64 + 1.0) / (1u64 << 53) as f64
    }

    /// A standard normal number (Box–Muller).
    fn normal(&mut self) -> f64 {
        let (u, v) = (self.unit(), self.unit());
        (-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos()
    }
}

/// FNV-1a, to seed each tensor by its name.
fn name_hash(name: &str) -> u64 {
    name.bytes()
        .fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ b as u64).wrapping_mul(0x0100_0000_01b3))
}

/// A checkpoint holding every parameter of `manifest`, drawn from `seed`.
pub fn random_weights(manifest: &Manifest, seed: u64) -> Result<SafeTensorsFile, RuntimeError> {
    let mut tensors: Vec<(String, DType, Vec<usize>, Vec<u8>)> = Vec::new();
    // A tensor that feeds two parameters (one packed for a weight format) is made once.
    for (k, p) in manifest.params.iter().enumerate() {
        if manifest.params[..k].iter().any(|q| q.name == p.name) {
            continue;
        }
        let shape: Vec<usize> = p
            .shape
            .iter()
            .map(|d| match d {
                Dim::Static(n) if *n >= 0 => Ok(*n as usize),
                _ => Err(RuntimeError::internal(format!(
                    "parameter {} has a shape that is not fixed",
                    p.name
                ))),
            })
            .collect::<Result<_, _>>()?;
        let count = shape
            .iter()
            .try_fold(1usize, |a, &d| a.checked_mul(d))
            .filter(|n| n.checked_mul(p.dtype.size_bytes()).is_some_and(|b| b <= isize::MAX as usize))
            .ok_or_else(|| RuntimeError::internal(format!("parameter {} is too large", p.name)))?;
        let vector = shape.len() == 1;
        let bytes = match p.dtype {
            DType::F32 if vector && p.name.ends_with("bias") => vec![0u8; count * 4],
            DType::F32 if vector && p.name.ends_with("weight") => 1f32.to_le_bytes().repeat(count),
            DType::F32 => {
                let mut rng = SplitMix(seed ^ name_hash(&p.name));
                (0..count).flat_map(|_| ((rng.normal() * 0.02) as f32).to_le_bytes()).collect()
            }
            DType::I64 | DType::I32 => vec![0u8; count * p.dtype.size_bytes()],
        };
        tensors.push((p.name.clone(), p.dtype, shape, bytes));
    }
    let refs: Vec<(&str, DType, &[usize], &[u8])> = tensors
        .iter()
        .map(|(n, d, s, b)| (n.as_str(), *d, s.as_slice(), b.as_slice()))
        .collect();
    let bytes = safetensors_bytes(&refs).map_err(|e| RuntimeError::internal(format!("cannot build random weights: {e}")))?;
    SafeTensorsFile::from_bytes(format!("<random weights, seed {seed}>"), bytes).map_err(RuntimeError::from)
}

#[cfg(test)]
mod tests {
    use super::*;
    use lmc_abi::TensorSpec;

    fn manifest(params: Vec<TensorSpec>) -> Manifest {
        Manifest {
            abi_version: lmc_abi::ABI_VERSION,
            generator: "test".into(),
            model: "M".into(),
            config: vec![],
            symbols: vec![],
            params,
            inputs: vec![],
            outputs: vec![],
            entries: vec![],
            decode: None,
            device: Default::default(),
        }
    }

    fn spec(name: &str, shape: &[i64]) -> TensorSpec {
        TensorSpec {
            name: name.into(),
            dtype: DType::F32,
            shape: shape.iter().map(|&n| Dim::Static(n)).collect(),
            index_bound: None,
            packing: None,
            default: None,
        }
    }

    #[test]
    fn deterministic_per_seed_and_name_with_the_right_scale() {
        let m = manifest(vec![spec("a.weight", &[100, 50]), spec("b.bias", &[7])]);
        let one = random_weights(&m, 3).unwrap();
        let two = random_weights(&m, 3).unwrap();
        let other = random_weights(&m, 4).unwrap();
        let bytes = |f: &SafeTensorsFile, n: &str| f.get(n).unwrap().bytes().to_vec();
        assert_eq!(bytes(&one, "a.weight"), bytes(&two, "a.weight"));
        assert_ne!(bytes(&one, "a.weight"), bytes(&other, "a.weight"));
        let alone = random_weights(&manifest(vec![spec("a.weight", &[100, 50])]), 3).unwrap();
        assert_eq!(
            bytes(&one, "a.weight"),
            bytes(&alone, "a.weight"),
            "a tensor's values depend on its name only"
        );
        let t = one.get("a.weight").unwrap().to_host().unwrap();
        let v = t.as_f32().unwrap();
        let std = (v.iter().map(|x| (*x as f64).powi(2)).sum::<f64>() / v.len() as f64).sqrt();
        assert!((0.018..0.022).contains(&std), "standard deviation {std}");
    }

    #[test]
    fn norm_gains_are_one_and_biases_zero() -> Result<(), RuntimeError> {
        let m = manifest(vec![
            spec("ln.weight", &[4]),
            spec("ln.bias", &[4]),
            spec("proj.bias", &[3]),
            spec("mixer.D", &[4]),
        ]);
        let w = random_weights(&m, 1)?;
        let values = |n: &str| -> Vec<f32> {
            match w.get(n).map(|t| t.to_host()) {
                Some(Ok(t)) => t.as_f32().map(<[f32]>::to_vec).unwrap_or_default(),
                _ => Vec::new(),
            }
        };
        assert_eq!(values("ln.weight"), vec![1.0; 4]);
        assert_eq!(values("ln.bias"), vec![0.0; 4]);
        assert_eq!(values("proj.bias"), vec![0.0; 3]);
        let other = values("mixer.D");
        assert_eq!(other.len(), 4);
        assert!(other.iter().all(|v| *v != 0.0 && v.abs() < 0.2), "other vectors stay random");
        Ok(())
    }
}
