//! gRPC-level tests: a real tonic `authorization_client` against the real
//! server on 127.0.0.1:0, one test per reason kind, asserting the gRPC code,
//! the HTTP status, the headers, the body and the dynamic metadata. The two
//! kinds that need a Fleet-style source or an admin grant (`stale_posture`,
//! `break_glass`) are driven through the handler directly.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "tests: a failure panics the test"
)]

mod common;

use std::{
    collections::HashMap,
    sync::Arc,
    time::{Duration, SystemTime},
};

use arc_swap::ArcSwap;
use common::certs::{Leaf, TestPki};
use common::server::{self, LISTEN_ANY, Verdict};
use envoy_types::pb::envoy::service::auth::v3::{
    CheckRequest, CheckResponse, authorization_client::AuthorizationClient,
};
use fleet_authz::{
    authz::request::{build_check_request, request_headers, url_encode_pem},
    decision::{Authorizer, Grants},
    fingerprint::Fingerprint,
    policy::parse_policy,
    posture::{HostId, PostureStore, parse_posture_file},
    server::RunningServer,
    telemetry::metrics::Metrics,
};
use serde_json::Value;
use tempfile::TempDir;
use tonic::transport::Channel;

const POLICY: &str = r#"
version: 1
defaults:
  deny:
    failing_critical_policy: true
    vulnerabilities: [CVE-2024-3094]
    last_seen_over: 24h
routes:
  - name: strict
    match: {context: {app: strict}}
    deny: {failing_any_policy: true, failing_policies: [21]}
  - name: any
    match: {context: {app: any}}
    deny: {failing_any_policy: true}
  - name: mac-only
    match: {context: {app: mac}}
    require: {platforms: [darwin], teams: [Workstations]}
  - name: shadow
    match: {path_prefix: /shadow}
    mode: dry_run
  - name: api
    match: {host: "api.example.com"}
    deny_status: 401
"#;

struct Fleet {
    good: Leaf,
    critical: Leaf,
    noncritical: Leaf,
    vulnerable: Leaf,
    stale: Leaf,
    stranger: Leaf,
}

