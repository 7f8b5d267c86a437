//! The sync loop (DESIGN.md §2): run a cycle (see [`cycle`](super::cycle))
//! every `sync_interval` and on demand, pass it through the shrink guard
//! ([`guard`](super::guard)), publish it whole to the store and the snapshot.
//!
//! A cycle is all or nothing. Any failure (a request that exhausted its
//! retries, a malformed body, an error inside a 200, a certificate query set
//! up so that its report cannot be trusted, a drop the shrink guard holds
//! back) publishes nothing: the store keeps the last good posture and its age
//! keeps growing, which the route's `stale_posture` setting then judges. The
//! failure is logged, counted and kept in [`SyncStatus::last_error`] for
//! `/readyz`. A clipped certificate report is not a failure (see `cycle`).

use std::{
    future::Future,
    path::PathBuf,
    sync::{Arc, Mutex},
    time::{Duration, SystemTime},
};

use tokio::sync::{mpsc, oneshot};

use super::{
    FleetClient, FleetConfig, FleetError, MembershipMode, SyncReport, SyncStatus,
    cycle::{Cycle, CycleFacts},
    guard::{self, Counts},
    retry::Observer,
};
use crate::posture::{HostPosture, PostureStore};

type Reply = oneshot::Sender<Result<SyncReport, String>>;

/// A request for a cycle now.
struct Trigger {
    reply: Reply,
    /// Publish it even if the shrink guard would hold it back.
    accept_drop: bool,
}

#[derive(Default)]
struct Shared {
    status: Mutex<SyncStatus>,
    cves: Mutex<Arc<[Arc<str>]>>,
}

