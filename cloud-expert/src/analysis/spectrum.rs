//! Weight spectra (spec §4): the empirical spectral density (ESD) of one layer, the eigenvalues
//! of `W^T W` (squared singular values), and what is read off it.
//!
//! Definitions (named here because papers and tools differ):
//! - `W` is N x M after transposing so that N >= M; `Q = N / M`. The M eigenvalues come from a
//!   float64 symmetric eigensolver on the Gram matrix (no SVD): the same values as
//!   WeightWatcher's `sv * sv` to rounding.
//! - Marchenko-Pastur: entries of variance `s2` give a bulk on
//!   `s2 (sqrt N -/+ sqrt M)^2`. `s2` is the bulk mean eigenvalue over N, refitted after
//!   dropping spikes until it is stable. A spike lies above the edge plus a Tracy-Widom margin
//!   `t * s2 (sqrt N + sqrt M)(1/sqrt N + 1/sqrt M)^(1/3)` (Johnstone 2001), t = 2.02, the 0.99
//!   quantile of TW1.
//! - Power law: [`super::powerlaw`] on the eigenvalues above 1e-5; `alpha_hat = alpha log10
//!   lambda_max`.
//! - Stable rank `sum lambda / lambda_max`; spectral norm `sqrt lambda_max`; matrix entropy
//!   `-sum p ln p / ln rank` with `p = lambda / sum lambda + 1e-10` and the numerical rank of W
//!   (WeightWatcher's `matrix_entropy`).
//! - ESD distances (randomised ESD, drift from an initial checkpoint): Jensen-Shannon distance
//!   (base 2, in [0, 1]) between histograms of log10 eigenvalues on 100 shared bins.

pub mod alignment;

use super::powerlaw::{self, PowerLawFit};
use super::AnalysisError;
use alignment::{Alignment, Direction};
use serde::Serialize;
use tch::{Device, Kind, Tensor};

/// Eigenvalues below this are left out of the power-law fit (WeightWatcher's `EVALS_THRESH`).
pub const EVALS_THRESH: f64 = 1e-5;
/// 0.99 quantile of the Tracy-Widom (beta = 1) law.
const TW_Q99: f64 = 2.0234;
/// Bins of the log10 histograms behind the ESD distances and the plot.
pub const BINS: usize = 100;

/// One matrix, row-major.
#[derive(Debug, Clone)]
pub struct Matrix {
    /// Shown in reports.
    pub name: String,
    /// Rows.
    pub rows: usize,
    /// Columns.
    pub cols: usize,
    /// `rows * cols` values.
    pub data: Vec<f32>,
}

impl Matrix {
    /// Checks the shape and that every value is finite.
    pub fn new(
        name: String,
        rows: usize,
        cols: usize,
        data: Vec<f32>,
    ) -> Result<Self, AnalysisError> {
        let field = format!("matrices[{name}]");
        if rows < 2 || cols < 2 {
            return Err(AnalysisError::invalid(
                &field,
                format!("is {rows} x {cols}: needs at least 2 x 2"),
            ));
        }
        if data.len() != rows * cols {
            return Err(AnalysisError::invalid(
                &field,
                format!("has {} values for {rows} x {cols}", data.len()),
            ));
        }
        if let Some(i) = data.iter().position(|v| !v.is_finite()) {
            return Err(AnalysisError::invalid(
                &field,
                format!("value {i} is not finite"),
            ));
        }
        Ok(Self {
            name,
            rows,
            cols,
            data,
        })
    }
}

/// What to compute beyond the basic report.
#[derive(Debug, Clone, Default)]
pub struct SpectrumOptions {
    /// Return every eigenvalue.
    pub eigenvalues: bool,
    /// Also compute the ESD of `W` with its entries permuted (seeded) and its distance.
    pub randomize: bool,
    /// Seed of the permutation.
    pub seed: u64,
    /// Data directions by layer name: spike-data alignment for those layers.
    pub directions: Vec<Direction>,
    /// Render an SVG of the ESD with the MP curve and the power-law fit.
    pub svg: bool,
}

