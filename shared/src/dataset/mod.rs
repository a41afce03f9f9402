//! Labelled data sets: the in-memory [`Dataset`], the loaders for each supported file format,
//! deterministic splits and binary views over multi-class sets.
//!
//! Every model in the system takes a dataset's *raw* feature values as input (normalisation is
//! baked into the exported models), so a `Dataset` never rescales what a loader read.

mod formats;
pub mod npy;
mod split;

pub use formats::{load_cifar10, load_csv, load_digits, load_mnist, load_npy_pair};
pub use split::{BinaryTask, SplitSpec, Splits, Task};

use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// What went wrong while reading or shaping data. Every variant names the file or field at fault.
#[derive(Debug, thiserror::Error)]
pub enum DatasetError {
    /// The file could not be read at all.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file that failed.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The file was read but its content is not valid for its format.
    #[error("{path}: {reason}")]
    Malformed {
        /// The offending file (or `<bundled digits>`).
        path: PathBuf,
        /// What exactly is wrong, with line or byte position where known.
        reason: String,
    },
    /// A command-line or config value describing the data is invalid.
    #[error("invalid data specification `{spec}`: {reason}")]
    BadSpec {
        /// The value as given.
        spec: String,
        /// Why it was refused.
        reason: String,
    },
    /// The data is valid but unusable for the requested task (e.g. an empty split).
    #[error("{0}")]
    Unusable(String),
}

/// A labelled data set held in memory.
///
/// Invariants (checked by [`Dataset::new`]): `features.len() == labels.len() * feature_len()`,
/// every label is `< num_classes`, every feature is finite.
#[derive(Debug, Clone, PartialEq)]
pub struct Dataset {
    /// Row-major raw feature values, one row per sample.
    features: Vec<f32>,
    /// Class index of each sample.
    labels: Vec<u32>,
    /// Shape of one sample: `[d]` for flat vectors or `[c, h, w]` for images.
    sample_shape: Vec<usize>,
    /// Number of classes (labels are `0..num_classes`).
    num_classes: usize,
}

impl Dataset {
    /// Builds a dataset, checking the invariants above.
    pub fn new(
        features: Vec<f32>,
        labels: Vec<u32>,
        sample_shape: Vec<usize>,
        num_classes: usize,
    ) -> Result<Self, DatasetError> {
        let d: usize = sample_shape.iter().product();
        if d == 0 {
            return Err(DatasetError::Unusable(format!(
                "sample shape {sample_shape:?} has no elements"
            )));
        }
        if features.len() != labels.len() * d {
            return Err(DatasetError::Unusable(format!(
                "{} feature values for {} labels of {} features each",
                features.len(),
                labels.len(),
                d
            )));
        }
        if let Some(bad) = labels.iter().position(|&l| l as usize >= num_classes) {
            return Err(DatasetError::Unusable(format!(
                "label {} of sample {bad} is not below the class count {num_classes}",
                labels[bad]
            )));
        }
        if let Some(bad) = features.iter().position(|v| !v.is_finite()) {
            return Err(DatasetError::Unusable(format!(
                "feature {} of sample {} is not finite",
                bad % d,
                bad / d
            )));
        }
        Ok(Self {
            features,
            labels,
            sample_shape,
            num_classes,
        })
    }

    /// Number of samples.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// True when there are no samples.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// Number of feature values per sample.
    pub fn feature_len(&self) -> usize {
        self.sample_shape.iter().product()
    }

    /// Shape of one sample.
    pub fn sample_shape(&self) -> &[usize] {
        &self.sample_shape
    }

    /// Number of classes.
    pub fn num_classes(&self) -> usize {
        self.num_classes
    }

    /// All features, row-major.
    pub fn features(&self) -> &[f32] {
        &self.features
    }

    /// All labels.
    pub fn labels(&self) -> &[u32] {
        &self.labels
    }

    /// The features of sample `i`.
    pub fn row(&self, i: usize) -> &[f32] {
        let d = self.feature_len();
        &self.features[i * d..(i + 1) * d]
    }

    /// A new dataset made of the given samples, in the given order.
    pub fn subset(&self, indices: &[usize]) -> Dataset {
        let d = self.feature_len();
        let mut features = Vec::with_capacity(indices.len() * d);
        for &i in indices {
            features.extend_from_slice(self.row(i));
        }
        Dataset {
            features,
            labels: indices.iter().map(|&i| self.labels[i]).collect(),
            sample_shape: self.sample_shape.clone(),
            num_classes: self.num_classes,
        }
    }

