//! Checkpoints in half precision: bf16 and f16 tensors (how most checkpoints on the Hugging Face
//! Hub are stored) are widened to f32 when a model's f32 parameter is bound to them. Widening is
//! exact: every bf16 and f16 value is an f32 value, so the model computes with the checkpoint's
//! own numbers, in f32.

/// A half-precision element type a checkpoint may store an f32 parameter in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Half {
    /// bfloat16: the top 16 bits of an f32.
    Bf16,
    /// IEEE 754 binary16.
    F16,
}

impl Half {
    /// The half type a safetensors dtype name (`BF16`, `F16`) stands for.
    pub fn from_name(name: &str) -> Option<Half> {
        match name {
            "BF16" => Some(Half::Bf16),
            "F16" => Some(Half::F16),
            _ => None,
        }
    }

    /// The little-endian elements of `bytes`, widened to f32.
    pub fn widen(self, bytes: &[u8]) -> Vec<f32> {
        let halves = bytes.chunks_exact(2).map(|b| u16::from_le_bytes([b[0], b[1]]));
        match self {
            Half::Bf16 => halves.map(|h| f32::from_bits(u32::from(h) << 16)).collect(),
            Half::F16 => halves.map(f16_to_f32).collect(),
        }
    }
}

/// An IEEE binary16 value as f32: normal, subnormal, zero, infinite and NaN values alike.
pub fn f16_to_f32(h: u16) -> f32 {
    let sign = u32::from(h >> 15) << 31;
    let exponent = u32::from((h >> 10) & 0x1f);
    let mantissa = u32::from(h & 0x3ff);
    let bits = match (exponent, mantissa) {
        (0, 0) => sign,
        // Subnormal: mantissa · 2^-24, renormalised for f32.
        (0, m) => {
            let shift = m.leading_zeros() - 21;
            sign | ((127 - 15 + 1 - shift) << 23) | ((m << shift) & 0x3ff) << 13
        }
        (0x1f, 0) => sign | 0x7f80_0000,
        (0x1f, m) => sign | 0x7fc0_0000 | (m << 13),
        (e, m) => sign | ((e + 127 - 15) << 23) | (m << 13),
    };
    f32::from_bits(bits)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bf16_is_the_top_half_of_an_f32() {
        for x in [0.0f32, -0.0, 1.0, -2.5, 3.140625, 1e-30, -6.5e20, f32::INFINITY, f32::NEG_INFINITY] {
            // A bf16 value: an f32 whose low 16 bits are zero.
            let x = f32::from_bits(x.to_bits() & 0xffff_0000);
            let top = (x.to_bits() >> 16) as u16;
            assert_eq!(Half::Bf16.widen(&top.to_le_bytes())[0].to_bits(), x.to_bits(), "{x}");
        }
        assert!(Half::Bf16.widen(&0x7fc1u16.to_le_bytes())[0].is_nan());
    }

    #[test]
    fn f16_values_of_every_kind() {
        let cases: [(u16, f32); 10] = [
            (0x0000, 0.0),
            (0x8000, -0.0),
            (0x3c00, 1.0),
            (0xc000, -2.0),
            (0x3555, 0.333_251_95),
            (0x7bff, 65504.0),
            (0x0400, 6.103_515_6e-5), // smallest normal
            (0x0001, 5.960_464_5e-8), // smallest subnormal
            (0x03ff, 6.097_555e-5),   // largest subnormal
            (0xfc00, f32::NEG_INFINITY),
        ];
        for (h, want) in cases {
            let got = f16_to_f32(h);
            assert_eq!(got.to_bits(), want.to_bits(), "{h:#06x}: {got:e} != {want:e}");
        }
        assert!(f16_to_f32(0x7e00).is_nan());
        assert_eq!(f16_to_f32(0x7c00), f32::INFINITY);
    }

    #[test]
    fn every_finite_f16_widens_to_its_value() {
        for h in 0..=u16::MAX {
            let (e, m) = (i32::from((h >> 10) & 0x1f), f64::from(h & 0x3ff));
            if e == 0x1f {
                continue;
            }
            let magnitude = match e {
                0 => m * 2f64.powi(-24),
                e => (1.0 + m / 1024.0) * 2f64.powi(e - 15),
            };
            let want = if h >> 15 == 1 { -magnitude } else { magnitude };
            assert_eq!(f64::from(f16_to_f32(h)), want, "{h:#06x}");
        }
    }
}
