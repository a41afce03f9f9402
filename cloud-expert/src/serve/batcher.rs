//! Dynamic batching on a dedicated worker thread per model.
//!
//! Requests are queued on a bounded channel (a full queue is refused at once, never waited on).
//! The worker takes the first waiting job, then keeps gathering until `max_batch` rows are
//! collected or `max_delay` has passed since that first job, drops jobs whose client deadline has
//! already passed, runs one tch forward pass for the whole batch and answers each job on its own
//! oneshot channel. Model compute therefore never runs on the async runtime.

use crate::stored::LoadedExpert;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

/// Observers of executed batches (the metrics' histograms for this model).
#[derive(Debug, Clone)]
pub struct BatchObserver {
    /// Rows per forward pass.
    pub rows: prometheus::Histogram,
    /// Requests per forward pass.
    pub requests: prometheus::Histogram,
}

/// Batching limits.
#[derive(Debug, Clone, Copy)]
pub struct BatchConfig {
    /// Most rows run together in one forward pass (1 disables batching).
    pub max_batch: usize,
    /// Longest a first job waits for company.
    pub max_delay: Duration,
    /// Jobs that may wait in the queue; more are refused with "overloaded".
    pub queue_depth: usize,
    /// Artificial extra compute time per batch (fault testing only; zero in production).
    pub artificial_delay: Duration,
    /// libtorch intra-op threads.
    pub torch_threads: usize,
}

/// One request's work.
#[derive(Debug)]
pub struct Job {
    /// Row-major raw features, `rows * feature_len`.
    pub x: Vec<f32>,
    /// Number of samples.
    pub rows: usize,
    /// Client deadline; the job is dropped unanswered-by-compute once it has passed.
    pub deadline: Option<Instant>,
    /// When the job was queued.
    pub enqueued: Instant,
    /// Where the answer goes.
    pub reply: oneshot::Sender<Result<JobOutput, JobError>>,
}

/// The answer to one job.
#[derive(Debug, Clone)]
pub struct JobOutput {
    /// Class probabilities, `rows * num_classes`.
    pub probs: Vec<f32>,
    /// Row length of `probs`.
    pub num_classes: usize,
    /// Microseconds spent queued.
    pub queue_us: u64,
    /// Microseconds of the batch's forward pass.
    pub compute_us: u64,
    /// Jobs in the batch.
    pub batch_size: u32,
}

/// Why a job produced no answer.
#[derive(Debug, Clone, thiserror::Error)]
pub enum JobError {
    /// The client deadline passed before compute.
    #[error("deadline exceeded before the expert ran")]
    DeadlineExceeded,
    /// The forward pass failed.
    #[error("expert failed: {0}")]
    Compute(String),
}

/// Why a job could not be queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SubmitError {
    /// The queue is at its configured depth.
    #[error("queue full")]
    Full,
    /// The worker has stopped.
    #[error("worker stopped")]
    Closed,
}

/// Handle to a model's worker.
#[derive(Debug, Clone)]
pub struct BatchQueue {
    /// Bounded sender into the worker.
    tx: SyncSender<Job>,
    /// Jobs queued and not yet taken by the worker.
    depth: Arc<AtomicUsize>,
}

impl BatchQueue {
    /// Queues a job without waiting.
    pub fn submit(&self, job: Job) -> Result<(), SubmitError> {
        self.depth.fetch_add(1, Ordering::Relaxed);
        self.tx.try_send(job).map_err(|e| {
            self.depth.fetch_sub(1, Ordering::Relaxed);
            match e {
                TrySendError::Full(_) => SubmitError::Full,
                TrySendError::Disconnected(_) => SubmitError::Closed,
            }
        })
    }

    /// Jobs waiting for the worker right now.
    pub fn depth(&self) -> usize {
        self.depth.load(Ordering::Relaxed)
    }
}

