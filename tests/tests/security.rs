//! TLS, mutual TLS and device authorisation with certificates generated at test time: missing
//! and wrong credentials, revoked tokens and certificates, another device's model and
//! administrative calls are each refused with the right status; nothing is served in plaintext
//! when TLS is on.

use offload_proto::v1 as opb;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use system_tests::certs::{Ca, Leaf};
use system_tests::*;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};
use tonic::Code;

/// Repository with two models (`digits` and a copy, `digits-b`), CA-signed certificates and a
/// credentials file; shared by this file's tests.
struct Fixture {
    _dir: tempfile::TempDir,
    dir: PathBuf,
    legacy: PathBuf,
    repo: PathBuf,
    ca: Ca,
    server: Leaf,
    creds: PathBuf,
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().to_path_buf();
        let legacy = legacy(&dir, "multiclass");
        let v1 = train(&dir, &legacy, "digits", &["--epochs", "10"]);
        let repo = dir.join("repo");
        let copy = repo.join("digits-b/1");
        std::fs::create_dir_all(&copy).unwrap();
        for f in std::fs::read_dir(&v1).unwrap() {
            let f = f.unwrap().path();
            std::fs::copy(&f, copy.join(f.file_name().unwrap())).unwrap();
        }
        let ca = Ca::new(&dir, "fleet");
        let server = ca.leaf(&dir, "cloud");
        let creds = dir.join("credentials.toml");
        std::fs::write(
            &creds,
            r#"
admin_tokens = ["admin-secret"]
[[devices]]
id = "device-a"
token = "token-a"
models = ["digits"]
[[devices]]
id = "device-b"
token = "token-b"
models = ["digits-b"]
[[devices]]
id = "device-c"
token = "token-c"
models = ["*"]
revoked = true
"#,
        )
        .unwrap();
        Fixture {
            _dir: tmp,
            dir,
            legacy,
            repo,
            ca,
            server,
            creds,
        }
    })
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// Calls Expert.Infer over TLS with an optional client identity and token; returns the code.
async fn infer(
    addr: &str,
    ca: &Path,
    identity: Option<&Leaf>,
    token: Option<&str>,
    model: &str,
) -> Code {
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(std::fs::read(ca).unwrap()))
        .domain_name("localhost");
    if let Some(l) = identity {
        tls = tls.identity(Identity::from_pem(
            std::fs::read(&l.cert).unwrap(),
            std::fs::read(&l.key).unwrap(),
        ));
    }
    let channel = match Endpoint::from_shared(format!("https://{addr}"))
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect()
        .await
    {
        Ok(c) => c,
        Err(_) => return Code::Unavailable,
    };
    let mut req = tonic::Request::new(opb::InferRequest {
        model: model.into(),
        input: Some(offload_shared::wire::encode_f32(&[1.0; 64], &[1, 64])),
        ..Default::default()
    });
    if let Some(t) = token {
        req.metadata_mut()
            .insert("authorization", format!("Bearer {t}").parse().unwrap());
    }
    match opb::expert_client::ExpertClient::new(channel)
        .infer(req)
        .await
    {
        Ok(_) => Code::Ok,
        // With TLS 1.3 the client finishes its handshake before the server checks the client
        // certificate, so a refusal surfaces as a broken connection on the first call.
        Err(s) if matches!(s.code(), Code::Cancelled | Code::Unknown) => Code::Unavailable,
        Err(s) => s.code(),
    }
}

fn tls_args(f: &Fixture) -> Vec<String> {
    vec![
        "--tls-cert".into(),
        f.server.cert.display().to_string(),
        "--tls-key".into(),
        f.server.key.display().to_string(),
        "--credentials".into(),
        f.creds.display().to_string(),
    ]
}

fn start(f: &Fixture, extra: &[&str]) -> CloudProcess {
    let mut args = tls_args(f);
    args.extend(extra.iter().map(|s| s.to_string()));
    CloudProcess::start(
        &f.repo,
        "127.0.0.1:0",
        &args.iter().map(String::as_str).collect::<Vec<_>>(),
    )
}

