//! Starting the LLM side of `serve`: load the model and tokenizer, start the engine, load the
//! start-up adapters, and keep the LLM gauges fresh.

use super::openai::{LlmMetrics, LlmState};
use super::state::ServerState;
use crate::error::CloudError;
use crate::llm::adapters::{AdapterRegistry, LsrMode};
use crate::llm::engine::{Engine, EngineConfig};
use crate::llm::linear::Precision;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// Validated LLM serving settings.
#[derive(Debug, Clone)]
pub struct LlmServeConfig {
    /// GGUF file or Hugging Face directory.
    pub model: PathBuf,
    /// The base model's id in the API.
    pub name: String,
    /// Weight precision.
    pub precision: Precision,
    /// Engine limits.
    pub engine: EngineConfig,
    /// Adapters loaded at start (name, directory).
    pub adapters: Vec<(String, PathBuf)>,
    /// Most adapters resident at once.
    pub max_loaded_adapters: usize,
    /// How LSR adapters are computed.
    pub lsr_mode: LsrMode,
    /// Adapter paths are resolved under this directory and may not leave it.
    pub adapter_root: Option<PathBuf>,
}

/// Loads everything and returns the OpenAI routes' state.
pub async fn start(
    cfg: &LlmServeConfig,
    server: Arc<ServerState>,
) -> Result<Arc<LlmState>, CloudError> {
    let (path, precision) = (cfg.model.clone(), cfg.precision);
    let loaded = tokio::task::spawn_blocking(move || {
        let _g = tch::no_grad_guard();
        crate::llm::load::load(&path, tch::Device::Cpu).map(|mut l| {
            l.model.set_precision(precision);
            l
        })
    })
    .await
    .map_err(|e| CloudError::Config(format!("LLM loading task failed: {e}")))?
    .map_err(|e| CloudError::Load(format!("LLM {}: {e}", cfg.model.display())))?;
    let model_cfg = loaded.model.cfg.clone();
    let tokenizer = Arc::new(loaded.tokenizer);
    if tokenizer.vocab_size() > model_cfg.vocab_size {
        return Err(CloudError::Load(format!(
            "LLM {}: the tokenizer has {} tokens but the model only {}",
            cfg.model.display(),
            tokenizer.vocab_size(),
            model_cfg.vocab_size
        )));
    }
    let engine = Engine::start(loaded.model, tokenizer.clone(), cfg.engine);
    let adapters = Arc::new(AdapterRegistry::new(
        &cfg.name,
        model_cfg.clone(),
        cfg.max_loaded_adapters,
        cfg.lsr_mode,
        cfg.adapter_root.clone(),
        engine.clone(),
    ));
    for (name, dir) in &cfg.adapters {
        let (reg, name2, dir2) = (adapters.clone(), name.clone(), dir.clone());
        tokio::task::spawn_blocking(move || reg.load(&name2, &dir2))
            .await
            .map_err(|e| CloudError::Config(format!("adapter loading task failed: {e}")))?
            .map_err(|e| CloudError::Load(format!("adapter `{name}` ({}): {e}", dir.display())))?;
    }
    let metrics = LlmMetrics::new(server.metrics.registry());
    let state = Arc::new(LlmState {
        base: cfg.name.clone(),
        engine,
        tokenizer,
        adapters,
        created: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
        server,
        metrics,
    });
    let weak = Arc::downgrade(&state);
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        loop {
            tick.tick().await;
            match weak.upgrade() {
                Some(s) => s.refresh_metrics(),
                None => return,
            }
        }
    });
    tracing::info!(model = %cfg.name, layers = model_cfg.num_hidden_layers, precision = ?cfg.precision,
        adapters = cfg.adapters.len(), "LLM ready");
    Ok(state)
}
