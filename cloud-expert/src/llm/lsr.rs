//! LSR-Adapt ("low separation rank" adapters) and LoRA for a frozen linear layer
//! `y = x W^T + b`, with `W` of shape (d_out, d_in).
//!
//! LoRA adds `scale * (x A^T) B^T` with `A` (r x d_in) and `B` (d_out x r). LSR-Adapt writes each
//! factor as a sum of `s` Kronecker products (row-major, as `torch.kron`):
//! `A = sum_k A1_k (x) A2_k` with `A1_k` (r1 x a), `A2_k` (r2 x b), `a*b = d_in`;
//! `B = sum_k B1_k (x) B2_k` with `B1_k` (c x r1), `B2_k` (d x r2), `c*d = d_out`; the bottleneck is
//! `r1*r2` and `scale = alpha / r1` (the authors' code uses `r1 = r2 = r`).
//!
//! Invariant of the forward pass: the Kronecker products are never materialised. With `x`
//! reshaped to `X` (a x b), `(A1 (x) A2) vec(X) = vec(A1 X A2^T)`, so each factor costs two batched
//! contractions over the `s` terms. [`LsrAdapter::expand`] turns the adapter into plain LoRA
//! factors (for LoRA-speed serving with LSR-size storage) and [`LsrAdapter::merge_into`] folds it
//! into `W`; both are tested equal to the direct form.

use tch::{Kind, Tensor};

/// How the factors start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Init {
    /// LoRA-style (the default): `A` factors random, `B1` zero, so the update starts at exactly 0.
    Zero,
    /// The authors' code: every factor `N(0, 1) * 0.01` (a tiny, non-zero update at start).
    SmallRandom,
}

/// Shape of one LSR adapter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LsrShape {
    /// Separation rank: Kronecker terms per factor.
    pub s: usize,
    /// Rank factors; the bottleneck is `r1 * r2`.
    pub r1: usize,
    /// See `r1`.
    pub r2: usize,
    /// `d_in = a * b`.
    pub a: usize,
    /// See `a`.
    pub b: usize,
    /// `d_out = c * d`.
    pub c: usize,
    /// See `c`.
    pub d: usize,
}

/// Why an adapter shape is impossible.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ShapeError {
    /// The dimension has no factorisation with both factors > 1.
    #[error("dimension {0} is prime (or 1): it has no a x b factorisation with a, b > 1; give the factors explicitly or use LoRA for this layer")]
    Prime(usize),
    /// Explicit factors do not multiply to the dimension.
    #[error("factors {a} x {b} do not multiply to the layer dimension {dim}")]
    Mismatch {
        /// Given factor.
        a: usize,
        /// Given factor.
        b: usize,
        /// Layer dimension.
        dim: usize,
    },
    /// A rank or separation rank of zero.
    #[error("s, r1 and r2 must be positive")]
    ZeroRank,
}

/// The factorisation `dim = a * b` with `a <= b` and `a` nearest to `sqrt(dim)` (the default:
/// e.g. 576 = 24 x 24, 1536 = 32 x 48, 768 = 24 x 32).
pub fn nearest_square_factors(dim: usize) -> Result<(usize, usize), ShapeError> {
    let root = (dim as f64).sqrt() as usize;
    (2..=root)
        .rev()
        .find(|&a| dim.is_multiple_of(a))
        .map(|a| (a, dim / a))
        .ok_or(ShapeError::Prime(dim))
}

impl LsrShape {
    /// The default shape for a (d_out x d_in) layer: nearest-square factors of both dimensions.
    pub fn for_layer(
        d_out: usize,
        d_in: usize,
        s: usize,
        r1: usize,
        r2: usize,
    ) -> Result<Self, ShapeError> {
        if s == 0 || r1 == 0 || r2 == 0 {
            return Err(ShapeError::ZeroRank);
        }
        let (a, b) = nearest_square_factors(d_in)?;
        let (c, d) = nearest_square_factors(d_out)?;
        Ok(Self {
            s,
            r1,
            r2,
            a,
            b,
            c,
            d,
        })
    }

    /// Trainable parameters: `s * (r1*a + r2*b) + s * (c*r1 + d*r2)`.
    pub fn parameters(&self) -> usize {
        self.s * (self.r1 * self.a + self.r2 * self.b)
            + self.s * (self.c * self.r1 + self.d * self.r2)
    }
}