    /// Number of samples of each class.
    pub fn class_counts(&self) -> Vec<usize> {
        let mut counts = vec![0; self.num_classes];
        for &l in &self.labels {
            counts[l as usize] += 1;
        }
        counts
    }

    /// Relabels (and optionally drops) samples: `map(label)` gives the new label or `None` to drop.
    pub(crate) fn relabel(
        &self,
        num_classes: usize,
        map: impl Fn(u32) -> Option<u32>,
    ) -> Result<Dataset, DatasetError> {
        let keep: Vec<usize> = (0..self.len())
            .filter(|&i| map(self.labels[i]).is_some())
            .collect();
        let mut out = self.subset(&keep);
        out.labels = keep.iter().filter_map(|&i| map(self.labels[i])).collect();
        out.num_classes = num_classes;
        Dataset::new(out.features, out.labels, out.sample_shape, num_classes)
    }
}

/// Where a data set comes from. Stored in the model repository so evaluation can rebuild the
/// exact same splits later.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "format", rename_all = "kebab-case")]
pub enum DataSource {
    /// The bundled UCI digits set (8x8 images, 10 classes).
    Digits,
    /// A CSV file of numeric features plus one label column.
    Csv {
        /// The file.
        path: PathBuf,
        /// Label column: a header name or a 0-based index; `None` means the last column.
        label_column: Option<String>,
    },
    /// Two `.npy` files: features `[N, ...]` and integer labels `[N]`.
    Npy {
        /// Features file.
        features: PathBuf,
        /// Labels file.
        labels: PathBuf,
    },
    /// CIFAR-10 binary batches (`data_batch_*.bin`, `test_batch.bin`).
    Cifar10 {
        /// One or more batch files, concatenated in order.
        files: Vec<PathBuf>,
    },
    /// MNIST IDX files (optionally gzip-compressed).
    Mnist {
        /// `*-images-idx3-ubyte[.gz]`.
        images: PathBuf,
        /// `*-labels-idx1-ubyte[.gz]`.
        labels: PathBuf,
    },
}

impl DataSource {
    /// Parses the command-line form: `digits`, `csv:PATH`, `npy:FEATURES,LABELS`,
    /// `cifar10:FILE[,FILE...]`, `mnist:IMAGES,LABELS`.
    pub fn parse(spec: &str, label_column: Option<String>) -> Result<Self, DatasetError> {
        let bad = |reason: &str| DatasetError::BadSpec {
            spec: spec.to_string(),
            reason: reason.to_string(),
        };
        let (kind, rest) = spec.split_once(':').unwrap_or((spec, ""));
        let paths: Vec<PathBuf> = rest
            .split(',')
            .filter(|s| !s.is_empty())
            .map(PathBuf::from)
            .collect();
        match (kind, paths.len()) {
            ("digits", 0) => Ok(Self::Digits),
            ("csv", 1) => Ok(Self::Csv {
                path: paths[0].clone(),
                label_column,
            }),
            ("npy", 2) => Ok(Self::Npy {
                features: paths[0].clone(),
                labels: paths[1].clone(),
            }),
            ("cifar10", n) if n >= 1 => Ok(Self::Cifar10 { files: paths }),
            ("mnist", 2) => Ok(Self::Mnist {
                images: paths[0].clone(),
                labels: paths[1].clone(),
            }),
            ("digits" | "csv" | "npy" | "cifar10" | "mnist", _) => {
                Err(bad("wrong number of paths for this format"))
            }
            _ => Err(bad(
                "expected digits, csv:PATH, npy:X,Y, cifar10:FILES or mnist:IMAGES,LABELS",
            )),
        }
    }

    /// Reads the data.
    pub fn load(&self) -> Result<Dataset, DatasetError> {
        match self {
            Self::Digits => load_digits(),
            Self::Csv { path, label_column } => load_csv(path, label_column.as_deref()),
            Self::Npy { features, labels } => load_npy_pair(features, labels),
            Self::Cifar10 { files } => load_cifar10(files),
            Self::Mnist { images, labels } => load_mnist(images, labels),
        }
    }
}

/// Everything needed to rebuild the train/validation/test splits of a task exactly.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DatasetSpec {
    /// The files.
    pub source: DataSource,
    /// Multi-class or a binary view.
    pub task: Task,
    /// Split fractions and seed.
    pub split: SplitSpec,
}

impl DatasetSpec {
    /// Loads the source, applies the task view and splits it.
    pub fn load_splits(&self) -> Result<Splits, DatasetError> {
        let data = self.source.load()?;
        let data = self.task.apply(&data)?;
        self.split.split(&data)
    }
}
