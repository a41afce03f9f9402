//! Command-line configuration (clap derive; every flag also reads an environment variable).

use crate::train::fit::{Optim, RejectorLoss};
use crate::train::pair::Mode;
use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;

/// The cloud side of the offloading system: trains the legacy demo model, trains experts and
/// rejectors with Learning-to-Help, and evaluates them against the baselines.
#[derive(Debug, Parser)]
#[command(name = "cloud-expert", version)]
pub struct Cli {
    /// Log as JSON lines instead of human-readable text.
    #[arg(long, env = "CLOUD_EXPERT_LOG_JSON", global = true)]
    pub log_json: bool,
    /// Export request spans over OTLP/HTTP to this collector (e.g. http://127.0.0.1:4318);
    /// needs a build with the `otlp` cargo feature.
    #[arg(long, env = "CLOUD_EXPERT_OTLP_ENDPOINT", global = true)]
    pub otlp_endpoint: Option<String>,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Train a deliberately weak legacy classifier and export it to ONNX (demo and tests only).
    Legacy(LegacyArgs),
    /// Train expert + rejector for a fixed legacy model and write a model-repository version.
    Train(Box<TrainArgs>),
    /// Re-evaluate a repository version with the device engine and print the comparison.
    Eval(EvalArgs),
    /// Compare the exported ONNX rejector with the tch one and dump reference arrays.
    CheckExport(CheckExportArgs),
    /// Print training-throughput and device-latency benchmarks.
    Bench(BenchArgs),
    /// Serve every model of a repository over gRPC (Expert, ModelSync, health, reflection).
    Serve(ServeArgs),
    /// Exit 0 when a running server's gRPC health is SERVING (container health checks).
    Health(HealthArgs),
    /// Benchmark the server: round trip at concurrency 1/16/64, batching on versus off.
    BenchServe(BenchServeArgs),
    /// Write the tiny LLM fixtures (GGUF, Hugging Face directory, adapters) used by tests.
    LlmFixture(LlmFixtureArgs),
    /// Fine-tune an LSR-Adapt (or LoRA) adapter for an LLM on JSONL data.
    Finetune(FinetuneArgs),
    /// Benchmark LLM generation (tokens/s, first token, adapter overheads, Kronecker forward).
    BenchLlm(BenchLlmArgs),
    /// Run an analysis offline on a file of embeddings (.npy, .csv or JSON rows)
    Analyze(AnalyzeArgs),
    /// Benchmark the analysis estimators against scikit-dimension's figures
    BenchAnalysis(BenchAnalysisArgs),
}

/// `cloud-expert health`.
#[derive(Debug, Clone, clap::Args)]
pub struct HealthArgs {
    /// Server address: `host:port` (plaintext) or a URL. Defaults to the server's own
    /// `--health-addr` when its variable is set (so a container's check follows the server).
    #[arg(
        long,
        env = "CLOUD_EXPERT_HEALTH_ADDR",
        default_value = "127.0.0.1:50051"
    )]
    pub addr: String,
    /// Service to ask about ("" for the server as a whole).
    #[arg(long, default_value = "")]
    pub service: String,
    /// Seconds to wait for the connection and the answer.
    #[arg(long, default_value_t = 2.0)]
    pub timeout_secs: f64,
}

/// Offline analyses.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum AnalyzeKind {
    /// TwoNN, MLE and lPCA (as `/v1/analysis/intrinsic-dimension`).
    IntrinsicDimension,
    /// Batch-OMP codes of the input signals over `--dictionary` with `--sparsity` atoms each.
    SparseCode,
    /// Weight spectra (as `/v1/analysis/spectrum`) of a `.npy` matrix or every weight of a
    /// `.safetensors` file.
    Spectrum,
    /// pNTK data attribution for an expert of `--repo` (as `/v1/analysis/attribution`), or the
    /// flipped-label check with `--poison-fraction`.
    Attribution,
}

