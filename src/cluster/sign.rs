//! Everything this service writes to NATS is sealed with HMAC-SHA256 under
//! the shared `key_file`, and everything it reads is opened here first: a
//! NATS user who can write the buckets still cannot mark a device compliant
//! or grant access (DESIGN.md §8).
//!
//! A sealed value is `FA1 <64 hex digits of MAC>\n` followed by the payload
//! unchanged, so JSON payloads stay readable with the `nats` CLI. The MAC
//! covers a domain tag, the kind of value and its name (KV key, object name
//! or subject) besides the payload, so a genuine value copied under another
//! key or into another bucket does not verify either.
//!
//! What it does not stop: a writer replaying a genuine older value under
//! its own key. Each consumer bounds that: a snapshot is applied only when
//! newer than the one held, a lease is only ever a claim to be renewed, and
//! a replayed grant can only bring back a grant really given, never past
//! its own expiry.

use hmac::{Hmac, Mac};
use sha2::Sha256;

const MAGIC: &[u8; 4] = b"FA1 ";
/// Bytes before the payload: magic, 64 hex digits, newline.
pub const HEADER_LEN: usize = MAGIC.len() + 64 + 1;

/// What a sealed value is; part of the MAC and the metric label of a
/// rejection (`fleet_authz_cluster_rejected_total{kind}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    /// The leader lease in `<name>-leader`.
    Lease,
    /// A grant in `<name>-grants`.
    Grant,
    /// A posture in `<name>-snapshots`.
    Snapshot,
    /// An entry of the `<name>-audit` stream.
    Audit,
    /// A recheck request or the leader's answer on `<name>.recheck`.
    Recheck,
    /// A forced sync asked of the leader on `<name>.sync`, or its answer.
    Sync,
}

impl Kind {
    /// The label and MAC tag.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Lease => "lease",
            Self::Grant => "grant",
            Self::Snapshot => "snapshot",
            Self::Audit => "audit",
            Self::Recheck => "recheck",
            Self::Sync => "sync",
        }
    }
}

/// Why a value was not accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    /// No `FA1` header: not written by fleet-authz.
    #[error("unsigned")]
    Unsigned,
    /// A header whose MAC does not match (wrong key, or changed bytes).
    #[error("wrong signature")]
    BadSignature,
}

/// The shared key, ready to seal and open. `Debug` shows nothing of it.
#[derive(Clone)]
pub struct Signer {
    keyed: Hmac<Sha256>,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Signer(<redacted>)")
    }
}

impl Signer {
    /// A signer over `key` (any length; the config asks for 32 bytes or more).
    pub fn new(key: &[u8]) -> Self {
        // HMAC takes keys of any length, so this cannot fail.
        let keyed = <Hmac<Sha256> as Mac>::new_from_slice(key)
            .unwrap_or_else(|_| unreachable!("HMAC accepts any key length"));
        Self { keyed }
    }

    /// The signer for `cluster.key_file`.
    pub fn from_file(path: &std::path::Path) -> Result<Self, String> {
        super::config::read_key(path).map(|key| Self::new(&key))
    }

    fn mac(&self, kind: Kind, name: &str, payload: &[u8]) -> Hmac<Sha256> {
        let mut mac = self.keyed.clone();
        for part in [
            b"fleet-authz/1".as_slice(),
            kind.as_str().as_bytes(),
            name.as_bytes(),
        ] {
            mac.update(part);
            mac.update(&[0]);
        }
        mac.update(payload);
        mac
    }

    /// The header that goes before `payload` (for large payloads written
    /// as header + payload without a copy).
    pub fn header(&self, kind: Kind, name: &str, payload: &[u8]) -> Vec<u8> {
        let tag = self.mac(kind, name, payload).finalize().into_bytes();
        let mut header = Vec::with_capacity(HEADER_LEN);
        header.extend_from_slice(MAGIC);
        header.extend_from_slice(hex::encode(tag).as_bytes());
        header.push(b'\n');
        header
    }

    /// `payload` sealed as `kind` named `name`.
    pub fn seal(&self, kind: Kind, name: &str, payload: &[u8]) -> Vec<u8> {
        let mut sealed = self.header(kind, name, payload);
        sealed.extend_from_slice(payload);
        sealed
    }

    /// The payload of `sealed` when it is `kind` named `name` under this key.
    pub fn open<'a>(
        &self,
        kind: Kind,
        name: &str,
        sealed: &'a [u8],
    ) -> Result<&'a [u8], Rejection> {
        if sealed.len() < HEADER_LEN
            || !sealed.starts_with(MAGIC)
            || sealed[HEADER_LEN - 1] != b'\n'
        {
            return Err(Rejection::Unsigned);
        }
        let tag =
            hex::decode(&sealed[MAGIC.len()..HEADER_LEN - 1]).map_err(|_| Rejection::Unsigned)?;
        let payload = &sealed[HEADER_LEN..];
        self.mac(kind, name, payload)
            .verify_slice(&tag)
            .map_err(|_| Rejection::BadSignature)?;
        Ok(payload)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sealed_value_opens_only_as_what_and_where_it_was_sealed() {
        let signer = Signer::new(&[7; 32]);
        let sealed = signer.seal(Kind::Grant, "grant.5", br#"{"id":5}"#);
        assert!(sealed.starts_with(b"FA1 "));
        assert_eq!(
            signer.open(Kind::Grant, "grant.5", &sealed),
            Ok(&br#"{"id":5}"#[..])
        );
        // Another key, name, kind, or one changed byte: rejected.
        let other = Signer::new(&[8; 32]);
        assert_eq!(
            other.open(Kind::Grant, "grant.5", &sealed),
            Err(Rejection::BadSignature)
        );
        assert_eq!(
            signer.open(Kind::Grant, "grant.6", &sealed),
            Err(Rejection::BadSignature)
        );
        assert_eq!(
            signer.open(Kind::Lease, "grant.5", &sealed),
            Err(Rejection::BadSignature)
        );
        let mut changed = sealed.clone();
        *changed.last_mut().unwrap() = b']';
        assert_eq!(
            signer.open(Kind::Grant, "grant.5", &changed),
            Err(Rejection::BadSignature)
        );
        // Plain JSON, or a header that is not hex: unsigned.
        assert_eq!(
            signer.open(Kind::Grant, "grant.5", br#"{"id":5}"#),
            Err(Rejection::Unsigned)
        );
        let mut garbled = sealed;
        garbled[10] = b'z';
        assert_eq!(
            signer.open(Kind::Grant, "grant.5", &garbled),
            Err(Rejection::Unsigned)
        );
        assert_eq!(format!("{signer:?}"), "Signer(<redacted>)");
    }
}
