//! `cloud-expert finetune`: trains an LSR-Adapt (or LoRA) adapter on JSONL data with the base
//! model frozen, and saves it as a PEFT-style directory.
//!
//! - Data: one JSON object per line, `{"prompt", "completion"}` (raw text) or chat
//!   `{"messages": [...]}` whose last message is the assistant's answer (the rest goes through the
//!   model's chat template). The loss covers the completion tokens and the end token only.
//! - Optimiser: AdamW (decoupled weight decay) with gradient accumulation and global-norm clipping.
//! - Checkpoints every `checkpoint_every` steps in `OUT/checkpoint/` (adapter, optimiser moments,
//!   step); `resume` continues from it. The data order is a pure function of the seed and the
//!   step, so a resumed run sees the same batches as an uninterrupted one.

use super::adapter::{Adapter, AdapterError, Module};
use super::generate;
use super::lsr::Init;
use super::model::{Adapt, KvCache, Llama};
use super::sampling::Rng;
use super::tokenizer::{ChatMessage, Tokenizer};
use std::path::{Path, PathBuf};
use std::time::Instant;
use tch::{Kind, Reduction, Tensor};

/// Which adapter to train.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Method {
    /// LSR-Adapt with separation rank `s` and rank factors `r1`, `r2`.
    Lsr {
        /// Separation rank.
        s: usize,
        /// Rank factor.
        r1: usize,
        /// Rank factor.
        r2: usize,
        /// Initialisation.
        init: Init,
    },
    /// LoRA of rank `r`.
    Lora {
        /// Rank.
        r: usize,
    },
}

/// Training settings.
#[derive(Debug, Clone)]
pub struct FinetuneConfig {
    /// Adapter kind and shape.
    pub method: Method,
    /// Scale numerator.
    pub alpha: f64,
    /// Adapted modules.
    pub targets: Vec<Module>,
    /// Learning rate.
    pub lr: f64,
    /// AdamW weight decay.
    pub weight_decay: f64,
    /// Optimiser steps.
    pub steps: usize,
    /// Examples per micro-batch.
    pub batch: usize,
    /// Micro-batches per optimiser step.
    pub grad_accum: usize,
    /// Global gradient-norm clip (0: none).
    pub clip: f64,
    /// Evaluate every this many steps (0: only at the end).
    pub eval_every: usize,
    /// Checkpoint every this many steps (0: never).
    pub checkpoint_every: usize,
    /// Seed (initialisation and data order).
    pub seed: u64,
    /// Longest example in tokens (longer ones are skipped and counted).
    pub max_len: usize,
    /// Greedy tokens generated per evaluation example for exact match.
    pub max_new_tokens: usize,
    /// Continue from `OUT/checkpoint`.
    pub resume: bool,
    /// Show a progress bar.
    pub progress: bool,
}

