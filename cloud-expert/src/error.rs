//! The cloud crate's error type: one variant per layer that can fail.

use offload_shared::{dataset::DatasetError, engine::EngineError, repository::RepositoryError};

/// Everything a cloud-expert command can fail with. Messages name the input at fault.
#[derive(Debug, thiserror::Error)]
pub enum CloudError {
    /// Invalid flags or configuration values.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// Data could not be read or shaped.
    #[error(transparent)]
    Dataset(#[from] DatasetError),
    /// An ONNX model could not be loaded or run.
    #[error(transparent)]
    Engine(#[from] EngineError),
    /// The model repository could not be read or written.
    #[error(transparent)]
    Repository(#[from] RepositoryError),
    /// libtorch failed.
    #[error("torch: {0}")]
    Torch(#[from] tch::TchError),
    /// A file could not be written.
    #[error("{path}: {source}")]
    Io {
        /// The path.
        path: std::path::PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// A model version in the repository could not be loaded for serving.
    #[error("cannot load {0}")]
    Load(String),
    /// The exported rejector disagrees with the trained one.
    #[error("export check failed: {0}")]
    ExportMismatch(String),
}

/// Wraps an io error with its path.
pub fn io_err(path: &std::path::Path) -> impl FnOnce(std::io::Error) -> CloudError + '_ {
    move |source| CloudError::Io {
        path: path.to_path_buf(),
        source,
    }
}
