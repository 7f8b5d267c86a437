//! Postures through the Object Store `<name>-snapshots`, object `posture`.
//!
//! The leader publishes after each good cycle of its poller: the store's
//! posture in the snapshot format of §2 (`fleet::snapshot::encode`) behind
//! a one-line JSON header (version, publisher, sync time), all sealed.
//! Every replica follows the object: it fetches each new one, checks the
//! seal, and swaps the posture in with `replace_all` only when its version
//! is above the one held and its sync time is not older than the held one
//! by more than `lease_ttl`. So two leaders for a moment cannot move a
//! replica backwards, and a replica that restarted on a newer local snapshot
//! keeps it. A posture that fails its check is never applied.
//!
//! The watch brings a new object at once; a look at the object's info every
//! `lease_ttl / 3` catches what a watch broken by a NATS restart missed.
//!
//! Following runs on a thread of its own at the lowest CPU priority, as the
//! Fleet sync does (`fleet::spawn_low_priority`): decoding and swapping in
//! 100,000 hosts is the same work as the sync's publish, and the Checks keep
//! the CPUs meanwhile. Postures are encoded and decoded a batch of hosts at
//! a time, each batch copied and dropped as it comes (`wire.rs`), so a
//! follower's memory stays near a standalone instance's.

use std::{sync::Arc, time::Duration};

use async_nats::jetstream::object_store::ObjectMetadata;
use serde::{Deserialize, Serialize};
use tokio::{io::AsyncReadExt, sync::watch};
use tokio_stream::StreamExt;

use super::{
    Nats, Node, Role, lock,
    nats::{CHUNK_SIZE, POSTURE_OBJECT},
    ready,
    sign::Kind,
    stopped,
};
use crate::duration::unix_ms;

/// The line before the snapshot bytes.
#[derive(Debug, Serialize, Deserialize)]
struct Header {
    version: u64,
    publisher: String,
    synced_at_unix_ms: i64,
}

/// Publishes each posture the poller publishes while this replica leads.
pub(super) async fn publish_loop(node: Arc<Node>, mut stop: watch::Receiver<bool>) {
    let mut publishes = node.store.subscribe_publishes();
    let mut seen = node.store.generation();
    let mut pending = false;
    let retry = node.config.lease_ttl / 3;
    loop {
        tokio::select! {
            () = stopped(&mut stop) => return,
            changed = publishes.changed() => if changed.is_err() { return },
            () = tokio::time::sleep(retry), if pending => {}
        }
        {
            let held = lock(&node.held);
            let generation = node.store.generation();
            if generation != seen {
                seen = generation;
                // Not what came from NATS: that needs no publishing back.
                pending = generation != held.applied_generation;
            }
        }
        if !pending {
            continue;
        }
        if node.role().role != Role::Leader {
            pending = false;
            continue;
        }
        let Some(nats) = node.nats() else { continue };
        match publish(&node, &nats).await {
            Ok((version, bytes, took)) => {
                pending = false;
                tracing::info!(version, bytes, ?took, "posture published to the cluster");
            }
            Err(error) => tracing::warn!(%error, "posture not published; retrying"),
        }
    }
}

/// Seals and puts the store's posture; returns its version and size.
async fn publish(node: &Arc<Node>, nats: &Nats) -> anyhow::Result<(u64, usize, Duration)> {
    let started = tokio::time::Instant::now();
    // The version in the object's (unsigned) metadata is only a hint, so a
    // new leader that has not read the latest object still counts past it.
    let remote = match nats.snapshots.info(POSTURE_OBJECT).await {
        Ok(info) => info
            .metadata
            .get("version")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0),
        Err(_) => 0,
    };
    // Held from now: the store holds this posture, and the object's watch
    // event may come back before `put` returns; it must not be fetched.
    let version = {
        let mut held = lock(&node.held);
        let version = held.latest.max(held.version).max(remote) + 1;
        (held.version, held.latest) = (version, version);
        version
    };
    let n = Arc::clone(node);
    let (header, payload) = tokio::task::spawn_blocking(move || {
        let synced_at = n.store.synced_at()?;
        let hosts = n.store.all_hosts();
        let head = Header {
            version,
            publisher: n.id.clone(),
            synced_at_unix_ms: unix_ms(synced_at),
        };
        let mut payload = serde_json::to_vec(&head).ok()?;
        payload.push(b'\n');
        payload.extend_from_slice(&super::wire::encode(&hosts, synced_at));
        let header = n.signer.header(Kind::Snapshot, POSTURE_OBJECT, &payload);
        Some((header, payload))
    })
    .await?
    .ok_or_else(|| anyhow::anyhow!("the store holds no synced posture"))?;
    let meta = ObjectMetadata {
        name: POSTURE_OBJECT.to_owned(),
        chunk_size: Some(CHUNK_SIZE),
        metadata: [
            ("version".to_owned(), version.to_string()),
            ("publisher".to_owned(), node.id.clone()),
        ]
        .into(),
        ..Default::default()
    };
    let size = header.len() + payload.len();
    let mut reader = header.as_slice().chain(payload.as_slice());
    let info = nats.snapshots.put(meta, &mut reader).await?;
    lock(&node.held).nuid = Some(info.nuid);
    Ok((version, size, started.elapsed()))
}