/// `cloud-expert analyze`.
#[derive(Debug, Args)]
pub struct AnalyzeArgs {
    /// The analysis.
    #[arg(value_enum)]
    pub kind: AnalyzeKind,
    /// Points: a 2-D float32/float64 `.npy`, a `.csv` of numbers (no header), or a JSON array
    /// of rows (every kind but attribution).
    #[arg(long)]
    pub input: Option<PathBuf>,
    /// Neighbours (MLE and per-point neighbourhoods).
    #[arg(long, default_value_t = 20)]
    pub k: usize,
    /// Fraction of the largest TwoNN ratios dropped.
    #[arg(long, default_value_t = 0.1)]
    pub discard_fraction: f64,
    /// Variance fraction for lPCA.
    #[arg(long, default_value_t = 0.75)]
    pub alpha_ratio: f64,
    /// Also per-point estimates.
    #[arg(long)]
    pub pointwise: bool,
    /// Sparse codes: the dictionary, one unit-norm atom per row (same formats as --input);
    /// without it one is learned (--atoms, --method, --iterations, --seed).
    #[arg(long)]
    pub dictionary: Option<PathBuf>,
    /// Sparse codes: atoms per signal.
    #[arg(long, default_value_t = 5)]
    pub sparsity: usize,
    /// Sparse codes without --dictionary: atoms to learn.
    #[arg(long, default_value_t = 512)]
    pub atoms: usize,
    /// Sparse codes without --dictionary: `ksvd`, `mod` or `online`.
    #[arg(long, default_value = "ksvd")]
    pub method: String,
    /// Sparse codes without --dictionary: learning passes.
    #[arg(long, default_value_t = 10)]
    pub iterations: usize,
    /// Sparse codes without --dictionary: seed.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Spectrum: the same layers at initialisation (drift).
    #[arg(long)]
    pub initial: Option<PathBuf>,
    /// Spectrum: also the ESD of the entry-permuted matrix.
    #[arg(long)]
    pub randomize: bool,
    /// Spectrum: include every eigenvalue.
    #[arg(long)]
    pub eigenvalues: bool,
    /// Spectrum: data directions, a JSON list of `{"name", "values", "side"}` as in the HTTP
    /// API's `directions` (spike-data alignment of those layers).
    #[arg(long)]
    pub directions: Option<PathBuf>,
    /// Spectrum: write one SVG plot per layer into this directory.
    #[arg(long)]
    pub svg_dir: Option<PathBuf>,
    /// Attribution: the model repository.
    #[arg(long)]
    pub repo: Option<PathBuf>,
    /// Attribution: the expert model's name.
    #[arg(long)]
    pub model: Option<String>,
    /// Attribution: its version (default: the newest).
    #[arg(long)]
    pub version: Option<String>,
    /// Attribution: `pntk` or `trntk`.
    #[arg(long, default_value = "pntk")]
    pub kernel: String,
    /// Attribution: project gradients to this many dimensions.
    #[arg(long)]
    pub projection: Option<usize>,
    /// Attribution: the surrogate's L2 penalty.
    #[arg(long, default_value_t = 1e-3)]
    pub l2: f64,
    /// Attribution: fit the surrogate to `network` probabilities or `labels`.
    #[arg(long, default_value = "network")]
    pub targets: String,
    /// Attribution: the surrogate's Newton solver stops when every gradient entry is below this.
    #[arg(long, default_value_t = 1e-6)]
    pub surrogate_tol: f64,
    /// Attribution: at most this many training points (seeded subsample).
    #[arg(long)]
    pub max_train: Option<usize>,
    /// Attribution: run the flipped-label check with this fraction flipped.
    #[arg(long)]
    pub poison_fraction: Option<f64>,
    /// Attribution: also write the points, kernel and surrogate probabilities as JSON here.
    #[arg(long)]
    pub dump: Option<PathBuf>,
    /// Attribution: epochs of the flipped-label check's training.
    #[arg(long, default_value_t = 200)]
    pub poison_epochs: usize,
    /// Write the report here (default: standard output).
    #[arg(long)]
    pub json: Option<PathBuf>,
}

