//! Stratification by a sparse mixture of dictionary-learning experts (spec §2).
//!
//! Model (defaults from the authors' code): embeddings (optionally standardised per
//! dimension first: `standardize`) centred and projected by PCA to
//! `pca_dim` (64), then scaled to unit mean squared norm. K experts (7), each a top-k LISTA
//! encoder of `layers` (5) steps, `z <- TopK_s(W x + S z)` with a straight-through gradient,
//! code dimension `code_dim` (32) and its own dictionary `D_e` (pca_dim x code_dim), at
//! sparsities 8, 12, ..., one per expert. An attention gate
//! `p = softmax(q(x) . k_e / sqrt(gate_dim))` with a linear query and learned keys.
//! Training is unsupervised: Adam on the gate-weighted reconstruction error
//! `sum_e p_e ||x - D_e z_e||^2`. Labels, when given, are only used to report purities.
//!
//! Definitions of the reported statistics (the paper's printed formulas were not available):
//! - hard assignment: the sparsest expert whose gate is at least 0.5 x the largest gate;
//! - gating entropy per sample `-sum_e p_e ln p_e / ln K` (in [0, 1]), its mean and a
//!   10-bin histogram; the entropy of the mean gate, also over ln K;
//! - usage: the share of samples hard-assigned to each expert;
//! - key cosine: cosine similarity of the gate keys;
//! - subspace distance: principal angles theta between the column spaces of two
//!   dictionaries (cos theta = singular values of Q_a^T Q_b), distance `sqrt(sum theta^2)`;
//! - centroid distance: Euclidean distance between the means (in PCA space) of the samples
//!   hard-assigned to two experts (null when one has none);
//! - strata: KMeans (`kmeans_k`, 5) in PCA space, each with its lPCA dimension (variance
//!   0.75), size and sparsity-weighted complexity (mean sparsity of its samples' experts);
//!   silhouette, Davies-Bouldin and Calinski-Harabasz scores of the strata.
//!
//! Deterministic given the seed: initialisation and batch order come from the project's
//! SplitMix64, never libtorch's process-wide generator; the KMeans seed is derived.

use super::cluster;
use super::{AnalysisError, Points, Progress};
use offload_shared::rng::SplitMix64;
use serde::{Deserialize, Serialize};
use tch::nn::{self, OptimizerConfig};
use tch::{Device, Kind, Tensor};

/// Settings (all optional).
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields, default)]
pub struct StratifyParams {
    /// Experts K.
    pub experts: usize,
    /// PCA dimension (capped at the input dimension and n - 1).
    pub pca_dim: usize,
    /// Code dimension of each expert.
    pub code_dim: usize,
    /// LISTA steps.
    pub layers: usize,
    /// Sparsity of each expert (default 8, 12, 16, ... capped at code_dim).
    pub sparsities: Option<Vec<usize>>,
    /// Gate query/key dimension.
    pub gate_dim: usize,
    /// Passes over the data.
    pub epochs: usize,
    /// Samples per step.
    pub batch_size: usize,
    /// Adam learning rate.
    pub lr: f64,
    /// Seed.
    pub seed: u64,
    /// KMeans strata.
    pub kmeans_k: usize,
    /// Include the n x K gate matrix.
    pub return_gates: bool,
    /// Scale every input dimension to unit variance before PCA (LLM hidden states have a few
    /// "massive activation" dimensions that otherwise dominate every distance).
    pub standardize: bool,
    /// With labels: weight of a supervised term, the cross-entropy of a linear classifier on
    /// the gate-weighted expert codes, added to the reconstruction loss (0: labels only give
    /// purities).
    pub label_weight: f64,
}

impl Default for StratifyParams {
    fn default() -> Self {
        Self {
            experts: 7,
            pca_dim: 64,
            code_dim: 32,
            layers: 5,
            sparsities: None,
            gate_dim: 128,
            epochs: 30,
            batch_size: 256,
            lr: 1e-3,
            seed: 0,
            kmeans_k: 5,
            return_gates: false,
            standardize: false,
            label_weight: 0.0,
        }
    }
}

