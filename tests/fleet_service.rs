//! The whole service with Fleet as the posture source: a fake Fleet on
//! 127.0.0.1:0, fleet-authz started through the library, real gRPC Checks.
//! Shows the live recheck (a remediated host gets in on the next Check; a
//! hanging Fleet costs at most the budget; a thousand concurrent denied Checks
//! make one Fleet request), warm restarts from the snapshot with Fleet down,
//! and that faults keep the last good posture.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "tests: a failure panics the test"
)]

mod common;

use std::time::{Duration, Instant};

use common::{
    certs::{Leaf, TestPki},
    fake_fleet::{
        FakeFleet, FakeSpec, Fault,
        service::{check, metrics, readyz, service_config, start, verdict},
    },
};
use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use fleet_authz::{authz::request::build_check_request, config::Config};
use tempfile::TempDir;

const POLICY: &str = "version: 1\ndefaults:\n  deny: {failing_any_policy: true}\n";

struct Setup {
    fake: FakeFleet,
    device: Leaf,
    dir: TempDir,
}

/// Host 1 fails policy 1 and holds `device`'s certificate.
async fn setup() -> Setup {
    let fake = FakeFleet::start(FakeSpec {
        hosts: 6,
        ..FakeSpec::default()
    })
    .await;
    let device = TestPki::new().device("laptop");
    fake.add_report_row(1, &device.fingerprint.to_hex().to_uppercase());
    fake.update_host(1, |h| {
        for r in h.responses.values_mut() {
            *r = "pass".into();
        }
        h.responses.insert(1, "fail".into());
    });
    Setup {
        fake,
        device,
        dir: TempDir::new().unwrap(),
    }
}

fn config(s: &Setup, recheck: &str) -> Config {
    let snapshot = format!("snapshot: {{path: {}/snapshot.pb}}", s.dir.path().display());
    service_config(
        &s.fake,
        s.dir.path(),
        POLICY,
        &[&format!("recheck: {recheck}")],
        &[&snapshot],
    )
}

#[tokio::test]
async fn remediated_host_is_allowed_on_the_next_check() {
    let s = setup().await;
    let (server, mut client) = start(config(&s, "{min_age: 0s, budget: 2s}")).await;
    assert_eq!(readyz(&server).await.0, 200);
    let hosts_requests = s.fake.count("hosts");
    // Still failing in Fleet: the recheck confirms the deny.
    assert_eq!(
        verdict(&check(&mut client, &s.device.cert_pem).await),
        "failing_any_policy"
    );
    assert_eq!(s.fake.count("host"), 1);
    s.fake.update_host(1, |h| {
        h.responses.insert(1, "pass".into());
    });
    assert_eq!(
        verdict(&check(&mut client, &s.device.cert_pem).await),
        "allow"
    );
    assert_eq!(s.fake.count("host"), 2);
    assert_eq!(
        s.fake.count("hosts"),
        hosts_requests,
        "no full sync happened"
    );
    assert!(
        metrics(&server)
            .await
            .contains("fleet_authz_rechecks_total{result=\"fresh\"} 2")
    );
    server.shutdown().await;
}

/// Host detail lists software CVEs but not the operating system's. A host
/// denied for an OS-level CVE (seen by the sync through
/// `hosts?vulnerability=`) stays denied for it across rechecks, even once
/// its failing policy is fixed; only a full sync can clear it.
#[tokio::test]
async fn an_os_level_cve_stays_denied_across_a_recheck() {
    const OS_CVE: &str = "CVE-2025-43300";
    let s = setup().await;
    s.fake.update_host(1, |h| {
        h.cves.clear();
        h.os_cves = vec![OS_CVE.to_owned()];
    });
    let config = config(&s, "{min_age: 0s, budget: 2s}");
    std::fs::write(
        s.dir.path().join("policy.yaml"),
        format!("version: 1\ndefaults:\n  deny: {{failing_any_policy: true, vulnerabilities: [{OS_CVE}]}}\n"),
    )
    .unwrap();
    let (server, mut client) = start(config).await;
    assert_eq!(
        verdict(&check(&mut client, &s.device.cert_pem).await),
        "failing_any_policy,vulnerability"
    );
    assert_eq!(s.fake.count("host"), 1, "the deny was rechecked");
    // The person fixes the policy; the OS is still vulnerable.
    s.fake.update_host(1, |h| {
        h.responses.insert(1, "pass".into());
    });
    for attempt in 2..4 {
        assert_eq!(
            verdict(&check(&mut client, &s.device.cert_pem).await),
            "vulnerability",
            "attempt {attempt}"
        );
        assert_eq!(s.fake.count("host"), attempt, "rechecked again");
    }
    // The OS is patched: the next full sync clears the CVE.
    s.fake.update_host(1, |h| h.os_cves.clear());
    server.fleet.as_ref().unwrap().sync_now().await.unwrap();
    assert_eq!(
        verdict(&check(&mut client, &s.device.cert_pem).await),
        "allow"
    );
    server.shutdown().await;
}

