//! The device runtime: for each input, run m and r off the async runtime, apply the policy,
//! offload with a deadline when chosen, and fall back to m on any failure. The rejector bundle
//! can be swapped atomically at any time by the sync loop.

use crate::breaker::CircuitBreaker;
use crate::bundle::{Bundle, BundleError};
use crate::client::{Offload, OffloadClient};
use crate::policy::{BundleRule, Policy, PolicyConfig, Verdict};
use crate::stats::{Source, Stats};
use offload_shared::engine::EngineError;
use offload_shared::legacy::{argmax, LegacyModel};
use offload_shared::rejector::decision_score;
use serde::Serialize;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

/// Runtime settings of a device.
#[derive(Debug, Clone)]
pub struct EdgeSettings {
    /// Model name in the cloud repository.
    pub model: String,
    /// Deadline of one offload.
    pub deadline: Duration,
    /// Consecutive failures that open the circuit breaker.
    pub breaker_failures: u32,
    /// How long the breaker stays open before probing.
    pub breaker_backoff: Duration,
    /// Decision policy.
    pub policy: PolicyConfig,
    /// Where the last good bundle is kept (None: not persisted).
    pub bundle_cache: Option<PathBuf>,
}

/// One answered input.
#[derive(Debug, Clone, Serialize)]
pub struct Answer {
    /// Caller's id for the input.
    pub id: String,
    /// Predicted class.
    pub label: u32,
    /// Who answered.
    pub source: Source,
    /// The rejector's decision score.
    pub score: f32,
    /// Time for m + r, microseconds.
    pub local_latency_us: u64,
    /// Round trip of the offload, microseconds (when tried).
    pub remote_latency_us: Option<u64>,
    /// Total time to answer, microseconds.
    pub total_latency_us: u64,
    /// Legacy model version (first 12 hex digits of its sha256).
    pub m_version: String,
    /// Rejector version.
    pub r_version: String,
    /// Expert version (when the expert answered).
    pub e_version: Option<String>,
    /// Why an offload fell back (deadline, unavailable, overloaded, circuit open, ...).
    pub fallback_reason: Option<String>,
}

/// The device state shared by all requests.
#[derive(Debug)]
pub struct Edge {
    /// The legacy model.
    legacy: LegacyModel,
    /// Current rejector bundle (swapped whole).
    bundle: RwLock<Arc<Bundle>>,
    /// Decision policy state.
    policy: Mutex<Policy>,
    /// Offload circuit breaker.
    breaker: Mutex<CircuitBreaker>,
    /// Cloud connection (None: local-only device).
    client: Option<OffloadClient>,
    /// Settings.
    settings: EdgeSettings,
    /// Counters.
    stats: Mutex<Stats>,
    /// Telemetry state: what the cloud has acknowledged and the report awaiting an ack.
    reported: tokio::sync::Mutex<Reported>,
}

/// m and r's verdict on one input.
#[derive(Debug, Clone)]
struct LocalDecision {
    label: u32,
    score: f32,
    verdict: Verdict,
    bundle: Arc<Bundle>,
    elapsed: Duration,
}

/// Telemetry bookkeeping. Invariant: `pending`, once built, is resent unchanged (same sequence,
/// same counts) until acknowledged, so the server can drop a resend whose first ack was lost.
#[derive(Debug)]
struct Reported {
    /// Random id of this process's report sequence.
    instance: u64,
    /// [local, remote, fallback] totals the cloud has acknowledged.
    acked: [u64; 3],
    /// Sequence number of the next new report.
    next_sequence: u64,
    /// (sequence, deltas, totals) of the report awaiting an ack.
    pending: Option<(u64, [u64; 3], [u64; 3])>,
}

