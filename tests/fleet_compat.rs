//! Fleet's versions, licenses and answers as they really are (DESIGN.md
//! §7), through the whole service: unassigned (team 0) policies in both
//! membership modes, Fleet Free, a Fleet before the team 0 policies, the
//! renamed paths and an old Fleet's, 408, `Retry-After: 0` or none, 403,
//! and the `remediation_url` placeholders. Each test sends real Checks
//! before, through and after.

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
        FakeFleet, FakeSpec, Fault, FleetVersion,
        service::{Authz, check, deny_body, readyz, service_config, start, verdict},
    },
};
use tempfile::TempDir;

const CRITICAL: &str = "version: 1\ndefaults:\n  deny: {failing_critical_policy: true}\n";

async fn decide(client: &mut Authz, device: &Leaf) -> String {
    verdict(&check(client, &device.cert_pem).await)
}

/// A fake Fleet with `device` enrolled on host `host`.
async fn setup(spec: FakeSpec, host: u64) -> (FakeFleet, Leaf, TempDir) {
    let fake = FakeFleet::start(spec).await;
    let device = TestPki::new().device("laptop");
    fake.enrol(host, &device.fingerprint);
    (fake, device, TempDir::new().unwrap())
}

/// A host in no team failing an unassigned (team 0) critical policy is
/// denied in both membership modes; per-policy membership only sees it
/// because team 0's policies are in the catalogue. Team 0 is counted apart
/// from the teams: two team requests and one team 0 request per cycle.
#[tokio::test]
async fn a_no_team_host_failing_an_unassigned_policy_is_denied_in_both_membership_modes() {
    for membership in ["populate_policies", "per_policy"] {
        let spec = FakeSpec {
            hosts: 6,
            unassigned_policies: Some(1),
            ..FakeSpec::default()
        };
        // Host 3 is in no team (3 % 3 == 0).
        let (fake, device, dir) = setup(spec, 3).await;
        let membership_line = format!("membership: {membership}");
        let config = service_config(&fake, dir.path(), CRITICAL, &[&membership_line], &[]);
        let (server, mut client) = start(config).await;
        let fleet = server.fleet.clone().unwrap();
        assert_eq!(decide(&mut client, &device).await, "allow", "{membership}");
        assert_eq!(
            (
                fake.count("team_policies"),
                fake.count("unassigned_policies")
            ),
            (2, 1)
        );

        fake.update_host(3, |h| {
            h.responses.insert(2001, "fail".into());
        });
        fleet.sync_now().await.unwrap();
        assert_eq!(
            decide(&mut client, &device).await,
            "failing_critical_policy",
            "{membership}"
        );
        fake.update_host(3, |h| {
            h.responses.insert(2001, "pass".into());
        });
        fleet.sync_now().await.unwrap();
        assert_eq!(decide(&mut client, &device).await, "allow", "{membership}");
        server.shutdown().await;
    }
}

/// Fleet Free answers teams with 402: no team or team 0 request follows,
/// and global policies still decide. A Fleet from before team 0 policies
/// answers team 0 with 404: there are none, and the sync goes on.
#[tokio::test]
async fn fleet_free_and_a_fleet_without_team_0_sync_with_no_unassigned_policies() {
    let free = FakeSpec {
        premium: false,
        ..FakeSpec::default()
    };
    let before_team_0 = FakeSpec {
        unassigned_policies: None,
        ..FakeSpec::default()
    };
    for (spec, team_requests) in [(free, (0, 0)), (before_team_0, (2, 1))] {
        let (fake, device, dir) = setup(spec, 1).await;
        let config = service_config(&fake, dir.path(), CRITICAL, &[], &[]);
        let (server, mut client) = start(config).await;
        assert_eq!(
            (
                fake.count("team_policies"),
                fake.count("unassigned_policies")
            ),
            team_requests
        );
        assert_eq!(decide(&mut client, &device).await, "allow");
        // Policy 3 is global and critical.
        fake.update_host(1, |h| {
            h.responses.insert(3, "fail".into());
        });
        server.fleet.clone().unwrap().sync_now().await.unwrap();
        assert_eq!(
            decide(&mut client, &device).await,
            "failing_critical_policy"
        );
        server.shutdown().await;
    }
}

