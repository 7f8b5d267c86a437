//! The live recheck of one host on a would-deny (DESIGN.md §1.5): fetch the
//! host from Fleet, under a deadline, and decide on fresh data.
//!
//! Three bounds keep it from hurting Fleet or the request path:
//! - **Single flight per host.** The first caller starts one fetch and puts a
//!   `watch` sender in `inflight`; concurrent callers for the same host
//!   subscribe to it, so a thousand retries of one user cost one request.
//! - **A global cap.** Each fetch holds a semaphore permit; when none is free
//!   the caller is told `Busy` at once rather than queueing (the cached
//!   decision then stands).
//! - **A deadline.** The caller waits at most `budget`. The fetch itself runs
//!   in its own task and carries on past the deadline (bounded by the client's
//!   timeout and retries); when it lands it is upserted into the store, so the
//!   person's next try sees it without waiting for the next full sync.
//!
//! A recheck never loosens what it cannot see, so it can allow only what the
//! next full sync would allow (DESIGN §7). Host detail reports no
//! certificates and no operating-system CVEs, and a CVE held from the sync
//! (`hosts?vulnerability=`) cannot be told apart as the software's or the
//! OS's. So the fetched host keeps the store's fingerprints and every CVE it
//! held (adding those its software now shows), and every policy result the
//! answer does not carry. Only a policy result Fleet sends is taken afresh:
//! that is what remediation and "Refetch" change.

use std::{
    sync::Arc,
    time::{Duration, SystemTime},
};

use dashmap::{DashMap, mapref::entry::Entry};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};

use super::{Catalogue, FleetClient, FleetError, Interner, PollerHandle, RecheckConfig};
use crate::posture::{HostId, HostPosture, PolicyResult, PostureStore};

/// Why a recheck was not attempted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SkipReason {
    /// `max_concurrent` fetches are already in flight.
    Busy,
}

/// What a recheck produced within its budget.
#[derive(Debug, Clone, PartialEq)]
pub enum RecheckOutcome {
    /// Fleet answered; this posture is now in the store.
    Fresh(Arc<HostPosture>),
    /// No answer within the budget; the fetch continues in the background.
    TimedOut,
    /// Fleet answered with an error.
    Failed(FleetError),
    /// Not attempted.
    Skipped(SkipReason),
}

type Slot = Option<Result<Arc<HostPosture>, FleetError>>;

/// Refreshes single hosts from Fleet. Cheap to share behind an `Arc`.
pub struct Recheck {
    client: Arc<FleetClient>,
    store: Arc<PostureStore>,
    cves: Option<PollerHandle>,
    min_age: Duration,
    permits: Arc<Semaphore>,
    inflight: Arc<DashMap<HostId, watch::Sender<Slot>>>,
    fetched_at: Arc<DashMap<HostId, SystemTime>>,
}

impl Recheck {
    /// A recheck over `client` that upserts into `store`.
    pub fn new(client: Arc<FleetClient>, store: Arc<PostureStore>, config: &RecheckConfig) -> Self {
        Self {
            client,
            store,
            cves: None,
            min_age: config.min_age,
            permits: Arc::new(Semaphore::new(config.max_concurrent.max(1) as usize)),
            inflight: Arc::default(),
            fetched_at: Arc::default(),
        }
    }

    /// Takes the watched CVE list from the poller, so a recheck also refreshes
    /// CVEs from the host's software.
    pub fn with_watched_cves(mut self, poller: PollerHandle) -> Self {
        self.cves = Some(poller);
        self
    }

    /// True when the host's posture is older than `min_age`: the last full
    /// sync or this host's last recheck, whichever is newer.
    pub fn needs_recheck(&self, id: HostId, now: SystemTime) -> bool {
        let synced = self.store.synced_at();
        let fetched = self.fetched_at.get(&id).map(|t| *t);
        match synced.max(fetched) {
            None => true,
            Some(t) => now.duration_since(t).unwrap_or_default() >= self.min_age,
        }
    }

    /// Callers waiting on the fetch in flight for `id` (0 when none).
    pub fn waiters(&self, id: HostId) -> usize {
        self.inflight.get(&id).map_or(0, |tx| tx.receiver_count())
    }

    /// Fetches host `id` from Fleet, waiting at most `budget`.
    pub async fn recheck(&self, id: HostId, budget: Duration) -> RecheckOutcome {
        let mut rx = match self.inflight.entry(id) {
            Entry::Occupied(e) => e.get().subscribe(),
            Entry::Vacant(v) => {
                let Ok(permit) = Arc::clone(&self.permits).try_acquire_owned() else {
                    return RecheckOutcome::Skipped(SkipReason::Busy);
                };
                let (tx, rx) = watch::channel(None);
                v.insert(tx.clone());
                tokio::spawn(self.fetch(id, tx, permit));
                rx
            }
        };
        match tokio::time::timeout(budget, rx.wait_for(Option::is_some)).await {
            Err(_elapsed) => RecheckOutcome::TimedOut,
            Ok(Err(_closed)) => RecheckOutcome::Failed(FleetError::Client(
                "recheck task ended without a result".into(),
            )),
            Ok(Ok(slot)) => match &*slot {
                Some(Ok(host)) => RecheckOutcome::Fresh(Arc::clone(host)),
                Some(Err(e)) => RecheckOutcome::Failed(e.clone()),
                None => RecheckOutcome::TimedOut,
            },
        }
    }

