//! Continuous batching: one engine thread owns the model and the slot KV cache and runs steps.
//! Each step admits waiting requests into free slots (one prefill each, which also yields the
//! first token), then decodes one token for every running sequence in a single batched forward
//! pass in which each row carries its own adapter (or none). Sequences leave the batch as soon
//! as they finish (EOS, a stop string, `max_tokens`, the context) or their client goes away, and
//! their slot is reused at the next step.
//!
//! Invariants: admission is bounded (`max_seqs` running + `max_queue` waiting; beyond that
//! [`Engine::submit`] refuses at once, which HTTP maps to 429); a request's events end with
//! exactly one `Done` or `Error`; text events never split a UTF-8 character and never contain a
//! stop string or text after it.

use super::adapter::Adapter;
use super::host::{HostKv, Rows};
use super::kv::SlotKv;
use super::model::{Adapt, Llama};
use super::sampling::{Sampler, SamplingParams};
use super::tokenizer::{StreamDecoder, Tokenizer};
use std::collections::HashMap;
use std::collections::VecDeque;
use std::rc::Rc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;
use tch::{Kind, Tensor};

/// Engine limits.
#[derive(Debug, Clone, Copy)]
pub struct EngineConfig {
    /// Sequences decoded together (KV slots).
    pub max_seqs: usize,
    /// Requests that may wait for a slot.
    pub max_queue: usize,
    /// Longest prompt in tokens.
    pub max_prompt_tokens: usize,
    /// Largest `max_tokens` a request may ask for (also the default).
    pub max_new_tokens: usize,
    /// libtorch intra-op threads of the engine thread.
    pub threads: usize,
    /// Artificial pause after every decode step (fault testing only).
    pub step_delay: std::time::Duration,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            max_seqs: 8,
            max_queue: 32,
            max_prompt_tokens: 1536,
            max_new_tokens: 512,
            threads: 2,
            step_delay: std::time::Duration::ZERO,
        }
    }
}

/// Why generation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FinishReason {
    /// EOS or a stop string.
    Stop,
    /// `max_tokens` or the model's context.
    Length,
}

/// What a request's receiver gets.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// More text (may be empty when a token completes no character yet).
    Text(String),
    /// The end, with token counts.
    Done {
        /// Why.
        finish: FinishReason,
        /// Prompt tokens.
        prompt_tokens: usize,
        /// Generated tokens.
        completion_tokens: usize,
    },
    /// Generation failed.
    Error(String),
}

/// A generation request.
#[derive(Debug)]
pub struct GenRequest {
    /// Prompt token ids.
    pub prompt: Vec<u32>,
    /// Adapter name (installed with [`Engine::install`]), or the base model.
    pub adapter: Option<String>,
    /// Sampling.
    pub sampling: SamplingParams,
    /// Most tokens to generate.
    pub max_tokens: usize,
    /// Stop strings (not included in the output).
    pub stop: Vec<String>,
    /// Keep generating past end-of-sequence tokens (benchmarks).
    pub ignore_eos: bool,
    /// Where events go; dropping the receiver cancels the request.
    pub events: tokio::sync::mpsc::UnboundedSender<Event>,
    /// When the request arrived (for time to first token).
    pub arrived: Instant,
}

/// What the engine thread receives.
enum Msg {
    Gen(GenRequest),
    Install(String, Adapter),
    Evict(String),
    Embed(EmbedRequest),
    /// Names and shapes of the model's weights.
    WeightNames(std::sync::mpsc::Sender<Vec<(String, Vec<i64>)>>),
    /// One weight as float32 values.
    Weight(String, std::sync::mpsc::Sender<Option<Vec<f32>>>),
}

/// How a text's hidden states become one vector.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, serde::Serialize, utoipa::ToSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Pooling {
    /// Mean over the text's tokens (no padding exists: texts run one at a time).
    Mean,
    /// The last token.
    Last,
    /// The first token.
    First,
}

/// Texts (as token ids) to embed at a layer, answered on `reply` with one vector per text.
pub struct EmbedRequest {
    /// Token ids per text.
    pub texts: Vec<Vec<i64>>,
    /// Blocks to run (0: token embeddings).
    pub layer: usize,
    /// Pooling.
    pub pooling: Pooling,
    /// Where the vectors (or the error) go.
    pub reply: std::sync::mpsc::Sender<Result<Vec<Vec<f32>>, String>>,
}

