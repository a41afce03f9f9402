//! The joint training loop of an expert and its rejector for a fixed legacy model, for the three
//! formulations of [`Mode`], with the async expert copy (sync period S), early stopping on the
//! validation system loss, and a progress bar.

use super::pair::{Mode, PairModels};
use super::tensors::TaskTensors;
use crate::nets::Net;
use offload_shared::eval::{score_routing, Predictions};
use offload_shared::rejector::{trained_threshold, Costs};
use serde::Serialize;
use std::collections::HashMap;
use tch::{nn, nn::OptimizerConfig, Kind, Tensor};

/// Optimiser choice (the papers use SGD with momentum 0.9; Adam converges faster here).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Optim {
    /// Adam (beta 0.9/0.999).
    Adam,
    /// SGD with momentum 0.9.
    Sgd,
}

/// Rejector-stage loss of the stage-switching formulation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum RejectorLoss {
    /// Bayes-consistent weights: local `c_1 + 1[m = y]`, remote `1 - c_e + c_1 1[e = y]`.
    Consistent,
    /// The authors' released code (local `1[m = y]`, remote `1 - c_e + c_1 1[e != y]`), kept for
    /// reproduction only: its minimiser has the opposite sign on the c_1 term.
    Released,
}

/// Hyper-parameters of one training run.
#[derive(Debug, Clone, Serialize)]
pub struct FitSettings {
    /// Maximum epochs.
    pub epochs: usize,
    /// Mini-batch size.
    pub batch_size: usize,
    /// Expert learning rate.
    pub lr_expert: f64,
    /// Rejector learning rate.
    pub lr_rejector: f64,
    /// Optimiser.
    pub optimizer: Optim,
    /// Weight decay (L2) for both networks.
    pub weight_decay: f64,
    /// Steps between refreshes of the expert copy the rejector stage sees (1 = synchronous,
    /// 0 = once per epoch).
    pub sync_period: usize,
    /// Weight the expert's CE by the rejector's (detached) offload probability.
    pub weight_expert_by_offload: bool,
    /// Binary surrogate: alpha override (default: calibrated from m's training error).
    pub alpha: Option<f64>,
    /// Stage-switching rejector loss.
    pub rejector_loss: RejectorLoss,
    /// Epochs without validation improvement before stopping.
    pub patience: usize,
    /// Seed of initialisation and shuffling.
    pub seed: u64,
    /// Weight of the agreement rejector's auxiliary class cross-entropy.
    pub aux_weight: f64,
    /// Draw a progress bar.
    pub progress: bool,
}

/// One epoch's figures.
#[derive(Debug, Clone, Serialize)]
pub struct EpochLog {
    /// 1-based epoch.
    pub epoch: usize,
    /// Mean training loss (rejector stage or surrogate).
    pub train_loss: f64,
    /// Validation system loss at the trained threshold.
    pub val_system_loss: f64,
}

/// What a run reports.
#[derive(Debug, Clone, Serialize)]
pub struct FitSummary {
    /// Epochs actually run.
    pub epochs_run: usize,
    /// Epoch whose weights were kept.
    pub best_epoch: usize,
    /// Validation system loss of the kept weights.
    pub best_val_system_loss: f64,
    /// Alpha used by the binary surrogate.
    pub alpha: Option<f64>,
    /// Training throughput (samples per second, both stages).
    pub samples_per_sec: f64,
    /// Per-epoch log.
    pub history: Vec<EpochLog>,
}

/// The calibrated alpha of spec §4a for legacy error rate `p`:
/// `alpha = (c_e + 2 sqrt((p - c_e)(c_1 - p + c_e))) / p`, valid for `0 <= p - c_e <= c_1 / 2`.
/// Outside that range `p` is clamped into it (the returned flag says so).
pub fn calibrated_alpha(p: f64, costs: Costs) -> (f64, bool) {
    let (c1, ce) = (costs.c1 as f64, costs.ce as f64);
    let lo = ce + 1e-3;
    let hi = (ce + c1 / 2.0).max(lo);
    let pc = p.clamp(lo, hi);
    let alpha = (ce + 2.0 * ((pc - ce) * (c1 - pc + ce)).max(0.0).sqrt()) / pc;
    (alpha, (pc - p).abs() > 1e-12)
}

