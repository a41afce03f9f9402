//! Analysis jobs: `POST` an analysis with `"job": true` (or one that is always a job) and get
//! `202 {"job_id"}`; `GET /v1/analysis/jobs/{id}` gives state, progress and, once done, the
//! result or the error; `DELETE /v1/analysis/jobs/{id}` cancels.
//!
//! Invariants: at most `max_jobs` jobs are kept; when full, the oldest finished job is
//! forgotten to make room, and if none has finished the new job is refused (503). A job waits
//! ("queued") for one of the analysis permits shared with synchronous requests, then runs on
//! the blocking pool ("running"); it ends exactly once, in "succeeded", "failed" or
//! "cancelled".

use crate::analysis::{AnalysisError, Progress};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

/// Where a job is.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum JobState {
    /// Waiting for a permit.
    Queued,
    /// Computing.
    Running,
    /// Done; the result is in the view.
    Succeeded,
    /// Done; the error is in the view.
    Failed,
    /// Stopped by `DELETE`.
    Cancelled,
}

/// The public view of a job (`GET /v1/analysis/jobs/{id}`).
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct JobView {
    /// Job id.
    pub id: String,
    /// The analysis (`spectrum`, `intrinsic-dimension`, ...).
    pub kind: String,
    /// Where it is.
    pub state: JobState,
    /// Steps done.
    pub done: usize,
    /// Steps planned (0 until known).
    pub total: usize,
    /// `done / total` (0 until known).
    pub fraction: f64,
    /// Seconds since submission.
    pub elapsed_s: f64,
    /// Unix time of submission, in seconds.
    pub submitted_at: u64,
    /// The result, once succeeded.
    #[schema(value_type = Object)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub result: Option<serde_json::Value>,
    /// The error, once failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<super::ErrorDetail>,
}

struct Job {
    kind: String,
    progress: Arc<Progress>,
    started: Instant,
    submitted_at: u64,
    outcome: Mutex<(JobState, Option<serde_json::Value>, Option<super::ErrorDetail>, Option<f64>)>,
}

impl Job {
    fn view(&self, id: &str) -> JobView {
        let (done, total) = self.progress.get();
        let o = self.outcome.lock().unwrap_or_else(|p| p.into_inner());
        JobView {
            id: id.to_string(),
            kind: self.kind.clone(),
            state: o.0.clone(),
            done,
            total,
            fraction: if total > 0 { done as f64 / total as f64 } else { 0.0 },
            elapsed_s: o.3.unwrap_or_else(|| self.started.elapsed().as_secs_f64()),
            submitted_at: self.submitted_at,
            result: o.1.clone(),
            error: o.2.clone(),
        }
    }

    fn finished(&self) -> bool {
        let o = self.outcome.lock().unwrap_or_else(|p| p.into_inner());
        !matches!(o.0, JobState::Queued | JobState::Running)
    }

    fn finish(&self, state: JobState, result: Option<serde_json::Value>, error: Option<super::ErrorDetail>) {
        let mut o = self.outcome.lock().unwrap_or_else(|p| p.into_inner());
        if matches!(o.0, JobState::Queued | JobState::Running) {
            *o = (state, result, error, Some(self.started.elapsed().as_secs_f64()));
        }
    }
}

/// The job table.
pub struct Jobs {
    jobs: Mutex<HashMap<String, (u64, Arc<Job>)>>,
    next: AtomicU64,
    max_jobs: usize,
}

/// Why a job could not be queued.
#[derive(Debug, thiserror::Error)]
#[error("{0} analysis jobs are unfinished, the most kept; retry later")]
pub struct JobsFull(pub usize);

impl Jobs {
    /// A table keeping at most `max_jobs` jobs.
    pub fn new(max_jobs: usize) -> Self {
        Self {
            jobs: Mutex::new(HashMap::new()),
            next: AtomicU64::new(1),
            max_jobs: max_jobs.max(1),
        }
    }

    /// Queues `f`; it runs once a permit from `permits` is free. Returns the job id.
    pub fn submit<F>(&self, kind: &str, permits: Arc<tokio::sync::Semaphore>, f: F) -> Result<String, JobsFull>
    where
        F: FnOnce(&Progress) -> Result<serde_json::Value, AnalysisError> + Send + 'static,
    {
        let seq = self.next.fetch_add(1, Ordering::Relaxed);
        let id = format!("job-{seq}-{:08x}", nonce(seq));
        let job = Arc::new(Job {
            kind: kind.to_string(),
            progress: Arc::new(Progress::default()),
            started: Instant::now(),
            submitted_at: SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()),
            outcome: Mutex::new((JobState::Queued, None, None, None)),
        });
        {
            let mut map = self.jobs.lock().unwrap_or_else(|p| p.into_inner());
            if map.len() >= self.max_jobs {
                let oldest = map
                    .iter()
                    .filter(|(_, (_, j))| j.finished())
                    .min_by_key(|(_, (s, _))| *s)
                    .map(|(k, _)| k.clone());
                match oldest {
                    Some(k) => {
                        map.remove(&k);
                    }
                    None => return Err(JobsFull(map.len())),
                }
            }
            map.insert(id.clone(), (seq, job.clone()));
        }
        tokio::spawn(async move {
            let Ok(_permit) = permits.acquire_owned().await else {
                return;
            };
            if job.progress.is_cancelled() {
                job.finish(JobState::Cancelled, None, None);
                return;
            }
            job.outcome.lock().unwrap_or_else(|p| p.into_inner()).0 = JobState::Running;
            let progress = job.progress.clone();
            let outcome = tokio::task::spawn_blocking(move || f(&progress)).await;
            match outcome {
                Ok(Ok(v)) => job.finish(JobState::Succeeded, Some(v), None),
                Ok(Err(AnalysisError::Cancelled)) => job.finish(JobState::Cancelled, None, None),
                Ok(Err(e)) => {
                    let field = match &e {
                        AnalysisError::Invalid { field, .. } => Some(field.clone()),
                        _ => None,
                    };
                    job.finish(JobState::Failed, None, Some(super::ErrorDetail { message: e.to_string(), field }));
                }
                Err(e) => job.finish(
                    JobState::Failed,
                    None,
                    Some(super::ErrorDetail { message: format!("analysis panicked: {e}"), field: None }),
                ),
            }
        });
        Ok(id)
    }

    /// The job's view, if known.
    pub fn get(&self, id: &str) -> Option<JobView> {
        let map = self.jobs.lock().unwrap_or_else(|p| p.into_inner());
        map.get(id).map(|(_, j)| j.view(id))
    }

    /// Asks the job to stop; a queued job is cancelled at once. The view after, if known.
    pub fn cancel(&self, id: &str) -> Option<JobView> {
        let job = {
            let map = self.jobs.lock().unwrap_or_else(|p| p.into_inner());
            map.get(id).map(|(_, j)| j.clone())?
        };
        job.progress.cancel();
        let queued = matches!(job.outcome.lock().unwrap_or_else(|p| p.into_inner()).0, JobState::Queued);
        if queued {
            job.finish(JobState::Cancelled, None, None);
        }
        Some(job.view(id))
    }
}

/// A hard-to-guess suffix so ids are not enumerable by counting.
fn nonce(seq: u64) -> u32 {
    let t = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64);
    let mut z = seq.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ t;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    (z ^ (z >> 31)) as u32
}