/// Why a request was refused before it was queued.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SubmitError {
    /// Running and waiting sequences are at their limits.
    #[error("the server is at its limit of {0} running and waiting sequences; retry later")]
    Full(usize),
    /// The prompt is too long.
    #[error("the prompt has {got} tokens; this server accepts at most {max}")]
    PromptTooLong {
        /// Tokens.
        got: usize,
        /// Limit.
        max: usize,
    },
    /// `max_tokens` beyond the limit.
    #[error("max_tokens {got} exceeds this server's limit of {max}")]
    TooManyTokens {
        /// Asked.
        got: usize,
        /// Limit.
        max: usize,
    },
    /// Prompt plus `max_tokens` do not fit in the model's context.
    #[error("prompt ({prompt} tokens) plus max_tokens ({max_tokens}) exceeds the model's context of {context} tokens")]
    Context {
        /// Prompt tokens.
        prompt: usize,
        /// Asked.
        max_tokens: usize,
        /// Context length.
        context: usize,
    },
    /// Empty prompt.
    #[error("the prompt is empty")]
    EmptyPrompt,
    /// The engine thread is gone.
    #[error("the generation engine has stopped")]
    Stopped,
}

/// Counters the server exports.
#[derive(Debug, Default)]
pub struct EngineStats {
    /// Admitted and not yet finished (running + waiting).
    pub in_system: AtomicUsize,
    /// Running now.
    pub running: AtomicUsize,
    /// Prompt tokens processed.
    pub prompt_tokens: AtomicUsize,
    /// Tokens generated.
    pub generated_tokens: AtomicUsize,
    /// Decode steps run.
    pub steps: AtomicUsize,
    /// Requests cancelled by their client.
    pub cancelled: AtomicUsize,
    /// Largest batch seen in one decode step.
    pub max_batch: AtomicUsize,
    /// Steps whose batch mixed two or more adapters (the base model counts as one).
    pub mixed_steps: AtomicUsize,
}

/// Handle to the engine thread.
#[derive(Clone)]
pub struct Engine {
    tx: std::sync::mpsc::Sender<Msg>,
    cfg: EngineConfig,
    context: usize,
    layers: usize,
    /// Live counters.
    pub stats: Arc<EngineStats>,
    /// Time-to-first-token observer (seconds), set by the server for its histogram.
    pub ttft: Arc<dyn Fn(f64) + Send + Sync>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine").field("cfg", &self.cfg).finish()
    }
}

impl Engine {
    /// Starts the engine thread for `model`.
    pub fn start(model: Llama, tokenizer: Arc<Tokenizer>, cfg: EngineConfig) -> Self {
        Self::start_observed(model, tokenizer, cfg, Arc::new(|_| {}))
    }

    /// Like [`Engine::start`], reporting each request's time to first token to `ttft`.
    pub fn start_observed(
        model: Llama,
        tokenizer: Arc<Tokenizer>,
        cfg: EngineConfig,
        ttft: Arc<dyn Fn(f64) + Send + Sync>,
    ) -> Self {
        let (tx, rx) = std::sync::mpsc::channel();
        let stats = Arc::new(EngineStats::default());
        let context = model.cfg.max_position_embeddings;
        let layers = model.cfg.num_hidden_layers;
        let (stats2, ttft2) = (stats.clone(), ttft.clone());
        let uses_kernel = model.precision() != super::linear::Precision::Bf16;
        let build = move || Worker {
            kv: if model.host_ready() {
                Cache::Host(model.host_kv(cfg.max_seqs))
            } else {
                Cache::Tensor(SlotKv::new(
                    model.cfg.num_hidden_layers,
                    cfg.max_seqs,
                    model.cfg.num_key_value_heads,
                    model.cfg.head_dim(),
                    context,
                    tch::Device::Cpu,
                ))
            },
            model,
            tok: tokenizer,
            stop_ids: Vec::new(),
            rx,
            adapters: HashMap::new(),
            waiting: VecDeque::new(),
            running: Vec::new(),
            free: (0..cfg.max_seqs as i64).rev().collect(),
            stats: stats2,
            ttft: ttft2,
            step_delay: cfg.step_delay,
            threads: cfg.threads.max(1),
        };
        let _ = std::thread::Builder::new()
            .name("llm-engine".into())
            .spawn(move || {
                // The engine loop runs as one of the decoding kernel's workers, so its own
                // libtorch work and the kernel's threads never oversubscribe the cores.
                super::linear::init_kernel_threads(cfg.threads);
                // Thread use per phase: see `Worker::phase_threads`.
                if uses_kernel {
                    // Float32 decoding uses the kernel: run the loop as one of its workers.
                    super::linear::run_in_kernel_pool(move || build().run())
                } else {
                    build().run()
                }
            });
        Self {
            tx,
            cfg,
            context,
            layers,
            stats,
            ttft,
        }
    }

