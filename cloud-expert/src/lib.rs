//! The cloud side of the offloading system: trains experts and rejectors with Learning-to-Help
//! (tch / libtorch), evaluates them against the baselines with the device's own ONNX engine, and
//! writes the model repository the servers and devices use.
#![warn(missing_docs)]

pub mod analysis;
pub mod bench;
pub mod bench_serve;
pub mod config;
pub mod error;
pub mod evaluate;
pub mod legacy_model;
pub mod llm;
pub mod nets;
pub mod plot;
pub mod report;
pub mod serve;
pub mod stored;
pub mod telemetry;
pub mod train;

use config::{Cli, Command};
pub use error::CloudError;

/// Validates the serve flags into a [`serve::ServeConfig`] (reads the credentials file).
pub fn serve_config(a: &config::ServeArgs) -> Result<serve::ServeConfig, CloudError> {
    if a.max_batch == 0
        || a.queue_depth == 0
        || a.max_rows == 0
        || a.max_message_bytes == 0
        || a.max_in_flight == 0
        || a.max_streams == 0
    {
        return Err(CloudError::Config(
            "--max-batch, --queue-depth, --max-rows, --max-message-bytes, --max-in-flight and --max-streams must be positive"
                .into(),
        ));
    }
    let secs = |v: f64, flag: &str| {
        if v.is_finite() && v >= 0.0 {
            Ok(std::time::Duration::from_secs_f64(v))
        } else {
            Err(CloudError::Config(format!(
                "{flag} must be a non-negative number"
            )))
        }
    };
    let grace = secs(a.grace_secs, "--grace-secs")?;
    let poll = secs(a.poll_secs, "--poll-secs")?;
    if !(a.rate_per_device.is_finite() && a.rate_per_device >= 0.0) {
        return Err(CloudError::Config(
            "--rate-per-device must be a non-negative number".into(),
        ));
    }
    let rate = (a.rate_per_device > 0.0).then(|| serve::limits::RateConfig {
        per_second: a.rate_per_device,
        burst: a.rate_burst.unwrap_or(a.rate_per_device).max(1.0),
    });
    let tls = match (&a.tls_cert, &a.tls_key) {
        (Some(cert), Some(key)) => Some(serve::tls::TlsSettings {
            cert: cert.clone(),
            key: key.clone(),
            client_ca: a.tls_client_ca.clone(),
            client_optional: a.tls_client_optional,
        }),
        (None, None) if a.tls_client_ca.is_none() => None,
        _ => {
            return Err(CloudError::Config(
                "TLS needs both --tls-cert and --tls-key (and --tls-client-ca only with them)"
                    .into(),
            ))
        }
    };
    if a.auth == serve::auth::AuthMode::Cert && tls.as_ref().is_none_or(|t| t.client_ca.is_none()) {
        return Err(CloudError::Config(
            "--auth cert needs mutual TLS: --tls-cert, --tls-key and --tls-client-ca".into(),
        ));
    }
    let mut auth = serve::auth::Auth::load(a.auth, a.credentials.as_deref())
        .map_err(|e| CloudError::Config(e.to_string()))?;
    if let Some(t) = &a.admin_token {
        auth.add_admin_token(t);
    }
    let mut cfg = serve::ServeConfig::new(
        a.repo.clone(),
        serve::batcher::BatchConfig {
            max_batch: a.max_batch,
            max_delay: std::time::Duration::from_micros(a.max_delay_us),
            queue_depth: a.queue_depth,
            artificial_delay: std::time::Duration::from_millis(a.expert_delay_ms),
            torch_threads: a.torch_threads,
        },
    );
    cfg.max_rows = a.max_rows;
    cfg.max_message_bytes = a.max_message_bytes;
    if a.analysis_max_points == 0
        || a.analysis_max_body_mb == 0
        || a.analysis_max_concurrent == 0
        || a.analysis_max_jobs == 0
    {
        return Err(CloudError::Config(
            "--analysis-max-points, --analysis-max-body-mb, --analysis-max-concurrent and --analysis-max-jobs must be positive".into(),
        ));
    }
    cfg.analysis = serve::analysis::AnalysisLimits {
        max_points: a.analysis_max_points,
        max_values: a.analysis_max_values,
        max_body_bytes: a.analysis_max_body_mb << 20,
        max_concurrent: a.analysis_max_concurrent,
        max_jobs: a.analysis_max_jobs,
    };
    cfg.grace = grace;
    cfg.health_addr = a.health_addr;
    cfg.keep_versions = a.keep_versions.max(1);
    cfg.poll = (!poll.is_zero()).then_some(poll);
    cfg.rate = rate;
    cfg.auth = auth;
    cfg.tls = tls;
    cfg.max_in_flight = a.max_in_flight;
    cfg.max_streams_per_connection = a.max_streams;
    cfg.llm = llm_config(&a.llm)?;
    Ok(cfg)
}

