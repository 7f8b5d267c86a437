#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Helpers for the `ops_*` integration tests: device certificates, a posture
//! and policy in a temp dir, a config pointing at them, and small clients for
//! Checks, HTTP and metrics.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
};

use envoy_types::pb::envoy::service::auth::v3::{
    CheckResponse, authorization_client::AuthorizationClient,
};
use fleet_authz::{authz::request::build_check_request, config::Config, fingerprint::Fingerprint};
use tempfile::TempDir;

use super::certs::{Leaf, TestPki};
use super::server::{LISTEN_ANY, Verdict, channel, config, install_crypto_provider};

/// A device certificate and its SHA-1.
#[derive(Debug, Clone)]
pub struct Device {
    pub pem: String,
    pub sha1: Fingerprint,
}

impl From<Leaf> for Device {
    fn from(leaf: Leaf) -> Self {
        Self {
            pem: leaf.cert_pem,
            sha1: leaf.fingerprint,
        }
    }
}

/// The policy every ops test starts from: the default route denies failing
/// critical policies; route `payroll` denies any failing policy.
pub const POLICY: &str = "version: 1
defaults:
  mode: enforce
  unknown_device: deny
  stale_posture: deny
  deny:
    failing_critical_policy: true
routes:
  - name: payroll
    match: {context: {app: payroll}}
    deny:
      failing_any_policy: true
break_glass: {max_duration: 4h}
";

/// Host 101 (`good`) passes the critical policy and fails a minor one;
/// host 102 (`bad`) fails the critical policy. `unknown` is held by nobody.
pub struct Env {
    pub dir: TempDir,
    pub policy: PathBuf,
    pub posture: PathBuf,
    pub good: Device,
    pub bad: Device,
    pub unknown: Device,
}

impl Env {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let pki = TestPki::new();
        let (good, bad, unknown) = (
            Device::from(pki.device("good.device")),
            Device::from(pki.device("bad.device")),
            Device::from(pki.device("unknown.device")),
        );
        let policy = dir.path().join("policy.yaml");
        let posture = dir.path().join("posture.yaml");
        std::fs::write(&policy, POLICY).unwrap();
        std::fs::write(&posture, posture_yaml(&good.sha1, &bad.sha1)).unwrap();
        Self {
            dir,
            policy,
            posture,
            good,
            bad,
            unknown,
        }
    }

    /// A config serving this env on port 0, with `extra` YAML appended.
    pub fn config(&self, extra: &str) -> Config {
        self.config_with_policy(&self.policy, extra)
    }

    pub fn config_with_policy(&self, policy: &Path, extra: &str) -> Config {
        let yaml = format!(
            "{LISTEN_ANY}posture_file: {}\npolicy_file: {}\n{extra}",
            self.posture.display(),
            policy.display()
        );
        config(&yaml, self.dir.path())
    }

    /// Writes an admin token file and returns its path.
    pub fn token_file(&self, token: &str) -> PathBuf {
        let path = self.dir.path().join("admin-token");
        std::fs::write(&path, format!("{token}\n")).unwrap();
        path
    }
}

pub fn posture_yaml(good: &Fingerprint, bad: &Fingerprint) -> String {
    format!(
        "policies:
  - {{id: 12, name: Gatekeeper enabled, critical: true, resolution: Turn Gatekeeper on.}}
  - {{id: 21, name: Screen lock, critical: false}}
hosts:
  - id: 101
    display_name: Good Mac
    team: Workstations
    platform: darwin
    last_seen_ago: 5m
    policies: {{12: pass, 21: fail}}
    fingerprints: [{good}]
  - id: 102
    display_name: Bad Laptop
    team: Workstations
    platform: windows
    last_seen_ago: 5m
    policies: {{12: fail, 21: pass}}
    fingerprints: [{bad}]
"
    )
}

/// Sends one Check for `pem` with `context_extensions`.
pub async fn check(addr: SocketAddr, pem: &str, context: &[(&str, &str)]) -> CheckResponse {
    let mut client = AuthorizationClient::new(channel(addr).await);
    check_with(&mut client, pem, context).await
}

pub async fn check_with(
    client: &mut AuthorizationClient<tonic::transport::Channel>,
    pem: &str,
    context: &[(&str, &str)],
) -> CheckResponse {
    let context: Vec<(String, String)> = context
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    let request = build_check_request(pem, &context, "app.example.com", "/", false);
    client.check(request).await.unwrap().into_inner()
}

/// True when the Check answered allow (google.rpc.Code OK).
pub fn allowed(response: &CheckResponse) -> bool {
    response.status.as_ref().map(|s| s.code) == Some(0)
}

/// Reason kinds of a deny (`x-fleet-authz-reason`), or "" for an allow.
pub fn reason_header(response: &CheckResponse) -> String {
    Verdict::of(response).reasons().to_owned()
}

pub fn http_client() -> reqwest::Client {
    install_crypto_provider();
    reqwest::Client::builder().build().unwrap()
}

/// One HTTP request; returns the status and the body text.
pub async fn http(
    method: reqwest::Method,
    addr: SocketAddr,
    path: &str,
    token: Option<&str>,
    body: Option<serde_json::Value>,
) -> (u16, String) {
    let mut request = http_client().request(method, format!("http://{addr}{path}"));
    if let Some(t) = token {
        request = request.bearer_auth(t);
    }
    if let Some(b) = body {
        request = request.json(&b);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.text().await.unwrap())
}

pub async fn get(addr: SocketAddr, path: &str, token: Option<&str>) -> (u16, String) {
    http(reqwest::Method::GET, addr, path, token, None).await
}

/// Parses a JSON body.
pub fn json(body: &str) -> serde_json::Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"))
}

/// `/metrics` text.
pub async fn scrape(addr: SocketAddr) -> String {
    let (status, body) = get(addr, "/metrics", None).await;
    assert_eq!(status, 200);
    body
}

/// The value of the sample named exactly `series` (name plus labels as
/// exposed), or 0 when absent.
pub fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|line| {
            let rest = line.strip_prefix(series)?;
            let value = rest.strip_prefix(' ')?;
            Some(value.split_whitespace().next()?.parse::<f64>().unwrap())
        })
        .unwrap_or(0.0)
}

/// A log writer a test can read back: give `move || captured.clone()` to a
/// fmt layer as its writer.
#[derive(Clone, Default)]
pub struct Captured(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    /// Everything written so far, as text.
    pub fn text(&self) -> String {
        String::from_utf8(self.0.lock().unwrap().clone()).unwrap()
    }

    /// Everything written so far, line by line.
    pub fn lines(&self) -> Vec<String> {
        self.text().lines().map(str::to_owned).collect()
    }
}