fn snapshot(vs: &nn::VarStore) -> HashMap<String, Tensor> {
    vs.variables()
        .into_iter()
        .map(|(k, v)| (k, v.detach().copy()))
        .collect()
}

fn restore(vs: &nn::VarStore, snap: &HashMap<String, Tensor>) {
    tch::no_grad(|| {
        for (k, mut v) in vs.variables() {
            if let Some(s) = snap.get(&k) {
                v.copy_(s);
            }
        }
    });
}

/// Validation system loss of the pair at its trained threshold.
pub fn val_system_loss(models: &PairModels, data: &TaskTensors, costs: Costs) -> f64 {
    let v = &data.val;
    let scores = models.decision_scores(&v.x, &v.m_probs, costs.c1);
    let t = trained_threshold(models.kind(), costs);
    let offload: Vec<bool> = scores.iter().map(|&s| s > t).collect();
    let p = Predictions {
        labels: v.labels.clone(),
        m_pred: v.m_pred.clone(),
        m_conf: v.m_conf.clone(),
        e_pred: models.expert_predictions(&v.x),
    };
    score_routing(&p, &offload, costs).system_loss
}

/// Trains the pair in place and keeps the weights of the best validation epoch.
pub fn fit(
    models: &mut PairModels,
    data: &TaskTensors,
    costs: Costs,
    s: &FitSettings,
    label: &str,
) -> Result<FitSummary, tch::TchError> {
    tch::manual_seed(s.seed as i64);
    let build = |vs: &nn::VarStore, lr: f64| match s.optimizer {
        Optim::Adam => nn::Adam {
            wd: s.weight_decay,
            ..Default::default()
        }
        .build(vs, lr),
        Optim::Sgd => nn::Sgd {
            momentum: 0.9,
            wd: s.weight_decay,
            ..Default::default()
        }
        .build(vs, lr),
    };
    let mut opt_e = build(&models.expert_vs, s.lr_expert)?;
    let mut opt_r = build(&models.rejector_vs, s.lr_rejector)?;
    let tr = &data.train;
    let n = tr.len() as i64;
    let m_error = tr.m_error_rate();
    let alpha = (models.mode == Mode::BinarySurrogate).then(|| {
        s.alpha.unwrap_or_else(|| {
            let (a, clamped) = calibrated_alpha(m_error, costs);
            if clamped {
                tracing::warn!(
                    m_error,
                    alpha = a,
                    "legacy error rate outside the calibration range; alpha from the clamped rate"
                );
            }
            a
        })
    });
    // The expert copy the rejector stage sees (refreshed every sync_period steps).
    let copy_vs = nn::VarStore::new(models.expert_vs.device());
    let expert_copy =
        Net::new(&copy_vs.root(), models.expert.spec().clone()).map_err(tch::TchError::Kind)?;
    let mut copy_vs = copy_vs;
    copy_vs.copy(&models.expert_vs)?;
    let bar = progress_bar(s, label);
    let (mut best, mut best_epoch, mut history) = (f64::INFINITY, 0, Vec::new());
    let mut best_snap = (snapshot(&models.expert_vs), snapshot(&models.rejector_vs));
    let (mut step, start) = (0usize, std::time::Instant::now());
    let mut seen = 0usize;
    for epoch in 1..=s.epochs {
        let perm = Tensor::randperm(n, (Kind::Int64, tr.x.device()));
        let (mut sum, mut batches) = (0.0, 0usize);
        for chunk in perm.split(s.batch_size as i64, 0) {
            let x = tr.x.index_select(0, &chunk);
            let y = tr.y.index_select(0, &chunk);
            let m_wrong = tr.m_wrong.index_select(0, &chunk);
            let m_probs = tr.m_probs.index_select(0, &chunk);
            let loss = match models.mode {
                Mode::BinarySurrogate => {
                    let l = surrogate_loss(
                        models,
                        &x,
                        &y,
                        &m_wrong,
                        &m_probs,
                        costs,
                        alpha.unwrap_or(1.0),
                    ) + aux_loss(models, &x, &y, s.aux_weight);
                    opt_e.zero_grad();
                    opt_r.zero_grad();
                    l.backward();
                    opt_e.step();
                    opt_r.step();
                    l.double_value(&[])
                }
                Mode::StageSwitching | Mode::PlugIn => {
                    let le = expert_loss(models, &x, &y, &m_probs, s.weight_expert_by_offload);
                    opt_e.zero_grad();
                    le.backward();
                    opt_e.step();
                    let e_wrong = tch::no_grad(|| {
                        let src = if s.sync_period == 1 {
                            &models.expert
                        } else {
                            &expert_copy
                        };
                        expert_wrong(src, models.single_score, &x, &y)
                    });
                    let lr = rejector_loss(
                        models,
                        &x,
                        &m_probs,
                        &m_wrong,
                        &e_wrong,
                        costs,
                        s.rejector_loss,
                    ) + aux_loss(models, &x, &y, s.aux_weight);
                    opt_r.zero_grad();
                    lr.backward();
                    opt_r.step();
                    lr.double_value(&[])
                }
            };
            step += 1;
            if s.sync_period > 1 && step % s.sync_period == 0 {
                copy_vs.copy(&models.expert_vs)?;
            }
            sum += loss;
            batches += 1;
            seen += chunk.size()[0] as usize;
        }
        if s.sync_period == 0 {
            copy_vs.copy(&models.expert_vs)?;
        }
        let val = val_system_loss(models, data, costs);
        let train_loss = sum / batches.max(1) as f64;
        history.push(EpochLog {
            epoch,
            train_loss,
            val_system_loss: val,
        });
        bar.set_message(format!("loss {train_loss:.4}  val system loss {val:.4}"));
        bar.inc(1);
        if val < best - 1e-9 {
            best = val;
            best_epoch = epoch;
            best_snap = (snapshot(&models.expert_vs), snapshot(&models.rejector_vs));
        } else if epoch - best_epoch >= s.patience {
            break;
        }
    }
    bar.finish_and_clear();
    restore(&models.expert_vs, &best_snap.0);
    restore(&models.rejector_vs, &best_snap.1);
    let secs = start.elapsed().as_secs_f64().max(1e-9);
    Ok(FitSummary {
        epochs_run: history.len(),
        best_epoch,
        best_val_system_loss: best,
        alpha,
        samples_per_sec: seen as f64 / secs,
        history,
    })
}

