//! The models a server holds: for each model in the repository, its latest version's expert
//! worker, rejector bundle and metadata. An expert and its rejector come from the same version
//! directory, so they are always served as a pair.

use super::batcher::{self, BatchConfig, BatchQueue};
use crate::error::CloudError;
use crate::stored::LoadedExpert;
use offload_shared::engine::sha256_hex;
use offload_shared::repository::{files, read_json, ExpertMeta, RejectorMeta, Repository};
use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

/// One served model.
#[derive(Debug)]
pub struct ModelEntry {
    /// Model name.
    pub name: String,
    /// Version directory served.
    pub version: String,
    /// Expert metadata (input shape, classes).
    pub expert: ExpertMeta,
    /// Rejector metadata (the bundle's contents).
    pub rejector: RejectorMeta,
    /// `rejector.onnx` bytes.
    pub rejector_onnx: Arc<Vec<u8>>,
    /// sha256 of `rejector_onnx`.
    pub rejector_sha256: String,
    /// The expert's batching worker.
    pub queue: BatchQueue,
}

/// All served models by name.
#[derive(Debug, Default)]
pub struct Registry {
    /// Name to entry.
    pub models: HashMap<String, Arc<ModelEntry>>,
}

impl Registry {
    /// Loads the latest version of every model under `repo` and warms each expert up.
    pub fn load(repo: &Path, cfg: BatchConfig) -> Result<Self, CloudError> {
        let r = Repository::new(repo);
        let entries = std::fs::read_dir(repo).map_err(crate::error::io_err(repo))?;
        let mut models = HashMap::new();
        for e in entries.filter_map(|e| e.ok()) {
            let Some(name) = e.file_name().to_str().map(str::to_string) else {
                continue;
            };
            if name.starts_with('.') || r.versions(&name)?.is_empty() {
                continue;
            }
            let dir = r.version_dir(&name, None)?;
            let entry = load_entry(&name, &dir, cfg)?;
            tracing::info!(model = %name, version = %entry.version, "model loaded");
            models.insert(name, Arc::new(entry));
        }
        if models.is_empty() {
            return Err(CloudError::Config(format!(
                "no trained model found in {}",
                repo.display()
            )));
        }
        Ok(Self { models })
    }
}

fn load_entry(name: &str, dir: &Path, cfg: BatchConfig) -> Result<ModelEntry, CloudError> {
    let expert: ExpertMeta = read_json(&dir.join(files::EXPERT_META))?;
    let rejector: RejectorMeta = read_json(&dir.join(files::REJECTOR_META))?;
    let path = dir.join(files::REJECTOR);
    let onnx = std::fs::read(&path).map_err(crate::error::io_err(&path))?;
    let sha = sha256_hex(&onnx);
    if sha != rejector.rejector_sha256 {
        return Err(CloudError::Config(format!(
            "{}: sha256 does not match rejector.json",
            path.display()
        )));
    }
    let owned = dir.to_path_buf();
    let queue = batcher::spawn(name, cfg, move || {
        LoadedExpert::load(&owned).map_err(|e| e.to_string())
    })
    .map_err(|e| CloudError::Config(format!("model `{name}`: {e}")))?;
    Ok(ModelEntry {
        name: name.into(),
        version: rejector.version.clone(),
        expert,
        rejector,
        rejector_onnx: Arc::new(onnx),
        rejector_sha256: sha,
        queue,
    })
}