    fn fetch(
        &self,
        id: HostId,
        tx: watch::Sender<Slot>,
        permit: OwnedSemaphorePermit,
    ) -> impl Future<Output = ()> + Send + 'static {
        let (client, store) = (Arc::clone(&self.client), Arc::clone(&self.store));
        let (inflight, fetched_at) = (Arc::clone(&self.inflight), Arc::clone(&self.fetched_at));
        let watched = self
            .cves
            .as_ref()
            .map(PollerHandle::cves)
            .unwrap_or_else(|| Arc::from([]));
        async move {
            let result = match client.host(id.0).await {
                Ok(detail) => {
                    let previous = store.host(id);
                    let mut interner = Interner::default();
                    if let Some(p) = &previous {
                        seed(&mut interner, p);
                    }
                    let mut fresh =
                        detail.to_posture(&Catalogue::default(), &mut interner, &watched);
                    if let Some(p) = &previous {
                        keep_what_it_cannot_see(&mut fresh, p);
                        if let (Some(t), Some(old)) = (&mut fresh.team, &p.team)
                            && t.name.is_empty()
                            && t.id == old.id
                        {
                            t.name = Arc::clone(&old.name);
                        }
                    }
                    let now = SystemTime::now();
                    let fallback = Arc::new(fresh.clone());
                    store.upsert(fresh, now);
                    fetched_at.insert(id, now);
                    // The stored copy carries `failing_since` over from before.
                    Ok(store.host(id).unwrap_or(fallback))
                }
                Err(error) => {
                    tracing::warn!(%error, host.id = %id, "fleet recheck failed");
                    Err(error)
                }
            };
            // Free the permit and the slot before publishing the result, so a
            // caller who got this result and retries at once starts a new fetch
            // instead of re-reading this one.
            drop(permit);
            inflight.remove_if(&id, |_, slot| slot.same_channel(&tx));
            tx.send_replace(Some(result));
        }
    }
}

/// Carries over from `previous` what the host detail cannot confirm or
/// refute: the fingerprints, every CVE, and the results of policies the
/// answer does not list.
fn keep_what_it_cannot_see(fresh: &mut HostPosture, previous: &HostPosture) {
    fresh.fingerprints.clone_from(&previous.fingerprints);
    for cve in &previous.cves {
        if !fresh.cves.contains(cve) {
            fresh.cves.push(Arc::clone(cve));
        }
    }
    let missing: Vec<_> = previous
        .policies
        .iter()
        .filter(|old| fresh.policies.iter().all(|p| p.id() != old.id()))
        .cloned()
        .collect();
    if !missing.is_empty() {
        fresh.policies.extend(missing);
        fresh.policies.sort_by_key(PolicyResult::id);
    }
}

fn seed(interner: &mut Interner, host: &HostPosture) {
    for p in &host.policies {
        interner.seed_policy(&p.meta);
        interner.seed(&p.meta.name);
        if let Some(r) = &p.meta.resolution {
            interner.seed(r);
        }
    }
    interner.seed(&host.platform);
    interner.seed(&host.os_version);
    for c in &host.cves {
        interner.seed(c);
    }
    if let Some(t) = &host.team {
        interner.seed(&t.name);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::posture::{PolicyMeta, PolicyResponse};

    fn host(policies: &[(u64, PolicyResponse)], cves: &[&str]) -> HostPosture {
        let mut h = HostPosture::new(7, "h");
        h.policies = policies
            .iter()
            .map(|(id, r)| {
                PolicyResult::new(PolicyMeta::new(*id, format!("p{id}"), false, None), *r)
            })
            .collect();
        h.cves = cves.iter().map(|c| Arc::from(*c)).collect();
        h
    }

    #[test]
    fn a_recheck_takes_only_what_fleet_sent_and_keeps_the_rest() {
        use PolicyResponse::{Fail, Pass};
        let previous = host(&[(1, Fail), (2, Fail), (3, Pass)], &["CVE-OS", "CVE-SW"]);
        // Fleet sent policy 1 (now passing) and 3, not 2; no CVEs.
        let mut fresh = host(&[(3, Pass), (1, Pass)], &[]);
        fresh.policies.sort_by_key(PolicyResult::id);
        keep_what_it_cannot_see(&mut fresh, &previous);
        let results: Vec<_> = fresh
            .policies
            .iter()
            .map(|p| (p.id(), p.response))
            .collect();
        assert_eq!(results, [(1, Pass), (2, Fail), (3, Pass)]);
        assert_eq!(fresh.cves, previous.cves);
        // A CVE the fresh answer adds is kept beside the old ones.
        let mut fresh = host(&[], &["CVE-NEW"]);
        keep_what_it_cannot_see(&mut fresh, &previous);
        let cves: Vec<&str> = fresh.cves.iter().map(|c| &**c).collect();
        assert_eq!(cves, ["CVE-NEW", "CVE-OS", "CVE-SW"]);
    }
}