/// Follows the posture object until shutdown.
pub(super) async fn follow_loop(node: Arc<Node>, mut stop: watch::Receiver<bool>) {
    let Some(nats) = ready(&node, &mut stop).await else {
        return;
    };
    let step = node.config.lease_ttl / 3;
    loop {
        let mut watch = nats.snapshots.watch_with_history().await.ok();
        let mut check = tokio::time::interval(step);
        loop {
            let info = tokio::select! {
                () = stopped(&mut stop) => return,
                next = async { watch.as_mut()?.next().await }, if watch.is_some() => match next {
                    Some(Ok(info)) if info.name == POSTURE_OBJECT && !info.deleted => info,
                    Some(Ok(_)) => continue,
                    // Broken (NATS restarted): start a new watch.
                    _ => break,
                },
                _ = check.tick() => match nats.snapshots.info(POSTURE_OBJECT).await {
                    Ok(info) if !info.deleted => info,
                    _ => continue,
                },
            };
            if !worth_fetching(&node, &info) {
                continue;
            }
            if let Err(error) = follow_one(&node, &nats).await {
                tracing::warn!(%error, "cannot fetch the cluster posture");
            }
        }
        tokio::select! {
            () = stopped(&mut stop) => return,
            () = tokio::time::sleep(step) => {}
        }
    }
}

/// False for the object already fetched or put, or one whose version hint
/// (the object's metadata, unsigned) is not above the posture held. The
/// hint only ever saves a download: what is applied is checked in full.
fn worth_fetching(node: &Node, info: &async_nats::jetstream::object_store::ObjectInfo) -> bool {
    let held = lock(&node.held);
    let hint = info
        .metadata
        .get("version")
        .and_then(|v| v.parse::<u64>().ok());
    held.nuid.as_deref() != Some(info.nuid.as_str()) && hint.is_none_or(|v| v > held.version)
}

/// Fetches the current object and applies it when it passes. Runs on the
/// follow thread, so the decoding and the swap run there too.
///
/// A read that brings nothing for `lease_ttl` is given up (NATS restarted
/// mid-read, or the object was replaced and its chunks purged): the next
/// look fetches whatever is current then.
async fn follow_one(node: &Arc<Node>, nats: &Nats) -> anyhow::Result<()> {
    let stall = node.config.lease_ttl;
    let stalled = || anyhow::anyhow!("the posture object sent nothing for {stall:?}");
    let mut object = tokio::time::timeout(stall, nats.snapshots.get(POSTURE_OBJECT))
        .await
        .map_err(|_| stalled())??;
    let nuid = object.info().nuid.clone();
    if lock(&node.held).nuid.as_deref() == Some(&nuid) {
        return Ok(());
    }
    let mut bytes = Vec::with_capacity(object.info().size);
    while tokio::time::timeout(stall, object.read_buf(&mut bytes))
        .await
        .map_err(|_| stalled())??
        > 0
    {}
    drop(object);
    apply(node, bytes, nuid);
    Ok(())
}

/// Checks, decodes and swaps in a fetched posture.
fn apply(node: &Node, bytes: Vec<u8>, nuid: String) {
    lock(&node.held).nuid = Some(nuid);
    let Some(payload) = node.open(Kind::Snapshot, POSTURE_OBJECT, &bytes) else {
        return;
    };
    let Some(split) = payload.iter().position(|b| *b == b'\n') else {
        return node.rejected(Kind::Snapshot, POSTURE_OBJECT, "no header line");
    };
    let head: Header = match serde_json::from_slice(&payload[..split]) {
        Ok(head) => head,
        Err(error) => return node.rejected(Kind::Snapshot, POSTURE_OBJECT, error),
    };
    {
        let mut held = lock(&node.held);
        held.latest = held.latest.max(head.version);
        if head.version <= held.version {
            return;
        }
    }
    let snapshot_bytes = &payload[split + 1..];
    let loaded = match super::wire::decode_compact(snapshot_bytes) {
        Ok(loaded) => loaded,
        Err(error) => return node.rejected(Kind::Snapshot, POSTURE_OBJECT, error),
    };
    if let Some(held_at) = node.store.synced_at()
        && loaded.synced_at + node.config.lease_ttl < held_at
    {
        tracing::info!(
            version = head.version,
            "cluster posture is older than the one held; kept ours"
        );
        return;
    }
    let count = loaded.hosts.len();
    let mut held = lock(&node.held);
    if head.version <= held.version {
        return;
    }
    node.store.replace_all(loaded.hosts, loaded.synced_at);
    held.version = head.version;
    held.applied_generation = node.store.generation();
    drop(held);
    tracing::info!(version = head.version, hosts = count, publisher = %head.publisher, "posture applied from the cluster");
    // The bytes are a snapshot file already: no second encoding. Written
    // after the swap: an fsync on a busy disk must not hold back the swap.
    if let Some(path) = &node.snapshot
        && let Err(error) = crate::atomic_file::write_atomically(path, snapshot_bytes)
    {
        tracing::error!(path = %path.display(), error = %error.source, "snapshot not written");
    }
}
