//! The L2H evaluation: system loss and accuracy of a routing, the baselines of the papers side by
//! side, and accuracy-versus-offload-rate curves.
//!
//! Everything here works on per-sample predictions, so the same code scores the offline
//! evaluation in the cloud and the live decisions of the devices.

use crate::rejector::Costs;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Per-sample facts about one test split.
#[derive(Debug, Clone)]
pub struct Predictions {
    /// True labels.
    pub labels: Vec<u32>,
    /// Legacy model predictions.
    pub m_pred: Vec<u32>,
    /// Legacy model confidence (max softmax probability), for the confidence baseline.
    pub m_conf: Vec<f32>,
    /// Expert predictions.
    pub e_pred: Vec<u32>,
}

/// The figures of one routing method on one split.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MethodResult {
    /// Fraction of samples answered correctly by the system.
    pub system_accuracy: f64,
    /// Mean L2H loss `1[local] 1[m wrong] + 1[remote] (c_e + c_1 1[e wrong])`.
    pub system_loss: f64,
    /// Fraction of samples offloaded.
    pub offload_rate: f64,
    /// Number of samples offloaded.
    pub offloaded: usize,
    /// Accuracy of m on the samples kept local (`None` if none).
    pub m_accuracy_local: Option<f64>,
    /// Accuracy of m on the samples offloaded (what offloading them avoided).
    pub m_accuracy_offloaded: Option<f64>,
    /// Accuracy of e on the samples offloaded.
    pub e_accuracy_offloaded: Option<f64>,
    /// Accuracy of e on the samples kept local (what was left on the table).
    pub e_accuracy_local: Option<f64>,
}

fn ratio(num: usize, den: usize) -> Option<f64> {
    (den > 0).then(|| num as f64 / den as f64)
}

/// Scores a concrete routing (`offload[i]` true = sent to the expert).
pub fn score_routing(p: &Predictions, offload: &[bool], costs: Costs) -> MethodResult {
    let n = p.labels.len();
    let (mut correct, mut loss, mut off) = (0usize, 0.0f64, 0usize);
    let (mut m_loc, mut m_off, mut e_off, mut e_loc) = (0, 0, 0, 0);
    for (i, &off_i) in offload.iter().enumerate().take(n) {
        let m_ok = p.m_pred[i] == p.labels[i];
        let e_ok = p.e_pred[i] == p.labels[i];
        if off_i {
            off += 1;
            correct += e_ok as usize;
            loss += costs.ce as f64 + costs.c1 as f64 * (!e_ok) as u8 as f64;
            m_off += m_ok as usize;
            e_off += e_ok as usize;
        } else {
            correct += m_ok as usize;
            loss += (!m_ok) as u8 as f64;
            m_loc += m_ok as usize;
            e_loc += e_ok as usize;
        }
    }
    MethodResult {
        system_accuracy: correct as f64 / n as f64,
        system_loss: loss / n as f64,
        offload_rate: off as f64 / n as f64,
        offloaded: off,
        m_accuracy_local: ratio(m_loc, n - off),
        m_accuracy_offloaded: ratio(m_off, off),
        e_accuracy_offloaded: ratio(e_off, off),
        e_accuracy_local: ratio(e_loc, n - off),
    }
}

/// Random offloading at `rate`: the exact expectation over random choices (no sampling noise).
pub fn score_random(p: &Predictions, rate: f64, costs: Costs) -> MethodResult {
    let n = p.labels.len() as f64;
    let acc_m = (0..p.labels.len())
        .filter(|&i| p.m_pred[i] == p.labels[i])
        .count() as f64
        / n;
    let acc_e = (0..p.labels.len())
        .filter(|&i| p.e_pred[i] == p.labels[i])
        .count() as f64
        / n;
    let both = |v: f64| (rate > 0.0 && rate < 1.0).then_some(v);
    MethodResult {
        system_accuracy: (1.0 - rate) * acc_m + rate * acc_e,
        system_loss: (1.0 - rate) * (1.0 - acc_m)
            + rate * (costs.ce as f64 + costs.c1 as f64 * (1.0 - acc_e)),
        offload_rate: rate,
        offloaded: (rate * n).round() as usize,
        m_accuracy_local: both(acc_m).or((rate == 0.0).then_some(acc_m)),
        m_accuracy_offloaded: both(acc_m).or((rate == 1.0).then_some(acc_m)),
        e_accuracy_offloaded: both(acc_e).or((rate == 1.0).then_some(acc_e)),
        e_accuracy_local: both(acc_e).or((rate == 0.0).then_some(acc_e)),
    }
}

