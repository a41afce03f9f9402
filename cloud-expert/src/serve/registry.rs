//! The models a server holds, and how they change while it runs.
//!
//! For each model in the repository the registry serves the newest `keep_versions` versions
//! that loaded successfully (older versions are tried only while fewer than that load).
//! Invariants:
//! - An expert and its rejector always come from the same version directory (checked: the
//!   rejector's sha256 and its `expert_version`), are loaded together and retired together, and
//!   a request pinned to version v is only ever answered by v's expert. A device therefore never
//!   gets an expert newer than its rejector was trained for.
//! - A version that fails to load never replaces anything: the previous versions keep serving,
//!   and the failure is remembered (with the directory's fingerprint) so polling does not retry
//!   it until its files change.
//! - Reloads are serialised and run on a blocking thread; readers take the lock only to clone an
//!   `Arc`, never across an await or a forward pass.

use super::batcher::{self, BatchConfig, BatchObserver, BatchQueue};
use super::metrics::Metrics;
use crate::error::CloudError;
use crate::stored::LoadedExpert;
use offload_shared::engine::sha256_hex;
use offload_shared::repository::{files, read_json, ExpertMeta, RejectorMeta, Repository};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::SystemTime;

/// One served model version: an expert with the rejector trained for it.
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
    /// The expert's batching worker (stops when the last clone of the entry is dropped).
    pub queue: BatchQueue,
}

impl ModelEntry {
    /// Values per sample the expert takes.
    pub fn feature_len(&self) -> usize {
        self.expert.input_shape.iter().product()
    }
}

/// What a reload did.
#[derive(Debug, Default, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ReloadReport {
    /// `model/version` loaded.
    pub loaded: Vec<String>,
    /// `model/version` retired.
    pub retired: Vec<String>,
    /// `model/version: reason` that failed to load (previous versions kept).
    pub failed: Vec<String>,
}

/// Why a lookup found nothing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LookupError {
    /// No such model is served.
    #[error("no model named `{0}`")]
    Model(String),
    /// The model is served, but not this version.
    #[error("model `{model}` does not serve version `{version}` (serving {served})")]
    Version {
        /// Model name.
        model: String,
        /// Requested version.
        version: String,
        /// Served versions, comma-separated.
        served: String,
    },
}

/// Directory fingerprint: a changed file changes it.
type Fingerprint = (u64, Option<SystemTime>);

/// All served models.
#[derive(Debug)]
pub struct Registry {
    /// Repository root.
    repo: PathBuf,
    /// Batching limits for new workers.
    batch: BatchConfig,
    /// Versions kept per model (>= 1).
    keep: usize,
    /// Where load results and batch sizes are recorded.
    metrics: Metrics,
    /// Model name -> version number -> entry.
    models: RwLock<HashMap<String, BTreeMap<u64, Arc<ModelEntry>>>>,
    /// Versions that failed to load, with the fingerprint they failed with.
    failed: Mutex<HashMap<(String, u64), Fingerprint>>,
    /// Models unloaded by an administrator: polling leaves them alone until loaded again.
    unloaded: Mutex<HashSet<String>>,
    /// Serialises reloads.
    reloading: Mutex<()>,
}

impl Registry {
    /// Loads the newest versions of every model under `repo` (blocking: warms each expert up).
    /// Fails when no model at all could be loaded.
    /// With `allow_empty` (an LLM-only server) an empty repository is accepted; a repository
    /// whose models all fail to load is still an error.
    pub fn open(
        repo: &Path,
        batch: BatchConfig,
        keep: usize,
        metrics: Metrics,
        allow_empty: bool,
    ) -> Result<Self, CloudError> {
        let reg = Self {
            repo: repo.to_path_buf(),
            batch,
            keep: keep.max(1),
            metrics,
            models: RwLock::default(),
            failed: Mutex::default(),
            unloaded: Mutex::default(),
            reloading: Mutex::default(),
        };
        let report = reg.reload_all()?;
        if reg.read().is_empty() && !(allow_empty && report.failed.is_empty()) {
            return Err(CloudError::Config(format!(
                "no trained model could be loaded from {}{}",
                repo.display(),
                if report.failed.is_empty() {
                    String::new()
                } else {
                    format!(": {}", report.failed.join("; "))
                }
            )));
        }
        Ok(reg)
    }

