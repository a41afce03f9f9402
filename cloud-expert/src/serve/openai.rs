//! The OpenAI-compatible API on the HTTP port: `GET /v1/models`, `POST /v1/completions`,
//! `POST /v1/chat/completions` (JSON or server-sent events), and adapter management
//! (`GET|POST /v1/adapters`, `DELETE /v1/adapters/{name}`). Every error has OpenAI's shape.
//!
//! The `model` field names the base model or an adapter; an adapter that was evicted from memory
//! is loaded again on demand. A client that disconnects (or drops a stream) cancels its
//! sequence at the engine's next step.

use super::http::PeerIdentity;
use super::openai_types::{parse, ApiError, ChatRequest, CompletionRequest, LoadAdapter, Settings};
use super::state::ServerState;
use crate::llm::adapters::{AdapterRegistry, AdapterRegistryError};
use crate::llm::engine::{Engine, Event, GenRequest, SubmitError};
use crate::llm::tokenizer::Tokenizer;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Extension, Json, Router};
use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts};
use serde_json::{json, Value};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

/// LLM metrics (registered in the server's registry).
#[derive(Debug, Clone)]
pub struct LlmMetrics {
    /// Requests by endpoint and status code.
    pub requests: IntCounterVec,
    /// Time to first token (seconds).
    pub ttft: HistogramVec,
    /// Engine gauges: running, waiting, resident_adapters.
    pub gauges: IntGaugeVec,
    /// Engine counters: prompt_tokens, generated_tokens, decode_steps, mixed_adapter_steps,
    /// cancelled (mirrored from the engine).
    pub engine: IntGaugeVec,
}

