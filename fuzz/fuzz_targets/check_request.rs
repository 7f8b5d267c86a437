//! The lean `CheckRequest` decoder (`authz/wire.rs`) against the full
//! generated one.
//!
//! Must hold: bytes the lean decoder accepts re-encode and decode to the
//! same message; whatever the full envoy-types decoder accepts, encoded as
//! Envoy would encode it, the lean decoder accepts too, and every fact a
//! decision reads (headers, host, path, request id, certificate, context
//! extensions, identity) is the same.
//!
//! The two are not compared on the raw bytes: prost's map decoding does not
//! check the wire type, so the full decoder reads some malformed input
//! (a map field sent as fixed64) that the lean one, skipping the field by
//! its wire type, rightly refuses (the first finding of this target).

#![no_main]

use std::collections::HashSet;

use envoy_types::pb::envoy::service::auth::v3::CheckRequest as FullCheckRequest;
use fleet_authz::{
    authz::{convert::CheckFacts, wire},
    identity::{self, IdentityConfig},
};
use libfuzzer_sys::fuzz_target;
use prost::Message as _;

fuzz_target!(|data: &[u8]| {
    let lean = wire::CheckRequest::decode(data);
    if let Ok(lean) = &lean {
        let again = wire::CheckRequest::decode(lean.encode_to_vec().as_slice());
        assert_eq!(again.as_ref(), Ok(lean), "lean round trip");
    }
    let Ok(full) = FullCheckRequest::decode(data) else {
        return;
    };
    let canonical = full.encode_to_vec();
    let lean = wire::CheckRequest::decode(canonical.as_slice())
        .unwrap_or_else(|e| panic!("full decoder accepts, lean refuses: {e}"));
    let (a, b) = (
        CheckFacts::from_request(&full),
        CheckFacts::from_lean(&lean),
    );
    assert_eq!(a.authority, b.authority);
    assert_eq!(a.path, b.path);
    assert_eq!(a.request_id, b.request_id);
    assert_eq!(a.peer_certificate, b.peer_certificate);
    assert_eq!(a.context, b.context);
    let map = full
        .attributes
        .as_ref()
        .and_then(|a| a.request.as_ref())
        .and_then(|r| r.http.as_ref())
        .map(|h| &h.headers);
    let list = lean
        .attributes
        .as_ref()
        .and_then(|a| a.request.as_ref())
        .and_then(|r| r.http.as_ref())
        .map_or(&[][..], |h| &h.headers[..]);
    let names: HashSet<&[u8]> = list.iter().map(|h| &h.key[..]).collect();
    assert_eq!(names.len(), map.map_or(0, |m| m.len()), "same header names");
    for (name, value) in map.into_iter().flatten() {
        assert_eq!(b.headers.get_bytes(name), Some(value.as_bytes()), "{name}");
    }
    let cfg = IdentityConfig::default();
    assert_eq!(
        identity::identify(&cfg, a.peer_certificate, &a.headers),
        identity::identify(&cfg, b.peer_certificate, &b.headers),
        "the same identity from both"
    );
});
