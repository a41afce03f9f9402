//! `cloud-expert bench-llm`: generation speed of the serving engine on a real model, beside the
//! machine's memory-bandwidth bound and (optionally) a reference run of `transformers` from the
//! same session (`scripts/bench-llm.sh` runs both).
//!
//! Figures: tokens/s at batch 1 and at batch 8 with mixed adapters (base, LSR, LoRA), time to
//! first token, per precision; the per-token cost of an unmerged LSR adapter (matrix-free), the
//! same adapter expanded to LoRA factors, and merged into the weights, against the base model;
//! and the matrix-free Kronecker forward against materialising the update for every call.

use super::adapter::{Adapter, Module, Update};
use super::engine::{Engine, EngineConfig, Event, GenRequest};
use super::host::{HostKv, Rows};
use super::linear::Precision;
use super::load::{load, LoadedLlm};
use super::lsr::{Init, LsrAdapter, LsrShape};
use super::model::Llama;
use super::sampling::SamplingParams;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;
use tch::{Device, Kind, Tensor};

/// Settings.
#[derive(Debug, Clone)]
pub struct BenchConfig {
    /// Model file or directory.
    pub model: PathBuf,
    /// New tokens per sequence.
    pub tokens: usize,
    /// Precisions to measure.
    pub precisions: Vec<Precision>,
    /// Reference figures from `scripts/bench_transformers.py` (JSON), if any.
    pub reference: Option<PathBuf>,
    /// Where to write the JSON results.
    pub json: Option<PathBuf>,
    /// libtorch threads.
    pub threads: usize,
}

/// The prompt every run uses (also in `scripts/bench_transformers.py`).
pub const PROMPT: &str = "Write a short story about a robot who learns to paint.";

/// Memory read bandwidth in GB/s: best of 5 sums over 512 MiB of float32.
pub fn read_bandwidth() -> f64 {
    let _g = tch::no_grad_guard();
    let t = Tensor::ones([128 << 20], (Kind::Float, Device::Cpu));
    let bytes = (t.numel() * 4) as f64;
    let _ = t.sum(Kind::Float);
    (0..5)
        .map(|_| {
            let t0 = Instant::now();
            let _ = t.sum(Kind::Float).double_value(&[]);
            bytes / t0.elapsed().as_secs_f64() / 1e9
        })
        .fold(0.0, f64::max)
}

/// Random, non-zero adapters: LSR (s = 8, r1 = r2 = 2, every module) and LoRA (r = 4, q and v).
fn adapters(cfg: &super::model::LlamaConfig) -> (Adapter, Adapter) {
    let _g = tch::no_grad_guard();
    tch::manual_seed(7);
    let lsr = Adapter::new_lsr(
        "bench",
        cfg,
        &Module::ALL,
        8,
        2,
        2,
        16.0,
        Init::SmallRandom,
        Device::Cpu,
    )
    .map(|a| a.detached())
    .unwrap_or_else(|e| panic!("bench adapter: {e}"));
    let lora = Adapter::new_lora(
        "bench",
        cfg,
        &[Module::QProj, Module::VProj],
        4,
        16.0,
        Device::Cpu,
    )
    .map(|a| a.detached())
    .unwrap_or_else(|e| panic!("bench adapter: {e}"));
    for u in lora.updates.values() {
        if let Update::Lora(x) = u {
            let _ = x.b.shallow_clone().normal_(0.0, 0.01);
        }
    }
    (lsr, lora)
}

/// One engine measurement.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct GenFigures {
    /// Generated tokens per second over the whole run (prefill included, as `generate` times).
    pub tokens_per_s: f64,
    /// Mean time to first token in ms.
    pub ttft_ms: f64,
}

fn run_engine(
    engine: &Engine,
    prompt: &[u32],
    adapters: &[Option<&str>],
    tokens: usize,
) -> GenFigures {
    let t0 = Instant::now();
    let rxs: Vec<_> = adapters
        .iter()
        .map(|a| {
            let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
            engine
                .submit(GenRequest {
                    prompt: prompt.to_vec(),
                    adapter: a.map(String::from),
                    sampling: SamplingParams {
                        temperature: 0.0,
                        ..Default::default()
                    },
                    max_tokens: tokens,
                    stop: vec![],
                    ignore_eos: true,
                    events: tx,
                    arrived: Instant::now(),
                })
                .unwrap_or_else(|e| panic!("bench request refused: {e}"));
            rx
        })
        .collect();
    let mut ttft = 0.0;
    let mut generated = 0;
    for mut rx in rxs {
        let mut first = None;
        while let Some(ev) = rx.blocking_recv() {
            match ev {
                Event::Text(_) if first.is_none() => first = Some(t0.elapsed().as_secs_f64()),
                Event::Done {
                    completion_tokens, ..
                } => {
                    generated += completion_tokens;
                    break;
                }
                Event::Error(e) => panic!("bench generation failed: {e}"),
                _ => {}
            }
        }
        ttft += first.unwrap_or(0.0);
    }
    let secs = t0.elapsed().as_secs_f64();
    GenFigures {
        tokens_per_s: generated as f64 / secs,
        ttft_ms: 1e3 * ttft / adapters.len() as f64,
    }
}

