//! End to end: a client with a device certificate → real Envoy running the
//! shipped `envoy.yaml` (mutual TLS, ext_authz) → fleet-authz (started through
//! the library, posture from a file) → an echo app. Each test asserts what
//! the person and the app see: status, headers and the deny body.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "tests: a failure panics the test"
)]

mod common;

use std::time::Duration;

use common::{
    certs::{Leaf, TestPki},
    echo::Echo,
    envoy::{Envoy, EnvoyOptions},
    server,
};
use fleet_authz::server::RunningServer;
use serde_json::Value;
use tempfile::TempDir;

const GATEKEEPER_FIX: &str = "Open System Settings > Privacy & Security and allow apps from the App Store and identified developers.";
const SCREEN_LOCK_FIX: &str =
    "Set Require password after screen saver begins to 5 minutes or less.";
/// `{host_id}` is filled in by fleet-authz.
const REMEDIATION_URL: &str = "https://fleet.example.com/device/{host_id}";

/// Devices of the test fleet, each with its own certificate.
struct Devices {
    /// Host 1: passes every policy.
    anna: Leaf,
    /// Host 2: fails critical policy 12 (Gatekeeper).
    ben: Leaf,
    /// Host 3: fails only non-critical policy 34 (screen lock).
    cleo: Leaf,
    /// Host 4: passes every policy and belongs to no team.
    dana: Leaf,
    /// Issued by the trusted CA but held by no Fleet host.
    stranger: Leaf,
}

/// How a [`Stack`]'s Envoy reaches fleet-authz.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Variant {
    /// As shipped: the peer certificate in the Check, over TCP.
    Shipped,
    /// `include_peer_certificate: false`, which is how Istio calls
    /// ext_authz: the certificate is only in `x-forwarded-client-cert`.
    XfccOnly,
    /// fleet-authz listens on a Unix socket, and Envoy's `fleet_authz`
    /// cluster is a `pipe` address.
    UnixSocket,
}

/// fleet-authz, an echo app and Envoy in front of both.
struct Stack {
    devices: Devices,
    envoy: Envoy,
    server: Option<RunningServer>,
    _echo: Echo,
    _dir: TempDir,
}

impl Stack {
    /// The shipped `envoy.yaml` as it is (but for addresses and certificates).
    async fn start() -> Self {
        Self::start_with(Variant::Shipped).await
    }

    async fn start_with(variant: Variant) -> Self {
        let include_peer_certificate = variant != Variant::XfccOnly;
        let unix_socket = variant == Variant::UnixSocket;
        let pki = TestPki::new();
        let devices = Devices {
            anna: pki.device("anna-macbook"),
            ben: pki.device("ben-thinkpad"),
            cleo: pki.device("cleo-macbook"),
            dana: pki.device("dana-laptop"),
            stranger: pki.device("stranger"),
        };
        let dir = tempfile::tempdir().unwrap();
        let grpc = if unix_socket {
            format!("unix:{}", dir.path().join("grpc.sock").display())
        } else {
            "127.0.0.1:0".to_owned()
        };
        let server = start_fleet_authz(&dir, &devices, &grpc).await;
        let echo = Echo::start().await;
        let options = EnvoyOptions {
            include_peer_certificate,
            authz: server.grpc_listen().clone(),
            app: echo.addr,
            http: Some(server.http_addr()),
        };
        let envoy = Envoy::start(&pki, options).await;
        Self {
            devices,
            envoy,
            server: Some(server),
            _echo: echo,
            _dir: dir,
        }
    }

    async fn get(&self, device: &Leaf, path: &str, headers: &[(&str, &str)]) -> Reply {
        let mut request = self.envoy.client(device).get(self.envoy.url(path));
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let response = request.send().await.unwrap();
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
}

/// What the client got back. On allow, `body` is the echo app's view of the
/// request headers; on deny it is fleet-authz's deny body.
struct Reply {
    status: u16,
    headers: reqwest::header::HeaderMap,
    body: Value,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(|v| v.to_str().unwrap())
    }

