//! Offline decisions from a repository version directory (no cloud): m then r and the
//! trained rule. Used by `edge-client decide` and the latency benchmark.

use offload_shared::legacy::{argmax, LegacyModel};
use offload_shared::rejector::{decision_score, RejectorModel};
use offload_shared::repository::{files, read_json, RejectorMeta};
use std::path::Path;

/// Why the offline models could not be loaded or run.
#[derive(Debug, thiserror::Error)]
pub enum EdgeError {
    /// A bundle file is missing or invalid.
    #[error(transparent)]
    Repository(#[from] offload_shared::repository::RepositoryError),
    /// A model failed to load or run.
    #[error(transparent)]
    Engine(#[from] offload_shared::engine::EngineError),
    /// The bundle does not belong to this device's legacy model.
    #[error("rejector bundle was trained for legacy model {expected}, this device runs {actual}")]
    LegacyMismatch {
        /// sha256 recorded in the bundle.
        expected: String,
        /// sha256 of the device's model.
        actual: String,
    },
}

/// The local decision for one input.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Decision {
    /// m's predicted class.
    pub local_label: u32,
    /// m's confidence (max probability).
    pub local_confidence: f32,
    /// The rejector's decision score (offload iff above the threshold).
    pub score: f32,
    /// Whether to offload.
    pub offload: bool,
}

/// The models a device runs.
#[derive(Debug, Clone)]
pub struct EdgeModels {
    /// Legacy model.
    legacy: LegacyModel,
    /// Rejector.
    rejector: RejectorModel,
    /// Bundle metadata (costs, threshold, quantiles, versions).
    meta: RejectorMeta,
}

impl EdgeModels {
    /// Loads a bundle directory and checks that the rejector was trained for this legacy model.
    pub fn load(dir: &Path) -> Result<Self, EdgeError> {
        let meta: RejectorMeta = read_json(&dir.join(files::REJECTOR_META))?;
        let legacy = LegacyModel::load(&dir.join(files::LEGACY), meta.legacy_output)?;
        if legacy.sha256() != meta.legacy_sha256 {
            return Err(EdgeError::LegacyMismatch {
                expected: meta.legacy_sha256.clone(),
                actual: legacy.sha256().to_string(),
            });
        }
        let path = dir.join(files::REJECTOR);
        let bytes =
            std::fs::read(&path).map_err(|source| offload_shared::engine::EngineError::Io {
                path: path.display().to_string(),
                source,
            })?;
        let rejector = RejectorModel::from_bytes(&path.display().to_string(), &bytes, meta.kind)?;
        Ok(Self {
            legacy,
            rejector,
            meta,
        })
    }

    /// Bundle metadata.
    pub fn meta(&self) -> &RejectorMeta {
        &self.meta
    }

    /// Runs m then r on one input and applies `threshold` (the trained one when `None`).
    pub fn decide(&self, x: &[f32], threshold: Option<f32>) -> Result<Decision, EdgeError> {
        let probs = self.legacy.predict_proba(x, 1)?;
        let out = self.rejector.outputs(x, &probs, 1)?;
        let score = decision_score(self.meta.kind, &out, self.meta.costs.c1);
        let label = argmax(&probs);
        Ok(Decision {
            local_label: label as u32,
            local_confidence: probs[label],
            score,
            offload: score > threshold.unwrap_or(self.meta.threshold),
        })
    }
}
