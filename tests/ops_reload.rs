//! Hot reload: in-place edits, Kubernetes ConfigMap symlink swaps, bad files
//! (the last good policy stays, the failure is logged and counted) and the
//! SIGHUP path (`reload_all`). Waits on the reloader's attempt counter, never
//! on a fixed sleep.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::{
    io::Write,
    path::Path,
    sync::Arc,
    time::{Duration, SystemTime},
};

use arc_swap::ArcSwap;
use common::ops::{Captured, Env, POLICY, allowed, check, metric, reason_header, scrape};
use fleet_authz::{
    policy::load_policy,
    posture::PostureStore,
    server::reload::{ReloadOutcome, Reloader},
    server::{RunningServer, start},
    telemetry::metrics::Metrics,
};

/// The default route also denies on any failing policy: host 101 (`good`)
/// fails a minor one, so it flips from allow to deny.
fn strict() -> String {
    POLICY.replace(
        "    failing_critical_policy: true\nroutes:",
        "    failing_critical_policy: true\n    failing_any_policy: true\nroutes:",
    )
}

/// Waits until a Check for `pem` answers `want`, re-checking after each
/// reload attempt.
async fn wait_for_decision(server: &RunningServer, pem: &str, want: bool) {
    let mut attempts = server.reloader.attempts();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        if allowed(&check(server.grpc_addr(), pem, &[]).await) == want {
            return;
        }
        tokio::time::timeout_at(deadline, attempts.changed())
            .await
            .expect("the watcher never applied the change")
            .unwrap();
    }
}

#[tokio::test]
async fn a_policy_edited_in_place_governs_the_next_checks() {
    let env = Env::new();
    let server = start(env.config("")).await.unwrap();
    assert!(allowed(
        &check(server.grpc_addr(), &env.good.pem, &[]).await
    ));

    // Rewrite the same inode, as `vi` with `backupcopy=yes` or `>` does.
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(&env.policy)
        .unwrap();
    file.write_all(strict().as_bytes()).unwrap();
    file.sync_all().unwrap();
    drop(file);

    wait_for_decision(&server, &env.good.pem, false).await;
    let denied = check(server.grpc_addr(), &env.good.pem, &[]).await;
    assert_eq!(reason_header(&denied), "failing_any_policy");
    server.shutdown().await;
}

/// Lays out a directory the way the kubelet mounts a ConfigMap.
fn configmap_version(dir: &Path, version: &str, policy: &str) {
    let data = dir.join(version);
    std::fs::create_dir(&data).unwrap();
    std::fs::write(data.join("policy.yaml"), policy).unwrap();
}

#[tokio::test]
async fn a_configmap_symlink_swap_is_picked_up() {
    let env = Env::new();
    let cm = env.dir.path().join("configmap");
    std::fs::create_dir(&cm).unwrap();
    configmap_version(&cm, "..2026_01_01_00_00_00.1", POLICY);
    std::os::unix::fs::symlink("..2026_01_01_00_00_00.1", cm.join("..data")).unwrap();
    std::os::unix::fs::symlink("..data/policy.yaml", cm.join("policy.yaml")).unwrap();
    let server = start(env.config_with_policy(&cm.join("policy.yaml"), ""))
        .await
        .unwrap();
    assert!(allowed(
        &check(server.grpc_addr(), &env.good.pem, &[]).await
    ));

    // The kubelet's update: a new timestamped dir, a new `..data_tmp` link,
    // renamed atomically over `..data`. `policy.yaml` itself never changes.
    configmap_version(&cm, "..2026_01_02_00_00_00.2", &strict());
    std::os::unix::fs::symlink("..2026_01_02_00_00_00.2", cm.join("..data_tmp")).unwrap();
    std::fs::rename(cm.join("..data_tmp"), cm.join("..data")).unwrap();
    std::fs::remove_dir_all(cm.join("..2026_01_01_00_00_00.1")).unwrap();

    wait_for_decision(&server, &env.good.pem, false).await;
    server.shutdown().await;
}

