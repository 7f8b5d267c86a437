//! The posture file (YAML or JSON, chosen by the selector byte's low bit).
//!
//! Must hold: the parser returns `Err`, never panics; what loads has unique
//! host ids, no fingerprint on two hosts, and each host's policies sorted
//! by id without repeats.

#![no_main]

mod common;

use std::collections::HashSet;

use common::{NOW, selector_and_text};
use fleet_authz::{input, posture};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((selector, text)) = selector_and_text(data, input::MAX_POSTURE_BYTES) else {
        return;
    };
    let Ok(file) = posture::parse_posture_file(&text, selector & 1 == 1, NOW) else {
        return;
    };
    let mut ids = HashSet::new();
    let mut fingerprints = HashSet::new();
    for host in &file.hosts {
        assert!(ids.insert(host.id), "host {:?} twice", host.id);
        for fp in &host.fingerprints {
            assert!(fingerprints.insert(*fp), "fingerprint {fp} on two hosts");
        }
        let policy_ids: Vec<u64> = host.policies.iter().map(|p| p.meta.id).collect();
        assert!(policy_ids.windows(2).all(|w| w[0] < w[1]), "{policy_ids:?}");
    }
});