impl Reported {
    fn new() -> Self {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        Self {
            instance: nanos ^ ((std::process::id() as u64) << 32),
            acked: [0; 3],
            next_sequence: 1,
            pending: None,
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Edge {
    /// A device with its legacy model, an initial (verified) bundle and an optional cloud client.
    pub fn new(
        legacy: LegacyModel,
        bundle: Bundle,
        client: Option<OffloadClient>,
        settings: EdgeSettings,
    ) -> Self {
        Self {
            legacy,
            bundle: RwLock::new(Arc::new(bundle)),
            policy: Mutex::new(Policy::new(settings.policy.clone())),
            breaker: Mutex::new(CircuitBreaker::new(
                settings.breaker_failures,
                settings.breaker_backoff,
            )),
            client,
            settings,
            stats: Mutex::new(Stats::default()),
            reported: tokio::sync::Mutex::new(Reported::new()),
        }
    }

    /// Whether a cloud is configured.
    pub fn has_cloud(&self) -> bool {
        self.client.is_some()
    }

    /// Sends the answer counts since the last acknowledged report to the cloud. A report is
    /// resent unchanged until acknowledged (see [`Reported`]), so no answer is lost or counted
    /// twice; counts gathered meanwhile go into the next report.
    pub async fn report_telemetry(&self, deadline: Duration) -> Result<(), String> {
        let client = self.client.as_ref().ok_or("no cloud configured")?;
        let mut rep = self.reported.lock().await;
        if rep.pending.is_none() {
            let now = {
                let s = lock(&self.stats);
                [s.local, s.remote, s.fallback]
            };
            let delta = [0, 1, 2].map(|i| now[i] - rep.acked[i]);
            if delta == [0; 3] {
                return Ok(());
            }
            rep.pending = Some((rep.next_sequence, delta, now));
            rep.next_sequence += 1;
        }
        let Some((sequence, delta, totals)) = rep.pending else {
            return Ok(());
        };
        let version = self.bundle().meta.version.clone();
        client
            .report(
                &self.settings.model,
                delta,
                &version,
                (rep.instance, sequence),
                deadline,
            )
            .await
            .map_err(|s| format!("{:?}: {}", s.code(), s.message()))?;
        rep.acked = totals;
        rep.pending = None;
        Ok(())
    }

    /// Prometheus text exposition of the device's counters.
    pub fn render_metrics(&self) -> String {
        let s = self.stats();
        let model = &self.settings.model;
        let mut out = String::new();
        out.push_str("# HELP edge_answers_total Answers by source (local: m by the rejector's choice, remote: cloud expert, fallback: m after a failed offload).\n# TYPE edge_answers_total counter\n");
        for (source, v) in [
            ("local", s.local),
            ("remote", s.remote),
            ("fallback", s.fallback),
        ] {
            out.push_str(&format!(
                "edge_answers_total{{model=\"{model}\",source=\"{source}\"}} {v}\n"
            ));
        }
        out.push_str(&format!("# HELP edge_budget_refused_total Offloads refused by the budget.\n# TYPE edge_budget_refused_total counter\nedge_budget_refused_total{{model=\"{model}\"}} {}\n", s.budget_refused));
        out.push_str(&format!("# HELP edge_offload_rate Fraction of answers the rejector offloaded.\n# TYPE edge_offload_rate gauge\nedge_offload_rate{{model=\"{model}\"}} {}\n", s.offload_rate));
        for (q, v) in [("0.5", s.latency_p50_us), ("0.99", s.latency_p99_us)] {
            if let Some(v) = v {
                out.push_str(&format!(
                    "edge_latency_microseconds{{model=\"{model}\",quantile=\"{q}\"}} {v}\n"
                ));
            }
        }
        out.push_str(&format!("# HELP edge_bundle_info Rejector bundle in use.\n# TYPE edge_bundle_info gauge\nedge_bundle_info{{model=\"{model}\",version=\"{}\"}} 1\n", self.bundle().meta.version));
        out
    }

    /// The current bundle.
    pub fn bundle(&self) -> Arc<Bundle> {
        self.bundle
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The policy settings in force.
    pub fn policy_config(&self) -> PolicyConfig {
        lock(&self.policy).config().clone()
    }

    /// Replaces the policy settings live (e.g. a new c_e).
    pub fn set_policy(&self, cfg: PolicyConfig) {
        lock(&self.policy).set_config(cfg);
    }

    /// Counters snapshot.
    pub fn stats(&self) -> crate::stats::Summary {
        lock(&self.stats).summary()
    }

    /// Values per input the legacy model takes.
    pub fn feature_len(&self) -> usize {
        self.legacy.input_shape().iter().product()
    }

    fn decide_local(&self, x: &[f32]) -> Result<LocalDecision, EngineError> {
        let t0 = Instant::now();
        let bundle = self.bundle();
        let probs = self.legacy.predict_proba(x, 1)?;
        let out = bundle.rejector.outputs(x, &probs, 1)?;
        let meta = &bundle.meta;
        let score = decision_score(meta.kind, &out, meta.costs.c1);
        let rule = BundleRule {
            kind: meta.kind,
            threshold: meta.threshold,
            ce: meta.costs.ce,
            quantiles: &meta.score_quantiles,
        };
        let verdict = lock(&self.policy).decide(score, rule, Instant::now());
        Ok(LocalDecision {
            label: argmax(&probs) as u32,
            score,
            verdict,
            elapsed: t0.elapsed(),
            bundle,
        })
    }

    /// Answers one input. Never fails because of the cloud: any offload error answers with m.
    pub async fn answer(
        self: &Arc<Self>,
        id: String,
        x: Vec<f32>,
        truth: Option<u32>,
    ) -> Result<Answer, EngineError> {
        let t0 = Instant::now();
        let me = self.clone();
        let (local, x) = tokio::task::spawn_blocking(move || me.decide_local(&x).map(|d| (d, x)))
            .await
            .map_err(|e| EngineError::Run {
                model: "edge".into(),
                reason: e.to_string(),
            })??;
        let meta = &local.bundle.meta;
        let mut answer = Answer {
            id,
            label: local.label,
            source: Source::Local,
            score: local.score,
            local_latency_us: local.elapsed.as_micros() as u64,
            remote_latency_us: None,
            total_latency_us: 0,
            m_version: self.legacy.sha256()[..12].to_string(),
            r_version: meta.version.clone(),
            e_version: None,
            fallback_reason: None,
        };
        match local.verdict {
            Verdict::Local => {}
            Verdict::BudgetExhausted => lock(&self.stats).budget_refused += 1,
            Verdict::Offload => self.offload(&mut answer, &local, &x).await,
        }
        answer.total_latency_us = t0.elapsed().as_micros() as u64;
        lock(&self.stats).record(
            answer.source,
            answer.total_latency_us,
            truth.map(|t| t == answer.label),
        );
        Ok(answer)
    }

    async fn offload(&self, answer: &mut Answer, local: &LocalDecision, x: &[f32]) {
        answer.source = Source::Fallback;
        let Some(client) = &self.client else {
            answer.fallback_reason = Some("no cloud configured".into());
            return;
        };
        if !lock(&self.breaker).allow(Instant::now()) {
            answer.fallback_reason = Some("circuit open".into());
            return;
        }
        let mut shape = vec![1];
        shape.extend_from_slice(self.legacy.input_shape());
        let meta = &local.bundle.meta;
        let t = Instant::now();
        let offload = Offload {
            model: &self.settings.model,
            version: &meta.expert_version,
            request_id: &answer.id,
            x,
            shape: &shape,
            score: local.score,
        };
        let res = client.infer(offload, self.settings.deadline).await;
        let rtt = t.elapsed();
        answer.remote_latency_us = Some(rtt.as_micros() as u64);
        match res {
            Ok(r) => {
                lock(&self.breaker).success();
                lock(&self.policy).observe_rtt(rtt);
                answer.label = r.label;
                answer.source = Source::Remote;
                answer.e_version = Some(r.expert_version);
            }
            Err(status) => {
                lock(&self.breaker).failure(Instant::now());
                answer.fallback_reason = Some(format!("{:?}: {}", status.code(), status.message()));
            }
        }
    }

    /// Asks the cloud for the current bundle; verifies, persists and swaps it in when it is new.
    /// Returns whether the bundle changed. On any error the current bundle stays.
    pub async fn sync_bundle(&self, deadline: Duration) -> Result<bool, SyncError> {
        let client = self.client.as_ref().ok_or(SyncError::NoCloud)?;
        let current = self.bundle();
        let reply = client
            .bundle(
                &self.settings.model,
                self.legacy.sha256(),
                &current.meta.version,
                deadline,
            )
            .await
            .map_err(|s| SyncError::Rpc(format!("{:?}: {}", s.code(), s.message())))?;
        if reply.unchanged {
            return Ok(false);
        }
        let fresh = Bundle::from_proto(reply, self.legacy.sha256())?;
        if fresh.meta.version == current.meta.version && fresh.meta.sha256 == current.meta.sha256 {
            return Ok(false);
        }
        if let Some(dir) = &self.settings.bundle_cache {
            fresh.save(dir)?;
        }
        tracing::info!(from = %current.meta.version, to = %fresh.meta.version, "rejector bundle swapped");
        *self.bundle.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(fresh);
        Ok(true)
    }
}

/// Why a bundle sync did not install anything.
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    /// The device has no cloud address.
    #[error("no cloud configured")]
    NoCloud,
    /// The RPC failed.
    #[error("bundle request failed: {0}")]
    Rpc(String),
    /// The bundle was refused.
    #[error(transparent)]
    Bundle(#[from] BundleError),
}