#[tokio::test]
async fn a_bad_policy_keeps_the_last_good_one_and_is_counted() {
    let env = Env::new();
    let server = start(env.config("")).await.unwrap();
    let mut attempts = server.reloader.attempts();
    let failures = r#"fleet_authz_policy_reloads_total{result="failure"}"#;
    let before = metric(&scrape(server.http_addr()).await, failures);

    std::fs::write(
        &env.policy,
        "version: 1\nroutes: [{name: x, match: {}}]\nbogus: true\n",
    )
    .unwrap();
    tokio::time::timeout(Duration::from_secs(20), attempts.changed())
        .await
        .expect("the watcher tries the new file")
        .unwrap();

    let after = metric(&scrape(server.http_addr()).await, failures);
    assert_eq!(after - before, 1.0);
    // Still the original policy: good allowed, bad denied on the critical policy.
    assert!(allowed(
        &check(server.grpc_addr(), &env.good.pem, &[]).await
    ));
    let denied = check(server.grpc_addr(), &env.bad.pem, &[]).await;
    assert_eq!(reason_header(&denied), "failing_critical_policy");
    server.shutdown().await;
}

/// A reloader on its own (no watcher), so every reload below is the one the
/// test asked for: what SIGHUP runs, including changes made while nothing
/// watched.
fn standalone(
    env: &Env,
) -> (
    Reloader,
    Arc<ArcSwap<fleet_authz::policy::Policy>>,
    Arc<Metrics>,
) {
    let policy = Arc::new(ArcSwap::from_pointee(load_policy(&env.policy).unwrap()));
    let store = Arc::new(PostureStore::new());
    let now = SystemTime::now();
    store.replace_all(
        fleet_authz::posture::load_posture_file(&env.posture, now)
            .unwrap()
            .hosts,
        now,
    );
    let metrics = Arc::new(Metrics::new());
    let reloader = Reloader::new(
        env.policy.clone(),
        Arc::clone(&policy),
        Some(env.posture.clone()),
        store,
        Arc::clone(&metrics),
    );
    (reloader, policy, metrics)
}

#[test]
fn reload_all_applies_changes_made_while_unwatched_and_logs_failures() {
    let env = Env::new();
    let (reloader, policy, metrics) = standalone(&env);
    assert_eq!(
        reloader.reload_all(),
        (ReloadOutcome::Unchanged, ReloadOutcome::Unchanged)
    );

    std::fs::write(&env.policy, strict()).unwrap();
    assert_eq!(
        reloader.reload_all(),
        (ReloadOutcome::Applied, ReloadOutcome::Unchanged)
    );
    assert!(policy.load().default.deny.failing_any_policy);
    assert_eq!(
        reloader.reload_all(),
        (ReloadOutcome::Unchanged, ReloadOutcome::Unchanged)
    );

    std::fs::write(&env.policy, "version: 2\n").unwrap();
    let logs = Captured::default();
    let subscriber = tracing_subscriber::fmt()
        .with_writer({
            let logs = logs.clone();
            move || logs.clone()
        })
        .with_ansi(false)
        .finish();
    let (outcome, _) = tracing::subscriber::with_default(subscriber, || reloader.reload_all());
    let ReloadOutcome::Failed(error) = outcome else {
        panic!("a bad policy must fail, got {outcome:?}");
    };
    assert!(error.contains("policy.yaml"), "{error}");
    assert!(
        policy.load().default.deny.failing_any_policy,
        "the last good policy stays"
    );
    let text = logs.text();
    assert!(text.contains("ERROR"), "{text}");
    assert!(
        text.contains("reload failed; keeping the last good version"),
        "{text}"
    );
    assert!(text.contains("policy.yaml"), "{text}");
    assert!(
        metrics
            .encode()
            .contains("fleet_authz_policy_reloads_total{result=\"failure\"} 1\n")
    );
    assert!(
        metrics
            .encode()
            .contains("fleet_authz_policy_reloads_total{result=\"success\"} 1\n")
    );
}
