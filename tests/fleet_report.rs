//! The certificate report as a real Fleet keeps it (DESIGN.md §7), through
//! the whole service: the row cap and Fleet's row rules, the certificate
//! query's own settings, and the shrink guard (a report Fleet cleared when
//! the query's SQL was edited, a token moved to one team). Each test sends
//! real Checks before, through and after the quirk.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "tests: a failure panics the test"
)]

mod common;

use common::{
    certs::{Leaf, TestPki},
    fake_fleet::{
        FakeFleet, FakeQuery, FakeSpec, HOST_ROW_LIMIT, ReportRows, fingerprint,
        service::{Authz, check, metrics, post_sync, readyz, service_config, start, verdict},
    },
};
use fleet_authz::{config::Config, posture::HostId, server::RunningServer};
use tempfile::TempDir;

const POLICY: &str = "version: 1\ndefaults:\n  deny: {failing_any_policy: true}\n";

/// A fake Fleet with `device` enrolled on host `host`, and a config for it.
async fn setup(spec: FakeSpec, host: u64) -> (FakeFleet, Leaf, TempDir) {
    let fake = FakeFleet::start(spec).await;
    let device = TestPki::new().device("laptop");
    fake.enrol(host, &device.fingerprint);
    (fake, device, TempDir::new().unwrap())
}

fn config(fake: &FakeFleet, dir: &TempDir) -> Config {
    service_config(fake, dir.path(), POLICY, &[], &[])
}

/// A change to the certificate query's settings.
type Spoil = fn(&mut Option<FakeQuery>);

async fn decide(client: &mut Authz, device: &Leaf) -> String {
    verdict(&check(client, &device.cert_pem).await)
}

/// Host `id`'s posture as published.
fn held(server: &RunningServer, id: u64) -> std::sync::Arc<fleet_authz::posture::HostPosture> {
    server.authorizer.store.host(HostId(id)).unwrap()
}

/// Fleet keeps `report_cap` rows; a report that reaches it leaves later
/// hosts out. Left-out hosts keep their fingerprints (and their fresh
/// policy results), reported hosts take exactly what Fleet reports, and the
/// clip shows in a warning, two gauges and `/readyz`, until the cap is raised.
#[tokio::test]
async fn a_clipped_report_keeps_left_out_hosts_and_says_so_until_the_cap_is_raised() {
    let spec = FakeSpec {
        hosts: 6,
        cap_at_least_hosts: false,
        ..FakeSpec::default()
    };
    // Host 5 holds the device's certificate: three rows.
    let (fake, device, dir) = setup(spec, 5).await;
    let (server, mut client) = start(config(&fake, &dir)).await;
    let fleet = server.fleet.clone().unwrap();
    assert_eq!(decide(&mut client, &device).await, "allow");

    // Hosts 1-4 send 8 rows; hosts 5 and 6 no longer fit. Host 2 replaced a
    // certificate, and host 5 now fails a policy.
    fake.set_report_cap(8, false);
    fake.update_host(2, |h| h.certs[1] = fingerprint(2, 7).to_hex());
    fake.update_host(5, |h| {
        h.responses.insert(1, "fail".into());
    });
    let report = fleet.sync_now().await.unwrap();
    assert!(report.clipped);
    assert_eq!(
        (report.kept_fingerprints, report.hosts_without_fingerprint),
        (2, 0)
    );
    assert_eq!(decide(&mut client, &device).await, "failing_any_policy");
    let store = &server.authorizer.store;
    assert_eq!(store.lookup(&fingerprint(2, 1)), None, "host 2 dropped it");
    assert_eq!(store.lookup(&fingerprint(2, 7)).unwrap().id, HostId(2));
    assert_eq!(store.lookup(&fingerprint(6, 0)).unwrap().id, HostId(6));
    let (status, body) = readyz(&server).await;
    assert_eq!(status, 200);
    assert!(
        body.contains(
            "degraded: fleet certificate report clipped (report_clipped: true): 2 hosts missing \
             from it keep their last known fingerprints"
        ),
        "{body}"
    );
    let m = metrics(&server).await;
    for line in [
        "fleet_authz_fleet_report_clipped 1",
        "fleet_authz_hosts_without_fingerprint 0",
        "fleet_authz_report_clipped_total 1",
    ] {
        assert!(m.contains(line), "{line}: {m}");
    }

    fake.set_report_cap(1000, true);
    fake.update_host(5, |h| {
        h.responses.insert(1, "pass".into());
    });
    assert!(!fleet.sync_now().await.unwrap().clipped);
    assert_eq!(decide(&mut client, &device).await, "allow");
    assert!(!readyz(&server).await.1.contains("degraded"));
    assert!(
        metrics(&server)
            .await
            .contains("fleet_authz_fleet_report_clipped 0")
    );
    server.shutdown().await;
}