/// An old Fleet knows only `/teams` and `/queries`: each cycle asks the new
/// path of each family once, takes the 404 and stays on the old paths.
/// Upgraded, it is followed at the next cycle without another 404.
#[tokio::test]
async fn an_old_fleet_is_read_on_the_old_paths_falling_back_once_per_cycle() {
    let spec = FakeSpec {
        version: FleetVersion::Legacy,
        ..FakeSpec::default()
    };
    let (fake, device, dir) = setup(spec, 2).await;
    let config = service_config(&fake, dir.path(), CRITICAL, &[], &[]);
    let (server, mut client) = start(config).await;
    let fleet = server.fleet.clone().unwrap();
    assert_eq!(decide(&mut client, &device).await, "allow");
    // One 404 for /reports (the query), one for /fleets (the teams list).
    assert_eq!(
        (fake.path_count("unknown"), fake.path_count("renamed")),
        (2, 0)
    );
    // The query, its report, teams, two teams' and team 0's policies.
    assert_eq!(fake.path_count("legacy"), 6);

    fake.update_host(2, |h| {
        h.responses.insert(3, "fail".into());
    });
    fleet.sync_now().await.unwrap();
    assert_eq!(
        decide(&mut client, &device).await,
        "failing_critical_policy"
    );
    assert_eq!(
        (fake.path_count("unknown"), fake.path_count("legacy")),
        (4, 12)
    );

    fake.set_version(FleetVersion::Renamed);
    fake.reset_counts();
    fake.update_host(2, |h| {
        h.responses.insert(3, "pass".into());
    });
    fleet.sync_now().await.unwrap();
    assert_eq!(decide(&mut client, &device).await, "allow");
    let sets = ["unknown", "legacy", "renamed"].map(|s| fake.path_count(s));
    assert_eq!(sets, [0, 0, 6]);
    server.shutdown().await;
}

/// 408 is retried within the cycle, which then publishes what Fleet says.
/// A 429 with `Retry-After: 0`, or with none, waits the minimum backoff
/// (100-200 ms by default) before its retry, never zero.
#[tokio::test]
async fn timeouts_408_and_rate_limits_without_a_wait_are_retried_after_the_backoff() {
    let (fake, device, dir) = setup(FakeSpec::default(), 4).await;
    let config = service_config(&fake, dir.path(), CRITICAL, &[], &[]);
    let (server, mut client) = start(config).await;
    let fleet = server.fleet.clone().unwrap();
    let limited = Fault::RateLimited {
        retry_after_secs: 0,
    };
    for (n, fault) in [Fault::Status(408), limited, Fault::Status(429)]
        .into_iter()
        .enumerate()
    {
        let failing = if n % 2 == 0 { "fail" } else { "pass" };
        fake.update_host(4, |h| {
            h.responses.insert(3, failing.into());
        });
        fake.reset_counts();
        fake.set_fault_times("hosts", fault.clone(), 1);
        let started = Instant::now();
        fleet.sync_now().await.unwrap();
        let waited = started.elapsed();
        // 10 hosts at 10 per page: pages 0 and 1, plus the retried one.
        assert_eq!(fake.count("hosts"), 3, "{fault:?}");
        assert!(
            waited >= Duration::from_millis(100),
            "{fault:?}: {waited:?}"
        );
        let expected = if n % 2 == 0 {
            "failing_critical_policy"
        } else {
            "allow"
        };
        assert_eq!(decide(&mut client, &device).await, expected, "{fault:?}");
    }
    server.shutdown().await;
}

