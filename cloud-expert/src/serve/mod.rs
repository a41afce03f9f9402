//! `cloud-expert serve`: loads every model of a repository, warms each up, reports SERVING on
//! `grpc.health.v1`, and serves `offload.v1.Expert` and `offload.v1.ModelSync` (plus server
//! reflection) until the shutdown future resolves; then health goes NOT_SERVING, no new
//! connections are accepted, and in-flight requests get `grace` to finish.

pub mod batcher;
pub mod registry;
pub mod service;

use crate::error::CloudError;
use batcher::BatchConfig;
use offload_proto::v1 as pb;
use registry::Registry;
use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// Validated serving configuration.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    /// Model repository root.
    pub repo: PathBuf,
    /// Batching limits.
    pub batch: BatchConfig,
    /// Most rows per request.
    pub max_rows: usize,
    /// Largest accepted request message in bytes.
    pub max_message_bytes: usize,
    /// How long in-flight requests may take after shutdown begins.
    pub grace: Duration,
}

/// Serves until `shutdown` resolves. The listener is bound by the caller (port 0 in tests), so
/// clients may connect at once: their calls wait in the accept backlog until the models are warm.
pub async fn run(
    cfg: ServeConfig,
    listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), CloudError> {
    run_with_ready(cfg, listener, shutdown, None).await
}

/// [`run`], additionally sending the bound address on `ready` once every model is warm and
/// health reports SERVING.
pub async fn run_with_ready(
    cfg: ServeConfig,
    listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
    ready: Option<tokio::sync::oneshot::Sender<std::net::SocketAddr>>,
) -> Result<(), CloudError> {
    let repo = cfg.repo.clone();
    let batch = cfg.batch;
    let registry = tokio::task::spawn_blocking(move || Registry::load(&repo, batch))
        .await
        .map_err(|e| CloudError::Config(format!("loading task failed: {e}")))??;
    let registry = Arc::new(registry);
    let (reporter, health) = tonic_health::server::health_reporter();
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .map_err(|e| CloudError::Config(format!("reflection: {e}")))?;
    let expert = pb::expert_server::ExpertServer::new(service::ExpertService {
        registry: registry.clone(),
        max_rows: cfg.max_rows,
    })
    .max_decoding_message_size(cfg.max_message_bytes);
    let sync = pb::model_sync_server::ModelSyncServer::new(service::SyncService {
        registry: registry.clone(),
    });
    reporter
        .set_serving::<pb::expert_server::ExpertServer<service::ExpertService>>()
        .await;
    reporter
        .set_serving::<pb::model_sync_server::ModelSyncServer<service::SyncService>>()
        .await;
    reporter
        .set_service_status("", tonic_health::ServingStatus::Serving)
        .await;
    tracing::info!(addr = ?listener.local_addr().ok(), models = registry.models.len(), "serving");
    if let (Some(tx), Ok(addr)) = (ready, listener.local_addr()) {
        let _ = tx.send(addr);
    }
    let (stopping_tx, stopping_rx) = tokio::sync::oneshot::channel::<()>();
    let signal = {
        let reporter = reporter.clone();
        async move {
            shutdown.await;
            tracing::info!("shutting down: NOT_SERVING, draining in-flight requests");
            reporter
                .set_service_status("", tonic_health::ServingStatus::NotServing)
                .await;
            reporter
                .set_not_serving::<pb::expert_server::ExpertServer<service::ExpertService>>()
                .await;
            let _ = stopping_tx.send(());
        }
    };
    let server = tonic::transport::Server::builder()
        .add_service(health)
        .add_service(reflection)
        .add_service(expert)
        .add_service(sync)
        .serve_with_incoming_shutdown(incoming(listener), signal);
    let grace = cfg.grace;
    tokio::select! {
        r = server => r.map_err(|e| CloudError::Config(format!("server: {e}"))),
        _ = async move { if stopping_rx.await.is_ok() { tokio::time::sleep(grace).await } else { std::future::pending::<()>().await } } => {
            tracing::warn!(?grace, "grace period over; abandoning remaining requests");
            Ok(())
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
