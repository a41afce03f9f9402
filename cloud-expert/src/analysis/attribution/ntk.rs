//! Per-sample gradient kernels of a classifier network (spec `analysis.md` §5):
//! - pNTK: `g(x)` is the gradient of the *sum* of the logits w.r.t. all parameters,
//!   `K(x, x') = g(x) . g(x')`;
//! - trNTK: the sum over classes `c` of `g_c(x) . g_c(x')`, `g_c` the gradient of logit `c`;
//! - normalised (cosine) form `K(x, x') / sqrt(K(x, x) K(x', x'))`, the default.
//!
//! For an MLP the per-sample gradient of layer `l` is the outer product `delta_l a_l^T` (plus
//! `delta_l` for the bias), so `K = sum_l (D_l D_l'^T) .* (A_l A_l'^T + 1)` exactly without ever
//! forming a gradient. Other networks (CNNs) get per-sample gradients by one backward pass per
//! sample. Either way an optional random projection (Rademacher, `+-1/sqrt(p)`, seeded; a
//! Johnson-Lindenstrauss map) replaces the gradients by `p` numbers each for scale.
//!
//! Invariant: rows of every returned kernel are the given points in order; columns are the first
//! `n_train` of them (the training set comes first).

use crate::analysis::{AnalysisError, Progress};
use crate::nets::Net;
use offload_shared::rng::SplitMix64;
use tch::{Kind, Tensor};

/// Which gradient kernel.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Default,
    serde::Serialize,
    serde::Deserialize,
    utoipa::ToSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum KernelKind {
    /// Gradient of the sum of the logits.
    #[default]
    Pntk,
    /// Sum over classes of per-logit gradient products.
    Trntk,
}

/// How to build the kernel.
#[derive(Debug, Clone, Copy)]
pub struct KernelOptions {
    /// pNTK or trNTK.
    pub kind: KernelKind,
    /// Cosine-normalise.
    pub normalize: bool,
    /// Project gradients to this many dimensions (None: exact).
    pub projection: Option<usize>,
    /// Seed of the projection.
    pub seed: u64,
    /// Most gradient values held at once on the per-sample path (points x parameters).
    pub max_gradient_values: usize,
    /// Use per-sample backward passes even for an MLP (tests compare the two paths).
    pub per_sample: bool,
}

impl Default for KernelOptions {
    fn default() -> Self {
        Self {
            kind: KernelKind::Pntk,
            normalize: true,
            projection: None,
            seed: 0,
            max_gradient_values: 256 << 20,
            per_sample: false,
        }
    }
}

/// A kernel block and how it was computed.
#[derive(Debug)]
pub struct GradientKernel {
    /// `[n_points, n_train]` float64.
    pub k: Tensor,
    /// Unnormalised `K(x, x)` of every point.
    pub self_kernel: Vec<f64>,
    /// Number of network parameters (the gradient's length).
    pub gradient_dim: usize,
    /// Length of the vectors whose dot products form the kernel (the projection, or the
    /// gradient's length).
    pub feature_dim: usize,
    /// `"factored"` (MLP identity) or `"per-sample"` (one backward pass per point).
    pub method: &'static str,
}

/// Columns of float32 gradients widened to float64 at a time.
const DENSE_COLUMNS: i64 = 4096;

/// Rows per autograd pass on the factored path.
const BLOCK: i64 = 1024;