/// An LSR-Adapt adapter's factors (float32, on one device).
#[derive(Debug)]
pub struct LsrAdapter {
    /// Shape.
    pub shape: LsrShape,
    /// (s, r1, a).
    pub a1: Tensor,
    /// (s, r2, b).
    pub a2: Tensor,
    /// (s, c, r1).
    pub b1: Tensor,
    /// (s, d, r2).
    pub b2: Tensor,
    /// `alpha / r1`.
    pub scale: f64,
}

impl LsrAdapter {
    /// New factors on `device` with the given initialisation.
    pub fn new(shape: LsrShape, alpha: f64, init: Init, device: tch::Device) -> Self {
        let LsrShape {
            s,
            r1,
            r2,
            a,
            b,
            c,
            d,
        } = shape;
        let opts = (Kind::Float, device);
        let rnd = |dims: &[i64]| Tensor::randn(dims, opts) * 0.01;
        let (s, r1, r2, a, b, c, d) = (
            s as i64, r1 as i64, r2 as i64, a as i64, b as i64, c as i64, d as i64,
        );
        let b1 = match init {
            Init::Zero => Tensor::zeros([s, c, r1], opts),
            Init::SmallRandom => rnd(&[s, c, r1]),
        };
        Self {
            shape,
            a1: rnd(&[s, r1, a]),
            a2: rnd(&[s, r2, b]),
            b1,
            b2: rnd(&[s, d, r2]),
            scale: alpha / shape.r1 as f64,
        }
    }

    /// The adapter's contribution `scale * (x A^T) B^T` for `x` of shape (..., d_in), computed
    /// without materialising any Kronecker product.
    pub fn delta(&self, x: &Tensor) -> Tensor {
        let LsrShape { a, b, c, d, .. } = self.shape;
        let lead: Vec<i64> = x.size()[..x.dim() - 1].to_vec();
        let xs = x.reshape([-1, a as i64, b as i64]);
        // h_n = sum_k A1_k X_n A2_k^T  -> (N, r1, r2)
        let t = Tensor::einsum("sra,nab->nsrb", &[&self.a1, &xs], None::<i64>);
        let h = Tensor::einsum("nsrb,sqb->nrq", &[&t, &self.a2], None::<i64>);
        // y_n = sum_k B1_k H_n B2_k^T  -> (N, c, d)
        let u = Tensor::einsum("scr,nrq->nscq", &[&self.b1, &h], None::<i64>);
        let y = Tensor::einsum("nscq,sdq->ncd", &[&u, &self.b2], None::<i64>);
        let mut out = lead;
        out.push((c * d) as i64);
        (y * self.scale).reshape(out)
    }

    /// The plain LoRA factors `(A, B)` with the scale folded into `B`: `delta(x) = (x A^T) B^T`.
    pub fn expand(&self) -> (Tensor, Tensor) {
        let kron_sum = |p: &Tensor, q: &Tensor| {
            (0..self.shape.s as i64)
                .map(|k| p.get(k).kron(&q.get(k)))
                .reduce(|acc, t| acc + t)
                .expect("s >= 1")
        };
        let a = kron_sum(&self.a1, &self.a2);
        let b = kron_sum(&self.b1, &self.b2) * self.scale;
        (a, b)
    }

    /// `W + scale * B A`: the layer weight with the adapter merged in (single-adapter serving).
    pub fn merge_into(&self, w: &Tensor) -> Tensor {
        let (a, b) = self.expand();
        w + b.matmul(&a)
    }
}

/// A LoRA adapter (the baseline): `scale * (x A^T) B^T`, `scale = alpha / r`.
#[derive(Debug)]
pub struct LoraAdapter {
    /// (r, d_in), random.
    pub a: Tensor,
    /// (d_out, r), zero at start.
    pub b: Tensor,
    /// `alpha / r`.
    pub scale: f64,
}

impl LoraAdapter {
    /// LoRA of rank `r` for a (d_out x d_in) layer, initialised as PEFT does:
    /// `A ~ U(-1/sqrt(d_in), 1/sqrt(d_in))` (Kaiming-uniform with a = sqrt(5)), `B = 0`.
    pub fn new(d_out: usize, d_in: usize, r: usize, alpha: f64, device: tch::Device) -> Self {
        let opts = (Kind::Float, device);
        let bound = 1.0 / (d_in as f64).sqrt();
        Self {
            a: Tensor::rand([r as i64, d_in as i64], opts) * (2.0 * bound) - bound,
            b: Tensor::zeros([d_out as i64, r as i64], opts),
            scale: alpha / r as f64,
        }
    }

    /// Trainable parameters: `r * (d_in + d_out)`.
    pub fn parameters(&self) -> usize {
        self.a.numel() + self.b.numel()
    }

