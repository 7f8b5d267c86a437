//! The person at the door, end to end (DESIGN.md §9): devices with real
//! certificates → a real Envoy running the shipped `envoy.yaml` → fleet-authz
//! (posture from a file) → an echo app. A device failing only a non-critical
//! policy takes a self-service bypass through Envoy and reaches the app until
//! the bypass runs out; everything that must be refused is refused with the
//! status §9 names and nothing stored; while a failing policy is inside its
//! `grace`, the app is told with `x-fleet-authz-warning`.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "tests: a failure panics the test"
)]

mod common;

use std::time::{Duration, Instant, SystemTime};

use common::{
    certs::{Leaf, TestPki},
    echo::Echo,
    envoy::{Envoy, EnvoyOptions},
};
use fleet_authz::{bypass::TokenKey, config::Config, server::RunningServer};
use serde_json::Value;
use tempfile::TempDir;

const SCREEN_LOCK_FIX: &str = "Lock the screen after 5 minutes:\n1. Open System Settings\n2. Choose Lock Screen";
/// How long a bypass lasts here: short, so the test sees it run out.
const BYPASS_SECS: u64 = 3;

/// fleet-authz, an echo app and Envoy in front of both, and the devices.
struct Door {
    pki: TestPki,
    /// Host 3: fails only non-critical policy 34 (screen lock).
    cleo: Leaf,
    /// Host 2: fails critical policy 12 (Gatekeeper).
    ben: Leaf,
    /// Host 5: fails non-critical policy 34 too.
    eve: Leaf,
    envoy: Envoy,
    server: RunningServer,
    key: TokenKey,
    _echo: Echo,
    _dir: TempDir,
}

/// An answer as the client saw it, redirects not followed.
struct Reply {
    status: u16,
    headers: reqwest::header::HeaderMap,
    body: Value,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(|v| v.to_str().unwrap())
    }
}

