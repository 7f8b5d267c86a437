//! What the load runs send and what the server holds: 1,000 distinct device
//! certificates (RSA-2048, ~0.9 KB DER, issued once by the demo CA and cached
//! under `target/load/`), the Check request for each (XFCC, 10 headers, a
//! path), pre-encoded, and a store of 100,000 hosts on which the devices'
//! real fingerprints sit (1 in 20 of them on a host failing a critical
//! policy, so 5% of Checks are denies with a JSON body).

use std::{
    path::{Path, PathBuf},
    sync::Arc,
    time::SystemTime,
};

use anyhow::Context;

use crate::{
    certs::{Ca, DeviceSpec},
    synthetic,
};
use envoy_types::pb::envoy::service::auth::v3::CheckRequest;
use fleet_authz::{
    authz::request::{build_check_request, url_encode_pem},
    fingerprint::Fingerprint,
    identity::url_pem_to_der,
    posture::{HostPosture, PolicyMeta, Team},
};
use prost::{Message, bytes::Bytes};

/// The policy both the in-process bench and the load server use.
pub use crate::synthetic::POLICY;

/// Every `DENY_EVERY`-th device sits on a host failing a critical policy.
pub const DENY_EVERY: usize = 20;

/// `<target>/load`, created on demand.
pub fn work_dir() -> anyhow::Result<PathBuf> {
    let dir = crate::tools::target_dir().join("load");
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    Ok(dir)
}

/// The device certificates (PEM), generated on first use and then reused, so
/// every process of a run (and every run) sees the same fingerprints. The
/// demo CA issues them, so they chain to `deploy/demo/certs/ca.pem`.
pub fn device_pems(count: usize) -> anyhow::Result<Vec<String>> {
    let path = work_dir()?.join(format!("devices-{count}.pem"));
    if let Ok(text) = std::fs::read_to_string(&path) {
        let pems = split_pems(&text);
        if pems.len() == count {
            return Ok(pems);
        }
    }
    let ca = Ca::demo();
    // One RSA-2048 subject key for all devices: generating 1,000 RSA keys
    // would take minutes and the fingerprint covers the whole certificate
    // (serial, subject, SANs), so the certificates are still all distinct.
    let key =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/demo/certs/device-compliant-key.pem");
    let key_pem =
        std::fs::read_to_string(&key).with_context(|| format!("cannot read {}", key.display()))?;
    let pems: Vec<String> = (0..count)
        .map(|i| {
            let spec = DeviceSpec {
                common_name: format!("load device {i:04}"),
                organization: Some("fleet-authz load test".to_owned()),
                uri: Some(format!("urn:uuid:5f0c7c4e-2d0b-4c4e-9a58-{i:012}")),
                serial: Some(i as u64 + 1),
                key_pem: Some(key_pem.clone()),
                client_auth: false,
            };
            ca.device_with(&spec).cert_pem
        })
        .collect();
    std::fs::write(&path, pems.concat())?;
    Ok(pems)
}

fn split_pems(text: &str) -> Vec<String> {
    const END: &str = "-----END CERTIFICATE-----";
    text.split_inclusive(END)
        .map(str::trim)
        .filter(|p| p.ends_with(END))
        .map(|p| format!("{p}\n"))
        .collect()
}

/// SHA-1 of each certificate, as fleet-authz computes it.
pub fn fingerprints(pems: &[String]) -> anyhow::Result<Vec<Fingerprint>> {
    pems.iter()
        .map(|p| Ok(Fingerprint::of_der(&url_pem_to_der(p)?)))
        .collect()
}

/// The host that holds device `i`'s certificate: `100 i + 1` (passing), or
/// `100 i + 20` (failing: ids divisible by 20 fail a critical policy).
pub fn host_of_device(i: usize) -> u64 {
    let base = 100 * i as u64;
    if i % DENY_EVERY == DENY_EVERY - 1 {
        base + 20
    } else {
        base + 1
    }
}

/// `count` hosts with 3 fingerprints and 20 policy results each; the
/// devices' real fingerprints replace the first synthetic one of their host.
pub fn hosts(count: u64, devices: &[Fingerprint]) -> Vec<HostPosture> {
    let metas: Vec<Arc<PolicyMeta>> = (0..20u64)
        .map(|i| {
            let fix = (i == 0).then(|| Arc::from("Turn on Gatekeeper."));
            PolicyMeta::new(i + 1, format!("policy {i}"), i == 0, fix)
        })
        .collect();
    let team = Team {
        id: Some(1),
        name: Arc::from("Workstations"),
    };
    let now = SystemTime::now();
    let mut hosts: Vec<HostPosture> = (1..=count)
        .map(|id| {
            let mut h = synthetic::host(id, &metas, &team, now, id % 20 == 0);
            h.uuid = format!("5f0c7c4e-2d0b-4c4e-9a58-{id:012}");
            h
        })
        .collect();
    for (i, fp) in devices.iter().enumerate() {
        if let Some(h) = hosts.get_mut(host_of_device(i) as usize - 1) {
            h.fingerprints[0] = *fp;
        }
    }
    hosts
}

/// Request headers besides `:authority`, `:path`, `:method`, `x-request-id`
/// and XFCC (10 in all), as a browser behind Envoy sends them.
pub const EXTRA_HEADERS: [(&str, &str); 6] = [
    (
        "user-agent",
        "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_5) AppleWebKit/605.1.15",
    ),
    ("accept", "application/json, text/plain, */*"),
    ("accept-encoding", "gzip, deflate, br"),
    ("accept-language", "en-GB,en;q=0.9"),
    ("x-forwarded-proto", "https"),
    ("x-forwarded-for", "10.20.30.40"),
];

/// The Check request Envoy sends for device `i` (certificate in XFCC).
pub fn check_request(pem: &str, i: usize) -> CheckRequest {
    let mut req = build_check_request(pem, &[], "app.example.com", "/reports/q3", true);
    if let Some(http) = req
        .attributes
        .as_mut()
        .and_then(|a| a.request.as_mut())
        .and_then(|r| r.http.as_mut())
    {
        let id = format!("4f1c2b7e-1d2a-4b8e-9c1e-{i:012}");
        for (k, v) in EXTRA_HEADERS {
            http.headers.insert(k.into(), v.into());
        }
        http.headers.insert("x-request-id".into(), id.clone());
        http.id = id;
    }
    req
}

/// Every device's Check request, protobuf-encoded once.
pub fn encoded_requests(pems: &[String]) -> Vec<Bytes> {
    pems.iter()
        .enumerate()
        .map(|(i, p)| Bytes::from(check_request(p, i).encode_to_vec()))
        .collect()
}

/// The plain-HTTP request a client sends to Envoy for device `i`, with the
/// XFCC header Envoy forwards as is (`ALWAYS_FORWARD_ONLY`).
pub fn http_request(pem: &str) -> Bytes {
    let mut text = String::from("GET /reports/q3 HTTP/1.1\r\nhost: app.example.com\r\n");
    for (k, v) in EXTRA_HEADERS {
        text.push_str(&format!("{k}: {v}\r\n"));
    }
    text.push_str(&format!(
        "x-forwarded-client-cert: Cert=\"{}\"\r\n\r\n",
        url_encode_pem(pem)
    ));
    Bytes::from(text)
}
