//! The device posture model and the in-memory `PostureStore`.
//!
//! Pure domain types: nothing here knows Envoy, Fleet or HTTP. The Fleet poller
//! and the posture-file loader map their inputs into `HostPosture` and publish
//! whole sets through [`PostureStore::replace_all`]; the live recheck replaces
//! single hosts with [`PostureStore::upsert`].
//!
//! ## Why two DashMaps and one writer
//! Readers (every Check) need `fingerprint → host` in one lookup without
//! blocking each other or the writer for long, so both indexes (fingerprint →
//! `Arc<HostPosture>` for Checks, host id → the same `Arc` for the admin API
//! and the recheck) are `DashMap`s whose shards lock only for the instant of a
//! get; a Check makes one probe, which keeps lookups cheap as the fleet grows
//! past the CPU caches. Readers clone the
//! `Arc<HostPosture>` out and drop the guard at once. There is a single logical
//! writer (the poller, the file watcher, or the recheck, serialised by
//! `write_lock`), so the two maps never disagree for longer than one upsert and
//! a removed host is evicted by the `retain` on the sync generation. A reader
//! racing a full replace may see one host old and another new; each host it sees
//! is internally consistent, which is all a decision needs.

mod file;
mod store;

pub use file::{PostureFile, PostureFileError, load_posture_file, parse_posture_file};
pub use store::PostureStore;

use std::{sync::Arc, time::SystemTime};

use crate::fingerprint::Fingerprint;

/// A Fleet host id.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(transparent)]
pub struct HostId(pub u64);

impl std::fmt::Display for HostId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// The team a host belongs to (Fleet Premium); `id` is absent in posture files
/// that name teams only.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Team {
    pub id: Option<u64>,
    pub name: Arc<str>,
}

/// A policy's last result on a host, as Fleet reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PolicyResponse {
    Pass,
    Fail,
    /// Fleet's `""`: not run yet, or not applicable to this host.
    NotRun,
}

/// A Fleet policy as the catalogue describes it. One `Arc` per policy serves
/// every host's result, so a host's results cost 16 bytes each.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyMeta {
    pub id: u64,
    pub name: Arc<str>,
    pub critical: bool,
    pub resolution: Option<Arc<str>>,
}

impl PolicyMeta {
    /// A shared catalogue entry.
    pub fn new(
        id: u64,
        name: impl Into<Arc<str>>,
        critical: bool,
        resolution: Option<Arc<str>>,
    ) -> Arc<Self> {
        Arc::new(Self {
            id,
            name: name.into(),
            critical,
            resolution,
        })
    }
}

/// One Fleet policy's result on one host. Kept small on purpose (16 bytes):
/// a million hosts hold twenty million of these.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyResult {
    /// The catalogue entry: id, name, critical, resolution.
    pub meta: Arc<PolicyMeta>,
    pub response: PolicyResponse,
    /// Seconds since the Unix epoch at which this policy was first seen
    /// failing on this host (for `grace`); `u32` lasts until 2106.
    failing_since: Option<std::num::NonZeroU32>,
}

impl PolicyResult {
    /// A result with no `failing_since` yet (the store fills it in).
    pub fn new(meta: Arc<PolicyMeta>, response: PolicyResponse) -> Self {
        Self {
            meta,
            response,
            failing_since: None,
        }
    }

    /// The policy id.
    pub fn id(&self) -> u64 {
        self.meta.id
    }

    /// True when the policy's last result is a failure.
    pub fn is_failing(&self) -> bool {
        self.response == PolicyResponse::Fail
    }

    /// When this policy was first seen failing on this host.
    pub fn failing_since(&self) -> Option<SystemTime> {
        self.failing_since
            .map(|s| std::time::UNIX_EPOCH + std::time::Duration::from_secs(u64::from(s.get())))
    }

    /// Sets (to whole seconds) or clears `failing_since`.
    pub fn set_failing_since(&mut self, at: Option<SystemTime>) {
        self.failing_since = at.map(|t| {
            let secs = t
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_secs());
            std::num::NonZeroU32::new(u32::try_from(secs).unwrap_or(u32::MAX))
                .unwrap_or(std::num::NonZeroU32::MIN)
        });
    }

    /// Builder form of [`set_failing_since`](Self::set_failing_since).
    pub fn with_failing_since(mut self, at: Option<SystemTime>) -> Self {
        self.set_failing_since(at);
        self
    }
}

/// Everything known about one device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostPosture {
    pub id: HostId,
    pub uuid: String,
    /// Fleet's `hardware_serial`; `""` when unknown. Only fills
    /// `remediation_url`'s `{hardware_serial}`.
    pub hardware_serial: String,
    pub display_name: String,
    pub team: Option<Team>,
    /// Fleet's platform string: `darwin`, `windows`, `ubuntu`, `rhel`, `chrome`, …
    /// Interned: a few distinct values serve every host.
    pub platform: Arc<str>,
    /// Interned like `platform`.
    pub os_version: Arc<str>,
    /// Last check-in (`seen_time`); `None` when Fleet never saw it.
    pub last_seen: Option<SystemTime>,
    pub policies: Vec<PolicyResult>,
    /// CVE ids this host is known to be affected by (only those a policy names).
    pub cves: Vec<Arc<str>>,
    pub fingerprints: Vec<Fingerprint>,
}

impl HostPosture {
    /// A host with only an id and display name; for tests and builders.
    pub fn new(id: u64, display_name: impl Into<String>) -> Self {
        Self {
            id: HostId(id),
            uuid: String::new(),
            hardware_serial: String::new(),
            display_name: display_name.into(),
            team: None,
            platform: Arc::from(""),
            os_version: Arc::from(""),
            last_seen: None,
            policies: Vec::new(),
            cves: Vec::new(),
            fingerprints: Vec::new(),
        }
    }

    /// The team name, if any.
    pub fn team_name(&self) -> Option<&str> {
        self.team.as_ref().map(|t| &*t.name)
    }

    /// Policies whose last result is a failure.
    pub fn failing_policies(&self) -> impl Iterator<Item = &PolicyResult> {
        self.policies.iter().filter(|p| p.is_failing())
    }
}