    fn reason_kinds(&self) -> Vec<&str> {
        self.body["reasons"]
            .as_array()
            .unwrap_or_else(|| panic!("no reasons in {}", self.body))
            .iter()
            .map(|r| r["kind"].as_str().unwrap())
            .collect()
    }
}

async fn start_fleet_authz(dir: &TempDir, devices: &Devices, grpc: &str) -> RunningServer {
    let posture = format!(
        r#"
policies:
  - {{id: 12, name: Gatekeeper enabled, critical: true, resolution: "{GATEKEEPER_FIX}"}}
  - {{id: 34, name: Screen lock after 5 minutes, critical: false, resolution: "{SCREEN_LOCK_FIX}"}}
hosts:
  - id: 1
    uuid: 11111111-1111-1111-1111-111111111111
    display_name: Anna's MacBook
    team: Workstations
    platform: darwin
    os_version: macOS 15.1
    last_seen_ago: 5m
    policies: {{12: pass, 34: pass}}
    fingerprints: [{anna}]
  - id: 2
    uuid: 22222222-2222-2222-2222-222222222222
    display_name: Ben's ThinkPad
    team: Workstations
    platform: windows
    os_version: Windows 11
    last_seen_ago: 5m
    policies: {{12: fail, 34: pass}}
    fingerprints: [{ben}]
  - id: 3
    uuid: 33333333-3333-3333-3333-333333333333
    display_name: Cleo's MacBook
    team: Finance
    platform: darwin
    os_version: macOS 15.1
    last_seen_ago: 5m
    policies: {{12: pass, 34: fail}}
    fingerprints: [{cleo}]
  - id: 4
    uuid: 44444444-4444-4444-4444-444444444444
    display_name: Dana's Laptop
    platform: ubuntu
    os_version: Ubuntu 24.04
    last_seen_ago: 5m
    policies: {{12: pass, 34: pass}}
    fingerprints: [{dana}]
"#,
        anna = devices.anna.fingerprint,
        ben = devices.ben.fingerprint,
        cleo = devices.cleo.fingerprint,
        dana = devices.dana.fingerprint,
    );
    let policy = r#"
version: 1
defaults:
  mode: enforce
  unknown_device: deny
  deny: {failing_critical_policy: true, last_seen_over: 24h}
routes:
  - name: payroll
    match: {context: {app: payroll}}
    deny: {failing_any_policy: true}
"#;
    let files = server::write_files(dir.path(), policy, &posture);
    let config = format!(
        r#"
listen: {{grpc: "{grpc}", http: "127.0.0.1:0"}}
{files}remediation_url: "{REMEDIATION_URL}"
identity: {{sources: [peer_certificate, xfcc, client_cert], xfcc_element: only}}
"#
    );
    server::start(&config, dir.path()).await
}

#[tokio::test]
async fn compliant_device_is_allowed_and_the_app_sees_its_identity() {
    let stack = Stack::start().await;
    let reply = stack.get(&stack.devices.anna, "/", &[]).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(reply.body["x-fleet-host-id"], "1");
    assert_eq!(
        reply.body["x-fleet-host-uuid"],
        "11111111-1111-1111-1111-111111111111"
    );
    assert_eq!(reply.body["x-fleet-host-name"], "Anna's MacBook");
    assert_eq!(reply.body["x-fleet-team"], "Workstations");
    assert_eq!(reply.header("x-fleet-authz-reason"), None);
}