/// Why fine-tuning failed.
#[derive(Debug, thiserror::Error)]
pub enum FinetuneError {
    /// Data problem, naming the file and line.
    #[error("{path}:{line}: {msg}")]
    Data {
        /// File.
        path: PathBuf,
        /// 1-based line.
        line: usize,
        /// Cause.
        msg: String,
    },
    /// Invalid settings.
    #[error("{0}")]
    Config(String),
    /// Adapter.
    #[error(transparent)]
    Adapter(#[from] AdapterError),
    /// Model.
    #[error(transparent)]
    Model(#[from] super::model::ModelError),
    /// libtorch.
    #[error("torch: {0}")]
    Torch(#[from] tch::TchError),
    /// Files.
    #[error("{0}: {1}")]
    Io(PathBuf, std::io::Error),
}

/// One tokenised example.
#[derive(Debug, Clone)]
pub struct Example {
    /// Prompt tokens (no loss).
    pub prompt: Vec<u32>,
    /// Completion tokens, ending with the end token (loss).
    pub completion: Vec<u32>,
    /// The expected answer text (exact match).
    pub answer: String,
}

/// The token that ends an answer: `<|im_end|>` for ChatML models, else EOS.
pub fn end_token(tok: &Tokenizer) -> Option<u32> {
    tok.token_id("<|im_end|>").or(tok.eos)
}

/// Reads and tokenises a JSONL file; returns the examples and how many were too long.
pub fn load_jsonl(
    path: &Path,
    tok: &Tokenizer,
    max_len: usize,
) -> Result<(Vec<Example>, usize), FinetuneError> {
    let text = std::fs::read_to_string(path).map_err(|e| FinetuneError::Io(path.into(), e))?;
    let end = end_token(tok)
        .ok_or_else(|| FinetuneError::Config("the tokenizer has no end token".into()))?;
    let mut out = Vec::new();
    let mut skipped = 0;
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let err = |msg: String| FinetuneError::Data {
            path: path.into(),
            line: i + 1,
            msg,
        };
        let v: serde_json::Value = serde_json::from_str(line).map_err(|e| err(e.to_string()))?;
        let (prompt, answer) = if let Some(msgs) = v.get("messages") {
            let msgs: Vec<ChatMessage> =
                serde_json::from_value(msgs.clone()).map_err(|e| err(format!("messages: {e}")))?;
            let Some((last, rest)) = msgs.split_last() else {
                return Err(err("messages is empty".into()));
            };
            if last.role != "assistant" || rest.is_empty() {
                return Err(err(
                    "the last message must be the assistant's answer to at least one other".into(),
                ));
            }
            let p = tok
                .apply_chat_template(rest)
                .map_err(|e| err(e.to_string()))?;
            (p, last.content.clone())
        } else {
            match (v["prompt"].as_str(), v["completion"].as_str()) {
                (Some(p), Some(c)) => (p.to_string(), c.to_string()),
                _ => {
                    return Err(err(
                        "expected {\"prompt\", \"completion\"} strings or {\"messages\": [...]}"
                            .into(),
                    ))
                }
            }
        };
        let prompt = tok.encode(&prompt);
        let mut completion = tok.encode(&answer);
        // A completion encoded alone must not gain a second BOS.
        if tok.add_bos && completion.first() == tok.bos.as_ref() {
            completion.remove(0);
        }
        completion.push(end);
        if prompt.len() + completion.len() > max_len {
            skipped += 1;
            continue;
        }
        out.push(Example {
            prompt,
            completion,
            answer,
        });
    }
    Ok((out, skipped))
}

/// Right-padded tokens (B, T) and targets (B*(T-1)) with -100 where no loss applies.
fn batch_tensors(examples: &[&Example], pad: u32) -> (Tensor, Tensor) {
    let t = examples
        .iter()
        .map(|e| e.prompt.len() + e.completion.len())
        .max()
        .unwrap_or(1);
    let mut toks = Vec::with_capacity(examples.len() * t);
    let mut targets = Vec::with_capacity(examples.len() * (t - 1));
    for e in examples {
        let seq: Vec<i64> = e
            .prompt
            .iter()
            .chain(&e.completion)
            .map(|&x| x as i64)
            .collect();
        for i in 0..t {
            toks.push(seq.get(i).copied().unwrap_or(pad as i64));
        }
        // Target at position i is token i+1, scored only inside the completion.
        for i in 0..t - 1 {
            let in_completion = i + 1 >= e.prompt.len() && i + 1 < seq.len();
            targets.push(if in_completion { seq[i + 1] } else { -100 });
        }
    }
    (
        Tensor::from_slice(&toks).view([examples.len() as i64, t as i64]),
        Tensor::from_slice(&targets),
    )
}

/// Mean completion-token cross-entropy of a batch (a graph when the adapter requires grad).
pub fn batch_loss(
    model: &Llama,
    adapter: Option<&Adapter>,
    examples: &[&Example],
    pad: u32,
) -> Result<Tensor, FinetuneError> {
    let (tokens, targets) = batch_tensors(examples, pad);
    let adapt = adapter.map_or(Adapt::None, Adapt::All);
    let hidden = model.forward_hidden(&tokens, &mut KvCache::default(), adapt)?;
    let (b, t, h) = hidden.size3()?;
    let rows = hidden.narrow(1, 0, t - 1).reshape([b * (t - 1), h]);
    let keep = targets.ne(-100).nonzero().squeeze_dim(1);
    let logits = model.head(&rows.index_select(0, &keep));
    Ok(logits.cross_entropy_loss::<Tensor>(
        &targets.index_select(0, &keep),
        None,
        Reduction::Mean,
        -100,
        0.0,
    ))
}

/// Evaluation: mean completion loss and greedy exact-match accuracy.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct EvalResult {
    /// Mean per-token loss over the completions.
    pub loss: f64,
    /// Fraction of answers generated exactly.
    pub accuracy: f64,
    /// Examples.
    pub n: usize,
}

/// Evaluates `adapter` (or the base model) on `examples`.
pub fn evaluate(
    model: &Llama,
    tok: &Tokenizer,
    adapter: Option<&Adapter>,
    examples: &[Example],
    max_new_tokens: usize,
) -> Result<EvalResult, FinetuneError> {
    let _g = tch::no_grad_guard();
    let pad = end_token(tok).unwrap_or(0);
    let (mut total, mut count) = (0.0, 0usize);
    for chunk in examples.chunks(16) {
        let refs: Vec<&Example> = chunk.iter().collect();
        let n: usize = chunk.iter().map(|e| e.completion.len()).sum();
        total += batch_loss(model, adapter, &refs, pad)?.double_value(&[]) * n as f64;
        count += n;
    }
    let prompts: Vec<Vec<u32>> = examples.iter().map(|e| e.prompt.clone()).collect();
    let stops: Vec<u32> = end_token(tok).into_iter().chain(tok.eos).collect();
    let outs = generate::greedy(model, adapter, &prompts, max_new_tokens, &stops, 16)?;
    let correct = outs
        .iter()
        .zip(examples)
        .filter(|(o, e)| tok.decode(o).trim() == e.answer.trim())
        .count();
    Ok(EvalResult {
        loss: total / count.max(1) as f64,
        accuracy: correct as f64 / examples.len().max(1) as f64,
        n: examples.len(),
    })
}

/// What a run produced.
#[derive(Debug, Clone, serde::Serialize)]
pub struct FinetuneReport {
    /// `lsr` or `lora`.
    pub method: String,
    /// Trainable parameters.
    pub trainable_parameters: usize,
    /// Bottleneck (LoRA rank or r1*r2).
    pub bottleneck: usize,
    /// Optimiser steps run in this process.
    pub steps: usize,
    /// Mean wall time per optimiser step.
    pub seconds_per_step: f64,
    /// Training loss of the last step.
    pub final_train_loss: f64,
    /// Evaluations (step, result).
    pub evals: Vec<(usize, EvalResult)>,
    /// Training examples used and skipped as too long.
    pub train_examples: usize,
    /// Skipped as longer than `max_len`.
    pub skipped: usize,
}

fn new_adapter(base: &str, model: &Llama, cfg: &FinetuneConfig) -> Result<Adapter, FinetuneError> {
    tch::manual_seed(cfg.seed as i64);
    Ok(match cfg.method {
        Method::Lsr { s, r1, r2, init } => Adapter::new_lsr(
            base,
            &model.cfg,
            &cfg.targets,
            s,
            r1,
            r2,
            cfg.alpha,
            init,
            tch::Device::Cpu,
        )?,
        Method::Lora { r } => Adapter::new_lora(
            base,
            &model.cfg,
            &cfg.targets,
            r,
            cfg.alpha,
            tch::Device::Cpu,
        )?,
    })
}

/// AdamW state for a list of parameters.
struct AdamW {
    m: Vec<Tensor>,
    v: Vec<Tensor>,
    t: i64,
}

impl AdamW {
    fn new(params: &[Tensor]) -> Self {
        Self {
            m: params.iter().map(Tensor::zeros_like).collect(),
            v: params.iter().map(Tensor::zeros_like).collect(),
            t: 0,
        }
    }

