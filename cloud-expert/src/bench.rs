//! `cloud-expert bench`: training throughput of the L2H loop and the per-input decision latency
//! of `m` + `r` in the device engine, on the bundled digits task.

use crate::config::{BenchArgs, Cli, Command};
use crate::error::{io_err, CloudError};
use clap::Parser;
use std::time::Instant;

/// Percentile (nearest rank) of sorted values.
fn pct(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((p / 100.0) * (sorted.len() - 1) as f64).round() as usize]
}

/// Runs the benchmarks and prints the figures.
pub fn run(a: &BenchArgs) -> Result<(), CloudError> {
    let dir = std::env::temp_dir().join(format!("cloud-expert-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(io_err(&dir))?;
    let legacy = dir.join("legacy.onnx");
    let repo = dir.join("repo");
    let parse = |args: Vec<String>| {
        Cli::try_parse_from(args).map_err(|e| CloudError::Config(e.to_string()))
    };
    let cli = parse(vec![
        "cloud-expert".into(),
        "legacy".into(),
        "--out".into(),
        legacy.display().to_string(),
    ])?;
    if let Command::Legacy(l) = &cli.command {
        crate::legacy_model::run(l)?;
    }
    let epochs = a.epochs.to_string();
    let cli = parse(
        [
            "cloud-expert",
            "train",
            "--repo",
            &repo.display().to_string(),
            "--legacy",
            &legacy.display().to_string(),
            "--grid",
            "1,0.25",
            "--epochs",
            &epochs,
            "--patience",
            "1000",
            "--no-progress",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect(),
    )?;
    let Command::Train(t) = &cli.command else {
        return Err(CloudError::Config("bench: unexpected command".into()));
    };
    let outcome = crate::train::run(t)?;
    let tr = &outcome.report.training["1,0.25"];
    let sps = tr["samples_per_sec"].as_f64().unwrap_or(f64::NAN);
    println!("training throughput (stage-switching, mlp:256,128 expert + mlp:64 rejector, batch 32, CPU): {sps:.0} samples/s");

    let stored = crate::stored::load(&repo, "digits", None)?;
    let splits = stored.expert_meta.dataset.load_splits()?;
    let test = &splits.test;
    let (mut lat_m, mut lat_r, mut lat_total) = (Vec::new(), Vec::new(), Vec::new());
    let mut offloads = 0usize;
    let rounds = 20;
    for round in 0..rounds {
        for i in 0..test.len() {
            let x = test.row(i);
            let t0 = Instant::now();
            let probs = stored.legacy.predict_proba(x, 1)?;
            let t1 = Instant::now();
            let out = stored.rejector.outputs(x, &probs, 1)?;
            let t2 = Instant::now();
            if round > 0 {
                lat_m.push((t1 - t0).as_secs_f64() * 1e6);
                lat_r.push((t2 - t1).as_secs_f64() * 1e6);
                lat_total.push((t2 - t0).as_secs_f64() * 1e6);
            }
            // Consume the output so the timed work cannot be optimised away.
            offloads += (out[0] > 0.5) as usize;
        }
    }
    for v in [&mut lat_m, &mut lat_r, &mut lat_total] {
        v.sort_by(f64::total_cmp);
    }
    println!(
        "device decision latency over {} inputs (batch 1, tract, one thread):",
        lat_total.len()
    );
    for (name, v) in [
        ("m (legacy)", &lat_m),
        ("r (rejector)", &lat_r),
        ("m + r", &lat_total),
    ] {
        println!(
            "  {name:<13} p50 {:>7.1} us   p99 {:>7.1} us",
            pct(v, 50.0),
            pct(v, 99.0)
        );
    }
    tracing::debug!(offloads, "bench done");
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