fn progress_bar(s: &FitSettings, label: &str) -> indicatif::ProgressBar {
    if !s.progress {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(s.epochs as u64);
    if let Ok(style) =
        indicatif::ProgressStyle::with_template("{prefix} [{bar:30}] epoch {pos}/{len} {msg}")
    {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.set_prefix(label.to_string());
    bar
}

/// `L_S = 1[m != y] e^{alpha r} + c_1 e^{-r - y e} + c_e e^{-r}` with y in {-1, +1} (spec §4a).
fn surrogate_loss(
    models: &PairModels,
    x: &Tensor,
    y: &Tensor,
    m_wrong: &Tensor,
    m_probs: &Tensor,
    costs: Costs,
    alpha: f64,
) -> Tensor {
    let mut r = models.rejector_raw(x, m_probs).squeeze_dim(1);
    let mut e = models.expert_raw(x);
    if models.squash {
        r = r.sigmoid() * 2.0 - 1.0;
        e = e.sigmoid() * 2.0 - 1.0;
    } else {
        // Keeps exp() finite early in training; the decision only depends on the sign.
        r = r.clamp(-8.0, 8.0);
        e = e.clamp(-8.0, 8.0);
    }
    let ys = y.to_kind(Kind::Float) * 2.0 - 1.0;
    let local = m_wrong * (&r * alpha).exp();
    let expert = (-&r - ys * e).exp() * costs.c1 as f64;
    let price = (-&r).exp() * costs.ce as f64;
    (local + expert + price).mean(Kind::Float)
}

/// Expert stage: cross-entropy (logistic loss on 2e for a single score), optionally weighted by
/// the rejector's detached offload probability, normalised so the weights average to one.
fn expert_loss(
    models: &PairModels,
    x: &Tensor,
    y: &Tensor,
    m_probs: &Tensor,
    weighted: bool,
) -> Tensor {
    let per = if models.single_score {
        let e = models.expert_raw(x) * 2.0;
        e.binary_cross_entropy_with_logits::<Tensor>(
            &y.to_kind(Kind::Float),
            None,
            None,
            tch::Reduction::None,
        )
    } else {
        models
            .expert_raw(x)
            .log_softmax(-1, Kind::Float)
            .gather(1, &y.unsqueeze(1), false)
            .squeeze_dim(1)
            .neg()
    };
    if weighted {
        let w = tch::no_grad(|| match models.mode {
            Mode::PlugIn => models.rejector_outputs(x, m_probs).select(1, 0),
            _ => models.rejector_outputs(x, m_probs),
        });
        (per * &w).sum(Kind::Float) / w.sum(Kind::Float).clamp_min(1e-6)
    } else {
        per.mean(Kind::Float)
    }
}

/// Auxiliary class cross-entropy of an agreement rejector (zero for a plain one).
fn aux_loss(models: &PairModels, x: &Tensor, y: &Tensor, weight: f64) -> Tensor {
    match models.rejector_class_logits(x) {
        Some(logits) => logits.cross_entropy_for_logits(y) * weight,
        None => Tensor::zeros([], (Kind::Float, x.device())),
    }
}

fn expert_wrong(net: &Net, single_score: bool, x: &Tensor, y: &Tensor) -> Tensor {
    let out = net.forward(x, None);
    let pred = if single_score {
        out.squeeze_dim(1).gt(0.0).to_kind(Kind::Int64)
    } else {
        out.argmax(-1, false)
    };
    pred.ne_tensor(y).to_kind(Kind::Float)
}

/// Rejector stage of stage-switching (weighted CE) or plug-in (two BCE heads).
fn rejector_loss(
    models: &PairModels,
    x: &Tensor,
    m_probs: &Tensor,
    m_wrong: &Tensor,
    e_wrong: &Tensor,
    costs: Costs,
    variant: RejectorLoss,
) -> Tensor {
    let raw = models.rejector_raw(x, m_probs);
    if models.mode == Mode::PlugIn {
        let target = Tensor::stack(&[m_wrong, e_wrong], 1);
        return raw.binary_cross_entropy_with_logits::<Tensor>(
            &target,
            None,
            None,
            tch::Reduction::Mean,
        );
    }
    let logs = raw.log_softmax(-1, Kind::Float);
    let (c1, ce) = (costs.c1 as f64, costs.ce as f64);
    let m_ok = m_wrong.ones_like() - m_wrong;
    let e_ok = e_wrong.ones_like() - e_wrong;
    let (w_local, w_remote) = match variant {
        RejectorLoss::Consistent => (m_ok + c1, e_ok * c1 + (1.0 - ce)),
        RejectorLoss::Released => (m_ok, e_wrong * c1 + (1.0 - ce)),
    };
    (w_local * logs.select(1, 0) + w_remote * logs.select(1, 1))
        .neg()
        .mean(Kind::Float)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alpha_matches_the_formula_inside_its_range_and_clamps_outside() {
        let c = Costs { c1: 1.0, ce: 0.0 };
        let (a, clamped) = calibrated_alpha(0.2, c);
        assert!(!clamped);
        assert!((a - 2.0 * (0.2f64 * 0.8).sqrt() / 0.2).abs() < 1e-12);
        let (_, clamped) = calibrated_alpha(0.1, Costs { c1: 1.0, ce: 0.25 });
        assert!(clamped);
    }
}