    fn step(&mut self, params: &[Tensor], lr: f64, wd: f64) {
        let _g = tch::no_grad_guard();
        let (b1, b2, eps) = (0.9, 0.999, 1e-8);
        self.t += 1;
        let c1 = 1.0 - f64::powi(b1, self.t as i32);
        let c2 = 1.0 - f64::powi(b2, self.t as i32);
        for ((p, m), v) in params.iter().zip(&mut self.m).zip(&mut self.v) {
            let g = p.grad();
            if !g.defined() {
                continue;
            }
            let _ = m.g_mul_scalar_(b1);
            let _ = m.g_add_(&(&g * (1.0 - b1)));
            let _ = v.g_mul_scalar_(b2);
            let _ = v.g_add_(&(&g * &g * (1.0 - b2)));
            let update = (&*m / c1) / ((&*v / c2).sqrt() + eps) + p * wd;
            let _ = p.shallow_clone().g_sub_(&(update * lr));
        }
    }
}

fn zero_grads(params: &[Tensor]) {
    for p in params {
        let mut g = p.grad();
        if g.defined() {
            let _ = g.zero_();
        }
    }
}

/// Scales gradients so their global norm is at most `max`; returns the norm before clipping.
fn clip_grads(params: &[Tensor], max: f64) -> f64 {
    let _g = tch::no_grad_guard();
    let sq: f64 = params
        .iter()
        .map(|p| p.grad())
        .filter(Tensor::defined)
        .map(|g| g.pow_tensor_scalar(2).sum(Kind::Float).double_value(&[]))
        .sum();
    let norm = sq.sqrt();
    if max > 0.0 && norm > max {
        for p in params {
            let mut g = p.grad();
            if g.defined() {
                let _ = g.g_mul_scalar_(max / (norm + 1e-6));
            }
        }
    }
    norm
}

fn checkpoint_dir(out: &Path) -> PathBuf {
    out.join("checkpoint")
}

fn save_checkpoint(
    out: &Path,
    adapter: &Adapter,
    opt: &AdamW,
    step: usize,
) -> Result<(), FinetuneError> {
    let dir = checkpoint_dir(out);
    let tmp = out.join("checkpoint.tmp");
    let _ = std::fs::remove_dir_all(&tmp);
    adapter.save(&tmp)?;
    let names: Vec<String> = (0..opt.m.len())
        .flat_map(|i| [format!("m.{i}"), format!("v.{i}")])
        .collect();
    let tensors: Vec<(&String, &Tensor)> = names
        .iter()
        .zip(opt.m.iter().zip(&opt.v).flat_map(|(m, v)| [m, v]))
        .collect();
    Tensor::write_safetensors(&tensors, tmp.join("optimizer.safetensors"))?;
    let state = serde_json::json!({"step": step, "adam_t": opt.t});
    std::fs::write(tmp.join("state.json"), state.to_string())
        .map_err(|e| FinetuneError::Io(tmp.join("state.json"), e))?;
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::rename(&tmp, &dir).map_err(|e| FinetuneError::Io(dir, e))
}

/// Restores adapter values and optimiser state; returns the step reached.
fn load_checkpoint(out: &Path, adapter: &Adapter, opt: &mut AdamW) -> Result<usize, FinetuneError> {
    let dir = checkpoint_dir(out);
    let saved = Adapter::load(&dir, tch::Device::Cpu)?;
    if saved.config != adapter.config {
        return Err(FinetuneError::Config(format!(
            "{}: the checkpoint was made with other adapter settings",
            dir.display()
        )));
    }
    let _g = tch::no_grad_guard();
    for (dst, src) in adapter.tensors().iter().zip(saved.tensors()) {
        dst.shallow_clone().copy_(&src);
    }
    let st = dir.join("optimizer.safetensors");
    let named: std::collections::HashMap<String, Tensor> =
        Tensor::read_safetensors(&st)?.into_iter().collect();
    for (i, (m, v)) in opt.m.iter_mut().zip(&mut opt.v).enumerate() {
        let (Some(sm), Some(sv)) = (named.get(&format!("m.{i}")), named.get(&format!("v.{i}")))
        else {
            return Err(FinetuneError::Config(format!(
                "{}: missing moments",
                st.display()
            )));
        };
        m.copy_(sm);
        v.copy_(sv);
    }
    let state: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.join("state.json"))
            .map_err(|e| FinetuneError::Io(dir.join("state.json"), e))?,
    )
    .map_err(|e| FinetuneError::Config(format!("state.json: {e}")))?;
    opt.t = state["adam_t"].as_i64().unwrap_or(0);
    Ok(state["step"].as_u64().unwrap_or(0) as usize)
}

