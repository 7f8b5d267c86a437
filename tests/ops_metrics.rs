//! Prometheus `/metrics` moves with the service: decisions by decision,
//! reason and route, the latency histogram, hosts held, policy reloads.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::ops::{Env, POLICY, check, metric, scrape};

const UNKNOWN_DEFAULT: &str =
    r#"fleet_authz_decisions_total{decision="deny",reason="unknown_device",route="default"}"#;
const CRITICAL_DEFAULT: &str = r#"fleet_authz_decisions_total{decision="deny",reason="failing_critical_policy",route="default"}"#;
const ALLOW_DEFAULT: &str =
    r#"fleet_authz_decisions_total{decision="allow",reason="none",route="default"}"#;
const ANY_PAYROLL: &str =
    r#"fleet_authz_decisions_total{decision="deny",reason="failing_any_policy",route="payroll"}"#;
const LATENCY_COUNT: &str = "fleet_authz_check_duration_seconds_count";
const RELOAD_OK: &str = r#"fleet_authz_policy_reloads_total{result="success"}"#;
const RELOAD_FAILED: &str = r#"fleet_authz_policy_reloads_total{result="failure"}"#;

#[tokio::test]
async fn decision_counters_and_latency_move_by_exactly_the_checks_made() {
    let env = Env::new();
    let server = fleet_authz::server::start(env.config("")).await.unwrap();
    let (grpc, http) = (server.grpc_addr(), server.http_addr());

    let before = scrape(http).await;
    assert_eq!(metric(&before, "fleet_authz_hosts"), 2.0);
    assert_eq!(metric(&before, "fleet_authz_fingerprints"), 2.0);

    for _ in 0..3 {
        check(grpc, &env.unknown.pem, &[]).await;
    }
    for _ in 0..2 {
        check(grpc, &env.bad.pem, &[]).await;
    }
    check(grpc, &env.good.pem, &[]).await;
    check(grpc, &env.good.pem, &[("app", "payroll")]).await;

    let after = scrape(http).await;
    let delta = |series: &str| metric(&after, series) - metric(&before, series);
    assert_eq!(delta(UNKNOWN_DEFAULT), 3.0);
    assert_eq!(delta(CRITICAL_DEFAULT), 2.0);
    assert_eq!(delta(ALLOW_DEFAULT), 1.0);
    assert_eq!(delta(ANY_PAYROLL), 1.0);
    assert_eq!(delta(LATENCY_COUNT), 7.0);
    // Every Check is under the top bucket, +Inf.
    assert_eq!(
        delta(r#"fleet_authz_check_duration_seconds_bucket{le="+Inf"}"#),
        7.0
    );
    assert_eq!(
        delta(r#"fleet_authz_decision_reasons_total{reason="failing_any_policy",route="payroll"}"#),
        1.0
    );
    assert_eq!(metric(&after, "fleet_authz_hosts"), 2.0);
    server.shutdown().await;
}

#[tokio::test]
async fn policy_reload_counters_count_good_and_bad_reloads() {
    let env = Env::new();
    let server = fleet_authz::server::start(env.config("")).await.unwrap();
    let http = server.http_addr();
    let mut attempts = server.reloader.attempts();
    let before = scrape(http).await;

    // A good change: the watcher applies it once.
    std::fs::write(
        &env.policy,
        POLICY.replace("unknown_device: deny", "unknown_device: allow"),
    )
    .unwrap();
    tokio::time::timeout(Duration::from_secs(20), attempts.changed())
        .await
        .expect("the watcher reloads a changed policy")
        .unwrap();
    let good = scrape(http).await;
    assert_eq!(metric(&good, RELOAD_OK) - metric(&before, RELOAD_OK), 1.0);
    assert_eq!(metric(&good, RELOAD_FAILED), metric(&before, RELOAD_FAILED));

    // A bad change: counted as a failure, nothing applied.
    std::fs::write(&env.policy, "version: 1\ndefaults: {mode: sideways}\n").unwrap();
    tokio::time::timeout(Duration::from_secs(20), attempts.changed())
        .await
        .expect("the watcher tries the broken policy")
        .unwrap();
    let bad = scrape(http).await;
    assert_eq!(
        metric(&bad, RELOAD_FAILED) - metric(&before, RELOAD_FAILED),
        1.0
    );
    assert_eq!(metric(&bad, RELOAD_OK), metric(&good, RELOAD_OK));
    server.shutdown().await;
}

/// The bounds of the Check latency histogram's buckets, in `text`'s order.
fn latency_bounds(text: &str) -> Vec<f64> {
    text.lines()
        .filter_map(|l| l.strip_prefix(r#"fleet_authz_check_duration_seconds_bucket{le=""#))
        .filter_map(|l| l.split_once('"'))
        .filter(|(le, _)| *le != "+Inf")
        .map(|(le, _)| le.parse().unwrap())
        .collect()
}

#[tokio::test]
async fn check_latency_buckets_run_from_a_microsecond_to_a_second() {
    let env = Env::new();
    let server = fleet_authz::server::start(env.config("")).await.unwrap();
    check(server.grpc_addr(), &env.good.pem, &[]).await;
    let bounds = latency_bounds(&scrape(server.http_addr()).await);
    // A Check answered from memory takes µs: the first bucket is 1 µs and
    // each doubles, up to ~1 s for a recheck against Fleet.
    assert_eq!(bounds.len(), 21, "{bounds:?}");
    assert!((bounds[0] - 1e-6).abs() < 1e-12, "{bounds:?}");
    for pair in bounds.windows(2) {
        assert!((pair[1] / pair[0] - 2.0).abs() < 1e-9, "{bounds:?}");
    }
    assert!((bounds[20] - 1.048_576).abs() < 1e-9, "{bounds:?}");
    server.shutdown().await;
}
