//! The served adapters: a name -> directory catalogue and, bounded by an LRU cap, the adapters
//! resident in memory. A request for a catalogued adapter that was evicted loads it again (as
//! LoRAX does), so the cap bounds memory, not the set of usable adapters.
//!
//! The tensors themselves live on the engine thread (libtorch tensors are `Send` but not `Sync`):
//! this registry reads and checks an adapter on the caller's blocking thread, then hands it to
//! the engine, and tells the engine to drop the ones it evicts. Requests name their adapter.
//!
//! Invariants: every resident adapter fits the base model ([`Adapter::check_fits`] ran on load);
//! install and evict messages reach the engine in the same channel as requests, so a request
//! submitted after `get` succeeded finds its adapter; eviction only drops the engine's map entry,
//! so sequences already decoding with an evicted adapter finish with it.

use super::adapter::{Adapter, AdapterError};
use super::engine::Engine;
use super::model::LlamaConfig;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use tch::Device;

/// How LSR adapters are computed while serving.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LsrMode {
    /// Expanded once at load into LoRA factors (LoRA's compute, LSR's storage and transfer).
    #[default]
    Expand,
    /// The matrix-free Kronecker forward on every step.
    Kron,
}

/// What `/v1/adapters` and `/v1/models` report about an adapter.
#[derive(Debug, Clone, serde::Serialize)]
pub struct AdapterInfo {
    /// Name (the OpenAI `model` field).
    pub name: String,
    /// Directory.
    pub path: PathBuf,
    /// Whether it is resident.
    pub loaded: bool,
    /// `LSR` or `LORA`.
    pub kind: Option<String>,
    /// Trainable parameters in the file.
    pub parameters: Option<usize>,
    /// Modules it adapts.
    pub target_modules: Option<Vec<String>>,
}

#[derive(Debug)]
struct Resident {
    last_used: u64,
    kind: String,
    parameters: usize,
    targets: Vec<String>,
}

#[derive(Debug, Default)]
struct Inner {
    catalogue: HashMap<String, PathBuf>,
    resident: HashMap<String, Resident>,
    tick: u64,
}

/// Why an adapter operation failed.
#[derive(Debug, thiserror::Error)]
pub enum AdapterRegistryError {
    /// Invalid name.
    #[error("invalid adapter name `{0}`: use 1-128 characters from [A-Za-z0-9._-], not the base model's name")]
    Name(String),
    /// The path is outside the allowed root.
    #[error("adapter path `{0}` is outside the adapter root")]
    OutsideRoot(String),
    /// Loading failed.
    #[error(transparent)]
    Load(#[from] AdapterError),
}

/// The adapter catalogue and resident set.
#[derive(Debug)]
pub struct AdapterRegistry {
    inner: Mutex<Inner>,
    max_loaded: usize,
    base_name: String,
    cfg: LlamaConfig,
    mode: LsrMode,
    root: Option<PathBuf>,
    device: Device,
    engine: Engine,
}

impl AdapterRegistry {
    /// An empty registry for a base model served by `engine`.
    pub fn new(
        base_name: &str,
        cfg: LlamaConfig,
        max_loaded: usize,
        mode: LsrMode,
        root: Option<PathBuf>,
        engine: Engine,
    ) -> Self {
        Self {
            engine,
            inner: Mutex::default(),
            max_loaded: max_loaded.max(1),
            base_name: base_name.into(),
            cfg,
            mode,
            root,
            device: Device::Cpu,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn resolve(&self, path: &Path) -> Result<PathBuf, AdapterRegistryError> {
        match &self.root {
            None => Ok(path.to_path_buf()),
            Some(root) => {
                let joined = root.join(path);
                let canon = joined.canonicalize().map_err(|e| AdapterError::File {
                    path: joined.clone(),
                    msg: e.to_string(),
                })?;
                let root = root.canonicalize().unwrap_or_else(|_| root.clone());
                if canon.starts_with(&root) {
                    Ok(canon)
                } else {
                    Err(AdapterRegistryError::OutsideRoot(
                        path.display().to_string(),
                    ))
                }
            }
        }
    }

    /// Reads, checks and makes resident an adapter under `name` (blocking: call it off the
    /// async runtime). Replaces an adapter of the same name; evicts the least recently used
    /// one beyond the cap.
    pub fn load(&self, name: &str, path: &Path) -> Result<AdapterInfo, AdapterRegistryError> {
        let valid = !name.is_empty()
            && name.len() <= 128
            && name != self.base_name
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c));
        if !valid {
            return Err(AdapterRegistryError::Name(name.into()));
        }
        let path = self.resolve(path)?;
        let raw = {
            let _g = tch::no_grad_guard();
            Adapter::load(&path, self.device)?
        };
        raw.check_fits(&self.cfg)?;
        let parameters = raw.parameters();
        let kind = format!("{:?}", raw.config.peft_type).to_uppercase();
        let targets = raw
            .config
            .target_modules
            .iter()
            .map(|m| m.name().to_string())
            .collect();
        let adapter = match self.mode {
            LsrMode::Expand => raw.expanded(),
            LsrMode::Kron => raw,
        };
        let mut inner = self.lock();
        inner.tick += 1;
        let tick = inner.tick;
        inner.catalogue.insert(name.into(), path.clone());
        self.engine.install(name, adapter);
        inner.resident.insert(
            name.into(),
            Resident {
                last_used: tick,
                kind,
                parameters,
                targets,
            },
        );
        while inner.resident.len() > self.max_loaded {
            let victim = inner
                .resident
                .iter()
                .filter(|(n, _)| n.as_str() != name)
                .min_by_key(|(_, r)| r.last_used)
                .map(|(n, _)| n.clone());
            match victim {
                Some(v) => {
                    tracing::info!(adapter = %v, "evicting least recently used adapter");
                    inner.resident.remove(&v);
                    self.engine.evict(&v);
                }
                None => break,
            }
        }
        drop(inner);
        Ok(self.info(name).unwrap_or_else(|| AdapterInfo {
            name: name.into(),
            path,
            loaded: true,
            kind: None,
            parameters: Some(parameters),
            target_modules: None,
        }))
    }

