//! Intrinsic dimension (spec §1): TwoNN, MLE (Levina-Bickel, harmonic-mean global value) and
//! lPCA "ratio", global and per point (k-NN neighbourhoods). Definitions follow
//! scikit-dimension 0.5.0 (`TwoNN()`, `MLE()` with 20 neighbours, `lPCA(ver='ratio')`).

use super::knn::{knn, Knn};
use super::{AnalysisError, Points};
use tch::{Kind, Tensor};

/// Settings.
#[derive(
    Debug, Clone, Copy, serde::Deserialize, serde::Serialize, utoipa::ToSchema, utoipa::IntoParams,
)]
#[serde(default, deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct IdParams {
    /// Neighbours for MLE and the per-point neighbourhoods.
    pub k: usize,
    /// Fraction of the largest TwoNN ratios dropped.
    pub discard_fraction: f64,
    /// Variance fraction for lPCA.
    pub alpha_ratio: f64,
    /// Also return per-point estimates (MLE and lPCA on each point's neighbourhood).
    pub pointwise: bool,
}

impl Default for IdParams {
    fn default() -> Self {
        Self {
            k: 20,
            discard_fraction: 0.1,
            alpha_ratio: 0.75,
            pointwise: false,
        }
    }
}

impl IdParams {
    /// Refuses out-of-range settings, naming the field.
    pub fn check(&self) -> Result<(), AnalysisError> {
        if self.k < 2 {
            return Err(AnalysisError::invalid("k", "must be at least 2"));
        }
        if !(0.0..1.0).contains(&self.discard_fraction) {
            return Err(AnalysisError::invalid(
                "discard_fraction",
                "must be in [0, 1)",
            ));
        }
        if !(self.alpha_ratio > 0.0 && self.alpha_ratio < 1.0) {
            return Err(AnalysisError::invalid("alpha_ratio", "must be in (0, 1)"));
        }
        Ok(())
    }
}

/// One estimator's result.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct Estimate {
    /// The global estimate.
    pub dimension: f64,
    /// Per-point estimates (when asked for and defined).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pointwise: Option<Vec<f64>>,
}

/// The three estimators.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct Estimates {
    /// TwoNN (linear fit through the origin).
    pub twonn: Estimate,
    /// MLE, harmonic mean of the per-point values.
    pub mle: Estimate,
    /// lPCA ratio.
    pub lpca: Estimate,
}

/// The response of `/v1/analysis/intrinsic-dimension`.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct IdReport {
    /// Estimates by estimator.
    pub estimates: Estimates,
    /// Distinct points used.
    pub n_points: usize,
    /// Points dropped as exact duplicates.
    pub n_dropped: usize,
    /// Settings used.
    pub params: IdParams,
}

/// TwoNN from the two nearest distances of every point.
pub fn twonn(nn: &Knn, discard_fraction: f64) -> Result<f64, AnalysisError> {
    let mut mu: Vec<f64> = (0..nn.dist.len() / nn.k)
        .map(|i| nn.row(i)[1] / nn.row(i)[0])
        .collect();
    mu.sort_by(f64::total_cmp);
    let n = mu.len();
    let keep = (n as f64 * (1.0 - discard_fraction)) as usize;
    if keep < 2 {
        return Err(AnalysisError::invalid(
            "embeddings",
            "fewer than 2 points left for TwoNN",
        ));
    }
    let (mut sxy, mut sxx) = (0.0, 0.0);
    for (i, m) in mu[..keep].iter().enumerate() {
        let x = m.ln();
        let y = -(1.0 - (i + 1) as f64 / n as f64).ln();
        sxy += x * y;
        sxx += x * x;
    }
    Ok(sxy / sxx)
}

/// Levina-Bickel per point over its first `k` neighbours: `(k - 1) / sum_j ln(R_k / R_j)`.
pub fn mle_pointwise(nn: &Knn, k: usize) -> Vec<f64> {
    (0..nn.dist.len() / nn.k)
        .map(|i| {
            let r = &nn.row(i)[..k];
            let rk = r[k - 1];
            (k - 1) as f64 / r.iter().map(|rj| (rk / rj).ln()).sum::<f64>()
        })
        .collect()
}

/// The harmonic mean (MacKay-Ghahramani's global MLE).
pub fn harmonic_mean(v: &[f64]) -> f64 {
    v.len() as f64 / v.iter().map(|x| 1.0 / x).sum::<f64>()
}

/// Components needed to reach `alpha` of the variance, from eigenvalues in any order.
pub fn ratio_dimension(mut eig: Vec<f64>, alpha: f64) -> usize {
    eig.sort_by(|a, b| b.total_cmp(a));
    let total: f64 = eig.iter().map(|e| e.max(0.0)).sum();
    let mut cum = 0.0;
    let mut below = 0;
    for e in eig {
        cum += e.max(0.0);
        if cum / total < alpha {
            below += 1;
        }
    }
    below + 1
}

