//! The model repository layout written by training and served by the cloud:
//!
//! ```text
//! REPO/<model>/<version>/
//!   expert.safetensors   expert weights (tch VarStore names)
//!   expert.json          ExpertMeta: architecture, preprocessing, classes, data set
//!   rejector.onnx        the device-side rejector (opset in rejector.json)
//!   rejector.json        RejectorMeta: kind, threshold, score quantiles, costs, pinned versions
//!   legacy.onnx          a copy of the legacy model the pair was trained for
//!   report.json          evaluation against the baselines (see `eval`)
//!   curves.svg           accuracy-versus-offload-rate plot
//! ```
//!
//! Versions are positive integers; a new training run writes `max + 1`. An expert and its
//! rejector always live in the same version directory: they are shipped and retired as a pair.

use crate::dataset::DatasetSpec;
use crate::legacy::OutputKind;
use crate::rejector::{Costs, RejectorKind};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// File names inside a version directory.
pub mod files {
    /// Expert weights.
    pub const EXPERT_WEIGHTS: &str = "expert.safetensors";
    /// Expert metadata.
    pub const EXPERT_META: &str = "expert.json";
    /// Rejector model.
    pub const REJECTOR: &str = "rejector.onnx";
    /// Rejector metadata.
    pub const REJECTOR_META: &str = "rejector.json";
    /// Legacy model copy.
    pub const LEGACY: &str = "legacy.onnx";
    /// Evaluation report.
    pub const REPORT: &str = "report.json";
    /// Curves plot.
    pub const CURVES: &str = "curves.svg";
}

/// Why the repository could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum RepositoryError {
    /// Filesystem failure.
    #[error("{path}: {source}")]
    Io {
        /// The path.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// A metadata file is not valid JSON for its type.
    #[error("{path}: invalid metadata: {reason}")]
    Metadata {
        /// The file.
        path: PathBuf,
        /// The JSON error.
        reason: String,
    },
    /// No such model or version.
    #[error("{0}")]
    NotFound(String),
}

/// Network architecture of an expert or rejector.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "kebab-case")]
pub enum Arch {
    /// Fully connected ReLU network on the flattened input.
    Mlp {
        /// Hidden layer widths.
        hidden: Vec<usize>,
    },
    /// Conv3x3-ReLU-MaxPool2 blocks, then one hidden fully connected layer. Needs [c, h, w] input.
    Cnn {
        /// Output channels of each conv block.
        channels: Vec<usize>,
        /// Width of the hidden fully connected layer.
        hidden: usize,
    },
}

impl Arch {
    /// Parses `mlp:64,64`, `mlp` (no hidden layer = linear), `cnn:16,32/64`.
    pub fn parse(s: &str) -> Result<Self, String> {
        let list = |t: &str| -> Result<Vec<usize>, String> {
            t.split(',')
                .filter(|x| !x.is_empty())
                .map(|x| x.trim().parse::<usize>().map_err(|e| format!("`{s}`: {e}")))
                .collect()
        };
        let (kind, rest) = s.split_once(':').unwrap_or((s, ""));
        match kind {
            "mlp" => Ok(Arch::Mlp {
                hidden: list(rest)?,
            }),
            "cnn" => {
                let (ch, hid) = rest.split_once('/').unwrap_or((rest, "64"));
                let channels = list(ch)?;
                if channels.is_empty() {
                    return Err(format!("`{s}`: a CNN needs at least one conv block"));
                }
                let hidden = hid.parse().map_err(|e| format!("`{s}`: {e}"))?;
                Ok(Arch::Cnn { channels, hidden })
            }
            _ => Err(format!(
                "`{s}`: expected mlp:H1,H2,.. or cnn:C1,C2,../HIDDEN"
            )),
        }
    }
}

/// Per-feature affine preprocessing baked into every model: `(x - mean) / std`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Normalization {
    /// Per-feature mean of the training split.
    pub mean: Vec<f32>,
    /// Per-feature standard deviation (floored to avoid division by ~0).
    pub std: Vec<f32>,
}

/// `expert.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExpertMeta {
    /// The version directory name.
    pub version: String,
    /// Architecture of the network.
    pub arch: Arch,
    /// Per-sample input shape.
    pub input_shape: Vec<usize>,
    /// Number of classes of the task.
    pub num_classes: usize,
    /// True when the network outputs one real score (binary L2H surrogate), false for logits.
    pub single_score: bool,
    /// Input preprocessing (also stored in the weights as buffers).
    pub normalization: Normalization,
    /// The data set and split it was trained on.
    pub dataset: DatasetSpec,
}

/// `rejector.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RejectorMeta {
    /// The version directory name (same as the expert's: they are a pair).
    pub version: String,
    /// How to read the outputs.
    pub kind: RejectorKind,
    /// ONNX opset of `rejector.onnx`.
    pub opset: i64,
    /// Architecture.
    pub arch: Arch,
    /// True when the rejector also takes the legacy model's probabilities.
    pub uses_legacy_probs: bool,
    /// Decision threshold of the trained rule (on the decision score).
    pub threshold: f32,
    /// Costs trained for.
    pub costs: Costs,
    /// (level, value) validation quantiles of the decision score, levels 0, 0.01, ..., 1.
    pub score_quantiles: Vec<(f32, f32)>,
    /// Expert version the rejector was trained against.
    pub expert_version: String,
    /// sha256 of `legacy.onnx`.
    pub legacy_sha256: String,
    /// sha256 of `rejector.onnx`.
    pub rejector_sha256: String,
    /// How the legacy model's output was read.
    pub legacy_output: OutputKind,
}

