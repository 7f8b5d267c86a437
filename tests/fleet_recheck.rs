//! The live recheck against the fake Fleet: fresh after remediation, the
//! budget, single flight, the concurrency cap.

mod common;

use std::{sync::Arc, time::Duration};

use common::fake_fleet::{CVE, FakeFleet, FakeSpec, Fault, STREAM_ERROR, fingerprint};
use fleet_authz::{
    fleet::{FleetConfig, FleetError, Poller, PollerHandle, Recheck, RecheckOutcome, SkipReason},
    posture::{HostId, PostureStore},
};

struct Setup {
    fake: FakeFleet,
    store: Arc<PostureStore>,
    poller: PollerHandle,
    /// The poller itself, for a full sync in a test.
    sync: Poller,
    recheck: Arc<Recheck>,
}

async fn setup(max_concurrent: u32) -> Setup {
    let fake = FakeFleet::start(FakeSpec {
        failing_percent: 60,
        ..FakeSpec::default()
    })
    .await;
    let mut config: FleetConfig = fake.config();
    config.recheck.max_concurrent = max_concurrent;
    // Held requests must not time out and retry behind a test's back.
    config.request_timeout = Duration::from_secs(10);
    let client = Arc::new(fake.client(&config));
    let store = Arc::new(PostureStore::new());
    let poller = Poller::new(Arc::clone(&client), Arc::clone(&store), &config);
    poller.poll_once().await.unwrap_or_else(|e| panic!("{e}"));
    let recheck = Recheck::new(client, Arc::clone(&store), &config.recheck)
        .with_watched_cves(poller.handle());
    Setup {
        fake,
        store,
        poller: poller.handle(),
        sync: poller,
        recheck: Arc::new(recheck),
    }
}

fn failing_host(s: &Setup) -> HostId {
    let id = s
        .fake
        .host_ids()
        .into_iter()
        .find(|id| !s.fake.host(*id).failing().is_empty())
        .unwrap_or_else(|| panic!("the fake has no failing host"));
    HostId(id)
}

#[tokio::test]
async fn remediated_host_is_fresh_after_recheck() {
    let s = setup(16).await;
    let id = failing_host(&s);
    let synced_at = s.store.synced_at();
    assert!(s.store.host(id).unwrap().failing_policies().count() > 0);
    assert!(
        !s.recheck.needs_recheck(id, std::time::SystemTime::now()),
        "just synced"
    );

    s.fake.update_host(id.0, |h| {
        h.responses.values_mut().for_each(|r| *r = "pass".into())
    });
    let RecheckOutcome::Fresh(host) = s.recheck.recheck(id, Duration::from_secs(5)).await else {
        panic!("expected a fresh host");
    };
    assert_eq!(host.failing_policies().count(), 0);
    assert_eq!(host.policies.len(), s.fake.host(id.0).responses.len());
    assert_eq!(
        s.store.host(id).unwrap(),
        host,
        "the store holds the fresh posture"
    );
    // The host endpoint has no certificates: the store's fingerprints stay.
    assert_eq!(s.store.lookup(&fingerprint(id.0, 0)).unwrap().id, id);
    assert_eq!(
        s.store.synced_at(),
        synced_at,
        "one host does not make the sync fresh"
    );
    assert_eq!(s.fake.count("host"), 1);
}

#[tokio::test]
async fn recheck_refreshes_watched_cves_from_software() {
    let s = setup(16).await;
    // Host 4 has the CVE in Fleet, but nothing was watched at the sync.
    assert!(s.store.host(HostId(4)).unwrap().cves.is_empty());
    s.poller.set_cves(vec![CVE.to_owned()]);
    let RecheckOutcome::Fresh(host) = s.recheck.recheck(HostId(4), Duration::from_secs(5)).await
    else {
        panic!("expected a fresh host");
    };
    assert_eq!(
        host.cves.iter().map(|c| c.to_string()).collect::<Vec<_>>(),
        [CVE]
    );
    // Patched in Fleet: a recheck cannot tell a software CVE from an OS
    // one (host detail shows no OS CVEs), so it keeps it; the next full
    // sync drops it.
    s.fake.update_host(4, |h| h.cves.clear());
    let RecheckOutcome::Fresh(host) = s.recheck.recheck(HostId(4), Duration::from_secs(5)).await
    else {
        panic!("expected a fresh host");
    };
    assert_eq!(
        host.cves.iter().map(|c| c.to_string()).collect::<Vec<_>>(),
        [CVE]
    );
    assert_eq!(s.fake.count("host"), 2);
    s.sync.poll_once().await.unwrap();
    assert!(s.store.host(HostId(4)).unwrap().cves.is_empty());
}

#[tokio::test]
async fn recheck_keeps_os_cves_that_host_detail_does_not_carry() {
    const OS_CVE: &str = "CVE-2025-43300";
    let s = setup(16).await;
    s.fake
        .update_host(3, |h| h.os_cves = vec![OS_CVE.to_owned()]);
    s.poller.set_cves(vec![OS_CVE.to_owned()]);
    s.sync.poll_once().await.unwrap();
    let cves = |h: &fleet_authz::posture::HostPosture| {
        h.cves.iter().map(|c| c.to_string()).collect::<Vec<_>>()
    };
    assert_eq!(cves(&s.store.host(HostId(3)).unwrap()), [OS_CVE]);
    let RecheckOutcome::Fresh(host) = s.recheck.recheck(HostId(3), Duration::from_secs(5)).await
    else {
        panic!("expected a fresh host");
    };
    assert_eq!(cves(&host), [OS_CVE]);
    assert_eq!(cves(&s.store.host(HostId(3)).unwrap()), [OS_CVE]);
}

