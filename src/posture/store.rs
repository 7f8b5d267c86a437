//! `PostureStore`: fingerprint → host id → `Arc<HostPosture>`. See the module
//! docs in `posture/mod.rs` for the concurrency argument.

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering},
    },
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use dashmap::DashMap;

use super::{HostId, HostPosture};
use crate::duration::unix_ms;
use crate::fingerprint::Fingerprint;

/// In-memory posture of every host. Cheap to share behind an `Arc`.
#[derive(Debug)]
pub struct PostureStore {
    /// Straight to the host: one map probe per Check, not two.
    by_fingerprint: DashMap<Fingerprint, Arc<HostPosture>>,
    hosts: DashMap<HostId, Arc<HostPosture>>,
    /// Fingerprints that more than one host reports, with every holder.
    /// Rare (a certificate copied to a second device), so kept apart.
    shared: DashMap<Fingerprint, Vec<HostId>>,
    /// True while `shared` holds anything: the Check path's fast skip.
    any_shared: AtomicBool,
    /// Unix ms of the last successful full publish; 0 = never.
    synced_at_ms: AtomicI64,
    /// Incremented on every full publish.
    generation: AtomicU64,
    /// Serialises writers: there is one logical writer at a time.
    write_lock: Mutex<()>,
    /// Flips to true on the first publish: the readiness latch.
    loaded: tokio::sync::watch::Sender<bool>,
}

impl Default for PostureStore {
    fn default() -> Self {
        Self {
            by_fingerprint: DashMap::new(),
            hosts: DashMap::new(),
            shared: DashMap::new(),
            any_shared: AtomicBool::new(false),
            synced_at_ms: AtomicI64::new(0),
            generation: AtomicU64::new(0),
            write_lock: Mutex::new(()),
            loaded: tokio::sync::watch::Sender::new(false),
        }
    }
}

impl PostureStore {
    /// An empty store that has never been synced.
    pub fn new() -> Self {
        Self::default()
    }

    /// The host holding certificate `fp`.
    pub fn lookup(&self, fp: &Fingerprint) -> Option<Arc<HostPosture>> {
        self.by_fingerprint.get(fp).map(|h| Arc::clone(&h))
    }

    /// The hosts other than `id` that also report certificate `fp`: a
    /// certificate on two devices cannot say which one is asking. Empty
    /// (and nearly free) when no fingerprint is shared.
    pub fn other_holders(&self, fp: &Fingerprint, id: HostId) -> Vec<Arc<HostPosture>> {
        if !self.any_shared.load(Ordering::Acquire) {
            return Vec::new();
        }
        let Some(ids) = self.shared.get(fp).map(|ids| ids.clone()) else {
            return Vec::new();
        };
        ids.into_iter()
            .filter(|other| *other != id)
            .filter_map(|other| self.host(other))
            .collect()
    }

    /// The host with Fleet id `id`.
    pub fn host(&self, id: HostId) -> Option<Arc<HostPosture>> {
        self.hosts.get(&id).map(|h| Arc::clone(&h))
    }

    /// Number of hosts held.
    pub fn host_count(&self) -> usize {
        self.hosts.len()
    }

    /// Number of fingerprints held.
    pub fn fingerprint_count(&self) -> usize {
        self.by_fingerprint.len()
    }

    /// How many full publishes have happened.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// When the posture was last published in full; `None` before the first.
    pub fn synced_at(&self) -> Option<SystemTime> {
        match self.synced_at_ms.load(Ordering::Acquire) {
            0 => None,
            ms => Some(UNIX_EPOCH + Duration::from_millis(ms.max(1) as u64)),
        }
    }

    /// `now - synced_at`, or `None` before the first publish.
    pub fn age(&self, now: SystemTime) -> Option<Duration> {
        self.synced_at()
            .map(|t| now.duration_since(t).unwrap_or_default())
    }

    /// True once a first posture is in memory.
    pub fn is_loaded(&self) -> bool {
        self.synced_at_ms.load(Ordering::Acquire) != 0
    }

