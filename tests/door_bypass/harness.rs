//! The stack of `door_bypass.rs`: fleet-authz with a bypass on its routes,
//! an echo app and a real Envoy, devices with their certificates, and the
//! requests a browser would send.

use std::time::Duration;

use fleet_authz::{bypass::TokenKey, config::Config, server::RunningServer};
use serde_json::Value;
use tempfile::TempDir;

use crate::common::{
    certs::{Leaf, TestPki},
    echo::Echo,
    envoy::{Envoy, EnvoyOptions},
};

pub const SCREEN_LOCK_FIX: &str =
    "Lock the screen after 5 minutes:\n1. Open System Settings\n2. Choose Lock Screen";
/// How long a bypass lasts here: short, so the test sees it run out.
pub const BYPASS_SECS: u64 = 3;

/// fleet-authz, an echo app and Envoy in front of both, and the devices.
pub struct Door {
    pub pki: TestPki,
    /// Host 3: fails only non-critical policy 34 (screen lock).
    pub cleo: Leaf,
    /// Host 2: fails critical policy 12 (Gatekeeper).
    pub ben: Leaf,
    /// Host 5: fails non-critical policy 34 too.
    pub eve: Leaf,
    pub envoy: Envoy,
    pub server: RunningServer,
    pub key: TokenKey,
    _echo: Echo,
    _dir: TempDir,
}

/// An answer as the client saw it, redirects not followed.
pub struct Reply {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub body: Value,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(|v| v.to_str().unwrap())
    }
}

impl Door {
    pub async fn start() -> Self {
        let pki = TestPki::new();
        let (cleo, ben, eve) = (pki.device("cleo"), pki.device("ben"), pki.device("eve"));
        let dir = tempfile::tempdir().unwrap();
        let key_path = dir.path().join("bypass.key");
        std::fs::write(&key_path, "0123456789abcdef0123456789abcdef-door-test\n").unwrap();
        let server = start_fleet_authz(&dir, &[&ben, &cleo, &eve]).await;
        let echo = Echo::start().await;
        let options = EnvoyOptions {
            http: Some(server.http_addr()),
            ..EnvoyOptions::new(server.grpc_addr(), echo.addr)
        };
        let envoy = Envoy::start(&pki, options).await;
        Self {
            pki,
            cleo,
            ben,
            eve,
            envoy,
            server,
            key: TokenKey::from_file(&key_path).unwrap(),
            _echo: echo,
            _dir: dir,
        }
    }

    /// A client with `device`'s certificate that does not follow redirects,
    /// so a test sees the 303 itself.
    pub fn client(&self, device: &Leaf) -> reqwest::Client {
        crate::common::server::install_crypto_provider();
        let identity = reqwest::Identity::from_pem(device.identity_pem().as_bytes()).unwrap();
        let ca = reqwest::Certificate::from_pem(self.pki.ca_pem.as_bytes()).unwrap();
        reqwest::Client::builder()
            .no_proxy()
            .tls_certs_only([ca])
            .identity(identity)
            .resolve("localhost", self.envoy.addr)
            .redirect(reqwest::redirect::Policy::none())
            .timeout(Duration::from_secs(10))
            .build()
            .unwrap()
    }

    pub async fn get(&self, device: &Leaf, path: &str, accept: &str) -> Reply {
        let response = self
            .client(device)
            .get(self.envoy.url(path))
            .header("accept", accept)
            .send()
            .await
            .unwrap();
        reply(response).await
    }

    /// The bypass form POSTed through Envoy as the deny page's browser would
    /// send it, with `origin` (None: none sent) and extra form fields.
    pub async fn post(&self, device: &Leaf, origin: Option<&str>, form: &[(&str, &str)]) -> Reply {
        let mut request = self
            .client(device)
            .post(self.envoy.url("/.fleet-authz/bypass"))
            .header("sec-fetch-site", "same-origin")
            .header("content-type", "application/x-www-form-urlencoded")
            .body(form_body(form));
        if let Some(origin) = origin {
            request = request.header("origin", origin);
        }
        reply(request.send().await.unwrap()).await
    }

    pub fn origin(&self) -> String {
        format!("https://localhost:{}", self.envoy.addr.port())
    }