#[tokio::test]
async fn device_failing_a_critical_policy_is_told_how_to_fix_it() {
    let stack = Stack::start().await;
    let reply = stack.get(&stack.devices.ben, "/", &[]).await;
    assert_eq!(reply.status, 403, "{}", reply.body);
    assert_eq!(
        reply.header("x-fleet-authz-reason"),
        Some("failing_critical_policy")
    );
    assert!(
        reply
            .header("content-type")
            .unwrap()
            .starts_with("application/json")
    );
    let body = &reply.body;
    assert_eq!(body["decision"], "deny");
    assert_eq!(body["route"], "default");
    assert_eq!(body["host"]["id"], 2);
    assert_eq!(body["host"]["display_name"], "Ben's ThinkPad");
    assert_eq!(body["host"]["team"], "Workstations");
    assert_eq!(reply.reason_kinds(), ["failing_critical_policy"]);
    let reason = &body["reasons"][0];
    assert_eq!(reason["policy_id"], 12);
    assert_eq!(reason["name"], "Gatekeeper enabled");
    assert_eq!(reason["critical"], true);
    assert_eq!(reason["resolution"], GATEKEEPER_FIX);
    assert_eq!(
        body["remediation_url"],
        "https://fleet.example.com/device/2"
    );
    // Something the person can quote to support.
    assert_ne!(body["request_id"].as_str().unwrap(), "", "{body}");

    // A browser gets the same answer as a page.
    let reply = stack
        .get(
            &stack.devices.ben,
            "/",
            &[("accept", "text/html,*/*;q=0.8")],
        )
        .await;
    assert_eq!(reply.status, 403);
    assert_eq!(
        reply.header("x-fleet-authz-reason"),
        Some("failing_critical_policy")
    );
    assert!(
        reply
            .header("content-type")
            .unwrap()
            .starts_with("text/html")
    );
    let page = reply.body.as_str().unwrap();
    assert!(page.contains("Gatekeeper enabled"), "{page}");
    assert!(
        page.contains("https://fleet.example.com/device/2"),
        "{page}"
    );
}

#[tokio::test]
async fn unknown_certificate_is_denied_as_unknown_device() {
    let stack = Stack::start().await;
    let reply = stack.get(&stack.devices.stranger, "/", &[]).await;
    assert_eq!(reply.status, 403, "{}", reply.body);
    assert_eq!(reply.header("x-fleet-authz-reason"), Some("unknown_device"));
    assert_eq!(reply.body["decision"], "deny");
    assert_eq!(reply.reason_kinds(), ["unknown_device"]);
    assert!(reply.body["host"].is_null(), "{}", reply.body);
    // The fingerprint to enrol, so support can find the certificate in Fleet.
    let sha1 = stack.devices.stranger.fingerprint.to_hex();
    assert_eq!(reply.body["certificate"]["sha1"], sha1.as_str());
}

/// An XFCC header claiming `device`'s certificate, as an attacker would send.
fn forged_xfcc(device: &Leaf) -> String {
    let pem = device.cert_pem.replace("\r\n", "\n");
    let pem = percent_encoding::utf8_percent_encode(&pem, percent_encoding::NON_ALPHANUMERIC);
    format!(
        "Hash={};Cert=\"{pem}\";Subject=\"CN=forged\"",
        device.fingerprint
    )
}

#[tokio::test]
async fn clients_cannot_forge_identity_headers_or_xfcc() {
    let stack = Stack::start().await;
    let devices = &stack.devices;
    let forged = forged_xfcc(&devices.ben);
    let reply = stack
        .get(
            &devices.anna,
            "/",
            &[
                ("x-fleet-host-id", "999"),
                ("x-fleet-team", "Admins"),
                ("x-forwarded-client-cert", &forged),
            ],
        )
        .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(reply.body["x-fleet-host-id"], "1");
    assert_eq!(reply.body["x-fleet-team"], "Workstations");
    let xfcc = reply.body["x-forwarded-client-cert"].as_str().unwrap();
    assert!(xfcc.contains("Subject=\"CN=anna-macbook\""), "{xfcc}");
    assert!(!xfcc.contains("forged"), "{xfcc}");

    // A header fleet-authz has no value for (Dana has no team) is removed,
    // not passed through from the client.
    let reply = stack
        .get(&devices.dana, "/", &[("x-fleet-team", "Admins")])
        .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(reply.body["x-fleet-host-id"], "4");
    assert!(reply.body.get("x-fleet-team").is_none(), "{}", reply.body);

    forged_xfcc_is_refused(&stack).await;
}