    /// The adapter's contribution for `x` of shape (..., d_in).
    pub fn delta(&self, x: &Tensor) -> Tensor {
        x.matmul(&self.a.tr()).matmul(&self.b.tr()) * self.scale
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn max_diff(x: &Tensor, y: &Tensor) -> f64 {
        (x - y).abs().max().double_value(&[])
    }

    #[test]
    fn nearest_square_factorisations_and_primes() {
        assert_eq!(nearest_square_factors(576), Ok((24, 24)));
        assert_eq!(nearest_square_factors(1536), Ok((32, 48)));
        assert_eq!(nearest_square_factors(768), Ok((24, 32)));
        assert_eq!(nearest_square_factors(97), Err(ShapeError::Prime(97)));
        assert!(LsrShape::for_layer(97, 64, 2, 2, 2)
            .unwrap_err()
            .to_string()
            .contains("prime"));
    }

    #[test]
    fn parameter_count_matches_the_spec_and_halves_lora() {
        // Authors' RoBERTa case: 768 = 32 x 24, r = 2, s = 16 -> 3,584 against LoRA r=8: 12,288.
        let shape = LsrShape {
            s: 16,
            r1: 2,
            r2: 2,
            a: 32,
            b: 24,
            c: 32,
            d: 24,
        };
        assert_eq!(shape.parameters(), 3_584);
        let lora = LoraAdapter::new(768, 768, 8, 16.0, tch::Device::Cpu);
        assert_eq!(lora.parameters(), 12_288);
    }

    #[test]
    fn matrix_free_forward_equals_materialised_kronecker_and_merge() {
        tch::manual_seed(0);
        let _guard = tch::no_grad_guard();
        let shape = LsrShape::for_layer(48, 36, 3, 2, 3).unwrap();
        let ad = LsrAdapter::new(shape, 8.0, Init::SmallRandom, tch::Device::Cpu);
        let x = Tensor::randn([2, 5, 36], (Kind::Float, tch::Device::Cpu));
        // Direct form: materialise A and B from the Kronecker products.
        let (a, b) = ad.expand();
        assert_eq!(a.size(), [6, 36]);
        assert_eq!(b.size(), [48, 6]);
        let direct = x.matmul(&a.tr()).matmul(&b.tr());
        let fast = ad.delta(&x);
        assert_eq!(fast.size(), [2, 5, 48]);
        assert!(
            max_diff(&fast, &direct) < 1e-6,
            "{}",
            max_diff(&fast, &direct)
        );
        // Merged weight gives the same layer output as base + adapter.
        let w = Tensor::randn([48, 36], (Kind::Float, tch::Device::Cpu));
        let merged = x.matmul(&ad.merge_into(&w).tr());
        let unmerged = x.matmul(&w.tr()) + fast;
        assert!(max_diff(&merged, &unmerged) < 1e-5);
        // One term against torch.kron written out by hand for a 2x2 (x) 2x2 case.
        let p = Tensor::from_slice(&[1.0f32, 2.0, 3.0, 4.0]).reshape([2, 2]);
        let q = Tensor::from_slice(&[0.0f32, 1.0, 1.0, 0.0]).reshape([2, 2]);
        let k = p.kron(&q);
        let want = Tensor::from_slice(&[
            0.0f32, 1.0, 0.0, 2.0, 1.0, 0.0, 2.0, 0.0, 0.0, 3.0, 0.0, 4.0, 3.0, 0.0, 4.0, 0.0,
        ])
        .reshape([4, 4]);
        assert!(max_diff(&k, &want) == 0.0);
    }

    #[test]
    fn zero_init_starts_at_exactly_zero_and_small_random_does_not() {
        tch::manual_seed(1);
        let shape = LsrShape::for_layer(64, 64, 4, 2, 2).unwrap();
        let x = Tensor::randn([3, 64], (Kind::Float, tch::Device::Cpu));
        let zero = LsrAdapter::new(shape, 16.0, Init::Zero, tch::Device::Cpu);
        assert_eq!(zero.delta(&x).abs().max().double_value(&[]), 0.0);
        let small = LsrAdapter::new(shape, 16.0, Init::SmallRandom, tch::Device::Cpu);
        assert!(small.delta(&x).abs().max().double_value(&[]) > 0.0);
        let lora = LoraAdapter::new(64, 64, 4, 8.0, tch::Device::Cpu);
        assert_eq!(lora.delta(&x).abs().max().double_value(&[]), 0.0);
    }
}