    /// Resolves once a first posture has been published.
    pub async fn wait_loaded(&self) {
        let mut rx = self.loaded.subscribe();
        // The sender lives as long as `self`, so this cannot fail.
        let _ = rx.wait_for(|loaded| *loaded).await;
    }

    /// A receiver marked changed by every full publish (and by
    /// `set_synced_at`); compare [`generation`](Self::generation) to tell
    /// which. Cluster mode forwards the leader's publishes with it.
    pub fn subscribe_publishes(&self) -> tokio::sync::watch::Receiver<bool> {
        self.loaded.subscribe()
    }

    /// Every host, in id order (for snapshots and admin listings).
    pub fn all_hosts(&self) -> Vec<Arc<HostPosture>> {
        let mut all: Vec<_> = self.hosts.iter().map(|e| Arc::clone(e.value())).collect();
        all.sort_by_key(|h| h.id);
        all
    }

    /// Publishes a complete posture: upserts every host, evicts hosts and
    /// fingerprints not in `hosts`, and records `synced_at`. For each failing
    /// policy that has no `failing_since`, carries the time over from the
    /// host's previous posture when it was already failing, else uses
    /// `synced_at`, so `grace` counts from the first sync that saw it fail.
    /// On the first publish of this process (nothing restored before it)
    /// nobody saw the failures start, so their start stays unknown and no
    /// grace applies: a restart never hands out a fresh grace period.
    pub fn replace_all(&self, hosts: Vec<HostPosture>, synced_at: SystemTime) {
        let _writer = self.write_lock.lock().unwrap_or_else(|e| e.into_inner());
        let seen_before = *self.loaded.borrow();
        let mut keep_fp: HashMap<Fingerprint, HostId> = HashMap::with_capacity(hosts.len() * 2);
        let mut shared: HashMap<Fingerprint, Vec<HostId>> = HashMap::new();
        let mut keep_hosts = std::collections::HashSet::with_capacity(hosts.len());
        for mut host in hosts {
            let previous = self.hosts.get(&host.id).map(|h| Arc::clone(&h));
            let observed = seen_before.then_some(synced_at);
            carry_failing_since(&mut host, previous.as_deref(), observed);
            for fp in &host.fingerprints {
                if let Some(first) = keep_fp.insert(*fp, host.id)
                    && first != host.id
                {
                    let holders = shared.entry(*fp).or_insert_with(|| vec![first]);
                    if !holders.contains(&host.id) {
                        holders.push(host.id);
                    }
                }
            }
            keep_hosts.insert(host.id);
            let host = Arc::new(host);
            for fp in &host.fingerprints {
                self.by_fingerprint.insert(*fp, Arc::clone(&host));
            }
            self.hosts.insert(host.id, host);
        }
        // Not `retain`: it holds each shard's write lock while it walks the
        // shard (milliseconds at 100,000 hosts), and every Check whose
        // fingerprint falls in that shard waits. Find what is gone under
        // read locks, then remove it one entry (one short lock) at a time.
        // Writers hold `write_lock`, so what is gone now stays gone.
        let gone_fps: Vec<Fingerprint> = self
            .by_fingerprint
            .iter()
            .filter(|e| keep_fp.get(e.key()) != Some(&e.value().id))
            .map(|e| *e.key())
            .collect();
        for fp in gone_fps {
            self.by_fingerprint.remove(&fp);
        }
        let gone_hosts: Vec<HostId> = self
            .hosts
            .iter()
            .filter(|e| !keep_hosts.contains(e.key()))
            .map(|e| *e.key())
            .collect();
        for id in gone_hosts {
            self.hosts.remove(&id);
        }
        self.publish_shared(shared);
        self.synced_at_ms
            .store(unix_ms(synced_at).max(1), Ordering::Release);
        self.generation.fetch_add(1, Ordering::AcqRel);
        self.loaded.send_replace(true);
    }