/// Fleet drops every row of a host that sends more than 1,000, without
/// clipping the report: that device is unknown (fail closed) and counted in
/// `fleet_authz_hosts_without_fingerprint`. The one-row-per-host query brings
/// it back.
#[tokio::test]
async fn a_host_over_fleets_row_limit_is_unknown_until_the_query_sends_one_row_per_host() {
    let (fake, device, dir) = setup(FakeSpec::default(), 1).await;
    fake.update_host(1, |h| {
        let more = (10..10 + HOST_ROW_LIMIT).map(|k| fingerprint(1, k).to_hex());
        h.certs.extend(more);
    });
    let (server, mut client) = start(config(&fake, &dir)).await;
    let fleet = server.fleet.clone().unwrap();
    // A cycle run to its end, gauges included (the first one may still be
    // finishing its bookkeeping when the posture is in).
    let report = fleet.sync_now().await.unwrap();
    assert_eq!(
        (report.clipped, report.hosts_without_fingerprint),
        (false, 1)
    );
    assert_eq!(decide(&mut client, &device).await, "unknown_device");
    assert!(
        metrics(&server)
            .await
            .contains("fleet_authz_hosts_without_fingerprint 1")
    );

    fake.set_report_rows(ReportRows::PerHost);
    let report = fleet.sync_now().await.unwrap();
    assert_eq!(report.hosts_without_fingerprint, 0);
    assert_eq!(held(&server, 1).fingerprints.len(), HOST_ROW_LIMIT + 3);
    assert_eq!(decide(&mut client, &device).await, "allow");
    server.shutdown().await;
}

/// A deleted certificate query, `discard_data: true` or a logging type
/// other than snapshot fails the cycle with a message naming that setting;
/// the last good posture keeps deciding; fixing the query recovers.
#[tokio::test]
async fn query_settings_that_spoil_the_report_fail_the_cycle_naming_the_setting() {
    let (fake, device, dir) = setup(FakeSpec::default(), 2).await;
    let (server, mut client) = start(config(&fake, &dir)).await;
    let fleet = server.fleet.clone().unwrap();
    let cases: [(&str, Spoil); 3] = [
        ("certificate_query_id 42 not found", |q| *q = None),
        (
            "certificate query 42: discard_data is true; Fleet then stores no report for it; \
             set discard_data: false",
            |q| q.as_mut().unwrap().discard_data = true,
        ),
        (
            "certificate query 42: logging is differential; Fleet keeps a report of current \
             results only with logging: snapshot",
            |q| q.as_mut().unwrap().logging = "differential".into(),
        ),
    ];
    for (message, spoil) in cases {
        fake.update_query(spoil);
        fake.update_host(2, |h| {
            h.responses.insert(1, "fail".into());
        });
        assert_eq!(fleet.sync_now().await.unwrap_err(), message);
        assert_eq!(decide(&mut client, &device).await, "allow", "{message}");
        let (status, body) = readyz(&server).await;
        assert_eq!(status, 200);
        assert!(
            body.contains(&format!("warning: fleet sync failed: {message}")),
            "{body}"
        );

        fake.update_query(|q| *q = Some(FakeQuery::default()));
        fleet.sync_now().await.unwrap();
        assert_eq!(decide(&mut client, &device).await, "failing_any_policy");
        fake.update_host(2, |h| {
            h.responses.insert(1, "pass".into());
        });
        fleet.sync_now().await.unwrap();
        assert_eq!(decide(&mut client, &device).await, "allow");
    }
    server.shutdown().await;
}

