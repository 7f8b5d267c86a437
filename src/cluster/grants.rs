//! Grants shared through KV `<name>-grants`: key `grant.<id>`, value the
//! grant as sealed JSON (a revocation is the same grant with
//! `revoked_at_unix_ms`, sealed too, so it can't be forged either). The
//! grant store's hook queues each grant and revocation made here; a writer
//! appends it to the audit stream, then puts it in KV, retrying until NATS
//! takes both, so one made while NATS is down reaches the others when it
//! returns. A watcher applies what any replica wrote through
//! `GrantStore::apply_remote`, within milliseconds of the write.
//!
//! Grants a replica holds when cluster mode starts (its `grants_file`, from
//! before cluster mode or from a run the others moved on from) are offered
//! to the bucket with a create, which never overwrites: one already there,
//! revoked or not, stays as it is, so a replica that missed a revocation
//! cannot bring the grant back; the watcher then revokes it here too. Until
//! the watcher has read the bucket once, those held grants allow nothing
//! (after lease_ttl without NATS the replica is alone and they allow again).
//!
//! A revocation is kept in the grants file until its grant would have
//! expired, so "revoked wins" survives a restart: one made while NATS was
//! down is written at the next start unless the bucket already has it, and
//! the bucket's stale copy of the grant is never applied over it.
//!
//! Deletes and purges carry no signature and are ignored: an entry goes
//! only once it can no longer matter ([`super::prune`]). Ids come from the
//! clock (milliseconds × 1000 plus three random digits, at least the store's
//! next id), so replicas never need to agree on a counter.

use std::{
    collections::VecDeque,
    ops::ControlFlow,
    sync::{Arc, Mutex},
    time::SystemTime,
};

use async_nats::jetstream::kv::{CreateErrorKind, Operation};
use serde::{Deserialize, Serialize};
use tokio::sync::{Notify, watch};
use tokio_stream::StreamExt;

use super::{Node, audit, lock, ready, sign::Kind, stopped};
use crate::{
    duration::{from_unix_ms, unix_ms},
    fingerprint::Fingerprint,
    grants::{Grant, GrantReplica, GrantStore, GrantSubject, RemoteChange},
};

/// What is waiting for NATS.
#[derive(Default)]
pub(super) struct Replication {
    queue: Mutex<VecDeque<(Grant, Change)>>,
    wake: Notify,
}

/// A grant as stored in KV.
#[derive(Debug, Serialize, Deserialize)]
pub(super) struct Entry {
    pub id: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_id: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha1: Option<Fingerprint>,
    pub reason: String,
    pub granted_by: String,
    pub granted_at_unix_ms: i64,
    pub expires_at_unix_ms: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoked_at_unix_ms: Option<i64>,
    /// For a self-service bypass: the route it lets the device through.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bypass_route: Option<String>,
    /// The replica it was made or revoked through.
    pub replica: String,
}

impl Entry {
    fn new(grant: &Grant, revoked_at: Option<SystemTime>, replica: &str) -> Self {
        let (host_id, sha1) = grant.subject.to_parts();
        Self {
            id: grant.id,
            host_id,
            sha1,
            reason: grant.reason.clone(),
            granted_by: grant.granted_by.clone(),
            granted_at_unix_ms: unix_ms(grant.granted_at),
            expires_at_unix_ms: unix_ms(grant.expires_at),
            revoked_at_unix_ms: revoked_at.map(unix_ms),
            bypass_route: grant.bypass_route.clone(),
            replica: replica.to_owned(),
        }
    }

    pub(super) fn to_grant(&self) -> Option<Grant> {
        let subject = GrantSubject::from_parts(self.host_id, self.sha1)?;
        Some(Grant {
            id: self.id,
            subject,
            reason: self.reason.clone(),
            granted_by: self.granted_by.clone(),
            granted_at: from_unix_ms(self.granted_at_unix_ms),
            expires_at: from_unix_ms(self.expires_at_unix_ms),
            bypass_route: self.bypass_route.clone(),
        })
    }
}

/// What happened to a grant queued for NATS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Change {
    /// Given through this replica.
    Granted,
    /// Revoked through this replica, at that time.
    Revoked(SystemTime),
    /// Held when cluster mode started: shared unless the bucket has it.
    Held,
    /// Revoked (at that time) before cluster mode started, perhaps while
    /// NATS was down: written unless the bucket already has it revoked.
    HeldRevocation(SystemTime),
}