    /// Replaces one host (live recheck). Keeps `synced_at` as it is: one fresh
    /// host does not make the rest of the posture fresh.
    pub fn upsert(&self, mut host: HostPosture, now: SystemTime) {
        let _writer = self.write_lock.lock().unwrap_or_else(|e| e.into_inner());
        let previous = self.hosts.get(&host.id).map(|h| Arc::clone(&h));
        carry_failing_since(&mut host, previous.as_deref(), Some(now));
        if let Some(prev) = &previous {
            for fp in &prev.fingerprints {
                if !host.fingerprints.contains(fp) {
                    self.by_fingerprint
                        .remove_if(fp, |_, held| held.id == host.id);
                }
            }
        }
        let host = Arc::new(host);
        for fp in &host.fingerprints {
            self.by_fingerprint.insert(*fp, Arc::clone(&host));
        }
        self.hosts.insert(host.id, host);
    }

    /// Restores the `synced_at` of a snapshot without publishing hosts.
    pub fn set_synced_at(&self, synced_at: SystemTime) {
        self.synced_at_ms
            .store(unix_ms(synced_at).max(1), Ordering::Release);
        self.loaded.send_replace(true);
    }
}

impl PostureStore {
    /// Replaces the shared-fingerprint table. Flagged before it is filled
    /// and cleared after it is emptied, so a reader never skips a conflict.
    fn publish_shared(&self, shared: HashMap<Fingerprint, Vec<HostId>>) {
        if !shared.is_empty() {
            self.any_shared.store(true, Ordering::Release);
            tracing::warn!(
                fingerprints = shared.len(),
                "certificates reported by more than one Fleet host: every holder must pass"
            );
        }
        self.shared.retain(|fp, _| shared.contains_key(fp));
        let empty = shared.is_empty();
        for (fp, ids) in shared {
            self.shared.insert(fp, ids);
        }
        if empty {
            self.any_shared.store(false, Ordering::Release);
        }
    }
}

