//! Analysis endpoints under `/v1/analysis/` and the OpenAPI document at `/openapi.json`
//! (generated from these types by utoipa). Computations run on the blocking pool (libtorch),
//! never on the async runtime; at most `max_concurrent` at once (503 beyond).
//!
//! Errors: `{"error": {"message", "field"}}` with 422 for malformed input or parameters
//! (naming the field), 413 for input past the limits, 503 when busy, 500 if a computation fails.
//!
//! Long analyses run as jobs ([`jobs`]): `POST` answers 202 with the job id; the job shares
//! the `max_concurrent` permits with synchronous requests (it waits for one, they do not).

mod attribution;
mod jobs;
mod sparse;
mod spectrum;
mod stratify;
pub mod texts;

use crate::analysis::id::{intrinsic_dimension, IdParams, IdReport};
use crate::analysis::{npy, AnalysisError, Points, Progress};
use crate::serve::registry::Registry;
use axum::body::Bytes;
use axum::extract::rejection::QueryRejection;
use axum::extract::Path;
use axum::extract::{DefaultBodyLimit, Query, State};
use axum::http::header::CONTENT_TYPE;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use jobs::{JobState, JobView, Jobs};
use std::sync::Arc;
use utoipa::OpenApi;

/// Input limits of the analysis endpoints.
#[derive(Debug, Clone, Copy)]
pub struct AnalysisLimits {
    /// Most points per request.
    pub max_points: usize,
    /// Most values (points x dimensions) per request.
    pub max_values: usize,
    /// Largest request body in bytes.
    pub max_body_bytes: usize,
    /// Analyses computed at once.
    pub max_concurrent: usize,
    /// Jobs kept (queued, running and finished); finished ones are forgotten oldest first.
    pub max_jobs: usize,
}

impl Default for AnalysisLimits {
    /// 100,000 points, 20 M values (10,000 x 2,048), 256 MiB bodies, 2 at once, 64 jobs.
    fn default() -> Self {
        Self {
            max_points: 100_000,
            max_values: 20_000_000,
            max_body_bytes: 256 << 20,
            max_concurrent: 2,
            max_jobs: 64,
        }
    }
}

struct AnalysisState {
    limits: AnalysisLimits,
    permits: Arc<tokio::sync::Semaphore>,
    jobs: Jobs,
    /// Served expert models (spectra of their layers), if the server has a repository.
    registry: Option<Arc<Registry>>,
    /// The served LLM, to embed `texts`.
    llm: Option<texts::LlmHandle>,
}

/// `202` body: a queued job.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct JobAccepted {
    /// Job id.
    pub job_id: String,
    /// Where to poll it (`GET`) or cancel it (`DELETE`).
    pub status_url: String,
}

/// Request of `/v1/analysis/intrinsic-dimension`.
#[derive(Debug, serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct IdRequest {
    /// Points as rows of equal length (or `texts`).
    #[serde(default)]
    pub embeddings: Vec<Vec<f64>>,
    /// Texts to embed with the served LLM instead (always a job).
    #[serde(default)]
    pub texts: Vec<String>,
    /// How `texts` are embedded.
    #[serde(default)]
    pub embedding: texts::EmbedOptions,
    /// Estimator settings (all optional).
    #[serde(default)]
    pub params: IdParams,
    /// Run as a job (202 with its id) instead of answering at once.
    #[serde(default)]
    pub job: bool,
}

/// An error body.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    /// What went wrong.
    pub error: ErrorDetail,
}

/// Error details.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct ErrorDetail {
    /// Human-readable message.
    pub message: String,
    /// The request field at fault, if any.
    pub field: Option<String>,
}

fn error(status: StatusCode, message: String, field: Option<String>) -> Response {
    (
        status,
        Json(ErrorBody {
            error: ErrorDetail { message, field },
        }),
    )
        .into_response()
}