fn key(id: u64) -> String {
    format!("grant.{id}")
}

/// Offers every grant in force in `store` to the bucket, and every
/// revocation it remembers (see the module doc); queued, so they go once
/// NATS answers. The held grants allow nothing until the cluster's copy has
/// been read ([`watch_loop`]; held back when the store was built).
pub(super) fn share_held(node: &Node, store: &GrantStore) {
    let now = SystemTime::now();
    let held = store.active(now);
    let revocations = store.revocations(now);
    if !held.is_empty() || !revocations.is_empty() {
        tracing::info!(
            grants = held.len(),
            revocations = revocations.len(),
            "grants and revocations held at start offered to the cluster"
        );
    }
    let mut queue = lock(&node.grants.queue);
    queue.extend(held.into_iter().map(|g| (g, Change::Held)));
    queue.extend(
        revocations
            .into_iter()
            .map(|r| (r.grant, Change::HeldRevocation(r.at))),
    );
    drop(queue);
    node.grants.wake.notify_one();
}

/// The grant store's hook.
pub(super) struct Hook(pub Arc<Node>);

impl GrantReplica for Hook {
    fn next_id(&self, local_next: u64) -> u64 {
        let ms = u64::try_from(unix_ms(SystemTime::now())).unwrap_or(0);
        local_next.max(ms * 1000 + rand::random_range(0..1000))
    }

    fn granted(&self, grant: &Grant) {
        self.queue(grant, Change::Granted);
    }

    fn revoked(&self, grant: &Grant, at: SystemTime) {
        self.queue(grant, Change::Revoked(at));
    }
}

impl Hook {
    fn queue(&self, grant: &Grant, change: Change) {
        lock(&self.0.grants.queue).push_back((grant.clone(), change));
        self.0.grants.wake.notify_one();
    }
}

/// Writes queued grants and revocations to KV and the audit stream.
pub(super) async fn write_loop(node: Arc<Node>, mut stop: watch::Receiver<bool>) {
    let retry = node.config.lease_ttl / 6;
    loop {
        let next = lock(&node.grants.queue).front().cloned();
        let Some((grant, change)) = next else {
            tokio::select! {
                () = stopped(&mut stop) => return,
                () = node.grants.wake.notified() => continue,
            }
        };
        let written = match node.nats() {
            Some(nats) => write(&node, &nats, &grant, change).await,
            None => Err(anyhow::anyhow!("not connected to NATS")),
        };
        match written {
            Ok(()) => {
                lock(&node.grants.queue).pop_front();
            }
            Err(error) => {
                tracing::warn!(%error, grant_id = grant.id, "grant not shared yet; retrying");
                tokio::select! {
                    () = stopped(&mut stop) => return,
                    () = tokio::time::sleep(retry) => {}
                }
            }
        }
    }
}

async fn write(
    node: &Node,
    nats: &super::Nats,
    grant: &Grant,
    change: Change,
) -> anyhow::Result<()> {
    let revoked_at = match change {
        Change::Revoked(at) | Change::HeldRevocation(at) => Some(at),
        Change::Granted | Change::Held => None,
    };
    let entry = Entry::new(grant, revoked_at, &node.id);
    let key = key(grant.id);
    let sealed = node
        .signer
        .seal(Kind::Grant, &key, &serde_json::to_vec(&entry)?);
    let ttl = node.config.lease_ttl;
    // Held at start: written only where the bucket has nothing for it (a
    // grant), or has it unrevoked (a revocation).
    match change {
        Change::Held | Change::HeldRevocation(_) => {
            let current = tokio::time::timeout(ttl, nats.grants.get(&key)).await??;
            let done = match (change, current) {
                (Change::Held, current) => current.is_some(),
                (_, Some(value)) => is_revocation(node, &key, &value),
                (_, None) => false,
            };
            if done {
                return Ok(());
            }
        }
        Change::Granted | Change::Revoked(_) => {}
    }
    // DESIGN §8: grant, revoke, or bypass (a self-service grant, §9).
    let action = match (revoked_at, &grant.bypass_route) {
        (Some(_), _) => "revoke",
        (None, Some(_)) => "bypass",
        (None, None) => "grant",
    };
    // Audited before it takes effect: whatever the others apply is in the
    // trail, even if this replica or NATS dies right after the write. A
    // retry appends nothing twice (the entry's message id).
    audit::append(node, nats, action, &entry).await?;
    if change == Change::Held {
        let created = tokio::time::timeout(ttl, nats.grants.create(&key, sealed.into())).await?;
        match created {
            Ok(_) => tracing::info!(grant_id = grant.id, "grant held at start shared"),
            // Written meanwhile by another replica: the watcher says what holds.
            Err(e) if e.kind() == CreateErrorKind::AlreadyExists => {}
            Err(e) => return Err(e.into()),
        }
    } else {
        tokio::time::timeout(ttl, nats.grants.put(&key, sealed.into())).await??;
    }
    Ok(())
}