    /// Limits.
    pub fn config(&self) -> EngineConfig {
        self.cfg
    }

    /// The model's context length.
    pub fn context(&self) -> usize {
        self.context
    }

    /// Hands an adapter to the engine under `name` (replacing one of that name).
    pub fn install(&self, name: &str, adapter: Adapter) {
        let _ = self.tx.send(Msg::Install(name.into(), adapter));
    }

    /// Embeds `texts` (token ids) at `layer` with `pooling`; blocks the calling (non-async)
    /// thread until the engine answers between two decoding steps.
    pub fn embed(
        &self,
        texts: Vec<Vec<i64>>,
        layer: usize,
        pooling: Pooling,
    ) -> Result<Vec<Vec<f32>>, String> {
        let (reply, rx) = std::sync::mpsc::channel();
        self.tx
            .send(Msg::Embed(EmbedRequest {
                texts,
                layer,
                pooling,
                reply,
            }))
            .map_err(|_| "the LLM engine has stopped".to_string())?;
        rx.recv()
            .map_err(|_| "the LLM engine has stopped".to_string())?
    }

    /// Names and shapes of the model's weights, sorted by name.
    pub fn weight_names(&self) -> Result<Vec<(String, Vec<i64>)>, String> {
        let (reply, rx) = std::sync::mpsc::channel();
        self.tx
            .send(Msg::WeightNames(reply))
            .map_err(|_| "the LLM engine has stopped".to_string())?;
        rx.recv()
            .map_err(|_| "the LLM engine has stopped".to_string())
    }

    /// One weight's values (float32, row-major), if the model has it.
    pub fn weight(&self, name: &str) -> Result<Option<Vec<f32>>, String> {
        let (reply, rx) = std::sync::mpsc::channel();
        self.tx
            .send(Msg::Weight(name.to_string(), reply))
            .map_err(|_| "the LLM engine has stopped".to_string())?;
        rx.recv()
            .map_err(|_| "the LLM engine has stopped".to_string())
    }

    /// The number of transformer blocks (the deepest `layer` to embed at).
    pub fn layers(&self) -> usize {
        self.layers
    }

    /// Drops the engine's adapter `name` (running sequences keep theirs).
    pub fn evict(&self, name: &str) {
        let _ = self.tx.send(Msg::Evict(name.into()));
    }

    /// Checks a request against the limits and queues it.
    pub fn submit(&self, req: GenRequest) -> Result<(), SubmitError> {
        let (p, m) = (req.prompt.len(), req.max_tokens);
        if p == 0 {
            return Err(SubmitError::EmptyPrompt);
        }
        if p > self.cfg.max_prompt_tokens {
            return Err(SubmitError::PromptTooLong {
                got: p,
                max: self.cfg.max_prompt_tokens,
            });
        }
        if m > self.cfg.max_new_tokens {
            return Err(SubmitError::TooManyTokens {
                got: m,
                max: self.cfg.max_new_tokens,
            });
        }
        if p + m > self.context {
            return Err(SubmitError::Context {
                prompt: p,
                max_tokens: m,
                context: self.context,
            });
        }
        let cap = self.cfg.max_seqs + self.cfg.max_queue;
        let admitted =
            self.stats
                .in_system
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                    (n < cap).then_some(n + 1)
                });
        if admitted.is_err() {
            return Err(SubmitError::Full(cap));
        }
        self.tx.send(Msg::Gen(req)).map_err(|_| {
            self.stats.in_system.fetch_sub(1, Ordering::AcqRel);
            SubmitError::Stopped
        })
    }
}