impl IntoResponse for AnalysisError {
    fn into_response(self) -> Response {
        match &self {
            AnalysisError::Invalid { field, .. } => error(
                StatusCode::UNPROCESSABLE_ENTITY,
                self.to_string(),
                Some(field.clone()),
            ),
            AnalysisError::TooLarge(_) => {
                error(StatusCode::PAYLOAD_TOO_LARGE, self.to_string(), None)
            }
            AnalysisError::Compute(_) => {
                error(StatusCode::INTERNAL_SERVER_ERROR, self.to_string(), None)
            }
            AnalysisError::Cancelled => error(StatusCode::CONFLICT, self.to_string(), None),
        }
    }
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "cloud-expert analysis API",
        description = "Embedding and model analysis."
    ),
    paths(
        intrinsic_dimension_route,
        spectrum::spectrum_route,
        sparse::sparse_code_route,
        stratify::stratify_route,
        texts::embed_route,
        attribution::attribution_route,
        job_route,
        cancel_job_route
    ),
    components(schemas(
        IdRequest,
        IdParams,
        IdReport,
        ErrorBody,
        ErrorDetail,
        JobAccepted,
        JobView,
        JobState,
        spectrum::SpectrumRequest,
        texts::EmbedOptions,
        texts::EmbedRequest,
        texts::EmbedResponse,
        crate::llm::engine::Pooling,
        sparse::SparseCodeRequest,
        stratify::StratifyRequest,
        crate::analysis::stratify::StratifyParams,
        crate::analysis::stratify::StratifyReport,
        crate::analysis::stratify::Stratum,
        crate::analysis::dictlearn::LearnParams,
        crate::analysis::dictlearn::Method,
        spectrum::SpectrumReport,
        spectrum::NamedMatrix,
        spectrum::SpectrumFlags,
        crate::analysis::spectrum::LayerSpectrum,
        crate::analysis::spectrum::MpFit,
        crate::analysis::spectrum::Drift,
        crate::analysis::spectrum::alignment::Direction,
        crate::analysis::spectrum::alignment::Alignment,
        crate::analysis::spectrum::alignment::Side,
        crate::analysis::powerlaw::PowerLawFit,
        attribution::AttributionRequest,
        crate::analysis::attribution::AttributionParams,
        crate::analysis::attribution::Targets,
        crate::analysis::attribution::ntk::KernelKind,
        crate::analysis::attribution::AttributionReport,
        crate::analysis::attribution::KernelInfo,
        crate::analysis::attribution::SurrogateInfo,
        crate::analysis::attribution::QueryAttribution,
        crate::analysis::attribution::Support,
        crate::analysis::attribution::Suspicion,
        crate::analysis::attribution::poison::PoisonParams,
        crate::analysis::attribution::poison::PoisonReport,
        crate::analysis::attribution::poison::PrecisionAtK
    ))
)]
struct ApiDoc;

/// The OpenAPI document.
pub fn openapi() -> utoipa::openapi::OpenApi {
    ApiDoc::openapi()
}

/// The analysis routes and `/openapi.json`; `registry` gives the served experts' weights.
pub fn router(
    limits: AnalysisLimits,
    registry: Option<Arc<Registry>>,
    llm: Option<texts::LlmHandle>,
) -> Router {
    let state = Arc::new(AnalysisState {
        limits,
        permits: Arc::new(tokio::sync::Semaphore::new(limits.max_concurrent.max(1))),
        jobs: Jobs::new(limits.max_jobs),
        registry,
        llm,
    });
    Router::new()
        .route(
            "/v1/analysis/intrinsic-dimension",
            post(intrinsic_dimension_route),
        )
        .route("/v1/analysis/spectrum", post(spectrum::spectrum_route))
        .route("/v1/analysis/sparse-code", post(sparse::sparse_code_route))
        .route("/v1/analysis/embed", post(texts::embed_route))
        .route("/v1/analysis/stratify", post(stratify::stratify_route))
        .route(
            "/v1/analysis/attribution",
            post(attribution::attribution_route),
        )
        .route(
            "/v1/analysis/jobs/{id}",
            get(job_route).delete(cancel_job_route),
        )
        .route("/openapi.json", get(|| async { Json(openapi()) }))
        .layer(DefaultBodyLimit::max(limits.max_body_bytes))
        .with_state(state)
}

/// A JSON request body, or the 422 that names what is wrong with it (boxed: a response is
/// large).
fn json_body<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, Box<Response>> {
    serde_json::from_slice(body).map_err(|e| {
        Box::new(error(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!("body: {e}"),
            None,
        ))
    })
}

/// Checks a request's size against the limits.
fn check_size(points: usize, values: usize, l: &AnalysisLimits) -> Result<(), AnalysisError> {
    if points > l.max_points {
        return Err(AnalysisError::TooLarge(format!(
            "embeddings: {points} points exceed the limit of {}",
            l.max_points
        )));
    }
    if values > l.max_values {
        return Err(AnalysisError::TooLarge(format!(
            "embeddings: {values} values exceed the limit of {}",
            l.max_values
        )));
    }
    Ok(())
}

/// Queues `f` as a job: 202 with its id, or 503 when the job table is full of unfinished jobs.
fn submit_job(
    st: &AnalysisState,
    kind: &str,
    f: impl FnOnce(&Progress) -> Result<serde_json::Value, AnalysisError> + Send + 'static,
) -> Response {
    match st.jobs.submit(kind, st.permits.clone(), f) {
        Ok(id) => {
            let url = format!("/v1/analysis/jobs/{id}");
            (
                StatusCode::ACCEPTED,
                [(axum::http::header::LOCATION, url.clone())],
                Json(JobAccepted {
                    job_id: id,
                    status_url: url,
                }),
            )
                .into_response()
        }
        Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, e.to_string(), None),
    }
}

/// Runs `f` at once (no job) and answers 200 with its JSON.
async fn compute_sync(
    st: &AnalysisState,
    f: impl FnOnce(&Progress) -> Result<serde_json::Value, AnalysisError> + Send + 'static,
) -> Response {
    match compute(st, move || f(&Progress::default())).await {
        Ok(v) => Json(v).into_response(),
        Err(r) => r,
    }
}

