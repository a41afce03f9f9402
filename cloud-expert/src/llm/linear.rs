//! Frozen linear-layer weights in the precision the server decodes with.
//!
//! - `F32`: the loaded weights as they are (shares their storage); for serving
//!   ([`Weight::new_serving`]) also a Rust copy that the multi-threaded decoding kernel of
//!   `offload-kernels` streams once per step (libtorch's float32 GEMV uses one thread here).
//! - `Bf16`: bfloat16 weights and activations inside the GEMM (half the bytes per token; fast on
//!   CPUs with AVX512-BF16 or AMX), float32 outside.
//! - `Int8`: weight-only int8 with one symmetric scale per output row (`w ~ scale * q`), through
//!   ATen's `_weight_int8pack_mm` with bfloat16 activations (its float32-activation kernel is a
//!   slow fallback on CPU, 8x slower here): a quarter of the float32 bytes per token.

use std::sync::OnceLock;
use tch::{Kind, Tensor};

static POOL: OnceLock<offload_kernels::Pool> = OnceLock::new();

/// Sets the decoding kernel's thread count (first call wins; default 2).
pub fn init_kernel_threads(threads: usize) {
    let _ = POOL.get_or_init(|| {
        offload_kernels::Pool::new(threads).unwrap_or_else(|e| panic!("kernel pool: {e}"))
    });
}

/// Runs `f` as one of the decoding kernel's worker threads (see `offload_kernels::Pool::install`).
pub fn run_in_kernel_pool<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    pool().install(f)
}

fn pool() -> &'static offload_kernels::Pool {
    POOL.get_or_init(|| {
        offload_kernels::Pool::new(2).unwrap_or_else(|e| panic!("kernel pool: {e}"))
    })
}

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
    /// float32 with a row-major copy for the decoding kernel.
    F32Rows {
        /// The tensor (training and wide inputs).
        t: Tensor,
        /// The kernel's copy.
        rows: Fused,
    },
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

    /// Like [`Weight::new`], but float32 weights also get the decoding kernel's copy.
    pub fn new_serving(w: &Tensor, precision: Precision) -> Self {
        if precision != Precision::F32 {
            return Self::new(w, precision);
        }
        match Fused::new(&[w]) {
            Some(rows) => Weight::F32Rows {
                t: w.shallow_clone(),
                rows,
            },
            None => Weight::F32(w.shallow_clone()),
        }
    }

    /// `x W^T` for `x` of shape (..., d_in), float32 in and out.
    pub fn apply(&self, x: &Tensor) -> Tensor {
        match self {
            Weight::F32(w) => x.linear::<&Tensor>(w, None),
            Weight::F32Rows { t, rows } => rows
                .try_apply(x)
                .and_then(|mut parts| parts.pop())
                .unwrap_or_else(|| x.linear::<&Tensor>(t, None)),
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
            Weight::F32(w) | Weight::Bf16(w) | Weight::F32Rows { t: w, .. } => {
                w.numel() * w.kind().elt_size_in_bytes()
            }
            Weight::Int8 { q, scales } => q.numel() + 2 * scales.numel(),
        }
    }
}

/// Several float32 matrices with the same input stacked row-wise for the decoding kernel
/// (q, k, v; gate, up): one pass over their weights and one dispatch instead of several.
#[derive(Debug)]
pub struct Fused {
    data: Vec<f32>,
    k: usize,
    /// Output width of each part, in order.
    parts: Vec<usize>,
}

impl Fused {
    /// Stacks `ws` (each (d_out_i, d_in)); None if they do not share d_in.
    pub fn new(ws: &[&Tensor]) -> Option<Self> {
        let k = ws.first()?.size()[1];
        if ws.iter().any(|w| w.size()[1] != k) {
            return None;
        }
        let cat = Tensor::cat(ws, 0).to_kind(Kind::Float).contiguous();
        let data = Vec::<f32>::try_from(cat.flatten(0, -1)).ok()?;
        Some(Self {
            data,
            k: k as usize,
            parts: ws.iter().map(|w| w.size()[0] as usize).collect(),
        })
    }

    /// Each part's `x W_i^T`, when the kernel applies; None otherwise (the caller then uses
    /// libtorch). The kernel serves decoding, up to 8 rows, where it streams the weights at
    /// memory speed; prompts (MKL's blocked GEMM is faster from ~16 rows) and anything that
    /// needs a gradient go to libtorch.
    pub fn try_apply(&self, x: &Tensor) -> Option<Vec<Tensor>> {
        let size = x.size();
        let rows: i64 = size[..size.len() - 1].iter().product();
        if rows > 8 || x.requires_grad() || x.kind() != Kind::Float {
            return None;
        }
        let xs = Vec::<f32>::try_from(x.contiguous().view([-1])).ok()?;
        let n: usize = self.parts.iter().sum();
        let b = rows as usize;
        let mut out = vec![0f32; n * b];
        pool().matmul_t(&self.data, n, self.k, &xs, b, &mut out);
        let y = Tensor::from_slice(&out).view([n as i64, rows]);
        let y = if b == 1 {
            y.view([1, n as i64])
        } else {
            y.tr().contiguous()
        };
        let mut start = 0;
        Some(
            self.parts
                .iter()
                .map(|&p| {
                    let mut shape = size[..size.len() - 1].to_vec();
                    shape.push(p as i64);
                    let part = y
                        .narrow(1, start, p as i64)
                        .contiguous()
                        .view(shape.as_slice());
                    start += p as i64;
                    part
                })
                .collect(),
        )
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
        // Fused parts equal the separate products.
        let w2 = Tensor::randn([16, 64], (Kind::Float, tch::Device::Cpu));
        let f = Fused::new(&[&w, &w2]).unwrap();
        let x = Tensor::randn([3, 64], (Kind::Float, tch::Device::Cpu));
        let parts = f.try_apply(&x).unwrap();
        assert!(
            (&parts[0] - x.matmul(&w.tr()))
                .abs()
                .max()
                .double_value(&[])
                < 1e-4
        );
        assert!(
            (&parts[1] - x.matmul(&w2.tr()))
                .abs()
                .max()
                .double_value(&[])
                < 1e-4
        );
        assert!(f
            .try_apply(&Tensor::randn([9, 64], (Kind::Float, tch::Device::Cpu)))
            .is_none());
        // The decoding kernel agrees with libtorch for 1 and several rows.
        let fast = Weight::new_serving(&w, Precision::F32);
        assert!(matches!(fast, Weight::F32Rows { .. }));
        for rows in [1, 5] {
            let x = Tensor::randn([rows, 1, 64], (Kind::Float, tch::Device::Cpu));
            let d = (fast.apply(&x) - x.matmul(&w.tr()))
                .abs()
                .max()
                .double_value(&[]);
            assert!(d < 1e-4, "{rows} rows: {d}");
        }
        assert_eq!(Weight::new(&w, Precision::F32).bytes(), 48 * 64 * 4);
    }
}
