//! The rejector `r` as the device runs it: an ONNX model plus the rule that turns its outputs
//! into an offload decision.
//!
//! Contract of an exported rejector file (see `onnx_build` and the cloud's exporter):
//! - input `input`: the raw features `[N, ...]` (normalisation is inside the model);
//! - optional input `legacy_probs`: `[N, K]`, the legacy model's probabilities;
//! - kind [`RejectorKind::Score`]: output `score` `[N]` in [0, 1]; kind
//!   [`RejectorKind::PlugIn`]: output `q` `[N, 2]` = (q_m, q_e).
//!
//! Every kind reduces to one *decision score* per input — larger means more worth offloading —
//! and the decision is `offload iff decision_score > threshold`. Thresholds for target offload
//! rates come from validation quantiles of that same score.

use crate::engine::{EngineError, OnnxModel};
use serde::{Deserialize, Serialize};

/// How to read a rejector's outputs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RejectorKind {
    /// One offload score in [0, 1]; the trained rule is `score > 0.5`.
    Score,
    /// Two estimates (q_m, q_e) of P(m wrong) and P(e wrong); rule `q_m > c_e + c_1 q_e`.
    PlugIn,
}

/// The costs of the L2H system loss.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Costs {
    /// Weight of an expert error (c_1 >= 0).
    pub c1: f32,
    /// Price of one offload (c_e >= 0).
    pub ce: f32,
}

impl Costs {
    /// Validates the ranges the theory needs: both non-negative and finite, and c_e < 1 + c_1
    /// (otherwise offloading can never pay and the problem is degenerate).
    pub fn new(c1: f32, ce: f32) -> Result<Self, String> {
        if !(c1.is_finite() && ce.is_finite()) || c1 < 0.0 || ce < 0.0 {
            return Err(format!(
                "costs must be finite and non-negative (got c_1={c1}, c_e={ce})"
            ));
        }
        if c1 > 10.0 || ce >= 1.0 {
            return Err(format!(
                "costs out of range: need c_1 <= 10 and c_e < 1 (an offload may not cost more than a certain local error), got c_1={c1}, c_e={ce}"
            ));
        }
        Ok(Self { c1, ce })
    }

    /// The key used in reports: `"<c_1>,<c_e>"`.
    pub fn key(&self) -> String {
        format!("{},{}", self.c1, self.ce)
    }
}

/// The decision score of one input's rejector outputs (see module docs).
pub fn decision_score(kind: RejectorKind, row: &[f32], c1: f32) -> f32 {
    match kind {
        RejectorKind::Score => row[0],
        RejectorKind::PlugIn => row[0] - c1 * row[1],
    }
}

/// The threshold of the rule the rejector was trained for.
pub fn trained_threshold(kind: RejectorKind, costs: Costs) -> f32 {
    match kind {
        RejectorKind::Score => 0.5,
        RejectorKind::PlugIn => costs.ce,
    }
}

/// A loaded rejector.
#[derive(Debug, Clone)]
pub struct RejectorModel {
    /// The ONNX model.
    model: OnnxModel,
    /// How to read it.
    kind: RejectorKind,
}

impl RejectorModel {
    /// Loads and checks a rejector against the contract above.
    pub fn from_bytes(name: &str, bytes: &[u8], kind: RejectorKind) -> Result<Self, EngineError> {
        let model = OnnxModel::from_bytes(name, bytes)?;
        let bad = |reason: String| EngineError::Interface {
            model: name.to_string(),
            role: "a rejector",
            reason,
        };
        let names = model.input_names();
        if names.first().map(String::as_str) != Some("input")
            || names.len() > 2
            || (names.len() == 2 && names[1] != "legacy_probs")
        {
            return Err(bad(format!(
                "inputs are {names:?}; expected [input] or [input, legacy_probs]"
            )));
        }
        let want = match kind {
            RejectorKind::Score => "score",
            RejectorKind::PlugIn => "q",
        };
        if model.output_names().first().map(String::as_str) != Some(want) {
            return Err(bad(format!(
                "first output must be `{want}` for kind {kind:?}"
            )));
        }
        Ok(Self { model, kind })
    }

    /// The kind of rule.
    pub fn kind(&self) -> RejectorKind {
        self.kind
    }

    /// True when the rejector also reads the legacy model's probabilities.
    pub fn uses_legacy_probs(&self) -> bool {
        self.model.input_names().len() == 2
    }

    /// sha256 of the file.
    pub fn sha256(&self) -> &str {
        self.model.sha256()
    }

    /// Per-sample input shape of `input`.
    pub fn input_shape(&self) -> &[usize] {
        &self.model.input_shapes()[0]
    }

    /// Raw outputs for `n` inputs: `n` scores, or `n * 2` values (q_m, q_e) for plug-in.
    pub fn outputs(
        &self,
        x: &[f32],
        legacy_probs: &[f32],
        n: usize,
    ) -> Result<Vec<f32>, EngineError> {
        let out = if self.uses_legacy_probs() {
            self.model.run(&[x, legacy_probs], n)?
        } else {
            self.model.run(&[x], n)?
        };
        Ok(out.into_iter().next().map(|o| o.1).unwrap_or_default())
    }

    /// Width of one output row (1 for score, 2 for plug-in).
    pub fn row_len(&self) -> usize {
        match self.kind {
            RejectorKind::Score => 1,
            RejectorKind::PlugIn => 2,
        }
    }

    /// Decision scores for `n` inputs under expert-error weight `c1`.
    pub fn decision_scores(
        &self,
        x: &[f32],
        legacy_probs: &[f32],
        n: usize,
        c1: f32,
    ) -> Result<Vec<f32>, EngineError> {
        let raw = self.outputs(x, legacy_probs, n)?;
        Ok(raw
            .chunks(self.row_len())
            .map(|row| decision_score(self.kind, row, c1))
            .collect())
    }
}