/// A job's state, progress and, once done, its result or error.
#[utoipa::path(
    get,
    path = "/v1/analysis/jobs/{id}",
    params(("id" = String, Path, description = "Job id")),
    responses(
        (status = 200, description = "The job", body = JobView),
        (status = 404, description = "Unknown (or forgotten) job", body = ErrorBody),
    )
)]
async fn job_route(State(st): State<Arc<AnalysisState>>, Path(id): Path<String>) -> Response {
    match st.jobs.get(&id) {
        Some(v) => Json(v).into_response(),
        None => unknown_job(&id),
    }
}

/// Cancels a job: a queued job at once, a running one at its next step.
#[utoipa::path(
    delete,
    path = "/v1/analysis/jobs/{id}",
    params(("id" = String, Path, description = "Job id")),
    responses(
        (status = 200, description = "The job after the request", body = JobView),
        (status = 404, description = "Unknown (or forgotten) job", body = ErrorBody),
    )
)]
async fn cancel_job_route(
    State(st): State<Arc<AnalysisState>>,
    Path(id): Path<String>,
) -> Response {
    match st.jobs.cancel(&id) {
        Some(v) => Json(v).into_response(),
        None => unknown_job(&id),
    }
}

fn unknown_job(id: &str) -> Response {
    error(
        StatusCode::NOT_FOUND,
        format!("no job {id} (unknown, or forgotten after later jobs finished)"),
        Some("id".into()),
    )
}

/// Runs `f` on the blocking pool under a permit.
async fn compute<T: Send + 'static>(
    st: &AnalysisState,
    f: impl FnOnce() -> Result<T, AnalysisError> + Send + 'static,
) -> Result<T, Response> {
    let _permit = st.permits.try_acquire().map_err(|_| {
        error(
            StatusCode::SERVICE_UNAVAILABLE,
            "analyses busy; retry".into(),
            None,
        )
    })?;
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string(), None))?
        .map_err(IntoResponse::into_response)
}

/// Intrinsic dimension: TwoNN, MLE and lPCA. JSON (`IdRequest`), or a 2-D float32/float64
/// `.npy` file as the body (`content-type: application/octet-stream`) with the parameters in
/// the query string.
#[utoipa::path(
    post,
    path = "/v1/analysis/intrinsic-dimension",
    request_body(content(
        (IdRequest = "application/json"),
        (Vec<u8> = "application/octet-stream")
    )),
    params(IdParams),
    responses(
        (status = 200, description = "Estimates", body = IdReport),
        (status = 413, description = "Input past the limits", body = ErrorBody),
        (status = 422, description = "Malformed input or parameters", body = ErrorBody),
        (status = 503, description = "Too many analyses running", body = ErrorBody),
    )
)]
async fn intrinsic_dimension_route(
    State(st): State<Arc<AnalysisState>>,
    headers: HeaderMap,
    query: Result<Query<IdParams>, QueryRejection>,
    body: Bytes,
) -> Response {
    let json = headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_none_or(|v| v.starts_with("application/json"));
    let input = if json {
        let req: IdRequest = match json_body(&body) {
            Ok(r) => r,
            Err(r) => return *r,
        };
        if let Err(e) = check_size(
            req.embeddings.len(),
            req.embeddings.iter().map(Vec::len).sum(),
            &st.limits,
        ) {
            return e.into_response();
        }
        if !req.texts.is_empty() {
            if !req.embeddings.is_empty() {
                return AnalysisError::invalid("texts", "give embeddings or texts, not both")
                    .into_response();
            }
            let llm = st.llm.clone();
            return submit_job(&st, "intrinsic-dimension", move |progress: &Progress| {
                let rows = texts::embed(llm.as_ref(), &req.texts, &req.embedding, progress)?;
                let p = Points::from_rows(&rows, "texts")?;
                let r = intrinsic_dimension(&p, &req.params)?;
                Ok(serde_json::to_value(r).unwrap_or_default())
            });
        }
        if req.job {
            return submit_job(&st, "intrinsic-dimension", move |progress: &Progress| {
                progress.plan(1);
                let p = Points::from_rows(&req.embeddings, "embeddings")?;
                let r = intrinsic_dimension(&p, &req.params)?;
                progress.step()?;
                Ok(serde_json::to_value(r).unwrap_or_default())
            });
        }
        Input::Rows(req.embeddings, req.params)
    } else {
        let params = match query {
            Ok(Query(p)) => p,
            Err(e) => return error(StatusCode::UNPROCESSABLE_ENTITY, e.body_text(), None),
        };
        Input::Npy(body, params)
    };
    let limits = st.limits;
    match compute(&st, move || {
        let (p, params) = match input {
            Input::Rows(rows, params) => (Points::from_rows(&rows, "embeddings")?, params),
            Input::Npy(bytes, params) => {
                let p = npy::points(&bytes)?;
                check_size(p.n + p.dropped, (p.n + p.dropped) * p.d, &limits)?;
                (p, params)
            }
        };
        intrinsic_dimension(&p, &params)
    })
    .await
    {
        Ok(r) => Json(r).into_response(),
        Err(resp) => resp,
    }
}

/// A request's points, as sent.
enum Input {
    Rows(Vec<Vec<f64>>, IdParams),
    Npy(Bytes, IdParams),
}