/// Applies every grant and revocation written to KV, until shutdown.
pub(super) async fn watch_loop(
    node: Arc<Node>,
    store: Arc<GrantStore>,
    mut stop: watch::Receiver<bool>,
) {
    // NATS out of reach for lease_ttl: the replica decides alone, so the
    // grants it held at start allow again, unchecked, as before cluster mode.
    let ttl = node.config.lease_ttl;
    let nats = match tokio::time::timeout(ttl, ready(&node, &mut stop)).await {
        Ok(nats) => nats,
        Err(_) => {
            let unchecked = store.confirm_held();
            if unchecked > 0 {
                tracing::warn!(
                    grants = unchecked,
                    "NATS out of reach: grants held at start allow again, unchecked against the cluster"
                );
            }
            ready(&node, &mut stop).await
        }
    };
    let Some(nats) = nats else {
        return;
    };
    let step = ttl / 3;
    let mut replayed = false;
    loop {
        if !replayed {
            replayed = replay(&node, &nats, &store)
                .await
                .inspect_err(|error| tracing::warn!(%error, "cannot read the grants bucket yet"))
                .is_ok();
        }
        if replayed
            && watch(&node, &nats, &store, step, &mut stop)
                .await
                .is_break()
        {
            return;
        }
        tokio::select! {
            () = stopped(&mut stop) => return,
            () = tokio::time::sleep(step) => {}
        }
    }
}

/// Applies the bucket's changes until the watch ends (`Continue`: start
/// another) or shutdown (`Break`).
async fn watch(
    node: &Node,
    nats: &super::Nats,
    store: &GrantStore,
    step: std::time::Duration,
    stop: &mut watch::Receiver<bool>,
) -> ControlFlow<()> {
    let Ok(mut entries) = nats.grants.watch_with_history(">").await else {
        return ControlFlow::Continue(());
    };
    let mut check = tokio::time::interval(step);
    let mut was_connected = true;
    loop {
        tokio::select! {
            () = stopped(stop) => return ControlFlow::Break(()),
            entry = entries.next() => match entry {
                Some(Ok(entry)) => on_entry(node, store, &entry),
                _ => return ControlFlow::Continue(()),
            },
            _ = check.tick() => {
                // A watch can outlive a NATS restart without its
                // consumer: start a new one once NATS is back.
                let connected = nats.client.connection_state() == async_nats::connection::State::Connected;
                if connected && !was_connected {
                    return ControlFlow::Continue(());
                }
                was_connected = connected;
            }
        }
    }
}

/// True when `value`, stored at `key`, is a sealed revocation.
fn is_revocation(node: &Node, key: &str, value: &[u8]) -> bool {
    node.open(Kind::Grant, key, value)
        .and_then(|payload| serde_json::from_slice::<Entry>(payload).ok())
        .is_some_and(|e| e.revoked_at_unix_ms.is_some())
}

/// Reads every grant and revocation in the bucket into `store`, then lets
/// the grants held at start allow again: any the cluster revoked are gone.
async fn replay(node: &Node, nats: &super::Nats, store: &GrantStore) -> anyhow::Result<()> {
    let mut keys = nats.grants.keys().await?;
    let mut listed = Vec::new();
    while let Some(key) = keys.next().await {
        listed.push(key?);
    }
    for key in listed {
        if let Some(entry) = nats.grants.entry(&key).await? {
            on_entry(node, store, &entry);
        }
    }
    let confirmed = store.confirm_held();
    if confirmed > 0 {
        tracing::info!(
            grants = confirmed,
            "grants held at start checked against the cluster"
        );
    }
    Ok(())
}

