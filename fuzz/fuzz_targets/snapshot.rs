//! The posture snapshot file (`fleet/snapshot.rs`), read at start-up from
//! disk (or, in cluster mode, from the object store).
//!
//! Must hold: decoding returns `Err`, never panics; what decodes encodes
//! back to bytes that decode to the same hosts and sync time.

#![no_main]

use fleet_authz::fleet::snapshot;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(loaded) = snapshot::decode(data) else {
        return;
    };
    let bytes = snapshot::encode(&loaded.hosts, loaded.synced_at);
    let again = snapshot::decode(&bytes).unwrap_or_else(|e| panic!("own encoding: {e:?}"));
    assert_eq!(again, loaded, "snapshot round trip");
});