/// Per-token decode time (ms, batch 1) of `model` with `adapter` on the serving path (the host
/// forward pass when the weights are packed), median over `n` steps after a prompt.
fn decode_ms(model: &Llama, prompt: &[i64], adapter: Option<&Adapter>, n: usize) -> f64 {
    let _g = tch::no_grad_guard();
    let mut kv = model.host_kv(1);
    let groups: Vec<(&Adapter, Vec<usize>)> = adapter.map(|a| (a, vec![])).into_iter().collect();
    let run = |kv: &mut HostKv, tokens: &[i64], pos: usize| {
        let rows: Vec<usize> = (0..tokens.len()).collect();
        let g: Vec<(&Adapter, Vec<usize>)> =
            groups.iter().map(|(a, _)| (*a, rows.clone())).collect();
        let pos: Vec<usize> = (pos..pos + tokens.len()).collect();
        let slots = vec![0; tokens.len()];
        let rows = Rows {
            tokens,
            slots: &slots,
            pos: &pos,
            groups: &g,
        };
        let l = model
            .forward_host(&rows, kv, &[tokens.len() - 1])
            .unwrap_or_else(|e| panic!("{e}"));
        l.iter()
            .enumerate()
            .max_by(|a, b| a.1.total_cmp(b.1))
            .map_or(0, |(i, _)| i as i64)
    };
    let mut tok = run(&mut kv, prompt, 0);
    let mut times = Vec::new();
    for pos in (prompt.len()..).take(n) {
        let t0 = Instant::now();
        tok = run(&mut kv, &[tok], pos);
        times.push(t0.elapsed().as_secs_f64());
    }
    times.sort_by(f64::total_cmp);
    1e3 * times[times.len() / 2]
}

/// Microseconds per call of the matrix-free LSR forward and of materialising `A`, `B` and
/// applying them, for `rows` tokens through a (d_out x d_in) layer.
fn kron_vs_materialised(d_out: usize, d_in: usize, rows: i64) -> (f64, f64) {
    let _g = tch::no_grad_guard();
    let shape = LsrShape::for_layer(d_out, d_in, 8, 2, 2).unwrap_or_else(|e| panic!("{e}"));
    let ad = LsrAdapter::new(shape, 16.0, Init::SmallRandom, Device::Cpu);
    let x = Tensor::randn([rows, d_in as i64], (Kind::Float, Device::Cpu));
    let time = |f: &dyn Fn() -> Tensor| {
        let _ = f();
        let n = 200;
        let t0 = Instant::now();
        for _ in 0..n {
            let _ = f();
        }
        1e6 * t0.elapsed().as_secs_f64() / n as f64
    };
    let free = time(&|| ad.delta(&x));
    let mat = time(&|| {
        let (a, b) = ad.expand();
        x.matmul(&a.tr()).matmul(&b.tr())
    });
    (free, mat)
}

fn load_at(path: &Path, p: Precision) -> LoadedLlm {
    let mut l = load(path, Device::Cpu).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    l.model.set_precision(p);
    l
}

