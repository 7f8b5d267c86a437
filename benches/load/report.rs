//! One run's figures (moved between processes as a JSON line), server
//! resource samples from `/proc`, and the Markdown the suite prints.

use std::{sync::atomic::AtomicU64, time::Duration};

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

/// A latency histogram in microseconds, 1 µs .. 60 s, 3 significant digits.
pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid histogram bounds")
}

/// Answers by kind, during the recorded window.
#[derive(Debug, Default)]
pub struct Counts {
    pub allow: AtomicU64,
    pub deny: AtomicU64,
    pub errors: AtomicU64,
}

/// What a client reports for one run.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RunResult {
    pub requests: u64,
    pub rps: f64,
    pub p50_us: u64,
    pub p90_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    pub max_us: u64,
    pub allow: u64,
    pub deny: u64,
    pub errors: u64,
}

impl RunResult {
    /// Figures of a recorded window of `duration`.
    pub fn new(hist: &Histogram<u64>, counts: &Counts, duration: Duration) -> Self {
        use std::sync::atomic::Ordering::Relaxed;
        let (allow, deny, errors) = (
            counts.allow.load(Relaxed),
            counts.deny.load(Relaxed),
            counts.errors.load(Relaxed),
        );
        let requests = allow + deny + errors;
        Self {
            requests,
            rps: requests as f64 / duration.as_secs_f64(),
            p50_us: hist.value_at_quantile(0.5),
            p90_us: hist.value_at_quantile(0.9),
            p99_us: hist.value_at_quantile(0.99),
            p999_us: hist.value_at_quantile(0.999),
            max_us: hist.max(),
            allow,
            deny,
            errors,
        }
    }
}

/// A process's memory and CPU time, from `/proc/<pid>/status` and `/stat`.
#[derive(Debug, Clone, Copy, Default)]
pub struct ProcSample {
    pub rss_kb: u64,
    pub hwm_kb: u64,
    /// utime + stime, in clock ticks (100 per second on Linux).
    pub cpu_ticks: u64,
}

/// Reads `pid`'s current sample (zeros when it cannot be read).
pub fn sample(pid: u32) -> ProcSample {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces) start at ')'.
    let rest: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, r)| r.split_whitespace().collect())
        .unwrap_or_default();
    let tick = |i: usize| rest.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    ProcSample {
        rss_kb: field("VmRSS:"),
        hwm_kb: field("VmHWM:"),
        // utime and stime are fields 14 and 15 of stat; 12 and 13 after ')'.
        cpu_ticks: tick(11) + tick(12),
    }
}

/// The whole machine's CPU time so far, from the `cpu` line of `/proc/stat`,
/// in clock ticks: all of it, and the part stolen (the hypervisor ran
/// something else while a vCPU wanted to run).
#[derive(Debug, Clone, Copy, Default)]
pub struct CpuTimes {
    pub total: u64,
    pub steal: u64,
}

impl CpuTimes {
    /// The current figures (zeros when `/proc/stat` cannot be read).
    pub fn now() -> Self {
        let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
        let ticks: Vec<u64> = stat
            .lines()
            .find_map(|l| l.strip_prefix("cpu "))
            .map(|l| {
                l.split_whitespace()
                    .filter_map(|v| v.parse().ok())
                    .collect()
            })
            .unwrap_or_default();
        // user nice system idle iowait irq softirq steal guest guest_nice;
        // guest time is already counted in user.
        Self {
            total: ticks.iter().take(8).sum(),
            steal: ticks.get(7).copied().unwrap_or(0),
        }
    }

    /// The share of CPU time stolen since `earlier`, in percent.
    pub fn steal_percent_since(self, earlier: Self) -> f64 {
        let total = self.total.saturating_sub(earlier.total);
        if total == 0 {
            return 0.0;
        }
        self.steal.saturating_sub(earlier.steal) as f64 * 100.0 / total as f64
    }
}

/// Microseconds as milliseconds with 3 decimals.
pub fn ms(us: u64) -> String {
    format!("{:.3}", us as f64 / 1000.0)
}

/// `a / b` with 2 decimals, or `–` when `b` is zero.
pub fn ratio(a: f64, b: f64) -> String {
    if b == 0.0 {
        "–".to_owned()
    } else {
        format!("{:.2}", a / b)
    }
}

/// Open loop: waits until request `i` of a run that sends one request every
/// `interval` from `start` is due, and returns when that is; `None` once it
/// would be due at or after `end`. Behind schedule it only yields, so the
/// requests in flight on a single-threaded runtime still run (and complete)
/// before more are sent. Latency is measured from the returned time, so a
/// slow server cannot hide its queue (no coordinated omission).
pub async fn wait_until_due(
    start: tokio::time::Instant,
    interval: Duration,
    i: u64,
    end: tokio::time::Instant,
) -> Option<tokio::time::Instant> {
    let due = start + interval.mul_f64(i as f64);
    if due >= end {
        return None;
    }
    if due > tokio::time::Instant::now() {
        tokio::time::sleep_until(due).await;
    } else {
        tokio::task::yield_now().await;
    }
    Some(due)
}
