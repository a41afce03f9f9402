//! `inference.GRPCInferenceService` (Open Inference Protocol v2 over gRPC) for every expert in
//! the repository. Inference shares the batching workers and limits with `offload.v1`.

use super::error::ServeError;
use super::grpc_call;
use super::state::{Call, ServerState};
use offload_proto::inference as pb;
use offload_shared::oip::{self, Outputs};
use std::sync::Arc;
use std::time::Duration;
use tonic::{Request, Response, Status};
use tracing::Instrument;

/// Name reported by ServerMetadata.
pub const SERVER_NAME: &str = "cloud-expert";

/// Protocol extensions reported by gRPC ServerMetadata.
pub const EXTENSIONS: &[&str] = &["binary_tensor_data"];

/// Protocol extensions reported by REST `GET /v2` (the repository API is REST-only).
pub const REST_EXTENSIONS: &[&str] = &["binary_tensor_data", "model_repository"];

/// The v2 gRPC service.
#[derive(Debug, Clone)]
pub struct OipService {
    /// Shared state.
    pub state: Arc<ServerState>,
}

/// A model's v2 metadata.
pub fn model_metadata(
    state: &ServerState,
    call: &Call,
    name: &str,
    version: &str,
) -> Result<pb::ModelMetadataResponse, ServeError> {
    let who = state.authenticate(call)?;
    state.auth.authorize_model(&who, name)?;
    let entry = state.registry.get(name, version)?;
    let versions = state.registry.versions(name);
    let mut input_shape = vec![-1i64];
    input_shape.extend(entry.expert.input_shape.iter().map(|&d| d as i64));
    let meta =
        |name: &str, datatype: &str, shape: Vec<i64>| pb::model_metadata_response::TensorMetadata {
            name: name.into(),
            datatype: datatype.into(),
            shape,
        };
    Ok(pb::ModelMetadataResponse {
        name: name.into(),
        versions,
        platform: "libtorch".into(),
        inputs: vec![meta(oip::INPUT, "FP32", input_shape)],
        outputs: vec![
            meta(
                oip::PROBS,
                "FP32",
                vec![-1, entry.expert.num_classes as i64],
            ),
            meta(oip::LABEL, "INT64", vec![-1]),
        ],
    })
}

/// Whether a model (version) is ready for this caller.
pub fn model_ready(
    state: &ServerState,
    call: &Call,
    name: &str,
    version: &str,
) -> Result<bool, ServeError> {
    let who = state.authenticate(call)?;
    state.auth.authorize_model(&who, name)?;
    Ok(state.is_ready() && state.registry.get(name, version).is_ok())
}

/// Reads the v2 `timeout` request parameter (microseconds).
fn timeout_param(req: &pb::ModelInferRequest) -> Option<Duration> {
    match req.parameters.get("timeout")?.parameter_choice.as_ref()? {
        pb::infer_parameter::ParameterChoice::Int64Param(us) if *us > 0 => {
            Some(Duration::from_micros(*us as u64))
        }
        pb::infer_parameter::ParameterChoice::Uint64Param(us) if *us > 0 => {
            Some(Duration::from_micros(*us))
        }
        _ => None,
    }
}

impl OipService {
    async fn infer(
        &self,
        call: &mut Call,
        r: pb::ModelInferRequest,
    ) -> Result<pb::ModelInferResponse, ServeError> {
        if let Some(d) = timeout_param(&r).and_then(|t| call.started.checked_add(t)) {
            call.deadline = Some(call.deadline.map_or(d, |c| c.min(d)));
        }
        let (_, entry) = self.state.admit(call, &r.model_name, &r.model_version)?;
        let _permit = self.state.permit()?;
        let batch = oip::grpc_input(&r, entry.feature_len(), self.state.max_rows)?;
        let rows = batch.rows;
        let out = self.state.run(call, &entry, batch).await?;
        let outputs = Outputs {
            rows,
            num_classes: out.num_classes,
            probs: out.probs,
        };
        Ok(oip::grpc_response(
            &r,
            &entry.name,
            &entry.version,
            &outputs,
        )?)
    }
}

#[tonic::async_trait]
impl pb::grpc_inference_service_server::GrpcInferenceService for OipService {
    async fn server_live(
        &self,
        _: Request<pb::ServerLiveRequest>,
    ) -> Result<Response<pb::ServerLiveResponse>, Status> {
        Ok(Response::new(pb::ServerLiveResponse { live: true }))
    }

    async fn server_ready(
        &self,
        _: Request<pb::ServerReadyRequest>,
    ) -> Result<Response<pb::ServerReadyResponse>, Status> {
        Ok(Response::new(pb::ServerReadyResponse {
            ready: self.state.is_ready(),
        }))
    }

    async fn model_ready(
        &self,
        req: Request<pb::ModelReadyRequest>,
    ) -> Result<Response<pb::ModelReadyResponse>, Status> {
        let call = grpc_call(&req, "v2-grpc", "ModelReady");
        let r = req.into_inner();
        let result = model_ready(&self.state, &call, &r.name, &r.version);
        self.state.record(&call, &r.name, &result);
        result
            .map(|ready| Response::new(pb::ModelReadyResponse { ready }))
            .map_err(ServeError::into_status)
    }

    async fn server_metadata(
        &self,
        _: Request<pb::ServerMetadataRequest>,
    ) -> Result<Response<pb::ServerMetadataResponse>, Status> {
        Ok(Response::new(pb::ServerMetadataResponse {
            name: SERVER_NAME.into(),
            version: env!("CARGO_PKG_VERSION").into(),
            extensions: EXTENSIONS.iter().map(|e| e.to_string()).collect(),
        }))
    }

    async fn model_metadata(
        &self,
        req: Request<pb::ModelMetadataRequest>,
    ) -> Result<Response<pb::ModelMetadataResponse>, Status> {
        let call = grpc_call(&req, "v2-grpc", "ModelMetadata");
        let r = req.into_inner();
        let result = model_metadata(&self.state, &call, &r.name, &r.version);
        self.state.record(&call, &r.name, &result);
        result.map(Response::new).map_err(ServeError::into_status)
    }

    async fn model_infer(
        &self,
        req: Request<pb::ModelInferRequest>,
    ) -> Result<Response<pb::ModelInferResponse>, Status> {
        let mut call = grpc_call(&req, "v2-grpc", "ModelInfer");
        let r = req.into_inner();
        let model = r.model_name.clone();
        let span = call.span(&model);
        let recorder = self.state.recorder(&call, &model);
        let result = self.infer(&mut call, r).instrument(span).await;
        recorder.finish(&result);
        result.map(Response::new).map_err(ServeError::into_status)
    }
}
