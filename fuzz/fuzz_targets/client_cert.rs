//! Certificate encodings: URL-encoded PEM (the peer certificate and custom
//! headers) and the RFC 9440 `client-cert` byte sequence.
//!
//! Must hold: a present source yields a certificate from that source or an
//! `invalid` error naming it, never `Missing` and never the XFCC sent
//! beside it; whatever decodes is DER that re-encodes and decodes to the
//! same bytes.

#![no_main]

mod common;

use base64::Engine as _;
use common::{GOOD_URL_PEM, Sent};
use fleet_authz::{
    authz::request::url_encode_pem,
    identity::{
        self, CLIENT_CERT_HEADER, IdentityConfig, IdentityError, Source, XFCC_HEADER, XfccElement,
    },
};
use libfuzzer_sys::fuzz_target;

const CUSTOM: &str = "x-ssl-client-cert";
const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

fuzz_target!(|data: &[u8]| {
    let Some((&selector, value)) = data.split_first() else {
        return;
    };
    let source = match selector % 3 {
        0 => Source::PeerCertificate,
        1 => Source::ClientCert,
        _ => Source::Header(CUSTOM.to_owned()),
    };
    let cfg = IdentityConfig {
        sources: vec![source.clone(), Source::Xfcc],
        xfcc_element: XfccElement::Only,
    };
    let xfcc = format!("Cert=\"{}\"", *GOOD_URL_PEM);
    let mut headers = Sent(vec![(XFCC_HEADER, xfcc.as_bytes())]);
    let peer: &[u8] = match &source {
        Source::PeerCertificate => value,
        Source::ClientCert => {
            headers.0.push((CLIENT_CERT_HEADER, value));
            b""
        }
        _ => {
            headers.0.push((CUSTOM, value));
            b""
        }
    };
    let present = !(source == Source::PeerCertificate && value.is_empty());
    match identity::identify(&cfg, peer, &headers) {
        Ok(cert) if present => assert_eq!(cert.source, source, "the present source decides"),
        Ok(cert) => assert_eq!(cert.source, Source::Xfcc),
        Err(IdentityError::Missing) => panic!("XFCC is always there, so never Missing"),
        Err(IdentityError::Invalid { origin, problem }) => {
            assert!(present, "an empty peer certificate is absent: {problem}");
            assert_eq!(origin, Some(source.clone()));
        }
    }
    let Ok(text) = std::str::from_utf8(value) else {
        return;
    };
    if let Ok(der) = identity::url_pem_to_der(text) {
        assert_eq!(der.first(), Some(&0x30), "a DER SEQUENCE");
        assert_eq!(
            identity::url_pem_to_der(&url_encode_pem(&pem(&der))),
            Ok(der)
        );
    }
    if let Ok(der) = identity::client_cert_header_to_der(text) {
        assert_eq!(der.first(), Some(&0x30), "a DER SEQUENCE");
        let again = format!(":{}:", B64.encode(&der));
        assert_eq!(identity::client_cert_header_to_der(&again), Ok(der));
    }
});

/// `der` as a PEM certificate block with 64-column lines.
fn pem(der: &[u8]) -> String {
    let body = B64.encode(der);
    let mut out = String::from("-----BEGIN CERTIFICATE-----\n");
    for line in body.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).unwrap_or_default());
        out.push('\n');
    }
    out.push_str("-----END CERTIFICATE-----\n");
    out
}