/// An admitted request, its adapter and its slot.
type Admission = (GenRequest, Option<Rc<Adapter>>, i64);

/// Adds `rows` to `a`'s group (by adapter identity).
fn group_rows(
    groups: &mut Vec<(Rc<Adapter>, Vec<usize>)>,
    a: &Rc<Adapter>,
    rows: impl Iterator<Item = usize>,
) {
    match groups.iter_mut().find(|(g, _)| Rc::ptr_eq(g, a)) {
        Some((_, r)) => r.extend(rows),
        None => groups.push((a.clone(), rows.collect())),
    }
}

/// One running sequence.
struct Seq {
    req: GenRequest,
    adapter: Option<Rc<Adapter>>,
    slot: i64,
    /// Tokens in the cache (the next token goes to this position).
    pos: i64,
    last: u32,
    generated: usize,
    sampler: Sampler,
    decoder: StreamDecoder,
    text: String,
    emitted: usize,
    first_token_sent: bool,
    /// The terminal event, sent after the slot is released (so a client that sees `Done` can
    /// submit again at once).
    last_event: Option<Event>,
}

impl Seq {
    fn send_last(&mut self) {
        if let Some(e) = self.last_event.take() {
            let _ = self.req.events.send(e);
        }
    }
}

/// The KV cache of the path the model runs on.
enum Cache {
    /// libtorch tensors (bfloat16 serving, or weights without kernel copies).
    Tensor(SlotKv),
    /// Host vectors (kernel-packed weights: the whole step runs in `host.rs`).
    Host(HostKv),
}

/// Prompt rows prefilled together at most (one request always goes, however long).
const PREFILL_ROWS: usize = 512;

struct Worker {
    model: Llama,
    tok: Arc<Tokenizer>,
    kv: Cache,
    stop_ids: Vec<u32>,
    rx: std::sync::mpsc::Receiver<Msg>,
    adapters: HashMap<String, Rc<Adapter>>,
    waiting: VecDeque<GenRequest>,
    running: Vec<Seq>,
    /// Free slots; the lowest is taken first (pop from the end) to keep batches consecutive.
    free: Vec<i64>,
    stats: Arc<EngineStats>,
    ttft: Arc<dyn Fn(f64) + Send + Sync>,
    step_delay: std::time::Duration,
    threads: usize,
}

impl Worker {
    /// libtorch threads for a phase: all of them for prompts (large GEMMs), one while decoding.
    /// A decode step is some 900 small ops; with more than one thread libtorch's OpenMP workers
    /// wake (or spin) for each of them on the cores the float32 kernel needs, which measured 2-3x
    /// slower steps here (mixed-adapter batch 8 in int8: 43 tok/s with 2 threads, 112 with 1).
    fn phase_threads(&self, prefill: bool) {
        let n = if prefill { self.threads } else { 1 };
        if tch::get_num_threads() != n as i32 {
            tch::set_num_threads(n as i32);
        }
    }

    fn run(mut self) {
        let _g = tch::no_grad_guard();
        self.stop_ids = ["<|im_end|>", "<|endoftext|>", "<|eot_id|>", "<|end|>"]
            .iter()
            .filter_map(|t| self.tok.token_id(t))
            .chain(self.tok.eos)
            .collect();
        loop {
            if self.running.is_empty() && self.waiting.is_empty() {
                match self.rx.recv() {
                    Ok(m) => self.receive(m),
                    Err(_) => return,
                }
            }
            while let Ok(m) = self.rx.try_recv() {
                self.receive(m);
            }
            self.admit();
            if !self.running.is_empty() {
                self.step();
                if !self.step_delay.is_zero() {
                    std::thread::sleep(self.step_delay);
                }
            }
        }
    }

