//! The decision log: with `log_format: json`, one JSON line per Check whose
//! top-level keys are the decision's fields; break-glass allows say so; no
//! secret ever appears in a log line.
//!
//! The subscriber is the thread's default and the runtime is single-threaded,
//! so the server's tasks (on this thread) log into the capture.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::ops::{Captured, Env, check, http, json};
use fleet_authz::server::start;
use reqwest::Method;
use tracing_subscriber::prelude::*;

const TOKEN: &str = "very-secret-admin-token-4242";

#[tokio::test(flavor = "current_thread")]
async fn each_check_logs_one_json_line_with_the_decision_fields() {
    let logs = Captured::default();
    let subscriber = tracing_subscriber::registry()
        .with(tracing_subscriber::filter::LevelFilter::DEBUG)
        .with(fleet_authz::telemetry::json_layer({
            let logs = logs.clone();
            move || logs.clone()
        }));
    let _default = tracing::subscriber::set_default(subscriber);

    let env = Env::new();
    let config = env.config(&format!(
        "admin: {{token_file: {}}}\ntelemetry: {{log_format: json}}\n",
        env.token_file(TOKEN).display()
    ));
    let server = start(config).await.unwrap();
    let (grpc, addr) = (server.grpc_addr(), server.http_addr());

    check(grpc, &env.good.pem, &[("app", "payroll")]).await;
    check(grpc, &env.unknown.pem, &[]).await;
    // A wrong token and the right one are both sent; neither may be logged.
    let wrong = "wrong-token-that-must-not-leak";
    assert_eq!(
        http(Method::GET, addr, "/v1/break-glass", Some(wrong), None)
            .await
            .0,
        401
    );
    let body = serde_json::json!({"host_id": 102, "reason": "incident 12", "duration": "1h"});
    assert_eq!(
        http(
            Method::POST,
            addr,
            "/v1/break-glass",
            Some(TOKEN),
            Some(body)
        )
        .await
        .0,
        201
    );
    check(grpc, &env.bad.pem, &[]).await;
    server.shutdown().await;

    let lines = logs.lines();
    for line in &lines {
        assert!(!line.contains(TOKEN), "the admin token leaked: {line}");
        assert!(!line.contains(wrong), "a presented token leaked: {line}");
        assert!(
            !line.contains("BEGIN CERTIFICATE"),
            "a certificate was logged: {line}"
        );
    }
    let decisions: Vec<serde_json::Value> = lines
        .iter()
        .map(|l| json(l))
        .filter(|v| v["target"] == "fleet_authz::decision")
        .collect();
    assert_eq!(decisions.len(), 3, "{lines:#?}");

    let payroll = &decisions[0];
    assert_eq!(payroll["message"], "decision");
    assert_eq!(payroll["level"], "INFO");
    assert_eq!(payroll["request_id"], "fleet-authz-cli");
    assert_eq!(payroll["route"], "payroll");
    assert_eq!(payroll["host_id"], 101);
    assert_eq!(payroll["fingerprint"], env.good.sha1.prefix(12));
    assert_eq!(payroll["decision"], "deny");
    assert_eq!(payroll["mode"], "enforce");
    assert_eq!(payroll["reasons"], "failing_any_policy");
    assert!(payroll["latency_us"].is_u64(), "{payroll}");

    let unknown = &decisions[1];
    assert_eq!(
        (
            unknown["decision"].as_str(),
            unknown["reasons"].as_str(),
            unknown["route"].as_str()
        ),
        (Some("deny"), Some("unknown_device"), Some("default"))
    );
    assert!(unknown.get("host_id").is_none(), "{unknown}");

    let glass = &decisions[2];
    assert_eq!(
        (
            glass["decision"].as_str(),
            glass["reasons"].as_str(),
            glass["host_id"].as_u64()
        ),
        (
            Some("allow"),
            Some("failing_critical_policy,break_glass"),
            Some(102)
        )
    );
    let granted = lines
        .iter()
        .map(|l| json(l))
        .find(|v| v["message"] == "break-glass grant given")
        .expect("the grant itself is logged");
    assert_eq!(
        (granted["grant_id"].as_u64(), granted["reason"].as_str()),
        (Some(1), Some("incident 12"))
    );
}
