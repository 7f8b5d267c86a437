//! Request accounting ([`Observer`], [`FleetStats`]) and the retry schedule
//! ([`RetryPolicy`]) used by `FleetClient`.

use std::{
    sync::atomic::{AtomicU64, Ordering},
    time::Duration,
};

use rand::Rng;

/// Hears about every HTTP exchange, for metrics.
pub trait Observer: Send + Sync {
    /// One exchange: `status` 0 means a transport error or timeout.
    fn on_request(&self, endpoint: &'static str, status: u16, bytes: usize);

    /// A Fleet answer hit a bound (`fleet_body`, `report_rows`).
    fn on_limit(&self, limit: &'static str) {
        let _ = limit;
    }

    /// One sync cycle ended after `duration`, published or not.
    fn on_sync(&self, duration: std::time::Duration, published: bool) {
        let _ = (duration, published);
    }

    /// A good cycle was published: whether its certificate report was
    /// clipped, and how many hosts are left without a fingerprint.
    fn on_publish(&self, clipped: bool, hosts_without_fingerprint: usize) {
        let _ = (clipped, hosts_without_fingerprint);
    }

    /// A cycle reached the shrink guard: `holding` when the guard held it
    /// back (an operator's `accept_drop` lets it through: not holding).
    fn on_shrink_guard(&self, holding: bool) {
        let _ = holding;
    }
}

/// Running totals of requests and bytes received.
#[derive(Debug, Default)]
pub struct FleetStats {
    requests: AtomicU64,
    bytes: AtomicU64,
    errors: AtomicU64,
}

impl FleetStats {
    /// Requests made (every attempt counts).
    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }
    /// Body bytes received.
    pub fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }
    /// Attempts that ended in a transport error or a non-2xx status.
    pub fn errors(&self) -> u64 {
        self.errors.load(Ordering::Relaxed)
    }
}

impl Observer for FleetStats {
    fn on_request(&self, _endpoint: &'static str, status: u16, bytes: usize) {
        self.requests.fetch_add(1, Ordering::Relaxed);
        self.bytes.fetch_add(bytes as u64, Ordering::Relaxed);
        if !(200..300).contains(&status) {
            self.errors.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// How transient failures are retried.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts per request, first included.
    pub max_attempts: u32,
    /// First backoff; doubles per attempt.
    pub base_delay: Duration,
    /// Backoff ceiling.
    pub max_delay: Duration,
    /// Longest `retry-after` honoured; longer ones are capped to this.
    pub max_retry_after: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 4,
            base_delay: Duration::from_millis(200),
            max_delay: Duration::from_secs(5),
            max_retry_after: Duration::from_secs(60),
        }
    }
}

impl RetryPolicy {
    /// Backoff before attempt `attempt + 1` (`attempt` ≥ 1): full jitter over
    /// `[d/2, d]` with `d = min(base · 2^(attempt-1), max)`, so a fleet of
    /// sidecars restarting together does not hammer Fleet in lockstep.
    pub fn backoff(&self, attempt: u32) -> Duration {
        let exp = self
            .base_delay
            .saturating_mul(1u32 << attempt.saturating_sub(1).min(20));
        let d = exp.min(self.max_delay);
        let half = d / 2;
        half + rand::rng().random_range(Duration::ZERO..=half)
    }

    /// The wait before attempt `attempt + 1`: Fleet's `retry-after` when it
    /// sent one, capped at `max_retry_after`, but never shorter than
    /// [`Self::backoff`]. So `Retry-After: 0` (or none) waits the backoff,
    /// not nothing: a retry at once would meet the same overload.
    pub fn delay(&self, attempt: u32, retry_after: Option<Duration>) -> Duration {
        let backoff = self.backoff(attempt);
        retry_after.map_or(backoff, |wait| wait.min(self.max_retry_after).max(backoff))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_within_jitter_and_caps() {
        let p = RetryPolicy::default();
        for _ in 0..50 {
            let d1 = p.backoff(1);
            assert!(
                d1 >= Duration::from_millis(100) && d1 <= Duration::from_millis(200),
                "{d1:?}"
            );
            let d3 = p.backoff(3);
            assert!(
                d3 >= Duration::from_millis(400) && d3 <= Duration::from_millis(800),
                "{d3:?}"
            );
            let d30 = p.backoff(30);
            assert!(
                d30 >= Duration::from_millis(2500) && d30 <= Duration::from_secs(5),
                "{d30:?}"
            );
        }
    }

    #[test]
    fn delay_honours_retry_after_capped_at_60s_and_never_below_the_backoff() {
        let p = RetryPolicy::default();
        assert_eq!(p.max_retry_after, Duration::from_secs(60));
        assert_eq!(
            p.delay(1, Some(Duration::from_secs(2))),
            Duration::from_secs(2)
        );
        assert_eq!(
            p.delay(1, Some(Duration::from_secs(3600))),
            Duration::from_secs(60)
        );
        for retry_after in [None, Some(Duration::ZERO), Some(Duration::from_millis(1))] {
            for _ in 0..20 {
                let d = p.delay(1, retry_after);
                assert!(
                    d >= p.base_delay / 2 && d <= p.base_delay,
                    "{retry_after:?}: {d:?}"
                );
                let d = p.delay(3, retry_after);
                assert!(
                    d >= p.base_delay * 2 && d <= p.base_delay * 4,
                    "{retry_after:?}: {d:?}"
                );
            }
        }
    }
}
