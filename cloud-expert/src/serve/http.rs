//! The HTTP front end: Open Inference Protocol v2 REST (`/v2/...`, including Triton's binary
//! tensor extension), the model repository admin API (`/v2/repository/...`), and Prometheus
//! `/metrics`. Bodies are read up to `max_message_bytes` (413 beyond it); every error is
//! `{"error": "..."}` with the status from [`ServeError`].

use super::error::ServeError;
use super::grpc_oip::{model_metadata, model_ready, REST_EXTENSIONS, SERVER_NAME};
use super::state::{Call, ServerState};
use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use offload_shared::oip::{self, Outputs, RestRequest};
use std::sync::Arc;
use tracing::Instrument;

/// Header announcing the JSON part's length in Triton's binary extension.
const HEADER_LEN: &str = "inference-header-content-length";

/// `/v2/models/{model}[/versions/{version}]...`: an absent version means the newest served.
#[derive(Debug, serde::Deserialize)]
struct ModelPath {
    model: String,
    #[serde(default)]
    version: String,
}

/// The client certificate's common name, attached to each request by the TLS accept loop.
#[derive(Debug, Clone)]
pub struct PeerIdentity(pub Option<String>);

/// The HTTP application.
pub fn app(state: Arc<ServerState>) -> Router {
    Router::new()
        .route("/v2/health/live", get(|| async { StatusCode::OK }))
        .route("/v2/health/ready", get(health_ready))
        .route("/v2", get(server_metadata))
        .route("/v2/models/{model}", get(metadata))
        .route("/v2/models/{model}/versions/{version}", get(metadata))
        .route("/v2/models/{model}/ready", get(ready))
        .route("/v2/models/{model}/versions/{version}/ready", get(ready))
        .route("/v2/models/{model}/infer", post(infer))
        .route("/v2/models/{model}/versions/{version}/infer", post(infer))
        .route("/v2/repository/index", post(repository_index))
        .route("/v2/repository/models/{model}/load", post(repository_load))
        .route(
            "/v2/repository/models/{model}/unload",
            post(repository_unload),
        )
        .route("/metrics", get(metrics))
        .fallback(|| async {
            (
                StatusCode::NOT_FOUND,
                Json(serde_json::json!({"error": "no such endpoint"})),
            )
        })
        .with_state(state)
}

/// Who is calling: the certificate identity (TLS) and the client address.
#[derive(Debug, Clone)]
pub struct Caller {
    /// Client certificate common name.
    identity: Option<String>,
    /// Client address.
    addr: Option<std::net::SocketAddr>,
}

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for Caller {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        _: &S,
    ) -> Result<Self, Self::Rejection> {
        Ok(Self {
            identity: parts
                .extensions
                .get::<PeerIdentity>()
                .and_then(|p| p.0.clone()),
            addr: parts
                .extensions
                .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
                .map(|c| c.0),
        })
    }
}

fn call(method: &'static str, headers: &HeaderMap, peer: Caller) -> Call {
    let mut c = Call::new("v2-rest", method);
    c.peer = peer.addr.map(|a| a.ip());
    c.authorization = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    c.cert_identity = peer.identity;
    c
}

async fn health_ready(State(s): State<Arc<ServerState>>) -> StatusCode {
    if s.is_ready() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    }
}

async fn server_metadata() -> Json<serde_json::Value> {
    Json(serde_json::json!({
        "name": SERVER_NAME, "version": env!("CARGO_PKG_VERSION"), "extensions": REST_EXTENSIONS,
    }))
}

async fn metadata(
    State(s): State<Arc<ServerState>>,
    Path(ModelPath { model, version }): Path<ModelPath>,
    headers: HeaderMap,
    peer: Caller,
) -> Response {
    let c = call("ModelMetadata", &headers, peer);
    let result = model_metadata(&s, &c, &model, &version);
    s.record(&c, &model, &result);
    match result {
        Ok(m) => {
            let tensor = |t: &offload_proto::inference::model_metadata_response::TensorMetadata| serde_json::json!({"name": t.name, "datatype": t.datatype, "shape": t.shape});
            Json(serde_json::json!({
                "name": m.name, "versions": m.versions, "platform": m.platform,
                "inputs": m.inputs.iter().map(tensor).collect::<Vec<_>>(),
                "outputs": m.outputs.iter().map(tensor).collect::<Vec<_>>(),
            }))
            .into_response()
        }
        Err(e) => e.into_response(),
    }
}

async fn ready(
    State(s): State<Arc<ServerState>>,
    Path(ModelPath { model, version }): Path<ModelPath>,
    headers: HeaderMap,
    peer: Caller,
) -> Response {
    let c = call("ModelReady", &headers, peer);
    let result = model_ready(&s, &c, &model, &version);
    s.record(&c, &model, &result);
    match result {
        Ok(true) => StatusCode::OK.into_response(),
        Ok(false) => ServeError::NotReady.into_response(),
        Err(e) => e.into_response(),
    }
}

/// Reads a body of at most `max` bytes.
async fn read_body(headers: &HeaderMap, body: Body, max: usize) -> Result<Bytes, ServeError> {
    let announced = headers
        .get("content-length")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if let Some(n) = announced.filter(|&n| n > max) {
        return Err(ServeError::TooLarge { got: n, max });
    }
    axum::body::to_bytes(body, max)
        .await
        .map_err(|_| ServeError::TooLarge { got: max + 1, max })
}

