//! Load generator for the reliability suite and the peer benchmark: many simulated devices, each
//! with its own HTTP/2 connection, send batch-1 requests back to back for a fixed time over
//! Open Inference Protocol v2 gRPC (`--protocol v2`, any v2 server) or `offload.v1`
//! (`--protocol offload`), and it prints one JSON line: throughput, latency percentiles and error
//! counts by status code.
//!
//! usage: loadgen --url http://127.0.0.1:PORT --model NAME [--protocol v2|offload]
//!        [--devices 16] [--concurrency 64] [--seconds 3] [--features 64] [--compare URL]
//! `--compare URL` first sends the same 32 inputs to both servers (v2) and reports the largest
//! probability difference, proving both serve the same weights.

use anyhow::{bail, Context};
use offload_proto::{inference as ipb, v1 as opb};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};
use tonic::transport::{Channel, Endpoint};

struct Args {
    url: String,
    model: String,
    protocol: String,
    devices: usize,
    concurrency: usize,
    seconds: f64,
    features: usize,
    compare: Option<String>,
}

fn parse() -> anyhow::Result<Args> {
    let mut a = Args {
        url: String::new(),
        model: "digits".into(),
        protocol: "v2".into(),
        devices: 16,
        concurrency: 64,
        seconds: 3.0,
        features: 64,
        compare: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut v = || it.next().with_context(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--url" => a.url = v()?,
            "--model" => a.model = v()?,
            "--protocol" => a.protocol = v()?,
            "--devices" => a.devices = v()?.parse()?,
            "--concurrency" => a.concurrency = v()?.parse()?,
            "--seconds" => a.seconds = v()?.parse()?,
            "--features" => a.features = v()?.parse()?,
            "--compare" => a.compare = Some(v()?),
            other => bail!("unknown flag {other}"),
        }
    }
    if a.url.is_empty() || a.devices == 0 || a.concurrency == 0 {
        bail!("--url is required; --devices and --concurrency must be positive");
    }
    Ok(a)
}

/// A deterministic input for request `i` (digits-like values in [0, 16)).
fn input(i: u64, d: usize) -> Vec<f32> {
    let mut s = i
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..d)
        .map(|_| {
            s = s.wrapping_mul(6364136223846793005).wrapping_add(1);
            ((s >> 33) % 17) as f32
        })
        .collect()
}

fn v2_request(model: &str, x: &[f32]) -> ipb::ModelInferRequest {
    ipb::ModelInferRequest {
        model_name: model.into(),
        inputs: vec![ipb::model_infer_request::InferInputTensor {
            name: "input".into(),
            datatype: "FP32".into(),
            shape: vec![1, x.len() as i64],
            ..Default::default()
        }],
        raw_input_contents: vec![x.iter().flat_map(|v| v.to_le_bytes()).collect()],
        ..Default::default()
    }
}

async fn v2_probs(ch: Channel, model: &str, x: &[f32]) -> anyhow::Result<Vec<f32>> {
    let mut c = ipb::grpc_inference_service_client::GrpcInferenceServiceClient::new(ch);
    let r = c.model_infer(v2_request(model, x)).await?.into_inner();
    let i = r
        .outputs
        .iter()
        .position(|o| o.name == "probabilities")
        .context("no `probabilities` output")?;
    let raw = r.raw_output_contents.get(i).context("no raw output")?;
    Ok(raw
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect())
}

async fn one(proto: &str, ch: &Channel, model: &str, x: &[f32]) -> Result<(), tonic::Code> {
    let r = if proto == "v2" {
        let mut c = ipb::grpc_inference_service_client::GrpcInferenceServiceClient::new(ch.clone());
        c.model_infer(v2_request(model, x)).await.map(|_| ())
    } else {
        let mut c = opb::expert_client::ExpertClient::new(ch.clone());
        c.infer(opb::InferRequest {
            model: model.into(),
            input: Some(offload_shared::wire::encode_f32(x, &[1, x.len()])),
            device_id: "loadgen".into(),
            ..Default::default()
        })
        .await
        .map(|_| ())
    };
    r.map_err(|s| s.code())
}

async fn channel(url: &str) -> anyhow::Result<Channel> {
    Ok(Endpoint::from_shared(url.to_string())?
        .tcp_nodelay(true)
        .connect()
        .await?)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let a = parse()?;
    if let Some(other) = &a.compare {
        let (c1, c2) = (channel(&a.url).await?, channel(other).await?);
        let mut max_diff = 0f32;
        for i in 0..32 {
            let x = input(i, a.features);
            let p = v2_probs(c1.clone(), &a.model, &x).await?;
            let q = v2_probs(c2.clone(), &a.model, &x).await?;
            if p.len() != q.len() || p.is_empty() {
                bail!("output lengths differ: {} vs {}", p.len(), q.len());
            }
            max_diff = p
                .iter()
                .zip(&q)
                .map(|(a, b)| (a - b).abs())
                .fold(max_diff, f32::max);
        }
        println!(
            "{}",
            serde_json::json!({"compare": other, "inputs": 32, "max_abs_diff": max_diff})
        );
    }
    let mut channels = Vec::new();
    for _ in 0..a.devices {
        channels.push(channel(&a.url).await?);
    }
    // Warm-up: one request per connection.
    for ch in &channels {
        let _ = one(&a.protocol, ch, &a.model, &input(0, a.features)).await;
    }
    let stop = Instant::now() + Duration::from_secs_f64(a.seconds);
    let started = Instant::now();
    let tasks: Vec<_> = (0..a.concurrency)
        .map(|w| {
            let ch = channels[w % channels.len()].clone();
            let (proto, model, d) = (a.protocol.clone(), a.model.clone(), a.features);
            tokio::spawn(async move {
                let mut lat = Vec::new();
                let mut errors: BTreeMap<String, u64> = BTreeMap::new();
                let mut i = w as u64;
                while Instant::now() < stop {
                    let x = input(i, d);
                    i += 1000;
                    let t = Instant::now();
                    match one(&proto, &ch, &model, &x).await {
                        Ok(()) => lat.push(t.elapsed().as_micros() as u64),
                        Err(code) => *errors.entry(format!("{code:?}")).or_default() += 1,
                    }
                }
                (lat, errors)
            })
        })
        .collect();
    let mut lat = Vec::new();
    let mut errors: BTreeMap<String, u64> = BTreeMap::new();
    for t in tasks {
        let (l, e) = t.await?;
        lat.extend(l);
        for (k, v) in e {
            *errors.entry(k).or_default() += v;
        }
    }
    let secs = started.elapsed().as_secs_f64();
    lat.sort_unstable();
    let pct = |q: f64| {
        if lat.is_empty() {
            0
        } else {
            lat[((lat.len() - 1) as f64 * q).round() as usize]
        }
    };
    println!(
        "{}",
        serde_json::json!({
            "protocol": a.protocol, "devices": a.devices, "concurrency": a.concurrency,
            "seconds": secs, "ok": lat.len(), "errors": errors,
            "rps": lat.len() as f64 / secs,
            "p50_us": pct(0.5), "p99_us": pct(0.99), "p999_us": pct(0.999),
        })
    );
    Ok(())
}
