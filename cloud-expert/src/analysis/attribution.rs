//! Data attribution with the normalised pseudo-NTK (spec `analysis.md` §5, arXiv 2305.14585):
//! the gradient kernel between queries and the training set ([`ntk`]), a kernel logistic
//! regression surrogate on its rows ([`surrogate`]), the surrogate's faithfulness to the network
//! (Kendall tau), the top-k training points supporting each query, and a ranking of training
//! points by how much the surrogate needs them for their own label (what finds flipped labels:
//! [`poison`]).
//!
//! Definitions chosen (the paper's printed formulas were not available):
//! - support of training point `i` for query `x` and class `c`: `K(x, x_i) W[i, c]`, `W` the
//!   surrogate's weights; queries are explained for the network's predicted class;
//! - suspicion of training point `i` with label `y_i`: `(1 - P(y_i | x_i)) / (n l2)`, `P` the
//!   surrogate's probability. At the optimum `W = F^T A` with dual weights
//!   `A = (T - P) / (n l2)` (F the kernel rows, T the targets), so for a surrogate fitted to the
//!   labels this is point `i`'s own dual weight on its label: how hard the kernel machine has
//!   to pull towards a label its neighbourhood contradicts (representer-point style).

pub mod bench;
pub mod expert;
pub mod ntk;
pub mod poison;
pub mod surrogate;
#[cfg(test)]
mod tests;

use super::{AnalysisError, Progress};
use crate::nets::Net;
use ntk::{KernelKind, KernelOptions};
use std::time::Instant;
use tch::{Kind, Tensor};

/// What the surrogate is fitted to.
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
pub enum Targets {
    /// The network's class probabilities (a surrogate of the network: the default).
    #[default]
    Network,
    /// The training labels (one-hot).
    Labels,
}

/// Attribution settings (all optional).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields, default)]
pub struct AttributionParams {
    /// `pntk` (gradient of the sum of the logits) or `trntk` (per-class gradients summed).
    pub kernel: KernelKind,
    /// Cosine-normalise the kernel.
    pub normalize: bool,
    /// Project gradients to this many dimensions (Rademacher; none: exact).
    pub projection: Option<usize>,
    /// Seed of the projection and of training-set subsampling.
    pub seed: u64,
    /// L2 penalty of the surrogate (per mean loss).
    pub l2: f64,
    /// Surrogate targets.
    pub targets: Targets,
    /// Training points reported per query.
    pub top_k: usize,
    /// Most suspicious training points reported.
    pub top_suspicious: usize,
    /// Use at most this many training points (a seeded subsample).
    pub max_train: Option<usize>,
    /// Newton iterations at most.
    pub max_iter: usize,
    /// The solver stops when every gradient entry is below this.
    pub tol: f64,
}

impl Default for AttributionParams {
    fn default() -> Self {
        Self {
            kernel: KernelKind::Pntk,
            normalize: true,
            projection: None,
            seed: 0,
            l2: 1e-3,
            targets: Targets::Network,
            top_k: 5,
            top_suspicious: 20,
            max_train: None,
            max_iter: 1000,
            tol: 1e-6,
        }
    }
}

/// A classifier network and its parameters.
pub struct Network<'a> {
    /// The network.
    pub net: &'a Net,
    /// Its trainable parameters.
    pub params: Vec<Tensor>,
    /// Whether it outputs one binary score (probabilities `[1 - p, p]`, `p = sigmoid(2 s)`).
    pub single_score: bool,
    /// Classes.
    pub num_classes: usize,
}

impl Network<'_> {
    /// Class probabilities `[n, classes]` float64.
    pub fn probs(&self, x: &Tensor) -> Result<Tensor, AnalysisError> {
        tch::no_grad(|| {
            let raw = self.net.forward(x, None);
            Ok(crate::nets::class_probs(&raw, self.single_score)?.to_kind(Kind::Double))
        })
    }
}

/// Points with optional labels (row-major features).
pub struct PointSet<'a> {
    /// `n * d` values.
    pub features: &'a [f32],
    /// One label per point, if known.
    pub labels: Option<&'a [u32]>,
}

/// One training point's part in a query's answer.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct Support {
    /// Index in the training set (before any subsampling).
    pub train_index: usize,
    /// Its training label.
    pub label: u32,
    /// `K(query, point)`.
    pub kernel: f64,
    /// The surrogate's weight of the point for the explained class.
    pub weight: f64,
    /// `kernel * weight`.
    pub score: f64,
}

/// One query explained.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct QueryAttribution {
    /// Index among the queries.
    pub index: usize,
    /// Its label, if given.
    pub label: Option<u32>,
    /// The network's class (the one explained).
    pub network_class: u32,
    /// The surrogate's class.
    pub surrogate_class: u32,
    /// The training points supporting the network's class most.
    pub top: Vec<Support>,
}

/// A training point ranked by suspicion.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct Suspicion {
    /// Index in the training set.
    pub train_index: usize,
    /// Its label.
    pub label: u32,
    /// `(1 - P(label | point)) / (n l2)`: its dual weight on its label.
    pub score: f64,
}