fn posture(f: &Fleet) -> String {
    format!(
        r#"
policies:
  - {{id: 12, name: Disk encryption, critical: true, resolution: Turn on FileVault in System Settings}}
  - {{id: 21, name: Screen lock, critical: false, resolution: Lock after 5 minutes}}
  - {{id: 30, name: Firewall, critical: false}}
hosts:
  - {{id: 1, uuid: u-1, display_name: "Anna's MacBook", team: Workstations, platform: darwin, last_seen_ago: 5m, policies: {{12: pass, 21: pass}}, fingerprints: [{}]}}
  - {{id: 2, uuid: u-2, display_name: Ben's PC, team: Workstations, platform: windows, last_seen_ago: 5m, policies: {{12: fail, 21: pass}}, fingerprints: [{}]}}
  - {{id: 3, uuid: u-3, display_name: Cleo's Mac, platform: darwin, last_seen_ago: 5m, policies: {{12: pass, 21: fail, 30: fail}}, fingerprints: [{}]}}
  - {{id: 4, uuid: u-4, display_name: Dev box, team: Servers, platform: ubuntu, last_seen_ago: 5m, cves: [CVE-2024-3094], fingerprints: [{}]}}
  - {{id: 5, uuid: u-5, display_name: Old laptop, team: Workstations, platform: darwin, last_seen_ago: 3d, fingerprints: [{}]}}
"#,
        f.good.fingerprint,
        f.critical.fingerprint,
        f.noncritical.fingerprint,
        f.vulnerable.fingerprint,
        f.stale.fingerprint
    )
}

struct Harness {
    fleet: Fleet,
    server: Option<RunningServer>,
    client: AuthorizationClient<Channel>,
    _dir: TempDir,
}

impl Harness {
    async fn start() -> Self {
        let pki = TestPki::new();
        let fleet = Fleet {
            good: pki.device("good"),
            critical: pki.device("critical"),
            noncritical: pki.device("noncritical"),
            vulnerable: pki.device("vulnerable"),
            stale: pki.device("stale"),
            stranger: pki.device("stranger"),
        };
        let dir = TempDir::new().unwrap();
        let files = server::write_files(dir.path(), POLICY, &posture(&fleet));
        let config = format!(
            "{LISTEN_ANY}{files}remediation_url: \"https://fleet.example.com/device/{{host_id}}\"\n"
        );
        let server = server::start(&config, dir.path()).await;
        let client = server::authz_client(&server).await;
        Self {
            fleet,
            server: Some(server),
            client,
            _dir: dir,
        }
    }

    async fn check(&mut self, req: CheckRequest) -> CheckResponse {
        self.client
            .check(req)
            .await
            .expect("a deny is still an OK RPC")
            .into_inner()
    }

    async fn check_cert(
        &mut self,
        leaf_pem: &str,
        context: &[(&str, &str)],
        path: &str,
    ) -> CheckResponse {
        let context: Vec<(String, String)> = context
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        self.check(build_check_request(
            leaf_pem,
            &context,
            "app.example.com",
            path,
            false,
        ))
        .await
    }
}

/// Status code, reason header and parsed JSON body of a deny.
fn denied(resp: &CheckResponse) -> (i32, String, Value) {
    let denied = Verdict::deny(resp);
    assert_eq!(denied.header("cache-control"), "no-store");
    (denied.status, denied.reasons().to_owned(), denied.body)
}

/// The headers an allow sets, by name, and those it removes.
fn allowed(resp: &CheckResponse) -> (HashMap<String, String>, Vec<String>) {
    let allowed = Verdict::allow(resp);
    (allowed.headers, allowed.removed)
}

#[tokio::test]
async fn compliant_device_is_allowed_with_identity_headers_and_metadata() {
    let mut h = Harness::start().await;
    let pem = h.fleet.good.cert_pem.clone();
    let resp = h.check_cert(&pem, &[], "/").await;
    let (set, removed) = allowed(&resp);
    assert_eq!(set["x-fleet-host-id"], "1");
    assert_eq!(set["x-fleet-host-uuid"], "u-1");
    assert_eq!(set["x-fleet-host-name"], "Anna's MacBook");
    assert_eq!(set["x-fleet-team"], "Workstations");
    assert!(removed.contains(&"x-fleet-authz-reason".to_owned()));
    let meta = &resp.dynamic_metadata.as_ref().unwrap().fields;
    let s = |k: &str| match &meta[k].kind {
        Some(envoy_types::pb::google::protobuf::value::Kind::StringValue(s)) => s.clone(),
        other => panic!("{other:?}"),
    };
    assert_eq!(
        (s("host_id"), s("route"), s("decision")),
        ("1".into(), "default".into(), "allow".into())
    );
    h.server.take().unwrap().shutdown().await;
}

#[tokio::test]
async fn host_without_team_gets_the_team_header_removed() {
    let mut h = Harness::start().await;
    let pem = h.fleet.noncritical.cert_pem.clone();
    let (set, removed) = allowed(&h.check_cert(&pem, &[], "/").await);
    assert_eq!(set["x-fleet-host-id"], "3");
    assert!(!set.contains_key("x-fleet-team"));
    assert!(removed.contains(&"x-fleet-team".to_owned()));
}

#[tokio::test]
async fn no_client_certificate() {
    let mut h = Harness::start().await;
    let mut req = build_check_request("", &[], "app.example.com", "/", false);
    req.attributes
        .as_mut()
        .unwrap()
        .source
        .as_mut()
        .unwrap()
        .certificate
        .clear();
    let (status, reason, body) = denied(&h.check(req).await);
    assert_eq!((status, reason.as_str()), (403, "no_client_certificate"));
    assert_eq!(body["reasons"][0]["kind"], "no_client_certificate");
    assert!(body.get("host").is_none());
}

#[tokio::test]
async fn malformed_certificate_header_is_a_deny_with_a_reason() {
    let mut h = Harness::start().await;
    for xfcc in [
        "Cert=\"unterminated",
        "Cert=\"a\";Cert=\"b\"",
        "Cert=\"-----BEGIN%20CERTIFICATE-----%0Azzz\"",
    ] {
        let mut req = build_check_request("", &[], "app.example.com", "/", false);
        request_headers(&mut req).insert("x-forwarded-client-cert".into(), xfcc.into());
        let (status, reason, body) = denied(&h.check(req).await);
        assert_eq!(
            (status, reason.as_str()),
            (403, "invalid_client_certificate"),
            "{xfcc}"
        );
        assert!(
            body["reasons"][0]["detail"]
                .as_str()
                .unwrap()
                .contains("x-forwarded-client-cert"),
            "{body}"
        );
    }
}

#[tokio::test]
async fn unknown_device() {
    let mut h = Harness::start().await;
    let pem = h.fleet.stranger.cert_pem.clone();
    let (status, reason, body) = denied(&h.check_cert(&pem, &[], "/").await);
    assert_eq!((status, reason.as_str()), (403, "unknown_device"));
    assert_eq!(
        body["certificate"]["sha1"],
        h.fleet.stranger.fingerprint.to_hex()
    );
}

#[tokio::test]
async fn failing_critical_policy_names_the_policy_and_its_fix() {
    let mut h = Harness::start().await;
    let pem = h.fleet.critical.cert_pem.clone();
    let (status, reason, body) = denied(&h.check_cert(&pem, &[], "/").await);
    assert_eq!((status, reason.as_str()), (403, "failing_critical_policy"));
    assert_eq!(body["decision"], "deny");
    assert_eq!(body["route"], "default");
    assert_eq!(body["host"]["id"], 2);
    assert_eq!(body["host"]["team"], "Workstations");
    let r = &body["reasons"][0];
    assert_eq!(
        (
            r["policy_id"].as_u64(),
            r["name"].as_str(),
            r["critical"].as_bool()
        ),
        (Some(12), Some("Disk encryption"), Some(true))
    );
    assert_eq!(r["resolution"], "Turn on FileVault in System Settings");
    assert_eq!(
        body["remediation_url"],
        "https://fleet.example.com/device/2"
    );
}

#[tokio::test]
async fn failing_policy_and_failing_any_policy_on_a_context_route() {
    let mut h = Harness::start().await;
    let pem = h.fleet.noncritical.cert_pem.clone();
    let (_, reason, body) = denied(&h.check_cert(&pem, &[("app", "strict")], "/").await);
    assert_eq!(reason, "failing_policy,failing_any_policy");
    assert_eq!(body["route"], "strict");
    let ids: Vec<u64> = body["reasons"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["policy_id"].as_u64().unwrap())
        .collect();
    assert_eq!(ids, [21, 30]);
    let (_, reason, _) = denied(&h.check_cert(&pem, &[("app", "any")], "/").await);
    assert_eq!(reason, "failing_any_policy");
}

#[tokio::test]
async fn vulnerability_and_last_seen_over() {
    let mut h = Harness::start().await;
    let pem = h.fleet.vulnerable.cert_pem.clone();
    let (_, reason, body) = denied(&h.check_cert(&pem, &[], "/").await);
    assert_eq!(reason, "vulnerability");
    assert_eq!(body["reasons"][0]["cve"], "CVE-2024-3094");
    let pem = h.fleet.stale.cert_pem.clone();
    let (_, reason, body) = denied(&h.check_cert(&pem, &[], "/").await);
    assert_eq!(reason, "last_seen_over");
    assert_eq!(body["reasons"][0]["limit"], "24h");
    assert!(
        body["reasons"][0]["last_seen"]
            .as_str()
            .unwrap()
            .ends_with('Z')
    );
}

#[tokio::test]
async fn requirement_names_what_was_expected() {
    let mut h = Harness::start().await;
    let pem = h.fleet.critical.cert_pem.clone();
    let (_, reason, body) = denied(&h.check_cert(&pem, &[("app", "mac")], "/").await);
    assert_eq!(reason, "requirement,failing_critical_policy");
    let r = &body["reasons"][0];
    assert_eq!(
        (r["requirement"].as_str(), r["actual"].as_str()),
        (Some("platform"), Some("windows"))
    );
    assert_eq!(r["expected"], serde_json::json!(["darwin"]));
}

#[tokio::test]
async fn dry_run_allows_and_marks_the_request() {
    let mut h = Harness::start().await;
    let pem = h.fleet.critical.cert_pem.clone();
    let resp = h.check_cert(&pem, &[], "/shadow/x").await;
    let (set, _) = allowed(&resp);
    assert_eq!(set["x-fleet-authz-dry-run"], "deny");
    assert_eq!(set["x-fleet-authz-reason"], "failing_critical_policy");
    assert_eq!(set["x-fleet-host-id"], "2");
}

#[tokio::test]
async fn html_page_when_the_browser_prefers_it_and_custom_status() {
    let mut h = Harness::start().await;
    let pem = h.fleet.critical.cert_pem.clone();
    let mut req = build_check_request(&pem, &[], "api.example.com", "/", false);
    request_headers(&mut req).insert(
        "accept".into(),
        "text/html,application/xhtml+xml,*/*;q=0.8".into(),
    );
    let (status, reason, body) = denied(&h.check(req).await);
    assert_eq!((status, reason.as_str()), (401, "failing_critical_policy"));
    let html = body.as_str().unwrap();
    assert!(html.starts_with("<!doctype html>"));
    assert!(html.contains(
        "<h3>Disk encryption <span class=\"badge\">critical</span></h3><div class=\"fix\"><p>Turn on FileVault"
    ));
    // What was blocked: no route title here, so the request's host.
    assert!(html.contains("Access to <strong>api.example.com</strong> was blocked"));
    assert!(html.contains("href=\"https://fleet.example.com/device/2\""));
}

#[tokio::test]
async fn xfcc_client_cert_and_peer_certificate_decide_alike() {
    let mut h = Harness::start().await;
    let pem = h.fleet.critical.cert_pem.clone();
    let via_peer = denied(&h.check_cert(&pem, &[], "/").await);
    let via_xfcc = denied(
        &h.check(build_check_request(&pem, &[], "app.example.com", "/", true))
            .await,
    );
    let mut req = build_check_request("", &[], "app.example.com", "/", false);
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD.encode(&h.fleet.critical.der);
    request_headers(&mut req).insert("client-cert".into(), format!(":{b64}:"));
    let via_rfc9440 = denied(&h.check(req).await);
    assert_eq!(via_peer.1, "failing_critical_policy");
    assert_eq!(
        (&via_peer.1, &via_peer.2["host"]),
        (&via_xfcc.1, &via_xfcc.2["host"])
    );
    assert_eq!(
        (&via_peer.1, &via_peer.2["host"]),
        (&via_rfc9440.1, &via_rfc9440.2["host"])
    );
    assert!(url_encode_pem(&pem).contains("%0A"));
}

struct OneGrant(Fingerprint);

impl Grants for OneGrant {
    fn find(
        &self,
        _host: Option<HostId>,
        fp: &Fingerprint,
        _now: SystemTime,
    ) -> Option<(u64, String)> {
        (fp == &self.0).then(|| (7, "incident 42".to_owned()))
    }
}

/// An authorizer over a Fleet-like store synced `age` ago, called directly.
fn handler(pki_leaf: &Leaf, age: Duration, grants: Option<Arc<dyn Grants>>) -> Arc<Authorizer> {
    let now = SystemTime::now();
    let posture = format!(
        "policies: [{{id: 12, name: Disk encryption, critical: true}}]\nhosts: [{{id: 9, display_name: x, last_seen_ago: 1m, policies: {{12: fail}}, fingerprints: [{}]}}]",
        pki_leaf.fingerprint
    );
    let store = Arc::new(PostureStore::new());
    store.replace_all(
        parse_posture_file(&posture, false, now).unwrap().hosts,
        now - age,
    );
    let policy = parse_policy(POLICY, std::path::Path::new("policy.yaml")).unwrap();
    Arc::new(Authorizer {
        store,
        policy: Arc::new(ArcSwap::from_pointee(policy)),
        identity: Default::default(),
        remediation_url: None,
        max_staleness: Some(Duration::from_secs(900)),
        metrics: Arc::new(Metrics::new()),
        refresh: None,
        grants,
        fingerprints: Default::default(),
    })
}

#[tokio::test]
async fn stale_posture_is_reported_past_max_staleness() {
    let leaf = TestPki::new().device("d");
    let svc = handler(&leaf, Duration::from_secs(3600), None);
    let req = build_check_request(&leaf.cert_pem, &[], "app.example.com", "/", false);
    let resp = svc.check(&req).await;
    let (_, reason, body) = denied(&resp);
    assert_eq!(reason, "failing_critical_policy,stale_posture");
    let stale = &body["reasons"][1];
    assert_eq!(
        (stale["age"].as_str(), stale["limit"].as_str()),
        (Some("1h"), Some("15m"))
    );
}

#[tokio::test]
async fn break_glass_grant_turns_a_deny_into_an_allow() {
    let leaf = TestPki::new().device("d");
    let svc = handler(
        &leaf,
        Duration::ZERO,
        Some(Arc::new(OneGrant(leaf.fingerprint))),
    );
    let req = build_check_request(&leaf.cert_pem, &[], "app.example.com", "/", false);
    let resp = svc.check(&req).await;
    let (set, _) = allowed(&resp);
    assert_eq!(set["x-fleet-host-id"], "9");
    let meta = &resp.dynamic_metadata.unwrap().fields;
    assert_eq!(
        meta["reasons"].kind,
        Some(envoy_types::pb::google::protobuf::value::Kind::StringValue(
            "failing_critical_policy,break_glass".into()
        ))
    );
}

#[tokio::test]
async fn a_kept_allow_answer_is_per_route_and_follows_the_posture() {
    let mut h = Harness::start().await;
    let pem = h.fleet.good.cert_pem.clone();
    let route = |resp: &CheckResponse| {
        match &resp.dynamic_metadata.as_ref().unwrap().fields["route"].kind {
            Some(envoy_types::pb::google::protobuf::value::Kind::StringValue(s)) => s.clone(),
            other => panic!("{other:?}"),
        }
    };
    let first = h.check_cert(&pem, &[], "/").await;
    let again = h.check_cert(&pem, &[], "/").await;
    assert_eq!(first, again);
    assert_eq!(allowed(&again).0["x-fleet-host-name"], "Anna's MacBook");
    // Another route the device passes: its own metadata, not the kept answer.
    let mac = h.check_cert(&pem, &[("app", "mac")], "/").await;
    assert_eq!(
        (route(&first), route(&mac)),
        ("default".into(), "mac-only".into())
    );
    assert_eq!(allowed(&mac).0["x-fleet-host-id"], "1");

    let store = Arc::clone(&h.server.as_ref().unwrap().authorizer.store);
    let mut host = (*store.host(HostId(1)).unwrap()).clone();
    host.display_name = "Anna's new MacBook".into();
    store.upsert(host, SystemTime::now());
    let after = h.check_cert(&pem, &[], "/").await;
    assert_eq!(allowed(&after).0["x-fleet-host-name"], "Anna's new MacBook");
    assert_eq!(route(&after), "default");
}
