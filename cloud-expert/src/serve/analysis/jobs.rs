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

/// A job's state, result or error, and its run time once finished.
struct Outcome {
    state: JobState,
    result: Option<serde_json::Value>,
    error: Option<super::ErrorDetail>,
    elapsed_s: Option<f64>,
}

impl Outcome {
    fn unfinished(&self) -> bool {
        matches!(self.state, JobState::Queued | JobState::Running)
    }
}

struct Job {
    kind: String,
    progress: Arc<Progress>,
    started: Instant,
    submitted_at: u64,
    outcome: Mutex<Outcome>,
}

impl Job {
    fn view(&self, id: &str) -> JobView {
        let (done, total) = self.progress.get();
        let o = self.outcome.lock().unwrap_or_else(|p| p.into_inner());
        JobView {
            id: id.to_string(),
            kind: self.kind.clone(),
            state: o.state.clone(),
            done,
            total,
            fraction: if total > 0 {
                done as f64 / total as f64
            } else {
                0.0
            },
            elapsed_s: o
                .elapsed_s
                .unwrap_or_else(|| self.started.elapsed().as_secs_f64()),
            submitted_at: self.submitted_at,
            result: o.result.clone(),
            error: o.error.clone(),
        }
    }

    fn finished(&self) -> bool {
        let o = self.outcome.lock().unwrap_or_else(|p| p.into_inner());
        !o.unfinished()
    }

    fn finish(
        &self,
        state: JobState,
        result: Option<serde_json::Value>,
        error: Option<super::ErrorDetail>,
    ) {
        let mut o = self.outcome.lock().unwrap_or_else(|p| p.into_inner());
        if o.unfinished() {
            *o = Outcome {
                state,
                result,
                error,
                elapsed_s: Some(self.started.elapsed().as_secs_f64()),
            };
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
    pub fn submit<F>(
        &self,
        kind: &str,
        permits: Arc<tokio::sync::Semaphore>,
        f: F,
    ) -> Result<String, JobsFull>
    where
        F: FnOnce(&Progress) -> Result<serde_json::Value, AnalysisError> + Send + 'static,
    {
        let seq = self.next.fetch_add(1, Ordering::Relaxed);
        let id = format!("job-{seq}-{:08x}", nonce(seq));
        let job = Arc::new(Job {
            kind: kind.to_string(),
            progress: Arc::new(Progress::default()),
            started: Instant::now(),
            submitted_at: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
            outcome: Mutex::new(Outcome {
                state: JobState::Queued,
                result: None,
                error: None,
                elapsed_s: None,
            }),
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
            job.outcome.lock().unwrap_or_else(|p| p.into_inner()).state = JobState::Running;
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
                    job.finish(
                        JobState::Failed,
                        None,
                        Some(super::ErrorDetail {
                            message: e.to_string(),
                            field,
                        }),
                    );
                }
                Err(e) => job.finish(
                    JobState::Failed,
                    None,
                    Some(super::ErrorDetail {
                        message: format!("analysis panicked: {e}"),
                        field: None,
                    }),
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
        let queued = matches!(
            job.outcome.lock().unwrap_or_else(|p| p.into_inner()).state,
            JobState::Queued
        );
        if queued {
            job.finish(JobState::Cancelled, None, None);
        }
        Some(job.view(id))
    }
}

/// A hard-to-guess suffix so ids are not enumerable by counting.
fn nonce(seq: u64) -> u32 {
    let t = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    let mut z = seq.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ t;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    (z ^ (z >> 31)) as u32
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::sync::Semaphore;

    async fn settle(jobs: &Jobs, id: &str) -> JobView {
        for _ in 0..500 {
            let v = jobs.get(id).unwrap();
            if !matches!(v.state, JobState::Queued | JobState::Running) {
                return v;
            }
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        panic!("job {id} did not end");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn jobs_report_progress_fail_with_the_field_and_the_table_is_bounded() {
        let jobs = Jobs::new(2);
        let permits = Arc::new(Semaphore::new(1));
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        // Holds the only permit until told to finish.
        let a = jobs
            .submit("test", permits.clone(), move |p| {
                p.plan(2);
                p.step()?;
                let _ = rx.recv();
                p.step()?;
                Ok(serde_json::json!({"answer": 42}))
            })
            .unwrap();
        let b = jobs
            .submit("test", permits.clone(), |_| {
                Err(AnalysisError::invalid("k", "too big"))
            })
            .unwrap();
        // Full of unfinished jobs: refused.
        assert!(jobs
            .submit("test", permits.clone(), |_| Ok(serde_json::Value::Null))
            .is_err());
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        let running = jobs.get(&a).unwrap();
        assert!(matches!(running.state, JobState::Running), "{running:?}");
        assert_eq!((running.done, running.total), (1, 2));
        assert!(matches!(jobs.get(&b).unwrap().state, JobState::Queued));
        tx.send(()).unwrap();
        let done = settle(&jobs, &a).await;
        assert!(matches!(done.state, JobState::Succeeded));
        assert_eq!(done.result, Some(serde_json::json!({"answer": 42})));
        assert_eq!(done.fraction, 1.0);
        let failed = settle(&jobs, &b).await;
        assert!(matches!(failed.state, JobState::Failed));
        assert_eq!(failed.error.unwrap().field.as_deref(), Some("k"));
        // Finished jobs make room, oldest first.
        let c = jobs
            .submit("test", permits, |_| Ok(serde_json::Value::Null))
            .unwrap();
        assert!(jobs.get(&a).is_none() && jobs.get(&b).is_some() && jobs.get(&c).is_some());
        assert!(jobs.cancel("job-0-0").is_none());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn cancelling_stops_a_running_job_at_its_next_step_and_a_queued_one_at_once() {
        let jobs = Jobs::new(8);
        let permits = Arc::new(Semaphore::new(1));
        let a = jobs
            .submit("test", permits.clone(), |p| {
                p.plan(1000);
                for _ in 0..1000 {
                    std::thread::sleep(std::time::Duration::from_millis(2));
                    p.step()?;
                }
                Ok(serde_json::Value::Null)
            })
            .unwrap();
        let b = jobs
            .submit("test", permits, |_| Ok(serde_json::Value::Null))
            .unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(30)).await;
        let queued = jobs.cancel(&b).unwrap();
        assert!(matches!(queued.state, JobState::Cancelled), "{queued:?}");
        jobs.cancel(&a).unwrap();
        let v = settle(&jobs, &a).await;
        assert!(matches!(v.state, JobState::Cancelled), "{v:?}");
        assert!(v.done > 0 && v.done < 1000, "{v:?}");
        assert!(v.result.is_none());
    }
}