fn on_entry(node: &Node, store: &GrantStore, entry: &async_nats::jetstream::kv::Entry) {
    if entry.operation != Operation::Put {
        return;
    }
    let Some(payload) = node.open(Kind::Grant, &entry.key, &entry.value) else {
        return;
    };
    let parsed = serde_json::from_slice::<Entry>(payload).ok();
    let Some((e, grant)) = parsed
        .and_then(|e| e.to_grant().map(|g| (e, g)))
        .filter(|(e, _)| key(e.id) == entry.key)
    else {
        return node.rejected(Kind::Grant, &entry.key, "not a grant");
    };
    let now = SystemTime::now();
    // The store remembers revocations (on file): a replayed grant entry for
    // one revoked here, even before a restart, is not applied again.
    let change = if e.revoked_at_unix_ms.is_some() {
        RemoteChange::Revoked(grant)
    } else {
        RemoteChange::Granted(grant)
    };
    match store.apply_remote(change, now) {
        Ok(true) => {
            tracing::info!(grant_id = e.id, replica = %e.replica, revoked = e.revoked_at_unix_ms.is_some(), "grant change from the cluster applied")
        }
        Ok(false) => {}
        Err(error) => {
            tracing::error!(%error, grant_id = e.id, "cannot keep a grant from the cluster")
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::{admin::GrantRequest, posture::HostId};

    /// Records what the store sends, and gives ids from 1000.
    #[derive(Default)]
    struct Recorder(Mutex<Vec<String>>);

    impl GrantReplica for Recorder {
        fn next_id(&self, local_next: u64) -> u64 {
            local_next.max(1000)
        }
        fn granted(&self, grant: &Grant) {
            lock(&self.0).push(format!("granted {}", grant.id));
        }
        fn revoked(&self, grant: &Grant, _at: SystemTime) {
            lock(&self.0).push(format!("revoked {}", grant.id));
        }
    }

    fn request() -> GrantRequest {
        GrantRequest {
            subject: GrantSubject::Host(HostId(7)),
            reason: "incident".into(),
            granted_by: "admin".into(),
            duration: Duration::from_secs(3600),
            bypass_route: None,
        }
    }

    #[test]
    fn local_changes_go_to_the_replica_and_remote_ones_are_applied_once_without_echo() {
        let store = GrantStore::in_memory();
        let recorder = Arc::new(Recorder::default());
        store.set_replica(Arc::clone(&recorder) as Arc<dyn GrantReplica>);
        let now = SystemTime::now();
        let mine = store.grant(request(), now).unwrap();
        assert_eq!(mine.id, 1000, "the id comes from the replica");
        // A grant made through another replica, as read back from KV.
        let entry = Entry::new(
            &Grant {
                id: 5000,
                ..mine.clone()
            },
            None,
            "other",
        );
        let remote = entry.to_grant().unwrap();
        let remote_again = remote.clone();
        assert!(
            store
                .apply_remote(RemoteChange::Granted(remote.clone()), now)
                .unwrap()
        );
        assert!(
            !store
                .apply_remote(RemoteChange::Granted(remote), now)
                .unwrap(),
            "applied twice"
        );
        assert_eq!(store.active(now).len(), 2);
        assert!(store.revoke(5000, now).unwrap());
        assert!(
            !store
                .apply_remote(RemoteChange::Granted(remote_again), now)
                .unwrap(),
            "a grant revoked here came back from the cluster"
        );
        assert!(
            store
                .apply_remote(RemoteChange::Revoked(mine.clone()), now)
                .unwrap()
        );
        assert!(
            !store
                .apply_remote(RemoteChange::Revoked(mine.clone()), now)
                .unwrap()
        );
        assert!(store.active(now).is_empty());
        // A new local grant still gets a fresh id, past every id seen.
        assert_eq!(store.grant(request(), now).unwrap().id, 5001);
        let sent = lock(&recorder.0).clone();
        assert_eq!(sent, ["granted 1000", "revoked 5000", "granted 5001"]);
        // An expired grant from the cluster changes nothing.
        let mut old = mine;
        (old.id, old.expires_at) = (9000, now - Duration::from_secs(1));
        assert!(!store.apply_remote(RemoteChange::Granted(old), now).unwrap());
    }
}
