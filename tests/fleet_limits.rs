//! Fleet answers are bounded (README, "Limits"): an endless body, plain or
//! gzip, on the host list, the certificate report or a recheck's host
//! detail stops at `fleet.max_body_bytes`; a report with more rows than
//! `fleet.max_report_rows` stops there. Each fails its cycle (or recheck)
//! at once, unretried, is counted in `fleet_authz_limits_hit_total`, and
//! the last good posture keeps deciding: an allowed device stays allowed, a
//! denied one stays denied. A small cap keeps each test fast.

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
        FakeFleet, FakeSpec, Fault, ReportRows,
        service::{Authz, check, metrics, service_config, start, verdict},
    },
};
use fleet_authz::{config::Config, fleet::FleetConfig, server::RunningServer};
use tempfile::TempDir;

const POLICY: &str = "version: 1\ndefaults:\n  deny: {failing_any_policy: true}\n";
/// `fleet.max_body_bytes` in these tests: the good answers of six hosts
/// are a few KiB, far below it.
const CAP: u64 = 256 * 1024;

struct Setup {
    fake: FakeFleet,
    /// Host 1: passes everything.
    allowed: Leaf,
    /// Host 2: fails policy 1.
    denied: Leaf,
    dir: TempDir,
}

async fn setup() -> Setup {
    let fake = FakeFleet::start(FakeSpec {
        hosts: 6,
        ..FakeSpec::default()
    })
    .await;
    let pki = TestPki::new();
    let (allowed, denied) = (pki.device("allowed"), pki.device("denied"));
    for (id, device, failing) in [(1, &allowed, false), (2, &denied, true)] {
        fake.add_report_row(id, &device.fingerprint.to_hex().to_uppercase());
        fake.update_host(id, |h| {
            h.responses.values_mut().for_each(|r| *r = "pass".into());
            if failing {
                h.responses.insert(1, "fail".into());
            }
        });
    }
    Setup {
        fake,
        allowed,
        denied,
        dir: TempDir::new().unwrap(),
    }
}

fn config(s: &Setup, fleet: &[&str]) -> Config {
    let cap = format!("max_body_bytes: {CAP}");
    let mut lines = vec![cap.as_str()];
    lines.extend_from_slice(fleet);
    service_config(&s.fake, s.dir.path(), POLICY, &lines, &[])
}

/// The verdicts for the allowed and the denied device.
async fn verdicts(s: &Setup, client: &mut Authz) -> (String, String) {
    (
        verdict(&check(client, &s.allowed.cert_pem).await),
        verdict(&check(client, &s.denied.cert_pem).await),
    )
}

/// A counter (or gauge) of `/metrics`, 0 when absent.
async fn metric(server: &RunningServer, series: &str) -> u64 {
    let text = metrics(server).await;
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .map_or(0, |v| v.parse().unwrap())
}

const BODY_HITS: &str = "fleet_authz_limits_hit_total{limit=\"fleet_body\"}";
const ROW_HITS: &str = "fleet_authz_limits_hit_total{limit=\"report_rows\"}";
const RECEIVED: &str = "fleet_authz_fleet_received_bytes_total";