    fn read(
        &self,
    ) -> std::sync::RwLockReadGuard<'_, HashMap<String, BTreeMap<u64, Arc<ModelEntry>>>> {
        self.models.read().unwrap_or_else(|p| p.into_inner())
    }

    /// The entry answering `model` at `version` (empty: the newest served version).
    pub fn get(&self, model: &str, version: &str) -> Result<Arc<ModelEntry>, LookupError> {
        let models = self.read();
        let versions = models
            .get(model)
            .ok_or_else(|| LookupError::Model(model.into()))?;
        let found = if version.is_empty() {
            versions.values().next_back()
        } else {
            version.parse::<u64>().ok().and_then(|v| versions.get(&v))
        };
        found.cloned().ok_or_else(|| LookupError::Version {
            model: model.into(),
            version: version.into(),
            served: versions
                .keys()
                .map(u64::to_string)
                .collect::<Vec<_>>()
                .join(", "),
        })
    }

    /// The directory of a served version (empty `version`: the newest), for reading its files.
    pub fn version_dir(&self, model: &str, version: &str) -> Result<PathBuf, LookupError> {
        let entry = self.get(model, version)?;
        Ok(self.repo.join(&entry.name).join(&entry.version))
    }

    /// Every served model with its versions, ascending (sorted by name).
    pub fn snapshot(&self) -> Vec<(String, Vec<Arc<ModelEntry>>)> {
        let mut out: Vec<_> = self
            .read()
            .iter()
            .map(|(name, v)| (name.clone(), v.values().cloned().collect()))
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    /// Served versions of `model`, ascending.
    pub fn versions(&self, model: &str) -> Vec<String> {
        self.read()
            .get(model)
            .map(|v| v.keys().map(u64::to_string).collect())
            .unwrap_or_default()
    }

    /// Whether `model` is a served model name (for bounded metric labels).
    pub fn contains(&self, model: &str) -> bool {
        self.read().contains_key(model)
    }

    /// Model directories in the repository.
    fn model_names_on_disk(&self) -> Result<Vec<String>, CloudError> {
        let entries = std::fs::read_dir(&self.repo).map_err(crate::error::io_err(&self.repo))?;
        Ok(entries
            .filter_map(|e| e.ok())
            .filter(|e| e.path().is_dir())
            .filter_map(|e| e.file_name().to_str().map(str::to_string))
            .filter(|n| !n.starts_with('.'))
            .collect())
    }

    /// Brings every model in line with the repository (the polling reload). Blocking.
    pub fn reload_all(&self) -> Result<ReloadReport, CloudError> {
        let _serial = self.reloading.lock().unwrap_or_else(|p| p.into_inner());
        let mut report = ReloadReport::default();
        let mut names: HashSet<String> = self.model_names_on_disk()?.into_iter().collect();
        names.extend(self.read().keys().cloned());
        let skipped = self
            .unloaded
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        for name in names.difference(&skipped) {
            // One unreadable model directory must not stop the others from (re)loading.
            if let Err(e) = self.reload_locked(name, false, &mut report) {
                tracing::error!(model = %name, error = %e, "cannot read model directory");
                report.failed.push(format!("{name}: {e}"));
            }
        }
        Ok(report)
    }

    /// Loads or refreshes one model now (the admin API), retrying versions that failed before.
    /// Blocking.
    pub fn load_model(&self, name: &str) -> Result<ReloadReport, CloudError> {
        let _serial = self.reloading.lock().unwrap_or_else(|p| p.into_inner());
        self.unloaded
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(name);
        let mut report = ReloadReport::default();
        self.reload_locked(name, true, &mut report)?;
        Ok(report)
    }

    /// Stops serving every version of `name` (the admin API); polling will not bring it back
    /// until [`Registry::load_model`]. Returns the retired versions.
    pub fn unload_model(&self, name: &str) -> Vec<String> {
        let _serial = self.reloading.lock().unwrap_or_else(|p| p.into_inner());
        self.unloaded
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(name.to_string());
        let removed = self
            .models
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(name);
        let retired: Vec<String> = removed
            .map(|v| v.keys().map(|k| format!("{name}/{k}")).collect())
            .unwrap_or_default();
        for r in &retired {
            self.metrics
                .model_loads
                .with_label_values(&[name, "retired"])
                .inc();
            tracing::info!(version = %r, "model version unloaded");
        }
        retired
    }

    fn reload_locked(
        &self,
        name: &str,
        retry_failed: bool,
        report: &mut ReloadReport,
    ) -> Result<(), CloudError> {
        let repo = Repository::new(&self.repo);
        let on_disk = repo.versions(name)?;
        let loaded: BTreeMap<u64, Arc<ModelEntry>> =
            self.read().get(name).cloned().unwrap_or_default();
        let mut next: BTreeMap<u64, Arc<ModelEntry>> = loaded
            .iter()
            .filter(|(v, _)| on_disk.contains(v))
            .map(|(v, e)| (*v, e.clone()))
            .collect();
        // Newest first, until `keep` versions at least as new as the candidate are served: a
        // broken newest version makes an older one load instead (also at start).
        for &v in on_disk.iter().rev() {
            if next.contains_key(&v) {
                continue;
            }
            if next.len() >= self.keep && next.keys().next().is_some_and(|&oldest| v < oldest) {
                break;
            }
            let dir = self.repo.join(name).join(v.to_string());
            let fp = fingerprint(&dir);
            let key = (name.to_string(), v);
            {
                let failed = self.failed.lock().unwrap_or_else(|p| p.into_inner());
                if !retry_failed && failed.get(&key) == Some(&fp) {
                    continue;
                }
            }
            match self.load_entry(name, &dir) {
                Ok(entry) => {
                    tracing::info!(model = %name, version = v, "model version loaded");
                    self.metrics
                        .model_loads
                        .with_label_values(&[name, "ok"])
                        .inc();
                    self.failed
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .remove(&key);
                    next.insert(v, Arc::new(entry));
                    report.loaded.push(format!("{name}/{v}"));
                }
                Err(e) => {
                    tracing::error!(model = %name, version = v, error = %e, "model version failed to load; previous versions keep serving");
                    self.metrics
                        .model_loads
                        .with_label_values(&[name, "failed"])
                        .inc();
                    self.failed
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .insert(key, fp);
                    report.failed.push(format!("{name}/{v}: {e}"));
                }
            }
        }
        while next.len() > self.keep {
            next.pop_first();
        }
        for v in loaded.keys().filter(|v| !next.contains_key(v)) {
            tracing::info!(model = %name, version = v, "model version retired");
            self.metrics
                .model_loads
                .with_label_values(&[name, "retired"])
                .inc();
            report.retired.push(format!("{name}/{v}"));
        }
        let mut models = self.models.write().unwrap_or_else(|p| p.into_inner());
        if next.is_empty() {
            models.remove(name);
        } else {
            models.insert(name.to_string(), next);
        }
        Ok(())
    }

    fn load_entry(&self, name: &str, dir: &Path) -> Result<ModelEntry, CloudError> {
        let expert: ExpertMeta = read_json(&dir.join(files::EXPERT_META))?;
        let rejector: RejectorMeta = read_json(&dir.join(files::REJECTOR_META))?;
        let path = dir.join(files::REJECTOR);
        let onnx = std::fs::read(&path).map_err(crate::error::io_err(&path))?;
        let sha = sha256_hex(&onnx);
        if sha != rejector.rejector_sha256 {
            return Err(CloudError::Load(format!(
                "{}: sha256 does not match rejector.json",
                path.display()
            )));
        }
        let dir_name = dir.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        if rejector.expert_version != expert.version
            || rejector.version != expert.version
            || rejector.version != dir_name
        {
            return Err(CloudError::Load(format!(
                "{}: rejector (version {}, trained for expert {}) and expert (version {}) are not a pair of this version directory",
                dir.display(),
                rejector.version,
                rejector.expert_version,
                expert.version
            )));
        }
        let owned = dir.to_path_buf();
        let observer = BatchObserver {
            rows: self.metrics.batch_rows.with_label_values(&[name]),
            requests: self.metrics.batch_requests.with_label_values(&[name]),
        };
        let queue = batcher::spawn(name, self.batch, Some(observer), move || {
            LoadedExpert::load(&owned).map_err(|e| e.to_string())
        })
        .map_err(|e| CloudError::Load(format!("model `{name}` from {}: {e}", dir.display())))?;
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
}

/// Total size and newest modification time of a directory's files.
fn fingerprint(dir: &Path) -> Fingerprint {
    let mut size = 0;
    let mut newest = None;
    if let Ok(entries) = std::fs::read_dir(dir) {
        for m in entries.filter_map(|e| e.ok()?.metadata().ok()) {
            size += m.len();
            newest = newest.max(m.modified().ok());
        }
    }
    (size, newest)
}
