//! Inputs the fuzz targets (`fuzz/`) found, replayed through the same code
//! with what must happen to each. The inputs are under tests/fixtures/fuzz/.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "tests: a failure panics the test"
)]

use std::path::Path;

use envoy_types::pb::envoy::service::auth::v3::CheckRequest as FullCheckRequest;
use fleet_authz::authz::wire;
use prost::Message as _;

fn fixture(target: &str, name: &str) -> Vec<u8> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/fuzz")
        .join(target)
        .join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// `check_request`: `source.labels` (a map, field 3 of the Peer) sent with
/// the fixed64 wire type. prost's generated decoder reads a map field as
/// length-delimited whatever its wire type, so it takes the next bytes as a
/// length and accepts the message; the lean decoder does not know field 3,
/// skips it by its wire type as the protobuf spec says, and refuses the
/// truncated field after it. Refusing is the right answer (the Check then
/// fails as an RPC error and Envoy fails closed); the fuzz target now
/// compares the two decoders on well-formed encodings only.
#[test]
fn a_map_field_sent_as_fixed64_is_refused_by_the_lean_decoder() {
    let bytes = fixture("check_request", "map-field-as-fixed64");
    let err = wire::CheckRequest::decode(bytes.as_slice()).unwrap_err();
    assert!(
        err.to_string().contains("buffer underflow"),
        "lean decoder: {err}"
    );
    assert!(
        FullCheckRequest::decode(bytes.as_slice()).is_ok(),
        "prost's map decoding still ignores the wire type; if it now refuses, \
         the fuzz target can compare the raw bytes again"
    );
}