#[tokio::test]
async fn unknown_host_fails_without_touching_the_store() {
    let s = setup(16).await;
    assert_eq!(
        s.recheck.recheck(HostId(999), Duration::from_secs(5)).await,
        RecheckOutcome::Failed(FleetError::HostNotFound(999))
    );
    assert_eq!(
        (s.store.host(HostId(999)), s.store.host_count()),
        (None, 10)
    );
}

/// Host detail with an error inside the 200, or a 403 (the token's user may
/// not read that host), fails the recheck and leaves the store alone; the
/// next recheck after Fleet recovers is fresh.
#[tokio::test]
async fn an_error_inside_a_200_or_a_403_fails_the_recheck_without_touching_the_store() {
    let s = setup(16).await;
    let id = failing_host(&s);
    let before = s.store.host(id).unwrap();
    s.fake.update_host(id.0, |h| {
        h.responses.values_mut().for_each(|r| *r = "pass".into())
    });
    let failures = [
        (
            Fault::ErrorField,
            FleetError::InBody {
                endpoint: "host",
                message: STREAM_ERROR.into(),
            },
        ),
        (
            Fault::Status(403),
            FleetError::Forbidden { endpoint: "host" },
        ),
    ];
    for (fault, error) in failures {
        s.fake.set_fault("host", fault);
        assert_eq!(
            s.recheck.recheck(id, Duration::from_secs(5)).await,
            RecheckOutcome::Failed(error)
        );
        assert_eq!(s.store.host(id).unwrap(), before);
    }
    s.fake.clear_faults();
    let RecheckOutcome::Fresh(fresh) = s.recheck.recheck(id, Duration::from_secs(5)).await else {
        panic!("no fresh host");
    };
    assert_eq!(fresh.failing_policies().count(), 0);
}

#[tokio::test]
async fn hanging_fleet_times_out_within_budget() {
    let s = setup(16).await;
    let id = failing_host(&s);
    s.fake.set_fault("host", Fault::Hang);
    let started = std::time::Instant::now();
    assert_eq!(
        s.recheck.recheck(id, Duration::from_millis(100)).await,
        RecheckOutcome::TimedOut
    );
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
    assert!(
        s.store.host(id).unwrap().failing_policies().count() > 0,
        "cached posture stands"
    );
}

#[tokio::test]
async fn a_timed_out_fetch_completes_in_the_background() {
    let s = setup(16).await;
    let id = failing_host(&s);
    s.fake.update_host(id.0, |h| {
        h.responses.values_mut().for_each(|r| *r = "pass".into())
    });
    s.fake.hold("host");
    assert_eq!(
        s.recheck.recheck(id, Duration::from_millis(50)).await,
        RecheckOutcome::TimedOut
    );

    // A later caller joins the fetch still in flight; Fleet then answers.
    let recheck = Arc::clone(&s.recheck);
    let joined = tokio::spawn(async move { recheck.recheck(id, Duration::from_secs(10)).await });
    while s.recheck.waiters(id) < 1 {
        tokio::task::yield_now().await;
    }
    s.fake.release("host");
    let RecheckOutcome::Fresh(host) = joined.await.unwrap() else {
        panic!("expected the background fetch to finish");
    };
    assert_eq!(host.failing_policies().count(), 0);
    assert_eq!(s.store.host(id).unwrap().failing_policies().count(), 0);
    assert_eq!(s.fake.count("host"), 1, "one fetch served both callers");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_concurrent_rechecks_cost_one_request() {
    let s = setup(16).await;
    let id = failing_host(&s);
    s.fake.hold("host");
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..1000 {
        let recheck = Arc::clone(&s.recheck);
        tasks.spawn(async move { recheck.recheck(id, Duration::from_secs(10)).await });
    }
    while s.recheck.waiters(id) < 1000 {
        tokio::task::yield_now().await;
    }
    s.fake.release("host");
    let mut fresh = 0;
    while let Some(outcome) = tasks.join_next().await {
        if let RecheckOutcome::Fresh(h) = outcome.unwrap() {
            assert_eq!(h.id, id);
            fresh += 1;
        }
    }
    assert_eq!(fresh, 1000);
    assert_eq!(s.fake.count("host"), 1);
}

#[tokio::test]
async fn past_the_cap_a_recheck_is_skipped_as_busy() {
    let s = setup(1).await;
    s.fake.hold("host");
    assert_eq!(
        s.recheck
            .recheck(HostId(1), Duration::from_millis(20))
            .await,
        RecheckOutcome::TimedOut
    );
    assert_eq!(
        s.recheck
            .recheck(HostId(2), Duration::from_millis(20))
            .await,
        RecheckOutcome::Skipped(SkipReason::Busy)
    );
    // Host 1's fetch is in flight: joining it is not a new fetch, so not busy.
    assert_eq!(
        s.recheck
            .recheck(HostId(1), Duration::from_millis(20))
            .await,
        RecheckOutcome::TimedOut
    );
    s.fake.release("host");
    let outcome = s.recheck.recheck(HostId(1), Duration::from_secs(5)).await;
    assert!(
        matches!(outcome, RecheckOutcome::Fresh(ref h) if h.id == HostId(1)),
        "{outcome:?}"
    );
    // The permit is freed before the result is published, so it is back now.
    let outcome = s.recheck.recheck(HostId(2), Duration::from_secs(5)).await;
    assert!(
        matches!(outcome, RecheckOutcome::Fresh(ref h) if h.id == HostId(2)),
        "{outcome:?}"
    );
    assert_eq!(s.fake.count("host"), 2);
}
