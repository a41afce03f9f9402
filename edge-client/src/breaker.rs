//! A circuit breaker for the offload path: after `threshold` consecutive failures it opens and
//! the device answers locally without trying the cloud for `backoff`; then one probe request is
//! let through (half-open) and its outcome closes or re-opens the circuit.

use std::time::{Duration, Instant};

/// Breaker state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum State {
    /// Offloads go through.
    Closed,
    /// Offloads are skipped until the back-off ends.
    Open,
    /// One probe is in flight.
    HalfOpen,
}

/// Consecutive-failure circuit breaker.
#[derive(Debug)]
pub struct CircuitBreaker {
    /// Failures in a row that open the circuit.
    threshold: u32,
    /// How long the circuit stays open.
    backoff: Duration,
    /// Current failures in a row.
    failures: u32,
    /// When the circuit opened (None when closed).
    opened_at: Option<Instant>,
    /// A probe is in flight.
    probing: bool,
}

impl CircuitBreaker {
    /// A closed breaker.
    pub fn new(threshold: u32, backoff: Duration) -> Self {
        Self {
            threshold: threshold.max(1),
            backoff,
            failures: 0,
            opened_at: None,
            probing: false,
        }
    }

    /// Current state at `now`.
    pub fn state(&self, now: Instant) -> State {
        match self.opened_at {
            None => State::Closed,
            Some(_) if self.probing => State::HalfOpen,
            Some(t) if now.duration_since(t) >= self.backoff => State::HalfOpen,
            Some(_) => State::Open,
        }
    }

    /// Whether to try the cloud now; in half-open state only one caller gets `true` (the probe).
    pub fn allow(&mut self, now: Instant) -> bool {
        match self.state(now) {
            State::Closed => true,
            State::Open => false,
            State::HalfOpen if self.probing => false,
            State::HalfOpen => {
                self.probing = true;
                true
            }
        }
    }

    /// Records a success: closes the circuit.
    pub fn success(&mut self) {
        self.failures = 0;
        self.opened_at = None;
        self.probing = false;
    }

    /// Records a failure: opens the circuit at the threshold (or re-opens after a failed probe).
    pub fn failure(&mut self, now: Instant) {
        self.failures += 1;
        if self.probing || self.failures >= self.threshold {
            self.opened_at = Some(now);
            self.probing = false;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_after_consecutive_failures_then_probes_once() {
        let t0 = Instant::now();
        let mut b = CircuitBreaker::new(3, Duration::from_millis(100));
        for _ in 0..2 {
            assert!(b.allow(t0));
            b.failure(t0);
        }
        assert_eq!(b.state(t0), State::Closed);
        b.failure(t0);
        assert!(!b.allow(t0 + Duration::from_millis(50)));
        let later = t0 + Duration::from_millis(100);
        assert!(b.allow(later), "probe");
        assert!(!b.allow(later), "only one probe");
        b.failure(later);
        assert_eq!(b.state(later + Duration::from_millis(10)), State::Open);
        let again = later + Duration::from_millis(100);
        assert!(b.allow(again));
        b.success();
        assert_eq!(b.state(again), State::Closed);
    }
}