/// `cloud-expert bench-analysis`.
#[derive(Debug, Args)]
pub struct BenchAnalysisArgs {
    /// Points.
    #[arg(long, default_value_t = 10_000)]
    pub n: usize,
    /// Dimensions.
    #[arg(long, default_value_t = 768)]
    pub d: usize,
    /// scikit-dimension's figures (JSON from scripts/bench_skdim.py).
    #[arg(long)]
    pub reference: Option<PathBuf>,
    /// Write the results as JSON here.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// libtorch threads.
    #[arg(long, default_value_t = 2)]
    pub threads: usize,
}

/// `cloud-expert bench-llm`.
#[derive(Debug, Args)]
pub struct BenchLlmArgs {
    /// Model: GGUF file or Hugging Face directory.
    #[arg(long)]
    pub model: PathBuf,
    /// New tokens per sequence.
    #[arg(long, default_value_t = 64)]
    pub tokens: usize,
    /// Precisions, comma-separated from f32, bf16, int8.
    #[arg(long, default_value = "f32,bf16,int8")]
    pub precisions: String,
    /// transformers' figures (JSON from scripts/bench_transformers.py) to compare with.
    #[arg(long)]
    pub reference: Option<PathBuf>,
    /// Write the results as JSON here.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// libtorch threads.
    #[arg(long, default_value_t = 2)]
    pub threads: usize,
}

/// `cloud-expert finetune`.
#[derive(Debug, Args)]
pub struct FinetuneArgs {
    /// Base model: GGUF file or Hugging Face directory.
    #[arg(long)]
    pub model: PathBuf,
    /// Training data (JSONL: {"prompt","completion"} or {"messages": [...]}).
    #[arg(long)]
    pub train: PathBuf,
    /// Held-out data for eval loss and exact-match accuracy.
    #[arg(long)]
    pub eval: Option<PathBuf>,
    /// Output adapter directory (adapter_config.json + adapter_model.safetensors).
    #[arg(long)]
    pub out: PathBuf,
    /// Adapter kind: lsr or lora.
    #[arg(long, default_value = "lsr")]
    pub method: String,
    /// Modules to adapt, comma-separated from q,k,v,o,gate,up,down.
    #[arg(long, default_value = "q,v")]
    pub targets: String,
    /// LSR separation rank (Kronecker terms per factor).
    #[arg(long, default_value_t = 8)]
    pub separation_rank: usize,
    /// LSR rank factors (bottleneck r1*r2).
    #[arg(long, default_value_t = 2)]
    pub r1: usize,
    /// See --r1.
    #[arg(long, default_value_t = 2)]
    pub r2: usize,
    /// LoRA rank (default: r1*r2, LSR's bottleneck).
    #[arg(long)]
    pub lora_r: Option<usize>,
    /// Scale numerator (LSR: alpha/r1, LoRA: alpha/r).
    #[arg(long, default_value_t = 16.0)]
    pub alpha: f64,
    /// LSR initialisation: zero (LoRA-style, B1 = 0) or small-random (the authors').
    #[arg(long, default_value = "zero")]
    pub init: String,
    /// Learning rate.
    #[arg(long, default_value_t = 2e-3)]
    pub lr: f64,
    /// AdamW weight decay.
    #[arg(long, default_value_t = 0.0)]
    pub weight_decay: f64,
    /// Optimiser steps.
    #[arg(long, default_value_t = 200)]
    pub steps: usize,
    /// Examples per micro-batch.
    #[arg(long, default_value_t = 8)]
    pub batch: usize,
    /// Micro-batches per optimiser step.
    #[arg(long, default_value_t = 1)]
    pub grad_accum: usize,
    /// Global gradient-norm clip (0: off).
    #[arg(long, default_value_t = 1.0)]
    pub clip: f64,
    /// Evaluate every N steps (0: only at the end).
    #[arg(long, default_value_t = 0)]
    pub eval_every: usize,
    /// Checkpoint every N steps into OUT/checkpoint (0: never).
    #[arg(long, default_value_t = 50)]
    pub checkpoint_every: usize,
    /// Continue from OUT/checkpoint.
    #[arg(long)]
    pub resume: bool,
    /// Seed.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Longest example in tokens (longer ones are skipped).
    #[arg(long, default_value_t = 256)]
    pub max_len: usize,
    /// Tokens generated per eval example for exact match.
    #[arg(long, default_value_t = 16)]
    pub max_new_tokens: usize,
    /// Also evaluate the base model without the adapter.
    #[arg(long)]
    pub eval_base: bool,
    /// libtorch threads.
    #[arg(long, default_value_t = 2)]
    pub threads: usize,
}