/// Builds the gradient kernel of `x` (`[n_points, d]` float32, training points first) against
/// its first `n_train` rows.
pub fn gradient_kernel(
    net: &Net,
    params: &[Tensor],
    x: &Tensor,
    n_train: usize,
    opts: &KernelOptions,
    progress: &Progress,
) -> Result<GradientKernel, AnalysisError> {
    let n = x.size()[0];
    if n_train == 0 || n_train as i64 > n {
        return Err(AnalysisError::invalid(
            "train",
            format!("{n_train} training points of {n}"),
        ));
    }
    if opts.projection == Some(0) {
        return Err(AnalysisError::invalid("projection", "must be positive"));
    }
    // Buffers (the input normalisation) are variables that need no gradient.
    let params: Vec<Tensor> = params
        .iter()
        .filter(|p| p.requires_grad())
        .map(Tensor::shallow_clone)
        .collect();
    let params = params.as_slice();
    let gradient_dim: usize = params.iter().map(|p| p.numel()).sum();
    let (feats, method) = if !opts.per_sample && net.is_mlp() {
        (factored(net, x, opts, progress)?, "factored")
    } else {
        (
            per_sample(net, params, x, gradient_dim, opts, progress)?,
            "per-sample",
        )
    };
    let (mut k, diag) = feats.kernel(n_train as i64)?;
    if opts.normalize {
        let d = Tensor::from_slice(&diag).f_clamp_min(1e-300)?.f_sqrt()?;
        let cols = d.narrow(0, 0, n_train as i64);
        k = k.f_div(&d.unsqueeze(1))?.f_div(&cols.unsqueeze(0))?;
    }
    Ok(GradientKernel {
        k,
        self_kernel: diag,
        gradient_dim,
        feature_dim: opts.projection.unwrap_or(gradient_dim),
        method,
    })
}

/// What the kernel is built from.
enum Features {
    /// Per layer the inputs `A_l` `[n, in]`, per seed (1 or C) per layer the output gradients
    /// `D_l` `[n, out]`; float64.
    Factored { a: Vec<Tensor>, d: Vec<Vec<Tensor>> },
    /// Per seed the gradient (or projected) vectors `[n, f]`, float32; products are taken in
    /// float64 a block of columns at a time.
    Dense(Vec<Tensor>),
}

impl Features {
    /// `K[:, :n_train]` and the diagonal `K(x, x)`.
    fn kernel(&self, n_train: i64) -> Result<(Tensor, Vec<f64>), AnalysisError> {
        let (k, diag) = match self {
            Self::Factored { a, d } => {
                let n = a[0].size()[0];
                let mut k = Tensor::zeros([n, n_train], (Kind::Double, tch::Device::Cpu));
                let mut diag = Tensor::zeros([n], (Kind::Double, tch::Device::Cpu));
                for (l, al) in a.iter().enumerate() {
                    let aa = al.f_mm(&al.narrow(0, 0, n_train).f_tr()?)? + 1.0;
                    let asq = al.f_square()?.f_sum_dim_intlist(1, false, Kind::Double)? + 1.0;
                    for ds in d {
                        let dl = &ds[l];
                        let dd = dl.f_mm(&dl.narrow(0, 0, n_train).f_tr()?)?;
                        k = k.f_add(&dd.f_mul(&aa)?)?;
                        let dsq = dl.f_square()?.f_sum_dim_intlist(1, false, Kind::Double)?;
                        diag = diag.f_add(&dsq.f_mul(&asq)?)?;
                    }
                }
                (k, diag)
            }
            Self::Dense(g) => {
                let n = g[0].size()[0];
                let mut k = Tensor::zeros([n, n_train], (Kind::Double, tch::Device::Cpu));
                let mut diag = Tensor::zeros([n], (Kind::Double, tch::Device::Cpu));
                let width = g[0].size()[1];
                for gs in g {
                    let mut c = 0;
                    while c < width {
                        let cols = DENSE_COLUMNS.min(width - c);
                        let part = gs.narrow(1, c, cols).to_kind(Kind::Double);
                        k = k.f_add(&part.f_mm(&part.narrow(0, 0, n_train).f_tr()?)?)?;
                        diag = diag.f_add(&part.f_square()?.f_sum_dim_intlist(
                            1,
                            false,
                            Kind::Double,
                        )?)?;
                        c += cols;
                    }
                }
                (k, diag)
            }
        };
        Ok((k, Vec::<f64>::try_from(&diag)?))
    }
}

