//! Serving-time decision controls on the device (spec §5): a threshold tau on the decision score,
//! a target offload rate rho turned into a threshold through the bundle's validation quantiles,
//! an online budget (at most N offloads per window), and for plug-in rejectors a live c_e that
//! may include a price per millisecond of measured round-trip time (slow link, fewer offloads).

use offload_shared::rejector::RejectorKind;
use offload_shared::repository::threshold_for_rate;
use serde::{Deserialize, Serialize};
use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// How the threshold is chosen.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "rule", content = "value")]
pub enum Rule {
    /// The rule the rejector was trained for (bundle threshold, or c_e for plug-in).
    Trained,
    /// A fixed threshold tau on the decision score.
    Threshold(f32),
    /// A target offload rate rho in [0, 1] (via validation quantiles).
    Rate(f32),
}

/// Decision settings (from the device's configuration).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PolicyConfig {
    /// Threshold rule.
    pub rule: Rule,
    /// Plug-in rejectors: the offload price c_e (default: the bundle's).
    pub ce: Option<f32>,
    /// Plug-in rejectors: extra c_e per millisecond of smoothed round-trip time.
    pub ce_per_ms: f32,
    /// At most this many offloads per `budget_window` (None: unlimited).
    pub budget: Option<usize>,
    /// Window of the budget.
    pub budget_window: Duration,
}

impl Default for PolicyConfig {
    fn default() -> Self {
        Self {
            rule: Rule::Trained,
            ce: None,
            ce_per_ms: 0.0,
            budget: None,
            budget_window: Duration::from_secs(1),
        }
    }
}

/// What the bundle says about the rejector.
#[derive(Debug, Clone, Copy)]
pub struct BundleRule<'a> {
    /// Kind of rejector.
    pub kind: RejectorKind,
    /// Trained threshold.
    pub threshold: f32,
    /// Trained c_e.
    pub ce: f32,
    /// Validation quantiles of the decision score.
    pub quantiles: &'a [(f32, f32)],
}

/// Why an input stays local although the rejector would offload it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Verdict {
    /// Below the threshold.
    Local,
    /// Above the threshold: offload.
    Offload,
    /// Above the threshold but the budget is spent.
    BudgetExhausted,
}

/// Mutable policy state: the budget's recent offload times and the smoothed RTT.
#[derive(Debug)]
pub struct Policy {
    /// Settings.
    cfg: PolicyConfig,
    /// Times of recent offloads (within the budget window).
    recent: VecDeque<Instant>,
    /// Exponentially smoothed round-trip time in milliseconds.
    rtt_ms: Option<f64>,
}

impl Policy {
    /// A policy with the given settings.
    pub fn new(cfg: PolicyConfig) -> Self {
        Self {
            cfg,
            recent: VecDeque::new(),
            rtt_ms: None,
        }
    }

    /// Settings.
    pub fn config(&self) -> &PolicyConfig {
        &self.cfg
    }

    /// Replaces the settings live (e.g. a new c_e).
    pub fn set_config(&mut self, cfg: PolicyConfig) {
        self.cfg = cfg;
    }

    /// Records a measured round trip (smoothing factor 0.2).
    pub fn observe_rtt(&mut self, rtt: Duration) {
        let ms = rtt.as_secs_f64() * 1e3;
        self.rtt_ms = Some(self.rtt_ms.map_or(ms, |old| 0.8 * old + 0.2 * ms));
    }

    /// The smoothed RTT in milliseconds, if any was measured.
    pub fn rtt_ms(&self) -> Option<f64> {
        self.rtt_ms
    }

    /// The threshold currently in force for a rejector described by `b`.
    pub fn threshold(&self, b: BundleRule<'_>) -> f32 {
        match (self.cfg.rule, b.kind) {
            (Rule::Threshold(t), _) => t,
            (Rule::Rate(r), _) => threshold_for_rate(b.quantiles, r),
            (Rule::Trained, RejectorKind::Score) => b.threshold,
            (Rule::Trained, RejectorKind::PlugIn) => {
                self.cfg.ce.unwrap_or(b.ce) + self.cfg.ce_per_ms * self.rtt_ms.unwrap_or(0.0) as f32
            }
        }
    }

