//! The state every protocol front end shares, and the one inference path they all take:
//! authenticate → admit (ready, per-device rate) → authorise and look up the model → (the front
//! end decodes its input) → queue on the model's batching worker → answer. `offload.v1`, v2 gRPC
//! and v2 REST therefore batch together and obey the same limits.

use super::auth::{Auth, Principal};
use super::batcher::{Job, JobError, JobOutput, SubmitError};
use super::error::{code_label, ServeError};
use super::limits::RateLimiter;
use super::metrics::Metrics;
use super::registry::{ModelEntry, Registry};
use offload_shared::wire::InputBatch;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

/// Shared by every service.
#[derive(Debug)]
pub struct ServerState {
    /// Served models.
    pub registry: Arc<Registry>,
    /// Exported metrics.
    pub metrics: Metrics,
    /// Authentication and authorisation.
    pub auth: Auth,
    /// Per-device rate limit, when configured.
    pub rate: Option<RateLimiter>,
    /// Most rows in one request.
    pub max_rows: usize,
    /// Largest request body in bytes.
    pub max_message_bytes: usize,
    /// True once warm, false again when shutdown begins.
    pub ready: AtomicBool,
}

/// What a front end knows about one call before decoding it.
#[derive(Debug, Clone)]
pub struct Call {
    /// Protocol label for metrics (`offload`, `v2-grpc`, `v2-rest`).
    pub protocol: &'static str,
    /// Method label for metrics.
    pub method: &'static str,
    /// When the call arrived.
    pub started: Instant,
    /// Client deadline.
    pub deadline: Option<Instant>,
    /// The `authorization` value sent, if any.
    pub authorization: Option<String>,
    /// The client certificate's common name, if any.
    pub cert_identity: Option<String>,
    /// Device id the client declared (used for rate limiting when unauthenticated).
    pub declared_device: Option<String>,
    /// The client's address (the rate-limit key of last resort).
    pub peer: Option<std::net::IpAddr>,
}

impl Call {
    /// A call of `protocol`/`method` arriving now.
    pub fn new(protocol: &'static str, method: &'static str) -> Self {
        Self {
            protocol,
            method,
            started: Instant::now(),
            deadline: None,
            authorization: None,
            cert_identity: None,
            declared_device: None,
            peer: None,
        }
    }
}

impl Call {
    /// The span a request runs in (exported as a trace span with the `otlp` feature; its name is
    /// the method).
    pub fn span(&self, model: &str) -> tracing::Span {
        tracing::info_span!(
            "request",
            otel.name = self.method,
            protocol = self.protocol,
            model = %model
        )
    }
}

impl ServerState {
    /// Whether the server accepts inference now.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    /// Authenticates the caller.
    pub fn authenticate(&self, call: &Call) -> Result<Principal, ServeError> {
        self.auth
            .authenticate(call.authorization.as_deref(), call.cert_identity.as_deref())
    }

    /// Authenticates, admits (readiness, rate) and authorises the call for `model`, returning
    /// the entry serving `version` (empty: newest).
    pub fn admit(
        &self,
        call: &Call,
        model: &str,
        version: &str,
    ) -> Result<(Principal, Arc<ModelEntry>), ServeError> {
        let who = self.authenticate(call)?;
        if !self.is_ready() {
            return Err(ServeError::NotReady);
        }
        if let Some(rate) = &self.rate {
            // Authenticated identity, else the declared device id, else the client address.
            let key = match (who.device(), call.declared_device.as_deref(), call.peer) {
                (Some(d), _, _) | (None, Some(d), _) => d.to_string(),
                (None, None, Some(ip)) => ip.to_string(),
                (None, None, None) => "anonymous".to_string(),
            };
            if !rate.allow(&key) {
                return Err(ServeError::RateLimited(key));
            }
        }
        self.auth.authorize_model(&who, model)?;
        let entry = self.registry.get(model, version)?;
        Ok((who, entry))
    }

    /// Queues a decoded batch on the entry's worker and waits for the answer.
    pub async fn run(
        &self,
        call: &Call,
        entry: &ModelEntry,
        batch: InputBatch,
    ) -> Result<JobOutput, ServeError> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        entry
            .queue
            .submit(Job {
                x: batch.values,
                rows: batch.rows,
                deadline: call.deadline,
                enqueued: Instant::now(),
                reply: tx,
            })
            .map_err(|e| match e {
                SubmitError::Full => ServeError::Overloaded(entry.name.clone()),
                SubmitError::Closed => {
                    ServeError::Internal(format!("worker of `{}` stopped", entry.name))
                }
            })?;
        rx.await
            .map_err(|_| ServeError::Internal("worker dropped the job".into()))?
            .map_err(|e| match e {
                JobError::DeadlineExceeded => ServeError::Deadline,
                JobError::Compute(m) => ServeError::Internal(m),
            })
    }

    /// Records a finished call in the metrics (the one place requests are counted).
    pub fn record<T>(&self, call: &Call, model: &str, result: &Result<T, ServeError>) {
        let model = if model.is_empty() || self.registry.contains(model) {
            model
        } else {
            "_unknown"
        };
        let status = match result {
            Ok(_) => "ok",
            Err(e) => {
                if let Some(limit) = e.limit() {
                    self.metrics.rejected.with_label_values(&[limit]).inc();
                }
                code_label(e.code())
            }
        };
        self.metrics.observe(
            call.protocol,
            call.method,
            model,
            status,
            call.started.elapsed(),
        );
    }

    /// Refreshes the gauges that are read at scrape time and renders every metric.
    pub fn render_metrics(&self) -> String {
        self.metrics.queue_depth.reset();
        self.metrics.versions_loaded.reset();
        for (name, versions) in self.registry.snapshot() {
            let depth: usize = versions.iter().map(|e| e.queue.depth()).sum();
            self.metrics
                .queue_depth
                .with_label_values(&[&name])
                .set(depth as i64);
            self.metrics
                .versions_loaded
                .with_label_values(&[&name])
                .set(versions.len() as i64);
        }
        self.metrics.render()
    }
}
