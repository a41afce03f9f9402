//! `edge-client` binary: decide offline over a data split, or benchmark the decision latency.
use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::time::Instant;

/// Device-side offloading client (pure Rust, no libtorch).
#[derive(Debug, Parser)]
#[command(name = "edge-client", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Decide local/offload for every input of a split; prints one JSON line per input and a summary.
    Decide {
        /// Bundle directory (a model-repository version).
        #[arg(long, env = "EDGE_BUNDLE")]
        bundle: PathBuf,
        /// Data source (digits, csv:PATH, npy:X,Y, ...).
        #[arg(long, env = "EDGE_DATA", default_value = "digits")]
        data: String,
        /// Override the decision threshold.
        #[arg(long, env = "EDGE_THRESHOLD")]
        threshold: Option<f32>,
    },
    /// Per-input latency of m + r (p50/p99).
    Bench {
        /// Bundle directory.
        #[arg(long, env = "EDGE_BUNDLE")]
        bundle: PathBuf,
        /// Timed decisions.
        #[arg(long, default_value_t = 5000)]
        iterations: usize,
    },
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Decide {
            bundle,
            data,
            threshold,
        } => {
            let models = edge_client::EdgeModels::load(&bundle)?;
            let ds = offload_shared::dataset::DataSource::parse(&data, None)?.load()?;
            let mut offloads = 0;
            for i in 0..ds.len() {
                let d = models.decide(ds.row(i), threshold)?;
                offloads += d.offload as usize;
                println!(
                    "{}",
                    serde_json::json!({"id": i, "label": ds.labels()[i], "decision": d})
                );
            }
            eprintln!(
                "{} inputs, {} offloaded ({:.1}%)",
                ds.len(),
                offloads,
                100.0 * offloads as f64 / ds.len().max(1) as f64
            );
        }
        Command::Bench { bundle, iterations } => {
            let models = edge_client::EdgeModels::load(&bundle)?;
            let ds = offload_shared::dataset::load_digits()?;
            let mut lat = Vec::with_capacity(iterations);
            for i in 0..iterations + 200 {
                let t = Instant::now();
                let d = models.decide(ds.row(i % ds.len()), None)?;
                std::hint::black_box(d);
                if i >= 200 {
                    lat.push(t.elapsed().as_secs_f64() * 1e6);
                }
            }
            lat.sort_by(f64::total_cmp);
            let p = |q: f64| lat[((lat.len() - 1) as f64 * q).round() as usize];
            println!(
                "edge decision m + r: {} inputs, p50 {:.1} us, p99 {:.1} us",
                lat.len(),
                p(0.5),
                p(0.99)
            );
        }
    }
    Ok(())
}