    fn receive(&mut self, m: Msg) {
        match m {
            Msg::Gen(r) => self.waiting.push_back(r),
            Msg::Install(name, a) => {
                self.adapters.insert(name, Rc::new(a));
            }
            Msg::Evict(name) => {
                self.adapters.remove(&name);
            }
            Msg::Embed(e) => {
                let _ = e.reply.send(self.embed(&e));
            }
            Msg::WeightNames(reply) => {
                let mut names: Vec<(String, Vec<i64>)> = self
                    .model
                    .weights()
                    .iter()
                    .map(|(n, t)| (n.clone(), t.size()))
                    .collect();
                names.sort();
                let _ = reply.send(names);
            }
            Msg::Weight(name, reply) => {
                let w = self.model.weights().get(&name).and_then(|t| {
                    Vec::<f32>::try_from(t.to_kind(tch::Kind::Float).contiguous().view([-1])).ok()
                });
                let _ = reply.send(w);
            }
        }
    }

    /// Runs an embedding request between decoding steps (each text alone: no padding).
    fn embed(&self, e: &EmbedRequest) -> Result<Vec<Vec<f32>>, String> {
        e.texts
            .iter()
            .map(|ids| {
                let h = self
                    .model
                    .hidden_states(ids, e.layer)
                    .map_err(|err| err.to_string())?;
                let v = match e.pooling {
                    Pooling::Mean => h.mean_dim(0, false, tch::Kind::Float),
                    Pooling::Last => h.get(h.size()[0] - 1),
                    Pooling::First => h.get(0),
                };
                Vec::<f32>::try_from(v.contiguous()).map_err(|err| err.to_string())
            })
            .collect()
    }

    fn release(&mut self) {
        self.stats.in_system.fetch_sub(1, Ordering::AcqRel);
    }

    fn admit(&mut self) {
        loop {
            let batch = self.take_admissions();
            if batch.is_empty() {
                return;
            }
            self.phase_threads(true);
            let results = self.prefill(&batch);
            for ((req, adapter, slot), logits) in batch.into_iter().zip(results) {
                self.stats
                    .prompt_tokens
                    .fetch_add(req.prompt.len(), Ordering::Relaxed);
                match logits {
                    Ok(row) => {
                        let mut seq = Seq {
                            adapter,
                            sampler: Sampler::new(req.sampling.clone()),
                            pos: req.prompt.len() as i64,
                            req,
                            slot,
                            last: 0,
                            generated: 0,
                            decoder: StreamDecoder::default(),
                            text: String::new(),
                            emitted: 0,
                            first_token_sent: false,
                            last_event: None,
                        };
                        let t = seq.sampler.sample(&row);
                        self.stats.running.fetch_add(1, Ordering::Relaxed);
                        if self.accept(&mut seq, t) {
                            self.running.push(seq);
                        } else {
                            self.finish_slot(slot);
                            seq.send_last();
                        }
                    }
                    Err(e) => {
                        let _ = req.events.send(Event::Error(e));
                        self.free.push(slot);
                        self.release();
                    }
                }
            }
        }
    }

    /// Waiting requests for free slots, up to [`PREFILL_ROWS`] prompt tokens; requests that
    /// cannot run (client gone, adapter not loaded, bad prompt) are answered here.
    fn take_admissions(&mut self) -> Vec<Admission> {
        let mut batch = Vec::new();
        let mut rows = 0;
        while !self.free.is_empty() && (batch.is_empty() || rows < PREFILL_ROWS) {
            let Some(req) = self.waiting.pop_front() else {
                break;
            };
            if req.events.is_closed() {
                self.stats.cancelled.fetch_add(1, Ordering::Relaxed);
                self.release();
                continue;
            }
            let adapter = match &req.adapter {
                None => None,
                Some(name) => match self.adapters.get(name) {
                    Some(a) => Some(a.clone()),
                    None => {
                        let _ = req
                            .events
                            .send(Event::Error(format!("adapter `{name}` is not loaded")));
                        self.release();
                        continue;
                    }
                },
            };
            let bad = if req.prompt.is_empty() {
                Some("empty prompt".to_string())
            } else {
                self.model
                    .check_positions(req.prompt.len() as i64)
                    .err()
                    .map(|e| e.to_string())
            };
            if let Some(e) = bad {
                let _ = req.events.send(Event::Error(e));
                self.release();
                continue;
            }
            let Some(slot) = self.free.pop() else { break };
            rows += req.prompt.len();
            batch.push((req, adapter, slot));
        }
        batch
    }

