//! With the `otlp` feature, request spans reach an OpenTelemetry collector over OTLP/HTTP: a
//! stand-in collector on loopback receives the export after an offload request.
#![cfg(feature = "otlp")]

use clap::Parser;
use cloud_expert::config::Cli;
use cloud_expert::serve::{self, batcher::BatchConfig, ServeConfig};
use offload_proto::v1 as pb;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tracing_subscriber::layer::SubscriberExt;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_spans_are_exported_to_the_collector() {
    // Stand-in collector: records every body POSTed to /v1/traces.
    let bodies: Arc<Mutex<Vec<Vec<u8>>>> = Arc::default();
    let sink = bodies.clone();
    let collector = axum::Router::new().route(
        "/v1/traces",
        axum::routing::post(move |body: axum::body::Bytes| {
            let sink = sink.clone();
            async move {
                sink.lock().unwrap().push(body.to_vec());
                axum::http::StatusCode::OK
            }
        }),
    );
    let coll = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let coll_addr = coll.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(coll, collector).await });

    let (layer, provider) =
        cloud_expert::telemetry::otlp_layer(&format!("http://{coll_addr}")).unwrap();
    tracing::subscriber::set_global_default(tracing_subscriber::registry().with(layer)).unwrap();

    let dir = tempfile::tempdir().unwrap();
    let (legacy, repo) = (dir.path().join("legacy.onnx"), dir.path().join("repo"));
    let (l, r) = (legacy.clone(), repo.clone());
    tokio::task::spawn_blocking(move || {
        cloud_expert::run(Cli::parse_from([
            "cloud-expert",
            "legacy",
            "--out",
            l.to_str().unwrap(),
        ]))
        .unwrap();
        cloud_expert::run(Cli::parse_from([
            "cloud-expert",
            "train",
            "--repo",
            r.to_str().unwrap(),
            "--legacy",
            l.to_str().unwrap(),
            "--epochs",
            "2",
            "--grid",
            "1,0.25",
            "--no-progress",
        ]))
        .unwrap();
    })
    .await
    .unwrap();
    let batch = BatchConfig {
        max_batch: 8,
        max_delay: Duration::from_millis(1),
        queue_depth: 16,
        artificial_delay: Duration::ZERO,
        torch_threads: 1,
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(serve::run(
        ServeConfig::new(repo, batch),
        listener,
        None,
        async move {
            let _ = stopped.await;
        },
        None,
    ));
    let mut client = loop {
        match pb::expert_client::ExpertClient::connect(format!("http://{addr}")).await {
            Ok(c) => break c,
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    };
    client
        .infer(pb::InferRequest {
            model: "digits".into(),
            input: Some(offload_shared::wire::encode_f32(&[1.0; 64], &[1, 64])),
            ..Default::default()
        })
        .await
        .unwrap();
    tokio::task::spawn_blocking(move || provider.force_flush().unwrap())
        .await
        .unwrap();
    let got = bodies.lock().unwrap().concat();
    let has = |needle: &[u8]| got.windows(needle.len()).any(|w| w == needle);
    assert!(
        has(b"Infer"),
        "no `Infer` span in {} exported bytes",
        got.len()
    );
    assert!(
        has(b"cloud-expert") && has(b"digits"),
        "service name or model missing"
    );
    let _ = stop.send(());
    server.await.unwrap().unwrap();
}
