//! Device authentication and authorisation.
//!
//! Devices prove who they are either with a per-device bearer token (`authorization: Bearer T`
//! in gRPC metadata or the HTTP header) or with the identity (subject common name) of the client
//! certificate they presented over mutual TLS, as configured. Each device may use only the
//! models its grant lists. Administrative operations (model load/unload) need one of the
//! separate admin tokens; with none configured the admin API is disabled.
//!
//! Tokens are kept only as sha256 digests, so the credentials file may hold digests
//! (`sha256:<hex>`) instead of secrets; comparison is by digest lookup.
//!
//! Credentials file (TOML):
//! ```toml
//! admin_tokens = ["sha256:9f86d0..."]
//! [[devices]]
//! id = "device-7"
//! token = "s3cret"            # or "sha256:<hex>"; unused in cert mode
//! models = ["digits"]         # "*" for every model
//! revoked = false
//! ```

use super::error::ServeError;
use offload_shared::engine::sha256_hex;
use serde::Deserialize;
use std::collections::{HashMap, HashSet};
use std::path::Path;

/// How devices authenticate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum AuthMode {
    /// No device authentication (trusted network only).
    None,
    /// Per-device bearer tokens.
    Token,
    /// Client certificate common name (requires mutual TLS).
    Cert,
}

/// One device's entry in the credentials file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct DeviceEntry {
    id: String,
    #[serde(default)]
    token: Option<String>,
    #[serde(default)]
    models: Vec<String>,
    #[serde(default)]
    revoked: bool,
}

/// The credentials file.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct CredentialsFile {
    #[serde(default)]
    admin_tokens: Vec<String>,
    #[serde(default)]
    devices: Vec<DeviceEntry>,
}

/// A device's rights.
#[derive(Debug, Clone)]
struct Grant {
    models: Vec<String>,
    revoked: bool,
}

/// Who is calling.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Principal {
    /// Authentication is off.
    Anonymous,
    /// An authenticated device.
    Device(String),
}

impl Principal {
    /// The device id, when authenticated.
    pub fn device(&self) -> Option<&str> {
        match self {
            Principal::Anonymous => None,
            Principal::Device(d) => Some(d),
        }
    }
}

/// Validated authentication settings.
#[derive(Debug, Clone)]
pub struct Auth {
    mode: AuthMode,
    /// Device id -> grant.
    grants: HashMap<String, Grant>,
    /// sha256(token) -> device id.
    tokens: HashMap<String, String>,
    /// sha256 of admin tokens.
    admin: HashSet<String>,
}

/// Why the credentials file was refused.
#[derive(Debug, thiserror::Error)]
pub enum AuthConfigError {
    /// Unreadable.
    #[error("{path}: {source}")]
    Io {
        /// File.
        path: std::path::PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// Not valid TOML of the expected shape.
    #[error("{path}: {msg}")]
    Parse {
        /// File.
        path: std::path::PathBuf,
        /// Cause.
        msg: String,
    },
    /// Inconsistent content.
    #[error("{0}")]
    Invalid(String),
}

/// Digest of a token as written in the configuration: `sha256:<hex>` is taken as the digest
/// itself, anything else is the secret.
fn configured_digest(token: &str) -> String {
    match token.strip_prefix("sha256:") {
        Some(hex) => hex.to_ascii_lowercase(),
        None => sha256_hex(token.as_bytes()),
    }
}

/// Digest of a token a client presented: always hashed, so knowing a stored digest (which the
/// credentials file may contain in the clear) is not enough to log in.
fn presented_digest(token: &str) -> String {
    sha256_hex(token.as_bytes())
}

impl Auth {
    /// No authentication; the admin API accepts the given admin tokens (none: disabled).
    pub fn open(admin_tokens: &[String]) -> Self {
        Self {
            mode: AuthMode::None,
            grants: HashMap::new(),
            tokens: HashMap::new(),
            admin: admin_tokens.iter().map(|t| configured_digest(t)).collect(),
        }
    }

