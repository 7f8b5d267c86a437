//! `x-forwarded-client-cert`: the scanner, the choice of element, and
//! identity as the Check path runs it (uncached and through the cache).
//!
//! Must hold: a present XFCC value yields a certificate from XFCC or an
//! `invalid` error, never `Missing` and never the `client-cert` header sent
//! beside it; the element parser and the certificate picker agree; the cache
//! answers as the uncached path does, on a miss and on a hit.

#![no_main]

mod common;

use common::{GOOD_CLIENT_CERT, Sent, element};
use fleet_authz::{
    fingerprint::Fingerprint,
    identity::{
        self, CLIENT_CERT_HEADER, FingerprintCache, IdentityConfig, IdentityError, Source,
        XFCC_HEADER, XfccElement,
    },
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&selector, value)) = data.split_first() else {
        return;
    };
    let cfg = IdentityConfig {
        sources: vec![Source::Xfcc, Source::ClientCert],
        xfcc_element: element(selector),
    };
    let headers = Sent(vec![
        (XFCC_HEADER, value),
        (CLIENT_CERT_HEADER, GOOD_CLIENT_CERT.as_bytes()),
    ]);
    let found = identity::identify(&cfg, b"", &headers);
    match &found {
        Ok(cert) => {
            assert_eq!(cert.source, Source::Xfcc, "a present XFCC decides");
            assert_eq!(cert.sha1, Fingerprint::of_der(&cert.der));
        }
        Err(IdentityError::Missing) => panic!("a present XFCC value read as absent"),
        Err(IdentityError::Invalid { origin, .. }) => {
            assert_eq!(origin.as_ref(), Some(&Source::Xfcc), "{found:?}");
        }
    }
    if let Ok(text) = std::str::from_utf8(value) {
        parser_and_picker_agree(text, cfg.xfcc_element);
    }
    // A small cache, so values evict each other across its budget.
    let cache = FingerprintCache::with_budget(2, 512);
    let expected = found.map(|c| c.sha1);
    assert_eq!(cache.fingerprint(&cfg, b"", &headers), expected, "miss");
    assert_eq!(cache.fingerprint(&cfg, b"", &headers), expected, "hit");
});

/// `parse_xfcc` and `xfcc_certificate` scan the same grammar: a certificate
/// found means the elements parse and the chosen one has exactly that Cert.
fn parser_and_picker_agree(text: &str, choice: XfccElement) {
    let picked = identity::xfcc_certificate(text, choice);
    let parsed = identity::parse_xfcc(text);
    let Ok(der) = picked else {
        return;
    };
    let elements = parsed.unwrap_or_else(|e| panic!("picker found a cert, parser says {e}"));
    let chosen = match choice {
        XfccElement::Only => {
            assert_eq!(elements.len(), 1, "only: one element");
            &elements[0]
        }
        XfccElement::First => &elements[0],
        XfccElement::Last => &elements[elements.len() - 1],
    };
    let certs: Vec<&String> = chosen
        .iter()
        .filter(|(k, _)| k.eq_ignore_ascii_case("cert"))
        .map(|(_, v)| v)
        .collect();
    assert_eq!(certs.len(), 1, "one Cert key in the chosen element");
    assert_eq!(identity::url_pem_to_der(certs[0]).ok(), Some(der));
}