impl LlmMetrics {
    /// Registers the metrics in `registry`.
    pub fn new(registry: &prometheus::Registry) -> Self {
        let requests = IntCounterVec::new(
            Opts::new(
                "llm_requests_total",
                "OpenAI API requests by endpoint and HTTP status.",
            ),
            &["endpoint", "status"],
        )
        .expect("static metric");
        let ttft = HistogramVec::new(
            HistogramOpts::new("llm_time_to_first_token_seconds", "Arrival to first token.")
                .buckets(vec![0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0]),
            &["model"],
        )
        .expect("static metric");
        let gauges = IntGaugeVec::new(
            Opts::new(
                "llm_engine",
                "Engine state: running, waiting, resident_adapters.",
            ),
            &["state"],
        )
        .expect("static metric");
        let engine = IntGaugeVec::new(
            Opts::new(
                "llm_engine_totals",
                "Engine totals since start: prompt_tokens, generated_tokens, decode_steps, mixed_adapter_steps, cancelled.",
            ),
            &["kind"],
        )
        .expect("static metric");
        for c in [
            Box::new(requests.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(ttft.clone()),
            Box::new(gauges.clone()),
            Box::new(engine.clone()),
        ] {
            let _ = registry.register(c);
        }
        Self {
            requests,
            ttft,
            gauges,
            engine,
        }
    }
}

/// What the OpenAI routes share.
#[derive(Debug)]
pub struct LlmState {
    /// The base model's id.
    pub base: String,
    /// The generation engine.
    pub engine: Engine,
    /// Its tokenizer.
    pub tokenizer: Arc<Tokenizer>,
    /// Adapters.
    pub adapters: Arc<AdapterRegistry>,
    /// Unix time the model was loaded.
    pub created: u64,
    /// The server (authentication, body limit).
    pub server: Arc<ServerState>,
    /// Metrics.
    pub metrics: LlmMetrics,
}

impl LlmState {
    /// Copies the engine's counters into the gauges (called periodically).
    pub fn refresh_metrics(&self) {
        let st = &self.engine.stats;
        let running = st.running.load(Ordering::Relaxed) as i64;
        let in_system = st.in_system.load(Ordering::Relaxed) as i64;
        let g = |k: &str, v: i64| self.metrics.gauges.with_label_values(&[k]).set(v);
        g("running", running);
        g("waiting", (in_system - running).max(0));
        g("resident_adapters", self.adapters.resident_count() as i64);
        let e = |k: &str, v: &std::sync::atomic::AtomicUsize| {
            self.metrics
                .engine
                .with_label_values(&[k])
                .set(v.load(Ordering::Relaxed) as i64)
        };
        e("prompt_tokens", &st.prompt_tokens);
        e("generated_tokens", &st.generated_tokens);
        e("decode_steps", &st.steps);
        e("mixed_adapter_steps", &st.mixed_steps);
        e("cancelled", &st.cancelled);
    }
}

/// The `/v1` routes.
pub fn router(state: Arc<LlmState>) -> Router {
    Router::new()
        .route("/v1/models", get(list_models))
        .route("/v1/models/{id}", get(get_model))
        .route("/v1/completions", post(completions))
        .route("/v1/chat/completions", post(chat))
        .route("/v1/adapters", get(list_adapters).post(load_adapter))
        .route("/v1/adapters/{name}", delete(unload_adapter))
        .with_state(state)
}

fn authorize(
    s: &LlmState,
    headers: &HeaderMap,
    peer: Option<&PeerIdentity>,
) -> Result<(), ApiError> {
    let auth = &s.server.auth;
    if auth.mode() == super::auth::AuthMode::None {
        return Ok(());
    }
    let authz = headers.get("authorization").and_then(|v| v.to_str().ok());
    let who = auth
        .authenticate(authz, peer.and_then(|p| p.0.as_deref()))
        .map_err(serve_error)?;
    auth.authorize_model(&who, &s.base).map_err(serve_error)
}

fn serve_error(e: super::error::ServeError) -> ApiError {
    let status = e.http_status();
    let kind = match status {
        StatusCode::UNAUTHORIZED => "authentication_error",
        StatusCode::FORBIDDEN => "permission_error",
        _ => "server_error",
    };
    ApiError::new(status, kind, None, e.to_string())
}

/// Adapter management needs the admin token when one is configured; without one it is open
/// only on a server without authentication.
fn authorize_admin(s: &LlmState, headers: &HeaderMap) -> Result<(), ApiError> {
    let auth = &s.server.auth;
    if !auth.has_admin() && auth.mode() == super::auth::AuthMode::None {
        return Ok(());
    }
    let authz = headers.get("authorization").and_then(|v| v.to_str().ok());
    auth.authorize_admin(authz).map_err(serve_error)
}

async fn read_body(s: &LlmState, body: Body) -> Result<axum::body::Bytes, ApiError> {
    let limit = s.server.max_message_bytes;
    axum::body::to_bytes(body, limit).await.map_err(|_| {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "invalid_request_error",
            None,
            format!("the request body exceeds {limit} bytes"),
        )
    })
}

fn model_object(id: &str, created: u64, parent: Option<&str>) -> Value {
    let mut v =
        json!({"id": id, "object": "model", "created": created, "owned_by": "cloud-expert"});
    if let Some(p) = parent {
        v["parent"] = json!(p);
        v["root"] = json!(p);
    }
    v
}

async fn list_models(
    State(s): State<Arc<LlmState>>,
    headers: HeaderMap,
    peer: Option<Extension<PeerIdentity>>,
) -> Response {
    if let Err(e) = authorize(&s, &headers, peer.as_deref()) {
        return e.into_response();
    }
    let mut data = vec![model_object(&s.base, s.created, None)];
    for a in s.adapters.list() {
        let mut m = model_object(&a.name, s.created, Some(&s.base));
        m["loaded"] = json!(a.loaded);
        data.push(m);
    }
    Json(json!({"object": "list", "data": data})).into_response()
}

async fn get_model(
    State(s): State<Arc<LlmState>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    peer: Option<Extension<PeerIdentity>>,
) -> Response {
    if let Err(e) = authorize(&s, &headers, peer.as_deref()) {
        return e.into_response();
    }
    if id == s.base {
        Json(model_object(&s.base, s.created, None)).into_response()
    } else if s.adapters.knows(&id) {
        Json(model_object(&id, s.created, Some(&s.base))).into_response()
    } else {
        ApiError::unknown_model(&id).into_response()
    }
}