/// One KMeans stratum.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Stratum {
    /// Samples.
    pub size: usize,
    /// lPCA (0.75) dimension of its samples (null below 3 distinct samples).
    pub lpca_dimension: Option<usize>,
    /// Mean sparsity of its samples' hard-assigned experts.
    pub sparsity_weighted_complexity: f64,
    /// Share of its samples with the majority label (when labels were given).
    pub label_purity: Option<f64>,
}

/// The report of `/v1/analysis/stratify`.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct StratifyReport {
    /// Samples.
    pub n_points: usize,
    /// PCA dimension used.
    pub pca_dim: usize,
    /// Each expert's sparsity.
    pub sparsities: Vec<usize>,
    /// Training loss per epoch.
    pub loss_history: Vec<f64>,
    /// Per-sample hard assignment (expert index).
    pub assignment: Vec<usize>,
    /// Share of samples per expert.
    pub usage: Vec<f64>,
    /// Per-sample gating entropy over ln K.
    pub gating_entropy: Vec<f64>,
    /// Its mean.
    pub mean_gating_entropy: f64,
    /// Its 10-bin histogram on [0, 1].
    pub gating_entropy_histogram: Vec<usize>,
    /// Entropy of the mean gate over ln K.
    pub mean_gate_entropy: f64,
    /// K x K cosine similarity of the gate keys.
    pub key_cosine: Vec<Vec<f64>>,
    /// K x K principal-angle distance between dictionary subspaces.
    pub subspace_distance: Vec<Vec<f64>>,
    /// K x K distance between expert centroids (null where an expert has no samples).
    pub centroid_distance: Vec<Vec<Option<f64>>>,
    /// Reconstruction MSE of each expert on its own samples (null when it has none).
    pub expert_mse: Vec<Option<f64>>,
    /// KMeans stratum of each sample.
    pub strata_assignment: Vec<usize>,
    /// The strata.
    pub strata: Vec<Stratum>,
    /// Silhouette score of the strata.
    pub silhouette: f64,
    /// Davies-Bouldin score of the strata.
    pub davies_bouldin: f64,
    /// Calinski-Harabasz score of the strata.
    pub calinski_harabasz: f64,
    /// Share of samples whose expert's majority label is theirs (when labels were given).
    pub expert_label_purity: Option<f64>,
    /// Training accuracy of the supervised term's classifier (with `label_weight` > 0).
    pub label_accuracy: Option<f64>,
    /// n x K gates (when asked).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gates: Option<Vec<Vec<f64>>>,
}

/// A float32 tensor of `shape` with N(0, std^2) entries drawn from `rng`.
fn gaussian(shape: &[i64], std: f64, rng: &mut SplitMix64) -> Tensor {
    let n: i64 = shape.iter().product();
    let v: Vec<f32> = (0..n).map(|_| (rng.normal() * std) as f32).collect();
    Tensor::from_slice(&v).view(shape)
}

/// Straight-through top-k by magnitude along the last dimension.
fn topk_st(z: &Tensor, s: i64) -> Tensor {
    let idx = z.abs().topk(s, -1, true, false).1;
    let mask = z.zeros_like().scatter_value(-1, &idx, 1.0);
    z + (z * &mask - z).detach()
}

struct Expert {
    w: Tensor,
    s: Tensor,
    dict: Tensor,
    sparsity: i64,
}

impl Expert {
    fn code(&self, x: &Tensor, layers: usize) -> Tensor {
        let wx = x.matmul(&self.w);
        let mut z = topk_st(&wx, self.sparsity);
        for _ in 1..layers {
            z = topk_st(&(&wx + z.matmul(&self.s)), self.sparsity);
        }
        z
    }

    /// Per-sample squared reconstruction error.
    fn error(&self, x: &Tensor, layers: usize) -> Tensor {
        let rec = self.code(x, layers).matmul(&self.dict.tr());
        (x - rec).square().sum_dim_intlist(-1, false, Kind::Float)
    }
}