/// The examples of micro-batch `k` (a pure function of seed and k: epochs are reshuffled).
fn micro_batch(train: &[Example], k: usize, batch: usize, seed: u64) -> Vec<&Example> {
    let n = train.len();
    let order = |epoch: usize| {
        let mut order: Vec<usize> = (0..n).collect();
        let mut rng = Rng::new(seed ^ (epoch as u64).wrapping_mul(0x9E37_79B9));
        for a in (1..n).rev() {
            let b = (rng.next_u64() % (a as u64 + 1)) as usize;
            order.swap(a, b);
        }
        order
    };
    let mut cached: Option<(usize, Vec<usize>)> = None;
    (0..batch)
        .map(|j| {
            let flat = k * batch + j;
            let (epoch, i) = (flat / n, flat % n);
            if cached.as_ref().is_none_or(|c| c.0 != epoch) {
                cached = Some((epoch, order(epoch)));
            }
            &train[cached.as_ref().map_or(0, |c| c.1[i])]
        })
        .collect()
}

/// Trains an adapter and writes it to `out` (plus `out/finetune_report.json`).
#[allow(clippy::too_many_arguments)]
pub fn run(
    model: &Llama,
    tok: &Tokenizer,
    base_name: &str,
    train: &[Example],
    eval: &[Example],
    skipped: usize,
    cfg: &FinetuneConfig,
    out: &Path,
) -> Result<(Adapter, FinetuneReport), FinetuneError> {
    if train.is_empty() || cfg.batch == 0 || cfg.grad_accum == 0 {
        return Err(FinetuneError::Config(
            "need training examples, --batch >= 1 and --grad-accum >= 1".into(),
        ));
    }
    std::fs::create_dir_all(out).map_err(|e| FinetuneError::Io(out.into(), e))?;
    let adapter = new_adapter(base_name, model, cfg)?;
    let params = adapter.tensors();
    let mut opt = AdamW::new(&params);
    let mut step = 0;
    if cfg.resume && checkpoint_dir(out).exists() {
        step = load_checkpoint(out, &adapter, &mut opt)?;
        tracing::info!(step, "resumed from checkpoint");
    }
    let pad = end_token(tok).unwrap_or(0);
    use std::io::IsTerminal;
    let plain = cfg.progress && !std::io::stderr().is_terminal();
    let bar = if cfg.progress && !plain {
        indicatif::ProgressBar::new(cfg.steps as u64)
    } else {
        indicatif::ProgressBar::hidden()
    };
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} steps  {msg}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    bar.set_position(step as u64);
    let mut evals = Vec::new();
    let mut last_loss = f64::NAN;
    let mut step_times = Vec::new();
    while step < cfg.steps {
        let t0 = Instant::now();
        let mut loss_sum = 0.0;
        for a in 0..cfg.grad_accum {
            let mb = micro_batch(train, step * cfg.grad_accum + a, cfg.batch, cfg.seed);
            let loss = batch_loss(model, Some(&adapter), &mb, pad)? / cfg.grad_accum as f64;
            loss.backward();
            loss_sum += loss.double_value(&[]);
        }
        let norm = clip_grads(&params, cfg.clip);
        opt.step(&params, cfg.lr, cfg.weight_decay);
        zero_grads(&params);
        step += 1;
        step_times.push(t0.elapsed().as_secs_f64());
        last_loss = loss_sum;
        bar.set_position(step as u64);
        bar.set_message(format!("loss {loss_sum:.4}  |g| {norm:.3}"));
        if plain && (step.is_multiple_of(10) || step == cfg.steps) {
            eprintln!(
                "step {step}/{}: loss {loss_sum:.4}, |g| {norm:.3}, {:.2} s/step",
                cfg.steps,
                step_times.iter().sum::<f64>() / step_times.len() as f64
            );
        }
        if cfg.eval_every > 0
            && step.is_multiple_of(cfg.eval_every)
            && step < cfg.steps
            && !eval.is_empty()
        {
            let r = evaluate(
                model,
                tok,
                Some(&adapter.detached()),
                eval,
                cfg.max_new_tokens,
            )?;
            let line = format!(
                "step {step}: eval loss {:.4}, exact match {:.1}%",
                r.loss,
                100.0 * r.accuracy
            );
            if plain {
                eprintln!("{line}");
            } else {
                bar.println(line);
            }
            evals.push((step, r));
        }
        if cfg.checkpoint_every > 0 && step.is_multiple_of(cfg.checkpoint_every) {
            save_checkpoint(out, &adapter, &opt, step)?;
        }
    }
    bar.finish_and_clear();
    let trained = adapter.detached();
    if !eval.is_empty() {
        let r = evaluate(model, tok, Some(&trained), eval, cfg.max_new_tokens)?;
        evals.push((step, r));
    }
    trained.save(out)?;
    let report = FinetuneReport {
        method: match cfg.method {
            Method::Lsr { .. } => "lsr",
            Method::Lora { .. } => "lora",
        }
        .into(),
        trainable_parameters: trained.parameters(),
        bottleneck: trained.config.r,
        steps: step_times.len(),
        seconds_per_step: step_times.iter().sum::<f64>() / step_times.len().max(1) as f64,
        final_train_loss: last_loss,
        evals,
        train_examples: train.len(),
        skipped,
    };
    let path = out.join("finetune_report.json");
    std::fs::write(
        &path,
        serde_json::to_string_pretty(&report).unwrap_or_default(),
    )
    .map_err(|e| FinetuneError::Io(path, e))?;
    Ok((trained, report))
}

#[cfg(test)]
mod tests;
