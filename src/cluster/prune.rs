//! Hygiene of KV `<name>-grants`: after each good sync cycle the leader
//! removes the entries that can no longer matter, so the bucket (and what a
//! starting replica reads back) is what is in force, not every grant ever
//! given.
//!
//! An entry goes once its grant is past what a grants file keeps
//! (`Grant::is_kept`: expired, and for a bypass also a day after it was
//! given, which the daily limit counts) by `lease_ttl` more, the margin the
//! cluster already allows between replicas' clocks. A revocation is such an
//! entry too, and it must outlive the grant it revokes: removed earlier, a
//! replica that missed it (down, or cut off) would keep the grant, or offer
//! it back from its file at start; removed later, the grant has expired on
//! every replica anyway. Only entries whose seal verifies are judged; a
//! forged one stays as the watchers left it, ignored.
//!
//! Removal is a purge at the revision judged, so nothing written since is
//! lost, then a purge of the key's subject from the bucket's stream, so not
//! even the purge marker is left behind.

use std::{sync::Arc, time::SystemTime};

use async_nats::jetstream::kv::Operation;
use tokio::sync::watch;
use tokio_stream::StreamExt;

use super::{Nats, Node, Role, grants::Entry, ready, sign::Kind, stopped};

/// Prunes after each good cycle while this replica leads.
pub(super) async fn prune_loop(node: Arc<Node>, mut stop: watch::Receiver<bool>) {
    let Some(nats) = ready(&node, &mut stop).await else {
        return;
    };
    let mut cycles = node.store.subscribe_publishes();
    loop {
        tokio::select! {
            () = stopped(&mut stop) => return,
            changed = cycles.changed() => if changed.is_err() { return },
        }
        if node.role().role != Role::Leader {
            continue;
        }
        match prune(&node, &nats).await {
            Ok(0) => {}
            Ok(pruned) => tracing::info!(pruned, "expired grant entries pruned from the cluster"),
            Err(error) => tracing::warn!(%error, "grant entries not pruned; next cycle"),
        }
    }
}

/// Removes every entry past its time; how many went.
async fn prune(node: &Node, nats: &Nats) -> anyhow::Result<usize> {
    let mut keys = Vec::new();
    let mut listed = nats.grants.keys().await?;
    while let Some(key) = listed.next().await {
        keys.push(key?);
    }
    let now = SystemTime::now();
    let mut pruned = 0;
    for key in keys {
        let Some(entry) = nats.grants.entry(&key).await? else {
            continue;
        };
        if entry.operation != Operation::Put || !past_keeping(node, &key, &entry.value, now) {
            continue;
        }
        // Written since it was judged: judged again next cycle.
        if let Err(error) = nats
            .grants
            .purge_expect_revision(&key, Some(entry.revision))
            .await
        {
            tracing::debug!(%error, key, "grant entry changed; not pruned");
            continue;
        }
        let subject = format!("{}{key}", nats.grants.prefix);
        nats.grants.stream.purge().filter(subject).await?;
        pruned += 1;
    }
    Ok(pruned)
}

/// True for a genuine entry whose grant is past keeping, margin included.
fn past_keeping(node: &Node, key: &str, sealed: &[u8], now: SystemTime) -> bool {
    let Ok(payload) = node.signer.open(Kind::Grant, key, sealed) else {
        return false;
    };
    let Some(grant) = serde_json::from_slice::<Entry>(payload)
        .ok()
        .and_then(|e| e.to_grant())
    else {
        return false;
    };
    now.checked_sub(node.config.lease_ttl)
        .is_some_and(|then| !grant.is_kept(then))
}
