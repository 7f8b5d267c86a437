//! Starting cluster mode: the connection, then one task per job, each
//! named, stopping on the service's shutdown signal and awaited by it.

use std::{sync::Arc, time::Duration};

use tokio::{sync::watch, task::JoinSet};
use tokio_stream::StreamExt;
use tracing::Instrument;

use super::{Nats, Node, Role, grants, lease, nats, posture, prune, recheck, sync, term};
use crate::admin::GrantStore;

/// Resolves once `stop` turns true.
pub(super) async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

/// Connects (in the background) and starts every cluster task in `tasks`.
pub async fn spawn(
    node: &Arc<Node>,
    grant_store: &Arc<GrantStore>,
    tasks: &mut JoinSet<anyhow::Result<()>>,
    stop: &watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let client = nats::connect(&node.config, &node.id).await?;
    let step = node.config.lease_ttl / 3;
    macro_rules! task {
        ($name:literal, $fut:expr) => {
            tasks.spawn(
                async move {
                    $fut.await;
                    Ok(())
                }
                .instrument(tracing::info_span!($name)),
            );
        };
    }
    let (n, s) = (Arc::clone(node), stop.clone());
    task!("cluster_connect", connect_loop(n, client, step, s));
    let (n, s) = (Arc::clone(node), stop.clone());
    task!("cluster_lease", lease::run(n, s));
    let (n, s) = (Arc::clone(node), stop.clone());
    task!("cluster_term", term::run(n, s));
    let (n, s) = (Arc::clone(node), stop.clone());
    task!("cluster_publish", posture::publish_loop(n, s));
    let (n, s) = (Arc::clone(node), stop.clone());
    let follow = posture::follow_loop(n, s).instrument(tracing::info_span!("cluster_follow"));
    let followed = crate::fleet::spawn_low_priority("cluster-follow", follow)?;
    tasks.spawn(async move {
        let _ = followed.await;
        Ok(())
    });
    let (n, s) = (Arc::clone(node), stop.clone());
    task!("cluster_recheck", recheck::serve_loop(n, s));
    let (n, s) = (Arc::clone(node), stop.clone());
    task!("cluster_fresh", recheck::fresh_loop(n, s));
    let (n, s) = (Arc::clone(node), stop.clone());
    task!("cluster_sync", sync::serve_loop(n, s));
    grants::share_held(node, grant_store);
    let (n, g, s) = (Arc::clone(node), Arc::clone(grant_store), stop.clone());
    task!("cluster_grants", grants::watch_loop(n, g, s));
    let (n, s) = (Arc::clone(node), stop.clone());
    task!("cluster_prune", prune::prune_loop(n, s));
    let (n, s) = (Arc::clone(node), stop.clone());
    task!("cluster_grant_writer", grants::write_loop(n, s));
    Ok(())
}

/// Finds or creates the JetStream resources once NATS answers, then hands
/// them to every task.
async fn connect_loop(
    node: Arc<Node>,
    client: async_nats::Client,
    step: Duration,
    mut stop: watch::Receiver<bool>,
) {
    let mut failures = 0u32;
    loop {
        match nats::resources(&client, &node.names).await {
            Ok(nats) => {
                tracing::info!(replica = %node.id, "connected to NATS JetStream");
                node.nats.send_replace(Some(nats));
                return;
            }
            // Connected, yet no resources: JetStream off, or no rights.
            Err(error) if client.connection_state() == async_nats::connection::State::Connected => {
                if failures.is_multiple_of(30) {
                    tracing::warn!(%error, "NATS answers but its JetStream resources cannot be had (JetStream enabled? account rights?)");
                }
                failures += 1;
            }
            Err(error) => tracing::debug!(%error, "NATS JetStream not reachable yet"),
        }
        tokio::select! {
            () = stopped(&mut stop) => return,
            () = tokio::time::sleep(step) => {}
        }
    }
}

/// Waits until NATS answered once; `None` on shutdown.
pub(super) async fn ready(node: &Node, stop: &mut watch::Receiver<bool>) -> Option<Nats> {
    let mut rx = node.nats.subscribe();
    tokio::select! {
        ready = rx.wait_for(Option::is_some) => ready.ok().and_then(|n| n.clone()),
        () = stopped(stop) => None,
    }
}

/// While this replica leads, hands each request on `subject` to `answer`
/// (which must not block: it spawns what takes time).
pub(super) async fn answer_while_leading(
    node: Arc<Node>,
    mut stop: watch::Receiver<bool>,
    subject: String,
    answer: fn(&Arc<Node>, &Nats, async_nats::Message),
) {
    let Some(nats) = ready(&node, &mut stop).await else {
        return;
    };
    let mut role = node.role.subscribe();
    loop {
        tokio::select! {
            () = stopped(&mut stop) => return,
            led = role.wait_for(|s| s.role == Role::Leader) => if led.is_err() { return },
        }
        let mut requests = match nats.client.subscribe(subject.clone()).await {
            Ok(sub) => sub,
            Err(error) => {
                tracing::warn!(%error, subject, "cannot answer requests to the leader");
                tokio::time::sleep(node.config.lease_ttl / 3).await;
                continue;
            }
        };
        loop {
            tokio::select! {
                () = stopped(&mut stop) => return,
                _ = role.wait_for(|s| s.role != Role::Leader) => break,
                request = requests.next() => match request {
                    Some(request) => answer(&node, &nats, request),
                    None => break,
                },
            }
        }
    }
}