    /// The last-position logits of each admitted prompt (all in one pass on the host path).
    fn prefill(&mut self, batch: &[Admission]) -> Vec<Result<Vec<f32>, String>> {
        match &mut self.kv {
            Cache::Tensor(kv) => batch
                .iter()
                .map(|(req, adapter, slot)| {
                    let prompt: Vec<i64> = req.prompt.iter().map(|&t| t as i64).collect();
                    self.model
                        .prefill(&prompt, *slot, kv, adapter.as_deref())
                        .and_then(|l| Ok(Vec::<f32>::try_from(l.to_kind(Kind::Float))?))
                        .map_err(|e| e.to_string())
                })
                .collect(),
            Cache::Host(kv) => {
                let (mut tokens, mut slots, mut pos, mut ends) = (vec![], vec![], vec![], vec![]);
                let mut groups: Vec<(Rc<Adapter>, Vec<usize>)> = Vec::new();
                for (req, adapter, slot) in batch {
                    let first = tokens.len();
                    tokens.extend(req.prompt.iter().map(|&t| t as i64));
                    slots.extend(std::iter::repeat_n(*slot as usize, req.prompt.len()));
                    pos.extend(0..req.prompt.len());
                    ends.push(tokens.len() - 1);
                    if let Some(a) = adapter {
                        group_rows(&mut groups, a, first..tokens.len());
                    }
                }
                let refs: Vec<(&Adapter, Vec<usize>)> = groups
                    .iter()
                    .map(|(a, r)| (a.as_ref(), r.clone()))
                    .collect();
                let rows = Rows {
                    tokens: &tokens,
                    slots: &slots,
                    pos: &pos,
                    groups: &refs,
                };
                match self.model.forward_host(&rows, kv, &ends) {
                    Ok(l) => {
                        let v = l.len() / batch.len();
                        l.chunks_exact(v).map(|r| Ok(r.to_vec())).collect()
                    }
                    Err(e) => batch.iter().map(|_| Err(e.to_string())).collect(),
                }
            }
        }
    }

    fn finish_slot(&mut self, slot: i64) {
        self.free.push(slot);
        self.free.sort_unstable_by(|a, b| b.cmp(a));
        self.stats.running.fetch_sub(1, Ordering::Relaxed);
        self.release();
    }

    /// Takes a sampled token; false when the sequence is over (its events are complete).
    fn accept(&mut self, seq: &mut Seq, token: u32) -> bool {
        if !seq.first_token_sent {
            seq.first_token_sent = true;
            (self.ttft)(seq.req.arrived.elapsed().as_secs_f64());
        }
        if seq.req.events.is_closed() {
            self.stats.cancelled.fetch_add(1, Ordering::Relaxed);
            return false;
        }
        let done = |seq: &Seq, finish| Event::Done {
            finish,
            prompt_tokens: seq.req.prompt.len(),
            completion_tokens: seq.generated,
        };
        if self.stop_ids.contains(&token) && !seq.req.ignore_eos {
            seq.generated += 1;
            self.stats.generated_tokens.fetch_add(1, Ordering::Relaxed);
            let rest = seq.decoder.finish();
            seq.text.push_str(&rest);
            self.flush(seq, seq.text.len());
            seq.last_event = Some(done(seq, FinishReason::Stop));
            return false;
        }
        seq.generated += 1;
        self.stats.generated_tokens.fetch_add(1, Ordering::Relaxed);
        seq.last = token;
        let piece = seq.decoder.push(&self.tok, token);
        seq.text.push_str(&piece);
        // A stop string ends the text where it starts.
        let search_from = seq
            .emitted
            .saturating_sub(seq.req.stop.iter().map(String::len).max().unwrap_or(0));
        let hit = seq
            .req
            .stop
            .iter()
            .filter(|s| !s.is_empty())
            .filter_map(|s| {
                seq.text[search_from..]
                    .find(s.as_str())
                    .map(|p| p + search_from)
            })
            .min();
        if let Some(at) = hit {
            self.flush(seq, at);
            seq.last_event = Some(done(seq, FinishReason::Stop));
            return false;
        }
        let out_of_room = seq.pos + 1 >= self.model.cfg.max_position_embeddings as i64;
        if seq.generated >= seq.req.max_tokens || out_of_room {
            let rest = seq.decoder.finish();
            seq.text.push_str(&rest);
            self.flush(seq, seq.text.len());
            seq.last_event = Some(done(seq, FinishReason::Length));
            return false;
        }
        // Hold back what could still become the start of a stop string.
        let hold = seq
            .req
            .stop
            .iter()
            .map(|s| s.len().saturating_sub(1))
            .max()
            .unwrap_or(0);
        let mut upto = seq.text.len().saturating_sub(hold).max(seq.emitted);
        while !seq.text.is_char_boundary(upto) {
            upto -= 1;
        }
        self.flush(seq, upto);
        true
    }