async fn list_adapters(State(s): State<Arc<LlmState>>, headers: HeaderMap) -> Response {
    if let Err(e) = authorize_admin(&s, &headers) {
        return e.into_response();
    }
    Json(
        json!({"object": "list", "max_loaded": s.adapters.max_loaded(), "data": s.adapters.list()}),
    )
    .into_response()
}

fn registry_error(e: AdapterRegistryError) -> ApiError {
    match e {
        AdapterRegistryError::Load(crate::llm::adapter::AdapterError::Mismatch(m)) => {
            ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_request_error",
                Some("adapter_incompatible"),
                format!("adapter does not fit the base model: {m}"),
            )
        }
        AdapterRegistryError::Load(crate::llm::adapter::AdapterError::File { path, msg }) => {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "invalid_request_error",
                Some("adapter_not_readable"),
                format!("{}: {msg}", path.display()),
            )
        }
        AdapterRegistryError::OutsideRoot(_) => ApiError::new(
            StatusCode::FORBIDDEN,
            "permission_error",
            None,
            e.to_string(),
        ),
        other => ApiError::invalid("", other.to_string()),
    }
}

/// Runs a (possibly file-reading) registry operation on a blocking thread.
async fn with_registry<T: Send + 'static>(
    s: &LlmState,
    f: impl FnOnce(&AdapterRegistry) -> Result<T, AdapterRegistryError> + Send + 'static,
) -> Result<T, ApiError> {
    let reg = s.adapters.clone();
    tokio::task::spawn_blocking(move || f(&reg))
        .await
        .map_err(|e| {
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "server_error",
                None,
                e.to_string(),
            )
        })?
        .map_err(registry_error)
}

async fn load_adapter(State(s): State<Arc<LlmState>>, headers: HeaderMap, body: Body) -> Response {
    let result = async {
        authorize_admin(&s, &headers)?;
        let req: LoadAdapter = parse(&read_body(&s, body).await?)?;
        let info = with_registry(&s, move |reg| reg.load(&req.name, &req.path)).await?;
        tracing::info!(adapter = %info.name, path = %info.path.display(), "adapter loaded");
        Ok::<_, ApiError>(Json(json!(info)).into_response())
    }
    .await;
    s.metrics
        .requests
        .with_label_values(&["adapters", status_label(&result)])
        .inc();
    result.unwrap_or_else(IntoResponse::into_response)
}

async fn unload_adapter(
    State(s): State<Arc<LlmState>>,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> Response {
    if let Err(e) = authorize_admin(&s, &headers) {
        return e.into_response();
    }
    if s.adapters.unload(&name) {
        Json(json!({"id": name, "object": "adapter", "deleted": true})).into_response()
    } else {
        ApiError::unknown_model(&name).into_response()
    }
}

fn status_label(r: &Result<Response, ApiError>) -> &'static str {
    match r {
        Ok(_) => "200",
        Err(e) => match e.status.as_u16() {
            400 => "400",
            401 => "401",
            403 => "403",
            404 => "404",
            413 => "413",
            422 => "422",
            429 => "429",
            503 => "503",
            _ => "500",
        },
    }
}

/// Completions or chat.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Completion,
    Chat,
}

async fn completions(
    State(s): State<Arc<LlmState>>,
    headers: HeaderMap,
    peer: Option<Extension<PeerIdentity>>,
    body: Body,
) -> Response {
    let result = async {
        authorize(&s, &headers, peer.as_deref())?;
        let req: CompletionRequest = parse(&read_body(&s, body).await?)?;
        let set = req.common.settings(16)?;
        let ids = s.tokenizer.encode(&req.text()?);
        generate(&s, set, ids, Kind::Completion).await
    }
    .await;
    finish(&s, "completions", result)
}