/// `cloud-expert llm-fixture`.
#[derive(Debug, Args)]
pub struct LlmFixtureArgs {
    /// Output directory.
    #[arg(long)]
    pub out: PathBuf,
}

/// `cloud-expert bench-serve`.
#[derive(Debug, Args)]
pub struct BenchServeArgs {
    /// Model repository root (a trained repository).
    #[arg(long, env = "OFFLOAD_REPO")]
    pub repo: PathBuf,
    /// Model to load.
    #[arg(long, default_value = "digits")]
    pub model: String,
    /// Seconds per measurement point.
    #[arg(long, default_value_t = 3.0)]
    pub seconds: f64,
    /// Batching delay of the "on" configuration, microseconds.
    #[arg(long, default_value_t = 500)]
    pub max_delay_us: u64,
}

/// `cloud-expert serve`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Model repository root.
    #[arg(long, env = "OFFLOAD_REPO")]
    pub repo: PathBuf,
    /// gRPC address (offload.v1, Open Inference Protocol v2, health, reflection).
    #[arg(long, env = "CLOUD_EXPERT_ADDR", default_value = "127.0.0.1:50051")]
    pub addr: std::net::SocketAddr,
    /// HTTP address (v2 REST, repository admin API, /metrics); "off" disables it.
    #[arg(long, env = "CLOUD_EXPERT_HTTP_ADDR", default_value = "127.0.0.1:8000")]
    pub http_addr: String,
    /// Most rows run together in one forward pass (1 disables dynamic batching).
    #[arg(long, env = "CLOUD_EXPERT_MAX_BATCH", default_value_t = 64)]
    pub max_batch: usize,
    /// Longest a request waits for others to batch with, in microseconds.
    #[arg(long, env = "CLOUD_EXPERT_MAX_DELAY_US", default_value_t = 500)]
    pub max_delay_us: u64,
    /// Requests that may wait per model version; beyond it: gRPC UNAVAILABLE / HTTP 503.
    #[arg(long, env = "CLOUD_EXPERT_QUEUE_DEPTH", default_value_t = 256)]
    pub queue_depth: usize,
    /// Most rows (samples) in one request; beyond it: INVALID_ARGUMENT / HTTP 422.
    #[arg(long, env = "CLOUD_EXPERT_MAX_ROWS", default_value_t = 64)]
    pub max_rows: usize,
    /// Largest request message in bytes; beyond it: gRPC OUT_OF_RANGE / HTTP 413.
    #[arg(long, env = "CLOUD_EXPERT_MAX_MESSAGE_BYTES", default_value_t = 4 * 1024 * 1024)]
    pub max_message_bytes: usize,
    /// Requests per second each device may send (0: unlimited); beyond it: RESOURCE_EXHAUSTED / 429.
    #[arg(long, env = "CLOUD_EXPERT_RATE_PER_DEVICE", default_value_t = 0.0)]
    pub rate_per_device: f64,
    /// Burst size of the per-device rate limit (default: one second's worth).
    #[arg(long, env = "CLOUD_EXPERT_RATE_BURST")]
    pub rate_burst: Option<f64>,
    /// Most inference requests being decoded or computed at once; beyond it: UNAVAILABLE / 503.
    #[arg(long, env = "CLOUD_EXPERT_MAX_IN_FLIGHT", default_value_t = 4096)]
    pub max_in_flight: usize,
    /// Most concurrent HTTP/2 streams per gRPC connection.
    #[arg(long, env = "CLOUD_EXPERT_MAX_STREAMS", default_value_t = 256)]
    pub max_streams: u32,
    /// A second, plaintext listener serving only `grpc.health.v1` (for orchestrators' probes:
    /// Kubernetes' native gRPC probes do not speak TLS); off unless given.
    #[arg(long, env = "CLOUD_EXPERT_HEALTH_ADDR")]
    pub health_addr: Option<std::net::SocketAddr>,
    /// Seconds in-flight requests may take after SIGINT/SIGTERM.
    #[arg(long, env = "CLOUD_EXPERT_GRACE_SECS", default_value_t = 10.0)]
    pub grace_secs: f64,
    /// libtorch intra-op threads per model worker.
    #[arg(long, env = "CLOUD_EXPERT_TORCH_THREADS", default_value_t = 1)]
    pub torch_threads: usize,
    /// Artificial delay per batch in milliseconds (fault testing only).
    #[arg(long, env = "CLOUD_EXPERT_EXPERT_DELAY_MS", default_value_t = 0)]
    pub expert_delay_ms: u64,
    /// Versions served per model (older ones are retired once newer ones load).
    #[arg(long, env = "CLOUD_EXPERT_KEEP_VERSIONS", default_value_t = 2)]
    pub keep_versions: usize,
    /// Re-read the repository every this many seconds (0: only at start and via the admin API).
    #[arg(long, env = "CLOUD_EXPERT_POLL_SECS", default_value_t = 0.0)]
    pub poll_secs: f64,
    /// How devices authenticate: none, token (per-device bearer tokens) or cert (mTLS identity).
    #[arg(long, env = "CLOUD_EXPERT_AUTH", value_enum, default_value = "none")]
    pub auth: crate::serve::auth::AuthMode,
    /// Credentials file (TOML): devices with tokens and allowed models, and admin tokens.
    #[arg(long, env = "CLOUD_EXPERT_CREDENTIALS")]
    pub credentials: Option<PathBuf>,
    /// Admin token for the repository API (in addition to the credentials file's).
    #[arg(long, env = "CLOUD_EXPERT_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,
    /// Server certificate chain (PEM); with --tls-key enables TLS on both listeners.
    #[arg(long, env = "CLOUD_EXPERT_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,
    /// Server private key (PEM).
    #[arg(long, env = "CLOUD_EXPERT_TLS_KEY")]
    pub tls_key: Option<PathBuf>,
    /// CA for client certificates (PEM): enables mutual TLS.
    #[arg(long, env = "CLOUD_EXPERT_TLS_CLIENT_CA")]
    pub tls_client_ca: Option<PathBuf>,
    /// With --tls-client-ca: also accept clients without a certificate (token auth).
    #[arg(long, env = "CLOUD_EXPERT_TLS_CLIENT_OPTIONAL")]
    pub tls_client_optional: bool,
    /// Most points per analysis request (HTTP 413 beyond).
    #[arg(
        long,
        env = "CLOUD_EXPERT_ANALYSIS_MAX_POINTS",
        default_value_t = 100_000
    )]
    pub analysis_max_points: usize,
    /// Most values (points x dimensions) per analysis request (HTTP 413 beyond).
    #[arg(
        long,
        env = "CLOUD_EXPERT_ANALYSIS_MAX_VALUES",
        default_value_t = 20_000_000
    )]
    pub analysis_max_values: usize,
    /// Largest analysis request body in MiB (HTTP 413 beyond).
    #[arg(long, env = "CLOUD_EXPERT_ANALYSIS_MAX_BODY_MB", default_value_t = 256)]
    pub analysis_max_body_mb: usize,
    /// Analyses computed at once (HTTP 503 beyond).
    #[arg(
        long,
        env = "CLOUD_EXPERT_ANALYSIS_MAX_CONCURRENT",
        default_value_t = 2
    )]
    pub analysis_max_concurrent: usize,
    /// Analysis jobs kept, queued, running or finished (finished ones are forgotten oldest
    /// first; HTTP 503 when all are unfinished).
    #[arg(long, env = "CLOUD_EXPERT_ANALYSIS_MAX_JOBS", default_value_t = 64)]
    pub analysis_max_jobs: usize,
    /// LLM serving (OpenAI-compatible API on the HTTP port).
    #[command(flatten)]
    pub llm: LlmArgs,
}

