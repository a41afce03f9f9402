//! Rejector bundles on the device: built from a `ModelSync` reply or a repository version,
//! verified (sha256 of the ONNX bytes, the legacy model it was trained for, the rejector
//! contract), persisted atomically so the device starts offline with its last good bundle.

use offload_proto::v1 as pb;
use offload_shared::engine::{sha256_hex, EngineError};
use offload_shared::rejector::{Costs, RejectorKind, RejectorModel};
use offload_shared::repository::{files, read_json, RejectorMeta};
use serde::{Deserialize, Serialize};
use std::path::Path;

/// Why a bundle was refused. The device keeps its previous bundle and logs this.
#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    /// The ONNX bytes do not hash to the announced sha256.
    #[error("sha256 mismatch: announced {announced}, computed {computed}")]
    Checksum {
        /// In the bundle.
        announced: String,
        /// Of the bytes received.
        computed: String,
    },
    /// Trained for another legacy model.
    #[error("bundle is for legacy model {bundle}, this device runs {device}")]
    LegacyMismatch {
        /// In the bundle.
        bundle: String,
        /// The device's.
        device: String,
    },
    /// A field is missing or invalid.
    #[error("invalid bundle: {0}")]
    Invalid(String),
    /// The ONNX file does not load as the announced kind of rejector.
    #[error(transparent)]
    Engine(#[from] EngineError),
    /// Disk persistence failed.
    #[error("bundle cache {path}: {reason}")]
    Cache {
        /// The cache path.
        path: String,
        /// What failed.
        reason: String,
    },
}

/// Everything about a bundle except the model bytes (`bundle.json` in the cache).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BundleMeta {
    /// Model name.
    pub model: String,
    /// Rejector version.
    pub version: String,
    /// sha256 of the ONNX bytes.
    pub sha256: String,
    /// How to read the outputs.
    pub kind: RejectorKind,
    /// Trained threshold.
    pub threshold: f32,
    /// Validation quantiles of the decision score.
    pub score_quantiles: Vec<(f32, f32)>,
    /// Costs trained for.
    pub costs: Costs,
    /// Expert version the rejector is pinned to.
    pub expert_version: String,
    /// Legacy model it was trained for.
    pub legacy_sha256: String,
}

/// A verified, loaded bundle.
#[derive(Debug, Clone)]
pub struct Bundle {
    /// Metadata.
    pub meta: BundleMeta,
    /// The rejector, ready to run.
    pub rejector: RejectorModel,
    /// Its ONNX bytes (kept for persistence).
    pub onnx: Vec<u8>,
}

impl Bundle {
    /// Verifies and loads a bundle for a device whose legacy model hashes to `legacy_sha256`.
    pub fn verify(
        meta: BundleMeta,
        onnx: Vec<u8>,
        legacy_sha256: &str,
    ) -> Result<Self, BundleError> {
        let computed = sha256_hex(&onnx);
        if computed != meta.sha256 {
            return Err(BundleError::Checksum {
                announced: meta.sha256,
                computed,
            });
        }
        if meta.legacy_sha256 != legacy_sha256 {
            return Err(BundleError::LegacyMismatch {
                bundle: meta.legacy_sha256,
                device: legacy_sha256.into(),
            });
        }
        let rejector =
            RejectorModel::from_bytes(&format!("rejector v{}", meta.version), &onnx, meta.kind)?;
        Ok(Self {
            meta,
            rejector,
            onnx,
        })
    }

    /// From a `ModelSync` reply (must carry the ONNX bytes).
    pub fn from_proto(b: pb::RejectorBundle, legacy_sha256: &str) -> Result<Self, BundleError> {
        let kind = match pb::RejectorKind::try_from(b.kind) {
            Ok(pb::RejectorKind::Score) => RejectorKind::Score,
            Ok(pb::RejectorKind::Plugin) => RejectorKind::PlugIn,
            _ => return Err(BundleError::Invalid(format!("field `kind`: {}", b.kind))),
        };
        let costs = b
            .costs
            .ok_or_else(|| BundleError::Invalid("field `costs` is missing".into()))?;
        let costs = Costs::new(costs.c1, costs.ce).map_err(BundleError::Invalid)?;
        let meta = BundleMeta {
            model: b.model,
            version: b.version,
            sha256: b.sha256,
            kind,
            threshold: b.threshold,
            score_quantiles: b
                .score_quantiles
                .iter()
                .map(|q| (q.level, q.value))
                .collect(),
            costs,
            expert_version: b.expert_version,
            legacy_sha256: b.legacy_sha256,
        };
        Self::verify(meta, b.onnx, legacy_sha256)
    }

    /// From a model-repository version directory (offline installs and tests).
    pub fn from_repo_dir(
        dir: &Path,
        model: &str,
        legacy_sha256: &str,
    ) -> Result<Self, BundleError> {
        let cache = |e: &dyn std::fmt::Display| BundleError::Cache {
            path: dir.display().to_string(),
            reason: e.to_string(),
        };
        let m: RejectorMeta = read_json(&dir.join(files::REJECTOR_META)).map_err(|e| cache(&e))?;
        let onnx = std::fs::read(dir.join(files::REJECTOR)).map_err(|e| cache(&e))?;
        let meta = BundleMeta {
            model: model.into(),
            version: m.version,
            sha256: m.rejector_sha256,
            kind: m.kind,
            threshold: m.threshold,
            score_quantiles: m.score_quantiles,
            costs: m.costs,
            expert_version: m.expert_version,
            legacy_sha256: m.legacy_sha256,
        };
        Self::verify(meta, onnx, legacy_sha256)
    }

    /// Writes `rejector.onnx` + `bundle.json` into `dir` atomically (temp files, then rename;
    /// the JSON, which names the sha256, is renamed last).
    pub fn save(&self, dir: &Path) -> Result<(), BundleError> {
        let err = |e: std::io::Error| BundleError::Cache {
            path: dir.display().to_string(),
            reason: e.to_string(),
        };
        std::fs::create_dir_all(dir).map_err(err)?;
        let json = serde_json::to_vec_pretty(&self.meta)
            .map_err(|e| BundleError::Invalid(e.to_string()))?;
        std::fs::write(dir.join("rejector.onnx.tmp"), &self.onnx).map_err(err)?;
        std::fs::write(dir.join("bundle.json.tmp"), json).map_err(err)?;
        std::fs::rename(dir.join("rejector.onnx.tmp"), dir.join("rejector.onnx")).map_err(err)?;
        std::fs::rename(dir.join("bundle.json.tmp"), dir.join("bundle.json")).map_err(err)
    }

    /// Loads the cached bundle from `dir`, verifying it like a fresh one.
    pub fn load(dir: &Path, legacy_sha256: &str) -> Result<Self, BundleError> {
        let err = |e: &dyn std::fmt::Display| BundleError::Cache {
            path: dir.display().to_string(),
            reason: e.to_string(),
        };
        let meta: BundleMeta =
            serde_json::from_slice(&std::fs::read(dir.join("bundle.json")).map_err(|e| err(&e))?)
                .map_err(|e| err(&e))?;
        let onnx = std::fs::read(dir.join("rejector.onnx")).map_err(|e| err(&e))?;
        Self::verify(meta, onnx, legacy_sha256)
    }
}
