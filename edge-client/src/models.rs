//! Offline decisions from a repository version directory (no cloud): m then r and the
//! trained rule. Used by `edge-client decide` and the latency benchmark.

use crate::bundle::Bundle;
use offload_shared::legacy::{argmax, LegacyModel};
use offload_shared::rejector::decision_score;
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
    /// The rejector bundle failed verification (checksum, legacy model, contract).
    #[error(transparent)]
    Bundle(#[from] crate::bundle::BundleError),
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
    /// The verified rejector bundle (model, threshold, costs).
    bundle: Bundle,
}

impl EdgeModels {
    /// Loads a bundle directory and checks that the rejector was trained for this legacy model.
    pub fn load(dir: &Path) -> Result<Self, EdgeError> {
        let meta: RejectorMeta = read_json(&dir.join(files::REJECTOR_META))?;
        let legacy = LegacyModel::load(&dir.join(files::LEGACY), meta.legacy_output)?;
        let bundle = Bundle::from_repo_dir(dir, "", legacy.sha256())?;
        Ok(Self { legacy, bundle })
    }

    /// Runs m then r on one input and applies `threshold` (the trained one when `None`).
    pub fn decide(&self, x: &[f32], threshold: Option<f32>) -> Result<Decision, EdgeError> {
        let probs = self.legacy.predict_proba(x, 1)?;
        let meta = &self.bundle.meta;
        let out = self.bundle.rejector.outputs(x, &probs, 1)?;
        let score = decision_score(meta.kind, &out, meta.costs.c1);
        let label = argmax(&probs);
        Ok(Decision {
            local_label: label as u32,
            local_confidence: probs[label],
            score,
            offload: score > threshold.unwrap_or(meta.threshold),
        })
    }
}
