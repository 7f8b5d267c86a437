//! The audit trail: stream `<name>-audit` (subject `<name>.audit`), one
//! sealed JSON entry per grant, revocation and bypass, appended by the
//! replica it was made through. `GET /v1/audit` reads it back newest first,
//! a page at a time, as readable JSON: entries that fail their check are
//! counted and left out, never shown.

use async_nats::jetstream::message::PublishMessage;
use serde::Serialize;
use serde_json::{Value, json};

use super::{Nats, Node, grants::Entry, sign::Kind};
use crate::duration::from_unix_ms;

/// Most entries one page may ask for.
pub const MAX_PAGE: usize = 500;

/// One audit entry as stored and shown.
#[derive(Debug, Serialize, serde::Deserialize)]
struct AuditEntry {
    time: String,
    replica: String,
    action: String,
    grant_id: u64,
    #[serde(default)]
    host_id: Option<u64>,
    #[serde(default)]
    sha1: Option<String>,
    reason: String,
    by: String,
    expires_at: String,
}

fn rfc3339(ms: i64) -> String {
    humantime::format_rfc3339_millis(from_unix_ms(ms)).to_string()
}

/// Appends `action` on `entry`; returns its sequence.
pub(super) async fn append(
    node: &Node,
    nats: &Nats,
    action: &str,
    entry: &Entry,
) -> anyhow::Result<u64> {
    let at = entry.revoked_at_unix_ms.unwrap_or(entry.granted_at_unix_ms);
    let audit = AuditEntry {
        time: rfc3339(at),
        replica: node.id.clone(),
        action: action.to_owned(),
        grant_id: entry.id,
        host_id: entry.host_id,
        sha1: entry.sha1.map(|fp| fp.to_hex()),
        reason: entry.reason.clone(),
        by: entry.granted_by.clone(),
        expires_at: rfc3339(entry.expires_at_unix_ms),
    };
    let subject = &node.names.audit_subject;
    let body = node
        .signer
        .seal(Kind::Audit, subject, &serde_json::to_vec(&audit)?);
    // One entry per grant and action: a retried append (its ack lost, or
    // the KV write after it failed) is dropped by the stream's duplicate
    // window instead of appended twice.
    let message = PublishMessage::build()
        .payload(body.into())
        .message_id(format!("{}-{action}", entry.id));
    let ack = nats
        .js
        .send_publish(subject.clone(), message)
        .await?
        .await?;
    Ok(ack.sequence)
}

/// Up to `limit` entries older than sequence `before` (newest first), and
/// the `before` of the next page when there is one.
pub(super) async fn page(
    node: &Node,
    before: Option<u64>,
    limit: usize,
) -> anyhow::Result<(Vec<Value>, Option<u64>)> {
    let nats = node
        .nats()
        .ok_or_else(|| anyhow::anyhow!("not connected to NATS"))?;
    let state = nats.audit.get_info().await?.state;
    let (first, last) = (state.first_sequence.max(1), state.last_sequence);
    let mut seq = before.map_or(last, |b| b.saturating_sub(1).min(last));
    let mut entries = Vec::with_capacity(limit);
    let subject = &node.names.audit_subject;
    while seq >= first && seq > 0 && entries.len() < limit {
        if let Ok(message) = nats.audit.get_raw_message(seq).await
            && let Some(payload) = node.open(Kind::Audit, subject, &message.payload)
        {
            match serde_json::from_slice::<AuditEntry>(payload) {
                Ok(entry) => {
                    let mut doc = json!(entry);
                    doc["seq"] = json!(seq);
                    entries.push(doc);
                }
                Err(error) => node.rejected(Kind::Audit, subject, error),
            }
        }
        seq -= 1;
    }
    let next = (seq >= first && seq > 0).then_some(seq + 1);
    Ok((entries, next))
}
