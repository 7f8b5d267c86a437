//! The leader lease: key `leader` in KV `<name>-leader`, holding the
//! holder's replica id, sealed. It is taken with `create` (only if absent)
//! or, over a dead, deleted or forged claim, with `update` on the revision
//! seen; it is renewed every `lease_ttl / 3` with `update` on its own last
//! revision, so two replicas can never both renew one claim.
//!
//! A claim is judged by what this replica saw, not by clocks: a revision
//! that has not changed for `lease_ttl` of this replica's own time is dead,
//! whatever time the leader's host keeps. A dead leader is so replaced
//! within about `lease_ttl + 2 × lease_ttl / 3`.
//!
//! The same loop watches NATS itself: with no successful lease operation for
//! `lease_ttl`, the replica is degraded and syncs Fleet alone, and it goes
//! back to following once it sees a live leader (a claim renewed), or leads.

use std::sync::Arc;

use async_nats::jetstream::kv::{CreateErrorKind, Operation, UpdateErrorKind};
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use tokio::{sync::watch, time::Instant};

use super::{Node, Role, nats::LEASE_KEY, sign::Kind, stopped};

/// The lease's value.
#[derive(Debug, Serialize, Deserialize)]
struct Claim {
    holder: String,
    at_unix_ms: i64,
}

/// What the loop remembers between steps.
struct Lease {
    last_contact: Instant,
    /// The other holder's revision and when this replica first saw it.
    observed: Option<(u64, Instant)>,
    /// This replica's own claim, by revision.
    mine: Option<u64>,
}

/// Runs until shutdown; then gives up a held lease so a follower takes over
/// at once instead of after `lease_ttl`.
pub(super) async fn run(node: Arc<Node>, mut stop: watch::Receiver<bool>) {
    let ttl = node.config.lease_ttl;
    let step = ttl / 3;
    let mut lease = Lease {
        last_contact: Instant::now(),
        observed: None,
        mine: None,
    };
    let mut ticker = tokio::time::interval(step);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = stopped(&mut stop) => break,
            _ = ticker.tick() => {}
        }
        let result = match node.nats() {
            Some(nats) => match tokio::time::timeout(step, lease.step(&node, &nats)).await {
                Ok(result) => result,
                Err(_) => Err("lease operation timed out".into()),
            },
            None => Err("not connected to NATS".into()),
        };
        match result {
            Ok(()) => {
                lease.last_contact = Instant::now();
                node.set_degraded(None);
            }
            Err(error) => {
                tracing::debug!(%error, "lease step failed");
                let silent = lease.last_contact.elapsed();
                if silent > ttl {
                    lease.mine = None;
                    lease.observed = None;
                    let since = std::time::SystemTime::now() - silent;
                    node.set_degraded(Some(since));
                    node.set_role(Role::Alone, None);
                }
            }
        }
    }
    if let (Some(revision), Some(nats)) = (lease.mine, node.nats()) {
        let released = nats
            .leader
            .delete_expect_revision(LEASE_KEY, Some(revision));
        match tokio::time::timeout(step, released).await {
            Ok(Ok(())) => tracing::info!("leader lease released"),
            _ => tracing::warn!("could not release the leader lease; it lapses after lease_ttl"),
        }
    }
}

type StepError = Box<dyn std::error::Error + Send + Sync>;

impl Lease {
    /// One look at the lease, and the one write it calls for.
    async fn step(&mut self, node: &Node, nats: &super::Nats) -> Result<(), StepError> {
        let entry = nats.leader.entry(LEASE_KEY).await?;
        let claim = entry
            .as_ref()
            .filter(|e| e.operation == Operation::Put)
            .map(|e| (e.revision, open_claim(node, &e.value)));
        match (claim, entry.as_ref().map(|e| e.revision)) {
            (None, revision) => self.take(node, nats, revision).await,
            // Its own claim, also one it held before NATS went away (or an
            // older one a writer replayed): renewing it is taking it back.
            (Some((revision, Some(holder))), _) if holder == node.id => {
                self.renew(node, nats, revision).await
            }
            (Some((revision, Some(holder))), _) => {
                self.mine = None;
                self.other(node, nats, revision, holder).await
            }
            // Forged: ignored, as if nobody held the lease.
            (Some((revision, None)), _) => self.take(node, nats, Some(revision)).await,
        }
    }