/// Editing the query's SQL makes Fleet delete its rows: the cycle that sees
/// no fingerprints is held back, and the device keeps getting in. Once
/// hosts report again the next cycle publishes. `accept_drop` publishes one
/// held-back cycle, once.
#[tokio::test]
async fn a_report_cleared_by_an_sql_edit_is_held_back_unless_the_drop_is_accepted() {
    let (fake, device, dir) = setup(FakeSpec::default(), 4).await;
    let (server, mut client) = start(config(&fake, &dir)).await;
    let fleet = server.fleet.clone().unwrap();
    let refill = |fake: &FakeFleet| {
        for id in fake.host_ids() {
            fake.update_host(id, |h| h.in_report = true);
        }
    };

    fake.clear_report();
    let err = fleet.sync_now().await.unwrap_err();
    assert_eq!(
        err,
        "fleet sync not published: fingerprints fell from 21 to 0, more than fleet.max_drop \
         (0.5) allows; if Fleet is right, POST /v1/sync {\"accept_drop\": true} publishes it"
    );
    assert_eq!(decide(&mut client, &device).await, "allow");
    assert!(readyz(&server).await.1.contains(&err));
    let held = metrics(&server).await;
    assert!(held.contains("fleet_authz_syncs_total{result=\"failure\"} 1"));
    assert!(
        held.contains("\nfleet_authz_shrink_guard_holding 1\n"),
        "{held}"
    );
    // fleet.max_staleness's default (15m), for the posture-age alerts.
    assert!(
        held.contains("\nfleet_authz_max_staleness_seconds 900.0\n"),
        "{held}"
    );
    refill(&fake);
    assert_eq!(fleet.sync_now().await.unwrap().fingerprints, 21);
    let released = metrics(&server).await;
    assert!(
        released.contains("\nfleet_authz_shrink_guard_holding 0\n"),
        "{released}"
    );

    // The operator knows the drop is real: publish it, once.
    fake.clear_report();
    let (status, answer) = post_sync(&server, "{\"accept_drop\": true}").await;
    assert_eq!((status, &answer["ok"]), (200, &serde_json::json!(true)));
    // A drop the operator accepted is published: the guard no longer holds.
    assert!(
        metrics(&server)
            .await
            .contains("\nfleet_authz_shrink_guard_holding 0\n")
    );
    assert_eq!(decide(&mut client, &device).await, "unknown_device");
    refill(&fake);
    let (status, _) = post_sync(&server, "").await;
    assert_eq!(status, 200);
    assert_eq!(decide(&mut client, &device).await, "allow");
    fake.clear_report();
    let (status, answer) = post_sync(&server, "{}").await;
    assert_eq!(status, 502);
    assert!(
        answer["error"]
            .as_str()
            .unwrap()
            .contains("fell from 21 to 0"),
        "{answer}"
    );
    assert_eq!(decide(&mut client, &device).await, "allow");
    let (status, answer) = post_sync(&server, "{\"accept_drops\": true}").await;
    assert_eq!(status, 400);
    assert!(
        answer["error"].as_str().unwrap().contains("accept_drops"),
        "{answer}"
    );
    server.shutdown().await;
}

/// The token's user moved to a team-scoped role sees a third of the hosts:
/// the cycle is held back, every device keeps its decision, and the token
/// back at global scope recovers.
#[tokio::test]
async fn a_token_that_sees_one_team_trips_the_shrink_guard() {
    let spec = FakeSpec {
        hosts: 9,
        ..FakeSpec::default()
    };
    // Host 1 is in team 1; the token will see only team 2.
    let (fake, device, dir) = setup(spec, 1).await;
    let (server, mut client) = start(config(&fake, &dir)).await;
    let fleet = server.fleet.clone().unwrap();
    fake.scope_token_to_team(Some(2));
    let err = fleet.sync_now().await.unwrap_err();
    assert!(err.contains("hosts fell from 9 to 3"), "{err}");
    assert_eq!(decide(&mut client, &device).await, "allow");
    assert_eq!(server.authorizer.store.host_count(), 9);

    fake.scope_token_to_team(None);
    fake.update_host(1, |h| {
        h.responses.insert(2, "fail".into());
    });
    assert_eq!(fleet.sync_now().await.unwrap().hosts, 9);
    assert_eq!(decide(&mut client, &device).await, "failing_any_policy");
    server.shutdown().await;
}
