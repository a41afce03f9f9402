//! `cloud-expert serve`: loads the newest versions of every model in a repository, warms each
//! up, and serves them until the shutdown future resolves:
//! - gRPC (one port): `offload.v1` Expert / ModelSync / Telemetry, Open Inference Protocol v2
//!   `inference.GRPCInferenceService`, `grpc.health.v1` and reflection;
//! - HTTP (another port, optional): v2 REST, the repository admin API and `/metrics`;
//! - health (a third port, optional): `grpc.health.v1` alone in plaintext, for probes.
//!
//! On shutdown, readiness and health go NOT_SERVING, no new connections are accepted, and
//! in-flight requests get `grace` to finish. With `poll` set, the repository is re-read
//! periodically (see [`registry`] for the reload invariants).

pub mod analysis;
pub mod auth;
pub mod batcher;
pub mod error;
pub mod grpc_offload;
pub mod grpc_oip;
pub mod http;
pub mod limits;
pub mod llm;
pub mod metrics;
pub mod openai;
pub mod openai_types;
pub mod probe;
pub mod registry;
pub mod state;
pub mod tls;

use crate::error::CloudError;
use batcher::BatchConfig;
use offload_proto::{inference as oip_pb, v1 as pb};
use registry::Registry;
use state::{Call, ServerState};
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// gRPC services reported by `grpc.health.v1` (besides the server as a whole, "").
const SERVICES: [&str; 4] = [
    "offload.v1.Expert",
    "offload.v1.ModelSync",
    "offload.v1.Telemetry",
    "inference.GRPCInferenceService",
];

/// Validated serving configuration.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    /// Model repository root.
    pub repo: PathBuf,
    /// Batching limits.
    pub batch: BatchConfig,
    /// Most rows per request.
    pub max_rows: usize,
    /// Largest accepted request message (gRPC) or body (HTTP) in bytes.
    pub max_message_bytes: usize,
    /// How long in-flight requests may take after shutdown begins.
    pub grace: Duration,
    /// Versions served per model.
    pub keep_versions: usize,
    /// Repository polling period (None: only at start and through the admin API).
    pub poll: Option<Duration>,
    /// Per-device request rate limit.
    pub rate: Option<limits::RateConfig>,
    /// Authentication and authorisation.
    pub auth: auth::Auth,
    /// TLS (both listeners) when set.
    pub tls: Option<tls::TlsSettings>,
    /// Most requests being decoded or computed at once (beyond: UNAVAILABLE / 503).
    pub max_in_flight: usize,
    /// Most concurrent HTTP/2 streams per gRPC connection.
    pub max_streams_per_connection: u32,
    /// An LLM served through the OpenAI-compatible API on the HTTP port.
    pub llm: Option<llm::LlmServeConfig>,
    /// Limits of the analysis endpoints (`/v1/analysis/...`).
    pub analysis: analysis::AnalysisLimits,
    /// A plaintext listener for `grpc.health.v1` alone (orchestrator probes), if set.
    pub health_addr: Option<SocketAddr>,
}

impl ServeConfig {
    /// Defaults for everything but the repository and batching: 64 rows, 4 MiB messages,
    /// 5 s grace, 2 versions, no polling, no rate limit, no authentication, no TLS, 4096
    /// requests in flight, 256 streams per connection.
    pub fn new(repo: PathBuf, batch: BatchConfig) -> Self {
        Self {
            repo,
            batch,
            max_rows: 64,
            max_message_bytes: 4 << 20,
            grace: Duration::from_secs(5),
            keep_versions: 2,
            poll: None,
            rate: None,
            auth: auth::Auth::open(&[]),
            tls: None,
            max_in_flight: 4096,
            max_streams_per_connection: 256,
            llm: None,
            analysis: analysis::AnalysisLimits::default(),
            health_addr: None,
        }
    }
}

