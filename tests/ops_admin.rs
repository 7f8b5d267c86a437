//! The admin API: HTTP `/v1/*` and gRPC `fleet_authz.v1.Admin`, the bearer
//! token on both, and `fleet-authz explain`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;

use common::ops::{Env, get, http, json, metric, scrape};
use common::server::channel;
use fleet_authz::{
    admin::{AdminState, SyncTrigger},
    cli,
    decision::BoxFuture,
    proto::v1::{
        ExplainRequest, GetFingerprintRequest, GetHostRequest, SyncRequest,
        admin_client::AdminClient,
    },
    server::start,
};
use reqwest::Method;
use tonic::Code;

const TOKEN: &str = "adm1n-t0ken-value";

fn with_token(env: &Env) -> String {
    format!(
        "admin: {{token_file: {}}}\n",
        env.token_file(TOKEN).display()
    )
}

#[tokio::test]
async fn every_v1_route_needs_the_bearer_token_and_health_does_not() {
    let env = Env::new();
    let server = start(env.config(&with_token(&env))).await.unwrap();
    let addr = server.http_addr();
    let routes = [
        (Method::GET, "/v1/hosts/101".to_owned()),
        (Method::GET, format!("/v1/fingerprints/{}", env.good.sha1)),
        (Method::GET, format!("/v1/explain?sha1={}", env.good.sha1)),
        (Method::POST, "/v1/sync".to_owned()),
        (Method::GET, "/v1/break-glass".to_owned()),
        (Method::POST, "/v1/break-glass".to_owned()),
        (Method::DELETE, "/v1/break-glass/1".to_owned()),
    ];
    for (method, path) in &routes {
        for token in [None, Some("wrong"), Some("adm1n-t0ken-valuE")] {
            let (status, body) = http(method.clone(), addr, path, token, None).await;
            assert_eq!(status, 401, "{method} {path} with {token:?}");
            assert_eq!(json(&body)["error"], "missing or wrong admin bearer token");
        }
    }
    let (status, _) = get(addr, "/v1/hosts/101", Some(TOKEN)).await;
    assert_eq!(status, 200);
    assert_eq!(get(addr, "/livez", None).await.0, 200);
    assert_eq!(get(addr, "/readyz", None).await.0, 200);
    assert_eq!(get(addr, "/metrics", None).await.0, 200);

    let mut admin = AdminClient::new(channel(server.grpc_addr()).await);
    let refused = admin
        .get_host(GetHostRequest { id: 101 })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::Unauthenticated);
    let mut request = tonic::Request::new(GetHostRequest { id: 101 });
    request
        .metadata_mut()
        .insert("authorization", format!("Bearer {TOKEN}").parse().unwrap());
    let host = json(
        &admin
            .get_host(request)
            .await
            .unwrap()
            .into_inner()
            .host_json,
    );
    assert_eq!(host["display_name"], "Good Mac");
    server.shutdown().await;
}