    /// Loads the credentials file for `mode`.
    pub fn load(mode: AuthMode, path: Option<&Path>) -> Result<Self, AuthConfigError> {
        let file = match path {
            Some(p) => {
                let text = std::fs::read_to_string(p).map_err(|source| AuthConfigError::Io {
                    path: p.into(),
                    source,
                })?;
                toml::from_str::<CredentialsFile>(&text).map_err(|e| AuthConfigError::Parse {
                    path: p.into(),
                    msg: e.to_string(),
                })?
            }
            None if mode == AuthMode::None => CredentialsFile::default(),
            None => {
                return Err(AuthConfigError::Invalid(format!(
                    "--auth {} needs --credentials FILE listing the devices",
                    if mode == AuthMode::Cert {
                        "cert"
                    } else {
                        "token"
                    }
                )))
            }
        };
        let mut auth = Self::open(&file.admin_tokens);
        auth.mode = mode;
        for d in file.devices {
            if auth.grants.contains_key(&d.id) {
                return Err(AuthConfigError::Invalid(format!(
                    "device `{}` is listed twice",
                    d.id
                )));
            }
            if let Some(t) = &d.token {
                if auth
                    .tokens
                    .insert(configured_digest(t), d.id.clone())
                    .is_some()
                {
                    return Err(AuthConfigError::Invalid(format!(
                        "device `{}` shares its token with another device",
                        d.id
                    )));
                }
            } else if mode == AuthMode::Token {
                return Err(AuthConfigError::Invalid(format!(
                    "device `{}` has no token but --auth token is set",
                    d.id
                )));
            }
            auth.grants.insert(
                d.id,
                Grant {
                    models: d.models,
                    revoked: d.revoked,
                },
            );
        }
        Ok(auth)
    }

    /// Accepts one more admin token.
    pub fn add_admin_token(&mut self, token: &str) {
        self.admin.insert(configured_digest(token));
    }

    /// The mode.
    pub fn mode(&self) -> AuthMode {
        self.mode
    }

    /// Identifies the caller from its `authorization` value and its certificate's common name.
    pub fn authenticate(
        &self,
        authorization: Option<&str>,
        cert_identity: Option<&str>,
    ) -> Result<Principal, ServeError> {
        let id = match self.mode {
            AuthMode::None => return Ok(Principal::Anonymous),
            AuthMode::Token => {
                let token = bearer(authorization)?;
                self.tokens
                    .get(&presented_digest(token))
                    .cloned()
                    .ok_or_else(|| ServeError::Unauthenticated("unknown bearer token".into()))?
            }
            AuthMode::Cert => {
                let cn = cert_identity.ok_or_else(|| {
                    ServeError::Unauthenticated(
                        "no client certificate presented (mutual TLS required)".into(),
                    )
                })?;
                if !self.grants.contains_key(cn) {
                    return Err(ServeError::Unauthenticated(format!(
                        "certificate identity `{cn}` is not a registered device"
                    )));
                }
                cn.to_string()
            }
        };
        if self.grants.get(&id).is_some_and(|g| g.revoked) {
            return Err(ServeError::Unauthenticated(format!(
                "the credential of device `{id}` has been revoked"
            )));
        }
        Ok(Principal::Device(id))
    }

    /// Checks that `who` may use `model`.
    pub fn authorize_model(&self, who: &Principal, model: &str) -> Result<(), ServeError> {
        let Principal::Device(id) = who else {
            return Ok(());
        };
        let allowed = self
            .grants
            .get(id)
            .is_some_and(|g| g.models.iter().any(|m| m == "*" || m == model));
        if allowed {
            Ok(())
        } else {
            Err(ServeError::Forbidden(format!(
                "device `{id}` is not authorised for model `{model}`"
            )))
        }
    }

    /// Whether any admin token is configured.
    pub fn has_admin(&self) -> bool {
        !self.admin.is_empty()
    }