/// `serve` flags for the LLM.
#[derive(Debug, Clone, Args)]
pub struct LlmArgs {
    /// LLM to serve: a LLaMA-family GGUF file or Hugging Face directory.
    #[arg(long, env = "CLOUD_EXPERT_LLM")]
    pub llm: Option<PathBuf>,
    /// The model id clients use for the base model (default: the file or directory name).
    #[arg(long, env = "CLOUD_EXPERT_LLM_NAME")]
    pub llm_name: Option<String>,
    /// Weight precision: f32, bf16, or int8 (weight-only, per-row scales).
    #[arg(
        long,
        env = "CLOUD_EXPERT_LLM_PRECISION",
        value_enum,
        default_value = "f32"
    )]
    pub llm_precision: crate::llm::linear::Precision,
    /// Sequences decoded together (continuous batching slots).
    #[arg(long, env = "CLOUD_EXPERT_LLM_MAX_SEQS", default_value_t = 8)]
    pub llm_max_seqs: usize,
    /// Requests that may wait for a slot; beyond running + waiting: HTTP 429.
    #[arg(long, env = "CLOUD_EXPERT_LLM_MAX_QUEUE", default_value_t = 32)]
    pub llm_max_queue: usize,
    /// Longest prompt in tokens; beyond it: HTTP 400 context_length_exceeded.
    #[arg(
        long,
        env = "CLOUD_EXPERT_LLM_MAX_PROMPT_TOKENS",
        default_value_t = 1536
    )]
    pub llm_max_prompt_tokens: usize,
    /// Largest max_tokens a request may ask for.
    #[arg(long, env = "CLOUD_EXPERT_LLM_MAX_NEW_TOKENS", default_value_t = 512)]
    pub llm_max_new_tokens: usize,
    /// libtorch threads of the generation engine.
    #[arg(long, env = "CLOUD_EXPERT_LLM_THREADS", default_value_t = 2)]
    pub llm_threads: usize,
    /// Adapter to load at start, as NAME=DIR (repeatable).
    #[arg(long = "adapter", value_name = "NAME=DIR")]
    pub adapters: Vec<String>,
    /// Most adapters resident at once (least recently used ones are evicted and reloaded on demand).
    #[arg(long, env = "CLOUD_EXPERT_MAX_LOADED_ADAPTERS", default_value_t = 4)]
    pub max_loaded_adapters: usize,
    /// LSR adapters: expand (to LoRA factors at load) or kron (matrix-free every step).
    #[arg(
        long,
        env = "CLOUD_EXPERT_LSR_MODE",
        value_enum,
        default_value = "expand"
    )]
    pub lsr_mode: crate::llm::adapters::LsrMode,
    /// Artificial pause after each decode step in milliseconds (fault testing only).
    #[arg(long, env = "CLOUD_EXPERT_LLM_STEP_DELAY_MS", default_value_t = 0)]
    pub llm_step_delay_ms: u64,
    /// Adapter directories given at run time must lie under this directory.
    #[arg(long, env = "CLOUD_EXPERT_ADAPTER_ROOT")]
    pub adapter_root: Option<PathBuf>,
}