/// Validates the LLM flags (None without `--llm`).
fn llm_config(a: &config::LlmArgs) -> Result<Option<serve::llm::LlmServeConfig>, CloudError> {
    let Some(model) = &a.llm else {
        if !a.adapters.is_empty() {
            return Err(CloudError::Config("--adapter needs --llm".into()));
        }
        return Ok(None);
    };
    if a.llm_max_seqs == 0
        || a.llm_max_prompt_tokens == 0
        || a.llm_max_new_tokens == 0
        || a.llm_threads == 0
    {
        return Err(CloudError::Config(
            "--llm-max-seqs, --llm-max-prompt-tokens, --llm-max-new-tokens and --llm-threads must be positive".into(),
        ));
    }
    let adapters = a
        .adapters
        .iter()
        .map(|s| {
            s.split_once('=')
                .map(|(n, d)| (n.to_string(), std::path::PathBuf::from(d)))
                .ok_or_else(|| CloudError::Config(format!("--adapter `{s}` is not NAME=DIR")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let name = a.llm_name.clone().unwrap_or_else(|| {
        model
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "llm".into())
    });
    Ok(Some(serve::llm::LlmServeConfig {
        model: model.clone(),
        name,
        precision: a.llm_precision,
        engine: llm::engine::EngineConfig {
            max_seqs: a.llm_max_seqs,
            max_queue: a.llm_max_queue,
            max_prompt_tokens: a.llm_max_prompt_tokens,
            max_new_tokens: a.llm_max_new_tokens,
            threads: a.llm_threads,
            step_delay: std::time::Duration::from_millis(a.llm_step_delay_ms),
        },
        adapters,
        max_loaded_adapters: a.max_loaded_adapters.max(1),
        lsr_mode: a.lsr_mode,
        adapter_root: a.adapter_root.clone(),
    }))
}

/// Binds the serve listeners and runs the server until SIGINT/SIGTERM, printing
/// `ready on GRPC_ADDR http HTTP_ADDR` once every model is warm.
async fn serve_cmd(a: &config::ServeArgs, cfg: serve::ServeConfig) -> Result<(), CloudError> {
    let bind = |addr: std::net::SocketAddr| async move {
        tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|e| CloudError::Config(format!("cannot listen on {addr}: {e}")))
    };
    let grpc = bind(a.addr).await?;
    let http = match a.http_addr.as_str() {
        "off" | "" => None,
        s => Some(
            bind(
                s.parse()
                    .map_err(|e| CloudError::Config(format!("--http-addr `{s}`: {e}")))?,
            )
            .await?,
        ),
    };
    let (tx, rx) = tokio::sync::oneshot::channel::<serve::Ready>();
    tokio::spawn(async move {
        if let Ok(r) = rx.await {
            // A line on stdout that scripts and tests wait for (no sleeping).
            let http = r.http.map(|h| format!(" http {h}")).unwrap_or_default();
            let health = r.health.map(|h| format!(" health {h}")).unwrap_or_default();
            println!("ready on {}{http}{health}", r.grpc);
        }
    });
    serve::run(cfg, grpc, http, serve::shutdown_signal(), Some(tx)).await
}

/// `cloud-expert finetune`: trains, saves, and prints the evaluation table.
fn finetune_cmd(a: &config::FinetuneArgs) -> Result<(), CloudError> {
    use llm::finetune::{self, FinetuneConfig, Method};
    let targets = a
        .targets
        .split(',')
        .map(|t| {
            llm::adapter::Module::parse(t)
                .ok_or_else(|| CloudError::Config(format!("--targets: unknown module `{t}`")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let init = match a.init.as_str() {
        "zero" => llm::lsr::Init::Zero,
        "small-random" => llm::lsr::Init::SmallRandom,
        o => {
            return Err(CloudError::Config(format!(
                "--init `{o}`: zero or small-random"
            )))
        }
    };
    let method = match a.method.as_str() {
        "lsr" => Method::Lsr {
            s: a.separation_rank,
            r1: a.r1,
            r2: a.r2,
            init,
        },
        "lora" => Method::Lora {
            r: a.lora_r.unwrap_or(a.r1 * a.r2),
        },
        o => return Err(CloudError::Config(format!("--method `{o}`: lsr or lora"))),
    };
    tch::set_num_threads(a.threads.max(1) as i32);
    let fail = |e: llm::finetune::FinetuneError| CloudError::Load(e.to_string());
    let loaded = llm::load::load(&a.model, tch::Device::Cpu)
        .map_err(|e| CloudError::Load(format!("{}: {e}", a.model.display())))?;
    let (model, tok) = (&loaded.model, &loaded.tokenizer);
    let (train, skipped) = finetune::load_jsonl(&a.train, tok, a.max_len).map_err(fail)?;
    let eval = match &a.eval {
        Some(p) => finetune::load_jsonl(p, tok, a.max_len).map_err(fail)?.0,
        None => Vec::new(),
    };
    let base_name = a
        .model
        .file_stem()
        .map_or("base".into(), |s| s.to_string_lossy().into_owned());
    let cfg = FinetuneConfig {
        method,
        alpha: a.alpha,
        targets,
        lr: a.lr,
        weight_decay: a.weight_decay,
        steps: a.steps,
        batch: a.batch,
        grad_accum: a.grad_accum,
        clip: a.clip,
        eval_every: a.eval_every,
        checkpoint_every: a.checkpoint_every,
        seed: a.seed,
        max_len: a.max_len,
        max_new_tokens: a.max_new_tokens,
        resume: a.resume,
        progress: true,
    };
    println!(
        "fine-tuning {} ({}) on {} examples ({} skipped as longer than {} tokens), {} eval",
        base_name,
        a.method,
        train.len(),
        skipped,
        a.max_len,
        eval.len()
    );
    if a.eval_base && !eval.is_empty() {
        let r = finetune::evaluate(model, tok, None, &eval, a.max_new_tokens).map_err(fail)?;
        println!(
            "base model: eval loss {:.4}, exact match {:.1}% ({} examples)",
            r.loss,
            100.0 * r.accuracy,
            r.n
        );
    }
    let (_, report) = finetune::run(model, tok, &base_name, &train, &eval, skipped, &cfg, &a.out)
        .map_err(fail)?;
    if let Some((step, r)) = report.evals.last() {
        println!(
            "{} after {step} steps: eval loss {:.4}, exact match {:.1}% ({} examples)",
            report.method,
            r.loss,
            100.0 * r.accuracy,
            r.n
        );
    }
    println!(
        "trainable parameters {} (bottleneck {}), {:.3} s/step, final train loss {:.4}; adapter written to {}",
        report.trainable_parameters,
        report.bottleneck,
        report.seconds_per_step,
        report.final_train_loss,
        a.out.display()
    );
    Ok(())
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
        Command::Finetune(a) => finetune_cmd(&a)?,
        Command::Analyze(a) => {
            let report = analysis::cli::run(&a).map_err(|e| CloudError::Config(e.to_string()))?;
            let text = serde_json::to_string_pretty(&report).unwrap_or_default();
            match &a.json {
                Some(p) => std::fs::write(p, text)
                    .map_err(|e| CloudError::Config(format!("{}: {e}", p.display())))?,
                None => println!("{text}"),
            }
        }
        Command::BenchAnalysis(a) => {
            if a.n < 3 || a.d == 0 {
                return Err(CloudError::Config(
                    "--n must be at least 3 and --d positive".into(),
                ));
            }
            let reference = a
                .reference
                .as_ref()
                .and_then(|p| std::fs::read_to_string(p).ok())
                .and_then(|t| serde_json::from_str(&t).ok());
            let r = analysis::bench::run(a.n, a.d, a.threads.max(1), reference);
            if let Some(p) = &a.json {
                std::fs::write(p, r.to_string())
                    .map_err(|e| CloudError::Config(format!("{}: {e}", p.display())))?;
            }
        }
        Command::BenchLlm(a) => {
            use clap::ValueEnum;
            let precisions = a
                .precisions
                .split(',')
                .map(|p| {
                    llm::linear::Precision::from_str(p.trim(), true)
                        .map_err(|e| CloudError::Config(format!("--precisions: {e}")))
                })
                .collect::<Result<Vec<_>, _>>()?;
            llm::bench::run(&llm::bench::BenchConfig {
                model: a.model.clone(),
                tokens: a.tokens.max(2),
                precisions,
                reference: a.reference.clone(),
                json: a.json.clone(),
                threads: a.threads.max(1),
            });
        }
        Command::LlmFixture(a) => {
            llm::fixture::write(&a.out).map_err(|e| CloudError::Load(e.to_string()))?;
            println!(
                "wrote tiny.gguf, tiny-hf/ and adapters/ to {}",
                a.out.display()
            );
        }
        Command::Health(a) => {
            if !(a.timeout_secs.is_finite() && a.timeout_secs > 0.0) {
                return Err(CloudError::Config("--timeout-secs must be positive".into()));
            }
            let timeout = std::time::Duration::from_secs_f64(a.timeout_secs);
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| CloudError::Config(format!("runtime: {e}")))?;
            rt.block_on(serve::probe::check(&a.addr, &a.service, timeout))?;
            println!("SERVING");
        }
        Command::Serve(a) => {
            let cfg = serve_config(&a)?;
            let rt = tokio::runtime::Runtime::new().map_err(error::io_err(&a.repo))?;
            rt.block_on(serve_cmd(&a, cfg))?;
        }
    }
    Ok(())
}
