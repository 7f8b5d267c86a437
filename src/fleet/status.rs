//! What the sync cycles did, for `/readyz`, metrics and the admin API:
//! [`SyncStatus`] (kept across cycles) and [`SyncReport`] (one good cycle).

use std::time::{Duration, SystemTime};

use super::MembershipMode;

/// What the last cycles did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SyncStatus {
    /// End of the last successful cycle.
    pub last_success: Option<SystemTime>,
    /// Start of the last cycle, good or bad.
    pub last_attempt: Option<SystemTime>,
    /// The last cycle's error; cleared by a good cycle.
    pub last_error: Option<String>,
    /// How long the last cycle took.
    pub last_duration: Option<Duration>,
    /// Requests made by the last cycle (every attempt counts).
    pub requests: u64,
    /// Body bytes received by the last cycle.
    pub bytes: u64,
    /// Whether the certificate report of the published posture was clipped.
    pub clipped: bool,
    /// Hosts missing from that clipped report that kept the fingerprints
    /// of the posture before.
    pub kept_fingerprints: usize,
    /// Hosts published without any fingerprint.
    pub hosts_without_fingerprint: usize,
    /// Report rows with a missing or malformed `sha1` in the last good cycle.
    pub skipped_rows: u64,
    /// Good cycles since start.
    pub successes: u64,
    /// Failed cycles since start (the shrink guard's included).
    pub failures: u64,
    /// Good cycles whose certificate report was clipped, since start.
    pub clipped_total: u64,
    /// The last snapshot write's error; cleared by a good write.
    pub snapshot_error: Option<String>,
}

impl SyncStatus {
    /// Lines for `/readyz` after `degraded:`: the posture is served, but
    /// part of it is older than the last cycle.
    pub fn degraded(&self) -> Vec<String> {
        if !self.clipped {
            return Vec::new();
        }
        vec![format!(
            "fleet certificate report clipped (report_clipped: true): {} hosts missing from it \
             keep their last known fingerprints; raise Fleet's report_cap or use the \
             one-row-per-host certificate query",
            self.kept_fingerprints
        )]
    }
}

/// What one good cycle published.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyncReport {
    /// Hosts published.
    pub hosts: usize,
    /// Fingerprints published (summed over hosts).
    pub fingerprints: usize,
    /// Policies in the catalogue.
    pub policies: usize,
    /// How membership was fetched.
    pub membership: MembershipMode,
    /// Report rows with a missing or malformed `sha1`.
    pub skipped_rows: u64,
    /// The certificate report was clipped.
    pub clipped: bool,
    /// Hosts missing from a clipped report that kept their fingerprints.
    pub kept_fingerprints: usize,
    /// Hosts published without any fingerprint.
    pub hosts_without_fingerprint: usize,
    /// The shrink guard would have held this cycle back; an operator's
    /// `accept_drop` let it through.
    pub accepted_drop: bool,
    /// Requests made.
    pub requests: u64,
    /// Bytes received.
    pub bytes: u64,
    /// Wall time.
    pub duration: Duration,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_clipped_report_degrades() {
        let mut status = SyncStatus {
            kept_fingerprints: 7,
            hosts_without_fingerprint: 3,
            ..SyncStatus::default()
        };
        assert_eq!(status.degraded(), Vec::<String>::new());
        status.clipped = true;
        let lines = status.degraded();
        assert_eq!(lines.len(), 1);
        assert!(
            lines[0].starts_with(
                "fleet certificate report clipped (report_clipped: true): 7 hosts missing"
            ),
            "{lines:?}"
        );
    }
}
