//! Texts as analysis input: embedded by the served LLM at a chosen layer with a chosen
//! pooling, each text run alone (so no padding enters the pooling). The engine answers
//! between decoding steps, eight texts at a time; a job can be cancelled between batches.

use crate::analysis::{AnalysisError, Progress};
use crate::llm::engine::{Engine, Pooling};
use crate::llm::tokenizer::Tokenizer;
use std::sync::Arc;

/// The served LLM, for embedding texts.
#[derive(Clone)]
pub struct LlmHandle {
    /// Its model id (requests may name it).
    pub name: String,
    /// The engine.
    pub engine: Engine,
    /// Its tokenizer.
    pub tokenizer: Arc<Tokenizer>,
    /// Its adapters (spectra of their updates).
    pub adapters: Arc<crate::llm::adapters::AdapterRegistry>,
}

/// How texts are embedded (all optional).
#[derive(Debug, Clone, Default, serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields, default)]
pub struct EmbedOptions {
    /// The served LLM's id (default: the one served).
    pub model: Option<String>,
    /// Blocks run before pooling, 0 (token embeddings) to the number of layers (default).
    pub layer: Option<usize>,
    /// `mean` (default), `last` or `first`.
    pub pooling: Option<Pooling>,
}

/// Texts per engine request.
const BATCH: usize = 8;

/// One vector per text (as f64 rows), or why not.
pub fn embed(
    llm: Option<&LlmHandle>,
    texts: &[String],
    opts: &EmbedOptions,
    progress: &Progress,
) -> Result<Vec<Vec<f64>>, AnalysisError> {
    let llm = llm.ok_or_else(|| {
        AnalysisError::invalid("texts", "this server serves no LLM to embed texts with")
    })?;
    if let Some(m) = &opts.model {
        if *m != llm.name {
            return Err(AnalysisError::invalid(
                "embedding.model",
                format!("unknown model {m}; this server serves {}", llm.name),
            ));
        }
    }
    let layers = llm.engine.layers();
    let layer = opts.layer.unwrap_or(layers);
    if layer > layers {
        return Err(AnalysisError::invalid(
            "embedding.layer",
            format!("must be in 0..={layers}"),
        ));
    }
    let context = llm.engine.context();
    let ids: Vec<Vec<i64>> = texts
        .iter()
        .enumerate()
        .map(|(i, t)| {
            let ids: Vec<i64> = llm.tokenizer.encode(t).into_iter().map(i64::from).collect();
            if ids.is_empty() || ids.len() > context {
                return Err(AnalysisError::invalid(
                    &format!("texts[{i}]"),
                    format!("has {} tokens; must be 1..={context}", ids.len()),
                ));
            }
            Ok(ids)
        })
        .collect::<Result<_, _>>()?;
    progress.plan(ids.len().div_ceil(BATCH));
    let mut out = Vec::with_capacity(ids.len());
    for chunk in ids.chunks(BATCH) {
        progress.check()?;
        let v = llm
            .engine
            .embed(chunk.to_vec(), layer, opts.pooling.unwrap_or(Pooling::Mean))
            .map_err(AnalysisError::Compute)?;
        out.extend(
            v.into_iter()
                .map(|r| r.into_iter().map(f64::from).collect::<Vec<_>>()),
        );
        progress.step()?;
    }
    Ok(out)
}

/// Request of `/v1/analysis/embed`.
#[derive(Debug, serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EmbedRequest {
    /// Texts.
    pub texts: Vec<String>,
    /// How they are embedded.
    #[serde(default)]
    pub embedding: EmbedOptions,
}

/// Response of `/v1/analysis/embed`.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct EmbedResponse {
    /// The LLM.
    pub model: String,
    /// Blocks run.
    pub layer: usize,
    /// Pooling.
    pub pooling: Pooling,
    /// One vector per text.
    pub embeddings: Vec<Vec<f64>>,
}

/// Embeds texts with the served LLM: the hidden states after `layer` blocks, pooled.
#[utoipa::path(
    post,
    path = "/v1/analysis/embed",
    request_body = EmbedRequest,
    responses(
        (status = 200, description = "Embeddings", body = EmbedResponse),
        (status = 413, description = "Too many texts", body = super::ErrorBody),
        (status = 422, description = "No LLM served, bad layer or text", body = super::ErrorBody),
        (status = 503, description = "Too many analyses running", body = super::ErrorBody),
    )
)]
pub(super) async fn embed_route(
    axum::extract::State(st): axum::extract::State<Arc<super::AnalysisState>>,
    body: axum::body::Bytes,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    let req: EmbedRequest = match super::json_body(&body) {
        Ok(r) => r,
        Err(r) => return *r,
    };
    if let Err(e) = super::check_size(req.texts.len(), 0, &st.limits) {
        return e.into_response();
    }
    let llm = st.llm.clone();
    super::compute_sync(&st, move |p: &Progress| {
        let embeddings = embed(llm.as_ref(), &req.texts, &req.embedding, p)?;
        let llm = llm
            .as_ref()
            .map(|l| (l.name.clone(), l.engine.layers()))
            .unwrap_or_default();
        Ok(serde_json::to_value(EmbedResponse {
            model: llm.0,
            layer: req.embedding.layer.unwrap_or(llm.1),
            pooling: req.embedding.pooling.unwrap_or(Pooling::Mean),
            embeddings,
        })
        .unwrap_or_default())
    })
    .await
}
