//! Synthetic hosts shared by the benches that need a large store (included
//! with `#[path]`, since each bench is a crate of its own).

use std::{
    sync::Arc,
    time::{Duration, SystemTime},
};

use fleet_authz::{
    fingerprint::Fingerprint,
    posture::{HostPosture, PolicyMeta, PolicyResponse, PolicyResult, Team},
};

/// The policy of the in-process Check bench and the load bench's server.
pub const POLICY: &str = "
version: 1
defaults:
  deny: {failing_critical_policy: true, vulnerabilities: [CVE-2024-3094], last_seen_over: 24h}
routes:
  - {name: payroll, match: {context: {app: payroll}}, deny: {failing_any_policy: true}}
  - {name: wiki, match: {path_prefix: /wiki}, mode: dry_run}
";

/// Certificate `k` of host `id`: distinct for every pair, no real DER.
pub fn fingerprint(id: u64, k: u64) -> Fingerprint {
    let mut bytes = [0u8; 20];
    bytes[..8].copy_from_slice(&id.to_be_bytes());
    bytes[8..16].copy_from_slice(&k.to_be_bytes());
    Fingerprint::from_bytes(bytes)
}

/// A macOS host of `team`, seen a minute before `now`, with one result per
/// policy in `metas` (the first failing when `failing`) and three
/// certificates from [`fingerprint`].
pub fn host(
    id: u64,
    metas: &[Arc<PolicyMeta>],
    team: &Team,
    now: SystemTime,
    failing: bool,
) -> HostPosture {
    let mut h = HostPosture::new(id, format!("host-{id}"));
    h.team = Some(team.clone());
    h.platform = "darwin".into();
    h.last_seen = Some(now - Duration::from_secs(60));
    h.policies = metas
        .iter()
        .enumerate()
        .map(|(i, m)| {
            let response = if failing && i == 0 {
                PolicyResponse::Fail
            } else {
                PolicyResponse::Pass
            };
            PolicyResult::new(Arc::clone(m), response)
        })
        .collect();
    h.fingerprints = (0..3).map(|k| fingerprint(id, k)).collect();
    h
}