#[test]
fn mutual_tls_identities_authorise_devices_for_their_own_models_only() {
    let f = fixture();
    let ca = f.ca.pem_path.display().to_string();
    let cloud = start(f, &["--auth", "cert", "--tls-client-ca", &ca]);
    let a = f.ca.leaf(&f.dir, "device-a");
    let c = f.ca.leaf(&f.dir, "device-c");
    let stranger = f.ca.leaf(&f.dir, "stranger");
    let rogue_ca = Ca::new(&f.dir, "rogue");
    let forged = rogue_ca.leaf(&f.dir, "forged");
    let codes = rt().block_on(async {
        vec![
            (
                "own model",
                infer(&cloud.addr, &f.ca.pem_path, Some(&a), None, "digits").await,
            ),
            (
                "other device's model",
                infer(&cloud.addr, &f.ca.pem_path, Some(&a), None, "digits-b").await,
            ),
            (
                "no client certificate",
                infer(&cloud.addr, &f.ca.pem_path, None, None, "digits").await,
            ),
            (
                "certificate from another CA",
                infer(&cloud.addr, &f.ca.pem_path, Some(&forged), None, "digits").await,
            ),
            (
                "unregistered identity",
                infer(&cloud.addr, &f.ca.pem_path, Some(&stranger), None, "digits").await,
            ),
            (
                "revoked device",
                infer(&cloud.addr, &f.ca.pem_path, Some(&c), None, "digits").await,
            ),
        ]
    });
    let want = [
        Code::Ok,
        Code::PermissionDenied,
        Code::Unavailable,
        Code::Unavailable,
        Code::Unauthenticated,
        Code::Unauthenticated,
    ];
    for ((name, got), want) in codes.iter().zip(want) {
        assert_eq!(*got, want, "{name}");
    }
    // Plaintext gRPC to the TLS port gets nowhere.
    let plain = rt().block_on(async {
        match opb::expert_client::ExpertClient::connect(cloud.url()).await {
            Ok(mut c) => c
                .infer(opb::InferRequest::default())
                .await
                .map(|_| ())
                .map_err(|s| s.code()),
            Err(_) => Err(Code::Unavailable),
        }
    });
    assert!(plain.is_err(), "plaintext gRPC was served");
    // HTTP: the same identities through curl.
    let base = format!(
        "https://localhost:{}",
        cloud.http.rsplit(':').next().unwrap()
    );
    let resolve = format!(
        "localhost:{}:127.0.0.1",
        cloud.http.rsplit(':').next().unwrap()
    );
    let with = |leaf: Option<&Leaf>, path: &str| {
        let mut args = vec![
            "--resolve".to_string(),
            resolve.clone(),
            "--cacert".into(),
            ca.clone(),
        ];
        if let Some(l) = leaf {
            args.extend([
                "--cert".into(),
                l.cert.display().to_string(),
                "--key".into(),
                l.key.display().to_string(),
            ]);
        }
        args.push(format!("{base}{path}"));
        curl(&args.iter().map(String::as_str).collect::<Vec<_>>()).0
    };
    assert_eq!(with(Some(&a), "/v2/models/digits"), 200);
    assert_eq!(with(Some(&a), "/v2/models/digits-b"), 403);
    assert_eq!(with(Some(&c), "/v2/models/digits"), 401);
    assert_eq!(
        with(None, "/v2/models/digits"),
        0,
        "served without a client certificate"
    );
    assert_eq!(
        with(Some(&forged), "/v2/models/digits"),
        0,
        "served a foreign certificate"
    );
    assert_eq!(
        curl(&[&format!("{}/v2/health/live", cloud.http_url())]).0,
        0,
        "served plaintext HTTP"
    );
    // A real device with its certificate offloads over mTLS without a single fallback.
    let out = run_ok(
        "edge-client",
        &[
            "run",
            "--cloud",
            &format!(
                "https://localhost:{}",
                cloud.addr.rsplit(':').next().unwrap()
            ),
            "--legacy",
            f.legacy.to_str().unwrap(),
            "--input",
            "digits:test",
            "--device-id",
            "device-a",
            "--ca-cert",
            &ca,
            "--client-cert",
            a.cert.to_str().unwrap(),
            "--client-key",
            a.key.to_str().unwrap(),
            "--deadline-ms",
            "2000",
            "--sync-interval-secs",
            "0",
        ],
    );
    let lines = json_lines(&out);
    assert_eq!(lines.len(), 359);
    assert!(
        lines.iter().all(|l| l["source"] != "fallback"),
        "a device fell back over mTLS"
    );
    assert!(lines.iter().any(|l| l["source"] == "remote"));
}

