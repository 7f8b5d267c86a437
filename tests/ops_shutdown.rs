//! Graceful shutdown: health turns NOT_SERVING first, Checks in flight are
//! answered, and the configured grace bounds how long shutdown can take.
//! Checks are parked deterministically in the live recheck: a `Refresh` whose
//! `refresh()` waits for the test to release it.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::{
    sync::Arc,
    time::{Duration, SystemTime},
};

use common::ops::{Env, check_with, reason_header};
use common::server::channel;
use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use fleet_authz::{
    decision::{BoxFuture, Refresh},
    posture::{HostId, HostPosture},
    server::{Extensions, start_with},
};
use tokio::sync::watch;
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

/// Holds every refresh until `release` turns true; counts who is waiting.
struct Parked {
    release: watch::Receiver<bool>,
    waiting: watch::Sender<usize>,
}

impl Refresh for Parked {
    fn needs_refresh(&self, _: HostId, _: SystemTime) -> bool {
        true
    }
    fn refresh(&self, _: HostId) -> BoxFuture<'_, Option<Arc<HostPosture>>> {
        let mut release = self.release.clone();
        self.waiting.send_modify(|n| *n += 1);
        Box::pin(async move {
            let _ = release.wait_for(|go| *go).await;
            None
        })
    }
}

fn parked() -> (Arc<Parked>, watch::Sender<bool>, watch::Receiver<usize>) {
    let (release_tx, release) = watch::channel(false);
    let (waiting, waiting_rx) = watch::channel(0);
    (
        Arc::new(Parked { release, waiting }),
        release_tx,
        waiting_rx,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_flight_checks_are_answered_after_health_goes_not_serving() {
    const N: usize = 50;
    let env = Env::new();
    let (refresh, release, mut waiting) = parked();
    let ext = Extensions {
        refresh: Some(refresh),
        ..Extensions::default()
    };
    let server = start_with(env.config("shutdown: {grace: 30s}\n"), ext)
        .await
        .unwrap();
    let grpc = server.grpc_addr();

    let mut health = HealthClient::new(channel(grpc).await);
    let mut statuses = health
        .watch(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        statuses.message().await.unwrap().unwrap().status,
        ServingStatus::Serving as i32
    );

    let checks = channel(grpc).await;
    let mut in_flight = tokio::task::JoinSet::new();
    for _ in 0..N {
        let mut client = AuthorizationClient::new(checks.clone());
        let pem = env.bad.pem.clone();
        in_flight.spawn(async move { check_with(&mut client, &pem, &[]).await });
    }
    tokio::time::timeout(Duration::from_secs(20), waiting.wait_for(|n| *n == N))
        .await
        .expect("every Check reaches the recheck")
        .unwrap();

    let stopping = tokio::spawn(server.shutdown());
    let next = tokio::time::timeout(Duration::from_secs(10), statuses.message())
        .await
        .expect("health changes when shutdown starts")
        .unwrap()
        .unwrap();
    assert_eq!(next.status, ServingStatus::NotServing as i32);
    drop(statuses);
    assert!(
        !stopping.is_finished(),
        "shutdown waits for the parked Checks"
    );

    release.send(true).unwrap();
    let mut answered = 0;
    while let Some(result) = in_flight.join_next().await {
        let response = result.unwrap();
        assert_eq!(reason_header(&response), "failing_critical_policy");
        answered += 1;
    }
    assert_eq!(answered, N);
    tokio::time::timeout(Duration::from_secs(20), stopping)
        .await
        .expect("shutdown completes once the Checks are answered")
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_check_parked_past_the_grace_does_not_hold_up_exit() {
    let env = Env::new();
    let (refresh, _release, mut waiting) = parked();
    let ext = Extensions {
        refresh: Some(refresh),
        ..Extensions::default()
    };
    let server = start_with(env.config("shutdown: {grace: 300ms}\n"), ext)
        .await
        .unwrap();
    let mut client = AuthorizationClient::new(channel(server.grpc_addr()).await);
    let pem = env.bad.pem.clone();
    let stuck = tokio::spawn(async move {
        let request = fleet_authz::authz::request::build_check_request(&pem, &[], "h", "/", false);
        client.check(request).await
    });
    tokio::time::timeout(Duration::from_secs(20), waiting.wait_for(|n| *n == 1))
        .await
        .expect("the Check reaches the recheck")
        .unwrap();

    let started = tokio::time::Instant::now();
    tokio::time::timeout(Duration::from_secs(10), server.shutdown())
        .await
        .expect("shutdown ends within the grace, not when the Check does");
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(300),
        "waited the grace first: {took:?}"
    );
    assert!(took < Duration::from_secs(5), "{took:?}");
    stuck.abort();
}
