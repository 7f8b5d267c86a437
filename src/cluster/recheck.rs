//! The live recheck in cluster mode (DESIGN.md §1.5, §8). A follower asks
//! the leader over request/reply on `<name>.recheck`; the leader fetches the
//! host from Fleet through its single-flight, capped `Recheck`, so a host is
//! fetched once for the whole cluster, and sends the fresh host to every
//! replica on `<name>.recheck.fresh` besides answering. The asker waits at
//! most `recheck.budget`: without an answer its cached decision stands, and
//! the broadcast brings the host a moment later. A leader, or a replica
//! alone, rechecks against Fleet itself.
//!
//! A fresh host carries the time it was fetched, sealed, and is applied only
//! when fetched after the full posture held and after the host's last
//! recheck, so a replayed old answer cannot bring back an old posture.

use std::{
    sync::Arc,
    time::{Duration, SystemTime},
};

use serde::{Deserialize, Serialize};
use tokio::sync::{oneshot, watch};
use tokio_stream::StreamExt;

use super::{Node, Role, answer_while_leading, ready, sign::Kind, stopped};
use crate::{
    decision::{BoxFuture, Refresh},
    duration::{from_unix_ms, unix_ms},
    fleet::{
        FleetClient, FleetConfig, PollerHandle, Recheck, RecheckOutcome, RetryPolicy,
        adapter::MetricsObserver, snapshot,
    },
    posture::{HostId, HostPosture, PostureStore},
    telemetry::metrics::{Metrics, ResultLabels},
};

/// A request on `<name>.recheck`.
#[derive(Debug, Serialize, Deserialize)]
struct Ask {
    host_id: u64,
    from: String,
    /// Binds the answer to this request.
    nonce: u64,
}

/// The line before a fresh host's snapshot bytes.
#[derive(Debug, Serialize, Deserialize)]
struct Fresh {
    host_id: u64,
    fetched_at_unix_ms: i64,
}

/// The Fleet recheck this replica uses while it leads or is alone.
pub(super) fn local_recheck(
    fleet: &FleetConfig,
    store: &Arc<PostureStore>,
    metrics: &Arc<Metrics>,
    cves: &PollerHandle,
) -> anyhow::Result<Option<Arc<Recheck>>> {
    if !fleet.recheck.enabled {
        return Ok(None);
    }
    let client = FleetClient::new(fleet, &fleet.load_token()?, RetryPolicy::default())?
        .with_observer(Arc::new(MetricsObserver(Arc::clone(metrics))));
    let recheck = Recheck::new(Arc::new(client), Arc::clone(store), &fleet.recheck)
        .with_watched_cves(cves.clone());
    Ok(Some(Arc::new(recheck)))
}

/// The `decision::Refresh` port in cluster mode.
pub struct ClusterRefresh(pub Arc<Node>);

impl Refresh for ClusterRefresh {
    fn needs_refresh(&self, id: HostId, now: SystemTime) -> bool {
        let node = &self.0;
        let fetched = node.fetched_at.get(&id).map(|t| *t);
        match node.store.synced_at().max(fetched) {
            None => true,
            Some(t) => now.duration_since(t).unwrap_or_default() >= node.fleet.recheck.min_age,
        }
    }

    fn refresh(&self, id: HostId) -> BoxFuture<'_, Option<Arc<HostPosture>>> {
        Box::pin(async move {
            let node = &self.0;
            let budget = node.fleet.recheck.budget;
            let (result, host) = match node.role().role {
                Role::Follower => ask_leader(node, id, budget).await,
                Role::Leader | Role::Alone => match fetch(node, id) {
                    Some(rx) => match tokio::time::timeout(budget, rx).await {
                        Ok(Ok(outcome)) => settle(node, outcome),
                        _ => ("timed_out", None),
                    },
                    None => ("skipped", None),
                },
            };
            node.metrics
                .rechecks
                .get_or_create(&ResultLabels { result })
                .inc();
            host
        })
    }
}

fn settle(node: &Node, outcome: RecheckOutcome) -> (&'static str, Option<Arc<HostPosture>>) {
    match outcome {
        RecheckOutcome::Fresh(host) => {
            node.fetched_at.insert(host.id, SystemTime::now());
            ("fresh", Some(host))
        }
        RecheckOutcome::TimedOut => ("timed_out", None),
        RecheckOutcome::Failed(_) => ("failed", None),
        RecheckOutcome::Skipped(_) => ("skipped", None),
    }
}

/// Starts a Fleet fetch of `id` that runs to its end (bounded by the
/// client's timeouts) and, when this replica leads, sends the fresh host to
/// every replica. `None` without a Fleet recheck.
fn fetch(node: &Arc<Node>, id: HostId) -> Option<oneshot::Receiver<RecheckOutcome>> {
    let recheck = Arc::clone(node.recheck.as_ref()?);
    let (tx, rx) = oneshot::channel();
    let node = Arc::clone(node);
    // Long enough for the client's own attempts; the caller waits less.
    let wait = node.fleet.request_timeout * 3;
    tokio::spawn(async move {
        let outcome = recheck.recheck(id, wait).await;
        if let RecheckOutcome::Fresh(host) = &outcome {
            let now = SystemTime::now();
            node.fetched_at.insert(id, now);
            if node.role().role == Role::Leader
                && let Some(nats) = node.nats()
            {
                let body = seal_fresh(&node, host, now, &node.names.fresh_subject);
                if let Err(error) = nats
                    .client
                    .publish(node.names.fresh_subject.clone(), body.into())
                    .await
                {
                    tracing::warn!(%error, host.id = %id, "fresh host not sent to the cluster");
                }
            }
        }
        let _ = tx.send(outcome);
    });
    Some(rx)
}