    /// Decides for one decision score at time `now`, spending budget on an offload.
    pub fn decide(&mut self, score: f32, b: BundleRule<'_>, now: Instant) -> Verdict {
        if score <= self.threshold(b) {
            return Verdict::Local;
        }
        if let Some(max) = self.cfg.budget {
            while self
                .recent
                .front()
                .is_some_and(|t| now.duration_since(*t) >= self.cfg.budget_window)
            {
                self.recent.pop_front();
            }
            if self.recent.len() >= max {
                return Verdict::BudgetExhausted;
            }
            self.recent.push_back(now);
        }
        Verdict::Offload
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(kind: RejectorKind, q: &[(f32, f32)]) -> BundleRule<'_> {
        BundleRule {
            kind,
            threshold: 0.5,
            ce: 0.25,
            quantiles: q,
        }
    }

    #[test]
    fn trained_threshold_and_fixed_tau() {
        let q = offload_shared::repository::quantiles(&[0.1, 0.2, 0.9]);
        let mut p = Policy::new(PolicyConfig::default());
        let now = Instant::now();
        assert_eq!(
            p.decide(0.6, rule(RejectorKind::Score, &q), now),
            Verdict::Offload
        );
        assert_eq!(
            p.decide(0.4, rule(RejectorKind::Score, &q), now),
            Verdict::Local
        );
        p.set_config(PolicyConfig {
            rule: Rule::Threshold(0.3),
            ..Default::default()
        });
        assert_eq!(
            p.decide(0.4, rule(RejectorKind::Score, &q), now),
            Verdict::Offload
        );
    }

    #[test]
    fn target_rate_uses_validation_quantiles() {
        let scores: Vec<f32> = (0..100).map(|i| i as f32 / 100.0).collect();
        let q = offload_shared::repository::quantiles(&scores);
        let mut p = Policy::new(PolicyConfig {
            rule: Rule::Rate(0.1),
            ..Default::default()
        });
        let now = Instant::now();
        let off = scores
            .iter()
            .filter(|&&s| p.decide(s, rule(RejectorKind::Score, &q), now) == Verdict::Offload)
            .count();
        assert!((9..=11).contains(&off), "{off}");
    }

    #[test]
    fn budget_caps_offloads_per_window_and_refills() {
        let q = [(0.0, 0.0), (1.0, 1.0)];
        let cfg = PolicyConfig {
            budget: Some(2),
            budget_window: Duration::from_millis(100),
            ..Default::default()
        };
        let mut p = Policy::new(cfg);
        let t0 = Instant::now();
        let r = rule(RejectorKind::Score, &q);
        assert_eq!(p.decide(0.9, r, t0), Verdict::Offload);
        assert_eq!(p.decide(0.9, r, t0), Verdict::Offload);
        assert_eq!(p.decide(0.9, r, t0), Verdict::BudgetExhausted);
        assert_eq!(
            p.decide(0.9, r, t0 + Duration::from_millis(100)),
            Verdict::Offload
        );
    }

    #[test]
    fn plug_in_price_grows_with_round_trip_time() {
        let q = [(0.0, 0.0), (1.0, 1.0)];
        let cfg = PolicyConfig {
            ce: Some(0.1),
            ce_per_ms: 0.01,
            ..Default::default()
        };
        let mut p = Policy::new(cfg);
        let r = rule(RejectorKind::PlugIn, &q);
        assert!((p.threshold(r) - 0.1).abs() < 1e-6);
        p.observe_rtt(Duration::from_millis(20));
        assert!((p.threshold(r) - 0.3).abs() < 1e-6);
        assert_eq!(p.decide(0.25, r, Instant::now()), Verdict::Local);
    }
}