/// A certificate that two Fleet hosts report (copied to a second device)
/// cannot say which device is asking: if either holder fails, it is denied.
#[tokio::test]
async fn a_certificate_two_hosts_report_is_denied_when_either_fails() {
    let s = setup().await;
    let (server, mut client) = start(config(&s, "{enabled: false}")).await;
    assert_eq!(
        verdict(&check(&mut client, &s.device.cert_pem).await),
        "failing_any_policy"
    );
    // Host 2 passes everything and now reports the same certificate; it is
    // the holder the store finds (the later one), yet host 1 still fails.
    s.fake.update_host(2, |h| {
        h.responses.values_mut().for_each(|r| *r = "pass".into())
    });
    s.fake
        .add_report_row(2, &s.device.fingerprint.to_hex().to_uppercase());
    server.fleet.as_ref().unwrap().sync_now().await.unwrap();
    assert_eq!(
        verdict(&check(&mut client, &s.device.cert_pem).await),
        "failing_any_policy"
    );
    // Host 1 fixed: both holders pass.
    s.fake.update_host(1, |h| {
        h.responses.insert(1, "pass".into());
    });
    server.fleet.as_ref().unwrap().sync_now().await.unwrap();
    assert_eq!(
        verdict(&check(&mut client, &s.device.cert_pem).await),
        "allow"
    );
    server.shutdown().await;
}

#[tokio::test]
async fn recheck_is_skipped_while_the_posture_is_younger_than_min_age() {
    let s = setup().await;
    let (server, mut client) = start(config(&s, "{min_age: 1h, budget: 2s}")).await;
    assert_eq!(
        verdict(&check(&mut client, &s.device.cert_pem).await),
        "failing_any_policy"
    );
    assert_eq!(s.fake.count("host"), 0);
    server.shutdown().await;
}

#[tokio::test]
async fn a_hanging_fleet_costs_at_most_the_budget() {
    let s = setup().await;
    let (server, mut client) = start(config(&s, "{min_age: 0s, budget: 200ms}")).await;
    s.fake.set_fault("host", Fault::Hang);
    let started = Instant::now();
    assert_eq!(
        verdict(&check(&mut client, &s.device.cert_pem).await),
        "failing_any_policy"
    );
    // The recheck deadline is 200 ms against a Fleet that never answers; the
    // bound is loose on purpose (a behaviour check, not a benchmark).
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    assert!(
        metrics(&server)
            .await
            .contains("fleet_authz_rechecks_total{result=\"timed_out\"} 1")
    );
    server.shutdown().await;
}

#[tokio::test]
async fn a_thousand_concurrent_denied_checks_make_one_fleet_request() {
    let s = setup().await;
    let (server, client) = start(config(&s, "{min_age: 0s, budget: 1s, max_concurrent: 16}")).await;
    s.fake.hold("host");
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..1000 {
        let (mut client, device) = (client.clone(), s.device.cert_pem.clone());
        tasks.spawn(async move {
            let req = build_check_request(&device, &[], "app.example.com", "/", false);
            verdict(&client.check(req).await.unwrap().into_inner())
        });
    }
    let mut denied = 0;
    while let Some(v) = tasks.join_next().await {
        assert_eq!(v.unwrap(), "failing_any_policy");
        denied += 1;
    }
    assert_eq!(denied, 1000);
    assert_eq!(s.fake.count("host"), 1);
    s.fake.release("host");
    server.shutdown().await;
}

