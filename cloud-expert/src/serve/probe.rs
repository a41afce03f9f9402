//! `cloud-expert health`: asks a running server's `grpc.health.v1` whether it is SERVING. It is
//! the container image's HEALTHCHECK (the runtime image holds no other client) and an exec
//! probe for orchestrators without native gRPC probes.

use crate::error::CloudError;
use std::time::Duration;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::{health_client::HealthClient, HealthCheckRequest};

/// Ok when `service` ("" for the whole server) at `addr` (`host:port` or an `http://` URL)
/// answers SERVING within `timeout`; otherwise an error saying what it answered or why not.
pub async fn check(addr: &str, service: &str, timeout: Duration) -> Result<(), CloudError> {
    let uri = if addr.contains("://") {
        addr.to_string()
    } else {
        format!("http://{addr}")
    };
    let endpoint = tonic::transport::Endpoint::from_shared(uri)
        .map_err(|e| CloudError::Config(format!("--addr `{addr}`: {e}")))?
        .connect_timeout(timeout)
        .timeout(timeout);
    let channel = endpoint
        .connect()
        .await
        .map_err(|e| CloudError::Config(format!("cannot reach {addr}: {e}")))?;
    let reply = HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: service.to_string(),
        })
        .await
        .map_err(|s| {
            CloudError::Config(format!(
                "health of {addr} `{service}`: {:?}: {}",
                s.code(),
                s.message()
            ))
        })?;
    match reply.into_inner().status() {
        ServingStatus::Serving => Ok(()),
        other => Err(CloudError::Config(format!(
            "{addr} `{service}` is {}",
            other.as_str_name()
        ))),
    }
}