/// An endless host list or certificate report, plain and gzip: the sync
/// fails within the request timeout (reading stopped at the cap, it did not
/// run until the timeout), names the key, is not retried, is counted, and
/// the devices keep their verdicts.
#[tokio::test]
async fn an_endless_answer_fails_the_sync_at_the_cap_and_the_last_posture_decides() {
    let s = setup().await;
    let (server, mut client) = start(config(&s, &[])).await;
    let fleet = server.fleet.clone().unwrap();
    let before = ("allow".to_owned(), "failing_any_policy".to_owned());
    assert_eq!(verdicts(&s, &mut client).await, before);
    let mut hits = 0;
    for (endpoint, gzip) in [
        ("hosts", false),
        ("query_report", false),
        ("hosts", true),
        ("query_report", true),
    ] {
        if gzip {
            s.fake.serve_gzip();
        }
        // Fleet changes both hosts; none of it may land.
        s.fake.update_host(1, |h| {
            h.responses.insert(1, "fail".into());
        });
        s.fake.update_host(2, |h| {
            h.responses.insert(1, "pass".into());
        });
        s.fake.set_fault(endpoint, Fault::Endless);
        let (requests, sent) = (s.fake.count(endpoint), s.fake.bytes(endpoint));
        let received = metric(&server, RECEIVED).await;
        let started = Instant::now();
        let err = fleet.sync_now().await.unwrap_err();
        let took = started.elapsed();

        let case = format!("{endpoint} gzip={gzip}");
        assert_eq!(
            err,
            format!(
                "fleet {endpoint}: answer larger than fleet.max_body_bytes ({CAP} bytes); reading \
                 stopped there (raise the limit if this Fleet's answers are that big)"
            ),
            "{case}"
        );
        assert!(took < Duration::from_secs(2), "{case}: {took:?}");
        assert_eq!(s.fake.count(endpoint), requests + 1, "{case}: retried");
        hits += 1;
        assert_eq!(metric(&server, BODY_HITS).await, hits, "{case}");
        // What was read, decompressed: the cap, plus the cycle's earlier
        // answers (a few KiB).
        let read = metric(&server, RECEIVED).await - received;
        assert!(read <= CAP + (64 << 10), "{case}: read {read}");
        // What the fake sent stopped too (loopback socket buffers aside).
        let sent = s.fake.bytes(endpoint) - sent;
        assert!(sent < 64 << 20, "{case}: sent {sent}");
        assert_eq!(verdicts(&s, &mut client).await, before, "{case}");
        s.fake.clear_faults();
    }
    // Fleet answers properly again: the changes land.
    fleet.sync_now().await.unwrap();
    assert_eq!(
        verdicts(&s, &mut client).await,
        ("failing_any_policy".to_owned(), "allow".to_owned())
    );
    server.shutdown().await;
}

/// A denied Check whose recheck meets an endless host detail keeps the
/// cached deny; the fetch stops at the cap and is not retried.
#[tokio::test]
async fn a_recheck_meeting_an_endless_host_detail_keeps_the_cached_decision() {
    let s = setup().await;
    let (server, mut client) = start(config(&s, &["recheck: {min_age: 0s, budget: 2s}"])).await;
    for gzip in [false, true] {
        if gzip {
            s.fake.serve_gzip();
        }
        // Fixed in Fleet, but the answer that says so never ends.
        s.fake.update_host(2, |h| {
            h.responses.insert(1, "pass".into());
        });
        s.fake.set_fault("host", Fault::Endless);
        let requests = s.fake.count("host");
        let started = Instant::now();
        assert_eq!(
            verdicts(&s, &mut client).await,
            ("allow".to_owned(), "failing_any_policy".to_owned()),
            "gzip={gzip}"
        );
        assert!(started.elapsed() < Duration::from_secs(2), "gzip={gzip}");
        assert_eq!(s.fake.count("host"), requests + 1, "gzip={gzip}");
        assert_eq!(
            metric(&server, BODY_HITS).await,
            1 + u64::from(gzip),
            "gzip={gzip}"
        );
        assert_eq!(
            metric(&server, "fleet_authz_rechecks_total{result=\"failed\"}").await,
            1 + u64::from(gzip)
        );
    }
    s.fake.clear_faults();
    assert_eq!(
        verdicts(&s, &mut client).await,
        ("allow".to_owned(), "allow".to_owned())
    );
    server.shutdown().await;
}

/// 6 hosts × 2 certificates and the 2 devices' rows make 14 report rows,
/// within `max_report_rows: 20`. Ten more rows pass it: the sync fails,
/// counted, and the last posture decides.
#[tokio::test]
async fn a_report_with_more_rows_than_the_bound_fails_the_sync() {
    let s = setup().await;
    let (server, mut client) = start(config(&s, &["max_report_rows: 20"])).await;
    let fleet = server.fleet.clone().unwrap();
    let before = ("allow".to_owned(), "failing_any_policy".to_owned());
    assert_eq!(verdicts(&s, &mut client).await, before);
    s.fake.update_host(2, |h| {
        h.responses.insert(1, "pass".into());
    });
    for k in 0..10 {
        s.fake.add_report_row(3, &format!("{k:040x}"));
    }
    let requests = s.fake.count("query_report");
    let err = fleet.sync_now().await.unwrap_err();
    assert_eq!(
        err,
        "fleet query_report: report has more than fleet.max_report_rows (20) rows; reading \
         stopped there (raise the limit if the report is that big)"
    );
    assert_eq!(s.fake.count("query_report"), requests + 1, "retried");
    assert_eq!(metric(&server, ROW_HITS).await, 1);
    assert_eq!(verdicts(&s, &mut client).await, before);
    server.shutdown().await;
}