/// A cheap, cloneable view of a running [`Poller`].
#[derive(Clone)]
pub struct PollerHandle {
    shared: Arc<Shared>,
    trigger: mpsc::Sender<Trigger>,
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
        self.trigger(false).await
    }

    /// Like [`Self::sync_now`], but that one cycle is published even if the
    /// shrink guard would hold it back (`POST /v1/sync {"accept_drop": true}`).
    pub async fn sync_now_accepting_drop(&self) -> Result<SyncReport, String> {
        self.trigger(true).await
    }

    async fn trigger(&self, accept_drop: bool) -> Result<SyncReport, String> {
        let (reply, rx) = oneshot::channel();
        self.trigger
            .send(Trigger { reply, accept_drop })
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
    max_drop: f64,
    snapshot: Option<PathBuf>,
    shared: Arc<Shared>,
    trigger_tx: mpsc::Sender<Trigger>,
    trigger_rx: mpsc::Receiver<Trigger>,
    observer: Option<Arc<dyn Observer>>,
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
            max_drop: config.max_drop,
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
            let trigger = tokio::select! {
                biased;
                () = &mut shutdown => break,
                Some(trigger) = self.trigger_rx.recv() => Some(trigger),
                _ = ticker.tick() => None,
            };
            let accept_drop = trigger.as_ref().is_some_and(|t| t.accept_drop);
            let outcome = tokio::select! {
                biased;
                () = &mut shutdown => break,
                outcome = self.poll_once_with(accept_drop) => outcome,
            };
            if let Some(trigger) = trigger {
                ticker.reset();
                let _receiver_gone = trigger.reply.send(outcome.map_err(|e| e.to_string()));
            }
        }
        tracing::info!("fleet poller stopped");
    }

    /// Runs one cycle: on success publishes into the store (and the snapshot).
    pub async fn poll_once(&self) -> Result<SyncReport, FleetError> {
        self.poll_once_with(false).await
    }

    /// Runs one cycle; with `accept_drop`, publishes it even if the shrink
    /// guard would hold it back.
    #[tracing::instrument(name = "sync", skip_all, fields(query_id = self.query_id))]
    pub async fn poll_once_with(&self, accept_drop: bool) -> Result<SyncReport, FleetError> {
        let started = tokio::time::Instant::now();
        let (req0, bytes0) = (self.client.stats().requests(), self.client.stats().bytes());
        lock(&self.shared.status).last_attempt = Some(SystemTime::now());
        let cycle = Cycle {
            client: &self.client,
            store: &self.store,
            query_id: self.query_id,
            membership: self.membership,
            watched: Arc::clone(&lock(&self.shared.cves)),
        };
        let result = match cycle.collect().await {
            Ok((hosts, facts)) => self.guard(hosts, accept_drop).map(|(h, a)| (h, facts, a)),
            Err(e) => Err(e),
        };
        let spent = Spent {
            duration: started.elapsed(),
            requests: self.client.stats().requests() - req0,
            bytes: self.client.stats().bytes() - bytes0,
        };
        if let Some(o) = &self.observer {
            o.on_sync(spent.duration, result.is_ok());
        }
        match result {
            Err(error) => {
                self.update_status(&spent, |s| {
                    s.failures += 1;
                    s.last_error = Some(error.to_string());
                });
                tracing::error!(%error, kind = error.kind(), "fleet sync failed; keeping the last good posture");
                Err(error)
            }
            Ok((hosts, facts, accepted_drop)) => {
                Ok(self.publish(hosts, facts, accepted_drop, spent).await)
            }
        }
    }

    /// The shrink guard; `accept_drop` lets one drop through. Returns the
    /// hosts and whether a drop was accepted.
    fn guard(
        &self,
        hosts: Vec<HostPosture>,
        accept_drop: bool,
    ) -> Result<(Vec<HostPosture>, bool), FleetError> {
        let verdict = guard::check(Counts::held(&self.store), Counts::of(&hosts), self.max_drop);
        if let Some(o) = &self.observer {
            o.on_shrink_guard(verdict.is_err() && !accept_drop);
        }
        match verdict {
            Ok(()) => Ok((hosts, false)),
            Err(error) if accept_drop => {
                tracing::warn!(%error, "publishing a drop the operator accepted (accept_drop)");
                Ok((hosts, true))
            }
            Err(error) => Err(error),
        }
    }

    fn update_status(&self, spent: &Spent, f: impl FnOnce(&mut SyncStatus)) {
        let mut status = lock(&self.shared.status);
        status.last_duration = Some(spent.duration);
        status.requests = spent.requests;
        status.bytes = spent.bytes;
        f(&mut status);
    }

    /// Publishes a good cycle to the store and the snapshot.
    async fn publish(
        &self,
        hosts: Vec<HostPosture>,
        facts: CycleFacts,
        accepted_drop: bool,
        spent: Spent,
    ) -> SyncReport {
        let now = SystemTime::now();
        let report = SyncReport {
            hosts: hosts.len(),
            fingerprints: hosts.iter().map(|h| h.fingerprints.len()).sum(),
            policies: facts.policies,
            membership: facts.membership,
            skipped_rows: facts.skipped_rows,
            clipped: facts.clipped,
            kept_fingerprints: facts.kept_fingerprints,
            hosts_without_fingerprint: facts.hosts_without_fingerprint,
            accepted_drop,
            requests: spent.requests,
            bytes: spent.bytes,
            duration: spent.duration,
        };
        let snapshot_error = self.store_and_snapshot(hosts, now).await;
        if let Some(o) = &self.observer {
            o.on_publish(facts.clipped, facts.hosts_without_fingerprint);
        }
        self.update_status(&spent, |s| {
            s.successes += 1;
            s.last_success = Some(now);
            s.last_error = None;
            s.skipped_rows = facts.skipped_rows;
            s.clipped = facts.clipped;
            s.clipped_total += u64::from(facts.clipped);
            s.kept_fingerprints = facts.kept_fingerprints;
            s.hosts_without_fingerprint = facts.hosts_without_fingerprint;
            s.snapshot_error = snapshot_error;
        });
        tracing::info!(
            hosts = report.hosts,
            fingerprints = report.fingerprints,
            hosts_without_fingerprint = report.hosts_without_fingerprint,
            requests = report.requests,
            bytes = report.bytes,
            duration = ?report.duration,
            "fleet sync published"
        );
        report
    }

    /// Replaces the store's posture and writes the snapshot; returns the
    /// snapshot's error, if any.
    async fn store_and_snapshot(&self, hosts: Vec<HostPosture>, now: SystemTime) -> Option<String> {
        // Publishing 100k hosts takes a while: keep it off the async
        // workers. The snapshot is written in the same blocking task,
        // so once a posture is published its snapshot is written too,
        // even if shutdown abandons this cycle meanwhile (a started
        // blocking task runs to the end; the runtime waits for it).
        let store = Arc::clone(&self.store);
        let snapshot = self.snapshot.clone();
        let published = tokio::task::spawn_blocking(move || {
            store.replace_all(hosts, now);
            snapshot.map(|path| super::snapshot::save(&path, &store).map_err(|e| e.to_string()))
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
        snapshot_error
    }
}

/// What a cycle cost.
struct Spent {
    duration: Duration,
    requests: u64,
    bytes: u64,
}
