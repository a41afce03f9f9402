//! `report.json` and the comparison table printed after training and evaluation.

use offload_shared::eval::CostReport;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt::Write;

/// Method keys in display order.
pub const METHODS: [&str; 6] = ["local", "expert", "random", "confidence", "oracle", "l2h"];

/// The evaluation report of one repository version.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Report {
    /// Model name.
    pub model: String,
    /// Version directory.
    pub version: String,
    /// Task description.
    pub task: String,
    /// Training formulation.
    pub mode: String,
    /// Cost pair of the deployed rejector, as a results key.
    pub deployed_costs: String,
    /// Whether the rejector reads the legacy probabilities.
    pub rejector_uses_legacy_probs: bool,
    /// Test-split size.
    pub n_test: usize,
    /// `results["<c_1>,<c_e>"][method]`.
    pub results: BTreeMap<String, BTreeMap<String, offload_shared::eval::MethodResult>>,
    /// Fraction of the confidence-to-oracle gap closed by L2H, per cost pair with c_e > 0.
    pub gap_closed: BTreeMap<String, Option<f64>>,
    /// Area under the accuracy-vs-offload curve, per cost pair and ranking.
    pub auc: BTreeMap<String, BTreeMap<String, f64>>,
    /// Accuracy-vs-offload curves, per cost pair and ranking.
    pub curves: BTreeMap<String, BTreeMap<String, Vec<offload_shared::eval::CurvePoint>>>,
    /// Training summaries per cost pair (absent for `eval`).
    #[serde(default)]
    pub training: BTreeMap<String, serde_json::Value>,
    /// Largest |tch - ONNX| rejector output difference on the test split (deployed pair).
    pub export_max_abs_diff: Option<f32>,
}

impl Report {
    /// Adds one cost pair's comparison.
    pub fn insert(&mut self, key: &str, rep: CostReport) {
        self.results.insert(key.into(), rep.methods);
        self.gap_closed.insert(key.into(), rep.gap_closed);
        self.auc.insert(key.into(), rep.auc);
        self.curves.insert(key.into(), rep.curves);
    }

    /// The side-by-side table.
    pub fn table(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "{} v{} - task {} - {} - {} test samples",
            self.model, self.version, self.task, self.mode, self.n_test
        );
        for (key, methods) in &self.results {
            let _ = writeln!(
                s,
                "\ncost pair (c_1, c_e) = ({key}){}",
                if *key == self.deployed_costs {
                    "  [deployed]"
                } else {
                    ""
                }
            );
            let _ = writeln!(
                s,
                "  {:<11} {:>9} {:>9} {:>8} {:>7} {:>7}",
                "method", "sys.acc", "sys.loss", "offload", "m|off", "e|off"
            );
            for m in METHODS {
                if let Some(r) = methods.get(m) {
                    let pct =
                        |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{:.1}", 100.0 * v));
                    let _ = writeln!(
                        s,
                        "  {:<11} {:>8.2}% {:>9.4} {:>7.1}% {:>7} {:>7}",
                        m,
                        100.0 * r.system_accuracy,
                        r.system_loss,
                        100.0 * r.offload_rate,
                        pct(r.m_accuracy_offloaded),
                        pct(r.e_accuracy_offloaded)
                    );
                }
            }
            if let (Some(c), Some(l)) = (methods.get("confidence"), methods.get("l2h")) {
                let verdict = if l.system_loss < c.system_loss {
                    "L2H beats confidence"
                } else {
                    "L2H does NOT beat confidence"
                };
                let gap = self.gap_closed.get(key).copied().flatten();
                let _ = writeln!(
                    s,
                    "  -> {verdict} at the same offload rate ({:.4} vs {:.4}){}",
                    l.system_loss,
                    c.system_loss,
                    gap.map_or(String::new(), |g| format!(
                        "; gap to oracle closed: {:.0}%",
                        100.0 * g
                    ))
                );
                if let Some(auc) = self.auc.get(key) {
                    let a = auc.get("l2h").copied().unwrap_or(f64::NAN);
                    let b = auc.get("confidence").copied().unwrap_or(f64::NAN);
                    let _ = writeln!(
                        s,
                        "     area under accuracy-vs-offload curve: L2H {a:.4}, confidence {b:.4}"
                    );
                }
                if l.offload_rate >= 1.0 {
                    let _ = writeln!(
                        s,
                        "     (L2H offloads everything here: with c_e = 0 the Bayes rule offloads wherever e is more reliable than m, so every method coincides at rate 1)"
                    );
                }
            }
        }
        s
    }
}
