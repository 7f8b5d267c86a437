//! Cluster mode (DESIGN.md §8, issue 18) against a real nats-server with
//! JetStream and one fake Fleet: replicas started through the library (and
//! one as a child process of the binary, killed with SIGKILL).
//!
//! Each test has its own NATS and Fleet; the lease is 2 s so role changes
//! take seconds. Waits poll the replicas' own answers (`/v1/cluster`,
//! metrics, Checks) with a deadline; the only fixed waits are the windows
//! in which Fleet requests are counted.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "tests: a failure panics the test"
)]

mod common;

use std::time::{Duration, Instant};

use async_nats::jetstream::{self, object_store::ObjectMetadata};
use common::{
    cluster::{
        Fixture, HOST, TOKEN, TTL, admin_json, cluster_state, metric_sum, role, settled, wait_for,
        wait_until,
    },
    ops::{allowed, check, get, http, reason_header},
};
use fleet_authz::cluster::sign::{Kind, Signer};
use serde_json::json;

const REJECTED: &str = "fleet_authz_cluster_rejected_total";

/// One cluster at a time: the timing assertions (a grant within 1 s, a new
/// leader within 2 × lease_ttl) hold on a loaded 2-core machine only when
/// the tests do not also share it with each other.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The Check verdict for the device on the replica at `grpc`.
async fn verdict(fx: &Fixture, grpc: std::net::SocketAddr) -> String {
    let response = check(grpc, &fx.device.cert_pem, &[]).await;
    if allowed(&response) {
        "allow".into()
    } else {
        reason_header(&response)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_cost_fleet_one_sync_per_interval_and_decide_alike() {
    let _serial = SERIAL.lock().await;
    let fx = Fixture::new().await;
    let (replicas, addrs) = fx.replicas(&["a", "b", "c"], "1s", "").await;
    let leader = settled(&addrs).await;

    // One sync per interval for the whole cluster: `teams` is asked once a cycle.
    fx.fake.reset_counts();
    let window = Duration::from_millis(4500);
    tokio::time::sleep(window).await;
    let cycles = fx.fake.count("teams");
    assert!(
        (3..=6).contains(&cycles),
        "{cycles} sync cycles in {window:?} at sync_interval 1s"
    );
    for (i, addr) in addrs.iter().enumerate() {
        let requests = metric_sum(*addr, "fleet_authz_fleet_requests_total").await;
        if i == leader {
            assert!(requests > 0.0);
        } else {
            assert_eq!(requests, 0.0, "follower {i} called Fleet");
        }
        let leads = metric_sum(*addr, "fleet_authz_cluster_leader").await;
        assert_eq!(leads, f64::from(u8::from(i == leader)));
        let (status, ready) = get(*addr, "/readyz", None).await;
        let expected = if i == leader {
            "role=leader"
        } else {
            "role=follower"
        };
        assert_eq!(status, 200);
        assert!(ready.contains(&format!("cluster: {expected}")), "{ready}");
    }
    // Every replica holds the leader's posture and decides alike.
    for replica in &replicas {
        assert_eq!(replica.authorizer.store.host_count(), 10);
        assert_eq!(
            verdict(&fx, replica.grpc_addr()).await,
            "failing_any_policy"
        );
        let state = cluster_state(replica.http_addr()).await.unwrap();
        assert!(state["posture_age_s"].as_f64().unwrap() < 5.0, "{state}");
    }
    for r in replicas {
        r.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grant_through_one_replica_holds_on_the_others_within_a_second_and_is_audited() {
    let _serial = SERIAL.lock().await;
    let fx = Fixture::new().await;
    let (replicas, addrs) = fx.replicas(&["a", "b", "c"], "1h", "").await;
    settled(&addrs).await;
    let body = json!({"host_id": HOST, "reason": "incident 42", "duration": "1h"});
    let (status, given) = http(
        reqwest::Method::POST,
        addrs[0],
        "/v1/break-glass",
        Some(TOKEN),
        Some(body),
    )
    .await;
    assert_eq!(status, 201, "{given}");
    let id = common::ops::json(&given)["id"].as_u64().unwrap();
    let granted = Instant::now();
    for r in &replicas[1..] {
        wait_for(
            Duration::from_secs(1),
            "the grant on every replica",
            || async { (verdict(&fx, r.grpc_addr()).await == "allow").then_some(()) },
        )
        .await;
    }
    assert!(
        granted.elapsed() <= Duration::from_secs(1),
        "{:?}",
        granted.elapsed()
    );
    let listed = admin_json(addrs[2], "/v1/break-glass").await;
    assert_eq!(listed["grants"][0]["id"], id, "{listed}");
    assert_eq!(listed["grants"][0]["reason"], "incident 42");

    // Revoked through B: gone on A and C within a second.
    revoke(addrs[1], id).await;
    let revoked = Instant::now();
    for r in [&replicas[0], &replicas[2]] {
        wait_for(
            Duration::from_secs(1),
            "the revocation on every replica",
            || async { (verdict(&fx, r.grpc_addr()).await == "failing_any_policy").then_some(()) },
        )
        .await;
    }
    assert!(revoked.elapsed() <= Duration::from_secs(1));

    // The audit trail, newest first, readable, from any replica; paged.
    let audit = wait_for(Duration::from_secs(2), "both audit entries", || async {
        let page = admin_json(addrs[2], "/v1/audit").await;
        (page["entries"].as_array()?.len() == 2).then_some(page)
    })
    .await;
    let entries = audit["entries"].as_array().unwrap();
    assert_eq!(entries[0]["action"], "revoke", "{audit}");
    assert_eq!(entries[1]["action"], "grant");
    for e in entries {
        assert_eq!(e["grant_id"], id);
        assert_eq!(e["host_id"], HOST);
        assert_eq!(e["reason"], "incident 42");
        assert!(e["time"].as_str().unwrap().ends_with('Z'));
    }
    let a_id = cluster_state(addrs[0]).await.unwrap();
    assert!(
        entries[1]["replica"] != entries[0]["replica"],
        "{a_id} {audit}"
    );
    let first = admin_json(addrs[1], "/v1/audit?limit=1").await;
    assert_eq!(first["entries"][0]["action"], "revoke");
    let before = first["next_before"].as_u64().unwrap();
    let second = admin_json(addrs[1], &format!("/v1/audit?limit=1&before={before}")).await;
    assert_eq!(second["entries"][0]["action"], "grant");
    assert_eq!(second["next_before"], serde_json::Value::Null);
    let (status, _) = get(addrs[1], "/v1/audit", None).await;
    assert_eq!(status, 401, "the audit trail needs the admin token");
    for r in replicas {
        r.shutdown().await;
    }
}

/// A break-glass grant through the replica at `addr`; its id.
async fn grant(addr: std::net::SocketAddr, host: u64, duration: &str) -> u64 {
    let body = json!({"host_id": host, "reason": "incident", "duration": duration});
    let (status, given) = http(
        reqwest::Method::POST,
        addr,
        "/v1/break-glass",
        Some(TOKEN),
        Some(body),
    )
    .await;
    assert_eq!(status, 201, "{given}");
    common::ops::json(&given)["id"].as_u64().unwrap()
}

/// `POST /v1/sync` to the replica at `addr`.
async fn post_sync(addr: std::net::SocketAddr) -> (u16, String) {
    http(reqwest::Method::POST, addr, "/v1/sync", Some(TOKEN), None).await
}

/// Revokes grant `id` through the replica at `addr`.
async fn revoke(addr: std::net::SocketAddr, id: u64) {
    let path = format!("/v1/break-glass/{id}");
    let (status, body) = http(reqwest::Method::DELETE, addr, &path, Some(TOKEN), None).await;
    assert_eq!(status, 200, "{body}");
}

/// The keys of the grants bucket, read with a client of our own, sorted.
async fn grant_keys(kv: &jetstream::kv::Store) -> Vec<String> {
    use tokio_stream::StreamExt;
    let mut listed = kv.keys().await.unwrap();
    let mut keys = Vec::new();
    while let Some(key) = listed.next().await {
        keys.push(key.unwrap());
    }
    keys.sort();
    keys
}

/// The ids of the grants `/v1/break-glass` lists on `addr`.
async fn listed_grants(addr: std::net::SocketAddr) -> Vec<u64> {
    let listed = admin_json(addr, "/v1/break-glass").await;
    let grants = listed["grants"].as_array().unwrap();
    grants.iter().map(|g| g["id"].as_u64().unwrap()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_and_revoked_grants_leave_the_bucket_only_after_expiry_and_every_replica_denies() {
    let _serial = SERIAL.lock().await;
    let fx = Fixture::new().await;
    let (replicas, addrs) = fx.replicas(&["a", "b", "c"], "1s", "").await;
    settled(&addrs).await;
    let kv = fx.grants_bucket().await;

    let short = grant(addrs[0], HOST, "1s").await;
    let revoked = grant(addrs[1], HOST, "6s").await;
    let long = grant(addrs[2], 2, "1h").await;
    revoke(addrs[2], revoked).await;
    let revocation = wait_for(Duration::from_secs(2), "the revocation in KV", || async {
        let value = kv.get(format!("grant.{revoked}")).await.ok()??;
        let text = String::from_utf8_lossy(&value).into_owned();
        text.contains("revoked_at_unix_ms").then_some(text)
    })
    .await;
    assert!(revocation.starts_with("FA1 "), "sealed: {revocation}");

    // The 1 s grant goes after its expiry and lease_ttl; the revocation
    // stays while its grant (6 s) could still hold on a replica that missed it.
    wait_for(TTL * 5, "the expired grant pruned", || async {
        (!grant_keys(&kv).await.contains(&format!("grant.{short}"))).then_some(())
    })
    .await;
    assert!(
        kv.get(format!("grant.{revoked}")).await.unwrap().is_some(),
        "a revocation was pruned before its grant expired"
    );
    wait_for(TTL * 6, "the revocation pruned after expiry", || async {
        (grant_keys(&kv).await == [format!("grant.{long}")]).then_some(())
    })
    .await;
    for id in [short, revoked] {
        let key = format!("grant.{id}");
        assert!(kv.get(&key).await.unwrap().is_none());
        assert!(
            kv.entry(&key).await.unwrap().is_none(),
            "{key}: a purge marker was left"
        );
    }
    for (i, r) in replicas.iter().enumerate() {
        assert_eq!(
            verdict(&fx, r.grpc_addr()).await,
            "failing_any_policy",
            "replica {i}"
        );
        assert_eq!(listed_grants(r.http_addr()).await, [long], "replica {i}");
    }
    for r in replicas {
        r.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grants_held_before_cluster_mode_are_shared_signed_and_a_missed_revocation_stays() {
    let _serial = SERIAL.lock().await;
    let fx = Fixture::new().await;
    let now = fleet_authz::duration::unix_ms(std::time::SystemTime::now());
    let file = json!({"version": 1, "next_id": 8, "grants": [
        {"id": 7, "host_id": HOST, "reason": "from before", "granted_by": "admin",
         "granted_at_unix_ms": now - 60_000, "expires_at_unix_ms": now + 3_600_000},
        {"id": 6, "host_id": 2, "reason": "long over", "granted_by": "admin",
         "granted_at_unix_ms": now - 60_000, "expires_at_unix_ms": now - 1_000},
    ]});
    let grants_a = fx.dir.path().join("grants-a.json");
    std::fs::write(&grants_a, file.to_string()).unwrap();
    let a = fx.replica("a", "1h", "").await;
    let b = fx.replica("b", "1h", "").await;
    let c = fx.replica("c", "1h", "").await;
    settled(&[a.http_addr(), b.http_addr(), c.http_addr()]).await;
    for r in [&b, &c] {
        wait_for(TTL * 3, "the held grant on every replica", || async {
            (verdict(&fx, r.grpc_addr()).await == "allow").then_some(())
        })
        .await;
    }
    let kv = fx.grants_bucket().await;
    let sealed = kv.get("grant.7").await.unwrap().unwrap();
    let signer = Signer::from_file(&fx.dir.path().join("cluster-key")).unwrap();
    let payload = signer.open(Kind::Grant, "grant.7", &sealed).unwrap();
    assert!(
        String::from_utf8_lossy(payload).contains("from before"),
        "{payload:?}"
    );
    assert_eq!(
        grant_keys(&kv).await,
        ["grant.7"],
        "the expired one stays out"
    );
    let audit = wait_for(
        Duration::from_secs(2),
        "the shared grant audited",
        || async {
            let page = admin_json(b.http_addr(), "/v1/audit").await;
            (page["entries"].as_array()?.len() == 1).then_some(page)
        },
    )
    .await;
    assert_eq!(audit["entries"][0]["action"], "grant", "{audit}");
    assert_eq!(audit["entries"][0]["grant_id"], 7);

    // A is down while the grant is revoked, then starts on its old file.
    a.shutdown().await;
    revoke(b.http_addr(), 7).await;
    let old_file = common::ops::json(&std::fs::read_to_string(&grants_a).unwrap());
    assert_eq!(old_file["grants"][0]["id"], 7, "A missed it: {old_file}");
    let a = fx.replica("a", "1h", "").await;
    // Never allowed, not even before the cluster's copy is read.
    assert_eq!(verdict(&fx, a.grpc_addr()).await, "failing_any_policy");
    wait_for(TTL * 3, "the revocation read back", || async {
        listed_grants(a.http_addr()).await.is_empty().then_some(())
    })
    .await;
    let entry = kv.get("grant.7").await.unwrap().unwrap();
    assert!(
        String::from_utf8_lossy(&entry).contains("revoked_at_unix_ms"),
        "the revocation was overwritten"
    );
    for r in [&a, &b, &c] {
        assert_eq!(verdict(&fx, r.grpc_addr()).await, "failing_any_policy");
        assert!(listed_grants(r.http_addr()).await.is_empty());
    }
    let audit = admin_json(c.http_addr(), "/v1/audit").await;
    let actions: Vec<_> = audit["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(actions, ["revoke", "grant"], "shared once: {audit}");
    for r in [a, b, c] {
        r.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grant_audited_by_a_run_whose_write_failed_is_audited_once_when_written() {
    let _serial = SERIAL.lock().await;
    let fx = Fixture::new().await;
    let b = fx.replica("b", "1h", "").await;
    settled(&[b.http_addr()]).await;
    // An earlier run of A appended grant 7's audit entry, then died before
    // its KV write: the entry is in the trail, the grant only in A's file.
    let now = fleet_authz::duration::unix_ms(std::time::SystemTime::now());
    let entry = json!({"time": "2026-12-01T00:00:00Z", "replica": "a-earlier-run",
        "action": "grant", "grant_id": 7, "host_id": HOST, "reason": "from before",
        "by": "admin", "expires_at": "2026-12-01T01:00:00Z"});
    let signer = Signer::from_file(&fx.dir.path().join("cluster-key")).unwrap();
    let sealed = signer.seal(
        Kind::Audit,
        "fleet-authz.audit",
        entry.to_string().as_bytes(),
    );
    let js = jetstream::new(async_nats::connect(fx.nats.url()).await.unwrap());
    let message = jetstream::message::PublishMessage::build()
        .payload(sealed.into())
        .message_id("7-grant");
    js.send_publish("fleet-authz.audit", message)
        .await
        .unwrap()
        .await
        .unwrap();
    let file = json!({"version": 1, "next_id": 8, "grants": [
        {"id": 7, "host_id": HOST, "reason": "from before", "granted_by": "admin",
         "granted_at_unix_ms": now - 60_000, "expires_at_unix_ms": now + 3_600_000}]});
    std::fs::write(fx.dir.path().join("grants-a.json"), file.to_string()).unwrap();
    let a = fx.replica("a", "1h", "").await;
    wait_for(TTL * 3, "the held grant written and on B", || async {
        (verdict(&fx, b.grpc_addr()).await == "allow").then_some(())
    })
    .await;
    // A audits before it writes; its append is the earlier run's again.
    let audit = admin_json(a.http_addr(), "/v1/audit").await;
    let entries = audit["entries"].as_array().unwrap();
    assert_eq!(entries.len(), 1, "audited once: {audit}");
    assert_eq!(entries[0]["replica"], "a-earlier-run", "{audit}");
    assert_eq!(entries[0]["grant_id"], 7, "{audit}");
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_entries_written_straight_to_nats_are_rejected_and_counted() {
    let _serial = SERIAL.lock().await;
    let fx = Fixture::new().await;
    let (replicas, addrs) = fx.replicas(&["a", "b"], "1h", "").await;
    let leader = settled(&addrs).await;
    let version = cluster_state(addrs[0]).await.unwrap()["posture_version"].clone();

    let client = async_nats::connect(fx.nats.url()).await.unwrap();
    let js = jetstream::new(client.clone());
    let wrong = Signer::new(&[9; 32]);
    let grant = |id: u64| {
        serde_json::to_vec(
            &json!({"id": id, "host_id": HOST, "reason": "forged", "granted_by": "mallory",
            "granted_at_unix_ms": 1, "expires_at_unix_ms": 4_000_000_000_000_i64, "replica": "x"}),
        )
        .unwrap()
    };
    let grants = js.get_key_value("fleet-authz-grants").await.unwrap();
    grants.put("grant.1", grant(1).into()).await.unwrap();
    grants
        .put(
            "grant.2",
            wrong.seal(Kind::Grant, "grant.2", &grant(2)).into(),
        )
        .await
        .unwrap();
    // A posture claiming a huge version, every host passing (empty), unsigned.
    let snapshots = js.get_object_store("fleet-authz-snapshots").await.unwrap();
    let forged = b"{\"version\":999999,\"publisher\":\"x\",\"synced_at_unix_ms\":1}\n".to_vec();
    let meta = ObjectMetadata {
        name: "posture".into(),
        ..Default::default()
    };
    snapshots.put(meta, &mut forged.as_slice()).await.unwrap();
    let sealed = wrong.seal(Kind::Audit, "fleet-authz.audit", b"{\"action\":\"grant\"}");
    js.publish("fleet-authz.audit", sealed.into())
        .await
        .unwrap()
        .await
        .unwrap();
    let ask = br#"{"host_id":1,"from":"x","nonce":1}"#;
    let _ = client
        .publish("fleet-authz.recheck", ask.as_slice().into())
        .await;
    client.flush().await.unwrap();

    for (i, addr) in addrs.iter().enumerate() {
        wait_for(
            Duration::from_secs(5),
            "the forged grants and posture counted",
            || async {
                let text = get(*addr, "/metrics", None).await.1;
                let count = |kind: &str| {
                    common::ops::metric(&text, &format!("{REJECTED}{{kind=\"{kind}\"}}"))
                };
                let recheck_ok = i != leader || count("recheck") >= 1.0;
                (count("grant") >= 2.0 && count("snapshot") >= 1.0 && recheck_ok).then_some(())
            },
        )
        .await;
        assert_eq!(
            admin_json(*addr, "/v1/break-glass").await["grants"],
            json!([])
        );
        assert_eq!(
            verdict(&fx, replicas[i].grpc_addr()).await,
            "failing_any_policy"
        );
        assert_eq!(
            cluster_state(*addr).await.unwrap()["posture_version"],
            version
        );
        assert_eq!(replicas[i].authorizer.store.host_count(), 10);
    }
    let audit = admin_json(addrs[0], "/v1/audit").await;
    assert_eq!(audit["entries"], json!([]), "{audit}");
    assert!(metric_sum(addrs[0], REJECTED).await >= 4.0);

    // A forged lease makes nobody leader by itself: a real replica takes it.
    let leases = js.get_key_value("fleet-authz-leader").await.unwrap();
    leases
        .put("leader", b"{\"holder\":\"mallory\"}".as_slice().into())
        .await
        .unwrap();
    wait_for(TTL * 2, "the forged lease counted", || async {
        let lease = format!("{REJECTED}{{kind=\"lease\"}}");
        let mut seen = 0.0;
        for addr in &addrs {
            seen += common::ops::metric(&get(*addr, "/metrics", None).await.1, &lease);
        }
        (seen >= 1.0).then_some(())
    })
    .await;
    settled(&addrs).await;
    for r in replicas {
        r.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recheck_through_followers_reaches_fleet_once_and_every_replica_applies_it() {
    let _serial = SERIAL.lock().await;
    let fx = Fixture::new().await;
    let recheck = "recheck: {enabled: true, min_age: 0s, budget: 3s}";
    let (replicas, addrs) = fx.replicas(&["a", "b", "c"], "1h", recheck).await;
    let leader = settled(&addrs).await;
    let followers: Vec<_> = (0..3).filter(|i| *i != leader).collect();
    // The person remediates; Fleet knows, the replicas do not yet.
    fx.fake.update_host(HOST, |h| {
        h.responses.insert(1, "pass".into());
    });
    fx.fake.reset_counts();
    fx.fake.hold("host");
    let mut checks = tokio::task::JoinSet::new();
    for i in followers.iter().cycle().take(6) {
        let (grpc, pem) = (replicas[*i].grpc_addr(), fx.device.cert_pem.clone());
        checks.spawn(async move { allowed(&check(grpc, &pem, &[]).await) });
    }
    wait_for(
        Duration::from_secs(3),
        "the leader's Fleet request",
        || async { (fx.fake.count("host") >= 1).then_some(()) },
    )
    .await;
    // Let every asker's request reach the leader while Fleet holds.
    tokio::time::sleep(Duration::from_millis(300)).await;
    fx.fake.release("host");
    while let Some(joined) = checks.join_next().await {
        assert!(
            joined.unwrap(),
            "a Check through a follower was not allowed on the fresh posture"
        );
    }
    assert_eq!(
        fx.fake.count("host"),
        1,
        "the cluster asked Fleet more than once"
    );
    for (i, r) in replicas.iter().enumerate() {
        wait_for(
            Duration::from_secs(2),
            "the fresh host on every replica",
            || async {
                let host = r
                    .authorizer
                    .store
                    .host(fleet_authz::posture::HostId(HOST))?;
                host.policies.iter().all(|p| !p.is_failing()).then_some(())
            },
        )
        .await;
        assert_eq!(verdict(&fx, r.grpc_addr()).await, "allow", "replica {i}");
    }
    assert_eq!(fx.fake.count("host"), 1);
    for r in replicas {
        r.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sync_asked_of_a_follower_is_run_once_by_the_leader_and_reaches_every_replica() {
    let _serial = SERIAL.lock().await;
    let mut fx = Fixture::new().await;
    let (replicas, addrs) = fx.replicas(&["a", "b", "c"], "1h", "").await;
    let leader = settled(&addrs).await;
    let follower = (leader + 1) % 3;
    let leader_id = cluster_state(addrs[leader]).await.unwrap()["leader"].clone();
    let version = cluster_state(addrs[follower]).await.unwrap()["posture_version"]
        .as_u64()
        .unwrap();
    // The person remediates; only a sync brings it before the hour is up.
    fx.fake.update_host(HOST, |h| {
        h.responses.insert(1, "pass".into());
    });
    fx.fake.reset_counts();

    let (status, body) = post_sync(addrs[follower]).await;
    assert_eq!(status, 200, "{body}");
    let answer = common::ops::json(&body);
    assert_eq!(answer["ok"], true, "{body}");
    assert_eq!(answer["hosts"], 10, "{body}");
    assert_eq!(answer["leader"], leader_id, "{body}");
    assert_eq!(fx.fake.count("teams"), 1, "Fleet saw one sync");
    for (i, addr) in addrs.iter().enumerate() {
        let requests = metric_sum(*addr, "fleet_authz_fleet_requests_total").await;
        assert_eq!(
            requests > 0.0,
            i == leader,
            "replica {i}: {requests} Fleet requests"
        );
    }
    // Published: every replica takes the new posture and decides on it.
    for (i, r) in replicas.iter().enumerate() {
        wait_for(Duration::from_secs(2), "the synced posture", || async {
            let s = cluster_state(r.http_addr()).await?;
            (s["posture_version"].as_u64()? > version).then_some(())
        })
        .await;
        assert_eq!(verdict(&fx, r.grpc_addr()).await, "allow", "replica {i}");
    }
    assert_eq!(fx.fake.count("teams"), 1, "one sync, not one per replica");

    // NATS lost: nobody answers the follower within lease_ttl; 503, why.
    fx.nats.stop();
    let asked = Instant::now();
    let (status, body) = post_sync(addrs[follower]).await;
    assert_eq!(status, 503, "{body}");
    assert!(
        common::ops::json(&body)["error"]
            .as_str()
            .unwrap()
            .contains("no answer from the leader"),
        "{body}"
    );
    assert!(
        asked.elapsed() >= TTL,
        "gave up before lease_ttl: {:?}",
        asked.elapsed()
    );
    assert!(asked.elapsed() < TTL * 3, "{:?}", asked.elapsed());
    for r in replicas {
        r.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_leader_is_replaced_within_two_lease_ttls() {
    let _serial = SERIAL.lock().await;
    let fx = Fixture::new().await;
    let (mut child, child_addr) = fx.child("a", "1h");
    wait_for(TTL * 10, "the child process leading", || async {
        (role(child_addr).await == "leader").then_some(())
    })
    .await;
    let b = fx.replica("b", "1h", "").await;
    let c = fx.replica("c", "1h", "").await;
    let addrs = [child_addr, b.http_addr(), c.http_addr()];
    assert_eq!(settled(&addrs).await, 0);
    let version = cluster_state(addrs[1]).await.unwrap()["posture_version"]
        .as_u64()
        .unwrap();
    let teams = fx.fake.count("teams");

    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let killed = Instant::now();
    let new_leader = wait_for(TTL * 2, "a follower leading", || async {
        for (i, addr) in addrs[1..].iter().enumerate() {
            if role(*addr).await == "leader" {
                return Some(i + 1);
            }
        }
        None
    })
    .await;
    let took = killed.elapsed();
    assert!(took <= TTL * 2, "a follower led after {took:?}");
    // The new leader syncs at once and the other follower takes its posture.
    let other = if new_leader == 1 { 2 } else { 1 };
    wait_for(
        TTL * 3,
        "the new leader's posture on the other replica",
        || async {
            let s = cluster_state(addrs[other]).await?;
            (s["role"] == "follower" && s["posture_version"].as_u64()? > version).then_some(())
        },
    )
    .await;
    assert!(fx.fake.count("teams") > teams);
    b.shutdown().await;
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revocation_made_while_nats_is_down_survives_a_restart_and_wins_when_nats_returns() {
    let _serial = SERIAL.lock().await;
    let mut fx = Fixture::new().await;
    let grants_a = fx.dir.path().join("grants-a.json");
    std::fs::write(&grants_a, r#"{"version": 1, "next_id": 1, "grants": []}"#).unwrap();
    let a = fx.replica("a", "1h", "").await;
    let b = fx.replica("b", "1h", "").await;
    settled(&[a.http_addr(), b.http_addr()]).await;
    let id = grant(a.http_addr(), HOST, "1h").await;
    wait_for(TTL * 3, "the grant on the other replica", || async {
        (verdict(&fx, b.grpc_addr()).await == "allow").then_some(())
    })
    .await;

    // Revoked through A while NATS is down; A restarts before NATS returns,
    // so the revocation is only in A's grants file.
    fx.nats.stop();
    revoke(a.http_addr(), id).await;
    assert_eq!(verdict(&fx, a.grpc_addr()).await, "failing_any_policy");
    a.shutdown().await;
    let file = common::ops::json(&std::fs::read_to_string(&grants_a).unwrap());
    assert_eq!(file["revoked"][0]["id"], id, "{file}");
    assert!(file["revoked"][0]["revoked_at_unix_ms"].is_i64(), "{file}");
    let a = fx.replica("a", "1h", "").await;
    assert_eq!(verdict(&fx, a.grpc_addr()).await, "failing_any_policy");

    // NATS returns with the grant still active in the bucket: A keeps it
    // revoked and writes the revocation, which reaches B.
    fx.nats.restart().await;
    let kv = fx.grants_bucket().await;
    wait_for(TTL * 6, "the revocation in KV", || async {
        let value = kv.get(format!("grant.{id}")).await.ok()??;
        String::from_utf8_lossy(&value)
            .contains("revoked_at_unix_ms")
            .then_some(())
    })
    .await;
    wait_for(TTL * 3, "the revocation on the other replica", || async {
        (verdict(&fx, b.grpc_addr()).await == "failing_any_policy").then_some(())
    })
    .await;
    for r in [&a, &b] {
        assert_eq!(verdict(&fx, r.grpc_addr()).await, "failing_any_policy");
        assert!(listed_grants(r.http_addr()).await.is_empty());
    }
    let audit = wait_until(Duration::from_secs(2), "the revocation audited", || async {
        let page = admin_json(b.http_addr(), "/v1/audit").await;
        match page["entries"].as_array() {
            Some(entries) if entries.len() == 2 => Ok(page),
            _ => Err(page),
        }
    })
    .await;
    assert_eq!(audit["entries"][0]["action"], "revoke", "{audit}");
    assert_eq!(audit["entries"][0]["grant_id"], id);
    assert_eq!(audit["entries"][1]["action"], "grant", "{audit}");
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_stopped_and_restarted_replicas_keep_deciding_sync_alone_then_rejoin() {
    let _serial = SERIAL.lock().await;
    let mut fx = Fixture::new().await;
    let a = fx.replica("a", "1s", "").await;
    let b = fx.replica("b", "1s", "").await;
    let addrs = [a.http_addr(), b.http_addr()];
    settled(&addrs).await;

    fx.nats.stop();
    for r in [&a, &b] {
        assert_eq!(
            verdict(&fx, r.grpc_addr()).await,
            "failing_any_policy",
            "still deciding"
        );
    }
    let syncs = [
        metric_sum(addrs[0], "fleet_authz_syncs_total").await,
        metric_sum(addrs[1], "fleet_authz_syncs_total").await,
    ];
    for (i, addr) in addrs.iter().enumerate() {
        wait_for(TTL * 6, "both replicas alone", || async {
            (role(*addr).await == "alone").then_some(())
        })
        .await;
        let (status, ready) = get(*addr, "/readyz", None).await;
        assert_eq!(status, 200, "{ready}");
        assert!(
            ready.contains("cluster: role=alone") && ready.contains("degraded: NATS out of reach"),
            "{ready}"
        );
        assert_eq!(metric_sum(*addr, "fleet_authz_cluster_degraded").await, 1.0);
        wait_for(TTL * 5, "each replica syncing Fleet alone", || async {
            (metric_sum(*addr, "fleet_authz_syncs_total").await > syncs[i]).then_some(())
        })
        .await;
    }
    // A grant made while NATS is down reaches the other replica when it returns.
    let body = json!({"host_id": HOST, "reason": "while NATS was down", "duration": "1h"});
    let (status, _) = http(
        reqwest::Method::POST,
        addrs[1],
        "/v1/break-glass",
        Some(TOKEN),
        Some(body),
    )
    .await;
    assert_eq!(status, 201);

    fx.nats.restart().await;
    settled(&addrs).await;
    for addr in addrs {
        assert_eq!(metric_sum(addr, "fleet_authz_cluster_degraded").await, 0.0);
    }
    wait_for(
        TTL * 6,
        "the outage's grant on the other replica",
        || async { (verdict(&fx, a.grpc_addr()).await == "allow").then_some(()) },
    )
    .await;
    // Audited before it was written, and once, however often B retried
    // while NATS was down.
    let audit = admin_json(a.http_addr(), "/v1/audit").await;
    let actions: Vec<_> = audit["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["action"].clone(), e["reason"].clone()))
        .collect();
    assert_eq!(
        actions,
        [(json!("grant"), json!("while NATS was down"))],
        "{audit}"
    );
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_down_at_start_serves_the_local_snapshot_then_syncs_alone_after_the_lease_ttl() {
    let _serial = SERIAL.lock().await;
    let fx = Fixture::new().await;
    // A snapshot from an earlier run, then a start with NATS unreachable.
    let first = fx.replica("a", "1h", "").await;
    settled(&[first.http_addr()]).await;
    first.shutdown().await;
    // A grant from the earlier run, not yet checked against the cluster.
    let now = fleet_authz::duration::unix_ms(std::time::SystemTime::now());
    let file = json!({"version": 1, "next_id": 2, "grants": [
        {"id": 1, "host_id": HOST, "reason": "held", "granted_by": "admin",
         "granted_at_unix_ms": now, "expires_at_unix_ms": now + 3_600_000}]});
    std::fs::write(fx.dir.path().join("grants-a.json"), file.to_string()).unwrap();
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    fx.fake.reset_counts();
    let started = Instant::now();
    let a = fx
        .replica_at("a", &format!("nats://{dead}"), "1h", "")
        .await;
    let (status, ready) = get(a.http_addr(), "/readyz", None).await;
    assert_eq!(status, 200, "serves the snapshot at once: {ready}");
    assert_eq!(
        verdict(&fx, a.grpc_addr()).await,
        "failing_any_policy",
        "the held grant waits for the cluster or lease_ttl"
    );
    assert_eq!(role(a.http_addr()).await, "follower");
    assert_eq!(fx.fake.count("teams"), 0, "no Fleet sync before lease_ttl");
    wait_for(TTL * 3, "a sync alone", || async {
        (fx.fake.count("teams") >= 1).then_some(())
    })
    .await;
    assert!(
        started.elapsed() >= TTL,
        "synced before lease_ttl: {:?}",
        started.elapsed()
    );
    assert_eq!(role(a.http_addr()).await, "alone");
    assert_eq!(
        verdict(&fx, a.grpc_addr()).await,
        "allow",
        "alone: held grants allow"
    );
    a.shutdown().await;
}

#[test]
fn a_bad_cluster_block_exits_64_naming_the_file_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("policy.yaml");
    std::fs::write(&policy, "version: 1\n").unwrap();
    std::fs::write(dir.path().join("token"), "t").unwrap();
    for (block, key) in [
        ("{nats_url: \"nats://n:4222\"}", "cluster.key_file"),
        ("{nats_url: \"http://n\", key_file: /k}", "cluster.nats_url"),
        (
            "{nats_url: \"nats://n:4222\", key_file: /nonexistent/key}",
            "cluster.key_file",
        ),
        (
            "{nats_url: \"nats://n:4222\", lease_tll: 15s}",
            "unknown field `lease_tll`",
        ),
    ] {
        let config = dir.path().join("config.yaml");
        std::fs::write(
            &config,
            format!(
                "fleet: {{url: \"https://fleet.example\", token_file: {d}/token, certificate_query_id: 1}}\npolicy_file: {p}\ncluster: {block}\n",
                d = dir.path().display(),
                p = policy.display()
            ),
        )
        .unwrap();
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_fleet-authz"))
            .args(["check-config", "--config"])
            .arg(&config)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(64), "{block}: {err}");
        assert!(
            err.contains(&config.display().to_string()) && err.contains(key),
            "{block}: {err}"
        );
    }
}

#[test]
fn the_cluster_components_config_is_the_bases_plus_a_valid_cluster_block() {
    let read = |p: &str| -> yaml_serde::Value {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(p);
        yaml_serde::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
    };
    let base = read("deploy/kubernetes/base/config/config.yaml");
    let mut cluster = read("deploy/kubernetes/components/cluster/config/config.yaml");
    let block = cluster.as_mapping_mut().unwrap().remove("cluster").unwrap();
    assert_eq!(
        cluster, base,
        "components/cluster/config/config.yaml drifted from the base's"
    );
    let parsed: fleet_authz::cluster::ClusterConfig = yaml_serde::from_value(block).unwrap();
    assert_eq!(parsed.nats_url, "nats://nats.fleet-authz:4222");
    assert_eq!(parsed.name, "fleet-authz");
    assert_eq!(
        parsed.key_file.unwrap(),
        std::path::Path::new("/var/run/secrets/fleet-authz-cluster/key")
    );
}
