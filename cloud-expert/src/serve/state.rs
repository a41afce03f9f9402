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
    /// Permits for requests being decoded or computed (`--max-in-flight`): bounds the memory
    /// requests can hold before the per-model queues apply.
    pub in_flight: Arc<tokio::sync::Semaphore>,
    /// The `in_flight` capacity.
    pub max_in_flight: usize,
    /// Telemetry reports already added (resends after a lost ack count once).
    pub telemetry_seen: super::limits::ReportDedup,
    /// Serialises `/metrics` rendering (the scrape-time gauges are reset and refilled).
    pub render_lock: std::sync::Mutex<()>,
}

/// Records a call when finished, or as `cancelled` if the handler is dropped first (client
/// went away, or tonic's `grpc-timeout` fired).
#[derive(Debug)]
pub struct Recorder<'a> {
    state: &'a ServerState,
    protocol: &'static str,
    method: &'static str,
    started: Instant,
    model: String,
    done: bool,
}

impl Recorder<'_> {
    /// Records the result.
    pub fn finish<T>(mut self, result: &Result<T, ServeError>) {
        let status = self.state.status_of(result);
        self.state.observe_status(
            self.protocol,
            self.method,
            self.started,
            &self.model,
            status,
        );
        self.done = true;
    }
}

impl Drop for Recorder<'_> {
    fn drop(&mut self) {
        if !self.done {
            self.state.observe_status(
                self.protocol,
                self.method,
                self.started,
                &self.model,
                "cancelled",
            );
        }
    }
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
    /// A recorder for `call` on `model`.
    pub fn recorder(&self, call: &Call, model: &str) -> Recorder<'_> {
        Recorder {
            state: self,
            protocol: call.protocol,
            method: call.method,
            started: call.started,
            model: model.to_string(),
            done: false,
        }
    }

    /// Takes an in-flight permit or refuses at once (load shedding, never queueing).
    pub fn permit(&self) -> Result<tokio::sync::OwnedSemaphorePermit, ServeError> {
        self.in_flight
            .clone()
            .try_acquire_owned()
            .map_err(|_| ServeError::TooBusy(self.max_in_flight))
    }

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
            // The authenticated identity, else the client address: a declared device id is
            // client-chosen, so rotating it must not buy fresh buckets.
            let key = match (who.device(), call.peer) {
                (Some(d), _) => d.to_string(),
                (None, Some(ip)) => ip.to_string(),
                (None, None) => "anonymous".to_string(),
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
        let status = self.status_of(result);
        self.observe_status(call.protocol, call.method, call.started, model, status);
    }

    /// The status label of a result; a refusal for a limit also counts in `cloud_rejected_total`.
    fn status_of<T>(&self, result: &Result<T, ServeError>) -> &'static str {
        match result {
            Ok(_) => "ok",
            Err(e) => {
                if let Some(limit) = e.limit() {
                    self.metrics.rejected.with_label_values(&[limit]).inc();
                }
                code_label(e.code())
            }
        }
    }

    fn observe_status(
        &self,
        protocol: &str,
        method: &str,
        started: Instant,
        model: &str,
        status: &str,
    ) {
        // Only served model names become labels (bounded cardinality).
        let model = if model.is_empty() || self.registry.contains(model) {
            model
        } else {
            "_unknown"
        };
        self.metrics
            .observe(protocol, method, model, status, started.elapsed());
    }

    /// Refreshes the gauges that are read at scrape time and renders every metric.
    pub fn render_metrics(&self) -> String {
        let _serial = self.render_lock.lock().unwrap_or_else(|p| p.into_inner());
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
