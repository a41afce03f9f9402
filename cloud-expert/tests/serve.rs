//! The gRPC server for real: a repository trained by the library, served on an ephemeral
//! loopback port, driven by the generated client.

use clap::Parser;
use cloud_expert::config::{Cli, Command};
use cloud_expert::serve::{self, batcher::BatchConfig, ServeConfig};
use offload_proto::v1 as pb;
use offload_shared::wire::encode_f32;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;
use tonic::Code;

/// A small trained repository shared by the tests of this file.
fn repo() -> &'static Path {
    static REPO: OnceLock<(tempfile::TempDir, PathBuf)> = OnceLock::new();
    let (_, p) = REPO.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let legacy = dir.path().join("legacy.onnx");
        let repo = dir.path().join("repo");
        let cli = Cli::parse_from(["cloud-expert", "legacy", "--out", legacy.to_str().unwrap()]);
        cloud_expert::run(cli).unwrap();
        let cli = Cli::parse_from([
            "cloud-expert",
            "train",
            "--repo",
            repo.to_str().unwrap(),
            "--legacy",
            legacy.to_str().unwrap(),
            "--epochs",
            "5",
            "--grid",
            "1,0.25",
            "--no-progress",
            "--rejector-agreement",
        ]);
        assert!(matches!(cli.command, Command::Train(_)));
        cloud_expert::run(cli).unwrap();
        (dir, repo)
    });
    p
}

fn config(batch: BatchConfig) -> ServeConfig {
    let mut cfg = ServeConfig::new(repo().to_path_buf(), batch);
    cfg.max_rows = 16;
    cfg.max_message_bytes = 64 * 1024;
    cfg
}

fn default_batch() -> BatchConfig {
    BatchConfig {
        max_batch: 32,
        max_delay: Duration::from_millis(2),
        queue_depth: 64,
        artificial_delay: Duration::ZERO,
        torch_threads: 1,
    }
}

/// A running server: its address, the trigger that stops it, and its task (joined by `stop`,
/// which re-raises a panic or error from the server).
struct Running {
    addr: std::net::SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<Result<(), cloud_expert::CloudError>>,
}

impl Running {
    async fn start(cfg: ServeConfig) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(serve::run(
            cfg,
            listener,
            None,
            async move {
                let _ = rx.await;
            },
            None,
        ));
        Self {
            addr,
            stop: Some(tx),
            task,
        }
    }

    async fn expert(&self) -> pb::expert_client::ExpertClient<tonic::transport::Channel> {
        pb::expert_client::ExpertClient::connect(format!("http://{}", self.addr))
            .await
            .unwrap()
    }

    async fn stop(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        self.task
            .await
            .expect("server task panicked")
            .expect("server failed");
    }
}