/// Validates `rows` and `labels`; (values, n, d).
fn input(
    rows: &[Vec<f64>],
    labels: Option<&[i64]>,
) -> Result<(Vec<f64>, usize, usize), AnalysisError> {
    let n = rows.len();
    let d = rows.first().map_or(0, Vec::len);
    if n < 10 || d < 2 {
        return Err(AnalysisError::invalid(
            "embeddings",
            format!("needs at least 10 rows of 2+ values, got {n} x {d}"),
        ));
    }
    let mut v = Vec::with_capacity(n * d);
    for (i, r) in rows.iter().enumerate() {
        if r.len() != d {
            return Err(AnalysisError::invalid(
                "embeddings",
                format!("row {i} has {} values, row 0 has {d}", r.len()),
            ));
        }
        if r.iter().any(|x| !x.is_finite()) {
            return Err(AnalysisError::invalid(
                "embeddings",
                format!("row {i} has a non-finite value"),
            ));
        }
        v.extend_from_slice(r);
    }
    if labels.is_some_and(|l| l.len() != n) {
        return Err(AnalysisError::invalid(
            "labels",
            format!(
                "has {} entries for {n} rows",
                labels.map_or(0, <[i64]>::len)
            ),
        ));
    }
    Ok((v, n, d))
}

/// Trains the mixture and reports (module documentation).
pub fn stratify(
    rows: &[Vec<f64>],
    labels: Option<&[i64]>,
    p: &StratifyParams,
    progress: &Progress,
) -> Result<StratifyReport, AnalysisError> {
    let (v, n, d) = input(rows, labels)?;
    let k = p.experts;
    if !(2..=64).contains(&k) {
        return Err(AnalysisError::invalid("experts", "must be in 2..=64"));
    }
    if p.code_dim < 2 || p.layers == 0 || p.epochs == 0 || p.batch_size == 0 || p.gate_dim == 0 {
        return Err(AnalysisError::invalid(
            "params",
            "code_dim >= 2 and layers, epochs, batch_size, gate_dim >= 1",
        ));
    }
    if !(p.lr > 0.0 && p.lr < 1.0) {
        return Err(AnalysisError::invalid("lr", "must be in (0, 1)"));
    }
    let sparsities: Vec<usize> = match &p.sparsities {
        Some(s) if s.len() != k => {
            return Err(AnalysisError::invalid(
                "sparsities",
                format!("needs {k} entries (one per expert)"),
            ))
        }
        Some(s) => s.clone(),
        None => (0..k).map(|e| (8 + 4 * e).min(p.code_dim)).collect(),
    };
    if sparsities.iter().any(|&s| s == 0 || s > p.code_dim) {
        return Err(AnalysisError::invalid(
            "sparsities",
            format!("each must be in 1..={}", p.code_dim),
        ));
    }
    // Every random draw comes from this generator, not libtorch's process-wide one, so a run
    // depends on its seed alone, whatever else runs in the process.
    let mut rng = SplitMix64::new(p.seed);
    // PCA by the covariance's eigenvectors, in float64.
    let pca = p.pca_dim.min(d).min(n - 1);
    let mut xd = Tensor::from_slice(&v).view([n as i64, d as i64]);
    if p.standardize {
        let sd = xd.std_dim([0i64].as_slice(), true, true) + 1e-12;
        xd = (&xd - xd.mean_dim(0, true, Kind::Double)) / sd;
    }
    let centred = &xd - xd.mean_dim(0, true, Kind::Double);
    let (_, vecs) = (centred.tr().mm(&centred) / (n as f64 - 1.0)).f_linalg_eigh("L")?;
    let top = vecs.narrow(1, d as i64 - pca as i64, pca as i64).flip([1]);
    let z = centred.mm(&top);
    let scale = z
        .square()
        .sum_dim_intlist(-1, false, Kind::Double)
        .mean(Kind::Double)
        .sqrt()
        .double_value(&[])
        .max(1e-12);
    let zs = z / scale;
    let xs = zs.to_kind(Kind::Float);

    let vs = nn::VarStore::new(Device::Cpu);
    let root = vs.root();
    let (pd, cd, gd) = (pca as i64, p.code_dim as i64, p.gate_dim as i64);
    let experts: Vec<Expert> = sparsities
        .iter()
        .enumerate()
        .map(|(e, &s)| Expert {
            w: root.var_copy(
                &format!("w{e}"),
                &gaussian(&[pd, cd], (1.0 / pd as f64).sqrt(), &mut rng),
            ),
            s: root.var_copy(
                &format!("s{e}"),
                &gaussian(&[cd, cd], 0.1 / (cd as f64).sqrt(), &mut rng),
            ),
            dict: root.var_copy(
                &format!("d{e}"),
                &gaussian(&[pd, cd], (1.0 / cd as f64).sqrt(), &mut rng),
            ),
            sparsity: s as i64,
        })
        .collect();
    let wq = root.var_copy(
        "wq",
        &gaussian(&[pd, gd], (1.0 / pd as f64).sqrt(), &mut rng),
    );
    let keys = root.var_copy("keys", &gaussian(&[k as i64, gd], 1.0, &mut rng));
    let gates = |x: &Tensor| {
        (x.matmul(&wq).matmul(&keys.tr()) / (gd as f64).sqrt()).softmax(-1, Kind::Float)
    };
    let errors = |x: &Tensor| {
        Tensor::stack(
            &experts
                .iter()
                .map(|e| e.error(x, p.layers))
                .collect::<Vec<_>>(),
            1,
        )
    };
    if !(p.label_weight >= 0.0 && p.label_weight.is_finite()) {
        return Err(AnalysisError::invalid(
            "label_weight",
            "must be finite and >= 0",
        ));
    }
    // Supervised term: labels mapped to 0..C in sorted order, a linear head on the mixed code.
    let supervised = labels.filter(|_| p.label_weight > 0.0).map(|l| {
        let mut classes: Vec<i64> = l.to_vec();
        classes.sort_unstable();
        classes.dedup();
        let y: Vec<i64> = l
            .iter()
            .map(|v| classes.binary_search(v).unwrap_or(0) as i64)
            .collect();
        let c = classes.len() as i64;
        let head = (
            root.var_copy(
                "label_head_weight",
                &gaussian(&[cd, c], 1.0 / (cd as f64).sqrt(), &mut rng),
            ),
            root.zeros("label_head_bias", &[c]),
        );
        (Tensor::from_slice(&y), head)
    });
    let mixed_code = |x: &Tensor, g: &Tensor| {
        let codes = Tensor::stack(
            &experts
                .iter()
                .map(|e| e.code(x, p.layers))
                .collect::<Vec<_>>(),
            1,
        );
        (codes * g.unsqueeze(-1)).sum_dim_intlist(1, false, Kind::Float)
    };
    let mut opt = nn::Adam::default()
        .build(&vs, p.lr)
        .map_err(AnalysisError::from)?;
    progress.plan(p.epochs);
    let mut loss_history = Vec::with_capacity(p.epochs);
    let bs = p.batch_size.min(n) as i64;
    for _ in 0..p.epochs {
        progress.check()?;
        let mut order: Vec<i64> = (0..n as i64).collect();
        rng.shuffle(&mut order);
        let perm = Tensor::from_slice(&order);
        let (mut total, mut batches) = (0.0, 0);
        let mut start = 0;
        while start < n as i64 {
            let idx = perm.narrow(0, start, bs.min(n as i64 - start));
            let xb = xs.index_select(0, &idx);
            let g = gates(&xb);
            let mut loss = (&g * errors(&xb))
                .sum_dim_intlist(-1, false, Kind::Float)
                .mean(Kind::Float)
                / pd as f64;
            if let Some((y, head)) = &supervised {
                let logits = mixed_code(&xb, &g).matmul(&head.0) + &head.1;
                loss += logits.cross_entropy_for_logits(&y.index_select(0, &idx)) * p.label_weight;
            }
            opt.backward_step(&loss);
            total += loss.double_value(&[]);
            batches += 1;
            start += bs;
        }
        loss_history.push(total / batches as f64);
        progress.step()?;
    }
    let _g = tch::no_grad_guard();
    let g = gates(&xs).to_kind(Kind::Double);
    let err = errors(&xs).to_kind(Kind::Double);
    let gv: Vec<f64> = Vec::try_from(g.flatten(0, -1))?;
    let ev: Vec<f64> = Vec::try_from(err.flatten(0, -1))?;
    let xv: Vec<f64> = Vec::try_from(zs.flatten(0, -1))?;
    let mut report = statistics(&gv, &ev, &xv, n, pca, &sparsities, labels, p)?;
    report.loss_history = loss_history;
    if let Some((y, head)) = &supervised {
        let pred = (mixed_code(&xs, &gates(&xs)).matmul(&head.0) + &head.1).argmax(1, false);
        report.label_accuracy = Some(
            pred.eq_tensor(y)
                .to_kind(Kind::Double)
                .mean(Kind::Double)
                .double_value(&[]),
        );
    }
    // Key cosine and subspace distances.
    let kn = &keys / keys.norm_scalaropt_dim(2, [1i64].as_slice(), true);
    report.key_cosine = matrix(&kn.mm(&kn.tr()).to_kind(Kind::Double), k)?;
    let qs: Vec<Tensor> = experts
        .iter()
        .map(|e| Tensor::linalg_qr(&e.dict.to_kind(Kind::Double), "reduced").0)
        .collect();
    let mut sub = vec![vec![0f64; k]; k];
    for a in 0..k {
        for b in a + 1..k {
            let sv: Vec<f64> = Vec::try_from(qs[a].tr().mm(&qs[b]).svd(true, false).1)?;
            let dist = sv
                .iter()
                .map(|c| c.clamp(-1.0, 1.0).acos().powi(2))
                .sum::<f64>()
                .sqrt();
            sub[a][b] = dist;
            sub[b][a] = dist;
        }
    }
    report.subspace_distance = sub;
    Ok(report)
}