/// Runs the benchmark and prints its tables.
pub fn run(cfg: &BenchConfig) -> serde_json::Value {
    tch::set_num_threads(cfg.threads as i32);
    let bw = read_bandwidth();
    let reference: Option<serde_json::Value> = cfg
        .reference
        .as_ref()
        .and_then(|p| std::fs::read_to_string(p).ok())
        .and_then(|t| serde_json::from_str(&t).ok());
    println!(
        "memory read bandwidth: {bw:.1} GB/s (best of 5 float32 sums over 512 MiB, {} threads)",
        cfg.threads
    );
    let mut results = serde_json::json!({"bandwidth_gb_s": bw, "tokens": cfg.tokens});
    if let Some(r) = &reference {
        println!(
            "transformers {} (float32, same GGUF, same prompt, greedy {} tokens): batch 1 {:.1} tok/s, batch 8 {:.1} tok/s, first token {:.0} ms",
            r["transformers"].as_str().unwrap_or("?"),
            r["tokens"], r["b1_tok_s"].as_f64().unwrap_or(0.0), r["b8_tok_s"].as_f64().unwrap_or(0.0),
            r["ttft_ms"].as_f64().unwrap_or(0.0)
        );
    }
    println!("\n| precision | weights read per step | bandwidth bound, batch 1 | batch 1 tok/s | batch 8 mixed adapters tok/s | batch 8 base tok/s | first token |");
    println!("|---|---|---|---|---|---|---|");
    let mut rows = Vec::new();
    for &p in &cfg.precisions {
        let l = load_at(&cfg.model, p);
        let bytes = l.model.bytes_per_step();
        let bound = bw * 1e9 / bytes as f64;
        let prompt = l.tokenizer.encode(PROMPT);
        let (lsr, lora) = adapters(&l.model.cfg);
        let tok = Arc::new(l.tokenizer);
        let engine = Engine::start(
            l.model,
            tok,
            EngineConfig {
                max_seqs: 8,
                max_queue: 8,
                max_new_tokens: cfg.tokens,
                threads: cfg.threads,
                ..Default::default()
            },
        );
        engine.install("lsr", lsr.expanded());
        engine.install("lora", lora);
        let _ = run_engine(&engine, &prompt, &[None], 8); // warm-up
                                                          // Best of 3 (the machine is shared; transformers gets the same).
        let best = |adapters: &[Option<&str>]| {
            (0..3)
                .map(|_| run_engine(&engine, &prompt, adapters, cfg.tokens))
                .max_by(|a, b| a.tokens_per_s.total_cmp(&b.tokens_per_s))
                .unwrap_or_else(|| unreachable!("three runs"))
        };
        let b1 = best(&[None]);
        let mixed: Vec<Option<&str>> = (0..8)
            .map(|i| [None, Some("lsr"), Some("lora")][i % 3])
            .collect();
        let b8 = best(&mixed);
        let b8_base = best(&[None; 8]);
        let ratio = |ours: f64, key: &str| {
            reference
                .as_ref()
                .and_then(|r| r[key].as_f64())
                .map_or(String::new(), |t| format!(" ({:.2}x)", ours / t))
        };
        println!(
            "| {p:?} | {:.0} MB | {bound:.1} tok/s | {:.1}{} | {:.1}{} | {:.1} | {:.0} ms{} |",
            bytes as f64 / 1e6,
            b1.tokens_per_s,
            ratio(b1.tokens_per_s, "b1_tok_s"),
            b8.tokens_per_s,
            ratio(b8.tokens_per_s, "b8_tok_s"),
            b8_base.tokens_per_s,
            b1.ttft_ms,
            reference
                .as_ref()
                .and_then(|r| r["ttft_ms"].as_f64())
                .map_or(String::new(), |t| format!(" (transformers {t:.0} ms)")),
        );
        rows.push(
            serde_json::json!({"precision": p, "bytes_per_step": bytes, "bound_tok_s": bound,
            "b1": b1, "b8_mixed": b8, "b8_base": b8_base}),
        );
    }
    results["engine"] = serde_json::json!(rows);
    // Adapter overhead at batch 1, float32.
    let l = load_at(&cfg.model, Precision::F32);
    let prompt: Vec<i64> = l
        .tokenizer
        .encode(PROMPT)
        .iter()
        .map(|&t| t as i64)
        .collect();
    let (lsr, _) = adapters(&l.model.cfg);
    let n = 24;
    let base = decode_ms(&l.model, &prompt, None, n);
    let kron = decode_ms(&l.model, &prompt, Some(&lsr), n);
    let expanded = decode_ms(&l.model, &prompt, Some(&lsr.expanded()), n);
    let merged_model = l.model.merged(&lsr).unwrap_or_else(|e| panic!("{e}"));
    let merged = decode_ms(&merged_model, &prompt, None, n);
    drop(merged_model);
    println!("\nLSR adapter on all 7 modules of all {} blocks (s = 8, r1 = r2 = 2), float32, batch 1, median ms per token:", l.model.cfg.num_hidden_layers);
    println!(
        "| base | LSR unmerged, matrix-free | LSR expanded to LoRA factors | LSR merged into W |"
    );
    println!("|---|---|---|---|");
    println!(
        "| {base:.2} | {kron:.2} (+{:.0}%) | {expanded:.2} (+{:.0}%) | {merged:.2} (+{:.0}%) |",
        100.0 * (kron / base - 1.0),
        100.0 * (expanded / base - 1.0),
        100.0 * (merged / base - 1.0)
    );
    results["adapter_overhead_ms"] = serde_json::json!({"base": base, "lsr_kron": kron, "lsr_expanded": expanded, "lsr_merged": merged});
    println!("\nMatrix-free Kronecker forward vs materialising A = sum A1(x)A2 and B = sum B1(x)B2 per call (s = 8, r1 = r2 = 2), us per call:");
    println!("| layer | tokens | matrix-free | materialised | speed-up |");
    println!("|---|---|---|---|---|");
    let mut kr = Vec::new();
    for (o, i) in [(576, 576), (1536, 576), (576, 1536)] {
        for rows in [1, 64] {
            let (free, mat) = kron_vs_materialised(o, i, rows);
            println!(
                "| {o}x{i} | {rows} | {free:.0} | {mat:.0} | {:.1}x |",
                mat / free
            );
            kr.push(serde_json::json!({"d_out": o, "d_in": i, "tokens": rows, "matrix_free_us": free, "materialised_us": mat}));
        }
    }
    results["kronecker"] = serde_json::json!(kr);
    if let Some(p) = &cfg.json {
        let _ = std::fs::write(
            p,
            serde_json::to_string_pretty(&results).unwrap_or_default(),
        );
    }
    results
}