/// Which data and task.
#[derive(Debug, Clone, Args)]
pub struct DataArgs {
    /// Data source: digits (bundled), csv:PATH, npy:X.npy,Y.npy, cifar10:FILE[,FILE..], mnist:IMAGES,LABELS.
    #[arg(long, env = "OFFLOAD_DATA", default_value = "digits")]
    pub data: String,
    /// CSV label column (header name or 0-based index; default the last column).
    #[arg(long, env = "OFFLOAD_LABEL_COLUMN")]
    pub label_column: Option<String>,
    /// Task: multiclass, pair:A,B, one-vs-rest:K, groups:A,B,.. or odd-even.
    #[arg(long, env = "OFFLOAD_TASK", default_value = "multiclass")]
    pub task: String,
    /// Seed of the stratified train/validation/test split.
    #[arg(long, env = "OFFLOAD_SPLIT_SEED", default_value_t = 0)]
    pub split_seed: u64,
    /// Fraction of each class in the validation split.
    #[arg(long, env = "OFFLOAD_VAL_FRACTION", default_value_t = 0.2)]
    pub val_fraction: f64,
    /// Fraction of each class in the test split.
    #[arg(long, env = "OFFLOAD_TEST_FRACTION", default_value_t = 0.2)]
    pub test_fraction: f64,
}

