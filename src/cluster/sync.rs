//! `POST /v1/sync` (and `Admin.Sync`) in cluster mode (DESIGN.md §8). A
//! replica that syncs (the leader, or one alone) runs a cycle of its own
//! poller. A follower never calls Fleet for a sync: it asks the leader over
//! request/reply on `<name>.sync`, as rechecks do; the leader runs a cycle
//! now and publishes it as after any good cycle, and the follower answers
//! as a standalone instance does once that cycle has ended, naming the
//! leader. The posture reaches the follower through the Object Store a
//! moment later (under 2 s at 100,000 hosts, benches/cluster.rs).
//!
//! A sync of 100,000 hosts takes longer than any bound fit for "nobody is
//! there", so the leader answers at once that it is at it and again every
//! `lease_ttl / 3`; the follower gives up after `lease_ttl` without a word
//! (no leader, or a leader lost mid-sync) and answers 503 with why. With no
//! one on the subject at all, NATS says so at once. Requests and answers are
//! sealed like everything else: a NATS user can neither make the leader
//! hammer Fleet nor fake an answer.

use std::sync::Arc;

use async_nats::StatusCode;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio_stream::StreamExt;

use super::{Nats, Node, Role, answer_while_leading, sign::Kind};
use crate::{
    decision::{SyncFailure, Synced},
    fleet::PollerHandle,
};

/// A request on `<name>.sync`.
#[derive(Debug, Serialize, Deserialize)]
struct Ask {
    from: String,
    /// Binds the answers to this request.
    nonce: u64,
    accept_drop: bool,
}

/// What the leader says, once or more, about a sync asked of it.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
enum Answer {
    /// At it (sent at once, then every `lease_ttl / 3`).
    Running { leader: String },
    /// Leading, but its Fleet sync has not started yet.
    Starting { leader: String },
    /// The cycle ended well.
    Done { leader: String, hosts: usize },
    /// The cycle failed.
    Failed { leader: String, error: String },
}

/// One forced sync: here when this replica syncs, else by the leader.
pub(super) async fn forced(node: &Node, accept_drop: bool) -> Result<Synced, SyncFailure> {
    if let Some(term) = node.term.load_full() {
        return run_cycle(&term, accept_drop)
            .await
            .map(|hosts| Synced { hosts, by: None })
            .map_err(SyncFailure::Failed);
    }
    match node.role().role {
        Role::Follower => ask_leader(node, accept_drop).await,
        Role::Leader | Role::Alone => Err(SyncFailure::Unavailable(
            "this replica's Fleet sync is starting; try again in a moment".to_owned(),
        )),
    }
}

async fn run_cycle(term: &PollerHandle, accept_drop: bool) -> Result<usize, String> {
    let report = if accept_drop {
        term.sync_now_accepting_drop().await
    } else {
        term.sync_now().await
    };
    report.map(|r| r.hosts)
}