/// 403 means the token's user lacks a role: not retried, the message names
/// the role needed, the last good posture keeps deciding, and the cycle
/// after the role is granted publishes.
#[tokio::test]
async fn a_403_names_the_role_needed_and_is_not_retried() {
    let (fake, device, dir) = setup(FakeSpec::default(), 5).await;
    let config = service_config(&fake, dir.path(), CRITICAL, &[], &[]);
    let (server, mut client) = start(config).await;
    let fleet = server.fleet.clone().unwrap();
    fake.reset_counts();
    fake.set_fault("hosts", Fault::Status(403));
    fake.update_host(5, |h| {
        h.responses.insert(3, "fail".into());
    });
    let err = fleet.sync_now().await.unwrap_err();
    assert_eq!(
        err,
        "fleet hosts: access denied (status 403): the api token's user cannot read this; \
         use an api-only user with the global observer role"
    );
    assert_eq!(fake.count("hosts"), 1);
    assert_eq!(decide(&mut client, &device).await, "allow");
    assert!(readyz(&server).await.1.contains("global observer role"));

    fake.clear_faults();
    fleet.sync_now().await.unwrap();
    assert_eq!(
        decide(&mut client, &device).await,
        "failing_critical_policy"
    );
    server.shutdown().await;
}

/// `remediation_url` is filled with the device's Fleet id, UUID and
/// hardware serial (percent-encoded), and left empty for an unknown device.
#[tokio::test]
async fn remediation_url_placeholders_are_filled_from_fleet() {
    let (fake, device, dir) = setup(FakeSpec::default(), 5).await;
    fake.update_host(5, |h| {
        h.serial = "SN 5/B".into();
        h.responses.insert(3, "fail".into());
    });
    let url = "remediation_url: \"https://it.example.com/help?host={host_id}&uuid={host_uuid}&serial={hardware_serial}\"";
    let config = service_config(&fake, dir.path(), CRITICAL, &[], &[url]);
    let (server, mut client) = start(config).await;
    let body = deny_body(&check(&mut client, &device.cert_pem).await);
    assert_eq!(
        body["remediation_url"],
        "https://it.example.com/help?host=5&uuid=00000000-0000-0000-0000-000000000005&serial=SN%205%2FB"
    );
    let stranger = TestPki::new().device("stranger");
    let body = deny_body(&check(&mut client, &stranger.cert_pem).await);
    assert_eq!(
        body["remediation_url"],
        "https://it.example.com/help?host=&uuid=&serial="
    );
    server.shutdown().await;
}

/// A placeholder other than the three is a configuration error at start:
/// exit code 64, one message naming the file, the key and the placeholder.
#[test]
fn an_unknown_remediation_placeholder_stops_the_start_with_exit_64() {
    let dir = TempDir::new().unwrap();
    let d = dir.path();
    std::fs::write(d.join("policy.yaml"), CRITICAL).unwrap();
    std::fs::write(d.join("token"), "t\n").unwrap();
    let config = d.join("config.yaml");
    std::fs::write(
        &config,
        format!(
            "fleet: {{url: \"https://fleet.example.com\", token_file: {0}/token, certificate_query_id: 42}}\n\
             policy_file: {0}/policy.yaml\n\
             remediation_url: \"https://fleet.example.com/device/{{device_token}}\"\n",
            d.display()
        ),
    )
    .unwrap();
    for command in ["check-config", "serve"] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_fleet-authz"))
            .args([command, "--config"])
            .arg(&config)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(64), "{command}");
        assert_eq!(
            String::from_utf8_lossy(&out.stderr).trim_end(),
            format!(
                "invalid configuration: {}: remediation_url: unknown placeholder `{{device_token}}` \
                 in `https://fleet.example.com/device/{{device_token}}`; placeholders are \
                 {{host_id}}, {{host_uuid}}, {{hardware_serial}}",
                config.display()
            ),
            "{command}"
        );
    }
}
