//! `edge-client serve`: a local HTTP endpoint for applications on the device.
//! `POST /predict` `{"inputs": [[f32; d], ...], "ids"?: [..]}` answers each input;
//! `GET /health` reports the bundle in use; `GET /stats` the counters; `GET /policy` and
//! `POST /policy` read and change the decision policy live (e.g. a new c_e).

use crate::edge::Edge;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use std::sync::Arc;

/// Largest accepted request body.
const MAX_BODY: usize = 1 << 20;

/// A prediction request.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PredictRequest {
    /// Inputs, each the legacy model's feature count long.
    pub inputs: Vec<Vec<f32>>,
    /// Optional ids echoed in the answers.
    #[serde(default)]
    pub ids: Vec<String>,
}

type ApiError = (StatusCode, Json<serde_json::Value>);

fn bad(msg: String) -> ApiError {
    (
        StatusCode::UNPROCESSABLE_ENTITY,
        Json(serde_json::json!({ "error": msg })),
    )
}

async fn predict(
    State(edge): State<Arc<Edge>>,
    Json(req): Json<PredictRequest>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let d = edge.feature_len();
    if req.inputs.is_empty() || req.inputs.len() > 256 {
        return Err(bad(format!(
            "field `inputs`: need 1..=256 inputs, got {}",
            req.inputs.len()
        )));
    }
    if !req.ids.is_empty() && req.ids.len() != req.inputs.len() {
        return Err(bad("field `ids`: one id per input".into()));
    }
    for (i, x) in req.inputs.iter().enumerate() {
        if x.len() != d {
            return Err(bad(format!(
                "field `inputs[{i}]`: {} values, the model takes {d}",
                x.len()
            )));
        }
        if let Some(j) = x.iter().position(|v| !v.is_finite()) {
            return Err(bad(format!("field `inputs[{i}][{j}]`: not finite")));
        }
    }
    let mut answers = Vec::with_capacity(req.inputs.len());
    for (i, x) in req.inputs.into_iter().enumerate() {
        let id = req.ids.get(i).cloned().unwrap_or_else(|| i.to_string());
        let a = edge.answer(id, x, None).await.map_err(|e| {
            tracing::error!(error = %e, "local inference failed");
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                Json(serde_json::json!({ "error": "local inference failed" })),
            )
        })?;
        answers.push(a);
    }
    Ok(Json(serde_json::json!({ "answers": answers })))
}

/// A live change of the decision policy; absent fields keep their value.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyUpdate {
    /// Plug-in rejectors: offload price c_e.
    pub ce: Option<f32>,
    /// Plug-in rejectors: price per millisecond of round-trip time.
    pub ce_per_ms: Option<f32>,
    /// Fixed threshold (switches the rule to a threshold).
    pub threshold: Option<f32>,
    /// Target offload rate (switches the rule to a rate).
    pub target_rate: Option<f32>,
    /// Offload budget per window (0 removes it).
    pub budget: Option<usize>,
}

async fn set_policy(
    State(edge): State<Arc<Edge>>,
    Json(u): Json<PolicyUpdate>,
) -> Result<Json<crate::policy::PolicyConfig>, ApiError> {
    let mut cfg = edge.policy_config();
    let finite = |name: &str, v: f32, lo: f32, hi: f32| {
        if v.is_finite() && (lo..=hi).contains(&v) {
            Ok(v)
        } else {
            Err(bad(format!("field `{name}`: {v} is outside [{lo}, {hi}]")))
        }
    };
    if let Some(v) = u.ce {
        cfg.ce = Some(finite("ce", v, 0.0, f32::MAX)?);
    }
    if let Some(v) = u.ce_per_ms {
        cfg.ce_per_ms = finite("ce_per_ms", v, 0.0, f32::MAX)?;
    }
    match (u.threshold, u.target_rate) {
        (Some(_), Some(_)) => return Err(bad("give either `threshold` or `target_rate`".into())),
        (Some(t), None) => {
            cfg.rule = crate::policy::Rule::Threshold(finite("threshold", t, f32::MIN, f32::MAX)?)
        }
        (None, Some(r)) => {
            cfg.rule = crate::policy::Rule::Rate(finite("target_rate", r, 0.0, 1.0)?)
        }
        (None, None) => {}
    }
    if let Some(b) = u.budget {
        cfg.budget = (b > 0).then_some(b);
    }
    edge.set_policy(cfg.clone());
    Ok(Json(cfg))
}

async fn health(State(edge): State<Arc<Edge>>) -> Json<serde_json::Value> {
    let b = edge.bundle();
    Json(
        serde_json::json!({ "status": "ok", "rejector_version": b.meta.version, "expert_version": b.meta.expert_version }),
    )
}

async fn metrics(State(edge): State<Arc<Edge>>) -> impl axum::response::IntoResponse {
    (
        [("content-type", "text/plain; version=0.0.4")],
        edge.render_metrics(),
    )
}

async fn stats(State(edge): State<Arc<Edge>>) -> Json<crate::stats::Summary> {
    Json(edge.stats())
}

async fn get_policy(State(edge): State<Arc<Edge>>) -> Json<crate::policy::PolicyConfig> {
    Json(edge.policy_config())
}

/// The device's HTTP application.
pub fn app(edge: Arc<Edge>) -> Router {
    Router::new()
        .route("/predict", post(predict))
        .route("/health", get(health))
        .route("/stats", get(stats))
        .route("/metrics", get(metrics))
        .route("/policy", get(get_policy).post(set_policy))
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY))
        .with_state(edge)
}
