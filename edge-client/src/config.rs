//! Device configuration: flags, environment variables and an optional TOML file, merged with
//! that precedence (flag or env > file > built-in default), validated once into [`Settings`].

use crate::edge::EdgeSettings;
use crate::policy::{PolicyConfig, Rule};
use clap::Args;
use serde::Deserialize;
use std::path::PathBuf;
use std::time::Duration;

/// Every device setting; all optional so a file can fill what flags leave out.
#[derive(Debug, Clone, Default, Args, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct DeviceArgs {
    /// Cloud gRPC address, e.g. http://127.0.0.1:50051 (omit for a local-only device).
    #[arg(long, env = "EDGE_CLOUD")]
    pub cloud: Option<String>,
    /// Model name in the cloud repository [default: digits].
    #[arg(long, env = "EDGE_MODEL")]
    pub model: Option<String>,
    /// This device's id [default: the host name or "edge"].
    #[arg(long, env = "EDGE_DEVICE_ID")]
    pub device_id: Option<String>,
    /// The legacy ONNX model this device runs.
    #[arg(long, env = "EDGE_LEGACY")]
    pub legacy: Option<PathBuf>,
    /// A model-repository version directory to install the rejector bundle from (offline install).
    #[arg(long, env = "EDGE_BUNDLE")]
    pub bundle: Option<PathBuf>,
    /// Directory keeping the last good bundle, so the device starts offline.
    #[arg(long, env = "EDGE_BUNDLE_CACHE")]
    pub bundle_cache: Option<PathBuf>,
    /// Deadline of one offload in milliseconds [default: 200].
    #[arg(long, env = "EDGE_DEADLINE_MS")]
    pub deadline_ms: Option<u64>,
    /// Fixed decision threshold tau on the rejector score.
    #[arg(long, env = "EDGE_THRESHOLD", conflicts_with = "target_rate")]
    pub threshold: Option<f32>,
    /// Target offload rate rho in [0, 1] (through the bundle's validation quantiles).
    #[arg(long, env = "EDGE_TARGET_RATE")]
    pub target_rate: Option<f32>,
    /// Plug-in rejectors: offload price c_e (default: the bundle's).
    #[arg(long, env = "EDGE_CE")]
    pub ce: Option<f32>,
    /// Plug-in rejectors: extra c_e per millisecond of measured round-trip time [default: 0].
    #[arg(long, env = "EDGE_CE_PER_MS")]
    pub ce_per_ms: Option<f32>,
    /// Hard budget: at most this many offloads per budget window.
    #[arg(long, env = "EDGE_BUDGET")]
    pub budget: Option<usize>,
    /// Budget window in milliseconds [default: 1000].
    #[arg(long, env = "EDGE_BUDGET_WINDOW_MS")]
    pub budget_window_ms: Option<u64>,
    /// Consecutive offload failures that open the circuit breaker [default: 3].
    #[arg(long, env = "EDGE_BREAKER_FAILURES")]
    pub breaker_failures: Option<u32>,
    /// Milliseconds the breaker stays open before probing again [default: 500].
    #[arg(long, env = "EDGE_BREAKER_BACKOFF_MS")]
    pub breaker_backoff_ms: Option<u64>,
    /// Seconds between bundle syncs with the cloud [default: 30; 0 disables].
    #[arg(long, env = "EDGE_SYNC_INTERVAL_SECS")]
    pub sync_interval_secs: Option<u64>,
    /// Seconds between telemetry reports to the cloud [default: 10; 0 disables].
    #[arg(long, env = "EDGE_TELEMETRY_INTERVAL_SECS")]
    pub telemetry_interval_secs: Option<u64>,
    /// Bearer token identifying this device to the cloud.
    #[arg(long, env = "EDGE_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// CA certificate (PEM) that signed the cloud's certificate; enables TLS.
    #[arg(long, env = "EDGE_CA_CERT")]
    pub ca_cert: Option<PathBuf>,
    /// This device's client certificate (PEM), for mutual TLS.
    #[arg(long, env = "EDGE_CLIENT_CERT")]
    pub client_cert: Option<PathBuf>,
    /// This device's client key (PEM), for mutual TLS.
    #[arg(long, env = "EDGE_CLIENT_KEY")]
    pub client_key: Option<PathBuf>,
}

macro_rules! merge_fields {
    ($a:ident, $b:ident, $($f:ident),*) => { DeviceArgs { $($f: $a.$f.or($b.$f)),* } };
}

impl DeviceArgs {
    /// Fields set here win over `file`.
    pub fn merged_with(self, file: DeviceArgs) -> DeviceArgs {
        let (a, b) = (self, file);
        merge_fields!(
            a,
            b,
            cloud,
            model,
            device_id,
            legacy,
            bundle,
            bundle_cache,
            deadline_ms,
            threshold,
            target_rate,
            ce,
            ce_per_ms,
            budget,
            budget_window_ms,
            breaker_failures,
            breaker_backoff_ms,
            sync_interval_secs,
            telemetry_interval_secs,
            token,
            ca_cert,
            client_cert,
            client_key
        )
    }