    /// Sends `text[emitted..upto]`.
    fn flush(&self, seq: &mut Seq, upto: usize) {
        if upto > seq.emitted {
            let _ = seq
                .req
                .events
                .send(Event::Text(seq.text[seq.emitted..upto].to_string()));
            seq.emitted = upto;
        }
    }

    fn step(&mut self) {
        // Rows ordered by slot, so the common case reads a consecutive run of the cache.
        self.running.sort_by_key(|s| s.slot);
        let tokens: Vec<i64> = self.running.iter().map(|s| s.last as i64).collect();
        let slots: Vec<i64> = self.running.iter().map(|s| s.slot).collect();
        let pos: Vec<i64> = self.running.iter().map(|s| s.pos).collect();
        // Group rows by adapter identity.
        let mut groups: Vec<(Rc<Adapter>, Vec<usize>)> = Vec::new();
        let mut base_rows = 0;
        for (i, s) in self.running.iter().enumerate() {
            match &s.adapter {
                Some(a) => group_rows(&mut groups, a, std::iter::once(i)),
                None => base_rows += 1,
            }
        }
        let kinds = groups.len() + usize::from(base_rows > 0);
        if kinds > 1 {
            self.stats.mixed_steps.fetch_add(1, Ordering::Relaxed);
        }
        self.phase_threads(false);
        let result = match &mut self.kv {
            Cache::Tensor(kv) => {
                let group_refs: Vec<(&Adapter, Tensor)> = groups
                    .iter()
                    .map(|(a, rows)| {
                        let rows: Vec<i64> = rows.iter().map(|&r| r as i64).collect();
                        (a.as_ref(), Tensor::from_slice(&rows))
                    })
                    .collect();
                let adapt = if group_refs.is_empty() {
                    Adapt::None
                } else {
                    Adapt::Rows(&group_refs)
                };
                self.model
                    .decode(&tokens, &slots, &pos, kv, adapt)
                    .and_then(|l| Ok(Vec::<f32>::try_from(l.flatten(0, -1))?))
            }
            Cache::Host(kv) => {
                let refs: Vec<(&Adapter, Vec<usize>)> = groups
                    .iter()
                    .map(|(a, r)| (a.as_ref(), r.clone()))
                    .collect();
                let slots: Vec<usize> = slots.iter().map(|&s| s as usize).collect();
                let pos: Vec<usize> = pos.iter().map(|&p| p as usize).collect();
                let all: Vec<usize> = (0..tokens.len()).collect();
                let rows = Rows {
                    tokens: &tokens,
                    slots: &slots,
                    pos: &pos,
                    groups: &refs,
                };
                self.model.forward_host(&rows, kv, &all)
            }
        };
        self.stats.steps.fetch_add(1, Ordering::Relaxed);
        self.stats
            .max_batch
            .fetch_max(self.running.len(), Ordering::Relaxed);
        let rows = match result {
            Ok(r) => r,
            Err(e) => {
                let msg = e.to_string();
                for s in std::mem::take(&mut self.running) {
                    let _ = s.req.events.send(Event::Error(msg.clone()));
                    self.finish_slot(s.slot);
                }
                return;
            }
        };
        let vocab = rows.len() / self.running.len().max(1);
        let mut keep = Vec::with_capacity(self.running.len());
        for (i, mut seq) in std::mem::take(&mut self.running).into_iter().enumerate() {
            seq.pos += 1;
            let t = seq.sampler.sample(&rows[i * vocab..(i + 1) * vocab]);
            if self.accept(&mut seq, t) {
                keep.push(seq);
            } else {
                self.finish_slot(seq.slot);
                seq.send_last();
            }
        }
        self.running = keep;
    }
}

#[cfg(test)]
mod tests;
