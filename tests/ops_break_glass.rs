//! Break-glass: an admin grants a time-limited allow for one device; Checks
//! for it are allowed with reason `break_glass`; grants are listed, revoked,
//! capped by `break_glass.max_duration`, expire, and survive a restart.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::ops::{Env, allowed, check, get, http, json, metric, reason_header, scrape};
use fleet_authz::server::start;
use reqwest::Method;
use serde_json::json;

const TOKEN: &str = "glass-t0ken";
const ACTIVE: &str = "fleet_authz_break_glass_grants_active";
const BREAK_GLASS_ALLOW: &str =
    r#"fleet_authz_decisions_total{decision="allow",reason="break_glass",route="default"}"#;

fn config(env: &Env) -> fleet_authz::config::Config {
    let grants = env.dir.path().join("grants.json");
    env.config(&format!(
        "admin: {{token_file: {}, grants_file: {}}}\n",
        env.token_file(TOKEN).display(),
        grants.display()
    ))
}

async fn post(addr: std::net::SocketAddr, body: serde_json::Value) -> (u16, serde_json::Value) {
    let (status, text) = http(
        Method::POST,
        addr,
        "/v1/break-glass",
        Some(TOKEN),
        Some(body),
    )
    .await;
    (status, json(&text))
}

#[tokio::test]
async fn a_grant_turns_a_deny_into_an_allow_until_revoked() {
    let env = Env::new();
    let server = start(config(&env)).await.unwrap();
    let (grpc, addr) = (server.grpc_addr(), server.http_addr());
    assert!(!allowed(&check(grpc, &env.bad.pem, &[]).await));
    assert_eq!(metric(&scrape(addr).await, ACTIVE), 0.0);

    let (status, grant) = post(
        addr,
        json!({"host_id": 102, "reason": "incident 7: CFO locked out", "duration": "2h"}),
    )
    .await;
    assert_eq!(status, 201, "{grant}");
    assert_eq!(
        (
            grant["id"].as_u64(),
            grant["host_id"].as_u64(),
            grant["capped"].as_bool(),
            grant["duration"].as_str()
        ),
        (Some(1), Some(102), Some(false), Some("2h"))
    );
    assert_eq!(grant["granted_by"], "admin");

    let before = scrape(addr).await;
    assert_eq!(metric(&before, ACTIVE), 1.0);
    let answer = check(grpc, &env.bad.pem, &[]).await;
    assert!(allowed(&answer));
    let after = scrape(addr).await;
    assert_eq!(
        metric(&after, BREAK_GLASS_ALLOW) - metric(&before, BREAK_GLASS_ALLOW),
        1.0
    );
    // Other devices are not covered.
    assert!(!allowed(&check(grpc, &env.unknown.pem, &[]).await));

    let (status, body) = get(addr, "/v1/break-glass", Some(TOKEN)).await;
    assert_eq!(status, 200);
    let list = json(&body);
    assert_eq!(list["grants"].as_array().unwrap().len(), 1);
    assert_eq!(list["grants"][0]["reason"], "incident 7: CFO locked out");

    let (status, body) = http(Method::DELETE, addr, "/v1/break-glass/1", Some(TOKEN), None).await;
    assert_eq!((status, json(&body)), (200, json!({"revoked": 1})));
    let denied = check(grpc, &env.bad.pem, &[]).await;
    assert_eq!(reason_header(&denied), "failing_critical_policy");
    assert_eq!(metric(&scrape(addr).await, ACTIVE), 0.0);
    let (status, body) = http(Method::DELETE, addr, "/v1/break-glass/1", Some(TOKEN), None).await;
    assert_eq!(
        (status, json(&body)["error"].as_str()),
        (404, Some("no grant 1 in force"))
    );
    server.shutdown().await;
}