/// An unknown device cannot borrow Anna's identity through a forged XFCC.
async fn forged_xfcc_is_refused(stack: &Stack) {
    let devices = &stack.devices;
    let borrowed = forged_xfcc(&devices.anna);
    let reply = stack
        .get(
            &devices.stranger,
            "/",
            &[("x-forwarded-client-cert", &borrowed)],
        )
        .await;
    assert_eq!(reply.status, 403, "{}", reply.body);
    assert_eq!(reply.header("x-fleet-authz-reason"), Some("unknown_device"));
}

#[tokio::test]
async fn xfcc_only_like_istio_decides_the_same() {
    let stack = Stack::start_with(Variant::XfccOnly).await;
    anna_in_ben_out(&stack).await;
    forged_xfcc_is_refused(&stack).await;
}

/// Anna (compliant) is allowed as host 1; Ben is denied for the critical
/// Gatekeeper policy (12). Returns both replies for further checks.
async fn anna_in_ben_out(stack: &Stack) -> (Reply, Reply) {
    let devices = &stack.devices;
    let anna = stack.get(&devices.anna, "/", &[]).await;
    assert_eq!(anna.status, 200, "{}", anna.body);
    assert_eq!(anna.body["x-fleet-host-id"], "1");

    let ben = stack.get(&devices.ben, "/", &[]).await;
    assert_eq!(ben.status, 403, "{}", ben.body);
    assert_eq!(
        ben.header("x-fleet-authz-reason"),
        Some("failing_critical_policy")
    );
    assert_eq!(ben.body["reasons"][0]["policy_id"], 12);
    (anna, ben)
}

/// `listen.grpc: unix:…` and an Envoy `pipe` address: the same decisions,
/// headers and deny body as over TCP, and the payroll route's own policy.
#[tokio::test]
async fn over_a_unix_socket_envoy_gets_the_same_answers() {
    let stack = Stack::start_with(Variant::UnixSocket).await;
    assert!(matches!(
        stack.server.as_ref().unwrap().grpc_listen(),
        fleet_authz::config::GrpcListen::Unix(_)
    ));
    let (anna, ben) = anna_in_ben_out(&stack).await;
    assert_eq!(anna.body["x-fleet-host-name"], "Anna's MacBook");
    assert_eq!(ben.reason_kinds(), ["failing_critical_policy"]);
    assert_eq!(ben.body["reasons"][0]["resolution"], GATEKEEPER_FIX);

    let reply = stack.get(&stack.devices.cleo, "/payroll/q3", &[]).await;
    assert_eq!(reply.status, 403, "{}", reply.body);
    assert_eq!(reply.reason_kinds(), ["failing_any_policy"]);
}

#[tokio::test]
async fn payroll_route_applies_its_own_policy() {
    let stack = Stack::start().await;
    let cleo = &stack.devices.cleo;

    let reply = stack.get(cleo, "/", &[]).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(reply.body["x-fleet-host-id"], "3");

    let reply = stack.get(cleo, "/payroll/2026-11", &[]).await;
    assert_eq!(reply.status, 403, "{}", reply.body);
    assert_eq!(
        reply.header("x-fleet-authz-reason"),
        Some("failing_any_policy")
    );
    assert_eq!(reply.body["route"], "payroll");
    assert_eq!(reply.reason_kinds(), ["failing_any_policy"]);
    let reason = &reply.body["reasons"][0];
    assert_eq!(reason["policy_id"], 34);
    assert_eq!(reason["name"], "Screen lock after 5 minutes");
    assert_eq!(reason["critical"], false);
    assert_eq!(reason["resolution"], SCREEN_LOCK_FIX);

    let reply = stack.get(&stack.devices.anna, "/payroll", &[]).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
}

