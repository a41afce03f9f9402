//! TLS for both front ends (rustls with the ring provider): server identity from PEM files and,
//! with a client CA, mutual TLS. When TLS is configured nothing is served in plaintext: both the
//! gRPC and the HTTP listener only speak TLS.

use super::auth::common_name;
use super::http::PeerIdentity;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// TLS settings (validated paths; read at start).
#[derive(Debug, Clone)]
pub struct TlsSettings {
    /// Server certificate chain (PEM).
    pub cert: PathBuf,
    /// Server private key (PEM).
    pub key: PathBuf,
    /// CA whose certificates clients must present (PEM); enables mutual TLS.
    pub client_ca: Option<PathBuf>,
    /// With a client CA: also accept clients without a certificate (tokens authenticate them).
    pub client_optional: bool,
}

/// Why TLS could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read.
    #[error("{path}: {source}")]
    Io {
        /// File.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// A file is not the expected PEM content.
    #[error("{path}: {msg}")]
    Pem {
        /// File.
        path: PathBuf,
        /// Cause.
        msg: String,
    },
    /// rustls refused the configuration.
    #[error("tls: {0}")]
    Config(String),
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Io {
        path: path.into(),
        source,
    })
}

fn certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read(path)?;
    let certs: Vec<_> = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<_, _>>()
        .map_err(|e| TlsError::Pem {
            path: path.into(),
            msg: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TlsError::Pem {
            path: path.into(),
            msg: "no certificate found".into(),
        });
    }
    Ok(certs)
}

impl TlsSettings {
    /// The tonic (gRPC) configuration.
    pub fn grpc(&self) -> Result<tonic::transport::ServerTlsConfig, TlsError> {
        let identity = tonic::transport::Identity::from_pem(read(&self.cert)?, read(&self.key)?);
        let mut cfg = tonic::transport::ServerTlsConfig::new().identity(identity);
        if let Some(ca) = &self.client_ca {
            cfg = cfg
                .client_ca_root(tonic::transport::Certificate::from_pem(read(ca)?))
                .client_auth_optional(self.client_optional);
        }
        Ok(cfg)
    }

    /// The rustls configuration of the HTTP listener (ALPN h2 and http/1.1).
    pub fn http(&self) -> Result<Arc<rustls::ServerConfig>, TlsError> {
        // ring, as in tonic's `tls-ring`: it builds without cmake/nasm (aws-lc-rs needs them).
        // Deprecated in rustls 0.23.48 only for lacking post-quantum key exchange.
        #[allow(deprecated)]
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let cfg_err = |e: rustls::Error| TlsError::Config(e.to_string());
        let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(cfg_err)?;
        let builder = match &self.client_ca {
            Some(ca) => {
                let mut roots = rustls::RootCertStore::empty();
                for c in certs(ca)? {
                    roots.add(c).map_err(cfg_err)?;
                }
                let v = rustls::server::WebPkiClientVerifier::builder_with_provider(
                    Arc::new(roots),
                    provider,
                );
                let v = if self.client_optional {
                    v.allow_unauthenticated()
                } else {
                    v
                };
                builder.with_client_cert_verifier(
                    v.build().map_err(|e| TlsError::Config(e.to_string()))?,
                )
            }
            None => builder.with_no_client_auth(),
        };
        let key = PrivateKeyDer::from_pem_slice(&read(&self.key)?).map_err(|e| TlsError::Pem {
            path: self.key.clone(),
            msg: e.to_string(),
        })?;
        let mut cfg = builder
            .with_single_cert(certs(&self.cert)?, key)
            .map_err(cfg_err)?;
        cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(Arc::new(cfg))
    }
}

/// Serves `app` over TLS on `listener` until `shutdown` resolves, then lets open connections
/// finish their requests for up to `grace`; each request carries the client certificate's common
/// name as a [`PeerIdentity`] extension and the client address as `ConnectInfo`. Handshakes that
/// fail (wrong CA, no certificate where one is required, plaintext) close only their connection.
pub async fn serve_https(
    listener: tokio::net::TcpListener,
    app: axum::Router,
    config: Arc<rustls::ServerConfig>,
    shutdown: impl std::future::Future<Output = ()>,
    grace: Duration,
) {
    use hyper_util::rt::{TokioExecutor, TokioIo};
    use tower::ServiceExt;
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        let (tcp, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = &mut shutdown => break,
        };
        let _ = tcp.set_nodelay(true);
        let acceptor = acceptor.clone();
        let app = app.clone();
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            let tls =
                match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await {
                    Ok(Ok(t)) => t,
                    Ok(Err(e)) => {
                        tracing::info!(%peer, error = %e, "TLS handshake refused");
                        return;
                    }
                    Err(_) => return,
                };
            let cn = tls
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|c| c.first())
                .and_then(|c| common_name(c));
            let svc = app.map_request(move |mut req: axum::http::Request<_>| {
                req.extensions_mut().insert(PeerIdentity(cn.clone()));
                req.extensions_mut()
                    .insert(axum::extract::ConnectInfo(peer));
                req
            });
            let svc = hyper_util::service::TowerToHyperService::new(svc);
            let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            let conn = builder.serve_connection(TokioIo::new(tls), svc);
            let _ = watcher.watch(conn.into_owned()).await;
        });
    }
    // Stop accepting; let in-flight requests finish (connections close after their response).
    let _ = tokio::time::timeout(grace, graceful.shutdown()).await;
}