async fn chat(
    State(s): State<Arc<LlmState>>,
    headers: HeaderMap,
    peer: Option<Extension<PeerIdentity>>,
    body: Body,
) -> Response {
    let result = async {
        authorize(&s, &headers, peer.as_deref())?;
        let req: ChatRequest = parse(&read_body(&s, body).await?)?;
        let messages = req.messages()?;
        let text = s
            .tokenizer
            .apply_chat_template(&messages)
            .map_err(|e| ApiError::invalid("messages", e.to_string()))?;
        let ids = s.tokenizer.encode(&text);
        let cfg = s.engine.config();
        let room = s.engine.context().saturating_sub(ids.len()).max(1);
        let set = req.common.settings(cfg.max_new_tokens.min(room))?;
        generate(&s, set, ids, Kind::Chat).await
    }
    .await;
    finish(&s, "chat", result)
}

fn finish(s: &LlmState, endpoint: &str, result: Result<Response, ApiError>) -> Response {
    s.metrics
        .requests
        .with_label_values(&[endpoint, status_label(&result)])
        .inc();
    result.unwrap_or_else(IntoResponse::into_response)
}

fn submit_error(e: SubmitError) -> ApiError {
    match e {
        SubmitError::Full(_) => ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limit_exceeded",
            Some("rate_limit_exceeded"),
            e.to_string(),
        ),
        SubmitError::PromptTooLong { .. } | SubmitError::Context { .. } => ApiError {
            code: Some("context_length_exceeded"),
            ..ApiError::invalid("messages", e.to_string())
        },
        SubmitError::TooManyTokens { .. } => ApiError::invalid("max_tokens", e.to_string()),
        SubmitError::EmptyPrompt => ApiError::invalid("prompt", e.to_string()),
        SubmitError::Stopped => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "server_error",
            None,
            e.to_string(),
        ),
    }
}