    /// Checks an administrative call's credential.
    pub fn authorize_admin(&self, authorization: Option<&str>) -> Result<(), ServeError> {
        if self.admin.is_empty() {
            return Err(ServeError::Forbidden(
                "the admin API is disabled: no admin token is configured".into(),
            ));
        }
        let token = bearer(authorization)?;
        let d = presented_digest(token);
        if self.admin.contains(&d) {
            Ok(())
        } else if self.tokens.contains_key(&d) {
            Err(ServeError::Forbidden(
                "a device token cannot be used for administrative operations".into(),
            ))
        } else {
            Err(ServeError::Unauthenticated("unknown admin token".into()))
        }
    }
}

fn bearer(authorization: Option<&str>) -> Result<&str, ServeError> {
    let v = authorization.ok_or_else(|| {
        ServeError::Unauthenticated("missing `authorization: Bearer <token>`".into())
    })?;
    v.strip_prefix("Bearer ")
        .or_else(|| v.strip_prefix("bearer "))
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .ok_or_else(|| ServeError::Unauthenticated("authorization is not `Bearer <token>`".into()))
}

/// The subject common name of a DER certificate.
pub fn common_name(der: &[u8]) -> Option<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let cn = cert.subject().iter_common_name().next()?;
    cn.as_str().ok().map(str::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn auth(mode: AuthMode) -> Auth {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.toml");
        std::fs::write(
            &p,
            r#"
admin_tokens = ["adm"]
[[devices]]
id = "d1"
token = "t1"
models = ["digits"]
[[devices]]
id = "d2"
token = "sha256:c44474038d459e40e4714afefa7bf8dae9f9834b22f5e8ec1dd434ecb62b512e"
models = ["*"]
[[devices]]
id = "gone"
token = "t3"
models = ["*"]
revoked = true
"#,
        )
        .unwrap();
        Auth::load(mode, Some(&p)).unwrap()
    }

    #[test]
    fn tokens_identify_devices_and_grants_limit_models() {
        let a = auth(AuthMode::Token);
        let d1 = a.authenticate(Some("Bearer t1"), None).unwrap();
        assert_eq!(d1, Principal::Device("d1".into()));
        assert!(a.authorize_model(&d1, "digits").is_ok());
        assert!(matches!(
            a.authorize_model(&d1, "other"),
            Err(ServeError::Forbidden(_))
        ));
        // "d2"'s token is stored as the digest of "t2".
        let d2 = a.authenticate(Some("Bearer t2"), None).unwrap();
        assert!(a.authorize_model(&d2, "anything").is_ok());
        for bad in [
            None,
            Some("Bearer nope"),
            Some("Basic t1"),
            Some("Bearer t3"),
        ] {
            assert!(
                matches!(
                    a.authenticate(bad, None),
                    Err(ServeError::Unauthenticated(_))
                ),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn admin_needs_its_own_token() {
        let a = auth(AuthMode::Token);
        assert!(a.authorize_admin(Some("Bearer adm")).is_ok());
        assert!(matches!(
            a.authorize_admin(Some("Bearer t1")),
            Err(ServeError::Forbidden(_))
        ));
        assert!(matches!(
            a.authorize_admin(None),
            Err(ServeError::Unauthenticated(_))
        ));
        assert!(matches!(
            Auth::open(&[]).authorize_admin(Some("Bearer adm")),
            Err(ServeError::Forbidden(_))
        ));
    }

    #[test]
    fn cert_mode_uses_the_certificate_identity() {
        let a = auth(AuthMode::Cert);
        assert_eq!(
            a.authenticate(None, Some("d1")).unwrap(),
            Principal::Device("d1".into())
        );
        assert!(a.authenticate(Some("Bearer t1"), None).is_err());
        assert!(a.authenticate(None, Some("stranger")).is_err());
        assert!(a.authenticate(None, Some("gone")).is_err());
    }
}
