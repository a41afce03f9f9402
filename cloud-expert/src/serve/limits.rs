//! Per-device request rate limiting: one token bucket per device identity.
//!
//! Invariant: the map of buckets is bounded. When it holds `max_devices` buckets, full buckets
//! (devices idle for at least `burst / rate` seconds, which a fresh bucket would equal) are
//! dropped first; if none is full the map is cleared, which can only be generous, never unfair.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

/// Request rate limit per device.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RateConfig {
    /// Sustained requests per second.
    pub per_second: f64,
    /// Requests allowed in a burst.
    pub burst: f64,
}

/// Token buckets by device.
#[derive(Debug)]
pub struct RateLimiter {
    /// The limit.
    cfg: RateConfig,
    /// Most buckets kept.
    max_devices: usize,
    /// Device -> (tokens, last refill).
    buckets: Mutex<HashMap<String, (f64, Instant)>>,
}

impl RateLimiter {
    /// A limiter; `cfg.per_second` must be positive.
    pub fn new(cfg: RateConfig, max_devices: usize) -> Self {
        Self {
            cfg,
            max_devices: max_devices.max(1),
            buckets: Mutex::default(),
        }
    }

    /// Takes one token for `device`; false when its bucket is empty.
    pub fn allow(&self, device: &str) -> bool {
        self.allow_at(device, Instant::now())
    }

    fn allow_at(&self, device: &str, now: Instant) -> bool {
        let RateConfig { per_second, burst } = self.cfg;
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        if !buckets.contains_key(device) && buckets.len() >= self.max_devices {
            buckets.retain(|_, (tokens, last)| {
                *tokens + now.duration_since(*last).as_secs_f64() * per_second < burst
            });
            if buckets.len() >= self.max_devices {
                buckets.clear();
            }
        }
        let (tokens, last) = buckets.entry(device.to_string()).or_insert((burst, now));
        *tokens = (*tokens + now.duration_since(*last).as_secs_f64() * per_second).min(burst);
        *last = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn bucket_allows_burst_then_refills_at_rate() {
        let l = RateLimiter::new(
            RateConfig {
                per_second: 10.0,
                burst: 3.0,
            },
            100,
        );
        let t0 = Instant::now();
        assert!((0..3).all(|_| l.allow_at("a", t0)));
        assert!(!l.allow_at("a", t0));
        assert!(l.allow_at("b", t0), "devices have separate buckets");
        assert!(!l.allow_at("a", t0 + Duration::from_millis(50)));
        assert!(l.allow_at("a", t0 + Duration::from_millis(160)));
    }

    #[test]
    fn bucket_map_stays_bounded() {
        let l = RateLimiter::new(
            RateConfig {
                per_second: 1.0,
                burst: 1.0,
            },
            4,
        );
        let t0 = Instant::now();
        for i in 0..100 {
            assert!(l.allow_at(&format!("d{i}"), t0));
        }
        assert!(l.buckets.lock().unwrap().len() <= 4);
    }
}

/// The newest telemetry report sequence added per (device, instance), so a report resent after a
/// lost acknowledgement is added once. Bounded like the rate buckets: when full, the oldest
/// half of the entries (by last use) is dropped.
#[derive(Debug)]
pub struct ReportDedup {
    max: usize,
    seen: Mutex<HashMap<(String, u64), (u64, Instant)>>,
}

impl ReportDedup {
    /// Remembers at most `max` device instances.
    pub fn new(max: usize) -> Self {
        Self {
            max: max.max(2),
            seen: Mutex::default(),
        }
    }

    /// True when `sequence` is newer than anything added for (device, instance); records it.
    pub fn first_time(&self, device: &str, instance: u64, sequence: u64) -> bool {
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        if let Some((last, used)) = seen.get_mut(&(device.to_string(), instance)) {
            *used = now;
            if sequence <= *last {
                return false;
            }
            *last = sequence;
            return true;
        }
        if seen.len() >= self.max {
            let mut ages: Vec<Instant> = seen.values().map(|(_, t)| *t).collect();
            ages.sort_unstable();
            let cut = ages[ages.len() / 2];
            seen.retain(|_, (_, t)| *t > cut);
        }
        seen.insert((device.to_string(), instance), (sequence, now));
        true
    }
}

#[cfg(test)]
mod dedup_tests {
    use super::*;

    #[test]
    fn resent_reports_count_once_and_new_instances_start_over() {
        let d = ReportDedup::new(4);
        assert!(d.first_time("a", 1, 1));
        assert!(!d.first_time("a", 1, 1));
        assert!(d.first_time("a", 1, 2));
        assert!(d.first_time("a", 2, 1), "a restarted device");
        assert!(d.first_time("b", 1, 1));
        for i in 0..20 {
            d.first_time(&format!("x{i}"), 0, 1);
        }
        assert!(d.seen.lock().unwrap().len() <= 4);
    }
}