impl Door {
    async fn start() -> Self {
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
    fn client(&self, device: &Leaf) -> reqwest::Client {
        common::envoy::install_crypto_provider();
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

    async fn get(&self, device: &Leaf, path: &str, accept: &str) -> Reply {
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
    async fn post(&self, device: &Leaf, origin: Option<&str>, form: &[(&str, &str)]) -> Reply {
        let mut request = self
            .client(device)
            .post(self.envoy.url("/.fleet-authz/bypass"))
            .header("sec-fetch-site", "same-origin")
            .form(form);
        if let Some(origin) = origin {
            request = request.header("origin", origin);
        }
        reply(request.send().await.unwrap()).await
    }

    fn origin(&self) -> String {
        format!("https://localhost:{}", self.envoy.addr.port())
    }

    /// The page token of `device`'s current deny page on `/` (JSON body).
    async fn page_token(&self, device: &Leaf) -> String {
        let page = self.get(device, "/", "application/json").await;
        assert_eq!(page.status, 403, "{}", page.body);
        page.body["bypass"]["token"]
            .as_str()
            .unwrap_or_else(|| panic!("no bypass offered: {}", page.body))
            .to_owned()
    }

    /// Grants in force, from the admin API.
    async fn grants(&self) -> Vec<Value> {
        let url = format!("http://{}/v1/break-glass", self.server.http_addr());
        let body: Value = reqwest::get(url).await.unwrap().json().await.unwrap();
        body["grants"].as_array().unwrap().clone()
    }

    async fn metrics(&self) -> String {
        let url = format!("http://{}/metrics", self.server.http_addr());
        reqwest::get(url).await.unwrap().text().await.unwrap()
    }
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
    fleet_authz::server::start(config).await.unwrap()
}

/// Polls Checks through Envoy until `device` is denied on `/`, or panics at
/// `deadline`.
async fn denied_again_by(door: &Door, device: &Leaf, deadline: Instant) -> Reply {
    loop {
        let reply = door.get(device, "/", "application/json").await;
        if reply.status == 403 {
            return reply;
        }
        assert!(
            Instant::now() < deadline,
            "still allowed after the bypass expired: {}",
            reply.body
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn a_minor_failure_is_bypassed_through_envoy_until_it_runs_out() {
    let door = Door::start().await;
    let cleo = &door.cleo;

    // The deny says what failed, what to do, and offers the bypass.
    let page = door.get(cleo, "/reports", "application/json").await;
    assert_eq!(page.status, 403, "{}", page.body);
    assert_eq!(page.header("x-fleet-authz-reason"), Some("failing_any_policy"));
    assert_eq!(page.body["title"], "localhost");
    assert_eq!(page.body["reasons"][0]["resolution"], SCREEN_LOCK_FIX);
    assert_eq!(page.body["next_steps"].as_array().unwrap().len(), 4);
    assert_eq!(page.body["bypass"]["duration"], "3s");
    assert_eq!(page.body["bypass"]["remaining"], 2);
    assert_eq!(page.body["support"]["text"], "IT help desk");
    let token = page.body["bypass"]["token"].as_str().unwrap().to_owned();

    // Taken through Envoy with Cleo's own certificate: 303 back to the page.
    let form = [
        ("token", token.as_str()),
        ("route", "default"),
        ("reason", "board demo in ten minutes"),
        ("return_to", "/reports"),
    ];
    let taken = door.post(cleo, Some(&door.origin()), &form).await;
    assert_eq!(taken.status, 303, "{}", taken.body);
    assert_eq!(taken.header("location"), Some("/reports"));

    // Cleo reaches the app, which is told until when.
    let app = door.get(cleo, "/reports", "application/json").await;
    assert_eq!(app.status, 200, "{}", app.body);
    assert_eq!(app.body["x-fleet-host-id"], "3");
    let expiry = app.body["x-fleet-authz-bypass"].as_str().unwrap().to_owned();
    let expires_at = humantime::parse_rfc3339(&expiry).unwrap();
    let left = expires_at.duration_since(SystemTime::now()).unwrap_or_default();
    assert!(left <= Duration::from_secs(BYPASS_SECS), "{expiry}");

    // A grant like break-glass: listed by the admin API, logged and counted.
    let grants = door.grants().await;
    assert_eq!(grants.len(), 1, "{grants:?}");
    assert_eq!(grants[0]["kind"], "bypass");
    assert_eq!(grants[0]["route"], "default");
    assert_eq!(grants[0]["host_id"], 3);
    assert_eq!(grants[0]["reason"], "board demo in ten minutes");
    let metrics = door.metrics().await;
    assert!(metrics.contains(r#"fleet_authz_bypass_requests_total{result="granted"} 1"#), "{metrics}");
    assert!(
        metrics.contains(r#"fleet_authz_decisions_total{decision="allow",reason="bypass",route="default"} 1"#),
        "{metrics}"
    );
    let line = &door.envoy.access_log_lines("GET /reports", 2).await[1];
    assert!(line.contains(r#""reasons":"failing_any_policy,bypass""#), "{line}");

    // The same page's token again: spent.
    let replay = door.post(cleo, Some(&door.origin()), &form).await;
    assert_eq!(replay.status, 403, "{}", replay.body);

    // When the bypass runs out Cleo is denied again, and may take the
    // second of her two for the day; after that none is offered.
    denied_again_by(&door, cleo, Instant::now() + Duration::from_secs(BYPASS_SECS + 10)).await;
    let second = door.page_token(cleo).await;
    let form2 = [("token", second.as_str()), ("route", "default"), ("reason", "still demoing")];
    assert_eq!(door.post(cleo, Some(&door.origin()), &form2).await.status, 303);
    assert_eq!(door.get(cleo, "/", "application/json").await.status, 200);
    let out = denied_again_by(&door, cleo, Instant::now() + Duration::from_secs(BYPASS_SECS + 10)).await;
    assert_eq!(out.body["bypass"]["remaining"], 0, "{}", out.body);
    assert!(out.body["bypass"]["token"].is_null(), "{}", out.body);
    let html = door.get(cleo, "/", "text/html").await;
    let html = html.body.as_str().unwrap();
    assert!(html.contains("You have used the 2 bypasses"), "{html}");
    assert!(!html.contains("name=\"token\""), "{html}");
    // A token minted now (as a page would) still meets the daily limit.
    let minted = door.key.issue(&cleo.fingerprint, "default", SystemTime::now());
    let form3 = [("token", minted.as_str()), ("route", "default"), ("reason", "third")];
    assert_eq!(door.post(cleo, Some(&door.origin()), &form3).await.status, 403);
    assert_eq!(door.get(cleo, "/", "application/json").await.status, 403);
}

#[tokio::test]
async fn critical_failures_forged_identities_and_cross_site_posts_store_nothing() {
    let door = Door::start().await;
    let (ben, cleo, eve) = (&door.ben, &door.cleo, &door.eve);
    let origin = door.origin();
    let now = SystemTime::now();

    // A critical failure is never offered a bypass, and a validly signed
    // token for Ben does not make it bypassable.
    let page = door.get(ben, "/", "application/json").await;
    assert_eq!(page.status, 403);
    assert!(page.body.get("bypass").is_none(), "{}", page.body);
    let bens = door.key.issue(&ben.fingerprint, "default", now);
    let refused = door
        .post(ben, Some(&origin), &[("token", &bens), ("route", "default"), ("reason", "please")])
        .await;
    assert_eq!(refused.status, 403, "{}", refused.body);

    // The form cannot name the device: Cleo's token is Cleo's only, and a
    // host id in the form is ignored.
    let cleos = door.page_token(cleo).await;
    let forged = [("token", cleos.as_str()), ("route", "default"), ("reason", "x"), ("host_id", "3")];
    assert_eq!(door.post(ben, Some(&origin), &forged).await.status, 403);
    let named = [("token", bens.as_str()), ("route", "default"), ("reason", "x"), ("host_id", "3")];
    assert_eq!(door.post(ben, Some(&origin), &named).await.status, 403);

    // Cross-site: a foreign Origin, no Origin, Sec-Fetch-Site cross-site.
    let form = [("token", cleos.as_str()), ("route", "default"), ("reason", "x")];
    assert_eq!(door.post(cleo, Some("https://evil.example"), &form).await.status, 403);
    assert_eq!(door.post(cleo, None, &form).await.status, 403);
    let cross_site = door
        .client(cleo)
        .post(door.envoy.url("/.fleet-authz/bypass"))
        .header("origin", &origin)
        .header("sec-fetch-site", "cross-site")
        .form(&form)
        .send()
        .await
        .unwrap();
    assert_eq!(cross_site.status(), 403);

    // An expired token, one for another route, a missing reason.
    let old = door.key.issue(&eve.fingerprint, "default", now - Duration::from_secs(601));
    let expired = [("token", old.as_str()), ("route", "default"), ("reason", "x")];
    assert_eq!(door.post(eve, Some(&origin), &expired).await.status, 403);
    let eves = door.page_token(eve).await;
    let wiki = [("token", eves.as_str()), ("route", "wiki"), ("reason", "x")];
    assert_eq!(door.post(eve, Some(&origin), &wiki).await.status, 403);
    let blank = [("token", eves.as_str()), ("route", "default"), ("reason", "  ")];
    assert_eq!(door.post(eve, Some(&origin), &blank).await.status, 400);

    // Nothing was stored, and every device is still denied.
    assert_eq!(door.grants().await, Vec::<Value>::new());
    for device in [ben, cleo, eve] {
        assert_eq!(door.get(device, "/", "application/json").await.status, 403);
    }
    let metrics = door.metrics().await;
    for (result, n) in [("not_eligible", 2), ("bad_token", 3), ("cross_origin", 3), ("missing_reason", 1)] {
        let series = format!("fleet_authz_bypass_requests_total{{result=\"{result}\"}} {n}");
        assert!(metrics.contains(&series), "{series}\n{metrics}");
    }
}

#[tokio::test]
async fn inside_grace_the_app_is_warned_and_explain_says_so() {
    let door = Door::start().await;
    let reply = door.get(&door.cleo, "/wiki/home", "application/json").await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let warning = reply.body["x-fleet-authz-warning"].as_str().unwrap();
    let (id, deadline) = warning.split_once(";deadline=").unwrap();
    assert_eq!(id, "34");
    let deadline = humantime::parse_rfc3339(deadline).unwrap();
    let in_72h = SystemTime::now() + Duration::from_secs(72 * 3600);
    assert!(deadline <= in_72h && deadline + Duration::from_secs(60) > in_72h, "{warning}");
    let line = &door.envoy.access_log_lines("GET /wiki/home", 1).await[0];
    assert!(line.contains(&format!(r#""warnings":"{warning}""#)), "{line}");
    // A client cannot send its own warning or bypass header to the app.
    let forged = door
        .client(&door.cleo)
        .get(door.envoy.url("/"))
        .header("x-fleet-authz-bypass", "2099-01-01T00:00:00Z")
        .send()
        .await
        .unwrap();
    assert_eq!(forged.status(), 403);
    let in_grace = door
        .client(&door.cleo)
        .get(door.envoy.url("/wiki/x"))
        .header("x-fleet-authz-bypass", "2099-01-01T00:00:00Z")
        .send()
        .await
        .unwrap();
    let echoed: Value = in_grace.json().await.unwrap();
    assert!(echoed.get("x-fleet-authz-bypass").is_none(), "{echoed}");

    let addr = format!("http://{}", door.server.http_addr());
    let sha1 = door.cleo.fingerprint.to_hex();
    let (allowed, text) = fleet_authz::cli::explain(&addr, None, &sha1, &[], "localhost", "/wiki/home")
        .await
        .unwrap();
    assert!(allowed, "{text}");
    assert!(text.contains("warning: policy 34 is failing and denies from"), "{text}");
}