/// The Marchenko-Pastur bulk and the spikes past it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct MpFit {
    /// Fitted entry variance.
    pub sigma2: f64,
    /// N / M.
    pub q: f64,
    /// Bulk edges.
    pub lambda_minus: f64,
    /// Upper bulk edge.
    pub lambda_plus: f64,
    /// Edge plus the Tracy-Widom margin: eigenvalues above are spikes.
    pub spike_threshold: f64,
    /// The spikes, largest first.
    pub spikes: Vec<f64>,
}

/// Change from an initial checkpoint of the same layer.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Drift {
    /// `||W - W0||_F`.
    pub frobenius: f64,
    /// `||W - W0||_F / ||W0||_F`.
    pub relative_frobenius: f64,
    /// `||W - W0||_2` (largest singular value of the difference).
    pub operator: f64,
    /// Jensen-Shannon distance between the ESDs of W and W0.
    pub esd_distance: f64,
    /// `alpha(W) - alpha(W0)` when both fit.
    pub alpha_change: Option<f64>,
}

/// The spectrum of one layer.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct LayerSpectrum {
    /// Layer name.
    pub name: String,
    /// [rows, cols] as given.
    pub shape: [usize; 2],
    /// M, the number of eigenvalues.
    pub num_evals: usize,
    /// Largest eigenvalue.
    pub lambda_max: f64,
    /// Largest singular value.
    pub spectral_norm: f64,
    /// `sum lambda / lambda_max`.
    pub stable_rank: f64,
    /// Normalised matrix entropy in [0, 1].
    pub matrix_entropy: f64,
    /// Power-law fit; absent with fewer than two eigenvalues above 1e-5.
    pub power_law: Option<PowerLawFit>,
    /// `alpha log10 lambda_max`.
    pub alpha_hat: Option<f64>,
    /// Bulk and spikes.
    pub marchenko_pastur: MpFit,
    /// Distance of the ESD to that of the entry-permuted matrix (when asked).
    pub randomized_esd_distance: Option<f64>,
    /// Largest eigenvalue of the permuted matrix (when asked).
    pub randomized_lambda_max: Option<f64>,
    /// Against the initial checkpoint (when given).
    pub drift: Option<Drift>,
    /// Overlap of the top singular vectors with the layer's data direction (when given).
    pub alignment: Option<Alignment>,
    /// Every eigenvalue, ascending (when asked).
    pub eigenvalues: Option<Vec<f64>>,
    /// The plot (when asked).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub svg: Option<String>,
}

