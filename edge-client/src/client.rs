//! `OffloadClient`: a small hand-written wrapper over the generated `offload.v1` stubs, one
//! method per RPC, each with a deadline.

use offload_proto::v1 as pb;
use offload_shared::wire::encode_f32;
use std::time::Duration;
use tonic::transport::{Channel, Endpoint};

/// The device's connection to the cloud. Cheap to clone (one shared HTTP/2 channel).
#[derive(Debug, Clone)]
pub struct OffloadClient {
    /// Expert stub.
    expert: pb::expert_client::ExpertClient<Channel>,
    /// ModelSync stub.
    sync: pb::model_sync_client::ModelSyncClient<Channel>,
    /// This device's id (sent with every request).
    device_id: String,
}

/// One input to offload.
#[derive(Debug, Clone, Copy)]
pub struct Offload<'a> {
    /// Model name.
    pub model: &'a str,
    /// Expert version the rejector is pinned to.
    pub version: &'a str,
    /// Id for log correlation.
    pub request_id: &'a str,
    /// Raw features.
    pub x: &'a [f32],
    /// Shape including the batch dimension 1.
    pub shape: &'a [usize],
    /// The rejector's score.
    pub score: f32,
}

/// The cloud's answer to one input.
#[derive(Debug, Clone)]
pub struct Remote {
    /// Predicted class.
    pub label: u32,
    /// Class probabilities.
    pub probabilities: Vec<f32>,
    /// Expert version that answered.
    pub expert_version: String,
}

impl OffloadClient {
    /// A lazily connecting client: no network traffic until the first call, so a device starts
    /// while the cloud is down; reconnects happen transparently.
    pub fn new(
        url: &str,
        device_id: &str,
        connect_timeout: Duration,
    ) -> Result<Self, tonic::transport::Error> {
        let channel = Endpoint::from_shared(url.to_string())?
            .connect_timeout(connect_timeout)
            .tcp_nodelay(true)
            .connect_lazy();
        Ok(Self {
            expert: pb::expert_client::ExpertClient::new(channel.clone()),
            sync: pb::model_sync_client::ModelSyncClient::new(channel),
            device_id: device_id.into(),
        })
    }

    /// Offloads one input within `deadline`.
    pub async fn infer(&self, o: Offload<'_>, deadline: Duration) -> Result<Remote, tonic::Status> {
        let mut req = tonic::Request::new(pb::InferRequest {
            model: o.model.into(),
            version: o.version.into(),
            request_id: o.request_id.into(),
            device_id: self.device_id.clone(),
            input: Some(encode_f32(o.x, o.shape)),
            rejector_score: o.score,
        });
        req.set_timeout(deadline);
        let r = self.expert.clone().infer(req).await?.into_inner();
        let label = *r
            .labels
            .first()
            .ok_or_else(|| tonic::Status::internal("empty expert answer"))?;
        Ok(Remote {
            label,
            probabilities: r.probabilities,
            expert_version: r.expert_version,
        })
    }

    /// Asks for the current rejector bundle.
    pub async fn bundle(
        &self,
        model: &str,
        legacy_sha256: &str,
        current_version: &str,
        deadline: Duration,
    ) -> Result<pb::RejectorBundle, tonic::Status> {
        let mut req = tonic::Request::new(pb::BundleRequest {
            model: model.into(),
            device_id: self.device_id.clone(),
            legacy_sha256: legacy_sha256.into(),
            current_version: current_version.into(),
        });
        req.set_timeout(deadline);
        Ok(self
            .sync
            .clone()
            .get_rejector_bundle(req)
            .await?
            .into_inner())
    }
}