#[tokio::test]
async fn with_fleet_authz_stopped_envoy_fails_closed_except_on_the_public_route() {
    let mut stack = Stack::start().await;
    let anna = &stack.devices.anna;
    assert_eq!(stack.get(anna, "/", &[]).await.status, 200);

    let server = stack.server.take().unwrap();
    tokio::time::timeout(Duration::from_secs(10), server.shutdown())
        .await
        .expect("fleet-authz did not shut down within 10s");

    // status_on_error in envoy.yaml: 503, and no fleet-authz deny reason.
    for path in ["/", "/payroll"] {
        let reply = stack.get(anna, path, &[]).await;
        assert_eq!(reply.status, 503, "{path}: {}", reply.body);
        assert_eq!(reply.header("x-fleet-authz-reason"), None);
        assert!(
            reply.body.get("x-fleet-host-id").is_none(),
            "{}",
            reply.body
        );
    }
    let reply = stack.get(anna, "/public/status", &[]).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert!(
        reply.body.get("x-fleet-host-id").is_none(),
        "{}",
        reply.body
    );
}

/// The number after `authz_us=` in an access log line; `None` for `-`.
fn authz_us(line: &str) -> Option<u64> {
    let value = line
        .rsplit_once(" authz_us=")
        .unwrap_or_else(|| panic!("no authz_us in {line}"))
        .1;
    (value != "-").then(|| {
        value
            .parse()
            .unwrap_or_else(|_| panic!("authz_us is not a number in {line}"))
    })
}

#[tokio::test]
async fn access_log_shows_each_decision_and_how_long_its_check_took() {
    let stack = Stack::start().await;
    let (anna, ben) = (&stack.devices.anna, &stack.devices.ben);
    assert_eq!(stack.get(anna, "/reports/q3", &[]).await.status, 200);
    assert_eq!(stack.get(ben, "/reports/q4", &[]).await.status, 403);
    assert_eq!(stack.get(anna, "/public/status", &[]).await.status, 200);

    let allowed = &stack.envoy.access_log_lines("GET /reports/q3", 1).await[0];
    assert!(allowed.contains(" 200 "), "{allowed}");
    assert!(allowed.contains(r#""decision":"allow""#), "{allowed}");
    assert!(allowed.contains(r#""host_id":"1""#), "{allowed}");
    let denied = &stack.envoy.access_log_lines("GET /reports/q4", 1).await[0];
    assert!(denied.contains(" 403 "), "{denied}");
    assert!(denied.contains(r#""decision":"deny""#), "{denied}");
    assert!(
        denied.contains(r#""reasons":"failing_critical_policy""#),
        "{denied}"
    );
    // A Check took some time, and less than Envoy's 0.25 s timeout.
    for line in [allowed, denied] {
        let micros = authz_us(line).unwrap_or_else(|| panic!("no Check timed in {line}"));
        assert!((1..250_000).contains(&micros), "{line}");
    }
    // ext_authz is disabled on /public: nothing to time.
    let public = &stack.envoy.access_log_lines("GET /public/status", 1).await[0];
    assert!(public.contains(" 200 "), "{public}");
    assert_eq!(authz_us(public), None, "{public}");
}

/// A Fleet display name or team with CR, LF or NUL in it would make Envoy
/// refuse every request of that device (503): fleet-authz drops control
/// characters and caps the length before they become headers.
#[tokio::test]
async fn a_hostile_fleet_name_does_not_lock_its_device_out() {
    let stack = Stack::start().await;
    let store = &stack.server.as_ref().unwrap().authorizer.store;
    let mut host = (*store.host(fleet_authz::posture::HostId(4)).unwrap()).clone();
    host.display_name = format!("Dana\r\nx-evil: 1\0{}", "z".repeat(1_000));
    host.team = Some(fleet_authz::posture::Team {
        id: Some(9),
        name: "Ops\nTeam".into(),
    });
    store.upsert(host, std::time::SystemTime::now());
    let reply = stack.get(&stack.devices.dana, "/", &[]).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let name = reply.body["x-fleet-host-name"].as_str().unwrap();
    assert!(name.starts_with("Danax-evil: 1zzz"), "{name}");
    assert_eq!(name.len(), 256);
    assert_eq!(reply.body["x-fleet-team"], "OpsTeam");
    assert!(reply.body.get("x-evil").is_none(), "{}", reply.body);
}