    /// Forgets an adapter (catalogue and memory). False when unknown.
    pub fn unload(&self, name: &str) -> bool {
        let mut inner = self.lock();
        let known = inner.catalogue.remove(name).is_some();
        self.engine.evict(name);
        inner.resident.remove(name).is_some() || known
    }

    /// Whether `name` is catalogued.
    pub fn knows(&self, name: &str) -> bool {
        self.lock().catalogue.contains_key(name)
    }

    /// Makes `name` resident (loading it again if it was evicted: blocking in that case) and
    /// most recently used. `Ok(false)`: no such adapter.
    pub fn get(&self, name: &str) -> Result<bool, AdapterRegistryError> {
        let path = {
            let mut inner = self.lock();
            inner.tick += 1;
            let tick = inner.tick;
            if let Some(r) = inner.resident.get_mut(name) {
                r.last_used = tick;
                return Ok(true);
            }
            match inner.catalogue.get(name) {
                Some(p) => p.clone(),
                None => return Ok(false),
            }
        };
        self.load(name, &path)?;
        Ok(true)
    }

    /// Whether `name` is resident now (no loading).
    pub fn is_resident(&self, name: &str) -> bool {
        self.lock().resident.contains_key(name)
    }

    fn info(&self, name: &str) -> Option<AdapterInfo> {
        let inner = self.lock();
        let path = inner.catalogue.get(name)?.clone();
        let r = inner.resident.get(name);
        Some(AdapterInfo {
            name: name.into(),
            path,
            loaded: r.is_some(),
            kind: r.map(|r| r.kind.clone()),
            parameters: r.map(|r| r.parameters),
            target_modules: r.map(|r| r.targets.clone()),
        })
    }

    /// Every catalogued adapter, by name.
    pub fn list(&self) -> Vec<AdapterInfo> {
        let mut names: Vec<String> = self.lock().catalogue.keys().cloned().collect();
        names.sort();
        names.iter().filter_map(|n| self.info(n)).collect()
    }

    /// Resident adapter count.
    pub fn resident_count(&self) -> usize {
        self.lock().resident.len()
    }

    /// The most adapters kept resident.
    pub fn max_loaded(&self) -> usize {
        self.max_loaded
    }
}
