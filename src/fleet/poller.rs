//! The sync cycle (DESIGN.md §2): teams → policy catalogue → hosts → failing
//! membership → watched CVEs → certificate fingerprints → publish.
//!
//! A cycle is all or nothing. Any failure (a request that exhausted its
//! retries, a malformed body, a clipped certificate report) publishes nothing:
//! the store keeps the last good posture and its age keeps growing, which the
//! route's `stale_posture` setting then judges. The failure is logged, counted
//! and kept in [`SyncStatus::last_error`] for `/readyz`.
//!
//! ## Membership: `populate_policies` or per-policy queries
//! With `populate_policies=true` every host row carries every policy that
//! applies to it, so the hosts walk costs bytes ∝ hosts × policies but no extra
//! requests. Per-policy membership (`hosts?policy_id=X&policy_response=failing`)
//! returns only failing hosts as thin rows, but costs one paged walk per
//! policy. Up to [`POPULATE_POLICIES_MAX`] policies the single walk is cheaper
//! in requests and still modest in bytes; past it the per-host rows grow large
//! while failing sets usually stay small, so `auto` switches to per-policy. In
//! per-policy mode a host lists only its failing policies (passing and not-run
//! results are not fetched), which is all a decision uses.
//!
//! The threshold is low on purpose. Measured at 100,000 hosts with 23
//! policies (BENCHMARKS.md), `populate_policies` received 3.3× the bytes of
//! per-policy membership and held about twice the memory, for 107 rather than
//! 236 requests; a few dozen extra requests are cheaper than gigabytes.

use std::{
    collections::BTreeMap,
    future::Future,
    path::PathBuf,
    sync::{Arc, Mutex},
    time::{Duration, SystemTime},
};

use tokio::sync::{mpsc, oneshot};

use super::{
    Catalogue, FleetClient, FleetConfig, FleetError, Interner, MembershipMode, map::failing_result,
    retry::Observer,
};
use crate::posture::{HostId, HostPosture, PolicyResult, PostureStore};

/// `auto` membership uses `populate_policies` up to this many policies.
pub const POPULATE_POLICIES_MAX: usize = 10;

/// What the last cycles did, for `/readyz`, metrics and the admin API.
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
    /// Whether the last cycle found the certificate report clipped.
    pub clipped: bool,
    /// Report rows skipped for a missing or malformed `sha1` in the last good cycle.
    pub skipped_rows: u64,
    /// Good cycles since start.
    pub successes: u64,
    /// Failed cycles since start.
    pub failures: u64,
    /// Cycles failed on a clipped report since start.
    pub clipped_total: u64,
    /// The last snapshot write's error; cleared by a good write.
    pub snapshot_error: Option<String>,
}

/// What one good cycle published.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyncReport {
    /// Hosts published.
    pub hosts: usize,
    /// Fingerprints published.
    pub fingerprints: usize,
    /// Policies in the catalogue.
    pub policies: usize,
    /// How membership was fetched.
    pub membership: MembershipMode,
    /// Report rows skipped for a bad `sha1`.
    pub skipped_rows: u64,
    /// Requests made.
    pub requests: u64,
    /// Bytes received.
    pub bytes: u64,
    /// Wall time.
    pub duration: Duration,
}

type Reply = oneshot::Sender<Result<SyncReport, String>>;

#[derive(Default)]
struct Shared {
    status: Mutex<SyncStatus>,
    cves: Mutex<Arc<[Arc<str>]>>,
}

/// A cheap, cloneable view of a running [`Poller`].
#[derive(Clone)]
pub struct PollerHandle {
    shared: Arc<Shared>,
    trigger: mpsc::Sender<Reply>,
}

impl std::fmt::Debug for PollerHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PollerHandle")
            .field("status", &self.status())
            .finish_non_exhaustive()
    }
}

impl PollerHandle {
    /// The status after the last cycle.
    pub fn status(&self) -> SyncStatus {
        lock(&self.shared.status).clone()
    }

    /// Sets the CVE ids that policy rules name; the next cycle fetches them.
    pub fn set_cves(&self, cves: Vec<String>) {
        set_cves(&self.shared, cves);
    }

    /// The CVE ids being watched.
    pub fn cves(&self) -> Arc<[Arc<str>]> {
        Arc::clone(&lock(&self.shared.cves))
    }

    /// Runs a cycle now (waiting for one in progress first) and returns its outcome.
    pub async fn sync_now(&self) -> Result<SyncReport, String> {
        let (tx, rx) = oneshot::channel();
        self.trigger
            .send(tx)
            .await
            .map_err(|_| "fleet poller is not running".to_owned())?;
        rx.await
            .map_err(|_| "fleet poller stopped before the sync finished".to_owned())?
    }
}

/// Syncs Fleet into a [`PostureStore`] every `sync_interval`.
pub struct Poller {
    client: Arc<FleetClient>,
    store: Arc<PostureStore>,
    query_id: u64,
    interval: Duration,
    membership: MembershipMode,
    snapshot: Option<PathBuf>,
    shared: Arc<Shared>,
    trigger_tx: mpsc::Sender<Reply>,
    trigger_rx: mpsc::Receiver<Reply>,
    observer: Option<Arc<dyn Observer>>,
}