/// Sets `failing_since` on `host`'s failing policies that lack one: the
/// previous posture's value when it was already failing (an unknown start
/// stays unknown), else `observed`, the time this process saw the failure
/// appear; `None` when it could not have seen it (the first publish).
fn carry_failing_since(
    host: &mut HostPosture,
    previous: Option<&HostPosture>,
    observed: Option<SystemTime>,
) {
    for policy in host.policies.iter_mut() {
        if !policy.is_failing() {
            policy.set_failing_since(None);
            continue;
        }
        if policy.failing_since().is_some() {
            continue;
        }
        let earlier = previous
            .and_then(|p| p.policies.iter().find(|q| q.id() == policy.id()))
            .filter(|q| q.is_failing());
        policy.set_failing_since(match earlier {
            Some(q) => q.failing_since(),
            None => observed,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::posture::{PolicyMeta, PolicyResponse, PolicyResult};

    fn fp(n: u8) -> Fingerprint {
        Fingerprint::from_bytes([n; 20])
    }

    fn host(id: u64, fps: &[u8], failing: bool) -> HostPosture {
        let mut h = HostPosture::new(id, format!("host-{id}"));
        h.fingerprints = fps.iter().map(|n| fp(*n)).collect();
        let response = if failing {
            PolicyResponse::Fail
        } else {
            PolicyResponse::Pass
        };
        h.policies.push(PolicyResult::new(
            PolicyMeta::new(1, "disk encryption", true, None),
            response,
        ));
        h
    }

    #[test]
    fn replace_all_evicts_removed_hosts_and_fingerprints() {
        let store = PostureStore::new();
        let t0 = UNIX_EPOCH + Duration::from_secs(1_000);
        store.replace_all(vec![host(1, &[1, 2], false), host(2, &[3], false)], t0);
        assert_eq!(store.lookup(&fp(3)).unwrap().id, HostId(2));
        store.replace_all(vec![host(1, &[2], false)], t0 + Duration::from_secs(60));
        assert!(store.lookup(&fp(1)).is_none());
        assert!(store.lookup(&fp(3)).is_none());
        assert_eq!(store.lookup(&fp(2)).unwrap().id, HostId(1));
        assert_eq!((store.host_count(), store.fingerprint_count()), (1, 1));
        assert_eq!(
            store.age(t0 + Duration::from_secs(90)),
            Some(Duration::from_secs(30))
        );
    }

    #[test]
    fn failing_since_is_kept_across_syncs_and_reset_on_pass() {
        let store = PostureStore::new();
        let t0 = UNIX_EPOCH + Duration::from_secs(1_000);
        let t1 = t0 + Duration::from_secs(600);
        // The process has published before (host 1 was not enrolled yet).
        store.replace_all(vec![], t0 - Duration::from_secs(60));
        store.replace_all(vec![host(1, &[1], true)], t0);
        store.replace_all(vec![host(1, &[1], true)], t1);
        assert_eq!(
            store.host(HostId(1)).unwrap().policies[0].failing_since(),
            Some(t0)
        );
        store.replace_all(vec![host(1, &[1], false)], t1);
        store.replace_all(vec![host(1, &[1], true)], t1 + Duration::from_secs(5));
        assert_eq!(
            store.host(HostId(1)).unwrap().policies[0].failing_since(),
            Some(t1 + Duration::from_secs(5))
        );
    }

    #[test]
    fn failures_present_at_the_first_publish_have_an_unknown_start() {
        let store = PostureStore::new();
        let t0 = UNIX_EPOCH + Duration::from_secs(1_000);
        store.replace_all(vec![host(1, &[1], true)], t0);
        let since = |s: &PostureStore| s.host(HostId(1)).unwrap().policies[0].failing_since();
        assert_eq!(since(&store), None, "a restart gives no fresh grace");
        // Still unknown on later syncs, and after a recheck.
        store.replace_all(vec![host(1, &[1], true)], t0 + Duration::from_secs(60));
        store.upsert(host(1, &[1], true), t0 + Duration::from_secs(70));
        assert_eq!(since(&store), None);
        // Fixed, then failing again: that start was seen.
        store.replace_all(vec![host(1, &[1], false)], t0 + Duration::from_secs(120));
        store.replace_all(vec![host(1, &[1], true)], t0 + Duration::from_secs(180));
        assert_eq!(since(&store), Some(t0 + Duration::from_secs(180)));
    }

    #[test]
    fn a_fingerprint_two_hosts_report_names_every_holder() {
        let store = PostureStore::new();
        let t0 = UNIX_EPOCH + Duration::from_secs(1_000);
        store.replace_all(vec![host(1, &[1, 9], false), host(2, &[9], true)], t0);
        let held = store.lookup(&fp(9)).unwrap().id;
        let others: Vec<HostId> = store
            .other_holders(&fp(9), held)
            .iter()
            .map(|h| h.id)
            .collect();
        assert_eq!(
            others,
            [if held == HostId(1) {
                HostId(2)
            } else {
                HostId(1)
            }]
        );
        assert!(store.other_holders(&fp(1), HostId(1)).is_empty());
        // Once only one host reports it, nothing is shared.
        store.replace_all(vec![host(1, &[1], false), host(2, &[9], true)], t0);
        assert!(store.other_holders(&fp(9), HostId(2)).is_empty());
        assert!(!store.any_shared.load(Ordering::Acquire));
    }

    #[test]
    fn upsert_moves_fingerprints_without_touching_synced_at() {
        let store = PostureStore::new();
        let t0 = UNIX_EPOCH + Duration::from_secs(1_000);
        store.replace_all(vec![host(1, &[1], true)], t0);
        store.upsert(host(1, &[2], false), t0 + Duration::from_secs(5));
        assert!(store.lookup(&fp(1)).is_none());
        assert!(!store.lookup(&fp(2)).unwrap().policies[0].is_failing());
        assert_eq!(store.synced_at(), Some(t0));
    }
}