/// The seeds whose gradients define the kernel: the sum of the logits, or each logit.
fn seeds(logits: &Tensor, kind: KernelKind) -> Vec<Tensor> {
    match kind {
        KernelKind::Pntk => vec![logits.sum(Kind::Float)],
        KernelKind::Trntk => (0..logits.size()[1])
            .map(|c| logits.select(1, c).sum(Kind::Float))
            .collect(),
    }
}

/// MLP path: layer inputs and output gradients by block, then projected if asked.
fn factored(
    net: &Net,
    x: &Tensor,
    opts: &KernelOptions,
    progress: &Progress,
) -> Result<Features, AnalysisError> {
    let n = x.size()[0];
    let blocks = (n + BLOCK - 1) / BLOCK;
    progress.plan(blocks as usize);
    let mut a_parts: Vec<Vec<Tensor>> = Vec::new();
    let mut d_parts: Vec<Vec<Vec<Tensor>>> = Vec::new();
    for b in 0..blocks {
        let xb = x.narrow(0, b * BLOCK, BLOCK.min(n - b * BLOCK));
        let (inputs, outputs) = net
            .linear_trace(&xb)
            .ok_or_else(|| AnalysisError::Compute("network is not an MLP".into()))?;
        let logits = outputs.last().expect("an MLP has a head").shallow_clone();
        let seeds = seeds(&logits, opts.kind);
        let last = seeds.len() - 1;
        let mut per_seed = Vec::with_capacity(seeds.len());
        for (s, seed) in seeds.iter().enumerate() {
            let grads = Tensor::f_run_backward(&[seed], &outputs, s < last, false)?;
            per_seed.push(
                grads
                    .iter()
                    .map(|g| g.to_kind(Kind::Double))
                    .collect::<Vec<_>>(),
            );
        }
        a_parts.push(inputs.iter().map(|a| a.to_kind(Kind::Double)).collect());
        d_parts.push(per_seed);
        progress.step()?;
    }
    let layers = a_parts[0].len();
    let cat = |parts: Vec<&Tensor>| Tensor::cat(&parts, 0);
    let a: Vec<Tensor> = (0..layers)
        .map(|l| cat(a_parts.iter().map(|p| &p[l]).collect()))
        .collect();
    let n_seeds = d_parts[0].len();
    let d: Vec<Vec<Tensor>> = (0..n_seeds)
        .map(|s| {
            (0..layers)
                .map(|l| cat(d_parts.iter().map(|p| &p[s][l]).collect()))
                .collect()
        })
        .collect();
    match opts.projection {
        None => Ok(Features::Factored { a, d }),
        Some(p) => project_factored(&a, &d, p, opts.seed, progress),
    }
}

/// Values of one projection chunk at most (rows of the projection x its width).
const CHUNK_VALUES: i64 = 1 << 22;

/// Projects the (never formed) per-sample gradients `[delta_l (x) a_l, delta_l]` of every layer,
/// a few output rows at a time.
fn project_factored(
    a: &[Tensor],
    d: &[Vec<Tensor>],
    p: usize,
    seed: u64,
    progress: &Progress,
) -> Result<Features, AnalysisError> {
    let n = a[0].size()[0];
    let p = p as i64;
    let mut z: Vec<Tensor> = d
        .iter()
        .map(|_| Tensor::zeros([n, p], (Kind::Float, tch::Device::Cpu)))
        .collect();
    let mut chunk_id = 0u64;
    progress.plan(a.len());
    for (l, al) in a.iter().enumerate() {
        let (fan_in, fan_out) = (al.size()[1], d[0][l].size()[1]);
        let rows_per_chunk = (CHUNK_VALUES / ((fan_in + 1) * p)).clamp(1, fan_out);
        let a32 = al.to_kind(Kind::Float);
        let mut o = 0;
        while o < fan_out {
            let rows = rows_per_chunk.min(fan_out - o);
            let r = rademacher(rows * (fan_in + 1), p, seed, chunk_id);
            chunk_id += 1;
            for (s, ds) in d.iter().enumerate() {
                let dl = ds[l].narrow(1, o, rows).to_kind(Kind::Float);
                let outer = dl
                    .unsqueeze(2)
                    .f_mul(&a32.unsqueeze(1))?
                    .f_reshape([n, rows * fan_in])?;
                let block = Tensor::cat(&[outer, dl], 1);
                z[s] = z[s].f_add(&block.f_mm(&r)?)?;
            }
            o += rows;
            progress.check()?;
        }
        progress.step()?;
    }
    Ok(Features::Dense(z))
}