/// Starts the worker thread; `load` runs on it (tch models stay on the thread that made them).
/// Returns once the model is loaded and warmed up, or with the load error.
pub fn spawn<F>(
    name: &str,
    cfg: BatchConfig,
    observer: Option<BatchObserver>,
    load: F,
) -> Result<BatchQueue, String>
where
    F: FnOnce() -> Result<LoadedExpert, String> + Send + 'static,
{
    let (tx, rx) = sync_channel::<Job>(cfg.queue_depth.max(1));
    let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<(), String>>();
    let depth = Arc::new(AtomicUsize::new(0));
    let worker_depth = depth.clone();
    std::thread::Builder::new()
        .name(format!("expert-{name}"))
        .spawn(move || {
            // libtorch's intra-op pool would spin on the same cores as the gRPC runtime; by
            // default each worker computes on its own thread (batching supplies the parallelism).
            tch::set_num_threads(cfg.torch_threads.max(1) as i32);
            match load() {
                Ok(expert) => {
                    let warm = vec![0.0; expert.feature_len()];
                    let ok = expert.probs(&warm, 1).map(|_| ());
                    let _ = ready_tx.send(ok);
                    worker_loop(&expert, &rx, cfg, &worker_depth, observer.as_ref());
                }
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                }
            }
        })
        .map_err(|e| e.to_string())?;
    ready_rx
        .recv()
        .map_err(|_| "worker thread died while loading".to_string())??;
    Ok(BatchQueue { tx, depth })
}

/// Adaptive gathering: everything already queued is always taken (up to `max_batch` rows); the
/// worker only *waits* (up to `max_delay`) for more while the batch has fewer jobs than the
/// previous one had. Under steady concurrency the previous batch size predicts how many requests
/// are about to arrive; a lone client (previous batch of one) never waits, so batching adds no
/// latency at concurrency 1.
fn worker_loop(
    expert: &LoadedExpert,
    rx: &Receiver<Job>,
    cfg: BatchConfig,
    depth: &AtomicUsize,
    observer: Option<&BatchObserver>,
) {
    let mut expected = 1usize;
    let take = |job: Job| {
        depth.fetch_sub(1, Ordering::Relaxed);
        job
    };
    while let Ok(first) = rx.recv().map(take) {
        let started = Instant::now();
        let mut batch = vec![first];
        let mut rows = batch[0].rows;
        while rows < cfg.max_batch {
            let next = match rx.try_recv() {
                Ok(job) => Some(take(job)),
                Err(_) if batch.len() >= expected => None,
                Err(_) => {
                    let left = cfg.max_delay.saturating_sub(started.elapsed());
                    rx.recv_timeout(left).ok().map(take)
                }
            };
            match next {
                Some(job) => {
                    rows += job.rows;
                    batch.push(job);
                }
                None => break,
            }
        }
        expected = batch.len();
        let now = Instant::now();
        let (live, late): (Vec<Job>, Vec<Job>) = batch
            .into_iter()
            .partition(|j| j.deadline.is_none_or(|d| d > now) && !j.reply.is_closed());
        for job in late {
            let _ = job.reply.send(Err(JobError::DeadlineExceeded));
        }
        if live.is_empty() {
            continue;
        }
        if let Some(o) = observer {
            o.rows
                .observe(live.iter().map(|j| j.rows).sum::<usize>() as f64);
            o.requests.observe(live.len() as f64);
        }
        run_batch(expert, live, cfg);
    }
}

fn run_batch(expert: &LoadedExpert, jobs: Vec<Job>, cfg: BatchConfig) {
    let total: usize = jobs.iter().map(|j| j.rows).sum();
    let mut x = Vec::with_capacity(total * expert.feature_len());
    for j in &jobs {
        x.extend_from_slice(&j.x);
    }
    let t0 = Instant::now();
    if !cfg.artificial_delay.is_zero() {
        std::thread::sleep(cfg.artificial_delay);
    }
    let result = expert.probs(&x, total);
    let compute_us = t0.elapsed().as_micros() as u64;
    let k = expert.num_classes();
    let n_jobs = jobs.len() as u32;
    let mut offset = 0;
    for job in jobs {
        let out = match &result {
            Ok(p) => Ok(JobOutput {
                probs: p[offset * k..(offset + job.rows) * k].to_vec(),
                num_classes: k,
                queue_us: t0.duration_since(job.enqueued).as_micros() as u64,
                compute_us,
                batch_size: n_jobs,
            }),
            Err(e) => Err(JobError::Compute(e.clone())),
        };
        offset += job.rows;
        let _ = job.reply.send(out);
    }
}