/// Quantiles of `values` at levels 0, 0.01, ..., 1 (linear interpolation).
pub fn quantiles(values: &[f32]) -> Vec<(f32, f32)> {
    let mut v = values.to_vec();
    v.sort_by(f32::total_cmp);
    (0..=100)
        .map(|j| {
            let level = j as f32 / 100.0;
            if v.is_empty() {
                return (level, 0.0);
            }
            let pos = level * (v.len() - 1) as f32;
            let (lo, hi) = (pos.floor() as usize, pos.ceil() as usize);
            let frac = pos - lo as f32;
            (level, v[lo] + (v[hi] - v[lo]) * frac)
        })
        .collect()
}

/// The threshold that offloads about a fraction `rate` of inputs distributed like the
/// validation scores: the (1 - rate) quantile.
pub fn threshold_for_rate(quantiles: &[(f32, f32)], rate: f32) -> f32 {
    let level = (1.0 - rate).clamp(0.0, 1.0);
    let mut prev = quantiles.first().copied().unwrap_or((0.0, 0.5));
    for &(l, v) in quantiles {
        if l >= level {
            if l - prev.0 <= f32::EPSILON {
                return v;
            }
            return prev.1 + (v - prev.1) * (level - prev.0) / (l - prev.0);
        }
        prev = (l, v);
    }
    prev.1
}

/// A model repository root.
#[derive(Debug, Clone)]
pub struct Repository {
    /// The root directory.
    root: PathBuf,
}

impl Repository {
    /// A repository at `root` (not created until written to).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    /// The root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Existing versions of `model`, ascending.
    pub fn versions(&self, model: &str) -> Result<Vec<u64>, RepositoryError> {
        let dir = self.root.join(model);
        let entries = match std::fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(source) => return Err(RepositoryError::Io { path: dir, source }),
        };
        let mut out: Vec<u64> = entries
            .filter_map(|e| e.ok())
            .filter(|e| e.path().join(files::REJECTOR_META).exists())
            .filter_map(|e| e.file_name().to_str().and_then(|s| s.parse().ok()))
            .collect();
        out.sort_unstable();
        Ok(out)
    }

    /// Directory of a version; `None` selects the latest complete one.
    pub fn version_dir(
        &self,
        model: &str,
        version: Option<&str>,
    ) -> Result<PathBuf, RepositoryError> {
        let v = match version {
            Some(v) => v.to_string(),
            None => self
                .versions(model)?
                .last()
                .map(|v| v.to_string())
                .ok_or_else(|| {
                    RepositoryError::NotFound(format!(
                        "no trained version of model `{model}` in {}",
                        self.root.display()
                    ))
                })?,
        };
        let dir = self.root.join(model).join(&v);
        if !dir.join(files::REJECTOR_META).exists() {
            return Err(RepositoryError::NotFound(format!(
                "model `{model}` version `{v}` not found in {}",
                self.root.display()
            )));
        }
        Ok(dir)
    }

    /// The next version number for `model`.
    pub fn next_version(&self, model: &str) -> Result<u64, RepositoryError> {
        Ok(self.versions(model)?.last().map_or(1, |v| v + 1))
    }
}

/// Reads a JSON metadata file.
pub fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T, RepositoryError> {
    let text = std::fs::read_to_string(path).map_err(|source| RepositoryError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    serde_json::from_str(&text).map_err(|e| RepositoryError::Metadata {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })
}

/// Writes a JSON metadata file (pretty-printed).
pub fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<(), RepositoryError> {
    let text = serde_json::to_string_pretty(value).map_err(|e| RepositoryError::Metadata {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    std::fs::write(path, text).map_err(|source| RepositoryError::Io {
        path: path.to_path_buf(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantile_threshold_gives_the_target_rate() {
        let scores: Vec<f32> = (0..1000).map(|i| i as f32 / 1000.0).collect();
        let q = quantiles(&scores);
        let t = threshold_for_rate(&q, 0.2);
        let rate = scores.iter().filter(|&&s| s > t).count() as f32 / 1000.0;
        assert!((rate - 0.2).abs() < 0.01, "rate {rate}");
    }

    #[test]
    fn arch_parsing() {
        assert_eq!(
            Arch::parse("mlp:64,32").unwrap(),
            Arch::Mlp {
                hidden: vec![64, 32]
            }
        );
        assert_eq!(Arch::parse("mlp").unwrap(), Arch::Mlp { hidden: vec![] });
        assert_eq!(
            Arch::parse("cnn:8,16/32").unwrap(),
            Arch::Cnn {
                channels: vec![8, 16],
                hidden: 32
            }
        );
        assert!(Arch::parse("rnn").is_err());
    }
}