/// Offloads the `k` samples ranked first by `priority` (descending; ties by index).
pub fn top_k(priority: &[f32], k: usize) -> Vec<bool> {
    let mut order: Vec<usize> = (0..priority.len()).collect();
    order.sort_by(|&a, &b| priority[b].total_cmp(&priority[a]).then(a.cmp(&b)));
    let mut out = vec![false; priority.len()];
    for &i in order.iter().take(k) {
        out[i] = true;
    }
    out
}

/// One point of an accuracy-versus-offload-rate curve.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct CurvePoint {
    /// Fraction offloaded.
    pub offload_rate: f64,
    /// System accuracy at that rate.
    pub system_accuracy: f64,
    /// System loss at that rate.
    pub system_loss: f64,
}

/// The curve obtained by offloading in `priority` order, one point per sample count, and the area
/// under its accuracy (trapezoid rule over the offload rate).
pub fn ranking_curve(p: &Predictions, priority: &[f32], costs: Costs) -> (Vec<CurvePoint>, f64) {
    let n = p.labels.len();
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by(|&a, &b| priority[b].total_cmp(&priority[a]).then(a.cmp(&b)));
    let m_ok: Vec<bool> = (0..n).map(|i| p.m_pred[i] == p.labels[i]).collect();
    let e_ok: Vec<bool> = (0..n).map(|i| p.e_pred[i] == p.labels[i]).collect();
    let mut correct = m_ok.iter().filter(|v| **v).count() as f64;
    let mut loss = n as f64 - correct;
    let mut points = vec![CurvePoint {
        offload_rate: 0.0,
        system_accuracy: correct / n as f64,
        system_loss: loss / n as f64,
    }];
    for (k, &i) in order.iter().enumerate() {
        correct += e_ok[i] as u8 as f64 - m_ok[i] as u8 as f64;
        loss +=
            costs.ce as f64 + costs.c1 as f64 * (!e_ok[i]) as u8 as f64 - (!m_ok[i]) as u8 as f64;
        points.push(CurvePoint {
            offload_rate: (k + 1) as f64 / n as f64,
            system_accuracy: correct / n as f64,
            system_loss: loss / n as f64,
        });
    }
    let auc = points
        .windows(2)
        .map(|w| {
            (w[1].offload_rate - w[0].offload_rate) * (w[0].system_accuracy + w[1].system_accuracy)
                / 2.0
        })
        .sum();
    (points, auc)
}

/// Keeps at most `max` evenly spaced points of a curve (first and last always kept).
pub fn thin(points: &[CurvePoint], max: usize) -> Vec<CurvePoint> {
    if points.len() <= max || max < 2 {
        return points.to_vec();
    }
    (0..max)
        .map(|j| points[j * (points.len() - 1) / (max - 1)])
        .collect()
}

/// Everything reported for one cost pair.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CostReport {
    /// Method name (`local`, `expert`, `random`, `confidence`, `oracle`, `l2h`) to its figures.
    pub methods: BTreeMap<String, MethodResult>,
    /// Fraction of the confidence-to-oracle system-loss gap that L2H closes.
    pub gap_closed: Option<f64>,
    /// Area under the accuracy-vs-offload curve per ranking method.
    pub auc: BTreeMap<String, f64>,
    /// Accuracy-vs-offload curves per ranking method (thinned to at most 101 points).
    pub curves: BTreeMap<String, Vec<CurvePoint>>,
    /// Confidence threshold that gives the L2H offload rate (offload iff max softmax < it).
    pub confidence_threshold: Option<f32>,
}

