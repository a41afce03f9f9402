//! `POST /v1/analysis/attribution`: data attribution for a served expert with the normalised
//! pNTK (or trNTK) over the training set recorded in its `expert.json`, the kernel surrogate
//! and its faithfulness, the top-k training points behind each query, and the most suspicious
//! training points; with `poison_check`, the flipped-label check instead. Always a job (202).

use super::{error, AnalysisState, ErrorBody};
use crate::analysis::attribution::expert::{self, Queries};
use crate::analysis::attribution::poison::PoisonParams;
use crate::analysis::attribution::AttributionParams;
use crate::analysis::{AnalysisError, Progress};
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use std::sync::Arc;

/// Request of `/v1/analysis/attribution`.
#[derive(Debug, serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AttributionRequest {
    /// A served expert model.
    pub model: String,
    /// Its version (default: the newest served).
    pub version: Option<String>,
    /// Query points (rows of the expert's input width); default: the held-out test split of
    /// the expert's data.
    pub queries: Option<Vec<Vec<f64>>>,
    /// Labels of `queries` (faithfulness then uses the labelled class).
    pub query_labels: Option<Vec<u32>>,
    /// Kernel and surrogate settings.
    #[serde(default)]
    pub params: AttributionParams,
    /// Run the flipped-label check on the expert's data and architecture instead.
    pub poison_check: Option<PoisonParams>,
}

/// Attribution: `kernel` (kind, method, size, seconds), `surrogate` (iterations, Kendall tau,
/// class agreement), `queries` (top-k supporting training points each) and `suspicious`
/// training points; with `poison_check` a `PoisonReport` (precision at k). The job's result.
#[utoipa::path(
    post,
    path = "/v1/analysis/attribution",
    request_body = AttributionRequest,
    responses(
        (status = 202, description = "Queued as a job", body = super::JobAccepted),
        (status = 404, description = "Unknown model or version", body = ErrorBody),
        (status = 413, description = "Input past the limits", body = ErrorBody),
        (status = 422, description = "Malformed input or settings", body = ErrorBody),
        (status = 503, description = "Too many jobs unfinished", body = ErrorBody),
    )
)]
pub(super) async fn attribution_route(
    State(st): State<Arc<AnalysisState>>,
    body: axum::body::Bytes,
) -> Response {
    let req: AttributionRequest = match super::json_body(&body) {
        Ok(r) => r,
        Err(r) => return *r,
    };
    let Some(registry) = st.registry.as_ref() else {
        return error(
            StatusCode::NOT_FOUND,
            "this server serves no expert models".into(),
            Some("model".into()),
        );
    };
    let dir = match registry.version_dir(&req.model, req.version.as_deref().unwrap_or("")) {
        Ok(d) => d,
        Err(e) => return error(StatusCode::NOT_FOUND, e.to_string(), Some("model".into())),
    };
    let queries = match req.queries {
        None => {
            if req.query_labels.is_some() {
                return AnalysisError::invalid("query_labels", "given without queries")
                    .into_response();
            }
            None
        }
        Some(rows) => {
            let values = rows.iter().map(Vec::len).sum();
            if let Err(e) = super::check_size(rows.len(), values, &st.limits) {
                return e.into_response();
            }
            let width = rows.first().map_or(0, Vec::len);
            if let Some(r) = rows.iter().position(|r| r.len() != width || r.is_empty()) {
                return AnalysisError::invalid(
                    &format!("queries[{r}]"),
                    format!("has {} values, row 0 has {width}", rows[r].len()),
                )
                .into_response();
            }
            if rows.iter().flatten().any(|v| !v.is_finite()) {
                return AnalysisError::invalid("queries", "values must be finite").into_response();
            }
            Some(Queries {
                features: rows.iter().flatten().map(|&v| v as f32).collect(),
                labels: req.query_labels,
            })
        }
    };
    let limit = st.limits.max_values;
    super::submit_job(&st, "attribution", move |p: &Progress| {
        expert::run(
            &dir,
            queries,
            &req.params,
            req.poison_check.as_ref(),
            limit,
            p,
        )
        .map(|o| o.to_json())
    })
}