    /// The page token of `device`'s current deny page on `/` (JSON body).
    pub async fn page_token(&self, device: &Leaf) -> String {
        let page = self.get(device, "/", "application/json").await;
        assert_eq!(page.status, 403, "{}", page.body);
        page.body["bypass"]["token"]
            .as_str()
            .unwrap_or_else(|| panic!("no bypass offered: {}", page.body))
            .to_owned()
    }

    /// Grants in force, from the admin API.
    pub async fn grants(&self) -> Vec<Value> {
        let url = format!("http://{}/v1/break-glass", self.server.http_addr());
        let body: Value = reqwest::get(url).await.unwrap().json().await.unwrap();
        body["grants"].as_array().unwrap().clone()
    }

    pub async fn metrics(&self) -> String {
        let url = format!("http://{}/metrics", self.server.http_addr());
        reqwest::get(url).await.unwrap().text().await.unwrap()
    }
}

/// `application/x-www-form-urlencoded`, as a browser encodes a form.
pub fn form_body(pairs: &[(&str, &str)]) -> String {
    let enc = |s: &str| {
        percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string()
    };
    pairs
        .iter()
        .map(|(k, v)| format!("{}={}", enc(k), enc(v)))
        .collect::<Vec<_>>()
        .join("&")
}

async fn reply(response: reqwest::Response) -> Reply {
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let text = response.text().await.unwrap();
    let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
    Reply {
        status,
        headers,
        body,
    }
}

async fn start_fleet_authz(dir: &TempDir, devices: &[&Leaf; 3]) -> RunningServer {
    let [ben, cleo, eve] = devices;
    let posture = format!(
        r#"
policies:
  - {{id: 12, name: Gatekeeper enabled, critical: true, resolution: "Turn Gatekeeper on."}}
  - {{id: 34, name: Screen lock after 5 minutes, critical: false, resolution: {fix:?}}}
hosts:
  - {{id: 2, display_name: "Ben's ThinkPad", last_seen_ago: 5m, policies: {{12: fail, 34: pass}}, fingerprints: [{ben}]}}
  - {{id: 3, display_name: "Cleo's MacBook", last_seen_ago: 5m, policies: {{12: pass, 34: fail}}, fingerprints: [{cleo}]}}
  - {{id: 5, display_name: "Eve's Laptop", last_seen_ago: 5m, policies: {{12: pass, 34: fail}}, fingerprints: [{eve}]}}
"#,
        fix = SCREEN_LOCK_FIX,
        ben = ben.fingerprint,
        cleo = cleo.fingerprint,
        eve = eve.fingerprint,
    );
    let policy = format!(
        r#"
version: 1
defaults:
  deny: {{failing_critical_policy: true, failing_any_policy: true}}
  bypass: {{duration: {BYPASS_SECS}s, max_per_day: 2}}
  deny_page: {{support_text: "IT help desk", support_url: "mailto:help@example.com"}}
routes:
  - name: wiki
    title: Team wiki
    match: {{path_prefix: /wiki}}
    grace: 72h
"#
    );
    let files = [("posture.yaml", posture), ("policy.yaml", policy)];
    for (name, text) in &files {
        std::fs::write(dir.path().join(name), text).unwrap();
    }
    let config = format!(
        "listen: {{grpc: \"127.0.0.1:0\", http: \"127.0.0.1:0\"}}\n\
posture_file: {d}/posture.yaml\npolicy_file: {d}/policy.yaml\n\
bypass: {{key_file: {d}/bypass.key}}\n",
        d = dir.path().display()
    );
    let config = Config::from_yaml(&config, "door.yaml".as_ref()).unwrap();
    let server = fleet_authz::server::start(config).await.unwrap();
    seen_failing_from_now(&server);
    server
}

/// Grace counts from when fleet-authz saw a failure start; failures already
/// there at its first publish get none. Publish every host passing, then as
/// the file has it, so the failures start now, as a running service sees them.
fn seen_failing_from_now(server: &RunningServer) {
    use fleet_authz::posture::{HostPosture, PolicyResponse};
    let store = &server.authorizer.store;
    let hosts: Vec<HostPosture> = store.all_hosts().iter().map(|h| (**h).clone()).collect();
    let passing = hosts
        .iter()
        .cloned()
        .map(|mut h| {
            h.policies
                .iter_mut()
                .for_each(|p| p.response = PolicyResponse::Pass);
            h
        })
        .collect();
    let now = std::time::SystemTime::now();
    store.replace_all(passing, now);
    store.replace_all(hosts, now);
}
