//! Every fault a Fleet sync can meet keeps the last good posture, and the
//! next good cycle recovers: errors inside a 200 on every endpoint (and on
//! a later page of a paged report), 5xx, 401, timeouts, malformed and
//! truncated bodies, 429 with its `Retry-After` (capped).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "tests: a failure panics the test"
)]

mod common;

use std::{sync::Arc, time::Duration};

use common::fake_fleet::{CVE, FakeFleet, FakeSpec, Fault, STREAM_ERROR, fast_retry, fingerprint};
use fleet_authz::{
    fleet::{FleetClient, MembershipMode, Poller, Token},
    posture::{HostId, PostureStore},
};

fn poller(fake: &FakeFleet) -> (Poller, Arc<PostureStore>) {
    fake.poller(fake.config())
}

#[tokio::test]
async fn each_fault_keeps_the_last_good_posture_and_the_next_cycle_recovers() {
    let fake = FakeFleet::start(FakeSpec::default()).await;
    let (poller, store) = poller(&fake);
    poller.set_cves(vec![CVE.into()]);
    poller.poll_once().await.unwrap();

    let in_body =
        |endpoint: &str| format!("fleet {endpoint}: answer ended with an error: {STREAM_ERROR}");
    let cases: [(&str, Fault, String); 16] = [
        ("query", Fault::ErrorField, in_body("query")),
        ("teams", Fault::ErrorInBody, in_body("teams")),
        (
            "team_policies",
            Fault::ErrorInBody,
            in_body("team_policies"),
        ),
        (
            "unassigned_policies",
            Fault::ErrorInBody,
            in_body("unassigned_policies"),
        ),
        (
            "global_policies",
            Fault::ErrorInBody,
            in_body("global_policies"),
        ),
        ("hosts", Fault::ErrorInBody, in_body("hosts")),
        (
            "hosts_vulnerability",
            Fault::ErrorInBody,
            in_body("hosts_vulnerability"),
        ),
        ("query_report", Fault::ErrorInBody, in_body("query_report")),
        (
            "teams",
            Fault::Status(500),
            "fleet teams: unexpected status 500".into(),
        ),
        (
            "global_policies",
            Fault::Malformed,
            "fleet global_policies: malformed json: expected value".into(),
        ),
        (
            "team_policies",
            Fault::Unauthorized,
            "fleet api token rejected (status 401)".into(),
        ),
        (
            "hosts",
            Fault::Status(503),
            "fleet hosts: unexpected status 503".into(),
        ),
        ("hosts", Fault::Hang, "fleet hosts: timed out".into()),
        (
            "hosts_vulnerability",
            Fault::RateLimited {
                retry_after_secs: 0,
            },
            "fleet hosts_vulnerability: rate limited".into(),
        ),
        (
            "query_report",
            Fault::Truncated,
            "fleet query_report: malformed json: EOF while parsing".into(),
        ),
        (
            "query_report",
            Fault::Status(404),
            "certificate_query_id 42 not found".into(),
        ),
    ];
    for (endpoint, fault, message) in cases {
        let before = store.host(HostId(5)).unwrap();
        let synced_at = store.synced_at();
        // Fleet changes host 5 while the cycle is faulty: none of it may land.
        fake.update_host(5, |h| {
            h.responses.values_mut().for_each(|r| *r = "fail".into())
        });
        fake.set_fault(endpoint, fault.clone());

        let err = poller.poll_once().await.unwrap_err().to_string();
        assert!(err.starts_with(&message), "{endpoint} {fault:?}: {err}");
        assert!(!err.contains(&fake.token()), "the token leaked: {err}");
        assert_eq!(
            store.host(HostId(5)).unwrap(),
            before,
            "{endpoint} {fault:?}"
        );
        assert_eq!(store.synced_at(), synced_at, "{endpoint} {fault:?}");
        let status = poller.handle().status();
        assert_eq!(status.last_error.as_deref(), Some(err.as_str()));

        fake.clear_faults();
        let report = poller.poll_once().await.unwrap();
        assert_eq!(report.hosts, 10);
        let after = store.host(HostId(5)).unwrap();
        assert_eq!(
            after.failing_policies().count(),
            after.policies.len(),
            "{endpoint} {fault:?}"
        );
        assert!(store.synced_at() > synced_at);
        assert_eq!(poller.handle().status().last_error, None);
        fake.update_host(5, |h| {
            h.responses.values_mut().for_each(|r| *r = "pass".into())
        });
        poller.poll_once().await.unwrap();
    }
    let status = poller.handle().status();
    assert_eq!((status.failures, status.clipped_total), (16, 0));
}

