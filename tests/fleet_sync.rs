//! The Fleet sync cycle against the fake Fleet: a good sync, removals,
//! gzip, membership modes, report rows (bad values, one row per host,
//! paging) and the run loop. Faults are in `fleet_faults.rs`.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "tests: a failure panics the test"
)]

mod common;

use std::sync::Arc;

use common::fake_fleet::{CVE, FakeFleet, FakeSpec, Fault, ReportRows, fingerprint};
use fleet_authz::{
    fleet::{MembershipMode, Poller},
    posture::{HostId, PolicyResponse, PostureStore},
};

fn poller(fake: &FakeFleet) -> (Poller, Arc<PostureStore>) {
    fake.poller(fake.config())
}

#[tokio::test]
async fn good_sync_fills_the_store() {
    let fake = FakeFleet::start(FakeSpec {
        hosts: 25,
        ..FakeSpec::default()
    })
    .await;
    let (poller, store) = poller(&fake);
    poller.set_cves(vec![CVE.to_lowercase()]);
    let report = poller.poll_once().await.unwrap();

    assert_eq!(
        (report.hosts, report.fingerprints, report.policies),
        (25, 50, 5)
    );
    assert_eq!(report.membership, MembershipMode::PopulatePolicies);
    assert_eq!((store.host_count(), store.fingerprint_count()), (25, 50));
    // 25 hosts at 10 per page: pages 0, 1 and the short page 2.
    assert_eq!(fake.count("hosts"), 3);
    assert_eq!(fake.count("team_policies"), 2);
    assert_eq!(fake.count("hosts_failing_policy"), 0);
    assert_eq!(fake.count("hosts_vulnerability"), 1);

    // Host 8: even id, so Fleet reported its sha1s upper case with colons.
    let expected = fake.host(8);
    assert!(expected.certs[0].contains(':'));
    let h = store.lookup(&fingerprint(8, 1)).unwrap();
    assert_eq!(h.id, HostId(8));
    assert_eq!(
        h.fingerprints[0].to_hex(),
        expected.certs[0].replace(':', "").to_lowercase()
    );
    assert_eq!(h.display_name, "host-8");
    assert_eq!(h.team_name(), Some("Team 2"));
    assert_eq!(
        h.failing_policies().map(|p| p.id()).collect::<Vec<_>>(),
        expected.failing()
    );
    assert_eq!(h.policies.len(), expected.responses.len());
    assert_eq!(
        h.cves.iter().map(|c| c.to_string()).collect::<Vec<_>>(),
        [CVE]
    );
    assert!(store.host(HostId(7)).unwrap().cves.is_empty());
    let resolution = h.policies[0].meta.resolution.as_deref();
    assert_eq!(
        resolution,
        Some(format!("Fix Policy {}", h.policies[0].id()).as_str())
    );
    assert!(
        store.host(HostId(3)).unwrap().team.is_none(),
        "host 3 has no team"
    );
}

#[tokio::test]
async fn removed_hosts_disappear() {
    let fake = FakeFleet::start(FakeSpec::default()).await;
    let (poller, store) = poller(&fake);
    poller.poll_once().await.unwrap();
    assert_eq!(store.lookup(&fingerprint(4, 0)).unwrap().id, HostId(4));
    fake.remove_host(4);
    let report = poller.poll_once().await.unwrap();
    assert_eq!(
        (report.hosts, store.host_count(), store.fingerprint_count()),
        (9, 9, 18)
    );
    assert_eq!(store.host(HostId(4)), None);
    assert_eq!(store.lookup(&fingerprint(4, 0)), None);
}

#[tokio::test]
async fn gzip_responses_are_inflated_into_the_same_posture() {
    let spec = || FakeSpec {
        hosts: 25,
        fingerprints_per_host: 3,
        ..FakeSpec::default()
    };
    let (plain, gzip) = (
        FakeFleet::start(spec()).await,
        FakeFleet::start(spec()).await,
    );
    gzip.serve_gzip();
    let (plain_poller, plain_store) = poller(&plain);
    let (gzip_poller, gzip_store) = poller(&gzip);
    let plain_report = plain_poller.poll_once().await.unwrap();
    let gzip_report = gzip_poller.poll_once().await.unwrap();

    // The client counts bodies as inflated; on the wire gzip is far smaller.
    assert_eq!(gzip_report.bytes, plain_report.bytes);
    assert_eq!(gzip.totals().0, plain.totals().0);
    for endpoint in ["hosts", "query_report"] {
        let (z, p) = (gzip.bytes(endpoint), plain.bytes(endpoint));
        assert!(z > 0 && z * 3 < p, "{endpoint}: gzip {z} bytes, plain {p}");
    }
    assert_eq!(
        (gzip_store.host_count(), gzip_store.fingerprint_count()),
        (25, 75)
    );
    for id in 1..=25 {
        let (z, p) = (gzip_store.host(HostId(id)), plain_store.host(HostId(id)));
        let (z, p) = (z.unwrap(), p.unwrap());
        assert_eq!(z.fingerprints, p.fingerprints, "host {id}");
        let failing = |h: &fleet_authz::posture::HostPosture| {
            h.failing_policies().map(|p| p.id()).collect::<Vec<_>>()
        };
        assert_eq!(failing(&z), failing(&p), "host {id}");
        assert_eq!(failing(&z), gzip.host(id).failing(), "host {id}");
    }

    // A gzip body cut short is a failed cycle like any other broken body.
    gzip.set_fault("query_report", Fault::Truncated);
    gzip.remove_host(4);
    assert!(gzip_poller.poll_once().await.is_err());
    assert_eq!(gzip_store.lookup(&fingerprint(4, 0)).unwrap().id, HostId(4));
}

