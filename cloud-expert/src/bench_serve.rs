//! `cloud-expert bench-serve`: offload round trip over loopback at several concurrencies, and
//! server throughput with dynamic batching on versus off, against an in-process server.

use crate::config::BenchServeArgs;
use crate::error::CloudError;
use crate::serve::{self, batcher::BatchConfig, ServeConfig};
use offload_proto::v1 as pb;
use offload_shared::wire::encode_f32;
use std::time::{Duration, Instant};

fn pct(v: &mut [f64], q: f64) -> f64 {
    v.sort_by(f64::total_cmp);
    v[((v.len() - 1) as f64 * q).round() as usize]
}

/// Runs `concurrency` closed-loop clients for `duration`; returns (latencies in us, requests/s).
async fn load(
    url: &str,
    model: &str,
    d: usize,
    concurrency: usize,
    duration: Duration,
) -> Result<(Vec<f64>, f64), CloudError> {
    let channel = tonic::transport::Endpoint::from_shared(url.to_string())
        .map_err(|e| CloudError::Config(e.to_string()))?
        .tcp_nodelay(true)
        .connect()
        .await
        .map_err(|e| CloudError::Config(format!("connect: {e}")))?;
    let data = offload_shared::dataset::load_digits()?;
    let start = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..concurrency {
        let mut client = pb::expert_client::ExpertClient::new(channel.clone());
        let rows: Vec<Vec<f32>> = (0..64)
            .map(|i| data.row((w * 64 + i) % data.len())[..d].to_vec())
            .collect();
        let model = model.to_string();
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            let mut i = 0;
            while start.elapsed() < duration {
                let req = pb::InferRequest {
                    model: model.clone(),
                    input: Some(encode_f32(&rows[i % 64], &[1, d])),
                    ..Default::default()
                };
                let t = Instant::now();
                if client.infer(req).await.is_ok() {
                    lat.push(t.elapsed().as_secs_f64() * 1e6);
                }
                i += 1;
            }
            lat
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.map_err(|e| CloudError::Config(e.to_string()))?);
    }
    let rps = all.len() as f64 / start.elapsed().as_secs_f64();
    Ok((all, rps))
}

async fn with_server<F, Fut, T>(
    repo: &std::path::Path,
    batch: BatchConfig,
    f: F,
) -> Result<T, CloudError>
where
    F: FnOnce(String) -> Fut,
    Fut: std::future::Future<Output = Result<T, CloudError>>,
{
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(crate::error::io_err(repo))?;
    let mut cfg = ServeConfig::new(repo.to_path_buf(), batch);
    cfg.grace = Duration::from_secs(1);
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
    let server = tokio::spawn(serve::run(
        cfg,
        listener,
        None,
        async move {
            let _ = stop_rx.await;
        },
        Some(ready_tx),
    ));
    let ready = ready_rx
        .await
        .map_err(|_| CloudError::Config("server did not start".into()))?;
    let out = f(format!("http://{}", ready.grpc)).await;
    let _ = stop_tx.send(());
    let _ = server.await;
    out
}

/// Runs the serving benchmarks and prints the figures.
pub fn run(a: &BenchServeArgs) -> Result<(), CloudError> {
    let rt = tokio::runtime::Runtime::new().map_err(crate::error::io_err(&a.repo))?;
    let meta: offload_shared::repository::ExpertMeta = offload_shared::repository::read_json(
        &offload_shared::repository::Repository::new(&a.repo)
            .version_dir(&a.model, None)?
            .join("expert.json"),
    )?;
    let d: usize = meta.input_shape.iter().product();
    let secs = Duration::from_secs_f64(a.seconds);
    rt.block_on(async {
        let on = BatchConfig { max_batch: 64, max_delay: Duration::from_micros(a.max_delay_us), queue_depth: 1024, artificial_delay: Duration::ZERO, torch_threads: 1 };
        let off = BatchConfig { max_batch: 1, max_delay: Duration::ZERO, ..on };
        println!("offload round trip over loopback (model `{}`, batch-1 requests, {:.1} s per point):", a.model, a.seconds);
        with_server(&a.repo, on, |url| async move {
            for c in [1usize, 16, 64] {
                let (mut lat, rps) = load(&url, &a.model, d, c, secs).await?;
                println!("  batching on,  concurrency {c:>2}: p50 {:>7.0} us  p99 {:>7.0} us  {rps:>7.0} req/s", pct(&mut lat, 0.5), pct(&mut lat, 0.99));
            }
            Ok(())
        })
        .await?;
        let off_rps = with_server(&a.repo, off, |url| async move {
            let (mut lat, rps) = load(&url, &a.model, d, 64, secs).await?;
            println!("  batching off, concurrency 64: p50 {:>7.0} us  p99 {:>7.0} us  {rps:>7.0} req/s", pct(&mut lat, 0.5), pct(&mut lat, 0.99));
            Ok(rps)
        })
        .await?;
        let on_rps = with_server(&a.repo, on, |url| async move { Ok(load(&url, &a.model, d, 64, secs).await?.1) }).await?;
        println!("  throughput at concurrency 64: batching on {on_rps:.0} req/s vs off {off_rps:.0} req/s = {:.2}x", on_rps / off_rps.max(1e-9));
        Ok(())
    })
}
