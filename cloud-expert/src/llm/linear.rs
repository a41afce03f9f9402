//! Frozen linear-layer weights in the precision the server decodes with.
//!
//! - `F32`: the loaded weights as they are (shares their storage).
//! - `Bf16`: bfloat16 weights and activations inside the GEMM (half the bytes per token; fast on
//!   CPUs with AVX512-BF16 or AMX), float32 outside.
//! - `Int8`: weight-only int8 with one symmetric scale per output row (`w ~ scale * q`), through
//!   ATen's `_weight_int8pack_mm` with bfloat16 activations (its float32-activation kernel is a
//!   slow fallback on CPU, 8x slower here): a quarter of the float32 bytes per token.

use tch::{Kind, Tensor};

/// Weight precision for decoding.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// float32 (reference).
    #[default]
    F32,
    /// bfloat16 weights.
    Bf16,
    /// int8 weights, per-row scales.
    Int8,
}

/// One (d_out, d_in) weight.
#[derive(Debug)]
pub enum Weight {
    /// float32.
    F32(Tensor),
    /// bfloat16.
    Bf16(Tensor),
    /// int8 rows and their float32 scales (d_out).
    Int8 {
        /// (d_out, d_in) int8.
        q: Tensor,
        /// (d_out,) bfloat16.
        scales: Tensor,
    },
}

impl Weight {
    /// `w` (float32) in `precision`.
    pub fn new(w: &Tensor, precision: Precision) -> Self {
        match precision {
            Precision::F32 => Weight::F32(w.shallow_clone()),
            Precision::Bf16 => Weight::Bf16(w.to_kind(Kind::BFloat16)),
            Precision::Int8 => {
                let scales = w.abs().amax([1i64].as_slice(), false).clamp_min(1e-12) / 127.0;
                let q = (w / scales.unsqueeze(1))
                    .round()
                    .clamp(-127.0, 127.0)
                    .to_kind(Kind::Int8);
                Weight::Int8 {
                    q,
                    scales: scales.to_kind(Kind::BFloat16),
                }
            }
        }
    }

    /// `x W^T` for `x` of shape (..., d_in), float32 in and out.
    pub fn apply(&self, x: &Tensor) -> Tensor {
        match self {
            Weight::F32(w) => x.linear::<&Tensor>(w, None),
            Weight::Bf16(w) => x
                .to_kind(Kind::BFloat16)
                .linear::<&Tensor>(w, None)
                .to_kind(Kind::Float),
            Weight::Int8 { q, scales } => {
                let size = x.size();
                let d_in = size[size.len() - 1];
                let mut out = size[..size.len() - 1].to_vec();
                out.push(q.size()[0]);
                x.reshape([-1, d_in])
                    .to_kind(Kind::BFloat16)
                    .internal_weight_int8pack_mm(q, scales)
                    .to_kind(Kind::Float)
                    .reshape(out)
            }
        }
    }

    /// Bytes read per use.
    pub fn bytes(&self) -> usize {
        match self {
            Weight::F32(w) | Weight::Bf16(w) => w.numel() * w.kind().elt_size_in_bytes(),
            Weight::Int8 { q, scales } => q.numel() + 2 * scales.numel(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_precision_approximates_the_float32_product() {
        let _g = tch::no_grad_guard();
        tch::manual_seed(3);
        let w = Tensor::randn([48, 64], (Kind::Float, tch::Device::Cpu));
        let x = Tensor::randn([2, 3, 64], (Kind::Float, tch::Device::Cpu));
        let want = x.matmul(&w.tr());
        let scale = want.abs().max().double_value(&[]);
        for (p, tol) in [
            (Precision::F32, 1e-6),
            (Precision::Bf16, 2e-2),
            (Precision::Int8, 2e-2),
        ] {
            let wt = Weight::new(&w, p);
            let got = wt.apply(&x);
            assert_eq!(got.size(), [2, 3, 48]);
            let rel = (got - &want).abs().max().double_value(&[]) / scale;
            assert!(rel < tol, "{p:?}: relative error {rel}");
        }
        assert_eq!(Weight::new(&w, Precision::Int8).bytes(), 48 * 64 + 2 * 48);
        assert_eq!(Weight::new(&w, Precision::F32).bytes(), 48 * 64 * 4);
    }
}