/// How the kernel was computed, and its cost.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct KernelInfo {
    /// pNTK or trNTK.
    pub kind: KernelKind,
    /// Cosine-normalised.
    pub normalized: bool,
    /// Projection width, if projected.
    pub projection: Option<usize>,
    /// `factored` (MLP) or `per-sample`.
    pub method: String,
    /// Network parameters.
    pub gradient_dim: usize,
    /// Training points (columns).
    pub n_train: usize,
    /// Queries (rows besides the training points).
    pub n_queries: usize,
    /// Seconds to build it.
    pub seconds: f64,
    /// Bytes of the kernel block held.
    pub bytes: usize,
}

/// The surrogate and its fidelity.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct SurrogateInfo {
    /// What it was fitted to.
    pub targets: Targets,
    /// Its L2 penalty.
    pub l2: f64,
    /// Newton iterations.
    pub iterations: usize,
    /// Whether the solver met its tolerance.
    pub converged: bool,
    /// Seconds to fit.
    pub seconds: f64,
    /// Kendall tau-b between the surrogate's and the network's probability of each query's
    /// labelled class (the network's class where no label is given).
    pub kendall_tau: f64,
    /// Share of queries where the surrogate's class equals the network's.
    pub class_agreement: f64,
    /// Share of training points where they agree.
    pub train_class_agreement: f64,
}

/// The arrays behind a report, for `cloud-expert analyze attribution --dump` (not serialised).
#[derive(Debug)]
pub struct Arrays {
    /// Training points kept, then queries: `[n + m, d]` float32.
    pub points: Tensor,
    /// The kernel `[n + m, n]` float64.
    pub kernel: Tensor,
    /// The surrogate's class probabilities of the queries `[m, classes]`.
    pub surrogate_query_proba: Tensor,
    /// The network's class probabilities of the queries `[m, classes]`.
    pub network_query_proba: Tensor,
    /// Training-set index of each kept training point.
    pub train_index: Vec<usize>,
    /// Their labels.
    pub train_labels: Vec<u32>,
}

/// `/v1/analysis/attribution`'s report.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct AttributionReport {
    /// The kernel.
    pub kernel: KernelInfo,
    /// The surrogate.
    pub surrogate: SurrogateInfo,
    /// Every query, explained.
    pub queries: Vec<QueryAttribution>,
    /// The most suspicious training points, most first.
    pub suspicious: Vec<Suspicion>,
    /// Suspicion of every training point, in training-set order (subsampled points only).
    #[serde(skip)]
    pub all_suspicion: Vec<(usize, f64)>,
    /// The arrays it was computed from.
    #[serde(skip)]
    pub arrays: Option<Arrays>,
}