    /// Takes a free lease: `create` over nothing, `update` over a deleted,
    /// forged or dead claim at `revision`. Losing the race is no error.
    async fn take(
        &mut self,
        node: &Node,
        nats: &super::Nats,
        revision: Option<u64>,
    ) -> Result<(), StepError> {
        let value = seal_claim(node);
        let taken = match revision {
            None => nats.leader.create(LEASE_KEY, value).await.map_err(|e| {
                (
                    e.kind() == CreateErrorKind::AlreadyExists,
                    StepError::from(e),
                )
            }),
            Some(rev) => nats
                .leader
                .update(LEASE_KEY, value, rev)
                .await
                .map_err(|e| {
                    (
                        e.kind() == UpdateErrorKind::WrongLastRevision,
                        StepError::from(e),
                    )
                }),
        };
        match taken {
            Ok(revision) => {
                self.mine = Some(revision);
                self.observed = None;
                node.set_role(Role::Leader, Some(node.id.clone()));
                Ok(())
            }
            Err((true, _lost_the_race)) => Ok(()),
            Err((false, error)) => Err(error),
        }
    }

    async fn renew(
        &mut self,
        node: &Node,
        nats: &super::Nats,
        revision: u64,
    ) -> Result<(), StepError> {
        match nats
            .leader
            .update(LEASE_KEY, seal_claim(node), revision)
            .await
        {
            Ok(revision) => {
                self.mine = Some(revision);
                node.set_role(Role::Leader, Some(node.id.clone()));
                Ok(())
            }
            Err(e) if e.kind() == UpdateErrorKind::WrongLastRevision => {
                self.mine = None;
                node.set_role(Role::Follower, None);
                Ok(())
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Someone else's claim: follow it while it is renewed, take it over
    /// once it has not changed for `lease_ttl`.
    async fn other(
        &mut self,
        node: &Node,
        nats: &super::Nats,
        revision: u64,
        holder: String,
    ) -> Result<(), StepError> {
        match self.observed {
            Some((seen, since)) if seen == revision => {
                if since.elapsed() > node.config.lease_ttl {
                    tracing::warn!(%holder, "leader lease not renewed for lease_ttl; taking over");
                    return self.take(node, nats, Some(revision)).await;
                }
                // A replica alone keeps syncing until the claim proves live.
                if node.role().role != Role::Alone {
                    node.set_role(Role::Follower, Some(holder));
                }
            }
            previous => {
                self.observed = Some((revision, Instant::now()));
                let live = previous.is_some();
                if live || node.role().role != Role::Alone {
                    node.set_role(Role::Follower, Some(holder));
                }
            }
        }
        Ok(())
    }
}

fn seal_claim(node: &Node) -> Bytes {
    let claim = Claim {
        holder: node.id.clone(),
        at_unix_ms: crate::duration::unix_ms(std::time::SystemTime::now()),
    };
    let json = serde_json::to_vec(&claim).unwrap_or_default();
    node.signer.seal(Kind::Lease, LEASE_KEY, &json).into()
}

/// The holder of a sealed claim; `None` (counted, logged) when it is forged.
fn open_claim(node: &Node, value: &[u8]) -> Option<String> {
    let payload = node.open(Kind::Lease, LEASE_KEY, value)?;
    match serde_json::from_slice::<Claim>(payload) {
        Ok(claim) => Some(claim.holder),
        Err(error) => {
            node.rejected(Kind::Lease, LEASE_KEY, error);
            None
        }
    }
}