/// lPCA on the whole cloud: eigenvalues of the centred covariance (d x d, or the n x n Gram
/// matrix when that is smaller; both have the same non-zero eigenvalues).
pub fn lpca(p: &Points, alpha: f64) -> Result<usize, AnalysisError> {
    let _g = tch::no_grad_guard();
    let x = Tensor::from_slice(&p.data)
        .view([p.n as i64, p.d as i64])
        .to_kind(Kind::Double);
    let xc = &x - x.mean_dim([0i64].as_slice(), true, Kind::Double);
    let g = if p.d <= p.n {
        xc.tr().matmul(&xc)
    } else {
        xc.matmul(&xc.tr())
    };
    let eig = Vec::<f64>::try_from(g.linalg_eigvalsh("L"))?;
    Ok(ratio_dimension(eig, alpha))
}

/// lPCA on each point's neighbourhood (the point and its `k` neighbours), batched Gram
/// matrices.
fn lpca_pointwise(p: &Points, nn: &Knn, k: usize, alpha: f64) -> Result<Vec<f64>, AnalysisError> {
    let _g = tch::no_grad_guard();
    let x = Tensor::from_slice(&p.data).view([p.n as i64, p.d as i64]);
    let mut out = Vec::with_capacity(p.n);
    let chunk = 1024.min(p.n);
    for start in (0..p.n).step_by(chunk) {
        let end = (start + chunk).min(p.n);
        let ids: Vec<i64> = (start..end)
            .flat_map(|i| {
                std::iter::once(i as i64)
                    .chain(nn.idx[i * nn.k..i * nn.k + k].iter().map(|&j| j as i64))
            })
            .collect();
        let m = (end - start) as i64;
        let nb = x
            .index_select(0, &Tensor::from_slice(&ids))
            .view([m, k as i64 + 1, p.d as i64])
            .to_kind(Kind::Double);
        let c = &nb - nb.mean_dim([1i64].as_slice(), true, Kind::Double);
        let eig = c.matmul(&c.transpose(1, 2)).linalg_eigvalsh("L");
        let eig = Vec::<f64>::try_from(eig.flatten(0, -1))?;
        out.extend(
            eig.chunks_exact(k + 1)
                .map(|e| ratio_dimension(e.to_vec(), alpha) as f64),
        );
    }
    Ok(out)
}

/// All three estimators.
pub fn intrinsic_dimension(p: &Points, params: &IdParams) -> Result<IdReport, AnalysisError> {
    params.check()?;
    let k = params.k;
    let nn = knn(p, k)?;
    let mle_pw = mle_pointwise(&nn, k);
    let lpca_pw = if params.pointwise {
        Some(lpca_pointwise(p, &nn, k, params.alpha_ratio)?)
    } else {
        None
    };
    Ok(IdReport {
        estimates: Estimates {
            twonn: Estimate {
                dimension: twonn(&nn, params.discard_fraction)?,
                pointwise: None,
            },
            mle: Estimate {
                dimension: harmonic_mean(&mle_pw),
                pointwise: params.pointwise.then_some(mle_pw),
            },
            lpca: Estimate {
                dimension: lpca(p, params.alpha_ratio)? as f64,
                pointwise: lpca_pw,
            },
        },
        n_points: p.n,
        n_dropped: p.dropped,
        params: *params,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ratio_counts_components_below_the_fraction() {
        assert_eq!(ratio_dimension(vec![1.0, 5.0, 4.0], 0.5), 1);
        assert_eq!(ratio_dimension(vec![1.0, 5.0, 4.0], 0.6), 2);
        assert_eq!(ratio_dimension(vec![1.0, 1.0, 1.0, 1.0], 0.75), 3);
        assert!((harmonic_mean(&[1.0, 2.0, 4.0]) - 12.0 / 7.0).abs() < 1e-12);
    }

    #[test]
    fn a_plane_in_ten_dimensions_has_dimension_two() {
        let mut s = 7u64;
        let mut u = || {
            s = s.wrapping_mul(6364136223846793005).wrapping_add(1);
            (s >> 11) as f64 / (1u64 << 53) as f64
        };
        let rows: Vec<Vec<f64>> = (0..800)
            .map(|_| {
                let (a, b) = (u(), u());
                (0..10)
                    .map(|j| a * (j as f64).cos() + b * (j as f64 * 0.5).sin())
                    .collect()
            })
            .collect();
        let p = Points::from_rows(&rows, "x").unwrap();
        let r = intrinsic_dimension(
            &p,
            &IdParams {
                pointwise: true,
                ..Default::default()
            },
        )
        .unwrap();
        assert!((r.estimates.twonn.dimension - 2.0).abs() < 0.2, "{r:?}");
        assert!((r.estimates.mle.dimension - 2.0).abs() < 0.3, "{r:?}");
        assert_eq!(r.estimates.lpca.dimension, 2.0);
        assert_eq!(r.estimates.mle.pointwise.as_ref().map(Vec::len), Some(800));
        let e = IdParams {
            alpha_ratio: 1.5,
            ..Default::default()
        }
        .check()
        .unwrap_err();
        assert!(e.to_string().starts_with("alpha_ratio"));
    }
}
