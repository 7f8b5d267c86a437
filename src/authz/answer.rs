//! A Check's answer as the gRPC service sends it: built for this Check, or
//! the host's allow answer encoded once and kept in the [`AllowMemo`].
//!
//! A plain allow (no reasons) depends only on the host and the route: the
//! identity headers, the headers to remove and the dynamic metadata are the
//! same on every Check until the posture changes. Building it takes some
//! twenty small allocations and encoding it walks nested messages; the kept
//! bytes are copied instead. The memo is Envoy's bytes, so it lives here in
//! the Envoy adapter, keyed by host and by the posture it was built from
//! (each sync or recheck makes a new `Arc<HostPosture>`, so a changed
//! posture never gets an old answer).

use std::sync::{
    Arc, Weak,
    atomic::{AtomicUsize, Ordering},
};

use bytes::{Buf, BufMut, Bytes};
use dashmap::{DashMap, mapref::entry::Entry};
use envoy_types::pb::envoy::service::auth::v3::CheckResponse;
use prost::{
    DecodeError, Message,
    encoding::{DecodeContext, WireType},
};

use crate::posture::{HostId, HostPosture};

/// Each host's encoded plain allow for one route, valid while the host's
/// posture is the one it was built from.
#[derive(Debug, Default)]
pub struct AllowMemo {
    kept: DashMap<HostId, Kept>,
    /// Entry count at which entries of postures no longer held are dropped.
    prune_at: AtomicUsize,
}

#[derive(Debug)]
struct Kept {
    /// The posture it was built from. A `Weak` keeps the allocation (not
    /// the posture) alive, so its address is never reused while compared.
    posture: Weak<HostPosture>,
    route: Arc<str>,
    answer: Bytes,
}

/// Fewest entries before the first prune.
const PRUNE_FLOOR: usize = 1024;

impl AllowMemo {
    /// The answer kept for `host` on `route`, if built from this very posture.
    pub fn get(&self, host: &Arc<HostPosture>, route: &str) -> Option<Bytes> {
        let kept = self.kept.get(&host.id)?;
        (kept.posture.as_ptr() == Arc::as_ptr(host) && &*kept.route == route)
            .then(|| kept.answer.clone())
    }

    /// Keeps `answer` for `host` on `route`. The first route kept for a
    /// posture stays until the posture changes.
    pub fn keep(&self, host: &Arc<HostPosture>, route: &Arc<str>, answer: Bytes) {
        let kept = Kept {
            posture: Arc::downgrade(host),
            route: Arc::clone(route),
            answer,
        };
        match self.kept.entry(host.id) {
            Entry::Occupied(e) if e.get().posture.as_ptr() == Arc::as_ptr(host) => {}
            Entry::Occupied(mut e) => {
                e.insert(kept);
            }
            Entry::Vacant(v) => {
                v.insert(kept);
                self.prune();
            }
        }
    }

    /// Hosts kept.
    pub fn len(&self) -> usize {
        self.kept.len()
    }

    /// True when nothing is kept.
    pub fn is_empty(&self) -> bool {
        self.kept.is_empty()
    }

    /// Drops entries of hosts that left the store, once the map doubles.
    fn prune(&self) {
        let len = self.kept.len();
        if len < self.prune_at.load(Ordering::Relaxed).max(PRUNE_FLOOR) {
            return;
        }
        self.kept.retain(|_, k| k.posture.strong_count() > 0);
        self.prune_at.store(2 * self.kept.len(), Ordering::Relaxed);
    }
}

/// The encode side of the service's codec.
#[derive(Debug, Clone, PartialEq)]
#[allow(
    clippy::large_enum_variant,
    reason = "moved once per Check; boxing would add an allocation to every built answer"
)]
pub enum Answer {
    Built(CheckResponse),
    /// A `CheckResponse`, already protobuf-encoded.
    Encoded(Bytes),
}

impl Answer {
    /// The answer as a message (decoding a kept one).
    pub fn into_response(self) -> Result<CheckResponse, DecodeError> {
        match self {
            Self::Built(response) => Ok(response),
            Self::Encoded(bytes) => CheckResponse::decode(bytes),
        }
    }
}

impl Message for Answer {
    fn encode_raw(&self, buf: &mut impl BufMut) {
        match self {
            Self::Built(response) => response.encode_raw(buf),
            Self::Encoded(bytes) => buf.put_slice(bytes),
        }
    }

    /// Answers are only sent, never received: any field is skipped.
    fn merge_field(
        &mut self,
        tag: u32,
        wire_type: WireType,
        buf: &mut impl Buf,
        ctx: DecodeContext,
    ) -> Result<(), DecodeError> {
        prost::encoding::skip_field(wire_type, tag, buf, ctx)
    }

    fn encoded_len(&self) -> usize {
        match self {
            Self::Built(response) => response.encoded_len(),
            Self::Encoded(bytes) => bytes.len(),
        }
    }

    fn clear(&mut self) {
        *self = Self::Encoded(Bytes::new());
    }
}

#[cfg(test)]
mod tests {
    use envoy_types::pb::google::rpc;

    use super::*;

    #[test]
    fn a_kept_answer_goes_out_byte_for_byte_as_the_built_one() {
        let response = CheckResponse {
            status: Some(rpc::Status {
                code: 7,
                message: "denied".into(),
                ..Default::default()
            }),
            ..Default::default()
        };
        let built = Answer::Built(response.clone());
        let kept = Answer::Encoded(Bytes::from(response.encode_to_vec()));
        assert_eq!(built.encoded_len(), kept.encoded_len());
        assert_eq!(built.encode_to_vec(), kept.encode_to_vec());
        assert_eq!(kept.into_response().unwrap(), response);
        let mut cleared = built;
        cleared.clear();
        assert_eq!(cleared.encoded_len(), 0);
    }

    #[test]
    fn a_kept_answer_serves_only_its_posture_and_first_route() {
        let memo = AllowMemo::default();
        let v1 = Arc::new(HostPosture::new(1, "Anna"));
        let (default, mac): (Arc<str>, Arc<str>) = ("default".into(), "mac".into());
        memo.keep(&v1, &default, Bytes::from_static(b"one"));
        memo.keep(&v1, &mac, Bytes::from_static(b"two"));
        assert_eq!(memo.get(&v1, "default"), Some(Bytes::from_static(b"one")));
        assert_eq!(memo.get(&v1, "mac"), None, "first route wins");
        // The same host with a new posture (equal content, new Arc) misses.
        let v2 = Arc::new(HostPosture::new(1, "Anna"));
        assert_eq!(memo.get(&v2, "default"), None);
        memo.keep(&v2, &mac, Bytes::from_static(b"three"));
        assert_eq!(memo.get(&v2, "mac"), Some(Bytes::from_static(b"three")));
        assert_eq!(memo.get(&v1, "default"), None);
        assert_eq!(memo.len(), 1);
    }

    #[test]
    fn hosts_that_left_the_store_are_pruned() {
        let memo = AllowMemo::default();
        let route: Arc<str> = "r".into();
        let live: Vec<_> = (0..10)
            .map(|id| Arc::new(HostPosture::new(id, "live")))
            .collect();
        for h in &live {
            memo.keep(h, &route, Bytes::new());
        }
        for id in 10..(PRUNE_FLOOR as u64 + 10) {
            memo.keep(
                &Arc::new(HostPosture::new(id, "gone")),
                &route,
                Bytes::new(),
            );
        }
        assert!(memo.len() < PRUNE_FLOOR, "{}", memo.len());
        assert!(live.iter().all(|h| memo.get(h, "r").is_some()));
    }
}
