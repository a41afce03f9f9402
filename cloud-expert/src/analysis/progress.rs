//! Progress and cancellation shared between a running analysis and whoever watches it (a job).
//! Invariant: reported `done <= total` once `total` is set; a cancelled analysis stops at its next
//! [`Progress::step`] and returns [`AnalysisError::Cancelled`].

use super::AnalysisError;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

/// Steps done out of steps planned, and a cancellation flag.
#[derive(Debug, Default)]
pub struct Progress {
    total: AtomicUsize,
    done: AtomicUsize,
    cancelled: AtomicBool,
}

impl Progress {
    /// Plans `total` steps of a new phase (an analysis may have several: embedding texts,
    /// then training): the count starts again at 0.
    pub fn plan(&self, total: usize) {
        self.done.store(0, Ordering::Relaxed);
        self.total.store(total, Ordering::Relaxed);
    }

    /// Fails if cancelled, else records one step done.
    pub fn step(&self) -> Result<(), AnalysisError> {
        self.check()?;
        self.done.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Fails if cancelled.
    pub fn check(&self) -> Result<(), AnalysisError> {
        if self.cancelled.load(Ordering::Relaxed) {
            Err(AnalysisError::Cancelled)
        } else {
            Ok(())
        }
    }

    /// Asks the analysis to stop.
    pub fn cancel(&self) {
        self.cancelled.store(true, Ordering::Relaxed);
    }

    /// Whether cancellation was asked.
    pub fn is_cancelled(&self) -> bool {
        self.cancelled.load(Ordering::Relaxed)
    }

    /// (done, total), with `done` capped at `total` when a plan is set.
    pub fn get(&self) -> (usize, usize) {
        let (d, t) = (
            self.done.load(Ordering::Relaxed),
            self.total.load(Ordering::Relaxed),
        );
        (if t > 0 { d.min(t) } else { d }, t)
    }
}
