//! The cloud side of the offloading system: trains experts and rejectors with Learning-to-Help
//! (tch / libtorch), evaluates them against the baselines with the device's own ONNX engine, and
//! writes the model repository the servers and devices use.
#![warn(missing_docs)]

pub mod bench;
pub mod bench_serve;
pub mod config;
pub mod error;
pub mod evaluate;
pub mod legacy_model;
pub mod nets;
pub mod plot;
pub mod report;
pub mod serve;
pub mod stored;
pub mod train;

use config::{Cli, Command};
pub use error::CloudError;

/// Initialises tracing once: human-readable or JSON lines, filtered by `RUST_LOG` (default info).
pub fn init_telemetry(json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}

/// Validates the serve flags into a [`serve::ServeConfig`].
pub fn serve_config(a: &config::ServeArgs) -> Result<serve::ServeConfig, CloudError> {
    if a.max_batch == 0 || a.queue_depth == 0 || a.max_rows == 0 {
        return Err(CloudError::Config(
            "--max-batch, --queue-depth and --max-rows must be positive".into(),
        ));
    }
    if !(a.grace_secs.is_finite() && a.grace_secs >= 0.0) {
        return Err(CloudError::Config(
            "--grace-secs must be a non-negative number".into(),
        ));
    }
    Ok(serve::ServeConfig {
        repo: a.repo.clone(),
        batch: serve::batcher::BatchConfig {
            max_batch: a.max_batch,
            max_delay: std::time::Duration::from_micros(a.max_delay_us),
            queue_depth: a.queue_depth,
            artificial_delay: std::time::Duration::from_millis(a.expert_delay_ms),
            torch_threads: a.torch_threads,
        },
        max_rows: a.max_rows,
        max_message_bytes: a.max_message_bytes,
        grace: std::time::Duration::from_secs_f64(a.grace_secs),
    })
}

/// Runs one command and prints its result.
pub fn run(cli: Cli) -> Result<(), CloudError> {
    match cli.command {
        Command::Legacy(a) => {
            let out = legacy_model::run(&a)?;
            println!(
                "legacy model written to {} (trained on {} samples, test accuracy {:.2}%)",
                a.out.display(),
                out.trained_on,
                100.0 * out.test_accuracy
            );
        }
        Command::Train(a) => {
            let out = train::run(&a)?;
            println!("{}", out.report.table());
            if let Some(d) = out.report.export_max_abs_diff {
                println!("exported rejector vs tch: max |diff| = {d:e} on the test split");
            }
            println!("wrote {}", out.dir.display());
        }
        Command::Eval(a) => {
            let report = evaluate::run_eval(&a)?;
            println!("{}", report.table());
        }
        Command::CheckExport(a) => {
            let diff = evaluate::run_check(&a)?;
            println!("exported rejector matches tch: max |diff| = {diff:e}");
        }
        Command::Bench(a) => bench::run(&a)?,
        Command::BenchServe(a) => bench_serve::run(&a)?,
        Command::Serve(a) => {
            let cfg = serve_config(&a)?;
            let rt = tokio::runtime::Runtime::new().map_err(error::io_err(&a.repo))?;
            rt.block_on(async {
                let listener = tokio::net::TcpListener::bind(a.addr)
                    .await
                    .map_err(|e| CloudError::Config(format!("cannot listen on {}: {e}", a.addr)))?;
                let (tx, rx) = tokio::sync::oneshot::channel();
                tokio::spawn(async move {
                    if let Ok(addr) = rx.await {
                        // A line on stdout that scripts and tests wait for (no sleeping).
                        println!("ready on {addr}");
                    }
                });
                serve::run_with_ready(cfg, listener, serve::shutdown_signal(), Some(tx)).await
            })?;
        }
    }
    Ok(())
}
