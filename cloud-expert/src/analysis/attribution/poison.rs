//! The poisoning check: flip the labels of a seeded fraction of the training set, train a fresh
//! expert network on it (cross-entropy, Adam, until it fits the flipped labels too), then rank
//! the training points by the attribution surrogate's suspicion and report how many flipped
//! points come first (precision at k, k = the number flipped), beside the network's own loss
//! on the given label (a standard mislabel detector) and chance (= the fraction).

use super::{attribute, labels_tensor, AttributionParams, AttributionReport, Network, PointSet};
use crate::analysis::{AnalysisError, Progress};
use crate::nets::{normalization_from, Net, NetSpec};
use offload_shared::repository::Arch;
use offload_shared::rng::SplitMix64;
use tch::{nn, nn::OptimizerConfig, Tensor};

/// Settings of the check.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields, default)]
pub struct PoisonParams {
    /// Fraction of training labels flipped (to another class, uniformly).
    pub fraction: f64,
    /// Seed of the flips, the initialisation and the batches.
    pub seed: u64,
    /// Training epochs.
    pub epochs: usize,
    /// Adam learning rate.
    pub lr: f64,
    /// Mini-batch size.
    pub batch_size: usize,
    /// Hidden widths of the MLP trained (default: the served expert's, else 256,128).
    pub hidden: Option<Vec<usize>>,
}

impl Default for PoisonParams {
    fn default() -> Self {
        Self {
            fraction: 0.1,
            seed: 0,
            epochs: 200,
            lr: 1e-3,
            batch_size: 64,
            hidden: None,
        }
    }
}

/// Precision at k of each ranking.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct PrecisionAtK {
    /// The attribution surrogate's suspicion.
    pub attribution: f64,
    /// The poisoned network's cross-entropy on the given label.
    pub network_loss: f64,
    /// Chance: the flipped fraction.
    pub random: f64,
}

/// The check's report.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct PoisonReport {
    /// Training points.
    pub n_train: usize,
    /// Labels flipped (= k).
    pub n_flipped: usize,
    /// Precision at k.
    pub precision_at_k: PrecisionAtK,
    /// Accuracy of the poisoned network on the labels it was given (training set).
    pub train_accuracy_given: f64,
    /// Its accuracy on the flipped points' given (wrong) labels: how far it memorised them.
    pub flipped_memorised: f64,
    /// Its accuracy on the held-out queries.
    pub test_accuracy: f64,
    /// The attribution run on the poisoned network (queries: the held-out set).
    pub attribution: AttributionReport,
}

