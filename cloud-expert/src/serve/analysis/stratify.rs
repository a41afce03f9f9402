//! `POST /v1/analysis/stratify`: the mixture of top-k LISTA dictionary-learning experts with
//! an attention gate, KMeans strata and their scores (always a job: 202).

use super::{AnalysisState, ErrorBody};
use crate::analysis::stratify::{stratify, StratifyParams};
use crate::analysis::{AnalysisError, Progress};
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use std::sync::Arc;

/// Request of `/v1/analysis/stratify`.
#[derive(Debug, serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StratifyRequest {
    /// Embeddings as rows of equal length (at least 10), or `texts`.
    #[serde(default)]
    pub embeddings: Vec<Vec<f64>>,
    /// Texts to embed with the served LLM instead.
    #[serde(default)]
    pub texts: Vec<String>,
    /// How `texts` are embedded.
    #[serde(default)]
    pub embedding: super::texts::EmbedOptions,
    /// Optional integer labels, one per row: purities, and the supervised term when
    /// `params.label_weight` > 0.
    pub labels: Option<Vec<i64>>,
    /// Settings (all optional).
    #[serde(default)]
    pub params: StratifyParams,
}

/// Stratification: gates, hard assignments, gating entropies, expert usage, key cosines,
/// subspace and centroid distances, KMeans strata with their lPCA dimension, silhouette,
/// Davies-Bouldin and Calinski-Harabasz scores. Deterministic given `params.seed`. The job's
/// result is a `StratifyReport`.
#[utoipa::path(
    post,
    path = "/v1/analysis/stratify",
    request_body = StratifyRequest,
    responses(
        (status = 202, description = "Queued as a job", body = super::JobAccepted),
        (status = 413, description = "Input past the limits", body = ErrorBody),
        (status = 422, description = "Malformed input", body = ErrorBody),
        (status = 503, description = "Too many jobs unfinished", body = ErrorBody),
    )
)]
pub(super) async fn stratify_route(
    State(st): State<Arc<AnalysisState>>,
    body: axum::body::Bytes,
) -> Response {
    let req: StratifyRequest = match super::json_body(&body) {
        Ok(r) => r,
        Err(r) => return *r,
    };
    let values = req.embeddings.iter().map(Vec::len).sum();
    if let Err(e) = super::check_size(req.embeddings.len(), values, &st.limits) {
        return e.into_response();
    }
    if !req.texts.is_empty() && !req.embeddings.is_empty() {
        return AnalysisError::invalid("texts", "give embeddings or texts, not both")
            .into_response();
    }
    let llm = st.llm.clone();
    super::submit_job(&st, "stratify", move |p: &Progress| {
        let rows = if req.texts.is_empty() {
            req.embeddings
        } else {
            super::texts::embed(llm.as_ref(), &req.texts, &req.embedding, p)?
        };
        stratify(&rows, req.labels.as_deref(), &req.params, p)
            .map(|r| serde_json::to_value(r).unwrap_or_default())
    })
}