fn seal_fresh(node: &Node, host: &HostPosture, at: SystemTime, name: &str) -> Vec<u8> {
    let head = Fresh {
        host_id: host.id.0,
        fetched_at_unix_ms: unix_ms(at),
    };
    let mut payload = serde_json::to_vec(&head).unwrap_or_default();
    payload.push(b'\n');
    payload.extend_from_slice(&snapshot::encode(std::iter::once(host), at));
    node.signer.seal(Kind::Recheck, name, &payload)
}

/// A follower's recheck: the leader's answer within `budget`, applied.
async fn ask_leader(
    node: &Node,
    id: HostId,
    budget: Duration,
) -> (&'static str, Option<Arc<HostPosture>>) {
    let Some(nats) = node.nats() else {
        return ("failed", None);
    };
    let nonce = rand::random::<u64>();
    let ask = Ask {
        host_id: id.0,
        from: node.id.clone(),
        nonce,
    };
    let body = node.signer.seal(
        Kind::Recheck,
        &node.names.recheck_subject,
        &serde_json::to_vec(&ask).unwrap_or_default(),
    );
    let asked = nats
        .client
        .request(node.names.recheck_subject.clone(), body.into());
    let answer = match tokio::time::timeout(budget, asked).await {
        Err(_) => return ("timed_out", None),
        Ok(Err(_no_responders)) => return ("failed", None),
        Ok(Ok(answer)) => answer,
    };
    let name = format!("{}#{nonce}", node.names.recheck_subject);
    match apply_fresh(node, &answer.payload, &name, Some(id)) {
        Some(host) => ("fresh", Some(host)),
        None => ("failed", None),
    }
}

/// Checks and applies a fresh host; the stored posture when applied.
fn apply_fresh(
    node: &Node,
    sealed: &[u8],
    name: &str,
    expect: Option<HostId>,
) -> Option<Arc<HostPosture>> {
    let payload = node.open(Kind::Recheck, name, sealed)?;
    let split = payload.iter().position(|b| *b == b'\n')?;
    let head: Fresh = serde_json::from_slice(&payload[..split]).ok()?;
    let id = HostId(head.host_id);
    if expect.is_some_and(|e| e != id) {
        return None;
    }
    let mut loaded = snapshot::decode(&payload[split + 1..]).ok()?;
    let host = loaded.hosts.pop().filter(|h| h.id == id)?;
    let at = from_unix_ms(head.fetched_at_unix_ms);
    let newer = node.store.synced_at().is_none_or(|s| at > s)
        && node.fetched_at.get(&id).is_none_or(|t| at > *t);
    if !newer {
        // Already held (the leader's own, or sent twice): the store has it.
        return node.store.host(id);
    }
    node.store.upsert(host, at);
    node.fetched_at.insert(id, at);
    node.store.host(id)
}

/// While this replica leads, answers `<name>.recheck`.
pub(super) async fn serve_loop(node: Arc<Node>, stop: watch::Receiver<bool>) {
    let subject = node.names.recheck_subject.clone();
    answer_while_leading(node, stop, subject, answer).await;
}

fn answer(node: &Arc<Node>, nats: &super::Nats, request: async_nats::Message) {
    let subject = &node.names.recheck_subject;
    let Some(ask) = node.open_request::<Ask>(Kind::Recheck, subject, &request.payload) else {
        return;
    };
    let Some(reply) = request.reply else { return };
    let name = format!("{subject}#{}", ask.nonce);
    let Some(rx) = fetch(node, HostId(ask.host_id)) else {
        return;
    };
    let (node, client) = (Arc::clone(node), nats.client.clone());
    tokio::spawn(async move {
        let body = match rx.await {
            Ok(RecheckOutcome::Fresh(host)) => {
                let at = node
                    .fetched_at
                    .get(&host.id)
                    .map_or_else(SystemTime::now, |t| *t);
                seal_fresh(&node, &host, at, &name)
            }
            // No host: the asker's cached decision stands.
            _ => node.signer.seal(Kind::Recheck, &name, b""),
        };
        let _ = client.publish(reply, body.into()).await;
    });
}

/// Applies every fresh host the leader sends.
pub(super) async fn fresh_loop(node: Arc<Node>, mut stop: watch::Receiver<bool>) {
    let Some(nats) = ready(&node, &mut stop).await else {
        return;
    };
    loop {
        let mut fresh = match nats
            .client
            .subscribe(node.names.fresh_subject.clone())
            .await
        {
            Ok(sub) => sub,
            Err(_) => {
                tokio::select! {
                    () = stopped(&mut stop) => return,
                    () = tokio::time::sleep(node.config.lease_ttl / 3) => continue,
                }
            }
        };
        loop {
            tokio::select! {
                () = stopped(&mut stop) => return,
                message = fresh.next() => match message {
                    Some(m) => { apply_fresh(&node, &m.payload, &node.names.fresh_subject, None); }
                    None => break,
                },
            }
        }
    }
}
