//! `OffloadClient`: a small hand-written wrapper over the generated `offload.v1` stubs, one
//! method per RPC, each with a deadline.

use crate::config::Security;
use offload_proto::v1 as pb;
use offload_shared::wire::encode_f32;
use std::time::Duration;
use tonic::metadata::MetadataValue;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

/// The device's connection to the cloud. Cheap to clone (one shared HTTP/2 channel).
#[derive(Debug, Clone)]
pub struct OffloadClient {
    /// Expert stub.
    expert: pb::expert_client::ExpertClient<Channel>,
    /// ModelSync stub.
    sync: pb::model_sync_client::ModelSyncClient<Channel>,
    /// Telemetry stub.
    telemetry: pb::telemetry_client::TelemetryClient<Channel>,
    /// This device's id (sent with every request).
    device_id: String,
    /// `Bearer <token>` sent with every call, if configured.
    authorization: Option<MetadataValue<tonic::metadata::Ascii>>,
}

/// Why the client could not be built.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// A credential file could not be read.
    #[error("{path}: {source}")]
    Io {
        /// File.
        path: std::path::PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// The token is not a valid header value.
    #[error("the token contains characters not allowed in a header")]
    Token,
    /// The endpoint or TLS settings were refused.
    #[error(transparent)]
    Transport(#[from] tonic::transport::Error),
}

fn read(path: &std::path::Path) -> Result<Vec<u8>, ClientError> {
    std::fs::read(path).map_err(|source| ClientError::Io {
        path: path.into(),
        source,
    })
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
    /// With TLS configured, `url` must be `https://` (checked when settings are validated).
    pub fn new(
        url: &str,
        device_id: &str,
        connect_timeout: Duration,
        security: &Security,
    ) -> Result<Self, ClientError> {
        let mut endpoint = Endpoint::from_shared(url.to_string())?
            .connect_timeout(connect_timeout)
            .tcp_nodelay(true);
        if let Some(tls) = &security.tls {
            let mut cfg =
                ClientTlsConfig::new().ca_certificate(Certificate::from_pem(read(&tls.ca)?));
            if let Some((cert, key)) = &tls.identity {
                cfg = cfg.identity(Identity::from_pem(read(cert)?, read(key)?));
            }
            endpoint = endpoint.tls_config(cfg)?;
        }
        let channel = endpoint.connect_lazy();
        let authorization = security
            .token
            .as_ref()
            .map(|t| {
                format!("Bearer {t}")
                    .parse()
                    .map_err(|_| ClientError::Token)
            })
            .transpose()?;
        Ok(Self {
            expert: pb::expert_client::ExpertClient::new(channel.clone()),
            sync: pb::model_sync_client::ModelSyncClient::new(channel.clone()),
            telemetry: pb::telemetry_client::TelemetryClient::new(channel),
            device_id: device_id.into(),
            authorization,
        })
    }

    /// A request with the deadline and credentials set.
    fn request<T>(&self, msg: T, deadline: Duration) -> tonic::Request<T> {
        let mut req = tonic::Request::new(msg);
        req.set_timeout(deadline);
        if let Some(a) = &self.authorization {
            req.metadata_mut().insert("authorization", a.clone());
        }
        req
    }

    /// Reports answer counts (deltas since the last acknowledged report).
    pub async fn report(
        &self,
        model: &str,
        counts: [u64; 3],
        bundle_version: &str,
        (instance, sequence): (u64, u64),
        deadline: Duration,
    ) -> Result<(), tonic::Status> {
        let req = self.request(
            pb::TelemetryReport {
                device_id: self.device_id.clone(),
                model: model.into(),
                local: counts[0],
                offloaded: counts[1],
                fallback: counts[2],
                bundle_version: bundle_version.into(),
                instance,
                sequence,
            },
            deadline,
        );
        self.telemetry.clone().report(req).await.map(|_| ())
    }

    /// Offloads one input within `deadline`.
    pub async fn infer(&self, o: Offload<'_>, deadline: Duration) -> Result<Remote, tonic::Status> {
        let req = self.request(
            pb::InferRequest {
                model: o.model.into(),
                version: o.version.into(),
                request_id: o.request_id.into(),
                device_id: self.device_id.clone(),
                input: Some(encode_f32(o.x, o.shape)),
                rejector_score: o.score,
            },
            deadline,
        );
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
        let req = self.request(
            pb::BundleRequest {
                model: model.into(),
                device_id: self.device_id.clone(),
                legacy_sha256: legacy_sha256.into(),
                current_version: current_version.into(),
            },
            deadline,
        );
        Ok(self
            .sync
            .clone()
            .get_rejector_bundle(req)
            .await?
            .into_inner())
    }
}