/// Where the server listens, sent once every model is warm.
#[derive(Debug, Clone, Copy)]
pub struct Ready {
    /// gRPC address.
    pub grpc: SocketAddr,
    /// HTTP address, if serving HTTP.
    pub http: Option<SocketAddr>,
    /// The plaintext health-only address, if one was asked for.
    pub health: Option<SocketAddr>,
}

/// Builds a [`Call`] from a gRPC request's metadata and TLS peer.
pub(crate) fn grpc_call<T>(
    req: &tonic::Request<T>,
    protocol: &'static str,
    method: &'static str,
) -> Call {
    let mut c = Call::new(protocol, method);
    c.deadline = grpc_timeout(req).and_then(|t| c.started.checked_add(t));
    c.peer = req.remote_addr().map(|a| a.ip());
    c.authorization = req
        .metadata()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    c.cert_identity = req
        .peer_certs()
        .and_then(|certs| certs.first().and_then(|c| auth::common_name(c)));
    c
}

/// Reads the client's `grpc-timeout` header (e.g. `100m`, `5S`) as a duration. The gRPC spec
/// allows at most 8 digits; anything else (or a value that overflows) is ignored, never trusted.
fn grpc_timeout<T>(req: &tonic::Request<T>) -> Option<Duration> {
    let v = req.metadata().get("grpc-timeout")?.to_str().ok()?;
    let (num, unit) = v.split_at(v.len().checked_sub(1)?);
    if num.is_empty() || num.len() > 8 {
        return None;
    }
    let n: u64 = num.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n.checked_mul(3600)?),
        "M" => Duration::from_secs(n.checked_mul(60)?),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