    /// Reads a TOML file of the same keys (kebab-case).
    pub fn from_toml(path: &std::path::Path) -> Result<DeviceArgs, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        toml::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))
    }

    /// Validates into settings.
    pub fn settings(&self) -> Result<Settings, String> {
        let legacy = self
            .legacy
            .clone()
            .ok_or("--legacy (or `legacy` in the config file) is required")?;
        let rule = match (self.threshold, self.target_rate) {
            (Some(t), None) if t.is_finite() => Rule::Threshold(t),
            (None, Some(r)) if (0.0..=1.0).contains(&r) => Rule::Rate(r),
            (None, None) => Rule::Trained,
            (Some(_), Some(_)) => {
                return Err("give either a threshold or a target rate, not both".into())
            }
            _ => return Err("threshold must be finite and target rate within [0, 1]".into()),
        };
        if self.ce.is_some_and(|c| !(c >= 0.0 && c.is_finite()))
            || self.ce_per_ms.is_some_and(|c| !(c >= 0.0 && c.is_finite()))
        {
            return Err("ce and ce-per-ms must be finite and non-negative".into());
        }
        let model = self.model.clone().unwrap_or_else(|| "digits".into());
        let tls = match (&self.ca_cert, &self.client_cert, &self.client_key) {
            (None, None, None) => None,
            (Some(ca), cert, key) if cert.is_some() == key.is_some() => Some(ClientTls {
                ca: ca.clone(),
                identity: cert.clone().zip(key.clone()),
            }),
            (None, _, _) => return Err("--client-cert/--client-key need --ca-cert".into()),
            _ => return Err("give both --client-cert and --client-key, or neither".into()),
        };
        if (tls.is_some() || self.token.is_some())
            && self
                .cloud
                .as_deref()
                .is_some_and(|c| !c.starts_with("https://"))
        {
            return Err(
                "--ca-cert/--token need an https:// --cloud address (credentials are never sent in plaintext)"
                    .into(),
            );
        }
        Ok(Settings {
            security: Security {
                token: self.token.clone(),
                tls,
            },
            telemetry_interval: Duration::from_secs(self.telemetry_interval_secs.unwrap_or(10)),
            cloud: self.cloud.clone(),
            device_id: self.device_id.clone().unwrap_or_else(|| "edge".into()),
            legacy,
            bundle: self.bundle.clone(),
            sync_interval: Duration::from_secs(self.sync_interval_secs.unwrap_or(30)),
            edge: EdgeSettings {
                model,
                deadline: Duration::from_millis(self.deadline_ms.unwrap_or(200)),
                breaker_failures: self.breaker_failures.unwrap_or(3),
                breaker_backoff: Duration::from_millis(self.breaker_backoff_ms.unwrap_or(500)),
                policy: PolicyConfig {
                    rule,
                    ce: self.ce,
                    ce_per_ms: self.ce_per_ms.unwrap_or(0.0),
                    budget: self.budget,
                    budget_window: Duration::from_millis(self.budget_window_ms.unwrap_or(1000)),
                },
                bundle_cache: self.bundle_cache.clone(),
            },
        })
    }
}

/// Validated device settings.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Cloud address.
    pub cloud: Option<String>,
    /// Device id.
    pub device_id: String,
    /// Legacy model file.
    pub legacy: PathBuf,
    /// Offline bundle source.
    pub bundle: Option<PathBuf>,
    /// Bundle sync period (zero: never).
    pub sync_interval: Duration,
    /// Telemetry report period (zero: never).
    pub telemetry_interval: Duration,
    /// How the device proves its identity to the cloud.
    pub security: Security,
    /// Runtime settings.
    pub edge: EdgeSettings,
}

/// TLS settings of the cloud connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientTls {
    /// CA that signed the cloud's certificate.
    pub ca: PathBuf,
    /// Client certificate and key, for mutual TLS.
    pub identity: Option<(PathBuf, PathBuf)>,
}

/// Credentials of the cloud connection.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Security {
    /// Bearer token sent with every call.
    pub token: Option<String>,
    /// TLS; plaintext when None.
    pub tls: Option<ClientTls>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_win_over_the_file_and_defaults_fill_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("edge.toml");
        std::fs::write(
            &p,
            "legacy = \"m.onnx\"\ndeadline-ms = 50\ntarget-rate = 0.2\nmodel = \"file\"\n",
        )
        .unwrap();
        let flags = DeviceArgs {
            model: Some("flag".into()),
            ..Default::default()
        };
        let s = flags
            .merged_with(DeviceArgs::from_toml(&p).unwrap())
            .settings()
            .unwrap();
        assert_eq!(s.edge.model, "flag");
        assert_eq!(s.edge.deadline, Duration::from_millis(50));
        assert_eq!(s.edge.policy.rule, Rule::Rate(0.2));
        assert_eq!(s.edge.breaker_failures, 3);
        std::fs::write(&p, "legacy = \"m.onnx\"\nunknown-key = 1\n").unwrap();
        assert!(DeviceArgs::from_toml(&p).unwrap_err().contains("unknown"));
        assert!(DeviceArgs::default()
            .settings()
            .unwrap_err()
            .contains("--legacy"));
        let plaintext_token = DeviceArgs {
            legacy: Some("m.onnx".into()),
            cloud: Some("http://cloud:50051".into()),
            token: Some("secret".into()),
            ..Default::default()
        };
        assert!(plaintext_token.settings().unwrap_err().contains("https://"));
    }
}
