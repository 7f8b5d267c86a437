//! The policy file: the bounded read (`input::read_text_bounded`), the
//! alias refusal and `parse_policy`, then routing and evaluation of what
//! loaded.
//!
//! Must hold: the bounded read returns the bytes exactly when they are
//! UTF-8 within the limit and refuses anything longer; the loader returns
//! `Err`, never panics; a policy that loads has no YAML alias, and no route
//! of it allows a request without a readable certificate.

#![no_main]

mod common;

use std::{collections::HashMap, path::Path, time::Duration};

use common::{HOST, NOW};
use fleet_authz::{
    input,
    policy::{self, RequestFacts, Subject},
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    bounded_read_is_exact(rest, u64::from(selector) * 8);
    let Ok(text) = input::read_text_bounded(rest, input::MAX_POLICY_BYTES) else {
        return;
    };
    let Ok(policy) = policy::parse_policy(&text, Path::new("fuzz.yaml")) else {
        return;
    };
    assert_eq!(input::refuse_aliases(&text), Ok(()), "loaded with an alias");
    let context = HashMap::from([("route".to_owned(), "admin".to_owned())]);
    let facts = RequestFacts {
        context: &context,
        authority: "app.example.com:443",
        path: "/admin/x",
        posture_age: Some(Duration::from_secs(600)),
        max_staleness: Some(Duration::from_secs(300)),
    };
    let chosen = policy.route(&facts);
    let _ = policy::evaluate(chosen, &facts, Subject::Host(&HOST), NOW);
    let _ = policy::evaluate(chosen, &facts, Subject::Unknown, NOW);
    let _ = policy.cves();
    for route in std::iter::once(&policy.default).chain(policy.routes.iter().map(|(_, r)| r)) {
        for subject in [
            Subject::NoCertificate("none"),
            Subject::InvalidCertificate("bad"),
        ] {
            let decision = policy::evaluate(route, &facts, subject, NOW);
            assert!(
                !decision.allowed,
                "{}: allowed without a certificate",
                route.name
            );
        }
    }
});

fn bounded_read_is_exact(bytes: &[u8], max: u64) {
    let read = input::read_text_bounded(bytes, max);
    let fits = bytes.len() as u64 <= max;
    match read {
        Ok(text) => assert!(fits && text.as_bytes() == bytes),
        Err(_) => assert!(!fits || std::str::from_utf8(bytes).is_err()),
    }
}