/// Serves until `shutdown` resolves. The listeners are bound by the caller (port 0 in tests),
/// so clients may connect at once: their calls wait in the accept backlog until the models are
/// warm. `ready` receives the addresses once every model is warm and health reports SERVING.
pub async fn run(
    cfg: ServeConfig,
    grpc: tokio::net::TcpListener,
    http: Option<tokio::net::TcpListener>,
    shutdown: impl Future<Output = ()> + Send + 'static,
    ready: Option<tokio::sync::oneshot::Sender<Ready>>,
) -> Result<(), CloudError> {
    let metrics = metrics::Metrics::new();
    let (repo, batch, keep, m) = (
        cfg.repo.clone(),
        cfg.batch,
        cfg.keep_versions,
        metrics.clone(),
    );
    let allow_empty = cfg.llm.is_some();
    let registry =
        tokio::task::spawn_blocking(move || Registry::open(&repo, batch, keep, m, allow_empty))
            .await
            .map_err(|e| CloudError::Config(format!("loading task failed: {e}")))??;
    let state = Arc::new(ServerState {
        registry: Arc::new(registry),
        metrics,
        auth: cfg.auth.clone(),
        rate: cfg.rate.map(|r| limits::RateLimiter::new(r, 100_000)),
        max_rows: cfg.max_rows,
        max_message_bytes: cfg.max_message_bytes,
        ready: Default::default(),
        in_flight: Arc::new(tokio::sync::Semaphore::new(cfg.max_in_flight)),
        max_in_flight: cfg.max_in_flight,
        telemetry_seen: limits::ReportDedup::new(100_000),
        render_lock: Default::default(),
    });
    let llm_state = match &cfg.llm {
        Some(l) => Some(llm::start(l, state.clone()).await?),
        None => None,
    };
    let (reporter, health) = tonic_health::server::health_reporter();
    // The probe listener shares the reporter, so it turns NOT_SERVING with the main one on
    // shutdown and keeps answering through the drain (it stops when `run` returns).
    let probe = match cfg.health_addr {
        Some(addr) => {
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|e| CloudError::Config(format!("cannot listen on {addr}: {e}")))?;
            let bound = listener.local_addr().ok();
            let svc = health.clone();
            let task = tokio::spawn(
                tonic::transport::Server::builder()
                    .add_service(svc)
                    .serve_with_incoming(incoming(listener)),
            );
            Some((task, bound))
        }
        None => None,
    };
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(oip_pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .map_err(|e| CloudError::Config(format!("reflection: {e}")))?;
    let limit = cfg.max_message_bytes;
    let expert = pb::expert_server::ExpertServer::new(grpc_offload::ExpertService {
        state: state.clone(),
    })
    .max_decoding_message_size(limit);
    let sync = pb::model_sync_server::ModelSyncServer::new(grpc_offload::SyncService {
        state: state.clone(),
    })
    .max_decoding_message_size(limit);
    let telemetry = pb::telemetry_server::TelemetryServer::new(grpc_offload::TelemetryService {
        state: state.clone(),
    })
    .max_decoding_message_size(limit);
    let oip = oip_pb::grpc_inference_service_server::GrpcInferenceServiceServer::new(
        grpc_oip::OipService {
            state: state.clone(),
        },
    )
    .max_decoding_message_size(limit)
    .max_encoding_message_size(usize::MAX);
    reporter
        .set_service_status("", tonic_health::ServingStatus::Serving)
        .await;
    for name in SERVICES {
        reporter
            .set_service_status(name, tonic_health::ServingStatus::Serving)
            .await;
    }
    state.ready.store(true, Ordering::Release);
    let grpc_addr = grpc
        .local_addr()
        .map_err(|e| CloudError::Config(format!("listener: {e}")))?;
    let http_addr = http.as_ref().and_then(|l| l.local_addr().ok());
    tracing::info!(grpc = %grpc_addr, http = ?http_addr, tls = cfg.tls.is_some(), auth = ?cfg.auth.mode(), models = state.registry.snapshot().len(), "serving");

    // One stop signal fans out to both front ends and the poller.
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopped = move || {
        let mut rx = stop_rx.clone();
        async move {
            let _ = rx.wait_for(|s| *s).await;
        }
    };
    if let Some(period) = cfg.poll {
        tokio::spawn(poll_repository(state.clone(), period, stopped()));
    }
    let http_task = match http {
        Some(listener) => {
            let llm = llm_state.as_ref().map(|l| analysis::texts::LlmHandle {
                name: l.base.clone(),
                engine: l.engine.clone(),
                tokenizer: l.tokenizer.clone(),
                adapters: l.adapters.clone(),
            });
            let mut app = http::app(state.clone()).merge(analysis::router(
                cfg.analysis,
                Some(state.registry.clone()),
                llm,
            ));
            if let Some(l) = &llm_state {
                app = app.merge(openai::router(l.clone()));
            }
            let stop = stopped();
            Some(match &cfg.tls {
                Some(t) => {
                    let tls = t.http().map_err(|e| CloudError::Config(e.to_string()))?;
                    tokio::spawn(tls::serve_https(listener, app, tls, stop, cfg.grace))
                }
                None => tokio::spawn(async move {
                    use axum::serve::ListenerExt;
                    let listener = listener.tap_io(|tcp| {
                        let _ = tcp.set_nodelay(true);
                    });
                    let app = app.into_make_service_with_connect_info::<std::net::SocketAddr>();
                    let _ = axum::serve(listener, app)
                        .with_graceful_shutdown(stop)
                        .await;
                }),
            })
        }
        None => None,
    };
    if let Some(tx) = ready {
        let _ = tx.send(Ready {
            grpc: grpc_addr,
            http: http_addr,
            health: probe.as_ref().and_then(|p| p.1),
        });
    }
    let signal = {
        let reporter = reporter.clone();
        let state = state.clone();
        async move {
            shutdown.await;
            tracing::info!("shutting down: NOT_SERVING, draining in-flight requests");
            state.ready.store(false, Ordering::Release);
            for name in std::iter::once("").chain(SERVICES) {
                reporter
                    .set_service_status(name, tonic_health::ServingStatus::NotServing)
                    .await;
            }
            let _ = stop_tx.send(true);
        }
    };
    let mut builder = tonic::transport::Server::builder()
        .max_concurrent_streams(Some(cfg.max_streams_per_connection));
    if let Some(t) = &cfg.tls {
        builder = builder
            .tls_config(t.grpc().map_err(|e| CloudError::Config(e.to_string()))?)
            .map_err(|e| CloudError::Config(format!("grpc tls: {e}")))?;
    }
    // tonic refuses oversized messages while decoding, before any handler runs; such refusals
    // are trailers-only responses with grpc-status OUT_OF_RANGE (11) in the headers, counted
    // here so the message-size limit has its metric like every other limit.
    let size_refusals = state.metrics.rejected.with_label_values(&["message_size"]);
    let count_size_refusals =
        tower::util::MapResponseLayer::new(move |resp: axum::http::Response<tonic::body::Body>| {
            if resp.headers().get("grpc-status").is_some_and(|v| v == "11") {
                size_refusals.inc();
            }
            resp
        });
    let server = builder
        .layer(count_size_refusals)
        .add_service(health)
        .add_service(reflection)
        .add_service(expert)
        .add_service(sync)
        .add_service(telemetry)
        .add_service(oip)
        .serve_with_incoming_shutdown(incoming(grpc), signal);
    let grace = cfg.grace;
    let grace_over = {
        let stop = stopped();
        async move {
            stop.await;
            tokio::time::sleep(grace).await;
        }
    };
    let result = tokio::select! {
        r = server => r.map_err(|e| CloudError::Config(format!("server: {e}"))),
        _ = grace_over => {
            tracing::warn!(?grace, "grace period over; abandoning remaining requests");
            Ok(())
        }
    };
    if let Some(t) = http_task {
        let _ = tokio::time::timeout(grace, t).await;
    }
    if let Some((task, _)) = probe {
        task.abort();
    }
    result
}