#[tokio::test]
async fn transient_5xx_is_retried_within_the_cycle() {
    let fake = FakeFleet::start(FakeSpec::default()).await;
    let (poller, store) = poller(&fake);
    fake.set_fault_times("global_policies", Fault::Status(502), 2);
    let report = poller.poll_once().await.unwrap();
    assert_eq!(report.hosts, 10);
    assert_eq!(fake.count("global_policies"), 3);
    assert_eq!(store.host_count(), 10);
}

#[tokio::test]
async fn wrong_token_is_not_retried_and_not_shown() {
    let fake = FakeFleet::start(FakeSpec::default()).await;
    let config = fake.config();
    let client = FleetClient::new(&config, &Token::new("wrong-secret"), fast_retry())
        .unwrap_or_else(|e| panic!("{e}"));
    let store = Arc::new(PostureStore::new());
    let poller = Poller::new(Arc::new(client), Arc::clone(&store), &config);
    let err = poller.poll_once().await.unwrap_err().to_string();
    assert_eq!(err, "fleet api token rejected (status 401)");
    // The cycle's first request (the certificate query) is its only one.
    assert_eq!((fake.count("query"), fake.totals().0), (1, 1));
    assert!(!store.is_loaded());
}

/// Per-policy membership is where a broken-off list would loosen: a host
/// missing from "failing policy X" would read as passing it.
#[tokio::test]
async fn an_error_inside_a_200_fails_the_cycle_in_per_policy_membership() {
    let fake = FakeFleet::start(FakeSpec::default()).await;
    let mut config = fake.config();
    config.membership = MembershipMode::PerPolicy;
    let (poller, store) = fake.poller(config);
    poller.poll_once().await.unwrap();
    let before = store.host(HostId(5)).unwrap();
    fake.update_host(5, |h| {
        h.responses.values_mut().for_each(|r| *r = "fail".into())
    });
    fake.set_fault("hosts_failing_policy", Fault::ErrorInBody);
    let err = poller.poll_once().await.unwrap_err().to_string();
    assert_eq!(
        err,
        format!("fleet hosts_failing_policy: answer ended with an error: {STREAM_ERROR}")
    );
    assert_eq!(store.host(HostId(5)).unwrap(), before, "nothing published");
    fake.clear_faults();
    poller.poll_once().await.unwrap();
    let after = store.host(HostId(5)).unwrap();
    assert_eq!(after.failing_policies().count(), after.policies.len());
    assert!(after.failing_policies().count() > 0);
}

#[tokio::test]
async fn rate_limit_honours_retry_after() {
    let fake = FakeFleet::start(FakeSpec::default()).await;
    let (poller, store) = poller(&fake);
    fake.set_fault_times(
        "hosts",
        Fault::RateLimited {
            retry_after_secs: 1,
        },
        1,
    );
    let started = std::time::Instant::now();
    poller.poll_once().await.unwrap();
    // Backoff alone would retry within 20ms; the 1s wait is retry-after's.
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
    // The 429'd first page, its retry, then the empty page 1 (10 hosts, 10 per page).
    assert_eq!(fake.count("hosts"), 3);
    assert_eq!(store.host_count(), 10);
}

/// A page that ends with an error fails the whole cycle, even after good
/// pages; nothing of it is published, and the next cycle recovers.
#[tokio::test]
async fn an_error_inside_a_200_on_a_later_report_page_fails_the_cycle() {
    let fake = FakeFleet::start(FakeSpec {
        hosts: 25,
        report_pages: true,
        ..FakeSpec::default()
    })
    .await;
    let (poller, store) = poller(&fake);
    poller.poll_once().await.unwrap();
    fake.update_host(24, |h| h.certs.clear());
    fake.set_fault_after("query_report", Fault::ErrorInBody, 2);
    let err = poller.poll_once().await.unwrap_err().to_string();
    assert_eq!(
        err,
        format!("fleet query_report: answer ended with an error: {STREAM_ERROR}")
    );
    assert_eq!(store.lookup(&fingerprint(24, 0)).unwrap().id, HostId(24));
    fake.clear_faults();
    poller.poll_once().await.unwrap();
    assert_eq!(store.lookup(&fingerprint(24, 0)), None);
}

/// Fleet's `Retry-After` is honoured up to the client's cap (60 s by
/// default; 1 s in these tests), not beyond.
#[tokio::test]
async fn a_retry_after_past_the_cap_waits_only_the_cap() {
    let fake = FakeFleet::start(FakeSpec::default()).await;
    let (poller, _store) = poller(&fake);
    fake.set_fault_times(
        "hosts",
        Fault::RateLimited {
            retry_after_secs: 3600,
        },
        1,
    );
    let started = std::time::Instant::now();
    poller.poll_once().await.unwrap();
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_secs(1) && waited < Duration::from_secs(10),
        "{waited:?}"
    );
}