fn matrix(t: &Tensor, k: usize) -> Result<Vec<Vec<f64>>, AnalysisError> {
    let v: Vec<f64> = Vec::try_from(t.flatten(0, -1))?;
    Ok(v.chunks(k).map(<[f64]>::to_vec).collect())
}

/// Everything computed from the gates, the per-expert errors and the PCA data.
#[allow(clippy::too_many_arguments)]
fn statistics(
    g: &[f64],
    err: &[f64],
    x: &[f64],
    n: usize,
    d: usize,
    sparsities: &[usize],
    labels: Option<&[i64]>,
    p: &StratifyParams,
) -> Result<StratifyReport, AnalysisError> {
    let k = sparsities.len();
    let lnk = (k as f64).ln();
    let gate = |i: usize| &g[i * k..(i + 1) * k];
    let assignment: Vec<usize> = (0..n)
        .map(|i| {
            let gi = gate(i);
            let max = gi.iter().copied().fold(0.0, f64::max);
            (0..k)
                .filter(|&e| gi[e] >= 0.5 * max)
                .min_by_key(|&e| (sparsities[e], e))
                .unwrap_or(0)
        })
        .collect();
    let entropy = |q: &[f64]| {
        -q.iter()
            .filter(|&&v| v > 0.0)
            .map(|v| v * v.ln())
            .sum::<f64>()
            / lnk
    };
    let gating_entropy: Vec<f64> = (0..n).map(|i| entropy(gate(i))).collect();
    let mut hist = vec![0usize; 10];
    for h in &gating_entropy {
        hist[((h * 10.0) as usize).min(9)] += 1;
    }
    let mean_gate: Vec<f64> = (0..k)
        .map(|e| (0..n).map(|i| g[i * k + e]).sum::<f64>() / n as f64)
        .collect();
    let mut count = vec![0usize; k];
    assignment.iter().for_each(|&e| count[e] += 1);
    let mut cent = vec![0f64; k * d];
    let mut mse = vec![0f64; k];
    for (i, &e) in assignment.iter().enumerate() {
        cent[e * d..(e + 1) * d]
            .iter_mut()
            .zip(&x[i * d..(i + 1) * d])
            .for_each(|(c, v)| *c += v);
        mse[e] += err[i * k + e] / d as f64;
    }
    let centroid = |e: usize| -> Vec<f64> {
        cent[e * d..(e + 1) * d]
            .iter()
            .map(|c| c / count[e] as f64)
            .collect()
    };
    let centroid_distance = (0..k)
        .map(|a| {
            (0..k)
                .map(|b| {
                    (count[a] > 0 && count[b] > 0).then(|| {
                        centroid(a)
                            .iter()
                            .zip(centroid(b))
                            .map(|(x, y)| (x - y).powi(2))
                            .sum::<f64>()
                            .sqrt()
                    })
                })
                .collect()
        })
        .collect();
    let km = cluster::kmeans(x, d, p.kmeans_k, 4, p.seed ^ 0x5EED)?;
    let (silhouette, davies_bouldin, calinski_harabasz) =
        cluster::scores(x, d, &km.labels, p.kmeans_k);
    let purity = |members: &[usize]| -> Option<f64> {
        let l = labels?;
        if members.is_empty() {
            return None;
        }
        let mut tally = std::collections::HashMap::new();
        members
            .iter()
            .for_each(|&i| *tally.entry(l[i]).or_insert(0usize) += 1);
        Some(*tally.values().max().unwrap_or(&0) as f64 / members.len() as f64)
    };
    let strata = (0..p.kmeans_k)
        .map(|s| {
            let members: Vec<usize> = (0..n).filter(|&i| km.labels[i] == s).collect();
            let data: Vec<f32> = members
                .iter()
                .flat_map(|&i| x[i * d..(i + 1) * d].iter().map(|&v| v as f32))
                .collect();
            let lpca = Points::new(data, members.len(), d, "stratum")
                .ok()
                .and_then(|pts| super::id::lpca(&pts, 0.75).ok());
            Stratum {
                size: members.len(),
                lpca_dimension: lpca,
                sparsity_weighted_complexity: members
                    .iter()
                    .map(|&i| sparsities[assignment[i]] as f64)
                    .sum::<f64>()
                    / members.len().max(1) as f64,
                label_purity: purity(&members),
            }
        })
        .collect();
    let expert_label_purity = labels.map(|_| {
        (0..k)
            .map(|e| {
                let members: Vec<usize> = (0..n).filter(|&i| assignment[i] == e).collect();
                purity(&members).unwrap_or(0.0) * members.len() as f64
            })
            .sum::<f64>()
            / n as f64
    });
    Ok(StratifyReport {
        n_points: n,
        pca_dim: d,
        sparsities: sparsities.to_vec(),
        loss_history: Vec::new(),
        usage: count.iter().map(|&c| c as f64 / n as f64).collect(),
        mean_gating_entropy: gating_entropy.iter().sum::<f64>() / n as f64,
        gating_entropy_histogram: hist,
        mean_gate_entropy: entropy(&mean_gate),
        key_cosine: Vec::new(),
        subspace_distance: Vec::new(),
        centroid_distance,
        expert_mse: (0..k)
            .map(|e| (count[e] > 0).then(|| mse[e] / count[e] as f64))
            .collect(),
        strata_assignment: km.labels.clone(),
        strata,
        silhouette,
        davies_bouldin,
        calinski_harabasz,
        expert_label_purity,
        label_accuracy: None,
        gates: p
            .return_gates
            .then(|| g.chunks(k).map(<[f64]>::to_vec).collect()),
        gating_entropy,
        assignment,
    })
}

#[cfg(test)]
mod tests;
