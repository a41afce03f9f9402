//! The legacy model `m`: any ONNX classifier, treated as a black box.
//!
//! Accepted interface: one float32 input `[batch, d]` or `[batch, c, h, w]`; first output
//! `[batch, K]` with `K >= 2`, holding logits or probabilities. Only predictions (and, for the
//! confidence baseline, the probabilities) are ever used.

use crate::engine::{EngineError, OnnxModel};
use serde::{Deserialize, Serialize};
use std::path::Path;

/// How to read the legacy model's first output.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum OutputKind {
    /// Rows that are already probability distributions are kept, others go through softmax.
    #[default]
    Auto,
    /// Always apply softmax.
    Logits,
    /// Use as given (must be non-negative rows summing to 1).
    Probabilities,
}

impl std::str::FromStr for OutputKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(Self::Auto),
            "logits" => Ok(Self::Logits),
            "probabilities" | "probs" => Ok(Self::Probabilities),
            _ => Err(format!("`{s}`: expected auto, logits or probabilities")),
        }
    }
}

/// A loaded legacy classifier.
#[derive(Debug, Clone)]
pub struct LegacyModel {
    /// The ONNX model.
    model: OnnxModel,
    /// K, the length of each output row.
    num_classes: usize,
    /// How rows are turned into probabilities.
    output: OutputKind,
}

impl LegacyModel {
    /// Loads and validates a legacy model file.
    pub fn load(path: &Path, output: OutputKind) -> Result<Self, EngineError> {
        let bytes = std::fs::read(path).map_err(|source| EngineError::Io {
            path: path.display().to_string(),
            source,
        })?;
        Self::from_bytes(&path.display().to_string(), &bytes, output)
    }

    /// Loads and validates a legacy model from bytes.
    pub fn from_bytes(name: &str, bytes: &[u8], output: OutputKind) -> Result<Self, EngineError> {
        let model = OnnxModel::from_bytes(name, bytes)?;
        let not_classifier = |reason: String| EngineError::Interface {
            model: name.to_string(),
            role: "a classifier",
            reason,
        };
        if model.input_shapes().len() != 1 {
            return Err(not_classifier(format!(
                "it has {} inputs; a classifier takes exactly one",
                model.input_shapes().len()
            )));
        }
        let rank = model.input_shapes()[0].len();
        if rank != 1 && rank != 3 {
            return Err(not_classifier(format!(
                "input shape [batch, {:?}] is neither [batch, d] nor [batch, c, h, w]",
                model.input_shapes()[0]
            )));
        }
        let d: usize = model.input_shapes()[0].iter().product();
        let probe = model.run(&[&vec![0.0; d]], 1)?;
        let (shape, _) = probe
            .first()
            .ok_or_else(|| not_classifier("it has no outputs".into()))?;
        if shape.len() != 2 || shape[0] != 1 || shape[1] < 2 {
            return Err(not_classifier(format!(
                "first output has shape {shape:?} for one input; expected [1, K] with K >= 2 classes"
            )));
        }
        Ok(Self {
            num_classes: shape[1],
            model,
            output,
        })
    }

    /// Number of classes K.
    pub fn num_classes(&self) -> usize {
        self.num_classes
    }

    /// Per-sample input shape the model expects.
    pub fn input_shape(&self) -> &[usize] {
        &self.model.input_shapes()[0]
    }

    /// sha256 of the model file.
    pub fn sha256(&self) -> &str {
        self.model.sha256()
    }

    /// Checks that data of this sample shape and class count can be fed to the model. Flat and
    /// image layouts are interchangeable when the element counts agree (both are row-major).
    pub fn check_compatible(
        &self,
        sample_shape: &[usize],
        num_classes: usize,
    ) -> Result<(), EngineError> {
        let want: usize = self.input_shape().iter().product();
        let got: usize = sample_shape.iter().product();
        if want != got {
            return Err(EngineError::Shape {
                model: self.model.name().to_string(),
                reason: format!(
                    "the model takes inputs of shape {:?} ({want} values) but the data has samples of shape {sample_shape:?} ({got} values)",
                    self.input_shape()
                ),
            });
        }
        if num_classes != self.num_classes {
            return Err(EngineError::Shape {
                model: self.model.name().to_string(),
                reason: format!(
                    "the model predicts {} classes but the task has {num_classes}",
                    self.num_classes
                ),
            });
        }
        Ok(())
    }

    /// Class probabilities for `n` samples, `n * K` values row-major.
    pub fn predict_proba(&self, x: &[f32], n: usize) -> Result<Vec<f32>, EngineError> {
        let mut out = self.model.run(&[x], n)?.swap_remove(0).1;
        for row in out.chunks_mut(self.num_classes) {
            let is_dist = row.iter().all(|v| (0.0..=1.0).contains(v))
                && (row.iter().sum::<f32>() - 1.0).abs() < 1e-3;
            match self.output {
                OutputKind::Probabilities => {}
                OutputKind::Auto if is_dist => {}
                _ => softmax_in_place(row),
            }
        }
        Ok(out)
    }
}

/// Numerically stable softmax of one row.
pub fn softmax_in_place(row: &mut [f32]) {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0.0;
    for v in row.iter_mut() {
        *v = (*v - max).exp();
        sum += *v;
    }
    for v in row.iter_mut() {
        *v /= sum;
    }
}

/// Index of the largest value (the first one on ties).
pub fn argmax(row: &[f32]) -> usize {
    let mut best = 0;
    for (i, v) in row.iter().enumerate() {
        if *v > row[best] {
            best = i;
        }
    }
    best
}
