//! Cluster mode (DESIGN.md §8): many replicas behave as one through NATS
//! JetStream. One replica holds a lease and alone syncs Fleet; it publishes
//! each good posture to an Object Store that the others follow. Rechecks go
//! to it over request/reply. Grants live in a KV bucket and every grant and
//! revocation is appended to an audit stream. Everything written is sealed
//! with HMAC-SHA256 ([`sign`]) and everything read is checked first.
//!
//! This module owns the NATS side and the role of the replica; it reaches
//! the rest of the service only through what start.rs hands it: the posture
//! store (written through `replace_all` and `upsert`, as the poller does),
//! the grant store (through its replication hook), the Fleet configuration
//! (to start a poller while it leads) and the metrics. Nothing of it runs
//! without `cluster:`.
//!
//! Roles: `follower` (applies the leader's postures, never calls Fleet for a
//! sync), `leader` (holds the lease, syncs, publishes) and `alone` (NATS has
//! been out of reach for `lease_ttl`: syncs Fleet itself, availability over
//! Fleet load, until a live leader is seen or it takes the lease).

mod audit;
pub mod config;
mod grants;
pub mod http;
mod lease;
mod nats;
mod posture;
mod prune;
mod recheck;
mod run;
pub mod sign;
mod sync;
mod term;
mod wire;

use std::{
    path::PathBuf,
    sync::{Arc, Mutex},
    time::SystemTime,
};

use arc_swap::ArcSwapOption;
use dashmap::DashMap;
use tokio::sync::watch;

pub use self::config::ClusterConfig;
pub use self::run::spawn;
use self::run::{answer_while_leading, ready, stopped};
use self::{
    nats::{Names, Nats},
    sign::{Kind, Rejection, Signer},
};
use crate::{
    fleet::{FleetConfig, PollerHandle, Recheck},
    posture::{HostId, PostureStore},
    telemetry::metrics::{KindLabels, Metrics},
};

/// What this replica does now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Applies the leader's postures; never syncs Fleet.
    Follower,
    /// Holds the lease: syncs Fleet, publishes, answers rechecks.
    Leader,
    /// Out of touch with the cluster: syncs Fleet itself.
    Alone,
}

impl Role {
    /// `follower`, `leader` or `alone`, as `/v1/cluster` and `/readyz` say.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Follower => "follower",
            Self::Leader => "leader",
            Self::Alone => "alone",
        }
    }

    /// True when this role runs the Fleet poller.
    pub fn syncs(self) -> bool {
        matches!(self, Self::Leader | Self::Alone)
    }
}

/// The role with what goes with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoleState {
    /// What it does.
    pub role: Role,
    /// The lease holder last seen (this replica's id when it leads).
    pub leader: Option<String>,
    /// Since when NATS has been out of reach, when it is.
    pub degraded_since: Option<SystemTime>,
}

/// The posture this replica holds, as the cluster knows it.
#[derive(Debug, Default)]
struct Held {
    /// Version of the posture in the store (0: own sync or local snapshot).
    version: u64,
    /// Highest version seen in the Object Store.
    latest: u64,
    /// Store generation after the last posture applied from NATS, so the
    /// publisher does not send it back.
    applied_generation: u64,
    /// The object last fetched or put, so it is not fetched again.
    nuid: Option<String>,
}

/// One replica's cluster state, shared by its tasks and endpoints.
pub struct Node {
    config: ClusterConfig,
    fleet: FleetConfig,
    snapshot: Option<PathBuf>,
    id: String,
    names: Names,
    signer: Signer,
    store: Arc<PostureStore>,
    metrics: Arc<Metrics>,
    role: watch::Sender<RoleState>,
    nats: watch::Sender<Option<Nats>>,
    held: Mutex<Held>,
    /// When each host was last refreshed by a recheck (any replica's).
    fetched_at: DashMap<HostId, SystemTime>,
    /// The CVE list the policy names (kept by the reloader).
    cves: PollerHandle,
    /// The poller of the current term, while this replica syncs.
    term: ArcSwapOption<PollerHandle>,
    /// Fleet recheck used while leading or alone.
    recheck: Option<Arc<Recheck>>,
    grants: grants::Replication,
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node")
            .field("id", &self.id)
            .field("role", &*self.role.borrow())
            .finish_non_exhaustive()
    }
}

/// What `build` needs from the rest of the service.
pub struct Parts {
    /// `cluster:`.
    pub config: ClusterConfig,
    /// `fleet:`, for the poller of each term and the recheck.
    pub fleet: FleetConfig,
    /// `snapshot.path`: written after each posture applied from NATS too.
    pub snapshot: Option<PathBuf>,
    /// The store every decision reads.
    pub store: Arc<PostureStore>,
    /// The service's metrics.
    pub metrics: Arc<Metrics>,
    /// The handle whose CVE list the policy reloader keeps.
    pub cves: PollerHandle,
}