/// The rows bound counts over every page of a paged report.
#[tokio::test]
async fn the_rows_bound_spans_the_pages_of_a_paged_report() {
    let fake = FakeFleet::start(FakeSpec {
        hosts: 30,
        report_pages: true,
        ..FakeSpec::default()
    })
    .await;
    // 30 hosts × 2 certificates: 60 rows, in pages of 10.
    let mut config = fake.config();
    config.max_report_rows = 59;
    let (poller, _store) = fake.poller(config.clone());
    let err = poller.poll_once().await.unwrap_err().to_string();
    assert!(err.contains("max_report_rows (59)"), "{err}");
    config.max_report_rows = 60;
    let (poller, store) = fake.poller(config);
    poller.poll_once().await.unwrap();
    assert_eq!(store.host_count(), 30);
}

/// How the default `fleet.max_body_bytes` was chosen (README, "Limits"),
/// with the scale benchmark's host shape (3 fingerprints, 20 policies,
/// CVEs on every fourth host). The answers a sync can ask for whole are:
/// a hosts page with every policy result (`populate_policies`) of at most
/// 10,000 hosts (`page_size`'s bound), a hosts page without them (per-policy
/// membership) of 100,000 hosts, and an unpaged certificate report (an older
/// Fleet) of 100,000 hosts with one row per certificate. Measured at
/// `FLEET_LIMITS_HOSTS` hosts (default 2,000; the README's figures are from
/// 10,000), scaled linearly, the default must hold the largest with at
/// least 1.5× headroom.
#[tokio::test]
async fn the_default_body_cap_holds_the_answers_of_100_000_hosts_with_headroom() {
    let hosts: u64 = std::env::var("FLEET_LIMITS_HOSTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2_000);
    let fake = FakeFleet::start(FakeSpec {
        hosts,
        fingerprints_per_host: 3,
        policies: 20,
        failing_percent: 5,
        teams: 3,
        report_rows: ReportRows::PerCertificate,
        ..FakeSpec::default()
    })
    .await;
    common::server::install_crypto_provider();
    let (http, token) = (reqwest::Client::new(), fake.token());
    let per_host = |path: String| {
        let req = http
            .get(format!("{}{path}", fake.url()))
            .bearer_auth(&token);
        async move {
            let resp = req.send().await.unwrap();
            assert_eq!(resp.status(), 200, "{path}");
            resp.bytes().await.unwrap().len() as u64 as f64 / hosts as f64
        }
    };
    let hosts_page = "/api/v1/fleet/hosts?order_key=id&per_page";
    let populated = per_host(format!(
        "{hosts_page}={hosts}&page=0&populate_policies=true"
    ))
    .await;
    let bare = per_host(format!("{hosts_page}={hosts}&page=0")).await;
    let report = per_host("/api/v1/fleet/reports/42/report".to_owned()).await;
    let largest = [populated * 10_000.0, bare * 100_000.0, report * 100_000.0];
    let default = FleetConfig::new("http://fleet", 1).max_body_bytes;
    println!(
        "bytes per host: {populated:.0} with policies, {bare:.0} without, {report:.0} of report; \
         populated page of 10,000: {:.0}; bare page of 100,000: {:.0}; report of 100,000: {:.0}; \
         populated page of 100,000: {:.0}; default {default}",
        largest[0],
        largest[1],
        largest[2],
        populated * 100_000.0
    );
    let largest = largest.into_iter().fold(0.0, f64::max);
    assert!(largest * 1.5 <= default as f64, "{largest:.0} bytes");
}
