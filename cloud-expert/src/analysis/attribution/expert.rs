//! Attribution for an expert of the model repository: its weights from the version directory,
//! its training set from the data set recorded in `expert.json` (so the kernel's columns are
//! exactly what it was trained on), and by default the held-out test split as queries.

use super::poison::{poison_check, PoisonParams, PoisonReport};
use super::{attribute, AttributionParams, AttributionReport, Network, PointSet};
use crate::analysis::{AnalysisError, Progress};
use crate::stored::LoadedExpert;
use std::path::Path;

/// Queries given by the caller instead of the test split.
#[derive(Debug, Clone, Default)]
pub struct Queries {
    /// Row-major features.
    pub features: Vec<f32>,
    /// One label per query, if known.
    pub labels: Option<Vec<u32>>,
}

/// What [`run`] computed.
#[derive(Debug)]
pub enum Outcome {
    /// An attribution report.
    Attribution(Box<AttributionReport>),
    /// A poisoning check.
    Poison(Box<PoisonReport>),
}

impl Outcome {
    /// The report as JSON.
    pub fn to_json(&self) -> serde_json::Value {
        match self {
            Self::Attribution(r) => serde_json::to_value(r),
            Self::Poison(r) => serde_json::to_value(r),
        }
        .unwrap_or_default()
    }
}

/// Runs the attribution (or, with `poison`, the poisoning check on the expert's data and
/// architecture) for the expert in `dir`; its JSON report. The kernel block (training points x
/// all points) may hold at most `max_kernel_values` numbers (413 beyond: subsample with
/// `max_train`).
pub fn run(
    dir: &Path,
    queries: Option<Queries>,
    params: &AttributionParams,
    poison: Option<&PoisonParams>,
    max_kernel_values: usize,
    progress: &Progress,
) -> Result<Outcome, AnalysisError> {
    let expert = LoadedExpert::load(dir).map_err(|e| AnalysisError::Compute(e.to_string()))?;
    let d = expert.feature_len();
    let splits = expert.meta.dataset.load_splits().map_err(|e| {
        AnalysisError::invalid(
            "model",
            format!(
                "its training data ({:?}) cannot be loaded: {e}",
                expert.meta.dataset.source
            ),
        )
    })?;
    if let Some(q) = &queries {
        if q.features.is_empty() || q.features.len() % d != 0 {
            return Err(AnalysisError::invalid(
                "queries",
                format!("rows must have the expert's {d} features"),
            ));
        }
        if let Some(l) = &q.labels {
            if l.len() * d != q.features.len() {
                return Err(AnalysisError::invalid(
                    "query_labels",
                    "one label per query",
                ));
            }
            if let Some(bad) = l.iter().find(|&&v| v as usize >= expert.num_classes()) {
                return Err(AnalysisError::invalid(
                    "query_labels",
                    format!(
                        "label {bad} is not below the class count {}",
                        expert.num_classes()
                    ),
                ));
            }
        }
    }
    let n_train = params
        .max_train
        .map_or(splits.train.len(), |k| k.min(splits.train.len()));
    let n_queries = queries
        .as_ref()
        .map_or(splits.test.len(), |q| q.features.len() / d);
    if n_train * (n_train + n_queries) > max_kernel_values {
        return Err(AnalysisError::TooLarge(format!(
            "a kernel of {n_train} training points x {} points exceeds {max_kernel_values} \
             values; set params.max_train",
            n_train + n_queries
        )));
    }
    if let Some(pp) = poison {
        let mut pp = pp.clone();
        if pp.hidden.is_none() {
            if let offload_shared::repository::Arch::Mlp { hidden } = &expert.meta.arch {
                pp.hidden = Some(hidden.clone());
            }
        }
        return poison_check(
            splits.train.features(),
            splits.train.labels(),
            splits.test.features(),
            splits.test.labels(),
            &[d],
            expert.num_classes(),
            &pp,
            params,
            progress,
        )
        .map(|r| Outcome::Poison(Box::new(r)));
    }
    let network = Network {
        net: expert.net(),
        params: expert.parameters(),
        single_score: expert.meta.single_score,
        num_classes: expert.num_classes(),
    };
    let train = PointSet {
        features: splits.train.features(),
        labels: Some(splits.train.labels()),
    };
    let query_set = match &queries {
        Some(q) => PointSet {
            features: &q.features,
            labels: q.labels.as_deref(),
        },
        None => PointSet {
            features: splits.test.features(),
            labels: Some(splits.test.labels()),
        },
    };
    attribute(&network, &train, &query_set, d, params, progress)
        .map(|r| Outcome::Attribution(Box::new(r)))
}
