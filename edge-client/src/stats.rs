//! Running counters of a device: answers by source, offload rate, latency percentiles.

use serde::Serialize;

/// Where an answer came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    /// m answered (the rejector kept it local, or the budget was spent).
    Local,
    /// The cloud expert answered.
    Remote,
    /// The rejector offloaded but the cloud could not answer in time: m answered.
    Fallback,
}

/// Latency samples kept for percentiles (a ring of the most recent).
const WINDOW: usize = 100_000;

/// Counters and recent latencies.
#[derive(Debug, Default, Clone)]
pub struct Stats {
    /// Answers from m by the rejector's choice.
    pub local: u64,
    /// Answers from the expert.
    pub remote: u64,
    /// Answers from m after a failed offload.
    pub fallback: u64,
    /// Offloads the budget refused.
    pub budget_refused: u64,
    /// Correct answers among those with a known label.
    pub correct: u64,
    /// Answers with a known label.
    pub labelled: u64,
    /// Recent end-to-end latencies in microseconds.
    latencies_us: Vec<u64>,
    /// Next ring position.
    next: usize,
}

/// A snapshot for reports and `GET /stats`.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    /// Total answers.
    pub total: u64,
    /// By source.
    pub local: u64,
    /// By source.
    pub remote: u64,
    /// By source.
    pub fallback: u64,
    /// Offloads refused by the budget.
    pub budget_refused: u64,
    /// (remote + fallback) / total: how often the rejector chose to offload.
    pub offload_rate: f64,
    /// Accuracy over labelled inputs.
    pub accuracy: Option<f64>,
    /// Latency percentiles in microseconds.
    pub latency_p50_us: Option<u64>,
    /// Latency percentiles in microseconds.
    pub latency_p99_us: Option<u64>,
}

impl Stats {
    /// Records one answer.
    pub fn record(&mut self, source: Source, latency_us: u64, correct: Option<bool>) {
        match source {
            Source::Local => self.local += 1,
            Source::Remote => self.remote += 1,
            Source::Fallback => self.fallback += 1,
        }
        if let Some(c) = correct {
            self.labelled += 1;
            self.correct += c as u64;
        }
        if self.latencies_us.len() < WINDOW {
            self.latencies_us.push(latency_us);
        } else {
            self.latencies_us[self.next] = latency_us;
        }
        self.next = (self.next + 1) % WINDOW;
    }

    /// Snapshot with percentiles.
    pub fn summary(&self) -> Summary {
        let total = self.local + self.remote + self.fallback;
        let mut l = self.latencies_us.clone();
        l.sort_unstable();
        let pct = |q: f64| (!l.is_empty()).then(|| l[((l.len() - 1) as f64 * q).round() as usize]);
        Summary {
            total,
            local: self.local,
            remote: self.remote,
            fallback: self.fallback,
            budget_refused: self.budget_refused,
            offload_rate: if total == 0 {
                0.0
            } else {
                (self.remote + self.fallback) as f64 / total as f64
            },
            accuracy: (self.labelled > 0).then(|| self.correct as f64 / self.labelled as f64),
            latency_p50_us: pct(0.5),
            latency_p99_us: pct(0.99),
        }
    }
}