/// `cloud-expert legacy`.
#[derive(Debug, Args)]
pub struct LegacyArgs {
    /// Data and task the legacy model classifies.
    #[command(flatten)]
    pub data: DataArgs,
    /// Where to write the ONNX file.
    #[arg(long, env = "LEGACY_OUT")]
    pub out: PathBuf,
    /// Number of training-split samples it learns from (small on purpose).
    #[arg(long, env = "LEGACY_TRAIN_SAMPLES", default_value_t = 60)]
    pub train_samples: usize,
    /// Training epochs.
    #[arg(long, env = "LEGACY_EPOCHS", default_value_t = 40)]
    pub epochs: usize,
    /// Architecture (mlp = linear softmax regression).
    #[arg(long, env = "LEGACY_ARCH", default_value = "mlp")]
    pub arch: String,
    /// Seed of the subset and initialisation.
    #[arg(long, env = "LEGACY_SEED", default_value_t = 0)]
    pub seed: u64,
}

/// `cloud-expert train`.
#[derive(Debug, Args)]
pub struct TrainArgs {
    /// Data and task.
    #[command(flatten)]
    pub data: DataArgs,
    /// Model repository root.
    #[arg(long, env = "OFFLOAD_REPO")]
    pub repo: PathBuf,
    /// Model name inside the repository.
    #[arg(long, env = "OFFLOAD_MODEL", default_value = "digits")]
    pub model: String,
    /// The legacy ONNX model (a black box; copied into the repository).
    #[arg(long, env = "OFFLOAD_LEGACY")]
    pub legacy: PathBuf,
    /// How to read the legacy model's output: auto, logits or probabilities.
    #[arg(long, env = "OFFLOAD_LEGACY_OUTPUT", default_value = "auto")]
    pub legacy_output: String,
    /// Formulation; default: binary-surrogate for two-class tasks, stage-switching otherwise.
    #[arg(long, env = "OFFLOAD_MODE", value_enum)]
    pub mode: Option<Mode>,
    /// Expert architecture: mlp:H1,H2,.. or cnn:C1,C2,../HIDDEN.
    #[arg(long, env = "OFFLOAD_EXPERT_ARCH", default_value = "mlp:256,128")]
    pub expert_arch: String,
    /// Rejector architecture (runs on the device: keep it small).
    #[arg(long, env = "OFFLOAD_REJECTOR_ARCH", default_value = "mlp:64")]
    pub rejector_arch: String,
    /// Give the rejector the legacy model's probabilities as extra inputs (ablation).
    #[arg(long, env = "OFFLOAD_REJECTOR_LEGACY_PROBS")]
    pub rejector_legacy_probs: bool,
    /// Agreement rejector: predicts the class posterior and decides from the probability it
    /// gives m's predicted class (implies --rejector-legacy-probs).
    #[arg(long, env = "OFFLOAD_REJECTOR_AGREEMENT")]
    pub rejector_agreement: bool,
    /// Weight of the agreement rejector's auxiliary class cross-entropy.
    #[arg(long, env = "OFFLOAD_AUX_WEIGHT", default_value_t = 1.0)]
    pub aux_weight: f64,
    /// Expert-error weight c_1 of the deployed pair.
    #[arg(long, env = "OFFLOAD_C1", default_value_t = 1.0)]
    pub c1: f32,
    /// Offload price c_e of the deployed pair.
    #[arg(long, env = "OFFLOAD_CE", default_value_t = 0.25)]
    pub ce: f32,
    /// Evaluation grid of cost pairs `c1,ce;c1,ce;...` (a pair is trained for each).
    #[arg(long, env = "OFFLOAD_GRID", default_value = "1,0;1,0.25;1.25,0.25")]
    pub grid: String,
    /// Binary surrogate: override the calibrated alpha.
    #[arg(long, env = "OFFLOAD_ALPHA")]
    pub alpha: Option<f64>,
    /// Binary surrogate: squash r and e through 2 sigmoid - 1 (the authors' option).
    #[arg(long, env = "OFFLOAD_SQUASH")]
    pub squash: bool,
    /// Steps between refreshes of the expert copy seen by the rejector (1 = synchronous, 0 = per epoch).
    #[arg(long, env = "OFFLOAD_SYNC_PERIOD", default_value_t = 1)]
    pub sync_period: usize,
    /// Weight the expert's loss by the rejector's offload probability.
    #[arg(long, env = "OFFLOAD_WEIGHT_EXPERT")]
    pub weight_expert_by_offload: bool,
    /// Stage-switching rejector loss: consistent (default) or released (authors' code, reproduction only).
    #[arg(
        long,
        env = "OFFLOAD_REJECTOR_LOSS",
        value_enum,
        default_value = "consistent"
    )]
    pub rejector_loss: RejectorLoss,
    /// Maximum epochs.
    #[arg(long, env = "OFFLOAD_EPOCHS", default_value_t = 80)]
    pub epochs: usize,
    /// Early-stopping patience (epochs).
    #[arg(long, env = "OFFLOAD_PATIENCE", default_value_t = 15)]
    pub patience: usize,
    /// Mini-batch size.
    #[arg(long, env = "OFFLOAD_BATCH_SIZE", default_value_t = 32)]
    pub batch_size: usize,
    /// Expert learning rate.
    #[arg(long, env = "OFFLOAD_LR_EXPERT", default_value_t = 1e-3)]
    pub lr_expert: f64,
    /// Rejector learning rate.
    #[arg(long, env = "OFFLOAD_LR_REJECTOR", default_value_t = 1e-3)]
    pub lr_rejector: f64,
    /// Weight decay.
    #[arg(long, env = "OFFLOAD_WEIGHT_DECAY", default_value_t = 1e-4)]
    pub weight_decay: f64,
    /// Optimiser.
    #[arg(long, env = "OFFLOAD_OPTIMIZER", value_enum, default_value = "adam")]
    pub optimizer: Optim,
    /// Seed of initialisation and shuffling.
    #[arg(long, env = "OFFLOAD_SEED", default_value_t = 0)]
    pub seed: u64,
    /// Train on CUDA when available.
    #[arg(long, env = "OFFLOAD_CUDA")]
    pub cuda: bool,
    /// Hide the progress bar.
    #[arg(long, env = "OFFLOAD_NO_PROGRESS")]
    pub no_progress: bool,
}

