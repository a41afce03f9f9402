//! Embedding and model analysis (issue 6; definitions in the project's spec, `analysis.md`):
//! intrinsic dimension, stratification, sparse codes, weight spectra and data attribution. Pure functions over [`Points`], used by the HTTP endpoints
//! (`serve/analysis.rs`) and by `cloud-expert analyze`.

pub mod attribution;
pub mod bench;
pub mod cli;
pub mod cluster;
pub mod dictlearn;
pub mod id;
pub mod knn;
pub mod npy;
pub mod omp;
pub mod points;
pub mod powerlaw;
pub mod progress;
pub mod spectrum;
pub mod stratify;
mod svg;

pub use points::Points;
pub use progress::Progress;

/// Serialises analyses that seed libtorch's process-wide generator (the poisoning check's
/// network initialisation): two at once would interleave its stream. Hold the guard from
/// `manual_seed` to the last draw. (Stratification draws from its own SplitMix64 instead.)
pub fn seeded_section() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Why an analysis could not run: each names the input or parameter at fault.
#[derive(Debug, thiserror::Error)]
pub enum AnalysisError {
    /// The input is malformed (HTTP 422).
    #[error("{field}: {why}")]
    Invalid {
        /// The input field.
        field: String,
        /// What is wrong.
        why: String,
    },
    /// The input exceeds a configured limit (HTTP 413).
    #[error("{0}")]
    TooLarge(String),
    /// A numerical step failed.
    #[error("computation failed: {0}")]
    Compute(String),
    /// The analysis was cancelled (a job's `DELETE`).
    #[error("cancelled")]
    Cancelled,
}

impl AnalysisError {
    /// An [`AnalysisError::Invalid`] for `field`.
    pub fn invalid(field: &str, why: impl Into<String>) -> Self {
        Self::Invalid {
            field: field.into(),
            why: why.into(),
        }
    }
}

impl From<tch::TchError> for AnalysisError {
    fn from(e: tch::TchError) -> Self {
        Self::Compute(e.to_string())
    }
}
