//! The `offload.v1` gRPC services: Expert (answers offloaded inputs through the shared
//! inference path), ModelSync (rejector bundles for devices) and Telemetry (fleet counters).

use super::error::ServeError;
use super::grpc_call;
use super::state::ServerState;
use offload_proto::v1 as pb;
use offload_shared::wire::decode_input;
use std::sync::Arc;
use tonic::{Request, Response, Status};
use tracing::Instrument;

/// `offload.v1.Expert`.
#[derive(Debug, Clone)]
pub struct ExpertService {
    /// Shared state.
    pub state: Arc<ServerState>,
}

impl ExpertService {
    async fn infer_inner(
        &self,
        call: &super::state::Call,
        r: pb::InferRequest,
    ) -> Result<pb::InferResponse, ServeError> {
        let (_, entry) = self.state.admit(call, &r.model, &r.version)?;
        let _permit = self.state.permit()?;
        let batch = decode_input(r.input.as_ref(), entry.feature_len(), self.state.max_rows)?;
        let out = self.state.run(call, &entry, batch).await?;
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
                total_us: call.started.elapsed().as_micros() as u64,
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
        let call = grpc_call(&req, "offload", "Infer");
        let r = req.into_inner();
        let model = r.model.clone();
        let result = self
            .infer_inner(&call, r)
            .instrument(call.span(&model))
            .await;
        self.state.record(&call, &model, &result);
        result.map(Response::new).map_err(ServeError::into_status)
    }
}

/// `offload.v1.ModelSync`.
#[derive(Debug, Clone)]
pub struct SyncService {
    /// Shared state.
    pub state: Arc<ServerState>,
}

impl SyncService {
    fn bundle(
        &self,
        call: &super::state::Call,
        r: &pb::BundleRequest,
    ) -> Result<pb::RejectorBundle, ServeError> {
        let who = self.state.authenticate(call)?;
        self.state.auth.authorize_model(&who, &r.model)?;
        // The newest served version: its expert is served for as long as the bundle is.
        let e = self.state.registry.get(&r.model, "")?;
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
        let call = grpc_call(&req, "offload", "GetRejectorBundle");
        let r = req.into_inner();
        let result = self.bundle(&call, &r);
        self.state.record(&call, &r.model, &result);
        result.map(Response::new).map_err(ServeError::into_status)
    }
}

/// `offload.v1.Telemetry`.
#[derive(Debug, Clone)]
pub struct TelemetryService {
    /// Shared state.
    pub state: Arc<ServerState>,
}

impl TelemetryService {
    fn report(
        &self,
        call: &super::state::Call,
        r: &pb::TelemetryReport,
    ) -> Result<pb::TelemetryAck, ServeError> {
        let who = self.state.authenticate(call)?;
        if let Some(id) = who.device() {
            if id != r.device_id {
                return Err(ServeError::Forbidden(format!(
                    "field `device_id`: device `{id}` cannot report for `{}`",
                    r.device_id
                )));
            }
        }
        self.state.auth.authorize_model(&who, &r.model)?;
        if !self.state.registry.contains(&r.model) {
            return Err(ServeError::NotFound(format!(
                "field `model`: no model named `{}`",
                r.model
            )));
        }
        if r.sequence > 0
            && !self
                .state
                .telemetry_seen
                .first_time(&r.device_id, r.instance, r.sequence)
        {
            return Ok(pb::TelemetryAck {
                accepted: true,
                duplicate: true,
            });
        }
        let fleet = &self.state.metrics.fleet;
        fleet
            .with_label_values(&[&r.model, "local"])
            .inc_by(r.local);
        fleet
            .with_label_values(&[&r.model, "offloaded"])
            .inc_by(r.offloaded);
        fleet
            .with_label_values(&[&r.model, "fallback"])
            .inc_by(r.fallback);
        tracing::debug!(device = %r.device_id, model = %r.model, local = r.local, offloaded = r.offloaded, fallback = r.fallback, bundle = %r.bundle_version, "telemetry");
        Ok(pb::TelemetryAck {
            accepted: true,
            duplicate: false,
        })
    }
}

#[tonic::async_trait]
impl pb::telemetry_server::Telemetry for TelemetryService {
    async fn report(
        &self,
        req: Request<pb::TelemetryReport>,
    ) -> Result<Response<pb::TelemetryAck>, Status> {
        let call = grpc_call(&req, "offload", "Report");
        let r = req.into_inner();
        let result = self.report(&call, &r);
        self.state.record(&call, &r.model, &result);
        result.map(Response::new).map_err(ServeError::into_status)
    }
}