/// A `[rows, p]` float32 matrix of `+-1/sqrt(p)`, fully determined by `(seed, chunk)`.
fn rademacher(rows: i64, p: i64, seed: u64, chunk: u64) -> Tensor {
    let mut rng = SplitMix64::new(seed ^ chunk.wrapping_mul(0xD1B5_4A32_D192_ED03));
    let v = 1.0 / (p as f32).sqrt();
    let total = (rows * p) as usize;
    let mut out = Vec::with_capacity(total);
    while out.len() < total {
        let bits = rng.next_u64();
        for b in 0..64.min(total - out.len()) {
            out.push(if bits >> b & 1 == 1 { v } else { -v });
        }
    }
    Tensor::from_slice(&out).view([rows, p])
}

/// Any network: one backward pass per point and seed, gradients flattened in parameter
/// order, then projected (all parameters as one chunk sequence) if asked.
fn per_sample(
    net: &Net,
    params: &[Tensor],
    x: &Tensor,
    gradient_dim: usize,
    opts: &KernelOptions,
    progress: &Progress,
) -> Result<Features, AnalysisError> {
    let n = x.size()[0] as usize;
    let width = opts.projection.unwrap_or(gradient_dim);
    let proj = match opts.projection {
        None => None,
        Some(p) => {
            if gradient_dim.saturating_mul(p) > opts.max_gradient_values {
                return Err(AnalysisError::TooLarge(format!(
                    "projection: a {gradient_dim} x {p} projection exceeds {} values",
                    opts.max_gradient_values
                )));
            }
            Some(rademacher(gradient_dim as i64, p as i64, opts.seed, 0))
        }
    };
    let n_seeds = match opts.kind {
        KernelKind::Pntk => 1,
        KernelKind::Trntk => net.spec().out_dim,
    };
    if n.saturating_mul(width).saturating_mul(n_seeds) > opts.max_gradient_values {
        return Err(AnalysisError::TooLarge(format!(
            "{n} points x {width} gradient values x {n_seeds} seeds exceed {} values; \
             use a projection or fewer points",
            opts.max_gradient_values
        )));
    }
    // One float32 buffer per seed, filled row by row (no per-row tensors kept alive).
    let rows: Vec<Tensor> = (0..n_seeds)
        .map(|_| Tensor::zeros([n as i64, width as i64], (Kind::Float, tch::Device::Cpu)))
        .collect();
    progress.plan(n);
    for i in 0..n {
        let logits = net.forward(&x.narrow(0, i as i64, 1), None);
        let seeds = seeds(&logits, opts.kind);
        let last = seeds.len() - 1;
        for (s, seed) in seeds.iter().enumerate() {
            let grads = Tensor::f_run_backward(&[seed], params, s < last, false)?;
            let flat: Vec<Tensor> = grads.iter().map(|g| g.reshape([-1])).collect();
            let g = Tensor::cat(&flat, 0).unsqueeze(0);
            let row = match &proj {
                Some(r) => g.f_mm(r)?,
                None => g,
            };
            rows[s].narrow(0, i as i64, 1).copy_(&row);
        }
        progress.step()?;
    }
    Ok(Features::Dense(rows))
}