/// Runs CPU-heavy sync work (mapping a page of a thousand hosts) without
/// holding up the Checks queued on this async worker: on a multi-threaded
/// runtime, `block_in_place` hands them to another worker first.
fn off_the_workers<R>(work: impl FnOnce() -> R) -> R {
    match tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor()) {
        Ok(tokio::runtime::RuntimeFlavor::MultiThread) => tokio::task::block_in_place(work),
        _ => work(),
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn set_cves(shared: &Shared, cves: Vec<String>) {
    let mut list: Vec<Arc<str>> = Vec::with_capacity(cves.len());
    for c in cves {
        let c = c.trim().to_ascii_uppercase();
        if !c.is_empty() && !list.iter().any(|x| **x == *c) {
            list.push(c.into());
        }
    }
    *lock(&shared.cves) = list.into();
}

impl Poller {
    /// A poller publishing into `store`.
    pub fn new(client: Arc<FleetClient>, store: Arc<PostureStore>, config: &FleetConfig) -> Self {
        let (trigger_tx, trigger_rx) = mpsc::channel(16);
        Self {
            client,
            store,
            query_id: config.certificate_query_id,
            interval: config.sync_interval,
            membership: config.membership,
            snapshot: None,
            shared: Arc::default(),
            trigger_tx,
            trigger_rx,
            observer: None,
        }
    }

    /// Reports each cycle's duration and outcome to `observer`.
    pub fn with_observer(mut self, observer: Arc<dyn Observer>) -> Self {
        self.observer = Some(observer);
        self
    }

    /// Writes a snapshot to `path` after each good cycle.
    pub fn with_snapshot(mut self, path: PathBuf) -> Self {
        self.snapshot = Some(path);
        self
    }

    /// A handle for status, CVEs and `sync_now`.
    pub fn handle(&self) -> PollerHandle {
        PollerHandle {
            shared: Arc::clone(&self.shared),
            trigger: self.trigger_tx.clone(),
        }
    }

    /// Sets the CVE ids that policy rules name.
    pub fn set_cves(&self, cves: Vec<String>) {
        set_cves(&self.shared, cves);
    }

    /// Syncs at once, then every `sync_interval` and on each `sync_now`, until
    /// `shutdown` resolves. A cycle in progress at shutdown is abandoned.
    pub async fn run(mut self, shutdown: impl Future<Output = ()>) {
        tokio::pin!(shutdown);
        let mut ticker = tokio::time::interval(self.interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let reply = tokio::select! {
                biased;
                () = &mut shutdown => break,
                Some(reply) = self.trigger_rx.recv() => Some(reply),
                _ = ticker.tick() => None,
            };
            let outcome = tokio::select! {
                biased;
                () = &mut shutdown => break,
                outcome = self.poll_once() => outcome,
            };
            if let Some(reply) = reply {
                ticker.reset();
                let _receiver_gone = reply.send(outcome.map_err(|e| e.to_string()));
            }
        }
        tracing::info!("fleet poller stopped");
    }

    /// Runs one cycle: on success publishes into the store (and the snapshot).
    #[tracing::instrument(name = "sync", skip_all, fields(query_id = self.query_id))]
    pub async fn poll_once(&self) -> Result<SyncReport, FleetError> {
        let started = tokio::time::Instant::now();
        let (req0, bytes0) = (self.client.stats().requests(), self.client.stats().bytes());
        lock(&self.shared.status).last_attempt = Some(SystemTime::now());
        let result = self.collect().await;
        let duration = started.elapsed();
        let requests = self.client.stats().requests() - req0;
        let bytes = self.client.stats().bytes() - bytes0;
        let clipped = matches!(result, Err(FleetError::ReportClipped(_)));
        if let Some(o) = &self.observer {
            o.on_sync(duration, result.is_ok(), clipped);
        }
        let update = |f: &dyn Fn(&mut SyncStatus)| {
            let mut status = lock(&self.shared.status);
            status.last_duration = Some(duration);
            status.requests = requests;
            status.bytes = bytes;
            status.clipped = clipped;
            f(&mut status);
        };
        match result {
            Err(error) => {
                update(&|s| {
                    s.failures += 1;
                    s.clipped_total += u64::from(clipped);
                    s.last_error = Some(error.to_string());
                });
                tracing::error!(%error, kind = error.kind(), "fleet sync failed; keeping the last good posture");
                Err(error)
            }
            Ok((hosts, facts)) => {
                let now = SystemTime::now();
                let report = SyncReport {
                    hosts: hosts.len(),
                    fingerprints: hosts.iter().map(|h| h.fingerprints.len()).sum(),
                    policies: facts.policies,
                    membership: facts.membership,
                    skipped_rows: facts.skipped_rows,
                    requests,
                    bytes,
                    duration,
                };
                // Publishing 100k hosts takes a while: keep it off the async
                // workers. The snapshot is written in the same blocking task,
                // so once a posture is published its snapshot is written too,
                // even if shutdown abandons this cycle meanwhile (a started
                // blocking task runs to the end; the runtime waits for it).
                let store = Arc::clone(&self.store);
                let snapshot = self.snapshot.clone();
                let published = tokio::task::spawn_blocking(move || {
                    store.replace_all(hosts, now);
                    snapshot
                        .map(|path| super::snapshot::save(&path, &store).map_err(|e| e.to_string()))
                })
                .await;
                let snapshot_error = match published {
                    Ok(None | Some(Ok(()))) => None,
                    Ok(Some(Err(error))) => Some(error),
                    Err(error) => {
                        tracing::error!(%error, "publishing the posture failed");
                        // Only a configured snapshot can have been missed.
                        self.snapshot
                            .as_ref()
                            .map(|_| format!("snapshot task failed: {error}"))
                    }
                };
                if let Some(error) = &snapshot_error {
                    tracing::error!(%error, "snapshot not written");
                }
                update(&|s| {
                    s.successes += 1;
                    s.last_success = Some(now);
                    s.last_error = None;
                    s.skipped_rows = facts.skipped_rows;
                    s.snapshot_error = snapshot_error.clone();
                });
                tracing::info!(
                    hosts = report.hosts,
                    fingerprints = report.fingerprints,
                    requests,
                    bytes,
                    ?duration,
                    "fleet sync published"
                );
                Ok(report)
            }
        }
    }

    async fn collect(&self) -> Result<(Vec<HostPosture>, CycleFacts), FleetError> {
        let watched = Arc::clone(&lock(&self.shared.cves));
        let client = &self.client;
        let mut interner = Interner::default();
        let mut catalogue = Catalogue::default();

        let teams = client.teams().await?;
        for p in client.global_policies().await? {
            catalogue.add(&p, &mut interner);
        }
        for team in &teams {
            for p in client.team_policies(team.id).await?.policies {
                catalogue.add(&p, &mut interner);
            }
        }
        let membership = match self.membership {
            MembershipMode::Auto if catalogue.len() <= POPULATE_POLICIES_MAX => {
                MembershipMode::PopulatePolicies
            }
            MembershipMode::Auto => MembershipMode::PerPolicy,
            chosen => chosen,
        };

        // Page by page: at 100,000 hosts with `populate_policies` the rows of
        // every page together are several times the postures made from them.
        let mut hosts: BTreeMap<HostId, HostPosture> = BTreeMap::new();
        let populate = membership == MembershipMode::PopulatePolicies;
        client
            .hosts_by_page(populate, |rows| {
                off_the_workers(|| {
                    for row in &rows {
                        let mut posture = row.to_posture(&catalogue, &mut interner, &[]);
                        if posture.team.as_ref().is_some_and(|t| t.name.is_empty()) {
                            // Host rows may name the team only by id; the teams list knows its name.
                            if let Some(team) = teams.iter().find(|t| Some(t.id) == row.team_id) {
                                posture.team = posture.team.map(|t| crate::posture::Team {
                                    name: interner.intern(&team.name),
                                    ..t
                                });
                            }
                        }
                        hosts.insert(posture.id, posture);
                    }
                });
            })
            .await?;

        if membership == MembershipMode::PerPolicy {
            for policy_id in catalogue.ids() {
                let Some(entry) = catalogue.get(policy_id) else {
                    continue;
                };
                for id in client.hosts_failing_policy(policy_id).await? {
                    if let Some(h) = hosts.get_mut(&HostId(id)) {
                        h.policies.push(failing_result(entry));
                    }
                }
            }
            for h in hosts.values_mut() {
                h.policies.sort_by_key(PolicyResult::id);
            }
        }

        for cve in watched.iter() {
            for id in client.hosts_with_vulnerability(cve).await? {
                if let Some(h) = hosts.get_mut(&HostId(id)) {
                    h.cves.push(Arc::clone(cve));
                }
            }
        }

        let report = client.query_report_fingerprints(self.query_id).await?;
        if report.report_clipped {
            return Err(FleetError::ReportClipped(self.query_id));
        }
        let mut skipped_rows = 0u64;
        for row in report.results {
            match (row.sha1, hosts.get_mut(&HostId(row.host_id))) {
                (Some(fp), Some(h)) if !h.fingerprints.contains(&fp) => h.fingerprints.push(fp),
                (Some(_), _) => {} // duplicate row, or a host deleted since the hosts walk
                (None, _) => skipped_rows += 1,
            }
        }
        if skipped_rows > 0 {
            tracing::warn!(
                skipped_rows,
                query_id = self.query_id,
                "certificate report rows without a valid sha1 skipped"
            );
        }
        let facts = CycleFacts {
            policies: catalogue.len(),
            membership,
            skipped_rows,
        };
        Ok((hosts.into_values().collect(), facts))
    }
}

struct CycleFacts {
    policies: usize,
    membership: MembershipMode,
    skipped_rows: u64,
}