/// Runs the check on a training set and held-out queries (both labelled).
#[allow(clippy::too_many_arguments)]
pub fn poison_check(
    train_x: &[f32],
    train_y: &[u32],
    test_x: &[f32],
    test_y: &[u32],
    input_shape: &[usize],
    num_classes: usize,
    p: &PoisonParams,
    attribution: &AttributionParams,
    progress: &Progress,
) -> Result<PoisonReport, AnalysisError> {
    if !(0.0..1.0).contains(&p.fraction) {
        return Err(AnalysisError::invalid(
            "poison.fraction",
            "must be in [0, 1)",
        ));
    }
    if p.epochs == 0
        || p.batch_size == 0
        || p.lr.partial_cmp(&0.0) != Some(std::cmp::Ordering::Greater)
    {
        return Err(AnalysisError::invalid(
            "poison",
            "epochs, batch_size and lr must be positive",
        ));
    }
    if num_classes < 2 {
        return Err(AnalysisError::invalid("train", "needs two classes or more"));
    }
    let d: usize = input_shape.iter().product();
    let n = train_y.len();
    let mut rng = SplitMix64::new(p.seed);
    let mut order: Vec<usize> = (0..n).collect();
    rng.shuffle(&mut order);
    let n_flip = (p.fraction * n as f64).round() as usize;
    let mut flipped = vec![false; n];
    let mut given = train_y.to_vec();
    for &i in &order[..n_flip] {
        let shift = 1 + rng.below(num_classes - 1) as u32;
        given[i] = (given[i] + shift) % num_classes as u32;
        flipped[i] = true;
    }
    let (vs, net) = train_classifier(train_x, &given, d, num_classes, p, &mut rng, progress)?;
    let x = Tensor::from_slice(train_x).view([n as i64, d as i64]);
    let y = labels_tensor(&given);
    let network = Network {
        net: &net,
        params: vs.trainable_variables(),
        single_score: false,
        num_classes,
    };
    let probs = network.probs(&x)?;
    let pred: Vec<i64> = Vec::try_from(&probs.argmax(1, false))?;
    let frac = |sel: &dyn Fn(usize) -> bool| {
        let (hit, all) = (0..n)
            .filter(|&i| sel(i))
            .fold((0usize, 0usize), |(h, a), i| {
                (h + usize::from(pred[i] == i64::from(given[i])), a + 1)
            });
        hit as f64 / all.max(1) as f64
    };
    let train_accuracy_given = frac(&|_| true);
    let flipped_memorised = frac(&|i| flipped[i]);
    let tx = Tensor::from_slice(test_x).view([test_y.len() as i64, d as i64]);
    let test_pred: Vec<i64> = Vec::try_from(&network.probs(&tx)?.argmax(1, false))?;
    let test_accuracy = test_pred
        .iter()
        .zip(test_y)
        .filter(|(a, b)| **a == i64::from(**b))
        .count() as f64
        / test_y.len().max(1) as f64;
    // The ranking needs a surrogate of the given labels: a label its kernel neighbourhood
    // contradicts then needs a large weight of its own, whether or not the network memorised
    // it (a surrogate of a network that did not would not see the flip at all).
    let mut attr_params = attribution.clone();
    attr_params.max_train = None;
    attr_params.targets = super::Targets::Labels;
    let report = attribute(
        &network,
        &PointSet {
            features: train_x,
            labels: Some(&given),
        },
        &PointSet {
            features: test_x,
            labels: Some(test_y),
        },
        d,
        &attr_params,
        progress,
    )?;
    let loss: Vec<f64> = {
        let idx = y.unsqueeze(1);
        Vec::try_from(&(-probs.gather(1, &idx, false).clamp_min(1e-300).log()).view([-1]))?
    };
    let precision = |score: &dyn Fn(usize) -> f64| {
        if n_flip == 0 {
            return f64::NAN;
        }
        let mut idx: Vec<usize> = (0..n).collect();
        idx.sort_by(|&a, &b| score(b).total_cmp(&score(a)));
        idx[..n_flip].iter().filter(|&&i| flipped[i]).count() as f64 / n_flip as f64
    };
    let susp = &report.all_suspicion;
    Ok(PoisonReport {
        n_train: n,
        n_flipped: n_flip,
        precision_at_k: PrecisionAtK {
            attribution: precision(&|i| susp[i].1),
            network_loss: precision(&|i| loss[i]),
            random: n_flip as f64 / n.max(1) as f64,
        },
        train_accuracy_given,
        flipped_memorised,
        test_accuracy,
        attribution: report,
    })
}

/// A fresh MLP (`p.hidden`, default 256, 128) trained by cross-entropy with Adam over seeded
/// mini-batches on `x` (`n * d`) and labels `y`.
pub fn train_classifier(
    x: &[f32],
    y: &[u32],
    d: usize,
    num_classes: usize,
    p: &PoisonParams,
    rng: &mut SplitMix64,
    progress: &Progress,
) -> Result<(nn::VarStore, Net), AnalysisError> {
    let hidden = p.hidden.clone().unwrap_or_else(|| vec![256, 128]);
    let vs = nn::VarStore::new(tch::Device::Cpu);
    let _seeded = crate::analysis::seeded_section();
    tch::manual_seed(p.seed as i64);
    let net = Net::new(
        &vs.root(),
        NetSpec {
            arch: Arch::Mlp { hidden },
            input_shape: vec![d],
            extra_inputs: 0,
            out_dim: num_classes,
            norm: normalization_from(x, d),
        },
    )
    .map_err(|e| AnalysisError::invalid("poison.hidden", e))?;
    let n = y.len();
    let x = Tensor::from_slice(x).view([n as i64, d as i64]);
    let y = labels_tensor(y);
    let mut opt = nn::Adam::default().build(&vs, p.lr)?;
    let mut order: Vec<i64> = (0..n as i64).collect();
    progress.plan(p.epochs);
    for _ in 0..p.epochs {
        rng.shuffle(&mut order);
        for batch in order.chunks(p.batch_size) {
            let idx = Tensor::from_slice(batch);
            let logits = net.forward(&x.index_select(0, &idx), None);
            let loss = logits.cross_entropy_for_logits(&y.index_select(0, &idx));
            opt.backward_step(&loss);
        }
        progress.step()?;
    }
    Ok((vs, net))
}