#[tokio::test]
async fn requests_are_validated_and_long_grants_capped() {
    let env = Env::new();
    let server = start(config(&env)).await.unwrap();
    let addr = server.http_addr();

    let (status, grant) = post(
        addr,
        json!({"sha1": env.unknown.sha1.to_hex(), "reason": "new laptop", "duration": "8h"}),
    )
    .await;
    assert_eq!(status, 201);
    assert_eq!(
        (
            grant["capped"].as_bool(),
            grant["duration"].as_str(),
            grant["requested"].as_str()
        ),
        (Some(true), Some("4h"), Some("8h"))
    );
    let granted = humantime::parse_rfc3339(grant["granted_at"].as_str().unwrap()).unwrap();
    let expires = humantime::parse_rfc3339(grant["expires_at"].as_str().unwrap()).unwrap();
    assert_eq!(expires.duration_since(granted).unwrap().as_secs(), 4 * 3600);
    // A certificate grant covers a device Fleet does not know (yet).
    assert!(allowed(
        &check(server.grpc_addr(), &env.unknown.pem, &[]).await
    ));

    for (body, status, error) in [
        (
            json!({"host_id": 102, "duration": "1h"}),
            400,
            "reason is required",
        ),
        (
            json!({"host_id": 102, "reason": "  ", "duration": "1h"}),
            400,
            "reason is required",
        ),
        (
            json!({"host_id": 102, "reason": "x"}),
            400,
            "duration is required (e.g. \"2h\")",
        ),
        (
            json!({"host_id": 102, "reason": "x", "duration": "0s"}),
            400,
            "duration: must be greater than zero",
        ),
        (
            json!({"reason": "x", "duration": "1h"}),
            400,
            "give exactly one of host_id, sha1",
        ),
        (
            json!({"host_id": 102, "sha1": env.bad.sha1.to_hex(), "reason": "x", "duration": "1h"}),
            400,
            "give exactly one of host_id, sha1",
        ),
        (
            json!({"host_id": 999, "reason": "x", "duration": "1h"}),
            404,
            "host 999 is not known",
        ),
    ] {
        let (got, answer) = post(addr, body.clone()).await;
        assert_eq!(
            (got, answer["error"].as_str()),
            (status, Some(error)),
            "{body}"
        );
    }
    let (got, answer) = post(
        addr,
        json!({"host_id": 102, "reason": "x", "duration": "soon"}),
    )
    .await;
    assert_eq!(got, 400);
    assert!(
        answer["error"].as_str().unwrap().starts_with("duration: "),
        "{answer}"
    );
    let (got, answer) = post(
        addr,
        json!({"host_id": 102, "reason": "x", "duration": "1h", "extra": 1}),
    )
    .await;
    assert_eq!(got, 400);
    assert!(
        answer["error"]
            .as_str()
            .unwrap()
            .contains("unknown field `extra`"),
        "{answer}"
    );
    let (got, _) = http(
        Method::POST,
        addr,
        "/v1/break-glass",
        None,
        Some(json!({"host_id": 102, "reason": "x", "duration": "1h"})),
    )
    .await;
    assert_eq!(got, 401);
    // A body over the 64 KiB bound is 413, and grants nothing.
    let (got, answer) = post(
        addr,
        json!({"host_id": 102, "reason": "x".repeat(100 * 1024), "duration": "1h"}),
    )
    .await;
    assert_eq!(got, 413, "{answer}");
    assert!(
        answer["error"].as_str().unwrap().starts_with("body: "),
        "{answer}"
    );
    server.shutdown().await;
}

#[tokio::test]
async fn grants_survive_a_restart_and_expired_ones_do_not_apply() {
    let env = Env::new();
    let server = start(config(&env)).await.unwrap();
    let (status, _) = post(
        server.http_addr(),
        json!({"host_id": 102, "reason": "incident 9", "duration": "1h"}),
    )
    .await;
    assert_eq!(status, 201);
    server.shutdown().await;

    let server = start(config(&env)).await.unwrap();
    let (_, body) = get(server.http_addr(), "/v1/break-glass", Some(TOKEN)).await;
    let list = json(&body);
    assert_eq!(list["grants"][0]["host_id"], 102);
    assert_eq!(list["grants"][0]["reason"], "incident 9");
    assert!(allowed(&check(server.grpc_addr(), &env.bad.pem, &[]).await));
    assert_eq!(metric(&scrape(server.http_addr()).await, ACTIVE), 1.0);
    // Ids keep counting after a restart.
    let (_, next) = post(
        server.http_addr(),
        json!({"host_id": 101, "reason": "r", "duration": "1m"}),
    )
    .await;
    assert_eq!(next["id"], 2);
    server.shutdown().await;

    // A file whose only grant expired an hour ago.
    let past = fleet_authz::posture::HostId(102);
    let grants = env.dir.path().join("grants.json");
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    std::fs::write(
        &grants,
        json!({"version": 1, "next_id": 5, "grants": [{
            "id": 4, "host_id": past.0, "reason": "old", "granted_by": "admin",
            "granted_at_unix_ms": now_ms - 7_200_000, "expires_at_unix_ms": now_ms - 3_600_000}]})
        .to_string(),
    )
    .unwrap();
    let server = start(config(&env)).await.unwrap();
    assert_eq!(
        get(server.http_addr(), "/v1/break-glass", Some(TOKEN))
            .await
            .1,
        "{\"grants\":[]}"
    );
    assert!(!allowed(
        &check(server.grpc_addr(), &env.bad.pem, &[]).await
    ));
    assert_eq!(metric(&scrape(server.http_addr()).await, ACTIVE), 0.0);
    server.shutdown().await;
}