fn request(rows: &[f32], n: usize) -> pb::InferRequest {
    pb::InferRequest {
        model: "digits".into(),
        input: Some(encode_f32(rows, &[n, 64])),
        request_id: "r1".into(),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expert_answers_match_the_stored_expert_and_bundles_verify() {
    let server = Running::start(config(default_batch())).await;
    let mut client = server.expert().await;
    let data = offload_shared::dataset::load_digits().unwrap();
    let expert = cloud_expert::stored::LoadedExpert::load(&repo().join("digits/1")).unwrap();
    for i in [0, 5, 17] {
        let resp = client
            .infer(request(data.row(i), 1))
            .await
            .unwrap()
            .into_inner();
        let probs = expert.probs(data.row(i), 1).unwrap();
        assert_eq!(
            resp.labels,
            vec![offload_shared::legacy::argmax(&probs) as u32]
        );
        assert_eq!(resp.num_classes, 10);
        assert_eq!(
            (resp.expert_version.as_str(), resp.request_id.as_str()),
            ("1", "r1")
        );
        for (a, b) in resp.probabilities.iter().zip(&probs) {
            assert!((a - b).abs() < 1e-6);
        }
        assert!(resp.timing.unwrap().batch_size >= 1);
    }
    // Two rows in one request.
    let two: Vec<f32> = [data.row(0), data.row(1)].concat();
    assert_eq!(
        client
            .infer(request(&two, 2))
            .await
            .unwrap()
            .into_inner()
            .labels
            .len(),
        2
    );

    let channel = tonic::transport::Channel::from_shared(format!("http://{}", server.addr))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel.clone());
    let h = health
        .check(tonic_health::pb::HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap();
    assert_eq!(
        h.into_inner().status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );

    let mut sync = pb::model_sync_client::ModelSyncClient::new(channel);
    let meta: offload_shared::repository::RejectorMeta =
        offload_shared::repository::read_json(&repo().join("digits/1/rejector.json")).unwrap();
    let b = sync
        .get_rejector_bundle(pb::BundleRequest {
            model: "digits".into(),
            legacy_sha256: meta.legacy_sha256.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(offload_shared::engine::sha256_hex(&b.onnx), b.sha256);
    assert_eq!(
        (b.version.as_str(), b.unchanged, b.uses_legacy_probs),
        ("1", false, true)
    );
    assert_eq!(b.score_quantiles.len(), 101);
    let same = sync
        .get_rejector_bundle(pb::BundleRequest {
            model: "digits".into(),
            current_version: "1".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(same.unchanged && same.onnx.is_empty());
    let err = sync
        .get_rejector_bundle(pb::BundleRequest {
            model: "digits".into(),
            legacy_sha256: "00".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_are_refused_naming_the_field() {
    let server = Running::start(config(default_batch())).await;
    let mut client = server.expert().await;
    let row = vec![1.0f32; 64];
    let cases: Vec<(pb::InferRequest, Code, &str)> = vec![
        (
            {
                let mut r = request(&row, 1);
                r.input.as_mut().unwrap().dtype = 0;
                r
            },
            Code::InvalidArgument,
            "input.dtype",
        ),
        (
            {
                let mut r = request(&row, 1);
                r.input.as_mut().unwrap().shape = vec![1, 63];
                r
            },
            Code::InvalidArgument,
            "input.shape",
        ),
        (
            {
                let mut r = request(&row, 1);
                r.input.as_mut().unwrap().raw.truncate(100);
                r
            },
            Code::InvalidArgument,
            "input.raw",
        ),
        (
            request(&[vec![f32::NAN], vec![0.0; 63]].concat(), 1),
            Code::InvalidArgument,
            "not finite",
        ),
        (
            {
                let mut r = request(&row, 1);
                r.input = None;
                r
            },
            Code::InvalidArgument,
            "input",
        ),
        (
            {
                let mut r = request(&row, 1);
                r.model = "nope".into();
                r
            },
            Code::NotFound,
            "model",
        ),
        (
            {
                let mut r = request(&row, 1);
                r.version = "7".into();
                r
            },
            Code::NotFound,
            "version",
        ),
        (
            request(&vec![0.0; 64 * 17], 17),
            Code::InvalidArgument,
            "limit of 16",
        ),
        (request(&vec![0.0; 64 * 300], 300), Code::OutOfRange, ""),
    ];
    for (req, code, needle) in cases {
        let err = client.infer(req).await.unwrap_err();
        assert_eq!(err.code(), code, "{}", err.message());
        assert!(
            err.message().contains(needle),
            "{} lacks {needle}",
            err.message()
        );
    }
    // The server is still healthy and answering.
    assert!(client.infer(request(&row, 1)).await.is_ok());
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_run_in_shared_batches() {
    let batch = BatchConfig {
        max_delay: Duration::from_millis(20),
        ..default_batch()
    };
    let server = Running::start(config(batch)).await;
    let client = server.expert().await;
    let row = vec![3.0f32; 64];
    let handles: Vec<_> = (0..24)
        .map(|_| {
            let mut c = client.clone();
            let req = request(&row, 1);
            tokio::spawn(async move {
                c.infer(req)
                    .await
                    .unwrap()
                    .into_inner()
                    .timing
                    .unwrap()
                    .batch_size
            })
        })
        .collect();
    let mut max = 0;
    for h in handles {
        max = max.max(h.await.unwrap());
    }
    assert!(max > 1, "no request was batched with another");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_answers_unavailable_and_late_requests_are_dropped() {
    let batch = BatchConfig {
        max_batch: 1,
        max_delay: Duration::ZERO,
        queue_depth: 1,
        artificial_delay: Duration::from_millis(150),
        torch_threads: 1,
    };
    let server = Running::start(config(batch)).await;
    let client = server.expert().await;
    let row = vec![1.0f32; 64];
    let handles: Vec<_> = (0..8)
        .map(|_| {
            let mut c = client.clone();
            let req = request(&row, 1);
            tokio::spawn(async move { c.infer(req).await.map(|_| ()).map_err(|e| e.code()) })
        })
        .collect();
    let mut codes = Vec::new();
    for h in handles {
        codes.push(h.await.unwrap());
    }
    assert!(codes.iter().any(|c| c.is_ok()), "{codes:?}");
    assert!(codes.contains(&Err(Code::Unavailable)), "{codes:?}");
    // A client deadline shorter than the expert's delay: answered with a deadline error, not a hang.
    let mut c = client.clone();
    let mut req = tonic::Request::new(request(&row, 1));
    req.set_timeout(Duration::from_millis(50));
    let started = std::time::Instant::now();
    let err = c.infer(req).await.unwrap_err();
    // tonic's client reports its own timer as CANCELLED; the server's drop as DEADLINE_EXCEEDED.
    assert!(
        matches!(err.code(), Code::DeadlineExceeded | Code::Cancelled),
        "{err:?}"
    );
    assert!(started.elapsed() < Duration::from_millis(1000));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_lets_in_flight_requests_finish() {
    let batch = BatchConfig {
        artificial_delay: Duration::from_millis(300),
        ..default_batch()
    };
    let mut server = Running::start(config(batch)).await;
    let mut client = server.expert().await;
    let row = vec![1.0f32; 64];
    let inflight = tokio::spawn(async move { client.infer(request(&row, 1)).await });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let _ = server.stop.take().unwrap().send(());
    let resp = inflight.await.unwrap();
    assert!(resp.is_ok(), "in-flight request lost: {resp:?}");
    server.stop().await;
}