/// Every weight of two or more dimensions in a safetensors file, as N x (rest) matrices
/// (a convolution kernel `out x in x kh x kw` becomes `out x (in kh kw)`), sorted by name.
pub fn matrices_from_safetensors(path: &std::path::Path) -> Result<Vec<Matrix>, AnalysisError> {
    let tensors = Tensor::read_safetensors(path)
        .map_err(|e| AnalysisError::Compute(format!("{}: {e}", path.display())))?;
    let mut out = Vec::new();
    for (name, t) in tensors {
        let size = t.size();
        if size.len() < 2 || size.iter().any(|&s| s < 1) {
            continue;
        }
        let rows = size[0] as usize;
        let cols = size[1..].iter().product::<i64>() as usize;
        if rows < 2 || cols < 2 {
            continue;
        }
        let data = Vec::<f32>::try_from(t.to_kind(Kind::Float).flatten(0, -1))?;
        out.push(Matrix::new(name, rows, cols, data)?);
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

/// The update `Delta W = scale B A` of every adapted module of a PEFT-style adapter directory
/// (LSR-Adapt factors expanded to B and A first), named `<base weight>.delta`, in name order.
pub fn matrices_from_adapter(dir: &std::path::Path) -> Result<Vec<Matrix>, AnalysisError> {
    use crate::llm::adapter::{Adapter, Update};
    let adapter = Adapter::load(dir, tch::Device::Cpu)
        .map_err(|e| AnalysisError::invalid("adapter", e.to_string()))?;
    let _g = tch::no_grad_guard();
    let mut out = Vec::new();
    for (&(layer, module), update) in &adapter.updates {
        let Update::Lora(u) = update.expanded() else {
            unreachable!("expanded updates are LoRA factors")
        };
        let delta = u.b.f_matmul(&u.a)?.f_mul_scalar(u.scale)?;
        let (rows, cols) = (delta.size()[0] as usize, delta.size()[1] as usize);
        let data = Vec::<f32>::try_from(delta.to_kind(Kind::Float).flatten(0, -1))?;
        out.push(Matrix::new(
            format!("{}.delta", module.weight_name(layer)),
            rows,
            cols,
            data,
        )?);
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

/// Layers from a file: every weight of a `.safetensors` file, one `.npy` matrix named after
/// the file, or the updates of an adapter directory.
pub fn read_matrices(path: &std::path::Path) -> Result<Vec<Matrix>, AnalysisError> {
    if path.join("adapter_config.json").is_file() {
        return matrices_from_adapter(path);
    }
    if path.extension().is_some_and(|e| e == "safetensors") {
        return matrices_from_safetensors(path);
    }
    let field = path.display().to_string();
    let bytes = std::fs::read(path).map_err(|e| AnalysisError::invalid(&field, e.to_string()))?;
    let (data, rows, cols) =
        super::npy::array2(&bytes).map_err(|e| AnalysisError::invalid(&field, e.to_string()))?;
    let name = path
        .file_stem()
        .map_or("matrix".into(), |s| s.to_string_lossy().into_owned());
    Ok(vec![Matrix::new(name, rows, cols, data)?])
}

/// Eigenvalues of `W^T W` (or `W W^T`, whichever is smaller), ascending, in float64.
pub fn eigenvalues(m: &Matrix) -> Result<Vec<f64>, AnalysisError> {
    let _g = tch::no_grad_guard();
    let (x, _) = gram_side(m);
    let mut v = nonnegative(&lower_gram(&x)?.f_linalg_eigvalsh("L")?)?;
    v.sort_by(f64::total_cmp);
    Ok(v)
}

/// Eigenvalues of a Gram matrix as a vector, the tiny negatives rounding leaves for a
/// rank-deficient W set to zero.
fn nonnegative(evals: &Tensor) -> Result<Vec<f64>, AnalysisError> {
    Ok(Vec::<f64>::try_from(evals)?
        .into_iter()
        .map(|e| e.max(0.0))
        .collect())
}

/// `X`, the float64 `W` or `W^T` that is N x M with N >= M (the Gram matrix is `X^T X`), and
/// whether it is `W` itself.
fn gram_side(m: &Matrix) -> (Tensor, bool) {
    let w = Tensor::from_slice(&m.data)
        .view([m.rows as i64, m.cols as i64])
        .to_kind(Kind::Double);
    let tall = m.rows >= m.cols;
    (if tall { w } else { w.tr() }, tall)
}

/// `X^T X` with only its lower block triangle filled (what `eigvalsh("L")` reads): column
/// panels of 512, so a 2048-wide Gram matrix costs 10/16 of a full product.
fn lower_gram(x: &Tensor) -> Result<Tensor, AnalysisError> {
    const PANEL: i64 = 512;
    let m = x.size()[1];
    if m <= 2 * PANEL {
        return Ok(x.f_tr()?.f_mm(x)?);
    }
    let g = Tensor::f_zeros([m, m], (Kind::Double, Device::Cpu))?;
    let mut j = 0;
    while j < m {
        let w = PANEL.min(m - j);
        // Rows j.. of columns j..j+w: X[:, j..]^T X[:, j..j+w].
        let block = x
            .f_narrow(1, j, m - j)?
            .f_tr()?
            .f_mm(&x.f_narrow(1, j, w)?)?;
        g.f_narrow(0, j, m - j)?
            .f_narrow(1, j, w)?
            .f_copy_(&block)?;
        j += w;
    }
    Ok(g)
}

/// Analyses one layer; `init` is the same layer at initialisation.
pub fn analyze(
    m: &Matrix,
    init: Option<&Matrix>,
    opts: &SpectrumOptions,
) -> Result<LayerSpectrum, AnalysisError> {
    if let Some(w0) = init {
        if (w0.rows, w0.cols) != (m.rows, m.cols) {
            return Err(AnalysisError::invalid(
                &format!("initial[{}]", m.name),
                format!(
                    "is {} x {}, the layer is {} x {}",
                    w0.rows, w0.cols, m.rows, m.cols
                ),
            ));
        }
    }
    let direction = opts.directions.iter().find(|d| d.name == m.name);
    let (evals, decomposition) = match direction {
        Some(_) => {
            let (e, d) = alignment::decompose(m)?;
            (e, Some(d))
        }
        None => (eigenvalues(m)?, None),
    };
    let (n, mm) = (m.rows.max(m.cols), m.rows.min(m.cols));
    let lambda_max = evals.last().copied().unwrap_or(0.0);
    let sum: f64 = evals.iter().sum();
    let tail: Vec<f64> = evals
        .iter()
        .copied()
        .filter(|&x| x > EVALS_THRESH)
        .collect();
    let power_law = powerlaw::fit(&tail);
    let marchenko_pastur = mp_fit(&evals, n, mm);
    let alignment = match (direction, &decomposition) {
        (Some(d), Some(dec)) => Some(dec.align(d, marchenko_pastur.spikes.len())?),
        _ => None,
    };
    let mut randomized = None;
    if opts.randomize {
        let mut data = m.data.clone();
        shuffle(&mut data, opts.seed);
        let r = eigenvalues(&Matrix { data, ..m.clone() })?;
        randomized = Some((esd_distance(&evals, &r), r.last().copied().unwrap_or(0.0)));
    }
    let drift = match init {
        Some(w0) => Some(drift(m, w0, &evals, power_law.map(|p| p.alpha))?),
        None => None,
    };
    let svg = opts.svg.then(|| {
        super::svg::esd_plot(
            &m.name,
            &evals,
            &marchenko_pastur,
            n,
            mm,
            power_law.as_ref(),
        )
    });
    Ok(LayerSpectrum {
        name: m.name.clone(),
        shape: [m.rows, m.cols],
        num_evals: evals.len(),
        lambda_max,
        spectral_norm: lambda_max.sqrt(),
        stable_rank: if lambda_max > 0.0 {
            sum / lambda_max
        } else {
            0.0
        },
        matrix_entropy: matrix_entropy(&evals, n),
        alpha_hat: power_law.map(|p| p.alpha * lambda_max.log10()),
        power_law,
        marchenko_pastur,
        randomized_esd_distance: randomized.map(|r| r.0),
        randomized_lambda_max: randomized.map(|r| r.1),
        drift,
        alignment,
        eigenvalues: opts.eigenvalues.then_some(evals),
        svg,
    })
}

/// The MP bulk by the fixed point described in the module documentation.
pub fn mp_fit(evals: &[f64], n: usize, m: usize) -> MpFit {
    let (sn, sm) = ((n as f64).sqrt(), (m as f64).sqrt());
    let edge = |s2: f64| s2 * (sn + sm).powi(2);
    let margin = |s2: f64| TW_Q99 * s2 * (sn + sm) * (1.0 / sn + 1.0 / sm).cbrt();
    let mut bulk = evals.len();
    let mut s2 = 0.0;
    for _ in 0..50 {
        s2 = evals[..bulk].iter().sum::<f64>() / bulk.max(1) as f64 / n as f64;
        let threshold = edge(s2) + margin(s2);
        let next = evals.partition_point(|&x| x <= threshold).max(1);
        if next == bulk {
            break;
        }
        bulk = next;
    }
    let spike_threshold = edge(s2) + margin(s2);
    MpFit {
        sigma2: s2,
        q: n as f64 / m as f64,
        lambda_minus: s2 * (sn - sm).powi(2),
        lambda_plus: edge(s2),
        spike_threshold,
        spikes: evals
            .iter()
            .rev()
            .copied()
            .take_while(|&x| x > spike_threshold)
            .collect(),
    }
}

/// WeightWatcher's normalised matrix entropy (module documentation).
fn matrix_entropy(evals: &[f64], n: usize) -> f64 {
    let sv_max = evals.last().copied().unwrap_or(0.0).sqrt();
    let tol = sv_max * n as f64 * f64::EPSILON;
    let rank = evals.iter().filter(|&&x| x.sqrt() > tol).count() as f64 + 1e-10;
    let sum: f64 = evals.iter().sum();
    if sum <= 0.0 {
        return 0.0;
    }
    let h: f64 = evals
        .iter()
        .map(|&x| {
            let p = x / sum + 1e-10;
            -p * p.ln()
        })
        .sum();
    h / rank.ln()
}

/// Histograms of log10 eigenvalues (those > 1e-12) of `a` and `b` on shared bins.
pub fn log_histograms(a: &[f64], b: &[f64], bins: usize) -> (Vec<f64>, Vec<f64>, f64, f64) {
    let logs = |v: &[f64]| {
        v.iter()
            .filter(|&&x| x > 1e-12)
            .map(|x| x.log10())
            .collect::<Vec<_>>()
    };
    let (la, lb) = (logs(a), logs(b));
    let lo = la.iter().chain(&lb).copied().fold(f64::INFINITY, f64::min);
    let hi = la
        .iter()
        .chain(&lb)
        .copied()
        .fold(f64::NEG_INFINITY, f64::max);
    let width = if hi > lo {
        (hi - lo) / bins as f64
    } else {
        1.0
    };
    let hist = |l: &[f64]| {
        let mut h = vec![0f64; bins];
        for &x in l {
            h[(((x - lo) / width) as usize).min(bins - 1)] += 1.0;
        }
        let total = l.len().max(1) as f64;
        h.iter_mut().for_each(|c| *c /= total);
        h
    };
    (hist(&la), hist(&lb), lo, width)
}

/// Jensen-Shannon distance (base 2) between the log-ESD histograms of `a` and `b`.
pub fn esd_distance(a: &[f64], b: &[f64]) -> f64 {
    let (p, q, _, _) = log_histograms(a, b, BINS);
    let kl = |x: &[f64], m: &[f64]| -> f64 {
        x.iter()
            .zip(m)
            .filter(|(xi, _)| **xi > 0.0)
            .map(|(xi, mi)| xi * (xi / mi).log2())
            .sum()
    };
    let mid: Vec<f64> = p.iter().zip(&q).map(|(a, b)| (a + b) / 2.0).collect();
    (0.5 * kl(&p, &mid) + 0.5 * kl(&q, &mid)).max(0.0).sqrt()
}

fn drift(
    m: &Matrix,
    w0: &Matrix,
    evals: &[f64],
    alpha: Option<f64>,
) -> Result<Drift, AnalysisError> {
    let diff: Vec<f32> = m.data.iter().zip(&w0.data).map(|(a, b)| a - b).collect();
    let frob = diff
        .iter()
        .map(|&x| f64::from(x).powi(2))
        .sum::<f64>()
        .sqrt();
    let frob0 = w0
        .data
        .iter()
        .map(|&x| f64::from(x).powi(2))
        .sum::<f64>()
        .sqrt();
    let d_evals = eigenvalues(&Matrix {
        data: diff,
        ..m.clone()
    })?;
    let e0 = eigenvalues(w0)?;
    let t0: Vec<f64> = e0.iter().copied().filter(|&x| x > EVALS_THRESH).collect();
    let alpha0 = powerlaw::fit(&t0).map(|p| p.alpha);
    Ok(Drift {
        frobenius: frob,
        relative_frobenius: if frob0 > 0.0 {
            frob / frob0
        } else {
            f64::INFINITY
        },
        operator: d_evals.last().copied().unwrap_or(0.0).sqrt(),
        esd_distance: esd_distance(evals, &e0),
        alpha_change: alpha.zip(alpha0).map(|(a, b)| a - b),
    })
}

/// Seeded Fisher-Yates (splitmix64), so a randomised ESD is reproducible.
fn shuffle(v: &mut [f32], seed: u64) {
    let mut s = seed ^ 0x9E37_79B9_7F4A_7C15;
    let mut next = || {
        s = s.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = s;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    };
    for i in (1..v.len()).rev() {
        let j = (next() % (i as u64 + 1)) as usize;
        v.swap(i, j);
    }
}

#[cfg(test)]
mod tests;