impl Node {
    /// The node, before any connection: reads the key, builds the recheck.
    pub fn build(parts: Parts) -> anyhow::Result<Arc<Self>> {
        let key_file = parts.config.key_file.clone().unwrap_or_default();
        let signer =
            Signer::from_file(&key_file).map_err(|e| anyhow::anyhow!("cluster.key_file: {e}"))?;
        let recheck =
            recheck::local_recheck(&parts.fleet, &parts.store, &parts.metrics, &parts.cves)?;
        let id = replica_id();
        tracing::info!(replica = %id, name = %parts.config.name, "cluster mode");
        Ok(Arc::new(Self {
            names: Names::new(&parts.config.name),
            id,
            signer,
            role: watch::Sender::new(RoleState {
                role: Role::Follower,
                leader: None,
                degraded_since: None,
            }),
            nats: watch::Sender::new(None),
            held: Mutex::default(),
            fetched_at: DashMap::new(),
            term: ArcSwapOption::empty(),
            recheck,
            grants: grants::Replication::default(),
            config: parts.config,
            fleet: parts.fleet,
            snapshot: parts.snapshot,
            store: parts.store,
            metrics: parts.metrics,
            cves: parts.cves,
        }))
    }

    /// This replica's id: host (pod) name and a random suffix.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The role now.
    pub fn role(&self) -> RoleState {
        self.role.borrow().clone()
    }

    /// The version of the posture held (0 before one came through NATS).
    pub fn posture_version(&self) -> u64 {
        lock(&self.held).version
    }

    /// The hook the grant store calls on each grant and revocation.
    pub fn grant_replica(self: &Arc<Self>) -> Arc<dyn crate::grants::GrantReplica> {
        Arc::new(grants::Hook(Arc::clone(self)))
    }

    /// Tells the poller (of this term and the next) which CVEs to fetch.
    pub fn set_cves(&self, cves: Vec<String>) {
        if let Some(term) = self.term.load_full() {
            term.set_cves(cves.clone());
        }
        self.cves.set_cves(cves);
    }

    /// The `/readyz` line naming the role.
    pub fn readiness_line(&self) -> String {
        let state = self.role();
        let mut line = format!("cluster: role={} replica={}", state.role.as_str(), self.id);
        if let Some(leader) = state.leader.as_deref().filter(|l| *l != self.id) {
            line.push_str(&format!(" leader={leader}"));
        }
        if let Some(since) = state.degraded_since {
            let secs = SystemTime::now()
                .duration_since(since)
                .unwrap_or_default()
                .as_secs();
            line.push_str(&format!(
                "\ndegraded: NATS out of reach for {secs}s; syncing Fleet alone"
            ));
        }
        line
    }

    /// The last error of this term's poller, for `/readyz`.
    pub fn sync_error(&self) -> Option<String> {
        self.term.load_full().and_then(|t| t.status().last_error)
    }

    fn set_role(&self, role: Role, leader: Option<String>) {
        let changed = self.role.send_if_modified(|s| {
            let changed = s.role != role || s.leader != leader;
            if changed {
                s.role = role;
                s.leader = leader.clone();
            }
            changed
        });
        if changed {
            self.metrics
                .cluster_leader
                .set(i64::from(role == Role::Leader));
            tracing::info!(role = role.as_str(), leader = leader.as_deref().unwrap_or("-"), replica = %self.id, "cluster role");
        }
    }

    fn set_degraded(&self, since: Option<SystemTime>) {
        let changed = self.role.send_if_modified(|s| {
            let changed = s.degraded_since.is_some() != since.is_some();
            if changed {
                s.degraded_since = since;
            }
            changed
        });
        if changed {
            self.metrics
                .cluster_degraded
                .set(i64::from(since.is_some()));
            match since {
                Some(_) => {
                    tracing::warn!(ttl = ?self.config.lease_ttl, "NATS out of reach; syncing Fleet alone until it returns")
                }
                None => tracing::info!("NATS back in reach; rejoining the cluster"),
            }
        }
    }

    /// The connection, once NATS answered once.
    fn nats(&self) -> Option<Nats> {
        self.nats.borrow().clone()
    }

    /// Counts and logs a value that failed its check.
    fn rejected(&self, kind: Kind, name: &str, why: impl std::fmt::Display) {
        self.metrics
            .cluster_rejected
            .get_or_create(&KindLabels {
                kind: kind.as_str(),
            })
            .inc();
        tracing::warn!(kind = kind.as_str(), name, %why, "cluster value rejected");
    }

    /// Opens and parses a sealed JSON request on `subject`, counting and
    /// logging one that fails either.
    fn open_request<T: serde::de::DeserializeOwned>(
        &self,
        kind: Kind,
        subject: &str,
        sealed: &[u8],
    ) -> Option<T> {
        let payload = self.open(kind, subject, sealed)?;
        let parsed = serde_json::from_slice(payload).ok();
        if parsed.is_none() {
            self.rejected(kind, subject, "not a request");
        }
        parsed
    }

    /// Opens a sealed value, counting and logging a rejection.
    fn open<'a>(&self, kind: Kind, name: &str, sealed: &'a [u8]) -> Option<&'a [u8]> {
        match self.signer.open(kind, name, sealed) {
            Ok(payload) => Some(payload),
            Err(why @ (Rejection::Unsigned | Rejection::BadSignature)) => {
                self.rejected(kind, name, why);
                None
            }
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// `HOSTNAME` (the pod name in Kubernetes) or the kernel's host name, and
/// six random hex digits, so two processes on one host differ too.
fn replica_id() -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "fleet-authz".to_owned());
    format!("{host}-{:06x}", rand::random::<u32>() & 0xff_ffff)
}