/// `cloud-expert eval`.
#[derive(Debug, Args)]
pub struct EvalArgs {
    /// Model repository root.
    #[arg(long, env = "OFFLOAD_REPO")]
    pub repo: PathBuf,
    /// Model name.
    #[arg(long, env = "OFFLOAD_MODEL", default_value = "digits")]
    pub model: String,
    /// Version (default: latest).
    #[arg(long, env = "OFFLOAD_VERSION")]
    pub version: Option<String>,
    /// Cost pairs to score the stored pair under.
    #[arg(long, env = "OFFLOAD_GRID", default_value = "1,0;1,0.25;1.25,0.25")]
    pub grid: String,
    /// Write the per-input L2H decisions and answers of the deployed rule (JSON lines) here.
    #[arg(long)]
    pub predictions_out: Option<PathBuf>,
}

/// `cloud-expert check-export`.
#[derive(Debug, Args)]
pub struct CheckExportArgs {
    /// Model repository root.
    #[arg(long, env = "OFFLOAD_REPO")]
    pub repo: PathBuf,
    /// Model name.
    #[arg(long, env = "OFFLOAD_MODEL", default_value = "digits")]
    pub model: String,
    /// Version (default: latest).
    #[arg(long, env = "OFFLOAD_VERSION")]
    pub version: Option<String>,
    /// Directory for input.npy, legacy_probs.npy and tch_outputs.npy.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Largest tolerated absolute difference.
    #[arg(long, default_value_t = 1e-5)]
    pub tolerance: f32,
}

/// `cloud-expert bench`.
#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Training epochs timed.
    #[arg(long, default_value_t = 5)]
    pub epochs: usize,
}