/// Re-reads the repository every `period` (on a blocking thread) until `stop` resolves.
async fn poll_repository(
    state: Arc<ServerState>,
    period: Duration,
    stop: impl Future<Output = ()>,
) {
    tokio::pin!(stop);
    loop {
        tokio::select! {
            _ = tokio::time::sleep(period) => {}
            _ = &mut stop => return,
        }
        let registry = state.registry.clone();
        let t0 = Instant::now();
        match tokio::task::spawn_blocking(move || registry.reload_all()).await {
            Ok(Ok(r)) if r != Default::default() => {
                tracing::info!(loaded = ?r.loaded, retired = ?r.retired, failed = ?r.failed, ms = t0.elapsed().as_millis() as u64, "repository reloaded")
            }
            Ok(Ok(_)) => {}
            Ok(Err(e)) => tracing::error!(error = %e, "repository poll failed"),
            Err(e) => tracing::error!(error = %e, "repository poll task failed"),
        }
    }
}

/// Accepted connections with Nagle's algorithm off: small replies must not wait for the peer's
/// delayed ACK (that costs up to 40 ms per response on Linux).
fn incoming(
    listener: tokio::net::TcpListener,
) -> impl tokio_stream::Stream<Item = std::io::Result<tokio::net::TcpStream>> {
    use tokio_stream::StreamExt;
    tokio_stream::wrappers::TcpListenerStream::new(listener).map(|s| {
        let s = s?;
        s.set_nodelay(true)?;
        Ok(s)
    })
}

/// Resolves on SIGINT or SIGTERM (Kubernetes sends SIGTERM).
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! { _ = ctrl_c => {}, _ = term => {} }
}

#[cfg(test)]
mod tests {
    use super::grpc_timeout;
    use std::time::Duration;

    fn with(v: &str) -> Option<Duration> {
        let mut r = tonic::Request::new(());
        r.metadata_mut().insert("grpc-timeout", v.parse().unwrap());
        grpc_timeout(&r)
    }

    #[test]
    fn grpc_timeouts_parse_and_absurd_ones_are_ignored() {
        assert_eq!(with("100m"), Some(Duration::from_millis(100)));
        assert_eq!(
            with("99999999H"),
            Some(Duration::from_secs(99_999_999 * 3600))
        );
        assert_eq!(with("18446744073709551615S"), None, "more than 8 digits");
        assert_eq!(with("5x"), None);
        assert_eq!(with("m"), None);
    }
}