#[tokio::test]
async fn large_catalogue_uses_per_policy_membership() {
    let fake = FakeFleet::start(FakeSpec {
        hosts: 12,
        policies: 60,
        failing_percent: 20,
        ..FakeSpec::default()
    })
    .await;
    let (poller, store) = poller(&fake);
    let report = poller.poll_once().await.unwrap();
    assert_eq!(report.policies, 62);
    assert_eq!(report.membership, MembershipMode::PerPolicy);
    // One walk per policy (each fits one page), one hosts walk of two pages.
    assert_eq!(fake.count("hosts_failing_policy"), 62);
    assert_eq!(fake.count("hosts"), 2);
    for id in fake.host_ids() {
        let held = store.host(HostId(id)).unwrap();
        assert_eq!(
            held.policies.iter().map(|p| p.id()).collect::<Vec<_>>(),
            fake.host(id).failing(),
            "host {id}"
        );
        assert!(
            held.policies
                .iter()
                .all(|p| p.response == PolicyResponse::Fail)
        );
    }
    let critical = store
        .host(HostId(1))
        .unwrap()
        .policies
        .iter()
        .filter(|p| p.id() % 3 == 0)
        .all(|p| p.meta.critical);
    assert!(critical, "criticality comes from the catalogue");
}

#[tokio::test]
async fn membership_override_forces_per_policy() {
    let fake = FakeFleet::start(FakeSpec::default()).await;
    let mut config = fake.config();
    config.membership = MembershipMode::PerPolicy;
    let (poller, _store) = fake.poller(config);
    assert_eq!(
        poller.poll_once().await.unwrap().membership,
        MembershipMode::PerPolicy
    );
    assert_eq!(fake.count("hosts_failing_policy"), 5);
}

#[tokio::test]
async fn bad_sha1_rows_are_skipped_and_counted() {
    let fake = FakeFleet::start(FakeSpec::default()).await;
    fake.add_report_row(1, "not-a-sha1");
    // Empty: the host reported no certificate (not a malformed row).
    fake.add_report_row(2, "");
    let good = fingerprint(3, 9).to_hex();
    fake.add_report_row(3, &format!("{good}, also-not-a-sha1"));
    let (poller, store) = poller(&fake);
    let report = poller.poll_once().await.unwrap();
    assert_eq!((report.skipped_rows, report.fingerprints), (2, 21));
    assert_eq!(poller.handle().status().skipped_rows, 2);
    assert_eq!(store.host(HostId(1)).unwrap().fingerprints.len(), 2);
    assert_eq!(store.host(HostId(2)).unwrap().fingerprints.len(), 2);
    // The good value of a row that also held a bad one is kept.
    assert_eq!(store.lookup(&fingerprint(3, 9)).unwrap().id, HostId(3));
}

#[tokio::test]
async fn run_loop_syncs_at_start_and_on_demand_until_shutdown() {
    let fake = FakeFleet::start(FakeSpec::default()).await;
    let (poller, store) = poller(&fake);
    let handle = poller.handle();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(poller.run(async {
        let _ = stopped.await;
    }));
    fake.remove_host(1);
    let report = handle.sync_now().await.unwrap();
    assert_eq!(report.hosts, 9);
    assert_eq!(store.host_count(), 9);
    let status = handle.status();
    assert!(status.last_success.is_some());
    assert!(status.requests >= 6 && status.bytes > 0, "{status:?}");
    stop.send(()).unwrap();
    task.await.unwrap();
    assert_eq!(
        handle.sync_now().await.unwrap_err(),
        "fleet poller is not running"
    );
}

/// The recommended one-row-per-host query (`group_concat(sha1, ',')`),
/// from a Fleet that pages its reports: read page by page, every
/// fingerprint of every host found.
#[tokio::test]
async fn a_paged_one_row_per_host_report_is_read_page_by_page() {
    let fake = FakeFleet::start(FakeSpec {
        hosts: 25,
        fingerprints_per_host: 3,
        report_rows: ReportRows::PerHost,
        report_pages: true,
        ..FakeSpec::default()
    })
    .await;
    let (poller, store) = poller(&fake);
    let report = poller.poll_once().await.unwrap();
    assert_eq!((report.hosts, report.fingerprints), (25, 75));
    // 25 rows at 10 per page; the third page says there is no more.
    assert_eq!(fake.count("query_report"), 3);
    for id in 1..=25 {
        for k in 0..3 {
            assert_eq!(
                store.lookup(&fingerprint(id, k)).map(|h| h.id),
                Some(HostId(id))
            );
        }
    }
}
