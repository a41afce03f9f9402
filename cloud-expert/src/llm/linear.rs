//! Frozen linear-layer weights in the precision the server decodes with.
//!
//! - `F32`: the loaded weights as they are (shares their storage); for serving
//!   ([`Weight::new_serving`]) also a packed copy that the multi-threaded kernel of
//!   `offload-kernels` multiplies (libtorch's float32 GEMV uses one thread here; the kernel
//!   streams the weights once per decoding step and matches MKL on short prompts).
//! - `Bf16`: bfloat16 weights and activations inside the GEMM (half the bytes per token; fast on
//!   CPUs with AVX512-BF16 or AMX), float32 outside.
//! - `Int8`: weight-only int8 with one symmetric scale per output row (`w ~ scale * q`), packed
//!   for the same kernel, which widens the weights in registers: a quarter of the float32 bytes
//!   per token, float32 activations. Inference only (no gradient flows through it).

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

/// The kernel's thread pool (row-parallel host work runs on it too).
pub(super) fn kernel_pool() -> &'static offload_kernels::Pool {
    pool()
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
    /// Packed for the kernel (float32 or int8), with the float32 tensor for inputs that need a
    /// gradient when there is one.
    Kernel {
        /// The float32 tensor (training), absent for int8.
        t: Option<Tensor>,
        /// The kernel's copy.
        rows: Fused,
    },
    /// bfloat16.
    Bf16(Tensor),
}

impl Weight {
    /// `w` (float32) in `precision`; float32 stays a libtorch tensor (training, tests).
    pub fn new(w: &Tensor, precision: Precision) -> Self {
        match precision {
            Precision::F32 => Weight::F32(w.shallow_clone()),
            _ => Self::new_serving(w, precision),
        }
    }

    /// Like [`Weight::new`], but float32 weights also get the kernel's packed copy.
    pub fn new_serving(w: &Tensor, precision: Precision) -> Self {
        match precision {
            Precision::Bf16 => Weight::Bf16(w.to_kind(Kind::BFloat16)),
            Precision::F32 | Precision::Int8 => match Fused::new(&[w], precision) {
                Some(rows) => Weight::Kernel {
                    t: (precision == Precision::F32).then(|| w.shallow_clone()),
                    rows,
                },
                None => Weight::F32(w.shallow_clone()),
            },
        }
    }

    /// `x W^T` for `x` of shape (..., d_in), float32 in and out.
    pub fn apply(&self, x: &Tensor) -> Tensor {
        match self {
            Weight::F32(w) => x.linear::<&Tensor>(w, None),
            Weight::Kernel { t, rows } => match t {
                Some(t) if x.requires_grad() => x.linear::<&Tensor>(t, None),
                _ => rows
                    .apply(x)
                    .pop()
                    .unwrap_or_else(|| panic!("a one-part kernel weight yields one output")),
            },
            Weight::Bf16(w) => x
                .to_kind(Kind::BFloat16)
                .linear::<&Tensor>(w, None)
                .to_kind(Kind::Float),
        }
    }

    /// `x W^T` on host rows (`rows` x d_in) when the weight is packed for the kernel.
    pub fn host(&self, x: &[f32], rows: usize) -> Option<Vec<f32>> {
        match self {
            Weight::Kernel { rows: f, .. } => Some(f.host(x, rows)),
            _ => None,
        }
    }

    /// Bytes read per use.
    pub fn bytes(&self) -> usize {
        match self {
            Weight::F32(w) | Weight::Bf16(w) => w.numel() * w.kind().elt_size_in_bytes(),
            Weight::Kernel { rows, .. } => rows.bytes(),
        }
    }
}

/// Matrices with the same input stacked row-wise and packed for the kernel (q, k, v; gate, up;
/// or a single matrix): one pass over their weights and one dispatch instead of several.
#[derive(Debug)]
pub struct Fused {
    packed: offload_kernels::Packed,
    /// Output width of each part, in order.
    parts: Vec<usize>,
}

impl Fused {
    /// Stacks `ws` (each (d_out_i, d_in)) in `precision` (float32 or int8); None if they do not
    /// share d_in or the precision has no kernel.
    pub fn new(ws: &[&Tensor], precision: Precision) -> Option<Self> {
        let k = ws.first()?.size()[1] as usize;
        if ws.iter().any(|w| w.size()[1] as usize != k) {
            return None;
        }
        let cat = Tensor::cat(ws, 0).to_kind(Kind::Float).contiguous();
        let n = cat.size()[0] as usize;
        let data = Vec::<f32>::try_from(cat.flatten(0, -1)).ok()?;
        let packed = match precision {
            Precision::F32 => offload_kernels::Packed::f32(&data, n, k),
            Precision::Int8 => offload_kernels::Packed::int8(&data, n, k),
            Precision::Bf16 => return None,
        };
        Some(Self {
            packed,
            parts: ws.iter().map(|w| w.size()[0] as usize).collect(),
        })
    }

    /// Bytes read per call.
    pub fn bytes(&self) -> usize {
        self.packed.bytes()
    }

    /// All parts' `x W^T` for host rows `x` (`rows` x d_in): (`rows` x total width), the
    /// parts side by side in each row.
    pub fn host(&self, x: &[f32], rows: usize) -> Vec<f32> {
        let mut out = vec![0f32; rows * self.packed.n()];
        pool().matmul(&self.packed, x, rows, &mut out);
        out
    }

    /// Each part's `x W_i^T` for `x` (..., d_in), without a gradient.
    pub fn apply(&self, x: &Tensor) -> Vec<Tensor> {
        let size = x.size();
        let lead = &size[..size.len() - 1];
        let b = lead.iter().product::<i64>() as usize;
        let xs = Vec::<f32>::try_from(x.detach().to_kind(Kind::Float).contiguous().view([-1]))
            .unwrap_or_else(|e| panic!("kernel input: {e}"));
        let n = self.packed.n();
        let mut out = vec![0f32; b * n];
        pool().matmul(&self.packed, &xs, b, &mut out);
        let y = Tensor::from_slice(&out).view([b as i64, n as i64]);
        if let [p] = self.parts[..] {
            let mut shape = lead.to_vec();
            shape.push(p as i64);
            return vec![y.view(shape.as_slice())];
        }
        let mut start = 0;
        self.parts
            .iter()
            .map(|&p| {
                let mut shape = lead.to_vec();
                shape.push(p as i64);
                let part = y
                    .narrow(1, start, p as i64)
                    .contiguous()
                    .view(shape.as_slice());
                start += p as i64;
                part
            })
            .collect()
    }

    /// [`Fused::apply`] unless `x` needs a gradient (then None: the caller uses libtorch).
    pub fn try_apply(&self, x: &Tensor) -> Option<Vec<Tensor>> {
        (!x.requires_grad()).then(|| self.apply(x))
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
        assert_eq!(Weight::new(&w, Precision::Int8).bytes(), 48 * 64 + 4 * 48);
        // Fused parts equal the separate products.
        let w2 = Tensor::randn([16, 64], (Kind::Float, tch::Device::Cpu));
        let f = Fused::new(&[&w, &w2], Precision::F32).unwrap();
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
            .try_apply(
                &Tensor::randn([9, 64], (Kind::Float, tch::Device::Cpu)).set_requires_grad(true)
            )
            .is_none());
        // The kernel agrees with libtorch for 1, several and many rows.
        let fast = Weight::new_serving(&w, Precision::F32);
        assert!(matches!(fast, Weight::Kernel { t: Some(_), .. }));
        for rows in [1, 5, 40] {
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