/// A follower's forced sync: asked of the leader, its last answer kept.
async fn ask_leader(node: &Node, accept_drop: bool) -> Result<Synced, SyncFailure> {
    let unavailable = |why: String| SyncFailure::Unavailable(why);
    let nats = node
        .nats()
        .ok_or_else(|| unavailable("not connected to NATS: no leader to ask for a sync".into()))?;
    let subject = &node.names.sync_subject;
    let nonce = rand::random::<u64>();
    let ask = Ask {
        from: node.id.clone(),
        nonce,
        accept_drop,
    };
    let body = node.signer.seal(
        Kind::Sync,
        subject,
        &serde_json::to_vec(&ask).unwrap_or_default(),
    );
    let inbox = nats.client.new_inbox();
    let cannot_ask = |e: &dyn std::fmt::Display| unavailable(format!("cannot ask the leader: {e}"));
    let mut answers = nats
        .client
        .subscribe(inbox.clone())
        .await
        .map_err(|e| cannot_ask(&e))?;
    nats.client
        .publish_with_reply(subject.clone(), inbox, body.into())
        .await
        .map_err(|e| cannot_ask(&e))?;
    let name = format!("{subject}#{nonce}");
    let silence = node.config.lease_ttl;
    loop {
        let message = match tokio::time::timeout(silence, answers.next()).await {
            Ok(Some(message)) => message,
            Ok(None) => return Err(unavailable("NATS was lost while the leader synced".into())),
            Err(_) => return Err(unavailable(no_answer(node, silence))),
        };
        if message.status == Some(StatusCode::NO_RESPONDERS) {
            return Err(unavailable(
                "no leader is answering sync requests now (being elected?); try again in a moment"
                    .into(),
            ));
        }
        let Some(payload) = node.open(Kind::Sync, &name, &message.payload) else {
            continue;
        };
        match serde_json::from_slice::<Answer>(payload) {
            Ok(Answer::Running { .. }) => {}
            Ok(Answer::Starting { leader }) => {
                return Err(unavailable(format!(
                    "leader {leader} is starting its Fleet sync; try again in a moment"
                )));
            }
            Ok(Answer::Done { leader, hosts }) => {
                return Ok(Synced {
                    hosts,
                    by: Some(leader),
                });
            }
            Ok(Answer::Failed { leader, error }) => {
                return Err(SyncFailure::Failed(format!("leader {leader}: {error}")));
            }
            Err(_) => node.rejected(Kind::Sync, &name, "not a sync answer"),
        }
    }
}

fn no_answer(node: &Node, silence: std::time::Duration) -> String {
    let leader = node
        .role()
        .leader
        .unwrap_or_else(|| "none known".to_owned());
    format!("no answer from the leader (last seen: {leader}) within {silence:?}")
}

/// While this replica leads, runs the syncs followers ask for.
pub(super) async fn serve_loop(node: Arc<Node>, stop: watch::Receiver<bool>) {
    let subject = node.names.sync_subject.clone();
    answer_while_leading(node, stop, subject, answer).await;
}

fn answer(node: &Arc<Node>, nats: &Nats, request: async_nats::Message) {
    let subject = &node.names.sync_subject;
    let Some(ask) = node.open_request::<Ask>(Kind::Sync, subject, &request.payload) else {
        return;
    };
    let Some(reply) = request.reply else { return };
    let to = Reply {
        node: Arc::clone(node),
        client: nats.client.clone(),
        subject: reply,
        name: format!("{subject}#{}", ask.nonce),
    };
    tokio::spawn(async move {
        tracing::info!(from = %ask.from, accept_drop = ask.accept_drop, "sync asked through a follower");
        let leader = to.node.id.clone();
        let Some(term) = to.node.term.load_full() else {
            return to.send(&Answer::Starting { leader }).await;
        };
        let cycle = run_cycle(&term, ask.accept_drop);
        tokio::pin!(cycle);
        // The first tick is at once: the asker knows a leader is at it.
        let mut beat = tokio::time::interval(to.node.config.lease_ttl / 3);
        let last = loop {
            tokio::select! {
                ended = &mut cycle => break match ended {
                    Ok(hosts) => Answer::Done { leader, hosts },
                    Err(error) => Answer::Failed { leader, error },
                },
                _ = beat.tick() => to.send(&Answer::Running { leader: leader.clone() }).await,
            }
        };
        to.send(&last).await;
    });
}

/// Where the answers to one request go.
struct Reply {
    node: Arc<Node>,
    client: async_nats::Client,
    subject: async_nats::Subject,
    name: String,
}

impl Reply {
    async fn send(&self, answer: &Answer) {
        let body = self.node.signer.seal(
            Kind::Sync,
            &self.name,
            &serde_json::to_vec(answer).unwrap_or_default(),
        );
        if let Err(error) = self.client.publish(self.subject.clone(), body.into()).await {
            tracing::warn!(%error, "sync answer not sent");
        }
    }
}
