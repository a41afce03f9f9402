//! Bringing a device up: load the legacy model, find an initial rejector bundle (offline install,
//! last good bundle on disk, or the cloud), and keep the bundle in sync in the background.

use crate::bundle::Bundle;
use crate::client::OffloadClient;
use crate::config::Settings;
use crate::edge::Edge;
use offload_shared::legacy::{LegacyModel, OutputKind};
use std::sync::Arc;
use std::time::Duration;

/// Deadline of a bundle request.
const SYNC_DEADLINE: Duration = Duration::from_secs(5);

/// Builds the device. Fails only when no usable bundle exists anywhere.
pub async fn start(s: &Settings) -> Result<Arc<Edge>, String> {
    let legacy = LegacyModel::load(&s.legacy, OutputKind::Auto).map_err(|e| e.to_string())?;
    let sha = legacy.sha256().to_string();
    let client = match &s.cloud {
        Some(url) => Some(
            OffloadClient::new(url, &s.device_id, Duration::from_secs(2), &s.security)
                .map_err(|e| format!("cloud address {url}: {e}"))?,
        ),
        None => None,
    };
    let cache = s.edge.bundle_cache.as_deref();
    let mut bundle = None;
    if let Some(dir) = &s.bundle {
        bundle = Some(
            Bundle::from_repo_dir(dir, &s.edge.model, &sha)
                .map_err(|e| format!("--bundle {}: {e}", dir.display()))?,
        );
    }
    if bundle.is_none() {
        if let Some(dir) = cache {
            match Bundle::load(dir, &sha) {
                Ok(b) => bundle = Some(b),
                Err(e) => tracing::info!(reason = %e, "no usable cached bundle"),
            }
        }
    }
    if bundle.is_none() {
        if let Some(c) = &client {
            let reply = c
                .bundle(&s.edge.model, &sha, "", SYNC_DEADLINE)
                .await
                .map_err(|e| format!("fetching the rejector bundle: {}", e.message()))?;
            let b = Bundle::from_proto(reply, &sha)
                .map_err(|e| format!("refused the cloud's bundle: {e}"))?;
            bundle = Some(b);
        }
    }
    let bundle = bundle.ok_or(
        "no rejector bundle: give --bundle, a --bundle-cache holding one, or a reachable --cloud",
    )?;
    if let Some(dir) = cache {
        if let Err(e) = bundle.save(dir) {
            tracing::warn!(reason = %e, "could not persist the bundle");
        }
    }
    let edge = Arc::new(Edge::new(legacy, bundle, client, s.edge.clone()));
    if s.cloud.is_some() {
        if let Err(e) = edge.sync_bundle(SYNC_DEADLINE).await {
            tracing::warn!(reason = %e, "bundle sync at start failed; keeping the installed bundle");
        }
    }
    Ok(edge)
}

/// Re-syncs the bundle every `period` until the returned task is aborted.
pub fn spawn_sync_loop(edge: Arc<Edge>, period: Duration) -> Option<tokio::task::JoinHandle<()>> {
    if period.is_zero() {
        return None;
    }
    Some(tokio::spawn(async move {
        let mut tick = tokio::time::interval(period);
        tick.tick().await;
        loop {
            tick.tick().await;
            match edge.sync_bundle(SYNC_DEADLINE).await {
                Ok(changed) => tracing::debug!(changed, "bundle sync"),
                Err(e) => {
                    tracing::warn!(reason = %e, "bundle sync failed; keeping the current bundle")
                }
            }
        }
    }))
}

/// Reports answer counts to the cloud every `period` until the returned task is aborted (see
/// [`Edge::report_telemetry`]); `None` when disabled or local-only.
pub fn spawn_telemetry_loop(
    edge: Arc<Edge>,
    period: Duration,
) -> Option<tokio::task::JoinHandle<()>> {
    if period.is_zero() || !edge.has_cloud() {
        return None;
    }
    Some(tokio::spawn(async move {
        let mut tick = tokio::time::interval(period);
        tick.tick().await;
        loop {
            tick.tick().await;
            if let Err(e) = edge.report_telemetry(SYNC_DEADLINE).await {
                tracing::debug!(reason = %e, "telemetry report failed; counts kept for the next one");
            }
        }
    }))
}