#[tokio::test]
async fn restart_with_fleet_down_serves_the_same_decisions_from_the_snapshot() {
    let s = setup().await;
    let other = s.fake.host(2);
    let (server, mut client) = start(config(&s, "{enabled: false}")).await;
    let before = verdict(&check(&mut client, &s.device.cert_pem).await);
    assert_eq!(before, "failing_any_policy");
    let hosts = server.authorizer.store.host_count();
    server.shutdown().await;
    assert!(s.dir.path().join("snapshot.pb").exists());

    for endpoint in [
        "teams",
        "global_policies",
        "team_policies",
        "hosts",
        "query_report",
        "host",
    ] {
        s.fake.set_fault(endpoint, Fault::Status(503));
    }
    let server = fleet_authz::server::start(config(&s, "{enabled: false}"))
        .await
        .unwrap();
    // Ready at once: the snapshot is loaded before serving.
    assert_eq!(readyz(&server).await.0, 200);
    assert_eq!(server.authorizer.store.host_count(), hosts);
    let held = server
        .authorizer
        .store
        .host(fleet_authz::posture::HostId(2))
        .unwrap();
    // The hardware serial (for remediation_url) survives the restart too.
    assert_eq!(
        (&held.display_name, &held.hardware_serial),
        (&other.name, &other.serial)
    );
    let mut client = AuthorizationClient::connect(format!("http://{}", server.grpc_addr()))
        .await
        .unwrap();
    assert_eq!(
        verdict(&check(&mut client, &s.device.cert_pem).await),
        before
    );
    let sync = server.fleet.as_ref().unwrap().sync_now().await;
    assert!(sync.is_err());
    assert_eq!(
        verdict(&check(&mut client, &s.device.cert_pem).await),
        before
    );
    server.shutdown().await;
}

#[tokio::test]
async fn a_corrupt_snapshot_is_reported_and_ignored() {
    let s = setup().await;
    std::fs::write(
        s.dir.path().join("snapshot.pb"),
        b"\x00\x00\x00\x09garbage!!",
    )
    .unwrap();
    let (server, mut client) = start(config(&s, "{enabled: false}")).await;
    assert_eq!(server.authorizer.store.host_count(), 6);
    assert_eq!(
        verdict(&check(&mut client, &s.device.cert_pem).await),
        "failing_any_policy"
    );
    server.shutdown().await;
}

#[tokio::test]
async fn faults_keep_the_last_good_posture_and_readyz_says_why() {
    let s = setup().await;
    let (server, mut client) = start(config(&s, "{enabled: false}")).await;
    let handle = server.fleet.clone().unwrap();
    s.fake.update_host(1, |h| {
        h.responses.insert(1, "pass".into());
    });
    s.fake.set_fault("query_report", Fault::Status(503));
    let err = handle.sync_now().await.unwrap_err();
    assert_eq!(err, "fleet query_report: unexpected status 503");
    // The fix in Fleet is not seen: nothing from the failed cycle is published.
    assert_eq!(
        verdict(&check(&mut client, &s.device.cert_pem).await),
        "failing_any_policy"
    );
    let (status, body) = readyz(&server).await;
    assert_eq!(status, 200);
    assert!(
        body.contains(&format!("warning: fleet sync failed: {err}")),
        "{body}"
    );
    let m = metrics(&server).await;
    assert!(
        m.contains("fleet_authz_syncs_total{result=\"failure\"} 1"),
        "{m}"
    );
    s.fake.clear_faults();
    assert_eq!(handle.sync_now().await.unwrap().hosts, 6);
    assert_eq!(
        verdict(&check(&mut client, &s.device.cert_pem).await),
        "allow"
    );
    assert!(!readyz(&server).await.1.contains("warning"));
    assert!(
        metrics(&server)
            .await
            .contains("fleet_authz_fleet_requests_total{endpoint=")
    );
    server.shutdown().await;
}