/// Runs every method for one cost pair. `l2h_score` is the rejector's decision score and
/// `threshold` its trained threshold (offload iff score > threshold).
pub fn compare_methods(
    p: &Predictions,
    l2h_score: &[f32],
    threshold: f32,
    costs: Costs,
) -> CostReport {
    let n = p.labels.len();
    let l2h_offload: Vec<bool> = l2h_score.iter().map(|&s| s > threshold).collect();
    let l2h = score_routing(p, &l2h_offload, costs);
    let k = l2h.offloaded;
    let rate = k as f64 / n as f64;
    let low_conf: Vec<f32> = p.m_conf.iter().map(|c| -c).collect();
    let conf_offload = top_k(&low_conf, k);
    let confidence_threshold = {
        let mut c: Vec<f32> = p.m_conf.clone();
        c.sort_by(f32::total_cmp);
        (k > 0).then(|| {
            if k < n {
                (c[k - 1] + c[k]) / 2.0
            } else {
                f32::INFINITY
            }
        })
    };
    let oracle: Vec<bool> = (0..n)
        .map(|i| p.m_pred[i] != p.labels[i] && p.e_pred[i] == p.labels[i])
        .collect();
    let mut methods = BTreeMap::new();
    methods.insert("local".into(), score_routing(p, &vec![false; n], costs));
    methods.insert("expert".into(), score_routing(p, &vec![true; n], costs));
    methods.insert("random".into(), score_random(p, rate, costs));
    methods.insert("confidence".into(), score_routing(p, &conf_offload, costs));
    methods.insert("oracle".into(), score_routing(p, &oracle, costs));
    methods.insert("l2h".into(), l2h);
    let (conf_loss, oracle_loss, l2h_loss) = (
        methods["confidence"].system_loss,
        methods["oracle"].system_loss,
        methods["l2h"].system_loss,
    );
    let gap = conf_loss - oracle_loss;
    let gap_closed = (costs.ce > 0.0 && gap > 1e-12).then(|| (conf_loss - l2h_loss) / gap);
    let mut curves = BTreeMap::new();
    let mut auc = BTreeMap::new();
    for (name, prio) in [("l2h", l2h_score.to_vec()), ("confidence", low_conf)] {
        let (pts, a) = ranking_curve(p, &prio, costs);
        curves.insert(name.to_string(), thin(&pts, 101));
        auc.insert(name.to_string(), a);
    }
    let random_curve: Vec<CurvePoint> = (0..=100)
        .map(|j| {
            let r = score_random(p, j as f64 / 100.0, costs);
            CurvePoint {
                offload_rate: r.offload_rate,
                system_accuracy: r.system_accuracy,
                system_loss: r.system_loss,
            }
        })
        .collect();
    auc.insert(
        "random".into(),
        (random_curve[0].system_accuracy + random_curve[100].system_accuracy) / 2.0,
    );
    curves.insert("random".into(), random_curve);
    CostReport {
        methods,
        gap_closed,
        auc,
        curves,
        confidence_threshold,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn preds() -> Predictions {
        // m right on 0,1,2; wrong on 3,4. e right on all but 4.
        Predictions {
            labels: vec![0, 1, 0, 1, 0],
            m_pred: vec![0, 1, 0, 0, 1],
            m_conf: vec![0.9, 0.8, 0.6, 0.7, 0.55],
            e_pred: vec![0, 1, 0, 1, 1],
        }
    }

    #[test]
    fn system_loss_follows_the_l2h_definition() {
        let c = Costs { c1: 1.0, ce: 0.25 };
        let r = score_routing(&preds(), &[false, false, false, true, true], c);
        // local: no errors; remote: sample 3 costs 0.25, sample 4 costs 0.25 + 1.
        assert!((r.system_loss - 1.5 / 5.0).abs() < 1e-12);
        assert!((r.system_accuracy - 0.8).abs() < 1e-12);
        assert_eq!(r.e_accuracy_offloaded, Some(0.5));
        assert_eq!(r.m_accuracy_offloaded, Some(0.0));
    }

    #[test]
    fn oracle_and_confidence_and_gap() {
        let c = Costs { c1: 1.0, ce: 0.25 };
        // The L2H score ranks sample 3 first; threshold keeps one offload.
        let rep = compare_methods(&preds(), &[0.1, 0.0, 0.2, 0.9, 0.3], 0.5, c);
        assert_eq!(rep.methods["oracle"].offloaded, 1);
        assert_eq!(rep.methods["l2h"].offloaded, 1);
        // confidence offloads the least confident sample (4), which e also gets wrong.
        assert!((rep.methods["confidence"].system_loss - (1.0 + 1.25) / 5.0).abs() < 1e-12);
        assert!((rep.methods["l2h"].system_loss - rep.methods["oracle"].system_loss).abs() < 1e-12);
        assert_eq!(rep.gap_closed, Some(1.0));
        let curve = &rep.curves["l2h"];
        assert_eq!(curve.len(), 6);
        assert!((curve[5].system_accuracy - 0.8).abs() < 1e-12);
    }

    #[test]
    fn random_is_the_exact_expectation() {
        let c = Costs { c1: 1.0, ce: 0.0 };
        let r = score_random(&preds(), 0.5, c);
        assert!((r.system_accuracy - (0.5 * 0.6 + 0.5 * 0.8)).abs() < 1e-12);
    }
}