#[test]
fn bearer_tokens_authenticate_devices_and_admin_operations_need_their_own_token() {
    let f = fixture();
    let cloud = start(f, &["--auth", "token"]);
    let ca = f.ca.pem_path.clone();
    let stored_digest = format!("sha256:{}", offload_shared::engine::sha256_hex(b"token-a"));
    let codes = rt().block_on(async {
        vec![
            (
                "own model",
                infer(&cloud.addr, &ca, None, Some("token-a"), "digits").await,
            ),
            (
                "no token",
                infer(&cloud.addr, &ca, None, None, "digits").await,
            ),
            (
                "unknown token",
                infer(&cloud.addr, &ca, None, Some("guess"), "digits").await,
            ),
            (
                "revoked token",
                infer(&cloud.addr, &ca, None, Some("token-c"), "digits").await,
            ),
            (
                "other device's model",
                infer(&cloud.addr, &ca, None, Some("token-a"), "digits-b").await,
            ),
            (
                "device b, own model",
                infer(&cloud.addr, &ca, None, Some("token-b"), "digits-b").await,
            ),
            (
                "the stored digest of a token is not the token",
                infer(&cloud.addr, &ca, None, Some(&stored_digest), "digits").await,
            ),
        ]
    });
    let want = [
        Code::Ok,
        Code::Unauthenticated,
        Code::Unauthenticated,
        Code::Unauthenticated,
        Code::PermissionDenied,
        Code::Ok,
        Code::Unauthenticated,
    ];
    for ((name, got), want) in codes.iter().zip(want) {
        assert_eq!(*got, want, "{name}");
    }
    // Telemetry may not be reported for another device.
    let spoof = rt().block_on(async {
        let tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(std::fs::read(&ca).unwrap()))
            .domain_name("localhost");
        let ch = Endpoint::from_shared(format!("https://{}", cloud.addr))
            .unwrap()
            .tls_config(tls)
            .unwrap()
            .connect()
            .await
            .unwrap();
        let mut req = tonic::Request::new(opb::TelemetryReport {
            device_id: "device-b".into(),
            model: "digits".into(),
            local: 5,
            ..Default::default()
        });
        req.metadata_mut()
            .insert("authorization", "Bearer token-a".parse().unwrap());
        opb::telemetry_client::TelemetryClient::new(ch)
            .report(req)
            .await
            .map(|_| ())
            .map_err(|s| s.code())
    });
    assert_eq!(spoof, Err(Code::PermissionDenied));
    // Admin API over HTTPS: device tokens and no token are refused, the admin token works.
    let port = cloud.http.rsplit(':').next().unwrap().to_string();
    let admin = |token: Option<&str>, path: &str| {
        let mut args = vec![
            "--resolve".to_string(),
            format!("localhost:{port}:127.0.0.1"),
            "--cacert".into(),
            ca.display().to_string(),
            "-X".into(),
            "POST".into(),
        ];
        if let Some(t) = token {
            args.extend(["-H".into(), format!("authorization: Bearer {t}")]);
        }
        args.push(format!("https://localhost:{port}{path}"));
        curl(&args.iter().map(String::as_str).collect::<Vec<_>>())
    };
    assert_eq!(admin(None, "/v2/repository/models/digits/load").0, 401);
    assert_eq!(
        admin(Some("token-a"), "/v2/repository/models/digits/load").0,
        403
    );
    assert_eq!(
        admin(Some("wrong"), "/v2/repository/models/digits/load").0,
        401
    );
    let (code, body) = admin(Some("admin-secret"), "/v2/repository/models/digits/load");
    assert_eq!(code, 200, "{body}");
    let (code, body) = admin(Some("admin-secret"), "/v2/repository/index");
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("digits-b"), "{body}");
    // An edge client with its token offloads over TLS; with a revoked token it falls back,
    // naming the reason.
    let edge = |token: &str| {
        json_lines(&run_ok(
            "edge-client",
            &[
                "run",
                "--cloud",
                &format!(
                    "https://localhost:{}",
                    cloud.addr.rsplit(':').next().unwrap()
                ),
                "--legacy",
                f.legacy.to_str().unwrap(),
                "--input",
                "digits:test",
                "--device-id",
                "device-a",
                "--ca-cert",
                ca.to_str().unwrap(),
                "--token",
                token,
                "--bundle",
                f.repo.join("digits/1").to_str().unwrap(),
                "--deadline-ms",
                "2000",
                "--sync-interval-secs",
                "0",
                "--telemetry-interval-secs",
                "0",
            ],
        ))
    };
    let ok = edge("token-a");
    assert!(ok.iter().all(|l| l["source"] != "fallback"));
    let revoked = edge("token-c");
    let reasons: Vec<&str> = revoked
        .iter()
        .filter_map(|l| l["fallback_reason"].as_str())
        .collect();
    assert!(
        reasons.first().is_some_and(|r| r.contains("revoked"))
            && reasons
                .iter()
                .all(|r| r.contains("Unauthenticated") || r.contains("circuit open")),
        "{reasons:?}"
    );
}

#[test]
fn tls_settings_are_validated_at_start() {
    let f = fixture();
    let err = run_err(
        "cloud-expert",
        &[
            "serve",
            "--repo",
            f.repo.to_str().unwrap(),
            "--addr",
            "127.0.0.1:0",
            "--http-addr",
            "off",
            "--auth",
            "cert",
        ],
    );
    assert!(err.contains("--auth cert needs mutual TLS"), "{err}");
    let err = run_err(
        "cloud-expert",
        &[
            "serve",
            "--repo",
            f.repo.to_str().unwrap(),
            "--addr",
            "127.0.0.1:0",
            "--http-addr",
            "off",
            "--auth",
            "token",
        ],
    );
    assert!(err.contains("--credentials"), "{err}");
    let err = run_err(
        "cloud-expert",
        &[
            "serve",
            "--repo",
            f.repo.to_str().unwrap(),
            "--addr",
            "127.0.0.1:0",
            "--http-addr",
            "off",
            "--tls-cert",
            "/nonexistent.pem",
            "--tls-key",
            "/nonexistent.key",
        ],
    );
    assert!(err.contains("/nonexistent"), "{err}");
}
