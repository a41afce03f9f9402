//! The gRPC services: `offload.v1.Expert` (answers offloaded inputs through the batching
//! workers) and `offload.v1.ModelSync` (rejector bundles for devices). Errors are mapped to gRPC
//! statuses in exactly one place, [`ServeError::into_status`].

use super::batcher::{Job, JobError, SubmitError};
use super::registry::Registry;
use offload_proto::v1 as pb;
use offload_shared::wire::{decode_input, WireError};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tonic::{Request, Response, Status};

/// Why a request failed.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// Malformed or unusable input.
    #[error(transparent)]
    Input(#[from] WireError),
    /// Unknown model or version.
    #[error("{0}")]
    NotFound(String),
    /// The bundle is not for the caller's legacy model.
    #[error("{0}")]
    Precondition(String),
    /// The model's queue is full.
    #[error("model `{0}` is overloaded (queue full); retry later or answer locally")]
    Overloaded(String),
    /// The client deadline passed before compute.
    #[error("deadline exceeded before the expert ran")]
    Deadline,
    /// Anything else; details are logged, not sent.
    #[error("internal error")]
    Internal(String),
}

impl ServeError {
    /// The single mapping from errors to gRPC statuses.
    pub fn into_status(self) -> Status {
        match self {
            ServeError::Input(e) => Status::invalid_argument(e.to_string()),
            ServeError::NotFound(m) => Status::not_found(m),
            ServeError::Precondition(m) => Status::failed_precondition(m),
            ServeError::Overloaded(_) => Status::resource_exhausted(self.to_string()),
            ServeError::Deadline => Status::deadline_exceeded(self.to_string()),
            ServeError::Internal(detail) => {
                tracing::error!(%detail, "internal error");
                Status::internal("internal error")
            }
        }
    }
}

/// Reads the client's `grpc-timeout` header (e.g. `100m`, `5S`) as a duration.
fn grpc_timeout<T>(req: &Request<T>) -> Option<Duration> {
    let v = req.metadata().get("grpc-timeout")?.to_str().ok()?;
    let (num, unit) = v.split_at(v.len().checked_sub(1)?);
    let n: u64 = num.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n * 3600),
        "M" => Duration::from_secs(n * 60),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

/// `offload.v1.Expert`.
#[derive(Debug, Clone)]
pub struct ExpertService {
    /// Served models.
    pub registry: Arc<Registry>,
    /// Most rows one request may carry.
    pub max_rows: usize,
}

impl ExpertService {
    async fn infer_inner(
        &self,
        req: Request<pb::InferRequest>,
    ) -> Result<pb::InferResponse, ServeError> {
        let received = Instant::now();
        let deadline = grpc_timeout(&req).map(|t| received + t);
        let r = req.into_inner();
        let entry = self.registry.models.get(&r.model).ok_or_else(|| {
            ServeError::NotFound(format!("field `model`: no model named `{}`", r.model))
        })?;
        if !r.version.is_empty() && r.version != entry.version {
            return Err(ServeError::NotFound(format!(
                "field `version`: model `{}` serves version {}, not {}",
                r.model, entry.version, r.version
            )));
        }
        let d: usize = entry.expert.input_shape.iter().product();
        let batch = decode_input(r.input.as_ref(), d, self.max_rows)?;
        let (tx, rx) = tokio::sync::oneshot::channel();
        entry
            .queue
            .submit(Job {
                x: batch.values,
                rows: batch.rows,
                deadline,
                enqueued: Instant::now(),
                reply: tx,
            })
            .map_err(|e| match e {
                SubmitError::Full => ServeError::Overloaded(r.model.clone()),
                SubmitError::Closed => {
                    ServeError::Internal(format!("worker of `{}` stopped", r.model))
                }
            })?;
        let out = rx
            .await
            .map_err(|_| ServeError::Internal("worker dropped the job".into()))?
            .map_err(|e| match e {
                JobError::DeadlineExceeded => ServeError::Deadline,
                JobError::Compute(m) => ServeError::Internal(m),
            })?;
        let labels = out
            .probs
            .chunks(out.num_classes)
            .map(|row| offload_shared::legacy::argmax(row) as u32)
            .collect();
        tracing::debug!(model = %r.model, request_id = %r.request_id, device = %r.device_id, score = r.rejector_score, batch = out.batch_size, "infer");
        Ok(pb::InferResponse {
            request_id: r.request_id,
            labels,
            probabilities: out.probs,
            num_classes: out.num_classes as u32,
            expert_version: entry.version.clone(),
            timing: Some(pb::ServerTiming {
                queue_us: out.queue_us,
                compute_us: out.compute_us,
                total_us: received.elapsed().as_micros() as u64,
                batch_size: out.batch_size,
            }),
        })
    }
}

#[tonic::async_trait]
impl pb::expert_server::Expert for ExpertService {
    async fn infer(
        &self,
        req: Request<pb::InferRequest>,
    ) -> Result<Response<pb::InferResponse>, Status> {
        self.infer_inner(req)
            .await
            .map(Response::new)
            .map_err(ServeError::into_status)
    }
}

/// `offload.v1.ModelSync`.
#[derive(Debug, Clone)]
pub struct SyncService {
    /// Served models.
    pub registry: Arc<Registry>,
}

impl SyncService {
    fn bundle(&self, r: pb::BundleRequest) -> Result<pb::RejectorBundle, ServeError> {
        let e = self.registry.models.get(&r.model).ok_or_else(|| {
            ServeError::NotFound(format!("field `model`: no model named `{}`", r.model))
        })?;
        let meta = &e.rejector;
        if !r.legacy_sha256.is_empty() && r.legacy_sha256 != meta.legacy_sha256 {
            return Err(ServeError::Precondition(format!(
                "field `legacy_sha256`: the rejector of `{}` was trained for legacy model {}, not {}",
                r.model, meta.legacy_sha256, r.legacy_sha256
            )));
        }
        let unchanged = r.current_version == e.version;
        Ok(pb::RejectorBundle {
            model: e.name.clone(),
            version: e.version.clone(),
            onnx: if unchanged {
                Vec::new()
            } else {
                e.rejector_onnx.as_ref().clone()
            },
            sha256: e.rejector_sha256.clone(),
            kind: match meta.kind {
                offload_shared::rejector::RejectorKind::Score => pb::RejectorKind::Score as i32,
                offload_shared::rejector::RejectorKind::PlugIn => pb::RejectorKind::Plugin as i32,
            },
            threshold: meta.threshold,
            score_quantiles: meta
                .score_quantiles
                .iter()
                .map(|&(level, value)| pb::Quantile { level, value })
                .collect(),
            costs: Some(pb::Costs {
                c1: meta.costs.c1,
                ce: meta.costs.ce,
            }),
            expert_version: meta.expert_version.clone(),
            legacy_sha256: meta.legacy_sha256.clone(),
            unchanged,
            uses_legacy_probs: meta.uses_legacy_probs,
        })
    }
}

#[tonic::async_trait]
impl pb::model_sync_server::ModelSync for SyncService {
    async fn get_rejector_bundle(
        &self,
        req: Request<pb::BundleRequest>,
    ) -> Result<Response<pb::RejectorBundle>, Status> {
        self.bundle(req.into_inner())
            .map(Response::new)
            .map_err(ServeError::into_status)
    }
}