#[tokio::test]
async fn hosts_and_fingerprints_are_looked_up_or_refused_precisely() {
    let env = Env::new();
    let server = start(env.config("")).await.unwrap();
    let addr = server.http_addr();

    let (status, body) = get(addr, "/v1/hosts/102", None).await;
    assert_eq!(status, 200);
    let host = json(&body);
    assert_eq!(host["id"], 102);
    assert_eq!(host["team"]["name"], "Workstations");
    assert_eq!(host["fingerprints"][0], env.bad.sha1.to_hex());
    let gatekeeper = &host["policies"].as_array().unwrap()[0];
    assert_eq!(
        (
            gatekeeper["id"].as_u64(),
            gatekeeper["response"].as_str(),
            gatekeeper["critical"].as_bool()
        ),
        (Some(12), Some("fail"), Some(true))
    );

    assert_eq!(
        json(&get(addr, "/v1/hosts/999", None).await.1)["error"],
        "host 999 is not known"
    );
    let (status, body) = get(addr, "/v1/hosts/abc", None).await;
    assert_eq!(
        (status, json(&body)["error"].as_str()),
        (400, Some("host id `abc` is not a number"))
    );

    // Upper case with colons is accepted, as Fleet and openssl print it.
    let colons = env
        .good
        .sha1
        .to_hex()
        .to_uppercase()
        .as_bytes()
        .chunks(2)
        .map(|c| std::str::from_utf8(c).unwrap())
        .collect::<Vec<_>>()
        .join(":");
    let (status, body) = get(addr, &format!("/v1/fingerprints/{colons}"), None).await;
    assert_eq!(status, 200);
    assert_eq!(json(&body)["host"]["id"], 101);
    let (status, _) = get(
        addr,
        &format!("/v1/fingerprints/{}", env.unknown.sha1),
        None,
    )
    .await;
    assert_eq!(status, 404);
    let (status, body) = get(addr, "/v1/fingerprints/xyz", None).await;
    assert_eq!(status, 400);
    assert!(
        json(&body)["error"]
            .as_str()
            .unwrap()
            .starts_with("sha1: not a SHA-1")
    );

    let mut admin = AdminClient::new(channel(server.grpc_addr()).await);
    let host = admin
        .get_fingerprint(GetFingerprintRequest {
            sha1: env.bad.sha1.to_hex(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(json(&host.host_json)["id"], 102);
    let missing = admin
        .get_host(GetHostRequest { id: 999 })
        .await
        .unwrap_err();
    assert_eq!(
        (missing.code(), missing.message()),
        (Code::NotFound, "host 999 is not known")
    );
    let bad = admin
        .get_fingerprint(GetFingerprintRequest {
            sha1: "12".to_owned(),
        })
        .await
        .unwrap_err();
    assert_eq!(bad.code(), Code::InvalidArgument);
    server.shutdown().await;
}

#[tokio::test]
async fn explain_gives_every_reason_without_counting_a_decision() {
    let env = Env::new();
    let server = start(env.config(&with_token(&env))).await.unwrap();
    let addr = server.http_addr();
    let before = scrape(addr).await;

    let (status, body) = get(
        addr,
        &format!("/v1/explain?sha1={}&context.app=payroll", env.good.sha1),
        Some(TOKEN),
    )
    .await;
    assert_eq!(status, 200);
    let doc = json(&body);
    assert_eq!(
        (
            doc["decision"].as_str(),
            doc["answer"].as_str(),
            doc["route"].as_str()
        ),
        (Some("deny"), Some("deny"), Some("payroll"))
    );
    let kinds: Vec<&str> = doc["reasons"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["kind"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["failing_any_policy"]);
    assert_eq!(doc["reasons"][0]["name"], "Screen lock");
    assert_eq!(doc["host"]["id"], 101);

    let (_, body) = get(
        addr,
        &format!("/v1/explain?sha1={}", env.good.sha1),
        Some(TOKEN),
    )
    .await;
    assert_eq!(
        (
            json(&body)["answer"].as_str(),
            json(&body)["route"].as_str()
        ),
        (Some("allow"), Some("default"))
    );
    let (status, body) = get(addr, "/v1/explain?sha1=1234", Some(TOKEN)).await;
    assert_eq!(status, 400);
    assert!(json(&body)["error"].as_str().unwrap().starts_with("sha1: "));
    let (status, body) = get(
        addr,
        &format!("/v1/explain?sha1={}&app=x", env.good.sha1),
        Some(TOKEN),
    )
    .await;
    assert_eq!(status, 400);
    assert!(
        json(&body)["error"]
            .as_str()
            .unwrap()
            .contains("unknown query parameter `app`")
    );

    // The CLI, against the same endpoint.
    let token_file = env.dir.path().join("admin-token");
    let base = format!("http://{addr}");
    let (allowed, text) = cli::explain(
        &base,
        Some(&token_file),
        &env.bad.sha1.to_hex(),
        &[],
        "app.example.com",
        "/",
    )
    .await
    .unwrap();
    assert!(!allowed);
    // When Fleet last heard from the host, then the rest word for word.
    let (seen, rest): (Vec<&str>, Vec<&str>) = text
        .lines()
        .partition(|l| l.starts_with("  fleet last heard from it: "));
    assert_eq!(seen.len(), 1, "{text}");
    assert_eq!(
        rest.join("\n"),
        "DENY\n  route: default\n  host: Bad Laptop (102)\n  - failing_critical_policy name=Gatekeeper enabled\n      fix: Turn Gatekeeper on."
    );
    let refused = cli::explain(&base, None, &env.bad.sha1.to_hex(), &[], "h", "/")
        .await
        .unwrap_err();
    assert_eq!(
        refused.to_string(),
        "the service refused (HTTP 401): missing or wrong admin bearer token"
    );

    // gRPC Explain.
    let mut admin = AdminClient::new(channel(server.grpc_addr()).await);
    let mut request = tonic::Request::new(ExplainRequest {
        sha1: env.unknown.sha1.to_hex(),
        ..Default::default()
    });
    request
        .metadata_mut()
        .insert("authorization", format!("Bearer {TOKEN}").parse().unwrap());
    let answer = admin.explain(request).await.unwrap().into_inner();
    assert_eq!(
        (answer.allowed, answer.route.as_str(), answer.reason_kinds),
        (false, "default", vec!["unknown_device".to_owned()])
    );
    assert_eq!(
        json(&answer.decision_json)["certificate"]["sha1"],
        env.unknown.sha1.to_hex()
    );

    let after = scrape(addr).await;
    assert_eq!(
        metric(&after, "fleet_authz_check_duration_seconds_count"),
        metric(&before, "fleet_authz_check_duration_seconds_count")
    );
    server.shutdown().await;
}

#[tokio::test]
async fn sync_rereads_the_posture_file_over_http_and_grpc() {
    let env = Env::new();
    let server = start(env.config("")).await.unwrap();
    let addr = server.http_addr();
    let (status, body) = http(Method::POST, addr, "/v1/sync", None, None).await;
    assert_eq!(
        (status, json(&body)),
        (200, serde_json::json!({"ok": true, "hosts": 2}))
    );

    // Drop host 102 from the file; a forced sync publishes it at once.
    let text = std::fs::read_to_string(&env.posture).unwrap();
    let cut = text.find("  - id: 102").unwrap();
    std::fs::write(&env.posture, &text[..cut]).unwrap();
    let mut admin = AdminClient::new(channel(server.grpc_addr()).await);
    let answer = admin.sync(SyncRequest {}).await.unwrap().into_inner();
    assert_eq!(
        (answer.ok, answer.hosts, answer.error.as_str()),
        (true, 1, "")
    );
    assert_eq!(get(addr, "/v1/hosts/102", None).await.0, 404);

    std::fs::write(&env.posture, "hosts: [{id: 1, colour: blue}]\n").unwrap();
    let (status, body) = http(Method::POST, addr, "/v1/sync", None, None).await;
    assert_eq!(status, 502);
    let doc = json(&body);
    assert_eq!(doc["ok"], false);
    assert!(doc["error"].as_str().unwrap().contains("colour"), "{doc}");
    server.shutdown().await;
}

struct FailingSync;

impl SyncTrigger for FailingSync {
    fn sync_now(&self) -> BoxFuture<'_, Result<usize, String>> {
        Box::pin(async { Err("fleet answered 503".to_owned()) })
    }
}

#[tokio::test]
async fn sync_without_a_source_is_not_implemented_and_failures_are_reported() {
    let env = Env::new();
    let server = start(env.config("")).await.unwrap();
    for (sync, want_status, want_body) in [
        (
            None,
            501,
            serde_json::json!({"error": "no Fleet source configured: nothing to sync"}),
        ),
        (
            Some(Arc::new(FailingSync) as Arc<dyn SyncTrigger>),
            502,
            serde_json::json!({"ok": false, "error": "fleet answered 503"}),
        ),
    ] {
        let state = AdminState {
            sync,
            ..server.admin.clone()
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app = fleet_authz::admin::http::router(state);
        let task = tokio::spawn(async move { axum::serve(listener, app).await });
        let (status, body) = http(Method::POST, addr, "/v1/sync", None, None).await;
        assert_eq!((status, json(&body)), (want_status, want_body));
        task.abort();
    }
    server.shutdown().await;
}