/// Attributes the network's answers on `queries` to `train` (`d` values per point).
pub fn attribute(
    network: &Network<'_>,
    train: &PointSet<'_>,
    queries: &PointSet<'_>,
    d: usize,
    p: &AttributionParams,
    progress: &Progress,
) -> Result<AttributionReport, AnalysisError> {
    let labels = train
        .labels
        .ok_or_else(|| AnalysisError::invalid("train", "training labels are required"))?;
    if p.top_k == 0 {
        return Err(AnalysisError::invalid("params.top_k", "must be positive"));
    }
    let n_all = train.features.len() / d;
    let keep = subsample(n_all, p.max_train, p.seed);
    let n = keep.len();
    let m = queries.features.len() / d;
    let mut x: Vec<f32> = Vec::with_capacity((n + m) * d);
    for &i in &keep {
        x.extend_from_slice(&train.features[i * d..(i + 1) * d]);
    }
    x.extend_from_slice(queries.features);
    let x = Tensor::from_slice(&x).view([(n + m) as i64, d as i64]);
    let opts = KernelOptions {
        kind: p.kernel,
        normalize: p.normalize,
        projection: p.projection,
        seed: p.seed,
        ..KernelOptions::default()
    };
    let t0 = Instant::now();
    let kern = ntk::gradient_kernel(network.net, &network.params, &x, n, &opts, progress)?;
    let kernel_seconds = t0.elapsed().as_secs_f64();
    let probs = network.probs(&x)?;
    let c = network.num_classes as i64;
    let train_labels: Vec<u32> = keep.iter().map(|&i| labels[i]).collect();
    let targets = match p.targets {
        Targets::Network => probs.narrow(0, 0, n as i64),
        Targets::Labels => labels_tensor(&train_labels)
            .one_hot(c)
            .to_kind(Kind::Double),
    };
    let t1 = Instant::now();
    let k_train = kern.k.narrow(0, 0, n as i64);
    let s = surrogate::fit(&k_train, &targets, p.l2, p.max_iter, p.tol)?;
    let surrogate_seconds = t1.elapsed().as_secs_f64();
    let k_query = kern.k.narrow(0, n as i64, m as i64);
    let sp_train = s.proba(&k_train);
    let sp_query = s.proba(&k_query);
    let net_class = probs.argmax(1, false);
    let agree = |a: &Tensor, b: &Tensor| -> f64 {
        if a.numel() == 0 {
            return f64::NAN;
        }
        a.eq_tensor(b)
            .to_kind(Kind::Double)
            .mean(Kind::Double)
            .double_value(&[])
    };
    let train_class_agreement = agree(
        &sp_train.argmax(1, false),
        &net_class.narrow(0, 0, n as i64),
    );
    let (q_net, q_sur) = (
        net_class.narrow(0, n as i64, m as i64),
        sp_query.argmax(1, false),
    );
    let class_agreement = agree(&q_sur, &q_net);
    let q_net_class: Vec<i64> = Vec::try_from(&q_net)?;
    let q_sur_class: Vec<i64> = Vec::try_from(&q_sur)?;
    let explained: Vec<i64> = match queries.labels {
        Some(l) => l.iter().map(|&v| i64::from(v)).collect(),
        None => q_net_class.clone(),
    };
    let idx = Tensor::from_slice(&explained).unsqueeze(1);
    let net_p: Vec<f64> = if m == 0 {
        Vec::new()
    } else {
        Vec::try_from(
            &probs
                .narrow(0, n as i64, m as i64)
                .gather(1, &idx, false)
                .view([-1]),
        )?
    };
    let sur_p: Vec<f64> = if m == 0 {
        Vec::new()
    } else {
        Vec::try_from(&sp_query.gather(1, &idx, false).view([-1]))?
    };
    let kendall_tau = surrogate::kendall_tau(&sur_p, &net_p);
    // Per-query supports for the network's class.
    let w: Vec<f64> = Vec::try_from(&s.w.contiguous().view([-1]))?;
    let kq: Vec<f64> = Vec::try_from(&k_query.contiguous().view([-1]))?;
    let c = c as usize;
    let queries_out = (0..m)
        .map(|q| {
            let cls = q_net_class[q] as usize;
            let mut sup: Vec<Support> = (0..n)
                .map(|i| {
                    let kernel = kq[q * n + i];
                    let weight = w[i * c + cls];
                    Support {
                        train_index: keep[i],
                        label: train_labels[i],
                        kernel,
                        weight,
                        score: kernel * weight,
                    }
                })
                .collect();
            let k = p.top_k.min(n);
            sup.select_nth_unstable_by(k - 1, |a, b| b.score.total_cmp(&a.score));
            sup.truncate(k);
            sup.sort_by(|a, b| b.score.total_cmp(&a.score));
            QueryAttribution {
                index: q,
                label: queries.labels.map(|l| l[q]),
                network_class: cls as u32,
                surrogate_class: q_sur_class[q] as u32,
                top: sup,
            }
        })
        .collect();
    let own: Vec<f64> = Vec::try_from(
        &sp_train
            .gather(1, &labels_tensor(&train_labels).unsqueeze(1), false)
            .view([-1]),
    )?;
    let all_suspicion: Vec<(usize, f64)> = (0..n)
        .map(|i| (keep[i], (1.0 - own[i]) / (n as f64 * p.l2)))
        .collect();
    let mut ranked: Vec<usize> = (0..n).collect();
    ranked.sort_by(|&a, &b| all_suspicion[b].1.total_cmp(&all_suspicion[a].1));
    let suspicious = ranked
        .iter()
        .take(p.top_suspicious)
        .map(|&i| Suspicion {
            train_index: keep[i],
            label: train_labels[i],
            score: all_suspicion[i].1,
        })
        .collect();
    Ok(AttributionReport {
        kernel: KernelInfo {
            kind: p.kernel,
            normalized: p.normalize,
            projection: p.projection,
            method: kern.method.into(),
            gradient_dim: kern.gradient_dim,
            n_train: n,
            n_queries: m,
            seconds: kernel_seconds,
            bytes: kern.k.numel() * 8,
        },
        surrogate: SurrogateInfo {
            targets: p.targets,
            l2: p.l2,
            iterations: s.iterations,
            converged: s.converged,
            seconds: surrogate_seconds,
            kendall_tau,
            class_agreement,
            train_class_agreement,
        },
        queries: queries_out,
        suspicious,
        all_suspicion,
        arrays: Some(Arrays {
            points: x,
            kernel: kern.k,
            surrogate_query_proba: sp_query,
            network_query_proba: probs.narrow(0, n as i64, m as i64),
            train_index: keep,
            train_labels,
        }),
    })
}

/// Class indices as an int64 tensor.
pub fn labels_tensor(y: &[u32]) -> Tensor {
    let v: Vec<i64> = y.iter().map(|&c| i64::from(c)).collect();
    Tensor::from_slice(&v)
}

/// Indices kept of `n` points: all, or a seeded sorted subsample of `max`.
fn subsample(n: usize, max: Option<usize>, seed: u64) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..n).collect();
    if let Some(k) = max.filter(|&k| k < n) {
        offload_shared::rng::SplitMix64::new(seed).shuffle(&mut idx);
        idx.truncate(k);
        idx.sort_unstable();
    }
    idx
}