async fn infer(
    State(s): State<Arc<ServerState>>,
    Path(ModelPath { model, version }): Path<ModelPath>,
    headers: HeaderMap,
    peer: Caller,
    body: Body,
) -> Response {
    let c = call("ModelInfer", &headers, peer);
    let recorder = s.recorder(&c, &model);
    let result = infer_inner(&s, &c, &model, &version, &headers, body)
        .instrument(c.span(&model))
        .await;
    recorder.finish(&result);
    match result {
        Ok(r) if r.binary.is_empty() => Json(r.json).into_response(),
        Ok(r) => {
            let mut bytes = serde_json::to_vec(&r.json).unwrap_or_default();
            let json_len = bytes.len();
            bytes.extend_from_slice(&r.binary);
            (
                [
                    ("content-type", "application/octet-stream".to_string()),
                    (HEADER_LEN, json_len.to_string()),
                ],
                bytes,
            )
                .into_response()
        }
        Err(e) => e.into_response(),
    }
}

async fn infer_inner(
    s: &ServerState,
    c: &Call,
    model: &str,
    version: &str,
    headers: &HeaderMap,
    body: Body,
) -> Result<oip::RestResponse, ServeError> {
    let (_, entry) = s.admit(c, model, version)?;
    let _permit = s.permit()?;
    let bytes = read_body(headers, body, s.max_message_bytes).await?;
    let header_len = headers
        .get(HEADER_LEN)
        .map(|v| {
            v.to_str()
                .ok()
                .and_then(|v| v.parse::<usize>().ok())
                .ok_or_else(|| ServeError::Body(format!("header `{HEADER_LEN}` is not a number")))
        })
        .transpose()?;
    let (json, tail) = oip::split_body(&bytes, header_len)?;
    let req: RestRequest =
        serde_json::from_slice(json).map_err(|e| ServeError::Body(e.to_string()))?;
    let batch = oip::rest_input(&req, tail, entry.feature_len(), s.max_rows)?;
    let rows = batch.rows;
    let out = s.run(c, &entry, batch).await?;
    let outputs = Outputs {
        rows,
        num_classes: out.num_classes,
        probs: out.probs,
    };
    Ok(oip::rest_response(
        &req,
        &entry.name,
        &entry.version,
        &outputs,
    )?)
}

async fn metrics(State(s): State<Arc<ServerState>>) -> Response {
    (
        [("content-type", "text/plain; version=0.0.4")],
        s.render_metrics(),
    )
        .into_response()
}

/// Checks the admin credential of a repository call.
fn authorize_admin(s: &ServerState, headers: &HeaderMap) -> Result<(), ServeError> {
    let auth = headers.get("authorization").and_then(|v| v.to_str().ok());
    s.auth.authorize_admin(auth)
}

async fn repository_index(State(s): State<Arc<ServerState>>, headers: HeaderMap) -> Response {
    if let Err(e) = authorize_admin(&s, &headers) {
        return e.into_response();
    }
    let models: Vec<_> = s
        .registry
        .snapshot()
        .into_iter()
        .flat_map(|(name, versions)| {
            versions.into_iter().map(
                move |e| serde_json::json!({"name": name, "version": e.version, "state": "READY"}),
            )
        })
        .collect();
    Json(models).into_response()
}

async fn repository_load(
    State(s): State<Arc<ServerState>>,
    Path(model): Path<String>,
    headers: HeaderMap,
) -> Response {
    match repository_load_inner(&s, &model, &headers).await {
        Ok(report) => Json(serde_json::json!(report)).into_response(),
        Err(e) => e.into_response(),
    }
}

async fn repository_load_inner(
    s: &ServerState,
    model: &str,
    headers: &HeaderMap,
) -> Result<super::registry::ReloadReport, ServeError> {
    authorize_admin(s, headers)?;
    if model.contains(['/', '\\']) || model.starts_with('.') {
        return Err(ServeError::Body(format!("`{model}` is not a model name")));
    }
    let registry = s.registry.clone();
    let name = model.to_string();
    let report = tokio::task::spawn_blocking(move || registry.load_model(&name))
        .await
        .map_err(|e| ServeError::Internal(e.to_string()))?
        .map_err(|e| ServeError::Internal(e.to_string()))?;
    match (report.failed.is_empty(), s.registry.contains(model)) {
        (true, true) => Ok(report),
        (true, false) => Err(ServeError::NotFound(format!(
            "no trained version of model `{model}` in the repository"
        ))),
        (false, serving) => Err(ServeError::LoadFailed(format!(
            "{}; {}",
            report.failed.join("; "),
            if serving {
                "the previous versions keep serving"
            } else {
                "nothing of this model is served"
            }
        ))),
    }
}

async fn repository_unload(
    State(s): State<Arc<ServerState>>,
    Path(model): Path<String>,
    headers: HeaderMap,
) -> Response {
    if let Err(e) = authorize_admin(&s, &headers) {
        return e.into_response();
    }
    let registry = s.registry.clone();
    let name = model.clone();
    match tokio::task::spawn_blocking(move || registry.unload_model(&name)).await {
        Ok(retired) if !retired.is_empty() => {
            Json(serde_json::json!({ "retired": retired })).into_response()
        }
        Ok(_) => {
            ServeError::NotFound(format!("no model named `{model}` is loaded")).into_response()
        }
        Err(e) => ServeError::Internal(e.to_string()).into_response(),
    }
}