fn new_id(prefix: &str) -> String {
    let mut r = crate::llm::sampling::Rng::from_entropy();
    format!("{prefix}-{:016x}{:08x}", r.next_u64(), r.next_u64() as u32)
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

async fn generate(
    s: &Arc<LlmState>,
    set: Settings,
    ids: Vec<u32>,
    kind: Kind,
) -> Result<Response, ApiError> {
    let adapter = if set.model == s.base {
        None
    } else {
        let name = set.model.clone();
        let found = with_registry(s, move |reg| reg.get(&name)).await?;
        if !found {
            return Err(ApiError::unknown_model(&set.model));
        }
        Some(set.model.clone())
    };
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let prompt_tokens = ids.len();
    s.engine
        .submit(GenRequest {
            prompt: ids,
            adapter,
            sampling: set.sampling.clone(),
            max_tokens: set.max_tokens,
            stop: set.stop.clone(),
            ignore_eos: set.ignore_eos,
            events: tx,
            arrived: Instant::now(),
        })
        .map_err(submit_error)?;
    let id = new_id(if kind == Kind::Chat {
        "chatcmpl"
    } else {
        "cmpl"
    });
    let created = now();
    if set.stream {
        return Ok(stream(s.clone(), rx, set, id, created, kind));
    }
    let mut text = String::new();
    let t0 = Instant::now();
    let mut first = true;
    loop {
        match rx.recv().await {
            Some(Event::Text(t)) => {
                if first {
                    first = false;
                    observe_ttft(s, &set.model, t0);
                }
                text.push_str(&t);
            }
            Some(Event::Done {
                finish,
                completion_tokens,
                ..
            }) => {
                let usage = json!({"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                    "total_tokens": prompt_tokens + completion_tokens});
                let choice = match kind {
                    Kind::Completion => {
                        json!({"index": 0, "text": text, "logprobs": null, "finish_reason": finish})
                    }
                    Kind::Chat => json!({"index": 0, "finish_reason": finish, "logprobs": null,
                        "message": {"role": "assistant", "content": text}}),
                };
                let object = match kind {
                    Kind::Completion => "text_completion",
                    Kind::Chat => "chat.completion",
                };
                return Ok(Json(json!({"id": id, "object": object, "created": created,
                    "model": set.model, "choices": [choice], "usage": usage}))
                .into_response());
            }
            Some(Event::Error(e)) => {
                return Err(ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "server_error",
                    None,
                    e,
                ))
            }
            None => {
                return Err(ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "server_error",
                    None,
                    "the generation engine stopped",
                ))
            }
        }
    }
}

fn observe_ttft(s: &LlmState, model: &str, t0: Instant) {
    let label = if model == s.base { "base" } else { "adapter" };
    s.metrics
        .ttft
        .with_label_values(&[label])
        .observe(t0.elapsed().as_secs_f64());
}

/// Server-sent events: one chunk per text piece, a final chunk with the finish reason, an
/// optional usage chunk, then `[DONE]`.
fn stream(
    s: Arc<LlmState>,
    mut rx: tokio::sync::mpsc::UnboundedReceiver<Event>,
    set: Settings,
    id: String,
    created: u64,
    kind: Kind,
) -> Response {
    let (out_tx, out_rx) =
        tokio::sync::mpsc::channel::<Result<SseEvent, std::convert::Infallible>>(64);
    let object = match kind {
        Kind::Completion => "text_completion",
        Kind::Chat => "chat.completion.chunk",
    };
    let include_usage = set.include_usage;
    let model = set.model.clone();
    let chunk = move |choice: Value, usage: Option<Value>| {
        let mut v = json!({"id": id, "object": object, "created": created, "model": set.model,
            "choices": if choice.is_null() { json!([]) } else { json!([choice]) }});
        if let Some(u) = usage {
            v["usage"] = u;
        }
        SseEvent::default().data(v.to_string())
    };
    tokio::spawn(async move {
        let t0 = Instant::now();
        let send = |e: SseEvent| {
            let tx = out_tx.clone();
            async move { tx.send(Ok(e)).await.is_ok() }
        };
        if kind == Kind::Chat {
            let c = json!({"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": null, "logprobs": null});
            if !send(chunk(c, None)).await {
                return;
            }
        }
        let mut first = true;
        while let Some(ev) = rx.recv().await {
            match ev {
                Event::Text(t) => {
                    if t.is_empty() {
                        continue;
                    }
                    if first {
                        first = false;
                        observe_ttft(&s, &model, t0);
                    }
                    let c = match kind {
                        Kind::Completion => {
                            json!({"index": 0, "text": t, "finish_reason": null, "logprobs": null})
                        }
                        Kind::Chat => {
                            json!({"index": 0, "delta": {"content": t}, "finish_reason": null, "logprobs": null})
                        }
                    };
                    // A failed send means the client went away: dropping `rx` cancels.
                    if !send(chunk(c, None)).await {
                        return;
                    }
                }
                Event::Done {
                    finish,
                    prompt_tokens,
                    completion_tokens,
                } => {
                    let c = match kind {
                        Kind::Completion => {
                            json!({"index": 0, "text": "", "finish_reason": finish, "logprobs": null})
                        }
                        Kind::Chat => {
                            json!({"index": 0, "delta": {}, "finish_reason": finish, "logprobs": null})
                        }
                    };
                    let _ = send(chunk(c, None)).await;
                    if include_usage {
                        let u = json!({"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                            "total_tokens": prompt_tokens + completion_tokens});
                        let _ = send(chunk(Value::Null, Some(u))).await;
                    }
                    let _ = send(SseEvent::default().data("[DONE]")).await;
                    return;
                }
                Event::Error(e) => {
                    let err =
                        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "server_error", None, e);
                    let _ = send(SseEvent::default().data(err.body().to_string())).await;
                    return;
                }
            }
        }
    });
    Sse::new(tokio_stream::wrappers::ReceiverStream::new(out_rx))
        .keep_alive(KeepAlive::default())
        .into_response()
}
