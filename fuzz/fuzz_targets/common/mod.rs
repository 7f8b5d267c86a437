//! What several targets share: raw header values as a client sends them,
//! and one real certificate to plant beside a fuzzed source.

#![allow(dead_code, reason = "each target uses part of this")]

use std::sync::LazyLock;

use fleet_authz::identity::{self, Headers};

/// Headers as raw bytes, later entries winning, as Envoy's map does.
pub struct Sent<'a>(pub Vec<(&'a str, &'a [u8])>);

impl Headers for Sent<'_> {
    fn header_bytes(&self, name: &str) -> Option<&[u8]> {
        self.0
            .iter()
            .rev()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| *v)
    }
}

/// The URL-encoded PEM of tests/fixtures/xfcc/client.pem.
pub static GOOD_URL_PEM: LazyLock<String> = LazyLock::new(|| {
    fleet_authz::authz::request::url_encode_pem(include_str!(
        "../../../tests/fixtures/xfcc/client.pem"
    ))
});

/// Its DER bytes.
pub static GOOD_DER: LazyLock<Vec<u8>> = LazyLock::new(|| {
    identity::url_pem_to_der(&GOOD_URL_PEM).unwrap_or_else(|e| panic!("fixture: {e}"))
});

/// The RFC 9440 `client-cert` value of the same certificate.
pub static GOOD_CLIENT_CERT: LazyLock<String> = LazyLock::new(|| {
    use base64::Engine as _;
    format!(
        ":{}:",
        base64::engine::general_purpose::STANDARD.encode(&*GOOD_DER)
    )
});

/// The XFCC element to trust, from one selector byte.
pub fn element(selector: u8) -> identity::XfccElement {
    match selector % 3 {
        0 => identity::XfccElement::Only,
        1 => identity::XfccElement::First,
        _ => identity::XfccElement::Last,
    }
}

/// One device with a failing critical policy, a team and a CVE, for
/// evaluating fuzzed policies against.
pub static HOST: LazyLock<fleet_authz::posture::HostPosture> = LazyLock::new(|| {
    let text = "policies:\n  - {id: 12, name: Disk encryption, critical: true}\n\
        hosts:\n  - {id: 1, uuid: u-1, display_name: Anna, team: Admins, platform: darwin, \
        os_version: '14.1', last_seen_ago: 5m, policies: {12: fail}, cves: [CVE-2024-1234]}\n";
    let file = fleet_authz::posture::parse_posture_file(text, false, NOW)
        .unwrap_or_else(|e| panic!("fixture: {e}"));
    file.hosts
        .into_iter()
        .next()
        .unwrap_or_else(|| panic!("fixture: no host"))
});

/// A fixed "now", so every run of an input does the same.
pub const NOW: std::time::SystemTime = std::time::SystemTime::UNIX_EPOCH;

/// Splits a selector byte off `data` and reads the rest as text, as a file
/// of at most `max` bytes is read.
pub fn selector_and_text(data: &[u8], max: u64) -> Option<(u8, String)> {
    let (&selector, rest) = data.split_first()?;
    fleet_authz::input::read_text_bounded(rest, max)
        .ok()
        .map(|text| (selector, text))
}
