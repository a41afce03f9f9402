//! `edge-client` binary: parse the configuration, set up logging, run one mode.
use clap::{Parser, Subcommand};
use edge_client::config::DeviceArgs;
use std::path::PathBuf;
use std::time::Instant;

/// Device-side offloading client (pure Rust, no libtorch).
#[derive(Debug, Parser)]
#[command(name = "edge-client", version)]
struct Cli {
    /// Optional TOML file with the device settings (flags and environment variables win).
    #[arg(long, env = "EDGE_CONFIG", global = true)]
    config: Option<PathBuf>,
    /// Log as JSON lines.
    #[arg(long, env = "EDGE_LOG_JSON", global = true)]
    log_json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Answer every input of a file: one JSON line per input on stdout (or --out), summary on stderr.
    Run {
        #[command(flatten)]
        device: DeviceArgs,
        /// Inputs: digits, digits:test (a split), csv:PATH, npy:X,Y.
        #[arg(long, env = "EDGE_INPUT", default_value = "digits:test")]
        input: String,
        /// Seed of the split named in --input.
        #[arg(long, env = "EDGE_SPLIT_SEED", default_value_t = 0)]
        split_seed: u64,
        /// Write the JSON lines here instead of stdout.
        #[arg(long, env = "EDGE_OUT")]
        out: Option<PathBuf>,
        /// Pause between inputs in milliseconds (simulates a sensor's input rate).
        #[arg(long, env = "EDGE_INTERVAL_MS", default_value_t = 0)]
        interval_ms: u64,
    },
    /// Serve POST /predict, GET /health and GET /stats for applications on the device.
    Serve {
        #[command(flatten)]
        device: DeviceArgs,
        /// Address of the local HTTP endpoint.
        #[arg(long, env = "EDGE_LISTEN", default_value = "127.0.0.1:8080")]
        listen: std::net::SocketAddr,
    },
    /// Decide local/offload offline from a repository version (no cloud); JSON lines on stdout.
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
    /// Per-input latency of m + r (p50/p99) from a repository version.
    Bench {
        /// Bundle directory.
        #[arg(long, env = "EDGE_BUNDLE")]
        bundle: PathBuf,
        /// Timed decisions.
        #[arg(long, default_value_t = 5000)]
        iterations: usize,
    },
}

fn settings(
    config: Option<&std::path::Path>,
    device: DeviceArgs,
) -> anyhow::Result<edge_client::config::Settings> {
    let file = match config {
        Some(p) => DeviceArgs::from_toml(p).map_err(anyhow::Error::msg)?,
        None => DeviceArgs::default(),
    };
    device
        .merged_with(file)
        .settings()
        .map_err(anyhow::Error::msg)
}

fn init_logging(json: bool) {
    let filter =
        tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json {
        b.json().init()
    } else {
        b.init()
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    init_logging(cli.log_json);
    match cli.command {
        Command::Run {
            device,
            input,
            split_seed,
            out,
            interval_ms,
        } => {
            let s = settings(cli.config.as_deref(), device)?;
            let edge = edge_client::device::start(&s)
                .await
                .map_err(anyhow::Error::msg)?;
            let sync = edge_client::device::spawn_sync_loop(edge.clone(), s.sync_interval);
            let telemetry =
                edge_client::device::spawn_telemetry_loop(edge.clone(), s.telemetry_interval);
            let data = edge_client::run_cmd::load_inputs(&input, split_seed)
                .map_err(anyhow::Error::msg)?;
            let mut sink: Box<dyn std::io::Write> = match &out {
                Some(p) => Box::new(std::io::BufWriter::new(std::fs::File::create(p)?)),
                None => Box::new(std::io::stdout().lock()),
            };
            let summary = edge_client::run_cmd::run(
                edge.clone(),
                &data,
                sink.as_mut(),
                std::time::Duration::from_millis(interval_ms),
            )
            .await
            .map_err(anyhow::Error::msg)?;
            sink.flush()?;
            for t in [sync, telemetry].into_iter().flatten() {
                t.abort();
            }
            if edge.has_cloud() && !s.telemetry_interval.is_zero() {
                // Final report so the fleet counters include this run.
                if let Err(e) = edge
                    .report_telemetry(std::time::Duration::from_secs(2))
                    .await
                {
                    tracing::warn!(reason = %e, "final telemetry report failed");
                }
            }
            eprintln!("{}", serde_json::to_string(&summary)?);
        }
        Command::Serve { device, listen } => {
            let s = settings(cli.config.as_deref(), device)?;
            let edge = edge_client::device::start(&s)
                .await
                .map_err(anyhow::Error::msg)?;
            let _sync = edge_client::device::spawn_sync_loop(edge.clone(), s.sync_interval);
            let _telemetry =
                edge_client::device::spawn_telemetry_loop(edge.clone(), s.telemetry_interval);
            let listener = tokio::net::TcpListener::bind(listen).await?;
            let bound = listener.local_addr()?;
            tracing::info!(%bound, "device endpoint up");
            // A line on stdout that scripts and tests wait for.
            println!("listening on {bound}");
            axum::serve(listener, edge_client::http::app(edge))
                .with_graceful_shutdown(async {
                    let _ = tokio::signal::ctrl_c().await;
                })
                .await?;
        }
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
