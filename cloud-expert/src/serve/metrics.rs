//! Prometheus metrics of the server, rendered as text at `/metrics`.
//!
//! Label sets are bounded: `model` only takes names of models in the repository (unknown names
//! are recorded as `_unknown`), `method` and `status` come from fixed lists, and device ids are
//! never labels (the fleet counters are per model).

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry, TextEncoder,
};

/// Every metric the server exports.
#[derive(Debug, Clone)]
pub struct Metrics {
    /// The registry they are rendered from.
    registry: Registry,
    /// Requests by protocol, method, model and status.
    pub requests: IntCounterVec,
    /// Request latency in seconds by protocol, method and model.
    pub latency: HistogramVec,
    /// Rows per executed batch, by model.
    pub batch_rows: HistogramVec,
    /// Requests per executed batch, by model.
    pub batch_requests: HistogramVec,
    /// Jobs waiting in each model's queue (set at scrape time).
    pub queue_depth: IntGaugeVec,
    /// Requests refused because a limit was hit, by limit.
    pub rejected: IntCounterVec,
    /// Answers reported by devices, by model and kind (local, offloaded, fallback).
    pub fleet: IntCounterVec,
    /// Model version loads by model and result (ok, failed, retired).
    pub model_loads: IntCounterVec,
    /// Loaded versions per model (set at scrape time).
    pub versions_loaded: IntGaugeVec,
}

/// Latency buckets from 50 us to 5 s.
const LATENCY_BUCKETS: &[f64] = &[
    50e-6, 100e-6, 200e-6, 400e-6, 800e-6, 1.6e-3, 3.2e-3, 6.4e-3, 12.8e-3, 25.6e-3, 51.2e-3,
    102.4e-3, 204.8e-3, 409.6e-3, 1.0, 2.0, 5.0,
];

/// Batch size buckets (powers of two up to 1024).
const BATCH_BUCKETS: &[f64] = &[
    1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0,
];

impl Metrics {
    /// Creates and registers every metric.
    pub fn new() -> Self {
        let registry = Registry::new();
        let counter = |name: &str, help: &str, labels: &[&str]| {
            let c = IntCounterVec::new(Opts::new(name, help), labels).expect("static metric");
            registry.register(Box::new(c.clone())).expect("unique");
            c
        };
        let gauge = |name: &str, help: &str, labels: &[&str]| {
            let g = IntGaugeVec::new(Opts::new(name, help), labels).expect("static metric");
            registry.register(Box::new(g.clone())).expect("unique");
            g
        };
        let histogram = |name: &str, help: &str, labels: &[&str], buckets: &[f64]| {
            let h = HistogramVec::new(
                HistogramOpts::new(name, help).buckets(buckets.to_vec()),
                labels,
            )
            .expect("static metric");
            registry.register(Box::new(h.clone())).expect("unique");
            h
        };
        Self {
            requests: counter(
                "cloud_requests_total",
                "Requests by protocol, method, model and status.",
                &["protocol", "method", "model", "status"],
            ),
            latency: histogram(
                "cloud_request_duration_seconds",
                "Request latency inside the server.",
                &["protocol", "method", "model"],
                LATENCY_BUCKETS,
            ),
            batch_rows: histogram(
                "cloud_batch_rows",
                "Rows per forward pass.",
                &["model"],
                BATCH_BUCKETS,
            ),
            batch_requests: histogram(
                "cloud_batch_requests",
                "Requests merged into one forward pass.",
                &["model"],
                BATCH_BUCKETS,
            ),
            queue_depth: gauge(
                "cloud_queue_depth",
                "Requests waiting in a model's queue.",
                &["model"],
            ),
            rejected: counter(
                "cloud_rejected_total",
                "Requests refused because a limit was hit (message_size, batch_rows, queue_full, rate).",
                &["limit"],
            ),
            fleet: counter(
                "fleet_answers_total",
                "Answers reported by devices through offload.v1.Telemetry, by kind.",
                &["model", "kind"],
            ),
            model_loads: counter(
                "cloud_model_loads_total",
                "Model version loads and retirements by result.",
                &["model", "result"],
            ),
            versions_loaded: gauge(
                "cloud_model_versions_loaded",
                "Versions of each model currently served.",
                &["model"],
            ),
            registry,
        }
    }

    /// The registry (for metrics registered by other parts of the server).
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Records one finished request.
    pub fn observe(
        &self,
        protocol: &str,
        method: &str,
        model: &str,
        status: &str,
        elapsed: std::time::Duration,
    ) {
        self.requests
            .with_label_values(&[protocol, method, model, status])
            .inc();
        self.latency
            .with_label_values(&[protocol, method, model])
            .observe(elapsed.as_secs_f64());
    }

    /// Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        // Encoding into a Vec cannot fail for well-formed metric families.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        String::from_utf8(buf).unwrap_or_default()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
