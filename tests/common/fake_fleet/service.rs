//! fleet-authz itself served against a fake Fleet: a configuration that
//! points at it, start through the library (listeners on 127.0.0.1:0), real
//! gRPC Checks, `/readyz`, `/metrics` and `POST /v1/sync`.

use std::path::Path;

use envoy_types::pb::envoy::service::auth::v3::{
    CheckResponse, authorization_client::AuthorizationClient, check_response::HttpResponse,
};
use fleet_authz::{authz::request::build_check_request, config::Config, server::RunningServer};
use tonic::transport::Channel;

use super::FakeFleet;

/// A gRPC client of the service's ext_authz API.
pub type Authz = AuthorizationClient<Channel>;

/// Writes `policy` and the token into `dir` and returns a configuration for
/// `fake`: query 42, 10 per page, sync every hour (tests sync on demand).
/// `fleet` adds lines under `fleet:` (each `key: value`), `top` adds
/// top-level lines.
pub fn service_config(
    fake: &FakeFleet,
    dir: &Path,
    policy: &str,
    fleet: &[&str],
    top: &[&str],
) -> Config {
    std::fs::write(dir.join("policy.yaml"), policy).unwrap();
    std::fs::write(dir.join("token"), format!("{}\n", fake.token())).unwrap();
    let d = dir.display();
    let mut yaml = format!(
        "listen: {{grpc: \"127.0.0.1:0\", http: \"127.0.0.1:0\"}}\nfleet:\n  url: {}\n  \
         token_file: {d}/token\n  certificate_query_id: 42\n  page_size: 10\n  \
         request_timeout: 2s\n  sync_interval: 1h\n",
        fake.url()
    );
    for line in fleet {
        yaml.push_str(&format!("  {line}\n"));
    }
    yaml.push_str(&format!("policy_file: {d}/policy.yaml\n"));
    for line in top {
        yaml.push_str(&format!("{line}\n"));
    }
    Config::from_yaml(&yaml, &dir.join("config.yaml")).unwrap()
}

/// Starts the service and waits for its first posture.
pub async fn start(config: Config) -> (RunningServer, Authz) {
    let server = fleet_authz::server::start(config).await.unwrap();
    server.authorizer.store.wait_loaded().await;
    let client = AuthorizationClient::connect(format!("http://{}", server.grpc_addr()))
        .await
        .unwrap();
    (server, client)
}

/// A Check for `app.example.com/` presenting `cert_pem`.
pub async fn check(client: &mut Authz, cert_pem: &str) -> CheckResponse {
    let req = build_check_request(cert_pem, &[], "app.example.com", "/", false);
    client.check(req).await.unwrap().into_inner()
}

/// `allow`, or the reason header of a deny.
pub fn verdict(resp: &CheckResponse) -> String {
    match &resp.http_response {
        Some(HttpResponse::OkResponse(_)) => "allow".into(),
        Some(HttpResponse::DeniedResponse(d)) => d
            .headers
            .iter()
            .filter_map(|h| h.header.as_ref())
            .find(|h| h.key == "x-fleet-authz-reason")
            .unwrap()
            .value
            .clone(),
        other => panic!("{other:?}"),
    }
}

/// The deny body, parsed.
pub fn deny_body(resp: &CheckResponse) -> serde_json::Value {
    match &resp.http_response {
        Some(HttpResponse::DeniedResponse(d)) => serde_json::from_str(&d.body).unwrap(),
        other => panic!("not a deny: {other:?}"),
    }
}

/// `/readyz`: status and body.
pub async fn readyz(server: &RunningServer) -> (u16, String) {
    let resp = reqwest::get(format!("http://{}/readyz", server.http_addr()))
        .await
        .unwrap();
    (resp.status().as_u16(), resp.text().await.unwrap())
}

/// `/metrics` as text.
pub async fn metrics(server: &RunningServer) -> String {
    reqwest::get(format!("http://{}/metrics", server.http_addr()))
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// `POST /v1/sync` with `body`: status and JSON answer.
pub async fn post_sync(server: &RunningServer, body: &str) -> (u16, serde_json::Value) {
    let resp = reqwest::Client::new()
        .post(format!("http://{}/v1/sync", server.http_addr()))
        .body(body.to_owned())
        .send()
        .await
        .unwrap();
    (resp.status().as_u16(), resp.json().await.unwrap())
}
